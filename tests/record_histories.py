"""Record the replay corpus: `python -m tests.record_histories` drives representative conversations on a fresh dev
server and writes their histories to tests/histories/<prefix>_<name>.json. Run it after a workflow change with the
next prefix (v2, v3, ...), commit the new files, and keep the old ones: they are what running conversations of
older code look like."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import uuid
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
from models.names import Signals, Updates, workflow_id
from tests.conftest import free_port, start_dev_server
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
        if snap.pending_handoff:
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


async def external_handoff_and_hand_back(client, settings, cid, http, **_):
    """The embedded demo's path: this install hands the conversation to its own `tech-support` over loopback.
    Returns both conversations: ours, and the one the receiving side opened."""

    async def say(text):
        r = await http.post(f"/v1/conversations/{cid}/messages", json={"message_id": uuid.uuid4().hex, "text": text})
        assert r.status_code == 202, r.text

    async def state(conversation):
        return (await http.get(f"/v1/conversations/{conversation}")).json()

    await http.put(f"/v1/conversations/{cid}/context", json={"profile": {"name": "Ada"}, "auth": {"token": "t"}})
    await say("The app crashes with an error")
    while (snap := await state(cid))["state"] != "external_agent":
        await asyncio.sleep(0.1)
    rid = snap["external"]["remote_conversation_id"]
    await say("version 2.3.1")
    await say("it works now, thanks")
    while (await state(cid))["state"] != "ai" or (await state(rid))["state"] != "closed":
        await asyncio.sleep(0.1)
    await http.post(f"/v1/conversations/{cid}/close")
    ours = client.get_workflow_handle(workflow_id(cid))
    await ours.result()
    return ours, client.get_workflow_handle(workflow_id(rid))


SCENARIOS = {
    "ai_chat_then_close": ai_chat_then_close,
    "live_handoff_and_hand_back": live_handoff_and_hand_back,
    "fallback_then_give_up": fallback_then_give_up,
    "sla_expiry_walks_the_fallbacks": sla_expiry_walks_the_fallbacks,
    "external_handoff_and_hand_back": external_handoff_and_hand_back,
}


async def main(prefix: str, names: list[str]) -> None:
    env = await start_dev_server()
    os.environ["BATON_ALLOW_PRIVATE_NETWORKS"] = "1"  # the loopback handoff
    port = free_port()
    try:
        with tempfile.TemporaryDirectory() as home:
            async with Receiver() as channel:
                settings = settings_for(
                    "record", channel_url=channel.url, channel_secret=channel.secret, home=Path(home),
                    public_url=f"http://127.0.0.1:{port}", demo_tech_agent="tech-support",
                )
                registry = SqliteRegistry(settings.home / "agents.db", settings.secret_key)
                _, secret = registry.create_local("tech-support", "tech-support")
                registry.save_external("tech-support", secret, settings.public_url)
                async with baton_worker(env.client, settings, registry), baton_api(
                    env.client, settings, registry, port=port
                ) as http:
                    for name in names or SCENARIOS:
                        cid = f"{prefix}-{name}".replace("_", "-")
                        handles = await SCENARIOS[name](env.client, settings, cid, http=http)
                        for suffix, handle in zip(("", "_receiving_side"), handles if isinstance(handles, tuple) else (handles,)):
                            history = await handle.fetch_history()
                            (HERE / f"{prefix}_{name}{suffix}.json").write_text(history.to_json())
                            print(f"wrote {prefix}_{name}{suffix}.json ({len(history.events)} events)")
                registry.close()
    finally:
        await env.shutdown()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m tests.record_histories PREFIX [SCENARIO ...]   (PREFIX: v2, v3, ... one per change)")
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
