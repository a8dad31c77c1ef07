"""The `batchjob` command: a thin front end over Queue, shaped like git.

Exit codes: 0 success, 1 the job failed, 2 bad usage or input (or no database), 3 not found.
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import cache, cached_property
from typing import TYPE_CHECKING, Any

import click

from batchjob import __version__
from batchjob.config import Settings, load_settings
from batchjob.errors import BatchJobError, InvalidInput
from batchjob.model import Job, JobStatus

EXIT_JOB_FAILED = 1
STATUS_STYLES = {
    JobStatus.PENDING: "yellow",
    JobStatus.RUNNING: "cyan",
    JobStatus.COMPLETED: "green",
    JobStatus.FAILED: "red",
    JobStatus.CANCELLED: "magenta",
}

if TYPE_CHECKING:
    from rich.console import Console

    from batchjob.queue import Queue


# Rich is imported on first output, not at start-up: `batchjob worker` prints nothing with it
# and an idle worker's memory is the price of everything it imported (Rich: 5.6 MiB).
@cache
def stdout() -> Console:
    """In a pipe, rows run as wide as they need instead of wrapping at 80 columns."""
    from rich.console import Console

    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 10_000)


@cache
def stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True)


class CliContext:
    """Settings and the queue, made on first use so that `--help` needs no database."""

    def __init__(self, config: str | None, database_url: str | None, log_dir: str | None):
        self._config, self._database_url, self._log_dir = config, database_url, log_dir

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self._config, database_url=self._database_url, log_dir=self._log_dir)

    @cached_property
    def queue(self) -> Queue:
        # Imported here, not at the top: `batchjob worker` imports SQLAlchemy its own way.
        from batchjob.queue import Queue

        return Queue(settings=self.settings)


pass_context = click.make_pass_decorator(CliContext)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    envvar="BATCH_JOB_CONFIG",
    show_envvar=True,
    metavar="PATH",
    help="Configuration file (default: ./batchjob.toml when present).",
)
@click.option(
    "--database-url",
    envvar="BATCH_JOB_DATABASE_URL",
    show_envvar=True,
    metavar="URL",
    help="sqlite:///batchjob.db, mysql://user:pw@host/db or postgresql://user@host/db.",
)
@click.option(
    "--log-dir",
    envvar="BATCH_JOB_LOG_DIR",
    show_envvar=True,
    metavar="DIR",
    help="Directory of the worker log and of jobs/<id>.log (default: ./logs).",
)
@click.version_option(__version__, prog_name="batchjob")
@click.pass_context
def cli(
    ctx: click.Context, config: str | None, database_url: str | None, log_dir: str | None
) -> None:
    """A batch job queue and worker: jobs run as they do by hand, and failures say why."""
    ctx.obj = CliContext(config, database_url, log_dir)


@cli.command()
@pass_context
def init(context: CliContext) -> None:
    """Create or upgrade the database schema and the log directory (safe to run again)."""
    previous, current = context.queue.init()
    context.settings.job_log_dir.mkdir(parents=True, exist_ok=True)
    where = context.queue.store.display_url
    if previous == current:
        stdout().print(f"schema is up to date (version {current}) in {where}", highlight=False)
    else:
        stdout().print(
            f"schema upgraded from version {previous} to {current} in {where}", highlight=False
        )


class _CommandAfterDashes(click.Command):
    """Everything after the first `--` is the job's argv, untouched by option parsing."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            split = args.index("--")
            ctx.meta["job_argv"] = args[split + 1 :]
            args = args[:split]
        else:
            ctx.meta["job_argv"] = None
        return super().parse_args(ctx, args)


@cli.command(cls=_CommandAfterDashes)
@click.argument("task", required=False)
@click.option("--queue", help="Queue name (default: the task's, else 'default').")
@click.option("--priority", type=int, help="Higher runs first (default 0).")
@click.option("--timeout", metavar="DUR", help="Hard limit: 90, 90s, 10m, 2h, 1d.")
@click.option("--stall-timeout", metavar="DUR", help="No output, progress or CPU for this long.")
@click.option("--retries", type=int, help="Attempts after the first.")
@click.option("--delay", metavar="DUR", help="Run no sooner than this from now.")
@click.option(
    "--run-at", metavar="TIME", help="Run no sooner than this ISO 8601 time (UTC if no offset)."
)
@click.option(
    "--unique-key", metavar="KEY", help="Refuse a second pending/running job with this key."
)
@click.option("--concurrency-key", metavar="KEY", help="Limit jobs running at once with this key.")
@click.option(
    "--max-concurrency", type=int, help="How many with --concurrency-key at once (default 1)."
)
@click.option(
    "--env", "env_items", multiple=True, metavar="K=V", help="Environment variable (repeatable)."
)
@click.option("--cwd", metavar="DIR", help="Working directory of the job.")
@click.option("--tag", "tags", multiple=True, help="Tag (repeatable).")
@click.option(
    "--param", "param_items", multiple=True, metavar="K=V", help="Task parameter (repeatable)."
)
@click.option(
    "--wait",
    "wait_for_end",
    is_flag=True,
    help="Follow the job with a progress bar; exit 0 if it completed, 1 otherwise.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON instead of its id.")
@click.pass_context
def enqueue(
    ctx: click.Context,
    /,
    task: str | None,
    env_items: Sequence[str],
    param_items: Sequence[str],
    run_at: str | None,
    wait_for_end: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Add a job: `enqueue TASK --param k=v` or `enqueue [OPTIONS] -- CMD ARGS...`.

    Prints the new job's id alone, so that `id=$(batchjob enqueue -- cmd)` works.
    """
    context: CliContext = ctx.obj
    command = ctx.meta["job_argv"]
    if command is not None and task is not None:
        raise InvalidInput(
            f"give a task name or a command after --, not both ({task!r} and a command)"
        )
    if command is None and task is None:
        raise InvalidInput("nothing to enqueue: give a task name or a command after --")
    if command == []:
        raise InvalidInput("the command after -- is empty")
    job = context.queue.enqueue(
        command,
        task=task,
        params=_pairs("--param", param_items),
        env=_pairs("--env", env_items),
        run_at=_timestamp(run_at),
        tags=list(options.pop("tags")) or None,
        **options,
    )
    if as_json:
        _print_json(job.to_json())
    else:
        click.echo(job.id)
    if wait_for_end:
        sys.stdout.flush()
        _wait_and_exit(context, job.id)


@cli.command(name="list")
@click.option(
    "--status", "statuses", multiple=True, help="Only jobs with this status (repeatable)."
)
@click.option("--queue", "queues", multiple=True, help="Only jobs of this queue (repeatable).")
@click.option("--task", "tasks", multiple=True, help="Only jobs of this task (repeatable).")
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of jobs.")
@pass_context
def list_jobs(
    context: CliContext,
    statuses: Sequence[str],
    queues: Sequence[str],
    tasks: Sequence[str],
    limit: int,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    jobs = context.queue.list(status=statuses, queue=queues, task=tasks, limit=limit)
    if as_json:
        _print_json([job.to_json() for job in jobs])
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "STATUS", "QUEUE", "JOB", "TRY", "PROGRESS", "CREATED", "REASON"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        table.add_row(
            str(job.id),
            _styled_status(job.status) + (" [red](stalled)[/]" if job.stalled_at else ""),
            escape(job.queue),
            escape(_describe(job)),
            f"{job.attempt}/{job.max_attempts}",
            escape(_progress(job)),
            _when(job.created_at),
            job.failure_reason.value if job.failure_reason else "",
        )
    stdout().print(table)


@cli.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@pass_context
def show(context: CliContext, job_id: int, as_json: bool) -> None:
    """Show one job: its state, how it ended, and its history."""
    job = context.queue.get(job_id)
    if as_json:
        _print_json(job.to_json())
        return
    fields = job.to_json()
    from rich.markup import escape
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in fields.items():
        if value in (None, [], {}) or name == "diagnosis":
            continue
        shown = _styled_status(job.status) if name == "status" else escape(_plain(value))
        table.add_row(name, shown)
    if job.diagnosis is not None:
        table.add_row("diagnosis", escape(str(job.diagnosis.get("summary", ""))))
    stdout().print(table)
    history = context.queue.events(job_id)
    if history:
        stdout().print("\n[bold]events[/bold]")
        for event in history:
            stdout().print(
                f"  {_when(event.at)}  {event.kind:<16} {event.message}",
                highlight=False,
                markup=False,
            )


@cli.command()
@click.argument("job_id", type=int)
@pass_context
def cancel(context: CliContext, job_id: int) -> None:
    """Cancel a pending job; ask the worker to stop a running one."""
    job = context.queue.cancel(job_id)
    if job.status == JobStatus.RUNNING:
        click.echo(f"job {job.id}: cancel requested; its worker stops it")
    else:
        click.echo(f"job {job.id}: {job.status.value}")


@cli.command()
@click.argument("job_id", type=int)
@pass_context
def retry(context: CliContext, job_id: int) -> None:
    """Run a failed or cancelled job again."""
    job = context.queue.retry(job_id)
    click.echo(
        f"job {job.id}: {job.status.value} (attempt {job.attempt + 1} of {job.max_attempts})"
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_context
def stats(context: CliContext, as_json: bool) -> None:
    """Job counts by queue and status."""
    counts = context.queue.stats()
    if as_json:
        _print_json({"queues": counts, "totals": _totals(counts)})
        return
    statuses = [status.value for status in JobStatus]
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("QUEUE")
    for status in statuses:
        table.add_column(status.upper(), justify="right")
    rows = {**counts, "(all)": _totals(counts)} if counts else {}
    for queue, by_status in rows.items():
        table.add_row(queue, *(str(by_status.get(status, 0)) for status in statuses))
    stdout().print(table)


@cli.command()
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="Jobs at once (default: [worker] concurrency, 2).",
)
@click.option("--queues", help="Comma-separated queues to take jobs from (default: every queue).")
@click.option("--burst", is_flag=True, help="Exit 0 once no job is running and none is due.")
@pass_context
def worker(context: CliContext, concurrency: int | None, queues: str | None, burst: bool) -> None:
    """Run jobs: claim, run each as a hermetic subprocess, record how it ended.

    SIGTERM/SIGINT stop gracefully (running jobs get shutdown_grace, then go back to pending);
    SIGHUP reopens the log file.
    """
    from batchjob.worker.lean import (
        driver_imported_without_openssl,
        metadata_loaded_on_first_use,
        openssl_kept_out,
    )

    metadata_loaded_on_first_use()
    with openssl_kept_out():
        from batchjob.worker.supervisor import Worker
    driver_imported_without_openssl(context.settings.database_url)

    names = [name.strip() for name in queues.split(",") if name.strip()] if queues else None
    worker = Worker(context.settings, concurrency=concurrency, queues=names, burst=burst)
    sys.exit(worker.run())


@cli.command()
@click.argument("job_id", type=int)
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job ends.")
@pass_context
def logs(context: CliContext, job_id: int, follow: bool) -> None:
    """Print a job's log: stdout (out) and stderr (err) lines, timestamped."""
    from batchjob.follow import print_log

    print_log(context.queue, job_id, follow=follow, out=sys.stdout.buffer)


@cli.command()
@click.argument("job_id", type=int)
@pass_context
def wait(context: CliContext, job_id: int) -> None:
    """Wait for a job to end, with a progress bar; exit 0 if it completed, 1 otherwise."""
    _wait_and_exit(context, job_id)


def _wait_and_exit(context: CliContext, job_id: int) -> None:
    from batchjob.follow import wait_with_progress

    job = wait_with_progress(context.queue, job_id, console=stderr())
    stderr().print(_ending(job), highlight=False, markup=False)
    sys.exit(0 if job.status == JobStatus.COMPLETED else EXIT_JOB_FAILED)


def _ending(job: Job) -> str:
    """`job 7 failed (exit_code 3): Traceback…` — how a job ended, in one or a few lines."""
    if job.status == JobStatus.COMPLETED:
        return f"job {job.id} completed"
    reason = job.failure_reason.value if job.failure_reason else job.status.value
    detail = f" {job.exit_code}" if job.exit_code is not None else ""
    summary = f": {job.error_summary}" if job.error_summary else ""
    hint = f"\nhint: {job.hint}" if job.hint else ""
    return f"job {job.id} {job.status.value} ({reason}{detail}){summary}{hint}"


@cli.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the whole diagnosis as JSON.")
@pass_context
def diagnose(context: CliContext, job_id: int, as_json: bool) -> None:
    """Why is a running job not moving? Each process: state, system call, what it waits on."""
    from batchjob.diagnosis.live import diagnose_job

    diagnosis = diagnose_job(context.queue, job_id)
    if as_json:
        _print_json(diagnosis)
        return
    stdout().print(diagnosis["summary"], highlight=False, markup=False)
    for process in diagnosis.get("processes", []):
        waits = process.get("blocked_on") or ""
        line = f"  pid {process['pid']} {process.get('state', '')} {process.get('syscall') or ''}"
        stdout().print(
            f"{line} {waits} — {process.get('command', '')}", highlight=False, markup=False
        )
        for frame in process.get("python_stack") or []:
            stdout().print(f"      {frame}", highlight=False, markup=False)


@cli.command(name="env-diff")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@pass_context
def env_diff(context: CliContext, job_id: int, as_json: bool) -> None:
    """Compare a job's recorded execution context with this shell's."""
    from batchjob.diagnosis.envdiff import differences

    recorded = [event for event in context.queue.events(job_id) if event.kind == "attempt"]
    if not recorded or recorded[-1].data is None:
        raise InvalidInput(
            f"job {job_id} has no recorded attempt yet (it records one when it ends)"
        )
    job = context.queue.get(job_id)
    found = differences(recorded[-1].data, job.command)
    if as_json:
        _print_json([difference.to_json() for difference in found])
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("WHAT", f"JOB {job_id} (attempt {recorded[-1].attempt})", "THIS SHELL"):
        table.add_column(column, overflow="fold")
    for difference in found:
        style = "dim" if difference.set_by_batchjob else ""
        table.add_row(
            escape(difference.what), escape(difference.job), escape(difference.here), style=style
        )
    stdout().print(table)


@cli.command(name="run", context_settings={"ignore_unknown_options": True})
@click.option(
    "--like-worker", is_flag=True, required=True, help="Run exactly as the worker runs jobs."
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_context
def run_command(context: CliContext, like_worker: bool, command: tuple[str, ...]) -> None:
    """Run CMD in the foreground as a job: `batchjob run --like-worker -- CMD ARGS...`."""
    from batchjob.diagnosis.reproduce import run_like_worker

    sys.exit(run_like_worker(context.settings, list(command)))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option("--probe", is_flag=True, help="Also send a probe job through a running worker.")
@pass_context
def doctor(context: CliContext, as_json: bool, probe: bool) -> None:
    """Check the database, workers, leases, limits, disks and sandbox; exit 1 on any FAIL."""
    from batchjob.diagnosis.doctor import run_doctor

    sys.exit(
        run_doctor(context.settings, context.queue, as_json=as_json, probe=probe, out=stdout())
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI and turn batchjob's errors into one line and an exit code."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="batchjob",
            standalone_mode=False,
        )
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as exc:
        click.echo(f"batchjob: error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("batchjob: aborted", err=True)
        sys.exit(130)
    except BatchJobError as exc:
        click.echo(f"batchjob: error: {' '.join(str(exc).split())}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(0)


def _pairs(option: str, items: Sequence[str]) -> dict[str, str] | None:
    if not items:
        return None
    pairs = {}
    for item in items:
        name, separator, value = item.partition("=")
        if not separator or not name:
            raise InvalidInput(f"{option}: expected NAME=VALUE, got {item!r}")
        pairs[name] = value
    return pairs


def _timestamp(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"--run-at: {text!r} is not an ISO 8601 time (e.g. 2026-12-01T03:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _totals(counts: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for by_status in counts.values():
        for status, count in by_status.items():
            totals[status] = totals.get(status, 0) + count
    return totals


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def _styled_status(status: JobStatus) -> str:
    return f"[{STATUS_STYLES[status]}]{status.value}[/]"


def _describe(job: Job) -> str:
    text = job.task if job.task else " ".join(job.command)
    return text if len(text) <= 60 else text[:59] + "…"


def _progress(job: Job) -> str:
    counts = ""
    if job.progress_current is not None and job.progress_total:
        counts = f"{job.progress_current}/{job.progress_total} "
    return (counts + (job.progress_message or "")).strip()


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


if __name__ == "__main__":
    main()
