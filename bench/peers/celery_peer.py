"""Celery on Redis: `celery -A celery_peer:app worker`, a prefork pool of 2 processes."""

from __future__ import annotations

from celery import Celery
from common import QUEUE, JobSpec, Peer, cli, flush_redis, redis_url, run_job

app = Celery("celery_peer", broker=redis_url())
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="celery_job")
def celery_job(marker: str, index: int, command: list[str]) -> None:
    run_job(marker, index, command)


class CeleryPeer(Peer):
    name = "celery"
    package = "celery"
    broker = "redis"
    # The prefork pool (Celery's default) with 2 children, the default prefetch multiplier (4)
    # and the fair scheduling that is the default since Celery 4. Gossip, mingle and heartbeat
    # only talk to other workers, of which there are none: they are turned off, as Celery's
    # docs advise for Redis. No result backend: the record file says when a job ran.
    slots = "2 processes (prefork)"

    def reset(self) -> None:
        flush_redis()

    def enqueue(self, job: JobSpec) -> None:
        celery_job.apply_async((job.marker, job.index, job.command))

    def worker_argv(self) -> list[str]:
        return [
            cli("celery"),
            "--app=celery_peer:app",
            "worker",
            "--pool=prefork",
            "--concurrency=2",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=WARNING",
        ]

    def close(self) -> None:
        app.close()


PEER = CeleryPeer
