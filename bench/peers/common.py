"""What every peer shares: the task body, the record of when jobs ran, the worker process.

Every peer runs the same task body (`run_job`) and records into the same kind of file, so the
figures differ only by what the peer itself does between enqueue and the task body.
Peer modules are imported by run.py and by the peers' own worker CLIs; settings reach the
workers through the BENCH_PEERS_* environment variables that run.py sets.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV_BIN = HERE / ".venv" / "bin"
QUEUE = "bench_peers"
#: A mark in each worker's environment, so that run.py can find any process it left behind.
TAG_VARIABLE = "BENCH_PEERS_TAG"


def redis_url() -> str:
    return os.environ.get("BENCH_PEERS_REDIS_URL", "redis://127.0.0.1:6379/9")


def postgres_dsn() -> str:
    return os.environ.get("BENCH_PEERS_PG_DSN", "postgresql://postgres@127.0.0.1:5432/bench_peers")


def mariadb_admin_url() -> str:
    """The MariaDB server's URL with no database: peers create and drop their own there."""
    return os.environ.get("BENCH_MARIADB_ADMIN_URL", "mysql://root@127.0.0.1:3306/")


def scratch() -> Path:
    return Path(os.environ.get("BENCH_PEERS_SCRATCH", "/tmp/bench-peers"))


@dataclass(frozen=True)
class JobSpec:
    """One job: which record file it writes to, its number, and the command its body runs."""

    marker: str
    index: int
    command: list[str]

    def kwargs(self) -> dict[str, object]:
        return {"marker": self.marker, "index": self.index, "command": self.command}


def run_job(marker: str, index: int, command: list[str]) -> None:
    """The task body of every peer: note the start, run the command, append one record line.

    One `write` of a short line to an O_APPEND file is atomic, so concurrent slots need no lock,
    and it costs microseconds: the same for every peer and for the bare baseline.
    """
    started = time.time()
    if command:
        subprocess.run(command, check=True)
    line = f"{index} {started:.6f} {time.time():.6f}\n".encode()
    descriptor = os.open(marker, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class Record:
    index: int
    started: float
    ended: float


def read_records(marker: Path) -> list[Record]:
    """The complete lines of a record file (a line still being written is left for later)."""
    try:
        text = marker.read_text()
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines(keepends=True):
        if line.endswith("\n"):
            index, started, ended = line.split()
            records.append(Record(int(index), float(started), float(ended)))
    return records


class WorkerDied(RuntimeError):
    pass


@dataclass
class WorkerProcess:
    """A peer's worker CLI (one or more processes), each in its own session to be killed whole.

    Every process carries `TAG_VARIABLE=tag` in its environment, inherited by its children,
    so that one left behind (a child that escaped to a new session) is found by its tag, not
    by a remembered pid that may meanwhile belong to someone else.
    """

    name: str
    argvs: list[list[str]]
    env: dict[str, str]
    log: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    started_at: float = 0.0

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        RUNNING.append(self)
        with self.log.open("ab") as sink:
            self.started_at = time.time()
            for argv in self.argvs:
                self.processes.append(
                    subprocess.Popen(
                        argv,
                        cwd=HERE,
                        env=self.env,
                        stdin=subprocess.DEVNULL,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def check_alive(self) -> None:
        for process in self.processes:
            if process.poll() is not None:
                raise WorkerDied(
                    f"{self.name} worker exited with {process.returncode}: {self.log_tail()}"
                )

    def log_tail(self, lines: int = 3) -> str:
        """The last lines of the log, without the frames of a rich traceback."""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        kept = [line for line in text.splitlines() if line.strip() and line[:1] not in "│╭╰"]
        return " | ".join(kept[-lines:])

    def pids(self) -> list[int]:
        """The worker processes and their descendants, now."""
        tree: list[int] = []
        for process in self.processes:
            if process.poll() is None:
                tree += [process.pid, *_descendants(process.pid)]
        return tree

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to each session (the peer's own graceful stop), then SIGKILL what is left."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        ESCAPED.extend((self.name, pid) for pid in kill_tagged(self.env[TAG_VARIABLE]))
        if self in RUNNING:
            RUNNING.remove(self)


#: Workers started and not yet stopped, for run.py's last-resort cleanup.
RUNNING: list[WorkerProcess] = []
#: (peer, pid) of processes that outlived their worker's stop and were killed by their tag.
ESCAPED: list[tuple[str, int]] = []


def tagged(tag: str) -> list[int]:
    """Processes whose environment carries this run's tag: workers or their children."""
    mark = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


def kill_tagged(tag: str) -> list[int]:
    """SIGKILL every process left with this run's tag; the pids, for the record."""
    found = tagged(tag)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return found


def _descendants(root: int) -> list[int]:
    try:
        import psutil
    except ImportError:
        return _descendants_from_proc(root)
    try:
        return [child.pid for child in psutil.Process(root).children(recursive=True)]
    except psutil.Error:
        return []


def _descendants_from_proc(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def memory_kib(pids: list[int]) -> tuple[int, int | None]:
    """(RSS, PSS) summed over `pids`, in KiB; PSS counts shared pages once across a fork tree."""
    rss = 0
    pss: int | None = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rss += next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            value = next(int(x.split()[1]) for x in rollup.splitlines() if x.startswith("Pss:"))
            pss = None if pss is None else pss + value
        except (OSError, StopIteration):
            pss = None
    return rss, pss


class Peer:
    """One peer job queue: how to enqueue into it, clear it and start its worker with 2 slots.

    Methods run in run.py's process, except the task each module defines, which runs in the
    worker and calls `run_job`. Each module's PEER names its subclass.
    """

    name: str = ""
    #: The distribution whose version is reported.
    package: str = ""
    broker: str = ""
    #: How the 2 slots are made, and why that setting (the peer's best reasonable one).
    slots: str = ""
    has_bulk: bool = False

    def setup(self) -> None:
        """Create what the peer needs in its store (schema, tables); called once."""

    def reset(self) -> None:
        """Remove every job and result, so each workload starts from an empty queue."""
        raise NotImplementedError

    def enqueue(self, job: JobSpec) -> None:
        raise NotImplementedError

    def enqueue_bulk(self, jobs: list[JobSpec]) -> None:
        """The peer's bulk API; only called when `has_bulk`."""
        raise NotImplementedError

    def worker_argv(self) -> list[str]:
        raise NotImplementedError

    def worker_argvs(self) -> list[list[str]]:
        """The processes that make the 2 slots: one CLI, unless the peer runs one per slot."""
        return [self.worker_argv()]

    def worker_env(self) -> dict[str, str]:
        """Variables the worker needs beyond run.py's BENCH_PEERS_* settings."""
        return {}

    def records(self, marker: Path) -> list[Record]:
        """What the jobs of `marker` have recorded so far: the task bodies' record file."""
        return read_records(marker)

    def close(self) -> None:
        """Close the client connections opened by enqueue."""


def cli(name: str) -> str:
    """A console script of the peers' virtualenv."""
    return str(VENV_BIN / name)


def flush_redis() -> None:
    """Empty the benchmark's own Redis database (db 9 by default), never another one."""
    import redis

    client = redis.Redis.from_url(redis_url())
    try:
        client.flushdb()
    finally:
        client.close()
