"""The platform protocol's outbound activities over real loopback HTTP: envelope shape, signatures checked with the
reference library, stable webhook ids, answer classification, Retry-After, redaction and the address policy."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import sealing
from activities.outbound import ALLOW_PRIVATE_ENV, OutboundPolicy
from activities.platform import PlatformActivities
from models.names import Errors
from activities.registry import SqliteRegistry
from models.conversation import DeliveryResult, Role, TranscriptEntry
from models.filtering import SharedContext
from models.protocol import ForwardMessage, HandoffDelivery, HandoffEnvelope, HandoffOutcome, PeerDelivery, PeerEvent
from devkit.temporal import free_port
from tests.receiver import Receiver

PUBLIC_URL = "https://baton.example/"
AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
ALLOW = OutboundPolicy(allow_private=True)


class QueryReceiver(Receiver):
    """Also records each request's query string (Receiver keeps the path only)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queries: list[str] = []

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.queries.append(scope.get("query_string", b"").decode())
        await super()._app(scope, receive, send)


@pytest.fixture
def registry(tmp_path: Path):
    reg = SqliteRegistry(tmp_path / "agents.db", sealing.new_key())
    yield reg
    reg.close()


def activities(registry: SqliteRegistry, policy: OutboundPolicy | None = ALLOW) -> PlatformActivities:
    return PlatformActivities(lambda: registry, PUBLIC_URL, policy)


async def run(fn: Any, arg: Any) -> Any:
    return await ActivityEnvironment().run(fn, arg)


async def unavailable(fn: Any, arg: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as e:
        await run(fn, arg)
    assert e.value.type == Errors.AGENT_UNAVAILABLE
    assert not e.value.non_retryable
    return e.value


def handoff(agent_id: str = "ext-1", handoff_id: str = "h-1") -> HandoffDelivery:
    return HandoffDelivery(
        agent_id=agent_id,
        handoff_id=handoff_id,
        conversation_id="c-1",
        reason="app crashes",
        summary="The user's app crashes on start.",
        context=SharedContext(profile={"name": "Ada"}, slots={"order": 42}, metadata={"plan": "pro"}),
        transcript=[
            TranscriptEntry(seq=1, message_id="m-1", role=Role.USER, author="user", text="it crashes", at=AT),
            TranscriptEntry(seq=2, message_id="m-2", role=Role.AI, author="ai", text="handing over", at=AT,
                            event="hand_back"),
        ],
    )


def forward(text: str = "hello", agent_id: str = "ext-1") -> ForwardMessage:
    return ForwardMessage(agent_id=agent_id, remote_conversation_id="rc-1", conversation_id="c-1",
                          message_id="m-3", text=text)


def peer(callback_url: str, agent_id: str = "tech") -> PeerDelivery:
    event = PeerEvent(type="message", remote_conversation_id="rc-9", message_id="r-1", text="try restarting")
    return PeerDelivery(agent_id=agent_id, callback_url=callback_url, conversation_id="loc-1", seq=4, event=event)


def no_secret(result: HandoffOutcome | DeliveryResult, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in result.detail
        assert secret.removeprefix("whsec_") not in result.detail


# ---- deliver_handoff ----------------------------------------------------------------------------------------


HOF_ID = "hof_" + hashlib.sha256(b"c-1\x00h-1").hexdigest()[:32]


async def test_accepted_handoff_sends_the_documented_envelope_and_links(registry):
    async with Receiver() as remote:
        registry.save_external("ext-1", remote.secret, remote.base_url)
        remote.script((202, {}, {"accepted": True, "remote_conversation_id": "rc-1"}))
        outcome = await run(activities(registry).deliver_handoff, handoff())

        assert outcome == HandoffOutcome(accepted=True, remote_conversation_id="rc-1", status=202)
        assert registry.linked("ext-1", "rc-1") == "c-1"
        [req] = remote.requests
        assert req.method == "POST" and req.path == "/v1/agents/ext-1/handoffs"
        assert req.webhook_id == HOF_ID  # the same on every retry: a hash of conversation and handoff id
        # The reference library agrees with our signature, byte for byte.
        body = standardwebhooks.Webhook(remote.secret).verify(req.body, req.headers)
        assert body == {
            "handoff_id": "h-1",
            "source": {"platform": "https://baton.example", "conversation_id": "c-1"},
            "reason": "app crashes",
            "summary": "The user's app crashes on start.",
            "context": {"profile": {"name": "Ada"}, "slots": {"order": 42}, "metadata": {"plan": "pro"}},
            "transcript": [
                {"seq": 1, "message_id": "m-1", "role": "user", "author": "user", "text": "it crashes",
                 "at": "2025-01-02T03:04:05Z"},
                {"seq": 2, "message_id": "m-2", "role": "ai", "author": "ai", "text": "handing over",
                 "at": "2025-01-02T03:04:05Z"},
            ],
            "callback_url": "https://baton.example/v1/agents/ext-1/events",
        }
        # What the receiving side validates the envelope with accepts it.
        HandoffEnvelope.model_validate_json(req.body)


async def test_retry_after_503_keeps_the_webhook_id_and_signs_afresh(registry):
    async with Receiver() as remote:
        registry.save_external("ext-1", remote.secret, remote.base_url)
        remote.script((503, {"Retry-After": "7"}), (202, {}, {"accepted": True, "remote_conversation_id": "rc-2"}))
        acts = activities(registry)

        err = await unavailable(acts.deliver_handoff, handoff())
        assert err.next_retry_delay == timedelta(seconds=7)
        assert registry.linked("ext-1", "rc-2") is None
        outcome = await run(acts.deliver_handoff, handoff())

        assert outcome.accepted and outcome.remote_conversation_id == "rc-2"
        first, second = remote.requests
        assert first.webhook_id == second.webhook_id == HOF_ID
        assert first.body == second.body
        assert first.verified and second.verified


@pytest.mark.parametrize(
    ("status", "answer", "reason"),
    [
        (409, {"detail": "conversation already handed off"}, "conversation already handed off"),
        (422, {"reason": "transcript too long"}, "transcript too long"),
        (422, {"detail": "x" * 500}, "x" * 200),
        (401, None, "Unauthorized"),
        (302, None, "redirect (not followed)"),
    ],
)
async def test_refusals_are_final_and_carry_the_remote_reason(registry, status, answer, reason):
    async with Receiver() as remote:
        registry.save_external("ext-1", remote.secret, remote.base_url)
        remote.script((status, {"Location": "http://elsewhere.example/"}, answer))
        outcome = await run(activities(registry).deliver_handoff, handoff())

    assert outcome == HandoffOutcome(accepted=False, status=status, detail=f"refused with {status}: {reason}")
    assert len(remote.requests) == 1
    no_secret(outcome, remote.secret)


async def test_a_remote_echoing_the_secret_does_not_get_it_into_the_detail(registry):
    async with Receiver() as remote:
        registry.save_external("ext-1", remote.secret, remote.base_url)
        remote.script((422, {}, {"detail": f"bad secret {remote.secret}\nnext line"}))
        outcome = await run(activities(registry).deliver_handoff, handoff())

    assert outcome.detail == "refused with 422: bad secret [secret] next line"
    no_secret(outcome, remote.secret)


@pytest.mark.parametrize(
    "answer",
    [
        {"accepted": True},
        {"accepted": False, "remote_conversation_id": "rc-1"},
        {"accepted": True, "remote_conversation_id": "../admin"},
        b"not json",
        None,
    ],
)
async def test_a_2xx_without_a_usable_remote_id_is_a_refusal(registry, answer):
    async with Receiver() as remote:
        registry.save_external("ext-1", remote.secret, remote.base_url)
        remote.script((200, {}, answer))
        outcome = await run(activities(registry).deliver_handoff, handoff())

    assert outcome == HandoffOutcome(
        accepted=False, status=200, detail="answered 2xx without a remote_conversation_id"
    )
    assert registry.linked("ext-1", "rc-1") is None


async def test_unknown_external_agent_is_not_accepted(registry):
    outcome = await run(activities(registry).deliver_handoff, handoff(agent_id="nobody"))
    assert not outcome.accepted
    assert "unknown external agent" in outcome.detail


async def test_default_policy_refuses_loopback_unless_the_install_allows_it(registry, monkeypatch):
    monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)
    async with Receiver() as remote:
        registry.save_external("ext-1", remote.secret, remote.base_url)
        acts = activities(registry, policy=None)

        outcome = await run(acts.deliver_handoff, handoff())
        assert not outcome.accepted and outcome.status is None
        assert "loopback" in outcome.detail
        forwarded = await run(acts.forward_to_agent, forward())
        assert forwarded.outcome == "gone" and "loopback" in forwarded.detail
        assert remote.requests == []

        monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")
        remote.script((202, {}, {"accepted": True, "remote_conversation_id": "rc-1"}))
        assert (await run(acts.deliver_handoff, handoff())).accepted


async def test_unreachable_agent_is_retryable(registry):
    registry.save_external("ext-1", "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=",
                           f"http://127.0.0.1:{free_port()}")
    err = await unavailable(activities(registry).deliver_handoff, handoff())
    assert "unreachable" in str(err) and "QUFB" not in str(err)


async def test_a_registry_that_cannot_open_fails_for_good():
    def broken() -> SqliteRegistry:
        raise ValueError("BATON_SECRET_KEY must be 32 url-safe base64-encoded bytes (see `baton keys`)")

    acts = PlatformActivities(broken, PUBLIC_URL, ALLOW)
    for fn, arg in ((acts.deliver_handoff, handoff()), (acts.forward_to_agent, forward()),
                    (acts.deliver_to_peer, peer("http://127.0.0.1:1/x"))):
        with pytest.raises(ApplicationError) as e:
            await run(fn, arg)
        assert e.value.non_retryable and "BATON_SECRET_KEY" in str(e.value)


# ---- forward_to_agent -----------------------------------------------------------------------------------------


async def test_forward_redacts_a_card_number_and_signs_with_a_stable_id(registry):
    async with Receiver() as remote:
        registry.save_external("ext-1", remote.secret, remote.base_url)
        result = await run(activities(registry).forward_to_agent, forward("my card is 4111 1111 1111 1111 ok?"))

        assert result == DeliveryResult(outcome="delivered", status=202)
        [req] = remote.requests
        assert req.path == "/v1/agents/ext-1/conversations/rc-1/messages"
        body = standardwebhooks.Webhook(remote.secret).verify(req.body, req.headers)
        assert set(body) == {"message_id", "text"} and body["message_id"] == "m-3"
        assert "4111" not in body["text"] and "[redacted:" in body["text"] and body["text"].startswith("my card is ")
        assert req.webhook_id == "fwd_" + hashlib.sha256(b"c-1\x00m-3").hexdigest()[:32]


@pytest.mark.parametrize(
    ("status", "outcome"), [(404, "gone"), (409, "gone"), (410, "gone"), (422, "rejected"), (400, "rejected")]
)
async def test_forward_final_answers(registry, status, outcome):
    async with Receiver() as remote:
        registry.save_external("ext-1", remote.secret, remote.base_url)
        remote.script((status, {}, {"detail": "conversation closed"}))
        result = await run(activities(registry).forward_to_agent, forward())

    assert result.outcome == outcome and result.status == status
    assert "conversation closed" in result.detail
    no_secret(result, remote.secret)


@pytest.mark.parametrize("status", [500, 502, 408, 429])
async def test_forward_transient_answers_are_retried_with_the_same_id(registry, status):
    async with Receiver() as remote:
        registry.save_external("ext-1", remote.secret, remote.base_url)
        remote.script(status)
        acts = activities(registry)
        await unavailable(acts.forward_to_agent, forward())
        assert (await run(acts.forward_to_agent, forward())).outcome == "delivered"

    first, second = remote.requests
    assert first.webhook_id == second.webhook_id


async def test_forward_to_an_unknown_agent_is_gone(registry):
    result = await run(activities(registry).forward_to_agent, forward(agent_id="nobody"))
    assert result.outcome == "gone" and "unknown external agent" in result.detail


# ---- deliver_to_peer -----------------------------------------------------------------------------------------


async def test_peer_event_goes_to_the_exact_callback_signed_with_the_current_local_secret(registry):
    registry.create_local("Tech support", "tech")
    secret = registry.rotate_local("tech")  # the previous secret still verifies, but the current one signs
    assert secret is not None
    async with QueryReceiver(secret) as sender:
        p = peer(sender.base_url + "/v1/agents/ext-1/events?tenant=a%20b")
        result = await run(activities(registry).deliver_to_peer, p)

        assert result == DeliveryResult(outcome="delivered", status=202)
        [req] = sender.requests
        assert req.path == "/v1/agents/ext-1/events" and sender.queries == ["tenant=a%20b"]
        body = standardwebhooks.Webhook(secret).verify(req.body, req.headers)
        assert body == {"type": "message", "remote_conversation_id": "rc-9", "message_id": "r-1",
                        "text": "try restarting", "reason": ""}
        assert req.webhook_id == "evt_" + hashlib.sha256(b"loc-1\x004\x00r-1").hexdigest()[:32]


async def test_peer_409_is_gone_and_retry_after_is_honoured(registry):
    _, secret = registry.create_local("Tech support", "tech")
    async with Receiver(secret) as sender:
        p = peer(sender.url)
        acts = activities(registry)
        sender.script((429, {"Retry-After": "30"}), (409, {}, {"detail": "conversation closed"}), 400)

        err = await unavailable(acts.deliver_to_peer, p)
        assert err.next_retry_delay == timedelta(seconds=30)
        gone = await run(acts.deliver_to_peer, p)
        assert gone.outcome == "gone" and gone.status == 409 and "conversation closed" in gone.detail
        rejected = await run(acts.deliver_to_peer, p)
        assert rejected.outcome == "rejected" and rejected.status == 400
        assert len({r.webhook_id for r in sender.requests}) == 1
        assert all(r.path == "/hook" for r in sender.requests)
        for result in (gone, rejected):
            no_secret(result, secret)


async def test_peer_delivery_for_a_removed_agent_or_a_refused_callback_is_gone(registry, monkeypatch):
    monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)
    async with Receiver() as sender:
        removed = await run(activities(registry).deliver_to_peer, peer(sender.url))
        assert removed.outcome == "gone" and "removed" in removed.detail

        registry.create_local("Tech support", "tech")
        refused = await run(activities(registry, policy=None).deliver_to_peer, peer(sender.url))
        assert refused.outcome == "gone" and "loopback" in refused.detail
        assert sender.requests == []

