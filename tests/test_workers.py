"""The guide's five scenarios and the worker's contract, with real processes.

Waits poll with a deadline (``wait_for``); delays are kept short through
configuration (small backoff base, short poll interval).
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys

import psutil
import pytest

from conftest import wait_for

from queuectl.storage import open_storage

PY = shlex.quote(sys.executable)


def attempts_of(queue, job_id):
    with open_storage(queue.home) as store:
        return store.attempts(job_id)


# --- Scenario 1 --------------------------------------------------------------


def test_scenario_1_basic_job_completes(queue):
    queue.enqueue(id="hello-world", command="echo Hello from QueueCTL")
    started = queue.run("worker", "start", "--count", "1")
    lines = started.stdout.splitlines()
    assert lines[0] == "Started 1 worker process(es)"
    [pid] = json.loads(lines[1].split(": ", 1)[1])
    queue.wait_state("hello-world", "completed")
    job = queue.job("hello-world")
    assert (job["attempts"], job["exit_code"], job["worker_id"]) == (1, 0, f"worker-{pid}")
    [attempt] = attempts_of(queue, "hello-world")
    assert attempt.stdout_tail == "Hello from QueueCTL\n"
    status = json.loads(queue.run("status", "--json").stdout)
    assert status["workers"]["pids"] == [pid]
    stopped = queue.run("worker", "stop")
    assert stopped.stdout.splitlines() == [f"Stopping 1 worker(s): [{pid}]", "All workers stopped successfully"]
    assert json.loads(queue.run("status", "--json").stdout)["workers"]["count"] == 0
    with open(queue.home.worker_log_path) as handle:
        assert f"INFO - Worker worker-{pid} processing job hello-world (attempt 1/3): echo Hello from QueueCTL" in handle.read()


# --- Scenario 2 --------------------------------------------------------------


def test_scenario_2_retries_with_backoff_then_dlq(queue):
    queue.set_config(max_retries=3, backoff_base=1.5)
    queue.enqueue(id="will-fail", command="exit 1", max_retries=3)
    worker = queue.start_worker()
    queue.wait_state("will-fail", "dlq", timeout=20)
    worker.send_signal(signal.SIGINT)
    assert worker.wait(10) == 0

    log = queue.log_of(worker)
    worker_id = f"worker-{worker.pid}"
    expected = [
        f"INFO - Worker {worker_id} processing job will-fail (attempt 1/3): exit 1",
        "WARNING - Job will-fail failed (attempt 1/3): Exit code 1",
        "INFO - Job will-fail will retry in 1.5s (attempt 1/3)",
        f"INFO - Worker {worker_id} processing job will-fail (attempt 2/3): exit 1",
        "WARNING - Job will-fail failed (attempt 2/3): Exit code 1",
        "INFO - Job will-fail will retry in 2.25s (attempt 2/3)",
        f"INFO - Worker {worker_id} processing job will-fail (attempt 3/3): exit 1",
        "WARNING - Job will-fail failed (attempt 3/3): Exit code 1",
        "INFO - Job will-fail moved to DLQ after 3 attempts",
    ]
    job_lines = [line for line in log.splitlines() if "will-fail" in line]
    assert job_lines == expected

    # The waits really were base**n: measured between stored attempt times.
    runs = attempts_of(queue, "will-fail")
    assert [a.number for a in runs] == [1, 2, 3]
    gaps = [later.started_at - earlier.finished_at for earlier, later in zip(runs, runs[1:])]
    assert 1.5 <= gaps[0] < 1.5 + 1.0, gaps
    assert 2.25 <= gaps[1] < 2.25 + 1.0, gaps

    dlq = json.loads(queue.run("dlq", "list", "--json").stdout)
    assert [(j["id"], j["state"], j["attempts"], j["error_message"]) for j in dlq] == [("will-fail", "dlq", 3, "Exit code 1")]
    assert queue.run("dlq", "retry", "will-fail").stdout == "Job will-fail moved from DLQ back to pending queue\n"
    job = queue.job("will-fail")
    assert (job["state"], job["attempts"]) == ("pending", 0)


# --- Scenario 3 --------------------------------------------------------------


def test_scenario_3_workers_share_jobs_without_overlap(queue):
    for n in range(1, 6):
        queue.enqueue(id=f"job-{n}", command=f"echo Job {n} && sleep 0.6")
    out = queue.run("worker", "start", "--count", "3").stdout.splitlines()
    assert out[0] == "Started 3 worker process(es)"
    assert len(json.loads(out[1].split(": ", 1)[1])) == 3
    wait_for(lambda: queue.counts()["completed"] == 5, timeout=20, what="all five jobs completed")
    jobs = queue.jobs()
    assert {j["attempts"] for j in jobs.values()} == {1}
    assert len({j["worker_id"] for j in jobs.values()}) >= 2
    # Each job ran exactly once, and runs on different workers overlapped in time.
    runs = {job_id: attempts_of(queue, job_id) for job_id in jobs}
    assert all(len(r) == 1 for r in runs.values())
    spans = sorted((r[0].started_at, r[0].finished_at) for r in runs.values())
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    queue.run("worker", "stop")


# --- Scenario 4 --------------------------------------------------------------


def test_scenario_4_invalid_commands_fail_gracefully(queue):
    queue.enqueue(id="bad-cmd", command="nonexistent_command_xyz", max_retries=1)
    queue.enqueue(id="missing-file", command=f"{PY} missing_script.py", max_retries=1)
    queue.enqueue(id="syntax-error", command=f'{PY} -c "invalid syntax here"', max_retries=1)
    worker = queue.start_worker("--burst")
    assert worker.wait(30) == 0
    jobs = queue.jobs()
    assert {j["state"] for j in jobs.values()} == {"dlq"}
    assert re.fullmatch(r"Exit code 127: .*nonexistent_command_xyz.*not found", jobs["bad-cmd"]["error_message"])
    assert re.fullmatch(r"Exit code 2: .*can't open file .*missing_script\.py.*", jobs["missing-file"]["error_message"])
    assert jobs["syntax-error"]["error_message"] == "Exit code 1: SyntaxError: invalid syntax"
    log = queue.log_of(worker)
    for job_id in jobs:
        assert f"INFO - Job {job_id} moved to DLQ after 1 attempts" in log
    assert "Traceback" not in log


# --- Scenario 5 --------------------------------------------------------------


def test_scenario_5_jobs_survive_a_worker_restart(queue):
    queue.enqueue(id="persist-1", command="echo Starting Job 1 && sleep 1 && echo Done Job 1")
    queue.enqueue(id="persist-2", command="echo Job 2")
    queue.enqueue(id="persist-3", command="echo Job 3")
    queue.run("worker", "start", "--count", "1")
    queue.wait_state("persist-1", "processing")
    # Graceful stop: persist-1 finishes, the worker takes nothing more.
    queue.run("worker", "stop")
    expected = {"pending": 2, "processing": 0, "completed": 1, "failed": 0, "dlq": 0, "cancelled": 0}
    assert queue.counts() == expected
    assert queue.counts() == expected
    assert {k: (v["state"], v["attempts"]) for k, v in queue.jobs().items()} == {
        "persist-1": ("completed", 1),
        "persist-2": ("pending", 0),
        "persist-3": ("pending", 0),
    }
    queue.run("worker", "start", "--count", "1")
    wait_for(lambda: queue.counts()["completed"] == 3, timeout=15, what="all jobs completed after restart")
    assert {j["attempts"] for j in queue.jobs().values()} == {1}
    queue.run("worker", "stop")


# --- the worker's contract -----------------------------------------------------


def test_cwd_and_env_are_honoured(queue, tmp_path):
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    queue.enqueue(id="where", command='pwd; printf "%s" "$GREETING"', cwd=str(workdir), env={"GREETING": "héllo wörld"})
    worker = queue.start_worker("--burst")
    assert worker.wait(20) == 0
    [attempt] = attempts_of(queue, "where")
    assert attempt.stdout_tail == f"{workdir}\nhéllo wörld"


def test_missing_cwd_is_a_failed_start(queue, tmp_path):
    queue.enqueue(id="nowhere", command="true", cwd=str(tmp_path / "absent"), max_retries=1)
    worker = queue.start_worker("--burst")
    assert worker.wait(20) == 0
    job = queue.job("nowhere")
    assert job["state"] == "dlq"
    assert job["error_message"].startswith("Failed to start: No such file or directory")


def test_timeout_stops_the_job(queue):
    queue.set_config(job_timeout=1)
    queue.enqueue(id="slow", command="sleep 30", max_retries=1)
    worker = queue.start_worker("--burst")
    assert worker.wait(20) == 0
    job = queue.job("slow")
    assert (job["state"], job["error_message"]) == ("dlq", "Timed out after 1s")


def test_job_timeout_field_overrides_config(queue):
    queue.enqueue(id="slow", command="sleep 30", max_retries=1, timeout=0.5)
    worker = queue.start_worker("--burst")
    assert worker.wait(20) == 0
    assert queue.job("slow")["error_message"] == "Timed out after 0.5s"


def test_stdin_is_the_null_device(queue):
    queue.enqueue(id="reader", command="cat; echo eof")
    worker = queue.start_worker("--burst")
    assert worker.wait(20) == 0
    assert queue.job("reader")["state"] == "completed"


def test_enqueue_wakes_an_idle_worker(queue):
    # With a 60 s poll interval, only the enqueue wake-up can start the job in time.
    queue.set_config(poll_interval=60)
    worker = queue.start_worker()
    queue.wait_workers(1)
    queue.enqueue(id="prompt", command="true")
    queue.wait_state("prompt", "completed", timeout=10)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0


def test_sigterm_lets_the_current_job_finish(queue, tmp_path):
    marker = tmp_path / "finished"
    queue.enqueue(id="long", command=f"sleep 1 && touch {shlex.quote(str(marker))}")
    queue.enqueue(id="next", command="true")
    worker = queue.start_worker()
    queue.wait_state("long", "processing")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert marker.exists()
    assert queue.job("long")["state"] == "completed"
    assert queue.job("next")["state"] == "pending"
    assert json.loads(queue.run("status", "--json").stdout)["workers"]["count"] == 0


def test_worker_start_outlives_its_shell_and_logs_to_the_home(queue):
    # `sh -c` exits at once; the detached worker must keep running.
    proc = queue.run("worker", "start", "--count", "2")
    pids = json.loads(proc.stdout.splitlines()[1].split(": ", 1)[1])
    for pid in pids:
        os.kill(pid, 0)
    with open(queue.home.pidfile_path) as handle:
        assert sorted(e["pid"] for e in json.load(handle)["workers"]) == sorted(pids)
    queue.enqueue(id="logged", command="true")
    queue.wait_state("logged", "completed")
    wait_for(lambda: "Job logged completed" in open(queue.home.worker_log_path).read(), what="log line written")
    assert queue.run("worker", "stop").stdout.splitlines()[-1] == "All workers stopped successfully"
    with open(queue.home.pidfile_path) as handle:
        assert json.load(handle) == {"workers": []}


def test_workers_started_by_a_job_are_not_part_of_that_job(queue):
    # Found by a tester: the new worker inherited the job's claim marker, so
    # the failed attempt's clean-up stopped it along with the job's processes.
    queue.enqueue(id="spawner", command=f'"{sys.executable}" -m queuectl worker start; exit 1', max_retries=1)
    queue.run("worker", "run", "--burst")
    assert queue.job("spawner")["state"] == "dlq"
    with open(queue.home.pidfile_path) as handle:
        (entry,) = json.load(handle)["workers"]
    worker = psutil.Process(entry["pid"])
    assert worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE
    assert not {"QUEUECTL_CLAIM", "QUEUECTL_JOB_ID", "QUEUECTL_ATTEMPT"} & set(worker.environ())
    assert queue.run("worker", "stop").stdout.splitlines()[-1] == "All workers stopped successfully"


def test_a_worker_with_stderr_closed_still_runs_its_jobs(queue):
    # Found by review: with fd 2 closed the log handler had nowhere to write,
    # and the error stranded the claimed job in `processing`.
    queue.enqueue(id="quiet", command="echo ran > ran.txt")
    worker = subprocess.run(
        ["sh", "-c", f'exec "{sys.executable}" -m queuectl worker run --burst 2>&-'],
        env=dict(os.environ, QUEUECTL_HOME=queue.path),
        cwd=queue.path,
        timeout=60,
    )
    assert worker.returncode == 0
    assert queue.job("quiet")["state"] == "completed"
    assert open(os.path.join(queue.path, "ran.txt")).read() == "ran\n"


def test_console_log_on_a_narrow_encoding_uses_the_streams_stand_in(queue):
    queue.enqueue(id="accents", command="echo café ✓")
    result = subprocess.run(
        [sys.executable, "-m", "queuectl", "worker", "run", "--burst"],
        env=dict(os.environ, QUEUECTL_HOME=queue.path, PYTHONIOENCODING="latin-1"),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "processing job accents (attempt 1/3): echo café ?" in result.stderr.decode("latin-1")


def test_an_env_value_the_file_system_encoding_cannot_hold_is_a_failed_start(queue):
    # An ASCII-only locale with UTF-8 mode off: "café" can't be passed to a process.
    queue.enqueue(id="narrow", command="true", env={"GREETING": "café"}, max_retries=1)
    narrow = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": "utf-8"}
    probe = subprocess.run([sys.executable, "-c", "import sys; print(sys.getfilesystemencoding())"],
                           env=dict(os.environ, **narrow), capture_output=True, text=True)
    if probe.stdout.strip() not in ("ascii", "ANSI_X3.4-1968"):
        pytest.skip(f"this Python keeps {probe.stdout.strip()} as its file system encoding under LC_ALL=C")
    queue.run("worker", "run", "--burst", env=narrow)
    job = queue.job("narrow")
    assert job["state"] == "dlq"
    assert job["error_message"].startswith("Failed to start:") and "codec can't encode" in job["error_message"]
