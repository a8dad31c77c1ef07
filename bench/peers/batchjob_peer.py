"""batchjob itself, on SQLite, MariaDB and PostgreSQL: `batchjob worker --concurrency 2`.

The peers run a Python task body that runs the command; batchjob runs the command itself as
the job, which is what its users do. So its records come from where it keeps them: a job's
start is its `started_at` (the claim), its end `completed_at` (the recorded finish), both
stored by the database's clock on this machine. For the latency workload (a peer's task
body with no command) the job is `/bin/date +%s.%N`: its start is the time the job's own
process printed, read back from the job's log, so batchjob's latency includes its spawn.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import JobSpec, Peer, Record, mariadb_admin_url, postgres_dsn, scratch
from sqlalchemy import Engine, create_engine, delete, func, select, text

from batchjob import Queue
from batchjob.config import load_settings
from batchjob.store.schema import events, jobs

BATCHJOB = str(Path(sys.executable).with_name("batchjob"))
PRINT_START = ["/bin/date", "+%s.%N"]
MARIADB_DATABASE = "bench_peers"


class BatchjobPeer(Peer):
    package = "batchjob"
    has_bulk = True
    slots = "worker --concurrency 2 (its default), threads"

    def __init__(self) -> None:
        self.queue: Queue | None = None
        self.engine: Engine | None = None
        self.log_dir = scratch() / f"{self.name}-logs"
        #: marker file -> {job id: the job's index}: which jobs make which records.
        self.enqueued: dict[str, dict[int, int]] = {}

    def database_url(self) -> str:
        raise NotImplementedError

    def setup(self) -> None:
        self.queue = Queue(settings=load_settings(database_url=self.database_url()))
        self.queue.init()
        self.engine = create_engine(self.database_url())

    def reset(self) -> None:
        """Empty the tables as the other PostgreSQL peers do theirs, by TRUNCATE there.

        A DELETE leaves every row's dead version, in the table and in each index, until a
        vacuum; this machine's PostgreSQL runs without autovacuum, so each workload's claims
        stepped over the dead rows of the workloads before it (26,000 before the last).
        """
        assert self.engine is not None
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text(f"TRUNCATE {events.name}, {jobs.name}"))
            else:
                connection.execute(delete(events))
                connection.execute(delete(jobs))
        self.enqueued.clear()

    def enqueue(self, job: JobSpec) -> None:
        assert self.queue is not None
        stored = self.queue.enqueue(job.command or PRINT_START, queue="bench")
        self.enqueued.setdefault(job.marker, {})[stored.id] = job.index

    def enqueue_bulk(self, jobs_: list[JobSpec]) -> None:
        assert self.queue is not None
        stored = self.queue.enqueue_many(
            [{"command": job.command or PRINT_START, "queue": "bench"} for job in jobs_]
        )
        for job, row in zip(jobs_, stored, strict=True):
            self.enqueued.setdefault(job.marker, {})[row.id] = job.index

    def records(self, marker: Path) -> list[Record]:
        """The records of the marker's jobs once all have completed; none before.

        Until then only a count is asked for: polled every 20 ms, it must cost the worker
        being measured as little as a peer's record file does.
        """
        assert self.engine is not None
        wanted = self.enqueued.get(str(marker), {})
        with self.engine.connect() as connection:
            done = connection.execute(
                select(func.count()).select_from(jobs).where(jobs.c.status == "completed")
            ).scalar_one()
            if done < len(wanted) or not wanted:
                return []
            rows = connection.execute(
                select(jobs.c.id, jobs.c.started_at, jobs.c.completed_at, jobs.c.command).where(
                    jobs.c.id.in_(list(wanted))
                )
            ).all()
        return [
            Record(wanted[row.id], self._started(row), _epoch(row.completed_at)) for row in rows
        ]

    def _started(self, row: Any) -> float:
        if list(row.command) != PRINT_START:
            return _epoch(row.started_at)
        log = (self.log_dir / "jobs" / f"{row.id}.log").read_bytes()
        printed = next(line for line in log.splitlines() if b" out " in line)
        return float(printed.rsplit(b"| ", 1)[1])

    def worker_argv(self) -> list[str]:
        return [BATCHJOB, "worker", "--concurrency", "2"]

    def worker_env(self) -> dict[str, str]:
        return {
            "BATCH_JOB_DATABASE_URL": self.database_url(),
            "BATCH_JOB_LOG_DIR": str(self.log_dir),
        }

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()
        if self.engine is not None:
            self.engine.dispose()


def _epoch(moment: datetime) -> float:
    """Stored times are naive UTC."""
    return moment.replace(tzinfo=UTC).timestamp()


class BatchjobSqlitePeer(BatchjobPeer):
    name = "batchjob-sqlite"
    broker = "sqlite"

    def database_url(self) -> str:
        return f"sqlite:///{scratch() / 'batchjob.db'}"


class BatchjobPostgresqlPeer(BatchjobPeer):
    name = "batchjob-postgresql"
    broker = "postgresql"

    def database_url(self) -> str:
        return postgres_dsn().replace("postgresql://", "postgresql+psycopg://", 1)


class BatchjobMariadbPeer(BatchjobPeer):
    """On a database of its own, created here and dropped by close()."""

    name = "batchjob-mariadb"
    broker = "mariadb"

    def database_url(self) -> str:
        return f"{mariadb_admin_url()}{MARIADB_DATABASE}?charset=utf8mb4"

    def setup(self) -> None:
        admin = create_engine(mariadb_admin_url())
        with admin.begin() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {MARIADB_DATABASE}"))
            connection.execute(text(f"CREATE DATABASE {MARIADB_DATABASE}"))
        admin.dispose()
        super().setup()

    def close(self) -> None:
        super().close()
        admin = create_engine(mariadb_admin_url())
        with admin.begin() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {MARIADB_DATABASE}"))
        admin.dispose()
