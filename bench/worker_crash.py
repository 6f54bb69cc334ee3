"""Recovery after a worker crash: how soon replies flow again, how soon the backlog is gone, and nothing lost or doubled.

    python -m bench.worker_crash [--conversations 10] [--kills 10] [--down-seconds 2] [--interval 1.0]
                                 [--signal kill|term] [--out FILE]

One run: a fresh dev server (SQLite, WAL), `baton api` and `baton worker` as their own processes (settings from the
environment, as in production; the demo AI; no BATON_CONFIG, so the built-in routing with no intents), and a
loopback channel receiver in this process that records every delivery with its `webhook-id` header and arrival time.

Traffic: `--conversations` users, each POSTing a plain message ("question 17 about my order": nothing the demo AI
or an intent reads as a handoff) every `--interval` seconds (+-`--jitter`, one request at a time per user) to
`POST /v1/conversations/{id}/messages`, from the start to the end; the demo AI's reply quotes the user's text, which
maps every reply to the message it answers.

`--kills` cycles: traffic runs `--up-seconds`, the worker gets SIGKILL (`--signal term`: SIGTERM, and its exit is
awaited, a graceful stop), traffic goes on for `--down-seconds` with no worker, then a new `baton worker` process
is spawned; the cycle ends when every message sent before the spawn has its reply at the channel. A cycle whose
backlog is not gone after `--drain-timeout` ends the cycling (the JSON says so under "aborted"; `--keep-going` runs
the remaining cycles anyway). Then traffic stops, every reply is awaited (`--final-timeout`), the transcripts are
read, and the conversations' histories are scanned for workflow/activity task timeouts (a diagnostic, per cycle).

Per cycle:
  first_reply_after_restart_s  the new worker process spawned -> the first channel delivery after that moment
  first_reply_after_ready_s    its log line "worker polling task queue" seen -> the same delivery
  backlog_drained_s            spawned -> the last reply to a message sent before the spawn arrives at the channel
Checks: every message answered 202 has exactly one AI reply delivered; deliveries repeating an already seen
webhook-id are counted (a receiver drops them) and, separately, a (conversation, seq) delivered under two
webhook-ids or a message answered by two replies (both must be 0); per conversation the delivered seqs increase in
arrival order. Targets (the issue's): first_reply_after_restart p99 <= 3 s, backlog_drained p99 <= 5 s, all
delivered, no duplicates. The JSON goes to stdout (and --out), progress to stderr. Everything runs on 127.0.0.1 and
every process started is stopped at the end (also on an error or Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause

from activities import sealing, webhooks
from bench.common import (
    BatonProcess,
    CpuMeter,
    HeaderRecordingReceiver,
    baton_env,
    baton_process,
    code_fingerprint,
    code_info,
    dev_server,
    distribution,
    free_port,
    machine_info,
    now_iso,
    percentile,
    progress,
    rnd,
    run_main,
    wait_http_ok,
)
from models.names import workflow_id

API_KEY = "bk_bench_" + uuid.uuid4().hex
READY_LINE = "worker polling task queue"
TEXT_RX = re.compile(r"question (\d+) about my order")
TARGET_FIRST_REPLY_P99_S = 3.0
TARGET_BACKLOG_P99_S = 5.0

pc = time.perf_counter


def user_text(k: int) -> str:
    # Plain: no greeting, thanks, "person"/"agent"/"human", technical or billing word; nothing redacted at ingress.
    return f"question {k} about my order"


def dist_s(values: list[float], digits: int = 3) -> dict[str, Any]:
    """n, min, p50, p90, p99, max of seconds (linear interpolation between ranks)."""
    return distribution(values, digits, points=(50, 90, 99))


# ---- what was sent and what arrived ----------------------------------------------------------------------------


@dataclass
class Msg:
    cid: str
    k: int
    sent: float
    returned: float | None = None
    status: int | None = None  # None while the POST is in flight; 0: transport error after one retry
    error: str | None = None
    reply_at: float | None = None  # first arrival at the channel of an AI reply quoting this message
    reply_seqs: set[int] = field(default_factory=set)  # distinct seqs of the AI replies quoting it

    @property
    def accepted(self) -> bool:
        return self.status == 202


class Ledger:
    """Every user message sent, and every channel delivery matched to the message it answers."""

    def __init__(self) -> None:
        self.msgs: dict[tuple[str, int], Msg] = {}
        # Per conversation, its messages in sending order from the oldest not known to be answered: what the drain
        # check looks at (O(conversations), however long the run).
        self._open: dict[str, deque[Msg]] = {}
        self.unmatched: list[dict[str, Any]] = []  # deliveries that are not an AI reply to one of our messages
        self.transport_errors: list[str] = []

    def on_delivery(self, record: dict[str, Any]) -> None:
        body = record["body"] or {}
        m = TEXT_RX.search(str(body.get("text", ""))) if body.get("role") == "ai" else None
        msg = self.msgs.get((body.get("conversation_id"), int(m.group(1)))) if m else None
        if msg is None:
            self.unmatched.append({"role": body.get("role"), "author": body.get("author"),
                                   "seq": body.get("seq"), "text": str(body.get("text", ""))[:160]})
            return
        if msg.reply_at is None:
            msg.reply_at = record["arrived"]
        with contextlib.suppress(TypeError, ValueError):
            msg.reply_seqs.add(int(body["seq"]))

    def add(self, msg: Msg) -> None:
        self.msgs[(msg.cid, msg.k)] = msg
        self._open.setdefault(msg.cid, deque()).append(msg)

    def accepted(self) -> list[Msg]:
        return [m for m in self.msgs.values() if m.accepted]

    def all_answered(self, sent_before: float = float("inf")) -> bool:
        """Every message sent before `sent_before` answered, or refused (not 202): nothing left to wait for."""
        done = True
        for q in self._open.values():
            while q and (q[0].reply_at is not None or (q[0].status is not None and not q[0].accepted)):
                q.popleft()
            if q and q[0].sent < sent_before:
                done = False
        return done

    def unanswered_count(self) -> int:
        return sum(1 for m in self.msgs.values() if m.reply_at is None and (m.status is None or m.accepted))


class Traffic:
    """The users: each sends its next message every `interval` (+- jitter), one request at a time."""

    def __init__(self, http: httpx.AsyncClient, ledger: Ledger, cids: list[str], args: argparse.Namespace,
                 rng: random.Random) -> None:
        self.http = http
        self.ledger = ledger
        self.cids = cids
        self.args = args
        self.rng = rng
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        t0 = pc()
        for cid in self.cids:
            # A random phase per user, so the messages are spread over the interval, not sent in bursts.
            self.tasks.append(asyncio.create_task(self._user(cid, t0 + self.rng.uniform(0, self.args.interval))))

    async def _user(self, cid: str, next_at: float) -> None:
        k = 0
        while not self.stop.is_set():
            delay = next_at - pc()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), delay)
                if self.stop.is_set():
                    return
            k += 1
            await self._send(cid, k)
            jitter = self.args.jitter
            next_at += self.args.interval * self.rng.uniform(1 - jitter, 1 + jitter)
            next_at = max(next_at, pc())  # after a slow request: the next one now, never a burst to catch up

    async def _send(self, cid: str, k: int) -> None:
        msg = Msg(cid=cid, k=k, sent=pc())
        self.ledger.add(msg)
        body = {"message_id": f"m{k}", "text": user_text(k)}
        for attempt in (1, 2):
            try:
                r = await self.http.post(f"/v1/conversations/{cid}/messages", json=body)
            except httpx.HTTPError as err:
                error = f"{type(err).__name__}: {err}"
                if attempt == 1:  # idempotent: the same message_id is accepted once
                    self.ledger.transport_errors.append(f"{cid} m{k}: {error} (sent again)")
                    continue
                msg.status, msg.error, msg.returned = 0, error, pc()
                return
            msg.status, msg.returned = r.status_code, pc()
            if r.status_code != 202:
                msg.error = r.text[:300]
            return

    async def halt(self) -> None:
        self.stop.set()
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=60)
            for t in pending:
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)


# ---- the worker process: spawned, killed, spawned again ----------------------------------------------------


class WorkerSlot:
    """One `baton worker` process at a time, each with its own log file (its readiness line is read there)."""

    def __init__(self, env: dict[str, str], home: Path) -> None:
        self.env = env
        self.home = home
        self.count = 0
        self.current: BatonProcess | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self.ready_at: float | None = None
        self._ready_task: asyncio.Task[None] | None = None
        self.cpu_s: dict[int, float] = {}  # pid -> CPU seconds (user + system), last sampled

    def sample_cpu(self) -> None:
        if self.current is not None and self.current.ps is not None:
            with contextlib.suppress(psutil.Error):
                t = self.current.ps.cpu_times()
                self.cpu_s[self.current.ps.pid] = t.user + t.system

    async def spawn(self) -> float:
        """Start a new worker process; returns the moment it was spawned (perf_counter)."""
        assert self.current is None
        self.count += 1
        log_path = self.home / f"worker-{self.count}.log"
        stack = contextlib.AsyncExitStack()
        spawned = pc()
        self.current = await stack.enter_async_context(baton_process("worker", self.env, log_path))
        self._stack = stack
        self.ready_at = None
        self._ready_task = asyncio.create_task(self._watch_ready(self.current))
        return spawned

    async def _watch_ready(self, proc: BatonProcess) -> None:
        """Poll the log every 10 ms for the readiness line (so ready_at is late by up to ~10 ms), for 60 s at most."""
        deadline = pc() + 60
        while pc() < deadline and proc.process.returncode is None:
            with contextlib.suppress(OSError):
                if READY_LINE in proc.log_path.read_text(errors="replace"):
                    self.ready_at = pc()
                    return
            await asyncio.sleep(0.01)

    async def wait_ready(self, timeout: float) -> float | None:
        if self._ready_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._ready_task), timeout)
        return self.ready_at

    async def stop(self, how: str, term_timeout: float = 30.0) -> dict[str, Any]:
        """SIGKILL (how="kill") or SIGTERM and wait for the exit (how="term"; SIGKILL after `term_timeout`)."""
        assert self.current is not None and self._stack is not None
        proc = self.current.process
        out: dict[str, Any] = {"worker": self.count, "pid": proc.pid}
        self.sample_cpu()
        signalled = pc()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10 if how == "kill" else term_timeout)
        except TimeoutError:
            out["forced_kill"] = True
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
        exited = pc()
        out.update(signalled=signalled, exited=exited, returncode=proc.returncode)
        if self._ready_task is not None:
            self._ready_task.cancel()
        await self.close()
        return out

    async def close(self) -> None:
        """Stop whatever runs (baton_process: SIGTERM, SIGKILL 20 s later) and close its log."""
        self.sample_cpu()
        if self._ready_task is not None:
            self._ready_task.cancel()
            self._ready_task = None
        stack, self._stack, self.current = self._stack, None, None
        if stack is not None:
            await stack.aclose()


# ---- the run -------------------------------------------------------------------------------------------------


async def wait_until(predicate: Any, timeout: float, step: float = 0.02) -> bool:
    deadline = pc() + timeout
    while not predicate():
        if pc() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def read_transcript(http: httpx.AsyncClient, cid: str) -> tuple[list[dict[str, Any]], str | None]:
    entries: list[dict[str, Any]] = []
    after = 0
    for _ in range(1000):  # bounded: 1000 pages of 1000
        r = await http.get(f"/v1/conversations/{cid}/transcript", params={"after": after, "limit": 1000})
        if r.status_code != 200:
            return entries, f"{r.status_code} {r.text[:200]}"
        page = r.json()
        entries += page["entries"]
        if not page["entries"] or page["next_after"] >= page["last_seq"]:
            return entries, None
        after = page["next_after"]
    return entries, "more than 1000 pages"


async def history_timeouts(client: Any, task_queue: str, wall_minus_perf: float,
                           cycles: list[dict[str, Any]]) -> dict[str, Any]:
    """Diagnostic: timeouts and failures in the conversations' histories (every run), attributed to cycles by time:
    which timeout held the replies back after a kill."""
    names = {
        EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT: "workflow_task_timed_out",
        EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED: "workflow_task_failed",
        EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out",
        EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed",
    }
    totals: dict[str, int] = {}
    per_cycle: list[dict[str, int]] = [{} for _ in cycles]
    offsets: list[list[tuple[float, str]]] = [[] for _ in cycles]
    runs = 0
    async for wf in client.list_workflows(query=f'TaskQueue="{task_queue}"'):
        runs += 1
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        for e in history.events:
            name = names.get(e.event_type)
            if name is None:
                continue
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                name += "." + _timeout_name(e.workflow_task_timed_out_event_attributes.timeout_type)
            elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                cause = e.workflow_task_failed_event_attributes.cause
                name += "." + WorkflowTaskFailedCause.Name(cause).removeprefix("WORKFLOW_TASK_FAILED_CAUSE_").lower()
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
                failure = e.activity_task_timed_out_event_attributes.failure
                name += "." + _timeout_name(failure.timeout_failure_info.timeout_type)
            totals[name] = totals.get(name, 0) + 1
            at = e.event_time.seconds + e.event_time.nanos / 1e9 - wall_minus_perf
            for i, c in reversed(list(enumerate(cycles))):
                if at >= c["_killed"]:
                    per_cycle[i][name] = per_cycle[i].get(name, 0) + 1
                    offsets[i].append((at - c["_spawned"], name))
                    break
    for c, counts, offs in zip(cycles, per_cycle, offsets):
        c["history_timeouts"] = counts
        # When each happened, s after the spawn (negative: before it), the first 20 in time order.
        c["history_timeout_times_s"] = [[round(t, 2), name] for t, name in sorted(offs)[:20]]
    return {"runs_read": runs, "totals": totals}


async def dump_slowest(client: Any, ledger: Ledger, cycles: list[dict[str, Any]], dest: Path) -> list[str]:
    """--dump-history: the histories (every run, JSON) of the conversation whose backlog drained last in the worst
    cycle, to see where the time went."""
    worst = None
    for c in cycles:
        backlog = [m for m in ledger.msgs.values()
                   if m.accepted and m.sent < c["_spawned"] and (m.reply_at is None or m.reply_at > c["_spawned"])]
        for m in backlog:
            late = (m.reply_at if m.reply_at is not None else float("inf")) - c["_spawned"]
            if worst is None or late > worst[0]:
                worst = (late, m.cid, c["cycle"])
    if worst is None:
        return []
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        async for wf in client.list_workflows(query=f'WorkflowId="{workflow_id(worst[1])}"'):
            history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
            path = dest / f"{worst[1]}-cycle{worst[2]}-{wf.run_id}.json"
            path.write_text(history.to_json())
            written.append(str(path))
    except Exception as err:  # noqa: BLE001 - a diagnostic
        written.append(f"error: {type(err).__name__}: {err}")
    return written


def _timeout_name(value: int) -> str:
    from temporalio.api.enums.v1 import TimeoutType

    with contextlib.suppress(ValueError):
        return TimeoutType.Name(value).removeprefix("TIMEOUT_TYPE_").lower()
    return str(value)


def cycle_figures(c: dict[str, Any], ledger: Ledger, arrivals: list[float]) -> dict[str, Any]:
    """The figures of one cycle, from the recorded times (all perf_counter in this process)."""
    killed, spawned, ready = c["_killed"], c["_spawned"], c["_ready"]
    first = next((a for a in arrivals if a > spawned), None)
    msgs = [m for m in ledger.msgs.values() if m.accepted]
    before_spawn = [m for m in msgs if m.sent < spawned]
    backlog = [m for m in before_spawn if m.reply_at is None or m.reply_at > spawned]
    answered = [m.reply_at for m in backlog if m.reply_at is not None]
    drained = None
    if len(answered) == len(backlog):
        drained = max(answered) - spawned if answered else 0.0
    offsets = sorted(a - spawned for a in answered)
    # Replies in flight when the worker died: sent before the kill, not at the channel by then.
    in_flight = [m for m in msgs if m.sent < killed and (m.reply_at is None or m.reply_at > killed)]
    # The conversations whose backlog took longest: when their last backlog reply came (s after the spawn).
    last_per_conv: dict[str, float] = {}
    for m in backlog:
        if m.reply_at is not None:
            last_per_conv[m.cid] = max(last_per_conv.get(m.cid, 0.0), m.reply_at - spawned)
    slow = sorted(last_per_conv.items(), key=lambda kv: -kv[1])[:3]
    return {
        "cycle": c["cycle"],
        "signal": c["signal"],
        "loadavg_1m_at_stop": c.get("loadavg_1m_at_stop"),
        "code_fingerprint_at_spawn": c.get("code_fingerprint"),
        "stop_s": rnd(c["_exited"] - killed, 3),  # signal -> the process exited (SIGTERM: its graceful stop)
        "returncode": c["returncode"],
        "forced_kill": c.get("forced_kill", False),
        "down_s": rnd(spawned - killed, 3),  # signal -> the new process spawned
        "worker_ready_s": rnd(None if ready is None else ready - spawned, 3),  # spawned -> readiness log line
        "first_reply_after_restart_s": rnd(None if first is None else first - spawned, 3),
        "first_reply_after_ready_s": rnd(None if first is None or ready is None else first - ready, 3),
        "backlog_drained_s": rnd(drained, 3),
        "drain_timed_out": c["drain_timed_out"],
        "replies_in_flight_at_kill": len(in_flight),
        "sent_while_down": sum(1 for m in msgs if killed <= m.sent < spawned),
        "backlog_at_spawn": len(backlog),
        "backlog_reply_offsets_s": {  # each backlog reply's arrival, s after the spawn
            "p50": rnd(percentile(offsets, 50), 3), "p90": rnd(percentile(offsets, 90), 3),
            "max": rnd(offsets[-1] if offsets else None, 3),
            "over_5s": sum(1 for o in offsets if o > 5), "over_9s": sum(1 for o in offsets if o > 9),
        },
        "slowest_conversations": [[cid, rnd(s, 3)] for cid, s in slow],
    }


def check(ledger: Ledger, receiver: HeaderRecordingReceiver, transcripts: dict[str, list[dict[str, Any]]],
          transcript_errors: dict[str, str]) -> dict[str, Any]:
    accepted = ledger.accepted()
    delivered = [m for m in accepted if m.reply_at is not None]
    multi = [m for m in accepted if len(m.reply_seqs) > 1]

    # Deliveries repeating a webhook-id already seen (a receiver drops these), then, after that de-duplication,
    # (conversation, seq) pairs that came under more than one webhook-id.
    seen_ids: set[str] = set()
    repeated_ids = 0
    missing_id = 0
    ids_per_seq: dict[tuple[str, int], set[str]] = {}
    first_arrivals: dict[str, list[int]] = {}  # cid -> seqs in arrival order, first delivery of each webhook-id
    for d in receiver.deliveries:
        body = d["body"] or {}
        wid = d["headers"].get(webhooks.ID_HEADER)
        if not wid:
            missing_id += 1
            continue
        if wid in seen_ids:
            repeated_ids += 1
            continue
        seen_ids.add(wid)
        with contextlib.suppress(KeyError, TypeError, ValueError):
            cid, seq = body["conversation_id"], int(body["seq"])
            ids_per_seq.setdefault((cid, seq), set()).add(wid)
            first_arrivals.setdefault(cid, []).append(seq)
    seq_under_two_ids = sum(1 for ids in ids_per_seq.values() if len(ids) > 1)

    # In order: per conversation the delivered seqs increase in arrival order; and replies come in the order of
    # the messages they answer.
    out_of_order = 0
    for seqs in first_arrivals.values():
        top = 0
        for s in seqs:
            if s <= top:
                out_of_order += 1
            top = max(top, s)
    reply_order_violations = 0
    by_conv: dict[str, list[Msg]] = {}
    for m in accepted:
        by_conv.setdefault(m.cid, []).append(m)
    for ms in by_conv.values():
        ms.sort(key=lambda m: m.k)
        last = 0
        for m in ms:
            if m.reply_seqs:
                s = min(m.reply_seqs)
                if s <= last:
                    reply_order_violations += 1
                last = max(last, s)

    # The transcripts: every accepted message recorded once; every AI entry delivered.
    user_missing = user_twice = ai_entries = ai_not_delivered = 0
    delivered_seqs = set(ids_per_seq)
    for cid, entries in transcripts.items():
        counts: dict[str, int] = {}
        for e in entries:
            if e["role"] == "user":
                counts[e["message_id"]] = counts.get(e["message_id"], 0) + 1
            elif e["role"] == "ai":
                ai_entries += 1
                if (cid, e["seq"]) not in delivered_seqs:
                    ai_not_delivered += 1
        for m in by_conv.get(cid, []):
            n = counts.get(f"m{m.k}", 0)
            user_missing += n == 0
            user_twice += n > 1
    other_roles: dict[str, int] = {}
    for u in ledger.unmatched:
        key = f"{u['role']}/{u['author']}"
        other_roles[key] = other_roles.get(key, 0) + 1
    return {
        "messages_sent": len(ledger.msgs),
        "messages_accepted_202": len(accepted),
        "messages_refused": {str(s): sum(1 for m in ledger.msgs.values() if m.status == s)
                             for s in sorted({m.status for m in ledger.msgs.values() if m.status != 202}, key=str)},
        "refusal_examples": [f"{m.cid} m{m.k}: {m.status} {m.error}" for m in ledger.msgs.values()
                             if m.status != 202][:5],
        "transport_errors_retried": len(ledger.transport_errors),
        "expected": len(accepted),
        "delivered": len(delivered),
        "delivered_ratio": rnd(len(delivered) / len(accepted), 4) if accepted else None,
        "missing_examples": [f"{m.cid} m{m.k}" for m in accepted if m.reply_at is None][:10],
        "channel_deliveries": len(receiver.deliveries),
        "duplicates": {
            "repeated_webhook_id": repeated_ids,  # redeliveries a receiver drops by webhook-id
            "seq_under_different_webhook_ids": seq_under_two_ids,  # must be 0
            "messages_with_more_than_one_ai_reply": len(multi),  # must be 0
            "deliveries_without_webhook_id": missing_id,
        },
        "out_of_order": out_of_order,
        "reply_order_violations": reply_order_violations,
        "unmatched_deliveries": {"count": len(ledger.unmatched), "by_role_author": other_roles,
                                 "examples": ledger.unmatched[:5]},
        "transcripts": {
            "read": len(transcripts), "errors": transcript_errors,
            "accepted_messages_missing": user_missing, "accepted_messages_twice": user_twice,
            "ai_entries": ai_entries, "ai_entries_not_delivered": ai_not_delivered,
        },
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    tag = f"wc{uuid.uuid4().hex[:6]}"
    task_queue = f"bench-{tag}"
    home = Path(tempfile.mkdtemp(prefix="baton-crash-home-"))
    ledger = Ledger()
    cycles: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    aborted: str | None = None
    wall_minus_perf = time.time() - pc()
    code_before = code_fingerprint()
    keep = bool(args.keep_logs)
    try:
        async with dev_server(sqlite=True) as server, HeaderRecordingReceiver() as receiver:
            receiver.on_delivery = ledger.on_delivery
            port = free_port()
            env = baton_env(
                server,
                BATON_HOME=str(home),
                BATON_TASK_QUEUE=task_queue,
                BATON_API_KEY=API_KEY,
                BATON_ADMIN_KEY="ba_bench_" + uuid.uuid4().hex,
                BATON_SECRET_KEY=sealing.new_key(),
                BATON_CHANNEL_URL=receiver.url,
                BATON_CHANNEL_SECRET=webhooks.generate_secret(),
                BATON_AI_AGENT="demo",
                BATON_API_HOST="127.0.0.1",
                BATON_API_PORT=str(port),
                BATON_PUBLIC_URL=f"http://127.0.0.1:{port}",
            )
            base = f"http://127.0.0.1:{port}"
            worker = WorkerSlot(env, home)
            # Idle connections dropped after 2 s, before uvicorn's 5 s keep-alive timeout closes them (as desk_load).
            limits = httpx.Limits(max_connections=args.conversations + 10,
                                  max_keepalive_connections=args.conversations + 10, keepalive_expiry=2.0)
            cids = [f"{tag}-c{i:03d}" for i in range(args.conversations)]
            try:
                async with (
                    baton_process("api", env, home / "api.log") as api,
                    httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}, limits=limits,
                                      timeout=httpx.Timeout(30.0)) as http,
                ):
                    spawned0 = await worker.spawn()
                    meter = CpuMeter({"api": api.ps, "dev_server": server.process, "driver_and_receiver": psutil.Process()})
                    meter.start()
                    await wait_http_ok(f"{base}/healthz", 60, api)
                    ready0 = await worker.wait_ready(60)
                    if ready0 is None:
                        raise RuntimeError(f"the first worker did not log {READY_LINE!r} within 60 s:\n"
                                           f"{worker.current.log_tail() if worker.current else ''}")
                    progress(f"api and worker up (worker ready {ready0 - spawned0:.2f}s after spawn); "
                             f"{args.conversations} conversations, a message every {args.interval}s each")
                    traffic = Traffic(http, ledger, cids, args, rng)
                    traffic.start()
                    try:
                        ok = await wait_until(lambda: all(ledger.msgs.get((c, 1)) and ledger.msgs[(c, 1)].reply_at
                                                          for c in cids), 60)
                        if not ok:
                            raise RuntimeError("not every conversation got its first reply within 60 s:\n"
                                               f"{worker.current.log_tail() if worker.current else ''}\n"
                                               f"api:\n{api.log_tail()}")
                        warm_at = pc()
                        progress(f"every conversation answered once; warm-up {args.warmup_seconds}s")
                        await asyncio.sleep(args.warmup_seconds)
                        for n in range(1, args.kills + 1):
                            await asyncio.sleep(args.up_seconds)
                            load1 = round(os.getloadavg()[0], 2)
                            stopped = await worker.stop(args.signal)
                            await asyncio.sleep(args.down_seconds)
                            spawned = await worker.spawn()
                            fingerprint = code_fingerprint()  # the code the new worker loads (another edit?)
                            c: dict[str, Any] = {"cycle": n, "signal": args.signal, "_killed": stopped["signalled"],
                                                 "_exited": stopped["exited"], "returncode": stopped["returncode"],
                                                 "_spawned": spawned, "loadavg_1m_at_stop": load1,
                                                 "code_fingerprint": fingerprint}
                            if stopped.get("forced_kill"):
                                c["forced_kill"] = True
                            drained = await wait_until(lambda: ledger.all_answered(sent_before=spawned),
                                                       args.drain_timeout, step=0.05)
                            c["_ready"] = await worker.wait_ready(5)
                            c["drain_timed_out"] = not drained
                            c["_drained_wait_end"] = pc()
                            cycles.append(c)
                            quick = cycle_figures(c, ledger, [d["arrived"] for d in receiver.deliveries])
                            progress(f"cycle {n}/{args.kills}: {args.signal} -> stopped in {quick['stop_s']}s, "
                                     f"ready {quick['worker_ready_s']}s after spawn, first reply "
                                     f"{quick['first_reply_after_restart_s']}s, backlog of {quick['backlog_at_spawn']} "
                                     f"drained {quick['backlog_drained_s']}s after spawn"
                                     + (" (DRAIN TIMED OUT)" if not drained else ""))
                            if not drained and not args.keep_going:
                                aborted = (f"cycle {n}: the backlog did not drain within {args.drain_timeout}s, so the "
                                           f"remaining {args.kills - n} cycles were not run (--keep-going runs them)")
                                progress(aborted)
                                break
                    finally:
                        await traffic.halt()
                    traffic_halted = pc()
                    progress(f"traffic stopped: {len(ledger.msgs)} messages sent; waiting for every reply "
                             f"(at most {args.final_timeout}s)")
                    all_in = await wait_until(ledger.all_answered, args.final_timeout, step=0.1)
                    if not all_in:
                        progress(f"{ledger.unanswered_count()} messages still without a reply after "
                                 f"{args.final_timeout}s")
                    await asyncio.sleep(args.grace)  # late redeliveries
                    worker.sample_cpu()
                    cpu = meter.stop()
                    transcripts: dict[str, list[dict[str, Any]]] = {}
                    transcript_errors: dict[str, str] = {}

                    async def one_transcript(cid: str) -> None:
                        try:
                            entries, error = await read_transcript(http, cid)
                        except httpx.HTTPError as err:
                            entries, error = [], f"{type(err).__name__}: {err}"
                        if error:
                            transcript_errors[cid] = error
                        else:
                            transcripts[cid] = entries

                    reading = [asyncio.create_task(one_transcript(cid)) for cid in cids]
                    _, late = await asyncio.wait(reading, timeout=90)  # bounded: queries need a live worker
                    for t in late:
                        t.cancel()
                    await asyncio.gather(*reading, return_exceptions=True)
                    for cid in cids:
                        if cid not in transcripts and cid not in transcript_errors:
                            transcript_errors[cid] = "not read within 90 s"
                    diag: dict[str, Any]
                    try:
                        diag = await asyncio.wait_for(
                            history_timeouts(server.client, task_queue, wall_minus_perf, cycles), 120)
                    except Exception as err:  # noqa: BLE001 - a diagnostic: reported, never fatal
                        diag = {"error": f"{type(err).__name__}: {err}"}
                    if args.dump_history:
                        diag["dumped"] = await dump_slowest(server.client, ledger, cycles, Path(args.dump_history))
            finally:
                await worker.close()
            arrivals = [d["arrived"] for d in receiver.deliveries]
            figures = [cycle_figures(c, ledger, arrivals) for c in cycles]
            for f, c in zip(figures, cycles):
                f["history_timeouts"] = c.get("history_timeouts", {})
                f["history_timeout_times_s"] = c.get("history_timeout_times_s", [])
            checks = check(ledger, receiver, transcripts, transcript_errors)
            checks["all_replies_within_final_timeout"] = all_in

            # Reply latency (POST sent -> reply at the channel): all messages, and those sent in steady stretches
            # (from a drain's end, or every conversation's first reply, to 1 s before the next stop).
            steady: list[tuple[float, float]] = []
            start = warm_at
            for c in cycles:
                steady.append((start, c["_killed"] - 1.0))
                start = c["_drained_wait_end"]
            steady.append((start, traffic_halted))
            lat_all = [m.reply_at - m.sent for m in ledger.accepted() if m.reply_at is not None]
            lat_steady = [m.reply_at - m.sent for m in ledger.accepted() if m.reply_at is not None
                          and any(a <= m.sent < b for a, b in steady)]
            post = [m.returned - m.sent for m in ledger.msgs.values() if m.returned is not None]

            first = [f["first_reply_after_restart_s"] for f in figures if f["first_reply_after_restart_s"] is not None]
            first_ready = [f["first_reply_after_ready_s"] for f in figures if f["first_reply_after_ready_s"] is not None]
            backlog = [f["backlog_drained_s"] for f in figures if f["backlog_drained_s"] is not None]
            ready = [f["worker_ready_s"] for f in figures if f["worker_ready_s"] is not None]
            stop_s = [f["stop_s"] for f in figures if f["stop_s"] is not None]
            complete = len(figures) == args.kills
            dup = checks["duplicates"]
            result = {
                "summary": {
                    "cycles": len(figures),
                    "first_reply_after_restart_s": dist_s(first),
                    "first_reply_after_ready_s": dist_s(first_ready),
                    "backlog_drained_s": dist_s(backlog),
                    "worker_ready_after_spawn_s": dist_s(ready),
                    "worker_stop_s": dist_s(stop_s),
                    "cycles_drain_timed_out": sum(1 for f in figures if f["drain_timed_out"]),
                    "delivered": checks["delivered"],
                    "expected": checks["expected"],
                    "duplicates": dup,
                    "out_of_order": checks["out_of_order"],
                    "reply_latency_all_s": dist_s(lat_all),
                    "reply_latency_steady_s": dist_s(lat_steady),
                    "post_message_s": dist_s(post),
                },
                "targets": {
                    # Only with every cycle run and measured (none at all: nothing shown, so False).
                    "first_reply_p99_le_3s": bool(complete and first and len(first) == len(figures)
                                                  and (percentile(first, 99) or 0.0) <= TARGET_FIRST_REPLY_P99_S),
                    "backlog_p99_le_5s": bool(complete and backlog and len(backlog) == len(figures)
                                              and (percentile(backlog, 99) or 0.0) <= TARGET_BACKLOG_P99_S),
                    "all_delivered": bool(checks["expected"] and checks["delivered"] == checks["expected"]
                                          and checks["transcripts"]["accepted_messages_missing"] == 0
                                          and checks["transcripts"]["ai_entries_not_delivered"] == 0),
                    "no_duplicates": dup["seq_under_different_webhook_ids"] == 0
                                     and dup["messages_with_more_than_one_ai_reply"] == 0
                                     and checks["transcripts"]["accepted_messages_twice"] == 0,
                    "in_order": checks["out_of_order"] == 0 and checks["reply_order_violations"] == 0,
                },
                "per_cycle": figures,
                "checks": checks,
                "history_diagnostic": diag,
                "cpu_seconds": _cpu_block(cpu, worker.cpu_s),
                "aborted": aborted,
                "dev_server": {"persistence": server.persistence,
                               "warnings_logged": len(server.log_lines(r'"level":"(warn|error)"'))},
            }
    finally:
        if keep:
            dest = Path(args.keep_logs)
            dest.mkdir(parents=True, exist_ok=True)
            for p in home.glob("*.log"):
                with contextlib.suppress(OSError):
                    shutil.copy2(p, dest / p.name)
        shutil.rmtree(home, ignore_errors=True)
    code_after = code_fingerprint()
    result["code_fingerprint"] = {"before": code_before, "after": code_after, "changed_during_run": code_before != code_after}
    return result


def _cpu_block(cpu: dict[str, float | None], workers: dict[int, float]) -> dict[str, Any]:
    """CPU seconds over the measured stretch: ours by process, the machine's busy time, and the rest (other
    processes on the machine: a concurrent test run, say)."""
    worker_total = sum(workers.values())
    ours = worker_total + sum(v or 0.0 for k, v in cpu.items() if k in ("api", "dev_server", "driver_and_receiver"))
    return {
        "wall_s": rnd(cpu.get("wall"), 1),
        "workers_total": rnd(worker_total, 1),
        "worker_processes": len(workers),
        "api": rnd(cpu.get("api"), 1),
        "dev_server": rnd(cpu.get("dev_server"), 1),
        "driver_and_receiver": rnd(cpu.get("driver_and_receiver"), 1),
        "machine_busy": rnd(cpu.get("machine_busy"), 1),
        "other_processes": rnd(max(0.0, (cpu.get("machine_busy") or 0.0) - ours), 1),
        "cpus": psutil.cpu_count(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.worker_crash", description=__doc__.splitlines()[0])
    p.add_argument("--conversations", type=int, default=10, help="users sending messages all along (10 leave two shared cores headroom to catch up)")
    p.add_argument("--kills", type=int, default=10, help="stop/restart cycles of the worker")
    p.add_argument("--down-seconds", type=float, default=2.0, help="seconds with no worker (messages keep coming)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between one user's messages")
    p.add_argument("--jitter", type=float, default=0.2, help="each interval is drawn in interval*(1 +- jitter)")
    p.add_argument("--signal", choices=("kill", "term"), default="kill",
                   help="kill: SIGKILL (a crash); term: SIGTERM and wait for the exit (a graceful stop)")
    p.add_argument("--up-seconds", type=float, default=3.0,
                   help="seconds of traffic with the worker up before each stop (after the previous backlog drained)")
    p.add_argument("--warmup-seconds", type=float, default=3.0, help="traffic before the first stop (not a cycle)")
    p.add_argument("--drain-timeout", type=float, default=60.0, help="seconds a cycle waits for its backlog at most")
    p.add_argument("--final-timeout", type=float, default=60.0, help="seconds to wait for every reply at the end")
    p.add_argument("--grace", type=float, default=2.0, help="seconds to keep listening for late duplicates at the end")
    p.add_argument("--keep-going", action="store_true",
                   help="run the remaining cycles even after a cycle's backlog did not drain (default: stop cycling)")
    p.add_argument("--seed", type=int, default=1, help="random seed (phases and jitter of the users)")
    p.add_argument("--dump-history", metavar="DIR",
                   help="write the history of the conversation that recovered last to DIR (JSON, every run)")
    p.add_argument("--keep-logs", metavar="DIR", help="copy the worker and API logs to DIR")
    p.add_argument("--out", metavar="FILE", help="also write the JSON to FILE")
    args = p.parse_args(argv)
    if args.conversations < 1 or args.kills < 0 or args.interval <= 0 or not 0 <= args.jitter < 1:
        p.error("--conversations >= 1, --kills >= 0, --interval > 0, 0 <= --jitter < 1")
    return args


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.monotonic()
    machine = machine_info()
    out: dict[str, Any] = {
        "benchmark": "worker_crash",
        "date": now_iso(),
        "config": {
            "conversations": args.conversations, "kills": args.kills, "signal": args.signal,
            "down_seconds": args.down_seconds, "interval_s": args.interval, "jitter": args.jitter,
            "up_seconds": args.up_seconds, "warmup_seconds": args.warmup_seconds,
            "drain_timeout_s": args.drain_timeout, "final_timeout_s": args.final_timeout, "seed": args.seed,
            "offered_load_msgs_per_s": round(args.conversations / args.interval, 1),
            # Set: Baton's processes (and this one) import Baton's code from there first, not from this checkout
            # (code_info and code_fingerprint describe this checkout).
            "pythonpath": os.environ.get("PYTHONPATH"),
            "setup": "a fresh dev server (SQLite, WAL); `baton api` and `baton worker` as their own processes "
                     "(settings from the environment, demo AI, no BATON_CONFIG: built-in routing, no intents); "
                     "traffic and the loopback channel receiver in this process; one worker process at a time",
            "definitions": {
                "first_reply_after_restart_s": "new worker process spawned -> first channel delivery after that",
                "first_reply_after_ready_s": f"its log line {READY_LINE!r} seen (polled every 10 ms) -> the same delivery",
                "backlog_drained_s": "spawned -> the last reply (first arrival) to a message that was POSTed before "
                                     "the spawn and answered 202",
                "worker_ready_s": "spawned -> the readiness log line seen",
                "stop_s": "signal sent -> the process exited",
                "replies_in_flight_at_kill": "messages sent before the signal whose reply had not arrived by then",
                "backlog_at_spawn": "messages sent before the spawn whose reply had not arrived by then",
                "duplicates": "repeated_webhook_id: deliveries whose webhook-id was seen before (dropped by a "
                              "receiver); seq_under_different_webhook_ids: (conversation, seq) delivered under "
                              "2+ webhook-ids; messages_with_more_than_one_ai_reply: a message quoted by 2+ AI "
                              "replies (different seqs)",
                "out_of_order": "per conversation, deliveries (first of each webhook-id, in arrival order) whose "
                                "seq is not above every seq delivered before",
                "percentiles": "linear interpolation between ranks; with 10 cycles p99 is close to the max",
            },
        },
        "machine_info": machine,
        "code_info": code_info(),
    }
    out.update(await run(args))
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out["elapsed_s"] = round(time.monotonic() - started, 1)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


if __name__ == "__main__":
    run_main(main)
