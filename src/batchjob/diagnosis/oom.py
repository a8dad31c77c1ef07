"""Was it the kernel's OOM killer? The evidence a SIGKILL nobody in batchjob sent may leave.

Two sources, as an operator would check them: the memory cgroup's OOM-kill counter (cgroup
v2 `memory.events`, v1 `memory.oom_control`), read before and after the attempt, and the
kernel log (`dmesg`), which names the killed pid when it is readable.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

from batchjob.runner import watch

CGROUP_ROOT = Path("/sys/fs/cgroup")
DMESG_TIMEOUT_SECONDS = 2.0
# The counter's line in both versions' files (v2 memory.events, v1 memory.oom_control).
_COUNTER_LINE = re.compile(rb"^oom_kill (\d+)$", re.MULTILINE)


def oom_kill_count() -> int | None:
    """The OOM kills counted in this process's memory cgroup (jobs share it), if readable."""
    for path in _counter_files():
        try:
            found = _COUNTER_LINE.search(watch.read_kernel_file(path))
        except OSError:
            continue
        if found is not None:
            return int(found.group(1))
    return None


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
def _counter_files() -> list[str]:
    """Where this process's cgroup counts OOM kills: found once (a process stays in its
    cgroup), so that each job's start reads one file, not every place it might be."""
    candidates: list[Path] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        _hierarchy, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":
            candidates.append(CGROUP_ROOT / relative / "memory.events")
            candidates.append(CGROUP_ROOT / "unified" / relative / "memory.events")
        elif "memory" in controllers.split(","):
            candidates.append(CGROUP_ROOT / "memory" / relative / "memory.oom_control")
    return [str(candidate) for candidate in candidates if candidate.exists()]


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
