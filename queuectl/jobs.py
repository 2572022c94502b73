"""Jobs as data: the ``Job`` record, its states, attempts, stats and backoff.

Everything here is pure: no I/O, no clock. Callers pass "now" in, so the
same code serves the CLI, the worker and tests with an injected clock.
Turning user input into jobs lives next door, in ``specs.py``.
"""

import enum
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Dict, List, Optional

from queuectl.errors import ValidationError

# How much of each output stream the database keeps for an attempt. The full
# output lives in the attempt's log files; this tail is what `list`/`show` see.
OUTPUT_TAIL_BYTES = 4096
# The longest error message we store; stderr lines can be arbitrarily long.
ERROR_MESSAGE_CHARS = 500


class JobState(str, enum.Enum):
    """Where a job is in its life. Values are the strings users see and type."""

    PENDING = "pending"  # waiting to be claimed (possibly scheduled for later)
    PROCESSING = "processing"  # claimed by a worker that holds its lease
    COMPLETED = "completed"  # the command exited 0
    FAILED = "failed"  # an attempt failed; claimable again at next_run_at
    DLQ = "dlq"  # attempts exhausted: parked in the dead letter queue
    CANCELLED = "cancelled"  # stopped by an operator; never claimed again unless retried

    @classmethod
    def parse(cls, text):
        """Turn user text into a state; ``dead`` is an alias of ``dlq``."""
        name = str(text).strip().lower()
        name = _STATE_ALIASES.get(name, name)
        for state in cls:
            if state.value == name:
                return state
        choices = ", ".join(s.value for s in cls)
        raise ValidationError(f"unknown state {text!r} (choose from {choices}, dead)")


# Other spellings users type for a state.
_STATE_ALIASES = {"dead": "dlq", "canceled": "cancelled"}

# States a worker may claim from, once their next_run_at has come.
CLAIMABLE_STATES = (JobState.PENDING, JobState.FAILED)
# States a job never leaves by itself: only an operator's retry or purge moves it.
FINISHED_STATES = (JobState.COMPLETED, JobState.DLQ, JobState.CANCELLED)
# States `retry` accepts: the job gets a fresh attempt budget and runs now.
RETRYABLE_STATES = (JobState.FAILED, JobState.CANCELLED, JobState.DLQ)
# States `cancel` accepts.
CANCELLABLE_STATES = (JobState.PENDING, JobState.FAILED, JobState.PROCESSING)

# Orders `list --sort` offers, each in its natural direction (`--reverse` flips it).
LIST_SORTS = {
    "created": "oldest first (the default)",
    "priority": "claim order: highest priority first, then oldest",
    "next_run": "soonest next run first",
    "updated": "most recently changed first",
    "id": "by id, alphabetically",
}


def check_purgeable(states):
    """Only finished jobs may be purged: a purge must never drop queued work."""
    if not states:
        raise ValidationError("give --state (completed, dlq or cancelled) to say which jobs to purge")
    for state in states:
        if state not in FINISHED_STATES:
            allowed = ", ".join(s.value for s in FINISHED_STATES)
            raise ValidationError(f"cannot purge {state.value} jobs: only finished jobs ({allowed}) can be purged")
    return list(dict.fromkeys(states))


@dataclass
class Job:
    """One job as stored. Times are POSIX timestamps (seconds, UTC)."""

    id: str
    command: str
    max_retries: int
    created_at: float
    next_run_at: float
    state: JobState = JobState.PENDING
    priority: int = 0
    attempts: int = 0
    timeout: Optional[float] = None
    cwd: Optional[str] = None
    env: Dict[str, str] = field(default_factory=dict)
    updated_at: Optional[float] = None
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    worker_id: Optional[str] = None
    lease_expires_at: Optional[float] = None
    exit_code: Optional[int] = None
    error_message: Optional[str] = None
    # Storage-assigned: insertion order, and the row of the current attempt.
    seq: Optional[int] = None
    attempt_id: Optional[int] = None

    @property
    def attempt_limit(self):
        """How many runs the job gets in all; ``max_retries: 0`` still runs once."""
        return max(1, self.max_retries)

    @property
    def is_exhausted(self):
        return self.attempts >= self.attempt_limit

    @property
    def claim_token(self):
        """Names this claim (job, attempt, worker, claim time) for as long as it runs.

        The worker marks the job's processes with it, so whoever reaps the
        claim later can find a run that outlived its worker.
        """
        return f"{self.seq}:{self.attempts}:{self.worker_id}:{self.started_at:.6f}"

    def to_dict(self):
        """A JSON-ready dict: ISO-8601 UTC times, the state as its string."""
        # Spelled out rather than asdict(), whose deep copy made `list --json`
        # of 100,000 jobs several times slower.
        return {
            "id": self.id,
            "command": self.command,
            "max_retries": self.max_retries,
            "created_at": format_iso(self.created_at),
            "next_run_at": format_iso(self.next_run_at),
            "state": self.state.value,
            "priority": self.priority,
            "attempts": self.attempts,
            "timeout": self.timeout,
            "cwd": self.cwd,
            "env": dict(self.env),
            "updated_at": format_iso(self.updated_at),
            "started_at": format_iso(self.started_at),
            "finished_at": format_iso(self.finished_at),
            "worker_id": self.worker_id,
            "lease_expires_at": format_iso(self.lease_expires_at),
            "exit_code": self.exit_code,
            "error_message": self.error_message,
        }


TIME_FIELDS = (
    "created_at",
    "updated_at",
    "next_run_at",
    "started_at",
    "finished_at",
    "lease_expires_at",
)


@dataclass
class Attempt:
    """One run of a job, as recorded for `show` and `logs`."""

    id: int
    job_id: str
    number: int
    worker_id: str
    started_at: float
    finished_at: Optional[float] = None
    exit_code: Optional[int] = None
    error_message: Optional[str] = None
    stdout_tail: str = ""
    stderr_tail: str = ""

    @property
    def duration(self):
        """Seconds the attempt ran, or None while it is still running."""
        if self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)

    @property
    def succeeded(self):
        # A successful attempt is the only finished one without an error.
        return self.finished_at is not None and self.error_message is None

    def to_dict(self):
        data = asdict(self)
        data["started_at"] = format_iso(self.started_at)
        data["finished_at"] = format_iso(self.finished_at)
        data["duration_seconds"] = self.duration
        return data


@dataclass
class AttemptResult:
    """What came of one attempt, as the worker hands it to storage."""

    succeeded: bool
    exit_code: Optional[int]
    error_message: Optional[str]
    stdout_tail: str = ""
    stderr_tail: str = ""


@dataclass
class WorkerTally:
    """What one worker has done, counted from the attempts it ran."""

    worker_id: str
    attempts: int = 0
    succeeded: int = 0
    failed: int = 0
    running: int = 0


@dataclass
class QueueStats:
    """A snapshot of the queue's health, as ``stats`` shows it.

    Run times are of finished attempts (whatever their outcome). Throughput
    counts successful attempts, i.e. jobs completed, in each window.
    """

    counts: Dict[JobState, int]
    scheduled: int  # pending or failed jobs whose next run is still in the future
    attempts_total: int
    jobs_attempted: int  # jobs with at least one recorded attempt
    max_attempts_per_job: int
    run_time_p50: Optional[float]
    run_time_p95: Optional[float]
    run_time_max: Optional[float]
    finished_attempts: int
    completed_last_minute: int
    completed_last_hour: int
    oldest_waiting_id: Optional[str]
    oldest_waiting_age: Optional[float]  # seconds a due job has waited to be claimed
    workers: List[WorkerTally] = field(default_factory=list)

    @property
    def success_rate(self):
        """Completed jobs as a share of jobs that finished running (completed or dead)."""
        done = self.counts[JobState.COMPLETED] + self.counts[JobState.DLQ]
        return None if done == 0 else self.counts[JobState.COMPLETED] / done

    @property
    def attempts_per_job(self):
        return None if self.jobs_attempted == 0 else self.attempts_total / self.jobs_attempted


def percentile_rank(count, fraction):
    """The 0-based position of the ``fraction`` percentile among ``count``
    sorted values (nearest-rank method: p50 of 1..10 is 5, p95 is 10)."""
    return max(0, math.ceil(fraction * count) - 1)


# --- time ------------------------------------------------------------------


def format_iso(timestamp):
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds")


# --- retries ---------------------------------------------------------------


def retry_delay(failed_attempts, base, max_delay):
    """Seconds to wait after the n-th failed attempt: ``base ** n``, capped."""
    try:
        delay = float(base) ** failed_attempts
    except OverflowError:
        return float(max_delay)
    return min(delay, float(max_delay))


def format_seconds(seconds):
    """``2`` -> ``2s``, ``2.25`` -> ``2.25s``: the delay as the logs show it."""
    return f"{seconds:.3g}s" if seconds < 10 else f"{seconds:.0f}s"


def summarize_failure(exit_code, stderr_tail):
    """``Exit code 1: <last stderr line(s)>``, bounded in length."""
    message = f"Exit code {exit_code}"
    last = printable(last_sentence(stderr_tail))
    if last:
        message = f"{message}: {last}"
    return truncate(message, ERROR_MESSAGE_CHARS)


def last_sentence(text):
    """The last non-empty line, joined with the lines it continues.

    Some shells wrap one message over lines ending in a comma (cmd.exe:
    "'x' is not recognized as an internal or external command,\noperable
    program or batch file."); the first half is the informative part.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    start = len(lines) - 1
    while start > 0 and lines[start - 1].endswith(","):
        start -= 1
    return " ".join(lines[start:])


# Control characters shown the way `cat -v` does (ESC as ^[), so that text a
# job wrote can't move the cursor, retitle the window or ring the bell when
# queuectl prints it. Tabs and newlines stay.
_CONTROL_STAND_INS = {code: "^" + chr(code + 64) for code in range(32) if chr(code) not in "\t\n"}
_CONTROL_STAND_INS[127] = "^?"
_CONTROL_STAND_INS.update({code: f"\\x{code:02x}" for code in range(128, 160)})


def printable(text):
    """``text`` with its control characters (but tab and newline) made visible."""
    if text.isprintable():
        return text
    return text.translate(_CONTROL_STAND_INS)


def truncate(text, limit):
    return text if len(text) <= limit else text[: limit - 3] + "..."
