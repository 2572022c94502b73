#!/usr/bin/env python3
"""queuectl benchmark: the machine's limits, queuectl, and its peers, in one run.

    python bench/run.py            # full run (about 12-15 minutes on 2 cores)
    python bench/run.py --quick    # smoke run (under 2 minutes)

Writes bench/RESULTS.md, bench/results.json and bench/throughput.png (each
replaced atomically). See RESULTS.md for what each figure means and how it
is measured. Installs its peers first via bench/setup.sh (--no-setup skips).
"""

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import limits  # noqa: E402
import peers  # noqa: E402
import qctl  # noqa: E402
import report  # noqa: E402
from common import (  # noqa: E402
    BENCH_DIR,
    REPO_DIR,
    StartProbe,
    atomic_write,
    cpu_busy_fraction,
    log,
    median,
    machine_info,
    now,
    rotate,
    tempdir,
    cpu_seconds_precise,
    wait_for_quiet,
)

SECTIONS = ("limits", "drain", "enqueue", "batch", "pickup", "depth", "idle", "profile")

FULL = dict(
    jobs=2000,
    rq_jobs=300,
    nq_jobs=500,
    profile_jobs=1000,
    repeats=5,
    spawn_count=2000,
    startup_samples=20,
    enqueue_samples=20,
    batch_jobs=100_000,
    pickup_samples=4,  # per system per repeat
    pickup_idle=1.2,
    idle_window=10.0,
    depth_sizes=(1_000, 1_000_000),
    depth_claims=300,
)

QUICK = dict(
    jobs=300,
    rq_jobs=100,
    nq_jobs=300,
    profile_jobs=300,
    repeats=1,
    spawn_count=500,
    startup_samples=5,
    enqueue_samples=5,
    batch_jobs=10_000,
    pickup_samples=3,
    pickup_idle=1.1,
    idle_window=3.0,
    depth_sizes=(1_000, 20_000),
    depth_claims=50,
)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small, fast smoke run (under 2 minutes)")
    ap.add_argument("--jobs", type=int, help="jobs per drain (default 2000; 300 with --quick)")
    ap.add_argument("--repeats", type=int, help="repeats of every interleaved measurement (default 3)")
    ap.add_argument("--only", help=f"comma-separated sections to run: {','.join(SECTIONS)}")
    ap.add_argument("--peers", help="comma-separated peers to include (tsp,nq,huey,rq; default all available)")
    ap.add_argument("--no-setup", action="store_true", help="do not run bench/setup.sh first")
    ap.add_argument("--tree", action="store_true",
                    help="measure queuectl as installed (the working tree, with uncommitted edits) "
                         "instead of a snapshot of the commit at HEAD")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="first wait up to SECONDS for the machine to be nearly idle (other work skews every figure)")
    ap.add_argument("--report-only", action="store_true",
                    help="measure nothing: rewrite RESULTS.md and throughput.png from OUT/results.json")
    ap.add_argument("--out", default=BENCH_DIR, help="directory for RESULTS.md, results.json, throughput.png")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.report_only:
        out = os.path.abspath(args.out)
        with open(os.path.join(out, "results.json")) as fh:
            results = json.load(fh)
        report.write_plot(results, os.path.join(out, "throughput.png"))
        atomic_write(os.path.join(out, "RESULTS.md"), report.render(results))
        print(report.summary(results))
        return 0
    cfg = dict(QUICK if args.quick else FULL)
    if args.jobs:
        cfg["jobs"] = args.jobs
        for key in ("rq_jobs", "nq_jobs", "profile_jobs"):
            cfg[key] = min(cfg[key], args.jobs)
    if args.repeats:
        cfg["repeats"] = args.repeats
    sections = set(SECTIONS if not args.only else args.only.split(","))
    unknown = sections - set(SECTIONS)
    if unknown:
        sys.exit(f"unknown section(s): {', '.join(sorted(unknown))}")
    if args.quick and not args.only:
        sections.discard("profile")  # a profile is not a smoke test

    if not args.no_setup:
        log("setup: bench/setup.sh (installs peers; idempotent)")
        # Install the Python peers into the interpreter that runs the bench
        # (a virtualenv's, usually), not whatever python3 is first on PATH.
        env = dict(os.environ, PYTHON=sys.executable)
        subprocess.run(["bash", os.path.join(BENCH_DIR, "setup.sh")], check=False, env=env)

    busy = None
    if args.wait_quiet:
        busy = wait_for_quiet(args.wait_quiet)
    else:
        busy = cpu_busy_fraction(2.0)
    if busy > 0.15:
        log(f"NOTE: {busy * 100:.0f} % of the CPU was busy with other work just before the run; figures will be noisy")

    started = time.time()
    results = {
        "meta": {
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
            "mode": "quick" if args.quick else "full",
            "argv": sys.argv[1:],
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            "machine": machine_info(),
            "loadavg_start": os.getloadavg(),
            "busy_before": busy,
            "sections": sorted(sections),
        },
        "systems": {},
        "skipped": {},
        "errors": [],
    }

    with tempdir("run") as scratch:
        argv = None
        commit, dirty = qctl.tree_state(REPO_DIR)
        source = "installed"
        if not args.tree:
            snap = qctl.snapshot_head(REPO_DIR, os.path.join(scratch, "snapshot"))
            if snap:
                argv, commit = snap
                source = "snapshot"
        results["meta"]["queuectl_source"] = {"source": source, "commit": commit, "tree_dirty": dirty}
        log(f"queuectl: {source} of commit {commit}" + (" (working tree has uncommitted changes)" if dirty and source == "installed" else ""))

        systems = pick_systems(args, results, argv)
        queuectl = systems.get("queuectl")
        order = list(systems)
        bench = Bench(cfg, results, systems)
        bench.scratch = scratch
        try:
            bench.prepare(sections, queuectl)
            for r in range(cfg["repeats"]):
                log(f"=== repeat {r + 1}/{cfg['repeats']} ===")
                if "limits" in sections:
                    bench.limits(r)
                if "drain" in sections:
                    bench.drain(r, order)
                if "enqueue" in sections and queuectl:
                    bench.enqueue(r, queuectl)
                if "batch" in sections and queuectl:
                    bench.batch(r, queuectl)
                if "depth" in sections and queuectl:
                    bench.depth(r)
                if "pickup" in sections:
                    bench.pickup(r, order)
            if "idle" in sections:
                bench.idle(order)
            if "profile" in sections and queuectl:
                bench.profile(queuectl)
        except KeyboardInterrupt:
            results["errors"].append("interrupted by the user; results are partial")
        finally:
            bench.close()

    results["meta"]["loadavg_end"] = os.getloadavg()
    end_commit, end_dirty = qctl.tree_state(REPO_DIR)
    results["meta"].setdefault("queuectl_source", {}).update(end_commit=end_commit, end_tree_dirty=end_dirty)
    results["meta"]["duration_s"] = round(time.time() - started, 1)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    atomic_write(os.path.join(out, "results.json"), json.dumps(results, indent=1, sort_keys=True) + "\n")
    report.write_plot(results, os.path.join(out, "throughput.png"))
    atomic_write(os.path.join(out, "RESULTS.md"), report.render(results))
    log(f"done in {results['meta']['duration_s']} s: wrote {out}/RESULTS.md, results.json, throughput.png")
    print(report.summary(results))
    return 1 if results["errors"] else 0


def pick_systems(args, results, queuectl_argv=None):
    wanted = None if not args.peers else set(args.peers.split(","))
    systems = {}
    q = qctl.Queuectl(queuectl_argv)
    ok, info = q.available()
    if ok:
        systems["queuectl"] = q
        results["systems"]["queuectl"] = {"name": q.name, "version": info}
    else:
        results["skipped"]["queuectl"] = info
        log(f"NOTE: skipping queuectl: {info}")
    for cls in peers.ALL_PEERS:
        peer = cls()
        if wanted is not None and peer.key not in wanted:
            continue
        ok, info = peer.available()
        if ok:
            systems[peer.key] = peer
            results["systems"][peer.key] = {"name": peer.name, "version": info}
        else:
            results["skipped"][peer.key] = info
            log(f"NOTE: skipping {peer.name}: {info}")
    return systems


class Bench:
    def __init__(self, cfg, results, systems):
        self.cfg, self.results, self.systems = cfg, results, systems
        self.scratch = None
        self.depth_queues = {}
        self.batch_file = None

    def _error(self, what):
        text = f"{what}: {traceback.format_exc().strip().splitlines()[-1]}"
        log("ERROR " + text)
        self.results["errors"].append(text)

    def _put(self, section, key, value):
        self.results.setdefault(section, {}).setdefault(key, []).append(value)

    # --- once, before the repeats ------------------------------------------

    def prepare(self, sections, queuectl):
        if queuectl and ("batch" in sections or "profile" in sections):
            self.batch_file = os.path.join(self.scratch, "batch.jsonl")
            qctl.write_jsonl(self.batch_file, self.cfg["batch_jobs"])
        if queuectl and "depth" in sections:
            for size in self.cfg["depth_sizes"]:
                log(f"depth: building a queue of {size:,} pending jobs with enqueue -f")
                try:
                    dq = qctl.DepthBench(queuectl, size, self.scratch)
                except Exception:
                    self._error(f"depth build {size}")
                    continue
                self.depth_queues[size] = dq
                self.results.setdefault("depth_build", {})[str(size)] = {
                    "seconds": dq.build_seconds,
                    "rate": size / dq.build_seconds,
                }
                self.results.setdefault("depth_plan", {})[str(size)] = dq.query_plan()

    # --- interleaved sections ----------------------------------------------

    def limits(self, r):
        c = self.cfg
        tasks = [
            ("spawn_serial", lambda: limits.spawn_serial(c["spawn_count"])),
            ("spawn_2way", lambda: limits.spawn_parallel(c["spawn_count"], 2)),
            ("python_startup", lambda: limits.python_startup(c["startup_samples"])),
        ]
        for key, fn in rotate(tasks, r):
            try:
                value = fn()
            except Exception:
                self._error(f"limits {key}")
                continue
            if key == "spawn_serial":
                value, cpu = value
                self._put("limits", "spawn_serial_cpu", cpu)
            self._put("limits", key, value)
            log(f"limit {key}: {value:.4g}")

    def drain(self, r, order):
        for key in rotate(order, r):
            system = self.systems[key]
            n = self.cfg.get(f"{key}_jobs", self.cfg["jobs"])
            for workers in rotate([1, 2], r):
                if r == 0 and hasattr(system, "startup_cpu"):
                    try:
                        base = system.startup_cpu(workers)
                        self.results.setdefault("startup_cpu", {})[f"{key}/{workers}"] = base
                    except Exception:
                        self._error(f"startup cpu {key}/{workers}")
                try:
                    res = system.drain(n, workers)
                except Exception:
                    self._error(f"drain {key} x{workers}")
                    continue
                res["jobs"] = n
                self._put("drain", f"{key}/{workers}", res)
                log(f"drain {key:8s} workers={workers}: {res['rate']:7.1f} jobs/s ({n} jobs, {res['span']:.2f} s)")

    def enqueue(self, r, q):
        try:
            times = q.enqueue_latency(self.cfg["enqueue_samples"])
        except Exception:
            self._error("enqueue latency")
            return
        self.results.setdefault("enqueue_latency", []).extend(times)
        times = sorted(times)
        log(f"enqueue latency: median {times[len(times) // 2] * 1000:.1f} ms")

    def batch(self, r, q):
        try:
            res = q.batch_enqueue(self.batch_file, self.cfg["batch_jobs"])
        except Exception:
            self._error("batch enqueue")
            return
        self.results.setdefault("batch", []).append(res)
        log(f"batch enqueue {self.cfg['batch_jobs']:,}: {res['rate']:,.0f} jobs/s ({res['seconds']:.2f} s)")

    def depth(self, r):
        for size in rotate(sorted(self.depth_queues), r):
            try:
                times = self.depth_queues[size].claims(self.cfg["depth_claims"])
            except Exception:
                self._error(f"depth claims {size}")
                continue
            self.results.setdefault("depth_claims", {}).setdefault(str(size), []).extend(times)
            # Per-repeat medians: the ratio is taken within a repeat, where
            # both depths were measured back to back, as with the other figures.
            self.results.setdefault("depth_repeats", {}).setdefault(str(size), []).append(median(times))
            times = sorted(times)
            log(f"depth {size:>9,}: claim median {times[len(times) // 2] * 1e6:.0f} us")

    def pickup(self, r, order):
        c = self.cfg
        for key in rotate(order, r):
            system = self.systems[key]
            try:
                with system.live() as live:
                    self._pickup_samples(key, live, r)
            except Exception:
                self._error(f"pick-up {key}")

    def _pickup_samples(self, key, live, r):
        c = self.cfg
        # One unmeasured job first: pollers with a back-off (Huey) start every
        # sample from the same state, and lazy start-up work is out of the way.
        self._pickup_one(key, live, f"warm-{key}-{r}", record=False)
        for i in range(c["pickup_samples"]):
            # Idle at least pickup_idle seconds, plus a random part so a
            # system that polls on a timer is caught at a random phase.
            time.sleep(c["pickup_idle"] + random.uniform(0, 0.5))
            self._pickup_one(key, live, f"{key}-{r}-{i}", record=True)

    def _pickup_one(self, key, live, name, record):
        probe = StartProbe(self.scratch, name)
        try:
            t_call = now()
            t_return = live.submit(probe.command)
            t_start = probe.wait(30)
        finally:
            probe.close()
        if t_start is None:
            self.results["errors"].append(f"pick-up {key}: job did not start within 30 s")
            return
        if record:
            self._put("pickup", key, {"after_return": t_start - t_return, "after_call": t_start - t_call})

    # --- once, after the repeats -------------------------------------------

    def idle(self, order):
        """All systems' idle workers at once, over the same window."""
        window = self.cfg["idle_window"]
        with contextlib.ExitStack() as stack:
            lives = {}
            for key in order:
                try:
                    lives[key] = stack.enter_context(self.systems[key].live())
                except Exception:
                    self._error(f"idle start {key}")
            time.sleep(3.0)  # start-up done, pollers settled into their idle rhythm
            before = {k: self._cpu(live) for k, live in lives.items()}
            t0 = now()
            time.sleep(window)
            elapsed = now() - t0
            after = {k: self._cpu(live) for k, live in lives.items()}
            for key, live in lives.items():
                self.results.setdefault("idle", {})[key] = {
                    "cpu_seconds": after[key] - before[key],
                    "window": elapsed,
                    "processes": len(live.pids()),
                }
                log(f"idle {key}: {after[key] - before[key]:.3f} CPU s over {elapsed:.1f} s")

    @staticmethod
    def _cpu(live):
        return cpu_seconds_precise(live.pids())

    def profile(self, q):
        """CPU profile of one burst worker draining the standard job count."""
        log("profile: cProfile (CPU time) of one `worker run --burst` draining the drain job count")
        try:
            self.results["profile"] = profile_worker(q, self.cfg["profile_jobs"], self.scratch)
        except Exception:
            self._error("profile")
        log("profile: strace of the sleeps of 2 workers sharing one queue")
        try:
            self.results["contention"] = profile_contention(q, self.cfg["jobs"], self.scratch)
        except Exception:
            self._error("profile contention")
        if self.batch_file:
            log("profile: cProfile (CPU time) of one batch `enqueue -f`")
            try:
                self.results["profile_batch"] = profile_batch(q, self.batch_file, self.cfg["batch_jobs"], self.scratch)
            except Exception:
                self._error("profile batch")

    def close(self):
        for dq in self.depth_queues.values():
            dq.close()


_PROFILE_DRIVER = """
import cProfile, sys, time
from queuectl.cli import main
out, argv = sys.argv[1], sys.argv[2:]
# CPU time, not wall time: waiting for the job's process costs the worker
# nothing, and other load on the machine does not inflate the figures.
profiler = cProfile.Profile(time.process_time)
sys.argv = ["queuectl", *argv]
profiler.enable()
try:
    main()
except SystemExit:
    pass
finally:
    profiler.disable()
    profiler.dump_stats(out)
"""


def profile_cli(home, argv, out_prefix):
    """Run one queuectl command under the CPU-time profiler; returns
    (pstats.Stats, wall seconds)."""
    import pstats

    prof = os.path.join(home, f"{out_prefix}.prof")
    driver = os.path.join(home, "profile_driver.py")
    with open(driver, "w") as fh:
        fh.write(_PROFILE_DRIVER)
    t0 = now()
    with open(os.path.join(home, f"{out_prefix}.log"), "w") as logfile:
        subprocess.run(
            [sys.executable, driver, prof, "--home", home, *argv],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            check=True,
        )
    return pstats.Stats(prof), now() - t0


# Where a function's own time is counted in the profile summary, by file.
BUCKETS = [
    ("starting the job's process (subprocess, environment encoding)", ("subprocess.py", "<frozen os>", "_posixsubprocess", "queuectl/executor.py")),
    ("SQLite storage (statements, transactions, row mapping)", ("sqlite3", "queuectl/storage/")),
    ("logging", ("/logging/", "queuectl/worklog.py")),
    ("job spec parsing and JSON", ("queuectl/specs.py", "queuectl/jobs.py", "json/", "decoder.py", "uuid.py", "<frozen _collections_abc>")),
    ("config re-reads and path building", ("queuectl/config.py", "posixpath", "posix.stat", "genericpath")),
    ("worker loop", ("queuectl/worker.py", "queuectl/wakeup.py", "contextlib.py")),
]


def _bucket(filename, func):
    where = f"{filename}:{func}"
    for name, needles in BUCKETS:
        if any(needle in where for needle in needles):
            return name
    return "other (start-up, imports, CLI, the rest)"


def bucket_profile(stats):
    """Own CPU per bucket. A built-in function (file '~', e.g. isinstance or
    sqlite3's execute) has no file of its own: its time is split among its
    callers' buckets in proportion to what each caller spent in it."""
    totals = {}
    for (filename, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():
        if filename == "~" and callers:
            if "sqlite3" in func:
                shares = {_bucket("sqlite3", func): tt}
            elif "fork_exec" in func:
                shares = {_bucket("_posixsubprocess", func): tt}
            else:
                edge_total = sum(edge[2] for edge in callers.values()) or 1.0
                shares = {}
                for (cfile, _cline, cfunc), edge in callers.items():
                    b = _bucket(cfile, cfunc)
                    shares[b] = shares.get(b, 0.0) + tt * edge[2] / edge_total
        else:
            shares = {_bucket(filename, func): tt}
        for b, t in shares.items():
            totals[b] = totals.get(b, 0.0) + t
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def summarize_profile(stats, n, wall, top=20):
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():
        rows.append({"function": f"{_short(filename)}:{line}({func})", "calls": nc, "tottime": tt, "cumtime": ct})
    by_own = sorted(rows, key=lambda x: -x["tottime"])[:top]
    by_cum = sorted(
        (x for x in rows if "queuectl/" in x["function"] and "cli.py" not in x["function"]),
        key=lambda x: -x["cumtime"],
    )[:top]
    return {
        "jobs": n,
        "wall": wall,
        "profiled_seconds": stats.total_tt,
        "top_own": by_own,
        "top_cumulative": by_cum,
        "buckets": bucket_profile(stats),
    }


def profile_contention(q, n, scratch, workers=2):
    """Sleeps of `workers` burst workers sharing one queue, traced with strace.

    SQLite's busy handler waits for a write lock by sleeping (1, 2, 5, 10,
    15, ... ms); those sleeps are what lock contention costs the workers.
    strace slows the workers, so the counts show the pattern, not the rate.
    """
    import re
    import shutil as _shutil

    if not _shutil.which("strace"):
        return None
    home = os.path.join(scratch, "profile-contention")
    os.makedirs(home)
    path = os.path.join(home, "jobs.jsonl")
    qctl.write_jsonl(path, n)
    q.cli(home, "enqueue", "-f", path)
    traces = [os.path.join(home, f"strace-{i}.txt") for i in range(workers)]
    procs = [
        subprocess.Popen(
            ["strace", "-T", "-e", "trace=clock_nanosleep,nanosleep", "-o", trace,
             *q.argv, "--home", home, "worker", "run", "--burst"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for trace in traces
    ]
    for proc in procs:
        proc.wait(timeout=600)
    requested, slept, count = {}, 0.0, 0
    for trace in traces:
        with open(trace) as fh:
            for line in fh:
                asked = re.search(r"tv_sec=(\d+), tv_nsec=(\d+)", line)
                took = re.search(r"<([\d.]+)>\s*$", line)
                if not (asked and took):
                    continue
                ms = round(int(asked.group(1)) * 1000 + int(asked.group(2)) / 1e6)
                requested[ms] = requested.get(ms, 0) + 1
                slept += float(took.group(1))
                count += 1
    return {
        "jobs": n,
        "workers": workers,
        "sleeps": count,
        "slept_seconds": slept,
        "requested_ms": {str(k): v for k, v in sorted(requested.items())},
    }


def profile_worker(q, n, scratch):
    """CPU profile of one burst worker draining n no-op jobs."""
    home = os.path.join(scratch, "profile-worker")
    os.makedirs(home)
    path = os.path.join(home, "jobs.jsonl")
    qctl.write_jsonl(path, n)
    q.cli(home, "enqueue", "-f", path)
    stats, wall = profile_cli(home, ["worker", "run", "--burst"], "worker")
    return summarize_profile(stats, n, wall)


def profile_batch(q, path, n, scratch):
    """CPU profile of one `enqueue -f` of n jobs into a fresh queue."""
    home = os.path.join(scratch, "profile-batch")
    os.makedirs(home)
    stats, wall = profile_cli(home, ["enqueue", "-f", path], "batch")
    return summarize_profile(stats, n, wall, top=12)


def _short(filename):
    """queuectl/worker.py for our files, the base name for the stdlib's."""
    if "/queuectl/" in filename:
        return "queuectl/" + filename.rsplit("/queuectl/", 1)[1]
    return os.path.basename(filename)


if __name__ == "__main__":
    sys.exit(main())
