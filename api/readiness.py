"""What `/readyz` waits for besides Temporal and the store: named steps a process must finish before it can do its
job (in `baton dev`: the in-process worker polling, the demo agent connected through Verify & Save)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fastapi.responses import JSONResponse
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest


class Readiness:
    """Steps still to finish, each with what it is waiting for (or why it failed). Ready when none is left."""

    def __init__(self, *steps: str) -> None:
        self._pending: dict[str, str] = {step: "starting" for step in steps}

    def waiting(self, step: str, why: str) -> None:
        self._pending[step] = why

    def done(self, step: str) -> None:
        self._pending.pop(step, None)

    @property
    def pending(self) -> dict[str, str]:
        return dict(self._pending)

    @property
    def ready(self) -> bool:
        return not self._pending


async def temporal_reachable(client: Any) -> str:
    """"reachable", or why not (the liveness and readiness probes' Temporal check)."""
    try:
        await client.workflow_service.get_system_info(GetSystemInfoRequest(), timeout=timedelta(seconds=3))
        return "reachable"
    except Exception as err:  # any failure means "not reachable"
        return f"unreachable: {type(err).__name__}"


async def healthz(client: Any) -> JSONResponse:
    """`/healthz`, the liveness probe, on the API and the worker alike: 200 while Temporal answers."""
    reached = await temporal_reachable(client)
    ok = reached == "reachable"
    return JSONResponse(status_code=200 if ok else 503, content={"ok": ok, "temporal": reached})


async def readyz(client: Any, store_check: Callable[[], Any], readiness: Readiness) -> JSONResponse:
    """`/readyz`, on the API and the worker alike: 200 only with Temporal reachable, the store open (`store_check`
    reads it, in a thread), and every start-up step of the process finished; 503 names what is missing."""
    checks: dict[str, str] = {"temporal": await temporal_reachable(client)}
    try:
        await asyncio.to_thread(store_check)
        checks["store"] = "open"
    except Exception as err:  # a store that cannot be read is not ready, whatever the cause
        detail = getattr(err, "detail", None)
        checks["store"] = f"unavailable: {detail or type(err).__name__}"
    checks.update(readiness.pending)
    ok = checks["temporal"] == "reachable" and checks["store"] == "open" and readiness.ready
    return JSONResponse(status_code=200 if ok else 503, content={"ok": ok, **checks})
