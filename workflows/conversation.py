"""The Conversation workflow: one durable chat, owned by exactly one of the AI, an external agent or a live agent."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from models.conversation import (
        BELL_ENTRIES_BYTES,
        AcceptHandoff,
        AgentMessage,
        AuditEntry,
        AuditPage,
        Bell,
        CancelHandoff,
        ChannelMessage,
        CloseRequest,
        CommandResult,
        ContextUpdate,
        ConversationInput,
        ConversationState,
        DeliveryResult,
        ThirdPartyDeskLink,
        ExternalLink,
        HandBack,
        HandoffRequest,
        HandoffTarget,
        HistoryQuery,
        HistoryWindow,
        PendingHandoff,
        RejectHandoff,
        Role,
        Snapshot,
        State,
        TranscriptEntry,
        TranscriptPage,
        TranscriptQuery,
        UserMessage,
        Work,
        is_open,
        window_at,
    )
    from models.third_party_desk import ThirdPartyDeskForward, ThirdPartyDeskHandoff
    from models.filtering import FilterRequest, FilterResult
    from models.names import WORKFLOW_TYPE, Activities, Errors, Queries, SearchAttributes, Signals, Updates
    from models.protocol import ForwardMessage, HandoffDelivery, HandoffOutcome, PeerDelivery, PeerEvent
    from models.routing import (
        PositionRequest,
        PositionResult,
        RouteDecision,
        RoutedReply,
        RoutedTurn,
        RouteRequest,
    )
    from models import notices
    from workflows import views
    from models.targets import BY_FIELD, Reach
    from workflows.transitions import Event, apply, may_speak, refusal

DEFAULT_QUEUE = "general"
AI_HISTORY = 20  # transcript entries the AI agent sees per turn

# Versioning (README, "Changing the workflow"): Baton 1.0 is the baseline, with no patch of its own; every change
# to the workflow after it is guarded by `workflow.patched(ID)` with the ID listed here, and adds a history to
# tests/histories/. The patches of the releases before 1.0 (waiting-is-not-inactivity, platform-protocol,
# routing-rules, event-stream, short-runs, route-rings) were retired at 1.0: their behaviour is what 1.0 does.
#
# How a patch is asked matters: ask it once per run, in the run's first activation (at the start of `run`), and
# keep the answer. Asked for the first time while reacting to an activity's result, a patch produced histories that
# failed replay with TMPRL1100 now and then (the SDK's automatic `TemporalChangeVersion` upsert lands in another
# workflow task on replay); a single marker in the first workflow task is the shape that always replayed.

AI_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=500), maximum_interval=timedelta(seconds=5), maximum_attempts=4)
# Unlimited attempts within a day: a chat backend that is down for an hour still gets every message, in order.
CHANNEL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=60)
)
CHANNEL_START_TO_CLOSE = timedelta(seconds=15)
# Activities heartbeat once they run past a second (the worker's interceptor): a worker that dies mid-call is noticed
# after this, not after the start-to-close timeout, and the call is retried on a live worker.
HEARTBEAT_TIMEOUT = timedelta(seconds=3)
CHANNEL_SCHEDULE_TO_CLOSE = timedelta(days=1)
# Handing over to an external agent: its 202 is the acceptance, within the handoff's SLA but never longer than a
# minute (a user should not wait five minutes for a platform that is down).
HANDOFF_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=10)
)
EXTERNAL_ACCEPT_TIMEOUT = timedelta(seconds=60)
# A user's message to an external agent that cannot be passed on within this is answered by our AI instead.
FORWARD_TIMEOUT = timedelta(minutes=2)
FILTER_RETRY = RetryPolicy(maximum_attempts=3)
ROUTE_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=3)
POSITION_RETRY = RetryPolicy(maximum_attempts=2)
# The doorbell is small and local; a store that stays down is retried for half a minute, then the next change rings
# again (each bell carries the whole current state, so a missed one heals with the next).
BELL_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_interval=timedelta(seconds=2))
BELL_TIMEOUT = timedelta(seconds=30)
RINGS_IN_FLIGHT = 2
CARRY_TO_AGENT = 50  # transcript entries an envelope carries
# A run continues as new at this many history events, well before the server suggests it (4K events): a worker
# with a cold cache (after a crash or a restart) replays each conversation's whole run, about 1.4 ms per event here
# (bench/worker_crash.py), so short runs are what lets a new worker catch up in seconds. About 20 messages to the
# AI; what a run carries on is bounded in bytes (views.carry).
RUN_EVENTS = 300


# The event that makes a target's kind the owner (its row's owner_state).
ACCEPTED = {State.LIVE_AGENT.value: Event.ACCEPT_LIVE, State.EXTERNAL_AGENT.value: Event.ACCEPT_EXTERNAL}


class Reject(ApplicationError):
    """A command refused by an update validator; the reason reaches the caller, nothing reaches history."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, type=Errors.REJECTED, non_retryable=True)


@workflow.defn(name=WORKFLOW_TYPE)
class Conversation:
    @workflow.init
    def __init__(self, input: ConversationInput) -> None:
        now = workflow.now()
        self.s: ConversationState = input.carried or ConversationState(
            conversation_id=input.conversation_id,
            channel=input.channel,
            created_at=now,
            last_activity_at=now,
            inactivity_timeout_seconds=input.inactivity_timeout_seconds,
            handoff_sla_seconds=input.handoff_sla_seconds,
        )
        self._delivering = False
        self._published: dict[str, object] = {}
        # O(1) de-duplication; the list in the state is what continue-as-new carries.
        self._seen = set(self.s.recent_message_ids)
        # The handoff id being delivered to an external agent: its SLA is the delivery's own timeout meanwhile.
        self._handing_over: str | None = None
        # Handoff ids whose queue-position announcer is running.
        self._announcing: set[str] = set()
        self._carry_checked: tuple[tuple, bool] | None = None  # (state key, views.carry_fits) while CAN is suggested
        self._rung: tuple | None = None  # the last bell the stream store took
        self._ringing = 0  # bells in flight
        self._doing = False  # the main loop is working on an inbox item
        if input.carried is None:
            if input.context is not None:
                self.s.context = input.context.model_copy(deep=True)
            if input.peer is not None:
                # Another platform handed this conversation to our local agent: it greets the user first.
                self.s.peer = input.peer
                self.s.inbox.append(Work(kind="ai_welcome"))
                self._audit(
                    "handoff_received", platform=input.peer.platform, agent=input.peer.agent_id,
                    handoff_id=input.peer.handoff_id, reason=input.peer.reason,
                    withheld=[w.model_dump() for w in input.peer.withheld],
                )

    # ---- the story of a conversation -------------------------------------------------------------

    @workflow.run
    async def run(self, input: ConversationInput) -> Snapshot:
        self._publish()
        loops = [
            asyncio.create_task(self._watch_deadlines()),
            asyncio.create_task(self._deliver_loop()),
            asyncio.create_task(self._ring_loop()),
        ]
        if self.s.pending is not None and self.s.pending.rule is not None:
            self._announce_positions(self.s.pending)  # carried over by continue-as-new while waiting
        while True:
            await workflow.wait_condition(
                lambda: bool(self.s.inbox)
                or self._closed
                or self._may_continue_as_new()
                or any(task.done() for task in loops)
            )
            # A background loop that died must fail the workflow task loudly, never leave a silent gap.
            for task in loops:
                if task.done():
                    task.result()
            while self.s.inbox and not self._closed:
                if self._may_continue_as_new():
                    break  # under steady traffic the inbox may never empty: the rest is carried to the next run
                self._doing = True
                try:
                    await self._do(self.s.inbox.pop(0))
                finally:
                    self._doing = False
            if self._closed:
                break
            if self._may_continue_as_new():
                await self._continue_as_new()
        # Closed: the user still gets everything already said (e.g. the closing notice), then the run ends.
        await workflow.wait_condition(lambda: not self.s.outbox and not self._delivering)
        await workflow.wait_condition(workflow.all_handlers_finished)
        # The stream store learns of the close (the desk's waiting lists drop it) before the run ends.
        await workflow.wait_condition(lambda: not self._ringing and self._rung == self._bell_key())
        for task in loops:
            task.cancel()
        return views.snapshot(self.s)

    def _may_continue_as_new(self) -> bool:
        # While the channel holds more undelivered replies than a run may hand on, the run goes on (history has
        # room to spare) and continues as new once they are delivered: nothing is dropped, nothing is oversized.
        info = workflow.info()
        if not (info.is_continue_as_new_suggested() or info.get_current_history_length() >= RUN_EVENTS):
            return False
        key = (self.s.seq, tuple(self.s.outbox[:1]), len(self.s.inbox))
        if self._carry_checked is None or self._carry_checked[0] != key:
            self._carry_checked = (key, views.carry_fits(self.s))
        return self._carry_checked[1]

    async def _do(self, work: Work) -> None:
        if work.kind in ("ai_turn", "ai_resume", "ai_welcome"):
            await self._ai_turn(work)
        elif work.kind == "deliver_handoff":
            await self._deliver_handoff(work.handoff_id or "")
        elif work.kind == "forward":
            await self._pass_on(work)
        elif work.kind == "route":
            await self._route(work.handoff_id or "")
        elif work.kind == "share":
            await self._share(work.handoff_id or "")

    async def _ai_turn(self, work: Work) -> None:
        if self.s.state is not State.AI:
            self._audit("ai_muted", seq=work.seq, owner=self.s.owner, state=self.s.state.value)
            return
        peer = self.s.peer
        bell = self._take_bell(work.seq if work.kind == "ai_turn" else None)
        turn = RoutedTurn(
            conversation_id=self.s.conversation_id,
            channel=self.s.channel,
            message=self._entry(work.seq) if work.kind == "ai_turn" else None,
            # On a conversation handed to us, what was said on the other platform is part of the AI's memory.
            # Left out of the activity's input (it would be written to history on every turn): the activity reads
            # the window with the `ai_history` query when the agent needs it.
            history=[],
            bell=bell,
            profile=self.s.context.profile,
            slots=self.s.context.slots,
            resumed_after_handoff=self.s.human_stretch_ended,
            agent=(peer.agent_name or peer.agent_id) if peer else None,
            welcome=work.kind == "ai_welcome",
            handoff_reason=peer.reason if peer else "",
            # Our own AI's handoff is routed within its turn; a local agent's, on a conversation handed to us, by the
            # routing activity.
            route=self._turn_route() if peer is None else None,
        )
        try:
            # A regular activity. As a local activity its result was now and then handled in the next workflow task
            # on replay but not live (or the other way round), so the other loops (delivery, the stream's bells) woke
            # in another order and replay failed with TMPRL1100.
            reply = await workflow.execute_activity(
                Activities.AI_RESPOND,
                turn,
                result_type=RoutedReply,
                start_to_close_timeout=timedelta(seconds=30),
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                schedule_to_close_timeout=timedelta(minutes=2),
                retry_policy=AI_RETRY,
                summary=f"AI agent answers seq {work.seq}" if work.kind == "ai_turn" else f"AI agent: {work.kind}",
            )
        except ActivityError as err:
            self._audit("ai_failed", seq=work.seq, error=str(err.cause or err))
            if self.s.peer is None:
                # The AI agent failed for good: the config's failure rule decides who takes over.
                await self._route_ai_failure()
                return
            self._say(Role.SYSTEM, "system", notices.AI_FAILURE)
            return
        self.s.human_stretch_ended = False
        if reply.relist:
            # A retried turn: an earlier attempt may have listed the conversation for a handoff this reply does not
            # make. The state as it is gets a bell numbered after that listing.
            self._rung = None
        if reply.slots:
            self.s.context.slots.update(reply.slots)
        if self.s.state is not State.AI:
            # Someone took over while the AI was thinking: its answer must not reach the user.
            self._audit("ai_reply_suppressed", seq=work.seq, owner=self.s.owner)
            return
        if reply.text:
            self._say(Role.AI, "ai", reply.text)
        if reply.end is not None:
            if self.s.peer is None:
                self._audit("ai_end_ignored", end=reply.end, reason="only a conversation handed to us can be handed back")
            else:
                # Our local agent is done: the sending platform's side takes over again (or the chat ends).
                verb = "handed the conversation back" if reply.end == "hand_back" else "closed the conversation"
                self._close(f"the agent {verb}", peer_event=reply.end)
                return
        if reply.handoff is not None:
            request = HandoffRequest(
                reason=reply.handoff.reason, target=reply.handoff.target, params=reply.handoff.params,
                intent=reply.handoff.intent,
            )
            # Decided within the turn: the conversation is already in its queue's waiting list, waiting since the
            # turn began; else (the turn could not decide) the routing activity decides, as for any other handoff.
            decided = reply.decision if turn.route is not None else None
            self._start_handoff(request, requested_by="ai", decision=decided,
                                since=turn.route.at if decided is not None and turn.route is not None else None)

    # ---- signals: fire and forget; an illegal one is recorded in the audit, never applied ---------

    @workflow.signal(name=Signals.USER_MESSAGE)
    def on_user_message(self, message: UserMessage) -> None:
        if (why := self._via_refusal(message)) is None:
            self._user_message(message)
        else:
            self._audit("signal_rejected", signal=Signals.USER_MESSAGE, reason=why)

    @workflow.signal(name=Signals.AGENT_MESSAGE)
    def on_agent_message(self, message: AgentMessage) -> None:
        if (why := self._agent_message_refusal(message)) is None:
            self._agent_message(message)
        else:
            self._audit("signal_rejected", signal=Signals.AGENT_MESSAGE, reason=why)

    @workflow.signal(name=Signals.REQUEST_HANDOFF)
    def on_request_handoff(self, request: HandoffRequest) -> None:
        if (why := self._handoff_refusal(request)) is None:
            self._start_handoff(request, requested_by="signal")
        else:
            self._audit("signal_rejected", signal=Signals.REQUEST_HANDOFF, reason=why)

    @workflow.signal(name=Signals.HAND_BACK)
    def on_hand_back(self, request: HandBack) -> None:
        if (why := self._hand_back_refusal(request)) is None:
            self._hand_back(request)
        else:
            self._audit("signal_rejected", signal=Signals.HAND_BACK, reason=why)

    @workflow.signal(name=Signals.CLOSE)
    def on_close(self, request: CloseRequest) -> None:
        if (why := self._close_refusal(request)) is None:
            self._close(request.reason)
        else:
            self._audit("signal_rejected", signal=Signals.CLOSE, reason=why)

    @workflow.signal(name=Signals.SET_CONTEXT)
    def on_set_context(self, update: ContextUpdate) -> None:
        if (why := views.context_refusal(self.s.context, update)) is None:
            self._merge_context(update)
        else:
            self._audit("signal_rejected", signal=Signals.SET_CONTEXT, reason=why)

    # ---- updates: the same commands, answered; validators refuse without touching history ---------

    @workflow.update(name=Updates.SUBMIT_USER_MESSAGE)
    def submit_user_message(self, message: UserMessage) -> CommandResult:
        return self._user_message(message)

    @submit_user_message.validator
    def _check_user_message(self, message: UserMessage) -> None:
        if self._closed:
            raise Reject("the conversation is closed")
        if (why := self._via_refusal(message)) is not None:
            raise Reject(why)

    @workflow.update(name=Updates.SUBMIT_AGENT_MESSAGE)
    def submit_agent_message(self, message: AgentMessage) -> CommandResult:
        return self._agent_message(message)

    @submit_agent_message.validator
    def _check_agent_message(self, message: AgentMessage) -> None:
        if (why := self._agent_message_refusal(message)) is not None:
            raise Reject(why)

    @workflow.update(name=Updates.SUBMIT_HANDOFF)
    async def submit_handoff(self, request: HandoffRequest) -> CommandResult:
        pending = self._start_handoff(request, requested_by="update")
        if not pending.routed:
            # Answer once the routing decision is in: the caller sees where it went, and an accept that follows
            # this answer never meets a handoff that is still being routed.
            await workflow.wait_condition(
                lambda: self.s.pending is None
                or self.s.pending.handoff_id != pending.handoff_id
                or self.s.pending.routed
            )
        return self._result(handoff_id=pending.handoff_id)

    @submit_handoff.validator
    def _check_handoff(self, request: HandoffRequest) -> None:
        if (why := self._handoff_refusal(request)) is not None:
            raise Reject(why)

    @workflow.signal(name=Signals.CANCEL_HANDOFF)
    def on_cancel_handoff(self, request: CancelHandoff) -> None:
        if (why := refusal(self.s.state, Event.CANCEL)) is None:
            self._cancel(request.reason, by="signal")
        else:
            self._audit("signal_rejected", signal=Signals.CANCEL_HANDOFF, reason=why)

    @workflow.update(name=Updates.CANCEL_HANDOFF)
    def cancel_handoff(self, request: CancelHandoff) -> CommandResult:
        pending = self.s.pending
        self._cancel(request.reason, by="update")
        return self._result(handoff_id=pending.handoff_id if pending else None)

    @cancel_handoff.validator
    def _check_cancel(self, request: CancelHandoff) -> None:
        if (why := refusal(self.s.state, Event.CANCEL)) is not None:
            raise Reject(why)

    @workflow.update(name=Updates.SUBMIT_HAND_BACK)
    def submit_hand_back(self, request: HandBack) -> CommandResult:
        self._hand_back(request)
        return self._result()

    @submit_hand_back.validator
    def _check_hand_back(self, request: HandBack) -> None:
        if (why := self._hand_back_refusal(request)) is not None:
            raise Reject(why)

    @workflow.update(name=Updates.SUBMIT_CLOSE)
    def submit_close(self, request: CloseRequest) -> CommandResult:
        self._close(request.reason)
        return self._result()

    @submit_close.validator
    def _check_close(self, request: CloseRequest) -> None:
        if (why := self._close_refusal(request)) is not None:
            raise Reject(why)

    @workflow.update(name=Updates.SUBMIT_CONTEXT)
    def submit_context(self, update: ContextUpdate) -> CommandResult:
        self._merge_context(update)
        return self._result()

    @submit_context.validator
    def _check_context(self, update: ContextUpdate) -> None:
        if self._closed:
            raise Reject("the conversation is closed")
        if (why := views.context_refusal(self.s.context, update)) is not None:
            raise ApplicationError(why, type=Errors.TOO_LARGE, non_retryable=True)

    @workflow.update(name=Updates.ACCEPT_HANDOFF)
    def accept_handoff(self, accept: AcceptHandoff) -> CommandResult:
        pending = self.s.pending
        assert pending is not None and pending.target is not None
        target = pending.target
        kind = target.kind
        self._transition(ACCEPTED[kind.owner_state], owner=accept.owner, queue=target.desk_queue)
        self.s.pending = None
        self.s.waiting_since = None
        self._audit("handoff_accepted", handoff_id=pending.handoff_id, target=target.label, owner=accept.owner)
        if kind.reach is Reach.DESK_WEBHOOK:
            self.s.third_party_desk = ThirdPartyDeskLink(desk=kind.name(target) or "", handoff_id=pending.handoff_id)
            # What the user wrote after the desk's envelope was cut goes on to the desk, in order.
            self._forward_since(pending.carried_until or pending.from_seq - 1, pending.handoff_id)
        if kind.joined is not None:
            self._say(Role.SYSTEM, "system", kind.joined(accept.owner))
        self._publish()
        return self._result(handoff_id=pending.handoff_id)

    @accept_handoff.validator
    def _check_accept(self, accept: AcceptHandoff) -> None:
        if (why := self._pending_refusal(accept.handoff_id)) is not None:
            raise Reject(why)
        pending = self.s.pending
        assert pending is not None
        target = pending.target
        if not pending.routed or target is None:
            raise Reject(f"handoff {pending.handoff_id} is still being routed; try again in a moment")
        kind, name = target.kind, target.kind.name(target)
        if kind.accepts == "its_202":
            raise Reject(f"external agent {name} accepts through the platform protocol (its 202)")
        if kind.accepts == "named" and accept.owner != name:
            raise Reject(f"handoff {pending.handoff_id} was transferred to {name}, not {accept.owner}")
        if kind.accepts == "desk_event" and accept.owner != f"desk:{name}":
            raise Reject(f"handoff {pending.handoff_id} went to desk {name}; only it can accept")
        if kind.accepts != "desk_event" and accept.owner.startswith("desk:"):
            # A third-party desk takes only the handoffs routed to it, never one waiting in our own queues.
            raise Reject(f"handoff {pending.handoff_id} is for {target.label}, not for a third-party desk")


    @workflow.update(name=Updates.REJECT_HANDOFF)
    def reject_handoff(self, reject: RejectHandoff) -> CommandResult:
        self._fall_back(f"rejected: {reject.reason}")
        return self._result()

    @reject_handoff.validator
    def _check_reject(self, reject: RejectHandoff) -> None:
        if (why := self._pending_refusal(reject.handoff_id)) is not None:
            raise Reject(why)

    # ---- queries --------------------------------------------------------------------------------

    @workflow.query(name=Queries.SNAPSHOT)
    def snapshot(self) -> Snapshot:
        return views.snapshot(self.s)

    @workflow.query(name=Queries.TRANSCRIPT)
    def transcript(self, query: TranscriptQuery | None = None) -> TranscriptPage:
        q = query or TranscriptQuery()
        entries = views.page(self.s.transcript, q.after, q.limit)
        first = self.s.transcript[0].seq if self.s.transcript else self.s.seq + 1
        return TranscriptPage(
            conversation_id=self.s.conversation_id,
            entries=entries,
            first_seq=first,
            earlier_runs=self.s.earlier_runs,
            last_seq=self.s.seq,
        )

    @workflow.query(name=Queries.AI_HISTORY)
    def ai_history(self, query: HistoryQuery | None = None) -> HistoryWindow:
        return HistoryWindow(entries=self._ai_window((query or HistoryQuery()).upto))

    def _ai_window(self, upto: int | None) -> list[TranscriptEntry]:
        peer = self.s.peer
        mine = self.s.transcript if upto is None else [e for e in self.s.transcript if e.seq <= upto]
        return views.tail((peer.transcript if peer else []) + mine, AI_HISTORY)

    @workflow.query(name=Queries.AUDIT)
    def audit(self) -> AuditPage:
        entries = views.newest_audit(self.s.audit)
        return AuditPage(conversation_id=self.s.conversation_id, entries=entries, omitted=len(self.s.audit) - len(entries))

    # ---- commands -------------------------------------------------------------------------------

    def _user_message(self, message: UserMessage) -> CommandResult:
        if message.message_id in self._seen:
            return self._result(duplicate=True)
        # Accepted even while closing: a message is never dropped, it is at least recorded.
        entry = self._append(Role.USER, message.author, message.text, message.message_id)
        if message.redacted:
            self._audit("redacted_at_ingress", seq=entry.seq, kinds=message.redacted)
        if self.s.state is State.AI:
            self.s.inbox.append(Work(kind="ai_turn", seq=entry.seq))
        elif (link := self._link()) is not None:
            # Owned by a target its kind's row says the user's messages are passed on to.
            self.s.inbox.append(Work(kind="forward", seq=entry.seq, handoff_id=link.handoff_id))
        elif (
            self.s.state is State.HANDOFF_PENDING
            and self.s.pending is not None
            and self.s.pending.cancel_phrases
            and views.is_cancel(message.text, self.s.pending.cancel_phrases)
        ):
            self._cancel("the user stopped waiting", by="user")
        return self._result(seq=entry.seq)

    def _via_refusal(self, message: UserMessage) -> str | None:
        if message.via_agent is None:
            return None
        if self.s.peer is None or self.s.peer.agent_id != message.via_agent:
            return f"this conversation was not handed to agent {message.via_agent}"
        return None

    def _agent_message_refusal(self, message: AgentMessage) -> str | None:
        if not may_speak(self.s.state, message.role):
            return f"a {message.role.value} cannot write in state '{self.s.state.value}'"
        if message.author != self.s.owner:
            return f"only the owner ({self.s.owner}) can write; {message.author} does not own the conversation"
        return None

    def _agent_message(self, message: AgentMessage) -> CommandResult:
        if message.message_id in self._seen:
            return self._result(duplicate=True)
        entry = self._append(message.role, message.author, message.text, message.message_id)
        if message.redacted:
            self._audit("redacted_at_ingress", seq=entry.seq, kinds=message.redacted)
        return self._result(seq=entry.seq)

    def _handoff_refusal(self, request: HandoffRequest) -> str | None:
        if (why := refusal(self.s.state, Event.REQUEST_HANDOFF)) is not None:
            return why
        if request.by is not None and request.by != self.s.owner:
            return f"only the owner ({self.s.owner}) can transfer; {request.by} does not own the conversation"
        return None

    def _start_handoff(
        self, request: HandoffRequest, requested_by: str, decision: RouteDecision | None = None,
        since: datetime | None = None,
    ) -> PendingHandoff:
        now = workflow.now()
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
            self._apply_decision(pending, decision)
        else:
            self.s.inbox.append(Work(kind="route", handoff_id=pending.handoff_id))
        self._publish()
        return pending

    def _route_request(self, pending: PendingHandoff, requested_by: str) -> RouteRequest:
        ctx = self.s.context
        return RouteRequest(
            conversation_id=self.s.conversation_id, handoff_id=pending.handoff_id, reason=pending.reason,
            intent=pending.intent, params=pending.params, slots=ctx.slots, channel=self.s.channel,
            language=self._language(), target=pending.target, fallback=pending.fallback,
            sla_seconds=pending.sla_seconds, default_sla_seconds=self.s.handoff_sla_seconds,
            requested_by=requested_by, at=workflow.now(),
        )

    def _language(self) -> str | None:
        ctx = self.s.context
        for source in (ctx.profile, ctx.metadata):
            for key in ("language", "locale"):
                if isinstance(source.get(key), str):
                    return source[key]
        return None

    def _turn_route(self) -> RouteRequest:
        """The conversation's side of the routing request an AI turn carries: should the reply
        hand off, the turn's activity adds the handoff's reason, intent, params and target, decides, and lists the
        conversation in its queue with the bell numbered here (after the turn's own)."""
        now = workflow.now()
        self.s.bells += 1
        bell = Bell.model_construct(
            conversation_id=self.s.conversation_id, seq=self.s.seq, state=State.HANDOFF_PENDING, owner=None,
            queue=None, waiting_since=now, reason=None, at=now, number=self.s.bells, entries=[], omits=None,
            created=self.s.created_at,
        )
        return RouteRequest(
            conversation_id=self.s.conversation_id, handoff_id="", slots=self.s.context.slots,
            channel=self.s.channel, language=self._language(), default_sla_seconds=self.s.handoff_sla_seconds,
            requested_by="request", at=now, bell=bell,
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
                start_to_close_timeout=timedelta(seconds=10),
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                schedule_to_close_timeout=timedelta(seconds=30),
                retry_policy=ROUTE_RETRY,
                summary=f"route handoff ({request.reason or request.requested_by})"[:200],
            )
        except ActivityError as err:
            self._audit("routing_failed", handoff_id=request.handoff_id, error=str(err.cause or err))
            return None

    async def _route(self, handoff_id: str) -> None:
        """The config's rules decide where the pending handoff goes; the decision is recorded in history."""
        pending = self.s.pending
        if pending is None or pending.handoff_id != handoff_id or pending.routed:
            return  # cancelled or closed meanwhile
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
            return
        if decision is None:
            # The router is down: the requested target or the default queue, so nobody waits on a broken config.
            decision = RouteDecision(
                rule="unavailable", why="the routing activity failed; using the requested target or the default queue",
                target=pending.target or HandoffTarget(queue=DEFAULT_QUEUE), fallback=pending.fallback,
                sla_seconds=pending.sla_seconds or self.s.handoff_sla_seconds,
            )
        self._apply_decision(self.s.pending, decision)
        self._publish()

    async def _route_ai_failure(self) -> None:
        """The AI agent failed for good: the config's failure rule hands the conversation on, or the AI apologises."""
        probe = PendingHandoff(
            handoff_id=str(workflow.uuid4()), reason="the AI agent failed", target=None,
            requested_at=workflow.now(), deadline=workflow.now(), from_seq=self.s.seq + 1,
        )
        decision = await self._decide(self._route_request(probe, "ai_failure"))
        if self.s.state is not State.AI:
            return  # someone else took over meanwhile
        if decision is None or decision.target.final:
            message = decision.target.message if decision and decision.target.message else None
            self._say(Role.SYSTEM, "system", message or notices.AI_FAILURE)
            return
        self._start_handoff(HandoffRequest(reason="the AI agent failed"), requested_by="ai_failure", decision=decision)

    def _apply_decision(self, pending: PendingHandoff, decision: RouteDecision) -> None:
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
        self._enter(routed, decision.target, decision.position)

    def _enter(self, pending: PendingHandoff, target: HandoffTarget, position: int | None = None) -> None:
        """Start waiting on one rung of the ladder: a desk queue, an external agent, a third-party desk, or the end."""
        if target.final:
            self._give_up(pending, target)
            return
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
        if kind.reach is Reach.WAITING_LIST:
            # It waits for a claim; what the live agent who claims may see is filtered meanwhile.
            self.s.inbox.append(Work(kind="share", handoff_id=pending.handoff_id))
            self._announce_positions(pending)
        else:
            # An envelope to another platform or a third-party desk.
            self.s.inbox.append(Work(kind="deliver_handoff", handoff_id=pending.handoff_id))

    def _give_up(self, pending: PendingHandoff, target: HandoffTarget) -> None:
        """The ladder ended: back to the AI with a message, or a leave-a-message notice."""
        self._transition(Event.GIVE_UP, owner="ai", queue=None)
        self._back_to_ai(pending)
        if target.leave_message:
            self._audit("leave_message_offered", handoff_id=pending.handoff_id)
        self._say(Role.SYSTEM, "system", target.kind.notice(target, None))

    def _is_open(self, pending: PendingHandoff, target: HandoffTarget, at: datetime) -> bool:
        return is_open(pending.hours.get(target.label), at)

    def _window_end(self, pending: PendingHandoff, target: HandoffTarget, at: datetime) -> datetime | None:
        window = window_at(pending.hours.get(target.label), at)
        return window.end if window is not None else None

    def _cancel(self, reason: str, by: str) -> None:
        pending = self.s.pending
        assert pending is not None
        self._audit("handoff_cancelled", handoff_id=pending.handoff_id, by=by, reason=reason)
        self._transition(Event.CANCEL, owner="ai", queue=None)
        self.s.pending = None
        self.s.waiting_since = None
        self.s.shared_context = None
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

    async def _filter(self, pending: PendingHandoff, carried: list[TranscriptEntry]) -> FilterResult:
        label = pending.target.label if pending.target else "routing"
        request = FilterRequest.from_context(self.s.context, carried)
        if pending.allowlist is not None:
            request = request.model_copy(update={"allowlist": pending.allowlist})
        filtered = await workflow.execute_activity(
            Activities.FILTER_CONTEXT,
            request,
            result_type=FilterResult,
            start_to_close_timeout=timedelta(seconds=10),
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=FILTER_RETRY,
            summary=f"filter the context for {label}",
        )
        self._audit(
            "context_filtered", handoff_id=pending.handoff_id, target=label,
            receipt=[r.model_dump() for r in filtered.receipt],
        )
        return filtered

    def _announce_positions(self, pending: PendingHandoff) -> None:
        target = pending.target
        if target is None or not target.waits_for_person or pending.position_update_seconds <= 0:
            return
        if pending.handoff_id in self._announcing:
            return
        self._announcing.add(pending.handoff_id)
        asyncio.create_task(self._position_loop(pending.handoff_id, pending.position_update_seconds))

    def _still_waiting(self, handoff_id: str) -> bool:
        return self.s.pending is not None and self.s.pending.handoff_id == handoff_id and not self._closed

    async def _position_loop(self, handoff_id: str, every: int) -> None:
        """Re-count the user's queue position on a durable timer; tell them when it improved meaningfully."""
        try:
            while True:
                try:
                    await workflow.wait_condition(
                        lambda: not self._still_waiting(handoff_id),
                        timeout=timedelta(seconds=every),
                        timeout_summary="queue position check",
                    )
                    return  # no longer waiting
                except asyncio.TimeoutError:
                    pass
                pending = self.s.pending
                if not self._still_waiting(handoff_id) or pending is None or pending.target is None:
                    return  # the timer and the end of the wait arrived together
                try:
                    result = await workflow.execute_activity(
                        Activities.QUEUE_POSITION,
                        PositionRequest(
                            conversation_id=self.s.conversation_id, queue=pending.target.desk_queue or "",
                            waiting_since=self.s.waiting_since or pending.requested_at,
                        ),
                        result_type=PositionResult,
                        start_to_close_timeout=timedelta(seconds=10),
                        heartbeat_timeout=HEARTBEAT_TIMEOUT,
                        retry_policy=POSITION_RETRY,
                        summary=f"queue position in {pending.target.desk_queue}",
                    )
                except ActivityError:
                    continue
                if not self._still_waiting(handoff_id) or result.position is None:
                    continue
                if views.position_worth_telling(pending.position, result.position):
                    self._say(Role.SYSTEM, "system", notices.position_notice(result.position))
                pending.position = result.position
        finally:
            self._announcing.discard(handoff_id)

    async def _deliver_handoff(self, handoff_id: str) -> None:
        """Filter the context for the target and send it the signed envelope. An external agent's 202 is the
        acceptance; a third-party desk's answer is only delivery (its `accepted` event, accept_handoff, accepts)."""
        pending = self.s.pending
        if pending is None or pending.handoff_id != handoff_id or pending.target is None:
            return  # closed, cancelled or fallen back meanwhile
        target = pending.target
        kind, name, label = target.kind, target.kind.name(target) or "", target.label
        carried = views.tail(self.s.transcript, CARRY_TO_AGENT)
        self._handing_over = handoff_id
        try:
            filtered = await self._filter(pending, carried)
            if not self._still_waiting(handoff_id):
                return  # closed or cancelled while filtering: nothing is sent
            pending.carried_until = carried[-1].seq if carried else 0
            within = max(timedelta(seconds=1), min(EXTERNAL_ACCEPT_TIMEOUT, pending.deadline - workflow.now()))
            if kind.reach is Reach.PLATFORM_PROTOCOL:
                outcome = await workflow.execute_activity(
                    Activities.DELIVER_HANDOFF,
                    HandoffDelivery(
                        agent_id=name, handoff_id=handoff_id, conversation_id=self.s.conversation_id,
                        reason=pending.reason, context=filtered.context, transcript=filtered.transcript,
                    ),
                    result_type=HandoffOutcome,
                    start_to_close_timeout=CHANNEL_START_TO_CLOSE,
                    heartbeat_timeout=HEARTBEAT_TIMEOUT,
                    schedule_to_close_timeout=within,
                    retry_policy=HANDOFF_RETRY,
                    summary=f"hand the conversation to {name}",
                )
                sent = DeliveryResult(outcome="delivered" if outcome.accepted else "rejected", detail=outcome.detail)
            else:
                self.s.shared_context = filtered.context.model_dump()  # what the desk's people were given
                outcome = None
                sent = await self._send(
                    Activities.DELIVER_TO_THIRD_PARTY_DESK,
                    ThirdPartyDeskHandoff(
                        desk=name, handoff_id=handoff_id, conversation_id=self.s.conversation_id,
                        reason=pending.reason, context=filtered.context, transcript=filtered.transcript,
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
            return
        if kind.reach is Reach.DESK_WEBHOOK:
            if sent.outcome != "delivered":
                self._fall_back(f"desk {name} did not take the handoff: {sent.outcome} {sent.detail or ''}".strip())
            else:
                self._audit("handoff_delivered", handoff_id=handoff_id, target=label, status=sent.status)
            return
        if outcome is None or not outcome.accepted or not outcome.remote_conversation_id:
            self._fall_back(f"{label} did not accept: {sent.detail}")
            return
        self._transition(ACCEPTED[kind.owner_state], owner=name, queue=None)
        self.s.external = ExternalLink(
            agent_id=name, remote_conversation_id=outcome.remote_conversation_id, handoff_id=handoff_id
        )
        self.s.pending = None
        self.s.waiting_since = None
        self._audit(
            "handoff_accepted", handoff_id=handoff_id, target=label, owner=name,
            remote_conversation_id=outcome.remote_conversation_id,
        )
        # What the user wrote after the envelope was cut goes on to the agent, in order.
        self._forward_since(pending.carried_until or 0, handoff_id)
        self._publish()

    def _link(self) -> ExternalLink | ThirdPartyDeskLink | None:
        """Who owns the conversation, when its kind is passed the user's messages (an external agent, a third-party
        desk); None when the owner reads them from the transcript (our live agents) or the AI has it."""
        return self.s.external or self.s.third_party_desk

    def _forward_since(self, after: int, handoff_id: str) -> None:
        for entry in self.s.transcript:
            if entry.seq > after and entry.role is Role.USER:
                self.s.inbox.append(Work(kind="forward", seq=entry.seq, handoff_id=handoff_id))

    async def _pass_on(self, work: Work) -> None:
        """A user's message to the agent or desk that owns the conversation, as its kind's row says (the platform
        protocol, the desk webhook). If the AI has the conversation back meanwhile, the AI answers it instead."""
        seq = work.seq
        if self.s.state is State.AI:
            await self._ai_turn(Work(kind="ai_turn", seq=seq))
            return
        link = self._link()
        if link is None or link.handoff_id != work.handoff_id:
            self._audit("not_forwarded", seq=seq, state=self.s.state.value)
            return
        entry = self._entry(seq)
        if isinstance(link, ExternalLink):
            who, lost, notice = {"agent": link.agent_id}, "external_agent_lost", BY_FIELD["external_agent"].lost
            result = await self._send(
                Activities.FORWARD_TO_AGENT,
                ForwardMessage(
                    agent_id=link.agent_id, remote_conversation_id=link.remote_conversation_id,
                    conversation_id=self.s.conversation_id, message_id=entry.message_id, text=entry.text,
                ),
                # Out of reach for two minutes counts as gone: the user is not left talking to nobody.
                FORWARD_TIMEOUT, f"forward seq {seq} to {link.agent_id}", give_up="gone",
            )
        else:
            who, lost, notice = {"desk": link.desk}, "desk_lost", BY_FIELD["desk"].lost
            result = await self._send(
                Activities.FORWARD_TO_THIRD_PARTY_DESK,
                ThirdPartyDeskForward(
                    desk=link.desk, handoff_id=link.handoff_id, conversation_id=self.s.conversation_id,
                    message_id=entry.message_id, text=entry.text,
                ),
                FORWARD_TIMEOUT, f"forward seq {seq} to desk {link.desk}", give_up="gone",
            )
        now = self._link()
        if now is None or now.handoff_id != link.handoff_id:
            return  # handed back or closed meanwhile
        self._passed_on(seq, result, who, lost, notice or "")

    def _passed_on(self, seq: int, result: DeliveryResult, who: dict[str, str], lost: str, notice: str) -> None:
        """After forwarding: nothing to do when delivered; a refused message is the user's to rephrase; an agent
        that is gone or out of reach gives the conversation back to our AI, which answers this message."""
        if result.outcome == "delivered":
            return
        if result.outcome == "rejected":
            self._audit("forward_rejected", seq=seq, **who, status=result.status, detail=result.detail)
            self._say(Role.SYSTEM, "system", notices.NOT_PASSED_ON)
            return
        self._audit(lost, seq=seq, **who, status=result.status, detail=result.detail)
        self._transition(Event.HAND_BACK, owner="ai", queue=None)
        self.s.human_stretch_ended = True
        self._say(Role.SYSTEM, "system", notice)
        self.s.inbox.insert(0, Work(kind="ai_turn", seq=seq))
        self._publish()

    def _fall_back(self, why: str) -> None:
        pending = self.s.pending
        assert pending is not None
        target = pending.target
        self._audit("handoff_failed", handoff_id=pending.handoff_id, target=target.label if target else None, reason=why)
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
            return
        self._transition(Event.FALL_BACK, owner=None, queue=next_target.desk_queue)
        # A new id, so a late accept for the target that failed is recognised as stale.
        moved = pending.model_copy(
            update={"handoff_id": str(workflow.uuid4()), "fallback": ladder, "position": None, "carried_until": None}
        )
        self.s.pending = moved
        self.s.shared_context = None
        self._audit("handoff_fallback", handoff_id=moved.handoff_id, target=next_target.label, skipped=skipped)
        self._enter(moved, next_target)
        self._publish()

    def _hand_back_refusal(self, request: HandBack) -> str | None:
        if (why := refusal(self.s.state, Event.HAND_BACK)) is not None:
            return why
        if request.by is not None and request.by != self.s.owner:
            return f"only the owner ({self.s.owner}) can hand back; {request.by} does not own the conversation"
        return None

    def _hand_back(self, request: HandBack) -> None:
        previous_owner = self.s.owner
        self._transition(Event.HAND_BACK, owner="ai", queue=None)
        # The marker tells the AI that a human (or another agent) stretch ended, so it speaks up again.
        self.s.human_stretch_ended = True
        self._audit("handed_back", by=previous_owner, reason=request.reason)
        self.s.inbox.append(Work(kind="ai_resume", seq=self.s.seq))
        self._publish()

    def _close_refusal(self, request: CloseRequest) -> str | None:
        if (why := refusal(self.s.state, Event.CLOSE)) is not None:
            return why
        if request.by is not None and request.by != self.s.owner:
            return (
                f"only the owner ({self.s.owner}) can close; {request.by} does not own the conversation "
                f"(state '{self.s.state.value}')"
            )
        return None

    def _close(self, reason: str, peer_event: str | None = "close") -> None:
        """On a conversation handed to us, the closing entry goes back to the sender as `peer_event`
        (`close`, or `hand_back` when our side merely ended), or not at all (None: the sender ended it)."""
        self._transition(Event.CLOSE, owner=None, queue=None)
        self.s.pending = None
        self.s.waiting_since = None
        self.s.closed_reason = reason
        self._audit("closed", reason=reason)
        if self.s.peer is None:
            self._say(Role.SYSTEM, "system", notices.CLOSED)
        else:
            text = notices.HANDED_BACK_TO_REFERRER if peer_event == "hand_back" else notices.CLOSED
            self._append(Role.SYSTEM, "system", text, event=peer_event, deliver=peer_event is not None)
        self._publish()

    def _merge_context(self, update: ContextUpdate) -> None:
        self.s.context = views.merged_context(self.s.context, update)
        self._audit(
            "context_updated",
            keys={s: sorted(getattr(update, s) or {}) for s in ("profile", "slots", "metadata")},
            sealed=sorted(update.sealed),
            **({"withheld": [w.model_dump() for w in update.withheld]} if update.withheld else {}),
        )

    def _pending_refusal(self, handoff_id: str) -> str | None:
        if self.s.pending is None:
            return f"handoff {handoff_id} is not pending: the conversation is in state '{self.s.state.value}'"
        if self.s.pending.handoff_id != handoff_id:
            return f"handoff {handoff_id} is stale: the pending handoff is {self.s.pending.handoff_id}"
        return None

    # ---- the clock: inactivity and handoff SLA on durable timers ----------------------------------

    async def _watch_deadlines(self) -> None:
        while not self._closed:
            deadline = self._next_deadline()
            now = workflow.now()
            if now < deadline:
                # Only an earlier deadline (a new pending handoff) wakes us early; activity only pushes
                # the inactivity deadline later, which is re-checked when the timer fires.
                try:
                    await workflow.wait_condition(
                        lambda: self._closed or self._next_deadline() < deadline,
                        timeout=deadline - now,
                        timeout_summary="inactivity / handoff SLA",
                    )
                except asyncio.TimeoutError:
                    pass
                continue
            pending = self.s.pending
            if pending is not None and now >= pending.deadline and not self._delivering_handoff and pending.routed:
                closed = pending.target is not None and not self._is_open(pending, pending.target, now)
                self._fall_back("the queue closed (business hours)" if closed else "nobody accepted within the SLA")
            elif now >= self._inactivity_deadline():
                minutes = self.s.inactivity_timeout_seconds // 60
                # Handed to us by another platform: idle here does not end the chat there, it goes back.
                self._close(f"inactive for {minutes} minutes" if minutes else "inactive", peer_event="hand_back")

    def _inactivity_deadline(self) -> datetime:
        return self.s.last_activity_at + timedelta(seconds=self.s.inactivity_timeout_seconds)

    @property
    def _delivering_handoff(self) -> bool:
        return self.s.pending is not None and self._handing_over == self.s.pending.handoff_id

    def _next_deadline(self) -> datetime:
        if self._delivering_handoff or (self.s.pending is not None and not self.s.pending.routed):
            # The delivery's own timeout (within the SLA) decides, and routing takes moments: no fall back under them.
            return self._inactivity_deadline()
        if self.s.pending is not None:
            # A user waiting for a handoff is not idle: the SLA, not the inactivity timeout, governs the wait.
            return self.s.pending.deadline
        return self._inactivity_deadline()

    # ---- channel delivery: in seq order, one at a time, each with its own retries -----------------

    async def _deliver_loop(self) -> None:
        while True:
            await workflow.wait_condition(lambda: bool(self.s.outbox))
            entry = self._entry(self.s.outbox[0])
            self._delivering = True
            if self.s.peer is None:
                arg = self._channel_message(entry)
                arg.bell = self._take_bell(entry.seq)
                name, where = Activities.DELIVER_TO_CHANNEL, "the channel"
            else:
                name, arg, where = Activities.DELIVER_TO_PEER, self._peer_delivery(entry), "the sending platform"  # noqa: E501
            try:
                result = await self._send(
                    name, arg, CHANNEL_SCHEDULE_TO_CLOSE, f"deliver seq {entry.seq} ({entry.role.value}) to {where}",
                    give_up="rejected",
                )
            finally:
                self._delivering = False
            self.s.outbox.pop(0)
            if result.outcome == "gone":
                self.s.channel_stopped = True
                self.s.outbox.clear()
                self._audit("channel_gone", seq=entry.seq, status=result.status, detail=result.detail)
                if self.s.peer is not None and not self._closed:
                    # The sending platform no longer has us on this conversation: nobody is listening here.
                    self._close("the sending platform ended the handoff", peer_event=None)
            elif result.outcome == "rejected":
                self._audit("delivery_rejected", seq=entry.seq, status=result.status, detail=result.detail)

    # ---- the event stream's doorbell ------------------------------------------------------------------

    def _bell(self, carried: int | None = None) -> Bell:
        """The bell for the current state; `carried`: the seq of an entry the carrying activity's input holds."""
        s = self.s
        waiting = s.state is State.HANDOFF_PENDING and s.queue is not None and s.pending is not None
        entries = views.since(s.transcript, self._rung[0] if self._rung else s.seq - 1, BELL_ENTRIES_BYTES)
        omits = carried if carried is not None and any(e.seq == carried for e in entries) else None
        return Bell.model_construct(
            conversation_id=s.conversation_id, seq=s.seq, state=s.state, owner=s.owner, queue=s.queue,
            waiting_since=(s.waiting_since or s.pending.requested_at) if waiting else None,
            reason=s.pending.reason if waiting else None, at=workflow.now(), number=s.bells,
            entries=[e for e in entries if e.seq != omits] if omits is not None else entries, omits=omits,
            created=s.created_at,
        )

    def _take_bell(self, carried: int | None = None, fresh: bool = False) -> Bell | None:
        """The bell for an activity that starts anyway to carry, if there is news since the last one (or, `fresh`,
        numbered afresh whatever was rung before)."""
        if self._rung == self._bell_key() and not fresh:
            return None
        self.s.bells += 1
        bell = self._bell(carried)
        self._rung = self._bell_key()
        return bell

    def _carrier_due(self) -> bool:
        """An activity that will carry the bell starts in this same activation: the AI agent's turn (the main loop
        is free and the next work is a turn), the routing decision (the next work routes a pending handoff) or a
        channel delivery (the delivery loop is free)."""
        head = self.s.inbox[0] if self.s.inbox else None
        turn = (not self._doing and head is not None and head.kind in ("ai_turn", "ai_welcome")
                and self.s.state is State.AI)
        route = (not self._doing and head is not None and head.kind == "route"
                 and self._routes(head.handoff_id))
        delivery = not self._delivering and bool(self.s.outbox) and self.s.peer is None
        return turn or route or delivery

    def _routes(self, handoff_id: str | None) -> bool:
        """The inbox's `route` work will start the routing activity (the handoff is still pending and unrouted)."""
        pending = self.s.pending
        return pending is not None and pending.handoff_id == handoff_id and not pending.routed

    def _bell_key(self) -> tuple:
        s = self.s
        return (s.seq, s.state, s.owner, s.queue, s.waiting_since, s.pending.reason if s.pending else None)

    async def _ring_loop(self) -> None:
        """After each change the stream store hears of it: carried by the activity the change starts anyway (the AI
        agent's turn, a channel delivery), else by a `ring_bell` activity of its own. Up to RINGS_IN_FLIGHT run at
        once (a user's entry must not wait for the bell before it to come back), numbered so the store keeps the
        newest. (Regular activities: a local one, started from this loop beside the AI agent's, replayed in another
        order now and then and failed with TMPRL1100.)"""
        while True:
            await workflow.wait_condition(
                lambda: self._rung != self._bell_key() and self._ringing < RINGS_IN_FLIGHT and not self._carrier_due()
            )
            bell = self._take_bell()
            if bell is None:
                continue
            self._ringing += 1
            asyncio.create_task(self._ring(bell))

    async def _ring(self, bell: Bell) -> None:
        try:
            await workflow.execute_activity(
                Activities.RING_BELL, bell, start_to_close_timeout=timedelta(seconds=5),
                schedule_to_close_timeout=BELL_TIMEOUT, retry_policy=BELL_RETRY, summary="ring the stream's bell",
            )
        except ActivityError:
            pass  # the next change rings again with the whole state
        finally:
            self._ringing -= 1

    # ---- helpers --------------------------------------------------------------------------------

    async def _send(
        self, activity: str, arg: object, within: timedelta, summary: str, give_up: str
    ) -> DeliveryResult:
        """One signed delivery with the channel's retries; when they run out, the outcome is `give_up`."""
        try:
            return await workflow.execute_activity(
                activity,
                arg,
                result_type=DeliveryResult,
                start_to_close_timeout=CHANNEL_START_TO_CLOSE,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                schedule_to_close_timeout=within,
                retry_policy=CHANNEL_RETRY,
                summary=summary,
            )
        except ActivityError as err:
            return DeliveryResult(outcome=give_up, detail=f"gave up: {err.cause or err}")

    @property
    def _closed(self) -> bool:
        return self.s.state is State.CLOSED

    def _channel_message(self, entry: TranscriptEntry) -> ChannelMessage:
        return ChannelMessage.model_construct(
            conversation_id=self.s.conversation_id, seq=entry.seq, message_id=entry.message_id, role=entry.role,
            author=entry.author, text=entry.text, at=entry.at,
        )

    def _peer_delivery(self, entry: TranscriptEntry) -> PeerDelivery:
        peer = self.s.peer
        assert peer is not None
        if entry.event is None:
            event = PeerEvent(type="message", remote_conversation_id=self.s.conversation_id,
                              message_id=entry.message_id, text=entry.text)
        else:
            event = PeerEvent(type=entry.event, remote_conversation_id=self.s.conversation_id,
                              message_id=entry.message_id, reason=self.s.closed_reason or "")
        return PeerDelivery(agent_id=peer.agent_id, callback_url=peer.callback_url,
                            conversation_id=self.s.conversation_id, seq=entry.seq, event=event)

    def _transition(self, event: Event, *, owner: str | None, queue: str | None) -> None:
        self.s.state = apply(self.s.state, event)
        self.s.owner = owner
        self.s.queue = queue
        if self.s.state is not State.EXTERNAL_AGENT:
            self.s.external = None
        if self.s.state is not State.LIVE_AGENT:
            self.s.third_party_desk = None
        if self.s.state in (State.AI, State.CLOSED):
            self.s.shared_context = None
        if not self._closed:
            # A change of owner restarts the inactivity clock, so nobody is closed on the moment they arrive.
            self.s.last_activity_at = workflow.now()

    def _back_to_ai(self, pending: PendingHandoff) -> None:
        self.s.pending = None
        self.s.waiting_since = None
        # Whatever the user wrote while waiting is answered now rather than dropped.
        waited = [e for e in self.s.transcript if e.seq >= pending.from_seq and e.role is Role.USER]
        if waited:
            self.s.inbox.append(Work(kind="ai_turn", seq=waited[-1].seq))

    def _append(
        self, role: Role, author: str, text: str, message_id: str | None = None, *, event: str | None = None,
        deliver: bool = True,
    ) -> TranscriptEntry:
        self.s.seq += 1
        now = workflow.now()
        entry = TranscriptEntry(
            seq=self.s.seq,
            message_id=message_id or f"{role.value}-{workflow.uuid4().hex}",
            role=role,
            author=author,
            text=text,
            at=now,
            event=event,
        )
        self.s.transcript.append(entry)
        self.s.recent_message_ids.append(entry.message_id)
        self._seen.add(entry.message_id)
        if role is not Role.SYSTEM:
            self.s.last_activity_at = now
        if role is not Role.USER and deliver and not self.s.channel_stopped:
            self.s.outbox.append(entry.seq)
        self._details()
        return entry

    def _say(self, role: Role, author: str, text: str) -> TranscriptEntry:
        return self._append(role, author, text)

    def _entry(self, seq: int) -> TranscriptEntry:
        # Entries are appended in seq order; search from the end, where recent work looks.
        for entry in reversed(self.s.transcript):
            if entry.seq == seq:
                return entry
        raise ApplicationError(f"transcript entry {seq} is not in this run", non_retryable=True)

    def _audit(self, kind: str, **detail: object) -> None:
        self.s.audit.append(AuditEntry(at=workflow.now(), kind=kind, detail=detail))

    def _result(self, *, seq: int | None = None, duplicate: bool = False, handoff_id: str | None = None) -> CommandResult:
        return CommandResult(
            state=self.s.state, owner=self.s.owner, seq=seq, duplicate=duplicate, handoff_id=handoff_id
        )

    def _publish(self) -> None:
        """Search attributes (no personal data: ids, states and counts only) and the UI's details."""
        sa = SearchAttributes
        values = {
            sa.STATE: self.s.state.value,
            sa.OWNER: self.s.owner,
            sa.QUEUE: self.s.queue,
            sa.CHANNEL: self.s.channel,
            sa.HANDOFFS: self.s.handoffs,
            sa.WAITING_SINCE: self.s.waiting_since,
        }
        changed = [
            key.value_set(value) if value is not None else key.value_unset()
            for key, value in values.items()
            if self._published.get(key.name, ...) != value
        ]
        if changed:
            workflow.upsert_search_attributes(changed)
            self._published.update({key.name: value for key, value in values.items()})
        self._details()

    def _details(self) -> None:
        workflow.set_current_details(views.details(self.s))

    async def _continue_as_new(self) -> None:
        # Hand over only when no handler or delivery is mid-flight, so nothing is half-done.
        await workflow.wait_condition(lambda: workflow.all_handlers_finished() and not self._delivering)
        s = views.carry(self.s, workflow.info().run_id)
        workflow.continue_as_new(
            ConversationInput(
                conversation_id=s.conversation_id,
                channel=s.channel,
                inactivity_timeout_seconds=s.inactivity_timeout_seconds,
                handoff_sla_seconds=s.handoff_sla_seconds,
                carried=s,
            ),
            task_timeout=workflow.info().task_timeout,  # the next run keeps this run's (api.temporal)
        )
