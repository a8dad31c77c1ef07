"""`batchjob doctor`: the operator's checklist of SPEC §6, run in seconds.

The facts are gathered once (the database's side in one read-only transaction, see
`store.health`); each check is then a small function from those facts to one finding —
OK, WARN, FAIL or N/A, a one-line message with the figures and a one-line fix — and is
registered in CHECKS. A check never raises: an error while checking becomes its own line.
`--probe` sends a job through a running worker to report what a job really sees.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psutil
from rich.console import Console
from rich.table import Table
from rich.text import Text

from batchjob.config import Settings
from batchjob.diagnosis.probe import read_output as read_probe_output
from batchjob.errors import DuplicateJob, InvalidTransition
from batchjob.follow import log_path
from batchjob.model import Job, JobStatus
from batchjob.queue import Queue
from batchjob.store import Store
from batchjob.store.health import LONG_TRANSACTION_SECONDS
from batchjob.worker.supervisor import MIN_FREE_LOG_BYTES, WORKER_LOG_NAME

Status = Literal["OK", "WARN", "FAIL", "N/A"]
STATUS_STYLES: Mapping[Status, str] = {
    "OK": "green",
    "WARN": "yellow",
    "FAIL": "bold red",
    "N/A": "dim",
}

# A worker refreshes last_seen every few seconds; three minutes of silence means it is gone.
STALE_WORKER_SECONDS = 180
# A live worker rescues an expired lease within seconds; one expired this long is not seen to.
OVERDUE_RESCUE_SECONDS = 60
# Below this the server drops the idle connection of an ordinary script ("server has gone away").
SHORT_WAIT_TIMEOUT_SECONDS = 300
MIN_NOFILE = 1024  # the smallest soft fd limit a job should get (systemd's own default)
NEARLY_FULL = 0.9  # of a filesystem's space or inodes, of the system's file handles
FD_USE_WARNING = 0.8  # of a process's soft fd limit
# An OOM kill longer ago than this is history, not a finding (dated by the kernel log).
RECENT_OOM_SECONDS = 24 * 3600
LOW_MEMORY = 0.1  # MemAvailable below this share of MemTotal
HIGH_SWAP = 0.5  # SwapTotal in use above this share
LOG_SHARE_WARNING = 0.5  # of the log filesystem taken by the log dir
LARGEST_FILES = 5
QUERY_PREVIEW = 120  # characters of a query shown in a one-line message
SHOWN_ITEMS = 3  # culprits named in one line; the rest are counted

SYSTEMD_UNIT = "batch-job-queue-worker.service"
SYSTEMD_PROPERTIES = (
    "LoadState",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "ReadWritePaths",
    "LimitNOFILE",
    "LimitNOFILESoft",
)
# What each setting makes read-only (or hides) for the unit, ReadWritePaths aside.
_READ_ONLY_UNDER_PROTECT_SYSTEM = {
    "yes": ("/usr", "/boot", "/efi"),
    "true": ("/usr", "/boot", "/efi"),
    "full": ("/usr", "/boot", "/efi", "/etc"),
}
_HOME_DIRECTORIES = ("/home", "/root", "/run/user")
_TMP_DIRECTORIES = ("/tmp", "/var/tmp")  # noqa: S108 - paths compared, never written
_OOM_KILL_LINE = re.compile(r"^\[\s*(?P<seconds>\d+\.\d+)\]\s*(?P<text>.*Killed process.*)$")

PROBE_TIMEOUT_SECONDS = 30.0
PROBE_UNIQUE_KEY = "doctor-probe"
PROBE_COMMAND = (sys.executable, "-m", "batchjob.diagnosis.probe")


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    status: Status
    message: str
    fix: str | None = None
    figures: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "fix": self.fix,
            "figures": dict(self.figures),
        }


@dataclass(frozen=True)
class Finding:
    """What a check function concludes; the runner adds the check's name."""

    status: Status
    message: str
    fix: str | None = None
    figures: Mapping[str, Any] = field(default_factory=dict)


class NotChecked(Exception):
    """Raised by a check that has nothing to look at here; reported as N/A with the reason."""


@dataclass(frozen=True)
class Facts:
    """What every check may look at, gathered once."""

    settings: Settings
    database_url: str  # passwords masked
    database: Mapping[str, Any] | None  # Store.health_report(); None when unreadable
    database_error: str | None
    host: str


def ok(message: str, **figures: Any) -> Finding:
    return Finding("OK", message, None, figures)


def warn(message: str, fix: str | None, **figures: Any) -> Finding:
    return Finding("WARN", message, fix, figures)


def fail(message: str, fix: str | None, **figures: Any) -> Finding:
    return Finding("FAIL", message, fix, figures)


def not_applicable(message: str, **figures: Any) -> Finding:
    return Finding("N/A", message, None, figures)


# ---- running the checks ----------------------------------------------------------------------


def run_checks(settings: Settings, store: Store) -> list[Check]:
    """Every check of the registry, in order, against facts gathered once."""
    facts = gather_facts(settings, store)
    return [_run_check(name, check, facts) for name, check in CHECKS]


def gather_facts(settings: Settings, store: Store) -> Facts:
    database: Mapping[str, Any] | None = None
    error = _missing_sqlite_file(store)
    if error is None:
        try:
            database = store.health_report()
        except Exception as exc:  # StoreUnavailable, or anything the driver raises
            error = " ".join(str(exc).split())
    return Facts(settings, store.display_url, database, error, socket.gethostname())


def _missing_sqlite_file(store: Store) -> str | None:
    """Opening a SQLite URL creates the file; the doctor must not, so it looks first."""
    path = store.url.database
    if store.dialect_name != "sqlite" or not path or path == ":memory:" or Path(path).exists():
        return None
    return f"the SQLite database file {Path(path).absolute()} does not exist"


def _run_check(name: str, check: Callable[[Facts], Finding], facts: Facts) -> Check:
    try:
        finding = check(facts)
    except NotChecked as reason:
        finding = not_applicable(str(reason))
    except Exception as exc:
        finding = warn(f"could not check: {type(exc).__name__}: {exc}", None)
    return Check(name, finding.status, finding.message, finding.fix, finding.figures)


def _database(facts: Facts) -> Mapping[str, Any]:
    if facts.database is None:
        raise NotChecked("not checked: the database could not be read")
    return facts.database


def _table_rows(facts: Facts, key: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] | None = _database(facts)[key]
    if rows is None:
        raise NotChecked("not checked: the database has no batchjob schema yet")
    return rows


# ---- database --------------------------------------------------------------------------------


def check_database(facts: Facts) -> Finding:
    if facts.database is None:
        return fail(
            f"cannot read {facts.database_url}: {facts.database_error}",
            "check database_url (BATCH_JOB_DATABASE_URL), that the server runs, "
            "then `batchjob init`",
        )
    db = facts.database
    version, latest = db["schema_version"], db["latest_schema_version"]
    where = f"{db['kind']} {db['server_version']} at {facts.database_url}"
    offset = (db["database_now"] - datetime.now(UTC).replace(tzinfo=None)).total_seconds()
    figures = {
        "kind": db["kind"],
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
    return ok(f"{where}: schema {version} of {latest}{_sqlite_note(sqlite)}", **figures)


def _sqlite_note(sqlite: Mapping[str, Any] | None) -> str:
    if sqlite is None or sqlite["size_bytes"] is None:
        return ""
    return f", {_size(sqlite['size_bytes'])}, journal {sqlite['journal_mode']}"


def check_wait_timeout(facts: Facts) -> Finding:
    db = _database(facts)
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
        _first_few(described),
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
        _first_few(described),
        f"end the blocking transaction, or {_kill_command(db['kind'], rows[0]['blocking_id'])}",
        lock_waits=rows,
    )


def _server_catalog(facts: Facts, key: str) -> Mapping[str, Any]:
    db = _database(facts)
    if db["kind"] == "sqlite":
        raise NotChecked("SQLite has no server sessions: writers queue on the file lock")
    if key in db["catalog_errors"]:
        raise NotChecked(f"cannot read the server's sessions: {db['catalog_errors'][key]}")
    return db


def _kill_command(kind: str, connection_id: object) -> str:
    if kind == "postgresql":
        return f"SELECT pg_terminate_backend({connection_id})"
    return f"KILL {connection_id}"


# ---- workers and jobs ------------------------------------------------------------------------


def check_workers(facts: Facts) -> Finding:
    rows = _table_rows(facts, "workers")
    due = _database(facts)["due_jobs"]
    problems = [problem for row in rows if (problem := _worker_problem(row, facts.host))]
    live = len(rows) - len(problems)
    figures = {"workers": rows, "live": live, "due_jobs": due}
    if problems:
        return warn(
            _first_few(problems),
            "a worker that died without stopping left this row: see why (journalctl -u "
            f"{SYSTEMD_UNIT}, dmesg for OOM kills); any live worker rescues its jobs",
            **figures,
        )
    if due and not live:
        return warn(
            f"{due} jobs are due and no worker is registered to take them",
            "start `batchjob worker`",
            **figures,
        )
    if not rows:
        return ok("no worker is registered; no job is due", **figures)
    return ok(f"live workers ({live}): {_first_few([row['id'] for row in rows])}", **figures)


def _worker_problem(row: Mapping[str, Any], host: str) -> str | None:
    silent = row["seconds_since_seen"]
    if row["host"] == host and not _is_running(row["pid"]):
        return f"worker {row['id']} is registered but pid {row['pid']} is not running"
    if silent > STALE_WORKER_SECONDS:
        where = "runs here" if row["host"] == host else f"on {row['host']}"
        return f"worker {row['id']} ({where}) has not checked in for {silent:.0f}s"
    return None


def check_leases(facts: Facts) -> Finding:
    expired = _table_rows(facts, "expired_leases")
    running = _table_rows(facts, "running_jobs")
    live = sum(
        row["seconds_since_seen"] <= STALE_WORKER_SECONDS for row in _table_rows(facts, "workers")
    )
    dead = [
        row
        for row in running
        if row["pid"] and _host_of(row["worker_id"]) == facts.host and not _is_running(row["pid"])
    ]
    figures = {"expired_leases": expired, "dead_pids": dead, "running": len(running)}
    problems = [
        f"job {row['id']} (worker {row['worker_id']}): lease expired "
        f"{row['seconds_expired']:.0f}s ago"
        for row in expired
    ] + [
        f"job {row['id']} (worker {row['worker_id']}) is running but its pid {row['pid']} "
        "is not running here"
        for row in dead
    ]
    if not problems:
        return ok(f"{len(running)} jobs running, every lease current", **figures)
    message = _first_few(problems)
    if expired and (not live or expired[0]["seconds_expired"] > OVERDUE_RESCUE_SECONDS):
        return fail(
            message,
            "a live worker rescues these within seconds: start `batchjob worker`",
            **figures,
        )
    if expired:
        return warn(message, "a live worker rescues these within seconds", **figures)
    return warn(
        message,
        "restart that worker: its job's process is gone but the worker still holds the lease",
        **figures,
    )


def _is_running(pid: int) -> bool:
    """Whether a process with this pid exists here and is not a zombie."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # it exists; we may not look at it


def _host_of(worker_id: str | None) -> str | None:
    """The host part of a worker id "host:pid:random"."""
    return worker_id.rsplit(":", 2)[0] if worker_id and worker_id.count(":") >= 2 else None


# ---- this host -------------------------------------------------------------------------------


def check_open_files(facts: Facts) -> Finding:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    allocated, _unused, maximum = (int(value) for value in _read("/proc/sys/fs/file-nr").split())
    workers = _local_worker_fds(facts)
    figures = {
        "soft": soft,
        "hard": hard,
        "system_allocated": allocated,
        "system_max": maximum,
        "workers": workers,
    }
    message = (
        f"this process: soft {_limit(soft)}, hard {_limit(hard)}; system: {allocated} of "
        f"{maximum} file handles"
    ) + "".join(
        f"; worker pid {pid}: {used} of {_limit(limit)}" for pid, (used, limit) in workers.items()
    )
    crowded = [
        pid for pid, (used, limit) in workers.items() if limit > 0 and used > limit * FD_USE_WARNING
    ]
    if crowded:
        return warn(message, f"raise LimitNOFILE of {SYSTEMD_UNIT} (or ulimit -n)", **figures)
    if allocated > maximum * NEARLY_FULL:
        return warn(message, "raise fs.file-max (sysctl), or find the process leaking", **figures)
    if 0 < soft < MIN_NOFILE:
        return warn(message, f"raise the soft limit to at least {MIN_NOFILE}", **figures)
    return ok(message, **figures)


def _local_worker_fds(facts: Facts) -> dict[int, tuple[int, int]]:
    """Open fds and soft fd limit of each registered worker running on this host."""
    rows = (facts.database or {}).get("workers") or []
    found = {}
    for row in rows:
        if row["host"] != facts.host:
            continue
        try:
            process = psutil.Process(row["pid"])
            found[row["pid"]] = (process.num_fds(), process.rlimit(psutil.RLIMIT_NOFILE)[0])
        except psutil.Error:
            continue
    return found


def check_memory(_facts: Facts) -> Finding:
    info = _meminfo()
    total, available = info["MemTotal"], info["MemAvailable"]
    swap_total, swap_used = info["SwapTotal"], info["SwapTotal"] - info["SwapFree"]
    swap = f"swap {_size(swap_used)} used of {_size(swap_total)}" if swap_total else "no swap"
    message = f"{_size(available)} available of {_size(total)}; {swap}"
    figures = {
        "total": total,
        "available": available,
        "swap_total": swap_total,
        "swap_used": swap_used,
    }
    if available < total * LOW_MEMORY:
        return warn(message, "set memory_limit on large jobs, or run fewer at once", **figures)
    if swap_total and swap_used > swap_total * HIGH_SWAP:
        return warn(message, "the host is swapping: give it memory, or run fewer jobs", **figures)
    return ok(message, **figures)


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    values = {}
    for line in _read("/proc/meminfo").splitlines():
        name, _, rest = line.partition(":")
        amount, *unit = rest.split()
        values[name] = int(amount) * (1024 if unit == ["kB"] else 1)
    return values


def check_oom_kills(_facts: Facts) -> Finding:
    counters = dict(line.split() for line in _read("/proc/vmstat").splitlines())
    kills = int(counters.get("oom_kill", 0))
    uptime = float(_read("/proc/uptime").split()[0])
    since_boot = f"since boot ({uptime / 3600:.1f}h ago)"
    figures: dict[str, Any] = {"oom_kills_since_boot": kills, "uptime_seconds": uptime}
    if kills == 0:
        return ok(f"no OOM kill {since_boot}", **figures)
    last = _last_oom_kill(uptime)
    figures["last"] = last
    message = f"the kernel's OOM killer killed {kills} processes {since_boot}" + (
        f"; the last {last[0] / 60:.0f} min ago: {last[1]}" if last else ""
    )
    if last and last[0] > RECENT_OOM_SECONDS:
        return ok(f"{message} (none in the last {RECENT_OOM_SECONDS // 3600}h)", **figures)
    return warn(
        message,
        "give large jobs a memory_limit, or the host (or the unit's MemoryMax) more memory",
        **figures,
    )


def _last_oom_kill(uptime: float) -> tuple[float, str] | None:
    """Seconds since the kernel log's last "Killed process" line, and the line, if readable."""
    if shutil.which("dmesg") is None:
        return None
    try:
        done = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    kills = [match for line in done.stdout.splitlines() if (match := _OOM_KILL_LINE.match(line))]
    if not kills:
        return None
    return uptime - float(kills[-1]["seconds"]), kills[-1]["text"][:QUERY_PREVIEW]


def check_log_disk(facts: Facts) -> Finding:
    return _disk_finding(
        facts.settings.log_dir,
        "log dir",
        "free space there (`batchjob purge --older-than 30d` removes old jobs and their logs)",
    )


def check_data_disk(facts: Facts) -> Finding:
    sqlite = _database(facts).get("sqlite")
    if sqlite is None or sqlite["path"] is None:
        raise NotChecked("the database keeps its data on its server")
    return _disk_finding(
        Path(sqlite["path"]).parent,
        "SQLite data dir",
        "free space there: SQLite cannot grow its file and WAL on a full disk",
    )


def _disk_finding(directory: Path, role: str, fix: str) -> Finding:
    """Free space and inodes of the filesystem `directory` is (or will be) on."""
    where = directory.absolute()
    usage = os.statvfs(_nearest_existing(where))
    free = usage.f_bavail * usage.f_frsize
    used = (usage.f_blocks - usage.f_bfree) * usage.f_frsize
    used_share = used / (used + free) if used + free else 0.0
    inode_share = 1 - usage.f_ffree / usage.f_files if usage.f_files else 0.0
    message = (
        f"{role} {where}: {_size(free)} free of {_size(usage.f_blocks * usage.f_frsize)} "
        f"({used_share:.0%} used, inodes {inode_share:.0%} used)"
    )
    figures = {
        "path": str(where),
        "free_bytes": free,
        "used_share": round(used_share, 4),
        "inodes_used_share": round(inode_share, 4),
    }
    if free < MIN_FREE_LOG_BYTES:
        return fail(
            f"{message}: below {_size(MIN_FREE_LOG_BYTES)}, workers stop claiming", fix, **figures
        )
    if used_share > NEARLY_FULL or inode_share > NEARLY_FULL:
        return warn(message, fix, **figures)
    return ok(message, **figures)


def _nearest_existing(path: Path) -> Path:
    """`path`, or its closest existing parent: where it would be created."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_log_size(facts: Facts) -> Finding:
    log_dir = facts.settings.log_dir.absolute()
    if not log_dir.is_dir():
        raise NotChecked(f"{log_dir} does not exist yet (the worker creates it)")
    files = list(_files_with_sizes(log_dir))
    total = sum(size for _path, size in files)
    largest = heapq.nlargest(LARGEST_FILES, files, key=lambda item: item[1])
    shown = ", ".join(f"{path.relative_to(log_dir)} {_size(size)}" for path, size in largest)
    message = f"{log_dir} holds {_size(total)} in {len(files)} file(s)" + (
        f"; largest: {shown}" if shown else ""
    )
    figures = {
        "path": str(log_dir),
        "total_bytes": total,
        "files": len(files),
        "largest": [{"path": str(path), "bytes": size} for path, size in largest],
    }
    capacity = shutil.disk_usage(log_dir).total
    if total > capacity * LOG_SHARE_WARNING:
        return warn(
            message,
            f"`batchjob purge --older-than 30d`; rotate {WORKER_LOG_NAME} (logrotate, then SIGHUP)",
            **figures,
        )
    return ok(message, **figures)


def _files_with_sizes(directory: Path) -> Iterable[tuple[Path, int]]:
    for root, _dirs, names in os.walk(directory):
        for name in names:
            path = Path(root, name)
            try:
                yield path, path.lstat().st_size
            except OSError:  # removed while we walked (purge, rotation)
                continue


# ---- systemd ---------------------------------------------------------------------------------


def check_systemd_sandbox(facts: Facts) -> Finding:
    properties = _unit_properties()
    if properties is None or properties.get("LoadState") != "loaded":
        raise NotChecked("the worker does not run under systemd here")
    keep = [facts.settings.log_dir.absolute()]
    sqlite = (facts.database or {}).get("sqlite")
    if sqlite and sqlite["path"]:
        keep.append(Path(sqlite["path"]).parent)
    problems = sandbox_problems(properties, keep, Path(tempfile.gettempdir()))
    soft = properties.get("LimitNOFILESoft", "")
    if soft.isdigit() and int(soft) < MIN_NOFILE:
        problems.append(f"LimitNOFILE gives jobs a soft limit of {soft} open files")
    figures = {name: properties.get(name) for name in SYSTEMD_PROPERTIES}
    if problems:
        return warn(
            _first_few(problems),
            f"add the directories to ReadWritePaths= of {SYSTEMD_UNIT} "
            "(`batchjob systemd-unit` writes them), then systemctl daemon-reload",
            **figures,
        )
    return ok(
        f"{SYSTEMD_UNIT}: ProtectSystem={properties.get('ProtectSystem')}, "
        f"ProtectHome={properties.get('ProtectHome')}, "
        f"PrivateTmp={properties.get('PrivateTmp')}, LimitNOFILE={soft or '?'}/"
        f"{properties.get('LimitNOFILE')}; the worker can write where it must",
        **figures,
    )


def _unit_properties() -> dict[str, str] | None:
    """`systemctl show` of the worker's unit, or None where systemd cannot be asked."""
    if shutil.which("systemctl") is None:
        return None
    command = ["systemctl", "show", "-p", ",".join(SYSTEMD_PROPERTIES), SYSTEMD_UNIT]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return dict(line.partition("=")[::2] for line in done.stdout.splitlines() if "=" in line)


def sandbox_problems(
    properties: Mapping[str, str], keep: Sequence[Path], scratch: Path
) -> list[str]:
    """Why the unit's sandbox would stop the worker writing where it must, one line each.

    `keep` are directories whose files must outlive the worker and be seen by the operator
    (logs, the SQLite data); `scratch` is where the worker makes each job's private TMPDIR.
    """
    private_tmp = properties.get("PrivateTmp", "no") in ("yes", "true")
    problems = []
    for directory in keep:
        if private_tmp and _under(directory, _TMP_DIRECTORIES):
            problems.append(
                f"{directory} is under PrivateTmp=yes: the worker writes into its own private "
                "tmp, invisible here and removed when it stops"
            )
        elif reason := _read_only_reason(properties, directory):
            problems.append(reason)
    private_scratch = private_tmp and _under(scratch, _TMP_DIRECTORIES)
    if not private_scratch and (reason := _read_only_reason(properties, scratch)):
        problems.append(f"jobs' TMPDIR: {reason}")
    return problems


def _read_only_reason(properties: Mapping[str, str], directory: Path) -> str | None:
    """Which of ProtectSystem= / ProtectHome= makes `directory` unwritable, unless allowed."""
    writable = [Path(entry.lstrip("-+")) for entry in properties.get("ReadWritePaths", "").split()]
    if _under(directory, writable):
        return None
    protect_system = properties.get("ProtectSystem", "no")
    protect_home = properties.get("ProtectHome", "no")
    if protect_system == "strict":
        return f"{directory} is read-only under ProtectSystem=strict"
    if _under(directory, _READ_ONLY_UNDER_PROTECT_SYSTEM.get(protect_system, ())):
        return f"{directory} is read-only under ProtectSystem={protect_system}"
    if protect_home not in ("no", "false") and _under(directory, _HOME_DIRECTORIES):
        return f"{directory} is not writable under ProtectHome={protect_home}"
    return None


def _under(path: Path, roots: Iterable[Path | str]) -> bool:
    return any(path == Path(root) or path.is_relative_to(root) for root in roots)


# ---- the registry ----------------------------------------------------------------------------

CHECKS: tuple[tuple[str, Callable[[Facts], Finding]], ...] = (
    ("database", check_database),
    ("wait-timeout", check_wait_timeout),
    ("long-transactions", check_long_transactions),
    ("lock-waits", check_lock_waits),
    ("workers", check_workers),
    ("leases", check_leases),
    ("open-files", check_open_files),
    ("memory", check_memory),
    ("oom-kills", check_oom_kills),
    ("log-disk", check_log_disk),
    ("data-disk", check_data_disk),
    ("log-size", check_log_size),
    ("systemd-sandbox", check_systemd_sandbox),
)


# ---- the probe -------------------------------------------------------------------------------


def probe_checks(queue: Queue, timeout: float = PROBE_TIMEOUT_SECONDS) -> list[Check]:
    """Send the probe job through a worker and report what it saw (never raises)."""
    try:
        job = _send_probe(queue, timeout)
        return _probe_findings(queue, job, timeout)
    except Exception as exc:
        return [Check("probe", "FAIL", f"could not run the probe: {exc}", "see `batchjob list`")]


def _send_probe(queue: Queue, timeout: float) -> Job:
    """Enqueue the probe (or join the one already waiting) and wait for it to end."""
    try:
        job = queue.enqueue(list(PROBE_COMMAND), unique_key=PROBE_UNIQUE_KEY, timeout=timeout)
    except DuplicateJob as exc:
        if exc.existing_job_id is None:
            raise
        job = queue.get(exc.existing_job_id)
    job = queue.wait(job.id, timeout=timeout, poll_interval=0.2)
    if not job.status.is_finished:
        with contextlib.suppress(InvalidTransition):  # unless it ended just now
            queue.cancel(job.id)  # nobody should find a stale probe in the queue later
    return job


def _probe_findings(queue: Queue, job: Job, timeout: float) -> list[Check]:
    if job.status == JobStatus.PENDING:
        return [
            Check(
                "probe",
                "FAIL",
                f"no worker took the probe job {job.id} (queue {job.queue}) within {timeout:g} s",
                f"start `batchjob worker` serving the queue {job.queue}",
            )
        ]
    if job.status == JobStatus.RUNNING:
        return [
            Check(
                "probe",
                "FAIL",
                f"the probe job {job.id} started on worker {job.worker_id} but did not finish "
                f"within {timeout:g} s",
                f"batchjob diagnose {job.id}",
            )
        ]
    if job.status != JobStatus.COMPLETED:
        ended = f"{job.status}" + (
            f" ({job.failure_reason}): {job.error_summary}" if job.failure_reason else ""
        )
        return [
            Check(
                "probe",
                "FAIL",
                f"the probe job {job.id} on worker {job.worker_id} is {ended}".replace("\n", " "),
                f"batchjob show {job.id}; batchjob logs {job.id}",
            )
        ]
    seen = _probe_output(queue, job)
    if seen is None:
        return [
            Check(
                "probe",
                "WARN",
                f"the probe job {job.id} ran on worker {job.worker_id}, but its log "
                f"{job.log_path} is not readable here",
                f"run the doctor on that worker's host, or `batchjob logs {job.id}` there",
            )
        ]
    return [_probe_environment(job, seen), _probe_writable(seen)]


def _probe_output(queue: Queue, job: Job) -> dict[str, Any] | None:
    try:
        text = log_path(queue, job).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return read_probe_output(text)


def _probe_environment(job: Job, seen: Mapping[str, Any]) -> Check:
    python, limits, encoding = seen["python"], seen["limits"], seen["encoding"]["preferred"]
    venv = f" (virtualenv {seen['virtualenv']})" if seen["virtualenv"] else ""
    message = (
        f"a job on worker {job.worker_id} runs {python['executable']} {python['version']}{venv} "
        f"as {seen['user']} (uid {seen['uid']}), umask {seen['umask']}, "
        f"LANG {seen['locale'].get('LANG')} ({encoding}), "
        f"open files {'/'.join(map(str, limits['nofile']))}, "
        f"processes {'/'.join(map(str, limits['nproc']))}"
    )
    if str(encoding).lower().replace("-", "") != "utf8":
        return Check(
            "probe",
            "WARN",
            message,
            "give the worker a UTF-8 locale (LANG=C.UTF-8) or jobs hit UnicodeEncodeError",
            seen,
        )
    return Check("probe", "OK", message, None, seen)


def _probe_writable(seen: Mapping[str, Any]) -> Check:
    writable = seen["writable"]
    figures = {"writable": writable}
    blocked = [
        f"{name} {entry['path']} is not writable: {entry['error']}"
        for name, entry in writable.items()
        if name in ("TMPDIR", "HOME") and not entry["writable"]
    ]
    if blocked:
        return Check(
            "probe-writable",
            "WARN",
            "; ".join(blocked),
            "check ProtectHome/ReadWritePaths of the unit, or set HOME in the job's env",
            figures,
        )
    cwd = writable["cwd"]
    cwd_note = "" if cwd["writable"] else f"; its cwd {cwd['path']} is read-only"
    return Check(
        "probe-writable",
        "OK",
        f"a job can write to TMPDIR {writable['TMPDIR']['path']} and HOME "
        f"{writable['HOME']['path']}{cwd_note}",
        None,
        figures,
    )


# ---- output ----------------------------------------------------------------------------------


def run_doctor(
    settings: Settings,
    queue: Queue,
    *,
    as_json: bool,
    probe: bool,
    out: Console,
    probe_timeout: float = PROBE_TIMEOUT_SECONDS,
) -> int:
    """Run the checks (and the probe), print them; 1 when any check FAILs, else 0."""
    checks = run_checks(settings, queue.store)
    if probe:
        checks += probe_checks(queue, probe_timeout)
    if as_json:
        _print_json(checks, out)
    else:
        _print_table(checks, out)
    return 1 if any(check.status == "FAIL" for check in checks) else 0


def _print_json(checks: Sequence[Check], out: Console) -> None:
    document = {
        "checks": [check.to_json() for check in checks],
        "ok": not any(check.status == "FAIL" for check in checks),
    }
    out.print(
        json.dumps(document, ensure_ascii=False, indent=2, default=_json_value),
        markup=False,
        highlight=False,
        emoji=False,
        soft_wrap=True,
    )


def _json_value(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _print_table(checks: Sequence[Check], out: Console) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("status", "check", "message", "fix"):
        table.add_column(column, overflow="fold")
    for check in checks:
        table.add_row(
            Text(check.status, style=STATUS_STYLES[check.status]),
            Text(check.name),
            Text(check.message),
            Text(check.fix or ""),
        )
    out.print(table)


# ---- small helpers ---------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotChecked(f"{path} does not exist on this system") from None


def _first_few(items: Sequence[str]) -> str:
    """Up to SHOWN_ITEMS items on one line, and how many more there are."""
    shown = "; ".join(items[:SHOWN_ITEMS])
    more = len(items) - SHOWN_ITEMS
    return f"{shown}; and {more} more" if more > 0 else shown


def _query(query: str | None) -> str:
    """A query on one short line."""
    if not query:
        return "(no statement running)"
    flat = " ".join(query.split())
    return flat if len(flat) <= QUERY_PREVIEW else flat[: QUERY_PREVIEW - 3] + "..."


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def _size(count: int) -> str:
    """Bytes for a human: 512 B, 3.2 MiB, 78.9 GiB."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    amount, index = float(count), 0
    while amount >= 1024 and index < len(units) - 1:
        amount, index = amount / 1024, index + 1
    return f"{count} B" if index == 0 else f"{amount:.1f} {units[index]}"


__all__ = ["CHECKS", "Check", "probe_checks", "run_checks", "run_doctor", "sandbox_problems"]
