"""What is true at the end of a chaos run, read from the database, /proc and the ledger."""

from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, text

from batchjob.worker.supervisor import WORKER_LOG_NAME
from bench.chaos import ledger
from bench.chaos.fleet import Fleet

POOL_SIZE, MAX_OVERFLOW = 5, 10  # the store's connection pool (batchjob.store.dialects)
# The events that account for an attempt that did not reach its end.
INTERRUPTION_EVENTS = ("rescued", "released", "attempt", "lease_lost")


def database_state(url: str) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]], int]:
    """(jobs by id, events, rows in the queue table)."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            jobs = {
                row["id"]: dict(row)
                for row in connection.execute(
                    text("SELECT id, status, attempt, failure_reason FROM batch_job_queue")
                ).mappings()
            }
            events = [
                dict(row)
                for row in connection.execute(
                    text("SELECT job_id, attempt, kind, at FROM batch_job_events")
                ).mappings()
            ]
            rows = connection.execute(text("SELECT COUNT(*) FROM batch_job_queue")).scalar_one()
    finally:
        engine.dispose()
    return jobs, events, int(rows)


def rescues(events: list[dict[str, Any]]) -> dict[int, list[float]]:
    """Unix times of each job's `rescued` events (stored as naive UTC)."""
    found: dict[int, list[float]] = {}
    for event in events:
        if event["kind"] == "rescued":
            at = event["at"]
            if isinstance(at, str):  # SQLite hands back text
                at = datetime.fromisoformat(at)
            moment = at.replace(tzinfo=UTC).timestamp()
            found.setdefault(event["job_id"], []).append(moment)
    return found


def lost_jobs(jobs: dict[int, dict[str, Any]], designed_to_fail: set[int]) -> list[str]:
    """Jobs not in the state they must end in: completed, or failed for those made to fail."""
    lost = []
    for job_id, job in sorted(jobs.items()):
        expected = "failed" if job_id in designed_to_fail else "completed"
        if job["status"] != expected:
            lost.append(
                f"job {job_id}: {job['status']} ({job['failure_reason']}) after attempt "
                f"{job['attempt']}, expected {expected}"
            )
    return lost


def unexplained_interruptions(runs: list[ledger.Run], events: list[dict[str, Any]]) -> list[str]:
    """Attempts that stopped before their end with no event in the job's history saying so."""
    said = Counter((event["job_id"], event["attempt"], event["kind"]) for event in events)
    lost_lease = {}
    for event in events:
        if event["kind"] == "lease_lost":
            lost_lease.setdefault(event["job_id"], []).append(event["attempt"])
    unexplained = []
    for run in runs:
        if run.ended:
            continue
        if any(said[(run.job_id, run.attempt, kind)] for kind in INTERRUPTION_EVENTS):
            continue
        if any(attempt >= run.attempt for attempt in lost_lease.get(run.job_id, [])):
            continue
        unexplained.append(f"job {run.job_id} attempt {run.attempt} (pid {run.pid})")
    return unexplained


def leftover_processes(fleet: Fleet) -> list[str]:
    """Processes still carrying the id of one of this run's workers."""
    found = []
    for process in psutil.process_iter(["pid", "name"]):
        try:
            env = process.environ()
        except psutil.Error:
            continue
        if fleet.worker_of(env.get("BATCH_JOB_WORKER", "")) is not None:
            job_id = env.get("BATCH_JOB_ID")
            found.append(f"pid {process.pid} ({process.info['name']}) of job {job_id}")
    return found


def workers_gone(fleet: Fleet) -> list[dict[str, Any]]:
    """The fleet's workers that ended before the run's end (none should): each with its exit
    code and the last lines of its log, the evidence of why."""
    gone = []
    for slot in fleet.slots:
        if slot.process.poll() is None:
            continue
        log = fleet.log_dir(slot.index) / WORKER_LOG_NAME
        try:
            tail = log.read_text(errors="replace").splitlines()[-10:]
        except OSError as exc:
            tail = [f"no log: {exc}"]
        gone.append(
            {"slot": slot.index, "pid": slot.pid, "exit_code": slot.process.returncode, "log": tail}
        )
    return gone


def descriptors(pid: int, log_dir: Path) -> Counter[str]:
    """A worker's open descriptors by kind: socket, pipe, anon_inode:…, or the file's path
    (its own log directory written as <log_dir>, so that workers can be compared); none for
    a worker that has ended (`workers_gone` reports it)."""
    kinds: Counter[str] = Counter()
    try:
        entries = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:
        return kinds
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith(("socket:", "pipe:")):
            target = target.split(":", 1)[0]
        elif target.startswith(str(log_dir)):
            target = "<log_dir>" + target[len(str(log_dir)) :]
        kinds[target] += 1
    return kinds


def sockets(pid: int) -> list[str]:
    """A worker's sockets, each as kind, state and peer: what to look at when there are many."""
    try:
        found = psutil.Process(pid).net_connections(kind="all")
    except psutil.Error as exc:
        return [f"cannot list: {exc}"]
    return sorted(
        f"{connection.type.name} {connection.status} {connection.laddr} -> {connection.raddr}"
        for connection in found
    )


def unexpected_descriptors(
    worker: Counter[str], control: Counter[str], database_file: str | None
) -> list[str]:
    """What a worker holds after the run beyond what a fresh idle worker holds: any job log,
    any deleted file, more pipes or anon inodes, or more connections than its pool can keep.

    SQLite keeps the descriptor of a closed connection open while another connection of the
    process holds a lock on the file (POSIX locks are per process), and hands it to the next
    connection it opens: bounded by the pool's size plus its overflow, not a leak.
    """
    found = []
    for kind, count in worker.items():
        if kind.startswith("<log_dir>/jobs/") or kind.endswith("(deleted)"):
            found.append(f"{count} x {kind}")
            continue
        allowed = control[kind]
        if kind == "socket":
            allowed += POOL_SIZE
        elif database_file and kind.startswith(database_file):
            allowed += POOL_SIZE + MAX_OVERFLOW
        if count > allowed:
            found.append(f"{count} x {kind} (a fresh worker: {control[kind]})")
    return found
