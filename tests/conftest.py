"""Fixtures: every store test runs on SQLite, MariaDB and PostgreSQL — real servers, no mocks.

Each xdist worker gets its own MariaDB/PostgreSQL database, created once and emptied before
each test; SQLite gets a new file per test. Under CI=true a server that does not answer fails
the test instead of skipping it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from batchjob.config import Settings
from batchjob.queue import Queue
from batchjob.store import Store

SERVERS = {
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4",
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
}
DATABASES = ("sqlite", *SERVERS)
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
def server_databases(worker_id: str) -> Iterator[dict[str, str]]:
    """One scratch database per server for this xdist worker: name -> URL."""
    created: dict[str, tuple[Engine, str]] = {}
    urls: dict[str, str] = {}
    name = f"batchjob_test_{worker_id}"
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


@pytest.fixture(params=DATABASES)
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, server_databases: dict[str, str]
) -> str:
    """The URL of an initialised, empty batchjob database, once per database kind."""
    kind = request.param
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
