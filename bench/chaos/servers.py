"""The database of a chaos run, and how it fails: a private MariaDB or PostgreSQL server
started from the machine's own binaries (so that restarting it disturbs nobody else's), or a
SQLite file that a second process locks.

`interrupt(rng)` is the fault: it blocks until the database is usable again and says what it
did. A server is stopped cleanly or crashed (SIGKILL for MariaDB, an immediate shutdown for
PostgreSQL, which leaves the same WAL recovery to do without orphaned backends).
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

READY_TIMEOUT_SECONDS = 60
DATABASE = "chaos"


class Database(Protocol):
    kind: str
    file: str | None  # the database file, where there is one (SQLite)

    def url(self, host: str) -> str:
        """The URL a worker at `host`'s side of the network uses (127.0.0.1: this process)."""
        ...

    def interrupt(self, rng: random.Random) -> str: ...

    def close(self) -> None: ...


class SqliteDatabase:
    """SQLite has no server to restart: its fault is a second process holding the write lock."""

    kind = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.path = directory / "chaos.db"
        self.file = str(self.path)

    def url(self, host: str) -> str:
        return f"sqlite:///{self.path}"

    def interrupt(self, rng: random.Random) -> str:
        seconds = rng.uniform(2.0, 5.0)
        holder = (
            "import sqlite3, sys, time\n"
            "connection = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)\n"
            "connection.execute('BEGIN IMMEDIATE')\n"
            "time.sleep(float(sys.argv[2]))\n"
            "connection.execute('ROLLBACK')\n"
        )
        subprocess.run([sys.executable, "-c", holder, str(self.path), f"{seconds}"], check=True)
        return f"write lock held for {seconds:.1f}s"

    def close(self) -> None:
        pass


class _Server:
    """A server process this run owns: start, wait until it answers SQL, stop or crash it."""

    kind = ""
    user = ""
    file = None

    def __init__(self, directory: Path) -> None:
        self.data = directory / self.kind
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.server_log = directory / f"{self.kind}.log"
        self.data.mkdir(mode=0o700)
        shutil.chown(self.data, self.user, self.user)
        self._initialise()
        try:
            self._start()
            self._create_database()
        except BaseException:
            self.close()  # a server that did not come up right is not left behind
            raise

    def interrupt(self, rng: random.Random) -> str:
        crash = rng.random() < 0.5
        started = time.monotonic()
        self._stop(crash)
        self._start()
        how = "crashed" if crash else "stopped"
        return f"{how} and started again; usable after {time.monotonic() - started:.1f}s"

    def close(self) -> None:
        self._stop(crash=False)

    def _start(self) -> None:
        with self.server_log.open("ab") as log:
            self.process = subprocess.Popen(
                self._command(), user=self.user, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the private {self.kind} did not start: see {self.server_log}")
            time.sleep(0.05)

    def _stop(self, crash: bool) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(self._crash_signal if crash else self._stop_signal)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _answers(self) -> bool:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url("127.0.0.1", database=self._admin_database))
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except Exception:
            return False
        finally:
            engine.dispose()

    def _create_database(self) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(
            self.url("127.0.0.1", database=self._admin_database), isolation_level="AUTOCOMMIT"
        )
        with engine.connect() as connection:
            for statement in self._setup_sql:
                connection.execute(text(statement))
        engine.dispose()

    def url(self, host: str, database: str = DATABASE) -> str:
        raise NotImplementedError

    _admin_database = ""
    _setup_sql: tuple[str, ...] = ()
    _stop_signal = signal.SIGTERM
    _crash_signal = signal.SIGKILL

    def _initialise(self) -> None:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError


class PostgresServer(_Server):
    kind = "postgresql"
    user = "postgres"
    _admin_database = "postgres"
    _setup_sql = (f"CREATE DATABASE {DATABASE}",)
    _stop_signal = signal.SIGINT  # fast shutdown
    _crash_signal = signal.SIGQUIT  # immediate shutdown: recovery from WAL at the next start

    def url(self, host: str, database: str = DATABASE) -> str:
        return f"postgresql+psycopg://postgres@{host}:{self.port}/{database}"

    def _initialise(self) -> None:
        initdb = _binary("/usr/lib/postgresql/*/bin/initdb")
        subprocess.run(
            [initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"],
            user=self.user,
            check=True,
            capture_output=True,
        )
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 10.0.0.0/8 trust\n")  # the workers' network namespaces

    def _command(self) -> list[str]:
        return [
            _binary("/usr/lib/postgresql/*/bin/postgres"),
            "-D", str(self.data),
            "-p", str(self.port),
            "-k", str(self.data),
            "-c", "listen_addresses=*",
            "-c", "max_connections=300",
            "-c", "shared_buffers=32MB",
        ]  # fmt: skip


class MariadbServer(_Server):
    kind = "mariadb"
    user = "mysql"
    _admin_database = "mysql"

    _setup_sql = (
        f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4",
        "CREATE USER chaos@'%'",
        "GRANT ALL ON *.* TO chaos@'%'",
    )

    def url(self, host: str, database: str = DATABASE) -> str:
        user = "root" if database == self._admin_database else "chaos"
        return f"mysql://{user}@{host}:{self.port}/{database}"  # mysqlclient, as batchjob picks

    def _initialise(self) -> None:
        subprocess.run(
            [
                "mariadb-install-db", "--no-defaults", f"--datadir={self.data}",
                f"--user={self.user}", "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip

    def _command(self) -> list[str]:
        return [
            "/usr/sbin/mariadbd", "--no-defaults",
            f"--datadir={self.data}",
            f"--port={self.port}",
            "--bind-address=0.0.0.0",
            f"--socket={self.data / 'mariadb.sock'}",
            f"--pid-file={self.data / 'mariadb.pid'}",
            "--skip-name-resolve",
            "--max-connections=300",
            "--innodb-buffer-pool-size=64M",
        ]  # fmt: skip


def open_database(kind: str, directory: Path) -> Database:
    """Make the run's database: the directory must be readable by the server's user."""
    os.chmod(directory, 0o755)
    if kind == "sqlite":
        return SqliteDatabase(directory)
    if kind == "postgresql":
        return PostgresServer(directory)
    if kind == "mariadb":
        return MariadbServer(directory)
    raise ValueError(f"unknown database {kind!r}: sqlite, mariadb or postgresql")


def _binary(pattern: str) -> str:
    found = sorted(glob.glob(pattern))
    if not found:
        raise RuntimeError(f"no {pattern} on this machine")
    return found[-1]


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("0.0.0.0", 0))
        return int(probe.getsockname()[1])
