"""The runner against real child programs (tests/jobs/): output, environment, progress, the tree.

Children get a minimal base environment, as systemd would give the worker — never os.environ,
whose PYTHONUNBUFFERED/LANG would hide what the runner must set itself. Every run has a
timeout as a guard, so a runner that fails to end a job shows up as a failed assertion, not
a hung test session.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import os
import pwd
import re
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest

from batchjob.runner import JobSpec, RunControl, RunResult, StopReason, run, watch
from batchjob.runner.scratch import PrivateTmp
from batchjob.runner.spawn import SpawnRequest
from conftest import tmpfs

JOBS = Path(__file__).parent / "jobs"
PYTHON = sys.executable
BASE_ENV = {"PATH": "/usr/bin:/bin"}
GUARD_TIMEOUT = 60.0
RECORD = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (out|err|bjq)([ +~]) \| ")
TAGS = {b"out": "stdout", b"err": "stderr", b"bjq": "batchjob"}
MiB = 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def subreaper() -> None:
    """The worker is a child subreaper; so is this pytest process, for the whole module."""
    assert watch.become_subreaper(), "PR_SET_CHILD_SUBREAPER refused"


def job(name: str, *args: object) -> list[str]:
    return [PYTHON, str(JOBS / name), *map(str, args)]


def run_job(
    tmp_path: Path,
    command: list[str],
    *,
    job_id: int = 1,
    env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] = BASE_ENV,
    cwd: str | None = None,
    max_log_bytes: int = 64 * MiB,
    timeout: float | None = GUARD_TIMEOUT,
    kill_grace: float = 1.0,
    drain_grace: float = 1.0,
    control: RunControl | None = None,
    log_path: Path | None = None,
    tmp: PrivateTmp | None = None,
) -> RunResult:
    spec = JobSpec(
        spawn=SpawnRequest(job_id, 1, "default", command, env or {}, cwd, base_env),
        log_path=str(log_path or tmp_path / f"job-{job_id}.log"),
        max_log_bytes=max_log_bytes,
        timeout=timeout,
        kill_grace=kill_grace,
        drain_grace=drain_grace,
        tmp=tmp,
    )
    return run(spec, control or RunControl())


def parse_log(data: bytes) -> dict[str, bytes]:
    """The exact bytes of each stream, read back from the log's records.

    A record's trailing newline belongs to the data unless the next record of the same stream
    carries the `+` mark (a continued line) or the `~` mark (the stream ended without a
    newline; that record holds no bytes). Fails on any line that is not a record.
    """
    streams: dict[str, bytearray] = {}
    open_record: dict[str, bool] = {}
    lines = data.split(b"\n")
    assert lines[-1] == b"", "the log does not end with a record's newline"
    for number, line in enumerate(lines[:-1], start=1):
        match = RECORD.match(line)
        assert match, f"log line {number} is not a record: {line[:120]!r}"
        stream, mark = TAGS[match.group(2)], match.group(3)
        kept = streams.setdefault(stream, bytearray())
        if mark in (b"+", b"~"):
            assert open_record.get(stream), f"log line {number}: `{mark.decode()}` ends nothing"
        elif open_record.get(stream):
            kept += b"\n"
        kept += line[match.end() :]
        open_record[stream] = mark != b"~"
        if mark == b"~":
            assert not line[match.end() :], f"log line {number}: `~` carries bytes"
    for stream in streams:
        if open_record.get(stream):
            streams[stream] += b"\n"
    return {stream: bytes(kept) for stream, kept in streams.items()}


def read_streams(tmp_path: Path, job_id: int = 1) -> dict[str, bytes]:
    return parse_log((tmp_path / f"job-{job_id}.log").read_bytes())


def notes(streams: Mapping[str, bytes]) -> str:
    return streams.get("batchjob", b"").decode()


def gone(pid: int) -> bool:
    """The process has exited: no such pid, or a zombie waiting for its reaper."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def zombie_children() -> set[int]:
    return {
        child.pid for child in psutil.Process().children() if child.status() == psutil.STATUS_ZOMBIE
    }


def open_fd_count() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


# --- output: every byte kept, never blocked -------------------------------------------------


def test_fifty_megabytes_without_newlines_on_both_streams_are_kept_byte_for_byte(
    tmp_path: Path,
) -> None:
    digests = tmp_path / "digests.json"
    result = run_job(tmp_path, job("flood.py", 25 * MiB, digests), max_log_bytes=200 * MiB)

    assert (result.exit_code, result.stopped_by, result.log_error) == (0, None, None)
    streams = read_streams(tmp_path)
    written = json.loads(digests.read_text())
    assert len(streams["stdout"]) == len(streams["stderr"]) == 25 * MiB + 1
    assert hashlib.sha256(streams["stdout"]).hexdigest() == written["stdout"]
    assert hashlib.sha256(streams["stderr"]).hexdigest() == written["stderr"]
    assert "batchjob" not in streams


def test_invalid_utf8_and_japanese_on_both_streams_are_kept_byte_for_byte(
    tmp_path: Path,
) -> None:
    japanese = "処理中: 第六竹石".encode()
    writes = [
        (1, japanese + b" \xff\xfe invalid \xc3\x28 \xa0\xa1 lone\n"),
        (2, b"err \xed\xa0\x80 surrogate, \x00 nul, \r carriage\r\n" + japanese),
        (1, japanese[:2]),  # a character split across two writes
        (1, japanese[2:] + b"\n\n\xe3\x81"),  # blank line, then a truncated character
        (2, b"\n\x80\x81\x82" + japanese + b"\n"),
        (1, b"\n"),
    ]
    command = job("write_bytes.py", *(f"{fd}:{data.hex()}" for fd, data in writes))
    result = run_job(tmp_path, command)

    assert result.exit_code == 0
    streams = read_streams(tmp_path)
    assert streams["stdout"] == b"".join(data for fd, data in writes if fd == 1)
    assert streams["stderr"] == b"".join(data for fd, data in writes if fd == 2)


def test_a_stream_that_ends_without_a_newline_reads_back_without_one(tmp_path: Path) -> None:
    command = job("write_bytes.py", f"1:{b'50% done'.hex()}", f"2:{'第六竹石'.encode().hex()}")
    result = run_job(tmp_path, command)

    assert result.exit_code == 0
    streams = read_streams(tmp_path)
    assert streams["stdout"] == b"50% done"
    assert streams["stderr"] == "第六竹石".encode()


def test_a_jobs_stdout_and_stderr_hold_a_quarter_mebibyte_before_it_waits(tmp_path: Path) -> None:
    """Not the kernel's 64 KiB: with those a job writing fast and the worker took turns."""
    sizes = "import fcntl; print(*(fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) for fd in (1, 2)))"
    result = run_job(tmp_path, [PYTHON, "-c", sizes])

    assert result.exit_code == 0
    assert read_streams(tmp_path)["stdout"] == b"262144 262144\n"


def test_stdin_is_at_end_of_file_at_once(tmp_path: Path) -> None:
    """Whatever the worker's own stdin holds, the job reads nothing."""
    read, write = os.pipe()
    os.write(write, b"the worker's stdin")
    os.close(write)
    saved = os.dup(0)
    os.dup2(read, 0)
    os.close(read)
    try:
        result = run_job(tmp_path, job("read_stdin.py"))
    finally:
        os.dup2(saved, 0)
        os.close(saved)

    assert result.exit_code == 0
    assert read_streams(tmp_path)["stdout"] == b"stdin: ''\n"


# --- the log's cap and a full disk ----------------------------------------------------------

LINE_COUNT = 450_000  # 14 bytes a line: about 6 MB of output
LAST_BURST = 4_000  # the last lines come in one write of 56 KB
CAP = 256 * 1024


def run_capped(tmp_path: Path) -> bytes:
    result = run_job(tmp_path, job("numbered.py", LINE_COUNT, LAST_BURST), max_log_bytes=CAP)
    assert (result.exit_code, result.log_error) == (0, None)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["job-1.log"], "a .tail remains"
    return (tmp_path / "job-1.log").read_bytes()


def test_a_capped_log_keeps_the_first_lines_a_marker_and_the_last_lines(tmp_path: Path) -> None:
    log = run_capped(tmp_path)

    assert len(log) <= CAP + 4096
    records = log.split(b"\n")
    assert records[0].endswith(b" out  | line 00000000"), f"first record: {records[0][:120]!r}"
    markers = [record for record in records if b"bytes of log left out here" in record]
    assert len(markers) == 1
    assert records.index(markers[0]) > 0, "nothing of the head was kept before the marker"
    assert records[-2].endswith(b" out  | line %08d" % (LINE_COUNT - 1))


def test_a_capped_log_keeps_an_unbroken_tail(tmp_path: Path) -> None:
    """After the marker the numbered lines follow one another up to the last: no silent gap."""
    log = run_capped(tmp_path)

    records = log.split(b"bytes of log left out here", 1)[1].split(b"\n")[1:]
    # The tail may begin inside a record, or with the continuation of a line left out.
    while not (first := RECORD.match(records[0])) or first.group(3) == b"+":
        records.pop(0)
    cut = [
        f"{records[number - 1][-30:]!r} is followed by {record[:40]!r}"
        for number, record in enumerate(records[:-1])
        if not RECORD.match(record)
    ]
    assert cut == [], f"records cut in the middle of the tail: {cut}"
    stdout = parse_log(b"\n".join(records))["stdout"]
    numbers = [int(number) for number in re.findall(rb"^line (\d{8})$", stdout, re.MULTILINE)]
    gaps = [(before, after) for before, after in itertools.pairwise(numbers) if after != before + 1]
    assert numbers[-1] == LINE_COUNT - 1
    assert gaps == [], f"lines missing from the tail without a marker: {gaps}"


def test_a_capped_logs_kept_tail_is_joined_a_piece_at_a_time(tmp_path: Path) -> None:
    """Each tail segment may be a quarter of max_log_bytes: read whole, as it once was, the
    worker's memory grew with the cap (a 1 GiB job under a 2 GiB cap: 373 MiB)."""
    tracemalloc.start()
    try:
        result = run_job(tmp_path, job("numbered.py", 3_000_000), max_log_bytes=64 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (result.exit_code, result.log_error) == (0, None)
    assert b"bytes of log left out here" in (tmp_path / "job-1.log").read_bytes()
    assert peak < 8 * MiB


def test_the_next_attempt_removes_the_tail_segments_of_one_cut_off(tmp_path: Path) -> None:
    """A worker killed while a capped attempt kept its tail leaves the segments beside the
    log; the job's next attempt, appending to the same log, removes them."""
    log = tmp_path / "job-1.log"
    log.write_bytes(b"2026-12-01T00:00:00.000Z out  | the cut-off attempt's head\n")
    for name in ("job-1.log.tail0", "job-1.log.tail1"):
        (tmp_path / name).write_bytes(b"2026-12-01T00:00:01.000Z out  | its kept tail\n")

    result = run_job(tmp_path, ["/bin/echo", "the next attempt"])

    assert result.exit_code == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["job-1.log"]
    assert log.read_bytes().startswith(b"2026-12-01T00:00:00.000Z out  | the cut-off")


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: the log disk fills up while the job writes."""
    with tmpfs(tmp_path / "full", "size=1m") as mountpoint:
        yield mountpoint


def test_a_full_log_disk_truncates_the_log_with_a_marker_and_the_job_goes_on(
    tmp_path: Path, full_disk: Path
) -> None:
    log_path = full_disk / "job.log"
    result = run_job(tmp_path, job("flood.py", 5 * MiB), log_path=log_path)

    assert (result.exit_code, result.stopped_by) == (0, None)
    assert result.log_error is not None
    assert "no space" in result.log_error.lower()
    last_record = log_path.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    assert b" bjq  | [batchjob: log truncated here: No space left on device" in last_record


# --- the process tree: leftovers, timeout, cancel -------------------------------------------


def test_a_double_forked_daemon_holding_stdout_is_reported_and_ended_after_drain_grace(
    tmp_path: Path,
) -> None:
    drain_grace = 1.0
    started = time.monotonic()
    result = run_job(tmp_path, job("double_fork.py"), job_id=3, drain_grace=drain_grace)
    elapsed = time.monotonic() - started

    assert result.exit_code == 0
    assert elapsed < drain_grace + 5.0, f"run() took {elapsed:.1f}s after a 1s drain grace"
    stdout = read_streams(tmp_path, 3)["stdout"].decode()
    reported = re.search(r"daemon (\d+)", stdout)
    assert reported, stdout
    daemon = int(reported.group(1))
    assert [entry for entry in result.leftovers if entry.startswith(f"pid {daemon} (")]
    assert "double_fork.py" in " ".join(result.leftovers)
    assert gone(daemon)
    watch.reap_adopted()


def test_spawns_run_side_by_side_and_the_orphan_reaper_runs_alone() -> None:
    """The reaper must not collect a job's exit status before its spawn registered it; slots
    need not wait for each other's spawns; a waiting reaper holds new spawns back."""
    gate = watch.SpawnGate()
    order: list[str] = []
    first_in, release_first = threading.Event(), threading.Event()

    def first_spawn() -> None:
        with gate.spawning():
            first_in.set()
            release_first.wait(GUARD_TIMEOUT)
            order.append("first spawn")

    def entering(name: str, enter: Any) -> threading.Thread:
        def body() -> None:
            with enter():
                order.append(name)

        thread = threading.Thread(target=body)
        thread.start()
        return thread

    first = threading.Thread(target=first_spawn)
    first.start()
    assert first_in.wait(GUARD_TIMEOUT)
    beside = entering("spawn beside it", gate.spawning)
    beside.join(GUARD_TIMEOUT)
    assert not beside.is_alive() and order == ["spawn beside it"]
    reaper = entering("reaper", gate.reaping)
    time.sleep(0.5)  # the reaper waits now; a spawn started after it must wait behind it
    later = entering("later spawn", gate.spawning)
    time.sleep(0.5)
    assert order == ["spawn beside it"], "the reaper waits for the first spawn, the later for it"
    release_first.set()
    for thread in (first, reaper, later):
        thread.join(GUARD_TIMEOUT)
    assert order == ["spawn beside it", "first spawn", "reaper", "later spawn"]


def test_a_job_ignoring_sigterm_is_killed_after_kill_grace_on_timeout(tmp_path: Path) -> None:
    result = run_job(tmp_path, job("ignore_term.py"), job_id=4, timeout=1.0, kill_grace=1.0)

    assert result.stopped_by == StopReason.TIMEOUT
    assert (result.exit_code, result.signal) == (None, signal.SIGKILL)
    streams = read_streams(tmp_path, 4)
    assert streams["stdout"] == b"ignoring SIGTERM\n"
    said = notes(streams)
    assert "stopping the job (timeout): SIGTERM" in said
    assert "outlived SIGTERM by 1s: SIGKILL" in said


def test_a_cancel_from_another_thread_ends_the_whole_tree(tmp_path: Path) -> None:
    started = threading.Event()
    main_pid: list[int] = []
    tree: list[int] = []

    def on_started(pid: int) -> None:
        main_pid.append(pid)
        started.set()

    control = RunControl(on_started=on_started)

    def cancel_once_the_grandchild_runs() -> None:
        assert started.wait(GUARD_TIMEOUT)
        deadline = time.monotonic() + GUARD_TIMEOUT
        while time.monotonic() < deadline:
            descendants = psutil.Process(main_pid[0]).children(recursive=True)
            if any(process.name() == "sleep" for process in descendants):
                tree.extend([main_pid[0], *(process.pid for process in descendants)])
                break
            time.sleep(0.02)
        control.request_stop(StopReason.CANCELLED)

    canceller = threading.Thread(target=cancel_once_the_grandchild_runs)
    canceller.start()
    result = run_job(tmp_path, job("tree.py"), job_id=5, control=control)
    canceller.join()

    assert result.pid == main_pid[0]
    assert len(tree) == 3, "python -> sh -> sleep did not start"
    assert result.stopped_by == StopReason.CANCELLED
    assert result.signal == signal.SIGTERM
    assert [pid for pid in tree if not gone(pid)] == []
    said = notes(read_streams(tmp_path, 5))
    assert "stopping the job (cancelled): SIGTERM" in said
    # SIGTERM reached the whole tree at once, not only after the drain grace as leftovers.
    assert "kept the output pipes open" not in said
    watch.reap_adopted()


# --- environment ----------------------------------------------------------------------------

WORKER_SECRETS = {
    "BATCH_JOB_DATABASE_URL": "postgresql://batchjob:s3cret@db/batchjob",
    "BATCH_JOB_CONFIG": "/etc/batchjob/batchjob.toml",
    "BATCH_JOB_LOG_DIR": "/var/log/batchjob",
    "BATCH_JOB_WEB_TOKEN": "t0ken",
}


def test_the_child_sees_a_hermetic_environment_and_a_private_tmpdir(tmp_path: Path) -> None:
    tmp_root = tmp_path / "tmp"
    tmp_root.mkdir()
    base_env = {**BASE_ENV, **WORKER_SECRETS, "SHARED": "from the worker", "CHOSEN": "base"}
    result = run_job(
        tmp_path,
        job("env_dump.py"),
        job_id=6,
        base_env=base_env,
        env={"CHOSEN": "job", "JOB_ONLY": "第六竹石"},
        tmp=(tmp := PrivateTmp(root=tmp_root)),
    )

    assert result.exit_code == 0
    seen = json.loads(read_streams(tmp_path, 6)["stdout"])
    environ = seen["environ"]
    assert environ == result.env
    expected = {
        "BATCH_JOB_ID": "6",
        "BATCH_JOB_ATTEMPT": "1",
        "BATCH_JOB_QUEUE": "default",
        "PYTHONUNBUFFERED": "1",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONUTF8": "1",
        "PYTHONFAULTHANDLER": "1",
        "LANG": "C.UTF-8",
        "HOME": pwd.getpwuid(os.getuid()).pw_dir,
        "PATH": "/usr/bin:/bin",
        "SHARED": "from the worker",
        "CHOSEN": "job",
        "JOB_ONLY": "第六竹石",
    }
    assert {name: environ.get(name) for name in expected} == expected
    assert environ["BATCH_JOB_PROGRESS_FD"].isdigit() and seen["progress_fd_is_pipe"]
    assert not set(WORKER_SECRETS) & set(environ)
    tmpdir = Path(environ["TMPDIR"])
    assert seen["tmpdir_is_dir"] and tmpdir == tmp.path and tmpdir.parent == tmp_root
    tmp.remove()
    assert list(tmp_root.iterdir()) == []


def test_each_job_of_a_slot_finds_its_tmpdir_empty_whatever_the_last_one_left(
    tmp_path: Path,
) -> None:
    tmp_root, elsewhere = tmp_path / "tmp", tmp_path / "elsewhere"
    tmp_root.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("not the job's")
    tmp = PrivateTmp(root=tmp_root)
    leave_a_mess = (
        'cd "$TMPDIR" && echo 第六竹石 > file && mkdir -p deep/er && touch deep/er/x '
        "&& ln -s / link && mkfifo fifo && chmod 500 deep"
    )
    replace_it = f'rm -rf "$TMPDIR" && ln -s {elsewhere} "$TMPDIR"'
    list_it = 'ls -A "$TMPDIR"; echo "$TMPDIR"'
    listed = {}
    for job_id, script in enumerate((leave_a_mess, list_it, replace_it, list_it), start=1):
        given = tmp.path
        result = run_job(tmp_path, ["/bin/sh", "-c", script], job_id=job_id, tmp=tmp)
        assert result.exit_code == 0, read_streams(tmp_path, job_id)
        listed[job_id] = (given, read_streams(tmp_path, job_id).get("stdout", b"").decode().split())

    first, second = listed[2], listed[4]
    assert first[1] == [str(first[0])], "the second job: the same directory, empty"
    assert second[1] == [str(second[0])] and second[0] != first[0], "replaced: a new one"
    assert [path.name for path in elsewhere.iterdir()] == ["keep"], "a link is not followed"
    assert [path for path in tmp_root.iterdir()] == [tmp.path]
    tmp.remove()
    assert list(tmp_root.iterdir()) == []


def test_a_locale_and_home_from_the_worker_are_kept(tmp_path: Path) -> None:
    base_env = {**BASE_ENV, "LANG": "ja_JP.UTF-8", "HOME": "/srv/jobs"}
    result = run_job(tmp_path, ["/usr/bin/env", "-0"], base_env=base_env)

    assert result.exit_code == 0
    pairs = read_streams(tmp_path)["stdout"].split(b"\0")
    environ = dict(pair.decode().split("=", 1) for pair in pairs if pair)
    assert environ == result.env
    assert (environ["LANG"], environ["HOME"]) == ("ja_JP.UTF-8", "/srv/jobs")
    assert "LC_ALL" not in environ


# --- progress -------------------------------------------------------------------------------


def test_progress_from_python_arrives_in_order_and_the_last_report_wins(
    tmp_path: Path,
) -> None:
    count = 300_000
    reports: list[tuple[str | None, int | None, int | None]] = []
    control = RunControl(on_progress=lambda *report: reports.append(report))
    result = run_job(tmp_path, job("progress_reports.py", count), control=control)

    assert result.exit_code == 0
    assert reports[0] == ("処理中: 第六竹石 1", 1, count)
    assert reports[-1] == (f"処理中: 第六竹石 {count}", count, count)
    currents = [current for _message, current, _total in reports]
    assert currents == sorted(set(currents)), "in order, none twice"
    assert all(message == f"処理中: 第六竹石 {n}" for message, n, _total in reports)
    # A line at most every 0.1 s (plus the last): the job pays for a write now and then,
    # not for each of its reports.
    assert len(reports) <= 2 + result.duration / 0.1
    assert notes(read_streams(tmp_path)) == ""


@pytest.mark.parametrize("count", [2, 1000])  # the first report held; one held as a timer runs
def test_a_report_held_back_arrives_though_the_job_reports_nothing_more(
    tmp_path: Path, count: int
) -> None:
    reports: list[tuple[str | None, int | None, int | None]] = []
    seen_while_running: list[tuple[str | None, int | None, int | None]] = []

    def on_progress(*report: Any) -> None:
        reports.append(report)

    control = RunControl(on_progress=on_progress)
    watcher = threading.Timer(2.0, lambda: seen_while_running.extend(reports[-1:]))
    watcher.start()
    result = run_job(tmp_path, job("progress_reports.py", count, 4), control=control)
    watcher.join()

    assert result.exit_code == 0
    expected = ("待機中", count - 1, count + 1)
    assert seen_while_running == [expected], "written by the timer, not at exit"


def test_progress_from_a_shell_script(tmp_path: Path) -> None:
    reports: list[tuple[str | None, int | None, int | None]] = []
    script = (
        """echo '{"message":"x","current":2,"total":5}' >&$BATCH_JOB_PROGRESS_FD && """
        """printf '{"message":"最後","current":5,"total":5}' >&$BATCH_JOB_PROGRESS_FD"""
    )
    # bash here: the test process may hold more than ten descriptors before the runner
    # reserves its progress number; dash (/bin/sh) under a real worker is tested in
    # test_worker.py, where the worker reserves a number below 10 at start-up.
    control = RunControl(on_progress=lambda *report: reports.append(report))
    result = run_job(tmp_path, ["/bin/bash", "-c", script], control=control)

    assert read_streams(tmp_path).get("stderr", b"") == b""
    assert result.exit_code == 0
    assert reports == [("x", 2, 5), ("最後", 5, 5)]


def test_malformed_progress_lines_are_ignored_with_a_note_and_the_job_goes_on(
    tmp_path: Path,
) -> None:
    reports: list[tuple[str | None, int | None, int | None]] = []
    control = RunControl(on_progress=lambda *report: reports.append(report))
    result = run_job(tmp_path, job("progress_garbage.py"), control=control)

    assert result.exit_code == 0
    assert reports == [("first", 1, 2), ("最後: 第六竹石", 2, 2)]
    streams = read_streams(tmp_path)
    assert streams["stdout"] == b"still running after bad progress lines\n"
    said = notes(streams)
    assert "ignored a progress line that is not valid: this is not json" in said
    assert "ignored a progress line that is not valid: [1, 2, 3]" in said
    ignored = re.search(r"ignored (\d+) malformed progress line\(s\)", said)
    assert ignored and int(ignored.group(1)) >= 5


def test_progress_run_by_hand_prints_a_plain_line_to_stderr() -> None:
    finished = subprocess.run(
        job("progress_by_hand.py"),
        env=BASE_ENV,
        capture_output=True,
        timeout=GUARD_TIMEOUT,
        check=False,
    )

    assert finished.returncode == 0
    assert finished.stdout == b""
    assert finished.stderr.decode() == "progress: [3/120] 処理中: 第六竹石\n"


# --- failures carry their evidence ----------------------------------------------------------


def test_an_uncaught_exception_leaves_its_traceback_in_the_stderr_tail(tmp_path: Path) -> None:
    result = run_job(tmp_path, job("raises.py"))

    assert (result.exit_code, result.signal, result.stopped_by) == (1, None, None)
    assert not result.succeeded
    tail = result.stderr_tail
    assert tail[-1] == "ValueError: 壊れた入力: 第六竹石"
    assert "Traceback (most recent call last):" in tail
    assert any("in parse" in line for line in tail)
    assert "warning 1: still going" not in tail


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing command", "No such file or directory"),
        ("not executable", "Permission denied"),
        ("missing cwd", "the working directory"),
    ],
)
def test_a_job_that_cannot_start_is_reported_in_the_result_and_its_log(
    tmp_path: Path, case: str, expected: str
) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    command, cwd = {
        "missing command": (["/nonexistent/batchjob-no-such-command"], None),
        "not executable": ([str(script)], None),
        "missing cwd": (["/bin/true"], str(tmp_path / "gone")),
    }[case]
    tmp_root = tmp_path / "tmp"
    tmp_root.mkdir()
    result = run_job(tmp_path, command, cwd=cwd, tmp=(tmp := PrivateTmp(root=tmp_root)))

    assert result.spawn_error is not None and expected in result.spawn_error
    assert (result.pid, result.exit_code, result.succeeded) == (None, None, False)
    assert f"[batchjob: cannot start the job: {result.spawn_error}]" in notes(
        read_streams(tmp_path)
    )
    assert list(tmp.path.iterdir()) == []


def test_a_job_whose_tmpdir_cannot_be_made_fails_to_start_and_says_why(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    missing = tmp_path / "no-such-tmp"
    tmp = PrivateTmp(root=missing)
    result = run_job(tmp_path, ["sh", "-c", f"touch {marker}"], tmp=tmp)
    expected = f"cannot make the job's TMPDIR in {missing}: No such file or directory"
    assert result.spawn_error == expected
    assert (result.pid, result.succeeded) == (None, False) and not marker.exists()
    assert result.spawn_error in notes(read_streams(tmp_path))


# --- resources ------------------------------------------------------------------------------


def test_many_quick_jobs_leave_no_zombies_and_no_open_descriptors(tmp_path: Path) -> None:
    watch.reap_adopted()
    zombies_before, fds_before = zombie_children(), open_fd_count()
    for job_id in range(1, 201):
        result = run_job(tmp_path, ["/bin/true"], job_id=job_id)
        assert result.exit_code == 0

    assert zombie_children() <= zombies_before
    assert open_fd_count() == fds_before


def test_the_peak_memory_of_the_tree_is_recorded(tmp_path: Path) -> None:
    result = run_job(tmp_path, job("hold_memory.py", 100, 2.0))

    assert result.exit_code == 0
    assert result.peak_rss_bytes >= 80 * MiB


def test_the_peak_open_files_of_the_tree_are_recorded(tmp_path: Path) -> None:
    result = run_job(tmp_path, job("hold_files.py", 200, 2.0))

    assert result.exit_code == 0
    assert result.peak_open_fds >= 200


def test_a_job_that_closes_its_output_and_runs_on_is_still_timed_out(tmp_path: Path) -> None:
    program = (
        "import os, time\n"
        "for fd in (1, 2, int(os.environ['BATCH_JOB_PROGRESS_FD'])): os.close(fd)\n"
        "time.sleep(30)\n"
    )
    result = run_job(tmp_path, [sys.executable, "-c", program], timeout=1.0)
    assert result.stopped_by == StopReason.TIMEOUT
    assert result.signal == signal.SIGTERM


def test_a_job_whose_lease_ran_out_before_it_started_is_not_started(tmp_path: Path) -> None:
    """A worker frozen between the claim and the start must not run the job when it thaws:
    another worker may be running it already."""
    marker = tmp_path / "ran"
    fenced: list[bool] = []
    control = RunControl()
    control.fence_at = time.monotonic() - 1
    control.on_fenced = lambda: fenced.append(True)
    result = run_job(tmp_path, ["sh", "-c", f"touch {marker}"], control=control)
    assert (result.pid, result.stopped_by) == (None, StopReason.LEASE_LOST)
    assert fenced == [True]
    assert not marker.exists()
    assert b"lease ran out before it could start" in (tmp_path / "job-1.log").read_bytes()


def test_a_job_stopped_before_it_started_is_not_started(tmp_path: Path) -> None:
    """A slot may claim its next job just as the worker stops: that job must not run."""
    marker = tmp_path / "ran"
    control = RunControl()
    control.request_stop(StopReason.SHUTDOWN)
    result = run_job(tmp_path, ["sh", "-c", f"touch {marker}"], control=control)
    assert (result.pid, result.stopped_by) == (None, StopReason.SHUTDOWN)
    assert not marker.exists()
    assert b"[batchjob: not started: shutdown]" in (tmp_path / "job-1.log").read_bytes()


def test_a_running_job_is_killed_when_its_lease_fence_passes(tmp_path: Path) -> None:
    control = RunControl()
    control.fence_at = time.monotonic() + 0.5
    result = run_job(tmp_path, ["sleep", "30"], control=control)
    assert (result.stopped_by, result.signal) == (StopReason.LEASE_LOST, signal.SIGKILL)
