"""How an attempt ended, decided in one place from the runner's evidence (pure functions).

`status` drives scheduling; `failure_reason`, `exit_code` and `signal` explain the end.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from batchjob.model import FailureReason
from batchjob.runner import RunResult, StopReason

SUMMARY_LINE_LIMIT = 500


@dataclass(frozen=True)
class Verdict:
    """The end of one attempt, before retries are considered."""

    succeeded: bool
    failure_reason: FailureReason | None
    summary: str | None
    retryable: bool
    """Whether another attempt could end differently (a missing program will not)."""


def judge(result: RunResult, timeout: float | None) -> Verdict:
    """The verdict on an attempt that ended by itself, or was stopped for timeout/cancel."""
    if result.spawn_error is not None:
        return Verdict(False, FailureReason.SPAWN_ERROR, result.spawn_error, retryable=False)
    if result.stopped_by == StopReason.TIMEOUT:
        limit = f"{timeout:g}s" if timeout is not None else "its limit"
        return Verdict(
            False,
            FailureReason.TIMEOUT,
            f"ran past its timeout of {limit}; its process tree was terminated",
            retryable=True,
        )
    if result.stopped_by == StopReason.CANCELLED:
        return Verdict(False, FailureReason.CANCELLED, "cancelled while running", retryable=False)
    if result.signal is not None:
        name = _signal_name(result.signal)
        return Verdict(
            False,
            FailureReason.SIGNAL,
            f"killed by {name}, not sent by batchjob" + _stderr_suffix(result),
            retryable=True,
        )
    if result.exit_code != 0:
        return Verdict(
            False,
            FailureReason.EXIT_CODE,
            _stderr_summary(result) or f"exited with code {result.exit_code} and no stderr",
            retryable=True,
        )
    return Verdict(True, None, None, retryable=False)


def retry_delay(backoff: float, attempt: int, jitter: float) -> float:
    """`backoff` doubled for each attempt after the first, times `jitter` (e.g. 0.75 to 1.25)."""
    return float(backoff * (2 ** max(attempt - 1, 0)) * jitter)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _stderr_summary(result: RunResult) -> str:
    lines = [line[:SUMMARY_LINE_LIMIT] for line in result.stderr_tail]
    return "\n".join(lines)


def _stderr_suffix(result: RunResult) -> str:
    summary = _stderr_summary(result)
    return f"; last stderr:\n{summary}" if summary else ""
