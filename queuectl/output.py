"""Rendering for the terminal: tables, JSON, shortened cells, the status block.

Data goes to stdout; the CLI sends errors and progress to stderr itself.
"""

import json
import time

import click
from tabulate import tabulate

from queuectl.jobs import JobState, format_iso, printable

COMMAND_WIDTH = 40
ERROR_WIDTH = 50

# Labels for the status table, in lifecycle order.
STATE_LABELS = {
    JobState.PENDING: "Pending",
    JobState.PROCESSING: "Processing",
    JobState.COMPLETED: "Completed",
    JobState.FAILED: "Failed",
    JobState.DLQ: "Dead (DLQ)",
    JobState.CANCELLED: "Cancelled",
}


def echo_json(data):
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def shorten(text, width):
    """One line of at most ``width`` characters, ending in ``...`` if cut."""
    if text is None:
        return ""
    line = printable(" ".join(str(text).split()))
    if len(line) <= width:
        return line
    cut = line[: width - 3]
    # Prefer to end on a word boundary when one is near, as in "echo Job 1 && ...".
    space = cut.rfind(" ")
    if space >= width * 2 // 3:
        cut = cut[: space + 1]
    return cut + "..."


def format_local(timestamp):
    """A timestamp as local ``YYYY-MM-DD HH:MM:SS``, as the tables show times."""
    if timestamp is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


JOB_HEADERS = ["id", "state", "attempts", "worker_id", "command", "created_at"]
# Columns whose cells are right-aligned (numbers), as tabulate aligns them.
JOB_NUMERIC = {"attempts"}


def render_jobs(jobs):
    rows = [_job_row(job) for job in jobs]
    return _table_or_empty(rows, JOB_HEADERS, "No jobs found")


def _job_row(job):
    return [job.id, job.state.value, job.attempts, job.worker_id or "", shorten(job.command, COMMAND_WIDTH), format_local(job.created_at)]


def iter_job_lines(jobs, *, now, with_next_run=False):
    """The ``list`` table, line by line, from an iterator of jobs.

    With ``with_next_run``, a last ``next_run`` column shows when each job
    that waits for a later time (a delayed job, or a failed one waiting for
    its retry) runs next.
    """
    headers = list(JOB_HEADERS)
    if with_next_run:
        headers.append("next_run")

    def rows():
        for job in jobs:
            row = _job_row(job)
            if with_next_run:
                row.append(format_local(job.next_run_at) if is_waiting(job, now) else "")
            yield row

    return iter_table(headers, rows(), numeric=JOB_NUMERIC, empty_message="No jobs found")


def is_waiting(job, now):
    """A pending or failed job whose next run is still ahead."""
    return job.state in (JobState.PENDING, JobState.FAILED) and job.next_run_at > now


# How many rows fix the column widths of a streamed table.
STREAM_BLOCK_ROWS = 500


def iter_table(headers, rows, *, numeric=(), empty_message):
    """Lines of a table in tabulate's "simple" format, without holding every row.

    Column widths come from the first ``STREAM_BLOCK_ROWS`` rows (the whole
    table, for most tables, so the result is exactly what tabulate prints);
    a later cell wider than its column widens only its own line. Numeric
    columns are right-aligned, the others left-aligned.
    """
    rows = iter(rows)
    first = []
    for row in rows:
        first.append([str(cell) for cell in row])
        if len(first) >= STREAM_BLOCK_ROWS:
            break
    if not first:
        yield empty_message
        return
    right = [header in numeric for header in headers]
    # tabulate keeps two spaces of padding around headers in this format.
    widths = [len(header) + 2 for header in headers]
    for row in first:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row)]

    def line(cells):
        padded = [cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(cells, widths, right)]
        return "  ".join(padded).rstrip()

    yield line(headers)
    yield "  ".join("-" * width for width in widths)
    for row in first:
        yield line(row)
    for row in rows:
        yield line([str(cell) for cell in row])


def echo_json_stream(items):
    """Print an iterable as a JSON array, one compact item per line, as it comes.

    One item per line (rather than ``echo_json``'s indentation) keeps JSON
    encoding in C: 100,000 jobs print several times faster, and each line
    can be grepped.
    """

    def pieces():
        first = True
        for item in items:
            yield ("[\n  " if first else ",\n  ") + json.dumps(item, ensure_ascii=False, separators=(", ", ": "))
            first = False
        yield "[]\n" if first else "\n]\n"

    _echo_batched(pieces())


def echo_lines(lines):
    """Print lines as they come, a few hundred per write (click.echo flushes each call)."""
    _echo_batched(line + "\n" for line in lines)


def _echo_batched(pieces, batch=STREAM_BLOCK_ROWS):
    chunk = []
    for piece in pieces:
        chunk.append(piece)
        if len(chunk) >= batch:
            click.echo("".join(chunk), nl=False)
            chunk = []
    if chunk:
        click.echo("".join(chunk), nl=False)


def render_dlq(jobs):
    headers = ["id", "state", "attempts", "error_message", "created_at"]
    rows = [
        [job.id, job.state.value, job.attempts, shorten(job.error_message, ERROR_WIDTH), format_local(job.created_at)]
        for job in jobs
    ]
    return _table_or_empty(rows, headers, "DLQ is empty")


def _table_or_empty(rows, headers, empty_message):
    if not rows:
        return empty_message
    return tabulate(rows, headers=headers, tablefmt="simple")


def state_table(counts):
    """The per-state counts table shared by `status` and `stats`."""
    rows = [[STATE_LABELS[state], counts[state]] for state in JobState]
    return tabulate(rows, headers=["State", "Count"], tablefmt="simple")


def render_status(counts, workers, scheduled=0, paused_since=None):
    lines = [
        "=== QueueCTL Status ===",
        "",
        "Jobs:",
        state_table(counts),
        "",
        f"Scheduled: {scheduled} waiting for a later run time",
    ]
    if paused_since is not None:
        lines.append(f"Queue: paused since {format_local(paused_since)} (no new claims until `queuectl resume`)")
    lines += ["", f"Workers: {len(workers)} active"]
    if workers:
        lines.append(f"Worker PIDs: {sorted(w['pid'] for w in workers)}")
    return "\n".join(lines)


def status_json(counts, workers, scheduled=0, paused_since=None):
    workers = sorted(workers, key=lambda w: w["pid"])
    return {
        "jobs": {state.value: counts[state] for state in JobState},
        "total": sum(counts.values()),
        "scheduled": scheduled,
        "paused": paused_since is not None,
        "paused_since": format_iso(paused_since),
        "workers": {
            "count": len(workers),
            "pids": [w["pid"] for w in workers],
            "ids": [w["worker_id"] for w in workers],
        },
    }


def render_config(values):
    return tabulate(sorted(values.items()), headers=["key", "value"], tablefmt="simple")


# --- show ---------------------------------------------------------------------

# The fields `show` lists, in reading order; every stored field of a job.
DETAIL_FIELDS = (
    "id", "state", "command", "priority", "attempts", "max_retries", "timeout", "cwd", "env",
    "worker_id", "exit_code", "error_message", "created_at", "updated_at", "next_run_at",
    "started_at", "finished_at", "lease_expires_at",
)
TIME_DETAIL_FIELDS = {"created_at", "updated_at", "next_run_at", "started_at", "finished_at", "lease_expires_at"}


def format_duration(seconds):
    """``0.012s``, ``4.2s``, ``3m 05s``, ``2h 07m``: short and readable."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.3f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def render_job_detail(job, attempts, *, now, tail_lines=20):
    """Every field of a job, its attempt history, and the output of its last run."""
    lines = [f"Job {job.id}", ""]
    width = max(len(name) for name in DETAIL_FIELDS) + 2
    for name in DETAIL_FIELDS:
        lines.append(f"{name + ':':<{width}}{_detail_value(job, name, now)}")
    lines += ["", f"Attempts ({len(attempts)}):"]
    if attempts:
        rows = [
            [
                attempt.number,
                attempt.worker_id,
                format_local(attempt.started_at),
                format_local(attempt.finished_at) or "(running)",
                format_duration(attempt.duration),
                "" if attempt.exit_code is None else attempt.exit_code,
                shorten(attempt.error_message, ERROR_WIDTH),
            ]
            for attempt in attempts
        ]
        headers = ["#", "worker", "started", "finished", "duration", "exit_code", "error"]
        lines += ["  " + line for line in tabulate(rows, headers=headers, tablefmt="simple").splitlines()]
    else:
        lines.append("  (not run yet)")
    last = attempts[-1] if attempts else None
    if last is not None:
        lines += ["", f"Output of attempt {last.number} (last {tail_lines} lines of each stream):"]
        if last.finished_at is None:
            lines.append("  (still running; the output is stored when the attempt ends)")
        else:
            for name, text in (("stdout", last.stdout_tail), ("stderr", last.stderr_tail)):
                tail = text.splitlines()[-tail_lines:]
                lines.append(f"  {name}:" + ("" if tail else " (empty)"))
                lines += ["    " + printable(row) for row in tail]
    return "\n".join(lines)


def _detail_value(job, name, now):
    value = getattr(job, name)
    if name in TIME_DETAIL_FIELDS:
        if name == "next_run_at" and job.state not in (JobState.PENDING, JobState.FAILED):
            return ""  # a finished or running job has no next run
        text = format_local(value)
        if name == "next_run_at" and is_waiting(job, now):
            text += f" (in {format_duration(value - now)})"
        return text
    if name == "state":
        return value.value
    if name == "attempts":
        return f"{value} of {job.attempt_limit}"
    if name == "env":
        return printable(json.dumps(value, ensure_ascii=False)) if value else ""
    if name == "timeout":
        return "" if value is None else format_duration(value)
    return "" if value is None else printable(str(value))


def job_detail_json(job, attempts):
    return {"job": job.to_dict(), "attempts": [attempt.to_dict() for attempt in attempts]}


# --- stats --------------------------------------------------------------------


def stats_json(stats, now):
    return {
        "generated_at": format_iso(now),
        "jobs": {state.value: stats.counts[state] for state in JobState},
        "total": sum(stats.counts.values()),
        "scheduled": stats.scheduled,
        "success_rate": stats.success_rate,
        "attempts": {
            "total": stats.attempts_total,
            "per_job": stats.attempts_per_job,
            "max_per_job": stats.max_attempts_per_job,
        },
        "run_time_seconds": {
            "p50": stats.run_time_p50,
            "p95": stats.run_time_p95,
            "max": stats.run_time_max,
            "finished_attempts": stats.finished_attempts,
        },
        "throughput": {
            "completed_last_minute": stats.completed_last_minute,
            "completed_last_hour": stats.completed_last_hour,
        },
        "oldest_waiting": None if stats.oldest_waiting_id is None else {
            "id": stats.oldest_waiting_id,
            "age_seconds": stats.oldest_waiting_age,
        },
        "workers": [
            {
                "worker_id": tally.worker_id,
                "attempts": tally.attempts,
                "succeeded": tally.succeeded,
                "failed": tally.failed,
                "running": tally.running,
            }
            for tally in stats.workers
        ],
    }


def render_stats(stats):
    total = sum(stats.counts.values())
    rate = stats.success_rate
    success = "n/a (no job has finished running)" if rate is None else (
        f"{rate:.1%} ({stats.counts[JobState.COMPLETED]} completed, {stats.counts[JobState.DLQ]} dead)"
    )
    per_job = "n/a (nothing has run)" if stats.attempts_per_job is None else (
        f"{stats.attempts_per_job:.2f} on average, {stats.max_attempts_per_job} at most ({stats.attempts_total} attempt(s))"
    )
    run_time = "n/a (no attempt has finished)" if not stats.finished_attempts else (
        f"p50 {format_duration(stats.run_time_p50)}, p95 {format_duration(stats.run_time_p95)}, "
        f"max {format_duration(stats.run_time_max)} ({stats.finished_attempts} finished attempt(s))"
    )
    oldest = "none (no job is waiting to be claimed)" if stats.oldest_waiting_id is None else (
        f"{stats.oldest_waiting_id}, due {format_duration(stats.oldest_waiting_age)} ago"
    )
    lines = [
        "=== QueueCTL Stats ===",
        "",
        "Jobs:",
        state_table(stats.counts),
        "",
        f"Total:            {total} ({stats.scheduled} scheduled for later)",
        f"Success rate:     {success}",
        f"Attempts per job: {per_job}",
        f"Run time:         {run_time}",
        f"Throughput:       {stats.completed_last_minute} completed in the last minute, "
        f"{stats.completed_last_hour} in the last hour",
        f"Oldest waiting:   {oldest}",
        "",
        "Workers (attempts run):",
    ]
    if stats.workers:
        worker_rows = [[t.worker_id, t.attempts, t.succeeded, t.failed, t.running] for t in stats.workers]
        table = tabulate(worker_rows, headers=["worker", "attempts", "succeeded", "failed", "running"], tablefmt="simple")
        lines += ["  " + line for line in table.splitlines()]
    else:
        lines.append("  (none yet)")
    return "\n".join(lines)


def watch(render, interval, *, as_json=False):
    """Print ``render()`` every ``interval`` seconds until Ctrl+C.

    On a terminal each frame replaces the last; into a pipe or file, frames
    follow one another (JSON: one compact object per line).
    """
    redraw = not as_json and click.get_text_stream("stdout").isatty()
    try:
        while True:
            frame = render()
            if as_json:
                click.echo(json.dumps(frame, ensure_ascii=False))
            elif redraw:
                click.clear()
                click.echo(f"Every {interval:g}s, {format_local(time.time())} (Ctrl+C to stop)\n")
                click.echo(frame)
            else:
                click.echo(f"--- {format_local(time.time())}")
                click.echo(frame)
            time.sleep(interval)
    except KeyboardInterrupt:
        # Ctrl+C is how a watch ends: a normal exit, not an error.
        pass
