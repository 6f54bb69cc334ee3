"""A stand-in for an OpenAI-compatible provider in benchmarks: a minimal HTTP/1.1 server on loopback (keep-alive,
Content-Length bodies) that answers every POST with the same Chat Completion after a fixed delay, and counts
what it received. It plays the model, which is outside Baton; its cost is the same for every system that uses it."""

from __future__ import annotations

import asyncio
import json

from bench.common import LoopbackServer

COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_764_000_000, "model": "bench-model",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Thanks for your message. Your order is on its way."}}],
    "usage": {"prompt_tokens": 420, "completion_tokens": 12, "total_tokens": 432},
}).encode()


class FakeModel(LoopbackServer):
    """`async with FakeModel(delay=0.05) as model:` serves `model.base_url` (ends in /v1)."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.requests = 0
        self.request_bytes = 0

    def protocol(self) -> asyncio.Protocol:
        return _Protocol(self)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


class _Protocol(asyncio.Protocol):
    def __init__(self, model: FakeModel) -> None:
        self.model = model
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.model._transports.add(self.transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.model._transports.discard(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.buf[:end]).decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            total = end + 4 + length
            if len(self.buf) < total:
                return
            self.model.requests += 1
            self.model.request_bytes += length
            del self.buf[:total]
            if self.model.delay:
                asyncio.get_running_loop().call_later(self.model.delay, self._answer)
            else:
                self._answer()

    def _answer(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(COMPLETION)}\r\n\r\n"
                .encode())
        self.transport.write(head + COMPLETION)
