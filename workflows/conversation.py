"""The Conversation workflow: one durable chat, owned by exactly one of the AI, an external agent or a live agent."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from models.conversation import (
        AcceptHandoff,
        AgentMessage,
        AgentReply,
        AgentTurn,
        AuditEntry,
        AuditPage,
        ChannelMessage,
        CloseRequest,
        CommandResult,
        ContextUpdate,
        ConversationInput,
        ConversationState,
        DeliveryResult,
        HandBack,
        HandoffRequest,
        HandoffTarget,
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
    )
    from models.names import WORKFLOW_TYPE, Activities, Queries, SearchAttributes, Signals, Updates
    from workflows import views
    from workflows.transitions import Event, apply, may_speak, refusal

DEFAULT_QUEUE = "general"
AI_HISTORY = 20  # transcript entries the AI agent sees per turn

# Patches (workflow.patched) keep conversations started by older code replaying as they ran.
PATCH_WAITING_IS_NOT_INACTIVITY = "waiting-is-not-inactivity"

AI_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=500), maximum_interval=timedelta(seconds=5), maximum_attempts=4)
# Unlimited attempts within a day: a chat backend that is down for an hour still gets every message, in order.
CHANNEL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=60)
)
CHANNEL_START_TO_CLOSE = timedelta(seconds=15)
CHANNEL_SCHEDULE_TO_CLOSE = timedelta(days=1)


class Reject(ApplicationError):
    """A command refused by an update validator; the reason reaches the caller, nothing reaches history."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, type="Rejected", non_retryable=True)


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
        self._waiting_is_not_inactivity = False

    # ---- the story of a conversation -------------------------------------------------------------

    @workflow.run
    async def run(self, input: ConversationInput) -> Snapshot:
        self._waiting_is_not_inactivity = workflow.patched(PATCH_WAITING_IS_NOT_INACTIVITY)
        self._publish()
        delivery = asyncio.create_task(self._deliver_loop())
        clock = asyncio.create_task(self._watch_deadlines())
        while True:
            await workflow.wait_condition(
                lambda: bool(self.s.inbox)
                or self._closed
                or workflow.info().is_continue_as_new_suggested()
                or clock.done()
                or delivery.done()
            )
            # A background loop that died must fail the workflow task loudly, never leave a silent gap.
            for task in (clock, delivery):
                if task.done():
                    task.result()
            while self.s.inbox and not self._closed:
                await self._do(self.s.inbox.pop(0))
            if self._closed:
                break
            if workflow.info().is_continue_as_new_suggested():
                await self._continue_as_new()
        # Closed: the user still gets everything already said (e.g. the closing notice), then the run ends.
        await workflow.wait_condition(lambda: not self.s.outbox and not self._delivering)
        await workflow.wait_condition(workflow.all_handlers_finished)
        clock.cancel()
        delivery.cancel()
        return views.snapshot(self.s)

    async def _do(self, work: Work) -> None:
        if work.kind in ("ai_turn", "ai_resume"):
            await self._ai_turn(work)

    async def _ai_turn(self, work: Work) -> None:
        if self.s.state is not State.AI:
            self._audit("ai_muted", seq=work.seq, owner=self.s.owner, state=self.s.state.value)
            return
        turn = AgentTurn(
            conversation_id=self.s.conversation_id,
            channel=self.s.channel,
            message=self._entry(work.seq) if work.kind == "ai_turn" else None,
            history=self.s.transcript[-AI_HISTORY:],
            profile=self.s.context.profile,
            slots=self.s.context.slots,
            resumed_after_handoff=self.s.human_stretch_ended,
        )
        try:
            reply = await workflow.execute_local_activity(
                Activities.AI_RESPOND,
                turn,
                result_type=AgentReply,
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=timedelta(minutes=2),
                retry_policy=AI_RETRY,
                summary=f"AI agent answers seq {work.seq}" if work.kind == "ai_turn" else "AI agent resumes",
            )
        except FailureError as err:
            # A local activity's failure arrives as the activity's own error (not wrapped in ActivityError).
            if isinstance(err, CancelledError):
                raise
            self._audit("ai_failed", seq=work.seq, error=str(getattr(err, "cause", None) or err))
            self._say(Role.SYSTEM, "system", "Sorry, I can't answer right now. Please try again in a moment.")
            return
        self.s.human_stretch_ended = False
        if reply.slots:
            self.s.context.slots.update(reply.slots)
        if self.s.state is not State.AI:
            # Someone took over while the AI was thinking: its answer must not reach the user.
            self._audit("ai_reply_suppressed", seq=work.seq, owner=self.s.owner)
            return
        if reply.text:
            self._say(Role.AI, "ai", reply.text)
        if reply.handoff is not None:
            request = HandoffRequest(
                reason=reply.handoff.reason, target=reply.handoff.target, params=reply.handoff.params
            )
            self._start_handoff(request, requested_by="ai")

    # ---- signals: fire and forget; an illegal one is recorded in the audit, never applied ---------

    @workflow.signal(name=Signals.USER_MESSAGE)
    def on_user_message(self, message: UserMessage) -> None:
        self._user_message(message)

    @workflow.signal(name=Signals.AGENT_MESSAGE)
    def on_agent_message(self, message: AgentMessage) -> None:
        if (why := self._agent_message_refusal(message)) is None:
            self._agent_message(message)
        else:
            self._audit("signal_rejected", signal=Signals.AGENT_MESSAGE, reason=why)

    @workflow.signal(name=Signals.REQUEST_HANDOFF)
    def on_request_handoff(self, request: HandoffRequest) -> None:
        if (why := refusal(self.s.state, Event.REQUEST_HANDOFF)) is None:
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
        if (why := refusal(self.s.state, Event.CLOSE)) is None:
            self._close(request.reason)
        else:
            self._audit("signal_rejected", signal=Signals.CLOSE, reason=why)

    @workflow.signal(name=Signals.SET_CONTEXT)
    def on_set_context(self, update: ContextUpdate) -> None:
        self._merge_context(update)

    # ---- updates: the same commands, answered; validators refuse without touching history ---------

    @workflow.update(name=Updates.SUBMIT_USER_MESSAGE)
    def submit_user_message(self, message: UserMessage) -> CommandResult:
        return self._user_message(message)

    @submit_user_message.validator
    def _check_user_message(self, message: UserMessage) -> None:
        if self._closed:
            raise Reject("the conversation is closed")

    @workflow.update(name=Updates.SUBMIT_AGENT_MESSAGE)
    def submit_agent_message(self, message: AgentMessage) -> CommandResult:
        return self._agent_message(message)

    @submit_agent_message.validator
    def _check_agent_message(self, message: AgentMessage) -> None:
        if (why := self._agent_message_refusal(message)) is not None:
            raise Reject(why)

    @workflow.update(name=Updates.SUBMIT_HANDOFF)
    def submit_handoff(self, request: HandoffRequest) -> CommandResult:
        pending = self._start_handoff(request, requested_by="update")
        return self._result(handoff_id=pending.handoff_id)

    @submit_handoff.validator
    def _check_handoff(self, request: HandoffRequest) -> None:
        if (why := refusal(self.s.state, Event.REQUEST_HANDOFF)) is not None:
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
        if (why := refusal(self.s.state, Event.CLOSE)) is not None:
            raise Reject(why)

    @workflow.update(name=Updates.SUBMIT_CONTEXT)
    def submit_context(self, update: ContextUpdate) -> CommandResult:
        self._merge_context(update)
        return self._result()

    @submit_context.validator
    def _check_context(self, update: ContextUpdate) -> None:
        if self._closed:
            raise Reject("the conversation is closed")

    @workflow.update(name=Updates.ACCEPT_HANDOFF)
    def accept_handoff(self, accept: AcceptHandoff) -> CommandResult:
        pending = self.s.pending
        assert pending is not None
        event = Event.ACCEPT_LIVE if pending.target.queue else Event.ACCEPT_EXTERNAL
        self._transition(event, owner=accept.owner, queue=pending.target.queue)
        self.s.pending = None
        self.s.waiting_since = None
        self._audit("handoff_accepted", handoff_id=pending.handoff_id, target=pending.target.label, owner=accept.owner)
        self._say(Role.SYSTEM, "system", f"{accept.owner} has joined the conversation.")
        self._publish()
        return self._result(handoff_id=pending.handoff_id)

    @accept_handoff.validator
    def _check_accept(self, accept: AcceptHandoff) -> None:
        if (why := self._pending_refusal(accept.handoff_id)) is not None:
            raise Reject(why)

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
        entries = [e for e in self.s.transcript if e.seq > q.after][: q.limit]
        first = self.s.transcript[0].seq if self.s.transcript else self.s.seq + 1
        return TranscriptPage(
            conversation_id=self.s.conversation_id,
            entries=entries,
            first_seq=first,
            earlier_runs=self.s.earlier_runs,
            last_seq=self.s.seq,
        )

    @workflow.query(name=Queries.AUDIT)
    def audit(self) -> AuditPage:
        return AuditPage(conversation_id=self.s.conversation_id, entries=self.s.audit)

    # ---- commands -------------------------------------------------------------------------------

    def _user_message(self, message: UserMessage) -> CommandResult:
        if message.message_id in self._seen:
            return self._result(duplicate=True)
        # Accepted even while closing: a message is never dropped, it is at least recorded.
        entry = self._append(Role.USER, message.author, message.text, message.message_id)
        if self.s.state is State.AI:
            self.s.inbox.append(Work(kind="ai_turn", seq=entry.seq))
        return self._result(seq=entry.seq)

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
        return self._result(seq=entry.seq)

    def _start_handoff(self, request: HandoffRequest, requested_by: str) -> PendingHandoff:
        target = request.target or HandoffTarget(queue=DEFAULT_QUEUE)
        now = workflow.now()
        previous_owner = self.s.owner
        self._transition(Event.REQUEST_HANDOFF, owner=None, queue=target.queue)
        sla = request.sla_seconds or self.s.handoff_sla_seconds
        pending = PendingHandoff(
            handoff_id=str(workflow.uuid4()),
            reason=request.reason,
            target=target,
            fallback=request.fallback,
            params=request.params,
            requested_at=now,
            deadline=now + timedelta(seconds=sla),
            sla_seconds=sla,
            from_seq=self.s.seq + 1,
        )
        self.s.pending = pending
        self.s.handoffs += 1
        self.s.waiting_since = now
        self._audit(
            "handoff_requested",
            handoff_id=pending.handoff_id,
            by=requested_by,
            from_owner=previous_owner,
            reason=request.reason,
            target=target.label,
            fallback=[t.label for t in request.fallback],
            params=request.params,
        )
        self._say(Role.SYSTEM, "system", views.waiting_notice(target))
        self._publish()
        return pending

    def _fall_back(self, why: str) -> None:
        pending = self.s.pending
        assert pending is not None
        self._audit("handoff_failed", handoff_id=pending.handoff_id, target=pending.target.label, reason=why)
        now = workflow.now()
        if pending.fallback:
            target, rest = pending.fallback[0], pending.fallback[1:]
            self._transition(Event.FALL_BACK, owner=None, queue=target.queue)
            # A new id, so a late accept for the target that failed is recognised as stale.
            self.s.pending = pending.model_copy(
                update={
                    "handoff_id": str(workflow.uuid4()),
                    "target": target,
                    "fallback": rest,
                    "deadline": now + timedelta(seconds=self._sla(pending)),
                }
            )
            self._audit("handoff_fallback", handoff_id=self.s.pending.handoff_id, target=target.label)
            self._say(Role.SYSTEM, "system", views.waiting_notice(target))
        else:
            self._transition(Event.GIVE_UP, owner="ai", queue=None)
            self._back_to_ai(pending)
            self._say(
                Role.SYSTEM,
                "system",
                "Sorry, nobody is available to take over right now. The assistant is back with you; "
                "you can ask for a person again later.",
            )
        self._publish()

    def _sla(self, pending: PendingHandoff) -> int:
        if self._waiting_is_not_inactivity and pending.sla_seconds:
            return pending.sla_seconds
        return self.s.handoff_sla_seconds

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

    def _close(self, reason: str) -> None:
        self._transition(Event.CLOSE, owner=None, queue=None)
        self.s.pending = None
        self.s.waiting_since = None
        self.s.closed_reason = reason
        self._audit("closed", reason=reason)
        self._say(Role.SYSTEM, "system", "This conversation has been closed.")
        self._publish()

    def _merge_context(self, update: ContextUpdate) -> None:
        ctx = self.s.context
        for section in ("profile", "slots", "metadata"):
            patch = getattr(update, section)
            if patch:
                getattr(ctx, section).update(patch)
        for section, sealed in update.sealed.items():
            ctx.sealed.setdefault(section, []).append(sealed)
        self._audit(
            "context_updated",
            keys={s: sorted(getattr(update, s) or {}) for s in ("profile", "slots", "metadata")},
            sealed=sorted(update.sealed),
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
            if self.s.pending is not None and now >= self.s.pending.deadline:
                self._fall_back("nobody accepted within the SLA")
            elif now >= self._inactivity_deadline():
                minutes = self.s.inactivity_timeout_seconds // 60
                self._close(f"inactive for {minutes} minutes" if minutes else "inactive")

    def _inactivity_deadline(self) -> datetime:
        return self.s.last_activity_at + timedelta(seconds=self.s.inactivity_timeout_seconds)

    def _next_deadline(self) -> datetime:
        if self.s.pending is not None and self._waiting_is_not_inactivity:
            # A user waiting for a handoff is not idle: the SLA, not the inactivity timeout, governs the wait.
            return self.s.pending.deadline
        deadline = self._inactivity_deadline()
        if self.s.pending is not None:
            deadline = min(deadline, self.s.pending.deadline)
        return deadline

    # ---- channel delivery: in seq order, one at a time, each with its own retries -----------------

    async def _deliver_loop(self) -> None:
        while True:
            await workflow.wait_condition(lambda: bool(self.s.outbox))
            entry = self._entry(self.s.outbox[0])
            self._delivering = True
            try:
                result = await workflow.execute_activity(
                    Activities.DELIVER_TO_CHANNEL,
                    ChannelMessage.model_construct(conversation_id=self.s.conversation_id, **dict(entry)),
                    result_type=DeliveryResult,
                    start_to_close_timeout=CHANNEL_START_TO_CLOSE,
                    schedule_to_close_timeout=CHANNEL_SCHEDULE_TO_CLOSE,
                    retry_policy=CHANNEL_RETRY,
                    summary=f"deliver seq {entry.seq} ({entry.role.value}) to the channel",
                )
            except ActivityError as err:
                result = DeliveryResult(outcome="rejected", detail=f"gave up: {err.cause or err}")
            finally:
                self._delivering = False
            self.s.outbox.pop(0)
            if result.outcome == "gone":
                self.s.channel_stopped = True
                self.s.outbox.clear()
                self._audit("channel_gone", seq=entry.seq, status=result.status)
            elif result.outcome == "rejected":
                self._audit("delivery_rejected", seq=entry.seq, status=result.status, detail=result.detail)

    # ---- helpers --------------------------------------------------------------------------------

    @property
    def _closed(self) -> bool:
        return self.s.state is State.CLOSED

    def _transition(self, event: Event, *, owner: str | None, queue: str | None) -> None:
        self.s.state = apply(self.s.state, event)
        self.s.owner = owner
        self.s.queue = queue
        if self._waiting_is_not_inactivity and not self._closed:
            # A change of owner restarts the inactivity clock, so nobody is closed on the moment they arrive.
            self.s.last_activity_at = workflow.now()

    def _back_to_ai(self, pending: PendingHandoff) -> None:
        self.s.pending = None
        self.s.waiting_since = None
        # Whatever the user wrote while waiting is answered now rather than dropped.
        waited = [e for e in self.s.transcript if e.seq >= pending.from_seq and e.role is Role.USER]
        if waited:
            self.s.inbox.append(Work(kind="ai_turn", seq=waited[-1].seq))

    def _append(self, role: Role, author: str, text: str, message_id: str | None = None) -> TranscriptEntry:
        self.s.seq += 1
        now = workflow.now()
        entry = TranscriptEntry(
            seq=self.s.seq,
            message_id=message_id or f"{role.value}-{workflow.uuid4().hex}",
            role=role,
            author=author,
            text=text,
            at=now,
        )
        self.s.transcript.append(entry)
        self.s.recent_message_ids.append(entry.message_id)
        self._seen.add(entry.message_id)
        if role is not Role.SYSTEM:
            self.s.last_activity_at = now
        if role is not Role.USER and not self.s.channel_stopped:
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
            )
        )
