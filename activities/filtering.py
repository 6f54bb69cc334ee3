"""The context filter run before any handoff: what never leaves is dropped, secrets are redacted, a receipt says why."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from functools import cache, lru_cache
from typing import Any, Literal

from stdnum import iban as stdnum_iban
from stdnum import numdb
from temporalio import activity
from temporalio.exceptions import ApplicationError

from models.conversation import ReceiptEntry
from models.filtering import (  # noqa: F401 - the contracts, re-exported
    NEVER_LEAVE,
    SECTIONS,
    FilterContext,
    FilterRequest,
    FilterResult,
    SharedContext,
)
from models.names import Activities, Errors

FILTER_CONTEXT = Activities.FILTER_CONTEXT
# Deeper than any real context; past it a subtree is dropped rather than risk the recursion limit.
MAX_DEPTH = 64

# Receipt reasons, one per kind, so callers and tests can match on them.
NEVER_LEAVES = "never leaves"
SECRET_KEY = "secret-named key"
NOT_ALLOWED = "not in the route's allowlist"
TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"
REASONS = {
    "card": "card number (Luhn)",
    "iban": "iban (mod-97)",
    "jwt": "jwt",
    "bearer": "bearer token",
    "api_key": "api key",
    "private_key": "private key",
    # national ids carry their scheme: "national id (us-ssn)", ...
    "national_id": "national id",
}


# ---- secret-named keys ------------------------------------------------------------------------------------

# Compared after lowercasing and removing separators, so accessToken, access-token and ACCESS_TOKEN are one.
SECRET_NAMES = frozenset(
    {
        "password", "passwd", "pwd", "passphrase", "passcode",
        "token", "accesstoken", "refreshtoken", "idtoken", "authtoken", "bearertoken", "sessiontoken",
        "secret", "clientsecret", "secretkey", "signingsecret", "webhooksecret",
        "apikey", "xapikey", "apisecret",
        "authorization", "auth", "proxyauthorization",
        "cookie", "cookies", "setcookie",
        "session", "sessionid", "sid",
        "privatekey",
        "credentials", "credential",
        "otp", "totp", "pin", "cvv", "cvc", "cvv2", "cvc2",
        "ssn",
    }
)  # fmt: skip
# A key ending in one of these words is a secret whatever comes before (db_password, stripeToken, github-secret).
SECRET_SUFFIXES = frozenset(
    {"password", "passwd", "pwd", "passphrase", "passcode", "secret", "token", "apikey", "privatekey", "credentials",
     "cookie", "pin", "cvv", "cvc", "otp", "ssn"}
)  # fmt: skip
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


@lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    words = [w.lower() for w in _WORDS.findall(key)]
    if not words:
        return False
    if "".join(words) in SECRET_NAMES:
        return True
    tail2 = "".join(words[-2:])
    return words[-1] in SECRET_SUFFIXES or tail2 in SECRET_SUFFIXES or tail2 in SECRET_NAMES


# ---- sensitive values -------------------------------------------------------------------------------------

# Nothing this filter redacts is shorter than this; most context values are, and skip every regex.
MIN_SENSITIVE = 9

PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*\Z)", re.DOTALL
)
BEARER = re.compile(r"\bbearer\s+[A-Za-z0-9\-._~+/]{16,}=*", re.IGNORECASE)
JWT = re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
API_KEY = re.compile(
    r"(?<![\w-])(?:"
    r"sk-(?:proj-|ant-[a-z0-9]+-)?[A-Za-z0-9_-]{20,}"
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{36,}"
    r"|github_pat_[A-Za-z0-9_]{22,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|whsec_[A-Za-z0-9+/=]{20,}"
    r")(?![\w-])"
)
# Country code, check digits, then BBAN in groups of up to four with optional single spaces.
IBAN = re.compile(r"(?<![\w-])([A-Z]{2})(\d{2})((?: ?[A-Z0-9]){11,30})(?![\w-])")
# A run of digit groups separated by single spaces or dashes, not glued to a word, a decimal point or a "+" (a phone).
DIGIT_RUN = re.compile(r"(?<![\w+.])\d+(?:[ -]\d+)*(?![\w.]\d)")
_DIGITS = re.compile(r"\d+")
_THIRTEEN_DIGITS = re.compile(r"\d(?:[ -]?\d){12}")
SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
NINO = re.compile(
    r"(?<![\w-])(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![\w-])"
)
DNI = re.compile(r"(?<![\w-])([XYZ]?)(\d{7,8})-?([A-Z])(?![\w-])")
# Nine bare digits are too common (orders, parcels) to call a BSN on the 11-test alone: it needs its name nearby.
BSN = re.compile(r"\b(?:bsn|burgerservicenummer)\b\D{0,20}(\d{9})(?!\d)", re.IGNORECASE)

DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


_IBAN_DB = numdb.get("iban")


@cache
def iban_length(country: str) -> int | None:
    """The IBAN length of `country` from the ISO 13616 registry as python-stdnum keeps it (every country in the
    registry, Kosovo, Russia and El Salvador included); None for a code that has no IBAN."""
    found = _IBAN_DB.info(country + "00")[0][1].get("bban")
    return 4 + sum(int(n) for n in re.findall(r"(\d+)!", found)) if found else None


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """Mod-97 check digits and the country's BBAN structure (python-stdnum). National check digits are not asked
    for: an IBAN mistyped in its national part is still an account number to withhold."""
    return stdnum_iban.is_valid(iban, check_country=False)


def bsn_ok(digits: str) -> bool:
    return sum(int(d) * w for d, w in zip(digits, (9, 8, 7, 6, 5, 4, 3, 2, -1))) % 11 == 0


def _jwt_header_ok(segment: str) -> bool:
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(header, dict) and "alg" in header


# A finding: (start, end, kind, reason); kind None claims the span without redacting it (an IBAN-shaped
# string with wrong check digits is not a card number either).
Finding = tuple[int, int, str | None, str]


def _private_keys(text: str) -> Iterator[Finding]:
    for m in PRIVATE_KEY.finditer(text):
        yield m.start(), m.end(), "private_key", REASONS["private_key"]


def _bearers(text: str) -> Iterator[Finding]:
    for m in BEARER.finditer(text):
        yield m.start(), m.end(), "bearer", REASONS["bearer"]


def _jwts(text: str) -> Iterator[Finding]:
    for m in JWT.finditer(text):
        if _jwt_header_ok(m.group().split(".", 1)[0]):
            yield m.start(), m.end(), "jwt", REASONS["jwt"]


def _api_keys(text: str) -> Iterator[Finding]:
    for m in API_KEY.finditer(text):
        yield m.start(), m.end(), "api_key", REASONS["api_key"]


def _ibans(text: str) -> Iterator[Finding]:
    for m in IBAN.finditer(text):
        length = iban_length(m.group(1))
        if length is None:
            continue
        # The BBAN pattern may run on into the next word; cut it at the country's length, on a group edge.
        raw = m.group()
        compact, end = 0, 0
        for i, ch in enumerate(raw):
            if ch != " ":
                compact += 1
                if compact == length:
                    end = i + 1
                    break
        if not end or (end < len(raw) and raw[end] != " "):
            continue
        iban = raw[:end].replace(" ", "")
        kind = "iban" if iban_ok(iban) else None
        yield m.start(), m.start() + end, kind, REASONS["iban"]


def _cards(text: str) -> Iterator[Finding]:
    """Card numbers, written whole, in fours (16 to 19 digits) or as Amex/Diners (4-6-5, 4-6-4), passing Luhn. A run
    of digit groups is redacted when cards cover it from its start, one after another, up to at most one trailing
    group of 1 to 4 digits (what follows a card: "4111 1111 1111 1111 12/27", a CVV, a year): so two cards in a row
    and a card with its expiry are found, while a longer number that merely contains a Luhn-valid stretch (a parcel's
    tracking number) is left alone."""
    if not _THIRTEEN_DIGITS.search(text):
        return  # no 13 digits in a row (single spaces or dashes between them allowed): no card, and most text
    for run in DIGIT_RUN.finditer(text):
        if run.end() - run.start() < 13:
            continue  # fewer than 13 digits: no card (most runs: dates, amounts, ids)
        groups = [(g.start(), g.end()) for g in _DIGITS.finditer(run.group())]
        lengths = [b - a for a, b in groups]
        cards: list[tuple[int, int]] = []
        i = 0
        while i < len(groups) and (j := _card_at(run.group(), groups, lengths, i)) is not None:
            cards.append((i, j))
            i = j + 1
        rest = lengths[i:]
        if cards and (not rest or (len(rest) == 1 and rest[0] <= 4)):
            for first, last in cards:
                yield run.start() + groups[first][0], run.start() + groups[last][1], "card", REASONS["card"]


_CARD_SHAPES = ((4, 4, 4, 4, 3), (4, 4, 4, 4, 2), (4, 4, 4, 4, 1), (4, 4, 4, 4), (4, 6, 5), (4, 6, 4))


def _card_at(run: str, groups: list[tuple[int, int]], lengths: list[int], i: int) -> int | None:
    """The index of the last group of a Luhn-valid card that starts at group `i`, the longest shape first."""
    if 13 <= lengths[i] <= 19 and luhn_ok(run[groups[i][0]:groups[i][1]]):
        return i
    for shape in _CARD_SHAPES:
        j = i + len(shape) - 1
        if j < len(groups) and tuple(lengths[i:j + 1]) == shape:
            if luhn_ok("".join(run[a:b] for a, b in groups[i:j + 1])):
                return j
    return None


def _national_ids(text: str) -> Iterator[Finding]:
    if "-" in text:
        for m in SSN.finditer(text):
            yield m.start(), m.end(), "national_id", "national id (us-ssn)"
    for m in NINO.finditer(text):
        yield m.start(), m.end(), "national_id", "national id (uk-nino)"
    for m in DNI.finditer(text):
        prefix, digits, letter = m.groups()
        if prefix:
            if len(digits) == 7 and DNI_LETTERS[int(str("XYZ".index(prefix)) + digits) % 23] == letter:
                yield m.start(), m.end(), "national_id", "national id (es-nie)"
        elif len(digits) == 8 and DNI_LETTERS[int(digits) % 23] == letter:
            yield m.start(), m.end(), "national_id", "national id (es-dni)"
    lowered = text.lower()
    if "bsn" in lowered or "burgerservicenummer" in lowered:
        for m in BSN.finditer(text):
            if bsn_ok(m.group(1)):
                yield m.start(1), m.end(1), "national_id", "national id (nl-bsn)"


NUMERIC = re.compile(r"\d\d ?\d\d")


def _take(taken: list[Finding], found: Iterator[Finding]) -> None:
    """Keeps each finding that overlaps none already taken: detectors run in priority order."""
    for finding in found:
        start, end = finding[0], finding[1]
        if all(end <= s or start >= e for s, e, _, _ in taken):
            taken.append(finding)


def redact_text(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The text with every sensitive substring replaced by `[redacted:<kind>]`, and (kind, reason) per finding."""
    if len(text) < MIN_SENSITIVE:
        return text, []
    taken: list[Finding] = []
    # Each detector behind what it cannot match without (a substring, or four digits): `in` is far cheaper
    # than the detectors, and most values pass no gate. Priority: a bearer token that is a JWT is reported
    # as the bearer token it was sent as; an IBAN's digits are not also a card number.
    if "PRIVATE KEY" in text:
        _take(taken, _private_keys(text))
    if "earer" in text or "EARER" in text:  # Bearer, bearer, BEARER: how it is written in practice
        _take(taken, _bearers(text))
    if "eyJ" in text:
        _take(taken, _jwts(text))
    if "_" in text or "sk-" in text or "AKIA" in text or "ASIA" in text or "xox" in text or "AIza" in text:
        _take(taken, _api_keys(text))
    if NUMERIC.search(text) is not None:
        _take(taken, _ibans(text))
        _take(taken, _cards(text))
        _take(taken, _national_ids(text))
    hits = [f for f in taken if f[2] is not None]
    if not hits:
        return text, []
    hits.sort()
    out, pos = [], 0
    for start, end, kind, _ in hits:
        out.append(text[pos:start])
        out.append(f"[redacted:{kind}]")
        pos = end
    out.append(text[pos:])
    return "".join(out), [(kind, reason) for _, _, kind, reason in hits]  # type: ignore[misc]


# ---- the walk ---------------------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_DROP = object()
_SEGMENTS: dict[str, str] = {}
Patterns = tuple[tuple[str, ...], ...] | None  # None: everything below is allowed


class _Walk:
    def __init__(self) -> None:
        self.receipt: list[ReceiptEntry] = []

    def note(self, path: str, action: Literal["dropped", "redacted"], reason: str) -> None:
        self.receipt.append(ReceiptEntry(path=path, action=action, reason=reason))

    def text(self, path: str, value: str) -> str:
        new, found = redact_text(value)
        if not found:
            return value
        # One entry per reason and path: how many of a kind a message held is nobody's business downstream.
        for reason in dict.fromkeys(reason for _, reason in found):
            self.note(path, "redacted", reason)
        return new

    def key(self, parent: str, key: str) -> tuple[str, str]:
        """The key as it may leave and its path: a key is data too (a dict keyed by card number)."""
        segment = _SEGMENTS.get(key)
        if segment is not None:
            return key, parent + segment
        found: list[tuple[str, str]] = []
        out_key = key
        if len(key) >= MIN_SENSITIVE:
            out_key, found = redact_text(key)
        segment = f".{out_key}" if _PLAIN_KEY.match(out_key) else f"[{json.dumps(out_key)}]"
        if not found:
            # Keys repeat from one context to the next; only harmless ones are remembered.
            if len(_SEGMENTS) >= 4096:
                _SEGMENTS.clear()
            _SEGMENTS[key] = segment
        for reason in dict.fromkeys(reason for _, reason in found):
            self.note(parent + segment, "redacted", reason)
        return out_key, parent + segment

    def value(self, path: str, value: Any, allow: Patterns, depth: int) -> Any:
        if depth > MAX_DEPTH:
            self.note(path, "dropped", TOO_DEEP)
            return _DROP
        if isinstance(value, dict):
            return self.mapping(path, value, allow, depth)
        if allow is not None:
            # A pattern names a key below a value that has none (or list items of scalars): not allowed.
            if not isinstance(value, list):
                self.note(path, "dropped", NOT_ALLOWED)
                return _DROP
        if isinstance(value, list):
            out = []
            for i, item in enumerate(value):
                kept = self.value(f"{path}[{i}]", item, allow, depth + 1)
                if kept is not _DROP:
                    out.append(kept)
            return out
        if isinstance(value, str):
            return self.text(path, value)
        if isinstance(value, float) and value.is_integer() and 10**12 < abs(value) < 10**19:
            # A card number that went through a float (a protobuf Value, as A2A data parts are): digits past 2**53
            # are lost, so it cannot be checked; such a number is withheld as if it were one.
            if abs(value) >= 2**53:
                self.note(path, "redacted", REASONS["card"])
                return "[redacted:card]"
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value > 10**12:
            # A card number sent as a JSON number.
            digits = str(value)
            if len(digits) <= 19 and luhn_ok(digits):
                self.note(path, "redacted", REASONS["card"])
                return "[redacted:card]"
        return value

    def mapping(self, path: str, value: dict[str, Any], allow: Patterns, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in value.items():
            key = str(key)
            out_key, child = self.key(path, key)
            if is_secret_key(key):
                self.note(child, "dropped", SECRET_KEY)
                continue
            below = allow
            if allow is not None:
                narrowed = tuple(p[1:] for p in allow if p[0] == "*" or p[0] == key)
                if not narrowed:
                    self.note(child, "dropped", NOT_ALLOWED)
                    continue
                below = None if () in narrowed else narrowed
            kept = self.value(child, item, below, depth + 1)
            if kept is not _DROP:
                out[out_key] = kept
        return out


def _present(value: Any) -> bool:
    return value is not None and value != {} and value != [] and value != ""


def apply_filter(request: FilterRequest) -> FilterResult:
    """Pure and deterministic: the same request always gives the same result (safe to call anywhere)."""
    walk = _Walk()
    ctx = request.context
    for section in NEVER_LEAVE:
        if _present(getattr(ctx, section)) or ctx.sealed.get(section):
            walk.note(section, "dropped", NEVER_LEAVES)
    for section in ctx.sealed:
        if section not in NEVER_LEAVE:
            walk.note(f"sealed.{section}" if _PLAIN_KEY.match(section) else "sealed", "dropped", NEVER_LEAVES)

    patterns: Patterns = None
    if request.allowlist is not None:
        patterns = tuple(tuple(p.split(".")) for p in request.allowlist)
    shared: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        data: dict[str, Any] = getattr(ctx, section)
        allow = patterns
        if patterns is not None:
            narrowed = tuple(p[1:] for p in patterns if p[0] in ("*", section))
            allow = None if () in narrowed else narrowed
            if not narrowed:
                if data:
                    walk.note(section, "dropped", NOT_ALLOWED)
                shared[section] = {}
                continue
        shared[section] = walk.mapping(section, data, allow, 1)

    transcript = []
    for entry in request.transcript:
        text = walk.text(f"transcript[seq={entry.seq}].text", entry.text)
        transcript.append(entry if text == entry.text else entry.model_copy(update={"text": text}))
    return FilterResult(context=SharedContext(**shared), transcript=transcript, receipt=walk.receipt)


filter_context_sync = apply_filter


@activity.defn(name=FILTER_CONTEXT)
async def filter_context(request: FilterRequest) -> FilterResult:
    try:
        return apply_filter(request)
    except Exception as err:
        # The message and cause could quote the context; only the error's type leaves this function.
        raise ApplicationError(
            f"context filter failed: {type(err).__name__}", type=Errors.FILTER_FAILED, non_retryable=True
        ) from None


def clean_ingress(
    sections: dict[str, dict[str, Any] | None],
) -> tuple[dict[str, dict[str, Any] | None], list[ReceiptEntry], dict[str, dict[str, Any]]]:
    """Context arriving at the API, before it reaches workflow history: the same walk as a handoff's filter.

    Returns the cleaned sections (None stays None), the receipt, and the original of every section that changed
    (for the caller to seal: nothing is lost, nothing sensitive is stored in the clear)."""
    given = {name: value for name, value in sections.items() if value is not None}
    if not given:
        return dict(sections), [], {}
    result = apply_filter(FilterRequest(context=FilterContext(**given)))
    cleaned = {name: (getattr(result.context, name) if name in given else None) for name in sections}
    originals = {name: given[name] for name in given if cleaned[name] != given[name]}
    return cleaned, result.receipt, originals
