"""batchjob.toml, BATCH_JOB_* and flags become one validated Settings, or one clear error line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchjob.config import (
    MAX_ARGUMENT_BYTES,
    ScheduleSpec,
    Settings,
    TaskOptions,
    TaskSpec,
    WorkerSettings,
    load_settings,
    parse_command,
    parse_duration,
    parse_size,
    passable_text,
)
from batchjob.errors import ConfigError, UnknownTask

FULL_CONFIG = """
database_url = "mysql+pymysql://batch:secret@db/batch"
log_dir = "/var/log/batchjob"

[worker]
concurrency = 4
queues = ["sync", "default"]
poll_interval = "500ms"
lease_timeout = 45
shutdown_grace = "1m"
kill_grace = "5s"
drain_grace = 2.5
max_lost_attempts = 5
max_log_bytes = "10MiB"
env_file = "/etc/batchjob/env"

[defaults]
queue = "default"
retries = 1
env = { LANG = "ja_JP.UTF-8", SHARED = "defaults" }
tags = ["batch"]

[tasks.sync_profit_management]
command = ["python", "scripts/sync_profit_management.py"]
queue = "sync"
timeout = "2h"            # hard limit
stall_timeout = "10m"
stall_action = "diagnose"
retries = 3
retry_backoff = "30s"
concurrency_key = "profit-sync"
max_concurrency = 1
memory_limit = "2GiB"
env = { HUBSPOT_TIMEOUT = "30", PROPERTY = "第六竹石", RATIO = 1.5, PAGE = 100 }
tags = ["crm", "第六竹石"]
priority = -5
unique_key = "profit"
cwd = "/srv/app"

[tasks."report.daily"]
command = "python report.py | gzip > report.gz"
shell = true

[[schedules]]
name = "nightly-sync"
cron = "0 3 * * *"
task = "sync_profit_management"
params = { property = "第六竹石", full = true, limit = 10 }

[[schedules]]
name = "every-30-seconds"
cron = "* * * * * */30"
task = "report.daily"

[web]
token = "s3cret"
"""


def write(directory: Path, text: str | bytes, name: str = "batchjob.toml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def load(path: Path, **overrides: str) -> Settings:
    return load_settings(path, environ={}, **overrides)


def config_error(path: Path, text: str) -> str:
    """The message of the ConfigError that `text` as a config file raises; always one line."""
    write(path.parent, text, path.name)
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert message.splitlines() == [message]
    return message


# --- a valid file ----------------------------------------------------------------------------


def test_full_config_becomes_settings(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_CONFIG)

    settings = load(path)

    assert settings.config_path == path
    assert settings.database_url == "mysql+pymysql://batch:secret@db/batch"
    assert settings.log_dir == Path("/var/log/batchjob")
    assert settings.web_token == "s3cret"
    assert settings.worker == WorkerSettings(
        concurrency=4,
        queues=("sync", "default"),
        poll_interval=0.5,
        lease_timeout=45.0,
        shutdown_grace=60.0,
        kill_grace=5.0,
        drain_grace=2.5,
        max_lost_attempts=5,
        max_log_bytes=10 * 1024 * 1024,
        env_file=Path("/etc/batchjob/env"),
    )
    assert settings.defaults == TaskOptions(
        queue="default",
        retries=1,
        env={"LANG": "ja_JP.UTF-8", "SHARED": "defaults"},
        tags=("batch",),
    )
    assert list(settings.tasks) == ["sync_profit_management", "report.daily"]
    sync = settings.task("sync_profit_management")
    assert sync == TaskSpec(
        name="sync_profit_management",
        command=("python", "scripts/sync_profit_management.py"),
        options=TaskOptions(
            queue="sync",
            priority=-5,
            timeout=7200.0,
            stall_timeout=600.0,
            stall_action="diagnose",
            retries=3,
            retry_backoff=30.0,
            unique_key="profit",
            concurrency_key="profit-sync",
            max_concurrency=1,
            memory_limit=2 * 1024**3,
            env={"HUBSPOT_TIMEOUT": "30", "PROPERTY": "第六竹石", "RATIO": "1.5", "PAGE": "100"},
            cwd="/srv/app",
            tags=("crm", "第六竹石"),
        ),
    )
    assert settings.task("report.daily").command == (
        "/bin/sh",
        "-c",
        "python report.py | gzip > report.gz",
    )
    assert settings.schedules == (
        ScheduleSpec(
            name="nightly-sync",
            cron="0 3 * * *",
            task="sync_profit_management",
            params={"property": "第六竹石", "full": "true", "limit": "10"},
        ),
        ScheduleSpec(name="every-30-seconds", cron="* * * * * */30", task="report.daily"),
    )


def test_settings_are_frozen_all_the_way_down(tmp_path: Path) -> None:
    settings = load(write(tmp_path, FULL_CONFIG))
    sync = settings.task("sync_profit_management")

    with pytest.raises(TypeError):
        sync.options.env["PROPERTY"] = "other"  # type: ignore[index]
    with pytest.raises(TypeError):
        settings.tasks["new"] = sync  # type: ignore[index]
    with pytest.raises(TypeError):
        settings.schedules[0].params["x"] = "y"  # type: ignore[index]
    with pytest.raises(AttributeError):
        settings.database_url = "sqlite://"  # type: ignore[misc]


def test_options_copy_the_callers_containers() -> None:
    env = {"A": "1"}
    tags = ["x"]
    options = TaskOptions(env=env, tags=tags)  # type: ignore[arg-type]
    env["A"] = "changed"
    tags.append("y")

    assert options.env == {"A": "1"}
    assert options.tags == ("x",)


def test_empty_file_and_no_file_give_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={}) == Settings()

    empty = write(tmp_path, "", "empty.toml")
    assert load(empty) == Settings(config_path=empty)


def test_batchjob_toml_in_the_working_directory_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, 'database_url = "sqlite:///here.db"\n')
    monkeypatch.chdir(tmp_path)

    settings = load_settings(environ={})

    assert settings.database_url == "sqlite:///here.db"
    assert settings.config_path == Path("batchjob.toml")


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, '\ufeffdatabase_url = "sqlite:///bom.db"\n'.encode())
    assert load(path).database_url == "sqlite:///bom.db"


# --- precedence: argument > environment > file > default ---------------------------------------


def test_argument_beats_environment_beats_file_beats_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        'database_url = "sqlite:///file.db"\nlog_dir = "file-logs"\n[web]\ntoken = "file-token"\n',
    )
    environ = {
        "BATCH_JOB_DATABASE_URL": "sqlite:///env.db",
        "BATCH_JOB_LOG_DIR": "env-logs",
        "BATCH_JOB_WEB_TOKEN": "env-token",
    }

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # no ./batchjob.toml here
    from_defaults = load_settings(environ={})
    from_file = load_settings(path, environ={})
    from_env = load_settings(path, environ=environ)
    from_args = load_settings(
        path,
        database_url="sqlite:///arg.db",
        log_dir=tmp_path / "arg-logs",
        web_token="arg-token",
        environ=environ,
    )

    assert (from_defaults.database_url, from_defaults.log_dir, from_defaults.web_token) == (
        "sqlite:///batchjob.db",
        Path("logs"),
        None,
    )
    assert (from_file.database_url, from_file.log_dir, from_file.web_token) == (
        "sqlite:///file.db",
        Path("file-logs"),
        "file-token",
    )
    assert (from_env.database_url, from_env.log_dir, from_env.web_token) == (
        "sqlite:///env.db",
        Path("env-logs"),
        "env-token",
    )
    assert (from_args.database_url, from_args.log_dir, from_args.web_token) == (
        "sqlite:///arg.db",
        tmp_path / "arg-logs",
        "arg-token",
    )


def test_environment_overrides_defaults_without_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={"BATCH_JOB_DATABASE_URL": "postgresql://db/batch"})
    assert settings.database_url == "postgresql://db/batch"
    assert settings.config_path is None


def test_empty_environment_values_count_as_unset(tmp_path: Path) -> None:
    path = write(tmp_path, 'database_url = "sqlite:///file.db"\n[web]\ntoken = "file-token"\n')
    environ = {"BATCH_JOB_DATABASE_URL": "", "BATCH_JOB_LOG_DIR": "", "BATCH_JOB_WEB_TOKEN": ""}

    settings = load_settings(path, environ=environ)

    assert settings.database_url == "sqlite:///file.db"
    assert settings.log_dir == Path("logs")
    assert settings.web_token == "file-token"


def test_config_file_comes_from_argument_then_environment_then_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd_file = write(tmp_path, 'database_url = "sqlite:///cwd.db"\n')
    env_file = write(tmp_path, 'database_url = "sqlite:///env.db"\n', "env.toml")
    arg_file = write(tmp_path, 'database_url = "sqlite:///arg.db"\n', "arg.toml")
    monkeypatch.chdir(tmp_path)
    environ = {"BATCH_JOB_CONFIG": str(env_file)}

    assert load_settings(arg_file, environ=environ).database_url == "sqlite:///arg.db"
    assert load_settings(environ=environ).config_path == env_file
    assert load_settings(environ={"BATCH_JOB_CONFIG": ""}).config_path == Path(cwd_file.name)


@pytest.mark.parametrize("via", ["argument", "environment"])
def test_an_explicitly_named_file_must_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "")  # a ./batchjob.toml must not be used instead
    with pytest.raises(ConfigError, match=r"^conf/missing\.toml: no such configuration file$"):
        if via == "argument":
            load_settings("conf/missing.toml", environ={})
        else:
            load_settings(environ={"BATCH_JOB_CONFIG": "conf/missing.toml"})


def test_errors_name_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "[worker]\nconcurrency = 0\n", "conf/batch.toml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_settings("conf/batch.toml", environ={})
    assert str(caught.value) == "conf/batch.toml: worker.concurrency: must be at least 1, got 0"


def test_a_directory_as_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read"):
        load_settings(tmp_path, environ={})


# --- every bad value names file, dotted key and what is wrong ---------------------------------

BAD_VALUES = [
    # (file text, dotted key, part of what is wrong)
    ('database_url = ""', "database_url", "non-empty string"),
    ("database_url = 5", "database_url", "non-empty string, got 5"),
    ("log_dir = []", "log_dir", "non-empty string"),
    ("[worker]\nconcurrency = 0", "worker.concurrency", "at least 1"),
    ('[worker]\nconcurrency = "4"', "worker.concurrency", "must be an integer, got '4'"),
    ("[worker]\nconcurrency = true", "worker.concurrency", "must be an integer"),
    ("[worker]\nconcurrency = 2.0", "worker.concurrency", "must be an integer"),
    ("[worker]\nqueues = []", "worker.queues", "at least one queue"),
    ('[worker]\nqueues = ["a", ""]', "worker.queues[1]", "non-empty string"),
    ('[worker]\nqueues = ["a", 1]', "worker.queues[1]", "non-empty string, got 1"),
    ("[worker]\nqueues = 3", "worker.queues", "list of strings"),
    ("[worker]\npoll_interval = 0", "worker.poll_interval", "greater than zero"),
    ('[worker]\nlease_timeout = "0s"', "worker.lease_timeout", "greater than zero, got '0s'"),
    ('[worker]\nshutdown_grace = "soon"', "worker.shutdown_grace", "is not a duration"),
    ("[worker]\nkill_grace = -1", "worker.kill_grace", "-1 is not a duration"),
    ("[worker]\ndrain_grace = nan", "worker.drain_grace", "nan is not a duration"),
    ("[worker]\ndrain_grace = inf", "worker.drain_grace", "inf is not a duration"),
    ("[worker]\nmax_lost_attempts = 0", "worker.max_lost_attempts", "at least 1"),
    ('[worker]\nmax_log_bytes = "lots"', "worker.max_log_bytes", "'lots' is not a size"),
    ("[worker]\nmax_log_bytes = 0", "worker.max_log_bytes", "greater than zero"),
    ("[worker]\nmax_log_bytes = 1.5", "worker.max_log_bytes", "1.5 is not a size"),
    ("[worker]\nenv_file = 1", "worker.env_file", "non-empty string"),
    ("worker = 3", "worker", "must be a table, got 3"),
    ('[defaults]\npriority = "high"', "defaults.priority", "must be an integer, got 'high'"),
    ("[defaults]\npriority = 3000000000", "defaults.priority", "at most 2147483647"),
    ("[defaults]\nretries = -1", "defaults.retries", "at least 0"),
    ('[defaults]\nstall_action = "restart"', "defaults.stall_action", "'diagnose' or 'kill'"),
    ('[defaults]\ntimeout = "0"', "defaults.timeout", "greater than zero"),
    ('[defaults]\nmemory_limit = "2 GB of RAM"', "defaults.memory_limit", "is not a size"),
    ('[defaults]\ntags = "one"', "defaults.tags", "list of strings, got 'one'"),
    ("[defaults]\nenv = { DEBUG = true }", "defaults.env.DEBUG", "string or number, got True"),
    ("[defaults]\nenv = { LIST = [1] }", "defaults.env.LIST", "string or number, got [1]"),
    ("[defaults]\nenv = { T = { a = 1 } }", "defaults.env.T", "string or number"),
    ('[defaults]\nenv = { "A=B" = "x" }', 'defaults.env."A=B"', "environment variable name"),
    ('[defaults]\nenv = "A=B"', "defaults.env", "must be a table"),
    ("[defaults]\nmax_concurrency = 0", "defaults.max_concurrency", "at least 1"),
    ('[defaults]\ncwd = ""', "defaults.cwd", "non-empty string"),
    (
        '[tasks.sync]\ncommand = ["x"]\ntimeout = "2x"',
        "tasks.sync.timeout",
        "'2x' is not a duration",
    ),
    ('[tasks.sync]\ncommand = ["x"]\nretries = 1.5', "tasks.sync.retries", "must be an integer"),
    ('[tasks.sync]\nqueue = "q"', "tasks.sync.command", "required key is missing"),
    ("[tasks.sync]\ncommand = []", "tasks.sync.command", "non-empty list of strings"),
    ('[tasks.sync]\ncommand = "x"', "tasks.sync.command", "needs shell = true"),
    ('[tasks.sync]\ncommand = ["", "x"]', "tasks.sync.command[0]", "non-empty string"),
    ("[tasks.sync]\ncommand = [1]", "tasks.sync.command[0]", "must be a string, got 1"),
    ('[tasks.sync]\ncommand = ["x", 2]', "tasks.sync.command[1]", "must be a string, got 2"),
    ('[tasks.sync]\ncommand = "x"\nshell = "yes"', "tasks.sync.shell", "true or false"),
    ('[tasks.sync]\ncommand = ["x"]\nshell = true', "tasks.sync.command", "shell = true needs"),
    ('[tasks.sync]\ncommand = "  "\nshell = true', "tasks.sync.command", "non-empty string"),
    ('[tasks."bad name"]\ncommand = ["x"]', 'tasks."bad name"', "not a valid task name"),
    ("[tasks]\nsync = 1", "tasks.sync", "must be a table, got 1"),
    ('[web]\ntoken = ""', "web.token", "non-empty string"),
    ("web = []", "web", "must be a table"),
    ('[schedules]\nname = "x"', "schedules", "array of tables"),
]


@pytest.mark.parametrize(("text", "key", "what"), BAD_VALUES)
def test_bad_value_names_file_and_key(tmp_path: Path, text: str, key: str, what: str) -> None:
    path = tmp_path / "batchjob.toml"
    message = config_error(path, text + "\n")
    assert message.startswith(f"{path}: {key}: "), message
    assert what in message


def test_arguments_after_the_program_may_be_blank(tmp_path: Path) -> None:
    path = write(tmp_path, '[tasks.fmt]\ncommand = ["printf", "", " "]\n')
    assert load(path).task("fmt").command == ("printf", "", " ")


def test_string_command_without_shell_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "batchjob.toml"
    message = config_error(path, '[tasks.sync]\ncommand = "python sync.py"\n')
    assert message.startswith(f"{path}: tasks.sync.command: a string command needs shell = true")


def test_duration_error_matches_the_documented_line(tmp_path: Path) -> None:
    path = tmp_path / "batchjob.toml"
    message = config_error(path, '[tasks.sync]\ncommand = ["x"]\ntimeout = "2x"\n')
    assert message == (
        f"{path}: tasks.sync.timeout: '2x' is not a duration (use e.g. 90, 90s, 10m, 2h, 1d)"
    )


UNKNOWN_KEYS = [
    ("bogus = 1", "bogus", "database_url, log_dir, worker, defaults, tasks, schedules, web"),
    ("[worker]\nbogus = 1", "worker.bogus", "concurrency, queues, poll_interval"),
    ("[worker]\nretries = 1", "worker.retries", "max_log_bytes, env_file"),
    ("[defaults]\ncommand = []", "defaults.command", "queue, priority, timeout"),
    ('[tasks.sync]\ncommand = ["x"]\ntimeuot = 5', "tasks.sync.timeuot", "command, shell"),
    ("[web]\npassword = 'x'", "web.password", "known: token"),
    ("[[schedules]]\nevery = '1h'", "schedules[0].every", "name, cron, task, params"),
    ("[bogus]\nx = 1", "bogus", "known:"),
    ('"new\\nline" = 1', '"new\\u000aline"', "unknown key"),
]


@pytest.mark.parametrize(("text", "key", "known"), UNKNOWN_KEYS)
def test_unknown_key_is_an_error(tmp_path: Path, text: str, key: str, known: str) -> None:
    path = tmp_path / "batchjob.toml"
    message = config_error(path, text + "\n")
    assert message.startswith(f"{path}: {key}: unknown key (known: "), message
    assert known in message


def test_malformed_toml_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "batchjob.toml"
    message = config_error(path, '[worker]\nconcurrency = 2\nqueues "sync"\n')
    assert message.startswith(f"{path}: line 3, column 8: Expected '='"), message


def test_unterminated_toml_gives_one_line(tmp_path: Path) -> None:
    path = tmp_path / "batchjob.toml"
    message = config_error(path, 'database_url = "sqlite:///x.db\n')
    assert message.startswith(f"{path}: line 1, column "), message


def test_duplicate_toml_table_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "batchjob.toml"
    message = config_error(path, "[worker]\n[worker]\n")
    assert message.startswith(f"{path}: line 2, column "), message


def test_invalid_utf8_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, b'database_url = "sqlite:///\xff.db"\n')
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: not valid UTF-8")


# --- schedules --------------------------------------------------------------------------------

TASK = '[tasks.sync]\ncommand = ["python", "sync.py"]\n'


@pytest.mark.parametrize(
    ("schedule", "key", "what"),
    [
        ('name = "n"\ncron = "61 * * * *"\ntask = "sync"', "schedules[0].cron", "not a valid cron"),
        ('name = "n"\ncron = "* * * *"\ntask = "sync"', "schedules[0].cron", "not a valid cron"),
        ('name = "n"\ncron = "* * * * * * *"\ntask = "sync"', "schedules[0].cron", "5 or 6 fields"),
        ('name = "n"\ncron = 5\ntask = "sync"', "schedules[0].cron", "non-empty string"),
        ('name = "n"\ncron = "* * * * *"\ntask = "nope"', "schedules[0].task", "declared: sync"),
        ('cron = "* * * * *"\ntask = "sync"', "schedules[0].name", "required key is missing"),
        ('name = "n"\ntask = "sync"', "schedules[0].cron", "required key is missing"),
        ('name = "n"\ncron = "* * * * *"', "schedules[0].task", "required key is missing"),
        (
            'name = "n"\ncron = "* * * * *"\ntask = "sync"\nparams = { a = [1] }',
            "schedules[0].params.a",
            "string, number or boolean",
        ),
        (
            'name = "n"\ncron = "* * * * *"\ntask = "sync"\nparams = 1',
            "schedules[0].params",
            "table",
        ),
    ],
)
def test_bad_schedule_is_rejected(tmp_path: Path, schedule: str, key: str, what: str) -> None:
    path = tmp_path / "batchjob.toml"
    message = config_error(path, f"{TASK}\n[[schedules]]\n{schedule}\n")
    assert message.startswith(f"{path}: {key}: "), message
    assert what in message


def test_schedule_names_are_unique(tmp_path: Path) -> None:
    path = tmp_path / "batchjob.toml"
    entry = '[[schedules]]\nname = "n"\ncron = "* * * * *"\ntask = "sync"\n'
    message = config_error(path, f"{TASK}\n{entry}\n{entry}")
    assert message == f"{path}: schedules[1].name: 'n' is already used by schedules[0]"


def test_schedule_for_a_task_when_none_are_declared(tmp_path: Path) -> None:
    path = tmp_path / "batchjob.toml"
    message = config_error(path, '[[schedules]]\nname = "n"\ncron = "0 * * * *"\ntask = "x"\n')
    assert message.endswith("'x' is not a declared task (declared: none)")


# --- Settings.task ----------------------------------------------------------------------------


def test_unknown_task_lists_the_declared_ones(tmp_path: Path) -> None:
    settings = load(write(tmp_path, FULL_CONFIG))
    with pytest.raises(UnknownTask) as caught:
        settings.task("sync_profit")
    assert str(caught.value) == (
        "unknown task 'sync_profit'; declared: report.daily, sync_profit_management"
    )


def test_unknown_task_when_none_are_declared(tmp_path: Path) -> None:
    with pytest.raises(UnknownTask, match=r"^no tasks are declared in batchjob\.toml$"):
        Settings().task("sync")
    path = write(tmp_path, "", "other.toml")
    with pytest.raises(UnknownTask, match=r"other\.toml$"):
        load(path).task("sync")


# --- TaskOptions.merged_over ------------------------------------------------------------------


def test_merged_over_prefers_set_options_and_merges_env() -> None:
    defaults = TaskOptions(
        queue="default",
        retries=1,
        timeout=60.0,
        env={"LANG": "C.UTF-8", "SHARED": "defaults"},
        tags=("batch",),
    )
    task = TaskOptions(queue="sync", retries=0, env={"SHARED": "task", "TASK": "1"})

    merged = task.merged_over(defaults)

    assert merged == TaskOptions(
        queue="sync",
        retries=0,  # a set zero still wins
        timeout=60.0,
        env={"LANG": "C.UTF-8", "SHARED": "task", "TASK": "1"},
        tags=("batch",),
    )
    assert TaskOptions(tags=("mine",)).merged_over(defaults).tags == ("mine",)
    assert TaskOptions().merged_over(defaults) == defaults
    assert defaults.merged_over(TaskOptions()) == defaults
    # the inputs are unchanged
    assert task.env == {"SHARED": "task", "TASK": "1"}
    assert defaults.env == {"LANG": "C.UTF-8", "SHARED": "defaults"}


def test_merged_over_layers_job_over_task_over_defaults(tmp_path: Path) -> None:
    settings = load(write(tmp_path, FULL_CONFIG))
    job = TaskOptions(priority=10, env={"PROPERTY": "第七"})

    effective = job.merged_over(
        settings.task("sync_profit_management").options.merged_over(settings.defaults)
    )

    assert effective.priority == 10
    assert effective.queue == "sync"
    assert effective.retries == 3
    assert effective.env["PROPERTY"] == "第七"
    assert effective.env["LANG"] == "ja_JP.UTF-8"
    assert effective.tags == ("crm", "第六竹石")


# --- parse_duration / parse_size -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        (0, 0.0),
        ("90", 90.0),
        ("90s", 90.0),
        ("1.5s", 1.5),
        ("500ms", 0.5),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s5ms", 93784.005),
        ("1h 30m", 5400.0),
        ("  10M ", 600.0),
        ("2H", 7200.0),
        ("1.1h", 3960.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    [True, False, -1, -0.5, math.nan, math.inf, "", "  ", "2x", "-5s", "1e3", "s", "h1", "1h-30m",
     ".5s", "1.s", "1,5s", "10 minutes", "١٢s", None, [90], {"s": 1}, 10**400, "9" * 500 + "d"],
)  # fmt: skip
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(value, key="tasks.sync.timeout")
    message = str(caught.value)
    assert message.startswith("tasks.sync.timeout: ")
    assert message.endswith(" is not a duration (use e.g. 90, 90s, 10m, 2h, 1d)")
    assert len(message) < 200


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1024, 1024),
        ("1024", 1024),
        ("512B", 512),
        ("10KB", 10_000),
        ("10MB", 10_000_000),
        ("2GB", 2_000_000_000),
        ("1TB", 10**12),
        ("10KiB", 10 * 1024),
        ("100MiB", 100 * 1024**2),
        ("2GiB", 2 * 1024**3),
        ("1TiB", 1024**4),
        ("1.5GiB", 1024**3 * 3 // 2),
        ("10 mib", 10 * 1024**2),
        (" 2 GB ", 2_000_000_000),
    ],
)
def test_parse_size_accepts(value: object, size: int) -> None:
    result = parse_size(value)
    assert result == size
    assert type(result) is int


@pytest.mark.parametrize(
    "value",
    [True, -1, 1.5, "", "lots", "-1KB", "10K", "10 kibibytes", "1e3", "2PB", None, [1]],
)
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^memory_limit: .* is not a size \(use e\.g\. "):
        parse_size(value, key="memory_limit")


@given(st.integers(min_value=0, max_value=10**12))
def test_whole_seconds_and_minutes(n: int) -> None:
    assert parse_duration(f"{n}s") == n
    assert parse_duration(f"{n}m") == 60 * n
    assert parse_duration(n) == n


@given(st.integers(min_value=0, max_value=10**15))
def test_kibibytes(n: int) -> None:
    assert parse_size(f"{n}KiB") == 1024 * n
    assert parse_size(f"{n} kb") == 1000 * n


@given(st.text())
def test_parse_duration_of_any_text_is_a_duration_or_a_config_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        assert str(exc).splitlines() == [str(exc)]
    else:
        assert math.isfinite(seconds)
        assert seconds >= 0


@given(st.text())
def test_parse_size_of_any_text_is_a_size_or_a_config_error(text: str) -> None:
    try:
        size = parse_size(text)
    except ConfigError as exc:
        assert str(exc).splitlines() == [str(exc)]
    else:
        assert isinstance(size, int)
        assert size >= 0


@given(st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,3})?(ms|s|m|h|d)", fullmatch=True))
def test_generated_durations_are_accepted(text: str) -> None:
    assert parse_duration(text) >= 0


argument = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=12),
    st.sampled_from(["", " ", "\0", "a\0b", "第六竹石", "\ud800", "x" * MAX_ARGUMENT_BYTES]),
    st.sampled_from(["x" * (MAX_ARGUMENT_BYTES + 1), "第" * (MAX_ARGUMENT_BYTES // 3 + 1)]),
)


@settings(max_examples=300)
@given(st.lists(argument, min_size=1, max_size=4))
def test_a_command_is_taken_exactly_when_each_argument_is(argv: list[str]) -> None:
    """The whole-argv check that bulk enqueues take first accepts nothing an argument's own
    check refuses, and a refusal still names the first argument refused."""
    refused = []
    for index, item in enumerate(argv):
        try:
            passable_text(item, "key")
        except ConfigError:
            refused.append(index)
    try:
        parsed = parse_command(argv)
    except ConfigError as exc:
        assert refused or not argv[0].strip()
        assert f"command[{refused[0] if refused else 0}]" in str(exc)
    else:
        assert not refused and parsed == tuple(argv)
