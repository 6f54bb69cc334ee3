"""The kinds of handoff target, one row each: how a kind is reached, how it accepts, who owns the conversation
once it has, where the user's messages go meanwhile, who speaks for it, where its names are registered, and what
the user is told. The workflow, the API's target checks, the config's validation and the notices read these rows
instead of asking `target.queue`, `target.desk`, ... in if-chains of their own.

Two different things are called a desk, and this module names them apart: **our desk** is Baton's own live-agent
desk (the desk API and the console; its queues are waiting lists that live agents claim from), a **third-party
desk** is another company's help desk reached by signed webhook (config `desks:`, target `{desk: <name>}`; the
public field name stays `desk`).

Adding a kind: a field on `HandoffTarget` (models/conversation.py) and a row here. When it is reached in a way no
row uses yet (a new `Reach`), the workflow's `_deliver_handoff` and `_pass_on` learn that way, and an activity
does the sending. Pure: the workflow imports it (no I/O, no clock).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from models import notices


class HandoffTarget(Protocol):
    """What this module reads of models.conversation.HandoffTarget (which imports this module): its fields by name
    (`getattr`), and the ends' message."""

    message: str | None
    leave_message: bool


class Reach(StrEnum):
    """How a target is reached once routing has chosen it."""

    # It waits in a waiting list of our desk until a live agent claims it (the claim is the acceptance).
    WAITING_LIST = "waiting_list"
    # A filtered, signed handoff envelope over the platform protocol; the other platform's 202 is the acceptance.
    PLATFORM_PROTOCOL = "platform_protocol"
    # A filtered, signed handoff envelope to a third-party desk; its `accepted` event is the acceptance.
    DESK_WEBHOOK = "desk_webhook"
    # The ladder ends: the conversation goes back to our AI, with a message.
    ENDS = "ends"


class Registry(StrEnum):
    """Where a target's name must be known before a request may name it (checked by the API and the config)."""

    CONFIG_QUEUES = "config.queues"  # declared under `queues:` (any name when none are declared)
    CONFIG_DESKS = "config.desks"  # declared under `desks:`
    EXTERNAL_AGENTS = "registry.external_agents"  # connected with Verify & Save
    LIVE_AGENTS = "registry.live_agents"  # created with POST /v1/admin/live-agents
    NONE = "none"  # nothing to look up


@dataclass(frozen=True)
class TargetKind:
    # The HandoffTarget field that names a target of this kind (and its label's prefix).
    field: str
    reach: Reach
    # Who may accept (for the update's validator): "claim" (a live agent working its waiting list), "named"
    # (only the live agent it names), "its_202", "desk_event" (only `desk:<name>`), or "" (nobody: it ends).
    accepts: str
    # The conversation's state once accepted, and the role its messages are written with (`owner_state` too).
    owner_state: str
    # The user's messages while it owns the conversation: read from the transcript ("transcript") or passed on
    # by an activity ("forward").
    user_messages: str
    registry: Registry
    # What the user is told when the ladder reaches it (given the queue position, if any; for the ends, the end's
    # own message), when it accepts (given the owner) and when it is lost.
    notice: Callable[[HandoffTarget, int | None], str]
    joined: Callable[[str], str] | None
    lost: str | None

    @property
    def waits_for_person(self) -> bool:
        return self.reach is Reach.WAITING_LIST

    @property
    def final(self) -> bool:
        return self.reach is Reach.ENDS

    def name(self, target: HandoffTarget) -> str | None:
        value = getattr(target, self.field)
        return value if isinstance(value, str) else None

    def label(self, target: HandoffTarget) -> str:
        name = self.name(target)
        return f"{self.field}:{name}" if name is not None else self.field

    def waiting_list(self, target: HandoffTarget) -> str | None:
        """The queue of our desk a target of this kind waits in (a named live agent's personal `agent:<id>`)."""
        if self.reach is not Reach.WAITING_LIST:
            return None
        name = self.name(target)
        return f"agent:{name}" if self.field == "live_agent" else name


def _ends(target: HandoffTarget, position: int | None) -> str:
    return target.message or (notices.LEAVE_MESSAGE if target.leave_message else notices.GIVE_UP)


KINDS: tuple[TargetKind, ...] = (
    TargetKind(
        field="queue", reach=Reach.WAITING_LIST, accepts="claim", owner_state="live_agent",
        user_messages="transcript", registry=Registry.CONFIG_QUEUES,
        notice=notices.waiting_for_a_person, joined=notices.joined, lost=None,
    ),
    TargetKind(
        field="live_agent", reach=Reach.WAITING_LIST, accepts="named", owner_state="live_agent",
        user_messages="transcript", registry=Registry.LIVE_AGENTS,
        notice=notices.waiting_for_a_person, joined=notices.joined, lost=None,
    ),
    TargetKind(
        field="external_agent", reach=Reach.PLATFORM_PROTOCOL, accepts="its_202", owner_state="external_agent",
        user_messages="forward", registry=Registry.EXTERNAL_AGENTS,
        notice=notices.waiting_for_an_assistant, joined=None, lost=notices.EXTERNAL_AGENT_LOST,
    ),
    TargetKind(
        field="desk", reach=Reach.DESK_WEBHOOK, accepts="desk_event", owner_state="live_agent",
        user_messages="forward", registry=Registry.CONFIG_DESKS,
        notice=notices.waiting_for_a_team, joined=lambda owner: notices.THIRD_PARTY_DESK_JOINED, lost=notices.THIRD_PARTY_DESK_LOST,
    ),
    TargetKind(
        field="ai", reach=Reach.ENDS, accepts="", owner_state="ai", user_messages="transcript",
        registry=Registry.NONE, notice=_ends, joined=None, lost=None,
    ),
    TargetKind(
        field="leave_message", reach=Reach.ENDS, accepts="", owner_state="ai", user_messages="transcript",
        registry=Registry.NONE, notice=_ends, joined=None, lost=None,
    ),
)
BY_FIELD = {kind.field: kind for kind in KINDS}
# The fields that name a place (every kind but the ends), as the config's messages list them.
PLACES = tuple(kind.field for kind in KINDS if not kind.final)


def kind_of(target: HandoffTarget) -> TargetKind:
    """The row of the one field a target sets (HandoffTarget's validator guarantees exactly one)."""
    for kind in KINDS:
        value = getattr(target, kind.field)
        if value is not None and value is not False:
            return kind
    raise ValueError(f"a target names none of {', '.join(BY_FIELD)}")
