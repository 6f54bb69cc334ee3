"""Standard Webhooks signing: round trips, interop with the reference library, and every way to be refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import datetime, timezone

import pytest
import standardwebhooks

from activities import webhooks
from activities.webhooks import WebhookVerificationError

BODY = b'{"conversation_id":"c-1","seq":1,"text":"h\xc3\xa9llo"}'


def reference_headers(secret: str, msg_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    signature = standardwebhooks.Webhook(secret).sign(
        msg_id, datetime.fromtimestamp(timestamp, tz=timezone.utc), body.decode()
    )
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def refusal(secrets, hdrs, body=BODY, **kw) -> str:
    with pytest.raises(WebhookVerificationError) as e:
        webhooks.verify(secrets, hdrs, body, **kw)
    return e.value.reason


def test_generated_secret_is_whsec_with_a_32_byte_key():
    secret = webhooks.generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert webhooks.generate_secret() != secret


def test_signed_request_verifies():
    secret = webhooks.generate_secret()
    webhooks.verify(secret, webhooks.headers(secret, "msg_1", BODY), BODY)


def test_headers_carry_id_timestamp_signature_and_json_content_type():
    secret = webhooks.generate_secret()
    hdrs = webhooks.headers(secret, "msg_1", BODY, timestamp=1_700_000_000)
    assert hdrs == {
        "webhook-id": "msg_1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": webhooks.sign(secret, "msg_1", 1_700_000_000, BODY),
        "content-type": "application/json",
    }
    assert hdrs["webhook-signature"].startswith("v1,")


def test_our_signature_verifies_with_the_reference_library():
    secret = webhooks.generate_secret()
    hdrs = webhooks.headers(secret, "msg_interop", BODY)
    assert standardwebhooks.Webhook(secret).verify(BODY, hdrs)["seq"] == 1


def test_reference_signature_verifies_with_ours():
    secret = webhooks.generate_secret()
    webhooks.verify(secret, reference_headers(secret, "msg_interop", BODY, int(time.time())), BODY)


def test_signature_matches_the_published_test_vector():
    # The example from the Standard Webhooks / Svix test suites.
    secret, msg_id = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek"
    ts, body = 1614265330, b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert webhooks.sign(secret, msg_id, ts, body) == expected
    assert reference_headers(secret, msg_id, body, ts)["webhook-signature"] == expected


def test_unpadded_secret_accepted_by_the_reference_library_is_accepted():
    secret = "whsec_" + base64.b64encode(b"0123456789abcdefghij0").decode().rstrip("=")
    assert not secret.endswith("=")
    webhooks.verify(secret, reference_headers(secret, "m", BODY, int(time.time())), BODY)


def test_header_names_are_case_insensitive():
    secret = webhooks.generate_secret()
    hdrs = {k.title(): v for k, v in webhooks.headers(secret, "msg_1", BODY).items()}
    webhooks.verify(secret, hdrs, BODY)


def test_stale_timestamp_is_refused():
    secret = webhooks.generate_secret()
    now = time.time()
    hdrs = webhooks.headers(secret, "msg_1", BODY, timestamp=int(now) - 301)
    assert "stale" in refusal(secret, hdrs, now=now)
    # The reference library agrees.
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(BODY, hdrs)


def test_future_timestamp_is_refused():
    secret = webhooks.generate_secret()
    now = time.time()
    hdrs = webhooks.headers(secret, "msg_1", BODY, timestamp=int(now) + 301)
    assert "future" in refusal(secret, hdrs, now=now)


def test_timestamp_within_tolerance_is_accepted():
    secret = webhooks.generate_secret()
    now = 1_700_000_000.0
    webhooks.verify(secret, webhooks.headers(secret, "m", BODY, timestamp=int(now) - 299), BODY, now=now)
    webhooks.verify(secret, webhooks.headers(secret, "m", BODY, timestamp=int(now) + 299), BODY, now=now)


def test_tolerance_is_configurable():
    secret = webhooks.generate_secret()
    hdrs = webhooks.headers(secret, "m", BODY, timestamp=1_000)
    assert "stale" in refusal(secret, hdrs, now=1_011, tolerance_s=10)


@pytest.mark.parametrize("bad", ["", "abc", "17e8", "-5", "1700000000.5"])
def test_malformed_timestamp_is_refused(bad):
    secret = webhooks.generate_secret()
    hdrs = {**webhooks.headers(secret, "m", BODY), "webhook-timestamp": bad}
    reason = refusal(secret, hdrs)
    assert ("malformed" in reason) or ("missing" in reason and bad == "")


def test_forged_signature_is_refused():
    secret = webhooks.generate_secret()
    forged = webhooks.headers(webhooks.generate_secret(), "msg_1", BODY)
    assert refusal(secret, forged) == "no matching signature"


def test_tampered_body_is_refused():
    secret = webhooks.generate_secret()
    hdrs = webhooks.headers(secret, "msg_1", BODY)
    assert refusal(secret, hdrs, body=BODY.replace(b'"seq":1', b'"seq":2')) == "no matching signature"


def test_changed_webhook_id_is_refused():
    secret = webhooks.generate_secret()
    hdrs = {**webhooks.headers(secret, "msg_1", BODY), "webhook-id": "msg_2"}
    assert refusal(secret, hdrs) == "no matching signature"


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_refused_and_named(header):
    secret = webhooks.generate_secret()
    hdrs = webhooks.headers(secret, "msg_1", BODY)
    del hdrs[header]
    reason = refusal(secret, hdrs)
    assert reason.startswith("missing header") and header in reason


@pytest.mark.parametrize("garbage", ["v1", "v1,", "v1,***not-base64***", "nonsense", ""])
def test_garbage_signature_is_refused_not_crashed(garbage):
    secret = webhooks.generate_secret()
    hdrs = {**webhooks.headers(secret, "msg_1", BODY), "webhook-signature": garbage}
    assert refusal(secret, hdrs) in {"no matching signature", "missing header(s): webhook-signature"}


def test_any_matching_signature_among_several_is_accepted():
    secret = webhooks.generate_secret()
    ts = int(time.time())
    good = webhooks.sign(secret, "msg_1", ts, BODY)
    other = webhooks.sign(webhooks.generate_secret(), "msg_1", ts, BODY)
    hdrs = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": f"v1a,c29tZXRoaW5n {other} {good}",
    }
    webhooks.verify(secret, hdrs, BODY)
    standardwebhooks.Webhook(secret).verify(BODY, {**hdrs, "webhook-signature": f"{other} {good}"})


def test_signature_of_another_version_is_not_accepted():
    secret = webhooks.generate_secret()
    hdrs = webhooks.headers(secret, "msg_1", BODY)
    hdrs["webhook-signature"] = "v2," + hdrs["webhook-signature"].removeprefix("v1,")
    assert refusal(secret, hdrs) == "no matching signature"


def test_rotation_old_and_new_secret_both_verify():
    old, new = webhooks.generate_secret(), webhooks.generate_secret()
    webhooks.verify([new, old], webhooks.headers(old, "m1", BODY), BODY)
    webhooks.verify([new, old], webhooks.headers(new, "m2", BODY), BODY)
    assert refusal([new], webhooks.headers(old, "m3", BODY)) == "no matching signature"


def test_sender_may_sign_with_both_secrets_during_rotation():
    old, new = webhooks.generate_secret(), webhooks.generate_secret()
    ts = int(time.time())
    hdrs = {
        "webhook-id": "m",
        "webhook-timestamp": str(ts),
        "webhook-signature": f"{webhooks.sign(old, 'm', ts, BODY)} {webhooks.sign(new, 'm', ts, BODY)}",
    }
    webhooks.verify(old, hdrs, BODY)
    webhooks.verify(new, hdrs, BODY)


@pytest.mark.parametrize("bad", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_not base64!", "whsec_QUJDR"])
def test_malformed_secret_is_refused_without_echoing_it(bad):
    hdrs = webhooks.headers(webhooks.generate_secret(), "m", BODY)
    reason = refusal(bad, hdrs)
    assert reason.startswith("malformed webhook secret")
    if bad != "whsec_":
        assert bad.removeprefix("whsec_") not in reason
    with pytest.raises(ValueError):
        webhooks.sign(bad, "m", 1, BODY)


def test_no_secret_at_all_is_refused():
    assert refusal([], webhooks.headers(webhooks.generate_secret(), "m", BODY)) == "no webhook secret configured"


def test_non_utf8_body_is_signed_as_bytes():
    secret = webhooks.generate_secret()
    body = b"\xff\xfe binary"
    webhooks.verify(secret, webhooks.headers(secret, "m", body), body)


def test_proof_is_base64_hmac_of_the_challenge_keyed_by_the_decoded_secret():
    secret = webhooks.generate_secret()
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, b"challenge-123", hashlib.sha256).digest()).decode()
    assert webhooks.proof(secret, "challenge-123") == expected
    assert webhooks.proof_matches(secret, "challenge-123", expected)
    assert not webhooks.proof_matches(webhooks.generate_secret(), "challenge-123", expected)
    assert not webhooks.proof_matches(secret, "challenge-124", expected)
