"""While an external agent or a third-party desk owns the conversation: the user's messages are passed on to it
(each belongs to the handoff it was queued for); one that is gone gives the conversation back to our AI."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from models.conversation import (
        DeliveryResult, ExternalLink, Role, State, Work,
    )
    from models.third_party_desk import ThirdPartyDeskForward
    from models.names import Activities
    from models.protocol import ForwardMessage
    from models import notices
    from models.targets import BY_FIELD
    from workflows.transitions import Event
    from workflows.options import FORWARD_TIMEOUT

from workflows.base import Story  # noqa: E402 - imported in the sandbox, like every chapter
from workflows.outcomes import AiTurn, Answered  # noqa: E402


class Owners(Story):
    async def _pass_on(self, work: Work) -> AiTurn | Answered | None:
        """A user's message to the agent or desk that owns the conversation, as its kind's row says (the platform
        protocol, the desk webhook). If the AI has the conversation back meanwhile, the AI answers it instead."""
        seq = work.seq
        if self.s.state is State.AI:
            return AiTurn(seq)
        link = self._link()
        if link is None or link.handoff_id != work.handoff_id:
            self._audit("not_forwarded", seq=seq, state=self.s.state.value)
            return None
        entry = self._entry(seq)
        if isinstance(link, ExternalLink):
            who, lost, notice = {"agent": link.agent_id}, "external_agent_lost", BY_FIELD["external_agent"].lost
            result = await self._send(
                Activities.FORWARD_TO_AGENT,
                ForwardMessage(
                    agent_id=link.agent_id, remote_conversation_id=link.remote_conversation_id,
                    conversation_id=self.s.conversation_id, message_id=entry.message_id, text=entry.text,
                    answers=self._answers,
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
            return None  # handed back or closed meanwhile
        return self._passed_on(seq, result, who, lost, notice or "")

    def _passed_on(self, seq: int, result: DeliveryResult, who: dict[str, str], lost: str, notice: str) -> Answered | None:
        """After forwarding: nothing to do when delivered (but record what an agent answered in the response); a
        refused message is the user's to rephrase; an agent that is gone or out of reach gives the conversation back
        to our AI, which answers this message."""
        if result.outcome == "delivered":
            if "agent" in who:
                return Answered(who["agent"], result.replies, result.end, result.end_reason)
            return None
        if result.outcome == "rejected":
            self._audit("forward_rejected", seq=seq, **who, status=result.status, detail=result.detail)
            self._say(Role.SYSTEM, "system", notices.NOT_PASSED_ON)
            return None
        self._audit(lost, seq=seq, **who, status=result.status, detail=result.detail)
        self._transition(Event.HAND_BACK, owner="ai", queue=None)
        self.s.human_stretch_ended = True
        self._say(Role.SYSTEM, "system", notice)
        self.s.inbox.insert(0, Work(kind="ai_turn", seq=seq))
        self._publish()
        return None
