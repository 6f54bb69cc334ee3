"""The routing activity's contract: what the workflow asks (one handoff) and the decision it records in history.

The decision carries everything the workflow needs later (the ladder, the queues' open windows, the SLA, the
cancel phrases), so a config change never alters a running conversation: replay reads the recorded decision."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from models.conversation import AgentReply, AgentTurn, Bell, HandoffTarget, OpenWindow, ParamValue


class RouteRequest(BaseModel):
    conversation_id: str
    handoff_id: str
    reason: str = ""
    intent: str | None = None
    params: dict[str, ParamValue] = Field(default_factory=dict)
    slots: dict[str, Any] = Field(default_factory=dict)
    channel: str = "web"
    # The user's language (context profile/metadata `language` or `locale`), when known.
    language: str | None = None
    # Named by the requester: routing honours it (rule "explicit") and only adds the queue's SLA and hours.
    target: HandoffTarget | None = None
    fallback: list[HandoffTarget] = Field(default_factory=list)
    sla_seconds: int | None = None
    # The conversation's own SLA: used when neither the request, the queue nor the config's timeouts give one.
    default_sla_seconds: int = Field(default=300, ge=1)
    # "signal" | "update" | "ai" | "ai_failure" | a live agent's transfer ("agent:<id>")
    requested_by: str = "update"
    # The workflow's clock: business hours are judged at this instant (time-skipping tests move it).
    at: datetime
    # The event stream's bell the decision carries (the workflow's routing always sends one; the AI-failure probe
    # and callers outside the workflow do not): written as it is, or, when the
    # decision puts the conversation in a person's queue, with that queue (it then shows in the queue's waiting list
    # at once). Its waiting_since and reason are what the waiting list shows, cleared when it does not wait there.
    bell: Bell | None = None


class Skipped(BaseModel):
    target: str  # label
    why: str


class RouteDecision(BaseModel):
    # The route's name, "explicit" (the request named the target), "ai_failure", or "none" (nothing matched).
    rule: str
    why: str
    # The first rung open at `at`; `ai`/`leave_message` when none is.
    target: HandoffTarget
    # The rest of the ladder, walked on durable timers when the SLA runs out or a queue closes.
    fallback: list[HandoffTarget] = Field(default_factory=list)
    skipped: list[Skipped] = Field(default_factory=list)
    sla_seconds: int
    # Target label -> SLA seconds, for every queue / live_agent rung of the ladder (target and fallback).
    slas: dict[str, int] = Field(default_factory=dict)
    # Target label -> open windows from `at` for the next 8 days; a label absent here is always open.
    hours: dict[str, list[OpenWindow]] = Field(default_factory=dict)
    # Context paths the target may see (None: the filter policy's default).
    allowlist: list[str] | None = None
    cancel_phrases: list[str] = Field(default_factory=list)
    # How often a waiting user's position is re-checked (0: never).
    position_update_seconds: int = 0
    # The user's position in the target's queue at decision time (None: not a queue, or unknown).
    position: int | None = None
    # Higher waits ahead in the queue; the skills it asks for (route and handoff params; the queue's are added where
    # it waits).
    priority: int = 0
    skills: list[str] = Field(default_factory=list)


class PositionRequest(BaseModel):
    conversation_id: str
    queue: str
    waiting_since: datetime


class PositionResult(BaseModel):
    position: int | None  # None: could not be counted (visibility unavailable)


class RoutedTurn(AgentTurn):
    """The AI agent's turn with what routing needs should the reply hand the conversation off: the turn's activity
    then decides the route itself and lists the conversation in its queue
    at once, instead of a workflow task and a routing activity later. `route` holds the conversation's side of the
    request (slots, channel, language, SLA, the workflow's clock) and a bell numbered for the listing; the reply's
    handoff fills in reason, intent, params and target. Never sent to an AI agent (see activities.agents)."""

    route: RouteRequest | None = None


class RoutedReply(AgentReply):
    """The AI agent's reply with the routing decision for its handoff, when the turn's activity made it (recorded in
    history with the reply). A bot's own answer is parsed as an AgentReply, so it cannot set `decision`."""

    decision: RouteDecision | None = None
    # A retried turn that carried routing inputs: an earlier attempt may have listed the conversation, so the
    # workflow rings the state afresh (a bell numbered after that listing).
    relist: bool = False
