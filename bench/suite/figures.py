"""batchjob's own figures, each against a baseline measured in the same call.

- enqueue (SQLite): Queue.enqueue one by one and enqueue_many, against sqlite3 inserting the
  same row the same way (a transaction each / one executemany).
- output: a job writing N GiB to stdout under a worker, against the same command with its
  stdout redirected to a file and through `cat` into a file, in turns; and the worker's RSS
  before and at its peak meanwhile.
- claim_cost: claim + finish of one job, through the Store, with 1,000,000 finished and
  100,000 pending rows in the table, against the same on a table of a few pending rows in a
  database beside it, the two taken in turns.
- progress: a job reporting progress 100,000 times a second, against the same job not
  reporting, both under the worker, in turns; and the database writes the reports cost.
- scaling: `/bin/true` jobs through 8 workers on one database, against 1 worker; and every
  deadlock error (MySQL 1213, PostgreSQL 40P01) the workers logged.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench.suite.databases import BATCHJOB, count_job_updates, job_updates, worker_env

WRITE_GIB = (
    "import sys; block = b'x' * (1 << 20) + b'\\n'\n"
    "out = sys.stdout.buffer\n"
    "for _ in range(int(float(sys.argv[1]) * 1024)): out.write(block)\n"
)
# 100,000 reports a second: each unit of work (a SHA-256 of 14 KiB) takes about 10 us here,
# and each is reported; the figure prints the rate the reporting job reached.
REPORTING = (
    "import hashlib, sys, time\n"
    "from batchjob import progress\n"
    "units, report = int(sys.argv[1]), sys.argv[2] == '1'\n"
    "block = b'x' * 14336\n"
    "started = time.perf_counter()\n"
    "for unit in range(1, units + 1):\n"
    "    hashlib.sha256(block).digest()\n"
    "    if report: progress('第六竹石', current=unit, total=units)\n"
    "print(f'seconds={time.perf_counter() - started:.6f}')\n"
)
# How MariaDB/MySQL (error 1213) and PostgreSQL (SQLSTATE 40P01) word a deadlock.
DEADLOCK_MARKS = ("(1213,", "Deadlock found", "40P01", "deadlock detected")
CLAIM_COST_ROUNDS = 10
# A 1 GiB write took 0.46 to 2.17 s here within one run, to a file as through the worker,
# in two modes about twice apart: the median of three rounds read the worker at 0.50x `cat`,
# of seven 0.98x, ten minutes later.
OUTPUT_ROUNDS = 7
PROGRESS_ROUNDS = 3


class Workers:
    """`batchjob worker` processes on one database, stopped (SIGTERM) when the block ends."""

    def __init__(self, url: str, directory: Path, count: int = 1, concurrency: int = 2) -> None:
        self.url, self.directory = url, directory
        self.processes: list[subprocess.Popen[bytes]] = []
        self.count, self.concurrency = count, concurrency

    @contextlib.contextmanager
    def running(self) -> Iterator[list[subprocess.Popen[bytes]]]:
        env = worker_env(self.url, self.directory)
        try:
            for _ in range(self.count):
                self.processes.append(
                    subprocess.Popen(
                        [BATCHJOB, "worker", "--concurrency", str(self.concurrency)],
                        cwd=self.directory,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            yield self.processes
        finally:
            for process in self.processes:
                process.terminate()
            for process in self.processes:
                process.wait(timeout=60)


def _worker_log(directory: Path) -> str:
    """What every worker started in `directory` logged (they share one log file)."""
    path = directory / "logs" / "batch_job_worker.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _queue(url: str, directory: Path) -> Any:
    from batchjob import Queue
    from batchjob.config import load_settings

    return Queue(settings=load_settings(environ=worker_env(url, directory)))


def _ended(queue: Any) -> int:
    """Jobs that have ended, all queues together: a count is cheap to poll."""
    return sum(
        count
        for statuses in queue.stats().values()
        for status, count in statuses.items()
        if status in ("completed", "failed", "cancelled")
    )


def _wait_all(queue: Any, ids: list[int], timeout: float, ended_before: int = 0) -> list[Any]:
    """The jobs `ids`, once as many more jobs have ended as there are ids."""
    deadline = time.monotonic() + timeout
    while (ended := _ended(queue) - ended_before) < len(ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ended}/{len(ids)} jobs ended after {timeout:.0f}s")
        time.sleep(0.05)
    return [queue.get(job_id) for job_id in ids]


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))


def _idle(queue: Any) -> None:
    """Let a just-started worker finish starting: one job through it."""
    ended_before = _ended(queue)
    (job,) = queue.enqueue_many([{"command": ["/bin/true"]}])
    _wait_all(queue, [job.id], timeout=60, ended_before=ended_before)


# ---- output --------------------------------------------------------------------------------


def output(url: str, directory: Path, gib: float, rounds: int = OUTPUT_ROUNDS) -> dict[str, Any]:
    """The three ways to run the writer, in turns, each side its median: how fast a 1 GiB
    write reaches this disk's page cache moves by half between runs on this machine."""
    command = [sys.executable, "-c", WRITE_GIB, str(gib)]
    (directory / "batchjob.toml").write_text(f'[worker]\nmax_log_bytes = "{int(gib) + 1}GiB"\n')
    queue = _queue(url, directory)
    workers = Workers(url, directory, concurrency=1)
    bare, through_cat, under_worker = [], [], []
    with workers.running() as (worker,):
        _idle(queue)
        idle_kib = peak_kib = _rss_kib(worker.pid)
        for _ in range(rounds):
            bare.append(_to_file(command, directory / "bare.out", through_cat=False))
            through_cat.append(_to_file(command, directory / "cat.out", through_cat=True))
            (job,) = queue.enqueue_many([{"command": command}])
            while queue.get(job.id).status.value in ("pending", "running"):
                peak_kib = max(peak_kib, _rss_kib(worker.pid))
                time.sleep(0.05)
            job = queue.get(job.id)
            if job.status.value != "completed":
                raise RuntimeError(f"the output job ended {job.status.value}: {job.error_summary}")
            under_worker.append((job.completed_at - job.started_at).total_seconds())
            if job.log_path:  # a round's log: up to the GiB it wrote
                Path(job.log_path).unlink()
    queue.close()
    (directory / "batchjob.toml").unlink()
    bare_seconds = statistics.median(bare)
    cat_seconds = statistics.median(through_cat)
    worker_seconds = statistics.median(under_worker)
    return {
        "gib": gib,
        "bare_seconds": bare_seconds,
        "cat_seconds": cat_seconds,
        "worker_seconds": worker_seconds,
        "speed_ratio": bare_seconds / worker_seconds,
        "cat_ratio": cat_seconds / worker_seconds,
        "rounds": {"bare": bare, "cat": through_cat, "worker": under_worker},
        "worker_rss_idle_mib": idle_kib / 1024,
        "worker_rss_peak_mib": peak_kib / 1024,
    }


def _to_file(command: list[str], path: Path, *, through_cat: bool) -> float:
    """Seconds for `command` to write into `path`, directly or through a pipe that `cat`
    drains: the least any design pays that keeps a job's output in a file of its own."""
    with path.open("wb") as sink:
        started = time.perf_counter()
        if through_cat:
            cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=sink)
            assert cat.stdin is not None
            subprocess.run(command, stdout=cat.stdin, check=True)
            cat.stdin.close()
            cat.wait()
        else:
            subprocess.run(command, stdout=sink, check=True)
        seconds = time.perf_counter() - started
    path.unlink()
    return seconds


# ---- enqueue -------------------------------------------------------------------------------


def enqueue(url: str, directory: Path, jobs: int) -> dict[str, Any]:
    """Queue.enqueue one by one and enqueue_many, against the driver inserting the same row
    (SQLite only: its driver, sqlite3, is the one place with no network in between)."""
    import sqlite3

    queue = _queue(url, directory)
    queue.enqueue(["/bin/true"])  # connect and warm up outside the timing
    started = time.perf_counter()
    for _ in range(jobs):
        queue.enqueue(["/bin/true"])
    one_by_one = jobs / (time.perf_counter() - started)
    started = time.perf_counter()
    queue.enqueue_many([{"command": ["/bin/true"]} for _ in range(jobs * 10)])
    bulk = jobs * 10 / (time.perf_counter() - started)
    queue.close()
    connection = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    connection.execute("PRAGMA synchronous=NORMAL")  # as batchjob sets it
    insert = (
        "INSERT INTO batch_job_queue (queue, command, params, env, tags, status, priority,"
        " attempt, max_attempts, lost_attempts, run_at, created_at)"
        " VALUES ('default', '[\"/bin/true\"]', '{}', '{}', '[]', 'pending', 0, 0, 1, 0,"
        " strftime('%Y-%m-%d %H:%M:%f000', 'now'), strftime('%Y-%m-%d %H:%M:%f000', 'now'))"
    )
    started = time.perf_counter()
    for _ in range(jobs):
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(insert + " RETURNING id").fetchall()
        connection.execute("COMMIT")
    raw_one_by_one = jobs / (time.perf_counter() - started)
    started = time.perf_counter()
    connection.execute("BEGIN IMMEDIATE")
    connection.executemany(insert, [()] * (jobs * 10))
    connection.execute("COMMIT")
    raw_bulk = jobs * 10 / (time.perf_counter() - started)
    connection.close()
    return {
        "one_by_one_per_s": one_by_one,
        "bulk_per_s": bulk,
        "driver_one_by_one_per_s": raw_one_by_one,
        "driver_bulk_per_s": raw_bulk,
        "one_by_one_ratio": one_by_one / raw_one_by_one,
        "bulk_ratio": bulk / raw_bulk,
    }


# ---- claim cost ----------------------------------------------------------------------------


def claim_cost(
    loaded_url: str, empty_url: str, finished: int, pending: int, loops: int
) -> dict[str, Any]:
    """Claim + finish of one job on a database filled with finished and pending rows, and on
    an empty one beside it, taken in turns (CLAIM_COST_ROUNDS of each): the machine's speed,
    which drifts within minutes here, and the server's writing out of the fill weigh on both
    alike. Each side's figure is the median of its calls: a durable commit now and then
    waits for the disk many times longer (a mean of them moved by a third between runs)."""
    from batchjob.model import JobStatus, NewJob
    from batchjob.store import Outcome, Store

    stores = {"empty": Store(empty_url), "loaded": Store(loaded_url)}
    fill_seconds = _fill(loaded_url, finished, pending)
    seconds: dict[str, list[float]] = {name: [] for name in stores}
    for store in stores.values():
        store.enqueue([NewJob(command=["/bin/true"]) for _ in range(loops)])
    for _ in range(CLAIM_COST_ROUNDS):
        for name, store in stores.items():
            for _ in range(loops // CLAIM_COST_ROUNDS):
                started = time.perf_counter()
                (claimed,) = store.claim("bench", None, 1, 60)
                store.finish(claimed.lease, Outcome(JobStatus.COMPLETED, exit_code=0))
                seconds[name].append(time.perf_counter() - started)
    for store in stores.values():
        store.close()
    empty, loaded = statistics.median(seconds["empty"]), statistics.median(seconds["loaded"])
    return {
        "finished_rows": finished,
        "pending_rows": pending,
        "fill_seconds": fill_seconds,
        "rounds": CLAIM_COST_ROUNDS,
        "empty_ms": empty * 1000,
        "loaded_ms": loaded * 1000,
        "empty_mean_ms": statistics.fmean(seconds["empty"]) * 1000,
        "loaded_mean_ms": statistics.fmean(seconds["loaded"]) * 1000,
        "cost_ratio": loaded / empty,
    }


def _fill(url: str, finished: int, pending: int) -> float:
    """Insert old finished rows and pending rows due long ago, generated by the database."""
    engine = create_engine(url)
    kind = engine.dialect.name
    started = time.perf_counter()
    for status, count in (("completed", finished), ("pending", pending)):
        if kind == "sqlite":
            source = (
                "(WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL"
                f" SELECT i + 1 FROM n WHERE i < {count}) SELECT i FROM n)"
            )
        elif kind == "postgresql":
            source = f"generate_series(1, {count})"
        else:
            source = f"seq_1_to_{count}"
        completed_at = "'2026-01-01 00:00:01'" if status == "completed" else "NULL"
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO batch_job_queue (queue, command, params, env, tags, status,"
                    " priority, attempt, max_attempts, lost_attempts, run_at, created_at,"
                    " completed_at) SELECT 'default', '[\"/bin/true\"]', '{}', '{}', '[]',"
                    f" '{status}', 0, {int(status == 'completed')}, 1, 0,"
                    f" '2026-01-01 00:00:00', '2026-01-01 00:00:00', {completed_at}"
                    f" FROM {source} AS generated"
                )
            )
    if kind == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("ANALYZE batch_job_queue"))
    elif kind == "mariadb":
        with engine.connect() as connection:
            connection.execute(text("ANALYZE TABLE batch_job_queue"))
    engine.dispose()
    return time.perf_counter() - started


# ---- progress ------------------------------------------------------------------------------


def progress(
    url: str, directory: Path, units: int, rounds: int = PROGRESS_ROUNDS
) -> dict[str, Any]:
    """The silent job and the reporting one in turns, `rounds` of each sharing `units`, each
    side its median round: one job a side, measured once, moved by 0.03 between runs."""
    count_job_updates(url)
    queue = _queue(url, directory)
    per_job = units // rounds
    turns: dict[str, list[dict[str, Any]]] = {"silent": [], "reporting": []}
    with Workers(url, directory, concurrency=1).running():
        _idle(queue)
        for _ in range(rounds):
            for label, report in (("silent", "0"), ("reporting", "1")):
                turns[label].append(_progress_job(url, queue, per_job, report))
    queue.close()
    silent, reporting = (
        sorted(turns[label], key=lambda turn: turn["seconds"])[(rounds - 1) // 2]
        for label in ("silent", "reporting")
    )
    return {
        "units": per_job,
        "silent": silent,
        "reporting": reporting,
        "rounds": turns,
        "speed_ratio": silent["seconds"] / reporting["seconds"],
        "writes_per_s": sum(turn["row_updates"] for turn in turns["reporting"])
        / sum(turn["run_seconds"] for turn in turns["reporting"]),
    }


def _progress_job(url: str, queue: Any, units: int, report: str) -> dict[str, Any]:
    """One run of the job (`report` "1": reporting each unit), from its own clock."""
    before, ended_before = job_updates(url), _ended(queue)
    (job,) = queue.enqueue_many(
        [{"command": [sys.executable, "-c", REPORTING, str(units), report]}]
    )
    (job,) = _wait_all(queue, [job.id], timeout=600, ended_before=ended_before)
    if job.status.value != "completed":
        raise RuntimeError(f"the progress job ended {job.status.value}")
    log = Path(job.log_path).read_text()
    seconds = float(log.rsplit("seconds=", 1)[1].split()[0])
    return {
        "seconds": seconds,
        "reports_per_s": units / seconds if report == "1" else 0,
        "row_updates": job_updates(url) - before,
        "run_seconds": (job.completed_at - job.started_at).total_seconds(),
        "last_progress": job.progress_current,
    }


# ---- scaling -------------------------------------------------------------------------------


def scaling(url: str, directory: Path, jobs: int, counts: tuple[int, ...]) -> dict[str, Any]:
    """Throughput of `/bin/true` jobs, 2 slots a worker, by number of workers."""
    queue = _queue(url, directory)
    rows: dict[str, Any] = {}
    for count in counts:
        workers = Workers(url, directory, count=count)
        with workers.running():
            _idle(queue)
            ended_before = _ended(queue)
            stored = queue.enqueue_many([{"command": ["/bin/true"]} for _ in range(jobs)])
            ended = _wait_all(
                queue, [job.id for job in stored], 60 + jobs * 0.1, ended_before=ended_before
            )
        finished = sorted(job.completed_at for job in ended)
        failed = sum(1 for job in ended if job.status.value != "completed")
        rows[str(count)] = {
            "jobs_per_s": (len(finished) - 1) / (finished[-1] - finished[0]).total_seconds(),
            "failed": failed,
        }
    log = _worker_log(directory)
    queue.close()
    base = rows[str(counts[0])]["jobs_per_s"]
    for row in rows.values():
        row["ratio"] = row["jobs_per_s"] / base
    rows["deadlock_lines"] = [
        line for line in log.splitlines() if any(mark in line for mark in DEADLOCK_MARKS)
    ]
    rows["warning_lines"] = [
        line for line in log.splitlines() if " WARNING " in line or " ERROR " in line
    ]
    return rows
