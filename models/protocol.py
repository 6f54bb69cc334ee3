"""The platform protocol between two installs (docs/platform-protocol.md): request and callback bodies, and the
activities' contracts. The bodies' JSON Schemas are generated into docs/schemas/platform/ (docs/schemas/generate.py).

Bodies that arrive from another platform ignore unknown fields (a newer platform may add some) but validate every
field they use; what we send is exactly the documented shape."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from models.conversation import MAX_SUMMARY, MAX_TEXT, ID_PATTERN, RemoteReply, MessageId, Reason, Role, Text, TranscriptEntry
from models.filtering import SharedContext

MAX_CARRIED = 200  # transcript entries an envelope may carry
Url = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
RemoteId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
SourceId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[\x21-\x7e]+$")]


class Incoming(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Source(Incoming):
    platform: Url
    conversation_id: SourceId


class CarriedEntry(Incoming):
    seq: int = Field(ge=0)
    message_id: str = Field(min_length=1, max_length=200)
    role: Role
    author: str = Field(min_length=1, max_length=128)
    text: str = Field(max_length=MAX_TEXT)
    at: datetime


class HandoffEnvelope(Incoming):
    """POST /v1/agents/{agent_id}/handoffs: context and transcript already filtered by the sender."""

    handoff_id: MessageId
    source: Source
    reason: Reason = ""
    # Optional: what the conversation is about, for whoever takes over (written by the sender's AI from the filtered
    # transcript). Absent from senders that do not write one.
    summary: str | None = Field(default=None, max_length=MAX_SUMMARY)
    context: SharedContext = Field(default_factory=SharedContext)
    transcript: list[CarriedEntry] = Field(default_factory=list, max_length=MAX_CARRIED)
    callback_url: Url


class HandoffAccepted(BaseModel):
    """The 202 answer to a handoff envelope: the receiving platform took the conversation, under this id."""

    accepted: bool = True
    remote_conversation_id: str


class PeerMessage(Incoming):
    """POST /v1/agents/{agent_id}/conversations/{remote_conversation_id}/messages: the user's next message."""

    message_id: MessageId
    text: Text


class PeerEvent(Incoming):
    """POST {callback_url}: what the receiving platform's agent says or does, back to the sender."""

    # A `message` needs text that is not blank (checked by api/protocol.py), said in the JSON Schema too.
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"type": {"const": "message"}}, "required": ["type"]},
            "then": {"required": ["text"], "properties": {"text": {"pattern": "\\S"}}},
        }
    )

    type: Literal["message", "hand_back", "close"]
    remote_conversation_id: RemoteId
    message_id: MessageId
    text: str = Field(default="", max_length=MAX_TEXT)
    reason: Reason = ""


# ---- activity contracts (the workflow passes ids, never secrets: activities look secrets up) ------------------


class HandoffDelivery(BaseModel):
    agent_id: str
    handoff_id: str
    conversation_id: str
    reason: str = ""
    context: SharedContext
    transcript: list[TranscriptEntry]
    summary: str | None = None
    # The run records an agent's answers given in a call's response (the a2a-answers patch): an A2A agent may take it.
    answers: bool = False


class HandoffOutcome(BaseModel):
    accepted: bool
    remote_conversation_id: str | None = None
    status: int | None = None
    detail: str = ""
    # An A2A agent answers the handoff in its response: what it said, and whether its task already ended.
    replies: list[RemoteReply] = Field(default_factory=list)
    end: Literal["hand_back"] | None = None
    end_reason: str = ""


class ForwardMessage(BaseModel):
    agent_id: str
    remote_conversation_id: str
    conversation_id: str
    message_id: str
    text: str
    # As HandoffDelivery.answers.
    answers: bool = False


class PeerDelivery(BaseModel):
    """One entry of a conversation handed to our local agent `agent_id`, going back to the sender."""

    agent_id: str
    callback_url: str
    conversation_id: str
    seq: int
    event: PeerEvent
