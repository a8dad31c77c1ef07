"""RQ: two `rq worker` processes, the default forking Worker (rq) or SimpleWorker (rq-simple)."""

from __future__ import annotations

from common import QUEUE, JobSpec, Peer, cli, flush_redis, redis_url
from redis import Redis
from rq import Queue

_connection: Redis | None = None


def _queue() -> Queue:
    global _connection  # noqa: PLW0603 - one connection for the whole enqueue benchmark
    if _connection is None:
        _connection = Redis.from_url(redis_url())
    return Queue(QUEUE, connection=_connection)


class RqPeer(Peer):
    name = "rq"
    package = "rq"
    broker = "redis"
    has_bulk = True
    worker_class = "rq.worker.Worker"
    # Two `rq worker` processes, as RQ is usually deployed (one job at a time per worker).
    # `rq worker-pool -n 2` adds a supervising process for nothing measured here (measured
    # idle: 128 MiB against 72). The default Worker forks a work horse for each job.
    # A worker blocks on BLPOP, so an idle one wakes at once: no polling interval to tune.
    slots = "2 rq worker processes, fork per job"

    def reset(self) -> None:
        flush_redis()

    def enqueue(self, job: JobSpec) -> None:
        _queue().enqueue("common.run_job", job.marker, job.index, job.command)

    def enqueue_bulk(self, jobs: list[JobSpec]) -> None:
        """`Queue.enqueue_many`: one Redis pipeline for all the jobs."""
        queue = _queue()
        queue.enqueue_many(
            [queue.prepare_data("common.run_job", kwargs=job.kwargs()) for job in jobs]
        )

    def worker_argv(self) -> list[str]:
        return [
            cli("rq"),
            "worker",
            f"--worker-class={self.worker_class}",
            f"--url={redis_url()}",
            "--path=.",
            "--quiet",
            QUEUE,
        ]

    def worker_argvs(self) -> list[list[str]]:
        return [self.worker_argv(), self.worker_argv()]

    def close(self) -> None:
        global _connection  # noqa: PLW0603
        if _connection is not None:
            _connection.close()
            _connection = None


class RqSimplePeer(RqPeer):
    name = "rq-simple"
    worker_class = "rq.worker.SimpleWorker"
    # SimpleWorker runs the job in the worker process itself: no fork per job (the setting
    # behind the cited start latency), at the cost of RQ's per-job isolation.
    slots = "2 rq worker processes, SimpleWorker"


PEER = RqPeer
PEERS = {"rq": RqPeer, "rq-simple": RqSimplePeer}
