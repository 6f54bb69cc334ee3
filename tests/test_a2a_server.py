"""Baton's local agents as A2A agents (the receiving direction): an `a2a-sdk` client reads a local agent's card,
hands it a conversation and talks to it through the task; another Baton hands a conversation to it over A2A. Real
API, worker and dev server; the SDK's own client over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.helpers import get_message_text, new_data_part, new_text_part
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    TaskState,
)
from a2a.utils.errors import InvalidParamsError, TaskNotFoundError, UnsupportedOperationError

from activities.webhooks import a2a_token
from api.a2a_server import task_id_for
from devkit.temporal import free_port
from models.notices import HANDED_BACK_TO_REFERRER
from tests.harness import baton_api, baton_worker, eventually, settings_for

ADMIN = {"Authorization": "Bearer ba_test_admin"}
CARD_CANARY = "4111 1111 1111 1111"
AUTH_CANARY = "CANARY-A2A-IN-AUTH-77e1"
NUMBER_CANARY = 4111111111111111


@pytest.fixture
async def baton(dev_env, task_queue, registry, channel, monkeypatch):
    """Baton with the demo's local agent `tech-support`; yields (base URL, the agent's A2A token, the API client)."""
    monkeypatch.setenv("BATON_ALLOW_PRIVATE_NETWORKS", "1")  # Baton handing over to itself on loopback
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret, public_url=base)
    _, secret = registry.create_local("tech-support", "tech-support")
    async with baton_worker(dev_env.client, settings, registry), baton_api(
        dev_env.client, settings, registry, port=port
    ) as http:
        yield base, a2a_token(secret), http


@contextlib.asynccontextmanager
async def a2a_client(base: str, token: str) -> AsyncIterator[Any]:
    """The SDK's own client for the local agent, built from the card it resolves."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        card = await A2ACardResolver(http, f"{base}/a2a/tech-support").get_agent_card()
        client = ClientFactory(ClientConfig(streaming=False, httpx_client=http)).create(card)
        try:
            yield client
        finally:
            await client.close()


def user(text: str, task_id: str = "", context_id: str = "", data: dict | None = None, mid: str | None = None):
    parts = [new_text_part(text)] + ([new_data_part(data)] if data is not None else [])
    return Message(role=Role.ROLE_USER, message_id=mid or uuid.uuid4().hex, task_id=task_id, context_id=context_id,
                   parts=parts)


async def send(client, message: Message, **config: Any):
    request = SendMessageRequest(message=message, configuration=SendMessageConfiguration(**config))
    last = None
    async for response in client.send_message(request):
        last = response
    assert last is not None and last.WhichOneof("payload") == "task", last
    return last.task


def state(task) -> str:
    return TaskState.Name(task.status.state)


async def test_the_local_agent_has_a_card_an_a2a_client_can_use(baton):
    base, _, http = baton
    async with httpx.AsyncClient() as anonymous:
        card = await A2ACardResolver(anonymous, f"{base}/a2a/tech-support").get_agent_card()
        missing = await anonymous.get(f"{base}/a2a/nobody/.well-known/agent-card.json")
    assert card.name == "tech-support" and [s.id for s in card.skills] == ["conversation"]
    [interface] = card.supported_interfaces
    assert (interface.url, interface.protocol_binding, interface.protocol_version) == (
        f"{base}/a2a/tech-support", "JSONRPC", "1.0")
    assert card.security_schemes["bearer"].http_auth_security_scheme.scheme == "bearer"
    assert card.capabilities.streaming and not card.capabilities.push_notifications
    assert missing.status_code == 404 and "nobody" in missing.json()["detail"]


async def test_an_a2a_client_hands_a_conversation_to_the_local_agent_and_it_runs_to_the_hand_back(baton):
    base, token, http = baton
    async with a2a_client(base, token) as client:
        first = await send(client, user("The app crashes on start", context_id="their-conversation-1"))
        assert state(first) == "TASK_STATE_INPUT_REQUIRED", first
        assert first.context_id == "their-conversation-1"
        greeting = get_message_text(first.status.message)
        assert greeting.startswith("Hi, I'm the tech-support assistant. I can see you reported: "
                                   "\u201cThe app crashes on start\u201d"), greeting

        second = await send(client, user("version 2.5", task_id=first.id))
        assert (second.id, state(second)) == (first.id, "TASK_STATE_INPUT_REQUIRED")
        assert get_message_text(second.status.message).startswith("Thanks. That version has a known crash")

        done = await send(client, user("it works now, thanks", task_id=first.id))
        assert state(done) == "TASK_STATE_COMPLETED"
        assert get_message_text(done.status.message).startswith("Glad that's sorted!")
        # Baton's own "handed back" entry is the task's state here, not a message (as over the platform protocol).
        assert HANDED_BACK_TO_REFERRER not in str(done)

        # The first message sent again with the task it opened is a retry: nothing new happens.
        again = await send(client, user("The app crashes on start", task_id=first.id, mid=first.history[0].message_id))
        assert state(again) == "TASK_STATE_COMPLETED" and again.id == first.id

        # The task as GetTask reads it: every message once, in order, each with its own id.
        task = await client.get_task(GetTaskRequest(id=first.id, history_length=50))
        assert state(task) == "TASK_STATE_COMPLETED"
        roles = [(Role.Name(m.role), get_message_text(m)[:20]) for m in task.history]
        assert roles == [("ROLE_USER", "The app crashes on s"), ("ROLE_AGENT", "Hi, I'm the tech-sup"),
                         ("ROLE_USER", "version 2.5"), ("ROLE_AGENT", "Thanks. That version"),
                         ("ROLE_USER", "it works now, thanks"), ("ROLE_AGENT", "Glad that's sorted! ")]
        ids = [m.message_id for m in task.history]
        assert len(ids) == len(set(ids)) and not any(i.startswith("a2a:") for i in ids)  # the client's own ids

        # Its last message sent again (a retry after a lost answer) gets the same answer, and is recorded once.
        retried = await send(client, user("it works now, thanks", task_id=first.id, mid=done.history[-2].message_id))
        assert (state(retried), retried.status.message.message_id) == ("TASK_STATE_COMPLETED",
                                                                        done.status.message.message_id)
        # A finished task takes no more messages: the client starts a new one.
        with pytest.raises(UnsupportedOperationError, match="completed"):
            await send(client, user("one more thing", task_id=first.id))

    # On our side it is a conversation like any other handed to the agent: in the API, and in the audit.
    snap = (await http.get(f"/v1/conversations/{first.id}")).json()
    assert snap["state"] == "closed" and snap["channel"] == "a2a"
    assert snap["peer"]["protocol"] == "a2a" and snap["peer"]["source_conversation_id"] == "their-conversation-1"
    kinds = [e["kind"] for e in (await http.get(f"/v1/conversations/{first.id}/audit")).json()["entries"]]
    assert kinds[0] == "handoff_received" and "delivery_failed" not in kinds


async def test_the_handoff_s_data_is_filtered_at_our_door_and_a_retry_opens_one_conversation(baton):
    base, token, http = baton
    data = {"context": {"profile": {"name": "Bo", "card": CARD_CANARY, "account": NUMBER_CANARY},
                        "slots": {"problem": "crash on start"},
                        "auth": {"session": AUTH_CANARY}},
            "transcript": [{"seq": 1, "message_id": "t1", "role": "user", "author": "user",
                            "text": f"my card is {CARD_CANARY}", "at": "2026-11-30T10:00:00Z"}]}
    message = user("technical problem", data=data, mid="first-message")
    async with a2a_client(base, token) as client:
        task = await send(client, message)
        again = await send(client, message)  # the client's retry of the same message
    assert again.id == task.id == task_id_for("tech-support", "", "first-message")
    assert get_message_text(task.status.message).startswith(
        "Hi Bo, I'm the tech-support assistant. I can see you reported: \u201ccrash on start\u201d")
    snap = (await http.get(f"/v1/conversations/{task.id}")).json()
    transcript = (await http.get(f"/v1/conversations/{task.id}/transcript")).json()
    audit = (await http.get(f"/v1/conversations/{task.id}/audit")).json()
    for shown in (snap, transcript, audit):
        assert CARD_CANARY not in str(shown) and AUTH_CANARY not in str(shown)
        assert str(NUMBER_CANARY) not in str(shown)  # a card number sent as a JSON number (a float in protobuf)
    assert [e["kind"] for e in audit["entries"]].count("handoff_received") == 1
    assert snap["context"]["profile"]["name"] == "Bo"


async def test_bad_calls_are_refused_and_change_nothing(baton, registry):
    base, token, http = baton
    rpc = f"{base}/a2a/tech-support"
    body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage",
            "params": {"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}}
    async with httpx.AsyncClient() as raw:
        signing_secret = registry.verifying_secrets("tech-support")[0]
        for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": f"Basic {token}"},
                        {"Authorization": f"Bearer {signing_secret}"}):  # the signing secret is not the token
            r = await raw.post(rpc, json=body, headers={"A2A-Version": "1.0", **headers})
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), r.text
            assert token not in r.text and signing_secret not in r.text
        r = await raw.post(f"{base}/a2a/nobody", json=body, headers={"A2A-Version": "1.0",
                                                                     "Authorization": f"Bearer {token}"})
        assert r.status_code == 401
    _, other_secret = registry.create_local("billing-bot", "billing-bot")
    other_token = a2a_token(other_secret)
    async with a2a_client(base, token) as client:
        with pytest.raises(InvalidParamsError, match="text part"):
            await send(client, Message(role=Role.ROLE_USER, message_id="m2", parts=[new_data_part({"x": 1})]))
        with pytest.raises(TaskNotFoundError):
            await client.get_task(GetTaskRequest(id="a-" + "0" * 32))
        with pytest.raises(TaskNotFoundError):
            await send(client, user("hello", task_id="not-a-task"))
        task = await send(client, user("The app crashes"), return_immediately=True)
        # Asked not to wait: the task as it is, greeted already or not (the demo agent answers in milliseconds).
        assert state(task) in ("TASK_STATE_WORKING", "TASK_STATE_INPUT_REQUIRED") and task.id.startswith("a-")
        with pytest.raises(InvalidParamsError, match="contextId"):
            await send(client, user("hi", task_id=task.id, context_id="someone-else"))
    # Another local agent's token does not reach this agent's tasks.
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {other_token}"}) as other:
        card = await A2ACardResolver(other, f"{base}/a2a/tech-support").get_agent_card()
        client = ClientFactory(ClientConfig(streaming=False, httpx_client=other)).create(card)
        with pytest.raises(Exception) as refused:
            await client.get_task(GetTaskRequest(id=task.id))
        assert "401" in str(refused.value)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {other_token}"}) as other:
        card = await A2ACardResolver(other, f"{base}/a2a/billing-bot").get_agent_card()
        client = ClientFactory(ClientConfig(streaming=False, httpx_client=other)).create(card)
        with pytest.raises(TaskNotFoundError):
            await client.get_task(GetTaskRequest(id=task.id))
    async def greeted() -> list[dict]:
        entries = (await http.get(f"/v1/conversations/{task.id}/transcript")).json()["entries"]
        assert entries, "not greeted yet"
        return entries

    transcript = await eventually(greeted)
    assert [e["role"] for e in transcript] == ["ai"]  # only the greeting: no refused message got in


async def test_a_client_cancels_its_task(baton):
    base, token, http = baton
    async with a2a_client(base, token) as client:
        task = await send(client, user("The app crashes"))
        canceled = await client.cancel_task(CancelTaskRequest(id=task.id))
        assert state(canceled) == "TASK_STATE_CANCELED"
        assert state(await client.get_task(GetTaskRequest(id=task.id))) == "TASK_STATE_CANCELED"
    assert (await http.get(f"/v1/conversations/{task.id}")).json()["state"] == "closed"


async def test_baton_hands_a_conversation_to_another_baton_s_agent_over_a2a(baton, channel):
    """Our own A2A client (an external agent with `protocol: a2a`) and our own A2A server, end to end: the user
    talks to the other side's tech-support agent through our channel, and it hands back when done."""
    from tests.test_routing_flow import say, snap

    base, token, http = baton
    r = await http.post("/v1/admin/agents/external", headers=ADMIN, json={
        "agent_id": "support-a2a", "protocol": "a2a", "domain": f"{base}/a2a/tech-support", "credential": token})
    assert r.status_code == 201, r.text
    conversation = f"a2a-out-{uuid.uuid4().hex[:8]}"
    await http.put(f"/v1/conversations/{conversation}/context", json={"profile": {"name": "Ada"}})
    await say(http, conversation, "hello")
    await channel.wait_count(1)
    r = await http.post(f"/v1/conversations/{conversation}/handoff",
                        json={"reason": "the app crashes", "target": {"external_agent": "support-a2a"}})
    assert r.status_code == 200, r.text

    def said() -> list[tuple[str, str]]:
        return [(m["role"], m["text"]) for m in channel.delivered() if m["conversation_id"] == conversation]

    await channel.wait_for(lambda _: any(role == "external_agent" and text.startswith(
        "Hi Ada, I'm the tech-support assistant") for role, text in said()), timeout=30)
    await say(http, conversation, "version 2.5")
    await channel.wait_for(lambda _: any(text.startswith("Thanks. That version") for _, text in said()), timeout=30)
    await say(http, conversation, "it works now, thanks")
    await channel.wait_for(lambda _: any(role == "ai" and "back" in text for role, text in said()), timeout=30)
    assert (await snap(http, conversation))["state"] == "ai"
    theirs = [text for role, text in said() if role == "external_agent"]
    assert len(theirs) == len(set(theirs)) == 3, theirs  # greeting, answer, goodbye: each once
    assert theirs[2].startswith("Glad that's sorted!")
    seqs = [m["seq"] for m in channel.delivered() if m["conversation_id"] == conversation]
    assert seqs == sorted(set(seqs))


async def test_a_streaming_client_gets_the_task_then_each_reply_and_a_person_s_later_answer(baton, registry):
    """SendStreamingMessage: the task at once, then a status update per reply until the task waits for the user.
    When the user asks for a person, the stream stays open while the conversation waits (working) and brings the
    person's answer as it is written (SubscribeToTask, from another connection, sees the same)."""
    from a2a.types import SubscribeToTaskRequest

    base, token, http = baton
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as h:
        card = await A2ACardResolver(h, f"{base}/a2a/tech-support").get_agent_card()
        assert card.capabilities.streaming
        client = ClientFactory(ClientConfig(streaming=True, httpx_client=h)).create(card)
        first = [r async for r in client.send_message(SendMessageRequest(message=user("The app crashes")))]
        assert [r.WhichOneof("payload") for r in first][0] == "task"
        last = first[-1].status_update if first[-1].WhichOneof("payload") == "status_update" else first[-1].task
        assert TaskState.Name(last.status.state) == "TASK_STATE_INPUT_REQUIRED"
        task_id = first[0].task.id
        said = [get_message_text(r.status_update.status.message) for r in first
                if r.WhichOneof("payload") == "status_update" and r.status_update.status.HasField("message")]
        if first[0].task.status.HasField("message"):
            said.insert(0, get_message_text(first[0].task.status.message))
        assert len(said) == 1 and said[0].startswith("Hi, I'm the tech-support assistant")

    # An agent that brings in a person: the demo's assistant (any local agent not named tech-support).
    _, helper_secret = registry.create_local("Helper", "helper")
    r = await http.post("/v1/admin/live-agents", headers=ADMIN,
                        json={"agent_id": "alice", "name": "Alice", "queues": ["general"]})
    assert r.status_code == 201, r.text
    alice = {"Authorization": f"Bearer {r.json()['token']}"}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {a2a_token(helper_secret)}"}, timeout=60) as h:
        card = await A2ACardResolver(h, f"{base}/a2a/helper").get_agent_card()
        client = ClientFactory(ClientConfig(streaming=True, httpx_client=h)).create(card)
        opened = [r async for r in client.send_message(SendMessageRequest(message=user("Hello")))]
        task_id = opened[0].task.id
        events: list[Any] = []

        async def follow() -> None:
            async for r in client.send_message(SendMessageRequest(message=user("I want to talk to a human",
                                                                                task_id=task_id))):
                events.append(r)

        watched: list[Any] = []

        async def watch() -> None:
            async for r in client.subscribe(SubscribeToTaskRequest(id=task_id)):
                watched.append(r)

        following = asyncio.create_task(follow())
        while (c := await http.post(f"/v1/desk/conversations/{task_id}/claim", headers=alice)).status_code != 200:
            assert c.status_code == 409, c.text
            await asyncio.sleep(0.1)
        watching = asyncio.create_task(watch())
        while not (events and watched):  # both streams are open (each has sent the task) before the person answers
            await asyncio.sleep(0.05)
        r = await http.post(f"/v1/desk/conversations/{task_id}/messages", headers=alice,
                            json={"message_id": "alice-1", "text": "Hi, Alice here. How can I help?"})
        assert r.status_code in (200, 202), r.text
        await asyncio.wait_for(following, 30)
        await asyncio.wait_for(watching, 30)

    def updates(rs: list[Any]) -> list[tuple[str, str]]:
        return [(TaskState.Name(r.status_update.status.state), get_message_text(r.status_update.status.message))
                for r in rs if r.WhichOneof("payload") == "status_update"]

    got = updates(events)
    assert got[-1] == ("TASK_STATE_INPUT_REQUIRED", "Hi, Alice here. How can I help?"), got
    assert all(state == "TASK_STATE_WORKING" for state, _ in got[:-1]), got  # waiting for a person: working
    # What the AI said before the wait is in the opening task (its history) or in an update: each message once.
    opening = [get_message_text(m) for m in events[0].task.history if m.role == Role.ROLE_AGENT]
    texts = [t for t in opening if t] + [text for _, text in got if text]
    assert "Of course, I'll bring in a person." in texts and texts.count("Hi, Alice here. How can I help?") == 1
    assert watched[0].WhichOneof("payload") == "task" and updates(watched)[-1] == got[-1]
