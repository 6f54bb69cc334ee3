"""A handoff's targets must exist: a declared queue, a connected external agent, a live agent, a configured desk.

Checked at the API, before the workflow sees the request, so the caller gets a 422 naming what is unknown instead
of a conversation that falls back for a reason they cannot see."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fastapi import HTTPException

from activities.registry import AgentRegistry
from models.config import BatonConfig
from models.conversation import HandoffTarget
from models.targets import Registry


def unknown_target(target: HandoffTarget, config: BatonConfig, registry: Callable[[], AgentRegistry]) -> str | None:
    """Why `target` cannot be reached, or None: its name is looked up where its kind's row says names live."""
    kind = target.kind
    name = kind.name(target)
    if name is None:
        return None
    match kind.registry:
        case Registry.CONFIG_QUEUES if not config.queue_known(name):
            return f"unknown queue '{name}' (declared in the config: {', '.join(sorted(config.queues)) or '-'})"
        case Registry.CONFIG_DESKS if name not in config.desks:
            return f"unknown desk '{name}' (declared in the config: {', '.join(sorted(config.desks)) or '-'})"
        case Registry.EXTERNAL_AGENTS if registry().external(name) is None:
            return f"unknown external agent '{name}': connect it with Verify & Save first"
        case Registry.LIVE_AGENTS if all(a.agent_id != name for a in registry().list_live_agents()):
            return f"unknown live agent '{name}'"
    return None


def check_targets(
    targets: Iterable[tuple[str, HandoffTarget]], config: BatonConfig, registry: Callable[[], AgentRegistry]
) -> None:
    """422 naming the first unknown target (`where` is the field, e.g. `target` or `fallback.1`)."""
    for where, target in targets:
        if (why := unknown_target(target, config, registry)) is not None:
            raise HTTPException(422, f"{where}: {why}")
