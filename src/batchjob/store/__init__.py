"""The one seam to the database: a method per intention, each a short transaction.

Every write the worker makes after a claim is fenced by `id AND lease_token AND
status='running'`: zero rows changed means the lease was lost, and the caller must stop.
One exception: a rescued job keeps its last token while it waits to be claimed again, so
that its rescued attempt's success, reported late (its worker was cut off), is still kept.
Times come from the database clock (`db_now`), never from the caller's.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    Connection,
    Dialect,
    Float,
    Integer,
    Row,
    String,
    and_,
    bindparam,
    case,
    create_engine,
    func,
    insert,
    inspect,
    literal,
    null,
    or_,
    select,
    true,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.types import TypeEngine

from batchjob.errors import (
    DuplicateJob,
    InvalidInput,
    InvalidTransition,
    JobNotFound,
    StoreUnavailable,
)
from batchjob.model import Event, FailureReason, Job, JobStatus, NewJob
from batchjob.redact import mask_url_passwords
from batchjob.store import dialects, health, migrations, wakeups
from batchjob.store.driver import DriverStatement
from batchjob.store.schema import Moment, concurrency_locks, events, jobs, workers
from batchjob.store.writer import SharedWriter

T = TypeVar("T")

# Pauses before retrying a transaction that failed for a passing reason (lost connection,
# server restart, deadlock); after the last one the error reaches the caller.
RETRY_DELAYS_SECONDS = (0.1, 0.3, 1.0)
# A claim locks a few more due rows than it has slots, so that rows it must skip for their
# concurrency_key do not leave slots idle.
CLAIM_CANDIDATE_FACTOR = 2
# PostgreSQL's bulk insert sends a column's values as one array: this many rows at most, so
# that a million-job enqueue is not one statement of hundreds of megabytes.
ROWS_PER_ARRAY_INSERT = 10_000
# A transaction's events go in one INSERT of up to this many rows (a rescue's, in several).
EVENTS_PER_INSERT = 16
# Deadlock / serialization / lock-wait codes: the transaction can simply run again.
_RETRYABLE_CODES = {"1205", "1213", "40001", "40P01"}

PENDING, RUNNING = JobStatus.PENDING.value, JobStatus.RUNNING.value
RETRYABLE_STATUSES = (JobStatus.FAILED.value, JobStatus.CANCELLED.value)
FINISHED_STATUSES = (JobStatus.COMPLETED.value, *RETRYABLE_STATUSES)


@dataclass(frozen=True)
class Lease:
    """The right to write to one attempt of a job; a new claim makes a new token."""

    job_id: int
    token: str
    attempt: int
    """The attempt the lease is for: the one whose end `finish` records."""


@dataclass(frozen=True)
class ClaimedJob:
    job: Job
    lease: Lease
    granted_at: float
    """This process's monotonic clock just before the claim's UPDATE went out: the database
    reads its own clock for the lease's expiry after that, so a lease measured from here ends
    no later than the database's. Not from when the claim was asked for: a claim that waited
    seconds for SQLite's write lock would start with those seconds already spent."""


@dataclass(frozen=True)
class ClaimRequest:
    """What a worker asks of `claim`: up to `limit` due jobs of `queues` (None: any)."""

    worker_id: str
    queues: Sequence[str] | None
    limit: int
    lease_timeout: float


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as the worker reports it to `finish`."""

    status: JobStatus
    exit_code: int | None = None
    signal: int | None = None
    failure_reason: FailureReason | None = None
    error_summary: str | None = None
    hint: str | None = None
    peak_rss_bytes: int | None = None
    peak_open_fds: int | None = None
    retry_delay: float | None = None
    """With status PENDING: seconds until the next attempt is due."""
    progress: tuple[str | None, int | None, int | None] | None = None
    """The last progress report not yet stored, written with the outcome."""
    evidence: Mapping[str, Any] | None = None
    """The attempt's recorded context (masked env, peaks, leftovers): an `attempt` event."""
    started: tuple[int, str] | None = None
    """(pid, log path) when `renew_leases` did not store them (a job shorter than a tick)."""


@dataclass(frozen=True)
class WorkerRegistration:
    worker_id: str
    host: str
    pid: int
    version: str
    queues: Sequence[str] | None
    concurrency: int


class Store:
    """Jobs, events and workers in one of the three supported databases."""

    def __init__(self, url: str) -> None:
        self.url: URL = dialects.normalise_url(url)
        self.display_url = mask_url_passwords(url)
        options = dialects.engine_options(self.url)
        try:
            self._engine = create_engine(self.url, json_serializer=_json_dumps, **options)
        except (ImportError, NoSuchModuleError) as exc:
            raise dialects.missing_driver(self.url, self.display_url, exc) from None
        dialects.prepare_engine(self._engine)
        self._writer = (
            SharedWriter(self._engine) if dialects.writes_on_one_connection(self.url) else None
        )
        self._recycle_checked = False
        self._claims_in_one_statement = dialects.modifies_in_one_statement(self._engine.dialect)
        self._enqueues_one_job_in_autocommit = dialects.enqueues_one_job_in_autocommit(
            self._engine.dialect
        )

    @property
    def dialect_name(self) -> str:
        return self._engine.dialect.name

    def close(self) -> None:
        """Close every pooled connection (a forked child must never reuse one)."""
        if self._writer is not None:
            self._writer.close()
        self._engine.dispose()

    # ---- schema -------------------------------------------------------------------------

    def upgrade_schema(self) -> tuple[int, int]:
        """Create or upgrade the tables; returns the (previous, current) schema version."""
        return self._attempt(lambda: migrations.upgrade(self._engine))

    def schema_version(self) -> int:
        return self._run(migrations.current_version, read_only=True)

    # ---- enqueue and read -----------------------------------------------------------------

    def enqueue(
        self, new_jobs: Sequence[NewJob], connection: Connection | None = None
    ) -> list[Job]:
        """Store jobs in one transaction: all of them or, on any error, none.

        With `connection`, the insert joins the caller's open transaction (inside a savepoint,
        so a duplicate unique_key does not spoil it) and is committed or rolled back with it.
        """
        if not new_jobs:
            return []
        _reject_duplicate_keys_within(new_jobs)
        rows = [_insert_parameters(new_job) for new_job in new_jobs]
        try:
            if connection is not None:
                with connection.begin_nested():
                    stored = self._insert_jobs(connection, rows)
            else:
                # A commit whose answer was lost is not retried: it might store the jobs twice.
                stored = self._run(
                    lambda conn: self._insert_jobs(conn, rows),
                    retry_commit=False,
                    autocommit=len(rows) == 1 and self._enqueues_one_job_in_autocommit,
                )
        except IntegrityError as exc:
            if not _is_unique_key_conflict(exc):
                raise _refused(exc) from exc
            keys = [row["unique_key"] for row in rows if row["unique_key"] is not None]
            raise self._duplicate_error(keys) from exc
        wakeups.announce_committed(self.url)
        return stored

    def get(self, job_id: int) -> Job:
        _check_id(job_id)

        def read(conn: Connection) -> Job:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
            if row is None:
                raise JobNotFound(job_id)
            return self._with_diagnoses(conn, [row])[0]

        return self._run(read, read_only=True)

    def list_jobs(
        self,
        *,
        statuses: Iterable[JobStatus] = (),
        queues: Iterable[str] = (),
        tasks: Iterable[str] = (),
        limit: int = 50,
    ) -> list[Job]:
        """Newest first, optionally filtered by status, queue and task."""
        query = select(jobs).order_by(jobs.c.id.desc()).limit(limit)
        if status_names := [status.value for status in statuses]:
            query = query.where(jobs.c.status.in_(status_names))
        if queues := list(queues):
            query = query.where(jobs.c.queue.in_(queues))
        if tasks := list(tasks):
            query = query.where(jobs.c.task.in_(tasks))
        return self._run(
            lambda conn: self._with_diagnoses(conn, conn.execute(query).all()), read_only=True
        )

    def events(self, job_id: int) -> list[Event]:
        """The job's history, oldest first."""
        query = select(events).where(events.c.job_id == job_id).order_by(events.c.id)
        return self._run(
            lambda conn: [_event_from_row(row) for row in conn.execute(query)], read_only=True
        )

    def stats(self) -> dict[str, dict[str, int]]:
        """Job counts by queue, then by status."""
        query = select(jobs.c.queue, jobs.c.status, func.count()).group_by(
            jobs.c.queue, jobs.c.status
        )
        counts: dict[str, dict[str, int]] = {}
        for queue, status, count in self._run(
            lambda conn: conn.execute(query).all(), read_only=True
        ):
            counts.setdefault(queue, {})[status] = int(count)
        return counts

    # ---- operator actions -----------------------------------------------------------------

    def cancel(self, job_id: int) -> Job:
        """Cancel a pending job at once; ask the worker of a running job to stop it."""
        _check_id(job_id)

        def cancel(conn: Connection) -> Job:
            status = self._status_for_update(conn, job_id)
            if status == PENDING:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.status == PENDING)
                    .values(
                        status=JobStatus.CANCELLED.value,
                        failure_reason=FailureReason.CANCELLED.value,
                        **_finished_values(),
                    )
                )
                _record_event(conn, job_id, "cancelled", "cancelled while pending")
            elif status == RUNNING:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.status == RUNNING)
                    .values(
                        cancel_requested_at=func.coalesce(
                            jobs.c.cancel_requested_at, dialects.db_now()
                        )
                    )
                )
                _record_event(conn, job_id, "cancel_requested", "cancel requested while running")
            elif status != JobStatus.CANCELLED.value:
                raise InvalidTransition(f"job {job_id} is {status}; it cannot be cancelled")
            return _job_from_row(self._row(conn, job_id))

        return self._run(cancel)

    def retry(self, job_id: int) -> Job:
        """Put a failed or cancelled job back to pending, with one more attempt if needed."""
        _check_id(job_id)

        def retry(conn: Connection) -> Job:
            status = self._status_for_update(conn, job_id)
            if status not in RETRYABLE_STATUSES:
                raise InvalidTransition(
                    f"job {job_id} is {status}; only failed or cancelled jobs can be retried"
                )
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status.in_(RETRYABLE_STATUSES))
                .values(
                    status=PENDING,
                    run_at=dialects.db_now(),
                    max_attempts=case(
                        (jobs.c.max_attempts > jobs.c.attempt, jobs.c.max_attempts),
                        else_=jobs.c.attempt + 1,
                    ),
                    active_unique_key=jobs.c.unique_key,
                    lost_attempts=0,
                    completed_at=None,
                    cancel_requested_at=None,
                    **_cleared_result_values(),
                )
            )
            _record_event(conn, job_id, "retried", f"retried by request after being {status}")
            return _job_from_row(self._row(conn, job_id))

        try:
            return self._run(retry)
        except IntegrityError as exc:
            if not _is_unique_key_conflict(exc):
                raise _refused(exc) from exc
            key = self.get(job_id).unique_key
            raise self._duplicate_error([key] if key else []) from exc

    # ---- the worker's side ----------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        lease_timeout: float,
    ) -> list[ClaimedJob]:
        """Atomically take up to `limit` due jobs, respecting every concurrency_key's limit."""
        if limit <= 0:
            return []
        request = ClaimRequest(worker_id, queues, limit, lease_timeout)
        if self._claims_in_one_statement:
            claimed = self._run(
                lambda conn: _claim_in_one_statement(conn, request, None), autocommit=True
            )[1]
            if claimed is not None:
                return claimed
        return self._run(lambda conn: _claim_by_steps(conn, request))

    def renew_leases(
        self,
        leases: Sequence[Lease],
        lease_timeout: float,
        started: Mapping[Lease, tuple[int, str]] | None = None,
    ) -> set[int]:
        """Extend the leases and store the `started` jobs' (pid, log path), all in one
        transaction: one write lock on SQLite however many jobs a worker runs. Returns the ids
        of the jobs whose lease is still held; any other lease is lost, and its attempt must
        stop and stop writing."""
        started = started or {}
        if not leases and not started:
            return set()
        by_token: dict[str, list[int]] = {}
        for lease in leases:
            by_token.setdefault(lease.token, []).append(lease.job_id)
        held = and_(
            or_(
                *(
                    and_(jobs.c.lease_token == token, jobs.c.id.in_(ids))
                    for token, ids in by_token.items()
                )
            ),
            jobs.c.status == RUNNING,
        )

        def renew(conn: Connection) -> set[int]:
            for lease, (pid, log_path) in started.items():
                conn.execute(_fenced(lease).values(pid=pid, log_path=log_path))
            if not leases:
                return set()
            expires = dialects.db_now_plus(lease_timeout)
            conn.execute(update(jobs).where(held).values(lease_expires_at=expires))
            return set(conn.execute(select(jobs.c.id).where(held)).scalars())

        return self._run(renew)

    def report_progress(
        self, lease: Lease, message: str | None, current: int | None, total: int | None
    ) -> bool:
        return self._fenced_update(
            lease,
            {"progress_message": message, "progress_current": current, "progress_total": total},
        )

    def finish(self, lease: Lease, outcome: Outcome) -> bool:
        """Record how the attempt ended; PENDING means: try again after `retry_delay`.

        False: the lease was lost meanwhile, and nothing was written.
        """
        return self.finish_and_claim(lease, outcome, None)[0]

    def finish_and_claim(
        self, lease: Lease, outcome: Outcome, request: ClaimRequest | None
    ) -> tuple[bool, list[ClaimedJob]]:
        """`finish`, then `claim` in the same transaction: a slot's next job for one commit,
        and one INSERT for the events of both. On PostgreSQL both are one statement."""
        if request is not None and request.limit > 0 and self._claims_in_one_statement:
            recorded, claimed = self._run(
                lambda conn: _claim_in_one_statement(conn, request, (lease, outcome)),
                autocommit=True,
            )
            if claimed is None:  # a due job has a concurrency_key; the outcome is stored
                try:
                    claimed = self._run(lambda conn: _claim_by_steps(conn, request))
                except StoreUnavailable:
                    claimed = []  # not the outcome again: the worker's own claims take over
            return recorded, claimed

        def finish_and_claim(conn: Connection) -> tuple[bool, list[ClaimedJob]]:
            events: list[_NewEvent] = []
            recorded = _finish(conn, lease, outcome, events)
            claimed = []
            if request is not None and request.limit > 0:
                claimed = _claim(conn, request, events)
            _record_events(conn, events)
            return recorded, claimed

        return self._run(finish_and_claim)

    def rescue_expired(
        self,
        max_lost_attempts: int = 3,
        end_attempts: Callable[[list[tuple[int, str | None]]], object] | None = None,
    ) -> list[Job]:
        """Running jobs whose lease expired by the database clock: retry or fail them.

        A job fails with `worker_lost` when its attempts are used up, or when it has lost its
        worker `max_lost_attempts` times: a job that kills its worker must not crash-loop
        the fleet. `end_attempts([(job_id, worker_id), ...])` is called with the expired jobs
        while their rows are still locked and running, so that their old attempts can be
        ended before any worker may claim them again.
        """

        # Every worker asks several times a lease: asked without taking SQLite's write lock.
        due = select(jobs.c.id).where(
            jobs.c.status == RUNNING, jobs.c.lease_expires_at < dialects.db_now()
        )
        if self._run(lambda conn: conn.execute(due.limit(1)).first() is None, read_only=True):
            return []

        def rescue(conn: Connection) -> list[Job]:
            expired = select(
                jobs.c.id,
                jobs.c.attempt,
                jobs.c.max_attempts,
                jobs.c.lost_attempts,
                jobs.c.worker_id,
            ).where(jobs.c.status == RUNNING, jobs.c.lease_expires_at < dialects.db_now())
            if dialects.supports_skip_locked(conn):
                expired = expired.with_for_update(skip_locked=True)
            found = conn.execute(expired).all()
            if not found:
                return []
            if end_attempts is not None:
                end_attempts([(row.id, row.worker_id) for row in found])
            exhausted = {
                row.id
                for row in found
                if row.attempt >= row.max_attempts or row.lost_attempts + 1 >= max_lost_attempts
            }
            still_expired = and_(
                jobs.c.status == RUNNING, jobs.c.lease_expires_at < dialects.db_now()
            )
            released = {"lease_expires_at": None, "lost_attempts": jobs.c.lost_attempts + 1}
            if retry := [row.id for row in found if row.id not in exhausted]:
                # run_at is kept: a rescued job was due long ago and goes before later ones;
                # the token too, until the next claim: see `finish`.
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id.in_(retry), still_expired)
                    .values(status=PENDING, **released)
                )
            if exhausted:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id.in_(exhausted), still_expired)
                    .values(
                        status=JobStatus.FAILED.value,
                        lease_token=None,
                        failure_reason=FailureReason.WORKER_LOST.value,
                        error_summary=case(
                            (
                                jobs.c.lost_attempts + 1 >= max_lost_attempts,
                                "lost its worker on every attempt: a suspected poison pill",
                            ),
                            else_="the lease expired: the worker died or lost the database",
                        ),
                        **released,
                        **_finished_values(),
                    )
                )
            rows = conn.execute(select(jobs).where(jobs.c.id.in_([row.id for row in found]))).all()
            rescued = [_job_from_row(row) for row in rows]
            _record_events(
                conn,
                [
                    _NewEvent(
                        job.id,
                        job.attempt,
                        "rescued",
                        f"the lease of attempt {job.attempt} (worker {job.worker_id}) expired; "
                        f"the job is now {job.status}",
                    )
                    for job in rescued
                ],
            )
            return rescued

        return self._run(rescue)

    def release(self, lease: Lease, reason: str) -> bool:
        """Put a running job back to pending without using an attempt (worker shutdown)."""

        def release(conn: Connection) -> bool:
            changed = conn.execute(
                _fenced(lease).values(
                    status=PENDING,
                    attempt=jobs.c.attempt - 1,
                    run_at=dialects.db_now(),
                    lease_token=None,
                    lease_expires_at=None,
                )
            ).rowcount
            if changed:
                _record_event(conn, lease.job_id, "released", reason)
            return bool(changed)

        return self._run(release)

    def mark_stalled(self, lease: Lease, stalled: bool) -> bool:
        """Show (or clear) that the running attempt has stopped moving."""
        return self._fenced_update(lease, {"stalled_at": dialects.db_now() if stalled else None})

    def cancel_requested(self, job_ids: Sequence[int]) -> set[int]:
        """Which of these running jobs someone asked to cancel."""
        if not job_ids:
            return set()
        query = select(jobs.c.id).where(
            jobs.c.id.in_(list(job_ids)), jobs.c.cancel_requested_at.is_not(None)
        )
        return set(self._run(lambda conn: conn.execute(query).scalars().all(), read_only=True))

    def has_due_jobs(self, queues: Sequence[str] | None) -> bool:
        """Whether a pending job is due now (a burst worker stops when none is)."""
        query = select(jobs.c.id).where(
            jobs.c.status == PENDING, jobs.c.run_at <= dialects.db_now()
        )
        if queues:
            query = query.where(jobs.c.queue.in_(list(queues)))
        return self._run(
            lambda conn: conn.execute(query.limit(1)).first() is not None, read_only=True
        )

    def health_report(self) -> dict[str, Any]:
        """What `doctor` needs to know of the database, its sessions, workers and leases."""
        return self._run(lambda conn: health.report(conn, self.url), read_only=True)

    def listen_for_jobs(self, wake: Callable[[], None], name: str) -> Callable[[], None] | None:
        """Call `wake()` when jobs are enqueued; returns how to stop, or None (poll instead)."""
        return wakeups.listen(self.url, wake, name)

    # ---- worker registry --------------------------------------------------------------------

    def register_worker(self, registration: WorkerRegistration) -> None:
        values = {
            "id": registration.worker_id,
            "host": registration.host,
            "pid": registration.pid,
            "version": registration.version,
            "queues": list(registration.queues) if registration.queues else [],
            "concurrency": registration.concurrency,
            "started_at": dialects.db_now(),
            "last_seen": dialects.db_now(),
        }
        self._run(lambda conn: conn.execute(insert(workers).values(**values)))

    def worker_seen(self, worker_id: str, *, stopped: bool = False) -> None:
        values: dict[str, Any] = {"last_seen": dialects.db_now()}
        if stopped:
            values["stopped_at"] = dialects.db_now()
        statement = update(workers).where(workers.c.id == worker_id).values(**values)
        self._run(lambda conn: conn.execute(statement))

    def gone_workers(self, worker_ids: Sequence[str], silent_seconds: float) -> set[str]:
        """Those of these registered workers that stopped, or have not checked in for
        `silent_seconds` by the database's clock; ids not registered are not among them."""
        if not worker_ids:
            return set()
        query = select(workers.c.id).where(
            workers.c.id.in_(list(worker_ids)),
            or_(
                workers.c.stopped_at.is_not(None),
                workers.c.last_seen < dialects.db_now_plus(-silent_seconds),
            ),
        )
        return set(self._run(lambda conn: conn.execute(query).scalars().all(), read_only=True))

    def record_event(
        self,
        job_id: int,
        kind: str,
        message: str,
        *,
        data: Mapping[str, Any] | None = None,
        worker_id: str | None = None,
    ) -> None:
        self._run(
            lambda conn: _record_event(conn, job_id, kind, message, data=data, worker_id=worker_id)
        )

    # ---- internals ------------------------------------------------------------------------

    def _insert_jobs(self, conn: Connection, rows: list[dict[str, Any]]) -> list[Job]:
        """Insert; the jobs are built from what was sent and what the database set."""
        assigned: Sequence[Sequence[Any]]  # each row's (id, created_at, run_at)
        if len(rows) > 1 and dialects.has_single_writer(conn):
            # SQLAlchemy sends many rows with RETURNING to SQLite one statement each (SQLite does
            # not promise RETURNING's order): insert them in one executemany instead.
            times = _give_times_as_text(conn, rows)
            _insert_jobs_by_driver(conn.dialect, _columns_given(rows)).execute_many(conn, rows)
            last = dialects.last_inserted_id(conn)
            first = last - len(rows) + 1
            assigned = [(first + index, *moments) for index, moments in enumerate(times)]
        elif len(rows) > 1 and dialects.inserts_rows_from_arrays(conn):
            statement, assigned = _insert_jobs_from_arrays(tuple(rows[0])), []
            for start in range(0, len(rows), ROWS_PER_ARRAY_INSERT):
                part = rows[start : start + ROWS_PER_ARRAY_INSERT]
                arrays = {key: [row[key] for row in part] for key in rows[0]}
                # Ids come from the sequence in the SELECT's order; RETURNING's is unpromised.
                assigned += sorted(conn.execute(statement, arrays))
        elif len(rows) == 1 and conn.dialect.insert_returning:
            (row,) = _insert_job_by_driver(conn.dialect, tuple(rows[0])).rows(conn, rows[0])
            assigned = [(row["id"], row["created_at"], row["run_at"])]
        elif conn.dialect.insert_executemany_returning_sort_by_parameter_order:
            assigned = conn.execute(_INSERT_JOB_RETURNING, rows).all()
        else:
            # No RETURNING for many rows here (MySQL 8): insert one by one, still one transaction.
            ids = [conn.execute(_INSERT_JOB, row).lastrowid for row in rows]
            by_id = {
                row.id: row for row in conn.execute(select(*_ASSIGNED).where(jobs.c.id.in_(ids)))
            }
            assigned = [by_id[job_id] for job_id in ids]
        return [_new_job(row, values) for row, values in zip(rows, assigned, strict=True)]

    def _duplicate_error(self, keys: list[str]) -> DuplicateJob:
        if not keys:
            return DuplicateJob("?", None)
        query = select(jobs.c.active_unique_key, jobs.c.id).where(
            jobs.c.active_unique_key.in_(keys)
        )
        holders: dict[str, int] = {
            key: int(job_id)
            for key, job_id in self._run(lambda conn: conn.execute(query).all(), read_only=True)
        }
        for key in keys:
            if key in holders:
                return DuplicateJob(key, holders[key])
        return DuplicateJob(keys[0], None)

    def _fenced_update(self, lease: Lease, values: dict[str, Any]) -> bool:
        statement = _fenced(lease).values(**values)
        return self._run(lambda conn: conn.execute(statement).rowcount == 1)

    def _status_for_update(self, conn: Connection, job_id: int) -> str:
        query = select(jobs.c.status).where(jobs.c.id == job_id)
        if dialects.supports_skip_locked(conn):
            query = query.with_for_update()
        status = conn.execute(query).scalar()
        if status is None:
            raise JobNotFound(job_id)
        return str(status)

    @staticmethod
    def _row(conn: Connection, job_id: int) -> Row[Any]:
        return conn.execute(select(jobs).where(jobs.c.id == job_id)).one()

    @staticmethod
    def _with_diagnoses(conn: Connection, rows: Sequence[Row[Any]]) -> list[Job]:
        """Jobs with their latest stored diagnosis attached (one query for all of them)."""
        ids = [row.id for row in rows]
        latest: dict[int, Mapping[str, Any]] = {}
        if ids:
            query = (
                select(events.c.job_id, events.c.data)
                .where(events.c.job_id.in_(ids), events.c.kind == "diagnosis")
                .order_by(events.c.id)
            )
            latest = {job_id: data for job_id, data in conn.execute(query) if data is not None}
        return [_job_from_row(row, diagnosis=latest.get(row.id)) for row in rows]

    def _run(
        self,
        operation: Callable[[Connection], T],
        *,
        read_only: bool = False,
        retry_commit: bool = True,
        autocommit: bool = False,
    ) -> T:
        """Run `operation` in one transaction, again after a passing failure.

        A failure before the commit is sent leaves nothing behind (the database rolls back),
        so running it again is always safe; a failed commit is run again only with
        `retry_commit`, as its answer may be lost after the database committed it.
        `autocommit`: an operation of one statement, which commits as it runs (no BEGIN and
        COMMIT to wait for); a failure of it counts as a failed commit, so without
        `retry_commit` its connection is looked at first and replaced if the server dropped it.
        """
        committing = False

        def transaction() -> T:
            nonlocal committing
            committing = autocommit
            lender: SharedWriter | Connection
            if self._writer is not None and not read_only and not autocommit:
                lender = self._writer
            else:
                lender = self._engine.connect()
            with lender as conn:
                if autocommit and not retry_commit:
                    dialects.replace_if_dropped(conn)
                if read_only:
                    conn.execution_options(**{dialects.READ_ONLY_OPTION: True})
                if autocommit:
                    conn.execution_options(isolation_level="AUTOCOMMIT")
                self._check_recycle(conn)
                begun = conn.begin()
                result = operation(conn)  # on an error, closing conn rolls back
                committing = True
                begun.commit()
                return result

        return self._attempt(transaction, may_retry=lambda: retry_commit or not committing)

    def _attempt(
        self, transaction: Callable[[], T], *, may_retry: Callable[[], bool] = lambda: True
    ) -> T:
        for delay in (*RETRY_DELAYS_SECONDS, None):
            try:
                return transaction()
            except IntegrityError:
                raise
            except DataError as exc:
                raise _refused(exc) from exc  # the data, not the database: never retried
            except DBAPIError as exc:
                if delay is None or not _is_passing(exc) or not may_retry():
                    raise self._unavailable(exc) from exc
                time.sleep(delay)
        raise AssertionError("unreachable: the last delay is None")

    def _check_recycle(self, conn: Connection) -> None:
        """Recycle pooled connections before the server's wait_timeout closes them."""
        if self._recycle_checked:
            return
        self._recycle_checked = True
        recycle = dialects.recycle_below_wait_timeout(conn)
        conn.rollback()
        if recycle is not None and recycle < self._engine.pool._recycle:
            self._engine.pool._recycle = recycle

    def _unavailable(self, exc: DBAPIError) -> StoreUnavailable:
        reason = " ".join(str(exc.orig).split())
        if dialects.is_missing_table_error(reason) and not self._has_schema():
            return StoreUnavailable(
                f"{self.display_url} has no batchjob schema: run `batchjob init`"
            )
        return StoreUnavailable(f"cannot use the database {self.display_url}: {reason}")

    def _has_schema(self) -> bool:
        try:
            with self._engine.connect() as conn:
                return bool(inspect(conn).has_table(jobs.name))
        except DBAPIError:
            return False


def _fenced(lease: Lease) -> Any:
    """UPDATE of the job that succeeds only while this attempt still holds its lease."""
    return update(jobs).where(
        jobs.c.id == lease.job_id, jobs.c.lease_token == lease.token, jobs.c.status == RUNNING
    )


def _is_unique_key_conflict(exc: IntegrityError) -> bool:
    """The unique index on active_unique_key refused the row (each database words it so)."""
    return "active_unique_key" in str(exc.orig)


def _refused(exc: DBAPIError) -> InvalidInput:
    """The database refused these values (out of range, too long): bad input, not an outage."""
    return InvalidInput(f"the database refused the values: {' '.join(str(exc.orig).split())}")


def _check_id(job_id: int) -> None:
    """An id no BIGINT column can hold is simply not found (not a database error)."""
    if not 0 < job_id < 2**63:
        raise JobNotFound(job_id)


def _is_passing(exc: DBAPIError) -> bool:
    """A failure that running the transaction again may cure."""
    if exc.connection_invalidated or isinstance(exc, OperationalError):
        return not dialects.is_missing_table_error(str(exc.orig))
    code = getattr(exc.orig, "sqlstate", None) or (getattr(exc.orig, "args", None) or [None])[0]
    return str(code) in _RETRYABLE_CODES


def _due_jobs_query(queue_count: int, lock_rows: bool) -> Any:
    """Due pending jobs in claim order, skipping rows other claimers hold and full keys; of
    `queue_count` queues (`_queue_parameters`), or of any when 0.

    Built once per shape, with parameters: building a statement costs more than running it.
    """
    running = jobs.alias("running")
    running_with_same_key = (
        select(func.count())
        .select_from(running)
        .where(running.c.concurrency_key == jobs.c.concurrency_key, running.c.status == RUNNING)
        .scalar_subquery()
    )
    query = (
        select(jobs.c.id, jobs.c.concurrency_key, jobs.c.max_concurrency)
        .where(
            jobs.c.status == PENDING,
            jobs.c.run_at <= dialects.db_now(),
            or_(
                jobs.c.concurrency_key.is_(None),
                running_with_same_key < func.coalesce(jobs.c.max_concurrency, 1),
            ),
        )
        .order_by(jobs.c.priority.desc(), jobs.c.run_at, jobs.c.id)
        .limit(bindparam("candidates", type_=Integer))
    )
    if queue_count:
        query = query.where(
            jobs.c.queue.in_([bindparam(f"queue_{index}") for index in range(queue_count)])
        )
    if lock_rows:
        query = query.with_for_update(skip_locked=True, of=jobs)
    return query


def _claim(conn: Connection, request: ClaimRequest, events: list[_NewEvent]) -> list[ClaimedJob]:
    """Claim due jobs; their "claimed" events go to `events`, for the caller to write."""
    wanted = {
        "candidates": request.limit * CLAIM_CANDIDATE_FACTOR,
        **_queue_parameters(request.queues),
    }
    due = _due_jobs_by_driver(
        conn.dialect, len(request.queues or ()), dialects.supports_skip_locked(conn)
    )
    candidates = [_Candidate(**row) for row in due.rows(conn, wanted)]
    chosen = _admit_within_concurrency(conn, candidates, request.limit)
    if not chosen:
        return []
    token, worker_id = uuid.uuid4().hex, request.worker_id
    granted_at = time.monotonic()
    ids = _id_parameters(chosen)
    values = ids | _lease_parameters(request, token)
    claim, claimed_rows = _claim_by_driver(conn.dialect, len(chosen))
    if claimed_rows is None:  # SQLite, PostgreSQL: RETURNING, one statement, not two
        rows = claim.rows(conn, values)
    else:
        claim.execute(conn, values)
        rows = claimed_rows.rows(conn, ids | {"token": token})
    claimed = {row["id"]: _job_from_columns(row) for row in rows}
    events.extend(
        _NewEvent(
            job.id,
            job.attempt,
            "claimed",
            f"claimed by {worker_id} for attempt {job.attempt}",
            worker_id=worker_id,
        )
        for job in claimed.values()
    )
    return [
        ClaimedJob(claimed[job_id], Lease(job_id, token, claimed[job_id].attempt), granted_at)
        for job_id in chosen
    ]


class _Candidate(NamedTuple):
    """A due job the claim may take, if its concurrency_key has a free slot."""

    id: int
    concurrency_key: str | None
    max_concurrency: int | None


def _queue_parameters(queues: Sequence[str] | None) -> dict[str, str]:
    """What `_due_jobs_query` binds: each queue as a parameter of its own."""
    return {f"queue_{index}": queue for index, queue in enumerate(queues or ())}


def _id_parameters(ids: Sequence[int]) -> dict[str, int]:
    """What `_claim_by_driver`'s statements bind: each job id as a parameter of its own."""
    return {f"id_{index}": job_id for index, job_id in enumerate(ids)}


def _lease_parameters(request: ClaimRequest, token: str) -> dict[str, Any]:
    """What `_claim_update` binds: the new lease and its holder."""
    return {"new_token": token, "seconds": request.lease_timeout, "worker": request.worker_id}


def _claim_by_steps(conn: Connection, request: ClaimRequest) -> list[ClaimedJob]:
    events: list[_NewEvent] = []
    claimed = _claim(conn, request, events)
    _record_events(conn, events)
    return claimed


def _claim_in_one_statement(
    conn: Connection, request: ClaimRequest, ending: tuple[Lease, Outcome] | None
) -> tuple[bool, list[ClaimedJob] | None]:
    """PostgreSQL: the claim, its events and (`ending`) the outcome of the slot's last
    attempt, in one statement. Returns whether the outcome was recorded, and the claimed
    jobs; None when one of the next due jobs has a concurrency_key, whose lock and count
    need `_claim`'s steps (the outcome is recorded all the same)."""
    token, granted_at = uuid.uuid4().hex, time.monotonic()
    values = {
        "candidates": request.limit,
        **_queue_parameters(request.queues),
        **_lease_parameters(request, token),
    }
    finish: tuple[tuple[str, ...], JobStatus, bool] | None = None
    if ending is not None:
        lease, outcome = ending
        columns, finish_values = _outcome_values(lease, outcome)
        values.update(finish_values, ended_attempt=lease.attempt, evidence=outcome.evidence)
        finish = (columns, outcome.status, outcome.evidence is not None)
    statement = _claim_in_one_statement_of(conn.dialect, len(request.queues or ()), finish)
    rows = statement.rows(conn, values)
    recorded = ending is None or bool(rows[0]["recorded"])
    if rows[0]["keyed"]:
        return recorded, None
    return recorded, [
        ClaimedJob(job, Lease(job.id, token, job.attempt), granted_at)
        for job in (_job_from_columns(row) for row in rows if row["id"] is not None)
    ]


def _finish(conn: Connection, lease: Lease, outcome: Outcome, events: list[_NewEvent]) -> bool:
    """Record the outcome if the lease still holds; its "attempt" event goes to `events`."""
    columns, values = _outcome_values(lease, outcome)
    statement = _finish_by_driver(conn.dialect, columns, outcome.status)
    if statement.execute(conn, values) != 1:
        return False
    if outcome.evidence is not None:
        events.append(
            _NewEvent(lease.job_id, lease.attempt, "attempt", ATTEMPT_ENDED, outcome.evidence)
        )
    return True


def _outcome_values(lease: Lease, outcome: Outcome) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The columns an outcome sets (the shape of its `_finish_statement`) and the statement's
    parameters."""
    values: dict[str, Any] = {
        "status": outcome.status.value,
        "exit_code": outcome.exit_code,
        "signal": outcome.signal,
        "failure_reason": outcome.failure_reason.value if outcome.failure_reason else None,
        "error_summary": outcome.error_summary,
        "hint": outcome.hint,
        "peak_rss_bytes": outcome.peak_rss_bytes,
        "peak_open_fds": outcome.peak_open_fds,
    }
    if outcome.started is not None:
        values["pid"], values["log_path"] = outcome.started
    if outcome.progress is not None:
        message, current, total = outcome.progress
        values.update(progress_message=message, progress_current=current, progress_total=total)
    if outcome.status == JobStatus.PENDING:
        values["retry_delay"] = outcome.retry_delay or 0.0
    elif not outcome.status.is_finished:
        raise ValueError(f"an attempt cannot finish as {outcome.status}")
    parameters = {_OUTCOME_PARAMETER + column: value for column, value in values.items()}
    return tuple(values), parameters | {"job_id": lease.job_id, "token": lease.token}


ATTEMPT_ENDED = "the attempt ended"  # the message of an attempt's "attempt" event

# Named apart from the columns: SQLAlchemy gives an UPDATE a SET for each parameter named as
# one of its columns, and the claim's UPDATE shares its statement with the outcome's.
_OUTCOME_PARAMETER = "outcome_"


def _admit_within_concurrency(
    conn: Connection, candidates: Sequence[_Candidate], limit: int
) -> list[int]:
    """The candidates that fit their concurrency_key's free slots, in claim order.

    The key's lock row is held until the claim commits, so a concurrent claimer counts the
    jobs this one admits.
    """
    keys = sorted({row.concurrency_key for row in candidates if row.concurrency_key is not None})
    running: dict[str, int] = {}
    if keys:
        conn.execute(
            dialects.insert_ignoring_duplicates(conn, concurrency_locks),
            [{"concurrency_key": key} for key in keys],
        )
        lock = (
            select(concurrency_locks.c.concurrency_key)
            .where(concurrency_locks.c.concurrency_key.in_(keys))
            .order_by(concurrency_locks.c.concurrency_key)
        )
        if dialects.supports_skip_locked(conn):
            lock = lock.with_for_update()
        conn.execute(lock).all()
        counts = conn.execute(
            select(jobs.c.concurrency_key, func.count())
            .where(jobs.c.concurrency_key.in_(keys), jobs.c.status == RUNNING)
            .group_by(jobs.c.concurrency_key)
        ).all()
        running = {key: int(count) for key, count in counts}
    chosen: list[int] = []
    for row in candidates:
        if row.concurrency_key is not None:
            in_use = running.get(row.concurrency_key, 0)
            if in_use >= (row.max_concurrency or 1):
                continue
            running[row.concurrency_key] = in_use + 1
        chosen.append(row.id)
        if len(chosen) == limit:
            break
    return chosen


def _finished_values() -> dict[str, Any]:
    """Columns every move into an end state sets: the end time and the released unique_key."""
    return {"completed_at": dialects.db_now(), "active_unique_key": null()}


def _cleared_result_values() -> dict[str, Any]:
    """NULL in the SQL text, not as parameters: shorter statements, fewer parameters."""
    return dict.fromkeys(("exit_code", "signal", "failure_reason", "error_summary", "hint"), null())


@functools.cache
def _due_jobs_by_driver(dialect: Dialect, queue_count: int, lock_rows: bool) -> DriverStatement:
    return DriverStatement.compile(_due_jobs_query(queue_count, lock_rows), dialect)


def _claim_update(target: Any, chosen: Callable[[Any], ColumnElement[bool]]) -> Any:
    """The UPDATE that starts an attempt of the `chosen` pending jobs under a new lease
    (`target`: the jobs table or an alias of it)."""
    return (
        update(target)
        .where(chosen(target), target.c.status == PENDING)
        .values(
            status=RUNNING,
            attempt=target.c.attempt + 1,
            lease_token=bindparam("new_token"),
            lease_expires_at=dialects.db_now_plus(bindparam("seconds", type_=Float)),
            started_at=dialects.db_now(),
            worker_id=bindparam("worker"),
            pid=null(),
            stalled_at=null(),
            progress_message=null(),
            progress_current=null(),
            progress_total=null(),
            **_cleared_result_values(),
        )
    )


@functools.cache
def _claim_by_driver(
    dialect: Dialect, count: int
) -> tuple[DriverStatement, DriverStatement | None]:
    """The UPDATE that claims `count` chosen jobs (`_id_parameters`), returning their rows;
    where UPDATE cannot return rows (MariaDB), the SELECT that reads them after it."""
    ids: list[Any] = [bindparam(f"id_{index}") for index in range(count)]
    claim = _claim_update(jobs, lambda target: target.c.id.in_(ids))
    if dialect.update_returning:
        return DriverStatement.compile(claim.returning(*jobs.c), dialect), None
    claimed = select(jobs).where(jobs.c.id.in_(ids), jobs.c.lease_token == bindparam("token"))
    return DriverStatement.compile(claim, dialect), DriverStatement.compile(claimed, dialect)


@functools.cache
def _claim_in_one_statement_of(
    dialect: Dialect, queue_count: int, finish: tuple[tuple[str, ...], JobStatus, bool] | None
) -> DriverStatement:
    """PostgreSQL: lock the next due jobs, start their attempts and write their "claimed"
    events, in one statement, only if none of them has a concurrency_key; with `finish`
    (columns, status, with evidence), record an ended attempt's outcome (and its "attempt"
    event) in it too. One row at least: `recorded` (with `finish`) whether the outcome was
    taken, `keyed` how many of the locked jobs have a key (then none was claimed), and a
    claimed job's columns (all NULL when none was due).

    One round trip where the steps took five: on a machine the jobs keep busy, each round
    trip waited for the database's process to get a CPU. The jobs it claims are due in the
    statement's snapshot, where the attempt it ends is still running: a job is never ended
    and claimed again in one statement, so each job's events stay in their order.
    """
    due = _due_jobs_query(queue_count, lock_rows=True).cte("due")
    keyed = (
        select(func.count().label("keyed"))
        .select_from(due)
        .where(due.c.concurrency_key.is_not(None))
        .cte("keyed")
    )
    # Aliased: RETURNING's 43 columns as "job.x", not "batch_job_queue.x", keep the claim's
    # statement under the 4,096 characters psycopg caches the parsed form of (with an
    # outcome it is longer: parsed each time, 70 us).
    job = jobs.alias("job")
    claimed = (
        _claim_update(
            job,
            lambda target: and_(
                target.c.id.in_(select(due.c.id)), select(keyed.c.keyed).scalar_subquery() == 0
            ),
        )
        .returning(*job.c)
        .cte("claimed")
    )
    worker = bindparam("worker", type_=String)
    new_events = select(
        claimed.c.id,
        claimed.c.attempt,
        literal("claimed"),
        dialects.db_now(),
        worker,
        func.concat("claimed by ", worker, " for attempt ", claimed.c.attempt),
        null(),
    )
    outcome: list[Any] = []
    if finish is not None:
        columns, status, with_evidence = finish
        finished = _finish_statement(columns, status).returning(jobs.c.id).cte("finished")
        outcome.append(
            select(func.count()).select_from(finished).scalar_subquery().label("recorded")
        )
        if with_evidence:
            ended = select(
                finished.c.id,
                bindparam("ended_attempt", type_=Integer),
                literal("attempt"),
                dialects.db_now(),
                null(),
                literal(ATTEMPT_ENDED),
                bindparam("evidence", type_=events.c.data.type),
            )
            new_events = union_all(ended, new_events)  # type: ignore[assignment]
    logged = insert(events).from_select(
        ["job_id", "attempt", "kind", "at", "worker_id", "message", "data"], new_events
    )
    statement = (
        select(*outcome, keyed.c.keyed, *claimed.c)
        .select_from(keyed.outerjoin(claimed, true()))
        .order_by(claimed.c.priority.desc(), claimed.c.run_at, claimed.c.id)
        .add_cte(logged.cte("logged"))
    )
    return DriverStatement.compile(statement, dialect)


@functools.cache
def _finish_statement(columns: tuple[str, ...], status: JobStatus) -> Any:
    """The UPDATE that records an outcome setting `columns`; built once per shape.

    A retry's `retry_delay` sets run_at. A success is taken also after a rescue, until the
    job is claimed again: it ran to success once, and running it again would only repeat its
    work. Any other outcome needs the lease still held.
    """
    values: dict[str, Any] = {
        column: bindparam(_OUTCOME_PARAMETER + column, type_=jobs.c[column].type)
        for column in columns
        if column != "retry_delay"
    }
    values.update(lease_token=null(), lease_expires_at=null(), stalled_at=null())
    if status == JobStatus.PENDING:
        retry_delay = bindparam(_OUTCOME_PARAMETER + "retry_delay", type_=Float)
        values["run_at"] = dialects.db_now_plus(retry_delay)
    else:
        values.update(_finished_values())
    alive = (RUNNING, PENDING) if status == JobStatus.COMPLETED else (RUNNING,)
    return (
        update(jobs)
        .where(
            jobs.c.id == bindparam("job_id"),
            jobs.c.lease_token == bindparam("token"),
            or_(*(jobs.c.status == state for state in alive)),  # not IN: no expanding list
        )
        .values(values)
    )


@functools.cache
def _finish_by_driver(
    dialect: Dialect, columns: tuple[str, ...], status: JobStatus
) -> DriverStatement:
    return DriverStatement.compile(_finish_statement(columns, status), dialect)


def _insert_parameters(new_job: NewJob) -> dict[str, Any]:
    return {
        "queue": new_job.queue,
        "task": new_job.task,
        "command": list(new_job.command),
        "params": dict(new_job.params),
        "env": dict(new_job.env),
        "cwd": new_job.cwd,
        "tags": list(new_job.tags),
        "status": PENDING,
        "priority": new_job.priority,
        "attempt": 0,
        "max_attempts": new_job.max_attempts,
        "run_at_given": new_job.run_at,
        "delay_seconds": float(new_job.delay),
        "unique_key": new_job.unique_key,
        "active_unique_key": new_job.unique_key,
        "concurrency_key": new_job.concurrency_key,
        "max_concurrency": new_job.max_concurrency,
        "timeout": new_job.timeout,
        "stall_timeout": new_job.stall_timeout,
        "stall_action": new_job.stall_action,
        "retry_backoff": new_job.retry_backoff,
        "memory_limit": new_job.memory_limit,
    }


def _run_at(given: Any, delay_seconds: Any) -> Any:
    """A new job's due time: the run_at given, else the database clock plus its delay."""
    return func.coalesce(given, dialects.db_now_plus(delay_seconds))


# The insert's parameters that are no column: what `_run_at` makes the job's run_at of.
_SCHEDULE_PARAMETERS: dict[str, TypeEngine[Any]] = {
    "run_at_given": Moment(),
    "delay_seconds": Float(),
}
_INSERT_JOB = insert(jobs).values(
    created_at=dialects.db_now(),
    run_at=_run_at(*(bindparam(name, type_=type_) for name, type_ in _SCHEDULE_PARAMETERS.items())),
)
# Only what the database sets comes back: decoding every JSON column of every new row again
# was a quarter of a bulk enqueue's time.
_ASSIGNED = (jobs.c.id, jobs.c.created_at, jobs.c.run_at)
_INSERT_JOB_RETURNING = _INSERT_JOB.returning(*_ASSIGNED, sort_by_parameter_order=True)


@functools.cache
def _insert_job_by_driver(dialect: Dialect, keys: tuple[str, ...]) -> DriverStatement:
    """`_INSERT_JOB_RETURNING` compiled for one job (the same SQL as SQLAlchemy sends)."""
    return DriverStatement.compile(_INSERT_JOB_RETURNING, dialect, keys)


# SQLite's bulk: its times bound as the text SQLite keeps them in (`_give_times_as_text`).
_INSERT_JOB_AT_GIVEN_TIMES = insert(jobs).values(
    created_at=bindparam("created_at", type_=String()),
    run_at=bindparam("run_at", type_=String()),
)


def _columns_given(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """SQLite's bulk insert's columns: the rows' own, less those NULL in every row.

    Python 3.11's sqlite3 binds a None through its adapter lookup, 0.3 us a parameter where an
    int takes 0.05: sqlite3 inserted a job's row in 7.4-8.8 us with the 11 options most jobs
    leave unset, 3.7-3.9 without; this check costs 0.25 us a job. A column left out is NULL
    by its table's default all the same.
    """
    unset = {
        key
        for key, value in rows[0].items()
        if value is None
        and key in _NULL_BY_DEFAULT
        and list(map(itemgetter(key), rows)).count(None) == len(rows)
    }
    return tuple(key for key in rows[0] if key not in unset and key not in _SCHEDULE_PARAMETERS)


# The insert's nullable columns with no default: left out, each is NULL as given.
_NULL_BY_DEFAULT = frozenset(
    column.key
    for column in jobs.columns
    if column.nullable and column.default is None and column.server_default is None
)


@functools.cache
def _insert_jobs_by_driver(dialect: Dialect, keys: tuple[str, ...]) -> DriverStatement:
    """SQLite's bulk insert, compiled: many rows as tuples, in one executemany."""
    return DriverStatement.compile(_INSERT_JOB_AT_GIVEN_TIMES, dialect, keys)


def _give_times_as_text(
    conn: Connection, rows: list[dict[str, Any]]
) -> list[tuple[datetime, datetime]]:
    """SQLite's bulk: set each row's created_at and run_at, as text, from one reading of the
    database's clock; returns them as datetimes. SQLite's date functions for every row and
    reading the times back cost 26,000 of a bulk-enqueued job's 226,000 instructions.

    A row without a run_at or delay (most) shares the one text: no formatting per row.
    """
    now_text = conn.execute(select(type_coerce(dialects.db_now(), String))).scalar_one()
    now = datetime.fromisoformat(now_text)
    as_text = Moment().dialect_impl(conn.dialect).bind_processor(conn.dialect)
    assert as_text is not None, "SQLite keeps times as text"
    times = []
    for row in rows:
        given, delay = row["run_at_given"], row["delay_seconds"]
        if given is None and not delay:
            run_at, run_at_text = now, now_text
        else:
            run_at = given if given is not None else now + timedelta(seconds=delay)
            run_at_text = as_text(run_at)
        row["created_at"], row["run_at"] = now_text, run_at_text
        times.append((now, run_at))
    return times


@functools.cache
def _insert_jobs_from_arrays(keys: tuple[str, ...]) -> Any:
    """`_INSERT_JOB` for PostgreSQL's bulk: the rows from one array per key, in their order."""
    given = dialects.unnest_rows(
        {
            key: _SCHEDULE_PARAMETERS[key] if key in _SCHEDULE_PARAMETERS else jobs.c[key].type
            for key in keys
        },
        position="position",
    )
    columns = [key for key in keys if key not in _SCHEDULE_PARAMETERS]
    rows = select(
        *(given.c[column] for column in columns),
        _run_at(given.c.run_at_given, given.c.delay_seconds),
        dialects.db_now(),
    ).order_by(given.c.position)
    return (
        insert(jobs)
        .from_select([*columns, jobs.c.run_at, jobs.c.created_at], rows)
        .returning(*_ASSIGNED)
    )


def _new_job(parameters: dict[str, Any], assigned: Sequence[Any]) -> Job:
    """The Job just inserted with `parameters`, as `get` would read it back.

    Its fields are set on a copy of a new job's: merging the fields' defaults with the
    parameters (three of which are no field) made a dict twice the size of its 42 fields
    (1,584 bytes, not 832), and a bulk enqueue builds them by the ten thousand.
    """
    values = _NEW_JOB_FIELDS.copy()
    values.update(zip(_JOB_FIELDS_GIVEN, _job_fields_given(parameters), strict=True))
    values["id"], values["created_at"], values["run_at"] = assigned
    return Job.from_fields(values)


def _reject_duplicate_keys_within(new_jobs: Sequence[NewJob]) -> None:
    seen: set[str] = set()
    for new_job in new_jobs:
        if new_job.unique_key is None:
            continue
        if new_job.unique_key in seen:
            raise DuplicateJob(new_job.unique_key, None)
        seen.add(new_job.unique_key)


def _record_event(
    conn: Connection,
    job_id: int,
    kind: str,
    message: str,
    *,
    data: Mapping[str, Any] | None = None,
    worker_id: str | None = None,
) -> None:
    conn.execute(
        _INSERT_EVENT_OF_CURRENT_ATTEMPT,
        {
            "job_id": job_id,
            "of_job": job_id,
            "kind": kind,
            "message": message,
            "data": dict(data) if data is not None else None,
            "worker_id": worker_id,
        },
    )


_INSERT_EVENT_OF_CURRENT_ATTEMPT = insert(events).values(
    at=dialects.db_now(),
    attempt=func.coalesce(
        select(jobs.c.attempt).where(jobs.c.id == bindparam("of_job")).scalar_subquery(), 0
    ),
)


class _NewEvent(NamedTuple):
    """A line of a job's history, written with the others of its transaction in one INSERT."""

    job_id: int
    attempt: int
    kind: str
    message: str
    data: Mapping[str, Any] | None = None
    worker_id: str | None = None


def _record_events(conn: Connection, entries: Sequence[_NewEvent]) -> None:
    """One INSERT of many rows, not an executemany: PyMySQL sends that a statement a row."""
    for start in range(0, len(entries), EVENTS_PER_INSERT):
        part = entries[start : start + EVENTS_PER_INSERT]
        values = {
            f"{field}_{index}": value
            for index, entry in enumerate(part)
            for field, value in zip(_NewEvent._fields, entry, strict=True)
        }
        _insert_events_by_driver(conn.dialect, len(part)).execute(conn, values)


@functools.cache
def _insert_events_by_driver(dialect: Dialect, count: int) -> DriverStatement:
    rows = [
        {
            "at": dialects.db_now(),
            **{
                field: bindparam(f"{field}_{index}", type_=events.c[field].type)
                for field in _NewEvent._fields
            },
        }
        for index in range(count)
    ]
    return DriverStatement.compile(insert(events).values(rows), dialect)


def _job_from_row(row: Row[Any], diagnosis: Mapping[str, Any] | None = None) -> Job:
    return _job_from_columns(row._mapping, diagnosis)


def _job_from_columns(
    columns: Mapping[Any, Any], diagnosis: Mapping[str, Any] | None = None
) -> Job:
    """A Job from its row's columns: those of the same names, with their Python types."""
    values = {name: columns[name] for name in _JOB_COLUMNS}
    values.update(
        command=list(values["command"]),
        status=JobStatus(values["status"]),
        failure_reason=FailureReason(values["failure_reason"])
        if values["failure_reason"]
        else None,
        params=values["params"] or {},
        env=values["env"] or {},
        tags=list(values["tags"] or []),
        timeout=_seconds(values["timeout"]),
        stall_timeout=_seconds(values["stall_timeout"]),
        retry_backoff=_seconds(values["retry_backoff"]),
        diagnosis=diagnosis,
    )
    return Job.from_fields(values)


_JOB_COLUMNS = [field.name for field in fields(Job) if field.name != "diagnosis"]
# Every field of a job just enqueued, as far as the insert's parameters do not set it.
_NEW_JOB_FIELDS = {
    field.name: None if field.default is MISSING else field.default for field in fields(Job)
} | {"status": JobStatus.PENDING}
# The insert's parameters that are the job's fields as they are (its status is a text there).
_JOB_FIELDS_GIVEN = tuple(
    name
    for name in _insert_parameters(NewJob(command=()))
    if name in _NEW_JOB_FIELDS and name != "status"
)
_job_fields_given = itemgetter(*_JOB_FIELDS_GIVEN)


def _seconds(value: float | None) -> float | None:
    """Durations as floats on every database (SQLite may hand back an int)."""
    return None if value is None else float(value)


def _event_from_row(row: Row[Any]) -> Event:
    return Event(
        id=row.id,
        job_id=row.job_id,
        attempt=row.attempt,
        kind=row.kind,
        at=row.at,
        message=row.message,
        worker_id=row.worker_id,
        data=row.data,
    )


def _json_dumps(value: Any) -> str:
    """Store JSON as readable UTF-8 (第六竹石, not \\u7b2c...), unless it holds an unpaired
    surrogate (undecodable bytes in an inherited environment): then escape everything."""
    if not value and isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"  # most params, env and tags
    text = _encode(value)
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value)
    return text


def _encode(value: Any) -> str:
    """`value` as `_encode_readable` writes it; a list of strings (a command, tags) in a third
    of its instructions (4,300 against 13,300 for one argument), as that builds an encoder at
    each call."""
    if type(value) is list:
        try:
            return "[" + ", ".join(map(_encode_string, value)) + "]"
        except TypeError:  # an item that is no string
            pass
    return _encode_readable(value)


# Made once: json.dumps(value, ensure_ascii=False) builds a new encoder at every call, which
# took five times as long as encoding a job's command.
_encode_readable = json.JSONEncoder(ensure_ascii=False).encode
# What that encoder writes for one string (`"`, the string escaped, `"`), in C.
_encode_string = json.encoder.encode_basestring


__all__ = ["ClaimedJob", "Lease", "Outcome", "Store", "WorkerRegistration"]
