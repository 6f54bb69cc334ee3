"""The live-agent desk: operators create live agents (admin key); each agent, with its own token, sees its
queues' waiting conversations, claims one (first claim wins), replies, transfers, releases or closes it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
import logging
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from activities.filtering import REASONS, redact_text
from activities.queues import DEFAULT_CAPACITY, Offer, Presence, Queues, Refused, personal_queue
from activities.registry import AgentRegistry, LiveAgentIdTaken, LiveAgentInfo
from activities.stream import StreamStore
from api.auth import bearer
from api.targets import check_targets
from api.temporal import not_found_or_closed, query, update
from models.config import BatonConfig
from models.conversation import (
    ID_PATTERN,
    MAX_TEXT,
    NAME_PATTERN,
    AcceptHandoff,
    AgentMessage,
    AuditPage,
    CloseRequest,
    CommandResult,
    HandBack,
    HandoffRequest,
    HandoffTarget,
    MessageId,
    Name,
    Reason,
    RejectHandoff,
    ReceiptEntry,
    Role,
    Snapshot,
    State,
    TranscriptEntry,
    TranscriptPage,
    TranscriptQuery,
)
from models.names import Queries, Updates
from runtime.settings import Settings

ConversationPath = Annotated[
    str, Path(min_length=1, max_length=128, pattern=ID_PATTERN, alias="conversation_id")
]
QueuePath = Annotated[str, Path(min_length=1, max_length=128, pattern=NAME_PATTERN)]
OfferPath = Annotated[str, Path(min_length=23, max_length=23, pattern=r"^of_[0-9a-f]{20}$")]
# The console repeats its presence this often, or a third of the config's grace when that is shorter (two heartbeats
# may be lost before the agent is offline).
HEARTBEAT_SECONDS = 15


def heartbeat_seconds(config: BatonConfig) -> int:
    return max(1, min(HEARTBEAT_SECONDS, config.presence_grace_seconds // 3))
SWEEP_SECONDS = 0.5

log = logging.getLogger("baton.desk")

# A claim or a read of a conversation that is listed but whose routing decision the workflow has not recorded yet
# waits this long for it (see routed_snapshot), looking again every ROUTING_POLL_SECONDS.
ROUTING_WAIT_SECONDS = 5.0
ROUTING_POLL_SECONDS = 0.1
# A successful claim answers once the waiting lists (read from the stream's store) no longer show the conversation,
# or after this long (the claim stands either way).
LEFT_THE_LIST_SECONDS = 5.0
LEFT_THE_LIST_POLL_SECONDS = 0.01


# No ':' in a live agent's id: `desk:<name>` owns what a third-party desk accepted and `agent:<id>` is a personal
# queue, so no live agent can pass for either.
LiveAgentId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")]


class LiveAgentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_id: LiveAgentId
    name: str = Field(min_length=1, max_length=128)
    queues: list[Name] = Field(min_length=1, max_length=50, description="the queues this agent works")
    skills: list[Name] = Field(default_factory=list, max_length=50)
    capacity: int = Field(default=DEFAULT_CAPACITY, ge=1, le=1000, description="conversations they take at once")


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
    summary: str | None = Field(default=None, description="the handoff's summary for whoever takes over, once written")
    priority: int = Field(default=0, description="higher waits ahead")
    skills: list[str] = Field(default_factory=list, description="what an agent needs to take it")


class WaitingList(BaseModel):
    queue: str
    waiting: list[Waiting]
    total: int = Field(description="how many wait in the queue in all (`waiting` holds the oldest `limit`)")


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
    agent_id: Name | None = Field(default=None, description="a live agent: only they can claim it")
    reason: Reason | None = None


class DeskConversation(BaseModel):
    """What a live agent sees: the filtered context for this handoff and the transcript (including what the
    user wrote while waiting)."""

    conversation_id: str
    state: State
    owner: str | None
    queue: str | None
    reason: str | None
    summary: str | None = Field(default=None, description="the handoff's summary for whoever takes over (written "
                                "from the filtered transcript), once written")
    waiting_since: datetime | None
    context: dict | None = Field(description="the context filtered for this handoff (route allowlist applied)")
    withheld: list[ReceiptEntry] = Field(
        default_factory=list,
        description="what the agent is not shown, each path and why, never the value: what the filter withheld "
        "from this handoff's context, then what was withheld when received (context values from a context "
        "update; a message redacted at ingress, as path `transcript #<seq>`), as far back as the current run's "
        "audit reaches",
    )
    entries: list[TranscriptEntry]
    next_after: int


class DeskAgent(BaseModel):
    """Who a live-agent token belongs to, and the queues they work (their personal queue included)."""

    agent_id: str
    name: str
    queues: list[str]
    skills: list[str] = []
    capacity: int = DEFAULT_CAPACITY
    # How each of their queues assigns (`pull`, `push` or `sticky`), and the wrap-up codes release and close take.
    assignment: dict[str, str] = {}
    wrap_up_codes: list[str] = []
    # How often the console repeats its presence (a heartbeat), and after how long without one the agent is offline.
    heartbeat_seconds: int = 15
    presence_grace_seconds: int = 45


class PresenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["online", "away", "offline"]
    heartbeat: bool = Field(default=False, description="true: only say the console is still there (the status the "
                            "agent has now stays; `status` counts only for an agent never seen before)")


class OfferList(BaseModel):
    offers: list[Offer]


class Team(BaseModel):
    """The live agents who share a queue with the caller (their personal queues aside), each with their presence
    and load of capacity, by name."""

    agents: list[Presence]


class DeskReport(BaseModel):
    """Wrap-up codes counted, ratings per agent, and every agent's presence and load."""

    wrap_ups: dict[str, int]
    agents: dict[str, dict]
    presence: list[Presence]


def withheld_for(audit: AuditPage, handoff_id: str | None) -> list[ReceiptEntry]:
    """What the agent is not shown, each path and why (never the value): the receipt of the newest
    `context_filtered` audit entry (for `handoff_id` when one is pending, else the newest: the handoff the
    current owner accepted), then what was withheld before it ever reached the conversation (README, "Sensitive
    values never enter history"): context values withheld from a context update (`context_updated`) and messages
    (the user's, or an agent's) redacted when received (`redacted_at_ingress`, path `transcript #<seq>`). Both come
    from the audit, so they reach as far back as the current run's audit does (the tail continue-as-new carries)."""
    receipt: list[ReceiptEntry] = []
    for entry in reversed(audit.entries):
        if entry.kind != "context_filtered":
            continue
        if handoff_id is not None and entry.detail.get("handoff_id") != handoff_id:
            continue
        receipt = [ReceiptEntry.model_validate(r) for r in entry.detail.get("receipt", [])]
        break
    at_ingress: list[ReceiptEntry] = []
    for entry in audit.entries:
        if entry.kind == "context_updated":
            for w in entry.detail.get("withheld", []):
                w = ReceiptEntry.model_validate(w)
                at_ingress.append(w.model_copy(update={"reason": f"{w.reason}, withheld when received"}))
        elif entry.kind == "redacted_at_ingress":
            for kind in dict.fromkeys(entry.detail.get("kinds", [])):
                at_ingress.append(ReceiptEntry(
                    path=f"transcript #{entry.detail.get('seq')}", action="redacted",
                    reason=f"{REASONS.get(kind, kind)}, redacted when received",
                ))
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for r in receipt + at_ingress:
        if (r.path, r.action, r.reason) not in seen:
            seen.add((r.path, r.action, r.reason))
            unique.append(r)
    return unique


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason | None = None
    wrap_up: Name | None = Field(default=None, description="a code from the config's `wrap_up_codes`")


def works(agent: LiveAgentInfo, queue: str | None) -> bool:
    return queue is not None and (queue in agent.queues or queue == personal_queue(agent.agent_id))


def desk_router(
    registry: Callable[[], AgentRegistry], settings: Settings, config: BatonConfig, stream: Callable[[], StreamStore]
) -> APIRouter:
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
            return await query(client, conversation_id, Queries.SNAPSHOT, result_type=Snapshot)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise await not_found_or_closed(client, conversation_id) from None
            raise
        except WorkflowQueryFailedError as err:
            raise HTTPException(500, f"query failed: {err}") from None

    async def routed_snapshot(client: Client, conversation_id: str) -> Snapshot:
        """The snapshot once a pending handoff's routing decision is recorded. The routing activity lists the
        conversation in its queue's waiting list as it decides, a workflow task before the workflow records the
        decision: an agent who acts on the list in that moment waits for it (ROUTING_WAIT_SECONDS at most) instead
        of being refused."""
        deadline = time.monotonic() + ROUTING_WAIT_SECONDS
        snap = await snapshot(client, conversation_id)
        while time.monotonic() < deadline and await not_caught_up(snap):
            await asyncio.sleep(ROUTING_POLL_SECONDS)
            snap = await snapshot(client, conversation_id)
        return snap

    async def not_caught_up(snap: Snapshot) -> bool:
        """The workflow has not recorded yet what the waiting lists already show: a handoff whose routing decision
        is still out, or (the AI's turn decided it) a chat still with the AI that the store lists as waiting."""
        pending = snap.pending_handoff
        if pending is not None:
            return not pending.routed
        return snap.state is State.AI and await listed(snap.conversation_id)

    async def listed(conversation_id: str) -> bool:
        """Whether the stream's store lists the conversation as waiting; False when the store cannot be read (here
        it only decides how long to wait, never whether a command succeeds)."""
        try:
            return await asyncio.to_thread(stream().position, conversation_id) is not None
        except Exception:  # noqa: BLE001 - the store is a courtesy here
            return False

    async def left_the_list(conversation_id: str) -> None:
        """After a claim: wait (LEFT_THE_LIST_SECONDS at most) until the stream's store no longer lists the
        conversation as waiting (the workflow's bell for the claim), so whoever claimed it, and every waiting list
        read after the 200, no longer sees it."""
        deadline = time.monotonic() + LEFT_THE_LIST_SECONDS
        while time.monotonic() < deadline and await listed(conversation_id):
            await asyncio.sleep(LEFT_THE_LIST_POLL_SECONDS)

    def queues() -> Queues:
        return Queues(stream(), config)

    async def holding(agent: LiveAgentInfo, conversation_id: str, queue: str | None) -> None:
        try:
            await asyncio.to_thread(queues().reserve, agent.agent_id, agent.skills, agent.capacity, conversation_id,
                                    queue)
        except Refused as err:
            raise HTTPException(err.status, str(err)) from None

    async def recorded(what: str, write: Callable[[], None]) -> None:
        """A desk record written after the workflow took the command (a wrap-up code, an accepted offer): best
        effort, so a store hiccup never turns a command that took into an error (the audit has it either way)."""
        try:
            await asyncio.to_thread(write)
        except Exception as err:  # noqa: BLE001
            log.warning("the queues' store did not record %s: %s", what, type(err).__name__)

    def rating_question(agent: LiveAgentInfo) -> str | None:
        """What the user is asked after this agent's release or close (the config's `rating`), or None."""
        if not config.rating.enabled:
            return None
        return config.rating.question.replace("{agent}", agent.name)[:MAX_TEXT]

    def wrap_up_code(body: ReasonIn | None) -> str | None:
        code = body.wrap_up if body else None
        if code is not None and code not in config.wrap_up_codes:
            known = ", ".join(config.wrap_up_codes) or "none are configured"
            raise HTTPException(422, f"wrap_up: '{code}' is not one of the config's wrap_up_codes ({known})")
        return code

    # ---- operators ----------------------------------------------------------------------------------

    @router.post("/v1/admin/live-agents", status_code=201, response_model=LiveAgentCreated, dependencies=admin, tags=["admin"])
    def create_live_agent(body: LiveAgentIn) -> LiveAgentCreated:
        """A live agent for the desk. Its token is returned this once only (stored hashed)."""
        try:
            info, token = registry().create_live_agent(
                body.agent_id, body.name, body.queues, body.skills, body.capacity
            )
        except LiveAgentIdTaken as err:
            raise HTTPException(409, str(err)) from None
        return LiveAgentCreated(agent_id=info.agent_id, token=token)

    @router.get("/v1/admin/live-agents", response_model=LiveAgentList, dependencies=admin, tags=["admin"])
    def list_live_agents() -> LiveAgentList:
        return LiveAgentList(live_agents=registry().list_live_agents())

    # ---- the desk -----------------------------------------------------------------------------------

    @router.get("/v1/desk/me", response_model=DeskAgent, tags=["desk"])
    def me(agent: LiveAgentInfo = agent_dep) -> DeskAgent:
        """The agent this token belongs to (the console signs in with it): 401 for a wrong token."""
        queues = [*agent.queues, personal_queue(agent.agent_id)]
        return DeskAgent(
            agent_id=agent.agent_id, name=agent.name, queues=queues, skills=agent.skills, capacity=agent.capacity,
            assignment={q: config.queues[q].assignment if q in config.queues else "pull" for q in queues},
            wrap_up_codes=list(config.wrap_up_codes), heartbeat_seconds=heartbeat_seconds(config),
            presence_grace_seconds=config.presence_grace_seconds,
        )

    @router.get("/v1/desk/queues/{queue}/waiting", response_model=WaitingList, tags=["desk"])
    async def waiting(
        queue: QueuePath, limit: Annotated[int, Query(ge=1, le=500)] = 50, agent: LiveAgentInfo = agent_dep,
    ) -> WaitingList:
        """The oldest `limit` conversations waiting in `queue`, oldest first, and how many wait in all. Read from
        the event stream's store, as the desk's stream and the routing decision's position are: exact as of each
        conversation's last bell, no visibility lag, one indexed read however long the queue."""
        if not works(agent, queue):
            raise HTTPException(
                403, f"queue '{queue}' is not one of {agent.agent_id}'s queues (nor their personal queue "
                f"'{personal_queue(agent.agent_id)}')",
            )
        rows, total = await asyncio.to_thread(stream().waiting_json, queue, limit, True)
        # Sent as the store gives it (WaitingList's JSON, from the store's own columns): 500 rows built as models and
        # validated twice cost more than reading them.
        return Response(content=json.dumps({"queue": queue, "waiting": rows, "total": total}),
                        media_type="application/json")

    @router.post("/v1/desk/conversations/{conversation_id}/claim", response_model=CommandResult, tags=["desk"])
    async def claim(conversation_id: ConversationPath, request: Request, agent: LiveAgentInfo = agent_dep) -> CommandResult:
        """Take the conversation's pending handoff. The first claim wins; every other gets 409."""
        client = temporal(request)
        snap = await routed_snapshot(client, conversation_id)
        pending = snap.pending_handoff
        if pending is None:
            why = f"no handoff is pending: the conversation is in state '{snap.state.value}' (owner {snap.owner})"
            if snap.state is State.LIVE_AGENT and snap.owner != agent.agent_id:
                why = f"{snap.owner} claimed it first ({why})"
            raise HTTPException(409, why)
        if pending.target is None:
            raise HTTPException(409, "the handoff is still being routed; try again in a moment")
        if not works(agent, pending.target.desk_queue):
            raise HTTPException(
                403, f"the pending handoff is for {pending.target.label}, not one of {agent.agent_id}'s queues"
            )
        # A place of the agent's capacity first (and the skills the conversation needs): two claims at once can
        # never both take an agent's last place.
        await holding(agent, conversation_id, pending.target.desk_queue)
        try:
            result = await update(
                client, conversation_id, Updates.ACCEPT_HANDOFF,
                AcceptHandoff(handoff_id=pending.handoff_id, owner=agent.agent_id),
            )
        except BaseException as err:
            await asyncio.to_thread(queues().release, agent.agent_id, conversation_id)
            if isinstance(err, HTTPException) and err.status_code == 409:
                # A lost race: say who won, not only that the handoff is gone.
                now = await snapshot(client, conversation_id)
                if now.owner and now.owner != agent.agent_id and now.state is State.LIVE_AGENT:
                    raise HTTPException(409, f"{now.owner} claimed it first ({err.detail})") from None
            raise
        await left_the_list(conversation_id)
        return result

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
        """Re-route the conversation the caller owns to another queue, or to a named live agent (who alone can
        claim it). The workflow checks ownership atomically: anyone but the owner gets 409."""
        if (body.queue is None) == (body.agent_id is None):
            raise HTTPException(422, "send exactly one of {\"queue\": <name>} or {\"agent_id\": <live agent>}")
        if body.agent_id == agent.agent_id:
            raise HTTPException(422, "you already own the conversation: transfer to another agent or a queue")
        target = HandoffTarget(queue=body.queue) if body.queue else HandoffTarget(live_agent=body.agent_id)
        check_targets([("queue" if body.queue else "agent_id", target)], config, registry)
        queue_config = config.queues.get(body.queue or "")
        if queue_config is not None and queue_config.skips_when_nobody_present and not await asyncio.to_thread(
            queues().anyone_present, body.queue, []
        ):
            # Routing would pass over it at once (and, with nothing after it, back to the AI): say so instead.
            raise HTTPException(409, f"nobody who could take it is present in queue '{body.queue}'; the conversation "
                                     "stays with you")
        request_ = HandoffRequest(
            reason=body.reason or f"transfer by {agent.agent_id}", target=target, by=agent.agent_id
        )
        return await update(temporal(request), conversation_id, Updates.SUBMIT_HANDOFF, request_)

    @router.get("/v1/desk/conversations/{conversation_id}/transcript", response_model=DeskConversation, tags=["desk"])
    async def read(
        conversation_id: ConversationPath, request: Request, after: int = 0, agent: LiveAgentInfo = agent_dep
    ) -> DeskConversation:
        """For the owner, or (while it waits) any agent of its queue: the filtered context and the transcript,
        so what the user wrote while waiting reaches whoever accepts."""
        if after < 0:
            raise HTTPException(422, "after: must be >= 0")
        client = temporal(request)
        snap = await routed_snapshot(client, conversation_id)
        pending = snap.pending_handoff
        waiting_for_me = pending is not None and pending.target is not None and works(agent, pending.target.desk_queue)
        if snap.owner != agent.agent_id and not waiting_for_me:
            raise HTTPException(
                403, f"{agent.agent_id} neither owns this conversation nor works the queue it waits in"
            )
        if snap.owner != agent.agent_id and pending is not None and pending.target is not None:
            missing = await asyncio.to_thread(queues().lacks, agent.skills, conversation_id, pending.target.desk_queue)
            if missing:
                raise HTTPException(403, f"the conversation needs the skill(s) {', '.join(missing)}, which "
                                         f"{agent.agent_id} lacks")
        page, audit = await asyncio.gather(
            query(
                client, conversation_id, Queries.TRANSCRIPT, TranscriptQuery(after=after, limit=1000),
                result_type=TranscriptPage,
            ),
            query(client, conversation_id, Queries.AUDIT, result_type=AuditPage),
        )
        return DeskConversation(
            conversation_id=conversation_id, state=snap.state, owner=snap.owner, queue=snap.queue,
            reason=pending.reason if pending else None, summary=snap.summary, waiting_since=snap.waiting_since,
            context=snap.shared_context, withheld=withheld_for(audit, pending.handoff_id if pending else None),
            entries=page.entries, next_after=page.entries[-1].seq if page.entries else after,
        )

    @router.post("/v1/desk/conversations/{conversation_id}/release", response_model=CommandResult, tags=["desk"])
    async def release(
        conversation_id: ConversationPath, request: Request, body: ReasonIn | None = None,
        agent: LiveAgentInfo = agent_dep,
    ) -> CommandResult:
        """Back to the AI, which speaks up again (the workflow marks the end of the human stretch)."""
        code = wrap_up_code(body)
        hand_back = HandBack(reason=(body.reason if body and body.reason else ""), by=agent.agent_id, wrap_up=code,
                             rating_question=rating_question(agent))
        result = await update(temporal(request), conversation_id, Updates.SUBMIT_HAND_BACK, hand_back)
        if code is not None:
            await recorded("a wrap-up code", lambda: queues().wrapped_up(conversation_id, agent.agent_id, "release", code))
        return result

    @router.post("/v1/desk/conversations/{conversation_id}/close", response_model=CommandResult, tags=["desk"])
    async def close(
        conversation_id: ConversationPath, request: Request, body: ReasonIn | None = None,
        agent: LiveAgentInfo = agent_dep,
    ) -> CommandResult:
        """Closed. With the config's `rating` on, the user is then asked to rate the agent, and the closed
        conversation takes that one answer for `rating.answer_minutes`."""
        code = wrap_up_code(body)
        close_request = CloseRequest(reason=(body.reason if body and body.reason else "closed"), by=agent.agent_id,
                                     wrap_up=code, rating_question=rating_question(agent),
                                     rating_seconds=config.rating.answer_minutes * 60)
        result = await update(temporal(request), conversation_id, Updates.SUBMIT_CLOSE, close_request)
        if code is not None:
            await recorded("a wrap-up code", lambda: queues().wrapped_up(conversation_id, agent.agent_id, "close", code))
        return result

    # ---- presence and offers ------------------------------------------------------------------------

    @router.put("/v1/desk/presence", response_model=Presence, tags=["desk"])
    async def set_presence(body: PresenceIn, agent: LiveAgentInfo = agent_dep) -> Presence:
        """`online`, `away` or `offline`. The console sends `"heartbeat": true` every `heartbeat_seconds` of
        `/v1/desk/me`; without one for the config's `presence_grace_seconds` the agent is offline. Going away or
        offline withdraws the agent's open offers; going online makes them eligible for offers at once."""
        return await asyncio.to_thread(
            queues().set_presence, agent.agent_id, agent.name, agent.queues, agent.skills, agent.capacity,
            body.status, None, body.heartbeat,
        )

    @router.get("/v1/desk/presence", response_model=Presence, tags=["desk"])
    async def get_presence(agent: LiveAgentInfo = agent_dep) -> Presence:
        """The agent's presence and load (conversations owned, claims in flight and open offers) of capacity."""
        return await asyncio.to_thread(queues().presence_of, agent)

    @router.get("/v1/desk/team", response_model=Team, tags=["desk"])
    async def team(agent: LiveAgentInfo = agent_dep) -> Team:
        """Who else works the caller's queues: status (`online`, `away`, `offline`) and load (conversations owned,
        claims in flight and open offers) of capacity, sorted by name. The console's "Team" list reads it."""
        mine = set(agent.queues)
        colleagues = [a for a in await asyncio.to_thread(registry().list_live_agents)
                      if a.agent_id != agent.agent_id and mine & set(a.queues)]
        colleagues.sort(key=lambda a: (a.name.casefold(), a.agent_id))
        return Team(agents=await asyncio.to_thread(queues().team, colleagues))

    @router.get("/v1/desk/offers", response_model=OfferList, tags=["desk"])
    async def offers(agent: LiveAgentInfo = agent_dep) -> OfferList:
        """The agent's open offers (push and sticky queues), oldest first, each with when it lapses."""
        return OfferList(offers=await asyncio.to_thread(queues().offers, agent.agent_id))

    @router.post("/v1/desk/offers/{offer_id}/accept", response_model=CommandResult, tags=["desk"])
    async def accept_offer(offer_id: OfferPath, request: Request, agent: LiveAgentInfo = agent_dep) -> CommandResult:
        """Accepting is the claim: 200 and the conversation is the agent's; 409 when the offer lapsed, was
        withdrawn or the conversation no longer waits; 404 for an offer that is not the agent's."""
        book = queues()
        try:
            offer = await asyncio.to_thread(book.take_offer, offer_id, agent.agent_id)
        except Refused as err:
            raise HTTPException(err.status, str(err)) from None
        client = temporal(request)
        try:
            snap = await routed_snapshot(client, offer.conversation_id)
            pending = snap.pending_handoff
            if pending is None or pending.target is None or pending.target.desk_queue != offer.queue:
                raise HTTPException(409, f"the conversation no longer waits in {offer.queue} (state "
                                         f"'{snap.state.value}', owner {snap.owner})")
            result = await update(
                client, offer.conversation_id, Updates.ACCEPT_HANDOFF,
                AcceptHandoff(handoff_id=pending.handoff_id, owner=agent.agent_id),
            )
        except BaseException:
            await recorded("a failed accept", lambda: book.end_offer(offer, False))
            raise
        await recorded("an accepted offer", lambda: book.end_offer(offer, True))
        await left_the_list(offer.conversation_id)
        return result

    @router.post("/v1/desk/offers/{offer_id}/decline", status_code=204, tags=["desk"])
    async def decline_offer(offer_id: OfferPath, agent: LiveAgentInfo = agent_dep) -> None:
        """The offer goes to the next agent at once (this agent stays online)."""
        try:
            await asyncio.to_thread(queues().decline, offer_id, agent.agent_id)
        except Refused as err:
            raise HTTPException(err.status, str(err)) from None

    @router.get("/v1/admin/desk/report", response_model=DeskReport, dependencies=admin, tags=["admin"])
    async def report() -> DeskReport:
        """Wrap-up codes counted (in all and per agent), ratings per agent (count, mean), presence and load."""
        book = queues()
        counted, presence = await asyncio.gather(asyncio.to_thread(book.report), asyncio.to_thread(book.presences))
        return DeskReport(**counted, presence=presence)

    return router


async def sweep_queues(
    stream: Callable[[], StreamStore], config: BatonConfig, every: float = SWEEP_SECONDS,
    client: Callable[[], Client | None] | None = None,
) -> None:
    """Offers lapse, agents whose heartbeats stopped go offline, and what waits in push queues is offered: one
    assignment round every `every` seconds, in every API process (a round is one transaction: any number of
    processes may run them). Then conversations stranded in a queue that goes on when nobody is present (the last
    agent who could take them went offline, or their console's heartbeats stopped) are passed to their next rung
    (`pass_on_stranded`)."""
    tried: dict[tuple[str, str, str], float] = {}
    passing: asyncio.Task | None = None  # its own task: a slow Temporal never holds up the assignment rounds
    try:
        while True:
            await asyncio.sleep(every)
            try:
                book = Queues(stream(), config)
                await asyncio.to_thread(book.assign)
                temporal = client() if client is not None else None
                if temporal is not None and (passing is None or passing.done()):
                    passing = asyncio.create_task(pass_on_stranded(temporal, book, tried))
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("assignment round failed")
    finally:
        if passing is not None:
            passing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await passing


# A stranded conversation whose pass-on failed (Temporal unreachable, its routing still being recorded) is tried again
# after this long; one that moved on leaves the waiting list and is not found again.
RETRY_STRANDED_SECONDS = 5.0
# A waiting row whose workflow no longer exists (terminated from the CLI) is looked at again after this long.
GONE_SECONDS = 3600.0


async def pass_on_stranded(client: Client, book: Queues, tried: dict[tuple[str, str, str], float]) -> int:
    """The next rung for each conversation waiting in a queue where nobody who could take it is present any more:
    the `reject_handoff` update with the handoff's id, as a receiver that cannot take it would send, so the workflow's
    own ladder runs (the next rung, or the AI with "nobody is available" at the end), and the audit says why. The
    update's validator refuses a handoff that moved on meanwhile, so two API processes passing on the same
    conversation change it once. Returns how many were passed on."""
    try:
        stranded = await asyncio.to_thread(book.stranded)
    except Exception:  # noqa: BLE001 - the next round reads again
        log.exception("reading stranded conversations failed")
        return 0
    now = time.monotonic()
    for key, at in list(tried.items()):
        if now - at > RETRY_STRANDED_SECONDS:
            del tried[key]
    passed = 0
    for key in stranded:
        if key in tried:
            continue
        tried[key] = now
        conversation_id, queue, _ = key
        try:
            snap = await query(client, conversation_id, Queries.SNAPSHOT, result_type=Snapshot)
            pending = snap.pending_handoff
            if pending is None or not pending.routed or pending.target is None or pending.target.desk_queue != queue:
                continue  # moved on, or its routing is still being recorded: looked at again later
            # The list was read before the Temporal calls of those ahead: someone may be back meanwhile.
            if not await asyncio.to_thread(book.still_stranded, conversation_id, queue):
                continue
            reason = f"nobody who could take it is present in queue '{queue}'"
            await update(client, conversation_id, Updates.REJECT_HANDOFF,
                         RejectHandoff(handoff_id=pending.handoff_id, reason=reason))
            passed += 1
        except HTTPException:
            continue  # closed, or the handoff moved on meanwhile (409): nothing to pass on
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                tried[key] = now + GONE_SECONDS  # its workflow is gone (terminated): not asked again for an hour
                continue
            log.warning("passing on %s failed: %s", conversation_id, type(err).__name__)
        except Exception as err:  # noqa: BLE001 - tried again after RETRY_STRANDED_SECONDS
            log.warning("passing on %s failed: %s", conversation_id, type(err).__name__)
    return passed
