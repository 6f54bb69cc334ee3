"""The event stream's store: each conversation's latest bell, the exact waiting lists, and a log that API processes
tail to wake their subscribers (docs/event-stream.md).

The workflow rings (the `ring_bell` activity) after every change; any number of API processes read. A bell holds
ids, states, owners, queues, times and the handoff's reason, and the entries added since the previous bell (already
redacted, as the transcript holds them), logged as rows of their own so a stream sends them without asking the
workflow. Log rows are kept for an hour (LOG_KEEP).

Where it lives: with `BATON_DATABASE_URL` on PostgreSQL, in that database beside the registry, so API replicas and
workers on any number of hosts share it; otherwise (the embedded default) in `<BATON_HOME>/stream.db`, a SQLite file
of its own in WAL mode (its frequent writes never wait behind the registry's), shared by the processes of one host.
The schema is a chain of migrations (activities/migrations/stream) for both. The statements below run as written on
both databases (`?` placeholders, turned into psycopg's on PostgreSQL); every write is one transaction that holds the
store's write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: a transaction-scoped advisory lock), so writers take turns
as on SQLite, which is what the queues' decisions rely on, and the log's ids become visible in the order they were
given (a reader tailing `id > last` never skips a row that commits late)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio import activity

from activities import database
from models.conversation import Bell, TranscriptEntry
from models.names import Activities
from models.stream import WaitingRow

log = logging.getLogger("baton.stream")

# The log only wakes processes that are running now; a process that starts reads from its end. An hour is plenty.
LOG_KEEP = timedelta(hours=1)

# Rows of the bell log that are not a conversation's bell: a change of a live agent's offers or presence
# (activities/queues.py); `owner` names the agent. Readers of conversations skip them.
NOTES = ("offer", "presence")


# A conversation waits for a person: the one condition the waiting lists, positions and the routing count share.
_WAITS = "state = 'handoff_pending' AND waiting_since IS NOT NULL"
# The waiting lists' order: higher priority first, then the oldest, then by id.
_ORDER = "coalesce(t.priority, 0) DESC, c.waiting_since, c.conversation_id"
_WAITING = f"conversations c LEFT JOIN terms t ON t.conversation_id = c.conversation_id WHERE c.queue = ? AND {_WAITS}"


class Rung:
    """One row of the bell log: what changed, with what it was before (so a reader knows which lists it touches)."""

    __slots__ = ("id", "conversation_id", "seq", "prev_seq", "state", "owner", "prev_owner", "queue", "prev_queue",
                 "entry", "note")

    def __init__(self, row: tuple) -> None:
        (self.id, self.conversation_id, self.seq, self.prev_seq, self.state, self.owner, self.prev_owner,
         self.queue, self.prev_queue, entry) = row
        # An entry row (logged with a bell) carries the entry; its state fields are empty.
        self.entry: TranscriptEntry | None = TranscriptEntry.model_validate_json(entry) if entry else None
        # "offer" / "presence": a live agent's offers or presence changed (`owner` is the agent); not a bell.
        self.note: str | None = self.state if self.state in NOTES else None

    def queues(self) -> set[str]:
        return {q for q in (self.queue, self.prev_queue) if q}

    def owners(self) -> set[str]:
        return {o for o in (self.owner, self.prev_owner) if o}


def _iso(at: datetime) -> str:
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


# PostgreSQL: the channel a write that adds to the bell log notifies, which API processes listen on.
CHANNEL = "baton_bells"
# PostgreSQL: at most this many idle connections kept for reads per process (more are opened while needed).
READERS = 4
# Any fixed 64-bit number, the same in every Baton process: PostgreSQL's advisory lock for the store's writes.
_PG_WRITE_LOCK = 0x62656C6C73  # "bells"


class Db:
    """One connection to the stream's store, SQLite or PostgreSQL, spoken to with sqlite3's interface: `execute`
    (with `?` placeholders) returns a cursor to fetch from or iterate; `executemany`; explicit transactions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = database.is_postgres(url)
        self._conn: Any = None
        self._sql: dict[str, str] = {}

    def _connection(self) -> Any:
        conn = self._conn
        if conn is not None and (not self.postgres or not (conn.closed or conn.broken)):
            return conn
        if self.postgres:
            import psycopg

            # Autocommit: the transactions are the explicit BEGIN ... COMMIT below. No prepared statements: a
            # prepared statement's generic plan for the assignment round's scan of a queue (planned without the
            # queue's name and the limit) took 25 ms where the plan made for the values takes 5 (1,000 waiting).
            # Timeouts and keepalives: a server that vanishes (a failover) fails a call within a minute instead of
            # holding this connection's lock for the system's TCP timeout.
            self._conn = psycopg.connect(self.url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True,
                                         prepare_threshold=None, connect_timeout=10, keepalives=1,
                                         keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
                                         tcp_user_timeout=60_000)
        else:
            self._conn = sqlite3.connect(store_file(self.url), check_same_thread=False, isolation_level=None, timeout=10)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        return self._conn

    def _dialect(self, sql: str) -> str:
        """The statement as this database spells it: psycopg's placeholders; on SQLite, `IS [NOT] DISTINCT FROM` as
        SQLite's `IS [NOT]`, which every SQLite knows (the standard spelling needs 3.39)."""
        found = self._sql.get(sql)
        if found is None:
            if self.postgres:
                found = sql.replace("?", "%s")
            else:
                found = sql.replace(" IS NOT DISTINCT FROM ", " IS ").replace(" IS DISTINCT FROM ", " IS NOT ")
            self._sql[sql] = found
        return found

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        if not self.postgres:
            return self._connection().execute(self._dialect(sql), tuple(args))
        import psycopg

        args = _no_nul(args)
        conn = self._connection()
        idle = not self.in_transaction
        try:
            return conn.execute(self._dialect(sql), args)
        except psycopg.OperationalError:
            if not (idle and conn.broken):
                raise
            # The connection died while idle (the server restarted): once more on a new one. Inside a transaction
            # the caller's transaction is lost and the error stands.
            self._conn = None
            return self._connection().execute(self._dialect(sql), args)

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        if not rows:
            return
        if self.postgres:
            rows = [_no_nul(row) for row in rows]
            with self._connection().cursor() as cursor:
                cursor.executemany(self._dialect(sql), rows)
        else:
            self._connection().executemany(self._dialect(sql), rows)

    def begin(self, write: bool) -> None:
        """A write takes the store's write lock at once (writers take turns); a read sees one snapshot."""
        if self.postgres:
            # Writes read what the writer before them committed (read committed, whatever the server's default):
            # the lock is taken first, and each statement after it sees the data as of then.
            self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" if not write else
                         "BEGIN ISOLATION LEVEL READ COMMITTED")
            if write:
                try:
                    self.execute("SELECT pg_advisory_xact_lock(?)", (_PG_WRITE_LOCK,))
                except BaseException:
                    self.rollback()  # a wait that failed (a timeout, a cancel) leaves no transaction behind
                    raise
        else:
            self.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    @property
    def in_transaction(self) -> bool:
        conn = self._conn
        if conn is None:
            return False
        if self.postgres:
            from psycopg.pq import TransactionStatus

            return not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE
        return conn.in_transaction

    def commit(self) -> None:
        self.execute("COMMIT")

    def notify(self) -> None:
        """Inside a write that adds to the bell log: PostgreSQL tells every listening API process when it commits
        (StreamStore.wait_for_change); SQLite's readers poll."""
        if self.postgres:
            self.execute(f"NOTIFY {CHANNEL}")

    def rollback(self) -> None:
        """Ends a failed transaction (a connection that broke is replaced on its next use)."""
        with contextlib.suppress(Exception):
            if self.in_transaction:
                self.execute("ROLLBACK")

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


def _no_nul(args: Sequence[Any]) -> tuple:
    """PostgreSQL's text holds no NUL character (SQLite's does): one in a peer's summary must not stop the bell."""
    return tuple(a.replace("\x00", "\ufffd") if isinstance(a, str) and "\x00" in a else a for a in args)


def store_url(target: Path | str) -> str:
    """A stream store's URL: a SQLite file's path, or a database URL as it is."""
    if isinstance(target, Path):
        return f"sqlite:///{target}"
    return target


def store_file(url: str) -> Path | None:
    """The SQLite file a stream store's URL names (None on PostgreSQL)."""
    return None if database.is_postgres(url) else Path(url.split("sqlite:///", 1)[1])


class StreamStore:
    def __init__(self, target: Path | str) -> None:
        """`target`: a SQLite file (the embedded default's `<BATON_HOME>/stream.db`) or a database URL
        (`postgresql://...`, the install's BATON_DATABASE_URL). Migrated to the newest schema as it opens."""
        # Called after each bell is written (the worker's queues assign what waits in push queues).
        self.after_ring: Callable[[], None] | None = None
        url = store_url(target)
        if (path := store_file(url)) is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        database.migrated(url, database.STREAM)
        # On PostgreSQL every read is a round trip to another process: readers on an event loop use a thread.
        self.remote = database.is_postgres(url)
        self._db = Db(url)
        self._lock = threading.Lock()
        # The queues' decisions (activities/queues.py) on a connection of their own: a decision waiting for the
        # store's write lock never holds up this process's stream reads (readers do not wait for a writer).
        self._qdb = Db(url)
        self._qlock = threading.Lock()
        # PostgreSQL: idle connections for reads (_reader), and the connection that listens for new bells.
        self._url = url
        self._idle: list[Db] = []
        self._listener: Any = None

    def close(self) -> None:
        with self._lock:
            self._db.close()
        with self._qlock:
            self._qdb.close()
        while self._idle:
            self._idle.pop().close()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._listener.close()
            self._listener = None

    def _notified(self, timeout: float) -> bool:
        """One notification within `timeout` (the generator closed after it: it holds the connection's lock)."""
        waiting = self._listener.notifies(timeout=timeout, stop_after=1)
        try:
            return next(waiting, None) is not None
        finally:
            waiting.close()

    def wait_for_change(self, timeout: float) -> bool:
        """PostgreSQL: block (one thread, the API's tail) until a write adds to the bell log or `timeout` passes;
        True when one may have. The first call starts listening and answers True at once, so a bell written before
        the listening began is read too; a listener that fails answers True (the caller reads, and listens again).
        SQLite: never called (its readers poll)."""
        import psycopg

        if self._listener is None:
            try:
                conn = Db(self._url)._connection()
                conn.execute(f"LISTEN {CHANNEL}")
            except psycopg.Error:
                # Waits out the timeout first: a server that refuses at once must not turn the tail into a busy loop.
                log.exception("listening for new bells failed; reading every %s s until it works", timeout)
                time.sleep(timeout)
                return True
            self._listener = conn
            return True
        try:
            if not self._notified(timeout):
                return False
            # One read answers every notification that came meanwhile (a burst sends one per write).
            while self._notified(0):
                pass
            return True
        except psycopg.Error:
            log.exception("listening for new bells failed; listening again")
            with contextlib.suppress(Exception):
                self._listener.close()
            self._listener = None
            return True

    # ---- the writer (the worker) -------------------------------------------------------------------

    def ring(self, bell: Bell) -> None:
        """Record the conversation's latest state and log the change. A retried bell logs twice, which a reader
        takes as "look again": nothing is delivered twice because readers go by seq."""
        waiting = _iso(bell.waiting_since) if bell.waiting_since else None
        with self._lock:
            db = self._db
            db.begin(write=True)
            try:
                before = db.execute(
                    "SELECT seq, owner, queue, bell, state, created FROM conversations WHERE conversation_id = ?",
                    (bell.conversation_id,),
                ).fetchone()
                prev_seq, prev_owner, prev_queue, prev_bell, prev_state, prev_created = (
                    before if before else (0, None, None, 0, "", None))
                created = _iso(bell.created) if bell.created else None
                # A closed conversation's id may start a new conversation, whose bells count from 1 again; a late
                # bell of the closed one (rung before its close, written after) is older all the same.
                same = prev_state != "closed" or (created is not None and created == prev_created)
                if bell.number and bell.number <= prev_bell and same:
                    # An older bell (two may be in flight) or a retried one: the newer state stays. Its entries may
                    # still be new to a reader that missed them, so they are logged.
                    self._log_entries(db, bell)
                    db.notify()
                    db.commit()
                    return
                db.execute(
                    "INSERT INTO conversations (conversation_id, seq, state, owner, queue, waiting_since, reason, at, bell,"
                    " created, summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (conversation_id) DO UPDATE"
                    " SET seq = excluded.seq, state = excluded.state, owner = excluded.owner, queue = excluded.queue,"
                    " waiting_since = excluded.waiting_since, reason = excluded.reason, at = excluded.at,"
                    " bell = excluded.bell, created = excluded.created, summary = excluded.summary",
                    (bell.conversation_id, bell.seq, bell.state.value, bell.owner, bell.queue, waiting,
                     bell.reason, _iso(bell.at), bell.number, created, bell.summary),
                )
                if before is not None and not same:
                    # A new conversation under a closed one's id: nothing of the old one's queue terms or helper.
                    db.execute("DELETE FROM helpers WHERE conversation_id = ?", (bell.conversation_id,))
                self._desk_side(db, bell)
                # The entries first, then the bell: a reader that sees the bell has its entries already.
                self._log_entries(db, bell)
                db.execute(
                    "INSERT INTO bells (conversation_id, seq, prev_seq, state, owner, prev_owner, queue, prev_queue, at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (bell.conversation_id, bell.seq, prev_seq, bell.state.value, bell.owner, prev_owner, bell.queue,
                     prev_queue, _iso(bell.at)),
                )
                db.notify()
                db.commit()
            except BaseException:
                db.rollback()
                raise
        if self.after_ring is not None:
            try:
                self.after_ring()
            except Exception:  # noqa: BLE001 - the bell is written; the next round (0.5 s) offers what this one missed
                log.exception("assignment round after a bell failed")

    @staticmethod
    def _desk_side(db: Db, bell: Bell) -> None:
        """What the queues keep besides the waiting list: a claim in flight ends with the conversation's next state,
        and a live agent who has the conversation is remembered as its last helper (sticky assignment)."""
        if bell.state.value != "handoff_pending":
            db.execute("DELETE FROM reservations WHERE conversation_id = ?", (bell.conversation_id,))
        if bell.rated is not None and bell.rated.score is not None:
            db.execute(
                "INSERT INTO ratings (conversation_id, created, number, agent_id, score, at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (conversation_id, created, number) DO NOTHING",
                (bell.conversation_id, _iso(bell.created) if bell.created else "", bell.rated.number,
                 bell.rated.agent, bell.rated.score, _iso(bell.at)),
            )
        if bell.state.value == "live_agent" and bell.owner and ":" not in bell.owner:
            db.execute(
                "INSERT INTO helpers (conversation_id, agent_id, at) VALUES (?, ?, ?) ON CONFLICT (conversation_id)"
                " DO UPDATE SET agent_id = excluded.agent_id, at = excluded.at",
                (bell.conversation_id, bell.owner, _iso(bell.at)),
            )

    @contextlib.contextmanager
    def writing(self) -> Iterator[Db]:
        """One write transaction on the queues' own connection (their decisions are made inside one)."""
        with self._qlock:
            db = self._qdb
            db.begin(write=True)
            try:
                yield db
                db.commit()
            except BaseException:
                db.rollback()
                raise

    @contextlib.contextmanager
    def reading(self) -> Iterator[Db]:
        """Reads that must agree with each other (one snapshot), on the queues' connection."""
        with self._qlock:
            db = self._qdb
            db.begin(write=False)
            try:
                yield db
            finally:
                if db.in_transaction:
                    db.commit()

    def ring_carried(self, bell: Bell, entry: TranscriptEntry | None) -> None:
        """A bell carried by another activity, with the entry that activity's input holds put back in its place."""
        if entry is not None and bell.omits == entry.seq:
            bell = bell.model_copy(update={"entries": sorted([*bell.entries, entry], key=lambda e: e.seq)})
        self.ring(bell)

    @staticmethod
    def _log_entries(db: Db, bell: Bell) -> None:
        db.executemany(
            "INSERT INTO bells (conversation_id, seq, prev_seq, state, at, entry) VALUES (?, ?, ?, '', ?, ?)",
            [(bell.conversation_id, e.seq, e.seq - 1, _iso(e.at), e.model_dump_json()) for e in bell.entries],
        )

    # ---- the readers (API processes) ----------------------------------------------------------------

    @contextlib.contextmanager
    def _reader(self) -> Iterator[Db]:
        """A connection to read on: SQLite's one (a read takes microseconds); on PostgreSQL one of a few idle ones,
        so the reads of concurrent streams (a round trip each) do not queue behind one connection."""
        if not self.remote:
            with self._lock:
                yield self._db
            return
        try:
            db = self._idle.pop()
        except IndexError:
            db = Db(self._url)
        try:
            yield db
        except BaseException:
            db.close()  # in whatever state the failure left it
            raise
        if len(self._idle) < READERS:
            self._idle.append(db)
        else:
            db.close()

    def last_id(self) -> int:
        with self._reader() as db:
            row = db.execute("SELECT max(id) FROM bells").fetchone()
        return row[0] or 0

    def since(self, after_id: int, limit: int = 1000) -> list[Rung]:
        with self._reader() as db:
            rows = db.execute(
                "SELECT id, conversation_id, seq, prev_seq, state, owner, prev_owner, queue, prev_queue, entry FROM bells"
                " WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [Rung(r) for r in rows]

    def waiting_json(self, queue: str, limit: int = 500, total: bool = False) -> tuple[list[dict], int | None]:
        """The waiting list as the API and the desk stream send it (WaitingRow's JSON, built straight from the
        columns: a 500-row page is read on every change of a queue), and, with `total`, how many wait in all."""
        with self._reader() as db:
            db.begin(write=False)
            try:
                rows = db.execute(
                    "SELECT c.conversation_id, c.waiting_since, c.reason, c.summary, coalesce(t.priority, 0),"
                    f" coalesce(t.skills, '[]') FROM {_WAITING} ORDER BY {_ORDER} LIMIT ?",
                    (queue, limit),
                ).fetchall()
                count = db.execute(
                    f"SELECT count(*) FROM conversations WHERE queue = ? AND {_WAITS}", (queue,)
                ).fetchone()[0] if total else None
            finally:
                db.rollback()
        return [
            # Stored as UTC ISO 8601 (_iso); sent as pydantic sends a UTC datetime.
            {"conversation_id": cid, "position": i, "waiting_since": since.replace("+00:00", "Z"), "reason": reason,
             "summary": summary, "priority": priority, "skills": json.loads(skills) if skills != "[]" else []}
            for i, (cid, since, reason, summary, priority, skills) in enumerate(rows, start=1)
        ], count

    def waiting_page(self, queue: str, limit: int) -> tuple[list[WaitingRow], int]:
        """The queue's first `limit` and how many wait in all, read together, as models."""
        rows, total = self.waiting_json(queue, limit, total=True)
        return [WaitingRow.model_validate(r) for r in rows], total or 0

    def waiting(self, queue: str, limit: int = 500) -> list[WaitingRow]:
        """The queue's waiting list (highest priority, then oldest first), exact as of each conversation's last bell."""
        return [WaitingRow.model_validate(r) for r in self.waiting_json(queue, limit)[0]]

    def position(self, conversation_id: str) -> int | None:
        """The conversation's place in its queue while it waits for a person, else None."""
        with self._reader() as db:
            row = db.execute(
                f"SELECT queue, waiting_since FROM conversations WHERE conversation_id = ? AND {_WAITS}",
                (conversation_id,),
            ).fetchone()
            if row is None or row[0] is None:
                return None
            return StreamStore._ahead(db, row[0], conversation_id, row[1], tie=True) + 1

    @staticmethod
    def _ahead(db: Db, queue: str, conversation_id: str, since: str, tie: bool) -> int:
        """How many wait in `queue` ahead of a conversation waiting since `since` with its priority (its terms):
        higher priority, or the same and older (`tie`: the same instant and a smaller id too)."""
        row = db.execute("SELECT priority FROM terms WHERE conversation_id = ?", (conversation_id,)).fetchone()
        mine = row[0] if row else 0
        older = "(c.waiting_since < ? OR (c.waiting_since = ? AND c.conversation_id < ?))" if tie else \
            "(c.waiting_since < ? AND c.conversation_id != ?)"
        older_args = (since, since, conversation_id) if tie else (since, conversation_id)
        return db.execute(
            f"SELECT count(*) FROM {_WAITING} AND c.conversation_id != ? AND (coalesce(t.priority, 0) > ?"
            f" OR (coalesce(t.priority, 0) = ? AND {older}))",
            (queue, conversation_id, mine, mine, *older_args),
        ).fetchone()[0]

    def waiting_counts(self) -> dict[str, int]:
        """How many conversations wait in each queue (`/metrics`' baton_conversations_waiting)."""
        with self._reader() as db:
            rows = db.execute(
                f"SELECT queue, count(*) FROM conversations WHERE queue IS NOT NULL AND {_WAITS} GROUP BY queue"
            ).fetchall()
        return dict(rows)

    def ahead(self, queue: str, conversation_id: str, since: datetime) -> int:
        """How many others wait in `queue` since before `since` (the routing decision's position, minus one)."""
        with self._reader() as db:
            return StreamStore._ahead(db, queue, conversation_id, _iso(since), tie=False)

    def window(self, conversation_id: str, upto: int, size: int) -> list[TranscriptEntry] | None:
        """The conversation's entries `upto - size + 1 .. upto` as the log holds them, or None unless it holds every
        one of them (pruned after LOG_KEEP, left out of a bell too large to carry them, not written yet): the caller
        then asks the workflow. Entries of an earlier conversation under the same id (older than this one's
        creation) do not count."""
        first = max(1, upto - size + 1)
        with self._reader() as db:
            row = db.execute(
                "SELECT created, state FROM conversations WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
            # Unknown, or the store has heard only of a closed conversation under this id (the one asking is open:
            # its first bell is not written yet): the workflow answers.
            if row is None or row[0] is None or row[1] == "closed":
                return None
            rows = db.execute(
                "SELECT seq, entry FROM bells WHERE conversation_id = ? AND entry IS NOT NULL AND seq BETWEEN ? AND ?",
                (conversation_id, first, upto),
            ).fetchall()
        created = datetime.fromisoformat(row[0])
        found: dict[int, TranscriptEntry] = {}
        for seq, raw in rows:
            if seq not in found:
                entry = TranscriptEntry.model_validate_json(raw)
                if entry.at >= created:
                    found[seq] = entry
        if len(found) != upto - first + 1:
            return None
        return [found[seq] for seq in range(first, upto + 1)]

    def forget_old(self, now: datetime | None = None) -> int:
        cutoff = _iso((now or datetime.now(UTC)) - LOG_KEEP)
        with self.writing() as db:
            db.execute("DELETE FROM conversations WHERE state = 'closed' AND at < ?", (cutoff,))
            # The queues' working rows of conversations that are gone, and ended offers (wrap-ups and ratings stay:
            # they are the record the report counts). A helper is kept for the longest sticky window (30 days).
            db.execute("DELETE FROM offers WHERE status NOT IN ('open', 'accepting') AND ended_at < ?", (cutoff,))
            db.execute("DELETE FROM terms WHERE conversation_id NOT IN (SELECT conversation_id FROM conversations)")
            db.execute("DELETE FROM reservations WHERE at < ?", (cutoff,))
            db.execute("DELETE FROM helpers WHERE at < ?", (_iso((now or datetime.now(UTC)) - timedelta(days=31)),))
            return db.execute("DELETE FROM bells WHERE at < ?", (cutoff,)).rowcount


class StreamBell:
    """The `ring_bell` activity, over a store opened on first use."""

    def __init__(self, opener) -> None:
        self._open = opener

    @activity.defn(name=Activities.RING_BELL)
    async def ring_bell(self, bell: Bell) -> None:
        await asyncio.to_thread(self._open().ring, bell)


def stream_path(home: Path) -> Path:
    return home / "stream.db"


def open_stream(database_url: str | None, home: Path) -> StreamStore:
    """This install's stream store: in its PostgreSQL database when BATON_DATABASE_URL names one (shared by every
    host), else `<home>/stream.db` (beside the embedded default's `baton.db`)."""
    if database_url and database.is_postgres(database_url):
        return StreamStore(database_url)
    return StreamStore(stream_path(home))
