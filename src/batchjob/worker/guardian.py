"""A job's processes never outlive their worker, however the worker dies.

At start-up the worker starts a small guardian process that holds the read end of a pipe.
The worker tells it which jobs run (`+<job_id> <pid>`) and which ended (`-<job_id>`). When
the worker dies — SIGKILL, the OOM killer, a crash — the kernel closes the pipe, the
guardian reads EOF and kills every process of the jobs still listed: those in the job's
session and those carrying its BATCH_JOB_ID with this worker's BATCH_JOB_WORKER (a
double-forked daemon included; another worker's jobs never), then removes the worker's
job TMPDIRs (`<scratch prefix>*`), which no one else would. A clean exit closes the pipe too,
with no job listed and the TMPDIRs already gone.

The guardian is this file run by a fresh interpreter, not a fork of the worker: a fork would
keep a copy of everything the worker imported (SQLAlchemy alone is 28 MiB of RSS) for a
process that only reads a pipe. So the guardian's side of this module imports nothing of
batchjob (only `Guardian`, in the worker, does).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time

KILL_WAIT_SECONDS = 5.0
"""How long the jobs' processes get to die before their TMPDIRs are removed anyway."""
READ_EVERY_SECONDS = 0.1
"""The guardian reads what piled up in the pipe at most this often: a busy worker's two lines
per job then wake it ten times a second, not a thousand (each wake-up cost the worker and the
jobs CPU), and the worker's death is still seen within this time."""


class Guardian:
    """The worker's end of the pipe to its guardian process."""

    def __init__(self, worker_id: str, scratch_prefix: str) -> None:
        """`scratch_prefix`: the path every job TMPDIR of this worker starts with."""
        # Here, not at the top: the guardian process itself never needs them.
        import subprocess

        from batchjob.runner import watch

        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            # Its own session: a Ctrl-C in the worker's terminal is not for the guardian.
            with watch.spawn_gate.spawning():
                self._process = subprocess.Popen(
                    [sys.executable, "-I", __file__, worker_id, scratch_prefix],
                    stdin=read_end,
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
                # Not a job's orphan: a job's end need not look at it (the worker's life long).
                watch.register_own_child(self._process.pid)
        finally:
            os.close(read_end)
        self._pipe = write_end
        self._lock = threading.Lock()

    def job_started(self, job_id: int, pid: int) -> None:
        self._send(f"+{job_id} {pid}\n")

    def job_ended(self, job_id: int) -> None:
        self._send(f"-{job_id}\n")

    def close(self) -> None:
        """A clean stop: the guardian exits without killing anything."""
        with self._lock:
            if self._pipe >= 0:
                os.close(self._pipe)
                self._pipe = -1
        self._process.wait()

    def _send(self, line: str) -> None:
        with self._lock:
            if self._pipe >= 0:
                os.write(self._pipe, line.encode())


def _guard(read_end: int, worker_id: str, scratch_prefix: str) -> None:
    """The guardian's whole life: follow the list of running jobs until the pipe closes."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # a Ctrl-C or `systemctl stop` is for the worker
    running: dict[str, int] = {}
    buffered = b""
    while True:
        try:
            data = os.read(read_end, 65536)
        except InterruptedError:
            continue
        if not data:
            break
        time.sleep(READ_EVERY_SECONDS)
        buffered += data
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            text = line.decode()
            if text.startswith("+"):
                job_id, pid = text[1:].split()
                running[job_id] = int(pid)
            elif text.startswith("-"):
                running.pop(text[1:], None)
    if running:
        _kill_jobs(running, worker_id)
    _remove_scratch(scratch_prefix)


def _kill_jobs(running: dict[str, int], worker_id: str) -> None:
    """SIGKILL the jobs' processes and wait (a few seconds at most) until they are dead."""
    import psutil  # only now: an idle guardian stays the size of a bare interpreter

    sessions = set(running.values())
    job_ids = set(running)
    me = os.getpid()
    killed = []
    for process in psutil.process_iter(["pid"]):
        if process.pid == me:
            continue
        try:
            if os.getsid(process.pid) not in sessions:
                env = process.environ()
                ours = env.get("BATCH_JOB_WORKER") == worker_id
                if not ours or env.get("BATCH_JOB_ID") not in job_ids:
                    continue
            process.kill()
            killed.append(process)
        except (psutil.Error, OSError):
            continue

    def still_running(process: psutil.Process) -> bool:
        # Not dead nor a zombie. Not `wait_procs`: it waits out its timeout on a zombie that an
        # init slow to reap (a container's, this machine's) leaves in the process table.
        try:
            return process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while killed and time.monotonic() < deadline:
        time.sleep(0.02)
        killed = [process for process in killed if still_running(process)]


def _remove_scratch(prefix: str) -> None:
    """Remove the worker's job TMPDIRs; a job may have put a link or a file in one's place."""
    parent, name = os.path.split(prefix)
    try:
        entries = [entry for entry in os.scandir(parent) if entry.name.startswith(name)]
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            continue


if __name__ == "__main__":
    _guard(sys.stdin.fileno(), sys.argv[1], sys.argv[2])
