"""Everything Baton itself says to a user, in one place: the notices the workflow writes into the transcript and
the messages the routing decision carries. (What the AI agent says is the agent's own.) Pure: the workflow
imports it, so no I/O and no clock here. Changing a text changes what new entries say; a recorded history still
replays, since texts are data, not commands (though a longer text fills a run's carried bytes sooner)."""

from __future__ import annotations

# The AI agent failed and no rule hands the conversation on.
AI_FAILURE = "Sorry, I can't answer right now. Please try again in a moment."

# Someone took over.
THIRD_PARTY_DESK_JOINED = "Our support team has joined the conversation."


def joined(owner: str) -> str:
    return f"{owner} has joined the conversation."


# A user's message could not reach whoever owns the conversation.
NOT_PASSED_ON = "Sorry, that message could not be passed on. Please try rephrasing it."
THIRD_PARTY_DESK_LOST = "Our support team can't be reached right now, so the assistant is back with you."
EXTERNAL_AGENT_LOST = "The specialist assistant can't be reached right now, so I'm back with you."

# The end of a handoff's ladder, or a cancelled wait.
GIVE_UP = (
    "Sorry, nobody is available to take over right now. The assistant is back with you; "
    "you can ask for a person again later."
)
LEAVE_MESSAGE = (
    "Nobody can take this conversation right now. Leave your message here, with how we can reach you, and a "
    "person will get back to you. The assistant is back with you meanwhile."
)
CANCELLED = "OK, I've cancelled your request for a person. The assistant is back with you."

# What the routing decision tells the user when nobody can take the conversation.
RATED = "Thank you for your rating."
NOBODY_PRESENT = "Sorry, nobody on the team is available right now. The assistant is back with you."
NO_ROUTE = "Sorry, nobody can take this conversation right now. The assistant is back with you."
AWAY = "Our team is away right now{back}. The assistant is back with you{again}."

# The end of a conversation.
CLOSED = "This conversation has been closed."
HANDED_BACK_TO_REFERRER = "Handed back to the referring assistant."


# While a handoff's target is reached (models.targets: each kind's `notice`).
def waiting_for_a_person(target: object, position: int | None = None) -> str:
    text = "I'm connecting you with a person. Please stay here; someone will be with you shortly."
    if position is not None:
        text += f" You are number {position} in the queue."
    return text


def waiting_for_a_team(target: object, position: int | None = None) -> str:
    return "I'm connecting you with our support team. Please stay here; someone will be with you shortly."


def waiting_for_an_assistant(target: object, position: int | None = None) -> str:
    return "I'm connecting you with a specialist assistant. One moment, please."


def position_notice(position: int) -> str:
    return "You're next in the queue." if position == 1 else f"You're now number {position} in the queue."
