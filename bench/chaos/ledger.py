"""Read the ledger the jobs wrote: what ran, where, when, and whether anything ran twice."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from bench.chaos.faults import Fault


@dataclass
class Run:
    """One process of one attempt of one job, from its first record to its last."""

    job_id: int
    attempt: int
    pid: int
    worker_id: str
    start: float
    last: float
    ended: bool = False  # reached its own end (not killed on the way)


def read(path: Path) -> list[Run]:
    runs: dict[tuple[int, int, int], Run] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        kind, job_id, attempt, pid, worker_id, at = line.split()
        key = (int(job_id), int(attempt), int(pid))
        moment = float(at)
        run = runs.get(key)
        if run is None:
            run = runs[key] = Run(key[0], key[1], key[2], worker_id, moment, moment)
        run.start = min(run.start, moment)
        run.last = max(run.last, moment)
        run.ended = run.ended or kind == "end"
    return sorted(runs.values(), key=lambda run: (run.job_id, run.start))


def by_job(runs: list[Run]) -> dict[int, list[Run]]:
    grouped: dict[int, list[Run]] = defaultdict(list)
    for run in runs:
        grouped[run.job_id].append(run)
    return grouped


def concurrent_duplicates(runs: list[Run]) -> list[str]:
    """Pairs of runs of one job whose [first record, last record] intervals overlap."""
    found = []
    for job_id, job_runs in by_job(runs).items():
        earlier = job_runs[0]
        for later in job_runs[1:]:
            if later.start < earlier.last:
                found.append(
                    f"job {job_id}: attempt {earlier.attempt} (pid {earlier.pid}) ran until "
                    f"{earlier.last:.3f}, attempt {later.attempt} (pid {later.pid}) started at "
                    f"{later.start:.3f}"
                )
            if later.last > earlier.last:
                earlier = later
    return found


def repeated_attempts(runs: list[Run]) -> list[str]:
    """An attempt number that started twice: a rerun that no claim accounted for."""
    seen: dict[tuple[int, int], int] = {}
    found = []
    for run in runs:
        key = (run.job_id, run.attempt)
        if key in seen:
            found.append(f"job {run.job_id} attempt {run.attempt}: pids {seen[key]} and {run.pid}")
        seen[key] = run.pid
    return found


def orphans(runs: list[Run], faults: list[Fault]) -> list[tuple[Fault, Run]]:
    """The runs a fault took the worker away from (killed, frozen or cut off) mid-way.

    A run records every 0.25 s, so one whose last record is up to 0.5 s before the fault
    counts; unless a job kill had ended it already (its retry then waits its backoff and
    its turn, which says nothing of how fast orphans are rescued).
    """
    killed_at: dict[int, list[float]] = defaultdict(list)
    for fault in faults:
        if fault.kind == "job_kill":
            killed_at[int(fault.target.removeprefix("job "))].append(fault.at)
    found = []
    for fault in faults:
        if fault.worker_pid is None:
            continue
        marker = f":{fault.worker_pid}:"
        for run in runs:
            mid_way = run.start <= fault.at <= run.last + 0.5
            killed = any(run.start <= kill <= fault.at for kill in killed_at[run.job_id])
            if marker in f"{run.worker_id}:" and not run.ended and mid_way and not killed:
                found.append((fault, run))
    return found


def delays(
    orphaned: list[tuple[Fault, Run]], next_time: dict[int, list[float]]
) -> dict[str, dict[str, float | int]]:
    """Per kind of fault: seconds from the fault to the first of the job's `next_time` after
    it (median, max, how many jobs)."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    for fault, run in orphaned:
        later = [moment for moment in next_time.get(run.job_id, []) if moment > fault.at]
        if later:
            by_kind[fault.kind].append(min(later) - fault.at)
    return {
        kind: {
            "jobs": len(values),
            "median_seconds": round(statistics.median(values), 2),
            "max_seconds": round(max(values), 2),
        }
        for kind, values in sorted(by_kind.items())
    }


def starts(runs: list[Run]) -> dict[int, list[float]]:
    found: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        found[run.job_id].append(run.start)
    return found
