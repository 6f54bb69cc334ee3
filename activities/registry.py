"""The agent registry: local agents (other platforms hand off to them) and external agents (we hand off to them).

Secrets are encrypted at rest with BATON_SECRET_KEY and only ever leave this module to sign or verify; no
listing returns them. SQLite by default; `AgentRegistry` is the interface a PostgreSQL store implements."""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel

from activities import sealing, webhooks

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
# embedded demo), `tech-support` is both the local agent and the external agent pointing back at it.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS agents (
        agent_id TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('local', 'external')),
        name TEXT,
        domain TEXT,
        secret_sealed TEXT NOT NULL,
        previous_secret_sealed TEXT,
        previous_valid_until TEXT,
        created_at TEXT NOT NULL,
        verified_at TEXT,
        protocol TEXT NOT NULL DEFAULT 'baton',
        a2a TEXT,
        PRIMARY KEY (agent_id, kind)
    )""",
    """CREATE TABLE IF NOT EXISTS links (
        agent_id TEXT NOT NULL,
        remote_conversation_id TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        handoff_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (agent_id, remote_conversation_id)
    )""",
    """CREATE TABLE IF NOT EXISTS seen_webhooks (
        agent_id TEXT NOT NULL,
        webhook_id TEXT NOT NULL,
        response TEXT NOT NULL,
        seen_at TEXT NOT NULL,
        PRIMARY KEY (agent_id, webhook_id)
    )""",
    "CREATE INDEX IF NOT EXISTS seen_webhooks_at ON seen_webhooks (seen_at)",
    """CREATE TABLE IF NOT EXISTS live_agents (
        agent_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        queues TEXT NOT NULL,
        skills TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    )""",
)
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
_COLUMNS = "agent_id, kind, name, domain, secret_sealed, previous_secret_sealed, previous_valid_until, created_at, verified_at"


def _migrate(db: sqlite3.Connection) -> None:
    """Databases from before local and external agents could share an id: re-key the agents table."""
    row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'agents'").fetchone()
    if row is None or "PRIMARY KEY (agent_id, kind)" in row[0]:
        return
    db.execute("BEGIN")
    db.execute("ALTER TABLE agents RENAME TO agents_v1")
    db.execute(_SCHEMA[0])
    db.execute(f"INSERT INTO agents ({_COLUMNS}) SELECT {_COLUMNS} FROM agents_v1")
    db.execute("DROP TABLE agents_v1")
    db.execute("COMMIT")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class SqliteRegistry:
    """One SQLite file (WAL); calls are short and serialised by a lock, so it is safe from any thread."""

    def __init__(self, path: Path, key: str) -> None:
        sealing.check_key(key)
        self._key = key
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # The worker and the API share this file: wait for the other's short writes rather than fail.
        self._db.execute("PRAGMA busy_timeout=5000")
        _migrate(self._db)
        for statement in _SCHEMA:
            self._db.execute(statement)
        # A registry from before A2A agents: every external agent spoke Baton's platform protocol.
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(agents)")}
        if "protocol" not in columns:
            self._db.execute("ALTER TABLE agents ADD COLUMN protocol TEXT NOT NULL DEFAULT 'baton'")
        if "a2a" not in columns:
            self._db.execute("ALTER TABLE agents ADD COLUMN a2a TEXT")
        # A registry from before capacities: every live agent takes three at once (the default).
        if "capacity" not in {row[1] for row in self._db.execute("PRAGMA table_info(live_agents)")}:
            self._db.execute("ALTER TABLE live_agents ADD COLUMN capacity INTEGER NOT NULL DEFAULT 3")
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def create_local(self, name: str, agent_id: str | None = None) -> tuple[AgentInfo, str]:
        """A new local agent with a fresh secret; `agent_id` chosen by the operator, or generated."""
        agent_id = agent_id or "agt_" + secrets.token_hex(8)
        secret = webhooks.generate_secret()
        now = _now()
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO agents (agent_id, kind, name, secret_sealed, created_at) VALUES (?, 'local', ?, ?, ?)",
                    (agent_id, name, sealing.seal(self._key, secret), now.isoformat()),
                )
            except sqlite3.IntegrityError:
                raise AgentIdTaken(f"a local agent '{agent_id}' already exists") from None
        return AgentInfo(agent_id=agent_id, kind="local", name=name, created_at=now), secret

    def local(self, agent_id: str) -> AgentInfo | None:
        return next((a for a in self.list() if a.agent_id == agent_id and a.kind == "local"), None)

    def rotate_local(self, agent_id: str) -> str | None:
        """A new secret signs from now on; the old one keeps verifying for ROTATION_GRACE."""
        secret = webhooks.generate_secret()
        with self._lock:
            cur = self._db.execute(
                "UPDATE agents SET previous_secret_sealed = secret_sealed, previous_valid_until = ?, secret_sealed = ? "
                "WHERE agent_id = ? AND kind = 'local'",
                ((_now() + ROTATION_GRACE).isoformat(), sealing.seal(self._key, secret), agent_id),
            )
        return secret if cur.rowcount else None

    def verifying_secrets(self, agent_id: str) -> list[str]:
        """The secrets a request to this local agent may be signed with: the current one, and the previous one
        while its grace period lasts. Empty for an unknown agent."""
        with self._lock:
            row = self._db.execute(
                "SELECT secret_sealed, previous_secret_sealed, previous_valid_until FROM agents "
                "WHERE agent_id = ? AND kind = 'local'",
                (agent_id,),
            ).fetchone()
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
        with self._lock:
            self._db.execute(
                "INSERT INTO agents (agent_id, kind, domain, secret_sealed, created_at, verified_at, protocol, a2a) "
                "VALUES (?, 'external', ?, ?, ?, ?, ?, ?) ON CONFLICT(agent_id, kind) DO UPDATE SET "
                "domain = excluded.domain, secret_sealed = excluded.secret_sealed, verified_at = excluded.verified_at, "
                "protocol = excluded.protocol, a2a = excluded.a2a",
                (agent_id, domain, sealing.seal(self._key, secret), now.isoformat(), now.isoformat(), protocol,
                 json.dumps(a2a) if a2a is not None else None),
            )
        info = self.external(agent_id)
        assert info is not None
        return info[0]

    def external(self, agent_id: str) -> tuple[AgentInfo, str] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT agent_id, domain, secret_sealed, created_at, verified_at, protocol, a2a FROM agents "
                "WHERE agent_id = ? AND kind = 'external'",
                (agent_id,),
            ).fetchone()
        if row is None:
            return None
        info = AgentInfo(
            agent_id=row[0], kind="external", domain=row[1], created_at=row[3], verified_at=row[4],
            protocol=row[5] or "baton", a2a=json.loads(row[6]) if row[6] else None,
        )
        return info, sealing.unseal(self._key, row[2])

    def list(self) -> list[AgentInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT agent_id, kind, name, domain, created_at, verified_at, previous_valid_until, protocol, a2a "
                "FROM agents ORDER BY created_at"
            ).fetchall()
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
        with self._lock:
            if kind is None:
                return self._db.execute("DELETE FROM agents WHERE agent_id = ?", (agent_id,)).rowcount > 0
            return self._db.execute("DELETE FROM agents WHERE agent_id = ? AND kind = ?", (agent_id, kind)).rowcount > 0

    def link(self, agent_id: str, remote_conversation_id: str, conversation_id: str, handoff_id: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO links (agent_id, remote_conversation_id, conversation_id, handoff_id, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(agent_id, remote_conversation_id) DO UPDATE SET "
                "conversation_id = excluded.conversation_id, handoff_id = excluded.handoff_id",
                (agent_id, remote_conversation_id, conversation_id, handoff_id, _now().isoformat()),
            )

    def linked(self, agent_id: str, remote_conversation_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT conversation_id FROM links WHERE agent_id = ? AND remote_conversation_id = ?",
                (agent_id, remote_conversation_id),
            ).fetchone()
        return row[0] if row else None

    def recall(self, agent_id: str, webhook_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT response FROM seen_webhooks WHERE agent_id = ? AND webhook_id = ?", (agent_id, webhook_id)
            ).fetchone()
        return row[0] if row else None

    def remember(self, agent_id: str, webhook_id: str, response: str) -> None:
        now = _now()
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO seen_webhooks (agent_id, webhook_id, response, seen_at) VALUES (?, ?, ?, ?)",
                (agent_id, webhook_id, response, now.isoformat()),
            )
            self._db.execute("DELETE FROM seen_webhooks WHERE seen_at < ?", ((now - REMEMBER_WEBHOOKS).isoformat(),))

    # ---- live agents (the desk) ----------------------------------------------------------------------

    def create_live_agent(
        self, agent_id: str, name: str, queues: list[str], skills: list[str] | None = None, capacity: int = 3
    ) -> tuple[LiveAgentInfo, str]:
        """A new live agent and its bearer token, returned this once: only the token's SHA-256 is stored."""
        token = LIVE_TOKEN_PREFIX + secrets.token_urlsafe(24)
        now = _now()
        queues, skills = list(dict.fromkeys(queues)), list(dict.fromkeys(skills or []))
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO live_agents (agent_id, name, queues, skills, token_hash, created_at, capacity) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (agent_id, name, json.dumps(queues), json.dumps(skills), _token_hash(token), now.isoformat(),
                     capacity),
                )
            except sqlite3.IntegrityError:
                raise LiveAgentIdTaken(f"a live agent '{agent_id}' already exists") from None
        return LiveAgentInfo(agent_id=agent_id, name=name, queues=queues, skills=skills, capacity=capacity,
                             created_at=now), token

    def live_agent_by_token(self, token: str) -> LiveAgentInfo | None:
        """The live agent holding `token`, or None. Looked up by the token's hash, so the comparison leaks
        nothing about the token through timing."""
        if not token.startswith(LIVE_TOKEN_PREFIX):
            return None
        with self._lock:
            row = self._db.execute(
                f"SELECT {_LIVE_COLUMNS} FROM live_agents WHERE token_hash = ?",
                (_token_hash(token),),
            ).fetchone()
        return _live_agent(row) if row else None

    def list_live_agents(self) -> list[LiveAgentInfo]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_LIVE_COLUMNS} FROM live_agents ORDER BY created_at, agent_id"
            ).fetchall()
        return [_live_agent(r) for r in rows]
