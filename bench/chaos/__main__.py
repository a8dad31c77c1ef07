"""The chaos run: real workers, real faults, and an account of every job at the end.

    .venv/bin/python -m bench.chaos --database sqlite|mariadb|postgresql [--long] [--seed N]

Short form (the default, run by CI on each database): 3 workers x 5 slots, 300 jobs of
1.1-1.6 leases, at least 10 faults of each kind. Long form (--long, by hand): 8 workers x 12
slots, 20,000 jobs of 1.05-1.25 leases, 40 faults of each kind. Every job lasts
longer than the lease and appends to a ledger; meanwhile workers are SIGKILLed (and
replaced), jobs SIGKILLed, workers SIGSTOPped past their lease, the database restarted or
crashed (SQLite: write-locked by another process) and workers' networks cut. The run exits
0 only when nothing was lost, nothing ran twice at once, every interrupted attempt has an
event saying why, no job process and no unexpected descriptor is left, and the table holds
exactly the jobs enqueued. Needs root (network namespaces, the servers' own users).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.chaos import checks, ledger
from bench.chaos.faults import Injector
from bench.chaos.fleet import Fleet
from bench.chaos.network import Namespaces
from bench.chaos.servers import open_database

JOB = Path(__file__).with_name("job.py")
BATCHJOB = str(Path(sys.executable).with_name("batchjob"))
SHORT = {
    "workers": 3, "jobs": 300, "concurrency": 5, "faults": 10, "lease": 3.0, "tick": 0.1,
    "length": (1.1, 1.6), "spread": 0.6,
}  # fmt: skip
LONG = {
    "workers": 8, "jobs": 20_000, "concurrency": 12, "faults": 40, "lease": 3.0, "tick": 0.25,
    "length": (1.05, 1.25), "spread": 1.0,
}  # fmt: skip


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--database", required=True, choices=("sqlite", "mariadb", "postgresql"))
    parser.add_argument("--long", action="store_true", help="the long form (by hand)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--concurrency", type=int, help="slots per worker")
    parser.add_argument("--faults", type=int, help="faults of each kind")
    parser.add_argument("--lease", type=float, help="lease_timeout, seconds")
    parser.add_argument("--tick", type=float, help="seconds between a job's ledger records")
    parser.add_argument(
        "--length", type=float, nargs=2, metavar=("MIN", "MAX"), help="job length / lease"
    )
    parser.add_argument(
        "--spread",
        type=float,
        help="inject the faults over this share of the jobs' ideal run time (faults cost time)",
    )
    parser.add_argument("--failing-share", type=float, default=0.05)
    parser.add_argument("--time-limit", type=float, default=1800.0)
    parser.add_argument("--json", type=Path, help="write the report here too")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory")
    args = parser.parse_args(argv)
    for name, value in (LONG if args.long else SHORT).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def configure(directory: Path, args: argparse.Namespace) -> None:
    # max_lost_attempts is raised: the faults here are the fleet's, not the jobs', and the
    # poison-pill guard would otherwise fail jobs that lost their worker three times.
    (directory / "batchjob.toml").write_text(
        "[worker]\n"
        f"concurrency = {args.concurrency}\n"
        f'lease_timeout = "{args.lease}s"\n'
        'poll_interval = "0.5s"\n'
        'kill_grace = "2s"\n'
        'shutdown_grace = "10s"\n'
        "max_lost_attempts = 1000\n"
    )


def enqueue(
    rng: random.Random, url: str, directory: Path, args: argparse.Namespace
) -> tuple[set[int], float]:
    """Store the jobs; returns the ids made to fail and the jobs' total seconds."""
    from batchjob import Queue
    from batchjob.config import load_settings

    ledger_path = directory / "ledger"
    requests, failing, total = [], [], 0.0
    for _ in range(args.jobs):
        seconds = args.lease * rng.uniform(*args.length)
        fails = rng.random() < args.failing_share
        total += seconds
        failing.append(fails)
        requests.append(
            {
                "command": [
                    sys.executable, str(JOB), str(ledger_path), f"{seconds:.2f}",
                    "1" if fails else "0", str(args.tick),
                ],
                "retries": 1 if fails else 20,
                "retry_backoff": "0.2s",
            }
        )  # fmt: skip
    queue = Queue(settings=load_settings(directory / "batchjob.toml", database_url=url))
    try:
        stored = []
        for start in range(0, len(requests), 1000):
            stored.extend(queue.enqueue_many(requests[start : start + 1000]))
    finally:
        queue.close()
    return {job.id for job, fails in zip(stored, failing, strict=True) if fails}, total


def unfinished(url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            query = "SELECT COUNT(*) FROM batch_job_queue WHERE status IN ('pending', 'running')"
            return int(connection.execute(text(query)).scalar_one())
    except Exception:
        return -1  # the database is restarting: ask again
    finally:
        engine.dispose()


def wait_for_the_end(url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if unfinished(url) == 0:
            return True
        time.sleep(1.0)
    return False


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    directory = Path(tempfile.mkdtemp(prefix=f"batchjob-chaos-{args.database}-"))
    database = open_database(args.database, directory)
    network: Namespaces | None = None
    fleet: Fleet | None = None
    injector: Injector | None = None
    url = database.url("127.0.0.1")
    try:
        if args.database != "sqlite":
            network = Namespaces(args.workers)
        configure(directory, args)
        subprocess.run(
            [BATCHJOB, "init"],
            cwd=directory,
            env={"BATCH_JOB_DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
            check=True,
            capture_output=True,
        )
        designed_to_fail, job_seconds = enqueue(rng, url, directory, args)
        began = time.time()
        fleet = Fleet(
            args.workers,
            directory,
            BATCHJOB,
            url=lambda index: database.url(network.host_address(index) if network else ""),
            prefix=lambda index: network.prefix(index) if network else [],
        )
        expected = job_seconds / (args.workers * args.concurrency)
        kinds = 5 if network else 4
        injector = Injector(
            rng,
            fleet,
            database,
            network,
            quota=args.faults,
            mean_gap=expected * args.spread / (kinds * max(args.faults, 1)),
            lease_timeout=args.lease,
        )
        injector.start()
        deadline = time.monotonic() + args.time_limit
        wait_for_the_end(url, deadline)
        injector.finish()
        finished = wait_for_the_end(url, deadline)
        duration = time.time() - began

        time.sleep(1.0)  # let the last finishes settle before looking at descriptors
        control_log = directory / "logs" / "control"
        control = fleet.control(control_log)
        try:  # a fresh worker beside the fleet, which the fleet's own ending does not stop
            time.sleep(3.0)
            control_fds = checks.descriptors(control.pid, control_log)
            first_look = [
                checks.descriptors(slot.pid, fleet.log_dir(slot.index)) for slot in fleet.slots
            ]
            time.sleep(2.0)  # what is held in both looks is held, not just being opened or closed
            unexpected = {
                f"slot {slot.index} pid {slot.pid}": [*found, *checks.sockets(slot.pid)]
                for slot, first in zip(fleet.slots, first_look, strict=True)
                if (
                    found := checks.unexpected_descriptors(
                        first & checks.descriptors(slot.pid, fleet.log_dir(slot.index)),
                        control_fds,
                        database.file,
                    )
                )
            }
            # After both looks: a worker that ended between them has no descriptors to show.
            gone = checks.workers_gone(fleet)
        finally:
            control.terminate()
            control.wait(30)
        exit_codes = fleet.terminate()
        time.sleep(0.5)
        leftovers = checks.leftover_processes(fleet)

        jobs, events, rows = checks.database_state(url)
        runs = ledger.read(directory / "ledger")
        lost = checks.lost_jobs(jobs, designed_to_fail)
        duplicates = ledger.concurrent_duplicates(runs)
        repeated = ledger.repeated_attempts(runs)
        unexplained = checks.unexplained_interruptions(runs, events)
        orphaned = ledger.orphans(runs, injector.faults)
        ended = Counter(
            run.job_id for run in runs if run.ended and run.job_id not in designed_to_fail
        )
        report: dict[str, Any] = {
            "database": args.database,
            "seed": args.seed,
            "workers": args.workers,
            "jobs": args.jobs,
            "slots_per_worker": args.concurrency,
            "lease_timeout_seconds": args.lease,
            "finished_in_time": finished,
            "duration_seconds": round(duration, 1),
            "faults": {kind: injector.count(kind) for kind in injector.kinds},
            "fault_errors": injector.errors,
            "fault_log": [vars(fault) for fault in injector.faults],
            "lost": len(lost),
            "concurrent_duplicates": len(duplicates),
            "repeated_attempts": len(repeated),
            "interrupted_without_event": len(unexplained),
            "leftover_processes": len(leftovers),
            "unexpected_fds": len(unexpected),
            "workers_gone": len(gone),
            "rows": rows,
            "worker_exit_codes": sorted(Counter(map(str, exit_codes.values())).items()),
            "runs": len(runs),
            "interrupted_runs": sum(1 for run in runs if not run.ended),
            "rescued_events": sum(1 for event in events if event["kind"] == "rescued"),
            "jobs_run_to_their_end_more_than_once": sum(1 for count in ended.values() if count > 1),
            "rescued_after_seconds": ledger.delays(orphaned, checks.rescues(events)),
            "running_again_after_seconds": ledger.delays(orphaned, ledger.starts(runs)),
            "details": {
                "lost": lost[:20],
                "concurrent_duplicates": duplicates[:20],
                "repeated_attempts": repeated[:20],
                "interrupted_without_event": unexplained[:20],
                "leftover_processes": leftovers[:20],
                "unexpected_fds": unexpected,
                "workers_gone": gone,
            },
        }
        report["ok"] = (
            finished
            and not lost
            and not duplicates
            and not repeated
            and not unexplained
            and not leftovers
            and not unexpected
            and not gone
            and rows == args.jobs
            and not injector.errors
            and all(count >= args.faults for count in report["faults"].values())
            and set(exit_codes.values()) == {0}
        )
        return report
    finally:
        if injector is not None:
            injector.finish()
        if fleet is not None:
            fleet.terminate(timeout=10)
        if network is not None:
            network.close()
        database.close()
        if args.keep:
            print(f"kept {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)


def figures(delays: dict[str, dict[str, float | int]]) -> str:
    return ", ".join(
        f"{kind} median {values['median_seconds']}s max {values['max_seconds']}s "
        f"({values['jobs']} jobs)"
        for kind, values in delays.items()
    )


def summary(report: dict[str, Any]) -> str:
    lines = [
        f"chaos on {report['database']} (seed {report['seed']}): {report['workers']} workers x "
        f"{report['slots_per_worker']} slots, {report['jobs']} jobs, lease "
        f"{report['lease_timeout_seconds']}s, {report['duration_seconds']}s",
        "faults: " + ", ".join(f"{kind} {count}" for kind, count in report["faults"].items()),
        f"lost: {report['lost']}",
        f"concurrent duplicates: {report['concurrent_duplicates']}",
        f"attempts started twice: {report['repeated_attempts']}",
        f"interrupted attempts without an event: {report['interrupted_without_event']} "
        f"(of {report['interrupted_runs']} interrupted; {report['rescued_events']} rescued "
        "events)",
        f"leftover processes: {report['leftover_processes']}",
        f"workers holding unexpected fds: {report['unexpected_fds']}",
        f"workers gone before the end: {report['workers_gone']}",
        f"rows: {report['rows']} (enqueued {report['jobs']})",
        f"worker exit codes at SIGTERM: {report['worker_exit_codes']}",
        f"jobs run to their end more than once: {report['jobs_run_to_their_end_more_than_once']}",
        "orphaned jobs rescued after: " + (figures(report["rescued_after_seconds"]) or "n/a"),
        "orphaned jobs running again after: "
        + (figures(report["running_again_after_seconds"]) or "n/a"),
    ]
    for name, found in report["details"].items():
        if found:
            lines.append(f"{name}: {found}")
    if report["fault_errors"]:
        lines.append(f"faults that could not be made: {report['fault_errors']}")
    lines.append("OK" if report["ok"] else "FAILED")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    report = run(args)
    print(summary(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
