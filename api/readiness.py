"""What `/readyz` waits for besides Temporal and the store: named steps a process must finish before it can do its
job (in `baton dev`: the in-process worker polling, the demo agent connected through Verify & Save)."""

from __future__ import annotations


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
