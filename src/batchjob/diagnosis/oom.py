"""Was it the kernel's OOM killer? The evidence a SIGKILL nobody in batchjob sent may leave.

Two sources, as an operator would check them: the memory cgroup's OOM-kill counter (cgroup
v2 `memory.events`, v1 `memory.oom_control`), read before and after the attempt, and the
kernel log (`dmesg`), which names the killed pid when it is readable.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
DMESG_TIMEOUT_SECONDS = 2.0
COUNTER_FILE_BYTES = 64 * 1024  # a few lines in both versions
# The counter's line in both versions' files (v2 memory.events, v1 memory.oom_control).
_COUNTER_LINE = re.compile(rb"^oom_kill (\d+)$", re.MULTILINE)


def oom_kill_count() -> int | None:
    """The OOM kills counted in this process's memory cgroup (jobs share it), if readable."""
    descriptor = _counter_file()
    if descriptor is None:
        return None
    try:
        found = _COUNTER_LINE.search(os.pread(descriptor, COUNTER_FILE_BYTES, 0))
    except OSError:
        return None
    return int(found.group(1)) if found is not None else None


def oom_evidence(pid: int, count_before: int | None) -> str | None:
    """A sentence of evidence that the OOM killer ended `pid`, or None when there is none."""
    line = _kernel_log_line(pid)
    if line is not None:
        return f"kernel log: {line}"
    count_after = oom_kill_count()
    if count_before is not None and count_after is not None and count_after > count_before:
        return f"the memory cgroup counted {count_after - count_before} OOM kill(s) meanwhile"
    return None


@functools.cache
def _counter_file() -> int | None:
    """The file where this process's cgroup counts OOM kills, found and opened once (a
    process stays in its cgroup) and kept open: each job's start is one read of it at
    offset 0, not an open, two reads and a close. None where no such file can be read."""
    candidates: list[Path] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _hierarchy, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":
            candidates.append(CGROUP_ROOT / relative / "memory.events")
            candidates.append(CGROUP_ROOT / "unified" / relative / "memory.events")
        elif "memory" in controllers.split(","):
            candidates.append(CGROUP_ROOT / "memory" / relative / "memory.oom_control")
    for candidate in candidates:
        try:
            descriptor = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if _COUNTER_LINE.search(os.pread(descriptor, COUNTER_FILE_BYTES, 0)):
                return descriptor
        except OSError:
            pass
        os.close(descriptor)
    return None


def _kernel_log_line(pid: int) -> str | None:
    try:
        done = subprocess.run(
            ["dmesg"], capture_output=True, text=True, timeout=DMESG_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    pattern = re.compile(rf"(Killed process {pid}\b|oom-kill:.*\bpid={pid}\b)")
    for line in reversed(done.stdout.splitlines()):
        if pattern.search(line):
            return line.strip()
    return None
