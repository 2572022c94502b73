"""Attempt output on disk: reading it back and following it.

While an attempt runs, its output goes to its worker's spool files
(``logs/.<worker_id>.out`` and ``.err``). When the run ends the worker
renames a spool that received output to the attempt's own file
(``logs/<attempt_id>.out`` / ``.err``) and only then records the outcome; a
stream that printed nothing gets no file. So a running attempt is read from
its worker's spool and a finished one from its own files, at the same byte
offsets (the rename keeps the file). The database keeps the last 4 KB of each
stream, which stands in when retention (see ``maintenance``) has removed
the files.
"""

import codecs
import os
import time

from queuectl.config import LOG_STREAMS
from queuectl.errors import AttemptNotFoundError
from queuectl.jobs import CLAIMABLE_STATES, OUTPUT_TAIL_BYTES, JobState

# Read this much of a stream at a time, so a 1 GB log costs 1 MB of memory.
CHUNK_BYTES = 1 << 20
# `--tail N` scans back at most this far for N line breaks; a longer last line is cut.
TAIL_SCAN_BYTES = 1 << 20


def current_path(home, attempt, stream):
    """Where ``stream`` of ``attempt`` is now: its worker's spool while it runs, else its own file."""
    if attempt.finished_at is None:
        return home.spool_path(attempt.worker_id, stream)
    return home.attempt_log_path(attempt.id, stream)


# --- choosing an attempt -----------------------------------------------------------


def find_attempt(storage, job_id, number=None):
    """The job's latest attempt, or its latest attempt numbered ``number``.

    Numbers start again at 1 after a DLQ retry, so the latest one is meant.
    Raises ``JobNotFoundError`` or ``AttemptNotFoundError``.
    """
    attempts = storage.attempts(job_id)
    chosen = [a for a in attempts if number is None or a.number == number]
    if chosen:
        return chosen[-1]
    if not attempts:
        state = storage.get(job_id).state.value
        raise AttemptNotFoundError(f"job {job_id!r} has not run yet (state: {state})")
    numbers = ", ".join(str(n) for n in sorted({a.number for a in attempts}))
    raise AttemptNotFoundError(f"job {job_id!r} has no attempt {number} (attempts: {numbers})")


def wait_for_attempt(storage, job_id, number=None, interval=0.2, sleep=time.sleep):
    """``find_attempt``, waiting for the attempt to start while the job may still run it."""
    while True:
        try:
            return find_attempt(storage, job_id, number)
        except AttemptNotFoundError:
            if storage.get(job_id).state not in CLAIMABLE_STATES + (JobState.PROCESSING,):
                raise
        sleep(interval)


def reloader(storage, attempt):
    """A function returning ``attempt`` as stored now."""

    def reload():
        for current in storage.attempts(attempt.job_id):
            if current.id == attempt.id:
                return current
        raise AttemptNotFoundError(f"attempt {attempt.number} of job {attempt.job_id!r} was deleted")

    return reload


# --- reading back --------------------------------------------------------------


def _read_at(path, offset, limit=CHUNK_BYTES):
    """Up to ``limit`` bytes of a regular file from ``offset``; b"" if there is none."""
    try:
        with open(path, "rb") as handle:
            if not _is_regular(handle.fileno()):
                return b""
            handle.seek(offset)
            return handle.read(limit)
    except (FileNotFoundError, IsADirectoryError):
        return b""


def _is_regular(fd):
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


def tail_offset(path, lines, scan_limit=TAIL_SCAN_BYTES):
    """Where the last ``lines`` lines of a file begin (0 if it is shorter)."""
    try:
        with open(path, "rb") as handle:
            if not _is_regular(handle.fileno()):
                return 0
            size = handle.seek(0, os.SEEK_END)
            if lines <= 0:
                return size
            position, wanted, floor = size, lines, max(0, size - scan_limit)
            handle.seek(size - 1 if size else 0)
            if size and handle.read(1) == b"\n":
                wanted += 1  # the final line break ends the last line; it starts none
            while position > floor:
                step = min(64 * 1024, position - floor)
                position -= step
                handle.seek(position)
                block = handle.read(step)
                found = block.count(b"\n")
                if found >= wanted:
                    index = len(block)
                    for _ in range(wanted):
                        index = block.rindex(b"\n", 0, index)
                    return position + index + 1
                wanted -= found
            return floor
    except FileNotFoundError:
        return 0


def tail_lines(text, lines):
    """The last ``lines`` lines of ``text``."""
    if lines <= 0:
        return ""
    kept = text.splitlines(keepends=True)[-lines:]
    return "".join(kept)


class _StreamReader:
    """One stream of one attempt, decoded as it is read (bad bytes become U+FFFD)."""

    def __init__(self, stream, write):
        self.stream = stream
        self.write = write
        self.offset = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def emit(self, data):
        self.offset += len(data)
        text = self._decoder.decode(data)
        if text:
            self.write(text)

    def finish(self):
        text = self._decoder.decode(b"", final=True)
        if text:
            self.write(text)


def copy_output(home, attempt, reload, write_out, write_err, *, tail=None, follow=False, interval=0.2, sleep=time.sleep):
    """Write an attempt's stdout and stderr; with ``follow``, until the attempt ends.

    ``reload()`` returns the attempt as stored now. Output of a running
    attempt is read from its worker's spool, and a chunk counts as this
    attempt's only if the attempt was still running after it was read: the
    worker renames the spool before it records the outcome, and only after
    that may its next job write to a reused spool. A stream whose file
    retention has removed is served from the tail kept in the database.
    Returns the attempt as last seen and the streams served that way.
    """
    readers = [_StreamReader("out", write_out), _StreamReader("err", write_err)]
    started_at = {reader.stream: 0 for reader in readers}
    if tail is not None:
        for reader in readers:
            reader.offset = started_at[reader.stream] = tail_offset(current_path(home, attempt, reader.stream), tail)
    while True:
        finished = attempt.finished_at is not None
        progressed = False
        for reader in readers:
            data = _read_at(current_path(home, attempt, reader.stream), reader.offset)
            if not data:
                continue
            progressed = True
            if not finished:
                attempt = reload()
                if attempt.finished_at is not None:
                    break  # read it again from the attempt's own file
            reader.emit(data)
        if progressed:
            continue
        if finished or not follow:
            break
        sleep(interval)
        attempt = reload()
    from_database = []
    for reader in readers:
        reader.finish()
        if reader.stream in _missing_streams(home, attempt) and reader.offset == started_at[reader.stream]:
            # Retention removed the file: the tail kept in the database is what is left.
            stored = _stored_tail(attempt, reader.stream)
            reader.write(stored if tail is None else tail_lines(stored, tail))
            from_database.append(reader.stream)
    return attempt, from_database


def _missing_streams(home, attempt):
    """Streams of a finished attempt whose output the database has but the disk no longer does."""
    if attempt.finished_at is None:
        return []
    return [
        stream for stream in LOG_STREAMS
        if _stored_tail(attempt, stream) and not os.path.exists(home.attempt_log_path(attempt.id, stream))
    ]


def _stored_tail(attempt, stream):
    return attempt.stdout_tail if stream == "out" else attempt.stderr_tail


def summary(home, attempt, lines=None):
    """An attempt as a JSON-ready dict, with the end of each stream and where the whole is."""
    data = attempt.to_dict()
    for stream, name in (("out", "stdout"), ("err", "stderr")):
        data.pop(f"{name}_tail", None)
        path = current_path(home, attempt, stream)
        data[name] = read_tail(home, attempt, stream, lines)
        data[f"{name}_file"] = path if os.path.isfile(path) else None
    return data


def read_tail(home, attempt, stream, lines=None, limit=OUTPUT_TAIL_BYTES):
    """The end of one stream as text: the last ``lines`` lines, else the last ``limit`` bytes.

    Falls back to the tail kept in the database when the file is gone.
    """
    path = current_path(home, attempt, stream)
    stored = _stored_tail(attempt, stream)
    if lines is not None:
        start = tail_offset(path, lines)
    else:
        try:
            start = max(0, os.path.getsize(path) - limit)
        except OSError:
            start = 0
    chunks = []
    while True:
        data = _read_at(path, start)
        if not data:
            break
        chunks.append(data)
        start += len(data)
    if not chunks:
        return tail_lines(stored, lines) if lines is not None and stored else stored
    return b"".join(chunks).decode("utf-8", errors="replace")
