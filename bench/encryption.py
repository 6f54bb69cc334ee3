"""What encrypted history costs (issue 14's target): bench.throughput's saturation load (50 users, no pause) against
Baton's real worker in its own process, without and with BATON_PAYLOAD_KEYS (worker and driver encrypting every
payload, AES-256-GCM), systems rotating between runs, one dev server on a SQLite file.

    python -m bench.encryption [--users N] [--messages M] [--runs R]

Target: with encryption, replies/s >= 0.9x without, in the same run. Also: the codec alone, per payload (a user
message's size), in this process. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import time
from typing import Any

from bench.common import LoopbackReceiver, dev_server, machine_info, now_iso, percentile, progress, ratio, rnd, run_main
from bench.throughput import Load, run_system, summarize

TARGET_THROUGHPUT_RATIO = 0.9


async def codec_alone(n: int) -> dict[str, Any]:
    from temporalio.contrib.pydantic import pydantic_data_converter

    from models.conversation import UserMessage
    from runtime.codec import EncryptionCodec

    codec = EncryptionCodec({"k1": secrets.token_bytes(32)})
    payload = pydantic_data_converter.payload_converter.to_payloads(
        [UserMessage(message_id="m-123", text="My order 4019 has not arrived, it was due yesterday. " * 3)])[0]
    samples_enc, samples_dec = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        sealed = await codec.encode([payload])
        t1 = time.perf_counter()
        await codec.decode(sealed)
        t2 = time.perf_counter()
        samples_enc.append((t1 - t0) * 1e6)
        samples_dec.append((t2 - t1) * 1e6)
    return {"payload_bytes": payload.ByteSize(), "encrypted_bytes": sealed[0].ByteSize(),
            "encode_us_p50": rnd(percentile(samples_enc, 50), 1), "encode_us_p99": rnd(percentile(samples_enc, 99), 1),
            "decode_us_p50": rnd(percentile(samples_dec, 50), 1), "decode_us_p99": rnd(percentile(samples_dec, 99), 1)}


async def throughput(args: argparse.Namespace) -> dict[str, Any]:
    load = Load("saturation", args.users, args.messages, 0.0)
    systems = ["baton", "baton_encrypted"]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    async with dev_server(sqlite=True) as server, LoopbackReceiver() as receiver:
        for run_no in range(1, args.runs + 1):
            shift = (run_no - 1) % len(systems)
            for system in systems[shift:] + systems[:shift]:
                runs[system].append(await run_system(server, receiver, system, load, run_no, args))
    plain, encrypted = summarize(runs["baton"]), summarize(runs["baton_encrypted"])
    result = {
        "users": load.users, "messages_per_user": load.messages, "runs": args.runs,
        "order": "rotated: run 1 plain first, run 2 encrypted first, ...",
        "plain": plain, "encrypted": encrypted,
        "throughput_ratio": ratio(encrypted["replies_per_s"], plain["replies_per_s"]),
        "ratio_per_run": [ratio(b["replies_per_s"], a["replies_per_s"])
                          for a, b in zip(runs["baton"], runs["baton_encrypted"], strict=True)],
        "p99_ratio": ratio(encrypted["p99_ms"], plain["p99_ms"]),
        # Read back without the codec after each encrypted run: payloads encrypted, no user text in the clear.
        "history_encrypted": all(r.get("history_encrypted") for r in runs["baton_encrypted"]),
    }
    result["target"] = {"throughput_ratio_min": TARGET_THROUGHPUT_RATIO,
                        "met": (result["throughput_ratio"] or 0) >= TARGET_THROUGHPUT_RATIO}
    result["exactly_once"] = all(s["duplicates"] == 0 and s["lost"] == 0 and s["not_sent"] == 0
                                 for s in (plain, encrypted))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.encryption", description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--messages", type=int, default=30)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--grace", type=float, default=1.0)
    p.add_argument("--sandbox", choices=("default", "on", "off"), default="default")
    p.add_argument("--codec-samples", type=int, default=5000)
    args = p.parse_args(argv)
    args.payload_keys = f"bench={base64.b64encode(secrets.token_bytes(32)).decode()}"
    return args


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.monotonic()
    result: dict[str, Any] = {"benchmark": "encryption", "machine": machine_info(), "date": now_iso()}
    result["codec_alone"] = await codec_alone(args.codec_samples)
    progress(f"codec alone: {result['codec_alone']}")
    result["throughput"] = await throughput(args)
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


if __name__ == "__main__":
    run_main(main)
