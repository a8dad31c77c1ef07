"""The worker as systemd runs it: a real `batchjob worker` process with a minimal environment.

Each test starts workers as subprocesses with only PATH and the BATCH_JOB_* configuration
(no PYTHONUNBUFFERED, no LANG, no HOME), sends them real signals, and reads the outcome from
the database and the logs. Fault tests run on SQLite and PostgreSQL; the basics on all three.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from sqlalchemy import create_engine, make_url, text, update

from batchjob import __version__
from batchjob.model import FailureReason, Job, JobStatus
from batchjob.queue import Queue
from batchjob.store import WorkerRegistration
from batchjob.store.migrations import LATEST_VERSION
from batchjob.store.schema import workers as workers_table
from conftest import (
    BATCHJOB,
    Workers,
    postgresql_over_tls_only,
    prepared_database,
    run_cli,
    tmpfs,
    wait_until,
)
from tcp_proxy import TcpProxy

PYTHON = sys.executable
JOBS = Path(__file__).parent / "jobs"
FAULT_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


def job_processes(job_id: int, worker: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """Live processes of this job started by this worker (other tests run jobs with the same id)."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            env = process.environ()
            started_by = env.get("BATCH_JOB_WORKER", "").split(":")[1:2]
            if (
                env.get("BATCH_JOB_ID") == str(job_id)
                and started_by == [str(worker.pid)]
                and process.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(process)
        except psutil.Error:
            continue
    return found


def test_burst_worker_runs_jobs_and_logs_each_step(workers: Workers, queue: Queue) -> None:
    done = queue.enqueue(["sh", "-c", "echo 第六竹石; echo warn >&2"])
    failing = queue.enqueue(["sh", "-c", "echo 'no such row' >&2; exit 3"])
    missing = queue.enqueue(["/no/such/program"])
    assert workers.run_burst() == 0

    completed = queue.get(done.id)
    assert completed.status == JobStatus.COMPLETED
    assert completed.exit_code == 0
    log = Path(completed.log_path or "").read_text(encoding="utf-8")
    assert " out  | 第六竹石\n" in log
    assert " err  | warn\n" in log

    failed = queue.get(failing.id)
    assert (failed.status, failed.failure_reason, failed.exit_code) == (
        JobStatus.FAILED,
        FailureReason.EXIT_CODE,
        3,
    )
    assert failed.error_summary == "no such row"

    spawn_failed = queue.get(missing.id)
    assert spawn_failed.failure_reason == FailureReason.SPAWN_ERROR
    assert "No such file or directory" in (spawn_failed.error_summary or "")

    worker_log = workers.worker_log()
    for job in (done, failing):  # a line once it runs, with its process
        started = f"action=started job_id={job.id} attempt=1/1 queue=default worker_id="
        assert re.search(re.escape(started) + r"\S+ pid=[1-9][0-9]* log=", worker_log)
    assert f"action=started job_id={missing.id} " not in worker_log  # it never ran
    assert f"action=completed job_id={done.id} duration=" in worker_log
    assert f"action=failed job_id={failing.id} duration=" in worker_log
    assert "reason=exit_code" in worker_log
    assert f"action=failed job_id={missing.id} duration=" in worker_log
    assert "reason=spawn_error" in worker_log


def test_a_job_whose_log_cannot_be_made_runs_and_its_outcome_says_so(
    workers: Workers, queue: Queue
) -> None:
    job = queue.enqueue([PYTHON, "-c", "print('x' * 100_000)"])
    log_path = workers.directory / "logs" / "jobs" / f"{job.id}.log"
    log_path.mkdir(parents=True)  # a directory where its log file would go
    assert workers.run_burst() == 0

    ended = queue.get(job.id)
    assert (ended.status, ended.exit_code) == (JobStatus.COMPLETED, 0)
    (attempt,) = [event for event in queue.events(job.id) if event.kind == "attempt"]
    assert (attempt.data or {})["log_error"] == "Is a directory"


def test_job_sees_what_batchjob_sets_and_not_the_workers_configuration(
    workers: Workers, queue: Queue, tmp_path: Path
) -> None:
    dump = tmp_path / "env.txt"
    job = queue.enqueue(
        [PYTHON, "-c", f"import os; open({str(dump)!r}, 'w').write(repr(dict(os.environ)))"],
        queue="reports",
        env={"HUBSPOT_TIMEOUT": "30"},
    )
    assert workers.run_burst() == 0
    seen = eval(dump.read_text())
    assert seen["BATCH_JOB_ID"] == str(job.id)
    assert seen["BATCH_JOB_ATTEMPT"] == "1"
    assert seen["BATCH_JOB_QUEUE"] == "reports"
    assert seen["BATCH_JOB_PROGRESS_FD"].isdigit()
    assert seen["PYTHONUNBUFFERED"] == "1"
    assert seen["HUBSPOT_TIMEOUT"] == "30"
    assert seen["LANG"] == "C.UTF-8"
    assert seen["HOME"]
    for secret in ("BATCH_JOB_DATABASE_URL", "BATCH_JOB_LOG_DIR", "BATCH_JOB_CONFIG"):
        assert secret not in seen
    assert not Path(seen["TMPDIR"]).exists(), "the private TMPDIR is removed afterwards"


def test_a_failing_job_is_retried_until_it_completes(
    workers: Workers, queue: Queue, tmp_path: Path
) -> None:
    script = 'test "$BATCH_JOB_ATTEMPT" -ge 3 || { echo "attempt $BATCH_JOB_ATTEMPT" >&2; exit 1; }'
    job = queue.enqueue(["sh", "-c", script], retries=4, retry_backoff="0.2s")
    workers.start()
    finished = wait_until(lambda: (j := queue.get(job.id)).status.is_finished and j)
    assert finished.status == JobStatus.COMPLETED
    assert finished.attempt == 3
    assert finished.max_attempts == 5
    assert workers.worker_log().count(f"action=retry_scheduled job_id={job.id} ") == 2


def test_progress_reaches_the_database_and_the_last_report_lands(
    workers: Workers, queue: Queue
) -> None:
    program = (
        "from batchjob import progress\n"
        "for i in range(1, 50001):\n"
        "    progress(f'処理中: 第六竹石 {i}', current=i, total=50000)\n"
    )
    job = queue.enqueue([PYTHON, "-c", program])
    assert workers.run_burst() == 0
    stored = queue.get(job.id)
    assert stored.status == JobStatus.COMPLETED
    assert stored.progress_message == "処理中: 第六竹石 50000"
    assert (stored.progress_current, stored.progress_total) == (50000, 50000)


def test_progress_from_a_posix_shell_reaches_the_database(workers: Workers, queue: Queue) -> None:
    script = 'echo \'{"message": "第六竹石", "current": 2, "total": 5}\' >&$BATCH_JOB_PROGRESS_FD'
    job = queue.enqueue(["/bin/sh", "-c", script])
    assert workers.run_burst() == 0
    stored = queue.get(job.id)
    assert stored.status == JobStatus.COMPLETED, stored.error_summary
    assert (stored.progress_message, stored.progress_current, stored.progress_total) == (
        "第六竹石",
        2,
        5,
    )


def test_jobs_started_side_by_side_each_report_progress_on_their_own_pipe(
    workers: Workers, queue: Queue
) -> None:
    """Slots start their jobs at the same time, each lending its job a reserved descriptor
    number of its own: no job's progress reaches another's row, and dash names them all."""
    script = (
        'echo "{\\"message\\": \\"job $BATCH_JOB_ID on $BATCH_JOB_PROGRESS_FD\\"}"'
        " >&$BATCH_JOB_PROGRESS_FD"
    )
    jobs = queue.enqueue_many([{"command": ["/bin/sh", "-c", script]} for _ in range(80)])
    assert workers.run_burst("--concurrency", "4") == 0
    descriptors = set()
    for job in jobs:
        stored = queue.get(job.id)
        assert stored.status == JobStatus.COMPLETED, stored.error_summary
        message = stored.progress_message or ""
        assert message.startswith(f"job {job.id} on "), (job.id, message)
        descriptors.add(int(message.rsplit(" ", 1)[1]))
    assert len(descriptors) == 4 and max(descriptors) <= 9, descriptors


def test_cancel_stops_a_running_job_and_its_children(workers: Workers, queue: Queue) -> None:
    job = queue.enqueue(["sh", "-c", "sleep 300 & sleep 300; wait"])
    worker = workers.start()
    running = wait_until(lambda: (j := queue.get(job.id)).pid and j)
    assert running.status == JobStatus.RUNNING
    queue.cancel(job.id)
    cancelled = wait_until(lambda: (j := queue.get(job.id)).status.is_finished and j, timeout=15)
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.failure_reason == FailureReason.CANCELLED
    assert job_processes(job.id, worker) == []


@FAULT_DATABASES
def test_sigterm_puts_a_running_job_back_without_using_an_attempt(
    workers: Workers, queue: Queue
) -> None:
    workers.configure('[worker]\nshutdown_grace = "1s"\nkill_grace = "1s"\n')
    job = queue.enqueue(["sleep", "300"], retries=0)
    worker = workers.start()
    wait_until(lambda: queue.get(job.id).pid)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    released = queue.get(job.id)
    assert released.status == JobStatus.PENDING
    assert released.attempt == 0
    assert released.failure_reason is None
    assert "released" in [event.kind for event in queue.events(job.id)]
    assert job_processes(job.id, worker) == []


@FAULT_DATABASES
def test_sigkill_of_the_worker_takes_its_jobs_with_it_then_another_rescues(
    workers: Workers, queue: Queue
) -> None:
    workers.configure('[worker]\nlease_timeout = "2s"\n')
    told = workers.directory / "tmpdir"
    first_attempt = f'echo "$TMPDIR" > {told}; touch "$TMPDIR/half"; setsid sleep 300 & sleep 300'
    script = f'if [ "$BATCH_JOB_ATTEMPT" = 1 ]; then {first_attempt}; fi; echo done'
    job = queue.enqueue(["sh", "-c", script], retries=2)
    first = workers.start()
    wait_until(lambda: len(job_processes(job.id, first)) >= 2 and told.exists())
    job_tmpdir = Path(told.read_text().strip())
    assert (job_tmpdir / "half").exists()
    first.kill()
    first.wait()
    gone_after = time.monotonic()
    wait_until(lambda: job_processes(job.id, first) == [], timeout=5, interval=0.05)
    assert time.monotonic() - gone_after < 5
    # Its guardian removed the killed worker's job TMPDIRs too.
    wait_until(lambda: not job_tmpdir.exists(), timeout=10, interval=0.05)
    assert list(job_tmpdir.parent.glob(f"batchjob-{first.pid}-*")) == []
    workers.start()
    finished = wait_until(lambda: (j := queue.get(job.id)).status.is_finished and j)
    assert finished.status == JobStatus.COMPLETED
    assert finished.attempt == 2
    assert "rescued" in [event.kind for event in queue.events(job.id)]


def test_tmpdirs_of_a_worker_killed_with_its_guardian_are_removed_by_the_next(
    workers: Workers, queue: Queue
) -> None:
    """Only those of this host's registered workers that stopped or fell silent, and never
    while a process with that pid here is older than the directory (another pid namespace
    may share /tmp)."""
    host = socket.gethostname()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs
    since = datetime.now(UTC).replace(tzinfo=None)
    cases = {
        "stopped": (gone.pid, True),
        "silent": (gone.pid, True),
        "checking in": (gone.pid, False),
        "not registered": (gone.pid, False),
        "its pid older than the directory, here": (os.getpid(), False),
    }
    made: dict[str, Path] = {}
    for case, (pid, _removed) in cases.items():
        token = secrets.token_hex(3)
        made[case] = Path(tempfile.mkdtemp(prefix=f"batchjob-{pid}-{token}-"))
        (made[case] / "left by a killed job").write_text("x")
        if case != "not registered":
            queue.store.register_worker(
                WorkerRegistration(f"{host}:{pid}:{token}", host, pid, "0", None, 1)
            )
    try:
        for case in ("stopped", "its pid older than the directory, here"):
            queue.store.worker_seen(_owner(host, made[case]), stopped=True)
        with create_engine(queue.store.url).begin() as connection:
            connection.execute(
                update(workers_table)
                .where(workers_table.c.id == _owner(host, made["silent"]))
                .values(last_seen=since - timedelta(minutes=5))
            )
        assert workers.run_burst() == 0
        assert {case: not made[case].exists() for case in cases} == {
            case: removed for case, (_pid, removed) in cases.items()
        }
        assert "action=stale_tmpdirs_removed count=2" in workers.worker_log()
    finally:
        for path in made.values():
            shutil.rmtree(path, ignore_errors=True)


def _owner(host: str, tmpdir: Path) -> str:
    _prefix, pid, token, _suffix = tmpdir.name.split("-", 3)
    return f"{host}:{pid}:{token}"


@FAULT_DATABASES
def test_a_frozen_worker_cannot_write_after_its_job_was_rescued(
    workers: Workers, queue: Queue, tmp_path: Path
) -> None:
    workers.configure('[worker]\nlease_timeout = "2s"\n')
    marker = tmp_path / "attempts"
    script = f'echo "$BATCH_JOB_ATTEMPT" >> {marker}; [ "$BATCH_JOB_ATTEMPT" = 1 ] && sleep 8'
    script += "; exit 0"
    job = queue.enqueue(["sh", "-c", script], retries=2)
    frozen = workers.start()
    first_attempt = wait_until(lambda: queue.get(job.id).pid)
    frozen.send_signal(signal.SIGSTOP)
    try:
        rescuer = workers.start()
        finished = wait_until(lambda: (j := queue.get(job.id)).status.is_finished and j)
        assert finished.status == JobStatus.COMPLETED
        assert finished.attempt == 2
        assert not psutil.pid_exists(first_attempt) or (
            psutil.Process(first_attempt).status() == psutil.STATUS_ZOMBIE
        ), "the rescue on this host killed the stale attempt first"
    finally:
        frozen.send_signal(signal.SIGCONT)
    time.sleep(3)
    after = queue.get(job.id)
    assert (after.status, after.attempt, after.exit_code) == (JobStatus.COMPLETED, 2, 0)
    assert marker.read_text().split() == ["1", "2"]
    wait_until(lambda: "lease_lost" in [event.kind for event in queue.events(job.id)])
    rescuer.send_signal(signal.SIGTERM)
    frozen.send_signal(signal.SIGTERM)
    assert frozen.wait(timeout=30) == 0


def job_related_fds(pid: int) -> list[str]:
    """The worker's pipes and job log files: what running a job opens and must close.

    Database connections are left out: the pool may open more of them as threads need them.
    """
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("pipe:") or "/jobs/" in target or "/batchjob-" in target:
            targets.append(target)
    return sorted(targets)


def test_many_quick_jobs_leave_no_zombie_and_no_open_fd(workers: Workers, queue: Queue) -> None:
    queue.enqueue_many([{"command": ["/bin/true"]} for _ in range(10)])
    worker = workers.start()
    wait_until(lambda: queue.stats().get("default", {}).get("completed") == 10)
    process = psutil.Process(worker.pid)
    time.sleep(1)
    before = job_related_fds(worker.pid)
    queue.enqueue_many([{"command": ["sh", "-c", "true & true"]} for _ in range(200)])
    wait_until(lambda: queue.stats().get("default", {}).get("completed") == 210, timeout=120)
    time.sleep(1.5)
    assert job_related_fds(worker.pid) == before
    zombies = [child for child in process.children() if child.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []


def test_the_worker_waits_for_a_database_that_is_not_there(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "batchjob.db"
    pool = Workers(f"sqlite:///{missing}", tmp_path)
    worker = pool.start()
    try:
        wait_until(lambda: "action=database_unavailable" in pool.worker_log(), timeout=15)
        time.sleep(2)  # several more attempts to reach it
        assert worker.poll() is None, "the worker keeps waiting instead of crashing"
        assert pool.worker_log().count("action=database_unavailable") == 1, "said once"
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)


def test_enqueue_wait_exits_with_the_jobs_outcome(workers: Workers, tmp_path: Path) -> None:
    workers.start()
    env = {"BATCH_JOB_DATABASE_URL": workers.database_url}
    program = (
        "from batchjob import progress\n"
        "for i in range(1, 4): progress(f'第六竹石 {i}', current=i, total=3)\n"
    )
    done = run_cli("enqueue", "--wait", "--", PYTHON, "-c", program, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().isdigit(), "stdout keeps only the id"
    assert f"job {done.stdout.strip()} completed" in done.stderr
    failed = run_cli("enqueue", "--wait", "--", "sh", "-c", "echo 'no such table' >&2; exit 2",
                     cwd=tmp_path, env=env)  # fmt: skip
    assert failed.returncode == 1
    assert "failed (exit_code 2): no such table" in failed.stderr
    again = run_cli("wait", failed.stdout.strip(), cwd=tmp_path, env=env)
    assert again.returncode == 1


def test_an_enqueue_wakes_an_idle_worker_long_before_its_next_poll(
    workers: Workers, queue: Queue, tmp_path: Path, database_url: str
) -> None:
    workers.configure('[worker]\npoll_interval = "120s"\n')
    first = queue.enqueue(["true"])  # taken by the worker's first claim, at start
    workers.start()
    assert queue.wait(first.id, timeout=30).status == JobStatus.COMPLETED
    env = {"BATCH_JOB_DATABASE_URL": workers.database_url}
    enqueued = run_cli("enqueue", "--", "true", cwd=tmp_path, env=env)  # as an application would
    assert enqueued.returncode == 0, enqueued.stderr
    woken = queue.wait(int(enqueued.stdout), timeout=60)  # half the poll interval
    assert woken.status == JobStatus.COMPLETED
    if database_url.startswith("postgresql"):
        # The NOTIFY comes from a trigger on the jobs table: another program's row wakes it too.
        engine = create_engine(database_url)
        with engine.begin() as conn:
            inserted = conn.execute(
                text(
                    "INSERT INTO batch_job_queue (queue, command, params, env, tags, status,"
                    " priority, attempt, max_attempts, run_at, created_at) VALUES ('default',"
                    " '[\"true\"]', '{}', '{}', '[]', 'pending', 0, 0, 1,"
                    " now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC') RETURNING id"
                )
            ).scalar_one()
        engine.dispose()
        assert queue.wait(inserted, timeout=60).status == JobStatus.COMPLETED


def test_a_worker_on_an_older_schema_says_to_run_init(
    workers: Workers, queue: Queue, database_url: str
) -> None:
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("DELETE FROM batch_job_schema WHERE version = :latest"),
                {"latest": LATEST_VERSION},
            )
        workers.start()
        log = workers.directory / "logs" / "batch_job_worker.log"
        line = wait_until(
            lambda: (
                next(
                    (row for row in log.read_text().splitlines() if "schema_outdated" in row), None
                )
                if log.exists()
                else None
            )
        )
        assert f"version={LATEST_VERSION - 1} latest={LATEST_VERSION}" in line
        assert "batchjob init" in line
    finally:
        engine.dispose()
        assert queue.init() == (LATEST_VERSION - 1, LATEST_VERSION)


def test_logs_follow_prints_until_the_job_ends(
    workers: Workers, queue: Queue, tmp_path: Path
) -> None:
    job = queue.enqueue(["sh", "-c", "for i in 1 2 3 4 5; do echo 第六竹石 $i; sleep 0.3; done"])
    env = {"BATCH_JOB_DATABASE_URL": workers.database_url}
    follower = subprocess.Popen(
        [str(BATCHJOB), "logs", "-f", str(job.id)],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", **env},
        stdout=subprocess.PIPE,
    )
    workers.start()
    output, _ = follower.communicate(timeout=60)
    assert follower.returncode == 0
    lines = output.decode().splitlines()
    assert [line.split(" | ", 1)[1] for line in lines if " out  | " in line] == [
        f"第六竹石 {n}" for n in range(1, 6)
    ]
    assert queue.get(job.id).status == JobStatus.COMPLETED


def test_sighup_reopens_the_worker_log(workers: Workers, queue: Queue) -> None:
    worker = workers.start()
    log = workers.directory / "logs" / "batch_job_worker.log"
    wait_until(lambda: log.exists() and "action=worker_started" in log.read_text())
    log.rename(log.with_suffix(".log.1"))
    worker.send_signal(signal.SIGHUP)
    wait_until(log.exists)
    job = queue.enqueue(["true"])
    wait_until(lambda: f"action=completed job_id={job.id} " in log.read_text())
    assert "action=log_reopened" in log.read_text()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_job_logs_removed_under_a_running_worker_are_made_again(
    workers: Workers, queue: Queue
) -> None:
    """An operator's `rm -rf logs/jobs` (a cleanup, a logrotate rule) while the worker runs:
    the next job's log is made again with its directory, and its output kept."""
    workers.start()
    jobs_dir = workers.directory / "logs" / "jobs"
    first = queue.enqueue(["sh", "-c", "echo first"])
    wait_until(lambda: queue.get(first.id).status == JobStatus.COMPLETED)
    shutil.rmtree(jobs_dir)
    second = queue.enqueue(["sh", "-c", "echo 第六竹石"])
    stored = wait_until(lambda: (job := queue.get(second.id)).status.is_finished and job)
    assert stored.status == JobStatus.COMPLETED
    assert Path(stored.log_path or "").parent == jobs_dir
    assert " out  | 第六竹石\n" in Path(stored.log_path or "").read_text(encoding="utf-8")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_jobs_output_passes_through_the_worker_without_a_new_page_for_each_page(
    workers: Workers, queue: Queue
) -> None:
    """128 MiB of short lines (32,768 pages): glibc's default malloc thresholds gave the
    kernel back each chunk the worker read and prefixed, and took it again (100,000 page
    faults in the worker for this job); kept for reuse, a few thousand."""
    worker = workers.start()
    warm_up = queue.enqueue(["true"])
    wait_until(lambda: queue.get(warm_up.id).status == JobStatus.COMPLETED)
    faults_before = _minor_faults(worker.pid)
    writes = (
        "import sys\nblock = (b'x' * 99 + b'\\n') * 10486\n"
        "for _ in range(128): sys.stdout.buffer.write(block)\n"
    )
    job = queue.enqueue([PYTHON, "-c", writes])
    stored = wait_until(lambda: (found := queue.get(job.id)).status.is_finished and found)

    assert stored.status == JobStatus.COMPLETED
    assert _minor_faults(worker.pid) - faults_before < 128 * 1024 * 1024 // 4096 // 2


def _minor_faults(pid: int) -> int:
    """The process's minor page faults so far (/proc/<pid>/stat, its tenth field)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_claiming_pauses_while_the_log_disk_is_nearly_full(
    workers: Workers, queue: Queue, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "logs", "size=8m") as logs:
        job = queue.enqueue(["true"])
        worker = workers.start()
        wait_until(lambda: "action=claiming_paused" in workers.worker_log())
        assert queue.get(job.id).status == JobStatus.PENDING
        subprocess.run(["mount", "-o", "remount,size=64m", str(logs)], check=True)
        wait_until(lambda: queue.get(job.id).status == JobStatus.COMPLETED)
        assert "action=claiming_resumed" in workers.worker_log()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
def test_a_job_that_ends_while_the_database_is_away_is_recorded_when_it_is_back(
    workers: Workers, queue: Queue, database_url: str
) -> None:
    url = make_url(database_url)
    proxy = TcpProxy(url.port or 5432)
    try:
        workers.database_url = url.set(port=proxy.port).render_as_string(hide_password=False)
        job = queue.enqueue(["sh", "-c", "sleep 2; echo finished"])
        worker = workers.start()
        wait_until(lambda: queue.get(job.id).pid)
        proxy.cut()
        time.sleep(5)  # the job ends while the database cannot be reached
        assert worker.poll() is None, "the worker waits the outage out"
        assert queue.get(job.id).status == JobStatus.RUNNING
        proxy.restore()
        finished = wait_until(lambda: (j := queue.get(job.id)).status.is_finished and j)
        assert (finished.status, finished.exit_code) == (JobStatus.COMPLETED, 0)
        log = workers.worker_log()
        assert log.count("action=database_unavailable") == 1, "an outage is said once"
        assert log.count("action=database_back") == 1
    finally:
        proxy.close()


def enqueue_a_job_that_hangs_on_its_first_attempt(queue: Queue, tmp_path: Path) -> tuple[Path, Job]:
    """A job that sleeps 60 s on attempt 1 and succeeds on attempt 2; `marker` lists attempts."""
    marker = tmp_path / "attempts"
    script = f'echo "$BATCH_JOB_ATTEMPT" >> {marker}; [ "$BATCH_JOB_ATTEMPT" = 1 ] && sleep 60'
    return marker, queue.enqueue(["sh", "-c", script + "; exit 0"], retries=2)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_worker_cut_off_from_the_database_stops_its_job_before_the_lease_expires(
    workers: Workers, queue: Queue, database_url: str, tmp_path: Path
) -> None:
    url = make_url(database_url)
    proxy = TcpProxy(url.port or 5432)
    try:
        workers.database_url = url.set(port=proxy.port).render_as_string(hide_password=False)
        workers.configure('[worker]\nlease_timeout = "3s"\n')
        marker, job = enqueue_a_job_that_hangs_on_its_first_attempt(queue, tmp_path)
        worker = workers.start()
        wait_until(lambda: len(job_processes(job.id, worker)) >= 2)
        proxy.cut()
        # Two thirds of the 3 s lease after its last renewal, the worker stops the job itself.
        wait_until(lambda: job_processes(job.id, worker) == [], timeout=10, interval=0.1)
        assert "action=self_fence job_id=" in workers.worker_log()
        proxy.restore()
        finished = wait_until(lambda: (j := queue.get(job.id)).status.is_finished and j)
        assert (finished.status, finished.attempt) == (JobStatus.COMPLETED, 2)
        assert marker.read_text().split() == ["1", "2"]
    finally:
        proxy.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_whose_renewal_hangs_on_a_locked_database_still_stops_its_job_in_time(
    workers: Workers, queue: Queue, database_url: str, tmp_path: Path
) -> None:
    """The lease keeper blocks in the renewal (another process holds SQLite's write lock
    longer than the lease); the runner must still kill the job before the lease expires."""
    workers.configure('[worker]\nlease_timeout = "3s"\n')
    marker, job = enqueue_a_job_that_hangs_on_its_first_attempt(queue, tmp_path)
    worker = workers.start()
    wait_until(lambda: len(job_processes(job.id, worker)) >= 2)
    holder = create_engine(database_url, connect_args={"timeout": 30})
    try:
        with holder.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            locked_at = time.monotonic()
            wait_until(lambda: job_processes(job.id, worker) == [], timeout=6, interval=0.1)
            # Gone while the renewal is still stuck behind the lock, within the lease.
            assert time.monotonic() - locked_at < 3
            conn.exec_driver_sql("ROLLBACK")
    finally:
        holder.dispose()
    assert "action=self_fence job_id=" in workers.worker_log()
    finished = wait_until(lambda: (j := queue.get(job.id)).status.is_finished and j, timeout=30)
    assert (finished.status, finished.attempt) == (JobStatus.COMPLETED, 2)
    assert marker.read_text().split() == ["1", "2"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_claim_that_waited_for_the_write_lock_still_starts_its_job(
    workers: Workers, queue: Queue, database_url: str
) -> None:
    """The lease runs from the claim's UPDATE, not from when the worker asked: a claim stuck
    3 s behind another process's write lock, longer than 2/3 of the 3 s lease, still runs."""
    workers.configure('[worker]\nlease_timeout = "3s"\npoll_interval = "50ms"\n')
    job = queue.enqueue(["sh", "-c", "echo ran"], delay="1s")
    workers.start()
    wait_until(lambda: "action=worker_started" in workers.worker_log())
    holder = sqlite3.connect(make_url(database_url).database or "", timeout=30)
    try:
        holder.execute("BEGIN IMMEDIATE")
        time.sleep(3)  # the worker's next claim waits on the lock from its start
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    finished = wait_until(lambda: (j := queue.get(job.id)).status.is_finished and j, timeout=30)
    assert (finished.status, finished.attempt) == (JobStatus.COMPLETED, 1)
    assert "lease ran out" not in Path(finished.log_path or "").read_text(encoding="utf-8")


def test_the_worker_registers_names_its_driver_and_records_each_attempts_evidence(
    workers: Workers, queue: Queue, database_url: str
) -> None:
    job = queue.enqueue(
        [PYTHON, "-c", "import time; block = bytearray(64 << 20); time.sleep(1.5)"],
        env={"API_TOKEN": "s3cr3t", "SYNC_URL": "https://sync:hunter2@crm.example/api"},
    )
    assert workers.run_burst() == 0
    assert f" driver={make_url(database_url).drivername} " in workers.worker_log()
    stored = queue.get(job.id)
    assert stored.status == JobStatus.COMPLETED
    assert (stored.peak_rss_bytes or 0) > 60 << 20
    assert (stored.peak_open_fds or 0) >= 3
    (attempt,) = [event for event in queue.events(job.id) if event.kind == "attempt"]
    evidence = attempt.data or {}
    # This test's python is a virtualenv's: found by its pyvenv.cfg (no VIRTUAL_ENV is set).
    assert (Path(PYTHON).parent.parent / "pyvenv.cfg").exists()
    assert evidence["virtualenv"] == str(Path(PYTHON).parent.parent)
    assert evidence["interpreter"] == os.path.realpath(PYTHON)
    environment = evidence["environment"]
    assert environment["API_TOKEN"] == "***"
    assert environment["SYNC_URL"] == "https://sync:***@crm.example/api"
    assert environment["BATCH_JOB_ID"] == str(job.id)
    engine = create_engine(database_url)
    with engine.connect() as conn:
        (row,) = conn.execute(text("SELECT * FROM batch_job_workers")).mappings().all()
    engine.dispose()
    assert row["host"] == socket.gethostname()
    assert row["concurrency"] == 2
    assert row["version"]
    assert row["started_at"] <= row["last_seen"]
    assert row["stopped_at"] is not None


def openssl_mapped(pid: int) -> set[str]:
    """OpenSSL's libraries and Python's modules over them that the process has mapped."""
    return mapped(pid, ("libssl", "libcrypto", "_ssl.", "_hashlib."))


def mapped(pid: int, names: tuple[str, ...]) -> set[str]:
    """Which of these libraries (beginnings of file names) the process has mapped."""
    with open(f"/proc/{pid}/maps", encoding="utf-8") as maps:
        paths = {line.split()[-1] for line in maps if "/" in line}
    return {name for name in names for path in paths if name in Path(path).name}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_on_sqlite_loads_neither_openssl_nor_metadata_and_is_woken_and_runs_jobs(
    workers: Workers, queue: Queue, tmp_path: Path
) -> None:
    workers.configure('[worker]\npoll_interval = "120s"\n')
    first = queue.enqueue(["true"])  # taken by the worker's first claim, at start
    worker = workers.start()
    assert queue.wait(first.id, timeout=30).status == JobStatus.COMPLETED
    env = {"BATCH_JOB_DATABASE_URL": workers.database_url}
    enqueued = run_cli("enqueue", "--", "true", cwd=tmp_path, env=env)  # this one has OpenSSL
    assert enqueued.returncode == 0, enqueued.stderr
    # Woken (not polled) through the socket named by a digest each process works out apart.
    assert queue.wait(int(enqueued.stdout), timeout=60).status == JobStatus.COMPLETED
    assert openssl_mapped(worker.pid) == set()
    # importlib.metadata not loaded: the csv module it alone imports has not mapped its _csv.
    assert mapped(worker.pid, ("_csv.",)) == set()


STAND_IN_USED = """
import sys
from batchjob.worker.lean import metadata_loaded_on_first_use
metadata_loaded_on_first_use()
import sqlalchemy
from importlib import metadata
assert "csv" not in sys.modules, "loaded before its first use"
try:  # a dialect SQLAlchemy has not built in: looked up among the entry points
    sqlalchemy.create_engine("nosuchdialect://")
except sqlalchemy.exc.NoSuchModuleError as exc:
    print(type(exc).__name__)
print(metadata.version("batchjob"), "csv" in sys.modules)
from importlib.metadata import version
print(version("batchjob"), type(sys.modules["importlib.metadata"]).__name__)
"""


def test_metadata_left_out_of_the_worker_is_there_when_used() -> None:
    done = subprocess.run(
        [sys.executable, "-c", STAND_IN_USED], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["NoSuchModuleError", __version__, "True", __version__, "module"]


def test_a_driver_imported_after_the_workers_code_still_gets_ssl(
    tmp_path: Path, server_databases: dict[str, str]
) -> None:
    url = prepared_database("mariadb-pymysql", tmp_path, server_databases)
    pool, queue = Workers(url, tmp_path), Queue(url)
    try:
        job = queue.enqueue(["true"])
        worker = pool.start()
        assert queue.wait(job.id, timeout=60).status == JobStatus.COMPLETED
        # PyMySQL imports ssl for its TLS, tried even unasked: kept out, it would go without.
        assert {"libssl", "_ssl."} <= openssl_mapped(worker.pid)
    finally:
        pool.stop_all()
        queue.close()


OTHER_CONNECTIONS_ENCRYPTED = (
    "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
    " WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()"
)


def test_a_worker_on_postgresql_over_tls_leaves_openssl_to_libpq(tmp_path: Path) -> None:
    with postgresql_over_tls_only() as url:
        queue = Queue(url)
        queue.init()
        pool = Workers(url, tmp_path)
        try:
            job = queue.enqueue(["true"])
            worker = pool.start()
            assert queue.wait(job.id, timeout=60).status == JobStatus.COMPLETED
            # psycopg imported without Python's ssl: its libpq verified the certificate.
            assert {"_ssl.", "_hashlib."}.isdisjoint(openssl_mapped(worker.pid))
            queue.close()  # what is left connected is the worker
            engine = create_engine(url)
            with engine.connect() as conn:
                encrypted = conn.execute(text(OTHER_CONNECTIONS_ENCRYPTED)).scalars().all()
            engine.dispose()
            assert encrypted and all(encrypted)
        finally:
            pool.stop_all()
            queue.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_psycopgs_pure_python_wrapper_is_imported_with_ssl(workers: Workers, queue: Queue) -> None:
    job = queue.enqueue(["true"])
    worker = workers.start(env={"PSYCOPG_IMPL": "python"})  # it imports ssl, and needs it
    assert queue.wait(job.id, timeout=60).status == JobStatus.COMPLETED
    assert "_ssl." in openssl_mapped(worker.pid)


def test_a_job_longer_than_its_lease_keeps_it(workers: Workers, queue: Queue) -> None:
    workers.configure('[worker]\nlease_timeout = "1s"\n')
    job = queue.enqueue(["sleep", "4"], retries=3)
    workers.start()
    workers.start()  # a second worker would rescue the job if its lease lapsed
    finished = wait_until(lambda: (j := queue.get(job.id)).status.is_finished and j)
    assert (finished.status, finished.attempt) == (JobStatus.COMPLETED, 1)
    assert "rescued" not in [event.kind for event in queue.events(job.id)]


def test_a_job_past_its_timeout_fails_with_timeout(workers: Workers, queue: Queue) -> None:
    workers.configure('[worker]\nkill_grace = "1s"\n')
    job = queue.enqueue(["sh", "-c", "trap '' TERM; sleep 60"], timeout="1s")
    assert workers.run_burst() == 0
    failed = queue.get(job.id)
    assert (failed.status, failed.failure_reason) == (JobStatus.FAILED, FailureReason.TIMEOUT)
    assert "timeout of 1s" in (failed.error_summary or "")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_start_up_sweep_kills_processes_of_a_dead_worker_of_this_host(
    workers: Workers, tmp_path: Path
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale_env = {
        "PATH": "/usr/bin:/bin",
        "BATCH_JOB_ID": "424242",
        "BATCH_JOB_WORKER": f"{socket.gethostname()}:{dead.pid}:abcdef",
    }
    other_env = {**stale_env, "BATCH_JOB_WORKER": f"elsewhere:{dead.pid}:abcdef"}
    stale = subprocess.Popen(["sleep", "300"], env=stale_env)
    other_host = subprocess.Popen(["sleep", "300"], env=other_env)
    try:
        assert workers.run_burst() == 0
        assert stale.wait(timeout=10) == -signal.SIGKILL
        # (Under xdist another test's worker may sweep it first: any worker of this host may.)
        assert other_host.poll() is None, "another host's job is not this worker's to judge"
    finally:
        for process in (stale, other_host):
            process.kill()
            process.wait()


def test_a_worker_with_every_slot_busy_still_rescues_orphans(
    workers: Workers, queue: Queue
) -> None:
    workers.configure('[worker]\nlease_timeout = "2s"\n')
    busy_job = queue.enqueue(["sleep", "60"])
    busy = workers.start("--concurrency", "1")
    wait_until(lambda: queue.get(busy_job.id).pid)
    orphan = queue.enqueue(["sleep", "60"], retries=1)
    doomed = workers.start("--concurrency", "1")
    wait_until(lambda: queue.get(orphan.id).pid)
    doomed.kill()
    rescued = wait_until(lambda: (j := queue.get(orphan.id)).status == JobStatus.PENDING and j)
    assert rescued.lost_attempts == 1
    assert queue.get(busy_job.id).status == JobStatus.RUNNING, "the rescuer was the busy worker"
    busy.kill()
