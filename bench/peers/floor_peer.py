"""The floor: batchjob's per-job contract written the shortest way, in the same Python.

Not a product: a worker of a hundred lines that does, for each job, what batchjob promises
and no more, so that `make bench` can say how much of batchjob's cost per job is its own
code rather than the contract (the bare loop says what the spawn itself costs):

- one durable SQLite transaction per job (WAL, synchronous=NORMAL, as batchjob's): the last
  job's outcome, fenced by its lease token, its evidence as an event row, and the next
  claim with a new lease;
- a private TMPDIR made and removed, the job's own log file, stdin /dev/null, stdout,
  stderr and a progress pipe drained on epoll, its own session, an environment built for
  it, no worker descriptor inherited (close_fds);
- after the exit, a check that nothing of its session is left, and a line in the worker's
  log at each start and end.

Absent, as they cost a short job nothing in batchjob either: lease renewal, stall and peak
sampling, a guardian. The idle worker polls every 2 ms (no wake-up), so its start latency
is no floor; its idle RSS is Python's and sqlite3's.

    python floor_peer.py DATABASE LOG_DIR     # the worker, until SIGTERM
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import resource
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import JobSpec, Peer, Record, scratch

LEASE_SECONDS = 60.0
IDLE_POLL_SECONDS = 0.002
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, status TEXT NOT NULL,"
    " command TEXT NOT NULL, marker TEXT, job_index INTEGER, lease_token TEXT,"
    " lease_expires REAL, worker TEXT, started REAL, ended REAL, exit_code INTEGER)",
    "CREATE INDEX IF NOT EXISTS jobs_due ON jobs (status, id)",
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL,"
    " kind TEXT NOT NULL, at REAL NOT NULL, data TEXT)",
    "CREATE INDEX IF NOT EXISTS events_job ON events (job_id, id)",
)
CLAIM = (
    "UPDATE jobs SET status = 'running', lease_token = ?, lease_expires = ?, worker = ?,"
    " started = ? WHERE id = (SELECT id FROM jobs WHERE status = 'pending' ORDER BY id LIMIT 1)"
    " RETURNING id, command, lease_token"
)
FINISH = (
    "UPDATE jobs SET status = ?, ended = ?, exit_code = ?, lease_token = NULL"
    " WHERE id = ? AND lease_token = ? AND status = 'running'"
)
EVENT = "INSERT INTO events (job_id, kind, at, data) VALUES (?, ?, ?, ?)"


def connect(database: str) -> sqlite3.Connection:
    connection = sqlite3.connect(database, isolation_level=None, timeout=30)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


class FloorSqlitePeer(Peer):
    name = "floor-sqlite"
    package = "batchjob"  # the version reported: the floor is batchjob's contract
    broker = "sqlite"
    has_bulk = True
    slots = "2 threads of one process, as batchjob's (the contract's floor, not a product)"

    def __init__(self) -> None:
        self.database = str(scratch() / "floor.db")
        self.connection: sqlite3.Connection | None = None

    def setup(self) -> None:
        scratch().mkdir(parents=True, exist_ok=True)
        self.connection = connect(self.database)
        for statement in SCHEMA:
            self.connection.execute(statement)

    def _db(self) -> sqlite3.Connection:
        assert self.connection is not None
        return self.connection

    def reset(self) -> None:
        self._db().execute("DELETE FROM events")
        self._db().execute("DELETE FROM jobs")

    def enqueue(self, job: JobSpec) -> None:
        self._db().execute(
            "INSERT INTO jobs (status, command, marker, job_index) VALUES ('pending', ?, ?, ?)",
            (json.dumps(job.command or ["/bin/true"]), job.marker, job.index),
        )

    def enqueue_bulk(self, jobs: list[JobSpec]) -> None:
        db = self._db()
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO jobs (status, command, marker, job_index) VALUES ('pending', ?, ?, ?)",
            [(json.dumps(job.command or ["/bin/true"]), job.marker, job.index) for job in jobs],
        )
        db.execute("COMMIT")

    def records(self, marker: Path) -> list[Record]:
        """Start: the claim; end: the recorded outcome (batchjob's peer reads the same)."""
        rows = self._db().execute(
            "SELECT job_index, started, ended FROM jobs WHERE marker = ? AND status = 'done'",
            (str(marker),),
        )
        return [Record(index, started, ended) for index, started, ended in rows]

    def worker_argv(self) -> list[str]:
        return [sys.executable, __file__, self.database, str(scratch() / "floor-logs")]

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


PEER = FloorSqlitePeer


# The worker ----------------------------------------------------------------------------------


class Worker:
    def __init__(self, database: str, log_dir: Path) -> None:
        self.database = database
        self.jobs_dir = log_dir / "jobs"
        self.tmp_root = log_dir / "tmp"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        self.name = f"floor:{os.getpid()}"
        self.log = os.open(log_dir / "worker.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.stopping = threading.Event()
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
        self.base_env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "LANG": "C.UTF-8",
            "HOME": user.pw_dir,
            "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONUTF8": "1",
            "PYTHONFAULTHANDLER": "1",
        }

    def slot(self) -> None:
        db = connect(self.database)
        finished: tuple[int, str, int, str] | None = None
        while True:
            db.execute("BEGIN IMMEDIATE")
            now = time.time()
            if finished is not None:
                job_id, token, exit_code, evidence = finished
                status = "done" if exit_code == 0 else "failed"
                db.execute(FINISH, (status, now, exit_code, job_id, token))
                db.execute(EVENT, (job_id, "attempt", now, evidence))
            claimed = None
            if not self.stopping.is_set():
                token = os.urandom(16).hex()
                claimed = db.execute(CLAIM, (token, now + LEASE_SECONDS, self.name, now)).fetchone()
                if claimed is not None:
                    db.execute(EVENT, (claimed[0], "claimed", now, None))
            db.execute("COMMIT")
            finished = None
            if claimed is not None:
                finished = self.run(*claimed)
            elif self.stopping.wait(IDLE_POLL_SECONDS):
                return

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
        env = {
            **self.base_env,
            "TMPDIR": str(tmpdir),
            "BATCH_JOB_ID": str(job_id),
            "BATCH_JOB_PROGRESS_FD": str(progress_write),
        }
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
            "environment": env,
            "pid": process.pid,
            "exit_code": exit_code,
            "leftovers": leftovers,
        }
        return job_id, token, exit_code, json.dumps(evidence, ensure_ascii=False)


def main() -> None:
    worker = Worker(sys.argv[1], Path(sys.argv[2]))
    signal.signal(signal.SIGTERM, lambda *_: worker.stopping.set())
    slots = [threading.Thread(target=worker.slot) for _ in range(2)]
    for slot in slots:
        slot.start()
    for slot in slots:
        slot.join()


if __name__ == "__main__":
    main()
