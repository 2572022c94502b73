"""CLI output shapes and bad input: exit codes, exact lines, stderr, nothing changed."""

import json
import os
import re
import sqlite3
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from queuectl.cli import cli
from queuectl.jobs import AttemptResult
from queuectl.specs import parse_job_spec
from queuectl.storage import open_storage


@pytest.fixture
def run(home, monkeypatch):
    monkeypatch.delenv("QUEUECTL_DB", raising=False)
    monkeypatch.chdir(home.path)

    def invoke(*args, input=None):
        result = CliRunner().invoke(cli, ["--home", home.path, *args], input=input, catch_exceptions=False)
        return result

    return invoke


@pytest.fixture
def empty_queue(home):
    """A home holding a queue with no jobs yet (reads refuse a home without one)."""
    open_storage(home).close()
    return home


def one_error_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    return lines[0]


def job_ids(home):
    if not os.path.exists(home.db_path):
        return []
    with open_storage(home) as store:
        return [job.id for job in store.list_jobs()]


def mask_times(text):
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "<time>", text)


def to_dlq(home, job_id):
    """Drive a job into the DLQ through storage, without waiting for a worker."""
    import time

    with open_storage(home) as store:
        job = store.claim("worker-test", time.time() + 1, 30)
        assert job.id == job_id
        store.bury(job, AttemptResult(False, 1, "Exit code 1: boom"), time.time() + 1)


class TestEnqueue:
    def test_one_job(self, run, home):
        result = run("enqueue", '{"id": "hello-world", "command": "echo Hello from QueueCTL"}')
        assert result.exit_code == 0
        assert result.stdout == "✓ Job hello-world enqueued successfully\n"
        assert job_ids(home) == ["hello-world"]

    def test_file_and_stdin(self, run, home, tmp_path):
        path = tmp_path / "jobs.jsonl"
        path.write_text('{"id": "a", "command": "true"}\n{"id": "b", "command": "true"}\n')
        assert run("enqueue", "-f", str(path)).stdout.splitlines() == [
            "✓ Job a enqueued successfully",
            "✓ Job b enqueued successfully",
        ]
        assert run("enqueue", "-f", "-", input='[{"id": "c", "command": "true"}]').exit_code == 0
        assert job_ids(home) == ["a", "b", "c"]

    def test_big_batch_prints_a_summary(self, run, home):
        jobs = [{"command": "true"} for _ in range(50)]
        result = run("enqueue", json.dumps(jobs))
        assert result.stdout == "✓ 50 jobs enqueued successfully\n"
        assert len(job_ids(home)) == 50

    def test_cwd_defaults_to_the_enqueuers_directory(self, run, home):
        run("enqueue", '{"id": "a", "command": "pwd"}')
        with open_storage(home) as store:
            assert store.get("a").cwd == os.getcwd()

    @pytest.mark.parametrize(
        "payload, message",
        [
            ('{"id": "a", "command": ', "invalid JSON"),
            ('{"id": "a"}', "field 'command' is required"),
            ('{"id": "a", "command": "x", "max_retries": "3"}', "field 'max_retries' must be an integer"),
            ('{"id": "a", "command": "x", "priority": 1.5}', "field 'priority' must be an integer"),
            ('{"id": "a", "command": "x", "max_retries": -2}', "field 'max_retries' must be >= 0"),
            ('{"id": "a", "command": "x", "timeout": -1}', "field 'timeout' must be a non-negative number"),
            ('{"id": "a", "command": ""}', "field 'command' must not be empty"),
            ('[{"id": "good", "command": "x"}, {"id": "bad", "command": 3}]', "job 2: field 'command' must be a string"),
            ('"echo hi"', "a job must be a JSON object"),
            ('{"id": "a", "command": "x", "run_at": "next tuesday"}', "is not an ISO-8601 time"),
        ],
    )
    def test_bad_jobs_change_nothing(self, run, home, payload, message):
        run("enqueue", '{"id": "existing", "command": "true"}')
        result = run("enqueue", payload)
        assert result.exit_code == 2
        assert message in one_error_line(result)
        assert result.stdout == ""
        assert job_ids(home) == ["existing"]

    def test_duplicate_id_is_a_queue_error(self, run, home):
        run("enqueue", '{"id": "a", "command": "true"}')
        result = run("enqueue", '[{"id": "b", "command": "true"}, {"id": "a", "command": "true"}]')
        assert result.exit_code == 1
        assert one_error_line(result) == "Error: job 'a' already exists"
        assert job_ids(home) == ["a"]

    def test_needs_exactly_one_source(self, run):
        result = run("enqueue")
        assert result.exit_code == 2
        assert "give a job as JSON or a file with -f" in one_error_line(result)

    def test_missing_file(self, run):
        result = run("enqueue", "-f", "/nonexistent/jobs.json")
        assert result.exit_code == 2
        assert "No such file or directory" in one_error_line(result)

    def test_file_that_is_not_utf8(self, run, home, tmp_path):
        path = tmp_path / "latin1.json"
        path.write_bytes('{"id": "caf\u00e9", "command": "true"}'.encode("latin-1"))
        result = run("enqueue", "-f", str(path))
        assert result.exit_code == 2
        assert "is not UTF-8 text" in one_error_line(result)
        assert job_ids(home) == []

    def test_home_that_cannot_be_created(self, tmp_path, monkeypatch):
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        monkeypatch.delenv("QUEUECTL_DB", raising=False)
        result = CliRunner().invoke(cli, ["--home", str(blocker / "home"), "enqueue", '{"command": "true"}'])
        assert result.exit_code == 1
        assert "cannot use queue home" in one_error_line(result)

    def test_file_that_is_not_a_queuectl_database(self, run, home):
        with open(home.db_path, "w") as handle:
            handle.write("just text\n" * 50)
        result = run("enqueue", '{"command": "true"}')
        assert result.exit_code == 1
        assert one_error_line(result) == f"Error: {home.db_path} is not a queuectl database"
        assert open(home.db_path).read() == "just text\n" * 50

    @pytest.mark.parametrize(
        "args",
        [
            ["status"], ["list"], ["stats"], ["dlq", "list"], ["show", "x"], ["logs", "x"],
            ["worker", "stop"], ["cancel", "x"], ["retry", "x"], ["dlq", "retry", "x"],
            ["pause"], ["resume"], ["purge", "--state", "completed"],
        ],
    )
    def test_a_home_that_does_not_exist_is_only_made_by_adding_work(self, tmp_path, monkeypatch, args):
        # A mistyped --home must not look like an empty queue (and must not be made).
        monkeypatch.delenv("QUEUECTL_DB", raising=False)
        missing = tmp_path / "typo"
        result = CliRunner().invoke(cli, ["--home", str(missing), *args])
        assert result.exit_code == 1
        assert one_error_line(result) == f"Error: queue home {missing} does not exist (check --home or QUEUECTL_HOME)"
        assert not missing.exists()

    def test_a_home_that_is_a_file_is_named_as_such(self, tmp_path, monkeypatch):
        monkeypatch.delenv("QUEUECTL_DB", raising=False)
        result = CliRunner().invoke(cli, ["--home", "/dev/null", "status"])
        assert result.exit_code == 1
        assert one_error_line(result) == "Error: queue home /dev/null is not a directory (check --home or QUEUECTL_HOME)"

    @pytest.mark.parametrize(
        "args",
        [
            ["status"], ["status", "--json"], ["list"], ["stats"], ["dlq", "list"], ["show", "x"], ["logs", "x"],
            ["cancel", "x"], ["retry", "x"], ["dlq", "retry", "x"], ["pause"], ["resume"],
            ["purge", "--state", "completed"],
        ],
    )
    def test_a_home_without_a_queue_is_refused_and_left_as_it_was(self, run, home, args):
        # `queuectl status` in the wrong directory must not look like an empty
        # queue there, nor leave database files behind.
        result = run(*args)
        assert result.exit_code == 1
        assert one_error_line(result) == (
            f"Error: no queue in {home.path}: queuectl.db does not exist "
            "(enqueue a job to create it, or check --home or QUEUECTL_HOME)"
        )
        assert os.listdir(home.path) == []

    @pytest.mark.parametrize("command", [["show"], ["logs"], ["cancel"], ["retry"], ["dlq", "retry"]])
    def test_an_id_that_is_not_utf8_is_bad_input(self, run, empty_queue, command):
        # What the shell hands over for the bytes b"\xff" on a UTF-8 system.
        result = run(*command, "\udcff")
        assert result.exit_code == 2
        assert "b'\\xff' is not UTF-8, so no job has it" in one_error_line(result)

    def test_worker_stop_in_a_home_without_a_queue(self, run, home):
        result = run("worker", "stop")
        assert (result.exit_code, result.stdout, result.stderr) == (0, "No workers running\n", "")
        assert os.listdir(home.path) == []

    @pytest.mark.parametrize("args", [["config", "list"], ["config", "get", "max_retries"]])
    def test_config_reads_refuse_a_home_that_does_not_exist(self, tmp_path, args):
        missing = tmp_path / "typo"
        result = CliRunner().invoke(cli, ["--home", str(missing), *args])
        assert result.exit_code == 1
        assert one_error_line(result) == f"Error: queue home {missing} does not exist (check --home or QUEUECTL_HOME)"
        assert not missing.exists()

    def test_database_url_with_an_unknown_scheme(self, run, home, monkeypatch):
        monkeypatch.setenv("QUEUECTL_DB", "mysql://db/queue")
        result = run("list")
        assert result.exit_code == 1
        assert "unsupported scheme" in one_error_line(result)
        assert not os.path.exists("mysql:")
        for url, message in [
            ("sqlite:///", "Error: QUEUECTL_DB 'sqlite:///' names no file (sqlite:///PATH)"),
            (":memory:", "Error: QUEUECTL_DB ':memory:' would be a queue that vanishes with each command; name a file"),
            ("typo.db", "Error: database typo.db does not exist (check QUEUECTL_DB)"),
        ]:
            monkeypatch.setenv("QUEUECTL_DB", url)
            result = run("list")
            assert (result.exit_code, one_error_line(result)) == (1, message)
        assert not os.path.exists("typo.db")
        monkeypatch.setenv("QUEUECTL_DB", "SQLITE:///upper.db")  # schemes are case-insensitive
        assert run("enqueue", '{"command": "true"}').exit_code == 0
        assert os.path.exists("upper.db")
        # An absolute path is a path, even with "://" in a directory name.
        os.makedirs(os.path.join(home.path, "odd:", "dir"))
        monkeypatch.setenv("QUEUECTL_DB", os.path.join(home.path, "odd://dir", "q.db"))
        assert run("enqueue", '{"command": "true"}').exit_code == 0
        assert os.path.exists(os.path.join(home.path, "odd:", "dir", "q.db"))

    @pytest.mark.parametrize("args", [["worker", "run", "--burst"], ["worker", "start"]])
    def test_workers_refuse_a_broken_config_file(self, run, home, args):
        run("enqueue", '{"id": "j", "command": "true"}')
        with open(home.config_path, "w") as handle:
            handle.write('{"max_retries": -4}')
        result = run(*args)
        assert result.exit_code == 1
        assert one_error_line(result) == (
            f"Error: {home.config_path}: max_retries must be an integer from 0 to 1000000"
        )
        assert not os.path.exists(home.pidfile_path)
        with open_storage(home) as store:
            assert store.get("j").state.value == "pending"


class TestReadCommands:
    def test_no_escape_sequence_from_a_job_reaches_the_terminal(self, run, home):
        run("enqueue", json.dumps({"id": "esc", "command": "printf '\\033[2J'; exit 1"}))
        with open_storage(home) as store:
            job = store.claim("worker-test", time.time(), 30)
            result = AttemptResult(False, 1, "Exit code 1: \x1b]0;pwned\x07", stdout_tail="\x1b[2Jout\n")
            store.bury(job, result, time.time())
        for args in (["dlq", "list"], ["show", "esc"], ["list"], ["list", "--state", "dlq"]):
            output = run(*args).stdout
            assert "\x1b" not in output and "\x07" not in output, args
        shown = run("show", "esc").stdout
        assert "error_message:    Exit code 1: ^[]0;pwned^G" in shown
        run("enqueue", json.dumps({"id": "c1", "command": "true", "env": {"X": "\u009b2J"}}))
        assert "env:              {\"X\": \"\\x9b2J\"}" in run("show", "c1").stdout
        assert "    ^[[2Jout" in shown

    def test_status_block(self, run):
        run("enqueue", '{"id": "a", "command": "true"}')
        result = run("status")
        assert result.exit_code == 0
        assert result.stdout.splitlines() == [
            "=== QueueCTL Status ===",
            "",
            "Jobs:",
            "State         Count",
            "----------  -------",
            "Pending           1",
            "Processing        0",
            "Completed         0",
            "Failed            0",
            "Dead (DLQ)        0",
            "Cancelled         0",
            "",
            "Scheduled: 0 waiting for a later run time",
            "",
            "Workers: 0 active",
        ]

    def test_status_lists_worker_pids_in_order(self):
        from queuectl.jobs import JobState
        from queuectl.output import render_status, status_json

        counts = {state: 0 for state in JobState}
        workers = [{"pid": 30, "worker_id": "worker-30"}, {"pid": 4, "worker_id": "worker-4"}]
        assert render_status(counts, workers).splitlines()[-1] == "Worker PIDs: [4, 30]"
        assert status_json(counts, workers)["workers"] == {"count": 2, "pids": [4, 30], "ids": ["worker-4", "worker-30"]}

    def test_huge_row_counts_mean_all(self, run):
        run("enqueue", '{"id": "a", "command": "true"}')
        assert run("list", "--limit", "9" * 30).stdout.count("\na ") == 1
        assert "4611686018427387904" not in run("list", "--help").stdout

    def test_status_json(self, run):
        run("enqueue", '{"id": "a", "command": "true"}')
        data = json.loads(run("status", "--json").stdout)
        assert data["jobs"] == {"pending": 1, "processing": 0, "completed": 0, "failed": 0, "dlq": 0, "cancelled": 0}
        assert (data["scheduled"], data["paused"], data["paused_since"]) == (0, False, None)
        assert data["workers"] == {"count": 0, "pids": [], "ids": []}

    def test_list_table(self, run):
        run("enqueue", '{"id": "hello-world", "command": "echo Hello from QueueCTL"}')
        run("enqueue", '{"id": "long", "command": "echo Starting Job 1 && sleep 3 && echo Done Job 1 and then some more"}')
        lines = mask_times(run("list").stdout).splitlines()
        assert lines[0].split() == ["id", "state", "attempts", "worker_id", "command", "created_at"]
        assert lines[2].split() == ["hello-world", "pending", "0", "echo", "Hello", "from", "QueueCTL", "<time>"]
        assert "echo Starting Job 1 && sleep 3 && ..." in lines[3]

    def test_list_filters_and_json(self, run, home):
        run("enqueue", '[{"id": "a", "command": "true"}, {"id": "b", "command": "true"}, {"id": "c", "command": "true"}]')
        to_dlq(home, "a")
        assert [j["id"] for j in json.loads(run("list", "--state", "pending", "--json").stdout)] == ["b", "c"]
        assert [j["id"] for j in json.loads(run("list", "--state", "dead", "--json").stdout)] == ["a"]
        assert [j["id"] for j in json.loads(run("list", "--limit", "1", "--json").stdout)] == ["a"]
        job = json.loads(run("list", "--json").stdout)[1]
        assert job["state"] == "pending" and job["attempts"] == 0
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", job["created_at"])

    def test_unknown_state(self, run):
        result = run("list", "--state", "finished")
        assert result.exit_code == 2
        assert "unknown state 'finished'" in one_error_line(result)

    def test_empty_list(self, run, empty_queue):
        assert run("list").stdout == "No jobs found\n"
        assert json.loads(run("list", "--json").stdout) == []


class TestDlq:
    def test_list_and_retry(self, run, home):
        run("enqueue", '{"id": "will-fail", "command": "exit 1"}')
        to_dlq(home, "will-fail")
        lines = mask_times(run("dlq", "list").stdout).splitlines()
        assert lines[0].split() == ["id", "state", "attempts", "error_message", "created_at"]
        assert lines[2].split() == ["will-fail", "dlq", "1", "Exit", "code", "1:", "boom", "<time>"]
        assert json.loads(run("dlq", "list", "--json").stdout)[0]["error_message"] == "Exit code 1: boom"
        result = run("dlq", "retry", "will-fail")
        assert result.stdout == "Job will-fail moved from DLQ back to pending queue\n"
        with open_storage(home) as store:
            job = store.get("will-fail")
        assert (job.state.value, job.attempts) == ("pending", 0)
        assert run("dlq", "list").stdout == "DLQ is empty\n"

    def test_retry_unknown_and_not_in_dlq(self, run, empty_queue):
        result = run("dlq", "retry", "ghost")
        assert result.exit_code == 1
        assert one_error_line(result) == "Error: job 'ghost' not found"
        run("enqueue", '{"id": "a", "command": "true"}')
        result = run("dlq", "retry", "a")
        assert result.exit_code == 1
        assert one_error_line(result) == "Error: job 'a' is not in the DLQ (state: pending)"


class TestConfig:
    def test_set_get_list(self, run, home):
        assert run("config", "set", "max_retries", "5").stdout == "Configuration updated: max_retries = 5\n"
        assert run("config", "set", "backoff-base", "1.5").stdout == "Configuration updated: backoff_base = 1.5\n"
        assert run("config", "get", "max-retries").stdout == "5\n"
        assert run("config", "get", "backoff_base").stdout == "1.5\n"
        assert run("config", "get", "job_timeout").stdout == "0\n"
        assert json.loads(run("config", "list", "--json").stdout)["max_retries"] == 5
        assert "backoff_max_delay" in run("config", "list").stdout
        with open(home.config_path) as handle:
            assert json.load(handle) == {"backoff_base": 1.5, "max_retries": 5}

    def test_enqueue_uses_configured_max_retries(self, run, home):
        run("config", "set", "max_retries", "7")
        run("enqueue", '{"id": "a", "command": "true"}')
        with open_storage(home) as store:
            assert store.get("a").max_retries == 7

    @pytest.mark.parametrize(
        "key, value, message",
        [
            ("colour", "red", "unknown config key 'colour'"),
            ("max_retries", "-1", "invalid value '-1' for max_retries: must be an integer from 0 to 1000000"),
            ("max_retries", "99999999999999999999999", "must be an integer from 0 to 1000000"),
            ("backoff_base", "1e300", "invalid value '1e300' for backoff_base: must be a number >= 1 and <= 1000"),
            ("backoff_max_delay", "inf", "invalid value 'inf' for backoff_max_delay"),
            ("poll_interval", "1e300", "invalid value '1e300' for poll_interval"),
            ("max_retries", "three", "invalid value 'three' for max_retries"),
            ("backoff_base", "0.5", "invalid value '0.5' for backoff_base: must be a number >= 1"),
            ("backoff_base", "nan", "invalid value 'nan' for backoff_base"),
            ("job_timeout", "-5", "invalid value '-5' for job_timeout"),
            ("lease_seconds", "0", "invalid value '0' for lease_seconds: must be a number >= 0.2"),
            ("lease_seconds", "0.01", "invalid value '0.01' for lease_seconds"),
        ],
    )
    def test_bad_keys_and_values_change_nothing(self, run, home, key, value, message):
        run("config", "set", "max_retries", "4")
        before = open(home.config_path).read()
        result = run("config", "set", key, value)
        assert result.exit_code == 2
        assert message in one_error_line(result)
        assert open(home.config_path).read() == before

    def test_get_unknown_key(self, run):
        result = run("config", "get", "nope")
        assert result.exit_code == 2
        assert "unknown config key 'nope'" in one_error_line(result)

    def test_concurrent_sets_lose_nothing(self, home):
        env = dict(os.environ, QUEUECTL_HOME=home.path)
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "queuectl", "config", "set", key, value],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            for key, value in [("max_retries", "9"), ("backoff_base", "3"), ("backoff_max_delay", "77"), ("job_timeout", "12"), ("lease_seconds", "5"), ("poll_interval", "0.2")]
        ]
        for proc in procs:
            assert proc.wait(30) == 0
        with open(home.config_path) as handle:
            assert json.load(handle) == {
                "max_retries": 9, "backoff_base": 3, "backoff_max_delay": 77,
                "job_timeout": 12, "lease_seconds": 5, "poll_interval": 0.2,
            }


class TestWorkerCommandsWithoutWorkers:
    def test_stop_with_nothing_running(self, run):
        result = run("worker", "stop")
        assert result.exit_code == 0
        assert result.stdout == "No workers running\n"

    def test_stop_with_only_stale_entries(self, run, home, empty_queue):
        # A PID that certainly is no queuectl worker: this test process.
        with open(home.pidfile_path, "w") as handle:
            json.dump({"workers": [{"pid": os.getpid(), "create_time": 1.0}]}, handle)
        result = run("worker", "stop")
        assert result.exit_code == 0
        assert result.stdout == "No workers running\n"
        assert f"Removed stale entry for PID {os.getpid()}" in result.stderr
        with open(home.pidfile_path) as handle:
            assert json.load(handle) == {"workers": []}


def test_python_dash_m_and_help_work():
    proc = subprocess.run([sys.executable, "-m", "queuectl", "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    for command in ("enqueue", "worker", "status", "list", "dlq", "config"):
        assert re.search(rf"^\s+{command}\s", proc.stdout, re.M), command


@pytest.mark.parametrize(
    "args, message",
    [
        (["list", "--limit", "0"], "Invalid value for '--limit'"),
        (["status", "--watch", "--interval", "nan"], "'nan' is not a number of seconds"),
        (["worker", "stop", "--timeout", "nan"], "'nan' is not a number of seconds"),
        (["worker", "stop", "--timeout", "-1"], "'-1' is not a number of seconds"),
        (["worker", "start", "--count", "0"], "Invalid value for '--count'"),
    ],
)
def test_out_of_range_options_are_usage_errors(run, args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert message in one_error_line(result)


def test_unknown_command_is_one_line(run):
    result = run("frobnicate")
    assert result.exit_code == 2
    assert "No such command 'frobnicate'" in one_error_line(result)


def test_database_stays_consistent_after_refused_batches(run, home):
    run("enqueue", '{"id": "a", "command": "true"}')
    run("enqueue", '[{"id": "b", "command": "true"}, {"id": "a", "command": "true"}]')
    conn = sqlite3.connect(home.db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1


# --- scheduling and control (issue 4) --------------------------------------------


OK_RESULT = AttemptResult(True, 0, None)


def snapshot(run):
    """Everything a user can see about the jobs, timestamps included."""
    status = json.loads(run("status", "--json").stdout)
    status.pop("workers")
    return run("list", "--json").stdout, status


class TestControlCommands:
    def test_cancel_and_retry_a_waiting_job(self, run, home):
        run("enqueue", "--delay", "1h", '{"id": "later", "command": "true"}')
        assert json.loads(run("status", "--json").stdout)["scheduled"] == 1
        assert "Scheduled: 1 waiting for a later run time" in run("status").stdout
        assert run("cancel", "later").stdout == "Job later cancelled (was pending)\n"
        assert json.loads(run("list", "--state", "canceled", "--json").stdout)[0]["state"] == "cancelled"
        assert run("retry", "later").stdout == "Job later moved back to pending queue (attempts reset)\n"
        with open_storage(home) as store:
            job = store.get("later")
        assert (job.state.value, job.attempts) == ("pending", 0)
        assert job.next_run_at == job.updated_at  # due now, no longer an hour away

    def test_cancel_of_a_running_job_names_its_worker(self, run, home):
        run("enqueue", '{"id": "busy", "command": "sleep 60"}')
        with open_storage(home) as store:
            store.claim("worker-42", time.time() + 1, 30)
        assert run("cancel", "busy").stdout == "Job busy cancelled; worker-42 is stopping its process tree\n"

    def test_pause_and_resume_messages(self, run, empty_queue):
        assert run("pause").stdout == "Queue paused: running jobs finish, no new jobs are claimed\n"
        assert run("pause").stdout == "Queue is already paused\n"
        assert "Queue: paused since " in run("status").stdout
        assert json.loads(run("status", "--json").stdout)["paused"] is True
        assert run("resume").stdout == "Queue resumed: workers claim jobs again\n"
        assert run("resume").stdout == "Queue is not paused\n"
        assert "paused" not in run("status").stdout

    def test_dlq_retry_all(self, run, home):
        run("enqueue", '[{"id": "a", "command": "true"}, {"id": "b", "command": "true"}, {"id": "c", "command": "true"}]')
        to_dlq(home, "a")
        to_dlq(home, "b")
        assert run("dlq", "retry", "--all").stdout == "Moved 2 job(s) from DLQ back to pending queue\n"
        assert [j["state"] for j in json.loads(run("list", "--json").stdout)] == ["pending"] * 3
        assert run("dlq", "retry", "--all").stdout == "Moved 0 job(s) from DLQ back to pending queue\n"

    @pytest.mark.parametrize(
        "args, code, message",
        [
            (["cancel", "ghost"], 1, "Error: job 'ghost' not found"),
            (["cancel", "done"], 1, "Error: job 'done' already finished (state: cancelled); there is nothing to cancel"),
            (["retry", "ghost"], 1, "Error: job 'ghost' not found"),
            (["retry", "waiting"], 1, "Error: job 'waiting' is pending; only failed, cancelled or dlq jobs can be retried"),
            (["dlq", "retry", "done"], 1, "Error: job 'done' is not in the DLQ (state: cancelled)"),
            (["dlq", "retry"], 2, "Error: give a job ID or --all (exactly one)"),
            (["dlq", "retry", "done", "--all"], 2, "Error: give a job ID or --all (exactly one)"),
            (["cancel"], 2, "Error: Missing argument 'ID'."),
            (["enqueue", '{"id": "x", "command": "true", "run_at": "next tuesday"}'], 2, "run_at 'next tuesday' is not an ISO-8601 time"),
            (["enqueue", "--run-at", "2030-13-45", '{"id": "x", "command": "true"}'], 2, "--run-at '2030-13-45' is not an ISO-8601 time"),
            (["enqueue", "--delay", "soon", '{"id": "x", "command": "true"}'], 2, "--delay 'soon' is not a duration"),
        ],
    )
    def test_bad_input_is_one_line_and_changes_nothing(self, run, args, code, message):
        run("enqueue", '[{"id": "done", "command": "true"}, {"id": "waiting", "command": "true"}]')
        run("cancel", "done")
        before = snapshot(run)
        result = run(*args)
        assert result.exit_code == code
        assert message in one_error_line(result)
        assert result.stdout == ""
        assert snapshot(run) == before

    def test_enqueue_priority_option_overrides_the_json(self, run, home):
        run("enqueue", "--priority", "7", '{"id": "p", "command": "true", "priority": 1}')
        assert json.loads(run("list", "--json").stdout)[0]["priority"] == 7


DAY = 86400.0


class TestListing:
    def test_next_run_column_only_when_a_listed_job_waits(self, run):
        run("enqueue", '{"id": "now", "command": "true"}')
        assert mask_times(run("list").stdout).splitlines()[0].split() == ["id", "state", "attempts", "worker_id", "command", "created_at"]
        run("enqueue", "--delay", "1h", '{"id": "later", "command": "true"}')
        lines = mask_times(run("list").stdout).splitlines()
        assert lines[0].split()[-1] == "next_run"
        assert lines[2].split() == ["now", "pending", "0", "true", "<time>"]
        assert lines[3].split() == ["later", "pending", "0", "true", "<time>", "<time>"]
        # A filter that shows no waiting job leaves the column out again.
        assert "next_run" not in run("list", "--state", "completed", "--state", "dlq").stdout

    def test_sort_reverse_limit_and_state_filters(self, run, home):
        run("enqueue", '[{"id": "lo", "command": "true", "priority": 1}, {"id": "hi", "command": "true", "priority": 9}, {"id": "mid", "command": "true", "priority": 5}]')
        to_dlq(home, "hi")

        def ids(*args):
            return [j["id"] for j in json.loads(run("list", "--json", *args).stdout)]

        assert ids() == ["lo", "hi", "mid"]
        assert ids("--sort", "priority") == ["hi", "mid", "lo"]
        assert ids("--sort", "priority", "--reverse", "--limit", "2") == ["lo", "mid"]
        assert ids("--sort", "id") == ["hi", "lo", "mid"]
        assert ids("--sort", "next-run", "--state", "pending") == ["lo", "mid"]
        assert ids("--state", "pending", "--state", "dead", "--sort", "updated", "--limit", "1") == ["hi"]

    @pytest.mark.parametrize(
        "args, message",
        [
            (["--sort", "size"], "Invalid value for '--sort': 'size' is not one of created, priority, next_run, updated, id"),
            (["--state", "done"], "unknown state 'done'"),
            (["--limit", "0"], "Invalid value for '--limit'"),
        ],
    )
    def test_bad_options(self, run, args, message):
        run("enqueue", '{"id": "a", "command": "true"}')
        before = snapshot(run)
        result = run("list", *args)
        assert result.exit_code == 2
        assert message in one_error_line(result)
        assert snapshot(run) == before


class TestShow:
    def test_every_field_every_attempt_and_the_output_tail(self, run, home):
        run("enqueue", '{"id": "flaky", "command": "echo hi", "max_retries": 3, "env": {"A": "1"}}')
        now = time.time()
        with open_storage(home) as store:
            job = store.claim("worker-7", now + 1, 30)
            store.retry_later(job, AttemptResult(False, 2, "Exit code 2: nope", "", "nope\n"), now + 2.5, retry_at=now + 3)
            job = store.claim("worker-8", now + 4, 30)
            store.complete(job, AttemptResult(True, 0, None, "line 1\nline 2\nline 3\n", ""), now + 4.25)
        text = mask_times(run("show", "flaky").stdout)
        lines = text.splitlines()
        assert lines[0] == "Job flaky"
        fields = {line.split(":")[0] for line in lines[2:20]}
        assert fields == {
            "id", "state", "command", "priority", "attempts", "max_retries", "timeout", "cwd", "env", "worker_id",
            "exit_code", "error_message", "created_at", "updated_at", "next_run_at", "started_at", "finished_at",
            "lease_expires_at",
        }
        assert "state:            completed" in lines
        assert "attempts:         2 of 3" in lines
        assert 'env:              {"A": "1"}' in lines
        assert "Attempts (2):" in lines
        attempt_rows = [line.split() for line in lines if re.match(r"\s+[12]\s+worker-", line)]
        assert attempt_rows == [
            ["1", "worker-7", "<time>", "<time>", "1.500s", "2", "Exit", "code", "2:", "nope"],
            ["2", "worker-8", "<time>", "<time>", "0.250s", "0"],
        ]
        assert text.endswith(
            "Output of attempt 2 (last 20 lines of each stream):\n"
            "  stdout:\n    line 1\n    line 2\n    line 3\n"
            "  stderr: (empty)\n"
        )
        assert run("show", "flaky", "--lines", "1").stdout.endswith("  stdout:\n    line 3\n  stderr: (empty)\n")

    def test_json_has_the_job_and_each_attempt(self, run, home):
        run("enqueue", '{"id": "a", "command": "true"}')
        assert json.loads(run("show", "a", "--json").stdout) == {
            "job": json.loads(run("list", "--json").stdout)[0],
            "attempts": [],
        }
        with open_storage(home) as store:
            store.complete(store.claim("w", time.time(), 30), AttemptResult(True, 0, None, "out", "err"), time.time())
        [attempt] = json.loads(run("show", "a", "--json").stdout)["attempts"]
        assert (attempt["number"], attempt["worker_id"], attempt["stdout_tail"], attempt["stderr_tail"]) == (1, "w", "out", "err")
        assert attempt["duration_seconds"] >= 0

    def test_a_waiting_job_says_when_it_runs(self, run):
        run("enqueue", "--delay", "2h", '{"id": "later", "command": "true"}')
        text = run("show", "later").stdout
        assert re.search(r"^next_run_at: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(in (1h 59m|2h 00m)\)$", text, re.M)
        assert "Attempts (0):\n  (not run yet)" in text

    def test_unknown_id(self, run, empty_queue):
        result = run("show", "ghost")
        assert result.exit_code == 1
        assert one_error_line(result) == "Error: job 'ghost' not found"


class TestPurge:
    @pytest.fixture
    def built(self, run, home):
        """Jobs finished 10 days and 1 hour ago, in each final state, plus live ones; every attempt has log files."""
        names = ["done-old", "done-new", "dead-old", "cancelled-old", "running", "waiting"]
        run("enqueue", json.dumps([{"id": name, "command": "true"} for name in names]))
        now = time.time()
        with open_storage(home) as store:
            # Claimed now (the jobs are due from now on), finished in the past.
            store.complete(store.claim("w", now + 1, 30), OK_RESULT, now - 10 * DAY)
            store.complete(store.claim("w", now + 1, 30), OK_RESULT, now - 3600)
            store.bury(store.claim("w", now + 1, 30), AttemptResult(False, 1, "Exit code 1"), now - 10 * DAY)
            store.cancel("cancelled-old", now - 10 * DAY)
            store.claim("w", now + 1, 30)
            attempts = {name: [a.id for a in store.attempts(name)] for name in names}
        os.makedirs(home.logs_dir, exist_ok=True)
        for ids in attempts.values():
            for attempt_id in ids:
                for stream in ("out", "err"):
                    open(home.attempt_log_path(attempt_id, stream), "w").close()
        return attempts

    def logs_of(self, home, attempts, name):
        return [os.path.exists(home.attempt_log_path(i, s)) for i in attempts[name] for s in ("out", "err")]

    def test_removes_exactly_what_it_says(self, run, home, built):
        result = run("purge", "--state", "completed", "--older-than", "7d")
        assert result.stdout == "Purged 1 completed job(s) older than 7d; removed 2 log file(s)\n"
        assert job_ids(home) == ["done-new", "dead-old", "cancelled-old", "running", "waiting"]
        assert self.logs_of(home, built, "done-old") == [False, False]
        assert self.logs_of(home, built, "done-new") == [True, True]

        result = run("purge", "--state", "dead", "--state", "cancelled")
        assert result.stdout == "Purged 2 dlq/cancelled job(s); removed 2 log file(s)\n"
        assert job_ids(home) == ["done-new", "running", "waiting"]
        assert self.logs_of(home, built, "dead-old") == [False, False]
        assert self.logs_of(home, built, "running") == [True, True]

        assert run("purge", "--state", "completed", "--older-than", "2h").stdout == (
            "Purged 0 completed job(s) older than 2h; removed 0 log file(s)\n"
        )
        assert run("purge", "--state", "completed").stdout == "Purged 1 completed job(s); removed 2 log file(s)\n"
        assert job_ids(home) == ["running", "waiting"]

    @pytest.mark.parametrize(
        "age, shown",
        [("90m", "90m"), ("5400", "90m"), ("1.5s", "1.5s"), ("1234567s", "1234567s"), ("115740d", "115740d")],
    )
    def test_echoes_its_age_in_its_largest_unit(self, run, built, age, shown):
        result = run("purge", "--state", "completed", "--older-than", age)
        assert result.exit_code == 0 and f" completed job(s) older than {shown}; removed " in result.stdout

    @pytest.mark.parametrize(
        "args, message",
        [
            ([], "give --state (completed, dlq or cancelled) to say which jobs to purge"),
            (["--state", "pending"], "cannot purge pending jobs: only finished jobs (completed, dlq, cancelled) can be purged"),
            (["--state", "completed", "--state", "processing"], "cannot purge processing jobs"),
            (["--state", "old"], "unknown state 'old'"),
            (["--state", "completed", "--older-than", "a week"], "--older-than 'a week' is not a duration"),
            (["--state", "completed", "--older-than", "-7d"], "--older-than '-7d' is not a duration"),
            (
                ["--state", "completed", "--older-than", "99999999999999d"],
                "--older-than '99999999999999d' is out of range (at most 10,000,000,000s)",
            ),
        ],
    )
    def test_bad_input_changes_nothing(self, run, home, built, args, message):
        before = snapshot(run), sorted(os.listdir(home.logs_dir))
        result = run("purge", *args)
        assert result.exit_code == 2
        assert message in one_error_line(result)
        assert result.stdout == ""
        assert (snapshot(run), sorted(os.listdir(home.logs_dir))) == before


class TestStats:
    def test_json_numbers_match_the_queue_built_here(self, run, home):
        now = time.time()

        def job(job_id, created, **fields):
            return parse_job_spec(dict(fields, id=job_id, command="true"), now=created, default_max_retries=3, default_cwd=None)

        fail = AttemptResult(False, 1, "Exit code 1")
        with open_storage(home) as store:
            store.add_jobs([job("ok-then", now - 7300)])
            store.retry_later(store.claim("w1", now - 7202, 30), fail, now - 7200, retry_at=now - 1803)  # ran 2 s
            store.complete(store.claim("w1", now - 1803, 30), OK_RESULT, now - 1800)  # ran 3 s
            store.add_jobs([job("ok", now - 40)])
            store.complete(store.claim("w1", now - 31, 30), OK_RESULT, now - 30)  # ran 1 s
            store.add_jobs([job("dead", now - 610, max_retries=1)])
            store.bury(store.claim("w2", now - 604, 30), fail, now - 600)  # ran 4 s
            store.add_jobs([job("running", now - 20)])
            store.claim("w2", now - 10, 30)
            store.add_jobs([job("cancelled", now - 5), job("waiting", now - 100), job("later", now, delay=3600)])
            store.cancel("cancelled", now)
        data = json.loads(run("stats", "--json").stdout)
        age = data.pop("oldest_waiting")
        assert age["id"] == "waiting" and 100 <= age["age_seconds"] < 130
        data.pop("generated_at")
        assert data == {
            "jobs": {"pending": 2, "processing": 1, "completed": 2, "failed": 0, "dlq": 1, "cancelled": 1},
            "total": 7,
            "scheduled": 1,
            "success_rate": pytest.approx(2 / 3),
            "attempts": {"total": 5, "per_job": 1.25, "max_per_job": 2},
            "run_time_seconds": {"p50": pytest.approx(2), "p95": pytest.approx(4), "max": pytest.approx(4), "finished_attempts": 4},
            "throughput": {"completed_last_minute": 1, "completed_last_hour": 2},
            "workers": [
                {"worker_id": "w1", "attempts": 3, "succeeded": 2, "failed": 1, "running": 0},
                {"worker_id": "w2", "attempts": 2, "succeeded": 0, "failed": 1, "running": 1},
            ],
        }
        text = run("stats").stdout
        assert "Success rate:     66.7% (2 completed, 1 dead)" in text
        assert "Attempts per job: 1.25 on average, 2 at most (5 attempt(s))" in text
        assert "Run time:         p50 2.000s, p95 4.000s, max 4.000s (4 finished attempt(s))" in text
        assert "Throughput:       1 completed in the last minute, 2 in the last hour" in text
        assert re.search(r"^Oldest waiting:   waiting, due [12]m \d\ds ago$", text, re.M)
        assert [line.split() for line in text.splitlines()[-2:]] == [["w1", "3", "2", "1", "0"], ["w2", "2", "0", "1", "1"]]

    def test_an_empty_queue(self, run, empty_queue):
        data = json.loads(run("stats", "--json").stdout)
        assert (data["total"], data["success_rate"], data["oldest_waiting"], data["workers"]) == (0, None, None, [])
        text = run("stats").stdout
        assert "Success rate:     n/a (no job has finished running)" in text
        assert text.endswith("Workers (attempts run):\n  (none yet)\n")


def test_shell_completion_offers_commands_and_state_names(home):
    def complete(words, cword):
        env = dict(os.environ, COMP_WORDS=words, COMP_CWORD=str(cword), _QUEUECTL_COMPLETE="bash_complete", QUEUECTL_HOME=home.path)
        proc = subprocess.run([sys.executable, "-m", "queuectl"], env=env, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return [line.split(",", 1)[1] for line in proc.stdout.splitlines()]

    assert complete("queuectl st", 1) == ["stats", "status"]
    assert complete("queuectl list --state p", 3) == ["pending", "processing"]
    assert complete("queuectl purge --state c", 3) == ["completed", "cancelled"]
    assert complete("queuectl list --sort next", 3) == ["next_run"]
    script = subprocess.run(
        [sys.executable, "-m", "queuectl"], env=dict(os.environ, _QUEUECTL_COMPLETE="bash_source"),
        capture_output=True, text=True, timeout=30,
    ).stdout
    assert "_queuectl_completion()" in script


@pytest.mark.parametrize(
    "command, options",
    [
        (["list"], ["--state", "--limit", "--sort", "--reverse", "--json", "Examples:"]),
        (["show"], ["--lines", "--json", "Example:"]),
        (["cancel"], ["process tree", "Example:"]),
        (["retry"], ["attempt count reset", "Example:"]),
        (["dlq", "retry"], ["--all", "Examples:"]),
        (["purge"], ["--state", "--older-than", "Examples:"]),
        (["pause"], ["resume", "survives restarts"]),
        (["resume"], []),
        (["stats"], ["--json", "p50", "Examples:"]),
        (["status"], ["--watch", "--interval", "--json", "Examples:"]),
    ],
)
def test_control_commands_have_complete_help(run, command, options):
    result = run(*command, "--help")
    assert result.exit_code == 0
    for option in options:
        assert option in result.stdout


def test_status_watch_refuses_a_zero_interval(run):
    result = run("status", "--watch", "--interval", "0")
    assert result.exit_code == 2
    assert "Invalid value for '--interval'" in one_error_line(result)
