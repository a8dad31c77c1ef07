"""Wake idle workers the moment a job is enqueued, instead of letting them sleep out a poll.

PostgreSQL: a trigger on the jobs table sends NOTIFY for every INSERT (migration 2; delivered
at commit, so never for a rolled-back job, and for rows any program inserts) and each worker
LISTENs on a connection of its own: it reaches every host.
SQLite and MySQL/MariaDB have no such thing; there each worker binds an abstract datagram
socket named after the database (`@batchjob-<digest of the database>-<worker>`: no path,
nothing left on disk, gone with the process), and an enqueue that has committed sends one
byte to each such name that /proc/net/unix lists. That reaches the workers on the enqueuing
host (in its network namespace); the others find the job at their next poll. A lost wake-up
only costs latency: the poll still finds the job.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import URL

from batchjob.store import dialects

CHANNEL = "batchjob_jobs"
RECONNECT_SECONDS = 2.0
LISTENERS_TTL_SECONDS = 1.0
LOOPBACK_NAMES = {"localhost": "127.0.0.1", "::1": "127.0.0.1"}
log = logging.getLogger("batchjob.worker")


def announce_committed(url: URL) -> None:
    """SQLite, MySQL/MariaDB: poke every local worker's socket once the enqueue has committed."""
    if (prefix := _socket_prefix(url)) is not None:
        _poke_sockets(prefix)


def listen(url: URL, wake: Callable[[], None], name: str) -> Callable[[], None] | None:
    """Call `wake()` whenever a job is announced; returns a function that stops listening.

    None where no wake-up can be had (the worker polls).
    """
    stopping = threading.Event()
    if url.get_backend_name() == "postgresql":
        target: Callable[[], None] = lambda: _listen_postgresql(url, wake, stopping)  # noqa: E731
    elif (prefix := _socket_prefix(url)) is not None:
        try:
            receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            receiver.bind(b"\0" + prefix + name.encode())
        except OSError as exc:
            log.warning("action=wakeups_unavailable error=%s: polling instead", exc)
            return None
        receiver.settimeout(1.0)
        target = lambda: _listen_socket(receiver, wake, stopping)  # noqa: E731
    else:
        return None
    threading.Thread(target=target, name="wakeups", daemon=True).start()
    return stopping.set


@functools.lru_cache(maxsize=16)  # asked at every enqueue; a process uses one or two URLs
def _socket_prefix(url: URL) -> bytes | None:
    """`batchjob-<digest>-`: the same for every URL of one database on this host."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            return None
        where = str(Path(url.database).absolute())
    elif backend in ("mysql", "mariadb"):
        host = LOOPBACK_NAMES.get(url.host or "localhost", url.host or "")
        where = f"mysql://{host}:{url.port or 3306}/{url.database}"
    else:
        return None
    return f"batchjob-{hashlib.sha256(where.encode()).hexdigest()[:16]}-".encode()


class _Listeners:
    """The workers' socket names that /proc/net/unix lists, read again at most once a second.

    A worker that started less than a second ago may miss a wake-up: its poll finds the job.
    """

    def __init__(self) -> None:
        self._names: list[bytes] = []
        self._read_at = -math.inf
        self._lock = threading.Lock()

    def names(self, prefix: bytes) -> list[bytes]:
        with self._lock:
            if time.monotonic() - self._read_at > LISTENERS_TTL_SECONDS:
                self._names = _abstract_socket_names(b"@batchjob-")
                self._read_at = time.monotonic()
            return [name for name in self._names if name.startswith(prefix)]

    def forget(self, name: bytes) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._names.remove(name)


_listeners = _Listeners()


def _abstract_socket_names(start: bytes) -> list[bytes]:
    """Names of listening abstract unix sockets that begin with `start` (`@` for the NUL)."""
    try:
        with open("/proc/net/unix", "rb") as table:
            lines = table.read().splitlines()
    except OSError:
        return []
    return [
        fields[-1][1:]
        for line in lines[1:]
        if len(fields := line.split()) == 8 and fields[-1].startswith(start)
    ]


def _poke_sockets(prefix: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for name in _listeners.names(prefix):
            try:
                sender.sendto(b"1", b"\0" + name)
            except (ConnectionRefusedError, FileNotFoundError):
                _listeners.forget(name)  # that worker has stopped
            except OSError:
                continue  # its buffer is full: it has been woken already


def _listen_socket(
    receiver: socket.socket, wake: Callable[[], None], stopping: threading.Event
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
