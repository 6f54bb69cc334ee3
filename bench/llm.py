"""What the OpenAI-compatible adapter costs (issue 12's targets), against a fake model (bench/fake_model.py) that
answers every request after a fixed delay.

    python -m bench.llm [--parts overhead,throughput] [--turns N] [--model-delay S] [--runs R]

- overhead: the adapter alone, in this process, as the `ai_respond` activity runs it: filter the turn, build the
  request, POST it on the worker's pooled client, read and check the answer. Per turn, the wall time minus the
  model's fixed delay; one turn at a time and 20 at once. Target: p99 <= 10 ms.
- throughput: bench.throughput's saturation load (50 users, no pause) against Baton's real worker in its own
  process twice, with the demo agent and with the adapter (the fake model answering at once), systems rotating,
  one dev server. Target: the adapter's replies/s >= 0.9x the demo agent's.
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import LoopbackReceiver, dev_server, machine_info, now_iso, percentile, progress, ratio, rnd, run_main
from bench.fake_model import FakeModel
from bench.throughput import Load, run_system, summarize

TARGET_OVERHEAD_P99_MS = 10.0
TARGET_THROUGHPUT_RATIO = 0.9


def realistic_turn() -> Any:
    """A turn as a busy conversation sends it: 20 transcript entries, a profile and slots to filter."""
    from models.conversation import AgentTurn, Role, TranscriptEntry

    start = datetime(2026, 11, 30, 9, tzinfo=UTC)
    history = []
    for seq in range(1, 21):
        user = seq % 2 == 1
        text = (f"My order {4000 + seq} has not arrived, it was supposed to come yesterday. Can you check?"
                if user else "I'm sorry to hear that. Let me look at what I can do for you with that order.")
        history.append(TranscriptEntry(seq=seq, message_id=f"m{seq}", role=Role.USER if user else Role.AI,
                                       author="user" if user else "ai", text=text, at=start + timedelta(seconds=seq)))
    profile = {"name": "Ada Lovelace", "email": "ada@example.com", "language": "en", "tier": "gold",
               "customer_id": "C-1815", "address": {"city": "London", "country": "GB"}, "orders": 12,
               "api_token": "would-be-dropped"}
    slots = {"issue_type": "delivery", "order": "A-4019", "promised": "2026-11-29", "channel": "web"}
    return AgentTurn(conversation_id="bench-1", channel="web", message=history[-1], history=history,
                     profile=profile, slots=slots)


async def overhead(args: argparse.Namespace) -> dict[str, Any]:
    from activities.llm import OpenAIAgent
    from models.config import AiAgentConfig
    from workers.worker import http_client

    config = AiAgentConfig.model_validate({"handoff_tool": {"parameters": {
        "topic": {"type": "string", "enum": ["billing", "technical", "other"]},
        "urgency": {"type": "string", "enum": ["low", "high"]}}}})
    turn = realistic_turn()
    out: dict[str, Any] = {"model_delay_ms": args.model_delay * 1000, "turns": args.turns}
    async with FakeModel(delay=args.model_delay) as model, http_client() as http:
        agent = OpenAIAgent(model.base_url, "sk-bench", "bench-model", config, http)
        for _ in range(20):  # warm-up: connections, imports
            await agent.respond(turn)

        async def one() -> float:
            t0 = time.perf_counter()
            reply = await agent.respond(turn)
            assert reply.text
            return (time.perf_counter() - t0 - args.model_delay) * 1000

        for name, at_once in (("sequential", 1), ("concurrent_20", 20)):
            samples: list[float] = []
            cpu0 = time.process_time()
            while len(samples) < args.turns:
                samples += await asyncio.gather(*(one() for _ in range(at_once)))
            cpu = time.process_time() - cpu0
            out[name] = {"p50_ms": rnd(percentile(samples, 50), 3), "p99_ms": rnd(percentile(samples, 99), 3),
                         "max_ms": rnd(max(samples), 3), "cpu_ms_per_turn": rnd(cpu * 1000 / len(samples), 3)}
            progress(f"overhead {name}: p50 {out[name]['p50_ms']} ms, p99 {out[name]['p99_ms']} ms")
        # The adapter's own Python work per turn, without the network: filter + request + reading the answer.
        from activities.llm import _Completion
        from bench.fake_model import COMPLETION

        t0 = time.perf_counter()
        for _ in range(args.turns):
            agent.request(turn)
            agent.reply(turn, _Completion.model_validate_json(COMPLETION))
        out["python_only_ms_per_turn"] = rnd((time.perf_counter() - t0) * 1000 / args.turns, 3)
        out["request_bytes_per_turn"] = model.request_bytes // max(model.requests, 1)
    out["target"] = {"p99_ms_max": TARGET_OVERHEAD_P99_MS,
                     "met": max(out["sequential"]["p99_ms"], out["concurrent_20"]["p99_ms"]) <= TARGET_OVERHEAD_P99_MS}
    return out


async def throughput(args: argparse.Namespace) -> dict[str, Any]:
    load = Load("saturation", args.users, args.messages, 0.0)
    systems = ["baton", "baton_openai"]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    async with dev_server(sqlite=True) as server, LoopbackReceiver() as receiver, FakeModel(delay=0.0) as model:
        args.ai_url = model.base_url
        for run_no in range(1, args.runs + 1):
            shift = (run_no - 1) % len(systems)
            for system in systems[shift:] + systems[:shift]:
                runs[system].append(await run_system(server, receiver, system, load, run_no, args))
        model_requests = model.requests
    demo, llm = summarize(runs["baton"]), summarize(runs["baton_openai"])
    result = {
        "users": load.users, "messages_per_user": load.messages,
        "demo_agent": demo, "openai_adapter": llm, "fake_model_requests": model_requests,
        "throughput_ratio": ratio(llm["replies_per_s"], demo["replies_per_s"]),
        "ratio_per_run": [ratio(b["replies_per_s"], a["replies_per_s"])
                          for a, b in zip(runs["baton"], runs["baton_openai"], strict=True)],
        "p99_ratio": ratio(llm["p99_ms"], demo["p99_ms"]),
    }
    result["target"] = {"throughput_ratio_min": TARGET_THROUGHPUT_RATIO,
                        "met": (result["throughput_ratio"] or 0) >= TARGET_THROUGHPUT_RATIO}
    result["exactly_once"] = all(s["duplicates"] == 0 and s["lost"] == 0 and s["not_sent"] == 0 for s in (demo, llm))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.llm", description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="overhead,throughput")
    p.add_argument("--turns", type=int, default=500, help="turns per overhead measurement")
    p.add_argument("--model-delay", type=float, default=0.05, help="the fake model's delay in the overhead part (s)")
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--messages", type=int, default=30)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--grace", type=float, default=1.0)
    p.add_argument("--sandbox", choices=("default", "on", "off"), default="default")
    return p.parse_args(argv)


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    started = time.monotonic()
    result: dict[str, Any] = {"benchmark": "llm", "machine": machine_info(), "date": now_iso()}
    if "overhead" in parts:
        result["overhead"] = await overhead(args)
    if "throughput" in parts:
        result["throughput"] = await throughput(args)
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


if __name__ == "__main__":
    run_main(main)
