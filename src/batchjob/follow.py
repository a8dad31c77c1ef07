"""Follow a job from a terminal: its log as it grows, its progress until it ends.

Shared by `batchjob logs -f`, `batchjob wait` and `batchjob enqueue --wait`; it only reads
(the job's row through Queue, the log file), so following never disturbs the job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from batchjob.model import Job
from batchjob.queue import Queue

POLL_SECONDS = 0.5
CHUNK_BYTES = 64 * 1024


def log_path(queue: Queue, job: Job) -> Path:
    """Where the job's log is (or will be): recorded by the worker, else the configured place."""
    if job.log_path:
        return Path(job.log_path)
    return queue.settings.job_log_dir / f"{job.id}.log"


def print_log(queue: Queue, job_id: int, *, follow: bool, out: BinaryIO) -> Job:
    """Copy the job's log to `out`; with `follow`, keep copying until the job has ended."""
    job = queue.get(job_id)
    position = 0
    while True:
        path = log_path(queue, job)
        position = _copy_new_bytes(path, position, out)
        if not follow or job.status.is_finished:
            if follow:  # the last bytes written between our read and the job's end
                _copy_new_bytes(log_path(queue, job), position, out)
            return job
        time.sleep(POLL_SECONDS)
        job = queue.get(job_id)


def wait_with_progress(
    queue: Queue, job_id: int, *, console: Console, sleep: Callable[[float], None] = time.sleep
) -> Job:
    """Poll the job until it ends, drawing its progress as a bar on `console`."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"job {job_id}", total=None)
        while True:
            job = queue.get(job_id)
            description = f"job {job.id} {job.status.value}"
            if job.progress_message:
                description += f": {job.progress_message}"
            bar.update(
                task,
                description=description.replace("[", "\\["),
                completed=job.progress_current or 0,
                total=job.progress_total,
            )
            if job.status.is_finished:
                return job
            sleep(POLL_SECONDS)


def _copy_new_bytes(path: Path, position: int, out: BinaryIO) -> int:
    try:
        with path.open("rb") as log:
            log.seek(position)
            while chunk := log.read(CHUNK_BYTES):
                out.write(chunk)
                position += len(chunk)
    except FileNotFoundError:
        return position
    out.flush()
    return position
