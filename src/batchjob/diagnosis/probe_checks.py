"""`batchjob doctor --probe`: send the probe job through a worker, and judge what it saw.

The job's side is `diagnosis.probe`, which must stay standard library only; this side needs
the queue: it enqueues the probe (joining one already waiting), waits for it, cancels it if
no worker ended it in time, and reads its report back from the job's log.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
from typing import Any

from batchjob.diagnosis.check import Check
from batchjob.diagnosis.probe import read_output as read_probe_output
from batchjob.errors import DuplicateJob, InvalidTransition
from batchjob.follow import log_path
from batchjob.model import Job, JobStatus
from batchjob.queue import Queue

PROBE_TIMEOUT_SECONDS = 30.0
PROBE_UNIQUE_KEY = "doctor-probe"
PROBE_COMMAND = (sys.executable, "-m", "batchjob.diagnosis.probe")


def probe_checks(queue: Queue, timeout: float = PROBE_TIMEOUT_SECONDS) -> list[Check]:
    """Send the probe job through a worker and report what it saw (never raises)."""
    try:
        job = _send_probe(queue, timeout)
        return _probe_findings(queue, job, timeout)
    except Exception as exc:
        return [Check("probe", "FAIL", f"could not run the probe: {exc}", "see `batchjob list`")]


def _send_probe(queue: Queue, timeout: float) -> Job:
    """Enqueue the probe (or join the one already waiting) and wait for it to end."""
    try:
        job = queue.enqueue(list(PROBE_COMMAND), unique_key=PROBE_UNIQUE_KEY, timeout=timeout)
    except DuplicateJob as exc:
        if exc.existing_job_id is None:
            raise
        job = queue.get(exc.existing_job_id)
    job = queue.wait(job.id, timeout=timeout, poll_interval=0.2)
    if not job.status.is_finished:
        with contextlib.suppress(InvalidTransition):  # unless it ended just now
            queue.cancel(job.id)  # nobody should find a stale probe in the queue later
    return job


def _probe_findings(queue: Queue, job: Job, timeout: float) -> list[Check]:
    if job.status == JobStatus.PENDING:
        return [
            Check(
                "probe",
                "FAIL",
                f"no worker took the probe job {job.id} (queue {job.queue}) within {timeout:g} s",
                f"start `batchjob worker` serving the queue {job.queue}",
            )
        ]
    if job.status == JobStatus.RUNNING:
        return [
            Check(
                "probe",
                "FAIL",
                f"the probe job {job.id} started on worker {job.worker_id} but did not finish "
                f"within {timeout:g} s",
                f"batchjob diagnose {job.id}",
            )
        ]
    if job.status != JobStatus.COMPLETED:
        ended = f"{job.status}" + (
            f" ({job.failure_reason}): {job.error_summary}" if job.failure_reason else ""
        )
        return [
            Check(
                "probe",
                "FAIL",
                f"the probe job {job.id} on worker {job.worker_id} is {ended}".replace("\n", " "),
                f"batchjob show {job.id}; batchjob logs {job.id}",
            )
        ]
    seen = _probe_output(queue, job)
    if seen is None:
        return [
            Check(
                "probe",
                "WARN",
                f"the probe job {job.id} ran on worker {job.worker_id}, but its log "
                f"{job.log_path} is not readable here",
                f"run the doctor on that worker's host, or `batchjob logs {job.id}` there",
            )
        ]
    return [_probe_environment(job, seen), _probe_writable(seen)]


def _probe_output(queue: Queue, job: Job) -> dict[str, Any] | None:
    try:
        text = log_path(queue, job).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return read_probe_output(text)


def _probe_environment(job: Job, seen: Mapping[str, Any]) -> Check:
    python, limits, encoding = seen["python"], seen["limits"], seen["encoding"]["preferred"]
    venv = f" (virtualenv {seen['virtualenv']})" if seen["virtualenv"] else ""
    message = (
        f"a job on worker {job.worker_id} runs {python['executable']} {python['version']}{venv} "
        f"as {seen['user']} (uid {seen['uid']}), umask {seen['umask']}, "
        f"LANG {seen['locale'].get('LANG')} ({encoding}), "
        f"open files {'/'.join(map(str, limits['nofile']))}, "
        f"processes {'/'.join(map(str, limits['nproc']))}"
    )
    if str(encoding).lower().replace("-", "") != "utf8":
        return Check(
            "probe",
            "WARN",
            message,
            "give the worker a UTF-8 locale (LANG=C.UTF-8) or jobs hit UnicodeEncodeError",
            seen,
        )
    return Check("probe", "OK", message, None, seen)


def _probe_writable(seen: Mapping[str, Any]) -> Check:
    writable = seen["writable"]
    figures = {"writable": writable}
    blocked = [
        f"{name} {entry['path']} is not writable: {entry['error']}"
        for name, entry in writable.items()
        if name in ("TMPDIR", "HOME") and not entry["writable"]
    ]
    if blocked:
        return Check(
            "probe-writable",
            "WARN",
            "; ".join(blocked),
            "check ProtectHome/ReadWritePaths of the unit, or set HOME in the job's env",
            figures,
        )
    cwd = writable["cwd"]
    cwd_note = "" if cwd["writable"] else f"; its cwd {cwd['path']} is read-only"
    return Check(
        "probe-writable",
        "OK",
        f"a job can write to TMPDIR {writable['TMPDIR']['path']} and HOME "
        f"{writable['HOME']['path']}{cwd_note}",
        None,
        figures,
    )
