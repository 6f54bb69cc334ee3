"""OpenTelemetry traces (README, "Metrics and readiness"), on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set: each HTTP
request to the API is a server span (FastAPI's own telemetry, once a tracer provider is installed here); the
Temporal SDK's tracing interceptor (`temporalio.contrib.opentelemetry`)
carries its context in the headers of what the request starts, signals or updates, so the workflow's spans and each
activity's span (in the worker process) join the same trace. Spans are sent over OTLP/HTTP by the SDK's exporter,
which reads the standard `OTEL_*` variables (endpoint, headers, `OTEL_SERVICE_NAME`).

Spans name routes by their template (`POST /v1/conversations/{conversation_id}/messages`) and carry ids, never a
request's body: no message text or context value reaches the collector."""

from __future__ import annotations

import os
from typing import Any

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
_state: dict[str, Any] = {}


def enabled() -> bool:
    return bool(os.environ.get(ENDPOINT))


def setup(service: str) -> list[Any]:
    """Install the tracer provider for this process (once) and return the client interceptors to connect with;
    [] when tracing is off. `service`: this process's name unless OTEL_SERVICE_NAME says otherwise."""
    if not enabled():
        return []
    if "interceptor" not in _state:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from temporalio.contrib.opentelemetry import TracingInterceptor

        provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=500))
        trace.set_tracer_provider(provider)
        _state["provider"] = provider
        _state["interceptor"] = TracingInterceptor()
    return [_state["interceptor"]]


def shutdown() -> None:
    """Send what is buffered (a stopping process)."""
    provider = _state.get("provider")
    if provider is not None:
        provider.shutdown()
