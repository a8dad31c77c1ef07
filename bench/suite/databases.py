"""A fresh, empty batchjob database of each kind for one figure, and a count of row updates.

SQLite: a file in the figure's directory. MariaDB and PostgreSQL: a database of its own on
the machine's server (`bench_suite`), created for the figure and dropped after it, so no
figure sees another's rows.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text

BATCHJOB = str(Path(sys.executable).with_name("batchjob"))
SERVERS = {
    "mariadb": os.environ.get("BENCH_MARIADB_URL", "mysql://root@127.0.0.1:3306/"),
    "postgresql": os.environ.get(
        "BENCH_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
}
NAME = "bench_suite"
KINDS = ("sqlite", "mariadb", "postgresql")


@contextlib.contextmanager
def fresh_database(kind: str, directory: Path, name: str = NAME) -> Iterator[str]:
    """The URL of an initialised, empty batchjob database; dropped afterwards. `name`: for a
    figure that needs two side by side."""
    if kind == "sqlite":
        url = f"sqlite:///{directory / f'{name}.db'}"
        _init(url, directory)
        yield url
        return
    admin = create_engine(SERVERS[kind], isolation_level="AUTOCOMMIT")
    drop = f"DROP DATABASE IF EXISTS {name}" + (" WITH (FORCE)" if kind == "postgresql" else "")
    with admin.connect() as connection:
        connection.execute(text(drop))
        connection.execute(text(f"CREATE DATABASE {name}"))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    if kind == "mariadb":
        url += "?charset=utf8mb4"
    try:
        _init(url, directory)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(drop))
        admin.dispose()


def _init(url: str, directory: Path) -> None:
    subprocess.run(
        [BATCHJOB, "init"], cwd=directory, env=worker_env(url, directory), check=True,
        capture_output=True,
    )  # fmt: skip


def worker_env(url: str, directory: Path) -> dict[str, str]:
    """What systemd would give a worker: PATH and batchjob's own settings, nothing else."""
    return {
        "PATH": "/usr/bin:/bin",
        "BATCH_JOB_DATABASE_URL": url,
        "BATCH_JOB_LOG_DIR": str(directory / "logs"),
    }


def count_job_updates(url: str) -> None:
    """From now on, count every UPDATE of a batch_job_queue row in bench_updates.n."""
    engine = create_engine(url)
    kind = engine.dialect.name
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE bench_updates (n INTEGER NOT NULL)"))
        connection.execute(text("INSERT INTO bench_updates (n) VALUES (0)"))
        if kind == "sqlite":
            connection.execute(
                text(
                    "CREATE TRIGGER bench_count AFTER UPDATE ON batch_job_queue "
                    "BEGIN UPDATE bench_updates SET n = n + 1; END"
                )
            )
        elif kind == "postgresql":
            connection.execute(
                text(
                    "CREATE FUNCTION bench_count() RETURNS trigger AS $$ BEGIN "
                    "UPDATE bench_updates SET n = n + 1; RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            connection.execute(
                text(
                    "CREATE TRIGGER bench_count AFTER UPDATE ON batch_job_queue "
                    "FOR EACH ROW EXECUTE FUNCTION bench_count()"
                )
            )
        else:
            connection.execute(
                text(
                    "CREATE TRIGGER bench_count AFTER UPDATE ON batch_job_queue "
                    "FOR EACH ROW UPDATE bench_updates SET n = n + 1"
                )
            )
    engine.dispose()


def job_updates(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as connection:
        count = int(connection.execute(text("SELECT n FROM bench_updates")).scalar_one())
    engine.dispose()
    return count
