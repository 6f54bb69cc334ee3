"""Routing: where a handoff goes (the config's routes, business hours, SLAs), the user's place in the queue, and
intent recognition in front of the AI agent.

`decide` is pure: the `route_handoff` activity runs it once per handoff and the workflow records the decision, so
replay and running conversations never see a config change."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from temporalio import activity
from temporalio.client import Client

from activities.queues import Queues, needs
from activities.stream import StreamStore

from models.config import BatonConfig, BusinessHours, Route, When
from models.conversation import (
    AI_HISTORY,
    AgentReply,
    AgentTurn,
    Bell,
    HandoffEvent,
    HandoffTarget,
    HistoryQuery,
    HistoryWindow,
    ParamValue,
    TranscriptEntry,
    is_open,
    next_opening,
)
from models import notices
from models.names import WORKFLOW_TYPE, Activities, Queries, SearchAttributes, workflow_id
from models.routing import (
    PositionRequest,
    PositionResult,
    RouteDecision,
    RoutedReply,
    RoutedTurn,
    RouteRequest,
    Skipped,
)

# Business hours are computed this far ahead; the workflow re-asks when a wait outlasts them.
HORIZON = timedelta(days=8)
COUNT_TIMEOUT = timedelta(seconds=10)


# ---- the decision -------------------------------------------------------------------------------------


def decide(
    config: BatonConfig, req: RouteRequest, position: int | None = None, absent: frozenset[str] = frozenset()
) -> RouteDecision:
    """Choose the ladder (ai_failure rule, the request's own target, or the first matching route), then walk it
    at `req.at`: unknown queues, queues closed by business hours and (as the target) queues in `absent` (nobody who
    could take it is present) are skipped; the first rung left is the target, the rest the fallback. Nothing left:
    back to the AI with a message saying when the team is back."""
    at = _utc(req.at)
    route: Route | None = None
    if req.requested_by == "ai_failure":
        if config.ai_failure is None:
            return _decision(config, req, at, rule="none", why="the AI agent failed; no ai_failure rule",
                             ladder=[HandoffTarget(ai=True, message=notices.AI_FAILURE)], position=position)
        rule, why = "ai_failure", "the AI agent failed"
        ladder = [config.ai_failure.to, *config.ai_failure.fallback]
    elif req.target is not None:
        rule, why = "explicit", f"the request named {req.target.label}"
        ladder = [req.target, *req.fallback]
    else:
        for candidate in config.routes:
            matched = conditions_met(candidate.when, req)
            if matched is not None:
                route = candidate
                break
        if route is None:
            return _decision(config, req, at, rule="none", why="no route matched",
                             ladder=[HandoffTarget(ai=True, message=notices.NO_ROUTE)], position=position)
        rule, why = route.name, ", ".join(matched) or "no conditions"
        ladder = [route.to, *route.fallback]
    return _decision(config, req, at, rule=rule, why=why, ladder=ladder, route=route, position=position,
                     absent=absent)


def _decision(
    config: BatonConfig,
    req: RouteRequest,
    at: datetime,
    *,
    rule: str,
    why: str,
    ladder: list[HandoffTarget],
    route: Route | None = None,
    position: int | None = None,
    absent: frozenset[str] = frozenset(),
) -> RouteDecision:
    schedules = {rung.label: bh for rung in ladder if (bh := _business_hours(config, rung)) is not None}
    hours = {label: schedule.windows(at, at + HORIZON) for label, schedule in schedules.items()}

    skipped: list[Skipped] = []
    remaining: list[HandoffTarget] = []
    # The earliest opening among queues skipped for hours, and how to say it.
    back: tuple[datetime, str] | None = None
    closed_for_hours = False
    nobody_present = False
    for rung in ladder:
        if config.unknown_queue(rung):
            skipped.append(Skipped(target=rung.label, why="unknown queue"))
            continue
        if not remaining and rung.label in absent:
            nobody_present = True
            skipped.append(Skipped(target=rung.label, why="nobody who could take it is present"))
            continue
        # Only the target must be open now; the fallback is re-checked by the workflow when it gets there.
        windows = hours.get(rung.label)
        if not remaining and windows is not None and not is_open(windows, at):
            closed_for_hours = True
            opening = next_opening(windows, at)
            if opening is None:
                skipped.append(Skipped(target=rung.label, why=f"closed (not open in the next {HORIZON.days} days)"))
                continue
            text = describe_instant(opening, schedules[rung.label].zone, at)
            skipped.append(Skipped(target=rung.label, why=f"closed (opens {text})"))
            if back is None or opening < back[0]:
                back = opening, text
            continue
        remaining.append(rung)

    if not remaining:
        if back is not None:
            message = notices.AWAY.format(back=f" (back {back[1]})", again="; you can ask again then")
        elif closed_for_hours:
            message = notices.AWAY.format(back="", again="")
        elif nobody_present:
            message = notices.NOBODY_PRESENT
        else:
            message = notices.NO_ROUTE
        remaining = [HandoffTarget(ai=True, message=message)]

    target, fallback = remaining[0], remaining[1:]
    slas = {rung.label: sla_for(config, req, rung) for rung in remaining if rung.waits_for_person}
    allowlist = route.allowlist if route is not None and route.allowlist is not None else config.filter.allowlist
    priority, skills = needs(route, req.params)
    return RouteDecision(
        priority=priority,
        skills=skills,
        rule=rule,
        why=why,
        target=target,
        fallback=fallback,
        skipped=skipped,
        sla_seconds=sla_for(config, req, target),
        slas=slas,
        hours=hours,
        allowlist=list(allowlist) if allowlist is not None else None,
        cancel_phrases=list(config.waiting.cancel_phrases),
        position_update_seconds=config.waiting.position_update_seconds,
        position=position,
    )


def conditions_met(when: When, req: RouteRequest) -> list[str] | None:
    """The conditions of `when` that `req` meets, described ("intent=human", "channel=web"); None when any fails.
    An empty `when` matches with no description."""
    met: list[str] = []
    if when.reason is not None:
        reason = req.reason.lower()
        hit = next((r for r in when.reason if r.lower() in reason), None)
        if hit is None:
            return None
        met.append(f"reason contains {hit!r}")
    if when.intent is not None:
        asked = [i for i in (req.intent, req.params.get("intent")) if isinstance(i, str)]
        hit = next((i for i in asked if i in when.intent), None)
        if hit is None:
            return None
        met.append(f"intent={hit}")
    for section, given, wanted in (("params", req.params, when.params), ("slots", req.slots, when.slots)):
        for name, values in (wanted or {}).items():
            if name not in given or not any(_same(given[name], value) for value in values):
                return None
            met.append(f"{section}.{name}={given[name]}")
    if when.channel is not None:
        if req.channel not in when.channel:
            return None
        met.append(f"channel={req.channel}")
    if when.language is not None:
        language = (req.language or "").replace("_", "-").lower()
        if not language:
            return None
        hit = next((w for w in when.language if language == w.lower() or language.startswith(w.lower() + "-")), None)
        if hit is None:
            return None
        met.append(f"language={req.language}")
    return met


def _same(given: object, wanted: ParamValue) -> bool:
    # True == 1 in Python; in a config they are different values.
    if isinstance(given, bool) or isinstance(wanted, bool):
        return type(given) is type(wanted) and given == wanted
    return given == wanted


def sla_for(config: BatonConfig, req: RouteRequest, rung: HandoffTarget) -> int:
    """The request's SLA, else the queue's, else the config's timeouts, else the conversation's default."""
    if req.sla_seconds is not None:
        return req.sla_seconds
    queue = config.queue_of(rung)
    if queue is not None and queue.sla_seconds is not None:
        return queue.sla_seconds
    if config.timeouts.handoff_sla_seconds is not None:
        return config.timeouts.handoff_sla_seconds
    return req.default_sla_seconds


def _business_hours(config: BatonConfig, rung: HandoffTarget) -> BusinessHours | None:
    queue = config.queue_of(rung)
    return queue.business_hours if queue is not None else None


def describe_instant(instant: datetime, zone: ZoneInfo, now: datetime) -> str:
    """"Mon 09:00 Europe/Berlin" (with the date when it is a week or more away)."""
    local = instant.astimezone(zone)
    far = (local.date() - now.astimezone(zone).date()).days >= 7
    return f"{local:%a %d %b %H:%M} {zone.key}" if far else f"{local:%a %H:%M} {zone.key}"


def _utc(at: datetime) -> datetime:
    # The workflow's clock is aware UTC; a naive instant is taken as UTC.
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


# ---- activities ---------------------------------------------------------------------------------------


def position_query(task_queue: str, queue: str, conversation_id: str, since: datetime) -> str:
    """The visibility query counting the conversations waiting on `queue` since before `since`, other than this
    one. Names and ids are validated upstream; a quote here would be an injection, so it is refused."""
    values = (task_queue, queue, conversation_id)
    if any("'" in v or "\\" in v for v in values):
        raise ValueError("a queue, task queue or conversation id with a quote or backslash cannot be queried")
    rfc3339 = _utc(since).isoformat().replace("+00:00", "Z")
    return (
        f"WorkflowType = '{WORKFLOW_TYPE}' AND TaskQueue = '{task_queue}' "
        f"AND {SearchAttributes.STATE.name} = 'handoff_pending' AND {SearchAttributes.QUEUE.name} = '{queue}' "
        f"AND {SearchAttributes.WAITING_SINCE.name} < '{rfc3339}' AND WorkflowId != '{workflow_id(conversation_id)}'"
    )


class Router:
    """The routing activities: the decision (with the user's position) and position re-checks while waiting."""

    def __init__(
        self, config: BatonConfig, client: Callable[[], Client | None], task_queue: str,
        stream: Callable[[], StreamStore] | None = None,
    ) -> None:
        self.config = config
        # Called when needed: the worker's client may be created after the activities.
        self.client = client
        self.task_queue = task_queue
        # The event stream's store knows who waits where, exactly and at once; visibility is the fallback.
        self.stream = stream

    @activity.defn(name=Activities.ROUTE_HANDOFF)
    async def route_handoff(self, req: RouteRequest) -> RouteDecision:
        decision = decide(self.config, req)
        if self.stream is not None:
            decision = await asyncio.to_thread(self.present_or_next, req, decision)
        queue = decision.target.desk_queue
        waits = decision.target.waits_for_person and queue is not None
        if waits and self.stream is not None:
            # What the queues need to know of it before it shows in the waiting list: its priority and skills.
            try:
                await asyncio.to_thread(Queues(self.stream(), self.config).set_terms, req.conversation_id,
                                        decision.priority, decision.skills)
            except Exception as err:  # noqa: BLE001 - the conversation then waits with no priority or skills
                activity.logger.warning("queue terms not written: %s", type(err).__name__)
        if waits:
            position = await self.position(queue, req.conversation_id, req.at)
            decision = decision.model_copy(update={"position": position})
        if req.bell is not None and self.stream is not None:
            # The bell this decision carries: in the queue's waiting list at once when it waits for a person there.
            # (The workflow's next bell, numbered higher, says the same, or corrects it if the handoff ended.)
            update = {"queue": queue} if waits else {"waiting_since": None, "reason": None}
            await carry_bell(self.stream, req.bell.model_copy(update=update), None)
        return decision

    def present_or_next(self, req: RouteRequest, decision: RouteDecision) -> RouteDecision:
        """The decision again without its target while the target is a queue that goes on when nobody who could
        take the conversation is online (push and sticky queues by default; `when_nobody_present`)."""
        queues = Queues(self.stream(), self.config)
        absent: set[str] = set()
        for _ in range(len(self.config.queues) + 1):
            name = decision.target.desk_queue
            queue = self.config.queues.get(name or "")
            if queue is None or decision.target.label in absent or not queue.skips_when_nobody_present:
                return decision
            try:
                if queues.anyone_present(name, decision.skills):
                    return decision
            except Exception as err:  # noqa: BLE001 - presence unknown: the queue is tried as routed
                activity.logger.warning("presence not read: %s", type(err).__name__)
                return decision
            absent.add(decision.target.label)
            decision = decide(self.config, req, absent=frozenset(absent))
        return decision

    @activity.defn(name=Activities.QUEUE_POSITION)
    async def queue_position(self, req: PositionRequest) -> PositionResult:
        return PositionResult(position=await self.position(req.queue, req.conversation_id, req.waiting_since))

    async def position(self, queue: str, conversation_id: str, since: datetime) -> int | None:
        """1 + the conversations waiting on `queue` since before `since`; None when it cannot be counted (no
        client, visibility unavailable): a position is a courtesy, never a reason to fail the handoff. Counted in the
        event stream's store (exact, no visibility lag: what the desk's lists show), else by a visibility count."""
        if self.stream is not None:
            try:
                return await asyncio.to_thread(self.stream().ahead, queue, conversation_id, since) + 1
            except Exception as err:  # noqa: BLE001 - fall back to visibility
                activity.logger.warning("queue position from the stream store failed: %s", type(err).__name__)
        try:
            client = self.client()
            if client is None:
                return None
            query = position_query(self.task_queue, queue, conversation_id, since)
            result = await client.count_workflows(query, rpc_timeout=COUNT_TIMEOUT)
            return result.count + 1
        except Exception as err:  # noqa: BLE001 - any failure only costs the position
            activity.logger.warning("queue position for %r not counted: %s: %s", queue, type(err).__name__, err)
            return None


async def carry_bell(stream: Callable[[], StreamStore], bell: Bell, entry: TranscriptEntry | None) -> None:
    """Write the stream's bell an activity carries; a failure only costs the streams a query."""
    try:
        await asyncio.to_thread(stream().ring_carried, bell, entry)
    except Exception as err:  # noqa: BLE001
        activity.logger.warning("stream store: bell %s not written: %s", bell.number, type(err).__name__)


async def read_window(
    client: Client | None, conversation_id: str, upto: int | None, stream: Callable[[], StreamStore] | None = None,
) -> list[TranscriptEntry]:
    """The AI's window of the transcript up to `upto`: what an activity needs of the transcript without the workflow
    carrying it in the activity's input (written to history). From the event stream's store when it holds every
    entry of the window (no Temporal round trip: a query costs the worker and the server a workflow task's worth of
    work), else from the workflow (the `ai_history` query)."""
    if stream is not None and upto is not None:
        try:
            found = await asyncio.to_thread(stream().window, conversation_id, upto, AI_HISTORY)
        except Exception as err:  # noqa: BLE001 - the workflow answers instead
            activity.logger.warning("the AI window from the stream store failed: %s", type(err).__name__)
            found = None
        if found is not None:
            return found
    if client is None:
        return []
    handle = client.get_workflow_handle(workflow_id(conversation_id))
    window = await handle.query(Queries.AI_HISTORY, HistoryQuery(upto=upto), result_type=HistoryWindow,
                                rpc_timeout=timedelta(seconds=5))
    return window.entries


class IntentFirst:
    """In front of the AI agent: a user message that matches a config intent with `handoff: true` is answered
    with the intent's reply and a handoff, without asking the agent. Conversations another platform handed to
    one of our local agents are left to that agent."""

    def __init__(
        self, config: BatonConfig, inner: Callable[[AgentTurn], Awaitable[AgentReply]],
        client: Callable[[], Client | None] | None = None, needs_history: bool = True,
        stream: Callable[[], StreamStore] | None = None, router: Router | None = None,
    ) -> None:
        self.config = config
        self.inner = inner
        # The turn's transcript window is read from the workflow when the agent needs it (see AgentTurn).
        self.client = client
        self.needs_history = needs_history
        self.stream = stream
        # Decides the route of the reply's handoff within the turn (RoutedTurn), when the workflow asks for it.
        self.router = router

    @activity.defn(name=Activities.AI_RESPOND)
    async def respond(self, turn: RoutedTurn) -> AgentReply:
        if turn.bell is not None and self.stream is not None and activity.info().attempt == 1:
            await carry_bell(self.stream, turn.bell, turn.message)
        reply = self.intercept(turn)
        if reply is None:
            # The agent sees the turn as documented: what routing needs stays here.
            asked = AgentTurn.model_validate(turn.model_dump(exclude={"route"})) if isinstance(turn, RoutedTurn) else turn
            if self.needs_history:
                asked = asked.model_copy(update={"history": await self.history(turn)})
            reply = await self.inner(asked)
        return await self.routed(turn, reply)

    async def routed(self, turn: AgentTurn, reply: AgentReply) -> AgentReply:
        """The reply, as a RoutedReply with the routing decision for its handoff when the workflow sent what routing
        needs. The decision lists the conversation in its queue as it is made (Router.route_handoff); if it cannot
        be made here, the workflow routes the handoff itself, as before."""
        route = turn.route if isinstance(turn, RoutedTurn) else None
        handoff = reply.handoff
        # An earlier attempt of this turn may have listed the conversation (then failed): the workflow re-rings.
        attempt = activity.info().attempt if activity.in_activity() else 1
        relist = route is not None and route.bell is not None and attempt > 1
        if handoff is None or route is None or self.router is None:
            return RoutedReply(**reply.model_dump(), relist=True) if relist else reply
        out = RoutedReply(**reply.model_dump(), relist=relist)
        intent = handoff.intent
        if intent is None and isinstance(handoff.params.get("intent"), str):
            intent = str(handoff.params["intent"])  # as the workflow's handoff request reads it
        bell = route.bell.model_copy(update={"reason": handoff.reason}) if route.bell else None
        request = route.model_copy(update={
            "reason": handoff.reason, "intent": intent, "params": handoff.params, "target": handoff.target,
            "slots": {**route.slots, **reply.slots}, "bell": bell,
        })
        try:
            out.decision = await self.router.route_handoff(request)
        except Exception as err:  # noqa: BLE001 - the workflow's own routing activity decides instead
            activity.logger.warning("routing within the AI turn failed: %s", type(err).__name__)
        return out

    async def history(self, turn: AgentTurn) -> list[TranscriptEntry]:
        # A conversation handed to us also shows the other platform's transcript: only the workflow has it.
        stream = self.stream if turn.agent is None else None
        return await read_window(self.client() if self.client else None, turn.conversation_id,
                                 turn.message.seq if turn.message else None, stream)

    def intercept(self, turn: AgentTurn) -> AgentReply | None:
        """The handoff reply when the turn's message triggers an intent; None to ask the agent. The first matching
        intent decides: one with `handoff: false` lets the agent answer."""
        if turn.message is None or turn.agent is not None:
            return None
        found = self.config.match_intent(turn.message.text)
        if found is None or not found[1].handoff:
            return None
        name, intent = found
        return AgentReply(
            text=intent.reply,
            handoff=HandoffEvent(reason=f"the user's message matched intent '{name}'", intent=name,
                                 params=dict(intent.params)),
            # What the user asked travels with the handoff (as slots, through the route's allowlist), so whoever
            # takes over does not ask again. The text was already redacted at ingress.
            slots={"handoff_intent": name, "request": turn.message.text[:200]},
        )
