"""The one exception tree of batchjob; each class knows the CLI exit code it maps to.

    BatchJobError                 (exit 1)
    ├── InvalidInput              (exit 2)  bad usage or input; nothing stored was changed
    │   ├── ConfigError           (exit 2)  batchjob.toml or BATCH_JOB_* is malformed
    │   ├── UnknownTask           (exit 2)  a task name that batchjob.toml does not declare
    │   ├── DuplicateJob          (exit 2)  a pending/running job already holds the unique_key
    │   └── InvalidTransition     (exit 2)  e.g. retrying a completed job
    ├── StoreUnavailable          (exit 2)  the database cannot be reached or has no schema
    └── JobNotFound               (exit 3)

Exit code 1 is kept for "the job failed", so that a script can tell a failed job from a
problem in reaching or asking batchjob.
"""

from __future__ import annotations


class BatchJobError(Exception):
    """Base of every error batchjob raises on purpose."""

    exit_code = 1


class InvalidInput(BatchJobError):
    """The caller asked for something malformed or impossible; nothing was stored."""

    exit_code = 2


class ConfigError(InvalidInput):
    """The configuration file or environment is malformed; the message names file and key."""


class UnknownTask(InvalidInput):
    """The task name is not declared in batchjob.toml."""


class DuplicateJob(InvalidInput):
    """A pending or running job already holds this unique_key."""

    def __init__(self, unique_key: str, existing_job_id: int | None) -> None:
        self.unique_key = unique_key
        self.existing_job_id = existing_job_id
        holder = f"job {existing_job_id}" if existing_job_id is not None else "another job"
        super().__init__(f"unique_key {unique_key!r} is already held by {holder}")


class InvalidTransition(InvalidInput):
    """The job is not in a state that allows the requested change."""


class StoreUnavailable(BatchJobError):
    """The database cannot be reached, or it has no (or an unknown) batchjob schema."""

    exit_code = 2


class JobNotFound(BatchJobError):
    """No job has this id."""

    exit_code = 3

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} not found")
