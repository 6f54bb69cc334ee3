"""Continue-as-new forced by a low history threshold keeps the whole transcript and all pending input."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.contrib.pydantic import pydantic_data_converter

from models.conversation import ConversationInput, UserMessage
from models.names import SearchAttributes, Signals, workflow_id
from devkit.temporal import start_dev_server
from tests.harness import baton_api, baton_worker, eventually, settings_for, start_conversation
from tests.receiver import Receiver

MESSAGES = 40


@pytest_asyncio.fixture(scope="module")
async def small_history_env():
    env = await start_dev_server("--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=60")
    yield env
    await env.shutdown()


async def test_continue_as_new_keeps_transcript_and_pending_input(small_history_env, task_queue):
    client = small_history_env.client
    async with Receiver() as channel:
        # A flaky channel keeps deliveries pending while the history grows past the threshold.
        channel.script(*[(503, {"Retry-After": "1"})] * 3)
        settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret)
        async with baton_worker(client, settings), baton_api(client, settings) as http:
            conversation = f"can-{uuid.uuid4().hex[:10]}"
            handle = await start_conversation(client, settings, conversation, text="message 0", message_id="u0")
            for i in range(1, MESSAGES):
                await handle.signal(Signals.USER_MESSAGE, UserMessage(message_id=f"u{i}", text=f"message {i}"))
            await channel.wait_count(MESSAGES, timeout=90)

            entries, after = [], 0
            while True:
                page = (await http.get(f"/v1/conversations/{conversation}/transcript", params={"after": after, "limit": 7})).json()
                if not page["entries"]:
                    break
                entries += page["entries"]
                after = page["next_after"]

    assert [e["seq"] for e in entries] == list(range(1, 2 * MESSAGES + 1))
    assert sorted(e["message_id"] for e in entries if e["role"] == "user") == sorted(f"u{i}" for i in range(MESSAGES))
    delivered = channel.delivered()
    assert len(delivered) == len({d["seq"] for d in delivered}) == MESSAGES  # every AI reply once

    runs = [w async for w in client.list_workflows(f'WorkflowId="{handle.id}"')]
    carried = []
    for run in runs:
        history = await client.get_workflow_handle(handle.id, run_id=run.run_id).fetch_history()
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                payload = event.workflow_execution_continued_as_new_event_attributes.input.payloads[0]
                carried.append(pydantic_data_converter.payload_converter.from_payload(payload, ConversationInput).carried)
    assert len(runs) >= 2 and carried
    assert any(c.outbox or c.inbox for c in carried), "no continue-as-new happened with input still pending"
    assert all(len(c.transcript) <= 50 + len(c.outbox) + len(c.inbox) for c in carried)


async def test_event_stream_goes_on_across_continue_as_new(small_history_env, task_queue):
    """A stream open while the conversation continues as new (several times) gets every entry once, in order."""
    from tests.sse import open_stream

    client = small_history_env.client
    async with Receiver() as channel:
        settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret)
        async with baton_worker(client, settings), baton_api(client, settings) as http:
            conversation = f"can-sse-{uuid.uuid4().hex[:10]}"
            handle = await start_conversation(client, settings, conversation, text="message 0", message_id="u0")
            first_run = (await handle.describe()).run_id
            async with open_stream(http, f"/v1/conversations/{conversation}/events") as stream:
                for i in range(1, MESSAGES):
                    r = await http.post(f"/v1/conversations/{conversation}/messages",
                                        json={"message_id": f"u{i}", "text": f"message {i}"})
                    assert r.status_code == 202
                    if i == MESSAGES // 2:
                        # Half said: the conversation continues as new while the stream is open, then the rest.
                        async def new_run():
                            return (await handle.describe()).run_id != first_run

                        await eventually(new_run, timeout=60)
                seen = await stream.until(lambda e: e.event == "entry" and e.data["seq"] == 2 * MESSAGES, timeout=90)
    seqs = [e.data["seq"] for e in seen if e.event == "entry"]
    assert seqs == list(range(1, 2 * MESSAGES + 1))
    assert [int(e.id) for e in seen if e.event == "entry"] == seqs


async def test_an_idle_run_continues_as_new_between_messages_and_the_next_run_rings_no_bell(dev_env, task_queue):
    """PATCH_IDLE_CONTINUE: a chat with the AI whose run has IDLE_RUN_EVENTS events continues as new in the pause after
    a reply (before RUN_EVENTS, where the hand-over came with the next message and held its reply back); the next run
    knows the stream store has the state and starts no bell of its own; and (PATCH_LEAN_RUNS) it starts with one patch
    marker and upserts none of the search attributes it inherited."""
    from workflows.options import IDLE_RUN_EVENTS, RUN_EVENTS

    client = dev_env.client
    async with Receiver() as channel:
        settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret)
        async with baton_worker(client, settings):
            conversation = f"can-idle-{uuid.uuid4().hex[:10]}"
            handle = await start_conversation(client, settings, conversation, text="message 0", message_id="u0")
            first = client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id)
            await channel.wait_count(1, timeout=30)
            sent = 1
            while (await first.describe()).status.name == "RUNNING":
                assert sent < 40, "the first run never continued as new"
                await handle.signal(Signals.USER_MESSAGE, UserMessage(message_id=f"u{sent}", text=f"message {sent}"))
                sent += 1
                await channel.wait_count(sent, timeout=30)
                await asyncio.sleep(0.3)  # a pause after the reply, as a person takes to read it
            # One more message, answered by the next run.
            await handle.signal(Signals.USER_MESSAGE, UserMessage(message_id=f"u{sent}", text=f"message {sent}"))
            sent += 1
            await channel.wait_count(sent, timeout=30)

    events = (await first.fetch_history()).events
    assert events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    assert IDLE_RUN_EVENTS <= len(events) < RUN_EVENTS, len(events)
    payload = events[-1].workflow_execution_continued_as_new_event_attributes.input.payloads[0]
    carried = pydantic_data_converter.payload_converter.from_payload(payload, ConversationInput).carried
    assert carried.rung and not carried.inbox and not carried.outbox
    # The next run: its first activity is the AI's answer to the next message, not a bell for a state already rung.
    runs = [w async for w in client.list_workflows(f'WorkflowId="{handle.id}"')]
    second = next(r for r in runs if r.run_id != handle.first_execution_run_id)
    history = (await client.get_workflow_handle(handle.id, run_id=second.run_id).fetch_history()).events
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for e in history
                 if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    assert scheduled[:2] == ["ai_respond", "deliver_to_channel"], scheduled
    assert "ring_bell" not in scheduled
    delivered = channel.delivered()
    assert len(delivered) == len({d["seq"] for d in delivered}) == sent  # every reply once
    # PATCH_LEAN_RUNS: the next run starts with one patch marker and its automatic upsert, and upserts none of the
    # search attributes it inherited (they are the first run's, unchanged): the UI still sees them.
    assert patch_markers(history) == ["lean-runs"]
    assert upserted_keys(history) == [["TemporalChangeVersion"]]
    attrs = (await client.get_workflow_handle(handle.id, run_id=second.run_id).describe()).typed_search_attributes
    assert (attrs.get(SearchAttributes.STATE), attrs.get(SearchAttributes.OWNER), attrs.get(SearchAttributes.CHANNEL),
            attrs.get(SearchAttributes.HANDOFFS)) == ("ai", "ai", "web", 0)


async def test_a_conversation_the_api_starts_upserts_no_search_attribute_it_started_with(dev_env, task_queue):
    """PATCH_LEAN_RUNS: the API starts a conversation with its search attributes; the run takes them as published
    (one patch marker, one automatic upsert, none of Baton's), and a change (a handoff) still upserts what changed."""
    client = dev_env.client
    async with Receiver() as channel:
        settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret)
        async with baton_worker(client, settings), baton_api(client, settings) as http:
            conversation = f"lean-{uuid.uuid4().hex[:10]}"
            r = await http.post(f"/v1/conversations/{conversation}/messages", json={"message_id": "u0", "text": "hi"})
            assert r.status_code == 202, r.text
            await channel.wait_count(1, timeout=30)
            handle = client.get_workflow_handle(workflow_id(conversation))
            history = (await handle.fetch_history()).events
            assert patch_markers(history) == ["lean-runs"]
            assert upserted_keys(history) == [["TemporalChangeVersion"]]
            r = await http.post(f"/v1/conversations/{conversation}/handoff", json={"reason": "a person, please"})
            assert r.status_code in (200, 202), r.text

            async def waiting():
                attrs = (await handle.describe()).typed_search_attributes
                return attrs.get(SearchAttributes.STATE) == "handoff_pending"

            await eventually(waiting, timeout=30)
    changed = upserted_keys((await handle.fetch_history()).events)[1:]
    assert any("BatonState" in keys for keys in changed), changed
    assert all("BatonChannel" not in keys for keys in changed), changed


def patch_markers(events) -> list[str]:
    return [json.loads(p.data)["id"] for e in events
            if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED and e.marker_recorded_event_attributes.marker_name
            == "core_patch" for p in e.marker_recorded_event_attributes.details["patch-data"].payloads]


def upserted_keys(events) -> list[list[str]]:
    return [sorted(e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields)
            for e in events if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES]
