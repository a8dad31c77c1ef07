"""`batchjob env-diff ID`: the job's recorded execution context against this shell's.

The differences that usually explain "works by hand, fails under the worker" come first:
PATH, HOME, the locale, PYTHONPATH and VIRTUAL_ENV, the interpreter, the user, the limits
and the systemd sandbox; then every other variable that differs, is missing or is extra.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchjob.diagnosis.context import execution_context

FIRST = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR")
# Set by batchjob for every job: expected to differ, listed last.
BATCHJOB_SETS = frozenset(
    {
        "BATCH_JOB_ID",
        "BATCH_JOB_ATTEMPT",
        "BATCH_JOB_QUEUE",
        "BATCH_JOB_WORKER",
        "BATCH_JOB_PROGRESS_FD",
        "PYTHONUNBUFFERED",
        "PYTHONIOENCODING",
        "PYTHONUTF8",
        "PYTHONFAULTHANDLER",
        "TMPDIR",
    }
)
ABSENT = "(unset)"


@dataclass(frozen=True)
class Difference:
    what: str
    job: str
    here: str
    set_by_batchjob: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "job": self.job,
            "here": self.here,
            "set_by_batchjob": self.set_by_batchjob,
        }


def differences(job_context: Mapping[str, Any], command: list[str]) -> list[Difference]:
    """What differs between the job's context and one computed here, most telling first."""
    here = execution_context(dict(os.environ), command, os.getcwd())
    found = [
        Difference(key, _show(job_context.get(key)), _show(here.get(key)))
        for key in ("interpreter", "virtualenv", "user", "groups", "umask", "cwd", "systemd")
        if job_context.get(key) != here.get(key)
    ]
    found += _mapping_differences("limit ", job_context.get("limits", {}), here["limits"])
    found += _environment_differences(job_context.get("environment", {}), here["environment"])
    return found


def _environment_differences(job: Mapping[str, str], here: Mapping[str, str]) -> list[Difference]:
    names = sorted(set(job) | set(here), key=lambda name: (name in BATCHJOB_SETS,
                   name not in FIRST, FIRST.index(name) if name in FIRST else 0, name))  # fmt: skip
    return [
        Difference(
            f"${name}",
            job.get(name, ABSENT),
            here.get(name, ABSENT),
            set_by_batchjob=name in BATCHJOB_SETS,
        )
        for name in names
        if job.get(name) != here.get(name)
    ]


def _mapping_differences(
    prefix: str, job: Mapping[str, Any], here: Mapping[str, Any]
) -> list[Difference]:
    return [
        Difference(prefix + name, _show(job.get(name)), _show(here.get(name)))
        for name in sorted(set(job) | set(here))
        if job.get(name) != here.get(name)
    ]


def _show(value: Any) -> str:
    if value is None:
        return ABSENT
    if isinstance(value, list | tuple):
        return " ".join(str(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{key}={item}" for key, item in value.items())
    return str(value)
