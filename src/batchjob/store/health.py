"""What `batchjob doctor` asks of the database: one read-only look, every query written here.

`report` runs inside the store's read-only transaction. Ages are measured by the database
clock, the clock that judges leases. Server catalogs (InnoDB, pg_stat_activity) are read
inside a savepoint: a user without the privilege to read them gets an entry in
`catalog_errors` instead of a failed report.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, TextClause, func, select, text
from sqlalchemy.engine import URL, RowMapping
from sqlalchemy.exc import DBAPIError

from batchjob.model import JobStatus
from batchjob.store import dialects, migrations
from batchjob.store.schema import jobs, workers

# A transaction open this long holds row locks and old row versions worth naming.
LONG_TRANSACTION_SECONDS = 60
# Rows per list: enough to name the culprits, bounded however large the tables grow.
ROW_LIMIT = 100

# Transactions in this database open longer than :seconds, oldest first, not our own.
_MYSQL_LONG_TRANSACTIONS = text(
    """
    SELECT t.trx_mysql_thread_id AS connection_id, t.trx_state AS state,
           t.trx_query AS query, TIMESTAMPDIFF(SECOND, t.trx_started, NOW()) AS seconds
    FROM information_schema.innodb_trx t
    JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id
    WHERE t.trx_started < NOW() - INTERVAL :seconds SECOND
      AND t.trx_mysql_thread_id <> CONNECTION_ID()
      AND p.db = DATABASE()
    ORDER BY t.trx_started
    LIMIT :limit
    """
)
_POSTGRESQL_LONG_TRANSACTIONS = text(
    """
    SELECT pid AS connection_id, state, query,
           CAST(EXTRACT(EPOCH FROM clock_timestamp() - xact_start) AS double precision)
               AS seconds
    FROM pg_stat_activity
    WHERE datname = current_database()
      AND pid <> pg_backend_pid()
      AND xact_start < clock_timestamp() - :seconds * interval '1 second'
    ORDER BY xact_start
    LIMIT :limit
    """
)
# Who waits for whom: one row per (waiting, blocking) connection pair where either side
# works in this database, the longest wait first. MariaDB keeps the pairs in
# information_schema, MySQL 8 in performance_schema; the rest of the query is the same.
_MYSQL_LOCK_WAITS = """
    SELECT r.trx_mysql_thread_id AS waiting_id, b.trx_mysql_thread_id AS blocking_id,
           r.trx_query AS waiting_query, b.trx_query AS blocking_query,
           TIMESTAMPDIFF(SECOND, r.trx_wait_started, NOW()) AS seconds
    FROM {pairs} w
    JOIN information_schema.innodb_trx r ON r.trx_id = w.{requesting}
    JOIN information_schema.innodb_trx b ON b.trx_id = w.{blocking}
    WHERE DATABASE() IN (
        SELECT p.db FROM information_schema.processlist p
        WHERE p.id IN (r.trx_mysql_thread_id, b.trx_mysql_thread_id)
    )
    ORDER BY r.trx_wait_started
    LIMIT :limit
"""
_LOCK_WAIT_QUERIES = {
    "mariadb": text(
        _MYSQL_LOCK_WAITS.format(
            pairs="information_schema.innodb_lock_waits",
            requesting="requesting_trx_id",
            blocking="blocking_trx_id",
        )
    ),
    "mysql": text(
        _MYSQL_LOCK_WAITS.format(
            pairs="performance_schema.data_lock_waits",
            requesting="REQUESTING_ENGINE_TRANSACTION_ID",
            blocking="BLOCKING_ENGINE_TRANSACTION_ID",
        )
    ),
    # A lock not granted, paired with every session pg_blocking_pids() says holds it up.
    "postgresql": text(
        """
        SELECT DISTINCT waiting.pid AS waiting_id, blocking.pid AS blocking_id,
               waiting.query AS waiting_query, blocking.query AS blocking_query,
               CAST(EXTRACT(EPOCH FROM clock_timestamp() - waiting.query_start)
                    AS double precision) AS seconds
        FROM pg_locks l
        JOIN pg_stat_activity waiting ON waiting.pid = l.pid
        CROSS JOIN LATERAL unnest(pg_blocking_pids(l.pid)) AS blocker(pid)
        JOIN pg_stat_activity blocking ON blocking.pid = blocker.pid
        WHERE NOT l.granted
          AND current_database() IN (waiting.datname, blocking.datname)
        ORDER BY seconds DESC
        LIMIT :limit
        """
    ),
}
# The jobs table's vacuum state. PostgreSQL keeps an updated or deleted row's old version,
# and its index entries, until a vacuum; a claim steps over those of the jobs claimed,
# finished and deleted before it.
_POSTGRESQL_VACUUM = text(
    """
    SELECT current_setting('autovacuum') AS server_autovacuum,
           (SELECT option_value FROM pg_options_to_table(c.reloptions)
            WHERE option_name = 'autovacuum_enabled') AS table_autovacuum,
           s.n_live_tup AS live_rows, s.n_dead_tup AS dead_rows,
           GREATEST(s.last_vacuum, s.last_autovacuum) AS last_vacuum
    FROM pg_class c
    JOIN pg_stat_user_tables s ON s.relid = c.oid
    WHERE c.oid = to_regclass(:table)
    """
)
_LONG_TRANSACTION_QUERIES = {
    "mariadb": _MYSQL_LONG_TRANSACTIONS,
    "mysql": _MYSQL_LONG_TRANSACTIONS,
    "postgresql": _POSTGRESQL_LONG_TRANSACTIONS,
}


def report(connection: Connection, url: URL) -> dict[str, Any]:
    """The database's side of the doctor's checklist, as plain values."""
    kind = _kind(connection)
    now: datetime = connection.execute(select(dialects.db_now())).scalar_one()
    schema_version = migrations.current_version(connection)
    catalog_errors: dict[str, str] = {}
    facts: dict[str, Any] = {
        "kind": kind,
        "driver": connection.dialect.driver,
        "server_version": _server_version(connection, kind),
        "schema_version": schema_version,
        "latest_schema_version": migrations.LATEST_VERSION,
        "database_now": now,
        "wait_timeout": _wait_timeout(connection, kind),
        "pool_recycle": _pool_recycle(connection),
        "long_transactions": _catalog(
            connection,
            _LONG_TRANSACTION_QUERIES.get(kind),
            {"seconds": LONG_TRANSACTION_SECONDS, "limit": ROW_LIMIT},
            catalog_errors,
            "long_transactions",
        ),
        "lock_waits": _catalog(
            connection,
            _LOCK_WAIT_QUERIES.get(kind),
            {"limit": ROW_LIMIT},
            catalog_errors,
            "lock_waits",
        ),
        "vacuum": _catalog(
            connection,
            _POSTGRESQL_VACUUM if kind == "postgresql" else None,
            {"table": jobs.name},
            catalog_errors,
            "vacuum",
        ),
        "catalog_errors": catalog_errors,
        # Our own tables exist from schema version 1 on; before that there is nothing to read.
        "workers": _workers(connection, now) if schema_version else None,
        "expired_leases": _expired_leases(connection, now) if schema_version else None,
        "running_jobs": _running_jobs(connection) if schema_version else None,
        "due_jobs": _due_jobs(connection) if schema_version else None,
    }
    if kind == "sqlite":
        facts["sqlite"] = _sqlite(connection, url)
    return facts


def _kind(connection: Connection) -> str:
    name = connection.dialect.name
    if name in ("mysql", "mariadb"):
        return "mariadb" if getattr(connection.dialect, "is_mariadb", False) else "mysql"
    return name


def _server_version(connection: Connection, kind: str) -> str:
    if kind == "sqlite":
        query = select(func.sqlite_version())
    elif kind == "postgresql":
        query = select(func.current_setting("server_version"))
    else:
        query = select(func.version())
    return str(connection.execute(query).scalar_one())


def _wait_timeout(connection: Connection, kind: str) -> int | None:
    """Seconds after which MySQL/MariaDB closes an idle connection; the others never do."""
    if kind not in ("mysql", "mariadb"):
        return None
    return int(connection.execute(text("SELECT @@session.wait_timeout")).scalar_one())


def _pool_recycle(connection: Connection) -> int | None:
    """Seconds a pooled connection lives before the store replaces it; None = forever."""
    recycle = int(connection.engine.pool._recycle)
    return recycle if recycle >= 0 else None


def _catalog(
    connection: Connection,
    query: TextClause | None,
    parameters: Mapping[str, Any],
    errors: dict[str, str],
    name: str,
) -> list[dict[str, Any]]:
    """Rows of a server catalog query; none where there is no server (SQLite)."""
    if query is None:
        return []
    try:
        with connection.begin_nested():
            return [_plain(row._mapping) for row in connection.execute(query, parameters)]
    except DBAPIError as exc:
        errors[name] = " ".join(str(exc.orig).split())
        return []


def _workers(connection: Connection, now: datetime) -> list[dict[str, Any]]:
    """Registered workers that have not stopped, most recently seen first."""
    query = (
        select(workers.c.id, workers.c.host, workers.c.pid, workers.c.last_seen)
        .where(workers.c.stopped_at.is_(None))
        .order_by(workers.c.last_seen.desc())
        .limit(ROW_LIMIT)
    )
    return [
        {**row._mapping, "seconds_since_seen": (now - row.last_seen).total_seconds()}
        for row in connection.execute(query)
    ]


def _expired_leases(connection: Connection, now: datetime) -> list[dict[str, Any]]:
    """Running jobs whose lease has expired by the database clock, longest expired first."""
    query = (
        select(jobs.c.id, jobs.c.worker_id, jobs.c.pid, jobs.c.lease_expires_at)
        .where(
            jobs.c.status == JobStatus.RUNNING.value, jobs.c.lease_expires_at < dialects.db_now()
        )
        .order_by(jobs.c.lease_expires_at)
        .limit(ROW_LIMIT)
    )
    return [
        {
            "id": row.id,
            "worker_id": row.worker_id,
            "pid": row.pid,
            "seconds_expired": (now - row.lease_expires_at).total_seconds(),
        }
        for row in connection.execute(query)
    ]


def _running_jobs(connection: Connection) -> list[dict[str, Any]]:
    """Running jobs, oldest first: a few rows (a slot's each), found through the claim index
    by their status and sorted; an index of their start cost every job two entries."""
    query = (
        select(jobs.c.id, jobs.c.worker_id, jobs.c.pid, jobs.c.started_at)
        .where(jobs.c.status == JobStatus.RUNNING.value)
        .order_by(jobs.c.started_at)
        .limit(ROW_LIMIT)
    )
    return [dict(row._mapping) for row in connection.execute(query)]


def _due_jobs(connection: Connection) -> int:
    """How many pending jobs are due now, i.e. waiting only for a worker."""
    query = select(func.count()).where(
        jobs.c.status == JobStatus.PENDING.value, jobs.c.run_at <= dialects.db_now()
    )
    return int(connection.execute(query).scalar_one())


def _sqlite(connection: Connection, url: URL) -> dict[str, Any]:
    """The database file: where it is, its journal mode (WAL expected) and its size."""
    path = Path(url.database).absolute() if url.database not in (None, "", ":memory:") else None
    journal_mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
    return {
        "path": str(path) if path else None,
        "journal_mode": journal_mode,
        "size_bytes": path.stat().st_size if path and path.exists() else None,
    }


def _plain(row: RowMapping) -> dict[str, Any]:
    """A catalog row with numbers as int/float and text as str (drivers differ)."""
    return {str(name): _plain_value(value) for name, value in row.items()}


def _plain_value(value: object) -> object:
    if isinstance(value, bytes):  # information_schema text over some MySQL drivers
        return value.decode("utf-8", "replace")
    if isinstance(value, Decimal):  # TIMESTAMPDIFF on some servers
        return float(value)
    return value
