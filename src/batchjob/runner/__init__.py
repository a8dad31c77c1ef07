"""Run one attempt of a job to its end; knows nothing of the database.

`run(spec, control)` spawns the command, drains its output into the job log while it runs,
applies the timeout and stop requests to the whole tree, ends leftover descendants, and
returns a `RunResult` with the evidence: exit status, who stopped it, peaks, stderr's tail.
One thread, one loop: the pipes are read in the same loop that watches the clock, so the
child can never block on a pipe, not even while it is being stopped.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import resource
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from batchjob.runner import watch
from batchjob.runner.pump import JobLog
from batchjob.runner.scratch import PrivateTmp, TmpdirUnavailable
from batchjob.runner.spawn import OUTPUT_PIPE_BYTES, SpawnRequest, start

# A read takes what a full pipe holds: a job writing fast then costs a quarter of the reads
# and log writes it did with 64 KiB (1 GiB through the worker: 0.96-1.04 s, now 0.60-0.64 s).
CHUNK_BYTES = OUTPUT_PIPE_BYTES
SAMPLE_EVERY_SECONDS = 1.0
FIRST_SAMPLE_SECONDS = 0.2  # a job that ends sooner costs no walk of its tree
STDERR_TAIL_BYTES = 8 * 1024
STDERR_TAIL_LINES = 10
MAX_PROGRESS_LINE = 64 * 1024
MAX_PROGRESS_MESSAGE = 2000  # characters: well within MariaDB's 64 KiB TEXT in UTF-8
INT64 = (-(2**63), 2**63 - 1)
LOOP_SECONDS = 0.25
EXIT = "exit"  # what the main process's pidfd is watched as
CPU_ACTIVITY_SECONDS = 0.02  # CPU time of the tree that counts as "moving" between samples


class StopReason(enum.StrEnum):
    """Why the worker ended a running job (None in RunResult: it ended by itself)."""

    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"
    LEASE_LOST = "lease_lost"
    MEMORY_LIMIT = "memory_limit"
    STALLED = "stalled"


ProgressCallback = Callable[[str | None, int | None, int | None], None]
StallCallback = Callable[[bool, float, list[int]], None]
"""(stalled now?, seconds without activity, the tree's pids) when a job stalls or moves again."""
OutputCallback = Callable[[str, bytes], None]


class RunControl:
    """The worker's side of a running job: ask it to stop; hear its pid and progress."""

    def __init__(
        self,
        on_progress: ProgressCallback | None = None,
        on_started: Callable[[int], None] | None = None,
        on_stall: StallCallback | None = None,
        on_output: OutputCallback | None = None,
    ) -> None:
        self.on_progress = on_progress or (lambda message, current, total: None)
        self.on_started = on_started or (lambda pid: None)
        self.on_stall = on_stall or (lambda stalled, idle, pids: None)
        self.on_output = on_output
        self.fence_at: float | None = None
        """Monotonic time at which the job's lease is given up: the runner kills the job then,
        whatever the thread that renews leases is doing (stuck in a database call, say)."""
        self.on_fenced: Callable[[], None] = lambda: None
        # A lock, not an Event: nothing waits for the request, and an Event's Condition cost
        # 2 % of a worker's GIL time on /bin/true jobs (one RunControl a job).
        self._stop_lock = threading.Lock()
        self.stop_reason: StopReason | None = None

    def request_stop(self, reason: StopReason) -> None:
        """Thread-safe; the first reason wins."""
        with self._stop_lock:
            if self.stop_reason is None:
                self.stop_reason = reason

    @property
    def stop_requested(self) -> bool:
        return self.stop_reason is not None


@dataclass(frozen=True)
class JobSpec:
    spawn: SpawnRequest
    log_path: str
    """A string, not a Path: made for every job, and pathlib's parsing cost a short job's
    worker 2 % of its GIL time."""
    max_log_bytes: int
    timeout: float | None
    kill_grace: float
    drain_grace: float
    tmp: PrivateTmp | None = None
    """The job's TMPDIR, kept by the caller (a worker slot's) and emptied after the run;
    None: one made for this run alone and removed after it."""
    memory_limit: int | None = None
    """Bytes of RSS for the whole tree; past it, the tree is stopped."""
    stall_timeout: float | None = None
    """Seconds with no output, no progress and no CPU in the tree before the job is stalled."""
    stall_action: str = "diagnose"
    """"diagnose": tell the worker (on_stall) and go on; "kill": also stop the tree."""


@dataclass
class RunResult:
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    stopped_by: StopReason | None = None
    spawn_error: str | None = None
    duration: float = 0.0
    peak_rss_bytes: int | None = None
    """None until the tree was first sampled (0.2 s in): unknown, not zero."""
    peak_open_fds: int | None = None
    peak_processes: int | None = None
    peak_threads: int | None = None
    cpu_seconds: float = 0.0
    leftovers: list[str] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    log_error: str | None = None
    fd_limit: int | None = None
    """The soft RLIMIT_NOFILE the job started with (inherited from the worker)."""

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and self.stopped_by is None and self.spawn_error is None


def run(spec: JobSpec, control: RunControl) -> RunResult:
    """Run the attempt to its end; never raises for anything the job or the disk does."""
    tmp = spec.tmp or PrivateTmp()
    try:
        return _run(spec, control, tmp)
    finally:
        if spec.tmp is None:
            tmp.remove()
        else:
            tmp.reset()


def _run(spec: JobSpec, control: RunControl, tmp: PrivateTmp) -> RunResult:
    started = time.monotonic()
    result = RunResult()
    try:
        with watch.spawn_gate.spawning():
            if _fenced(control, result):  # the worker was frozen between claim and start
                _log_only(spec, "[batchjob: the job's lease ran out before it could start]")
                return result
            if control.stop_requested:  # stopped (the worker is shutting down) before it ran
                result.stopped_by = control.stop_reason
                _log_only(spec, f"[batchjob: not started: {control.stop_reason}]")
                return result
            spawned = start(spec.spawn, tmp.path)
            watch.register_own_child(spawned.process.pid)
            if _fenced(control, result):  # frozen while starting it: before it runs any code
                spawned.process.kill()  # at once; then whatever it may have started
                watch.signal_all(
                    watch.job_processes(spawned.process.pid, spec.spawn.job_id), signal.SIGKILL
                )
    except (OSError, ValueError) as exc:
        result.spawn_error = _spawn_error(spec, exc)
        result.env = {**spec.spawn.base_env, **spec.spawn.env}  # what it would have had
        _log_only(spec, f"[batchjob: cannot start the job: {result.spawn_error}]")
        return result
    # Made once the job runs, its output waiting in the pipes meanwhile: not on its way to the
    # start (creating the file took 0.16 ms of an idle worker's way to it on PostgreSQL).
    log = JobLog(spec.log_path, spec.max_log_bytes)
    result.pid, result.env = spawned.process.pid, spawned.env
    result.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    control.on_started(spawned.process.pid)
    try:
        _Attempt(spec, control, log, result, spawned.process).drive(
            {spawned.stdout: "stdout", spawned.stderr: "stderr", spawned.progress: "progress"}
        )
    finally:
        watch.forget_own_child(spawned.process.pid)
        result.duration = time.monotonic() - started
        result.log_error = log.disk_error
        log.close()
    return result


def _log_only(spec: JobSpec, message: str) -> None:
    """The log of an attempt that did not run: batchjob's word on why."""
    log = JobLog(spec.log_path, spec.max_log_bytes)
    log.note(message)
    log.close()


def _fenced(control: RunControl, result: RunResult) -> bool:
    """Has the lease's fence passed? Then the attempt must not run (another may already)."""
    if control.fence_at is None or time.monotonic() < control.fence_at:
        return False
    control.request_stop(StopReason.LEASE_LOST)
    control.on_fenced()
    result.stopped_by = StopReason.LEASE_LOST
    return True


class _Attempt:
    """The loop of one running attempt: read, watch the clock, stop the tree when asked."""

    def __init__(
        self,
        spec: JobSpec,
        control: RunControl,
        log: JobLog,
        result: RunResult,
        process: subprocess.Popen[bytes],
    ) -> None:
        self.spec, self.control, self.log, self.result = spec, control, log, result
        self.process = process
        self.job_id = spec.spawn.job_id
        self.started = time.monotonic()
        self.deadline = None if spec.timeout is None else self.started + spec.timeout
        self.exited_at: float | None = None
        # Killed already when the lease's fence passed as it started (see `run`).
        self.killed = result.stopped_by is StopReason.LEASE_LOST
        self.term_sent_at: float | None = self.started if self.killed else None
        self.next_sample = self.started + FIRST_SAMPLE_SECONDS
        self.stderr_tail = b""
        self.progress_buffer = b""
        self.last_activity = self.started
        self.last_cpu = 0.0
        self.stalled = False
        self.skipping_long_line = False
        self.dropped_progress = 0

    def drive(self, pipes: Mapping[int, str]) -> None:
        """Until the pipes are closed and the main process has exited, whichever is last.

        A process that closes its output and runs on is still timed out and stopped: its
        exit is watched through a pidfd (or polled where the kernel has none).
        """
        watched = _Watched()
        for descriptor, stream in pipes.items():
            os.set_blocking(descriptor, False)
            watched.add(descriptor, stream)
        polling_exit = True
        with contextlib.suppress(OSError, AttributeError):  # Linux >= 5.3
            watched.add(os.pidfd_open(self.process.pid), EXIT)
            polling_exit = False
        try:
            while watched.streams or self.process.poll() is None:
                for descriptor, stream in watched.ready(LOOP_SECONDS):
                    if stream == EXIT:
                        watched.drop(descriptor)
                        self.process.poll()
                    else:
                        self._read(watched, descriptor, stream)
                self._watch(watched, polling_exit)
        finally:
            watched.close()
        self._finish()

    def _read(self, watched: _Watched, descriptor: int, stream: str) -> None:
        try:
            data = os.read(descriptor, CHUNK_BYTES)
        except BlockingIOError:
            return
        if not data:
            watched.drop(descriptor)
            if stream == "progress" and self.progress_buffer and not self.skipping_long_line:
                self._progress_line(self.progress_buffer)
            return
        self.last_activity = time.monotonic()
        if self.stalled:
            self._moving_again([self.process.pid])
        if stream == "progress":
            self._progress(data)
            return
        self.log.write(stream, data)
        if self.control.on_output is not None:
            self.control.on_output(stream, data)
        if stream == "stderr":
            self.stderr_tail = (self.stderr_tail + data[-STDERR_TAIL_BYTES:])[-STDERR_TAIL_BYTES:]

    def _watch(self, watched: _Watched, polling_exit: bool) -> None:
        """`polling_exit`: no pidfd tells of the main process's exit, so ask (a system call,
        not made at every chunk of output where the pidfd tells)."""
        now = time.monotonic()
        exit_code = self.process.poll() if polling_exit else self.process.returncode
        if self.exited_at is None and exit_code is not None:
            self.exited_at = now
        if now >= self.next_sample:
            self._sample(now)
            self.next_sample = now + SAMPLE_EVERY_SECONDS
        if self.exited_at is None:
            if self.deadline is not None and now >= self.deadline:
                self.control.request_stop(StopReason.TIMEOUT)
            fence_at = self.control.fence_at
            if fence_at is not None and now >= fence_at and not self.killed:
                self.control.request_stop(StopReason.LEASE_LOST)
                self.control.on_fenced()
                self._kill_tree("the job's lease could not be renewed in time")
            if self.control.stop_requested:
                self._stop_tree(now)
        elif now - self.exited_at >= self.spec.drain_grace and watched.streams:
            self._end_leftovers("kept the output pipes open after the job's main process exited")
            watched.drop_all()

    def _stop_tree(self, now: float) -> None:
        """SIGTERM the whole tree, then SIGKILL after kill_grace; never blocks the pump."""
        if self.term_sent_at is None:
            self.term_sent_at = now
            self.result.stopped_by = self.control.stop_reason
            if self.control.stop_reason == StopReason.LEASE_LOST:
                # Another attempt may start as soon as the lease is gone: no grace period.
                self._kill_tree("the job's lease is lost")
                return
            reason = self.control.stop_reason.value if self.control.stop_reason else "stop"
            self.log.note(f"[batchjob: stopping the job ({reason}): SIGTERM to its processes]")
            watch.signal_all(watch.job_processes(self.process.pid, self.job_id), signal.SIGTERM)
        elif not self.killed and now - self.term_sent_at >= self.spec.kill_grace:
            self.killed = True
            survivors = watch.job_processes(self.process.pid, self.job_id)
            self.log.note(
                f"[batchjob: {len(survivors)} process(es) outlived SIGTERM by "
                f"{self.spec.kill_grace:g}s: SIGKILL]"
            )
            watch.signal_all(survivors, signal.SIGKILL)

    def _kill_tree(self, why: str) -> None:
        self.killed = True
        if self.term_sent_at is None:
            self.term_sent_at = time.monotonic()
            self.result.stopped_by = self.control.stop_reason
        self.log.note(f"[batchjob: {why}: SIGKILL to its processes]")
        watch.signal_all(watch.job_processes(self.process.pid, self.job_id), signal.SIGKILL)

    def _end_leftovers(self, why: str) -> None:
        """After the main process has exited and been waited for."""
        leftovers = watch.job_processes(self.process.pid, self.job_id, root_reaped=True)
        if leftovers and self.term_sent_at is not None:
            # Already sent SIGTERM (or SIGKILL) with the rest of the tree: they are on their
            # way out, not leftovers; give them what is left of their grace.
            remaining = self.spec.kill_grace - (time.monotonic() - self.term_sent_at)
            leftovers = watch.wait_gone(leftovers, max(remaining, 0.5))
        if not leftovers:
            return
        described = [watch.describe(process) for process in leftovers]
        self.result.leftovers.extend(described)
        self.log.note(
            f"[batchjob: {len(leftovers)} leftover process(es) {why}: "
            f"{', '.join(described)}; terminating them]"
        )
        watch.terminate(leftovers, self.spec.kill_grace)

    def _sample(self, now: float) -> None:
        processes = watch.job_processes(self.process.pid, self.job_id)
        tree = watch.sample(processes)
        if tree.rss_bytes == 0:  # gone, zombies, or exiting (memory already freed): no figure
            return
        result = self.result
        if tree.fd_limit is not None:
            result.fd_limit = tree.fd_limit
        result.peak_rss_bytes = max(result.peak_rss_bytes or 0, tree.rss_bytes)
        result.peak_open_fds = max(result.peak_open_fds or 0, tree.open_fds)
        result.peak_processes = max(result.peak_processes or 0, tree.processes)
        result.peak_threads = max(result.peak_threads or 0, tree.threads)
        result.cpu_seconds = max(result.cpu_seconds, tree.cpu_seconds)
        limit = self.spec.memory_limit
        if limit is not None and tree.rss_bytes > limit and not self.control.stop_requested:
            self.log.note(
                f"[batchjob: the job's processes use {tree.rss_bytes} bytes of RSS, over its "
                f"memory_limit of {limit}: stopping it]"
            )
            self.control.request_stop(StopReason.MEMORY_LIMIT)
        if abs(tree.cpu_seconds - self.last_cpu) > CPU_ACTIVITY_SECONDS:
            self.last_cpu = tree.cpu_seconds
            self.last_activity = now
        self._judge_stall(now, [process.pid for process in processes])

    def _judge_stall(self, now: float, pids: list[int]) -> None:
        """No output, progress or CPU for stall_timeout: stalled; any of them again: moving."""
        if self.spec.stall_timeout is None or self.exited_at is not None:
            return
        idle = now - self.last_activity
        if not self.stalled and idle >= self.spec.stall_timeout:
            self.stalled = True
            self.log.note(f"[batchjob: stalled: no output, progress or CPU for {idle:.0f}s]")
            self.control.on_stall(True, idle, pids)
            if self.spec.stall_action == "kill":
                self.control.request_stop(StopReason.STALLED)
        elif self.stalled and idle < self.spec.stall_timeout:
            self._moving_again(pids)

    def _moving_again(self, pids: list[int]) -> None:
        self.stalled = False
        self.log.note("[batchjob: moving again]")
        self.control.on_stall(False, 0.0, pids)

    def _finish(self) -> None:
        returncode = self.process.wait()
        self._end_leftovers("were still running when the job ended")
        result = self.result
        if returncode < 0:
            result.signal = -returncode
        else:
            result.exit_code = returncode
        tail = self.stderr_tail.decode("utf-8", "replace").splitlines()
        result.stderr_tail = [line for line in tail if line.strip()][-STDERR_TAIL_LINES:]
        if self.dropped_progress:
            self.log.note(f"[batchjob: ignored {self.dropped_progress} malformed progress line(s)]")

    def _progress(self, data: bytes) -> None:
        self.progress_buffer += data
        *lines, self.progress_buffer = self.progress_buffer.split(b"\n")
        if self.skipping_long_line and lines:
            lines.pop(0)  # the end of the over-long line, already counted
            self.skipping_long_line = False
        if len(self.progress_buffer) > MAX_PROGRESS_LINE:
            self.progress_buffer = b""
            if not self.skipping_long_line:
                self.dropped_progress += 1
                self.skipping_long_line = True
        for line in lines:
            self._progress_line(line)

    def _progress_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            if len(line) > MAX_PROGRESS_LINE:
                raise ValueError("too long")
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
            message = record.get("message")
            current, total = record.get("current"), record.get("total")
            if message is not None:
                message = _storable(message)
            for count in (current, total):
                if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
                    raise ValueError("counts must be integers")
                if count is not None and not INT64[0] <= count <= INT64[1]:
                    raise ValueError("counts must fit in 64 bits")
        except (ValueError, RecursionError):
            self.dropped_progress += 1
            if self.dropped_progress <= 3:
                shown = line[:200].decode("utf-8", "replace")
                self.log.note(f"[batchjob: ignored a progress line that is not valid: {shown}]")
            return
        self.control.on_progress(message, current, total)


class _Watched:
    """The attempt's pipes and its main process's pidfd, on one epoll; each descriptor is
    closed when dropped. What `selectors` does, without its Python in every call: this runs
    a few times for every job."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self.streams: dict[int, str] = {}
        """The descriptors watched, and what each is: a stream's name or EXIT."""

    def add(self, descriptor: int, stream: str) -> None:
        self._epoll.register(descriptor, select.EPOLLIN)
        self.streams[descriptor] = stream

    def drop(self, descriptor: int) -> None:
        self._epoll.unregister(descriptor)
        del self.streams[descriptor]
        os.close(descriptor)

    def ready(self, timeout: float) -> list[tuple[int, str]]:
        """The descriptors with something to read (or closed), waiting up to `timeout`."""
        streams = self.streams
        return [(descriptor, streams[descriptor]) for descriptor, _ in self._epoll.poll(timeout)]

    def drop_all(self) -> None:
        for descriptor in list(self.streams):
            self.drop(descriptor)

    def close(self) -> None:
        self.drop_all()
        self._epoll.close()


def _storable(message: object) -> str:
    """A message every database can hold: text, UTF-8, no NUL, at most a few KB."""
    text = message if isinstance(message, str) else json.dumps(message, ensure_ascii=False)
    # Unpaired surrogates (from \udcff escapes) and NUL become U+FFFD.
    text = (
        text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\0", "\ufffd")
    )
    return text if len(text) <= MAX_PROGRESS_MESSAGE else text[: MAX_PROGRESS_MESSAGE - 1] + "…"


def _spawn_error(spec: JobSpec, exc: Exception) -> str:
    if isinstance(exc, TmpdirUnavailable):
        return str(exc)
    command = spec.spawn.command[0] if spec.spawn.command else "?"
    if isinstance(exc, FileNotFoundError) and spec.spawn.cwd and not os.path.isdir(spec.spawn.cwd):
        return f"the working directory {spec.spawn.cwd} does not exist"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{command}: {exc.strerror}"
    return f"{command}: {exc}"
