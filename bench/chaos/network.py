"""Network cuts for real: each worker runs in its own network namespace, joined to the host
by a veth pair; a cut sets the host's end down, so packets are lost both ways and the
workers' TCP connections see what a pulled cable gives them (no reset, no answer).
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from pathlib import Path

LOCK = Path("/tmp/batchjob-chaos-network.lock")  # two runs at once must not pick one subnet


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Namespaces:
    """`count` namespaces bj<tag>w<i>, host address 10.<net>.<i>.1, worker's 10.<net>.<i>.2."""

    def __init__(self, count: int) -> None:
        self.tag = f"{os.getpid() % 100000:05d}"
        self.count = count
        self._made: list[int] = []
        with LOCK.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.net = _free_subnet()
            try:
                for index in range(count):
                    self._make(index)
            except BaseException:
                self.close()
                raise

    def name(self, index: int) -> str:
        return f"bj{self.tag}w{index}"

    def host_address(self, index: int) -> str:
        return f"10.{self.net}.{index}.1"

    def prefix(self, index: int) -> list[str]:
        """The argv prefix that runs a command inside namespace `index`."""
        return ["ip", "netns", "exec", self.name(index)]

    def cut(self, index: int) -> None:
        _ip("link", "set", self._host_end(index), "down")

    def restore(self, index: int) -> None:
        _ip("link", "set", self._host_end(index), "up")

    def close(self) -> None:
        for index in self._made:  # whatever is already gone: delete the rest
            namespace, host_end = self.name(index), self._host_end(index)
            for command in (["netns", "del", namespace], ["link", "del", host_end]):
                subprocess.run(["ip", *command], check=False, capture_output=True)
        self._made.clear()

    def _host_end(self, index: int) -> str:
        return f"bj{self.tag}h{index}"

    def _make(self, index: int) -> None:
        namespace, host_end, worker_end = (
            self.name(index),
            self._host_end(index),
            f"bj{self.tag}p{index}",
        )
        _ip("netns", "add", namespace)
        self._made.append(index)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", worker_end)
        _ip("link", "set", worker_end, "netns", namespace)
        _ip("addr", "add", f"{self.host_address(index)}/24", "dev", host_end)
        _ip("link", "set", host_end, "up")
        inside = ["netns", "exec", namespace, "ip"]
        _ip(*inside, "addr", "add", f"10.{self.net}.{index}.2/24", "dev", worker_end)
        _ip(*inside, "link", "set", worker_end, "up")
        _ip(*inside, "link", "set", "lo", "up")


def _free_subnet() -> int:
    taken = subprocess.run(["ip", "-o", "-4", "addr"], check=True, capture_output=True, text=True)
    taken = taken.stdout
    used = {int(match) for match in re.findall(r"inet 10\.(\d+)\.", taken)}
    for candidate in range(200, 255):
        if candidate not in used:
            return candidate
    raise RuntimeError("no free 10.x subnet for the chaos run's namespaces")
