"""One long conversation: does reply latency stay flat over thousands of messages, and do histories stay bounded?

    python -m bench.long_conversation [--messages 5000]

Sends the messages one after another (each waits for the AI's reply at the loopback channel receiver) to the
real Baton worker (in this process), then reports the median latency of the first and last 100 messages
(target: last/first <= 1.25), how many runs continue-as-new made, the largest history of any run (events and
bytes, against the dev server's suggest-continue-as-new / warn / error limits) and any history-size warnings
the dev server logged.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

from bench.common import (
    HISTORY_ERROR_BYTES,
    HISTORY_ERROR_EVENTS,
    HISTORY_SUGGEST_CAN_BYTES,
    HISTORY_SUGGEST_CAN_EVENTS,
    HISTORY_WARN_BYTES,
    HISTORY_WARN_EVENTS,
    BatonDriver,
    LoopbackReceiver,
    build_bench_worker,
    dev_server,
    machine_info,
    median,
    now_iso,
    percentile,
    progress,
    ratio,
    rnd,
    run_history_stats,
    run_main,
)
from models.conversation import TranscriptPage, TranscriptQuery
from models.names import Queries, workflow_id
from workers.worker import http_client

TARGET_LATENCY_RATIO = 1.25  # median of the last 100 / median of the first 100, at most
HISTORY_LOG = r"exceeds (warn|error) limit|Blob data size exceeds|history size|history count"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.long_conversation", description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=5000, help="messages in the conversation (default 5000)")
    p.add_argument("--window", type=int, default=100, help="first/last N messages compared (default 100)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one reply before giving up")
    p.add_argument("--max-seconds", type=float, default=600.0,
                   help="stop sending after this long and report what was measured (default 600)")
    p.add_argument("--in-memory", action="store_true", help="in-memory dev server instead of a SQLite file (WAL)")
    args = p.parse_args(argv)
    if args.messages < 1 or args.window < 1:
        p.error("--messages and --window must be positive")
    return args


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    machine = machine_info()
    started = time.monotonic()
    result: dict[str, Any] = {"benchmark": "long_conversation", "machine": machine, "date": now_iso()}
    async with dev_server(sqlite=not args.in_memory) as server, LoopbackReceiver() as receiver:
        client = server.client
        task_queue = f"bench-long-{uuid.uuid4().hex[:8]}"
        cid = f"long-{uuid.uuid4().hex[:8]}"
        wid = workflow_id(cid)
        driver = BatonDriver(client, task_queue)
        latencies: list[float] = []
        error = None
        async with http_client() as http, build_bench_worker("baton", client, http, task_queue, receiver.url):
            deadline = time.monotonic() + args.max_seconds
            for i in range(1, args.messages + 1):
                t0 = time.perf_counter()
                await driver.send(cid, i)
                at = await receiver.wait_reply(cid, i, args.timeout)
                if at is None:
                    error = f"no reply to message {i} within {args.timeout}s"
                    break
                latencies.append((at - t0) * 1000)
                if i % 250 == 0:
                    recent = latencies[-250:]
                    progress(f"{i}/{args.messages}: last 250 p50 {median(recent):.1f} ms, "
                             f"p99 {percentile(recent, 99):.1f} ms")
                if time.monotonic() > deadline:
                    error = f"stopped after {args.max_seconds}s at message {i} (--max-seconds)"
                    break
            await asyncio.sleep(1.0)  # late duplicates still count
            handle = client.get_workflow_handle(wid)
            page = await handle.query(Queries.TRANSCRIPT, TranscriptQuery(after=0, limit=1), result_type=TranscriptPage)
            current_run = (await handle.describe()).run_id
        segments = [seg.run_id for seg in page.earlier_runs]
        runs_from_query = [*segments, current_run]
        listed = [w async for w in client.list_workflows(f"WorkflowId = '{wid}'")]
        run_ids = list(dict.fromkeys([*runs_from_query, *(w.run_id for w in listed)]))
        progress(f"{len(run_ids)} runs; fetching their histories")
        histories = [await run_history_stats(client, wid, run_id) for run_id in run_ids]
        log_lines = server.log_lines(HISTORY_LOG)

    sent = len(latencies) + (1 if error and error.startswith("no reply") else 0)
    n = args.window
    first, last = latencies[:n], latencies[-n:]
    max_events = max(h["server_history_length"] or h["events"] for h in histories)
    max_bytes = max(h["server_history_size_bytes"] or h["bytes_events_serialized"] for h in histories)
    blocks = 500 if len(latencies) >= 1000 else max(1, len(latencies) // 10)
    result.update({
        "messages": args.messages,
        "messages_answered": len(latencies),
        "reduced": args.messages < 5000,
        "error": error,
        "latency_ms": {
            f"first_{n}_median": rnd(median(first)),
            f"last_{n}_median": rnd(median(last)),
            "ratio_last_to_first": ratio(median(last), median(first)),
            "target_ratio_max": TARGET_LATENCY_RATIO,
            "target_met": (ratio(median(last), median(first)) or 99) <= TARGET_LATENCY_RATIO,
            f"first_{n}_p99": rnd(percentile(first, 99)),
            f"last_{n}_p99": rnd(percentile(last, 99)),
            "overall_p50": rnd(percentile(latencies, 50)),
            "overall_p99": rnd(percentile(latencies, 99)),
            "max": rnd(max(latencies) if latencies else None),
            "max_at_message": (latencies.index(max(latencies)) + 1) if latencies else None,
            f"median_by_block_of_{blocks}": [rnd(median(latencies[k:k + blocks]), 1)
                                              for k in range(0, len(latencies), blocks)],
        },
        "exactly_once": {
            "duplicates": receiver.duplicates_for([cid]),
            "lost": max(0, sent - receiver.replies(cid)),
            "non_ai_messages": receiver.other_messages([cid]),
        },
        "continue_as_new": {
            "runs": len(run_ids),
            "runs_from_transcript_query": len(runs_from_query),
            "runs_listed_by_visibility": len(listed),
            "messages_per_run_avg": rnd(len(latencies) / len(run_ids), 1),
        },
        "history": {
            "max_events_any_run": max_events,
            "max_bytes_any_run": max_bytes,
            "max_events_pct_of_warn": rnd(100 * max_events / HISTORY_WARN_EVENTS, 1),
            "max_bytes_pct_of_warn": rnd(100 * max_bytes / HISTORY_WARN_BYTES, 2),
            "limits": {
                "suggest_continue_as_new": {"events": HISTORY_SUGGEST_CAN_EVENTS, "bytes": HISTORY_SUGGEST_CAN_BYTES},
                "warn": {"events": HISTORY_WARN_EVENTS, "bytes": HISTORY_WARN_BYTES},
                "error": {"events": HISTORY_ERROR_EVENTS, "bytes": HISTORY_ERROR_BYTES},
            },
            "carried_state_bytes_last_run": next(
                (h["first_event_bytes"] for h in histories if h["run_id"] == current_run), None),
            "per_run": histories,
        },
        "dev_server_history_warnings": {
            "count": len(log_lines),
            "lines": log_lines[:5],
            "log_level": "warn (the level the dev server logs 'history size exceeds warn limit.' at)",
        },
        "dev_server": {"persistence": server.persistence},
    })
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


if __name__ == "__main__":
    run_main(main)
