"""The event stream's store (activities/stream.py), on SQLite and on a real PostgreSQL: the newest bell wins, a late
bell never revives a closed conversation, a new conversation under a closed one's id starts afresh, the waiting lists
read together, the AI's window, and writers in two processes whose log a reader tails with no gap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from activities.stream import StreamStore
from models.conversation import Bell, State

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CREATED = T0 - timedelta(hours=1)


def bell(number: int, state: State, queue: str | None = None, created: datetime | None = CREATED,
         cid: str = "c1", since: datetime = T0) -> Bell:
    waiting = state is State.HANDOFF_PENDING and queue is not None
    return Bell(conversation_id=cid, number=number, seq=number, state=state, queue=queue, at=T0,
                waiting_since=since if waiting else None, reason="wants a person" if waiting else None,
                created=created)


def test_the_newest_bell_wins_whatever_the_order(stream_target) -> None:
    store = StreamStore(stream_target)
    store.ring(bell(3, State.LIVE_AGENT))
    store.ring(bell(2, State.HANDOFF_PENDING, "general"))  # rung before the claim, written after it
    assert store.waiting("general") == [] and store.position("c1") is None
    store.ring(bell(4, State.HANDOFF_PENDING, "billing"))
    assert [r.conversation_id for r in store.waiting("billing")] == ["c1"] and store.position("c1") == 1
    store.close()


def test_a_late_bell_never_lists_a_closed_conversation_again(stream_target) -> None:
    """The routing decision's (or the AI turn's) listing is written late: after the close it is older, and the
    conversation stays closed and out of every waiting list."""
    store = StreamStore(stream_target)
    store.ring(bell(1, State.AI))
    store.ring(bell(3, State.CLOSED))
    store.ring(bell(2, State.HANDOFF_PENDING, "general"))
    assert store.waiting("general") == [] and store.position("c1") is None
    assert store.waiting_page("general", 50) == ([], 0)
    store.close()


def test_a_new_conversation_under_a_closed_ones_id_starts_afresh(stream_target) -> None:
    store = StreamStore(stream_target)
    store.ring(bell(7, State.CLOSED))
    again = CREATED + timedelta(hours=2)
    store.ring(bell(1, State.HANDOFF_PENDING, "general", created=again))
    assert [r.conversation_id for r in store.waiting("general")] == ["c1"]
    # Bells of older code carry no creation time: after a close they count as a new conversation, as before.
    store.ring(bell(9, State.CLOSED, created=again))
    store.ring(bell(1, State.HANDOFF_PENDING, "general", created=None))
    assert [r.conversation_id for r in store.waiting("general")] == ["c1"]
    store.close()


def test_a_waiting_page_holds_the_oldest_and_counts_them_all(stream_target) -> None:
    store = StreamStore(stream_target)
    for i in range(5):
        store.ring(bell(1, State.HANDOFF_PENDING, "general", cid=f"c{i}", since=T0 + timedelta(seconds=5 - i)))
    store.ring(bell(1, State.HANDOFF_PENDING, "billing", cid="other"))
    rows, total = store.waiting_page("general", 2)
    assert [(r.conversation_id, r.position) for r in rows] == [("c4", 1), ("c3", 2)] and total == 5
    store.close()


def test_the_desk_streams_of_one_api_process_read_a_waiting_list_once_per_change(stream_target) -> None:
    """api.stream.Hub.waiting: every desk stream a change wakes asks for the same list. It is read once per position
    of the log's tail (not once per stream), and a change that moves the tail is read afresh: never an older list."""
    from api.stream import Hub

    store = StreamStore(stream_target)
    reads: list[str] = []
    real = store.waiting_json

    def counting(queue: str, *args, **kwargs):
        reads.append(queue)
        return real(queue, *args, **kwargs)

    store.waiting_json = counting  # type: ignore[method-assign]
    hub = Hub(lambda: store)
    store.ring(bell(1, State.HANDOFF_PENDING, "general", cid="a"))
    hub.last_id = store.last_id()  # what the tail does as it reads the log
    lists = [hub.waiting("general") for _ in range(4)]  # four consoles woken by the same change
    assert reads == ["general"]
    assert all(one == lists[0] for one in lists) and [r["conversation_id"] for r in lists[0]] == ["a"]
    store.ring(bell(1, State.HANDOFF_PENDING, "general", cid="b", since=T0 + timedelta(seconds=1)))
    hub.last_id = store.last_id()
    assert [r["conversation_id"] for r in hub.waiting("general")] == ["a", "b"] and len(reads) == 2
    assert [r["conversation_id"] for r in hub.waiting("general")] == ["a", "b"] and len(reads) == 2
    assert hub.waiting("billing") == [] and reads == ["general", "general", "billing"]
    store.ring(bell(2, State.LIVE_AGENT, cid="a"))  # claimed
    hub.last_id = store.last_id()
    assert [(r["conversation_id"], r["position"]) for r in hub.waiting("general")] == [("b", 1)]
    store.close()


def entries(first: int, last: int, at: datetime = T0) -> list:
    from models.conversation import Role, TranscriptEntry

    return [TranscriptEntry(seq=s, message_id=f"m{s}", role=Role.USER if s % 2 else Role.AI,
                            author="user" if s % 2 else "ai", text=f"entry {s}", at=at) for s in range(first, last + 1)]


def test_the_ai_window_is_read_from_the_log_only_when_it_holds_every_entry(stream_target) -> None:
    """The AI agent's window (activities.routing.read_window) comes from here instead of a query to the workflow,
    but only when nothing is missing: a gap, a pruned log or another conversation's entries mean None."""
    store = StreamStore(stream_target)
    assert store.window("c1", 3, 20) is None  # nothing known of the conversation
    store.ring(bell(1, State.AI).model_copy(update={"seq": 3, "entries": entries(1, 3)}))
    assert [e.seq for e in store.window("c1", 3, 20)] == [1, 2, 3]
    assert [e.seq for e in store.window("c1", 3, 2)] == [2, 3]  # the last `size` entries
    assert store.window("c1", 5, 20) is None  # entry 4 and 5 not written yet: ask the workflow
    # A bell too large to carry its entries leaves a gap: 4 is missing, so 6's window is not complete.
    store.ring(bell(2, State.AI).model_copy(update={"seq": 4, "entries": []}))
    store.ring(bell(3, State.AI).model_copy(update={"seq": 6, "entries": entries(5, 6)}))
    assert store.window("c1", 6, 20) is None and [e.seq for e in store.window("c1", 6, 2)] == [5, 6]
    # A retried bell logs its entries twice: each counts once.
    store.ring(bell(3, State.AI).model_copy(update={"seq": 6, "entries": entries(5, 6)}))
    assert [e.text for e in store.window("c1", 6, 2)] == ["entry 5", "entry 6"]
    # A new conversation under the same id: the closed one's entries (older than its creation) are not its own,
    # and while the store has heard only of the closed one, it answers nothing at all.
    store.ring(bell(9, State.CLOSED))
    assert store.window("c1", 2, 2) is None
    later = T0 + timedelta(hours=2)
    store.ring(bell(1, State.AI, created=later).model_copy(update={"seq": 2, "at": later,
                                                                   "entries": entries(2, 2, at=later)}))
    assert store.window("c1", 2, 20) is None  # its entry 1 is missing; the old conversation's entry 1 does not count
    store.ring(bell(2, State.AI, created=later).model_copy(update={"seq": 2, "at": later,
                                                                   "entries": entries(1, 1, at=later)}))
    assert [e.at for e in store.window("c1", 2, 20)] == [later, later]
    store.close()


async def test_read_window_asks_the_workflow_only_when_the_log_cannot_answer(stream_target) -> None:
    from activities.routing import read_window

    store = StreamStore(stream_target)
    store.ring(bell(1, State.AI).model_copy(update={"seq": 2, "entries": entries(1, 2)}))
    asked = []

    class Handle:
        async def query(self, name, arg, **kwargs):
            asked.append(arg.upto)
            from models.conversation import HistoryWindow
            return HistoryWindow(entries=entries(1, arg.upto))

    class Client:
        def get_workflow_handle(self, workflow_id):
            return Handle()

    assert [e.seq for e in await read_window(Client(), "c1", 2, lambda: store)] == [1, 2] and asked == []
    assert [e.seq for e in await read_window(Client(), "c1", 3, lambda: store)] == [1, 2, 3] and asked == [3]
    assert [e.seq for e in await read_window(Client(), "c1", 2)] == [1, 2] and asked == [3, 2]  # no store given
    store.close()


def test_a_reader_tailing_the_log_misses_no_row_while_two_stores_write_at_once(stream_target) -> None:
    """Every API process tails the log by id (`since(last)`): a row given a smaller id but committed after a larger
    one would be skipped for good. Writers take turns (the store's write lock), so ids become visible in order."""
    import threading

    writers = [StreamStore(stream_target), StreamStore(stream_target)]
    reader = StreamStore(stream_target)
    done = threading.Event()
    seen: list[int] = []

    def ring(store: StreamStore, prefix: str) -> None:
        for i in range(40):
            store.ring(bell(1, State.AI, cid=f"{prefix}{i}").model_copy(
                update={"seq": 2, "entries": entries(1, 2)}))

    def tail() -> None:
        last = 0
        while True:
            finished = done.is_set()
            rungs = reader.since(last)
            for r in rungs:
                seen.append(r.id)
            if rungs:
                last = rungs[-1].id
            elif finished:
                return

    threads = [threading.Thread(target=ring, args=(w, f"{n}-{t}-")) for n, w in enumerate(writers) for t in range(2)]
    tailer = threading.Thread(target=tail)
    tailer.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    done.set()
    tailer.join(60)
    every = [r.id for r in reader.since(0, limit=10_000)]
    assert len(every) == 4 * 40 * 3  # each bell: its two entries and itself
    assert seen == every
    for s in (*writers, reader):
        s.close()


def test_a_nul_character_in_a_peers_text_does_not_stop_a_bell(stream_target) -> None:
    """PostgreSQL's text holds no NUL character (SQLite's does): a reason or summary with one is still listed."""
    store = StreamStore(stream_target)
    store.ring(bell(1, State.HANDOFF_PENDING, "general").model_copy(
        update={"reason": "wants\x00 a person", "summary": "a peer's\x00 summary"}))
    [row] = store.waiting("general")
    assert row.reason.startswith("wants") and row.reason.endswith(" a person")
    store.close()


def test_postgresql_connections_that_die_or_wait_too_long_leave_no_wedged_store(postgres) -> None:
    """A server restart kills every connection: the next call opens a new one. A write whose wait for the store's
    lock fails (a statement timeout) leaves no transaction behind: the next write goes through."""
    import psycopg
    import pytest

    from activities.queues import Queues

    url = postgres.new_database()
    store = StreamStore(url)
    store.ring(bell(1, State.HANDOFF_PENDING, "general"))
    assert store.waiting("general") and Queues(store).terms("c1") == (0, [])
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                      " AND pid != pg_backend_pid()")
    # Each of the store's connections (the stream's, the queues', an idle reader) was killed while idle.
    store.ring(bell(2, State.HANDOFF_PENDING, "billing"))
    assert [r.conversation_id for r in store.waiting("billing")] == ["c1"] and Queues(store).terms("c1") == (0, [])
    with psycopg.connect(url, autocommit=True) as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (0x62656C6C73,))
        store._qdb.execute("SET statement_timeout = 200")
        with pytest.raises(psycopg.errors.QueryCanceled):
            with store.writing():
                pass
        assert not store._qdb.in_transaction
        holder.execute("COMMIT")
    with store.writing() as db:
        db.execute("INSERT INTO helpers (conversation_id, agent_id, at) VALUES ('c1', 'ann', 'now')")
    store.close()


def test_on_postgresql_a_reader_is_woken_by_the_writers_not_by_polling(postgres) -> None:
    """The API's tail waits for the writers' NOTIFY (a bell, an offer's or presence's note) instead of asking the
    server a hundred times a second: it wakes within a moment of a write from another process, sleeps through
    quiet, and a burst of writes costs a few wake-ups, not one each."""
    import threading
    import time

    from activities.queues import Queues

    url = postgres.new_database()
    reader, writer = StreamStore(url), StreamStore(url)
    assert reader.wait_for_change(5) is True  # the first call starts listening and says "read now"
    started = time.monotonic()
    assert reader.wait_for_change(0.3) is False and time.monotonic() - started >= 0.25
    threading.Timer(0.2, lambda: writer.ring(bell(1, State.AI))).start()
    started = time.monotonic()
    assert reader.wait_for_change(5) is True and time.monotonic() - started < 2
    Queues(writer).set_presence("ann", "Ann", ["general"], [], 3, "online")  # a note
    assert reader.wait_for_change(5) is True
    while reader.wait_for_change(0.3):  # the note's round may have written more
        pass
    for i in range(20):
        writer.ring(bell(1, State.AI, cid=f"b{i}"))
    # Twenty writes, a few wake-ups: each answers every notification that has arrived by then (some may still be
    # on their way when it drains, so not always exactly one).
    wakes = 0
    while reader.wait_for_change(0.3):
        wakes += 1
    assert 1 <= wakes <= 5, wakes
    for s in (reader, writer):
        s.close()


def test_on_postgresql_closing_a_store_closes_every_connection_it_opened(postgres) -> None:
    """Its writer, the queues' decisions, the readers and the listener (API processes and workers open and close
    stores over their lives; each left-open connection counts against the server's max_connections)."""
    import psycopg

    from activities.queues import Queues

    url = postgres.new_database()
    name = url.rsplit("/", 1)[1]

    def connections() -> int:
        with psycopg.connect(postgres.url(), autocommit=True) as conn:
            return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone()[0]

    before = connections()
    store = StreamStore(url)
    store.ring(bell(1, State.AI))
    Queues(store).set_presence("ann", "Ann", ["general"], [], 3, "online")  # the queues' own connection
    store.since(0)
    store.wait_for_change(0)  # the listener
    assert connections() > before
    store.close()
    assert connections() == before
