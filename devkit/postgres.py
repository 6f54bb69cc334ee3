"""A throwaway PostgreSQL for the tests and benchmarks (Debian's `postgresql` package; `make test` installs it when
missing): `initdb` in a temporary directory, a free loopback port, its socket in that directory, trust auth on
loopback only, stopped and deleted afterwards, and stopped too when the process that started it dies (even killed).
As root, the server runs as the package's `postgres` user (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from devkit.temporal import free_port


def binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: `apt-get install postgresql` (make test does it)")
    return Path(found[-1]).parent


class Postgres:
    def __init__(self) -> None:
        self.bin = binaries()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="baton-pg-"))
        self.data = self.dir / "data"
        self.as_root = os.geteuid() == 0
        self.user = "postgres" if self.as_root else os.environ.get("USER", "baton")
        self.process: subprocess.Popen | None = None
        self._ids: tuple[int, int] | None = None
        self._prctl = None

    def _run(self, *cmd: str) -> None:
        full = ["runuser", "-u", "postgres", "--", *cmd] if self.as_root else list(cmd)
        subprocess.run(full, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def start(self) -> Postgres:
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8",
                  "--no-sync")
        options = ["-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}", "-c",
                   f"unix_socket_directories={self.dir}", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c",
                   "full_page_writes=off", "-c", "max_connections=200"]
        # The server itself as our child (not daemonised by pg_ctl), told to stop when we die, even by SIGKILL: a test
        # run that is killed leaves no server behind.
        if self.as_root:
            import pwd

            user = pwd.getpwnam("postgres")
            self._ids = (user.pw_uid, user.pw_gid)
        if sys.platform.startswith("linux"):
            import ctypes

            self._prctl = ctypes.CDLL(None, use_errno=True).prctl
        with open(self.dir / "log", "ab") as log:
            self.process = subprocess.Popen([str(self.bin / "postgres"), "-D", str(self.data), *options],
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=self._child)
        try:
            wait_until_accepting(self.url(), within=60)
        except BaseException:
            self.stop()
            raise
        return self

    def _child(self) -> None:
        """In the server's process before exec (no imports here: only what was made ready before the fork): the
        `postgres` user when we are root (it refuses to run as root), then SIGINT (a fast shutdown) when the parent
        dies (Linux; set after the user changes, which clears it)."""
        if self._ids is not None:
            os.setgid(self._ids[1])
            os.setuid(self._ids[0])
        if self._prctl is not None:
            self._prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database's URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # immediate shutdown: a throwaway's data need not be saved
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until_accepting(url: str, within: float = 30) -> None:
    import psycopg

    deadline = time.monotonic() + within
    while True:
        try:
            psycopg.connect(url).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
