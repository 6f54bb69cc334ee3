"""Durable timers on the time-skipping server: inactivity closes the conversation, the handoff SLA falls back."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError

from models import notices
from models.config import Waiting, default_config
from models.conversation import (
    AcceptHandoff,
    AuditPage,
    CloseRequest,
    CommandResult,
    HandoffRequest,
    HandoffTarget,
    Role,
    State,
    UserMessage,
)
from models.names import Queries, Signals, Updates
from tests.harness import baton_worker, settings_for, skip, snapshot, start_conversation, transcript


def cid() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def test_inactivity_closes_after_30_minutes_with_a_notice(ts_env, task_queue):
    settings = settings_for(task_queue)
    async with baton_worker(ts_env.client, settings):
        handle = await start_conversation(ts_env.client, settings, cid(), text="hello")
        result = await handle.result()  # the server skips time until the inactivity timer fires
        assert result.state is State.CLOSED and result.closed_reason == "inactive for 30 minutes"
        idle = result.last_activity_at - result.created_at
        page = await transcript(handle)
        notice = page.entries[-1]
        assert notice.role is Role.SYSTEM and "closed" in notice.text
        assert timedelta(minutes=30) <= notice.at - result.last_activity_at < timedelta(minutes=31)
        assert idle < timedelta(minutes=1)


async def test_activity_pushes_the_inactivity_deadline_back(ts_env, task_queue):
    settings = settings_for(task_queue)
    async with baton_worker(ts_env.client, settings):
        handle = await start_conversation(ts_env.client, settings, cid(), text="hello")
        await skip(ts_env, handle, timedelta(minutes=20))
        await handle.signal(Signals.USER_MESSAGE, UserMessage(message_id="m2", text="still here"))
        await skip(ts_env, handle, timedelta(minutes=20))
        assert (await snapshot(handle)).state is State.AI  # 40 minutes in, but only 20 idle
        result = await handle.result()
        assert result.state is State.CLOSED
        assert len([e for e in (await transcript(handle)).entries if e.role is Role.USER]) == 2


async def test_nobody_accepting_within_the_sla_walks_the_fallback_list_then_returns_to_the_ai(ts_env, task_queue):
    settings = settings_for(task_queue)
    # No position re-counts (tested in test_routing_flow): with the default minute, the second re-count's timer
    # fires at 120 s together with the SLA, and the fallback cancels it. The time-skipping server refuses the
    # completion of a task that cancels a timer it fired while the task was out ("invalid history builder state
    # for action", temporalio/sdk-java#3088) and the run is stranded, which also stalls every later skip (seen
    # once, in a fresh-clone run at 5f457e7: this test and the next one failed).
    quiet = default_config().model_copy(update={"waiting": Waiting(position_update_seconds=0)})
    async with baton_worker(ts_env.client, settings, config=quiet):
        handle = await start_conversation(ts_env.client, settings, cid(), text="hello")
        await handle.signal(
            Signals.REQUEST_HANDOFF,
            HandoffRequest(reason="billing", target=HandoffTarget(queue="tier1"),
                           fallback=[HandoffTarget(queue="tier2")], sla_seconds=120),
        )
        await skip(ts_env, handle, timedelta(seconds=150))
        snap = await snapshot(handle)
        assert snap.state is State.HANDOFF_PENDING and snap.queue == "tier2"
        await skip(ts_env, handle, timedelta(seconds=100))  # every target of the ladder gets the request's SLA
        assert (await snapshot(handle)).state is State.AI
        snap = await snapshot(handle)
        assert snap.state is State.AI and snap.pending_handoff is None
        audit = await handle.query(Queries.AUDIT, result_type=AuditPage)
        failed = [e.detail["target"] for e in audit.entries if e.kind == "handoff_failed"]
        assert failed == ["queue:tier1", "queue:tier2"]
        texts = [e.text for e in (await transcript(handle)).entries if e.role is Role.SYSTEM]
        assert any("nobody is available" in t for t in texts)
        # End it while its worker runs: a live timer with no worker would stall time skipping for later tests.
        await handle.signal(Signals.CLOSE, CloseRequest())
        await handle.result()


async def test_waiting_for_a_handoff_longer_than_the_inactivity_timeout_does_not_close(ts_env, task_queue):
    settings = settings_for(task_queue)
    # No position re-counts here (positions are tested in test_routing_flow). With them, the time-skipping server
    # works off one a minute during a skip (a timer, two workflow tasks and an activity each: 45 in the first
    # skip), and in the full suite that first skip now and then never returned (twice in seven suites; never in 12
    # runs alone; the cause is not found: the run had not continued as new by then). Without them the skip has
    # next to nothing to work off.
    quiet = default_config().model_copy(update={"waiting": Waiting(position_update_seconds=0)})
    async with baton_worker(ts_env.client, settings, config=quiet):
        handle = await start_conversation(ts_env.client, settings, cid(), text="hello")
        await handle.signal(
            Signals.REQUEST_HANDOFF, HandoffRequest(target=HandoffTarget(queue="night"), sla_seconds=3600)
        )
        await skip(ts_env, handle, timedelta(minutes=45))
        snap = await snapshot(handle)
        assert snap.state is State.HANDOFF_PENDING and snap.queue == "night"
        # After the SLA the user is back with the AI, and the inactivity clock starts from that moment.
        await skip(ts_env, handle, timedelta(minutes=20))
        snap = await snapshot(handle)
        assert snap.state is State.AI
        result = await handle.result()
        assert result.state is State.CLOSED and result.closed_reason == "inactive for 30 minutes"


async def test_a_close_s_rating_question_is_open_for_its_time_then_the_run_ends_unrated(ts_env, task_queue):
    """A live agent's close asks the rating question; the closed run takes only its answer (an update with any
    other text is refused) for `rating_seconds`, then ends with no rating."""
    settings = settings_for(task_queue)
    quiet = default_config().model_copy(update={"waiting": Waiting(position_update_seconds=0)})
    async with baton_worker(ts_env.client, settings, config=quiet):
        handle = await start_conversation(ts_env.client, settings, cid(), text="hello")
        handoff = await handle.execute_update(
            Updates.SUBMIT_HANDOFF, HandoffRequest(target=HandoffTarget(queue="general"), sla_seconds=3600),
            result_type=CommandResult)
        await handle.execute_update(Updates.ACCEPT_HANDOFF, AcceptHandoff(handoff_id=handoff.handoff_id, owner="ann"),
                                    result_type=CommandResult)
        await handle.execute_update(
            Updates.SUBMIT_CLOSE, CloseRequest(by="ann", rating_question="How did Ann do? 1-5", rating_seconds=600),
            result_type=CommandResult)
        snap = await snapshot(handle)
        assert snap.state is State.CLOSED and snap.rating_open
        closed_at = (await transcript(handle)).entries[-1].at
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(Updates.SUBMIT_USER_MESSAGE, UserMessage(message_id="x", text="hello?"),
                                        result_type=CommandResult)
        assert "takes only an answer 1-5" in str(refused.value.cause)
        await skip(ts_env, handle, timedelta(minutes=9))
        assert (await snapshot(handle)).rating_open  # 9 of its 10 minutes: still open
        result = await handle.result()  # the server skips to the end of the question's time
        assert result.state is State.CLOSED and not result.rating_open
        texts = [e.text for e in (await transcript(handle)).entries]
        assert texts[-2:] == [notices.CLOSED, "How did Ann do? 1-5"] and "hello?" not in texts
        audit = await handle.query(Queries.AUDIT, result_type=AuditPage)
        assert "rated" not in [e.kind for e in audit.entries]
        history = await handle.fetch_history()
        ended = history.events[-1].event_time.ToDatetime(tzinfo=closed_at.tzinfo)
        assert timedelta(minutes=10) <= ended - closed_at < timedelta(minutes=11)
