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
import sqlite3

from queuectl.errors import DuplicateJobError, InvalidTransitionError, JobNotFoundError, StorageError
from queuectl.jobs import Attempt, Job, JobState
from queuectl.storage.base import Storage

# "QCTL" as a big-endian int: marks a file as a queuectl database.
APPLICATION_ID = 0x5143544C
SCHEMA_VERSION = 1
BUSY_TIMEOUT_SECONDS = 60.0

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

# claim_next: take the first due job in claim order and mark it processing.
# INDEXED BY pins the plan: without statistics the planner may pick jobs_state
# and sort every waiting job, which is O(queue) per claim instead of O(1).
SQL_CLAIM_NEXT = f"""
UPDATE jobs
   SET state = 'processing', attempts = attempts + 1, worker_id = :worker,
       started_at = :now, finished_at = NULL, lease_expires_at = :lease, updated_at = :now
 WHERE seq = (SELECT seq FROM jobs INDEXED BY jobs_claim_order
               WHERE state IN ('pending', 'failed') AND next_run_at <= :now
               ORDER BY priority DESC, created_at, seq
               LIMIT 1)
RETURNING {JOB_COLUMNS}
"""

# open_attempt: record the start of the attempt a claim began.
SQL_OPEN_ATTEMPT = """
INSERT INTO attempts (job_seq, number, worker_id, started_at) VALUES (?, ?, ?, ?)
"""

# fence: the WHERE clause that makes a change apply only to the current claim.
FENCE = "seq = :seq AND state = 'processing' AND worker_id = :worker AND attempts = :attempt"

# renew_lease: push the claim's lease forward.
SQL_RENEW_LEASE = f"UPDATE jobs SET lease_expires_at = :lease WHERE {FENCE}"

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

# any_expired: cheap read-only check before taking the write lock to reap.
SQL_ANY_EXPIRED = "SELECT 1 FROM jobs WHERE state = 'processing' AND lease_expires_at < ? LIMIT 1"

# next_due: the earliest time a waiting job becomes claimable.
SQL_NEXT_DUE = "SELECT min(next_run_at) FROM jobs WHERE state IN ('pending', 'failed')"

# revive: DLQ -> pending with a fresh attempt budget.
SQL_REVIVE = """
UPDATE jobs
   SET state = 'pending', attempts = 0, next_run_at = :now, updated_at = :now,
       worker_id = NULL, exit_code = NULL, error_message = NULL,
       started_at = NULL, finished_at = NULL
 WHERE id = :id AND state = 'dlq'
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

SQL_REGISTER_WORKER = """
INSERT OR REPLACE INTO workers (worker_id, pid, hostname, process_started_at, started_at, wake_address)
VALUES (?, ?, ?, ?, ?, ?)
"""
SQL_UNREGISTER_WORKER = "DELETE FROM workers WHERE worker_id = ?"
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

    # --- connection --------------------------------------------------------

    def _connect(self, durable):
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open database {self.path}: {exc}") from None
        try:
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
    def _errors(self):
        """Turn driver errors into ours, so callers never see sqlite3."""
        try:
            yield
        except sqlite3.IntegrityError:
            raise  # a constraint the caller turns into a meaningful error
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from None

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
        params = dict(_fence(job), lease=now + lease_seconds)
        with self._errors(), self.transaction() as conn:
            renewed = conn.execute(SQL_RENEW_LEASE, params).rowcount == 1
        if renewed:
            job.lease_expires_at = params["lease"]
        return renewed

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

    # --- operators ---------------------------------------------------------

    def revive(self, job_id, now):
        with self._errors(), self.transaction() as conn:
            if conn.execute(SQL_REVIVE, {"id": job_id, "now": now}).rowcount != 1:
                job = self._get_or_none(job_id)
                if job is None:
                    raise JobNotFoundError(f"job {job_id!r} not found")
                raise InvalidTransitionError(
                    f"job {job_id!r} is not in the DLQ (state: {job.state.value})"
                )
        return self.get(job_id)

    def get(self, job_id):
        job = self._get_or_none(job_id)
        if job is None:
            raise JobNotFoundError(f"job {job_id!r} not found")
        return job

    def _get_or_none(self, job_id):
        with self._errors():
            row = self._conn.execute(SQL_GET, (job_id,)).fetchone()
        return _job_from_row(row) if row else None

    def list_jobs(self, states=(), limit=None):
        sql = f"SELECT {JOB_COLUMNS} FROM jobs"
        params = [state.value for state in states]
        if params:
            sql += f" WHERE state IN ({','.join('?' * len(params))})"
        sql += " ORDER BY created_at, seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._errors():
            return [_job_from_row(row) for row in self._conn.execute(sql, params)]

    def count_by_state(self):
        counts = {state: 0 for state in JobState}
        with self._errors():
            for state, count in self._conn.execute(SQL_COUNT):
                counts[JobState(state)] = count
        return counts

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


def _fence(job):
    return {"seq": job.seq, "worker": job.worker_id, "attempt": job.attempts}


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
