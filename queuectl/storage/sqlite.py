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
import time

try:
    import fcntl
except ImportError:  # Windows: writers rely on SQLite's busy handler alone
    fcntl = None

from queuectl.config import fsync_directory
from queuectl.errors import DiskFullError, DuplicateJobError, InvalidTransitionError, JobNotFoundError, StorageError
from queuectl.jobs import (
    CANCELLABLE_STATES,
    Attempt,
    Job,
    JobState,
    QueueStats,
    WorkerTally,
    percentile_rank,
)
from queuectl.storage.base import PurgeResult, Storage
from queuectl.storage.sqlite_sql import (
    APPLICATION_ID,
    BUSY_TIMEOUT_SECONDS,
    LIST_BATCH,
    LIST_ORDER,
    MIGRATIONS,
    PURGE_BATCH,
    SCHEMA_VERSION,
    SQL_ANY_EXPIRED,
    SQL_ATTEMPTS,
    SQL_CANCEL,
    SQL_CANCEL_ATTEMPT,
    SQL_CLAIM_NEXT,
    SQL_CLOSE_ATTEMPT,
    SQL_COUNT,
    SQL_COUNT_SCHEDULED,
    SQL_EXPIRED,
    SQL_EXPIRED_WITH_ATTEMPT,
    SQL_FINISH,
    SQL_GET,
    SQL_HOLDS_CLAIM,
    SQL_INSERT_JOB,
    SQL_KEEP_OUTPUT,
    SQL_LIST,
    SQL_LIST_WORKERS,
    SQL_NEXT_DUE,
    SQL_OPEN_ATTEMPT,
    SQL_PAUSE,
    SQL_PAUSED_SINCE,
    SQL_PURGE_ATTEMPT_IDS,
    SQL_PURGE_DELETE,
    SQL_PURGE_PICK,
    SQL_REGISTER_WORKER,
    SQL_RELEASE_CANCELLED,
    SQL_RENEW_LEASE,
    SQL_RESUME,
    SQL_REVIVE,
    SQL_REVIVE_ALL,
    SQL_RUNNING_ATTEMPTS,
    SQL_SETUP_STATE,
    SQL_STATS_ATTEMPTS,
    SQL_STATS_COMPLETED_SINCE,
    SQL_STATS_MOST_ATTEMPTS,
    SQL_STATS_OLDEST_WAITING,
    SQL_STATS_RUN_TIMES,
    SQL_STATS_RUN_TIME_AT,
    SQL_STATS_WORKERS,
    SQL_STOPPING_CANCELLED,
    SQL_UNREGISTER_WORKER,
)


class SqliteStorage(Storage):
    """The queue in a single SQLite file."""

    # BEGIN IMMEDIATE takes the write lock at once: read-then-write in one
    # transaction can't be overtaken by another writer.
    begin_statement = "BEGIN IMMEDIATE"

    def __init__(self, path, *, durable=True):
        self.path = path
        self._depth = 0
        self._translate = _TranslateErrors(self)
        self._write = _WriteTransaction(self)
        self._turn_fd = None
        self._conn = self._connect(durable)
        try:
            # Someone else's database is refused before we leave a lock file beside it.
            setup = self._read_setup()
            self._turn_fd = _open_turn_lock(path + "-writer.lock")
            if setup != (APPLICATION_ID, SCHEMA_VERSION):
                # First users of a new file (or of an older schema) race to
                # create it and switch it to WAL: they take turns, and each
                # decides again once it holds the turn.
                self._take_turn()
                try:
                    self._set_up()
                finally:
                    self._end_turn()
        except BaseException:
            self._conn.close()
            self._close_turn_lock()
            raise
        self._identity = _file_identity(path)

    # --- connection --------------------------------------------------------

    def _connect(self, durable):
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open database {self.path}: {exc}") from None
        try:
            # Connection settings only: nothing here writes to the file.
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise self._open_error(exc) from None
        return conn

    def _read_setup(self):
        """(application id, schema version) of the file, read in one statement.

        One statement is one read transaction, so another process finishing
        the set-up between two reads can't make a half-made queue look foreign.
        """
        with self._errors():
            app_id, version, tables = self._conn.execute(SQL_SETUP_STATE).fetchone()
        if app_id != APPLICATION_ID and (app_id != 0 or tables):
            # Someone else's database: refuse it before changing anything in
            # it (switching it to WAL would rewrite its header).
            raise StorageError(f"{self.path} is not a queuectl database")
        if version > SCHEMA_VERSION:
            raise StorageError(f"{self.path} was written by a newer queuectl (schema {version})")
        return app_id, version

    def _set_up(self):
        """Switch a new file to WAL and bring its schema up to date.

        Runs while holding the writer turn; the state is read again because
        another process may have finished the work while this one waited.
        """
        app_id, version = self._read_setup()
        if (app_id, version) == (APPLICATION_ID, SCHEMA_VERSION):
            return
        with self._errors():
            if self._switch_to_wal().lower() != "wal":
                # e.g. a network file system; still correct, just less concurrent.
                self._conn.execute("PRAGMA journal_mode=DELETE")
            self._conn.execute(self.begin_statement)
            try:
                # Re-read under SQLite's own write lock too, for writers that
                # don't take the turn (an older queuectl, the sqlite3 shell).
                app_id, version = self._read_setup()
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _split_sql(MIGRATIONS[target]):
                        self._conn.execute(statement)
                self._conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        if version == 0:
            # A new database file: SQLite syncs its contents and its WAL,
            # not the directory entry of the file itself.
            fsync_directory(os.path.dirname(self.path))

    def _switch_to_wal(self):
        """Set WAL mode, retrying while another process holds the file.

        The switch needs the file to itself, and SQLite answers "database is
        locked" at once instead of calling its busy handler. Only writers
        without the writer turn (no flock here) can meet that.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        pause = 0.001
        while True:
            try:
                return self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _open_error(self, exc):
        text = str(exc)
        if "disk is full" in text:
            return DiskFullError(f"database {self.path}: {text}")
        if "not a database" in text:
            return StorageError(f"{self.path} is not a queuectl database")
        if "readonly" in text or "unable to open" in text:
            return StorageError(f"cannot write database {self.path}: {text}")
        return StorageError(f"database {self.path}: {text}")

    def _scalar(self, sql, params=()):
        row = self._conn.execute(sql, params).fetchone()
        return row[0] if row else None

    def transaction(self):
        """One atomic unit of work, holding the write lock from its start.

        Nested use joins the outer transaction, which is how ``batch()`` lets
        several verbs share one commit. Driver errors come out as StorageError.
        """
        return self._write

    batch = transaction

    def _take_turn(self):
        """Queue writers on an OS lock before they ask SQLite for its write lock.

        SQLite's busy handler sleeps in 1-15 ms steps while another writer
        holds the lock, though a worker's transaction lasts well under a
        millisecond; two workers spent much of a drain asleep. flock wakes the
        next writer the moment the lock is free. The lock is on a side file,
        never on the database's own files, whose byte-range locks SQLite owns.
        Writers that don't take it (an older queuectl, the sqlite3 shell)
        still meet SQLite's own locking, just more slowly.
        """
        if self._turn_fd is not None:
            fcntl.flock(self._turn_fd, fcntl.LOCK_EX)

    def _end_turn(self):
        if self._turn_fd is not None:
            fcntl.flock(self._turn_fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _snapshot(self):
        """Several reads that see one consistent state (a WAL read transaction)."""
        self._conn.execute("BEGIN DEFERRED")
        try:
            yield self._conn
        finally:
            self._conn.execute("COMMIT")

    def _errors(self):
        """Turn driver errors into ours, so callers never see sqlite3."""
        return self._translate

    def is_replaced(self):
        return _file_identity(self.path) != self._identity

    def close(self):
        self._conn.close()
        self._close_turn_lock()

    def _close_turn_lock(self):
        if self._turn_fd is not None:
            os.close(self._turn_fd)
            self._turn_fd = None

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
            with self.transaction() as conn:
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
        with self.transaction() as conn:
            rows = conn.execute(SQL_CLAIM_NEXT, params).fetchall()
            if not rows:
                return None
            job = _job_from_row(rows[0])
            cursor = conn.execute(SQL_OPEN_ATTEMPT, (job.seq, job.attempts, worker_id, now))
            job.attempt_id = cursor.lastrowid
        return job

    def renew_lease(self, job, now, lease_seconds):
        params = dict(_fence(job), lease=now + lease_seconds, now=now)
        with self.transaction() as conn:
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
        with self.transaction() as conn:
            return conn.execute(SQL_RELEASE_CANCELLED, _fence(job)).rowcount == 1

    def keep_output(self, job, result):
        params = {
            "attempt_id": job.attempt_id,
            "worker": job.worker_id,
            "stdout": result.stdout_tail,
            "stderr": result.stderr_tail,
        }
        with self.transaction() as conn:
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
        with self.transaction() as conn:
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
        with self.transaction() as conn:
            if conn.execute(sql, [now, now, job_id, *values]).rowcount != 1:
                job = self._get_or_none(job_id)
                if job is None:
                    raise JobNotFoundError(f"job {job_id!r} not found")
                if job.state in states and job.lease_expires_at is not None:
                    if job.lease_expires_at < now:
                        # No worker is left to stop that run: the next one to start will.
                        raise InvalidTransitionError(
                            f"job {job_id!r} can't be retried yet: its worker {job.worker_id} was lost while "
                            "stopping the cancelled run; the next worker to start stops what is left of it"
                        )
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
        with self.transaction() as conn:
            return conn.execute(sql, [now, now, *values]).rowcount

    def cancel(self, job_id, now):
        with self.transaction() as conn:
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
            with self.transaction() as conn:
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
        with self.transaction() as conn:
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
        with self.transaction() as conn:
            conn.execute(
                SQL_REGISTER_WORKER,
                (worker_id, pid, hostname, process_started_at, now, wake_address),
            )

    def unregister_worker(self, worker_id):
        with self.transaction() as conn:
            conn.execute(SQL_UNREGISTER_WORKER, (worker_id,))

    def list_workers(self):
        keys = ("worker_id", "pid", "hostname", "process_started_at", "started_at", "wake_address")
        with self._errors():
            return [dict(zip(keys, row)) for row in self._conn.execute(SQL_LIST_WORKERS)]


class _TranslateErrors:
    """Context manager turning driver errors into StorageError.

    A class, made once per store, rather than a generator-based context
    manager: these wrap every statement of a worker's hot path, and building
    a generator and its wrapper per use showed up in the worker's profile.
    """

    __slots__ = ("store",)

    def __init__(self, store):
        self.store = store

    def __enter__(self):
        return self.store._conn

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is not None and issubclass(exc_type, sqlite3.DatabaseError):
            if not issubclass(exc_type, sqlite3.IntegrityError):  # callers give those meaning
                raise self.store._open_error(exc) from None
        return False


class _WriteTransaction(_TranslateErrors):
    """``SqliteStorage.transaction()``: BEGIN IMMEDIATE ... COMMIT, nestable."""

    __slots__ = ()

    def __enter__(self):
        store = self.store
        if store._depth:
            store._depth += 1
            return store._conn
        store._take_turn()
        try:
            store._conn.execute(store.begin_statement)
        except BaseException as exc:
            store._end_turn()
            if isinstance(exc, sqlite3.DatabaseError):
                raise store._open_error(exc) from None
            raise
        store._depth = 1
        return store._conn

    def __exit__(self, exc_type, exc, traceback):
        store = self.store
        store._depth -= 1
        if not store._depth:
            conn = store._conn
            try:
                if exc_type is None:
                    try:
                        conn.execute("COMMIT")
                    except sqlite3.DatabaseError as commit_error:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise store._open_error(commit_error) from None
                elif conn.in_transaction:  # SQLite may already have rolled back (a full disk)
                    conn.execute("ROLLBACK")
            finally:
                store._end_turn()
        return super().__exit__(exc_type, exc, traceback)


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


def _open_turn_lock(path):
    """The side file writers take turns on; None where flock is unavailable."""
    if fcntl is None:
        return None
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError:
        return None  # e.g. a read-only directory: SQLite's own locking still holds


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
