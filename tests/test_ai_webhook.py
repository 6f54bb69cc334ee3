"""The HTTP webhook adapter for a customer's bot: a fake bot speaking real HTTP on loopback."""

from __future__ import annotations

import uuid

import pytest

from models.conversation import AuditPage, Role, State, UserMessage
from models.names import Queries, Signals
from tests.harness import baton_worker, eventually, settings_for, snapshot, start_conversation, transcript
from tests.receiver import Receiver


@pytest.fixture
async def bot():
    async with Receiver(path="/bot") as receiver:
        yield receiver


@pytest.fixture
async def baton(dev_env, task_queue, bot, channel):
    settings = settings_for(
        task_queue, ai_agent=bot.url, ai_agent_secret=bot.secret, channel_url=channel.url, channel_secret=channel.secret
    )
    async with baton_worker(dev_env.client, settings):
        yield settings


def cid() -> str:
    return f"bot-{uuid.uuid4().hex[:10]}"


async def test_bot_reply_reaches_the_channel_after_a_retry_with_the_same_id(dev_env, baton, bot, channel):
    bot.script(503, (200, {}, {"text": "Bot here"}))
    await start_conversation(dev_env.client, baton, cid(), text="hello")
    await channel.wait_count(1)
    assert channel.delivered()[0]["text"] == "Bot here"
    assert len(bot.requests) == 2 and all(r.verified for r in bot.requests)
    assert bot.requests[0].webhook_id == bot.requests[1].webhook_id
    turn = bot.requests[1].json
    assert turn["message"]["text"] == "hello" and turn["conversation_id"].startswith("bot-")
    # Only the documented turn: Baton's own stream bell and routing inputs never reach the bot.
    assert set(turn) == {"conversation_id", "channel", "message", "history", "profile", "slots",
                         "resumed_after_handoff", "agent", "welcome", "handoff_reason", "handoff_summary"}


async def test_bot_handoff_event_with_params_starts_a_handoff(dev_env, baton, bot):
    bot.script((200, {}, {"text": "Passing you on", "handoff": {"reason": "refund", "params": {"amount": 50}}}))
    handle = await start_conversation(dev_env.client, baton, cid(), text="I want my money back")
    snap = await eventually(lambda: _pending(handle))
    assert snap.pending_handoff.reason == "refund" and snap.pending_handoff.params == {"amount": 50}
    audit = await handle.query(Queries.AUDIT, result_type=AuditPage)
    requested = [e for e in audit.entries if e.kind == "handoff_requested"]
    assert requested[0].detail["by"] == "ai" and requested[0].detail["params"] == {"amount": 50}


@pytest.mark.parametrize(
    "answer", [(400, {}, {"error": "bad"}), (200, {}, {"text": 5}), (200, {}, b"not json")], ids=["400", "bad-type", "not-json"]
)
async def test_bot_failing_for_good_tells_the_user_and_is_audited(dev_env, baton, bot, channel, answer):
    bot.script(answer)
    handle = await start_conversation(dev_env.client, baton, cid(), text="hello")
    await channel.wait_count(1)
    assert channel.delivered()[0]["role"] == "system" and "can't answer" in channel.delivered()[0]["text"]
    assert len(bot.requests) == 1  # not retried
    audit = await handle.query(Queries.AUDIT, result_type=AuditPage)
    assert [e.kind for e in audit.entries].count("ai_failed") == 1
    # The conversation goes on: the next message is answered.
    bot.script((200, {}, {"text": "Recovered"}))
    await handle.signal(Signals.USER_MESSAGE, UserMessage(message_id="m2", text="again"))
    await channel.wait_count(2)
    assert [e.role for e in (await transcript(handle)).entries] == [Role.USER, Role.SYSTEM, Role.USER, Role.AI]


async def _pending(handle):
    snap = await snapshot(handle)
    return snap if snap.state is State.HANDOFF_PENDING else None


async def test_the_bot_gets_the_transcript_window_up_to_the_message_it_answers(dev_env, baton, bot, channel):
    """The window is read from the workflow by the activity (not carried in its input, which would be written to
    history on every turn): every earlier entry and the message itself, nothing said after it."""
    bot.script(*[(200, {}, {"text": f"answer {i}"}) for i in range(3)])
    handle = await start_conversation(dev_env.client, baton, cid(), text="first")
    await channel.wait_count(1)
    await handle.signal(Signals.USER_MESSAGE, UserMessage(message_id="m2", text="second"))
    await channel.wait_count(2)
    await handle.signal(Signals.USER_MESSAGE, UserMessage(message_id="m3", text="third"))
    await channel.wait_count(3)
    turns = [r.json for r in bot.requests]
    assert [[e["text"] for e in t["history"]] for t in turns] == [
        ["first"], ["first", "answer 0", "second"], ["first", "answer 0", "second", "answer 1", "third"],
    ]
    assert [t["message"]["text"] for t in turns] == ["first", "second", "third"]


async def test_a_busy_bot_is_asked_again_after_its_retry_after(dev_env, baton, bot, channel):
    bot.script((429, {"Retry-After": "2"}, {"error": "slow down"}), (200, {}, {"text": "Now I can answer"}))
    await start_conversation(dev_env.client, baton, cid(), text="hello")
    await channel.wait_count(1, timeout=20)
    assert [r.status for r in bot.requests] == [429, 200]
    # The activity's own retry interval is 0.5 s: the gap is the bot's Retry-After.
    assert bot.requests[1].at - bot.requests[0].at >= 1.9
    assert bot.requests[0].webhook_id == bot.requests[1].webhook_id
