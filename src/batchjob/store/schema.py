"""The tables, with the names of the system batchjob replaces, and the indexes claims rely on.

Times are naive UTC, written by the database clock (see `dialects.db_now`). MySQL/MariaDB get
microsecond DATETIME(6) and utf8mb4 so that `第六竹石` and sub-second leases round-trip (the
table options are added in dialects.py: `mysql_*` keywords here would import the MySQL
dialect into every process, whatever its database).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.types import TypeEngine

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY, so ids are BIGINT everywhere else.
JobId = BigInteger().with_variant(Integer(), "sqlite")


class Moment(TypeDecorator[datetime]):
    """DATETIME(6) on MySQL/MariaDB, the plain DateTime elsewhere. Not `with_variant`: that
    needs the MySQL dialect imported (about 1 MiB of RSS) by every process, whatever its
    database."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import DATETIME

            return dialect.type_descriptor(DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())


jobs = Table(
    "batch_job_queue",
    metadata,
    Column("id", JobId, primary_key=True, autoincrement=True),
    Column("queue", String(128), nullable=False),
    Column("task", String(255)),
    Column("command", JSON, nullable=False),
    Column("params", JSON, nullable=False),
    Column("env", JSON, nullable=False),
    Column("cwd", Text),
    Column("tags", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    # Attempts that ended because their worker vanished; too many = a suspected poison pill.
    Column("lost_attempts", Integer, nullable=False, server_default="0"),
    Column("run_at", Moment, nullable=False),
    # unique_key is kept for history; active_unique_key holds it only while the job is pending
    # or running, and its unique index is what makes two enqueues with one key impossible on
    # every database (a partial index on unique_key's active rows would need one MariaDB lacks).
    Column("unique_key", String(255)),
    Column("active_unique_key", String(255)),
    Column("concurrency_key", String(255)),
    Column("max_concurrency", Integer),
    Column("timeout", Float),
    Column("stall_timeout", Float),
    Column("stall_action", String(16)),
    Column("retry_backoff", Float),
    Column("memory_limit", BigInteger),
    Column("progress_message", Text),
    Column("progress_current", BigInteger),
    Column("progress_total", BigInteger),
    Column("created_at", Moment, nullable=False),
    Column("started_at", Moment),
    Column("completed_at", Moment),
    Column("cancel_requested_at", Moment),
    # Set while the running attempt shows no output, progress or CPU (see runner stall_timeout).
    Column("stalled_at", Moment),
    Column("lease_token", String(36)),
    Column("lease_expires_at", Moment),
    Column("worker_id", String(255)),
    Column("pid", Integer),
    Column("exit_code", Integer),
    Column("signal", Integer),
    Column("failure_reason", String(32)),
    Column("error_summary", Text),
    Column("hint", Text),
    Column("log_path", Text),
    Column("peak_rss_bytes", BigInteger),
    Column("peak_open_fds", Integer),
)
# Claim: the pending rows in claim order, so the first due rows are found without a sort.
Index(
    "ix_batch_job_queue_claim",
    jobs.c.status,
    jobs.c.priority.desc(),
    jobs.c.run_at,
    jobs.c.id,
)
Index("ix_batch_job_queue_queue", jobs.c.queue, jobs.c.status)


# An index whose `info` names a column here holds only the rows that set it, on the databases
# with partial indexes (SQLite, PostgreSQL; dialects.py adds the WHERE, as `sqlite_where` or
# `postgresql_where` would import both dialects into every process). A new job sets none of
# these columns, so its INSERT skips their indexes. Both planners use such an index for any
# `=` or `<` on the column, even to a bound parameter. MariaDB indexes every row.
ONLY_WHERE_SET = "only_where_set"

# Rescue: running rows by lease expiry (a lease is set only while its job runs).
Index(
    "ix_batch_job_queue_lease",
    jobs.c.status,
    jobs.c.lease_expires_at,
    info={ONLY_WHERE_SET: "lease_expires_at"},
)
# Finished rows by completion time (`WHERE status = 'failed' AND completed_at < ?`).
Index(
    "ix_batch_job_queue_completed",
    jobs.c.status,
    jobs.c.completed_at,
    info={ONLY_WHERE_SET: "completed_at"},
)
Index(
    "ix_batch_job_queue_concurrency",
    jobs.c.concurrency_key,
    jobs.c.status,
    info={ONLY_WHERE_SET: "concurrency_key"},
)
Index(
    "ux_batch_job_queue_active_unique_key",
    jobs.c.active_unique_key,
    unique=True,
    info={ONLY_WHERE_SET: "active_unique_key"},
)
# Those indexes, which `batchjob init` rebuilds where an earlier version made them whole.
PARTIAL_INDEXES = tuple(index for index in jobs.indexes if ONLY_WHERE_SET in index.info)

workers = Table(
    "batch_job_workers",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", String(64), nullable=False),
    Column("queues", JSON, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("started_at", Moment, nullable=False),
    Column("last_seen", Moment, nullable=False),
    Column("stopped_at", Moment),
)

events = Table(
    "batch_job_events",
    metadata,
    Column("id", JobId, primary_key=True, autoincrement=True),
    Column("job_id", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("at", Moment, nullable=False),
    Column("worker_id", String(255)),
    Column("message", Text, nullable=False),
    Column("data", JSON),
    Index("ix_batch_job_events_job", "job_id", "id"),
)

# One row per concurrency_key, locked by a claim so that two workers cannot both admit the
# last free slot of a key (the pending rows they lock are different rows).
concurrency_locks = Table(
    "batch_job_concurrency",
    metadata,
    Column("concurrency_key", String(255), primary_key=True),
)

schema_versions = Table(
    "batch_job_schema",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(255), nullable=False),
    Column("applied_at", Moment, nullable=False),
)
