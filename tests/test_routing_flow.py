"""Routing rules end to end (issue 4): config intents and routes decide where a handoff goes, the decision is in
`audit`, the escalation ladder walks on durable timers (SLA, business hours), the user can cancel, waiting users
hear their position, transfers, and the AI failing for good is routed by the failure rule.

Updates are tested on the dev server (real HTTP API); SLAs and business hours on the time-skipping server."""

from __future__ import annotations

import contextlib
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from models.config import load_config
from temporalio.client import WorkflowUpdateFailedError

from models.conversation import (
    AcceptHandoff,
    AuditPage,
    CloseRequest,
    HandoffRequest,
    Role,
    State,
    UserMessage,
)
from models.names import Queries, Signals, Updates
from tests.harness import (
    baton_api,
    baton_worker,
    eventually,
    history_text,
    settings_for,
    skip,
    snapshot,
    start_conversation,
    transcript,
)
from tests.receiver import Receiver

ADMIN = {"Authorization": "Bearer ba_test_admin"}

CONFIG = """
intents:
  human:
    keywords: ["human", "real person"]
    reply: "Sure, a person will take it from here."
  refund:
    patterns: ["\\\\brefund\\\\b", "charged twice"]
waiting:
  position_update_seconds: 1
  cancel_phrases: ["never mind", "cancel"]
queues:
  general: {sla_seconds: 300}
  billing: {sla_seconds: 300, skills: [billing]}
  vip: {sla_seconds: 300}
  failures: {sla_seconds: 300}
routes:
  - name: gold-customers
    when: {params: {tier: gold}}
    to: {queue: vip}
  - name: refunds
    when: {intent: refund}
    to: {queue: billing}
    fallback: [{queue: general}]
    allowlist: ["profile.name"]
  - name: people
    when: {intent: human}
    to: {queue: general}
  - name: default
    to: {queue: general}
ai_failure:
  to: {queue: failures}
"""


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "baton.yaml"
    path.write_text(text)
    return path


def cid() -> str:
    return f"route-{uuid.uuid4().hex[:10]}"


def as_agent(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def config(tmp_path):
    return load_config(write_config(tmp_path, CONFIG))


@pytest.fixture
async def http(dev_env, task_queue, channel, registry, config):
    settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret)
    async with baton_worker(dev_env.client, settings, registry, config=config), baton_api(
        dev_env.client, settings, registry, config=config
    ) as client:
        yield client


async def live_agent(http, agent_id: str, queues=("general",)) -> str:
    # The billing queue needs the skill `billing` (a queue's skills are required of whoever takes its conversations).
    skills = ["billing"] if "billing" in queues else []
    r = await http.post("/v1/admin/live-agents", json={"agent_id": agent_id, "name": agent_id.title(),
                                                       "queues": list(queues), "skills": skills}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()["token"]


async def say(http, conversation: str, text: str, message_id: str | None = None) -> None:
    r = await http.post(f"/v1/conversations/{conversation}/messages",
                        json={"message_id": message_id or uuid.uuid4().hex, "text": text})
    assert r.status_code == 202, r.text


async def snap(http, conversation: str) -> dict:
    r = await http.get(f"/v1/conversations/{conversation}")
    assert r.status_code == 200, r.text
    return r.json()


async def audit(http, conversation: str) -> list[dict]:
    r = await http.get(f"/v1/conversations/{conversation}/audit")
    assert r.status_code == 200, r.text
    return r.json()["entries"]


async def entries(http, conversation: str) -> list[dict]:
    r = await http.get(f"/v1/conversations/{conversation}/transcript")
    assert r.status_code == 200, r.text
    return r.json()["entries"]


async def waiting_in(http, conversation: str, queue: str) -> dict:
    async def check():
        s = await snap(http, conversation)
        return s["state"] == "handoff_pending" and s["queue"] == queue and s
    return await eventually(check)


async def test_keyword_intent_routes_to_its_queue_and_audit_shows_rule_target_and_receipt(http, channel):
    conversation = cid()
    r = await http.put(f"/v1/conversations/{conversation}/context",
                       json={"profile": {"name": "Ada", "email": "ada@example.com"}})
    assert r.status_code == 200, r.text
    await say(http, conversation, "I was charged twice, I want a refund")
    s = await waiting_in(http, conversation, "billing")
    assert s["pending_handoff"]["rule"] == "refunds"
    assert [t["queue"] for t in s["pending_handoff"]["fallback"]] == ["general"]
    log = await audit(http, conversation)
    routed = next(e for e in log if e["kind"] == "handoff_routed")
    assert routed["detail"]["rule"] == "refunds" and routed["detail"]["target"] == "queue:billing"
    assert "intent" in routed["detail"]["why"]
    requested = next(e for e in log if e["kind"] == "handoff_requested")
    assert requested["detail"]["intent"] == "refund"

    async def shared():
        s = await snap(http, conversation)
        return s["shared_context"] is not None and s

    # The live agent gets the context through the route's allowlist: the name, not the e-mail address.
    s = await eventually(shared)
    assert s["shared_context"]["profile"] == {"name": "Ada"}
    filtered = [e for e in await audit(http, conversation) if e["kind"] == "context_filtered"]
    assert filtered and any(r["path"] == "profile.email" for r in filtered[-1]["detail"]["receipt"])
    assert all("ada@example.com" not in str(r) for r in filtered[-1]["detail"]["receipt"])


async def test_the_desk_transcript_names_the_withheld_paths_and_why_never_the_values(http, channel):
    token = await live_agent(http, f"biller-{uuid.uuid4().hex[:4]}", queues=("billing",))
    conversation = cid()
    r = await http.put(f"/v1/conversations/{conversation}/context",
                       json={"profile": {"name": "Ada", "email": "ada@example.com"}, "auth": {"session": "s3cret"}})
    assert r.status_code == 200, r.text
    await say(http, conversation, "I was charged twice, I want a refund")
    await waiting_in(http, conversation, "billing")

    async def read():
        r = await http.get(f"/v1/desk/conversations/{conversation}/transcript", headers=as_agent(token))
        assert r.status_code == 200, r.text
        return r.json()["context"] is not None and r.json()

    desk = await eventually(read)
    assert desk["context"]["profile"] == {"name": "Ada"}
    withheld = {w["path"]: w for w in desk["withheld"]}
    assert withheld["profile.email"]["action"] == "dropped" and withheld["profile.email"]["reason"]
    assert withheld["auth"]["action"] == "dropped"
    assert "ada@example.com" not in str(desk) and "s3cret" not in str(desk)
    # Once claimed, the owner still sees why (the newest filter receipt, for the handoff it accepted).
    assert (await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(token))).status_code == 200
    r = await http.get(f"/v1/desk/conversations/{conversation}/transcript", headers=as_agent(token))
    assert r.status_code == 200 and r.json()["withheld"] == desk["withheld"]


async def test_intent_keyword_then_racing_claims_then_messages_both_ways_then_release(http, channel):
    tokens = [await live_agent(http, f"agent{i}-{uuid.uuid4().hex[:4]}") for i in range(10)]
    conversation = cid()
    await say(http, conversation, "Can I talk to a real person please?")
    s = await waiting_in(http, conversation, "general")
    assert s["pending_handoff"]["rule"] == "people"
    texts = [e["text"] for e in await entries(http, conversation)]
    assert "Sure, a person will take it from here." in texts  # the intent's reply, said by the AI
    assert any("number 1 in the queue" in t for t in texts)

    import asyncio

    claims = await asyncio.gather(*(
        http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(t)) for t in tokens
    ))
    codes = sorted(r.status_code for r in claims)
    assert codes.count(200) == 1 and codes.count(409) == 9, codes
    winner = tokens[[r.status_code for r in claims].index(200)]
    owner = (await snap(http, conversation))["owner"]

    r = await http.post(f"/v1/desk/conversations/{conversation}/messages", headers=as_agent(winner),
                        json={"message_id": "agent-1", "text": "Hello, I'm here to help."})
    assert r.status_code == 202, r.text
    await say(http, conversation, "Thanks! My order is late.", "u-late")
    await channel.wait_for(lambda reqs: any((r.json or {}).get("message_id") == "agent-1" for r in reqs))
    # The AI stays muted while a human owns the conversation: the user's message is recorded, nobody but the
    # agent answers it (the AI's turn is never scheduled).
    es = await entries(http, conversation)
    claimed_at = next(e["seq"] for e in es if e["text"].endswith("has joined the conversation."))
    assert any(e["message_id"] == "u-late" for e in es)
    assert not [e for e in es if e["role"] == "ai" and e["seq"] > claimed_at]
    # Another agent cannot write.
    other = next(t for t in tokens if t != winner)
    r = await http.post(f"/v1/desk/conversations/{conversation}/messages", headers=as_agent(other),
                        json={"message_id": "intruder", "text": "hi"})
    assert r.status_code == 409 and owner in r.json()["detail"]
    # Release: the AI speaks up again.
    r = await http.post(f"/v1/desk/conversations/{conversation}/release", headers=as_agent(winner))
    assert r.status_code == 200, r.text

    async def ai_back():
        es = await entries(http, conversation)
        return any(e["role"] == "ai" and "back with you" in e["text"] for e in es)

    await eventually(ai_back)
    await say(http, conversation, "hello again")

    async def ai_answers():
        es = await entries(http, conversation)
        return es[-1]["role"] == "ai" and es[-1]["text"]

    await eventually(ai_answers)


async def _has(http, conversation, kind):
    log = await audit(http, conversation)
    return any(e["kind"] == kind for e in log) and log


@contextlib.asynccontextmanager
async def baton_with_bot(dev_env, task_queue, channel, registry, config, *answers):
    """Worker and API whose AI agent is a fake bot (real HTTP) answering `answers` in turn."""
    async with Receiver(path="/bot") as bot:
        bot.script(*answers)
        settings = settings_for(task_queue, ai_agent=bot.url, ai_agent_secret=bot.secret,
                                channel_url=channel.url, channel_secret=channel.secret)
        async with baton_worker(dev_env.client, settings, registry, config=config), baton_api(
            dev_env.client, settings, registry, config=config
        ) as http:
            yield http


async def test_handoff_params_from_the_ai_event_route_by_them(dev_env, task_queue, channel, registry, config):
    answer = (200, {}, {"text": "Let me get you our premium team.",
                        "handoff": {"reason": "premium", "params": {"tier": "gold"}}})
    async with baton_with_bot(dev_env, task_queue, channel, registry, config, answer) as http:
        conversation = cid()
        await say(http, conversation, "hello")
        s = await waiting_in(http, conversation, "vip")
        assert s["pending_handoff"]["rule"] == "gold-customers"
        assert s["pending_handoff"]["params"] == {"tier": "gold"}


async def test_the_ai_failing_for_good_is_routed_by_the_failure_rule(dev_env, task_queue, channel, registry, config):
    broken = [(400, {}, {"error": "broken"})] * 3
    async with baton_with_bot(dev_env, task_queue, channel, registry, config, *broken) as http:
        conversation = cid()
        await say(http, conversation, "hello")
        s = await waiting_in(http, conversation, "failures")
        assert s["pending_handoff"]["rule"] == "ai_failure"
        kinds = [e["kind"] for e in await audit(http, conversation)]
        assert kinds.index("ai_failed") < kinds.index("handoff_requested") < kinds.index("handoff_routed")


async def test_the_user_cancels_waiting_by_saying_never_mind_or_through_the_api(http, channel):
    conversation = cid()
    await say(http, conversation, "I want to talk to a human")
    await waiting_in(http, conversation, "general")
    await say(http, conversation, "Never mind!")

    async def back():
        s = await snap(http, conversation)
        return s["state"] == "ai" and s["pending_handoff"] is None and s
    await eventually(back)
    assert any(e["kind"] == "handoff_cancelled" and e["detail"]["by"] == "user" for e in await audit(http, conversation))
    assert any("cancelled your request" in e["text"] for e in await entries(http, conversation))
    # Words that merely contain a phrase do not cancel: "cancel my order" is a question for the person.
    await say(http, conversation, "human please")
    await waiting_in(http, conversation, "general")
    await say(http, conversation, "cancel my order")
    assert (await snap(http, conversation))["state"] == "handoff_pending"
    r = await http.delete(f"/v1/conversations/{conversation}/handoff")
    assert r.status_code == 200 and r.json()["state"] == "ai", r.text
    r = await http.delete(f"/v1/conversations/{conversation}/handoff")
    assert r.status_code == 409 and "no handoff is pending" in r.json()["detail"]


async def test_position_is_told_on_joining_and_when_it_improves(http, channel):
    token = await live_agent(http, f"pos-{uuid.uuid4().hex[:4]}", queues=("vip",))
    first, second = cid(), cid()
    for conversation in (first, second):
        await say(http, conversation, "hi")
        r = await http.post(f"/v1/conversations/{conversation}/handoff",
                            json={"reason": "premium", "params": {"tier": "gold"}})
        assert r.status_code == 200, r.text
        await waiting_in(http, conversation, "vip")
    texts = [e["text"] for e in await entries(http, second)]
    assert any("number 2 in the queue" in t for t in texts), texts
    r = await http.post(f"/v1/desk/conversations/{first}/claim", headers=as_agent(token))
    assert r.status_code == 200, r.text

    async def told():
        es = await entries(http, second)
        return any(e["text"] == "You're next in the queue." for e in es)

    await eventually(told, timeout=20)
    r = await http.post(f"/v1/desk/conversations/{second}/claim", headers=as_agent(token))
    assert r.status_code == 200


async def test_messages_sent_while_waiting_reach_the_agent_who_accepts(http, channel):
    token = await live_agent(http, f"reader-{uuid.uuid4().hex[:4]}")
    outsider = await live_agent(http, f"outsider-{uuid.uuid4().hex[:4]}", queues=("billing",))
    conversation = cid()
    await say(http, conversation, "I want to talk to a human")
    await waiting_in(http, conversation, "general")
    await say(http, conversation, "my order number is 4417", "while-waiting")
    r = await http.get(f"/v1/desk/conversations/{conversation}/transcript", headers=as_agent(token))
    assert r.status_code == 200, r.text
    assert any(e["message_id"] == "while-waiting" for e in r.json()["entries"])
    r = await http.get(f"/v1/desk/conversations/{conversation}/transcript", headers=as_agent(outsider))
    assert r.status_code == 403
    r = await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(token))
    assert r.status_code == 200
    r = await http.get(f"/v1/desk/conversations/{conversation}/transcript", headers=as_agent(token),
                       params={"after": 1})
    assert r.status_code == 200 and all(e["seq"] > 1 for e in r.json()["entries"])
    assert any(e["message_id"] == "while-waiting" for e in r.json()["entries"])


async def test_transfer_to_a_named_agent_only_they_can_claim(http, channel):
    alice = await live_agent(http, f"alice-{uuid.uuid4().hex[:4]}")
    bob_id = f"bob-{uuid.uuid4().hex[:4]}"
    bob = await live_agent(http, bob_id, queues=("vip",))
    carol = await live_agent(http, f"carol-{uuid.uuid4().hex[:4]}")
    conversation = cid()
    await say(http, conversation, "I want to talk to a human")
    await waiting_in(http, conversation, "general")
    assert (await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(alice))).status_code == 200
    # Only the owner transfers (checked by the workflow, atomically).
    r = await http.post(f"/v1/desk/conversations/{conversation}/transfer", headers=as_agent(carol),
                        json={"agent_id": bob_id})
    assert r.status_code == 409, r.text
    r = await http.post(f"/v1/desk/conversations/{conversation}/transfer", headers=as_agent(alice),
                        json={"agent_id": "nobody-here"})
    assert r.status_code == 422 and "unknown live agent 'nobody-here'" in r.json()["detail"]
    r = await http.post(f"/v1/desk/conversations/{conversation}/transfer", headers=as_agent(alice),
                        json={"agent_id": bob_id})
    assert r.status_code == 200, r.text
    await waiting_in(http, conversation, f"agent:{bob_id}")
    r = await http.get(f"/v1/desk/queues/agent:{bob_id}/waiting", headers=as_agent(bob))
    assert [w["conversation_id"] for w in r.json()["waiting"]] == [conversation]
    r = await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(carol))
    assert r.status_code == 403
    r = await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(bob))
    assert r.status_code == 200 and r.json()["owner"] == bob_id
    # And on to a queue.
    r = await http.post(f"/v1/desk/conversations/{conversation}/transfer", headers=as_agent(bob),
                        json={"queue": "billing"})
    assert r.status_code == 200, r.text
    await waiting_in(http, conversation, "billing")


async def test_unknown_targets_are_422_with_the_reason_and_closed_conversations_409(http, channel):
    conversation = cid()
    await say(http, conversation, "hello")
    r = await http.post(f"/v1/conversations/{conversation}/handoff", json={"target": {"queue": "sales"}})
    assert r.status_code == 422 and "unknown queue 'sales'" in r.json()["detail"]
    r = await http.post(f"/v1/conversations/{conversation}/handoff",
                        json={"target": {"queue": "general"}, "fallback": [{"external_agent": "ghost"}]})
    assert r.status_code == 422 and "fallback.0" in r.json()["detail"] and "ghost" in r.json()["detail"]
    r = await http.post(f"/v1/conversations/{conversation}/handoff", json={"target": {"desk": "zen"}})
    assert r.status_code == 422 and "unknown desk 'zen'" in r.json()["detail"]
    assert (await snap(http, conversation))["state"] == "ai"  # nothing changed
    assert (await http.post(f"/v1/conversations/{conversation}/close")).status_code == 200

    async def closed():
        r = await http.post(f"/v1/conversations/{conversation}/handoff", json={"reason": "late"})
        return r.status_code == 409 and r
    r = await eventually(closed)
    assert "closed" in r.json()["detail"]


async def test_a_stale_accept_after_a_fallback_is_rejected(dev_env, http, channel):
    token = await live_agent(http, f"slow-{uuid.uuid4().hex[:4]}", queues=("general", "billing"))
    conversation = cid()
    await say(http, conversation, "hello")
    r = await http.post(f"/v1/conversations/{conversation}/handoff",
                        json={"target": {"queue": "billing"}, "fallback": [{"queue": "general"}], "sla_seconds": 2})
    assert r.status_code == 200, r.text
    first = (await waiting_in(http, conversation, "billing"))["pending_handoff"]["handoff_id"]
    s = await eventually(lambda: waiting_in(http, conversation, "general"), timeout=20)
    assert s["pending_handoff"]["handoff_id"] != first
    handle = dev_env.client.get_workflow_handle(f"conversation-{conversation}")
    with pytest.raises(WorkflowUpdateFailedError) as err:
        await handle.execute_update(Updates.ACCEPT_HANDOFF, AcceptHandoff(handoff_id=first, owner="late-agent"))
    assert "stale" in str(err.value.cause)
    r = await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(token))
    assert r.status_code == 200, r.text


# ---- time-skipping: SLA ladder and business hours ------------------------------------------------------


async def until_routed(handle) -> None:
    """Wait (in real time) for the routing decision before skipping time: a skip while the routing local activity
    runs would count against its timeout."""

    async def check():
        snap = await snapshot(handle)
        return snap.pending_handoff is not None and snap.pending_handoff.routed
    await eventually(check)


def _midday_zone(now: datetime) -> tuple[str, datetime]:
    """A fixed-offset zone where it is about noon at `now`, so windows built around it never cross midnight."""
    shift = (12 - now.hour + 12) % 24 - 12  # in [-12, 11]
    # POSIX-style names invert the sign: Etc/GMT-3 is UTC+3.
    name = "UTC" if shift == 0 else f"Etc/GMT{'-' if shift > 0 else '+'}{abs(shift)}"
    return name, now + timedelta(hours=shift)


async def test_sla_expiry_walks_the_ladder_to_a_leave_a_message_notice(ts_env, task_queue, tmp_path):
    config = load_config(write_config(tmp_path, """
queues:
  tier1: {sla_seconds: 120}
  tier2: {sla_seconds: 60}
routes:
  - name: support
    to: {queue: tier1}
    fallback: [{queue: tier2}, {leave_message: true}]
waiting: {position_update_seconds: 0}
"""))
    settings = settings_for(task_queue)
    async with baton_worker(ts_env.client, settings, config=config):
        handle = await start_conversation(ts_env.client, settings, cid(), text="hello")
        await handle.signal(Signals.REQUEST_HANDOFF, HandoffRequest(reason="help"))
        await until_routed(handle)
        await skip(ts_env, handle, timedelta(seconds=30))
        snap = await snapshot(handle)
        assert snap.state is State.HANDOFF_PENDING and snap.queue == "tier1"
        await skip(ts_env, handle, timedelta(seconds=120))
        snap = await snapshot(handle)
        assert snap.queue == "tier2"
        await skip(ts_env, handle, timedelta(seconds=70))
        snap = await snapshot(handle)
        assert snap.state is State.AI and snap.pending_handoff is None
        page = await handle.query(Queries.AUDIT, result_type=AuditPage)
        assert [e.detail["target"] for e in page.entries if e.kind == "handoff_failed"] == ["queue:tier1", "queue:tier2"]
        assert any(e.kind == "leave_message_offered" for e in page.entries)
        texts = [e.text for e in (await transcript(handle)).entries if e.role is Role.SYSTEM]
        assert any("Leave your message" in t for t in texts)
        await handle.signal(Signals.CLOSE, CloseRequest())
        await handle.result()


async def test_business_hours_closed_skips_to_the_fallback_and_a_closing_queue_falls_back(ts_env, task_queue, tmp_path):
    # The time-skipping server's clock runs ahead of the wall clock once earlier tests skipped time.
    zone, local = _midday_zone((await ts_env.get_current_time()).astimezone(timezone.utc))
    # `office` is closed now (opens in two hours); `night` closes ten minutes from now.
    office = f"{local + timedelta(hours=2):%H}:00-{local + timedelta(hours=3):%H}:00"
    night = f"00:00-{local + timedelta(minutes=10):%H:%M}"
    config = load_config(write_config(tmp_path, f"""
queues:
  office:
    business_hours: {{timezone: "{zone}", mon-sun: "{office}"}}
  night:
    sla_seconds: 3600
    business_hours: {{timezone: "{zone}", mon-sun: "{night}"}}
  overflow: {{sla_seconds: 3600}}
routes:
  - name: office-first
    to: {{queue: office}}
    fallback: [{{queue: night}}, {{queue: overflow}}]
waiting: {{position_update_seconds: 0}}
"""))
    settings = settings_for(task_queue)
    async with baton_worker(ts_env.client, settings, config=config):
        handle = await start_conversation(ts_env.client, settings, cid(), text="hello")
        await handle.signal(Signals.REQUEST_HANDOFF, HandoffRequest(reason="help"))
        await until_routed(handle)
        await skip(ts_env, handle, timedelta(seconds=5))
        snap = await snapshot(handle)
        assert snap.state is State.HANDOFF_PENDING and snap.queue == "night"
        page = await handle.query(Queries.AUDIT, result_type=AuditPage)
        routed = next(e for e in page.entries if e.kind == "handoff_routed")
        assert routed.detail["skipped"][0]["target"] == "queue:office" and "closed" in routed.detail["skipped"][0]["why"]
        await skip(ts_env, handle, timedelta(minutes=11))  # `night` closes: its SLA (an hour) is cut at closing time
        snap = await snapshot(handle)
        assert snap.queue == "overflow", snap
        page = await handle.query(Queries.AUDIT, result_type=AuditPage)
        failed = [e.detail for e in page.entries if e.kind == "handoff_failed"]
        assert failed[-1]["target"] == "queue:night" and "closed" in failed[-1]["reason"]
        await handle.signal(Signals.USER_MESSAGE, UserMessage(message_id="m9", text="never mind"))
        await skip(ts_env, handle, timedelta(seconds=5))
        assert (await snapshot(handle)).state is State.AI
        await handle.signal(Signals.CLOSE, CloseRequest())
        await handle.result()


# ---- a third-party desk, end to end (dev server, real HTTP both ways) -----------------------------------------


async def _desk_event(http, desk_secret: str, body: dict) -> object:
    import json as _json

    from activities import webhooks

    raw = _json.dumps(body).encode()
    return await http.post(f"/v1/desks/acme/events", content=raw,
                           headers=webhooks.headers(desk_secret, f"evt-{uuid.uuid4().hex}", raw))


@pytest.fixture
async def desk_env(dev_env, task_queue, channel, registry, tmp_path, monkeypatch):
    async with Receiver(path="/desk") as desk:
        monkeypatch.setenv("BATON_ALLOW_PRIVATE_NETWORKS", "1")  # the fake desk listens on loopback
        monkeypatch.setenv("ACME_DESK_SECRET", desk.secret)
        config = load_config(write_config(tmp_path, f"""
desks:
  acme: {{url: "{desk.url}", secret_env: ACME_DESK_SECRET}}
queues:
  general: {{sla_seconds: 300}}
routes:
  - name: outsourced
    when: {{reason: outsource}}
    to: {{desk: acme}}
    fallback: [{{queue: general}}]
    allowlist: ["profile.name"]
  - name: default
    to: {{queue: general}}
waiting: {{position_update_seconds: 0}}
"""))
        settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret)
        async with baton_worker(dev_env.client, settings, registry, config=config), baton_api(
            dev_env.client, settings, registry, config=config
        ) as http:
            yield http, desk


async def test_a_third_party_desk_accepts_chats_and_completes(dev_env, desk_env, channel):
    http, desk = desk_env
    conversation = cid()
    r = await http.put(f"/v1/conversations/{conversation}/context",
                       json={"profile": {"name": "Ada", "phone": "+44 20 7946 0958"}})
    assert r.status_code == 200, r.text
    await say(http, conversation, "hello")
    r = await http.post(f"/v1/conversations/{conversation}/handoff", json={"reason": "outsource this"})
    assert r.status_code == 200, r.text
    await desk.wait_for(lambda reqs: any(q.path == "/desk/handoffs" for q in reqs))
    envelope = next(q for q in desk.requests if q.path == "/desk/handoffs")
    assert envelope.verified, envelope.describe()
    body = envelope.json
    assert body["context"]["profile"] == {"name": "Ada"}  # the route's allowlist: no phone number
    # The number in any form, but not 4 digits alone: those turned up in a timestamp's microseconds ("...02.267946Z")
    # once in a fresh-clone run. No timestamp has 8 digits in a row.
    sent = envelope.body.decode()
    assert "7946 0958" not in sent and "79460958" not in sent.replace(" ", "")
    assert body["callback_url"].endswith("/v1/desks/acme/events")
    handoff_id = body["handoff_id"]
    s = await snap(http, conversation)
    assert s["state"] == "handoff_pending" and s["pending_handoff"]["target"]["desk"] == "acme"
    # While the desk has not accepted, the user's messages wait; they are forwarded once it does.
    await say(http, conversation, "are you there?", "while-waiting")

    r = await _desk_event(http, desk.secret, {"type": "accepted", "conversation_id": conversation,
                                              "handoff_id": "stale-id"})
    assert r.status_code == 409
    r = await _desk_event(http, desk.secret, {"type": "accepted", "conversation_id": conversation,
                                              "handoff_id": handoff_id, "agent": "Sam"})
    assert r.status_code == 200 and r.json()["owner"] == "desk:acme", r.text
    await desk.wait_for(lambda reqs: any(q.path == "/desk/messages" for q in reqs))
    forwarded = [q.json for q in desk.requests if q.path == "/desk/messages"]
    assert [f["message_id"] for f in forwarded] == ["while-waiting"]

    r = await _desk_event(http, desk.secret, {"type": "message", "conversation_id": conversation,
                                              "handoff_id": handoff_id, "message_id": "d1", "text": "Sam here."})
    assert r.status_code == 200, r.text
    await channel.wait_for(lambda reqs: any((q.json or {}).get("text") == "Sam here." for q in reqs))
    await say(http, conversation, "my parcel is late", "after-accept")
    await desk.wait_for(lambda reqs: sum(q.path == "/desk/messages" for q in reqs) >= 2)
    assert not [e for e in await entries(http, conversation) if e["role"] == "ai" and e["seq"] > s["seq"]]

    r = await _desk_event(http, desk.secret, {"type": "completed", "conversation_id": conversation,
                                              "handoff_id": handoff_id})
    assert r.status_code == 200 and r.json()["state"] == "ai", r.text

    async def ai_back():
        return any(e["role"] == "ai" and "back with you" in e["text"] for e in await entries(http, conversation))
    await eventually(ai_back)

    # Canaries: the desk's signing secret (with and without its prefix) never enters workflow history; the
    # decoded history does hold the conversation (positive control), so the check is not vacuous.
    history = history_text(await dev_env.client.get_workflow_handle(f"conversation-{conversation}").fetch_history())
    assert "Sam here." in history and "Ada" in history
    assert desk.secret not in history and desk.secret.removeprefix("whsec_") not in history


async def test_a_desk_that_fails_the_handoff_falls_back_to_the_queue(desk_env, channel):
    http, desk = desk_env
    conversation = cid()
    await say(http, conversation, "hello")
    r = await http.post(f"/v1/conversations/{conversation}/handoff", json={"reason": "outsource this"})
    assert r.status_code == 200, r.text
    await desk.wait_for(lambda reqs: any(q.path == "/desk/handoffs" for q in reqs))
    handoff_id = next(q for q in desk.requests if q.path == "/desk/handoffs").json["handoff_id"]
    r = await _desk_event(http, desk.secret, {"type": "failed", "conversation_id": conversation,
                                              "handoff_id": handoff_id, "reason": "no agents online"})
    assert r.status_code == 200, r.text
    s = await waiting_in(http, conversation, "general")
    assert s["pending_handoff"]["handoff_id"] != handoff_id
    failed = [e for e in await audit(http, conversation) if e["kind"] == "handoff_failed"]
    assert failed[-1]["detail"]["target"] == "desk:acme" and "no agents online" in failed[-1]["detail"]["reason"]


async def test_a_desk_that_refuses_the_envelope_falls_back_at_once(desk_env, channel):
    http, desk = desk_env
    desk.script((400, {}, {"error": "unknown tenant"}))
    conversation = cid()
    await say(http, conversation, "hello")
    r = await http.post(f"/v1/conversations/{conversation}/handoff", json={"reason": "outsource this"})
    assert r.status_code == 200, r.text
    s = await waiting_in(http, conversation, "general")
    # Now waiting in our own queue: the desk cannot take it, even with the right handoff id and a valid signature.
    r = await _desk_event(http, desk.secret, {"type": "accepted", "conversation_id": conversation,
                                              "handoff_id": s["pending_handoff"]["handoff_id"]})
    assert r.status_code == 409 and "not for a third-party desk" in r.json()["detail"]
