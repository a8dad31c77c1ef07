"""Doctor checks of the workers: registered ones alive, and the leases of running jobs held.

A worker row outlives a worker killed without stopping; a job's lease outlives its process.
Each is judged by the database's clock (seconds since last seen, since the lease expired)
and, for workers and jobs on this host, by whether their pid still runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psutil

from batchjob.diagnosis.check import (
    Facts,
    Finding,
    NotChecked,
    database_report,
    fail,
    first_few,
    ok,
    warn,
)
from batchjob.diagnosis.checks_systemd import SYSTEMD_UNIT

# A worker refreshes last_seen every few seconds; three minutes of silence means it is gone.
STALE_WORKER_SECONDS = 180
# A live worker rescues an expired lease within seconds; one expired this long is not seen to.
OVERDUE_RESCUE_SECONDS = 60


def check_workers(facts: Facts) -> Finding:
    rows = _table_rows(facts, "workers")
    due = database_report(facts)["due_jobs"]
    problems = [problem for row in rows if (problem := _worker_problem(row, facts.host))]
    live = len(rows) - len(problems)
    figures = {"workers": rows, "live": live, "due_jobs": due}
    if problems:
        return warn(
            first_few(problems),
            "a worker that died without stopping left this row: see why (journalctl -u "
            f"{SYSTEMD_UNIT}, dmesg for OOM kills); any live worker rescues its jobs",
            **figures,
        )
    if due and not live:
        return warn(
            f"{due} jobs are due and no worker is registered to take them",
            "start `batchjob worker`",
            **figures,
        )
    if not rows:
        return ok("no worker is registered; no job is due", **figures)
    return ok(f"live workers ({live}): {first_few([row['id'] for row in rows])}", **figures)


def _worker_problem(row: Mapping[str, Any], host: str) -> str | None:
    silent = row["seconds_since_seen"]
    if row["host"] == host and not _is_running(row["pid"]):
        return f"worker {row['id']} is registered but pid {row['pid']} is not running"
    if silent > STALE_WORKER_SECONDS:
        where = "runs here" if row["host"] == host else f"on {row['host']}"
        return f"worker {row['id']} ({where}) has not checked in for {silent:.0f}s"
    return None


def check_leases(facts: Facts) -> Finding:
    expired = _table_rows(facts, "expired_leases")
    running = _table_rows(facts, "running_jobs")
    live = sum(
        row["seconds_since_seen"] <= STALE_WORKER_SECONDS for row in _table_rows(facts, "workers")
    )
    dead = [
        row
        for row in running
        if row["pid"] and _host_of(row["worker_id"]) == facts.host and not _is_running(row["pid"])
    ]
    figures = {"expired_leases": expired, "dead_pids": dead, "running": len(running)}
    problems = [
        f"job {row['id']} (worker {row['worker_id']}): lease expired "
        f"{row['seconds_expired']:.0f}s ago"
        for row in expired
    ] + [
        f"job {row['id']} (worker {row['worker_id']}) is running but its pid {row['pid']} "
        "is not running here"
        for row in dead
    ]
    if not problems:
        return ok(f"{len(running)} jobs running, every lease current", **figures)
    message = first_few(problems)
    if expired and (not live or expired[0]["seconds_expired"] > OVERDUE_RESCUE_SECONDS):
        return fail(
            message,
            "a live worker rescues these within seconds: start `batchjob worker`",
            **figures,
        )
    if expired:
        return warn(message, "a live worker rescues these within seconds", **figures)
    return warn(
        message,
        "restart that worker: its job's process is gone but the worker still holds the lease",
        **figures,
    )


def _is_running(pid: int) -> bool:
    """Whether a process with this pid exists here and is not a zombie."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # it exists; we may not look at it


def _host_of(worker_id: str | None) -> str | None:
    """The host part of a worker id "host:pid:random"."""
    return worker_id.rsplit(":", 2)[0] if worker_id and worker_id.count(":") >= 2 else None


def _table_rows(facts: Facts, key: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] | None = database_report(facts)[key]
    if rows is None:
        raise NotChecked("not checked: the database has no batchjob schema yet")
    return rows
