"""`batchjob doctor`: the operator's checklist of SPEC §6, run in seconds.

The facts are gathered once (the database's side in one read-only transaction, see
`store.health`); each check is then a small function from those facts to one finding —
OK, WARN, FAIL or N/A, a one-line message with the figures and a one-line fix — and is
registered in CHECKS. A check never raises: an error while checking becomes its own line.
`--probe` sends a job through a running worker to report what a job really sees.

This module runs the checks and prints them; the checks live by what they look at, in
`checks_database`, `checks_workers`, `checks_host`, `checks_systemd` and `probe_checks`.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from batchjob.config import Settings
from batchjob.diagnosis.check import Check, Facts, Finding, NotChecked, Status, not_applicable, warn
from batchjob.diagnosis.checks_database import (
    check_database,
    check_lock_waits,
    check_long_transactions,
    check_vacuum,
    check_wait_timeout,
)
from batchjob.diagnosis.checks_host import (
    check_data_disk,
    check_log_disk,
    check_log_size,
    check_memory,
    check_oom_kills,
    check_open_files,
)
from batchjob.diagnosis.checks_systemd import check_systemd_sandbox, sandbox_problems
from batchjob.diagnosis.checks_workers import check_leases, check_workers
from batchjob.diagnosis.probe_checks import PROBE_TIMEOUT_SECONDS, probe_checks
from batchjob.queue import Queue
from batchjob.store import Store

STATUS_STYLES: Mapping[Status, str] = {
    "OK": "green",
    "WARN": "yellow",
    "FAIL": "bold red",
    "N/A": "dim",
}


# ---- running the checks ----------------------------------------------------------------------


def run_checks(settings: Settings, store: Store) -> list[Check]:
    """Every check of the registry, in order, against facts gathered once."""
    facts = gather_facts(settings, store)
    return [_run_check(name, check, facts) for name, check in CHECKS]


def gather_facts(settings: Settings, store: Store) -> Facts:
    database: Mapping[str, Any] | None = None
    error = _missing_sqlite_file(store)
    if error is None:
        try:
            database = store.health_report()
        except Exception as exc:  # StoreUnavailable, or anything the driver raises
            error = " ".join(str(exc).split())
    return Facts(settings, store.display_url, database, error, socket.gethostname())


def _missing_sqlite_file(store: Store) -> str | None:
    """Opening a SQLite URL creates the file; the doctor must not, so it looks first."""
    path = store.url.database
    if store.dialect_name != "sqlite" or not path or path == ":memory:" or Path(path).exists():
        return None
    return f"the SQLite database file {Path(path).absolute()} does not exist"


def _run_check(name: str, check: Callable[[Facts], Finding], facts: Facts) -> Check:
    try:
        finding = check(facts)
    except NotChecked as reason:
        finding = not_applicable(str(reason))
    except Exception as exc:
        finding = warn(f"could not check: {type(exc).__name__}: {exc}", None)
    return Check(name, finding.status, finding.message, finding.fix, finding.figures)


# ---- the registry ----------------------------------------------------------------------------

CHECKS: tuple[tuple[str, Callable[[Facts], Finding]], ...] = (
    ("database", check_database),
    ("wait-timeout", check_wait_timeout),
    ("long-transactions", check_long_transactions),
    ("lock-waits", check_lock_waits),
    ("vacuum", check_vacuum),
    ("workers", check_workers),
    ("leases", check_leases),
    ("open-files", check_open_files),
    ("memory", check_memory),
    ("oom-kills", check_oom_kills),
    ("log-disk", check_log_disk),
    ("data-disk", check_data_disk),
    ("log-size", check_log_size),
    ("systemd-sandbox", check_systemd_sandbox),
)


# ---- output ----------------------------------------------------------------------------------


def run_doctor(
    settings: Settings,
    queue: Queue,
    *,
    as_json: bool,
    probe: bool,
    out: Console,
    probe_timeout: float = PROBE_TIMEOUT_SECONDS,
) -> int:
    """Run the checks (and the probe), print them; 1 when any check FAILs, else 0."""
    checks = run_checks(settings, queue.store)
    if probe:
        checks += probe_checks(queue, probe_timeout)
    if as_json:
        _print_json(checks, out)
    else:
        _print_table(checks, out)
    return 1 if any(check.status == "FAIL" for check in checks) else 0


def _print_json(checks: Sequence[Check], out: Console) -> None:
    document = {
        "checks": [check.to_json() for check in checks],
        "ok": not any(check.status == "FAIL" for check in checks),
    }
    out.print(
        json.dumps(document, ensure_ascii=False, indent=2, default=_json_value),
        markup=False,
        highlight=False,
        emoji=False,
        soft_wrap=True,
    )


def _json_value(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _print_table(checks: Sequence[Check], out: Console) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("status", "check", "message", "fix"):
        table.add_column(column, overflow="fold")
    for check in checks:
        table.add_row(
            Text(check.status, style=STATUS_STYLES[check.status]),
            Text(check.name),
            Text(check.message),
            Text(check.fix or ""),
        )
    out.print(table)


# Check and sandbox_problems are re-exported: callers have always found them here.
__all__ = ["CHECKS", "Check", "probe_checks", "run_checks", "run_doctor", "sandbox_problems"]
