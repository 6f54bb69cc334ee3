"""The platform protocol's outbound half (docs/platform-protocol.md): hand a conversation to an external agent,
forward the user's messages to it, and send our local agent's events back to the platform that handed a
conversation to us."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit

import httpx
from pydantic import TypeAdapter, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import a2a, webhooks
from activities.filtering import redact_text
from activities.outbound import OutboundError, OutboundPolicy, resolve_public
from activities.registry import AgentInfo, AgentRegistry
from activities.signed_post import MAX_REASON as MAX_REASON  # re-exported
from activities.signed_post import SignedPoster, remote_reason
from models.conversation import MAX_TEXT, DeliveryResult, RemoteReply
from models.names import Activities, Errors, Routes
from models.protocol import (
    MAX_CARRIED,
    ForwardMessage,
    HandoffAccepted,
    HandoffDelivery,
    HandoffOutcome,
    PeerDelivery,
    RemoteId,
)

USER_AGENT = "Baton-Platform/1"
CARRIED_FIELDS = {"seq", "message_id", "role", "author", "text", "at"}
# The remote names its conversation, and that name goes into our URL paths: hold it to the protocol's id shape.
_REMOTE_ID = TypeAdapter(RemoteId)
# A forwarded message's or an event's answer: 404/409/410 mean the conversation is over.
_GONE = (404, 409, 410)


def _replies(answer: a2a.Answer) -> list[RemoteReply]:
    """An A2A agent's answer as transcript-ready replies: redacted like a callback's message, ids that are stable
    across retries of the call (the agent's own message or artifact id, hashed into our id format)."""
    out = []
    for reply in answer.replies:
        try:
            # Redacted, then cut: a redaction marker may be longer than what it replaced.
            text, found = redact_text(str(reply["text"]))
            text = text[:MAX_TEXT]
            if not text.strip():
                continue
            key = f"{answer.task_id or ''}\0{reply['message_id'] or text}"
            out.append(RemoteReply(message_id=webhooks.webhook_id("a2r", key), text=text,
                                   redacted=sorted({kind for kind, _ in found})[:20]))
        except Exception as err:  # noqa: BLE001 - the call was made: raising here would send the message again
            activity.logger.warning("an A2A reply was left out: %s", type(err).__name__)
    return out


def forward_webhook_id(m: ForwardMessage) -> str:
    return webhooks.webhook_id("fwd", m.conversation_id, m.message_id)


def peer_webhook_id(p: PeerDelivery) -> str:
    return webhooks.webhook_id("evt", p.conversation_id, p.seq, p.event.message_id)


@contextmanager
def _registry_errors() -> Iterator[None]:
    """Registry failures (a bad BATON_SECRET_KEY, an unreadable store) will not heal by retrying."""
    try:
        yield
    except Exception as e:
        # Our own ValueErrors are written to be shown; anything else could carry a connection string.
        shown = f": {e}" if type(e) is ValueError else ""
        raise ApplicationError(
            f"the agent registry is unavailable ({type(e).__name__}{shown})", type=Errors.REGISTRY_UNAVAILABLE,
            non_retryable=True,
        ) from None


def _accepted_id(response: httpx.Response) -> str | None:
    """The remote conversation id of a 2xx that accepts the handoff, or None."""
    try:
        accepted = HandoffAccepted.model_validate_json(response.content)
        return _REMOTE_ID.validate_python(accepted.remote_conversation_id) if accepted.accepted else None
    except ValidationError:
        return None


class PlatformActivities(SignedPoster):
    """Looks secrets up in the registry (the workflow passes ids only); resolves every domain per attempt."""

    unavailable_type = Errors.AGENT_UNAVAILABLE
    user_agent = USER_AGENT

    def __init__(
        self, registry: Callable[[], AgentRegistry], public_url: str, policy: OutboundPolicy | None = None
    ) -> None:
        super().__init__(public_url, policy)
        self._registry = registry

    @activity.defn(name=Activities.DELIVER_HANDOFF)
    async def deliver_handoff(self, d: HandoffDelivery) -> HandoffOutcome:
        with _registry_errors():
            registry = self._registry()
            found = registry.external(d.agent_id)
        if found is None:
            return HandoffOutcome(accepted=False, detail=f"unknown external agent {d.agent_id!r}")
        agent, secret = found
        what = f"external agent {d.agent_id!r}"
        if agent.protocol == "a2a":
            if not d.answers:
                # A conversation started before the a2a-answers patch cannot record the agent's answers: the next
                # rung takes it rather than an agent whose replies would be lost.
                return HandoffOutcome(accepted=False, detail=f"{what} speaks A2A, which this conversation (started "
                                      "before Baton 1.1) cannot hand over to")
            return await self._hand_to_a2a(agent, secret, d, what)
        envelope = {
            "handoff_id": d.handoff_id,
            "source": {"platform": self.public_url, "conversation_id": d.conversation_id},
            "reason": d.reason,
            **({"summary": d.summary} if d.summary else {}),
            "context": d.context.model_dump(mode="json"),
            # The receiver refuses more than MAX_CARRIED entries; the latest matter most.
            "transcript": [e.model_dump(mode="json", include=CARRIED_FIELDS) for e in d.transcript[-MAX_CARRIED:]],
            "callback_url": self.public_url + Routes.AGENT_EVENTS.format(agent_id=d.agent_id),
        }
        body = json.dumps(envelope, separators=(",", ":")).encode()
        try:
            target = await resolve_public(agent.domain or "", self._resolved_policy())
        except OutboundError as e:
            activity.logger.warning("handoff %s to %s not sent: %s", d.handoff_id, what, e.reason)
            return HandoffOutcome(accepted=False, detail=f"{what} cannot be reached: {e.reason}")

        path = Routes.AGENT_HANDOFFS.format(agent_id=quote(d.agent_id, safe=""))
        response = await self._post(target, path, body, secret, webhooks.webhook_id("hof", d.conversation_id, d.handoff_id), what)
        status = response.status_code
        if 200 <= status < 300:
            remote_id = _accepted_id(response)
            if remote_id is None:
                activity.logger.warning("handoff %s: %s answered %s without an id", d.handoff_id, what, status)
                return HandoffOutcome(
                    accepted=False, status=status, detail="answered 2xx without a remote_conversation_id"
                )
            # Linked before returning, so the agent's first callback finds its conversation.
            registry.link(d.agent_id, remote_id, d.conversation_id, d.handoff_id)
            return HandoffOutcome(accepted=True, remote_conversation_id=remote_id, status=status)
        if webhooks.retryable(status):
            raise self._unavailable(f"{what} answered {status}", status, response)
        detail = f"refused with {status}: {remote_reason(response, secret)}"
        activity.logger.warning("handoff %s to %s %s", d.handoff_id, what, detail)
        return HandoffOutcome(accepted=False, status=status, detail=detail)

    @activity.defn(name=Activities.FORWARD_TO_AGENT)
    async def forward_to_agent(self, m: ForwardMessage) -> DeliveryResult:
        with _registry_errors():
            found = self._registry().external(m.agent_id)
        if found is None:
            return DeliveryResult(outcome="gone", detail=f"unknown external agent {m.agent_id!r}")
        agent, secret = found
        what = f"external agent {m.agent_id!r}"
        # Defence in depth: the message left the filter's reach once it was typed after the handoff.
        text, findings = redact_text(m.text)
        if findings:
            activity.logger.info("redacted %d finding(s) from message %s before forwarding", len(findings),
                                 m.message_id)
        if agent.protocol == "a2a":
            if not m.answers:
                return DeliveryResult(outcome="gone", detail=f"{what} speaks A2A; this conversation cannot record "
                                      "its answers")
            return await self._forward_to_a2a(agent, secret, m, text, what)
        body = json.dumps({"message_id": m.message_id, "text": text}, separators=(",", ":")).encode()
        try:
            target = await resolve_public(agent.domain or "", self._resolved_policy())
        except OutboundError as e:
            return DeliveryResult(outcome="gone", detail=f"{what} cannot be reached: {e.reason}")
        path = Routes.AGENT_MESSAGES.format(
            agent_id=quote(m.agent_id, safe=""), remote_conversation_id=quote(m.remote_conversation_id, safe="")
        )
        response = await self._post(target, path, body, secret, forward_webhook_id(m), what)
        return self._classify(response, what, secret, gone=_GONE)

    # ---- A2A agents: the answer comes in the response (activities/a2a.py) --------------------------------------

    async def _hand_to_a2a(self, agent: AgentInfo, credential: str, d: HandoffDelivery, what: str) -> HandoffOutcome:
        """The handoff as one message: a text part (the reason and the summary) and a data part (the filtered
        context and transcript), `contextId` = our conversation. A task that is working or waits for the user is
        the acceptance; failed, rejected (or any call refused) is not; completed is accepted and handed back."""
        text = d.reason or "A conversation is handed over to you."
        if d.summary:
            text += f"\n\nSummary: {d.summary}"
        data = {
            "baton": {"platform": self.public_url, "conversation_id": d.conversation_id, "handoff_id": d.handoff_id},
            "context": d.context.model_dump(mode="json"),
            "transcript": [e.model_dump(mode="json", include=CARRIED_FIELDS) for e in d.transcript[-MAX_CARRIED:]],
        }
        try:
            answer = await a2a.send(
                a2a.A2AEndpoint.model_validate(agent.a2a), credential, self._resolved_policy(),
                context_id=d.conversation_id, task_id="", text=text, data=data,
                message_id=webhooks.webhook_id("a2a", d.conversation_id, d.handoff_id),
            )
        except a2a.Unavailable as err:
            raise self._unavailable(f"{what} {err}") from None
        if answer.refused is not None:
            activity.logger.warning("handoff %s to %s refused: %s", d.handoff_id, what, answer.refused)
            return HandoffOutcome(accepted=False, status=answer.status, detail=f"{what} {answer.refused}")
        if answer.state in a2a.ENDED_BADLY:
            return HandoffOutcome(accepted=False, detail=f"{what} did not take the task ({answer.state})")
        remote_id = answer.task_id or a2a.CONTEXT_ONLY + d.conversation_id
        done = answer.state == a2a.DONE
        return HandoffOutcome(accepted=True, remote_conversation_id=remote_id, replies=_replies(answer),
                              end="hand_back" if done else None,
                              end_reason=f"{what} completed its task" if done else "")

    async def _forward_to_a2a(
        self, agent: AgentInfo, credential: str, m: ForwardMessage, text: str, what: str
    ) -> DeliveryResult:
        """The user's next message in the same task (or context); the agent's answer comes back with it."""
        remote = m.remote_conversation_id
        try:
            answer = await a2a.send(
                a2a.A2AEndpoint.model_validate(agent.a2a), credential, self._resolved_policy(),
                context_id=m.conversation_id, task_id="" if remote.startswith(a2a.CONTEXT_ONLY) else remote,
                text=text, message_id=webhooks.webhook_id("a2a", m.conversation_id, m.message_id),
            )
        except a2a.Unavailable as err:
            raise self._unavailable(f"{what} {err}") from None
        if answer.refused is not None:
            return DeliveryResult(outcome="gone" if answer.gone else "rejected", status=answer.status,
                                  detail=f"{what} {answer.refused}")
        ended = answer.state == a2a.DONE or answer.state in a2a.ENDED_BADLY
        reason = f"{what} completed its task" if answer.state == a2a.DONE else f"{what} ended its task ({answer.state})"
        return DeliveryResult(outcome="delivered", replies=_replies(answer), end="hand_back" if ended else None,
                              end_reason=reason if ended else "")

    @activity.defn(name=Activities.DELIVER_TO_PEER)
    async def deliver_to_peer(self, p: PeerDelivery) -> DeliveryResult:
        with _registry_errors():
            secrets = self._registry().verifying_secrets(p.agent_id)
        if not secrets:
            return DeliveryResult(outcome="gone", detail=f"local agent {p.agent_id!r} was removed")
        what = "the sending platform's callback"
        try:
            target = await resolve_public(p.callback_url, self._resolved_policy())
        except OutboundError as e:
            return DeliveryResult(outcome="gone", detail=f"{what} cannot be reached: {e.reason}")
        # The callback URL is complete: post to its exact path and query, not to a path appended to it.
        parts = urlsplit(p.callback_url.strip())
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        body = p.event.model_dump_json().encode()
        response = await self._post(
            dataclasses.replace(target, path=""), path, body, secrets[0], peer_webhook_id(p), what
        )
        return self._classify(response, what, secrets[0], gone=_GONE)

