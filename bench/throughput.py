"""Throughput and reply latency of Baton against a bare-Temporal baseline doing the same work on one dev server.

    python -m bench.throughput [--users N] [--messages M] [--pause S] [--runs R] [--mode saturation|light|both]
                               [--fresh-server] [--variant NAME:OPTION=VALUE ...]

Each simulated user sends a message, waits until the AI's reply reaches the loopback channel receiver, pauses,
and sends the next. Baton (the real worker: Conversation workflow, demo AI agent, channel delivery) and the
baseline (bench/baseline.py: signal -> respond activity -> deliver activity) each get a fresh worker process on
their own task queue, alternately, R times per load; the JSON reports medians over the runs. Compare runs of one
invocation only: on this 2-core machine the same code's throughput moved between 37 and 73 replies/s across one
day, so a ratio from one invocation against another's says little (`--variant` puts a Baton worker setting into
the same rotation; `--fresh-server` gives every system-run a dev server of its own).
Targets (the issue's): at saturation Baton's throughput >= 0.9x the baseline's; at light load p99 <= 1.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
from temporalio.api.enums.v1 import EventType

from bench.common import (
    BATON_KINDS,
    BaselineDriver,
    BatonDriver,
    CpuMeter,
    LoopbackReceiver,
    WorkerProcess,
    WorkerSpec,
    encrypting,
    dev_server,
    free_port,
    machine_info,
    median,
    now_iso,
    percentile,
    progress,
    ratio,
    rnd,
    run_main,
    scrape,
)

TARGET_THROUGHPUT_RATIO = 0.9  # at saturation, Baton / baseline, at least
TARGET_P99_RATIO = 1.5  # at light load, Baton / baseline, at most

# Core SDK metrics (milliseconds) read from each worker process: where a reply's time goes.
HISTOGRAMS = {
    "workflow_task_execution_ms": "temporal_workflow_task_execution_latency",
    "workflow_task_schedule_to_start_ms": "temporal_workflow_task_schedule_to_start_latency",
    "workflow_task_replay_ms": "temporal_workflow_task_replay_latency",
    "activity_execution_ms": "temporal_activity_execution_latency",
    "activity_schedule_to_start_ms": "temporal_activity_schedule_to_start_latency",
    "local_activity_execution_ms": "temporal_local_activity_execution_latency",
}
COUNTERS = {
    "workflow_tasks_completed": "temporal_workflow_task_execution_latency_count",
    "activities": "temporal_activity_execution_latency_count",
    "local_activities": "temporal_local_activity_execution_latency_count",
    "sticky_cache_misses": "temporal_sticky_cache_miss",
}


@dataclass
class Load:
    name: str
    users: int
    messages: int
    pause: float


async def converse(driver: Any, receiver: LoopbackReceiver, cid: str, messages: int, pause: float,
                   timeout: float, delay: float = 0.0) -> dict[str, Any]:
    """One user: send, wait for the AI's reply at the receiver, pause, repeat. Latency = send -> arrival."""
    if delay:
        await asyncio.sleep(delay)
    latencies: list[float] = []
    sent, last, error = 0, None, None
    for i in range(1, messages + 1):
        t0 = time.perf_counter()
        try:
            await driver.send(cid, i)
        except Exception as err:  # noqa: BLE001 - counted and reported, not fatal for the other users
            error = f"{type(err).__name__}: {err}"
            break
        sent += 1
        at = await receiver.wait_reply(cid, i, timeout)
        if at is None:
            error = f"no reply to message {i} within {timeout}s"
            break
        latencies.append(at - t0)
        last = at
        if pause and i < messages:
            await asyncio.sleep(pause)
    return {"cid": cid, "latencies": latencies, "sent": sent, "last": last, "error": error}


def worker_metrics(before: dict[str, float], after: dict[str, float], replies: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, name in HISTOGRAMS.items():
        n = after.get(name + "_count", 0) - before.get(name + "_count", 0)
        s = after.get(name + "_sum", 0) - before.get(name + "_sum", 0)
        if n > 0:
            out[key] = {"count": int(n), "mean": rnd(s / n, 3), "total_per_reply": rnd(s / replies, 3) if replies else None}
    for key, name in COUNTERS.items():
        if name in after or name in before:
            out[key] = int(after.get(name, 0) - before.get(name, 0))
    if replies and "workflow_tasks_completed" in out:
        out["workflow_tasks_per_reply"] = rnd(out["workflow_tasks_completed"] / replies, 2)
    return out


# The systems compared: name -> (worker kind, baseline's respond step as a local activity).
SYSTEMS = {"baton": ("baton", False), "baseline": ("baseline", False), "baseline_local": ("baseline", True),
           # bench/llm.py: Baton with the OpenAI-compatible adapter against bench/fake_model.py (args.ai_url)
           "baton_openai": ("baton_openai", False),
           # bench/encryption.py: Baton with BATON_PAYLOAD_KEYS (args.payload_keys): worker and driver encrypt
           "baton_encrypted": ("baton", False)}


async def run_system(server: Any, receiver: LoopbackReceiver, system: str, load: Load, run_no: int,
                     args: argparse.Namespace, profile: tuple[str, str] | None = None) -> dict[str, Any]:
    variant = dict(args.variant).get(system)
    kind, local_respond = ("baton", False) if variant is not None else SYSTEMS[system]
    tag = f"{load.name}-r{run_no}-{system.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    task_queue = f"bench-{tag}"
    spec = WorkerSpec(kind=kind, target=server.target, namespace=server.namespace, task_queue=task_queue,
                      channel_url=receiver.url, metrics_port=free_port(),
                      profile=profile[0] if profile else None, profile_path=profile[1] if profile else None,
                      sandbox={"default": None, "on": True, "off": False}[args.sandbox],
                      ai_url=getattr(args, "ai_url", None))
    if variant is not None:
        spec.options = dict(variant)
    if system == "baton_encrypted":
        spec.payload_keys = args.payload_keys
    if kind in BATON_KINDS:
        driver: Any = BatonDriver(encrypting(server.client, spec.payload_keys), task_queue)
    else:
        driver = BaselineDriver(server.client, task_queue, local_respond=local_respond)
    async with WorkerProcess(spec) as worker:
        # Warm-up (imports, sandbox, connections), outside the measurement.
        await asyncio.gather(*(converse(driver, receiver, f"{tag}-warm{k}", 3, 0, args.timeout) for k in range(4)))
        metrics0 = scrape(worker.metrics_url)
        meter = CpuMeter({"worker": worker.ps, "dev_server": server.process, "driver": psutil.Process()})
        meter.start()
        t0 = time.perf_counter()
        users = [
            converse(driver, receiver, f"{tag}-u{u}", load.messages, load.pause, args.timeout,
                     delay=load.pause * u / load.users if load.pause else 0.0)
            for u in range(load.users)
        ]
        results = await asyncio.gather(*users)
        cpu = meter.stop()
        metrics1 = scrape(worker.metrics_url)
        await asyncio.sleep(args.grace)  # late duplicates (retried deliveries) still count
    latencies_ms = [x * 1000 for r in results for x in r["latencies"]]
    replies = len(latencies_ms)
    ends = [r["last"] for r in results if r["last"] is not None]
    duration = (max(ends) - t0) if ends else None
    cids = [r["cid"] for r in results]
    sent = sum(r["sent"] for r in results)
    lost = sum(max(0, r["sent"] - receiver.replies(r["cid"])) for r in results)
    errors = [r["error"] for r in results if r["error"]]
    out = {
        "users": load.users,
        "messages_per_user": load.messages,
        "sent": sent,
        "not_sent": load.users * load.messages - sent,  # a user stops at its first lost reply or send error
        "replies": replies,
        "duration_s": rnd(duration, 3),
        "replies_per_s": rnd(replies / duration, 2) if duration else None,
        "p50_ms": rnd(percentile(latencies_ms, 50)),
        "p90_ms": rnd(percentile(latencies_ms, 90)),
        "p99_ms": rnd(percentile(latencies_ms, 99)),
        "max_ms": rnd(max(latencies_ms) if latencies_ms else None),
        "duplicates": receiver.duplicates_for(cids),
        "lost": lost,
        "non_ai_messages": receiver.other_messages(cids),
        "errors": errors[:5],
        "cpu_ms_per_reply": {
            k: rnd(cpu[k] * 1000 / replies, 3) if replies and cpu[k] is not None else None
            for k in ("worker", "dev_server", "driver")
        },
        "cpu_s": {k: rnd(v, 2) for k, v in cpu.items()},
        "worker_metrics": worker_metrics(metrics0, metrics1, replies),
    }
    if cids:
        out["history"] = await history_per_reply(server.client, driver, cids[:HISTORY_SAMPLE], results)
    if spec.payload_keys and cids:
        # What the server stores for one conversation: encrypted payloads only (read without the codec).
        stored = (await server.client.get_workflow_handle(driver.workflow_id(cids[0])).fetch_history())
        raw = b"".join(e.SerializeToString() for e in stored.events)
        out["history_encrypted"] = b"binary/encrypted" in raw and b"supposed to arrive yesterday" not in raw
    progress(
        f"{load.name} run {run_no} {system:14s}: {out['replies_per_s']} replies/s, p50 {out['p50_ms']} ms, "
        f"p99 {out['p99_ms']} ms, lost {lost}, dup {out['duplicates']}, worker cpu/reply "
        f"{out['cpu_ms_per_reply']['worker']} ms, other processes {out['cpu_s']['other_processes']} cpu-s"
    )
    return out


HISTORY_SAMPLE = 5  # conversations per system-run whose histories (every run of each) are weighed


async def history_per_reply(client: Any, driver: Any, cids: list[str], results: list[dict[str, Any]]) -> dict[str, Any]:
    """What the server stores per reply for a few of the run's conversations: every run of each (a Baton
    conversation continues as new), serialized event bytes and events per reply, and bytes per event type."""
    replies = sum(len(r["latencies"]) for r in results if r["cid"] in cids)
    by_type: dict[str, int] = {}
    events = 0
    for cid in cids:
        wid = driver.workflow_id(cid)
        async for execution in client.list_workflows(f'WorkflowId = "{wid}"'):
            history = await client.get_workflow_handle(wid, run_id=execution.run_id).fetch_history()
            for e in history.events:
                name = EventType.Name(e.event_type).removeprefix("EVENT_TYPE_").lower()
                by_type[name] = by_type.get(name, 0) + e.ByteSize()
                events += 1
    total = sum(by_type.values())
    return {
        "conversations": len(cids),
        "replies": replies,
        "bytes_per_reply": rnd(total / replies, 1) if replies else None,
        "events_per_reply": rnd(events / replies, 2) if replies else None,
        "bytes_per_reply_by_event_type": {
            k: rnd(v / replies, 1) for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])
        } if replies else {},
    }


def summarize(per_run: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str, sub: str | None = None) -> float | None:
        return rnd(median(r[key][sub] if sub else r[key] for r in per_run), 3)

    return {
        "replies_per_s": med("replies_per_s"),
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "p90_ms": med("p90_ms"),
        "replies": sum(r["replies"] for r in per_run),
        "duplicates": sum(r["duplicates"] for r in per_run),
        "lost": sum(r["lost"] for r in per_run),
        "non_ai_messages": sum(r["non_ai_messages"] for r in per_run),
        "not_sent": sum(r["not_sent"] for r in per_run),
        "cpu_ms_per_reply": {k: med("cpu_ms_per_reply", k) for k in ("worker", "dev_server", "driver")},
        "history_bytes_per_reply": rnd(median(r["history"]["bytes_per_reply"] for r in per_run if "history" in r), 1),
        # CPU seconds used by processes other than the benchmark's during each run: other work on the machine.
        "other_processes_cpu_s": [r["cpu_s"]["other_processes"] for r in per_run],
        "per_run": per_run,
    }


async def run_load(server: Any, receiver: LoopbackReceiver, load: Load, args: argparse.Namespace,
                   profile_dir: Path | None) -> dict[str, Any]:
    progress(f"{load.name}: {load.users} users x {load.messages} messages, pause {load.pause}s, {args.runs} runs")
    systems = ["baton", "baseline"]
    if args.baseline_respond == "local":
        systems = ["baton", "baseline_local"]
    elif args.baseline_respond == "both":
        systems = ["baton", "baseline", "baseline_local"]
    systems += [name for name, _ in args.variant]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    for run_no in range(1, args.runs + 1):
        # Rotate which system goes first, so drift (warming caches, a growing database) hits all alike.
        shift = (run_no - 1) % len(systems)
        for system in systems[shift:] + systems[:shift]:
            if args.fresh_server:
                # Each system-run on a dev server of its own: no run inherits another's history in the file.
                async with dev_server(sqlite=not args.in_memory) as fresh:
                    runs[system].append(await run_system(fresh, receiver, system, load, run_no, args))
            else:
                runs[system].append(await run_system(server, receiver, system, load, run_no, args))
    summaries = {name: summarize(per_run) for name, per_run in runs.items()}
    baton = summaries["baton"]
    # "baseline" is the baseline (respond as a regular activity) unless only the local variant ran.
    base = summaries.get("baseline") or summaries["baseline_local"]
    result = {
        "users": load.users,
        "messages_per_user": load.messages,
        "pause_s": load.pause,
        "baton": baton,
        "baseline": base,
        "baseline_respond": "activity" if "baseline" in summaries else "local",
        "throughput_ratio": ratio(baton["replies_per_s"], base["replies_per_s"]),
        "p99_ratio": ratio(baton["p99_ms"], base["p99_ms"]),
        "p50_ratio": ratio(baton["p50_ms"], base["p50_ms"]),
    }
    if "baseline" in summaries and "baseline_local" in summaries:
        local = summaries["baseline_local"]
        result["baseline_local_respond"] = local
        result["vs_local_respond"] = {
            "throughput_ratio": ratio(baton["replies_per_s"], local["replies_per_s"]),
            "p99_ratio": ratio(baton["p99_ms"], local["p99_ms"]),
            "p50_ratio": ratio(baton["p50_ms"], local["p50_ms"]),
        }
    for name, options in args.variant:
        v = summaries[name]
        result[name] = {**v, "worker_options": options,
                        "throughput_ratio": ratio(v["replies_per_s"], base["replies_per_s"]),
                        "p99_ratio": ratio(v["p99_ms"], base["p99_ms"]), "p50_ratio": ratio(v["p50_ms"], base["p50_ms"])}
    if load.name == "saturation":
        result["target"] = {"throughput_ratio_min": TARGET_THROUGHPUT_RATIO,
                            "met": (result["throughput_ratio"] or 0) >= TARGET_THROUGHPUT_RATIO}
    else:
        result["target"] = {"p99_ratio_max": TARGET_P99_RATIO,
                            "met": result["p99_ratio"] is not None and result["p99_ratio"] <= TARGET_P99_RATIO}
    result["exactly_once"] = all(s["duplicates"] == 0 and s["lost"] == 0 and s["not_sent"] == 0
                                 for s in summaries.values())
    if profile_dir:
        result["profile"] = {system: await profile_system(server, receiver, system, load, args, profile_dir)
                             for system in systems}
    return result


async def profile_system(server: Any, receiver: LoopbackReceiver, system: str, load: Load,
                         args: argparse.Namespace, profile_dir: Path) -> dict[str, Any]:
    """Two extra runs, not in the medians: one timing the workflow code's CPU per activation (thread CPU
    time where the SDK runs it), one under cProfile (activations and the event loop thread, ~2x slower)."""
    out: dict[str, Any] = {}
    for mode in ("timing", "cprofile"):
        path = profile_dir / f"{load.name}-{system}-{mode}.json"
        run = await run_system(server, receiver, system, load, 0, args, (mode, str(path)))
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            out[mode] = {"error": f"no profile: {err}"}
            continue
        replies = run["replies"] or 1
        t = report["totals"]
        summary = {
            "replies": run["replies"],
            "replies_per_s": run["replies_per_s"],
            "worker_process_cpu_ms_per_reply": run["cpu_ms_per_reply"]["worker"],
            "workflow_activation_cpu_ms_per_reply": round(t["activation_cpu_s"] * 1000 / replies, 3),
            "activations_per_reply": round(t["activations"] / replies, 2),
            "cpu_ms_per_activation": round(t["activation_cpu_s"] * 1000 / max(t["activations"], 1), 3),
            "workflow_instances_created": t["instances"],
            "cpu_ms_per_instance_creation": round(t["instance_cpu_s"] * 1000 / max(t["instances"], 1), 2),
            "serialization_context_cpu_ms_per_reply": round(t["context_cpu_s"] * 1000 / replies, 3),
            "python_gc_ms_per_reply": round(sum(report["gc"]["seconds"]) * 1000 / replies, 3),
            "python_gc_collections_by_generation": report["gc"]["collections"],
            "python_gc_ms_by_generation": [round(x * 1000, 1) for x in report["gc"]["seconds"]],
        }
        if mode == "cprofile":
            summary["note"] = report.get("note")
            summary["workflow_activations"] = report.get("workflow_activations")
            summary["event_loop_thread"] = report.get("event_loop_thread")
        out[mode] = summary
        progress(f"profile {load.name} {system} ({mode}): " + ", ".join(
            f"{k} {v}" for k, v in summary.items() if not isinstance(v, dict)))
    return out


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, options = text.partition(":")
    if not name.isidentifier() or not options:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:OPTION=VALUE[,OPTION=VALUE]")
    parsed: dict[str, Any] = {}
    for item in options.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key.isidentifier():
            raise argparse.ArgumentTypeError(f"{item!r}: expected OPTION=VALUE")
        try:
            # A `..._timeout` option is a number of seconds (e.g. sticky_queue_schedule_to_start_timeout=2).
            parsed[key] = timedelta(seconds=int(value)) if key.endswith("_timeout") else int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: the value must be an integer") from None
    return f"baton_{name}", parsed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("saturation", "light", "both"), default="both")
    p.add_argument("--users", type=int, help="simulated users (default: 50 saturation, 10 light)")
    p.add_argument("--messages", type=int, help="messages per user (default: 30 saturation, 40 light)")
    p.add_argument("--pause", type=float, help="seconds between a reply and the next message (default: 0 / 0.5)")
    p.add_argument("--runs", type=int, default=3, help="runs per system and load; medians are reported")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one reply before counting it lost")
    p.add_argument("--grace", type=float, default=1.0, help="seconds to keep listening for duplicates after a run")
    p.add_argument("--baseline-respond", choices=("activity", "local", "both"), default="activity",
                   help="the baseline's respond step: a regular activity (default, the issue's baseline), a local "
                   "activity like Baton's AI turn, or both (a third system, reported as baseline_local_respond)")
    p.add_argument("--sandbox", choices=("default", "on", "off"), default="default",
                   help="workflow runner: each system's default (Baton: no sandbox; the baseline: the SDK's sandbox), "
                        "or the SDK's sandbox on / off for both")
    p.add_argument("--fresh-server", action="store_true",
                   help="a fresh dev server for each system-run (else one for the whole benchmark, whose growing file "
                   "favours whoever runs first)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:OPTION=VALUE[,OPTION=VALUE]",
                   type=_variant,
                   help="one more system: Baton's worker with these Worker options (integers; an option named "
                   "..._timeout in seconds), in the same rotation, e.g. fixed4:max_concurrent_workflow_tasks=4 or "
                   "sticky2:sticky_queue_schedule_to_start_timeout=2 (reported as baton_fixed4 with its ratios to the "
                   "baseline); compare worker settings within one run, where the machine's drift hits all alike")
    p.add_argument("--in-memory", action="store_true", help="in-memory dev server instead of a SQLite file (WAL)")
    p.add_argument("--profile", metavar="DIR",
                   help="after the measured runs of each load, two extra runs per system (excluded from the medians): "
                   "workflow-code CPU per activation, then cProfile; files in DIR, summary in the JSON")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def loads(args: argparse.Namespace) -> list[Load]:
    out = []
    if args.mode in ("saturation", "both"):
        out.append(Load("saturation", args.users or 50, args.messages or 30, args.pause if args.pause is not None else 0.0))
    if args.mode in ("light", "both"):
        out.append(Load("light", args.users or 10, args.messages or 40, args.pause if args.pause is not None else 0.5))
    return out


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    machine = machine_info()
    started = time.monotonic()
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "throughput", "machine": machine, "date": now_iso(), "runs": args.runs}
    async with dev_server(sqlite=not args.in_memory) as server, LoopbackReceiver() as receiver:
        result["dev_server"] = {"persistence": server.persistence}
        for load in loads(args):
            result[load.name] = await run_load(server, receiver, load, args, profile_dir)
        result["dev_server"]["warnings_logged"] = len(server.log_lines(r'"level":"(warn|error)"'))
    result["config"] = {
        "baseline_respond": args.baseline_respond,
        "workflow_sandbox": {"default": "each system's default: Baton off (as deployed), baseline on (SDK default)",
                             "on": "on for both", "off": "off for both"}[args.sandbox],
        "worker_options": "each system's worker as deployed, one fresh process per system-run: Baton's build_worker "
                          "(4 workflow tasks at once, a 2 s sticky timeout), the baseline's SDK defaults (100 workflow "
                          "tasks at once); both 5 pollers, 1,000 cached runs; --variant systems: Baton with the "
                          "options given",
        "dev_server": "a fresh one per system-run" if args.fresh_server else "one for the whole benchmark",
        "first_message": "signal-with-start (Baton: with the API's initial search attributes); later: signal",
        "latency": "user's send call -> the AI reply's arrival at the loopback receiver (perf_counter)",
        "throughput": "replies / (last reply's arrival - first send), all users, after a 4-conversation warm-up",
    }
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


if __name__ == "__main__":
    run_main(main)
