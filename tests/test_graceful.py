"""Graceful stops, as `systemctl stop` and Ctrl-C give them: nothing lost, nothing run twice.

A real `batchjob worker` gets a real SIGTERM (or SIGINT) in the middle of its work; the truth
is read from the database and from a ledger that every job appends its id to (one short
O_APPEND write per job, so lines from parallel jobs never interleave).
"""

from __future__ import annotations

import shlex
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from batchjob.model import JobStatus
from batchjob.queue import Queue
from conftest import Workers, wait_until

FAULT_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
BURST_JOBS = 500


def completed_count(queue: Queue) -> int:
    return queue.stats().get("default", {}).get("completed", 0)


def ledger_ids(ledger: Path) -> Counter[int]:
    """How many times each job id reached the end of its command."""
    if not ledger.exists():
        return Counter()
    return Counter(int(line) for line in ledger.read_text().split())


@FAULT_DATABASES
def test_sigterm_during_a_burst_of_short_jobs_loses_none_and_runs_none_twice(
    workers: Workers, queue: Queue, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    # `>>` opens the ledger with O_APPEND: each job's line lands whole, after the others'.
    script = f'sleep 0.05 && echo "$BATCH_JOB_ID" >> {shlex.quote(str(ledger))}'
    enqueued = queue.enqueue_many([{"command": ["sh", "-c", script]}] * BURST_JOBS)
    all_ids = {job.id for job in enqueued}
    worker = workers.start("--concurrency", "2")
    wait_until(lambda: completed_count(queue) >= 50, timeout=60, interval=0.02)

    worker.send_signal(signal.SIGTERM)

    assert worker.wait(timeout=30) == 0
    jobs = queue.list(limit=BURST_JOBS + 1)
    assert {job.id for job in jobs} == all_ids, "no job vanished"
    by_status = Counter(job.status for job in jobs)
    assert set(by_status) <= {JobStatus.PENDING, JobStatus.COMPLETED}, by_status
    assert by_status[JobStatus.PENDING] + by_status[JobStatus.COMPLETED] == BURST_JOBS
    assert by_status[JobStatus.COMPLETED] >= 50
    assert by_status[JobStatus.PENDING] > 0, "the worker stopped in the middle of the burst"
    assert [job.id for job in jobs if job.failure_reason is not None] == []
    assert {job.attempt for job in jobs if job.status == JobStatus.PENDING} <= {0}, (
        "a job put back at shutdown keeps its attempts"
    )
    assert {job.attempt for job in jobs if job.status == JobStatus.COMPLETED} == {1}
    completed_ids = {job.id for job in jobs if job.status == JobStatus.COMPLETED}
    assert ledger_ids(ledger) == Counter(completed_ids), "the ledger matches what is completed"

    assert workers.run_burst("--concurrency", "4", timeout=120) == 0

    finished = queue.list(limit=BURST_JOBS + 1)
    assert Counter(job.status for job in finished) == {JobStatus.COMPLETED: BURST_JOBS}
    assert Counter(job.attempt for job in finished) == {1: BURST_JOBS}
    assert all(job.failure_reason is None for job in finished)
    ran = ledger_ids(ledger)
    assert set(ran) == all_ids
    assert [job_id for job_id, times in ran.items() if times != 1] == [], "each job ran once"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sigint_stops_the_worker_as_sigterm_does(workers: Workers, queue: Queue) -> None:
    workers.configure('[worker]\nshutdown_grace = "1s"\nkill_grace = "1s"\n')
    job = queue.enqueue(["sleep", "300"])
    worker = workers.start()
    wait_until(lambda: queue.get(job.id).pid)

    worker.send_signal(signal.SIGINT)

    assert worker.wait(timeout=30) == 0
    released = queue.get(job.id)
    assert (released.status, released.attempt, released.failure_reason) == (
        JobStatus.PENDING,
        0,
        None,
    )
    assert "released" in [event.kind for event in queue.events(job.id)]
    assert "action=signal signal=SIGINT" in workers.worker_log()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_second_sigterm_skips_the_shutdown_grace(workers: Workers, queue: Queue) -> None:
    workers.configure('[worker]\nshutdown_grace = "30s"\nkill_grace = "1s"\n')
    job = queue.enqueue(["sleep", "60"])
    worker = workers.start()
    wait_until(lambda: queue.get(job.id).pid)
    worker.send_signal(signal.SIGTERM)
    wait_until(lambda: "action=shutdown_waiting" in workers.worker_log(), timeout=10)
    assert worker.poll() is None, "the first SIGTERM waits for the running job"

    second_signal = time.monotonic()
    worker.send_signal(signal.SIGTERM)

    assert worker.wait(timeout=20) == 0
    assert time.monotonic() - second_signal < 20
    released = queue.get(job.id)
    assert (released.status, released.attempt, released.failure_reason) == (
        JobStatus.PENDING,
        0,
        None,
    )
    assert "released" in [event.kind for event in queue.events(job.id)]
