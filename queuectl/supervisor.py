"""Detached workers: start them, find them, stop them safely.

``workers.pid`` lists the workers that ``worker start`` launched, each as
its PID and process start time. PIDs get reused, so before signalling
anything we ask psutil whether the process with that PID started at that
time and is a queuectl worker; anything else is a stale entry and is only
removed from the file, never signalled. Workers started in the foreground
(``worker run``) are found through the worker registry in the database.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import List

import psutil

from queuectl.config import load_config, write_atomically
from queuectl.errors import WorkerError
from queuectl.executor import JOB_ENV_NAMES
from queuectl.worker import worker_name

logger = logging.getLogger("queuectl.supervisor")

STARTUP_TIMEOUT_SECONDS = 20.0
# Start times are floats derived from boot time and clock ticks; allow a
# little slack for rounding, far less than any plausible PID reuse.
START_TIME_TOLERANCE = 0.5


@dataclass
class StopReport:
    stopping: List[int] = field(default_factory=list)
    stale: List[int] = field(default_factory=list)
    killed: List[int] = field(default_factory=list)
    still_running: List[int] = field(default_factory=list)


# --- workers.pid -----------------------------------------------------------


def read_pidfile(home):
    """Entries of ``workers.pid`` as ``{"pid": int, "create_time": float|None}``."""
    try:
        with open(home.pidfile_path, "rb") as handle:
            # Bytes that aren't UTF-8 are garbage like any other: the parse below drops them.
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise WorkerError(f"cannot read {home.pidfile_path}: {exc.strerror}") from None
    try:
        raw = json.loads(text)
        entries = raw["workers"] if isinstance(raw, dict) else raw
        parsed = [_pidfile_entry(entry) for entry in entries]
    except (ValueError, KeyError, TypeError, RecursionError):
        # An old or hand-written file: bare PIDs, one per line. Without a
        # start time we can't prove identity, so they count as stale.
        parsed = [{"pid": int(tok), "create_time": None} for tok in text.split() if tok.isdigit()]
    # Garbage (negative or absurd PIDs) is dropped: it can only be stale.
    return [entry for entry in parsed if entry is not None and 0 < entry["pid"] < 2**31]


def _pidfile_entry(entry):
    """One entry, or None when it can't name a process we started."""
    if not isinstance(entry, dict) or isinstance(entry.get("pid"), bool) or not isinstance(entry.get("pid"), int):
        return None
    create_time = entry.get("create_time")
    if isinstance(create_time, bool) or not isinstance(create_time, (int, float)) or create_time != create_time:
        create_time = None  # unknown: identity can't be proven, so it is stale
    return {"pid": entry["pid"], "create_time": create_time}


def _write_pidfile(home, entries):
    write_atomically(home.pidfile_path, json.dumps({"workers": entries}, indent=2) + "\n")


def _update_pidfile(home, add=(), remove=(), drop_stale=False):
    """Change workers.pid under the home's lock, so concurrent starts and stops all count."""
    with home.locked():
        _change_pidfile(home, add, remove, drop_stale)


def _change_pidfile(home, add=(), remove=(), drop_stale=False):
    """Change workers.pid; the caller holds the home's lock."""
    entries = [e for e in read_pidfile(home) if e["pid"] not in set(remove)]
    if drop_stale:
        entries = [e for e in entries if identify_worker(e["pid"], e["create_time"])]
    entries.extend(add)
    _write_pidfile(home, entries)


# --- identity ----------------------------------------------------------------


def identify_worker(pid, create_time, database=None):
    """The psutil.Process if ``pid`` is the queuectl worker we recorded, else None.

    With ``database`` (a file path) the worker must also hold that very file
    open: a copy of a queue home lists the original's workers, and they must
    not be taken for the copy's.
    """
    try:
        proc = psutil.Process(pid)
        if create_time is None or abs(proc.create_time() - create_time) > START_TIME_TOLERANCE:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        cmdline = proc.cmdline()
        joined = " ".join(cmdline)
        if "queuectl" not in joined or "worker" not in joined:
            return None
        if database is not None and not _holds_open(proc, database):
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return proc


def _holds_open(proc, path):
    try:
        wanted = os.stat(path)
    except OSError:
        return False
    for handle in proc.open_files():
        try:
            st = os.stat(handle.path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (wanted.st_dev, wanted.st_ino):
            return True
    return False


def _database_of(storage):
    """The file behind a file-based backend, for identity checks (None otherwise)."""
    return getattr(storage, "path", None)


def _candidates(home, storage):
    """Every recorded worker of this queue on this host, as (pid, create_time) pairs.

    workers.pid and the registry may disagree about a PID (a stale file entry
    for a PID that a registered worker now has); each record is checked on
    its own, so a wrong one can't hide the right one.
    """
    found = {(e["pid"], e["create_time"]) for e in read_pidfile(home)}
    here = socket.gethostname()
    for row in storage.list_workers():
        if row["hostname"] == here:
            found.add((row["pid"], row["process_started_at"]))
    return sorted(found, key=lambda pair: (pair[0], pair[1] is None, pair[1] or 0))


def live_workers(home, storage):
    """Live workers of this queue: local ones verified, remote ones as registered."""
    here = socket.gethostname()
    database = _database_of(storage)
    live = []
    for row in storage.list_workers():
        if row["hostname"] != here or identify_worker(row["pid"], row["process_started_at"], database):
            live.append(row)
    return live


# --- start -------------------------------------------------------------------


def start_workers(home, storage, count):
    """Launch ``count`` detached workers; return their PIDs once each is registered."""
    home.ensure()
    load_config(home)  # a broken config file is refused here, not in every worker's log
    read_pidfile(home)  # and so is a workers.pid we could not record them in
    # A start holds the home's lock until its workers are recorded, so a
    # `worker stop` meanwhile waits for them and stops them too.
    with home.locked():
        procs = [_spawn(home) for _ in range(count)]
        try:
            started = _wait_registered(home, storage, procs)
            # The start times the workers registered: a worker that has exited since
            # is then a stale entry like any other, not an error here.
            entries = [{"pid": p.pid, "create_time": started[p.pid]} for p in procs]
            _change_pidfile(home, add=entries, drop_stale=True)
        except BaseException:
            # Workers that `worker stop` could not find must not outlive a failed start.
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            raise
    for proc in procs:
        proc.returncode = 0  # detached on purpose: don't warn that it still runs
    return [p.pid for p in procs]


def _spawn(home):
    argv = [sys.executable, "-m", "queuectl", "--home", home.path, "worker", "run", "--log-file", home.worker_log_path]
    # Started from inside a job, a worker is not part of that job: with the
    # job's claim marker it would be stopped along with the job's processes.
    env = {name: value for name, value in os.environ.items() if name not in JOB_ENV_NAMES}
    with open(home.worker_log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            # A session of its own: closing the terminal (SIGHUP) or Ctrl+C
            # there doesn't reach it; it outlives the shell that started it.
            start_new_session=True,
            close_fds=True,
        )


def _wait_registered(home, storage, procs):
    """Wait until each worker has registered; returns {pid: process start time}."""
    pending = {worker_name(p.pid): p for p in procs}
    started = {}
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while pending:
        registered = {row["worker_id"]: row for row in storage.list_workers()}
        for name in list(pending):
            if name in registered:
                started[pending.pop(name).pid] = registered[name]["process_started_at"]
            elif pending[name].poll() is not None:
                raise WorkerError(
                    f"worker exited during start-up (code {pending[name].returncode}); "
                    f"see {home.worker_log_path}: {_last_log_line(home)}"
                )
        if pending and time.monotonic() > deadline:
            raise WorkerError(f"workers did not start within {STARTUP_TIMEOUT_SECONDS:.0f}s; see {home.worker_log_path}")
        if pending:
            time.sleep(0.05)
    return started


def _last_log_line(home):
    try:
        with open(home.worker_log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 2048))
            lines = handle.read().decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else ""
    except OSError:
        return ""


# --- stop --------------------------------------------------------------------


def stop_workers(home, storage, timeout, force):
    """Gracefully stop every live worker of this queue on this host."""
    report = StopReport()
    live = {}
    unproven = set()
    database = _database_of(storage)
    if os.path.isdir(home.path):
        # Waits for a `worker start` in progress: its workers count too.
        with home.locked():
            candidates = _candidates(home, storage)
    else:  # QUEUECTL_DB elsewhere and no home: nothing to wait for, nothing to create
        candidates = _candidates(home, storage)
    for pid, create_time in candidates:
        proc = identify_worker(pid, create_time, database)
        if proc is None:
            unproven.add(pid)
        else:
            live[pid] = proc
    report.stale = sorted(unproven - set(live))
    _forget(home, storage, report.stale)

    for pid, proc in live.items():
        try:
            proc.send_signal(signal.SIGTERM)
            report.stopping.append(pid)
        except psutil.NoSuchProcess:
            pass
    alive = _wait_exited([live[pid] for pid in report.stopping], timeout)

    for proc in alive:
        if force:
            _kill_worker_tree(proc)
            report.killed.append(proc.pid)
        else:
            report.still_running.append(proc.pid)
    _forget(home, storage, [pid for pid in report.stopping if pid not in report.still_running])
    return report


def _wait_exited(procs, timeout):
    """Wait up to ``timeout`` for ``procs`` to exit; returns those still running.

    An exited worker stays a zombie until its parent reaps it, and a parent
    may never do so (PID 1 in many containers, a script that started `worker
    run`), so a zombie counts as exited; psutil.wait_procs would wait on it.
    """
    deadline = time.monotonic() + timeout
    running = list(procs)
    while True:
        running = [proc for proc in running if _is_running(proc)]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def _is_running(proc):
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_worker_tree(proc):
    """SIGKILL a worker, then its jobs' process groups; leases recover the jobs.

    The worker goes first: killed the other way round, it could still record
    its job as failed by signal 9, as if the job itself had crashed.
    """
    try:
        children = proc.children(recursive=False)
        proc.kill()
    except psutil.NoSuchProcess:
        return
    _wait_exited([proc], 5)
    for child in children:
        try:
            # Each job leads its own process group, which outlives the worker.
            os.killpg(child.pid, signal.SIGKILL)
        except OSError:
            pass


def _forget(home, storage, pids):
    """Drop these PIDs from workers.pid and the registry."""
    if not pids:
        return
    _update_pidfile(home, remove=pids)
    here = socket.gethostname()
    for row in storage.list_workers():
        if row["hostname"] == here and row["pid"] in pids:
            storage.unregister_worker(row["worker_id"])
