"""The child's side of progress: `progress("処理中: 第六竹石", current=3, total=120)`.

Under the worker it writes one JSON line to the fd named by BATCH_JOB_PROGRESS_FD; run by
hand it prints a plain line to stderr instead. Standard library only, so that a job pays
nothing at start-up for using it. Any language can speak the same protocol:
`echo '{"message": "x", "current": 1, "total": 9}' >&$BATCH_JOB_PROGRESS_FD`.
"""

from __future__ import annotations

import os
import sys

try:  # the C encoder alone: `import json` would pull in `re` and double a job's start-up time
    from _json import encode_basestring as _json_string
except ImportError:  # pragma: no cover - interpreters without CPython's _json
    from json import dumps as _json_string

PROGRESS_FD_VARIABLE = "BATCH_JOB_PROGRESS_FD"


def progress(
    message: str | None = None, current: int | None = None, total: int | None = None
) -> None:
    """Report how far the job is; the worker keeps the latest report."""
    fields = []
    if message is not None:
        fields.append(f'"message": {_json_string(str(message))}')
    for name, count in (("current", current), ("total", total)):
        if count is not None:
            fields.append(f'"{name}": {int(count)}')
    line = ("{" + ", ".join(fields) + "}\n").encode("utf-8", "surrogateescape")
    descriptor = os.environ.get(PROGRESS_FD_VARIABLE, "")
    if descriptor.isdigit():
        try:
            _write_all(int(descriptor), line)
            return
        except OSError:
            pass  # the fd is gone (closed, or a child that did not inherit it): say it by hand
    counts = f"[{current}/{total}] " if current is not None and total else ""
    print(f"progress: {counts}{message or ''}".rstrip(), file=sys.stderr, flush=True)


def _write_all(descriptor: int, data: bytes) -> None:
    # A line up to PIPE_BUF (4 KiB) arrives whole even when several processes report at once.
    while data:
        written = os.write(descriptor, data)
        data = data[written:]
