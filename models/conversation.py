"""The conversation's contracts: states, inputs of every signal/update/query, transcript, audit, whole workflow state."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import to_json

from models import targets

MAX_TEXT = 8000
# ---- bounds (README, "Input bounds"): every input, every query answer and whatever a run carries to the next stays
# far below Temporal's 2 MB payload limit, however long a conversation runs.
MAX_CONTEXT_UPDATE_BYTES = 64 * 1024  # one context update: its sections as compact JSON (UTF-8)
MAX_CONTEXT_BYTES = 128 * 1024  # the whole stored context, sealed `auth` / `internal_notes` updates included
PAGE_BYTES = 1024 * 1024  # one transcript or audit query answer (a page always holds at least one entry)
CARRY_TAIL_BYTES = 256 * 1024  # transcript handed to an agent, to the next run, or shown to the AI per turn
CARRY_AUDIT_BYTES = 256 * 1024  # audit handed to the next run
CARRY_IDS_BYTES = 128 * 1024  # recent message ids (the de-duplication window) handed to the next run
CARRY_TRANSCRIPT_BYTES = 768 * 1024  # transcript a run may hand on (tail + undelivered); past it, continue-as-new waits for delivery


def json_size(value: Any) -> int:
    """Bytes of `value` as compact JSON (what it weighs in a Temporal payload)."""
    return len(to_json(value))
# Conversation and agent ids: safe in workflow ids, URLs and search attributes.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
ConversationId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
MessageId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]
# Names of queues, channels, authors and agents.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$"
Name = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=NAME_PATTERN)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT)]
Reason = Annotated[str, StringConstraints(max_length=500)]
ParamValue = str | int | float | bool | None


class Contract(BaseModel):
    """Strict by default: an unknown field is an error that names the field, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class State(StrEnum):
    AI = "ai"
    HANDOFF_PENDING = "handoff_pending"
    EXTERNAL_AGENT = "external_agent"
    LIVE_AGENT = "live_agent"
    CLOSED = "closed"


class Role(StrEnum):
    USER = "user"
    AI = "ai"
    EXTERNAL_AGENT = "external_agent"
    LIVE_AGENT = "live_agent"
    SYSTEM = "system"


# ---- workflow input -------------------------------------------------------------------------------


class ConversationInput(Contract):
    conversation_id: ConversationId
    channel: Name = "web"
    inactivity_timeout_seconds: int = Field(default=1800, ge=10, le=7 * 24 * 3600)
    handoff_sla_seconds: int = Field(default=300, ge=1, le=7 * 24 * 3600)
    # Set only by continue-as-new: the whole state of the previous run.
    carried: ConversationState | None = None
    # Set when another platform handed this conversation to one of our local agents (the receiving side).
    peer: PeerLink | None = None
    # The context the conversation starts with (already filtered by the sender and cleaned at our ingress).
    context: Context | None = None
    # Set only by a closed run continuing as new: the user's messages that arrived after the close, which start
    # the next conversation under the same id (the first of them is its first message).
    first_messages: list[UserMessage] = Field(default_factory=list, max_length=100)


# ---- signal / update inputs -----------------------------------------------------------------------


class UserMessage(Contract):
    message_id: MessageId
    text: Text
    author: Name = "user"
    # Kinds of sensitive values the API redacted from `text` before it reached the workflow (for the audit).
    redacted: list[str] = Field(default_factory=list, max_length=20)
    # Set by the platform protocol: the local agent the sending platform addressed; it must own the conversation.
    via_agent: Name | None = None


class AgentMessage(Contract):
    """A reply from whoever owns the conversation now (a live agent or an external agent)."""

    message_id: MessageId
    text: Text
    author: Name
    role: Literal[Role.LIVE_AGENT, Role.EXTERNAL_AGENT]
    redacted: list[str] = Field(default_factory=list, max_length=20)


def _either(names) -> str:
    """'a', 'b' or 'c'."""
    quoted = [f"'{n}'" for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


class HandoffTarget(Contract):
    """One rung of a handoff: a live queue, a named live agent, an external agent (platform protocol), a
    third-party desk (webhook), or, at the end of an escalation ladder, back to the AI / a leave-a-message notice."""

    queue: Name | None = None
    live_agent: Name | None = None
    external_agent: Name | None = None
    desk: Name | None = None
    ai: bool = False
    leave_message: bool = False
    # What the user is told when the ladder ends on `ai` or `leave_message` (a default when empty).
    message: Annotated[str, StringConstraints(max_length=1000)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> HandoffTarget:
        chosen = [k.field for k in targets.KINDS if getattr(self, k.field) not in (None, False)]
        if len(chosen) != 1:
            raise ValueError(f"a target names exactly one of {_either(k.field for k in targets.KINDS)}")
        if self.message is not None and not self.final:
            raise ValueError(f"'message' belongs to an {_either(k.field for k in targets.KINDS if k.final)} target")
        return self

    # What a target of this kind means is its row in models.targets; these read it.
    @property
    def kind(self) -> targets.TargetKind:
        return targets.kind_of(self)

    @property
    def label(self) -> str:
        return self.kind.label(self)

    @property
    def waits_for_person(self) -> bool:
        """It waits in a waiting list of our desk (a queue, or a named live agent's personal queue)."""
        return self.kind.waits_for_person

    @property
    def desk_queue(self) -> str | None:
        """The queue of our desk it waits in (`BatonQueue`; a named live agent's is `agent:<id>`), else None."""
        return self.kind.waiting_list(self)

    @property
    def final(self) -> bool:
        """The ladder ends here: back to the AI (with a message or a leave-a-message notice)."""
        return self.kind.final


class HandoffRequest(Contract):
    reason: Reason = ""
    target: HandoffTarget | None = None
    fallback: list[HandoffTarget] = Field(default_factory=list, max_length=10)
    params: dict[str, ParamValue] = Field(default_factory=dict, max_length=50)
    sla_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    # The intent that triggered it (a config intent, or the AI agent's); routes may match on it.
    intent: Name | None = None
    # Who asks; when given it must be the current owner (a live agent's transfer), checked atomically.
    by: Name | None = None

    @model_validator(mode="after")
    def _target_is_a_place(self) -> HandoffRequest:
        if self.target is not None and self.target.final:
            raise ValueError("target must be a queue, live_agent, external_agent or desk ('ai' and "
                             "'leave_message' only end a fallback list)")
        return self


class CancelHandoff(Contract):
    """The user stopped waiting ("never mind"): back to the AI."""

    reason: Reason = "the user cancelled"


class HandBack(Contract):
    reason: Reason = ""
    # Who hands back; when given it must be the current owner.
    by: Name | None = None
    # A live agent's wrap-up code (the config's `wrap_up_codes`), recorded in the audit.
    wrap_up: Name | None = None
    # Asked of the user once the live agent's stretch ends (the config's `rating`); a reply 1-5 is their rating.
    rating_question: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT)] | None = None


class CloseRequest(Contract):
    reason: Reason = "closed"
    # Who closes; when given it must be the current owner (an external agent closing through the protocol).
    by: Name | None = None
    wrap_up: Name | None = None
    # A live agent's close (the config's `rating`): asked of the user after the closing notice; a reply 1-5 within
    # `rating_seconds` is their rating, and the run ends when it is answered or the time is up.
    rating_question: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT)] | None = None
    rating_seconds: int = Field(default=600, ge=1, le=86_400)


class ContextUpdate(Contract):
    """Merged into the context. `auth` and `internal_notes` arrive only sealed (encrypted by the API)."""

    profile: dict[str, Any] | None = None
    slots: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    sealed: dict[Literal["auth", "internal_notes"], str] = Field(default_factory=dict)
    # What the API withheld from profile / slots / metadata at ingress (sealed into `auth` or redacted): path and why.
    withheld: list[ReceiptEntry] = Field(default_factory=list, max_length=500)


class AcceptHandoff(Contract):
    handoff_id: str
    owner: Name


class RejectHandoff(Contract):
    handoff_id: str
    reason: Reason = "rejected"


# ---- records --------------------------------------------------------------------------------------


class ReceiptEntry(BaseModel):
    """One withheld thing: where and why. Never the value."""

    path: str
    action: Literal["dropped", "redacted"]
    reason: str


class TranscriptEntry(BaseModel):
    seq: int
    message_id: str
    role: Role
    author: str
    text: str
    at: datetime
    # On a conversation handed to us by another platform: this entry ends our stretch (sent as that callback type).
    event: Literal["hand_back", "close"] | None = None


class AuditEntry(BaseModel):
    at: datetime
    kind: str
    detail: dict[str, Any] = Field(default_factory=dict)


class OpenWindow(BaseModel):
    """When a queue is open (business hours), as absolute UTC instants computed by the routing activity."""

    start: datetime
    end: datetime


# Business hours are decided here, once: by the routing activity (skip a closed queue) and by the workflow (a queue
# that closes while a user waits in it). `windows` None means always open.


def window_at(windows: list[OpenWindow] | None, at: datetime) -> OpenWindow | None:
    """The opening window that holds `at`, if any."""
    return next((w for w in windows or [] if w.start <= at < w.end), None)


def is_open(windows: list[OpenWindow] | None, at: datetime) -> bool:
    return windows is None or window_at(windows, at) is not None


def next_opening(windows: list[OpenWindow], at: datetime) -> datetime | None:
    return min((w.start for w in windows if w.start > at), default=None)


class PendingHandoff(BaseModel):
    handoff_id: str
    reason: str
    # None while the routing activity decides (the request named no target, or routing is being asked).
    target: HandoffTarget | None
    fallback: list[HandoffTarget] = Field(default_factory=list)
    params: dict[str, ParamValue] = Field(default_factory=dict)
    requested_at: datetime
    deadline: datetime
    # The SLA each target of this handoff gets (the request's, else the conversation's default).
    sla_seconds: int | None = None
    # The first transcript seq the target has not been shown yet is derived from this.
    from_seq: int
    # ---- set by the routing decision ----
    routed: bool = False
    intent: str | None = None
    rule: str | None = None
    # Business hours of the ladder's queues: target label -> open windows (absent label: always open).
    hours: dict[str, list[OpenWindow]] = Field(default_factory=dict)
    # SLA seconds per waiting rung of the ladder (target label -> seconds).
    slas: dict[str, int] = Field(default_factory=dict)
    allowlist: list[str] | None = None
    cancel_phrases: list[str] = Field(default_factory=list)
    position_update_seconds: int = 0
    position: int | None = None
    # The last transcript seq carried in the envelope sent to an external desk (later ones are forwarded).
    carried_until: int | None = None
    # Its summary was asked for (once per handoff, whatever rung it is on; the handoff-summary patch).
    summary_asked: bool = False


class Context(BaseModel):
    profile: dict[str, Any] = Field(default_factory=dict)
    slots: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    # Ciphertexts of `auth` / `internal_notes` patches, in arrival order; only activities can open them.
    sealed: dict[str, list[str]] = Field(default_factory=dict)


class PeerLink(BaseModel):
    """The receiving side: another platform handed this conversation to our local agent `agent_id`. Over the platform
    protocol (`baton`) what we say goes back to `callback_url`, signed with that agent's secret; an A2A client
    (`a2a`) reads it in the answers to its calls (api/a2a_server.py), so there is no callback."""

    agent_id: str
    agent_name: str | None = None
    platform: str
    source_conversation_id: str  # over A2A: the client's contextId
    handoff_id: str  # over A2A: the messageId of the client's first message
    callback_url: str = ""
    protocol: Literal["baton", "a2a"] = "baton"
    reason: str = ""
    # The sender's summary of the conversation for our agent (optional in the envelope; redacted at our door).
    summary: str | None = None
    # The sender's (filtered) transcript: the AI's memory of what was said before the handoff.
    transcript: list[TranscriptEntry] = Field(default_factory=list)
    # What our own filter withheld from the envelope at our door (a Baton sender has filtered already).
    withheld: list[ReceiptEntry] = Field(default_factory=list)


class ExternalLink(BaseModel):
    """The sending side: an external agent accepted this conversation as `remote_conversation_id` on its platform."""

    agent_id: str
    remote_conversation_id: str
    handoff_id: str


class ThirdPartyDeskLink(BaseModel):
    """Sending side: the third-party desk that accepted this conversation."""

    desk: str
    handoff_id: str


class RunSegment(BaseModel):
    """A previous run (before continue-as-new) still holds these transcript entries; queries reach it."""

    run_id: str
    first_seq: int
    last_seq: int


class Work(BaseModel):
    """One unit of deferred work for the main loop, in arrival order."""

    kind: Literal["ai_turn", "ai_resume", "ai_welcome", "deliver_handoff", "forward", "route", "share", "summarize"]
    seq: int = 0
    # The handoff the work belongs to (`forward`: the one whose owner the message goes to).
    handoff_id: str | None = None


class Rating(BaseModel):
    """A user's rating of a live agent's help (1-5), the conversation's `number`-th."""

    agent: str
    score: int | None = None
    number: int
    # The question's seq once asked (0: due, asked after the AI's turn that follows the release).
    seq: int
    question: str | None = None


class ConversationState(BaseModel):
    """All workflow state in one object, so continue-as-new hands it on whole."""

    conversation_id: str
    channel: str
    state: State = State.AI
    owner: str | None = "ai"
    queue: str | None = None
    seq: int = 0
    handoffs: int = 0
    pending: PendingHandoff | None = None
    waiting_since: datetime | None = None
    created_at: datetime
    last_activity_at: datetime
    closed_reason: str | None = None
    inactivity_timeout_seconds: int = 1800
    handoff_sla_seconds: int = 300
    transcript: list[TranscriptEntry] = Field(default_factory=list)
    earlier_runs: list[RunSegment] = Field(default_factory=list)
    recent_message_ids: list[str] = Field(default_factory=list)
    inbox: list[Work] = Field(default_factory=list)
    outbox: list[int] = Field(default_factory=list)
    channel_stopped: bool = False
    # Bells rung for the event stream (docs/event-stream.md), numbered across runs: the store keeps the newest.
    bells: int = 0
    context: Context = Field(default_factory=Context)
    audit: list[AuditEntry] = Field(default_factory=list)
    human_stretch_ended: bool = False
    peer: PeerLink | None = None
    external: ExternalLink | None = None
    # A third-party desk owns the conversation (the user's messages are forwarded to it). The snapshot calls it `desk`.
    third_party_desk: ThirdPartyDeskLink | None = None
    # The filtered context the live agent (or third-party desk) was given for the current handoff; never the raw context.
    shared_context: dict[str, Any] | None = None
    # The current handoff's summary for whoever takes over (written from the filtered transcript); kept, like
    # shared_context, while its receiver owns the conversation.
    summary: str | None = None
    # The rating question asked after a live agent's stretch (None: none open), and the last rating given.
    rating_asked: Rating | None = None
    rated: Rating | None = None
    # Set only in what continue-as-new carries (PATCH_IDLE_CONTINUE): the stream store already has this state, so
    # the next run rings no bell of its own until something changes.
    rung: bool = False


ConversationInput.model_rebuild()


# ---- query results --------------------------------------------------------------------------------


class TranscriptQuery(Contract):
    after: int = Field(default=0, ge=0)
    limit: int = Field(default=200, ge=1, le=1000)


class TranscriptPage(BaseModel):
    conversation_id: str
    entries: list[TranscriptEntry]
    # Entries with seq < first_seq (if any were asked for) live in earlier runs; the API follows them.
    first_seq: int
    earlier_runs: list[RunSegment] = Field(default_factory=list)
    last_seq: int


class Snapshot(BaseModel):
    conversation_id: str
    channel: str
    state: State
    owner: str | None
    queue: str | None
    seq: int
    handoffs: int
    pending_handoff: PendingHandoff | None
    waiting_since: datetime | None
    created_at: datetime
    last_activity_at: datetime
    closed_reason: str | None
    context: dict[str, Any]
    # Sending side: the external agent and its conversation id. Receiving side: who handed it to us.
    external: ExternalLink | None = None
    peer: dict[str, Any] | None = None
    # The third-party desk that owns the conversation (not our own desk: its live agents are `owner`).
    desk: ThirdPartyDeskLink | None = None
    # What the live agent may see of the context (filtered for the current handoff's route).
    shared_context: dict[str, Any] | None = None
    # The current handoff's summary for whoever takes over (from the filtered transcript), when one was written.
    summary: str | None = None
    # Work is in hand: the AI agent has a turn to take (or is taking it), or a handoff is being routed or sent.
    # A chat backend can show it as "typing"; the A2A server answers once it is false.
    busy: bool = False
    # Closed by a live agent, and the rating question asked then is still open: a reply 1-5 is the user's rating
    # (any other message starts a new conversation under the same id).
    rating_open: bool = False


class AuditPage(BaseModel):
    conversation_id: str
    entries: list[AuditEntry]
    # Older entries of this run left out to keep the answer within PAGE_BYTES.
    omitted: int = 0


class CommandResult(BaseModel):
    """What an update answers: the state after the command and, for messages, the seq given."""

    state: State
    owner: str | None
    seq: int | None = None
    duplicate: bool = False
    handoff_id: str | None = None


# ---- activity contracts ---------------------------------------------------------------------------


class HandoffEvent(Contract):
    reason: Reason = ""
    params: dict[str, ParamValue] = Field(default_factory=dict)
    target: HandoffTarget | None = None
    intent: Name | None = None


# The entries one bell carries, at most (as JSON); past it the bell carries none and streams read the workflow.
BELL_ENTRIES_BYTES = 16 * 1024


class Bell(BaseModel):
    """The event stream's doorbell (docs/event-stream.md): a conversation's latest transcript seq and who has it,
    written to the stream store after every change, the newest wins. Rung by the `ring_bell` activity, or carried
    by the activity a change starts anyway (the AI agent's turn, a channel delivery), which then adds the entry
    its own input holds."""

    conversation_id: str
    # The bell's number in the conversation (across runs): bells may land out of order, the store keeps the newest.
    number: int = 0
    seq: int
    state: State
    owner: str | None = None
    # The queue it waits in (handoff pending, a person's queue) or is owned from; None otherwise.
    queue: str | None = None
    # Set while it waits for a person: its place in the queue is decided by this instant, then its id.
    waiting_since: datetime | None = None
    reason: str | None = None
    # The handoff's summary while it waits for a person (the desks' waiting lists show it).
    summary: str | None = None
    at: datetime
    # The entries added since the previous bell (of this run), in seq order; empty when they would not fit.
    entries: list[TranscriptEntry] = []
    # Left out of `entries` because the carrying activity's own input holds it (it is put back before the write).
    omits: int | None = None
    # When the conversation was created: a late bell of a closed conversation (same instant) is told from the first
    # bells of a new conversation under the same id (another instant). The workflow always sets it.
    created: datetime | None = None
    # The conversation's latest rating of a live agent (the store counts each once).
    rated: Rating | None = None


class AgentTurn(BaseModel):
    conversation_id: str
    channel: str
    message: TranscriptEntry | None
    # The transcript window the agent sees. The workflow sends it empty (an activity's input is written to history on
    # every turn); the AI activity reads it with the `ai_history` query when the agent needs it.
    history: list[TranscriptEntry]
    profile: dict[str, Any] = Field(default_factory=dict)
    slots: dict[str, Any] = Field(default_factory=dict)
    # True on the first turn after a human or external agent handed the conversation back.
    resumed_after_handoff: bool = False
    # The local agent this conversation was handed to by another platform (None: our own AI's conversation).
    agent: str | None = None
    # True on the first turn of a conversation handed over from another platform: greet, don't re-ask.
    welcome: bool = False
    handoff_reason: str = ""
    # On a conversation another platform handed to us: its summary for our agent, when it sent one.
    handoff_summary: str | None = None
    # The stream's bell, when this turn carries it (its entries then leave out `message`, which the activity adds).
    bell: Bell | None = None


AI_HISTORY = 20  # transcript entries the AI agent sees per turn (the `ai_history` window)


class HistoryQuery(BaseModel):
    """The AI's window as of the turn's message (later messages are not part of this turn)."""

    upto: int | None = None


class HistoryWindow(BaseModel):
    entries: list[TranscriptEntry]


class TokenUsage(BaseModel):
    """What a model spent on one turn, as its provider reported it."""

    model: Annotated[str, StringConstraints(max_length=200)] = ""
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    total_tokens: int = Field(default=0, ge=0)


class AgentReply(BaseModel):
    text: str | None = None
    handoff: HandoffEvent | None = None
    slots: dict[str, Any] = Field(default_factory=dict)
    # On a conversation another platform handed to us: give it back (`hand_back`) or end it (`close`).
    end: Literal["hand_back", "close"] | None = None
    # An LLM agent's token usage for the turn (audited as `ai_usage`); None for agents that report none.
    usage: TokenUsage | None = None
    # What the agent's answer asked for that was not done (a malformed or unknown tool call), said without the
    # values: audited as `ai_reply_refused`, never shown to the user.
    problems: list[Annotated[str, StringConstraints(max_length=300)]] = Field(default_factory=list, max_length=10)


MAX_SUMMARY = 1000


class SummaryRequest(BaseModel):
    """Write the handoff's summary for its receiver. The activity reads the transcript window (the `ai_history`
    query, up to `upto`) and filters it before anyone, a model included, sees it."""

    conversation_id: str
    handoff_id: str
    reason: str = ""
    params: dict[str, ParamValue] = Field(default_factory=dict)
    upto: int
    # A conversation another platform handed to us: the window is read from the workflow (it includes theirs).
    peer: bool = False


class SummaryResult(BaseModel):
    summary: Annotated[str, StringConstraints(max_length=MAX_SUMMARY)] | None = None
    # "model": the LLM wrote it; "extract": the user's own words, cut short (the demo agent, or the model failed).
    by: Literal["model", "extract"] = "extract"
    usage: TokenUsage | None = None
    # Why the model's summary was not used, when it was asked and failed (never the model's text).
    model_failed: str | None = None


class ChannelMessage(BaseModel):
    """The body POSTed to BATON_CHANNEL_URL (`bell` excepted)."""

    conversation_id: str
    seq: int
    message_id: str
    role: Role
    author: str
    text: str
    at: datetime
    # The stream's bell, when this delivery carries it (its entries then leave out this one, which the activity
    # adds). Never part of the body sent to the channel.
    bell: Bell | None = None

    def entry(self) -> TranscriptEntry:
        return TranscriptEntry(seq=self.seq, message_id=self.message_id, role=self.role, author=self.author,
                               text=self.text, at=self.at)


class RemoteReply(BaseModel):
    """What an external agent said in the answer to a call (an A2A agent answers in the response, not through a
    callback): recorded like a callback's message, once by its id."""

    message_id: MessageId
    text: Text
    # Kinds of sensitive values redacted from `text` before it reached the workflow.
    redacted: list[str] = Field(default_factory=list, max_length=20)


class DeliveryResult(BaseModel):
    outcome: Literal["delivered", "rejected", "gone", "disabled"]
    status: int | None = None
    detail: str = ""
    # An A2A agent's answer to a forwarded message: what it said, and whether its task ended (`hand_back`: back to
    # our AI). Empty for every other delivery.
    replies: list[RemoteReply] = Field(default_factory=list)
    end: Literal["hand_back"] | None = None
    end_reason: str = ""
