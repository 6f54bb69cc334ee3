"""The live-agent desk under load: many conversations asking for a person at once, a few agents claiming and replying.

    python -m bench.desk_load [--conversations 200] [--agents 4] [--runs 3] [--poll-interval 0.25]

Per run: a fresh dev server (SQLite, WAL), the real `baton worker` and `baton api` as their own processes
(settings from the environment, as in production; a fresh BATON_HOME with its agent registry), and a loopback
channel receiver in this process that records every delivered message with its arrival time.

1. The operator creates `--agents` live agents (queue `general`) through the admin API.
2. All conversations start at once: each user sends a message, then the chat backend triggers a handoff to
   `general` (`POST .../handoff`); the user then writes once more while waiting.
3. One poller lists `GET /v1/desk/queues/general/waiting` in a loop (`--poll-interval` between listings)
   and records when each conversation first appears: trigger -> waiting list.
4. The agents work the poller's latest listing (as several desk screens showing the same list): each claims
   the oldest entry it has not tried yet (409: another agent won; it takes the next), replies twice at once,
   then closes or releases the conversation. The first reply's arrival at the channel: claim -> first reply.
5. Checks: one successful claim per conversation, every agent reply delivered exactly once and in order,
   no duplicate (conversation, seq) or message_id at the channel, seqs increasing per conversation in
   arrival order, every channel message in the transcript, every user message in the transcript once.
6. A bare-Temporal baseline on the same dev server (bench/baseline.py's workflow, its own worker process):
   the same number of workflows started with the desk's search attributes and found by the same kind of
   visibility query (start -> listed), then signal -> activity -> delivery to the same receiver.

The JSON (stdout) gives p50/p95/p99/max per run and the median of each across runs, claim -> first reply also split
by whether the claim answered while the burst's users were still being answered. Progress goes to stderr.
`--histories DIR` keeps the histories of the slowest conversations (claim -> reply, and the handoff call) with the
driver's times, to read where their time went.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from activities import sealing, webhooks
from bench import baseline
from bench.common import (
    CpuMeter,
    RecordingReceiver,
    WorkerProcess,
    WorkerSpec,
    baton_env,
    code_fingerprint,
    baton_process,
    dev_server,
    distribution,
    free_port,
    machine_info,
    median,
    now_iso,
    progress,
    ratio,
    rnd,
    run_main,
    wait_http_ok,
)
from models.names import WORKFLOW_ID_PREFIX, WORKFLOW_TYPE, SearchAttributes

QUEUE = "general"
API_KEY = "bk_bench_" + uuid.uuid4().hex
ADMIN_KEY = "ba_bench_" + uuid.uuid4().hex
HANDOFF = {"reason": "user asked for a person", "target": {"queue": QUEUE}}
PERCENTILES = ("p50", "p95", "p99", "max")
# Claim -> first reply split by when the claim answered: while the burst's users were still being answered, or after.
PHASES = ("during_the_burst", "after_the_burst")

pc = time.perf_counter


def ms(a: float | None, b: float | None) -> float | None:
    """b - a in milliseconds (None if either is missing)."""
    return None if a is None or b is None else (b - a) * 1000


def user_text(i: int) -> str:
    # Nothing the demo AI reads as a request for a person, nothing the redaction would touch.
    return f"Where is my order number {i}? It was supposed to arrive yesterday."


FOLLOWUP_TEXT = "Thanks, I will stay in this chat meanwhile."


# ---- one run's record of a conversation ----------------------------------------------------------------------


@dataclass
class Conv:
    cid: str
    index: int
    end: str  # "close" | "release"
    user_messages: dict[str, str] = field(default_factory=dict)  # message_id -> text, every one sent with 2xx
    user_gave_up: bool = False  # the first message or the handoff failed: nothing to claim
    message_status: int | None = None
    trigger_sent: float | None = None
    trigger_returned: float | None = None
    trigger_status: int | None = None
    trigger_error: str | None = None
    followup_status: int | None = None
    listed_request_sent: float | None = None  # the listing that first showed it: when it was asked for
    listed_at: float | None = None  # ... and when its answer arrived (what an agent sees)
    listed_position: int | None = None
    visible_at: float | None = None  # --probe-visibility: first seen by a direct visibility query
    claims: list[tuple[str, int, float, float]] = field(default_factory=list)  # agent, status, sent, returned
    claimed_by: str | None = None
    claim_returned: float | None = None
    replies: list[dict[str, Any]] = field(default_factory=list)  # message_id, status, sent, returned, seq
    end_status: int | None = None
    end_sent: float | None = None
    end_returned: float | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.end_status is not None


class Listing:
    """The poller's latest waiting list, shared by the agents (several desk screens showing one list)."""

    def __init__(self) -> None:
        self.cids: list[str] = []
        self.requested_at = 0.0  # when the request for this listing was sent
        self.version = 0
        self._changed = asyncio.Event()

    def publish(self, cids: list[str], requested_at: float) -> None:
        self.cids = cids
        self.requested_at = requested_at
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def newer_than(self, version: int, timeout: float) -> None:
        if self.version > version:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)


def as_agent(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post(http: httpx.AsyncClient, path: str, body: Any = None, headers: dict[str, str] | None = None,
               retry: Any = None) -> tuple[int, Any, float, float]:
    """(status, JSON body or text, sent, returned); status 0 for a transport error. With `retry` (an object with
    a `transport_errors` list), a transport error is noted there and the request sent once more: only for
    idempotent requests (a user's message with the same message_id is accepted once)."""
    for attempt in (1, 2):
        sent = pc()
        try:
            r = await http.post(path, json=body, headers=headers)
        except httpx.HTTPError as err:
            error = f"{type(err).__name__}: {err}"
            if retry is not None and attempt == 1:
                retry.transport_errors.append(f"POST {path}: {error} (sent again)")
                continue
            return 0, error, sent, pc()
        returned = pc()
        try:
            payload = r.json()
        except ValueError:
            payload = r.text
        return r.status_code, payload, sent, returned
    raise AssertionError("unreachable")


# ---- the Baton side of one run -------------------------------------------------------------------------------


class DeskRun:
    def __init__(self, http: httpx.AsyncClient, receiver: RecordingReceiver, tag: str, args: argparse.Namespace,
                 tokens: dict[str, str], client: Any = None, task_queue: str | None = None) -> None:
        self.http = http
        self.client = client
        self.task_queue = task_queue
        self.probe_durations: list[float] = []
        self.probe_errors: list[str] = []
        self.receiver = receiver
        self.tag = tag
        self.args = args
        self.tokens = tokens
        ends = {"close": ["close"], "release": ["release"], "mix": ["close", "release"]}[args.end]
        self.convs = {
            c.cid: c for c in (Conv(cid=f"{tag}-c{i:04d}", index=i, end=ends[i % len(ends)])
                               for i in range(args.conversations))
        }
        self.listing = Listing()
        self.list_durations: list[float] = []
        self.list_sizes: list[int] = []
        self.list_errors: list[str] = []
        self.unknown_listed: set[str] = set()
        self.claim_other_statuses: dict[str, int] = {}
        self.claim_409_details: dict[str, int] = {}
        self.stop = asyncio.Event()
        self.task_errors: list[str] = []
        self.transport_errors: list[str] = []  # retried idempotent requests (not Baton failures by themselves)

    # -- users and the chat backend

    async def user(self, conv: Conv, gate: asyncio.Event) -> None:
        await gate.wait()
        mid = "m1"
        status, payload, _, _ = await post(self.http, f"/v1/conversations/{conv.cid}/messages",
                                           {"message_id": mid, "text": user_text(conv.index)}, retry=self)
        conv.message_status = status
        if status != 202:
            conv.errors.append(f"first message: {status} {payload}")
            conv.user_gave_up = True
            return
        conv.user_messages[mid] = user_text(conv.index)
        status, payload, sent, returned = await post(self.http, f"/v1/conversations/{conv.cid}/handoff", HANDOFF)
        conv.trigger_sent, conv.trigger_status = sent, status
        if 200 <= status < 300:
            conv.trigger_returned = returned
        else:
            conv.trigger_error = f"{status} {payload}"
            conv.errors.append(f"handoff: {status} {payload}")
            conv.user_gave_up = True
            return
        if self.args.followup:
            status, payload, _, _ = await post(self.http, f"/v1/conversations/{conv.cid}/messages",
                                               {"message_id": "m2", "text": FOLLOWUP_TEXT}, retry=self)
            conv.followup_status = status
            if status == 202:
                conv.user_messages["m2"] = FOLLOWUP_TEXT
            else:
                conv.errors.append(f"follow-up message: {status} {payload}")

    # -- the waiting list

    async def poller(self, token: str) -> None:
        while not self.stop.is_set():
            sent = pc()
            try:
                # limit=500: every waiting conversation, so "appears in the list" does not wait for the queue to
                # drain below the default page of 50.
                r = await self.http.get(f"/v1/desk/queues/{QUEUE}/waiting", params={"limit": 500},
                                        headers=as_agent(token))
            except httpx.HTTPError as err:
                self.list_errors.append(f"{type(err).__name__}: {err}")
                await asyncio.sleep(self.args.poll_interval)
                continue
            returned = pc()
            if r.status_code != 200:
                self.list_errors.append(f"{r.status_code} {r.text[:300]}")
            else:
                self.list_durations.append((returned - sent) * 1000)
                rows = r.json()["waiting"]
                self.list_sizes.append(len(rows))
                cids = []
                for row in rows:
                    cid = row["conversation_id"]
                    conv = self.convs.get(cid)
                    if conv is None:
                        self.unknown_listed.add(cid)
                        continue
                    cids.append(cid)
                    if conv.listed_at is None:
                        conv.listed_request_sent, conv.listed_at = sent, returned
                        conv.listed_position = row["position"]
                self.listing.publish(cids, sent)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.args.poll_interval)

    async def probe(self) -> None:
        """Diagnostic (--probe-visibility): the desk's visibility query straight to Temporal, without the desk's
        per-row snapshot confirmation: when each conversation becomes visible as waiting."""
        query = (f'WorkflowType="{WORKFLOW_TYPE}" AND ExecutionStatus="Running" AND BatonState="handoff_pending" '
                 f'AND BatonQueue="{QUEUE}" AND TaskQueue="{self.task_queue}"')
        while not self.stop.is_set():
            sent = pc()
            try:
                ids = [e.id async for e in self.client.list_workflows(query=query)]
            except Exception as err:  # noqa: BLE001 - a diagnostic: reported, never fatal
                self.probe_errors.append(f"{type(err).__name__}: {err}")
                ids = []
            returned = pc()
            self.probe_durations.append((returned - sent) * 1000)
            for wid in ids:
                conv = self.convs.get(wid.removeprefix(WORKFLOW_ID_PREFIX))
                if conv is not None and conv.visible_at is None:
                    conv.visible_at = returned
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.args.poll_interval)

    # -- the agents

    async def agent(self, name: str, token: str) -> None:
        # cid -> when this agent's claim on it failed. It is tried again only if a listing asked for after that
        # still shows it (e.g. a 409 "still being routed", or a 5xx); after a 200, 403 or 404: never again.
        tried: dict[str, float] = {}
        headers = as_agent(token)
        while not self.stop.is_set():
            version, listed_at = self.listing.version, self.listing.requested_at
            cid = next((c for c in self.listing.cids if tried.get(c, -1.0) < listed_at), None)
            if cid is None:
                await self.listing.newer_than(version, 1.0)
                continue
            conv = self.convs[cid]
            status, payload, sent, returned = await post(self.http, f"/v1/desk/conversations/{cid}/claim",
                                                         headers=headers)
            conv.claims.append((name, status, sent, returned))
            if status == 409:
                tried[cid] = returned  # someone else won (or not claimable yet): take the next
                detail = payload.get("detail") if isinstance(payload, dict) else str(payload)
                key = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", re.sub(r"agent\d+", "<agent>", str(detail)))[:100]
                self.claim_409_details[key] = self.claim_409_details.get(key, 0) + 1
                continue
            if status != 200:
                key = str(status)
                self.claim_other_statuses[key] = self.claim_other_statuses.get(key, 0) + 1
                conv.errors.append(f"claim by {name}: {status} {str(payload)[:300]}")
                tried[cid] = float("inf") if status in (403, 404) else returned
                continue
            tried[cid] = float("inf")
            if conv.claimed_by is not None:
                conv.errors.append(f"claimed twice: by {conv.claimed_by} and by {name}")
            conv.claimed_by, conv.claim_returned = name, returned
            for k, text in enumerate(self.reply_texts(name, conv), start=1):
                mid = f"{cid}-{name}-r{k}"
                status, payload, sent, returned = await post(
                    self.http, f"/v1/desk/conversations/{cid}/messages", {"message_id": mid, "text": text}, headers)
                seq = payload.get("seq") if isinstance(payload, dict) else None
                conv.replies.append({"message_id": mid, "status": status, "sent": sent, "returned": returned,
                                     "seq": seq, "text": text})
                if status != 202:
                    conv.errors.append(f"reply {mid}: {status} {str(payload)[:300]}")
            body = {"reason": "solved"}
            status, payload, sent, returned = await post(self.http, f"/v1/desk/conversations/{cid}/{conv.end}", body,
                                                         headers)
            conv.end_status, conv.end_sent, conv.end_returned = status, sent, returned
            if status != 200:
                conv.errors.append(f"{conv.end}: {status} {str(payload)[:300]}")
            if all(c.done or c.user_gave_up for c in self.convs.values()):
                self.stop.set()

    def first_arrival(self, conv: Conv) -> float | None:
        """When the agent's first reply to `conv` reached the channel (None: no reply, or not arrived)."""
        arrivals = self.receiver.arrivals(conv.replies[0]["message_id"]) if conv.replies else []
        return arrivals[0] if arrivals else None

    def reply_texts(self, name: str, conv: Conv) -> list[str]:
        texts = [f"Hi, this is {name.title()} from support. Let me look at order {conv.index} for you."]
        if self.args.second_reply:
            texts.append(f"Found it: order {conv.index} ships today, you will get an email.")
        return texts

    # -- the run

    async def run(self) -> dict[str, Any]:
        gate = asyncio.Event()
        convs = list(self.convs.values())
        tokens = list(self.tokens.items())
        users = [asyncio.create_task(self.user(c, gate)) for c in convs]
        poll = asyncio.create_task(self.poller(tokens[0][1]))
        probe = asyncio.create_task(self.probe()) if self.args.probe_visibility else None
        agents = [asyncio.create_task(self.agent(name, token)) for name, token in tokens]
        await asyncio.sleep(0.2)  # every task is parked at the gate
        t0 = pc()
        gate.set()
        deadline = t0 + self.args.timeout
        users_done: float | None = None
        try:
            await asyncio.gather(*users)
            users_done = pc()
            progress(f"  all {len(convs)} users sent their message and handoff in {pc() - t0:.1f}s")
            while not self.stop.is_set() and pc() < deadline:
                if all(c.done or c.user_gave_up for c in convs):
                    break  # every conversation either ended or never got its handoff: nothing left to claim
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 1.0)
        finally:
            self.stop.set()
            done = await asyncio.gather(poll, *agents, *([probe] if probe else []), return_exceptions=True)
            self.task_errors = [f"{type(e).__name__}: {e}" for e in done if isinstance(e, BaseException)]
        ended = pc()
        users_done = users_done or ended
        timed_out = not all(c.done for c in convs)
        # Every agent reply should reach the channel: wait for the missing ones (bounded), then a grace period
        # during which late duplicates still count.
        replies = [r["message_id"] for c in convs for r in c.replies if r["status"] == 202]
        await asyncio.gather(*(self.receiver.wait_message(mid, max(1.0, deadline - pc())) for mid in replies))
        last_reply = max((a for mid in replies for a in self.receiver.arrivals(mid)[:1]), default=None)
        await asyncio.sleep(self.args.grace)
        transcripts = await self.transcripts()
        return {"t0": t0, "users_done": users_done, "ended": ended, "last_reply": last_reply, "timed_out": timed_out,
                "transcripts": transcripts}

    async def transcripts(self) -> dict[str, list[dict[str, Any]] | str]:
        sem = asyncio.Semaphore(16)

        async def one(cid: str) -> list[dict[str, Any]] | str:
            entries: list[dict[str, Any]] = []
            after = 0
            async with sem:
                while True:
                    try:
                        r = await self.http.get(f"/v1/conversations/{cid}/transcript",
                                                params={"after": after, "limit": 1000})
                    except httpx.HTTPError as err:
                        return f"{type(err).__name__}: {err}"
                    if r.status_code != 200:
                        return f"{r.status_code} {r.text[:300]}"
                    page = r.json()
                    entries += page["entries"]
                    if not page["entries"] or page["next_after"] >= page["last_seq"]:
                        return entries
                    after = page["next_after"]

        cids = list(self.convs)
        results = await asyncio.gather(*(one(c) for c in cids))
        return dict(zip(cids, results))


def analyse(run: DeskRun, outcome: dict[str, Any]) -> dict[str, Any]:
    convs = list(run.convs.values())
    receiver = run.receiver
    ours = set(run.convs)
    delivered = [m for m in receiver.messages if m["conversation_id"] in ours]

    # -- latencies
    trigger_to_listed = [ms(c.trigger_returned, c.listed_at) for c in convs if c.trigger_returned and c.listed_at]
    trigger_sent_to_listed = [ms(c.trigger_sent, c.listed_at) for c in convs if c.trigger_sent and c.listed_at]
    trigger_to_listing_sent = [ms(c.trigger_returned, c.listed_request_sent) for c in convs
                               if c.trigger_returned and c.listed_request_sent]
    claim_to_reply: list[float] = []
    # The same, split by when the claim answered: while the burst's users were still sending their messages and
    # handoffs (the machine busy with them), or after the last of them had been answered.
    claim_to_reply_by_phase: dict[str, list[float]] = {phase: [] for phase in PHASES}
    claim_to_reply_returned: list[float] = []
    reply_returned_to_channel: list[float] = []
    listed_to_claimed: list[float] = []
    for c in convs:
        if c.claim_returned is None or not c.replies:
            continue
        first = c.replies[0]
        arrived = run.first_arrival(c)
        if arrived is not None:
            claim_to_reply.append(ms(c.claim_returned, arrived))
            phase = PHASES[0] if c.claim_returned < outcome["users_done"] else PHASES[1]
            claim_to_reply_by_phase[phase].append(ms(c.claim_returned, arrived))
            reply_returned_to_channel.append(ms(first["returned"], arrived))
        claim_to_reply_returned.append(ms(c.claim_returned, first["returned"]))
        if c.listed_at is not None:
            listed_to_claimed.append(ms(c.listed_at, c.claim_returned))
    trigger_to_visible = [ms(c.trigger_returned, c.visible_at) for c in convs if c.trigger_returned and c.visible_at]
    handoff_call = [ms(c.trigger_sent, c.trigger_returned) for c in convs if c.trigger_returned]
    claim_calls = [ms(s, r) for c in convs for (_, st, s, r) in c.claims if st == 200]
    end_calls = {kind: [ms(c.end_sent, c.end_returned) for c in convs if c.end == kind and c.end_returned]
                 for kind in ("close", "release")}
    claim_409_calls = [ms(s, r) for c in convs for (_, st, s, r) in c.claims if st == 409]

    # -- correctness
    successes = {c.cid: sum(1 for (_, st, _, _) in c.claims if st == 200) for c in convs}
    conflicts = sum(1 for c in convs for (_, st, _, _) in c.claims if st == 409)
    replies = [(c, r) for c in convs for r in c.replies]
    accepted = [(c, r) for c, r in replies if r["status"] == 202]
    reply_missing = [r["message_id"] for _, r in accepted if not receiver.arrivals(r["message_id"])]
    reply_duplicated = [r["message_id"] for _, r in accepted if len(receiver.arrivals(r["message_id"])) > 1]
    seq_mismatch = []
    by_mid = {}
    for m in delivered:
        by_mid.setdefault(m["message_id"], m)
    for _, r in accepted:
        m = by_mid.get(r["message_id"])
        if m is not None and r["seq"] is not None and m["seq"] != r["seq"]:
            seq_mismatch.append(r["message_id"])
    reply_text_changed = [r["message_id"] for _, r in accepted
                          if (m := by_mid.get(r["message_id"])) is not None and m["text"] != r["text"]]
    out_of_order_replies = []
    for c in convs:
        got = [by_mid.get(r["message_id"]) for r in c.replies if r["status"] == 202]
        if len(got) > 1 and all(got) and any(a["seq"] >= b["seq"] or a["arrived"] > b["arrived"]
                                             for a, b in zip(got, got[1:])):
            out_of_order_replies.append(c.cid)

    seen_keys: set[tuple[str, int]] = set()
    seen_ids: set[str] = set()
    dup_keys, dup_ids = [], []
    last_seq: dict[str, int] = {}
    not_increasing = []
    for m in delivered:  # in arrival order
        key = (m["conversation_id"], m["seq"])
        if key in seen_keys:
            dup_keys.append(key)
        seen_keys.add(key)
        if m["message_id"] in seen_ids:
            dup_ids.append(m["message_id"])
        seen_ids.add(m["message_id"])
        prev = last_seq.get(m["conversation_id"])
        if prev is not None and m["seq"] <= prev:
            not_increasing.append({"conversation_id": m["conversation_id"], "seq": m["seq"], "after": prev})
        last_seq[m["conversation_id"]] = m["seq"]

    transcripts = outcome["transcripts"]
    transcript_errors = {cid: t for cid, t in transcripts.items() if isinstance(t, str)}
    user_missing, user_duplicated, user_text_changed = [], [], []
    channel_not_in_transcript = []
    replies_not_in_transcript = []
    for c in convs:
        t = transcripts.get(c.cid)
        if not isinstance(t, list):
            continue
        user_entries = [e for e in t if e["role"] == "user"]
        for mid, text in c.user_messages.items():
            found = [e for e in user_entries if e["message_id"] == mid]
            if not found:
                user_missing.append(f"{c.cid}/{mid}")
            elif len(found) > 1:
                user_duplicated.append(f"{c.cid}/{mid}")
            elif found[0]["text"] != text:
                user_text_changed.append(f"{c.cid}/{mid}")
        in_transcript = {(e["seq"], e["message_id"]) for e in t}
        for m in delivered:
            if m["conversation_id"] == c.cid and (m["seq"], m["message_id"]) not in in_transcript:
                channel_not_in_transcript.append(f"{c.cid}/{m['seq']}/{m['message_id']}")
        mids = {e["message_id"] for e in t}
        replies_not_in_transcript += [r["message_id"] for r in c.replies if r["status"] == 202 and r["message_id"] not in mids]

    def few(xs: list[Any], n: int = 10) -> list[Any]:
        return xs[:n]

    checks = {
        "handoffs_triggered": sum(1 for c in convs if c.trigger_returned is not None),
        "handoff_errors": few([f"{c.cid}: {c.trigger_error}" for c in convs if c.trigger_error]),
        "listed": sum(1 for c in convs if c.listed_at is not None),
        "claimed_exactly_once": sum(1 for n in successes.values() if n == 1),
        "claimed_more_than_once": few([cid for cid, n in successes.items() if n > 1]),
        "never_claimed": few([cid for cid, n in successes.items() if n == 0]),
        "claims_200": sum(successes.values()),
        "claims_409": conflicts,
        "claims_409_reasons": dict(sorted(run.claim_409_details.items(), key=lambda kv: -kv[1])[:6]),
        "claims_other_status": run.claim_other_statuses,
        "ended": {"ok": sum(1 for c in convs if c.end_status == 200),
                  "close": sum(1 for c in convs if c.end == "close" and c.end_status == 200),
                  "release": sum(1 for c in convs if c.end == "release" and c.end_status == 200)},
        "agent_replies_accepted": len(accepted),
        "agent_replies_refused": few([f"{r['message_id']}: {r['status']}" for _, r in replies if r["status"] != 202]),
        "agent_replies_delivered_once": len(accepted) - len(reply_missing) - len(reply_duplicated),
        "agent_replies_missing_at_channel": few(reply_missing),
        "agent_replies_duplicated_at_channel": few(reply_duplicated),
        "agent_replies_seq_differs_from_api": few(seq_mismatch),
        "agent_replies_text_changed": few(reply_text_changed),
        "agent_replies_out_of_order": few(out_of_order_replies),
        "agent_replies_not_in_transcript": few(replies_not_in_transcript),
        "channel_messages": len(delivered),
        "channel_messages_by_role": _count(m["role"] for m in delivered),
        "channel_duplicate_conversation_seq": len(dup_keys),
        "channel_duplicate_message_id": len(dup_ids),
        "channel_seq_not_increasing": few(not_increasing),
        "channel_messages_not_in_transcript": few(channel_not_in_transcript),
        "user_messages_sent": sum(len(c.user_messages) for c in convs),
        "user_messages_missing_in_transcript": few(user_missing),
        "user_messages_duplicated_in_transcript": few(user_duplicated),
        "user_messages_text_changed": few(user_text_changed),
        "transcript_errors": few([f"{k}: {v}" for k, v in transcript_errors.items()]),
        "listing_errors": few(run.list_errors),
        "listed_not_ours": len(run.unknown_listed),
        "conversation_errors": few([f"{c.cid}: {e}" for c in convs for e in c.errors], 15),
        "timed_out": outcome["timed_out"],
        "bench_task_errors": run.task_errors,
        "transport_errors_retried": run.transport_errors[:10],
    }
    n = len(convs)
    checks["ok"] = (
        checks["handoffs_triggered"] == n and checks["claimed_exactly_once"] == n and not checks["claimed_more_than_once"]
        and checks["ended"]["ok"] == n and len(accepted) == len(replies) and not reply_missing and not reply_duplicated
        and not seq_mismatch and not out_of_order_replies and not replies_not_in_transcript
        and not dup_keys and not dup_ids and not not_increasing and not channel_not_in_transcript
        and not user_missing and not user_duplicated and not transcript_errors and not outcome["timed_out"]
        and not run.claim_other_statuses and not run.task_errors
    )

    t0 = outcome["t0"]
    return {
        "trigger_to_waiting_list_ms": distribution(trigger_to_listed),
        "claim_to_first_reply_at_channel_ms": distribution(claim_to_reply),
        "more_ms": {
            "trigger_sent_to_waiting_list": distribution(trigger_sent_to_listed),
            "trigger_to_start_of_first_listing_showing_it": distribution(trigger_to_listing_sent),
            "handoff_call": distribution(handoff_call),
            "listed_to_claimed": distribution(listed_to_claimed),
            "claim_call_200": distribution(claim_calls),
            "claim_call_409": distribution(claim_409_calls),
            "claim_to_reply_call_returned": distribution(claim_to_reply_returned),
            **{f"claim_to_first_reply_at_channel_{k}": distribution(v) for k, v in claim_to_reply_by_phase.items()},
            "close_call": distribution(end_calls["close"]),
            "release_call": distribution(end_calls["release"]),
            "reply_call_returned_to_channel": distribution(reply_returned_to_channel),
        },
        **({"diagnostic_direct_visibility_probe": {
            "trigger_to_visible_ms": distribution(trigger_to_visible),
            "visible_before_trigger_returned": sum(1 for x in trigger_to_visible if x < 0),
            "query_duration_ms": distribution(run.probe_durations),
            "errors": run.probe_errors[:5],
        }} if run.args.probe_visibility else {}),
        "listing": {
            "count": len(run.list_durations),
            "duration_ms": distribution(run.list_durations),
            "size_max": max(run.list_sizes, default=0),
            "size_median": rnd(median(run.list_sizes), 1),
        },
        "wall_s": {
            "to_last_conversation_ended": rnd(outcome["ended"] - t0, 2),
            "to_last_user_request_answered": rnd(outcome["users_done"] - t0, 2),
            "to_last_agent_reply_at_channel": rnd(outcome["last_reply"] - t0, 2) if outcome["last_reply"] else None,
        },
        "checks": checks,
    }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


async def create_agents(http: httpx.AsyncClient, names: list[str]) -> dict[str, str]:
    tokens = {}
    for name in names:
        r = await http.post("/v1/admin/live-agents", json={"agent_id": name, "name": name.title(), "queues": [QUEUE], "capacity": 1000},
                            headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        if r.status_code != 201:
            raise RuntimeError(f"creating live agent {name}: {r.status_code} {r.text}")
        tokens[name] = r.json()["token"]
    return tokens


async def warm_up(http: httpx.AsyncClient, receiver: RecordingReceiver, tag: str, token: str, n: int = 3) -> None:
    """A few conversations through the whole desk path (imports, sandbox, connections), outside the measurement."""
    headers = as_agent(token)

    async def one(i: int) -> None:
        cid = f"{tag}-warm{i}"
        r = await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": "m1", "text": user_text(i)})
        r.raise_for_status()
        r = await http.post(f"/v1/conversations/{cid}/handoff", json=HANDOFF)
        if r.status_code != 200:
            raise RuntimeError(f"warm-up handoff: {r.status_code} {r.text}")
        deadline = time.monotonic() + 60
        while True:
            w = await http.get(f"/v1/desk/queues/{QUEUE}/waiting", params={"limit": 500}, headers=headers)
            if w.status_code != 200:
                raise RuntimeError(f"warm-up waiting list: {w.status_code} {w.text}")
            if any(row["conversation_id"] == cid for row in w.json()["waiting"]):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"warm-up conversation {cid} never appeared in the waiting list")
            await asyncio.sleep(0.1)
        r = await http.post(f"/v1/desk/conversations/{cid}/claim", headers=headers)
        if r.status_code != 200:
            raise RuntimeError(f"warm-up claim: {r.status_code} {r.text}")
        r = await http.post(f"/v1/desk/conversations/{cid}/messages", json={"message_id": f"{cid}-r1", "text": "Hello"},
                            headers=headers)
        if r.status_code != 202:
            raise RuntimeError(f"warm-up reply: {r.status_code} {r.text}")
        if await receiver.wait_message(f"{cid}-r1", 60) is None:
            raise RuntimeError("warm-up: the agent's reply never reached the channel")
        r = await http.post(f"/v1/desk/conversations/{cid}/close", headers=headers)
        if r.status_code != 200:
            raise RuntimeError(f"warm-up close: {r.status_code} {r.text}")

    await asyncio.gather(*(one(i) for i in range(n)))


async def run_baton(server: Any, receiver: RecordingReceiver, run_no: int, args: argparse.Namespace) -> dict[str, Any]:
    tag = f"desk-r{run_no}-{uuid.uuid4().hex[:6]}"
    code_before = code_fingerprint()
    home = Path(tempfile.mkdtemp(prefix="baton-desk-home-"))
    port = free_port()
    env = baton_env(
        server,
        BATON_HOME=str(home),
        BATON_TASK_QUEUE=f"bench-{tag}",
        BATON_API_KEY=API_KEY,
        BATON_ADMIN_KEY=ADMIN_KEY,
        BATON_SECRET_KEY=sealing.new_key(),
        BATON_CHANNEL_URL=receiver.url,
        BATON_CHANNEL_SECRET=webhooks.generate_secret(),
        BATON_API_HOST="127.0.0.1",
        BATON_API_PORT=str(port),
        BATON_PUBLIC_URL=f"http://127.0.0.1:{port}",
    )
    base = f"http://127.0.0.1:{port}"
    # Idle connections are dropped after 2 s, before uvicorn's 5 s keep-alive timeout closes them on its side
    # (with both at 5 s, a request can be written to a connection the server is closing: a reset, not Baton's).
    limits = httpx.Limits(max_connections=args.conversations + args.agents + 20,
                          max_keepalive_connections=args.conversations + 20, keepalive_expiry=2.0)
    try:
        async with (
            baton_process("worker", env, home / "worker.log") as worker,
            baton_process("api", env, home / "api.log") as api,
            httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}, limits=limits,
                              timeout=httpx.Timeout(60.0)) as http,
        ):
            await wait_http_ok(f"{base}/healthz", 60, api)
            names = [f"agent{i + 1}" for i in range(args.agents)]
            tokens = await create_agents(http, names)
            try:
                await warm_up(http, receiver, tag, tokens[names[0]])
            except Exception:
                progress(f"warm-up failed; worker log:\n{worker.log_tail()}\napi log:\n{api.log_tail()}")
                raise
            progress(f"run {run_no} baton: {args.conversations} conversations, {args.agents} agents")
            desk = DeskRun(http, receiver, tag, args, tokens, server.client, env["BATON_TASK_QUEUE"])
            meter = CpuMeter({"worker": worker.ps, "api": api.ps, "dev_server": server.process,
                              "driver_and_receiver": psutil.Process()})
            meter.start()
            outcome = await desk.run()
            cpu = meter.stop()
            result = analyse(desk, outcome)
            result["cpu_s"] = {k: rnd(v, 2) for k, v in cpu.items()}
            code_after = code_fingerprint()
            result["code_fingerprint"] = code_before
            if code_after != code_before:
                # The sandbox re-imports workflow code from disk per instance: this run mixed two versions.
                result["code_changed_during_run"] = code_after
                result["checks"]["ok"] = False
            for proc in (worker, api):
                if proc.process.returncode is not None:
                    result["checks"]["ok"] = False
                    result["checks"][f"{proc.part}_exited"] = proc.process.returncode
            errors = [line for p in (worker, api) for line in p.log_tail(400).splitlines()
                      if " ERROR " in line or "Traceback" in line]
            result["process_log_errors"] = errors[:10]
            result["process_log_error_lines"] = len(errors)
            if args.raw:
                dump_raw(args.raw, run_no, desk, outcome)
            if args.histories:
                await keep_histories(server.client, Path(args.histories) / f"run{run_no}", desk)
    finally:
        if args.logs:
            dest = Path(args.logs) / f"run{run_no}"
            dest.mkdir(parents=True, exist_ok=True)
            for log in home.glob("*.log"):
                shutil.copy(log, dest / log.name)
        shutil.rmtree(home, ignore_errors=True)
    c = result["checks"]
    progress(
        f"run {run_no} baton: handoff POST sent->list p50 {result['more_ms']['trigger_sent_to_waiting_list']['p50']} p99 "
        f"{result['more_ms']['trigger_sent_to_waiting_list']['p99']} ms; claim->reply p50 "
        f"{result['claim_to_first_reply_at_channel_ms']['p50']} p99 {result['claim_to_first_reply_at_channel_ms']['p99']} ms; "
        f"listing p50 {result['listing']['duration_ms']['p50']} ms; claims 200/409 {c['claims_200']}/{c['claims_409']}; "
        f"ok {c['ok']}; wall {result['wall_s']['to_last_conversation_ended']} s"
    )
    return result


def dump_raw(path: str, run_no: int, desk: DeskRun, outcome: dict[str, Any]) -> None:
    t0 = outcome["t0"]

    def rel(x: float | None) -> float | None:
        return None if x is None else round((x - t0) * 1000, 2)

    with open(path, "a") as f:
        for c in desk.convs.values():
            f.write(json.dumps({
                "run": run_no, "cid": c.cid, "trigger_sent": rel(c.trigger_sent), "trigger_returned": rel(c.trigger_returned),
                "listed_request_sent": rel(c.listed_request_sent), "listed_at": rel(c.listed_at),
                "listed_position": c.listed_position, "visible_at": rel(c.visible_at),
                "claims": [[a, s, rel(x), rel(y)] for a, s, x, y in c.claims], "claimed_by": c.claimed_by,
                "replies": [{"message_id": r["message_id"], "status": r["status"], "sent": rel(r["sent"]),
                             "returned": rel(r["returned"]), "seq": r["seq"],
                             "arrived": [rel(a) for a in desk.receiver.arrivals(r["message_id"])]} for r in c.replies],
                "channel": [[m["seq"], m["role"], m["message_id"], rel(m["arrived"])]
                            for m in desk.receiver.messages if m["conversation_id"] == c.cid],
                "end": c.end, "end_status": c.end_status, "end_sent": rel(c.end_sent), "end_returned": rel(c.end_returned), "errors": c.errors,
            }) + "\n")


async def keep_histories(client: Any, dest: Path, desk: DeskRun, n: int = 5) -> None:
    """The histories of the `n` conversations slowest from the claim to the first reply at the channel, and of the
    `n` slowest handoff calls, with the driver's times (wall clock) to read them against."""
    skew = time.time() - pc()  # wall clock minus the driver's perf_counter: one machine, one clock

    def w(x: float | None) -> float | None:
        return None if x is None else round(x + skew, 4)

    def first_reply(c: Conv) -> float | None:
        return ms(c.claim_returned, desk.first_arrival(c))

    def handoff(c: Conv) -> float | None:
        return ms(c.trigger_sent, c.trigger_returned)

    wall: dict[str, dict[str, Any]] = {}
    dest.mkdir(parents=True, exist_ok=True)
    for name, key in (("reply", first_reply), ("handoff", handoff)):
        timed = [(key(c), c) for c in desk.convs.values() if key(c) is not None]
        for took, c in sorted(timed, key=lambda x: x[0])[-n:]:
            if c.cid not in wall:  # a conversation may be among the slowest of both: its history is written once
                history = await client.get_workflow_handle(WORKFLOW_ID_PREFIX + c.cid).fetch_history()
                (dest / f"{c.cid}.json").write_text(history.to_json())
            entry = wall.setdefault(c.cid, {"slow_by": []})
            entry["slow_by"].append(name)
            entry[f"{name}_ms"] = took
            entry.update({"trigger_sent": w(c.trigger_sent), "trigger_returned": w(c.trigger_returned),
                          "claim_returned": w(c.claim_returned),
                          "reply_sent": w(c.replies[0]["sent"]) if c.replies else None,
                          "reply_returned": w(c.replies[0]["returned"]) if c.replies else None,
                          "reply_at_channel": w(desk.first_arrival(c))})
    (dest / "times.json").write_text(json.dumps(wall, indent=1))


# ---- the bare-Temporal baseline ------------------------------------------------------------------------------


async def run_baseline(server: Any, receiver: RecordingReceiver, run_no: int, args: argparse.Namespace) -> dict[str, Any]:
    """bench/baseline.py's workflow (no Baton code) on its own task queue and worker process:
    (a) N workflows started at once with the desk's search attributes set at start, found by a poller running
        the same kind of visibility query as the desk's waiting list (start returned -> listed);
    (b) then, with `agents` concurrent senders taking them in turn: signal -> respond activity -> deliver activity
        -> the same receiver (signal sent -> delivery)."""
    client = server.client
    tag = f"desk-base-r{run_no}-{uuid.uuid4().hex[:6]}"
    task_queue = f"bench-{tag}"
    spec = WorkerSpec(kind="baseline", target=server.target, namespace=server.namespace, task_queue=task_queue,
                      channel_url=receiver.url)
    sa = SearchAttributes
    attributes = TypedSearchAttributes([
        SearchAttributePair(sa.STATE, "handoff_pending"), SearchAttributePair(sa.QUEUE, QUEUE),
        SearchAttributePair(sa.OWNER, "ai"), SearchAttributePair(sa.CHANNEL, "web"),
        SearchAttributePair(sa.HANDOFFS, 1),
    ])
    query = (f'WorkflowType="{baseline.WORKFLOW}" AND ExecutionStatus="Running" AND BatonState="handoff_pending" '
             f'AND BatonQueue="{QUEUE}" AND TaskQueue="{task_queue}"')

    def wid(i: int) -> str:
        return f"{tag}-w{i:04d}"

    async with WorkerProcess(spec) as worker:
        # Warm-up: a few conversations through signal -> respond -> deliver.
        for i in range(3):
            await client.start_workflow(baseline.WORKFLOW, {"conversation_id": f"{tag}-warm{i}"}, id=f"{tag}-warm{i}",
                                        task_queue=task_queue, start_signal=baseline.SIGNAL,
                                        start_signal_args=[{"message_id": "m1", "text": user_text(i)}])
        for i in range(3):
            if await receiver.wait_reply(f"{tag}-warm{i}", 1, 60) is None:
                raise RuntimeError("baseline warm-up: no reply")
        progress(f"run {run_no} baseline: {args.conversations} workflows, {args.agents} senders")
        meter = CpuMeter({"worker": worker.ps, "dev_server": server.process, "driver_and_receiver": psutil.Process()})
        meter.start()
        n = args.conversations
        started: dict[str, float] = {}
        listed: dict[str, float] = {}
        list_durations: list[float] = []
        stop = asyncio.Event()
        gate = asyncio.Event()

        async def start(i: int) -> None:
            await gate.wait()
            await client.start_workflow(baseline.WORKFLOW, {"conversation_id": wid(i)}, id=wid(i),
                                        task_queue=task_queue, search_attributes=attributes)
            started[wid(i)] = pc()

        async def poller() -> None:
            while not stop.is_set():
                sent = pc()
                ids = [e.id async for e in client.list_workflows(query=query)]
                returned = pc()
                list_durations.append((returned - sent) * 1000)
                for w in ids:
                    listed.setdefault(w, returned)
                if len(listed) >= n:
                    stop.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.poll_interval)

        starts = [asyncio.create_task(start(i)) for i in range(n)]
        poll = asyncio.create_task(poller())
        await asyncio.sleep(0.2)
        t0 = pc()
        gate.set()
        await asyncio.gather(*starts)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(poll, args.timeout)
        stop.set()
        await asyncio.gather(poll, return_exceptions=True)
        start_to_listed = [ms(started[w], listed[w]) for w in started if w in listed]

        # The bare visibility round-trips, with all N listed: list_workflows and count_workflows.
        bare_list, bare_count = [], []
        for _ in range(args.bare_rounds):
            s = pc()
            _ = [e async for e in client.list_workflows(query=query)]
            bare_list.append((pc() - s) * 1000)
            s = pc()
            await client.count_workflows(query=query)
            bare_count.append((pc() - s) * 1000)

        # (b) signal -> activity -> delivery, `agents` senders at a time.
        todo = list(range(n))
        signal_to_delivery: list[float] = []
        lost = 0

        async def sender() -> None:
            nonlocal lost
            while todo:
                i = todo.pop(0)
                s = pc()
                await client.get_workflow_handle(wid(i)).signal(baseline.SIGNAL, {"message_id": "m1", "text": user_text(i)})
                at = await receiver.wait_reply(wid(i), 1, args.timeout)
                if at is None:
                    lost += 1
                else:
                    signal_to_delivery.append((at - s) * 1000)

        t1 = pc()
        await asyncio.gather(*(sender() for _ in range(args.agents)))
        t2 = pc()
        cpu = meter.stop()
        await asyncio.sleep(args.grace)
    result = {
        "start_to_listed_ms": distribution(start_to_listed),
        "signal_to_delivery_at_channel_ms": distribution(signal_to_delivery),
        "listing": {"count": len(list_durations), "duration_ms": distribution(list_durations)},
        "bare_list_workflows_ms_with_all_listed": distribution(bare_list),
        "bare_count_workflows_ms_with_all_listed": distribution(bare_count),
        "wall_s": {"starts_listed": rnd((max(listed.values()) - t0) if listed else None, 2),
                   "deliveries": rnd(t2 - t1, 2)},
        "checks": {"listed": len(listed), "delivered": len(signal_to_delivery), "lost": lost,
                   "duplicates": receiver.duplicates_for(wid(i) for i in range(n))},
        "cpu_s": {k: rnd(v, 2) for k, v in cpu.items()},
    }
    progress(
        f"run {run_no} baseline: start->list p50 {result['start_to_listed_ms']['p50']} p99 "
        f"{result['start_to_listed_ms']['p99']} ms; signal->delivery p50 {result['signal_to_delivery_at_channel_ms']['p50']} "
        f"p99 {result['signal_to_delivery_at_channel_ms']['p99']} ms; list p50 {result['listing']['duration_ms']['p50']} ms"
    )
    return result


# ---- summary and main ----------------------------------------------------------------------------------------


def med_of(per_run: list[dict[str, Any]], *path: str) -> dict[str, float | None]:
    def get(r: dict[str, Any]) -> dict[str, Any]:
        for p in path:
            r = r[p]
        return r

    return {p: rnd(median(get(r)[p] for r in per_run), 1) for p in PERCENTILES}


def summarize(baton_runs: list[dict[str, Any]], base_runs: list[dict[str, Any]]) -> dict[str, Any]:
    baton = {
        "trigger_to_waiting_list_ms": med_of(baton_runs, "trigger_to_waiting_list_ms"),
        "claim_to_first_reply_at_channel_ms": med_of(baton_runs, "claim_to_first_reply_at_channel_ms"),
        "trigger_sent_to_waiting_list_ms": med_of(baton_runs, "more_ms", "trigger_sent_to_waiting_list"),
        "listing_duration_ms": med_of(baton_runs, "listing", "duration_ms"),
        "handoff_call_ms": med_of(baton_runs, "more_ms", "handoff_call"),
        "claim_call_ms": med_of(baton_runs, "more_ms", "claim_call_200"),
        **{f"claim_to_first_reply_at_channel_{phase}_ms": med_of(
            baton_runs, "more_ms", f"claim_to_first_reply_at_channel_{phase}")
           for phase in PHASES},
        "claims_during_the_burst_per_run": [
            r["more_ms"]["claim_to_first_reply_at_channel_during_the_burst"]["n"] for r in baton_runs],
        "wall_s": rnd(median(r["wall_s"]["to_last_conversation_ended"] for r in baton_runs), 2),
        "all_checks_ok": all(r["checks"]["ok"] for r in baton_runs),
        "checks_ok_per_run": [r["checks"]["ok"] for r in baton_runs],
        "claims_409_per_run": [r["checks"]["claims_409"] for r in baton_runs],
    }
    out: dict[str, Any] = {"baton": baton}
    if base_runs:
        base = {
            "start_to_listed_ms": med_of(base_runs, "start_to_listed_ms"),
            "signal_to_delivery_at_channel_ms": med_of(base_runs, "signal_to_delivery_at_channel_ms"),
            "listing_duration_ms": med_of(base_runs, "listing", "duration_ms"),
            "bare_list_workflows_ms": med_of(base_runs, "bare_list_workflows_ms_with_all_listed"),
            "bare_count_workflows_ms": med_of(base_runs, "bare_count_workflows_ms_with_all_listed"),
            "all_checks_ok": all(r["checks"]["lost"] == 0 and r["checks"]["duplicates"] == 0
                                 and r["checks"]["listed"] == r["start_to_listed_ms"]["n"] for r in base_runs),
        }
        out["baseline"] = base
        # The handoff's POST answers once the routing decision is recorded, by which time the conversation is
        # listed: the waiting list is compared from the POST being sent (the bare start is answered at once).
        out["ratios_baton_over_baseline"] = {
            "waiting_list_p50": ratio(baton["trigger_sent_to_waiting_list_ms"]["p50"],
                                      base["start_to_listed_ms"]["p50"]),
            "waiting_list_p99": ratio(baton["trigger_sent_to_waiting_list_ms"]["p99"],
                                      base["start_to_listed_ms"]["p99"]),
            "waiting_list_p99_per_run": [
                ratio(b["more_ms"]["trigger_sent_to_waiting_list"]["p99"], r["start_to_listed_ms"]["p99"])
                for b, r in zip(baton_runs, base_runs)],
            "reply_p50": ratio(baton["claim_to_first_reply_at_channel_ms"]["p50"],
                               base["signal_to_delivery_at_channel_ms"]["p50"]),
            "reply_p99": ratio(baton["claim_to_first_reply_at_channel_ms"]["p99"],
                               base["signal_to_delivery_at_channel_ms"]["p99"]),
            "reply_p99_per_run": [ratio(b["claim_to_first_reply_at_channel_ms"]["p99"],
                                        r["signal_to_delivery_at_channel_ms"]["p99"])
                                  for b, r in zip(baton_runs, base_runs)],
            **{f"reply_{phase}_p99_per_run": [
                ratio(b["more_ms"][f"claim_to_first_reply_at_channel_{phase}"]["p99"],
                      r["signal_to_delivery_at_channel_ms"]["p99"]) for b, r in zip(baton_runs, base_runs)]
               for phase in PHASES},
            "listing_p50": ratio(baton["listing_duration_ms"]["p50"], base["listing_duration_ms"]["p50"]),
        }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.desk_load", description=__doc__.splitlines()[0])
    p.add_argument("--conversations", type=int, default=200, help="conversations asking for a person at once")
    p.add_argument("--agents", type=int, default=4, help="live agents claiming and replying")
    p.add_argument("--runs", type=int, default=3, help="runs (each on a fresh dev server); medians are reported")
    p.add_argument("--poll-interval", type=float, default=0.25,
                   help="seconds between one waiting-list answer and the next request (one poller)")
    p.add_argument("--end", choices=("close", "release", "mix"), default="mix",
                   help="what an agent does after replying (mix: alternately close and release)")
    p.add_argument("--no-second-reply", dest="second_reply", action="store_false",
                   help="agents reply once (default: twice, right away, to check ordering)")
    p.add_argument("--no-followup", dest="followup", action="store_false",
                   help="users do not write again while waiting (default: once, right after the handoff)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the bare-Temporal baseline")
    p.add_argument("--bare-rounds", type=int, default=20, help="bare list/count visibility round-trips per run")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a run may take before it is cut short")
    p.add_argument("--grace", type=float, default=1.0, help="seconds to keep listening for duplicates after a run")
    p.add_argument("--in-memory", action="store_true", help="in-memory dev server instead of a SQLite file (WAL)")
    p.add_argument("--probe-visibility", action="store_true",
                   help="diagnostic: also run the desk's visibility query straight against Temporal (no per-row "
                   "snapshot) on the same cadence, to split the waiting-list latency; adds load, off by default")
    p.add_argument("--logs", metavar="DIR", help="keep the worker's and the API's logs of each run in DIR/run<N>/")
    p.add_argument("--histories", metavar="DIR",
                   help="write the histories of the five conversations slowest from claim to reply, and of the five "
                   "slowest handoff calls, to DIR/run<N>/ with the driver's times (times.json, wall clock)")
    p.add_argument("--raw", metavar="FILE", help="append every conversation's timings (ms from the run's start) as JSON lines")
    args = p.parse_args(argv)
    if args.runs < 1 or args.conversations < 1 or args.agents < 1:
        p.error("--runs, --conversations and --agents must be at least 1")
    return args


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    machine = machine_info()
    started = time.monotonic()
    result: dict[str, Any] = {"benchmark": "desk_load", "machine": machine, "date": now_iso(),
                              "conversations": args.conversations, "agents": args.agents, "runs": args.runs,
                              "poll_interval_s": args.poll_interval, "end": args.end}
    baton_runs: list[dict[str, Any]] = []
    base_runs: list[dict[str, Any]] = []
    for run_no in range(1, args.runs + 1):
        async with dev_server(sqlite=not args.in_memory) as server, RecordingReceiver() as receiver:
            parts = [("baton", run_baton)] + ([("baseline", run_baseline)] if args.baseline else [])
            if run_no % 2 == 0:
                parts.reverse()  # alternate which goes first on the fresh server
            for name, part in parts:
                out = await part(server, receiver, run_no, args)
                out["order"] = [n for n, _ in parts].index(name) + 1
                (baton_runs if name == "baton" else base_runs).append(out)
            result.setdefault("dev_server", {"persistence": server.persistence, "warnings_logged": []})
            result["dev_server"]["warnings_logged"].append(len(server.log_lines(r'"level":"(warn|error)"')))
    result["summary"] = summarize(baton_runs, base_runs)
    result["baton_per_run"] = baton_runs
    result["baseline_per_run"] = base_runs
    result["config"] = {
        "per_run": "a fresh dev server; `baton worker` and `baton api` as their own processes (settings from the "
                   "environment, fresh BATON_HOME); the driver, poller, agents and channel receiver share this process; "
                   "3 warm-up conversations through the whole desk path first (not measured)",
        "load": f"{args.conversations} users start at once: message, then POST .../handoff to queue '{QUEUE}'"
                + (", then one more message while waiting" if args.followup else ""),
        "poller": f"one task listing GET /v1/desk/queues/{QUEUE}/waiting?limit=500, {args.poll_interval}s between an answer "
                  "and the next request; the agents work its latest listing",
        "agents": f"{args.agents} tasks: claim the oldest entry not tried yet (409: take the next), reply "
                  + ("twice" if args.second_reply else "once") + f" at once, then {args.end} (mix: alternately "
                  "close and release; after a release the AI speaks again)",
        "trigger_to_waiting_list": "the handoff POST's 2xx answer -> the answer of the first listing that shows the "
                                   "conversation (so it includes up to one poll interval and one listing's duration; "
                                   "more_ms has it from the POST being sent, and to the start of that listing). The "
                                   "POST answers once the routing decision is recorded, so from its answer this is "
                                   "at most a poll interval; the summary's waiting_list ratios are from the POST "
                                   "being sent",
        "claim_to_first_reply_phases": "during_the_burst: the claim answered before the last user's message, handoff "
                                       "and follow-up had been answered; after_the_burst: after that",
        "claim_to_first_reply_at_channel": "the claim's 200 answer -> the agent's first reply (posted at once) "
                                           "arriving at the loopback channel receiver",
        "baseline": "bench/baseline.py's bare workflow on the same dev server with its own worker process: "
                    "(a) the same number of workflows started at once with the desk's search attributes set at "
                    "start, found by the same poller cadence with the same kind of visibility query "
                    "(WorkflowType, ExecutionStatus, BatonState, BatonQueue, TaskQueue): start returned -> listed; "
                    "this is the floor of the waiting list (visibility only, no workflow task, no per-row query); "
                    "(b) signal -> respond activity -> deliver activity -> the same receiver, with as many concurrent "
                    "senders as agents: the floor of claim -> reply at the channel (Baton: claim update answered, "
                    "then the reply's HTTP call, update, and delivery activity); plus bare list_workflows and "
                    "count_workflows round-trips with all N listed",
        "order": "Baton first on odd runs, the baseline first on even runs",
        "clock": "time.perf_counter in this process (the receiver stamps arrivals when the bytes are read)",
    }
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


if __name__ == "__main__":
    run_main(main)
