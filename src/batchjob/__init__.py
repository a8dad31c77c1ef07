"""batchjob: a batch job queue and worker that runs a script under the worker as it runs by hand.

The public surface: `Queue` (enqueue, get, list, cancel, retry, wait), `progress`,
`JobStatus`, `FailureReason`, `Job`. Only `progress` is imported eagerly: a job that reports
progress must not pay for importing SQLAlchemy, typing or dataclasses at start-up.
"""

from __future__ import annotations

from batchjob.progress import progress

# Not `from typing import TYPE_CHECKING`: importing typing would double a job's start-up time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from batchjob.model import FailureReason, Job, JobStatus
    from batchjob.queue import Queue

__all__ = ["FailureReason", "Job", "JobStatus", "Queue", "progress"]
__version__ = "0.1.0"

_LAZY = {
    "Queue": "batchjob.queue",
    "Job": "batchjob.model",
    "JobStatus": "batchjob.model",
    "FailureReason": "batchjob.model",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'batchjob' has no attribute {name!r}")
