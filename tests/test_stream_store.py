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
