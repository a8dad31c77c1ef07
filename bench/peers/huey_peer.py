"""Huey on SQLite (SqliteHuey, the setup behind the cited enqueue figure): `huey_consumer`."""

from __future__ import annotations

from common import QUEUE, JobSpec, Peer, cli, run_job, scratch
from huey import SqliteHuey

scratch().mkdir(parents=True, exist_ok=True)
huey = SqliteHuey(QUEUE, filename=str(scratch() / "huey.db"))


@huey.task()
def huey_job(marker: str, index: int, command: list[str]) -> None:
    run_job(marker, index, command)


class HueyPeer(Peer):
    name = "huey"
    package = "huey"
    broker = "sqlite"
    # 2 worker threads (-k thread): the consumer's default and its advice for tasks that wait
    # on I/O, here a child process. The consumer polls SQLite; its default delay starts at
    # 100 ms and backs off by 1.15x up to 10 s while idle (measured with it: start latency p50
    # 38 ms, p95 56 ms with jobs 0.1 s apart; seconds after a long idle). -d 0.01 -m 0.01
    # polls every 10 ms, the same cap as Dramatiq's, at ~100 SQLite reads/s per idle thread.
    slots = "2 threads (poll every 10 ms)"

    def reset(self) -> None:
        huey.flush()

    def enqueue(self, job: JobSpec) -> None:
        huey_job(job.marker, job.index, job.command)

    def worker_argv(self) -> list[str]:
        return [
            cli("huey_consumer"),
            "huey_peer.huey",
            "--workers=2",
            "--worker-type=thread",
            "--delay=0.01",
            "--max-delay=0.01",
            "--quiet",
        ]

    def close(self) -> None:
        huey.storage.close()


PEER = HueyPeer
