"""The bare-Temporal baseline: a chat loop (signal -> respond activity -> deliver activity) with no Baton code."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    import httpx

WORKFLOW = "BenchBaselineChat"
SIGNAL = "user_message"
RESPOND = "bench_baseline_respond"
DELIVER = "bench_baseline_deliver"


@workflow.defn(name=WORKFLOW)
class BaselineChat:
    """Receives a message, asks `respond` for the answer, POSTs it with `deliver`; forever, in order."""

    def __init__(self) -> None:
        self.inbox: list[dict[str, Any]] = []

    @workflow.signal(name=SIGNAL)
    def user_message(self, message: dict[str, Any]) -> None:
        self.inbox.append(message)

    @workflow.run
    async def run(self, params: dict[str, Any]) -> None:
        conversation_id = params["conversation_id"]
        local_respond = bool(params.get("local_respond"))
        seq = 0
        while True:
            await workflow.wait_condition(lambda: bool(self.inbox))
            message = self.inbox.pop(0)
            seq += 1  # the user's message
            if local_respond:
                text = await workflow.execute_local_activity(
                    RESPOND, message["text"], result_type=str, start_to_close_timeout=timedelta(seconds=30)
                )
            else:
                text = await workflow.execute_activity(
                    RESPOND, message["text"], result_type=str, start_to_close_timeout=timedelta(seconds=30)
                )
            seq += 1  # the reply
            await workflow.execute_activity(
                DELIVER,
                {"conversation_id": conversation_id, "seq": seq, "role": "ai", "author": "ai", "text": text},
                start_to_close_timeout=timedelta(seconds=15),
            )


class BaselineActivities:
    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self.url = url
        self.http = http

    @activity.defn(name=RESPOND)
    async def respond(self, text: str) -> str:
        return f"You said: \u201c{text[:200]}\u201d. I'm a demo assistant."

    @activity.defn(name=DELIVER)
    async def deliver(self, message: dict[str, Any]) -> None:
        response = await self.http.post(self.url, json=message)
        response.raise_for_status()


# ---- the desk's floor: a bare workflow that puts itself in the waiting list (added for bench/stream) ----------

HANDOFF_WORKFLOW = "BenchBaselineHandoff"
HANDOFF_SIGNAL = "ask_for_person"

# The desk's search attributes, by name (no Baton code here).
_STATE = SearchAttributeKey.for_keyword("BatonState")
_QUEUE = SearchAttributeKey.for_keyword("BatonQueue")
_HANDOFFS = SearchAttributeKey.for_int("BatonHandoffs")
_WAITING_SINCE = SearchAttributeKey.for_datetime("BatonWaitingSince")


@workflow.defn(name=HANDOFF_WORKFLOW)
class BaselineHandoff:
    """Waits for a user asking for a person (a signal carrying the queue), then upserts the search attributes that
    put a Baton conversation in the desk's visibility query (state handoff_pending, the queue, the handoff count,
    the waiting time) and waits to be terminated. Started with the attributes already set, it only waits."""

    def __init__(self) -> None:
        self.queue: str | None = None

    @workflow.signal(name=HANDOFF_SIGNAL)
    def ask_for_person(self, queue: str) -> None:
        self.queue = queue

    @workflow.run
    async def run(self, params: dict[str, Any]) -> None:
        if not params.get("listed_at_start"):
            await workflow.wait_condition(lambda: self.queue is not None)
            assert self.queue is not None
            workflow.upsert_search_attributes([
                _STATE.value_set("handoff_pending"), _QUEUE.value_set(self.queue), _HANDOFFS.value_set(1),
                _WAITING_SINCE.value_set(workflow.now()),
            ])
        await workflow.wait_condition(lambda: False)
