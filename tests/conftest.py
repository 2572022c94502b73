"""Shared fixtures: a queue home per test, the CLI as a real subprocess,
worker processes that are always stopped, and one deadline-polling helper.
"""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from queuectl.config import Home
from queuectl.storage import open_storage

# Every test gets at most this long overall (see pytest_runtest_call below).
TEST_TIMEOUT_SECONDS = 120


def wait_for(condition, timeout=10.0, interval=0.05, what=None):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            name = what or getattr(condition, "__name__", "condition")
            pytest.fail(f"timed out after {timeout}s waiting for: {name}")
        time.sleep(interval)


@pytest.fixture(autouse=True)
def _no_outside_database(monkeypatch):
    # A QUEUECTL_DB from the developer's shell must never leak into a test.
    monkeypatch.delenv("QUEUECTL_DB", raising=False)


def process_gone(pid):
    """True once ``pid`` has exited. An exited process may linger as a zombie
    until init reaps it (some containers' init never does); it no longer runs."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "home"
    path.mkdir()
    return Home(str(path))


def _env(home_path, extra=None):
    env = dict(os.environ)
    env.pop("QUEUECTL_DB", None)
    env["QUEUECTL_HOME"] = home_path
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


class Queue:
    """Drives one queue home through the real CLI (``python -m queuectl``)."""

    def __init__(self, home, tmp_path):
        self.home = home
        self.path = home.path
        self.tmp_path = tmp_path
        self._workers = []

    def run(self, *args, input=None, check=True, env=None, cwd=None, timeout=60):
        proc = subprocess.run(
            [sys.executable, "-m", "queuectl", *args],
            input=input,
            capture_output=True,
            text=True,
            env=_env(self.path, env),
            cwd=cwd or self.path,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"queuectl {' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def enqueue(self, **spec):
        return self.run("enqueue", json.dumps(spec))

    # Polling helpers read the database in-process (the CLI's own output is
    # tested in test_cli.py); a subprocess per poll would make waits coarse.
    def jobs(self):
        with open_storage(self.home) as store:
            return {job.id: job.to_dict() for job in store.list_jobs()}

    def job(self, job_id):
        return self.jobs()[job_id]

    def counts(self):
        with open_storage(self.home) as store:
            return {state.value: count for state, count in store.count_by_state().items()}

    def set_config(self, **values):
        for key, value in values.items():
            self.run("config", "set", key, str(value))

    def start_worker(self, *args, env=None):
        """A foreground ``worker run`` whose log we can read; stopped at teardown."""
        log = open(os.path.join(str(self.tmp_path), f"worker-{len(self._workers)}.log"), "w+")
        proc = subprocess.Popen(
            [sys.executable, "-m", "queuectl", "worker", "run", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_env(self.path, env),
            cwd=self.path,
        )
        proc.log = log
        self._workers.append(proc)
        return proc

    def wait_workers(self, count, timeout=10.0):
        """Wait until ``count`` workers are registered.

        A new worker creates the queue itself, and ``status`` refuses a home
        without one: until then the answer is "not yet", not an error.
        """

        def registered():
            proc = self.run("status", "--json", check=False)
            return proc.returncode == 0 and json.loads(proc.stdout)["workers"]["count"] == count

        wait_for(registered, timeout=timeout, what=f"{count} worker(s) registered")

    @staticmethod
    def log_of(proc):
        proc.log.flush()
        with open(proc.log.name) as handle:
            return handle.read()

    def wait_state(self, job_id, state, timeout=15):
        return wait_for(
            lambda: self.jobs().get(job_id, {}).get("state") == state,
            timeout=timeout,
            what=f"job {job_id} to reach {state}",
        )

    def cleanup(self):
        for proc in self._workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            proc.log.close()
        # Detached workers from `worker start`: stop them, then kill leftovers.
        self.run("worker", "stop", "--timeout", "5", "--force", check=False)


@pytest.fixture
def queue(home, tmp_path):
    q = Queue(home, tmp_path)
    yield q
    q.cleanup()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    # An overall per-test limit (no plugin needed): SIGALRM fails a hung test.
    def on_timeout(signum, frame):
        pytest.fail(f"test exceeded {TEST_TIMEOUT_SECONDS}s")

    previous = signal.signal(signal.SIGALRM, on_timeout)
    signal.alarm(TEST_TIMEOUT_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
