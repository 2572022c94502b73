"""Keeping a queue home bounded: purge finished jobs and their log files.

Storage deletes the rows (a job's attempts go with it); the attempt log
files live in the queue home, so removing them is done here, after the
rows are gone. A file that cannot be removed is left behind and counted,
not an error: the jobs are already purged, and a stray log file is harmless.
"""

import os
from dataclasses import dataclass

from queuectl.jobs import check_purgeable

LOG_STREAMS = ("out", "err")


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
