"""AI agent adapters behind the `ai_respond` activity: the built-in demo agent and a customer's bot over HTTP."""

from __future__ import annotations

import json
import re

import httpx
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import webhooks
from activities.signed_post import unavailable
from models.conversation import AgentReply, AgentTurn, HandoffEvent, HandoffTarget
from models.names import Activities, Errors

ASK_FOR_PERSON = re.compile(
    r"\b(human|person|real (?:person|agent)|live agent|(?:an?|the) agent|representative|operator|someone real)\b",
    re.IGNORECASE,
)
GREETING = re.compile(r"^\s*(hi|hello|hey|good (?:morning|afternoon|evening))\b", re.IGNORECASE)
THANKS = re.compile(r"\b(thanks|thank you|cheers)\b", re.IGNORECASE)


TECHNICAL = re.compile(
    r"\b(crash\w*|error\w*|bug\w*|broken|freez\w*|not working|doesn'?t work|won'?t (?:start|open|load))\b",
    re.IGNORECASE,
)
SOLVED = re.compile(r"\b(works?(?: now)?|fixed|solved|sorted|that'?s all|all good)\b", re.IGNORECASE)
VERSION = re.compile(r"\b\d+(?:\.\d+)+\b")
TECH_SUPPORT = "tech-support"


class DemoAgent:
    """Rule-based, no network: enough to try every path of the embedded default.

    Two personas: the front-line assistant, and `tech-support`, which answers conversations another platform
    (or this one, over loopback) handed to the local agent of that name."""

    def __init__(self, tech_agent: str | None = None) -> None:
        # The external agent technical problems are handed to; None: the assistant just answers.
        self.tech_agent = tech_agent

    @activity.defn(name=Activities.AI_RESPOND)
    async def respond(self, turn: AgentTurn) -> AgentReply:
        return self.reply(turn)

    def reply(self, turn: AgentTurn) -> AgentReply:
        if turn.agent == TECH_SUPPORT:
            return self.tech_support(turn)
        name = turn.profile.get("name")
        hello = f"Hi {name}! " if isinstance(name, str) and name else "Hi! "
        if turn.message is None:
            # Resuming after a person or another agent handed back: speak up rather than stay silent.
            return AgentReply(text=f"{hello}I'm back with you. Is there anything else I can help with?")
        text = turn.message.text
        if ASK_FOR_PERSON.search(text):
            return AgentReply(
                text="Of course, I'll bring in a person.",
                handoff=HandoffEvent(reason="user asked for a person", params={"intent": "human"}),
            )
        if self.tech_agent and TECHNICAL.search(text):
            return AgentReply(
                text="That sounds like a technical problem. I'm bringing in our tech-support assistant; "
                "you can keep typing here.",
                handoff=HandoffEvent(
                    reason="technical problem", params={"intent": "technical"},
                    target=HandoffTarget(external_agent=self.tech_agent),
                ),
                # What the user already said travels with the handoff, so they are not asked again.
                slots={"issue_type": "technical", "problem": text[:200]},
            )
        if GREETING.search(text):
            return AgentReply(
                text=f"{hello}I'm Baton's demo assistant. Ask me anything, or say "
                "\"I want to talk to a human\" to reach a person."
            )
        if THANKS.search(text):
            return AgentReply(text="You're welcome! Anything else?")
        return AgentReply(
            text=f"You said: \u201c{text[:200]}\u201d. I'm a demo assistant; say \"I want to talk to a human\" "
            "to reach a person."
        )

    @staticmethod
    def tech_support(turn: AgentTurn) -> AgentReply:
        """The demo's specialist: greets by name, starts from the problem already described, hands back when done."""
        if turn.message is None:
            name = turn.profile.get("name")
            who = f"Hi {name}, " if isinstance(name, str) and name else "Hi, "
            # The demo assistant stores `problem`; a config intent that handed off stores the user's `request`.
            problem = turn.slots.get("problem") or turn.slots.get("request")
            known = f"I can see you reported: \u201c{problem}\u201d. " if isinstance(problem, str) and problem else ""
            return AgentReply(
                text=f"{who}I'm the tech-support assistant. {known}Which version of the app are you using?"
            )
        text = turn.message.text
        if SOLVED.search(text) or THANKS.search(text):
            return AgentReply(
                text="Glad that's sorted! I'm handing you back to the assistant you started with.", end="hand_back"
            )
        if VERSION.search(text):
            return AgentReply(
                text="Thanks. That version has a known crash on start-up: please update the app to the latest "
                "version and restart it. Does it work now?"
            )
        return AgentReply(
            text="Let's try the usual fix first: clear the app's cache (Settings \u2192 Storage \u2192 Clear cache) "
            "and restart it. Does it work now?"
        )


# Fields of a turn that stay inside Baton: never POSTed to a customer's bot.
INTERNAL_TURN_FIELDS = {"bell", "route"}


class WebhookAgent:
    """A customer's bot: each turn is POSTed (signed when a secret is set), the answer is an AgentReply."""

    def __init__(self, url: str, secret: str | None, client: httpx.AsyncClient) -> None:
        self.url = url
        self.secret = secret
        self.client = client

    @activity.defn(name=Activities.AI_RESPOND)
    async def respond(self, turn: AgentTurn) -> AgentReply:
        # The documented turn (README, "The AI agent"): the stream's bell and how history is carried are Baton's own.
        body = turn.model_dump_json(exclude=INTERNAL_TURN_FIELDS).encode()
        info = activity.info()
        # Same id on every retry of this turn, so the bot can de-duplicate.
        msg_id = webhooks.webhook_id("turn", info.workflow_run_id, info.activity_id)
        headers = (
            webhooks.headers(self.secret, msg_id, body)
            if self.secret
            else {"content-type": "application/json", "webhook-id": msg_id}
        )
        try:
            response = await self.client.post(self.url, content=body, headers=headers, follow_redirects=False)
        except httpx.HTTPError as err:
            raise ApplicationError(f"AI agent unreachable: {type(err).__name__}", type=Errors.AGENT_UNAVAILABLE) from None
        if webhooks.retryable(response.status_code):
            # Retried, as long as the bot's Retry-After asks (the one rule of activities/signed_post.py).
            raise unavailable(Errors.AGENT_UNAVAILABLE, f"AI agent answered {response.status_code}",
                              response.status_code, response)
        if not 200 <= response.status_code < 300:
            raise ApplicationError(
                f"AI agent answered {response.status_code}", type=Errors.AGENT_REJECTED, non_retryable=True
            )
        try:
            answer = json.loads(response.content)
        except ValueError:
            raise ApplicationError("AI agent's answer is not a valid reply: not JSON", type=Errors.AGENT_BAD_REPLY,
                                   non_retryable=True) from None
        if isinstance(answer, dict):
            # Baton's own fields for its LLM adapter; a bot's reply is the documented one (which never had them).
            answer.pop("usage", None)
            answer.pop("problems", None)
        try:
            return AgentReply.model_validate(answer)
        except ValidationError as err:
            raise ApplicationError(
                f"AI agent's answer is not a valid reply: {err.error_count()} error(s), first: "
                f"{err.errors()[0]['loc']} {err.errors()[0]['msg']}",
                type=Errors.AGENT_BAD_REPLY,
                non_retryable=True,
            ) from None
