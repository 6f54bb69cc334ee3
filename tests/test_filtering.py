"""The context filter: what never leaves, secret-named keys, redaction against a labelled corpus, the receipt."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import filtering
from activities.filtering import (
    NEVER_LEAVES,
    NOT_ALLOWED,
    REASONS,
    SECRET_KEY,
    FilterContext,
    FilterRequest,
    FilterResult,
    apply_filter,
    filter_context,
    redact_text,
)
from models.conversation import Context, Role, TranscriptEntry

CORPUS_FILE = Path(__file__).parent / "data" / "filter_corpus.jsonl"
CORPUS = [json.loads(line) for line in CORPUS_FILE.read_text().splitlines()]
AT = datetime(2026, 1, 1, tzinfo=timezone.utc)
CARD = "4111 1111 1111 1111"
PASSWORD = "hunter2-canary-Pw"


def entry(seq: int, text: str) -> TranscriptEntry:
    return TranscriptEntry(seq=seq, message_id=f"m{seq}", role=Role.USER, author="user", text=text, at=AT)


def kind_of(reason: str) -> str:
    return "national_id" if reason.startswith("national id") else {v: k for k, v in REASONS.items()}[reason]


def corpus_result() -> FilterResult:
    return apply_filter(FilterRequest(transcript=[entry(i, row["text"]) for i, row in enumerate(CORPUS, 1)]))


def windows(value: str, size: int = 8) -> set[str]:
    """Every stretch of the value long enough to identify it (and holding a digit, so prose like 'Bearer' is not)."""
    return {value[i : i + size] for i in range(len(value) - size + 1) if any(c.isdigit() for c in value[i : i + size])}


def test_corpus_has_at_least_200_labelled_messages_with_decoys() -> None:
    assert len(CORPUS) >= 200
    assert sum(1 for row in CORPUS if not row["planted"]) >= 50
    assert {p["kind"] for row in CORPUS for p in row["planted"]} == {
        "card", "iban", "national_id", "jwt", "bearer", "api_key", "private_key",
    }  # fmt: skip
    assert {d["kind"] for row in CORPUS for d in row["decoys"]} >= {"luhn_invalid", "order", "date", "bad_iban"}


def corpus_scores() -> tuple[int, int, int, list[str], list[str]]:
    result = corpus_result()
    by_seq = {e.seq: e.text for e in result.transcript}
    kinds: dict[int, set[str]] = {}
    for r in result.receipt:
        seq = int(r.path.split("seq=")[1].split("]")[0])
        kinds.setdefault(seq, set()).add(kind_of(r.reason))
    tp = fp = fn = 0
    misses, false_hits = [], []
    for seq, row in enumerate(CORPUS, 1):
        text, found = by_seq[seq], kinds.get(seq, set())
        for planted in row["planted"]:
            if planted["value"] not in text and planted["kind"] in found:
                tp += 1
            else:
                fn += 1
                misses.append(f"line {seq}: {planted['kind']}")
        for decoy in row["decoys"]:
            if decoy["value"] not in text:
                fp += 1
                false_hits.append(f"line {seq}: decoy {decoy['kind']} altered")
        if not row["planted"] and found:
            fp += 1
            false_hits.append(f"line {seq}: decoy-only message got receipt entries {sorted(found)}")
    return tp, fp, fn, misses, false_hits


def test_corpus_every_planted_value_is_redacted_with_a_receipt_of_its_kind() -> None:
    tp, fp, fn, misses, _ = corpus_scores()
    recall = tp / (tp + fn)
    precision = tp / (tp + fp) if tp + fp else 1.0
    assert fn == 0, f"recall {recall:.4f} (precision {precision:.4f}, {tp} found, {fn} missed): {misses[:10]}"


def test_corpus_no_decoy_is_altered_or_flagged() -> None:
    tp, fp, fn, _, false_hits = corpus_scores()
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn)
    assert fp == 0, f"precision {precision:.4f} (recall {recall:.4f}, {fp} false hits): {false_hits[:10]}"


def test_corpus_values_are_redacted_in_nested_context_values_too() -> None:
    rows = [row for row in CORPUS if row["planted"]][:40]
    context = FilterContext(slots={"history": [{"said": row["text"]} for row in rows]})
    result = apply_filter(FilterRequest(context=context))
    dumped = json.dumps(result.context.model_dump())
    for row in rows:
        for planted in row["planted"]:
            assert planted["value"] not in dumped, planted["kind"]
    paths = {r.path for r in result.receipt}
    assert {f"slots.history[{i}].said" for i in range(len(rows))} == paths


def test_auth_and_internal_notes_never_leave() -> None:
    context = FilterContext(
        profile={"name": "Ada"},
        auth={"user": "ada-canary", "scope": "read"},
        internal_notes="VIP, promised a refund",
        sealed={"auth": ["gAAAA-cipher"], "internal_notes": ["gAAAA-cipher-2"]},
    )
    # Even a route that names them in its allowlist does not get them.
    result = apply_filter(FilterRequest(context=context, allowlist=["profile.*", "auth.user", "internal_notes"]))
    dumped = result.model_dump_json()
    assert "ada-canary" not in dumped and "VIP" not in dumped and "cipher" not in dumped
    assert set(result.context.model_dump()) == {"profile", "slots", "metadata"}
    assert result.context.profile == {"name": "Ada"}
    never = [(r.path, r.action, r.reason) for r in result.receipt if r.reason == NEVER_LEAVES]
    assert never == [("auth", "dropped", NEVER_LEAVES), ("internal_notes", "dropped", NEVER_LEAVES)]


def test_workflow_context_with_sealed_sections_converts_and_drops_them() -> None:
    ctx = Context(profile={"name": "Ada"}, slots={"issue": "crash"}, sealed={"auth": ["x"], "internal_notes": ["y"]})
    result = apply_filter(FilterRequest.from_context(ctx, [entry(1, "hello")]))
    assert result.context.profile == {"name": "Ada"} and result.context.slots == {"issue": "crash"}
    assert {r.path for r in result.receipt} == {"auth", "internal_notes"}


def test_secret_named_keys_are_dropped_at_any_depth_in_every_spelling() -> None:
    secret_keys = [
        "password", "Password", "userPassword", "db_password", "passwd", "pwd", "token", "accessToken",
        "refresh-token", "ACCESS_TOKEN", "secret", "clientSecret", "api_key", "apiKey", "x-api-key", "X-Api-Key",
        "apikey", "Authorization", "auth", "cookie", "Set-Cookie", "session", "sessionId", "session_id",
        "private_key", "privateKey", "credentials", "otp", "pin", "cvv", "CVC", "ssn", "stripeToken",
    ]  # fmt: skip
    nested = {k: f"{PASSWORD}-{i}" for i, k in enumerate(secret_keys)}
    context = FilterContext(
        profile={"name": "Ada", **nested},
        slots={"a": {"b": {"c": [{"keep": 1, **nested}, [nested]]}}},
        metadata={"headers": {"Accept": "json", "X-Api-Key": "k", "Cookie": "c"}},
    )
    result = apply_filter(FilterRequest(context=context))
    dumped = result.context.model_dump_json()
    assert PASSWORD not in dumped
    assert result.context.profile == {"name": "Ada"}
    assert result.context.slots == {"a": {"b": {"c": [{"keep": 1}, [{}]]}}}
    assert result.context.metadata == {"headers": {"Accept": "json"}}
    paths = {r.path for r in result.receipt if r.reason == SECRET_KEY}
    assert "profile.accessToken" in paths and "slots.a.b.c[0].x-api-key" in paths
    assert "slots.a.b.c[1][0].Set-Cookie" in paths and "metadata.headers.Cookie" in paths
    assert len(paths) == 3 * len(secret_keys) + 2


def test_keys_that_only_resemble_secret_names_are_kept() -> None:
    keep = {"token_count": 3, "session_count": 2, "tokenizer": "bpe", "pinned": True, "author": "a", "keyboard": "fr"}
    result = apply_filter(FilterRequest(context=FilterContext(metadata=keep)))
    assert result.context.metadata == keep and result.receipt == []


def test_allowlist_narrows_to_the_named_paths() -> None:
    context = FilterContext(
        profile={"name": "Ada", "email": "ada@example.com", "address": {"city": "Paris", "street": "1 rue X"}},
        slots={"issue_type": "crash", "answers": {"os": "linux"}},
        metadata={"source": "web"},
    )
    result = apply_filter(FilterRequest(context=context, allowlist=["profile.name", "profile.address.city", "slots.*"]))
    assert result.context.profile == {"name": "Ada", "address": {"city": "Paris"}}
    assert result.context.slots == {"issue_type": "crash", "answers": {"os": "linux"}}
    assert result.context.metadata == {}
    dropped = {r.path for r in result.receipt if r.reason == NOT_ALLOWED}
    assert dropped == {"profile.email", "profile.address.street", "metadata"}
    # No allowlist: everything shareable stays; an empty one: nothing does.
    assert apply_filter(FilterRequest(context=context)).context.metadata == {"source": "web"}
    assert apply_filter(FilterRequest(context=context, allowlist=[])).context.model_dump() == {
        "profile": {}, "slots": {}, "metadata": {}
    }


def test_allowlist_path_outside_the_sections_is_refused() -> None:
    with pytest.raises(ValueError, match="allowlist path"):
        FilterRequest(allowlist=["transcript.text"])


def test_receipt_never_contains_a_value_not_even_partly() -> None:
    result = corpus_result()
    secrets = [p["value"] for row in CORPUS for p in row["planted"]]
    # And values under secret-named keys, and redacted context values.
    context = FilterContext(
        profile={"password": PASSWORD, "cards": ["visa", CARD], "auth": {"token": "tok-0123456789"}},
        auth={"session": "sess-0123456789"},
        internal_notes="note-0123456789",
    )
    more = apply_filter(FilterRequest(context=context))
    receipt = json.dumps([r.model_dump() for r in result.receipt + more.receipt])
    for value in [*secrets, PASSWORD, CARD, "tok-0123456789", "sess-0123456789", "note-0123456789"]:
        leaked = [w for w in windows(value) if w in receipt]
        assert not leaked, f"receipt holds part of a value ({len(leaked)} window(s))"
    assert {"path": "profile.cards[1]", "action": "redacted", "reason": REASONS["card"]} in [
        r.model_dump() for r in more.receipt
    ]


async def test_a_failure_never_quotes_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(request: FilterRequest) -> FilterResult:
        raise ValueError(f"cannot handle {request.context.profile['card']}")

    monkeypatch.setattr(filtering, "apply_filter", broken)
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(filter_context, FilterRequest(context=FilterContext(profile={"card": CARD})))
    assert CARD not in str(caught.value) and caught.value.__cause__ is None and caught.value.non_retryable


def test_luhn_invalid_numbers_are_not_redacted() -> None:
    text = "old card 4111 1111 1111 1112 and 4111111111111110, new card 4111-1111-1111-1111"
    context = FilterContext(profile={"n": 4111111111111112})
    result = apply_filter(FilterRequest(transcript=[entry(3, text)], context=context))
    assert result.transcript[0].text == "old card 4111 1111 1111 1112 and 4111111111111110, new card [redacted:card]"
    assert result.context.profile == {"n": 4111111111111112}
    assert [r.model_dump() for r in result.receipt] == [
        {"path": "transcript[seq=3].text", "action": "redacted", "reason": "card number (Luhn)"}
    ]


def test_checksum_failures_and_invalid_ranges_are_not_redacted() -> None:
    decoys = [
        "DE89 3704 0044 0532 0130 01",  # IBAN, wrong check digits
        "GB82WEST12345698765433",
        "000-12-3456", "666-12-3456", "900-12-3456", "123-00-4567", "123-45-0000",  # SSN-shaped, invalid ranges
        "12345678A",  # DNI with the wrong letter
        "ORD-2024-118823", "#4471 2209", "2024-03-15", "+1 415 555 0132", "550e8400-e29b-41d4-a716-446655440000",
        "1Z999AA10123456784", "$1,249.99",
    ]  # fmt: skip
    result = apply_filter(FilterRequest(transcript=[entry(1, " ; ".join(decoys))]))
    assert result.transcript[0].text == " ; ".join(decoys) and result.receipt == []


def test_ibans_of_every_registry_country_are_redacted_kosovo_russia_el_salvador_included() -> None:
    # Countries missing from Baton's own length table before python-stdnum's registry replaced it; written as a
    # customer pastes them (grouped in fours) and compact.
    ibans = ["XK05 1212 0123 4567 8906", "RU0304452522540817810538091310419", "SV62 CENR 0000 0000 0000 0070 0025"]
    result = apply_filter(FilterRequest(transcript=[entry(1, "pay to " + " or ".join(ibans) + " please")]))
    assert result.transcript[0].text == "pay to [redacted:iban] or [redacted:iban] or [redacted:iban] please"
    # Their check digits changed: not account numbers, not redacted.
    wrong = ["XK06 1212 0123 4567 8906", "RU0404452522540817810538091310419"]
    result = apply_filter(FilterRequest(transcript=[entry(1, " ; ".join(wrong))]))
    assert result.transcript[0].text == " ; ".join(wrong) and result.receipt == []


def test_each_kind_is_redacted_with_its_reason() -> None:
    samples = {
        "card (Luhn)": ("card number (Luhn)", "378282246310005"),
        "iban": ("iban (mod-97)", "GB82 WEST 1234 5698 7654 32"),
        "ssn": ("national id (us-ssn)", "123-45-6789"),
        "nino": ("national id (uk-nino)", "AB 12 34 56 C"),
        "dni": ("national id (es-dni)", "12345678Z"),
        "jwt": ("jwt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"),
        "bearer": ("bearer token", "Bearer abcdefABCDEF0123456789"),
        "api key": ("api key", "AKIAIOSFODNN7EXAMPLE"),
        "private key": ("private key", "-----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY-----"),
    }
    for label, (reason, value) in samples.items():
        result = apply_filter(FilterRequest(context=FilterContext(slots={"said": f"here: {value} ok"})))
        assert value not in result.context.slots["said"], label
        assert [(r.path, r.action, r.reason) for r in result.receipt] == [("slots.said", "redacted", reason)], label


def test_input_is_not_mutated() -> None:
    request = FilterRequest(
        context=FilterContext(profile={"password": "x", "card": CARD}), transcript=[entry(1, f"card {CARD}")]
    )
    before = request.model_dump_json()
    apply_filter(request)
    assert request.model_dump_json() == before


def test_filtered_output_is_json_serialisable() -> None:
    context = FilterContext(
        profile={"name": "Ada", "cards": [CARD, 4111111111111111], "n": 1.5, "ok": True, "none": None},
        slots={"deep": [[{"x": "iban GB82WEST12345698765433"}]]},
        metadata={"weird key.with dots": "v", "4111111111111111": "keyed by a card"},
    )
    result = apply_filter(FilterRequest(context=context, transcript=[entry(1, f"my card {CARD}")]))
    text = json.dumps(result.model_dump(mode="json"))
    assert "4111" not in text
    payload = pydantic_data_converter.payload_converter.to_payloads([result])
    again = pydantic_data_converter.payload_converter.from_payloads(payload, [FilterResult])[0]
    assert again == result
    assert '[redacted:card]' in again.context.metadata


async def test_activity_runs_in_activity_environment() -> None:
    request = FilterRequest(
        context=FilterContext(profile={"name": "Ada", "apiKey": "k"}, auth={"t": "x"}),
        transcript=[entry(1, "hi"), entry(2, f"card {CARD}")],
        allowlist=["profile.*"],
    )
    result = await ActivityEnvironment().run(filter_context, request)
    assert isinstance(result, FilterResult)
    assert result.context.profile == {"name": "Ada"}
    assert [e.text for e in result.transcript] == ["hi", "card [redacted:card]"]
    assert {(r.path, r.reason) for r in result.receipt} == {
        ("auth", NEVER_LEAVES), ("profile.apiKey", SECRET_KEY), ("transcript[seq=2].text", REASONS["card"]),
    }  # fmt: skip
    assert filter_context.__temporal_activity_definition.name == "filter_context"  # type: ignore[attr-defined]


def test_nesting_past_the_depth_limit_is_dropped_not_crashed() -> None:
    deep: dict = {}
    cur = deep
    for _ in range(200):
        cur["a"] = {}
        cur = cur["a"]
    result = apply_filter(FilterRequest(context=FilterContext(slots={"x": 1, "deep": deep})))
    assert result.context.slots["x"] == 1
    assert [(r.action, r.reason) for r in result.receipt] == [("dropped", filtering.TOO_DEEP)]


def test_a_key_that_is_itself_sensitive_is_redacted_in_output_and_path() -> None:
    result = apply_filter(FilterRequest(context=FilterContext(metadata={"refunds": {CARD: "pending"}})))
    assert result.context.metadata == {"refunds": {"[redacted:card]": "pending"}}
    assert [r.model_dump() for r in result.receipt] == [
        {"path": 'metadata.refunds["[redacted:card]"]', "action": "redacted", "reason": REASONS["card"]}
    ]


def test_hostile_text_stays_fast() -> None:
    """Near-miss runs at the largest message size: every pattern stays linear (no catastrophic backtracking).
    Not a performance target (bench/filter_latency.py measures that): a backtracking regex would take seconds
    to minutes here, 50x beyond the bound."""
    import time

    hostile = ["1234 " * 1600, "eyJ" * 2666, "eyJabcdef." * 800, "DE89 " * 1600, "Bearer " * 1100,
               "-----BEGIN RSA PRIVATE KEY-----" * 250, "123-45-" * 1100, "AB 12 34 " * 880, "sk-" * 2666]
    for text in hostile:
        t0 = time.perf_counter()
        filtering.redact_text(text)
        assert time.perf_counter() - t0 < 0.25, text[:20]


def test_a_card_followed_by_its_expiry_or_another_card_is_still_found() -> None:
    """Regression: a card number with more digit groups after it ("4111 1111 1111 1111 12/27", a year, two cards
    in a row) passed unredacted; a tracking number that merely contains a Luhn-valid stretch is still left alone."""
    leaks = {
        "my card is 4111 1111 1111 1111 12/27": "my card is [redacted:card] 12/27",
        "4111 1111 1111 1111 2024": "[redacted:card] 2024",
        "cards 4111111111111111 5555555555554444": "cards [redacted:card] [redacted:card]",
        "4111-1111-1111-1111-5555-5555-5555-4444": "[redacted:card]-[redacted:card]",
        "amex 3782 822463 10005 123": "amex [redacted:card] 123",
    }
    for text, expected in leaks.items():
        assert redact_text(text)[0] == expected, text
    for decoy in ("9400 5293 3992 6276 1844 77", "1234 5678 9012 3456 7890 1234"):
        assert redact_text(decoy)[0] == decoy
