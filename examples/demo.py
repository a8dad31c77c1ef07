"""`make demo`: batchjob on the embedded SQLite default, with a worker running example jobs.

Runs in ./demo (created afresh), with a batchjob.toml declaring the example task, and drives
the real `batchjob` command as a user would: init, enqueue, a burst worker, list, logs.
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
command = [{PYTHON}, {SCRIPT}]
queue = "sync"
timeout = "2h"
retries = 0
retry_backoff = "30s"
concurrency_key = "profit-sync"
max_concurrency = 1
env = {{ HUBSPOT_TIMEOUT = "30" }}
"""


def batchjob(*args: str) -> str:
    print(f"$ batchjob {shlex.join(args)}", flush=True)
    done = subprocess.run([BATCHJOB, *args], cwd=DEMO, check=True, capture_output=True, text=True)
    print(done.stdout + done.stderr, end="", flush=True)
    return done.stdout.strip()


# Writes 10 MB to stderr before anything else: a runner that reads stdout to the end before
# stderr (or calls wait() with both pipes unread) deadlocks here.
FLOOD = "import sys; sys.stderr.write('x' * 10_000_000); print('done after 10 MB on stderr')"
# Fails the way a real sync does, with a clear message on stderr.
BROKEN = "import sys; sys.exit('HubSpot API: 401 Unauthorized (check HUBSPOT_TOKEN)')"


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    (DEMO / "batchjob.toml").write_text(CONFIG, encoding="utf-8")
    batchjob("init")
    ids = [
        batchjob("enqueue", "sync_profit_management", "--tag", "demo"),
        batchjob("enqueue", "--queue", "reports", "--", sys.executable, "-c", FLOOD),
        batchjob("enqueue", "--", sys.executable, "-c", BROKEN),
    ]
    batchjob("enqueue", "--delay", "10m", "--tag", "later", "--", "sh", "-c", "echo tidy up")
    batchjob("worker", "--burst")
    batchjob("list")
    print("\nWhere each job's log is:")
    for job_id in ids:
        print(f"  job {job_id}: {DEMO / 'logs' / 'jobs' / f'{job_id}.log'}")
    print("Look around: cd demo && ../.venv/bin/batchjob show 3")


if __name__ == "__main__":
    main()
