"""The AI agent's turn: what it is shown (the turn, with what routing needs should its reply hand off), and what
its reply does (say, remember slots, hand back or close a conversation handed to us, hand off)."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from models.conversation import Bell, HandoffRequest, Role, State, TranscriptEntry, Work
    from models.names import Activities
    from models.routing import RouteRequest, RoutedReply, RoutedTurn
    from models import notices
    from workflows import views
    from workflows.options import AI_HISTORY, OPTIONS

from workflows.base import Story  # noqa: E402 - imported in the sandbox, like every chapter
from workflows.outcomes import Close, HandOff, RouteAiFailure  # noqa: E402


class AiTurns(Story):
    async def _ai_turn(self, work: Work) -> Close | HandOff | RouteAiFailure | None:
        """The turn, and what its reply says happens next: the conversation handed back or closed, a handoff, or
        (the agent failed for good) the failure rule's routing."""
        if self.s.state is not State.AI:
            self._audit("ai_muted", seq=work.seq, owner=self.s.owner, state=self.s.state.value)
            return None
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
            # The sender's summary (the handoff-summary patch: runs of older code never pass one).
            handoff_summary=peer.summary if peer and self._summaries else None,
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
                **OPTIONS[Activities.AI_RESPOND],
                summary=f"AI agent answers seq {work.seq}" if work.kind == "ai_turn" else f"AI agent: {work.kind}",
            )
        except ActivityError as err:
            self._audit("ai_failed", seq=work.seq, error=str(err.cause or err))
            if self.s.peer is None:
                # The AI agent failed for good: the config's failure rule decides who takes over.
                return RouteAiFailure()
            self._say(Role.SYSTEM, "system", notices.AI_FAILURE)
            return None
        self.s.human_stretch_ended = False
        # Audited since 1.1 (asked with the handoff-summary patch, like everything 1.1 adds).
        if reply.usage is not None and self._summaries:
            self._audit("ai_usage", seq=work.seq, **reply.usage.model_dump())
        if reply.problems and self._summaries:
            # Not done, and never shown to the user: a malformed or unknown tool call, said without its values.
            self._audit("ai_reply_refused", seq=work.seq, problems=list(reply.problems))
        if reply.relist:
            # A retried turn: an earlier attempt may have listed the conversation for a handoff this reply does not
            # make. The state as it is gets a bell numbered after that listing.
            self._rung = None
        if reply.slots:
            self.s.context.slots.update(reply.slots)
        if self.s.state is not State.AI:
            # Someone took over while the AI was thinking: its answer must not reach the user.
            self._audit("ai_reply_suppressed", seq=work.seq, owner=self.s.owner)
            return None
        if reply.text:
            self._say(Role.AI, "ai", reply.text)
        if reply.end is not None:
            if self.s.peer is None:
                self._audit("ai_end_ignored", end=reply.end, reason="only a conversation handed to us can be handed back")
            else:
                # Our local agent is done: the sending platform's side takes over again (or the chat ends).
                verb = "handed the conversation back" if reply.end == "hand_back" else "closed the conversation"
                return Close(f"the agent {verb}", peer_event=reply.end)
        if reply.handoff is not None:
            request = HandoffRequest(
                reason=reply.handoff.reason, target=reply.handoff.target, params=reply.handoff.params,
                intent=reply.handoff.intent,
            )
            # Decided within the turn: the conversation is already in its queue's waiting list, waiting since the
            # turn began; else (the turn could not decide) the routing activity decides, as for any other handoff.
            decided = reply.decision if turn.route is not None else None
            return HandOff(request, requested_by="ai", decision=decided,
                           since=turn.route.at if decided is not None and turn.route is not None else None)
        return None

    def _ai_window(self, upto: int | None) -> list[TranscriptEntry]:
        peer = self.s.peer
        mine = self.s.transcript if upto is None else [e for e in self.s.transcript if e.seq <= upto]
        return views.tail((peer.transcript if peer else []) + mine, AI_HISTORY)

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
            channel=self.s.channel, language=views.language(self.s.context),
            default_sla_seconds=self.s.handoff_sla_seconds,
            requested_by="request", at=now, bell=bell,
        )
