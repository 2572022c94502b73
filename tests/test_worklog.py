"""The worker's log handler: the guide's line format, one write per line."""

import io
import logging
import os
import re
import subprocess
import sys
import time

import pytest

from queuectl import worklog


@pytest.fixture
def restore_logging():
    root = logging.getLogger("queuectl")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers[:], root.level, root.propagate = saved


def record_at(created, message="Job %s completed", *args):
    record = logging.LogRecord("queuectl.worker", logging.INFO, __file__, 1, message, args or ("a",), None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    return record


def test_file_lines_match_the_stock_formatter(tmp_path, restore_logging):
    path = tmp_path / "workers.log"
    worklog.configure(str(path))
    logger = logging.getLogger("queuectl.worker")
    logger.info("Worker %s processing job %s (attempt %d/%d): %s", "worker-1", "job-1", 1, 3, "echo hi")
    logger.warning("Job %s failed (attempt %d/%d): %s", "job-1", 1, 3, "Exit code 1: boom")
    lines = path.read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(rf"{stamp} \[{os.getpid()}\] INFO - Worker worker-1 processing job job-1 \(attempt 1/3\): echo hi", lines[0])
    assert re.fullmatch(rf"{stamp} \[{os.getpid()}\] WARNING - Job job-1 failed \(attempt 1/3\): Exit code 1: boom", lines[1])


def test_the_cached_second_changes_with_the_clock():
    ours = worklog.SecondCachingFormatter(worklog.FILE_FORMAT)
    stock = logging.Formatter(worklog.FILE_FORMAT)
    base = time.mktime((2026, 12, 3, 16, 59, 58, 0, 0, -1))
    for created in (base + 0.25, base + 0.999, base + 1.0, base + 1.5, base + 2.001, base + 3600.07, base + 0.5):
        record = record_at(created)
        assert ours.format(record) == stock.format(record)


def test_a_swapped_stderr_gets_the_lines(restore_logging, monkeypatch):
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    worklog.configure(None)
    logging.getLogger("queuectl.worker").info("Job %s completed (attempt %d/%d)", "x", 1, 3)
    assert captured.getvalue() == "INFO - Job x completed (attempt 1/3)\n"


def test_the_real_stderr_gets_whole_lines_in_order(tmp_path):
    script = (
        "import logging, sys\n"
        "from queuectl import worklog\n"
        "print('before', file=sys.stderr)\n"
        "worklog.configure(None)\n"
        "log = logging.getLogger('queuectl.worker')\n"
        "log.info('caf\\u00e9 %s', 1)\n"
        "log.warning('second')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "before\nINFO - caf\u00e9 1\nWARNING - second\n"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "ascii"])
def test_stderr_encodings_are_honoured_as_a_stream_would(encoding):
    script = (
        "import logging\n"
        "from queuectl import worklog\n"
        "worklog.configure(None)\n"
        "log = logging.getLogger('queuectl.worker')\n"
        "log.info('caf\\u00e9 one')\n"
        "log.info('two')\n"
    )
    env = dict(os.environ, PYTHONIOENCODING=encoding)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env)
    assert result.returncode == 0, result.stderr
    expected = "INFO - caf\u00e9 one\nINFO - two\n"
    if encoding == "ascii":
        assert result.stderr == b"INFO - caf\\xe9 one\nINFO - two\n"
    else:
        assert result.stderr == expected.encode(encoding)  # one byte order mark, at the start


def test_workers_sharing_one_file_never_split_a_line(tmp_path):
    path = tmp_path / "workers.log"
    script = (
        "import logging, sys\n"
        "from queuectl import worklog\n"
        "worklog.configure(sys.argv[1])\n"
        "log = logging.getLogger('queuectl.worker')\n"
        "for i in range(2000):\n"
        "    log.info('%s line %d %s', sys.argv[2], i, 'x' * 200)\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", script, str(path), name]) for name in ("one", "two", "three")]
    assert [proc.wait(timeout=60) for proc in writers] == [0, 0, 0]
    lines = path.read_text().splitlines()
    assert len(lines) == 6000
    pattern = re.compile(r".* INFO - (one|two|three) line (\d+) x{200}")
    seen = {}
    for line in lines:
        match = pattern.fullmatch(line)
        assert match, line
        seen.setdefault(match.group(1), []).append(int(match.group(2)))
    assert all(numbers == list(range(2000)) for numbers in seen.values())
