"""Standard Webhooks (standardwebhooks.com) signing and verification, byte-compatible with the reference library."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets as _random
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

SECRET_PREFIX = "whsec_"
# The longest Retry-After a remote may ask for; a longer one is capped.
MAX_RETRY_AFTER = timedelta(hours=1)
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"

_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")


class WebhookVerificationError(Exception):
    """A request that must be refused (HTTP 401); `reason` says why without revealing any secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def webhook_id(kind: str, *parts: object) -> str:
    """Baton's one `webhook-id` scheme, for every delivery it signs (Verify & Save's one-off challenge is random,
    `vfy_`): `<kind>_` and 32 hex digits of SHA-256 over the
    parts that name the delivery, joined by NUL. The same delivery gets the same id on every retry (a receiver
    drops a repeat); different deliveries get different ids. Kinds: `msg` a reply to the channel, `fwd` / `evt` a
    message to / an event from another platform, `hof` a handoff to another platform, `dsk` / `dskm` a handoff / a message to a third-party desk,
    `turn` the AI agent's turn, `a2a` a message to an A2A agent (its `messageId`), `a2r` an A2A agent's answer as
    recorded in the transcript."""
    key = "\x00".join(str(p) for p in parts).encode()
    return f"{kind}_" + hashlib.sha256(key).hexdigest()[:32]


def retryable(status: int) -> bool:
    """Every outbound call's rule: 408, 429 and 5xx are tried again later; any other non-2xx answer is final."""
    return status in (408, 429) or status >= 500


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


def generate_secret(num_bytes: int = 32) -> str:
    return SECRET_PREFIX + base64.b64encode(_random.token_bytes(num_bytes)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret. Raises ValueError (never echoing the secret) if malformed."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"malformed webhook secret: expected '{SECRET_PREFIX}<base64>'")
    encoded = secret[len(SECRET_PREFIX) :]
    # The reference library tolerates missing padding, so secrets it accepts must work here too.
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"malformed webhook secret: the part after '{SECRET_PREFIX}' is not base64") from None
    if not key:
        raise ValueError("malformed webhook secret: the key is empty")
    return key


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    # Concatenate bytes rather than decoding the body, so a non-UTF-8 body signs exactly as sent.
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`."""
    signature = _digest(secret_key(secret), msg_id, int(timestamp), body)
    return f"{SIGNATURE_VERSION},{base64.b64encode(signature).decode('ascii')}"


def headers(secret: str, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Everything a signed JSON POST needs; the timestamp defaults to now, so call this once per attempt."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: sign(secret, msg_id, ts, body),
        "content-type": "application/json",
    }


def _offered_signatures(header: str) -> Iterable[bytes]:
    for entry in header.split(" "):
        version, sep, encoded = entry.partition(",")
        # Unknown versions and garbage entries are skipped, not fatal: a sender may add v1a signatures.
        if not sep or version != SIGNATURE_VERSION:
            continue
        try:
            yield base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue


def verify(
    secrets: list[str] | str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Accept the request or raise WebhookVerificationError.

    Several secrets may be given so that, while a secret is rotated, requests signed with the old or the new
    one both pass.
    """
    candidates = [secrets] if isinstance(secrets, str) else list(secrets)
    if not candidates:
        raise WebhookVerificationError("no webhook secret configured")
    try:
        keys = [secret_key(s) for s in candidates]
    except ValueError as e:
        raise WebhookVerificationError(str(e)) from None

    lowered = {k.lower(): v for k, v in headers.items()}
    missing = [h for h in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER) if not lowered.get(h)]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    msg_id, raw_ts, offered = lowered[ID_HEADER], lowered[TIMESTAMP_HEADER].strip(), lowered[SIGNATURE_HEADER]

    if not _TIMESTAMP.match(raw_ts):
        raise WebhookVerificationError(f"malformed {TIMESTAMP_HEADER}: expected integer Unix seconds")
    timestamp = int(raw_ts)
    current = time.time() if now is None else now
    if timestamp < current - tolerance_s:
        raise WebhookVerificationError(f"stale {TIMESTAMP_HEADER}: older than {tolerance_s}s")
    if timestamp > current + tolerance_s:
        raise WebhookVerificationError(f"{TIMESTAMP_HEADER} too far in the future: more than {tolerance_s}s ahead")

    expected = [_digest(key, msg_id, timestamp, body) for key in keys]
    # Compare every pair in full, so the time taken says nothing about which secret or signature was close.
    matched = False
    for signature in _offered_signatures(offered):
        for candidate in expected:
            matched |= hmac.compare_digest(signature, candidate)
    if not matched:
        raise WebhookVerificationError("no matching signature")


def proof(secret: str, challenge: str) -> str:
    """The Verify & Save answer: base64 of HMAC-SHA256 over the challenge, keyed like the signatures."""
    return base64.b64encode(hmac.new(secret_key(secret), challenge.encode(), hashlib.sha256).digest()).decode("ascii")


def proof_matches(secret: str, challenge: str, answer: str) -> bool:
    """Check a remote platform's proof in constant time."""
    return hmac.compare_digest(proof(secret, challenge).encode(), answer.encode("utf-8", "replace"))


def a2a_token(secret: str) -> str:
    """A local agent's bearer token for A2A clients (api/a2a_server.py), derived from its signing secret one way: a
    token seen in transit or in a log cannot sign a platform-protocol request, and a rotation changes it too."""
    digest = hmac.new(secret_key(secret), b"baton a2a bearer token", hashlib.sha256).digest()
    return "a2a_" + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
