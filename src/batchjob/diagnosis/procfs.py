"""One process as /proc shows it, read without attaching to it or stopping it.

Each file is read once per look: stat for state, parent, threads, CPU and RSS; cmdline, exe,
wchan, the net namespace; the fd links; each thread's system call. The fds a poll()/select()
waits on are only in the caller's memory, so they are read through /proc/<pid>/mem. A file
that vanishes (the process exited meanwhile) reads as None, never as an error.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
from dataclasses import dataclass

from batchjob.diagnosis.syscalls import EPOLLING, Syscall, parse_syscall, signed
from batchjob.runner import watch

_STATES = {
    "R": "running", "S": "sleeping", "D": "disk sleep", "T": "stopped", "t": "tracing stop",
    "X": "dead", "Z": "zombie", "P": "parked", "I": "idle", "W": "waking", "K": "wakekill",
}  # fmt: skip
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_MAX_POLLED_FDS = 256
_MAX_THREADS_READ = 64
_COMMAND_SHOWN = 48  # characters of a command line in a one-line description


@dataclass
class Process:
    """One process at the moment it was read."""

    pid: int
    ppid: int
    command: str
    state: str
    wchan: str | None
    syscall: Syscall
    fd_links: dict[int, str]
    rss_bytes: int
    threads: int
    cpu_seconds: float
    python: bool
    netns: str
    thread_syscalls: dict[int, Syscall]


def read_text(path: str) -> str | None:
    """The file's text, or None when it is gone or not ours to read."""
    try:
        return watch.read_kernel_file(path).decode("utf-8", "replace")
    except OSError:
        return None


def read_process(pid: int) -> Process | None:
    """One process, each /proc file read once; None when it is gone (or a zombie)."""
    stat = read_text(f"/proc/{pid}/stat")
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
    argv = (read_text(f"/proc/{pid}/cmdline") or "").split("\0")
    argv = [arg for arg in argv if arg]
    try:
        fd_links = read_fd_links(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None  # exited while being read
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = ""
    thread_syscalls: dict[int, Syscall] = {}
    if 1 < threads <= _MAX_THREADS_READ:
        with contextlib.suppress(OSError):
            for tid in map(int, os.listdir(f"/proc/{pid}/task")):
                if tid != pid:
                    thread_syscalls[tid] = parse_syscall(
                        read_text(f"/proc/{pid}/task/{tid}/syscall")
                    )
    try:
        netns = os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        netns = f"pid:{pid}"
    wchan = read_text(f"/proc/{pid}/wchan")
    return Process(
        pid=pid,
        ppid=ppid,
        command=" ".join(argv) or name,
        state=f"{letter} ({_STATES.get(letter, 'unknown')})",
        wchan=wchan if wchan and wchan != "0" else None,
        syscall=parse_syscall(read_text(f"/proc/{pid}/syscall")),
        fd_links=fd_links,
        rss_bytes=rss_bytes,
        threads=threads,
        cpu_seconds=round(cpu_seconds, 2),
        python=_looks_like_python(exe, argv),
        netns=netns,
        thread_syscalls=thread_syscalls,
    )


def read_fd_links(pid: int) -> dict[int, str]:
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


def _looks_like_python(exe: str, argv: list[str]) -> bool:
    names = [os.path.basename(exe), os.path.basename(argv[0]) if argv else ""]
    return any(name.startswith("python") for name in names)


def read_memory(pid: int, address: int, size: int) -> bytes | None:
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


def polled_fds(pid: int, call: Syscall, fd_links: dict[int, str]) -> list[int] | None:
    """The fds a poll/select/epoll call waits on, read from its arguments; None if unknown."""
    args = call.args
    if len(args) < 3:
        return None
    if call.name in ("poll", "ppoll"):
        count = min(args[1], _MAX_POLLED_FDS)
        if count == 0:
            return []
        data = read_memory(pid, args[0], count * 8)
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
            bitmap = read_memory(pid, address, (count + 7) // 8)
            if bitmap is None:
                return None
            wanted.update(fd for fd in range(count) if bitmap[fd // 8] >> (fd % 8) & 1)
        return sorted(wanted)
    if call.name in EPOLLING:
        epoll_fd = signed(args[0])
        if epoll_fd not in fd_links:
            return None
        info = read_text(f"/proc/{pid}/fdinfo/{epoll_fd}")
        if info is None:
            return None
        return [int(m) for m in re.findall(r"^tfd:\s*(\d+)", info, re.MULTILINE)]
    return None


def inode_of(link: str) -> int:
    """`socket:[123]` → 123."""
    try:
        return int(link[link.index("[") + 1 : link.rindex("]")])
    except ValueError:
        return -1


def short_command(command: str) -> str:
    """`/venv/bin/python /srv/jobs/sync.py --all` → `python sync.py --all`, at most a few words."""
    words = [os.path.basename(word) if word.startswith("/") else word for word in command.split()]
    text = " ".join(words)
    return text if len(text) <= _COMMAND_SHOWN else text[: _COMMAND_SHOWN - 1] + "…"
