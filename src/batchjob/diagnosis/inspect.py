"""The live look at a running, possibly stalled, job's process tree; knows nothing of the database.

A stall is explained by what each process waits on: the system call it sits in, what that fd
is (a socket and its peer, a pipe and who holds the other end, a file) and, where py-spy is
present and permitted, the Python stack. The facts come from /proc, each file read once and
nothing attached to or stopped: the fds a poll()/select() waits on are read through
/proc/<pid>/mem, and only the peer of a Unix socket, which no /proc file shows, is asked of
the kernel's sock_diag (with a short timeout). A look therefore costs milliseconds. py-spy runs
only after /proc has been read (a ptrace stop turns a sleep into `restart_syscall`) and only
for Python processes. A process that exits meanwhile is left out, never an error.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchjob.runner import watch

# name, x86_64 number, aarch64 number: the calls a stalled process is usually found in.
_SYSCALL_TABLE: tuple[tuple[str, int | None, int | None], ...] = (
    ("read", 0, 63),
    ("write", 1, 64),
    ("open", 2, None),
    ("close", 3, 57),
    ("poll", 7, None),
    ("lseek", 8, 62),
    ("ioctl", 16, 29),
    ("pread64", 17, 67),
    ("pwrite64", 18, 68),
    ("readv", 19, 65),
    ("writev", 20, 66),
    ("select", 23, None),
    ("sched_yield", 24, 124),
    ("pause", 34, None),
    ("nanosleep", 35, 101),
    ("sendfile", 40, 71),
    ("connect", 42, 203),
    ("accept", 43, 202),
    ("sendto", 44, 206),
    ("recvfrom", 45, 207),
    ("sendmsg", 46, 211),
    ("recvmsg", 47, 212),
    ("wait4", 61, 260),
    ("semop", 65, 193),
    ("msgsnd", 69, 189),
    ("msgrcv", 70, 188),
    ("fcntl", 72, 25),
    ("flock", 73, 32),
    ("fsync", 74, 82),
    ("fdatasync", 75, 83),
    ("rt_sigtimedwait", 128, 137),
    ("rt_sigsuspend", 130, 133),
    ("sync", 162, 81),
    ("futex", 202, 98),
    ("io_getevents", 208, 4),
    ("restart_syscall", 219, 128),
    ("semtimedop", 220, 192),
    ("clock_nanosleep", 230, 115),
    ("epoll_wait", 232, None),
    ("mq_timedreceive", 243, 183),
    ("waitid", 247, 95),
    ("openat", 257, 56),
    ("pselect6", 270, 72),
    ("ppoll", 271, 73),
    ("splice", 275, 76),
    ("epoll_pwait", 281, 22),
    ("accept4", 288, 242),
    ("preadv", 295, 69),
    ("pwritev", 296, 70),
    ("recvmmsg", 299, 243),
    ("sendmmsg", 307, 269),
    ("getrandom", 318, 278),
    ("copy_file_range", 326, 285),
    ("preadv2", 327, 286),
    ("pwritev2", 328, 287),
    ("io_uring_enter", 426, 426),
    ("epoll_pwait2", 441, 441),
    ("futex_waitv", 449, 449),
)


def _syscall_names(machine: str) -> dict[int, str]:
    """Number → name for this machine; empty elsewhere, where raw numbers are reported."""
    names: dict[int, str] = {}
    for name, x86_64, aarch64 in _SYSCALL_TABLE:
        number = {"x86_64": x86_64, "aarch64": aarch64}.get(machine)
        if number is not None:
            names[number] = name
    return names


_SYSCALL_NAMES = _syscall_names(os.uname().machine)
# Calls whose first argument is the fd they wait on.
_FD_FIRST = frozenset(
    {
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
        "preadv2", "pwritev2", "recvfrom", "recvmsg", "recvmmsg", "sendto", "sendmsg",
        "sendmmsg", "accept", "accept4", "connect", "flock", "fcntl", "ioctl", "fsync",
        "fdatasync", "sendfile", "splice", "copy_file_range", "lseek", "close",
        "io_uring_enter",
    }
)  # fmt: skip
_POLLING = frozenset({"poll", "ppoll", "select", "pselect6"})
_EPOLLING = frozenset({"epoll_wait", "epoll_pwait", "epoll_pwait2"})
_SLEEPING = frozenset({"nanosleep", "clock_nanosleep", "pause", "rt_sigsuspend"})
_WAITING_FOR_CHILD = frozenset({"wait4", "waitid"})

_STATES = {
    "R": "running", "S": "sleeping", "D": "disk sleep", "T": "stopped", "t": "tracing stop",
    "X": "dead", "Z": "zombie", "P": "parked", "I": "idle", "W": "waking", "K": "wakekill",
}  # fmt: skip
_TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
    12: "NEW_SYN_RECV",
}  # fmt: skip
_UNIX_STATES = {1: "UNCONNECTED", 2: "CONNECTING", 3: "CONNECTED", 4: "DISCONNECTING"}
_INET_TABLES = ("tcp", "tcp6", "udp", "udp6")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_AT_FDCWD = -100
_MAX_POLLED_FDS = 256
_MAX_FDS_LISTED = 512
_MAX_THREADS_READ = 64
_MAX_NEIGHBOURS = 256
_COMMAND_IN_SUMMARY = 48
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_UDIAG_SHOW_NAME, _UDIAG_SHOW_PEER = 0x1, 0x4
_UNIX_DIAG_NAME, _UNIX_DIAG_PEER = 0, 2
_PY_SPY_THREAD = re.compile(r'^Thread (0x[0-9a-fA-F]+|\d+) \(([^)]*)\)(?:: "(.*)")?\s*$')
_PY_SPY_FRAME = re.compile(r"^    (\S.*) \((.*):(\d+)\)\s*$")
# Frames of the standard library and installed packages: where a job waits, not why.
_LIBRARY = re.compile(r"/lib/python\d[.\d]*/|/(site|dist)-packages/|\(<frozen ")
_NOT_PERMITTED = ("Permission denied", "Operation not permitted", "os error 1)")


@dataclass
class _Socket:
    kind: str
    local: str | None
    remote: str | None
    state: str | None
    recv_queue: int | None = None
    send_queue: int | None = None

    def describe(self) -> str:
        if self.kind == "unix":
            where = self.local or (f"→ {self.remote}" if self.remote else "(unnamed)")
            return f"UNIX {where} ({self.state})"
        label = self.kind.rstrip("6").upper()
        ends = f"{self.local} → {self.remote}" if self.remote else f"{self.local}"
        return f"{label} {ends}" + (f" ({self.state})" if self.state else "")


@dataclass
class _Syscall:
    """One thread's system call, as /proc/<pid>/task/<tid>/syscall shows it."""

    name: str | None  # a name, "running", the raw number, or None when not in a call
    args: list[int] = field(default_factory=list)


@dataclass
class _Process:
    pid: int
    ppid: int
    command: str
    state: str
    wchan: str | None
    syscall: _Syscall
    fd_links: dict[int, str]
    rss_bytes: int
    threads: int
    cpu_seconds: float
    python: bool
    netns: str
    thread_syscalls: dict[int, _Syscall]


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
    snapshots = [p for p in map(_read_process, dict.fromkeys(pids)) if p is not None]
    world = _World(snapshots)
    reports = [world.report(process) for process in snapshots]
    for report in reports:
        report["python_stack"] = None
        report["python_threads"] = None
    if not python_stacks:
        py_spy = "skipped"
    else:
        running = {p.pid for p in snapshots if p.state.startswith("R")}
        candidates = [p.pid for p in snapshots if p.python]
        py_spy, dumps = _python_stacks(candidates, running, py_spy_timeout)
        for report in reports:
            threads = dumps.get(report["pid"])
            if threads is not None:
                report["python_threads"] = threads
                report["python_stack"] = _main_thread(threads, report["pid"])["frames"]
    return {
        "summary": _summary(reports, idle_seconds),
        "processes": reports,
        "taken_at": taken_at,
        "py_spy": py_spy,
    }


# --- reading /proc ---------------------------------------------------------------------------


def _read_text(path: str) -> str | None:
    """The file's text, or None when it is gone or not ours to read."""
    try:
        with open(path, "rb") as file:
            return file.read().decode("utf-8", "replace")
    except OSError:
        return None


def _read_process(pid: int) -> _Process | None:
    """One process, each /proc file read once; None when it is gone (or a zombie)."""
    stat = _read_text(f"/proc/{pid}/stat")
    if stat is None:
        return None
    try:
        head, _, rest = stat.rpartition(")")
        name = head.partition("(")[2]
        fields = rest.split()
        letter = fields[0]
        ppid, threads = int(fields[1]), int(fields[17])
        cpu_seconds = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        rss_bytes = int(fields[21]) * _PAGE_SIZE
    except (IndexError, ValueError):
        return None
    if letter in ("Z", "X"):
        return None
    argv = (_read_text(f"/proc/{pid}/cmdline") or "").split("\0")
    argv = [arg for arg in argv if arg]
    try:
        fd_links = _fd_links(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None  # exited while being read
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = ""
    thread_syscalls: dict[int, _Syscall] = {}
    if 1 < threads <= _MAX_THREADS_READ:
        with contextlib.suppress(OSError):
            for tid in map(int, os.listdir(f"/proc/{pid}/task")):
                if tid != pid:
                    thread_syscalls[tid] = _parse_syscall(
                        _read_text(f"/proc/{pid}/task/{tid}/syscall")
                    )
    try:
        netns = os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        netns = f"pid:{pid}"
    wchan = _read_text(f"/proc/{pid}/wchan")
    return _Process(
        pid=pid,
        ppid=ppid,
        command=" ".join(argv) or name,
        state=f"{letter} ({_STATES.get(letter, 'unknown')})",
        wchan=wchan if wchan and wchan != "0" else None,
        syscall=_parse_syscall(_read_text(f"/proc/{pid}/syscall")),
        fd_links=fd_links,
        rss_bytes=rss_bytes,
        threads=threads,
        cpu_seconds=round(cpu_seconds, 2),
        python=_looks_like_python(exe, argv),
        netns=netns,
        thread_syscalls=thread_syscalls,
    )


def _fd_links(pid: int) -> dict[int, str]:
    """fd number → what /proc/<pid>/fd/N points at; FileNotFoundError when the process is gone."""
    links: dict[int, str] = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except PermissionError:
        return links
    for fd in sorted(map(int, names)):
        with contextlib.suppress(OSError):
            links[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return links


def _parse_syscall(text: str | None) -> _Syscall:
    """`230 0x0 0x1 …` → clock_nanosleep with its arguments; "running" stays "running"."""
    if text is None:
        return _Syscall(None)
    words = text.split()
    if not words or words[0] == "-1":
        return _Syscall(None)  # blocked, but not inside a system call
    if words[0] == "running":
        return _Syscall("running")
    try:
        number = int(words[0])
        args = [int(word, 16) for word in words[1:7]]
    except ValueError:
        return _Syscall(words[0])
    return _Syscall(_SYSCALL_NAMES.get(number, str(number)), args)


def _looks_like_python(exe: str, argv: list[str]) -> bool:
    names = [os.path.basename(exe), os.path.basename(argv[0]) if argv else ""]
    return any(name.startswith("python") for name in names)


def _signed(value: int) -> int:
    """A register holding a C int (an fd, AT_FDCWD) back to its signed value."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _read_memory(pid: int, address: int, size: int) -> bytes | None:
    """Bytes of the process's memory through /proc/<pid>/mem: no attach, no stop."""
    if address == 0 or size <= 0:
        return None
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.pread(fd, size, address)
    except OSError:
        return None
    finally:
        os.close(fd)


def _polled_fds(pid: int, call: _Syscall, fd_links: dict[int, str]) -> list[int] | None:
    """The fds a poll/select/epoll call waits on, read from its arguments; None if unknown."""
    args = call.args
    if len(args) < 3:
        return None
    if call.name in ("poll", "ppoll"):
        count = min(args[1], _MAX_POLLED_FDS)
        if count == 0:
            return []
        data = _read_memory(pid, args[0], count * 8)
        if data is None:
            return None
        fds = [
            fd for fd, _events, _revents in struct.iter_unpack("=ihh", data[: len(data) // 8 * 8])
        ]
        return [fd for fd in fds if fd >= 0]
    if call.name in ("select", "pselect6"):
        count = min(args[0], 1024)
        wanted: set[int] = set()
        for address in (args[1], args[2]):  # the read and write sets
            if count == 0 or address == 0:
                continue
            bitmap = _read_memory(pid, address, (count + 7) // 8)
            if bitmap is None:
                return None
            wanted.update(fd for fd in range(count) if bitmap[fd // 8] >> (fd % 8) & 1)
        return sorted(wanted)
    if call.name in _EPOLLING:
        epoll_fd = _signed(args[0])
        if epoll_fd not in fd_links:
            return None
        info = _read_text(f"/proc/{pid}/fdinfo/{epoll_fd}")
        if info is None:
            return None
        return [int(m) for m in re.findall(r"^tfd:\s*(\d+)", info, re.MULTILINE)]
    return None


# --- what an fd is ---------------------------------------------------------------------------


class _World:
    """What the fds of the inspected processes point at: sockets by inode, pipe holders."""

    def __init__(self, processes: list[_Process]) -> None:
        self.processes = {process.pid: process for process in processes}
        self._sockets: dict[str, dict[int, _Socket]] = {}
        self._pipe_holders: dict[int, list[tuple[int, int, str]]] | None = None
        self._commands: dict[int, str] = {p.pid: p.command for p in processes}
        self._socket_inodes = {
            _inode(link)
            for process in processes
            for link in process.fd_links.values()
            if link.startswith("socket:[")
        }

    def report(self, process: _Process) -> dict[str, Any]:
        fds = [{"fd": fd, "description": self.describe(process, fd)} for fd in process.fd_links]
        sockets = []
        for fd, link in process.fd_links.items():
            if link.startswith("socket:["):
                found = self._socket(process, link)
                entry: dict[str, Any] = {"fd": fd, "inode": _inode(link)}
                if found is None:
                    entry.update(kind="other", local=None, remote=None, state=None)
                    entry.update(recv_queue=None, send_queue=None)
                else:
                    entry.update(vars(found))
                sockets.append(entry)
        blocked_fd, blocked_on = self._blocked(process, process.syscall)
        thread_syscalls = []
        for tid, call in process.thread_syscalls.items():
            thread_fd, thread_on = self._blocked(process, call)
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

    def _blocked(
        self, process: _Process, call: _Syscall
    ) -> tuple[int | list[int] | None, str | None]:
        """The fd (or polled fds) a call waits on, and what it is."""
        if call.name in _FD_FIRST and call.args:
            fd = _signed(call.args[0])
            return fd, self.describe(process, fd)
        if call.name in _POLLING or call.name in _EPOLLING:
            polled = _polled_fds(process.pid, call, process.fd_links)
            if polled is None:
                return None, "fds not readable"
            if not polled:
                return None, None  # no fds: a sleep
            if len(polled) == 1:
                return polled, self.describe(process, polled[0])
            return polled, "; ".join(f"fd {fd}: {self.describe(process, fd)}" for fd in polled)
        if call.name in ("openat", "open") and call.args:
            address = call.args[1] if call.name == "openat" else call.args[0]
            raw = _read_memory(process.pid, address, 4096)
            if raw is None:
                return None, None
            path = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            dirfd = _signed(call.args[0]) if call.name == "openat" else _AT_FDCWD
            if not path.startswith("/") and dirfd != _AT_FDCWD and dirfd in process.fd_links:
                path = f"{process.fd_links[dirfd]}/{path}"
            return None, f"opening {path}"
        return None, None

    def describe(self, process: _Process, fd: int) -> str:
        link = process.fd_links.get(fd)
        if link is None:
            return f"fd {fd} (not open)"
        if link.startswith("socket:["):
            found = self._socket(process, link)
            return found.describe() if found else link
        if link.startswith("pipe:["):
            return self._describe_pipe(process, fd, link)
        return link

    def _socket(self, process: _Process, link: str) -> _Socket | None:
        table = self._sockets.get(process.netns)
        if table is None:
            table = _socket_table(process.pid, process.netns, self._socket_inodes)
            self._sockets[process.netns] = table
        return table.get(_inode(link))

    def _describe_pipe(self, process: _Process, fd: int, link: str) -> str:
        """`pipe:[N] (read end; write end held by pid 12 (sleep 300))`: who can unblock it."""
        holders = self._holders().get(_inode(link), [])
        mine = next((end for pid, held, end in holders if (pid, held) == (process.pid, fd)), "")
        if mine not in ("read", "write"):
            return link
        other = "write" if mine == "read" else "read"
        others = sorted({pid for pid, _fd, end in holders if end == other})
        if not others:
            return f"{link} ({mine} end; {other} end held by no process in the tree)"
        named = ", ".join(
            f"pid {pid} itself" if pid == process.pid else f"pid {pid} ({self._command(pid)})"
            for pid in others
        )
        return f"{link} ({mine} end; {other} end held by {named})"

    def _holders(self) -> dict[int, list[tuple[int, int, str]]]:
        """pipe inode → (pid, fd, "read"/"write") over the tree around the inspected pids."""
        if self._pipe_holders is not None:
            return self._pipe_holders
        holders: dict[int, list[tuple[int, int, str]]] = {}
        wanted = {
            _inode(link)
            for process in self.processes.values()
            for link in process.fd_links.values()
            if link.startswith("pipe:[")
        }
        if wanted:
            for pid in self._neighbourhood():
                links = self.processes[pid].fd_links if pid in self.processes else None
                if links is None:
                    try:
                        links = _fd_links(pid)
                    except OSError:
                        continue
                for fd, link in links.items():
                    if link.startswith("pipe:[") and _inode(link) in wanted:
                        end = _pipe_end(pid, fd)
                        holders.setdefault(_inode(link), []).append((pid, fd, end))
        self._pipe_holders = holders
        return holders

    def _neighbourhood(self) -> list[int]:
        """The inspected pids, their descendants, parents and siblings: the usual pipe peers."""
        found = dict.fromkeys(self.processes)
        for process in self.processes.values():
            found.update(dict.fromkeys(watch.descendants(process.pid)))
            if process.ppid > 1:
                found[process.ppid] = None
                found.update(dict.fromkeys(watch.children(process.ppid)))
        return list(found)[:_MAX_NEIGHBOURS]

    def _command(self, pid: int) -> str:
        if pid not in self._commands:
            argv = [arg for arg in (_read_text(f"/proc/{pid}/cmdline") or "").split("\0") if arg]
            self._commands[pid] = " ".join(argv) or "?"
        return _short_command(self._commands[pid])


def _inode(link: str) -> int:
    """`socket:[123]` → 123."""
    try:
        return int(link[link.index("[") + 1 : link.rindex("]")])
    except ValueError:
        return -1


def _pipe_end(pid: int, fd: int) -> str:
    """Which end of a pipe an fd is, from the access mode in /proc/<pid>/fdinfo/N."""
    info = _read_text(f"/proc/{pid}/fdinfo/{fd}")
    found = re.search(r"^flags:\s*([0-7]+)", info or "", re.MULTILINE)
    if found is None:
        return "unknown"
    return {os.O_RDONLY: "read", os.O_WRONLY: "write"}.get(int(found.group(1), 8) & 3, "both")


def _socket_table(pid: int, netns: str, inodes: set[int]) -> dict[int, _Socket]:
    """inode → socket for `inodes`, from /proc/<pid>/net (the process's network namespace).

    Only the lines of the wanted inodes are decoded: a busy host has thousands of others.
    """
    table: dict[int, _Socket] = {}
    wanted = {str(inode) for inode in inodes}
    for kind in _INET_TABLES:
        text = _read_text(f"/proc/{pid}/net/{kind}") or ""
        for line in text.splitlines()[1:]:
            words = line.split()
            if len(words) < 10 or words[9] not in wanted:
                continue
            with contextlib.suppress(ValueError, OSError):
                local, remote = _address(words[1]), _address(words[2])
                state = int(words[3], 16)
                send_queue, recv_queue = (int(part, 16) for part in words[4].split(":"))
                connected = not remote.endswith(":0")
                table[int(words[9])] = _Socket(
                    kind=kind,
                    local=local,
                    remote=remote if connected else None,
                    state=_TCP_STATES.get(state, str(state)) if kind.startswith("tcp") else None,
                    recv_queue=recv_queue,
                    send_queue=send_queue,
                )
    unix = _read_text(f"/proc/{pid}/net/unix") or ""
    unnamed = False
    for line in unix.splitlines()[1:]:
        words = line.split(maxsplit=7)
        if len(words) < 7 or words[6] not in wanted:
            continue
        with contextlib.suppress(ValueError):
            path = words[7] if len(words) > 7 else None
            state = int(words[5], 16)
            table[int(words[6])] = _Socket("unix", path, None, _UNIX_STATES.get(state, str(state)))
            unnamed = unnamed or path is None
    if unnamed and _same_netns(netns):
        names = _unix_names_and_peers()
        for inode, sock in table.items():
            peer = names.get(inode, (None, None))[1]
            if sock.kind == "unix" and peer is not None:
                sock.remote = names.get(peer, (None, None))[0]
    return table


def _address(text: str) -> str:
    """`0100007F:1F90` → `127.0.0.1:8080`; the kernel prints each 32-bit word in host order."""
    host, port = text.split(":")
    packed = b"".join(
        struct.pack("=I", int(host[start : start + 8], 16)) for start in range(0, len(host), 8)
    )
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    address = socket.inet_ntop(family, packed)
    return f"{address}:{int(port, 16)}" if len(packed) == 4 else f"[{address}]:{int(port, 16)}"


def _same_netns(netns: str) -> bool:
    try:
        return os.readlink("/proc/self/ns/net") == netns
    except OSError:
        return False


def _unix_names_and_peers() -> dict[int, tuple[str | None, int | None]]:
    """inode → (bound name, peer inode) of every Unix socket, from the kernel's sock_diag.

    /proc/net/unix names only the server's end; the peer link, which names the path a client
    is connected to, is only available through sock_diag. Bounded by a short timeout.
    """
    found: dict[int, tuple[str | None, int | None]] = {}
    request = struct.pack(
        "=IHHII", 16 + 24, _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, 1, 0
    ) + struct.pack(
        "=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, _UDIAG_SHOW_NAME | _UDIAG_SHOW_PEER, 0, 0
    )
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as diag:
            diag.settimeout(0.2)
            diag.sendall(request)
            while True:
                data = diag.recv(1 << 16)
                offset = 0
                while offset + 16 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, offset)
                    if kind in (_NLMSG_DONE, _NLMSG_ERROR) or length < 16:
                        return found
                    _family, _type, _state, _pad, inode = struct.unpack_from(
                        "=BBBBI", data, offset + 16
                    )
                    name, peer = _unix_attributes(data[offset + 32 : offset + length])
                    found[inode] = (name, peer)
                    offset += (length + 3) & ~3
                if not data:
                    return found
    except OSError:
        return found


def _unix_attributes(data: bytes) -> tuple[str | None, int | None]:
    name: str | None = None
    peer: int | None = None
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        value = data[offset + 4 : offset + length]
        if kind == _UNIX_DIAG_NAME and value:
            if value[0] == 0:  # an abstract name: "@" as ss and /proc/net/unix show it
                name = "@" + value[1:].decode("utf-8", "replace")
            else:  # a path, as given to bind(), sometimes with its terminating NUL
                name = value.rstrip(b"\0").decode("utf-8", "replace")
        elif kind == _UNIX_DIAG_PEER and len(value) >= 4:
            peer = struct.unpack_from("=I", value)[0]
        offset += (length + 3) & ~3
    return name, peer


# --- py-spy ----------------------------------------------------------------------------------


def find_py_spy() -> str | None:
    """py-spy beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


def _python_stacks(
    pids: list[int], running: set[int], timeout: float
) -> tuple[str, dict[int, list[dict[str, Any]]]]:
    """Each Python process's threads and frames from `py-spy dump`, all dumped concurrently.

    A waiting process is read with --nonblocking (its stack is not moving, and it is never
    paused); a running one is paused for the moment of the dump so that its stack is whole.
    """
    py_spy = find_py_spy()
    if py_spy is None:
        return "not installed", {}
    if not pids:
        return "skipped", {}
    env = {**os.environ, "RUST_BACKTRACE": "0"}
    started: dict[int, subprocess.Popen[bytes]] = {}
    errors: list[str] = []
    for pid in pids:
        command = [py_spy, "dump", "--full-filenames", "--pid", str(pid)]
        if pid not in running:
            command.append("--nonblocking")
        try:
            started[pid] = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
            )
        except OSError as exc:
            errors.append(str(exc))
    deadline = time.monotonic() + timeout
    dumps: dict[int, list[dict[str, Any]]] = {}
    for pid, child in started.items():
        try:
            out, err = child.communicate(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            errors.append(f"timed out after {timeout:g}s on pid {pid}")
            continue
        threads = _parse_py_spy(out.decode("utf-8", "replace"))
        if child.returncode == 0 and threads:
            dumps[pid] = threads
        elif os.path.exists(f"/proc/{pid}"):  # a process that just exited is no failure
            errors.append(
                _first_error(err.decode("utf-8", "replace")) or f"exit {child.returncode}"
            )
    if dumps:
        return "used", dumps
    if any(marker in error for error in errors for marker in _NOT_PERMITTED):
        return "not permitted", dumps
    if errors:
        return f"failed: {errors[0]}", dumps
    return "skipped", dumps


def _parse_py_spy(text: str) -> list[dict[str, Any]]:
    """`py-spy dump` output → [{"tid", "name", "status", "frames": innermost first}]."""
    threads: list[dict[str, Any]] = []
    for line in text.splitlines():
        thread = _PY_SPY_THREAD.match(line)
        if thread:
            ident, status, name = thread.groups()
            threads.append({"tid": int(ident, 0), "name": name, "status": status, "frames": []})
        elif threads and _PY_SPY_FRAME.match(line):
            threads[-1]["frames"].append(line.strip())
    return threads


def _main_thread(threads: list[dict[str, Any]], pid: int) -> dict[str, Any]:
    for thread in threads:
        if thread["tid"] == pid or thread["name"] == "MainThread":
            return thread
    return threads[0]


def _first_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    first = next((line for line in lines if line.startswith("Error")), lines[0] if lines else "")
    causes = [line for line in lines if re.match(r"^\d+: ", line)]
    first = first.removeprefix("Error: ")
    return f"{first} ({causes[0]})" if causes else first


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
    elif call in _SLEEPING or (call in _POLLING and blocked_fd is None):
        line = f"sleeping{idle} in {call}()"
    elif call in _WAITING_FOR_CHILD:
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
    return f"{line}; pid {lead['pid']} ({_short_command(lead['command'])})"


def _rank(report: dict[str, Any]) -> int:
    """How much a process explains: blocked on an fd > running > waiting > waiting for a child."""
    call, _fd, blocked_on, _tid = _telling_thread(report)
    if blocked_on is not None:
        return 4
    if report["state"].startswith("R") or call == "running":
        return 3
    if call is not None and call not in _WAITING_FOR_CHILD:
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
    frames: list[str] = (thread or _main_thread(threads, report["pid"]))["frames"]
    if not frames:
        return None
    innermost = _short_frame(frames[0])
    own = next((frame for frame in frames if not _LIBRARY.search(frame)), frames[0])
    if own == frames[0]:
        return innermost
    return f"{_short_frame(own)} → {innermost}"


def _short_frame(frame: str) -> str:
    """`f (/srv/app/job.py:12)` → `f (job.py:12)`."""
    match = _PY_SPY_FRAME.match(f"    {frame}")
    if match is None:
        return frame
    function, path, line = match.groups()
    return f"{function} ({os.path.basename(path)}:{line})"


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


def _short_command(command: str) -> str:
    """`/venv/bin/python /srv/jobs/sync.py --all` → `python sync.py --all`, at most a few words."""
    words = [os.path.basename(word) if word.startswith("/") else word for word in command.split()]
    text = " ".join(words)
    return text if len(text) <= _COMMAND_IN_SUMMARY else text[: _COMMAND_IN_SUMMARY - 1] + "…"
