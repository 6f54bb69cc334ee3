"""BATON_AI_AGENT=openai: any OpenAI-compatible model as the AI agent, the handoff as a tool call. A fake provider
speaks real Chat Completions over loopback HTTP; Baton's worker and API are real, on the dev server."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from activities.llm import OpenAIAgent, _Completion
from activities.routing import decide
from models.config import AiAgentConfig, ConfigError, load_config
from models.conversation import AgentTurn, AuditPage, Context, Role, State, TranscriptEntry, UserMessage
from models.names import Queries, Signals
from models.routing import RouteRequest
from runtime.settings import Settings
from tests.fake_openai import FakeProvider, completion, error, tool_call
from tests.harness import baton_api, baton_worker, eventually, settings_for, snapshot, start_conversation
# The API-level helpers of the routing flow's tests: send a message, read the snapshot and audit, wait in a queue.
from tests.test_routing_flow import audit, say, snap, waiting_in

CONFIG = """\
version: 1
queues:
  general: {}
  billing: {}
  failures: {}
routes:
  - name: billing
    when: {params: {topic: billing}}
    to: {queue: billing}
  - name: default
    to: {queue: general}
ai_failure:
  to: {queue: failures}
ai_agent:
  system_prompt: "You are the assistant of ACME. Be brief."
  handoff_tool:
    description: "Hand the conversation to a person when the user asks for one or when you cannot help."
    parameters:
      topic: {type: string, enum: [billing, technical, other]}
      urgency: {type: string, enum: [low, high]}
    required: [topic]
  temperature: 0.2
"""
API_KEY = "sk-test-provider-key-0123456789"


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "baton.yaml"
    path.write_text(CONFIG)
    return load_config(path)


@pytest.fixture
async def model():
    async with FakeProvider() as provider:
        yield provider


@pytest.fixture
def settings(task_queue, channel, model):
    return settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret, ai_agent="openai",
                        openai_base_url=model.openai_base_url, openai_api_key=SecretStr(API_KEY),
                        ai_model="fake-model-1")


@pytest.fixture
async def http(dev_env, settings, registry, config):
    async with baton_worker(dev_env.client, settings, registry, config=config), baton_api(
        dev_env.client, settings, registry, config=config
    ) as client:
        yield client


def cid() -> str:
    return f"llm-{uuid.uuid4().hex[:10]}"


async def test_a_plain_reply_reaches_the_user_and_the_request_carries_the_configured_tool(http, model, channel):
    model.script(completion("Hello! How can I help?"))
    conversation = cid()
    await say(http, conversation, "hi there")
    await channel.wait_count(1)
    assert channel.delivered()[0]["role"] == "ai" and channel.delivered()[0]["text"] == "Hello! How can I help?"

    [request] = model.requests
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    body = request.json
    assert body["model"] == "fake-model-1" and body["temperature"] == 0.2
    assert body["messages"][0] == {"role": "system", "content": "You are the assistant of ACME. Be brief."}
    assert body["messages"][-1] == {"role": "user", "content": "hi there"}
    [tool] = body["tools"]  # hand_back / close only on conversations another platform handed to us
    assert tool["type"] == "function" and tool["function"]["name"] == "handoff"
    assert tool["function"]["description"].startswith("Hand the conversation to a person when the user asks")
    schema = tool["function"]["parameters"]
    assert schema["properties"]["topic"] == {"type": "string", "enum": ["billing", "technical", "other"]}
    assert schema["properties"]["urgency"] == {"type": "string", "enum": ["low", "high"]}
    assert schema["properties"]["reason"]["type"] == "string"  # added: the handoff's reason
    assert schema["required"] == ["topic"] and schema["additionalProperties"] is False

    usage = [e for e in await audit(http, conversation) if e["kind"] == "ai_usage"]
    assert usage and usage[0]["detail"] == {"seq": 1, "model": "fake-model-1", "prompt_tokens": 42,
                                            "completion_tokens": 7, "total_tokens": 49}

    # The next turn shows the model the conversation so far, its own reply as the assistant's.
    model.script(completion("Sure."))
    await say(http, conversation, "thanks")
    await channel.wait_count(2)
    assert [m["role"] for m in model.requests[1].json["messages"]] == ["system", "user", "assistant", "user"]


async def test_i_was_charged_twice_makes_the_model_hand_off_and_the_billing_route_takes_it(http, model, channel):
    model.script(
        completion(None, tool_call("handoff", {"topic": "billing", "urgency": "high",
                                               "reason": "charged twice for one order"})),
        # The handoff's summary for the person who takes over: one more call, without tools.
        completion("The user was charged twice for one order and wants a person to fix it.", prompt_tokens=30),
    )
    conversation = cid()
    await say(http, conversation, "I was charged twice, I need a person")
    s = await waiting_in(http, conversation, "billing")
    assert s["pending_handoff"]["params"] == {"topic": "billing", "urgency": "high"}
    assert s["pending_handoff"]["reason"] == "charged twice for one order"
    requested = [e for e in await audit(http, conversation) if e["kind"] == "handoff_requested"]
    assert requested[0]["detail"]["by"] == "ai"
    routed = [e for e in await audit(http, conversation) if e["kind"] == "handoff_routed"]
    assert routed and routed[0]["detail"].get("rule") == "billing", routed

    async def summarized():
        return (await snap(http, conversation))["summary"]
    assert await eventually(summarized) == "The user was charged twice for one order and wants a person to fix it."
    summary_call = model.requests[1].json
    assert "tools" not in summary_call and summary_call["messages"][0]["content"].startswith("You write handoff notes")
    assert "User: I was charged twice, I need a person" in summary_call["messages"][1]["content"]
    kinds = {e["kind"]: e["detail"] for e in await audit(http, conversation)}
    assert kinds["handoff_summarized"]["by"] == "model"
    assert [e["detail"].get("purpose") for e in await audit(http, conversation) if e["kind"] == "ai_usage"] == [
        None, "summary"]


async def test_a_malformed_tool_call_is_not_a_handoff_and_is_audited(http, model, channel):
    model.script(completion("Let me look into that.", tool_call("handoff", {"topic": "refunds-for-ana"})))
    conversation = cid()
    await say(http, conversation, "where is my refund")
    await channel.wait_count(1)
    assert channel.delivered()[0]["text"] == "Let me look into that."
    s = await snap(http, conversation)
    assert s["state"] == "ai" and s["pending_handoff"] is None
    refused = [e for e in await audit(http, conversation) if e["kind"] == "ai_reply_refused"]
    assert refused and refused[0]["detail"]["problems"] == [
        "tool call 'handoff' refused: argument 'topic': not one of the 3 allowed values"]
    assert "refunds-for-ana" not in json.dumps(await audit(http, conversation))  # the value is not quoted

    # A call that is not even JSON, with no text: the answer has nothing usable, the turn fails for good and the
    # config's ai_failure rule takes the conversation (not retried: the same prompt would get the same answer).
    model.script(completion(None, tool_call("handoff", "{topic: billing")))
    await say(http, conversation, "hello?")
    s = await waiting_in(http, conversation, "failures")
    assert s["pending_handoff"]["rule"] == "ai_failure"
    failed = [e for e in await audit(http, conversation) if e["kind"] == "ai_failed"]
    assert "arguments are not JSON" in failed[0]["detail"]["error"]
    turns = [r for r in model.requests if "tools" in r.json]
    assert len(turns) == 2  # not retried

    # The handoff's summary: the fake answers the summary call with an empty 202, so the model's summary fails and
    # the extractive one (the user's own words) is used instead.
    async def summarized():
        return [e for e in await audit(http, conversation) if e["kind"] == "handoff_summarized"]
    [done] = await eventually(summarized)
    assert done["detail"]["by"] == "extract" and "not a Chat Completion" in done["detail"]["model_failed"]
    assert "\u201cwhere is my refund\u201d" in (await snap(http, conversation))["summary"]


async def test_429_with_retry_after_is_waited_for_then_the_reply_arrives_once(http, model, channel):
    model.script(error(429, retry_after="2"), completion("Sorry for the wait."))
    conversation = cid()
    await say(http, conversation, "hello")
    await channel.wait_count(1, timeout=20)
    assert [r.status for r in model.requests] == [429, 200]
    # The activity's own retry interval is 0.5 s: the gap is the provider's Retry-After.
    assert model.requests[1].at - model.requests[0].at >= 1.9
    assert [m["text"] for m in channel.delivered()] == ["Sorry for the wait."]


async def test_a_400_fails_the_turn_for_good_and_the_ai_failure_rule_routes_it(http, model, channel):
    model.script(error(400, code="context_length_exceeded"))
    conversation = cid()
    await say(http, conversation, "hello")
    s = await waiting_in(http, conversation, "failures")
    assert s["pending_handoff"]["rule"] == "ai_failure"
    failed = [e for e in await audit(http, conversation) if e["kind"] == "ai_failed"]
    assert "answered 400 (requests, context_length_exceeded)" in failed[0]["detail"]["error"]
    assert len([r for r in model.requests if "tools" in r.json]) == 1  # a 4xx is not retried


CANARIES = {
    "auth": "CANARY-AUTH-7f3a9",
    "notes": "CANARY-NOTES-2b8c1",
    "secret_key": "CANARY-SECRET-KEY-9d4e6",
    "nested_password": "CANARY-PASSWORD-5a1f0",
}
CARD = "4111 1111 1111 1111"
OTHER_CARD = "5555555555554444"


async def test_the_provider_never_receives_auth_notes_secret_keys_or_card_numbers(
    http, model, channel, dev_env, settings
):
    """Through the API (which cleans context at ingress) and straight through Temporal (where only the adapter's
    own filter stands between the context and the provider): no planted canary reaches the provider."""
    model.script(*[completion(f"Noted {i}.") for i in range(3)])
    conversation = cid()
    r = await http.put(f"/v1/conversations/{conversation}/context", json={
        "profile": {"name": "Ana", "api_key": CANARIES["secret_key"],
                    "billing": {"login": {"password": CANARIES["nested_password"]}}},
        "slots": {"order": "A-17", "card": CARD},
        "auth": {"session": CANARIES["auth"]},
        "internal_notes": f"VIP, {CANARIES['notes']}",
    })
    assert r.status_code == 200, r.text
    await say(http, conversation, f"my card {OTHER_CARD} was charged twice")
    await channel.wait_count(1)

    # Straight through Temporal: the context and the message as a chat backend's own worker might send them.
    other = cid()
    handle = await start_conversation(
        dev_env.client, settings, other, text=f"card {OTHER_CARD}, please",
        context=Context(profile={"name": "Bo", "session_token": CANARIES["secret_key"] + "-direct"},
                        slots={"card_number": CARD.replace(" ", ""), "note": f"pay with {CARD}"}),
    )
    await channel.wait_count(2)
    await handle.signal(Signals.USER_MESSAGE, UserMessage(message_id="m2", text=f"it is {CARD}"))
    await channel.wait_count(3)

    # A handoff: the summary call carries the transcript too, and the summary itself holds no canary.
    model.script(completion(None, tool_call("handoff", {"topic": "billing"})),
                 completion("The user says a card was charged twice."))
    await handle.signal(Signals.USER_MESSAGE, UserMessage(message_id="m3", text=f"a person please, card {CARD}"))

    async def summarized():
        return (await snapshot(handle)).summary
    summary = await eventually(summarized)

    raw = model.raw()
    assert len(model.requests) == 5
    for canary in CANARIES.values():
        assert canary.encode() not in raw, canary
    for digits in (CARD, CARD.replace(" ", ""), OTHER_CARD):
        assert digits.encode() not in raw, digits
        assert digits not in summary
    # What may reach the model does: the name, the order, the user's words around what was redacted.
    known = " ".join(m["content"] for body in model.bodies() for m in body["messages"]
                     if m["content"].startswith("What is known about the user"))
    assert '"name":"Ana"' in known and '"order":"A-17"' in known and '"name":"Bo"' in known
    assert "was charged twice" in raw.decode()


# ---- without Temporal: the adapter's reading of an answer, the config, the settings ---------------------------


def turn(agent: str | None = None) -> AgentTurn:
    entry = TranscriptEntry(seq=1, message_id="m1", role=Role.USER, author="user", text="thanks, all good",
                            at="2026-11-30T10:00:00Z")
    return AgentTurn(conversation_id="c1", channel="web", message=entry, history=[entry], agent=agent,
                     handoff_reason="technical problem", handoff_summary=f"The app crashes; card {CARD} on file.")


def agent(config: AiAgentConfig | None = None) -> OpenAIAgent:
    return OpenAIAgent("http://127.0.0.1:9/v1", None, "m", config or AiAgentConfig(), client=None)  # type: ignore[arg-type]


def answer(*calls, text=None) -> _Completion:
    return _Completion.model_validate(completion(text, *calls)[2])


def test_hand_back_and_close_are_offered_and_obeyed_only_on_a_conversation_handed_to_us():
    handed = turn(agent="tech-support")
    names = [t["function"]["name"] for t in agent().request(handed)["tools"]]
    assert names == ["handoff", "hand_back", "close"]
    [told] = [m["content"] for m in agent().request(handed)["messages"] if "tech-support" in m["content"]]
    assert "technical problem" in told and "The app crashes; card [redacted:card] on file." in told
    assert agent().reply(handed, answer(tool_call("hand_back", {"reason": "solved"}))).end == "hand_back"
    assert agent().reply(handed, answer(tool_call("close", "{}"))).end == "close"

    mine = agent().reply(turn(), answer(tool_call("close", {}), text="Bye"))
    assert mine.end is None and mine.text == "Bye"
    assert mine.problems == ["tool call 'close' refused: only a conversation another platform handed to us can be "
                             "handed back or closed"]


def test_unknown_tools_extra_arguments_and_a_second_call_are_refused_by_name_only():
    reply = agent().reply(turn(), answer(
        tool_call("transfer_money", {"amount": 5}),
        tool_call("handoff", {"ssn": "123-45-6789"}),
        tool_call("handoff", {"reason": "asked for a person"}),
        tool_call("handoff", {"reason": "again"}),
    ))
    assert reply.handoff is not None and reply.handoff.reason == "asked for a person" and reply.handoff.params == {}
    assert reply.problems == [
        "tool call 'transfer_money' refused: no such tool",
        "tool call 'handoff' refused: unknown argument 'ssn'",
        "tool call 'handoff' ignored: the answer already handed off or ended",
    ]
    assert "123-45-6789" not in json.dumps(reply.model_dump())


def test_a_required_parameter_missing_or_of_the_wrong_type_is_refused():
    config = AiAgentConfig.model_validate({"handoff_tool": {
        "parameters": {"topic": {"type": "string"}, "priority": {"type": "integer"}}, "required": ["topic"]}})
    missing = agent(config).reply(turn(), answer(tool_call("handoff", {"priority": 2}), text="ok"))
    assert missing.handoff is None and missing.problems == [
        "tool call 'handoff' refused: required argument 'topic' missing"]
    wrong = agent(config).reply(turn(), answer(tool_call("handoff", {"topic": "x", "priority": True}), text="ok"))
    assert wrong.problems == ["tool call 'handoff' refused: argument 'priority': not of type integer"]
    fine = agent(config).reply(turn(), answer(tool_call("handoff", {"topic": "x", "priority": 2})))
    assert fine.handoff is not None and fine.handoff.params == {"topic": "x", "priority": 2}
    assert fine.handoff.reason == "the AI agent handed off"
    # A free-text param goes into history and to the receiver: redacted and bounded like the reason.
    noisy = agent(config).reply(turn(), answer(tool_call("handoff", {"topic": f"card {CARD} " + "y" * 900})))
    assert noisy.handoff.params["topic"].startswith("card [redacted:card] y") and len(noisy.handoff.params["topic"]) == 500


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "baton.yaml"
    path.write_text(text)
    return path


def test_the_ai_agent_section_is_validated_at_start_with_lines(tmp_path):
    text = """\
version: 1
ai_agent:
  system_prompt: ""
  handoff_tool:
    parameters:
      topic: {type: string, enum: [billing, 3]}
      urgency: {type: list}
    required: [tier]
  temperature: 5
"""
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    problems = err.value.problems
    assert any(p.endswith(":3: ai_agent.system_prompt: String should have at least 1 character") for p in problems), problems
    assert any(":6: ai_agent.handoff_tool.parameters.topic: enum value 3 is not of type string" in p for p in problems), problems
    assert any(":7: ai_agent.handoff_tool.parameters.urgency.type: Input should be" in p for p in problems), problems
    assert any(":9: ai_agent.temperature:" in p for p in problems), problems

    text = "version: 1\nai_agent:\n  handoff_tool:\n    required: [tier]\n    colour: red\n"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert any(":5: ai_agent.handoff_tool.colour: unknown key" in p for p in err.value.problems), err.value.problems

    text = "version: 1\nai_agent:\n  handoff_tool:\n    parameters: {topic: {type: string}}\n    required: [tier]\n"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert err.value.problems == [f"{tmp_path / 'baton.yaml'}:3: ai_agent.handoff_tool: required parameter 'tier' is "
                                  "not declared in parameters (declared: topic)"]


def test_openai_needs_a_model_name_and_an_http_base_url():
    with pytest.raises(SystemExit, match="BATON_AI_MODEL"):
        Settings.from_env({"BATON_AI_AGENT": "openai"}).check()
    with pytest.raises(SystemExit, match="OPENAI_BASE_URL"):
        Settings.from_env({"BATON_AI_AGENT": "openai", "BATON_AI_MODEL": "m", "OPENAI_BASE_URL": "ftp://x"}).check()
    settings = Settings.from_env({"BATON_AI_AGENT": "openai", "BATON_AI_MODEL": "m", "OPENAI_API_KEY": API_KEY})
    settings.check()
    assert API_KEY not in repr(settings) and API_KEY not in str(settings.model_dump())


def test_the_shipped_llm_config_loads_and_routes_billing_by_the_tool_parameter():
    shipped = load_config(Path(__file__).resolve().parent.parent / "config" / "openai.yaml")
    assert not shipped.intents  # the model decides, not keywords
    at = datetime(2026, 11, 30, 12, tzinfo=UTC)
    billing = decide(shipped, RouteRequest(conversation_id="c", handoff_id="h", params={"topic": "billing"}, at=at))
    assert billing.rule == "billing" and billing.target.queue == "billing"
    other = decide(shipped, RouteRequest(conversation_id="c", handoff_id="h", params={"topic": "other"}, at=at))
    assert other.rule == "default" and other.target.queue == "general"


@pytest.mark.parametrize("tool", ["hand_back", "close"])
async def test_on_a_conversation_an_a2a_client_handed_to_us_the_model_ends_it_with_its_tool(
    dev_env, task_queue, channel, model, registry, config, tool, monkeypatch
):
    """End to end: an `a2a-sdk` client hands a conversation to our local agent, whose AI is the model; the model
    greets, then calls `hand_back` (or `close`), and the client's task completes with the model's last words."""
    from activities.webhooks import a2a_token
    from devkit.temporal import free_port
    from tests.test_a2a_server import a2a_client, send, state, user

    port = free_port()
    settings = settings_for(task_queue, channel_url=channel.url, channel_secret=channel.secret, ai_agent="openai",
                            openai_base_url=model.openai_base_url, openai_api_key=SecretStr(API_KEY),
                            ai_model="fake-model-1", public_url=f"http://127.0.0.1:{port}")
    _, secret = registry.create_local("tech-support", "tech-support")
    model.script(
        completion("Hello! I'm the support assistant. Which app version do you use?"),
        completion("Great, that version is fixed; enjoy!", tool_call(tool, {"reason": "the user's app works"})),
    )
    async with baton_worker(dev_env.client, settings, registry, config=config), baton_api(
        dev_env.client, settings, registry, config=config, port=port
    ), a2a_client(settings.public_url, a2a_token(secret)) as client:
        first = await send(client, user("My app crashes on start"))
        assert state(first) == "TASK_STATE_INPUT_REQUIRED"
        assert first.status.message.parts[0].text == "Hello! I'm the support assistant. Which app version do you use?"
        done = await send(client, user("2.5, and it works now", task_id=first.id))
    assert state(done) == "TASK_STATE_COMPLETED"
    assert done.status.message.parts[0].text == "Great, that version is fixed; enjoy!"
    welcome, turn = model.bodies()
    # The model was told what the client said, as quoted data, and was offered the tools that end the stretch.
    assert [t["function"]["name"] for t in welcome["tools"]] == ["handoff", "hand_back", "close"]
    assert "My app crashes on start" in json.dumps(welcome["messages"])
    assert turn["messages"][-1] == {"role": "user", "content": "2.5, and it works now"}
