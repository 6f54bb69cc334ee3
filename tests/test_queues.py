"""Queues that know (activities/queues.py), over real loopback HTTP against the dev server and a real worker:
presence and its grace, push offers (to the idle matching agent; lapsing to the next, whose holder goes away; a
decline), capacity under a burst of concurrent handoffs, skills and priority, sticky assignment, nobody present (the
next rung at once), the exact waiting list after a burst with cancels and closes, wrap-up codes and the rating."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from activities.stream import StreamStore, open_stream
from models.config import load_config
from models import notices
from tests.harness import baton_api, baton_worker, eventually, settings_for

ADMIN = {"Authorization": "Bearer ba_test_admin"}

CONFIG = """
version: 1
wrap_up_codes: [resolved, escalated]
rating: {enabled: true, question: "How did {agent} do? Reply 1 to 5."}
presence_grace_seconds: 5
waiting: {position_update_seconds: 0}
queues:
  general: {}
  skilled: {skills: [de]}
  push: {assignment: push, offer_seconds: 4}
  sticky: {assignment: sticky, offer_seconds: 30, sticky_minutes: 10}
  sales: {assignment: push, sla_seconds: 600}
routes:
  - name: vip
    when: {params: {tier: [vip]}}
    to: {queue: general}
    priority: 10
  - name: sales
    when: {params: {topic: [sales]}}
    to: {queue: sales}
    fallback: [{queue: general}]
  - name: sales-only
    when: {params: {topic: [sales-only]}}
    to: {queue: sales}
  - name: default
    to: {queue: general}
"""


@pytest.fixture
def config(tmp_path: Path):
    path = tmp_path / "baton.yaml"
    path.write_text(CONFIG)
    return load_config(path)


@pytest.fixture(params=["sqlite", "postgresql"])
async def baton(request, dev_env, task_queue, channel, registry, config):
    """The worker and the API with the queues' store (the event stream's) in `.baton/stream.db`, or in a
    PostgreSQL database (BATON_DATABASE_URL), as an install on several hosts keeps it."""
    database = request.getfixturevalue("postgres").new_database() if request.param == "postgresql" else None
    settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret, database_url=database)
    async with baton_worker(dev_env.client, settings, registry, config=config), baton_api(
        dev_env.client, settings, registry, config=config
    ) as http:
        yield http, settings


@pytest.fixture
def http(baton):
    return baton[0]


def as_agent(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def live_agent(http, agent_id: str, queues=("push",), status: str | None = "online", **more) -> str:
    r = await http.post("/v1/admin/live-agents", json={"agent_id": agent_id, "name": agent_id.title(),
                                                       "queues": list(queues), **more}, headers=ADMIN)
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    if status:
        await presence(http, token, status)
    return token


async def presence(http, token: str, status: str) -> dict:
    r = await http.put("/v1/desk/presence", json={"status": status}, headers=as_agent(token))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == status
    return r.json()


async def heartbeats(http, tokens) -> None:
    """What the console does: repeat each agent's status (the config's grace here is 5 s)."""
    async def repeat(token):
        r = await http.put("/v1/desk/presence", json={"status": "online", "heartbeat": True}, headers=as_agent(token))
        assert r.status_code == 200, r.text
    while True:
        await asyncio.gather(*(repeat(t) for t in tokens))
        await asyncio.sleep(1)


async def started(http) -> str:
    conversation = f"q-{uuid.uuid4().hex[:12]}"
    r = await http.post(f"/v1/conversations/{conversation}/messages", json={"message_id": "u1", "text": "hello"})
    assert r.status_code == 202, r.text
    return conversation


async def hand_off(http, conversation: str, queue: str | None = None, **params) -> None:
    body = {"reason": "needs a person", "params": params}
    if queue:
        body["target"] = {"queue": queue}
    r = await http.post(f"/v1/conversations/{conversation}/handoff", json=body)
    assert r.status_code == 200, r.text


async def snap(http, conversation) -> dict:
    r = await http.get(f"/v1/conversations/{conversation}")
    assert r.status_code == 200, r.text
    return r.json()


async def offers(http, token) -> list[dict]:
    r = await http.get("/v1/desk/offers", headers=as_agent(token))
    assert r.status_code == 200, r.text
    return r.json()["offers"]


async def offered(http, token, conversation=None, timeout=15) -> dict:
    async def one():
        found = [o for o in await offers(http, token) if conversation in (None, o["conversation_id"])]
        return found[0] if found else None
    return await eventually(one, timeout=timeout)


async def waiting(http, queue, token) -> list[dict]:
    r = await http.get(f"/v1/desk/queues/{queue}/waiting", headers=as_agent(token), params={"limit": 500})
    assert r.status_code == 200, r.text
    return r.json()["waiting"]


async def audit(http, conversation) -> list[dict]:
    r = await http.get(f"/v1/conversations/{conversation}/audit")
    assert r.status_code == 200, r.text
    return r.json()["entries"]


async def test_presence_is_set_and_repeated_and_lapses_after_the_grace(http):
    token = await live_agent(http, "ann", status=None)
    r = await http.get("/v1/desk/presence", headers=as_agent(token))
    assert r.status_code == 200 and r.json()["status"] == "offline" and r.json()["capacity"] == 3
    first = await presence(http, token, "online")
    assert first["load"] == 0
    # A heartbeat keeps the status the agent has (it never undoes an away set meanwhile).
    await presence(http, token, "away")
    r = await http.put("/v1/desk/presence", json={"status": "online", "heartbeat": True}, headers=as_agent(token))
    assert r.status_code == 200 and r.json()["status"] == "away"
    bad = await http.put("/v1/desk/presence", json={"status": "busy"}, headers=as_agent(token))
    assert bad.status_code == 422 and "status" in bad.text
    assert (await http.put("/v1/desk/presence", json={"status": "online"})).status_code == 401
    # No heartbeat for the grace (5 s): offline, without anyone asking.
    await eventually(lambda: _status(http, token, "offline"), timeout=12)


async def _status(http, token, status):
    r = await http.get("/v1/desk/presence", headers=as_agent(token))
    return r.json()["status"] == status


async def test_push_offers_the_idle_agent_lapses_to_the_next_and_accepting_is_the_claim(http, channel):
    ann = await live_agent(http, "ann")
    await asyncio.sleep(0.05)
    bob = await live_agent(http, "bob")
    away = await live_agent(http, "cat", status="away")
    beating = asyncio.create_task(heartbeats(http, [ann, bob, away]))
    try:
        await push_walk(http, ann, bob, away)
    finally:
        beating.cancel()


async def push_walk(http, ann, bob, away) -> None:
    conversation = await started(http)
    await hand_off(http, conversation, "push")
    # Ann has been idle longest: the offer is hers; nobody else has one.
    offer = await offered(http, ann, conversation)
    assert offer["queue"] == "push" and offer["reason"] == "needs a person"
    assert await offers(http, bob) == [] and await offers(http, away) == []
    # She lets it lapse (4 s): it goes to Bob, and Ann is set away (not at her desk).
    second = await offered(http, bob, conversation)
    assert second["offer_id"] != offer["offer_id"]
    # While it is offered to Bob, nobody else can claim it (Bob's offer stands 4 s: two requests, then his accept).
    claim = await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(away))
    assert claim.status_code == 409 and "offered to bob" in claim.json()["detail"]
    ok = await http.post(f"/v1/desk/offers/{second['offer_id']}/accept", headers=as_agent(bob))
    assert ok.status_code == 200, ok.text
    s = await snap(http, conversation)
    assert s["state"] == "live_agent" and s["owner"] == "bob"
    assert (await http.get("/v1/desk/presence", headers=as_agent(ann))).json()["status"] == "away"
    late = await http.post(f"/v1/desk/offers/{offer['offer_id']}/accept", headers=as_agent(ann))
    assert late.status_code == 409 and "lapsed" in late.json()["detail"]
    # Someone else's offer is not found; a malformed id is a 422; an accepted offer cannot be accepted again.
    assert (await http.post(f"/v1/desk/offers/{second['offer_id']}/accept", headers=as_agent(ann))).status_code == 404
    assert (await http.post("/v1/desk/offers/nope/accept", headers=as_agent(bob))).status_code == 422
    assert await offers(http, bob) == []
    again = await http.post(f"/v1/desk/offers/{second['offer_id']}/accept", headers=as_agent(bob))
    assert again.status_code == 409
    me = (await http.get("/v1/desk/presence", headers=as_agent(bob))).json()
    assert me["load"] == 1 and me["status"] == "online"


async def test_a_decline_sends_the_offer_on_at_once_and_going_offline_withdraws_it(http):
    ann = await live_agent(http, "ann", queues=("sticky",))
    await asyncio.sleep(0.05)
    bob = await live_agent(http, "bob", queues=("sticky",))
    beating = asyncio.create_task(heartbeats(http, [ann, bob]))
    try:
        await decline_walk(http, ann, bob)
    finally:
        beating.cancel()


async def decline_walk(http, ann, bob) -> None:
    conversation = await started(http)
    await hand_off(http, conversation, "sticky")
    offer = await offered(http, ann, conversation)
    r = await http.post(f"/v1/desk/offers/{offer['offer_id']}/decline", headers=as_agent(ann))
    assert r.status_code == 204
    to_bob = await offered(http, bob, conversation, timeout=5)  # at once, not after the 30 s offer
    # Bob goes offline mid-offer: withdrawn, and back to Ann (who declined, but is the only one left).
    await presence(http, bob, "offline")
    assert await offers(http, bob) == []
    back = await offered(http, ann, conversation, timeout=5)
    assert back["offer_id"] not in (offer["offer_id"], to_bob["offer_id"])
    assert (await http.get("/v1/desk/presence", headers=as_agent(ann))).json()["status"] == "online"


async def test_capacity_is_never_exceeded_under_fifty_concurrent_handoffs(http):
    agents = {name: await live_agent(http, name, queues=("sales",), capacity=2) for name in ("ann", "bob", "cat")}
    beating = asyncio.create_task(heartbeats(http, agents.values()))
    conversations = await asyncio.gather(*(started(http) for _ in range(50)))
    await asyncio.gather(*(hand_off(http, c, "sales") for c in conversations))
    served: dict[str, list[str]] = {name: [] for name in agents}
    most = 0

    async def work(name: str, token: str) -> None:
        nonlocal most
        while sum(len(v) for v in served.values()) < len(conversations):
            for offer in await offers(http, token):
                r = await http.post(f"/v1/desk/offers/{offer['offer_id']}/accept", headers=as_agent(token))
                if r.status_code == 200:
                    served[name].append(offer["conversation_id"])
            mine = await presence(http, token, "online")  # the console's heartbeat
            most = max(most, mine["load"])
            assert mine["load"] <= 2, mine
            owned = [c for c in served[name] if (await snap(http, c))["state"] == "live_agent"]
            assert len(owned) <= 2
            for c in owned:
                r = await http.post(f"/v1/desk/conversations/{c}/close", headers=as_agent(token),
                                    json={"wrap_up": "resolved"})
                assert r.status_code == 200, r.text
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(asyncio.gather(*(work(n, t) for n, t in agents.items())), timeout=240)
    finally:
        beating.cancel()
    every = [c for v in served.values() for c in v]
    assert sorted(every) == sorted(conversations)  # each served once
    assert most == 2 and all(served.values())
    report = (await http.get("/v1/admin/desk/report", headers=ADMIN)).json()
    assert report["wrap_ups"] == {"resolved": 50}


async def test_skills_exclude_and_priority_waits_ahead(http):
    plain = await live_agent(http, "ann", queues=("general", "skilled"), status=None)
    german = await live_agent(http, "bob", queues=("general", "skilled"), skills=["de"], status=None)
    needs_de = await started(http)
    await hand_off(http, needs_de, "skilled")
    await eventually(lambda: _listed(http, "skilled", plain, needs_de))
    refused = await http.post(f"/v1/desk/conversations/{needs_de}/claim", headers=as_agent(plain))
    assert refused.status_code == 403 and "de" in refused.json()["detail"]
    assert (await http.post(f"/v1/desk/conversations/{needs_de}/claim", headers=as_agent(german))).status_code == 200
    # A handoff's params may ask for a skill too.
    asks = await started(http)
    await hand_off(http, asks, "general", skills="de")
    await eventually(lambda: _listed(http, "general", plain, asks))
    assert (await http.post(f"/v1/desk/conversations/{asks}/claim", headers=as_agent(plain))).status_code == 403

    # Priority: the route's (vip: 10) and the params' own put a later conversation ahead.
    first, second, third = [await started(http) for _ in range(3)]
    await hand_off(http, first)
    await eventually(lambda: _listed(http, "general", plain, first))
    await hand_off(http, second, tier="vip")
    await eventually(lambda: _listed(http, "general", plain, second))
    await hand_off(http, third, priority=50)
    await eventually(lambda: _listed(http, "general", plain, third))
    order = [w["conversation_id"] for w in await waiting(http, "general", plain)]
    assert order.index(third) < order.index(second) < order.index(first)
    rows = {w["conversation_id"]: w for w in await waiting(http, "general", plain)}
    assert rows[second]["priority"] == 10 and rows[third]["priority"] == 50 and rows[first]["priority"] == 0
    assert [rows[c]["position"] for c in (third, second)] == [order.index(third) + 1, order.index(second) + 1]
    assert (await snap(http, first))["pending_handoff"]["position"] >= 1
    # Params that ask for more than a queue gives are refused and say why; the conversation stays as it was.
    other = await started(http)
    before = (await snap(http, other))["state"]
    for params, why in (({"priority": 500}, "params.priority"), ({"priority": True}, "params.priority"),
                        ({"priority": 2.5}, "params.priority"), ({"skills": 7}, "params.skills"),
                        ({"skills": ",".join(f"s{i}" for i in range(21))}, "at most 20 skills"),
                        ({"skills": "x" * 129}, "at most 128 characters")):
        r = await http.post(f"/v1/conversations/{other}/handoff", json={"reason": "r", "params": params})
        assert r.status_code == 422 and why in r.json()["detail"], (params, r.text)
    assert (await snap(http, other))["state"] == before


async def _listed(http, queue, token, conversation):
    return any(w["conversation_id"] == conversation for w in await waiting(http, queue, token))


async def test_sticky_prefers_the_last_helper_while_present(http):
    bob = await live_agent(http, "bob", queues=("sticky",))
    await asyncio.sleep(0.05)
    ann = await live_agent(http, "ann", queues=("sticky",))
    beating = asyncio.create_task(heartbeats(http, [bob, ann]))
    try:
        await sticky_walk(http, bob, ann)
    finally:
        beating.cancel()


async def sticky_walk(http, bob, ann) -> None:
    conversation = await started(http)
    await hand_off(http, conversation, "sticky")
    offer = await offered(http, bob, conversation)  # longest idle
    assert (await http.post(f"/v1/desk/offers/{offer['offer_id']}/accept", headers=as_agent(bob))).status_code == 200
    r = await http.post(f"/v1/desk/conversations/{conversation}/release", headers=as_agent(bob))
    assert r.status_code == 200
    await eventually(lambda: _state(http, conversation, "ai"))
    # Ann is idle longer now, but Bob helped this conversation: the next handoff is offered to him.
    await hand_off(http, conversation, "sticky")
    again = await offered(http, bob, conversation)
    assert await offers(http, ann) == []
    assert (await http.post(f"/v1/desk/offers/{again['offer_id']}/accept", headers=as_agent(bob))).status_code == 200
    await http.post(f"/v1/desk/conversations/{conversation}/release", headers=as_agent(bob))
    await eventually(lambda: _state(http, conversation, "ai"))
    # Bob declines this time: it goes to Ann at once, not back to Bob.
    await hand_off(http, conversation, "sticky")
    declined = await offered(http, bob, conversation)
    assert (await http.post(f"/v1/desk/offers/{declined['offer_id']}/decline", headers=as_agent(bob))).status_code == 204
    taken = await offered(http, ann, conversation, timeout=5)
    assert await offers(http, bob) == []
    assert (await http.post(f"/v1/desk/offers/{taken['offer_id']}/accept", headers=as_agent(ann))).status_code == 200
    await http.post(f"/v1/desk/conversations/{conversation}/release", headers=as_agent(ann))
    await eventually(lambda: _state(http, conversation, "ai"))
    # Ann helped last now; she is away: not her (sticky only while present), Bob.
    await presence(http, ann, "away")
    await hand_off(http, conversation, "sticky")
    await offered(http, bob, conversation)
    assert await offers(http, ann) == []


async def _state(http, conversation, state):
    return (await snap(http, conversation))["state"] == state


async def test_nobody_present_runs_the_next_rung_at_once_and_the_user_is_told(http, channel):
    await live_agent(http, "ann", queues=("general",), status=None)
    conversation = await started(http)
    await hand_off(http, conversation, topic="sales")
    await eventually(lambda: _pending_in(http, conversation, "general"))
    routed = [e["detail"] for e in await audit(http, conversation) if "skipped" in e["detail"]]
    skipped = routed[-1]["skipped"]
    assert any(k["target"] == "queue:sales" and "nobody" in k["why"] for k in skipped), skipped
    # Nothing left after the push queue: back to the AI, and the user is told why.
    alone = await started(http)
    await hand_off(http, alone, topic="sales-only")
    await eventually(lambda: _state(http, alone, "ai"))

    async def told():
        return any(m["text"] == notices.NOBODY_PRESENT for m in channel.delivered() if m["conversation_id"] == alone)
    await eventually(told)
    # Someone present: it waits there.
    bob = await live_agent(http, "bob", queues=("sales",))
    present = await started(http)
    await hand_off(http, present, topic="sales")
    await eventually(lambda: _pending_in(http, present, "sales"))
    # The last agent who could take it goes offline while it waits: its next rung at once, not after the queue's
    # 600 s SLA, and the audit says why.
    await presence(http, bob, "offline")
    await eventually(lambda: _pending_in(http, present, "general"), timeout=10)
    failed = [e["detail"] for e in await audit(http, present) if e["kind"] == "handoff_failed"]
    assert len(failed) == 1 and failed[0]["target"] == "queue:sales", failed
    assert "nobody who could take it is present in queue 'sales'" in failed[0]["reason"]
    # With no rung after it: back to the AI, and the user is told nobody is available.
    await presence(http, bob, "online")
    last = await started(http)
    await hand_off(http, last, topic="sales-only")
    await eventually(lambda: _pending_in(http, last, "sales"))
    # Away (a coffee, or an offer let lapse) is still present: it waits ...
    await presence(http, bob, "away")
    await asyncio.sleep(1.5)
    assert await _pending_in(http, last, "sales")
    # ... offline is not.
    await presence(http, bob, "offline")
    await eventually(lambda: _state(http, last, "ai"), timeout=10)

    async def given_up():
        return any(m["text"] == notices.GIVE_UP for m in channel.delivered() if m["conversation_id"] == last)
    await eventually(given_up)
    # The general queue (pull, waits) keeps what moved there: nobody is passed on from it.
    await asyncio.sleep(1.5)
    assert await _pending_in(http, present, "general")


async def _pending_in(http, conversation, queue):
    s = await snap(http, conversation)
    return s["state"] == "handoff_pending" and s["queue"] == queue and s


async def test_the_waiting_list_is_exactly_who_waits_after_a_burst_with_cancels_and_closes(baton):
    http, settings = baton
    token = await live_agent(http, "ann", queues=("general",), status=None)
    conversations = await asyncio.gather(*(started(http) for _ in range(30)))
    await asyncio.gather(*(hand_off(http, c, "general") for c in conversations))
    cancel, close, stay = conversations[:8], conversations[8:16], conversations[16:]
    await asyncio.gather(*(http.delete(f"/v1/conversations/{c}/handoff") for c in cancel),
                         *(http.post(f"/v1/conversations/{c}/close", json={}) for c in close))

    async def exact():
        listed = await waiting(http, "general", token)
        pending = [c for c in conversations if (await snap(http, c))["state"] == "handoff_pending"]
        return sorted(w["conversation_id"] for w in listed) == sorted(pending) == sorted(stay) and listed
    listed = await eventually(exact, timeout=30)
    assert [w["position"] for w in listed] == list(range(1, len(stay) + 1))
    since = [w["waiting_since"] for w in listed]
    assert since == sorted(since)
    # The store outlives a process: another one (a restarted API, a replica) reads the same list, in the same order.
    other = open_stream(settings.database_url, settings.home)
    try:
        assert [r.conversation_id for r in other.waiting("general")] == [w["conversation_id"] for w in listed]
    finally:
        other.close()


async def test_wrap_up_codes_and_the_rating_are_recorded(http, channel):
    token = await live_agent(http, "ann", queues=("general",), status=None)
    conversation = await started(http)
    await hand_off(http, conversation, "general")
    await eventually(lambda: _pending_in(http, conversation, "general"))
    assert (await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(token))).status_code == 200
    bad = await http.post(f"/v1/desk/conversations/{conversation}/release", headers=as_agent(token),
                          json={"wrap_up": "nonsense"})
    assert bad.status_code == 422 and "resolved, escalated" in bad.json()["detail"]
    assert (await snap(http, conversation))["state"] == "live_agent"  # changed nothing
    r = await http.post(f"/v1/desk/conversations/{conversation}/release", headers=as_agent(token),
                        json={"wrap_up": "resolved", "reason": "done"})
    assert r.status_code == 200, r.text

    await eventually(lambda: _true("How did Ann do? Reply 1 to 5." in said(channel, conversation)))
    r = await http.post(f"/v1/conversations/{conversation}/messages", json={"message_id": "rate", "text": "4"})
    assert r.status_code == 202
    await eventually(lambda: _true(notices.RATED in said(channel, conversation)))
    kinds = {e["kind"]: e["detail"] for e in await audit(http, conversation)}
    assert kinds["handed_back"]["wrap_up"] == "resolved"
    assert kinds["rated"]["agent"] == "ann" and kinds["rated"]["score"] == 4

    async def counted():
        report = (await http.get("/v1/admin/desk/report", headers=ADMIN)).json()
        return report["agents"].get("ann", {}).get("ratings") == 1 and report
    report = await eventually(counted)
    assert report["agents"]["ann"]["mean_rating"] == 4 and report["wrap_ups"] == {"resolved": 1}
    # The AI spoke up before the question (the question is the last thing the user read); the next "5" is the AI's
    # again: a rating is asked once.
    texts = [(e["role"], e["text"]) for e in await transcript(http, conversation)]
    question = texts.index(("system", "How did Ann do? Reply 1 to 5."))
    assert texts[question - 1][0] == "ai" and texts[question + 1] == ("user", "4")
    ai_before = sum(1 for role, _ in texts if role == "ai")
    r = await http.post(f"/v1/conversations/{conversation}/messages", json={"message_id": "after", "text": "5"})
    assert r.status_code == 202

    async def answered():
        entries = await transcript(http, conversation)
        return sum(1 for e in entries if e["role"] == "ai") > ai_before
    await eventually(answered)
    assert sum(1 for e in await audit(http, conversation) if e["kind"] == "rated") == 1


async def test_the_team_lists_who_else_works_the_queues_with_status_and_load(http):
    ann = await live_agent(http, "ann", queues=("general", "push"))
    bob = await live_agent(http, "bob", queues=("general",), capacity=5)
    await live_agent(http, "cal", queues=("skilled",))  # no queue in common with ann
    await live_agent(http, "dee", queues=("push",), status=None)  # never signed in
    conversation = await started(http)
    await hand_off(http, conversation, "general")
    await eventually(lambda: _pending_in(http, conversation, "general"))
    assert (await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(bob))).status_code == 200
    await presence(http, bob, "away")

    r = await http.get("/v1/desk/team", headers=as_agent(ann))
    assert r.status_code == 200, r.text
    team = [(a["agent_id"], a["name"], a["status"], a["load"], a["capacity"]) for a in r.json()["agents"]]
    assert team == [("bob", "Bob", "away", 1, 5), ("dee", "Dee", "offline", 0, 3)]
    bobs = [(a["agent_id"], a["status"]) for a in (await http.get("/v1/desk/team", headers=as_agent(bob))).json()["agents"]]
    assert bobs == [("ann", "online")]
    assert (await http.get("/v1/desk/team")).status_code == 401
    assert (await http.get("/v1/desk/team", headers=as_agent("not-a-token"))).status_code == 401


async def _closed_by(http, token: str, conversation: str) -> None:
    await hand_off(http, conversation, "general")
    await eventually(lambda: _pending_in(http, conversation, "general"))
    assert (await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(token))).status_code == 200
    r = await http.post(f"/v1/desk/conversations/{conversation}/close", headers=as_agent(token),
                        json={"wrap_up": "resolved"})
    assert r.status_code == 200, r.text


async def test_a_close_asks_for_a_rating_and_the_closed_conversation_takes_the_answer(http, channel):
    token = await live_agent(http, "ann", queues=("general",), status=None)
    conversation = await started(http)
    await _closed_by(http, token, conversation)

    # The closing notice, then the question: the last thing the user reads.
    question = "How did Ann do? Reply 1 to 5."
    await eventually(lambda: _true(said(channel, conversation)[-2:] == [notices.CLOSED, question]))
    s = await snap(http, conversation)
    assert s["state"] == "closed" and s["rating_open"] is True
    before = len(await transcript(http, conversation))
    r = await http.post(f"/v1/desk/conversations/{conversation}/close", headers=as_agent(token))
    assert r.status_code == 409  # closed already: the question's wait changes nothing for the desk
    r = await http.post(f"/v1/conversations/{conversation}/messages", json={"message_id": "rate", "text": "4 stars"})
    assert r.status_code == 202
    await eventually(lambda: _true(notices.RATED in said(channel, conversation)))
    kinds = {e["kind"]: e["detail"] for e in await audit(http, conversation)}
    assert kinds["wrapped_up"]["code"] == "resolved"
    assert kinds["rated"]["agent"] == "ann" and kinds["rated"]["score"] == 4 and kinds["rated"]["number"] == 1
    texts = [(e["role"], e["text"]) for e in await transcript(http, conversation)]
    assert texts[before:] == [("user", "4 stars"), ("system", notices.RATED)]

    async def counted():
        report = (await http.get("/v1/admin/desk/report", headers=ADMIN)).json()
        return report["agents"].get("ann", {}).get("ratings") == 1 and report
    report = await eventually(counted)
    assert report["agents"]["ann"]["mean_rating"] == 4 and report["wrap_ups"] == {"resolved": 1}
    assert (await snap(http, conversation))["rating_open"] is False
    # Answered: the run ends, and a message now starts a new conversation under the same id, as after any close.
    r = await http.post(f"/v1/conversations/{conversation}/messages", json={"message_id": "again", "text": "5"})
    assert r.status_code == 202

    async def new_conversation():
        entries = await transcript(http, conversation)
        return entries[0]["message_id"] == "again" and any(e["role"] == "ai" for e in entries) and entries
    await eventually(new_conversation)
    assert (await snap(http, conversation))["state"] == "ai"
    assert sum(1 for e in await audit(http, conversation) if e["kind"] == "rated") == 0


async def test_a_message_that_is_no_rating_after_a_close_starts_the_next_conversation(http, channel):
    token = await live_agent(http, "ann", queues=("general",), status=None)
    conversation = await started(http)
    await _closed_by(http, token, conversation)

    await eventually(lambda: _true("How did Ann do? Reply 1 to 5." in said(channel, conversation)))
    closed_at = (await snap(http, conversation))["last_activity_at"]
    # Not an answer: the closed conversation is over, and this starts the next one under the same id at once
    # (not after the question's ten minutes), answered by the AI; the question is not answered by it.
    r = await http.post(f"/v1/conversations/{conversation}/messages",
                        json={"message_id": "next", "text": "I want to talk to a human"})
    assert r.status_code == 202
    r = await http.post(f"/v1/conversations/{conversation}/messages", json={"message_id": "next", "text": "again"})
    assert r.status_code == 202  # a retry of the same message id: taken once

    async def next_conversation():
        s = await snap(http, conversation)
        return s["state"] != "closed" and s["created_at"] > closed_at and s
    s = await eventually(next_conversation)
    assert s["rating_open"] is False
    entries = await transcript(http, conversation)
    assert [e["message_id"] for e in entries if e["role"] == "user"] == ["next"]
    assert entries[0]["text"] == "I want to talk to a human"
    report = (await http.get("/v1/admin/desk/report", headers=ADMIN)).json()
    assert report["agents"].get("ann", {}).get("ratings", 0) == 0


async def transcript(http, conversation) -> list[dict]:
    r = await http.get(f"/v1/conversations/{conversation}/transcript")
    assert r.status_code == 200, r.text
    return r.json()["entries"]


def said(channel, conversation: str) -> list[str]:
    """What the channel received for the conversation, in order."""
    return [m["text"] for m in channel.delivered() if m["conversation_id"] == conversation]


async def _true(value):
    return value


async def test_a_push_offer_goes_only_to_an_agent_with_the_skills(http):
    idle = await live_agent(http, "ann")  # idle longest, but without the skill
    await asyncio.sleep(0.05)
    german = await live_agent(http, "bob", skills=["de"])
    conversation = await started(http)
    await hand_off(http, conversation, "push", skills="de")
    await offered(http, german, conversation)
    assert await offers(http, idle) == []
    plain = await started(http)
    await hand_off(http, plain, "push")
    await offered(http, idle, plain)


async def test_a_transfer_to_a_push_queue_nobody_is_online_in_is_refused_and_changes_nothing(http):
    token = await live_agent(http, "ann", queues=("general",), status=None)
    conversation = await started(http)
    await hand_off(http, conversation, "general")
    await eventually(lambda: _pending_in(http, conversation, "general"))
    assert (await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(token))).status_code == 200
    r = await http.post(f"/v1/desk/conversations/{conversation}/transfer", headers=as_agent(token),
                        json={"queue": "push"})
    assert r.status_code == 409 and "nobody" in r.json()["detail"]
    s = await snap(http, conversation)
    assert s["state"] == "live_agent" and s["owner"] == "ann"


# ---- the store's decisions, without Temporal ------------------------------------------------------------------


def _bell(cid: str, number: int, state: str, queue: str | None, since=None, owner=None):
    from datetime import UTC, datetime

    from models.conversation import Bell, State

    return Bell(conversation_id=cid, number=number, seq=number, state=State(state), owner=owner, queue=queue,
                waiting_since=since, reason="r", at=datetime.now(UTC), created=datetime(2026, 1, 1, tzinfo=UTC))


def test_a_claims_place_ends_with_the_wait_it_was_taken_for_whatever_order_bells_land_in(stream_target, config):
    from datetime import UTC, datetime, timedelta

    from activities.queues import Queues, Refused

    store = StreamStore(stream_target)
    book = Queues(store, config)
    t1 = datetime.now(UTC) - timedelta(minutes=1)
    store.ring(_bell("c1", 1, "handoff_pending", "general", t1))
    book.reserve("bob", [], 1, "c1", "general")
    assert book.presence("bob") is None and book._load_of("bob") == 1
    with pytest.raises(Refused) as err:
        book.reserve("ann", [], 3, "c1", "general")
    assert err.value.status == 409 and "bob claimed it first" in str(err.value)
    # Bob's claim took and he transferred it at once: the bell of the transfer (3) lands before the claim's (2),
    # which is then dropped as older. The place Bob held is over all the same, for him and for others.
    store.ring(_bell("c1", 3, "handoff_pending", "tier2", t1 + timedelta(seconds=30)))
    store.ring(_bell("c1", 2, "live_agent", "general", owner="bob"))
    assert book._load_of("bob") == 0
    book.reserve("ann", [], 3, "c1", "tier2")
    # Capacity: Bob (1) holds c2; c3 is refused.
    store.ring(_bell("c2", 1, "handoff_pending", "general", t1))
    store.ring(_bell("c3", 1, "handoff_pending", "general", t1))
    book.reserve("bob", [], 1, "c2", "general")
    with pytest.raises(Refused) as err:
        book.reserve("bob", [], 1, "c3", "general")
    assert err.value.status == 409 and "capacity" in str(err.value)
    store.close()


def test_stranded_are_those_nobody_online_could_take_in_queues_that_go_on(stream_target, config):
    from datetime import UTC, datetime, timedelta

    from activities.queues import Queues

    store = StreamStore(stream_target)
    book = Queues(store, config)
    t1 = datetime.now(UTC) - timedelta(minutes=1)
    # push (goes on when nobody is present), general (pull: waits), skilled (pull, needs de: waits too).
    store.ring(_bell("p1", 1, "handoff_pending", "push", t1))
    store.ring(_bell("p2", 1, "handoff_pending", "push", t1 + timedelta(seconds=1)))
    store.ring(_bell("g1", 1, "handoff_pending", "general", t1))
    book.set_terms("p2", 0, ["fr"])
    assert sorted(c for c, _, _ in book.stranded()) == ["p1", "p2"]
    # Ann works push without French: p1 is hers to take, p2 still has nobody.
    book.set_presence("ann", "Ann", ["push"], ["de"], 3, "online")
    assert [(c, q) for c, q, _ in book.stranded()] == [("p2", "push")]
    book.set_presence("bob", "Bob", ["push"], ["fr"], 3, "online")
    assert book.stranded() == []
    # Away (by choice or after a lapsed offer) is still present; offline is not, nor a heartbeat older than the
    # grace (5 s here).
    book.set_presence("bob", "Bob", ["push"], ["fr"], 3, "away")
    assert book.stranded() == []
    book.set_presence("bob", "Bob", ["push"], ["fr"], 3, "offline")
    assert [c for c, _, _ in book.stranded()] == ["p2"] and book.still_stranded("p2", "push")
    assert not book.still_stranded("p1", "push")
    later = datetime.now(UTC) + timedelta(seconds=6)
    assert sorted(c for c, _, _ in book.stranded(now=later)) == ["p1", "p2"]
    # Claimed: no longer waiting, so not stranded.
    store.ring(_bell("p2", 2, "live_agent", None, owner="bob"))
    assert book.stranded() == []
    store.close()


def test_two_processes_deciding_at_once_never_exceed_a_capacity_nor_offer_one_conversation_twice(
        stream_target, config):
    """Two stores on one database stand for two processes (API replicas, workers): their claims and assignment
    rounds, from several threads at once, take turns (the store's write lock), so an agent gets at most their
    capacity and no conversation is offered twice."""
    import threading
    from collections import Counter
    from datetime import UTC, datetime, timedelta

    from activities.queues import Queues, Refused

    stores = [StreamStore(stream_target), StreamStore(stream_target)]
    books = [Queues(s, config) for s in stores]
    t1 = datetime.now(UTC) - timedelta(minutes=1)
    for i in range(12):
        stores[0].ring(_bell(f"g{i}", 1, "handoff_pending", "general", t1 + timedelta(seconds=i)))
        stores[1].ring(_bell(f"p{i}", 1, "handoff_pending", "push", t1 + timedelta(seconds=i)))
    results: list[str] = []
    start = threading.Barrier(8)

    def claim(book: Queues, cids: list[str]) -> None:
        start.wait()
        for cid in cids:
            try:
                book.reserve("ann", [], 3, cid, "general")
                results.append(cid)
            except Refused as refused:
                assert refused.status == 409, refused

    def online(book: Queues, agent: str) -> None:
        start.wait()
        book.set_presence(agent, agent.title(), ["push"], [], 2, "online")
        for _ in range(5):
            book.assign()

    threads = [threading.Thread(target=claim, args=(books[i % 2], [f"g{j}" for j in range(i, 12, 4)]))
               for i in range(4)]
    threads += [threading.Thread(target=online, args=(books[i % 2], agent))
                for i, agent in enumerate(["bob", "cy", "dee", "eve"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 3 and books[0]._load_of("ann") == 3, results
    offered = [o for agent in ("bob", "cy", "dee", "eve") for o in books[1].offers(agent)]
    assert len(offered) == 8, offered  # four agents, two places each, twelve waiting
    assert max(Counter(o.conversation_id for o in offered).values()) == 1
    assert all(books[0]._load_of(a) == 2 for a in ("bob", "cy", "dee", "eve"))
    for s in stores:
        s.close()


def test_conversations_no_present_agent_can_take_never_hold_back_those_behind_them(stream_target, config, monkeypatch):
    """An assignment round reads a queue a page at a time: twelve conversations ahead that need French (nobody
    online speaks it) fill more than two pages, and the plain one behind them is offered all the same."""
    from datetime import UTC, datetime, timedelta

    from activities import queues
    from activities.queues import Queues

    monkeypatch.setattr(queues, "SCAN", 5)
    store = StreamStore(stream_target)
    book = Queues(store, config)
    t1 = datetime.now(UTC) - timedelta(minutes=5)
    for i in range(12):
        book.set_terms(f"fr{i:02d}", 5 if i % 3 == 0 else 0, ["fr"])
        store.ring(_bell(f"fr{i:02d}", 1, "handoff_pending", "push", t1 + timedelta(seconds=i)))
    store.ring(_bell("plain", 1, "handoff_pending", "push", t1 + timedelta(seconds=30)))
    book.set_presence("ann", "Ann", ["push"], ["de"], 3, "online")
    assert [o.conversation_id for o in book.offers("ann")] == ["plain"]
    # Bob speaks French: the French ones go to him in the waiting list's order, priority first.
    book.set_presence("bob", "Bob", ["push"], ["fr"], 2, "online")
    assert [o.conversation_id for o in book.offers("bob")] == ["fr00", "fr03"]
    store.close()


def test_a_rating_is_a_digit_answering_the_last_thing_said():
    from datetime import UTC, datetime

    from models.conversation import Role, TranscriptEntry
    from workflows.views import only_user_since, rating_in

    assert [rating_in(t) for t in ("4", " 5/5 ", "3 stars", "1.", "2 of 5")] == [4, 5, 3, 1, 2]
    assert [rating_in(t) for t in ("6", "0", "45", "4 please call me", "", "five")] == [None] * 6

    def entry(seq, role):
        return TranscriptEntry(seq=seq, message_id=str(seq), role=role, author="x", text="t", at=datetime.now(UTC))

    said = [entry(1, Role.AI), entry(2, Role.SYSTEM), entry(3, Role.USER)]
    assert only_user_since(said, 2)
    assert not only_user_since([*said, entry(4, Role.AI), entry(5, Role.USER)], 2)
