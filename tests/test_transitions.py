"""The state machine on its own: every (state, event) pair is either in the table or refused with a reason."""

import itertools

import pytest

from models.conversation import Role, State
from workflows.transitions import SPEAKERS, TRANSITIONS, Event, IllegalTransition, apply, may_speak, refusal

LEGAL = {
    (State.AI, Event.REQUEST_HANDOFF): State.HANDOFF_PENDING,
    (State.HANDOFF_PENDING, Event.ACCEPT_EXTERNAL): State.EXTERNAL_AGENT,
    (State.HANDOFF_PENDING, Event.ACCEPT_LIVE): State.LIVE_AGENT,
    (State.HANDOFF_PENDING, Event.FALL_BACK): State.HANDOFF_PENDING,
    (State.HANDOFF_PENDING, Event.GIVE_UP): State.AI,
    (State.HANDOFF_PENDING, Event.CANCEL): State.AI,
    (State.EXTERNAL_AGENT, Event.REQUEST_HANDOFF): State.HANDOFF_PENDING,
    (State.EXTERNAL_AGENT, Event.HAND_BACK): State.AI,
    (State.LIVE_AGENT, Event.REQUEST_HANDOFF): State.HANDOFF_PENDING,
    (State.LIVE_AGENT, Event.HAND_BACK): State.AI,
    (State.AI, Event.CLOSE): State.CLOSED,
    (State.HANDOFF_PENDING, Event.CLOSE): State.CLOSED,
    (State.EXTERNAL_AGENT, Event.CLOSE): State.CLOSED,
    (State.LIVE_AGENT, Event.CLOSE): State.CLOSED,
}
ALL_PAIRS = list(itertools.product(State, Event))


def test_table_is_exactly_the_specified_transitions():
    assert TRANSITIONS == LEGAL


@pytest.mark.parametrize(("state", "event"), sorted(LEGAL, key=str))
def test_legal_transition_applies(state, event):
    assert refusal(state, event) is None
    assert apply(state, event) is LEGAL[(state, event)]


@pytest.mark.parametrize(("state", "event"), [p for p in ALL_PAIRS if p not in LEGAL], ids=str)
def test_illegal_transition_is_refused_with_a_reason(state, event):
    why = refusal(state, event)
    assert why and state.value in why and event.value in why
    with pytest.raises(IllegalTransition, match=state.value):
        apply(state, event)


def test_closed_is_terminal():
    assert all(refusal(State.CLOSED, e) for e in Event)


def test_every_state_reaches_closed():
    assert all(apply(s, Event.CLOSE) is State.CLOSED for s in State if s is not State.CLOSED)


def test_refusal_for_closed_says_closed():
    assert "closed" in refusal(State.CLOSED, Event.REQUEST_HANDOFF)


def test_stale_accept_says_no_handoff_is_pending():
    assert "no handoff is pending" in refusal(State.LIVE_AGENT, Event.ACCEPT_LIVE)


@pytest.mark.parametrize(
    ("state", "muted"),
    [
        (State.HANDOFF_PENDING, {Role.AI, Role.LIVE_AGENT, Role.EXTERNAL_AGENT}),
        (State.LIVE_AGENT, {Role.AI, Role.EXTERNAL_AGENT}),
        (State.EXTERNAL_AGENT, {Role.AI, Role.LIVE_AGENT}),
        (State.AI, {Role.LIVE_AGENT, Role.EXTERNAL_AGENT}),
        (State.CLOSED, set(Role)),
    ],
)
def test_only_the_owner_speaks(state, muted):
    assert {r for r in Role if not may_speak(state, r)} == muted
    assert set(SPEAKERS) == set(State)
