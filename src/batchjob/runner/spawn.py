"""Start a job hermetically: explicit env, stdin /dev/null, pipes, its own session, TMPDIR.

What the child sees does not depend on what the worker happens to inherit from systemd or a
shell: the variables a Python job needs to behave as it does by hand (unbuffered UTF-8 output,
a UTF-8 locale, HOME) are set here, and the worker's own BATCH_JOB_* configuration (a
database URL with its password) never reaches the job.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import pwd
import queue
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from batchjob.progress import PROGRESS_FD_VARIABLE

# The worker's configuration; a job must never receive it (SPEC §2).
WORKER_ONLY_VARIABLES = frozenset(
    {"BATCH_JOB_DATABASE_URL", "BATCH_JOB_CONFIG", "BATCH_JOB_LOG_DIR", "BATCH_JOB_WEB_TOKEN"}
)
# Set for every job: the fixes for "works by hand, fails under the worker" (SPEC §5).
ALWAYS = {
    "PYTHONUNBUFFERED": "1",
    "PYTHONIOENCODING": "utf-8",
    "PYTHONUTF8": "1",
    "PYTHONFAULTHANDLER": "1",
}
UTF8_LOCALE = "C.UTF-8"
# systemd's NOTIFY_SOCKET and WATCHDOG_* belong to the worker; a job writing to them would lie.
INHERITED_NEVER = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})
# dash (Debian's /bin/sh) accepts `>&$BATCH_JOB_PROGRESS_FD` only up to 9.
HIGHEST_SHELL_DESCRIPTOR = 9
# A job writing fast fills the kernel's default 64 KiB pipe at once, and then it and the worker
# take turns, each waking the other (1 GiB through a pipe: 1.3 s, through 256 KiB 0.4 s). Each
# slot's stdout and stderr count 512 KiB towards its user's pipe allowance (64 MiB by default).
OUTPUT_PIPE_BYTES = 256 * 1024
_progress_slots: queue.SimpleQueue[int] = queue.SimpleQueue()
"""The reserved numbers no spawn has borrowed."""
_reserving = threading.Lock()
_reserved = 0


def reserve_progress_fds(count: int = 1) -> None:
    """Hold up to `count` low descriptor numbers for jobs' progress pipes (one at least); call
    early in the worker, before it opens much else.

    A child receives its pipe under one of them, so it must be one a shell can name. A spawn
    borrows a number for the moment it starts its job: `count` spawns may run at once, and
    more wait for a number (rather than be given one over 9).
    """
    global _reserved  # noqa: PLW0603 - the numbers are the process's, for its lifetime
    _devnull()  # held from the start, as the numbers are: a worker's descriptors stay the same
    with _reserving:
        while _reserved < count:
            slot = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            if slot == 3:
                # Not 3: CPython 3.11's child closes the descriptors it does not keep with
                # close_range between the kept ones; one kept at 3 makes its first range
                # empty (3..2), the call fails, and the child lists /proc/self/fd and closes
                # them one by one (strace: 30 closes a job, while the worker waits in vfork;
                # 7 % of a /bin/true job's rate). 3 stays held, by /dev/null.
                slot = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            if slot > HIGHEST_SHELL_DESCRIPTOR and _reserved:
                os.close(slot)
                return
            _progress_slots.put(slot)
            _reserved += 1


@dataclass(frozen=True)
class SpawnRequest:
    """Everything needed to start one attempt; the runner adds nothing from elsewhere."""

    job_id: int
    attempt: int
    queue: str
    command: list[str]
    env: Mapping[str, str]
    cwd: str | None
    base_env: Mapping[str, str]
    """The worker's environment (or its env_file), before the job's own variables."""
    worker_id: str = ""
    """Marks the job's processes as this worker's, so that they are found by it alone."""


@dataclass
class Spawned:
    process: subprocess.Popen[bytes]
    stdout: int
    stderr: int
    progress: int
    env: dict[str, str]


def build_environment(request: SpawnRequest, tmpdir: Path, progress_fd: int) -> dict[str, str]:
    """The child's whole environment: base, then task/job env, then what batchjob guarantees."""
    env = {
        name: value
        for name, value in request.base_env.items()
        if name not in WORKER_ONLY_VARIABLES and name not in INHERITED_NEVER
    }
    env.update(request.env)
    env.update(ALWAYS)
    env.update(
        {
            "BATCH_JOB_ID": str(request.job_id),
            "BATCH_JOB_ATTEMPT": str(request.attempt),
            "BATCH_JOB_QUEUE": request.queue,
            "BATCH_JOB_WORKER": request.worker_id,
            PROGRESS_FD_VARIABLE: str(progress_fd),
            "TMPDIR": str(tmpdir),
        }
    )
    # Not judged by LC_CTYPE: Python itself sets LC_CTYPE=C.UTF-8 in a worker started in the
    # C locale (PEP 538), which says nothing of the LANG other programs of the job read.
    if not env.get("LANG") and not env.get("LC_ALL"):
        env["LANG"] = UTF8_LOCALE
    if not env.get("HOME"):
        env["HOME"] = _home_directory()
    env.setdefault("PATH", os.defpath)
    return env


def start(request: SpawnRequest, tmpdir: Path) -> Spawned:
    """Start the command with TMPDIR=`tmpdir`; raises OSError when it cannot. Call within
    watch.spawn_gate.spawning(); other threads may spawn at the same time.

    The progress pipe reaches the child under a reserved low number, borrowed for the spawn;
    straight after it that number points at /dev/null again, so the worker holds no write end
    and the pipe ends when the job's processes close it. A child of a spawn running beside
    this one never holds this one's pipes: `close_fds` closes every descriptor it does not
    keep.
    """
    if not _reserved:
        reserve_progress_fds()
    out_read, out_write = _output_pipe()
    err_read, err_write = _output_pipe()
    progress_read, progress_write = os.pipe()
    slot = _progress_slots.get()
    try:
        os.dup2(progress_write, slot, inheritable=False)
        os.close(progress_write)
        env = build_environment(request, tmpdir, slot)
        process = subprocess.Popen(
            request.command,
            stdin=_devnull(),
            stdout=out_write,
            stderr=err_write,
            pass_fds=(slot,),
            cwd=request.cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    except BaseException:
        for descriptor in (out_read, err_read, progress_read):
            os.close(descriptor)
        raise
    finally:
        for descriptor in (out_write, err_write):
            os.close(descriptor)
        os.dup2(_devnull(), slot, inheritable=False)
        _progress_slots.put(slot)
    return Spawned(process, out_read, err_read, progress_read, env)


@functools.cache
def _devnull() -> int:
    """/dev/null, open for the worker's lifetime: every job's stdin, and what a reserved
    number points at between spawns (opening it for each job cost four system calls)."""
    return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)


def _output_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):  # past the user's pipe allowance: the default size
        fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, OUTPUT_PIPE_BYTES)
    return read_end, write_end


def read_env_file(path: Path) -> dict[str, str]:
    """Variables from a systemd EnvironmentFile: KEY=VALUE lines, # and ; comments, quotes."""
    env: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, separator, value = line.partition("=")
        name = name.strip()
        if not separator or not name:
            raise ValueError(f"{path}:{number}: expected NAME=VALUE, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[name] = value
    return env


@functools.cache  # /etc/passwd, read once per worker rather than once per job
def _home_directory() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir or "/"
    except KeyError:
        return "/"
