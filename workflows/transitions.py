"""The conversation state machine as data: (state, event) -> state, and who may speak in each state."""

from __future__ import annotations

from enum import StrEnum

from models.conversation import Role, State


class Event(StrEnum):
    REQUEST_HANDOFF = "request_handoff"  # from ai; from an agent it is a transfer / re-route
    ACCEPT_EXTERNAL = "accept_external"  # an external agent accepted the pending handoff
    ACCEPT_LIVE = "accept_live"  # a live agent claimed the pending handoff
    FALL_BACK = "fall_back"  # target refused / failed / SLA expired, and another target is next
    GIVE_UP = "give_up"  # no target left: back to the AI, with a message to the user
    CANCEL = "cancel"  # the user stopped waiting
    HAND_BACK = "hand_back"  # the owning agent returns the conversation to the AI
    CLOSE = "close"


S, E = State, Event

TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.AI, E.REQUEST_HANDOFF): S.HANDOFF_PENDING,
    (S.HANDOFF_PENDING, E.ACCEPT_EXTERNAL): S.EXTERNAL_AGENT,
    (S.HANDOFF_PENDING, E.ACCEPT_LIVE): S.LIVE_AGENT,
    (S.HANDOFF_PENDING, E.FALL_BACK): S.HANDOFF_PENDING,
    (S.HANDOFF_PENDING, E.GIVE_UP): S.AI,
    (S.HANDOFF_PENDING, E.CANCEL): S.AI,
    (S.EXTERNAL_AGENT, E.REQUEST_HANDOFF): S.HANDOFF_PENDING,
    (S.EXTERNAL_AGENT, E.HAND_BACK): S.AI,
    (S.LIVE_AGENT, E.REQUEST_HANDOFF): S.HANDOFF_PENDING,
    (S.LIVE_AGENT, E.HAND_BACK): S.AI,
    **{(state, E.CLOSE): S.CLOSED for state in State if state is not S.CLOSED},
}

# Exactly one owner speaks: the AI is muted whenever anyone else owns the conversation.
SPEAKERS: dict[State, frozenset[Role]] = {
    S.AI: frozenset({Role.USER, Role.AI, Role.SYSTEM}),
    S.HANDOFF_PENDING: frozenset({Role.USER, Role.SYSTEM}),
    S.EXTERNAL_AGENT: frozenset({Role.USER, Role.EXTERNAL_AGENT, Role.SYSTEM}),
    S.LIVE_AGENT: frozenset({Role.USER, Role.LIVE_AGENT, Role.SYSTEM}),
    S.CLOSED: frozenset(),
}

_WHY = {
    S.CLOSED: "the conversation is closed",
    S.AI: "the AI agent owns the conversation",
    S.HANDOFF_PENDING: "a handoff is already pending",
    S.EXTERNAL_AGENT: "an external agent owns the conversation",
    S.LIVE_AGENT: "a live agent owns the conversation",
}


class IllegalTransition(ValueError):
    """Raised for a (state, event) pair the table does not allow; the message says why."""


def refusal(state: State, event: Event) -> str | None:
    """Why `event` is not allowed in `state`, or None when it is."""
    if (state, event) in TRANSITIONS:
        return None
    if event in (E.ACCEPT_EXTERNAL, E.ACCEPT_LIVE, E.FALL_BACK, E.GIVE_UP, E.CANCEL):
        return f"cannot {event.value} in state '{state.value}': no handoff is pending"
    return f"cannot {event.value} in state '{state.value}': {_WHY[state]}"


def apply(state: State, event: Event) -> State:
    """The next state, or IllegalTransition; an illegal transition is never applied."""
    why = refusal(state, event)
    if why is not None:
        raise IllegalTransition(why)
    return TRANSITIONS[(state, event)]


def may_speak(state: State, role: Role) -> bool:
    return role in SPEAKERS[state]
