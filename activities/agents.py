"""AI agent adapters behind the `ai_respond` activity: the built-in demo agent and a customer's bot over HTTP."""

from __future__ import annotations

import re

import httpx
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import webhooks
from models.conversation import AgentReply, AgentTurn, HandoffEvent
from models.names import Activities

ASK_FOR_PERSON = re.compile(
    r"\b(human|person|real (?:person|agent)|live agent|(?:an?|the) agent|representative|operator|someone real)\b",
    re.IGNORECASE,
)
GREETING = re.compile(r"^\s*(hi|hello|hey|good (?:morning|afternoon|evening))\b", re.IGNORECASE)
THANKS = re.compile(r"\b(thanks|thank you|cheers)\b", re.IGNORECASE)


class DemoAgent:
    """Rule-based, no network: enough to try every path of the embedded default."""

    @activity.defn(name=Activities.AI_RESPOND)
    async def respond(self, turn: AgentTurn) -> AgentReply:
        return self.reply(turn)

    @staticmethod
    def reply(turn: AgentTurn) -> AgentReply:
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


class WebhookAgent:
    """A customer's bot: each turn is POSTed (signed when a secret is set), the answer is an AgentReply."""

    def __init__(self, url: str, secret: str | None, client: httpx.AsyncClient) -> None:
        self.url = url
        self.secret = secret
        self.client = client

    @activity.defn(name=Activities.AI_RESPOND)
    async def respond(self, turn: AgentTurn) -> AgentReply:
        body = turn.model_dump_json().encode()
        info = activity.info()
        # Same id on every retry of this turn, so the bot can de-duplicate.
        msg_id = f"turn_{info.workflow_run_id}_{info.activity_id}"
        headers = (
            webhooks.headers(self.secret, msg_id, body)
            if self.secret
            else {"content-type": "application/json", "webhook-id": msg_id}
        )
        try:
            response = await self.client.post(self.url, content=body, headers=headers, follow_redirects=False)
        except httpx.HTTPError as err:
            raise ApplicationError(f"AI agent unreachable: {type(err).__name__}", type="AgentUnavailable") from None
        if response.status_code in (408, 429) or response.status_code >= 500:
            raise ApplicationError(f"AI agent answered {response.status_code}", type="AgentUnavailable")
        if not 200 <= response.status_code < 300:
            raise ApplicationError(
                f"AI agent answered {response.status_code}", type="AgentRejected", non_retryable=True
            )
        try:
            return AgentReply.model_validate_json(response.content)
        except ValidationError as err:
            raise ApplicationError(
                f"AI agent's answer is not a valid reply: {err.error_count()} error(s), first: "
                f"{err.errors()[0]['loc']} {err.errors()[0]['msg']}",
                type="AgentBadReply",
                non_retryable=True,
            ) from None
