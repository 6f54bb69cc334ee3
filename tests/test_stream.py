"""The event streams (docs/event-stream.md) over real loopback HTTP, against the dev server and a real worker:
entries in seq order with their ids, state changes with the queue position, resume without gap or repeat, the
desk's live waiting lists, heartbeats, and bad requests."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime

import pytest

from activities.stream import StreamStore, stream_path
from models.conversation import Bell, State
from models.names import Activities, Updates, workflow_id
from tests.harness import baton_api, baton_worker, settings_for
from tests.sse import open_stream

ADMIN = {"Authorization": "Bearer ba_test_admin"}


@pytest.fixture
async def stack(dev_env, task_queue, channel):
    settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret)
    async with baton_worker(dev_env.client, settings), baton_api(
        dev_env.client, settings, stream_options={"heartbeat": 0.5}
    ) as http:
        yield settings, http


def cid() -> str:
    return f"sse-{uuid.uuid4().hex[:12]}"


async def say(http, conversation: str, text: str) -> None:
    r = await http.post(f"/v1/conversations/{conversation}/messages",
                        json={"message_id": uuid.uuid4().hex, "text": text})
    assert r.status_code == 202, r.text


async def live_agent(http, agent_id: str, queues=("general",)) -> dict[str, str]:
    r = await http.post("/v1/admin/live-agents", json={"agent_id": agent_id, "name": agent_id.title(),
                                                       "queues": list(queues)}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def quiet(http, dev_env, conversation: str):
    """Wait until the AI's answer is recorded, delivered and rung: nothing in flight for the conversation."""
    handle = dev_env.client.get_workflow_handle(workflow_id(conversation))
    for _ in range(200):
        entries = (await http.get(f"/v1/conversations/{conversation}/transcript")).json()["entries"]
        if any(e["role"] == "ai" for e in entries) and not (await handle.describe()).raw_description.pending_activities:
            break
        await asyncio.sleep(0.05)
    return handle


def is_entry(role: str | None = None, seq: int | None = None):
    return lambda e: e.event == "entry" and (role is None or e.data["role"] == role) and (
        seq is None or e.data["seq"] >= seq)


async def test_entries_arrive_in_seq_order_with_ids_then_state_and_position(stack):
    _, http = stack
    conversation = cid()
    await say(http, conversation, "hello")
    async with open_stream(http, f"/v1/conversations/{conversation}/events") as stream:
        seen = await stream.until(is_entry("ai"))
        entries = [e for e in seen if e.event == "entry"]
        assert entries[0].data["role"] == "user" and entries[0].data["text"] == "hello"
        assert [int(e.id) for e in entries] == [e.data["seq"] for e in entries] == list(range(1, len(entries) + 1))
        await say(http, conversation, "I want to talk to a human")
        seen = await stream.until(lambda e: e.event == "state" and e.data["state"] == "handoff_pending"
                                  and e.data["position"] == 1)
        assert seen[-1].data == {"state": "handoff_pending", "owner": None, "queue": "general", "position": 1}
        entries += [e for e in seen if e.event == "entry"]
        assert any(e.data["text"] == "I want to talk to a human" for e in entries)
        seqs = [e.data["seq"] for e in entries]
        assert seqs == sorted(set(seqs)), "no repeat, in order"
        assert all(e.id is None for e in seen if e.event == "state"), "state events carry no id"


async def test_resume_after_a_drop_has_no_gap_and_no_repeat(stack):
    _, http = stack
    conversation = cid()
    await say(http, conversation, "hello")
    async with open_stream(http, f"/v1/conversations/{conversation}/events") as stream:
        first = [e for e in await stream.until(is_entry("ai")) if e.event == "entry"]
        last = stream.last_id
    assert last == str(first[-1].data["seq"])
    # Said while nobody listened.
    await say(http, conversation, "what are your opening hours?")
    await say(http, conversation, "and on sundays?")
    async with open_stream(http, f"/v1/conversations/{conversation}/events", headers={"Last-Event-ID": last}) as s2:
        seen = await s2.until(lambda e: e.event == "entry" and e.data["role"] == "ai"
                              and e.data["seq"] > int(last) + 2)
    resumed = [e.data["seq"] for e in seen if e.event == "entry"]
    assert resumed[0] == int(last) + 1 and resumed == list(range(resumed[0], resumed[0] + len(resumed)))
    # ?after= is the same resume point for clients that cannot send the header.
    async with open_stream(http, f"/v1/conversations/{conversation}/events", params={"after": last}) as s3:
        again = await s3.until(lambda e: e.event == "state")
    assert [e.data["seq"] for e in again if e.event == "entry"][: len(resumed)] == resumed


async def test_idle_stream_sends_heartbeats(stack):
    _, http = stack
    conversation = cid()
    await say(http, conversation, "hello")
    async with open_stream(http, f"/v1/conversations/{conversation}/events") as stream:
        await stream.until(lambda e: e.event == "state")
        await asyncio.sleep(1.6)
        assert stream.comments >= 2


async def test_bad_requests(stack):
    _, http = stack
    r = await http.get(f"/v1/conversations/{cid()}/events")
    assert r.status_code == 404 and "does not exist" in r.json()["detail"]
    r = await http.get("/v1/conversations/bad id/events")
    assert r.status_code == 422
    conversation = cid()
    await say(http, conversation, "hello")
    r = await http.get(f"/v1/conversations/{conversation}/events", headers={"Last-Event-ID": "x"})
    assert r.status_code == 422 and "Last-Event-ID" in r.json()["detail"]
    r = await http.get(f"/v1/conversations/{conversation}/events", params={"after": -1})
    assert r.status_code == 422
    r = await http.get(f"/v1/conversations/{conversation}/events", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = await http.get("/v1/desk/events", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


async def test_desk_stream_lists_waiting_live_and_follows_the_claimed_conversation(stack):
    _, http = stack
    ana = await live_agent(http, "ana")
    conversation = cid()
    async with open_stream(http, "/v1/desk/events", headers=ana) as desk:
        opening = await desk.until(lambda e: e.event == "waiting" and e.data["queue"] == "general")
        assert opening[-1].data["waiting"] == []
        await say(http, conversation, "I want to talk to a human")
        seen = await desk.until(lambda e: e.event == "waiting" and e.data["queue"] == "general" and e.data["waiting"])
        row = seen[-1].data["waiting"][0]
        assert row["conversation_id"] == conversation and row["position"] == 1 and row["waiting_since"]
        assert row["reason"]
        # What the user writes while waiting reaches the agents who may claim it.
        await say(http, conversation, "still there?")
        await desk.until(lambda e: e.event == "entry" and e.data["conversation_id"] == conversation
                         and e.data["text"] == "still there?")
        r = await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=ana)
        assert r.status_code == 200, r.text
        await desk.until(lambda e: e.event == "waiting" and e.data["queue"] == "general" and not e.data["waiting"])
        await desk.until(lambda e: e.event == "state" and e.data["conversation_id"] == conversation
                         and e.data["owner"] == "ana" and e.data["state"] == "live_agent")
        await say(http, conversation, "thanks for taking this")
        await desk.until(lambda e: e.event == "entry" and e.data["text"] == "thanks for taking this")


async def test_the_routing_decision_lists_the_chat_itself_and_a_claim_at_once_succeeds(stack, dev_env):
    """The routing activity carries the stream's bell and writes the chat into its queue's waiting list
    as it decides (no bell of its own between the handoff request and the decision); an agent who claims the moment
    it is listed waits for the workflow to record the decision instead of being refused."""
    _, http = stack
    agent = await live_agent(http, f"agent-{uuid.uuid4().hex[:8]}")
    conversation = cid()
    await say(http, conversation, "hello")
    handle = await quiet(http, dev_env, conversation)
    async with open_stream(http, "/v1/desk/events", headers=agent) as desk:
        await desk.until(lambda e: e.event == "waiting" and e.data["queue"] == "general")
        r = await http.post(f"/v1/conversations/{conversation}/handoff",
                            json={"reason": "billing question", "target": {"queue": "general"}})
        assert r.status_code == 200, r.text
        await desk.until(lambda e: e.event == "waiting" and e.data["queue"] == "general"
                         and any(w["conversation_id"] == conversation for w in e.data["waiting"]))
    r = await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=agent)
    assert r.status_code == 200, r.text
    events = (await handle.fetch_history()).events
    accepted = next(i for i, e in enumerate(events) if e.HasField("workflow_execution_update_accepted_event_attributes")
                    and e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
                    == Updates.SUBMIT_HANDOFF)
    scheduled = [(i, e.activity_task_scheduled_event_attributes) for i, e in enumerate(events)
                 if e.HasField("activity_task_scheduled_event_attributes")]
    route_at, route = next((i, a) for i, a in scheduled if i > accepted and a.activity_type.name
                           == Activities.ROUTE_HANDOFF)
    bell = json.loads(route.input.payloads[0].data)["bell"]
    assert bell["conversation_id"] == conversation and bell["state"] == "handoff_pending"
    assert bell["waiting_since"] and bell["reason"] == "billing question"
    completed = next(i for i, e in enumerate(events) if i > route_at
                     and e.HasField("activity_task_completed_event_attributes")
                     and e.activity_task_completed_event_attributes.scheduled_event_id == events[route_at].event_id)
    assert [a.activity_type.name for i, a in scheduled if accepted < i < completed
            and a.activity_type.name == Activities.RING_BELL] == [], "the decision rang, not a bell of its own"


async def test_the_ai_turn_that_hands_off_routes_and_lists_the_chat_itself(stack, dev_env):
    """When the AI's reply hands off, its own activity decides the route (recorded with the reply) and
    lists the chat, so no routing activity of its own runs; waiting since the user's message, and claimable."""
    _, http = stack
    agent = await live_agent(http, f"agent-{uuid.uuid4().hex[:8]}")
    conversation = cid()
    async with open_stream(http, "/v1/desk/events", headers=agent) as desk:
        await desk.until(lambda e: e.event == "waiting" and e.data["queue"] == "general")
        await say(http, conversation, "I want to talk to a human")
        seen = await desk.until(lambda e: e.event == "waiting" and e.data["queue"] == "general"
                                and any(w["conversation_id"] == conversation for w in e.data["waiting"]))
    listed = next(w for w in seen[-1].data["waiting"] if w["conversation_id"] == conversation)
    r = await http.post(f"/v1/desk/conversations/{conversation}/claim", headers=agent)
    assert r.status_code == 200, r.text
    events = (await dev_env.client.get_workflow_handle(workflow_id(conversation)).fetch_history()).events
    scheduled = {e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name for e in events
                 if e.HasField("activity_task_scheduled_event_attributes")}
    assert Activities.ROUTE_HANDOFF not in scheduled.values()
    [reply] = [json.loads(e.activity_task_completed_event_attributes.result.payloads[0].data) for e in events
               if e.HasField("activity_task_completed_event_attributes")
               and scheduled[e.activity_task_completed_event_attributes.scheduled_event_id] == Activities.AI_RESPOND]
    assert reply["handoff"] and reply["decision"]["target"]["queue"] == "general"
    snap = (await http.get(f"/v1/conversations/{conversation}")).json()
    assert snap["state"] == "live_agent" and snap["waiting_since"] is None
    audit = (await http.get(f"/v1/conversations/{conversation}/audit")).json()["entries"]
    routed = next(a for a in audit if a["kind"] == "handoff_routed")
    assert routed["detail"]["target"] == "queue:general"
    [turn] = [json.loads(e.activity_task_scheduled_event_attributes.input.payloads[0].data) for e in events
              if e.HasField("activity_task_scheduled_event_attributes")
              and e.activity_task_scheduled_event_attributes.activity_type.name == Activities.AI_RESPOND]
    # The listing's bell is numbered after the turn's own, so the store never takes the older one for the newer.
    assert turn["route"]["bell"]["number"] > (turn["bell"] or {}).get("number", 0)
    since = datetime.fromisoformat(listed["waiting_since"].replace("Z", "+00:00"))
    assert since == datetime.fromisoformat(turn["route"]["at"].replace("Z", "+00:00")), "waiting since the turn began"
    requested = next(a for a in audit if a["kind"] == "handoff_requested")
    assert requested["detail"]["by"] == "ai"


async def test_a_claim_made_as_the_list_shows_the_chat_waits_for_the_workflow_to_catch_up(stack, dev_env):
    """The AI turn's activity lists a chat before the workflow has even started the handoff: an agent who claims
    in that moment (the workflow still says `ai`) waits for it instead of hearing "no handoff is pending"."""
    settings, http = stack
    agent = await live_agent(http, f"agent-{uuid.uuid4().hex[:8]}")
    conversation = cid()
    await say(http, conversation, "hello")
    await quiet(http, dev_env, conversation)
    store = StreamStore(stream_path(settings.home))
    try:
        row = store._db.execute("SELECT bell FROM conversations WHERE conversation_id = ?", (conversation,)).fetchone()
        now = datetime.now(UTC)
        # What the AI turn's listing writes, before the workflow has recorded the reply that hands off.
        store.ring(Bell(conversation_id=conversation, number=(row[0] if row else 0) + 1, seq=1,
                        state=State.HANDOFF_PENDING, queue="general", waiting_since=now, reason="listed", at=now))
        claim = asyncio.create_task(http.post(f"/v1/desk/conversations/{conversation}/claim", headers=agent))
        await asyncio.sleep(0.5)
        assert not claim.done(), "the claim waits while the workflow has not caught up"
        r = await http.post(f"/v1/conversations/{conversation}/handoff", json={"reason": "now for real",
                                                                          "target": {"queue": "general"}})
        assert r.status_code == 200, r.text
        r = await claim
        assert r.status_code == 200 and r.json()["owner"].startswith("agent-"), r.text
    finally:
        store.close()


async def test_positions_move_up_when_someone_ahead_is_claimed(stack):
    _, http = stack
    ana = await live_agent(http, "ana")
    first, second = cid(), cid()
    await say(http, first, "I want to talk to a human")
    async with open_stream(http, f"/v1/conversations/{first}/events") as s1:
        await s1.until(lambda e: e.event == "state" and e.data["position"] == 1)
    await say(http, second, "I want to talk to a human")
    async with open_stream(http, f"/v1/conversations/{second}/events") as s2:
        await s2.until(lambda e: e.event == "state" and e.data["position"] == 2)
        r = await http.post(f"/v1/desk/conversations/{first}/claim", headers=ana)
        assert r.status_code == 200, r.text
        await s2.until(lambda e: e.event == "state" and e.data["position"] == 1)


# ---- two API processes behind one address: a subscriber on one sees what is sent to the other --------------


async def _api_process(settings, temporal_address: str, port: int):
    import os
    import subprocess
    import sys
    from pathlib import Path

    # On PostgreSQL each process has a home of its own (a host of its own): the database is all they share.
    home = settings.home / f"host-{port}" if settings.database_url else settings.home
    env = {
        **os.environ, "TEMPORAL_ADDRESS": temporal_address, "TEMPORAL_NAMESPACE": "default",
        "BATON_DATABASE_URL": settings.database_url or "",
        "BATON_HOME": str(home), "BATON_API_PORT": str(port), "BATON_API_KEY": settings.api_key,
        "BATON_ADMIN_KEY": settings.admin_key, "BATON_SECRET_KEY": settings.secret_key,
        "BATON_TASK_QUEUE": settings.task_queue, "BATON_CHANNEL_URL": settings.channel_url or "",
        "BATON_CHANNEL_SECRET": settings.channel_secret or "",
    }
    proc = subprocess.Popen([str(Path(sys.executable).parent / "baton"), "api"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc


async def _ready(url: str, proc, within: float = 30) -> None:
    import httpx

    deadline = asyncio.get_running_loop().time() + within
    async with httpx.AsyncClient() as probe:
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                if (await probe.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert asyncio.get_running_loop().time() < deadline, f"{url} not ready"
            await asyncio.sleep(0.2)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_two_api_processes_one_stream_resumes_on_the_other(dev_env, task_queue, channel, store, request):
    """Two `baton api` processes and a worker: on one host sharing `.baton/stream.db`, or each with a home of its
    own and the install's store on one PostgreSQL (as on several hosts)."""
    import httpx

    from devkit.temporal import free_port

    database = request.getfixturevalue("postgres").new_database() if store == "postgresql" else None
    settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret,
                            database_url=database)
    address = dev_env.client.service_client.config.target_host
    ports = [free_port(), free_port()]
    procs = [await _api_process(settings, address, p) for p in ports]
    try:
        async with baton_worker(dev_env.client, settings):
            urls = [f"http://127.0.0.1:{p}" for p in ports]
            for url, proc in zip(urls, procs):
                await _ready(url, proc)
            key = {"Authorization": f"Bearer {settings.api_key}"}
            async with httpx.AsyncClient(base_url=urls[0], headers=key) as one, \
                    httpx.AsyncClient(base_url=urls[1], headers=key) as two:
                conversation = cid()
                await say(two, conversation, "hello")
                r = await one.post("/v1/admin/live-agents", headers=ADMIN,
                                   json={"agent_id": "ana", "name": "Ana", "queues": ["general"]})
                assert r.status_code == 201, r.text
                ana = {"Authorization": f"Bearer {r.json()['token']}"}
                async with open_stream(one, f"/v1/conversations/{conversation}/events") as stream, \
                        open_stream(one, "/v1/desk/events", headers=ana) as desk:
                    await stream.until(is_entry("ai"))
                    # Sent through the other process: the stream on this one wakes.
                    await say(two, conversation, "I want to talk to a human")
                    await stream.until(lambda e: e.event == "state" and e.data["state"] == "handoff_pending"
                                       and e.data["position"] == 1)
                    await desk.until(lambda e: e.event == "waiting" and e.data["waiting"]
                                     and e.data["waiting"][0]["conversation_id"] == conversation)
                    r = await two.post(f"/v1/desk/conversations/{conversation}/claim", headers=ana)
                    assert r.status_code == 200, r.text
                    await stream.until(lambda e: e.event == "state" and e.data["owner"] == "ana")
                    last = stream.last_id
                # The first process goes away; the client reconnects to the other with Last-Event-ID.
                procs[0].terminate()
                procs[0].wait(15)
                await say(two, conversation, "are you there?")
                async with open_stream(two, f"/v1/conversations/{conversation}/events",
                                       headers={"Last-Event-ID": last}) as resumed:
                    seen = await resumed.until(lambda e: e.event == "entry" and e.data["text"] == "are you there?")
                seqs = [e.data["seq"] for e in seen if e.event == "entry"]
                assert seqs == list(range(int(last) + 1, int(last) + 1 + len(seqs))), seqs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except Exception:  # noqa: BLE001
                    proc.kill()


async def test_a_new_conversation_under_a_closed_ones_id_is_streamed_from_its_first_entry(stack):
    """A message after a close starts a new conversation under the same id, whose seqs count from 1 again: the
    open stream sends it from its first entry (ids start again at 1), and a client resuming with the closed one's
    last id, past the new conversation's end, is sent the new one from its start."""
    _, http = stack
    conversation = cid()
    await say(http, conversation, "hello")
    async with open_stream(http, f"/v1/conversations/{conversation}/events") as stream:
        await stream.until(is_entry("ai"))
        assert (await http.post(f"/v1/conversations/{conversation}/close")).status_code == 200
        seen = await stream.until(lambda e: e.event == "state" and e.data["state"] == "closed")
        if not any(e.event == "entry" and "closed" in e.data["text"] for e in seen):
            seen += await stream.until(lambda e: e.event == "entry" and "closed" in e.data["text"])
        old_last = max(int(e.id) for e in seen if e.event == "entry")
        await say(http, conversation, "back again")
        seen = await stream.until(lambda e: e.event == "entry" and e.data["role"] == "ai")
        entries = [e for e in seen if e.event == "entry"]
        assert [(e.data["seq"], e.data["role"]) for e in entries][:2] == [(1, "user"), (2, "ai")]
        assert entries[0].data["text"] == "back again" and [int(e.id) for e in entries[:2]] == [1, 2]
        assert any(e.event == "state" and e.data["state"] == "ai" for e in seen)
    async with open_stream(http, f"/v1/conversations/{conversation}/events",
                           headers={"Last-Event-ID": str(old_last)}) as again:
        seen = await again.until(is_entry("ai"))
        assert [e.data["seq"] for e in seen if e.event == "entry"][:2] == [1, 2]


async def test_the_desk_stream_follows_a_new_conversation_under_a_closed_ones_id_from_its_start(stack):
    """The user of a closed conversation writes again and asks for a person: the new conversation (seqs from 1
    again) reaches the desk, and what the user writes while it waits is sent though its seq is below the closed
    one's last. (The desk stream forgets a conversation at its close and meets the new one at its handoff, whose
    bell counts from the new conversation's own seq: this held before the conversation stream's fix too.)"""
    _, http = stack
    bea = await live_agent(http, "bea")
    conversation = cid()
    for n in range(10):
        await say(http, conversation, f"message {n}")
    assert (await http.post(f"/v1/conversations/{conversation}/close")).status_code == 200

    async def closed_run():
        entries = (await http.get(f"/v1/conversations/{conversation}/transcript")).json()["entries"]
        return entries[-1]["seq"] if entries and "closed" in entries[-1]["text"] else None
    for _ in range(200):
        if (last := await closed_run()) is not None:
            break
        await asyncio.sleep(0.05)
    assert last is not None and last >= 11
    async with open_stream(http, "/v1/desk/events", headers=bea) as desk:
        await desk.until(lambda e: e.event == "waiting" and e.data["queue"] == "general")
        await say(http, conversation, "I want to talk to a human")
        await desk.until(lambda e: e.event == "waiting" and e.data["queue"] == "general"
                         and any(w["conversation_id"] == conversation for w in e.data["waiting"]))
        await say(http, conversation, "still there?")
        seen = await desk.until(lambda e: e.event == "entry" and e.data["conversation_id"] == conversation
                                and e.data["text"] == "still there?")
        assert seen[-1].data["seq"] < last
