"""A third-party desk's status callbacks: `POST /v1/desks/{desk}/events` (accepted / failed / message / completed).
The protocol is specified in docs/desk-protocol.md.

Signed per Standard Webhooks with the desk's secret: a missing, bad or stale signature is a 401, checked before the
body is read as an event. A repeated `webhook-id` is answered as the first time, without doing anything again.
Each event becomes an update of the conversation workflow, owned while the desk has it by `desk:{desk}`:

| event | update |
|---|---|
| accepted | accept_handoff (the pending handoff's id; a stale one is a 409) |
| failed | reject_handoff (the conversation falls back to the next target) |
| message | submit_agent_message as a live agent (redacted like every inbound text) |
| completed | submit_hand_back (back to the AI) |
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from temporalio.client import Client

from activities import webhooks
from activities.third_party_desk import ThirdPartyDeskEndpoint
from activities.filtering import redact_text
from activities.registry import AgentRegistry
from api.temporal import update
from models.conversation import (
    MAX_TEXT,
    NAME_PATTERN,
    AcceptHandoff,
    AgentMessage,
    CommandResult,
    HandBack,
    RejectHandoff,
    Role,
    State,
)
from models.third_party_desk import ThirdPartyDeskEvent
from models.names import Routes, Updates

_DESK_NAME = re.compile(NAME_PATTERN)
# The owner name `desk:{desk}` must itself be a valid name (at most 128 characters).
MAX_DESK_NAME = 128 - len("desk:")
MAX_REDACTED_KINDS = 20


class ThirdPartyDeskEventAnswer(BaseModel):
    """The 200 answer to a desk event: the conversation's state and owner after it."""

    ok: bool = True
    state: State
    owner: str | None


def owner_of(desk: str) -> str:
    return f"desk:{desk}"


def desk_message_id(desk: str, message_id: str) -> str:
    """The desk's message ids live in their own namespace in our conversation (at most 200 characters)."""
    mid = f"desk-{desk}-{message_id}"
    return mid if len(mid) <= 200 else "desk-" + hashlib.sha256(mid.encode()).hexdigest()


def replay_key(desk: str) -> str:
    """The replay store's namespace for a desk: a '/' never occurs in an agent id, so no agent shares it."""
    return f"desk/{desk}"


def _parse_event(body: bytes) -> ThirdPartyDeskEvent:
    try:
        return ThirdPartyDeskEvent.model_validate_json(body)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()[:10])
        raise HTTPException(422, f"desk event: {problems}") from None


def third_party_desk_router(
    lookup: Callable[[str], ThirdPartyDeskEndpoint | None], registry: Callable[[], AgentRegistry]
) -> APIRouter:
    """`lookup` finds a configured desk by name; `registry` holds the replay store (seen webhook ids)."""
    router = APIRouter(tags=["third-party desks"])

    def client_of(request: Request) -> Client:
        return request.app.state.client

    def endpoint_of(desk: str) -> ThirdPartyDeskEndpoint:
        found = lookup(desk) if len(desk) <= MAX_DESK_NAME and _DESK_NAME.match(desk) else None
        if found is None:
            raise HTTPException(404, f"unknown desk '{desk[:MAX_DESK_NAME + 1]}'")
        return found

    async def apply(client: Client, desk: str, event: ThirdPartyDeskEvent) -> CommandResult:
        owner = owner_of(desk)
        conversation = event.conversation_id
        if event.type == "accepted":
            return await update(
                client, conversation, Updates.ACCEPT_HANDOFF, AcceptHandoff(handoff_id=event.handoff_id, owner=owner)
            )
        if event.type == "failed":
            reject = RejectHandoff(handoff_id=event.handoff_id, reason=event.reason or "the desk could not take it")
            return await update(client, conversation, Updates.REJECT_HANDOFF, reject)
        if event.type == "message":
            assert event.message_id is not None and event.text is not None  # ThirdPartyDeskEvent checks this
            # Whatever the desk's agent typed is redacted at our door, as every inbound text is.
            text, found = redact_text(event.text)
            said = AgentMessage(
                message_id=desk_message_id(desk, event.message_id),
                text=text[:MAX_TEXT],
                author=owner,
                role=Role.LIVE_AGENT,
                redacted=list(dict.fromkeys(kind for kind, _ in found))[:MAX_REDACTED_KINDS],
            )
            return await update(client, conversation, Updates.SUBMIT_AGENT_MESSAGE, said)
        back = HandBack(by=owner, reason=event.reason or "the desk completed the conversation")
        return await update(client, conversation, Updates.SUBMIT_HAND_BACK, back)

    @router.post(
        Routes.DESK_EVENTS,
        response_model=ThirdPartyDeskEventAnswer,
        responses={
            401: {"description": "missing, bad or stale signature"},
            404: {"description": "unknown desk or conversation"},
            409: {"description": "the conversation refused the event (e.g. a stale handoff id)"},
            422: {"description": "the body is not a desk event"},
        },
    )
    async def receive_desk_event(desk: str, request: Request) -> Any:
        """A desk's status callback, signed with its secret: `accepted`, `failed`, `message` or `completed`."""
        endpoint = endpoint_of(desk)
        body = await request.body()
        try:
            webhooks.verify([endpoint.secret] if endpoint.secret else [], request.headers, body)
        except webhooks.WebhookVerificationError as err:
            raise HTTPException(401, err.reason) from None
        webhook_id = request.headers[webhooks.ID_HEADER]
        done = registry().recall(replay_key(desk), webhook_id)
        if done is not None:
            stored = ThirdPartyDeskEventAnswer.model_validate_json(done)
            return JSONResponse(status_code=200, content=stored.model_dump(mode="json"))
        event = _parse_event(body)
        result = await apply(client_of(request), desk, event)
        answer = ThirdPartyDeskEventAnswer(state=result.state, owner=result.owner)
        registry().remember(replay_key(desk), webhook_id, answer.model_dump_json())
        return JSONResponse(status_code=200, content=answer.model_dump(mode="json"))

    return router
