"""`make demo`: set up batchjob with the embedded SQLite default and put example jobs in it.

Runs in ./demo (created), with a batchjob.toml declaring the example task, and drives the
real `batchjob` command as a user would.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
DEMO = EXAMPLES.parent / "demo"
BATCHJOB = shutil.which("batchjob", path=str(Path(sys.executable).parent)) or "batchjob"

PYTHON = json.dumps(sys.executable)
SCRIPT = json.dumps(str(EXAMPLES / "sync_profit_management.py"))
CONFIG = f"""\
# Written by `make demo`. See SPEC.md §7 for every key.
log_dir = "logs"

[tasks.sync_profit_management]
command = [{PYTHON}, {SCRIPT}, "--only", "{{property}}"]
queue = "sync"
timeout = "2h"
retries = 3
retry_backoff = "30s"
concurrency_key = "profit-sync"
max_concurrency = 1
env = {{ HUBSPOT_TIMEOUT = "30" }}
"""


def batchjob(*args: str) -> str:
    print(f"$ batchjob {shlex.join(args)}", flush=True)
    done = subprocess.run([BATCHJOB, *args], cwd=DEMO, check=True, capture_output=True, text=True)
    print(done.stdout, end="", flush=True)
    return done.stdout.strip()


def main() -> None:
    DEMO.mkdir(exist_ok=True)
    (DEMO / "batchjob.toml").write_text(CONFIG, encoding="utf-8")
    batchjob("init")
    batchjob("enqueue", "sync_profit_management", "--param", "property=第六竹石", "--tag", "demo")
    batchjob(
        "enqueue",
        "--queue",
        "reports",
        "--priority",
        "5",
        "--",
        sys.executable,
        "-c",
        "print('monthly report')",
    )
    batchjob("enqueue", "--delay", "10m", "--tag", "later", "--", "sh", "-c", "echo tidy up")
    batchjob("list")
    batchjob("stats")
    print(f"\nThe demo's database is {DEMO / 'batchjob.db'}.")
    print("Look around: cd demo && ../.venv/bin/batchjob show 1")


if __name__ == "__main__":
    main()
