"""Baton's store (activities.database, activities.registry) on PostgreSQL and on SQLite, as the API calls it: the
replayed-webhook check (`recall`, on every signed request) and the registry lookups (an external agent with its
secret, a live agent by token), each timed around the call in this process.

    python -m bench.store [--calls N] [--runs R] [--rows K]

A throwaway PostgreSQL (devkit/postgres.py, a loopback TCP connection, fsync off as in the tests) and a SQLite file
(WAL), filled with K agents, live agents and seen webhook ids; the two databases are measured in turn, the order
rotated between runs. Target (issue 14): p99 <= 5 ms on PostgreSQL. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import machine_info, now_iso, percentile, progress, rnd, run_main

TARGET_P99_MS = 5.0


def fill(registry: Any, rows: int) -> list[str]:
    from activities import webhooks

    tokens = []
    for i in range(rows):
        registry.save_external(f"ext-{i}", webhooks.generate_secret(), f"https://p{i}.example")
        tokens.append(registry.create_live_agent(f"agent-{i}", f"Agent {i}", ["general"])[1])
        registry.remember(f"ext-{i % 50}", f"msg_{i}", '{"accepted":true}')
    return tokens


def measure(registry: Any, tokens: list[str], rows: int, calls: int) -> dict[str, Any]:
    ops = {
        "replayed_webhook_check": lambda i: registry.recall(f"ext-{i % 50}", f"msg_{i % rows}"),
        "unknown_webhook_check": lambda i: registry.recall(f"ext-{i % 50}", f"msg_new_{i}"),
        "external_agent_lookup": lambda i: registry.external(f"ext-{i % rows}"),
        "live_agent_by_token": lambda i: registry.live_agent_by_token(tokens[i % rows]),
    }
    out = {}
    for name, op in ops.items():
        for i in range(50):  # warm: connections in the pool, statements prepared
            op(i)
        samples = []
        for i in range(calls):
            t0 = time.perf_counter()
            op(i)
            samples.append((time.perf_counter() - t0) * 1000)
        out[name] = {"p50_ms": rnd(percentile(samples, 50), 3), "p99_ms": rnd(percentile(samples, 99), 3),
                     "max_ms": rnd(max(samples), 3)}
    return out


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rows", type=int, default=1000)
    args = p.parse_args(argv)
    from activities import sealing
    from activities.registry import SqlRegistry
    from devkit.postgres import Postgres

    started = time.monotonic()
    result: dict[str, Any] = {"benchmark": "store", "machine": machine_info(), "date": now_iso(),
                              "calls_per_op": args.calls, "rows": args.rows}
    runs: dict[str, list[dict[str, Any]]] = {"postgresql": [], "sqlite": []}
    key = sealing.new_key()
    with Postgres() as pg, tempfile.TemporaryDirectory() as tmp:
        urls = {"postgresql": pg.new_database(), "sqlite": f"sqlite:///{Path(tmp) / 'baton.db'}"}
        registries = {name: SqlRegistry(url, key) for name, url in urls.items()}
        tokens = {name: fill(r, args.rows) for name, r in registries.items()}
        systems = list(registries)
        for run in range(args.runs):
            shift = run % len(systems)
            for name in systems[shift:] + systems[:shift]:
                runs[name].append(measure(registries[name], tokens[name], args.rows, args.calls))
                progress(f"run {run + 1} {name}: " + ", ".join(
                    f"{op} p99 {v['p99_ms']} ms" for op, v in runs[name][-1].items()))
        for r in registries.values():
            r.close()
    for name, per_run in runs.items():
        result[name] = {op: {stat: rnd(statistics.median(r[op][stat] for r in per_run), 3)
                             for stat in ("p50_ms", "p99_ms", "max_ms")} for op in per_run[0]}
        result[name]["per_run_p99_ms"] = {op: [r[op]["p99_ms"] for r in per_run] for op in per_run[0]}
    worst = max(v["p99_ms"] for op, v in result["postgresql"].items() if op != "per_run_p99_ms")
    result["target"] = {"p99_ms_max": TARGET_P99_MS, "worst_postgresql_p99_ms": worst, "met": worst <= TARGET_P99_MS}
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


if __name__ == "__main__":
    run_main(main)
