"""The clock, on durable timers: the inactivity timeout, the pending handoff's SLA (and business hours), and the
re-count of a waiting user's queue position."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from models.conversation import PendingHandoff, Role
    from models.names import Activities
    from models.routing import PositionRequest, PositionResult
    from models import notices
    from workflows import views
    from workflows.options import OPTIONS

from workflows.base import Story  # noqa: E402 - imported in the sandbox, like every chapter
from workflows.outcomes import Close, FallBack  # noqa: E402


class Clock(Story):
    async def _next_timeout(self) -> FallBack | Close | None:
        """Wait for the next deadline, or for an earlier one to be set; at a deadline, what it ends: the pending
        handoff's rung (its SLA, or its queue closing) or, idle too long, the conversation. The story's loop calls
        this until the conversation is closed (conversation.py, `_watch_deadlines`)."""
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
            return None
        pending = self.s.pending
        if pending is not None and now >= pending.deadline and not self._delivering_handoff and pending.routed:
            closed = pending.target is not None and not self._is_open(pending, pending.target, now)
            return FallBack("the queue closed (business hours)" if closed else "nobody accepted within the SLA")
        if now >= self._inactivity_deadline():
            minutes = self.s.inactivity_timeout_seconds // 60
            # Handed to us by another platform: idle here does not end the chat there, it goes back.
            return Close(f"inactive for {minutes} minutes" if minutes else "inactive", peer_event="hand_back")
        return None

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

    def _announce_positions(self, pending: PendingHandoff) -> None:
        target = pending.target
        if target is None or not target.waits_for_person or pending.position_update_seconds <= 0:
            return
        if pending.handoff_id in self._announcing:
            return
        self._announcing.add(pending.handoff_id)
        asyncio.create_task(self._position_loop(pending.handoff_id, pending.position_update_seconds))

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
                        **OPTIONS[Activities.QUEUE_POSITION],
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
