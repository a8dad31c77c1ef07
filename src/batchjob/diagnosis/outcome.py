"""How an attempt ended, decided in one place from the runner's evidence (pure functions).

`status` drives scheduling; `failure_reason`, `exit_code` and `signal` explain the end.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from batchjob.diagnosis.hints import Facts, hint_for
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
    hint: str | None = None


def explain(
    result: RunResult,
    *,
    command: Sequence[str],
    timeout: float | None,
    memory_limit: int | None,
    oom_evidence: str | None,
) -> Verdict:
    """The verdict with its hint: `judge`, then the first hint rule that matches the facts."""
    verdict = judge(result, timeout, memory_limit, oom_evidence)
    if verdict.succeeded:
        return verdict
    facts = Facts(
        failure_reason=verdict.failure_reason,
        stderr="\n".join(result.stderr_tail),
        exit_code=result.exit_code,
        signal=result.signal,
        peak_open_fds=result.peak_open_fds,
        fd_limit=result.fd_limit,
        peak_rss_bytes=result.peak_rss_bytes,
        memory_limit=memory_limit,
        duration=result.duration,
        interpreter=_interpreter(command, result.env),
        env=result.env,
        oom_evidence=oom_evidence,
    )
    return Verdict(
        False, verdict.failure_reason, verdict.summary, verdict.retryable, hint_for(facts)
    )


def judge(
    result: RunResult,
    timeout: float | None,
    memory_limit: int | None = None,
    oom_evidence: str | None = None,
) -> Verdict:
    """The verdict on an attempt: who ended it, and whether another attempt may help."""
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
    if result.stopped_by == StopReason.MEMORY_LIMIT:
        return Verdict(
            False,
            FailureReason.MEMORY_LIMIT,
            f"its processes' RSS reached {result.peak_rss_bytes} bytes, over the memory_limit "
            f"of {memory_limit}; its process tree was terminated",
            retryable=True,
        )
    if result.stopped_by == StopReason.STALLED:
        return Verdict(
            False,
            FailureReason.STALLED,
            "stalled (no output, progress or CPU for its stall_timeout) and stall_action is "
            "kill; its process tree was terminated",
            retryable=True,
        )
    if result.signal == signal.SIGKILL and oom_evidence is not None:
        return Verdict(
            False,
            FailureReason.OOM_KILLED,
            f"killed by the kernel's OOM killer ({oom_evidence})",
            retryable=True,
        )
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


def _interpreter(command: Sequence[str], env: dict[str, str]) -> str | None:
    """The Python the job ran, when its command says: argv[0], or a script's #! line.

    None for anything else (`sh -c "python3 …"`): naming the shell would mislead.
    """
    if not command:
        return None
    program = shutil.which(command[0], path=env.get("PATH")) or command[0]
    if Path(program).name.startswith("python"):
        return program
    try:
        with open(program, "rb") as script:
            first_line = script.readline(256)
    except OSError:
        return None
    if first_line.startswith(b"#!") and b"python" in first_line:
        return first_line[2:].decode("utf-8", "replace").strip()
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _stderr_summary(result: RunResult) -> str:
    lines = [line[:SUMMARY_LINE_LIMIT].replace("\0", "\ufffd") for line in result.stderr_tail]
    return "\n".join(lines)


def _stderr_suffix(result: RunResult) -> str:
    summary = _stderr_summary(result)
    return f"; last stderr:\n{summary}" if summary else ""
