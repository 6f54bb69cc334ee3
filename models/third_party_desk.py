"""A third-party desk reached by webhook (Microsoft-handoff-style): what we send it, and its status callbacks.
The protocol is specified in docs/desk-protocol.md; the wire bodies' JSON Schemas are in docs/schemas/desk/.

We POST the handoff (filtered context and transcript, signed per Standard Webhooks with the desk's secret) to
`{url}/handoffs`; a 2xx means "received", not "accepted". The desk answers later on our callback route
`POST /v1/desks/{desk}/events` with `accepted`, `failed`, `message` (its agent's reply) and `completed`
(hand back to the AI). While the desk owns the conversation, the user's messages go to `{url}/messages`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.conversation import ID_PATTERN, MAX_SUMMARY, ConversationId, MessageId, Name, Reason, Text, TranscriptEntry
from models.filtering import SharedContext
from models.protocol import CarriedEntry, Incoming, Url


class ThirdPartyDeskHandoff(BaseModel):
    """The deliver_to_desk activity's input (built by the workflow; context and transcript already filtered)."""

    desk: str
    handoff_id: str
    conversation_id: str
    reason: str = ""
    context: SharedContext = Field(default_factory=SharedContext)
    transcript: list[TranscriptEntry] = Field(default_factory=list)
    summary: str | None = None


class ThirdPartyDeskForward(BaseModel):
    """The forward_to_desk activity's input: a user's message while the desk owns the conversation."""

    desk: str
    handoff_id: str
    conversation_id: str
    message_id: str
    text: str


# ---- the wire bodies Baton sends (built by activities/third_party_desk.py; tests/test_docs.py holds them to these) ---


class ThirdPartyDeskEnvelope(BaseModel):
    """POST {url}/handoffs: a conversation handed to the desk. Context and transcript are already filtered (the
    route's allowlist applied); a 2xx means received, the desk accepts or fails later on `callback_url`."""

    handoff_id: str = Field(min_length=1, max_length=200)
    conversation_id: ConversationId
    reason: Reason = ""
    # What the conversation is about, for the desk's person (written from the filtered transcript); absent when none
    # was written.
    summary: str | None = Field(default=None, max_length=MAX_SUMMARY)
    context: SharedContext = Field(default_factory=SharedContext)
    transcript: list[CarriedEntry] = Field(default_factory=list)
    callback_url: Url


class ThirdPartyDeskUserMessage(BaseModel):
    """POST {url}/messages: the user's next message while the desk owns the conversation."""

    conversation_id: ConversationId
    handoff_id: str = Field(min_length=1, max_length=200)
    message_id: MessageId
    text: Text


# ---- what the desk sends back -------------------------------------------------------------------------------


class ThirdPartyDeskEvent(Incoming):
    """POST /v1/desks/{desk}/events, signed with the desk's secret."""

    # The model validator below, said in the JSON Schema too (docs/schemas/desk/event.json).
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"type": {"const": "message"}}, "required": ["type"]},
            "then": {
                "required": ["message_id", "text"],
                "properties": {"message_id": {"type": "string"}, "text": {"type": "string"}},
            },
        }
    )

    type: Literal["accepted", "failed", "message", "completed"]
    conversation_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN)
    handoff_id: str = Field(min_length=1, max_length=200)
    # The desk's agent (display only; the conversation's owner is `desk:{desk}`).
    agent: Name | None = None
    reason: Reason = ""
    message_id: MessageId | None = None
    text: Text | None = None

    @model_validator(mode="after")
    def _message_has_text(self) -> ThirdPartyDeskEvent:
        if self.type == "message" and (self.message_id is None or self.text is None):
            raise ValueError("a 'message' event needs 'message_id' and 'text'")
        return self
