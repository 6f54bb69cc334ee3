"""The event streams (Server-Sent Events): a conversation's entries and state for chat backends and the chat page,
and the waiting lists and conversations of a live agent for the console. The contract is docs/event-stream.md.

How it works, with any number of API processes behind one address: after every change a conversation workflow rings
a doorbell (the `ring_bell` activity) that writes its latest seq, state, owner and queue to the stream store
(`activities/stream.py`). Each API process tails the store's log with one poller, whatever its number of
subscribers, and wakes the subscribers a change concerns; they read the new entries from the workflow (the
transcript query, from the seq they last sent) and the waiting lists and positions from the store. Nothing a
subscriber needs lives only in one process's memory, so a reconnect to another process resumes exactly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from activities.registry import AgentRegistry, LiveAgentInfo
from activities.queues import Queues
from activities.stream import Rung, StreamStore
from api.desk import ConversationPath
from api.temporal import query as sticky_safe_query
from models.conversation import Snapshot, State, TranscriptEntry, TranscriptPage, TranscriptQuery
from models.names import Queries

log = logging.getLogger("baton.stream")

POLL_SECONDS = 0.01  # how often each API process looks at the store's log (one query, whatever the subscribers)
LISTEN_SECONDS = 1.0  # PostgreSQL: the log is read when a writer notifies, and at least this often
HEARTBEAT_SECONDS = 15.0
FORGET_EVERY_SECONDS = 300.0
PAGE = 500  # transcript entries per query while catching up
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def sse(event: str, data: Any, id: int | None = None) -> str:
    """One Server-Sent Event. JSON never contains a raw newline, so `data` is always one line."""
    head = f"id: {id}\n" if id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


def entry_data(entry: TranscriptEntry, **extra: Any) -> dict[str, Any]:
    return {**extra, **entry.model_dump(mode="json")}


class Subscriber:
    """One open stream: woken by the hub with the log rows that may concern it."""

    def __init__(self, wants: Callable[[Rung], bool]) -> None:
        self.wants = wants
        self.rungs: list[Rung] = []
        self.woken = asyncio.Event()

    def offer(self, rungs: list[Rung]) -> None:
        mine = [r for r in rungs if self.wants(r)]
        if mine:
            self.rungs.extend(mine)
            self.woken.set()

    def take(self) -> list[Rung]:
        rungs, self.rungs = self.rungs, []
        self.woken.clear()
        return rungs


class Hub:
    """One per API process: tails the store's log and wakes the subscribers a change concerns."""

    def __init__(self, store: Callable[[], StreamStore], poll: float = POLL_SECONDS,
                 heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self._store = store
        self.poll = poll
        self.heartbeat = heartbeat
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task | None = None
        self.closing = asyncio.Event()
        self.last_id = 0
        self._tail_thread: ThreadPoolExecutor | None = None
        # queue -> (the log's id when read, its waiting list): read once per change for every desk stream here.
        self._lists: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._lists_lock = threading.Lock()

    @property
    def store(self) -> StreamStore:
        return self._store()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def subscribe(self, wants: Callable[[Rung], bool]) -> Subscriber:
        if self._task is None:
            self.last_id = await asyncio.to_thread(self.store.last_id)
            self._task = asyncio.create_task(self._tail())
        sub = Subscriber(wants)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def waiting(self, queue: str) -> list[dict[str, Any]]:
        """The queue's waiting list (on a thread: it reads the store). Every desk stream of this process that a change
        wakes asks for the same list: it is read once per position of the log's tail, not once per stream (four
        agents' consoles made four reads of every change under a burst). A list read at tail position K holds every
        change up to K at least, so a stream woken by K is sent no older list; a later change moves the tail and
        is read afresh."""
        key = self.last_id  # before the read
        with self._lists_lock:
            hit = self._lists.get(queue)
        if hit is not None and hit[0] == key:
            return hit[1]
        rows = self.store.waiting_json(queue)[0]
        with self._lists_lock:
            if queue not in self._lists or self._lists[queue][0] <= key:
                self._lists[queue] = (key, rows)
        return rows

    async def _tail(self) -> None:
        forgot = time.monotonic()
        while not self.closing.is_set():
            try:
                # SQLite: on the event loop (an indexed read of the log's tail takes microseconds, a thread hop far
                # more); PostgreSQL: a round trip to the server, on a thread of its own (not the loop's shared pool,
                # where the desk's calls may all be waiting for the store's write lock).
                store = self.store
                if store.remote:
                    if self._tail_thread is None:
                        self._tail_thread = ThreadPoolExecutor(1, thread_name_prefix="baton-stream-tail")
                    rungs = await asyncio.get_running_loop().run_in_executor(
                        self._tail_thread, store.since, self.last_id)
                else:
                    rungs = store.since(self.last_id)
            except Exception:  # noqa: BLE001 - a store hiccup must not end every stream; try again
                log.exception("reading the stream store failed")
                rungs = []
                await asyncio.sleep(1)
            if rungs:
                self.last_id = rungs[-1].id
                for sub in list(self._subscribers):
                    sub.offer(rungs)
                continue
            if time.monotonic() - forgot > FORGET_EVERY_SECONDS:
                forgot = time.monotonic()
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.store.forget_old)
            if self.store.remote and self._tail_thread is not None:
                # PostgreSQL: the writers notify; wait for that (a second at most, the poll's safety net) instead
                # of asking the server a hundred times a second.
                await asyncio.get_running_loop().run_in_executor(
                    self._tail_thread, self.store.wait_for_change, LISTEN_SECONDS)
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.closing.wait(), self.poll)

    async def close(self) -> None:
        """Ends every open stream (a stop must not wait on streams that never end by themselves)."""
        self.closing.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._tail_thread is not None:
            self._tail_thread.shutdown(wait=False)
            self._tail_thread = None

    async def wait(self, sub: Subscriber) -> bool:
        """Until the subscriber is woken (True) or a heartbeat is due (False); raises CancelledError on close."""
        if self.closing.is_set():
            raise asyncio.CancelledError
        woken = asyncio.ensure_future(sub.woken.wait())
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait({woken, closing}, timeout=self.heartbeat, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            closing.cancel()
        if self.closing.is_set():
            raise asyncio.CancelledError
        return sub.woken.is_set()


# ---- reading a conversation ----------------------------------------------------------------------------


async def read_entries(client: Client, conversation_id: str, after: int) -> list[TranscriptEntry]:
    """Every entry after `after` that the current run holds (a run carries its recent entries across
    continue-as-new; seq numbers go on across runs)."""
    entries: list[TranscriptEntry] = []
    while True:
        page = await sticky_safe_query(
            client, conversation_id, Queries.TRANSCRIPT, TranscriptQuery(after=after, limit=PAGE),
            result_type=TranscriptPage,
        )
        entries.extend(page.entries)
        if not page.entries or page.entries[-1].seq >= page.last_seq:
            return entries
        after = page.entries[-1].seq


def resume_point(last_event_id: str | None, after: int | None) -> int:
    """`Last-Event-ID` (what a reconnecting client sends) wins over `?after=`; both are seq numbers."""
    if last_event_id not in (None, ""):
        try:
            value = int(last_event_id)
        except ValueError:
            raise HTTPException(422, "Last-Event-ID: must be a transcript seq (an integer >= 0)") from None
        if value < 0:
            raise HTTPException(422, "Last-Event-ID: must be a transcript seq (an integer >= 0)")
        return value
    return after or 0


def restarts(r: Rung, state: str | None) -> bool:
    """A bell of a new conversation under a closed one's id: its seq counts from 1 again (below the closed one's
    last), or it comes after the closed state, which no conversation leaves."""
    return r.seq < r.prev_seq or (state == State.CLOSED.value and r.state != State.CLOSED.value)


class ConversationStream:
    """What `GET /v1/conversations/{id}/events` sends; also behind the chat page's demo session."""

    def __init__(self, hub: Hub, client: Client) -> None:
        self.hub = hub
        self.client = client

    async def opening(self, conversation_id: str) -> Snapshot:
        try:
            return await sticky_safe_query(self.client, conversation_id, Queries.SNAPSHOT, result_type=Snapshot)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise HTTPException(404, f"conversation '{conversation_id}' does not exist") from None
            raise HTTPException(503, f"Temporal: {err.message}") from None
        except WorkflowQueryFailedError as err:
            raise HTTPException(500, f"query failed: {err}") from None

    async def response(self, conversation_id: str, after: int) -> StreamingResponse:
        snap = await self.opening(conversation_id)  # 404 before the stream starts
        if after > snap.seq:
            # Past this conversation's last entry: the id is an earlier conversation's under the same id (a message
            # after a close starts a new one, whose seqs count from 1 again), so this one is sent from its start.
            after = 0
        # The conversation's own changes, and (for its position) those of the queue it waits in.
        queues: set[str] = {snap.queue} if snap.queue else set()
        sub = await self.hub.subscribe(lambda r: r.conversation_id == conversation_id or bool(r.queues() & queues))
        return StreamingResponse(
            self._events(conversation_id, after, snap, sub, queues), media_type="text/event-stream",
            headers=SSE_HEADERS,
        )

    def _state(self, conversation_id: str, state: State, owner: str | None, queue: str | None) -> dict[str, Any]:
        position = self.hub.store.position(conversation_id) if state is State.HANDOFF_PENDING else None
        return {"state": state.value, "owner": owner, "queue": queue, "position": position}

    async def _events(
        self, conversation_id: str, after: int, snap: Snapshot, sub: Subscriber, queues: set[str]
    ) -> AsyncIterator[str]:
        try:
            yield "retry: 1000\n\n"
            # Subscribed before reading, so a change made meanwhile wakes us: nothing falls between the two.
            for entry in await read_entries(self.client, conversation_id, after):
                if entry.seq > after:
                    yield sse("entry", entry_data(entry), id=entry.seq)
                    after = entry.seq
            sent = await asyncio.to_thread(self._state, conversation_id, snap.state, snap.owner, snap.queue)
            yield sse("state", sent)
            while True:
                if not await self.hub.wait(sub):
                    yield ": heartbeat\n\n"
                    continue
                own = [r for r in sub.take() if r.conversation_id == conversation_id]
                bells = [r for r in own if r.entry is None]
                if any(restarts(r, sent["state"]) for r in bells):
                    after = 0  # a new conversation under this id: its entries from the first (ids from 1 again)
                # Entries logged with the bells are sent as they are, while they continue the seq exactly;
                # anything else (a user's entry, a gap) is read from the workflow.
                for entry in sorted((r.entry for r in own if r.entry is not None), key=lambda e: e.seq):
                    if entry.seq == after + 1:
                        yield sse("entry", entry_data(entry), id=entry.seq)
                        after = entry.seq
                if any(r.seq > after for r in own):
                    for entry in await read_entries(self.client, conversation_id, after):
                        if entry.seq > after:
                            yield sse("entry", entry_data(entry), id=entry.seq)
                            after = entry.seq
                if bells:
                    last = bells[-1]
                    queues.clear()
                    if last.queue:
                        queues.add(last.queue)
                    current = (State(last.state), last.owner, last.queue)
                else:
                    current = (State(sent["state"]), sent["owner"], sent["queue"])
                state = await asyncio.to_thread(self._state, conversation_id, *current)
                if state != sent:
                    sent = state
                    yield sse("state", state)
        except asyncio.CancelledError:
            return
        finally:
            self.hub.unsubscribe(sub)


class DeskStream:
    """What `GET /v1/desk/events` sends a live agent: its queues' waiting lists, and the entries and state of the
    conversations it owns or that wait in its queues."""

    def __init__(self, hub: Hub, client: Client, agent: LiveAgentInfo) -> None:
        self.hub = hub
        self.client = client
        self.agent = agent
        self.queues = set(agent.queues) | {f"agent:{agent.agent_id}"}
        # Conversations the agent owns or that wait in its queues, as of their last bell: their logged entries
        # are sent as they are, without asking the workflow.
        self.following: set[str] = set()

    def concerns(self, r: Rung) -> bool:
        if r.note is not None:
            return r.owner == self.agent.agent_id
        if r.entry is not None:
            return r.conversation_id in self.following
        if (r.owner == self.agent.agent_id or r.queue in self.queues) and r.state != State.CLOSED.value:
            self.following.add(r.conversation_id)
        else:
            self.following.discard(r.conversation_id)
        return bool(r.queues() & self.queues) or self.agent.agent_id in r.owners()

    async def response(self) -> StreamingResponse:
        sub = await self.hub.subscribe(self.concerns)
        return StreamingResponse(self._events(sub), media_type="text/event-stream", headers=SSE_HEADERS)

    def _waiting(self, queue: str) -> dict[str, Any]:
        return {"queue": queue, "waiting": self.hub.waiting(queue)}

    def _desk(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The agent's presence (with their load) and open offers, as `event: presence` and `event: offer` send them."""
        book = Queues(self.hub.store)
        presence = book.presence_of(self.agent).model_dump(mode="json", exclude={"since"})
        offers = {"offers": [o.model_dump(mode="json") for o in book.offers(self.agent.agent_id)]}
        return presence, offers

    async def _events(self, sub: Subscriber) -> AsyncIterator[str]:
        sent_lists: dict[str, dict[str, Any]] = {}
        seen: dict[str, int] = {}  # conversation -> last seq sent
        states: dict[str, dict[str, Any]] = {}
        try:
            yield "retry: 1000\n\n"
            for queue in sorted(self.queues):
                sent_lists[queue] = await asyncio.to_thread(self._waiting, queue)
                yield sse("waiting", sent_lists[queue])
            presence, offers = await asyncio.to_thread(self._desk)
            yield sse("presence", presence)
            yield sse("offer", offers)
            while True:
                if not await self.hub.wait(sub):
                    yield ": heartbeat\n\n"
                    continue
                rungs = sub.take()
                if any(r.note is not None or self.agent.agent_id in r.owners() for r in rungs):
                    # Offers and presence (with the load, which the agent's own conversations change).
                    now_presence, now_offers = await asyncio.to_thread(self._desk)
                    if now_offers != offers:
                        offers = now_offers
                        yield sse("offer", offers)
                    if now_presence != presence:
                        presence = now_presence
                        yield sse("presence", presence)
                    rungs = [r for r in rungs if r.note is None]
                for queue in sorted({q for r in rungs for q in r.queues() & self.queues}):
                    listing = await asyncio.to_thread(self._waiting, queue)
                    if listing != sent_lists.get(queue):
                        sent_lists[queue] = listing
                        yield sse("waiting", listing)
                latest: dict[str, Rung] = {}
                logged: dict[str, list[TranscriptEntry]] = {}
                for r in rungs:
                    if r.entry is not None:
                        logged.setdefault(r.conversation_id, []).append(r.entry)
                        continue
                    seen.setdefault(r.conversation_id, r.prev_seq)
                    latest[r.conversation_id] = r
                # Every position this batch needs, in one trip to the store's thread (one hop per conversation
                # held the loop for seconds under a burst, and the lists waited behind it).
                pending = [cid for cid, r in latest.items() if r.state == State.HANDOFF_PENDING.value]
                positions = await asyncio.to_thread(lambda: {c: self.hub.store.position(c) for c in pending}) \
                    if pending else {}
                for cid, r in latest.items():
                    mine_now = r.owner == self.agent.agent_id or (r.queue in self.queues)
                    if mine_now and r.seq > seen[cid]:
                        # Entries logged with the bells are sent as they are while they continue the seq exactly
                        # (no round trip to the workflow, which under a burst is busy enough); a gap is read from it.
                        for entry in sorted(logged.get(cid, []), key=lambda e: e.seq):
                            if entry.seq == seen[cid] + 1:
                                yield sse("entry", entry_data(entry, conversation_id=cid))
                                seen[cid] = entry.seq
                    if mine_now and r.seq > seen[cid]:
                        try:
                            entries = await read_entries(self.client, cid, seen[cid])
                        except (RPCError, WorkflowQueryFailedError, HTTPException):
                            entries = []  # unanswered for now (a worker restarting): the next bell asks again
                        for entry in entries:
                            if entry.seq > seen[cid]:
                                yield sse("entry", entry_data(entry, conversation_id=cid))
                                seen[cid] = entry.seq
                    else:
                        seen[cid] = max(seen[cid], r.seq)
                    state = {"conversation_id": cid, "state": r.state, "owner": r.owner, "queue": r.queue,
                             "position": positions.get(cid)}
                    if state != states.get(cid):
                        states[cid] = state
                        yield sse("state", state)
                    if r.state == State.CLOSED.value:
                        seen.pop(cid, None)
                        states.pop(cid, None)
        except asyncio.CancelledError:
            return
        finally:
            self.hub.unsubscribe(sub)


# ---- routes ----------------------------------------------------------------------------------------------------


def stream_router(
    hub: Hub, registry: Callable[[], AgentRegistry], api_auth: Any, client: Callable[[Request], Client]
) -> APIRouter:
    router = APIRouter()

    @router.get(
        "/v1/conversations/{conversation_id}/events", dependencies=[api_auth], tags=["conversations"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "the event stream (docs/event-stream.md)"}},
    )
    async def conversation_events(
        conversation_id: ConversationPath, request: Request,
        after: Annotated[int | None, Query(ge=0, description="resume after this seq")] = None,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> StreamingResponse:
        """Every transcript entry after `after` (or `Last-Event-ID`) in seq order, then live: `event: entry` with
        `id: <seq>`, `event: state` when state, owner, queue or position change, a heartbeat comment every 15 s."""
        stream = ConversationStream(hub, client(request))
        return await stream.response(conversation_id, resume_point(last_event_id, after))

    @router.get(
        "/v1/desk/events", tags=["desk"], response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "the desk's stream (docs/event-stream.md)"}},
    )
    async def desk_events(request: Request, authorization: Annotated[str | None, Header()] = None) -> StreamingResponse:
        """The live agent's waiting lists (`event: waiting`, whole, on connect and on every change) and the entries
        (`event: entry`) and state (`event: state`) of conversations it owns or that wait in its queues."""
        scheme, _, token = (authorization or "").partition(" ")
        agent = registry().live_agent_by_token(token) if scheme.lower() == "bearer" and token else None
        if agent is None:
            raise HTTPException(401, "missing or unknown live agent token: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        return await DeskStream(hub, client(request), agent).response()

    return router



async def conversation_events(request: Request, conversation_id: str, after: int) -> StreamingResponse:
    """The conversation's stream for a caller already authorised for it (the chat page's demo session)."""
    return await ConversationStream(request.app.state.hub, request.app.state.client).response(conversation_id, after)
