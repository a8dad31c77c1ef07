"""Each hint rule, triggered by a real job with a real fault, run by a real burst worker.

The stored job must say what happened (`failure_reason`), show the job's last stderr lines
(`error_summary`) and carry a hint that names the cause with the job's own figures: the fd
peak and limit, the path refused, the interpreter, the locale, the RSS and memory_limit.
Faults that need privileges (mounts, setpriv, cgroups) are made by the test as root.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pymysql
import pytest

from batchjob.model import FailureReason, JobStatus
from batchjob.queue import Queue
from batchjob.store import Store
from conftest import Workers, tmpfs, wait_until
from test_worker import job_processes

PYTHON = sys.executable
JOBS = Path(__file__).parent / "jobs"
MARIADB = ("127.0.0.1", 3306)
FD_LIMIT = 256
NOBODY = 65534
OOM_CGROUP_LIMIT = 256 << 20
SIZE_UNITS = {"GiB": 1 << 30, "MiB": 1 << 20, "KiB": 1 << 10, "bytes": 1}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: these tests need no server, and so never touch the shared server databases
    (conftest names them by xdist worker, so a concurrent pytest run would share them)."""
    url = f"sqlite:///{tmp_path / 'batchjob.db'}"
    store = Store(url)
    store.upgrade_schema()
    store.close()
    return url


def unavailable(message: str) -> NoReturn:
    """Skip a test whose fault cannot be made on this host; under CI=true, fail it."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a job writing 4 MiB there fills it."""
    with tmpfs(tmp_path / "full", "size=1m") as mountpoint:
        yield mountpoint


def quoted_size(hint: str, before: str) -> tuple[float, float]:
    """The size a hint quotes after `before`, in bytes, and the rounding of its unit."""
    found = re.search(rf"{before} ([\d.]+) (GiB|MiB|KiB|bytes)", hint)
    assert found, f"no size after {before!r} in: {hint}"
    scale = SIZE_UNITS[found[2]]
    return float(found[1]) * scale, 0.05 * scale


def assert_quotes_peak(hint: str, before: str, peak_rss_bytes: int | None) -> None:
    quoted, rounding = quoted_size(hint, before)
    assert peak_rss_bytes, "the worker sampled no RSS"
    # + 1 byte: a peak of exactly x.x5 MiB is quoted rounded half-way, and float("208.8")
    # times 2**20 is a hair more than the exact product.
    assert abs(quoted - peak_rss_bytes) <= rounding + 1, (hint, peak_rss_bytes)


def test_a_successful_job_has_no_hint_and_an_unrelated_failure_gets_none(
    workers: Workers, queue: Queue
) -> None:
    done = queue.enqueue(["sh", "-c", "echo 'exported 12 rows'"])
    failing = queue.enqueue(["sh", "-c", "echo 'invoice 42 rejected by the ledger' >&2; exit 3"])
    assert workers.run_burst() == 0

    completed = queue.get(done.id)
    assert completed.status == JobStatus.COMPLETED
    assert (completed.failure_reason, completed.error_summary, completed.hint) == (None,) * 3

    failed = queue.get(failing.id)
    assert (failed.status, failed.failure_reason, failed.exit_code) == (
        JobStatus.FAILED,
        FailureReason.EXIT_CODE,
        3,
    )
    assert failed.error_summary == "invoice 42 rejected by the ledger"
    assert failed.hint is None


def test_too_many_open_files_gives_the_fd_peak_and_the_limit(
    workers: Workers, queue: Queue
) -> None:
    job = queue.enqueue([PYTHON, str(JOBS / "hint_open_files.py"), "1.5"])
    worker = workers.start(
        "--burst",
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT)),
    )
    assert worker.wait(timeout=60) == 0

    stored = queue.get(job.id)
    assert (stored.status, stored.failure_reason) == (JobStatus.FAILED, FailureReason.EXIT_CODE)
    summary = (stored.error_summary or "").splitlines()
    assert summary[-1] == "OSError: [Errno 24] Too many open files: '/dev/null'"
    assert summary[0] == "Traceback (most recent call last):"
    hint = stored.hint or ""
    peak = re.search(r"open files peaked at (\d+) of a limit of (\d+)", hint)
    assert peak, hint
    assert int(peak[2]) == FD_LIMIT
    assert FD_LIMIT - 8 <= int(peak[1]) <= FD_LIMIT
    assert int(peak[1]) == stored.peak_open_fds
    assert "LimitNOFILE=" in hint


def test_mariadb_connection_lost_points_at_wait_timeout(workers: Workers, queue: Queue) -> None:
    try:
        pymysql.connect(host=MARIADB[0], port=MARIADB[1], user="root", database="test").close()
    except pymysql.MySQLError as exc:
        unavailable(f"MariaDB is not reachable: {exc}")
    job = queue.enqueue([PYTHON, str(JOBS / "hint_mysql_idle.py"), MARIADB[0], str(MARIADB[1])])
    assert workers.run_burst() == 0

    stored = queue.get(job.id)
    assert (stored.status, stored.failure_reason) == (JobStatus.FAILED, FailureReason.EXIT_CODE)
    last = (stored.error_summary or "").splitlines()[-1]
    assert last.startswith("pymysql.err.OperationalError: (20"), last
    assert "MySQL server has gone away" in last or "Lost connection to MySQL server" in last
    hint = stored.hint or ""
    assert "wait_timeout" in hint
    assert "pool_pre_ping=True" in hint
    ran = re.search(r"the job had run (\d+)s when it failed", hint)
    assert ran, hint
    assert int(ran[1]) >= 3, "the job's own idle time: it slept 3 s before the query"


def test_read_only_file_system_names_the_path_and_readwritepaths(
    workers: Workers, queue: Queue, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "read-only", "ro,size=1m") as read_only:
        target = read_only / "report.csv"
        job = queue.enqueue([PYTHON, str(JOBS / "hint_write_file.py"), str(target), "1"])
        assert workers.run_burst() == 0

    stored = queue.get(job.id)
    assert (stored.status, stored.failure_reason) == (JobStatus.FAILED, FailureReason.EXIT_CODE)
    assert (stored.error_summary or "").splitlines()[-1] == (
        f"OSError: [Errno 30] Read-only file system: '{target}'"
    )
    hint = stored.hint or ""
    assert f"read-only path ({target})" in hint
    assert "ProtectSystem=strict" in hint
    assert "ReadWritePaths=" in hint


def test_permission_denied_under_a_home_directory_points_at_protecthome(
    workers: Workers, queue: Queue
) -> None:
    # As root nothing is denied: the job drops to nobody itself, and /root must be closed to it.
    # /usr/bin/python3, not the venv's: the venv's interpreter lives under /root/.pyenv, which
    # nobody cannot read (it starts, but without its own standard library).
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        unavailable("needs root and setpriv to run the job as nobody")
    if stat.S_IMODE(os.stat("/root").st_mode) & 0o007:
        unavailable("/root is open to other users here")
    refused = "/root/batchjob-hint-test"
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    job = queue.enqueue([*as_nobody, "/usr/bin/python3", "-c", f"open({refused!r}, 'w')"], cwd="/")
    assert workers.run_burst() == 0

    stored = queue.get(job.id)
    assert (stored.status, stored.failure_reason) == (JobStatus.FAILED, FailureReason.EXIT_CODE)
    assert (stored.error_summary or "").splitlines()[-1] == (
        f"PermissionError: [Errno 13] Permission denied: '{refused}'"
    )
    hint = stored.hint or ""
    assert f"refused a path under a home directory ({refused})" in hint
    assert "ProtectHome=" in hint
    assert not Path(refused).exists()


def test_no_space_left_says_the_file_system_is_full(
    workers: Workers, queue: Queue, full_disk: Path
) -> None:
    target = full_disk / "export.csv"
    job = queue.enqueue([PYTHON, str(JOBS / "hint_write_file.py"), str(target), "4"])
    assert workers.run_burst() == 0

    stored = queue.get(job.id)
    assert (stored.status, stored.failure_reason) == (JobStatus.FAILED, FailureReason.EXIT_CODE)
    # A failed write() names no file: Python raises ENOSPC without a filename.
    assert (stored.error_summary or "").splitlines()[-1] == (
        "OSError: [Errno 28] No space left on device"
    )
    hint = stored.hint or ""
    assert "a file system the job writes to is full" in hint
    assert "`df -h`" in hint
    assert "`df -i`" in hint


def test_no_space_left_while_copying_names_the_full_destination(
    workers: Workers, queue: Queue, full_disk: Path, tmp_path: Path
) -> None:
    source = tmp_path / "export.csv"
    source.write_bytes(b"\0" * (4 << 20))
    destination = full_disk / "published.csv"
    job = queue.enqueue([PYTHON, str(JOBS / "hint_copy_file.py"), str(source), str(destination)])
    assert workers.run_burst() == 0

    stored = queue.get(job.id)
    assert (stored.status, stored.failure_reason) == (JobStatus.FAILED, FailureReason.EXIT_CODE)
    assert (stored.error_summary or "").splitlines()[-1] == (
        f"OSError: [Errno 28] No space left on device: '{source}' -> '{destination}'"
    )
    hint = stored.hint or ""
    assert "a file system the job writes to is full" in hint
    # The full file system is the destination's; the source sits on a healthy one.
    assert f"({destination})" in hint, hint


def test_module_not_found_names_the_interpreter_the_job_used(
    workers: Workers, queue: Queue
) -> None:
    missing = queue.enqueue([PYTHON, "-c", "import no_such_module_for_batchjob"])
    # Works by hand in the virtualenv; the task's PATH finds the system's python3 instead.
    system_python = queue.enqueue(
        ["python3", "-c", "import sqlalchemy"], env={"PATH": "/usr/bin:/bin"}
    )
    assert workers.run_burst() == 0

    stored = queue.get(missing.id)
    assert (stored.status, stored.failure_reason) == (JobStatus.FAILED, FailureReason.EXIT_CODE)
    assert (stored.error_summary or "").splitlines()[-1] == (
        "ModuleNotFoundError: No module named 'no_such_module_for_batchjob'"
    )
    hint = stored.hint or ""
    assert f"the job's Python ({PYTHON}) cannot import no_such_module_for_batchjob" in hint

    by_path = queue.get(system_python.id)
    assert (by_path.error_summary or "").splitlines()[-1] == (
        "ModuleNotFoundError: No module named 'sqlalchemy'"
    )
    assert "the job's Python (/usr/bin/python3) cannot import sqlalchemy" in (by_path.hint or "")


def test_module_not_found_in_a_shell_command_does_not_name_the_shell_as_interpreter(
    workers: Workers, queue: Queue
) -> None:
    # Tasks are often shell lines ("cd /srv/app && python3 sync.py"): Python is not argv[0].
    job = queue.enqueue(
        ["sh", "-c", "python3 -c 'import sqlalchemy'"], env={"PATH": "/usr/bin:/bin"}
    )
    assert workers.run_burst() == 0

    stored = queue.get(job.id)
    assert (stored.error_summary or "").splitlines()[-1] == (
        "ModuleNotFoundError: No module named 'sqlalchemy'"
    )
    hint = stored.hint or ""
    assert "cannot import sqlalchemy" in hint
    assert "the job's Python (/usr/bin/sh)" not in hint, hint


def test_unicode_encode_error_quotes_the_jobs_locale(workers: Workers, queue: Queue) -> None:
    job = queue.enqueue([PYTHON, str(JOBS / "hint_latin1_export.py"), "第六竹石"])
    assert workers.run_burst() == 0

    stored = queue.get(job.id)
    assert (stored.status, stored.failure_reason) == (JobStatus.FAILED, FailureReason.EXIT_CODE)
    assert (
        (stored.error_summary or "")
        .splitlines()[-1]
        .startswith("UnicodeEncodeError: 'latin-1' codec can't encode characters")
    )
    hint = stored.hint or ""
    assert "text could not be encoded" in hint
    assert "LANG=C.UTF-8" in hint
    assert "PYTHONIOENCODING=utf-8" in hint
    assert "PYTHONUTF8=1" in hint


def test_sigkill_from_outside_is_told_apart_from_batchjobs_own_stops(
    workers: Workers, queue: Queue
) -> None:
    # It speaks after 1.5 s: by then the worker has sampled its tree (at 0.2 s, then each 1 s).
    job = queue.enqueue(["sh", "-c", "sleep 1.5; echo 'syncing batch 3 of 9' >&2; exec sleep 300"])
    worker = workers.start("--burst")
    running = wait_until(
        lambda: (
            (j := queue.get(job.id)).log_path
            and "syncing batch 3 of 9" in Path(j.log_path).read_text(encoding="utf-8")
            and j
        )
    )
    os.kill(running.pid, signal.SIGKILL)
    assert worker.wait(timeout=60) == 0

    stored = queue.get(job.id)
    assert (stored.status, stored.failure_reason, stored.signal) == (
        JobStatus.FAILED,
        FailureReason.SIGNAL,
        signal.SIGKILL,
    )
    assert stored.error_summary == (
        "killed by SIGKILL, not sent by batchjob; last stderr:\nsyncing batch 3 of 9"
    )
    hint = stored.hint or ""
    assert "SIGKILL came from outside batchjob and the kernel logged no OOM kill" in hint
    assert_quotes_peak(hint, "peak RSS was", stored.peak_rss_bytes)


def test_memory_limit_stops_the_tree_and_gives_the_peak_and_the_limit(
    workers: Workers, queue: Queue
) -> None:
    job = queue.enqueue([PYTHON, str(JOBS / "hold_memory.py"), "200", "3"], memory_limit="64MiB")
    worker = workers.start("--burst")
    assert worker.wait(timeout=60) == 0

    stored = queue.get(job.id)
    assert (stored.status, stored.failure_reason) == (JobStatus.FAILED, FailureReason.MEMORY_LIMIT)
    assert job_processes(job.id, worker) == []
    assert (stored.peak_rss_bytes or 0) > 64 << 20
    assert stored.error_summary == (
        f"its processes' RSS reached {stored.peak_rss_bytes} bytes, over the memory_limit of "
        f"{64 << 20}; its process tree was terminated"
    )
    hint = stored.hint or ""
    assert_quotes_peak(hint, "the job's processes reached", stored.peak_rss_bytes)
    assert "over its memory_limit of 64.0 MiB" in hint
    log = Path(stored.log_path or "").read_text(encoding="utf-8")
    assert re.search(
        rf"\[batchjob: the job's processes use \d+ bytes of RSS, over its memory_limit of "
        rf"{64 << 20}: stopping it\]",
        log,
    ), log
    assert "[batchjob: stopping the job (memory_limit): SIGTERM to its processes]" in log


def own_memory_cgroup() -> Path | None:
    """This process's cgroup v1 memory directory, if there is one."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    return None


@pytest.fixture
def memory_cgroup(workers: Workers) -> Iterator[Path]:
    """A child memory cgroup capped at OOM_CGROUP_LIMIT; removed once its processes are gone."""
    parent = own_memory_cgroup()
    if parent is None or not (parent / "memory.limit_in_bytes").exists():
        unavailable("no cgroup v1 memory controller to make a real OOM kill in")
    cgroup = parent / f"batchjob-hints-{os.getpid()}-{time.monotonic_ns()}"
    try:
        cgroup.mkdir()
        (cgroup / "memory.limit_in_bytes").write_text(str(OOM_CGROUP_LIMIT))
    except OSError as exc:
        unavailable(f"cannot make a memory cgroup under {parent}: {exc}")
    try:
        yield cgroup
    finally:
        workers.stop_all()
        for pid in (cgroup / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)  # this test's own leftovers, if it failed
        wait_until(lambda: not (cgroup / "cgroup.procs").read_text().strip(), timeout=10)
        cgroup.rmdir()


def joining(cgroup: Path) -> Callable[[], None]:
    """A preexec_fn that moves the new process into `cgroup` (plain system calls only)."""
    procs = str(cgroup / "cgroup.procs")

    def join() -> None:
        descriptor = os.open(procs, os.O_WRONLY)
        os.write(descriptor, str(os.getpid()).encode())
        os.close(descriptor)

    return join


def test_oom_kill_by_the_kernel_is_named_with_its_evidence(
    workers: Workers, queue: Queue, memory_cgroup: Path
) -> None:
    # It grows 8 MiB each 0.05 s, so the worker samples it before the cgroup's limit is hit.
    job = queue.enqueue([PYTHON, str(JOBS / "hint_grow_memory.py"), "600", "8", "0.05"])
    worker = workers.start("--burst", preexec_fn=joining(memory_cgroup))
    assert worker.wait(timeout=60) == 0

    stored = queue.get(job.id)
    assert (stored.status, stored.failure_reason, stored.signal) == (
        JobStatus.FAILED,
        FailureReason.OOM_KILLED,
        signal.SIGKILL,
    )
    summary = stored.error_summary or ""
    assert summary.startswith("killed by the kernel's OOM killer (kernel log: ")
    assert f"Killed process {stored.pid} " in summary
    hint = stored.hint or ""
    assert "the kernel's OOM killer ended the job" in hint
    assert f"Killed process {stored.pid} " in hint
    assert "MemoryMax=" in hint
    assert_quotes_peak(hint, "at a peak RSS of", stored.peak_rss_bytes)
    assert (stored.peak_rss_bytes or 0) < OOM_CGROUP_LIMIT


def test_an_oom_kill_is_named_by_the_cgroup_counter_where_the_kernel_log_is_closed(
    workers: Workers, queue: Queue, memory_cgroup: Path, tmp_path: Path
) -> None:
    """A worker that may not read the kernel log (not root, kernel.dmesg_restrict=1): the
    memory cgroup's OOM-kill counter, read as the job started and after it ended, names it."""
    closed = tmp_path / "bin"
    closed.mkdir()
    dmesg = closed / "dmesg"
    dmesg.write_text(
        "#!/bin/sh\necho 'dmesg: read kernel buffer failed: Operation not permitted' >&2\nexit 1\n"
    )
    dmesg.chmod(0o755)
    job = queue.enqueue([PYTHON, str(JOBS / "hold_memory.py"), "600", "10"])
    worker = workers.start("--burst", preexec_fn=joining(memory_cgroup), path_first=closed)
    assert worker.wait(timeout=60) == 0

    stored = queue.get(job.id)
    assert (stored.status, stored.failure_reason, stored.signal) == (
        JobStatus.FAILED,
        FailureReason.OOM_KILLED,
        signal.SIGKILL,
    )
    assert stored.error_summary == (
        "killed by the kernel's OOM killer (the memory cgroup counted 1 OOM kill(s) meanwhile)"
    )


def test_an_oom_kill_before_the_first_sample_claims_no_peak_of_zero(
    workers: Workers, queue: Queue, memory_cgroup: Path
) -> None:
    # 600 MiB at once: the kernel kills the job within ~0.1 s, before the first sample (0.2 s).
    job = queue.enqueue([PYTHON, str(JOBS / "hold_memory.py"), "600", "10"])
    worker = workers.start("--burst", preexec_fn=joining(memory_cgroup))
    assert worker.wait(timeout=60) == 0

    stored = queue.get(job.id)
    assert stored.failure_reason == FailureReason.OOM_KILLED
    hint = stored.hint or ""
    assert f"Killed process {stored.pid} " in hint
    # The kernel's line gives the RSS it killed at (anon-rss:…kB); "0 bytes" contradicts it.
    assert "peak RSS of 0 bytes" not in hint, hint
