"""What a socket fd is connected to: protocol, both ends, state and queues, by inode.

TCP and UDP sockets are decoded from /proc/<pid>/net/{tcp,tcp6,udp,udp6}, read in the
process's own network namespace. A Unix socket is harder: /proc/net/unix names only the end
that was bound, so the path a client is connected to is found by asking the kernel's
sock_diag over netlink for each socket's peer (with a short timeout, never blocking a look).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from dataclasses import dataclass

from batchjob.diagnosis.procfs import read_text

_TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
    12: "NEW_SYN_RECV",
}  # fmt: skip
_UNIX_STATES = {1: "UNCONNECTED", 2: "CONNECTING", 3: "CONNECTED", 4: "DISCONNECTING"}
_INET_TABLES = ("tcp", "tcp6", "udp", "udp6")
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_UDIAG_SHOW_NAME, _UDIAG_SHOW_PEER = 0x1, 0x4
_UNIX_DIAG_NAME, _UNIX_DIAG_PEER = 0, 2


@dataclass
class Socket:
    """One socket as the kernel's tables show it."""

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


def socket_table(pid: int, netns: str, inodes: set[int]) -> dict[int, Socket]:
    """inode → socket for `inodes`, from /proc/<pid>/net (the process's network namespace).

    Only the lines of the wanted inodes are decoded: a busy host has thousands of others.
    """
    table: dict[int, Socket] = {}
    wanted = {str(inode) for inode in inodes}
    for kind in _INET_TABLES:
        text = read_text(f"/proc/{pid}/net/{kind}") or ""
        for line in text.splitlines()[1:]:
            words = line.split()
            if len(words) < 10 or words[9] not in wanted:
                continue
            with contextlib.suppress(ValueError, OSError):
                local, remote = _address(words[1]), _address(words[2])
                state = int(words[3], 16)
                send_queue, recv_queue = (int(part, 16) for part in words[4].split(":"))
                connected = not remote.endswith(":0")
                table[int(words[9])] = Socket(
                    kind=kind,
                    local=local,
                    remote=remote if connected else None,
                    state=_TCP_STATES.get(state, str(state)) if kind.startswith("tcp") else None,
                    recv_queue=recv_queue,
                    send_queue=send_queue,
                )
    unix = read_text(f"/proc/{pid}/net/unix") or ""
    unnamed = False
    for line in unix.splitlines()[1:]:
        words = line.split(maxsplit=7)
        if len(words) < 7 or words[6] not in wanted:
            continue
        with contextlib.suppress(ValueError):
            path = words[7] if len(words) > 7 else None
            state = int(words[5], 16)
            table[int(words[6])] = Socket("unix", path, None, _UNIX_STATES.get(state, str(state)))
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
