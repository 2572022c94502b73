"""Driver for queuectl itself, through its command line (and, for the
claim-depth figure, its storage API). Every measurement gets a fresh queue
home in a temp dir.
"""

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime

from common import CpuSampler, now, stop_process, tree_pids
from peers import Peer, _tmp


def queuectl_argv():
    """How to run the CLI: the installed console script beside this
    interpreter (what a user types), else `python -m queuectl`. pyenv shims
    on PATH are skipped on purpose: they add ~50 ms of bash to every call."""
    script = os.path.join(os.path.dirname(sys.executable), "queuectl")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "queuectl"]


def open_queue(home, **options):
    """The storage of `home`'s queue, created if needed, as `enqueue` would.

    QUEUECTL_DB is set aside while opening: the bench's queues live in their homes.
    """
    from queuectl.config import Home
    from queuectl.storage import open_storage

    saved = os.environ.pop("QUEUECTL_DB", None)
    try:
        return open_storage(Home(home), **options)
    finally:
        if saved is not None:
            os.environ["QUEUECTL_DB"] = saved


def create_queue(home):
    """Create the empty queue of `home`: read commands such as `status`
    refuse a home without one, and workers should not spend their first
    moments setting it up."""
    open_queue(home).close()


_CONSOLE_SCRIPT = """#!{python}
import sys
from queuectl.cli import main
sys.exit(main())
"""


def snapshot_head(repo, directory):
    """Freeze queuectl as committed at HEAD, so edits made to the working
    tree while the benchmark runs cannot change what it measures.

    Extracts `git archive HEAD queuectl` into `directory`, puts it first on
    PYTHONPATH (for this process and every child) and writes a console
    script equivalent to the one pip installs. Returns (argv, commit) or
    None when `repo` is not a git checkout.
    """
    try:
        commit = subprocess.run(
            ["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        archive = subprocess.run(
            ["git", "-C", repo, "archive", "HEAD", "queuectl"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    os.makedirs(directory, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", directory], input=archive, check=True)
    # Byte-compile it, as pip does on install: without .pyc files (e.g. under
    # PYTHONDONTWRITEBYTECODE=1) every CLI call would recompile the package.
    import compileall

    compileall.compile_dir(directory, quiet=2)
    script = os.path.join(directory, "queuectl-cli")
    with open(script, "w") as fh:
        fh.write(_CONSOLE_SCRIPT.format(python=sys.executable))
    os.chmod(script, 0o755)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [directory, os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, directory)
    return [script], commit


def tree_state(repo):
    """(commit, whether queuectl/ has uncommitted changes) of a checkout."""
    try:
        commit = subprocess.run(
            ["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "--", "queuectl"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit, bool(dirty)


def write_jsonl(path, count, command="true"):
    line = json.dumps({"command": command}) + "\n"
    with open(path, "w") as fh:
        fh.writelines(line for _ in range(count))


def _epoch(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Queuectl(Peer):
    """queuectl: `enqueue -f` the jobs, then start W `worker run --burst`
    processes at once and wait for them to exit.

    Drain timing: from the earliest started_at (the first claim) to the
    latest finished_at among the n jobs, as queuectl stores them
    (`list --json`); worker start-up is therefore not counted. The wall time
    from spawning the workers to their exit is kept as a second figure.
    """

    name = "queuectl"
    key = "queuectl"

    def __init__(self, argv=None):
        self.argv = argv or queuectl_argv()

    def available(self):
        try:
            out = subprocess.run([*self.argv, "--version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"queuectl does not run: {exc}"
        if out.returncode != 0:
            return False, "queuectl is not installed here (pip install -e .): " + (out.stderr.strip().splitlines() or ["?"])[-1]
        # The snapshot runs on this interpreter: its runtime dependencies must be here too.
        missing = [name for name in ("click", "tabulate", "psutil") if importlib.util.find_spec(name) is None]
        if missing:
            return False, f"{sys.executable} lacks {', '.join(missing)} (pip install -e . into it)"
        return True, out.stdout.strip() or "queuectl"

    def cli(self, home, *args, check=True, timeout=600, **kw):
        out = subprocess.run(
            [*self.argv, "--home", home, *args], capture_output=True, text=True, timeout=timeout, **kw
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"queuectl {' '.join(args[:2])} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
        return out

    def _workers(self, home, count, burst):
        procs = []
        for i in range(count):
            logfile = open(os.path.join(home, f"bench-worker-{i}.log"), "w")
            args = ["worker", "run"] + (["--burst"] if burst else [])
            procs.append(
                subprocess.Popen(
                    [*self.argv, "--home", home, *args],
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            logfile.close()
        return procs

    def startup_cpu(self, workers):
        """CPU seconds `workers` burst workers spend on an empty queue, from
        spawn to exit: what drain's own-CPU figure subtracts as start-up."""
        with _tmp("queuectl-empty") as home:
            create_queue(home)
            procs = self._workers(home, workers, burst=True)
            sampler = CpuSampler([p.pid for p in procs])
            for proc in procs:
                proc.wait(timeout=120)
            return sampler.stop()

    def jobs(self, home, limit):
        out = self.cli(home, "list", "--json", "--limit", str(limit))
        return json.loads(out.stdout)

    def drain(self, n, workers):
        with _tmp("queuectl") as home:
            path = os.path.join(home, "jobs.jsonl")
            write_jsonl(path, n)
            self.cli(home, "enqueue", "-f", path)
            t0 = now()
            procs = self._workers(home, workers, burst=True)
            sampler = CpuSampler([p.pid for p in procs])
            for proc in procs:
                try:
                    proc.wait(timeout=900)
                except subprocess.TimeoutExpired:
                    stop_process(proc)
            wall = now() - t0
            own_cpu = sampler.stop()
            jobs = self.jobs(home, n + 10)
            done = [j for j in jobs if j.get("state") == "completed"]
            if len(done) != n:
                states = {}
                for j in jobs:
                    states[j.get("state")] = states.get(j.get("state"), 0) + 1
                raise RuntimeError(f"queuectl completed {len(done)} of {n} jobs: {states}")
            first = min(_epoch(j["started_at"]) for j in done)
            last = max(_epoch(j["finished_at"]) for j in done)
            return {
                "rate": n / (last - first),
                "span": last - first,
                "wall_incl_startup": wall,
                # includes interpreter start-up and imports (~0.1 s a worker)
                "own_cpu_per_job": own_cpu / n,
            }

    @contextlib.contextmanager
    def live(self):
        with _tmp("queuectl-live") as home:
            create_queue(home)  # so the worker does not spend its first moments setting it up
            (worker,) = self._workers(home, 1, burst=False)
            try:
                yield _QueuectlLive(self, home, worker)
            finally:
                stop_process(worker, signal.SIGTERM, timeout=15)

    # --- figures only queuectl has ----------------------------------------

    def enqueue_latency(self, samples):
        """Median seconds of one `queuectl enqueue '<json>'` (warm database)."""
        with _tmp("queuectl-enq") as home:
            spec = json.dumps({"command": "true"})
            self.cli(home, "enqueue", spec)  # creates the database
            times = []
            for _ in range(samples):
                t0 = now()
                self.cli(home, "enqueue", spec)
                times.append(now() - t0)
            return times

    def batch_enqueue(self, path, n):
        """Jobs/s of `queuectl enqueue -f FILE` with n JSON lines, fresh home."""
        with _tmp("queuectl-batch") as home:
            t0 = now()
            self.cli(home, "enqueue", "-f", path)
            elapsed = now() - t0
            status = json.loads(self.cli(home, "status", "--json").stdout)
            pending = status["jobs"]["pending"]
            if pending != n:
                raise RuntimeError(f"batch enqueue stored {pending} of {n} jobs")
            return {"rate": n / elapsed, "seconds": elapsed}


class _QueuectlLive:
    def __init__(self, q, home, worker):
        self.q, self.home, self.worker = q, home, worker

    def submit(self, command):
        self.q.cli(self.home, "enqueue", json.dumps({"command": command}))
        return now()

    def pids(self):
        return tree_pids(self.worker.pid)


class DepthBench:
    """Claim cost against a deep queue, through queuectl's storage API.

    A queue home is filled with `enqueue -f` (its build time is reported as
    well); then the bench opens the queue as a worker does (synchronous=
    NORMAL) and times `claim()` calls, completing each claimed job untimed
    so the queue keeps its depth.
    """

    def __init__(self, q, size, directory):
        self.q, self.size = q, size
        self.home = os.path.join(directory, f"depth-{size}")
        os.makedirs(self.home)
        path = os.path.join(directory, f"depth-{size}.jsonl")
        write_jsonl(path, size)
        t0 = now()
        q.cli(self.home, "enqueue", "-f", path, timeout=1800)
        self.build_seconds = now() - t0
        os.unlink(path)
        self._storage = None

    def _open(self):
        if self._storage is None:
            self._storage = open_queue(self.home, durable=False)
        return self._storage

    def claims(self, count):
        """Seconds per claim() for `count` claims; then tops the queue back
        up to its size (untimed), so every repeat starts at the same depth."""
        from queuectl.jobs import AttemptResult

        storage = self._open()
        ok = AttemptResult(succeeded=True, exit_code=0, error_message=None)
        times = []
        for _ in range(count):
            t0 = now()
            job = storage.claim("bench-depth", time.time(), 60.0)
            times.append(now() - t0)
            if job is None:
                raise RuntimeError("depth bench: queue ran dry")
            storage.complete(job, ok, time.time())
        path = os.path.join(os.path.dirname(self.home), f"refill-{self.size}.jsonl")
        write_jsonl(path, count)
        self.q.cli(self.home, "enqueue", "-f", path)
        os.unlink(path)
        return times

    def query_plan(self):
        """SQLite's plan for the claim query, for the report."""
        try:
            from queuectl.storage import sqlite as backend

            storage = self._open()
            rows = storage._conn.execute(
                "EXPLAIN QUERY PLAN " + backend.SQL_CLAIM_NEXT,
                {"worker": "x", "now": time.time(), "lease": time.time()},
            ).fetchall()
            return "; ".join(str(r[-1]) for r in rows)
        except Exception as exc:  # informative only
            return f"(no plan: {exc})"

    def close(self):
        if self._storage is not None:
            self._storage.close()
            self._storage = None
