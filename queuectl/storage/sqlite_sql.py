"""The SQLite backend's schema and statements, each named with its purpose.

Kept apart from ``sqlite.py`` so the storage class reads as queue logic and
the SQL can be reviewed (and its plans checked) in one place.
"""

from queuectl.jobs import LIST_SORTS

# "QCTL" as a big-endian int: marks a file as a queuectl database.
APPLICATION_ID = 0x5143544C
SCHEMA_VERSION = 2
BUSY_TIMEOUT_SECONDS = 60.0

# Is this file ours, and how far is its schema? One statement, one snapshot.
SQL_SETUP_STATE = """
SELECT (SELECT application_id FROM pragma_application_id()),
       (SELECT user_version FROM pragma_user_version()),
       (SELECT count(*) FROM sqlite_master)
"""

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
   AND lease_expires_at IS NULL
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
