"""Channel delivery over real loopback HTTP: signing, idempotency keys, retry classification, 410, and retries
driven by a real Temporal dev server."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import httpx
    import pytest
    import pytest_asyncio
    import standardwebhooks
    from temporalio.client import Client
    from temporalio.exceptions import ApplicationError
    from temporalio.testing import ActivityEnvironment
    from temporalio.worker import Worker

    from activities.channel import ChannelDeliverer, channel_webhook_id
    from activities.webhooks import retry_after
    from models.conversation import ChannelMessage, DeliveryResult, Role
    from models.names import Errors
    from workflows.options import CHANNEL_RETRY, CHANNEL_SCHEDULE_TO_CLOSE, CHANNEL_START_TO_CLOSE
    from devkit.temporal import free_port
    from tests.receiver import Receiver


@workflow.defn
class DeliverInOrder:
    """Test-only: delivers messages one after another the way the conversation workflow does."""

    @workflow.run
    async def run(self, messages: list[ChannelMessage]) -> list[DeliveryResult]:
        results = []
        for message in messages:
            results.append(
                await workflow.execute_activity_method(
                    ChannelDeliverer.deliver_to_channel,
                    message,
                    start_to_close_timeout=CHANNEL_START_TO_CLOSE,
                    schedule_to_close_timeout=CHANNEL_SCHEDULE_TO_CLOSE,
                    retry_policy=CHANNEL_RETRY,
                )
            )
        return results


def message(seq: int = 1, text: str = "Hello from the AI", conversation_id: str = "c-1") -> ChannelMessage:
    return ChannelMessage(
        conversation_id=conversation_id,
        seq=seq,
        message_id=f"m-{seq}",
        role=Role.AI,
        author="ai",
        text=text,
        at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    )


@pytest_asyncio.fixture
async def client():
    async with httpx.AsyncClient() as c:
        yield c


@pytest_asyncio.fixture
async def receiver():
    async with Receiver() as r:
        yield r


@pytest.fixture
def deliverer(receiver: Receiver, client: httpx.AsyncClient) -> ChannelDeliverer:
    return ChannelDeliverer(receiver.url, receiver.secret, client)


async def deliver(deliverer: ChannelDeliverer, msg: ChannelMessage) -> DeliveryResult:
    return await ActivityEnvironment().run(deliverer.deliver_to_channel, msg)


async def unavailable(deliverer: ChannelDeliverer, msg: ChannelMessage) -> ApplicationError:
    with pytest.raises(ApplicationError) as e:
        await deliver(deliverer, msg)
    assert e.value.type == Errors.CHANNEL_UNAVAILABLE
    assert not e.value.non_retryable
    return e.value


# ---- one attempt (ActivityEnvironment, real HTTP) ------------------------------------------------------


async def test_delivery_is_signed_so_the_reference_library_verifies_it(receiver, deliverer):
    msg = message()
    assert await deliver(deliverer, msg) == DeliveryResult(outcome="delivered", status=202)
    [req] = receiver.requests
    assert req.verified
    body = standardwebhooks.Webhook(receiver.secret).verify(req.body, req.headers)
    assert ChannelMessage.model_validate(body) == msg
    assert req.headers["content-type"] == "application/json"
    assert req.body == msg.model_dump_json(exclude={"bell"}).encode()
    assert set(req.json) == {"conversation_id", "seq", "message_id", "role", "author", "text", "at"}


async def test_webhook_id_is_the_same_on_every_attempt(receiver, deliverer):
    receiver.script(503, 503)
    msg = message()
    await unavailable(deliverer, msg)
    await unavailable(deliverer, msg)
    await deliver(deliverer, msg)
    assert [r.webhook_id for r in receiver.requests] == [channel_webhook_id(msg)] * 3
    assert all(r.verified for r in receiver.requests)


def test_webhook_id_is_deterministic_and_distinct_per_message():
    a = channel_webhook_id(message(seq=1))
    assert a == channel_webhook_id(message(seq=1))
    assert a.startswith("msg_") and len(a) == len("msg_") + 32
    assert a != channel_webhook_id(message(seq=2))
    assert a != channel_webhook_id(message(seq=1, conversation_id="c-2"))


async def test_receiver_sees_a_redelivered_message_once(receiver, deliverer):
    # The activity can run again after the backend accepted (e.g. the worker died before reporting success).
    msg = message()
    await deliver(deliverer, msg)
    await deliver(deliverer, msg)
    assert len(receiver.requests) == 2
    assert receiver.delivered() == [msg.model_dump(mode="json", exclude={"bell"})]


async def test_429_with_retry_after_seconds_sets_next_retry_delay(receiver, deliverer):
    receiver.script((429, {"Retry-After": "2"}))
    error = await unavailable(deliverer, message())
    assert error.next_retry_delay == timedelta(seconds=2)


async def test_503_with_retry_after_http_date_sets_next_retry_delay(receiver, deliverer):
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    receiver.script((503, {"Retry-After": format_datetime(later, usegmt=True)}))
    error = await unavailable(deliverer, message())
    assert error.next_retry_delay is not None
    assert timedelta(seconds=27) <= error.next_retry_delay <= timedelta(seconds=30)


async def test_retry_after_is_capped_at_one_hour(receiver, deliverer):
    receiver.script((503, {"Retry-After": "86400"}))
    error = await unavailable(deliverer, message())
    assert error.next_retry_delay == timedelta(hours=1)


def test_unusable_retry_after_leaves_pacing_to_the_retry_policy():
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert retry_after(None) is None
    assert retry_after("soon") is None
    assert retry_after("0") is None
    assert retry_after("-5") is None
    assert retry_after("\u00b2") is None
    assert retry_after("Tue, 31 Dec 2024 23:59:00 GMT", now=now) is None


def test_retry_after_date_is_measured_from_now_and_huge_values_do_not_overflow():
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert retry_after("Wed, 01 Jan 2025 00:00:10 GMT", now=now) == timedelta(seconds=10)
    assert retry_after("9" * 40) == timedelta(hours=1)


async def test_5xx_without_retry_after_is_retried_with_the_policy_backoff(receiver, deliverer):
    receiver.script(500)
    error = await unavailable(deliverer, message())
    assert error.next_retry_delay is None
    assert "500" in error.message


@pytest.mark.parametrize("status", [408, 429, 502, 504])
async def test_timeouts_and_throttling_answers_are_retried(receiver, deliverer, status):
    receiver.script(status)
    error = await unavailable(deliverer, message())
    assert str(status) in error.message


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
async def test_other_4xx_is_rejected_without_retry(receiver, deliverer, status):
    receiver.script(status)
    result = await deliver(deliverer, message())
    assert result.outcome == "rejected" and result.status == status
    assert len(receiver.requests) == 1


async def test_redirect_is_not_followed(receiver, deliverer):
    receiver.script((307, {"Location": receiver.base_url + "/elsewhere"}))
    result = await deliver(deliverer, message())
    assert result.outcome == "rejected" and result.status == 307
    assert [r.path for r in receiver.requests] == ["/hook"]


async def test_410_is_that_conversations_answer_and_the_deliverer_remembers_nothing(receiver, deliverer):
    """The 410 rule: a 410 speaks for the conversation it answered. The activity keeps no memory of it (the
    conversation's workflow does), so another conversation on the same worker is delivered as usual."""
    receiver.script(410)
    assert await deliver(deliverer, message(seq=1, conversation_id="c-1")) == DeliveryResult(
        outcome="gone", status=410, detail="the channel answered 410 Gone for this conversation"
    )
    assert (await deliver(deliverer, message(seq=1, conversation_id="c-2"))).outcome == "delivered"
    assert [r.json["conversation_id"] for r in receiver.requests] == ["c-1", "c-2"]


async def test_unreachable_channel_is_retried(client):
    deliverer = ChannelDeliverer(f"http://127.0.0.1:{free_port()}/hook", "whsec_c2VjcmV0", client)
    error = await unavailable(deliverer, message())
    assert "unreachable" in error.message


async def test_errors_never_reveal_the_secret_or_the_body(receiver, deliverer):
    receiver.script((503, {"Retry-After": "1"}))
    msg = message(text="my card is 4111 1111 1111 1111")
    error = await unavailable(deliverer, msg)
    shown = f"{error} {error.message} {error.details}"
    assert receiver.secret.removeprefix("whsec_") not in shown
    assert "4111" not in shown


async def test_a_delivery_signed_with_another_secret_is_refused_by_the_receiver(receiver, client):
    deliverer = ChannelDeliverer(receiver.url, "whsec_" + "c2VjcmV0" * 4, client)
    result = await deliver(deliverer, message())
    assert result.outcome == "rejected" and result.status == 401
    [req] = receiver.requests
    assert not req.verified and req.verify_error == "no matching signature"
    assert receiver.delivered() == []


async def test_receiver_wait_reports_what_it_saw_on_timeout(receiver, deliverer):
    receiver.script(503)
    await unavailable(deliverer, message())
    with pytest.raises(AssertionError, match=r"(?s)not met within 0.2s.*-> 503, webhook-id=msg_"):
        await receiver.wait_count(1, timeout=0.2)


async def test_without_a_channel_url_delivery_is_disabled(client):
    result = await deliver(ChannelDeliverer(None, None, client), message())
    assert result.outcome == "disabled"


def test_misconfigured_channel_is_refused_at_startup(client):
    with pytest.raises(ValueError, match="secret"):
        ChannelDeliverer("http://127.0.0.1:1/hook", None, client)
    with pytest.raises(ValueError, match="malformed webhook secret"):
        ChannelDeliverer("http://127.0.0.1:1/hook", "not-a-whsec", client)
    with pytest.raises(ValueError, match="http"):
        ChannelDeliverer("ftp://127.0.0.1/hook", "whsec_c2VjcmV0", client)


# ---- retries scheduled by a real Temporal dev server ---------------------------------------------------


def worker(temporal: Client, task_queue: str, deliverer: ChannelDeliverer) -> Worker:
    return Worker(
        temporal, task_queue=task_queue, workflows=[DeliverInOrder], activities=[deliverer.deliver_to_channel]
    )


async def start_deliveries(temporal: Client, task_queue: str, *messages: ChannelMessage):
    return await temporal.start_workflow(
        DeliverInOrder.run,
        list(messages),
        id=f"deliver-{uuid.uuid4().hex}",
        task_queue=task_queue,
        execution_timeout=timedelta(seconds=60),
    )


async def run_deliveries(
    temporal: Client, task_queue: str, deliverer: ChannelDeliverer, *messages: ChannelMessage
) -> list[DeliveryResult]:
    async with worker(temporal, task_queue, deliverer):
        handle = await start_deliveries(temporal, task_queue, *messages)
        return await handle.result()


async def test_two_503s_then_202_delivers_once_under_one_webhook_id(dev_env, task_queue, receiver, deliverer):
    receiver.script(503, 503)
    msg = message()
    async with worker(dev_env.client, task_queue, deliverer):
        handle = await start_deliveries(dev_env.client, task_queue, msg)
        await receiver.wait_count(1)
        results = await handle.result()
    assert results == [DeliveryResult(outcome="delivered", status=202)]
    assert [r.status for r in receiver.requests] == [503, 503, 202]
    assert {r.webhook_id for r in receiver.requests} == {channel_webhook_id(msg)}
    assert all(r.verified for r in receiver.requests)
    assert receiver.delivered() == [msg.model_dump(mode="json", exclude={"bell"})]


async def test_retry_after_spaces_the_next_attempt(dev_env, task_queue, receiver, deliverer):
    # 2s is longer than CHANNEL_RETRY's 1s first interval, so only an honoured Retry-After explains the gap.
    receiver.script((429, {"Retry-After": "2"}))
    results = await run_deliveries(dev_env.client, task_queue, deliverer, message())
    assert results[0].outcome == "delivered"
    first, second = receiver.requests
    assert second.at - first.at >= 1.9


async def test_400_is_rejected_after_exactly_one_attempt(dev_env, task_queue, receiver, deliverer):
    receiver.script(400)
    results = await run_deliveries(dev_env.client, task_queue, deliverer, message())
    assert results == [DeliveryResult(outcome="rejected", status=400, detail="channel answered 400: client error")]
    assert len(receiver.requests) == 1


async def test_410_is_gone_after_exactly_one_attempt(dev_env, task_queue, receiver, deliverer):
    receiver.script(410)
    results = await run_deliveries(dev_env.client, task_queue, deliverer, message(seq=1))
    assert [r.outcome for r in results] == ["gone"]
    assert [r.json["seq"] for r in receiver.requests] == [1]


