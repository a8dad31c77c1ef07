"""Stall detection, the recorded execution context, env-diff and run --like-worker."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from batchjob.diagnosis.context import INTERPRETER_LOOKUP_SECONDS, execution_context
from batchjob.model import JobStatus
from batchjob.queue import Queue
from batchjob.runner import JobSpec, RunControl, StopReason, run, watch
from batchjob.runner.spawn import SpawnRequest
from conftest import Workers, run_cli, wait_until

PYTHON = sys.executable
BASE_ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture(scope="module", autouse=True)
def _subreaper() -> None:
    watch.become_subreaper()


def run_with_stall_watch(
    tmp_path: Path, command: list[str], stall_timeout: float, stall_action: str = "diagnose"
) -> tuple[list[tuple[bool, float]], object]:
    changes: list[tuple[bool, float]] = []
    control = RunControl(on_stall=lambda stalled, idle, pids: changes.append((stalled, idle)))
    spec = JobSpec(
        spawn=SpawnRequest(7, 1, "q", command, {}, None, BASE_ENV),
        log_path=str(tmp_path / "job.log"),
        max_log_bytes=1 << 20,
        timeout=30,
        kill_grace=1,
        drain_grace=1,
        stall_timeout=stall_timeout,
        stall_action=stall_action,
    )
    return changes, run(spec, control)


def test_a_silent_sleeping_job_is_stalled_and_unstalled_when_it_moves(tmp_path: Path) -> None:
    changes, result = run_with_stall_watch(
        tmp_path, ["sh", "-c", "sleep 3; echo awake; sleep 0.5"], stall_timeout=1.5
    )
    assert [stalled for stalled, _idle in changes] == [True, False]
    assert changes[0][1] >= 1.5
    assert "stalled: no output, progress or CPU" in (tmp_path / "job.log").read_text()
    assert result.exit_code == 0  # type: ignore[attr-defined]


def test_a_busy_job_is_never_stalled(tmp_path: Path) -> None:
    busy = "import time\nend = time.time() + 3\nwhile time.time() < end: pass\n"
    changes, result = run_with_stall_watch(tmp_path, [PYTHON, "-c", busy], stall_timeout=1)
    assert changes == []
    assert result.exit_code == 0  # type: ignore[attr-defined]


def test_a_job_reporting_progress_is_not_stalled(tmp_path: Path) -> None:
    program = (
        "import time\nfrom batchjob import progress\n"
        "for i in range(6): progress(f'step {i}', current=i, total=6); time.sleep(0.5)\n"
    )
    changes, _result = run_with_stall_watch(tmp_path, [PYTHON, "-c", program], stall_timeout=1.5)
    assert changes == []


def test_stall_action_kill_stops_the_tree(tmp_path: Path) -> None:
    changes, result = run_with_stall_watch(
        tmp_path, ["sleep", "60"], stall_timeout=1, stall_action="kill"
    )
    assert [stalled for stalled, _idle in changes] == [True]
    assert result.stopped_by == StopReason.STALLED  # type: ignore[attr-defined]


def test_a_stalled_job_is_marked_and_diagnosed_by_the_worker(
    workers: Workers, queue: Queue
) -> None:
    job = queue.enqueue(["sh", "-c", "sleep 4; echo done"], stall_timeout="1s")
    workers.start()
    stalled = wait_until(lambda: (j := queue.get(job.id)).stalled_at and j)
    assert stalled.status == JobStatus.RUNNING
    assert stalled.diagnosis is not None
    assert "sleep" in json.dumps(stalled.diagnosis)
    finished = wait_until(lambda: (j := queue.get(job.id)).status.is_finished and j)
    assert finished.status == JobStatus.COMPLETED
    assert finished.stalled_at is None
    kinds = [event.kind for event in queue.events(job.id)]
    assert kinds.index("stalled") < kinds.index("diagnosis") < kinds.index("moving")


def test_a_stalled_job_with_stall_action_kill_is_retried(workers: Workers, queue: Queue) -> None:
    workers.configure(
        "[tasks.hang]\n"
        'command = ["sh", "-c", "[ $BATCH_JOB_ATTEMPT = 2 ] || sleep 60"]\n'
        'stall_timeout = "1s"\nstall_action = "kill"\nretries = 1\nretry_backoff = "0.1s"\n'
    )
    from batchjob.config import load_settings

    settings = load_settings(workers.directory / "batchjob.toml", database_url=workers.database_url)
    job = Queue(settings=settings).enqueue(task="hang")
    workers.start()
    finished = wait_until(lambda: (j := queue.get(job.id)).status.is_finished and j)
    assert (finished.status, finished.attempt) == (JobStatus.COMPLETED, 2)
    assert "stalled" in [event.kind for event in queue.events(job.id)]


def test_env_diff_names_a_variable_set_only_in_the_job(
    workers: Workers, queue: Queue, tmp_path: Path
) -> None:
    job = queue.enqueue(["true"], env={"ONLY_IN_THE_JOB": "第六竹石", "CRM_TOKEN": "hunter2"})
    assert workers.run_burst() == 0
    result = run_cli(
        "env-diff", str(job.id), "--json",
        cwd=tmp_path, env={"BATCH_JOB_DATABASE_URL": workers.database_url, "HOME": "/srv"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = {item["what"]: item for item in json.loads(result.stdout)}
    assert found["$ONLY_IN_THE_JOB"]["job"] == "第六竹石"
    assert found["$ONLY_IN_THE_JOB"]["here"] == "(unset)"
    assert found["$CRM_TOKEN"]["job"] == "***"
    assert found["$BATCH_JOB_ID"]["set_by_batchjob"] is True
    assert "hunter2" not in result.stdout
    text_view = run_cli(
        "env-diff", str(job.id), cwd=tmp_path, env={"BATCH_JOB_DATABASE_URL": workers.database_url}
    )
    assert "ONLY_IN_THE_JOB" in text_view.stdout


def test_the_recorded_interpreter_follows_a_program_that_changes(tmp_path: Path) -> None:
    """A job's evidence names the program its command ran as; the lookup is kept for a
    moment, never for the worker's life: a link re-pointed (an upgrade, update-alternatives)
    or a virtualenv made around it shows in the evidence of the jobs that end afterwards."""
    (tmp_path / "bin").mkdir()
    old_build, new_build = tmp_path / "tool-1.0", tmp_path / "tool-2.0"
    for program in (old_build, new_build):
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    link = tmp_path / "bin" / "tool"
    link.symlink_to(old_build)
    env = {"PATH": str(tmp_path / "bin")}
    before = execution_context(env, ["tool"], None)

    link.unlink()
    link.symlink_to(new_build)
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\n")
    time.sleep(INTERPRETER_LOOKUP_SECONDS + 0.1)
    after = execution_context(env, ["tool"], None)

    assert (before["interpreter"], before["virtualenv"]) == (str(old_build), None)
    assert (after["interpreter"], after["virtualenv"]) == (str(new_build), str(tmp_path))


def test_run_like_worker_gives_eof_on_stdin_and_the_job_variables(tmp_path: Path) -> None:
    program = (
        "import os, sys\n"
        "print('stdin:', repr(sys.stdin.read()))\n"
        "print('id:', os.environ['BATCH_JOB_ID'], 'fd:', os.environ['BATCH_JOB_PROGRESS_FD'])\n"
        "print('unbuffered:', os.environ['PYTHONUNBUFFERED'], 'lang:', os.environ['LANG'])\n"
        "print('secret:', os.environ.get('BATCH_JOB_DATABASE_URL'))\n"
        "from batchjob import progress; progress('第六竹石', current=1, total=2)\n"
        "sys.exit(5)\n"
    )
    import subprocess

    done = subprocess.run(
        [str(Path(PYTHON).with_name("batchjob")), "run", "--like-worker", "--", PYTHON, "-c",
         program],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "BATCH_JOB_DATABASE_URL": "sqlite:///x.db"},
        input=b"this must not reach the job",
        capture_output=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 5
    assert "stdin: ''" in out
    assert "id: 0 fd:" in out
    assert "unbuffered: 1 lang: C.UTF-8" in out
    assert "secret: None" in out
    assert "progress: [1/2] 第六竹石" in err


def test_run_like_worker_is_stopped_as_a_tree_by_ctrl_c(tmp_path: Path) -> None:
    import signal
    import subprocess

    runner = subprocess.Popen(
        [str(Path(PYTHON).with_name("batchjob")), "run", "--like-worker", "--",
         "sh", "-c", "echo started; sleep 300 & wait"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert runner.stdout is not None
    assert runner.stdout.readline() == b"started\n"
    stopper = threading.Timer(0.2, runner.send_signal, (signal.SIGINT,))
    stopper.start()
    assert runner.wait(timeout=30) == 128 + signal.SIGTERM


def test_a_job_stalled_in_recv_is_diagnosed_with_port_call_and_function(
    workers: Workers, queue: Queue
) -> None:
    import socket

    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    port = listener.getsockname()[1]
    try:
        job = queue.enqueue(
            [PYTHON, str(Path(__file__).parent / "jobs" / "inspect_recv.py"), str(port)],
            stall_timeout="3s",
        )
        workers.start()
        diagnosed = wait_until(lambda: (j := queue.get(job.id)).stalled_at and j, timeout=15)
        summary = diagnosed.diagnosis["summary"]
        assert f":{port}" in summary
        assert "recvfrom()" in summary or "recv" in summary
        assert "wait_for_reply" in summary
        assert diagnosed.stalled_at is not None
        shown = run_cli(
            "show", str(job.id), "--json",
            cwd=workers.directory, env={"BATCH_JOB_DATABASE_URL": workers.database_url},
        )  # fmt: skip
        assert json.loads(shown.stdout)["diagnosis"]["summary"] == summary
        queue.cancel(job.id)
        wait_until(lambda: queue.get(job.id).status.is_finished)
    finally:
        listener.close()


def test_run_like_worker_reads_the_units_limits_as_systemctl_prints_them() -> None:
    from batchjob.diagnosis.reproduce import unit_limits

    printed = "LimitNOFILE=4096\nLimitNOFILESoft=1024\nLimitCORE=infinity\nLimitCORESoft=0\n"
    properties = dict(line.split("=", 1) for line in printed.splitlines())
    import resource

    assert unit_limits(properties) == {
        "RLIMIT_NOFILE": (1024, 4096),
        "RLIMIT_CORE": (0, resource.RLIM_INFINITY),
    }
