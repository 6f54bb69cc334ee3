"""The event stream's store: each conversation's latest bell, the exact waiting lists, and a log that API processes
tail to wake their subscribers (docs/event-stream.md).

The workflow rings (the `ring_bell` activity) after every change; any number of API processes read. A bell holds
ids, states, owners, queues, times and the handoff's reason, and the entries added since the previous bell (already
redacted, as the transcript holds them), logged as rows of their own so a stream sends them without asking the
workflow. Log rows are kept for an hour (LOG_KEEP). SQLite (WAL, shared by the worker and the API on one host)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio import activity

from models.conversation import Bell, TranscriptEntry
from models.names import Activities
from models.stream import WaitingRow

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
)


# A conversation waits for a person: the one condition the waiting lists, positions and the routing count share.
_WAITS = "state = 'handoff_pending' AND waiting_since IS NOT NULL"


class Rung:
    """One row of the bell log: what changed, with what it was before (so a reader knows which lists it touches)."""

    __slots__ = ("id", "conversation_id", "seq", "prev_seq", "state", "owner", "prev_owner", "queue", "prev_queue",
                 "entry")

    def __init__(self, row: tuple) -> None:
        (self.id, self.conversation_id, self.seq, self.prev_seq, self.state, self.owner, self.prev_owner,
         self.queue, self.prev_queue, entry) = row
        # An entry row (logged with a bell) carries the entry; its state fields are empty.
        self.entry: TranscriptEntry | None = TranscriptEntry.model_validate_json(entry) if entry else None

    def queues(self) -> set[str]:
        return {q for q in (self.queue, self.prev_queue) if q}

    def owners(self) -> set[str]:
        return {o for o in (self.owner, self.prev_owner) if o}


def _iso(at: datetime) -> str:
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


class StreamStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._lock = threading.Lock()
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

    def waiting_page(self, queue: str, limit: int) -> tuple[list[WaitingRow], int]:
        """The queue's oldest `limit` and how many wait in all, read together."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                rows = self._waiting_rows(queue, limit)
                total = self._db.execute(
                    f"SELECT count(*) FROM conversations WHERE queue = ? AND {_WAITS}", (queue,)
                ).fetchone()[0]
            finally:
                self._db.execute("COMMIT")
        return rows, total

    def _waiting_rows(self, queue: str, limit: int) -> list[WaitingRow]:
        rows = self._db.execute(
            f"SELECT conversation_id, waiting_since, reason, summary FROM conversations WHERE queue = ? AND {_WAITS}"
            " ORDER BY waiting_since, conversation_id LIMIT ?",
            (queue, limit),
        ).fetchall()
        return [
            WaitingRow(conversation_id=cid, position=i, waiting_since=datetime.fromisoformat(since), reason=reason,
                       summary=summary)
            for i, (cid, since, reason, summary) in enumerate(rows, start=1)
        ]

    def waiting(self, queue: str, limit: int = 500) -> list[WaitingRow]:
        """The queue's waiting list, oldest first, exact as of the last bell of each conversation."""
        with self._lock:
            return self._waiting_rows(queue, limit)

    def position(self, conversation_id: str) -> int | None:
        """The conversation's place in its queue while it waits for a person, else None."""
        with self._lock:
            row = self._db.execute(
                f"SELECT queue, waiting_since FROM conversations WHERE conversation_id = ? AND {_WAITS}",
                (conversation_id,),
            ).fetchone()
            if row is None or row[0] is None:
                return None
            ahead = self._db.execute(
                f"SELECT count(*) FROM conversations WHERE queue = ? AND {_WAITS}"
                " AND (waiting_since < ? OR (waiting_since = ? AND conversation_id < ?))",
                (row[0], row[1], row[1], conversation_id),
            ).fetchone()[0]
        return ahead + 1

    def ahead(self, queue: str, conversation_id: str, since: datetime) -> int:
        """How many others wait in `queue` since before `since` (the routing decision's position, minus one)."""
        with self._lock:
            return self._db.execute(
                f"SELECT count(*) FROM conversations WHERE queue = ? AND {_WAITS}"
                " AND waiting_since < ? AND conversation_id != ?",
                (queue, _iso(since), conversation_id),
            ).fetchone()[0]

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
