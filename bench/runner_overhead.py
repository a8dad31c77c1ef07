"""What batchjob costs a job, against the bare machine, measured in one run.

1. Spawn rate: N `/bin/true` (and `python3 -c pass`) jobs through `batchjob worker --burst
   --concurrency 2`, against a bare loop of `subprocess.run` in 2 processes.
2. Output: a job writing 1 GiB to stdout under the worker, against the same command with
   its stdout redirected to a file.

    .venv/bin/python bench/runner_overhead.py [--jobs 500] [--gib 1] [--database-url URL]

Prints each figure and its ratio to the baseline; run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCHJOB = str(Path(sys.executable).with_name("batchjob"))
WRITE_GIB = (
    "import sys; block = b'x' * (1 << 20) + b'\\n'\n"
    "out = sys.stdout.buffer\n"
    "for _ in range(int(sys.argv[1]) * 1024): out.write(block)\n"
)


def bare_loop(command: list[str], count: int) -> None:
    for _ in range(count):
        subprocess.run(command, check=True)


def bare_rate(command: list[str], jobs: int) -> float:
    """Jobs per second of `subprocess.run` in 2 processes."""
    started = time.perf_counter()
    with multiprocessing.Pool(2) as pool:
        pool.starmap(bare_loop, [(command, jobs // 2), (command, jobs - jobs // 2)])
    return jobs / (time.perf_counter() - started)


def batchjob(directory: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [BATCHJOB, *args], cwd=directory, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout


def worker_rate(command: list[str], jobs: int, database_url: str | None) -> float:
    """Jobs per second through a burst worker with 2 slots (enqueue not counted)."""
    with tempfile.TemporaryDirectory(prefix="batchjob-bench-") as scratch:
        directory = Path(scratch)
        env = _environment(directory, database_url)
        batchjob(directory, env, "init")
        from batchjob import Queue
        from batchjob.config import load_settings

        queue = Queue(settings=load_settings(environ=env))
        queue.enqueue_many([{"command": command} for _ in range(jobs)])
        queue.close()
        started = time.perf_counter()
        batchjob(directory, env, "worker", "--burst", "--concurrency", "2")
        return jobs / (time.perf_counter() - started)


def output_seconds(gib: int, database_url: str | None) -> tuple[float, float]:
    """(worker wall time, bare wall time) for a job writing `gib` GiB to stdout."""
    command = [sys.executable, "-c", WRITE_GIB, str(gib)]
    with tempfile.TemporaryDirectory(prefix="batchjob-bench-") as scratch:
        directory = Path(scratch)
        with (directory / "bare.out").open("wb") as sink:
            started = time.perf_counter()
            subprocess.run(command, stdout=sink, check=True)
            bare = time.perf_counter() - started
        (directory / "bare.out").unlink()
        env = _environment(directory, database_url)
        (directory / "batchjob.toml").write_text(f'[worker]\nmax_log_bytes = "{gib + 1}GiB"\n')
        batchjob(directory, env, "init")
        batchjob(directory, env, "enqueue", "--", *command)
        started = time.perf_counter()
        batchjob(directory, env, "worker", "--burst")
        under_worker = time.perf_counter() - started
        return under_worker, bare


def _environment(directory: Path, database_url: str | None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env["BATCH_JOB_DATABASE_URL"] = database_url or f"sqlite:///{directory / 'bench.db'}"
    env["BATCH_JOB_LOG_DIR"] = str(directory / "logs")
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--gib", type=int, default=1)
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.jobs} jobs")
    for label, command in (
        ("/bin/true", ["/bin/true"]),
        ("python3 -c pass", [sys._base_executable, "-c", "pass"]),
    ):
        bare = bare_rate(command, args.jobs)
        worker = worker_rate(command, args.jobs, args.database_url)
        print(
            f"{label:>16}: worker {worker:7.1f} jobs/s, bare subprocess.run x2 {bare:7.1f} jobs/s,"
            f" ratio {worker / bare:.2f}"
        )
    under_worker, bare = output_seconds(args.gib, args.database_url)
    print(
        f"{args.gib} GiB to stdout: worker {under_worker:.2f}s, redirected to a file {bare:.2f}s,"
        f" speed ratio {bare / under_worker:.2f}"
    )


if __name__ == "__main__":
    main()
