"""The event stream's doorbell: what a conversation workflow tells the stream store after it changes: its state, and
the entries added since the last bell (already redacted, as the transcript holds them), so open streams send them
without asking the workflow. See docs/event-stream.md."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from models.conversation import State, TranscriptEntry

# The entries one bell carries, at most (as JSON); past it the bell carries none and streams read the workflow.
BELL_ENTRIES_BYTES = 16 * 1024


class Bell(BaseModel):
    """A conversation's latest transcript seq and who has it: written after every change, the newest wins."""

    conversation_id: str
    # The bell's number in the conversation (across runs): bells may land out of order, the store keeps the newest.
    number: int = 0
    seq: int
    state: State
    owner: str | None = None
    # The queue it waits in (handoff pending, a person's queue) or is owned from; None otherwise.
    queue: str | None = None
    # Set while it waits for a person: its place in the queue is decided by this instant, then its id.
    waiting_since: datetime | None = None
    reason: str | None = None
    at: datetime
    # The entries added since the previous bell (of this run), in seq order; empty when they would not fit.
    entries: list[TranscriptEntry] = []


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
