"""What every route needs of Temporal: conversation handles, updates with refusals as 409s, start inputs."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from models.conversation import CommandResult, ConversationInput
from models.names import SearchAttributes, workflow_id
from workers.settings import Settings


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
    """A command the workflow's validator refused: 409 with its reason."""
    if isinstance(err.cause, ApplicationError) and err.cause.type == "Rejected":
        return HTTPException(409, err.cause.message)
    return None


async def update(client: Client, conversation_id: str, name: str, arg: Any) -> CommandResult:
    """Run an update; a refusal is a 409 with the workflow's reason, an unknown conversation a 404."""
    try:
        return await handle(client, conversation_id).execute_update(name, arg, result_type=CommandResult)
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
