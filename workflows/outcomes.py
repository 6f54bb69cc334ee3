"""What a chapter says happens next, when it is another chapter's step: a chapter returns one of these and the story
(workflows/conversation.py, `_then` and `_follow`) takes the step. So no chapter calls another; each imports only
base.py, this module, the options table and models.

A chapter returns at most one outcome (None: nothing more to do). Taking a step may give another (a fall-back's
next rung may start a position watch); the story follows them in turn, in the same activation and before anything
else is awaited, so the workflow's commands come in the order they came when the chapters called each other (the
replay corpus checks that)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Union

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from models.conversation import HandoffRequest, PendingHandoff, RemoteReply
    from models.routing import RouteDecision


@dataclass(frozen=True)
class Close:
    """Close the conversation (commands). `peer_event`: what a sending platform is told (README, platform protocol)."""

    reason: str
    peer_event: str | None = "close"


@dataclass(frozen=True)
class HandOff:
    """Start a handoff (handoffs), routed already when `decision` is given (the AI's turn decided it)."""

    request: HandoffRequest
    requested_by: str
    decision: RouteDecision | None = None
    since: datetime | None = None


@dataclass(frozen=True)
class RouteAiFailure:
    """The AI agent failed for good: the config's failure rule decides who takes over (handoffs; awaits routing)."""


@dataclass(frozen=True)
class FallBack:
    """The pending handoff's rung failed: the next rung, or the end of the ladder (handoffs)."""

    why: str


@dataclass(frozen=True)
class Cancel:
    """Cancel the pending handoff (handoffs)."""

    reason: str
    by: str


@dataclass(frozen=True)
class AiTurn:
    """The AI agent answers the user's entry `seq` (ai; awaits the agent)."""

    seq: int


@dataclass(frozen=True)
class Answered:
    """An external agent answered in the response of a call (an A2A agent): its replies and the end of its task are
    taken as its commands (commands)."""

    agent_id: str
    replies: list[RemoteReply] = field(default_factory=list)
    end: str | None = None
    end_reason: str = ""


@dataclass(frozen=True)
class WatchPosition:
    """Re-count the waiting user's queue position on a timer (clock)."""

    pending: PendingHandoff


# Taken at once, in the handler or loop that got them.
Step = Union[Close, HandOff, FallBack, Cancel, Answered, WatchPosition]
# Awaited: only the main loop's work (the AI's turn, passing a message on) returns these.
AsyncStep = Union[AiTurn, RouteAiFailure]
Outcome = Union[Step, AsyncStep]
