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

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Open event streams never end by themselves: end them first, or the graceful stop waits its whole timeout.
        hub = getattr(getattr(getattr(self.config, "loaded_app", None), "state", None), "hub", None)
        app = self.config.app
        while hub is None and app is not None:
            hub = getattr(getattr(app, "state", None), "hub", None)
            app = getattr(app, "app", None)
        if hub is not None:
            await hub.close()
        await super().shutdown(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()

    # The host process handles Ctrl-C for all its parts, so uvicorn must not grab the signals for itself.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
