"""The event stream's store: each conversation's latest bell, the exact waiting lists, and a log that API processes
tail to wake their subscribers (docs/event-stream.md).

The workflow rings (the `ring_bell` activity) after every change; any number of API processes read. A bell holds
ids, states, owners, queues, times and the handoff's reason, and the entries added since the previous bell (already
redacted, as the transcript holds them), logged as rows of their own so a stream sends them without asking the
workflow. Log rows are kept for an hour (LOG_KEEP). SQLite (WAL, shared by the worker and the API on one host)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
import json
from pathlib import Path

import logging

from temporalio import activity

from models.conversation import Bell, TranscriptEntry
from models.names import Activities
from models.stream import WaitingRow

log = logging.getLogger("baton.stream")

# The log only wakes processes that are running now; a process that starts reads from its end. An hour is plenty.
LOG_KEEP = timedelta(hours=1)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS bells (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        prev_seq INTEGER NOT NULL,
        state TEXT NOT NULL,
        owner TEXT,
        prev_owner TEXT,
        queue TEXT,
        prev_queue TEXT,
        at TEXT NOT NULL,
        entry TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS conversations (
        conversation_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        state TEXT NOT NULL,
        owner TEXT,
        queue TEXT,
        waiting_since TEXT,
        reason TEXT,
        at TEXT NOT NULL,
        bell INTEGER NOT NULL DEFAULT 0,
        created TEXT,
        summary TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS conversations_waiting ON conversations (queue, waiting_since, conversation_id) "
    "WHERE waiting_since IS NOT NULL",
    # A conversation's logged entries by seq: the AI agent's window (StreamStore.window).
    "CREATE INDEX IF NOT EXISTS bells_entries ON bells (conversation_id, seq) WHERE entry IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS conversations_owner ON conversations (owner) WHERE owner IS NOT NULL",
    # The queues that know (activities/queues.py): what a waiting conversation needs and how urgent it is (written by
    # the routing decision), who is present with what capacity and skills, offers, claims in flight, and who last
    # helped in each conversation (sticky assignment).
    """CREATE TABLE IF NOT EXISTS terms (
        conversation_id TEXT PRIMARY KEY,
        priority INTEGER NOT NULL DEFAULT 0,
        skills TEXT NOT NULL DEFAULT '[]'
    )""",
    """CREATE TABLE IF NOT EXISTS presence (
        agent_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        since TEXT NOT NULL,
        heartbeat_at TEXT NOT NULL,
        idle_since TEXT NOT NULL,
        capacity INTEGER NOT NULL,
        skills TEXT NOT NULL,
        queues TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS offers (
        offer_id TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL,
        queue TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        waiting_since TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        status TEXT NOT NULL,
        ended_at TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS offers_live ON offers (status, expires_at)",
    "CREATE INDEX IF NOT EXISTS offers_conversation ON offers (conversation_id, waiting_since)",
    "CREATE INDEX IF NOT EXISTS offers_agent ON offers (agent_id, status)",
    """CREATE TABLE IF NOT EXISTS reservations (
        conversation_id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        at TEXT NOT NULL,
        waiting_since TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS helpers (
        conversation_id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS wrap_ups (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        action TEXT NOT NULL,
        code TEXT NOT NULL,
        at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS ratings (
        conversation_id TEXT NOT NULL,
        created TEXT NOT NULL,
        number INTEGER NOT NULL,
        agent_id TEXT NOT NULL,
        score INTEGER NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (conversation_id, created, number)
    )""",
)

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


class StreamStore:
    def __init__(self, path: Path) -> None:
        # Called after each bell is written (the worker's queues assign what waits in push queues).
        self.after_ring: Callable[[], None] | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._lock = threading.Lock()
        # The queues' decisions (activities/queues.py) on a connection of their own: a decision waiting for SQLite's
        # write lock never holds up this process's stream reads (WAL: readers do not wait for a writer).
        self._path = path
        self._qdb: sqlite3.Connection | None = None
        self._qlock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                self._db.execute(statement)
            # A store written by the first version of this module.
            if "entry" not in {row[1] for row in self._db.execute("PRAGMA table_info(bells)")}:
                self._db.execute("ALTER TABLE bells ADD COLUMN entry TEXT")
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(conversations)")}
            if "bell" not in columns:
                self._db.execute("ALTER TABLE conversations ADD COLUMN bell INTEGER NOT NULL DEFAULT 0")
            if "created" not in columns:
                self._db.execute("ALTER TABLE conversations ADD COLUMN created TEXT")
            if "summary" not in columns:
                self._db.execute("ALTER TABLE conversations ADD COLUMN summary TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
        with self._qlock:
            if self._qdb is not None:
                self._qdb.close()

    # ---- the writer (the worker) -------------------------------------------------------------------

    def ring(self, bell: Bell) -> None:
        """Record the conversation's latest state and log the change. A retried bell logs twice, which a reader
        takes as "look again": nothing is delivered twice because readers go by seq."""
        waiting = _iso(bell.waiting_since) if bell.waiting_since else None
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
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
                    db.execute("COMMIT")
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
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if self.after_ring is not None:
            try:
                self.after_ring()
            except Exception:  # noqa: BLE001 - the bell is written; the next round (0.5 s) offers what this one missed
                log.exception("assignment round after a bell failed")

    @staticmethod
    def _desk_side(db: sqlite3.Connection, bell: Bell) -> None:
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

    def _queues_db(self) -> sqlite3.Connection:
        if self._qdb is None:
            self._qdb = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None, timeout=10)
            self._qdb.execute("PRAGMA synchronous=NORMAL")
        return self._qdb

    @contextlib.contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the queues' own connection (their decisions are made inside one)."""
        with self._qlock:
            db = self._queues_db()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """Reads that must agree with each other (one snapshot), on the queues' connection."""
        with self._qlock:
            db = self._queues_db()
            db.execute("BEGIN")
            try:
                yield db
            finally:
                if db.in_transaction:
                    db.execute("COMMIT")

    def ring_carried(self, bell: Bell, entry: TranscriptEntry | None) -> None:
        """A bell carried by another activity, with the entry that activity's input holds put back in its place."""
        if entry is not None and bell.omits == entry.seq:
            bell = bell.model_copy(update={"entries": sorted([*bell.entries, entry], key=lambda e: e.seq)})
        self.ring(bell)

    @staticmethod
    def _log_entries(db: sqlite3.Connection, bell: Bell) -> None:
        db.executemany(
            "INSERT INTO bells (conversation_id, seq, prev_seq, state, at, entry) VALUES (?, ?, ?, '', ?, ?)",
            [(bell.conversation_id, e.seq, e.seq - 1, _iso(e.at), e.model_dump_json()) for e in bell.entries],
        )

    # ---- the readers (API processes) ----------------------------------------------------------------

    def last_id(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT max(id) FROM bells").fetchone()
        return row[0] or 0

    def since(self, after_id: int, limit: int = 1000) -> list[Rung]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, conversation_id, seq, prev_seq, state, owner, prev_owner, queue, prev_queue, entry FROM bells"
                " WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [Rung(r) for r in rows]

    def waiting_json(self, queue: str, limit: int = 500, total: bool = False) -> tuple[list[dict], int | None]:
        """The waiting list as the API and the desk stream send it (WaitingRow's JSON, built straight from the
        columns: a 500-row page is read on every change of a queue), and, with `total`, how many wait in all."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                rows = self._db.execute(
                    "SELECT c.conversation_id, c.waiting_since, c.reason, c.summary, coalesce(t.priority, 0),"
                    f" coalesce(t.skills, '[]') FROM {_WAITING} ORDER BY {_ORDER} LIMIT ?",
                    (queue, limit),
                ).fetchall()
                count = self._db.execute(
                    f"SELECT count(*) FROM conversations WHERE queue = ? AND {_WAITS}", (queue,)
                ).fetchone()[0] if total else None
            finally:
                self._db.execute("COMMIT")
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
        with self._lock:
            row = self._db.execute(
                f"SELECT queue, waiting_since FROM conversations WHERE conversation_id = ? AND {_WAITS}",
                (conversation_id,),
            ).fetchone()
            if row is None or row[0] is None:
                return None
            return self._ahead(row[0], conversation_id, row[1], tie=True) + 1

    def _ahead(self, queue: str, conversation_id: str, since: str, tie: bool) -> int:
        """How many wait in `queue` ahead of a conversation waiting since `since` with its priority (its terms):
        higher priority, or the same and older (`tie`: the same instant and a smaller id too)."""
        row = self._db.execute("SELECT priority FROM terms WHERE conversation_id = ?", (conversation_id,)).fetchone()
        mine = row[0] if row else 0
        older = "(c.waiting_since < ? OR (c.waiting_since = ? AND c.conversation_id < ?))" if tie else \
            "(c.waiting_since < ? AND c.conversation_id != ?)"
        older_args = (since, since, conversation_id) if tie else (since, conversation_id)
        return self._db.execute(
            f"SELECT count(*) FROM {_WAITING} AND c.conversation_id != ? AND (coalesce(t.priority, 0) > ?"
            f" OR (coalesce(t.priority, 0) = ? AND {older}))",
            (queue, conversation_id, mine, mine, *older_args),
        ).fetchone()[0]

    def waiting_counts(self) -> dict[str, int]:
        """How many conversations wait in each queue (`/metrics`' baton_conversations_waiting)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT queue, count(*) FROM conversations WHERE queue IS NOT NULL AND {_WAITS} GROUP BY queue"
            ).fetchall()
        return dict(rows)

    def ahead(self, queue: str, conversation_id: str, since: datetime) -> int:
        """How many others wait in `queue` since before `since` (the routing decision's position, minus one)."""
        with self._lock:
            return self._ahead(queue, conversation_id, _iso(since), tie=False)

    def window(self, conversation_id: str, upto: int, size: int) -> list[TranscriptEntry] | None:
        """The conversation's entries `upto - size + 1 .. upto` as the log holds them, or None unless it holds every
        one of them (pruned after LOG_KEEP, left out of a bell too large to carry them, not written yet): the caller
        then asks the workflow. Entries of an earlier conversation under the same id (older than this one's
        creation) do not count."""
        first = max(1, upto - size + 1)
        with self._lock:
            row = self._db.execute(
                "SELECT created, state FROM conversations WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
            # Unknown, or the store has heard only of a closed conversation under this id (the one asking is open:
            # its first bell is not written yet): the workflow answers.
            if row is None or row[0] is None or row[1] == "closed":
                return None
            rows = self._db.execute(
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
        with self._lock:
            self._db.execute("DELETE FROM conversations WHERE state = 'closed' AND at < ?", (cutoff,))
            # The queues' working rows of conversations that are gone, and ended offers (wrap-ups and ratings stay:
            # they are the record the report counts). A helper is kept for the longest sticky window (30 days).
            self._db.execute("DELETE FROM offers WHERE status NOT IN ('open', 'accepting') AND ended_at < ?", (cutoff,))
            self._db.execute("DELETE FROM terms WHERE conversation_id NOT IN (SELECT conversation_id FROM conversations)")
            self._db.execute("DELETE FROM reservations WHERE at < ?", (cutoff,))
            self._db.execute("DELETE FROM helpers WHERE at < ?",
                             (_iso((now or datetime.now(UTC)) - timedelta(days=31)),))
            return self._db.execute("DELETE FROM bells WHERE at < ?", (cutoff,)).rowcount


class StreamBell:
    """The `ring_bell` activity, over a store opened on first use."""

    def __init__(self, opener) -> None:
        self._open = opener

    @activity.defn(name=Activities.RING_BELL)
    async def ring_bell(self, bell: Bell) -> None:
        await asyncio.to_thread(self._open().ring, bell)


def stream_path(home: Path) -> Path:
    return home / "stream.db"
