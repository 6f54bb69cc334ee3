"""Channel delivery: POST what the user must see to BATON_CHANNEL_URL, signed per Standard Webhooks."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from temporalio import activity

from activities import webhooks
from activities.signed_post import SignedPoster
from activities.stream import StreamStore
from models.conversation import ChannelMessage, DeliveryResult
from models.names import Activities, Errors

# Shorter than the activity's start-to-close timeout (15 s, in the workflow) so a hanging backend ends as a retryable error we classify, not a timeout.
REQUEST_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
USER_AGENT = "Baton-Channel/1"


def channel_webhook_id(message: ChannelMessage) -> str:
    """The idempotency key of one message: identical on every retry, so the backend can drop duplicates."""
    return webhooks.webhook_id("msg", message.conversation_id, message.seq, message.message_id)


def _is_http_url(url: str) -> bool:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


class ChannelDeliverer(SignedPoster):
    """Holds the channel's URL and secret (never workflow inputs) and one pooled HTTP client for all deliveries.
    The POST, its signature and the sorting of the answer are the signed-webhook path every outbound call shares
    (activities/signed_post.py); only the transport differs: the channel is the operator's own backend, so it is
    not held to the outbound policy for other platforms' addresses (a loopback or private URL is expected)."""

    unavailable_type = Errors.CHANNEL_UNAVAILABLE
    user_agent = USER_AGENT

    def __init__(
        self, url: str | None, secret: str | None, client: httpx.AsyncClient,
        stream: Callable[[], StreamStore] | None = None,
    ) -> None:
        # Misconfiguration fails at startup, not as a retry loop on the first message.
        if url:
            if not _is_http_url(url):
                raise ValueError("the channel URL (BATON_CHANNEL_URL) must be an absolute http:// or https:// URL")
            if not secret:
                raise ValueError("a channel URL needs a channel secret (BATON_CHANNEL_SECRET) to sign deliveries")
            webhooks.secret_key(secret)
        super().__init__(public_url="", policy=None)
        self.url = url or None
        self._secret = secret
        self._client = client
        # The event stream's store: a delivery that carries the stream's bell writes it first (docs/event-stream.md).
        self._stream = stream

    @activity.defn(name=Activities.DELIVER_TO_CHANNEL)
    async def deliver_to_channel(self, message: ChannelMessage) -> DeliveryResult:
        if message.bell is not None and self._stream is not None and activity.info().attempt == 1:
            from activities.routing import carry_bell

            await carry_bell(self._stream, message.bell, message.entry())
        if self.url is None:
            return DeliveryResult(outcome="disabled", detail="no channel URL configured")
        assert self._secret is not None

        body = message.model_dump_json(exclude={"bell"}).encode()
        url = self.url

        async def send(headers: dict[str, str]) -> httpx.Response:
            return await self._client.post(
                url, content=body, headers=headers, timeout=REQUEST_TIMEOUT, follow_redirects=False
            )

        response = await self._signed(send, body, self._secret, channel_webhook_id(message), "channel")
        if response.status_code == 410:
            # The 410 rule (README, "Channel callback"): 410 Gone is the backend's answer for this conversation. The
            # conversation records it and delivers nothing more (durable, in its workflow state); other
            # conversations are not affected, and this activity remembers nothing.
            activity.logger.warning("channel answered 410 Gone for conversation %s: its deliveries stop", message.conversation_id)
            return DeliveryResult(
                outcome="gone", status=410, detail="the channel answered 410 Gone for this conversation"
            )
        # Other 4xx say this message will never be accepted; a redirect is refused because it could forward
        # signed user messages somewhere the operator never configured.
        return self._classify(
            response, "channel", self._secret, reason=_what_the_status_says,
            logged=f"channel rejected message seq={message.seq} with {response.status_code}",
        )


def _what_the_status_says(response: httpx.Response) -> str:
    """The channel is the operator's own backend: its answer's body is not read into history, only its class."""
    return "redirect (not followed)" if 300 <= response.status_code < 400 else "client error"
