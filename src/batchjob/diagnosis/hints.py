"""Hints: the likely cause of a failure and its fix, with the job's own figures.

Rules are data: a name, what they match (a pattern in the job's last stderr lines, or a
fact about how it ended) and a template filled from the facts. The first rule that matches
gives the hint. Each rule has a test that triggers it with a real job (tests/test_hints.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from batchjob.model import FailureReason


@dataclass(frozen=True)
class Facts:
    """What is known of an attempt that failed: the evidence a hint may quote."""

    failure_reason: FailureReason | None
    stderr: str = ""
    exit_code: int | None = None
    signal: int | None = None
    peak_open_fds: int | None = None
    fd_limit: int | None = None
    peak_rss_bytes: int | None = None
    memory_limit: int | None = None
    duration: float | None = None
    interpreter: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    oom_evidence: str | None = None


@dataclass(frozen=True)
class Rule:
    name: str
    matches: Callable[[Facts], re.Match[str] | bool | None]
    hint: Callable[[Facts, re.Match[str] | None], str]


def _stderr(pattern: str) -> Callable[[Facts], re.Match[str] | None]:
    compiled = re.compile(pattern)

    def match(facts: Facts) -> re.Match[str] | None:
        occurrences = list(compiled.finditer(facts.stderr))
        return occurrences[-1] if occurrences else None  # the one nearest the failure

    return match


def _size(value: int | None) -> str:
    if value is None:
        return "an unknown amount"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} bytes"


def _path_in(match: re.Match[str] | None) -> str:
    """The path an error names; for `'src' -> 'dst'` (a copy, a rename) the destination."""
    groups = match.groupdict() if match is not None else {}
    path = groups.get("destination") or groups.get("path")
    return f" ({path})" if path else ""


# `: 'path'`, or `: 'source' -> 'destination'` as shutil and os.replace word it.
_PATHS = r"(: '(?P<path>[^']+)'( -> '(?P<destination>[^']+)')?)?"


def _python(facts: Facts) -> str:
    if facts.interpreter:
        return facts.interpreter
    return f"the python3 found on its PATH={facts.env.get('PATH', '(unset)')}"


def _codec(match: re.Match[str] | None) -> str:
    codec = match.groupdict().get("codec") if match is not None else None
    return f" with the {codec!r} codec the code asked for" if codec else ""


def _locale(facts: Facts) -> str:
    shown = [f"{name}={facts.env[name]}" for name in ("LANG", "LC_ALL", "LC_CTYPE",
             "PYTHONIOENCODING", "PYTHONUTF8") if name in facts.env]  # fmt: skip
    return ", ".join(shown) or "no locale variables"


_HOME_REFUSED = r"(Permission denied|No such file or directory): '(?P<path>/(home|root|run/user)/"
_HOME_REFUSED += r"[^']*)'"

RULES: tuple[Rule, ...] = (
    Rule(
        "spawn_error",
        lambda facts: facts.failure_reason == FailureReason.SPAWN_ERROR,
        lambda facts, _: (
            "the worker could not start the command: check that the program exists on the "
            "worker's host and is executable by the worker's user, that the job's cwd exists "
            "there, and prefer an absolute path: under systemd the PATH is short "
            f"(this job's PATH={facts.env.get('PATH', '(unset)')})"
        ),
    ),
    Rule(
        "memory_limit",
        lambda facts: facts.failure_reason == FailureReason.MEMORY_LIMIT,
        lambda facts, _: (
            f"the job's processes reached {_size(facts.peak_rss_bytes)} of RSS, over its "
            f"memory_limit of {_size(facts.memory_limit)}: raise memory_limit for this task "
            "or make the job use less (stream rows instead of loading them all)"
        ),
    ),
    Rule(
        "oom_killed",
        lambda facts: facts.failure_reason == FailureReason.OOM_KILLED,
        lambda facts, _: (
            f"the kernel's OOM killer ended the job at a peak RSS of "
            f"{_size(facts.peak_rss_bytes)} ({facts.oom_evidence}): give the service more "
            "memory (MemoryMax= in the unit, the container's limit) or set a memory_limit "
            "below it so batchjob stops the job first and says so"
        ),
    ),
    Rule(
        "too_many_open_files",
        _stderr(r"Too many open files|EMFILE"),
        lambda facts, _: (
            f"open files peaked at {facts.peak_open_fds} of a limit of {facts.fd_limit}: "
            "raise LimitNOFILE= in the unit (ulimit -n by hand) or close the files and "
            "connections the job leaves open"
        ),
    ),
    Rule(
        "mysql_connection_lost",
        _stderr(
            r"MySQL server has gone away|Lost connection to (MySQL|MariaDB) server"
            r"|\b(2006|2013)\b.*(gone away|Lost connection)"
        ),
        lambda facts, _: (
            "the MySQL/MariaDB server closed the job's connection: it sat idle longer than "
            "the server's wait_timeout (SHOW VARIABLES LIKE 'wait_timeout') or the server "
            f"restarted; the job had run {facts.duration or 0:.0f}s when it failed. Reconnect "
            "before each use "
            "(SQLAlchemy pool_pre_ping=True, pymysql conn.ping(reconnect=True)) instead of "
            "holding one connection across long work"
        ),
    ),
    Rule(
        "read_only_file_system",
        _stderr(r"Read-only file system" + _PATHS),
        lambda facts, match: (
            f"the job wrote to a read-only path{_path_in(match)}: under systemd, "
            "ProtectSystem=strict makes the whole file system read-only except "
            "ReadWritePaths=; add the directory to ReadWritePaths= in the unit, or write "
            "under the job's TMPDIR or the log/data directories"
        ),
    ),
    Rule(
        "home_protected",
        _stderr(_HOME_REFUSED),
        lambda facts, match: (
            f"the job was refused a path under a home directory{_path_in(match)}: systemd's "
            "ProtectHome= hides /home, /root and /run/user from the service; set "
            "ProtectHome=read-only (or no) in the unit, or keep the job's files elsewhere"
        ),
    ),
    Rule(
        "no_space_left",
        _stderr(r"No space left on device" + _PATHS + "|ENOSPC"),
        lambda facts, match: (
            f"a file system the job writes to is full{_path_in(match)}: check `df -h` and "
            "`df -i` (inodes) there, free space or move the output; batchjob's own logs "
            "are capped by max_log_bytes"
        ),
    ),
    Rule(
        "module_not_found",
        _stderr(r"ModuleNotFoundError: No module named '(?P<module>[^']+)'"),
        lambda facts, match: (
            f"the job's Python ({_python(facts)}) cannot import "
            f"{match.group('module') if match else 'a module'}: by hand you probably run "
            "another Python or an activated virtualenv; put the virtualenv's python in the "
            "task's command (e.g. /srv/app/.venv/bin/python) or set PATH/VIRTUAL_ENV in its env"
        ),
    ),
    Rule(
        "unicode_encode",
        _stderr(r"UnicodeEncodeError: '(?P<codec>[^']+)' codec|UnicodeEncodeError"),
        lambda facts, match: (
            f"text could not be encoded{_codec(match)}; the job ran with {_locale(facts)}: "
            "use a UTF-8 locale (batchjob sets PYTHONIOENCODING=utf-8 and LANG=C.UTF-8 "
            "unless the task's env overrides them) and open files with encoding='utf-8'"
        ),
    ),
    Rule(
        "killed_from_outside",
        lambda facts: facts.failure_reason == FailureReason.SIGNAL and facts.signal == 9,
        lambda facts, _: (
            "SIGKILL came from outside batchjob and the kernel logged no OOM kill: someone "
            "ran `kill -9`, or a supervisor did (a container runtime, systemd's stop "
            f"timeout); peak RSS was {_size(facts.peak_rss_bytes)}. Check "
            "`journalctl -k` and the host's audit log"
        ),
    ),
)


def hint_for(facts: Facts) -> str | None:
    """The hint of the first rule that matches, or None."""
    for rule in RULES:
        matched = rule.matches(facts)
        if matched:
            return rule.hint(facts, matched if isinstance(matched, re.Match) else None)
    return None
