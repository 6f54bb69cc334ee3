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
    DELIVER_TO_DESK = "deliver_to_desk"
    FORWARD_TO_DESK = "forward_to_desk"
    RING_BELL = "ring_bell"  # the event stream's doorbell (docs/event-stream.md)
