"""The live-agent desk over real loopback HTTP, against the dev server and a real worker: live agents and their
tokens, the waiting list (the event stream's store), first-claim-wins, replies, the muted AI, release, transfer."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.harness import baton_api, baton_worker, eventually, settings_for

ADMIN = {"Authorization": "Bearer ba_test_admin"}


@pytest.fixture
async def http(dev_env, task_queue, channel, registry):
    settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret)
    async with baton_worker(dev_env.client, settings), baton_api(dev_env.client, settings, registry) as client:
        yield client


def cid() -> str:
    return f"desk-{uuid.uuid4().hex[:12]}"


def as_agent(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def live_agent(http, agent_id: str, queues=("general",), **more) -> str:
    r = await http.post("/v1/admin/live-agents", json={"agent_id": agent_id, "name": agent_id.title(),
                                                       "queues": list(queues), **more}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()["token"]


async def snap(http, conversation) -> dict:
    r = await http.get(f"/v1/conversations/{conversation}")
    assert r.status_code == 200, r.text
    return r.json()


async def entries(http, conversation, after=0) -> list[dict]:
    r = await http.get(f"/v1/conversations/{conversation}/transcript", params={"after": after})
    assert r.status_code == 200, r.text
    return r.json()["entries"]


async def waiting(http, queue, token) -> list[dict]:
    r = await http.get(f"/v1/desk/queues/{queue}/waiting", headers=as_agent(token))
    assert r.status_code == 200, r.text
    assert r.json()["queue"] == queue
    return r.json()["waiting"]


async def ask_for_a_human(http, channel) -> str:
    """A conversation whose user asked the demo AI for a person: pending in the default queue `general`."""
    conversation = cid()
    r = await http.post(f"/v1/conversations/{conversation}/messages",
                        json={"message_id": "u1", "text": "I want to talk to a human"})
    assert r.status_code == 202, r.text

    async def pending():
        s = await snap(http, conversation)
        # Routed (the routing activity decided) once the queue is set.
        return s["state"] == "handoff_pending" and s["queue"] and s

    s = await eventually(pending)
    assert s["queue"] == "general" and s["pending_handoff"]["target"]["queue"] == "general"
    assert s["pending_handoff"]["rule"] == "default"
    return conversation


async def claimed(http, channel, agent_id="alice") -> tuple[str, str]:
    token = await live_agent(http, agent_id)
    conversation = await ask_for_a_human(http, channel)
    r = await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(token))
    assert r.status_code == 200, r.text
    return conversation, token


def said(channel, conversation) -> list[dict]:
    return [m for m in channel.delivered() if m["conversation_id"] == conversation]


async def test_live_agents_get_a_token_once_and_are_listed_without_it(http, registry, tmp_path):
    r = await http.post("/v1/admin/live-agents", json={"agent_id": "alice", "name": "Alice", "queues": ["general"],
                                                       "skills": ["billing", "de"]}, headers=ADMIN)
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert r.json()["agent_id"] == "alice" and token.startswith("lat_")
    listed = await http.get("/v1/admin/live-agents", headers=ADMIN)
    assert listed.status_code == 200
    assert [(a["agent_id"], a["queues"], a["skills"]) for a in listed.json()["live_agents"]] == [
        ("alice", ["general"], ["billing", "de"])
    ]
    assert token not in listed.text and "token" not in listed.text
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("agents.db*"))
    assert token.encode() not in stored  # only its hash is kept
    assert registry.live_agent_by_token(token).agent_id == "alice"
    assert registry.live_agent_by_token(token + "x") is None and registry.live_agent_by_token("") is None

    again = await http.post("/v1/admin/live-agents", json={"agent_id": "alice", "name": "A", "queues": ["x"]}, headers=ADMIN)
    assert again.status_code == 409 and "alice" in again.json()["detail"]


@pytest.mark.parametrize(
    "body, where",
    [
        ({"agent_id": "bob", "name": "Bob", "queues": []}, "body.queues"),
        ({"agent_id": "bob", "name": "Bob"}, "body.queues"),
        ({"agent_id": "bob", "name": "Bob", "queues": ["bad queue"]}, "body.queues.0"),
        ({"agent_id": "bob", "name": "Bob", "queues": [f"q{i}" for i in range(51)]}, "body.queues"),
        ({"agent_id": "-bob", "name": "Bob", "queues": ["general"]}, "body.agent_id"),
        ({"agent_id": "bob", "name": "Bob", "queues": ["general"], "token": "lat_mine"}, "body.token"),
    ],
)
async def test_bad_live_agent_is_422(http, body, where):
    r = await http.post("/v1/admin/live-agents", json=body, headers=ADMIN)
    assert r.status_code == 422 and where in r.json()["detail"], r.text
    assert (await http.get("/v1/admin/live-agents", headers=ADMIN)).json()["live_agents"] == []


async def test_admin_key_and_live_agent_tokens_are_required(http, channel):
    body = {"agent_id": "alice", "name": "Alice", "queues": ["general"]}
    assert (await http.post("/v1/admin/live-agents", json=body)).status_code == 401  # the API key is not enough
    assert (await http.get("/v1/admin/live-agents")).status_code == 401
    token = await live_agent(http, "alice", queues=["general"])
    for headers in ({}, {"Authorization": "Bearer lat_wrong"}, {"Authorization": f"Basic {token}"}, ADMIN, None):
        r = await http.get("/v1/desk/queues/general/waiting", headers=headers)  # None: the API key
        assert r.status_code == 401 and "live-agent token" in r.json()["detail"], (headers, r.text)
    r = await http.get("/v1/desk/queues/billing/waiting", headers=as_agent(token))
    assert r.status_code == 403 and "billing" in r.json()["detail"]
    assert (await http.get("/v1/desk/queues/bad%20queue/waiting", headers=as_agent(token))).status_code == 422

    # A conversation waiting in `general` cannot be claimed by an agent who does not work that queue.
    billing = await live_agent(http, "bert", queues=["billing"])
    conversation = await ask_for_a_human(http, channel)
    r = await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(billing))
    assert r.status_code == 403 and "queue:general" in r.json()["detail"]
    assert (await snap(http, conversation))["state"] == "handoff_pending"


async def test_asking_for_a_human_waits_in_general_and_the_first_of_ten_claims_wins(http, channel):
    tokens = [await live_agent(http, f"agent{i}") for i in range(10)]
    conversation = await ask_for_a_human(http, channel)

    async def listed():
        w = await waiting(http, "general", tokens[0])
        return w if [x["conversation_id"] for x in w] == [conversation] else None

    (row,) = await eventually(listed)
    assert row["position"] == 1 and row["reason"] == "user asked for a person" and row["waiting_since"]

    # The handoff's summary for whoever takes over joins the row once written (the demo AI's: the user's words).
    async def summarized():
        w = await waiting(http, "general", tokens[0])
        return w[0]["summary"] if w and w[0]["summary"] else None

    summary = await eventually(summarized)
    assert summary == "Handed over: user asked for a person (intent: human). The user wrote \u201cI want to talk to a human\u201d."
    r = await http.get(f"/v1/desk/conversations/{conversation}/transcript", headers=as_agent(tokens[0]))
    assert r.status_code == 200 and r.json()["summary"] == summary, r.text

    results = await asyncio.gather(
        *(http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(t)) for t in tokens)
    )
    codes = sorted(r.status_code for r in results)
    assert codes == [200] + [409] * 9, [(r.status_code, r.text) for r in results]
    winner = next(i for i, r in enumerate(results) if r.status_code == 200)
    assert results[winner].json()["state"] == "live_agent" and results[winner].json()["owner"] == f"agent{winner}"
    s = await snap(http, conversation)
    assert s["state"] == "live_agent" and s["owner"] == f"agent{winner}" and s["pending_handoff"] is None
    # Claimed conversations leave the waiting list: the claim answers once the store no longer lists it.
    assert await waiting(http, "general", tokens[0]) == []


async def test_owner_replies_others_cannot_the_ai_is_muted_and_release_brings_it_back(http, channel):
    conversation, alice = await claimed(http, channel)
    bob = await live_agent(http, "bob")

    r = await http.post(f"/v1/desk/conversations/{conversation}/messages", headers=as_agent(alice),
                        json={"message_id": "a1", "text": "Hi, Alice here. How can I help?"})
    assert r.status_code == 202 and r.json()["accepted"] is True and r.json()["seq"], r.text
    await channel.wait_for(lambda _: any(m["author"] == "alice" for m in said(channel, conversation)))
    reply = next(m for m in said(channel, conversation) if m["author"] == "alice")
    assert reply["role"] == "live_agent" and reply["text"] == "Hi, Alice here. How can I help?"

    r = await http.post(f"/v1/desk/conversations/{conversation}/messages", headers=as_agent(bob),
                        json={"message_id": "b1", "text": "Bob here"})
    assert r.status_code == 409 and "only the owner (alice)" in r.json()["detail"], r.text
    r = await http.post(f"/v1/desk/conversations/{conversation}/release", headers=as_agent(bob))
    assert r.status_code == 409, r.text
    r = await http.post(f"/v1/desk/conversations/{conversation}/messages", headers=as_agent(alice),
                        json={"message_id": "a-bad", "text": "x", "role": "ai"})
    assert r.status_code == 422 and "body.role" in r.json()["detail"]

    # The user writes while a human owns the conversation: the AI stays silent.
    r = await http.post(f"/v1/conversations/{conversation}/messages", json={"message_id": "u2", "text": "My card is 4111 1111 1111 1111"})
    assert r.status_code == 202
    r = await http.post(f"/v1/desk/conversations/{conversation}/messages", headers=as_agent(alice),
                        json={"message_id": "a2", "text": "Thanks, please don't send it; mine is 4242 4242 4242 4242"})
    assert r.status_code == 202, r.text
    await channel.wait_for(lambda _: any(m["message_id"] == "a2" for m in said(channel, conversation)))
    got = await entries(http, conversation)
    user_seq = next(e["seq"] for e in got if e["message_id"] == "u2")
    assert [e["role"] for e in got if e["seq"] > user_seq] == ["live_agent"]
    a2 = next(e for e in got if e["message_id"] == "a2")
    assert "4242 4242" not in a2["text"] and "[redacted:" in a2["text"]  # agents' replies are redacted too

    r = await http.post(f"/v1/desk/conversations/{conversation}/release", headers=as_agent(alice),
                        json={"reason": "solved"})
    assert r.status_code == 200 and r.json()["state"] == "ai" and r.json()["owner"] == "ai", r.text
    await channel.wait_for(
        lambda _: any(m["role"] == "ai" and "back with you" in m["text"] for m in said(channel, conversation))
    )
    r = await http.post(f"/v1/desk/conversations/{conversation}/messages", headers=as_agent(alice),
                        json={"message_id": "a3", "text": "still here?"})
    assert r.status_code == 409  # released: no longer the owner


async def test_transfer_to_another_queue_waits_there(http, channel):
    conversation, alice = await claimed(http, channel)
    billing = await live_agent(http, "bill", queues=["billing"])
    bob = await live_agent(http, "bob")

    r = await http.post(f"/v1/desk/conversations/{conversation}/transfer", headers=as_agent(alice),
                        json={"agent_id": "bob", "queue": "billing"})
    assert r.status_code == 422 and "exactly one of" in r.json()["detail"]
    r = await http.post(f"/v1/desk/conversations/{conversation}/transfer", headers=as_agent(alice), json={})
    assert r.status_code == 422
    r = await http.post(f"/v1/desk/conversations/{conversation}/transfer", headers=as_agent(bob),
                        json={"queue": "billing"})
    assert r.status_code == 409 and "only the owner (alice)" in r.json()["detail"]

    r = await http.post(f"/v1/desk/conversations/{conversation}/transfer", headers=as_agent(alice),
                        json={"queue": "billing"})
    assert r.status_code == 200 and r.json()["state"] == "handoff_pending", r.text
    s = await snap(http, conversation)
    assert s["queue"] == "billing" and s["owner"] is None
    assert s["pending_handoff"]["reason"] == "transfer by alice"

    async def listed():
        w = await waiting(http, "billing", billing)
        return w if [x["conversation_id"] for x in w] == [conversation] else None

    (row,) = await eventually(listed)
    assert row["position"] == 1 and row["reason"] == "transfer by alice"
    assert await waiting(http, "general", alice) == []
    r = await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(alice))
    assert r.status_code == 403  # alice does not work `billing`
    r = await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(billing))
    assert r.status_code == 200 and r.json()["owner"] == "bill", r.text


async def test_waiting_list_is_oldest_first(http, channel):
    token = await live_agent(http, "alice")
    first = await ask_for_a_human(http, channel)
    second = await ask_for_a_human(http, channel)

    async def listed():
        w = await waiting(http, "general", token)
        return w if len(w) == 2 else None

    rows = await eventually(listed)
    assert [(r["conversation_id"], r["position"]) for r in rows] == [(first, 1), (second, 2)]
    assert rows[0]["waiting_since"] <= rows[1]["waiting_since"]


async def test_claim_on_closed_is_409_and_unknown_is_404(http, channel):
    conversation, alice = await claimed(http, channel)
    bob = await live_agent(http, "bob")
    r = await http.post(f"/v1/desk/conversations/{conversation}/close", headers=as_agent(bob))
    assert r.status_code == 409 and "only the owner" in r.json()["detail"]
    r = await http.post(f"/v1/desk/conversations/{conversation}/close", headers=as_agent(alice), json={"reason": "done"})
    assert r.status_code == 200 and r.json()["state"] == "closed", r.text
    r = await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=as_agent(bob))
    assert r.status_code == 409 and "closed" in r.json()["detail"], r.text

    unknown = cid()
    for path, body in (("claim", None), ("messages", {"message_id": "x", "text": "hi"}), ("release", None),
                       ("transfer", {"queue": "general"}), ("close", None)):
        r = await http.post(f"/v1/desk/conversations/{unknown}/{path}", headers=as_agent(alice), json=body)
        assert r.status_code == 404 and unknown in r.json()["detail"], (path, r.text)
