"""Which system call a thread sits in, from the line /proc/<pid>/syscall shows.

The kernel reports a bare number and six raw registers; the number means a different call on
each architecture, so the few calls a stalled process is usually found in are named here for
x86_64 and aarch64, and grouped by what they wait on (an fd, a set of polled fds, time, a
child) so that the rest of the inspection can ask "is this a wait on an fd?" by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

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
FD_FIRST = frozenset(
    {
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
        "preadv2", "pwritev2", "recvfrom", "recvmsg", "recvmmsg", "sendto", "sendmsg",
        "sendmmsg", "accept", "accept4", "connect", "flock", "fcntl", "ioctl", "fsync",
        "fdatasync", "sendfile", "splice", "copy_file_range", "lseek", "close",
        "io_uring_enter",
    }
)  # fmt: skip
POLLING = frozenset({"poll", "ppoll", "select", "pselect6"})
EPOLLING = frozenset({"epoll_wait", "epoll_pwait", "epoll_pwait2"})
SLEEPING = frozenset({"nanosleep", "clock_nanosleep", "pause", "rt_sigsuspend"})
WAITING_FOR_CHILD = frozenset({"wait4", "waitid"})


@dataclass
class Syscall:
    """One thread's system call, as /proc/<pid>/task/<tid>/syscall shows it."""

    name: str | None  # a name, "running", the raw number, or None when not in a call
    args: list[int] = field(default_factory=list)


def parse_syscall(text: str | None) -> Syscall:
    """`230 0x0 0x1 …` → clock_nanosleep with its arguments; "running" stays "running"."""
    if text is None:
        return Syscall(None)
    words = text.split()
    if not words or words[0] == "-1":
        return Syscall(None)  # blocked, but not inside a system call
    if words[0] == "running":
        return Syscall("running")
    try:
        number = int(words[0])
        args = [int(word, 16) for word in words[1:7]]
    except ValueError:
        return Syscall(words[0])
    return Syscall(_SYSCALL_NAMES.get(number, str(number)), args)


def signed(value: int) -> int:
    """A register holding a C int (an fd, AT_FDCWD) back to its signed value."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value
