"""Bounds every request body meets before any route sees it: size, valid Unicode, nesting depth.

A body past a bound is answered here (413 or 422, with what was wrong and where) and reaches no route, so it
changes nothing. The body's bytes are passed on untouched: the signed routes verify their signatures over them.
The bounds are documented in the README ("Input bounds")."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 256 * 1024
# The payload codec's endpoints (api/codec.py).
CODEC_PREFIX = "/codec/"
CODEC_MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_JSON_DEPTH = 32
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})


class Problem(Exception):
    def __init__(self, status: int, where: str, problem: str) -> None:
        super().__init__(problem)
        self.status, self.where, self.problem = status, where, problem


def check_json(body: bytes) -> None:
    """Raise a Problem when the body is not UTF-8, nests deeper than MAX_JSON_DEPTH, or holds a string that is not
    valid Unicode (a lone surrogate such as "\\udfff", which JSON's escapes allow and UTF-8 cannot carry).
    Bodies that are not JSON at all are left to the route's own validation."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Problem(422, "body", f"not valid UTF-8 (byte {err.start})") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise Problem(422, "body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:
        return  # malformed JSON: FastAPI answers 422 with the position
    _walk(value, "body", 0)


def _walk(value: Any, where: str, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise Problem(422, where, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        _unicode(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _unicode(key, f"{where} (a key)")
            _walk(item, f"{where}.{key}" if key.isprintable() and len(key) <= 64 else f"{where}.<key>", depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, f"{where}.{i}", depth + 1)


def _unicode(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise Problem(
            422, where, f"not valid Unicode: a lone surrogate (U+{ord(text[err.start]):04X}) at character {err.start}"
        ) from None


class RequestLimits:
    """Pure ASGI middleware: bodies over `max_body` get 413 (from Content-Length before reading, or while reading a
    chunked body); JSON bodies with invalid Unicode or too deep get 422. Nothing else is touched."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _BODYLESS:
            await self.app(scope, receive, send)
            return
        if scope.get("path", "").startswith(CODEC_PREFIX):
            # The payload codec's endpoints take a run's largest payloads (its continue-as-new input carries up to
            # 256 KiB of transcript, base64-encoded here): a bound of their own (the sign-in form checks its own,
            # 4 KiB, as it reads).
            await RequestLimits(self.app, CODEC_MAX_BODY_BYTES)._bounded(scope, receive, send)
            return
        await self._bounded(scope, receive, send)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            declared = headers.get("content-length")
            if declared is not None and declared.strip().isdigit() and int(declared) > self.max_body:
                raise Problem(413, "body", f"{int(declared)} bytes, over the {self.max_body}-byte bound of a request body")
            chunks: list[bytes] = []
            size = 0
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    raise Problem(413, "body", f"over the {self.max_body}-byte bound of a request body")
                chunks.append(chunk)
                more = message.get("more_body", False)
            body = b"".join(chunks)
            content_type = headers.get("content-type", "")
            if body and (not content_type or "json" in content_type):
                check_json(body)
        except Problem as p:
            await _answer(send, p)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _answer(send: Send, p: Problem) -> None:
    payload = json.dumps(
        {"detail": f"{p.where}: {p.problem}", "errors": [{"where": p.where, "problem": p.problem}]}
    ).encode()
    await send({
        "type": "http.response.start",
        "status": p.status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": payload})
