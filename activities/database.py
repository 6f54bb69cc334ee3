"""Baton's store outside Temporal (README, "One store for many hosts"): `BATON_DATABASE_URL`, SQLite or PostgreSQL,
one schema with versioned migrations (Alembic, activities/migrations) for both, one code path (SQLAlchemy Core).

- `sqlite:///path` (the embedded default: `<BATON_HOME>/baton.db`, no set-up) or `postgresql://user:pass@host/db`
  (psycopg 3). Any number of API replicas and workers on any number of hosts share one PostgreSQL database.
- Every process migrates the database to the newest schema as it opens it, under a lock (PostgreSQL: an advisory
  lock; SQLite: a lock file), so replicas that start at once migrate it once.
- A store from before (`<BATON_HOME>/agents.db` of Baton up to 1.2) is copied into the new default `baton.db` the
  first time (SQLite's backup API: consistent even while another process writes it) and migrated there; the old
  file is left as it was."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

log = logging.getLogger("baton.database")
MIGRATIONS = Path(__file__).parent / "migrations"
DEFAULT_FILE = "baton.db"
LEGACY_FILE = "agents.db"
# Any fixed 64-bit number, the same in every Baton process: PostgreSQL's advisory lock for migrations.
_PG_MIGRATION_LOCK = 0x6261746F6E  # "baton"


def default_url(home: Path) -> str:
    """The embedded default, with a store from before carried over."""
    path = home / DEFAULT_FILE
    legacy = home / LEGACY_FILE
    if not path.exists() and legacy.exists():
        home.mkdir(parents=True, exist_ok=True)
        # Under the migration lock: an API and a worker starting together copy it once.
        with _file_lock(path):
            if not path.exists():
                adopt_legacy(legacy, path)
    return f"sqlite:///{path}"


def adopt_legacy(legacy: Path, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    source, target = sqlite3.connect(str(legacy)), sqlite3.connect(str(tmp))
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    tmp.replace(path)
    log.info("the store %s was copied into %s (migrated there; the old file is kept)", legacy.name, path.name)


@contextlib.contextmanager
def _file_lock(database: Path) -> Iterator[None]:
    """An exclusive lock beside a SQLite file, across processes."""
    with open(f"{database}.migrating", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def engine_for(url: str) -> sa.Engine:
    """An engine for `url`, migrated to the newest schema. `postgresql://` means psycopg 3."""
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        target = sa.engine.make_url(url).database
        if target and target != ":memory:":
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 5})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - the DB-API's connection
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # Processes sharing the file wait for each other's short writes rather than fail.
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()
    else:
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    try:
        migrate(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def migrate(engine: sa.Engine) -> None:
    """Upgrade to the newest revision in one transaction, once even when several processes start at once (the
    lock ends with the transaction, committed or rolled back, so a failed migration leaves no lock behind)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    database = engine.url.database
    on_file = engine.dialect.name == "sqlite" and database and database != ":memory:"
    with _file_lock(Path(database)) if on_file else contextlib.nullcontext():
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")


def revision(engine: sa.Engine) -> str | None:
    """The schema revision the database is at (None before the first migration)."""
    with engine.connect() as connection:
        if not sa.inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


# The tables of the store and their keys, in the order a copy writes them.
TABLES = {
    "agents": ("agent_id", "kind"),
    "links": ("agent_id", "remote_conversation_id"),
    "seen_webhooks": ("agent_id", "webhook_id"),
    "live_agents": ("agent_id",),
}


def copy(source_url: str, target_url: str) -> dict[str, int]:
    """Copy every row of one store into another (SQLite to PostgreSQL when an install moves to several hosts), both
    migrated first. Rows the target has already (same key) are kept as they are, so it can be run again. Sealed
    secrets are copied as they are: the target's processes need the same BATON_SECRET_KEY. Returns the rows copied
    per table."""
    source, target = engine_for(source_url), engine_for(target_url)
    copied: dict[str, int] = {}
    try:
        with source.connect() as read, target.begin() as write:
            for table, key in TABLES.items():
                result = read.execute(sa.text(f"SELECT * FROM {table}"))
                columns = list(result.keys())
                rows = [dict(zip(columns, row, strict=True)) for row in result]
                if rows:
                    names = ", ".join(columns)
                    values = ", ".join(f":{c}" for c in columns)
                    outcome = write.execute(sa.text(
                        f"INSERT INTO {table} ({names}) VALUES ({values}) ON CONFLICT ({', '.join(key)}) DO NOTHING"
                    ), rows)
                    copied[table] = max(outcome.rowcount, 0)
                else:
                    copied[table] = 0
    finally:
        source.dispose()
        target.dispose()
    return copied
