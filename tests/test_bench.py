"""The benchmark suite's smoke form: every figure of `make bench` still runs (not how fast)."""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from batchjob.worker.leases import TICK_SECONDS
from bench.suite.figures import OUTPUT_ROUNDS

ROOT = Path(__file__).resolve().parent.parent


def test_the_suite_measures_each_figure_against_its_baseline(tmp_path: Path) -> None:
    report = tmp_path / "suite.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.suite", "--smoke", "--databases", "sqlite",
         "--figures", "enqueue,output,claim_cost,progress", "--json", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(report.read_text())["sqlite"]
    output, claim, progress = figures["output"], figures["claim_cost"], figures["progress"]
    enqueue = figures["enqueue"]
    assert enqueue["bulk_per_s"] > 0 and enqueue["driver_bulk_per_s"] > 0
    (enqueue_line,) = [line for line in done.stdout.splitlines() if " enqueue " in line]
    assert "bulk_per_s >= 50,000" in enqueue_line, "both of enqueue's targets are checked"
    assert output["bare_seconds"] > 0 and output["worker_seconds"] > 0
    assert output["cat_seconds"] > 0
    assert [len(side) for side in output["rounds"].values()] == [OUTPUT_ROUNDS] * 3
    assert output["worker_rss_peak_mib"] >= output["worker_rss_idle_mib"] > 0
    assert claim["empty_ms"] > 0 and claim["loaded_ms"] > 0
    assert progress["reporting"]["last_progress"] == progress["units"], "the last report landed"
    assert progress["silent"]["last_progress"] is None
    assert [len(side) for side in progress["rounds"].values()] == [3, 3]
    middle = {
        side: sorted(turn["seconds"] for turn in turns)[1]
        for side, turns in progress["rounds"].items()
    }
    assert progress["speed_ratio"] == pytest.approx(middle["silent"] / middle["reporting"])
    # Claim and finish at least (a job shorter than the lease keeper's half-second tick may
    # have its progress written with its outcome); at most two writes a tick besides.
    reporting = progress["reporting"]
    ticks = reporting["run_seconds"] / TICK_SECONDS + 1
    assert 2 <= reporting["row_updates"] <= 2 + 2 * ticks


def test_the_floors_run_every_job_once_through_the_peers_harness(tmp_path: Path) -> None:
    """`make bench` measures batchjob against the floor in the same run: the floors must work,
    and each of batchjob's targets is printed beside its store's floor's figure."""
    report = tmp_path / "floor.json"
    peers = "floor-sqlite,floor-mariadb,floor-postgresql,batchjob-sqlite"
    done = subprocess.run(
        [sys.executable, "bench/peers/run.py", "--peers", peers, "--jobs", "20", "--rounds", "2",
         "--enqueue-jobs", "50", "--bulk-jobs", "200", "--latency-jobs", "5",
         "--pg-database", "bench_peers_smoke", "--json", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(report.read_text())
    for reading in (result["machine"]["before"], result["machine"]["after"]):
        assert reading["python_loop_seconds"] > 0 and reading["file_create_us"] > 0
    assert "the machine before: a 10,000,000-step Python loop" in done.stdout
    rows = result["peers"]
    assert [row["peer"] for row in rows] == peers.split(",")
    for row in rows:
        assert row["errors"] == {} and "error" not in row, row
        for label in ("python", "true"):
            assert row[label]["ratio"] > 0 and row[label]["most_at_once"] == 2
            # Two turns of the bare loop and the floor, each ratio to its own bare turn.
            turns = zip(row[f"{label}_baseline"]["rounds"], row[label]["rounds"], strict=True)
            ratios = [floor["jobs_per_s"] / bare["jobs_per_s"] for bare, floor in turns]
            assert len(ratios) == 2
            assert row[label]["ratio"] == pytest.approx(statistics.median(ratios))
        assert row["enqueue_per_s"] > 0 and row["enqueue_bulk_per_s"] > 0
        assert row["idle_rss_mib"] > 0 and row["latency_p50_ms"] > 0
    batchjob, floor = rows[3], rows[0]
    assert 0 < batchjob["worker_rss_mib"] < batchjob["idle_rss_mib"]  # its guardian besides
    checks = json.loads(report.read_text())["against_targets"]
    assert [(check["store"], check["figure"]) for check in checks] == [
        ("sqlite", figure)
        for figure in ("python_ratio", "true_ratio", "enqueue_per_s", "enqueue_bulk_per_s",
                       "latency_p50_ms", "latency_p95_ms", "worker_rss_mib")
    ]  # fmt: skip
    by_figure = {check["figure"]: check for check in checks}
    assert by_figure["true_ratio"]["batchjob"] == batchjob["true"]["ratio"]
    assert by_figure["true_ratio"]["floor"] == floor["true"]["ratio"]
    assert by_figure["true_ratio"]["met"] == (batchjob["true"]["ratio"] >= 0.5)
    # batchjob's turns each ran beside a turn of its floor: jobs/s over jobs/s.
    for label in ("python", "true"):
        beside = batchjob[f"{label}_floor_in_turns"]["rounds"]
        turns = zip(batchjob[label]["rounds"], beside, strict=True)
        in_turns = [ours["jobs_per_s"] / theirs["jobs_per_s"] for ours, theirs in turns]
        assert len(in_turns) == 2 and all(turn["most_at_once"] == 2 for turn in beside)
        check = by_figure[f"{label}_ratio"]
        assert check["over_floor"] == pytest.approx(statistics.median(in_turns))
        assert check["over_floor_in_turns"] is True
        assert f"{label}_floor_in_turns" not in floor
    latency = by_figure["latency_p50_ms"]
    assert (latency["batchjob"], latency["floor"]) == (
        batchjob["latency_p50_ms"],
        floor["latency_p50_ms"],
    )
    assert latency["over_floor"] == pytest.approx(latency["batchjob"] / latency["floor"])
    assert latency["over_floor_in_turns"] is False
    assert latency["floor_met"] == (floor["latency_p50_ms"] <= 4)
    rss = by_figure["worker_rss_mib"]
    assert rss["batchjob"] == batchjob["worker_rss_mib"] and rss["target"] < 43
    assert "batchjob against the issue's targets" in done.stdout
    assert any(
        line.split()[:2] == ["sqlite", "true_ratio"]
        and "floor" in line
        and "x the floor's jobs/s in the same turns" in line
        for line in done.stdout.splitlines()
    ), done.stdout


def test_the_floor_hands_a_job_the_workers_environment_and_records_it_masked(
    tmp_path: Path,
) -> None:
    """The floor is batchjob's contract written the shortest way, so a job gets the worker's
    environment plus batchjob's variables (SPEC §5), and the evidence masks its secrets."""
    peers = ROOT / "bench" / "peers"
    database = tmp_path / "floor.db"
    schema = (
        "import sys; sys.path.insert(0, sys.argv[1]); import floor_peer;"
        "connection = floor_peer.Sqlite(sys.argv[2]).connect();"
        "[connection.execute(statement) for statement in floor_peer.Sqlite.schema];"
        "connection.execute(floor_peer.ENQUEUE, ('[\"/usr/bin/env\"]', 'marker', 0))"
    )
    subprocess.run([sys.executable, "-c", schema, str(peers), str(database)], check=True)
    environment = {
        "PATH": "/usr/bin:/bin",
        "CRM_API_TOKEN": "hunter2",
        "CRM_URL": "https://sync:hunter2@crm.example/api",
        "SHOP": "第六竹石",
    }
    worker = subprocess.Popen(
        [sys.executable, str(peers / "floor_peer.py"), "sqlite", str(database), str(tmp_path)],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        evidence = _floor_evidence(database)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    printed = dict(
        line.split("=", 1) for line in (tmp_path / "jobs" / "1.log").read_text().splitlines()
    )
    assert printed["CRM_API_TOKEN"] == "hunter2" and printed["SHOP"] == "第六竹石"
    assert printed["PYTHONUNBUFFERED"] == "1" and printed["BATCH_JOB_ID"] == "1"
    recorded = evidence["environment"]
    assert recorded == {**printed, "CRM_API_TOKEN": "***", "CRM_URL": recorded["CRM_URL"]}
    assert recorded["CRM_URL"] == "https://sync:***@crm.example/api"


def _floor_evidence(database: Path) -> dict[str, Any]:
    """The evidence of the floor's first attempt, once it is recorded."""
    for _ in range(600):
        connection = sqlite3.connect(database)
        try:
            row = connection.execute(
                "SELECT data FROM floor_events WHERE job_id = 1 AND kind = 'attempt'"
            ).fetchone()
        finally:
            connection.close()
        if row is not None:
            recorded: dict[str, Any] = json.loads(row[0])
            return recorded
        time.sleep(0.05)
    raise AssertionError("the floor recorded no attempt in 30 s")
