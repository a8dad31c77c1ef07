"""The floor: batchjob's per-job contract written the shortest way, in the same Python.

Not a product: a worker of some 130 lines that does, for each job, what batchjob promises
and no more, so that `make bench` can say how much of batchjob's cost per job is its own
code rather than the contract (the bare loop says what the spawn itself costs):

- one durable transaction per job, on SQLite (WAL, synchronous=NORMAL, as batchjob's),
  MariaDB or PostgreSQL (READ COMMITTED, their default durable commits, as batchjob's):
  the last job's outcome, fenced by its lease token, its evidence as an event row, and the
  next claim with a new lease (SKIP LOCKED on the servers) and its event;
- a private TMPDIR made and removed, the job's own log file, stdin /dev/null, stdout,
  stderr and a progress pipe drained on epoll, its own session, the worker's environment
  with batchjob's variables added (SPEC §5; recorded in the evidence with secrets masked),
  no worker descriptor inherited (close_fds);
- after the exit, a check that nothing of its session is left, and a line in the worker's
  log at each start and end.

Absent, as they cost a short job nothing in batchjob either: lease renewal, stall and peak
sampling, a guardian. Its idle RSS is Python's and its driver's.

Start latency as batchjob's is measured: the latency job is `/bin/date +%s.%N`, its start the
time it printed, read back from its log. An idle floor waits to be woken as batchjob's
worker does: on PostgreSQL by a NOTIFY from a statement trigger on its jobs table, elsewhere
by a datagram its enqueue sends after the commit to an abstract unix socket; either way it
looks again every second, as batchjob polls by default. Its enqueue is one INSERT in
autocommit (batchjob's is a transaction it may retry: BEGIN, INSERT, COMMIT).

    python floor_peer.py sqlite|mariadb|postgresql TARGET LOG_DIR   # the worker, until SIGTERM
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import resource
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common import JobSpec, Peer, Record, mariadb_admin_url, postgres_dsn, scratch

from batchjob.redact import mask_environment

LEASE_SECONDS = 60.0
IDLE_POLL_SECONDS = 1.0
PRINT_START = ["/bin/date", "+%s.%N"]
CHANNEL = "floor_jobs"
MARIADB_DATABASE = "bench_floor"
FINISH = (
    "UPDATE floor_jobs SET status = ?, ended = ?, exit_code = ?, lease_token = NULL"
    " WHERE id = ? AND lease_token = ? AND status = 'running'"
)
EVENT = "INSERT INTO floor_events (job_id, kind, at, data) VALUES (?, ?, ?, ?)"
ENQUEUE = "INSERT INTO floor_jobs (status, command, marker, job_index) VALUES ('pending', ?, ?, ?)"
LEASE = "SET status = 'running', lease_token = ?, lease_expires = ?, worker = ?, started = ?"
NEXT_DUE = "SELECT id FROM floor_jobs WHERE status = 'pending' ORDER BY id LIMIT 1"


class Database:
    """How the floor talks to one database: the shortest way its driver allows."""

    name = ""
    paramstyle = "?"
    skip_locked = ""
    schema: tuple[str, ...] = ()

    def __init__(self, target: str) -> None:
        self.target = target

    def connect(self, autocommit: bool = False) -> Any:
        raise NotImplementedError

    def sql(self, statement: str) -> str:
        return statement.replace("?", self.paramstyle)

    def begin(self, connection: Any) -> None:
        """Start a write transaction (the servers' drivers start one by themselves)."""

    def claim(self, cursor: Any, lease: tuple[str, float, str, float]) -> Any:
        """Lease the next due job: (id, command, lease token), or None."""
        cursor.execute(
            self.sql(f"UPDATE floor_jobs {LEASE} WHERE id = ({NEXT_DUE}{self.skip_locked})"
                     " RETURNING id, command, lease_token"),
            lease,
        )  # fmt: skip
        return cursor.fetchone()

    def empty(self, cursor: Any) -> None:
        cursor.execute("TRUNCATE floor_events")
        cursor.execute("TRUNCATE floor_jobs")

    def announce(self) -> None:
        """After an enqueue's commit: wake the idle worker (its datagram socket)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.setblocking(False)
            with contextlib.suppress(OSError):  # no worker, or one woken already
                sender.sendto(b"1", self._wake_address())

    def listen(self, wake: threading.Event, stopping: threading.Event) -> None:
        """Set `wake` at every announcement, until `stopping`; on its own thread."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
            receiver.bind(self._wake_address())
            receiver.settimeout(IDLE_POLL_SECONDS)
            while not stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    receiver.recv(64)
                    wake.set()

    def _wake_address(self) -> bytes:
        return f"\0batchjob-bench-floor-{self.name}".encode()


class Sqlite(Database):
    name = "sqlite"
    schema = (
        "CREATE TABLE IF NOT EXISTS floor_jobs (id INTEGER PRIMARY KEY, status TEXT NOT NULL,"
        " command TEXT NOT NULL, marker TEXT, job_index INTEGER, lease_token TEXT,"
        " lease_expires REAL, worker TEXT, started REAL, ended REAL, exit_code INTEGER)",
        "CREATE INDEX IF NOT EXISTS floor_jobs_due ON floor_jobs (status, id)",
        "CREATE TABLE IF NOT EXISTS floor_events (id INTEGER PRIMARY KEY,"
        " job_id INTEGER NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL, data TEXT)",
        "CREATE INDEX IF NOT EXISTS floor_events_job ON floor_events (job_id, id)",
    )

    def connect(self, autocommit: bool = False) -> sqlite3.Connection:
        connection = sqlite3.connect(self.target, isolation_level=None, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    def begin(self, connection: Any) -> None:
        connection.execute("BEGIN IMMEDIATE")

    def empty(self, cursor: Any) -> None:
        cursor.execute("DELETE FROM floor_events")
        cursor.execute("DELETE FROM floor_jobs")


class Postgresql(Database):
    name = "postgresql"
    paramstyle = "%s"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    schema = (
        "CREATE TABLE IF NOT EXISTS floor_jobs (id BIGSERIAL PRIMARY KEY, status TEXT NOT NULL,"
        " command TEXT NOT NULL, marker TEXT, job_index INTEGER, lease_token TEXT,"
        " lease_expires DOUBLE PRECISION, worker TEXT, started DOUBLE PRECISION,"
        " ended DOUBLE PRECISION, exit_code INTEGER)",
        "CREATE INDEX IF NOT EXISTS floor_jobs_due ON floor_jobs (status, id)",
        "CREATE TABLE IF NOT EXISTS floor_events (id BIGSERIAL PRIMARY KEY,"
        " job_id BIGINT NOT NULL, kind TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, data TEXT)",
        "CREATE INDEX IF NOT EXISTS floor_events_job ON floor_events (job_id, id)",
        "CREATE OR REPLACE FUNCTION floor_notify() RETURNS trigger LANGUAGE plpgsql AS"
        f" $$ BEGIN PERFORM pg_notify('{CHANNEL}', ''); RETURN NULL; END $$",
        "CREATE OR REPLACE TRIGGER floor_jobs_notify AFTER INSERT ON floor_jobs"
        " FOR EACH STATEMENT EXECUTE FUNCTION floor_notify()",
    )

    def connect(self, autocommit: bool = False) -> Any:
        import psycopg

        return psycopg.connect(self.target, autocommit=autocommit)

    def announce(self) -> None:
        """The trigger has: NOTIFY is delivered at the commit."""

    def listen(self, wake: threading.Event, stopping: threading.Event) -> None:
        connection = self.connect(autocommit=True)
        try:
            connection.execute(f"LISTEN {CHANNEL}")
            while not stopping.is_set():
                for _notice in connection.notifies(timeout=IDLE_POLL_SECONDS):
                    wake.set()
        finally:
            connection.close()


class Mariadb(Database):
    """No UPDATE ... RETURNING in MariaDB 10.11: the claim locks its row, then leases it."""

    name = "mariadb"
    paramstyle = "%s"
    schema = (
        "CREATE TABLE IF NOT EXISTS floor_jobs (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
        " status VARCHAR(16) NOT NULL, command TEXT NOT NULL, marker VARCHAR(255),"
        " job_index INTEGER, lease_token VARCHAR(32), lease_expires DOUBLE, worker TEXT,"
        " started DOUBLE, ended DOUBLE, exit_code INTEGER, KEY floor_jobs_due (status, id))"
        " ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS floor_events (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
        " job_id BIGINT NOT NULL, kind VARCHAR(32) NOT NULL, at DOUBLE NOT NULL, data TEXT,"
        " KEY floor_events_job (job_id, id)) ENGINE=InnoDB",
    )

    def connect(self, autocommit: bool = False) -> Any:
        import MySQLdb

        server = urlsplit(mariadb_admin_url())
        connection = MySQLdb.connect(
            host=server.hostname or "127.0.0.1",
            port=server.port or 3306,
            user=server.username or "root",
            password=server.password or "",
            database=self.target,
            autocommit=autocommit,
        )
        connection.cursor().execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        return connection

    def claim(self, cursor: Any, lease: tuple[str, float, str, float]) -> Any:
        cursor.execute(
            "SELECT id, command FROM floor_jobs WHERE status = 'pending'"
            " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
        )
        due = cursor.fetchone()
        if due is None:
            return None
        cursor.execute(self.sql(f"UPDATE floor_jobs {LEASE} WHERE id = ?"), (*lease, due[0]))
        return (*due, lease[0])


class FloorPeer(Peer):
    package = "batchjob"  # the version reported: the floor is batchjob's contract
    has_bulk = True
    slots = "2 threads of one process, as batchjob's (the contract's floor, not a product)"

    def __init__(self) -> None:
        self.database = self.make_database()
        self.connection: Any = None
        #: marker file -> how many of its jobs were enqueued.
        self.enqueued: dict[str, int] = {}

    def make_database(self) -> Database:
        raise NotImplementedError

    def setup(self) -> None:
        scratch().mkdir(parents=True, exist_ok=True)
        self.connection = self.database.connect(autocommit=True)
        cursor = self.connection.cursor()
        for statement in self.database.schema:
            cursor.execute(statement)

    def reset(self) -> None:
        self.database.empty(self.connection.cursor())
        self.enqueued.clear()

    def enqueue(self, job: JobSpec) -> None:
        self.connection.cursor().execute(self.database.sql(ENQUEUE), _row(job))
        self.database.announce()
        self.enqueued[job.marker] = self.enqueued.get(job.marker, 0) + 1

    def enqueue_bulk(self, jobs: list[JobSpec]) -> None:
        cursor = self.connection.cursor()
        cursor.execute("BEGIN")
        cursor.executemany(self.database.sql(ENQUEUE), [_row(job) for job in jobs])
        cursor.execute("COMMIT")
        self.database.announce()
        for job in jobs:
            self.enqueued[job.marker] = self.enqueued.get(job.marker, 0) + 1

    def records(self, marker: Path) -> list[Record]:
        """Start: the claim; end: the recorded outcome (batchjob's peer reads the same), once
        all of the marker's jobs are done. Until then only a count is asked for: polled every
        20 ms, it must cost the worker being measured as little as batchjob's peer's does."""
        cursor = self.connection.cursor()
        done = self.database.sql("FROM floor_jobs WHERE marker = ? AND status = 'done'")
        cursor.execute(f"SELECT count(*) {done}", (str(marker),))
        (count,) = cursor.fetchone()
        if count < self.enqueued.get(str(marker), 0) or not count:
            return []
        cursor.execute(f"SELECT id, job_index, started, ended, command {done}", (str(marker),))
        return [
            Record(index, self._started(job_id, started, command), ended)
            for job_id, index, started, ended, command in cursor.fetchall()
        ]

    def _started(self, job_id: int, claimed: float, command: str) -> float:
        """The claim's time; for the latency job, the time its own process printed."""
        if json.loads(command) != PRINT_START:
            return claimed
        return float((self.log_dir() / "jobs" / f"{job_id}.log").read_bytes())

    def log_dir(self) -> Path:
        return scratch() / f"{self.name}-logs"

    def worker_argv(self) -> list[str]:
        logs = str(self.log_dir())
        return [sys.executable, __file__, self.database.name, self.database.target, logs]

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


def _row(job: JobSpec) -> tuple[str, str, int]:
    return json.dumps(job.command or PRINT_START), job.marker, job.index


class FloorSqlitePeer(FloorPeer):
    name = "floor-sqlite"
    broker = "sqlite"

    def make_database(self) -> Database:
        return Sqlite(str(scratch() / "floor.db"))


class FloorPostgresqlPeer(FloorPeer):
    """In run.py's PostgreSQL database, which it creates and drops."""

    name = "floor-postgresql"
    broker = "postgresql"

    def make_database(self) -> Database:
        return Postgresql(postgres_dsn())


class FloorMariadbPeer(FloorPeer):
    """On a database of its own, created here and dropped by close()."""

    name = "floor-mariadb"
    broker = "mariadb"

    def make_database(self) -> Database:
        return Mariadb(MARIADB_DATABASE)

    def setup(self) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {MARIADB_DATABASE}")
        self._admin(f"CREATE DATABASE {MARIADB_DATABASE}")
        super().setup()

    def close(self) -> None:
        super().close()
        self._admin(f"DROP DATABASE IF EXISTS {MARIADB_DATABASE}")

    def _admin(self, statement: str) -> None:
        connection = Mariadb("mysql").connect(autocommit=True)
        try:
            connection.cursor().execute(statement)
        finally:
            connection.close()


PEER = FloorSqlitePeer


# The worker ----------------------------------------------------------------------------------


class Worker:
    def __init__(self, database: Database, log_dir: Path) -> None:
        self.database = database
        self.jobs_dir = log_dir / "jobs"
        self.tmp_root = log_dir / "tmp"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        self.name = f"floor:{os.getpid()}"
        self.log = os.open(log_dir / "worker.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.stopping = threading.Event()
        self.wake = threading.Event()
        user = pwd.getpwuid(os.getuid())
        umask = os.umask(0o022)
        os.umask(umask)
        #: What batchjob records once per worker and copies into each attempt's evidence.
        self.context = {
            "user": user.pw_name,
            "groups": [grp.getgrgid(gid).gr_name for gid in os.getgroups()],
            "umask": f"{umask:04o}",
            "limits": {
                name[7:].lower(): resource.getrlimit(getattr(resource, name))
                for name in dir(resource)
                if name.startswith("RLIMIT_")
            },
            "cgroup": Path("/proc/self/cgroup").read_text().split(),
        }
        #: The worker's environment and what batchjob guarantees, as batchjob builds a job's.
        self.base_env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONUTF8": "1",
            "PYTHONFAULTHANDLER": "1",
        }
        self.base_env.setdefault("LANG", "C.UTF-8")
        self.base_env.setdefault("HOME", user.pw_dir)
        #: As recorded: masked as batchjob masks it, once per worker.
        self.recorded_env = mask_environment(self.base_env)

    def slot(self) -> None:
        database = self.database
        connection = database.connect()
        cursor = connection.cursor()
        finish, event = database.sql(FINISH), database.sql(EVENT)
        finished: tuple[int, str, int, str] | None = None
        while True:
            database.begin(connection)
            now = time.time()
            if finished is not None:
                job_id, token, exit_code, evidence = finished
                status = "done" if exit_code == 0 else "failed"
                cursor.execute(finish, (status, now, exit_code, job_id, token))
                cursor.execute(event, (job_id, "attempt", now, evidence))
            claimed = None
            if not self.stopping.is_set():
                lease = (os.urandom(16).hex(), now + LEASE_SECONDS, self.name, now)
                claimed = database.claim(cursor, lease)
                if claimed is not None:
                    cursor.execute(event, (claimed[0], "claimed", now, None))
            connection.commit()
            finished = None
            if claimed is not None:
                finished = self.run(*claimed)
            elif self.idle():
                connection.close()
                return

    def idle(self) -> bool:
        """Wait to be woken (or a poll's time); whether the worker is stopping."""
        self.wake.wait(IDLE_POLL_SECONDS)
        self.wake.clear()
        return self.stopping.is_set()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self, job_id: int, command: str, token: str) -> tuple[int, str, int, str]:
        argv = json.loads(command)
        tmpdir = self.tmp_root / str(job_id)
        tmpdir.mkdir(mode=0o700)
        log = os.open(
            self.jobs_dir / f"{job_id}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
        )
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        progress_read, progress_write = os.pipe()
        own = {
            "TMPDIR": str(tmpdir),
            "BATCH_JOB_ID": str(job_id),
            "BATCH_JOB_PROGRESS_FD": str(progress_write),
        }
        env = {**self.base_env, **own}
        os.write(self.log, f"started job_id={job_id}\n".encode())
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out_write,
                stderr=err_write,
                pass_fds=(progress_write,),
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            for descriptor in (out_write, err_write, progress_write):
                os.close(descriptor)
        watched = select.epoll()
        for descriptor in (out_read, err_read, progress_read):
            watched.register(descriptor, select.EPOLLIN)
        open_pipes = 3
        while open_pipes:
            for descriptor, _ in watched.poll(0.25):
                data = os.read(descriptor, 65536)
                if not data:
                    watched.unregister(descriptor)
                    os.close(descriptor)
                    open_pipes -= 1
                elif descriptor != progress_read:
                    os.write(log, data)
        watched.close()
        exit_code = process.wait()
        try:
            os.killpg(process.pid, 0)
            leftovers = True
        except ProcessLookupError:
            leftovers = False
        os.close(log)
        tmpdir.rmdir()
        os.write(self.log, f"ended job_id={job_id} exit={exit_code}\n".encode())
        evidence = {
            **self.context,
            "environment": {**self.recorded_env, **own},
            "pid": process.pid,
            "exit_code": exit_code,
            "leftovers": leftovers,
        }
        return job_id, token, exit_code, json.dumps(evidence, ensure_ascii=False)


def main() -> None:
    kind, target, log_dir = sys.argv[1:4]
    databases: dict[str, type[Database]] = {
        "sqlite": Sqlite,
        "mariadb": Mariadb,
        "postgresql": Postgresql,
    }
    worker = Worker(databases[kind](target), Path(log_dir))
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    threading.Thread(
        target=worker.database.listen, args=(worker.wake, worker.stopping), daemon=True
    ).start()
    slots = [threading.Thread(target=worker.slot) for _ in range(2)]
    for slot in slots:
        slot.start()
    for slot in slots:
        slot.join()


if __name__ == "__main__":
    main()
