"""The worker loop.

One iteration, in order:

1. Stop if a graceful stop was requested (SIGINT / SIGTERM between jobs).
2. Housekeeping, outside any transaction since it may take a moment: at
   most once a second, exit if the database file was deleted or replaced
   (a clean slate made under us), and reap claims whose lease ran out (their worker died),
   first stopping whatever is left of their runs and giving a dead worker's
   spooled output to its attempt; every few minutes, delete attempt logs
   past their retention.
3. Claim the next due job: highest priority, then oldest (nothing while
   the queue is paused).
4. If none is due, wait until the next job becomes due, an ``enqueue`` or
   ``resume`` wakes us, a signal arrives, or ``poll_interval`` passes; then
   go to 1.
5. Run the command (see ``executor``). Every ``CLAIM_CHECK_SECONDS`` read
   whether the claim still stands, and renew the lease every third of its
   length. A claim that is gone (the job was cancelled, or the lease ran out
   and the job was reaped) means the job's tree is stopped at once.
6. Record the outcome, fenced by the claim: completed; failed with the time
   of its next attempt (``backoff_base ** attempts`` seconds, capped); or
   buried in the DLQ once its attempts are used up. A run whose claim was
   taken away only leaves its output with the attempt. Unless a stop was
   requested, steps 2-3 for the next job happen in the same transaction, so
   a busy worker commits once per job.

Signals only set flags and wake the loop; SIGINT or SIGTERM lets the
current job finish, then the worker exits 0. A second SIGINT (Ctrl+C
twice) stops the job's whole tree, records that attempt as failed, and the
worker exits 130. SIGTERM never escalates: ``worker stop`` run twice must
still be graceful (``--force`` is the way to cut jobs short). Unexpected
errors are logged with their traceback and the loop carries on.
"""

import logging
import os
import select
import signal
import socket
import time

from queuectl import config as config_mod
from queuectl import executor, maintenance, wakeup, worklog
from queuectl.errors import DiskFullError, JobNotFoundError
from queuectl.jobs import AttemptResult, JobState, format_seconds, printable, retry_delay

logger = logging.getLogger("queuectl.worker")

REAP_INTERVAL_SECONDS = 1.0
LOG_PRUNE_INTERVAL_SECONDS = 300.0
ERROR_PAUSE_SECONDS = 1.0
# How often a running job's claim is re-read. A read is cheap (WAL readers
# never block or write), so cancellation takes effect within about this long
# even when leases are renewed only every ten seconds.
CLAIM_CHECK_SECONDS = 0.5


# The stop reason a run gets when its job was cancelled while it ran.
CANCELLED_REASON = "cancelled"


def worker_name(pid=None):
    return f"worker-{pid or os.getpid()}"


class Worker:
    """Claims and runs jobs from one queue until asked to stop."""

    def __init__(self, home, storage, *, burst=False, clock=time.time):
        self.home = home
        self.storage = storage
        self.burst = burst
        self.clock = clock
        self.worker_id = worker_name()
        self.config = config_mod.ConfigWatcher(home)
        self.stop_requested = False
        self.abort_requested = False
        self.database_replaced = False
        self._stop_announced = False
        self._last_reap = 0.0
        self._last_prune = 0.0
        self._paused_logged = False
        self._wake = None
        self._spools = ()
        self._signal_r = self._signal_w = None
        self._held_lines = []

    # --- lifecycle ---------------------------------------------------------

    def run(self):
        """Work until stopped (or, in burst mode, until nothing is due).

        Returns the exit status: 0, or 130 when a second Ctrl+C cut a job short.
        """
        self.config.current()  # a broken config file stops us here, with one clear error
        os.makedirs(self.home.logs_dir, exist_ok=True)
        self._spools = tuple(
            executor.Spool(self.home.spool_path(self.worker_id, stream)) for stream in config_mod.LOG_STREAMS
        )
        self._install_signal_handlers()
        self._wake = wakeup.WakeSocket()
        self._register()
        logger.info("Worker %s started (pid %s)", self.worker_id, os.getpid())
        try:
            job = None
            while not self.stop_requested:
                try:
                    if job is None:
                        self._housekeep()
                        if self.stop_requested:
                            break
                        job = self._claim()
                    if job is not None:
                        job = self._process(job)
                    elif self.burst:
                        break
                    else:
                        self._idle()
                except Exception:
                    # The job we held (if any) is recovered by its lease.
                    job = None
                    self._write_held_lines()
                    logger.exception("Worker %s hit an unexpected error; continuing", self.worker_id)
                    self._sleep(ERROR_PAUSE_SECONDS)
            if self.stop_requested and not self.database_replaced:
                logger.info("Worker %s received a stop signal; exiting", self.worker_id)
        finally:
            self._write_held_lines()
            self._unregister()
            self._wake.close()
            for spool in self._spools:
                spool.close()
            self._restore_signal_handlers()
        logger.info("Worker %s stopped", self.worker_id)
        return 130 if self.abort_requested else 0

    def _housekeeping_due(self):
        return self.clock() - self._last_reap >= REAP_INTERVAL_SECONDS

    def _housekeep(self):
        """Reap lost claims (at most once a second) and prune logs (every few minutes).

        Never inside a transaction: stopping a lost run may take the kill
        grace, and no other worker should wait on our write lock meanwhile.
        """
        settings = self.config.current()
        now = self.clock()
        if now - self._last_reap >= REAP_INTERVAL_SECONDS:
            self._last_reap = now
            if self.storage.is_replaced():
                logger.warning("The queue database was removed or replaced; worker %s exits", self.worker_id)
                self.database_replaced = self.stop_requested = True
                return
            self._reap(settings, now)
        if now - self._last_prune >= LOG_PRUNE_INTERVAL_SECONDS:
            self._last_prune = now
            self._prune_logs(settings, now)

    def _claim(self):
        """Claim the next due job, if any."""
        settings = self.config.current()
        job = self.storage.claim(self.worker_id, self.clock(), settings["lease_seconds"])
        if job is not None and self._paused_logged:
            self._note_pause()
        return job

    # --- one job -----------------------------------------------------------

    def _process(self, job):
        """Run a claimed job and record its outcome; returns the next claimed job, if any."""
        settings = self.config.current()
        limit = job.attempt_limit
        self._log_soon(
            logging.INFO, "Worker %s processing job %s (attempt %d/%d): %s",
            self.worker_id, job.id, job.attempts, limit, printable(job.command),
        )
        lease = settings["lease_seconds"]
        timeout = job.timeout if job.timeout is not None else settings["job_timeout"]

        def tick():
            if self._signal_r is not None:
                _drain(self._signal_r)
            if self.abort_requested:
                logger.warning("Second stop signal: stopping job %s now", job.id)
                return "worker was interrupted"
            if self.stop_requested and not self._stop_announced:
                self._stop_announced = True
                logger.info("Stop requested: finishing job %s, then exiting", job.id)
            if self.clock() >= job.lease_expires_at - lease * 2 / 3:
                held = self.storage.renew_lease(job, self.clock(), lease)
            else:
                held = self.storage.holds_claim(job)
            if not held:
                return self._why_claim_lost(job)
            return None

        run = executor.run_command(
            job.command,
            stdout=self._spools[0],
            stderr=self._spools[1],
            stdout_dest=self.home.attempt_log_path(job.attempt_id, "out"),
            stderr_dest=self.home.attempt_log_path(job.attempt_id, "err"),
            cwd=job.cwd,
            env={**job.env, executor.JOB_ID_ENV: job.id, executor.ATTEMPT_ENV: str(job.attempts)},
            timeout=timeout or None,
            tick=tick,
            tick_interval=max(0.05, min(CLAIM_CHECK_SECONDS, lease / 3)),
            wake_fds=[self._signal_r] if self._signal_r is not None else [],
            claim=job.claim_token,
            on_start=self._write_held_lines,
        )
        self._write_held_lines()  # if the command never started
        try:
            if self._housekeeping_due():
                # Record first: our own lease may have lapsed while the run was
                # being stopped, and housekeeping must not reap the job we hold.
                self._making_room(job, run, lambda: self._record(job, run, settings))
                self._write_held_lines()
                self._housekeep()
                next_job = None if self.stop_requested else self._claim()
            else:
                next_job = self._making_room(job, run, lambda: self._record_and_claim(job, run, settings))
        except Exception:
            # Nothing of it was committed: the lines describing it would be
            # untrue. The run is recovered by its lease, as a lost attempt.
            self._held_lines.clear()
            raise
        if next_job is None:
            self._write_held_lines()
        return next_job

    def _record_and_claim(self, job, run, settings):
        # Recording this outcome and claiming the next job share one commit.
        with self.storage.batch():
            self._record(job, run, settings)
            return None if self.stop_requested else self._claim()

    def _making_room(self, job, run, write):
        """``write()``; if the database's disk is full, free this run's log files and try once more.

        A job that prints until the disk is full leaves no room to record
        that it ended, nor for any other write of the queue's: without this
        the whole queue would stall on its output. The database keeps the
        last 4 KB of each stream, and ``logs`` falls back to that.
        """
        try:
            return write()
        except DiskFullError:
            self._held_lines.clear()  # nothing of that try was committed
            freed = False
            for stream in config_mod.LOG_STREAMS:
                path = self.home.attempt_log_path(job.attempt_id, stream)
                try:
                    freed = os.path.getsize(path) > 0 or freed
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            if not freed:
                raise
            run.output_disk_full = True
            logger.warning("Disk full: removed the log files of job %s to record its outcome", printable(job.id))
            return write()

    def _log_soon(self, level, message, *args):
        """Log a line at the next quiet moment, in order with the others.

        A job's outcome and the next job's start are written once the next
        command has started, while it runs: not while this worker holds the
        queue's write lock, and not in the gap between one job and the next.
        """
        self._held_lines.append((level, message, args))

    def _write_held_lines(self):
        if self._held_lines:
            try:
                worklog.log_lines(logger, self._held_lines)
            finally:
                self._held_lines.clear()

    def _why_claim_lost(self, job):
        try:
            current = self.storage.get(job.id)
        except JobNotFoundError:
            return "lost the claim (job was deleted)"
        if current.state == JobState.CANCELLED:
            return CANCELLED_REASON
        return "lost the claim (lease expired)"

    def _record(self, job, run, settings):
        now = self.clock()
        result = AttemptResult(
            succeeded=run.succeeded,
            exit_code=run.exit_code,
            error_message=run.error_message,
            stdout_tail=run.stdout_tail,
            stderr_tail=run.stderr_tail,
        )
        limit = job.attempt_limit
        if run.stopped_because == CANCELLED_REASON:
            # The cancel already closed the job and its attempt; only the output is ours to add.
            self.storage.keep_output(job, result)
            # The tree is gone (executor stopped it), so the job may be retried now.
            self.storage.release_cancelled(job)
            self._log_soon(
                logging.INFO, "Job %s was cancelled; stopped its process tree (attempt %d/%d)",
                job.id, job.attempts, limit,
            )
            return
        if run.succeeded:
            recorded = self.storage.complete(job, result, now)
            if recorded:
                self._log_soon(logging.INFO, "Job %s completed (attempt %d/%d)", job.id, job.attempts, limit)
        elif job.is_exhausted:
            recorded = self.storage.bury(job, result, now)
            if recorded:
                self._log_failure(job, result)
                self._log_soon(logging.INFO, "Job %s moved to DLQ after %d attempts", job.id, job.attempts)
        else:
            delay = self._retry_delay(job, settings)
            recorded = self.storage.retry_later(job, result, now, now + delay)
            if recorded:
                self._log_failure(job, result)
                self._log_soon(
                    logging.INFO, "Job %s will retry in %s (attempt %d/%d)",
                    job.id, format_seconds(delay), job.attempts, limit,
                )
        if not recorded:
            self.storage.keep_output(job, result)
            self._log_soon(
                logging.WARNING, "Job %s attempt %d was taken from worker %s before it finished; its result was discarded",
                job.id, job.attempts, self.worker_id,
            )

    def _log_failure(self, job, result):
        self._log_soon(
            logging.WARNING, "Job %s failed (attempt %d/%d): %s",
            job.id, job.attempts, job.attempt_limit, result.error_message,
        )

    @staticmethod
    def _retry_delay(job, settings):
        return retry_delay(job.attempts, settings["backoff_base"], settings["backoff_max_delay"])

    def _reap(self, settings, now):
        self._release_abandoned_cancels(now)
        expired = self.storage.expired_claims(now)
        if not expired:
            return
        # A worker killed with SIGKILL leaves its job's tree running (the job
        # has a session of its own). Stop what is left of those runs before
        # the jobs become claimable again, so two runs never overlap.
        leftovers = executor.stop_claimed([job.claim_token for job in expired])
        for job in expired:
            if job.claim_token in leftovers:
                logger.warning(
                    "Stopped the orphaned run of job %s (attempt %d) left by worker %s",
                    job.id, job.attempts, job.worker_id,
                )

        def retry_at(job):
            return None if job.is_exhausted else now + self._retry_delay(job, settings)

        reaped = self.storage.reap_expired(now, retry_at)
        for job in reaped:
            logger.warning(
                "Job %s lost its worker %s (lease expired); attempt %d/%d counted as failed",
                job.id, job.worker_id, job.attempts, job.attempt_limit,
            )
            if job.state.value == "dlq":
                logger.info("Job %s moved to DLQ after %d attempts", job.id, job.attempts)
        reaped_ids = {job.id for job in reaped}
        self._adopt_spools([job for job in expired if job.id in reaped_ids])

    def _release_abandoned_cancels(self, now):
        """Finish the stop of cancelled runs whose worker died before it could."""
        abandoned = self.storage.stopping_cancelled(now)
        if not abandoned:
            return
        executor.stop_claimed([job.claim_token for job in abandoned])
        for job in abandoned:
            if self.storage.release_cancelled(job):
                logger.warning(
                    "Job %s was cancelled but its worker %s was lost; stopped what was left of its run",
                    job.id, job.worker_id,
                )

    def _adopt_spools(self, jobs):
        """Move a dead worker's spooled output to its lost attempt's log files.

        Only for a worker on this host that is provably gone: a live worker
        whose lease merely lapsed (stopped, starved) still owns its spools.
        The dead worker's registry entry goes too.
        """
        from queuectl.supervisor import identify_worker

        here = socket.gethostname()
        registry = {row["worker_id"]: row for row in self.storage.list_workers()}
        for job in jobs:
            row = registry.get(job.worker_id)
            if job.worker_id == self.worker_id or row is None or row["hostname"] != here:
                continue  # our own spools (a reused PID), or not ours to touch
            if identify_worker(row["pid"], row["process_started_at"]):
                continue
            for stream in config_mod.LOG_STREAMS:
                try:
                    os.replace(
                        self.home.spool_path(job.worker_id, stream),
                        self.home.attempt_log_path(job.attempt_id, stream),
                    )
                except FileNotFoundError:
                    pass
            self.storage.unregister_worker(job.worker_id)

    def _prune_logs(self, settings, now):
        try:
            removed = maintenance.prune_logs(
                self.home,
                self.storage.running_attempt_ids,
                lambda: {row["worker_id"] for row in self.storage.list_workers()},
                now=now,
                max_age_seconds=settings["log_retention_days"] * 86400,
                max_bytes=settings["log_max_mb"] * 1024 * 1024,
            )
        except OSError as exc:
            logger.warning("Could not prune old logs: %s", exc)
            return
        if removed:
            logger.info("Removed %d log file(s) past their retention", removed)

    # --- waiting -----------------------------------------------------------

    def _idle(self):
        settings = self.config.current()
        timeout = settings["poll_interval"]
        self._note_pause()
        self._write_held_lines()
        due = self.storage.next_due_at()
        if due is not None:
            timeout = min(timeout, max(0.0, due - self.clock()))
        self._sleep(timeout, include_wake=True)

    def _note_pause(self):
        """Log once when the worker finds the queue paused, and once when resumed."""
        paused = self.storage.paused_since() is not None
        if paused and not self._paused_logged:
            self._log_soon(
                logging.INFO, "Queue is paused: worker %s claims no jobs until `queuectl resume`", self.worker_id
            )
        elif self._paused_logged and not paused:
            self._log_soon(logging.INFO, "Queue resumed: worker %s claims jobs again", self.worker_id)
        self._paused_logged = paused

    def _sleep(self, timeout, include_wake=False):
        """Wait up to ``timeout`` seconds; a signal or (optionally) a wake-up ends it early."""
        fds = [fd for fd in (self._signal_r,) if fd is not None]
        if include_wake and self._wake.fileno() is not None:
            fds.append(self._wake.fileno())
        if self.stop_requested:
            return
        if fds:
            try:
                select.select(fds, [], [], timeout)
            except InterruptedError:
                pass
            if self._signal_r is not None:
                _drain(self._signal_r)
            self._wake.drain()
        else:
            time.sleep(timeout)

    # --- registry and signals ----------------------------------------------

    def _register(self):
        import psutil

        started = psutil.Process().create_time()
        self.storage.register_worker(
            self.worker_id, os.getpid(), socket.gethostname(), started, self.clock(), self._wake.address
        )

    def _unregister(self):
        try:
            self.storage.unregister_worker(self.worker_id)
        except Exception:
            logger.exception("Worker %s could not unregister", self.worker_id)

    def _install_signal_handlers(self):
        self._previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        if hasattr(signal, "set_wakeup_fd"):
            self._signal_r, self._signal_w = os.pipe()
            os.set_blocking(self._signal_r, False)
            os.set_blocking(self._signal_w, False)
            self._previous_wakeup = signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)

    def _restore_signal_handlers(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._signal_r is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            os.close(self._signal_r)
            os.close(self._signal_w)
            self._signal_r = self._signal_w = None

    def _on_signal(self, signum, frame):
        # Only flags here (logging from a handler can interleave with the
        # loop's own logging); the loop acts on them at a safe point.
        if self.stop_requested and signum == signal.SIGINT:
            self.abort_requested = True
        self.stop_requested = True


def _drain(fd):
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass
