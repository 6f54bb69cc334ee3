"""What leaves the workflow on its own loops: the channel's (or sending platform's) deliveries, in seq order, one
at a time; and the event stream's bells, carried by an activity that starts anyway or rung by their own."""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from models.conversation import Bell, ChannelMessage, State, TranscriptEntry
    from models.names import Activities
    from models.protocol import PeerDelivery, PeerEvent
    from workflows.options import CHANNEL_SCHEDULE_TO_CLOSE, OPTIONS, RINGS_IN_FLIGHT

from workflows.base import Story  # noqa: E402 - imported in the sandbox, like every chapter
from workflows.outcomes import Close  # noqa: E402


class Outbox(Story):
    async def _deliver_next(self) -> Close | None:
        """The next entry for the channel (or the sending platform), once there is one; the story's loop calls this
        again and again (conversation.py, `_deliver_loop`)."""
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
                return Close("the sending platform ended the handoff", peer_event=None)
        elif result.outcome == "rejected":
            self._audit("delivery_rejected", seq=entry.seq, status=result.status, detail=result.detail)
        return None

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
                Activities.RING_BELL, bell, **OPTIONS[Activities.RING_BELL], summary="ring the stream's bell",
            )
        except ActivityError:
            pass  # the next change rings again with the whole state
        finally:
            self._ringing -= 1

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
