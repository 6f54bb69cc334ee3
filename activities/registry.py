"""The agent registry: local agents (other platforms hand off to them) and external agents (we hand off to them).

Secrets are encrypted at rest with BATON_SECRET_KEY and only ever leave this module to sign or verify; no
listing returns them. SQLite by default; `AgentRegistry` is the interface a PostgreSQL store implements."""

from __future__ import annotations

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


class AgentRegistry(Protocol):
    def create_local(self, name: str) -> tuple[AgentInfo, str]: ...
    def rotate_local(self, agent_id: str) -> str | None: ...
    def verifying_secrets(self, agent_id: str) -> list[str]: ...
    def save_external(self, agent_id: str, secret: str, domain: str) -> AgentInfo: ...
    def external(self, agent_id: str) -> tuple[AgentInfo, str] | None: ...
    def list(self) -> list[AgentInfo]: ...
    def remove(self, agent_id: str) -> bool: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('local', 'external')),
    name TEXT,
    domain TEXT,
    secret_sealed TEXT NOT NULL,
    previous_secret_sealed TEXT,
    previous_valid_until TEXT,
    created_at TEXT NOT NULL,
    verified_at TEXT
)
"""


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
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def create_local(self, name: str) -> tuple[AgentInfo, str]:
        agent_id = "agt_" + secrets.token_hex(8)
        secret = webhooks.generate_secret()
        now = _now()
        with self._lock:
            self._db.execute(
                "INSERT INTO agents (agent_id, kind, name, secret_sealed, created_at) VALUES (?, 'local', ?, ?, ?)",
                (agent_id, name, sealing.seal(self._key, secret), now.isoformat()),
            )
        return AgentInfo(agent_id=agent_id, kind="local", name=name, created_at=now), secret

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

    def save_external(self, agent_id: str, secret: str, domain: str) -> AgentInfo:
        now = _now()
        with self._lock:
            self._db.execute(
                "INSERT INTO agents (agent_id, kind, domain, secret_sealed, created_at, verified_at) "
                "VALUES (?, 'external', ?, ?, ?, ?) ON CONFLICT(agent_id) DO UPDATE SET "
                "domain = excluded.domain, secret_sealed = excluded.secret_sealed, verified_at = excluded.verified_at "
                "WHERE agents.kind = 'external'",
                (agent_id, domain, sealing.seal(self._key, secret), now.isoformat(), now.isoformat()),
            )
        info = self.external(agent_id)
        if info is None:
            raise ValueError(f"agent id {agent_id!r} is already used by a local agent")
        return info[0]

    def external(self, agent_id: str) -> tuple[AgentInfo, str] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT agent_id, domain, secret_sealed, created_at, verified_at FROM agents "
                "WHERE agent_id = ? AND kind = 'external'",
                (agent_id,),
            ).fetchone()
        if row is None:
            return None
        info = AgentInfo(
            agent_id=row[0], kind="external", domain=row[1], created_at=row[3], verified_at=row[4]
        )
        return info, sealing.unseal(self._key, row[2])

    def list(self) -> list[AgentInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT agent_id, kind, name, domain, created_at, verified_at, previous_valid_until FROM agents "
                "ORDER BY created_at"
            ).fetchall()
        return [
            AgentInfo(
                agent_id=r[0], kind=r[1], name=r[2], domain=r[3], created_at=r[4], verified_at=r[5],
                rotating_until=r[6] if r[6] and datetime.fromisoformat(r[6]) > _now() else None,
            )
            for r in rows
        ]

    def remove(self, agent_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM agents WHERE agent_id = ?", (agent_id,)).rowcount > 0
