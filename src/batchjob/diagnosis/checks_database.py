"""Doctor checks of the database server: reachable, schema current, connections, sessions,
and whether PostgreSQL vacuums the jobs table.

What they look at comes from one read-only transaction (`Store.health_report`); on MySQL
and PostgreSQL the server's own catalog names the transactions held open and the sessions
waiting for a lock, with the statement that ends them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from batchjob.diagnosis.check import (
    PREVIEW_CHARACTERS,
    Facts,
    Finding,
    NotChecked,
    database_report,
    fail,
    first_few,
    human_size,
    ok,
    warn,
)
from batchjob.store.health import LONG_TRANSACTION_SECONDS
from batchjob.store.schema import jobs

# Below this the server drops the idle connection of an ordinary script ("server has gone away").
SHORT_WAIT_TIMEOUT_SECONDS = 300
# Dead rows in the jobs table worth a vacuum: 24,000 took a claim from 1.3 to 1.9-3.0 ms on
# the bench machine (docs/benchmarks-history.md, tenth round).
MANY_DEAD_ROWS = 10_000
# How PostgreSQL spells a boolean storage parameter turned off.
_OFF = frozenset({"off", "false", "f", "no", "n", "0"})


def check_database(facts: Facts) -> Finding:
    if facts.database is None:
        return fail(
            f"cannot read {facts.database_url}: {facts.database_error}",
            "check database_url (BATCH_JOB_DATABASE_URL), that the server runs, "
            "then `batchjob init`",
        )
    db = facts.database
    version, latest = db["schema_version"], db["latest_schema_version"]
    where = f"{db['kind']} {db['server_version']} at {facts.database_url} through {db['driver']}"
    offset = (db["database_now"] - datetime.now(UTC).replace(tzinfo=None)).total_seconds()
    figures = {
        "kind": db["kind"],
        "driver": db["driver"],
        "server_version": db["server_version"],
        "schema_version": version,
        "latest_schema_version": latest,
        "clock_offset_seconds": round(offset, 3),
        "sqlite": db.get("sqlite"),
    }
    if version < latest:
        return fail(
            f"{where}: schema version {version}, this batchjob needs {latest}",
            "run `batchjob init` (it creates or upgrades the schema, and is safe to repeat)",
            **figures,
        )
    if version > latest:
        return warn(
            f"{where}: schema version {version} is newer than this batchjob knows ({latest})",
            "upgrade batchjob on this host to the version the workers run",
            **figures,
        )
    sqlite = db.get("sqlite")
    if sqlite is not None and str(sqlite["journal_mode"]).lower() != "wal":
        return warn(
            f"{where}: journal mode {sqlite['journal_mode']}, not wal: readers block writers",
            "keep the SQLite file on a local filesystem that supports WAL",
            **figures,
        )
    return ok(
        f"{where}: schema {version} of {latest}{_sqlite_note(sqlite)}{_driver_note(db['driver'])}",
        **figures,
    )


def _driver_note(driver: str) -> str:
    if driver != "pymysql":
        return ""
    return "; mysqlclient (batchjob[mysqlclient]) would cost the worker 14-24 % less CPU per job"


def _sqlite_note(sqlite: Mapping[str, Any] | None) -> str:
    if sqlite is None or sqlite["size_bytes"] is None:
        return ""
    return f", {human_size(sqlite['size_bytes'])}, journal {sqlite['journal_mode']}"


def check_wait_timeout(facts: Facts) -> Finding:
    db = database_report(facts)
    wait_timeout, recycle = db["wait_timeout"], db["pool_recycle"]
    if wait_timeout is None:
        raise NotChecked(f"{db['kind']} does not close idle connections by wait_timeout")
    figures = {"wait_timeout": wait_timeout, "pool_recycle": recycle}
    if recycle is None or recycle >= wait_timeout:
        return warn(
            f"pooled connections live {f'{recycle}s' if recycle else 'forever'}, past "
            f"wait_timeout {wait_timeout}s: the server drops them first",
            "restart the worker: batchjob recycles connections at 80% of wait_timeout",
            **figures,
        )
    if wait_timeout < SHORT_WAIT_TIMEOUT_SECONDS:
        return warn(
            f"wait_timeout is {wait_timeout}s: a job's own connection idle that long gets "
            f"'MySQL server has gone away' (the pool recycles after {recycle}s)",
            "raise wait_timeout on the server, or make the job reconnect (pool_pre_ping)",
            **figures,
        )
    return ok(
        f"wait_timeout {wait_timeout}s; pooled connections are recycled after {recycle}s",
        **figures,
    )


def check_long_transactions(facts: Facts) -> Finding:
    db = _server_catalog(facts, "long_transactions")
    rows = db["long_transactions"]
    if not rows:
        return ok(f"no transaction open longer than {LONG_TRANSACTION_SECONDS}s in this database")
    described = [
        f"connection {row['connection_id']} has had a transaction open for "
        f"{row['seconds']:.0f}s ({row['state']}): {_query(row['query'])}"
        for row in rows
    ]
    return warn(
        first_few(described),
        f"end the transaction, or {_kill_command(db['kind'], rows[0]['connection_id'])}",
        transactions=rows,
    )


def check_lock_waits(facts: Facts) -> Finding:
    db = _server_catalog(facts, "lock_waits")
    rows = db["lock_waits"]
    if not rows:
        return ok("no session waits for a lock in this database")
    described = [
        f"connection {row['waiting_id']} waits for a lock held by connection "
        f"{row['blocking_id']} for {row['seconds']:.0f}s: {_query(row['waiting_query'])}"
        + ("" if row["blocking_query"] else f" (connection {row['blocking_id']} is idle)")
        for row in rows
    ]
    return warn(
        first_few(described),
        f"end the blocking transaction, or {_kill_command(db['kind'], rows[0]['blocking_id'])}",
        lock_waits=rows,
    )


def check_vacuum(facts: Facts) -> Finding:
    db = database_report(facts)
    if db["kind"] != "postgresql":
        raise NotChecked(
            f"{db['kind']} removes deleted rows itself; PostgreSQL leaves them to VACUUM"
        )
    if "vacuum" in db["catalog_errors"]:
        raise NotChecked(
            f"cannot read the jobs table's statistics: {db['catalog_errors']['vacuum']}"
        )
    if not db["vacuum"]:
        raise NotChecked(f"no {jobs.name} table yet: run `batchjob init`")
    row = db["vacuum"][0]
    dead, live = row["dead_rows"], row["live_rows"]
    last = row["last_vacuum"]
    vacuumed = f"last vacuumed {last.isoformat(timespec='seconds')}" if last else "never vacuumed"
    figures = {**row, "last_vacuum": last.isoformat() if last else None}
    causes, fixes = [], []
    if row["server_autovacuum"] != "on":
        causes.append("autovacuum is off on this server")
        fixes.append(
            "set autovacuum = on in postgresql.conf and SELECT pg_reload_conf(), or VACUUM "
            f"{jobs.name} regularly (a cron job, a systemd timer)"
        )
    if str(row["table_autovacuum"]).lower() in _OFF:
        causes.append(f"autovacuum is off for {jobs.name}")
        fixes.append(f"ALTER TABLE {jobs.name} RESET (autovacuum_enabled)")
    if dead >= MANY_DEAD_ROWS and dead > live:
        causes.append(f"{jobs.name} holds {dead} dead rows against {live} live ({vacuumed})")
        fixes.append(f"VACUUM (ANALYZE) {jobs.name} now")
    if not causes:
        return ok(
            f"autovacuum is on for {jobs.name}: {live} live rows, {dead} dead ({vacuumed})",
            **figures,
        )
    return warn(
        f"{'; '.join(causes)}: every claim steps over the dead rows of the jobs claimed, "
        f"finished and deleted before it ({dead} now), and slows as they pile up",
        "; ".join(fixes),
        **figures,
    )


def _server_catalog(facts: Facts, key: str) -> Mapping[str, Any]:
    db = database_report(facts)
    if db["kind"] == "sqlite":
        raise NotChecked("SQLite has no server sessions: writers queue on the file lock")
    if key in db["catalog_errors"]:
        raise NotChecked(f"cannot read the server's sessions: {db['catalog_errors'][key]}")
    return db


def _kill_command(kind: str, connection_id: object) -> str:
    if kind == "postgresql":
        return f"SELECT pg_terminate_backend({connection_id})"
    return f"KILL {connection_id}"


def _query(query: str | None) -> str:
    """A query on one short line."""
    if not query:
        return "(no statement running)"
    flat = " ".join(query.split())
    return flat if len(flat) <= PREVIEW_CHARACTERS else flat[: PREVIEW_CHARACTERS - 3] + "..."
