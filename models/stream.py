"""The event stream's doorbell: what a conversation workflow tells the stream store after it changes.

A bell carries no personal data (ids, state, owner, queue, times, the handoff's reason): the entries themselves are
read from the workflow (the transcript query) by whoever streams them. See docs/event-stream.md."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from models.conversation import State


class Bell(BaseModel):
    """A conversation's latest transcript seq and who has it: written after every change, the newest wins."""

    conversation_id: str
    seq: int
    state: State
    owner: str | None = None
    # The queue it waits in (handoff pending, a person's queue) or is owned from; None otherwise.
    queue: str | None = None
    # Set while it waits for a person: its place in the queue is decided by this instant, then its id.
    waiting_since: datetime | None = None
    reason: str | None = None
    at: datetime


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
