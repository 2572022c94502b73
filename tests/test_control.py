"""Scheduling and control end to end: real workers, real processes.

What happened is read from stored timestamps and sentinel files; the
storage-level rules (with an injected clock) are in test_storage.py, bad
input in test_cli.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from conftest import process_gone, wait_for
from queuectl.jobs import Job
from queuectl.storage import open_storage


def parse_iso(text):
    return datetime.fromisoformat(text).timestamp()


def read_pid(path):
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


# --- end to end: priority, delay, run_at -------------------------------------------


def test_one_worker_runs_high_then_medium_then_low(queue):
    order_file = os.path.join(queue.path, "order.txt")
    for name, priority in (("low", 1), ("high", 10), ("medium", 5)):
        queue.enqueue(id=name, command=f"echo {name} >> {order_file}", priority=priority)
    worker = queue.start_worker("--burst")
    assert worker.wait(30) == 0, queue.log_of(worker)
    with open(order_file) as handle:
        assert handle.read().split() == ["high", "medium", "low"]
    started = {job_id: parse_iso(job["started_at"]) for job_id, job in queue.jobs().items()}
    assert started["high"] <= started["medium"] <= started["low"]


def test_a_two_second_delay_starts_after_two_seconds_and_within_three(queue):
    worker = queue.start_worker()
    queue.wait_workers(1)
    queue.run("enqueue", "--delay", "2s", json.dumps({"id": "d", "command": "true"}))
    assert queue.counts()["pending"] == 1
    queue.wait_state("d", "completed", timeout=10)
    job = queue.job("d")
    waited = parse_iso(job["started_at"]) - parse_iso(job["created_at"])
    assert 2.0 <= waited < 3.0, (waited, queue.log_of(worker))


def test_run_at_in_other_time_zones_is_stored_as_the_same_instant(queue):
    queue.run("enqueue", json.dumps({"id": "offset", "command": "true", "run_at": "2030-06-01T08:00:00-07:00"}))
    queue.run("enqueue", "--run-at", "2030-06-01T15:00:00Z", json.dumps({"id": "zulu", "command": "true"}))
    # A time without a zone is the enqueuer's local time (here: UTC+9, no DST).
    queue.run("enqueue", json.dumps({"id": "naive", "command": "true", "run_at": "2030-06-02T00:00:00"}), env={"TZ": "XST-9"})
    jobs = queue.jobs()
    expected = datetime(2030, 6, 1, 15, 0, tzinfo=timezone.utc).timestamp()
    assert {job_id: parse_iso(jobs[job_id]["next_run_at"]) for job_id in jobs} == {
        "offset": expected, "zulu": expected, "naive": expected,
    }
    status = json.loads(queue.run("status", "--json").stdout)
    assert status["scheduled"] == 3


# --- end to end: cancel ---------------------------------------------------------------


def test_cancelling_a_running_job_stops_its_tree_and_does_not_retry_it(queue, home):
    # Leases renew only every 10 s here: the cancel must not wait for a renewal.
    queue.set_config(lease_seconds=30, max_retries=3)
    shell_pid_file = os.path.join(queue.path, "shell.pid")
    child_pid_file = os.path.join(queue.path, "child.pid")
    command = f"echo $$ > {shell_pid_file}; sleep 60 & echo $! > {child_pid_file}; wait"
    queue.enqueue(id="long", command=command)
    worker = queue.start_worker()
    child = wait_for(lambda: read_pid(child_pid_file), what="the job to start its sleep")
    shell = read_pid(shell_pid_file)
    assert queue.job("long")["state"] == "processing"

    proc = queue.run("cancel", "long")
    assert proc.stdout.startswith("Job long cancelled; worker-")
    wait_for(lambda: process_gone(child) and process_gone(shell), timeout=3, what="the job's process tree to end")
    wait_for(lambda: "Job long was cancelled" in queue.log_of(worker), what="the worker to record the cancel")

    job = queue.job("long")
    assert (job["state"], job["attempts"], job["lease_expires_at"]) == ("cancelled", 1, None)
    with open_storage(home) as store:
        [attempt] = store.attempts("long")
    assert attempt.error_message == "Cancelled while running"
    # Recorded as cancelled, not as a failed attempt: nothing is left to retry.
    log = queue.log_of(worker)
    assert "Job long failed" not in log and "will retry" not in log
    counts = queue.counts()
    assert (counts["cancelled"], counts["pending"], counts["failed"], counts["processing"]) == (1, 0, 0, 0)


# --- end to end: pause ---------------------------------------------------------------


def test_pause_holds_new_claims_and_resume_releases_them(queue):
    queue.set_config(poll_interval=0.2)
    queue.enqueue(id="held", command="true")
    queue.run("pause")
    worker = queue.start_worker()
    # The worker logs this only after a claim came back empty while the job was due.
    wait_for(lambda: "Queue is paused" in queue.log_of(worker), what="the worker to see the pause")
    assert queue.job("held")["state"] == "pending"
    assert json.loads(queue.run("status", "--json").stdout)["paused"] is True

    queue.run("resume")
    queue.wait_state("held", "completed", timeout=5)
    wait_for(lambda: "Queue resumed" in queue.log_of(worker), what="the worker to log the resume")


# --- end to end: show ------------------------------------------------------------------


def test_show_reports_each_attempt_a_worker_made(queue):
    queue.set_config(backoff_max_delay=0)  # retry at once
    marker = os.path.join(queue.path, "tried")
    queue.enqueue(id="flaky", command=f"if [ -f {marker} ]; then echo second try; else touch {marker}; echo first try >&2; exit 4; fi")
    worker = queue.start_worker("--burst")
    assert worker.wait(30) == 0, queue.log_of(worker)
    detail = json.loads(queue.run("show", "flaky", "--json").stdout)
    assert (detail["job"]["state"], detail["job"]["attempts"], detail["job"]["exit_code"]) == ("completed", 2, 0)
    first, second = detail["attempts"]
    worker_id = f"worker-{worker.pid}"
    assert (first["number"], first["worker_id"], first["exit_code"], first["error_message"]) == (1, worker_id, 4, "Exit code 4: first try")
    assert (first["stdout_tail"], first["stderr_tail"]) == ("", "first try\n")
    assert (second["number"], second["worker_id"], second["exit_code"], second["error_message"]) == (2, worker_id, 0, None)
    assert second["stdout_tail"] == "second try\n"
    for attempt in (first, second):
        assert 0 <= attempt["duration_seconds"] == pytest.approx(parse_iso(attempt["finished_at"]) - parse_iso(attempt["started_at"]), abs=0.002)
    text = queue.run("show", "flaky").stdout
    assert "Attempts (2):" in text
    assert text.endswith("Output of attempt 2 (last 20 lines of each stream):\n  stdout:\n    second try\n  stderr: (empty)\n")


# --- end to end: stats and status --watch ------------------------------------------------


def test_stats_match_what_a_worker_did(queue):
    queue.set_config(max_retries=1)
    for i in range(3):
        queue.enqueue(id=f"ok-{i}", command="true")
    queue.enqueue(id="bad", command="exit 5")
    queue.run("enqueue", "--delay", "1h", json.dumps({"id": "later", "command": "true"}))
    worker = queue.start_worker("--burst")
    assert worker.wait(30) == 0, queue.log_of(worker)

    stats = json.loads(queue.run("stats", "--json").stdout)
    durations = sorted(
        attempt["duration_seconds"]
        for job_id in ("ok-0", "ok-1", "ok-2", "bad")
        for attempt in json.loads(queue.run("show", job_id, "--json").stdout)["attempts"]
    )
    assert stats["jobs"] == {"pending": 1, "processing": 0, "completed": 3, "failed": 0, "dlq": 1, "cancelled": 0}
    assert (stats["total"], stats["scheduled"], stats["success_rate"]) == (5, 1, 0.75)
    assert stats["attempts"] == {"total": 4, "per_job": 1.0, "max_per_job": 1}
    assert stats["run_time_seconds"] == {
        "p50": pytest.approx(durations[1]),  # nearest rank: the 2nd of 4
        "p95": pytest.approx(durations[3]),
        "max": pytest.approx(durations[3]),
        "finished_attempts": 4,
    }
    assert stats["throughput"] == {"completed_last_minute": 3, "completed_last_hour": 3}
    assert stats["oldest_waiting"] is None  # "later" is not due yet
    assert stats["workers"] == [{"worker_id": f"worker-{worker.pid}", "attempts": 4, "succeeded": 3, "failed": 1, "running": 0}]


def test_status_watch_refreshes_until_ctrl_c(queue, tmp_path):
    out_path = tmp_path / "watch.out"

    def frames():
        return out_path.read_text().count("=== QueueCTL Status ===")

    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "queuectl", "--home", queue.path, "status", "--watch", "--interval", "0.2"],
            stdout=out, stderr=subprocess.PIPE, text=True,
        )
        try:
            wait_for(lambda: frames() >= 1, what="the first frame")
            queue.enqueue(id="new", command="true")
            wait_for(lambda: "Pending           1" in out_path.read_text(), what="a frame showing the new job")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.stderr.read() == ""
    assert frames() >= 2


def test_status_watch_json_prints_one_object_per_refresh(queue, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "queuectl", "--home", queue.path, "status", "--watch", "--json", "--interval", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for line in lines:
        assert json.loads(line)["jobs"]["pending"] == 0


# --- list at scale -----------------------------------------------------------------

# Runs the CLI and reports its peak memory (KiB on Linux) on the last stderr line.
PEAK_MEMORY_RUNNER = """
import resource, sys
from queuectl.cli import cli
code = cli.main(sys.argv[1:], prog_name="queuectl", standalone_mode=False)
sys.stdout.flush()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def test_list_streams_100000_jobs_in_constant_memory(queue, home, tmp_path):
    now = time.time()
    jobs = [Job(id=f"job-{i:06d}", command=f"echo {i}", max_retries=3, created_at=now, updated_at=now, next_run_at=now) for i in range(100_000)]
    with open_storage(home) as store:
        store.add_jobs(jobs)
    del jobs

    def peak_kib(*args):
        out = tmp_path / "out.txt"
        with open(out, "w") as handle:
            proc = subprocess.run(
                [sys.executable, "-c", PEAK_MEMORY_RUNNER, "--home", home.path, *args],
                stdout=handle, stderr=subprocess.PIPE, text=True, timeout=60,
            )
        assert proc.returncode == 0, proc.stderr
        with open(out) as handle:
            lines = sum(1 for _ in handle)
        return int(proc.stderr.split()[-1]), lines

    baseline, lines = peak_kib("list", "--limit", "1")
    assert lines == 3
    table, lines = peak_kib("list")
    assert lines == 100_002
    as_json, lines = peak_kib("list", "--json", "--state", "pending")
    assert lines == 100_000 + 2  # one job per line, inside [ and ]
    # Holding 100,000 jobs costs well over 100 MiB; streaming them costs next to nothing.
    assert table - baseline < 40 * 1024, (baseline, table)
    assert as_json - baseline < 40 * 1024, (baseline, as_json)
