"""The payload codec's remote endpoints (runtime.codec): `POST /codec/decode` and `/codec/encode`, as the Temporal
CLI (`temporal workflow show --codec-endpoint <api>/codec --codec-auth "Bearer $BATON_ADMIN_KEY"`) and the Temporal
UI call them. Body and answer are Temporal's `Payloads` in proto JSON: `{"payloads": [{"metadata": {...},
"data": "<base64>"}]}`. The admin key is required: a decoded payload is a user's words. CORS answers only the origins
in `BATON_CODEC_CORS_ORIGINS` (comma separated, e.g. the Temporal UI's `http://localhost:8233`); none by default.

The Temporal UI cannot send a key of ours: it sends the user's own OIDC token, or cookies ("Include cross-origin
credentials" in its codec settings). So an operator signs in once at `GET /codec/sign-in` with the admin key (typed
into a form, never in a URL) and gets a session cookie, `HttpOnly`, for `/codec` only, valid 8 hours: an expiry and
its HMAC under a key derived from the admin key (stateless, so every API replica accepts it; changing the admin key
ends every session). The cookie counts only on requests from a configured origin (the UI's), and decode and encode
change nothing, so a page elsewhere can neither use it nor read an answer."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from html import escape
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from temporalio.api.common.v1 import Payloads
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Client

from api.auth import bearer
from api.limits import CODEC_PREFIX
from api.pages import PAGE_HEADERS
from models.names import Routes

CORS_HEADERS = "authorization, content-type, x-namespace"
SESSION_COOKIE = "baton_codec"
SESSION_SECONDS = 8 * 3600
# The sign-in page posts its form to itself; otherwise the pages' policy (no script at all here).
SIGN_IN_HEADERS = {**PAGE_HEADERS, "Content-Security-Policy": PAGE_HEADERS["Content-Security-Policy"].replace(
    "form-action 'none'", "form-action 'self'")}
SIGN_IN_BODY_MAX = 4096


def _session_mac(admin_key: str, until: int) -> str:
    key = hmac.new(admin_key.encode(), b"codec-session", hashlib.sha256).digest()
    return hmac.new(key, str(until).encode(), hashlib.sha256).hexdigest()


def issue_session(admin_key: str, now: float | None = None) -> str:
    until = int(now if now is not None else time.time()) + SESSION_SECONDS
    return f"{until}.{_session_mac(admin_key, until)}"


def session_valid(admin_key: str | None, token: str, now: float | None = None) -> bool:
    until, dot, mac = token.partition(".")
    if not admin_key or not dot or not (until.isascii() and until.isdigit()) or len(until) > 12:
        return False
    if int(until) <= (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(mac.encode(), _session_mac(admin_key, int(until)).encode())


def codec_auth(admin_key: str | None, origins: list[str]) -> Callable[..., None]:
    """The admin key as a bearer header (the CLI), or the UI's session cookie from a configured origin."""
    check_bearer = bearer(admin_key, "BATON_ADMIN_KEY")

    def check(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
        token = request.cookies.get(SESSION_COOKIE)
        if authorization is None and token and request.headers.get("origin") in origins and \
                session_valid(admin_key, token):
            return
        check_bearer(authorization)

    return check


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="stylesheet" href="/static/baton.css"></head><body><main class="sign-in">'
        f"<h1>{escape(title)}</h1>{body}</main></body></html>", status_code=status, headers=SIGN_IN_HEADERS)


def _sign_in_form(message: str = "") -> str:
    said = f'<p role="alert">{escape(message)}</p>' if message else ""
    return (f"{said}<p>Sign in once with the admin key (BATON_ADMIN_KEY) so the Temporal UI can show this install's "
            "encrypted history: it then calls /codec/decode with a session cookie (turn on \u201cInclude cross-origin "
            "credentials\u201d in the UI's codec server settings).</p>"
            f'<form method="post" action="{Routes.CODEC_SIGN_IN}">'
            '<label for="admin-key">Admin key</label> '
            '<input id="admin-key" name="admin_key" type="password" autocomplete="current-password" required> '
            '<button type="submit">Sign in</button></form>')


# Proto JSON's bytes: base64, standard or URL-safe alphabet, padding optional.
Base64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/_-]*={0,2}$")]


class PayloadJson(BaseModel):
    """One Temporal payload in proto JSON: metadata values and data are base64."""

    model_config = ConfigDict(extra="forbid")

    metadata: dict[Annotated[str, StringConstraints(min_length=1, max_length=256)], Base64] = Field(default_factory=dict)
    data: Base64 = ""


class PayloadsJson(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payloads: list[PayloadJson] = Field(default_factory=list, max_length=1000)


class CodecCors:
    """CORS for the codec's routes, on every answer they give, errors included (a 401 for a missing admin key, a 413,
    a 422): without it the browser hides the status and the Temporal UI can only say "CORS error". Only the origins
    configured; other paths are left as they are (CORS stays closed elsewhere)."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.origins = {o.encode() for o in origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.origins or not scope["path"].startswith(CODEC_PREFIX):
            await self.app(scope, receive, send)
            return
        origin = dict(scope["headers"]).get(b"origin")
        if origin not in self.origins:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if not k.lower().startswith(b"access-control-")]
                headers += [(b"access-control-allow-origin", origin), (b"access-control-allow-credentials", b"true"),
                            (b"vary", b"Origin")]
                if scope["method"] == "OPTIONS":
                    headers += [(b"access-control-allow-methods", b"POST, OPTIONS"),
                                (b"access-control-allow-headers", CORS_HEADERS.encode()),
                                (b"access-control-max-age", b"600")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)


def codec_router(admin_key: str | None, client: Callable[[], Client], origins: list[str]) -> APIRouter:
    """The codec's routes and the UI's sign-in; CORS for them is CodecCors's (the app installs it)."""
    router = APIRouter(tags=["operations"])
    admin = Depends(codec_auth(admin_key, origins))

    @router.get(Routes.CODEC_SIGN_IN, include_in_schema=False)
    async def sign_in_page() -> HTMLResponse:
        return _page("Baton: sign in for the Temporal UI", _sign_in_form())

    @router.post(Routes.CODEC_SIGN_IN, include_in_schema=False)
    async def sign_in(request: Request) -> HTMLResponse:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > SIGN_IN_BODY_MAX:
                raise HTTPException(413, f"the sign-in form takes at most {SIGN_IN_BODY_MAX} bytes")
        given = parse_qs(body.decode("utf-8", "replace")).get("admin_key", [""])[0]
        if not admin_key or not hmac.compare_digest(given.encode(), admin_key.encode()):
            return _page("Baton: sign in for the Temporal UI", _sign_in_form("That is not the admin key."), 401)
        page = _page("Baton: signed in for the Temporal UI", (
            f"<p>Signed in for {SESSION_SECONDS // 3600} hours: the Temporal UI (from "
            f"{escape(', '.join(origins) or 'no origin: set BATON_CODEC_CORS_ORIGINS')}) can decode this install's "
            "history now.</p>"
            f'<form method="post" action="{Routes.CODEC_SIGN_OUT}"><button type="submit">Sign out</button></form>'))
        # Secure over https; SameSite=None then so a UI on another site sends it too (SameSite=Lax: a UI on the same
        # site, e.g. localhost:8233 and localhost:8000, or ui.example.com and baton.example.com).
        https = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        page.set_cookie(SESSION_COOKIE, issue_session(admin_key), max_age=SESSION_SECONDS, path="/codec",
                        httponly=True, secure=https, samesite="none" if https else "lax")
        return page

    @router.post(Routes.CODEC_SIGN_OUT, include_in_schema=False)
    async def sign_out() -> HTMLResponse:
        page = _page("Baton: signed out", f'<p>Signed out. <a href="{Routes.CODEC_SIGN_IN}">Sign in again</a></p>')
        page.delete_cookie(SESSION_COOKIE, path="/codec")
        return page

    def codec():
        found = client().data_converter.payload_codec
        if found is None:
            raise HTTPException(404, "payload encryption is off here (BATON_PAYLOAD_KEYS is not set)")
        return found

    def parse(body: PayloadsJson) -> Payloads:
        try:
            return json_format.ParseDict(body.model_dump(), Payloads())
        except json_format.ParseError as err:
            raise HTTPException(422, f"payloads: not Temporal's Payloads JSON ({str(err)[:200]})") from None

    def answer(payloads: list) -> dict:
        return json_format.MessageToDict(Payloads(payloads=payloads))

    @router.options(Routes.CODEC_DECODE, include_in_schema=False)
    @router.options(Routes.CODEC_ENCODE, include_in_schema=False)
    async def preflight() -> Response:
        """A browser's preflight: answered for the configured origins by CodecCors, with nothing for others."""
        return Response(status_code=204)

    @router.post(Routes.CODEC_DECODE, response_model=PayloadsJson, dependencies=[admin])
    async def decode(body: PayloadsJson) -> dict:
        """Decrypt payloads (those that are not encrypted come back as they are)."""
        try:
            return answer(await codec().decode(parse(body).payloads))
        except ValueError as err:
            raise HTTPException(422, str(err)) from None

    @router.post(Routes.CODEC_ENCODE, response_model=PayloadsJson, dependencies=[admin])
    async def encode(body: PayloadsJson) -> dict:
        """Encrypt payloads with the current key (what the CLI does before it sends a signal or starts a run)."""
        return answer(await codec().encode(parse(body).payloads))

    return router
