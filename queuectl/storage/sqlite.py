"""SQLite backend: one database file in the queue home.

The connection runs in autocommit mode so that our explicit ``BEGIN
IMMEDIATE`` is the only transaction control: it takes the write lock up
front, so two workers can never both read the same "next job" and then race
to update it. WAL mode lets readers (``status``, ``list``) proceed while a
worker writes, and the busy timeout makes contending writers wait their turn
instead of failing with "database is locked".

Durability: connections that acknowledge something to a user (enqueue, DLQ
retry) use ``synchronous=FULL``, so a commit is on disk before we say
"enqueued". Worker connections may use ``NORMAL``: in WAL mode a power cut can
then lose the last transitions, which only ever re-runs a job (at-least-once),
never loses one.
"""

import contextlib
import json
import os
import sqlite3

from queuectl.config import fsync_directory
from queuectl.errors import DuplicateJobError, InvalidTransitionError, JobNotFoundError, StorageError
from queuectl.jobs import (
    CANCELLABLE_STATES,
    LIST_SORTS,
    Attempt,
    Job,
    JobState,
    QueueStats,
    WorkerTally,
    percentile_rank,
)
from queuectl.storage.base import PurgeResult, Storage

# "QCTL" as a big-endian int: marks a file as a queuectl database.
APPLICATION_ID = 0x5143544C
SCHEMA_VERSION = 2
BUSY_TIMEOUT_SECONDS = 60.0
# Jobs deleted per write transaction by `purge`.
PURGE_BATCH = 500
# Rows fetched from the cursor at a time while streaming `list`.
LIST_BATCH = 200

# Each migration takes the schema from version N-1 to N; append, never edit.
MIGRATIONS = {
    1: """
    -- Jobs: one row per job; seq is the insertion order (FIFO tie-breaker).
    CREATE TABLE jobs (
        seq              INTEGER PRIMARY KEY,
        id               TEXT NOT NULL UNIQUE,
        command          TEXT NOT NULL,
        state            TEXT NOT NULL,
        priority         INTEGER NOT NULL DEFAULT 0,
        attempts         INTEGER NOT NULL DEFAULT 0,
        max_retries      INTEGER NOT NULL,
        timeout          REAL,
        cwd              TEXT,
        env              TEXT,
        created_at       REAL NOT NULL,
        updated_at       REAL NOT NULL,
        next_run_at      REAL NOT NULL,
        started_at       REAL,
        finished_at      REAL,
        worker_id        TEXT,
        lease_expires_at REAL,
        exit_code        INTEGER,
        error_message    TEXT
    );
    -- The claim query walks this index in claim order and stops at the first due job.
    CREATE INDEX jobs_claim_order ON jobs (priority DESC, created_at, seq)
        WHERE state IN ('pending', 'failed');
    -- Finds the next time any waiting job becomes due (idle workers sleep until then).
    CREATE INDEX jobs_due ON jobs (next_run_at) WHERE state IN ('pending', 'failed');
    -- Finds claims whose lease ran out.
    CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE state = 'processing';
    -- Counts per state and `list --state`.
    CREATE INDEX jobs_state ON jobs (state, created_at, seq);

    -- Attempts: one row per run, kept across DLQ retries for `show`.
    CREATE TABLE attempts (
        id            INTEGER PRIMARY KEY,
        job_seq       INTEGER NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE,
        number        INTEGER NOT NULL,
        worker_id     TEXT NOT NULL,
        started_at    REAL NOT NULL,
        finished_at   REAL,
        exit_code     INTEGER,
        error_message TEXT,
        stdout_tail   TEXT NOT NULL DEFAULT '',
        stderr_tail   TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX attempts_job ON attempts (job_seq, number);

    -- Workers: live worker processes, for status, stop and wake-ups.
    CREATE TABLE workers (
        worker_id          TEXT PRIMARY KEY,
        pid                INTEGER NOT NULL,
        hostname           TEXT NOT NULL,
        process_started_at REAL NOT NULL,
        started_at         REAL NOT NULL,
        wake_address       TEXT
    );

    -- Queue-wide flags and counters.
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    2: """
    -- `stats` counts attempts that finished in the last minute / hour.
    CREATE INDEX attempts_finished ON attempts (finished_at);
    -- `list` streams jobs in creation order straight off an index, no sort first.
    CREATE INDEX jobs_created ON jobs (created_at, seq);
    """,
}

JOB_COLUMNS = (
    "seq, id, command, state, priority, attempts, max_retries, timeout, cwd, env, created_at, "
    "updated_at, next_run_at, started_at, finished_at, worker_id, lease_expires_at, "
    "exit_code, error_message"
)

# insert_job: store one new pending job.
SQL_INSERT_JOB = """
INSERT INTO jobs (id, command, state, priority, attempts, max_retries, timeout, cwd, env,
                  created_at, updated_at, next_run_at)
VALUES (?, ?, 'pending', ?, 0, ?, ?, ?, ?, ?, ?, ?)
"""

# not_paused: true unless `pause` has set the queue's paused flag.
NOT_PAUSED = "NOT EXISTS (SELECT 1 FROM meta WHERE key = 'paused')"

# claim_next: take the first due job in claim order and mark it processing.
# INDEXED BY pins the plan: without statistics the planner may pick jobs_state
# and sort every waiting job, which is O(queue) per claim instead of O(1).
SQL_CLAIM_NEXT = f"""
UPDATE jobs
   SET state = 'processing', attempts = attempts + 1, worker_id = :worker,
       started_at = :now, finished_at = NULL, lease_expires_at = :lease, updated_at = :now
 WHERE seq = (SELECT seq FROM jobs INDEXED BY jobs_claim_order
               WHERE state IN ('pending', 'failed') AND next_run_at <= :now AND {NOT_PAUSED}
               ORDER BY priority DESC, created_at, seq
               LIMIT 1)
RETURNING {JOB_COLUMNS}
"""

# open_attempt: record the start of the attempt a claim began.
SQL_OPEN_ATTEMPT = """
INSERT INTO attempts (job_seq, number, worker_id, started_at) VALUES (?, ?, ?, ?)
"""

# fence: the WHERE clause that makes a change apply only to the current claim.
# started_at (the claim's own time) makes the fence unique even when two
# hosts' workers share a name (worker-1 in two containers).
FENCE = (
    "seq = :seq AND state = 'processing' AND worker_id = :worker AND attempts = :attempt"
    " AND started_at = :started"
)

# renew_lease: push the claim's lease forward.
# An expired lease is never renewed: once it lapses the claim can only be
# reaped, so the reaper may stop a lapsed run without racing its worker.
SQL_RENEW_LEASE = f"UPDATE jobs SET lease_expires_at = :lease WHERE {FENCE} AND lease_expires_at >= :now"

# holds_claim: is this claim still current? (read-only, for frequent checks)
SQL_HOLDS_CLAIM = f"SELECT 1 FROM jobs WHERE {FENCE}"

# keep_output: attach a run's output tails to its (already closed) attempt row.
SQL_KEEP_OUTPUT = """
UPDATE attempts SET stdout_tail = :stdout, stderr_tail = :stderr
 WHERE id = :attempt_id AND worker_id = :worker
"""

# finish_attempt: move a claimed job to its next state with the attempt's outcome.
SQL_FINISH = f"""
UPDATE jobs
   SET state = :state, exit_code = :exit_code, error_message = :error,
       finished_at = :now, updated_at = :now, next_run_at = :next_run_at,
       lease_expires_at = NULL
 WHERE {FENCE}
"""

# close_attempt: write the outcome of the attempt into its history row.
SQL_CLOSE_ATTEMPT = """
UPDATE attempts
   SET finished_at = :now, exit_code = :exit_code, error_message = :error,
       stdout_tail = :stdout, stderr_tail = :stderr
 WHERE job_seq = :seq AND number = :attempt AND finished_at IS NULL
"""

# expired_claims: claims whose worker stopped renewing the lease.
SQL_EXPIRED = f"""
SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'processing' AND lease_expires_at < ?
"""

# expired_claims_with_attempt: expired claims, each with the id of its open attempt.
SQL_EXPIRED_WITH_ATTEMPT = f"""
SELECT {JOB_COLUMNS},
       (SELECT max(a.id) FROM attempts a WHERE a.job_seq = jobs.seq AND a.number = jobs.attempts)
  FROM jobs WHERE state = 'processing' AND lease_expires_at < ?
"""

# any_expired: cheap read-only check before taking the write lock to reap.
SQL_ANY_EXPIRED = "SELECT 1 FROM jobs WHERE state = 'processing' AND lease_expires_at < ? LIMIT 1"

# running_attempts: attempts of claims still open (their output files are in use).
SQL_RUNNING_ATTEMPTS = """
SELECT a.id FROM jobs j JOIN attempts a ON a.job_seq = j.seq AND a.number = j.attempts
 WHERE j.state = 'processing' AND a.finished_at IS NULL
"""

# next_due: the earliest time a waiting job becomes claimable (none while paused).
SQL_NEXT_DUE = f"SELECT min(next_run_at) FROM jobs WHERE state IN ('pending', 'failed') AND {NOT_PAUSED}"

# revive: {states} -> pending, due now, with a fresh attempt budget ({states}: placeholders).
SQL_REVIVE = """
UPDATE jobs
   SET state = 'pending', attempts = 0, next_run_at = ?, updated_at = ?,
       worker_id = NULL, exit_code = NULL, error_message = NULL,
       started_at = NULL, finished_at = NULL, lease_expires_at = NULL
 WHERE id = ? AND state IN ({states}) AND lease_expires_at IS NULL
"""

# revive_all: every job in {states} -> pending, as revive does for one.
SQL_REVIVE_ALL = """
UPDATE jobs
   SET state = 'pending', attempts = 0, next_run_at = ?, updated_at = ?,
       worker_id = NULL, exit_code = NULL, error_message = NULL,
       started_at = NULL, finished_at = NULL, lease_expires_at = NULL
 WHERE state IN ({states}) AND lease_expires_at IS NULL
"""

# cancel_job: end a pending, failed or running job for good. A running job
# keeps its lease: it marks the run as still stopping until its worker (or,
# if that worker died, the reaper) has stopped the run's processes.
SQL_CANCEL = """
UPDATE jobs
   SET state = 'cancelled', error_message = :error, finished_at = :now, updated_at = :now,
       lease_expires_at = CASE WHEN state = 'processing' THEN lease_expires_at END
 WHERE seq = :seq AND state = :state
"""

# release_cancelled: the cancelled run's processes are gone; the job may be retried.
SQL_RELEASE_CANCELLED = """
UPDATE jobs SET lease_expires_at = NULL
 WHERE seq = :seq AND state = 'cancelled' AND worker_id = :worker AND attempts = :attempt
   AND started_at = :started
"""

# stopping_cancelled: cancelled runs whose worker died before it could confirm the stop.
SQL_STOPPING_CANCELLED = f"""
SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'cancelled' AND lease_expires_at < ?
"""

# cancel_attempt: close the attempt a cancelled job was running.
SQL_CANCEL_ATTEMPT = """
UPDATE attempts SET finished_at = :now, error_message = :error
 WHERE job_seq = :seq AND number = :attempt AND finished_at IS NULL
"""

# pause: set the paused flag (value: when), unless already set.
SQL_PAUSE = "INSERT OR IGNORE INTO meta (key, value) VALUES ('paused', ?)"

# resume: clear the paused flag.
SQL_RESUME = "DELETE FROM meta WHERE key = 'paused'"

# paused_since: when the paused flag was set, if it is.
SQL_PAUSED_SINCE = "SELECT value FROM meta WHERE key = 'paused'"

# purge_pick: the next batch of finished jobs to purge ({states}: placeholders).
SQL_PURGE_PICK = """
SELECT seq FROM jobs
 WHERE state IN ({states}) AND (? IS NULL OR updated_at < ?)
 ORDER BY seq LIMIT ?
"""

# purge_attempt_ids: the attempts of a batch of jobs ({seqs}: placeholders), for their log files.
SQL_PURGE_ATTEMPT_IDS = "SELECT id FROM attempts WHERE job_seq IN ({seqs})"

# purge_delete: delete a batch of jobs; their attempts go with them (ON DELETE CASCADE).
SQL_PURGE_DELETE = "DELETE FROM jobs WHERE seq IN ({seqs})"

# list_jobs: jobs in a chosen order ({where}, {order}, {limit} filled in per call).
SQL_LIST = f"SELECT {JOB_COLUMNS} FROM jobs {{where}} ORDER BY {{order}} {{limit}}"

# The ORDER BY for each `list --sort` key: (natural, reversed); seq breaks ties.
LIST_ORDER = {
    "created": ("created_at, seq", "created_at DESC, seq DESC"),
    "priority": ("priority DESC, created_at, seq", "priority, created_at DESC, seq DESC"),
    "next_run": ("next_run_at, seq", "next_run_at DESC, seq DESC"),
    "updated": ("updated_at DESC, seq DESC", "updated_at, seq"),
    "id": ("id", "id DESC"),
}
assert set(LIST_ORDER) == set(LIST_SORTS)

# count_scheduled: waiting jobs not yet due ({states}: the pending/failed ones asked for).
SQL_COUNT_SCHEDULED = "SELECT count(*) FROM jobs WHERE state IN ({states}) AND next_run_at > ?"

# stats_attempts: recorded attempts, and how many jobs they belong to.
SQL_STATS_ATTEMPTS = "SELECT count(*), count(DISTINCT job_seq) FROM attempts"

# stats_most_attempts: the most attempts any one job has had.
SQL_STATS_MOST_ATTEMPTS = "SELECT max(n) FROM (SELECT count(*) AS n FROM attempts GROUP BY job_seq)"

# stats_run_times: how many attempts finished, and the longest run.
SQL_STATS_RUN_TIMES = """
SELECT count(*), max(finished_at - started_at) FROM attempts WHERE finished_at IS NOT NULL
"""

# stats_run_time_at: the run time at a given rank among finished attempts (for percentiles).
SQL_STATS_RUN_TIME_AT = """
SELECT finished_at - started_at AS run_time FROM attempts
 WHERE finished_at IS NOT NULL ORDER BY run_time LIMIT 1 OFFSET ?
"""

# stats_completed_since: successful attempts (= jobs completed) in a time window.
SQL_STATS_COMPLETED_SINCE = """
SELECT count(*) FROM attempts
 WHERE finished_at >= ? AND finished_at <= ? AND error_message IS NULL
"""

# stats_oldest_waiting: the due job that has waited longest to be claimed.
SQL_STATS_OLDEST_WAITING = """
SELECT id, next_run_at FROM jobs
 WHERE state IN ('pending', 'failed') AND next_run_at <= ?
 ORDER BY next_run_at, seq LIMIT 1
"""

# stats_workers: per worker, attempts run, succeeded, failed, still running.
SQL_STATS_WORKERS = """
SELECT worker_id, count(*),
       sum(finished_at IS NOT NULL AND error_message IS NULL),
       sum(finished_at IS NOT NULL AND error_message IS NOT NULL),
       sum(finished_at IS NULL)
  FROM attempts GROUP BY worker_id ORDER BY worker_id
"""

# get_job: one job by id.
SQL_GET = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"

# count_states: jobs per state.
SQL_COUNT = "SELECT state, count(*) FROM jobs GROUP BY state"

# job_attempts: the history of one job.
SQL_ATTEMPTS = """
SELECT a.id, j.id, a.number, a.worker_id, a.started_at, a.finished_at, a.exit_code,
       a.error_message, a.stdout_tail, a.stderr_tail
  FROM attempts a JOIN jobs j ON j.seq = a.job_seq
 WHERE j.id = ?
 ORDER BY a.id
"""

# register_worker: announce (or re-announce) a live worker.
SQL_REGISTER_WORKER = """
INSERT OR REPLACE INTO workers (worker_id, pid, hostname, process_started_at, started_at, wake_address)
VALUES (?, ?, ?, ?, ?, ?)
"""
# unregister_worker: forget a worker.
SQL_UNREGISTER_WORKER = "DELETE FROM workers WHERE worker_id = ?"
# list_workers: every registered worker, oldest first.
SQL_LIST_WORKERS = """
SELECT worker_id, pid, hostname, process_started_at, started_at, wake_address
  FROM workers ORDER BY started_at, worker_id
"""


class SqliteStorage(Storage):
    """The queue in a single SQLite file."""

    # BEGIN IMMEDIATE takes the write lock at once: read-then-write in one
    # transaction can't be overtaken by another writer.
    begin_statement = "BEGIN IMMEDIATE"

    def __init__(self, path, *, durable=True):
        self.path = path
        self._depth = 0
        self._conn = self._connect(durable)
        self._migrate()
        self._identity = _file_identity(path)

    # --- connection --------------------------------------------------------

    def _connect(self, durable):
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open database {self.path}: {exc}") from None
        try:
            # Refuse someone else's database before changing anything in it
            # (switching it to WAL would rewrite its header).
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            if app_id != APPLICATION_ID and (
                app_id != 0 or conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            ):
                conn.close()
                raise StorageError(f"{self.path} is not a queuectl database")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                # e.g. a network file system; still correct, just less concurrent.
                conn.execute("PRAGMA journal_mode=DELETE")
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise self._open_error(exc) from None
        return conn

    def _open_error(self, exc):
        text = str(exc)
        if "not a database" in text:
            return StorageError(f"{self.path} is not a queuectl database")
        if "readonly" in text or "unable to open" in text:
            return StorageError(f"cannot write database {self.path}: {text}")
        return StorageError(f"database {self.path}: {text}")

    def _migrate(self):
        with self._errors():
            version = self._scalar("PRAGMA user_version")
            if version == SCHEMA_VERSION and self._scalar("PRAGMA application_id") == APPLICATION_ID:
                return
            with self.transaction():
                # Re-read under the write lock: another process may have just done it.
                version = self._scalar("PRAGMA user_version")
                app_id = self._scalar("PRAGMA application_id")
                if version == 0 and app_id == 0:
                    if self._scalar("SELECT count(*) FROM sqlite_master"):
                        raise StorageError(f"{self.path} is not a queuectl database")
                elif app_id != APPLICATION_ID:
                    raise StorageError(f"{self.path} is not a queuectl database")
                if version > SCHEMA_VERSION:
                    raise StorageError(
                        f"{self.path} was written by a newer queuectl (schema {version})"
                    )
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _split_sql(MIGRATIONS[target]):
                        self._conn.execute(statement)
                self._conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            if version == 0:
                # A new database file: SQLite syncs its contents and its WAL,
                # not the directory entry of the file itself.
                fsync_directory(os.path.dirname(self.path))

    def _scalar(self, sql, params=()):
        row = self._conn.execute(sql, params).fetchone()
        return row[0] if row else None

    @contextlib.contextmanager
    def transaction(self):
        """One atomic unit of work, holding the write lock from its start.

        Nested use joins the outer transaction, which is how ``batch()`` lets
        several verbs share one commit.
        """
        if self._depth:
            self._depth += 1
            try:
                yield self._conn
            finally:
                self._depth -= 1
            return
        self._conn.execute(self.begin_statement)
        self._depth = 1
        try:
            yield self._conn
        except BaseException:
            self._depth = 0
            self._conn.execute("ROLLBACK")
            raise
        self._depth = 0
        self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def batch(self):
        with self._errors(), self.transaction():
            yield

    @contextlib.contextmanager
    def _snapshot(self):
        """Several reads that see one consistent state (a WAL read transaction)."""
        self._conn.execute("BEGIN DEFERRED")
        try:
            yield self._conn
        finally:
            self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def _errors(self):
        """Turn driver errors into ours, so callers never see sqlite3."""
        try:
            yield
        except sqlite3.IntegrityError:
            raise  # a constraint the caller turns into a meaningful error
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from None

    def is_replaced(self):
        return _file_identity(self.path) != self._identity

    def close(self):
        self._conn.close()

    # --- producers ---------------------------------------------------------

    def add_jobs(self, jobs):
        rows = [
            (
                job.id, job.command, job.priority, job.max_retries, job.timeout, job.cwd,
                json.dumps(job.env) if job.env else None,
                job.created_at, job.updated_at, job.next_run_at,
            )
            for job in jobs
        ]
        try:
            with self._errors(), self.transaction() as conn:
                conn.executemany(SQL_INSERT_JOB, rows)
        except StorageError:
            raise
        except sqlite3.IntegrityError:
            raise DuplicateJobError(self._duplicate_message(jobs)) from None

    def _duplicate_message(self, jobs):
        ids = [job.id for job in jobs]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            row = self._conn.execute(f"SELECT id FROM jobs WHERE id IN ({marks}) LIMIT 1", chunk).fetchone()
            if row:
                return f"job {row[0]!r} already exists"
        return "a job with one of these ids already exists"

    # --- workers -----------------------------------------------------------

    def claim(self, worker_id, now, lease_seconds):
        params = {"worker": worker_id, "now": now, "lease": now + lease_seconds}
        with self._errors(), self.transaction() as conn:
            rows = conn.execute(SQL_CLAIM_NEXT, params).fetchall()
            if not rows:
                return None
            job = _job_from_row(rows[0])
            cursor = conn.execute(SQL_OPEN_ATTEMPT, (job.seq, job.attempts, worker_id, now))
            job.attempt_id = cursor.lastrowid
        return job

    def renew_lease(self, job, now, lease_seconds):
        params = dict(_fence(job), lease=now + lease_seconds, now=now)
        with self._errors(), self.transaction() as conn:
            renewed = conn.execute(SQL_RENEW_LEASE, params).rowcount == 1
        if renewed:
            job.lease_expires_at = params["lease"]
        return renewed

    def holds_claim(self, job):
        with self._errors():
            return self._scalar(SQL_HOLDS_CLAIM, _fence(job)) is not None

    def stopping_cancelled(self, now):
        with self._errors():
            return [_job_from_row(row) for row in self._conn.execute(SQL_STOPPING_CANCELLED, (now,))]

    def release_cancelled(self, job):
        with self._errors(), self.transaction() as conn:
            return conn.execute(SQL_RELEASE_CANCELLED, _fence(job)).rowcount == 1

    def keep_output(self, job, result):
        params = {
            "attempt_id": job.attempt_id,
            "worker": job.worker_id,
            "stdout": result.stdout_tail,
            "stderr": result.stderr_tail,
        }
        with self._errors(), self.transaction() as conn:
            conn.execute(SQL_KEEP_OUTPUT, params)

    def complete(self, job, result, now):
        return self._finish(job, result, now, JobState.COMPLETED, job.next_run_at)

    def retry_later(self, job, result, now, retry_at):
        return self._finish(job, result, now, JobState.FAILED, retry_at)

    def bury(self, job, result, now):
        return self._finish(job, result, now, JobState.DLQ, job.next_run_at)

    def _finish(self, job, result, now, state, next_run_at):
        params = dict(
            _fence(job),
            state=state.value,
            exit_code=result.exit_code,
            error=result.error_message,
            now=now,
            next_run_at=next_run_at,
            stdout=result.stdout_tail,
            stderr=result.stderr_tail,
        )
        with self._errors(), self.transaction() as conn:
            if conn.execute(SQL_FINISH, params).rowcount != 1:
                return False
            conn.execute(SQL_CLOSE_ATTEMPT, params)
        job.state, job.next_run_at, job.finished_at = state, next_run_at, now
        job.exit_code, job.error_message = result.exit_code, result.error_message
        return True

    def expired_claims(self, now):
        with self._errors():
            rows = self._conn.execute(SQL_EXPIRED_WITH_ATTEMPT, (now,)).fetchall()
        jobs = []
        for row in rows:
            job = _job_from_row(row[:-1])
            job.attempt_id = row[-1]
            jobs.append(job)
        return jobs

    def reap_expired(self, now, retry_at):
        with self._errors():
            if self._scalar(SQL_ANY_EXPIRED, (now,)) is None:
                return []
            reaped = []
            with self.transaction() as conn:
                for row in conn.execute(SQL_EXPIRED, (now,)).fetchall():
                    job = _job_from_row(row)
                    when = retry_at(job)
                    state = JobState.DLQ if when is None else JobState.FAILED
                    params = dict(
                        _fence(job),
                        state=state.value,
                        exit_code=None,
                        error=f"Worker {job.worker_id} was lost (lease expired)",
                        now=now,
                        next_run_at=job.next_run_at if when is None else when,
                        stdout="",
                        stderr="",
                    )
                    conn.execute(SQL_FINISH, params)
                    conn.execute(SQL_CLOSE_ATTEMPT, params)
                    job.state, job.error_message = state, params["error"]
                    job.next_run_at, job.finished_at = params["next_run_at"], now
                    reaped.append(job)
        return reaped

    def next_due_at(self):
        with self._errors():
            return self._scalar(SQL_NEXT_DUE)

    def running_attempt_ids(self):
        with self._errors():
            return {row[0] for row in self._conn.execute(SQL_RUNNING_ATTEMPTS)}

    # --- operators ---------------------------------------------------------

    def revive(self, job_id, now, states=(JobState.DLQ,)):
        values = [state.value for state in states]
        sql = SQL_REVIVE.format(states=_marks(values))
        with self._errors(), self.transaction() as conn:
            if conn.execute(sql, [now, now, job_id, *values]).rowcount != 1:
                job = self._get_or_none(job_id)
                if job is None:
                    raise JobNotFoundError(f"job {job_id!r} not found")
                if job.state in states and job.lease_expires_at is not None:
                    raise InvalidTransitionError(
                        f"job {job_id!r} is still being stopped by {job.worker_id}; retry it in a moment"
                    )
                if list(states) == [JobState.DLQ]:
                    raise InvalidTransitionError(
                        f"job {job_id!r} is not in the DLQ (state: {job.state.value})"
                    )
                raise InvalidTransitionError(
                    f"job {job_id!r} is {job.state.value}; only {_or_list(values)} jobs can be retried"
                )
        return self.get(job_id)

    def revive_all(self, now, states=(JobState.DLQ,)):
        values = [state.value for state in states]
        sql = SQL_REVIVE_ALL.format(states=_marks(values))
        with self._errors(), self.transaction() as conn:
            return conn.execute(sql, [now, now, *values]).rowcount

    def cancel(self, job_id, now):
        with self._errors(), self.transaction() as conn:
            row = conn.execute(SQL_GET, (job_id,)).fetchone()
            if row is None:
                raise JobNotFoundError(f"job {job_id!r} not found")
            job = _job_from_row(row)
            if job.state not in CANCELLABLE_STATES:
                raise InvalidTransitionError(
                    f"job {job_id!r} already finished (state: {job.state.value}); there is nothing to cancel"
                )
            running = job.state == JobState.PROCESSING
            params = {
                "seq": job.seq,
                "state": job.state.value,
                "now": now,
                "attempt": job.attempts,
                "error": "Cancelled while running" if running else "Cancelled",
            }
            conn.execute(SQL_CANCEL, params)
            if running:
                conn.execute(SQL_CANCEL_ATTEMPT, params)
        return job

    def purge(self, states, finished_before=None):
        values = [state.value for state in states]
        pick = SQL_PURGE_PICK.format(states=_marks(values))
        result = PurgeResult()
        # Batches keep each write transaction short, so workers are not held
        # up for the whole of a purge of 100,000 jobs.
        while True:
            with self._errors(), self.transaction() as conn:
                seqs = [row[0] for row in conn.execute(pick, [*values, finished_before, finished_before, PURGE_BATCH])]
                if not seqs:
                    break
                marks = _marks(seqs)
                result.attempt_ids.extend(
                    row[0] for row in conn.execute(SQL_PURGE_ATTEMPT_IDS.format(seqs=marks), seqs)
                )
                conn.execute(SQL_PURGE_DELETE.format(seqs=marks), seqs)
                result.jobs += len(seqs)
            if len(seqs) < PURGE_BATCH:
                break
        return result

    def set_paused(self, paused, now):
        with self._errors(), self.transaction() as conn:
            if paused:
                return conn.execute(SQL_PAUSE, (repr(float(now)),)).rowcount == 1
            return conn.execute(SQL_RESUME).rowcount == 1

    def paused_since(self):
        with self._errors():
            value = self._scalar(SQL_PAUSED_SINCE)
        return None if value is None else float(value)

    def get(self, job_id):
        job = self._get_or_none(job_id)
        if job is None:
            raise JobNotFoundError(f"job {job_id!r} not found")
        return job

    def _get_or_none(self, job_id):
        with self._errors():
            row = self._conn.execute(SQL_GET, (job_id,)).fetchone()
        return _job_from_row(row) if row else None

    def iter_jobs(self, states=(), limit=None, sort="created", reverse=False):
        if sort not in LIST_ORDER:
            raise ValueError(f"unknown sort key {sort!r}")
        params = [state.value for state in dict.fromkeys(states)]
        where = f"WHERE state IN ({_marks(params)})" if params else ""
        limit_clause = ""
        if limit is not None:
            limit_clause = "LIMIT ?"
            params.append(limit)
        sql = SQL_LIST.format(where=where, order=LIST_ORDER[sort][1 if reverse else 0], limit=limit_clause)
        with self._errors():
            cursor = self._conn.execute(sql, params)
            while True:
                rows = cursor.fetchmany(LIST_BATCH)
                if not rows:
                    return
                for row in rows:
                    yield _job_from_row(row)

    def count_by_state(self):
        counts = {state: 0 for state in JobState}
        with self._errors():
            for state, count in self._conn.execute(SQL_COUNT):
                counts[JobState(state)] = count
        return counts

    def count_scheduled(self, now, states=()):
        waiting = [JobState.PENDING.value, JobState.FAILED.value]
        if states:
            waiting = [value for value in waiting if JobState(value) in set(states)]
        if not waiting:
            return 0
        with self._errors():
            return self._scalar(SQL_COUNT_SCHEDULED.format(states=_marks(waiting)), [*waiting, now])

    def stats(self, now):
        with self._errors(), self._snapshot() as conn:
            counts = {state: 0 for state in JobState}
            for state, count in conn.execute(SQL_COUNT):
                counts[JobState(state)] = count
            attempts_total, jobs_attempted = conn.execute(SQL_STATS_ATTEMPTS).fetchone()
            finished, longest = conn.execute(SQL_STATS_RUN_TIMES).fetchone()

            def run_time_at(fraction):
                if not finished:
                    return None
                return self._scalar(SQL_STATS_RUN_TIME_AT, (percentile_rank(finished, fraction),))

            oldest = conn.execute(SQL_STATS_OLDEST_WAITING, (now,)).fetchone()
            workers = [WorkerTally(*row) for row in conn.execute(SQL_STATS_WORKERS)]
            return QueueStats(
                counts=counts,
                scheduled=self.count_scheduled(now),
                attempts_total=attempts_total,
                jobs_attempted=jobs_attempted,
                max_attempts_per_job=self._scalar(SQL_STATS_MOST_ATTEMPTS) or 0,
                run_time_p50=run_time_at(0.50),
                run_time_p95=run_time_at(0.95),
                run_time_max=longest,
                finished_attempts=finished,
                completed_last_minute=self._scalar(SQL_STATS_COMPLETED_SINCE, (now - 60, now)),
                completed_last_hour=self._scalar(SQL_STATS_COMPLETED_SINCE, (now - 3600, now)),
                oldest_waiting_id=oldest[0] if oldest else None,
                oldest_waiting_age=max(0.0, now - oldest[1]) if oldest else None,
                workers=workers,
            )

    def attempts(self, job_id):
        self.get(job_id)
        with self._errors():
            return [Attempt(*row) for row in self._conn.execute(SQL_ATTEMPTS, (job_id,))]

    # --- worker registry ---------------------------------------------------

    def register_worker(self, worker_id, pid, hostname, process_started_at, now, wake_address):
        with self._errors(), self.transaction() as conn:
            conn.execute(
                SQL_REGISTER_WORKER,
                (worker_id, pid, hostname, process_started_at, now, wake_address),
            )

    def unregister_worker(self, worker_id):
        with self._errors(), self.transaction() as conn:
            conn.execute(SQL_UNREGISTER_WORKER, (worker_id,))

    def list_workers(self):
        keys = ("worker_id", "pid", "hostname", "process_started_at", "started_at", "wake_address")
        with self._errors():
            return [dict(zip(keys, row)) for row in self._conn.execute(SQL_LIST_WORKERS)]


def _file_identity(path):
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_dev, info.st_ino)


def _marks(values):
    return ",".join("?" * len(values))


def _or_list(values):
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


def _fence(job):
    return {"seq": job.seq, "worker": job.worker_id, "attempt": job.attempts, "started": job.started_at}


def _job_from_row(row):
    (seq, job_id, command, state, priority, attempts, max_retries, timeout, cwd, env,
     created_at, updated_at, next_run_at, started_at, finished_at, worker_id,
     lease_expires_at, exit_code, error_message) = row
    return Job(
        seq=seq,
        id=job_id,
        command=command,
        state=JobState(state),
        priority=priority,
        attempts=attempts,
        max_retries=max_retries,
        timeout=timeout,
        cwd=cwd,
        env=json.loads(env) if env else {},
        created_at=created_at,
        updated_at=updated_at,
        next_run_at=next_run_at,
        started_at=started_at,
        finished_at=finished_at,
        worker_id=worker_id,
        lease_expires_at=lease_expires_at,
        exit_code=exit_code,
        error_message=error_message,
    )


def _split_sql(script):
    """Statements of a migration script (ours: no semicolons inside literals)."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]
