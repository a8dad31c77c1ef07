"""Procrastinate on PostgreSQL: `procrastinate worker --concurrency 2`, LISTEN/NOTIFY wake-ups."""

from __future__ import annotations

import psycopg
from common import QUEUE, JobSpec, Peer, cli, postgres_dsn, run_job
from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=postgres_dsn()))


@app.task(name="procrastinate_job", queue=QUEUE)
def procrastinate_job(marker: str, index: int, command: list[str]) -> None:
    run_job(marker, index, command)


class ProcrastinatePeer(Peer):
    name = "procrastinate"
    package = "procrastinate"
    broker = "postgresql"
    has_bulk = True
    # One asyncio process with 2 concurrent jobs; a sync task runs in a thread of the worker
    # (procrastinate's own sync_to_async). LISTEN/NOTIFY is on (the default), so an idle worker
    # wakes on the insert rather than on its 5 s polling fallback.
    slots = "1 process, 2 concurrent jobs (threads)"
    _opened = False

    def setup(self) -> None:
        self._open()
        app.schema_manager.apply_schema()

    def _open(self) -> None:
        if not self._opened:
            app.open()
            self._opened = True

    def reset(self) -> None:
        with psycopg.connect(postgres_dsn(), autocommit=True) as connection:
            connection.execute("TRUNCATE procrastinate_jobs RESTART IDENTITY CASCADE")

    def enqueue(self, job: JobSpec) -> None:
        self._open()
        procrastinate_job.defer(**job.kwargs())

    def enqueue_bulk(self, jobs: list[JobSpec]) -> None:
        """`Task.batch_defer`: one INSERT for all the jobs."""
        self._open()
        procrastinate_job.batch_defer(*(job.kwargs() for job in jobs))

    def worker_argv(self) -> list[str]:
        return [
            cli("procrastinate"),
            "--app=procrastinate_peer.app",
            "--log-level=warning",
            "worker",
            "--concurrency=2",
        ]

    def close(self) -> None:
        if self._opened:
            app.close()
            self._opened = False


PEER = ProcrastinatePeer
