"""The `baton` command: `dev` (everything on one machine), `worker`, `api`, `keys`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import uvicorn

from activities import sealing, webhooks
from api.readiness import Readiness
from api.serve import EmbeddedServer
from models.names import Routes
from runtime import codec, logs, metrics, routing_config, tracing
from runtime.settings import KEYS_FILE, Settings, ensure_dev_keys, read_keys_file

log = logging.getLogger("baton")


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve_worker(
    settings: Settings, client, stop: asyncio.Event, config=None, readiness: Readiness | None = None,
    metrics_url: str | None = None,
) -> None:
    from workers.worker import build_worker, http_client, registry_opener

    # With BATON_METRICS_PORT: the worker's own /metrics, /readyz and /healthz (workers/ops.py).
    own = Readiness("worker") if settings.metrics_port else None
    ops = None
    if own is not None:
        from workers.ops import ops_app

        registry = registry_opener(settings)
        opened: list = []

        def store_check() -> None:
            """The registry when this worker can open secrets; else that the store answers at all (a worker
            without BATON_SECRET_KEY still runs conversations that hand off to nobody outside)."""
            if settings.secret_key:
                registry().list()
                return
            from activities import database
            import sqlalchemy as sa

            if not opened:
                opened.append(database.engine_for(settings.database_url or database.default_url(settings.home)))
            with opened[0].connect() as db:
                db.execute(sa.text("SELECT 1"))

        ops = EmbeddedServer(uvicorn.Config(
            ops_app(client, own, store_check, metrics_url), host=settings.api_host,
            port=settings.metrics_port, log_level="warning", log_config=None))
        serving = asyncio.create_task(ops.serve())
    try:
        async with http_client() as http:
            worker = build_worker(client, settings, http, config=config)
            async with worker:
                log.info("worker polling task queue %r", settings.task_queue)
                for steps in (readiness, own):
                    if steps is not None:
                        steps.done("worker")
                await stop.wait()
    finally:
        if ops is not None:
            ops.should_exit = True
            await serving


async def _serve_api(
    settings: Settings, client, stop: asyncio.Event, routing=None, readiness: Readiness | None = None,
    metrics_url: str | None = None,
) -> None:
    from api.app import create_app

    config = uvicorn.Config(
        create_app(settings, client, config=routing, readiness=readiness, metrics_url=metrics_url), host=settings.api_host,
        port=settings.api_port,
        # Uvicorn's loggers go through the root logger's format (BATON_LOG_FORMAT).
        log_level="warning", log_config=None, timeout_graceful_shutdown=API_SHUTDOWN_SECONDS,
    )
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve())
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    await task
    stopped.cancel()
    if not server.started:
        raise SystemExit(f"baton: the API could not listen on {settings.api_host}:{settings.api_port}")


async def _run_parts(
    settings: Settings, client, parts: list[str], stop: asyncio.Event, config=None, readiness: Readiness | None = None,
    metrics_url: str | None = None,
) -> None:
    # Stopping both in one process: the API first (it stops taking requests and finishes those in flight, which
    # may wait on the worker: an update needs a workflow task), then the worker (it drains its activities). The
    # other order left a request waiting forever on a worker that no longer polled, and the process never exited.
    worker_stop = asyncio.Event() if "api" in parts else stop
    tasks = []
    api = None
    if "worker" in parts:
        tasks.append(asyncio.create_task(_serve_worker(settings, client, worker_stop, config, readiness, metrics_url)))
    if "api" in parts:
        api = asyncio.create_task(_serve_api(settings, client, stop, config, readiness, metrics_url))
        tasks.append(api)
    try:
        # Any part ending (a stop, or an error) ends them all.
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            t.result()
    finally:
        stop.set()
        if api is not None:
            await asyncio.gather(api, return_exceptions=True)
        worker_stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _dev(args: argparse.Namespace) -> None:
    from workers.devserver import DevServer
    from runtime.temporal import connect

    settings = Settings.from_env()
    if args.home:
        settings.home = Path(args.home)
    if args.api_port:
        settings.api_port = args.api_port
    if "BATON_PUBLIC_URL" not in os.environ:
        settings.public_url = f"http://{settings.api_host}:{settings.api_port}"
    settings, keys = ensure_dev_keys(settings)
    settings.check(api=True)
    # The documented example config is the embedded default's routing (when run from a checkout).
    if settings.config is None and DEMO_CONFIG.exists():
        settings.config = DEMO_CONFIG
    config = routing_config.load(settings)
    settings = routing_config.apply_timeouts(settings, config)
    # The demo hands technical problems to this install's own `tech-support` agent over loopback, which the
    # outbound rule (public addresses only) would refuse; set BATON_ALLOW_PRIVATE_NETWORKS=0 to keep the rule.
    os.environ.setdefault("BATON_ALLOW_PRIVATE_NETWORKS", "1")
    if settings.demo_tech_agent is None and settings.ai_agent == "demo":
        settings.demo_tech_agent = DEMO_AGENT
    # The demo chat page (/chat) is part of the embedded default; BATON_DEMO_PAGES=0 turns it off.
    if "BATON_DEMO_PAGES" not in os.environ:
        settings.demo_pages = True
    stop = _stop_event()
    ui_port = None if args.no_ui else args.ui_port
    codec_endpoint = None
    if os.environ.get(codec.ENV) and ui_port:
        # Encrypted history: the embedded UI decodes it through this API's /codec, once an operator signs in there.
        # One host name for both (the session cookie is the API host's, sent only to that host and only from the
        # same site: the UI at localhost, not 127.0.0.1).
        codec_endpoint = f"http://localhost:{settings.api_port}/codec"
        if not settings.codec_cors_origins:
            settings.codec_cors_origins = f"http://localhost:{ui_port}"
    server = DevServer(settings.home, port=args.temporal_port, ui_port=ui_port, codec_endpoint=codec_endpoint)
    await server.start()
    try:
        runtime, metrics_url = metrics.sdk_runtime()
        client = await connect(server.address, "default", runtime=runtime, service="baton-dev")
        # Nothing is announced before it works: the banner waits for /readyz, which waits for the worker to poll
        # and for the demo agent's Verify & Save (a message sent at once is then routed to tech-support).
        demo = settings.demo_tech_agent == DEMO_AGENT
        readiness = Readiness("worker", *(["demo"] if demo else []))
        parts = asyncio.create_task(_run_parts(settings, client, ["worker", "api"], stop, config, readiness,
                                                       metrics_url))
        helpers = [asyncio.create_task(_connect_demo_agent(settings, readiness))] if demo else []
        announce = asyncio.create_task(_announce_when_ready(settings, server, keys, parts, stop))
        try:
            await parts
        finally:
            for task in (*helpers, announce):
                task.cancel()
            await asyncio.gather(*helpers, announce, return_exceptions=True)
        if announce.done() and not announce.cancelled() and announce.result() is not None:
            raise SystemExit(f"baton: not ready after {READY_WITHIN} s: {announce.result()}")
    finally:
        server.stop()
        print("baton: stopped", flush=True)


DEMO_AGENT = "tech-support"
DEMO_CONFIG = Path("config/baton.yaml")


async def _connect_demo_agent(settings: Settings, readiness: Readiness) -> None:
    """The embedded demo's second platform is this one: a local agent `tech-support`, connected as an external
    agent through the real Verify & Save route over loopback, once the API is listening. `/readyz` (and so the
    banner) waits for it."""
    from activities.registry import open_registry

    api = f"http://{settings.api_host}:{settings.api_port}"
    registry = await asyncio.to_thread(open_registry, settings.database_url, settings.home, settings.secret_key or "")
    try:
        if registry.local(DEMO_AGENT) is None:
            registry.create_local(DEMO_AGENT, DEMO_AGENT)
        external = registry.external(DEMO_AGENT)
        if external is not None and external[0].domain == settings.public_url.rstrip("/"):
            readiness.done("demo")
            return
        secret = registry.verifying_secrets(DEMO_AGENT)[0]
    finally:
        registry.close()
    readiness.waiting("demo", f"connecting the demo agent {DEMO_AGENT!r} (Verify & Save over loopback)")
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        for attempt in range(1, DEMO_ATTEMPTS + 1):
            try:
                if (await http.get("/healthz")).status_code != 200:
                    raise httpx.HTTPError("not listening yet")
                r = await http.post(
                    "/v1/admin/agents/external",
                    json={"agent_id": DEMO_AGENT, "secret": secret, "domain": settings.public_url},
                    headers={"Authorization": f"Bearer {settings.admin_key}"},
                )
            except httpx.HTTPError:
                await asyncio.sleep(0.2)
                continue
            if r.status_code == 201:
                log.info("demo: connected external agent %r at %s (Verify & Save over loopback)", DEMO_AGENT, settings.public_url)
                readiness.done("demo")
                return
            why = f"Verify & Save of {DEMO_AGENT!r} answered {r.status_code}: {r.text[:200]}"
            readiness.waiting("demo", why)
            log.warning("demo: %s (attempt %d of %d)", why, attempt, DEMO_ATTEMPTS)
            await asyncio.sleep(1)


DEMO_ATTEMPTS = 100
API_SHUTDOWN_SECONDS = 10  # requests still running this long after a stop are cancelled
READY_WITHIN = 120  # seconds `baton dev` waits for /readyz before it gives up


async def _announce_when_ready(
    settings: Settings, server, keys: dict[str, str], parts: asyncio.Task, stop: asyncio.Event
) -> str | None:
    """Print the banner once `/readyz` answers 200 over real HTTP; stop everything if it never does (the answer
    is then what was still missing)."""
    api = f"http://{settings.api_host}:{settings.api_port}"
    last = "no answer"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_WITHIN
    async with httpx.AsyncClient(base_url=api, timeout=5) as http:
        while loop.time() < deadline and not parts.done():
            try:
                r = await http.get(Routes.READYZ)
                if r.status_code == 200:
                    _banner(settings, server, keys)
                    return None
                last = r.text[:500]
            except httpx.HTTPError as err:
                last = type(err).__name__
            await asyncio.sleep(0.1)
    log.error("baton: not ready after %d s (%s); stopping", READY_WITHIN, last)
    stop.set()
    return last


def ai_agent_label(settings: Settings) -> str:
    """The AI agent as the banner shows it: never a key, never credentials in a URL."""
    if settings.ai_agent == "openai":
        parts = urlsplit(settings.openai_base_url)
        return f"openai: model {settings.ai_model} at {parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
    if settings.ai_agent == "demo":
        return "demo"
    parts = urlsplit(settings.ai_agent)
    return f"webhook: {parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def _banner(settings: Settings, server, keys: dict[str, str]) -> None:
    api = f"http://{settings.api_host}:{settings.api_port}"
    ui = f"http://localhost:{server.ui_port}" if server.ui_port else "disabled (--no-ui)"
    channel = settings.channel_url or "not set (BATON_CHANNEL_URL): the transcript is the record"
    history = (
        f"  History     encrypted (BATON_PAYLOAD_KEYS): for the Web UI to read it, sign in at"
        f" {server.codec_endpoint}/sign-in\n"
        f"              with BATON_ADMIN_KEY, then in the UI's Codec Server settings use your browser setting\n"
        f"              {server.codec_endpoint} and turn on \"Include cross-origin credentials\"\n"
    ) if server.codec_endpoint else ""
    print(
        f"""
Baton is running (Ctrl-C stops everything).
  API         {api}   (OpenAPI: {api}/docs)
  Console     {api}/console   (live agents sign in with their token)
  Chat        {f"{api}/chat   (the demo user's side; one conversation per browser tab)" if settings.demo_pages else "off (BATON_DEMO_PAGES=0)"}
  Temporal    {server.address}   (Web UI: {ui})
{history}  Data        {server.home / 'temporal.db'}
  Channel     {channel}
  Routing     {settings.config or "built-in default (every handoff to queue 'general')"}
  AI agent    {ai_agent_label(settings)}{f"   (technical problems go to {settings.demo_tech_agent!r} over the platform protocol)" if settings.demo_tech_agent else ""}
  Keys        {settings.home / 'keys.env'}
    BATON_API_KEY={keys['BATON_API_KEY']}
    BATON_ADMIN_KEY={keys['BATON_ADMIN_KEY']}
    BATON_CHANNEL_SECRET={keys['BATON_CHANNEL_SECRET']}

Try:
  curl -s -X POST {api}/v1/conversations/demo-1/messages \\
    -H "Authorization: Bearer {keys['BATON_API_KEY']}" -H 'content-type: application/json' \\
    -d '{{"message_id": "m1", "text": "Hello!"}}'
  curl -s {api}/v1/conversations/demo-1/transcript -H "Authorization: Bearer {keys['BATON_API_KEY']}"
  Then say "The app crashes with an error" (tech-support takes over) or "I want to talk to a human".
""",
        flush=True,
    )


async def _component(parts: list[str]) -> None:
    from runtime.temporal import connect

    settings = Settings.from_env()
    settings.check(api="api" in parts)
    config = routing_config.load(settings)
    settings = routing_config.apply_timeouts(settings, config)
    stop = _stop_event()
    runtime, metrics_url = metrics.sdk_runtime()
    client = await connect(runtime=runtime, service="baton-" + "-".join(parts))
    await _run_parts(settings, client, parts, stop, config, metrics_url=metrics_url)


def _agents(args: argparse.Namespace) -> int:
    """A thin client of the admin routes, so Verify & Save runs in one place: the API."""
    import httpx

    settings = Settings.from_env()
    admin_key = settings.admin_key or read_keys_file(settings.home / KEYS_FILE).get("BATON_ADMIN_KEY")
    if not admin_key:
        raise SystemExit("baton: set BATON_ADMIN_KEY (or run `baton dev` once to generate .baton/keys.env)")
    api = args.api or os.environ.get("BATON_API_URL") or f"http://{settings.api_host}:{settings.api_port}"
    http = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
    if args.action == "create":
        r = http.post("/v1/admin/agents/local", json={"name": args.name})
    elif args.action == "connect":
        secret = args.secret if args.secret != "-" else sys.stdin.readline().strip()
        r = http.post("/v1/admin/agents/external", json={"agent_id": args.agent_id, "secret": secret, "domain": args.domain})
    elif args.action == "rotate":
        r = http.post(f"/v1/admin/agents/{args.agent_id}/rotate")
    elif args.action == "remove":
        r = http.delete(f"/v1/admin/agents/{args.agent_id}")
    else:
        r = http.get("/v1/admin/agents")
    if r.status_code >= 400:
        detail = r.json().get("detail") if r.headers.get("content-type", "").startswith("application/json") else r.text
        print(f"baton: {r.status_code}: {detail}", file=sys.stderr)
        return 1
    if r.status_code != 204:
        print(json.dumps(r.json(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="baton", description="Conversation handoff orchestrator on Temporal.")
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="everything on one machine: Temporal dev server (SQLite), worker, API, demo AI")
    dev.add_argument("--home", help="state folder (default .baton, or BATON_HOME)")
    dev.add_argument("--temporal-port", type=int, default=7233)
    dev.add_argument("--ui-port", type=int, default=8233)
    dev.add_argument("--no-ui", action="store_true", help="run the dev server headless")
    dev.add_argument("--api-port", type=int, help="API port (default 8000, or BATON_API_PORT)")
    sub.add_parser("worker", help="the Temporal worker, against TEMPORAL_ADDRESS")
    sub.add_parser("api", help="the HTTP API, against TEMPORAL_ADDRESS")
    sub.add_parser("keys", help="print freshly generated keys for a production .env")
    store = sub.add_parser("store", help="Baton's store (BATON_DATABASE_URL)")
    store_actions = store.add_subparsers(dest="action", required=True)
    copy = store_actions.add_parser("copy", help="copy every row of one store into another (e.g. SQLite to PostgreSQL)")
    copy.add_argument("--from", dest="source", help="the store to read (default: BATON_DATABASE_URL, else "
                                                      "sqlite:///$BATON_HOME/baton.db)")
    copy.add_argument("--to", dest="target", required=True, help="the store to write, e.g. postgresql://user@host/baton")
    copy.add_argument("--stream-from", dest="stream_source",
                      help="the event stream's store to copy what lasts of (waiting conversations, ratings, wrap-up "
                           "codes) from, e.g. sqlite:////home/baton/.baton/stream.db (default: a PostgreSQL source's "
                           "own, else <BATON_HOME>/stream.db)")
    agents = sub.add_parser("agents", help="manage agents through the running API (admin key)")
    agents.add_argument("--api", help="API base URL (default BATON_API_URL, else http://BATON_API_HOST:BATON_API_PORT)")
    actions = agents.add_subparsers(dest="action", required=True)
    actions.add_parser("create", help="a local agent other platforms can hand off to; prints its secret once").add_argument("name")
    connect = actions.add_parser("connect", help="Verify & Save an agent on another platform")
    connect.add_argument("agent_id")
    connect.add_argument("--secret", required=True, help="the whsec_ secret it shared ('-' reads it from stdin)")
    connect.add_argument("--domain", required=True, help="the other platform's base URL")
    actions.add_parser("list", help="all agents, never their secrets")
    actions.add_parser("rotate", help="new secret for a local agent; the old one verifies for 7 days").add_argument("agent_id")
    actions.add_parser("remove", help="delete an agent").add_argument("agent_id")
    args = parser.parse_args(argv)
    logs.configure(os.environ.get("BATON_LOG_FORMAT"))
    try:
        if args.command == "agents":
            sys.exit(_agents(args))
        if args.command == "dev":
            asyncio.run(_dev(args))
        elif args.command == "store":
            from activities import database
            from activities.stream import stream_path

            settings = Settings.from_env()
            source = args.source or settings.database_url or database.default_url(settings.home)
            # The event stream's store that goes with it: as given; a PostgreSQL source's own; else this install's
            # (`<BATON_HOME>/stream.db`, where every SQLite install keeps it).
            here = stream_path(settings.home)
            stream = args.stream_source or (source if database.is_postgres(source) else
                                            f"sqlite:///{here}" if here.exists() else None)
            try:
                copied = database.copy(source, args.target, stream)
            except FileNotFoundError as err:
                raise SystemExit(f"baton store copy: {err} (--stream-from)") from None
            print(json.dumps({"copied": copied}))
        elif args.command == "keys":
            print(f"BATON_SECRET_KEY={sealing.new_key()}")
            print(f"BATON_CHANNEL_SECRET={webhooks.generate_secret()}")
            print(f"BATON_API_KEY=bk_{secrets.token_urlsafe(24)}")
            print(f"BATON_ADMIN_KEY=ba_{secrets.token_urlsafe(24)}")
            print(f"# Optional: encrypt workflow history (README, \"Encrypted history\")\n#{codec.ENV}={codec.new_keys_value()}")
        else:
            asyncio.run(_component([args.command]))
    except KeyboardInterrupt:
        pass
    finally:
        tracing.shutdown()  # spans still buffered are sent
    sys.exit(0)
