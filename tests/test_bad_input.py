"""Bad input, generated: each is refused with one clear line or ignored with a note, never more.

Cron expressions, job env and task params, progress lines and CLI flags come from hypothesis;
the outcome may be "stored exactly" or "refused with InvalidInput / exit 2", but never another
exception, a traceback, a half-stored job or a worker that stops working. The generated loops
run on SQLite (fast); fixed examples run on every database.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from croniter import croniter
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from batchjob.config import Settings, TaskOptions, TaskSpec, load_settings
from batchjob.errors import ConfigError, InvalidInput
from batchjob.model import FailureReason, JobStatus
from batchjob.queue import Queue
from batchjob.runner import JobSpec, RunControl, RunResult, run
from batchjob.runner.spawn import SpawnRequest
from conftest import BATCHJOB, CliResult, Workers, wait_until

PYTHON = sys.executable
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
# Function-scoped fixtures (a scratch directory, one SQLite database) are shared by all the
# examples of a test on purpose: each example checks what it changed, not a fresh state.
SHARED_FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
# The job log's records (see batchjob.runner.pump): the runner's notes, and the job's stdout.
NOTE = re.compile(r"^\S+ bjq[ +~] \| (.*)$", re.MULTILINE)
OUT = re.compile(r"^\S+ out[ +~] \| (.*)$", re.MULTILINE)

# Text as a caller can hold it: any code point but a lone surrogate (those have their own
# tests below: they cannot be encoded to UTF-8, so no database can store them as they are).
TEXT_CHARACTERS = st.characters(exclude_categories=["Cs"])
any_text = st.text(TEXT_CHARACTERS, max_size=40)
huge_text = st.builds(
    lambda character, size: character * size,
    st.sampled_from(["x", "第", "😀", "=", "\0"]),
    st.integers(min_value=100_000, max_value=1_200_000),
)


def total_jobs(queue: Queue) -> int:
    return sum(sum(by_status.values()) for by_status in queue.stats().values())


def assert_one_line(error: BaseException) -> str:
    message = str(error)
    assert message, f"{type(error).__name__} without a message"
    assert message.splitlines() == [message], f"not one line: {message[:300]!r}"
    return message


# --- cron expressions in [[schedules]] --------------------------------------------------------


def toml_string(text: str) -> str:
    """A TOML basic string holding exactly `text`."""
    escaped = (
        f"\\u{ord(char):04x}" if char in '"\\' or ord(char) < 0x20 or ord(char) == 0x7F else char
        for char in text
    )
    return '"' + "".join(escaped) + '"'


def load_schedule(directory: Path, cron: str) -> Settings:
    path = directory / "batchjob.toml"
    path.write_text(
        '[tasks.sync]\ncommand = ["python", "sync.py"]\n\n'
        f'[[schedules]]\nname = "nightly"\ntask = "sync"\ncron = {toml_string(cron)}\n',
        encoding="utf-8",
    )
    return load_settings(path, environ={})


CRON_WORDS = [
    *("*", "*/5", "*/0", "1-5", "5-1", "0", "59", "60", "23", "24", "31", "32", "12", "13"),
    *("-1", "1,2", ",", "L", "W", "5#2", "5#6", "?", "MON", "jan", "@daily", "@reboot", "H"),
    *("1-60/70", "0x1", "٣", "１", "\x1c", "\u3000", "\u00a0", "第六竹石"),
]
cron_like = st.lists(st.one_of(st.sampled_from(CRON_WORDS), any_text), min_size=0, max_size=8).map(
    " ".join
)


@settings(max_examples=300, deadline=None, suppress_health_check=SHARED_FIXTURES)
@given(st.one_of(any_text, cron_like))
@example("* * * * *\u3000")
@example("*\x1c*\x1c*\x1c*\x1c*")
@example("0 0 31 2 *")
@example("* * * * * * *")
def test_any_cron_text_loads_or_is_a_config_error_naming_the_file_and_key(
    tmp_path: Path, cron: str
) -> None:
    try:
        loaded = load_schedule(tmp_path, cron)
    except ConfigError as exc:
        message = assert_one_line(exc)
        assert message.startswith(f"{tmp_path / 'batchjob.toml'}: schedules[0].cron: "), message
    else:
        (schedule,) = loaded.schedules
        assert schedule.cron == cron.strip()
        assert croniter.is_valid(schedule.cron)


def cron_field(low: int, high: int) -> st.SearchStrategy[str]:
    number = st.integers(low, high)
    ranged = st.tuples(number, number).map(sorted).map(lambda pair: f"{pair[0]}-{pair[1]}")
    single = st.one_of(st.just("*"), number.map(str), ranged)
    stepped = st.tuples(st.one_of(st.just("*"), ranged), st.integers(1, high - low + 1)).map(
        lambda parts: f"{parts[0]}/{parts[1]}"
    )
    listed = st.lists(st.one_of(number.map(str), ranged), min_size=2, max_size=4).map(",".join)
    return st.one_of(single, stepped, listed)


# Days of the month up to 28, so that every generated expression fires in every month.
five_field_cron = st.tuples(
    cron_field(0, 59), cron_field(0, 23), cron_field(1, 28), cron_field(1, 12), cron_field(0, 6)
).map(" ".join)


@settings(max_examples=200, deadline=None, suppress_health_check=SHARED_FIXTURES)
@given(five_field_cron)
def test_valid_five_field_crons_load(tmp_path: Path, cron: str) -> None:
    loaded = load_schedule(tmp_path, cron)

    (schedule,) = loaded.schedules
    assert (schedule.name, schedule.cron, schedule.task) == ("nightly", cron, "sync")


# --- job env and task params through Queue.enqueue --------------------------------------------

PARAM_TASK = TaskSpec(
    name="sync",
    command=("echo", "--property", "{property}"),
    options=TaskOptions(),
)
env_names = st.one_of(
    any_text,
    st.sampled_from(["", "=", "A=B", "NUL\0", "BATCH_JOB_ID", "PATH", "第六竹石", "N" * 300]),
)
env_values = st.one_of(
    any_text, huge_text, st.sampled_from(["", "=", "a=b=c", "\0", "x\0y", "処理中: 第六竹石\n"])
)
param_names = st.one_of(
    any_text, st.sampled_from(["", "property", "第六竹石", "ａ", "_", "1st", "a-b", "a\0"])
)
param_values = st.one_of(
    env_values,
    st.integers(),
    st.floats(allow_nan=False),
    st.sampled_from([True, None, ["list"], b"bytes"]),
)


@pytest.fixture
def task_queue(database_url: str, tmp_path: Path) -> Iterator[Queue]:
    """A Queue whose settings declare PARAM_TASK, over this test's database."""
    settings = Settings(
        database_url=database_url, log_dir=tmp_path / "logs", tasks={"sync": PARAM_TASK}
    )
    queue = Queue(settings=settings)
    yield queue
    queue.close()


def stored_exactly_or_refused(
    queue: Queue, enqueue: Callable[[], Any], check_stored: Callable[[Any], None]
) -> None:
    """The one outcome rule: a job whose values read back exactly, or InvalidInput and no job."""
    before = total_jobs(queue)
    try:
        job = enqueue()
    except InvalidInput as exc:
        assert_one_line(exc)
        assert total_jobs(queue) == before, "a refused request stored nothing"
    else:
        check_stored(queue.get(job.id))
        assert total_jobs(queue) == before + 1


def enqueue_env(queue: Queue, env: Mapping[str, str]) -> None:
    def check(stored: Any) -> None:
        assert dict(stored.env) == dict(env)
        assert stored.command == ["true"]

    stored_exactly_or_refused(queue, lambda: queue.enqueue(["true"], env=env), check)


def enqueue_params(queue: Queue, params: Mapping[Any, Any]) -> None:
    def check(stored: Any) -> None:
        assert dict(stored.params) == {name: str(value) for name, value in params.items()}
        assert stored.command == ["echo", "--property", str(params["property"])]
        assert stored.task == "sync"

    stored_exactly_or_refused(queue, lambda: queue.enqueue(task="sync", params=params), check)


@SQLITE_ONLY
@settings(max_examples=150, deadline=None, suppress_health_check=SHARED_FIXTURES)
@given(st.dictionaries(env_names, env_values, max_size=3))
def test_any_env_is_stored_exactly_or_refused_with_invalid_input(
    queue: Queue, env: dict[str, str]
) -> None:
    enqueue_env(queue, env)


@SQLITE_ONLY
@settings(max_examples=150, deadline=None, suppress_health_check=SHARED_FIXTURES)
@given(
    st.fixed_dictionaries({"property": param_values}, optional={"extra": param_values}).flatmap(
        lambda fixed: st.dictionaries(param_names, param_values, max_size=2).map(
            lambda more: {**more, **fixed}
        )
    )
)
def test_any_params_are_stored_exactly_or_refused_with_invalid_input(
    task_queue: Queue, params: dict[Any, Any]
) -> None:
    enqueue_params(task_queue, params)


FIXED_ENVS = [
    {"A": "x\0y"},
    {"A=B": "x"},
    {"": "x"},
    {"BATCH_JOB_ID": "7"},
    {"A": "=a=b="},
    {"第六竹石": "処理中: 第六竹石\n"},
    {"A": "x" * 131_072},
    {"A": "x" * 131_073},
    {"A": "😀" * 40_000, "B": "😀" * 40_000},
]
FIXED_PARAMS: list[dict[str, object]] = [
    {"property": "x\0y"},
    {"property": "第六竹石", "note": "x\0y"},
    {"property": "=a=b="},
    {"property": 12, "limit": 1.5},
    {"property": "x" * 131_072},
    {"property": "x", "big": "y" * 900_000},
    {"property": "x", "big": "y" * 1_100_000},
    {"property": "x", "第六竹石": "処理中"},
    {"property": "x", "a-b": "y"},
]


def test_fixed_awkward_env_and_params_are_stored_exactly_or_refused_on_every_database(
    task_queue: Queue,
) -> None:
    for env in FIXED_ENVS:
        enqueue_env(task_queue, env)
    for params in FIXED_PARAMS:
        enqueue_params(task_queue, params)


# Lone surrogates reach Python strings from os.fsdecode (undecodable bytes in argv or a file
# name) and from JSON ("\ud800"). UTF-8 cannot encode them, so the request must be refused.
SURROGATE_REQUESTS = {
    "env-value-d800": {"env": {"A": "\ud800"}},
    "env-value-dc80": {"env": {"A": "x\udc80"}},
    "env-name-dfff": {"env": {"\udfff": "x"}},
    "param-value-d800": {"params": {"property": "x", "note": "\ud800"}},
    "param-value-dcff-in-command": {"params": {"property": "\udcff"}},
}


@pytest.mark.parametrize("request_", SURROGATE_REQUESTS.values(), ids=SURROGATE_REQUESTS.keys())
def test_a_lone_surrogate_in_env_or_params_is_invalid_input_and_stores_nothing(
    task_queue: Queue, request_: dict[str, Any]
) -> None:
    before = total_jobs(task_queue)
    with pytest.raises(InvalidInput) as caught:
        if "env" in request_:
            task_queue.enqueue(["true"], env=request_["env"])
        else:
            task_queue.enqueue(task="sync", params=request_["params"])
    assert_one_line(caught.value)
    assert total_jobs(task_queue) == before


def test_a_request_is_refused_by_its_size_in_utf8_bytes_not_characters(queue: Queue) -> None:
    """Each value under the 128 KiB a program may receive; together over or under the 1 MiB
    a request may hold, counted in UTF-8 (第: 3 bytes)."""
    under = {f"V{n}": "第" * 40_000 for n in range(8)}  # 960,000 bytes, 320,000 characters
    assert queue.get(queue.enqueue(["true"], env=under).id).env == under
    for over in (
        {f"V{n}": "第" * 40_000 for n in range(9)},  # 1,080,000 bytes
        {f"V{n}": "x" * 120_000 for n in range(9)},  # 1,080,000 bytes, ASCII
    ):
        with pytest.raises(InvalidInput) as caught:
            queue.enqueue(["true"], env=over)
        assert "the limit is 1048576" in assert_one_line(caught.value)
    assert total_jobs(queue) == 1


def test_a_delay_beyond_what_a_timestamp_holds_is_invalid_input_naming_delay(
    queue: Queue,
) -> None:
    for delay in ("3000000d", 1e20):
        with pytest.raises(InvalidInput) as caught:
            queue.enqueue(["true"], delay=delay)
        message = assert_one_line(caught.value)
        assert "delay" in message, message
    assert total_jobs(queue) == 0


# --- progress lines through the real runner -----------------------------------------------------

# The child writes a file's bytes to its progress fd, says so on stdout, and exits with a code.
PROGRESS_CHILD = textwrap.dedent(
    """
    import os, sys, time
    descriptor = int(os.environ["BATCH_JOB_PROGRESS_FD"])
    for index, path in enumerate(sys.argv[2:]):
        if index:
            time.sleep(0.3)
        view = memoryview(open(path, "rb").read())
        while view:
            view = view[os.write(descriptor, view):]
    print("done", flush=True)
    sys.exit(int(sys.argv[1]))
    """
)
MiB = 1024 * 1024
job_ids = count(900_001)


@dataclass(frozen=True)
class ProgressLine:
    data: bytes
    report: tuple[str | None, int | None, int | None] | None  # None: must be ignored


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True


def _valid(
    message: str | None, current: int | None, total: int | None, ensure_ascii: bool
) -> ProgressLine:
    record: dict[str, Any] = {}
    if message is not None:
        record["message"] = message
    if current is not None:
        record["current"] = current
    if total is not None:
        record["total"] = total
    data = json.dumps(record, ensure_ascii=ensure_ascii).encode("utf-8", "backslashreplace")
    return ProgressLine(data, (_as_stored(message), current, total))


def _as_stored(message: str | None) -> str | None:
    """What the worker keeps of a message: NUL and unpaired surrogates (which no database
    text column holds) become U+FFFD, and more than 2000 characters end in an ellipsis."""
    if message is None:
        return None
    text = "".join(
        "\ufffd" if char == "\0" or 0xD800 <= ord(char) <= 0xDFFF else char for char in message
    )
    return text if len(text) <= 2000 else text[:1999] + "…"


counts = st.one_of(st.none(), st.integers(0, 2**53))
valid_lines = st.builds(_valid, st.one_of(st.none(), any_text), counts, counts, st.booleans())
MALFORMED = [
    b'{"message": "unterminated',
    b"[1, 2, 3]",
    b'"just a string"',
    b"42",
    b"null",
    b'{"current": "2", "total": 5}',
    b'{"current": 1.5}',
    b'{"current": true}',
    b'{"total": 1e999}',
    b'{"current": NaN}',
    b'{"total": -Infinity}',
    b'{"current": ' + b"9" * 5000 + b"}",
    b'{"message": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
    b"[" * 60_000,
    b"[" * 100_000,
    b"{" * 100_000,
    b"\xff\xfe\x00\x01\x80binary\x00",
    b'{"message": "\xff\xfe"}',
    b"x" * (64 * 1024 + 1),
]
# (start, filler, end) of lines of 10 MiB, made only when drawn.
HUGE_MALFORMED = [(b"", b"x", b""), (b"", b"[", b""), (b'{"message": "', b"x", b'"}')]
binary_garbage = st.binary(min_size=1, max_size=200).filter(
    lambda data: b"\n" not in data and data.strip() != b"" and not _is_json(data)
)
malformed_lines = st.builds(
    lambda data: ProgressLine(data, None), st.one_of(st.sampled_from(MALFORMED), binary_garbage)
)


def _with_huge(
    lines: list[ProgressLine], huge: tuple[bytes, bytes, bytes] | None, at: int
) -> list[ProgressLine]:
    if huge is None:
        return lines
    start, filler, end = huge
    return [*lines[:at], ProgressLine(start + filler * (10 * MiB) + end, None), *lines[at:]]


# Up to eight ordinary lines, and at times one line of 10 MiB among them.
progress_streams = st.builds(
    _with_huge,
    st.lists(st.one_of(valid_lines, malformed_lines), min_size=1, max_size=8),
    st.one_of(st.none(), st.sampled_from(HUGE_MALFORMED)),
    st.integers(0, 8),
)


@dataclass(frozen=True)
class ChildRun:
    result: RunResult
    reports: list[tuple[str | None, int | None, int | None]]
    notes: str  # the runner's own lines in the job log
    stdout: str  # without its newlines


def run_progress_child(directory: Path, chunks: list[bytes], exit_code: int = 0) -> ChildRun:
    """Run PROGRESS_CHILD under the real runner, as the worker would, and read its log."""
    job_id = next(job_ids)
    paths = []
    for index, chunk in enumerate(chunks):
        paths.append(directory / f"progress-{job_id}-{index}.bin")
        paths[-1].write_bytes(chunk)
    reports: list[tuple[str | None, int | None, int | None]] = []
    log_path = directory / f"job-{job_id}.log"
    spec = JobSpec(
        spawn=SpawnRequest(
            job_id,
            1,
            "default",
            [PYTHON, "-c", PROGRESS_CHILD, str(exit_code), *map(str, paths)],
            {},
            None,
            {"PATH": "/usr/bin:/bin"},
        ),
        log_path=str(log_path),
        max_log_bytes=64 * MiB,
        timeout=60.0,
        kill_grace=1.0,
        drain_grace=1.0,
    )
    result = run(spec, RunControl(on_progress=lambda *report: reports.append(report)))
    for path in paths:
        path.unlink()
    log = log_path.read_bytes().decode("utf-8", "replace")
    log_path.unlink()
    # Records of stdout split where the reads did; their texts joined are what it printed.
    return ChildRun(result, reports, "\n".join(NOTE.findall(log)), "".join(OUT.findall(log)))


@settings(max_examples=25, deadline=None, suppress_health_check=SHARED_FIXTURES)
@given(progress_streams, st.sampled_from([0, 1, 3, 255]))
def test_malformed_progress_lines_are_ignored_with_a_note_and_valid_ones_arrive_in_order(
    tmp_path: Path, lines: list[ProgressLine], exit_code: int
) -> None:
    stream = b"".join(line.data + b"\n" for line in lines)

    child = run_progress_child(tmp_path, [stream], exit_code)

    result = child.result
    assert (result.spawn_error, result.stopped_by, result.signal) == (None, None, None)
    assert result.exit_code == exit_code
    assert child.stdout == "done", "the job went on after its progress lines"
    assert child.reports == [line.report for line in lines if line.report is not None]
    ignored = sum(line.report is None for line in lines)
    if ignored:
        assert f"ignored {ignored} malformed progress line(s)" in child.notes, child.notes
    else:
        assert "ignored" not in child.notes, child.notes


def test_the_tail_of_an_over_long_last_line_is_not_taken_for_a_progress_report(
    tmp_path: Path,
) -> None:
    # One byte over the limit, then (a moment later, without a newline) what would be a valid
    # report on a line of its own: it is the end of the over-long line, to be ignored with it.
    over_long = b"x" * (64 * 1024 + 1)
    tail = b'{"message": "the end of an over-long line"}'

    child = run_progress_child(tmp_path, [over_long, tail])

    assert child.result.exit_code == 0
    assert child.reports == []
    assert "ignored 1 malformed progress line(s)" in child.notes, child.notes


# Lines the runner takes as JSON objects but that no database column can hold as they are:
# counts beyond BIGINT, NUL (PostgreSQL text), a lone surrogate (UTF-8), a message whose
# re-encoding outgrows the 64 KiB line (MariaDB TEXT holds 65,535 bytes).
UNSTORABLE_PROGRESS = {
    "count-beyond-bigint": b'{"message": "big", "current": 18446744073709551616, "total": 1}',
    "negative-count-beyond-bigint": b'{"current": 1, "total": -9223372036854775809}',
    "nul-in-message": b'{"message": "nul \\u0000 here"}',
    "lone-surrogate-in-message": b'{"message": "\\ud800"}',
    "message-growing-past-64KiB": b'{"message": [' + b",".join([b"1"] * 30_000) + b"]}",
}


def test_progress_the_database_cannot_hold_neither_wedges_nor_crashes_the_worker(
    workers: Workers, queue: Queue
) -> None:
    program = (
        "import os, sys, time\n"
        "os.write(int(os.environ['BATCH_JOB_PROGRESS_FD']), sys.argv[1].encode('latin-1'))\n"
        "time.sleep(1)\n"  # past a tick of the lease keeper, which stores progress
    )
    jobs = {
        name: queue.enqueue([PYTHON, "-c", program, (line + b"\n").decode("latin-1")])
        for name, line in UNSTORABLE_PROGRESS.items()
    }
    after = queue.enqueue(["sh", "-c", "echo after"], priority=-1)
    worker = workers.start("--burst", "--concurrency", str(len(jobs) + 1))
    try:
        exit_code: int | None = worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        exit_code = None

    not_completed = {
        name: f"{stored.status} exit_code={stored.exit_code}"
        for name, job in jobs.items()
        if (stored := queue.get(job.id)).status != JobStatus.COMPLETED or stored.exit_code != 0
    }
    assert not_completed == {}
    assert queue.get(after.id).status == JobStatus.COMPLETED
    assert exit_code == 0, "the burst worker ends once the jobs are done"
    assert "action=slot_crashed" not in workers.worker_log()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_one_jobs_unstorable_progress_does_not_cost_another_job_its_lease(
    workers: Workers, queue: Queue, tmp_path: Path
) -> None:
    workers.configure('[worker]\nlease_timeout = "2s"\n')
    ledger = tmp_path / "attempts"
    bystander = queue.enqueue(
        ["sh", "-c", f'echo "$BATCH_JOB_ATTEMPT" >> {ledger}; sleep 5'], retries=2, priority=1
    )
    line = UNSTORABLE_PROGRESS["count-beyond-bigint"] + b"\n"
    program = (
        "import os, time\n"
        f"os.write(int(os.environ['BATCH_JOB_PROGRESS_FD']), {line!r})\n"
        "time.sleep(1.5)\n"
    )
    queue.enqueue([PYTHON, "-c", program], priority=1)
    workers.start("--concurrency", "2")
    wait_until(lambda: queue.get(bystander.id).pid)
    workers.start()  # would rescue the bystander if its worker stopped renewing its lease

    finished = wait_until(lambda: (j := queue.get(bystander.id)).status.is_finished and j)

    assert (finished.status, finished.attempt) == (JobStatus.COMPLETED, 1)
    assert ledger.read_text().split() == ["1"]
    assert "rescued" not in [event.kind for event in queue.events(bystander.id)]


# --- the CLI -----------------------------------------------------------------------------------

CLI_CONFIG = '[tasks.echo]\ncommand = ["echo", "{p}"]\n'
cli_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=30)
CLI_SPECIALS = [
    *("", "=", "A=", "=x", "A=B=C", "p=", "p=第六竹石", "BATCH_JOB_ID=1", "PATH=/nowhere"),
    *("1e400", "-1", "0", "-0", "99999999999999999999", "-2147483649", "１２", "٣", "0x10"),
    *("1h30m", "500ms", " 90s ", "90 s", "3000000d", "1" * 101, "nan", "inf"),
    "A=" + "x" * 130_000,
]
cli_values = st.one_of(cli_text, st.sampled_from(CLI_SPECIALS))
cli_requests = st.tuples(st.sampled_from(["--env", "--param", "--delay", "--priority"]), cli_values)


def run_batchjob(directory: Path, database_url: str, *args: str | bytes) -> CliResult:
    """`batchjob ARGS` with byte arguments allowed (argv is bytes to the kernel)."""
    done = subprocess.run(
        [str(BATCHJOB), *args],
        cwd=directory,
        env={"PATH": os.environ["PATH"], "BATCH_JOB_DATABASE_URL": database_url},
        capture_output=True,
        timeout=60,
        check=False,
    )
    return CliResult(
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


def enqueue_through_cli(
    directory: Path, database_url: str, queue: Queue, option: str, value: str | bytes
) -> None:
    """Exit 0 with an id and one more job, or exit 2 with one line and no job; nothing else."""
    (directory / "batchjob.toml").write_text(CLI_CONFIG, encoding="utf-8")
    flag = option.encode() + b"=" + (value if isinstance(value, bytes) else value.encode())
    args: tuple[str | bytes, ...] = (
        ("enqueue", "echo", flag) if option == "--param" else ("enqueue", flag, "--", "true")
    )
    before = total_jobs(queue)

    result = run_batchjob(directory, database_url, *args)

    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode in (0, 2), (result.returncode, result.stderr[-2000:])
    if result.returncode == 0:
        assert re.fullmatch(r"[0-9]+\n", result.stdout), result.stdout
        assert total_jobs(queue) == before + 1
    else:
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("batchjob: error: "), result.stderr
        assert total_jobs(queue) == before


@SQLITE_ONLY
@settings(max_examples=24, deadline=None, suppress_health_check=SHARED_FIXTURES)
@given(cli_requests)
def test_cli_flags_with_any_value_exit_0_or_2_with_one_line(
    tmp_path: Path, database_url: str, queue: Queue, request_: tuple[str, str]
) -> None:
    enqueue_through_cli(tmp_path, database_url, queue, *request_)


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--env", b"A=\xff\xfe"),
        ("--env", b"\xff=x"),
        ("--param", b"p=\xe3\x81"),
        ("--param", b"\xe3\x81=x"),
        ("--delay", b"\xff"),
        ("--priority", b"\xff"),
    ],
)
def test_cli_flags_with_bytes_that_are_not_utf8_exit_0_or_2_with_one_line(
    tmp_path: Path, database_url: str, queue: Queue, option: str, value: bytes
) -> None:
    enqueue_through_cli(tmp_path, database_url, queue, option, value)


# --- database URLs that cannot be used -----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("not a url", "is not a database URL"),
        (
            "oracle://u:hunter2@h/d",
            "batchjob runs on SQLite, MySQL/MariaDB and PostgreSQL, not oracle",
        ),
        ("postgresql+psycopg2://u:hunter2@h/d", "cannot load its driver postgresql+psycopg2"),
        ("mysql+nosuch://u:hunter2@h/d", "cannot load its driver mysql+nosuch"),
    ],
)
@pytest.mark.parametrize("command", [("list",), ("worker", "--burst"), ("doctor",)])
def test_a_database_url_batchjob_cannot_use_is_one_line_exit_2_with_its_password_masked(
    tmp_path: Path, url: str, says: str, command: tuple[str, ...]
) -> None:
    result = run_batchjob(tmp_path, url, *command)

    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("batchjob: error: database_url"), lines
    assert says in lines[0]
    assert "hunter2" not in lines[0]


# --- commands that cannot start ------------------------------------------------------------------


def test_a_command_that_cannot_start_fails_with_spawn_error_and_the_worker_goes_on(
    workers: Workers, queue: Queue, tmp_path: Path
) -> None:
    not_executable = tmp_path / "sync_profit_management.sh"
    not_executable.write_text("#!/bin/sh\necho never\n")
    not_executable.chmod(0o644)
    cannot_start = {
        "missing path": (["/nonexistent/batchjob-no-such-program"], None, "No such file"),
        "missing on PATH": (["batchjob-no-such-program-on-path"], None, "No such file"),
        "not executable": ([str(not_executable)], None, "Permission denied"),
        "a directory": ([str(tmp_path)], None, "Permission denied"),
        "missing cwd": (["true"], str(tmp_path / "gone"), "working directory"),
    }
    marker = tmp_path / "ran"
    jobs = {
        name: queue.enqueue(command, cwd=cwd, priority=10)
        for name, (command, cwd, _why) in cannot_start.items()
    }
    after = queue.enqueue(["sh", "-c", f"echo ran > {marker}"])

    assert workers.run_burst("--concurrency", "1") == 0

    for name, job in jobs.items():
        failed = queue.get(job.id)
        _command, _cwd, why = cannot_start[name]
        assert (failed.status, failed.failure_reason, failed.attempt) == (
            JobStatus.FAILED,
            FailureReason.SPAWN_ERROR,
            1,
        ), name
        explained = f"{failed.error_summary or ''} {failed.hint or ''}"
        assert why in explained, (name, explained)
        assert "could not start the command" in (failed.hint or ""), name
        assert failed.pid is None and failed.exit_code is None, name
    assert queue.get(after.id).status == JobStatus.COMPLETED
    assert marker.read_text() == "ran\n"
    log = workers.worker_log()
    for job in jobs.values():
        assert f"action=failed job_id={job.id} " in log
