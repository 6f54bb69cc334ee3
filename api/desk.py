"""The live-agent desk: operators create live agents (admin key); each agent, with its own token, sees its
queues' waiting conversations, claims one (first claim wins), replies, transfers, releases or closes it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from activities.filtering import redact_text
from activities.registry import AgentRegistry, LiveAgentIdTaken, LiveAgentInfo
from api.auth import bearer
from api.temporal import handle, not_found_or_closed, update
from models.conversation import (
    ID_PATTERN,
    MAX_TEXT,
    NAME_PATTERN,
    AcceptHandoff,
    AgentMessage,
    CloseRequest,
    CommandResult,
    HandBack,
    HandoffRequest,
    HandoffTarget,
    MessageId,
    Name,
    Reason,
    Role,
    Snapshot,
    State,
)
from models.names import WORKFLOW_ID_PREFIX, WORKFLOW_TYPE, Queries, SearchAttributes, Updates
from workers.settings import Settings

ConversationPath = Annotated[
    str, Path(min_length=1, max_length=128, pattern=ID_PATTERN, alias="conversation_id")
]
QueuePath = Annotated[str, Path(min_length=1, max_length=128, pattern=NAME_PATTERN)]


class LiveAgentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_id: Name
    name: str = Field(min_length=1, max_length=128)
    queues: list[Name] = Field(min_length=1, max_length=50, description="the queues this agent works")
    skills: list[Name] = Field(default_factory=list, max_length=50)


class LiveAgentCreated(BaseModel):
    agent_id: str
    token: str = Field(description="Shown once: the agent sends it as 'Authorization: Bearer <token>'.")


class LiveAgentList(BaseModel):
    live_agents: list[LiveAgentInfo]


class Waiting(BaseModel):
    conversation_id: str
    position: int
    waiting_since: datetime | None
    reason: str


class WaitingList(BaseModel):
    queue: str
    waiting: list[Waiting]


class DeskMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message_id: MessageId
    text: str = Field(min_length=1, max_length=MAX_TEXT)


class DeskMessageAccepted(BaseModel):
    accepted: bool = True
    seq: int | None
    duplicate: bool = False


class TransferIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queue: Name | None = None
    agent_id: Name | None = Field(default=None, description="not supported yet: transfer to a queue")


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason | None = None


def desk_router(registry: Callable[[], AgentRegistry], settings: Settings) -> APIRouter:
    router = APIRouter()
    admin = [Depends(bearer(settings.admin_key, "BATON_ADMIN_KEY"))]

    def live_agent(authorization: Annotated[str | None, Header()] = None) -> LiveAgentInfo:
        """The live agent whose token this request carries, or 401."""
        scheme, _, token = (authorization or "").partition(" ")
        agent = registry().live_agent_by_token(token.strip()) if scheme.lower() == "bearer" and token else None
        if agent is None:
            raise HTTPException(
                401, "missing or wrong live-agent token: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return agent

    # (A default rather than an Annotated alias: this module's annotations are strings, resolved at module level.)
    agent_dep = Depends(live_agent)

    def temporal(request: Request) -> Client:
        return request.app.state.client

    async def snapshot(client: Client, conversation_id: str) -> Snapshot:
        try:
            return await handle(client, conversation_id).query(Queries.SNAPSHOT, result_type=Snapshot)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise await not_found_or_closed(client, conversation_id) from None
            raise
        except WorkflowQueryFailedError as err:
            raise HTTPException(500, f"query failed: {err}") from None

    # ---- operators ----------------------------------------------------------------------------------

    @router.post("/v1/admin/live-agents", status_code=201, response_model=LiveAgentCreated, dependencies=admin, tags=["admin"])
    def create_live_agent(body: LiveAgentIn) -> LiveAgentCreated:
        """A live agent for the desk. Its token is returned this once only (stored hashed)."""
        try:
            info, token = registry().create_live_agent(body.agent_id, body.name, body.queues, body.skills)
        except LiveAgentIdTaken as err:
            raise HTTPException(409, str(err)) from None
        return LiveAgentCreated(agent_id=info.agent_id, token=token)

    @router.get("/v1/admin/live-agents", response_model=LiveAgentList, dependencies=admin, tags=["admin"])
    def list_live_agents() -> LiveAgentList:
        return LiveAgentList(live_agents=registry().list_live_agents())

    # ---- the desk -----------------------------------------------------------------------------------

    @router.get("/v1/desk/queues/{queue}/waiting", response_model=WaitingList, tags=["desk"])
    async def waiting(queue: QueuePath, request: Request, agent: LiveAgentInfo = agent_dep) -> WaitingList:
        """Conversations waiting in `queue`, oldest first. Read from Temporal visibility (eventually
        consistent), then each confirmed by its own snapshot, so one just claimed is not offered."""
        if queue not in agent.queues:
            raise HTTPException(403, f"queue '{queue}' is not one of {agent.agent_id}'s queues")
        client = temporal(request)
        # `queue` matched the Name pattern (no quotes), so it is safe inside the query string.
        visibility = (
            f'WorkflowType="{WORKFLOW_TYPE}" AND ExecutionStatus="Running" AND BatonState="{State.HANDOFF_PENDING.value}" '
            f'AND BatonQueue="{queue}" AND TaskQueue="{settings.task_queue}"'
        )
        found: list[tuple[str, datetime | None]] = []
        async for execution in client.list_workflows(query=visibility):
            if not execution.id.startswith(WORKFLOW_ID_PREFIX):
                continue
            since = execution.typed_search_attributes.get(SearchAttributes.WAITING_SINCE)
            found.append((execution.id.removeprefix(WORKFLOW_ID_PREFIX), since))

        async def confirm(conversation_id: str) -> Snapshot | None:
            try:
                return await handle(client, conversation_id).query(Queries.SNAPSHOT, result_type=Snapshot)
            except (RPCError, WorkflowQueryFailedError):
                return None  # gone meanwhile: not waiting any more

        snaps = await asyncio.gather(*(confirm(cid) for cid, _ in found))
        rows = []
        for (cid, since), snap in zip(found, snaps):
            pending = snap.pending_handoff if snap else None
            if pending is None or pending.target.queue != queue:
                continue  # visibility lags: claimed, transferred or closed since
            rows.append((since or snap.waiting_since or pending.requested_at, cid, pending.reason))
        rows.sort(key=lambda r: (r[0], r[1]))
        return WaitingList(
            queue=queue,
            waiting=[
                Waiting(conversation_id=cid, position=i, waiting_since=since, reason=reason)
                for i, (since, cid, reason) in enumerate(rows, start=1)
            ],
        )

    @router.post("/v1/desk/conversations/{conversation_id}/claim", response_model=CommandResult, tags=["desk"])
    async def claim(conversation_id: ConversationPath, request: Request, agent: LiveAgentInfo = agent_dep) -> CommandResult:
        """Take the conversation's pending handoff. The first claim wins; every other gets 409."""
        client = temporal(request)
        snap = await snapshot(client, conversation_id)
        pending = snap.pending_handoff
        if pending is None:
            raise HTTPException(
                409, f"no handoff is pending: the conversation is in state '{snap.state.value}' (owner {snap.owner})"
            )
        if pending.target.queue is None or pending.target.queue not in agent.queues:
            raise HTTPException(
                403, f"the pending handoff is for {pending.target.label}, not one of {agent.agent_id}'s queues"
            )
        return await update(
            client, conversation_id, Updates.ACCEPT_HANDOFF,
            AcceptHandoff(handoff_id=pending.handoff_id, owner=agent.agent_id),
        )

    @router.post(
        "/v1/desk/conversations/{conversation_id}/messages", status_code=202, response_model=DeskMessageAccepted,
        tags=["desk"],
    )
    async def reply(conversation_id: ConversationPath, body: DeskMessageIn, request: Request, agent: LiveAgentInfo = agent_dep) -> DeskMessageAccepted:
        """The owning agent's reply; anyone else gets the workflow's 409."""
        text, found = redact_text(body.text)
        message = AgentMessage(
            message_id=body.message_id, text=text[:MAX_TEXT], author=agent.agent_id, role=Role.LIVE_AGENT,
            redacted=[kind for kind, _ in found][:20],
        )
        result = await update(temporal(request), conversation_id, Updates.SUBMIT_AGENT_MESSAGE, message)
        return DeskMessageAccepted(seq=result.seq, duplicate=result.duplicate)

    @router.post("/v1/desk/conversations/{conversation_id}/transfer", response_model=CommandResult, tags=["desk"])
    async def transfer(conversation_id: ConversationPath, body: TransferIn, request: Request, agent: LiveAgentInfo = agent_dep) -> CommandResult:
        """Re-route the conversation the caller owns to another queue (it waits there for a claim)."""
        if body.agent_id is not None:
            raise HTTPException(422, "transfer to a named agent is not supported yet: send {\"queue\": <name>}")
        if body.queue is None:
            raise HTTPException(422, "send {\"queue\": <name>}: the queue to transfer to")
        client = temporal(request)
        snap = await snapshot(client, conversation_id)
        if snap.state is not State.LIVE_AGENT or snap.owner != agent.agent_id:
            raise HTTPException(
                409, f"only the owner ({snap.owner}) can transfer; {agent.agent_id} does not own the conversation "
                f"(state '{snap.state.value}')",
            )
        request_ = HandoffRequest(reason=f"transfer by {agent.agent_id}", target=HandoffTarget(queue=body.queue))
        return await update(client, conversation_id, Updates.SUBMIT_HANDOFF, request_)

    @router.post("/v1/desk/conversations/{conversation_id}/release", response_model=CommandResult, tags=["desk"])
    async def release(
        conversation_id: ConversationPath, request: Request, body: ReasonIn | None = None,
        agent: LiveAgentInfo = agent_dep,
    ) -> CommandResult:
        """Back to the AI, which speaks up again (the workflow marks the end of the human stretch)."""
        hand_back = HandBack(reason=(body.reason if body and body.reason else ""), by=agent.agent_id)
        return await update(temporal(request), conversation_id, Updates.SUBMIT_HAND_BACK, hand_back)

    @router.post("/v1/desk/conversations/{conversation_id}/close", response_model=CommandResult, tags=["desk"])
    async def close(
        conversation_id: ConversationPath, request: Request, body: ReasonIn | None = None,
        agent: LiveAgentInfo = agent_dep,
    ) -> CommandResult:
        close_request = CloseRequest(reason=(body.reason if body and body.reason else "closed"), by=agent.agent_id)
        return await update(temporal(request), conversation_id, Updates.SUBMIT_CLOSE, close_request)

    return router
