"""The routing config: the shipped examples load, every problem names its line and field, intents match words."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest
from pydantic import ValidationError

from models.config import BatonConfig, ConfigError, DeskConfig, default_config, load_config
from models.conversation import HandoffTarget

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(dedent(text).lstrip("\n"))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


# ---- the shipped examples -----------------------------------------------------------------------------


def test_the_yaml_example_loads_with_what_the_demo_needs() -> None:
    config = load_config(CONFIG_DIR / "baton.yaml")
    assert [r.name for r in config.routes] == ["human", "technical", "billing", "orders", "default"]
    human, technical, billing, orders, default = config.routes
    assert orders.to == HandoffTarget(queue="orders") and config.queues["orders"].assignment == "push"
    assert config.rating.enabled and "resolved" in config.wrap_up_codes
    assert human.when.intent == ["human"] and human.to == HandoffTarget(queue="general")
    assert technical.to == HandoffTarget(external_agent="tech-support")
    assert technical.fallback == [HandoffTarget(queue="general")]
    assert billing.to == HandoffTarget(queue="billing")
    assert [f.label for f in billing.fallback] == ["queue:general", "leave_message"]
    assert default.when.model_dump(exclude_none=True) == {} and default.to == HandoffTarget(queue="general")
    # The demo works at any hour: general has no business hours; billing keeps office hours in Berlin.
    assert config.queues["general"].business_hours is None and config.queues["general"].sla_seconds == 120
    hours = config.queues["billing"].business_hours
    assert hours is not None and hours.timezone == "Europe/Berlin"
    assert hours.model_extra == {"mon-fri": ((9 * 60, 17 * 60),)}
    assert config.ai_failure is not None and config.ai_failure.to == HandoffTarget(queue="general")
    assert config.desks == {}
    for text, intent in [
        ("I want to talk to a human", "human"),
        ("can I speak to a person?", "human"),
        ("Is there a REAL   person there", "human"),
        ("get me a representative", "human"),
        ("the app crashes with an error", "technical"),
        ("it's not working", "technical"),
        ("the app won\u2019t start", "technical"),
        ("where is my invoice", "billing"),
        ("I was charged twice", "billing"),
        ("I'd like a refund", "billing"),
    ]:
        found = config.match_intent(text)
        assert found is not None and found[0] == intent, text
    assert config.match_intent("hello there") is None


def test_the_toml_example_says_the_same_as_the_yaml_one() -> None:
    assert load_config(CONFIG_DIR / "baton.example.toml") == load_config(CONFIG_DIR / "baton.yaml")


def test_default_config_routes_everything_to_general_and_accepts_any_queue() -> None:
    config = default_config()
    assert config.intents == {} and config.queues == {}
    assert [(r.name, r.to) for r in config.routes] == [("default", HandoffTarget(queue="general"))]
    assert config.queue_known("general") and config.queue_known("anything")
    assert config.waiting.position_update_seconds == 60
    assert "never mind" in config.waiting.cancel_phrases
    assert config.ai_failure is None


# ---- problems name the line and the field ---------------------------------------------------------------


def test_unknown_queue_names_line_field_and_the_declared_queues(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", """
        version: 1
        queues:
          general: {}
          billing: {}
        routes:
          - name: a
            to: {queue: general}
          - name: b
            to: {queue: sales}
            fallback: [{queue: general}, {queue: nowhere}]
        ai_failure:
          to: {queue: gone}
        """)
    assert problems(path) == [
        f"{path}:9: routes.1.to.queue: unknown queue 'sales' (declared: billing, general)",
        f"{path}:10: routes.1.fallback.1.queue: unknown queue 'nowhere' (declared: billing, general)",
        f"{path}:12: ai_failure.to.queue: unknown queue 'gone' (declared: billing, general)",
    ]


def test_without_declared_queues_any_queue_name_is_accepted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "x.yaml", "routes: [{name: a, to: {queue: sales}}]\n"))
    assert config.routes[0].to.queue == "sales" and config.queue_known("sales")


def test_a_target_naming_two_kinds_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", """
        routes:
          - name: a
            to:
              queue: general
              external_agent: tech
        """)
    [problem] = problems(path)
    assert problem.startswith(f"{path}:3: routes.0.to: a target names exactly one of 'queue'")


def test_to_must_be_a_place_and_final_rungs_end_the_ladder(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", """
        routes:
          - name: a
            to: {ai: true}
          - name: b
            to: {queue: general}
            fallback: [{leave_message: true}, {queue: general}]
        """)
    assert problems(path) == [
        f"{path}:3: routes.0.to: 'to' must be a queue, live_agent, external_agent or desk ('ai' and "
        "'leave_message' only end a fallback)",
        f"{path}:6: routes.1.fallback.0: 'leave_message' ends the ladder: it can only be the last fallback",
    ]


def test_bad_time_range_and_unknown_time_zone_and_unknown_day(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", """
        queues:
          billing:
            business_hours:
              timezone: Mars/Olympus
              mon-fri: "25:00-26:00"
              sat: ["10:00-12:00", "17:00-09:00"]
              weekdays: "09:00-17:00"
        """)
    assert problems(path) == [
        f"{path}:4: queues.billing.business_hours.timezone: unknown time zone 'Mars/Olympus' (want an IANA name "
        "like 'Europe/Berlin')",
        f"{path}:5: queues.billing.business_hours.mon-fri: bad time range '25:00-26:00' (times run from 00:00 "
        "to 24:00)",
        f"{path}:6: queues.billing.business_hours.sat: bad time range '17:00-09:00': it ends before it starts "
        "(split overnight hours at 24:00)",
        f"{path}:7: queues.billing.business_hours.weekdays: unknown key 'weekdays': business hours take "
        "'timezone', 'closed_dates' and days (mon, tue, wed, thu, fri, sat, sun, or a range like mon-fri)",
    ]


def test_invalid_regex_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", """
        intents:
          human:
            keywords: [human]
            patterns: ['(unclosed']
        """)
    [problem] = problems(path)
    assert problem.startswith(f"{path}:4: intents.human.patterns: invalid regular expression '(unclosed'")


def test_unknown_keys_are_errors_at_every_level(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", """
        version: 1
        colour: blue
        waiting:
          position_update_secs: 5
        routes:
          - name: a
            to: {queue: general}
            sla: 5
        """)
    assert problems(path) == [
        f"{path}:2: colour: unknown key (known: version, timeouts, waiting, filter, intents, queues, desks, "
        "routes, ai_failure, ai_agent, wrap_up_codes, rating, presence_grace_seconds)",
        f"{path}:4: waiting.position_update_secs: unknown key",
        f"{path}:8: routes.0.sla: unknown key",
    ]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", """
        version: 1
        routes:
          - name: a
           to: {queue: general}
        """)
    [problem] = problems(path)
    assert problem.startswith(f"{path}:4: YAML syntax error:")


def test_duplicate_route_name(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", """
        routes:
          - name: a
            to: {queue: general}
          - name: a
            to: {queue: other}
        """)
    assert problems(path) == [f"{path}:4: routes.1.name: duplicate route name 'a' (also routes.0)"]


def test_desk_must_be_declared(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", """
        desks:
          acme: {url: "https://desk.example.com/baton", secret_env: ACME_DESK_SECRET}
        routes:
          - name: a
            to: {desk: zendesk}
        ai_failure:
          to: {desk: acme}
        """)
    assert problems(path) == [f"{path}:5: routes.0.to.desk: unknown desk 'zendesk' (declared: acme)"]
    no_desks = write(tmp_path, "y.yaml", "routes: [{name: a, to: {desk: acme}}]\n")
    assert problems(no_desks) == [f"{no_desks}:1: routes.0.to.desk: unknown desk 'acme' (no desks declared)"]


def test_desk_url_and_secret_env_are_checked_and_the_secret_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "x.yaml", """
        desks:
          acme:
            url: ftp://desk.example.com
            secret_env: whsec_c2VjcmV0
        """)
    assert problems(path) == [
        f"{path}:3: desks.acme.url: expected an http(s) URL, got 'ftp://desk.example.com'",
        f"{path}:4: desks.acme.secret_env: name the environment variable that holds the secret, not the secret "
        "itself",
    ]
    desk = DeskConfig(url="https://desk.example.com/baton", secret_env="ACME_DESK_SECRET")
    monkeypatch.delenv("ACME_DESK_SECRET", raising=False)
    assert desk.secret() is None
    monkeypatch.setenv("ACME_DESK_SECRET", "whsec_c2VjcmV0")
    assert desk.secret() == "whsec_c2VjcmV0"


def test_every_problem_is_listed_in_line_order_even_across_kinds(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", """
        queues:
          general: {sla_seconds: 0}
        routes:
          - name: a
            to: {queue: sales}
        """)
    # A type error elsewhere does not hide the cross-check on the routes that are valid.
    assert problems(path) == [
        f"{path}:2: queues.general.sla_seconds: Input should be greater than or equal to 1",
        f"{path}:5: routes.0.to.queue: unknown queue 'sales' (declared: general)",
    ]


def test_when_conditions_and_allowlists_are_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", """
        filter:
          allowlist: ["transcript.text"]
        routes:
          - name: a
            when: {intent: [], params: {tier: {nested: 1}}}
            to: {queue: general}
        """)
    assert problems(path) == [
        f"{path}:2: filter.allowlist: allowlist path 'transcript.text' must be dotted keys under profile, slots "
        "or metadata",
        f"{path}:5: routes.0.when.intent: an empty list never matches; give a string or a list of strings",
        f"{path}:5: routes.0.when.params.tier: expected a string, number, boolean or null, got dict",
    ]


def test_empty_file_and_wrong_extension(tmp_path: Path) -> None:
    empty = write(tmp_path, "x.yaml", "# nothing\n")
    assert problems(empty) == [f"{empty}: the file is empty"]
    other = write(tmp_path, "x.json", "{}")
    assert problems(other) == [f"{other}: a config file ends in .yaml, .yml or .toml"]


# ---- TOML -----------------------------------------------------------------------------------------------


def test_toml_problems_find_their_line(tmp_path: Path) -> None:
    path = write(tmp_path, "x.toml", """
        version = 1
        colour = "blue"

        [queues.general]
        sla_seconds = 60

        [queues.billing.business_hours]
        timezone = "Europe/Berlin"
        mon-fri = "25:00-26:00"

        [[routes]]
        name = "a"
        to = { queue = "general" }

        [[routes]]
        name = "b"
        to = { queue = "sales" }
        """)
    assert problems(path) == [
        f"{path}:2: colour: unknown key (known: version, timeouts, waiting, filter, intents, queues, desks, "
        "routes, ai_failure, ai_agent, wrap_up_codes, rating, presence_grace_seconds)",
        f"{path}:9: queues.billing.business_hours.mon-fri: bad time range '25:00-26:00' (times run from 00:00 "
        "to 24:00)",
        f"{path}:17: routes.1.to.queue: unknown queue 'sales' (declared: billing, general)",
    ]


def test_toml_decode_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "x.toml", """
        version = 1
        [waiting]
        position_update_seconds = = 5
        """)
    [problem] = problems(path)
    assert problem.startswith(f"{path}:3: TOML syntax error:")


# ---- direct construction -------------------------------------------------------------------------------


def test_constructing_the_model_directly_runs_the_cross_checks() -> None:
    with pytest.raises(ValidationError, match=r"routes\.0\.to\.queue: unknown queue 'sales'"):
        BatonConfig.model_validate({"queues": {"general": {}}, "routes": [{"name": "a", "to": {"queue": "sales"}}]})


# ---- intents --------------------------------------------------------------------------------------------


def test_keywords_match_whole_words_and_patterns_match_case_insensitively() -> None:
    config = BatonConfig.model_validate({
        "intents": {
            "quiet": {"keywords": ["just browsing"], "handoff": False},
            "human": {"keywords": ["human", "live agent"], "patterns": [r"\btalk to (a|an|some) ?(one|body)\b"]},
        }
    })
    assert config.match_intent("humane") is None
    assert config.match_intent("inhuman treatment") is None
    assert config.match_intent("a live agentry") is None
    assert config.match_intent("HUMAN please")[0] == "human"  # type: ignore[index]
    assert config.match_intent("a live\tagent, now")[0] == "human"  # type: ignore[index]
    assert config.match_intent("Can I Talk To Somebody")[0] == "human"  # type: ignore[index]
    # Declared order decides; the first match is returned whatever its `handoff`.
    name, intent = config.match_intent("just browsing, no human needed")  # type: ignore[misc]
    assert name == "quiet" and intent.handoff is False
