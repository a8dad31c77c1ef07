"""Doctor check of the worker's systemd unit: can its sandbox stop the worker writing?

ProtectSystem=, ProtectHome= and PrivateTmp= make directories read-only or private to the
unit; the worker must still write its logs, the SQLite data and each job's TMPDIR where the
operator sees them. The unit's settings are asked of `systemctl show`; `sandbox_problems` is
pure, so that it can be tested with any settings.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from batchjob.diagnosis import systemctl
from batchjob.diagnosis.check import Facts, Finding, NotChecked, first_few, ok, warn

MIN_NOFILE = 1024  # the smallest soft fd limit a job should get (systemd's own default)

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
            first_few(problems),
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
    return systemctl.show(SYSTEMD_UNIT, SYSTEMD_PROPERTIES)


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
