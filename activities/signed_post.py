"""The signed-webhook plumbing shared by every outbound activity that POSTs (activities/platform.py,
activities/third_party_desk.py, activities/channel.py): resolve the outbound policy, POST a body signed per Standard Webhooks afresh on every
attempt, and sort the answer into delivered / gone / rejected, or a retryable error of the caller's type."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import webhooks
from activities.outbound import OutboundError, OutboundPolicy, Target, post_json
from models.conversation import DeliveryResult
from models.names import Errors

MAX_REASON = 200


def unavailable(
    error_type: str, reason: str, status: int | None = None, response: httpx.Response | None = None
) -> ApplicationError:
    """A retryable error of `error_type`, waiting as long as the answer's Retry-After asks (if it does)."""
    delay = webhooks.retry_after(response.headers.get("retry-after")) if response is not None else None
    return ApplicationError(reason, {"status": status}, type=error_type, next_retry_delay=delay)


def hide(text: str, secret: str) -> str:
    """The text without the secret, whole or as its bare base64 key (a remote might echo either)."""
    for form in (secret, secret.removeprefix(webhooks.SECRET_PREFIX)):
        if len(form) >= 8:
            text = text.replace(form, "[secret]")
    return text


def untrusted(text: str, secret: str, limit: int = MAX_REASON) -> str:
    """A remote's text bound for logs and history: no control characters, never our secret echoed back, short."""
    return "".join(ch if ch.isprintable() else " " for ch in hide(text, secret))[:limit]


def remote_reason(response: httpx.Response, secret: str) -> str:
    """The answer's "detail" (or "reason"), printable and short; else what the status itself says."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    found: Any = (answer.get("detail") or answer.get("reason")) if isinstance(answer, dict) else None
    if found:
        return untrusted(found if isinstance(found, str) else json.dumps(found, separators=(",", ":")), secret)
    if 300 <= response.status_code < 400:
        return "redirect (not followed)"
    return response.reason_phrase or "no reason given"


class SignedPoster:
    """A base for activity classes that POST signed webhooks. Subclasses name the retryable error type they raise
    (`unavailable_type`) and the User-Agent they send."""

    unavailable_type: ClassVar[str]
    user_agent: ClassVar[str]

    def __init__(self, public_url: str, policy: OutboundPolicy | None = None) -> None:
        self.public_url = public_url.rstrip("/")
        self._policy = policy

    def _unavailable(
        self, reason: str, status: int | None = None, response: httpx.Response | None = None
    ) -> ApplicationError:
        return unavailable(self.unavailable_type, reason, status, response)

    def _resolved_policy(self) -> OutboundPolicy:
        if self._policy is not None:
            return self._policy
        try:
            return OutboundPolicy.from_env()
        except ValueError as e:
            raise ApplicationError(str(e), type=Errors.BAD_CONFIGURATION, non_retryable=True) from None

    async def _post(
        self, target: Target, path: str, body: bytes, secret: str, msg_id: str, what: str
    ) -> httpx.Response:
        """POST to a remote platform's address, resolved and pinned by the outbound policy."""
        return await self._signed(lambda headers: post_json(target, path, body, headers), body, secret, msg_id, what)

    async def _signed(
        self, send: Callable[[dict[str, str]], Awaitable[httpx.Response]], body: bytes, secret: str, msg_id: str,
        what: str,
    ) -> httpx.Response:
        """`send` the body with its Standard Webhooks headers, signed afresh per attempt (so a retry after a long
        outage is not refused as stale); a timeout or a transport failure is a retryable error of our type."""
        headers = {**webhooks.headers(secret, msg_id, body, int(time.time())), "user-agent": self.user_agent}
        try:
            return await send(headers)
        except httpx.TimeoutException as e:
            raise self._unavailable(f"{what} did not answer in time ({type(e).__name__})") from None
        except httpx.HTTPError as e:
            raise self._unavailable(hide(f"{what} unreachable ({type(e).__name__}: {e})", secret)) from None
        except OutboundError as e:
            raise self._unavailable(f"{what} unreachable ({e.reason})") from None

    def _classify(
        self, response: httpx.Response, what: str, secret: str, gone: tuple[int, ...] = (),
        reason: Callable[[httpx.Response], str] | None = None, logged: str | None = None,
    ) -> DeliveryResult:
        """2xx delivered; 408/429/5xx retried; a status in `gone` means the remote no longer has the conversation;
        any other answer is rejected, with the remote's own reason (or what `reason` says of it), and logged (as
        `logged`, when given)."""
        status = response.status_code
        if 200 <= status < 300:
            return DeliveryResult(outcome="delivered", status=status)
        if webhooks.retryable(status):
            raise self._unavailable(f"{what} answered {status}", status, response)
        detail = f"{what} answered {status}: {(reason or (lambda r: remote_reason(r, secret)))(response)}"
        activity.logger.warning("%s", logged or detail)
        return DeliveryResult(outcome="gone" if status in gone else "rejected", status=status, detail=detail)
