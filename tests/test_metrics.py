"""Metrics and readiness (runtime.metrics, workers/ops.py): a real `baton worker` process with BATON_METRICS_PORT
answers /readyz once it polls and /metrics with the Temporal SDK's metrics and Baton's own (handoffs by rule, target
kind and outcome, the wait to an accept, deliveries, redactions), counted from a real walk through the API; the API's
/metrics has the conversations waiting per queue."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from devkit.temporal import free_port
from tests.harness import baton_api, baton_env, eventually, settings_for, stop_processes

BATON = Path(sys.executable).parent / "baton"
ADMIN = {"Authorization": "Bearer ba_test_admin"}
LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric `name` in Prometheus text: (labels, value)."""
    found = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m and m.group(1) == name:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            found.append((labels, float(m.group(3))))
    return found


def total(text: str, name: str, **want: str) -> float:
    return sum(v for labels, v in samples(text, name) if all(labels.get(k) == x for k, x in want.items()))


async def test_the_worker_and_the_api_report_readiness_and_metrics(dev_env, task_queue, channel, tmp_path):
    settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret)
    port = free_port()
    env = baton_env(dev_env.client, settings, BATON_METRICS_PORT=str(port), BATON_LOG_FORMAT="json")
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([str(BATON), "worker"], env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    ops = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10)
    try:
        async def ready():
            assert worker.poll() is None, log.read_text(errors="replace")[-2000:]
            r = await ops.get("/readyz")
            return r.status_code == 200 and r.json()
        body = await eventually(ready, timeout=60)
        assert body == {"ok": True, "temporal": "reachable", "store": "open"}
        assert (await ops.get("/healthz")).json()["ok"] is True

        async with baton_api(dev_env.client, settings) as http:
            r = await http.post("/v1/admin/live-agents", json={"agent_id": "ann", "name": "Ann", "queues": ["general"]},
                                headers=ADMIN)
            assert r.status_code == 201, r.text
            ann = {"Authorization": f"Bearer {r.json()['token']}"}
            ids = {k: f"met-{k}-{uuid.uuid4().hex[:8]}" for k in ("taken", "waits", "cancelled")}
            for cid in ids.values():
                r = await http.put(f"/v1/conversations/{cid}/context",
                                   json={"profile": {"name": "Ada"}, "auth": {"session": "s-1"}})
                assert r.status_code == 200, r.text
                r = await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": "u1", "text": "hello"})
                assert r.status_code == 202, r.text
                r = await http.post(f"/v1/conversations/{cid}/handoff",
                                    json={"reason": "needs a person", "target": {"queue": "general"}})
                assert r.status_code == 200, r.text

            async def listed():
                r = await http.get("/v1/desk/queues/general/waiting", headers=ann)
                return {w["conversation_id"] for w in r.json()["waiting"]} >= set(ids.values())
            await eventually(listed)
            r = await http.post(f"/v1/desk/conversations/{ids['taken']}/claim", headers=ann)
            assert r.status_code == 200, r.text
            r = await http.delete(f"/v1/conversations/{ids['cancelled']}/handoff")
            assert r.status_code == 200, r.text

            async def counted():
                text = (await ops.get("/metrics")).text
                return total(text, "baton_handoffs_total", outcome="accepted") >= 1 and \
                    total(text, "baton_handoffs_total", outcome="cancelled") >= 1 and \
                    total(text, "baton_redactions_total") >= 3 and \
                    total(text, "baton_deliveries_total", kind="channel", outcome="delivered") >= delivered() and text

            def delivered() -> int:
                """What the channel received of these conversations (each delivery counted once it ended)."""
                return len([m for m in channel.delivered() if m["conversation_id"] in ids.values()])

            async def told():
                return delivered() >= 5  # "connecting you" three times, "Ann has joined", "cancelled"
            await eventually(told)
            text = await eventually(counted, timeout=20)
            accepted = [labels for labels, v in samples(text, "baton_handoffs_total") if labels.get("outcome") == "accepted"]
            assert accepted and accepted[0]["target_kind"] == "queue" and accepted[0]["rule"], accepted
            assert total(text, "baton_handoff_wait_seconds_count", target_kind="queue") == 1
            assert total(text, "baton_redactions_total", kind="never_leaves") >= 3
            assert any(line.startswith("temporal_") for line in text.splitlines())  # the SDK's own
            # The API: conversations waiting per queue (the taken and the cancelled one no longer wait).

            async def one_waits():
                api_text = (await http.get("/metrics")).text
                return samples(api_text, "baton_conversations_waiting") == [({"queue": "general"}, 1.0)]
            await eventually(one_waits)
            # Every series the Grafana dashboard (deploy/) plots is one these endpoints export.
            dashboard = json.loads((Path(__file__).parent.parent / "deploy" / "grafana-dashboard.json").read_text())
            plotted = {m for p in dashboard["panels"] for t in p["targets"]
                       for m in re.findall(r"\b((?:baton|temporal)_[a-z_]+)\b", t["expr"])}
            exported = {m.group(1) for line in (text + (await http.get("/metrics")).text).splitlines()
                        if (m := LINE.match(line))}
            assert plotted and plotted <= exported, plotted - exported
            # Nothing personal in either: no names, no contents, no session values.
            api_text = (await http.get("/metrics")).text
            for leak in ("Ada", "s-1", "hello", "needs a person"):
                assert leak not in text and leak not in api_text
    finally:
        await ops.aclose()
        stop_processes(worker)
    # Stopped: its port is closed with it.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1, trust_env=False)
        except httpx.HTTPError:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the worker's ops port still answers after it stopped")
    # BATON_LOG_FORMAT=json: every line one JSON object, and no conversation's content or secret in any.
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert any(r["message"].startswith("worker polling task queue") and r["level"] == "info" for r in records)
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    for leak in ("Ada", "s-1", "hello", settings.secret_key, channel.secret):
        assert leak not in log.read_text()
