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
# Two chains of migrations, each with its own version table: the registry's (`migrations/versions`) and the event
# stream's (`migrations/stream`: the bell log, waiting lists, queues). On PostgreSQL both live in the one database;
# the embedded default keeps the stream's busy tables in a file of their own (`<BATON_HOME>/stream.db`).
REGISTRY = ("versions", "alembic_version")
STREAM = ("stream", "stream_version")
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


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://"))


def engine_for(url: str, chain: tuple[str, str] = REGISTRY) -> sa.Engine:
    """An engine for `url`, migrated to the newest schema of `chain`. `postgresql://` means psycopg 3."""
    if is_postgres(url):
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
        migrate(engine, chain)
    except BaseException:
        engine.dispose()
        raise
    return engine


def migrate(engine: sa.Engine, chain: tuple[str, str] = REGISTRY) -> None:
    """Upgrade to the newest revision of `chain` in one transaction, once even when several processes start at once
    (the lock ends with the transaction, committed or rolled back, so a failed migration leaves no lock behind)."""
    versions, table = chain
    if not any((MIGRATIONS / versions).glob("*.py")):
        # Alembic skips a version folder that is not there: a package built without it would migrate nothing.
        raise RuntimeError(f"Baton's migrations are missing from {MIGRATIONS / versions} (a broken install)")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", str(MIGRATIONS / versions))
    config.attributes["version_table"] = table
    database = engine.url.database
    on_file = engine.dialect.name == "sqlite" and database and database != ":memory:"
    with _file_lock(Path(database)) if on_file else contextlib.nullcontext():
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")


def migrated(url: str, chain: tuple[str, str]) -> None:
    """Migrate the database at `url` to the newest schema of `chain` (for stores that keep their own connections)."""
    engine_for(url, chain).dispose()


def revision(engine: sa.Engine, chain: tuple[str, str] = REGISTRY) -> str | None:
    """The schema revision of `chain` the database is at (None before its first migration)."""
    table = chain[1]
    with engine.connect() as connection:
        if not sa.inspect(connection).has_table(table):
            return None
        return connection.execute(sa.text(f"SELECT version_num FROM {table}")).scalar()


def stream_url(url: str) -> str:
    """Where `baton store copy` writes the event stream's store of the store at `url`: the same PostgreSQL database,
    or `stream.db` beside a SQLite file."""
    if is_postgres(url):
        return url
    database = sa.engine.make_url(url).database or ""
    return f"sqlite:///{Path(database).parent / 'stream.db'}"


# The tables of the store and their keys, in the order a copy writes them.
TABLES = {
    "agents": ("agent_id", "kind"),
    "links": ("agent_id", "remote_conversation_id"),
    "seen_webhooks": ("agent_id", "webhook_id"),
    "live_agents": ("agent_id",),
}
# What a copy takes of the event stream's store: each conversation's latest state (who waits where, since when: the
# waiting lists), what its handoff asked for, its last helper, and the record (ratings; wrap-up codes, which have no
# key of their own, so a row equal in every column counts as there). Not the bell log (it only wakes processes that
# run now), nor presence, offers and claims in flight (the consoles report presence again, and rounds offer again).
STREAM_TABLES = {
    "conversations": ("conversation_id",),
    "terms": ("conversation_id",),
    "helpers": ("conversation_id",),
    "ratings": ("conversation_id", "created", "number"),
    "wrap_ups": None,
}


def _copy_tables(read: sa.Connection, write: sa.Connection, tables: dict[str, tuple[str, ...] | None]) -> dict[str, int]:
    copied: dict[str, int] = {}
    for table, key in tables.items():
        result = read.execute(sa.text(f"SELECT * FROM {table}"))
        columns = [c for c in result.keys() if key is not None or c != "id"]
        rows = [{c: row._mapping[c] for c in columns} for row in result]
        copied[table] = 0
        if not rows:
            continue
        names = ", ".join(columns)
        values = ", ".join(f":{c}" for c in columns)
        if key is not None:
            statement = f"INSERT INTO {table} ({names}) VALUES ({values}) ON CONFLICT ({', '.join(key)}) DO NOTHING"
        else:
            same = " AND ".join(f"{c} = :{c}" for c in columns)
            statement = (f"INSERT INTO {table} ({names}) SELECT {values} WHERE NOT EXISTS"
                         f" (SELECT 1 FROM {table} WHERE {same})")
        copied[table] = max(write.execute(sa.text(statement), rows).rowcount, 0)
    return copied


def copy(source_url: str, target_url: str, stream_source: str | None = None) -> dict[str, int]:
    """Copy every row of one store into another (SQLite to PostgreSQL when an install moves to several hosts), both
    migrated first, and what lasts of its event stream's store (STREAM_TABLES) from `stream_source` (a SQLite
    `stream.db`, or a PostgreSQL store's own; by default the source's, `stream.db` beside a SQLite one). Rows the
    target has already (same key) are kept as they are, so it can be run again. Sealed secrets are copied as they are:
    the target's processes need the same BATON_SECRET_KEY. Returns the rows copied per table."""
    copied: dict[str, int] = {}
    pairs = [(source_url, target_url, REGISTRY, TABLES)]
    streams = stream_source or stream_url(source_url), stream_url(target_url)
    on_file = sa.engine.make_url(streams[0]).database if not is_postgres(streams[0]) else None
    if on_file is not None and not Path(on_file).exists():
        if stream_source:
            raise FileNotFoundError(f"no event stream's store at {on_file}")
    elif streams[0] != streams[1]:
        pairs.append((*streams, STREAM, STREAM_TABLES))
    for source_at, target_at, chain, tables in pairs:
        source, target = engine_for(source_at, chain), engine_for(target_at, chain)
        try:
            with source.connect() as read, target.begin() as write:
                copied.update(_copy_tables(read, write, tables))
        finally:
            source.dispose()
            target.dispose()
    return copied
