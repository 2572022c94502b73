"""Leases, fencing and reaping at the storage level, with an injected clock.

Nothing here waits: every time-dependent verb takes ``now``, so expiry is a
matter of passing a later number.
"""

import pytest

from queuectl.jobs import AttemptResult, JobState
from queuectl.specs import parse_job_spec
from queuectl.storage.sqlite import SqliteStorage

T0 = 1_000_000.0
LEASE = 10.0


@pytest.fixture
def storage(tmp_path):
    store = SqliteStorage(str(tmp_path / "queue.db"))
    yield store
    store.close()


def add(storage, job_id, now=T0, **spec):
    job = parse_job_spec(
        dict(spec, id=job_id, command=spec.get("command", "true")),
        now=now,
        default_max_retries=3,
        default_cwd=None,
    )
    storage.add_jobs([job])
    return job


def ok():
    return AttemptResult(succeeded=True, exit_code=0, error_message=None)


def failed():
    return AttemptResult(succeeded=False, exit_code=1, error_message="Exit code 1")


def never_retry(job):
    return None


def retry_in(seconds, now):
    return lambda job: now + seconds


def test_claim_sets_a_lease_from_now(storage):
    add(storage, "a")
    job = storage.claim("w1", T0, LEASE)
    assert job.state is JobState.PROCESSING
    assert job.attempts == 1
    assert job.lease_expires_at == T0 + LEASE
    assert storage.get("a").lease_expires_at == T0 + LEASE


def test_a_lease_is_not_expired_until_it_has_run_out(storage):
    add(storage, "a")
    storage.claim("w1", T0, LEASE)
    assert storage.expired_claims(T0 + LEASE) == []
    assert storage.reap_expired(T0 + LEASE, retry_in(1, T0 + LEASE)) == []
    assert storage.get("a").state is JobState.PROCESSING


def test_an_expired_claim_is_reaped_as_a_failed_attempt(storage):
    add(storage, "a")
    storage.claim("w1", T0, LEASE)
    now = T0 + LEASE + 0.5
    assert [job.id for job in storage.expired_claims(now)] == ["a"]

    reaped = storage.reap_expired(now, retry_in(2, now))

    assert [job.id for job in reaped] == ["a"]
    job = storage.get("a")
    assert job.state is JobState.FAILED
    assert job.attempts == 1
    assert job.next_run_at == now + 2
    assert job.lease_expires_at is None
    assert job.error_message == "Worker w1 was lost (lease expired)"
    (attempt,) = storage.attempts("a")
    assert attempt.finished_at == now
    assert attempt.error_message == "Worker w1 was lost (lease expired)"


def test_a_reaped_job_is_claimable_only_at_its_retry_time(storage):
    add(storage, "a")
    storage.claim("w1", T0, LEASE)
    now = T0 + LEASE + 1
    storage.reap_expired(now, retry_in(4, now))
    assert storage.claim("w2", now + 3.9, LEASE) is None
    again = storage.claim("w2", now + 4, LEASE)
    assert again.id == "a" and again.attempts == 2 and again.worker_id == "w2"


def test_a_reaped_job_without_attempts_left_goes_to_the_dlq(storage):
    add(storage, "a", max_retries=1)
    storage.claim("w1", T0, LEASE)
    (reaped,) = storage.reap_expired(T0 + LEASE + 1, never_retry)
    assert reaped.state is JobState.DLQ
    assert storage.get("a").state is JobState.DLQ


def test_renewal_pushes_the_lease_forward(storage):
    add(storage, "a")
    job = storage.claim("w1", T0, LEASE)
    assert storage.renew_lease(job, T0 + 8, LEASE)
    assert job.lease_expires_at == T0 + 8 + LEASE
    # Past the first lease, but within the renewed one: nothing to reap.
    assert storage.reap_expired(T0 + LEASE + 5, never_retry) == []
    assert storage.get("a").state is JobState.PROCESSING


def test_a_worker_that_keeps_renewing_is_never_reaped(storage):
    add(storage, "a")
    job = storage.claim("w1", T0, LEASE)
    now = T0
    for _ in range(50):  # 50 renewals a third of a lease apart: many leases long
        now += LEASE / 3
        assert storage.renew_lease(job, now, LEASE)
        assert storage.reap_expired(now, never_retry) == []
        assert storage.claim("w2", now, LEASE) is None
    assert storage.complete(job, ok(), now)
    assert storage.get("a").attempts == 1


def test_a_reaped_worker_can_neither_renew_nor_record(storage):
    add(storage, "a")
    stale = storage.claim("w1", T0, LEASE)
    now = T0 + LEASE + 1
    storage.reap_expired(now, retry_in(0, now))

    assert not storage.renew_lease(stale, now, LEASE)
    assert not storage.complete(stale, ok(), now)
    assert not storage.retry_later(stale, failed(), now, now + 5)
    assert not storage.bury(stale, failed(), now)
    job = storage.get("a")
    assert job.state is JobState.FAILED
    assert job.error_message == "Worker w1 was lost (lease expired)"


def test_a_stale_worker_cannot_overwrite_the_newer_attempt(storage):
    add(storage, "a")
    stale = storage.claim("w1", T0, LEASE)
    now = T0 + LEASE + 1
    storage.reap_expired(now, retry_in(0, now))
    fresh = storage.claim("w2", now, LEASE)
    assert fresh.attempts == 2

    # The first worker wakes up and reports: refused, and the newer claim stands.
    assert not storage.complete(stale, ok(), now + 1)
    assert not storage.renew_lease(stale, now + 1, LEASE)
    assert storage.get("a").worker_id == "w2"
    assert storage.get("a").state is JobState.PROCESSING

    assert storage.complete(fresh, ok(), now + 2)
    job = storage.get("a")
    assert job.state is JobState.COMPLETED and job.attempts == 2
    numbers = [(a.number, a.worker_id, a.error_message) for a in storage.attempts("a")]
    assert numbers == [(1, "w1", "Worker w1 was lost (lease expired)"), (2, "w2", None)]


def test_same_worker_id_on_a_later_attempt_is_still_fenced_by_attempt_number(storage):
    # PIDs are reused, so worker ids are too: the attempt number tells claims apart.
    add(storage, "a")
    stale = storage.claim("worker-42", T0, LEASE)
    now = T0 + LEASE + 1
    storage.reap_expired(now, retry_in(0, now))
    fresh = storage.claim("worker-42", now, LEASE)
    assert not storage.complete(stale, ok(), now)
    assert storage.complete(fresh, ok(), now)


def test_reaping_only_touches_expired_claims(storage):
    add(storage, "old", now=T0)
    add(storage, "new", now=T0 + 1)
    storage.claim("w1", T0, LEASE)
    storage.claim("w2", T0 + 5, LEASE)
    now = T0 + LEASE + 1
    assert [job.id for job in storage.expired_claims(now)] == ["old"]
    assert [job.id for job in storage.reap_expired(now, never_retry)] == ["old"]
    assert storage.get("new").state is JobState.PROCESSING


def test_running_attempt_ids_are_those_of_open_claims(storage):
    add(storage, "a")
    add(storage, "b", now=T0 + 1)
    a = storage.claim("w1", T0 + 2, LEASE)
    b = storage.claim("w1", T0 + 2, LEASE)
    assert storage.running_attempt_ids() == {a.attempt_id, b.attempt_id}
    storage.complete(a, ok(), T0 + 3)
    assert storage.running_attempt_ids() == {b.attempt_id}
    storage.reap_expired(T0 + 100, never_retry)
    assert storage.running_attempt_ids() == set()


def test_expired_claims_name_their_open_attempt(storage):
    add(storage, "a")
    claimed = storage.claim("w1", T0, LEASE)
    (expired,) = storage.expired_claims(T0 + LEASE + 1)
    assert expired.attempt_id == claimed.attempt_id
    assert expired.claim_token == claimed.claim_token


def test_commands_commit_durably_and_workers_may_batch(tmp_path):
    # FULL: a commit is on disk before `enqueue` says so. NORMAL (WAL): a
    # power cut may lose the last worker transitions, which only re-runs jobs.
    levels = {}
    for durable in (True, False):
        with SqliteStorage(str(tmp_path / "queue.db"), durable=durable) as store:
            levels[durable] = store._conn.execute("PRAGMA synchronous").fetchone()[0]
            assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert levels == {True: 2, False: 1}
