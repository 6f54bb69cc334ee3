"""The Conversation workflow: one durable chat, owned by exactly one of the AI, an external agent or a live agent."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from models.conversation import (
        AcceptHandoff,
        AgentMessage,
        AuditPage,
        CancelHandoff,
        CloseRequest,
        CommandResult,
        ContextUpdate,
        ConversationInput,
        ConversationState,
        HandBack,
        HandoffRequest,
        HistoryQuery,
        HistoryWindow,
        RejectHandoff,
        Snapshot,
        State,
        TranscriptPage,
        TranscriptQuery,
        UserMessage,
        Work,
    )
    from models.names import WORKFLOW_TYPE, Errors, Queries, Signals, Updates
    from workflows import views
    from workflows.options import IDLE_RUN_EVENTS, RUN_EVENTS
    from workflows.transitions import Event, refusal

# The chapters are imported inside the sandbox (not passed through), so the SDK's sandbox checks their code for
# non-deterministic calls as it checks this module's; what they import of models is passed through.
from workflows.ai import AiTurns  # noqa: E402
from workflows.clock import Clock  # noqa: E402
from workflows.commands import Commands  # noqa: E402
from workflows.handoffs import Handoffs  # noqa: E402
from workflows.outbox import Outbox  # noqa: E402
from workflows.owners import Owners  # noqa: E402
from workflows.outcomes import (  # noqa: E402
    AiTurn, Answered, AsyncStep, Cancel, Close, FallBack, HandOff, Outcome, RouteAiFailure, WatchPosition,
)

# Versioning (README, "Changing the workflow"): Baton 1.0 is the baseline, with no patch of its own; every change
# to the workflow after it is guarded by `workflow.patched(ID)` with the ID listed here, and adds a history to
# tests/histories/. The patches of the releases before 1.0 (waiting-is-not-inactivity, platform-protocol,
# routing-rules, event-stream, short-runs, route-rings) were retired at 1.0: their behaviour is what 1.0 does.
#
# Patches since 1.0:
# - PATCH_HANDOFF_SUMMARY ("handoff-summary", 1.1): every handoff to a person, a desk or an external agent gets a
#   summary for its receiver (the `summarize_handoff` activity, once per handoff, after the context is shared with a
#   waiting list or before an envelope is sent); the snapshot, the desks' waiting lists and both envelopes carry it.
# - PATCH_A2A_ANSWERS ("a2a-answers", 1.1): an external agent that answers in the response of a call (an A2A agent)
#   has its replies recorded and delivered like a callback's messages, and the end of its task hands the
#   conversation back to our AI (HandoffOutcome / DeliveryResult `replies` and `end`).
# - PATCH_A2A_PEER ("a2a-peer", 1.1): a conversation an A2A client handed to our local agent (PeerLink protocol
#   `a2a`, no callback URL) keeps what it says in the transcript, where the client reads it in the answer to its
#   call (api/a2a_server.py), instead of delivering it to a callback; the snapshot says whether work is in hand.
# - PATCH_DESK_RATING ("desk-rating", 1.2): a live agent's release may ask the user a one-question rating (the
#   config's `rating`); a reply 1-5 is recorded (audit `rated`, the bell's `rated`) instead of going to the AI.
#   Release and close record their wrap-up code in the audit.
# - PATCH_IDLE_CONTINUE ("idle-continue-as-new", 1.3): a run with nothing to do and nothing in flight continues as new
#   from IDLE_RUN_EVENTS (not only at RUN_EVENTS, where the hand-over held the next message's reply back), and what
#   it carries says whether the stream store already has the state (`rung`), so the next run rings no bell for it.
# - PATCH_CLOSE_RATING ("close-rating", 1.4): a live agent's close may ask the user the rating question too (after
#   the closing notice); the closed run then takes one message, an answer 1-5, for the close's `rating_seconds`,
#   records it like a release's rating, and ends once it is answered or the time is up.
# - PATCH_LEAN_RUNS ("lean-runs", 1.5): a run that has it asks none of the patches above (they all hold: the code
#   that records this marker has them all), so a run starts with one marker and one `TemporalChangeVersion` upsert
#   instead of one of each per patch above; and it takes the search attributes it started with as published, so a
#   continued run (which inherits its predecessor's) or a conversation the API started with them upserts only what
#   differs.
#   A patch added after it is asked on its own, as before; a later release may fold such patches into a new
#   umbrella the same way.
#
# How a patch is asked matters: ask it once per run, in the run's first activation (at the start of `run`), and
# keep the answer. Asked for the first time while reacting to an activity's result, a patch produced histories that
# failed replay with TMPRL1100 now and then (the SDK's automatic `TemporalChangeVersion` upsert lands in another
# workflow task on replay); a single marker in the first workflow task is the shape that always replayed.


PATCH_HANDOFF_SUMMARY = "handoff-summary"
PATCH_A2A_ANSWERS = "a2a-answers"
PATCH_A2A_PEER = "a2a-peer"
PATCH_DESK_RATING = "desk-rating"
PATCH_IDLE_CONTINUE = "idle-continue-as-new"
PATCH_CLOSE_RATING = "close-rating"
PATCH_LEAN_RUNS = "lean-runs"


class Reject(ApplicationError):
    """A command refused by an update validator; the reason reaches the caller, nothing reaches history."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, type=Errors.REJECTED, non_retryable=True)


@workflow.defn(name=WORKFLOW_TYPE)
class Conversation(AiTurns, Commands, Handoffs, Owners, Clock, Outbox):
    """The story; its chapters are the mixins (workflows/base.py says how they fit)."""

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
        self._summaries = False  # PATCH_HANDOFF_SUMMARY, asked at the start of `run`
        self._answers = False  # PATCH_A2A_ANSWERS, likewise
        self._a2a_peer = False  # PATCH_A2A_PEER, likewise
        self._rating = False  # PATCH_DESK_RATING, likewise
        self._idle_continue = False  # PATCH_IDLE_CONTINUE, likewise
        self._close_rating = False  # PATCH_CLOSE_RATING, likewise
        self._rating_for = timedelta(0)  # how long a close's rating question stays open
        self._next: list[UserMessage] = []  # written after the close: the next conversation's first messages
        for message in input.first_messages:
            # Written after the run before closed: this conversation starts with them. Here, not in `run`: a retry of
            # one of them may be signalled in this run's first activation, whose handlers run before `run` does.
            self._take_user_message(message)
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
        a2a_peer = self.s.peer is not None and self.s.peer.protocol == "a2a"
        if workflow.patched(PATCH_LEAN_RUNS):
            # One marker for everything since 1.0 (each patch asked costs a marker and a search attribute upsert in
            # every run), and the search attributes the run started with (a continued run inherits its
            # predecessor's; the API starts a conversation with them) are taken as published.
            self._summaries = self._answers = self._rating = self._idle_continue = self._close_rating = True
            self._a2a_peer = a2a_peer
            self._published = views.inherited_search_attributes(workflow.info().typed_search_attributes)
        else:
            self._summaries = workflow.patched(PATCH_HANDOFF_SUMMARY)
            self._answers = workflow.patched(PATCH_A2A_ANSWERS)
            self._rating = workflow.patched(PATCH_DESK_RATING)
            self._idle_continue = workflow.patched(PATCH_IDLE_CONTINUE)
            self._close_rating = workflow.patched(PATCH_CLOSE_RATING)
            if a2a_peer:
                self._a2a_peer = workflow.patched(PATCH_A2A_PEER)
        if self.s.rung and self._idle_continue:
            self._rung = self._bell_key()  # the run before knew the store had this state: nothing to ring yet
        self.s.rung = False  # only ever true in what continue-as-new carries
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
        if self._rating_open():
            # A live agent's close asked for a rating: the run takes the answer for a while (nothing else).
            try:
                await workflow.wait_condition(lambda: not self._rating_open(), timeout=self._rating_for)
            except asyncio.TimeoutError:
                self.s.rating_asked = None
        # Closed: the user still gets everything already said (e.g. the closing notice), then the run ends.
        await workflow.wait_condition(lambda: not self.s.outbox and not self._delivering)
        await workflow.wait_condition(workflow.all_handlers_finished)
        # The stream store learns of the close (the desk's waiting lists drop it) before the run ends.
        await workflow.wait_condition(lambda: not self._ringing and self._rung == self._bell_key())
        for task in loops:
            task.cancel()
        if self._next:
            # The user wrote again after the close: a new conversation under the same id, as a message to a
            # conversation whose run has ended starts one (the API's signal-with-start).
            workflow.continue_as_new(
                ConversationInput(
                    conversation_id=self.s.conversation_id,
                    channel=self.s.channel,
                    inactivity_timeout_seconds=self.s.inactivity_timeout_seconds,
                    handoff_sla_seconds=self.s.handoff_sla_seconds,
                    first_messages=self._next,
                ),
                task_timeout=workflow.info().task_timeout,
            )
        return views.snapshot(self.s)

    def _may_continue_as_new(self) -> bool:
        # While the channel holds more undelivered replies than a run may hand on, the run goes on (history has
        # room to spare) and continues as new once they are delivered: nothing is dropped, nothing is oversized.
        info = workflow.info()
        length = info.get_current_history_length()
        if not (info.is_continue_as_new_suggested() or length >= RUN_EVENTS
                or (self._idle_continue and length >= IDLE_RUN_EVENTS and self._idle())):
            return False
        key = (self.s.seq, tuple(self.s.outbox[:1]), len(self.s.inbox))
        if self._carry_checked is None or self._carry_checked[0] != key:
            self._carry_checked = (key, views.carry_fits(self.s))
        return self._carry_checked[1]

    def _idle(self) -> bool:
        """Talking with the AI, with nothing to do and nothing in flight: no work, no delivery, no bell unrung, no
        handler running. (A handoff or a human stretch goes on to RUN_EVENTS, as before.)"""
        return (self.s.state is State.AI and not self.s.inbox and not self.s.outbox and not self._delivering
                and not self._doing and not self._ringing and self._rung == self._bell_key()
                and workflow.all_handlers_finished())

    async def _do(self, work: Work) -> None:
        if work.kind in ("ai_turn", "ai_resume", "ai_welcome"):
            await self._follow(await self._ai_turn(work))
            if work.kind == "ai_resume":
                self._ask_rating()
        elif work.kind == "deliver_handoff":
            self._then(await self._deliver_handoff(work.handoff_id or ""))
        elif work.kind == "forward":
            await self._follow(await self._pass_on(work))
        elif work.kind == "route":
            self._then(await self._route(work.handoff_id or ""))
        elif work.kind == "share":
            await self._share(work.handoff_id or "")
        elif work.kind == "summarize":
            await self._summarize(work.seq)

    # ---- what happens next: the step a chapter's outcome names, taken here (workflows/outcomes.py) ----------

    def _then(self, outcome: Outcome | None) -> AsyncStep | None:
        """Take the step `outcome` names, and the steps it leads to, now (before anything else is awaited, so the
        commands come in the order they always did); an AI turn or the AI failure's routing is handed back to be
        awaited (`_follow`; only the main loop's work leads to those)."""
        while outcome is not None:
            if isinstance(outcome, Close):
                self._close(outcome.reason, outcome.peer_event)
                outcome = None
            elif isinstance(outcome, HandOff):
                outcome = self._start_handoff(outcome.request, outcome.requested_by, outcome.decision, outcome.since)[1]
            elif isinstance(outcome, FallBack):
                outcome = self._fall_back(outcome.why)
            elif isinstance(outcome, Cancel):
                self._cancel(outcome.reason, by=outcome.by)
                outcome = None
            elif isinstance(outcome, Answered):
                self._answered(outcome)
                outcome = None
            elif isinstance(outcome, WatchPosition):
                self._announce_positions(outcome.pending)
                outcome = None
            elif isinstance(outcome, (AiTurn, RouteAiFailure)):
                return outcome
            else:
                raise TypeError(f"not an outcome: {outcome!r}")  # fails the task loudly; never a silent skip
        return None

    async def _follow(self, outcome: Outcome | None) -> None:
        """`_then`, awaiting the AI's turn or the AI failure's routing where an outcome leads to one."""
        step = self._then(outcome)
        while step is not None:
            if isinstance(step, AiTurn):
                step = self._then(await self._ai_turn(Work(kind="ai_turn", seq=step.seq)))
            elif isinstance(step, RouteAiFailure):
                step = self._then(await self._route_ai_failure())

    async def _watch_deadlines(self) -> None:
        """The clock's deadlines, one after another, until the conversation is closed (clock.py)."""
        while not self._closed:
            self._then(await self._next_timeout())

    async def _deliver_loop(self) -> None:
        """The channel's deliveries, one at a time in seq order, for as long as the run lasts (outbox.py)."""
        while True:
            self._then(await self._deliver_next())

    def _take_user_message(self, message: UserMessage) -> CommandResult:
        result, then = self._user_message(message)
        if then is None:
            return result
        self._then(then)
        return self._result(seq=result.seq)  # the state after the step (a cancel phrase ended the wait)

    # ---- signals: fire and forget; an illegal one is recorded in the audit, never applied ---------

    @workflow.signal(name=Signals.USER_MESSAGE)
    def on_user_message(self, message: UserMessage) -> None:
        if (why := self._via_refusal(message)) is None:
            self._take_user_message(message)
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
            self._then(self._start_handoff(request, requested_by="signal")[1])
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
            self._close_command(request)
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
        return self._take_user_message(message)

    @submit_user_message.validator
    def _check_user_message(self, message: UserMessage) -> None:
        if not self._closed:
            pass
        elif self._close_rating and message.message_id in self._seen:
            pass  # a retry of a message already taken: answered as a duplicate, as before the close
        elif not self._rating_open():
            raise Reject("the conversation is closed")
        elif views.rating_in(message.text) is None:
            raise Reject("the conversation is closed; it takes only an answer 1-5 to its rating question")
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
        pending, then = self._start_handoff(request, requested_by="update")
        self._then(then)
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
        self._close_command(request)
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
        return self._accept(accept)

    @accept_handoff.validator
    def _check_accept(self, accept: AcceptHandoff) -> None:
        if (why := self._accept_refusal(accept)) is not None:
            raise Reject(why)

    @workflow.update(name=Updates.REJECT_HANDOFF)
    def reject_handoff(self, reject: RejectHandoff) -> CommandResult:
        self._then(self._fall_back(f"rejected: {reject.reason}"))
        return self._result()

    @reject_handoff.validator
    def _check_reject(self, reject: RejectHandoff) -> None:
        if (why := self._pending_refusal(reject.handoff_id)) is not None:
            raise Reject(why)
        pending = self.s.pending
        if pending is not None and not pending.routed:
            raise Reject(f"handoff {pending.handoff_id} is still being routed; try again in a moment")

    # ---- queries --------------------------------------------------------------------------------

    @workflow.query(name=Queries.SNAPSHOT)
    def snapshot(self) -> Snapshot:
        return views.snapshot(self.s, busy=not self._closed and (self._doing or bool(self.s.inbox)),
                              rating_open=self._rating_open())

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

    @workflow.query(name=Queries.AUDIT)
    def audit(self) -> AuditPage:
        entries = views.newest_audit(self.s.audit)
        return AuditPage(conversation_id=self.s.conversation_id, entries=entries, omitted=len(self.s.audit) - len(entries))

    # ---- continue-as-new --------------------------------------------------------------------------

    async def _continue_as_new(self) -> None:
        # Hand over only when no handler or delivery is mid-flight, so nothing is half-done.
        await workflow.wait_condition(lambda: workflow.all_handlers_finished() and not self._delivering)
        s = views.carry(self.s, workflow.info().run_id)
        if self._idle_continue:
            s.rung = self._rung == self._bell_key() and not self._ringing
        workflow.continue_as_new(
            ConversationInput(
                conversation_id=s.conversation_id,
                channel=s.channel,
                inactivity_timeout_seconds=s.inactivity_timeout_seconds,
                handoff_sla_seconds=s.handoff_sla_seconds,
                carried=s,
            ),
            task_timeout=workflow.info().task_timeout,  # the next run keeps this run's (runtime.temporal)
        )
