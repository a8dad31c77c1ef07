"""`batchjob run --like-worker -- CMD…`: run a command in the foreground exactly as a job.

The worker's runner does it: the same environment (built from this shell's, or from the
configured env_file, as the worker would), stdin /dev/null, pipes, its own session, a
private TMPDIR, the progress descriptor, and — where the worker's systemd unit is installed —
the unit's resource limits (LimitNOFILE= and the others) instead of this shell's. Output
streams to this terminal as it comes (and to a log file, as under the worker); Ctrl-C stops
the whole tree. The exit code is the job's (128 + N when a signal N ended it).
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from batchjob.config import Settings
from batchjob.diagnosis import systemctl
from batchjob.diagnosis.checks_systemd import SYSTEMD_UNIT
from batchjob.runner import JobSpec, RunControl, StopReason, run, watch
from batchjob.runner.spawn import SpawnRequest, read_env_file, reserve_progress_fds

NOT_STARTED_EXIT = 127


def run_like_worker(settings: Settings, command: list[str]) -> int:
    reserve_progress_fds()
    watch.become_subreaper()
    _apply_unit_limits()
    env_file = settings.worker.env_file
    base_env = read_env_file(env_file) if env_file is not None else dict(os.environ)
    log_path = Path(tempfile.mkdtemp(prefix="batchjob-like-worker-")) / "job.log"
    spec = JobSpec(
        spawn=SpawnRequest(
            job_id=0,
            attempt=1,
            queue="like-worker",
            command=command,
            env={},
            cwd=None,
            base_env=base_env,
            worker_id=f"{socket.gethostname()}:{os.getpid()}:like-worker",
        ),
        log_path=str(log_path),
        max_log_bytes=settings.worker.max_log_bytes,
        timeout=None,
        kill_grace=settings.worker.kill_grace,
        drain_grace=settings.worker.drain_grace,
    )
    control = RunControl(on_output=_echo, on_progress=_show_progress)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        control.request_stop(StopReason.CANCELLED)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    result = run(spec, control)
    print(f"batchjob: the job's log is {log_path}", file=sys.stderr)
    if result.spawn_error is not None:
        print(f"batchjob: error: cannot start: {result.spawn_error}", file=sys.stderr)
        return NOT_STARTED_EXIT
    if result.signal is not None:
        return 128 + result.signal
    return result.exit_code if result.exit_code is not None else 1


def unit_limits(properties: Mapping[str, str]) -> dict[str, tuple[int, int]]:
    """(soft, hard) per resource from `systemctl show` (LimitNOFILE=, LimitNOFILESoft=…)."""
    limits = {}
    for systemd_name, resource_name in _LIMITS.items():
        hard = _limit_value(properties.get(f"Limit{systemd_name}"))
        soft = _limit_value(properties.get(f"Limit{systemd_name}Soft"))
        if hard is not None:
            limits[resource_name] = (hard if soft is None else soft, hard)
    return limits


def _apply_unit_limits() -> None:
    properties = systemctl.show(SYSTEMD_UNIT, [f"Limit{name}{end}" for name in _LIMITS
                                               for end in ("", "Soft")])  # fmt: skip
    if not properties or not any(properties.values()):
        return
    for resource_name, (soft, hard) in unit_limits(properties).items():
        try:
            resource.setrlimit(getattr(resource, resource_name), (soft, hard))
        except (ValueError, OSError) as exc:
            print(f"batchjob: cannot apply {SYSTEMD_UNIT}'s {resource_name}: {exc}",
                  file=sys.stderr)  # fmt: skip
    print(f"batchjob: running with the resource limits of {SYSTEMD_UNIT}", file=sys.stderr)


_LIMITS = {
    "NOFILE": "RLIMIT_NOFILE",
    "NPROC": "RLIMIT_NPROC",
    "AS": "RLIMIT_AS",
    "CORE": "RLIMIT_CORE",
    "FSIZE": "RLIMIT_FSIZE",
    "STACK": "RLIMIT_STACK",
    "MEMLOCK": "RLIMIT_MEMLOCK",
}


def _limit_value(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    if text == "infinity":
        return resource.RLIM_INFINITY
    return int(text) if text.isdigit() else None


def _echo(stream: str, data: bytes) -> None:
    target = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
    target.write(data)
    target.flush()


def _show_progress(message: str | None, current: int | None, total: int | None) -> None:
    counts = f"[{current}/{total}] " if current is not None and total else ""
    print(f"progress: {counts}{message or ''}".rstrip(), file=sys.stderr, flush=True)
