"""A handoff's targets must exist: a declared queue, a connected external agent, a live agent, a configured desk.

Checked at the API, before the workflow sees the request, so the caller gets a 422 naming what is unknown instead
of a conversation that falls back for a reason they cannot see."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fastapi import HTTPException

from activities.registry import AgentRegistry
from models.config import BatonConfig
from models.conversation import HandoffTarget


def unknown_target(target: HandoffTarget, config: BatonConfig, registry: Callable[[], AgentRegistry]) -> str | None:
    """Why `target` cannot be reached, or None."""
    if target.queue is not None and not config.queue_known(target.queue):
        declared = ", ".join(sorted(config.queues)) or "-"
        return f"unknown queue '{target.queue}' (declared in the config: {declared})"
    if target.desk is not None and target.desk not in config.desks:
        return f"unknown desk '{target.desk}' (declared in the config: {', '.join(sorted(config.desks)) or '-'})"
    if target.external_agent is not None and registry().external(target.external_agent) is None:
        return f"unknown external agent '{target.external_agent}': connect it with Verify & Save first"
    if target.live_agent is not None and all(a.agent_id != target.live_agent for a in registry().list_live_agents()):
        return f"unknown live agent '{target.live_agent}'"
    return None


def check_targets(
    targets: Iterable[tuple[str, HandoffTarget]], config: BatonConfig, registry: Callable[[], AgentRegistry]
) -> None:
    """422 naming the first unknown target (`where` is the field, e.g. `target` or `fallback.1`)."""
    for where, target in targets:
        if (why := unknown_target(target, config, registry)) is not None:
            raise HTTPException(422, f"{where}: {why}")
