"""The life of a handoff: requested, routed by the config's rules (in the routing activity or the AI's turn),
entering a rung of its ladder as its target's kind says (models.targets), reached (a waiting list of our desk, an
envelope over the platform protocol or to a third-party desk), accepted, cancelled, or falling back to the next rung
and finally to the AI."""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from models.conversation import (
        AcceptHandoff,
        CommandResult,
        DeliveryResult,
        ExternalLink,
        HandoffRequest,
        HandoffTarget,
        PendingHandoff,
        Role,
        State,
        SummaryRequest,
        SummaryResult,
        ThirdPartyDeskLink,
        TranscriptEntry,
        Work,
    )
    from models.third_party_desk import ThirdPartyDeskHandoff
    from models.filtering import FilterRequest, FilterResult
    from models.names import Activities
    from models.protocol import HandoffDelivery, HandoffOutcome
    from models.routing import RouteDecision, RouteRequest
    from models import metrics, notices
    from workflows import views
    from models.targets import Reach
    from workflows.transitions import Event
    from workflows.options import CARRY_TO_AGENT, DEFAULT_QUEUE, EXTERNAL_ACCEPT_TIMEOUT, OPTIONS

from workflows.base import Story  # noqa: E402 - imported in the sandbox, like every chapter
from workflows.outcomes import Answered, WatchPosition  # noqa: E402


# The event that makes a target's kind the owner (its row's owner_state).
ACCEPTED = {State.LIVE_AGENT.value: Event.ACCEPT_LIVE, State.EXTERNAL_AGENT.value: Event.ACCEPT_EXTERNAL}


class Handoffs(Story):
    def _start_handoff(
        self, request: HandoffRequest, requested_by: str, decision: RouteDecision | None = None,
        since: datetime | None = None,
    ) -> tuple[PendingHandoff, WatchPosition | None]:
        """The handoff, pending; and routed already if `decision` is given, when it may start a position watch."""
        now = workflow.now()
        then = None
        previous_owner = self.s.owner
        self._transition(Event.REQUEST_HANDOFF, owner=None, queue=None)
        sla = request.sla_seconds or self.s.handoff_sla_seconds
        intent = request.intent
        if intent is None and isinstance(request.params.get("intent"), str):
            intent = str(request.params["intent"])
        pending = PendingHandoff(
            handoff_id=str(workflow.uuid4()),
            reason=request.reason,
            # The requested target, if any, until the routing decision says where this goes.
            target=request.target,
            fallback=request.fallback,
            params=request.params,
            requested_at=now,
            deadline=now + timedelta(seconds=sla),
            sla_seconds=request.sla_seconds,
            from_seq=self.s.seq + 1,
            routed=False,
            intent=intent,
        )
        self.s.pending = pending
        self.s.handoffs += 1
        self.s.waiting_since = since or now
        self.s.shared_context = None
        self.s.summary = None
        self._audit(
            "handoff_requested",
            handoff_id=pending.handoff_id,
            by=request.by or requested_by,
            from_owner=previous_owner,
            reason=request.reason,
            target=request.target.label if request.target else None,
            fallback=[t.label for t in request.fallback],
            params=request.params,
            intent=intent,
        )
        if decision is not None:
            then = self._apply_decision(pending, decision)
        else:
            self.s.inbox.append(Work(kind="route", handoff_id=pending.handoff_id))
        self._publish()
        return pending, then

    def _route_request(self, pending: PendingHandoff, requested_by: str) -> RouteRequest:
        ctx = self.s.context
        return RouteRequest(
            conversation_id=self.s.conversation_id, handoff_id=pending.handoff_id, reason=pending.reason,
            intent=pending.intent, params=pending.params, slots=ctx.slots, channel=self.s.channel,
            language=views.language(ctx), target=pending.target, fallback=pending.fallback,
            sla_seconds=pending.sla_seconds, default_sla_seconds=self.s.handoff_sla_seconds,
            requested_by=requested_by, at=workflow.now(),
        )

    async def _decide(self, request: RouteRequest) -> RouteDecision | None:
        # A regular activity, not a local one. As a local activity it was quicker under load, but its result was
        # sometimes handled in the next workflow task together with other completions, and replay then woke the
        # workflow's coroutines in another order (TMPRL1100 "Timer machine does not handle ActivityTaskScheduled"
        # in 1 of 7 recordings). An activity's completion is an event of its own, so replay orders it the same.
        try:
            return await workflow.execute_activity(
                Activities.ROUTE_HANDOFF,
                request,
                result_type=RouteDecision,
                **OPTIONS[Activities.ROUTE_HANDOFF],
                summary=f"route handoff ({request.reason or request.requested_by})"[:200],
            )
        except ActivityError as err:
            self._audit("routing_failed", handoff_id=request.handoff_id, error=str(err.cause or err))
            return None

    async def _route(self, handoff_id: str) -> WatchPosition | None:
        """The config's rules decide where the pending handoff goes; the decision is recorded in history."""
        pending = self.s.pending
        if pending is None or pending.handoff_id != handoff_id or pending.routed:
            return None  # cancelled or closed meanwhile
        request = self._route_request(pending, "request")
        # The decision's activity carries a bell: the state as it is, with what the waiting list needs should the
        # decision put the conversation in a person's queue, which the activity then writes as it decides (a chat
        # reaches the consoles as it is routed). Numbered afresh even when the state was rung already (the ring
        # loop rings while the main loop is busy elsewhere); the store keeps the newest bell, so a handoff that
        # ended meanwhile is corrected by the bell its end rang.
        bell = self._take_bell(fresh=True)
        assert bell is not None
        request.bell = bell.model_copy(update={
            "waiting_since": self.s.waiting_since or pending.requested_at, "reason": pending.reason})
        decision = await self._decide(request)
        if self.s.pending is None or self.s.pending.handoff_id != handoff_id:
            self._audit("route_ignored", handoff_id=handoff_id, reason="the handoff ended while it was routed")
            return None
        if decision is None:
            # The router is down: the requested target or the default queue, so nobody waits on a broken config.
            decision = RouteDecision(
                rule="unavailable", why="the routing activity failed; using the requested target or the default queue",
                target=pending.target or HandoffTarget(queue=DEFAULT_QUEUE), fallback=pending.fallback,
                sla_seconds=pending.sla_seconds or self.s.handoff_sla_seconds,
            )
        then = self._apply_decision(self.s.pending, decision)
        self._publish()
        return then

    async def _route_ai_failure(self) -> WatchPosition | None:
        """The AI agent failed for good: the config's failure rule hands the conversation on, or the AI apologises."""
        probe = PendingHandoff(
            handoff_id=str(workflow.uuid4()), reason="the AI agent failed", target=None,
            requested_at=workflow.now(), deadline=workflow.now(), from_seq=self.s.seq + 1,
        )
        decision = await self._decide(self._route_request(probe, "ai_failure"))
        if self.s.state is not State.AI:
            return None  # someone else took over meanwhile
        if decision is None or decision.target.final:
            message = decision.target.message if decision and decision.target.message else None
            self._say(Role.SYSTEM, "system", message or notices.AI_FAILURE)
            return None
        return self._start_handoff(
            HandoffRequest(reason="the AI agent failed"), requested_by="ai_failure", decision=decision)[1]

    def _apply_decision(self, pending: PendingHandoff, decision: RouteDecision) -> WatchPosition | None:
        self._audit(
            "handoff_routed", handoff_id=pending.handoff_id, rule=decision.rule, why=decision.why,
            target=decision.target.label, fallback=[t.label for t in decision.fallback],
            skipped=[k.model_dump() for k in decision.skipped], sla_seconds=decision.sla_seconds,
        )
        routed = pending.model_copy(
            update={
                "routed": True, "rule": decision.rule, "target": decision.target, "fallback": decision.fallback,
                "hours": decision.hours, "slas": decision.slas, "allowlist": decision.allowlist,
                "cancel_phrases": decision.cancel_phrases, "sla_seconds": decision.sla_seconds,
                "position_update_seconds": decision.position_update_seconds, "position": decision.position,
            }
        )
        self.s.pending = routed
        return self._enter(routed, decision.target, decision.position)

    def _enter(
        self, pending: PendingHandoff, target: HandoffTarget, position: int | None = None,
    ) -> WatchPosition | None:
        """Start waiting on one rung of the ladder: a desk queue, an external agent, a third-party desk, or the end.
        A waiting list's rung has the user's queue position watched (the clock's)."""
        if target.final:
            self._give_up(pending, target)
            return None
        now = workflow.now()
        deadline = now + timedelta(seconds=pending.slas.get(target.label) or pending.sla_seconds or self.s.handoff_sla_seconds)
        closes = self._window_end(pending, target, now)
        if closes is not None:
            deadline = min(deadline, closes)
        kind = target.kind
        pending.target = target
        pending.deadline = deadline
        pending.position = position if kind.waits_for_person else None
        self.s.queue = target.desk_queue
        self._say(Role.SYSTEM, "system", kind.notice(target, pending.position))
        # Its summary for the receiver, once per handoff (a fallback's next rung gets the same one).
        summarize = None
        if self._summaries and not pending.summary_asked:
            pending.summary_asked = True
            summarize = Work(kind="summarize", seq=self.s.handoffs)
        if kind.reach is Reach.WAITING_LIST:
            # It waits for a claim; what the live agent who claims may see is filtered meanwhile, then summarised
            # (it is listed already: the summary joins its row when written).
            self.s.inbox.append(Work(kind="share", handoff_id=pending.handoff_id))
            if summarize is not None:
                self.s.inbox.append(summarize)
            return WatchPosition(pending)
        else:
            # An envelope to another platform or a third-party desk, with the summary (which waits at most its own
            # timeout).
            if summarize is not None:
                self.s.inbox.append(summarize)
            self.s.inbox.append(Work(kind="deliver_handoff", handoff_id=pending.handoff_id))
            return None

    def _give_up(self, pending: PendingHandoff, target: HandoffTarget) -> None:
        """The ladder ended: back to the AI with a message, or a leave-a-message notice."""
        self._transition(Event.GIVE_UP, owner="ai", queue=None)
        self._count_handoff(metrics.GAVE_UP, pending, target)
        self._back_to_ai(pending)
        if target.leave_message:
            self._audit("leave_message_offered", handoff_id=pending.handoff_id)
        self._say(Role.SYSTEM, "system", target.kind.notice(target, None))

    def _cancel(self, reason: str, by: str) -> None:
        pending = self.s.pending
        assert pending is not None
        self._audit("handoff_cancelled", handoff_id=pending.handoff_id, by=by, reason=reason)
        self._count_handoff(metrics.CANCELLED, pending, pending.target)
        self._transition(Event.CANCEL, owner="ai", queue=None)
        self.s.pending = None
        self.s.waiting_since = None
        self.s.shared_context = None
        self.s.summary = None
        self._say(Role.SYSTEM, "system", notices.CANCELLED)
        self._publish()

    async def _share(self, handoff_id: str) -> None:
        """What the live agent who claims this may see: the context filtered by the route's allowlist."""
        pending = self.s.pending
        if pending is None or pending.handoff_id != handoff_id or pending.target is None:
            return
        try:
            filtered = await self._filter(pending, [])
        except ActivityError as err:
            self._audit("context_not_shared", handoff_id=handoff_id, error=str(err.cause or err))
            return
        if self.s.state in (State.HANDOFF_PENDING, State.LIVE_AGENT):
            self.s.shared_context = filtered.context.model_dump()

    async def _summarize(self, serial: int) -> None:
        """The handoff's summary for its receiver: the activity reads the transcript window and filters it before
        anyone (a model included) sees it. A failure costs only the summary; the handoff goes on without one."""
        pending = self.s.pending
        if pending is None or self.s.handoffs != serial:
            return  # accepted, cancelled or replaced by another handoff meanwhile
        request = SummaryRequest(conversation_id=self.s.conversation_id, handoff_id=pending.handoff_id,
                                 reason=pending.reason, params=pending.params, upto=self.s.seq,
                                 peer=self.s.peer is not None)
        try:
            result = await workflow.execute_activity(
                Activities.SUMMARIZE_HANDOFF, request, result_type=SummaryResult,
                **OPTIONS[Activities.SUMMARIZE_HANDOFF], summary="summarize the conversation for whoever takes over",
            )
        except ActivityError as err:
            self._audit("summary_failed", handoff_id=pending.handoff_id, error=str(err.cause or err))
            return
        if result.usage is not None:
            self._audit("ai_usage", purpose="summary", **result.usage.model_dump())
        if self.s.handoffs != serial or self.s.state is State.AI or self.s.state is State.CLOSED:
            self._audit("summary_ignored", handoff_id=pending.handoff_id, reason="the handoff ended meanwhile")
            return
        # Also when a live agent claimed meanwhile: they own it now, and the summary is for them.
        self.s.summary = result.summary
        self._audit("handoff_summarized", handoff_id=pending.handoff_id, by=result.by,
                    chars=len(result.summary or ""), model_failed=result.model_failed)

    async def _filter(self, pending: PendingHandoff, carried: list[TranscriptEntry]) -> FilterResult:
        label = pending.target.label if pending.target else "routing"
        request = FilterRequest.from_context(self.s.context, carried)
        if pending.allowlist is not None:
            request = request.model_copy(update={"allowlist": pending.allowlist})
        filtered = await workflow.execute_activity(
            Activities.FILTER_CONTEXT,
            request,
            result_type=FilterResult,
            **OPTIONS[Activities.FILTER_CONTEXT],
            summary=f"filter the context for {label}",
        )
        self._audit(
            "context_filtered", handoff_id=pending.handoff_id, target=label,
            receipt=[r.model_dump() for r in filtered.receipt],
        )
        return filtered

    async def _deliver_handoff(self, handoff_id: str) -> WatchPosition | Answered | None:
        """Filter the context for the target and send it the signed envelope. An external agent's 202 is the
        acceptance; a third-party desk's answer is only delivery (its `accepted` event, accept_handoff, accepts).
        After an accept, what an agent answered in its response (A2A) is taken as its messages (the story's)."""
        pending = self.s.pending
        if pending is None or pending.handoff_id != handoff_id or pending.target is None:
            return None  # closed, cancelled or fallen back meanwhile
        target = pending.target
        kind, name, label = target.kind, target.kind.name(target) or "", target.label
        if kind.reach not in (Reach.PLATFORM_PROTOCOL, Reach.DESK_WEBHOOK):
            return None  # a waiting list is claimed from, an end is no place: nothing to send
        carried = views.tail(self.s.transcript, CARRY_TO_AGENT)
        self._handing_over = handoff_id
        try:
            filtered = await self._filter(pending, carried)
            if not self._still_waiting(handoff_id):
                return None  # closed or cancelled while filtering: nothing is sent
            within = max(timedelta(seconds=1), min(EXTERNAL_ACCEPT_TIMEOUT, pending.deadline - workflow.now()))
            if kind.reach is Reach.PLATFORM_PROTOCOL:
                outcome = await workflow.execute_activity(
                    Activities.DELIVER_HANDOFF,
                    HandoffDelivery(
                        agent_id=name, handoff_id=handoff_id, conversation_id=self.s.conversation_id,
                        reason=pending.reason, context=filtered.context, transcript=filtered.transcript,
                        summary=self.s.summary, answers=self._answers,
                    ),
                    result_type=HandoffOutcome,
                    **OPTIONS[Activities.DELIVER_HANDOFF],
                    schedule_to_close_timeout=within,
                    summary=f"hand the conversation to {name}",
                )
                sent = DeliveryResult(outcome="delivered" if outcome.accepted else "rejected", detail=outcome.detail)
            else:
                # What the desk's people were given, and the last entry its envelope carried (later ones are
                # forwarded once it accepts).
                self.s.shared_context = filtered.context.model_dump()
                pending.carried_until = carried[-1].seq if carried else 0
                outcome = None
                sent = await self._send(
                    Activities.DELIVER_TO_THIRD_PARTY_DESK,
                    ThirdPartyDeskHandoff(
                        desk=name, handoff_id=handoff_id, conversation_id=self.s.conversation_id,
                        reason=pending.reason, context=filtered.context, transcript=filtered.transcript,
                        summary=self.s.summary,
                    ),
                    within, f"hand the conversation to desk {name}", give_up="gone",
                )
        except ActivityError as err:
            outcome = None
            unreachable = kind.reach is Reach.PLATFORM_PROTOCOL
            detail = f"unreachable: {err.cause or err}" if unreachable else f"could not filter: {err.cause or err}"
            sent = DeliveryResult(outcome="rejected", detail=detail)
        finally:
            self._handing_over = None
        if not self._still_waiting(handoff_id):
            # Accepted already (a fast desk), cancelled or closed while the envelope was on its way.
            if kind.reach is Reach.PLATFORM_PROTOCOL:
                self._audit("handoff_outcome_ignored", handoff_id=handoff_id, accepted=bool(outcome and outcome.accepted))
            return None
        if kind.reach is Reach.DESK_WEBHOOK:
            if sent.outcome != "delivered":
                why = f"desk {name} did not take the handoff: {sent.outcome} {sent.detail or ''}".strip()
                return self._fall_back(why)
            self._audit("handoff_delivered", handoff_id=handoff_id, target=label, status=sent.status)
            return None
        if outcome is None or not outcome.accepted or not outcome.remote_conversation_id:
            return self._fall_back(f"{label} did not accept: {sent.detail}")
        self._transition(ACCEPTED[kind.owner_state], owner=name, queue=None)
        self._count_handoff(metrics.ACCEPTED, pending, target)
        self.s.external = ExternalLink(
            agent_id=name, remote_conversation_id=outcome.remote_conversation_id, handoff_id=handoff_id
        )
        self.s.pending = None
        self.s.waiting_since = None
        self._audit(
            "handoff_accepted", handoff_id=handoff_id, target=label, owner=name,
            remote_conversation_id=outcome.remote_conversation_id,
        )
        if kind.user_messages == "forward":
            # What the user wrote after the envelope was cut goes on to the agent, in order.
            self._forward_since(carried[-1].seq if carried else 0, handoff_id)
        self._publish()
        # An agent that answers in the response (A2A) has already spoken, and may even be done.
        return Answered(name, outcome.replies, outcome.end, outcome.end_reason)

    def _fall_back(self, why: str) -> WatchPosition | None:
        """The rung failed: the next one of the ladder that is open (its position watched if it is a waiting list),
        or the end."""
        pending = self.s.pending
        assert pending is not None
        target = pending.target
        self._audit("handoff_failed", handoff_id=pending.handoff_id, target=target.label if target else None, reason=why)
        self._count_handoff(metrics.FAILED, pending, target)
        now = workflow.now()
        ladder, skipped, next_target = list(pending.fallback), [], None
        while ladder:
            candidate = ladder.pop(0)
            if self._is_open(pending, candidate, now):
                next_target = candidate
                break
            skipped.append(candidate.label)
        if next_target is None:
            next_target = HandoffTarget(ai=True)
        if next_target.final:
            if skipped:
                self._audit("fallback_skipped", handoff_id=pending.handoff_id, skipped=skipped, reason="closed")
            self._give_up(pending, next_target)
            self._publish()
            return None
        self._transition(Event.FALL_BACK, owner=None, queue=next_target.desk_queue)
        # A new id, so a late accept for the target that failed is recognised as stale.
        moved = pending.model_copy(
            update={"handoff_id": str(workflow.uuid4()), "fallback": ladder, "position": None, "carried_until": None}
        )
        self.s.pending = moved
        self.s.shared_context = None
        self._audit("handoff_fallback", handoff_id=moved.handoff_id, target=next_target.label, skipped=skipped)
        then = self._enter(moved, next_target)
        self._publish()
        return then

    def _forward_since(self, after: int, handoff_id: str) -> None:
        """What the user wrote after `after` goes on to the target that accepted `handoff_id` (owners.py passes it)."""
        for entry in self.s.transcript:
            if entry.seq > after and entry.role is Role.USER:
                self.s.inbox.append(Work(kind="forward", seq=entry.seq, handoff_id=handoff_id))

    def _accept(self, accept: AcceptHandoff) -> CommandResult:
        """A live agent's claim or a third-party desk's `accepted` event (its validator: `_accept_refusal`)."""
        pending = self.s.pending
        assert pending is not None and pending.target is not None
        target = pending.target
        kind = target.kind
        self._transition(ACCEPTED[kind.owner_state], owner=accept.owner, queue=target.desk_queue)
        self._count_handoff(metrics.ACCEPTED, pending, target)
        self.s.pending = None
        self.s.waiting_since = None
        self._audit("handoff_accepted", handoff_id=pending.handoff_id, target=target.label, owner=accept.owner)
        if kind.reach is Reach.DESK_WEBHOOK:
            self.s.third_party_desk = ThirdPartyDeskLink(desk=kind.name(target) or "", handoff_id=pending.handoff_id)
        if kind.user_messages == "forward":
            # What the user wrote after the desk's envelope was cut goes on to the desk, in order.
            self._forward_since(pending.carried_until or pending.from_seq - 1, pending.handoff_id)
        if kind.joined is not None:
            self._say(Role.SYSTEM, "system", kind.joined(accept.owner))
        self._publish()
        return self._result(handoff_id=pending.handoff_id)

    def _accept_refusal(self, accept: AcceptHandoff) -> str | None:
        """Why `accept` may not accept the pending handoff, as its target's kind says who accepts; or None."""
        if (why := self._pending_refusal(accept.handoff_id)) is not None:
            return why
        pending = self.s.pending
        assert pending is not None
        target = pending.target
        if not pending.routed or target is None:
            return f"handoff {pending.handoff_id} is still being routed; try again in a moment"
        kind, name = target.kind, target.kind.name(target)
        if kind.accepts == "its_202":
            return f"external agent {name} accepts through the platform protocol (its 202)"
        if kind.accepts == "named" and accept.owner != name:
            return f"handoff {pending.handoff_id} was transferred to {name}, not {accept.owner}"
        if kind.accepts == "desk_event" and accept.owner != f"desk:{name}":
            return f"handoff {pending.handoff_id} went to desk {name}; only it can accept"
        if kind.accepts != "desk_event" and accept.owner.startswith("desk:"):
            # A third-party desk takes only the handoffs routed to it, never one waiting in our own queues.
            return f"handoff {pending.handoff_id} is for {target.label}, not for a third-party desk"
        return None
