"""Jobs as data: the ``Job`` record, its states, spec validation and backoff.

Everything here is pure: no I/O, no clock. Callers pass "now" in, so the
same code serves the CLI, the worker and tests with an injected clock.
"""

import enum
import json
import math
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Dict, List, Optional

from queuectl.errors import ValidationError

# How much of each output stream the database keeps for an attempt. The full
# output lives in the attempt's log files; this tail is what `list`/`show` see.
OUTPUT_TAIL_BYTES = 4096
# The longest error message we store; stderr lines can be arbitrarily long.
ERROR_MESSAGE_CHARS = 500
MAX_ID_LENGTH = 200


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


# --- job specs -------------------------------------------------------------

JOB_FIELDS = ("id", "command", "max_retries", "priority", "run_at", "delay", "timeout", "cwd", "env")


def parse_job_spec(spec, *, now, default_max_retries, default_cwd):
    """Validate one user-supplied job object and build a pending ``Job``.

    Every problem raises ``ValidationError`` naming the field, so a batch can
    be checked whole before anything is written.
    """
    if not isinstance(spec, dict):
        raise ValidationError(f"a job must be a JSON object, got {_json_type(spec)}")
    unknown = sorted(set(spec) - set(JOB_FIELDS))
    if unknown:
        allowed = ", ".join(JOB_FIELDS)
        raise ValidationError(f"unknown field {unknown[0]!r} (allowed: {allowed})")

    job_id = _check_id(spec["id"]) if "id" in spec else uuid.uuid4().hex

    command = spec.get("command")
    if command is None:
        raise ValidationError("field 'command' is required")
    if not isinstance(command, str):
        raise ValidationError(f"field 'command' must be a string, got {_json_type(command)}")
    if not command.strip():
        raise ValidationError("field 'command' must not be empty")
    _check_text(command, "field 'command'")

    max_retries = _int_field(spec, "max_retries", default_max_retries, minimum=0)
    priority = _int_field(spec, "priority", 0)
    timeout = _number_field(spec, "timeout", None)

    if "run_at" in spec and "delay" in spec:
        raise ValidationError("give either 'run_at' or 'delay', not both")
    next_run_at = now
    if "run_at" in spec:
        if not isinstance(spec["run_at"], str):
            raise ValidationError("field 'run_at' must be an ISO-8601 time string")
        next_run_at = parse_time(spec["run_at"], "run_at")
    elif "delay" in spec:
        next_run_at = now + _number_field(spec, "delay", 0)

    cwd = default_cwd
    if "cwd" in spec:
        cwd = spec["cwd"]
        if not isinstance(cwd, str) or not cwd:
            raise ValidationError(f"field 'cwd' must be a non-empty string, got {_json_type(cwd)}")
        _check_text(cwd, "field 'cwd'")

    env = spec.get("env", {})
    if not isinstance(env, dict):
        raise ValidationError(f"field 'env' must be an object of strings, got {_json_type(env)}")
    for key, value in env.items():
        if not key or "=" in key:
            raise ValidationError(f"field 'env' has an invalid variable name {key!r}")
        _check_text(key, "field 'env' variable name")
        if not isinstance(value, str):
            raise ValidationError(f"field 'env' value for {key!r} must be a string")
        _check_text(value, f"field 'env' value for {key!r}")

    return Job(
        id=job_id,
        command=command,
        max_retries=max_retries,
        priority=priority,
        timeout=timeout,
        cwd=cwd,
        env=dict(env),
        created_at=now,
        updated_at=now,
        next_run_at=next_run_at,
    )


def _check_text(text, what):
    """Refuse strings the OS can't pass to a process (they'd fail every attempt)."""
    if "\x00" in text:
        raise ValidationError(f"{what} must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{what} contains an unpaired surrogate (invalid Unicode)") from None


def _check_id(job_id):
    if not isinstance(job_id, str):
        raise ValidationError(f"field 'id' must be a string, got {_json_type(job_id)}")
    _check_text(job_id, "field 'id'")
    if not job_id.strip():
        raise ValidationError("field 'id' must not be empty")
    if len(job_id) > MAX_ID_LENGTH:
        raise ValidationError(f"field 'id' is longer than {MAX_ID_LENGTH} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in job_id):
        raise ValidationError("field 'id' must not contain control characters")
    return job_id


def _int_field(spec, name, default, minimum=None):
    if name not in spec:
        return default
    value = spec[name]
    # bool is an int in Python, but `"max_retries": true` is a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"field {name!r} must be an integer, got {_json_type(value)}")
    if minimum is not None and value < minimum:
        raise ValidationError(f"field {name!r} must be >= {minimum}, got {value}")
    if abs(value) > 2**62:
        raise ValidationError(f"field {name!r} is out of range")
    return value


def _number_field(spec, name, default):
    if name not in spec:
        return default
    value = spec[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"field {name!r} must be a number, got {_json_type(value)}")
    if not math.isfinite(value) or value < 0:
        raise ValidationError(f"field {name!r} must be a non-negative number, got {value}")
    if value > 10**10:
        raise ValidationError(f"field {name!r} is out of range")
    return float(value)


def _json_type(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# --- time ------------------------------------------------------------------


def parse_time(text, name="time"):
    """Parse an ISO-8601 time to a UTC timestamp; a time without zone is local."""
    raw = text.strip()
    # Python before 3.11 does not accept a trailing "Z" in fromisoformat.
    if raw[-1:] in ("Z", "z"):
        raw = raw[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationError(
            f"{name} {text!r} is not an ISO-8601 time (e.g. 2026-12-03T10:00:00Z)"
        ) from None
    try:
        # astimezone() on a naive datetime interprets it in the local zone.
        stamp = moment.astimezone(timezone.utc).timestamp()
        format_iso(stamp)  # must be representable again when shown
    except (ValueError, OverflowError, OSError):
        raise ValidationError(f"{name} {text!r} is out of range") from None
    return stamp


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text, name="duration"):
    """Parse ``90``, ``90s``, ``5m``, ``2h``, ``7d`` into seconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValidationError(f"{name} {text!r} is not a duration (e.g. 30s, 5m, 2h, 7d)")
    number, unit = match.groups()
    return float(number) * _UNIT_SECONDS[(unit or "s").lower()]


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
    last = last_sentence(stderr_tail)
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


def truncate(text, limit):
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_unique_ids(jobs: List[Job]):
    """Refuse a batch that names the same id twice before touching storage."""
    seen = set()
    for job in jobs:
        if job.id in seen:
            raise ValidationError(f"job id {job.id!r} appears more than once in the batch")
        seen.add(job.id)


def parse_job_batch(text, *, now, default_max_retries, default_cwd, overrides=None):
    """Parse a JSON object, a JSON array of objects, or JSON lines into jobs.

    The whole batch is validated before anything is returned, so callers can
    store it in one transaction or not at all. ``overrides`` (from command
    line options) replace the same fields in every job.
    """
    specs = _decode_specs(text)
    if not specs:
        raise ValidationError("no jobs given")
    jobs = []
    for index, spec in enumerate(specs, start=1):
        if overrides and isinstance(spec, dict):
            spec = dict(spec, **overrides)
            if "run_at" in overrides:
                spec.pop("delay", None)
            elif "delay" in overrides:
                spec.pop("run_at", None)
        try:
            jobs.append(
                parse_job_spec(spec, now=now, default_max_retries=default_max_retries, default_cwd=default_cwd)
            )
        except ValidationError as exc:
            if len(specs) == 1:
                raise
            raise ValidationError(f"job {index}: {exc.message}") from None
    check_unique_ids(jobs)
    return jobs


def _reject_duplicate_keys(pairs):
    data = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"duplicate key {key!r}")
        data[key] = value
    return data


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant)


def _loads(text):
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _decode_specs(text):
    # A byte order mark is what some Windows editors put first; it isn't data.
    stripped = text.lstrip("\ufeff").strip()
    if not stripped:
        raise ValidationError("no jobs given (empty input)")
    try:
        data = _loads(stripped)
    except ValueError as first_error:
        # Not one JSON document: maybe JSON lines, one job per line.
        if "\n" not in stripped or getattr(first_error, "msg", "") != "Extra data":
            raise ValidationError(f"invalid JSON: {_json_error(first_error)}") from None
        specs = []
        for number, line in enumerate(stripped.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                specs.append(_loads(line))
            except ValueError as exc:
                raise ValidationError(f"invalid JSON on line {number}: {_json_error(exc)}") from None
        return specs
    if isinstance(data, list):
        return data
    return [data]


def _json_error(exc):
    return getattr(exc, "msg", str(exc)) + (
        f" (line {exc.lineno}, column {exc.colno})" if hasattr(exc, "lineno") else ""
    )
