"""An attempt's execution context: what differs between "by hand" and "under the worker".

User and groups, umask, cwd, the environment (secrets masked), the interpreter and its
virtualenv, the locale, every resource limit, the cgroup and its limits, and the systemd
sandbox when the worker runs in a unit. The parts that belong to the worker process are read
once per process; the per-job parts are cheap.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import resource
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from batchjob.diagnosis import systemctl
from batchjob.redact import mask_environment

SANDBOX_PROPERTIES = (
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "LimitNOFILE",
    "MemoryMax",
    "NoNewPrivileges",
    "User",
)
LOCALE_VARIABLES = ("LANG", "LC_ALL", "LC_CTYPE", "PYTHONIOENCODING", "PYTHONUTF8")
INTERPRETER_LOOKUP_SECONDS = 1.0
INTERPRETER_LOOKUPS_KEPT = 256
_interpreters: dict[tuple[str | None, ...], tuple[float, tuple[str | None, str | None]]] = {}
"""(program, PATH, VIRTUAL_ENV) -> (when looked up, (interpreter, virtualenv))."""


def execution_context(
    env: Mapping[str, str], command: Sequence[str], cwd: str | None
) -> dict[str, Any]:
    """The context a job with this environment, command and cwd runs in, from this process."""
    interpreter, virtualenv = _interpreter(
        command[0] if command else None, env.get("PATH"), env.get("VIRTUAL_ENV")
    )
    return {
        **process_context(),
        "cwd": cwd or os.getcwd(),
        "environment": mask_environment(env),
        "interpreter": interpreter,
        "virtualenv": virtualenv,
        "locale": {name: env[name] for name in LOCALE_VARIABLES if name in env},
    }


def _interpreter(
    name: str | None, path: str | None, virtual_env: str | None
) -> tuple[str | None, str | None]:
    """The program `name` runs as on `path` (links resolved) and its virtualenv.

    Looked up once a second for the same arguments, not at every job's end: the lookup is
    nine system calls (22 us, 2 % of a /bin/true job's worker), and its answer is
    already as old as the job it describes, since it is taken when the job has ended.
    """
    key = (name, path, virtual_env)
    now = time.monotonic()
    known = _interpreters.get(key)
    if known is not None and now - known[0] < INTERPRETER_LOOKUP_SECONDS:
        return known[1]
    found = shutil.which(name, path=path) if name else None
    answer = (os.path.realpath(found) if found else None, virtual_env or _virtualenv(found))
    if len(_interpreters) >= INTERPRETER_LOOKUPS_KEPT:
        _interpreters.clear()
    _interpreters[key] = (now, answer)
    return answer


@functools.cache
def process_context() -> dict[str, Any]:
    """What every job of this process shares: identity, umask, limits, cgroup, sandbox."""
    return {
        "user": _user_name(os.getuid()),
        "uid": os.getuid(),
        "groups": sorted({_group_name(gid) for gid in os.getgroups()}),
        "umask": _umask(),
        "limits": _limits(),
        "cgroup": _cgroup(),
        "systemd": _systemd_sandbox(),
    }


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _umask() -> str | None:
    """From /proc (changing the umask to read it would race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return line.split()[1]
    except OSError:
        pass
    return None


def _limits() -> dict[str, list[int | str]]:
    limits: dict[str, list[int | str]] = {}
    for name in sorted(dir(resource)):
        if name.startswith("RLIMIT_"):
            soft, hard = resource.getrlimit(getattr(resource, name))
            limits[name.removeprefix("RLIMIT_").lower()] = [_limit(soft), _limit(hard)]
    return limits


def _limit(value: int) -> int | str:
    return "unlimited" if value == resource.RLIM_INFINITY else value


def _cgroup() -> dict[str, Any]:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return {}
    found: dict[str, Any] = {"paths": lines}
    for line in lines:
        _hierarchy, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":
            base = Path("/sys/fs/cgroup") / relative
            found["memory_max"] = _read(base / "memory.max")
            found["pids_max"] = _read(base / "pids.max")
        elif "memory" in controllers.split(","):
            found["memory_max"] = _read(
                Path("/sys/fs/cgroup/memory") / relative / "memory.limit_in_bytes"
            )
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _systemd_sandbox() -> dict[str, str] | None:
    """The unit's sandbox properties when this process runs under systemd, else None."""
    unit = _unit_name() if "INVOCATION_ID" in os.environ else None
    properties = systemctl.show(unit, SANDBOX_PROPERTIES) if unit is not None else None
    return {"unit": unit, **properties} if unit is not None and properties is not None else None


def _unit_name() -> str | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        for part in reversed(line.split(":", 2)[-1].split("/")):
            if part.endswith(".service"):
                return part
    return None


def _virtualenv(interpreter: str | None) -> str | None:
    if interpreter is None:
        return None
    # <venv>/bin/python, not resolved through links. os.path, not pathlib: this runs for
    # every job, and pathlib's objects cost a short job's worker 3 % of its GIL time.
    root = os.path.dirname(os.path.dirname(interpreter)) or "."
    return root if os.path.exists(os.path.join(root, "pyvenv.cfg")) else None
