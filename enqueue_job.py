#!/usr/bin/env python3
"""Enqueue the job(s) in a JSON file: python enqueue_job.py FILE  (- reads stdin)

The file holds one job object, an array of them, or JSON lines. This is only a
shorthand for `python -m queuectl enqueue -f FILE`, kept because a file sidesteps
the quoting of inline JSON in CMD and PowerShell. Output and exit status are the
CLI's own; the queue home comes from QUEUECTL_HOME or the current directory.
"""

import os
import subprocess
import sys

USAGE = "usage: python enqueue_job.py FILE   (a JSON job file, or - for stdin)"


def cli_environment():
    """Let ``-m queuectl`` find the package beside this script even when not installed."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isdir(os.path.join(here, "queuectl")):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


def main(argv):
    if len(argv) == 1 and argv[0] in ("-h", "--help"):
        print(USAGE)
        print()
        print(__doc__.split("\n\n", 1)[1].rstrip())
        return 0
    if len(argv) != 1:
        print(USAGE, file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "queuectl", "enqueue", "-f", argv[0]]
    try:
        # stdin, stdout and stderr are inherited, so "-" and the CLI's messages pass through.
        returncode = subprocess.call(command, env=cli_environment())
    except KeyboardInterrupt:
        return 130
    # A child killed by a signal reports -N; a shell would say 128+N.
    return 128 - returncode if returncode < 0 else returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
