"""What a doctor check is: a function from the gathered facts to one finding.

Kept apart from the checks so that each family of them (`checks_database`, `checks_workers`,
`checks_host`, `checks_systemd`, `probe_checks`) and the doctor that runs them share one
vocabulary — the facts, the finding and its statuses, N/A by `NotChecked` — and tell their
figures the same way, without a check module importing the doctor that imports it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from batchjob.config import Settings

Status = Literal["OK", "WARN", "FAIL", "N/A"]

PREVIEW_CHARACTERS = 120  # of a query or a kernel log line quoted in a one-line message
SHOWN_ITEMS = 3  # culprits named in one line; the rest are counted


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


def database_report(facts: Facts) -> Mapping[str, Any]:
    """The database's health report; NotChecked when it could not be read."""
    if facts.database is None:
        raise NotChecked("not checked: the database could not be read")
    return facts.database


def first_few(items: Sequence[str]) -> str:
    """Up to SHOWN_ITEMS items on one line, and how many more there are."""
    shown = "; ".join(items[:SHOWN_ITEMS])
    more = len(items) - SHOWN_ITEMS
    return f"{shown}; and {more} more" if more > 0 else shown


def human_size(count: int) -> str:
    """Bytes for a human: 512 B, 3.2 MiB, 78.9 GiB."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    amount, index = float(count), 0
    while amount >= 1024 and index < len(units) - 1:
        amount, index = amount / 1024, index + 1
    return f"{count} B" if index == 0 else f"{amount:.1f} {units[index]}"
