"""Queue: what the CLI, the web API and applications share — validate, resolve, store, read.

A request is checked here, before anything is stored, so that bad input never reaches the
database: options are validated by the same rules as batchjob.toml's and merged job > task >
[defaults], task parameters are substituted into the task's command, and the whole request
must fit what the kernel will exec.
"""

from __future__ import annotations

import builtins
import contextlib
import gc
import string
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from batchjob.config import (
    TASK_OPTION_NAMES,
    Settings,
    TaskOptions,
    load_settings,
    parse_command,
    parse_duration,
    parse_task_options,
    passable_text,
)
from batchjob.errors import InvalidInput
from batchjob.model import Event, Job, JobStatus, NewJob
from batchjob.store import Store

# Our cap on a whole command with its env and params: well under the kernel's ARG_MAX.
MAX_REQUEST_BYTES = 1024 * 1024
# A delay every database's timestamp can still hold once added to now.
MAX_DELAY_SECONDS = 100 * 365 * 86400
DEFAULT_QUEUE = "default"
OPTIONS_CACHE_SIZE = 256


class Queue:
    """A handle on the job store: `Queue("mysql://…").enqueue(["python", "x.py"])`."""

    def __init__(self, url: str | None = None, *, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else load_settings(database_url=url)
        self.store = Store(url or self.settings.database_url)
        self._resolved_options: dict[object, TaskOptions] = {}

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
        retry_backoff: float | str | None = None,
        delay: float | str | None = None,
        run_at: datetime | None = None,
        unique_key: str | None = None,
        concurrency_key: str | None = None,
        max_concurrency: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        tags: Sequence[str] | None = None,
        stall_action: str | None = None,
        memory_limit: int | str | None = None,
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
            "retry_backoff": retry_backoff,
            "delay": delay,
            "run_at": run_at,
            "unique_key": unique_key,
            "concurrency_key": concurrency_key,
            "max_concurrency": max_concurrency,
            "env": env,
            "cwd": cwd,
            "tags": tags,
            "stall_action": stall_action,
            "memory_limit": memory_limit,
        }
        return self.store.enqueue([self._resolve(request)], connection=connection)[0]

    def enqueue_many(
        self, requests: Iterable[Mapping[str, Any]], connection: Connection | None = None
    ) -> list[Job]:
        """Store many jobs in one transaction; each request takes `enqueue`'s keywords."""
        given = list(requests)  # a caller's generator runs with the collector on, as ever
        with _cycle_collector_paused():
            return self.store.enqueue(
                [self._resolve(request) for request in given], connection=connection
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

    def _options(
        self, task_name: str | None, given: Mapping[str, Any], base: TaskOptions
    ) -> TaskOptions:
        """The job's options over its task's and the defaults, parsed once per distinct set.

        A bulk enqueue repeats the same few options thousands of times; checking them again
        for each job was a fifth of `enqueue_many`'s time.
        """
        key = (task_name, _frozen(given))
        try:
            return self._resolved_options[key]
        except KeyError:
            pass
        except TypeError:  # a value that cannot be a key: it is checked (and refused) below
            return parse_task_options(given).merged_over(base)
        options = parse_task_options(given).merged_over(base)
        if len(self._resolved_options) >= OPTIONS_CACHE_SIZE:
            self._resolved_options.clear()
        self._resolved_options[key] = options
        return options

    def _resolve(self, request: Mapping[str, Any]) -> NewJob:
        if not _REQUEST_KEYS.issuperset(request):
            unknown = set(request) - _REQUEST_KEYS
            raise InvalidInput(f"unknown job option(s): {', '.join(sorted(unknown))}")
        command, task_name = request.get("command"), request.get("task")
        if (command is None) == (task_name is None):
            raise InvalidInput("give either a command or a task name, not both or neither")
        if request.get("delay") is not None and request.get("run_at") is not None:
            raise InvalidInput("give a delay or a run_at time, not both")
        params = _params(request.get("params"))
        base = self.settings.defaults
        if task_name is not None:
            spec = self.settings.task(task_name)
            argv = _substitute(spec.name, spec.command, params)
            base = spec.options.merged_over(base)
        else:
            if params:
                raise InvalidInput("params apply to tasks; a command takes its own arguments")
            argv = parse_command(command)
        given = {
            name: value
            for name, value in request.items()
            if name in TASK_OPTION_NAMES and value is not None
        }
        options = self._options(task_name, given, base)
        _check_size(argv, options.env, params)
        delay = (
            0.0 if request.get("delay") is None else parse_duration(request["delay"], key="delay")
        )
        if delay > MAX_DELAY_SECONDS:
            raise InvalidInput(f"delay: {delay:g}s is more than 100 years away")
        return NewJob(
            command=argv,
            queue=options.queue or DEFAULT_QUEUE,
            task=task_name,
            params=params,
            env=options.env,
            cwd=options.cwd,
            tags=options.tags,
            priority=options.priority or 0,
            max_attempts=(options.retries or 0) + 1,
            delay=delay,
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


_REQUEST_KEYS = {"command", "task", "params", "delay", "run_at", *TASK_OPTION_NAMES}


@contextlib.contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """Python's cycle collector held off while a bulk enqueue builds and stores its jobs.

    Each job leaves a few new containers (its request resolved, its row, its Job), none of them
    in a cycle, and their number set the collector off again and again: of 20,000 jobs'
    enqueue, 25 ms went to young collections and 60-120 ms to one or two full ones, each
    traversing the whole heap, a fifth of the call. The collector is the process's: cycles
    other threads leave meanwhile wait for the call's end (0.4 s for 20,000 jobs); memory
    is freed as it is released, as ever. Left alone if the application had turned it off.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _substitute(task: str, template: Sequence[str], params: Mapping[str, str]) -> tuple[str, ...]:
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
    return parse_command(argv, key=f"task {task}: command")


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
        params[name] = passable_text(str(raw), f"param {name}")
    return params


def _frozen(value: object) -> object:
    """`value` as a dict key; the type is part of it (1, 1.0 and True are checked apart)."""
    kind = type(value)
    if kind in _SCALARS:  # most options: before the slower checks for a Mapping
        return (kind, value)
    if isinstance(value, Mapping):
        return (dict, tuple([(name, _frozen(item)) for name, item in value.items()]))
    if isinstance(value, list | tuple):
        return (list, tuple([_frozen(item) for item in value]))
    return (kind, value)


_SCALARS = frozenset({str, int, float, bool, type(None)})


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
    characters = sum(map(len, argv))
    for pairs in (env, params):
        if pairs:  # mostly empty: no generator to start
            characters += sum(len(name) + 1 + len(value) for name, value in pairs.items())
    if 4 * characters <= MAX_REQUEST_BYTES:
        return  # UTF-8 takes at most 4 bytes a character: within the limit, however encoded
    pieces = [
        *argv,
        *(f"{k}={v}" for k, v in env.items()),
        *(f"{k}={v}" for k, v in params.items()),
    ]
    total = sum(len(piece.encode("utf-8")) for piece in pieces)  # already checked as UTF-8
    if total > MAX_REQUEST_BYTES:
        raise InvalidInput(
            f"command, env and params add up to {total} bytes; the limit is {MAX_REQUEST_BYTES}"
        )
