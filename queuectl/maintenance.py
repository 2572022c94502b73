"""Keeping a queue home bounded: purge finished jobs and their log files,
and log retention.

Storage deletes the rows (a job's attempts go with it); the attempt log
files live in the queue home, so removing them is done here, after the
rows are gone. A file that cannot be removed is left behind and counted,
not an error: the jobs are already purged, and a stray log file is harmless.

Retention: workers delete the log files of finished attempts older than
``log_retention_days`` and, oldest first, whatever takes ``logs/`` past
``log_max_mb``. Files of attempts still running are never touched.
"""

import os
import re
from dataclasses import dataclass

from queuectl.config import LOG_STREAMS
from queuectl.jobs import check_purgeable

# Spools and `.late` files left by workers that are gone are kept at least
# this long: a worker creates its spools a moment before it registers.
ORPHAN_SPOOL_MIN_AGE = 3600.0

_ATTEMPT_FILE = re.compile(r"^(\d+)\.(out|err)$")
_SPOOL_FILE = re.compile(r"^\.(.+)\.(out|err)(\.late)?$")


@dataclass
class PurgeReport:
    jobs: int
    log_files_removed: int
    log_files_left: int


def purge(home, storage, states, older_than=None, *, now):
    """Delete finished jobs in ``states`` (older than ``older_than`` seconds, if given)."""
    states = check_purgeable(states)
    finished_before = None if older_than is None else now - older_than
    result = storage.purge(states, finished_before)
    removed = left = 0
    for attempt_id in result.attempt_ids:
        for stream in LOG_STREAMS:
            try:
                os.unlink(home.attempt_log_path(attempt_id, stream))
            except FileNotFoundError:
                continue  # a stream that printed nothing has no log file
            except OSError:
                left += 1
                continue
            removed += 1
    return PurgeReport(jobs=result.jobs, log_files_removed=removed, log_files_left=left)


def prune_logs(home, running_attempt_ids, live_worker_ids, *, now, max_age_seconds, max_bytes):
    """Delete old attempt logs; returns how many files were removed.

    ``running_attempt_ids()`` and ``live_worker_ids()`` are called after the
    directory was listed, so a file listed belongs to an attempt (or worker)
    that already existed when they answer: a running one is always spared.
    ``max_age_seconds`` / ``max_bytes`` of 0 mean no limit.
    """
    attempts, spools = _scan(home.logs_dir)
    running = running_attempt_ids()
    live = live_worker_ids()
    doomed = []

    total = sum(size for _, files in attempts.values() for _, size in files)
    finished = sorted(
        (newest, attempt_id, files) for attempt_id, (newest, files) in attempts.items() if attempt_id not in running
    )
    for newest, _, files in finished:  # oldest first
        too_old = max_age_seconds and now - newest > max_age_seconds
        if too_old or (max_bytes and total > max_bytes):
            doomed.extend(path for path, _ in files)
            total -= sum(size for _, size in files)

    spool_age = max(max_age_seconds or 0, ORPHAN_SPOOL_MIN_AGE)
    for worker_id, path, mtime in spools:
        if worker_id not in live and now - mtime > spool_age:
            doomed.append(path)

    removed = 0
    for path in doomed:
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass  # another worker pruned it first
    return removed


def _scan(logs_dir):
    """({attempt_id: (newest mtime, [(path, size)])}, [(worker_id, path, mtime)])."""
    attempts, spools = {}, []
    try:
        entries = list(os.scandir(logs_dir))
    except FileNotFoundError:
        return attempts, spools
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        # The rename that ends a run updates ctime: a quiet job's log counts
        # from when the job ended, not from when it last printed.
        changed = max(info.st_mtime, info.st_ctime)
        match = _ATTEMPT_FILE.match(entry.name)
        if match:
            newest, files = attempts.get(int(match.group(1)), (0.0, []))
            files.append((entry.path, info.st_size))
            attempts[int(match.group(1))] = (max(newest, changed), files)
            continue
        match = _SPOOL_FILE.match(entry.name)
        if match:
            spools.append((match.group(1), entry.path, changed))
    return attempts, spools
