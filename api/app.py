"""The HTTP API for chat backends: messages (signal-with-start), context, handoff, snapshot, transcript, audit, close."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from activities import sealing
from activities.filtering import clean_ingress
from activities.queues import params_problem
from activities.registry import AgentRegistry, open_registry
from activities.stream import StreamStore, open_stream
from api.stream import Hub, stream_router
from models.config import BatonConfig
from api.a2a_server import a2a_router
from api.agents import agent_router
from api.auth import bearer
from api.codec import CodecCors, codec_router
from api.desk import desk_router, sweep_queues
from api.third_party_desk import third_party_desk_router
from api.limits import RequestLimits
from api.messages import Accepted, MessageIn, send_user_message
from api.pages import pages_router
from api.protocol import protocol_router
from api import openapi, readiness as readiness_
from api.readiness import Readiness
from api.targets import check_targets
from api.temporal import (
    conflict,
    initial_attributes,
    start_input,
    update,
    waiting_for_a_worker,
)
from api.temporal import query as sticky_safe_query
from models.conversation import (
    ID_PATTERN,
    MAX_CONTEXT_UPDATE_BYTES,
    AuditPage,
    CancelHandoff,
    CloseRequest,
    CommandResult,
    ContextUpdate,
    HandoffRequest,
    Snapshot,
    TranscriptEntry,
    TranscriptPage,
    TranscriptQuery,
    json_size,
)
from models.names import WORKFLOW_TYPE, Queries, Routes, Updates, workflow_id
from runtime import metrics, routing_config
from runtime.temporal import WORKFLOW_TASK_TIMEOUT
from workflows import views
from runtime.settings import Settings

ConversationPath = Annotated[
    str, Path(min_length=1, max_length=128, pattern=ID_PATTERN, alias="conversation_id")
]


class ContextIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    profile: dict[str, Any] | None = None
    slots: dict[str, Any] | None = None
    internal_notes: Any = None
    auth: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


class TranscriptOut(BaseModel):
    conversation_id: str
    entries: list[TranscriptEntry]
    next_after: int
    last_seq: int


def create_app(
    settings: Settings, client: Client | None = None, registry: AgentRegistry | None = None,
    config: BatonConfig | None = None, readiness: Readiness | None = None,
    stream_options: dict[str, Any] | None = None, metrics_url: str | None = None,
) -> FastAPI:
    """`client` is connected at start-up when not given (tests pass their own); the agent registry is opened
    (BATON_DATABASE_URL, else `.baton/baton.db`) on first use when not given; the routing config is read from BATON_CONFIG when not given.
    `readiness` holds the host process's own start-up steps that `/readyz` waits for (`baton dev`: the worker, the
    demo agent). `metrics_url`: the SDK runtime's Prometheus export that `/metrics` includes (runtime.metrics)."""
    if config is None:
        config = routing_config.load(settings)

    async def lifespan(app: FastAPI):
        if app.state.client is None:
            from runtime.temporal import connect

            runtime, app.state.metrics_url = metrics.sdk_runtime()
            app.state.client = await connect(runtime=runtime, service="baton-api")
        sweeper = asyncio.create_task(sweep_queues(stream_store, config, client=lambda: app.state.client))
        yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sweeper
        await app.state.hub.close()

    app = FastAPI(
        title="Baton",
        version="0.1.0",
        summary="Conversation handoff orchestrator on Temporal",
        lifespan=lifespan,
        # Short operation ids (the endpoint's name: `post_message`), for generated clients (api/openapi.py).
        generate_unique_id_function=lambda route: route.name,
    )
    app.add_middleware(RequestLimits)
    # The exact document (security schemes, Baton's error bodies, signed bodies, webhooks): api/openapi.py.
    app.openapi = lambda: openapi.exact(app)
    app.state.client = client
    app.state.metrics_url = metrics_url
    app.state.registry = registry
    app.state.readiness = readiness or Readiness()

    def agents() -> AgentRegistry:
        if app.state.registry is None:
            if not settings.secret_key:
                raise HTTPException(503, "BATON_SECRET_KEY is not set, so agent secrets cannot be stored")
            app.state.registry = open_registry(settings.database_url, settings.home, settings.secret_key)
        return app.state.registry

    app.include_router(agent_router(agents, settings.admin_key))
    app.include_router(protocol_router(agents, settings))
    streams: list[StreamStore] = []

    def stream_store() -> StreamStore:
        if not streams:
            streams.append(open_stream(settings.database_url, settings.home))
        return streams[0]

    app.include_router(desk_router(agents, settings, config, stream_store))
    app.include_router(third_party_desk_router(routing_config.desk_lookup(config), agents))

    app.state.hub = Hub(stream_store, **(stream_options or {}))
    app.include_router(a2a_router(agents, settings, lambda: app.state.client, app.state.hub))
    app.include_router(pages_router(settings))
    origins = [o.strip().rstrip("/") for o in settings.codec_cors_origins.split(",") if o.strip()]
    app.include_router(codec_router(settings.admin_key, lambda: app.state.client, origins))
    # Outermost: the codec's CORS headers go on every answer to the UI, the request limits' 413 included.
    app.add_middleware(CodecCors, origins=origins)
    app.state.config = config

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Say what is wrong, field by field, without echoing the submitted values back.
        problems = [
            {"where": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()
        ]
        summary = "; ".join(f"{p['where']}: {p['problem']}" for p in problems)
        return JSONResponse(status_code=422, content={"detail": summary, "errors": problems})

    def temporal(request: Request) -> Client:
        return request.app.state.client

    Auth = Depends(bearer(settings.api_key, "BATON_API_KEY"))
    app.include_router(stream_router(app.state.hub, agents, Auth, temporal))

    async def query(client: Client, conversation_id: str, name: str, arg: Any, result_type: type, run_id: str | None = None):
        try:
            args = [] if arg is None else [arg]
            return await sticky_safe_query(client, conversation_id, name, *args, result_type=result_type, run_id=run_id)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise HTTPException(404, f"conversation '{conversation_id}' does not exist") from None
            raise
        except WorkflowQueryFailedError as err:
            raise HTTPException(500, f"query failed: {err}") from None

    @app.post(Routes.MESSAGES, status_code=202, response_model=Accepted, dependencies=[Auth], tags=["conversations"])
    async def post_message(conversation_id: ConversationPath, body: MessageIn, request: Request) -> Accepted:
        """Send a user's message; starts the conversation if it is new (signal-with-start). A repeated
        `message_id` is accepted and ignored."""
        return await send_user_message(temporal(request), settings, conversation_id, body)

    @app.put(Routes.CONTEXT, response_model=CommandResult, dependencies=[Auth], tags=["conversations"])
    async def put_context(conversation_id: ConversationPath, body: ContextIn, request: Request) -> CommandResult:
        """Merge into the conversation's context (starting it if new). `auth` and `internal_notes` are
        sealed here and never enter workflow history in the clear."""
        if all(v is None for v in body.model_dump().values()):
            raise HTTPException(422, "send at least one of profile, slots, internal_notes, auth, metadata")
        size = json_size(body.model_dump(exclude_none=True))
        if size > MAX_CONTEXT_UPDATE_BYTES:
            raise HTTPException(
                413, f"context update too large: {size} bytes as JSON, over the {MAX_CONTEXT_UPDATE_BYTES}-byte bound "
                "of one update"
            )
        if not settings.secret_key:
            raise HTTPException(503, "BATON_SECRET_KEY is not set, so sensitive context cannot be sealed")
        # Secret-named keys and sensitive values in the plain sections are withheld here: the originals are sealed
        # with `auth` (activities can open them; they never leave), history holds the cleaned copy.
        plain, withheld, originals = clean_ingress({"profile": body.profile, "slots": body.slots, "metadata": body.metadata})
        auth = body.auth
        if originals:
            auth = {**(body.auth or {}), "withheld_at_ingress": originals}
        sealed = {
            section: sealing.seal(settings.secret_key, value)
            for section, value in (("auth", auth), ("internal_notes", body.internal_notes))
            if value is not None
        }
        context = ContextUpdate(**plain, sealed=sealed, withheld=withheld)
        client = temporal(request)

        def update_with_start():
            # A fresh start operation per attempt: one is spent by the call that carries it.
            start = WithStartWorkflowOperation(
                WORKFLOW_TYPE,
                start_input(settings, conversation_id, "web"),
                id=workflow_id(conversation_id),
                task_queue=settings.task_queue,
                task_timeout=WORKFLOW_TASK_TIMEOUT,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                search_attributes=initial_attributes("web"),
                static_summary=f"Conversation {conversation_id}",
            )
            return client.execute_update_with_start_workflow(
                Updates.SUBMIT_CONTEXT, context, start_workflow_operation=start, result_type=CommandResult
            )

        try:
            return await waiting_for_a_worker(update_with_start)
        except WorkflowUpdateFailedError as err:
            raise conflict(err) or err from None

    @app.post(Routes.HANDOFF, response_model=CommandResult, dependencies=[Auth], tags=["conversations"])
    async def post_handoff(conversation_id: ConversationPath, body: HandoffRequest, request: Request) -> CommandResult:
        """Ask for a handoff now: to a named target, or (no target) where the config's routes send it.
        422 when a target is unknown; 409 with the reason when the conversation's state forbids it."""
        targets = ([("target", body.target)] if body.target else []) + [
            (f"fallback.{i}", t) for i, t in enumerate(body.fallback)
        ]
        check_targets(targets, config, agents)
        if (problem := params_problem(body.params)) is not None:
            raise HTTPException(422, problem)
        return await update(temporal(request), conversation_id, Updates.SUBMIT_HANDOFF, body)

    @app.delete(Routes.HANDOFF, response_model=CommandResult, dependencies=[Auth], tags=["conversations"])
    async def cancel_handoff(conversation_id: ConversationPath, request: Request) -> CommandResult:
        """The user stopped waiting ("never mind"): back to the AI. 409 when no handoff is pending."""
        return await update(temporal(request), conversation_id, Updates.CANCEL_HANDOFF, CancelHandoff())

    @app.post(Routes.CLOSE, response_model=CommandResult, dependencies=[Auth], tags=["conversations"])
    async def post_close(conversation_id: ConversationPath, request: Request, body: CloseRequest | None = None) -> CommandResult:
        return await update(temporal(request), conversation_id, Updates.SUBMIT_CLOSE, body or CloseRequest())

    @app.get(Routes.SNAPSHOT, response_model=Snapshot, dependencies=[Auth], tags=["conversations"])
    async def get_snapshot(conversation_id: ConversationPath, request: Request) -> Snapshot:
        return await query(temporal(request), conversation_id, Queries.SNAPSHOT, None, Snapshot)

    @app.get(Routes.TRANSCRIPT, response_model=TranscriptOut, dependencies=[Auth], tags=["conversations"])
    async def get_transcript(
        conversation_id: ConversationPath,
        request: Request,
        after: Annotated[int, Query(ge=0, description="only entries with a greater seq")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> TranscriptOut:
        """Entries after `after`, oldest first. Entries older than the current run are read from the
        earlier runs (continue-as-new), so nothing said is ever out of reach."""
        client = temporal(request)
        page: TranscriptPage = await query(
            client, conversation_id, Queries.TRANSCRIPT, TranscriptQuery(after=after, limit=limit), TranscriptPage
        )
        entries = page.entries
        if after + 1 < page.first_seq:
            segment = next((s for s in page.earlier_runs if s.first_seq <= after + 1 <= s.last_seq), None)
            if segment is not None:
                older: TranscriptPage = await query(
                    client, conversation_id, Queries.TRANSCRIPT, TranscriptQuery(after=after, limit=limit),
                    TranscriptPage, run_id=segment.run_id,
                )
                entries = [e for e in older.entries if e.seq <= segment.last_seq][:limit]
                # The current run's entries follow only once the earlier run's page reached its end (a page cut
                # by its byte budget ends earlier, and the next page goes on from there), within one page's bytes.
                reached_end = bool(entries) and entries[-1].seq == segment.last_seq
                if reached_end and len(entries) < limit and segment.last_seq + 1 >= page.first_seq:
                    entries += [e for e in page.entries if e.seq > segment.last_seq][: limit - len(entries)]
                    entries = views.page(entries, after, limit)
        next_after = entries[-1].seq if entries else after
        return TranscriptOut(conversation_id=conversation_id, entries=entries, next_after=next_after, last_seq=page.last_seq)

    @app.get(Routes.AUDIT, response_model=AuditPage, dependencies=[Auth], tags=["conversations"])
    async def get_audit(conversation_id: ConversationPath, request: Request) -> AuditPage:
        return await query(temporal(request), conversation_id, Queries.AUDIT, None, AuditPage)

    @app.get(Routes.HEALTHZ, tags=["operations"])
    async def healthz(request: Request) -> JSONResponse:
        return await readiness_.healthz(temporal(request))

    @app.get(Routes.METRICS, tags=["operations"], response_class=PlainTextResponse)
    async def get_metrics(request: Request) -> PlainTextResponse:
        """Prometheus text: the Temporal SDK's metrics of this process and Baton's (baton_handoffs_total,
        baton_handoff_wait_seconds, baton_deliveries_total, baton_redactions_total when this process runs the worker
        too), and baton_conversations_waiting per queue. No personal data: ids of rules, kinds and queues only."""
        text = await metrics.render(
            request.app.state.metrics_url, lambda: asyncio.to_thread(lambda: stream_store().waiting_counts()))
        return PlainTextResponse(text, media_type=metrics.CONTENT_TYPE)

    @app.get(Routes.READYZ, tags=["operations"])
    async def readyz(request: Request) -> JSONResponse:
        """200 only when this process can do its job: Temporal reachable, the store open, and every start-up step
        of the host process finished (in `baton dev`: the worker polling and the demo agent connected). 503 says
        what is still missing. `/healthz` stays the liveness probe."""
        return await readiness_.readyz(temporal(request), lambda: agents().list(), request.app.state.readiness)

    return app
