"""One claimed job, from start to recorded end: run it, judge it, write the outcome.

The outcome is written with the attempt's lease token, so a worker that lost the lease
changes nothing. When the database is away, the write is retried until it is back: the end
of a job that finished meanwhile is not lost.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from batchjob.config import Settings
from batchjob.diagnosis.context import execution_context
from batchjob.diagnosis.oom import oom_evidence, oom_kill_count
from batchjob.diagnosis.outcome import explain, retry_delay
from batchjob.errors import StoreUnavailable
from batchjob.model import JobStatus
from batchjob.runner import JobSpec, RunControl, RunResult, StopReason, run
from batchjob.runner.scratch import PrivateTmp
from batchjob.runner.spawn import SpawnRequest
from batchjob.store import ClaimedJob, ClaimRequest, Outcome, Store
from batchjob.worker.guardian import Guardian
from batchjob.worker.leases import LeaseKeeper, Tracked
from batchjob.worker.outage import Outage

DEFAULT_RETRY_BACKOFF = 30.0
WRITE_RETRY_SECONDS = (0.5, 1, 2, 5, 10, 30)
T = TypeVar("T")
log = logging.getLogger("batchjob.worker")


@dataclass(frozen=True)
class SlotContext:
    """What every job of one worker shares."""

    settings: Settings
    store: Store
    keeper: LeaseKeeper
    guardian: Guardian
    worker_id: str
    base_env: Mapping[str, str]
    shutting_down: threading.Event
    outage: Outage
    next_claim: Callable[[], ClaimRequest | None]
    """What to claim with an outcome (None: nothing): the slot's next job, same transaction."""
    job_log_dir: str
    """Where job logs go, absolute: a job's log path is one string away (pathlib's joins and
    `absolute()` for every job cost a short job's worker 2 % of its GIL time)."""


def execute(claimed: ClaimedJob, context: SlotContext, tmp: PrivateTmp) -> ClaimedJob | None:
    """Run one claimed attempt and record how it ended (`tmp`: the slot's TMPDIR for its jobs).

    Returns the job claimed together with the outcome, if any: the slot runs it next.
    """
    job, lease = claimed.job, claimed.lease
    settings = context.settings
    log_file = f"{context.job_log_dir}/{job.id}.log"
    control = RunControl()
    tracked = context.keeper.track(lease, control, claimed.granted_at)
    control.on_progress = tracked.report
    oom_kills_before: int | None = None

    def on_started(pid: int) -> None:
        nonlocal oom_kills_before
        _started(context, tracked, claimed, pid, log_file)
        # Read once the job runs, not before the spawn, where it lengthened the claim's way to
        # the start (work after a spawn can still delay the new process on a busy CPU, less so).
        # A kill this count misses (the job's own, in its first microseconds) the kernel log
        # still names.
        oom_kills_before = oom_kill_count()

    control.on_started = on_started
    # Stall changes are written off the pump, one after the other in the order they happen
    # (a diagnosis with py-spy may take seconds; "moving again" must not overtake it). Made
    # at the first: most jobs never stall.
    stall_writer: ThreadPoolExecutor | None = None

    def on_stall(stalled: bool, idle: float, pids: list[int]) -> None:
        nonlocal stall_writer
        if stall_writer is None:
            stall_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stall-{job.id}")
        stall_writer.submit(_stall_changed, context, claimed, stalled, idle, pids)

    control.on_stall = on_stall
    spec = JobSpec(
        spawn=SpawnRequest(
            job_id=job.id,
            attempt=job.attempt,
            queue=job.queue,
            command=job.command,
            env=job.env,
            cwd=job.cwd,
            base_env=context.base_env,
            worker_id=context.worker_id,
        ),
        log_path=log_file,
        max_log_bytes=settings.worker.max_log_bytes,
        timeout=job.timeout,
        kill_grace=settings.worker.kill_grace,
        drain_grace=settings.worker.drain_grace,
        memory_limit=job.memory_limit,
        stall_timeout=job.stall_timeout,
        stall_action=job.stall_action or "diagnose",
        tmp=tmp,
    )
    try:
        result = run(spec, control)
    finally:
        context.keeper.untrack(lease)
        context.guardian.job_ended(job.id)
        if stall_writer is not None:
            stall_writer.shutdown(wait=True)  # its writes are fenced: before the outcome's
    return _record(claimed, result, tracked, context, oom_kills_before)


def _stall_changed(
    context: SlotContext, claimed: ClaimedJob, stalled: bool, idle: float, pids: list[int]
) -> None:
    """Mark the job stalled and store a diagnosis of its tree (or un-mark it): off the pump."""
    from batchjob.diagnosis.inspect import inspect_processes

    job, lease = claimed.job, claimed.lease
    if not stalled:
        log.info("action=moving_again job_id=%d", job.id)
        _write(context, lambda: context.store.mark_stalled(lease, False))
        _write(context, lambda: context.store.record_event(
            job.id, "moving", "the job shows activity again", worker_id=context.worker_id
        ))  # fmt: skip
        return
    diagnosis = inspect_processes(pids, idle_seconds=idle)
    log.warning("action=stalled job_id=%d idle=%.0fs %s", job.id, idle, diagnosis["summary"])
    _write(context, lambda: context.store.record_event(
        job.id, "stalled", f"no output, progress or CPU for {idle:.0f}s",
        worker_id=context.worker_id,
    ))  # fmt: skip
    _write(context, lambda: context.store.record_event(
        job.id, "diagnosis", diagnosis["summary"], data=diagnosis, worker_id=context.worker_id
    ))  # fmt: skip
    # Marked last: whoever sees the job stalled finds its diagnosis already there.
    _write(context, lambda: context.store.mark_stalled(lease, True))


def _started(
    context: SlotContext, tracked: Tracked, claimed: ClaimedJob, pid: int, log_path: str
) -> None:
    """On the pump's thread, once the job runs: its worker-log line is written here, with its
    pid, not on the job's way to its start (where the line took an idle worker 0.13-0.16 ms).
    No database call here; the lease keeper stores it."""
    job = claimed.job
    context.guardian.job_started(job.id, pid)
    tracked.started = (pid, log_path)
    log.info(
        "action=started job_id=%d attempt=%d/%d queue=%s worker_id=%s pid=%d log=%s",
        job.id, job.attempt, job.max_attempts, job.queue, context.worker_id, pid, log_path,
    )  # fmt: skip


def _record(
    claimed: ClaimedJob,
    result: RunResult,
    tracked: Tracked,
    context: SlotContext,
    oom_kills_before: int | None,
) -> ClaimedJob | None:
    job, lease = claimed.job, claimed.lease
    ended = f"duration={result.duration:.3f}s exit={result.exit_code} signal={result.signal}"
    if result.stopped_by == StopReason.LEASE_LOST:
        log.warning("action=abandoned job_id=%d %s reason=lease_lost", job.id, ended)
        _record_lost_lease(context, job.id, "the attempt lost its lease and was stopped")
        return None
    if result.stopped_by == StopReason.SHUTDOWN:
        released = _write(
            context,
            lambda: context.store.release(
                lease, "the worker shut down; the job will run again without using an attempt"
            ),
        )
        log.info("action=released job_id=%d %s released=%s", job.id, ended, released)
        return None
    evidence_of_oom = (
        oom_evidence(result.pid, oom_kills_before)
        if result.signal == signal.SIGKILL and result.stopped_by is None and result.pid
        else None
    )
    verdict = explain(
        result,
        command=job.command,
        timeout=job.timeout,
        memory_limit=job.memory_limit,
        oom_evidence=evidence_of_oom,
    )
    delay: float | None = None
    if verdict.succeeded:
        status = JobStatus.COMPLETED
    elif verdict.retryable and job.attempt < job.max_attempts:
        status = JobStatus.PENDING
        backoff = job.retry_backoff if job.retry_backoff is not None else DEFAULT_RETRY_BACKOFF
        delay = retry_delay(backoff, job.attempt, random.uniform(0.75, 1.25))
    elif result.stopped_by == StopReason.CANCELLED:
        status = JobStatus.CANCELLED
    else:
        status = JobStatus.FAILED
    outcome = Outcome(
        status,
        exit_code=result.exit_code,
        signal=result.signal,
        failure_reason=verdict.failure_reason,
        error_summary=verdict.summary,
        hint=verdict.hint,
        retry_delay=delay,
        progress=tracked.unstored_progress(),
        peak_rss_bytes=result.peak_rss_bytes,
        peak_open_fds=result.peak_open_fds,
        evidence=_evidence(claimed, result),
        started=None if tracked.started_stored else tracked.started,
    )
    if delay is not None:
        log.info(
            "action=retry_scheduled job_id=%d %s reason=%s next_attempt=%d delay=%.1fs",
            job.id, ended, verdict.failure_reason, job.attempt + 1, delay,
        )  # fmt: skip
    else:
        log.info("action=%s job_id=%d %s reason=%s", status, job.id, ended, verdict.failure_reason)
    recorded, claimed_next = _write(
        context, lambda: context.store.finish_and_claim(lease, outcome, context.next_claim())
    ) or (False, [])
    if not recorded:
        log.warning("action=result_not_recorded job_id=%d: the lease was lost meanwhile", job.id)
        _record_lost_lease(context, job.id, f"the attempt ended ({ended}) after losing its lease")
    return claimed_next[0] if claimed_next else None


def _record_lost_lease(context: SlotContext, job_id: int, what: str) -> None:
    """An event for the job's history: this attempt's result is not (and will not be) kept."""
    message = (
        f"{what}: it was rescued elsewhere or its worker could not reach the database; "
        "its result is not recorded"
    )
    _write(
        context,
        lambda: context.store.record_event(
            job_id, "lease_lost", message, worker_id=context.worker_id
        ),
    )


def _evidence(claimed: ClaimedJob, result: RunResult) -> dict[str, object] | None:
    """The attempt's execution context, secrets masked: the evidence for env-diff."""
    if not result.env:
        return None
    return {
        **execution_context(result.env, claimed.job.command, claimed.job.cwd),
        "pid": result.pid,
        "peak_processes": result.peak_processes,
        "peak_threads": result.peak_threads,
        "cpu_seconds": round(result.cpu_seconds, 3),
        "leftovers": result.leftovers,
        "log_error": result.log_error,
    }


def _write(context: SlotContext, write: Callable[[], T]) -> T | None:
    """Run a store write, waiting out an unreachable database for as long as the worker runs."""
    attempt = 0
    while True:
        try:
            written = write()
            context.outage.succeeded()
            return written
        except StoreUnavailable as exc:
            context.outage.failed(exc)
            if context.shutting_down.is_set() and attempt >= len(WRITE_RETRY_SECONDS):
                log.error("action=write_abandoned error=%s: the worker is shutting down", exc)
                return None
            time.sleep(WRITE_RETRY_SECONDS[min(attempt, len(WRITE_RETRY_SECONDS) - 1)])
            attempt += 1
