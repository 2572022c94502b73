"""Job specs, states, time parsing and the backoff schedule (pure, no I/O)."""

from dataclasses import fields
import uuid
from datetime import datetime, timezone

import pytest

from queuectl.errors import ValidationError
from queuectl.jobs import Job, JobState, check_purgeable, percentile_rank, printable, retry_delay, summarize_failure
from queuectl.specs import parse_duration, parse_job_batch, parse_job_spec, parse_time

NOW = 1_800_000_000.0


def spec(**fields):
    return parse_job_spec(fields, now=NOW, default_max_retries=3, default_cwd="/tmp")


def test_minimal_job_gets_defaults():
    job = spec(command="echo hi")
    assert uuid.UUID(hex=job.id).version == 4 and uuid.UUID(hex=job.id).hex == job.id
    assert spec(command="x").id != job.id
    assert job.state is JobState.PENDING
    assert (job.max_retries, job.priority, job.attempts) == (3, 0, 0)
    assert job.next_run_at == NOW and job.created_at == NOW
    assert job.cwd == "/tmp" and job.env == {} and job.timeout is None


def test_a_batch_gets_distinct_uuid4_ids_and_keeps_its_own():
    lines = "\n".join('{"command": "true"}' if i % 3 else f'{{"id": "own-{i}", "command": "true"}}' for i in range(3000))
    jobs = parse_job_batch(lines, now=NOW, default_max_retries=3, default_cwd=None)
    made = [job.id for job in jobs if not job.id.startswith("own-")]
    assert len(made) == 2000 and len(set(made)) == 2000
    for job_id in made:
        parsed = uuid.UUID(hex=job_id)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, job_id)
    assert [job.id for job in jobs[::3]] == [f"own-{i}" for i in range(0, 3000, 3)]


@pytest.mark.parametrize("after", ["\u00a0", "\u3000", "\x1f", "\x0c"])
def test_only_json_whitespace_may_follow_a_json_line(after):
    # str.strip() would take these too; JSON's whitespace is space, tab, CR and LF only.
    with pytest.raises(ValidationError, match="invalid JSON on line 1: Extra data"):
        parse_job_batch(f'{{"command": "a"}}{after}\n{{"command": "b"}}\n', now=NOW, default_max_retries=3, default_cwd=None)
    jobs = parse_job_batch('{"command": "a"} \t\r\n{"command": "b"}\r\n', now=NOW, default_max_retries=3, default_cwd=None)
    assert [job.command for job in jobs] == ["a", "b"]


def test_every_field_is_honoured():
    job = spec(id="x", command="ls", max_retries=5, priority=-2, delay=30, timeout=1.5, cwd="/var", env={"A": "b"})
    assert (job.id, job.max_retries, job.priority, job.timeout) == ("x", 5, -2, 1.5)
    assert job.next_run_at == NOW + 30
    assert (job.cwd, job.env) == ("/var", {"A": "b"})


@pytest.mark.parametrize("given, stored", [(".", "/tmp"), ("sub/dir", "/tmp/sub/dir"), ("../var", "/var"), ("/abs", "/abs")])
def test_a_relative_cwd_is_anchored_where_enqueue_ran(given, stored):
    # A worker started elsewhere must still run the job where its author meant.
    assert spec(command="pwd", cwd=given).cwd == stored


def test_the_longest_command_a_shell_accepts_is_taken():
    assert spec(command="x" * (128 * 1024 - 1)).command == "x" * (128 * 1024 - 1)
    assert spec(command="x", max_retries=1_000_000).max_retries == 1_000_000


@pytest.mark.parametrize(
    "fields, message",
    [
        ({}, "field 'command' is required"),
        ({"command": ""}, "field 'command' must not be empty"),
        ({"command": "   "}, "field 'command' must not be empty"),
        ({"command": 5}, "field 'command' must be a string, got an integer"),
        ({"command": "x", "max_retries": "3"}, "field 'max_retries' must be an integer, got a string"),
        ({"command": "x", "max_retries": True}, "field 'max_retries' must be an integer, got a boolean"),
        ({"command": "x", "max_retries": -1}, "field 'max_retries' must be >= 0, got -1"),
        ({"command": "x", "priority": 1.5}, "field 'priority' must be an integer, got a number"),
        ({"command": "x", "timeout": -3}, "field 'timeout' must be a non-negative number, got -3"),
        ({"command": "x", "delay": "soon"}, "field 'delay' must be a number, got a string"),
        ({"command": "x", "run_at": "tomorrow"}, "run_at 'tomorrow' is not an ISO-8601 time"),
        ({"command": "x", "run_at": "2026-01-01T00:00:00Z", "delay": 1}, "give either 'run_at' or 'delay', not both"),
        ({"command": "x", "env": ["A"]}, "field 'env' must be an object of strings, got an array"),
        ({"command": "x", "env": {"A": 1}}, "field 'env' value for 'A' must be a string"),
        ({"command": "x", "env": {"A": "x\x00y"}}, "field 'env' value for 'A' must not contain NUL characters"),
        ({"command": "x", "cwd": "/tmp\x00/x"}, "field 'cwd' must not contain NUL characters"),
        ({"command": "x", "id": 7}, "field 'id' must be a string, got an integer"),
        ({"command": "x", "id": ""}, "field 'id' must not be empty"),
        ({"command": "x", "id": "a\nb"}, "field 'id' must not contain control characters"),
        ({"command": "x", "colour": "red"}, "unknown field 'colour'"),
        ({"command": "x", "id": None}, "field 'id' must be a string, got null"),
        ({"command": "x", "cwd": None}, "field 'cwd' must be a string, got null"),
        ({"command": "x", "cwd": ""}, "field 'cwd' must not be empty"),
        ({"command": "x", "max_retries": 1_000_001}, "field 'max_retries' must be <= 1,000,000, got 1000001"),
        ({"command": "x" * (128 * 1024)}, "field 'command' is 128 KiB or longer"),
        ({"command": "é" * (64 * 1024)}, "field 'command' is 128 KiB or longer"),
        ({"command": "x", "id": "a\ud800"}, "field 'id' contains an unpaired surrogate"),
        ({"command": "echo \udfff"}, "field 'command' contains an unpaired surrogate"),
        ({"command": "x", "env": {"A": "\ud800"}}, "field 'env' value for 'A' contains an unpaired surrogate"),
        ({"command": "x", "env": {"A": "a\x00b"}}, "field 'env' value for 'A' must not contain NUL"),
        ({"command": "x", "cwd": "/tmp\x00"}, "field 'cwd' must not contain NUL"),
        ({"command": "x", "run_at": "0001-01-01T00:00:00+14:00"}, "is out of range"),
        ({"command": "x", "run_at": "9999-12-31T23:59:59-14:00"}, "is out of range"),
    ],
)
def test_bad_fields_are_refused_by_name(fields, message):
    with pytest.raises(ValidationError) as info:
        spec(**fields)
    assert message in info.value.message


def test_a_job_must_be_an_object():
    with pytest.raises(ValidationError, match="a job must be a JSON object, got a string"):
        parse_job_spec("echo", now=NOW, default_max_retries=3, default_cwd=None)


def test_run_at_zones_are_converted_to_utc():
    utc = parse_time("2026-12-03T10:00:00Z")
    assert utc == datetime(2026, 12, 3, 10, tzinfo=timezone.utc).timestamp()
    assert parse_time("2026-12-03T12:00:00+02:00") == utc
    naive_local = datetime(2026, 12, 3, 10, 0).astimezone().timestamp()
    assert parse_time("2026-12-03T10:00:00") == naive_local


@pytest.mark.parametrize("text, seconds", [("90", 90), ("30s", 30), ("5m", 300), ("2h", 7200), ("7d", 604800), ("1.5s", 1.5), ("250ms", 0.25)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "-5s", "5 parsecs", "1e3"])
def test_bad_durations(text):
    with pytest.raises(ValidationError, match="is not a duration"):
        parse_duration(text, "--older-than")


def test_backoff_schedule_is_exponential_and_capped():
    assert [retry_delay(n, 2, 300) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert retry_delay(9, 2, 300) == 300
    assert retry_delay(2, 1.5, 300) == pytest.approx(2.25)
    assert retry_delay(5, 1, 300) == 1
    assert retry_delay(100000, 10, 60) == 60  # overflow is capped, not a crash


def test_attempt_limit_semantics():
    assert spec(command="x", max_retries=3).attempt_limit == 3
    assert spec(command="x", max_retries=0).attempt_limit == 1


def test_failure_summary_uses_last_stderr_line():
    assert summarize_failure(1, "") == "Exit code 1"
    assert summarize_failure(2, "warning\nTraceback\nSyntaxError: invalid syntax\n\n") == "Exit code 2: SyntaxError: invalid syntax"
    assert len(summarize_failure(1, "x" * 10_000)) == 500
    windows = "'nonexistent_command_xyz' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n"
    assert summarize_failure(1, windows) == (
        "Exit code 1: 'nonexistent_command_xyz' is not recognized as an internal or external command, operable program or batch file."
    )


def test_control_characters_from_a_job_are_made_visible():
    assert printable("plain text, caf\u00e9") == "plain text, caf\u00e9"
    assert printable("\x1b]0;pwned\x07 \x1b[2J\r\x7f\x9b") == "^[]0;pwned^G ^[[2J^M^?\\x9b"
    assert printable("a\tb\nc") == "a\tb\nc"
    # A job's stderr can't put an escape sequence into its error message.
    assert summarize_failure(1, "\x1b]0;pwned\x07\n") == "Exit code 1: ^[]0;pwned^G"


def test_state_parsing_accepts_dead_alias():
    assert JobState.parse("dead") is JobState.DLQ
    assert JobState.parse("Completed") is JobState.COMPLETED
    with pytest.raises(ValidationError, match="unknown state 'finished'"):
        JobState.parse("finished")


class TestBatches:
    def parse(self, text, **overrides):
        return parse_job_batch(text, now=NOW, default_max_retries=3, default_cwd="/w", overrides=overrides or None)

    def test_object_array_and_json_lines(self):
        assert [j.id for j in self.parse('{"id": "a", "command": "x"}')] == ["a"]
        assert [j.id for j in self.parse('[{"id": "a", "command": "x"}, {"id": "b", "command": "y"}]')] == ["a", "b"]
        lines = '{"id": "a", "command": "x"}\n\n{"id": "b", "command": "y"}\n'
        assert [j.id for j in self.parse(lines)] == ["a", "b"]

    def test_pretty_printed_object(self):
        assert [j.id for j in self.parse('{\n  "id": "a",\n  "command": "x"\n}\n')] == ["a"]

    def test_one_bad_job_names_its_position(self):
        with pytest.raises(ValidationError, match="job 2: field 'command' is required"):
            self.parse('[{"command": "x"}, {"id": "b"}]')

    def test_bad_json_line_names_the_line(self):
        with pytest.raises(ValidationError, match="invalid JSON on line 2"):
            self.parse('{"command": "x"}\n{"command": \n')

    @pytest.mark.parametrize("text", ["", "   ", "[]"])
    def test_empty_input(self, text):
        with pytest.raises(ValidationError, match="no jobs given"):
            self.parse(text)

    @pytest.mark.parametrize(
        "text, message",
        [
            ('{"id": "a", "id": "b", "command": "x"}', "duplicate key 'id'"),
            ('{"command": "x", "timeout": NaN}', "NaN is not valid JSON"),
            ('{"command": "x", "priority": -Infinity}', "-Infinity is not valid JSON"),
            ("[" * 100_000, "nested too deeply"),
        ],
    )
    def test_json_that_python_would_accept_but_we_refuse(self, text, message):
        with pytest.raises(ValidationError, match="invalid JSON") as info:
            self.parse(text)
        assert message in info.value.message

    def test_a_byte_order_mark_is_ignored(self):
        assert [j.id for j in self.parse('\ufeff{"id": "a", "command": "x"}')] == ["a"]

    def test_malformed_json(self):
        with pytest.raises(ValidationError, match="invalid JSON"):
            self.parse('{"command": "x"')

    def test_duplicate_ids_within_a_batch(self):
        with pytest.raises(ValidationError, match="appears more than once"):
            self.parse('[{"id": "a", "command": "x"}, {"id": "a", "command": "y"}]')

    def test_overrides_apply_to_every_job(self):
        jobs = self.parse('[{"command": "x", "delay": 5}, {"command": "y"}]', priority=7, run_at="2026-12-03T10:00:00Z")
        assert {j.priority for j in jobs} == {7}
        assert {j.next_run_at for j in jobs} == {parse_time("2026-12-03T10:00:00Z")}


def test_cancelled_state_and_its_us_spelling():
    assert JobState.parse("cancelled") is JobState.CANCELLED
    assert JobState.parse("canceled") is JobState.CANCELLED


def test_only_finished_states_can_be_purged():
    assert check_purgeable([JobState.COMPLETED, JobState.DLQ, JobState.COMPLETED]) == [JobState.COMPLETED, JobState.DLQ]
    with pytest.raises(ValidationError, match="give --state"):
        check_purgeable([])
    for state in (JobState.PENDING, JobState.PROCESSING, JobState.FAILED):
        with pytest.raises(ValidationError, match=f"cannot purge {state.value} jobs"):
            check_purgeable([JobState.COMPLETED, state])


def test_percentile_rank_is_nearest_rank():
    values = list(range(1, 11))
    assert values[percentile_rank(10, 0.50)] == 5
    assert values[percentile_rank(10, 0.95)] == 10
    assert percentile_rank(1, 0.5) == percentile_rank(1, 0.95) == 0


def test_to_dict_shows_every_stored_field_and_nothing_internal():
    job = spec(command="echo hi", env={"A": "1"}, delay=5)
    job.seq, job.attempt_id = 7, 9
    data = job.to_dict()
    assert set(data) == {f.name for f in fields(Job)} - {"seq", "attempt_id"}
    assert list(data) == [
        "id", "command", "max_retries", "created_at", "next_run_at", "state", "priority", "attempts",
        "timeout", "cwd", "env", "updated_at", "started_at", "finished_at", "worker_id",
        "lease_expires_at", "exit_code", "error_message",
    ]
    assert (data["state"], data["env"], data["started_at"]) == ("pending", {"A": "1"}, None)
    assert data["next_run_at"] == "2027-01-15T08:00:05.000+00:00"
