"""OpenTelemetry traces (runtime.tracing): with OTEL_EXPORTER_OTLP_ENDPOINT set, a real `baton api` and a real
`baton worker` process send spans over OTLP/HTTP to a loopback collector (a fake: the collector is someone else's),
and one user message makes one trace from the HTTP request through the workflow to the AI agent's activity and the
channel delivery, across both processes. No message text or context value is in any span."""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.serve import EmbeddedServer
from devkit.temporal import free_port
from tests.harness import baton_env, eventually, settings_for, stop_processes

BATON = Path(sys.executable).parent / "baton"
CANARY = "CANARY-OTEL-7c2e"


class Collector:
    """An OTLP/HTTP traces endpoint on loopback that keeps every span it is sent (decoded)."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.raw = b""
        self.port = free_port()

    async def traces(self, request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.raw += body
        message = ExportTraceServiceRequest.FromString(body)
        for resource in message.resource_spans:
            service = next((a.value.string_value for a in resource.resource.attributes if a.key == "service.name"), "")
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.spans.append({"service": service, "name": span.name, "trace": span.trace_id.hex(),
                                       "id": span.span_id.hex(), "parent": span.parent_span_id.hex()})
        return Response(ExportTraceServiceRequest().SerializeToString(), media_type="application/x-protobuf")

    async def __aenter__(self) -> Collector:
        app = Starlette(routes=[Route("/v1/traces", self.traces, methods=["POST"])])
        self.server = EmbeddedServer(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.task = asyncio.create_task(self.server.serve())
        await self.server.ready.wait()
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.should_exit = True
        await self.task


def spawn(part: str, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BATON), part], env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


async def test_one_message_is_one_trace_from_the_http_request_to_the_activities(dev_env, task_queue, channel, tmp_path):
    settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret)
    api_port = free_port()
    procs: list[subprocess.Popen] = []
    async with Collector() as collector:
        env = baton_env(dev_env.client, settings, BATON_API_PORT=str(api_port),
                        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.port}")
        try:
            procs.append(spawn("worker", env, tmp_path / "worker.log"))
            procs.append(spawn("api", env, tmp_path / "api.log"))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", trust_env=False, timeout=30,
                                         headers={"Authorization": f"Bearer {settings.api_key}"}) as http:
                async def ready():
                    for p, name in zip(procs, ("worker", "api"), strict=True):
                        assert p.poll() is None, (tmp_path / f"{name}.log").read_text(errors="replace")[-2000:]
                    return (await http.get("/readyz")).status_code == 200
                await eventually(ready, timeout=60)
                cid = f"otel-{uuid.uuid4().hex[:8]}"
                # The request that starts the conversation: the workflow's run, and so every activity its loop
                # runs, is in this request's trace.
                r = await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": "u1", "text": CANARY})
                assert r.status_code == 202, r.text
                await channel.wait_count(1, timeout=30)
                r = await http.put(f"/v1/conversations/{cid}/context", json={"profile": {"note": CANARY}})
                assert r.status_code == 200, r.text

                def trace_of_the_message() -> list[dict] | None:
                    roots = [s for s in collector.spans if s["name"] == "POST /v1/conversations/{conversation_id}/messages"]
                    for root in roots:
                        spans = [s for s in collector.spans if s["trace"] == root["trace"]]
                        names = {s["name"] for s in spans}
                        if {"RunActivity:ai_respond", "RunActivity:deliver_to_channel"} <= names:
                            return spans
                    return None

                async def traced():
                    return trace_of_the_message()
                try:
                    spans = await eventually(traced, timeout=20)
                except AssertionError:
                    raise AssertionError(sorted({(s['service'], s['name'], s['trace'][:6]) for s in collector.spans}))
        finally:
            stop_processes(*procs)
        by_id = {s["id"]: s for s in spans}
        services = {s["service"] for s in spans}
        assert services == {"baton-api", "baton-worker"}, services
        # Each activity's span descends from the HTTP request's (through the client call and the workflow's).
        root = next(s for s in spans if s["name"].startswith("POST "))
        for name in ("RunActivity:ai_respond", "RunActivity:deliver_to_channel"):
            span, chain = next(s for s in spans if s["name"] == name), []
            while span["parent"] and span["parent"] in by_id:
                span = by_id[span["parent"]]
                chain.append(span["name"])
            assert span is root, (name, chain)
        assert any(n.startswith(("SignalWithStartWorkflow", "StartWorkflow")) for n in {s["name"] for s in spans})
        assert CANARY.encode() not in collector.raw and cid.encode() not in b"".join(
            s["name"].encode() for s in spans)
