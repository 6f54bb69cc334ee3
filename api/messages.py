"""A user's message into a conversation (signal-with-start): one code path for the chat backend and the demo page."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from temporalio.client import Client

from activities.filtering import redact_text
from api.temporal import initial_attributes, start_input
from models.conversation import MAX_TEXT, MessageId, Name, UserMessage
from models.names import WORKFLOW_TYPE, Signals, workflow_id
from runtime.settings import Settings
from runtime.temporal import WORKFLOW_TASK_TIMEOUT


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message_id: MessageId
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    channel: Name | None = None


class Accepted(BaseModel):
    accepted: bool = True
    conversation_id: str
    message_id: str


def user_message(message_id: str, text: str) -> UserMessage:
    """A user's message as the workflow takes it: card numbers, IBANs, tokens... typed by the user are redacted
    here and never reach workflow history (PCI-style redaction); the kinds found go with it, for the audit."""
    clean, found = redact_text(text)
    return UserMessage(message_id=message_id, text=clean[:MAX_TEXT], redacted=sorted({kind for kind, _ in found})[:20])


async def send_user_message(client: Client, settings: Settings, conversation_id: str, body: MessageIn) -> Accepted:
    """Signal-with-start: the conversation starts if it is new; a repeated `message_id` is accepted and ignored
    by the workflow."""
    channel = body.channel or "web"
    message = user_message(body.message_id, body.text)
    await client.start_workflow(
        WORKFLOW_TYPE,
        start_input(settings, conversation_id, channel),
        id=workflow_id(conversation_id),
        task_queue=settings.task_queue,
        task_timeout=WORKFLOW_TASK_TIMEOUT,
        start_signal=Signals.USER_MESSAGE,
        start_signal_args=[message],
        search_attributes=initial_attributes(channel),
        static_summary=f"Conversation {conversation_id} ({channel})",
    )
    return Accepted(conversation_id=conversation_id, message_id=body.message_id)
