"""The `batchjob` console script, run as a subprocess the way an operator or a script runs it.

Every test that takes `cli` runs on SQLite, MariaDB and PostgreSQL. Jobs that the CLI cannot
put into a state by itself (running, failed, completed) are made through the Python API,
which is what a worker uses.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from batchjob.model import FailureReason, JobStatus
from batchjob.queue import Queue
from batchjob.store import Outcome, Store
from conftest import CliResult, run_cli

Cli = Callable[..., CliResult]

TASK = "sync_profit_management"
PROPERTY = "第六竹石"
# SPEC §4's task, with a placeholder that `--param property=…` fills in.
TASK_CONFIG = f"""
[tasks.{TASK}]
command = ["python", "scripts/sync_profit_management.py", "--property", "{{property}}"]
queue = "sync"
timeout = "2h"
stall_timeout = "10m"
stall_action = "diagnose"
retries = 3
retry_backoff = "30s"
concurrency_key = "profit-sync"
max_concurrency = 1
memory_limit = "2GiB"
env = {{ HUBSPOT_TIMEOUT = "30" }}
"""
# SPEC §7: the fields a job as JSON has at least.
JOB_FIELDS = {
    "id",
    "queue",
    "task",
    "command",
    "status",
    "priority",
    "attempt",
    "max_attempts",
    "progress_message",
    "progress_current",
    "progress_total",
    "created_at",
    "started_at",
    "completed_at",
    "exit_code",
    "failure_reason",
    "error_summary",
    "hint",
    "log_path",
    "worker_id",
    "pid",
    "peak_rss_bytes",
    "peak_open_fds",
    "diagnosis",
}
# The commands this CLI has today (SPEC §7 lists more: worker, logs, wait, purge, ...).
COMMANDS = ("init", "enqueue", "list", "show", "cancel", "retry", "stats", "worker", "logs", "wait")
# The seed's queries (SPEC §2), run exactly as an operator would paste them.
RUNNING_QUERY = "SELECT * FROM batch_job_queue WHERE status = 'running' ORDER BY started_at DESC;"
FAILED_QUERY = (
    "SELECT * FROM batch_job_queue WHERE status = 'failed' ORDER BY completed_at DESC LIMIT 10;"
)
PROGRESS_QUERY = (
    "SELECT * FROM batch_job_queue WHERE status = 'running' AND progress_message LIKE '%第六竹石%';"
)
# Linux execs at most 128 KiB per argument (MAX_ARG_STRLEN) and ARG_MAX (here 2 MiB) in all:
# eleven 100 KiB arguments reach batchjob itself but exceed its own 1 MiB cap on a command.
ARGUMENT_BYTES = 100 * 1024
OVERSIZED_COMMAND = ("x" * ARGUMENT_BYTES,) * 11


# ---- helpers ---------------------------------------------------------------------------


def _shown(args: Sequence[str]) -> str:
    return " ".join(arg if len(arg) <= 40 else f"<{len(arg)} chars>" for arg in args)


def ok(cli: Cli, *args: str, env: dict[str, str] | None = None) -> str:
    """Run `batchjob ARGS`, insist on exit 0, return stdout."""
    result = cli(*args, env=env)
    assert result.returncode == 0, (
        f"batchjob {_shown(args)} exited {result.returncode}: {result.stderr}"
    )
    return result.stdout


def enqueue_id(cli: Cli, *args: str) -> int:
    """`batchjob enqueue ARGS`, which must print the new id alone."""
    out = ok(cli, "enqueue", *args)
    assert re.fullmatch(r"[0-9]+\n", out), f"enqueue printed {out!r}, not an id alone"
    return int(out)


def show(cli: Cli, job_id: int) -> dict[str, Any]:
    job: dict[str, Any] = json.loads(ok(cli, "show", "--json", str(job_id)))
    return job


def listed(cli: Cli, *args: str) -> list[dict[str, Any]]:
    jobs = json.loads(ok(cli, "list", "--json", *args))
    assert isinstance(jobs, list)
    return jobs


def ids(jobs: Sequence[dict[str, Any]]) -> list[int]:
    return [job["id"] for job in jobs]


def one_line_error(result: CliResult, exit_code: int = 2) -> str:
    """The single stderr line of a refused command (no traceback, no usage block)."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == exit_code, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    return lines[0]


def utc(moment: str) -> datetime:
    """Parse an ISO 8601 time that must carry a UTC offset."""
    parsed = datetime.fromisoformat(moment)
    assert parsed.utcoffset() == timedelta(0), f"{moment} is not UTC"
    return parsed


def write_config(directory: Path, content: str = TASK_CONFIG) -> Path:
    path = directory / "batchjob.toml"
    path.write_text(content, encoding="utf-8")
    return path


def stored_rows(database_url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every job and event row, to prove that a refused command changed nothing."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            jobs = conn.execute(text("SELECT * FROM batch_job_queue ORDER BY id")).all()
            events = conn.execute(text("SELECT * FROM batch_job_events ORDER BY id")).all()
    finally:
        engine.dispose()
    return [tuple(row) for row in jobs], [tuple(row) for row in events]


def query(database_url: str, sql: str) -> list[dict[str, Any]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [dict(row) for row in conn.execute(text(sql)).mappings()]
    finally:
        engine.dispose()


def table_rows(output: str) -> list[list[str]]:
    """The data rows of a `list` table, split on runs of two or more spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in output.splitlines()[1:] if line.strip()]


@dataclass(frozen=True)
class JobsInEveryState:
    running: int
    running_other: int
    failed_first: int
    failed_second: int
    completed: int
    pending: int


def make_jobs_in_every_state(queue: Queue, store: Store) -> JobsInEveryState:
    """Jobs a worker has claimed, reported progress on and finished, as the worker would."""
    jobs = queue.enqueue_many(
        [
            {"command": ["python", "sync.py", str(n)], "queue": name, "priority": 10 - n}
            for n, name in enumerate(("sync", "sync", "sync", "default", "default"))
        ]
    )
    leases = []
    for job in jobs:  # one claim each, in priority order: the jobs come back in order
        (claimed,) = store.claim("worker-1", None, 1, 30.0)
        assert claimed.job.id == job.id
        leases.append(claimed.lease)
    running, running_other, failed_first, failed_second, completed = leases
    assert store.report_progress(running, "処理中: 第六竹石", 3, 120)
    assert store.report_progress(running_other, "処理中: 別の物件", 1, 10)
    assert store.report_progress(failed_first, "処理中: 第六竹石", 120, 120)
    exit_one = Outcome(JobStatus.FAILED, failure_reason=FailureReason.EXIT_CODE, exit_code=1)
    exit_two = Outcome(JobStatus.FAILED, failure_reason=FailureReason.EXIT_CODE, exit_code=2)
    assert store.finish(failed_first, exit_one)
    assert store.finish(failed_second, exit_two)
    assert store.finish(completed, Outcome(JobStatus.COMPLETED, exit_code=0))
    pending = queue.enqueue(["python", "sync.py", "later"])
    return JobsInEveryState(
        running=running.job_id,
        running_other=running_other.job_id,
        failed_first=failed_first.job_id,
        failed_second=failed_second.job_id,
        completed=completed.job_id,
        pending=pending.id,
    )


# ---- enqueue ---------------------------------------------------------------------------


def test_enqueue_prints_only_the_new_id(cli: Cli) -> None:
    first = cli("enqueue", "--", "echo", "hello")
    second = cli("enqueue", "--", "echo", "again")

    assert (first.returncode, first.stderr) == (0, "")
    assert re.fullmatch(r"[0-9]+\n", first.stdout)
    assert re.fullmatch(r"[0-9]+\n", second.stdout)
    assert int(second.stdout) > int(first.stdout)


def test_enqueue_json_prints_the_whole_job_in_utc(cli: Cli) -> None:
    # A local time zone far from UTC must not leak into the stored or printed times.
    printed = json.loads(ok(cli, "enqueue", "--json", "--", "echo", "hi", env={"TZ": "Asia/Tokyo"}))

    assert set(printed) >= JOB_FIELDS
    assert printed["command"] == ["echo", "hi"]
    assert printed["queue"] == "default"
    assert printed["task"] is None
    assert printed["status"] == "pending"
    assert (printed["priority"], printed["attempt"], printed["max_attempts"]) == (0, 0, 1)
    set_at_enqueue = {"id", "queue", "command", "status", "priority", "attempt", "max_attempts"}
    for unset in JOB_FIELDS - set_at_enqueue - {"created_at"}:
        assert printed[unset] is None, unset
    created_at = utc(printed["created_at"])
    assert abs(created_at - datetime.now(UTC)) < timedelta(hours=1)
    assert show(cli, printed["id"]) == printed


def test_enqueue_options_are_stored_with_the_job(cli: Cli, tmp_path: Path) -> None:
    job_id = enqueue_id(
        cli,
        *("--queue", "sync", "--priority", "-5", "--timeout", "2h", "--stall-timeout", "10m"),
        *("--retries", "3", "--delay", "10m", "--unique-key", "profit-2026-11"),
        *("--concurrency-key", "profit-sync", "--max-concurrency", "2"),
        *("--env", "HUBSPOT_TIMEOUT=30", "--env", "PROPERTY=第六竹石", "--env", "EMPTY="),
        *("--cwd", str(tmp_path), "--tag", "crm", "--tag", "nightly"),
        *("--", "python", "scripts/sync.py", "--queue", "not an option", "--"),
    )

    job = show(cli, job_id)
    assert job["command"] == ["python", "scripts/sync.py", "--queue", "not an option", "--"]
    assert job["queue"] == "sync"
    assert job["priority"] == -5
    assert job["timeout"] == 7200.0
    assert job["stall_timeout"] == 600.0
    assert job["max_attempts"] == 4
    run_after = utc(job["run_at"]) - utc(job["created_at"])
    assert abs(run_after.total_seconds() - 600) < 2
    assert job["unique_key"] == "profit-2026-11"
    assert (job["concurrency_key"], job["max_concurrency"]) == ("profit-sync", 2)
    assert job["env"] == {"HUBSPOT_TIMEOUT": "30", "PROPERTY": "第六竹石", "EMPTY": ""}
    assert job["cwd"] == str(tmp_path)
    assert job["tags"] == ["crm", "nightly"]


def test_run_at_is_stored_in_utc_whatever_offset_it_is_given_with(cli: Cli) -> None:
    tokyo = enqueue_id(cli, "--run-at", "2030-01-01T09:00:00+09:00", "--", "true")
    naive = enqueue_id(cli, "--run-at", "2030-06-01T12:30:00", "--", "true")
    zulu = enqueue_id(cli, "--run-at", "2030-06-01T12:30:00.250Z", "--", "true")

    run_at = {job["id"]: utc(job["run_at"]) for job in listed(cli)}
    assert run_at[tokyo] == datetime(2030, 1, 1, 0, 0, tzinfo=UTC)
    assert run_at[naive] == datetime(2030, 6, 1, 12, 30, tzinfo=UTC)
    assert run_at[zulu] == datetime(2030, 6, 1, 12, 30, 0, 250_000, tzinfo=UTC)


def test_secret_env_values_are_masked_in_every_output(cli: Cli) -> None:
    job_id = enqueue_id(cli, "--env", "API_TOKEN=s3cr3t-value", "--env", "PLAIN=ok", "--", "true")

    job = show(cli, job_id)
    assert job["env"] == {"API_TOKEN": "***", "PLAIN": "ok"}
    assert "s3cr3t-value" not in ok(cli, "show", str(job_id))
    assert "s3cr3t-value" not in ok(cli, "list", "--json")


# ---- tasks -----------------------------------------------------------------------------


def test_task_is_enqueued_with_its_params_substituted_and_its_options(
    cli: Cli, tmp_path: Path
) -> None:
    write_config(tmp_path)

    job = show(cli, enqueue_id(cli, TASK, "--param", f"property={PROPERTY}"))

    assert job["task"] == TASK
    assert job["command"] == [
        "python",
        "scripts/sync_profit_management.py",
        "--property",
        PROPERTY,
    ]
    assert job["params"] == {"property": PROPERTY}
    assert job["queue"] == "sync"
    assert (job["timeout"], job["stall_timeout"], job["stall_action"]) == (
        7200.0,
        600.0,
        "diagnose",
    )
    assert (job["max_attempts"], job["retry_backoff"]) == (4, 30.0)
    assert (job["concurrency_key"], job["max_concurrency"]) == ("profit-sync", 1)
    assert job["memory_limit"] == 2 * 1024**3
    assert job["env"] == {"HUBSPOT_TIMEOUT": "30"}


def test_job_options_override_the_tasks(cli: Cli, tmp_path: Path) -> None:
    write_config(tmp_path)

    job_id = enqueue_id(
        cli,
        *(TASK, "--param", f"property={PROPERTY}", "--queue", "urgent", "--timeout", "30m"),
        *("--retries", "0", "--env", "HUBSPOT_TIMEOUT=60", "--env", "EXTRA=1"),
    )

    job = show(cli, job_id)
    assert job["queue"] == "urgent"
    assert job["timeout"] == 1800.0
    assert job["max_attempts"] == 1
    assert job["env"] == {"HUBSPOT_TIMEOUT": "60", "EXTRA": "1"}
    assert job["concurrency_key"] == "profit-sync"  # not overridden: still the task's


# ---- Japanese text ---------------------------------------------------------------------


def test_japanese_round_trips_through_command_env_tags_and_queue(cli: Cli) -> None:
    job_id = enqueue_id(
        cli,
        *("--queue", "同期", "--env", f"PROPERTY={PROPERTY}", "--tag", PROPERTY),
        *("--", "echo", f"処理中: {PROPERTY}"),
    )

    job = show(cli, job_id)
    assert job["command"] == ["echo", f"処理中: {PROPERTY}"]
    assert job["env"] == {"PROPERTY": PROPERTY}
    assert job["tags"] == [PROPERTY]
    assert job["queue"] == "同期"
    assert listed(cli)[0]["command"] == job["command"]

    shown = {line.split()[0]: line for line in ok(cli, "show", str(job_id)).splitlines() if line}
    assert f"処理中: {PROPERTY}" in shown["command"]
    assert PROPERTY in shown["env"]
    assert PROPERTY in shown["tags"]
    assert "同期" in shown["queue"]
    (row,) = table_rows(ok(cli, "list"))
    assert row[0] == str(job_id)
    assert "同期" in row
    assert f"echo 処理中: {PROPERTY}" in row


# ---- list, show, cancel, retry, stats ----------------------------------------------------


def test_list_shows_the_newest_50_by_default(cli: Cli, queue: Queue) -> None:
    made = queue.enqueue_many([{"command": ["echo", str(n)]} for n in range(55)])
    newest_first = sorted((job.id for job in made), reverse=True)

    assert ids(listed(cli)) == newest_first[:50]
    rows = table_rows(ok(cli, "list"))
    assert [int(row[0]) for row in rows] == newest_first[:50]


def test_list_filters_by_status_queue_and_task_and_limits(
    cli: Cli, queue: Queue, tmp_path: Path
) -> None:
    write_config(tmp_path)
    first_a, first_b, second_a = (
        queue.enqueue(["echo", name], queue=name).id for name in ("a", "b", "a")
    )
    queue.cancel(second_a)
    task_job = enqueue_id(cli, TASK, "--param", f"property={PROPERTY}")

    assert ids(listed(cli, "--queue", "a")) == [second_a, first_a]
    assert ids(listed(cli, "--queue", "a", "--queue", "b")) == [second_a, first_b, first_a]
    assert ids(listed(cli, "--status", "cancelled")) == [second_a]
    assert ids(listed(cli, "--status", "pending", "--queue", "a")) == [first_a]
    assert ids(listed(cli, "--task", TASK)) == [task_job]
    assert ids(listed(cli, "--limit", "2")) == [task_job, second_a]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("show", "999"), id="show"),
        pytest.param(("show", "--json", "999"), id="show-json"),
        pytest.param(("cancel", "999"), id="cancel"),
        pytest.param(("retry", "999"), id="retry"),
        # Beyond a 64-bit id: still simply not found, not a database error or a traceback.
        pytest.param(("show", str(2**63)), id="show-id-beyond-int64"),
    ],
)
def test_a_missing_job_exits_3(cli: Cli, args: tuple[str, ...]) -> None:
    line = one_line_error(cli(*args), exit_code=3)
    assert "not found" in line


def test_cancel_then_retry_a_pending_job(cli: Cli) -> None:
    job_id = enqueue_id(cli, "--", "sleep", "60")

    assert "cancelled" in ok(cli, "cancel", str(job_id))
    job = show(cli, job_id)
    assert (job["status"], job["failure_reason"]) == ("cancelled", "cancelled")
    utc(job["completed_at"])
    assert "cancelled" in ok(cli, "cancel", str(job_id))  # again: nothing to do, no error

    assert "pending" in ok(cli, "retry", str(job_id))
    job = show(cli, job_id)
    assert (job["status"], job["failure_reason"], job["completed_at"]) == ("pending", None, None)

    line = one_line_error(cli("retry", str(job_id)))
    assert "pending" in line


def test_cancel_and_retry_jobs_a_worker_has_run(cli: Cli, queue: Queue, store: Store) -> None:
    jobs = make_jobs_in_every_state(queue, store)

    assert "cancel requested" in ok(cli, "cancel", str(jobs.running))
    running = show(cli, jobs.running)
    assert running["status"] == "running"  # its worker stops it
    utc(running["cancel_requested_at"])
    assert "completed" in one_line_error(cli("cancel", str(jobs.completed)))

    assert "pending" in ok(cli, "retry", str(jobs.failed_first))
    retried = show(cli, jobs.failed_first)
    assert retried["status"] == "pending"
    assert (retried["failure_reason"], retried["exit_code"], retried["completed_at"]) == (
        None,
        None,
        None,
    )


def test_stats_counts_jobs_by_queue_and_status(cli: Cli, queue: Queue, store: Store) -> None:
    jobs = make_jobs_in_every_state(queue, store)
    queue.cancel(jobs.pending)

    counts = json.loads(ok(cli, "stats", "--json"))

    assert counts["queues"] == {
        "sync": {"running": 2, "failed": 1},
        "default": {"failed": 1, "completed": 1, "cancelled": 1},
    }
    assert counts["totals"] == {"running": 2, "failed": 2, "completed": 1, "cancelled": 1}


def test_show_and_list_tell_how_a_job_ran(cli: Cli, queue: Queue, store: Store) -> None:
    jobs = make_jobs_in_every_state(queue, store)

    failed = show(cli, jobs.failed_first)
    assert (failed["status"], failed["failure_reason"], failed["exit_code"]) == (
        "failed",
        "exit_code",
        1,
    )
    assert (failed["attempt"], failed["worker_id"]) == (1, "worker-1")
    assert utc(failed["started_at"]) <= utc(failed["completed_at"])
    rows = {int(row[0]): row for row in table_rows(ok(cli, "list", "--status", "running"))}
    assert set(rows) == {jobs.running, jobs.running_other}
    assert "3/120 処理中: 第六竹石" in rows[jobs.running]


# ---- unique keys -------------------------------------------------------------------------


def test_a_unique_key_is_held_until_its_job_ends(cli: Cli) -> None:
    holder = enqueue_id(cli, "--unique-key", f"sync-{PROPERTY}", "--", "true")

    refused = cli("enqueue", "--unique-key", f"sync-{PROPERTY}", "--", "true")
    assert re.search(rf"\bjob {holder}\b", one_line_error(refused))
    assert refused.stdout == ""
    assert ids(listed(cli)) == [holder]

    ok(cli, "cancel", str(holder))
    successor = enqueue_id(cli, "--unique-key", f"sync-{PROPERTY}", "--", "true")
    assert show(cli, successor)["unique_key"] == f"sync-{PROPERTY}"
    # Retrying the first job would make two holders: refused, naming the one that holds it.
    assert re.search(rf"\bjob {successor}\b", one_line_error(cli("retry", str(holder))))


# ---- bad input -------------------------------------------------------------------------


@dataclass(frozen=True)
class BadInput:
    args: tuple[str, ...]
    expect: tuple[str, ...] = ()
    config: str = TASK_CONFIG
    env: dict[str, str] = field(default_factory=dict)


def bad(
    case_id: str,
    args: str | tuple[str, ...],
    *expect: str,
    config: str = TASK_CONFIG,
    env: dict[str, str] | None = None,
) -> Any:
    """A case of BAD_INPUTS: `args` as a shell would split them, words stderr must name."""
    argv = tuple(shlex.split(args)) if isinstance(args, str) else args
    return pytest.param(BadInput(argv, expect, config, env or {}), id=case_id)


def with_task(name: str, body: str) -> str:
    """TASK_CONFIG plus one more task."""
    return f"{TASK_CONFIG}\n[tasks.{name}]\n{body}\n"


BAD_INPUTS = [
    bad("timeout-not-a-duration", "enqueue --timeout 2x -- true", "timeout", "2x"),
    bad("timeout-zero", "enqueue --timeout 0 -- true", "timeout"),
    bad("timeout-negative", "enqueue --timeout=-5 -- true", "timeout"),
    bad("stall-timeout-zero", "enqueue --stall-timeout 0s -- true", "stall_timeout"),
    bad("delay-not-a-duration", "enqueue --delay soon -- true", "delay"),
    bad("priority-not-a-number", "enqueue --priority high -- true", "priority"),
    bad("priority-beyond-int32", f"enqueue --priority {2**31} -- true", "priority"),
    bad("retries-negative", "enqueue --retries=-1 -- true", "retries"),
    bad("max-concurrency-zero", "enqueue --concurrency-key k --max-concurrency 0 -- true", "max_"),
    bad("queue-empty", "enqueue --queue '' -- true", "queue"),
    bad("env-without-equals", "enqueue --env NOEQUALS -- true", "NOEQUALS"),
    bad("env-reserved-name", "enqueue --env BATCH_JOB_ID=1 -- true", "BATCH_JOB_ID"),
    bad("unknown-option", "enqueue --bogus -- true", "--bogus"),
    bad("unknown-task", "enqueue no_such_task", "no_such_task"),
    bad("task-and-command", f"enqueue {TASK} --param property=x -- true", TASK),
    bad("neither-task-nor-command", "enqueue"),
    bad("empty-command", "enqueue --"),
    bad("task-param-missing", f"enqueue {TASK}", "property"),
    bad("param-without-equals", f"enqueue {TASK} --param property", "--param", "property"),
    bad("param-on-a-command", "enqueue --param a=b -- true", "param"),
    bad("command-over-1MiB", ("enqueue", "--", "echo", *OVERSIZED_COMMAND), "bytes"),
    bad("run-at-not-a-time", "enqueue --run-at notatime -- true", "--run-at", "notatime"),
    bad("delay-and-run-at", "enqueue --delay 1m --run-at 2030-01-01T00:00:00Z -- true", "delay"),
    bad("list-status-unknown", "list --status bogus", "bogus"),
    bad("list-limit-zero", "list --limit 0", "limit"),
    bad(
        "config-syntax-error",
        "enqueue -- true",
        *("batchjob.toml", "line 2"),
        config=f"\n[tasks.{TASK}\n",
    ),
    bad(
        "config-unknown-key",
        "enqueue -- true",
        *("batchjob.toml", f"tasks.{TASK}.colour"),
        config=TASK_CONFIG + 'colour = "blue"\n',
    ),
    bad(
        "config-bad-duration",
        "enqueue -- true",
        *("batchjob.toml", f"tasks.{TASK}.timeout", "2x"),
        config=TASK_CONFIG.replace('"2h"', '"2x"'),
    ),
    bad("config-flag-missing-file", "--config /nonexistent.toml list", "/nonexistent.toml"),
    bad(
        "config-env-missing-file",
        "list",
        "/nonexistent.toml",
        env={"BATCH_JOB_CONFIG": "/nonexistent.toml"},
    ),
    # A task's own argv and env must pass the checks a command's pass: the kernel refuses an
    # argument over 128 KiB (E2BIG) at spawn, and BATCH_JOB_* is the worker's to set.
    bad(
        "task-argument-over-128KiB",
        "enqueue big",
        config=with_task("big", f'command = ["echo", "{"x" * 200_000}"]'),
    ),
    bad(
        "task-argument-over-128KiB-after-substitution",
        ("enqueue", "twice", "--param", f"p={'y' * ARGUMENT_BYTES}"),
        config=with_task("twice", 'command = ["echo", "{p}{p}"]'),
    ),
    bad(
        "task-env-reserved-name",
        "enqueue reserved",
        "BATCH_JOB_ID",
        config=with_task("reserved", 'command = ["true"]\nenv = { BATCH_JOB_ID = "7" }'),
    ),
]


@pytest.mark.parametrize("bad", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(
    cli: Cli, queue: Queue, database_url: str, tmp_path: Path, bad: BadInput
) -> None:
    assert len(OVERSIZED_COMMAND) * ARGUMENT_BYTES + 64 * 1024 < os.sysconf("SC_ARG_MAX")
    queue.enqueue(["echo", PROPERTY], unique_key="seed", tags=["seed"])
    write_config(tmp_path, bad.config)
    before = stored_rows(database_url)

    result = cli(*bad.args, env=bad.env)

    line = one_line_error(result)
    for word in bad.expect:
        assert word in line
    assert result.stdout == ""
    assert stored_rows(database_url) == before


# ---- database and schema -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("mysql://root:pw-1234@127.0.0.1:1/x", id="mysql"),
        pytest.param("postgresql://postgres:pw-1234@127.0.0.1:1/x", id="postgresql"),
    ],
)
@pytest.mark.parametrize("args", [("list",), ("enqueue", "--", "true")], ids=["list", "enqueue"])
def test_an_unreachable_database_exits_2_promptly(
    tmp_path: Path, url: str, args: tuple[str, ...]
) -> None:
    # The subprocess timeout is the "promptly": a hang fails the test with TimeoutExpired.
    result = run_cli("--database-url", url, *args, cwd=tmp_path, timeout=10)

    line = one_line_error(result)
    assert "127.0.0.1" in line
    assert "pw-1234" not in result.stderr


def test_a_database_without_schema_says_to_run_init(tmp_path: Path) -> None:
    env = {"BATCH_JOB_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}"}

    for args in (("list",), ("enqueue", "--", "true")):
        assert "batchjob init" in one_line_error(run_cli(*args, cwd=tmp_path, env=env))

    first = run_cli("init", cwd=tmp_path, env=env)
    second = run_cli("init", cwd=tmp_path, env=env)
    assert (first.returncode, second.returncode) == (0, 0)
    assert "up to date" not in first.stdout
    assert "up to date" in second.stdout
    assert json.loads(run_cli("list", "--json", cwd=tmp_path, env=env).stdout) == []


def test_init_of_a_current_schema_says_up_to_date(cli: Cli, tmp_path: Path) -> None:
    assert "up to date" in ok(cli, "init")
    assert (tmp_path / "logs" / "jobs").is_dir()


def test_help_lists_the_commands_and_the_environment_variables(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)  # no database needed

    assert result.returncode == 0
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), command
    for variable in ("BATCH_JOB_CONFIG", "BATCH_JOB_DATABASE_URL", "BATCH_JOB_LOG_DIR"):
        assert variable in result.stdout


def test_seed_queries_run_verbatim(queue: Queue, store: Store, database_url: str) -> None:
    jobs = make_jobs_in_every_state(queue, store)

    running = query(database_url, RUNNING_QUERY)
    assert {row["id"] for row in running} == {jobs.running, jobs.running_other}
    started = [row["started_at"] for row in running]
    assert started == sorted(started, reverse=True)

    failed = query(database_url, FAILED_QUERY)
    assert {row["id"] for row in failed} == {jobs.failed_first, jobs.failed_second}
    completed = [row["completed_at"] for row in failed]
    assert completed == sorted(completed, reverse=True)

    (in_progress,) = query(database_url, PROGRESS_QUERY)
    assert in_progress["id"] == jobs.running
    assert in_progress["progress_message"] == "処理中: 第六竹石"
    assert (in_progress["progress_current"], in_progress["progress_total"]) == (3, 120)
