"""A third-party desk reached by webhook (Microsoft-handoff-style): hand it a conversation, forward the user's
messages to it. Its status callbacks (accepted / failed / message / completed) arrive at api/third_party_desk.py.
The protocol is specified in docs/desk-protocol.md; the bodies sent are models.third_party_desk.ThirdPartyDeskEnvelope and
ThirdPartyDeskUserMessage.

Every request is signed per Standard Webhooks with the desk's secret, with a `webhook-id` that stays the same on
every retry of the same delivery. The desk's URL is operator-configured: it goes through the outbound policy
(non-public addresses and redirects refused unless BATON_ALLOW_PRIVATE_NETWORKS allows it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import webhooks
from activities.filtering import redact_text
from activities.outbound import OutboundError, OutboundPolicy, Target, resolve_public
from activities.signed_post import MAX_REASON as MAX_REASON  # re-exported
from activities.signed_post import SignedPoster
from models.conversation import DeliveryResult
from models.third_party_desk import ThirdPartyDeskForward, ThirdPartyDeskHandoff
from models.names import Activities, Errors, Routes
from models.protocol import MAX_CARRIED

# Errors (models.names.Errors): DESK_UNAVAILABLE, retried (the desk did not answer, or answered 408/429/5xx);
# UNKNOWN_DESK, final (no desk by that name is configured); BAD_CONFIGURATION, final (the desk has no usable secret,
# or the install's outbound setting is malformed).
USER_AGENT = "Baton-Desk/1"
CARRIED_FIELDS = {"seq", "message_id", "role", "author", "text", "at"}


@dataclass(frozen=True)
class ThirdPartyDeskEndpoint:
    """A configured desk: its base URL (we POST to `{url}/handoffs` and `{url}/messages`) and its
    Standard Webhooks secret (`whsec_<base64>`), which signs both directions."""

    name: str
    url: str
    # Left out of repr, so logging an endpoint never prints it.
    secret: str = field(repr=False)


def handoff_webhook_id(h: ThirdPartyDeskHandoff) -> str:
    return webhooks.webhook_id("dsk", h.conversation_id, h.handoff_id)


def forward_webhook_id(m: ThirdPartyDeskForward) -> str:
    return webhooks.webhook_id("dskm", m.conversation_id, m.message_id)


def events_path(desk: str) -> str:
    return Routes.DESK_EVENTS.format(desk=quote(desk, safe=""))


def _redacted(text: str, what: str) -> str:
    """Defence in depth: the text was filtered (or typed after the filter ran); redact it once more."""
    clean, findings = redact_text(text)
    if findings:
        activity.logger.info("redacted %d finding(s) from %s before sending it to a desk", len(findings), what)
    return clean


class ThirdPartyDesks(SignedPoster):
    """Looks each desk up by name per attempt (the workflow passes names, never URLs or secrets)."""

    unavailable_type = Errors.DESK_UNAVAILABLE
    user_agent = USER_AGENT

    def __init__(
        self,
        lookup: Callable[[str], ThirdPartyDeskEndpoint | None],
        public_url: str,
        policy: OutboundPolicy | None = None,
    ) -> None:
        super().__init__(public_url, policy)
        self._lookup = lookup

    def _endpoint(self, desk: str) -> ThirdPartyDeskEndpoint:
        """The desk's endpoint with a usable secret, or a final error naming the desk (never the secret)."""
        try:
            endpoint = self._lookup(desk)
        except Exception as e:
            # A configuration that cannot be read will not heal by retrying; only our own ValueErrors are shown.
            shown = f": {e}" if type(e) is ValueError else ""
            raise ApplicationError(
                f"the desk configuration is unavailable ({type(e).__name__}{shown})", type=Errors.BAD_CONFIGURATION,
                non_retryable=True,
            ) from None
        if endpoint is None:
            raise ApplicationError(f"unknown desk {desk!r}", type=Errors.UNKNOWN_DESK, non_retryable=True)
        if not endpoint.secret:
            raise ApplicationError(f"desk {desk!r} has no webhook secret", type=Errors.BAD_CONFIGURATION, non_retryable=True)
        try:
            webhooks.secret_key(endpoint.secret)
        except ValueError as e:  # the message never echoes the secret
            raise ApplicationError(f"desk {desk!r}: {e}", type=Errors.BAD_CONFIGURATION, non_retryable=True) from None
        return endpoint

    async def _target(self, endpoint: ThirdPartyDeskEndpoint, what: str) -> Target | str:
        """The checked target, or why the desk's URL is refused for good. A name that does not resolve may heal."""
        try:
            return await resolve_public(endpoint.url, self._resolved_policy())
        except OutboundError as e:
            if e.retryable:
                raise self._unavailable(f"{what} unreachable ({e.reason})") from None
            activity.logger.warning("%s not contacted: %s", what, e.reason)
            return f"{what} cannot be reached: {e.reason}"

    @activity.defn(name=Activities.DELIVER_TO_THIRD_PARTY_DESK)
    async def deliver_to_desk(self, h: ThirdPartyDeskHandoff) -> DeliveryResult:
        """POST the handoff to `{url}/handoffs`. "delivered" means received: the desk accepts (or fails) later
        through its callback. 4xx other than 408/429 is "rejected"; 408/429/5xx and network errors are retried."""
        endpoint = self._endpoint(h.desk)
        what = f"desk {h.desk!r}"
        transcript = []
        # The latest entries matter most; a desk need not take an unbounded history.
        for entry in h.transcript[-MAX_CARRIED:]:
            carried = entry.model_dump(mode="json", include=CARRIED_FIELDS)
            carried["text"] = _redacted(entry.text, f"transcript entry {entry.seq}")
            transcript.append(carried)
        envelope = {
            "handoff_id": h.handoff_id,
            "conversation_id": h.conversation_id,
            "reason": _redacted(h.reason, "the handoff reason"),
            **({"summary": _redacted(h.summary, "the handoff summary")} if h.summary else {}),
            "context": h.context.model_dump(mode="json"),
            "transcript": transcript,
            "callback_url": self.public_url + events_path(h.desk),
        }
        body = json.dumps(envelope, separators=(",", ":")).encode()
        target = await self._target(endpoint, what)
        if isinstance(target, str):
            return DeliveryResult(outcome="rejected", detail=target)
        response = await self._post(target, "/handoffs", body, endpoint.secret, handoff_webhook_id(h), what)
        return self._classify(response, what, endpoint.secret)

    @activity.defn(name=Activities.FORWARD_TO_THIRD_PARTY_DESK)
    async def forward_to_desk(self, m: ThirdPartyDeskForward) -> DeliveryResult:
        """POST the user's message to `{url}/messages`. 404/409/410 mean the desk no longer has the conversation
        ("gone"); other 4xx except 408/429 "rejected"; 408/429/5xx and network errors are retried."""
        endpoint = self._endpoint(m.desk)
        what = f"desk {m.desk!r}"
        message = {
            "conversation_id": m.conversation_id,
            "handoff_id": m.handoff_id,
            "message_id": m.message_id,
            "text": _redacted(m.text, f"message {m.message_id}"),
        }
        body = json.dumps(message, separators=(",", ":")).encode()
        target = await self._target(endpoint, what)
        if isinstance(target, str):
            # A desk we may never contact cannot hold the conversation.
            return DeliveryResult(outcome="gone", detail=target)
        response = await self._post(target, "/messages", body, endpoint.secret, forward_webhook_id(m), what)
        return self._classify(response, what, endpoint.secret, gone=(404, 409, 410))
