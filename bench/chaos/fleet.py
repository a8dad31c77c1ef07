"""The workers of a chaos run: real `batchjob worker` processes, started as systemd would
(a minimal environment), each in its own slot; a killed worker is replaced in its slot."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Slot:
    index: int
    process: subprocess.Popen[bytes]
    impaired_until: float = 0.0  # monotonic: stopped or cut off until then
    history: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid


class Fleet:
    """`prefix(i)` wraps slot i's command (a network namespace), `url(i)` is its database."""

    def __init__(
        self,
        count: int,
        directory: Path,
        batchjob: str,
        url: Callable[[int], str],
        prefix: Callable[[int], list[str]],
    ) -> None:
        self.directory = directory
        self.batchjob = batchjob
        self.url = url
        self.prefix = prefix
        self.lock = threading.Lock()
        self.pids: set[int] = set()
        self.slots = [self._spawn(index) for index in range(count)]

    def log_dir(self, index: int) -> Path:
        return self.directory / "logs" / f"w{index}"

    def _spawn(self, index: int, log_dir: Path | None = None) -> Slot:
        env = {
            "PATH": f"{Path(self.batchjob).parent}:/usr/bin:/bin",
            "BATCH_JOB_DATABASE_URL": self.url(index),
            "BATCH_JOB_LOG_DIR": str(log_dir or self.log_dir(index)),
        }
        process = subprocess.Popen(
            [*self.prefix(index), self.batchjob, "worker"],
            cwd=self.directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.pids.add(process.pid)
        return Slot(index, process, history=[process.pid])

    def control(self, log_dir: Path) -> subprocess.Popen[bytes]:
        """One more worker, fresh, in slot 0's network: what an idle worker holds open."""
        return self._spawn(0, log_dir).process

    def healthy(self) -> list[Slot]:
        now = time.monotonic()
        with self.lock:
            return [slot for slot in self.slots if slot.impaired_until <= now]

    def kill_and_replace(self, slot: Slot) -> int:
        """SIGKILL the slot's worker, then start a new one there; returns the new pid."""
        with self.lock:
            slot.process.kill()
            slot.process.wait()
            replacement = self._spawn(slot.index)
            slot.process = replacement.process
            slot.history.append(replacement.pid)
            return replacement.pid

    def freeze(self, slot: Slot, seconds: float) -> None:
        """SIGSTOP the worker (not its jobs) for `seconds`, then SIGCONT; blocks meanwhile."""
        with self.lock:
            slot.impaired_until = time.monotonic() + seconds
            process = slot.process
            process.send_signal(signal.SIGSTOP)
        time.sleep(seconds)
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)

    def impair(self, slot: Slot, seconds: float) -> None:
        """Keep other faults off this slot for `seconds` (its network is cut)."""
        with self.lock:
            slot.impaired_until = time.monotonic() + seconds

    def worker_of(self, worker_id: str) -> int | None:
        """The pid in a BATCH_JOB_WORKER id (host:pid:nonce) if it is one of this fleet's."""
        parts = worker_id.split(":")
        pid = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
        return pid if pid in self.pids else None

    def terminate(self, timeout: float = 30.0) -> dict[int, int | None]:
        """SIGTERM every worker (SIGCONT first), wait; returns each pid's exit code."""
        codes: dict[int, int | None] = {}
        for slot in self.slots:
            if slot.process.poll() is None:
                slot.process.send_signal(signal.SIGCONT)
                slot.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            try:
                codes[slot.pid] = slot.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                slot.process.kill()
                slot.process.wait()
                codes[slot.pid] = None
        return codes
