"""Queue: what the CLI, the web API and applications share — validate, resolve, store, read.

A request is checked here, before anything is stored, so that bad input never reaches the
database: the command fits what the kernel will exec, task options are merged job > task >
[defaults], and task parameters are substituted into the task's command.
"""

from __future__ import annotations

import builtins
import string
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from batchjob.config import Settings, TaskOptions, load_settings, parse_duration
from batchjob.errors import InvalidInput
from batchjob.model import Event, Job, JobStatus, NewJob
from batchjob.store import Store

# Linux refuses to exec a single argument or environment string longer than this (E2BIG).
MAX_ARGUMENT_BYTES = 128 * 1024
# Our own cap on a whole command with its env and params: well under the kernel's ARG_MAX.
MAX_REQUEST_BYTES = 1024 * 1024
MAX_KEY_LENGTH = 255
MAX_QUEUE_NAME_LENGTH = 128
INT32 = (-(2**31), 2**31 - 1)
DEFAULT_QUEUE = "default"
RESERVED_ENV_PREFIX = "BATCH_JOB_"


class Queue:
    """A handle on the job store: `Queue("mysql://…").enqueue(["python", "x.py"])`."""

    def __init__(self, url: str | None = None, *, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else load_settings(database_url=url)
        self.store = Store(url or self.settings.database_url)

    def close(self) -> None:
        self.store.close()

    def init(self) -> tuple[int, int]:
        """Create or upgrade the schema; returns (previous, current) version."""
        return self.store.upgrade_schema()

    def enqueue(
        self,
        command: Sequence[str] | None = None,
        *,
        task: str | None = None,
        params: Mapping[str, object] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        timeout: float | str | None = None,
        stall_timeout: float | str | None = None,
        retries: int | None = None,
        delay: float | str | None = None,
        run_at: datetime | None = None,
        unique_key: str | None = None,
        concurrency_key: str | None = None,
        max_concurrency: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        tags: Sequence[str] | None = None,
        connection: Connection | None = None,
    ) -> Job:
        """Store one job: a command (argv) or a task declared in batchjob.toml.

        With `connection` (the application's SQLAlchemy connection, in a transaction), the
        job is committed or rolled back together with the application's own writes.
        """
        request = {
            "command": command,
            "task": task,
            "params": params,
            "queue": queue,
            "priority": priority,
            "timeout": timeout,
            "stall_timeout": stall_timeout,
            "retries": retries,
            "delay": delay,
            "run_at": run_at,
            "unique_key": unique_key,
            "concurrency_key": concurrency_key,
            "max_concurrency": max_concurrency,
            "env": env,
            "cwd": cwd,
            "tags": tags,
        }
        return self.store.enqueue([self._resolve(request)], connection=connection)[0]

    def enqueue_many(
        self, requests: Iterable[Mapping[str, Any]], connection: Connection | None = None
    ) -> list[Job]:
        """Store many jobs in one transaction; each request takes `enqueue`'s keywords."""
        return self.store.enqueue(
            [self._resolve(request) for request in requests], connection=connection
        )

    def get(self, job_id: int) -> Job:
        return self.store.get(job_id)

    def list(
        self,
        *,
        status: Iterable[JobStatus | str] = (),
        queue: Iterable[str] = (),
        task: Iterable[str] = (),
        limit: int = 50,
    ) -> builtins.list[Job]:
        """Newest first."""
        if limit < 1:
            raise InvalidInput(f"limit must be at least 1, not {limit}")
        statuses = [_status(value) for value in status]
        return self.store.list_jobs(statuses=statuses, queues=queue, tasks=task, limit=limit)

    def events(self, job_id: int) -> builtins.list[Event]:
        self.store.get(job_id)
        return self.store.events(job_id)

    def cancel(self, job_id: int) -> Job:
        """Cancel a pending job; ask the worker running a running one to stop it."""
        return self.store.cancel(job_id)

    def retry(self, job_id: int) -> Job:
        """Run a failed or cancelled job again."""
        return self.store.retry(job_id)

    def stats(self) -> dict[str, dict[str, int]]:
        return self.store.stats()

    def wait(self, job_id: int, *, timeout: float | None = None, poll_interval: float = 0.5) -> Job:
        """Block until the job is finished (or `timeout` passes); returns its latest state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.store.get(job_id)
            if job.status.is_finished or (deadline is not None and time.monotonic() >= deadline):
                return job
            time.sleep(poll_interval)

    # ---- resolution -------------------------------------------------------------------

    def _resolve(self, request: Mapping[str, Any]) -> NewJob:
        unknown = set(request) - _REQUEST_KEYS
        if unknown:
            raise InvalidInput(f"unknown job option(s): {', '.join(sorted(unknown))}")
        command, task_name = request.get("command"), request.get("task")
        params = _params(request.get("params"))
        if (command is None) == (task_name is None):
            raise InvalidInput("give either a command or a task name, not both or neither")
        if request.get("delay") is not None and request.get("run_at") is not None:
            raise InvalidInput("give a delay or a run_at time, not both")
        base = self.settings.defaults
        if task_name is not None:
            spec = self.settings.task(task_name)
            argv = _substitute(spec.name, spec.command, params)
            base = spec.options.merged_over(base)
        else:
            if params:
                raise InvalidInput("--param applies to tasks; a command takes its own arguments")
            argv = _argv(command)
        options = _job_options(request).merged_over(base)
        _check_size(argv, options.env, params)
        retries = options.retries or 0
        return NewJob(
            command=argv,
            queue=options.queue or DEFAULT_QUEUE,
            task=task_name,
            params=params,
            env=dict(options.env),
            cwd=options.cwd,
            tags=list(options.tags),
            priority=options.priority or 0,
            max_attempts=retries + 1,
            delay=_seconds("delay", request.get("delay")) or 0.0,
            run_at=_utc(request.get("run_at")),
            unique_key=options.unique_key,
            concurrency_key=options.concurrency_key,
            max_concurrency=options.max_concurrency,
            timeout=options.timeout,
            stall_timeout=options.stall_timeout,
            stall_action=options.stall_action,
            retry_backoff=options.retry_backoff,
            memory_limit=options.memory_limit,
        )


_REQUEST_KEYS = {
    "command",
    "task",
    "params",
    "queue",
    "priority",
    "timeout",
    "stall_timeout",
    "retries",
    "delay",
    "run_at",
    "unique_key",
    "concurrency_key",
    "max_concurrency",
    "env",
    "cwd",
    "tags",
}


def _job_options(request: Mapping[str, Any]) -> TaskOptions:
    """The options a single job sets, validated the way batchjob.toml's are."""
    queue = request.get("queue")
    if queue is not None and not (
        isinstance(queue, str) and 0 < len(queue) <= MAX_QUEUE_NAME_LENGTH
    ):
        raise InvalidInput(f"queue must be 1 to {MAX_QUEUE_NAME_LENGTH} characters: {queue!r}")
    return TaskOptions(
        queue=queue,
        priority=_int("priority", request.get("priority"), *INT32),
        timeout=_positive_seconds("timeout", request.get("timeout")),
        stall_timeout=_positive_seconds("stall_timeout", request.get("stall_timeout")),
        retries=_int("retries", request.get("retries"), 0, 1000),
        unique_key=_key("unique_key", request.get("unique_key")),
        concurrency_key=_key("concurrency_key", request.get("concurrency_key")),
        max_concurrency=_int("max_concurrency", request.get("max_concurrency"), 1, INT32[1]),
        env=_env(request.get("env")),
        cwd=_text("cwd", request.get("cwd")),
        tags=tuple(_text("tag", tag) or "" for tag in request.get("tags") or ()),
    )


def _argv(command: object) -> builtins.list[str]:
    if isinstance(command, str) or not isinstance(command, Sequence) or not command:
        raise InvalidInput("command must be a non-empty list of arguments (argv)")
    return [_text("command argument", argument) or "" for argument in command]


def _substitute(
    task: str, template: Sequence[str], params: Mapping[str, str]
) -> builtins.list[str]:
    """The task's argv with `{name}` replaced by params (`{{` and `}}` are literal braces)."""
    argv = []
    for argument in template:
        pieces = []
        try:
            for literal_text, field, spec, conversion in string.Formatter().parse(argument):
                pieces.append(literal_text)
                if field is None:
                    continue
                if field not in params:
                    raise InvalidInput(f"task {task}: its command needs --param {field}=VALUE")
                if spec or conversion:
                    raise InvalidInput(
                        f"task {task}: placeholder {{{field}}} may not carry a format"
                    )
                pieces.append(params[field])
        except ValueError as exc:
            raise InvalidInput(f"task {task}: bad placeholder in {argument!r}: {exc}") from exc
        argv.append("".join(pieces))
    return argv


def _params(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput("params must be a mapping of names to values")
    params = {}
    for name, raw in value.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise InvalidInput(f"param name {name!r} must be an identifier (letters, digits, _)")
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise InvalidInput(f"param {name}: {raw!r} is not a string or number")
        params[name] = _text(f"param {name}", str(raw)) or ""
    return params


def _env(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput("env must be a mapping of variable names to values")
    env = {}
    for name, raw in value.items():
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise InvalidInput(f"env: {name!r} is not a valid variable name")
        if name.startswith(RESERVED_ENV_PREFIX):
            raise InvalidInput(f"env: {name} is set by the worker and cannot be given")
        if not isinstance(raw, str):
            raise InvalidInput(f"env: {name}: {raw!r} is not a string")
        env[name] = _text(f"env {name}", raw) or ""
    return env


def _text(what: str, value: object) -> str | None:
    """A string the kernel can pass on: no NUL byte, within the one-argument limit."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{what}: {value!r} is not a string")
    if "\0" in value:
        raise InvalidInput(f"{what} contains a NUL byte, which no command can receive")
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > MAX_ARGUMENT_BYTES:
        raise InvalidInput(
            f"{what} is {size} bytes; the kernel passes at most {MAX_ARGUMENT_BYTES} per string"
        )
    return value


def _key(what: str, value: object) -> str | None:
    text = _text(what, value)
    if text is not None and not 0 < len(text) <= MAX_KEY_LENGTH:
        raise InvalidInput(f"{what} must be 1 to {MAX_KEY_LENGTH} characters long")
    return text


def _int(what: str, value: object, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what}: {value!r} is not a whole number")
    if not low <= value <= high:
        raise InvalidInput(f"{what}: {value} is outside {low}..{high}")
    return value


def _seconds(what: str, value: object) -> float | None:
    return None if value is None else parse_duration(value, key=what)


def _positive_seconds(what: str, value: object) -> float | None:
    seconds = _seconds(what, value)
    if seconds is not None and seconds <= 0:
        raise InvalidInput(f"{what} must be longer than 0 seconds")
    return seconds


def _utc(value: object) -> datetime | None:
    """A naive UTC datetime, as the store keeps them; a naive input is taken as UTC."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidInput(f"run_at: {value!r} is not a datetime")
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _status(value: JobStatus | str) -> JobStatus:
    try:
        return JobStatus(value)
    except ValueError:
        known = ", ".join(status.value for status in JobStatus)
        raise InvalidInput(f"unknown status {value!r} (known: {known})") from None


def _check_size(argv: Sequence[str], env: Mapping[str, str], params: Mapping[str, str]) -> None:
    total = sum(len(item.encode("utf-8", "surrogateescape")) for item in argv)
    total += sum(len(f"{k}={v}".encode("utf-8", "surrogateescape")) for k, v in env.items())
    total += sum(len(f"{k}={v}".encode("utf-8", "surrogateescape")) for k, v in params.items())
    if total > MAX_REQUEST_BYTES:
        raise InvalidInput(
            f"command, env and params add up to {total} bytes; the limit is {MAX_REQUEST_BYTES}"
        )
