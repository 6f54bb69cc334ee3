"""What every route needs of Temporal: conversation handles, updates with refusals as 409s, start inputs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from fastapi import HTTPException
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.api.workflowservice.v1 import ResetStickyTaskQueueRequest
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from models.conversation import CommandResult, Context, ConversationInput, PeerLink
from models.names import WORKFLOW_TYPE, Errors, SearchAttributes, workflow_id
from runtime.settings import Settings
from runtime.temporal import WORKFLOW_TASK_TIMEOUT

T = TypeVar("T")


def handle(client: Client, conversation_id: str) -> WorkflowHandle:
    return client.get_workflow_handle(workflow_id(conversation_id))


async def not_found_or_closed(client: Client, conversation_id: str) -> HTTPException:
    try:
        desc = await handle(client, conversation_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return HTTPException(404, f"conversation '{conversation_id}' does not exist")
        raise
    if desc.raw_description.workflow_execution_info.status != WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING:
        return HTTPException(409, f"conversation '{conversation_id}' is closed")
    return HTTPException(404, f"conversation '{conversation_id}' does not exist")


def conflict(err: WorkflowUpdateFailedError) -> HTTPException | None:
    """A command the workflow's validator refused: 409 with its reason (413 when it would pass a size bound)."""
    if isinstance(err.cause, ApplicationError) and err.cause.type == Errors.REJECTED:
        return HTTPException(409, err.cause.message)
    if isinstance(err.cause, ApplicationError) and err.cause.type == Errors.TOO_LARGE:
        return HTTPException(413, err.cause.message)
    return None


# While no worker polls (a worker restarting, a rolling deploy), the server refuses updates at once with
# FAILED_PRECONDITION "no poller seen for task queue recently". The API waits for a worker this long, then answers
# 503 with Retry-After instead of a 500: the command was not applied, and may be sent again.
WORKER_WAIT_SECONDS = 10.0


def _no_worker(err: RPCError) -> bool:
    return err.status == RPCStatusCode.FAILED_PRECONDITION and "no poller" in err.message


def _timed_out(err: RPCError) -> bool:
    """The call's own `rpc_timeout` ran out. The SDK's client reports that as CANCELLED "Timeout expired", the
    server's deadline as DEADLINE_EXCEEDED."""
    return err.status == RPCStatusCode.DEADLINE_EXCEEDED or (
        err.status == RPCStatusCode.CANCELLED and "Timeout expired" in err.message
    )


def _not_ready(err: RPCError) -> bool:
    """The server will not query the workflow until its current workflow task completes ("Workflow Task in failed
    state", WorkflowNotReadyFailure): a task a frozen, dying or replaying worker took and did not finish in time."""
    return err.status == RPCStatusCode.FAILED_PRECONDITION and "Workflow Task in failed state" in err.message


async def waiting_for_a_worker(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, retried while the server says no worker polls; 503 when none comes within WORKER_WAIT_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WORKER_WAIT_SECONDS
    delay = 0.05
    while True:
        try:
            return await call()
        except RPCError as err:
            if not _no_worker(err):
                raise
            if loop.time() + delay > deadline:
                raise HTTPException(
                    503, f"no worker is polling the task queue (waited {WORKER_WAIT_SECONDS:.0f} s); nothing was "
                    "applied, send it again", headers={"Retry-After": "5"},
                ) from None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


# A query is answered by the worker the workflow is sticky to. When that worker has just died or stopped, the
# server keeps sending queries there for up to ~10 s (seen here: a first query after a restart took 10.1 s). A
# query not answered within QUERY_TIMEOUT clears the workflow's stickiness (ResetStickyTaskQueue) and is asked again,
# now of any live worker.
QUERY_TIMEOUT = timedelta(seconds=3)


async def query(
    client: Client, conversation_id: str, name: str, *args: Any, result_type: type[T], run_id: str | None = None
) -> T:
    """A query that a dead sticky worker cannot stall: see QUERY_TIMEOUT. Errors as `WorkflowHandle.query`'s."""
    h = client.get_workflow_handle(workflow_id(conversation_id), run_id=run_id)

    async def ask() -> T:
        try:
            return await h.query(name, *args, result_type=result_type, rpc_timeout=QUERY_TIMEOUT)
        except RPCError as err:
            if not (_timed_out(err) or _no_worker(err) or _not_ready(err)):
                raise
            # Asked again by waiting_for_a_worker, whose one deadline ends in the 503 below.
            with contextlib.suppress(RPCError):
                await client.workflow_service.reset_sticky_task_queue(
                    ResetStickyTaskQueueRequest(
                        namespace=client.namespace,
                        execution=WorkflowExecution(workflow_id=workflow_id(conversation_id), run_id=run_id or ""),
                    )
                )
            raise RPCError("no poller: the sticky worker did not answer", RPCStatusCode.FAILED_PRECONDITION, b"") from None

    try:
        return await waiting_for_a_worker(ask)
    except HTTPException as err:
        if err.status_code != 503:
            raise
        # A worker that is up but too busy to answer in time (replaying after a restart), or none at all: a read
        # that failed changed nothing, so say so and when to ask again, instead of a 500.
        raise HTTPException(
            503, f"no worker answered the conversation's query within {WORKER_WAIT_SECONDS:.0f} s (a worker "
            "restarting or busy catching up); nothing was changed, ask again", headers={"Retry-After": "2"},
        ) from None


async def update(client: Client, conversation_id: str, name: str, arg: Any) -> CommandResult:
    """Run an update; a refusal is a 409 with the workflow's reason, an unknown conversation a 404."""
    try:
        return await waiting_for_a_worker(
            lambda: handle(client, conversation_id).execute_update(name, arg, result_type=CommandResult)
        )
    except WorkflowUpdateFailedError as err:
        raise conflict(err) or err from None
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise await not_found_or_closed(client, conversation_id) from None
        raise




def start_input(settings: Settings, conversation_id: str, channel: str, **more: Any) -> ConversationInput:
    return ConversationInput(
        conversation_id=conversation_id,
        channel=channel,
        inactivity_timeout_seconds=settings.inactivity_timeout_seconds,
        handoff_sla_seconds=settings.handoff_sla_seconds,
        **more,
    )


def initial_attributes(channel: str) -> TypedSearchAttributes:
    """Visible to the UI and the desk from the first moment, before the first workflow task runs."""
    sa = SearchAttributes
    return TypedSearchAttributes(
        [SearchAttributePair(sa.STATE, "ai"), SearchAttributePair(sa.CHANNEL, channel),
         SearchAttributePair(sa.OWNER, "ai"), SearchAttributePair(sa.HANDOFFS, 0)]
    )


async def start_handed(
    client: Client, settings: Settings, conversation_id: str, channel: str, peer: PeerLink, context: Context,
    summary: str,
) -> None:
    """Start a conversation another platform handed to our local agent (over the platform protocol or A2A): once
    per id, so the same handoff delivered again opens nothing new, also after its conversation ended."""
    try:
        await client.start_workflow(
            WORKFLOW_TYPE,
            start_input(settings, conversation_id, channel, peer=peer, context=context),
            id=workflow_id(conversation_id),
            task_queue=settings.task_queue,
            task_timeout=WORKFLOW_TASK_TIMEOUT,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=initial_attributes(channel),
            static_summary=summary,
        )
    except WorkflowAlreadyStartedError:
        pass  # delivered again after its conversation ended: already done
