"""The child's side of progress: `progress("処理中: 第六竹石", current=3, total=120)`.

Under the worker it writes one JSON line to the fd named by BATCH_JOB_PROGRESS_FD; run by
hand it prints a plain line to stderr instead. Standard library only, so that a job pays
nothing at start-up for using it. Any language can speak the same protocol:
`echo '{"message": "x", "current": 1, "total": 9}' >&$BATCH_JOB_PROGRESS_FD`.

A job may call it in its innermost loop: at most one line is written per
`MIN_INTERVAL_SECONDS` (the worker stores two a second anyway). A report that comes sooner
is only remembered, at the cost of a clock read; the latest one is written when the
interval is up (by a timer, so a job that then works for an hour still shows it), when a
report says the work is done (current == total), and at exit.
"""

from __future__ import annotations

import os
import sys
import time

try:  # the C encoder alone: `import json` would pull in `re` and double a job's start-up time
    from _json import encode_basestring as _json_string
except ImportError:  # pragma: no cover - interpreters without CPython's _json
    from json import dumps as _json_string

PROGRESS_FD_VARIABLE = "BATCH_JOB_PROGRESS_FD"
MIN_INTERVAL_SECONDS = 0.1

Report = tuple[str | None, int | None, int | None]

TYPE_CHECKING = False  # not `from typing import`: typing costs a job 20 ms at start-up
if TYPE_CHECKING:
    import threading


def progress(
    message: str | None = None, current: int | None = None, total: int | None = None
) -> None:
    """Report how far the job is; the worker keeps the latest report."""
    _sender.report((message, current, total), final=current is not None and current == total)


class _Sender:
    """Where reports go, when the next may be written, and the report held back meanwhile."""

    def __init__(self) -> None:
        self.quiet_until = -1e9
        self.held: Report | None = None
        self._timer_running = False
        self._lock: threading.Lock | None = None  # made with the first timer
        self._descriptor: int | None = None  # read from the environment on first use

    def report(self, report: Report, final: bool) -> None:
        """Write `report` now, or hold it for the timer if a line was written just now."""
        if self._timer_running and not final and time.monotonic() < self.quiet_until:
            # A tight loop's call, without the lock (which took half of it): the timer takes
            # `held` to write only after clearing `_timer_running`, so while that is set it
            # will write this report, or the latest after it; if it ended meanwhile, the
            # report is taken as below.
            self.held = report
            if self._timer_running:
                return
        if self._lock is None:  # no timer yet: this thread is the only writer
            if final or time.monotonic() >= self.quiet_until:
                self._send(report)
                return
            import atexit
            import threading  # 3.6 ms to import: paid only by jobs that report this often

            self._lock = threading.Lock()
            atexit.register(self.send_held)
        with self._lock:
            if final or time.monotonic() >= self.quiet_until:
                self._send(report)
                return
            self.held = report
            if self._timer_running:
                return
            self._timer_running = True
        if not self._start_timer():
            self.send_held()

    def _start_timer(self) -> bool:
        import threading

        timer = threading.Timer(max(0.0, self.quiet_until - time.monotonic()), self._on_timer)
        timer.daemon = True
        try:
            timer.start()
        except RuntimeError:  # no new thread now (interpreter shutting down, thread limit)
            return False
        return True

    def _on_timer(self) -> None:
        assert self._lock is not None
        with self._lock:
            wrote_meanwhile = time.monotonic() < self.quiet_until
            if self.held is not None and wrote_meanwhile and self._start_timer():
                return  # wait for the next turn
            self._timer_running = False
            self._send(None)

    def send_held(self) -> None:
        """Write the held report, if any (at exit, or when no timer can be had)."""
        assert self._lock is not None
        with self._lock:
            self._timer_running = False
            self._send(None)

    def _send(self, report: Report | None) -> None:
        report, self.held = report or self.held, None
        if report is None:
            return
        message, current, total = report
        if self._descriptor is None:
            variable = os.environ.get(PROGRESS_FD_VARIABLE, "")
            self._descriptor = int(variable) if variable.isdigit() else -1
        if self._descriptor < 0:
            _by_hand(message, current, total)
            return
        fields = []
        if message is not None:
            fields.append(f'"message": {_json_string(str(message))}')
        for name, count in (("current", current), ("total", total)):
            if count is not None:
                fields.append(f'"{name}": {int(count)}')
        line = ("{" + ", ".join(fields) + "}\n").encode("utf-8", "surrogateescape")
        try:
            _write_all(self._descriptor, line)
        except OSError:  # the fd is gone (closed, or a child that did not inherit it)
            _by_hand(message, current, total)
            return
        self.quiet_until = time.monotonic() + MIN_INTERVAL_SECONDS

    def forget(self) -> None:
        """In a forked child: the parent's timer and held report are not this process's."""
        self.held, self._timer_running = None, False
        if self._lock is not None:
            import threading

            self._lock = threading.Lock()  # the parent's may have been held at the fork


_sender = _Sender()
os.register_at_fork(after_in_child=_sender.forget)


def _by_hand(message: str | None, current: int | None, total: int | None) -> None:
    counts = f"[{current}/{total}] " if current is not None and total else ""
    print(f"progress: {counts}{message or ''}".rstrip(), file=sys.stderr, flush=True)


def _write_all(descriptor: int, data: bytes) -> None:
    # A line up to PIPE_BUF (4 KiB) arrives whole even when several processes report at once.
    while data:
        written = os.write(descriptor, data)
        data = data[written:]
