"""The event stream's doorbell: what a conversation workflow tells the stream store after it changes: its state, and
the entries added since the last bell (already redacted, as the transcript holds them), so open streams send them
without asking the workflow. See docs/event-stream.md."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from models.conversation import BELL_ENTRIES_BYTES, Bell, State, TranscriptEntry  # noqa: F401 - re-exported

class StreamState(BaseModel):
    """`event: state` on a conversation's stream (and, with `conversation_id`, on the desk stream)."""

    state: State
    owner: str | None = None
    queue: str | None = None
    position: int | None = None


class WaitingRow(BaseModel):
    conversation_id: str
    position: int
    waiting_since: datetime
    reason: str | None = None
    summary: str | None = None
