"""Small periodic services of a worker, each with an interval and a testable `run_once()`."""

from __future__ import annotations

import logging
import signal

import psutil

from batchjob.model import Job
from batchjob.runner import watch
from batchjob.store import Store

log = logging.getLogger("batchjob.worker")


class Rescuer:
    """Rescue jobs whose lease expired (by the database clock), faster than any lease.

    A rescued attempt that ran on this host is killed first — every process carrying its
    BATCH_JOB_ID — so that it cannot run beside the next attempt.
    """

    def __init__(self, store: Store, host: str, lease_timeout: float, max_lost_attempts: int):
        self.store = store
        self.host = host
        self.interval = max(min(lease_timeout / 4, 5.0), 0.2)
        self.max_lost_attempts = max_lost_attempts
        self._next_run = 0.0

    def run_if_due(self, now: float) -> list[Job]:
        if now < self._next_run:
            return []
        self._next_run = now + self.interval
        return self.run_once()

    def run_once(self) -> list[Job]:
        rescued = self.store.rescue_expired(self.max_lost_attempts)
        for job in rescued:
            killed = self._kill_stale_attempt(job) if _host_of(job.worker_id) == self.host else 0
            log.warning(
                "action=rescued job_id=%d attempt=%d previous_worker=%s status=%s "
                "stale_processes_killed=%d",
                job.id, job.attempt, job.worker_id, job.status, killed,
            )  # fmt: skip
        return rescued

    @staticmethod
    def _kill_stale_attempt(job: Job) -> int:
        marker = str(job.id)
        killed = 0
        for process in psutil.process_iter(["pid"]):
            try:
                if process.environ().get("BATCH_JOB_ID") == marker or (
                    job.pid is not None
                    and process.pid == job.pid
                    and process.environ().get("BATCH_JOB_ID") == marker
                ):
                    process.send_signal(signal.SIGKILL)
                    killed += 1
            except psutil.Error:
                continue
        if killed:
            watch.reap_adopted()
        return killed


def _host_of(worker_id: str | None) -> str | None:
    return worker_id.split(":", 1)[0] if worker_id else None
