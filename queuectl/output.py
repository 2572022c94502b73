"""Rendering for the terminal: tables, JSON, shortened cells, the status block.

Data goes to stdout; the CLI sends errors and progress to stderr itself.
"""

import json
import time

import click
from tabulate import tabulate

from queuectl.jobs import JobState, format_iso

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
    line = " ".join(str(text).split())
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


def render_jobs(jobs):
    headers = ["id", "state", "attempts", "worker_id", "command", "created_at"]
    rows = [
        [job.id, job.state.value, job.attempts, job.worker_id or "", shorten(job.command, COMMAND_WIDTH), format_local(job.created_at)]
        for job in jobs
    ]
    return _table_or_empty(rows, headers, "No jobs found")


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


def render_status(counts, workers, scheduled=0, paused_since=None):
    rows = [[STATE_LABELS[state], counts[state]] for state in JobState]
    lines = [
        "=== QueueCTL Status ===",
        "",
        "Jobs:",
        tabulate(rows, headers=["State", "Count"], tablefmt="simple"),
        "",
        f"Scheduled: {scheduled} waiting for a later run time",
    ]
    if paused_since is not None:
        lines.append(f"Queue: paused since {format_local(paused_since)} (no new claims until `queuectl resume`)")
    lines += ["", f"Workers: {len(workers)} active"]
    if workers:
        lines.append(f"Worker PIDs: {[w['pid'] for w in workers]}")
    return "\n".join(lines)


def status_json(counts, workers, scheduled=0, paused_since=None):
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
