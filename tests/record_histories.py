"""Record the replay corpus: `python -m tests.record_histories` drives representative conversations on a fresh dev
server and writes their histories to tests/histories/<prefix>_<name>.json. Run it after a workflow change with the
next prefix (v2, v3, ...), commit the new files, and keep the old ones: they are what running conversations of
older code look like."""

from __future__ import annotations

import asyncio
import sys
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
from models.names import Signals, Updates
from tests.conftest import start_dev_server
from tests.harness import baton_worker, settings_for, snapshot, start_conversation
from tests.receiver import Receiver

HERE = Path(__file__).parent / "histories"


async def ai_chat_then_close(client, settings, cid):
    h = await start_conversation(client, settings, cid, text="Hello")
    await h.signal(Signals.SET_CONTEXT, ContextUpdate(profile={"name": "Ada"}, slots={"issue": "billing"}))
    for i, text in enumerate(["What can you do?", "thanks", "thanks"], start=2):
        await h.execute_update(Updates.SUBMIT_USER_MESSAGE, UserMessage(message_id=f"m{i}", text=text), result_type=CommandResult)
    await h.signal(Signals.USER_MESSAGE, UserMessage(message_id="m2", text="What can you do?"))  # duplicate
    await h.signal(Signals.HAND_BACK, HandBack())  # illegal: audited
    await h.execute_update(Updates.SUBMIT_CLOSE, CloseRequest(reason="resolved"), result_type=CommandResult)
    await h.result()
    return h


async def live_handoff_and_hand_back(client, settings, cid):
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


async def fallback_then_give_up(client, settings, cid):
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


async def sla_expiry_walks_the_fallbacks(client, settings, cid):
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


SCENARIOS = {
    "ai_chat_then_close": ai_chat_then_close,
    "live_handoff_and_hand_back": live_handoff_and_hand_back,
    "fallback_then_give_up": fallback_then_give_up,
    "sla_expiry_walks_the_fallbacks": sla_expiry_walks_the_fallbacks,
}


async def main(prefix: str, names: list[str]) -> None:
    env = await start_dev_server()
    try:
        async with Receiver() as channel:
            settings = settings_for("record", channel_url=channel.url, channel_secret=channel.secret)
            async with baton_worker(env.client, settings):
                for name in names or SCENARIOS:
                    handle = await SCENARIOS[name](env.client, settings, f"{prefix}-{name}".replace("_", "-"))
                    history = await handle.fetch_history()
                    (HERE / f"{prefix}_{name}.json").write_text(history.to_json())
                    print(f"wrote {prefix}_{name}.json ({len(history.events)} events)")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m tests.record_histories PREFIX [SCENARIO ...]   (PREFIX: v2, v3, ... one per change)")
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
