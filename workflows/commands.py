"""The commands a signal or an update carries (a user's or an agent's message, hand back, close, context), and
the refusals their handlers and validators share: an illegal command is refused, never applied."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from models.conversation import (
        AgentMessage,
        CloseRequest,
        CommandResult,
        ContextUpdate,
        HandBack,
        HandoffRequest,
        Rating,
        Role,
        State,
        UserMessage,
        Work,
    )
    from models import notices
    from workflows import views
    from workflows.transitions import Event, may_speak, refusal

from workflows.base import Story  # noqa: E402 - imported in the sandbox, like every chapter
from workflows.outcomes import Answered, Cancel  # noqa: E402

# At most this many messages written after a close start the next conversation (ConversationInput.first_messages);
# any more are recorded in the closed one, as every message after a close was before the close-rating patch.
NEXT_MESSAGES = 100


class Commands(Story):
    def _user_message(self, message: UserMessage) -> tuple[CommandResult, Cancel | None]:
        """The message taken (a duplicate is answered as one), and what it ends: a cancel phrase, the wait."""
        if message.message_id in self._seen:
            return self._result(duplicate=True), None
        if (self._close_rating and self._closed and self.s.peer is None and len(self._next) < NEXT_MESSAGES
                and not (self._rating_open() and views.rating_in(message.text) is not None)):
            # Not the answer to a close's rating question: this conversation is over, and what the user writes
            # now starts the next one under the same id (the run continues as new into it; conversation.run).
            self.s.rating_asked = None
            self._next.append(message)
            self._seen.add(message.message_id)
            return self._result(), None
        # Accepted even while closing: a message is never dropped, it is at least recorded.
        entry = self._append(Role.USER, message.author, message.text, message.message_id)
        if message.redacted:
            self._audit("redacted_at_ingress", seq=entry.seq, kinds=message.redacted)
        asked, self.s.rating_asked = self.s.rating_asked, None
        # A rating only answers the question while it is the last thing said to the user.
        answers = (asked is not None and asked.seq > 0
                   and (self.s.state is State.AI or (self._close_rating and self.s.state is State.CLOSED))
                   and views.only_user_since(self.s.transcript, asked.seq))
        score = views.rating_in(message.text) if answers else None
        if score is not None and asked is not None:
            # The answer to the rating question: recorded, thanked for, and not an AI turn.
            self.s.rated = asked.model_copy(update={"score": score})
            self._audit("rated", agent=asked.agent, score=score, number=asked.number, seq=entry.seq)
            self._say(Role.SYSTEM, "system", notices.RATED)
        elif self.s.state is State.AI:
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
            return self._result(seq=entry.seq), Cancel("the user stopped waiting", by="user")
        return self._result(seq=entry.seq), None

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
        if self._rating and request.wrap_up is not None:
            self._audit("handed_back", by=previous_owner, reason=request.reason, wrap_up=request.wrap_up)
        else:
            self._audit("handed_back", by=previous_owner, reason=request.reason)
        if self._rating and request.rating_question and previous_owner:
            # Asked once the AI has spoken up (_ask_rating), so the question is the last thing the user reads.
            number = (self.s.rated.number if self.s.rated else 0) + 1
            self.s.rating_asked = Rating(agent=previous_owner, number=number, seq=0, question=request.rating_question)
        self.s.inbox.append(Work(kind="ai_resume", seq=self.s.seq))
        self._publish()

    def _ask_rating(self) -> None:
        """After the AI's turn that follows a release: the rating question, if one is due and nothing intervened."""
        asked = self.s.rating_asked
        if asked is None or asked.seq:
            return
        if self.s.state is not State.AI or not asked.question:
            self.s.rating_asked = None
            return
        entry = self._say(Role.SYSTEM, "system", asked.question)
        self.s.rating_asked = asked.model_copy(update={"seq": entry.seq, "question": None})

    def _close_refusal(self, request: CloseRequest) -> str | None:
        if (why := refusal(self.s.state, Event.CLOSE)) is not None:
            return why
        if request.by is not None and request.by != self.s.owner:
            return (
                f"only the owner ({self.s.owner}) can close; {request.by} does not own the conversation "
                f"(state '{self.s.state.value}')"
            )
        return None

    def _wrap_up(self, request: CloseRequest) -> None:
        if self._rating and request.wrap_up is not None:
            self._audit("wrapped_up", by=request.by, code=request.wrap_up)

    def _close_command(self, request: CloseRequest) -> None:
        """A close by its owner: the wrap-up code, the close, and after a live agent's (with the rating on) the
        rating question, the last thing the user reads; the run stays for the answer (conversation.run)."""
        owner, state = self.s.owner, self.s.state
        self._wrap_up(request)
        self._close(request.reason)
        if (self._close_rating and request.rating_question and owner and state is State.LIVE_AGENT
                and self.s.peer is None):
            number = (self.s.rated.number if self.s.rated else 0) + 1
            entry = self._say(Role.SYSTEM, "system", request.rating_question)
            self.s.rating_asked = Rating(agent=owner, number=number, seq=entry.seq)
            self._rating_for = timedelta(seconds=request.rating_seconds)

    def _rating_open(self) -> bool:
        """Closed, with a close's rating question unanswered and its time not up."""
        asked = self.s.rating_asked
        return self._close_rating and self._closed and asked is not None and asked.seq > 0

    def _close(self, reason: str, peer_event: str | None = "close") -> None:
        """On a conversation handed to us, the closing entry goes back to the sender as `peer_event`
        (`close`, or `hand_back` when our side merely ended), or not at all (None: the sender ended it)."""
        self._transition(Event.CLOSE, owner=None, queue=None)
        self.s.pending = None
        self.s.waiting_since = None
        self.s.closed_reason = reason
        if self._close_rating:
            self.s.rating_asked = None  # a release's question still open is not answered after a close
        self._audit("closed", reason=reason)
        if self.s.peer is None:
            self._say(Role.SYSTEM, "system", notices.CLOSED)
        else:
            text = notices.HANDED_BACK_TO_REFERRER if peer_event == "hand_back" else notices.CLOSED
            self._append(Role.SYSTEM, "system", text, event=peer_event, deliver=peer_event is not None)
        self._publish()

    def _answered(self, answered: Answered) -> None:
        """What an external agent said in the response of a call (an A2A agent), recorded like its callback's
        messages (once per id, redacted already); the end of its task gives the conversation back to our AI."""
        if not self._answers:
            return
        agent_id = answered.agent_id
        for reply in answered.replies:
            message = AgentMessage(message_id=reply.message_id, text=reply.text, author=agent_id,
                                   role=Role.EXTERNAL_AGENT, redacted=reply.redacted)
            if (why := self._agent_message_refusal(message)) is None:
                self._agent_message(message)
            else:
                self._audit("agent_reply_refused", agent=agent_id, reason=why)
        hand_back = HandBack(reason=answered.end_reason, by=agent_id)
        if answered.end == "hand_back" and self._hand_back_refusal(hand_back) is None:
            self._hand_back(hand_back)

    def _merge_context(self, update: ContextUpdate) -> None:
        self.s.context = views.merged_context(self.s.context, update)
        self._audit(
            "context_updated",
            keys={s: sorted(getattr(update, s) or {}) for s in ("profile", "slots", "metadata")},
            sealed=sorted(update.sealed),
            **({"withheld": [w.model_dump() for w in update.withheld]} if update.withheld else {}),
        )
