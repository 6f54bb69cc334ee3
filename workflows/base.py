"""What every chapter of the Conversation workflow stands on: the state `s` and the primitives that change it
(append to the transcript, audit, move through the transition table, publish search attributes and the event
stream's bells), and the one way an activity whose failure must not fail the workflow is called (`_send`).

The chapters (ai, commands, handoffs, owners, clock, outbox) are mixins of workflows.conversation.Conversation,
which tells the story: start, the run loop, the handlers, continue-as-new. A chapter imports this module,
workflows/outcomes.py, the options table and models, never another chapter, and calls on `self` only what is
defined here or in its own module. Where a chapter's work leads to another chapter's step (the AI's reply hands off,
a deadline ends a rung, a delivery finds the sender gone), it returns that step as an outcome and the story takes
it (conversation.py, `_then` and `_follow`)."""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from models.conversation import (
        BELL_ENTRIES_BYTES,
        AuditEntry,
        Bell,
        CommandResult,
        ConversationState,
        DeliveryResult,
        ExternalLink,
        HandoffTarget,
        PendingHandoff,
        Role,
        State,
        ThirdPartyDeskLink,
        TranscriptEntry,
        UserMessage,
        Work,
        is_open,
        window_at,
    )
    from models import metrics
    from models.names import SearchAttributes
    from workflows import views
    from workflows.transitions import Event, apply
    from workflows.options import OPTIONS


class Story:
    """The state and the primitives every chapter uses (set up by Conversation.__init__)."""

    s: ConversationState
    _delivering: bool  # a channel delivery is in flight
    _published: dict[str, object]  # the search attributes as last upserted
    _seen: set[str]  # message ids of this run and those carried over
    _handing_over: str | None  # the handoff id whose envelope is being delivered
    _announcing: set[str]  # handoff ids whose position re-count runs
    _rung: tuple | None  # the last bell the stream store took
    _ringing: int  # bells in flight
    _doing: bool  # the main loop is working on an inbox item
    _summaries: bool  # PATCH_HANDOFF_SUMMARY: handoffs get a summary for their receiver
    _answers: bool  # PATCH_A2A_ANSWERS: an agent's answers in a call's response are recorded (owners.py)
    _a2a_peer: bool  # PATCH_A2A_PEER: an A2A client handed us this conversation; it reads, nothing is delivered
    _rating: bool  # PATCH_DESK_RATING: a live agent's release may ask for a rating; wrap-up codes are audited
    _close_rating: bool  # PATCH_CLOSE_RATING: a live agent's close may ask for a rating too
    _rating_for: timedelta  # how long the rating question a close asked stays open
    _next: list[UserMessage]  # PATCH_CLOSE_RATING: what the user wrote after the close, for the next conversation

    async def _send(
        self, activity: str, arg: object, within: timedelta, summary: str, give_up: str
    ) -> DeliveryResult:
        """One signed delivery with the channel's retries; when they run out, the outcome is `give_up`."""
        try:
            return await workflow.execute_activity(
                activity,
                arg,
                result_type=DeliveryResult,
                **OPTIONS[activity],
                schedule_to_close_timeout=within,
                summary=summary,
            )
        except ActivityError as err:
            return DeliveryResult(outcome=give_up, detail=f"gave up: {err.cause or err}")

    @property
    def _closed(self) -> bool:
        return self.s.state is State.CLOSED

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
            self.s.summary = None
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
        if role is not Role.USER and deliver and not self.s.channel_stopped and not self._a2a_peer:
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

    def _count_handoff(self, outcome: str, pending: PendingHandoff, target: HandoffTarget | None) -> None:
        """`baton_handoffs_total` for the rung that ended, and on an accept the wait since the request (the SDK's
        meter skips both while replaying: no I/O, no command, nothing counted twice)."""
        meter = workflow.metric_meter()
        kind = target.kind.field if target is not None else "none"
        meter.create_counter(metrics.HANDOFFS, "handoff rungs ended, by rule, target kind and outcome").add(
            1, {"rule": pending.rule or "none", "target_kind": kind, "outcome": outcome})
        if outcome == metrics.ACCEPTED:
            waited = (workflow.now() - pending.requested_at).total_seconds()
            meter.create_histogram_float(
                metrics.HANDOFF_WAIT, "a handoff's request to its accept", "s").record(max(waited, 0.0), {"target_kind": kind})

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

    def _still_waiting(self, handoff_id: str) -> bool:
        return self.s.pending is not None and self.s.pending.handoff_id == handoff_id and not self._closed

    def _pending_refusal(self, handoff_id: str) -> str | None:
        if self.s.pending is None:
            return f"handoff {handoff_id} is not pending: the conversation is in state '{self.s.state.value}'"
        if self.s.pending.handoff_id != handoff_id:
            return f"handoff {handoff_id} is stale: the pending handoff is {self.s.pending.handoff_id}"
        return None

    def _is_open(self, pending: PendingHandoff, target: HandoffTarget, at: datetime) -> bool:
        return is_open(pending.hours.get(target.label), at)

    def _window_end(self, pending: PendingHandoff, target: HandoffTarget, at: datetime) -> datetime | None:
        window = window_at(pending.hours.get(target.label), at)
        return window.end if window is not None else None

    def _link(self) -> ExternalLink | ThirdPartyDeskLink | None:
        """Who owns the conversation, when its kind is passed the user's messages (an external agent, a third-party
        desk); None when the owner reads them from the transcript (our live agents) or the AI has it."""
        return self.s.external or self.s.third_party_desk

    # ---- the event stream's bells: what the stream store is told of the state -------------------------

    def _bell(self, carried: int | None = None) -> Bell:
        """The bell for the current state; `carried`: the seq of an entry the carrying activity's input holds."""
        s = self.s
        waiting = s.state is State.HANDOFF_PENDING and s.queue is not None and s.pending is not None
        entries = views.since(s.transcript, self._rung[0] if self._rung else s.seq - 1, BELL_ENTRIES_BYTES)
        omits = carried if carried is not None and any(e.seq == carried for e in entries) else None
        return Bell.model_construct(
            conversation_id=s.conversation_id, seq=s.seq, state=s.state, owner=s.owner, queue=s.queue,
            waiting_since=(s.waiting_since or s.pending.requested_at) if waiting else None,
            reason=s.pending.reason if waiting else None, summary=s.summary if waiting else None,
            at=workflow.now(), number=s.bells,
            entries=[e for e in entries if e.seq != omits] if omits is not None else entries, omits=omits,
            created=s.created_at, rated=s.rated,
        )

    def _take_bell(self, carried: int | None = None, fresh: bool = False) -> Bell | None:
        """The bell for an activity that starts anyway to carry, if there is news since the last one (or, `fresh`,
        numbered afresh whatever was rung before). The outbox rings the rest (outbox.py)."""
        if self._rung == self._bell_key() and not fresh:
            return None
        self.s.bells += 1
        bell = self._bell(carried)
        self._rung = self._bell_key()
        return bell

    def _bell_key(self) -> tuple:
        s = self.s
        return (s.seq, s.state, s.owner, s.queue, s.waiting_since, s.pending.reason if s.pending else None, s.summary)
