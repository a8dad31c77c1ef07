"""Fixtures: every store test runs on SQLite, MariaDB and PostgreSQL — real servers, no mocks.

Each xdist worker gets its own MariaDB/PostgreSQL database, created once and emptied before
each test; SQLite gets a new file per test. Under CI=true a server that does not answer fails
the test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from batchjob.config import Settings
from batchjob.queue import Queue
from batchjob.store import Store
from bench.chaos.servers import DATABASE, PostgresServer

SERVERS = {
    "mariadb": "mysql+mysqldb://root@127.0.0.1:3306/test?charset=utf8mb4",
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
}
DATABASES = ("sqlite", *SERVERS)
# The same server through another driver (name -> its server and driver): the store's tests
# run on it too, as batchjob uses PyMySQL where mysqlclient is not installed.
OTHER_DRIVERS = {"mariadb-pymysql": ("mariadb", "mysql+pymysql")}
TABLES = (
    "batch_job_events",
    "batch_job_queue",
    "batch_job_workers",
    "batch_job_concurrency",
    "batch_job_schema",
)
BATCHJOB = Path(sys.executable).with_name("batchjob")


def _unreachable(name: str, exc: Exception) -> None:
    message = f"{name} is not reachable: {' '.join(str(exc).split())[:200]}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def server_databases(worker_id: str, testrun_uid: str) -> Iterator[dict[str, str]]:
    """One scratch database per server for this test run and xdist worker: name -> URL.

    Named by the run too, so two pytest runs on one host never empty each other's tables.
    """
    created: dict[str, tuple[Engine, str]] = {}
    urls: dict[str, str] = {}
    name = f"batchjob_test_{testrun_uid[:8]}_{worker_id}"
    for server, admin_url in SERVERS.items():
        try:
            admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
                conn.execute(text(f"CREATE DATABASE {name}"))
        except OperationalError as exc:
            urls[server] = f"unreachable:{' '.join(str(exc).split())[:200]}"
            continue
        created[server] = (admin, name)
        urls[server] = make_url(admin_url).set(database=name).render_as_string(False)
        store = Store(urls[server])
        store.upgrade_schema()
        store.close()
    for variant, (server, driver) in OTHER_DRIVERS.items():
        urls[variant] = (
            urls[server]
            if urls[server].startswith("unreachable:")
            else make_url(urls[server]).set(drivername=driver).render_as_string(False)
        )
    yield urls
    for admin, database in created.values():
        with admin.connect() as conn:
            if admin.dialect.name == "postgresql":
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": database},
                )
            conn.execute(text(f"DROP DATABASE IF EXISTS {database}"))
        admin.dispose()


def _empty(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(TABLES[:-1])} RESTART IDENTITY"))
        else:
            for table in TABLES[:-1]:
                conn.execute(text(f"TRUNCATE TABLE {table}"))
    engine.dispose()


def database_url_fixture(kinds: Iterable[str]) -> Any:
    """The `database_url` fixture over these kinds; a module assigns its own to run on more."""

    @pytest.fixture(params=list(kinds), name="database_url")
    def database_url(
        request: pytest.FixtureRequest, tmp_path: Path, server_databases: dict[str, str]
    ) -> str:
        """The URL of an initialised, empty batchjob database, once per database kind."""
        return prepared_database(request.param, tmp_path, server_databases)

    return database_url


database_url = database_url_fixture(DATABASES)


def prepared_database(kind: str, tmp_path: Path, server_databases: dict[str, str]) -> str:
    """An initialised, empty database of this kind (DATABASES or OTHER_DRIVERS): its URL."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'batchjob.db'}"
        store = Store(url)
        store.upgrade_schema()
        store.close()
        return url
    url = server_databases[kind]
    if url.startswith("unreachable:"):
        _unreachable(kind, RuntimeError(url))
    _empty(url)
    return url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store(database_url)
    yield store
    store.close()


@pytest.fixture
def queue(database_url: str, tmp_path: Path) -> Iterator[Queue]:
    queue = Queue(settings=Settings(database_url=database_url, log_dir=tmp_path / "logs"))
    yield queue
    queue.close()


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> CliResult:
    """Run the installed `batchjob` console script as a user would, with a minimal env."""
    environ = {"PATH": os.environ["PATH"], **(env or {})}
    done = subprocess.run(
        [str(BATCHJOB), *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return CliResult(
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


@pytest.fixture
def cli(database_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """`cli("list", "--json")` against this test's database, run in a scratch directory."""

    def invoke(*args: str, env: Mapping[str, str] | None = None) -> CliResult:
        return run_cli(
            *args, cwd=tmp_path, env={"BATCH_JOB_DATABASE_URL": database_url, **(env or {})}
        )

    return invoke


PYTHON = sys.executable


class Workers:
    """Starts `batchjob worker` processes for one test and stops whatever is left."""

    def __init__(self, database_url: str, directory: Path) -> None:
        self.database_url = database_url
        self.directory = directory
        self.started: list[subprocess.Popen[bytes]] = []

    def configure(self, text: str) -> None:
        (self.directory / "batchjob.toml").write_text(text, encoding="utf-8")

    def start(
        self,
        *args: str,
        preexec_fn: Callable[[], None] | None = None,
        path_first: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """A worker with a systemd-like minimal env; `preexec_fn` sets a limit or a cgroup,
        `path_first` is a directory of programs found before the system's, `env` is more of
        the environment (as a unit's Environment= lines)."""
        path = f"{Path(PYTHON).parent}:/usr/bin:/bin"
        environment = {
            "PATH": path if path_first is None else f"{path_first}:{path}",
            "BATCH_JOB_DATABASE_URL": self.database_url,
            "BATCH_JOB_LOG_DIR": str(self.directory / "logs"),
            **(env or {}),
        }
        process = subprocess.Popen(
            [str(BATCHJOB), "worker", *args],
            cwd=self.directory,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=preexec_fn,  # noqa: PLW1509 - tests pass async-signal-safe set-ups only
        )
        self.started.append(process)
        return process

    def run_burst(self, *args: str, timeout: float = 60) -> int:
        return self.start("--burst", *args).wait(timeout=timeout)

    def worker_log(self) -> str:
        path = self.directory / "logs" / "batch_job_worker.log"
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def workers(database_url: str, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(database_url, tmp_path)
    yield pool
    pool.stop_all()


def kill_connections(engine: Engine, ids: Iterable[int]) -> None:
    """End these server connections (MariaDB thread ids, PostgreSQL backend pids) from another
    one, as a server restart or a dropped network would; PostgreSQL's call waits until each
    has ended, so that the connection is dead, not dying, when the test goes on."""
    kill = {"mysql": "KILL {}", "postgresql": "SELECT pg_terminate_backend({}, 10000)"}
    with engine.connect() as conn:
        for connection_id in ids:
            conn.execute(text(kill[engine.dialect.name].format(int(connection_id))))


def wait_until(condition, timeout: float = 30, interval: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll `condition` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@contextlib.contextmanager
def tmpfs(directory: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `directory` (e.g. "size=1m", "ro,size=1m"), unmounted afterwards.

    Real small or read-only file systems need root; where the mount is refused the test is
    skipped, and under CI=true it fails.
    """
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        _unreachable("a tmpfs", RuntimeError(mounted.stderr.strip()))
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


class _PostgresOverTlsOnly(PostgresServer):
    """The chaos runs' private PostgreSQL, taking TLS connections only (pg_hba `hostssl`),
    with a self-signed certificate that its URL verifies."""

    def _initialise(self) -> None:
        super()._initialise()
        certificate, key = self.data / "server.crt", self.data / "server.key"
        subprocess.run(
            ["openssl", "req", "-new", "-x509", "-days", "1", "-nodes", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(certificate)],
            check=True,
            capture_output=True,
        )  # fmt: skip
        for path in (certificate, key):
            shutil.chown(path, self.user, self.user)
        key.chmod(0o600)
        (self.data / "pg_hba.conf").write_text("hostssl all all 127.0.0.1/32 trust\n", "utf-8")

    def _command(self) -> list[str]:
        return [*super()._command(), "-c", "ssl=on"]

    def url(self, host: str, database: str = DATABASE) -> str:
        certificate = self.data / "server.crt"
        return f"{super().url(host, database)}?sslmode=verify-full&sslrootcert={certificate}"


@contextlib.contextmanager
def postgresql_over_tls_only() -> Iterator[str]:
    """A PostgreSQL server of its own that takes TLS connections only: the URL to it.

    It runs as the `postgres` user; where it cannot be made the test is skipped, and under
    CI=true it fails.
    """
    if os.geteuid() != 0:
        _unreachable("a PostgreSQL of its own", RuntimeError("it needs root to run as postgres"))
    directory = Path(tempfile.mkdtemp(prefix="batchjob-tls-pg-"))
    directory.chmod(0o755)  # the server's user reads its data directory in it
    try:
        try:
            server = _PostgresOverTlsOnly(directory)
        except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
            _unreachable("a PostgreSQL of its own", exc)
        try:
            yield server.url("127.0.0.1")
        finally:
            server.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
