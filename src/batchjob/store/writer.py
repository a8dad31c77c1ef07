"""One connection for a process's write transactions on an SQLite file, taken in turn.

SQLite runs one write transaction at a time, and the writer gate (`dialects`) already queues
a process's writers one behind the other. Each writer on a connection of its own made every
write start cold: SQLite drops a connection's page cache whenever another connection has
written, so a worker's two slots, taking turns, read back every page they touch
(`perf trace`: 20 reads a `/bin/true` job, none with one slot) and handed the GIL back and
forth around each. Kept on one connection, a process's writes find their pages cached
while no other process writes. Reads keep connections of their own from the pool and never
wait for a writer (WAL).
"""

from __future__ import annotations

import threading
from types import TracebackType

from sqlalchemy import Connection, Engine


class SharedWriter:
    """The write connection, lent to one transaction at a time: `with writer as conn:`.

    A transaction that raises gives the connection up (closing it rolls back what it left);
    the next one takes a new connection from the pool. A class, not a generator made a
    context manager: it runs for every write of the worker's hot path.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._turn = threading.Lock()
        self._connection: Connection | None = None

    def __enter__(self) -> Connection:
        self._turn.acquire()
        try:
            if self._connection is None:
                self._connection = self._engine.connect()
        except BaseException:
            self._turn.release()
            raise
        return self._connection

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc_type is not None:
                self._give_up()
        finally:
            self._turn.release()

    def close(self) -> None:
        """Close the connection (a transaction running in another thread first ends)."""
        with self._turn:
            self._give_up()

    def _give_up(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
