"""The event stream's store (activities/stream.py): the newest bell wins, a late bell never revives a closed
conversation, a new conversation under a closed one's id starts afresh, and the waiting lists read together."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

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


def test_the_newest_bell_wins_whatever_the_order(tmp_path: Path) -> None:
    store = StreamStore(tmp_path / "stream.db")
    store.ring(bell(3, State.LIVE_AGENT))
    store.ring(bell(2, State.HANDOFF_PENDING, "general"))  # rung before the claim, written after it
    assert store.waiting("general") == [] and store.position("c1") is None
    store.ring(bell(4, State.HANDOFF_PENDING, "billing"))
    assert [r.conversation_id for r in store.waiting("billing")] == ["c1"] and store.position("c1") == 1
    store.close()


def test_a_late_bell_never_lists_a_closed_conversation_again(tmp_path: Path) -> None:
    """The routing decision's (or the AI turn's) listing is written late: after the close it is older, and the
    conversation stays closed and out of every waiting list."""
    store = StreamStore(tmp_path / "stream.db")
    store.ring(bell(1, State.AI))
    store.ring(bell(3, State.CLOSED))
    store.ring(bell(2, State.HANDOFF_PENDING, "general"))
    assert store.waiting("general") == [] and store.position("c1") is None
    assert store.waiting_page("general", 50) == ([], 0)
    store.close()


def test_a_new_conversation_under_a_closed_ones_id_starts_afresh(tmp_path: Path) -> None:
    store = StreamStore(tmp_path / "stream.db")
    store.ring(bell(7, State.CLOSED))
    again = CREATED + timedelta(hours=2)
    store.ring(bell(1, State.HANDOFF_PENDING, "general", created=again))
    assert [r.conversation_id for r in store.waiting("general")] == ["c1"]
    # Bells of older code carry no creation time: after a close they count as a new conversation, as before.
    store.ring(bell(9, State.CLOSED, created=again))
    store.ring(bell(1, State.HANDOFF_PENDING, "general", created=None))
    assert [r.conversation_id for r in store.waiting("general")] == ["c1"]
    store.close()


def test_a_waiting_page_holds_the_oldest_and_counts_them_all(tmp_path: Path) -> None:
    store = StreamStore(tmp_path / "stream.db")
    for i in range(5):
        store.ring(bell(1, State.HANDOFF_PENDING, "general", cid=f"c{i}", since=T0 + timedelta(seconds=5 - i)))
    store.ring(bell(1, State.HANDOFF_PENDING, "billing", cid="other"))
    rows, total = store.waiting_page("general", 2)
    assert [(r.conversation_id, r.position) for r in rows] == [("c4", 1), ("c3", 2)] and total == 5
    store.close()


def entries(first: int, last: int, at: datetime = T0) -> list:
    from models.conversation import Role, TranscriptEntry

    return [TranscriptEntry(seq=s, message_id=f"m{s}", role=Role.USER if s % 2 else Role.AI,
                            author="user" if s % 2 else "ai", text=f"entry {s}", at=at) for s in range(first, last + 1)]


def test_the_ai_window_is_read_from_the_log_only_when_it_holds_every_entry(tmp_path: Path) -> None:
    """The AI agent's window (activities.routing.read_window) comes from here instead of a query to the workflow,
    but only when nothing is missing: a gap, a pruned log or another conversation's entries mean None."""
    store = StreamStore(tmp_path / "stream.db")
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


async def test_read_window_asks_the_workflow_only_when_the_log_cannot_answer(tmp_path: Path) -> None:
    from activities.routing import read_window

    store = StreamStore(tmp_path / "stream.db")
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
