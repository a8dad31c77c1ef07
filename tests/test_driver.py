"""Statements sent to the driver directly fail as SQLAlchemy's would: the store's retries and
refusals (`Store._attempt`) tell passing failures from bad data by SQLAlchemy's errors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from batchjob.store import Store
from batchjob.store.dialects import prepare_engine
from batchjob.store.driver import DriverStatement
from batchjob.store.schema import events
from conftest import DATABASES, OTHER_DRIVERS, database_url_fixture, kill_connections

database_url = database_url_fixture((*DATABASES, *OTHER_DRIVERS))  # MariaDB through PyMySQL too

EVENT = {"job_id": 1, "attempt": 1, "kind": "note", "message": "第六竹石"}


def test_a_refused_row_raises_sqlalchemys_error_and_leaves_the_transaction_usable(
    store: Store, database_url: str
) -> None:
    engine = create_engine(database_url)
    statement = DriverStatement.compile(
        insert(events).values(at=text("CURRENT_TIMESTAMP")), engine.dialect, list(EVENT)
    )
    read = DriverStatement.compile(select(events.c.message, events.c.job_id), engine.dialect)
    with engine.connect() as conn:
        conn.begin()  # as the store does: the driver runs in the connection's transaction
        assert statement.execute(conn, EVENT) == 1
        with pytest.raises(IntegrityError):
            statement.execute(conn, EVENT | {"kind": None})  # NOT NULL
        conn.rollback()
        conn.begin()
        statement.execute(conn, EVENT)
        conn.commit()
        assert read.rows(conn, {}) == [{"message": "第六竹石", "job_id": 1}]
    engine.dispose()


def test_a_lost_connection_is_invalidated_so_the_pool_does_not_hand_it_out_again(
    store: Store, database_url: str
) -> None:
    engine = create_engine(database_url)
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has no server connection to lose")
    own_id = {"mysql": "SELECT CONNECTION_ID()", "postgresql": "SELECT pg_backend_pid()"}
    read = DriverStatement.compile(select(events.c.id), engine.dialect)
    with engine.connect() as conn:
        kill_connections(engine, [conn.execute(text(own_id[engine.dialect.name])).scalar_one()])
        with pytest.raises(DBAPIError) as raised:
            read.rows(conn, {})
        assert raised.value.connection_invalidated
        assert conn.invalidated
    engine.dispose()


def test_a_sqlite_write_transaction_kept_from_its_lock_fails_as_sqlalchemys_error(
    tmp_path: Path,
) -> None:
    """The begin hook sends BEGIN IMMEDIATE to the driver; a lock held elsewhere (here by a
    plain sqlite3 connection, beyond a 0.1 s busy timeout) must still reach the store as
    SQLAlchemy's OperationalError, which it retries, and not as sqlite3's own."""
    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")  # as the store's: connecting takes no lock
    holder.execute("BEGIN IMMEDIATE")
    engine = create_engine(f"sqlite:///{tmp_path / 'locked.db'}", connect_args={"timeout": 0.1})
    prepare_engine(engine)
    try:
        with pytest.raises(OperationalError, match="database is locked") as raised, engine.begin():
            pass
        assert raised.value.statement == "BEGIN IMMEDIATE"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        engine.dispose()
