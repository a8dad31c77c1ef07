"""Peer job queues side by side on this machine, each against a bare baseline of the same run.

    bench/peers/setup.sh      # once: bench/peers/.venv with the peers pinned
    bench/peers/.venv/bin/python bench/peers/run.py [--peers dramatiq,rq] [--jobs 200]
                                                    [--json results.json]

Each peer runs with 2 worker slots, its worker started through its own CLI as a subprocess
(the `slots` line of each peer module says how the slots are made and why). Per peer:

- jobs/s of N pre-enqueued jobs whose task body runs `python3 -c pass` (then `/bin/true`)
  with subprocess.run. Rate = (N - 1) / (last completion - first completion), read from the
  records the task bodies write, so worker start-up is not counted; the baseline, a bare loop
  of subprocess.run in multiprocessing.Pool(2) writing the same records, is measured the same
  way right before each peer's run, and the ratio is to that baseline. With `--rounds R` the
  N jobs are shared among R turns of the two, each turn's ratio is to its own baseline, and
  each figure is the median of the turns (the JSON holds every turn). The JSON also holds
  N / (last completion - worker start), `jobs_per_s_from_start`.
- enqueue rate one by one (2,000 jobs, one client, connection opened before timing) and with
  the peer's bulk API where it has one (20,000 jobs in one call); no worker runs meanwhile.
- enqueue-to-start latency, p50/p95, of 50 jobs enqueued 0.1 s apart to an idle worker: the
  task body's time.time() at start minus time.time() just before the enqueue call.
- idle worker RSS: summed over the worker's process tree after one warm-up job and 2 s idle
  (PSS, which counts pages shared by a fork tree once, is in the JSON too).

200 `/bin/true` jobs take well under a second, so one scheduling hiccup moves that ratio:
take final figures with `--jobs 2000 --rounds 3`, as `make bench` does.

Stores: Redis db 9 (flushed before and after), a PostgreSQL database `bench_peers` (created
and dropped by this run), Huey's SQLite file in a scratch directory. Every worker is killed
at the end, even on error, and the run checks that none of its processes is left.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import common
from common import HERE, TAG_VARIABLE, JobSpec, Peer, WorkerProcess, read_records

#: name -> (module, class); the module is imported only when its peer is measured.
PEERS: dict[str, tuple[str, str]] = {
    "dramatiq": ("dramatiq_peer", "DramatiqPeer"),
    "huey": ("huey_peer", "HueyPeer"),
    "celery": ("celery_peer", "CeleryPeer"),
    "rq": ("rq_peer", "RqPeer"),
    "rq-simple": ("rq_peer", "RqSimplePeer"),
    "procrastinate": ("procrastinate_peer", "ProcrastinatePeer"),
    "pgqueuer": ("pgqueuer_peer", "PgqueuerPeer"),
    "batchjob-sqlite": ("batchjob_peer", "BatchjobSqlitePeer"),
    "batchjob-mariadb": ("batchjob_peer", "BatchjobMariadbPeer"),
    "batchjob-postgresql": ("batchjob_peer", "BatchjobPostgresqlPeer"),
    "floor-sqlite": ("floor_peer", "FloorSqlitePeer"),
    "floor-mariadb": ("floor_peer", "FloorMariadbPeer"),
    "floor-postgresql": ("floor_peer", "FloorPostgresqlPeer"),
}
#: The issue's targets for batchjob on each store: (figure, sense, target). The run prints
#: each beside the same figure of that store's floor, the contract written the shortest way:
#: where the floor misses a target too, the machine, not batchjob's code, sets the figure.
TARGETS: dict[str, tuple[tuple[str, str, float], ...]] = {
    store: (
        ("python_ratio", ">=", 0.85),
        ("true_ratio", ">=", 0.5 if store == "sqlite" else 0.35),
        *((("enqueue_per_s", ">=", 3000), ("enqueue_bulk_per_s", ">=", 50_000))
          if store == "sqlite" else ()),
        ("latency_p50_ms", "<=", 50 if store == "mariadb" else 4),
        ("latency_p95_ms", "<=", 120 if store == "mariadb" else 10),
        ("worker_rss_mib", "<=", 45e6 / 2**20),  # 45 MB
    )
    for store in ("sqlite", "mariadb", "postgresql")
}  # fmt: skip
PYTHON_PASS = [sys._base_executable, "-c", "pass"]  # the interpreter itself, not a pyenv shim
BIN_TRUE = ["/bin/true"]
SETTLE_SECONDS = 2.0
#: What the machine gives this hour, read at the run's start and end: a Python loop's
#: seconds (0.14 to 0.65 s here within a day) and the time to create an empty file where
#: the workers' logs go (ext4 without a journal skips recently freed inodes one by one: 16 µs
#: to 1 ms a file here): docs/benchmarks-history.md, the twenty-seventh round.
LOOP_STEPS = 10_000_000
FILES_CREATED = 200


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine_reading(directory: Path) -> dict[str, float]:
    """The loop's seconds, and µs to create a file in `directory`, made here. The files stay
    until the scratch directory goes: removing them would slow the creations after them."""
    started = time.perf_counter()
    step = 0
    while step < LOOP_STEPS:
        step += 1
    loop_seconds = time.perf_counter() - started
    directory.mkdir()
    started = time.perf_counter()
    for index in range(FILES_CREATED):
        os.close(os.open(directory / str(index), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    create_us = (time.perf_counter() - started) / FILES_CREATED * 1e6
    return {"python_loop_seconds": loop_seconds, "file_create_us": create_us}


def describe_machine(reading: dict[str, float]) -> str:
    return (
        f"a {LOOP_STEPS:,}-step Python loop {reading['python_loop_seconds']:.3f}s,"
        f" a file created in {reading['file_create_us']:.0f} µs"
    )


# The bare baseline ---------------------------------------------------------------------------


def _bare_loop(marker: str, indexes: range, command: list[str]) -> None:
    for index in indexes:
        common.run_job(marker, index, command)


def bare_rate(command: list[str], jobs: int, marker: Path) -> dict[str, float]:
    """subprocess.run in multiprocessing.Pool(2), through the same task body as the peers.

    The pool spawns its processes: forked from this one, which by then holds a peer's client
    threads (psycopg_pool's), a child hung on a lock inherited from them.
    """
    half = jobs // 2
    started = time.time()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.starmap_async(
            _bare_loop,
            [(str(marker), range(half), command), (str(marker), range(half, jobs), command)],
        ).get(timeout=60 + jobs * 0.25)
    return rates(read_records(marker), jobs, started)


def rates(records: list[common.Record], jobs: int, started: float) -> dict[str, float]:
    ends = sorted(record.ended for record in records)
    return {
        "jobs_per_s": (jobs - 1) / (ends[-1] - ends[0]),
        "jobs_per_s_from_start": jobs / (ends[-1] - started),
        "most_at_once": most_at_once(records),
    }


def most_at_once(records: list[common.Record]) -> int:
    """The most task bodies running at one time: 2 slots should never show more than 2."""
    events = sorted([(r.started, 1) for r in records] + [(r.ended, -1) for r in records])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


# One peer --------------------------------------------------------------------------------------


class Bench:
    """The settings of one run and what it started, so that everything can be undone."""

    def __init__(self, args: argparse.Namespace, scratch: Path, tag: str) -> None:
        self.args = args
        self.scratch = scratch
        self.tag = tag
        self.peers = set(peer_names(args.peers))

    def worker(self, peer: Peer, label: str) -> WorkerProcess:
        """The peer's worker in a service's environment, as `bench.suite` starts batchjob's:
        this run's PATH and BENCH_* settings, then the peer's own. Not the rest of the
        caller's: a shell here holds 39 variables, which batchjob (and its floor), as their
        contract says, hand to every job, each a cost a job (about 6 % of batchjob's
        `/bin/true` jobs/s on SQLite) that a worker under systemd does not pay."""
        env = {
            name: value
            for name, value in os.environ.items()
            if name == "PATH" or name.startswith("BENCH_")
        }
        env.update(peer.worker_env())
        env["PYTHONPATH"] = str(HERE)
        env[TAG_VARIABLE] = self.tag
        return WorkerProcess(
            peer.name, peer.worker_argvs(), env, self.scratch / f"{peer.name}-{label}.log"
        )

    def wait(
        self, peer: Peer, marker: Path, count: int, worker: WorkerProcess, timeout: float
    ) -> list[common.Record]:
        deadline = time.monotonic() + timeout
        while True:
            records = peer.records(marker)
            if len(records) >= count:
                return records
            worker.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(records)}/{count} jobs done after {timeout:.0f}s;"
                    f" worker log: {worker.log_tail()}"
                )
            time.sleep(0.02)

    def enqueue_one_by_one(self, peer: Peer) -> float:
        marker = str(self.scratch / "never-run")
        jobs = [JobSpec(marker, index, BIN_TRUE) for index in range(self.args.enqueue_jobs)]
        peer.reset()
        peer.enqueue(JobSpec(marker, -1, BIN_TRUE))  # connect outside the timing
        started = time.perf_counter()
        for job in jobs:
            peer.enqueue(job)
        elapsed = time.perf_counter() - started
        peer.reset()
        return len(jobs) / elapsed

    def enqueue_bulk(self, peer: Peer) -> float:
        marker = str(self.scratch / "never-run")
        jobs = [JobSpec(marker, index, BIN_TRUE) for index in range(self.args.bulk_jobs)]
        peer.reset()
        peer.enqueue(JobSpec(marker, -1, BIN_TRUE))
        started = time.perf_counter()
        peer.enqueue_bulk(jobs)
        elapsed = time.perf_counter() - started
        peer.reset()
        return len(jobs) / elapsed

    def in_turns(
        self, peer: Peer, label: str, command: list[str], partner: Peer | None = None
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
        """The bare loop and the peer in turns, `--rounds` of each, sharing `--jobs`: each
        round's ratio is to the bare round right before it, and each figure is the median of
        its rounds. The bare loop here moved by a quarter within a minute, so a single pair
        of runs read a ratio that moved more than the code did.

        `partner` (batchjob's floor) runs the same jobs in each turn too, right before or
        after the peer in turn: the peer's jobs/s over the partner's, turn by turn, compares
        the two in the same minute (measured minutes apart in one `make bench`, the bare
        turns before MariaDB's floor ran 1,916 `/bin/true` jobs/s, before batchjob 2,806).
        Returns the bare loop's, the peer's and the partner's figures (None without one)."""
        count = self.args.jobs // self.args.rounds
        bare_rounds, peer_rounds, partner_rounds = [], [], []
        for turn in range(self.args.rounds):
            marker = self.scratch / f"{peer.name}-{label}-{turn}-bare.records"
            bare_rounds.append(bare_rate(command, count, marker))
            bare = bare_rounds[-1]["jobs_per_s"]
            order = [(peer, peer_rounds), (partner, partner_rounds)]
            if turn % 2 == 0:
                order.reverse()  # the partner first in every other turn
            for who, rounds in order:
                if who is not None:
                    rounds.append(self.throughput(who, f"{label}-{turn}", command, count))
                    rounds[-1]["ratio"] = rounds[-1]["jobs_per_s"] / bare
        if not partner_rounds:
            return _medians(bare_rounds), _medians(peer_rounds), None
        for ours, theirs in zip(peer_rounds, partner_rounds, strict=True):
            ours["over_partner"] = ours["jobs_per_s"] / theirs["jobs_per_s"]
        return _medians(bare_rounds), _medians(peer_rounds), _medians(partner_rounds)

    def throughput(
        self, peer: Peer, label: str, command: list[str], count: int
    ) -> dict[str, float]:
        """`count` jobs enqueued first, then the worker started; rates from their records."""
        marker = self.scratch / f"{peer.name}-{label}.records"
        jobs = [JobSpec(str(marker), index, command) for index in range(count)]
        peer.reset()
        if peer.has_bulk:
            peer.enqueue_bulk(jobs)
        else:
            for job in jobs:
                peer.enqueue(job)
        worker = self.worker(peer, label)
        worker.start()
        try:
            records = self.wait(peer, marker, count, worker, timeout=60 + count * 0.25)
        finally:
            worker.stop()
        peer.reset()
        if sorted(record.index for record in records) != list(range(count)):
            raise RuntimeError(f"jobs ran other than once each: {len(records)} records")
        return rates(records, count, worker.started_at)

    def idle(self, peer: Peer) -> dict[str, float | None]:
        """Idle RSS after one warm-up job, then start latency of jobs sent 0.1 s apart."""
        marker = self.scratch / f"{peer.name}-latency.records"
        peer.reset()
        worker = self.worker(peer, "idle")
        worker.start()
        sent: dict[int, float] = {}
        try:
            peer.enqueue(JobSpec(str(marker), -1, []))
            self.wait(peer, marker, 1, worker, timeout=60)
            time.sleep(SETTLE_SECONDS)
            pids = worker.pids()
            rss_kib, pss_kib = common.memory_kib(pids)
            worker_rss_kib, _ = common.memory_kib([worker.processes[0].pid])
            gap = self.args.latency_gap
            first = time.monotonic()
            for index in range(self.args.latency_jobs):
                sent[index] = time.time()
                peer.enqueue(JobSpec(str(marker), index, []))
                time.sleep(max(0.0, first + (index + 1) * gap - time.monotonic()))
            records = self.wait(peer, marker, self.args.latency_jobs + 1, worker, timeout=60)
        finally:
            worker.stop()
        peer.reset()
        latencies = sorted(
            (record.started - sent[record.index]) * 1000 for record in records if record.index >= 0
        )
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        return {
            "idle_rss_mib": rss_kib / 1024,
            "idle_pss_mib": None if pss_kib is None else pss_kib / 1024,
            "idle_processes": len(pids),
            "worker_rss_mib": worker_rss_kib / 1024,
            "latency_p50_ms": statistics.median(latencies),
            "latency_p95_ms": cuts[94],
            "latency_max_ms": latencies[-1],
        }

    def measure(self, name: str, unavailable: dict[str, str]) -> dict[str, Any]:
        """One peer's row; a failure becomes an error in the row, never a crash of the run."""
        row: dict[str, Any] = {"peer": name, "errors": {}}
        try:
            peer = make_peer(name)
            row.update(
                version=importlib.metadata.version(peer.package),
                broker=peer.broker,
                slots=peer.slots,
                worker_argvs=[[Path(a[0]).name, *a[1:]] for a in peer.worker_argvs()],
            )
            if peer.broker in unavailable:
                raise RuntimeError(unavailable[peer.broker])
            peer.setup()
        except Exception as error:
            row["error"] = describe(error)
            return row
        try:
            self.run_workloads(peer, row)
        finally:
            with contextlib.suppress(Exception):
                peer.reset()
            with contextlib.suppress(Exception):
                peer.close()
        return row

    @contextlib.contextmanager
    def floor_beside(self, peer: Peer) -> Iterator[Peer | None]:
        """batchjob's floor on the peer's store, for the throughput turns of a batchjob peer
        when the run measures that floor too (None otherwise): the proposed target for
        `/bin/true` jobs is batchjob's jobs/s over its floor's, and for python jobs the two
        side by side say whether a low ratio to the bare loop is batchjob's or the hour's."""
        floor_name = peer.name.replace("batchjob-", "floor-", 1)
        if floor_name == peer.name or floor_name not in self.peers:
            yield None
            return
        floor = make_peer(floor_name)
        floor.setup()
        try:
            yield floor
        finally:
            with contextlib.suppress(Exception):
                floor.reset()
            floor.close()

    def run_workloads(self, peer: Peer, row: dict[str, Any]) -> None:
        name = peer.name
        with step(row, "enqueue_one_by_one"):
            row["enqueue_per_s"] = self.enqueue_one_by_one(peer)
            log(f"{name}: enqueue one by one {row['enqueue_per_s']:,.0f}/s")
        if peer.has_bulk:
            with step(row, "enqueue_bulk"):
                row["enqueue_bulk_per_s"] = self.enqueue_bulk(peer)
                log(f"{name}: enqueue in bulk {row['enqueue_bulk_per_s']:,.0f}/s")
        for label, command in (("python", PYTHON_PASS), ("true", BIN_TRUE)):
            with step(row, label), self.floor_beside(peer) as floor:
                row[f"{label}_baseline"], row[label], paired = self.in_turns(
                    peer, label, command, floor
                )
                if paired is not None:
                    row[f"{label}_floor_in_turns"] = paired
                log(f"{name}: {label} {row[label]}")
        with step(row, "idle"):
            row.update(self.idle(peer))
            log(
                f"{name}: idle RSS {row['idle_rss_mib']:.0f} MiB,"
                f" latency p50 {row['latency_p50_ms']:.1f} ms"
            )


def _medians(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """Each figure's median over the rounds (the most at once: the most of any), and the
    rounds themselves."""
    figures: dict[str, Any] = {
        key: statistics.median(one[key] for one in rounds)
        for key in rounds[0]
        if key != "most_at_once"
    }
    figures["most_at_once"] = max(one["most_at_once"] for one in rounds)
    figures["rounds"] = rounds
    return figures


def make_peer(name: str) -> Peer:
    module_name, class_name = PEERS[name]
    peer: Peer = getattr(importlib.import_module(module_name), class_name)()
    return peer


def peer_names(listed: str) -> list[str]:
    return [name.strip() for name in listed.split(",") if name.strip()]


def describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text if len(text) <= 400 else text[:397] + "..."


@contextlib.contextmanager
def step(row: dict[str, Any], key: str) -> Iterator[None]:
    """A workload that fails is noted in its peer's row, and the next workload runs."""
    try:
        yield
    except Exception as error:
        row["errors"][key] = describe(error)
        log(f"{row['peer']}: {key} failed: {row['errors'][key]}")


# Stores and cleanup ------------------------------------------------------------------------------


def prepare_stores(args: argparse.Namespace) -> dict[str, str]:
    """Flush Redis db 9 and create the PostgreSQL database; what is unreachable, and why."""
    unavailable: dict[str, str] = {}
    try:
        common.flush_redis()
    except Exception as error:
        unavailable["redis"] = f"Redis unreachable: {describe(error)}"
    try:
        import psycopg

        with psycopg.connect(args.pg_admin_dsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{args.pg_database}" WITH (FORCE)')
            connection.execute(f'CREATE DATABASE "{args.pg_database}"')
    except Exception as error:
        unavailable["postgresql"] = f"PostgreSQL unavailable: {describe(error)}"
    return unavailable


def clean_stores(args: argparse.Namespace, unavailable: dict[str, str]) -> list[str]:
    """Empty what `prepare_stores` made; a Redis it could not reach (or whose client this
    virtualenv lacks, as `make bench`'s, which runs batchjob alone) was not used."""
    problems = []
    try:
        if "redis" not in unavailable:
            common.flush_redis()
    except Exception as error:
        problems.append(f"flush redis: {describe(error)}")
    try:
        import psycopg

        with psycopg.connect(args.pg_admin_dsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{args.pg_database}" WITH (FORCE)')
    except Exception as error:
        problems.append(f"drop database: {describe(error)}")
    return problems


def stop_everything(tag: str) -> list[int]:
    """Stop the workers still running (after an error), then kill anything left with the tag."""
    for worker in list(common.RUNNING):
        worker.stop(grace=5)
    return common.kill_tagged(tag)


# Output ----------------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    def number(value: float | None, digits: int = 0) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    def throughput(row: dict[str, Any], label: str) -> tuple[str, str]:
        figure = row.get(label) or {}
        return number(figure.get("jobs_per_s"), 1), number(figure.get("ratio"), 2)

    headers = [
        "peer",
        "version",
        "store",
        "py jobs/s",
        "x bare",
        "true jobs/s",
        "x bare",
        "enq 1x1/s",
        "enq bulk/s",
        "p50 ms",
        "p95 ms",
        "RSS MiB",
    ]
    lines = [headers]
    python_bare = [r["python_baseline"]["jobs_per_s"] for r in rows if r.get("python_baseline")]
    true_bare = [r["true_baseline"]["jobs_per_s"] for r in rows if r.get("true_baseline")]
    lines.append(
        [
            "bare Pool(2)",
            "",
            "",
            number(statistics.median(python_bare), 1) if python_bare else "-",
            "1.00",
            number(statistics.median(true_bare), 1) if true_bare else "-",
            "1.00",
            "",
            "",
            "",
            "",
            "",
        ]
    )
    for row in rows:
        if "error" in row:
            lines.append([row["peer"], row.get("version", ""), row.get("broker", ""), "ERROR"])
            continue
        lines.append(
            [
                row["peer"],
                row["version"],
                row["broker"],
                *throughput(row, "python"),
                *throughput(row, "true"),
                number(row.get("enqueue_per_s")),
                number(row.get("enqueue_bulk_per_s")) if "enqueue_bulk_per_s" in row else "n/a",
                number(row.get("latency_p50_ms"), 1),
                number(row.get("latency_p95_ms"), 1),
                number(row.get("idle_rss_mib")),
            ]
        )
    widths = [max(len(line[i]) for line in lines if i < len(line)) for i in range(len(headers))]
    out = []
    for line in lines:
        cells = [
            cell.ljust(widths[i]) if i < 3 else cell.rjust(widths[i]) for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
    out.insert(1, "  ".join("-" * width for width in widths))
    notes = [
        "",
        "bare Pool(2): the median of the baselines; each ratio is to its own peer's"
        " (with --rounds, the median of the turns' ratios, each to the bare turn before it).",
    ]
    for row in rows:
        if "slots" in row:
            notes.append(f"{row['peer']}: {row['slots']}")
        if "error" in row:
            notes.append(f"{row['peer']}: ERROR {row['error']}")
        for key, error in row.get("errors", {}).items():
            notes.append(f"{row['peer']}: {key} failed: {error}")
    return "\n".join(out + notes)


def against_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of each batchjob peer measured: its figure, and its store's floor's in the
    same run where the floor was measured too."""
    measured = {row["peer"]: row for row in rows if "error" not in row}
    checks = []
    for store, targets in TARGETS.items():
        batchjob, floor = measured.get(f"batchjob-{store}"), measured.get(f"floor-{store}")
        if batchjob is None:
            continue
        for key, sense, target in targets:
            value = _figure(batchjob, key)
            if value is None:
                continue
            floor_value = None if floor is None else _figure(floor, key)
            over_floor = _over_floor_in_turns(batchjob, key)
            in_turns = over_floor is not None
            if over_floor is None and floor_value:
                over_floor = value / floor_value
            checks.append(
                {
                    "store": store,
                    "figure": key,
                    "sense": sense,
                    "target": target,
                    "batchjob": value,
                    "met": _meets(value, sense, target),
                    "floor": floor_value,
                    "floor_met": None
                    if floor_value is None
                    else _meets(floor_value, sense, target),
                    "over_floor": over_floor,
                    "over_floor_in_turns": in_turns,
                }
            )
    return checks


def _over_floor_in_turns(row: dict[str, Any], key: str) -> float | None:
    """batchjob's jobs/s over its floor's in the same turns (median), where they ran so."""
    label, _, part = key.partition("_")
    if part != "ratio":
        return None
    return (row.get(label) or {}).get("over_partner")


def _figure(row: dict[str, Any], key: str) -> float | None:
    """A row's figure: `python_ratio` is row["python"]["ratio"]."""
    label, _, part = key.partition("_")
    if part == "ratio":
        return (row.get(label) or {}).get("ratio")
    value = row.get(key)
    return None if value is None else float(value)


def _meets(value: float, sense: str, target: float) -> bool:
    return value >= target if sense == ">=" else value <= target


def targets_report(checks: list[dict[str, Any]]) -> str:
    def shown(value: float) -> str:
        return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"

    lines = ["", "batchjob against the issue's targets, beside its store's floor in this run:"]
    for check in checks:
        line = (
            f"  {check['store']:10} {check['figure']:18} {shown(check['batchjob']):>7}"
            f" {check['sense']} {shown(check['target']):<6}"
            f" {'ok' if check['met'] else 'MISSED':6}"
        )
        if check["floor"] is not None:
            verdict = "ok" if check["floor_met"] else "MISSED"
            line += f"  floor {shown(check['floor']):>7} {verdict:6}"
        if check["over_floor"] is not None:
            line += f"  batchjob {check['over_floor']:.2f}x the floor's"
            if check["over_floor_in_turns"]:
                line += " jobs/s in the same turns"
        lines.append(line.rstrip())
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated, of: %(default)s")
    parser.add_argument("--jobs", type=int, default=200, help="jobs per throughput run")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="turns of the bare loop and the peer that share --jobs (the median is reported)",
    )
    parser.add_argument("--enqueue-jobs", type=int, default=2000)
    parser.add_argument("--bulk-jobs", type=int, default=20000)
    parser.add_argument("--latency-jobs", type=int, default=50)
    parser.add_argument("--latency-gap", type=float, default=0.1, help="seconds between them")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument(
        "--pg-admin-dsn",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="a URL; the run creates and drops --pg-database through it",
    )
    parser.add_argument("--pg-database", default="bench_peers")
    parser.add_argument("--keep-scratch", action="store_true", help="keep worker logs, records")
    args = parser.parse_args()
    names = peer_names(args.peers)
    unknown = sorted(set(names) - set(PEERS))
    if unknown:
        parser.error(f"unknown peers {unknown}")
    if args.rounds < 1 or args.jobs < 2 * args.rounds:
        parser.error("--rounds must be at least 1, and --jobs at least 2 a round")

    scratch = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    tag = uuid.uuid4().hex
    os.environ["BENCH_PEERS_REDIS_URL"] = args.redis_url
    admin = urlsplit(args.pg_admin_dsn)  # a URL, since asyncpg (pgqueuer) takes no key=value
    os.environ["BENCH_PEERS_PG_DSN"] = urlunsplit(admin._replace(path=f"/{args.pg_database}"))
    os.environ["BENCH_PEERS_SCRATCH"] = str(scratch)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    bench = Bench(args, scratch, tag)
    started = time.monotonic()
    load_before = os.getloadavg()
    machine = {"before": machine_reading(scratch / "machine-before")}
    log(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {load_before[0]:.2f};"
        f" {describe_machine(machine['before'])}"
    )
    rows: list[dict[str, Any]] = []
    unavailable: dict[str, str] = {}
    try:
        unavailable = prepare_stores(args)
        for name in names:
            log(f"{name}: measuring")
            rows.append(bench.measure(name, unavailable))
        machine["after"] = machine_reading(scratch / "machine-after")
    finally:
        left = stop_everything(tag)
        problems = clean_stores(args, unavailable)
        if args.keep_scratch:
            log(f"scratch kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    result = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "machine": machine,
        "seconds": time.monotonic() - started,
        "settings": {key: str(value) for key, value in vars(args).items()},
        "job_commands": {"python": PYTHON_PASS, "true": BIN_TRUE},
        "method": {
            "throughput": "(N-1) / (last completion - first completion); 2 slots per peer",
            "baseline": "subprocess.run in multiprocessing.Pool(2), measured before each peer",
            "floor_in_turns": "a batchjob peer's throughput turns each beside its floor's, when"
            " the run measures that floor (true.over_partner, python.over_partner: batchjob's"
            " jobs/s over the floor's in the same turn, median)",
            "latency": "task body time.time() at start - time.time() before the enqueue call",
            "rss": "sum over the worker's process tree, after one job and 2 s idle"
            " (worker_rss_mib: the process the CLI started, alone)",
            "worker_environment": "a service's: this run's PATH and BENCH_* variables, then"
            " the peer's own",
        },
        "killed_by_tag_after_a_worker_stop": common.ESCAPED,
        "leftover_processes_killed": left,
        "cleanup_problems": problems,
        "peers": rows,
        "against_targets": against_targets(rows),
    }
    print(table(rows))
    if result["against_targets"]:
        print(targets_report(result["against_targets"]))
    print(
        f"\n{len(rows)} peers in {result['seconds']:.0f}s, load {load_before[0]:.2f} before,"
        f" {result['load_after'][0]:.2f} after; leftover processes: {len(left)}"
        f"\nthe machine before: {describe_machine(machine['before'])};"
        f" after: {describe_machine(machine['after'])}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if left or problems else 0


if __name__ == "__main__":
    sys.exit(main())
