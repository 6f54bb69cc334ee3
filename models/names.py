"""Every public name in one place: task queue, workflow, signals, updates, queries, search attributes, routes."""

from temporalio.common import SearchAttributeKey

TASK_QUEUE = "baton"
WORKFLOW_TYPE = "Conversation"
WORKFLOW_ID_PREFIX = "conversation-"


def workflow_id(conversation_id: str) -> str:
    return f"{WORKFLOW_ID_PREFIX}{conversation_id}"


class Signals:
    USER_MESSAGE = "user_message"
    AGENT_MESSAGE = "agent_message"
    REQUEST_HANDOFF = "request_handoff"
    HAND_BACK = "hand_back"
    CLOSE = "close"
    SET_CONTEXT = "set_context"
    CANCEL_HANDOFF = "cancel_handoff"


class Updates:
    """The answered twins of the signals, plus handoff resolution. Validators reject illegal commands."""

    SUBMIT_USER_MESSAGE = "submit_user_message"
    SUBMIT_AGENT_MESSAGE = "submit_agent_message"
    SUBMIT_HANDOFF = "submit_handoff"
    SUBMIT_HAND_BACK = "submit_hand_back"
    SUBMIT_CLOSE = "submit_close"
    SUBMIT_CONTEXT = "submit_context"
    ACCEPT_HANDOFF = "accept_handoff"
    REJECT_HANDOFF = "reject_handoff"
    CANCEL_HANDOFF = "cancel_handoff"


class Queries:
    SNAPSHOT = "snapshot"
    TRANSCRIPT = "transcript"
    AUDIT = "audit"
    AI_HISTORY = "ai_history"  # the AI agent's window of the transcript, read by its activity


class SearchAttributes:
    STATE = SearchAttributeKey.for_keyword("BatonState")
    OWNER = SearchAttributeKey.for_keyword("BatonOwner")
    QUEUE = SearchAttributeKey.for_keyword("BatonQueue")
    CHANNEL = SearchAttributeKey.for_keyword("BatonChannel")
    HANDOFFS = SearchAttributeKey.for_int("BatonHandoffs")
    WAITING_SINCE = SearchAttributeKey.for_datetime("BatonWaitingSince")

    ALL = (STATE, OWNER, QUEUE, CHANNEL, HANDOFFS, WAITING_SINCE)


class Routes:
    MESSAGES = "/v1/conversations/{conversation_id}/messages"
    CONTEXT = "/v1/conversations/{conversation_id}/context"
    HANDOFF = "/v1/conversations/{conversation_id}/handoff"
    SNAPSHOT = "/v1/conversations/{conversation_id}"
    TRANSCRIPT = "/v1/conversations/{conversation_id}/transcript"
    AUDIT = "/v1/conversations/{conversation_id}/audit"
    CLOSE = "/v1/conversations/{conversation_id}/close"
    HEALTHZ = "/healthz"
    READYZ = "/readyz"
    METRICS = "/metrics"
    # The payload codec's endpoints for the Temporal UI and CLI (`--codec-endpoint <api>/codec`).
    CODEC_ENCODE = "/codec/encode"
    CODEC_DECODE = "/codec/decode"
    # The Temporal UI's sign-in (a session cookie for /codec: the UI cannot send the admin key).
    CODEC_SIGN_IN = "/codec/sign-in"
    CODEC_SIGN_OUT = "/codec/sign-out"
    # The platform protocol (on the receiving platform, except EVENTS which is the sender's callback).
    AGENT_VERIFY = "/v1/agents/{agent_id}/verify"
    AGENT_HANDOFFS = "/v1/agents/{agent_id}/handoffs"
    AGENT_MESSAGES = "/v1/agents/{agent_id}/conversations/{remote_conversation_id}/messages"
    AGENT_EVENTS = "/v1/agents/{agent_id}/events"
    # A third-party desk's status callbacks (accepted / failed / message / completed).
    DESK_EVENTS = "/v1/desks/{desk}/events"
    DESK_TRANSCRIPT = "/v1/desk/conversations/{conversation_id}/transcript"


class Activities:
    AI_RESPOND = "ai_respond"
    DELIVER_TO_CHANNEL = "deliver_to_channel"
    FILTER_CONTEXT = "filter_context"
    DELIVER_HANDOFF = "deliver_handoff"
    FORWARD_TO_AGENT = "forward_to_agent"
    DELIVER_TO_PEER = "deliver_to_peer"
    ROUTE_HANDOFF = "route_handoff"
    QUEUE_POSITION = "queue_position"
    DELIVER_TO_THIRD_PARTY_DESK = "deliver_to_desk"
    FORWARD_TO_THIRD_PARTY_DESK = "forward_to_desk"
    RING_BELL = "ring_bell"  # the event stream's doorbell (docs/event-stream.md)
    SUMMARIZE_HANDOFF = "summarize_handoff"  # the handoff's summary for its receiver


class Errors:
    """The `type` of every ApplicationError Baton raises: activities' failures (retried unless marked final) and
    the workflow's refusals, matched on by the API and by callers. Names, not messages: a message may change."""

    REJECTED = "Rejected"  # an update validator refused the command (API: 409 with the reason)
    TOO_LARGE = "TooLarge"  # a command past a size bound (API: 413)
    AGENT_UNAVAILABLE = "AgentUnavailable"  # the AI agent's webhook, or an external agent: retried
    AGENT_REJECTED = "AgentRejected"  # the AI agent's webhook answered 4xx: final
    AGENT_BAD_REPLY = "AgentBadReply"  # the AI agent's answer is not a valid reply: final
    CHANNEL_UNAVAILABLE = "ChannelUnavailable"  # the channel callback: retried (honouring Retry-After)
    DESK_UNAVAILABLE = "DeskUnavailable"  # a third-party desk: retried
    UNKNOWN_DESK = "UnknownDesk"  # a desk the config does not name: final
    REGISTRY_UNAVAILABLE = "RegistryUnavailable"  # the agent registry (store) could not be read: final
    BAD_CONFIGURATION = "BadConfiguration"  # a desk's missing or unusable secret, a malformed outbound setting: final
    FILTER_FAILED = "FilterFailed"  # the context filter itself failed: final (nothing is shared)
