"""The agent registry: local agents (other platforms hand off to them) and external agents (we hand off to them).

Secrets are encrypted at rest with BATON_SECRET_KEY and only ever leave this module to sign or verify; no
listing returns them. In Baton's store (activities.database): SQLite by default, PostgreSQL with BATON_DATABASE_URL."""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal, Protocol

import sqlalchemy as sa
from pydantic import BaseModel

from activities import database, sealing, webhooks

ROTATION_GRACE = timedelta(days=7)


class AgentInfo(BaseModel):
    """What an operator may see of an agent: never its secret."""

    agent_id: str
    kind: Literal["local", "external"]
    name: str | None = None
    domain: str | None = None
    created_at: datetime
    verified_at: datetime | None = None
    rotating_until: datetime | None = None
    # An external agent's protocol: Baton's platform protocol, or A2A (whose card's interface, name and skills
    # Verify & Save kept in `a2a`; never the credential).
    protocol: Literal["baton", "a2a"] = "baton"
    a2a: dict | None = None


class LiveAgentInfo(BaseModel):
    """A live (human) agent working the desk: never its token."""

    agent_id: str
    name: str
    queues: list[str]
    skills: list[str] = []
    # How many conversations they take at once (claims and push offers stop there).
    capacity: int = 3
    created_at: datetime


class AgentRegistry(Protocol):
    def create_local(self, name: str, agent_id: str | None = None) -> tuple[AgentInfo, str]: ...
    def rotate_local(self, agent_id: str) -> str | None: ...
    def local(self, agent_id: str) -> AgentInfo | None: ...
    def verifying_secrets(self, agent_id: str) -> list[str]: ...
    def save_external(
        self, agent_id: str, secret: str, domain: str, protocol: str = "baton", a2a: dict | None = None
    ) -> AgentInfo: ...
    def external(self, agent_id: str) -> tuple[AgentInfo, str] | None: ...
    def list(self) -> list[AgentInfo]: ...
    def remove(self, agent_id: str, kind: str | None = None) -> bool: ...
    # The platform protocol's bookkeeping: which local conversation an external agent's conversation belongs to,
    # and the webhook ids already handled (a repeated id is answered as before, never processed twice).
    def link(self, agent_id: str, remote_conversation_id: str, conversation_id: str, handoff_id: str) -> None: ...
    def linked(self, agent_id: str, remote_conversation_id: str) -> str | None: ...
    def recall(self, agent_id: str, webhook_id: str) -> str | None: ...
    def remember(self, agent_id: str, webhook_id: str, response: str) -> None: ...
    # Live agents (the desk): a bearer token each, stored only as its SHA-256.
    def create_live_agent(
        self, agent_id: str, name: str, queues: list[str], skills: list[str] | None = None, capacity: int = 3
    ) -> tuple[LiveAgentInfo, str]: ...
    def live_agent_by_token(self, token: str) -> LiveAgentInfo | None: ...
    def list_live_agents(self) -> list[LiveAgentInfo]: ...


class AgentIdTaken(ValueError):
    """A local agent id that is already in use."""


class LiveAgentIdTaken(ValueError):
    """A live agent id that is already in use."""


# A local and an external agent may share an id: on one install handing off to itself over loopback (the
# embedded demo), `tech-support` is both the local agent and the external agent pointing back at it. The schema is
# activities/migrations (Alembic).
LIVE_TOKEN_PREFIX = "lat_"


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_LIVE_COLUMNS = "agent_id, name, queues, skills, created_at, capacity"


def _live_agent(row: tuple) -> LiveAgentInfo:
    return LiveAgentInfo(
        agent_id=row[0], name=row[1], queues=json.loads(row[2]), skills=json.loads(row[3]), created_at=row[4],
        capacity=row[5],
    )

# Longer than any sender retries a request; older ids are forgotten (their timestamps are long stale anyway).
REMEMBER_WEBHOOKS = timedelta(days=3)
def _now() -> datetime:
    return datetime.now(timezone.utc)


class SqlRegistry:
    """The registry in Baton's store (activities.database): SQLite or PostgreSQL through one code path, SQLAlchemy
    Core with statements both databases run as written. Each call is one short transaction on a pooled connection,
    so it is safe from any thread and from any number of processes on any number of hosts (PostgreSQL)."""

    def __init__(self, url: str, key: str) -> None:
        sealing.check_key(key)
        self._key = key
        self._engine = database.engine_for(url)

    def close(self) -> None:
        self._engine.dispose()

    def _one(self, sql: str, **params: object) -> sa.Row | None:
        with self._engine.connect() as db:
            return db.execute(sa.text(sql), params).first()

    def _all(self, sql: str, **params: object) -> list[sa.Row]:
        with self._engine.connect() as db:
            return list(db.execute(sa.text(sql), params))

    def _write(self, sql: str, **params: object) -> int:
        with self._engine.begin() as db:
            return db.execute(sa.text(sql), params).rowcount

    def create_local(self, name: str, agent_id: str | None = None) -> tuple[AgentInfo, str]:
        """A new local agent with a fresh secret; `agent_id` chosen by the operator, or generated."""
        agent_id = agent_id or "agt_" + secrets.token_hex(8)
        secret = webhooks.generate_secret()
        now = _now()
        try:
            self._write(
                "INSERT INTO agents (agent_id, kind, name, secret_sealed, created_at) VALUES (:id, 'local', :name, :sealed, :at)",
                id=agent_id, name=name, sealed=sealing.seal(self._key, secret), at=now.isoformat(),
            )
        except sa.exc.IntegrityError:
            raise AgentIdTaken(f"a local agent '{agent_id}' already exists") from None
        return AgentInfo(agent_id=agent_id, kind="local", name=name, created_at=now), secret

    def local(self, agent_id: str) -> AgentInfo | None:
        return next((a for a in self.list() if a.agent_id == agent_id and a.kind == "local"), None)

    def rotate_local(self, agent_id: str) -> str | None:
        """A new secret signs from now on; the old one keeps verifying for ROTATION_GRACE."""
        secret = webhooks.generate_secret()
        changed = self._write(
            "UPDATE agents SET previous_secret_sealed = secret_sealed, previous_valid_until = :until, secret_sealed = "
            ":sealed WHERE agent_id = :id AND kind = 'local'",
            until=(_now() + ROTATION_GRACE).isoformat(), sealed=sealing.seal(self._key, secret), id=agent_id,
        )
        return secret if changed else None

    def verifying_secrets(self, agent_id: str) -> list[str]:
        """The secrets a request to this local agent may be signed with: the current one, and the previous one
        while its grace period lasts. Empty for an unknown agent."""
        row = self._one(
            "SELECT secret_sealed, previous_secret_sealed, previous_valid_until FROM agents "
            "WHERE agent_id = :id AND kind = 'local'", id=agent_id,
        )
        if row is None:
            return []
        found = [sealing.unseal(self._key, row[0])]
        if row[1] and row[2] and datetime.fromisoformat(row[2]) > _now():
            found.append(sealing.unseal(self._key, row[1]))
        return found

    def save_external(
        self, agent_id: str, secret: str, domain: str, protocol: str = "baton", a2a: dict | None = None
    ) -> AgentInfo:
        """`secret`: the platform protocol's signing secret, or an A2A agent's credential ("" for none)."""
        now = _now()
        self._write(
            "INSERT INTO agents (agent_id, kind, domain, secret_sealed, created_at, verified_at, protocol, a2a) "
            "VALUES (:id, 'external', :domain, :sealed, :at, :at, :protocol, :a2a) ON CONFLICT (agent_id, kind) DO "
            "UPDATE SET domain = excluded.domain, secret_sealed = excluded.secret_sealed, verified_at = "
            "excluded.verified_at, protocol = excluded.protocol, a2a = excluded.a2a",
            id=agent_id, domain=domain, sealed=sealing.seal(self._key, secret), at=now.isoformat(), protocol=protocol,
            a2a=json.dumps(a2a) if a2a is not None else None,
        )
        info = self.external(agent_id)
        assert info is not None
        return info[0]

    def external(self, agent_id: str) -> tuple[AgentInfo, str] | None:
        row = self._one(
            "SELECT agent_id, domain, secret_sealed, created_at, verified_at, protocol, a2a FROM agents "
            "WHERE agent_id = :id AND kind = 'external'", id=agent_id,
        )
        if row is None:
            return None
        info = AgentInfo(
            agent_id=row[0], kind="external", domain=row[1], created_at=row[3], verified_at=row[4],
            protocol=row[5] or "baton", a2a=json.loads(row[6]) if row[6] else None,
        )
        return info, sealing.unseal(self._key, row[2])

    def list(self) -> list[AgentInfo]:
        rows = self._all(
            "SELECT agent_id, kind, name, domain, created_at, verified_at, previous_valid_until, protocol, a2a "
            "FROM agents ORDER BY created_at, agent_id, kind"
        )
        return [
            AgentInfo(
                agent_id=r[0], kind=r[1], name=r[2], domain=r[3], created_at=r[4], verified_at=r[5],
                rotating_until=r[6] if r[6] and datetime.fromisoformat(r[6]) > _now() else None,
                protocol=r[7] or "baton", a2a=json.loads(r[8]) if r[8] else None,
            )
            for r in rows
        ]

    def remove(self, agent_id: str, kind: str | None = None) -> bool:
        """Removes the agent (both kinds when an id is used by a local and an external agent and no kind is given)."""
        if kind is None:
            return self._write("DELETE FROM agents WHERE agent_id = :id", id=agent_id) > 0
        return self._write("DELETE FROM agents WHERE agent_id = :id AND kind = :kind", id=agent_id, kind=kind) > 0

    def link(self, agent_id: str, remote_conversation_id: str, conversation_id: str, handoff_id: str) -> None:
        self._write(
            "INSERT INTO links (agent_id, remote_conversation_id, conversation_id, handoff_id, created_at) "
            "VALUES (:id, :remote, :cid, :hid, :at) ON CONFLICT (agent_id, remote_conversation_id) DO UPDATE SET "
            "conversation_id = excluded.conversation_id, handoff_id = excluded.handoff_id",
            id=agent_id, remote=remote_conversation_id, cid=conversation_id, hid=handoff_id, at=_now().isoformat(),
        )

    def linked(self, agent_id: str, remote_conversation_id: str) -> str | None:
        row = self._one(
            "SELECT conversation_id FROM links WHERE agent_id = :id AND remote_conversation_id = :remote",
            id=agent_id, remote=remote_conversation_id,
        )
        return row[0] if row else None

    def recall(self, agent_id: str, webhook_id: str) -> str | None:
        row = self._one(
            "SELECT response FROM seen_webhooks WHERE agent_id = :id AND webhook_id = :wid", id=agent_id, wid=webhook_id
        )
        return row[0] if row else None

    def remember(self, agent_id: str, webhook_id: str, response: str) -> None:
        now = _now()
        with self._engine.begin() as db:
            db.execute(sa.text(
                "INSERT INTO seen_webhooks (agent_id, webhook_id, response, seen_at) VALUES (:id, :wid, :response, :at)"
                " ON CONFLICT (agent_id, webhook_id) DO NOTHING"
            ), {"id": agent_id, "wid": webhook_id, "response": response, "at": now.isoformat()})
            db.execute(sa.text("DELETE FROM seen_webhooks WHERE seen_at < :before"),
                       {"before": (now - REMEMBER_WEBHOOKS).isoformat()})

    # ---- live agents (the desk) ----------------------------------------------------------------------

    def create_live_agent(
        self, agent_id: str, name: str, queues: list[str], skills: list[str] | None = None, capacity: int = 3
    ) -> tuple[LiveAgentInfo, str]:
        """A new live agent and its bearer token, returned this once: only the token's SHA-256 is stored."""
        token = LIVE_TOKEN_PREFIX + secrets.token_urlsafe(24)
        now = _now()
        queues, skills = list(dict.fromkeys(queues)), list(dict.fromkeys(skills or []))
        try:
            self._write(
                "INSERT INTO live_agents (agent_id, name, queues, skills, token_hash, created_at, capacity) "
                "VALUES (:id, :name, :queues, :skills, :hash, :at, :capacity)",
                id=agent_id, name=name, queues=json.dumps(queues), skills=json.dumps(skills), hash=_token_hash(token),
                at=now.isoformat(), capacity=capacity,
            )
        except sa.exc.IntegrityError:
            raise LiveAgentIdTaken(f"a live agent '{agent_id}' already exists") from None
        return LiveAgentInfo(agent_id=agent_id, name=name, queues=queues, skills=skills, capacity=capacity,
                             created_at=now), token

    def live_agent_by_token(self, token: str) -> LiveAgentInfo | None:
        """The live agent holding `token`, or None. Looked up by the token's hash, so the comparison leaks
        nothing about the token through timing."""
        if not token.startswith(LIVE_TOKEN_PREFIX):
            return None
        row = self._one(f"SELECT {_LIVE_COLUMNS} FROM live_agents WHERE token_hash = :hash", hash=_token_hash(token))
        return _live_agent(row) if row else None

    def list_live_agents(self) -> list[LiveAgentInfo]:
        rows = self._all(f"SELECT {_LIVE_COLUMNS} FROM live_agents ORDER BY created_at, agent_id")
        return [_live_agent(r) for r in rows]


def SqliteRegistry(path: Path, key: str) -> SqlRegistry:  # noqa: N802 - kept for callers that hold a file path
    """The registry in a SQLite file."""
    return SqlRegistry(f"sqlite:///{path}", key)


def open_registry(database_url: str | None, home: Path, key: str) -> SqlRegistry:
    """The registry of this install: `BATON_DATABASE_URL`, else the embedded default `<home>/baton.db` (with a
    `<home>/agents.db` from before carried over)."""
    return SqlRegistry(database_url or database.default_url(home), key)
