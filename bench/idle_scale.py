"""Many idle conversations: the worker's memory (RSS) after N conversations each got one message and one reply.

    python -m bench.idle_scale [--conversations 5000] [--max-cached-workflows N]

Starts N conversations (signal-with-start, like the API), waits until every AI reply reached the loopback
channel receiver, lets the worker settle, and reports the RSS of this process (which runs the real Baton worker,
the load driver and the receiver) before the worker started, once it was ready, at the peak and at the end,
per conversation and per cached workflow. Idle workflows live in the worker's sticky cache up to
max_cached_workflows (SDK default 1000); beyond it they are evicted and cost the worker nothing until their
next message (then the history is replayed).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time
import uuid
from typing import Any

from bench.common import (
    BaselineDriver,
    BatonDriver,
    LoopbackReceiver,
    build_bench_worker,
    dev_server,
    http_client_for,
    machine_info,
    now_iso,
    percentile,
    progress,
    prometheus_runtime,
    rnd,
    rss_mb,
    run_main,
    scrape,
)
SDK_DEFAULT_CACHE = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.idle_scale", description=__doc__.splitlines()[0])
    p.add_argument("--conversations", type=int, default=5000, help="conversations to start (default 5000)")
    p.add_argument("--concurrency", type=int, default=50, help="signal-with-start calls in flight at once")
    p.add_argument("--max-cached-workflows", type=int, default=None,
                   help=f"the worker's sticky cache size (default: the SDK's, {SDK_DEFAULT_CACHE})")
    p.add_argument("--settle", type=float, default=5.0, help="seconds to wait after the last reply before measuring")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for all replies")
    p.add_argument("--system", choices=("baton", "baseline"), default="baton",
                   help="the real Baton worker (default) or the bare-Temporal baseline (bench/baseline.py), to compare")
    p.add_argument("--in-memory", action="store_true", help="in-memory dev server instead of a SQLite file (WAL)")
    args = p.parse_args(argv)
    if args.conversations < 1 or args.concurrency < 1:
        p.error("--conversations and --concurrency must be positive")
    return args


def _rss_now() -> float:
    gc.collect()
    return rss_mb() or 0.0


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    machine = machine_info()
    started = time.monotonic()
    result: dict[str, Any] = {"benchmark": "idle_scale", "machine": machine, "date": now_iso()}
    runtime, metrics_url = prometheus_runtime()
    options = {} if args.max_cached_workflows is None else {"max_cached_workflows": args.max_cached_workflows}
    cache = args.max_cached_workflows if args.max_cached_workflows is not None else SDK_DEFAULT_CACHE
    async with dev_server(sqlite=not args.in_memory, runtime=runtime) as server, LoopbackReceiver() as receiver:
        client = server.client
        task_queue = f"bench-idle-{uuid.uuid4().hex[:8]}"
        driver = BatonDriver(client, task_queue) if args.system == "baton" else BaselineDriver(client, task_queue)
        prefix = f"idle-{uuid.uuid4().hex[:6]}"
        rss_before_worker = _rss_now()
        server_rss_before = server.rss_mb()
        async with http_client_for(args.system) as http, \
                build_bench_worker(args.system, client, http, task_queue, receiver.url, options):
            # Warm-up: the first conversation imports the workflow into the sandbox and opens the connections.
            await driver.send(f"{prefix}-warm", 1)
            if await receiver.wait_reply(f"{prefix}-warm", 1, 60) is None:
                raise RuntimeError("the warm-up conversation got no reply")
            rss_ready = _rss_now()
            progress(f"worker ready: RSS {rss_ready:.1f} MB (before the worker: {rss_before_worker:.1f} MB); "
                     f"starting {args.conversations} conversations")

            peak = rss_ready
            samples: list[tuple[float, float]] = []

            async def sample() -> None:
                nonlocal peak
                while True:
                    r = rss_mb() or 0.0
                    peak = max(peak, r)
                    samples.append((time.monotonic() - t0, r))
                    await asyncio.sleep(0.5)

            sem = asyncio.Semaphore(args.concurrency)
            send_errors: list[str] = []
            latencies: list[float] = []

            async def one(k: int) -> None:
                cid = f"{prefix}-{k}"
                async with sem:
                    ts = time.perf_counter()
                    try:
                        await driver.send(cid, 1)
                    except Exception as err:  # noqa: BLE001 - counted and reported
                        send_errors.append(f"{type(err).__name__}: {err}")
                        return
                at = await receiver.wait_reply(cid, 1, args.timeout)
                if at is not None:
                    latencies.append((at - ts) * 1000)

            t0 = time.monotonic()
            sampler = asyncio.create_task(sample())
            try:
                await asyncio.gather(*(one(k) for k in range(args.conversations)))
                all_replied = time.monotonic() - t0
                rss_all_replied = rss_mb() or 0.0
                progress(f"{len(latencies)} replies in {all_replied:.1f}s; RSS {rss_all_replied:.1f} MB; "
                         f"settling {args.settle}s")
                await asyncio.sleep(args.settle)
            finally:
                sampler.cancel()
            rss_after = rss_mb() or 0.0
            rss_after_gc = _rss_now()
            metrics = scrape(metrics_url)
            server_rss_after = server.rss_mb()
        await asyncio.sleep(1.0)  # late duplicates still count
        cids = [f"{prefix}-{k}" for k in range(args.conversations)]
        replies = sum(1 for c in cids if receiver.replies(c) >= 1)
        duplicates = receiver.duplicates_for(cids)

    n = args.conversations
    cached = metrics.get("temporal_sticky_cache_size")
    growth = rss_after_gc - rss_ready
    result.update({
        "system": args.system,
        "conversations": n,
        "reduced": n < 5000,
        "replies": replies,
        "lost": n - replies - len(send_errors),
        "send_errors": len(send_errors),
        "duplicates": duplicates,
        "seconds_until_all_replied": rnd(all_replied, 1),
        "starts_per_s": rnd(n / all_replied, 1) if all_replied else None,
        # From each signal-with-start to its reply: mostly time queued behind the other starts (the starts are
        # accepted far faster than the worker answers them).
        "first_reply_latency_ms": {"p50": rnd(percentile(latencies, 50)), "p99": rnd(percentile(latencies, 99))},
        "worker": {
            "max_cached_workflows": cache,
            "max_cached_workflows_is_sdk_default": args.max_cached_workflows is None,
            "sticky_cache_size_at_end": int(cached) if cached is not None else None,
            "sticky_cache_forced_evictions": int(metrics.get("temporal_sticky_cache_total_forced_eviction", 0)),
        },
        "rss_mb": {
            "process": "this process: the worker (Python + the SDK's Rust core), the load driver and the receiver",
            "before_worker": rnd(rss_before_worker, 1),
            "worker_ready": rnd(rss_ready, 1),
            "all_replied": rnd(rss_all_replied, 1),
            "peak": rnd(peak, 1),
            "after_settle": rnd(rss_after, 1),
            "after_settle_gc": rnd(rss_after_gc, 1),
            "growth_over_ready": rnd(growth, 1),
        },
        "kb_per_conversation": rnd(growth * 1024 / n, 1),
        "kb_per_cached_workflow": rnd(growth * 1024 / cached, 1) if cached else None,
        "dev_server_rss_mb": {"before": rnd(server_rss_before, 1), "after": rnd(server_rss_after, 1)},
        "rss_timeline_mb": [[rnd(t, 1), rnd(r, 1)] for t, r in samples[:: max(1, len(samples) // 20)]],
        "dev_server": {"persistence": server.persistence},
    })
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


if __name__ == "__main__":
    run_main(main)
