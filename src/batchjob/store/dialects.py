"""The only module that says sqlite, mysql or postgresql: what differs between the databases.

Everything else in the store is written once, against SQLAlchemy Core, and asks here for the
few things that differ: the database clock, connection set-up, locking, insert-or-ignore, bulk
inserts, PostgreSQL's NOTIFY trigger and the migration lock.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import select
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    Dialect,
    Engine,
    FunctionElement,
    Table,
    bindparam,
    event,
    func,
    make_url,
    text,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.sql import ColumnElement, Insert
from sqlalchemy.sql.compiler import DDLCompiler, SQLCompiler
from sqlalchemy.sql.expression import TableValuedAlias
from sqlalchemy.types import TypeEngine

from batchjob.errors import ConfigError
from batchjob.redact import mask_url_passwords
from batchjob.store.driver import execute_plain
from batchjob.store.schema import ONLY_WHERE_SET, Moment

if TYPE_CHECKING:  # a MariaDB or PostgreSQL worker has no use for sqlite3 (0.9 MiB)
    import sqlite3

CONNECT_TIMEOUT_SECONDS = 5
# A cut network must not hang a worker forever in a read: MySQL drivers take a read timeout
# (longer than any statement batchjob sends, GET_LOCK's 60 s included); libpq has none, so
# TCP keepalives end an idle connection whose peer is gone and tcp_user_timeout one whose
# sent data is never acknowledged.
MYSQL_IO_TIMEOUT_SECONDS = 90
POSTGRESQL_CONNECTION_TIMEOUTS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT_SECONDS,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
SQLITE_BUSY_TIMEOUT_SECONDS = 30
READ_ONLY_OPTION = "batchjob_read_only"


class db_now_plus(FunctionElement[Any]):
    """The database's UTC clock plus a number of seconds: leases are judged by one clock."""

    type = Moment()
    inherit_cache = True
    name = "db_now_plus"


def db_now() -> ColumnElement[Any]:
    """The database's current UTC time (naive), as every stored time is."""
    return db_now_plus()  # no offset: none to bind, none to add (SQLite parses it per row)


@compiles(CreateTable, "mysql")
@compiles(CreateTable, "mariadb")
def _innodb_utf8mb4(create: CreateTable, compiler: DDLCompiler, **kw: Any) -> str:
    """Every table InnoDB (row locks, SKIP LOCKED) in utf8mb4 with a binary collation."""
    created = compiler.visit_create_table(create, **kw).rstrip()  # type: ignore[no-untyped-call]
    return f"{created} ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin\n\n"


@compiles(CreateIndex, "sqlite")
@compiles(CreateIndex, "postgresql")
def _partial_index(create: CreateIndex, compiler: DDLCompiler, **kw: Any) -> str:
    """An index marked ONLY_WHERE_SET in schema.py over only the rows that set its column."""
    created: str = compiler.visit_create_index(create, **kw)  # type: ignore[no-untyped-call]
    column = create.element.info.get(ONLY_WHERE_SET)
    if column is None:
        return created
    return f"{created} WHERE {compiler.preparer.quote(column)} IS NOT NULL"


@compiles(db_now_plus, "sqlite")
def _sqlite_now(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    # The same text form SQLAlchemy stores, microseconds included, so strings compare in order.
    now = "strftime('%Y-%m-%d %H:%M:%f000', 'now'"
    if not element.clauses.clauses:
        return f"{now})"
    seconds = compiler.process(element.clauses, **kw)
    return f"{now}, printf('%+.6f seconds', {seconds}))"


@compiles(db_now_plus, "postgresql")
def _postgresql_now(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    # One time for a whole statement, as SQLite's 'now' and MySQL's UTC_TIMESTAMP() are, not
    # clock_timestamp(): a statement that records a slot's outcome and claims its next job
    # runs its parts in no set order, and the next job's start came before the last's end.
    now = "(statement_timestamp() AT TIME ZONE 'UTC')"
    if not element.clauses.clauses:
        return now
    seconds = compiler.process(element.clauses, **kw)
    return f"({now} + ({seconds}) * interval '1 second')"


@compiles(db_now_plus, "mysql")
@compiles(db_now_plus, "mariadb")
def _mysql_now(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    if not element.clauses.clauses:
        return "UTC_TIMESTAMP(6)"
    seconds = compiler.process(element.clauses, **kw)
    return f"(UTC_TIMESTAMP(6) + INTERVAL ROUND(({seconds}) * 1000000) MICROSECOND)"


# The databases batchjob runs on, and where the driver a URL naming none takes comes from.
DRIVER_SOURCES = {
    "sqlite": "Python's own sqlite3",
    "mysql": "the driver batchjob[mysqlclient] or batchjob[mysql] installs",
    "mariadb": "the driver batchjob[mysqlclient] or batchjob[mysql] installs",
    "postgresql": "the driver batchjob[postgresql] installs",
}


def normalise_url(url: str) -> URL:
    """Parse the URL and pick the drivers and options batchjob is tested with: the one the
    URL names, else for MySQL/MariaDB mysqlclient where it is installed, PyMySQL otherwise.
    A URL that is none, or of another database, is a ConfigError."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"database_url {mask_url_passwords(url)!r} is not a database URL "
            "(sqlite:///batchjob.db, mysql://user:password@host/name, postgresql://user@host/name)"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in DRIVER_SOURCES:
        raise ConfigError(
            f"database_url {mask_url_passwords(url)}: batchjob runs on SQLite, MySQL/MariaDB "
            f"and PostgreSQL, not {backend}"
        )
    if backend in ("mysql", "mariadb"):
        if parsed.drivername in ("mysql", "mariadb"):
            parsed = parsed.set(drivername=f"{backend}+{mysql_driver()}")
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    elif backend == "postgresql" and parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def missing_driver(url: URL, shown: str, error: Exception) -> ConfigError:
    """The error for a URL whose driver cannot be loaded, naming what installs one."""
    why = " ".join(str(error).split())
    backend = url.get_backend_name()
    return ConfigError(
        f"database_url {shown}: cannot load its driver {url.drivername} ({why}); install it, "
        f"or use {backend}:// with {DRIVER_SOURCES[backend]}"
    )


def mysql_driver() -> str:
    """mysqldb (mysqlclient, in C) where it is installed: the worker's transaction per job
    costs 31-40 % less of its CPU than with pymysql (pure Python), which installs everywhere."""
    try:
        importlib.import_module("MySQLdb")
    except ImportError:
        return "pymysql"
    return "mysqldb"


def engine_options(url: URL) -> dict[str, Any]:
    """create_engine() keywords: pooling, timeouts and isolation for this database."""
    backend = url.get_backend_name()
    # No rollback when a connection goes back to the pool: the store's every Connection ends
    # its own transaction (commit, or rollback on close), and on a server database that
    # rollback was a round trip per transaction. No ping at checkout either (another round
    # trip): a dead pooled connection fails before the commit and the store runs the
    # transaction again on a new one.
    if backend == "sqlite":
        return {
            "connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
            "pool_reset_on_return": None,
        }
    options: dict[str, Any] = {
        "pool_reset_on_return": None,
        "pool_recycle": 3600,
        "pool_size": 5,
        "max_overflow": 10,
        "isolation_level": "READ COMMITTED",
    }
    if backend == "postgresql":
        options["connect_args"] = dict(POSTGRESQL_CONNECTION_TIMEOUTS)
    else:
        options["connect_args"] = {
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "read_timeout": MYSQL_IO_TIMEOUT_SECONDS,
            "write_timeout": MYSQL_IO_TIMEOUT_SECONDS,
        }
    return options


def prepare_engine(engine: Engine) -> None:
    """Per-connection set-up: WAL and explicit write transactions on SQLite."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # Let SQLAlchemy's "begin" hook issue BEGIN itself (pysqlite's own is deferred and late).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    gate = _writer_gate(engine.url.database)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A write transaction takes the lock up front, so a claim never fails half-way with
        # SQLITE_BUSY on upgrade; plain reads stay deferred and never wait on writers (WAL).
        # Sent to the driver itself: SQLAlchemy's execution around the BEGIN cost more than
        # the statement (py-spy: 3 % of a worker's GIL time on /bin/true jobs).
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            execute_plain(connection, "BEGIN DEFERRED")
            return
        if gate is not None:
            gate.enter(connection.info)
        execute_plain(connection, "BEGIN IMMEDIATE")

    if gate is not None:
        for ending in ("commit", "rollback"):
            event.listen(engine, ending, lambda connection: gate.leave(connection.info))
        event.listen(engine, "checkin", lambda _dbapi, record: gate.leave(record.info))
        event.listen(engine, "close", lambda _dbapi, record: gate.forget(record.info))


class _WriterGate:
    """Writers of one SQLite file queue on an flock before BEGIN IMMEDIATE.

    SQLite's own busy handler makes a waiting writer sleep and retry (up to 100 ms a time), so
    under contention a writer can lose for seconds while others get in: a worker's lease
    renewal among them. The kernel wakes an flock's waiter as soon as it is free.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def enter(self, info: dict[str, Any]) -> None:
        descriptor = info.get("writer_gate")
        if descriptor is None:
            descriptor = info["writer_gate"] = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        info["writer_gate_held"] = True

    def leave(self, info: dict[str, Any]) -> None:
        if info.pop("writer_gate_held", False):
            fcntl.flock(info["writer_gate"], fcntl.LOCK_UN)

    def forget(self, info: dict[str, Any]) -> None:
        """The connection is closed: so is its descriptor of the gate (and any lock on it)."""
        info.pop("writer_gate_held", None)
        descriptor = info.pop("writer_gate", None)
        if descriptor is not None:
            os.close(descriptor)


def _writer_gate(database: str | None) -> _WriterGate | None:
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return _WriterGate(f"{database}-writers")


def writes_on_one_connection(url: URL) -> bool:
    """SQLite on a file: a process's writes take turns on one connection (`store.writer`),
    as its writer gate makes them take turns anyway."""
    return url.get_backend_name() == "sqlite" and _writer_gate(url.database) is not None


def recycle_below_wait_timeout(connection: Connection) -> int | None:
    """Seconds a pooled connection may live on this server, or None where nothing closes it."""
    if connection.dialect.name not in ("mysql", "mariadb"):
        return None
    wait_timeout = connection.execute(text("SELECT @@session.wait_timeout")).scalar_one()
    return max(1, int(int(wait_timeout) * 0.8))


def supports_skip_locked(connection: Connection) -> bool:
    """Row locks exist on the server databases; SQLite serialises writers instead."""
    return not has_single_writer(connection)


def has_single_writer(connection: Connection) -> bool:
    """SQLite: one write transaction at a time, so the rows one transaction inserts get
    consecutive ids, the last of them `last_inserted_id`."""
    return connection.dialect.name == "sqlite"


def last_inserted_id(connection: Connection) -> int:
    """The id of the last row this connection inserted (SQLite)."""
    return int(connection.exec_driver_sql("SELECT last_insert_rowid()").scalar_one())


def inserts_rows_from_arrays(connection: Connection) -> bool:
    """PostgreSQL: many rows go in one INSERT ... SELECT FROM `unnest_rows`, a statement of
    one array per column whatever the row count. SQLAlchemy's multi-VALUES batches bind every
    value apart, and psycopg parsing those long statements made a bulk enqueue 5x slower."""
    return connection.dialect.name == "postgresql"


def modifies_in_one_statement(dialect: Dialect) -> bool:
    """PostgreSQL: a SELECT ... FOR UPDATE, UPDATEs ... RETURNING and an INSERT of what they
    returned run as one statement (data-modifying WITH): one round trip for a claim."""
    return dialect.name == "postgresql"


def enqueues_one_job_in_autocommit(dialect: Dialect) -> bool:
    """PostgreSQL: one job's INSERT commits as it runs, one round trip where BEGIN, the INSERT
    and COMMIT took three. Not MariaDB: SQLAlchemy switches its autocommit on and off again
    with statements of their own, and one job's enqueue went from 1,236-1,461 to 835-1,007/s.
    """
    return dialect.name == "postgresql"


def replace_if_dropped(connection: Connection) -> None:
    """Before a statement that cannot be sent twice: a pooled PostgreSQL connection the server
    has closed (a restart, `pg_terminate_backend`) or that TCP keepalives found dead has a
    readable socket while idle. Such a connection is swapped for a new one, with no round
    trip: what fails after the statement is sent may have committed, and is not retried."""
    dbapi_connection = connection.connection.dbapi_connection
    try:
        socket = dbapi_connection.fileno()  # type: ignore[union-attr]
    except connection.dialect.loaded_dbapi.Error:  # closed already: no fileno
        connection.invalidate()
        return
    poller = select.poll()
    poller.register(socket, select.POLLIN)
    if poller.poll(0):
        connection.invalidate()  # the next statement takes a new connection from the pool


def unnest_rows(columns: Mapping[str, TypeEngine[Any]], position: str) -> TableValuedAlias:
    """PostgreSQL: rows from one array parameter per column (each named as its column), with
    their 1-based `position` in the arrays."""
    from sqlalchemy.dialects.postgresql import ARRAY

    arrays = (bindparam(name, type_=ARRAY(type_, dimensions=1)) for name, type_ in columns.items())
    return func.unnest(*arrays).table_valued(*columns, with_ordinality=position).render_derived()


def notify_on_insert(connection: Connection, table: Table, channel: str) -> None:
    """PostgreSQL: a statement trigger NOTIFYs `channel` for every INSERT into `table`,
    delivered at its commit: an enqueue needs no statement of its own for it, and rows any
    other program inserts wake the workers too. Nothing elsewhere (see wakeups.py)."""
    if connection.dialect.name != "postgresql":
        return
    function = f"{table.name}_notify"
    connection.execute(
        text(
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS"
            f" $$ BEGIN PERFORM pg_notify('{channel}', ''); RETURN NULL; END $$"
        )
    )
    connection.execute(text(f"DROP TRIGGER IF EXISTS {function} ON {table.name}"))
    connection.execute(
        text(
            f"CREATE TRIGGER {function} AFTER INSERT ON {table.name}"
            f" FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )
    )


def insert_ignoring_duplicates(connection: Connection, table: Table) -> Insert:
    """INSERT that silently skips rows whose primary key already exists."""
    # Each dialect's module imported here, when used: the others' would only add to the RSS.
    name = connection.dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table).on_conflict_do_nothing()
    if name == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects import mysql

    return mysql.insert(table).prefix_with("IGNORE")


def is_missing_table_error(message: str) -> bool:
    """The error text each database gives for a table that does not exist."""
    lowered = message.lower()
    return any(
        marker in lowered
        for marker in ("no such table", "doesn't exist", "does not exist", "undefinedtable")
    )


@contextmanager
def migration_lock(connection: Connection) -> Iterator[None]:
    """Serialise concurrent `batchjob init` runs, whose DDL may commit on its own."""
    name = connection.dialect.name
    if name == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(7412001)"))
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(7412001)"))
    elif name in ("mysql", "mariadb"):
        connection.execute(text("SELECT GET_LOCK('batchjob_migrations', 60)"))
        try:
            yield
        finally:
            connection.execute(text("SELECT RELEASE_LOCK('batchjob_migrations')"))
    else:
        yield  # the IMMEDIATE transaction of the caller already excludes other writers
