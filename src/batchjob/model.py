"""What a job is: its status, why it ended, and the Job record every front end shares."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from batchjob.redact import mask_environment


class JobStatus(enum.StrEnum):
    """Where a job is; drives scheduling. How it ended is `FailureReason`'s business."""

    PENDING = "pending"
    """Waiting to run: new, delayed, waiting for a retry, or put back after a shutdown/rescue."""
    RUNNING = "running"
    """Claimed by a worker under a lease that the worker keeps renewing."""
    COMPLETED = "completed"
    """The command exited 0."""
    FAILED = "failed"
    """Ended without success and with no attempts left; `failure_reason` says why."""
    CANCELLED = "cancelled"
    """Stopped on request before or while running."""

    @property
    def is_finished(self) -> bool:
        """True for the end states, which only `retry` leaves."""
        return self in FINISHED_STATUSES


FINISHED_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class FailureReason(enum.StrEnum):
    """Why an attempt ended without success (SPEC §6)."""

    EXIT_CODE = "exit_code"
    """The command exited with a non-zero code."""
    SIGNAL = "signal"
    """The command was killed by a signal the worker did not send."""
    TIMEOUT = "timeout"
    """The job ran past its `timeout`; the worker terminated its tree."""
    STALLED = "stalled"
    """No output, progress or CPU for `stall_timeout`, and `stall_action` was `kill`."""
    MEMORY_LIMIT = "memory_limit"
    """The tree's RSS passed the job's `memory_limit`; the worker terminated it."""
    OOM_KILLED = "oom_killed"
    """The kernel's OOM killer ended the job."""
    WORKER_LOST = "worker_lost"
    """The lease expired: the worker died or lost the database, and no attempts were left."""
    CANCELLED = "cancelled"
    """Someone cancelled the job."""
    SHUTDOWN = "shutdown"
    """The worker shut down and the job could not be put back."""
    SPAWN_ERROR = "spawn_error"
    """The command could not be started (missing, not executable, bad cwd)."""


def _iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC; the store keeps naive UTC datetimes."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Job:
    """One row of `batch_job_queue`, as the API, the CLI and the web show it."""

    id: int
    queue: str
    task: str | None
    command: list[str]
    status: JobStatus
    priority: int
    attempt: int
    max_attempts: int
    created_at: datetime
    run_at: datetime
    params: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    tags: list[str] = field(default_factory=list)
    unique_key: str | None = None
    concurrency_key: str | None = None
    max_concurrency: int | None = None
    timeout: float | None = None
    stall_timeout: float | None = None
    stall_action: str | None = None
    retry_backoff: float | None = None
    memory_limit: int | None = None
    progress_message: str | None = None
    progress_current: int | None = None
    progress_total: int | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    stalled_at: datetime | None = None
    exit_code: int | None = None
    signal: int | None = None
    failure_reason: FailureReason | None = None
    error_summary: str | None = None
    hint: str | None = None
    log_path: str | None = None
    worker_id: str | None = None
    pid: int | None = None
    lease_expires_at: datetime | None = None
    peak_rss_bytes: int | None = None
    peak_open_fds: int | None = None
    lost_attempts: int = 0
    diagnosis: Mapping[str, Any] | None = None

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> Job:
        """The Job of `values`, a dict holding every field and nothing else, taken as it is.

        For the store, which builds Jobs by the thousand: a frozen dataclass's `__init__` sets
        its 41 fields one `object.__setattr__` at a time, six times as slow as this.
        """
        if values.keys() != _JOB_FIELD_NAMES:
            unexpected = sorted(values.keys() ^ _JOB_FIELD_NAMES)
            raise TypeError(f"Job fields missing or unknown: {', '.join(unexpected)}")
        job = object.__new__(cls)
        object.__setattr__(job, "__dict__", values)
        return job

    def to_json(self) -> dict[str, Any]:
        """The job as SPEC §7 describes it: JSON types, ISO 8601 UTC times, secrets masked."""
        data = {field.name: _plain(getattr(self, field.name)) for field in fields(self)}
        data["env"] = mask_environment(self.env)
        return data


_JOB_FIELD_NAMES = frozenset(field.name for field in fields(Job))


def _plain(value: Any) -> Any:
    """A field's value as JSON has it."""
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value


@dataclass(slots=True)
class NewJob:
    """A job about to be stored, with every option already resolved (job > task > defaults).

    Not frozen, as a Job is: it lives only from the Queue's resolution to the Store's INSERT,
    and a frozen dataclass's `__init__` (an `object.__setattr__` a field) cost 2.6 times a
    plain one's: 40,000 instructions against 15,600, of a bulk enqueue's 270,000 a job.
    Slotted: no dict of its own, 184 bytes where it was 328 (a bulk enqueue holds them all).
    """

    command: Sequence[str]
    queue: str = "default"
    task: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    tags: Sequence[str] = ()
    priority: int = 0
    max_attempts: int = 1
    delay: float = 0.0
    """Seconds from now (the database's now) until the job is due; ignored when run_at is set."""
    run_at: datetime | None = None
    """An absolute UTC due time."""
    unique_key: str | None = None
    concurrency_key: str | None = None
    max_concurrency: int | None = None
    timeout: float | None = None
    stall_timeout: float | None = None
    stall_action: str | None = None
    retry_backoff: float | None = None
    memory_limit: int | None = None


@dataclass(frozen=True)
class Event:
    """One line of a job's history in `batch_job_events`."""

    id: int
    job_id: int
    attempt: int
    kind: str
    at: datetime
    message: str
    worker_id: str | None = None
    data: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job_id": self.job_id,
            "attempt": self.attempt,
            "kind": self.kind,
            "at": _iso(self.at),
            "message": self.message,
            "worker_id": self.worker_id,
            "data": dict(self.data) if self.data is not None else None,
        }
