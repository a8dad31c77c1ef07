"""What an fd of an inspected process is, and which fd a blocked call waits on.

A path is its own description; a socket is looked up by inode in the tables of the process's
network namespace (`sockets`), each namespace read once; a pipe is described by who holds its
other end, found among the inspected processes and their neighbours (parents, siblings,
descendants), since whoever holds that end is the one who can unblock the wait.
"""

from __future__ import annotations

import os
import re

from batchjob.diagnosis.procfs import (
    Process,
    inode_of,
    polled_fds,
    read_fd_links,
    read_memory,
    read_text,
    short_command,
)
from batchjob.diagnosis.sockets import Socket, socket_table
from batchjob.diagnosis.syscalls import EPOLLING, FD_FIRST, POLLING, Syscall, signed
from batchjob.runner import watch

_AT_FDCWD = -100
_MAX_NEIGHBOURS = 256


class FdDescriber:
    """What the fds of the inspected processes point at: sockets by inode, pipe holders."""

    def __init__(self, processes: list[Process]) -> None:
        self.processes = {process.pid: process for process in processes}
        self._sockets: dict[str, dict[int, Socket]] = {}
        self._pipe_holders: dict[int, list[tuple[int, int, str]]] | None = None
        self._commands: dict[int, str] = {p.pid: p.command for p in processes}
        self._socket_inodes = {
            inode_of(link)
            for process in processes
            for link in process.fd_links.values()
            if link.startswith("socket:[")
        }

    def blocked(self, process: Process, call: Syscall) -> tuple[int | list[int] | None, str | None]:
        """The fd (or polled fds) a call waits on, and what it is."""
        if call.name in FD_FIRST and call.args:
            fd = signed(call.args[0])
            return fd, self.describe(process, fd)
        if call.name in POLLING or call.name in EPOLLING:
            polled = polled_fds(process.pid, call, process.fd_links)
            if polled is None:
                return None, "fds not readable"
            if not polled:
                return None, None  # no fds: a sleep
            if len(polled) == 1:
                return polled, self.describe(process, polled[0])
            return polled, "; ".join(f"fd {fd}: {self.describe(process, fd)}" for fd in polled)
        if call.name in ("openat", "open") and call.args:
            address = call.args[1] if call.name == "openat" else call.args[0]
            raw = read_memory(process.pid, address, 4096)
            if raw is None:
                return None, None
            path = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            dirfd = signed(call.args[0]) if call.name == "openat" else _AT_FDCWD
            if not path.startswith("/") and dirfd != _AT_FDCWD and dirfd in process.fd_links:
                path = f"{process.fd_links[dirfd]}/{path}"
            return None, f"opening {path}"
        return None, None

    def describe(self, process: Process, fd: int) -> str:
        """fd `fd` of `process` in words: its path, its socket, or its pipe and the other end."""
        link = process.fd_links.get(fd)
        if link is None:
            return f"fd {fd} (not open)"
        if link.startswith("socket:["):
            found = self.socket(process, link)
            return found.describe() if found else link
        if link.startswith("pipe:["):
            return self._describe_pipe(process, fd, link)
        return link

    def socket(self, process: Process, link: str) -> Socket | None:
        """The socket behind `socket:[N]`, from the tables of the process's namespace."""
        table = self._sockets.get(process.netns)
        if table is None:
            table = socket_table(process.pid, process.netns, self._socket_inodes)
            self._sockets[process.netns] = table
        return table.get(inode_of(link))

    def _describe_pipe(self, process: Process, fd: int, link: str) -> str:
        """`pipe:[N] (read end; write end held by pid 12 (sleep 300))`: who can unblock it."""
        holders = self._holders().get(inode_of(link), [])
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
            inode_of(link)
            for process in self.processes.values()
            for link in process.fd_links.values()
            if link.startswith("pipe:[")
        }
        if wanted:
            for pid in self._neighbourhood():
                links = self.processes[pid].fd_links if pid in self.processes else None
                if links is None:
                    try:
                        links = read_fd_links(pid)
                    except OSError:
                        continue
                for fd, link in links.items():
                    if link.startswith("pipe:[") and inode_of(link) in wanted:
                        end = _pipe_end(pid, fd)
                        holders.setdefault(inode_of(link), []).append((pid, fd, end))
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
            argv = [arg for arg in (read_text(f"/proc/{pid}/cmdline") or "").split("\0") if arg]
            self._commands[pid] = " ".join(argv) or "?"
        return short_command(self._commands[pid])


def _pipe_end(pid: int, fd: int) -> str:
    """Which end of a pipe an fd is, from the access mode in /proc/<pid>/fdinfo/N."""
    info = read_text(f"/proc/{pid}/fdinfo/{fd}")
    found = re.search(r"^flags:\s*([0-7]+)", info or "", re.MULTILINE)
    if found is None:
        return "unknown"
    return {os.O_RDONLY: "read", os.O_WRONLY: "write"}.get(int(found.group(1), 8) & 3, "both")
