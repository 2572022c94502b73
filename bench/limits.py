"""The machine's own limits, which every queue's drain rate is compared with.

- serial spawn: one Python process runs ``subprocess.run(["/bin/sh", "-c",
  "true"])`` back to back; jobs/s = count / wall time. This is the most a
  one-worker queue can do if it had zero overhead of its own.
- 2-way spawn: two Python processes do the same at once (they are started
  first and wait for a common start instant, so interpreter start-up is not
  counted); jobs/s = total count / (start instant -> last one done). This is
  what two zero-overhead workers could do on this machine.
- python start-up: wall time of ``python -c pass`` (the interpreter running
  this benchmark), the yardstick of the CLI enqueue target.
"""

import resource
import subprocess
import sys
import time

from common import SH_TRUE, now

_TWO_WAY_CHILD = """
import subprocess, sys, time
start, n = float(sys.argv[1]), int(sys.argv[2])
while time.time() < start:
    time.sleep(0.0005)
for _ in range(n):
    subprocess.run(%r)
print(repr(time.time()))
""" % (SH_TRUE,)


def spawn_serial(count):
    """(jobs/s, own CPU seconds per spawn) of spawning and reaping
    /bin/sh -c true one at a time. The CPU figure is this process's alone,
    not the shells': what subprocess itself costs a Python worker per job."""
    c0 = _own_cpu()
    t0 = now()
    for _ in range(count):
        subprocess.run(SH_TRUE)
    elapsed = now() - t0
    return count / elapsed, (_own_cpu() - c0) / count


def _own_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def spawn_parallel(count, ways=2):
    """Jobs/s of `ways` processes each spawning count/ways shells serially."""
    per = count // ways
    start = time.time() + 0.4  # time for the children's interpreters to come up
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _TWO_WAY_CHILD, repr(start), str(per)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(ways)
    ]
    ends = []
    for child in children:
        out, _ = child.communicate()
        ends.append(float(out.strip()))
    return per * ways / (max(ends) - start)


def python_startup(samples):
    """Median seconds of `python -c pass`."""
    times = []
    for _ in range(samples):
        t0 = now()
        subprocess.run([sys.executable, "-c", "pass"])
        times.append(now() - t0)
    times.sort()
    return times[len(times) // 2]
