"""Metrics (README, "Metrics and readiness"): one Prometheus text per process, the Temporal SDK's own metrics and
Baton's (models.metrics), served at `/metrics` on the API and, with `BATON_METRICS_PORT`, on the worker.

Every Baton process runs its Temporal client on an SDK runtime that exports Prometheus on a loopback port of its own
(`sdk_runtime`); Baton's counters and histograms go through the SDK's metric meter (workflow code and activities),
so they are in that export too. The public `/metrics` reads it and adds what is computed when asked (conversations
waiting per queue, from the event stream's store)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from temporalio import activity
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from models import metrics
from models.names import Activities

log = logging.getLogger("baton.metrics")
# The content type of `/metrics` (Prometheus' text format).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The activities that deliver something to someone, and how their result says how it went.
DELIVERIES = {
    Activities.DELIVER_TO_CHANNEL: "channel",
    Activities.DELIVER_HANDOFF: "handoff",
    Activities.FORWARD_TO_AGENT: "forward",
    Activities.DELIVER_TO_PEER: "peer",
    Activities.DELIVER_TO_THIRD_PARTY_DESK: "desk_handoff",
    Activities.FORWARD_TO_THIRD_PARTY_DESK: "desk_forward",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sdk_runtime() -> tuple[Runtime, str]:
    """A Temporal SDK runtime exporting Prometheus on a free loopback port, and that export's URL. Counters carry
    the `_total` suffix (baton_handoffs_total)."""
    port = _free_port()
    runtime = Runtime(telemetry=TelemetryConfig(
        metrics=PrometheusConfig(bind_address=f"127.0.0.1:{port}", counters_total_suffix=True)))
    return runtime, f"http://127.0.0.1:{port}/metrics"


async def scrape(url: str | None) -> str:
    """The SDK's export (empty when there is none or it cannot be read: `/metrics` still shows Baton's gauges)."""
    if not url:
        return ""
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=3) as http:
            r = await http.get(url)
            r.raise_for_status()
            return r.text
    except httpx.HTTPError as err:
        log.warning("the SDK's metrics could not be read: %s", type(err).__name__)
        return ""


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def waiting_text(counts: dict[str, int]) -> str:
    """baton_conversations_waiting{queue} as Prometheus text."""
    lines = [f"# HELP {metrics.WAITING} conversations waiting for a person, per queue (the event stream's store)",
             f"# TYPE {metrics.WAITING} gauge"]
    lines += [f'{metrics.WAITING}{{queue="{_label(q)}"}} {n}' for q, n in sorted(counts.items())]
    return "\n".join(lines) + "\n"


class _Counting(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        name = activity.info().activity_type
        kind = DELIVERIES.get(name)
        if kind is None and name != Activities.FILTER_CONTEXT:
            return await super().execute_activity(input)
        meter = activity.metric_meter()
        try:
            result = await super().execute_activity(input)
        except BaseException:
            if kind is not None:
                meter.create_counter(metrics.DELIVERIES, "deliveries by kind and outcome").add(
                    1, {"kind": kind, "outcome": "error"})
            raise
        if kind is not None:
            outcome = getattr(result, "outcome", None)
            if outcome is None:  # a handoff envelope's answer: accepted or not
                outcome = "accepted" if getattr(result, "accepted", False) else "rejected"
            meter.create_counter(metrics.DELIVERIES, "deliveries by kind and outcome").add(
                1, {"kind": kind, "outcome": str(outcome)})
        else:
            counter = meter.create_counter(metrics.REDACTIONS, "values the context filter redacted or withheld")
            for entry in getattr(result, "receipt", []):
                counter.add(1, {"kind": redaction_kind(entry.reason)})
        return result


def redaction_kind(reason: str) -> str:
    """A receipt's reason as a bounded label: the kind for redactions (card, iban, national_id, ...), else why."""
    from activities.filtering import NEVER_LEAVES, NOT_ALLOWED, REASONS, SECRET_KEY, TOO_DEEP

    for kind, text in REASONS.items():
        if reason.startswith(text):
            return kind
    return {NEVER_LEAVES: "never_leaves", SECRET_KEY: "secret_key", NOT_ALLOWED: "not_allowed",
            TOO_DEEP: "too_deep"}.get(reason, "other")


class CountOutcomes(Interceptor):
    """baton_deliveries_total{kind,outcome} at the end of each delivery activity (an error is counted per attempt:
    the retries show), baton_redactions_total{kind} for each entry of the context filter's receipt."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Counting(next)


async def render(sdk_url: str | None, waiting: Callable[[], Awaitable[dict[str, int]]] | None) -> str:
    text = await scrape(sdk_url)
    if waiting is not None:
        try:
            text += waiting_text(await waiting())
        except Exception as err:  # noqa: BLE001 - the store is a courtesy here
            log.warning("waiting counts not read: %s", type(err).__name__)
    return text
