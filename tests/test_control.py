"""Scheduling and control: priority, delays and run_at, cancel, retry, pause.

Storage-level tests drive the clock through ``now``; the end-to-end tests
run real workers and read what happened from stored timestamps.
"""

import json
import os
import sqlite3
from datetime import datetime, timedelta, timezone

import psutil
import pytest

from conftest import wait_for
from queuectl.errors import InvalidTransitionError, JobNotFoundError
from queuectl.jobs import RETRYABLE_STATES, AttemptResult, JobState, parse_job_spec
from queuectl.storage.sqlite import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, SqliteStorage

T0 = 1_900_000_000.0  # an arbitrary fixed "now" for storage tests
LEASE = 30.0


@pytest.fixture
def store(tmp_path):
    storage = SqliteStorage(str(tmp_path / "queue.db"))
    yield storage
    storage.close()


def make_job(job_id, now=T0, **fields):
    spec = dict(fields, id=job_id, command=fields.get("command", "true"))
    return parse_job_spec(spec, now=now, default_max_retries=3, default_cwd=None)


def ok():
    return AttemptResult(succeeded=True, exit_code=0, error_message=None)


def failure():
    return AttemptResult(succeeded=False, exit_code=1, error_message="Exit code 1")


def parse_iso(text):
    return datetime.fromisoformat(text).timestamp()


def one_error_line(proc, code, *fragments):
    """The command failed with ``code`` and exactly one stderr line naming ``fragments``."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def snapshot(queue):
    """Everything a user can see about the queue's jobs (timestamps included)."""
    status = json.loads(queue.run("status", "--json").stdout)
    status.pop("workers")
    return queue.run("list", "--json").stdout, status


def process_gone(pid):
    # An exited process may linger as a zombie until init reaps it; it is no longer running.
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def read_pid(path):
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


# --- priority and scheduling (storage, injected clock) ------------------------


def test_claim_takes_higher_priority_first_then_fifo(store):
    store.add_jobs([
        make_job("low", priority=1),
        make_job("high-1", now=T0 + 1, priority=9),
        make_job("mid", priority=5),
        make_job("high-2", now=T0 + 2, priority=9),
    ])
    order = [store.claim("w", T0 + 5, LEASE).id for _ in range(4)]
    assert order == ["high-1", "high-2", "mid", "low"]
    assert store.claim("w", T0 + 5, LEASE) is None


def test_delayed_job_is_claimed_only_once_due(store):
    store.add_jobs([make_job("later", delay=30)])
    assert store.next_due_at() == T0 + 30
    assert store.claim("w", T0 + 29.999, LEASE) is None
    assert store.count_scheduled(T0 + 29.999) == 1
    assert store.claim("w", T0 + 30, LEASE).id == "later"
    assert store.count_scheduled(T0 + 30) == 0


def test_run_at_with_an_offset_is_the_same_instant_in_utc(store):
    # 15:30 at +05:30 is 10:00 UTC; the job must not run a moment before.
    due = datetime(2030, 1, 2, 10, 0, tzinfo=timezone.utc).timestamp()
    store.add_jobs([make_job("ist", run_at="2030-01-02T15:30:00+05:30")])
    assert store.get("ist").next_run_at == due
    assert store.claim("w", due - 0.001, LEASE) is None
    assert store.claim("w", due, LEASE).id == "ist"


# --- cancel (storage) ----------------------------------------------------------


def test_cancelled_waiting_jobs_are_never_claimed(store):
    store.add_jobs([make_job("pending"), make_job("retrying")])
    claimed = store.claim("w", T0, LEASE)
    assert claimed.id == "pending"
    # Put "pending" into the failed state, waiting for a retry.
    store.retry_later(claimed, failure(), T0 + 1, retry_at=T0 + 10)
    assert store.cancel("pending", T0 + 2).state == JobState.FAILED
    assert store.cancel("retrying", T0 + 2).state == JobState.PENDING
    for job_id in ("pending", "retrying"):
        job = store.get(job_id)
        assert job.state == JobState.CANCELLED
        assert job.finished_at == T0 + 2
    assert store.claim("w", T0 + 100, LEASE) is None
    assert store.next_due_at() is None


def test_cancelling_a_running_job_ends_its_claim(store):
    store.add_jobs([make_job("run")])
    job = store.claim("w", T0, LEASE)
    assert store.holds_claim(job)
    before = store.cancel("run", T0 + 1)
    assert before.state == JobState.PROCESSING and before.worker_id == "w"
    assert not store.holds_claim(job)
    assert not store.renew_lease(job, T0 + 2, LEASE)
    # The worker's late result cannot turn the cancellation into a retry or a success.
    assert not store.retry_later(job, failure(), T0 + 2, retry_at=T0 + 3)
    assert not store.complete(job, ok(), T0 + 2)
    store.keep_output(job, AttemptResult(False, None, "Stopped: cancelled", "partial out", "partial err"))
    cancelled = store.get("run")
    assert cancelled.state == JobState.CANCELLED
    assert cancelled.lease_expires_at is None
    [attempt] = store.attempts("run")
    assert (attempt.finished_at, attempt.error_message) == (T0 + 1, "Cancelled while running")
    assert (attempt.stdout_tail, attempt.stderr_tail) == ("partial out", "partial err")
    # Nothing for the reaper either: the cancelled job holds no lease.
    assert store.reap_expired(T0 + 1000, lambda j: T0 + 1000) == []


@pytest.mark.parametrize("final", ["completed", "dlq", "cancelled"])
def test_a_finished_job_cannot_be_cancelled(store, final):
    store.add_jobs([make_job("done", max_retries=1)])
    job = store.claim("w", T0, LEASE)
    if final == "completed":
        store.complete(job, ok(), T0 + 1)
    elif final == "dlq":
        store.bury(job, failure(), T0 + 1)
    else:
        store.cancel("done", T0 + 1)
    before = store.get("done")
    with pytest.raises(InvalidTransitionError, match="already finished"):
        store.cancel("done", T0 + 2)
    assert store.get("done") == before
    with pytest.raises(JobNotFoundError):
        store.cancel("nope", T0 + 2)


# --- retry and pause (storage) -------------------------------------------------


def test_retry_accepts_failed_cancelled_and_dead_jobs_only(store):
    store.add_jobs([make_job(name, max_retries=1) for name in ("failed", "cancelled", "dead", "done", "waiting")])
    failed = store.claim("w", T0, LEASE)
    store.retry_later(failed, failure(), T0, retry_at=T0 + 500)
    store.cancel("cancelled", T0)
    store.bury(store.claim("w", T0, LEASE), failure(), T0)
    store.complete(store.claim("w", T0, LEASE), ok(), T0)
    assert {j.id: j.state.value for j in store.list_jobs()} == {
        "failed": "failed", "cancelled": "cancelled", "dead": "dlq", "done": "completed", "waiting": "pending",
    }
    for job_id in ("failed", "cancelled", "dead"):
        job = store.revive(job_id, T0 + 1, RETRYABLE_STATES)
        assert (job.state, job.attempts, job.next_run_at, job.error_message) == (JobState.PENDING, 0, T0 + 1, None)
    for job_id in ("done", "waiting"):
        before = store.get(job_id)
        with pytest.raises(InvalidTransitionError, match="only failed, cancelled or dlq jobs can be retried"):
            store.revive(job_id, T0 + 1, RETRYABLE_STATES)
        assert store.get(job_id) == before
    # `dlq retry` keeps its narrower meaning.
    with pytest.raises(InvalidTransitionError, match="not in the DLQ"):
        store.revive("waiting", T0 + 1)
    # The revived jobs are claimable now; their history stays.
    assert store.claim("w", T0 + 1, LEASE) is not None
    assert len(store.attempts("dead")) == 1


def test_revive_all_moves_every_dead_job(store):
    store.add_jobs([make_job(f"d{i}", max_retries=1) for i in range(3)] + [make_job("other", now=T0 + 1)])
    for _ in range(3):
        store.bury(store.claim("w", T0, LEASE), failure(), T0)
    assert store.revive_all(T0 + 5) == 3
    assert store.revive_all(T0 + 6) == 0
    assert store.count_by_state()[JobState.PENDING] == 4


def test_pause_stops_claims_and_resume_releases_them(store):
    store.add_jobs([make_job("a"), make_job("b", delay=10)])
    assert store.paused_since() is None
    assert store.set_paused(True, T0) is True
    assert store.set_paused(True, T0 + 1) is False
    assert store.paused_since() == T0
    assert store.claim("w", T0 + 20, LEASE) is None
    # An idle worker must not spin on a due job it may not take.
    assert store.next_due_at() is None
    assert store.set_paused(False, T0 + 21) is True
    assert store.set_paused(False, T0 + 22) is False
    assert store.next_due_at() == T0
    assert [store.claim("w", T0 + 20, LEASE).id for _ in range(2)] == ["a", "b"]


# --- schema migration -------------------------------------------------------------


def test_a_version_1_database_is_migrated_in_place(tmp_path):
    path = str(tmp_path / "v1.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(MIGRATIONS[1])
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO jobs (id, command, state, max_retries, created_at, updated_at, next_run_at)"
        " VALUES ('old', 'true', 'pending', 3, ?, ?, ?)",
        (T0, T0, T0),
    )
    conn.close()

    with SqliteStorage(path) as store:
        assert store.get("old").state == JobState.PENDING
        assert store.claim("w", T0, LEASE).id == "old"
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"attempts_finished", "jobs_created", "jobs_claim_order"} <= indexes
    conn.close()
    # Opening it again is a no-op.
    with SqliteStorage(path) as store:
        assert store.get("old").state == JobState.PROCESSING


# --- end to end: priority, delay, run_at -------------------------------------------


def test_one_worker_runs_high_then_medium_then_low(queue):
    order_file = os.path.join(queue.path, "order.txt")
    for name, priority in (("low", 1), ("high", 10), ("medium", 5)):
        queue.enqueue(id=name, command=f"echo {name} >> {order_file}", priority=priority)
    worker = queue.start_worker("--burst")
    assert worker.wait(30) == 0, queue.log_of(worker)
    with open(order_file) as handle:
        assert handle.read().split() == ["high", "medium", "low"]
    started = {job_id: parse_iso(job["started_at"]) for job_id, job in queue.jobs().items()}
    assert started["high"] <= started["medium"] <= started["low"]


def test_enqueue_priority_option_overrides_the_json(queue):
    queue.run("enqueue", "--priority", "7", json.dumps({"id": "p", "command": "true", "priority": 1}))
    assert queue.job("p")["priority"] == 7


def test_a_two_second_delay_starts_after_two_seconds_and_within_three(queue):
    worker = queue.start_worker()
    wait_for(lambda: json.loads(queue.run("status", "--json").stdout)["workers"]["count"] == 1, what="worker registered")
    queue.run("enqueue", "--delay", "2s", json.dumps({"id": "d", "command": "true"}))
    assert queue.counts()["pending"] == 1
    queue.wait_state("d", "completed", timeout=10)
    job = queue.job("d")
    waited = parse_iso(job["started_at"]) - parse_iso(job["created_at"])
    assert 2.0 <= waited < 3.0, (waited, queue.log_of(worker))


def test_run_at_in_other_time_zones_is_stored_as_the_same_instant(queue):
    queue.run("enqueue", json.dumps({"id": "offset", "command": "true", "run_at": "2030-06-01T08:00:00-07:00"}))
    queue.run("enqueue", "--run-at", "2030-06-01T15:00:00Z", json.dumps({"id": "zulu", "command": "true"}))
    # A time without a zone is the enqueuer's local time (here: UTC+9, no DST).
    queue.run("enqueue", json.dumps({"id": "naive", "command": "true", "run_at": "2030-06-02T00:00:00"}), env={"TZ": "XST-9"})
    jobs = queue.jobs()
    expected = datetime(2030, 6, 1, 15, 0, tzinfo=timezone.utc).timestamp()
    assert {job_id: parse_iso(jobs[job_id]["next_run_at"]) for job_id in jobs} == {
        "offset": expected, "zulu": expected, "naive": expected,
    }
    status = json.loads(queue.run("status", "--json").stdout)
    assert status["scheduled"] == 3


def test_a_run_at_that_is_not_a_time_is_refused(queue):
    queue.enqueue(id="keep", command="true")
    before = snapshot(queue)
    proc = queue.run("enqueue", json.dumps({"id": "x", "command": "true", "run_at": "next tuesday"}), check=False)
    one_error_line(proc, 2, "run_at", "not an ISO-8601 time")
    proc = queue.run("enqueue", "--run-at", "2030-13-45", json.dumps({"id": "x", "command": "true"}), check=False)
    one_error_line(proc, 2, "--run-at")
    proc = queue.run("enqueue", "--delay", "soon", json.dumps({"id": "x", "command": "true"}), check=False)
    one_error_line(proc, 2, "--delay")
    assert snapshot(queue) == before


# --- end to end: cancel ---------------------------------------------------------------


def test_cancelling_a_running_job_stops_its_tree_and_does_not_retry_it(queue, home):
    # Leases renew only every 10 s here: the cancel must not wait for a renewal.
    queue.set_config(lease_seconds=30, max_retries=3)
    shell_pid_file = os.path.join(queue.path, "shell.pid")
    child_pid_file = os.path.join(queue.path, "child.pid")
    command = f"echo $$ > {shell_pid_file}; sleep 60 & echo $! > {child_pid_file}; wait"
    queue.enqueue(id="long", command=command)
    worker = queue.start_worker()
    child = wait_for(lambda: read_pid(child_pid_file), what="the job to start its sleep")
    shell = read_pid(shell_pid_file)
    assert queue.job("long")["state"] == "processing"

    proc = queue.run("cancel", "long")
    assert proc.stdout.startswith("Job long cancelled; worker-")
    wait_for(lambda: process_gone(child) and process_gone(shell), timeout=5, what="the job's process tree to end")
    wait_for(lambda: "Job long was cancelled" in queue.log_of(worker), what="the worker to record the cancel")

    job = queue.job("long")
    assert (job["state"], job["attempts"], job["lease_expires_at"]) == ("cancelled", 1, None)
    from queuectl.storage import open_storage

    with open_storage(home) as store:
        [attempt] = store.attempts("long")
    assert attempt.error_message == "Cancelled while running"
    # The worker goes back to waiting; nothing is claimed, nothing retried.
    assert "will retry" not in queue.log_of(worker)
    assert queue.counts() == {**queue.counts(), "cancelled": 1, "pending": 0, "failed": 0, "processing": 0}


def test_cancel_and_retry_of_a_waiting_job(queue):
    queue.run("enqueue", "--delay", "1h", json.dumps({"id": "later", "command": "true"}))
    assert queue.run("cancel", "later").stdout == "Job later cancelled (was pending)\n"
    assert queue.job("later")["state"] == "cancelled"
    assert queue.run("retry", "later").stdout == "Job later moved back to pending queue (attempts reset)\n"
    job = queue.job("later")
    assert job["state"] == "pending"
    assert parse_iso(job["next_run_at"]) <= parse_iso(job["updated_at"])


def test_cancel_and_retry_refuse_bad_ids_and_states(queue):
    queue.enqueue(id="waiting", command="true")
    queue.run("cancel", "waiting")
    queue.enqueue(id="pending", command="true")
    before = snapshot(queue)
    one_error_line(queue.run("cancel", "ghost", check=False), 1, "job 'ghost' not found")
    one_error_line(queue.run("cancel", "waiting", check=False), 1, "already finished", "cancelled")
    one_error_line(queue.run("retry", "ghost", check=False), 1, "job 'ghost' not found")
    one_error_line(queue.run("retry", "pending", check=False), 1, "is pending", "can be retried")
    one_error_line(queue.run("dlq", "retry", "waiting", check=False), 1, "not in the DLQ")
    one_error_line(queue.run("dlq", "retry", check=False), 2, "--all")
    one_error_line(queue.run("dlq", "retry", "waiting", "--all", check=False), 2, "--all")
    one_error_line(queue.run("cancel", check=False), 2, "ID")
    assert snapshot(queue) == before


def test_dlq_retry_all(queue):
    queue.set_config(max_retries=1)
    for i in range(3):
        queue.enqueue(id=f"bad{i}", command="exit 3")
    queue.enqueue(id="good", command="true")
    worker = queue.start_worker("--burst")
    assert worker.wait(30) == 0
    assert queue.counts()["dlq"] == 3
    assert queue.run("dlq", "retry", "--all").stdout == "Moved 3 job(s) from DLQ back to pending queue\n"
    states = {job_id: (job["state"], job["attempts"]) for job_id, job in queue.jobs().items()}
    assert states == {"bad0": ("pending", 0), "bad1": ("pending", 0), "bad2": ("pending", 0), "good": ("completed", 1)}
    assert queue.run("dlq", "retry", "--all").stdout == "Moved 0 job(s) from DLQ back to pending queue\n"


# --- end to end: pause ---------------------------------------------------------------


def test_pause_holds_new_claims_and_resume_releases_them(queue):
    queue.set_config(poll_interval=0.2)
    assert queue.run("pause").stdout == "Queue paused: running jobs finish, no new jobs are claimed\n"
    assert queue.run("pause").stdout == "Queue is already paused\n"
    queue.enqueue(id="held", command="true")
    worker = queue.start_worker()
    # The worker logs this only after a claim came back empty while the job was due.
    wait_for(lambda: "Queue is paused" in queue.log_of(worker), what="the worker to see the pause")
    assert queue.job("held")["state"] == "pending"
    status = queue.run("status").stdout
    assert "Queue: paused since" in status
    assert json.loads(queue.run("status", "--json").stdout)["paused"] is True

    assert queue.run("resume").stdout == "Queue resumed: workers claim jobs again\n"
    queue.wait_state("held", "completed", timeout=5)
    assert queue.run("resume").stdout == "Queue is not paused\n"
    assert json.loads(queue.run("status", "--json").stdout)["paused"] is False
