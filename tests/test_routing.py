"""Routing decisions (pure), business hours across DST and holidays, SLAs, positions, intents before the AI."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.testing import ActivityEnvironment

from activities.routing import IntentFirst, Router, decide, position_query
from activities.stream import StreamStore
from models import notices
from models.config import BatonConfig, default_config, load_config
from models.conversation import (
    AgentReply,
    AgentTurn,
    Bell,
    HandoffEvent,
    HandoffTarget,
    OpenWindow,
    Role,
    State,
    TranscriptEntry,
)
from models.routing import PositionRequest, RoutedReply, RoutedTurn, RouteRequest, Skipped

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
# Friday 23 October 2026, 12:00 UTC (14:00 in Berlin, summer time); Berlin leaves summer time on Sunday the 25th.
FRIDAY_NOON = datetime(2026, 10, 23, 12, 0, tzinfo=UTC)
SATURDAY_NOON = datetime(2026, 10, 24, 12, 0, tzinfo=UTC)

CONFIG = """
timeouts: {handoff_sla_seconds: 200}
queues:
  general: {sla_seconds: 120}
  nosla: {}
  billing:
    sla_seconds: 300
    business_hours:
      timezone: Europe/Berlin
      mon-fri: "09:00-17:00"
      closed_dates: ["2026-12-24", "2026-12-25"]
  weekend:
    business_hours:
      timezone: America/New_York
      sat-sun: "10:00-12:00"
filter:
  allowlist: ["profile.*"]
routes:
  - name: refunds
    when: {reason: [refund, chargeback]}
    to: {queue: billing}
    fallback: [{queue: general}, {leave_message: true}]
  - name: human
    when: {intent: human}
    to: {queue: general}
    allowlist: ["profile.name"]
  - name: vip
    when: {params: {tier: [gold, platinum], vip: true}}
    to: {live_agent: anna}
  - name: pro-plan
    when: {slots: {plan: pro}}
    to: {external_agent: pro-support}
  - name: app
    when: {channel: [app, ios]}
    to: {queue: nosla}
  - name: german
    when: {language: de, channel: web}
    to: {queue: general}
"""


def config(text: str = CONFIG) -> BatonConfig:
    return BatonConfig.model_validate(yaml.safe_load(text))


def request(**fields: Any) -> RouteRequest:
    fields.setdefault("at", FRIDAY_NOON)
    return RouteRequest(conversation_id="c1", handoff_id="h1", **fields)


# ---- which ladder -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "rule", "why", "target"),
    [
        ({"reason": "wants a REFUND for order 7"}, "refunds", "reason contains 'refund'", "queue:billing"),
        ({"intent": "human"}, "human", "intent=human", "queue:general"),
        ({"params": {"intent": "human"}}, "human", "intent=human", "queue:general"),
        ({"params": {"tier": "gold", "vip": True}}, "vip", "params.tier=gold, params.vip=True", "live_agent:anna"),
        ({"slots": {"plan": "pro"}}, "pro-plan", "slots.plan=pro", "external_agent:pro-support"),
        ({"channel": "ios"}, "app", "channel=ios", "queue:nosla"),
        ({"language": "de-AT"}, "german", "channel=web, language=de-AT", "queue:general"),
        ({"language": "DE"}, "german", "channel=web, language=DE", "queue:general"),
    ],
)
def test_the_first_matching_route_wins_and_says_why(fields: dict, rule: str, why: str, target: str) -> None:
    decision = decide(config(), request(**fields))
    assert (decision.rule, decision.why, decision.target.label) == (rule, why, target)


@pytest.mark.parametrize(
    "fields",
    [
        {"reason": "a question"},
        {"intent": "humane"},
        {"params": {"tier": "silver", "vip": True}},
        # True and 1 are equal in Python, not in a config.
        {"params": {"tier": "gold", "vip": 1}},
        {"params": {"tier": "gold"}},
        {"slots": {"plan": "free"}},
        {"language": "den"},
        {"language": "de", "channel": "sms"},
        {},
    ],
)
def test_nothing_matches_back_to_the_ai(fields: dict) -> None:
    decision = decide(config(), request(**fields))
    assert decision.rule == "none" and decision.why == "no route matched"
    assert decision.target == HandoffTarget(ai=True, message=notices.NO_ROUTE)
    assert decision.fallback == [] and decision.position is None


def test_an_empty_when_always_matches() -> None:
    decision = decide(default_config(), request(reason="anything"))
    assert (decision.rule, decision.why, decision.target.label) == ("default", "no conditions", "queue:general")


def test_an_explicit_target_is_honoured_with_its_own_fallback() -> None:
    decision = decide(config(), request(
        intent="human",
        target=HandoffTarget(external_agent="tech-support"),
        fallback=[HandoffTarget(queue="billing"), HandoffTarget(ai=True)],
    ))
    assert decision.rule == "explicit" and decision.why == "the request named external_agent:tech-support"
    assert decision.target == HandoffTarget(external_agent="tech-support")
    assert decision.fallback == [HandoffTarget(queue="billing"), HandoffTarget(ai=True)]
    # The fallback's queue has business hours: the workflow gets them to re-check when it gets there.
    assert list(decision.hours) == ["queue:billing"]
    assert decision.slas == {"queue:billing": 300}
    # No route: the config's default allowlist.
    assert decision.allowlist == ["profile.*"]


def test_ai_failure_without_a_rule_apologises_and_with_one_follows_it() -> None:
    decision = decide(config(), request(requested_by="ai_failure", intent="human"))
    assert decision.rule == "none"
    assert decision.target == HandoffTarget(ai=True, message=notices.AI_FAILURE)
    with_rule = config(CONFIG + "ai_failure:\n  to: {queue: general}\n  fallback: [{leave_message: true}]\n")
    decision = decide(with_rule, request(requested_by="ai_failure", intent="human"))
    assert (decision.rule, decision.why) == ("ai_failure", "the AI agent failed")
    assert decision.target == HandoffTarget(queue="general")
    assert decision.fallback == [HandoffTarget(leave_message=True)]


def test_unknown_queues_are_skipped_wherever_they_are_in_the_ladder() -> None:
    decision = decide(config(), request(
        target=HandoffTarget(queue="sales"),
        fallback=[HandoffTarget(queue="general"), HandoffTarget(queue="nowhere"), HandoffTarget(ai=True)],
    ))
    assert decision.target == HandoffTarget(queue="general")
    assert decision.fallback == [HandoffTarget(ai=True)]
    assert decision.skipped == [Skipped(target="queue:sales", why="unknown queue"),
                                Skipped(target="queue:nowhere", why="unknown queue")]
    nothing_left = decide(config(), request(target=HandoffTarget(queue="sales")))
    assert nothing_left.target == HandoffTarget(ai=True, message=notices.NO_ROUTE)


# ---- business hours -------------------------------------------------------------------------------------


def test_an_open_queue_is_the_target_and_its_windows_are_recorded() -> None:
    decision = decide(config(), request(reason="refund"))
    assert decision.target == HandoffTarget(queue="billing") and decision.skipped == []
    assert decision.fallback == [HandoffTarget(queue="general"), HandoffTarget(leave_message=True)]
    windows = decision.hours["queue:billing"]
    today = OpenWindow(start=datetime(2026, 10, 23, 7, tzinfo=UTC), end=datetime(2026, 10, 23, 15, tzinfo=UTC))
    assert windows[0] == today


def test_a_closed_queue_is_skipped_to_the_next_rung_with_when_it_opens() -> None:
    decision = decide(config(), request(reason="refund", at=SATURDAY_NOON))
    assert decision.skipped == [Skipped(target="queue:billing", why="closed (opens Mon 09:00 Europe/Berlin)")]
    assert decision.target == HandoffTarget(queue="general")
    assert decision.fallback == [HandoffTarget(leave_message=True)]
    # The skipped queue's hours are still recorded; general has none (always open).
    assert list(decision.hours) == ["queue:billing"]
    assert decision.hours["queue:billing"][0].start == datetime(2026, 10, 26, 8, tzinfo=UTC)


def test_all_closed_back_to_the_ai_saying_when_the_team_is_back() -> None:
    decision = decide(config(), request(
        at=datetime(2026, 10, 23, 20, tzinfo=UTC),  # Friday 22:00 in Berlin, 16:00 in New York
        target=HandoffTarget(queue="billing"), fallback=[HandoffTarget(queue="weekend")],
    ))
    # New York's weekend desk opens Saturday 10:00 EDT (14:00 UTC), before Berlin's Monday.
    assert decision.skipped == [
        Skipped(target="queue:billing", why="closed (opens Mon 09:00 Europe/Berlin)"),
        Skipped(target="queue:weekend", why="closed (opens Sat 10:00 America/New_York)"),
    ]
    assert decision.target == HandoffTarget(ai=True, message=(
        "Our team is away right now (back Sat 10:00 America/New_York). The assistant is back with you; "
        "you can ask again then."
    ))
    assert decision.fallback == [] and decision.slas == {}


def test_windows_follow_berlin_across_the_end_of_summer_time() -> None:
    decision = decide(config(), request(reason="refund"))
    windows = [(w.start, w.end) for w in decision.hours["queue:billing"]]

    def utc(day: int, hour: int) -> datetime:
        return datetime(2026, 10, day, hour, tzinfo=UTC)

    # Friday in summer time (UTC+2), then Monday to Friday in winter time (UTC+1); the weekend is closed.
    assert windows == [
        (utc(23, 7), utc(23, 15)),
        (utc(26, 8), utc(26, 16)),
        (utc(27, 8), utc(27, 16)),
        (utc(28, 8), utc(28, 16)),
        (utc(29, 8), utc(29, 16)),
        (utc(30, 8), utc(30, 16)),
    ]


def test_closed_dates_are_holidays() -> None:
    christmas_eve = datetime(2026, 12, 24, 10, tzinfo=UTC)  # a Thursday, 11:00 in Berlin
    decision = decide(config(), request(reason="refund", at=christmas_eve))
    assert decision.skipped == [Skipped(target="queue:billing", why="closed (opens Mon 09:00 Europe/Berlin)")]
    starts = [w.start for w in decision.hours["queue:billing"]]
    assert starts[0] == datetime(2026, 12, 28, 8, tzinfo=UTC)
    assert datetime(2026, 12, 25, 8, tzinfo=UTC) not in starts


def test_adjacent_windows_merge_and_a_far_opening_names_its_date() -> None:
    night = """
        queues:
          night:
            business_hours:
              timezone: UTC
              mon: ["20:00-24:00"]
              tue: ["00:00-02:00", "02:00-03:00"]
              closed_dates: [%s]
        routes: [{name: night, to: {queue: night}}]
    """
    tuesday_4am = datetime(2026, 10, 27, 4, tzinfo=UTC)
    decision = decide(config(night % ""), request(at=tuesday_4am))
    assert decision.skipped == [Skipped(target="queue:night", why="closed (opens Mon 20:00 UTC)")]
    monday = datetime(2026, 11, 2, 20, tzinfo=UTC)
    # Monday evening and Tuesday's early hours are one window.
    assert [(w.start, w.end) for w in decision.hours["queue:night"]] == [(monday, monday + timedelta(hours=7))]
    # A week or more ahead, the weekday alone would be ambiguous: the date is said too.
    holiday = config(night % "2026-10-26, 2026-10-27")
    decision = decide(holiday, request(at=datetime(2026, 10, 26, 19, tzinfo=UTC)))
    assert decision.skipped == [Skipped(target="queue:night", why="closed (opens Mon 02 Nov 20:00 UTC)")]


# ---- SLA, allowlist, waiting settings -----------------------------------------------------------------------


def test_sla_precedence_request_then_queue_then_timeouts_then_the_conversation_default() -> None:
    ladder = {"target": HandoffTarget(queue="general"),
              "fallback": [HandoffTarget(queue="nosla"), HandoffTarget(live_agent="anna"),
                           HandoffTarget(external_agent="x")]}
    decision = decide(config(), request(**ladder, default_sla_seconds=50))
    assert decision.sla_seconds == 120
    assert decision.slas == {"queue:general": 120, "queue:nosla": 200, "live_agent:anna": 200}
    decision = decide(config(), request(**ladder, sla_seconds=30))
    assert decision.slas == {"queue:general": 30, "queue:nosla": 30, "live_agent:anna": 30}
    bare = default_config()
    decision = decide(bare, request(**ladder, default_sla_seconds=50))
    assert decision.sla_seconds == 50 and set(decision.slas.values()) == {50}


def test_route_allowlist_then_config_allowlist_then_none_and_the_waiting_settings() -> None:
    assert decide(config(), request(intent="human")).allowlist == ["profile.name"]
    assert decide(config(), request(channel="app")).allowlist == ["profile.*"]
    decision = decide(default_config(), request())
    assert decision.allowlist is None
    assert decision.cancel_phrases == ["never mind", "nevermind", "cancel", "forget it"]
    assert decision.position_update_seconds == 60
    tuned = config("waiting: {position_update_seconds: 0, cancel_phrases: [stop]}\nroutes: [{name: a, to: {queue: q}}]")
    decision = decide(tuned, request(), position=4)
    assert (decision.cancel_phrases, decision.position_update_seconds, decision.position) == (["stop"], 0, 4)


def test_the_shipped_config_routes_the_demo_paths() -> None:
    shipped = load_config(CONFIG_DIR / "baton.yaml")
    at_night = datetime(2026, 10, 24, 1, tzinfo=UTC)
    assert decide(shipped, request(intent="human", at=at_night)).target == HandoffTarget(queue="general")
    technical = decide(shipped, request(params={"intent": "technical"}, at=at_night))
    assert technical.target == HandoffTarget(external_agent="tech-support")
    assert technical.fallback == [HandoffTarget(queue="general")]
    billing = decide(shipped, request(intent="billing", at=at_night))
    assert billing.target == HandoffTarget(queue="general")
    assert billing.skipped[0].why == "closed (opens Mon 09:00 Europe/Berlin)"
    assert decide(shipped, request(reason="anything", at=at_night)).rule == "default"


# ---- the activities -----------------------------------------------------------------------------------------


@dataclass
class Count:
    count: int


class FakeClient:
    def __init__(self, count: int | None = None) -> None:
        self.count = count
        self.queries: list[str] = []

    async def count_workflows(self, query: str, **_: Any) -> Count:
        self.queries.append(query)
        if self.count is None:
            raise RuntimeError("visibility unavailable")
        return Count(self.count)


async def test_route_handoff_counts_the_position_of_a_waiting_user() -> None:
    client = FakeClient(count=2)
    router = Router(config(), lambda: client, "baton")  # type: ignore[arg-type, return-value]
    decision = await router.route_handoff(request(intent="human"))
    assert decision.target == HandoffTarget(queue="general") and decision.position == 3
    assert client.queries == [
        "WorkflowType = 'Conversation' AND TaskQueue = 'baton' AND BatonState = 'handoff_pending' "
        "AND BatonQueue = 'general' AND BatonWaitingSince < '2026-10-23T12:00:00Z' "
        "AND WorkflowId != 'conversation-c1'"
    ]
    # A named live agent's personal queue.
    decision = await router.route_handoff(request(params={"tier": "gold", "vip": True}))
    assert decision.position == 3 and "BatonQueue = 'agent:anna'" in client.queries[-1]
    # Not waiting for a person: nothing is counted.
    decision = await router.route_handoff(request(slots={"plan": "pro"}))
    assert decision.position is None and len(client.queries) == 2


async def test_the_decision_lists_the_conversation_in_its_queue_at_once(tmp_path: Path) -> None:
    """The routing activity carries the stream's bell; a decision for a person's queue writes the
    conversation into that queue's waiting list as it decides, any other decision writes the state as it is, and a
    newer bell (the handoff ended while it was routed) is never overwritten by the decision's."""
    store = StreamStore(tmp_path / "stream.db")
    router = Router(config(), lambda: None, "baton", lambda: store)

    def bell(cid: str, number: int, state: State = State.HANDOFF_PENDING) -> Bell:
        return Bell(conversation_id=cid, number=number, seq=3, state=state, at=FRIDAY_NOON,
                    waiting_since=FRIDAY_NOON, reason="wants a person")

    decision = await router.route_handoff(request(intent="human", bell=bell("c1", 2)))
    assert decision.target == HandoffTarget(queue="general") and decision.position == 1
    [row] = store.waiting("general")
    assert (row.conversation_id, row.waiting_since, row.reason) == ("c1", FRIDAY_NOON, "wants a person")
    assert store.position("c1") == 1
    # A second conversation behind it: its decision's position and the list agree.
    later = FRIDAY_NOON + timedelta(seconds=1)
    second = bell("c2", 1).model_copy(update={"waiting_since": later})
    decision = await router.route_handoff(request(intent="human", bell=second, at=later).model_copy(
        update={"conversation_id": "c2"}))
    assert decision.position == 2 and [r.conversation_id for r in store.waiting("general")] == ["c1", "c2"]
    # Not waiting for a person (an external agent): the state is written, in no waiting list.
    decision = await router.route_handoff(request(slots={"plan": "pro"}, bell=bell("c3", 1)).model_copy(
        update={"conversation_id": "c3"}))
    assert decision.position is None and decision.target.desk_queue is None
    assert store.position("c3") is None and "c3" not in {r.conversation_id for q in ("general", "billing")
                                                        for r in store.waiting(q)}
    # The handoff was cancelled while it was routed: bell 2 (state ai) landed first; the decision's bell 1 is older.
    store.ring(bell("c4", 2, State.AI).model_copy(update={"waiting_since": None, "reason": None}))
    await router.route_handoff(request(intent="human", bell=bell("c4", 1)).model_copy(update={"conversation_id": "c4"}))
    assert "c4" not in {r.conversation_id for r in store.waiting("general")} and store.position("c4") is None
    # No bell (the AI-failure rule's probe): nothing is written.
    await router.route_handoff(request(intent="human").model_copy(update={"conversation_id": "c5"}))
    assert store.position("c5") is None
    store.close()


async def test_a_failing_or_missing_client_gives_no_position_never_an_error() -> None:
    failing = Router(config(), lambda: FakeClient(count=None), "baton")  # type: ignore[arg-type, return-value]
    decision = await failing.route_handoff(request(intent="human"))
    assert decision.target == HandoffTarget(queue="general") and decision.position is None

    def broken() -> None:
        raise RuntimeError("not connected yet")

    assert (await Router(config(), broken, "baton").route_handoff(request(intent="human"))).position is None
    assert (await Router(config(), lambda: None, "baton").route_handoff(request(intent="human"))).position is None
    position = PositionRequest(conversation_id="c1", queue="general", waiting_since=FRIDAY_NOON)
    assert (await failing.queue_position(position)).position is None


async def test_queue_position_counts_from_when_the_user_started_waiting() -> None:
    client = FakeClient(count=0)
    router = Router(config(), lambda: client, "tq")  # type: ignore[arg-type, return-value]
    since = datetime(2026, 10, 23, 14, 0, 5, 250000, tzinfo=UTC)
    result = await router.queue_position(PositionRequest(conversation_id="c9", queue="billing", waiting_since=since))
    assert result.position == 1
    assert client.queries == [position_query("tq", "billing", "c9", since)]
    assert "BatonWaitingSince < '2026-10-23T14:00:05.250000Z'" in client.queries[0]
    with pytest.raises(ValueError):
        position_query("tq", "x' OR 'a' = 'a", "c9", since)


# ---- intents before the AI -----------------------------------------------------------------------------------


def turn(text: str | None, agent: str | None = None) -> AgentTurn:
    message = None if text is None else TranscriptEntry(
        seq=1, message_id="m1", role=Role.USER, author="user", text=text, at=FRIDAY_NOON
    )
    return AgentTurn(conversation_id="c1", channel="web", message=message, history=[], agent=agent)


class Inner:
    def __init__(self) -> None:
        self.turns: list[AgentTurn] = []

    async def __call__(self, turn: AgentTurn) -> AgentReply:
        self.turns.append(turn)
        return AgentReply(text="from the agent")


INTENTS = config("""
    intents:
      chit-chat: {keywords: [weather], handoff: false}
      human:
        keywords: [human]
        reply: "Bringing in a person."
        params: {priority: high}
""")


async def test_a_matching_intent_hands_off_without_asking_the_agent() -> None:
    inner = Inner()
    reply = await IntentFirst(INTENTS, inner).respond(turn("I want a HUMAN now"))
    assert inner.turns == []
    assert reply.text == "Bringing in a person."
    assert reply.handoff is not None
    assert reply.handoff.reason == "the user's message matched intent 'human'"
    assert reply.handoff.intent == "human" and reply.handoff.params == {"priority": "high"}


@pytest.mark.parametrize(
    ("text", "agent"),
    [
        ("humane treatment", None),            # not a whole word
        ("what's the weather, human?", None),  # the first match has handoff: false
        ("I want a human", "tech-support"),    # a conversation another platform handed to us
        (None, None),                          # a resumed turn, no message
    ],
)
async def test_otherwise_the_agent_answers(text: str | None, agent: str | None) -> None:
    inner = Inner()
    reply = await IntentFirst(INTENTS, inner).respond(turn(text, agent))
    assert reply == AgentReply(text="from the agent") and len(inner.turns) == 1


class Handing:
    """An AI agent that hands off, with what it just learned as slots."""

    def __init__(self, slots: dict[str, Any] | None = None, intent: str | None = "human") -> None:
        self.turns: list[AgentTurn] = []
        self.slots = slots or {}
        self.intent = intent

    async def __call__(self, turn: AgentTurn) -> AgentReply:
        self.turns.append(turn)
        return AgentReply(text="One moment, please.", slots=self.slots,
                          handoff=HandoffEvent(reason="wants a person", intent=self.intent))


def routed_turn(cid: str, text: str, number: int = 4) -> RoutedTurn:
    bell = Bell(conversation_id=cid, number=number, seq=1, state=State.HANDOFF_PENDING, at=FRIDAY_NOON,
                waiting_since=FRIDAY_NOON)
    return RoutedTurn(**turn(text).model_dump(exclude={"conversation_id"}), conversation_id=cid,
                      route=RouteRequest(conversation_id=cid, handoff_id="", at=FRIDAY_NOON, bell=bell))


async def test_an_ai_turn_routes_its_own_handoff_and_lists_the_conversation_at_once(tmp_path: Path) -> None:
    """The turn's activity decides the route of the reply's handoff (the same `decide` as the routing
    activity, with the reply's slots) and writes the conversation into its queue's waiting list as it decides."""
    store = StreamStore(tmp_path / "stream.db")
    router = Router(config(), lambda: None, "baton", lambda: store)
    agent = Handing()
    reply = await IntentFirst(config(), agent, router=router).respond(routed_turn("c1", "can I talk to someone"))
    assert isinstance(reply, RoutedReply) and reply.decision is not None
    assert reply.text == "One moment, please." and reply.handoff is not None
    assert (reply.decision.rule, reply.decision.target, reply.decision.position) == (
        "human", HandoffTarget(queue="general"), 1)
    [row] = store.waiting("general")
    assert (row.conversation_id, row.reason, row.waiting_since) == ("c1", "wants a person", FRIDAY_NOON)
    # The agent saw the documented turn, not what routing needs.
    assert type(agent.turns[0]) is AgentTurn
    # What the agent learned in this turn routes it: a slot rule matches (plan: pro -> an external agent).
    pro = Handing(slots={"plan": "pro"}, intent=None)
    reply = await IntentFirst(config(), pro, router=router).respond(routed_turn("c2", "hello"))
    assert isinstance(reply, RoutedReply) and reply.decision is not None
    assert reply.decision.target == HandoffTarget(external_agent="pro-support") and store.position("c2") is None
    # No routing inputs (a local agent on a conversation handed to us): the reply as
    # the agent gave it; the workflow's routing activity decides later.
    reply = await IntentFirst(config(), Handing(), router=router).respond(turn("can I talk to someone"))
    assert type(reply) is AgentReply and store.waiting("general")[0].conversation_id == "c1"
    store.close()


async def test_a_retried_turn_asks_the_workflow_to_ring_afresh(tmp_path: Path) -> None:
    """An earlier attempt of the turn may have listed the conversation and then failed: a retry that does not hand
    off says so (`relist`), and the workflow rings the state as it is with a newer bell."""
    store = StreamStore(tmp_path / "stream.db")
    router = Router(config(), lambda: None, "baton", lambda: store)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=2)
    reply = await env.run(IntentFirst(config(), Inner(), router=router).respond, routed_turn("c1", "hello"))
    assert isinstance(reply, RoutedReply) and reply.relist and reply.decision is None and reply.handoff is None
    # The first attempt says nothing of the kind; nor does a turn without routing inputs.
    env.info = dataclasses.replace(env.info, attempt=1)
    assert type(await env.run(IntentFirst(config(), Inner(), router=router).respond, routed_turn("c1", "hello"))) \
        is AgentReply
    env.info = dataclasses.replace(env.info, attempt=3)
    assert type(await env.run(IntentFirst(config(), Inner(), router=router).respond, turn("hello"))) is AgentReply
    store.close()
