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


LINES = [
    (logging.INFO, "Job %s completed (attempt %d/%d)", ("a", 1, 3)),
    (logging.WARNING, "Job %s failed (attempt %d/%d): %s", ("b", 2, 3, "Exit code 1: boom 100%")),
    (logging.INFO, "no arguments, 100% literal", ()),
]


def test_log_lines_writes_what_logging_would(tmp_path, restore_logging):
    direct, stock = tmp_path / "direct.log", tmp_path / "stock.log"
    logger = logging.getLogger("queuectl.worker")
    worklog.configure(str(stock))
    for level, message, args in LINES:
        logger.log(level, message, *args)
    handler = worklog.configure(str(direct))
    before = time.time()
    worklog.log_lines(logger, LINES)
    after = time.time()
    stamp = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) "
    strip = lambda text: re.sub(rf"^{stamp}", "", text, flags=re.M)  # noqa: E731
    assert strip(direct.read_text()) == strip(stock.read_text())
    assert strip(direct.read_text()).splitlines()[1] == f"[{os.getpid()}] WARNING - Job b failed (attempt 2/3): Exit code 1: boom 100%"
    for match in re.finditer(rf"^{stamp}", direct.read_text(), flags=re.M):
        moment = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000
        assert int(before) <= moment <= after
    assert handler is worklog._installed


def test_log_lines_on_the_console_matches_logging_byte_for_byte():
    script = (
        "import logging, sys\n"
        "from queuectl import worklog\n"
        "worklog.configure(None)\n"
        "log = logging.getLogger('queuectl.worker')\n"
        "lines = [(logging.INFO, 'caf\\u00e9 %s', (1,)), (logging.WARNING, 'plain', ())]\n"
        "if sys.argv[1] == 'direct':\n"
        "    worklog.log_lines(log, lines)\n"
        "else:\n"
        "    [log.log(level, message, *args) for level, message, args in lines]\n"
    )
    outputs = [
        subprocess.run([sys.executable, "-c", script, way], capture_output=True, env=dict(os.environ, PYTHONIOENCODING="utf-8-sig"))
        for way in ("direct", "logging")
    ]
    assert outputs[0].returncode == outputs[1].returncode == 0
    assert outputs[0].stderr == outputs[1].stderr == "INFO - caf\u00e9 1\nWARNING - plain\n".encode("utf-8-sig")


def test_log_lines_respects_levels_and_other_handlers(tmp_path, restore_logging, caplog):
    path = tmp_path / "workers.log"
    worklog.configure(str(path))
    logger = logging.getLogger("queuectl.worker")
    logger.setLevel(logging.WARNING)
    try:
        worklog.log_lines(logger, LINES)
    finally:
        logger.setLevel(logging.NOTSET)
    assert [line.split(" - ", 1)[1] for line in path.read_text().splitlines()] == ["Job b failed (attempt 2/3): Exit code 1: boom 100%"]

    # Another handler listening (here pytest's capture): every line becomes a record for it too.
    logging.getLogger("queuectl").addHandler(caplog.handler)
    worklog.log_lines(logger, LINES[:1])
    assert [record.getMessage() for record in caplog.records] == ["Job a completed (attempt 1/3)"]
    assert path.read_text().splitlines()[-1].endswith("INFO - Job a completed (attempt 1/3)")


def test_a_line_that_cannot_be_formatted_goes_to_logging_and_never_raises(tmp_path, restore_logging, capsys):
    path = tmp_path / "workers.log"
    worklog.configure(str(path))
    logger = logging.getLogger("queuectl.worker")
    worklog.log_lines(logger, [(logging.INFO, "needs %d", ("not a number",)), (logging.INFO, "fine %s", ("ok",))])
    assert path.read_text().splitlines()[-1].endswith("INFO - fine ok")
    assert "Logging error" in capsys.readouterr().err  # how logging reports a bad record
