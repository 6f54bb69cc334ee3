"""Record the replay corpus: `python -m tests.record_histories PREFIX` drives representative conversations on a
fresh dev server and writes their histories to tests/histories/<PREFIX>_<name>.json.

Baton 1.0's corpus has the prefix `1.0`. After 1.0 every workflow change is guarded by `workflow.patched` and
records the corpus again under the next prefix (`1.1`, ...; a scenario of its own where the change needs one); the
older files stay: they are what running conversations of older code look like (README, "Changing the workflow")."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from models.conversation import (
    AcceptHandoff,
    AgentMessage,
    CloseRequest,
    CommandResult,
    ContextUpdate,
    HandBack,
    HandoffRequest,
    HandoffTarget,
    RejectHandoff,
    Role,
    UserMessage,
)
from activities.registry import SqliteRegistry
from models.config import load_config
from models.names import Signals, Updates, workflow_id
from devkit.temporal import free_port, start_dev_server
from tests.harness import baton_api, baton_worker, settings_for, snapshot, start_conversation
from tests.receiver import Receiver

HERE = Path(__file__).parent / "histories"


async def ai_chat_then_close(client, settings, cid, **_):
    h = await start_conversation(client, settings, cid, text="Hello")
    await h.signal(Signals.SET_CONTEXT, ContextUpdate(profile={"name": "Ada"}, slots={"issue": "billing"}))
    for i, text in enumerate(["What can you do?", "thanks", "thanks"], start=2):
        await h.execute_update(Updates.SUBMIT_USER_MESSAGE, UserMessage(message_id=f"m{i}", text=text), result_type=CommandResult)
    await h.signal(Signals.USER_MESSAGE, UserMessage(message_id="m2", text="What can you do?"))  # duplicate
    await h.signal(Signals.HAND_BACK, HandBack())  # illegal: audited
    await h.execute_update(Updates.SUBMIT_CLOSE, CloseRequest(reason="resolved"), result_type=CommandResult)
    await h.result()
    return h


async def live_handoff_and_hand_back(client, settings, cid, **_):
    h = await start_conversation(client, settings, cid, text="I want to talk to a human")
    while True:
        snap = await snapshot(h)
        if snap.pending_handoff and snap.pending_handoff.routed:
            break
        await asyncio.sleep(0.05)
    await h.signal(Signals.USER_MESSAGE, UserMessage(message_id="w1", text="hello? anyone?"))
    await h.execute_update(Updates.ACCEPT_HANDOFF, AcceptHandoff(handoff_id=snap.pending_handoff.handoff_id, owner="alice"), result_type=CommandResult)
    await h.execute_update(Updates.SUBMIT_AGENT_MESSAGE, AgentMessage(message_id="a1", text="Alice here.", author="alice", role=Role.LIVE_AGENT), result_type=CommandResult)
    await h.signal(Signals.USER_MESSAGE, UserMessage(message_id="u2", text="great"))
    await h.execute_update(Updates.SUBMIT_HAND_BACK, HandBack(by="alice"), result_type=CommandResult)
    await h.execute_update(Updates.SUBMIT_USER_MESSAGE, UserMessage(message_id="u3", text="thanks"), result_type=CommandResult)
    await h.signal(Signals.CLOSE, CloseRequest())
    await h.result()
    return h


async def fallback_then_give_up(client, settings, cid, **_):
    h = await start_conversation(client, settings, cid, text="Hello")
    first = await h.execute_update(
        Updates.SUBMIT_HANDOFF,
        HandoffRequest(reason="billing", target=HandoffTarget(queue="tier1"), fallback=[HandoffTarget(queue="tier2")]),
        result_type=CommandResult,
    )
    await h.execute_update(Updates.REJECT_HANDOFF, RejectHandoff(handoff_id=first.handoff_id, reason="busy"), result_type=CommandResult)
    snap = await snapshot(h)
    await h.signal(Signals.USER_MESSAGE, UserMessage(message_id="w", text="thanks"))
    await h.execute_update(Updates.REJECT_HANDOFF, RejectHandoff(handoff_id=snap.pending_handoff.handoff_id), result_type=CommandResult)
    await h.execute_update(Updates.SUBMIT_CLOSE, CloseRequest(), result_type=CommandResult)
    await h.result()
    return h


async def sla_expiry_walks_the_fallbacks(client, settings, cid, **_):
    h = await start_conversation(client, settings, cid, text="Hello")
    await h.signal(
        Signals.REQUEST_HANDOFF,
        HandoffRequest(target=HandoffTarget(queue="tier1"), fallback=[HandoffTarget(queue="tier2")], sla_seconds=1),
    )
    while (await snapshot(h)).state.value != "ai":
        await asyncio.sleep(0.2)
    await h.signal(Signals.CLOSE, CloseRequest())
    await h.result()
    return h


async def say(http, cid: str, text: str) -> None:
    """The user's message, through the chat-backend API (a fresh message id)."""
    r = await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": uuid.uuid4().hex, "text": text})
    assert r.status_code == 202, r.text


async def state(http, cid: str) -> dict:
    """The conversation's snapshot, through the API."""
    return (await http.get(f"/v1/conversations/{cid}")).json()


async def handed_to(http, cid: str, agent_id: str, reason: str) -> dict:
    """Hand the conversation to an external agent through the API; its snapshot once the agent owns it."""
    r = await http.post(f"/v1/conversations/{cid}/handoff",
                        json={"reason": reason, "target": {"external_agent": agent_id}})
    assert r.status_code == 200, r.text
    while (snap := await state(http, cid))["state"] != "external_agent":
        await asyncio.sleep(0.05)
    return snap


async def closed(client, http, cid: str):
    """Close the conversation through the API and wait for its run to end; its handle, for the history."""
    await http.post(f"/v1/conversations/{cid}/close")
    handle = client.get_workflow_handle(workflow_id(cid))
    await handle.result()
    return handle


async def external_handoff_and_hand_back(client, settings, cid, http, **_):
    """The embedded demo's path: this install hands the conversation to its own `tech-support` over loopback.
    Returns both conversations: ours, and the one the receiving side opened."""
    await http.put(f"/v1/conversations/{cid}/context", json={"profile": {"name": "Ada"}, "auth": {"token": "t"}})
    await say(http, cid, "The app crashes with an error")
    while (snap := await state(http, cid))["state"] != "external_agent":
        await asyncio.sleep(0.1)
    rid = snap["external"]["remote_conversation_id"]
    await say(http, cid, "version 2.3.1")
    await say(http, cid, "it works now, thanks")
    while (await state(http, cid))["state"] != "ai" or (await state(http, rid))["state"] != "closed":
        await asyncio.sleep(0.1)
    await http.post(f"/v1/conversations/{cid}/close")
    ours = client.get_workflow_handle(workflow_id(cid))
    await ours.result()
    return ours, client.get_workflow_handle(workflow_id(rid))


async def live_agent(http, agent_id: str, queues: list[str]) -> dict[str, str]:
    r = await http.post("/v1/admin/live-agents", headers={"Authorization": "Bearer ba_test_admin"},
                        json={"agent_id": agent_id, "name": agent_id.title(), "queues": queues})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def until(predicate, every: float = 0.05) -> None:
    while not await predicate():
        await asyncio.sleep(every)


async def claimed(http, cid: str, agent: dict[str, str]) -> None:
    """Claim as soon as the conversation waits (a claim while it is still being routed answers 409)."""
    while (r := await http.post(f"/v1/desk/conversations/{cid}/claim", headers=agent)).status_code != 200:
        assert r.status_code == 409, r.text
        await asyncio.sleep(0.1)


async def rate_the_close(http, cid: str) -> None:
    """From 1.4 (close-rating) a live agent's close asks for a rating (the recording config has it on), and the run
    waits for the answer: the user gives it, so the run ends."""
    await until(lambda: _asked(http, cid))
    await say(http, cid, "5")


async def transfer_to_a_named_agent(client, settings, cid, http, **_):
    """A live agent claims from the queue and transfers to a named colleague (target kind `live_agent`), who claims
    it from their personal queue, replies and closes."""
    alice = await live_agent(http, f"alice-{cid}", ["general"])
    bob_id = f"bob-{cid}"
    bob = await live_agent(http, bob_id, ["general"])
    await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": "u1", "text": "I want a human"})
    await claimed(http, cid, alice)
    await http.post(f"/v1/desk/conversations/{cid}/messages", headers=alice, json={"message_id": "a1", "text": "Hi"})
    r = await http.post(f"/v1/desk/conversations/{cid}/transfer", headers=alice,
                        json={"agent_id": bob_id, "reason": "bob knows refunds"})
    assert r.status_code == 200, r.text
    await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": "u2", "text": "still there?"})
    await claimed(http, cid, bob)
    await http.post(f"/v1/desk/conversations/{cid}/messages", headers=bob, json={"message_id": "b1", "text": "Bob"})
    assert (await http.post(f"/v1/desk/conversations/{cid}/close", headers=bob)).status_code == 200
    await rate_the_close(http, cid)
    h = client.get_workflow_handle(workflow_id(cid))
    await h.result()
    return h


async def ladder_with_business_hours(client, settings, cid, http, **_):
    """The route's first rung is closed (business hours): routing skips it; the next rung's SLA runs out and the
    ladder ends in a leave-a-message notice; the AI answers what the user wrote while waiting."""
    await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": "u1", "text": "hello"})
    r = await http.post(f"/v1/conversations/{cid}/handoff", json={"reason": "after hours please", "sla_seconds": 1})
    assert r.status_code == 200, r.text
    await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": "u2", "text": "anyone?"})

    async def back_with_the_ai():
        return (await http.get(f"/v1/conversations/{cid}")).json()["state"] == "ai"

    await until(back_with_the_ai)
    await asyncio.sleep(1.0)  # the AI answers the message written while waiting
    return await closed(client, http, cid)


async def continue_as_new_while_waiting(client, settings, cid, http, **_):
    """A user waits in a queue and writes on until the run continues as new; the next run carries the pending
    handoff (its position announcer restarts), an agent claims there and closes. Both runs are recorded."""
    from workflows.options import RUN_EVENTS

    agent = await live_agent(http, f"carol-{cid}", ["general"])
    await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": "u0", "text": "I want a human"})

    async def waiting():
        return (await http.get(f"/v1/conversations/{cid}")).json()["queue"] == "general"

    await until(waiting)
    h = client.get_workflow_handle(workflow_id(cid))
    first_run = (await h.describe()).run_id
    first = client.get_workflow_handle(h.id, run_id=first_run)
    i = 0
    while (await first.describe()).status.name == "RUNNING" and i < RUN_EVENTS:
        i += 1
        r = await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": f"w{i}", "text": f"hello {i}?"})
        assert r.status_code == 202, r.text
        await asyncio.sleep(0.05)
    assert (await first.describe()).status.name == "CONTINUED_AS_NEW", "the run did not continue as new"
    await asyncio.sleep(1.5)  # a position check in the new run
    await claimed(http, cid, agent)
    await http.post(f"/v1/desk/conversations/{cid}/messages", headers=agent, json={"message_id": "c1", "text": "Hi"})
    assert (await http.post(f"/v1/desk/conversations/{cid}/close", headers=agent)).status_code == 200
    await rate_the_close(http, cid)
    await h.result()
    second = client.get_workflow_handle(h.id, run_id=(await h.describe()).run_id)
    return first, second


continue_as_new_while_waiting.suffixes = ("", "_next_run")  # type: ignore[attr-defined]


async def idle_continue_as_new(client, settings, cid, http, **_):
    """PATCH_IDLE_CONTINUE (1.3): a user chats with the AI, pausing after each reply, until the run continues as new
    in a pause (at IDLE_RUN_EVENTS, before RUN_EVENTS) carrying `rung`; the next run answers two more messages
    without a bell of its own first, then the chat is closed. Both runs are recorded."""
    from workflows.options import RUN_EVENTS

    h = client.get_workflow_handle(workflow_id(cid))
    i = 0
    while True:
        r = await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": f"m{i}", "text": f"question {i}"})
        assert r.status_code == 202, r.text
        i += 1

        async def answered(n=i):
            return len([e for e in (await http.get(f"/v1/conversations/{cid}/transcript")).json()["entries"]
                        if e["role"] == "ai"]) >= n

        await until(answered)
        await asyncio.sleep(0.3)  # the user reads the reply
        if i == 1:
            first_run = (await h.describe()).run_id
        if (await client.get_workflow_handle(h.id, run_id=first_run).describe()).status.name != "RUNNING":
            break
        assert i < RUN_EVENTS, "the run did not continue as new"
    for j in (i, i + 1):
        r = await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": f"m{j}", "text": f"question {j}"})
        assert r.status_code == 202, r.text
        await asyncio.sleep(0.3)
    await h.execute_update(Updates.SUBMIT_CLOSE, CloseRequest(reason="resolved"), result_type=CommandResult)
    await h.result()
    second = client.get_workflow_handle(h.id, run_id=(await h.describe()).run_id)
    return client.get_workflow_handle(h.id, run_id=first_run), second


idle_continue_as_new.suffixes = ("", "_next_run")  # type: ignore[attr-defined]


async def ai_failure_is_routed(client, settings, cid, config, registry, **_):
    """The AI agent fails for good (a customer's bot that answers 400): the config's `ai_failure` rule hands the
    conversation to a queue, where a live agent accepts; they close it. Its own worker and task queue, with the
    webhook agent pointed at a receiver that refuses every turn."""
    async with Receiver(verify_signatures=False, path="/bot") as bot:
        bot.script(*[400] * 5)
        failing = settings.model_copy(update={"task_queue": f"{settings.task_queue}-ai-failure", "ai_agent": bot.url})
        async with baton_worker(client, failing, registry, config=config):
            h = await start_conversation(client, failing, cid, text="Hello")
            while not ((snap := await snapshot(h)).pending_handoff and snap.pending_handoff.routed):
                await asyncio.sleep(0.05)
            await h.execute_update(
                Updates.ACCEPT_HANDOFF, AcceptHandoff(handoff_id=snap.pending_handoff.handoff_id, owner="alice"),
                result_type=CommandResult,
            )
            await h.execute_update(
                Updates.SUBMIT_AGENT_MESSAGE,
                AgentMessage(message_id="a1", text="Alice here, the assistant is down.", author="alice",
                             role=Role.LIVE_AGENT),
                result_type=CommandResult,
            )
            await h.execute_update(Updates.SUBMIT_CLOSE, CloseRequest(by="alice"), result_type=CommandResult)
            await h.result()
    return h


RECORDING_CONFIG = """
intents:
  human: {keywords: ["human"], reply: "Of course, I'll bring in a person."}
  technical: {keywords: ["crashes", "error"]}
waiting: {position_update_seconds: 1, cancel_phrases: ["never mind"]}
wrap_up_codes: [resolved, escalated]
rating: {enabled: true, question: "How did {agent} do? Reply 1 to 5."}
desks:
  acme: {url: "DESK_URL", secret_env: ACME_DESK_SECRET}
queues:
  general: {}
  tier1: {}
  tier2: {}
  night:
    # Never open while a recording runs: closed yesterday, today and tomorrow (UTC), and no hours on other days.
    business_hours: {timezone: UTC, mon-sun: "00:00-24:00", closed_dates: CLOSED_DATES}
routes:
  - {name: human, when: {intent: human}, to: {queue: general}}
  - {name: technical, when: {intent: technical}, to: {external_agent: tech-support}, fallback: [{queue: general}]}
  - {name: outsourced, when: {reason: outsource}, to: {desk: acme}, fallback: [{queue: general}],
     allowlist: ["profile.name"]}
  - {name: after_hours, when: {reason: after hours}, to: {queue: night},
     fallback: [{queue: general}, {leave_message: true, message: "Leave us a message."}]}
  - {name: default, to: {queue: general}}
ai_failure: {to: {queue: general}, fallback: [{leave_message: true}]}
"""


async def routed_intent_claim_release(client, settings, cid, http, **_):
    """A config intent routes to `general`; the user hears their position; a live agent claims over the desk API,
    replies, releases; the AI speaks up again."""
    await http.put(f"/v1/conversations/{cid}/context", json={"profile": {"name": "Ada", "email": "ada@example.com"}})
    await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": "u1", "text": "I want a human"})
    token = (await http.post("/v1/admin/live-agents", headers={"Authorization": "Bearer ba_test_admin"},
                             json={"agent_id": f"agent-{cid}", "name": "Alice", "queues": ["general"]})).json()["token"]
    agent = {"Authorization": f"Bearer {token}"}
    while (await http.get(f"/v1/conversations/{cid}")).json()["queue"] != "general":
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)  # one position check
    await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": "u2", "text": "hello?"})
    assert (await http.post(f"/v1/desk/conversations/{cid}/claim", headers=agent)).status_code == 200
    await http.post(f"/v1/desk/conversations/{cid}/messages", headers=agent, json={"message_id": "a1", "text": "Hi"})
    assert (await http.post(f"/v1/desk/conversations/{cid}/release", headers=agent)).status_code == 200
    await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": "u3", "text": "thanks"})
    await asyncio.sleep(0.5)
    return await closed(client, http, cid)


async def wrap_up_and_rating(client, settings, cid, http, **_):
    """A live agent releases with a wrap-up code; the user is asked to rate and answers 5 (recorded, not an AI turn);
    then asks for a person again and the agent closes with a code (1.2, the desk-rating patch); from 1.4 (the
    close-rating patch) the close asks again and the user answers 4 in the closed conversation."""
    agent = await live_agent(http, f"rater-{cid}", ["general"])
    await say(http, cid, "I want a human")
    await claimed(http, cid, agent)
    await http.post(f"/v1/desk/conversations/{cid}/messages", headers=agent, json={"message_id": "a1", "text": "Hi"})
    r = await http.post(f"/v1/desk/conversations/{cid}/release", headers=agent, json={"wrap_up": "resolved"})
    assert r.status_code == 200, r.text
    await until(lambda: _asked(http, cid))  # the AI speaks up, then the question is asked
    await say(http, cid, "5")
    await until(lambda: _audited(http, cid, "rated"))
    await say(http, cid, "a human again please")
    await claimed(http, cid, agent)
    r = await http.post(f"/v1/desk/conversations/{cid}/close", headers=agent, json={"wrap_up": "escalated"})
    assert r.status_code == 200, r.text
    await until(lambda: _asked(http, cid))
    await say(http, cid, "4")
    handle = client.get_workflow_handle(workflow_id(cid))
    await handle.result()
    return handle


async def close_rating_then_next(client, settings, cid, http, **_):
    """PATCH_CLOSE_RATING (1.4): a live agent closes and the user is asked to rate; they write something else,
    which starts the next conversation under the same id (the closed run continues as new into it); the AI answers
    there, and it is closed. Both runs are recorded."""
    agent = await live_agent(http, f"closer-{cid}", ["general"])
    await say(http, cid, "I want a human")
    await claimed(http, cid, agent)
    await http.post(f"/v1/desk/conversations/{cid}/messages", headers=agent, json={"message_id": "a1", "text": "Hi"})
    r = await http.post(f"/v1/desk/conversations/{cid}/close", headers=agent, json={"wrap_up": "resolved"})
    assert r.status_code == 200, r.text
    await until(lambda: _asked(http, cid))
    h = client.get_workflow_handle(workflow_id(cid))
    first_run = (await h.describe()).run_id
    await say(http, cid, "one more question")

    async def answered():
        entries = (await http.get(f"/v1/conversations/{cid}/transcript")).json()["entries"]
        return entries[0]["text"] == "one more question" and any(e["role"] == "ai" for e in entries)

    await until(answered)
    await h.execute_update(Updates.SUBMIT_CLOSE, CloseRequest(reason="resolved"), result_type=CommandResult)
    await h.result()
    second = client.get_workflow_handle(h.id, run_id=(await h.describe()).run_id)
    return client.get_workflow_handle(h.id, run_id=first_run), second


close_rating_then_next.suffixes = ("", "_next_run")  # type: ignore[attr-defined]


async def _asked(http, cid: str) -> bool:
    entries = (await http.get(f"/v1/conversations/{cid}/transcript")).json()["entries"]
    return bool(entries) and entries[-1]["text"].startswith("How did")


async def _audited(http, cid: str, kind: str) -> bool:
    entries = (await http.get(f"/v1/conversations/{cid}/audit")).json()["entries"]
    return any(e["kind"] == kind for e in entries)


wrap_up_and_rating.suffixes = ("",)


async def ladder_then_cancel(client, settings, cid, http, **_):
    """An explicit target with a 1 s SLA falls back to the next rung; the user says "never mind"."""
    await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": "u1", "text": "hello"})
    await http.post(f"/v1/conversations/{cid}/handoff", json={"reason": "billing", "target": {"queue": "tier1"},
                                                             "fallback": [{"queue": "general"}], "sla_seconds": 1})
    while (await http.get(f"/v1/conversations/{cid}")).json()["queue"] != "general":
        await asyncio.sleep(0.1)
    await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": "u2", "text": "Never mind"})
    while (await http.get(f"/v1/conversations/{cid}")).json()["state"] != "ai":
        await asyncio.sleep(0.05)
    return await closed(client, http, cid)


async def desk_accepts_and_completes(client, settings, cid, http, desk, **_):
    """A third-party desk gets the signed envelope, accepts, chats (the user's message is forwarded), completes."""
    import json

    from activities import webhooks

    async def event(body):
        raw = json.dumps({"conversation_id": cid, **body}).encode()
        r = await http.post("/v1/desks/acme/events", content=raw,
                            headers=webhooks.headers(desk.secret, uuid.uuid4().hex, raw))
        assert r.status_code == 200, r.text

    await http.put(f"/v1/conversations/{cid}/context", json={"profile": {"name": "Ada", "phone": "020 7946 0958"}})
    await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": "u1", "text": "hello"})
    await http.post(f"/v1/conversations/{cid}/handoff", json={"reason": "outsource"})
    while not any(q.path.endswith("/handoffs") and q.json["conversation_id"] == cid for q in desk.requests):
        await asyncio.sleep(0.05)
    handoff_id = next(q.json["handoff_id"] for q in desk.requests
                      if q.path.endswith("/handoffs") and q.json["conversation_id"] == cid)
    await event({"type": "accepted", "handoff_id": handoff_id, "agent": "Sam"})
    await event({"type": "message", "handoff_id": handoff_id, "message_id": "d1", "text": "Sam here"})
    await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": "u2", "text": "my parcel is late"})
    while not any(q.path.endswith("/messages") and q.json["conversation_id"] == cid for q in desk.requests):
        await asyncio.sleep(0.05)
    await event({"type": "completed", "handoff_id": handoff_id})
    await asyncio.sleep(0.5)
    return await closed(client, http, cid)


async def bounds_and_run_length(client, settings, cid, **_):
    """A context signal past the context's bound is refused and audited; a long chat continues as new at RUN_EVENTS
    (the recorded run ends with ContinuedAsNew)."""
    from models.conversation import MAX_CONTEXT_BYTES
    from workflows.options import RUN_EVENTS

    h = await start_conversation(client, settings, cid, text="Hello")
    await h.signal(Signals.SET_CONTEXT, ContextUpdate(profile={"name": "Ada"}))
    await h.signal(Signals.SET_CONTEXT, ContextUpdate(profile={"notes": "x" * (MAX_CONTEXT_BYTES + 1)}))  # refused
    first = client.get_workflow_handle(h.id, run_id=h.first_execution_run_id)
    i = 0
    while (await first.describe()).status.name == "RUNNING" and i < RUN_EVENTS:
        i += 1
        await h.execute_update(
            Updates.SUBMIT_USER_MESSAGE, UserMessage(message_id=f"m{i}", text=f"question {i} about my order"),
            result_type=CommandResult,
        )
    assert (await first.describe()).status.name == "CONTINUED_AS_NEW", "the run did not continue as new"
    return first


async def a2a_agent_answers_and_hands_back(client, settings, cid, http, registry, **_):
    """An A2A agent (the a2a-sdk's own server classes, tests/test_a2a.py) takes a handoff: it asks (input-required,
    its answer comes in the response), the user answers in the same task, it completes and hands back; then a
    second handoff it rejects walks the ladder to a queue, where the chat is closed."""
    from tests.test_a2a import TOKEN, version_agent

    async with version_agent() as (base, _):
        r = await http.post("/v1/admin/agents/external", headers={"Authorization": f"Bearer {settings.admin_key}"},
                            json={"agent_id": "versions", "protocol": "a2a", "domain": base, "credential": TOKEN})
        assert r.status_code == 201, r.text
        await say(http, cid, "hello")
        await handed_to(http, cid, "versions", "versions")
        await say(http, cid, "2.5")
        while (await state(http, cid))["state"] != "ai":
            await asyncio.sleep(0.05)
        r = await http.post(f"/v1/conversations/{cid}/handoff",
                            json={"reason": "please reject", "target": {"external_agent": "versions"},
                                  "fallback": [{"queue": "general"}]})
        assert r.status_code == 200, r.text
        while (await state(http, cid))["queue"] != "general":
            await asyncio.sleep(0.05)
    return await closed(client, http, cid)


async def a2a_to_another_baton(client, settings, cid, http, registry, **_):
    """Baton hands a conversation over A2A to a local agent of a Baton (itself, on loopback): the sending side is an
    external agent with `protocol: a2a`, the receiving side a conversation an A2A client handed to `tech-support`
    (no callback: the answers go back in the responses). The user answers, the agent hands back."""
    from activities.webhooks import a2a_token

    token = a2a_token(registry.verifying_secrets("tech-support")[0])
    r = await http.post("/v1/admin/agents/external", headers={"Authorization": f"Bearer {settings.admin_key}"},
                        json={"agent_id": "support-a2a", "protocol": "a2a", "credential": token,
                              "domain": f"{settings.public_url}/a2a/tech-support"})
    assert r.status_code == 201, r.text
    await http.put(f"/v1/conversations/{cid}/context", json={"profile": {"name": "Ada"}})
    await say(http, cid, "hello")
    task_id = (await handed_to(http, cid, "support-a2a", "the app crashes"))["external"]["remote_conversation_id"]
    await say(http, cid, "version 2.5")
    await say(http, cid, "it works now, thanks")
    while (await state(http, cid))["state"] != "ai":
        await asyncio.sleep(0.05)
    await http.post(f"/v1/conversations/{cid}/close")
    sender, receiver = client.get_workflow_handle(workflow_id(cid)), client.get_workflow_handle(workflow_id(task_id))
    await sender.result()
    await receiver.result()
    return sender, receiver


SCENARIOS = {
    "ai_chat_then_close": ai_chat_then_close,
    "live_handoff_and_hand_back": live_handoff_and_hand_back,
    "fallback_then_give_up": fallback_then_give_up,
    "sla_expiry_walks_the_fallbacks": sla_expiry_walks_the_fallbacks,
    "external_handoff_and_hand_back": external_handoff_and_hand_back,
    "routed_intent_claim_release": routed_intent_claim_release,
    "ladder_then_cancel": ladder_then_cancel,
    "desk_accepts_and_completes": desk_accepts_and_completes,
    "bounds_and_run_length": bounds_and_run_length,
    "transfer_to_a_named_agent": transfer_to_a_named_agent,
    "ladder_with_business_hours": ladder_with_business_hours,
    "continue_as_new_while_waiting": continue_as_new_while_waiting,
    "ai_failure_is_routed": ai_failure_is_routed,
    "a2a_agent_answers_and_hands_back": a2a_agent_answers_and_hands_back,
    "a2a_to_another_baton": a2a_to_another_baton,
    "wrap_up_and_rating": wrap_up_and_rating,
    "idle_continue_as_new": idle_continue_as_new,
    "close_rating_then_next": close_rating_then_next,
}


async def main(prefix: str, names: list[str]) -> None:
    env = await start_dev_server()
    os.environ["BATON_ALLOW_PRIVATE_NETWORKS"] = "1"  # the loopback handoff
    port = free_port()
    try:
        with tempfile.TemporaryDirectory() as home:
            async with Receiver() as channel, Receiver(path="/desk") as desk:
                os.environ["ACME_DESK_SECRET"] = desk.secret
                config_path = Path(home) / "baton.yaml"
                today = datetime.now(timezone.utc).date()
                closed = [str(today + timedelta(days=d)) for d in (-1, 0, 1)]
                config_path.write_text(
                    RECORDING_CONFIG.replace("DESK_URL", desk.url).replace("CLOSED_DATES", json.dumps(closed)))
                config = load_config(config_path)
                settings = settings_for(
                    "record", channel_url=channel.url, channel_secret=channel.secret, home=Path(home),
                    public_url=f"http://127.0.0.1:{port}", demo_tech_agent="tech-support",
                )
                registry = SqliteRegistry(settings.home / "agents.db", settings.secret_key)
                _, secret = registry.create_local("tech-support", "tech-support")
                registry.save_external("tech-support", secret, settings.public_url)
                async with baton_worker(env.client, settings, registry, config=config), baton_api(
                    env.client, settings, registry, port=port, config=config
                ) as http:
                    for name in names or SCENARIOS:
                        cid = f"{prefix}-{name}".replace("_", "-")
                        handles = await SCENARIOS[name](
                            env.client, settings, cid, http=http, desk=desk, config=config, registry=registry)
                        suffixes = getattr(SCENARIOS[name], "suffixes", ("", "_receiving_side"))
                        for suffix, handle in zip(suffixes, handles if isinstance(handles, tuple) else (handles,)):
                            history = await handle.fetch_history()
                            (HERE / f"{prefix}_{name}{suffix}.json").write_text(history.to_json())
                            print(f"wrote {prefix}_{name}{suffix}.json ({len(history.events)} events)")
                registry.close()
    finally:
        await env.shutdown()


if __name__ == "__main__":
    from tests import histories_stamp

    if len(sys.argv) < 2:
        sys.exit("usage: python -m tests.record_histories PREFIX [SCENARIO ...]   (PREFIX: 1.0, 1.1, ... one per change)\n"
                 "       python -m tests.record_histories --stamp   (a workflow change that cannot alter any history)")
    if sys.argv[1] == "--stamp":
        histories_stamp.write(histories_stamp.read()["corpus"])
    else:
        asyncio.run(main(sys.argv[1], sys.argv[2:]))
        histories_stamp.write(sys.argv[1])
    print(f"stamped {histories_stamp.STAMP.relative_to(histories_stamp.ROOT)}: {histories_stamp.read()}")
