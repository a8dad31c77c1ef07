"""The Python stack of each Python process in the tree, from `py-spy dump`.

py-spy is optional and may not be permitted (it needs ptrace rights over the job): its
absence, a refusal or a timeout is reported as the `py_spy` status, never raised. The dumps
run concurrently under one deadline; the frames are kept as py-spy prints them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_PY_SPY_THREAD = re.compile(r'^Thread (0x[0-9a-fA-F]+|\d+) \(([^)]*)\)(?:: "(.*)")?\s*$')
_PY_SPY_FRAME = re.compile(r"^    (\S.*) \((.*):(\d+)\)\s*$")
_NOT_PERMITTED = ("Permission denied", "Operation not permitted", "os error 1)")


def find_py_spy() -> str | None:
    """py-spy beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


def dump_python_stacks(
    pids: list[int], running: set[int], timeout: float
) -> tuple[str, dict[int, list[dict[str, Any]]]]:
    """Each Python process's threads and frames from `py-spy dump`, all dumped concurrently.

    A waiting process is read with --nonblocking (its stack is not moving, and it is never
    paused); a running one is paused for the moment of the dump so that its stack is whole.
    """
    py_spy = find_py_spy()
    if py_spy is None:
        return "not installed", {}
    if not pids:
        return "skipped", {}
    env = {**os.environ, "RUST_BACKTRACE": "0"}
    started: dict[int, subprocess.Popen[bytes]] = {}
    errors: list[str] = []
    for pid in pids:
        command = [py_spy, "dump", "--full-filenames", "--pid", str(pid)]
        if pid not in running:
            command.append("--nonblocking")
        try:
            started[pid] = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
            )
        except OSError as exc:
            errors.append(str(exc))
    deadline = time.monotonic() + timeout
    dumps: dict[int, list[dict[str, Any]]] = {}
    for pid, child in started.items():
        try:
            out, err = child.communicate(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            errors.append(f"timed out after {timeout:g}s on pid {pid}")
            continue
        threads = _parse_py_spy(out.decode("utf-8", "replace"))
        if child.returncode == 0 and threads:
            dumps[pid] = threads
        elif os.path.exists(f"/proc/{pid}"):  # a process that just exited is no failure
            errors.append(
                _first_error(err.decode("utf-8", "replace")) or f"exit {child.returncode}"
            )
    if dumps:
        return "used", dumps
    if any(marker in error for error in errors for marker in _NOT_PERMITTED):
        return "not permitted", dumps
    if errors:
        return f"failed: {errors[0]}", dumps
    return "skipped", dumps


def _parse_py_spy(text: str) -> list[dict[str, Any]]:
    """`py-spy dump` output → [{"tid", "name", "status", "frames": innermost first}]."""
    threads: list[dict[str, Any]] = []
    for line in text.splitlines():
        thread = _PY_SPY_THREAD.match(line)
        if thread:
            ident, status, name = thread.groups()
            threads.append({"tid": int(ident, 0), "name": name, "status": status, "frames": []})
        elif threads and _PY_SPY_FRAME.match(line):
            threads[-1]["frames"].append(line.strip())
    return threads


def main_thread(threads: list[dict[str, Any]], pid: int) -> dict[str, Any]:
    """The thread whose tid is the pid (or named MainThread), else the first one dumped."""
    for thread in threads:
        if thread["tid"] == pid or thread["name"] == "MainThread":
            return thread
    return threads[0]


def _first_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    first = next((line for line in lines if line.startswith("Error")), lines[0] if lines else "")
    causes = [line for line in lines if re.match(r"^\d+: ", line)]
    first = first.removeprefix("Error: ")
    return f"{first} ({causes[0]})" if causes else first


def short_frame(frame: str) -> str:
    """`f (/srv/app/job.py:12)` → `f (job.py:12)`."""
    match = _PY_SPY_FRAME.match(f"    {frame}")
    if match is None:
        return frame
    function, path, line = match.groups()
    return f"{function} ({os.path.basename(path)}:{line})"
