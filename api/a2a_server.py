"""Baton's local agents as A2A agents (the receiving direction of issue 12): an A2A client hands a conversation to
one of our local agents, and it runs here exactly like one handed over by a Baton peer (api/protocol.py).

Each local agent `{id}` has an agent card at `GET /a2a/{id}/.well-known/agent-card.json` (public: its name, skill
and how to authenticate) and a JSON-RPC interface at `POST /a2a/{id}` (A2A 1.0, the official `a2a-sdk`'s
dispatcher), which takes the agent's A2A token (`a2a_...`, derived from its signing secret: activities/webhooks.py)
as a bearer token. The workflow is the task store: a task is a conversation (`taskId` = our conversation id,
`contextId` = the client's), its status and history are read from the workflow on every call, so any number of API
processes answer for it and a restart loses nothing.

- `SendMessage` without a `taskId` starts the conversation. Its text is the user's request: the handoff's reason
  and, unless the client sent a context, `slots.request`. A data part shaped like Baton's own A2A handoff
  (`context`, `transcript`: activities/platform.py) carries the context and what was said before; it is filtered
  at our door like an envelope. The local agent greets the user; its answer is the call's answer.
- `SendMessage` with the `taskId` is the user's next message. The call waits (at most WAIT_SECONDS, unless
  `returnImmediately`) until the turn it started is answered, and answers with the task: `input-required` once our
  side waits for the user, `completed` when our agent hands the conversation back or closes it, `working` while the
  AI is still on its turn or a person here has not answered yet (the client asks again with `GetTask`). The latest
  reply is the status message; `history` holds every message with its own id.
- `SendStreamingMessage` is the same message answered as a stream (Server-Sent Events): the task at once, then a
  status update for each reply and each change of state, until the task waits for the user or is over; it stays
  open while the conversation waits for a person here. `SubscribeToTask` is that stream for a task, from now on.
- `GetTask` reads the task; `CancelTask` closes the conversation (`canceled`). Push notifications and listing tasks
  are not offered (the card says so) and are refused as unsupported."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from a2a.helpers import get_data_parts
from a2a.server.request_handlers import RequestHandler
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes.common import DefaultServerCallContextBuilder
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    Message,
    Part,
    SecurityRequirement,
    SecurityScheme,
    StringList,
    Task,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.types import Role as A2ARole
from a2a.utils.errors import (
    ExtendedAgentCardNotConfiguredError,
    InternalError,
    InvalidParamsError,
    PushNotificationNotSupportedError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field, ValidationError
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from activities import webhooks
from activities.filtering import apply_filter, redact_text
from activities.registry import AgentRegistry
from api.agents import AgentPath
from api.stream import Hub, Subscriber, read_entries
from api.temporal import query, start_handed, update
from models.conversation import (
    MAX_TEXT,
    CloseRequest,
    Context,
    PeerLink,
    Role,
    Snapshot,
    State,
    TranscriptEntry,
    UserMessage,
)
from models.filtering import FilterContext, FilterRequest, SharedContext
from models.names import Queries, Updates
from models.protocol import MAX_CARRIED, CarriedEntry, Incoming, Source
from runtime.settings import Settings

log = logging.getLogger("baton.a2a")

A2A_PATH = "/a2a/{agent_id}"
CARD_ROUTE = A2A_PATH + "/.well-known/agent-card.json"
A2A_CHANNEL = "a2a"
# A blocking SendMessage answers within this: Baton's own A2A client (activities/a2a.py) gives up after 12 s.
WAIT_SECONDS = 8.0
RECHECK_SECONDS = 0.5  # a turn can end without a bell (no entry written): look again this often meanwhile
CANCELED = "canceled by the A2A client"
HISTORY = 20  # messages in a task's `history` when the client does not say (`historyLength`)
MAX_HISTORY = 200

_ID = re.compile(r"^[\x21-\x7e]{1,196}$")  # a messageId: printable, and room for USER_IDS in our 200
# The client's messageIds live in their own namespace in our transcript (ours are `ai-...`, `system-...`).
USER_IDS = "a2a:"
_CONTEXT_ID = re.compile(r"^[\x21-\x7e]{1,256}$")  # a contextId, as a peer's conversation id (models.protocol)

WORKING = "TASK_STATE_WORKING"
INPUT_REQUIRED = "TASK_STATE_INPUT_REQUIRED"
COMPLETED = "TASK_STATE_COMPLETED"
CANCELED_STATE = "TASK_STATE_CANCELED"
SETTLED = {INPUT_REQUIRED, COMPLETED, CANCELED_STATE}


class HandedOver(Incoming):
    """The data part of a first message, when it is shaped like Baton's own A2A handoff: what the sender knew."""

    baton: Source | None = None
    context: SharedContext = Field(default_factory=SharedContext)
    transcript: list[CarriedEntry] = Field(default_factory=list, max_length=MAX_CARRIED)


def task_id_for(agent_id: str, context_id: str, message_id: str) -> str:
    """Deterministic, so the same first message sent again (a client's retry) finds the same conversation."""
    key = "\x00".join(("a2a", agent_id, context_id, message_id))
    return "a-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _plain(value: Any) -> Any:
    """A data part as JSON had it: protobuf's Value makes every number a float, so a client's 42 would be 42.0 here;
    whole ones are ints again. (A card number sent as a number is redacted either way: the filter checks whole
    floats too.)"""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def task_state(snap: Snapshot, since_user: list[TranscriptEntry]) -> str:
    """The A2A state of a conversation, from its snapshot and the entries after the client's latest message."""
    if snap.state is State.CLOSED:
        return CANCELED_STATE if snap.closed_reason == CANCELED else COMPLETED
    if snap.state is State.AI:
        return WORKING if snap.busy else INPUT_REQUIRED  # busy: the AI has a turn to take, or is taking it
    if snap.state is State.HANDOFF_PENDING:
        return WORKING  # waiting for a person here: whatever was said so far, the user is not the one to answer
    # A person here (or an agent we passed it on to) owns it: answered once one of them has replied.
    if any(e.role in (Role.LIVE_AGENT, Role.EXTERNAL_AGENT) for e in since_user):
        return INPUT_REQUIRED
    return WORKING


def _ended(snap: Snapshot) -> str:
    """How a closed conversation's task ended, in words: `completed` or `canceled`."""
    return task_state(snap, []).removeprefix("TASK_STATE_").lower()


def agent_card(settings: Settings, agent_id: str, name: str) -> dict[str, Any]:
    url = settings.public_url.rstrip("/") + A2A_PATH.format(agent_id=agent_id)
    card = AgentCard(
        name=name,
        description=(f"{name}, an agent of the Baton install at {settings.public_url}. Hand it a conversation "
                     "with SendMessage: it answers the user, and may bring in a person."),
        version="1.0",
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=["text/plain", "application/json"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(
            id="conversation", name="Take over a conversation",
            description=("Takes over a conversation with a user: the text is the user's request; a data part may "
                         "carry `context` (profile, slots) and `transcript`. Answers as the task's status message; "
                         "input-required waits for the user's next message in the same task."),
            tags=["handoff", "customer-service", "conversation"],
        )],
        security_schemes={"bearer": SecurityScheme(
            http_auth_security_scheme=HTTPAuthSecurityScheme(scheme="bearer", bearer_format="a2a_ token"))},
        security_requirements=[SecurityRequirement(schemes={"bearer": StringList()})],
    )
    return agent_card_to_dict(card)


@dataclass
class _Taken:
    """A message accepted: its task, the seq of the client's latest message, and how to answer."""

    task_id: str
    after: int
    limit: int
    wait: bool
    sub: Subscriber | None


def _message(mid: str, role: Role, text: str, task_id: str, context_id: str) -> Message:
    m = Message(message_id=mid, context_id=context_id, task_id=task_id,
                role=A2ARole.ROLE_USER if role is Role.USER else A2ARole.ROLE_AGENT, parts=[Part(text=text)])
    m.metadata.update({"role": role.value})
    return m


def _latest_user(entries: list[TranscriptEntry]) -> int:
    """The seq of the client's latest message among `entries` (else just before the first of them)."""
    users = [e.seq for e in entries if e.role is Role.USER]
    return users[-1] if users else (entries[0].seq - 1 if entries else 0)


class BatonA2AHandler(RequestHandler):
    """The SDK's request handler, with the workflow as its task store."""

    def __init__(self, registry: Callable[[], AgentRegistry], settings: Settings, client: Callable[[], Client],
                 hub: Hub, wait_seconds: float = WAIT_SECONDS) -> None:
        self.registry = registry
        self.settings = settings
        self.client = client
        self.hub = hub
        self.wait_seconds = wait_seconds

    # ---- SendMessage ---------------------------------------------------------------------------------------

    async def on_message_send(self, params: Any, context: Any) -> Any:
        agent_id: str = context.state["agent_id"]
        taken = await self._accept(agent_id, params)
        try:
            return await self._answer(agent_id, taken.task_id, taken.after, taken.limit,
                                      taken.sub if taken.wait else None)
        finally:
            if taken.sub is not None:
                self.hub.unsubscribe(taken.sub)

    async def on_message_send_stream(self, params: Any, context: Any) -> AsyncIterator[Any]:
        """The same message, answered as a stream: the task at once, then a status update for each reply and each
        change of state, until the task waits for the user or is over."""
        agent_id: str = context.state["agent_id"]
        taken = await self._accept(agent_id, params)
        sub = taken.sub or await self.hub.subscribe(lambda r: r.conversation_id == taken.task_id)
        try:
            async for event in self._stream(agent_id, taken.task_id, taken.after, taken.limit, sub):
                yield event
        finally:
            self.hub.unsubscribe(sub)

    async def on_subscribe_to_task(self, params: Any, context: Any) -> AsyncIterator[Any]:
        """A task's stream from now on (the task first), until it waits for the user or is over."""
        agent_id: str = context.state["agent_id"]
        await self._snapshot(agent_id, params.id)
        sub = await self.hub.subscribe(lambda r: r.conversation_id == params.id)
        try:
            _, entries = await self._read(agent_id, params.id, 0)
            after = _latest_user(entries)
            async for event in self._stream(agent_id, params.id, after, HISTORY, sub):
                yield event
        finally:
            self.hub.unsubscribe(sub)

    async def _accept(self, agent_id: str, params: Any) -> _Taken:
        """Check the message, then start the conversation or pass the user's message on; subscribed to the task's
        changes before either, so no change is missed."""
        message = params.message
        if message.role == A2ARole.ROLE_AGENT:
            raise InvalidParamsError(message="message.role must be ROLE_USER (the user's side of the conversation)")
        text = "\n".join(p.text for p in message.parts if p.WhichOneof("content") == "text").strip()
        if not text:
            raise InvalidParamsError(message="message: needs a text part with the user's words")
        if len(text) > MAX_TEXT:
            raise InvalidParamsError(message=f"message: the text is longer than {MAX_TEXT} characters")
        if not _ID.match(message.message_id):
            raise InvalidParamsError(message="message.messageId: 1 to 196 printable ASCII characters, no spaces")
        if message.context_id and not _CONTEXT_ID.match(message.context_id):
            raise InvalidParamsError(message="message.contextId: 1 to 256 printable ASCII characters, no spaces")
        wait = not (params.configuration.return_immediately if params.HasField("configuration") else False)
        limit = self._history_length(params.configuration if params.HasField("configuration") else None)
        if message.task_id:
            task_id = message.task_id
            snap = await self._snapshot(agent_id, task_id)
            if message.context_id and message.context_id != snap.peer["source_conversation_id"]:
                raise InvalidParamsError(message="message.contextId is not the task's contextId")
            if message.message_id == snap.peer["handoff_id"]:
                # The first message, sent again with the task it opened: a retry, answered as such.
                return _Taken(task_id, 0, limit, False, None)
            mid = USER_IDS + message.message_id
            if snap.state is State.CLOSED:
                if (seq := await self._seq_of(task_id, mid)) is not None:
                    return _Taken(task_id, seq, limit, False, None)  # a retry of its last message
                raise UnsupportedOperationError(
                    message=f"task {task_id} is {_ended(snap)}; send a message without a taskId to start a new one")
            said, found = redact_text(text)
            command = UserMessage(message_id=mid, text=said[:MAX_TEXT], redacted=sorted({k for k, _ in found})[:20],
                                  via_agent=agent_id)
            sub = await self.hub.subscribe(lambda r: r.conversation_id == task_id)
            try:
                result = await self._command(task_id, Updates.SUBMIT_USER_MESSAGE, command)
                after = result.seq or await self._seq_of(task_id, mid) or snap.seq
            except BaseException:
                self.hub.unsubscribe(sub)
                raise
            return _Taken(task_id, after, limit, wait, sub)
        try:
            data = [_plain(d) for d in get_data_parts(list(message.parts)) if isinstance(d, dict)
                    and ("context" in d or "transcript" in d)]
        except ValueError:
            raise InvalidParamsError(message="message: a data part is not JSON data (NaN or Infinity?)") from None
        try:
            handed = HandedOver.model_validate(data[0]) if data else HandedOver()
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()[:5])
            raise InvalidParamsError(message=f"message: the data part: {problems}") from None
        task_id = task_id_for(agent_id, message.context_id, message.message_id)
        sub = await self.hub.subscribe(lambda r: r.conversation_id == task_id)
        try:
            await self._start(agent_id, task_id, message.context_id or task_id, message.message_id, text, handed)
        except BaseException:
            self.hub.unsubscribe(sub)
            raise
        return _Taken(task_id, 0, limit, wait, sub)

    async def _start(self, agent_id: str, task_id: str, context_id: str, message_id: str, text: str,
                     handed: HandedOver) -> None:
        info = self.registry().local(agent_id)
        carried = [TranscriptEntry(**e.model_dump()) for e in handed.transcript]
        slots = dict(handed.context.slots)
        reason, _ = redact_text(text)
        reason = reason[:MAX_TEXT]  # redacted, then cut: a marker may be longer than what it replaced
        if not handed.context.profile and not handed.context.slots:
            slots["request"] = reason[:500]  # a client that sends only text: its words are the user's request
        shared = FilterContext(**{**handed.context.model_dump(), "slots": slots})
        # Filtered at our door like a peer's envelope: nothing sensitive enters our history.
        clean = apply_filter(FilterRequest(context=shared, transcript=carried))
        peer = PeerLink(
            agent_id=agent_id, agent_name=info.name if info else None,
            platform=handed.baton.platform if handed.baton else "a2a", source_conversation_id=context_id,
            handoff_id=message_id, protocol="a2a", reason=reason,
            transcript=clean.transcript, withheld=clean.receipt,
        )
        try:
            await start_handed(self.client(), self.settings, task_id, A2A_CHANNEL, peer,
                               Context(**clean.context.model_dump()), f"Handed to {agent_id} by an A2A client")
        except RPCError as err:
            raise self._unavailable(err) from None

    # ---- reading a task ------------------------------------------------------------------------------------

    async def _answer(self, agent_id: str, task_id: str, after: int, limit: int, sub: Any) -> Any:
        """The task, once the turn after seq `after` is answered (or at once when `sub` is None)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds
        while True:
            snap, entries = await self._read(agent_id, task_id, after - limit)
            since = [e for e in entries if e.seq > after]
            state = task_state(snap, since)
            left = deadline - loop.time()
            if sub is None or state in SETTLED or left <= 0:
                return self._task(snap, entries, after, state, limit)
            try:
                await asyncio.wait_for(sub.woken.wait(), min(RECHECK_SECONDS, left))
            except asyncio.TimeoutError:
                pass
            sub.take()

    async def _stream(self, agent_id: str, task_id: str, after: int, limit: int, sub: Any) -> AsyncIterator[Any]:
        """The task, then what changes after seq `after` (the client's latest message) as status updates."""
        snap, entries = await self._read(agent_id, task_id, after - limit)
        since = [e for e in entries if e.seq > after]
        state = task_state(snap, since)
        yield self._task(snap, entries, after, state, limit)
        shown, last = max([after, *(e.seq for e in since)]), state
        while state not in SETTLED and not self.hub.closing.is_set():
            try:
                await asyncio.wait_for(sub.woken.wait(), RECHECK_SECONDS)
            except asyncio.TimeoutError:
                pass
            sub.take()
            snap, since = await self._read(agent_id, task_id, after)
            state = task_state(snap, since)
            new = [e for e in since if e.seq > shown and e.event is None and e.role is not Role.USER]
            for k, entry in enumerate(new):
                yield self._update(snap, state if k == len(new) - 1 else WORKING, entry)
            if not new and state != last:
                yield self._update(snap, state, None)
            shown, last = max([shown, *(e.seq for e in since)]), state

    def _update(self, snap: Snapshot, state: str, entry: TranscriptEntry | None) -> TaskStatusUpdateEvent:
        task_id, context_id = self._ids(snap)
        status = TaskStatus(state=TaskState.Value(state))
        status.timestamp.FromDatetime(entry.at if entry is not None else snap.last_activity_at)
        if entry is not None:
            status.message.CopyFrom(_message(entry.message_id, entry.role, entry.text, task_id, context_id))
        return TaskStatusUpdateEvent(task_id=task_id, context_id=context_id, status=status)

    @staticmethod
    def _ids(snap: Snapshot) -> tuple[str, str]:
        peer = snap.peer or {}
        return snap.conversation_id, peer.get("source_conversation_id", snap.conversation_id)

    async def on_get_task(self, params: Any, context: Any) -> Any:
        agent_id: str = context.state["agent_id"]
        limit = self._history_length(params)
        snap = await self._snapshot(agent_id, params.id)
        _, entries = await self._read(agent_id, params.id, snap.seq - MAX_HISTORY, snap=snap)
        after = _latest_user(entries) if entries else snap.seq
        return self._task(snap, entries, after, task_state(snap, [e for e in entries if e.seq > after]), limit)

    async def on_cancel_task(self, params: Any, context: Any) -> Any:
        agent_id: str = context.state["agent_id"]
        snap = await self._snapshot(agent_id, params.id)
        if snap.state is State.CLOSED:
            raise TaskNotCancelableError(message=f"task {params.id} is already {_ended(snap)}")
        try:
            await self._command(params.id, Updates.SUBMIT_CLOSE, CloseRequest(reason=CANCELED))
        except (UnsupportedOperationError, InvalidParamsError) as err:
            raise TaskNotCancelableError(message=err.message) from None
        snap, entries = await self._read(agent_id, params.id, max(0, snap.seq - HISTORY))
        return self._task(snap, entries, snap.seq, task_state(snap, []), HISTORY)

    def _task(self, snap: Snapshot, entries: list[TranscriptEntry], after: int, state: str, limit: int) -> Task:
        """`after`: the seq of the client's latest message; what follows it is the status message."""
        peer = snap.peer or {}
        task_id, context_id = self._ids(snap)
        # An entry that ends our stretch (`hand_back` / `close`) is Baton's word to the sender, which the task's state
        # says (over the platform protocol it is that callback's type, not a message).
        entries = [e for e in entries if e.event is None]
        history = [_message(e.message_id.removeprefix(USER_IDS) if e.role is Role.USER else e.message_id, e.role,
                            e.text, task_id, context_id) for e in entries]
        if entries and entries[0].seq == 1 and peer.get("handoff_id"):
            # The client's first message is the handoff itself (its reason), not a transcript entry.
            history.insert(0, _message(peer["handoff_id"], Role.USER, peer.get("reason") or "", task_id, context_id))
        replies = [e for e in entries if e.seq > after and e.role is not Role.USER]
        status = TaskStatus(state=TaskState.Value(state))
        status.timestamp.FromDatetime(snap.last_activity_at)
        if replies:
            # The latest reply, under its own id; all of them (each under its own id) are in `history`.
            last = replies[-1]
            status.message.CopyFrom(_message(last.message_id, last.role, last.text, task_id, context_id))
        return Task(id=task_id, context_id=context_id, status=status, history=history[-limit:] if limit else [])

    @staticmethod
    def _history_length(params: Any) -> int:
        if params is None or not params.HasField("history_length"):
            return HISTORY
        return max(0, min(params.history_length, MAX_HISTORY))

    async def _snapshot(self, agent_id: str, task_id: str) -> Snapshot:
        """The conversation behind a task of this agent; any other id is an unknown task."""

        unknown = TaskNotFoundError(message=f"no task '{task_id[:128]}' of agent {agent_id}")
        if not task_id.startswith("a-") or len(task_id) > 128:
            raise unknown
        try:
            snap = await query(self.client(), task_id, Queries.SNAPSHOT, result_type=Snapshot)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise unknown from None
            raise self._unavailable(err) from None
        except WorkflowQueryFailedError:
            raise self._unavailable(None) from None
        except HTTPException as err:  # api.temporal.query: no worker answered in time
            raise (unknown if err.status_code == 404 else self._unavailable(None)) from None
        peer = snap.peer or {}
        if peer.get("protocol") != "a2a" or peer.get("agent_id") != agent_id:
            raise unknown
        return snap

    async def _read(self, agent_id: str, task_id: str, after: int,
                    snap: Snapshot | None = None) -> tuple[Snapshot, list[TranscriptEntry]]:
        """The snapshot and the entries after `after`, of the same moment: two queries answer at different moments (a
        query waits for the workflow task in progress), so a snapshot older than the entries is asked again and
        entries older than the snapshot are read again (the snapshot's seq is the last entry's), a few times at most.
        A state computed from an older snapshot would call a conversation whose person has replied still waiting."""
        snap = snap or await self._snapshot(agent_id, task_id)
        for _ in range(4):
            entries = await self._entries(task_id, after)
            top = max([after, *(e.seq for e in entries)])
            if top == snap.seq or (not entries and snap.seq <= after):
                break
            if top > snap.seq:
                snap = await self._snapshot(agent_id, task_id)
        return snap, entries

    async def _seq_of(self, task_id: str, message_id: str) -> int | None:
        """The seq of the user's message `message_id` (sent again: the workflow had it already), if this run has it."""
        for e in reversed(await self._entries(task_id, 0)):
            if e.message_id == message_id:
                return e.seq
        return None

    async def _entries(self, task_id: str, after: int) -> list[TranscriptEntry]:
        try:
            return await read_entries(self.client(), task_id, max(0, after))
        except (RPCError, WorkflowQueryFailedError, HTTPException) as err:
            raise self._unavailable(err if isinstance(err, RPCError) else None) from None

    async def _command(self, task_id: str, name: str, arg: Any) -> Any:
        try:
            return await update(self.client(), task_id, name, arg)
        except HTTPException as err:
            if err.status_code == 404:
                raise TaskNotFoundError(message=f"no task '{task_id}'") from None
            if err.status_code == 409 and "closed" in str(err.detail):
                raise UnsupportedOperationError(message=f"task {task_id} is over: {err.detail}") from None
            if err.status_code in (409, 413):
                raise InvalidParamsError(message=str(err.detail)) from None
            raise self._unavailable(None) from None
        except RPCError as err:
            raise self._unavailable(err) from None

    @staticmethod
    def _unavailable(err: RPCError | None) -> Exception:
        if err is not None:
            log.warning("A2A: Temporal answered %s", err.status.name if err.status else "an error")
        return InternalError(message="Baton cannot reach its conversations right now; try again")

    # ---- what this server does not offer (the card says so) -----------------------------------------------

    async def on_list_tasks(self, params: Any, context: Any) -> Any:
        raise UnsupportedOperationError(message="listing tasks is not offered; keep the taskId SendMessage answered")

    async def _no_push(self, *_: Any) -> Any:
        raise PushNotificationNotSupportedError(message="push notifications are not offered; use GetTask")

    on_create_task_push_notification_config = _no_push
    on_get_task_push_notification_config = _no_push
    on_list_task_push_notification_configs = _no_push
    on_delete_task_push_notification_config = _no_push

    async def on_get_extended_agent_card(self, params: Any, context: Any) -> Any:
        raise ExtendedAgentCardNotConfiguredError(message="there is no extended card; the public card is all")


class _AgentContext:
    """The SDK's call context, with the agent the URL names (its bearer token was checked before)."""

    def __init__(self) -> None:
        self._default = DefaultServerCallContextBuilder()

    def build(self, request: Request) -> Any:
        context = self._default.build(request)
        # The SDK reads the A2A-Version header from here; the bearer token stays out of everything downstream.
        context.state["headers"] = {k: v for k, v in context.state.get("headers", {}).items()
                                    if k.lower() not in ("authorization", "cookie")}
        context.state["agent_id"] = request.path_params["agent_id"]
        return context


def a2a_router(registry: Callable[[], AgentRegistry], settings: Settings, client: Callable[[], Client],
               hub: Hub) -> APIRouter:
    router = APIRouter(tags=["A2A"])
    dispatcher = JsonRpcDispatcher(BatonA2AHandler(registry, settings, client, hub), context_builder=_AgentContext())

    @router.get(CARD_ROUTE)
    def card(agent_id: AgentPath) -> JSONResponse:
        """The local agent's A2A agent card (public): where to call it, its skill, and that it takes a bearer token."""
        info = registry().local(agent_id)
        if info is None:
            raise HTTPException(404, f"no local agent '{agent_id}'")
        return JSONResponse(agent_card(settings, agent_id, info.name or agent_id))

    @router.post(A2A_PATH)
    async def rpc(agent_id: AgentPath, request: Request) -> Response:
        """The local agent's A2A JSON-RPC interface (A2A 1.0: SendMessage, GetTask, CancelTask), with the agent's
        A2A token as a bearer token."""
        presented = request.headers.get("authorization", "")
        scheme, _, token = presented.partition(" ")
        secrets = registry().verifying_secrets(agent_id) if scheme.lower() == "bearer" and token else []
        # The agent's A2A token (webhooks.a2a_token), of its current secret or one still verifying after a rotation.
        if not any(hmac.compare_digest(token.strip().encode(), webhooks.a2a_token(s).encode()) for s in secrets):
            return JSONResponse(status_code=401, headers={"WWW-Authenticate": 'Bearer realm="baton-a2a"'},
                                content={"detail": "unknown agent or bad token: send the agent's A2A token as "
                                         "`Authorization: Bearer a2a_...`"})
        return await dispatcher.handle_requests(request)

    return router
