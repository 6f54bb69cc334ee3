"""Channel delivery: POST what the user must see to BATON_CHANNEL_URL, signed per Standard Webhooks."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import webhooks
from activities.stream import StreamStore
from models.conversation import ChannelMessage, DeliveryResult
from models.names import Activities, Errors

MAX_RETRY_AFTER = timedelta(hours=1)
# Shorter than the activity's start-to-close timeout (15 s, in the workflow) so a hanging backend ends as a retryable error we classify, not a timeout.
REQUEST_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
USER_AGENT = "Baton-Channel/1"


def channel_webhook_id(message: ChannelMessage) -> str:
    """The idempotency key of one message: identical on every retry, so the backend can drop duplicates."""
    return webhooks.webhook_id("msg", message.conversation_id, message.seq, message.message_id)


def retry_after(value: str | None, now: datetime | None = None) -> timedelta | None:
    """A Retry-After header (delta-seconds or HTTP-date) as a delay, capped at an hour; None if absent or unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        # Capped before conversion: an absurd number of seconds would overflow timedelta.
        delay = timedelta(seconds=min(int(value), int(MAX_RETRY_AFTER.total_seconds())))
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        delay = when - (now or datetime.now(timezone.utc))
    # A zero or past delay means "now": leave the pacing to the retry policy rather than hammering the backend.
    if delay <= timedelta(0):
        return None
    return min(delay, MAX_RETRY_AFTER)


def _is_http_url(url: str) -> bool:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


def _unavailable(reason: str, status: int | None = None, delay: timedelta | None = None) -> ApplicationError:
    return ApplicationError(reason, {"status": status}, type=Errors.CHANNEL_UNAVAILABLE, next_retry_delay=delay)


class ChannelDeliverer:
    """Holds the channel's URL and secret (never workflow inputs) and one pooled HTTP client for all deliveries."""

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
        # Signed afresh per attempt: the timestamp must be current, or a backend enforcing the 5 minute window
        # would refuse every retry after a long outage.
        signed = webhooks.headers(self._secret, channel_webhook_id(message), body, int(time.time()))
        try:
            response = await self._client.post(
                self.url,
                content=body,
                headers={**signed, "user-agent": USER_AGENT},
                timeout=REQUEST_TIMEOUT,
                follow_redirects=False,
            )
        except httpx.TimeoutException as e:
            raise _unavailable(f"channel did not answer in time ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise _unavailable(f"channel unreachable ({type(e).__name__}: {e})") from None

        status = response.status_code
        if 200 <= status < 300:
            return DeliveryResult(outcome="delivered", status=status)
        if status == 410:
            # The 410 rule (README, "Channel callback"): 410 Gone is the backend's answer for this conversation. The
            # conversation records it and delivers nothing more (durable, in its workflow state); other
            # conversations are not affected, and this activity remembers nothing.
            activity.logger.warning("channel answered 410 Gone for conversation %s: its deliveries stop", message.conversation_id)
            return DeliveryResult(
                outcome="gone", status=status, detail="the channel answered 410 Gone for this conversation"
            )
        if webhooks.retryable(status):
            raise _unavailable(
                f"channel answered {status}", status, retry_after(response.headers.get("retry-after"))
            )
        # Other 4xx say this message will never be accepted; a redirect is refused because it could forward
        # signed user messages somewhere the operator never configured.
        kind = "redirect (not followed)" if 300 <= status < 400 else "client error"
        activity.logger.warning("channel rejected message seq=%s with %s", message.seq, status)
        return DeliveryResult(outcome="rejected", status=status, detail=f"channel answered {status}: {kind}")
