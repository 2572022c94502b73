"""The ``queuectl`` command line: parse, call one domain function, render.

Heavy modules (tabulate, psutil, the worker and supervisor) are imported
inside the commands that use them, so ``enqueue`` stays quick to start.
Errors are translated in one place, ``QueueCtlGroup.main``: one line on
stderr and an exit status (2 for bad input, 1 for everything else).
"""

import os
import sys
import time

import click

from queuectl import __version__
from queuectl import config as config_mod
from queuectl.errors import NoQueueInHomeError, QueueCtlError, ValidationError
from queuectl.jobs import FINISHED_STATES, LIST_SORTS, RETRYABLE_STATES, JobState, check_purgeable
from queuectl.specs import parse_duration, parse_job_batch, parse_time

# Batches bigger than this print one summary line instead of a line per job.
SUMMARY_THRESHOLD = 20


class QueueCtlGroup(click.Group):
    """A Click group whose errors are one clear line, never a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _make_output_safe()
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = code if isinstance(code, int) else 0
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            code = 130
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            code = exc.exit_code
        except QueueCtlError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            code = exc.exit_code
        except BrokenPipeError:
            # `queuectl list | head`: the reader left; nothing more to say.
            _silence_stdout()
            code = 1
        except OSError as exc:
            click.echo(f"Error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), err=True)
            code = 1
        except Exception as exc:  # the last line of defence: still one line
            if os.environ.get("QUEUECTL_DEBUG"):
                raise
            click.echo(f"Error: unexpected {type(exc).__name__}: {exc} (set QUEUECTL_DEBUG=1 for a traceback)", err=True)
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


def _make_output_safe():
    # A terminal that can't show "✓" should get a stand-in, not a crash.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="replace")
            except (ValueError, OSError):
                pass


def _silence_stdout():
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


class App:
    """What every command needs: the queue home and (lazily) its storage."""

    def __init__(self, home):
        self.home = home
        self._storage = None

    def storage(self, *, durable=True, create=False):
        """The queue's storage; only commands that add work ``create`` a missing home."""
        if self._storage is None:
            from queuectl.storage import open_storage

            self._storage = open_storage(self.home, durable=durable, create=create)
            click.get_current_context().call_on_close(self._storage.close)
        return self._storage


pass_app = click.make_pass_decorator(App)


class Seconds(click.ParamType):
    """A finite number of seconds within a range (FloatRange lets NaN through)."""

    name = "seconds"

    def __init__(self, minimum=0.0, maximum=365 * 86400.0):
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not (self.minimum <= number <= self.maximum):  # also false for NaN
            self.fail(f"{value!r} is not a number of seconds from {self.minimum:g} to {self.maximum:g}", param, ctx)
        return number


class JobId(click.ParamType):
    """A job id as typed; bytes that aren't UTF-8 can't name any job (enqueue refuses them)."""

    name = "id"

    def convert(self, value, param, ctx):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(f"{value.encode('utf-8', 'surrogateescape')!r} is not UTF-8, so no job has it", param, ctx)
        return value


JOB_ID = JobId()


class Count(click.IntRange):
    """A row count from ``minimum`` up; a huge one means "all" (SQLite's integers end at 2**63)."""

    CEILING = 2**62

    def __init__(self, minimum):
        super().__init__(min=minimum)

    def convert(self, value, param, ctx):
        return min(super().convert(value, param, ctx), self.CEILING)


COUNT = Count(1)
COUNT_OR_ZERO = Count(0)


def _read_text(handle):
    try:
        return handle.read()
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{handle.name} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def json_option(func):
    """``--json``: machine-readable output, shared by every read command."""
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(func)


def _complete_states(ctx, param, incomplete):
    # Shell completion (see README): offer state names, aliases included.
    names = [state.value for state in JobState] + ["dead"]
    return [name for name in names if name.startswith(incomplete.lower())]


def _complete_finished_states(ctx, param, incomplete):
    return [state.value for state in FINISHED_STATES if state.value.startswith(incomplete.lower())]


def _complete_config_keys(ctx, param, incomplete):
    return [key for key in config_mod.SETTINGS if key.startswith(incomplete.lower().replace("-", "_"))]


def _complete_sort_keys(ctx, param, incomplete):
    return [key for key in LIST_SORTS if key.startswith(incomplete.lower().replace("-", "_"))]


def _state_list(ctx, param, values):
    try:
        return [JobState.parse(v) for v in values]
    except ValidationError as exc:
        raise click.BadParameter(exc.message, ctx=ctx, param=param) from None


@click.group(cls=QueueCtlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    envvar="QUEUECTL_HOME",
    help="Queue home holding queuectl.db, the config and workers.pid [default: current directory; env QUEUECTL_HOME].",
)
@click.version_option(__version__, prog_name="queuectl")
@click.pass_context
def cli(ctx, home):
    """queuectl: a durable background job queue for shell commands.

    Enqueue JSON jobs, start workers, and every job runs: failures retry with
    exponential backoff and end in a dead letter queue (DLQ) when their
    attempts are used up. Everything lives in the queue home.
    """
    ctx.obj = App(config_mod.Home.resolve(home))


# --- enqueue -------------------------------------------------------------------


@cli.command()
@click.argument("job_json", required=False, metavar="[JSON]")
@click.option("-f", "--file", "job_file", type=click.File("r", encoding="utf-8"), help="Read jobs from FILE (a JSON object, array, or JSON lines; - for stdin).")
@click.option("--priority", type=int, help="Priority for the job(s); higher runs first.")
@click.option("--delay", help="Run no sooner than this from now (e.g. 30s, 5m, 2h).")
@click.option("--run-at", help="Run no sooner than this ISO-8601 time (e.g. 2027-01-15T10:00:00Z).")
@pass_app
def enqueue(app, job_json, job_file, priority, delay, run_at):
    """Add jobs to the queue.

    JSON is one job, e.g. '{"id": "job1", "command": "echo hi"}', or an array of
    jobs; -f reads them from a file instead. A batch goes in whole or not at all.

    \b
    Job fields (only "command" is required):
      id           unique string (default: a random hex id)
      command      run by /bin/sh -c
      max_retries  most attempts before the DLQ (default: config max_retries)
      priority     integer, higher runs first (default 0)
      run_at       ISO-8601 time, e.g. 2027-01-15T10:00:00Z; delay: seconds
      timeout      seconds before the job's process tree is stopped
      cwd          directory to run in (default: the current one)
      env          object of extra environment variables (strings)
    """
    if (job_json is None) == (job_file is None):
        raise click.UsageError("give a job as JSON or a file with -f (exactly one)")
    if delay is not None and run_at is not None:
        raise click.UsageError("give --delay or --run-at, not both")
    text = job_json if job_json is not None else _read_text(job_file)
    overrides = {}
    if priority is not None:
        overrides["priority"] = priority
    if delay is not None:
        overrides["delay"] = parse_duration(delay, "--delay")
    if run_at is not None:
        parse_time(run_at, "--run-at")
        overrides["run_at"] = run_at
    settings = config_mod.load_config(app.home)
    jobs = parse_job_batch(
        text,
        now=time.time(),
        default_max_retries=settings["max_retries"],
        default_cwd=os.getcwd(),
        overrides=overrides,
    )
    storage = app.storage(create=True)
    storage.add_jobs(jobs)
    _wake_workers(storage)
    if len(jobs) > SUMMARY_THRESHOLD:
        click.echo(f"✓ {len(jobs)} jobs enqueued successfully")
    else:
        for job in jobs:
            click.echo(f"✓ Job {job.id} enqueued successfully")


def _wake_workers(storage):
    from queuectl import wakeup

    wakeup.notify([w["wake_address"] for w in storage.list_workers()])


# --- workers -------------------------------------------------------------------


@cli.group()
def worker():
    """Start, stop or run workers."""


@worker.command("start")
@click.option("--count", "-c", type=click.IntRange(1, 256), default=1, show_default=True, help="How many workers to start.")
@pass_app
def worker_start(app, count):
    """Start detached background workers.

    They outlive this shell, are recorded in workers.pid and log to
    workers.log in the queue home.
    """
    from queuectl import supervisor

    pids = supervisor.start_workers(app.home, app.storage(create=True), count)
    click.echo(f"Started {len(pids)} worker process(es)")
    click.echo(f"Worker PIDs: {pids}")


@worker.command("stop")
@click.option("--timeout", type=Seconds(), default=60.0, show_default=True, help="Seconds to wait for current jobs to finish.")
@click.option("--force", is_flag=True, help="Kill workers (and their jobs) still running after --timeout.")
@pass_app
def worker_stop(app, timeout, force):
    """Stop this queue's workers gracefully.

    Each worker finishes its current job, then exits. Only processes proven to
    be queuectl workers of this queue are signalled.
    """
    from queuectl import supervisor

    try:
        storage = app.storage()
    except NoQueueInHomeError:
        click.echo("No workers running")  # no queue yet, so no workers of it
        return 0
    report = supervisor.stop_workers(app.home, storage, timeout, force)
    for pid in report.stale:
        click.echo(f"Removed stale entry for PID {pid} (not a running queuectl worker)", err=True)
    if not report.stopping:
        click.echo("No workers running")
        return 0
    click.echo(f"Stopping {len(report.stopping)} worker(s): {report.stopping}")
    if report.killed:
        click.echo(f"Force-killed {len(report.killed)} worker(s) still running after {timeout:g}s: {report.killed}")
    if report.still_running:
        raise QueueCtlError(
            f"{len(report.still_running)} worker(s) still running after {timeout:g}s: "
            f"{report.still_running} (use --force to kill them)"
        )
    click.echo("All workers stopped successfully")
    return 0


@worker.command("run")
@click.option("--burst", is_flag=True, help="Exit once no job is due instead of waiting for more.")
@click.option("--log-file", type=click.Path(dir_okay=False), hidden=True)
@pass_app
def worker_run(app, burst, log_file):
    """Run one worker in the foreground.

    Logs each job to the console. Ctrl+C (or SIGTERM) finishes the current job,
    then exits 0; a second Ctrl+C stops the current job too (recorded as a
    failed attempt) and exits 130.
    """
    from queuectl import worklog
    from queuectl.worker import Worker

    worklog.configure(log_file)
    return Worker(app.home, app.storage(durable=False, create=True), burst=burst).run()


# --- reading -------------------------------------------------------------------


@cli.command()
@click.option("--watch", is_flag=True, help="Refresh until Ctrl+C.")
@click.option("--interval", type=Seconds(0.1, 86400), default=2.0, show_default=True, metavar="SECONDS", help="Seconds between refreshes with --watch.")
@json_option
@pass_app
def status(app, watch, interval, as_json):
    """Show job counts per state and the live workers.

    Also how many jobs are scheduled for a later time and whether the queue
    is paused. With --watch the block is redrawn every --interval seconds
    until Ctrl+C (with --json: one JSON object per line, per refresh).

    \b
    Examples:
      queuectl status
      queuectl status --watch --interval 1
    """
    from queuectl import output, supervisor

    def snapshot():
        now = time.time()
        try:
            storage = app.storage()
        except NoQueueInHomeError:
            if not watch:
                raise
            # Watching a home before its first job: an empty queue until one arrives.
            counts, scheduled, paused_since, workers = dict.fromkeys(JobState, 0), 0, None, []
        else:
            counts = storage.count_by_state()
            scheduled = storage.count_scheduled(now)
            paused_since = storage.paused_since()
            workers = supervisor.live_workers(app.home, storage)
        if as_json:
            return output.status_json(counts, workers, scheduled, paused_since)
        return output.render_status(counts, workers, scheduled, paused_since)

    if not watch:
        if as_json:
            output.echo_json(snapshot())
        else:
            click.echo(snapshot())
        return
    output.watch(snapshot, interval, as_json=as_json)


def _sort_key(ctx, param, value):
    key = value.strip().lower().replace("-", "_")
    if key not in LIST_SORTS:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(LIST_SORTS)}", ctx=ctx, param=param)
    return key


@cli.command("list")
@click.option("--state", "states", multiple=True, callback=_state_list, shell_complete=_complete_states, help="Only jobs in this state (repeatable; 'dead' = dlq).")
@click.option("--limit", type=COUNT, help="Show at most N jobs [default: all].")
@click.option(
    "--sort",
    metavar="KEY",
    default="created",
    shell_complete=_complete_sort_keys,
    show_default=True,
    callback=_sort_key,
    help="Order: " + "; ".join(f"{key} = {meaning}" for key, meaning in LIST_SORTS.items()) + ".",
)
@click.option("--reverse", is_flag=True, help="Flip the --sort order.")
@json_option
@pass_app
def list_jobs(app, states, limit, sort, reverse, as_json):
    """List jobs, oldest first.

    Columns: id, state, attempts, worker_id, command (shortened), created_at.
    When a listed state holds jobs waiting for a later time (a delay, a
    run_at, or a retry's backoff), a next_run column shows when each of
    them runs next.

    Rows are streamed from the database as they are printed, so even
    100,000 jobs list in constant memory; `--limit` just stops early.
    `--json` prints the same jobs, with every field, as a JSON array holding
    one job per line.

    \b
    Examples:
      queuectl list --state pending --state failed
      queuectl list --sort priority --limit 20
      queuectl list --sort updated --json
    """
    from queuectl import output

    storage = app.storage()
    jobs = storage.iter_jobs(states, limit, sort, reverse)
    if as_json:
        output.echo_json_stream(job.to_dict() for job in jobs)
        return
    now = time.time()
    with_next_run = storage.count_scheduled(now, states) > 0
    output.echo_lines(output.iter_job_lines(jobs, now=now, with_next_run=with_next_run))


@cli.command()
@click.argument("job_id", metavar="ID", type=JOB_ID)
@click.option("--lines", "tail_lines", type=COUNT_OR_ZERO, default=20, show_default=True, help="Lines of each output stream to show.")
@json_option
@pass_app
def show(app, job_id, tail_lines, as_json):
    """Show every field of a job, its attempts and its latest output.

    Each attempt is listed with its worker, start, end, duration, exit code
    and error; then the tail of stdout and stderr of the latest attempt.
    `--json` includes the stored output tail of every attempt.

    \b
    Example:
      queuectl show job-42
    """
    from queuectl import output

    storage = app.storage()
    job = storage.get(job_id)
    attempts = storage.attempts(job_id)
    if as_json:
        output.echo_json(output.job_detail_json(job, attempts))
    else:
        click.echo(output.render_job_detail(job, attempts, now=time.time(), tail_lines=tail_lines))


@cli.command()
@json_option
@pass_app
def stats(app, as_json):
    """Show how the queue is doing: rates, run times, backlog, workers.

    Jobs per state; success rate (completed / (completed + dead)); attempts
    per job; run time p50, p95 and max of finished attempts; jobs completed
    in the last minute and hour; how long the oldest due job has waited to
    be claimed; and per worker, the attempts it ran and how they ended.

    \b
    Examples:
      queuectl stats
      queuectl stats --json
    """
    from queuectl import output

    now = time.time()
    numbers = app.storage().stats(now)
    if as_json:
        output.echo_json(output.stats_json(numbers, now))
    else:
        click.echo(output.render_stats(numbers))


@cli.command()
@click.argument("job_id", metavar="ID", type=JOB_ID)
@click.option("--attempt", "number", type=COUNT, help="Attempt N instead of the latest one.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing output until the attempt ends (waiting for it to start).")
@click.option("--tail", "-n", "lines", type=COUNT_OR_ZERO, help="Only the last N lines of each stream.")
@json_option
@pass_app
def logs(app, job_id, number, follow, lines, as_json):
    """Show a job's output: its stdout on stdout, its stderr on stderr.

    Shows the latest attempt unless --attempt N is given (after a DLQ retry,
    the latest attempt numbered N). Output comes from the attempt's log files
    in the queue home; once log retention has removed them, from the last
    4 KB kept in the database. --json prints the attempt with the end of each
    stream (4 KB, or --tail N lines) and the paths of its log files.
    """
    from queuectl import logfiles

    if follow and as_json:
        raise click.UsageError("--follow and --json cannot be combined")
    storage = app.storage()
    find = logfiles.wait_for_attempt if follow else logfiles.find_attempt
    attempt = find(storage, job_id, number)
    if as_json:
        from queuectl import output

        output.echo_json(logfiles.summary(app.home, attempt, lines))
        return
    attempt, from_database = logfiles.copy_output(
        app.home,
        attempt,
        logfiles.reloader(storage, attempt),
        _stream_writer(sys.stdout, flush=follow),
        _stream_writer(sys.stderr, flush=follow),
        tail=lines,
        follow=follow,
    )
    for stream in from_database:
        name = "stdout" if stream == "out" else "stderr"
        click.echo(
            f"Note: the {name} log file of attempt {attempt.number} is gone (log retention, a full disk, or removed by hand); "
            "shown above is the last 4 KB kept in the database",
            err=True,
        )


def _stream_writer(stream, flush):
    def write(text):
        stream.write(text)
        if flush:
            stream.flush()

    return write


# --- DLQ -----------------------------------------------------------------------


@cli.group()
def dlq():
    """Inspect and retry jobs in the dead letter queue."""


@dlq.command("list")
@click.option("--limit", type=COUNT, help="Show at most N jobs.")
@json_option
@pass_app
def dlq_list(app, limit, as_json):
    """List jobs whose attempts are used up."""
    from queuectl import output

    jobs = app.storage().list_jobs([JobState.DLQ], limit)
    if as_json:
        output.echo_json_stream(job.to_dict() for job in jobs)
    else:
        click.echo(output.render_dlq(jobs))


@dlq.command("retry")
@click.argument("job_id", metavar="[ID]", required=False, type=JOB_ID)
@click.option("--all", "retry_all", is_flag=True, help="Retry every job in the DLQ.")
@pass_app
def dlq_retry(app, job_id, retry_all):
    """Move a job (or, with --all, every job) from the DLQ back to pending.

    Its attempts are reset, so it gets its full number of tries again, and it
    is due at once.

    \b
    Examples:
      queuectl dlq retry job-42
      queuectl dlq retry --all
    """
    if (job_id is None) == (not retry_all):
        raise click.UsageError("give a job ID or --all (exactly one)")
    storage = app.storage()
    if retry_all:
        moved = storage.revive_all(time.time())
        _wake_workers(storage)
        click.echo(f"Moved {moved} job(s) from DLQ back to pending queue")
        return
    storage.revive(job_id, time.time())
    _wake_workers(storage)
    click.echo(f"Job {job_id} moved from DLQ back to pending queue")


# --- control -------------------------------------------------------------------


@cli.command()
@click.argument("job_id", metavar="ID", type=JOB_ID)
@pass_app
def cancel(app, job_id):
    """Cancel a pending, failed or running job; it will not run (again).

    A running job's whole process tree is stopped by its worker within about
    half a second, and the attempt is recorded as cancelled, not failed: the job
    is not retried. Finished jobs cannot be cancelled. `queuectl retry ID`
    brings a cancelled job back.

    \b
    Example:
      queuectl cancel job-42
    """
    now = time.time()
    before = app.storage().cancel(job_id, now)
    if before.state == JobState.PROCESSING and before.lease_expires_at < now:
        click.echo(f"Job {job_id} cancelled; its worker {before.worker_id} was lost, so the next worker to start stops its process tree")
    elif before.state == JobState.PROCESSING:
        click.echo(f"Job {job_id} cancelled; {before.worker_id} is stopping its process tree")
    else:
        click.echo(f"Job {job_id} cancelled (was {before.state.value})")


@cli.command()
@click.argument("job_id", metavar="ID", type=JOB_ID)
@pass_app
def retry(app, job_id):
    """Run a failed, cancelled or dead job again, now, with fresh attempts.

    The job goes back to pending, due at once, with its attempt count reset
    (its earlier attempts stay in `queuectl show ID`).

    \b
    Example:
      queuectl retry job-42
    """
    storage = app.storage()
    storage.revive(job_id, time.time(), RETRYABLE_STATES)
    _wake_workers(storage)
    click.echo(f"Job {job_id} moved back to pending queue (attempts reset)")


@cli.command()
@click.option("--state", "states", multiple=True, callback=_state_list, shell_complete=_complete_finished_states, help="Purge jobs in this state: completed, dlq or cancelled (repeatable; required).")
@click.option("--older-than", metavar="AGE", help="Only jobs that finished more than AGE ago (e.g. 12h, 7d, 4w).")
@pass_app
def purge(app, states, older_than):
    """Delete finished jobs, their attempt history and their log files.

    Bounds the database's growth. Only finished jobs (completed, dlq,
    cancelled) can be purged; --state says which. Without --older-than every
    job in those states goes.

    \b
    Examples:
      queuectl purge --state completed --older-than 7d
      queuectl purge --state dlq --state cancelled
    """
    from queuectl import maintenance

    # Check the request before the database is even opened.
    check_purgeable(states)
    age = None if older_than is None else parse_duration(older_than, "--older-than")
    report = maintenance.purge(app.home, app.storage(), states, age, now=time.time())
    names = "/".join(state.value for state in dict.fromkeys(states))
    scope = f" older than {_age_text(age)}" if age is not None else ""
    click.echo(f"Purged {report.jobs} {names} job(s){scope}; removed {report.log_files_removed} log file(s)")
    if report.log_files_left:
        click.echo(f"Could not remove {report.log_files_left} log file(s) in {app.home.logs_dir}", err=True)


def _age_text(seconds):
    """``604800`` -> ``7d``, ``5400`` -> ``90m``: the largest unit that divides it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:.0f}{unit}"
    # Whole seconds in full (1234567s, not 1.23457e+06s).
    return f"{seconds:.0f}s" if seconds == int(seconds) else f"{seconds:g}s"


@cli.command()
@pass_app
def pause(app):
    """Stop workers from claiming jobs, without stopping the workers.

    Jobs already running finish normally; nothing new starts until
    `queuectl resume`. Enqueueing still works. The flag is stored in the
    queue's database, so it holds for every worker and survives restarts.
    """
    if app.storage().set_paused(True, time.time()):
        click.echo("Queue paused: running jobs finish, no new jobs are claimed")
    else:
        click.echo("Queue is already paused")


@cli.command()
@pass_app
def resume(app):
    """Let workers claim jobs again after `queuectl pause`."""
    storage = app.storage()
    if storage.set_paused(False, time.time()):
        _wake_workers(storage)
        click.echo("Queue resumed: workers claim jobs again")
    else:
        click.echo("Queue is not paused")


# --- config --------------------------------------------------------------------


@cli.group()
def config():
    """Read and change settings (queuectl.config.json in the queue home)."""


def _keys_epilog():
    width = max(map(len, config_mod.SETTINGS))
    rows = [f"  {key:<{width}}  {setting.help}; default {setting.default}" for key, setting in config_mod.SETTINGS.items()]
    return "\b\nKeys (- or _ alike):\n" + "\n".join(rows)


@config.command("get", epilog=_keys_epilog())
@click.argument("key", shell_complete=_complete_config_keys)
@json_option
@pass_app
def config_get(app, key, as_json):
    """Print one setting's value."""
    name = config_mod.normalize_key(key)
    app.home.require_existing()
    value = config_mod.load_config(app.home)[name]
    if as_json:
        from queuectl import output

        output.echo_json({name: value})
    else:
        click.echo(value)


@config.command("set", context_settings={"ignore_unknown_options": True}, epilog=_keys_epilog())
@click.argument("key", shell_complete=_complete_config_keys)
@click.argument("value")
@pass_app
def config_set(app, key, value):
    """Change one setting (keys may use - or _)."""
    name, stored = config_mod.set_value(app.home, key, value)
    click.echo(f"Configuration updated: {name} = {stored}")


@config.command("list")
@json_option
@pass_app
def config_list(app, as_json):
    """Show every setting with its current value."""
    from queuectl import output

    app.home.require_existing()
    values = config_mod.load_config(app.home)
    if as_json:
        output.echo_json(values)
    else:
        click.echo(output.render_config(values))


def main():
    cli(prog_name="queuectl")
