"""A small Server-Sent Events reader over httpx (tests and benchmarks): events as they arrive, with their id."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    event: str
    data: Any
    id: str | None = None
    # When the reader finished parsing the event (time.perf_counter): benchmarks time arrivals with it.
    at: float = field(default_factory=time.perf_counter, compare=False)


@dataclass
class Stream:
    """An open stream: `next()` returns the next event (comments are counted in `comments`)."""

    response: httpx.Response
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    comments: int = 0
    last_id: str | None = None
    _task: asyncio.Task | None = None

    async def _read(self) -> None:
        event, data, id_ = "message", [], None
        async for line in self.response.aiter_lines():
            if line == "":
                if data:
                    raw = "\n".join(data)
                    try:
                        value = json.loads(raw)
                    except ValueError:
                        value = raw
                    if id_ is not None:
                        self.last_id = id_
                    await self.events.put(Event(event, value, id_))
                event, data, id_ = "message", [], None
            elif line.startswith(":"):
                self.comments += 1
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    id_ = value
        await self.events.put(None)  # the server ended the stream

    async def next(self, timeout: float = 15) -> Event | None:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def until(self, predicate, timeout: float = 15) -> list[Event]:
        """Events up to and including the first that satisfies `predicate`."""
        seen: list[Event] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"no matching event within {timeout} s; saw {[(e.event, e.data) for e in seen]}")
            try:
                ev = await self.next(left)
            except TimeoutError:
                raise AssertionError(
                    f"no matching event within {timeout} s; saw {[(e.event, e.data) for e in seen]}"
                ) from None
            if ev is None:
                raise AssertionError(f"the stream ended; saw {[(e.event, e.data) for e in seen]}")
            seen.append(ev)
            if predicate(ev):
                return seen


@contextlib.asynccontextmanager
async def open_stream(http: httpx.AsyncClient, url: str, **kwargs: Any) -> AsyncIterator[Stream]:
    headers = {"Accept": "text/event-stream", **kwargs.pop("headers", {})}
    async with http.stream("GET", url, headers=headers, timeout=httpx.Timeout(30, read=None), **kwargs) as response:
        if response.status_code != 200:
            await response.aread()
            raise AssertionError(f"{url}: {response.status_code} {response.text}")
        stream = Stream(response)
        stream._task = asyncio.create_task(stream._read())
        try:
            yield stream
        finally:
            stream._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await stream._task
