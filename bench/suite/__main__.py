"""batchjob's figures on each database, each as a ratio to a baseline measured in the same run.

    .venv/bin/python -m bench.suite [--databases sqlite,mariadb,postgresql]
                                    [--figures output,claim_cost,progress,scaling]
                                    [--smoke] [--json FILE]

The figures shared with the peers (spawn rates, enqueue, start latency, idle RSS) come from
bench/peers/run.py, which measures batchjob with the peers' method (`make bench` runs both).
Run on an otherwise idle machine: every figure here is a wall-clock time. --smoke makes
every figure small (about a minute in all): it shows the suite works, not how fast.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.suite import figures
from bench.suite.databases import KINDS, NAME, fresh_database

FULL = {"enqueue": 2000, "gib": 1.0, "finished": 1_000_000, "pending": 100_000, "loops": 2000,
        "units": 1_000_000, "jobs": 2000, "workers": (1, 2, 4, 8)}  # fmt: skip
SMOKE = {"enqueue": 100, "gib": 0.05, "finished": 20_000, "pending": 2_000, "loops": 100,
         "units": 50_000, "jobs": 100, "workers": (1, 2)}  # fmt: skip
#: Each figure, and the databases it is measured on: several workers sharing one server; the
#: driver's own insert as a baseline where there is no network in between.
FIGURES = {
    "enqueue": ("sqlite",),
    "output": KINDS,
    "claim_cost": KINDS,
    "progress": KINDS,
    "scaling": ("mariadb", "postgresql"),
}
#: Each figure's targets from the issue: (key, sense, target), all of which it must meet.
TARGETS = {
    "enqueue": (("one_by_one_per_s", ">=", 3000), ("bulk_per_s", ">=", 50_000)),
    "output": (("speed_ratio", ">=", 0.8),),
    "claim_cost": (("cost_ratio", "<=", 1.2),),
    "progress": (("speed_ratio", ">=", 0.9),),
}


def measure(kind: str, name: str, size: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"batchjob-bench-{kind}-") as scratch:
        directory = Path(scratch)
        with fresh_database(kind, directory) as url:
            if name == "enqueue":
                return figures.enqueue(url, directory, size["enqueue"])
            if name == "output":
                return figures.output(url, directory, size["gib"])
            if name == "claim_cost":
                with fresh_database(kind, directory, f"{NAME}_empty") as empty_url:
                    return figures.claim_cost(
                        url, empty_url, size["finished"], size["pending"], size["loops"]
                    )
            if name == "progress":
                return figures.progress(url, directory, size["units"])
            return figures.scaling(url, directory, size["jobs"], size["workers"])


def summary(name: str, figure: dict[str, Any]) -> str:
    if name == "enqueue":
        return (
            f"one by one {figure['one_by_one_per_s']:,.0f}/s"
            f" ({figure['one_by_one_ratio']:.2f}x sqlite3's"
            f" {figure['driver_one_by_one_per_s']:,.0f}/s),"
            f" enqueue_many {figure['bulk_per_s']:,.0f}/s"
            f" ({figure['bulk_ratio']:.2f}x sqlite3's {figure['driver_bulk_per_s']:,.0f}/s)"
        )
    if name == "output":
        return (
            f"{figure['gib']:g} GiB: {figure['worker_seconds']:.2f}s under the worker,"
            f" {figure['bare_seconds']:.2f}s to a file: {figure['speed_ratio']:.2f}x"
            f" ({figure['cat_ratio']:.2f}x through cat's {figure['cat_seconds']:.2f}s);"
            f" worker RSS {figure['worker_rss_idle_mib']:.0f} -> "
            f"{figure['worker_rss_peak_mib']:.0f} MiB"
        )
    if name == "claim_cost":
        return (
            f"claim+finish {figure['loaded_ms']:.2f} ms with {figure['finished_rows']:,} finished"
            f" + {figure['pending_rows']:,} pending rows, {figure['empty_ms']:.2f} ms empty:"
            f" {figure['cost_ratio']:.2f}x"
        )
    if name == "progress":
        reporting = figure["reporting"]
        return (
            f"{reporting['reports_per_s']:,.0f} reports/s: {figure['speed_ratio']:.2f}x the"
            f" silent job's speed; {figure['writes_per_s']:.1f} row writes/s"
            f" ({reporting['row_updates']} in {reporting['run_seconds']:.1f}s)"
        )
    counts = [key for key in figure if key.isdigit()]  # workers
    rates = ", ".join(
        f"{count} worker(s) {figure[count]['jobs_per_s']:.0f}/s ({figure[count]['ratio']:.2f}x)"
        for count in counts
    )
    return (
        f"{rates}; deadlock lines: {len(figure['deadlock_lines'])},"
        f" warning lines: {len(figure['warning_lines'])}"
    )


def verdict(name: str, figure: dict[str, Any]) -> str:
    if name == "scaling":
        return "ok" if not figure["deadlock_lines"] else "MISSED"
    checks = {
        f"{key} {sense} {target:,}": figure[key] >= target
        if sense == ">="
        else figure[key] <= target
        for key, sense, target in TARGETS[name]
    }
    missed = [check for check, met in checks.items() if not met]
    return f"MISSED {', '.join(missed)}" if missed else f"ok (target {', '.join(checks)})"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__)
    parser.add_argument("--databases", default=",".join(KINDS))
    parser.add_argument("--figures", default=",".join(FIGURES))
    parser.add_argument("--smoke", action="store_true", help="small sizes: does it work?")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    kinds = [kind for kind in args.databases.split(",") if kind]
    names = [name for name in args.figures.split(",") if name]
    if set(kinds) - set(KINDS) or set(names) - set(FIGURES):
        parser.error("unknown database or figure")
    size = SMOKE if args.smoke else FULL
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs,"
        f" load {os.getloadavg()[0]:.2f}, {'smoke' if args.smoke else 'full'} sizes",
        flush=True,
    )
    results: dict[str, Any] = {"size": {k: list(v) if isinstance(v, tuple) else v
                                        for k, v in size.items()}}  # fmt: skip
    failures = 0
    for kind in kinds:
        for name in names:
            if kind not in FIGURES[name]:
                continue
            started = time.monotonic()
            try:
                figure = measure(kind, name, size)
            except Exception as error:  # one figure failing must not hide the others
                failures += 1
                print(f"{kind:10} {name:10} ERROR {type(error).__name__}: {error}", flush=True)
                results.setdefault(kind, {})[name] = {"error": repr(error)}
                continue
            figure["seconds"] = time.monotonic() - started
            results.setdefault(kind, {})[name] = figure
            print(
                f"{kind:10} {name:10} {summary(name, figure)} — {verdict(name, figure)}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
