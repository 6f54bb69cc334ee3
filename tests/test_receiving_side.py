"""The receiving side's conversation on its own: what it sends back to the sender, on durable timers."""

from __future__ import annotations

import uuid

from activities import sealing
from activities.registry import SqliteRegistry
from models.conversation import ConversationInput, Context, PeerLink, Snapshot, State
from models.names import WORKFLOW_TYPE, workflow_id
from tests.harness import baton_worker, settings_for
from tests.receiver import Receiver


async def test_idle_handed_over_conversation_goes_back_to_the_sender(ts_env, task_queue, tmp_path, monkeypatch):
    """Idle on our side is not the end of the chat on theirs: after the inactivity timeout the sender gets a
    signed `hand_back` (not `close`), after our agent's greeting, and our side closes."""
    monkeypatch.setenv("BATON_ALLOW_PRIVATE_NETWORKS", "1")
    registry = SqliteRegistry(tmp_path / "agents.db", sealing.new_key())
    _, secret = registry.create_local("tech-support", "tech-support")
    settings = settings_for(task_queue)
    rid = f"h-{uuid.uuid4().hex[:12]}"
    async with Receiver(secret, path="/v1/agents/tech-support/events") as sender:
        peer = PeerLink(
            agent_id="tech-support", agent_name="tech-support", platform="https://a.example",
            source_conversation_id="c-1", handoff_id="hof-1", callback_url=sender.url,
        )
        async with baton_worker(ts_env.client, settings, registry):
            handle = await ts_env.client.start_workflow(
                WORKFLOW_TYPE,
                ConversationInput(conversation_id=rid, channel="platform", inactivity_timeout_seconds=600,
                                  peer=peer, context=Context(profile={"name": "Bo"})),
                id=workflow_id(rid), task_queue=task_queue, result_type=Snapshot,
            )
            final = await handle.result()  # time skips over the 10 idle minutes
    registry.close()
    assert final.state is State.CLOSED and "inactive" in final.closed_reason
    events = sender.delivered()
    assert [e["type"] for e in events] == ["message", "hand_back"]
    assert events[0]["text"].startswith("Hi Bo, I'm the tech-support assistant")
    assert events[1]["remote_conversation_id"] == rid and "inactive" in events[1]["reason"]
    assert all(r.verified for r in sender.requests)  # signed with the local agent's secret
