"""Ordered, named, idempotent schema steps; `batchjob init` applies the missing ones.

Step 1 creates the tables as `schema.py` describes them. A later change to a table adds a
step that alters it only where the change is missing, so that a database created by any
earlier version reaches the same schema.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    MetaData,
    String,
    Table,
    func,
    insert,
    inspect,
    select,
)

from batchjob.store import schema
from batchjob.store.dialects import db_now, migration_lock, notify_on_insert
from batchjob.store.wakeups import CHANNEL


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection], None]


def _create_tables(connection: Connection) -> None:
    schema.metadata.create_all(connection, checkfirst=True)


def _notify_workers_on_insert(connection: Connection) -> None:
    notify_on_insert(connection, schema.jobs, CHANNEL)


def _partial_indexes(connection: Connection) -> None:
    """SQLite, PostgreSQL: the indexes of columns a new job leaves unset hold only the rows
    that set them. Rebuilt here, in the step's transaction, from an earlier version's over
    every row; a new database's, empty, are rebuilt in no time. Writes to the jobs table
    wait while it builds."""
    if connection.dialect.name not in ("sqlite", "postgresql"):
        return
    for index in schema.PARTIAL_INDEXES:
        index.drop(connection, checkfirst=True)
        index.create(connection)


# Earlier versions' index of the jobs by status and start, on a table of its own: attached to
# schema.jobs, create_all would make it again.
_EARLIER_JOBS = Table(
    schema.jobs.name, MetaData(), Column("status", String(16)), Column("started_at", DateTime)
)
RUNNING_START_INDEX = Index(
    "ix_batch_job_queue_started", _EARLIER_JOBS.c.status, _EARLIER_JOBS.c.started_at
)


def _drop_running_start_index(connection: Connection) -> None:
    """Every job entered this index twice (its claim and its end), for one query: the health
    report's running jobs, a few rows (a slot's each) that the claim index finds and a sort
    orders. On SQLite a job's transaction wrote 1.2 pages fewer without it (11.8 -> 10.6)."""
    RUNNING_START_INDEX.drop(connection, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create job, worker and event tables", _create_tables),
    Migration(
        2, "PostgreSQL: the jobs table NOTIFYs workers of new rows", _notify_workers_on_insert
    ),
    Migration(
        3, "SQLite, PostgreSQL: indexes over the rows that set their column", _partial_indexes
    ),
    Migration(4, "no index of the jobs by status and start", _drop_running_start_index),
)
LATEST_VERSION = MIGRATIONS[-1].version


def current_version(connection: Connection) -> int:
    """The newest applied step, 0 for a database batchjob has never touched."""
    if not inspect(connection).has_table(schema.schema_versions.name):
        return 0
    newest = connection.execute(select(func.max(schema.schema_versions.c.version))).scalar()
    return int(newest or 0)


def upgrade(engine: Engine) -> tuple[int, int]:
    """Apply every missing step, each in its own transaction; returns (from, to) versions."""
    with engine.connect() as connection, migration_lock(connection):
        start = None
        while True:
            # Read the version inside the step's own transaction: on SQLite that transaction
            # is the lock that keeps a concurrent `init` from applying the same step.
            version = current_version(connection)
            start = version if start is None else start
            if version >= LATEST_VERSION:
                connection.commit()
                return start, version
            step = MIGRATIONS[version]
            step.apply(connection)
            connection.execute(
                insert(schema.schema_versions).values(
                    version=step.version, name=step.name, applied_at=db_now()
                )
            )
            connection.commit()
