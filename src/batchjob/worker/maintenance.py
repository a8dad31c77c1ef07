"""Small periodic services of a worker, each with an interval and a testable `run_once()`."""

from __future__ import annotations

import logging
import os
import re
import signal
from collections import Counter
from pathlib import Path

import psutil

from batchjob.model import Job
from batchjob.runner import watch
from batchjob.runner.scratch import remove_scratch
from batchjob.store import Store

log = logging.getLogger("batchjob.worker")


class PeriodicService:
    """A maintenance task the worker's loop runs every `interval` seconds."""

    interval: float = 10.0
    _next_run: float = 0.0

    def run_if_due(self, now: float) -> None:
        if now >= self._next_run:
            self._next_run = now + self.interval
            self.run_once()

    def run_once(self) -> object:
        raise NotImplementedError


class WorkerHeartbeat(PeriodicService):
    """Keep `batch_job_workers.last_seen` current, for `doctor` and operators."""

    def __init__(self, store: Store, worker_id: str) -> None:
        self.store = store
        self.worker_id = worker_id

    def run_once(self) -> None:
        self.store.worker_seen(self.worker_id)


class OrphanReaper(PeriodicService):
    """Collect the exit status of orphans the worker adopted as a subreaper (no zombies)."""

    interval = 1.0

    def run_once(self) -> int:
        return watch.reap_adopted()


class ScratchSweeper(PeriodicService):
    """Remove the job TMPDIRs of this host's workers that died with their guardian.

    A worker's TMPDIRs are `<root>/batchjob-<pid>-<token>-*`, after its id
    `<host>:<pid>:<token>`; its guardian removes them when the worker is killed, but not when
    both are (a unit's SIGKILL, an OOM kill of the whole unit). One is removed here only when
    the registry says that worker of this host stopped or has been silent for SILENT_SECONDS
    (a live one checks in every 10 s), and no process here with its pid is older than the
    directory: /tmp may be shared with another pid namespace, whose pids mean nothing here.
    """

    interval = 60.0
    SILENT_SECONDS = 60.0
    NAME = re.compile(r"batchjob-(\d+)-([0-9a-f]+)-[^/]+")

    def __init__(self, store: Store, host: str, root: Path) -> None:
        self.store, self.host, self.root = store, host, root

    def run_once(self) -> list[Path]:
        owners: dict[str, list[Path]] = {}
        try:
            with os.scandir(self.root) as listing:
                for entry in listing:
                    if matched := self.NAME.fullmatch(entry.name):
                        pid, token = matched.groups()
                        owner = f"{self.host}:{pid}:{token}"
                        owners.setdefault(owner, []).append(Path(entry.path))
        except OSError:
            return []
        removed = []
        for worker_id in self.store.gone_workers(list(owners), self.SILENT_SECONDS):
            pid = int(worker_id.split(":")[1])
            for path in owners[worker_id]:
                if not _running_since_before(pid, path):
                    remove_scratch(path)
                    removed.append(path)
        if removed:
            log.warning(
                "action=stale_tmpdirs_removed count=%d: left by workers killed with their guardian",
                len(removed),
            )
        return removed


def _running_since_before(pid: int, path: Path) -> bool:
    """A process `pid` runs here and is older than `path`'s last change: maybe its owner."""
    try:
        return bool(psutil.Process(pid).create_time() <= os.lstat(path).st_mtime)
    except (psutil.Error, OSError):
        return False


class Rescuer(PeriodicService):
    """Rescue jobs whose lease expired (by the database clock), faster than any lease.

    A rescued attempt that ran on this host is killed first — every process carrying its
    BATCH_JOB_ID — so that it cannot run beside the next attempt.
    """

    def __init__(self, store: Store, host: str, lease_timeout: float, max_lost_attempts: int):
        self.store = store
        self.host = host
        self.interval = max(min(lease_timeout / 4, 5.0), 0.2)
        self.max_lost_attempts = max_lost_attempts

    def run_once(self) -> list[Job]:
        killed: dict[str, int] = {}
        rescued = self.store.rescue_expired(
            self.max_lost_attempts, lambda expired: killed.update(self._end_here(expired))
        )
        for job in rescued:
            log.warning(
                "action=rescued job_id=%d attempt=%d previous_worker=%s status=%s "
                "stale_processes_killed=%d",
                job.id, job.attempt, job.worker_id, job.status, killed.get(str(job.id), 0),
            )  # fmt: skip
        return rescued

    def _end_here(self, expired: list[tuple[int, str | None]]) -> dict[str, int]:
        """SIGKILL the processes of those expired attempts that ran on this host, by job id."""
        here = {
            (str(job_id), worker_id)
            for job_id, worker_id in expired
            if worker_id is not None and _host_of(worker_id) == self.host
        }
        if not here:
            return {}
        stale = [
            (process, env["BATCH_JOB_ID"])
            for process, env in _job_processes()
            if (env.get("BATCH_JOB_ID"), env.get("BATCH_JOB_WORKER")) in here
        ]
        watch.signal_all([process for process, _job_id in stale], signal.SIGKILL)
        if stale:
            watch.reap_adopted()
        return dict(Counter(job_id for _process, job_id in stale))


def sweep_stale_processes(host: str) -> list[str]:
    """At start-up: kill job processes whose worker on this host is gone.

    The guardian normally ends them with their worker; this catches what it could not
    (the guardian killed too, say by an OOM kill of the whole unit). A process is judged by
    the BATCH_JOB_WORKER it carries, so another installation's jobs are never touched.
    """
    stale = []
    for process, env in _job_processes():
        worker_id = env.get("BATCH_JOB_WORKER", "")
        if _host_of(worker_id) != host or _worker_alive(worker_id, process):
            continue
        stale.append(process)
    watch.signal_all(stale, signal.SIGKILL)
    return [watch.describe(process) for process in stale]


def _job_processes() -> list[tuple[psutil.Process, dict[str, str]]]:
    """Every process we may inspect that carries a BATCH_JOB_ID, with its environment."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            env = process.environ()
        except psutil.Error:
            continue
        if "BATCH_JOB_ID" in env:
            found.append((process, env))
    return found


def _worker_alive(worker_id: str, job_process: psutil.Process) -> bool:
    """Whether the worker that started `job_process` still runs (not a reused pid)."""
    parts = worker_id.split(":")
    if len(parts) != 3 or not parts[1].isdigit():
        return True  # not ours to judge
    try:
        worker = psutil.Process(int(parts[1]))
        return bool(worker.create_time() <= job_process.create_time())
    except psutil.Error:
        return False


def _host_of(worker_id: str | None) -> str | None:
    return worker_id.split(":", 1)[0] if worker_id else None
