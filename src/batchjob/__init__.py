"""batchjob: a batch job queue and worker that runs a script under the worker as it runs by hand.

The public surface: `Queue` (enqueue, get, list, cancel, retry, wait), `JobStatus`,
`FailureReason`, `Job`. `Queue` is imported on first use, so that a job which only reports
progress does not pay for importing SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batchjob.model import FailureReason, Job, JobStatus

if TYPE_CHECKING:
    from batchjob.queue import Queue

__all__ = ["FailureReason", "Job", "JobStatus", "Queue"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Queue":
        from batchjob.queue import Queue

        return Queue
    raise AttributeError(f"module 'batchjob' has no attribute {name!r}")
