"""Drivers for the queues queuectl is compared with: task-spooler (tsp), nq,
Huey with its SQLite storage, and RQ (only if a Redis server is installed).

Every system runs the same job, ``/bin/sh -c true``, in its own fresh
directory, with its defaults except where noted. Each driver offers:

- ``drain(n, workers)``: run n jobs with that many workers, return the
  throughput and how it was timed;
- ``live()``: a context manager with an idle worker (or server) running,
  whose ``submit(command)`` enqueues one job and returns the monotonic time
  the enqueue call returned, and whose ``pids()`` lists the processes whose
  CPU time counts as the system's idle cost.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from common import CpuSampler, Gate, now, stop_process, tree_pids, wait_until

SH_TRUE_ARGV = ["/bin/sh", "-c", "true"]

# The task both Python peers run: the job's shell command, bracketed by two
# wall-clock stamps appended to a log file (one short write per job).
_TASK_BODY = '''
import os, subprocess, time

LOG = os.environ.get("BENCH_STAMP_LOG", os.devnull)


def run_shell(command):
    started = time.time()
    subprocess.run(command, shell=True)
    finished = time.time()
    with open(LOG, "a") as fh:
        fh.write("%.6f %.6f\\n" % (started, finished))
'''

_HUEY_MODULE = _TASK_BODY + '''

from huey import SqliteHuey

huey = SqliteHuey("bench", filename=os.environ["BENCH_HUEY_DB"])
shell = huey.task()(run_shell)
'''

_RQ_MODULE = _TASK_BODY


def read_stamps(path):
    """(first start, last finish, count) from a task stamp log."""
    starts, ends = [], []
    try:
        with open(path) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) == 2:
                    starts.append(float(parts[0]))
                    ends.append(float(parts[1]))
    except FileNotFoundError:
        pass
    if not starts:
        return None, None, 0
    return min(starts), max(ends), len(starts)


def count_lines(path):
    try:
        with open(path, "rb") as fh:
            return fh.read().count(b"\n")
    except FileNotFoundError:
        return 0


class Unavailable(Exception):
    pass


class Peer:
    name = "?"
    key = "?"

    def available(self):
        """(True, version) or (False, reason)."""
        raise NotImplementedError


# --------------------------------------------------------------------------
# task-spooler
# --------------------------------------------------------------------------


class TaskSpooler(Peer):
    """task-spooler: one server process per socket; `tsp CMD` is a client
    that hands the job to the server and exits; TS_SLOTS jobs run at once.

    Drain timing: the server's slots are first filled with gate jobs that
    block on a FIFO, the n jobs are enqueued behind them, a `tsp -w LAST`
    waiter is attached, and the clock runs from releasing the gate to the
    waiter returning (then any job still running is waited for too).
    """

    name = "task-spooler (tsp)"
    key = "tsp"

    def available(self):
        path = shutil.which("tsp")
        if not path:
            return False, "tsp not installed (Debian package task-spooler)"
        from common import dpkg_version

        return True, f"task-spooler {dpkg_version('task-spooler') or '?'}"

    def _env(self, directory, slots):
        return dict(
            os.environ,
            TS_SOCKET=os.path.join(directory, "ts.sock"),
            TMPDIR=directory,
            TS_SLOTS=str(slots),
        )

    def _tsp(self, env, *args, timeout=120):
        out = subprocess.run(["tsp", *args], env=env, capture_output=True, text=True, timeout=timeout)
        return out.stdout.strip()

    def _unfinished(self, env):
        listing = self._tsp(env, "-l")
        ids = []
        for line in listing.splitlines()[1:]:
            parts = line.split()
            if len(parts) > 1 and parts[1] in ("running", "queued", "allocating"):
                ids.append(parts[0])
        return ids

    # A queued tsp job keeps its client process connected to the server
    # until it has run, and the server takes at most 1000 connections
    # (TS_MAXCONN can only lower that), so at most ~1000 jobs can wait at
    # once. Larger drains run as gated batches whose spans are added up.
    BATCH = 800

    def drain(self, n, workers):
        span, latencies, done = 0.0, [], 0
        with _tmp("tsp") as d:
            env = self._env(d, workers)
            gate = Gate(d)
            try:
                while done < n:
                    size = min(self.BATCH, n - done)
                    span += self._drain_batch(env, gate, size, workers, latencies)
                    done += size
            finally:
                self._tsp(env, "-K")
        latencies.sort()
        return {
            "rate": n / span,
            "span": span,
            "client_enqueue_s": latencies[len(latencies) // 2],
            "batches": -(-n // self.BATCH),
        }

    def _drain_batch(self, env, gate, size, workers, latencies):
        released = False
        try:
            for _ in range(workers):
                self._tsp(env, *gate.argv)
            last = None
            for _ in range(size):
                t0 = now()
                last = self._tsp(env, *SH_TRUE_ARGV)
                latencies.append(now() - t0)
            waiter = subprocess.Popen(["tsp", "-w", last], env=env, stdout=subprocess.DEVNULL)
            time.sleep(0.1)  # let the waiter reach the server
            t_release = gate.release()
            released = True
            waiter.wait(timeout=600)
            t_end = now()
            left = self._unfinished(env)
            for job in left:
                self._tsp(env, "-w", job)
            if left:
                t_end = now()
            return t_end - t_release
        finally:
            if not released:
                gate.release_nowait()

    @contextlib.contextmanager
    def live(self):
        with _tmp("tsp-live") as d:
            env = self._env(d, 1)
            self._tsp(env, "-S", "1")  # starts the server
            try:
                yield _TspLive(self, env)
            finally:
                self._tsp(env, "-K")


class _TspLive:
    def __init__(self, peer, env):
        self.peer, self.env = peer, env

    def submit(self, command):
        self.peer._tsp(self.env, "/bin/sh", "-c", command)
        return now()

    def pids(self):
        import psutil

        sock = self.env["TS_SOCKET"]
        found = []
        for proc in psutil.process_iter(["name"]):
            if proc.info["name"] != "tsp":
                continue
            try:
                if proc.environ().get("TS_SOCKET") == sock:
                    found.append(proc.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return found


# --------------------------------------------------------------------------
# nq
# --------------------------------------------------------------------------


class Nq(Peer):
    """nq: no daemon. `nq CMD` forks a process that waits (flock) for every
    earlier job in its directory, then runs. One directory is one serial
    queue, so "2 workers" means two directories fed round-robin.

    Drain timing: each directory's first job is a gate blocked on a FIFO;
    the n jobs are enqueued behind it, an `nq -w` waiter per directory is
    attached, and the clock runs from releasing the gates to the last waiter
    returning.
    """

    name = "nq"
    key = "nq"

    def available(self):
        if not shutil.which("nq"):
            return False, "nq not installed (Debian package nq)"
        from common import dpkg_version

        return True, f"nq {dpkg_version('nq') or '?'}"

    def drain(self, n, workers):
        with _tmp("nq") as d:
            gate = Gate(d)
            lanes = []
            for i in range(workers):
                env = dict(os.environ, NQDIR=os.path.join(d, f"lane{i}"))
                subprocess.run(["nq", "-q", *gate.argv], env=env)
                lanes.append(env)
            latencies = []
            for i in range(n):
                t0 = now()
                subprocess.run(["nq", "-q", *SH_TRUE_ARGV], env=lanes[i % workers])
                latencies.append(now() - t0)
            waiters = [subprocess.Popen(["nq", "-w"], env=env) for env in lanes]
            time.sleep(0.2)
            t_release = gate.release()
            for w in waiters:
                w.wait()
            t_end = now()
            latencies.sort()
            return {
                "rate": n / (t_end - t_release),
                "span": t_end - t_release,
                "client_enqueue_s": latencies[len(latencies) // 2],
            }

    @contextlib.contextmanager
    def live(self):
        with _tmp("nq-live") as d:
            env = dict(os.environ, NQDIR=os.path.join(d, "q"))
            yield _NqLive(env)


class _NqLive:
    def __init__(self, env):
        self.env = env

    def submit(self, command):
        subprocess.run(["nq", "-q", "/bin/sh", "-c", command], env=self.env)
        return now()

    def pids(self):
        return []  # nothing runs between jobs


# --------------------------------------------------------------------------
# Python peers: a long-lived client process enqueues through the library API
# --------------------------------------------------------------------------

_CLIENT = '''
import sys, time
kind = sys.argv[1]
if kind == "huey":
    import benchjobs
    def enqueue(cmd):
        benchjobs.shell(cmd)
else:
    from redis import Redis
    from rq import Queue
    import benchjobs
    queue = Queue(connection=Redis(host="127.0.0.1", port=int(sys.argv[2])))
    def enqueue(cmd):
        queue.enqueue(benchjobs.run_shell, cmd)
for line in sys.stdin:
    line = line.rstrip("\\n")
    if line.startswith("batch "):
        _, count, cmd = line.split(" ", 2)
        for _ in range(int(count)):
            enqueue(cmd)
    else:
        enqueue(line)
    print(repr(time.monotonic()), flush=True)
'''


class _Client:
    """A Python process that enqueues through a peer's API on request."""

    def __init__(self, directory, env, *args):
        path = os.path.join(directory, "bench_client.py")
        with open(path, "w") as fh:
            fh.write(_CLIENT)
        self.proc = subprocess.Popen(
            [sys.executable, path, *args],
            cwd=directory,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def request(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError("enqueue client died")
        return float(reply)

    def close(self):
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        stop_process(self.proc, timeout=5)


class Huey(Peer):
    """Huey 2.x/3.x with SqliteHuey (its defaults: WAL, no fsync per write),
    consumer with the process worker type.

    Drain timing: the n tasks are enqueued first (through the API, by a
    client process), then `huey_consumer -w W -k process` is started. Each
    task stamps the wall clock just before and after running the shell
    command; throughput = n / (first start -> last finish). The consumer's
    own start-up is therefore not counted, as for queuectl.
    """

    name = "Huey (SqliteHuey)"
    key = "huey"

    def available(self):
        try:
            import huey  # noqa: F401
        except ImportError:
            return False, "huey not installed (pip install -r bench/requirements.txt)"
        if not _console_script("huey_consumer"):
            return False, "huey_consumer script not found"
        from common import pip_version

        return True, f"huey {pip_version('huey')}"

    def _prepare(self, d):
        with open(os.path.join(d, "benchjobs.py"), "w") as fh:
            fh.write(_HUEY_MODULE)
        return dict(
            os.environ,
            PYTHONPATH=d,
            BENCH_HUEY_DB=os.path.join(d, "huey.db"),
            BENCH_STAMP_LOG=os.path.join(d, "stamps.log"),
        )

    def _consumer(self, d, env, workers):
        logfile = open(os.path.join(d, "consumer.log"), "w")
        proc = subprocess.Popen(
            [_console_script("huey_consumer"), "benchjobs.huey", "-w", str(workers), "-k", "process"],
            cwd=d,
            env=env,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logfile.close()
        return proc

    def drain(self, n, workers):
        with _tmp("huey") as d:
            env = self._prepare(d)
            client = _Client(d, env, "huey")
            try:
                client.request(f"batch {n} true")
            finally:
                client.close()
            consumer = self._consumer(d, env, workers)
            sampler = CpuSampler([consumer.pid], with_children=True)
            try:
                ok = wait_until(lambda: count_lines(env["BENCH_STAMP_LOG"]) >= n, timeout=600, interval=0.1)
                own_cpu = sampler.stop()
            finally:
                sampler.stop()
                stop_process(consumer, signal.SIGINT, timeout=15)
            first, last, count = read_stamps(env["BENCH_STAMP_LOG"])
            if not ok or count < n:
                raise RuntimeError(f"huey ran {count} of {n} jobs")
            return {"rate": n / (last - first), "span": last - first, "own_cpu_per_job": own_cpu / n}

    def startup_cpu(self, workers):
        """CPU seconds of a consumer with `workers` process workers that is
        started on an empty queue and stopped as soon as its workers are up."""
        with _tmp("huey-empty") as d:
            env = self._prepare(d)
            consumer = self._consumer(d, env, workers)
            sampler = CpuSampler([consumer.pid], with_children=True)
            try:
                wait_until(lambda: len(tree_pids(consumer.pid)) > workers, timeout=30)
                time.sleep(0.3)
            finally:
                stop_process(consumer, signal.SIGINT, timeout=15)
                cpu = sampler.stop()
            return cpu

    @contextlib.contextmanager
    def live(self):
        with _tmp("huey-live") as d:
            env = self._prepare(d)
            consumer = self._consumer(d, env, 1)
            client = _Client(d, env, "huey")
            try:
                yield _PyLive(client, consumer)
            finally:
                client.close()
                stop_process(consumer, signal.SIGINT, timeout=15)


class _PyLive:
    def __init__(self, client, *procs):
        self.client, self.procs = client, procs

    def submit(self, command):
        return self.client.request(command)

    def pids(self):
        pids = []
        for proc in self.procs:
            pids.extend(tree_pids(proc.pid))
        return pids


class Rq(Peer):
    """RQ with a Redis server started here on 127.0.0.1 (default RQ worker,
    which forks a work horse per job).

    Drain timing: as for Huey: enqueue through the API, start W
    `rq worker --burst` processes, n / (first task start -> last finish).
    """

    name = "RQ (Redis)"
    key = "rq"

    def available(self):
        if not shutil.which("redis-server"):
            return False, "redis-server not installed (Debian package redis-server)"
        try:
            import redis  # noqa: F401
            import rq  # noqa: F401
        except ImportError:
            return False, "rq/redis not installed (pip install -r bench/requirements.txt)"
        if not _console_script("rq"):
            return False, "rq script not found"
        from common import dpkg_version, pip_version

        return True, f"rq {pip_version('rq')}, redis-server {dpkg_version('redis-server') or '?'}"

    @contextlib.contextmanager
    def _redis(self, d):
        port = _free_port()
        proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", d,
             "--daemonize", "no", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            if not wait_until(lambda: _port_open(port), timeout=10):
                raise RuntimeError("redis-server did not start")
            yield port, proc
        finally:
            stop_process(proc, signal.SIGTERM, timeout=10)

    def _prepare(self, d):
        with open(os.path.join(d, "benchjobs.py"), "w") as fh:
            fh.write(_RQ_MODULE)
        return dict(os.environ, PYTHONPATH=d, BENCH_STAMP_LOG=os.path.join(d, "stamps.log"))

    def _worker(self, d, env, port, burst):
        argv = [_console_script("rq"), "worker", "-u", f"redis://127.0.0.1:{port}", "-P", d]
        if burst:
            argv.append("--burst")
        logfile = open(os.path.join(d, f"worker-{time.monotonic_ns()}.log"), "w")
        proc = subprocess.Popen(argv, cwd=d, env=env, stdout=logfile, stderr=subprocess.STDOUT,
                                start_new_session=True)
        logfile.close()
        return proc

    def drain(self, n, workers):
        with _tmp("rq") as d, self._redis(d) as (port, _):
            env = self._prepare(d)
            client = _Client(d, env, "rq", str(port))
            try:
                client.request(f"batch {n} true")
            finally:
                client.close()
            procs = [self._worker(d, env, port, burst=True) for _ in range(workers)]
            for proc in procs:
                try:
                    proc.wait(timeout=900)
                except subprocess.TimeoutExpired:
                    stop_process(proc)
            first, last, count = read_stamps(env["BENCH_STAMP_LOG"])
            if count < n:
                raise RuntimeError(f"rq ran {count} of {n} jobs")
            return {"rate": n / (last - first), "span": last - first}

    @contextlib.contextmanager
    def live(self):
        with _tmp("rq-live") as d, self._redis(d) as (port, server):
            env = self._prepare(d)
            worker = self._worker(d, env, port, burst=False)
            client = _Client(d, env, "rq", str(port))
            try:
                # The Redis server is part of what RQ costs while idle.
                yield _PyLive(client, worker, server)
            finally:
                client.close()
                stop_process(worker, signal.SIGTERM, timeout=15)


# --------------------------------------------------------------------------


def _console_script(name):
    """The real script beside this interpreter (not a pyenv shim)."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(candidate, os.X_OK):
        return candidate
    return shutil.which(name)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def _tmp(prefix):
    path = tempfile.mkdtemp(prefix=f"qbench-{prefix}-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


ALL_PEERS = [TaskSpooler, Nq, Huey, Rq]

