"""The Conversation workflow on a real dev server: replies, ordering, de-duplication, ownership, handoff, updates."""

from __future__ import annotations

import uuid

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowUpdateFailedError

from models.conversation import (
    AcceptHandoff,
    AgentMessage,
    AuditPage,
    CloseRequest,
    CommandResult,
    HandBack,
    HandoffRequest,
    HandoffTarget,
    RejectHandoff,
    Role,
    Snapshot,
    State,
    TranscriptPage,
    UserMessage,
)
from api.temporal import query as sticky_safe_query
from models.names import Queries, SearchAttributes, Signals, Updates
from tests.harness import baton_worker, eventually, settings_for, settled, snapshot, start_conversation, transcript


def cid() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


async def update(handle, name, arg) -> CommandResult:
    return await handle.execute_update(name, arg, result_type=CommandResult)


async def roles(handle) -> list[Role]:
    return [e.role for e in (await transcript(handle)).entries]


@pytest.fixture
async def baton(dev_env, task_queue, channel):
    settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret)
    async with baton_worker(dev_env.client, settings):
        yield settings


async def test_user_message_gets_the_ai_reply_at_the_channel(dev_env, baton, channel):
    handle = await start_conversation(dev_env.client, baton, cid(), text="Hello there")
    await channel.wait_count(1)
    body = channel.delivered()[0]
    assert body["role"] == "ai" and body["seq"] == 2 and "demo assistant" in body["text"]
    assert all(r.verified for r in channel.requests)
    assert await roles(handle) == [Role.USER, Role.AI]


async def test_replies_reach_the_channel_in_seq_order(dev_env, baton, channel):
    handle = await start_conversation(dev_env.client, baton, cid(), text="one", message_id="m1")
    for i in range(2, 6):
        await handle.signal(Signals.USER_MESSAGE, UserMessage(message_id=f"m{i}", text=f"message {i}"))
    await channel.wait_count(5)
    seqs = [b["seq"] for b in channel.delivered()]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    page = await transcript(handle)
    assert [e.seq for e in page.entries] == list(range(1, 11))


async def test_repeated_message_id_is_a_no_op(dev_env, baton, channel):
    handle = await start_conversation(dev_env.client, baton, cid(), text="hi", message_id="same")
    await handle.signal(Signals.USER_MESSAGE, UserMessage(message_id="same", text="hi"))
    again = await update(handle, Updates.SUBMIT_USER_MESSAGE, UserMessage(message_id="same", text="hi"))
    assert again.duplicate and again.seq is None
    await channel.wait_count(1)
    assert await roles(handle) == [Role.USER, Role.AI]


async def test_hand_back_in_ai_state_is_rejected_with_reason_and_no_trace(dev_env, baton, channel):
    handle = await start_conversation(dev_env.client, baton, cid())
    await channel.wait_count(1)
    await eventually(lambda: _delivery_done(handle))
    before = [e.event_type for e in (await handle.fetch_history()).events]
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await update(handle, Updates.SUBMIT_HAND_BACK, HandBack())
    assert "cannot hand_back in state 'ai'" in str(info.value.cause)
    after = [e.event_type for e in (await handle.fetch_history()).events]
    assert after == before


async def test_accept_for_no_pending_handoff_is_rejected(dev_env, baton):
    handle = await start_conversation(dev_env.client, baton, cid())
    with pytest.raises(WorkflowUpdateFailedError, match="Workflow update failed") as info:
        await update(handle, Updates.ACCEPT_HANDOFF, AcceptHandoff(handoff_id="nope", owner="alice"))
    assert "is not pending" in str(info.value.cause)


async def test_handoff_mutes_the_ai_until_hand_back(dev_env, baton, channel):
    handle = await start_conversation(dev_env.client, baton, cid(), text="hello")
    await channel.wait_count(1)
    result = await update(handle, Updates.SUBMIT_HANDOFF, HandoffRequest(reason="billing", target=HandoffTarget(queue="billing")))
    assert result.state is State.HANDOFF_PENDING and result.handoff_id
    # Written while waiting: kept, not answered by the AI.
    await handle.signal(Signals.USER_MESSAGE, UserMessage(message_id="w1", text="still there?"))
    accepted = await update(handle, Updates.ACCEPT_HANDOFF, AcceptHandoff(handoff_id=result.handoff_id, owner="alice"))
    assert accepted.state is State.LIVE_AGENT and accepted.owner == "alice"
    await update(handle, Updates.SUBMIT_USER_MESSAGE, UserMessage(message_id="u2", text="are you human?"))
    await update(handle, Updates.SUBMIT_AGENT_MESSAGE, AgentMessage(message_id="a1", text="Yes, Alice here.", author="alice", role=Role.LIVE_AGENT))
    await channel.wait_for(lambda rs: any(r.json["text"] == "Yes, Alice here." for r in rs))
    snap = await snapshot(handle)
    assert snap.state is State.LIVE_AGENT and snap.owner == "alice" and snap.queue == "billing"
    assert [e.role for e in (await transcript(handle)).entries if e.role is Role.AI] == [Role.AI]  # only the greeting

    await update(handle, Updates.SUBMIT_HAND_BACK, HandBack(by="alice", reason="done"))
    # The AI speaks up again after the human stretch rather than staying silent.
    await channel.wait_for(lambda rs: any("I'm back" in r.json["text"] for r in rs))
    await update(handle, Updates.SUBMIT_USER_MESSAGE, UserMessage(message_id="u3", text="thanks"))
    await channel.wait_for(lambda rs: any("welcome" in r.json["text"] for r in rs))
    audit = await handle.query(Queries.AUDIT, result_type=AuditPage)
    kinds = [e.kind for e in audit.entries]
    assert kinds.index("handoff_requested") < kinds.index("handoff_accepted") < kinds.index("handed_back")


async def test_ai_reply_in_flight_is_suppressed_when_someone_takes_over(dev_env, baton, channel):
    """The AI's answer to a message sent just before a claim never reaches the user."""
    handle = await start_conversation(dev_env.client, baton, cid(), text="hello")
    await channel.wait_count(1)
    pending = await update(handle, Updates.SUBMIT_HANDOFF, HandoffRequest(target=HandoffTarget(queue="general")))
    await update(handle, Updates.ACCEPT_HANDOFF, AcceptHandoff(handoff_id=pending.handoff_id, owner="bob"))
    for i in range(5):
        await handle.signal(Signals.USER_MESSAGE, UserMessage(message_id=f"x{i}", text=f"msg {i}"))
    await update(handle, Updates.SUBMIT_AGENT_MESSAGE, AgentMessage(message_id="b1", text="Bob here", author="bob", role=Role.LIVE_AGENT))
    await channel.wait_for(lambda rs: any(r.json["text"] == "Bob here" for r in rs))
    assert [e.role for e in (await transcript(handle)).entries].count(Role.AI) == 1


async def test_only_the_owner_can_write(dev_env, baton):
    handle = await start_conversation(dev_env.client, baton, cid())
    pending = await update(handle, Updates.SUBMIT_HANDOFF, HandoffRequest())
    await update(handle, Updates.ACCEPT_HANDOFF, AcceptHandoff(handoff_id=pending.handoff_id, owner="alice"))
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await update(handle, Updates.SUBMIT_AGENT_MESSAGE, AgentMessage(message_id="e1", text="hi", author="eve", role=Role.LIVE_AGENT))
    assert "only the owner (alice)" in str(info.value.cause)
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await update(handle, Updates.SUBMIT_AGENT_MESSAGE, AgentMessage(message_id="e2", text="hi", author="alice", role=Role.EXTERNAL_AGENT))
    assert "cannot write in state 'live_agent'" in str(info.value.cause)


async def test_second_accept_is_rejected(dev_env, baton):
    handle = await start_conversation(dev_env.client, baton, cid())
    pending = await update(handle, Updates.SUBMIT_HANDOFF, HandoffRequest())
    await update(handle, Updates.ACCEPT_HANDOFF, AcceptHandoff(handoff_id=pending.handoff_id, owner="alice"))
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await update(handle, Updates.ACCEPT_HANDOFF, AcceptHandoff(handoff_id=pending.handoff_id, owner="bob"))
    assert "not pending" in str(info.value.cause)
    assert (await snapshot(handle)).owner == "alice"


async def test_rejection_falls_back_to_the_next_target_and_stale_accept_is_refused(dev_env, baton):
    handle = await start_conversation(dev_env.client, baton, cid())
    first = await update(
        handle,
        Updates.SUBMIT_HANDOFF,
        HandoffRequest(target=HandoffTarget(queue="tier1"), fallback=[HandoffTarget(queue="tier2")]),
    )
    await update(handle, Updates.REJECT_HANDOFF, RejectHandoff(handoff_id=first.handoff_id, reason="busy"))
    snap = await snapshot(handle)
    assert snap.state is State.HANDOFF_PENDING and snap.queue == "tier2"
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await update(handle, Updates.ACCEPT_HANDOFF, AcceptHandoff(handoff_id=first.handoff_id, owner="late"))
    assert "stale" in str(info.value.cause)
    await update(handle, Updates.ACCEPT_HANDOFF, AcceptHandoff(handoff_id=snap.pending_handoff.handoff_id, owner="t2"))
    assert (await snapshot(handle)).owner == "t2"


async def test_last_fallback_failing_returns_to_the_ai_which_answers_what_was_waiting(dev_env, baton, channel):
    handle = await start_conversation(dev_env.client, baton, cid(), text="hello")
    await channel.wait_count(1)
    pending = await update(handle, Updates.SUBMIT_HANDOFF, HandoffRequest(target=HandoffTarget(queue="q")))
    await update(handle, Updates.SUBMIT_USER_MESSAGE, UserMessage(message_id="w", text="thank you"))
    await update(handle, Updates.REJECT_HANDOFF, RejectHandoff(handoff_id=pending.handoff_id))
    assert (await snapshot(handle)).state is State.AI
    await channel.wait_for(lambda rs: any("welcome" in r.json["text"] for r in rs))
    assert any("nobody is available" in b["text"] for b in channel.delivered())


async def test_close_delivers_a_notice_ends_the_run_and_refuses_more(dev_env, baton, channel):
    handle = await start_conversation(dev_env.client, baton, cid())
    await update(handle, Updates.SUBMIT_CLOSE, CloseRequest(reason="resolved"))
    result = await handle.result()
    assert result.state is State.CLOSED and result.closed_reason == "resolved"
    await channel.wait_for(lambda rs: any("closed" in r.json["text"] for r in rs))
    with pytest.raises(Exception):
        await update(handle, Updates.SUBMIT_HANDOFF, HandoffRequest())


async def test_illegal_signal_is_audited_not_applied(dev_env, baton):
    handle = await start_conversation(dev_env.client, baton, cid())
    await handle.signal(Signals.HAND_BACK, HandBack())
    audit = await eventually(lambda: _audit_kinds(handle, "signal_rejected"))
    assert audit and (await snapshot(handle)).state is State.AI


async def test_state_is_searchable_and_shown_in_the_ui(dev_env, baton):
    conversation = cid()
    handle = await start_conversation(dev_env.client, baton, conversation)
    pending = await update(handle, Updates.SUBMIT_HANDOFF, HandoffRequest(target=HandoffTarget(queue="vip")))
    query = f'BatonState="handoff_pending" AND BatonQueue="vip" AND WorkflowId="{handle.id}"'
    found = await eventually(lambda: _list(dev_env.client, query))
    assert [w.id for w in found] == [handle.id]
    desc = await handle.describe()
    assert desc.typed_search_attributes.get(SearchAttributes.HANDOFFS) == 1
    assert desc.typed_search_attributes.get(SearchAttributes.WAITING_SINCE) is not None
    metadata = await handle.query("__temporal_workflow_metadata")
    assert "**State:** handoff_pending" in metadata.current_details
    await update(handle, Updates.ACCEPT_HANDOFF, AcceptHandoff(handoff_id=pending.handoff_id, owner="alice"))
    found = await eventually(lambda: _list(dev_env.client, f'BatonOwner="alice" AND WorkflowId="{handle.id}"'))
    assert found


async def _has_roles(handle, n):
    return len((await transcript(handle)).entries) >= n


async def _audit_kinds(handle, kind):
    audit = await handle.query(Queries.AUDIT, result_type=AuditPage)
    return [e for e in audit.entries if e.kind == kind]


async def _list(client, query):
    return [w async for w in client.list_workflows(query)]


async def test_channel_400_is_audited_and_the_next_message_still_goes_out(dev_env, baton, channel):
    channel.script(400)
    handle = await start_conversation(dev_env.client, baton, cid(), text="hello")
    await channel.wait_for(lambda rs: len(rs) == 1)
    await handle.signal(Signals.USER_MESSAGE, UserMessage(message_id="m2", text="thanks"))
    await channel.wait_count(1)
    assert "welcome" in channel.delivered()[0]["text"] and len(channel.requests) == 2
    rejected = await eventually(lambda: _audit_kinds(handle, "delivery_rejected"))
    assert rejected[0].detail["status"] == 400 and rejected[0].detail["seq"] == 2


async def test_channel_410_stops_delivery_but_the_transcript_keeps_everything(dev_env, baton, channel):
    channel.script(410)
    handle = await start_conversation(dev_env.client, baton, cid(), text="hello")
    await eventually(lambda: _audit_kinds(handle, "channel_gone"))
    await update(handle, Updates.SUBMIT_USER_MESSAGE, UserMessage(message_id="m2", text="thanks"))
    await eventually(lambda: _has_roles(handle, 4))
    assert len(channel.requests) == 1
    assert [e.role for e in (await transcript(handle)).entries] == [Role.USER, Role.AI, Role.USER, Role.AI]


async def _delivery_done(handle):
    """Quiet: the delivery done, and no activity (a delivery, an AI turn, a stream bell) or workflow task pending."""
    events = [e.event_type for e in (await handle.fetch_history()).events]
    if not (events[-1] == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED in events):
        return False
    await settled(handle, timeout=5)
    return events == [e.event_type for e in (await handle.fetch_history()).events]


async def test_the_410_rule_holds_per_conversation_across_two_conversations_and_a_worker_restart(dev_env, task_queue, channel):
    """A 410 answers for the conversation it was sent for: that conversation delivers nothing more, durably (a new
    worker does not forget it), while another conversation on the same worker, and a new one, are delivered."""
    settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret)

    def sent_for(handle) -> list[int]:
        return [r.json["seq"] for r in channel.requests if r.json["conversation_id"] == handle.id.removeprefix("conversation-")]

    async with baton_worker(dev_env.client, settings):
        channel.script(410)
        gone = await start_conversation(dev_env.client, settings, cid(), text="hello")
        await eventually(lambda: _audit_kinds(gone, "channel_gone"))
        other = await start_conversation(dev_env.client, settings, cid(), text="hello")
        await channel.wait_count(1)
    async with baton_worker(dev_env.client, settings):  # a restart: a new worker process knows nothing in memory
        for handle in (gone, other):
            await handle.signal(Signals.USER_MESSAGE, UserMessage(message_id="m2", text="thanks"))
        third = await start_conversation(dev_env.client, settings, cid(), text="hello")
        # Recovery speed after a restart is the crash benchmark's business (bench/worker_crash.py), not this test's.
        await channel.wait_count(3, timeout=40)

        async def entries(handle):
            # As the API reads after a restart: a query the dead worker's sticky queue would stall is asked again.
            page = await sticky_safe_query(dev_env.client, handle.id.removeprefix("conversation-"), Queries.TRANSCRIPT,
                                           result_type=TranscriptPage)
            return page.entries

        async def has(handle, n):
            return len(await entries(handle)) >= n

        await eventually(lambda: has(gone, 4))
        await eventually(lambda: has(other, 4))
        assert [e.role for e in await entries(gone)] == [Role.USER, Role.AI, Role.USER, Role.AI]
        audit = await sticky_safe_query(dev_env.client, gone.id.removeprefix("conversation-"), Queries.AUDIT,
                                        result_type=AuditPage)
        assert [e.kind for e in audit.entries].count("channel_gone") == 1
    assert sent_for(gone) == [2]  # the one attempt that met the 410; its later reply (seq 4) was not sent
    assert sent_for(other) == [2, 4] and sent_for(third) == [2]


def test_a_handoff_still_being_routed_cannot_be_rejected_yet():
    """The reject validator refuses while routing decides (as the accept validator does): a fallback ladder walked
    on a handoff with no target would leave the user waiting on nothing. Validators read only the state."""
    from datetime import datetime, timezone

    from models.conversation import ConversationState, PendingHandoff, RejectHandoff, State
    from workflows.conversation import Conversation, Reject

    now = datetime(2026, 11, 30, tzinfo=timezone.utc)
    pending = PendingHandoff(handoff_id="h1", reason="help", target=None, requested_at=now, deadline=now, from_seq=1,
                             routed=False)
    conversation = Conversation.__new__(Conversation)
    conversation.s = ConversationState(conversation_id="c1", channel="web", created_at=now, last_activity_at=now,
                                       state=State.HANDOFF_PENDING, owner=None, pending=pending)
    with pytest.raises(Reject, match="still being routed"):
        conversation._check_reject(RejectHandoff(handoff_id="h1"))
    conversation.s.pending = pending.model_copy(update={"routed": True})
    conversation._check_reject(RejectHandoff(handoff_id="h1"))  # routed: the reject is taken


async def test_a_retry_of_a_carried_first_message_in_the_next_runs_first_activation_is_a_duplicate(
    dev_env, baton, channel
):
    """A closed run continues as new with what the user wrote after the close (`first_messages`). A retry of one of
    them (same message_id) may reach the new run in its very first activation, where signal handlers run before
    `run`: the carried message is taken first (in the workflow's init) and the retry is the duplicate. (Seen once
    in the suite before the fix: the retry's text was recorded under the id and the carried message dropped.)"""
    first = UserMessage(message_id="next", text="I want to talk to a human")
    handle = await start_conversation(dev_env.client, baton, cid(), text="a retry, other text", message_id="next",
                                      first_messages=[first])
    await channel.wait_count(1)
    users = [(e.message_id, e.text) for e in (await transcript(handle)).entries if e.role is Role.USER]
    assert users == [("next", "I want to talk to a human")]
