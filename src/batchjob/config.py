"""One frozen Settings, read once at start-up: flag > BATCH_JOB_* env > batchjob.toml > default.

Everything is validated here, so that a typo fails the start of a command with one line naming
the file, the dotted key and what is wrong, instead of surfacing later inside a running worker:

    batchjob.toml: tasks.sync.timeout: '2x' is not a duration (use e.g. 90, 90s, 10m, 2h, 1d)

Each key is checked by one small validator for its kind (duration, size, integer with a minimum,
string, list of strings, string table, choice); the tables below map keys to validators.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Any

from batchjob.errors import ConfigError, UnknownTask

__all__ = [
    "ScheduleSpec",
    "Settings",
    "TaskOptions",
    "TaskSpec",
    "WorkerSettings",
    "load_settings",
    "parse_command",
    "parse_duration",
    "parse_size",
    "parse_task_options",
    "passable_text",
]

DEFAULT_CONFIG_FILE = "batchjob.toml"
_MAX_TEXT = 100  # longer duration or size strings are typos, and would make huge numbers
# Linux refuses to exec one argument or environment string longer than this (E2BIG).
MAX_ARGUMENT_BYTES = 128 * 1024
MAX_KEY_LENGTH = 255  # unique_key, concurrency_key: the width of their columns
MAX_QUEUE_LENGTH = 128
RESERVED_ENV_PREFIX = "BATCH_JOB_"  # the worker sets these; a job or task may not
_REPR_LIMIT = 60

_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_DURATION_UNITS = {"ms": Fraction(1, 1000), "s": Fraction(1), "m": Fraction(60)}
_DURATION_UNITS |= {"h": Fraction(3600), "d": Fraction(86400)}
_DURATION_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d)\s*", re.ASCII | re.IGNORECASE)
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+", re.ASCII | re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1} | {
    unit: base**power
    for power, letter in enumerate("kmgt", start=1)
    for unit, base in ((f"{letter}b", 1000), (f"{letter}ib", 1024))
}
_SIZE = re.compile(rf"({_NUMBER})\s*([kmgt]i?b|b)?", re.ASCII | re.IGNORECASE)
_TASK_NAME = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_TOML_POSITION = re.compile(r"(.*) \(at (line \d+, column \d+|end of document)\)", re.DOTALL)


_Validator = Callable[[object, str], Any]


def _show(value: object) -> str:
    """A repr short enough for a one-line message (repr already escapes newlines)."""
    try:
        text = repr(value)
    except Exception:  # e.g. an int beyond Python's 4300-digit conversion limit
        text = f"<{type(value).__name__} that cannot be shown>"
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def _printable(text: str) -> str:
    """Escape what would break a message onto a second line (e.g. a newline in a TOML key)."""
    return "".join(char if char.isprintable() else f"\\u{ord(char):04x}" for char in text)


def parse_duration(value: object, *, key: str = "duration") -> float:
    """Seconds from 90, 1.5, "90", "90s", "500ms", "10m", "2h", "1d" or "1h30m".

    Shared by the file, the CLI and the API so that a duration reads the same everywhere.
    Exact arithmetic (Fraction) keeps "1.1h" at 3960.0 rather than 3960.0000000000005.
    """
    seconds: Fraction | float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and len(text := value.strip()) <= _MAX_TEXT:
        if re.fullmatch(_NUMBER, text, re.ASCII):
            seconds = Fraction(text)
        elif _DURATION.fullmatch(text):
            seconds = sum(
                (
                    Fraction(number) * _DURATION_UNITS[unit.lower()]
                    for number, unit in _DURATION_PART.findall(text)
                ),
                Fraction(0),
            )
    if seconds is not None:
        try:
            result = float(seconds)
        except OverflowError:  # an int beyond float range
            result = math.inf
        if math.isfinite(result) and result >= 0:
            return result
    raise ConfigError(f"{key}: {_show(value)} is not a duration (use e.g. 90, 90s, 10m, 2h, 1d)")


def parse_size(value: object, *, key: str = "size") -> int:
    """Bytes from 1024, "512B", "10MB" (powers of 1000) or "100MiB", "1.5GiB" (powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and len(text := value.strip()) <= _MAX_TEXT:
        match = _SIZE.fullmatch(text)
        if match:
            number, unit = match.groups()
            return int(Fraction(number) * _SIZE_UNITS[(unit or "").lower()])
    raise ConfigError(
        f"{key}: {_show(value)} is not a size (use e.g. 1024, 512B, 10MB, 100MiB, 2GiB)"
    )


def _frozen_mapping(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


def _empty_mapping() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class TaskOptions:
    """Options that [defaults], [tasks.NAME] and a single job may set; None = not set here.

    Keeping "not set" distinct from a value lets a job override a task and a task its defaults.
    """

    queue: str | None = None
    priority: int | None = None
    timeout: float | None = None  # seconds, > 0
    stall_timeout: float | None = None  # seconds, > 0
    stall_action: str | None = None  # "diagnose" | "kill"
    retries: int | None = None  # attempts after the first, >= 0
    retry_backoff: float | None = None  # seconds, >= 0
    unique_key: str | None = None
    concurrency_key: str | None = None
    max_concurrency: int | None = None  # >= 1
    memory_limit: int | None = None  # bytes, > 0
    env: Mapping[str, str] = field(default_factory=_empty_mapping)
    cwd: str | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Copy into read-only containers: a caller's dict or list must not change a frozen value.
        object.__setattr__(self, "env", _frozen_mapping(self.env))
        object.__setattr__(self, "tags", tuple(self.tags))

    def merged_over(self, base: TaskOptions) -> TaskOptions:
        """These options layered over `base`: job over task, task over [defaults]."""
        overrides = {
            option.name: getattr(self, option.name)
            for option in fields(self)
            if option.name not in ("env", "tags") and getattr(self, option.name) is not None
        }
        return replace(base, **overrides, env={**base.env, **self.env}, tags=self.tags or base.tags)


@dataclass(frozen=True)
class TaskSpec:
    """A task declared in [tasks.NAME]: what to run, and its own (unmerged) options."""

    name: str
    command: tuple[str, ...]  # argv; a shell string is ("/bin/sh", "-c", string)
    options: TaskOptions


@dataclass(frozen=True)
class WorkerSettings:
    """The [worker] table: how a worker daemon claims, watches and stops jobs."""

    concurrency: int = 2
    queues: tuple[str, ...] | None = None  # None = every queue
    poll_interval: float = 1.0
    lease_timeout: float = 30.0
    shutdown_grace: float = 30.0
    kill_grace: float = 10.0
    drain_grace: float = 5.0
    max_lost_attempts: int = 3
    max_log_bytes: int = 100 * 1024 * 1024
    env_file: Path | None = None


@dataclass(frozen=True)
class ScheduleSpec:
    """A [[schedules]] entry: enqueue `task` with `params` at every cron slot."""

    name: str
    cron: str
    task: str
    params: Mapping[str, str] = field(default_factory=_empty_mapping)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _frozen_mapping(self.params))


def _empty_tasks() -> Mapping[str, TaskSpec]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Settings:
    """Everything batchjob is configured with, validated once; pass this rather than its parts."""

    database_url: str = "sqlite:///batchjob.db"
    log_dir: Path = Path("logs")
    config_path: Path | None = None  # the file that was read, if any
    worker: WorkerSettings = WorkerSettings()
    defaults: TaskOptions = TaskOptions()
    tasks: Mapping[str, TaskSpec] = field(default_factory=_empty_tasks)
    schedules: tuple[ScheduleSpec, ...] = ()
    web_token: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", MappingProxyType(dict(self.tasks)))
        object.__setattr__(self, "schedules", tuple(self.schedules))

    @property
    def job_log_dir(self) -> Path:
        """Where each job's log is kept, as `<id>.log`."""
        return self.log_dir / "jobs"

    def task(self, name: str) -> TaskSpec:
        """The declared task `name`; the error lists what is declared, to catch a typo at once."""
        try:
            return self.tasks[name]
        except KeyError:
            if not self.tasks:
                where = self.config_path or DEFAULT_CONFIG_FILE
                raise UnknownTask(f"no tasks are declared in {where}") from None
            declared = ", ".join(sorted(self.tasks))
            raise UnknownTask(f"unknown task {_show(name)}; declared: {declared}") from None


# --- validators: (value, dotted key) -> checked value; each raises ConfigError("key: why") ---


def passable_text(value: object, key: str) -> str:
    """Text the database can store and the kernel can hand to a program.

    UTF-8 (no unpaired surrogate, as undecodable bytes from a shell become), no NUL byte,
    within the kernel's limit for one argument.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string, got {_show(value)}")
    if "\0" in value:
        raise ConfigError(f"{key}: contains a NUL byte, which no program can receive")
    if value.isascii():  # UTF-8 already, one byte a character: nothing to encode
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ConfigError(f"{key}: is not valid UTF-8 text: {_show(value)}") from None
    if size > MAX_ARGUMENT_BYTES:
        raise ConfigError(
            f"{key}: is {size} bytes; a program receives at most {MAX_ARGUMENT_BYTES}"
        )
    return value


def _text(value: object, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: must be a non-empty string, got {_show(value)}")
    return passable_text(value, key)


def _bounded_text(maximum: int) -> _Validator:
    def check(value: object, key: str) -> str:
        text = _text(value, key)
        if len(text) > maximum:
            raise ConfigError(f"{key}: must be at most {maximum} characters, got {len(text)}")
        return text

    return check


def _boolean(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false, got {_show(value)}")
    return value


def _path(value: object, key: str) -> Path:
    return Path(_text(value, key))


def _integer(minimum: int | None = None, maximum: int | None = None) -> _Validator:
    def check(value: object, key: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key}: must be an integer, got {_show(value)}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{key}: must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{key}: must be at most {maximum}, got {value}")
        return value

    return check


def _duration(*, positive: bool) -> _Validator:
    def check(value: object, key: str) -> float:
        seconds = parse_duration(value, key=key)
        if positive and seconds == 0:
            raise ConfigError(f"{key}: must be greater than zero, got {_show(value)}")
        return seconds

    return check


def _size(value: object, key: str) -> int:
    size = parse_size(value, key=key)
    if size == 0:
        raise ConfigError(f"{key}: must be greater than zero, got {_show(value)}")
    return size


def _choice(*choices: str) -> _Validator:
    def check(value: object, key: str) -> str:
        if value not in choices:
            allowed = " or ".join(repr(choice) for choice in choices)
            raise ConfigError(f"{key}: must be {allowed}, got {_show(value)}")
        return str(value)

    return check


def _text_list(*, single_ok: bool = False) -> _Validator:
    def check(value: object, key: str) -> tuple[str, ...]:
        if single_ok and isinstance(value, str):
            return (_text(value, key),)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: must be a list of strings, got {_show(value)}")
        return tuple(_text(item, f"{key}[{index}]") for index, item in enumerate(value))

    return check


def _queues(value: object, key: str) -> tuple[str, ...]:
    queues: tuple[str, ...] = _text_list(single_ok=True)(value, key)
    if not queues:
        raise ConfigError(f"{key}: must name at least one queue (leave it out for every queue)")
    return queues


def _text_table(*, env_names: bool) -> _Validator:
    """A table of scalars as strings: env (no booleans, "true" vs "1" is ambiguous) or params."""
    kinds = "a string or number" if env_names else "a string, number or boolean"

    def check(value: object, key: str) -> Mapping[str, str]:
        table = _table(value, key)
        result: dict[str, str] = {}
        for name, item in table.items():
            item_key = _dotted(key, name)
            if env_names and (not name or "=" in name or "\0" in name):
                raise ConfigError(f"{item_key}: not a valid environment variable name")
            passable_text(name, item_key)
            if env_names and name.startswith(RESERVED_ENV_PREFIX):
                raise ConfigError(
                    f"{item_key}: {RESERVED_ENV_PREFIX}* variables are set by the worker"
                )
            if isinstance(item, bool) and not env_names:
                result[name] = "true" if item else "false"
            elif isinstance(item, str | int | float) and not isinstance(item, bool):
                result[name] = passable_text(str(item), item_key)
            else:
                raise ConfigError(f"{item_key}: must be {kinds}, got {_show(item)}")
        return MappingProxyType(result)

    return check


def _cron(value: object, key: str) -> str:
    from croniter import croniter  # 5.7 MiB with dateutil: only where schedules are declared

    expression = _text(value, key).strip()
    if len(expression.split()) not in (5, 6) or not croniter.is_valid(expression):
        raise ConfigError(
            f"{key}: {_show(value)} is not a valid cron expression"
            " (5 or 6 fields, e.g. '*/15 * * * *')"
        )
    return expression


def _table(value: object, key: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: must be a table, got {_show(value)}")
    return dict(value)


def _dotted(prefix: str, name: str) -> str:
    """The key as TOML would write it: tasks.sync.env."MY VAR"."""
    part = name if _BARE_KEY.fullmatch(name) else '"' + name.replace('"', '\\"') + '"'
    return _printable(f"{prefix}.{part}" if prefix else part)


def _read_table(
    value: object, prefix: str, validators: Mapping[str, _Validator], *, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Validate each key of a table; keys in `extra` are left for the caller, others are errors."""
    table = _table(value, prefix)
    checked: dict[str, Any] = {}
    for name, item in table.items():
        key = _dotted(prefix, name)
        if name in validators:
            checked[name] = validators[name](item, key)
        elif name not in extra:
            known = ", ".join([*validators, *extra])
            raise ConfigError(f"{key}: unknown key (known: {known})")
    return checked


_OPTION_KEYS: dict[str, _Validator] = {
    "queue": _bounded_text(MAX_QUEUE_LENGTH),
    "priority": _integer(-(2**31), 2**31 - 1),  # the database column is a 32-bit integer
    "timeout": _duration(positive=True),
    "stall_timeout": _duration(positive=True),
    "stall_action": _choice("diagnose", "kill"),
    "retries": _integer(0),
    "retry_backoff": _duration(positive=False),
    "unique_key": _bounded_text(MAX_KEY_LENGTH),
    "concurrency_key": _bounded_text(MAX_KEY_LENGTH),
    "max_concurrency": _integer(1),
    "memory_limit": _size,
    "env": _text_table(env_names=True),
    "cwd": _text,
    "tags": _text_list(),
}
assert list(_OPTION_KEYS) == [option.name for option in fields(TaskOptions)]
TASK_OPTION_NAMES = frozenset(_OPTION_KEYS)


def parse_task_options(values: Mapping[str, object]) -> TaskOptions:
    """TaskOptions from loose values (a job's CLI flags or API keywords), checked as in the file."""
    return TaskOptions(**_read_table(values, "", _OPTION_KEYS))


_WORKER_KEYS: dict[str, _Validator] = {
    "concurrency": _integer(1),
    "queues": _queues,
    "poll_interval": _duration(positive=True),
    "lease_timeout": _duration(positive=True),
    "shutdown_grace": _duration(positive=False),
    "kill_grace": _duration(positive=False),
    "drain_grace": _duration(positive=False),
    "max_lost_attempts": _integer(1),
    "max_log_bytes": _size,
    "env_file": _path,
}
assert list(_WORKER_KEYS) == [option.name for option in fields(WorkerSettings)]

_SCHEDULE_KEYS: dict[str, _Validator] = {
    "name": _text,
    "cron": _cron,
    "task": _text,
    "params": _text_table(env_names=False),
}
_TOP_KEYS: dict[str, _Validator] = {"database_url": _text, "log_dir": _text}
_SECTIONS = ("worker", "defaults", "tasks", "schedules", "web")


def parse_command(value: object, *, key: str = "command") -> tuple[str, ...]:
    """An argv naming a program; later arguments may be empty (e.g. printf "")."""
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise ConfigError(f"{key}: must be a non-empty list of strings, got {_show(value)}")
    argv = tuple(value)
    if not _plain_arguments(argv):  # each checked: non-ASCII text, or to say which and why
        argv = tuple([passable_text(item, f"{key}[{index}]") for index, item in enumerate(argv)])
    if not argv[0].strip():
        _text(argv[0], f"{key}[0]")  # raises: a blank program name
    return argv


def _plain_arguments(argv: Sequence[Any]) -> bool:
    """ASCII strings with no NUL, each within the kernel's limit: all `passable_text` would
    accept, checked for the whole argv at once (one call and one key formatted an argument
    were 4 % of a bulk enqueue of three-argument commands)."""
    try:
        joined = "\n".join(argv)  # a non-string raises
    except TypeError:
        return False
    return joined.isascii() and "\0" not in joined and max(map(len, argv)) <= MAX_ARGUMENT_BYTES


def _read_task(name: str, value: object) -> TaskSpec:
    prefix = _dotted("tasks", name)
    if not _TASK_NAME.fullmatch(name):
        raise ConfigError(f"{prefix}: not a valid task name (use letters, digits, '_', '.', '-')")
    options = _read_table(value, prefix, _OPTION_KEYS, extra=("command", "shell"))
    table = _table(value, prefix)
    shell = _boolean(table.get("shell", False), f"{prefix}.shell")
    if "command" not in table:
        raise ConfigError(f"{prefix}.command: required key is missing")
    command = table["command"]
    if shell:
        if not isinstance(command, str):
            raise ConfigError(
                f"{prefix}.command: shell = true needs one command string, got {_show(command)}"
            )
        argv: tuple[str, ...] = ("/bin/sh", "-c", _text(command, f"{prefix}.command"))
    elif isinstance(command, str):
        raise ConfigError(
            f"{prefix}.command: a string command needs shell = true"
            ' (or give an argv list, e.g. ["python", "script.py"])'
        )
    else:
        argv = parse_command(command, key=f"{prefix}.command")
    return TaskSpec(name=name, command=argv, options=TaskOptions(**options))


def _read_schedules(value: object, tasks: Mapping[str, TaskSpec]) -> tuple[ScheduleSpec, ...]:
    if not isinstance(value, list):
        raise ConfigError(
            f"schedules: must be an array of tables ([[schedules]]), got {_show(value)}"
        )
    schedules: list[ScheduleSpec] = []
    first_index: dict[str, int] = {}
    for index, entry in enumerate(value):
        prefix = f"schedules[{index}]"
        checked = _read_table(entry, prefix, _SCHEDULE_KEYS)
        for required in ("name", "cron", "task"):
            if required not in checked:
                raise ConfigError(f"{prefix}.{required}: required key is missing")
        schedule = ScheduleSpec(**checked)
        if schedule.task not in tasks:
            declared = ", ".join(sorted(tasks)) or "none"
            raise ConfigError(
                f"{prefix}.task: {_show(schedule.task)} is not a declared task"
                f" (declared: {declared})"
            )
        if schedule.name in first_index:
            raise ConfigError(
                f"{prefix}.name: {_show(schedule.name)} is already used by"
                f" schedules[{first_index[schedule.name]}]"
            )
        first_index[schedule.name] = index
        schedules.append(schedule)
    return tuple(schedules)


def _read_document(document: dict[str, Any]) -> dict[str, Any]:
    """Settings keyword arguments from a parsed batchjob.toml (before env and flags)."""
    values = _read_table(document, "", _TOP_KEYS, extra=_SECTIONS)
    if "log_dir" in values:
        values["log_dir"] = Path(values["log_dir"])
    if "worker" in document:
        values["worker"] = WorkerSettings(**_read_table(document["worker"], "worker", _WORKER_KEYS))
    if "defaults" in document:
        values["defaults"] = TaskOptions(
            **_read_table(document["defaults"], "defaults", _OPTION_KEYS)
        )
    tasks = {
        name: _read_task(name, table)
        for name, table in _table(document.get("tasks", {}), "tasks").items()
    }
    values["tasks"] = tasks
    if "schedules" in document:
        values["schedules"] = _read_schedules(document["schedules"], tasks)
    if "web" in document:
        web = _read_table(document["web"], "web", {"token": _text})
        if "token" in web:
            values["web_token"] = web["token"]
    return values


def _parse_file(path: Path, *, named: bool) -> dict[str, Any] | None:
    """Read and validate one file (None: no default file); errors start with the path as given."""
    source = _printable(str(path))
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if named:
            raise ConfigError(f"{source}: no such configuration file") from None
        return None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not valid UTF-8 (byte {exc.start})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = " ".join(str(exc).split())
        match = _TOML_POSITION.fullmatch(message)
        if match:
            message = f"{match[2]}: {match[1]}"
        raise ConfigError(f"{source}: {message}") from None
    try:
        return _read_document(document)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _first_set(*candidates: str | os.PathLike[str] | None) -> str | None:
    """The first candidate that is given and not empty: an empty value counts as unset."""
    for candidate in candidates:
        if candidate is not None and (text := os.fspath(candidate)):
            return text
    return None


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    *,
    database_url: str | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    web_token: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """The Settings for this process: argument (CLI flag) > BATCH_JOB_* > batchjob.toml > default.

    `environ` is a parameter so that tests and callers need not touch os.environ.
    """
    environ = os.environ if environ is None else environ
    named = _first_set(config_path, environ.get("BATCH_JOB_CONFIG"))
    path = Path(named) if named is not None else Path(DEFAULT_CONFIG_FILE)
    values = _parse_file(path, named=named is not None)
    if values is None:
        values = {}
    else:
        values["config_path"] = path
    chosen_url = _first_set(database_url, environ.get("BATCH_JOB_DATABASE_URL"))
    if chosen_url is not None:
        values["database_url"] = chosen_url
    chosen_log_dir = _first_set(log_dir, environ.get("BATCH_JOB_LOG_DIR"))
    if chosen_log_dir is not None:
        values["log_dir"] = Path(chosen_log_dir)
    chosen_token = _first_set(web_token, environ.get("BATCH_JOB_WEB_TOKEN"))
    if chosen_token is not None:
        values["web_token"] = chosen_token
    return Settings(**values)
