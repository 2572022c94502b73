"""The storage contract, written once against the interface.

``storage`` is parametrised by backend; a new backend (PostgreSQL) adds a
parameter and inherits every test. Time is injected: nothing here waits.
"""

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone

import pytest

from queuectl.config import Home
from queuectl.errors import DuplicateJobError, InvalidTransitionError, JobNotFoundError, StorageError
from queuectl.jobs import RETRYABLE_STATES, AttemptResult, JobState
from queuectl.specs import parse_job_spec
from queuectl.storage import open_storage

T0 = 1_800_000_000.0
LEASE = 30.0
OK = AttemptResult(succeeded=True, exit_code=0, error_message=None, stdout_tail="out", stderr_tail="")
BOOM = AttemptResult(succeeded=False, exit_code=1, error_message="Exit code 1: boom", stdout_tail="", stderr_tail="boom")

BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
def storage(request, tmp_path, monkeypatch):
    monkeypatch.delenv("QUEUECTL_DB", raising=False)
    store = open_storage(Home(str(tmp_path)))
    yield store
    store.close()


def make(job_id, now=T0, **fields):
    return parse_job_spec(dict(fields, id=job_id, command=fields.get("command", "true")), now=now, default_max_retries=3, default_cwd=None)


def add(storage, *jobs):
    storage.add_jobs(list(jobs))


class TestEnqueue:
    def test_added_job_can_be_read_back(self, storage):
        add(storage, make("a", priority=4, env={"K": "v"}, timeout=2.5))
        job = storage.get("a")
        assert (job.state, job.priority, job.env, job.timeout, job.attempts) == (JobState.PENDING, 4, {"K": "v"}, 2.5, 0)

    def test_duplicate_id_is_refused(self, storage):
        add(storage, make("a"))
        with pytest.raises(DuplicateJobError, match="job 'a' already exists"):
            add(storage, make("a"))

    def test_batch_is_all_or_nothing(self, storage):
        add(storage, make("taken"))
        with pytest.raises(DuplicateJobError):
            add(storage, make("new-1"), make("taken"), make("new-2"))
        assert [j.id for j in storage.list_jobs()] == ["taken"]

    def test_unknown_id(self, storage):
        with pytest.raises(JobNotFoundError, match="job 'nope' not found"):
            storage.get("nope")


class TestClaim:
    def test_nothing_to_claim(self, storage):
        assert storage.claim("w1", T0, LEASE) is None

    def test_claim_marks_processing_with_a_lease(self, storage):
        add(storage, make("a"))
        job = storage.claim("w1", T0 + 1, LEASE)
        assert (job.id, job.state, job.attempts, job.worker_id) == ("a", JobState.PROCESSING, 1, "w1")
        assert job.lease_expires_at == T0 + 1 + LEASE
        assert storage.claim("w2", T0 + 1, LEASE) is None

    def test_priority_then_fifo(self, storage):
        add(storage, make("low-old", now=T0, priority=0), make("high", now=T0 + 2, priority=5))
        add(storage, make("low-new", now=T0 + 1, priority=0), make("mid", now=T0 + 3, priority=1))
        add(storage, make("same-time-1", now=T0), make("same-time-2", now=T0))
        order = []
        while (job := storage.claim("w", T0 + 10, LEASE)) is not None:
            order.append(job.id)
        assert order == ["high", "mid", "low-old", "same-time-1", "same-time-2", "low-new"]

    def test_future_jobs_wait_for_their_time(self, storage):
        add(storage, make("later", delay=60), make("now"))
        assert storage.claim("w", T0, LEASE).id == "now"
        assert storage.claim("w", T0 + 59, LEASE) is None
        assert storage.next_due_at() == T0 + 60
        assert storage.claim("w", T0 + 60, LEASE).id == "later"
        assert storage.next_due_at() is None


class TestOutcomes:
    def test_complete(self, storage):
        add(storage, make("a"))
        job = storage.claim("w", T0, LEASE)
        assert storage.complete(job, OK, T0 + 2)
        done = storage.get("a")
        assert (done.state, done.exit_code, done.finished_at, done.lease_expires_at) == (JobState.COMPLETED, 0, T0 + 2, None)
        [attempt] = storage.attempts("a")
        assert (attempt.number, attempt.worker_id, attempt.exit_code, attempt.stdout_tail) == (1, "w", 0, "out")
        assert attempt.started_at == T0 and attempt.finished_at == T0 + 2

    def test_retry_later_then_claim_again(self, storage):
        add(storage, make("a"))
        job = storage.claim("w", T0, LEASE)
        assert storage.retry_later(job, BOOM, T0 + 1, retry_at=T0 + 3)
        failed = storage.get("a")
        assert (failed.state, failed.error_message, failed.next_run_at) == (JobState.FAILED, "Exit code 1: boom", T0 + 3)
        assert storage.claim("w", T0 + 2.9, LEASE) is None
        again = storage.claim("w", T0 + 3, LEASE)
        assert (again.id, again.attempts) == ("a", 2)

    def test_bury_and_revive(self, storage):
        add(storage, make("a"))
        job = storage.claim("w", T0, LEASE)
        assert storage.bury(job, BOOM, T0 + 1)
        assert storage.get("a").state is JobState.DLQ
        revived = storage.revive("a", T0 + 5)
        assert (revived.state, revived.attempts, revived.error_message, revived.next_run_at) == (JobState.PENDING, 0, None, T0 + 5)
        again = storage.claim("w", T0 + 5, LEASE)
        assert again.attempts == 1
        assert [a.number for a in storage.attempts("a")] == [1, 1]

    def test_revive_refuses_jobs_not_in_dlq(self, storage):
        add(storage, make("a"))
        with pytest.raises(InvalidTransitionError, match="job 'a' is not in the DLQ \\(state: pending\\)"):
            storage.revive("a", T0)
        with pytest.raises(JobNotFoundError):
            storage.revive("missing", T0)
        assert storage.get("a").state is JobState.PENDING

    def test_counts_cover_every_state(self, storage):
        add(storage, make("a"), make("b"), make("c"))
        storage.complete(storage.claim("w", T0, LEASE), OK, T0)
        storage.claim("w", T0, LEASE)
        counts = storage.count_by_state()
        assert set(counts) == set(JobState)
        assert (counts[JobState.PENDING], counts[JobState.PROCESSING], counts[JobState.COMPLETED]) == (1, 1, 1)

    def test_list_filters_and_limits(self, storage):
        add(storage, *(make(f"j{i}", now=T0 + i) for i in range(5)))
        storage.complete(storage.claim("w", T0 + 9, LEASE), OK, T0 + 9)
        assert [j.id for j in storage.list_jobs([JobState.PENDING], limit=2)] == ["j1", "j2"]
        assert [j.id for j in storage.list_jobs([JobState.COMPLETED])] == ["j0"]


class TestBatch:
    def test_record_and_claim_commit_together(self, storage):
        add(storage, make("a"), make("b"))
        first = storage.claim("w", T0, LEASE)
        with storage.batch():
            assert storage.complete(first, OK, T0 + 1)
            second = storage.claim("w", T0 + 1, LEASE)
        assert (storage.get("a").state, second.id, storage.get("b").state) == (JobState.COMPLETED, "b", JobState.PROCESSING)

    def test_a_failure_inside_a_batch_undoes_all_of_it(self, storage):
        add(storage, make("a"), make("b"))
        first = storage.claim("w", T0, LEASE)
        with pytest.raises(RuntimeError):
            with storage.batch():
                storage.complete(first, OK, T0 + 1)
                storage.claim("w", T0 + 1, LEASE)
                raise RuntimeError("crash between the verbs")
        assert storage.get("a").state is JobState.PROCESSING
        assert storage.get("b").state is JobState.PENDING
        assert [a.finished_at for a in storage.attempts("a")] == [None]


class TestWorkerRegistry:
    def test_register_list_unregister(self, storage):
        storage.register_worker("worker-1", 1, "host", 100.0, T0, "addr")
        assert storage.list_workers() == [
            {"worker_id": "worker-1", "pid": 1, "hostname": "host", "process_started_at": 100.0, "started_at": T0, "wake_address": "addr"}
        ]
        storage.unregister_worker("worker-1")
        assert storage.list_workers() == []


# --- SQLite specifics ----------------------------------------------------------


def test_schema_is_versioned_and_reopening_is_idempotent(tmp_path):
    home = Home(str(tmp_path))
    open_storage(home).close()
    open_storage(home).close()
    conn = sqlite3.connect(home.db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
    assert conn.execute("PRAGMA application_id").fetchone()[0] == 0x5143544C
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    home = Home(str(tmp_path))
    with open(home.db_path, "w") as handle:
        handle.write("these are my notes, not a database\n" * 100)
    with pytest.raises(StorageError, match="is not a queuectl database"):
        open_storage(home)
    assert open(home.db_path).read().startswith("these are my notes")
    assert os.listdir(home.path) == ["queuectl.db"]  # no lock file left beside it


def test_someone_elses_sqlite_database_is_refused(tmp_path):
    home = Home(str(tmp_path))
    conn = sqlite3.connect(home.db_path)
    conn.execute("CREATE TABLE recipes (name TEXT)")
    conn.commit()
    conn.close()
    before = open(home.db_path, "rb").read()
    with pytest.raises(StorageError, match="is not a queuectl database"):
        open_storage(home)
    assert open(home.db_path, "rb").read() == before  # not even switched to WAL
    assert os.listdir(home.path) == ["queuectl.db"]
    tables = sqlite3.connect(home.db_path).execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    assert tables == [("recipes",)]


def test_queuectl_db_env_selects_the_file(tmp_path, monkeypatch):
    target = tmp_path / "elsewhere" / "q.db"
    target.parent.mkdir()
    monkeypatch.setenv("QUEUECTL_DB", f"sqlite:///{target}")
    with open_storage(Home(str(tmp_path / "home"))) as store:
        store.add_jobs([make("a")])
    assert target.exists() and not (tmp_path / "home" / "queuectl.db").exists()


def test_claim_query_walks_the_claim_index(tmp_path):
    from queuectl.storage.sqlite_sql import SQL_CLAIM_NEXT

    home = Home(str(tmp_path))
    open_storage(home).close()
    conn = sqlite3.connect(home.db_path)
    plan = conn.execute("EXPLAIN QUERY PLAN " + SQL_CLAIM_NEXT, {"worker": "w", "now": T0, "lease": T0}).fetchall()
    details = " | ".join(row[-1] for row in plan)
    assert "jobs_claim_order" in details, details
    assert "TEMP B-TREE" not in details, details


RACER = textwrap.dedent(
    """
    import sys, time
    from queuectl.config import Home
    from queuectl.storage import open_storage
    store = open_storage(Home(sys.argv[1]), durable=False)
    got = []
    while True:
        job = store.claim(sys.argv[2], time.time(), 60)
        if job is None:
            break
        got.append(job.id)
        store.complete(job, __import__("queuectl.jobs").jobs.AttemptResult(True, 0, None), time.time())
    print("\\n".join(got))
    """
)


def test_racing_processes_claim_each_job_exactly_once(tmp_path):
    home = Home(str(tmp_path))
    with open_storage(home) as store:
        store.add_jobs([make(f"job-{i}", now=time.time()) for i in range(400)])
    env = dict(os.environ)
    env.pop("QUEUECTL_DB", None)
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, home.path, f"w{n}"], stdout=subprocess.PIPE, text=True, env=env)
        for n in range(4)
    ]
    claimed = []
    for racer in racers:
        out, _ = racer.communicate(timeout=60)
        assert racer.returncode == 0
        claimed.extend(line for line in out.splitlines() if line)
    assert sorted(claimed) == sorted(f"job-{i}" for i in range(400))
    assert len(set(claimed)) == len(claimed)


# --- scheduling and control (issue 4) ------------------------------------------


class TestScheduling:
    def test_delay_counts_as_scheduled_until_due(self, storage):
        add(storage, make("later", delay=30))
        assert storage.next_due_at() == T0 + 30
        assert storage.count_scheduled(T0 + 29.999) == 1
        assert storage.claim("w", T0 + 29.999, LEASE) is None
        assert storage.count_scheduled(T0 + 30) == 0
        assert storage.claim("w", T0 + 30, LEASE).id == "later"

    def test_run_at_with_an_offset_is_the_same_instant_in_utc(self, storage):
        # 15:30 at +05:30 is 10:00 UTC; the job must not run a moment before.
        due = datetime(2030, 1, 2, 10, 0, tzinfo=timezone.utc).timestamp()
        add(storage, make("ist", run_at="2030-01-02T15:30:00+05:30"))
        assert storage.get("ist").next_run_at == due
        assert storage.claim("w", due - 0.001, LEASE) is None
        assert storage.claim("w", due, LEASE).id == "ist"

    def test_count_scheduled_respects_a_state_filter(self, storage):
        add(storage, make("a", delay=10), make("b", delay=10))
        failed = storage.claim("w", T0 + 10, LEASE)
        storage.retry_later(failed, BOOM, T0 + 11, retry_at=T0 + 99)
        assert storage.count_scheduled(T0 + 11) == 1  # "a" waits for its retry; "b" is due
        assert storage.count_scheduled(T0 + 11, [JobState.FAILED]) == 1
        assert storage.count_scheduled(T0 + 11, [JobState.COMPLETED]) == 0


class TestCancel:
    def test_cancelled_waiting_jobs_are_never_claimed(self, storage):
        add(storage, make("retrying"), make("pending"))
        claimed = storage.claim("w", T0, LEASE)
        storage.retry_later(claimed, BOOM, T0 + 1, retry_at=T0 + 10)
        assert storage.cancel("retrying", T0 + 2).state == JobState.FAILED
        assert storage.cancel("pending", T0 + 2).state == JobState.PENDING
        for job_id in ("retrying", "pending"):
            job = storage.get(job_id)
            assert (job.state, job.finished_at, job.error_message) == (JobState.CANCELLED, T0 + 2, "Cancelled")
        assert storage.claim("w", T0 + 100, LEASE) is None
        assert storage.next_due_at() is None

    def test_cancelling_a_running_job_ends_its_claim(self, storage):
        add(storage, make("run"))
        job = storage.claim("w", T0, LEASE)
        assert storage.holds_claim(job)
        before = storage.cancel("run", T0 + 1)
        assert (before.state, before.worker_id) == (JobState.PROCESSING, "w")
        assert not storage.holds_claim(job)
        assert not storage.renew_lease(job, T0 + 2, LEASE)
        # The worker's late result can't turn the cancellation into a retry or a success.
        assert not storage.retry_later(job, BOOM, T0 + 2, retry_at=T0 + 3)
        assert not storage.complete(job, OK, T0 + 2)
        storage.keep_output(job, AttemptResult(False, None, "Stopped: cancelled", "partial out", "partial err"))
        cancelled = storage.get("run")
        assert (cancelled.state, cancelled.attempts) == (JobState.CANCELLED, 1)
        [attempt] = storage.attempts("run")
        assert (attempt.finished_at, attempt.error_message) == (T0 + 1, "Cancelled while running")
        assert (attempt.stdout_tail, attempt.stderr_tail) == ("partial out", "partial err")
        # Nothing for the reaper to fail: the job is already finished.
        assert storage.reap_expired(T0 + 1000, lambda j: T0 + 1000) == []

    def test_a_cancelled_run_blocks_retry_until_its_tree_is_stopped(self, storage):
        add(storage, make("run"))
        job = storage.claim("w", T0, LEASE)
        storage.cancel("run", T0 + 1)
        # Until the worker confirms its processes are gone, a retry would overlap them.
        with pytest.raises(InvalidTransitionError, match="still being stopped by w"):
            storage.revive("run", T0 + 2, RETRYABLE_STATES)
        assert storage.stopping_cancelled(T0 + 2) == []
        # Once the lease ran out no worker is stopping it: say who will.
        with pytest.raises(InvalidTransitionError, match="its worker w was lost .* the next worker to start stops"):
            storage.revive("run", T0 + LEASE + 1, RETRYABLE_STATES)
        assert storage.release_cancelled(job)
        assert storage.revive("run", T0 + 3, RETRYABLE_STATES).state is JobState.PENDING

    def test_a_cancelled_run_whose_worker_died_is_released_by_the_reaper(self, storage):
        add(storage, make("run"))
        job = storage.claim("w", T0, LEASE)
        storage.cancel("run", T0 + 1)
        assert storage.stopping_cancelled(T0 + LEASE - 1) == []
        [abandoned] = storage.stopping_cancelled(T0 + LEASE + 1)
        assert abandoned.claim_token == job.claim_token
        assert storage.release_cancelled(abandoned)
        assert storage.get("run").lease_expires_at is None

    def test_a_lapsed_lease_cannot_be_renewed(self, storage):
        add(storage, make("a"))
        job = storage.claim("w", T0, LEASE)
        assert not storage.renew_lease(job, T0 + LEASE + 0.5, LEASE)
        assert storage.get("a").lease_expires_at == T0 + LEASE

    def test_same_worker_name_on_another_host_cannot_fence_in(self, storage):
        # Two containers can both run "worker-1"; the claim time tells their claims apart.
        add(storage, make("a", max_retries=1))
        stale = storage.claim("worker-1", T0, LEASE)
        storage.reap_expired(T0 + LEASE + 1, lambda j: None)
        storage.revive("a", T0 + LEASE + 2)
        fresh = storage.claim("worker-1", T0 + LEASE + 3, LEASE)
        assert (fresh.attempts, fresh.worker_id) == (stale.attempts, stale.worker_id)
        assert not storage.complete(stale, OK, T0 + LEASE + 4)
        assert storage.get("a").state is JobState.PROCESSING
        assert storage.complete(fresh, OK, T0 + LEASE + 5)

    @pytest.mark.parametrize("final", ["completed", "dlq", "cancelled"])
    def test_a_finished_job_cannot_be_cancelled(self, storage, final):
        add(storage, make("done", max_retries=1))
        job = storage.claim("w", T0, LEASE)
        if final == "completed":
            storage.complete(job, OK, T0 + 1)
        elif final == "dlq":
            storage.bury(job, BOOM, T0 + 1)
        else:
            storage.cancel("done", T0 + 1)
        before = storage.get("done")
        with pytest.raises(InvalidTransitionError, match=f"already finished \\(state: {final}\\)"):
            storage.cancel("done", T0 + 2)
        assert storage.get("done") == before

    def test_unknown_job(self, storage):
        with pytest.raises(JobNotFoundError):
            storage.cancel("ghost", T0)


class TestRetryAndPause:
    def test_retry_accepts_failed_cancelled_and_dead_jobs_only(self, storage):
        add(storage, *[make(name, max_retries=1) for name in ("failed", "cancelled", "dead", "done", "waiting")])
        storage.retry_later(storage.claim("w", T0, LEASE), BOOM, T0, retry_at=T0 + 500)
        storage.cancel("cancelled", T0)
        storage.bury(storage.claim("w", T0, LEASE), BOOM, T0)
        storage.complete(storage.claim("w", T0, LEASE), OK, T0)
        assert {j.id: j.state.value for j in storage.list_jobs()} == {
            "failed": "failed", "cancelled": "cancelled", "dead": "dlq", "done": "completed", "waiting": "pending",
        }
        for job_id in ("failed", "cancelled", "dead"):
            job = storage.revive(job_id, T0 + 1, RETRYABLE_STATES)
            assert (job.state, job.attempts, job.next_run_at, job.error_message) == (JobState.PENDING, 0, T0 + 1, None)
        for job_id in ("done", "waiting"):
            before = storage.get(job_id)
            with pytest.raises(InvalidTransitionError, match="only failed, cancelled or dlq jobs can be retried"):
                storage.revive(job_id, T0 + 1, RETRYABLE_STATES)
            assert storage.get(job_id) == before
        # Revived jobs are due at once and keep their history.
        assert storage.claim("w", T0 + 1, LEASE) is not None
        assert len(storage.attempts("dead")) == 1

    def test_revive_all_moves_every_dead_job(self, storage):
        add(storage, *[make(f"d{i}", max_retries=1) for i in range(3)], make("other", now=T0 + 1))
        for _ in range(3):
            storage.bury(storage.claim("w", T0, LEASE), BOOM, T0)
        assert storage.revive_all(T0 + 5) == 3
        assert storage.revive_all(T0 + 6) == 0
        assert storage.count_by_state()[JobState.PENDING] == 4

    def test_pause_stops_claims_and_resume_releases_them(self, storage):
        add(storage, make("a"), make("b", delay=10))
        assert storage.paused_since() is None
        assert storage.set_paused(True, T0) is True
        assert storage.set_paused(True, T0 + 1) is False
        assert storage.paused_since() == T0
        assert storage.claim("w", T0 + 20, LEASE) is None
        # An idle worker must not spin on a due job it may not take.
        assert storage.next_due_at() is None
        assert storage.set_paused(False, T0 + 21) is True
        assert storage.set_paused(False, T0 + 22) is False
        assert storage.next_due_at() == T0
        assert [storage.claim("w", T0 + 20, LEASE).id for _ in range(2)] == ["a", "b"]


def test_a_version_1_database_is_migrated_in_place(tmp_path):
    from queuectl.storage.sqlite_sql import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION

    home = Home(str(tmp_path))
    conn = sqlite3.connect(home.db_path, isolation_level=None)
    conn.executescript(MIGRATIONS[1])
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO jobs (id, command, state, max_retries, created_at, updated_at, next_run_at)"
        " VALUES ('old', 'true', 'pending', 3, ?, ?, ?)",
        (T0, T0, T0),
    )
    conn.close()

    with open_storage(home) as store:
        assert store.get("old").state == JobState.PENDING
        assert store.claim("w", T0, LEASE).id == "old"
    conn = sqlite3.connect(home.db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"attempts_finished", "jobs_created", "jobs_claim_order"} <= indexes
    conn.close()
    # Opening it again changes nothing.
    with open_storage(home) as store:
        assert store.get("old").state == JobState.PROCESSING


class TestListing:
    @pytest.fixture
    def jobs(self, storage):
        # created order a, b, c, d; priorities and run times differ from that order.
        add(
            storage,
            make("c", now=T0 + 0, priority=1, delay=30),
            make("a", now=T0 + 1, priority=5),
            make("d", now=T0 + 2, priority=5, delay=10),
            make("b", now=T0 + 3, priority=9),
        )
        storage.complete(storage.claim("w", T0 + 4, LEASE), OK, T0 + 50)  # "b", changed last
        return storage

    @pytest.mark.parametrize(
        "sort, natural",
        [
            ("created", ["c", "a", "d", "b"]),
            ("priority", ["b", "a", "d", "c"]),
            ("next_run", ["a", "b", "d", "c"]),
            ("updated", ["b", "d", "a", "c"]),
            ("id", ["a", "b", "c", "d"]),
        ],
    )
    def test_sorts_and_their_reverse(self, jobs, sort, natural):
        assert [j.id for j in jobs.iter_jobs(sort=sort)] == natural
        assert [j.id for j in jobs.iter_jobs(sort=sort, reverse=True)] == natural[::-1]

    def test_filters_limit_and_laziness(self, jobs):
        rows = jobs.iter_jobs([JobState.PENDING, JobState.PENDING], limit=2, sort="priority")
        assert not isinstance(rows, list)
        assert next(rows).id == "a"
        assert [j.id for j in rows] == ["d"]
        assert [j.id for j in jobs.iter_jobs([JobState.COMPLETED, JobState.FAILED])] == ["b"]


class TestPurge:
    def build(self, storage):
        """Finished jobs of every kind at known ages, and live jobs that must survive."""
        add(storage, *[make(job_id) for job_id in ("old-done", "new-done", "old-dead", "old-cancelled", "running", "failed", "pending")])
        storage.complete(storage.claim("w", T0, LEASE), OK, T0 + 10)  # old-done
        storage.complete(storage.claim("w", T0, LEASE), OK, T0 + 900)  # new-done
        storage.retry_later(storage.claim("w", T0, LEASE), BOOM, T0 + 1, retry_at=T0 + 2)  # old-dead, 1st try
        storage.bury(storage.claim("w", T0 + 2, LEASE), BOOM, T0 + 20)  # old-dead, 2nd try
        storage.cancel("old-cancelled", T0 + 30)
        storage.claim("w", T0 + 30, LEASE)  # running
        storage.retry_later(storage.claim("w", T0 + 30, LEASE), BOOM, T0 + 31, retry_at=T0 + 999)  # failed

    def test_purges_exactly_the_states_and_ages_asked_for(self, storage):
        self.build(storage)
        assert {j.id: j.state.value for j in storage.list_jobs()} == {
            "old-done": "completed", "new-done": "completed", "old-dead": "dlq", "old-cancelled": "cancelled",
            "running": "processing", "failed": "failed", "pending": "pending",
        }
        old_done_attempts = [a.id for a in storage.attempts("old-done")]
        dead_attempts = [a.id for a in storage.attempts("old-dead")]
        assert len(dead_attempts) == 2

        result = storage.purge([JobState.COMPLETED], finished_before=T0 + 500)
        assert (result.jobs, result.attempt_ids) == (1, old_done_attempts)
        assert [j.id for j in storage.list_jobs()] == ["new-done", "old-dead", "old-cancelled", "running", "failed", "pending"]

        result = storage.purge([JobState.DLQ, JobState.CANCELLED])
        assert (result.jobs, sorted(result.attempt_ids)) == (2, sorted(dead_attempts))
        assert [j.id for j in storage.list_jobs()] == ["new-done", "running", "failed", "pending"]
        with pytest.raises(JobNotFoundError):
            storage.attempts("old-dead")
        assert storage.purge([JobState.COMPLETED], finished_before=T0 + 500).jobs == 0

    def test_attempt_rows_go_with_their_jobs(self, storage):
        add(storage, make("a"), make("b"))
        for _ in range(2):
            storage.complete(storage.claim("w", T0, LEASE), OK, T0)
        assert storage.stats(T0).attempts_total == 2
        storage.purge([JobState.COMPLETED])
        assert storage.stats(T0).attempts_total == 0

    def test_purge_keeps_a_cancelled_job_until_its_run_is_stopped(self, storage):
        add(storage, make("run"))
        job = storage.claim("w", T0, LEASE)
        storage.cancel("run", T0 + 1)
        assert storage.purge([JobState.CANCELLED]).jobs == 0
        assert storage.get("run").state is JobState.CANCELLED
        assert storage.release_cancelled(job)
        assert storage.purge([JobState.CANCELLED]).jobs == 1

    def test_big_purges_go_in_batches(self, storage, monkeypatch):
        import queuectl.storage.sqlite as sqlite_backend

        monkeypatch.setattr(sqlite_backend, "PURGE_BATCH", 3)
        add(storage, *[make(f"j{i}") for i in range(8)])
        for _ in range(7):
            storage.complete(storage.claim("w", T0, LEASE), OK, T0)
        result = storage.purge([JobState.COMPLETED])
        assert (result.jobs, len(result.attempt_ids)) == (7, 7)
        assert [j.id for j in storage.list_jobs()] == ["j7"]


class TestStats:
    def build(self, storage):
        """A queue whose numbers are known: see the expectations in the test."""
        add(storage, make("c2", now=T0 - 7300))
        storage.retry_later(storage.claim("w1", T0 - 7202, LEASE), BOOM, T0 - 7200, retry_at=T0 - 1803)  # 2 s
        storage.complete(storage.claim("w1", T0 - 1803, LEASE), OK, T0 - 1800)  # 3 s
        add(storage, make("c1", now=T0 - 40))
        storage.complete(storage.claim("w1", T0 - 31, LEASE), OK, T0 - 30)  # 1 s
        add(storage, make("d1", now=T0 - 610, max_retries=1))
        storage.bury(storage.claim("w2", T0 - 604, LEASE), BOOM, T0 - 600)  # 4 s
        add(storage, make("r1", now=T0 - 20))
        storage.claim("w2", T0 - 10, LEASE)
        add(storage, make("x1", now=T0 - 5))
        storage.cancel("x1", T0 - 5)
        add(storage, make("p1", now=T0 - 100), make("p2", now=T0 - 1, delay=3600))

    def test_numbers_of_a_known_queue(self, storage):
        self.build(storage)
        stats = storage.stats(T0)
        assert {state.value: n for state, n in stats.counts.items()} == {
            "pending": 2, "processing": 1, "completed": 2, "failed": 0, "dlq": 1, "cancelled": 1,
        }
        assert stats.scheduled == 1
        assert stats.success_rate == pytest.approx(2 / 3)
        assert (stats.attempts_total, stats.jobs_attempted, stats.max_attempts_per_job) == (5, 4, 2)
        assert stats.attempts_per_job == 1.25
        # Finished run times 1, 2, 3, 4 s: nearest-rank p50 is 2 s, p95 is 4 s.
        assert (stats.finished_attempts, stats.run_time_p50, stats.run_time_p95, stats.run_time_max) == (4, 2, 4, 4)
        assert (stats.completed_last_minute, stats.completed_last_hour) == (1, 2)
        assert (stats.oldest_waiting_id, stats.oldest_waiting_age) == ("p1", 100)
        assert [(t.worker_id, t.attempts, t.succeeded, t.failed, t.running) for t in stats.workers] == [
            ("w1", 3, 2, 1, 0),
            ("w2", 2, 0, 1, 1),
        ]

    def test_windows_move_with_now(self, storage):
        self.build(storage)
        later = storage.stats(T0 + 1000)
        assert (later.completed_last_minute, later.completed_last_hour) == (0, 2)
        assert (later.oldest_waiting_id, later.oldest_waiting_age, later.scheduled) == ("p1", 1100, 1)
        much_later = storage.stats(T0 + 3600)
        assert (much_later.completed_last_minute, much_later.completed_last_hour) == (0, 0)
        assert much_later.scheduled == 0  # p2 is due by then

    def test_an_empty_queue(self, storage):
        stats = storage.stats(T0)
        assert stats.success_rate is None and stats.attempts_per_job is None
        assert (stats.run_time_p50, stats.run_time_p95, stats.run_time_max) == (None, None, None)
        assert (stats.oldest_waiting_id, stats.oldest_waiting_age, stats.workers) == (None, None, [])


def test_writers_take_turns_on_a_side_lock_and_work_without_it(tmp_path):
    home = Home(str(tmp_path / "with"))
    with open_storage(home) as store:
        store.add_jobs([make("a")])
    assert os.path.exists(home.db_path + "-writer.lock")
    # Where the lock file can't be opened (here a directory is in its way),
    # writers fall back to SQLite's own locking.
    blocked = Home(str(tmp_path / "without"))
    os.makedirs(blocked.db_path + "-writer.lock")
    with open_storage(blocked) as store:
        store.add_jobs([make("a")])
        assert store.get("a").state is JobState.PENDING


def test_a_driver_error_in_a_transaction_rolls_back_and_frees_the_turn(tmp_path):
    home = Home(str(tmp_path))
    with open_storage(home) as store, open_storage(home) as other:
        store.add_jobs([make("a")])
        with pytest.raises(StorageError, match="no such table"):
            with store.transaction() as conn:
                conn.execute("UPDATE jobs SET priority = 9 WHERE id = 'a'")
                conn.execute("SELECT * FROM no_such_table")
        assert store.get("a").priority == 0
        # The writer lock and SQLite's own lock were both let go: another
        # connection writes at once, and this one can start a new transaction.
        other.add_jobs([make("b")])
        with store.transaction() as conn:
            conn.execute("UPDATE jobs SET priority = 5 WHERE id = 'b'")
        assert other.get("b").priority == 5


def test_a_failed_commit_is_rolled_back_and_reported(tmp_path):
    home = Home(str(tmp_path))
    with open_storage(home) as store:
        store.add_jobs([make("a")])
        # A deferred foreign key is checked at COMMIT, so the commit itself fails.
        with pytest.raises(StorageError, match="FOREIGN KEY"):
            with store.transaction() as conn:
                conn.execute("PRAGMA defer_foreign_keys = ON")
                conn.execute("INSERT INTO attempts (job_seq, number, worker_id, started_at) VALUES (999, 1, 'w', 0)")
        assert not store._conn.in_transaction
        assert store.attempts("a") == []
        store.add_jobs([make("b")])
