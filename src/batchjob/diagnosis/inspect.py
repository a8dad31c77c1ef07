"""The live look at a running, possibly stalled, job's process tree; knows nothing of the database.

A stall is explained by what each process waits on: the system call it sits in, what that fd
is (a socket and its peer, a pipe and who holds the other end, a file) and, where py-spy is
present and permitted, the Python stack. The facts come from /proc, each file read once and
nothing attached to or stopped: the fds a poll()/select() waits on are read through
/proc/<pid>/mem, and only the peer of a Unix socket, which no /proc file shows, is asked of
the kernel's sock_diag (with a short timeout). A look therefore costs milliseconds. py-spy runs
only after /proc has been read (a ptrace stop turns a sleep into `restart_syscall`) and only
for Python processes. A process that exits meanwhile is left out, never an error.

This module puts one look together and ranks it into one line; the parts are `procfs` (one
process), `syscalls` (what its call means), `fds` and `sockets` (what an fd is) and `pyspy`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from batchjob.diagnosis.fds import FdDescriber
from batchjob.diagnosis.procfs import Process, inode_of, read_process, short_command
from batchjob.diagnosis.pyspy import dump_python_stacks, find_py_spy, main_thread, short_frame
from batchjob.diagnosis.syscalls import POLLING, SLEEPING, WAITING_FOR_CHILD

_MAX_FDS_LISTED = 512
# Frames of the standard library and installed packages: where a job waits, not why.
_LIBRARY = re.compile(r"/lib/python\d[.\d]*/|/(site|dist)-packages/|\(<frozen ")


def inspect_processes(
    pids: Sequence[int],
    *,
    python_stacks: bool = True,
    py_spy_timeout: float = 5.0,
    idle_seconds: float | None = None,
) -> dict[str, Any]:
    """What each live process of `pids` is doing right now, and one line saying why it waits.

    `idle_seconds` (how long the job has shown no progress, known to the caller) goes into the
    summary as "blocked 14m in …". Each process reports pid, ppid, command, state, wchan,
    syscall, blocked_fd, blocked_on, fds, sockets, rss_bytes, threads, cpu_seconds and
    python_stack as SPEC §6 asks, plus what a stall in a thread or a poll needs:
    `blocked_fd` is the list of polled fds for poll/select/epoll; `thread_syscalls` has the
    call of every other thread; `python_threads` every thread's frames; `fd_count` the number
    of fds when `fds` is cut at 512. `py_spy` is "skipped" when not asked or no process is
    Python.
    """
    taken_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    snapshots = [p for p in map(read_process, dict.fromkeys(pids)) if p is not None]
    describer = FdDescriber(snapshots)
    reports = [_report(describer, process) for process in snapshots]
    for report in reports:
        report["python_stack"] = None
        report["python_threads"] = None
    if not python_stacks:
        py_spy = "skipped"
    else:
        running = {p.pid for p in snapshots if p.state.startswith("R")}
        candidates = [p.pid for p in snapshots if p.python]
        py_spy, dumps = dump_python_stacks(candidates, running, py_spy_timeout)
        for report in reports:
            threads = dumps.get(report["pid"])
            if threads is not None:
                report["python_threads"] = threads
                report["python_stack"] = main_thread(threads, report["pid"])["frames"]
    return {
        "summary": _summary(reports, idle_seconds),
        "processes": reports,
        "taken_at": taken_at,
        "py_spy": py_spy,
    }


def _report(describer: FdDescriber, process: Process) -> dict[str, Any]:
    fds = [{"fd": fd, "description": describer.describe(process, fd)} for fd in process.fd_links]
    sockets = []
    for fd, link in process.fd_links.items():
        if link.startswith("socket:["):
            found = describer.socket(process, link)
            entry: dict[str, Any] = {"fd": fd, "inode": inode_of(link)}
            if found is None:
                entry.update(kind="other", local=None, remote=None, state=None)
                entry.update(recv_queue=None, send_queue=None)
            else:
                entry.update(vars(found))
            sockets.append(entry)
    blocked_fd, blocked_on = describer.blocked(process, process.syscall)
    thread_syscalls = []
    for tid, call in process.thread_syscalls.items():
        thread_fd, thread_on = describer.blocked(process, call)
        thread_syscalls.append(
            {"tid": tid, "syscall": call.name, "blocked_fd": thread_fd, "blocked_on": thread_on}
        )
    return {
        "pid": process.pid,
        "ppid": process.ppid,
        "command": process.command,
        "state": process.state,
        "wchan": process.wchan,
        "syscall": process.syscall.name,
        "blocked_fd": blocked_fd,
        "blocked_on": blocked_on,
        "thread_syscalls": thread_syscalls,
        "fds": fds[:_MAX_FDS_LISTED],
        "fd_count": len(fds),
        "sockets": sockets,
        "rss_bytes": process.rss_bytes,
        "threads": process.threads,
        "cpu_seconds": process.cpu_seconds,
    }


# --- the one line ----------------------------------------------------------------------------


def _summary(reports: list[dict[str, Any]], idle_seconds: float | None) -> str:
    """The most telling process in one line, e.g. `blocked 14m in recvfrom() on TCP …`."""
    if not reports:
        return "no live process to inspect"
    depth = _depths(reports)
    ranked = sorted(
        enumerate(reports),
        key=lambda item: (_rank(item[1]), depth[item[1]["pid"]], -item[0]),
        reverse=True,
    )
    lead = ranked[0][1]
    call, blocked_fd, blocked_on, tid = _telling_thread(lead)
    idle = f" {_duration(idle_seconds)}" if idle_seconds is not None else ""
    state = lead["state"]
    if state.startswith("R") or call == "running":
        line = "running (CPU)"
    elif state.startswith(("T", "t")):
        line = f"stopped{idle}" + (" by a tracer" if state.startswith("t") else "")
    elif blocked_on is not None and call is not None:
        on = blocked_on
        if isinstance(blocked_fd, list) and len(blocked_fd) > 1:
            on = f"{len(blocked_fd)} fds: {blocked_on}"
        line = f"blocked{idle} in {call}() on {on}"
    elif call in SLEEPING or (call in POLLING and blocked_fd is None):
        line = f"sleeping{idle} in {call}()"
    elif call in WAITING_FOR_CHILD:
        line = f"waiting{idle} for a child in {call}()"
    elif call is not None:
        line = f"blocked{idle} in {call}()"
    else:
        line = f"{state.split(' ', 1)[-1].strip('()')}{idle}"
    if state.startswith("D"):
        line += f" (uninterruptible, in {lead['wchan'] or 'the kernel'})"
    if tid is not None:
        line += f" [thread {tid}]"
    frame = _python_frame(lead, tid)
    if frame:
        line += f"; python: {frame}"
    return f"{line}; pid {lead['pid']} ({short_command(lead['command'])})"


def _rank(report: dict[str, Any]) -> int:
    """How much a process explains: blocked on an fd > running > waiting > waiting for a child."""
    call, _fd, blocked_on, _tid = _telling_thread(report)
    if blocked_on is not None:
        return 4
    if report["state"].startswith("R") or call == "running":
        return 3
    if call is not None and call not in WAITING_FOR_CHILD:
        return 2
    return 1 if call is not None else 0


def _telling_thread(report: dict[str, Any]) -> tuple[str | None, Any, str | None, int | None]:
    """The main thread's call, unless only another thread waits on an fd (a worker thread)."""
    if report["blocked_on"] is None:
        for thread in report["thread_syscalls"]:
            if thread["blocked_on"] is not None:
                return thread["syscall"], thread["blocked_fd"], thread["blocked_on"], thread["tid"]
    return report["syscall"], report["blocked_fd"], report["blocked_on"], None


def _depths(reports: list[dict[str, Any]]) -> dict[int, int]:
    parents = {report["pid"]: report["ppid"] for report in reports}
    depths: dict[int, int] = {}
    for pid, parent in parents.items():
        depth, cursor, seen = 0, parent, {pid}
        while cursor in parents and cursor not in seen:
            seen.add(cursor)
            depth, cursor = depth + 1, parents[cursor]
        depths[pid] = depth
    return depths


def _python_frame(report: dict[str, Any], tid: int | None) -> str | None:
    """Where the job's own code waits, and the library call it waits in when that differs.

    `wait_for_row_lock (job.py:9) → SocketIO.readinto (socket.py:706)`: the innermost frame
    outside the standard library and site-packages says which line of the job is stuck.
    """
    threads = report.get("python_threads")
    if not threads:
        return None
    thread = next((t for t in threads if t["tid"] == tid), None) if tid is not None else None
    frames: list[str] = (thread or main_thread(threads, report["pid"]))["frames"]
    if not frames:
        return None
    innermost = short_frame(frames[0])
    own = next((frame for frame in frames if not _LIBRARY.search(frame)), frames[0])
    if own == frames[0]:
        return innermost
    return f"{short_frame(own)} → {innermost}"


def _duration(seconds: float) -> str:
    """3s, 14m, 2h05m, 3d4h: how long, at the precision a human reads."""
    whole = max(int(seconds), 0)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600}h"


# find_py_spy is re-exported: callers ask this module whether a Python stack can be had.
__all__ = ["find_py_spy", "inspect_processes"]
