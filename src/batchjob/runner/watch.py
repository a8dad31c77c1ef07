"""The job's process tree: find it, measure it, end it.

The worker is a child subreaper, so every descendant of a job — even a double-forked daemon
whose parent exited — stays below the worker. A process belongs to job J when it descends
from J's main process, or when the worker adopted it and it is in J's session or carries
J's BATCH_JOB_ID. The tree is walked through /proc/<pid>/task/*/children, so its cost
follows the size of the worker's tree, not the number of processes on the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import psutil

PR_SET_CHILD_SUBREAPER = 36
_POLL_SECONDS = 0.05
_own_children: set[int] = set()
"""Processes the worker started and waits for itself (jobs' main processes, its guardian):
never orphans of a job."""


class SpawnGate:
    """Spawns run side by side; the reaper of adopted orphans runs alone.

    A process is registered as the worker's own child only once Popen has returned, so a
    reaper running meanwhile could collect a short job's exit status before Popen can. Slots
    need not wait for each other's spawns, though: one lock for both made each slot wait for
    the other's spawn for an eighth of its time (py-spy, /bin/true jobs). A reaper that wants
    in holds new spawns back, so that busy slots never starve it.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._spawning = 0
        self._reaping = False

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """Around starting a process and `register_own_child`."""
        with self._condition:
            self._condition.wait_for(lambda: not self._reaping)
            self._spawning += 1
        try:
            yield
        finally:
            with self._condition:
                self._spawning -= 1
                if not self._spawning:
                    self._condition.notify_all()

    @contextlib.contextmanager
    def reaping(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._reaping)
            self._reaping = True
            self._condition.wait_for(lambda: not self._spawning)
        try:
            yield
        finally:
            with self._condition:
                self._reaping = False
                self._condition.notify_all()


spawn_gate = SpawnGate()


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux ≥ 3.4); False where the kernel refuses."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def register_own_child(pid: int) -> None:
    """Call within `spawn_gate.spawning()`, right after the process was created."""
    _own_children.add(pid)


def forget_own_child(pid: int) -> None:
    """Call once the worker has waited for it. No lock: the reaper only looks the pid up
    (and a slot thread waiting here for another slot's spawn was a tenth of its time)."""
    _own_children.discard(pid)


def reap_adopted() -> int:
    """Collect the exit status of orphans the worker adopted; returns how many were reaped."""
    reaped = 0
    with spawn_gate.reaping():
        for pid in adopted(os.getpid()):
            if pid in _own_children:
                continue
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            reaped += done != 0
    return reaped


def children(pid: int) -> list[int]:
    """The direct children of `pid` (every thread's), without scanning all of /proc."""
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for thread in threads:
        try:
            found.extend(map(int, read_kernel_file(f"/proc/{pid}/task/{thread}/children").split()))
        except FileNotFoundError:
            continue
        except OSError:  # a kernel without CONFIG_PROC_CHILDREN: ask psutil (a full scan)
            try:
                return [child.pid for child in psutil.Process(pid).children()]
            except psutil.Error:
                return []
    return found


def adopted(pid: int) -> list[int]:
    """The children of subreaper `pid`'s main thread, where the kernel puts every orphan it
    adopts (the thread group's first live thread), and where no job's main process is: slot
    threads start those. One file to read at each job's end, not one per worker thread."""
    try:
        return list(map(int, read_kernel_file(f"/proc/{pid}/task/{pid}/children").split()))
    except FileNotFoundError:
        return []
    except OSError:
        return children(pid)


def descendants(pid: int) -> list[int]:
    found, pending = [], children(pid)
    while pending:
        child = pending.pop()
        found.append(child)
        pending.extend(children(child))
    return found


def job_processes(
    root_pid: int, job_id: int, worker_pid: int | None = None, *, root_reaped: bool = False
) -> list[psutil.Process]:
    """The live processes of the job whose main process is (or was) `root_pid`.

    `worker_pid` is the worker that adopts the job's orphans: this process by default.
    `root_reaped`: the main process has been waited for, so its pid is not looked up (it may
    be another process's by now); what it left is among the adopted.
    """
    members = [] if root_reaped else [root_pid, *descendants(root_pid)]
    marker = str(job_id)
    for orphan in adopted(worker_pid or os.getpid()):
        if orphan in _own_children or orphan in members:
            continue
        try:
            if os.getsid(orphan) == root_pid or (
                psutil.Process(orphan).environ().get("BATCH_JOB_ID") == marker
            ):
                members.extend([orphan, *descendants(orphan)])
        except (psutil.Error, OSError):
            continue
    found = []
    for pid in members:
        if _running(pid):
            try:
                found.append(psutil.Process(pid))
            except psutil.Error:
                continue
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie, read from /proc/<pid>/stat without building a psutil object."""
    try:
        state = read_kernel_file(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def read_kernel_file(path: str) -> bytes:
    """A /proc or /sys file's whole content by plain reads: a buffered `open` makes five
    more system calls (two fstat, an ioctl, two lseek), and some are read at every job."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(descriptor, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)


@dataclass
class TreeSample:
    rss_bytes: int = 0
    open_fds: int = 0
    threads: int = 0
    processes: int = 0
    cpu_seconds: float = 0.0
    fd_limit: int | None = None
    """The lowest soft RLIMIT_NOFILE in the tree: the one the job hits first."""


def sample(processes: Iterable[psutil.Process]) -> TreeSample:
    """RSS, fds, threads and CPU of the whole tree, read in one pass over /proc."""
    total = TreeSample()
    for process in processes:
        try:
            with process.oneshot():
                total.rss_bytes += process.memory_info().rss
                total.open_fds += process.num_fds()
                total.threads += process.num_threads()
                times = process.cpu_times()
                total.cpu_seconds += times.user + times.system
                total.processes += 1
                soft = process.rlimit(psutil.RLIMIT_NOFILE)[0]
                if soft >= 0 and (total.fd_limit is None or soft < total.fd_limit):
                    total.fd_limit = soft
        except psutil.Error:
            continue
    return total


def describe(process: psutil.Process) -> str:
    """`pid 123 (sleep 600)`: how a leftover process is reported."""
    try:
        command = " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        command = "?"
    return f"pid {process.pid} ({command})"


def signal_all(processes: Iterable[psutil.Process], signum: int) -> None:
    for process in processes:
        try:
            process.send_signal(signum)
        except psutil.Error:
            continue


def terminate(processes: list[psutil.Process], grace: float) -> list[psutil.Process]:
    """SIGTERM, up to `grace` seconds, then SIGKILL; returns those that needed SIGKILL.

    Blocking: for leftovers after the job's end. A running job is stopped without blocking
    by the runner's own loop, which keeps draining the pipes meanwhile.
    """
    signal_all(processes, signal.SIGTERM)
    alive = wait_gone(processes, grace)
    signal_all(alive, signal.SIGKILL)
    wait_gone(alive, 2.0)
    return alive


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until each process has exited (a zombie counts); never reaps, never steals a status."""
    deadline = time.monotonic() + timeout
    alive = processes
    while True:
        alive = [process for process in alive if is_alive(process)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(_POLL_SECONDS)


def is_alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
