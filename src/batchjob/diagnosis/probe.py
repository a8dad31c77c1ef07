"""What a job sees, told by a job: `python -m batchjob.diagnosis.probe` prints one JSON line.

`batchjob doctor --probe` enqueues this module as a job, so that the worker's real
environment — interpreter, user, umask, locale, limits, cgroup, writable directories — is
reported from inside it rather than guessed from the operator's shell. The execution context
is the one every attempt records (`diagnosis.context`); the probe adds what only a running
job can try. Standard library only, so that it runs under any interpreter a worker may use.
"""

from __future__ import annotations

import json
import locale
import os
import re
import sys
import tempfile
from typing import Any

from batchjob.diagnosis.context import execution_context

# A job log record: `<time> <stream><mark> | <bytes>`; mark " " starts a line, "+" continues
# the previous record's line, "~" says the stream ended without a newline (see runner.pump).
_LOG_RECORD = re.compile(r"^\S+ (?P<stream>out|err|bjq)(?P<mark>[ +~]) \| (?P<data>.*)$")


def describe() -> dict[str, Any]:
    """The execution context as this job sees it, plus its interpreter, encodings, writes."""
    return {
        **execution_context(os.environ, [sys.executable], os.getcwd()),
        "python": {"executable": sys.executable, "version": sys.version.split()[0]},
        "encoding": {
            "preferred": locale.getpreferredencoding(False),
            "stdout": sys.stdout.encoding,
        },
        "batch_job": {
            name: value for name, value in os.environ.items() if name.startswith("BATCH_JOB_")
        },
        "writable": {
            "TMPDIR": _writable(os.environ.get("TMPDIR")),
            "HOME": _writable(os.environ.get("HOME")),
            "cwd": _writable(os.getcwd()),
        },
    }


def read_output(log_text: str) -> dict[str, Any] | None:
    """The probe's JSON from a job log: the last stdout line that parses as an object."""
    lines: list[str] = []
    continues = False
    for record in log_text.splitlines():
        match = _LOG_RECORD.match(record)
        if match is None or match["stream"] != "out":
            continue
        if match["mark"] == "+" and continues:
            lines[-1] += match["data"]
        elif match["mark"] != "~":
            lines.append(match["data"])
        continues = match["mark"] != "~"
    for line in reversed(lines):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _writable(directory: str | None) -> dict[str, Any]:
    """Whether a file can be created (and removed) in `directory`, and if not why."""
    if not directory:
        return {"path": None, "writable": False, "error": "not set"}
    try:
        handle, path = tempfile.mkstemp(prefix=".batchjob-probe-", dir=directory)
        os.close(handle)
        os.unlink(path)
    except OSError as exc:
        return {"path": directory, "writable": False, "error": str(exc)}
    return {"path": directory, "writable": True, "error": None}


def main() -> None:
    # One write of one line, so that the worker's log keeps it as one record where it can.
    sys.stdout.write(json.dumps(describe(), ensure_ascii=False) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
