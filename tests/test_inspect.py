"""The live look at a stalled tree, against real processes blocked in real system calls.

Each child is a real program (tests/jobs/inspect_*.py, or a shell pipeline) brought to the
wait under test; the test then asks `inspect_processes` what it sees. Every child is killed
with its whole process group when the test ends, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import batchjob
from batchjob.diagnosis.inspect import find_py_spy, inspect_processes
from batchjob.runner import watch

JOBS = Path(__file__).parent / "jobs"
RECV_FAMILY = {"recvfrom", "recvmsg", "recvmmsg", "read", "readv"}
SLEEP_FAMILY = {"clock_nanosleep", "nanosleep", "select", "pselect6"}
SETTLE_SECONDS = 10.0

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start a child in its own session and wait for its first line; kill the group after."""
    children: list[subprocess.Popen[bytes]] = []

    def start(*command: str | Path) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(
            [str(part) for part in command],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        children.append(child)
        assert child.stdout is not None
        assert child.stdout.readline(), "the child ended before it was ready"
        return child

    yield start
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()


def python_job(name: str, *args: object) -> list[str | Path]:
    return [sys.executable, JOBS / name, *map(str, args)]


def settled(pids: list[int], done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Inspect (without py-spy) until `done(result)`: the child may still be on its way in."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        result = inspect_processes(pids, python_stacks=False)
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def only(result: dict[str, Any]) -> dict[str, Any]:
    assert len(result["processes"]) == 1, result
    process: dict[str, Any] = result["processes"][0]
    return process


def in_call(names: set[str]) -> Callable[[dict[str, Any]], bool]:
    return lambda result: any(p["syscall"] in names for p in result["processes"])


needs_py_spy = pytest.mark.skipif(find_py_spy() is None, reason="py-spy is not installed")


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """A local TCP server that accepts and never answers: the remote end of a stalled call."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield listener
    listener.close()


@needs_py_spy
def test_a_child_waiting_for_a_tcp_reply_is_named_with_its_peer_and_python_frame(
    spawn: Spawn, silent_listener: socket.socket
) -> None:
    port = silent_listener.getsockname()[1]
    child = spawn(*python_job("inspect_recv.py", port))
    accepted, _ = silent_listener.accept()
    try:
        settled([child.pid], in_call(RECV_FAMILY))
        result = inspect_processes([child.pid])
    finally:
        accepted.close()

    process = only(result)
    assert process["syscall"] in RECV_FAMILY
    assert "TCP" in process["blocked_on"]
    assert f"127.0.0.1:{port}" in process["blocked_on"]
    remotes = [s["remote"] for s in process["sockets"] if s["kind"] == "tcp"]
    assert f"127.0.0.1:{port}" in remotes
    assert any("wait_for_reply" in frame for frame in process["python_stack"])
    assert result["py_spy"] == "used"
    summary = result["summary"]
    assert str(port) in summary
    assert f"{process['syscall']}()" in summary
    assert "wait_for_reply" in summary
    print(summary)


def test_a_sleeping_child_is_said_to_sleep(spawn: Spawn) -> None:
    child = spawn(*python_job("inspect_sleep.py", 300))

    process = only(settled([child.pid], in_call(SLEEP_FAMILY)))
    result = inspect_processes([child.pid], idle_seconds=125)

    assert process["state"] == "S (sleeping)"
    assert process["syscall"] in SLEEP_FAMILY
    assert result["summary"].startswith("sleeping 2m in ")


def test_a_busy_child_is_said_to_run(spawn: Spawn) -> None:
    child = spawn(*python_job("inspect_busy.py"))

    result = settled([child.pid], lambda r: only(r)["state"].startswith("R"))

    assert result["summary"].startswith("running (CPU)")
    assert "inspect_busy.py" in result["summary"]


def test_a_reader_at_the_end_of_a_pipeline_names_the_writer_that_holds_the_pipe(
    spawn: Spawn,
) -> None:
    shell = spawn("/bin/sh", "-c", "echo started; sleep 300 | cat")

    def tree() -> list[int]:
        return [shell.pid, *watch.descendants(shell.pid)]

    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        result = inspect_processes(tree(), python_stacks=False)
        by_name = {p["command"].split()[0]: p for p in result["processes"]}
        reading = by_name.get("cat", {}).get("syscall") == "read"
        if (reading and "sleep" in by_name) or time.monotonic() > deadline:
            break
        time.sleep(0.05)

    cat, sleeper = by_name["cat"], by_name["sleep"]
    assert cat["syscall"] == "read"
    assert cat["blocked_fd"] == 0
    assert cat["blocked_on"].startswith("pipe:[")
    assert "read end" in cat["blocked_on"]
    assert f"write end held by pid {sleeper['pid']} (sleep 300)" in cat["blocked_on"]
    sleeper_stdout = next(fd for fd in sleeper["fds"] if fd["fd"] == 1)["description"]
    assert sleeper_stdout.split()[0] == cat["blocked_on"].split()[0]
    assert result["summary"].startswith("blocked in read() on pipe:[")
    assert f"pid {cat['pid']} (cat)" in result["summary"]


@pytest.fixture
def mariadb() -> Iterator[Any]:
    """A connection to the test MariaDB, with the inspect_lock table; dropped afterwards."""
    pymysql = pytest.importorskip("pymysql")
    try:
        connection = pymysql.connect(host="127.0.0.1", port=3306, user="root", database="test")
    except pymysql.err.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"mariadb is not reachable: {exc}")
        pytest.skip(f"mariadb is not reachable: {exc}")
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS inspect_lock (id INT PRIMARY KEY)")
    connection.commit()
    yield connection
    connection.rollback()
    with connection.cursor() as cursor:
        cursor.execute("SET SESSION lock_wait_timeout = 10")
        cursor.execute("DROP TABLE IF EXISTS inspect_lock")
    connection.close()


@needs_py_spy
def test_a_child_waiting_for_a_row_lock_waits_on_its_mariadb_connection(
    mariadb: Any, spawn: Spawn
) -> None:
    """The child is killed before the fixture rolls back and drops the table."""
    row_id = os.getpid()
    with mariadb.cursor() as cursor:
        cursor.execute("INSERT IGNORE INTO inspect_lock (id) VALUES (%s)", (row_id,))
        mariadb.commit()
        mariadb.begin()
        cursor.execute("SELECT id FROM inspect_lock WHERE id = %s FOR UPDATE", (row_id,))
    child = spawn(*python_job("inspect_row_lock.py", row_id))

    settled([child.pid], in_call(RECV_FAMILY | {"poll", "ppoll"}))
    result = inspect_processes([child.pid], idle_seconds=4)

    process = only(result)
    assert process["syscall"] in RECV_FAMILY | {"poll", "ppoll"}
    assert "TCP" in process["blocked_on"]
    assert "127.0.0.1:3306 (ESTABLISHED)" in process["blocked_on"]
    assert any(s["remote"] == "127.0.0.1:3306" for s in process["sockets"])
    assert "127.0.0.1:3306" in result["summary"]
    assert "wait_for_row_lock" in result["summary"]
    print(result["summary"])


def test_without_py_spy_there_are_no_stacks_and_vanished_pids_are_left_out(
    spawn: Spawn,
) -> None:
    children = [spawn(*python_job("inspect_sleep.py", 300)) for _ in range(3)]
    gone = subprocess.Popen(["/bin/true"])
    gone.wait()

    result = inspect_processes([*(c.pid for c in children), gone.pid], python_stacks=False)

    assert result["py_spy"] == "skipped"
    assert [p["pid"] for p in result["processes"]] == [c.pid for c in children]
    assert all(p["python_stack"] is None for p in result["processes"])
    assert result["taken_at"].endswith("+00:00")


def test_nothing_alive_is_a_summary_not_an_error() -> None:
    gone = subprocess.Popen(["/bin/true"])
    gone.wait()

    result = inspect_processes([gone.pid])

    assert result["processes"] == []
    assert result["summary"] == "no live process to inspect"


def test_a_child_waiting_on_a_unix_socket_names_the_path_it_is_connected_to(
    spawn: Spawn, tmp_path: Path
) -> None:
    path = tmp_path / "server.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    try:
        child = spawn(*python_job("inspect_unix_recv.py", path))
        accepted, _ = listener.accept()
        try:
            process = only(settled([child.pid], in_call(RECV_FAMILY)))
        finally:
            accepted.close()
    finally:
        listener.close()

    assert process["blocked_on"] == f"UNIX → {path} (CONNECTED)"
    assert any(s["kind"] == "unix" and s["remote"] == str(path) for s in process["sockets"])


def test_a_main_thread_joining_a_blocked_worker_thread_is_explained_by_the_worker(
    spawn: Spawn, silent_listener: socket.socket
) -> None:
    port = silent_listener.getsockname()[1]
    child = spawn(*python_job("inspect_threads.py", port))
    accepted, _ = silent_listener.accept()

    def worker_blocked(result: dict[str, Any]) -> bool:
        threads = only(result)["thread_syscalls"]
        return any(t["syscall"] in RECV_FAMILY for t in threads)

    try:
        result = settled([child.pid], worker_blocked)
    finally:
        accepted.close()

    process = only(result)
    assert process["syscall"] == "futex"
    assert process["blocked_on"] is None
    assert f"127.0.0.1:{port}" in result["summary"]
    assert "[thread " in result["summary"]


def test_a_socket_with_a_timeout_is_seen_through_the_poll_it_waits_in(
    spawn: Spawn, silent_listener: socket.socket
) -> None:
    port = silent_listener.getsockname()[1]
    child = spawn(*python_job("inspect_recv.py", port, "--timeout", 300))
    accepted, _ = silent_listener.accept()
    try:
        process = only(settled([child.pid], in_call({"poll", "ppoll"})))
    finally:
        accepted.close()

    assert process["syscall"] in {"poll", "ppoll"}
    assert process["blocked_fd"] == [3]
    assert f"127.0.0.1:{port}" in process["blocked_on"]


def test_without_py_spy_installed_the_look_says_so_and_still_reads_proc(
    spawn: Spawn, tmp_path: Path
) -> None:
    """An interpreter with no py-spy beside it and a PATH without one: "not installed"."""
    bare_path = "/usr/bin:/bin"
    if shutil.which("py-spy", path=bare_path):
        pytest.skip("py-spy is installed system-wide")
    interpreter = tmp_path / "bin" / "python"
    interpreter.parent.mkdir()
    interpreter.symlink_to(sys.executable)
    import_path = os.pathsep.join([str(Path(batchjob.__file__).parents[1]), *sys.path[1:]])
    child = spawn(*python_job("inspect_sleep.py", 300))
    probe = (
        "import json; from batchjob.diagnosis.inspect import inspect_processes; "
        f"print(json.dumps(inspect_processes([{child.pid}])))"
    )

    done = subprocess.run(
        [interpreter, "-c", probe],
        env={"PATH": bare_path, "PYTHONPATH": import_path},
        capture_output=True,
        timeout=60,
        check=True,
    )

    result = json.loads(done.stdout)
    assert result["py_spy"] == "not installed"
    assert only(result)["python_stack"] is None
    assert only(result)["state"] == "S (sleeping)"
