"""The chaos run's short form on each database, and proof that its checks can fail.

The run itself (bench/chaos) starts real workers on a private MariaDB/PostgreSQL server or a
SQLite file, and kills, freezes, restarts and cuts them off while 300 jobs run; its report is
the truth this test asserts on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench.chaos import checks, ledger
from bench.chaos.fleet import Fleet

ROOT = Path(__file__).resolve().parent.parent
WORKER = "vm:4242:abc123"


def write_ledger(path: Path, records: list[tuple[str, int, int, int, float]]) -> list[ledger.Run]:
    path.write_text(
        "".join(
            f"{kind} {job} {attempt} {pid} {WORKER} {at:.6f}\n"
            for kind, job, attempt, pid, at in records
        )
    )
    return ledger.read(path)


def test_the_ledger_check_finds_a_job_running_twice_at_once(tmp_path: Path) -> None:
    runs = write_ledger(
        tmp_path / "ledger",
        [
            # job 1: attempt 1 killed at 101.0, attempt 2 after it: one after the other
            ("start", 1, 1, 10, 100.0),
            ("tick", 1, 1, 10, 101.0),
            ("start", 1, 2, 11, 105.0),
            ("end", 1, 2, 11, 108.0),
            # job 2: attempt 2 starts while attempt 1 still ticks
            ("start", 2, 1, 20, 100.0),
            ("tick", 2, 1, 20, 104.0),
            ("end", 2, 1, 20, 106.0),
            ("start", 2, 2, 21, 103.0),
            ("end", 2, 2, 21, 107.0),
            # job 3: attempt 1 started by two processes
            ("start", 3, 1, 30, 100.0),
            ("end", 3, 1, 30, 101.0),
            ("start", 3, 1, 31, 102.0),
            ("end", 3, 1, 31, 103.0),
        ],
    )
    duplicates = ledger.concurrent_duplicates(runs)
    assert len(duplicates) == 1 and duplicates[0].startswith("job 2:")
    repeated = ledger.repeated_attempts(runs)
    assert len(repeated) == 1 and repeated[0].startswith("job 3 attempt 1")


def test_an_interrupted_attempt_needs_an_event_that_says_why(tmp_path: Path) -> None:
    runs = write_ledger(
        tmp_path / "ledger",
        [("start", 1, 1, 10, 100.0), ("start", 2, 1, 20, 100.0), ("start", 3, 1, 30, 100.0)],
    )
    events = [
        {"job_id": 1, "attempt": 1, "kind": "rescued"},
        {"job_id": 2, "attempt": 1, "kind": "claimed"},
        {"job_id": 3, "attempt": 2, "kind": "lease_lost"},
    ]
    assert checks.unexplained_interruptions(runs, events) == ["job 2 attempt 1 (pid 20)"]


def test_a_worker_holding_a_job_log_or_extra_pipes_is_reported() -> None:
    control = Counter({"socket": 2, "pipe": 2, "<log_dir>/batch_job_worker.log": 1})
    tidy = Counter({"socket": 6, "pipe": 2, "<log_dir>/batch_job_worker.log": 1})
    assert checks.unexpected_descriptors(tidy, control, None) == []
    leaky = Counter({"socket": 9, "pipe": 4, "<log_dir>/jobs/7.log": 1})
    found = checks.unexpected_descriptors(leaky, control, None)
    assert found == [
        "9 x socket (a fresh worker: 2)",
        "4 x pipe (a fresh worker: 2)",
        "1 x <log_dir>/jobs/7.log",
    ]


def test_a_worker_gone_before_the_end_is_reported_with_its_exit_code_and_log(
    tmp_path: Path,
) -> None:
    """Real processes in the fleet's slots: `sleep` lives on, `sh` writes a log and exits."""
    script = tmp_path / "fake-batchjob"
    script.write_text(
        '#!/bin/sh\nif [ "$BATCH_JOB_DATABASE_URL" = live ]; then exec sleep 30; fi\n'
        'mkdir -p "$BATCH_JOB_LOG_DIR"\n'
        'echo "ERROR action=worker_crashed" > "$BATCH_JOB_LOG_DIR/batch_job_worker.log"\n'
        "exit 3\n"
    )
    script.chmod(0o755)
    fleet = Fleet(
        2, tmp_path, str(script), url=lambda index: "live" if index == 0 else "gone",
        prefix=lambda _index: [],
    )  # fmt: skip
    try:
        fleet.slots[1].process.wait(10)
        (gone,) = checks.workers_gone(fleet)
        assert gone["slot"] == 1 and gone["pid"] == fleet.slots[1].pid
        assert gone["exit_code"] == 3 and gone["log"] == ["ERROR action=worker_crashed"]
        assert checks.descriptors(fleet.slots[1].pid, fleet.log_dir(1)) == Counter()
        assert checks.descriptors(fleet.slots[0].pid, fleet.log_dir(0))  # alive: it has some
    finally:
        fleet.terminate(timeout=5)


@pytest.mark.chaos
@pytest.mark.parametrize("database", ["sqlite", "mariadb", "postgresql"])
def test_the_short_chaos_run_loses_nothing_and_runs_nothing_twice_at_once(
    database: str, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        message = "the chaos run needs root: network namespaces and the servers' own users"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--database", database, "--json", str(report_path)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(done.stdout, done.stderr)
    report = json.loads(report_path.read_text())
    assert report["lost"] == 0
    assert report["concurrent_duplicates"] == 0
    assert report["repeated_attempts"] == 0
    assert report["interrupted_without_event"] == 0
    assert report["leftover_processes"] == 0
    assert report["unexpected_fds"] == 0
    assert report["workers_gone"] == 0, report["details"]["workers_gone"]
    assert report["rows"] == report["jobs"] == 300
    kinds = {"worker_kill", "job_kill", "worker_stop", "database_restart"}
    if database != "sqlite":
        kinds.add("network_cut")
    assert set(report["faults"]) == kinds
    assert min(report["faults"].values()) >= 10, report["faults"]
    assert report["fault_errors"] == []
    assert report["interrupted_runs"] > 0 and report["rescued_events"] > 0, "faults hit jobs"
    assert report["ok"] and done.returncode == 0
