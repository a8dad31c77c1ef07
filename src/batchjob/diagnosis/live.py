"""`batchjob diagnose ID`: a live look at a running job's tree from any shell on its host."""

from __future__ import annotations

import socket
from typing import Any

from batchjob.errors import InvalidInput
from batchjob.model import JobStatus
from batchjob.queue import Queue
from batchjob.runner import watch


def diagnose_job(queue: Queue, job_id: int) -> dict[str, Any]:
    """Inspect the running job's processes, store the diagnosis as an event, return it."""
    from batchjob.diagnosis.inspect import inspect_processes

    job = queue.get(job_id)
    if job.status != JobStatus.RUNNING or job.pid is None:
        if job.diagnosis is not None:
            return dict(job.diagnosis)  # the last one taken, e.g. when it stalled
        raise InvalidInput(f"job {job_id} is {job.status}, not running: nothing to diagnose")
    host, _, rest = (job.worker_id or "").partition(":")
    if host != socket.gethostname():
        raise InvalidInput(f"job {job_id} runs on {host}: run `batchjob diagnose {job_id}` there")
    worker_pid = int(rest.split(":")[0]) if rest.split(":")[0].isdigit() else None
    pids = [process.pid for process in watch.job_processes(job.pid, job.id, worker_pid)]
    diagnosis = inspect_processes(pids)
    queue.store.record_event(job.id, "diagnosis", diagnosis["summary"], data=diagnosis)
    return diagnosis
