"""The routing config ("connection rules"): intents, queues, desks, routes, and the loader that names every problem.

One file, YAML or TOML (chosen by extension), path from `BATON_CONFIG`; `default_config()` when there is none.
Every model is strict (an unknown key is an error), and `load_config` reports each problem as
`{path}:{line}: {dotted.field}: {message}` so a typo points at its line. The config is read by activities only:
the routing decision is recorded in history, so editing the file never changes a running conversation.
Every section and field is described in docs/config.md."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from models.conversation import HandoffTarget, Name, OpenWindow, ParamValue
from models.filtering import NEVER_LEAVE, SECTIONS
from models import targets

MAX_SECONDS = 7 * 24 * 3600
MAX_FALLBACK = 10
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_CANCEL_PHRASES = ["never mind", "nevermind", "cancel", "forget it"]
DEFAULT_INTENT_REPLY = "Of course, I'll bring in a person."
# Validation context key: the loader runs the cross-checks itself, to give each problem its own line.
_DEFER_CHECKS = "baton_defer_checks"

Phrase = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Loc = tuple[str | int, ...]


class ConfigError(ValueError):
    """The config file is unusable; `problems` holds one `{path}:{line}: {field}: {message}` line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- value types ------------------------------------------------------------------------------------


def _scalar(value: Any) -> ParamValue:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ValueError(f"expected a string, number, boolean or null, got {type(value).__name__}")


def _one_or_more_scalars(value: Any) -> list[ParamValue]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError("an empty list never matches; give a value or a list of values")
    return [_scalar(v) for v in values]


def _one_or_more_strings(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError("an empty list never matches; give a string or a list of strings")
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"expected a non-empty string or a list of them, got {v!r}")
    return [v.strip() for v in values]


def _allowlist_paths(value: list[str] | None) -> list[str] | None:
    # The same rule as models.filtering.FilterRequest, checked here so a bad path fails at load, with its line.
    for path in value or ():
        parts = path.split(".")
        if not path or "" in parts or parts[0] not in (*SECTIONS, *NEVER_LEAVE, "*"):
            raise ValueError(f"allowlist path {path!r} must be dotted keys under profile, slots or metadata")
    return value


Scalar = Annotated[ParamValue, PlainValidator(_scalar)]
Scalars = Annotated[list[ParamValue], PlainValidator(_one_or_more_scalars)]
Strings = Annotated[list[str], PlainValidator(_one_or_more_strings)]
Allowlist = Annotated[list[str] | None, AfterValidator(_allowlist_paths)]


# ---- timeouts, waiting, filter ----------------------------------------------------------------------


class Timeouts(Strict):
    inactivity_seconds: int | None = Field(default=None, ge=10, le=MAX_SECONDS)
    handoff_sla_seconds: int | None = Field(default=None, ge=1, le=MAX_SECONDS)


class Waiting(Strict):
    # How often a waiting user's queue position is re-checked (0: never).
    position_update_seconds: int = Field(default=60, ge=0, le=24 * 3600)
    # What a waiting user types to stop waiting and go back to the AI.
    cancel_phrases: list[Phrase] = Field(default_factory=lambda: list(DEFAULT_CANCEL_PHRASES), max_length=50)


class FilterPolicy(Strict):
    # The context paths every target may see unless its route narrows them (None: the filter's default).
    allowlist: Allowlist = None


# ---- intents ----------------------------------------------------------------------------------------


class Intent(Strict):
    """Recognised in the user's message before the AI agent is asked (see activities.routing.IntentFirst)."""

    # Whole words or phrases, case-insensitive ("human" does not match "humane").
    keywords: list[Phrase] = Field(default_factory=list)
    # Regular expressions, case-insensitive.
    patterns: list[Annotated[str, StringConstraints(min_length=1, max_length=500)]] = Field(default_factory=list)
    # A match hands the conversation off (False: the intent only names the topic; the AI answers).
    handoff: bool = True
    # What the assistant says when the intent triggers the handoff.
    reply: Annotated[str, StringConstraints(min_length=1, max_length=1000)] = DEFAULT_INTENT_REPLY
    # Added to the handoff's params (routes may match on them).
    params: dict[str, Scalar] = Field(default_factory=dict, max_length=50)

    _matcher: re.Pattern[str] | None = PrivateAttr(default=None)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as err:
                raise ValueError(f"invalid regular expression {pattern!r}: {err}") from None
        return patterns

    def model_post_init(self, context: Any, /) -> None:
        # One compiled pattern per intent: the keywords as whole words/phrases, then the regexes.
        parts = [
            r"(?<!\w)" + r"\s+".join(re.escape(word) for word in keyword.split()) + r"(?!\w)"
            for keyword in self.keywords
        ]
        parts += [f"(?:{pattern})" for pattern in self.patterns]
        self._matcher = re.compile("|".join(parts), re.IGNORECASE) if parts else None

    def matches(self, text: str) -> bool:
        return self._matcher is not None and self._matcher.search(_normalise(text)) is not None


def _normalise(text: str) -> str:
    """Typographic apostrophes as ASCII, so "won’t start" matches the keyword "won't start"."""
    return text.replace("\u2019", "'").replace("\u2018", "'")


# ---- queues and business hours ----------------------------------------------------------------------

_DAY_KEY = re.compile(r"^(mon|tue|wed|thu|fri|sat|sun)(?:-(mon|tue|wed|thu|fri|sat|sun))?$", re.IGNORECASE)
_RANGE = re.compile(r"^(\d{2}):(\d{2})\s*-\s*(\d{2}):(\d{2})$")


def _day_key(key: str) -> str:
    if not _DAY_KEY.match(key):
        raise ValueError(
            f"unknown key {key!r}: business hours take 'timezone', 'closed_dates' and days "
            "(mon, tue, wed, thu, fri, sat, sun, or a range like mon-fri)"
        )
    return key.lower()


def _day_numbers(key: str) -> list[int]:
    """`mon` -> [0]; `mon-fri` -> [0..4]; a range may wrap (`fri-mon` -> fri, sat, sun, mon)."""
    match = _DAY_KEY.match(key)
    assert match is not None
    first = DAYS.index(match.group(1).lower())
    last = DAYS.index((match.group(2) or match.group(1)).lower())
    return [(first + i) % 7 for i in range((last - first) % 7 + 1)]


def _time_ranges(value: Any) -> tuple[tuple[int, int], ...]:
    """"HH:MM-HH:MM" or a list of them -> (start, end) minutes after local midnight; "24:00" may end a range."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError("give a time range \"HH:MM-HH:MM\" or a list of them")
    ranges = []
    for v in values:
        match = _RANGE.match(v.strip()) if isinstance(v, str) else None
        if match is None:
            raise ValueError(f"bad time range {v!r} (want \"HH:MM-HH:MM\", e.g. \"09:00-17:00\")")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
            raise ValueError(f"bad time range {v!r} (times run from 00:00 to 24:00)")
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if end <= start:
            raise ValueError(f"bad time range {v!r}: it ends before it starts (split overnight hours at 24:00)")
        ranges.append((start, end))
    return tuple(sorted(ranges))


TimeRanges = Annotated[tuple[tuple[int, int], ...], PlainValidator(_time_ranges)]


class BusinessHours(BaseModel):
    """When a queue is staffed, in its own time zone. Besides `timezone` and `closed_dates`, every key is a day
    (`mon`) or a range of days (`mon-fri`) with its hours; any other key is an error (validated as a day)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[Annotated[str, AfterValidator(_day_key)], TimeRanges] = Field(init=False)

    timezone: str
    # Holidays: whole dates (in `timezone`) the queue is closed.
    closed_dates: list[date] = Field(default_factory=list)

    _week: dict[int, list[tuple[int, int]]] = PrivateAttr(default_factory=dict)
    _zone: ZoneInfo | None = PrivateAttr(default=None)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {name!r} (want an IANA name like 'Europe/Berlin')") from None
        return name

    def model_post_init(self, context: Any, /) -> None:
        self._zone = ZoneInfo(self.timezone)
        week: dict[int, list[tuple[int, int]]] = {}
        for key, ranges in (self.__pydantic_extra__ or {}).items():
            for day in _day_numbers(key):
                week.setdefault(day, []).extend(ranges)
        self._week = {day: sorted(ranges) for day, ranges in week.items()}

    @property
    def zone(self) -> ZoneInfo:
        assert self._zone is not None
        return self._zone

    def windows(self, start: datetime, end: datetime) -> list[OpenWindow]:
        """The open windows (UTC, merged when they touch) that overlap [start, end). DST-correct: each window is
        built in local wall time and converted, so 09:00 Berlin is 07:00 UTC in summer and 08:00 in winter."""
        closed = set(self.closed_dates)
        day = start.astimezone(self.zone).date() - timedelta(days=1)
        last = end.astimezone(self.zone).date() + timedelta(days=1)
        spans: list[tuple[datetime, datetime]] = []
        while day <= last:
            if day not in closed:
                for first, until in self._week.get(day.weekday(), ()):
                    opens, closes = self._instant(day, first), self._instant(day, until)
                    if closes > start and opens < end:
                        spans.append((opens, closes))
            day += timedelta(days=1)
        merged: list[list[datetime]] = []
        for opens, closes in sorted(spans):
            if merged and opens <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], closes)
            else:
                merged.append([opens, closes])
        return [OpenWindow(start=opens, end=closes) for opens, closes in merged]

    def _instant(self, day: date, minutes: int) -> datetime:
        wall = datetime.combine(day, time()) + timedelta(minutes=minutes)
        return wall.replace(tzinfo=self.zone).astimezone(UTC)


class QueueConfig(Strict):
    # How long a user waits here before the next rung of the ladder (None: config timeouts / the default).
    sla_seconds: int | None = Field(default=None, ge=1, le=MAX_SECONDS)
    # Every skill an agent needs to be offered or to claim a conversation waiting here (with the route's and the
    # handoff's own).
    skills: list[Name] = Field(default_factory=list, max_length=20)
    # None: always open.
    business_hours: BusinessHours | None = None
    # How waiting conversations reach agents: `pull` (agents claim, first wins), `push` (offered to the present
    # agent with free capacity and the skills, longest idle first) or `sticky` (push, offered first to the agent who
    # last helped in this conversation, while present, within `sticky_minutes`).
    assignment: Literal["pull", "push", "sticky"] = "pull"
    # push / sticky: how long an offer stands before it goes to the next agent (the agent is then set `away`).
    offer_seconds: int = Field(default=30, ge=1, le=3600)
    sticky_minutes: int = Field(default=60, ge=1, le=30 * 24 * 60)
    # When nobody who could take a conversation is online as it is routed here (or later, while it waits here):
    # `next` runs the next rung at once (the user is told), `wait` waits the SLA. None: `next` for push and sticky
    # queues, `wait` for pull queues (whose agents need not report presence).
    when_nobody_present: Literal["wait", "next"] | None = None

    @property
    def pushes(self) -> bool:
        return self.assignment != "pull"

    @property
    def skips_when_nobody_present(self) -> bool:
        return (self.when_nobody_present or ("next" if self.pushes else "wait")) == "next"


# ---- desks ------------------------------------------------------------------------------------------


class DeskConfig(Strict):
    """A third-party desk reached by webhook; its signing secret lives in the environment, never in the file."""

    url: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    secret_env: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=200)]

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL, got {url!r}")
        return url

    @field_validator("secret_env")
    @classmethod
    def _a_name_not_a_secret(cls, name: str) -> str:
        if name.lower().startswith("whsec_"):
            # Do not echo it: it looks like the secret itself.
            raise ValueError("name the environment variable that holds the secret, not the secret itself")
        return name

    def secret(self) -> str | None:
        """The desk's `whsec_` secret from the environment (None when the variable is unset or empty)."""
        return os.environ.get(self.secret_env) or None


# ---- routes -----------------------------------------------------------------------------------------


class When(Strict):
    """A route's conditions, all ANDed; none given: the route always matches."""

    # Case-insensitive substrings of the handoff's reason (any one).
    reason: Strings | None = None
    # The request's intent, or its params["intent"] (any one, exact).
    intent: Strings | None = None
    # name -> a value or a list of values (exact) in the request's params / the conversation's slots.
    params: dict[str, Scalars] | None = None
    slots: dict[str, Scalars] | None = None
    channel: Strings | None = None
    # "de" matches "de" and "de-AT" (case-insensitive).
    language: Strings | None = None


def _a_place(target: HandoffTarget) -> HandoffTarget:
    if target.final:
        ends = " and ".join(f"'{k.field}'" for k in targets.KINDS if k.final)
        raise ValueError(f"'to' must be a {', '.join(targets.PLACES[:-1])} or {targets.PLACES[-1]} ({ends} only "
                         "end a fallback)")
    return target


Place = Annotated[HandoffTarget, AfterValidator(_a_place)]


class Route(Strict):
    name: Name
    when: When = Field(default_factory=When)
    to: Place
    # Tried in order when the target does not answer in time, rejects, or is closed.
    fallback: list[HandoffTarget] = Field(default_factory=list, max_length=MAX_FALLBACK)
    # Narrows what the target sees of the context (None: the config's filter allowlist).
    allowlist: Allowlist = None
    # Skills an agent needs for conversations this route sends to a queue (with the queue's own).
    skills: list[Name] = Field(default_factory=list, max_length=20)
    # Higher waits ahead in the queue (a handoff's `params.priority` overrides it).
    priority: int = Field(default=0, ge=-100, le=100)


class Rating(Strict):
    """A one-question satisfaction rating after a live agent's stretch ends (a release or a close)."""

    enabled: bool = False
    question: Annotated[str, StringConstraints(min_length=1, max_length=300)] = (
        "How would you rate the help you got from {agent}? Reply with a number from 1 (poor) to 5 (great)."
    )
    # After a close, how long the question may be answered (the conversation takes nothing else meanwhile).
    answer_minutes: int = Field(default=10, ge=1, le=1440)


class AiFailure(Strict):
    """Where a conversation goes when the AI agent fails for good."""

    to: Place
    fallback: list[HandoffTarget] = Field(default_factory=list, max_length=MAX_FALLBACK)


# ---- the AI agent (BATON_AI_AGENT=openai) ------------------------------------------------------------

DEFAULT_SYSTEM_PROMPT = (
    "You are a customer-service assistant. Answer briefly and politely. When the user asks for a person, or when "
    "you cannot help with the request, call the `handoff` tool."
)
DEFAULT_HANDOFF_DESCRIPTION = (
    "Hand the conversation to a person when the user asks for one or when you cannot help with the request."
)
# Added to the tool when the config does not declare it: the handoff's reason (routes match `when.reason` on it).
REASON_PARAMETER = "reason"
MAX_TOOL_PARAMETERS = 20
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,),
}


class ToolParameter(Strict):
    """One parameter of the `handoff` tool: a JSON Schema property of a scalar type (a route matches it as a
    param: `when: {params: {topic: billing}}`)."""

    type: Literal["string", "number", "integer", "boolean"]
    description: Annotated[str, StringConstraints(min_length=1, max_length=1000)] | None = None
    enum: Annotated[list[Scalar], Field(min_length=1, max_length=100)] | None = None

    @model_validator(mode="after")
    def _enum_fits_the_type(self) -> ToolParameter:
        for value in self.enum or ():
            if self.problem(value) is not None:
                raise ValueError(f"enum value {value!r} is not of type {self.type}")
        return self

    def schema(self) -> dict[str, Any]:
        """The JSON Schema property as the model is shown it."""
        return self.model_dump(exclude_none=True)

    def problem(self, value: Any) -> str | None:
        """Why `value` (from a model's tool call) does not fit, without quoting it; None when it does."""
        kinds = JSON_TYPES[self.type]
        if isinstance(value, bool) and self.type != "boolean" or not isinstance(value, kinds):
            return f"not of type {self.type}"
        if self.enum is not None and value not in self.enum:
            return f"not one of the {len(self.enum)} allowed values"
        return None


class HandoffTool(Strict):
    """The Agent Handoff Event as the model's `handoff` function tool: when to call it, and what to send."""

    description: Annotated[str, StringConstraints(min_length=1, max_length=2000)] = DEFAULT_HANDOFF_DESCRIPTION
    parameters: dict[Name, ToolParameter] = Field(default_factory=dict, max_length=MAX_TOOL_PARAMETERS)
    # Parameters the model must send (a call without one is refused and audited, not routed).
    required: list[Name] = Field(default_factory=list, max_length=MAX_TOOL_PARAMETERS)

    @field_validator("required")
    @classmethod
    def _unique(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("a parameter is listed twice")
        return names

    @model_validator(mode="after")
    def _required_are_declared(self) -> HandoffTool:
        for name in self.required:
            if name not in self.parameters and name != REASON_PARAMETER:
                declared = ", ".join(sorted(self.parameters)) or "none"
                raise ValueError(f"required parameter {name!r} is not declared in parameters (declared: {declared})")
        return self

    def all_parameters(self) -> dict[str, ToolParameter]:
        """The declared parameters, plus `reason` unless the config declares its own."""
        reason = ToolParameter(type="string", description="Why you hand off, in a few words, for whoever takes over.")
        return {**self.parameters} if REASON_PARAMETER in self.parameters else {**self.parameters, REASON_PARAMETER: reason}


class AiAgentConfig(Strict):
    """What an LLM agent (BATON_AI_AGENT=openai) is told: its instructions and its handoff tool."""

    system_prompt: Annotated[str, StringConstraints(min_length=1, max_length=20_000)] = DEFAULT_SYSTEM_PROMPT
    handoff_tool: HandoffTool = Field(default_factory=HandoffTool)
    # Sampling, passed to the model as given (None: the provider's default).
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=100_000)


# ---- the file ---------------------------------------------------------------------------------------


class BatonConfig(Strict):
    version: Literal[1] = 1
    timeouts: Timeouts = Field(default_factory=Timeouts)
    waiting: Waiting = Field(default_factory=Waiting)
    filter: FilterPolicy = Field(default_factory=FilterPolicy)
    intents: dict[Name, Intent] = Field(default_factory=dict)
    # None declared: any queue name is accepted (the desk creates queues as conversations arrive).
    queues: dict[Name, QueueConfig] = Field(default_factory=dict)
    desks: dict[Name, DeskConfig] = Field(default_factory=dict)
    # First match wins.
    routes: list[Route] = Field(default_factory=list)
    # None: when the AI agent fails for good, the assistant apologises and the conversation stays with it.
    ai_failure: AiFailure | None = None
    # Read when BATON_AI_AGENT=openai (the demo agent and a customer's webhook bot ignore it).
    ai_agent: AiAgentConfig = Field(default_factory=AiAgentConfig)
    # The codes a live agent picks from when releasing or closing a conversation (empty: no code asked for).
    wrap_up_codes: list[Name] = Field(default_factory=list, max_length=50)
    rating: Rating = Field(default_factory=Rating)
    # The desk: an agent whose console stops sending heartbeats is offline after this long.
    presence_grace_seconds: int = Field(default=45, ge=5, le=3600)

    def pushing_queues(self) -> dict[str, QueueConfig]:
        return {name: q for name, q in self.queues.items() if q.pushes}

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> BatonConfig:
        if info.context and info.context.get(_DEFER_CHECKS):
            return self
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(f"{_dotted(loc)}: {message}" for loc, message in problems))
        return self

    def problems(self) -> list[tuple[Loc, str]]:
        """What the field types cannot see: names that must be declared elsewhere, duplicates, ladder order."""
        return _cross_check(list(enumerate(self.routes)), self.ai_failure, set(self.queues), set(self.desks))

    def queue_known(self, name: str) -> bool:
        """A queue this config routes to: declared, or any name when the config declares no queues."""
        return not self.queues or name in self.queues

    def queue_of(self, target: HandoffTarget) -> QueueConfig | None:
        """The declared queue a target names (its kind's names live in `queues:`), else None."""
        kind = target.kind
        if kind.registry is not targets.Registry.CONFIG_QUEUES:
            return None
        return self.queues.get(kind.name(target) or "")

    def unknown_queue(self, target: HandoffTarget) -> bool:
        """The target names a queue this config does not route to."""
        kind = target.kind
        return kind.registry is targets.Registry.CONFIG_QUEUES and not self.queue_known(kind.name(target) or "")

    def match_intent(self, text: str) -> tuple[str, Intent] | None:
        """The first declared intent whose keywords or patterns occur in `text`."""
        for name, intent in self.intents.items():
            if intent.matches(text):
                return name, intent
        return None


def _cross_check(
    routes: list[tuple[int, Route]], ai_failure: AiFailure | None, queues: set[str], desks: set[str]
) -> list[tuple[Loc, str]]:
    """The cross-checks over (index, route) pairs, so the loader can run them on the routes that are valid even
    when other parts of the file are not."""
    found: list[tuple[Loc, str]] = []
    seen: dict[str, int] = {}
    for i, route in routes:
        if route.name in seen:
            message = f"duplicate route name {route.name!r} (also routes.{seen[route.name]})"
            found.append((("routes", i, "name"), message))
        seen.setdefault(route.name, i)
        found += _ladder_problems(("routes", i), route.to, route.fallback, queues, desks)
    if ai_failure is not None:
        found += _ladder_problems(("ai_failure",), ai_failure.to, ai_failure.fallback, queues, desks)
    return found


def _ladder_problems(
    at: Loc, to: HandoffTarget, fallback: list[HandoffTarget], queues: set[str], desks: set[str]
) -> Iterator[tuple[Loc, str]]:
    for where, rung in [((*at, "to"), to), *(((*at, "fallback", j), r) for j, r in enumerate(fallback))]:
        # The names the config itself declares are checked here; agents are checked where a request names them.
        kind, name = rung.kind, rung.kind.name(rung)
        if kind.registry is targets.Registry.CONFIG_QUEUES and queues and name not in queues:
            yield (*where, kind.field), f"unknown queue {name!r} (declared: {', '.join(sorted(queues))})"
        if kind.registry is targets.Registry.CONFIG_DESKS and name not in desks:
            declared = f"declared: {', '.join(sorted(desks))}" if desks else "no desks declared"
            yield (*where, kind.field), f"unknown desk {name!r} ({declared})"
    for j, rung in enumerate(fallback):
        if rung.final and j != len(fallback) - 1:
            yield (*at, "fallback", j), f"'{rung.label}' ends the ladder: it can only be the last fallback"


def _lenient_cross_check(data: Any) -> list[tuple[Loc, str]]:
    """The cross-checks on a file that failed validation: the routes that are valid on their own, against the
    queue and desk names as written."""
    if not isinstance(data, dict):
        return []

    def names(section: str) -> set[str]:
        return set(map(str, data[section])) if isinstance(data.get(section), dict) else set()

    routes: list[tuple[int, Route]] = []
    for i, raw in enumerate(data.get("routes") if isinstance(data.get("routes"), list) else []):
        try:
            routes.append((i, Route.model_validate(raw)))
        except ValidationError:
            pass
    try:
        ai_failure = AiFailure.model_validate(data["ai_failure"]) if data.get("ai_failure") is not None else None
    except ValidationError:
        ai_failure = None
    return _cross_check(routes, ai_failure, names("queues"), names("desks"))


def default_config() -> BatonConfig:
    """Without BATON_CONFIG: no intents, any queue accepted, every handoff without a target goes to `general`."""
    return BatonConfig(routes=[Route(name="default", to=HandoffTarget(queue="general"))])


# ---- the loader -------------------------------------------------------------------------------------


def load_config(path: Path) -> BatonConfig:
    """Read and validate a YAML (.yaml/.yml) or TOML (.toml) config; ConfigError lists every problem by line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ConfigError([f"{path}: a config file ends in .yaml, .yml or .toml"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([f"{path}: cannot read the file: {err}"]) from None
    source: _Source = _YamlSource(path, text) if suffix in (".yaml", ".yml") else _TomlSource(path, text)
    if source.data is None:
        raise ConfigError([f"{path}: the file is empty"])
    problems: list[tuple[Loc, str]] = list(source.problems)
    config = None
    try:
        config = BatonConfig.model_validate(source.data, context={_DEFER_CHECKS: True})
    except ValidationError as err:
        problems += [(_clean_loc(e["loc"]), _message(e)) for e in err.errors()]
        problems += _lenient_cross_check(source.data)
    else:
        problems += config.problems()
    if problems:
        located = [(source.line_of(loc), loc, message) for loc, message in problems]
        located.sort(key=lambda p: p[0] if p[0] is not None else 1 << 30)
        raise ConfigError([source.describe(line, loc, message) for line, loc, message in located])
    assert config is not None
    return config


def _clean_loc(loc: tuple[Any, ...]) -> Loc:
    # Dict-key errors end in "[key]": the key itself is the place.
    return tuple(part for part in loc if part != "[key]")


def _dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _message(error: Any) -> str:
    kind, message = error["type"], error["msg"]
    if kind == "extra_forbidden":
        if len(error["loc"]) == 1:
            return f"unknown key (known: {', '.join(BatonConfig.model_fields)})"
        return "unknown key"
    if kind == "missing":
        return "required"
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


class _Source:
    """A parsed file: its data, problems found while parsing, and how to point at a field's line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: Any = None
        self.problems: list[tuple[Loc, str]] = []

    def line_of(self, loc: Loc) -> int | None:
        raise NotImplementedError

    def describe(self, line: int | None, loc: Loc, message: str) -> str:
        where = f"{self.path}:{line}" if line is not None else f"{self.path}"
        return f"{where}: {_dotted(loc)}: {message}"


class _YamlSource(_Source):
    def __init__(self, path: Path, text: str) -> None:
        super().__init__(path)
        loader = yaml.SafeLoader(text)
        try:
            self.root = loader.get_single_node()
            self.data = loader.construct_document(self.root) if self.root is not None else None
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            where = f"{path}:{mark.line + 1}" if mark is not None else f"{path}"
            what = ": ".join(filter(None, [err.context, err.problem])) or "invalid YAML"
            raise ConfigError([f"{where}: YAML syntax error: {what}"]) from None
        except (yaml.YAMLError, ValueError) as err:
            raise ConfigError([f"{path}: YAML error: {err}"]) from None
        finally:
            loader.dispose()
        if self.root is not None:
            self.problems = list(self._duplicate_keys(self.root, ()))

    def _duplicate_keys(self, node: yaml.Node, at: Loc) -> Iterator[tuple[Loc, str]]:
        """YAML keeps the last of two equal keys silently; a config that says a thing twice is an error."""
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                if name is not None and name in seen:
                    yield (*at, name), f"duplicate key {name!r} (line {key.start_mark.line + 1})"
                if name is not None:
                    seen.add(name)
                yield from self._duplicate_keys(value, (*at, name if name is not None else "?"))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                yield from self._duplicate_keys(item, (*at, i))

    def line_of(self, loc: Loc) -> int | None:
        """Walk the loc through mapping keys and sequence items; the deepest node found names the line (a mapping
        entry by its key's line, where the field is written)."""
        node = self.root
        if node is None:
            return None
        line = node.start_mark.line + 1
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                # The last of duplicate keys is the one that counts (and the one to point at).
                entry = None
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                        entry = key, value
                if entry is None:
                    break
                line, node = entry[0].start_mark.line + 1, entry[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line


_TOML_ERROR_AT = re.compile(r"\s*\(at (?:line (\d+), column \d+|end of document)\)\s*$")


class _TomlSource(_Source):
    def __init__(self, path: Path, text: str) -> None:
        super().__init__(path)
        self.lines = text.splitlines()
        try:
            self.data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            message = str(err)
            match = _TOML_ERROR_AT.search(message)
            line = match.group(1) if match and match.group(1) else None
            if line is None and "end of document" in message:
                line = str(len(self.lines))
            where = f"{path}:{line}" if line is not None else f"{path}"
            raise ConfigError([f"{where}: TOML syntax error: {_TOML_ERROR_AT.sub('', message)}"]) from None

    def line_of(self, loc: Loc) -> int | None:
        """Heuristic: follow the loc's keys down the file (each key's first definition at or after the previous
        one's; the n-th `[[key]]` header for an index); the last line found is the answer."""
        found: int | None = None
        start = 0
        previous: str | None = None
        for part in loc:
            if isinstance(part, int):
                if previous is not None:
                    header = re.compile(rf"^\s*\[\[\s*(?:[\w.\"'-]+\.)?{_toml_key(previous)}\s*\]\]")
                    hits = [i for i in range(start, len(self.lines)) if header.match(self.lines[i])]
                    if part < len(hits):
                        found = start = hits[part]
                continue
            previous = part
            definition = re.compile(rf"(?:^|[\s{{,.\[])\"?{re.escape(part)}\"?\s*(?:=|\]|\.[\w\"])")
            for i in range(start, len(self.lines)):
                if definition.search(self.lines[i].split("#", 1)[0]):
                    found = start = i
                    break
        return None if found is None else found + 1


def _toml_key(name: str) -> str:
    return rf"(?:{re.escape(name)}|\"{re.escape(name)}\")"
