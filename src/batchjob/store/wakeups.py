"""Wake idle workers the moment a job is enqueued, instead of letting them sleep out a poll.

PostgreSQL: the enqueue's transaction sends NOTIFY (delivered at commit, so never for a
rolled-back job) and each worker LISTENs on a connection of its own. SQLite: each worker
binds an abstract datagram socket (no path-length limit, nothing left on disk) and leaves
an empty file of the same name in `<database file>.wake/`; an enqueue sends one byte to
each name it finds there. MySQL/MariaDB have neither; their workers poll. A lost wake-up
only costs latency: the poll still finds the job.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection, text
from sqlalchemy.engine import URL

from batchjob.store import dialects

CHANNEL = "batchjob_jobs"
RECONNECT_SECONDS = 2.0
log = logging.getLogger("batchjob.worker")


def announce_in_transaction(connection: Connection, url: URL) -> None:
    """PostgreSQL: NOTIFY, delivered when (and only if) the enqueue commits."""
    if url.get_backend_name() == "postgresql":
        connection.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


def announce_committed(url: URL) -> None:
    """SQLite: poke every local worker's socket once the enqueue has committed."""
    if url.get_backend_name() == "sqlite" and (directory := _socket_directory(url)) is not None:
        _poke_sockets(directory)


def listen(url: URL, wake: Callable[[], None], name: str) -> Callable[[], None] | None:
    """Call `wake()` whenever a job is announced; returns a function that stops listening.

    None where the database offers no wake-up (the worker polls).
    """
    backend = url.get_backend_name()
    stopping = threading.Event()
    if backend == "postgresql":
        target: Callable[[], None] = lambda: _listen_postgresql(url, wake, stopping)  # noqa: E731
    elif backend == "sqlite" and (directory := _socket_directory(url)) is not None:
        marker = directory / name
        try:
            directory.mkdir(exist_ok=True)
            receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            receiver.bind(_address(directory, name))
            marker.touch()
        except OSError as exc:
            log.warning("action=wakeups_unavailable error=%s: polling instead", exc)
            return None
        receiver.settimeout(1.0)
        target = lambda: _listen_socket(receiver, marker, wake, stopping)  # noqa: E731
    else:
        return None
    threading.Thread(target=target, name="wakeups", daemon=True).start()
    return stopping.set


def _socket_directory(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:":
        return None
    return Path(database).absolute().with_name(Path(database).name + ".wake")


def _address(directory: Path, name: str) -> bytes:
    """An abstract socket name (leading NUL) for this database's worker `name`."""
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    return f"\0batchjob-{digest}-{name}".encode()


def _poke_sockets(directory: Path) -> None:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for name in names:
            try:
                sender.sendto(b"1", _address(directory, name))
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    (directory / name).unlink()  # a worker that died without cleaning up
            except OSError:
                continue  # its buffer is full: it has been woken already


def _listen_socket(
    receiver: socket.socket, path: Path, wake: Callable[[], None], stopping: threading.Event
) -> None:
    try:
        while not stopping.is_set():
            try:
                receiver.recv(64)
            except TimeoutError:
                continue
            wake()
    finally:
        receiver.close()
        with contextlib.suppress(OSError):
            path.unlink()


def _listen_postgresql(url: URL, wake: Callable[[], None], stopping: threading.Event) -> None:
    import psycopg

    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    while not stopping.is_set():
        try:
            with psycopg.connect(
                conninfo, autocommit=True, **dialects.POSTGRESQL_CONNECTION_TIMEOUTS
            ) as connection:
                connection.execute(f"LISTEN {CHANNEL}")
                wake()  # what was enqueued while this connection was down
                while not stopping.is_set():
                    for _notice in connection.notifies(timeout=1.0):
                        wake()
        except psycopg.Error as exc:
            log.debug("action=listen_reconnect error=%s", exc)
            time.sleep(RECONNECT_SECONDS)
