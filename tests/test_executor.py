"""Running one command: outcomes, output spools, the process tree."""

import os
import sys

import psutil
import pytest

from conftest import wait_for

from queuectl.executor import Spool, run_command


def is_running(pid):
    """Alive and not a zombie waiting for init to reap it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def spools(tmp_path):
    out, err = Spool(str(tmp_path / ".w.out")), Spool(str(tmp_path / ".w.err"))
    yield out, err
    out.close()
    err.close()


def run(spools, tmp_path, command, attempt=1, **kwargs):
    out, err = spools
    return run_command(
        command,
        stdout=out,
        stderr=err,
        stdout_dest=str(tmp_path / f"{attempt}.out"),
        stderr_dest=str(tmp_path / f"{attempt}.err"),
        **kwargs,
    )


def test_silent_job_leaves_no_log_files(spools, tmp_path):
    result = run(spools, tmp_path, "true")
    assert result.succeeded and result.exit_code == 0 and result.error_message is None
    assert not (tmp_path / "1.out").exists() and not (tmp_path / "1.err").exists()


def test_output_moves_to_the_attempt_files(spools, tmp_path):
    first = run(spools, tmp_path, "echo one; echo uh-oh >&2; exit 4", attempt=1)
    second = run(spools, tmp_path, "echo two", attempt=2)
    assert (first.stdout_tail, first.stderr_tail, first.error_message) == ("one\n", "uh-oh\n", "Exit code 4: uh-oh")
    assert second.stdout_tail == "two\n"
    assert (tmp_path / "1.out").read_text() == "one\n"
    assert (tmp_path / "1.err").read_text() == "uh-oh\n"
    assert (tmp_path / "2.out").read_text() == "two\n"
    assert not (tmp_path / "2.err").exists()


def test_tail_is_bounded_and_undecodable_bytes_are_replaced(spools, tmp_path):
    result = run(spools, tmp_path, "head -c 100000 /dev/zero | tr '\\0' 'a'; printf '\\377\\376end'")
    assert len(result.stdout_tail.encode("utf-8")) <= 4096 + 16
    assert result.stdout_tail.endswith("\ufffd\ufffdend")
    assert os.path.getsize(tmp_path / "1.out") == 100005


def test_late_output_of_a_background_process_goes_to_its_own_attempt(spools, tmp_path):
    run(spools, tmp_path, "(sleep 0.3; echo late >&2) &", attempt=1)
    second = run(spools, tmp_path, "sleep 0.6; echo next", attempt=2)
    assert (second.stdout_tail, second.stderr_tail) == ("next\n", "")
    assert (tmp_path / "1.err").read_text() == "late\n"


def test_output_of_an_escaped_process_is_set_aside(spools, tmp_path):
    # setsid leaves the job's process group: the worker can't see it, but its
    # late output must still not land in the next job's log.
    run(spools, tmp_path, "setsid sh -c 'sleep 0.5; echo escaped' & sleep 0.2", attempt=1)
    wait_for(lambda: os.path.getsize(spools[0].path) > 0, timeout=5, what="escaped output arrives")
    result = run(spools, tmp_path, "echo next", attempt=2)
    assert result.stdout_tail == "next\n"
    assert open(spools[0].path + ".late").read() == "escaped\n"


def test_signal_and_start_failure_are_distinct_outcomes(spools, tmp_path):
    killed = run(spools, tmp_path, "kill -9 $$")
    assert (killed.signal, killed.exit_code, killed.error_message) == (9, None, "Killed by signal 9")
    missing = run(spools, tmp_path, "true", cwd=str(tmp_path / "absent"))
    assert missing.error_message.startswith("Failed to start: No such file or directory")


def test_timeout_kills_the_whole_tree(spools, tmp_path):
    pidfile = tmp_path / "pids"
    result = run(spools, tmp_path, f"sleep 30 & echo $! > {pidfile}; sleep 30; wait", timeout=0.5)
    assert result.timed_out_after == 0.5 and result.error_message == "Timed out after 0.5s"
    background = int(pidfile.read_text())
    # SIGKILL is immediate; reaping the orphan is init's job, so allow it a moment.
    wait_for(lambda: not is_running(background), timeout=5, what="background sleep gone")


def test_tick_can_stop_the_job(spools, tmp_path):
    calls = []

    def tick():
        calls.append(1)
        return "cancelled by test" if len(calls) >= 2 else None

    result = run(spools, tmp_path, "sleep 30", tick=tick, tick_interval=0.05)
    assert result.stopped_because == "cancelled by test"
    assert result.error_message == "Stopped: cancelled by test"


def test_jobs_get_sigpipe_back_at_its_default(spools, tmp_path):
    # Python ignores SIGPIPE in the worker; a job that inherited that would
    # make `yes | head -n 1` spin until its timeout, printing write errors.
    result = run(spools, tmp_path, "yes | head -n 1; grep '^SigIgn' /proc/self/status", timeout=10)
    assert result.succeeded, result.error_message
    assert result.stderr_tail == ""
    first, ignored = result.stdout_tail.splitlines()
    assert first == "y"
    mask = int(ignored.split()[1], 16)
    assert not mask & (1 << (13 - 1)), ignored  # SIGPIPE is signal 13


def test_a_group_left_with_only_zombies_counts_as_not_running():
    # Killed members wait for init to reap them, slowly on some hosts; the
    # worker must not sit out the kill grace for them.
    from queuectl.executor import _group_exists, _group_running

    pid = os.fork()
    if pid == 0:
        os.setsid()
        os._exit(0)
    try:
        wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, what="a zombie group leader")
        assert _group_exists(pid)  # the signal probe alone still finds the group
        assert not _group_running(pid)
    finally:
        os.waitpid(pid, 0)


def test_a_group_with_a_running_member_is_running():
    import subprocess

    from queuectl.executor import _group_exists, _group_running

    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert _group_exists(proc.pid) and _group_running(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert not _group_exists(proc.pid)


THREADS_OUTLIVE_MAIN = """
import ctypes, sys, threading, time

def work():
    while True:
        time.sleep(0.05)

threading.Thread(target=work).start()
time.sleep(0.05)
ctypes.CDLL(None).pthread_exit(None)  # the main thread ends; the process shows as a zombie
"""


def test_failed_run_stops_a_background_process_whose_main_thread_ended(spools, tmp_path):
    script = tmp_path / "threads.py"
    script.write_text(THREADS_OUTLIVE_MAIN)
    pid_file = tmp_path / "bg.pid"
    result = run(spools, tmp_path, f"{sys.executable} {script} & echo $! > {pid_file}; sleep 0.5; exit 1")
    assert result.exit_code == 1
    pid = int(pid_file.read_text())

    def still_running():
        try:
            proc = psutil.Process(pid)
            return proc.status() != psutil.STATUS_ZOMBIE or proc.num_threads() > 1
        except psutil.NoSuchProcess:
            return False

    try:
        wait_for(lambda: not still_running(), timeout=5, what="the background process's threads to be killed")
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def test_a_failed_start_names_its_directory_without_control_characters(spools, tmp_path):
    result = run(spools, tmp_path, "true", cwd=str(tmp_path / "gone\x1b]0;x\x07"))
    assert result.error_message.startswith("Failed to start: ")
    assert "gone^[]0;x^G" in result.error_message and "\x1b" not in result.error_message
