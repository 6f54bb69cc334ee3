"""The faces: the agent console (`/console`), the demo chat page (`/chat`), their static files, and the chat page's
demo sessions (`/demo/...`), which let a browser tab talk in exactly one conversation without the chat-backend key.

A demo session is a stateless token, `<conversation id>.<HMAC-SHA256 of it>` under a key derived from
BATON_SECRET_KEY, so any API replica behind the same address accepts it. No demo route takes a conversation id:
the session names the only conversation it can write to or read."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from activities import sealing
from api.messages import Accepted, MessageIn, send_user_message, user_message
from api.stream import conversation_events, resume_point
from api.temporal import update
from models.conversation import MAX_TEXT, MessageId
from models.names import Updates
from runtime.settings import Settings

STATIC = Path(__file__).parent / "static"

# Only our own files: no inline script or style, no other origin, no framing. What users type is inserted as text
# (textContent), and this stops whatever might slip through from running or loading anything.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
ASSET_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
ASSET_NAME = re.compile(r"^[a-z0-9-]+\.(js|css|svg)$")

SESSION_LABEL = b"demo-session"
DEMO_PREFIX = "demo-"


class DemoSession(BaseModel):
    session: str = Field(description="send it as 'Authorization: Bearer <session>' to the /demo routes")
    conversation_id: str


class DemoMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message_id: MessageId
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    rating: bool = Field(
        default=False,
        description="the answer to the rating question a live agent's close asked: taken only while that question "
        "is open in the session's conversation (409 otherwise, and nothing is sent)",
    )


def session_key(secret_key: str) -> bytes:
    """A key of its own for demo sessions, derived from BATON_SECRET_KEY's sealing key (never that key itself)."""
    return hmac.new(sealing.first_key(secret_key).encode(), SESSION_LABEL, hashlib.sha256).digest()


def _mac(key: bytes, conversation_id: str) -> str:
    digest = hmac.new(key, conversation_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue_session(key: bytes, conversation_id: str) -> str:
    return f"{conversation_id}.{_mac(key, conversation_id)}"


def session_conversation(key: bytes, token: str) -> str | None:
    """The conversation a session token names, or None when it is not one we issued."""
    conversation_id, dot, mac = token.rpartition(".")
    if not dot or not conversation_id.startswith(DEMO_PREFIX):
        return None
    if not hmac.compare_digest(mac.encode(), _mac(key, conversation_id).encode()):
        return None
    return conversation_id


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


def pages_router(settings: Settings) -> APIRouter:
    router = APIRouter()
    demo = settings.demo_pages

    def demo_on() -> None:
        if not settings.demo_pages:
            raise HTTPException(404, "Not Found")

    def key() -> bytes:
        if not settings.secret_key:
            raise HTTPException(503, "BATON_SECRET_KEY is not set, so demo sessions cannot be signed")
        return session_key(settings.secret_key)

    def demo_conversation(authorization: Annotated[str | None, Header()] = None) -> str:
        """The conversation of the demo session this request carries, or 401."""
        demo_on()
        scheme, _, token = (authorization or "").partition(" ")
        conversation_id = session_conversation(key(), token.strip()) if scheme.lower() == "bearer" else None
        if conversation_id is None:
            raise HTTPException(
                401, "missing or wrong demo session: create one with POST /demo/sessions and send "
                "'Authorization: Bearer <session>'", headers={"WWW-Authenticate": "Bearer"},
            )
        return conversation_id

    # ---- pages ----------------------------------------------------------------------------------------------

    @router.get("/console", include_in_schema=False)
    def console() -> FileResponse:
        return _page("console.html")

    @router.get("/chat", include_in_schema=False, dependencies=[Depends(demo_on)])
    def chat() -> FileResponse:
        return _page("chat.html")

    @router.get("/static/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        path = STATIC / name
        if not ASSET_NAME.match(name) or not path.is_file():
            raise HTTPException(404, "Not Found")
        return FileResponse(path, media_type=ASSET_TYPES[path.suffix], headers=PAGE_HEADERS)

    # ---- the chat page's demo session -----------------------------------------------------------------------

    @router.post(
        "/demo/sessions", status_code=201, response_model=DemoSession, include_in_schema=demo, tags=["demo"],
        dependencies=[Depends(demo_on)],
    )
    def new_session() -> DemoSession:
        """A new conversation for one browser tab of the demo chat page, and the session that alone may use it.
        Nothing starts until its first message."""
        conversation_id = DEMO_PREFIX + secrets.token_hex(12)
        return DemoSession(session=issue_session(key(), conversation_id), conversation_id=conversation_id)

    @router.post(
        "/demo/messages", status_code=202, response_model=Accepted, include_in_schema=demo, tags=["demo"],
    )
    async def demo_message(
        body: DemoMessageIn, request: Request, conversation_id: str = Depends(demo_conversation)
    ) -> Accepted:
        """The user's message in the session's conversation: as `POST /v1/conversations/{id}/messages`, channel
        `web`. With `"rating": true`, the answer to a closed conversation's rating question, or a 409 when that
        question is not open (the page then starts a new conversation)."""
        if body.rating:
            answer = user_message(body.message_id, body.text)
            await update(request.app.state.client, conversation_id, Updates.SUBMIT_USER_MESSAGE, answer)
            return Accepted(conversation_id=conversation_id, message_id=body.message_id)
        message = MessageIn(message_id=body.message_id, text=body.text)
        return await send_user_message(request.app.state.client, settings, conversation_id, message)

    @router.get(
        "/demo/events", include_in_schema=demo, tags=["demo"],
        responses={200: {"content": {"text/event-stream": {}}, "description": "the session's conversation stream"}},
    )
    async def demo_events(
        request: Request,
        conversation_id: str = Depends(demo_conversation),
        after: Annotated[int | None, Query(ge=0, description="resume after this seq")] = None,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> Response:
        """The session's conversation as `GET /v1/conversations/{id}/events` streams it (404 until its first
        message); resumes from `Last-Event-ID` or `?after=`."""
        return await conversation_events(request, conversation_id, resume_point(last_event_id, after))

    return router
