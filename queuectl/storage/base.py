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
from typing import Callable, Dict, Iterable, List, Optional

from queuectl.jobs import Attempt, AttemptResult, Job, JobState


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
        claimant wins each attempt.
        """

    @abc.abstractmethod
    def renew_lease(self, job: Job, now: float, lease_seconds: float) -> bool:
        """Extend the claim on ``job``; False if the claim is no longer ours."""

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
    def reap_expired(self, now: float, retry_at: Callable[[Job], Optional[float]]) -> List[Job]:
        """Fail the attempts whose lease ran out (their worker is gone).

        ``retry_at(job)`` gives the time of the next attempt, or None when the
        job has no attempts left and goes to the DLQ. Returns the reaped jobs
        in their new state.
        """

    @abc.abstractmethod
    def next_due_at(self) -> Optional[float]:
        """The earliest ``next_run_at`` of any claimable job, or None."""

    # --- operators ---------------------------------------------------------

    @abc.abstractmethod
    def revive(self, job_id: str, now: float) -> Job:
        """Move a job from the DLQ back to pending with its attempts reset.

        Raises ``JobNotFoundError`` or ``InvalidTransitionError``.
        """

    @abc.abstractmethod
    def get(self, job_id: str) -> Job:
        """The job with this id; raises ``JobNotFoundError``."""

    @abc.abstractmethod
    def list_jobs(self, states: Iterable[JobState] = (), limit: Optional[int] = None) -> List[Job]:
        """Jobs (optionally only in ``states``) oldest first, at most ``limit``."""

    @abc.abstractmethod
    def count_by_state(self) -> Dict[JobState, int]:
        """How many jobs are in each state; every state is present."""

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
    def close(self) -> None:
        """Release the connection."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
