"""What the event stream's store answers (docs/event-stream.md); the bell itself, which workflow code builds, is
`models.conversation.Bell`."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class WaitingRow(BaseModel):
    """One row of a desk's `event: waiting` list."""

    conversation_id: str
    position: int
    waiting_since: datetime
    reason: str | None = None
    summary: str | None = None
    # Higher waits ahead; the skills an agent needs to take it (the queue's, the route's and the handoff's).
    priority: int = 0
    skills: list[str] = []
