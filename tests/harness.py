"""Test helpers: a Baton worker and API on free loopback ports against a given Temporal client."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from temporalio.client import Client, WorkflowHandle

from activities import sealing, webhooks
from api.app import create_app
from api.serve import EmbeddedServer
from models.conversation import ConversationInput, Snapshot, TranscriptPage, UserMessage
from models.names import WORKFLOW_TYPE, Queries, Signals, workflow_id
from devkit.temporal import free_port
from runtime.settings import Settings
from workers.worker import build_worker, http_client

T = TypeVar("T")
API_KEY = "bk_test_key"


_HOMES = Path(tempfile.mkdtemp(prefix="baton-test-homes-"))
atexit.register(shutil.rmtree, _HOMES, ignore_errors=True)


def settings_for(task_queue: str, **overrides: Any) -> Settings:
    """A test's settings: its own task queue and its own home (stores), shared by the worker and API built from it."""
    base = dict(
        home=_HOMES / task_queue,
        task_queue=task_queue,
        api_key=API_KEY,
        admin_key="ba_test_admin",
        secret_key=sealing.new_key(),
        channel_secret=webhooks.generate_secret(),
        # Every workflow the suite runs in-process runs in the SDK's sandbox, which fails a workflow task on a
        # non-deterministic call (the production default runs without it, for speed: workers/worker.py).
        workflow_sandbox=True,
    )
    return Settings(**{**base, **overrides})


@contextlib.asynccontextmanager
async def baton_worker(client: Client, settings: Settings, registry: Any = None, **options: Any) -> AsyncIterator[None]:
    async with http_client() as http:
        async with build_worker(client, settings, http, registry, **options):
            yield


@contextlib.asynccontextmanager
async def baton_api(
    client: Client, settings: Settings, registry: Any = None, port: int | None = None,
    wrap: Callable[[Any], Any] | None = None, config: Any = None, stream_options: dict[str, Any] | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """The real API on a loopback port (free unless given); yields an httpx client with the API key set.
    `wrap` wraps the ASGI app (e.g. to record every byte the API receives); `config` is the routing config."""
    port = port or free_port()
    app = create_app(settings, client, registry, config=config, stream_options=stream_options)
    served = wrap(app) if wrap else app
    server = EmbeddedServer(uvicorn.Config(served, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    await asyncio.wait({task, asyncio.create_task(server.ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # surfaces a start-up error
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {settings.api_key}"}, timeout=30
        ) as http:
            yield http
    finally:
        server.should_exit = True
        await task


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 15, interval: float = 0.05) -> T:
    """Poll a query-visible condition (workflow state is only observable by asking); `check` raises or
    returns falsy until it holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Exception | None = None
    while True:
        try:
            result = await check()
            if result:
                return result
        except (AssertionError, Exception) as err:  # noqa: B014 - keep the last reason for the failure message
            last = err
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached in {timeout}s; last: {last!r}")
        await asyncio.sleep(interval)


async def start_conversation(
    client: Client, settings: Settings, conversation_id: str, text: str = "Hello", message_id: str = "m1", **kw: Any
) -> WorkflowHandle:
    return await client.start_workflow(
        WORKFLOW_TYPE,
        ConversationInput(conversation_id=conversation_id, **kw),
        id=workflow_id(conversation_id),
        task_queue=settings.task_queue,
        start_signal=Signals.USER_MESSAGE,
        start_signal_args=[UserMessage(message_id=message_id, text=text)],
        result_type=Snapshot,
    )


async def snapshot(handle: WorkflowHandle) -> Snapshot:
    return await handle.query(Queries.SNAPSHOT, result_type=Snapshot)


async def transcript(handle: WorkflowHandle) -> TranscriptPage:
    return await handle.query(Queries.TRANSCRIPT, result_type=TranscriptPage)



def history_text(history: Any) -> str:
    """An exported history with every payload's base64 `data` decoded, so canary checks see what is stored."""
    import base64
    import json

    decoded: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, str) and "metadata" in node:
                try:
                    decoded.append(base64.b64decode(data).decode("utf-8", "replace"))
                except ValueError:
                    decoded.append(data)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    exported = history.to_json()
    walk(json.loads(exported))
    return exported + "\n" + "\n".join(decoded)


async def settled(handle: WorkflowHandle, timeout: float = 30) -> None:
    """Until the workflow has no activity pending and no workflow task scheduled or running."""
    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.workflowservice.v1 import DescribeWorkflowExecutionRequest

    client = handle._client  # the raw call: the SDK's describe() cannot parse the time-skipping server's attributes
    request = DescribeWorkflowExecutionRequest(namespace=client.namespace, execution=WorkflowExecution(workflow_id=handle.id))
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        raw = await client.workflow_service.describe_workflow_execution(request)
        if not raw.pending_activities and not raw.HasField("pending_workflow_task"):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{handle.id} did not settle within {timeout} s")
        await asyncio.sleep(0.05)


SKIP_STEP = timedelta(minutes=10)
SKIP_RPC_TIMEOUT = timedelta(minutes=2)


async def skip(env: Any, handle: WorkflowHandle, duration: timedelta) -> None:
    """Skip time on the time-skipping server with the workflow settled before and after. The server refuses the
    completion of a workflow task that cancels a timer which fired while the task was with the worker ("invalid
    history builder state for action", temporalio/sdk-java#3088) and never retries it; a skip that starts while
    a task is in flight can make that happen, and the run is stranded.

    A long skip goes in steps of SKIP_STEP, each with its own generous RPC timeout. Every timer that fires on the
    way is worked off in real time (a waiting user's position is re-counted every minute: 45 of them in a 45-minute
    skip). `env.sleep` gives up after the client's default RPC timeout, with "Timeout expired"; here each step gets
    SKIP_RPC_TIMEOUT. (Alone, a 10-minute step takes 0.1-0.5 s here; a step that does not return within two minutes
    has hung, see tests/test_timers.py.)"""
    from temporalio.api.testservice.v1 import SleepRequest

    await settled(handle)
    left = duration
    while left > timedelta(0):
        step = min(left, SKIP_STEP)
        request = SleepRequest()
        request.duration.FromTimedelta(step)
        await env.client.test_service.unlock_time_skipping_with_sleep(request, timeout=SKIP_RPC_TIMEOUT)
        await settled(handle)
        left -= step


def baton_env(client: Client, settings: Settings, **more: str) -> dict[str, str]:
    """The environment of a `baton` process of the test's install: this shell's, without its BATON_/TEMPORAL_/OTEL_
    variables, plus the dev server, the settings' task queue, keys, channel and home, and `more`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATON_", "TEMPORAL_", "OTEL_"))}
    env.update({
        "TEMPORAL_ADDRESS": client.service_client.config.target_host, "TEMPORAL_NAMESPACE": client.namespace,
        "BATON_TASK_QUEUE": settings.task_queue, "BATON_SECRET_KEY": settings.secret_key or "",
        "BATON_API_KEY": settings.api_key or "", "BATON_ADMIN_KEY": settings.admin_key or "",
        "BATON_HOME": str(settings.home),
    })
    if settings.channel_url:
        env.update({"BATON_CHANNEL_URL": settings.channel_url, "BATON_CHANNEL_SECRET": settings.channel_secret or ""})
    env.update(more)
    return env


def stop_processes(*processes: subprocess.Popen) -> None:
    """SIGTERM (a graceful stop), then SIGKILL for any still running after 20 s."""
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in processes:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
