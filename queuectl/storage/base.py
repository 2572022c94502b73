"""The storage contract: queue verbs that every backend implements.

Backends take and return queuectl types (``Job``, ``Attempt``, ``JobState``,
plain values), never rows or driver exceptions. Every method that depends on
time takes ``now`` (a POSIX timestamp) so tests can drive the clock.

Fencing: once a worker has claimed a job, each later change it makes names
the claim (job, worker id and attempt number). If the claim is no longer
current -- the lease ran out and the job was reaped, or it was changed by
someone else -- the change is refused and the method returns False. A worker
that lost its lease can never overwrite a newer attempt.
"""

import abc
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set

from queuectl.jobs import Attempt, AttemptResult, Job, JobState, QueueStats


@dataclass
class PurgeResult:
    """What ``purge`` deleted: how many jobs, and the ids of their attempts
    (whose log files the caller removes from the queue home)."""

    jobs: int = 0
    attempt_ids: List[int] = field(default_factory=list)


class Storage(abc.ABC):
    """A durable job queue."""

    # --- producers ---------------------------------------------------------

    @abc.abstractmethod
    def add_jobs(self, jobs: List[Job]) -> None:
        """Store new jobs, all or none; a taken id raises ``DuplicateJobError``.

        Returns only once the jobs are durable.
        """

    # --- workers -----------------------------------------------------------

    @abc.abstractmethod
    def claim(self, worker_id: str, now: float, lease_seconds: float) -> Optional[Job]:
        """Take the next due job for ``worker_id``, or None when none is due.

        Due means pending or failed with ``next_run_at <= now``. Order: higher
        priority first, then older ``created_at``, then insertion order. The
        job comes back in state processing with ``attempts`` already counting
        this run and a lease until ``now + lease_seconds``. Exactly one
        claimant wins each attempt. Nothing is claimed while the queue is
        paused.
        """

    @abc.abstractmethod
    def renew_lease(self, job: Job, now: float, lease_seconds: float) -> bool:
        """Extend the claim on ``job``; False if the claim is no longer ours.

        A lease that already ran out is not renewed: a lapsed claim can only be
        reaped, never revived by a worker that was merely slow.
        """

    @abc.abstractmethod
    def holds_claim(self, job: Job) -> bool:
        """Whether the claim on ``job`` is still current; a read, never a write.

        Workers ask this often while a job runs, so a cancelled job is stopped
        within moments rather than at the next lease renewal.
        """

    @abc.abstractmethod
    def keep_output(self, job: Job, result: AttemptResult) -> None:
        """Store the output tails of an attempt whose claim was taken away.

        The attempt was already closed by whoever took the claim (a cancel or
        the reaper); this only adds what the run printed, for ``show``.
        """

    @abc.abstractmethod
    def complete(self, job: Job, result: AttemptResult, now: float) -> bool:
        """Record a successful attempt (fenced by the claim)."""

    @abc.abstractmethod
    def retry_later(self, job: Job, result: AttemptResult, now: float, retry_at: float) -> bool:
        """Record a failed attempt; the job is claimable again at ``retry_at``."""

    @abc.abstractmethod
    def bury(self, job: Job, result: AttemptResult, now: float) -> bool:
        """Record a failed last attempt and move the job to the DLQ."""

    @abc.abstractmethod
    def expired_claims(self, now: float) -> List[Job]:
        """Claims whose lease ran out before ``now`` (read only), with ``attempt_id`` set.

        The reaper looks at these first, to stop what is left of their runs
        before ``reap_expired`` makes the jobs claimable again.
        """

    @abc.abstractmethod
    def reap_expired(self, now: float, retry_at: Callable[[Job], Optional[float]]) -> List[Job]:
        """Fail the attempts whose lease ran out (their worker is gone).

        ``retry_at(job)`` gives the time of the next attempt, or None when the
        job has no attempts left and goes to the DLQ. Returns the reaped jobs
        in their new state.
        """

    @abc.abstractmethod
    def stopping_cancelled(self, now: float) -> List[Job]:
        """Jobs cancelled while running whose worker died before confirming the stop.

        A cancelled running job keeps its lease until ``release_cancelled``;
        these are the ones whose lease ran out first.
        """

    @abc.abstractmethod
    def release_cancelled(self, job: Job) -> bool:
        """The cancelled run of ``job`` has no processes left: allow a retry."""

    @abc.abstractmethod
    def next_due_at(self) -> Optional[float]:
        """The earliest ``next_run_at`` of any claimable job, or None.

        None as well while the queue is paused: nothing will become due.
        """

    @abc.abstractmethod
    def running_attempt_ids(self) -> Set[int]:
        """Ids of the attempts still held by a claim (their log files are in use)."""

    # --- operators ---------------------------------------------------------

    @abc.abstractmethod
    def revive(self, job_id: str, now: float, states: Sequence[JobState] = (JobState.DLQ,)) -> Job:
        """Move a job in one of ``states`` back to pending, due now, attempts reset.

        Raises ``JobNotFoundError``, or ``InvalidTransitionError`` when the
        job is in another state.
        """

    @abc.abstractmethod
    def revive_all(self, now: float, states: Sequence[JobState] = (JobState.DLQ,)) -> int:
        """``revive`` every job in ``states`` at once; returns how many moved."""

    @abc.abstractmethod
    def cancel(self, job_id: str, now: float) -> Job:
        """Cancel a pending, failed or running job; it is not run or retried again.

        A running job's claim ends here (its attempt is closed as cancelled),
        so its worker's next claim check fails and the worker stops the
        job's process tree. Returns the job as it was just before, so callers
        can tell whether a worker was running it. Raises ``JobNotFoundError``,
        or ``InvalidTransitionError`` for a job that already finished.
        """

    @abc.abstractmethod
    def purge(self, states: Sequence[JobState], finished_before: Optional[float] = None) -> PurgeResult:
        """Delete jobs in ``states`` (finished states only) with their attempts.

        With ``finished_before``, only jobs whose last change (for a finished
        job: when it finished) is older than that time. A cancelled job whose
        run is still being stopped is kept until its worker lets go of it:
        that run may still write output for its attempt.
        """

    @abc.abstractmethod
    def set_paused(self, paused: bool, now: float) -> bool:
        """Pause or resume claiming; returns False if it already was so."""

    @abc.abstractmethod
    def paused_since(self) -> Optional[float]:
        """When the queue was paused, or None if it is not paused."""

    @abc.abstractmethod
    def get(self, job_id: str) -> Job:
        """The job with this id; raises ``JobNotFoundError``."""

    @abc.abstractmethod
    def iter_jobs(
        self,
        states: Iterable[JobState] = (),
        limit: Optional[int] = None,
        sort: str = "created",
        reverse: bool = False,
    ) -> Iterator[Job]:
        """Jobs (optionally only in ``states``), one at a time, at most ``limit``.

        ``sort`` is one of ``jobs.LIST_SORTS``; ``reverse`` flips it. Rows
        come from the database as they are read, so a caller printing
        100,000 jobs never holds them all.
        """

    def list_jobs(self, states: Iterable[JobState] = (), limit: Optional[int] = None, sort: str = "created", reverse: bool = False) -> List[Job]:
        """``iter_jobs`` as a list (oldest first by default)."""
        return list(self.iter_jobs(states, limit, sort, reverse))

    @abc.abstractmethod
    def count_by_state(self) -> Dict[JobState, int]:
        """How many jobs are in each state; every state is present."""

    @abc.abstractmethod
    def count_scheduled(self, now: float, states: Iterable[JobState] = ()) -> int:
        """Pending or failed jobs (only ``states``, if given) not due until after ``now``."""

    @abc.abstractmethod
    def stats(self, now: float) -> QueueStats:
        """A consistent snapshot of the queue's numbers, as of ``now``."""

    @abc.abstractmethod
    def attempts(self, job_id: str) -> List[Attempt]:
        """Every recorded attempt of a job, oldest first."""

    # --- worker registry ---------------------------------------------------

    @abc.abstractmethod
    def register_worker(self, worker_id: str, pid: int, hostname: str, process_started_at: float, now: float, wake_address: Optional[str]) -> None:
        """Announce a live worker (for ``status``, ``worker stop`` and wake-ups)."""

    @abc.abstractmethod
    def unregister_worker(self, worker_id: str) -> None:
        """Forget a worker that exited (or was found dead)."""

    @abc.abstractmethod
    def list_workers(self) -> List[dict]:
        """Registered workers: dicts with worker_id, pid, hostname, process_started_at, started_at, wake_address."""

    # --- grouping ----------------------------------------------------------

    @abc.abstractmethod
    def batch(self):
        """A context manager: the verbs called inside commit together or not at all.

        The worker records a finished attempt and claims its next job in one
        batch, halving the commits per job.
        """

    # --- lifecycle ---------------------------------------------------------

    @abc.abstractmethod
    def is_replaced(self) -> bool:
        """Whether the database we opened is no longer the one at its location.

        True once it was deleted or replaced (a "clean slate" while workers
        ran): a worker still attached to it would serve a queue nobody can
        reach, and be out of reach of ``status`` and ``worker stop``.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
