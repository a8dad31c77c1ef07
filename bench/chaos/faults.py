"""Inject faults at random but seeded times, each kind up to its quota, while jobs run.

Every fault runs in its own thread (a frozen worker, a cut network and a restarting
database last seconds and may overlap); each is recorded with its time (Unix clock, the
ledger's) and target, so that rescues can be timed against it.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import psutil

from bench.chaos.fleet import Fleet
from bench.chaos.network import Namespaces
from bench.chaos.servers import Database

KINDS = ("worker_kill", "job_kill", "worker_stop", "database_restart", "network_cut")


@dataclass
class Fault:
    kind: str
    at: float  # Unix time the fault began
    target: str
    worker_pid: int | None = None
    detail: str = ""
    ended: float | None = None


class Injector(threading.Thread):
    def __init__(
        self,
        rng: random.Random,
        fleet: Fleet,
        database: Database,
        network: Namespaces | None,
        quota: int,
        mean_gap: float,
        lease_timeout: float,
    ) -> None:
        super().__init__(name="injector", daemon=True)
        self.rng = rng
        self.fleet = fleet
        self.database = database
        self.network = network
        self.kinds = [kind for kind in KINDS if kind != "network_cut" or network is not None]
        self.quota = quota
        self.mean_gap = mean_gap
        self.lease_timeout = lease_timeout
        self.faults: list[Fault] = []
        self.errors: list[str] = []
        self._stopping = threading.Event()
        self._running: list[threading.Thread] = []
        self._database_busy = threading.Lock()

    def count(self, kind: str) -> int:
        return sum(1 for fault in self.faults if fault.kind == kind)

    def run(self) -> None:
        while not self._stopping.wait(self.rng.expovariate(1 / self.mean_gap)):
            due = [kind for kind in self.kinds if self.count(kind) < self.quota]
            if not due:
                return
            kind = self.rng.choice(due)
            action = getattr(self, f"_{kind}")
            seed = self.rng.random()  # each fault's own choices, from the run's seed
            thread = threading.Thread(target=self._guarded, args=(action, seed), daemon=True)
            self._running.append(thread)
            thread.start()

    def finish(self) -> None:
        """Stop injecting and wait for every fault to be over (workers thawed, links up)."""
        self._stopping.set()
        self.join()
        for thread in self._running:
            thread.join()

    def _guarded(self, action: Any, seed: float) -> None:
        try:
            action(random.Random(seed))
        except Exception as exc:  # a fault that could not be made is reported, not fatal
            self.errors.append(f"{action.__name__}: {exc!r}")

    def _record(self, kind: str, target: str, worker_pid: int | None = None) -> Fault:
        fault = Fault(kind, time.time(), target, worker_pid)
        self.faults.append(fault)
        return fault

    def _outage_seconds(self, rng: random.Random) -> float:
        return self.lease_timeout * rng.uniform(1.3, 2.0)

    def _worker_kill(self, rng: random.Random) -> None:
        healthy = self.fleet.healthy()
        if not healthy:
            return
        slot = rng.choice(healthy)
        fault = self._record("worker_kill", f"worker slot {slot.index}", slot.pid)
        new_pid = self.fleet.kill_and_replace(slot)
        fault.detail = f"SIGKILL pid {fault.worker_pid}; replaced by pid {new_pid}"
        fault.ended = time.time()

    def _job_kill(self, rng: random.Random) -> None:
        running = self._job_processes()
        if not running:
            return
        pid, job_id = rng.choice(running)
        fault = self._record("job_kill", f"job {job_id}")
        try:
            os.kill(pid, signal.SIGKILL)
            fault.detail = f"SIGKILL pid {pid}"
        except ProcessLookupError:
            fault.detail = f"pid {pid} had already ended"
        fault.ended = time.time()

    def _worker_stop(self, rng: random.Random) -> None:
        healthy = self.fleet.healthy()
        if not healthy:
            return
        slot = rng.choice(healthy)
        seconds = self._outage_seconds(rng)
        fault = self._record("worker_stop", f"worker slot {slot.index}", slot.pid)
        fault.detail = f"SIGSTOP pid {slot.pid} for {seconds:.1f}s, then SIGCONT"
        self.fleet.freeze(slot, seconds)
        fault.ended = time.time()

    def _database_restart(self, rng: random.Random) -> None:
        if not self._database_busy.acquire(blocking=False):
            return  # one restart at a time: the next one is drawn later
        try:
            fault = self._record("database_restart", self.database.kind)
            fault.detail = self.database.interrupt(rng)
            fault.ended = time.time()
        finally:
            self._database_busy.release()

    def _network_cut(self, rng: random.Random) -> None:
        assert self.network is not None
        healthy = self.fleet.healthy()
        if not healthy:
            return
        slot = rng.choice(healthy)
        seconds = self._outage_seconds(rng)
        self.fleet.impair(slot, seconds)
        fault = self._record("network_cut", f"worker slot {slot.index}", slot.pid)
        fault.detail = f"link down for {seconds:.1f}s"
        self.network.cut(slot.index)
        try:
            time.sleep(seconds)
        finally:
            self.network.restore(slot.index)
        fault.ended = time.time()

    def _job_processes(self) -> list[tuple[int, str]]:
        """(pid, job id) of the main process of every job this fleet's workers run."""
        found = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmdline = process.info["cmdline"] or []
                if not any(part.endswith("chaos/job.py") for part in cmdline):
                    continue
                env = process.environ()
            except psutil.Error:
                continue
            if self.fleet.worker_of(env.get("BATCH_JOB_WORKER", "")) is not None:
                found.append((process.pid, env.get("BATCH_JOB_ID", "?")))
        return found
