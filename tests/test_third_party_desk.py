"""A third-party desk reached by webhook, both halves over real loopback HTTP.

Outbound (activities/third_party_desk.py): the handoff and forwarded messages, signed with the desk's secret (checked
with the reference library), stable webhook ids, answer classification, Retry-After, redaction, the address policy
and errors that never carry the secret.

Inbound (api/third_party_desk.py): the desk's status callbacks against a real dev server and worker: signatures, unknown
desks, bad bodies, replay, and accepted / failed / message / completed mapped onto the conversation workflow."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import standardwebhooks
import uvicorn
from fastapi import FastAPI
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import webhooks
from activities.third_party_desk import (
    ThirdPartyDeskEndpoint,
    ThirdPartyDesks,
    forward_webhook_id,
    handoff_webhook_id,
)
from activities.outbound import ALLOW_PRIVATE_ENV, OutboundPolicy
from models.names import Errors
from api.third_party_desk import third_party_desk_router
from api.serve import EmbeddedServer
from models.conversation import (
    AuditPage,
    CommandResult,
    DeliveryResult,
    HandoffRequest,
    HandoffTarget,
    Role,
    Snapshot,
    TranscriptEntry,
)
from models.third_party_desk import ThirdPartyDeskForward, ThirdPartyDeskHandoff
from models.filtering import SharedContext
from models.names import Queries, Updates
from devkit.temporal import free_port
from models.config import load_config
from tests.harness import baton_worker, settings_for, snapshot, start_conversation, transcript
from tests.receiver import Receiver

PUBLIC_URL = "https://baton.example/"
AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
ALLOW = OutboundPolicy(allow_private=True)
CARD = "4111 1111 1111 1111"


async def run(fn: Any, arg: Any) -> Any:
    return await ActivityEnvironment().run(fn, arg)


async def fails(fn: Any, arg: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as e:
        await run(fn, arg)
    return e.value


async def unavailable(fn: Any, arg: Any) -> ApplicationError:
    err = await fails(fn, arg)
    assert err.type == Errors.DESK_UNAVAILABLE and not err.non_retryable, err
    return err


def desks(*endpoints: ThirdPartyDeskEndpoint, policy: OutboundPolicy | None = ALLOW) -> ThirdPartyDesks:
    known = {e.name: e for e in endpoints}
    return ThirdPartyDesks(known.get, PUBLIC_URL, policy)


def handoff(desk: str = "acme", handoff_id: str = "h-1", conversation_id: str = "c-1") -> ThirdPartyDeskHandoff:
    return ThirdPartyDeskHandoff(
        desk=desk,
        handoff_id=handoff_id,
        conversation_id=conversation_id,
        reason="wants a person",
        # Redacted again before it leaves, like the transcript.
        summary=f"The user's card {CARD} failed.",
        context=SharedContext(profile={"name": "Ada"}, slots={"order": 42}, metadata={"plan": "pro"}),
        transcript=[
            TranscriptEntry(seq=1, message_id="m-1", role=Role.USER, author="user", text=f"card {CARD} failed", at=AT),
            TranscriptEntry(seq=2, message_id="m-2", role=Role.AI, author="ai", text="handing over", at=AT,
                            event="hand_back"),
        ],
    )


def forward(text: str = "hello", desk: str = "acme", message_id: str = "m-3") -> ThirdPartyDeskForward:
    return ThirdPartyDeskForward(desk=desk, handoff_id="h-1", conversation_id="c-1", message_id=message_id, text=text)


def no_secret(text: str, secret: str) -> None:
    assert secret not in text
    assert secret.removeprefix("whsec_") not in text


# ---- deliver_to_desk ------------------------------------------------------------------------------------------


async def test_handoff_is_the_documented_envelope_signed_with_the_desk_secret():
    async with Receiver() as desk:
        acme = ThirdPartyDeskEndpoint("acme", desk.base_url, desk.secret)
        result = await run(desks(acme).deliver_to_desk, handoff())

        assert result == DeliveryResult(outcome="delivered", status=202)
        [req] = desk.requests
        assert req.method == "POST" and req.path == "/handoffs"
        assert req.webhook_id == "dsk_" + hashlib.sha256(b"c-1\x00h-1").hexdigest()[:32] == handoff_webhook_id(handoff())
        # The reference library agrees with our signature, byte for byte.
        body = standardwebhooks.Webhook(desk.secret).verify(req.body, req.headers)
        assert body == {
            "handoff_id": "h-1",
            "conversation_id": "c-1",
            "reason": "wants a person",
            "summary": "The user's card [redacted:card] failed.",
            "context": {"profile": {"name": "Ada"}, "slots": {"order": 42}, "metadata": {"plan": "pro"}},
            "transcript": [
                {"seq": 1, "message_id": "m-1", "role": "user", "author": "user",
                 "text": "card [redacted:card] failed", "at": "2025-01-02T03:04:05Z"},
                {"seq": 2, "message_id": "m-2", "role": "ai", "author": "ai", "text": "handing over",
                 "at": "2025-01-02T03:04:05Z"},
            ],
            "callback_url": "https://baton.example/v1/desks/acme/events",
        }
        assert b"4111" not in req.body


async def test_a_desk_url_with_a_path_keeps_it():
    async with Receiver() as desk:
        acme = ThirdPartyDeskEndpoint("acme", desk.base_url + "/api/v2/", desk.secret)
        assert (await run(desks(acme).deliver_to_desk, handoff())).outcome == "delivered"
        assert (await run(desks(acme).forward_to_desk, forward())).outcome == "delivered"
        assert [r.path for r in desk.requests] == ["/api/v2/handoffs", "/api/v2/messages"]


async def test_retries_keep_the_webhook_id_sign_afresh_and_honour_retry_after():
    async with Receiver() as desk:
        acts = desks(ThirdPartyDeskEndpoint("acme", desk.base_url, desk.secret))
        desk.script((503, {"Retry-After": "7"}), (429, {"Retry-After": "30"}), 408, 202)

        assert (await unavailable(acts.deliver_to_desk, handoff())).next_retry_delay == timedelta(seconds=7)
        assert (await unavailable(acts.deliver_to_desk, handoff())).next_retry_delay == timedelta(seconds=30)
        assert (await unavailable(acts.deliver_to_desk, handoff())).next_retry_delay is None
        assert (await run(acts.deliver_to_desk, handoff())).outcome == "delivered"

        assert len(desk.requests) == 4
        assert {r.webhook_id for r in desk.requests} == {handoff_webhook_id(handoff())}
        assert {r.body for r in desk.requests} == {desk.requests[0].body}
        assert all(r.verified for r in desk.requests)
        # Another handoff of the same conversation is another delivery.
        assert handoff_webhook_id(handoff(handoff_id="h-2")) != handoff_webhook_id(handoff())


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_any_2xx_means_received(status):
    async with Receiver() as desk:
        desk.script(status)
        result = await run(desks(ThirdPartyDeskEndpoint("acme", desk.base_url, desk.secret)).deliver_to_desk, handoff())
    assert result == DeliveryResult(outcome="delivered", status=status)


@pytest.mark.parametrize(
    ("status", "answer", "reason"),
    [
        (400, {"detail": "no such skill"}, "no such skill"),
        (401, None, "Unauthorized"),
        (404, {"reason": "no route"}, "no route"),
        (410, None, "Gone"),
        (422, {"detail": "x" * 500}, "x" * 200),
        (302, None, "redirect (not followed)"),
    ],
)
async def test_handoff_refusals_are_returned_not_raised(status, answer, reason):
    async with Receiver() as desk:
        desk.script((status, {"Location": "http://elsewhere.example/"}, answer))
        result = await run(desks(ThirdPartyDeskEndpoint("acme", desk.base_url, desk.secret)).deliver_to_desk, handoff())

    assert result == DeliveryResult(outcome="rejected", status=status, detail=f"desk 'acme' answered {status}: {reason}")
    assert len(desk.requests) == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
async def test_handoff_transient_answers_raise_retryable(status):
    async with Receiver() as desk:
        desk.script(status)
        err = await unavailable(desks(ThirdPartyDeskEndpoint("acme", desk.base_url, desk.secret)).deliver_to_desk, handoff())
    assert f"answered {status}" in str(err)


async def test_unknown_desk_fails_for_good_naming_it():
    err = await fails(desks().deliver_to_desk, handoff(desk="nobody"))
    assert err.non_retryable and err.type == Errors.UNKNOWN_DESK and "'nobody'" in str(err)
    err = await fails(desks().forward_to_desk, forward(desk="nobody"))
    assert err.non_retryable and err.type == Errors.UNKNOWN_DESK and "'nobody'" in str(err)


@pytest.mark.parametrize("secret", ["", "whsec_", "whsec_!!not-base64!!", "not-a-whsec-secret-at-all"])
async def test_a_missing_or_malformed_secret_fails_for_good_without_showing_it(secret):
    async with Receiver() as desk:
        acts = desks(ThirdPartyDeskEndpoint("acme", desk.base_url, secret))
        for fn, arg in ((acts.deliver_to_desk, handoff()), (acts.forward_to_desk, forward())):
            err = await fails(fn, arg)
            assert err.non_retryable and err.type == Errors.BAD_CONFIGURATION and "'acme'" in str(err)
            if secret not in ("", "whsec_"):
                no_secret(str(err), secret)
        assert desk.requests == []


async def test_a_lookup_that_breaks_fails_for_good():
    def broken(name: str) -> ThirdPartyDeskEndpoint | None:
        raise RuntimeError("postgres://user:pw@db/desks is down")

    err = await fails(ThirdPartyDesks(broken, PUBLIC_URL, ALLOW).deliver_to_desk, handoff())
    assert err.non_retryable and err.type == Errors.BAD_CONFIGURATION and "pw@db" not in str(err)


async def test_the_secret_never_appears_in_errors_or_details():
    async with Receiver() as desk:
        acts = desks(ThirdPartyDeskEndpoint("acme", desk.base_url, desk.secret))
        bare = desk.secret.removeprefix("whsec_")
        desk.script((422, {}, {"detail": f"bad secret {desk.secret}\nor {bare}"}), (409, {}, {"reason": bare}),
                    (500, {}, {"detail": desk.secret}))
        refused = await run(acts.deliver_to_desk, handoff())
        assert refused.detail == "desk 'acme' answered 422: bad secret [secret] or [secret]"
        gone = await run(acts.forward_to_desk, forward())
        assert gone.outcome == "gone" and gone.detail == "desk 'acme' answered 409: [secret]"
        err = await unavailable(acts.deliver_to_desk, handoff())
        for text in (refused.detail, gone.detail, str(err), repr(err), repr(err.details)):
            no_secret(text, desk.secret)
        assert desk.secret not in repr(ThirdPartyDeskEndpoint("acme", desk.base_url, desk.secret))

    # Nobody listening: a network error, retryable, and still without the secret.
    closed = ThirdPartyDeskEndpoint("acme", f"http://127.0.0.1:{free_port()}", desk.secret)
    for fn, arg in ((desks(closed).deliver_to_desk, handoff()), (desks(closed).forward_to_desk, forward())):
        err = await unavailable(fn, arg)
        assert "unreachable" in str(err)
        no_secret(str(err), desk.secret)


async def test_private_networks_are_refused_unless_allowed(monkeypatch):
    monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)
    async with Receiver() as desk:
        acme = ThirdPartyDeskEndpoint("acme", desk.base_url, desk.secret)
        for acts in (desks(acme, policy=OutboundPolicy(allow_private=False)), desks(acme, policy=None)):
            refused = await run(acts.deliver_to_desk, handoff())
            assert refused.outcome == "rejected" and refused.status is None and "loopback" in refused.detail
            gone = await run(acts.forward_to_desk, forward())
            assert gone.outcome == "gone" and "loopback" in gone.detail
        # Plain http to a public name is refused before anything is looked up or sent.
        public = desks(ThirdPartyDeskEndpoint("acme", "http://desk.example.com", desk.secret), policy=OutboundPolicy())
        assert "plain http" in (await run(public.deliver_to_desk, handoff())).detail
        assert desk.requests == []

        # Without a policy of its own, the install's setting decides, per attempt.
        monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")
        assert (await run(desks(acme, policy=None).deliver_to_desk, handoff())).outcome == "delivered"
        monkeypatch.setenv(ALLOW_PRIVATE_ENV, "maybe")
        err = await fails(desks(acme, policy=None).deliver_to_desk, handoff())
        assert err.non_retryable and err.type == Errors.BAD_CONFIGURATION and ALLOW_PRIVATE_ENV in str(err)
        assert len(desk.requests) == 1


# ---- forward_to_desk ------------------------------------------------------------------------------------------


async def test_forward_is_redacted_signed_and_stable():
    async with Receiver() as desk:
        result = await run(desks(ThirdPartyDeskEndpoint("acme", desk.base_url, desk.secret)).forward_to_desk,
                           forward(f"my card is {CARD} ok?"))

        assert result == DeliveryResult(outcome="delivered", status=202)
        [req] = desk.requests
        assert req.path == "/messages"
        body = standardwebhooks.Webhook(desk.secret).verify(req.body, req.headers)
        assert body == {"conversation_id": "c-1", "handoff_id": "h-1", "message_id": "m-3",
                        "text": "my card is [redacted:card] ok?"}
        assert req.webhook_id == "dskm_" + hashlib.sha256(b"c-1\x00m-3").hexdigest()[:32] == forward_webhook_id(forward())
        assert forward_webhook_id(forward(message_id="m-4")) != req.webhook_id


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(404, "gone"), (409, "gone"), (410, "gone"), (400, "rejected"), (403, "rejected"), (422, "rejected")],
)
async def test_forward_final_answers(status, outcome):
    async with Receiver() as desk:
        desk.script((status, {}, {"detail": "conversation closed"}))
        result = await run(desks(ThirdPartyDeskEndpoint("acme", desk.base_url, desk.secret)).forward_to_desk, forward())

    assert result.outcome == outcome and result.status == status and "conversation closed" in result.detail


@pytest.mark.parametrize("status", [408, 429, 500, 502])
async def test_forward_transient_answers_are_retried_with_the_same_id(status):
    async with Receiver() as desk:
        acts = desks(ThirdPartyDeskEndpoint("acme", desk.base_url, desk.secret))
        desk.script((status, {"Retry-After": "5"}))
        err = await unavailable(acts.forward_to_desk, forward())
        assert err.next_retry_delay == timedelta(seconds=5)
        assert (await run(acts.forward_to_desk, forward())).outcome == "delivered"

    first, second = desk.requests
    assert first.webhook_id == second.webhook_id and first.body == second.body


# ---- the callback route: POST /v1/desks/{desk}/events ---------------------------------------------------------

DESK_SECRET = webhooks.generate_secret()


def signed(event: dict[str, Any] | bytes, secret: str = DESK_SECRET, msg_id: str | None = None,
           at: datetime | None = None) -> tuple[bytes, dict[str, str]]:
    """A body and headers signed by the reference library, as a desk would send them."""
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(timezone.utc)
    signature = standardwebhooks.Webhook(secret).sign(msg_id, at, body.decode())
    return body, {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
                  "webhook-signature": signature, "content-type": "application/json"}


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    port = free_port()
    server = EmbeddedServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    await asyncio.wait({task, asyncio.create_task(server.ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield http
    finally:
        server.should_exit = True
        await task


class DeskApi:
    def __init__(self, http: httpx.AsyncClient, client: Client, settings: Any) -> None:
        self.http, self.client, self.settings = http, client, settings

    async def post(self, desk: str, event: dict[str, Any] | bytes, **sign: Any) -> httpx.Response:
        body, headers = signed(event, **sign)
        return await self.http.post(f"/v1/desks/{desk}/events", content=body, headers=headers)

    async def pending(self, conversation: str, target: HandoffTarget | None = None) -> str:
        """A conversation put into handoff_pending for desk `acme` (the worker sends it the envelope, the fake
        desk answers 202); returns the pending handoff id."""
        handle = await start_conversation(self.client, self.settings, conversation, text="Hello")
        result = await handle.execute_update(
            Updates.SUBMIT_HANDOFF,
            HandoffRequest(reason="wants a person", target=target or HandoffTarget(desk="acme")),
            result_type=CommandResult,
        )
        assert result.state == "handoff_pending"
        snap = await snapshot(handle)
        assert snap.state == "handoff_pending" and snap.pending_handoff is not None
        assert snap.pending_handoff.handoff_id == result.handoff_id
        return snap.pending_handoff.handoff_id


@pytest.fixture
async def desk_api(dev_env, task_queue, registry, tmp_path, monkeypatch):
    settings = settings_for(task_queue)
    async with Receiver(DESK_SECRET, path="/desk") as fake_desk:
        # The worker reaches the fake desk on loopback with the same secret the events are signed with.
        monkeypatch.setenv("BATON_ALLOW_PRIVATE_NETWORKS", "1")
        monkeypatch.setenv("ACME_DESK_SECRET", DESK_SECRET)
        config_file = tmp_path / "desks.yaml"
        config_file.write_text(f'desks:\n  acme: {{url: "{fake_desk.url}", secret_env: ACME_DESK_SECRET}}\n'
                               "routes:\n  - {name: default, to: {queue: general}}\n")
        known = {"acme": ThirdPartyDeskEndpoint("acme", fake_desk.url, DESK_SECRET),
                 "mute": ThirdPartyDeskEndpoint("mute", "https://mute.example", "")}
        app = FastAPI()
        app.state.client = dev_env.client
        app.include_router(third_party_desk_router(known.get, lambda: registry))
        async with baton_worker(dev_env.client, settings, registry, config=load_config(config_file)), serve(app) as http:
            yield DeskApi(http, dev_env.client, settings)


def cid() -> str:
    return f"dsk-{uuid.uuid4().hex[:12]}"


async def test_unsigned_forged_or_stale_events_are_401_before_the_body_is_read(desk_api):
    event = {"type": "accepted", "conversation_id": "c-1", "handoff_id": "h-1"}
    r = await desk_api.http.post("/v1/desks/acme/events", json=event)
    assert r.status_code == 401 and "missing header" in r.json()["detail"]
    assert (await desk_api.post("acme", event, secret=webhooks.generate_secret())).status_code == 401
    stale = await desk_api.post("acme", event, at=datetime.now(timezone.utc) - timedelta(minutes=6))
    assert stale.status_code == 401 and "stale" in stale.json()["detail"]
    # An altered body no longer matches its signature; garbage unsigned is 401, never 422.
    body, headers = signed(event)
    r = await desk_api.http.post("/v1/desks/acme/events", content=body.replace(b"h-1", b"h-2"), headers=headers)
    assert r.status_code == 401
    r = await desk_api.http.post("/v1/desks/acme/events", content=b"{not json")
    assert r.status_code == 401
    # A desk without a secret cannot be spoken for.
    assert (await desk_api.post("mute", event)).status_code == 401
    no_secret(stale.text, DESK_SECRET)


async def test_an_unknown_desk_is_404(desk_api):
    event = {"type": "accepted", "conversation_id": "c-1", "handoff_id": "h-1"}
    r = await desk_api.post("nobody", event)
    assert r.status_code == 404 and r.json() == {"detail": "unknown desk 'nobody'"}
    assert (await desk_api.post("bad name!", event)).status_code == 404


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"type": "accepted", "handoff_id": "h-1"}, "conversation_id"),
        ({"type": "hired", "conversation_id": "c-1", "handoff_id": "h-1"}, "type"),
        ({"type": "accepted", "conversation_id": "../c-1", "handoff_id": "h-1"}, "conversation_id"),
        ({"type": "accepted", "conversation_id": "c-1", "handoff_id": ""}, "handoff_id"),
        ({"type": "message", "conversation_id": "c-1", "handoff_id": "h-1", "message_id": "d-1"}, "'text'"),
        ({"type": "message", "conversation_id": "c-1", "handoff_id": "h-1", "message_id": "d-1", "text": ""}, "text"),
        (b"{not json", "body"),
    ],
)
async def test_a_bad_event_is_422_naming_the_field(desk_api, event, field):
    r = await desk_api.post("acme", event)
    assert r.status_code == 422 and field in r.json()["detail"], r.text


async def test_an_event_for_a_conversation_that_does_not_exist_is_404(desk_api):
    missing = cid()
    r = await desk_api.post("acme", {"type": "accepted", "conversation_id": missing, "handoff_id": "h-1"})
    assert r.status_code == 404 and missing in r.json()["detail"], r.text


async def test_accepted_message_completed_on_a_pending_conversation(desk_api):
    conversation = cid()
    handoff_id = await desk_api.pending(conversation)
    handle = desk_api.client.get_workflow_handle(f"conversation-{conversation}")

    stale = await desk_api.post("acme", {"type": "accepted", "conversation_id": conversation, "handoff_id": "h-old"})
    assert stale.status_code == 409 and "stale" in stale.json()["detail"], stale.text
    assert (await snapshot(handle)).state == "handoff_pending"

    accept_id = f"msg_{uuid.uuid4().hex}"
    accepted = await desk_api.post(
        "acme", {"type": "accepted", "conversation_id": conversation, "handoff_id": handoff_id, "agent": "bob"},
        msg_id=accept_id,
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"ok": True, "state": "live_agent", "owner": "desk:acme"}
    snap: Snapshot = await snapshot(handle)
    assert snap.state == "live_agent" and snap.owner == "desk:acme" and snap.pending_handoff is None

    # Another desk cannot write into acme's conversation.
    intruder = await desk_api.post("mute", {"type": "completed", "conversation_id": conversation, "handoff_id": "x"})
    assert intruder.status_code == 401

    message = {"type": "message", "conversation_id": conversation, "handoff_id": handoff_id, "message_id": "d-1",
               "text": f"I refunded card {CARD}"}
    said_id = f"msg_{uuid.uuid4().hex}"
    said = await desk_api.post("acme", message, msg_id=said_id)
    assert said.status_code == 200 and said.json() == {"ok": True, "state": "live_agent", "owner": "desk:acme"}
    # The same webhook-id again: the stored answer, nothing recorded twice.
    assert (await desk_api.post("acme", message, msg_id=said_id)).json() == said.json()
    entries = [e for e in (await transcript(handle)).entries if e.role == Role.LIVE_AGENT]
    assert [(e.message_id, e.author, e.text) for e in entries] == [
        ("desk-acme-d-1", "desk:acme", "I refunded card [redacted:card]")
    ]

    done = await desk_api.post("acme", {"type": "completed", "conversation_id": conversation,
                                        "handoff_id": handoff_id, "reason": "refund issued"})
    assert done.status_code == 200 and done.json() == {"ok": True, "state": "ai", "owner": "ai"}, done.text
    assert (await snapshot(handle)).state == "ai"

    # A desk that no longer owns the conversation is refused with the workflow's reason.
    late = await desk_api.post("acme", {**message, "message_id": "d-2"})
    assert late.status_code == 409 and "cannot write in state 'ai'" in late.json()["detail"], late.text

    # The accept, delivered again with its webhook-id: answered as the first time, not applied again
    # (applied again it would be a 409: nothing is pending now).
    replay = await desk_api.post(
        "acme", {"type": "accepted", "conversation_id": conversation, "handoff_id": handoff_id}, msg_id=accept_id
    )
    assert replay.status_code == 200 and replay.json() == accepted.json()
    assert (await snapshot(handle)).state == "ai"


async def test_failed_falls_back(desk_api):
    conversation = cid()
    handoff_id = await desk_api.pending(conversation)
    handle = desk_api.client.get_workflow_handle(f"conversation-{conversation}")

    stale = await desk_api.post("acme", {"type": "failed", "conversation_id": conversation, "handoff_id": "h-old"})
    assert stale.status_code == 409 and "stale" in stale.json()["detail"]

    failed = await desk_api.post("acme", {"type": "failed", "conversation_id": conversation,
                                          "handoff_id": handoff_id, "reason": "no agents online"})
    assert failed.status_code == 200, failed.text
    # No fallback list: back to the AI, and the desk's reason is on record.
    assert failed.json() == {"ok": True, "state": "ai", "owner": "ai"}
    snap = await snapshot(handle)
    assert snap.state == "ai" and snap.pending_handoff is None
    audit = await handle.query(Queries.AUDIT, result_type=AuditPage)
    [failure] = [e for e in audit.entries if e.kind == "handoff_failed"]
    assert failure.detail["handoff_id"] == handoff_id and "no agents online" in failure.detail["reason"]
