"""A real loopback HTTP receiver for tests: records every request, checks its signature, answers as scripted."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from activities import webhooks
from api.serve import EmbeddedServer

Response = int | tuple[int, dict[str, str]] | tuple[int, dict[str, str], Any]


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    verified: bool
    status: int
    # Why verification failed, for assertion messages; None when verified.
    verify_error: str | None = None
    # time.monotonic() at arrival, to measure retry spacing.
    at: float = field(default_factory=time.monotonic)

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get(webhooks.ID_HEADER)

    def describe(self) -> str:
        verdict = "verified" if self.verified else f"NOT verified ({self.verify_error})"
        return (
            f"{self.method} {self.path} -> {self.status}, webhook-id={self.webhook_id}, {verdict}, "
            f"body={self.body[:120]!r}"
        )


class Receiver:
    """`async with Receiver() as r:` serves http://127.0.0.1:<free port>/hook until the block ends.

    Every request is answered by the next scripted response (`script(...)`), then 202. A request whose
    Standard Webhooks signature does not verify against `secret` is answered 401 without using up a
    scripted response, as a real receiver would; pass `verify_signatures=False` for unsigned endpoints.
    """

    def __init__(self, secret: str | None = None, *, verify_signatures: bool = True, path: str = "/hook") -> None:
        self.secret = secret or webhooks.generate_secret()
        self.verify_signatures = verify_signatures
        self.path = path
        self.requests: list[Received] = []
        self._script: deque[Response] = deque()
        self._changed: asyncio.Condition | None = None
        self._server: EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the receiver is not running; use `async with Receiver() as r`")
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + self.path

    def script(self, *responses: Response) -> None:
        """Queue answers for the next requests: a status, `(status, headers)` or `(status, headers, body)`."""
        self._script.extend(responses)

    def delivered(self) -> list[Any]:
        """JSON bodies answered 2xx, first per webhook-id: what a deduplicating backend would show the user."""
        seen: set[str] = set()
        out = []
        for r in self.requests:
            if not 200 <= r.status < 300:
                continue
            if r.webhook_id is not None:
                if r.webhook_id in seen:
                    continue
                seen.add(r.webhook_id)
            out.append(r.json)
        return out

    async def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10) -> None:
        assert self._changed is not None, "the receiver is not running"
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self.requests)), timeout)
            except TimeoutError:
                seen = "\n  ".join(r.describe() for r in self.requests) or "(none)"
                raise AssertionError(
                    f"receiver at {self.url}: condition not met within {timeout}s; requests so far:\n  {seen}"
                ) from None

    async def wait_count(self, n: int, timeout: float = 10) -> None:
        """Wait until `n` distinct messages were answered 2xx."""
        await self.wait_for(lambda _: len(self.delivered()) >= n, timeout)

    # ---- server ---------------------------------------------------------------------------------------

    async def __aenter__(self) -> Receiver:
        self._changed = asyncio.Condition()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            interface="asgi3",  # a bound method defeats uvicorn's ASGI2/3 sniffing
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=f"receiver:{self.port}")
        ready = asyncio.create_task(self._server.ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            await self._task  # surfaces the startup error
            raise RuntimeError("receiver stopped during startup")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None and self._task is not None
        self._server.should_exit = True
        await self._task

    async def _app(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            name = k.decode("latin-1").lower()
            headers[name] = f"{headers[name]}, {v.decode('latin-1')}" if name in headers else v.decode("latin-1")

        try:
            webhooks.verify(self.secret, headers, body)
            verified, error = True, None
        except webhooks.WebhookVerificationError as e:
            verified, error = False, e.reason

        if self.verify_signatures and not verified:
            status, extra, payload = 401, {}, {"error": error}
        else:
            status, extra, payload = self._next_response()

        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        self.requests.append(Received(scope["method"], scope["path"], headers, body, parsed, verified, status, error))

        out = b"" if payload is None else payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        response_headers = [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in extra.items()]
        if payload is not None and not any(k == b"content-type" for k, _ in response_headers):
            response_headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": out})

        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    def _next_response(self) -> tuple[int, dict[str, str], Any]:
        if not self._script:
            return 202, {}, None
        answer = self._script.popleft()
        if isinstance(answer, int):
            return answer, {}, None
        if len(answer) == 2:
            return answer[0], dict(answer[1]), None
        return answer[0], dict(answer[1]), answer[2]
