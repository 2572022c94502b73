"""Small helpers shared by the benchmark modules: statistics, clocks, temp
dirs, FIFOs for start-of-job detection, atomic writes, process CPU time."""

import contextlib
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

# CLOCK_MONOTONIC is one clock for every process on Linux, so a timestamp
# taken here can be compared with one taken in a child process.
now = time.monotonic

SH_TRUE = ["/bin/sh", "-c", "true"]

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values, p):
    """Linear-interpolated percentile (p in 0..100) of a list of numbers."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    k = (len(values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def rotate(items, k):
    """items rotated by k, so each repeat starts with a different system."""
    if not items:
        return []
    k %= len(items)
    return items[k:] + items[:k]


@contextlib.contextmanager
def tempdir(prefix):
    path = tempfile.mkdtemp(prefix=f"qbench-{prefix}-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def atomic_write(path, data, mode="w"):
    """Write a file so a reader sees the old content or the new, never half."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, mode) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class StartProbe:
    """Detects the moment a job's shell command starts.

    The job's command is ``echo x > FIFO`` (echo is a shell builtin, so the
    job forks nothing beyond its /bin/sh). We hold the read end open without
    blocking; on Linux a FIFO read end that has never seen a writer does not
    report hang-up, so poll() wakes exactly when the job writes its byte.
    A thread sits in poll() from before the job is enqueued, so a job that
    starts before the enqueue call has even returned is timed correctly
    (its latency comes out negative).
    """

    def __init__(self, directory, name):
        self.path = os.path.join(directory, f"{name}.fifo")
        os.mkfifo(self.path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self.stamp = None
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    @property
    def command(self):
        return f"echo x > {self.path}"

    def _watch(self):
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        for fd, _ in poller.poll():
            if fd == self.fd:
                self.stamp = now()
                return

    def wait(self, timeout):
        """Monotonic time the job wrote to the FIFO, or None on timeout."""
        self._thread.join(timeout)
        return self.stamp

    def close(self):
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        for fd in (self.fd, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        # Unlinking the FIFO means a job that comes late writes a plain
        # file instead of blocking forever on a FIFO with no reader.
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class Gate:
    """A FIFO that `cat GATE` blocks on until `release()`; used to hold a
    queue's workers while its jobs are enqueued, then let them all go."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "gate.fifo")
        os.mkfifo(self.path)

    @property
    def argv(self):
        return ["/bin/cat", self.path]

    def release(self):
        """Let every blocked reader go; returns the monotonic release time."""
        fd = os.open(self.path, os.O_WRONLY)  # blocks until a reader is there
        stamp = now()
        os.close(fd)
        return stamp

    def release_nowait(self):
        """Release readers if there are any (cleanup after a failure)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return
        os.close(fd)


def cpu_seconds_precise(pids):
    """CPU seconds the given processes (all their threads, not their
    children) have run, from /proc/PID/task/*/schedstat in nanoseconds:
    finer than the 10 ms ticks of cpu_times, which matters for idle
    processes. Processes that are gone count 0."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                    total += int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total / 1e9


def tree_pids(pid):
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid] + [p.pid for p in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_process(proc, sig=signal.SIGTERM, timeout=10):
    """Signal a Popen we started and wait; kill it if it does not go."""
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if _leads_group(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        return proc.wait(5)


def _leads_group(pid):
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def wait_until(predicate, timeout, interval=0.02):
    deadline = now() + timeout
    while now() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def machine_info():
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
            info["memory_gib"] = round(kb / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/etc/debian_version") as fh:
            info["debian"] = fh.read().strip()
    except OSError:
        pass
    try:
        import sqlite3

        info["sqlite"] = sqlite3.sqlite_version
    except ImportError:
        pass
    return info


def tool_version(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


def dpkg_version(package):
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def pip_version(dist):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


class CpuSampler:
    """Keeps the latest user+system CPU seconds of some processes (not their
    children), sampled every `interval` seconds from a thread, so the figure
    survives the processes exiting. psutil's cpu_times of a live process;
    the last sample before exit misses at most `interval` of work."""

    def __init__(self, pids, interval=0.05, with_children=False):
        """with_children: also count the direct children of `pids` (found
        anew on every tick), e.g. the worker processes a consumer forks;
        never grandchildren, which are the jobs' own processes."""
        import psutil

        self._procs = {}
        self._roots = []
        for pid in pids:
            try:
                self._procs[pid] = psutil.Process(pid)
                self._roots.append(self._procs[pid])
            except psutil.NoSuchProcess:
                pass
        self.seconds = {pid: 0.0 for pid in self._procs}
        self._with_children = with_children
        self._interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while True:
            if self._with_children:
                for root in self._roots:
                    try:
                        for child in root.children():
                            if child.pid not in self._procs:
                                self._procs[child.pid] = child
                                self.seconds[child.pid] = 0.0
                    except psutil.NoSuchProcess:
                        pass
            for pid, proc in list(self._procs.items()):
                try:
                    t = proc.cpu_times()
                    self.seconds[pid] = max(self.seconds[pid], t.user + t.system)
                except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                    pass
            if self._done.wait(self._interval):
                return

    def stop(self):
        self._done.set()
        self._thread.join(5)
        return sum(self.seconds.values())


def cpu_busy_fraction(seconds):
    """Share of all cores busy (any process) over `seconds`, from /proc/stat."""

    def sample():
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    total = total1 - total0
    return 0.0 if total <= 0 else 1.0 - (idle1 - idle0) / total


def wait_for_quiet(max_seconds, threshold=0.15, window=3.0):
    """Wait (at most max_seconds) until the machine is nearly idle: less than
    `threshold` of its CPU busy over `window` seconds. Returns the last busy
    share seen."""
    deadline = now() + max_seconds
    busy = cpu_busy_fraction(window)
    while busy >= threshold and now() < deadline:
        log(f"machine busy ({busy * 100:.0f} % of CPU used by others); waiting for it to quieten")
        busy = cpu_busy_fraction(window)
    return busy
