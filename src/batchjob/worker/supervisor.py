"""The worker daemon: register, claim into free slots, keep leases, stop gracefully.

    tick: stop? → maintenance due? → claim up to the free slots → sleep until a slot frees
          or the poll interval passes.

SIGTERM/SIGINT: stop claiming, let running jobs finish within `shutdown_grace`, then stop
them and put them back to pending without using an attempt. SIGHUP: reopen the log file.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from batchjob import __version__
from batchjob.config import Settings
from batchjob.diagnosis.oom import oom_kill_count
from batchjob.errors import StoreUnavailable
from batchjob.runner import StopReason, watch
from batchjob.runner.scratch import PrivateTmp
from batchjob.runner.spawn import read_env_file, reserve_progress_fds
from batchjob.store import ClaimedJob, ClaimRequest, Store, WorkerRegistration
from batchjob.store.migrations import LATEST_VERSION
from batchjob.worker.guardian import Guardian
from batchjob.worker.leases import LeaseKeeper
from batchjob.worker.maintenance import (
    OrphanReaper,
    PeriodicService,
    Rescuer,
    ScratchSweeper,
    WorkerHeartbeat,
    sweep_stale_processes,
)
from batchjob.worker.outage import Outage
from batchjob.worker.slot import SlotContext, execute

WORKER_LOG_NAME = "batch_job_worker.log"
# Below this much free space in log_dir the worker stops claiming: a job whose log cannot be
# written is a job nobody can debug.
MIN_FREE_LOG_BYTES = 16 * 1024 * 1024
DATABASE_BACKOFF_SECONDS = (1, 2, 5, 10, 30)
# The worker's threads mostly wait (on pipes, the database, a job's exit) and then need the
# GIL at once: with Python's default of 5 ms, a slot whose job just ended waited for another
# slot's thread to be forced off it, and short jobs ran ~30 % slower (docs/benchmarks-history.md).
GIL_SWITCH_SECONDS = 0.0005
# glibc's malloc (mallopt): blocks under the first come from the heap, and freed memory past
# the second goes back to the kernel. Its defaults (128 KiB, adjusted as it goes) gave each
# chunk of a job's output back and faulted it in again: a worker's first job writing 1 GiB
# of 100-byte lines cost it 824,000 page faults and 2.9-3.5 s, with these 5,500 and 1.0-1.3 s.
MALLOC_MMAP_THRESHOLD = (-3, 1024 * 1024)
MALLOC_TRIM_THRESHOLD = (-1, 2 * 1024 * 1024)
log = logging.getLogger("batchjob.worker")


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        burst: bool = False,
    ) -> None:
        self.settings = settings
        self.concurrency = concurrency or settings.worker.concurrency
        self.queues = list(queues) if queues else settings.worker.queues
        self.burst = burst
        self.host = socket.gethostname()
        token = secrets.token_hex(3)
        self.worker_id = f"{self.host}:{os.getpid()}:{token}"
        self._scratch_root = Path(tempfile.gettempdir())
        self._scratch_name = f"batchjob-{os.getpid()}-{token}-"
        """Its jobs' TMPDIRs are `<scratch root>/<scratch name>*`: its guardian removes them if
        the worker is killed."""
        self._stopping = threading.Event()
        self._hurry = threading.Event()
        self._wake = threading.Event()
        self._slots: dict[threading.Thread, ClaimedJob] = {}
        """Each slot's thread and the job it runs now."""
        self._slot_numbers = itertools.count(1)
        self._spare_tmps: list[PrivateTmp] = []
        """TMPDIRs of slots that ended, for the next ones: not a directory made per job."""
        self._claiming_paused = False
        self._log_handler: logging.Handler | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped (or, with burst, until nothing is due); returns the exit code."""
        reserve_progress_fds(self.concurrency)  # before anything else takes the low numbers
        oom_kill_count()  # opens its counter's file for good: the descriptors stay as at start
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        _reuse_freed_memory()
        _skip_unlogged_record_fields()
        self._open_log()
        guardian = Guardian(self.worker_id, str(self._scratch_root / self._scratch_name))
        subreaper = watch.become_subreaper()
        store = Store(self.settings.database_url)
        worker = self.settings.worker
        outage = Outage()
        keeper = LeaseKeeper(store, worker.lease_timeout, outage)
        context = SlotContext(
            settings=self.settings,
            store=store,
            keeper=keeper,
            guardian=guardian,
            worker_id=self.worker_id,
            base_env=self._base_environment(),
            shutting_down=self._stopping,
            outage=outage,
            next_claim=self._next_claim,
            job_log_dir=str(self.settings.job_log_dir.absolute()),
        )
        services = (
            Rescuer(store, self.host, worker.lease_timeout, worker.max_lost_attempts),
            WorkerHeartbeat(store, self.worker_id),
            OrphanReaper(),
            ScratchSweeper(store, self.host, self._scratch_root),
        )
        self._install_signal_handlers()
        log.info(
            "action=worker_started worker_id=%s pid=%d version=%s concurrency=%d queues=%s "
            "database=%s driver=%s subreaper=%s",
            self.worker_id, os.getpid(), __version__, self.concurrency,
            ",".join(self.queues) if self.queues else "*", store.display_url,
            store.url.drivername, subreaper,
        )  # fmt: skip
        self._register(store, outage)
        self._warn_if_schema_is_old(store)
        for leftover in sweep_stale_processes(self.host):
            log.warning("action=stale_process_killed %s: its job is no longer held here", leftover)
        keeper.start()
        stop_listening = store.listen_for_jobs(self._wake.set, self.worker_id.replace(":", "-"))
        try:
            self._loop(store, context, services, outage)
        finally:
            if stop_listening is not None:
                stop_listening()
            self._shut_down(keeper)
            for tmp in self._spare_tmps:
                tmp.remove()
            keeper.close()
            guardian.close()
            with contextlib.suppress(StoreUnavailable):
                store.worker_seen(self.worker_id, stopped=True)
            store.close()
            log.info("action=worker_stopped worker_id=%s", self.worker_id)
        return 0

    def _loop(
        self,
        store: Store,
        context: SlotContext,
        services: Sequence[PeriodicService],
        outage: Outage,
    ) -> None:
        database_failures = 0
        while not self._stopping.is_set():
            self._collect_finished()
            try:
                for service in services:
                    service.run_if_due(time.monotonic())
                free = self.concurrency - len(self._slots)
                self._claiming_paused = self._log_space_low(self._claiming_paused)
                if free > 0 and not self._claiming_paused:
                    for claimed in store.claim(
                        self.worker_id, self.queues, free, self.settings.worker.lease_timeout
                    ):
                        self._start(claimed, context)
                if self.burst and not self._slots and not store.has_due_jobs(self.queues):
                    log.info("action=burst_done worker_id=%s", self.worker_id)
                    return
                outage.succeeded()
                database_failures = 0
                delay = self.settings.worker.poll_interval
            except StoreUnavailable as exc:
                outage.failed(exc)
                delay = DATABASE_BACKOFF_SECONDS[
                    min(database_failures, len(DATABASE_BACKOFF_SECONDS) - 1)
                ]
                database_failures += 1
            # Even with every slot busy: the rescuer, heartbeat and reaper must keep running.
            self._wake.wait(delay)
            self._wake.clear()

    def _start(self, claimed: ClaimedJob, context: SlotContext) -> None:
        """A slot: runs the job, then each next one claimed with its predecessor's outcome."""
        spare = self._spare_tmps
        tmp = spare.pop() if spare else PrivateTmp(self._scratch_name, self._scratch_root)

        def work() -> None:
            current: ClaimedJob | None = claimed
            try:
                while current is not None:
                    self._slots[threading.current_thread()] = current
                    try:
                        following = execute(current, context, tmp)
                    except Exception:
                        log.exception("action=slot_crashed job_id=%d", current.job.id)
                        following = None
                    if following is not None and len(self._slots) < self.concurrency:
                        self._wake.set()  # there is work: the idle slots may claim too
                    current = following
            finally:
                self._spare_tmps.append(tmp)
                self._wake.set()

        thread = threading.Thread(target=work, name=f"slot{next(self._slot_numbers)}", daemon=True)
        self._slots[thread] = claimed
        thread.start()

    def _next_claim(self) -> ClaimRequest | None:
        """What a slot whose job ended asks for with its outcome: one more, unless stopping."""
        if self._stopping.is_set() or self._claiming_paused:
            return None
        return ClaimRequest(self.worker_id, self.queues, 1, self.settings.worker.lease_timeout)

    def _collect_finished(self) -> None:
        for thread in list(self._slots):
            if not thread.is_alive():
                thread.join()
                del self._slots[thread]

    def _shut_down(self, keeper: LeaseKeeper) -> None:
        """Let running jobs finish within shutdown_grace, then stop and release them."""
        self._stopping.set()
        if not self._slots:
            return
        grace = self.settings.worker.shutdown_grace
        log.info("action=shutdown_waiting jobs=%d grace=%gs", len(self._slots), grace)
        deadline = time.monotonic() + grace
        while self._slots and time.monotonic() < deadline and not self._hurry.is_set():
            self._wake.wait(min(0.2, max(deadline - time.monotonic(), 0)))
            self._wake.clear()
            self._collect_finished()
        for claimed in list(self._slots.values()):
            log.info("action=shutdown_stopping job_id=%d", claimed.job.id)
        keeper.stop_all(StopReason.SHUTDOWN)
        for thread in list(self._slots):
            thread.join()
        self._collect_finished()

    # ---- set-up -----------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            if self._stopping.is_set():
                self._hurry.set()  # a second signal: do not wait out the grace period
            log.info("action=signal signal=%s: stopping", signal.Signals(signum).name)
            self._stopping.set()
            self._wake.set()

        def reopen(_signum: int, _frame: FrameType | None) -> None:
            self._open_log()
            log.info("action=log_reopened")

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reopen)

    def _open_log(self) -> None:
        """(Re)open <log_dir>/batch_job_worker.log; SIGHUP calls this after logrotate."""
        path = self.settings.log_dir / WORKER_LOG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(
            _SecondsFormatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z")
        )
        log.setLevel(logging.INFO)
        log.addHandler(handler)
        if self._log_handler is not None:
            log.removeHandler(self._log_handler)
            self._log_handler.close()
        else:
            console = logging.StreamHandler()
            console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
            log.addHandler(console)
        self._log_handler = handler

    def _base_environment(self) -> dict[str, str]:
        env_file = self.settings.worker.env_file
        return read_env_file(env_file) if env_file is not None else dict(os.environ)

    def _register(self, store: Store, outage: Outage) -> None:
        """Register in batch_job_workers, waiting for a database that is not there yet."""
        registration = WorkerRegistration(
            worker_id=self.worker_id,
            host=self.host,
            pid=os.getpid(),
            version=__version__,
            queues=self.queues,
            concurrency=self.concurrency,
        )
        for failures in itertools.count():
            try:
                store.register_worker(registration)
                outage.succeeded()
                return
            except StoreUnavailable as exc:
                outage.failed(exc)
                pause = DATABASE_BACKOFF_SECONDS[min(failures, len(DATABASE_BACKOFF_SECONDS) - 1)]
                if self._stopping.wait(pause):
                    raise

    @staticmethod
    def _warn_if_schema_is_old(store: Store) -> None:
        """The worker runs on an older schema, but without what the newer steps add (on
        PostgreSQL since step 2: being woken by enqueues); say so where an operator looks."""
        with contextlib.suppress(StoreUnavailable):
            version = store.schema_version()
            if version < LATEST_VERSION:
                log.warning(
                    "action=schema_outdated version=%d latest=%d: run `batchjob init` "
                    "(safe to repeat) to upgrade it",
                    version, LATEST_VERSION,
                )  # fmt: skip

    def _log_space_low(self, reported: bool) -> bool:
        try:
            free = shutil.disk_usage(self.settings.log_dir).free
        except OSError:
            return False
        low = free < MIN_FREE_LOG_BYTES
        if low and not reported:
            log.warning(
                "action=claiming_paused free_bytes=%d log_dir=%s: below %d bytes",
                free, self.settings.log_dir, MIN_FREE_LOG_BYTES,
            )  # fmt: skip
        elif reported and not low:
            log.info("action=claiming_resumed free_bytes=%d", free)
        return low


class _SecondsFormatter(logging.Formatter):
    """Formats a second's time once: its lines show no finer time, and a worker writes
    two lines a job. Called with its handler's lock held, so one thread at a time."""

    _second = -1
    _formatted = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._formatted = second, super().formatTime(record, datefmt)
        return self._formatted


def _reuse_freed_memory() -> None:
    """The worker's malloc keeps up to 2 MiB freed for the next chunk of output; where the
    C library has no mallopt (not glibc), its own defaults stay."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    for option, value in (MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD):
        mallopt(option, value)


def _skip_unlogged_record_fields() -> None:
    """Records without their caller, thread and process: the worker's formats show none.

    The logging HOWTO's optimisations; two lines a job, each then skips a walk up the
    stack, a thread lookup and a getpid() call.
    """
    logging._srcfile = None  # the documented switch (logging HOWTO, Optimization)
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
