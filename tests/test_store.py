"""The store's guarantees (SPEC §3), each checked on SQLite, MariaDB and PostgreSQL."""

from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, make_url, text

import batchjob.store
from batchjob.errors import DuplicateJob, InvalidInput, InvalidTransition, JobNotFound
from batchjob.model import FailureReason, Job, JobStatus, NewJob
from batchjob.queue import Queue
from batchjob.store import ClaimRequest, Outcome, Store, migrations, schema
from conftest import (
    DATABASES,
    OTHER_DRIVERS,
    database_url_fixture,
    kill_connections,
    prepared_database,
)

database_url = database_url_fixture((*DATABASES, *OTHER_DRIVERS))  # MariaDB through PyMySQL too

JAPANESE = "第六竹石"


def _claim_until_empty(url: str, worker: str, start_at: float) -> list[int]:
    """One competing claimer (runs in its own process)."""
    store = Store(url)
    claimed: list[int] = []
    while time.time() < start_at:
        time.sleep(0.005)
    batch = 1
    while True:
        got = store.claim(worker, None, batch, lease_timeout=300)
        claimed.extend(item.job.id for item in got)
        time.sleep(0.002)  # a worker runs what it claimed before it claims again
        if not got and store.stats().get("default", {}).get("pending", 0) == 0:
            break
        batch = batch % 5 + 1
    store.close()
    return claimed


def test_concurrent_claimers_take_each_job_exactly_once(store: Store, database_url: str) -> None:
    store.enqueue([NewJob(command=["true", str(n)]) for n in range(2000)])
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 3
    with context.Pool(4) as pool:
        results = pool.starmap(
            _claim_until_empty, [(database_url, f"w{n}", start_at) for n in range(4)]
        )
    all_claimed = [job_id for result in results for job_id in result]
    assert len(all_claimed) == 2000
    assert len(set(all_claimed)) == 2000
    assert sum(1 for result in results if result) >= 2, "the claims really raced"
    running = store.list_jobs(statuses=[JobStatus.RUNNING], limit=5000)
    assert len(running) == 2000
    assert {job.attempt for job in running} == {1}
    assert Counter(job.worker_id for job in running).keys() == {"w0", "w1", "w2", "w3"}


def test_threads_of_one_store_finish_and_claim_in_turn(store: Store) -> None:
    """A worker's slots share its Store: on SQLite their writes share one connection (taken
    in turn), on the servers the pool's; each job is still run once and recorded once, and
    a refused write in one thread leaves the others' writes working."""
    store.enqueue([NewJob(command=["true", str(n)]) for n in range(600)])
    store.enqueue([NewJob(command=["held"], queue="elsewhere", unique_key="held")])
    finished: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def slot(name: str) -> None:
        try:
            barrier.wait()
            request = ClaimRequest(name, ["default"], 1, 300)
            claimed = store.claim(name, ["default"], 1, lease_timeout=300)
            while claimed:
                (item,) = claimed
                with pytest.raises(DuplicateJob):  # refused within a write of its own
                    store.enqueue([NewJob(command=["again"], unique_key="held")])
                assert store.get(item.job.id).worker_id == name  # a read between the writes
                done = Outcome(JobStatus.COMPLETED, exit_code=0, evidence={"slot": name})
                recorded, claimed = store.finish_and_claim(item.lease, done, request)
                assert recorded
                finished.append(item.job.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=slot, args=(f"slot{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(finished) == len(set(finished)) == 600
    completed = store.list_jobs(statuses=[JobStatus.COMPLETED], limit=1000)
    assert len(completed) == 600
    assert {job.attempt for job in completed} == {1}
    assert len({job.worker_id for job in completed}) > 1, "the slots really took turns"


def test_claim_order_is_priority_then_due_time_then_id(store: Store) -> None:
    low, high, later, delayed = store.enqueue(
        [
            NewJob(command=["low"]),
            NewJob(command=["high"], priority=10),
            NewJob(command=["low-later"]),
            NewJob(command=["delayed"], priority=100, delay=3600),
        ]
    )
    claimed = store.claim("w", None, 10, lease_timeout=30)
    assert [item.job.id for item in claimed] == [high.id, low.id, later.id]
    assert store.get(delayed.id).status == JobStatus.PENDING


def test_claim_takes_only_the_named_queues(store: Store) -> None:
    sync, report = store.enqueue(
        [NewJob(command=["a"], queue="sync"), NewJob(command=["b"], queue="report")]
    )
    assert [item.job.id for item in store.claim("w", ["report"], 5, 30)] == [report.id]
    assert [item.job.id for item in store.claim("w", ["sync", "other"], 5, 30)] == [sync.id]


def test_concurrency_key_limits_running_jobs_across_claims(store: Store) -> None:
    store.enqueue(
        [NewJob(command=["sync", str(n)], concurrency_key="profit-sync") for n in range(3)]
        + [NewJob(command=["other"])]
    )
    first = store.claim("w1", None, 10, 30)
    assert sorted(item.job.command[0] for item in first) == ["other", "sync"]
    assert store.claim("w2", None, 10, 30) == []
    syncing = next(item for item in first if item.job.command[0] == "sync")
    assert store.finish(syncing.lease, Outcome(JobStatus.COMPLETED, exit_code=0))
    assert [item.job.command[0] for item in store.claim("w2", None, 10, 30)] == ["sync"]


def test_stale_lease_token_changes_nothing(store: Store) -> None:
    (job,) = store.enqueue([NewJob(command=["sleep", "100"], max_attempts=2)])
    (first,) = store.claim("w1", None, 1, lease_timeout=0.2)
    time.sleep(0.5)
    assert [rescued.id for rescued in store.rescue_expired()] == [job.id]
    (second,) = store.claim("w2", None, 1, lease_timeout=30)
    assert second.lease.token != first.lease.token
    before = store.get(job.id)

    assert store.renew_leases([first.lease], 30) == set()
    assert store.report_progress(first.lease, "stale", 1, 2) is False
    assert store.finish(first.lease, Outcome(JobStatus.COMPLETED, exit_code=0)) is False
    assert store.get(job.id) == before

    assert store.report_progress(second.lease, "fresh", 1, 2) is True
    assert store.get(job.id).progress_message == "fresh"


def test_a_rescued_job_goes_before_jobs_enqueued_after_it(store: Store) -> None:
    (orphan,) = store.enqueue([NewJob(command=["orphan"], max_attempts=3)])
    store.claim("w1", None, 1, lease_timeout=0.2)
    store.enqueue([NewJob(command=["later"]) for _ in range(3)])
    time.sleep(0.5)
    store.rescue_expired()
    (first,) = store.claim("w2", None, 1, lease_timeout=30)
    assert first.job.id == orphan.id


def test_a_rescued_attempts_late_success_is_kept_until_the_job_is_claimed_again(
    store: Store,
) -> None:
    """Its worker was cut off while the job succeeded: running it again would repeat work."""
    late, reclaimed = store.enqueue([NewJob(command=["x"], max_attempts=3)] * 2)
    attempts = {item.job.id: item.lease for item in store.claim("w1", None, 2, 0.2)}
    time.sleep(0.5)
    assert {job.id for job in store.rescue_expired()} == {late.id, reclaimed.id}
    failure = Outcome(JobStatus.PENDING, exit_code=1, retry_delay=0)
    assert store.finish(attempts[late.id], failure) is False, "a late failure is moot"
    assert store.finish(attempts[late.id], Outcome(JobStatus.COMPLETED, exit_code=0)) is True
    assert (store.get(late.id).status, store.get(late.id).attempt) == (JobStatus.COMPLETED, 1)

    (again,) = store.claim("w2", None, 1, 30)
    assert again.job.id == reclaimed.id
    assert store.finish(attempts[reclaimed.id], Outcome(JobStatus.COMPLETED, exit_code=0)) is False
    assert store.get(reclaimed.id).status == JobStatus.RUNNING


def test_a_rescue_of_more_jobs_than_one_insert_holds_records_each_ones_events(
    store: Store,
) -> None:
    """A transaction's events go in INSERTs of up to EVENTS_PER_INSERT rows: every one of
    many claimed, then rescued, jobs gets both of its events, in order."""
    count = 2 * batchjob.store.EVENTS_PER_INSERT + 1
    enqueued = store.enqueue([NewJob(command=["x", str(n)], max_attempts=2) for n in range(count)])
    claimed = store.claim("w1", None, count, lease_timeout=0.2)
    assert sorted(item.job.id for item in claimed) == sorted(job.id for job in enqueued)
    time.sleep(0.5)
    assert len(store.rescue_expired()) == count
    for job in enqueued:
        assert [(event.kind, event.attempt, event.message) for event in store.events(job.id)] == [
            ("claimed", 1, "claimed by w1 for attempt 1"),
            ("rescued", 1, "the lease of attempt 1 (worker w1) expired; the job is now pending"),
        ]


def test_lease_expiry_rescues_while_attempts_remain_then_fails(store: Store) -> None:
    (job,) = store.enqueue([NewJob(command=["x"], max_attempts=2)])
    store.claim("w1", None, 1, lease_timeout=1.0)
    assert store.rescue_expired() == []
    time.sleep(1.3)
    store.rescue_expired()
    assert store.get(job.id).status == JobStatus.PENDING
    store.claim("w2", None, 1, lease_timeout=0.2)
    time.sleep(0.5)
    (rescued,) = store.rescue_expired()
    assert rescued.status == JobStatus.FAILED
    assert rescued.failure_reason == FailureReason.WORKER_LOST
    assert rescued.completed_at is not None
    assert [event.kind for event in store.events(job.id)] == [
        "claimed",
        "rescued",
        "claimed",
        "rescued",
    ]


def test_each_attempts_events_carry_its_number_when_written_with_the_next_claim(
    store: Store,
) -> None:
    """finish_and_claim writes the ended attempt's event and the next claim's in one INSERT."""
    (flaky,) = store.enqueue([NewJob(command=["flaky"], max_attempts=2)])
    (first,) = store.claim("w", None, 1, 30)
    retry = Outcome(JobStatus.PENDING, exit_code=1, retry_delay=0, evidence={"pid": 1})
    assert store.finish_and_claim(first.lease, retry, None) == (True, [])
    (second,) = store.claim("w", None, 1, 30)
    assert second.lease.attempt == 2
    (other,) = store.enqueue([NewJob(command=["next"])])
    done = Outcome(JobStatus.COMPLETED, exit_code=0, evidence={"pid": 2})
    recorded, (following,) = store.finish_and_claim(
        second.lease, done, ClaimRequest("w", None, 1, 30)
    )
    assert recorded and following.job.id == other.id
    assert [(e.kind, e.attempt, (e.data or {}).get("pid")) for e in store.events(flaky.id)] == [
        ("claimed", 1, None),
        ("attempt", 1, 1),
        ("claimed", 2, None),
        ("attempt", 2, 2),
    ]
    assert [(e.kind, e.attempt, e.message, e.worker_id) for e in store.events(other.id)] == [
        ("claimed", 1, "claimed by w for attempt 1", "w")
    ]


def test_a_slots_next_job_starts_no_earlier_than_its_last_one_completed(store: Store) -> None:
    """On PostgreSQL the outcome and the next claim are one statement, whose parts run in no
    set order: one time for the whole statement, as SQLite and MariaDB have, or a slot's
    timeline would show its two jobs running at once."""
    store.enqueue([NewJob(command=["x", str(n)]) for n in range(30)])
    (current,) = store.claim("w", None, 1, 30)
    done = Outcome(JobStatus.COMPLETED, exit_code=0, evidence={"pid": 1})
    for _ in range(29):
        recorded, (following,) = store.finish_and_claim(
            current.lease, done, ClaimRequest("w", None, 1, 30)
        )
        ended = store.get(current.job.id)
        assert recorded and ended.completed_at is not None and following.job.started_at
        assert ended.completed_at <= following.job.started_at, (ended.id, following.job.id)
        current = following


def test_an_outcome_recorded_with_the_next_claim_changes_only_its_own_job(store: Store) -> None:
    ending, following = store.enqueue([NewJob(command=["a"]), NewJob(command=["b"])])
    (first,) = store.claim("w", None, 1, 30)
    done = Outcome(
        JobStatus.COMPLETED,
        exit_code=0,
        peak_rss_bytes=123,
        peak_open_fds=7,
        progress=("half", 1, 2),
        started=(4242, "/logs/a.log"),
        evidence={"pid": 4242},
    )
    recorded, (claimed,) = store.finish_and_claim(first.lease, done, ClaimRequest("w", None, 1, 30))
    ended, started = store.get(ending.id), store.get(following.id)
    assert recorded and claimed.job == started
    assert (ended.status, ended.exit_code, ended.peak_rss_bytes, ended.peak_open_fds) == (
        JobStatus.COMPLETED, 0, 123, 7,
    )  # fmt: skip
    assert (ended.pid, ended.log_path, ended.progress_message, ended.lease_expires_at) == (
        4242, "/logs/a.log", "half", None,
    )  # fmt: skip
    assert (started.status, started.attempt, started.worker_id) == (JobStatus.RUNNING, 1, "w")
    assert started.lease_expires_at is not None
    assert (started.peak_rss_bytes, started.peak_open_fds, started.pid, started.log_path) == (
        None, None, None, None,
    )  # fmt: skip
    assert started.exit_code is None and started.progress_message is None


def test_an_outcome_recorded_with_the_next_claim_claims_a_job_with_a_concurrency_key(
    store: Store,
) -> None:
    """PostgreSQL's one statement leaves keyed jobs to the claim's own steps, after it."""
    ending, keyed = store.enqueue(
        [NewJob(command=["a"]), NewJob(command=["b"], concurrency_key="crm")]
    )
    (first,) = store.claim("w", None, 1, 30)
    assert first.job.id == ending.id
    done = Outcome(JobStatus.COMPLETED, exit_code=0, evidence={"pid": 1})
    recorded, claimed = store.finish_and_claim(first.lease, done, ClaimRequest("w", None, 1, 30))
    assert recorded and [item.job.id for item in claimed] == [keyed.id]
    assert store.get(ending.id).status == JobStatus.COMPLETED
    assert store.get(keyed.id).status == JobStatus.RUNNING
    assert [(e.kind, e.message) for e in store.events(ending.id)] == [
        ("claimed", "claimed by w for attempt 1"),
        ("attempt", "the attempt ended"),
    ]


def test_a_job_retried_at_once_and_claimed_again_keeps_its_history_in_order(
    store: Store,
) -> None:
    (flaky,) = store.enqueue([NewJob(command=["flaky"], max_attempts=2)])
    (first,) = store.claim("w", None, 1, 30)
    retry = Outcome(JobStatus.PENDING, exit_code=1, retry_delay=0, evidence={"pid": 1})
    recorded, claimed = store.finish_and_claim(first.lease, retry, ClaimRequest("w", None, 1, 30))
    # Claimed with the outcome in its transaction (SQLite, MariaDB), or by the next claim
    # (PostgreSQL: in the statement that records the outcome, the attempt is still running).
    (again,) = claimed or store.claim("w", None, 1, 30)
    assert recorded and again.job.id == flaky.id and again.lease.attempt == 2
    assert [(e.kind, e.attempt) for e in store.events(flaky.id)] == [
        ("claimed", 1),
        ("attempt", 1),
        ("claimed", 2),
    ]


def test_a_renewed_lease_is_not_rescued(store: Store) -> None:
    store.enqueue([NewJob(command=["x"])])
    (claimed,) = store.claim("w1", None, 1, lease_timeout=1.0)
    for _ in range(4):
        time.sleep(0.4)
        assert store.renew_leases([claimed.lease], 1.0) == {claimed.job.id}
    assert store.rescue_expired() == []
    assert store.get(claimed.job.id).status == JobStatus.RUNNING


def test_lease_expiry_is_judged_by_the_database_clock(store: Store, database_url: str) -> None:
    store.enqueue([NewJob(command=["x"])])
    (claimed,) = store.claim("w1", None, 1, lease_timeout=60)
    engine = create_engine(database_url)
    now_sql = {
        "sqlite": "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
        "mysql": "SELECT UTC_TIMESTAMP(6)",
        "postgresql": "SELECT clock_timestamp() AT TIME ZONE 'UTC'",
    }[engine.dialect.name]
    with engine.connect() as conn:
        database_now = conn.execute(text(now_sql)).scalar_one()
    engine.dispose()
    if isinstance(database_now, str):
        database_now = datetime.fromisoformat(database_now)
    expires = store.get(claimed.job.id).lease_expires_at
    assert expires is not None
    assert timedelta(seconds=58) < expires - database_now <= timedelta(seconds=60)


def test_unique_key_admits_one_of_many_concurrent_enqueues(store: Store, database_url: str) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def enqueue() -> None:
        own = Store(database_url)
        barrier.wait()
        try:
            own.enqueue([NewJob(command=["x"], unique_key="nightly-report")])
            outcomes.append("stored")
        except DuplicateJob:
            outcomes.append("duplicate")
        finally:
            own.close()

    threads = [threading.Thread(target=enqueue) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["duplicate"] * 7 + ["stored"]
    assert len(store.list_jobs()) == 1


def test_unique_keys_differing_only_in_case_or_accents_are_different_keys(
    store: Store,
) -> None:
    """On MariaDB this holds only with the tables' binary collation (the server's default,
    utf8mb4_general_ci, takes `Report` for `report` and `café` for `cafe`)."""
    keys = ["report", "Report", "cafe", "café", "第六竹石"]
    stored = store.enqueue([NewJob(command=["x"], unique_key=key) for key in keys])
    assert [store.get(job.id).unique_key for job in stored] == keys


def test_unique_key_is_free_again_once_the_holder_finished(store: Store) -> None:
    (holder,) = store.enqueue([NewJob(command=["x"], unique_key="k")])
    with pytest.raises(DuplicateJob) as refused:
        store.enqueue([NewJob(command=["y"], unique_key="k")])
    assert refused.value.existing_job_id == holder.id
    store.cancel(holder.id)
    (successor,) = store.enqueue([NewJob(command=["y"], unique_key="k")])
    with pytest.raises(DuplicateJob) as blocked_retry:
        store.retry(holder.id)
    assert blocked_retry.value.existing_job_id == successor.id
    assert store.get(holder.id).status == JobStatus.CANCELLED


def test_bulk_enqueue_is_all_or_nothing(store: Store) -> None:
    store.enqueue([NewJob(command=["x"], unique_key="taken")])
    batch = [NewJob(command=["ok", str(n)]) for n in range(50)]
    batch.insert(25, NewJob(command=["dup"], unique_key="taken"))
    with pytest.raises(DuplicateJob):
        store.enqueue(batch)
    assert len(store.list_jobs(limit=100)) == 1
    stored = store.enqueue([NewJob(command=["ok", str(n)]) for n in range(50)])
    assert [job.command[1] for job in stored] == [str(n) for n in range(50)]
    assert [job.id for job in stored] == sorted(job.id for job in stored)


def test_a_bulk_enqueue_holds_off_the_cycle_collector_and_leaves_it_as_it_found_it(
    queue: Queue,
) -> None:
    """Its jobs hold no cycles: no collection runs while they are built and stored (one ran
    every 700 new containers, a full one traversing the whole heap). Afterwards, and after a
    refused batch, the collector is on again, unless the application had turned it off; a
    generator of requests, the caller's code, runs with it on."""
    assert gc.isenabled()
    started: list[int] = []  # the generation of each collection started meanwhile

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(info["generation"])

    requests = [{"command": ["x", str(n)]} for n in range(5000)]
    gc.collect()  # the count of new containers starts at 0, not near a collection
    gc.callbacks.append(note)
    try:
        stored = queue.enqueue_many(requests)
    finally:
        gc.callbacks.remove(note)
    # At most one young collection, catching up as the call returns (93 without the pause).
    assert started in ([], [0]), f"collections of generations {started}"
    assert gc.isenabled()
    assert [job.command[1] for job in stored[::1000]] == ["0", "1000", "2000", "3000", "4000"]
    with pytest.raises(DuplicateJob):
        queue.enqueue_many([{"command": ["y"], "unique_key": "k"}] * 2)
    with pytest.raises(InvalidInput):
        queue.enqueue_many([{"command": ["z"]}, {"command": ["z"], "priority": "high"}])
    assert gc.isenabled()
    seen_on = []  # a generator of requests (the caller's code) runs with the collector on

    def generated() -> Iterator[dict[str, list[str]]]:
        for n in range(3):
            seen_on.append(gc.isenabled())
            yield {"command": ["g", str(n)]}

    assert len(queue.enqueue_many(generated())) == 3
    assert seen_on == [True] * 3
    gc.disable()
    try:
        queue.enqueue_many([{"command": ["x"]}] * 2)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_bulk_enqueue_split_into_several_statements_returns_each_job_as_stored(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL sends a bulk enqueue as statements of ROWS_PER_ARRAY_INSERT rows."""
    monkeypatch.setattr(batchjob.store, "ROWS_PER_ARRAY_INSERT", 7)
    given = [
        NewJob(command=["x", str(n)], params={"n": str(n)}, unique_key=f"k{n}", delay=n)
        for n in range(30)
    ]
    returned = store.enqueue(given)
    assert [job.command[1] for job in returned] == [str(n) for n in range(30)]
    assert returned == [store.get(job.id) for job in returned]
    assert [job.id for job in returned] == sorted(job.id for job in returned)


def test_a_bulk_enqueue_makes_each_job_due_now_later_by_its_delay_or_as_given(
    store: Store,
) -> None:
    """run_at equals created_at, is later by the delay, or is the time given; the batch's
    jobs are created within a second and stored as returned. (Which clock made created_at,
    the database's or this host's, one host cannot tell apart.)"""
    given_run_at = datetime(2031, 1, 2, 3, 4, 5, 678901)
    now_job, delayed, scheduled, other = store.enqueue(
        [
            NewJob(command=["now"]),
            NewJob(command=["later"], delay=90.5),
            NewJob(command=["at"], run_at=given_run_at),
            NewJob(command=["now", JAPANESE]),
        ]
    )
    stored = [store.get(job.id) for job in (now_job, delayed, scheduled, other)]
    assert stored == [now_job, delayed, scheduled, other]
    later_by = [(job.run_at - job.created_at).total_seconds() for job in (now_job, delayed, other)]
    assert later_by == pytest.approx([0, 90.5, 0], abs=0.01)  # one clock reading or two
    assert scheduled.run_at == given_run_at
    assert max(job.created_at for job in stored) - min(job.created_at for job in stored) < (
        timedelta(seconds=1)
    )
    due = store.claim("w", None, 4, 30)
    assert sorted(claimed.job.id for claimed in due) == [now_job.id, other.id]


def test_a_job_built_from_its_fields_equals_one_built_by_init_and_needs_every_field(
    store: Store,
) -> None:
    (stored,) = store.enqueue([NewJob(command=["x", JAPANESE], env={"A": JAPANESE})])
    values = {name: getattr(stored, name) for name in vars(stored)}
    assert Job.from_fields(dict(values)) == Job(**values) == stored
    with pytest.raises(dataclasses.FrozenInstanceError):
        Job.from_fields(dict(values)).attempt = 2  # type: ignore[misc]
    del values["pid"]
    with pytest.raises(TypeError, match="pid"):
        Job.from_fields(dict(values))
    with pytest.raises(TypeError, match="surplus"):
        Job.from_fields({**values, "pid": None, "surplus": 1})


def _enqueue_batches(url: str, tag: str, start_at: float) -> list[tuple[int, str]]:
    """One of several processes enqueueing in bulk at once: (id, command[1]) of each job."""
    store = Store(url)
    while time.time() < start_at:
        time.sleep(0.005)
    stored = []
    for batch in range(20):
        jobs = store.enqueue([NewJob(command=["x", f"{tag}-{batch}-{n}"]) for n in range(25)])
        stored += [(job.id, job.command[1]) for job in jobs]
    store.close()
    return stored


def test_enqueue_returns_the_jobs_as_stored_even_when_bulk_enqueues_race(
    store: Store, database_url: str
) -> None:
    run_at = datetime(2031, 1, 2, 3, 4, 5, 678000)
    given = [
        NewJob(command=["python", "sync.py", JAPANESE]),
        NewJob(
            command=["report", "--month", "11"], queue="同期", task=None, env={"A": JAPANESE},
            tags=["x", JAPANESE], priority=-3, max_attempts=4, delay=60.0, unique_key="k1",
            concurrency_key="crm", max_concurrency=2, timeout=12.5, stall_timeout=30.0,
            stall_action="kill", retry_backoff=0.0, memory_limit=1 << 30, cwd="/srv/app",
        ),
        NewJob(command=["later"], run_at=run_at, params={"p": "1"}),
    ]  # fmt: skip
    for returned in (store.enqueue(given), store.enqueue(given[:1])):
        assert returned == [store.get(job.id) for job in returned]
    assert store.get(store.enqueue(given[2:])[0].id).run_at == run_at

    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        results = pool.starmap(
            _enqueue_batches, [(database_url, tag, time.time() + 2) for tag in "abc"]
        )
    returned = [pair for result in results for pair in result]
    assert len(returned) == 3 * 20 * 25
    stored = {job.id: job.command[-1] for job in store.list_jobs(limit=5000)}
    assert all(stored[job_id] == label for job_id, label in returned)
    assert len(set(returned)) == len(returned)


def test_enqueue_joins_the_applications_transaction(queue: Queue, database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS shop_orders (id INTEGER PRIMARY KEY)"))
        conn.execute(text("DELETE FROM shop_orders"))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO shop_orders (id) VALUES (1)"))
        kept = queue.enqueue(["ship", "1"], connection=conn)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(text("INSERT INTO shop_orders (id) VALUES (2)"))
        queue.enqueue(["ship", "2"], connection=conn)
        raise RuntimeError("payment declined")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO shop_orders (id) VALUES (3)"))
        queue.enqueue(["ship", "3"], unique_key="ship-3", connection=conn)
        with pytest.raises(DuplicateJob):
            queue.enqueue(["ship", "3"], unique_key="ship-3", connection=conn)
        conn.execute(text("INSERT INTO shop_orders (id) VALUES (4)"))
    with engine.connect() as conn:
        orders = conn.execute(text("SELECT id FROM shop_orders ORDER BY id")).scalars().all()
        conn.execute(text("DROP TABLE shop_orders"))
        conn.commit()
    engine.dispose()
    assert orders == [1, 3, 4]
    assert sorted(job.command[1] for job in queue.list()) == ["1", "3"]
    assert queue.get(kept.id).status == JobStatus.PENDING


def test_japanese_text_round_trips(store: Store, database_url: str) -> None:
    (job,) = store.enqueue(
        [
            NewJob(
                command=["python", "sync.py", JAPANESE],
                env={"PROPERTY": JAPANESE},
                tags=[JAPANESE],
                params={"property": JAPANESE},
                queue="同期",
            )
        ]
    )
    (claimed,) = store.claim("w", ["同期"], 1, 30)
    assert store.report_progress(claimed.lease, f"処理中: {JAPANESE}", 3, 120)
    stored = store.get(job.id)
    assert stored.command == ["python", "sync.py", JAPANESE]
    assert stored.env == {"PROPERTY": JAPANESE}
    assert stored.tags == [JAPANESE]
    assert stored.params == {"property": JAPANESE}
    assert stored.progress_message == f"処理中: {JAPANESE}"
    engine = create_engine(database_url)
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT id FROM batch_job_queue WHERE status = 'running' "
                "AND progress_message LIKE '%第六竹石%'"
            )
        ).all()
    engine.dispose()
    assert [row.id for row in found] == [job.id]


def test_cancel_pending_now_and_running_by_request(store: Store) -> None:
    waiting, running = store.enqueue([NewJob(command=["a"], delay=600), NewJob(command=["b"])])
    (claimed,) = store.claim("w", None, 1, 30)
    assert claimed.job.id == running.id
    cancelled = store.cancel(waiting.id)
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.failure_reason == FailureReason.CANCELLED
    requested = store.cancel(running.id)
    assert requested.status == JobStatus.RUNNING
    assert requested.cancel_requested_at is not None
    assert store.cancel(waiting.id).status == JobStatus.CANCELLED
    with pytest.raises(JobNotFound):
        store.cancel(999_999)


def test_retry_gives_a_failed_job_one_more_attempt(store: Store) -> None:
    (job,) = store.enqueue([NewJob(command=["false"])])
    (claimed,) = store.claim("w", None, 1, 30)
    failure = Outcome(
        JobStatus.FAILED,
        exit_code=1,
        failure_reason=FailureReason.EXIT_CODE,
        error_summary="boom",
    )
    assert store.finish(claimed.lease, failure)
    with pytest.raises(InvalidTransition):
        store.cancel(job.id)
    retried = store.retry(job.id)
    assert retried.status == JobStatus.PENDING
    assert (retried.attempt, retried.max_attempts) == (1, 2)
    assert retried.failure_reason is None and retried.completed_at is None
    with pytest.raises(InvalidTransition):
        store.retry(job.id)
    (again,) = store.claim("w", None, 1, 30)
    assert again.job.attempt == 2


def test_finish_as_pending_schedules_the_next_attempt(store: Store) -> None:
    (job,) = store.enqueue([NewJob(command=["flaky"], max_attempts=3)])
    (claimed,) = store.claim("w", None, 1, 30)
    assert store.finish(claimed.lease, Outcome(JobStatus.PENDING, exit_code=1, retry_delay=3600))
    waiting = store.get(job.id)
    assert waiting.status == JobStatus.PENDING
    assert waiting.run_at - (waiting.started_at or waiting.run_at) > timedelta(minutes=59)
    assert store.claim("w", None, 1, 30) == []


def test_a_dropped_connection_is_retried(store: Store, database_url: str) -> None:
    """The pool does not ping: a dead pooled connection fails before the commit, and the
    transaction runs again on a new one, an enqueue's too (nothing of it was committed). On
    PostgreSQL one job's enqueue is one statement, never sent twice: its connection is found
    dead before it is sent."""
    (job,) = store.enqueue([NewJob(command=["x"])])
    engine = create_engine(database_url)
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has no server connection to drop")
    others = {
        "mysql": "SELECT id FROM information_schema.processlist "
        "WHERE db = DATABASE() AND id <> CONNECTION_ID()",
        "postgresql": "SELECT pid FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    }[engine.dialect.name]

    def drop_the_stores_connections() -> None:
        with engine.connect() as conn:
            victims = conn.execute(text(others)).scalars().all()
        assert victims, "the store keeps a pooled connection open"
        kill_connections(engine, victims)

    drop_the_stores_connections()
    (second,) = store.enqueue([NewJob(command=["y"])])
    drop_the_stores_connections()
    assert store.get(job.id).id == job.id
    drop_the_stores_connections()  # then a claim's (its driver's errors: test_driver.py)
    engine.dispose()
    assert [claimed.job.id for claimed in store.claim("w", None, 2, 30)] == [job.id, second.id]
    assert [found.id for found in store.list_jobs()] == [second.id, job.id], "stored once"


def test_a_worker_process_loads_no_other_databases_dialect_or_sqlite3(database_url: str) -> None:
    """Each costs an idle worker RSS: PostgreSQL's dialect ~2.9 MB, MySQL's ~0.9 MB, sqlite3
    (with SQLite's library) 0.9 MB on a MariaDB or PostgreSQL worker."""
    script = f"""
import sys
from batchjob import cli
from batchjob.model import NewJob, JobStatus
from batchjob.store import Outcome, Store
from batchjob.worker import supervisor
store = Store({database_url!r})
store.enqueue([NewJob(command=["x"], unique_key="k", concurrency_key="c")])
(claimed,) = store.claim("w", None, 1, 30)
store.finish(claimed.lease, Outcome(JobStatus.COMPLETED, exit_code=0))
print(" ".join(sorted(m for m in sys.modules if m.startswith(("sqlalchemy.dialects.", "sqlite3")))))
"""
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    backend = make_url(database_url).get_backend_name()
    assert f"sqlalchemy.dialects.{backend}" in loaded
    others = tuple(f"sqlalchemy.dialects.{name}" for name in ("sqlite", "mysql", "postgresql"))
    assert [m for m in loaded if m.startswith(others) and backend not in m] == []
    assert ("sqlite3" in loaded) == (backend == "sqlite")


@pytest.mark.parametrize(
    ("mysqlclient", "driver"), [(True, "MySQLdb"), (False, "pymysql")], ids=["mysqlclient", "none"]
)
def test_a_mysql_url_naming_no_driver_takes_mysqlclient_where_installed_else_pymysql(
    server_databases: dict[str, str], tmp_path: Path, mysqlclient: bool, driver: str
) -> None:
    mariadb = prepared_database("mariadb", tmp_path, server_databases)
    url = make_url(mariadb).set(drivername="mysql").render_as_string(False)
    script = f"""
import sys
if not {mysqlclient}:
    sys.modules["MySQLdb"] = None  # as where mysqlclient is not installed
from batchjob.model import NewJob
from batchjob.store import Store
store = Store({url!r})
(job,) = store.enqueue([NewJob(command=["x"], tags=["第六竹石"])])
print(store.get(job.id).tags[0], " ".join(m for m in ("MySQLdb", "pymysql") if sys.modules.get(m)))
store.close()
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["第六竹石", driver]


def test_init_is_idempotent_and_safe_to_run_concurrently(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        results = pool.map(_init, [url] * 4)
    latest = migrations.LATEST_VERSION
    # Each step is its own transaction: one init may apply the first and another the next.
    assert [start for start, _ in results].count(0) == 1
    assert [end for _, end in results] == [latest] * 4
    engine = create_engine(url)
    with engine.connect() as conn:
        applied = conn.execute(text("SELECT version FROM batch_job_schema ORDER BY version"))
        assert applied.scalars().all() == list(range(1, latest + 1))  # each step once
    engine.dispose()


def _init(url: str) -> tuple[int, int]:
    return Store(url).upgrade_schema()


def test_init_rebuilds_an_earlier_versions_indexes_over_only_the_rows_that_set_their_column(
    store: Store, database_url: str
) -> None:
    """A new job sets none of these columns: on SQLite and PostgreSQL its INSERT skips their
    indexes. MariaDB has no partial index and keeps indexing every row."""
    engine = create_engine(database_url)
    table = schema.jobs.name
    (held,) = store.enqueue([NewJob(command=["x"], unique_key="k", concurrency_key="c")])
    try:
        with engine.begin() as conn:  # the indexes and version an earlier batchjob left
            for index in schema.PARTIAL_INDEXES:
                where_it_is = f" ON {table}" if engine.dialect.name in ("mysql", "mariadb") else ""
                conn.execute(text(f"DROP INDEX {index.name}{where_it_is}"))
                columns = ", ".join(column.name for column in index.columns)
                unique = "UNIQUE " if index.unique else ""
                conn.execute(text(f"CREATE {unique}INDEX {index.name} ON {table} ({columns})"))
            conn.execute(text("DELETE FROM batch_job_schema WHERE version >= 3"))
        assert Store(database_url).upgrade_schema() == (2, migrations.LATEST_VERSION)
    finally:
        Store(database_url).upgrade_schema()
    with engine.connect() as conn:
        conditions = {
            index["name"]: str(
                index.get("dialect_options", {}).get(f"{engine.dialect.name}_where", "")
            )
            for index in inspect(conn).get_indexes(table)
        }
    engine.dispose()
    partial = {index.name: index.info[schema.ONLY_WHERE_SET] for index in schema.PARTIAL_INDEXES}
    if engine.dialect.name in ("mysql", "mariadb"):
        assert {name: conditions[name] for name in partial} == dict.fromkeys(partial, "")
    else:
        assert len(partial) == 4
        for name, column in partial.items():
            assert conditions[name].replace('"', "").lower() in (
                f"{column} is not null",
                f"({column} is not null)",
            ), (name, conditions[name])
    with pytest.raises(DuplicateJob):  # the key is still held, by the job stored before
        store.enqueue([NewJob(command=["y"], unique_key="k")])
    (claimed,) = store.claim("w", None, 5, 30)
    assert claimed.job.id == held.id
    assert store.finish(claimed.lease, Outcome(JobStatus.COMPLETED, exit_code=0))
    assert store.enqueue([NewJob(command=["y"], unique_key="k")])[0].unique_key == "k"


def test_init_drops_an_earlier_versions_index_of_jobs_by_status_and_start(
    store: Store, database_url: str
) -> None:
    """Every job entered it twice for one query of a few rows; the health report's running
    jobs are still there, oldest first."""
    engine = create_engine(database_url)
    with engine.begin() as conn:  # the index and version an earlier batchjob left
        migrations.RUNNING_START_INDEX.create(conn)
        conn.execute(text("DELETE FROM batch_job_schema WHERE version >= 4"))
    upgrading = Store(database_url)
    assert upgrading.upgrade_schema() == (3, migrations.LATEST_VERSION)
    upgrading.close()
    with engine.connect() as conn:
        names = {index["name"] for index in inspect(conn).get_indexes(schema.jobs.name)}
    engine.dispose()
    assert migrations.RUNNING_START_INDEX.name not in names
    assert "ix_batch_job_queue_claim" in names
    store.enqueue([NewJob(command=["first"]), NewJob(command=["second"]), NewJob(command=["x"])])
    (older,) = store.claim("w", None, 1, 30)
    time.sleep(0.01)
    (newer,) = store.claim("w", None, 1, 30)
    running = store.health_report()["running_jobs"]
    assert [row["id"] for row in running] == [older.job.id, newer.job.id]


def test_run_at_in_the_future_is_not_due(store: Store) -> None:
    future = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)
    (job,) = store.enqueue([NewJob(command=["x"], run_at=future)])
    assert abs(store.get(job.id).run_at - future) < timedelta(milliseconds=2)
    assert store.claim("w", None, 5, 30) == []


def test_a_job_that_keeps_losing_its_worker_fails_as_a_poison_pill(store: Store) -> None:
    (job,) = store.enqueue([NewJob(command=["crash-the-worker"], max_attempts=10)])
    for _ in range(3):
        assert store.claim("w", None, 1, lease_timeout=0.1)
        time.sleep(0.3)
        store.rescue_expired(max_lost_attempts=3)
    failed = store.get(job.id)
    assert failed.status == JobStatus.FAILED
    assert failed.failure_reason == FailureReason.WORKER_LOST
    assert (failed.attempt, failed.lost_attempts) == (3, 3)
    assert "poison pill" in (failed.error_summary or "")


def test_release_puts_a_job_back_without_using_an_attempt(store: Store) -> None:
    (job,) = store.enqueue([NewJob(command=["x"])])
    (claimed,) = store.claim("w", None, 1, 30)
    assert store.release(claimed.lease, "worker shutting down")
    released = store.get(job.id)
    assert (released.status, released.attempt) == (JobStatus.PENDING, 0)
    assert store.release(claimed.lease, "again") is False
    assert store.claim("w", None, 1, 30)[0].job.attempt == 1
