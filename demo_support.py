"""The five scenarios of the demonstration guide, shared by demo_complete.py and
test_queuectl_suite.py.

Everything here drives the real CLI (``python -m queuectl`` and ``enqueue_job.py``)
in subprocesses; nothing of queuectl is imported or re-implemented. Each scenario
runs in its own fresh queue home under one temporary directory, so the user's own
queue is never touched and every scenario starts from the clean slate its expected
counts assume. Conditions are waited for by polling ``status --json`` or
``list --json`` against a deadline, and every worker a scenario started is stopped
when it ends, however it ends.

A scenario narrates through a ``Narrator``: the demo prints every step, command and
output; the suite passes a quiet one. A scenario whose expectation fails raises
``ScenarioFailed`` with a one-line reason.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent
ENQUEUE_HELPER = REPO_DIR / "enqueue_job.py"

POLL_INTERVAL = 0.1  # seconds between two looks at the queue
COMMAND_TIMEOUT = 60  # no single CLI call of a scenario may take longer
WORKER_EXIT_TIMEOUT = 20  # a foreground worker must be gone this long after Ctrl+C

# Lower bounds of the retry waits with backoff_base 2 (2 s, then 4 s), less a little
# for clock granularity; the upper slack allows for the worker's idle poll.
EXPECTED_RETRY_DELAYS = (2.0, 4.0)
EARLY_TOLERANCE = 0.2
LATE_TOLERANCE = 1.9

PLATFORM_SLEEP = "sleep"  # the guide's `timeout /t N /nobreak >nul` on Windows


class ScenarioFailed(Exception):
    """A scenario's expectation did not hold; the message says which."""


def expect(condition, reason):
    if not condition:
        raise ScenarioFailed(reason)


# --------------------------------------------------------------------------- output


class Narrator:
    """Prints what a scenario does; a quiet narrator prints nothing."""

    def __init__(self, quiet=False):
        self.quiet = quiet
        self._lock = threading.Lock()

    def say(self, text=""):
        if not self.quiet:
            with self._lock:
                print(text, flush=True)

    def banner(self, title):
        self.say()
        self.say("=" * 70)
        self.say(title)
        self.say("=" * 70)

    def step(self, number, text):
        self.say()
        self.say(f"[{number}] {text}")

    def command(self, display):
        self.say(f"$ {display}")

    def output(self, text):
        text = text.rstrip("\n")
        if text:
            self.say(text)

    def note(self, text):
        self.say(f"   -> {text}")


# ------------------------------------------------------------------------ the queue


def parse_time(value):
    """An ISO-8601 timestamp from the CLI as an aware datetime (naive means UTC)."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def state_of(jobs, job_id):
    return jobs.get(job_id, {}).get("state")


def all_in_state(jobs, ids, state):
    return all(state_of(jobs, job_id) == state for job_id in ids)


def describe_jobs(jobs):
    return ", ".join(f"{job_id}={job['state']}/{job['attempts']}" for job_id, job in jobs.items()) or "no jobs"


def describe_counts(status):
    counts = status["jobs"]
    shown = ("pending", "processing", "completed", "failed", "dlq")
    workers = status.get("workers", {}).get("count")
    return ", ".join(f"{state} {counts.get(state, 0)}" for state in shown) + f"; workers {workers}"


class Queue:
    """One queue home, driven through the CLI, plus the workers started in it."""

    def __init__(self, home, narrator, tools_dir):
        self.home = Path(home)
        self.tools_dir = tools_dir
        self.home.mkdir(parents=True, exist_ok=True)
        self.narrator = narrator
        self.foreground_workers = []
        self.env = self._environment()

    def _environment(self):
        env = dict(os.environ)
        # Both the home and the working directory point at the scenario's home, so
        # neither the user's queue nor the user's cwd can be touched.
        env["QUEUECTL_HOME"] = str(self.home)
        env.pop("QUEUECTL_DB", None)
        # Jobs say `python`, which a system with only `python3` lacks: put this
        # interpreter first on PATH under that name, as an activated venv would.
        env["PATH"] = os.pathsep.join([str(self.tools_dir), os.path.dirname(sys.executable), env.get("PATH", "")])
        if (REPO_DIR / "queuectl").is_dir():
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH")) if p)
        env["PYTHONIOENCODING"] = "utf-8"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # -- running commands

    def _run(self, argv, display, expect_rc, show):
        if show:
            self.narrator.command(display)
        try:
            result = subprocess.run(
                argv, cwd=self.home, env=self.env, stdin=subprocess.DEVNULL,
                capture_output=True, text=True, encoding="utf-8", errors="replace",
                timeout=COMMAND_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise ScenarioFailed(f"`{display}` did not finish within {COMMAND_TIMEOUT}s") from None
        if show:
            self.narrator.output(result.stdout)
            self.narrator.output(result.stderr)
        if expect_rc is not None and result.returncode != expect_rc:
            last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
            raise ScenarioFailed(f"`{display}` exited {result.returncode} (expected {expect_rc}): {last}")
        return result

    def cli(self, *args, expect_rc=0, show=True):
        """Run ``python -m queuectl ARGS`` in this home."""
        display = shlex.join(["python", "-m", "queuectl", *args])
        return self._run([sys.executable, "-m", "queuectl", *args], display, expect_rc, show)

    def cli_json(self, *args):
        result = self.cli(*args, "--json", show=False)
        try:
            return json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            raise ScenarioFailed(f"`queuectl {' '.join(args)} --json` printed no valid JSON: {exc}") from None

    def enqueue_file(self, name):
        """Enqueue a job file through the guide's helper, checking its success line."""
        display = shlex.join(["python", "enqueue_job.py", name])
        result = self._run([sys.executable, str(ENQUEUE_HELPER), name], display, 0, True)
        expect("enqueued successfully" in result.stdout,
               f"`{display}` printed no success line: {result.stdout.strip()!r}")
        return result

    def write_job(self, name, spec):
        path = self.home / name
        path.write_text(json.dumps(spec) + "\n", encoding="utf-8")
        self.narrator.say(f"{name}: {json.dumps(spec)}")
        return path

    # -- reading the queue

    def status(self):
        return self.cli_json("status")

    def jobs(self):
        """Every job of this home, by id."""
        return {job["id"]: job for job in self.cli_json("list")}

    def wait_for(self, what, fetch, holds, describe, timeout):
        """Poll ``fetch()`` until ``holds(value)``; fail naming ``what`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            value = fetch()
            if holds(value):
                return value
            if time.monotonic() >= deadline:
                raise ScenarioFailed(f"timed out after {timeout:g}s waiting for {what} (saw {describe(value)})")
            time.sleep(POLL_INTERVAL)

    def wait_for_jobs(self, what, holds, timeout=30):
        self.narrator.note(f"waiting until {what} ...")
        return self.wait_for(what, self.jobs, holds, describe_jobs, timeout)

    def wait_for_status(self, what, holds, timeout=30):
        self.narrator.note(f"waiting until {what} ...")
        return self.wait_for(what, self.status, holds, describe_counts, timeout)

    def expect_counts(self, status, **wanted):
        counts = status["jobs"]
        wrong = {state: counts.get(state) for state, n in wanted.items() if counts.get(state) != n}
        expect(not wrong, f"expected {wanted}, status shows {describe_counts(status)}")

    # -- workers

    def start_workers(self, count):
        result = self.cli("worker", "start", "--count", str(count))
        expect(f"Started {count} worker process(es)" in result.stdout,
               f"`worker start --count {count}` did not report {count} started: {result.stdout.strip()!r}")
        match = re.search(r"Worker PIDs: \[([\d,\s]*)\]", result.stdout)
        expect(match, f"`worker start` printed no `Worker PIDs: [...]` line: {result.stdout.strip()!r}")
        pids = [int(pid) for pid in match.group(1).replace(",", " ").split()]
        expect(len(pids) == count, f"`worker start --count {count}` listed PIDs {pids}")
        return pids

    def stop_workers(self, count):
        """Graceful ``worker stop``: each worker finishes its current job, then exits."""
        result = self.cli("worker", "stop")
        expect(f"Stopping {count} worker(s)" in result.stdout,
               f"`worker stop` did not report stopping {count}: {result.stdout.strip()!r}")
        expect("All workers stopped successfully" in result.stdout,
               f"`worker stop` did not confirm the stop: {result.stdout.strip()!r}")
        expect(self.status()["workers"]["count"] == 0, "workers still alive after `worker stop`")

    def run_foreground_worker(self):
        worker = ForegroundWorker(self)
        self.foreground_workers.append(worker)
        return worker

    def clean_up(self):
        """Stop every worker of this home, gracefully or not; never raises."""
        for worker in self.foreground_workers:
            worker.ensure_stopped()
        try:
            # No waiting for jobs here: cleanup follows a failure or Ctrl+C.
            self.cli("worker", "stop", "--timeout", "0", "--force", expect_rc=None, show=False)
        except ScenarioFailed as exc:
            print(f"warning: could not stop the workers in {self.home}: {exc}", file=sys.stderr)


class ForegroundWorker:
    """``python -m queuectl worker run``, its log lines relayed as they arrive.

    Each line is kept with the monotonic time it arrived, so callers can measure the
    gaps between log events (the retry delays) without trusting any fixed sleep.
    """

    def __init__(self, queue):
        self.queue = queue
        self.lines = []  # (seconds since start, line)
        queue.narrator.command("python -m queuectl worker run")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "queuectl", "worker", "run"], cwd=queue.home, env=queue.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, encoding="utf-8", errors="replace",
        )
        self._reader = threading.Thread(target=self._relay, daemon=True)
        self._reader.start()

    def _relay(self):
        for line in self.process.stdout:
            elapsed = time.monotonic() - self.started
            line = line.rstrip("\n")
            self.lines.append((elapsed, line))
            self.queue.narrator.say(f"  [+{elapsed:5.1f}s] {line}")

    def interrupt(self):
        """Press Ctrl+C: the worker finishes its job and must exit 0."""
        self.queue.narrator.note("sending Ctrl+C (SIGINT) to the worker")
        self.process.send_signal(signal.SIGINT)
        try:
            returncode = self.process.wait(timeout=WORKER_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ScenarioFailed(f"`worker run` still running {WORKER_EXIT_TIMEOUT}s after Ctrl+C") from None
        self._reader.join(timeout=5)
        self.queue.narrator.note(f"worker exited with status {returncode}")
        expect(returncode == 0, f"`worker run` exited {returncode} after Ctrl+C (expected 0)")

    def ensure_stopped(self):
        """Ctrl+C if still running; kill it if that has not ended it within 5 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def times_of(self, pattern):
        """Arrival times of the log lines matching ``pattern`` (a regex)."""
        return [elapsed for elapsed, line in self.lines if re.search(pattern, line)]

    def expect_line(self, pattern, what):
        expect(self.times_of(pattern), f"the worker log has no line for {what}")


# ------------------------------------------------------------------------ scenarios


def scenario_basic(q):
    """Scenario 1: a simple job runs once and completes."""
    say = q.narrator
    say.step("1.1", "Create a job file job1.json")
    q.write_job("job1.json", {"id": "hello-world", "command": "echo Hello from QueueCTL"})

    say.step("1.2", "Enqueue the job")
    result = q.enqueue_file("job1.json")
    expect("Job hello-world enqueued successfully" in result.stdout, "no success line for hello-world")

    say.step("1.3", "Start a worker in the background")
    q.start_workers(1)

    say.step("1.4", "Check job status once the worker is done")
    q.wait_for_jobs("hello-world is completed", lambda jobs: state_of(jobs, "hello-world") == "completed")
    q.cli("status")
    q.expect_counts(q.status(), pending=0, processing=0, completed=1)

    say.step("1.5", "View job details")
    q.cli("list")
    job = q.jobs()["hello-world"]
    expect(job["attempts"] == 1, f"hello-world took {job['attempts']} attempts (expected 1)")
    expect(job["exit_code"] == 0, f"hello-world exit code {job['exit_code']} (expected 0)")

    say.step("1.6", "Stop the worker")
    q.stop_workers(1)
    return "hello-world completed with 1 attempt"


def scenario_retry_dlq(q):
    """Scenario 2: a failing job retries after 2 s and 4 s, then lands in the DLQ."""
    say = q.narrator
    say.step("2.1", "Configure retry settings")
    for key, value in (("max_retries", "3"), ("backoff_base", "2")):
        result = q.cli("config", "set", key, value)
        expect(f"Configuration updated: {key} = {value}" in result.stdout,
               f"`config set {key} {value}` printed {result.stdout.strip()!r}")

    say.step("2.2", "Create a failing job file job2.json")
    q.write_job("job2.json", {"id": "will-fail", "command": "exit 1", "max_retries": 3})

    say.step("2.3", "Enqueue the failing job")
    q.enqueue_file("job2.json")

    say.step("2.4", "Run a worker in the foreground and watch the retry timing")
    worker = q.run_foreground_worker()
    q.wait_for_jobs("will-fail is in the DLQ", lambda jobs: state_of(jobs, "will-fail") == "dlq", timeout=40)

    say.step("2.5", "Stop the worker with Ctrl+C, then check the DLQ")
    worker.interrupt()
    for attempt in (1, 2, 3):
        worker.expect_line(rf"INFO - Worker \S+ processing job will-fail \(attempt {attempt}/3\): exit 1",
                           f"attempt {attempt}/3 starting")
        worker.expect_line(rf"WARNING - Job will-fail failed \(attempt {attempt}/3\): Exit code 1",
                           f"attempt {attempt}/3 failing")
    worker.expect_line(r"INFO - Job will-fail moved to DLQ after 3 attempts", "the move to the DLQ")

    delays = []
    for attempt, expected in enumerate(EXPECTED_RETRY_DELAYS, start=1):
        announced = worker.times_of(rf"Job will-fail will retry in {expected:g}s \(attempt {attempt}/3\)")
        expect(announced, f"the worker log never says `will retry in {expected:g}s (attempt {attempt}/3)`")
        restarted = worker.times_of(rf"processing job will-fail \(attempt {attempt + 1}/3\)")
        delay = restarted[0] - announced[0]
        delays.append(delay)
        expect(expected - EARLY_TOLERANCE <= delay <= expected + LATE_TOLERANCE,
               f"retry {attempt} came {delay:.2f}s after the failure (expected about {expected:g}s)")
    say.note("measured retry delays: " + ", ".join(f"{d:.2f}s" for d in delays) + " (expected 2s, 4s)")

    q.cli("dlq", "list")
    buried = {job["id"]: job for job in q.cli_json("dlq", "list")}
    expect("will-fail" in buried, "will-fail is not in `dlq list`")
    job = buried["will-fail"]
    expect(job["attempts"] == 3, f"will-fail has {job['attempts']} attempts in the DLQ (expected 3)")
    expect((job["error_message"] or "").startswith("Exit code 1"),
           f"will-fail's error message is {job['error_message']!r} (expected `Exit code 1...`)")

    say.step("2.6", "Retry the job from the DLQ")
    result = q.cli("dlq", "retry", "will-fail")
    expect("Job will-fail moved from DLQ back to pending queue" in result.stdout,
           f"`dlq retry` printed {result.stdout.strip()!r}")
    job = q.jobs()["will-fail"]
    expect(job["state"] == "pending" and job["attempts"] == 0,
           f"after `dlq retry` will-fail is {job['state']} with {job['attempts']} attempts (expected pending, 0)")
    return "retried after {:.1f}s and {:.1f}s, then moved to the DLQ; revived by `dlq retry`".format(*delays)


def scenario_concurrent(q):
    """Scenario 3: three workers share five jobs; each job runs exactly once."""
    say = q.narrator
    ids = [f"job-{n}" for n in range(1, 6)]
    say.step("3.1", "Create 5 job files (job3a.json through job3e.json)")
    names = []
    for letter, job_id in zip("abcde", ids):
        names.append(f"job3{letter}.json")
        q.write_job(names[-1], {"id": job_id, "command": f"echo Job {job_id[-1]} && {PLATFORM_SLEEP} 1"})

    say.step("3.2", "Enqueue all jobs")
    for name in names:
        q.enqueue_file(name)

    say.step("3.3", "Start 3 workers")
    started = {f"worker-{pid}" for pid in q.start_workers(3)}

    say.step("3.4", "Watch the jobs being processed")
    q.wait_for_status("a worker is processing", lambda s: s["jobs"].get("processing", 0) >= 1
                      or s["jobs"].get("completed", 0) == len(ids))
    q.cli("status")

    say.step("3.5", "Wait for completion, then list all jobs")
    jobs = q.wait_for_jobs("all 5 jobs are completed",
                           lambda jobs: all_in_state(jobs, ids, "completed"))
    q.cli("list")

    say.step("3.6", "Verify no duplicate processing")
    again = {job_id: jobs[job_id]["attempts"] for job_id in ids if jobs[job_id]["attempts"] != 1}
    expect(not again, f"jobs ran more than once: {again}")
    by_worker = {}
    for job_id in ids:
        job = jobs[job_id]
        by_worker.setdefault(job["worker_id"], []).append((parse_time(job["started_at"]), parse_time(job["finished_at"])))
    strangers = sorted(set(by_worker) - started, key=str)
    expect(not strangers, f"jobs were run by {strangers}, not by the started workers {sorted(started)}")
    expect(len(by_worker) >= 2, f"only {len(by_worker)} worker(s) took jobs: {sorted(by_worker)}")
    for worker_id, spans in by_worker.items():
        spans.sort()
        overlapping = any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
        expect(not overlapping, f"{worker_id} ran two jobs at once")
    spans = sorted(span for worker_spans in by_worker.values() for span in worker_spans)
    expect(any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])),
           "no two jobs ran at the same time")
    say.note(f"all 5 jobs ran once, spread over {len(by_worker)} workers: " + ", ".join(
        f"{worker_id} x{len(worker_spans)}" for worker_id, worker_spans in sorted(by_worker.items())))

    say.step("3.7", "Stop the workers")
    q.stop_workers(3)
    return f"5 jobs, 1 attempt each, {len(by_worker)} distinct workers, running concurrently"


def scenario_invalid_commands(q):
    """Scenario 4: commands that cannot run fail cleanly into the DLQ with their error."""
    say = q.narrator
    specs = [
        {"id": "bad-cmd", "command": "nonexistent_command_xyz", "max_retries": 1},
        {"id": "missing-file", "command": "python missing_script.py", "max_retries": 1},
        {"id": "syntax-error", "command": 'python -c "invalid syntax here"', "max_retries": 1},
    ]
    say.step("4.1", "Create job files with invalid commands")
    names = [f"job4{letter}.json" for letter in "abc"]
    for name, spec in zip(names, specs):
        q.write_job(name, spec)

    say.step("4.2", "Enqueue the jobs")
    for name in names:
        q.enqueue_file(name)

    say.step("4.3", "Run a worker in the foreground")
    worker = q.run_foreground_worker()
    ids = [spec["id"] for spec in specs]
    q.wait_for_jobs("all three jobs are in the DLQ", lambda jobs: all_in_state(jobs, ids, "dlq"))

    say.step("4.4", "Stop the worker with Ctrl+C, then check the DLQ")
    worker.interrupt()
    for job_id in ids:
        worker.expect_line(rf"WARNING - Job {job_id} failed \(attempt 1/1\): Exit code", f"{job_id} failing")
        worker.expect_line(rf"INFO - Job {job_id} moved to DLQ after 1 attempts", f"{job_id} moving to the DLQ")
    q.cli("dlq", "list")
    buried = {job["id"]: job for job in q.cli_json("dlq", "list")}
    # What each failure must mention; the shell's own wording differs (dash, bash, zsh).
    evidence = {"bad-cmd": "nonexistent_command_xyz", "missing-file": "missing_script.py",
                "syntax-error": "SyntaxError"}
    for job_id in ids:
        expect(job_id in buried, f"{job_id} is not in `dlq list`")
        job = buried[job_id]
        message = job["error_message"] or ""
        expect(job["attempts"] == 1, f"{job_id} has {job['attempts']} attempts (expected 1)")
        expect(message.startswith("Exit code"), f"{job_id}'s error message is {message!r} (expected `Exit code ...`)")
        expect(evidence[job_id] in message, f"{job_id}'s error message {message!r} does not mention {evidence[job_id]}")
    expect(buried["bad-cmd"]["exit_code"] == 127,
           f"bad-cmd exit code {buried['bad-cmd']['exit_code']} (expected 127, the shell's `not found`)")
    return "three invalid commands each failed once, with the shell's or Python's error captured"


def scenario_persistence(q):
    """Scenario 5: the queue's state survives stopping the worker and starting another."""
    say = q.narrator
    specs = [
        {"id": "persist-1", "command": f"echo Starting Job 1 && {PLATFORM_SLEEP} 3 && echo Done Job 1"},
        {"id": "persist-2", "command": "echo Job 2"},
        {"id": "persist-3", "command": "echo Job 3"},
    ]
    ids = [spec["id"] for spec in specs]
    say.step("5.1", "Create job files")
    names = [f"job5{letter}.json" for letter in "abc"]
    for name, spec in zip(names, specs):
        q.write_job(name, spec)

    say.step("5.2", "Enqueue the jobs")
    for name in names:
        q.enqueue_file(name)

    say.step("5.3", "Start a worker and wait until it runs persist-1")
    say.note("the guide waits 5 s here, but a live worker finishes all three jobs in about 3 s;")
    say.note("stopping the worker while persist-1 runs is what leaves the guide's counts")
    q.start_workers(1)
    running = q.wait_for_jobs("persist-1 is processing", lambda jobs: state_of(jobs, "persist-1") != "pending")
    expect([running[job_id]["state"] for job_id in ids] == ["processing", "pending", "pending"],
           f"expected persist-1 processing and the others pending, saw {describe_jobs(running)}")
    say.note(f"at that moment: {describe_jobs(running)} (job=state/attempts)")

    # Stop at once: everything between seeing persist-1 claimed and the stop
    # signal eats into its 3 seconds, and a busy machine can use them all up.
    say.step("5.4-5.5", "Stop the worker right away: it finishes persist-1, then exits without claiming more")
    stop_issued = time.time()
    q.stop_workers(1)

    say.step("5.6", "Verify the data persisted: check status twice")
    q.cli("status")
    first = q.status()
    before = q.jobs()
    finished = parse_time(before["persist-1"]["finished_at"])
    if finished and finished.timestamp() < stop_issued:
        raise ScenarioFailed(f"inconclusive: persist-1 finished {stop_issued - finished.timestamp():.1f}s "
                             "before `worker stop` was issued (is the machine very busy?)")
    q.expect_counts(first, pending=2, processing=0, completed=1)
    q.cli("status")
    second = q.status()
    expect(first["jobs"] == second["jobs"],
           f"counts changed with no worker running: {describe_counts(first)} -> {describe_counts(second)}")

    say.step("5.7", "List all jobs to confirm data integrity")
    q.cli("list")
    expect(before["persist-1"]["state"] == "completed" and before["persist-1"]["attempts"] == 1,
           f"persist-1 is {before['persist-1']['state']}/{before['persist-1']['attempts']} (expected completed/1)")
    for job_id in ids[1:]:
        expect(before[job_id]["state"] == "pending" and before[job_id]["attempts"] == 0,
               f"{job_id} is {before[job_id]['state']}/{before[job_id]['attempts']} (expected pending/0)")

    say.step("5.8", "Restart a worker to process the remaining jobs")
    q.start_workers(1)
    after = q.wait_for_jobs("all jobs are completed",
                            lambda jobs: all_in_state(jobs, ids, "completed"))

    say.step("5.9", "Verify all jobs completed")
    q.cli("list")
    again = {job_id: after[job_id]["attempts"] for job_id in ids if after[job_id]["attempts"] != 1}
    expect(not again, f"attempts other than 1: {again}")
    expect(after["persist-1"]["finished_at"] == before["persist-1"]["finished_at"],
           "persist-1 ran again after the restart")

    say.step("5.10", "Stop the worker")
    q.stop_workers(1)
    return "counts identical across the stop; the restarted worker finished the rest"


SCENARIOS = [
    ("Basic Job Completion", scenario_basic),
    ("Retry & DLQ with Backoff", scenario_retry_dlq),
    ("Concurrent Workers", scenario_concurrent),
    ("Invalid Command Handling", scenario_invalid_commands),
    ("Data Persistence", scenario_persistence),
]


# ------------------------------------------------------------------------ running


def make_python_shim(directory):
    """A ``python`` in ``directory`` that runs this interpreter.

    A wrapper script rather than a symlink: a venv's interpreter finds its
    pyvenv.cfg through the path it was started by, which a symlink would change.
    """
    directory.mkdir()
    shim = directory / "python"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n", encoding="utf-8")
    shim.chmod(0o755)
    return directory


@contextmanager
def scratch_root(keep=False):
    """A temporary directory for the scenario homes, removed afterwards unless kept."""
    root = Path(tempfile.mkdtemp(prefix="queuectl-demo-"))
    try:
        yield root
    finally:
        if keep:
            print(f"Queue homes kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def run_scenarios(narrator, on_result, keep=False):
    """Run every scenario in its own home; call ``on_result(name, summary, error)``.

    ``error`` is None when the scenario passed. KeyboardInterrupt and SystemExit
    propagate, after the workers of the running scenario have been stopped.
    """
    results = []
    with scratch_root(keep) as root:
        tools_dir = make_python_shim(root / "bin")
        for number, (name, scenario) in enumerate(SCENARIOS, start=1):
            narrator.banner(f"Scenario {number}: {name}")
            queue = Queue(root / f"scenario-{number}", narrator, tools_dir)
            narrator.note(f"queue home: {queue.home}")
            summary = error = None
            try:
                summary = scenario(queue)
            except ScenarioFailed as exc:
                error = str(exc)
            except Exception as exc:  # a crash in one scenario must not hide the others
                error = f"{type(exc).__name__}: {exc}"
            finally:
                queue.clean_up()
            results.append((name, error))
            on_result(name, summary, error)
    return results


def exit_on_sigterm():
    """Turn SIGTERM into SystemExit so the same cleanup as for Ctrl+C runs."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def tolerate_any_terminal():
    """Print the check marks even where the terminal's encoding has none."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
