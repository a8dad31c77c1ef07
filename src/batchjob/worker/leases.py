"""Keep every running job's lease, pass on its start, progress and cancellation.

One thread for all of a worker's jobs, one short tick every half second: renew the leases a
sixth of the way through them and store each new job's pid and log path (all in one
transaction: one write lock however many jobs run), ask which jobs were cancelled, and
store the latest progress of each job (so a job reporting 100,000 times a second costs two
writes a second). A lease that the database refuses to renew is lost: the
job is stopped at once. A lease that has not been renewed for two thirds of `lease_timeout`
— the database unreachable, locked, or a call that hangs on a stalled network — is given up
before it can expire: the keeper only moves each job's fence forward, and the runner itself
kills the job when the fence is reached, so a keeper stuck in a database call cannot keep a
job running past its lease.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from batchjob.errors import InvalidInput, StoreUnavailable
from batchjob.runner import RunControl, StopReason
from batchjob.store import Lease, Store
from batchjob.worker.outage import Outage

TICK_SECONDS = 0.5
log = logging.getLogger("batchjob.worker")

Progress = tuple[str | None, int | None, int | None]


@dataclass
class Tracked:
    """What the keeper knows of one running job."""

    lease: Lease
    control: RunControl
    renewed_at: float
    progress: Progress | None = None
    progress_stored: Progress | None = None
    started: tuple[int, str] | None = None
    """(pid, log path) once the job runs; stored by the keeper's next tick, off the pump."""
    started_stored: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def report(self, message: str | None, current: int | None, total: int | None) -> None:
        """Called by the runner for every progress line; only remembers the latest."""
        with self._lock:
            self.progress = (message, current, total)

    def unstored_progress(self) -> Progress | None:
        with self._lock:
            latest = self.progress
        return latest if latest != self.progress_stored else None


class LeaseKeeper(threading.Thread):
    def __init__(self, store: Store, lease_timeout: float, outage: Outage) -> None:
        super().__init__(name="lease-keeper", daemon=True)
        self.store = store
        self.lease_timeout = lease_timeout
        self.outage = outage
        self._jobs: dict[int, Tracked] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped_all: StopReason | None = None

    def track(self, lease: Lease, control: RunControl, granted_at: float) -> Tracked:
        """Keep `lease`, granted by a claim whose UPDATE went out at `granted_at` (monotonic)."""
        tracked = Tracked(lease, control, renewed_at=granted_at)
        control.fence_at = self._fence_after(granted_at)
        control.on_fenced = lambda: log.warning(
            "action=self_fence job_id=%d unrenewed_for=%.1fs: the lease could not be renewed "
            "(database unreachable, locked or not answering); killing the job before it expires",
            lease.job_id,
            time.monotonic() - tracked.renewed_at,
        )
        with self._lock:
            self._jobs[lease.job_id] = tracked
            if self._stopped_all is not None:  # claimed by a slot just as the worker stopped
                control.request_stop(self._stopped_all)
        return tracked

    def untrack(self, lease: Lease) -> None:
        with self._lock:
            self._jobs.pop(lease.job_id, None)

    def stop_all(self, reason: StopReason) -> None:
        """Stop every job, and any tracked from now on."""
        with self._lock:
            self._stopped_all = reason
            tracked = list(self._jobs.values())
        for job in tracked:
            job.control.request_stop(reason)

    def close(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.wait(TICK_SECONDS):
            try:
                self.tick(time.monotonic())
            except Exception:  # the keeper must outlive any surprise: every lease depends on it
                log.exception("action=lease_keeper_error")

    def tick(self, now: float) -> None:
        with self._lock:
            tracked = list(self._jobs.values())
        if not tracked:
            return
        try:
            self._tick(tracked, now)
            self.outage.succeeded()
        except StoreUnavailable as exc:
            self.outage.failed(exc)

    def _tick(self, tracked: list[Tracked], now: float) -> None:
        """Leases first: nothing a job reports may cost another job its lease."""
        due = [job for job in tracked if now - job.renewed_at >= self.lease_timeout / 6]
        started = {
            job.lease: job.started
            for job in tracked
            if job.started is not None and not job.started_stored
        }
        held = self.store.renew_leases([job.lease for job in due], self.lease_timeout, started)
        for job in tracked:
            job.started_stored = job.started_stored or job.lease in started
        for job in due:
            if job.lease.job_id in held:
                job.renewed_at = now  # sent at `now` or later: the new lease ends after now+L
                job.control.fence_at = self._fence_after(now)
            elif not job.control.stop_requested:
                log.warning(
                    "action=lease_lost job_id=%d unrenewed_for=%.1fs: the job was rescued "
                    "elsewhere; stopping this attempt",
                    job.lease.job_id,
                    now - job.renewed_at,
                )
                job.control.request_stop(StopReason.LEASE_LOST)
        for job_id in self.store.cancel_requested([job.lease.job_id for job in tracked]):
            with self._lock:
                cancelled = self._jobs.get(job_id)
            if cancelled is not None and not cancelled.control.stop_requested:
                log.info("action=cancel_requested job_id=%d", job_id)
                cancelled.control.request_stop(StopReason.CANCELLED)
        for job in tracked:
            progress = job.unstored_progress()
            if progress is None:
                continue
            try:
                if self.store.report_progress(job.lease, *progress):
                    job.progress_stored = progress
            except InvalidInput as exc:  # values the database refuses: drop this report
                job.progress_stored = progress
                log.warning("action=progress_refused job_id=%d error=%s", job.lease.job_id, exc)

    def _fence_after(self, renewed_at: float) -> float:
        """When to give up a lease renewed at `renewed_at`: a third of it before it expires."""
        return renewed_at + self.lease_timeout * 2 / 3
