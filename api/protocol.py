"""The platform protocol's routes: inbound handoffs and user messages (receiving side), agent callbacks (sending side).
The protocol is specified in docs/platform-protocol.md.

Every request is signed per Standard Webhooks with the agent's secret: a missing, bad or stale signature, or an
agent we do not know, is a 401 and nothing else happens. A repeated `webhook-id` is answered as the first time."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from temporalio.client import Client

from activities import webhooks
from activities.filtering import apply_filter, redact_text
from activities.outbound import OutboundError, OutboundPolicy, resolve_public
from activities.registry import AgentRegistry
from api.agents import AgentPath, signed_by
from api.temporal import start_handed, update
from models.conversation import (
    ID_PATTERN,
    MAX_TEXT,
    AgentMessage,
    CloseRequest,
    Context,
    HandBack,
    PeerLink,
    Role,
    TranscriptEntry,
    UserMessage,
)
from models.filtering import FilterContext, FilterRequest
from models.names import Routes, Updates
from models.protocol import HandoffAccepted, HandoffEnvelope, PeerEvent, PeerMessage
from runtime.settings import Settings

RemotePath = Annotated[str, Path(min_length=1, max_length=128, pattern=ID_PATTERN)]
PLATFORM_CHANNEL = "platform"
# A callback can overtake the handoff it belongs to (the other side answers its 202 and greets at once):
# wait this long for our side to record the acceptance before calling the conversation unknown.
SETTLE_SECONDS = 5.0


class Ack(BaseModel):
    """The 202 answer to a forwarded user message or a callback event."""

    accepted: bool = True


def remote_conversation_id(agent_id: str, envelope: HandoffEnvelope) -> str:
    """Deterministic, so the same envelope delivered twice (any webhook-id) opens one conversation."""
    key = "\x00".join((agent_id, envelope.source.platform, envelope.source.conversation_id, envelope.handoff_id))
    return "h-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _parse(model: type[BaseModel], body: bytes, shape: str) -> Any:
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()[:10])
        raise HTTPException(422, f"{shape}: {problems}") from None


def _agent_message_id(agent_id: str, message_id: str) -> str:
    """The external agent's message ids live in their own namespace in our conversation."""
    mid = f"ext:{agent_id}:{message_id}"
    return mid if len(mid) <= 200 else "ext:" + hashlib.sha256(mid.encode()).hexdigest()


def protocol_router(
    registry: Callable[[], AgentRegistry], settings: Settings, policy: OutboundPolicy | None = None
) -> APIRouter:
    router = APIRouter(tags=["platform protocol"])

    def client_of(request: Request) -> Client:
        return request.app.state.client

    async def signed(request: Request, agent_id: str, secrets: list[str]) -> tuple[bytes, str, JSONResponse | None]:
        """The verified body, its webhook-id, and the stored answer if this id was handled before."""
        body = await request.body()
        signed_by(secrets, request, body)
        webhook_id = request.headers[webhooks.ID_HEADER]
        done = registry().recall(agent_id, webhook_id)
        return body, webhook_id, JSONResponse(status_code=202, content=json.loads(done)) if done else None

    @router.post(Routes.AGENT_HANDOFFS, status_code=202, response_model=HandoffAccepted)
    async def receive_handoff(agent_id: AgentPath, request: Request) -> Any:
        """Another platform hands a conversation to our local agent: a conversation starts here, owned by that
        agent's AI, with the carried context; what it says goes back to `callback_url`, signed."""
        body, webhook_id, done = await signed(request, agent_id, registry().verifying_secrets(agent_id))
        if done is not None:
            return done
        envelope: HandoffEnvelope = _parse(HandoffEnvelope, body, "handoff envelope")
        try:
            await resolve_public(envelope.callback_url, policy or OutboundPolicy.from_env())
        except OutboundError as err:
            raise HTTPException(422, f"callback_url: {err.reason}") from None
        info = registry().local(agent_id)
        # The sender filtered already; we filter again at our door, so nothing sensitive enters our history.
        carried = [TranscriptEntry(**e.model_dump()) for e in envelope.transcript]
        clean = apply_filter(FilterRequest(context=FilterContext(**envelope.context.model_dump()), transcript=carried))
        rid = remote_conversation_id(agent_id, envelope)
        peer = PeerLink(
            agent_id=agent_id,
            agent_name=info.name if info else None,
            platform=envelope.source.platform,
            source_conversation_id=envelope.source.conversation_id,
            handoff_id=envelope.handoff_id,
            callback_url=envelope.callback_url,
            reason=envelope.reason,
            # Redacted at our door like the transcript (a Baton sender wrote it from its filtered transcript).
            summary=redact_text(envelope.summary)[0] if envelope.summary else None,
            transcript=clean.transcript,
            withheld=clean.receipt,
        )
        await start_handed(client_of(request), settings, rid, PLATFORM_CHANNEL, peer,
                           Context(**clean.context.model_dump()), f"Handed to {agent_id} by {envelope.source.platform}")
        answer = HandoffAccepted(remote_conversation_id=rid)
        registry().remember(agent_id, webhook_id, answer.model_dump_json())
        return JSONResponse(status_code=202, content=answer.model_dump())

    @router.post(Routes.AGENT_MESSAGES, status_code=202, response_model=Ack)
    async def receive_message(agent_id: AgentPath, remote_conversation_id: RemotePath, request: Request) -> Any:
        """The user's next message, from the platform that handed the conversation to our agent."""
        body, webhook_id, done = await signed(request, agent_id, registry().verifying_secrets(agent_id))
        if done is not None:
            return done
        message: PeerMessage = _parse(PeerMessage, body, "message")
        text, found = redact_text(message.text)
        command = UserMessage(
            message_id=message.message_id, text=text[:MAX_TEXT], redacted=sorted({k for k, _ in found})[:20], via_agent=agent_id
        )
        try:
            await update(client_of(request), remote_conversation_id, Updates.SUBMIT_USER_MESSAGE, command)
        except HTTPException as err:
            if err.status_code == 409 and "was not handed to agent" in str(err.detail):
                # Another agent's conversation looks exactly like one that does not exist.
                raise HTTPException(404, f"conversation '{remote_conversation_id}' does not exist") from None
            raise
        registry().remember(agent_id, webhook_id, Ack().model_dump_json())
        return JSONResponse(status_code=202, content=Ack().model_dump())

    @router.post(Routes.AGENT_EVENTS, status_code=202, response_model=Ack)
    async def receive_event(agent_id: AgentPath, request: Request) -> Any:
        """Callback from an external agent we handed a conversation to: `message`, `hand_back` or `close`."""
        external = registry().external(agent_id)
        body, webhook_id, done = await signed(request, agent_id, [external[1]] if external else [])
        if done is not None:
            return done
        event: PeerEvent = _parse(PeerEvent, body, "event")
        if event.type == "message" and not event.text.strip():
            raise HTTPException(422, "event: a message needs text")
        client = client_of(request)
        conversation = await _settled(lambda: _linked(agent_id, event.remote_conversation_id))
        if conversation is None:
            raise HTTPException(404, f"no conversation of ours is handed to {agent_id} as '{event.remote_conversation_id}'")
        if event.text.strip():
            text, found = redact_text(event.text)
            said = AgentMessage(
                message_id=_agent_message_id(agent_id, event.message_id), text=text[:MAX_TEXT], author=agent_id,
                role=Role.EXTERNAL_AGENT, redacted=sorted({k for k, _ in found})[:20],
            )
            await _settled(lambda: update(client, conversation, Updates.SUBMIT_AGENT_MESSAGE, said), retry_pending=True)
        if event.type == "hand_back":
            back = HandBack(reason=event.reason or f"{agent_id} handed the conversation back", by=agent_id)
            await _settled(lambda: update(client, conversation, Updates.SUBMIT_HAND_BACK, back), retry_pending=True)
        elif event.type == "close":
            close = CloseRequest(reason=event.reason or f"closed by {agent_id}", by=agent_id)
            await _settled(lambda: update(client, conversation, Updates.SUBMIT_CLOSE, close), retry_pending=True)
        registry().remember(agent_id, webhook_id, Ack().model_dump_json())
        return JSONResponse(status_code=202, content=Ack().model_dump())

    async def _linked(agent_id: str, rid: str) -> str | None:
        return await asyncio.to_thread(registry().linked, agent_id, rid)

    return router


async def _settled(step: Callable[[], Any], retry_pending: bool = False) -> Any:
    """Run `step` until our side has caught up with the acceptance the callback implies, at most SETTLE_SECONDS.

    Without `retry_pending`, a None result is retried (the link is not written yet); with it, a 409 because the
    conversation is still `handoff_pending` is retried (the 202 is not yet processed by the workflow)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_SECONDS
    delay = 0.05
    while True:
        try:
            result = await step()
        except HTTPException as err:
            if not (retry_pending and err.status_code == 409 and "'handoff_pending'" in str(err.detail)):
                raise
            if loop.time() > deadline:
                raise
        else:
            if result is not None or retry_pending or loop.time() > deadline:
                return result
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
