"""Two Baton platforms on one dev server (own task queues, registries and APIs on their own loopback ports):
Verify & Save, a handoff across the protocol, messages both ways, hand back, and what must never cross."""

from __future__ import annotations

import contextlib
import json
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from activities import webhooks
from activities.registry import SqliteRegistry
from models.conversation import State
from models.names import workflow_id
from devkit.temporal import free_port
from tests.harness import baton_api, baton_worker, eventually, history_text, settings_for
from tests.receiver import Receiver

ADMIN = {"Authorization": "Bearer ba_test_admin"}
CANARY_AUTH = "tok-CANARY-7f3a9e"
CANARY_NOTE = "NOTE-CANARY-2b81: VIP, refund approved"
CANARY_PASSWORD = "pw-CANARY-hunter2"
CARD = "4111 1111 1111 1111"
CARD_DIGITS = "4111111111111111"


@dataclass
class Platform:
    name: str
    url: str
    settings: Any
    registry: SqliteRegistry
    http: httpx.AsyncClient
    received: list[bytes] = field(default_factory=list)

    async def snapshot(self, conversation: str) -> dict:
        r = await self.http.get(f"/v1/conversations/{conversation}")
        assert r.status_code == 200, r.text
        return r.json()

    async def say(self, conversation: str, text: str, message_id: str | None = None) -> None:
        r = await self.http.post(
            f"/v1/conversations/{conversation}/messages",
            json={"message_id": message_id or uuid.uuid4().hex, "text": text},
        )
        assert r.status_code == 202, r.text


def recorder(bodies: list[bytes]):
    """Wrap an ASGI app so every request body it receives is kept: 'every byte B received'."""

    def wrap(app):
        async def recording(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)

            async def tapped():
                message = await receive()
                if message.get("type") == "http.request":
                    bodies.append(bytes(message.get("body", b"")))
                return message

            # The path and headers are bytes the platform received too.
            bodies.append(scope["path"].encode() + b"?" + scope.get("query_string", b""))
            bodies.extend(value for _, value in scope["headers"])
            return await app(scope, tapped, send)

        return recording

    return wrap


@contextlib.asynccontextmanager
async def platform(name: str, client, tmp_path, channel: Receiver | None = None, **overrides):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = settings_for(
        f"{name}-{uuid.uuid4().hex[:8]}", public_url=url, home=tmp_path / name,
        **({"channel_url": channel.url, "channel_secret": channel.secret} if channel else {}), **overrides,
    )
    registry = SqliteRegistry(settings.home / "agents.db", settings.secret_key)
    received: list[bytes] = []
    try:
        async with baton_worker(client, settings, registry), baton_api(
            client, settings, registry, port=port, wrap=recorder(received)
        ) as http:
            yield Platform(name, url, settings, registry, http, received)
    finally:
        registry.close()


@pytest.fixture(autouse=True)
def loopback_allowed(monkeypatch):
    monkeypatch.setenv("BATON_ALLOW_PRIVATE_NETWORKS", "1")


@pytest.fixture
async def pair(dev_env, tmp_path, channel):
    """Platform A (the user's, with the chat channel) and platform B (hosts `tech-support`), connected."""
    async with platform("b", dev_env.client, tmp_path) as b, platform(
        "a", dev_env.client, tmp_path, channel, demo_tech_agent="tech-support"
    ) as a:
        created = await b.http.post("/v1/admin/agents/local", json={"name": "tech-support", "agent_id": "tech-support"},
                                    headers=ADMIN)
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]
        saved = await a.http.post(
            "/v1/admin/agents/external", json={"agent_id": "tech-support", "secret": secret, "domain": b.url},
            headers=ADMIN,
        )
        assert saved.status_code == 201, saved.text
        yield a, b, secret


def cid() -> str:
    return f"two-{uuid.uuid4().hex[:10]}"


def texts(channel: Receiver) -> list[str]:
    return [m["text"] for m in channel.delivered()]


async def remote_of(a: Platform, conversation: str) -> str:
    async def accepted():
        snap = await a.snapshot(conversation)
        return snap["state"] == State.EXTERNAL_AGENT and snap["external"]["remote_conversation_id"]

    return await eventually(accepted, timeout=20)


async def handed_over(a: Platform, channel: Receiver, conversation: str) -> str:
    r = await a.http.put(
        f"/v1/conversations/{conversation}/context",
        json={
            "profile": {"name": "Ada", "password": CANARY_PASSWORD},
            "slots": {"plan": "pro"},
            "auth": {"token": CANARY_AUTH},
            "internal_notes": CANARY_NOTE,
        },
    )
    assert r.status_code == 200, r.text
    await a.say(conversation, f"Hi, my card is {CARD}")
    await channel.wait_for(lambda _: any("Ada" in t for t in texts(channel)))
    await a.say(conversation, "The app crashes with an error when I open it")
    rid = await remote_of(a, conversation)
    # tech-support greets by name and starts from the problem already described, across the protocol.
    await channel.wait_for(lambda _: any("I'm the tech-support assistant" in t for t in texts(channel)), timeout=20)
    return rid


async def test_handoff_to_an_agent_on_another_platform_and_back(dev_env, pair, channel):
    a, b, secret = pair
    conversation = cid()
    rid = await handed_over(a, channel, conversation)

    greeting = next(t for t in texts(channel) if "I'm the tech-support assistant" in t)
    assert greeting.startswith("Hi Ada,") and "crashes with an error" in greeting and "name" not in greeting.lower()
    b_snap = await b.snapshot(rid)
    assert b_snap["peer"]["agent_id"] == "tech-support" and b_snap["peer"]["source_conversation_id"] == conversation
    assert b_snap["context"]["profile"] == {"name": "Ada"} and b_snap["context"]["slots"]["issue_type"] == "technical"
    # A's summary reached B's side, for its local agent (the LLM adapter shows it to the model).
    assert "crashes with an error" in b_snap["peer"]["summary"]

    # The user keeps chatting in the same conversation: forwarded to B, answered back through the callback.
    await a.say(conversation, "I'm on version 2.3.1")
    await channel.wait_for(lambda _: any("known crash" in t for t in texts(channel)), timeout=20)
    await a.say(conversation, "It works now, thanks!")
    await channel.wait_for(lambda _: any("back with you" in t for t in texts(channel)), timeout=20)

    snap = await a.snapshot(conversation)
    assert snap["state"] == State.AI and snap["owner"] == "ai" and snap["external"] is None
    await eventually(lambda: _closed_with(b, rid, "handed the conversation back"))

    # In order, once: the channel saw each message exactly once and the sequence is the conversation's.
    seqs = [m["seq"] for m in channel.delivered()]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    roles = [m["role"] for m in channel.delivered()]
    assert roles.count("external_agent") == 3  # greeting, the fix, the goodbye
    said = texts(channel)
    assert said.index(greeting) < said.index(next(t for t in said if "known crash" in t)) < said.index(
        next(t for t in said if "back with you" in t)
    )

    audit = (await a.http.get(f"/v1/conversations/{conversation}/audit")).json()["entries"]
    filtered = next(e for e in audit if e["kind"] == "context_filtered")
    assert {"path": "auth", "action": "dropped", "reason": "never leaves"} in filtered["detail"]["receipt"]
    assert {"path": "internal_notes", "action": "dropped", "reason": "never leaves"} in filtered["detail"]["receipt"]
    assert any(e["kind"] == "redacted_at_ingress" for e in audit)
    withheld = next(e for e in audit if e["kind"] == "context_updated")["detail"]["withheld"]
    assert {"path": "profile.password", "action": "dropped", "reason": "secret-named key"} in withheld
    assert [e["kind"] for e in audit].count("handed_back") == 1

    # Nothing that must stay home crossed, or entered either platform's history.
    canaries = [secret, secret.removeprefix("whsec_"), CANARY_AUTH, CANARY_NOTE, CANARY_PASSWORD, CARD, CARD_DIGITS]
    received_by_b = b"\n".join(b.received).decode("utf-8", "replace")
    assert "Ada" in received_by_b and "crashes with an error" in received_by_b  # positive control
    # The envelope carries a summary for B's agent (the demo AI's: the user's own words, from the filtered transcript).
    envelope = next(json.loads(body) for body in b.received if b'"callback_url"' in body)
    assert "crashes with an error" in envelope["summary"], envelope.get("summary")
    histories = {
        "A": history_text(await dev_env.client.get_workflow_handle(workflow_id(conversation)).fetch_history()),
        "B": history_text(await dev_env.client.get_workflow_handle(workflow_id(rid)).fetch_history()),
    }
    assert "Ada" in histories["A"] and "Ada" in histories["B"]  # positive control: payloads are decoded
    for canary in canaries:
        assert canary not in received_by_b, f"{canary[:12]}... reached platform B"
        for name, text in histories.items():
            assert canary not in text, f"{canary[:12]}... is in platform {name}'s history"


async def _closed_with(p: Platform, conversation: str, reason: str) -> bool:
    snap = await p.snapshot(conversation)
    return snap["state"] == State.CLOSED and reason in (snap["closed_reason"] or "")


def signed(secret: str, body: dict, msg_id: str | None = None, at: datetime | None = None) -> tuple[bytes, dict]:
    raw = json.dumps(body).encode()
    ts = int((at or datetime.now(timezone.utc)).timestamp())
    return raw, webhooks.headers(secret, msg_id or "msg_" + secrets.token_hex(8), raw, ts)


async def transcript_len(p: Platform, conversation: str) -> int:
    return (await p.snapshot(conversation))["seq"]


async def test_forged_stale_replayed_unsigned_and_wrong_agent_requests_change_nothing(pair, channel):
    a, b, secret = pair
    conversation = cid()
    rid = await handed_over(a, channel, conversation)
    path = f"/v1/agents/tech-support/conversations/{rid}/messages"
    before = await transcript_len(b, rid)

    body, headers = signed(secret, {"message_id": "x1", "text": "hello from an attacker"})
    forged = {**headers, "webhook-signature": "v1," + "A" * 43 + "="}
    stale_body, stale = signed(secret, {"message_id": "x2", "text": "old"}, at=datetime.now(timezone.utc) - timedelta(minutes=6))
    other_secret = webhooks.generate_secret()
    other_body, other = signed(other_secret, {"message_id": "x3", "text": "wrong secret"})
    for content, hdrs in ((body, {"content-type": "application/json"}), (body, forged), (stale_body, stale),
                          (other_body, other)):
        r = await b.http.post(path, content=content, headers=hdrs)
        assert r.status_code == 401, r.text

    # Wrong agent: a second local agent on B, correctly signed, cannot write into tech-support's conversation.
    created = await b.http.post("/v1/admin/agents/local", json={"name": "billing"}, headers=ADMIN)
    billing = created.json()
    wrong_body, wrong = signed(billing["secret"], {"message_id": "x4", "text": "not yours"})
    r = await b.http.post(f"/v1/agents/{billing['agent_id']}/conversations/{rid}/messages", content=wrong_body, headers=wrong)
    assert r.status_code == 404, r.text

    # Replayed: the same signed request twice is handled once.
    good_body, good = signed(secret, {"message_id": "x5", "text": "version 1.0"})
    assert (await b.http.post(path, content=good_body, headers=good)).status_code == 202
    after_first = await eventually(lambda: _seq_above(b, rid, before))
    replay = await b.http.post(path, content=good_body, headers=good)
    assert replay.status_code == 202
    user_entries = [e for e in (await b.http.get(f"/v1/conversations/{rid}/transcript")).json()["entries"]
                    if e["role"] == "user"]
    assert [e["message_id"] for e in user_entries] == ["x5"] and after_first > before

    # Callbacks into A: unsigned, signed by someone else, or about a conversation not handed to that agent.
    event = {"type": "message", "remote_conversation_id": rid, "message_id": "e1", "text": "injected"}
    raw, hdrs = signed(other_secret, event)
    assert (await a.http.post("/v1/agents/tech-support/events", content=raw, headers=hdrs)).status_code == 401
    raw, hdrs = signed(secret, event)
    assert (await a.http.post("/v1/agents/nobody/events", content=raw, headers=hdrs)).status_code == 401
    assert all("injected" not in t for t in texts(channel))


async def _seq_above(p: Platform, conversation: str, seq: int) -> int | None:
    now = await transcript_len(p, conversation)
    return now if now > seq else None


async def test_the_same_envelope_twice_opens_one_conversation(pair):
    a, b, secret = pair
    envelope = {
        "handoff_id": "hof-dup-1", "source": {"platform": "https://a.example", "conversation_id": "c-1"},
        "reason": "technical", "context": {"profile": {"name": "Bo"}}, "transcript": [],
        "callback_url": a.url + "/v1/agents/tech-support/events",
    }
    raw, headers = signed(secret, envelope, msg_id="hof_dup_1")
    first = await b.http.post("/v1/agents/tech-support/handoffs", content=raw, headers=headers)
    again = await b.http.post("/v1/agents/tech-support/handoffs", content=raw, headers=headers)
    raw2, headers2 = signed(secret, envelope)  # re-sent under a new webhook-id: still the same handoff
    third = await b.http.post("/v1/agents/tech-support/handoffs", content=raw2, headers=headers2)
    assert first.status_code == again.status_code == third.status_code == 202
    rids = {r.json()["remote_conversation_id"] for r in (first, again, third)}
    assert len(rids) == 1
    snap = await b.snapshot(rids.pop())
    assert snap["peer"]["handoff_id"] == "hof-dup-1" and snap["context"]["profile"] == {"name": "Bo"}

    bad = {**envelope, "callback_url": "not a url"}
    raw, headers = signed(secret, bad)
    r = await b.http.post("/v1/agents/tech-support/handoffs", content=raw, headers=headers)
    assert r.status_code == 422 and "callback_url" in r.json()["detail"]
    raw, headers = signed(secret, {"handoff_id": "h2"})
    r = await b.http.post("/v1/agents/tech-support/handoffs", content=raw, headers=headers)
    assert r.status_code == 422 and "source" in r.json()["detail"] and "callback_url" in r.json()["detail"]


async def test_platform_down_retries_then_falls_back_to_the_ai(dev_env, tmp_path, channel):
    """B accepted the connection once, then went away: A retries within the SLA, then the AI is back."""
    async with platform("a", dev_env.client, tmp_path, channel, demo_tech_agent="tech-support") as a:
        dead = f"http://127.0.0.1:{free_port()}"
        a.registry.save_external("tech-support", webhooks.generate_secret(), dead)
        conversation = cid()
        await a.say(conversation, "hello")
        await channel.wait_count(1)
        r = await a.http.post(
            f"/v1/conversations/{conversation}/handoff",
            json={"reason": "technical", "target": {"external_agent": "tech-support"}, "sla_seconds": 4},
        )
        assert r.status_code == 200, r.text
        await a.say(conversation, "are you there?")

        async def back_with_ai():
            snap = await a.snapshot(conversation)
            return snap["state"] == State.AI and snap["handoffs"] == 1

        await eventually(back_with_ai, timeout=20)
        await channel.wait_for(lambda _: any("nobody is available" in t for t in texts(channel)))
        # What the user wrote while waiting is answered rather than dropped.
        await channel.wait_for(lambda _: any("are you there?" in t for t in texts(channel)))
        audit = (await a.http.get(f"/v1/conversations/{conversation}/audit")).json()["entries"]
        failed = next(e for e in audit if e["kind"] == "handoff_failed")
        assert "did not accept" in failed["detail"]["reason"]
        history = await dev_env.client.get_workflow_handle(workflow_id(conversation)).fetch_history()
        attempts = [e for e in history.events if e.HasField("activity_task_started_event_attributes")]
        deliver = [e for e in attempts if e.activity_task_started_event_attributes.attempt > 1]
        assert deliver, "the delivery was retried before giving up"


async def test_b_refusing_falls_back_to_the_next_target(dev_env, pair, channel):
    a, b, secret = pair
    b.registry.remove("tech-support", "local")  # B no longer knows the agent: its 401 is a refusal
    conversation = cid()
    await a.say(conversation, "hello")
    await channel.wait_count(1)
    r = await a.http.post(
        f"/v1/conversations/{conversation}/handoff",
        json={"target": {"external_agent": "tech-support"}, "fallback": [{"queue": "general"}]},
    )
    assert r.status_code == 200

    async def on_queue():
        snap = await a.snapshot(conversation)
        return snap["state"] == State.HANDOFF_PENDING and snap["queue"] == "general"

    await eventually(on_queue, timeout=20)
    audit = (await a.http.get(f"/v1/conversations/{conversation}/audit")).json()["entries"]
    assert "401" in next(e for e in audit if e["kind"] == "handoff_failed")["detail"]["reason"]
    await a.http.post(f"/v1/conversations/{conversation}/close")


async def test_the_external_agent_closing_closes_the_conversation(pair, channel):
    a, b, secret = pair
    conversation = cid()
    rid = await handed_over(a, channel, conversation)
    r = await b.http.post(f"/v1/conversations/{rid}/close", json={"reason": "resolved by tech-support"})
    assert r.status_code == 200, r.text
    await eventually(lambda: _closed_with(a, conversation, "resolved by tech-support"), timeout=20)
    await channel.wait_for(lambda _: any("has been closed" in t for t in texts(channel)))


async def test_a_closing_makes_b_messages_gone_and_b_closes_quietly(pair, channel):
    """A's user closes while B owns: B's next reply is refused (409) and B ends its side without a callback."""
    a, b, secret = pair
    conversation = cid()
    rid = await handed_over(a, channel, conversation)
    assert (await a.http.post(f"/v1/conversations/{conversation}/close")).status_code == 200
    raw, headers = signed(secret, {"message_id": "late", "text": "version 9.9"})
    r = await b.http.post(f"/v1/agents/tech-support/conversations/{rid}/messages", content=raw, headers=headers)
    assert r.status_code == 202  # B's user message; B's AI answers, and A refuses that answer
    await eventually(lambda: _closed_with(b, rid, "the sending platform ended the handoff"), timeout=20)
