"""Shared benchmark parts: dev server, loopback channel receiver, load drivers, worker process, stats, JSON output."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import psutil
import temporalio
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.testing import WorkflowEnvironment
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner
from temporalio.worker import WorkflowInstance, WorkflowRunner

from bench import baseline
from models.conversation import ConversationInput, UserMessage
from devkit.temporal import DEV_SERVER, free_port, start_dev_server
from runtime.temporal import WORKFLOW_TASK_TIMEOUT
from models.names import WORKFLOW_TYPE, SearchAttributes, Signals, workflow_id


# The worker kinds that run Baton's own worker (workers/worker.py); the others are bare-Temporal baselines.
BATON_KINDS = ("baton", "baton_openai")

# The dev server's defaults (temporal server 1.32 dynamic config), to compare measured histories against.
HISTORY_SUGGEST_CAN_EVENTS = 4 * 1024
HISTORY_SUGGEST_CAN_BYTES = 4 * 1024 * 1024
HISTORY_WARN_EVENTS = 10 * 1024
HISTORY_WARN_BYTES = 10 * 1024 * 1024
HISTORY_ERROR_EVENTS = 50 * 1024
HISTORY_ERROR_BYTES = 50 * 1024 * 1024

# ---- output -------------------------------------------------------------------------------------------------

_T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    """The one JSON object on stdout."""
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    sys.stdout.flush()


def run_main(main: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """asyncio.run: Ctrl-C (or SIGTERM) cancels the main task, so every `finally` stops what it started
    (worker processes, the receiver, the dev server) before the script exits."""

    async def guarded() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main()

    try:
        result = asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        progress("interrupted; everything started was stopped")
        raise SystemExit(130) from None
    emit(result)


def machine_info() -> dict[str, Any]:
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    try:
        server = subprocess.run([str(DEV_SERVER), "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        server = None
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "temporalio": temporalio.__version__,
        "dev_server": server,
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "code": code_info(),
    }


def code_info() -> dict[str, Any]:
    """Which Baton code was measured: the git commit and any uncommitted change to the measured packages."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    # Porcelain lines are "XY path": strip only line ends, or the first line's leading space is lost.
    dirty = (git("status", "--porcelain", "--", "workflows", "activities", "models", "workers", "api") or "").rstrip()
    return {"git_head": (git("rev-parse", "--short", "HEAD") or "").strip() or None,
            "uncommitted_changes": [line[3:] for line in dirty.splitlines()] if dirty else []}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- statistics ---------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values: Iterable[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return percentile(xs, 50)


def rnd(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


# ---- the dev server -----------------------------------------------------------------------------------------


@dataclass
class DevServer:
    env: WorkflowEnvironment
    workdir: Path
    log_path: Path
    target: str
    namespace: str
    process: psutil.Process | None
    persistence: str
    keep_workdir: bool = False

    @property
    def client(self) -> Client:
        return self.env.client

    def log_lines(self, pattern: str) -> list[str]:
        rx = re.compile(pattern, re.IGNORECASE)
        with contextlib.suppress(OSError):
            return [line.rstrip("\n") for line in self.log_path.open(errors="replace") if rx.search(line)]
        return []

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.process)

    def rss_mb(self) -> float | None:
        return rss_mb(self.process)


@contextlib.asynccontextmanager
async def dev_server(
    *, sqlite: bool = True, runtime: Runtime | None = None, keep_workdir: bool = False
) -> AsyncIterator[DevServer]:
    """A dev server on free loopback ports with Baton's search attributes, like the embedded default:
    a SQLite file in WAL mode with synchronous=normal (or in-memory). Its output goes to a log file
    (the CLI would otherwise write its banner to our stdout, where only the JSON belongs)."""
    workdir = Path(tempfile.mkdtemp(prefix="baton-bench-"))
    log_path = workdir / "temporal.log"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    try:
        env = await start_dev_server(database=workdir / "temporal.db" if sqlite else None, runtime=runtime, quiet=True)
    except BaseException:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log_fd):
            os.close(fd)
    procs = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    server_proc = next((p for p in procs if "temporal" in _name(p)), procs[0] if procs else None)
    config = env.client.service_client.config
    server = DevServer(
        env=env,
        workdir=workdir,
        log_path=log_path,
        target=config.target_host,
        namespace=env.client.namespace,
        process=server_proc,
        persistence="sqlite (wal, synchronous=normal)" if sqlite else "in-memory",
        keep_workdir=keep_workdir,
    )
    progress(f"dev server at {server.target} ({server.persistence}), log {log_path}")
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(env.shutdown())
        if not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _name(p: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return p.name()
    return ""


def cpu_seconds(proc: psutil.Process | None) -> float | None:
    if proc is None:
        return None
    with contextlib.suppress(psutil.Error):
        t = proc.cpu_times()
        return t.user + t.system
    return None


def rss_mb(proc: psutil.Process | None = None) -> float | None:
    proc = proc or psutil.Process()
    with contextlib.suppress(psutil.Error):
        return proc.memory_info().rss / 2**20
    return None


def prometheus_runtime() -> tuple[Runtime, str]:
    """A Temporal runtime whose core metrics (cache size, task latencies...) are scraped from a loopback port."""
    port = free_port()
    runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"127.0.0.1:{port}")))
    return runtime, f"http://127.0.0.1:{port}/metrics"


def scrape(url: str) -> dict[str, float]:
    """Prometheus text: {'name{labels}': value}, summed over labels into 'name' as well."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            key, value = line.rsplit(" ", 1)
            v = float(value)
        except ValueError:
            continue
        name = key.split("{", 1)[0]
        if name.endswith("_bucket"):
            continue
        out[name] = out.get(name, 0.0) + v
    return out


class CpuMeter:
    """CPU seconds used by named processes, and by the whole machine, between start() and stop()."""

    def __init__(self, procs: dict[str, psutil.Process | None]) -> None:
        self.procs = procs
        self._start: dict[str, float | None] = {}
        self._busy0 = 0.0
        self._t0 = 0.0

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)

    def start(self) -> None:
        self._start = {k: cpu_seconds(p) for k, p in self.procs.items()}
        self._busy0 = self._busy()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        ours = 0.0
        for k, p in self.procs.items():
            a, b = self._start.get(k), cpu_seconds(p)
            out[k] = None if a is None or b is None else b - a
            ours += out[k] or 0.0
        machine = self._busy() - self._busy0
        out["machine_busy"] = machine
        out["other_processes"] = max(0.0, machine - ours)
        out["wall"] = time.monotonic() - self._t0
        return out


# ---- the loopback channel receiver --------------------------------------------------------------------------


class _Conversation:
    __slots__ = ("ai_times", "other", "waiter", "waiting_for")

    def __init__(self) -> None:
        self.ai_times: list[float] = []
        self.other = 0
        self.waiter: asyncio.Future[None] | None = None
        self.waiting_for = 0


class LoopbackServer:
    """A minimal server on 127.0.0.1, on a free port, for `async with`: `protocol()` makes each connection's
    asyncio.Protocol; open connections are closed when the block ends."""

    def __init__(self) -> None:
        self.port: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._transports: set[asyncio.Transport] = set()

    def protocol(self) -> asyncio.Protocol:
        raise NotImplementedError

    async def __aenter__(self) -> Any:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.protocol, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._transports):
                t.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)


class LoopbackReceiver(LoopbackServer):
    """A minimal HTTP/1.1 server (keep-alive, Content-Length bodies) on 127.0.0.1 standing in for the chat
    backend: answers 202 at once, records the arrival time (perf_counter) of every message per
    (conversation_id, seq), counts duplicates, and wakes whoever waits for a conversation's n-th AI reply.
    Signatures are not verified: the baseline does not sign, and the receiver must cost both the same."""

    def __init__(self) -> None:
        super().__init__()
        self._convs: dict[str, _Conversation] = {}
        self._seen: set[tuple[str, int]] = set()
        self.duplicates: list[tuple[str, int]] = []
        self.requests = 0
        self.bad_requests = 0

    def protocol(self) -> asyncio.Protocol:
        return _HttpProtocol(self)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _conv(self, cid: str) -> _Conversation:
        conv = self._convs.get(cid)
        if conv is None:
            conv = self._convs[cid] = _Conversation()
        return conv

    def _record_request(self, body: bytes, headers: dict[str, str], at: float) -> int:
        """One request as it came (header names lower-case); receivers that keep headers override this."""
        return self._record(body, at)

    def _record(self, body: bytes, at: float) -> int:
        self.requests += 1
        try:
            msg = json.loads(body)
            cid, seq, role = msg["conversation_id"], int(msg["seq"]), msg["role"]
        except (ValueError, KeyError, TypeError):
            self.bad_requests += 1
            return 400
        key = (cid, seq)
        if key in self._seen:
            self.duplicates.append(key)
            return 202
        self._seen.add(key)
        conv = self._conv(cid)
        if role == "ai":
            conv.ai_times.append(at)
            if conv.waiter is not None and len(conv.ai_times) >= conv.waiting_for and not conv.waiter.done():
                conv.waiter.set_result(None)
        else:
            conv.other += 1
        return 202

    async def wait_reply(self, cid: str, n: int, timeout: float) -> float | None:
        """Arrival time of the conversation's n-th AI reply, or None if it did not come within `timeout`."""
        conv = self._conv(cid)
        if len(conv.ai_times) < n:
            conv.waiter = asyncio.get_running_loop().create_future()
            conv.waiting_for = n
            try:
                await asyncio.wait_for(conv.waiter, timeout)
            except TimeoutError:
                return None
            finally:
                conv.waiter = None
        return conv.ai_times[n - 1]

    def replies(self, cid: str) -> int:
        conv = self._convs.get(cid)
        return len(conv.ai_times) if conv else 0

    def other_messages(self, cids: Iterable[str]) -> int:
        return sum(self._convs[c].other for c in cids if c in self._convs)

    def duplicates_for(self, cids: Iterable[str]) -> int:
        wanted = set(cids)
        return sum(1 for cid, _ in self.duplicates if cid in wanted)

    def total_ai_replies(self) -> int:
        return sum(len(c.ai_times) for c in self._convs.values())


class _HttpProtocol(asyncio.Protocol):
    def __init__(self, receiver: LoopbackReceiver) -> None:
        self.receiver = receiver
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.receiver._transports.add(self.transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.receiver._transports.discard(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        at = time.perf_counter()
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            headers: dict[str, str] = {}
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name, value = name.strip().lower(), value.strip()
                headers[name] = value
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.lower() == "close":
                    close = True
                elif name == "transfer-encoding":
                    self._respond(501, close=True)
                    return
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = bytes(self.buf[end + 4 : total])
            del self.buf[:total]
            status = self.receiver._record_request(body, headers, at)
            self._respond(status, close)
            if close:
                return

    def _respond(self, status: int, close: bool) -> None:
        assert self.transport is not None
        reason = {202: "Accepted", 400: "Bad Request", 501: "Not Implemented"}.get(status, "OK")
        head = f"HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n"
        if close:
            head += "connection: close\r\n"
        self.transport.write((head + "\r\n").encode())
        if close:
            self.transport.close()


# ---- load drivers: how a user's message reaches each system ----------------------------------------------


def message_text(i: int) -> str:
    return f"Where is my order number {i}? It was supposed to arrive yesterday."


class BatonDriver:
    """Sends a user's message the way Baton's API does: signal-with-start (with the API's initial search
    attributes) for the first message, then a signal to the conversation's workflow id (any run)."""

    name = "baton"

    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue
        sa = SearchAttributes
        self._attributes = TypedSearchAttributes(
            [SearchAttributePair(sa.STATE, "ai"), SearchAttributePair(sa.CHANNEL, "web"),
             SearchAttributePair(sa.OWNER, "ai"), SearchAttributePair(sa.HANDOFFS, 0)]
        )

    def workflow_id(self, cid: str) -> str:
        return workflow_id(cid)

    async def send(self, cid: str, i: int, text: str | None = None) -> None:
        message = UserMessage(message_id=f"m{i}", text=text or message_text(i))
        if i == 1:
            await self.client.start_workflow(
                WORKFLOW_TYPE,
                ConversationInput(conversation_id=cid, channel="web"),
                id=workflow_id(cid),
                task_queue=self.task_queue,
                task_timeout=WORKFLOW_TASK_TIMEOUT,  # as the API starts it
                start_signal=Signals.USER_MESSAGE,
                start_signal_args=[message],
                search_attributes=self._attributes,
                static_summary=f"Conversation {cid} (web)",
            )
        else:
            await self.client.get_workflow_handle(workflow_id(cid)).signal(Signals.USER_MESSAGE, message)


class BaselineDriver:
    """The same calls against the bare-Temporal baseline workflow (no search attributes)."""

    name = "baseline"

    def __init__(self, client: Client, task_queue: str, local_respond: bool = False) -> None:
        self.client = client
        self.task_queue = task_queue
        self.local_respond = local_respond

    def workflow_id(self, cid: str) -> str:
        return f"bench-baseline-{cid}"

    async def send(self, cid: str, i: int, text: str | None = None) -> None:
        message = {"message_id": f"m{i}", "text": text or message_text(i)}
        if i == 1:
            await self.client.start_workflow(
                baseline.WORKFLOW,
                {"conversation_id": cid, "local_respond": self.local_respond},
                id=self.workflow_id(cid),
                task_queue=self.task_queue,
                start_signal=baseline.SIGNAL,
                start_signal_args=[message],
            )
        else:
            await self.client.get_workflow_handle(self.workflow_id(cid)).signal(baseline.SIGNAL, message)


def shared_http_client() -> httpx.AsyncClient:
    """The same pool settings as Baton's worker uses (workers.worker.http_client), for the baseline."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, connect=5.0),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        follow_redirects=False,
    )


def build_bench_worker(kind: str, client: Client, http: httpx.AsyncClient, task_queue: str, channel_url: str,
                       options: dict[str, Any] | None = None, ai_url: str | None = None):
    """The real Baton worker (demo AI agent, or with `baton_openai` the OpenAI-compatible adapter against the
    model at `ai_url`; channel = the receiver) or the baseline worker, same options."""
    options = options or {}
    if kind in BATON_KINDS:
        from activities import webhooks
        from runtime.settings import Settings
        from workers.worker import build_worker

        ai = {} if kind == "baton" else {"ai_agent": "openai", "openai_base_url": ai_url, "ai_model": "bench-model"}
        settings = Settings(task_queue=task_queue, channel_url=channel_url, channel_secret=webhooks.generate_secret(),
                            **ai)
        return build_worker(client, settings, http, **options)
    if kind == "baseline":
        from temporalio.worker import Worker

        acts = baseline.BaselineActivities(channel_url, http)
        return Worker(client, task_queue=task_queue, workflows=[baseline.BaselineChat],
                      activities=[acts.respond, acts.deliver], **options)
    if kind == "baseline_handoff":  # bench/stream: the desk's bare-Temporal floor (no activities)
        from temporalio.worker import Worker

        return Worker(client, task_queue=task_queue, workflows=[baseline.BaselineHandoff], **options)
    raise ValueError(kind)


def http_client_for(kind: str) -> httpx.AsyncClient:
    if kind in BATON_KINDS:
        from workers.worker import http_client

        return http_client()
    return shared_http_client()


# ---- a worker in its own process ----------------------------------------------------------------------------


@dataclass
class WorkerSpec:
    kind: str  # "baton" | "baton_openai" | "baseline" | "baseline_handoff"
    target: str
    namespace: str
    task_queue: str
    channel_url: str
    options: dict[str, Any] = field(default_factory=dict)
    metrics_port: int | None = None
    profile: str | None = None  # None | "timing" | "cprofile"
    profile_path: str | None = None
    # The workflow runner: None = each system's own default (Baton as deployed: no sandbox unless
    # BATON_WORKFLOW_SANDBOX; a bare Temporal worker: the SDK's sandbox); True / False = sandboxed / not, for both.
    sandbox: bool | None = None
    # kind "baton_openai": the OpenAI-compatible endpoint its AI agent calls (bench/fake_model.py).
    ai_url: str | None = None
    # BATON_PAYLOAD_KEYS for this worker's client (runtime.codec): history encrypted.
    payload_keys: str | None = None


def encrypting(client: Client, payload_keys: str | None) -> Client:
    """`client` as it is, or (payload_keys) the same connection with Baton's encrypting converter."""
    if not payload_keys:
        return client
    from runtime.codec import EncryptionCodec, data_converter, parse_keys

    return Client(**{**client.config(), "data_converter": data_converter(EncryptionCodec(parse_keys(payload_keys)))})


class ProfilingRunner(WorkflowRunner):
    """Wraps the system's own workflow runner (`sandboxed`: the SDK's sandbox, else none, as Baton runs by default)
    to measure the Python cost of workflow code where it runs (the SDK's workflow executor threads): thread CPU time
    per activation and per instance creation (with the sandbox, its set-up), and, with `cprofile=True`, a
    deterministic profile of every activation."""

    def __init__(self, cprofile: bool = False, sandboxed: bool = True) -> None:
        from temporalio.worker import UnsandboxedWorkflowRunner

        self.inner = SandboxedWorkflowRunner() if sandboxed else UnsandboxedWorkflowRunner()
        self.cprofile = cprofile
        self.lock = threading.Lock()
        self.totals = {"activations": 0, "activation_cpu_s": 0.0, "instances": 0, "instance_cpu_s": 0.0,
                       "context_calls": 0, "context_cpu_s": 0.0}
        self._local = threading.local()
        self.profiles: list[Any] = []

    def prepare_workflow(self, defn: Any) -> None:
        self.inner.prepare_workflow(defn)

    def set_worker_level_failure_exception_types(self, types: Sequence[type[BaseException]]) -> None:
        self.inner.set_worker_level_failure_exception_types(types)

    def create_instance(self, det: Any) -> WorkflowInstance:
        t0 = time.thread_time()
        instance = self.inner.create_instance(det)
        self._add("instances", "instance_cpu_s", time.thread_time() - t0)
        return _ProfiledInstance(instance, self)

    def _add(self, count_key: str, cpu_key: str, cpu: float) -> None:
        with self.lock:
            self.totals[count_key] += 1
            self.totals[cpu_key] += cpu

    def profile(self) -> Any:
        prof = getattr(self._local, "profile", None)
        if prof is None:
            import cProfile

            prof = self._local.profile = cProfile.Profile()
            with self.lock:
                self.profiles.append(prof)
        return prof


class _ProfiledInstance(WorkflowInstance):
    def __init__(self, inner: WorkflowInstance, runner: ProfilingRunner) -> None:
        self.inner = inner
        self.runner = runner

    def activate(self, act: Any) -> Any:
        prof = self.runner.profile() if self.runner.cprofile else None
        t0 = time.thread_time()
        if prof is not None:
            prof.enable()
        try:
            return self.inner.activate(act)
        finally:
            if prof is not None:
                prof.disable()
            self.runner._add("activations", "activation_cpu_s", time.thread_time() - t0)

    def get_info(self) -> Any:
        return self.inner.get_info()

    def get_thread_id(self) -> int | None:
        return self.inner.get_thread_id()

    def get_serialization_context(self, command_info: Any) -> Any:
        t0 = time.thread_time()
        try:
            return self.inner.get_serialization_context(command_info)
        finally:
            self.runner._add("context_calls", "context_cpu_s", time.thread_time() - t0)

    def get_external_store_context(self, command_info: Any) -> Any:
        t0 = time.thread_time()
        try:
            return self.inner.get_external_store_context(command_info)
        finally:
            self.runner._add("context_calls", "context_cpu_s", time.thread_time() - t0)


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        i = filename.find(marker)
        if i >= 0:
            return filename[i + len(marker):]
    return filename


FOCUS = {
    "project_code": r"^(workflows|models|activities|bench/baseline)",
    "serialization": r"pydantic|converter",
}


def profile_tables(profiles: Sequence[Any], top: int = 25) -> dict[str, Any]:
    """cProfile objects merged: top functions by own time and by cumulative time (ms), overall and for
    the project's own code and for (de)serialization."""
    import pstats

    stats = None
    for p in profiles:
        with contextlib.suppress(TypeError):  # a profile that never ran has no stats
            stats = pstats.Stats(p) if stats is None else stats.add(p)
    if stats is None:
        return {}
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((f"{_short(filename)}:{line}({func})", ncalls, tottime * 1000, cumtime * 1000))
    total = sum(r[2] for r in rows)

    def fmt(sorted_rows: Iterable[tuple[str, int, float, float]]) -> list[list[Any]]:
        return [[name, n, round(tt, 1), round(ct, 1)] for name, n, tt, ct in list(sorted_rows)[:top]]

    out: dict[str, Any] = {
        "total_own_ms": round(total, 1),
        "columns": ["function", "calls", "own_ms", "cumulative_ms"],
        "by_own_time": fmt(sorted(rows, key=lambda r: -r[2])),
        "by_cumulative_time": fmt(sorted(rows, key=lambda r: -r[3])),
    }
    for name, pattern in FOCUS.items():
        rx = re.compile(pattern)
        chosen = [r for r in rows if rx.search(r[0])]
        out[f"{name}_own_ms"] = round(sum(r[2] for r in chosen), 1)
        out[f"{name}_by_cumulative_time"] = fmt(sorted(chosen, key=lambda r: -r[3]))
    return out


def _worker_process_main(spec: WorkerSpec, ready: Any, stop: Any) -> None:
    # Only the parent's JSON belongs on stdout; Ctrl-C is the parent's to handle (it sets `stop`).
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Profiled as it runs: Baton unsandboxed (workers/worker.py), the bare worker in the SDK's sandbox (--sandbox
    # sets both).
    sandboxed = spec.sandbox if spec.sandbox is not None else spec.kind not in BATON_KINDS
    runner = ProfilingRunner(cprofile=spec.profile == "cprofile", sandboxed=sandboxed) if spec.profile else None
    gc_totals = {"collections": [0, 0, 0], "seconds": [0.0, 0.0, 0.0]}
    if spec.profile:
        gc_started: dict[int, float] = {}

        def _gc_timer(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                gc_started[threading.get_ident()] = time.perf_counter()
            elif (t := gc_started.pop(threading.get_ident(), None)) is not None:
                gc_totals["collections"][info["generation"]] += 1
                gc_totals["seconds"][info["generation"]] += time.perf_counter() - t

        gc.callbacks.append(_gc_timer)
    main_profile = None
    if spec.profile == "cprofile":
        import cProfile

        main_profile = cProfile.Profile()  # the event loop thread: activities, SDK glue, HTTP
        main_profile.enable()
    code = 0
    try:
        asyncio.run(_serve_worker(spec, ready, stop, runner))
    except BaseException:  # noqa: BLE001 - reported, then the exit code says it
        traceback.print_exc()
        code = 1
    finally:
        if main_profile is not None:
            main_profile.disable()
        if runner is not None and spec.profile_path:
            report: dict[str, Any] = {"mode": spec.profile, "totals": runner.totals, "gc": gc_totals,
                                      "process_cpu_s": sum(os.times()[:2])}
            if runner.cprofile:
                report["note"] = (
                    "cProfile is enabled around each activation on the SDK's executor threads. Unsandboxed (Baton "
                    "as it runs) it records every activation's workflow code (a coroutine's resumptions count as "
                    "calls); in the SDK's sandbox it recorded the workflow's own functions only for the first "
                    "activation of each workflow, so there use the timing totals (thread CPU per activation) for "
                    "the workflow code. The event loop thread's table holds the activities")
                report["workflow_activations"] = profile_tables(runner.profiles)
                report["event_loop_thread"] = profile_tables([main_profile])
            Path(spec.profile_path).write_text(json.dumps(report, indent=1))
        # Skip interpreter finalization: the SDK's core threads may still hold the GIL machinery, which can
        # abort at exit ("PyGILState_Release ... finalizing") after all the work is done.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


async def _serve_worker(spec: WorkerSpec, ready: Any, stop: Any, runner: ProfilingRunner | None = None) -> None:
    runtime = None
    if spec.metrics_port:
        runtime = Runtime(
            telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"127.0.0.1:{spec.metrics_port}"))
        )
    client = encrypting(await Client.connect(
        spec.target, namespace=spec.namespace, data_converter=pydantic_data_converter, runtime=runtime
    ), spec.payload_keys)
    parent = os.getppid()
    options = dict(spec.options)
    if runner is not None:
        options["workflow_runner"] = runner
    elif spec.sandbox is not None:
        from temporalio.worker import UnsandboxedWorkflowRunner

        options["workflow_runner"] = SandboxedWorkflowRunner() if spec.sandbox else UnsandboxedWorkflowRunner()
    async with http_client_for(spec.kind) as http:
        async with build_bench_worker(spec.kind, client, http, spec.task_queue, spec.channel_url, options,
                                      ai_url=spec.ai_url):
            ready.set()
            while not stop.is_set() and os.getppid() == parent:
                await asyncio.sleep(0.1)


class WorkerProcess:
    """`async with WorkerProcess(spec) as w:` runs one worker in a fresh process until the block ends."""

    def __init__(self, spec: WorkerSpec) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.spec = spec
        self.ready = ctx.Event()
        self.stop = ctx.Event()
        self.proc = ctx.Process(target=_worker_process_main, args=(spec, self.ready, self.stop), daemon=True,
                                name=f"bench-worker-{spec.kind}")
        self.ps: psutil.Process | None = None

    @property
    def metrics_url(self) -> str | None:
        return f"http://127.0.0.1:{self.spec.metrics_port}/metrics" if self.spec.metrics_port else None

    async def __aenter__(self) -> WorkerProcess:
        self.proc.start()
        try:
            deadline = time.monotonic() + 60
            while not self.ready.is_set():
                if not self.proc.is_alive():
                    raise RuntimeError(f"the {self.spec.kind} worker process exited with {self.proc.exitcode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {self.spec.kind} worker process did not start within 60s")
                await asyncio.sleep(0.05)
            self.ps = psutil.Process(self.proc.pid)
        except BaseException:
            await asyncio.shield(self._stop())
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self._stop())

    async def _stop(self) -> None:
        self.stop.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.proc.join, 30)
        if self.proc.is_alive():
            self.proc.terminate()
            await loop.run_in_executor(None, self.proc.join, 5)
        if self.proc.is_alive():
            self.proc.kill()
            await loop.run_in_executor(None, self.proc.join, 5)


# ---- workflow histories -------------------------------------------------------------------------------------


async def run_history_stats(client: Client, wid: str, run_id: str) -> dict[str, Any]:
    """Event count and size of one run: the server's own accounting (describe) and the fetched events."""
    handle = client.get_workflow_handle(wid, run_id=run_id)
    desc = await handle.describe()
    info = desc.raw_description.workflow_execution_info
    history = await handle.fetch_history()
    return {
        "run_id": run_id,
        "status": desc.status.name if desc.status else None,
        "events": len(history.events),
        "bytes_events_serialized": sum(e.ByteSize() for e in history.events),
        # The run's input: for a run made by continue-as-new, the state carried over.
        "first_event_bytes": history.events[0].ByteSize() if history.events else None,
        "server_history_length": info.history_length,
        "server_history_size_bytes": info.history_size_bytes,
    }


# ---- a receiver that keeps every message, and Baton's own processes (added for bench/desk_load) ----------------


class RecordingReceiver(LoopbackReceiver):
    """A LoopbackReceiver that also keeps every delivered message as it came (duplicates included, in arrival
    order) with its arrival time (perf_counter), and wakes whoever waits for a given message_id."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict[str, Any]] = []
        self._arrivals: dict[str, list[float]] = {}
        self._id_waiters: dict[str, asyncio.Future[None]] = {}

    def _record(self, body: bytes, at: float) -> int:
        try:
            msg = json.loads(body)
        except ValueError:
            msg = None
        if isinstance(msg, dict):
            mid = msg.get("message_id")
            self.messages.append({
                "conversation_id": msg.get("conversation_id"), "seq": msg.get("seq"), "message_id": mid,
                "role": msg.get("role"), "author": msg.get("author"), "text": msg.get("text"), "arrived": at,
            })
            if isinstance(mid, str):
                self._arrivals.setdefault(mid, []).append(at)
                waiter = self._id_waiters.pop(mid, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
        return super()._record(body, at)

    def arrivals(self, message_id: str) -> list[float]:
        return self._arrivals.get(message_id, [])

    async def wait_message(self, message_id: str, timeout: float) -> float | None:
        """Arrival time of the first delivery of `message_id`, or None if it did not come within `timeout`."""
        if not self._arrivals.get(message_id):
            waiter = self._id_waiters.get(message_id)
            if waiter is None or waiter.done():
                waiter = self._id_waiters[message_id] = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(waiter), timeout)
            except TimeoutError:
                return None
        return self._arrivals[message_id][0]


BATON_CLI = Path(sys.executable).parent / "baton"


@dataclass
class BatonProcess:
    part: str
    process: asyncio.subprocess.Process
    ps: psutil.Process | None
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def baton_env(server: DevServer, **settings: str) -> dict[str, str]:
    """The environment of a `baton worker` / `baton api` against the bench's dev server: this process's
    environment without any BATON_* / TEMPORAL_* variable, then the dev server's address and `settings`
    (e.g. BATON_HOME=..., BATON_TASK_QUEUE=...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATON_", "TEMPORAL_"))}
    env.update({"TEMPORAL_ADDRESS": server.target, "TEMPORAL_NAMESPACE": server.namespace})
    env.update(settings)
    return env


@contextlib.asynccontextmanager
async def baton_process(part: str, env: dict[str, str], log_path: Path) -> AsyncIterator[BatonProcess]:
    """`baton worker` or `baton api` (the installed command, settings from the environment as in production)
    in its own process and session, output to `log_path`; stopped with SIGTERM (its graceful stop) when the
    block ends, killed if it has not exited 20 s later."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed below, after the process
    try:
        proc = await asyncio.create_subprocess_exec(
            str(BATON_CLI), part, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    except BaseException:
        log.close()
        raise
    ps = None
    with contextlib.suppress(psutil.Error):
        ps = psutil.Process(proc.pid)
    try:
        yield BatonProcess(part, proc, ps, log_path)
    finally:
        async def stop() -> None:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()

        try:
            await asyncio.shield(stop())
        finally:
            log.close()


async def wait_http_ok(url: str, timeout: float = 60, proc: BatonProcess | None = None) -> None:
    """Poll `url` until it answers 200 (e.g. the API's /healthz); fail early if `proc` exits meanwhile."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=3) as http:
        while True:
            if proc is not None and proc.process.returncode is not None:
                raise RuntimeError(f"`baton {proc.part}` exited with {proc.process.returncode}:\n{proc.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                tail = proc.log_tail() if proc is not None else ""
                raise RuntimeError(f"{url} did not answer 200 within {timeout}s\n{tail}")
            await asyncio.sleep(0.1)


def distribution(values_ms: Sequence[float], digits: int = 1, points: Sequence[int] = (50, 95, 99)) -> dict[str, Any]:
    """n, min, the percentiles `points` (p50, p95, p99 by default) and max of a list of values (milliseconds, say)."""
    return {
        "n": len(values_ms),
        "min": rnd(min(values_ms) if values_ms else None, digits),
        **{f"p{p}": rnd(percentile(values_ms, p), digits) for p in points},
        "max": rnd(max(values_ms) if values_ms else None, digits),
    }


def code_fingerprint(packages: Sequence[str] = ("workflows", "activities", "models", "workers", "api")) -> str:
    """A short hash of the measured packages' Python sources as they are on disk now. The workflow sandbox
    re-imports workflow modules from disk for every new workflow instance (and every replay), so a source
    edited during a run changes what the run measures: compare the fingerprint before and after."""
    import hashlib

    repo = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for package in packages:
        for path in sorted((repo / package).rglob("*.py")):
            with contextlib.suppress(OSError):
                h.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


# ---- a receiver that keeps every delivery's headers (added for bench/worker_crash) ----------------------------


class HeaderRecordingReceiver(LoopbackReceiver):
    """A LoopbackReceiver that also keeps every delivery as it came (duplicates included, in arrival order): its
    arrival time (perf_counter, stamped when the bytes are read), its headers (lower-case names: `webhook-id`...)
    and its JSON body. `on_delivery(record)`, when set, is called for each one as it arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.deliveries: list[dict[str, Any]] = []
        self.on_delivery: Callable[[dict[str, Any]], None] | None = None

    def _record_request(self, body: bytes, headers: dict[str, str], at: float) -> int:
        try:
            msg = json.loads(body)
        except ValueError:
            msg = None
        record = {"arrived": at, "headers": headers, "body": msg if isinstance(msg, dict) else None}
        self.deliveries.append(record)
        if self.on_delivery is not None:
            self.on_delivery(record)
        return self._record(body, at)
