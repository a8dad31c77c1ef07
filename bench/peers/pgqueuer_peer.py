"""PgQueuer on PostgreSQL: `pgq run pgqueuer_peer:create_pgqueuer`, LISTEN/NOTIFY wake-ups."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import psycopg
from common import JobSpec, Peer, cli, postgres_dsn, run_job
from pgqueuer import PgQueuer
from pgqueuer.adapters.drivers.psycopg import SyncPsycopgDriver
from pgqueuer.adapters.persistence.queries import SyncQueries
from pgqueuer.models import Job

ENTRYPOINT = "pgqueuer_job"


@asynccontextmanager
async def create_pgqueuer() -> AsyncIterator[PgQueuer]:
    """The factory `pgq run` calls in the worker: one asyncpg connection, one entrypoint.

    asyncpg, not psycopg: pgqueuer's psycopg driver lets LISTEN hold the connection in
    notifies(timeout=1.0) between notifications, and every query waits behind it (measured:
    jobs one at a time with 1 s gaps). asyncpg delivers notifications beside the queries.
    """
    connection = await asyncpg.connect(postgres_dsn())
    try:
        pgq = PgQueuer.from_asyncpg_connection(connection)

        @pgq.entrypoint(ENTRYPOINT)
        async def pgqueuer_job(job: Job) -> None:
            # PgQueuer 1.x takes async entrypoints only and says to run blocking code with
            # asyncio.to_thread, which is what this does with the common task body.
            arguments = json.loads(job.payload or b"{}")
            await asyncio.to_thread(run_job, **arguments)

        yield pgq
    finally:
        await connection.close()


class PgqueuerPeer(Peer):
    name = "pgqueuer"
    package = "pgqueuer"
    broker = "postgresql"
    has_bulk = True
    # One asyncio process; --max-concurrent-tasks 2 makes the 2 slots (the dequeue query
    # enforces it) and it must be at least twice --batch-size, hence a batch of 1. The blocking
    # task body runs in asyncio.to_thread. LISTEN/NOTIFY wakes an idle worker.
    slots = "1 process, 2 concurrent tasks (threads)"
    _connection: psycopg.Connection | None = None

    def setup(self) -> None:
        subprocess.run(
            [cli("pgq"), f"--pg-dsn={postgres_dsn()}", "install"],
            check=True,
            capture_output=True,
        )

    def _queries(self) -> SyncQueries:
        if self._connection is None:
            self._connection = psycopg.connect(postgres_dsn(), autocommit=True)
        return SyncQueries(SyncPsycopgDriver(self._connection))

    def reset(self) -> None:
        with psycopg.connect(postgres_dsn(), autocommit=True) as connection:
            connection.execute("TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")

    def enqueue(self, job: JobSpec) -> None:
        self._queries().enqueue(ENTRYPOINT, json.dumps(job.kwargs()).encode())

    def enqueue_bulk(self, jobs: list[JobSpec]) -> None:
        """`Queries.enqueue` with lists: one INSERT ... SELECT FROM unnest(...) for all."""
        self._queries().enqueue(
            [ENTRYPOINT] * len(jobs),
            [json.dumps(job.kwargs()).encode() for job in jobs],
            [0] * len(jobs),
        )

    def worker_argv(self) -> list[str]:
        return [
            cli("pgq"),
            f"--pg-dsn={postgres_dsn()}",
            "run",
            "pgqueuer_peer:create_pgqueuer",
            "--batch-size=1",
            "--max-concurrent-tasks=2",
            "--log-level=WARNING",
        ]

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


PEER = PgqueuerPeer
