"""A uvicorn server to run inside a process that owns its own signals (`baton dev`, tests) and says when it is up."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn


class EmbeddedServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()

    # The host process handles Ctrl-C for all its parts, so uvicorn must not grab the signals for itself.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
