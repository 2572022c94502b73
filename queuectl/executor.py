"""Run one shell command: the job's process tree, its time limit, its output.

No database here. The command runs under the platform shell with stdin from
the null device, in its own session (so it leads its own process group: a
Ctrl+C typed at the worker's terminal reaches the worker, not the job, and a
timeout can kill the job's whole tree at once). stdout and stderr go straight
to files, never to pipes held in our memory: a job that prints gigabytes
costs disk, not worker RAM, and a background grandchild that keeps the
output open can't keep us waiting, because we wait for the shell process
itself, not for end-of-file.

Each stream is written to a worker-owned *spool* file. After the run, a
spool that received output is renamed to the attempt's log file and a fresh
spool takes its place; an empty one is simply reused. Most jobs of a busy
queue print nothing, and creating two files per job was the largest cost
of running one (file creation waits on the file system journal). A
grandchild still writing after the shell exited keeps writing to the renamed
file, so its output stays with its own attempt.

Every process of a run carries the run's claim token in its environment
(``QUEUECTL_CLAIM``). A worker killed with SIGKILL can't take its job's tree
down with it; whoever reaps the lost claim later finds what is left of the
run by that token and stops it before the job may run again.
"""

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from queuectl.jobs import OUTPUT_TAIL_BYTES, format_seconds, printable, summarize_failure

# After SIGTERM, how long the tree gets to exit before SIGKILL.
KILL_GRACE_SECONDS = 2.0
# Less free space than this where output goes counts as a full disk.
LOW_SPACE_BYTES = 64 * 1024
# The environment variable that ties a process to the claim it runs for.
CLAIM_ENV = "QUEUECTL_CLAIM"
# What else a job finds in its environment: its id and attempt number.
JOB_ID_ENV = "QUEUECTL_JOB_ID"
ATTEMPT_ENV = "QUEUECTL_ATTEMPT"
JOB_ENV_NAMES = (CLAIM_ENV, JOB_ID_ENV, ATTEMPT_ENV)
# How long stop_claimed keeps looking for stragglers after SIGKILL.
KILL_GIVE_UP_SECONDS = 5.0
IS_WINDOWS = sys.platform == "win32"


@dataclass
class RunResult:
    """How a run ended. Exactly one of the outcomes describes it."""

    exit_code: Optional[int] = None  # the shell exited with this code
    signal: Optional[int] = None  # the shell was killed by this signal
    timed_out_after: Optional[float] = None  # we killed it at its time limit
    stopped_because: Optional[str] = None  # we killed it on request (why)
    start_error: Optional[str] = None  # it never started
    stdout_tail: str = ""
    stderr_tail: str = ""
    duration: float = 0.0
    output_disk_full: bool = False  # the job's output (and so its error text) may be cut short

    @property
    def succeeded(self):
        return self.exit_code == 0 and not (self.timed_out_after or self.stopped_because)

    @property
    def error_message(self):
        """The one-line reason a failed run failed (None when it succeeded)."""
        if self.start_error is not None:
            return f"Failed to start: {printable(self.start_error)}"
        if self.timed_out_after is not None:
            return f"Timed out after {format_seconds(self.timed_out_after)}"
        if self.stopped_because is not None:
            return f"Stopped: {self.stopped_because}"
        if self.signal is not None:
            return f"Killed by signal {self.signal}"
        if self.exit_code == 0:
            return None
        message = summarize_failure(self.exit_code, self.stderr_tail)
        if self.output_disk_full:
            # Its stderr went to the same full disk: say why it may be silent.
            message += " (No space left on device for the job's output)"
        return message


# A tick callback: called every tick while the command runs, and whenever one
# of the extra file descriptors becomes readable. Returning a string stops the
# command (its whole tree), with that string as the reason.
Tick = Callable[[], Optional[str]]


def spawn(argv, *, cwd, env, stdout, stderr):
    """Start ``argv`` in a session of its own, stdin from the null device.

    posix_spawn where the platform has it (vfork-fast, and the environment is
    converted in C); subprocess.Popen elsewhere. Both return an object with
    Popen's ``pid``, ``returncode``, ``poll()`` and ``wait()``.
    """
    if _SpawnedChild.available:
        try:
            return _SpawnedChild(argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
        except NotImplementedError:
            _SpawnedChild.available = False
    return subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
        start_new_session=not IS_WINDOWS,
    )


# Python ignores these in itself; a job must get them back at their defaults
# (as Popen's restore_signals does), or `yes | head -1` never ends.
_RESTORED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)


class _SpawnedChild:
    """A child started with os.posix_spawn, with the slice of Popen we use."""

    available = hasattr(os, "posix_spawn") and hasattr(os, "POSIX_SPAWN_DUP2") and not IS_WINDOWS
    _devnull = None
    _home_fd = None

    def __init__(self, argv, *, cwd, env, stdout, stderr):
        cls = type(self)
        if cls._devnull is None:
            cls._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            # Where to come back to after starting a job elsewhere.
            cls._home_fd = os.open(".", os.O_RDONLY | os.O_CLOEXEC)
        actions = [
            (os.POSIX_SPAWN_DUP2, cls._devnull, 0),
            (os.POSIX_SPAWN_DUP2, stdout, 1),
            (os.POSIX_SPAWN_DUP2, stderr, 2),
        ]
        if env is None:
            env = os.environ
        # posix_spawn has no portable "cwd": change ours around the call. The
        # worker is single-threaded, so nothing else sees the detour.
        if cwd is not None:
            os.chdir(cwd)
        try:
            self.pid = os.posix_spawn(
                argv[0], argv, env, file_actions=actions, setsid=True, setsigdef=_RESTORED_SIGNALS
            )
        finally:
            if cwd is not None:
                os.fchdir(cls._home_fd)
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self):
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


_base_environment = None


def job_environment(extra):
    """The worker's environment plus ``extra``, ready for Popen.

    Copying ``os.environ`` re-encodes every variable through Python code on
    each access; profiled, that was the largest cost of starting a job. The
    worker's environment doesn't change, so its bytes form is built once.
    """
    global _base_environment
    if IS_WINDOWS:
        return dict(os.environ, **extra)
    if _base_environment is None:
        _base_environment = dict(os.environb)
    merged = _base_environment.copy()
    encoding, errors = _FS_ENCODING
    for key, value in extra.items():
        merged[key.encode(encoding, errors)] = value.encode(encoding, errors)  # os.fsencode, inlined
    return merged


_FS_ENCODING = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())


def shell_argv(command):
    if IS_WINDOWS:
        return ["cmd", "/c", command]
    return ["/bin/sh", "-c", command]


class Spool:
    """A reusable output file for one stream of one worker."""

    def __init__(self, path):
        self.path = path
        self._fd = None
        # A spool by this name may be left by a dead worker whose PID we now
        # have, and its job's orphans may still write to it: start afresh.
        _remove_file(path)
        self._open()

    def _open(self):
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)

    def fileno(self):
        return self._fd

    def prepare(self):
        """Make sure the next run starts on an empty file."""
        if os.fstat(self._fd).st_size:
            # Late output of an earlier job's background process: set it aside
            # rather than mix it into the next job's log.
            self._rotate(self.path + ".late")

    def collect(self, destination, limit=OUTPUT_TAIL_BYTES, still_writing=False):
        """Move what the run wrote to ``destination``; return its last ``limit`` bytes as text.

        ``still_writing``: some of the run's processes outlived it, so the
        spool moves to ``destination`` even while empty, taking their late
        output with it instead of leaving it for the next job.
        """
        size = os.fstat(self._fd).st_size
        if not size:
            if still_writing:
                self._rotate(destination)
            return ""
        start = max(0, size - limit)
        tail = os.pread(self._fd, size - start, start)
        self._rotate(destination)
        return tail.decode("utf-8", errors="replace")

    def _rotate(self, destination):
        try:
            os.replace(self.path, destination)
        except FileNotFoundError:
            # The logs directory (or this spool) was removed under us. What
            # the run wrote is still in our open file: recreate the directory
            # and copy it, rather than lose it or fail the worker.
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            self._copy_to(destination)
        os.close(self._fd)
        self._open()

    def _copy_to(self, destination):
        with open(destination, "wb") as target:
            offset = 0
            while True:
                data = os.pread(self._fd, 1 << 20, offset)
                if not data:
                    break
                target.write(data)
                offset += len(data)

    def close(self, remove=True):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            if remove:
                _remove_file(self.path)


def _remove_file(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def run_command(
    command,
    *,
    stdout: Spool,
    stderr: Spool,
    stdout_dest,
    stderr_dest,
    cwd=None,
    env=None,
    timeout=None,
    tick: Optional[Tick] = None,
    tick_interval=1.0,
    wake_fds: Sequence[int] = (),
    claim=None,
    on_start: Optional[Callable[[], None]] = None,
    clock=time.monotonic,
):
    """Run ``command`` to its end and describe how it ended.

    ``claim`` (a claim token) marks every process of the run, for ``stop_claimed``.
    ``on_start`` is called once the command has started: work the caller can
    do while it runs rather than before.
    """
    started = clock()
    stdout.prepare()
    stderr.prepare()
    # A stream that prints nothing gets no file, so a file already by that
    # name is someone else's: a queue that used this logs directory before
    # (attempt numbers start again in a new database) must not lend us its output.
    for destination in (stdout_dest, stderr_dest):
        _remove_file(destination)
    try:
        full_env = None
        if env or claim:
            full_env = job_environment(dict(env or {}, **({CLAIM_ENV: claim} if claim else {})))
        proc = spawn(shell_argv(command), cwd=cwd, env=full_env, stdout=stdout.fileno(), stderr=stderr.fileno())
    except OSError as exc:
        detail = exc.strerror or str(exc)
        if exc.filename:
            detail = f"{detail}: {exc.filename}"
        return RunResult(start_error=detail, duration=clock() - started)
    except ValueError as exc:  # a NUL byte, or text the file system encoding can't hold
        return RunResult(start_error=str(exc), duration=clock() - started)

    result = RunResult()
    waiter = _ChildWaiter(proc)
    try:
        if on_start is not None:
            on_start()
        deadline = started + timeout if timeout else None
        next_tick = started + tick_interval
        while True:
            now = clock()
            until = next_tick if tick else None
            if deadline is not None:
                until = deadline if until is None else min(until, deadline)
            woke_by_fd = waiter.wait(None if until is None else max(0.0, until - now), wake_fds)
            if proc.returncode is not None:
                break
            now = clock()
            if deadline is not None and now >= deadline:
                result.timed_out_after = timeout
                _kill_tree(proc, waiter)
                break
            if tick and (woke_by_fd or now >= next_tick):
                next_tick = now + tick_interval
                reason = tick()
                if reason:
                    result.stopped_because = reason
                    _kill_tree(proc, waiter)
                    break
    except BaseException:
        # Never leave an orphaned job tree behind us, whatever went wrong.
        _kill_tree(proc, waiter)
        raise
    finally:
        waiter.close()

    code = proc.returncode
    if code is not None and code < 0:
        result.signal = -code
    else:
        result.exit_code = code
    result.duration = clock() - started
    leftovers = not IS_WINDOWS and _group_exists(proc.pid) and _group_running(proc.pid)
    if not result.succeeded:
        # A failed attempt leaves nothing running, so its retry can never
        # overlap it: not its group's background processes, and not the ones
        # that left the group (setsid), found by the run's claim marker.
        if not IS_WINDOWS and _group_exists(proc.pid):
            _stop_group(proc.pid)
        if claim:
            stop_claimed([claim])
    result.stdout_tail = stdout.collect(stdout_dest, still_writing=leftovers)
    result.stderr_tail = stderr.collect(stderr_dest, still_writing=leftovers)
    if not result.succeeded:
        result.output_disk_full = _is_low_on_space(stdout_dest)
    return result


def _is_low_on_space(path):
    try:
        info = os.statvfs(os.path.dirname(path))
    except (OSError, AttributeError):  # no statvfs on Windows
        return False
    return info.f_bavail * info.f_frsize < LOW_SPACE_BYTES


class _ChildWaiter:
    """Wait for the child to exit, or for a timeout, or for a wake fd.

    Linux gives us a pidfd, which poll() reports readable the instant the
    child exits, so a 2 ms job costs 2 ms. Elsewhere we poll the child's
    status in short slices.
    """

    def __init__(self, proc):
        self._proc = proc
        self._pidfd = None
        if hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(proc.pid)
            except OSError:
                self._pidfd = None

    def wait(self, timeout, wake_fds=()):
        """Returns True when a wake fd (not the child) ended the wait."""
        if self._proc.poll() is not None:
            return False
        if self._pidfd is None:
            return self._wait_without_pidfd(timeout, wake_fds)
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        for fd in wake_fds:
            poller.register(fd, select.POLLIN)
        events = poller.poll(None if timeout is None else int(timeout * 1000) + 1)
        self._proc.poll()
        return any(fd != self._pidfd for fd, _ in events)

    def _wait_without_pidfd(self, timeout, wake_fds):
        slice_seconds = 0.05 if timeout is None else min(0.05, timeout)
        end = None if timeout is None else time.monotonic() + timeout
        while self._proc.poll() is None:
            if wake_fds and not IS_WINDOWS:
                ready, _, _ = select.select(list(wake_fds), [], [], slice_seconds)
                if ready:
                    return True
            else:
                time.sleep(slice_seconds)
            if end is not None and time.monotonic() >= end:
                break
        return False

    def close(self):
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def _kill_tree(proc, waiter):
    """SIGTERM the job's process group, give it a grace period, then SIGKILL it."""
    if IS_WINDOWS:
        proc.kill()
        proc.wait()
        return
    # Descendants that left the group (setsid, sudo with use_pty) and may
    # have cleared the claim marker too (env -i) are still in the tree now.
    escaped = _escaped_descendants(proc.pid)
    _signal_group(proc.pid, signal.SIGTERM)
    _signal_each(escaped, signal.SIGTERM)
    end = time.monotonic() + KILL_GRACE_SECONDS
    while proc.poll() is None and time.monotonic() < end:
        waiter.wait(end - time.monotonic())
    # Stragglers that ignored SIGTERM or outlived the shell go now.
    _signal_group(proc.pid, signal.SIGKILL)
    _signal_each(escaped, signal.SIGKILL)
    proc.wait()


def _escaped_descendants(pgid):
    """Live descendants of the job's shell that are outside its process group."""
    import psutil

    try:
        descendants = psutil.Process(pgid).children(recursive=True)
    except psutil.Error:
        return []
    escaped = []
    for child in descendants:
        try:
            if os.getpgid(child.pid) != pgid:
                escaped.append(child)
        except OSError:
            continue
    return escaped


def _signal_each(procs, signum):
    import psutil

    for child in procs:
        try:
            child.send_signal(signum)  # psutil checks that the PID was not reused
        except psutil.Error:  # gone meanwhile, or not ours to signal
            pass


def _stop_group(pgid):
    """Stop what is left of a group whose leader already exited: TERM, grace, KILL.

    The group is always signalled, KILL included: a member the grace wait
    takes for dead may still have threads running.
    """
    _signal_group(pgid, signal.SIGTERM)
    end = time.monotonic() + KILL_GRACE_SECONDS
    while _group_running(pgid) and time.monotonic() < end:
        time.sleep(0.02)
    _signal_group(pgid, signal.SIGKILL)


def _group_exists(pgid):
    """Whether the job's group has any member left (a signal-0 probe).

    Cheap, and the answer for the common case: nothing left. But it counts
    zombies too, dead members that init has not reaped yet.
    """
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _group_running(pgid):
    """Whether a member of the group still runs code.

    Zombies don't, and on some hosts init takes seconds to reap them: waiting
    the kill grace out for them would slow every timeout and cancel. A zombie
    whose other threads still run (its main thread called pthread_exit) does.
    """
    import psutil

    for pid in psutil.pids():
        try:
            if os.getpgid(pid) != pgid:
                continue
            member = psutil.Process(pid)
            if member.status() != psutil.STATUS_ZOMBIE or member.num_threads() > 1:
                return True
        except (OSError, psutil.Error):
            continue  # gone meanwhile, or not ours to look at
    return False


def _signal_group(pgid, signum):
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def stop_claimed(tokens, grace=KILL_GRACE_SECONDS):
    """Stop every process still running for one of these claims, on this host.

    The processes are found by their ``CLAIM_ENV`` marker, so this reaches
    the orphaned tree of a worker that died, wherever it was reparented.
    SIGTERM first; SIGKILL after ``grace``. The scan repeats until nothing
    is left, catching children forked while we were signalling. Returns the
    tokens whose claims still had processes.
    """
    import psutil

    wanted = set(tokens)
    found = set()
    if not wanted:
        return found
    kill_at = time.monotonic() + grace
    give_up_at = kill_at + KILL_GIVE_UP_SECONDS
    while time.monotonic() < give_up_at:
        procs = _claimed_processes(psutil, wanted)
        if not procs:
            break
        found.update(procs.values())
        signum = signal.SIGTERM if time.monotonic() < kill_at else getattr(signal, "SIGKILL", signal.SIGTERM)
        for proc in procs:
            try:
                proc.send_signal(signum)
            except psutil.Error:
                pass
        psutil.wait_procs(list(procs), timeout=0.1)
    return found


def _claimed_processes(psutil, tokens):
    """{process: token} for live processes whose environment names one of ``tokens``."""
    me = os.getpid()
    found = {}
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            # A zombie's environment reads as empty: it can no longer run.
            token = proc.environ().get(CLAIM_ENV)
        except psutil.Error:
            continue
        if token in tokens:
            found[proc] = token
    return found

