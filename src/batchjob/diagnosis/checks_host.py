"""Doctor checks of this host: open files, memory, OOM kills, free disk, the size of the logs.

Read from /proc, statvfs and the kernel log as an operator would, for the limits a job runs
into before batchjob sees anything wrong: a file that does not exist here makes its check
N/A, never a failure.
"""

from __future__ import annotations

import heapq
import os
import re
import resource
import shlex
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

from batchjob.diagnosis.check import (
    PREVIEW_CHARACTERS,
    Facts,
    Finding,
    NotChecked,
    database_report,
    fail,
    human_size,
    ok,
    warn,
)
from batchjob.diagnosis.checks_systemd import MIN_NOFILE, SYSTEMD_UNIT
from batchjob.worker.supervisor import MIN_FREE_LOG_BYTES, WORKER_LOG_NAME

NEARLY_FULL = 0.9  # of a filesystem's space or inodes, of the system's file handles
FD_USE_WARNING = 0.8  # of a process's soft fd limit
# An OOM kill longer ago than this is history, not a finding (dated by the kernel log).
RECENT_OOM_SECONDS = 24 * 3600
OLD_LOG_DAYS = 30  # a job log unwritten this long is history
LOW_MEMORY = 0.1  # MemAvailable below this share of MemTotal
HIGH_SWAP = 0.5  # SwapTotal in use above this share
LOG_SHARE_WARNING = 0.5  # of the log filesystem taken by the log dir
LARGEST_FILES = 5
_OOM_KILL_LINE = re.compile(r"^\[\s*(?P<seconds>\d+\.\d+)\]\s*(?P<text>.*Killed process.*)$")


def check_open_files(facts: Facts) -> Finding:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    allocated, _unused, maximum = (int(value) for value in _read("/proc/sys/fs/file-nr").split())
    workers = _local_worker_fds(facts)
    figures = {
        "soft": soft,
        "hard": hard,
        "system_allocated": allocated,
        "system_max": maximum,
        "workers": workers,
    }
    message = (
        f"this process: soft {_limit(soft)}, hard {_limit(hard)}; system: {allocated} of "
        f"{maximum} file handles"
    ) + "".join(
        f"; worker pid {pid}: {used} of {_limit(limit)}" for pid, (used, limit) in workers.items()
    )
    crowded = [
        pid for pid, (used, limit) in workers.items() if limit > 0 and used > limit * FD_USE_WARNING
    ]
    if crowded:
        return warn(message, f"raise LimitNOFILE of {SYSTEMD_UNIT} (or ulimit -n)", **figures)
    if allocated > maximum * NEARLY_FULL:
        return warn(message, "raise fs.file-max (sysctl), or find the process leaking", **figures)
    if 0 < soft < MIN_NOFILE:
        return warn(message, f"raise the soft limit to at least {MIN_NOFILE}", **figures)
    return ok(message, **figures)


def _local_worker_fds(facts: Facts) -> dict[int, tuple[int, int]]:
    """Open fds and soft fd limit of each registered worker running on this host."""
    rows = (facts.database or {}).get("workers") or []
    found = {}
    for row in rows:
        if row["host"] != facts.host:
            continue
        try:
            process = psutil.Process(row["pid"])
            found[row["pid"]] = (process.num_fds(), process.rlimit(psutil.RLIMIT_NOFILE)[0])
        except psutil.Error:
            continue
    return found


def check_memory(_facts: Facts) -> Finding:
    info = _meminfo()
    total, available = info["MemTotal"], info["MemAvailable"]
    swap_total, swap_used = info["SwapTotal"], info["SwapTotal"] - info["SwapFree"]
    swap = (
        f"swap {human_size(swap_used)} used of {human_size(swap_total)}"
        if swap_total
        else "no swap"
    )
    message = f"{human_size(available)} available of {human_size(total)}; {swap}"
    figures = {
        "total": total,
        "available": available,
        "swap_total": swap_total,
        "swap_used": swap_used,
    }
    if available < total * LOW_MEMORY:
        return warn(message, "set memory_limit on large jobs, or run fewer at once", **figures)
    if swap_total and swap_used > swap_total * HIGH_SWAP:
        return warn(message, "the host is swapping: give it memory, or run fewer jobs", **figures)
    return ok(message, **figures)


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    values = {}
    for line in _read("/proc/meminfo").splitlines():
        name, _, rest = line.partition(":")
        amount, *unit = rest.split()
        values[name] = int(amount) * (1024 if unit == ["kB"] else 1)
    return values


def check_oom_kills(_facts: Facts) -> Finding:
    counters = dict(line.split() for line in _read("/proc/vmstat").splitlines())
    kills = int(counters.get("oom_kill", 0))
    uptime = float(_read("/proc/uptime").split()[0])
    since_boot = f"since boot ({uptime / 3600:.1f}h ago)"
    figures: dict[str, Any] = {"oom_kills_since_boot": kills, "uptime_seconds": uptime}
    if kills == 0:
        return ok(f"no OOM kill {since_boot}", **figures)
    last = _last_oom_kill(uptime)
    figures["last"] = last
    message = f"the kernel's OOM killer killed {kills} processes {since_boot}" + (
        f"; the last {last[0] / 60:.0f} min ago: {last[1]}" if last else ""
    )
    if last and last[0] > RECENT_OOM_SECONDS:
        return ok(f"{message} (none in the last {RECENT_OOM_SECONDS // 3600}h)", **figures)
    return warn(
        message,
        "give large jobs a memory_limit, or the host (or the unit's MemoryMax) more memory",
        **figures,
    )


def _last_oom_kill(uptime: float) -> tuple[float, str] | None:
    """Seconds since the kernel log's last "Killed process" line, and the line, if readable."""
    if shutil.which("dmesg") is None:
        return None
    try:
        done = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    kills = [match for line in done.stdout.splitlines() if (match := _OOM_KILL_LINE.match(line))]
    if not kills:
        return None
    return uptime - float(kills[-1]["seconds"]), kills[-1]["text"][:PREVIEW_CHARACTERS]


def check_log_disk(facts: Facts) -> Finding:
    return _disk_finding(
        facts.settings.log_dir,
        "log dir",
        f"free space there: {_removing_old_job_logs(facts)}",
    )


def check_data_disk(facts: Facts) -> Finding:
    sqlite = database_report(facts).get("sqlite")
    if sqlite is None or sqlite["path"] is None:
        raise NotChecked("the database keeps its data on its server")
    return _disk_finding(
        Path(sqlite["path"]).parent,
        "SQLite data dir",
        "free space there: SQLite cannot grow its file and WAL on a full disk",
    )


def _disk_finding(directory: Path, role: str, fix: str) -> Finding:
    """Free space and inodes of the filesystem `directory` is (or will be) on."""
    where = directory.absolute()
    usage = os.statvfs(_nearest_existing(where))
    free = usage.f_bavail * usage.f_frsize
    used = (usage.f_blocks - usage.f_bfree) * usage.f_frsize
    used_share = used / (used + free) if used + free else 0.0
    inode_share = 1 - usage.f_ffree / usage.f_files if usage.f_files else 0.0
    message = (
        f"{role} {where}: {human_size(free)} free of {human_size(usage.f_blocks * usage.f_frsize)} "
        f"({used_share:.0%} used, inodes {inode_share:.0%} used)"
    )
    figures = {
        "path": str(where),
        "free_bytes": free,
        "used_share": round(used_share, 4),
        "inodes_used_share": round(inode_share, 4),
    }
    if free < MIN_FREE_LOG_BYTES:
        return fail(
            f"{message}: below {human_size(MIN_FREE_LOG_BYTES)}, workers stop claiming",
            fix,
            **figures,
        )
    if used_share > NEARLY_FULL or inode_share > NEARLY_FULL:
        return warn(message, fix, **figures)
    return ok(message, **figures)


def _nearest_existing(path: Path) -> Path:
    """`path`, or its closest existing parent: where it would be created."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_log_size(facts: Facts) -> Finding:
    log_dir = facts.settings.log_dir.absolute()
    if not log_dir.is_dir():
        raise NotChecked(f"{log_dir} does not exist yet (the worker creates it)")
    files = list(_files_with_sizes(log_dir))
    total = sum(size for _path, size in files)
    largest = heapq.nlargest(LARGEST_FILES, files, key=lambda item: item[1])
    shown = ", ".join(f"{path.relative_to(log_dir)} {human_size(size)}" for path, size in largest)
    message = f"{log_dir} holds {human_size(total)} in {len(files)} file(s)" + (
        f"; largest: {shown}" if shown else ""
    )
    figures = {
        "path": str(log_dir),
        "total_bytes": total,
        "files": len(files),
        "largest": [{"path": str(path), "bytes": size} for path, size in largest],
    }
    capacity = shutil.disk_usage(log_dir).total
    if total > capacity * LOG_SHARE_WARNING:
        return warn(
            message,
            f"{_removing_old_job_logs(facts)}; rotate {WORKER_LOG_NAME} (logrotate, then SIGHUP)",
            **figures,
        )
    return ok(message, **figures)


def _removing_old_job_logs(facts: Facts) -> str:
    """A command that works today, with this log dir's path in it (SPEC's `purge`, which would
    also delete the jobs' rows, is not built)."""
    job_logs = shlex.quote(str(facts.settings.job_log_dir.absolute()))
    return (
        f"`find {job_logs} -name '*.log' -mtime +{OLD_LOG_DAYS} -delete` removes the logs "
        f"not written to for more than {OLD_LOG_DAYS} days"
    )


def _files_with_sizes(directory: Path) -> Iterable[tuple[Path, int]]:
    for root, _dirs, names in os.walk(directory):
        for name in names:
            path = Path(root, name)
            try:
                yield path, path.lstat().st_size
            except OSError:  # removed while we walked (purge, rotation)
                continue


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotChecked(f"{path} does not exist on this system") from None


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)
