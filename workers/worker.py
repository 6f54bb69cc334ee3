"""The Temporal client and worker: Conversation workflow plus the AI agent and channel delivery activities."""

from __future__ import annotations

import asyncio
import functools
import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    UnsandboxedWorkflowRunner,
    Worker,
)

from activities.agents import DemoAgent, WebhookAgent
from activities.llm import OpenAIAgent
from activities.channel import ChannelDeliverer
from activities.third_party_desk import ThirdPartyDesks
from activities.filtering import filter_context
from activities.platform import PlatformActivities
from activities.registry import AgentRegistry, open_registry
from activities.queues import Queues
from activities.stream import StreamBell, StreamStore, open_stream
from activities.summaries import Summaries
from activities.routing import IntentFirst, Router
from models.config import BatonConfig
from runtime import routing_config
from runtime.metrics import CountOutcomes
from runtime.settings import Settings
from workflows.conversation import Conversation


STICKY_TIMEOUT = timedelta(seconds=3)
BATON_PACKAGES = ("models", "workflows", "activities", "workers", "api")
GRACEFUL_SHUTDOWN = timedelta(seconds=10)
MAX_CONCURRENT_WORKFLOW_TASKS = 16
# An activity that runs longer than this heartbeats every HEARTBEAT_EVERY, so a worker that dies mid-call is noticed
# within the workflow's heartbeat timeout (3 s) instead of the call's start-to-close timeout. Quick calls (nearly
# all) never heartbeat, so they cost no extra request.
HEARTBEAT_AFTER = 1.0
HEARTBEAT_EVERY = 1.0


class _Heartbeats(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        if activity.info().is_local:
            return await super().execute_activity(input)

        async def beat() -> None:
            await asyncio.sleep(HEARTBEAT_AFTER)
            while True:
                activity.heartbeat()
                await asyncio.sleep(HEARTBEAT_EVERY)

        beating = asyncio.create_task(beat())
        try:
            return await super().execute_activity(input)
        finally:
            beating.cancel()


class HeartbeatWhileSlow(Interceptor):
    """Every (non-local) activity heartbeats while it runs past HEARTBEAT_AFTER."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Heartbeats(next)


def http_client() -> httpx.AsyncClient:
    """One pooled client for every outbound call of a worker process."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, connect=5.0),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        follow_redirects=False,
    )


def registry_opener(settings: Settings, registry: AgentRegistry | None = None):
    """The agent registry, opened on first use (BATON_DATABASE_URL, else `.baton/baton.db`; shared with the API)."""
    opened: list[AgentRegistry] = [registry] if registry is not None else []

    def get() -> AgentRegistry:
        if not opened:
            if not settings.secret_key:
                raise ValueError("BATON_SECRET_KEY is not set, so agent secrets cannot be read")
            opened.append(open_registry(settings.database_url, settings.home, settings.secret_key))
        return opened[0]

    return get


def stream_opener(settings: Settings, store: StreamStore | None = None, config: BatonConfig | None = None):
    """The event stream's store, opened on first use (the install's PostgreSQL, else `.baton/stream.db`; shared
    with the API). With push or sticky
    queues in `config`, every bell written is followed by an assignment round (a conversation that starts waiting is
    offered at once; a place freed is filled at once)."""
    opened: list[StreamStore] = [store] if store is not None else []

    def get() -> StreamStore:
        if not opened:
            opened.append(open_stream(settings.database_url, settings.home))
            if config is not None and config.pushing_queues():
                opened[0].after_ring = Queues(opened[0], config).assign
        return opened[0]

    if store is not None and config is not None and config.pushing_queues():
        store.after_ring = Queues(store, config).assign

    return get


@functools.cache
def build_id() -> str:
    """The worker's build id (shown in the Temporal UI): a hash of Baton's own source. Without one the SDK hashes
    the code of every loaded module (800 here), which took a third of a second of each worker's start. (`build_id` is
    marked deprecated in favour of worker deployments, which Baton does not use; it is what the SDK sets anyway.)"""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for package in BATON_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return f"baton-{digest.hexdigest()[:16]}"


def build_worker(
    client: Client, settings: Settings, http: httpx.AsyncClient, registry: AgentRegistry | None = None,
    config: BatonConfig | None = None, stream: StreamStore | None = None, **options
) -> Worker:
    """`config` is the routing config (BATON_CONFIG, else the built-in default) when not given."""
    if config is None:
        config = routing_config.load(settings)
    bot: DemoAgent | OpenAIAgent | WebhookAgent
    if settings.ai_agent == "demo":
        bot = DemoAgent(tech_agent=settings.demo_tech_agent)
    elif settings.ai_agent == "openai":
        if not settings.ai_model:
            raise ValueError("BATON_AI_MODEL is not set (BATON_AI_AGENT=openai)")
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        bot = OpenAIAgent(settings.openai_base_url, key, settings.ai_model, config.ai_agent, http,
                          allowlist=config.filter.allowlist)
    else:
        bot = WebhookAgent(settings.ai_agent, settings.ai_agent_secret, http)
    # The config's handoff intents ("I want to talk to a human") are matched before the bot is asked.
    streams = stream_opener(settings, stream, config)
    router = Router(config, lambda: client, settings.task_queue, streams)
    agent = IntentFirst(config, bot.respond, lambda: client, needs_history=settings.ai_agent != "demo", stream=streams,
                        router=router)
    channel = ChannelDeliverer(settings.channel_url, settings.channel_secret, http, streams)
    platform = PlatformActivities(registry_opener(settings, registry), settings.public_url)
    desks = ThirdPartyDesks(routing_config.desk_lookup(config), settings.public_url)
    bell = StreamBell(streams)
    # Handoff summaries: the model writes them when the AI agent is an LLM, else the user's own words, cut short.
    summaries = Summaries(lambda: client, bot.summarize if isinstance(bot, OpenAIAgent) else None, streams)
    # Recovery after a crash or a stop (README, "Operating"). A workflow is sticky to the worker that last ran it;
    # after that worker dies its tasks wait this long before any worker takes them (the SDK's default is 10 s). A
    # live worker's task that waits longer than this is replayed from the shared queue, and a burst of 100
    # handoffs takes about 2 s to start on two cores. At 2 s the desk's push offers reached the agents within 1.5
    # times a bare workflow's p99 in 1 run of 6 (1.26 to 4.41), at 3 s in 5 of 6 (1.20 to 1.61), and crash recovery
    # was no slower (3 s: backlog p99 4.35-4.75 s, 2 s: 4.52-4.78 s; alternated runs, README "Benchmarks").
    options.setdefault("sticky_queue_schedule_to_start_timeout", STICKY_TIMEOUT)
    # A graceful stop (SIGTERM, a rolling deploy) stops polling and lets running activities finish for this long.
    options.setdefault("graceful_shutdown_timeout", GRACEFUL_SHUTDOWN)
    # How many workflow tasks at once. Most of a task's time under load is its round trips to the server, not
    # Python: in a burst of 100 handoffs the worker held the GIL a sixth of the time, and with 4 at a time tasks
    # queued on the sticky queue past its then 2 s timeout and were then replayed from the shared queue (the desk's
    # p99 3 to 4.5 times a bare workflow's, 1.1 to 1.4 with 16 in alternated runs; saturation throughput 7 to 20 %
    # higher with 16 in the same invocations: README, "Benchmarks"). Not the SDK's 100: after a restart every
    # conversation needs a full replay, CPU under one GIL, and 100 at once (sandboxed, long runs) made each take
    # longer than the task timeout; 16 replays of short runs finish well within it (bench/worker_crash.py).
    # The trade-off: in bench/desk_load.py, where 100 new conversations start inside the burst, 16 slots and the 3 s
    # sticky timeout list them about a second later than 4 and 2 s did, and answer the agents' replies 0.7 s sooner.
    options.setdefault("max_concurrent_workflow_tasks", MAX_CONCURRENT_WORKFLOW_TASKS)
    # Deliveries and redactions counted for /metrics (runtime.metrics; a no-op without a metrics runtime).
    options["interceptors"] = [HeartbeatWhileSlow(), CountOutcomes(), *options.get("interceptors", [])]
    options.setdefault("build_id", build_id())
    if not settings.workflow_sandbox:
        # The SDK's sandbox re-imports the workflow module for every run and enters it for every payload: a cold
        # replay costs about three times as much, a message about 40 % more worker CPU, and the catch-up after a crash
        # took twice as long (README, "Operating" and "Benchmarks"). It guards
        # against non-deterministic calls at run time; Baton keeps that guard in CI instead, where the test suite
        # runs every workflow sandboxed (tests/harness.settings_for) and the replay tests replay sandboxed too.
        options.setdefault("workflow_runner", UnsandboxedWorkflowRunner())
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[Conversation],
        activities=[
            agent.respond,
            channel.deliver_to_channel,
            filter_context,
            platform.deliver_handoff,
            platform.forward_to_agent,
            platform.deliver_to_peer,
            router.route_handoff,
            router.queue_position,
            desks.deliver_to_desk,
            desks.forward_to_desk,
            bell.ring_bell,
            summaries.summarize_handoff,
        ],
        **options,
    )
