"""Attempt log files: tails, reading a running attempt safely, fallback, retention."""

import dataclasses
import os
import time

import pytest

from queuectl import logfiles, maintenance
from queuectl.jobs import Attempt

DAY = 86400.0
# Retention ages a file by its newest of mtime and ctime; tests can set only
# mtime (ctime is the real now), so "now" lies far after the real clock.
NOW = time.time() + 1000 * DAY


@pytest.fixture
def logs(home):
    os.makedirs(home.logs_dir)
    return home


def write(path, data, age=None):
    with open(path, "wb") as handle:
        handle.write(data)
    if age is not None:
        os.utime(path, (NOW - age, NOW - age))
    return path


def attempt(attempt_id=1, finished=True, out="", err="", worker="worker-7"):
    return Attempt(
        id=attempt_id, job_id="job", number=1, worker_id=worker, started_at=NOW - 10,
        finished_at=NOW if finished else None, stdout_tail=out, stderr_tail=err,
    )


def collect(home, att, reload=None, **kwargs):
    out, err = [], []
    last, from_db = logfiles.copy_output(home, att, reload or (lambda: att), out.append, err.append, **kwargs)
    return "".join(out), "".join(err), from_db


# --- tails -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, lines, expected",
    [
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc", 2, b"b\nc"),
        (b"a\nb\nc\n", 5, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 0, b""),
        (b"", 3, b""),
        (b"\n\n\n", 1, b"\n"),
    ],
)
def test_tail_offset_finds_the_last_lines(tmp_path, data, lines, expected):
    path = write(tmp_path / "f", data)
    assert data[logfiles.tail_offset(str(path), lines):] == expected


def test_tail_offset_scans_back_a_bounded_distance(tmp_path):
    # One 3 MB line: the tail is its last scan_limit bytes, not the whole line in memory.
    path = write(tmp_path / "f", b"x" * 3_000_000 + b"\n")
    assert logfiles.tail_offset(str(path), 1, scan_limit=1000) == 3_000_001 - 1000


def test_tail_offset_across_blocks(tmp_path):
    data = b"".join(b"line %d\n" % i for i in range(50_000))
    path = write(tmp_path / "f", data)
    assert data[logfiles.tail_offset(str(path), 3):] == b"line 49997\nline 49998\nline 49999\n"


# --- reading an attempt ------------------------------------------------------------------


def test_finished_attempt_is_read_from_its_own_files(logs):
    write(logs.attempt_log_path(1, "out"), b"one\ntwo\n")
    write(logs.attempt_log_path(1, "err"), b"oops\n")
    assert collect(logs, attempt()) == ("one\ntwo\n", "oops\n", [])
    assert collect(logs, attempt(), tail=1) == ("two\n", "oops\n", [])


def test_running_attempt_is_read_from_its_workers_spool(logs):
    write(logs.spool_path("worker-7", "out"), b"so far\n")
    assert collect(logs, attempt(finished=False)) == ("so far\n", "", [])


def test_output_of_the_workers_next_job_is_never_shown(logs):
    # The attempt printed nothing, ended, and the worker's next job already
    # writes to the same (reused) spool. Reading it, then seeing the attempt
    # ended, the reader must drop those bytes.
    write(logs.spool_path("worker-7", "out"), b"NEXT JOB\n")
    running, ended = attempt(finished=False), attempt(finished=True)
    assert collect(logs, running, reload=lambda: ended) == ("", "", [])


def test_following_continues_into_the_renamed_file(logs):
    spool = write(logs.spool_path("worker-7", "out"), b"first\n")
    states = iter([attempt(finished=False)] * 3 + [attempt(finished=True)] * 10)

    def reload():
        current = next(states)
        if current.finished_at is not None and os.path.exists(spool):
            with open(spool, "ab") as handle:
                handle.write(b"last\n")
            os.replace(spool, logs.attempt_log_path(1, "out"))
        return current

    out, err, _ = collect(logs, attempt(finished=False), reload=reload, follow=True, sleep=lambda s: None)
    assert out == "first\nlast\n"


def test_bytes_that_are_not_utf8_become_replacement_characters(logs, monkeypatch):
    # A character split across read chunks still decodes whole.
    monkeypatch.setattr(logfiles, "CHUNK_BYTES", 3)
    write(logs.attempt_log_path(1, "out"), "añb€c".encode() + b"\xff\xfe!")
    out, _, _ = collect(logs, attempt())
    assert out == "añb€c\ufffd\ufffd!"


def test_removed_files_fall_back_to_the_tail_in_the_database(logs):
    stored = attempt(out="kept a\nkept b\n", err="")
    assert collect(logs, stored) == ("kept a\nkept b\n", "", ["out"])
    assert collect(logs, stored, tail=1) == ("kept b\n", "", ["out"])


def test_find_attempt_picks_the_latest_with_a_number():
    first = attempt(attempt_id=1)
    second = dataclasses.replace(first, id=2, number=2)
    again = dataclasses.replace(first, id=3, number=1)  # after a DLQ retry

    class Store:
        def attempts(self, job_id):
            return [first, second, again]

    assert logfiles.find_attempt(Store(), "job").id == 3
    assert logfiles.find_attempt(Store(), "job", 2).id == 2
    assert logfiles.find_attempt(Store(), "job", 1).id == 3


# --- retention ------------------------------------------------------------------------------


def prune(home, running=(), live=(), days=7, max_bytes=0):
    return maintenance.prune_logs(
        home, lambda: set(running), lambda: set(live),
        now=NOW, max_age_seconds=days * DAY, max_bytes=max_bytes,
    )


def names(home):
    return sorted(os.listdir(home.logs_dir))


def test_prune_deletes_finished_attempts_past_their_age(logs):
    write(logs.attempt_log_path(1, "out"), b"x", age=8 * DAY)
    write(logs.attempt_log_path(1, "err"), b"x", age=8 * DAY)
    write(logs.attempt_log_path(2, "out"), b"x", age=1 * DAY)
    assert prune(logs) == 2
    assert names(logs) == ["2.out"]


def test_prune_never_touches_a_running_attempt(logs):
    write(logs.attempt_log_path(1, "out"), b"x" * 100, age=30 * DAY)
    assert prune(logs, running={1}, max_bytes=10) == 0
    assert names(logs) == ["1.out"]


def test_prune_keeps_the_logs_under_the_size_cap_oldest_first(logs):
    for attempt_id, age in [(1, 5), (2, 4), (3, 3), (4, 2)]:
        write(logs.attempt_log_path(attempt_id, "out"), b"x" * 100, age=age * 3600)
    assert prune(logs, max_bytes=250) == 2
    assert names(logs) == ["3.out", "4.out"]


def test_zero_means_no_limit(logs):
    write(logs.attempt_log_path(1, "out"), b"x" * 100, age=400 * DAY)
    assert prune(logs, days=0, max_bytes=0) == 0


def test_prune_removes_spools_of_gone_workers_only_when_old(logs):
    write(logs.spool_path("worker-1", "out"), b"x", age=2 * DAY)  # gone, old
    write(logs.spool_path("worker-2", "out") + ".late", b"x", age=30 * DAY)  # gone, old
    write(logs.spool_path("worker-3", "out"), b"x", age=60)  # not registered yet
    write(logs.spool_path("worker-4", "out"), b"x", age=30 * DAY)  # live
    assert prune(logs, live={"worker-4"}, days=1) == 2
    assert names(logs) == [".worker-3.out", ".worker-4.out"]


def test_prune_ignores_other_files(logs):
    write(os.path.join(logs.logs_dir, "notes.txt"), b"mine", age=400 * DAY)
    assert prune(logs, days=1, max_bytes=1) == 0
