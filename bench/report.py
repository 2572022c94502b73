"""Turns a results dict (see run.py) into bench/RESULTS.md and the
throughput plot."""

import os
import tempfile

from common import median, percentile

TARGETS = {
    "drain1": 0.70,  # of the serial spawn limit
    "drain2": 0.50,  # of the 2-way spawn limit
    "own_cpu": 0.0005,  # s of the worker's own CPU per job ("well under")
    "enqueue_x": 5.0,  # x python -c pass
    "batch": 50_000,  # jobs/s
    "pickup_p50": 0.015,  # s
    "idle": 0.01,  # fraction of a core
    "depth_x": 1.2,  # claim at 1M / claim at 1k
}

ORDER = ["queuectl", "tsp", "nq", "huey", "rq"]


# --------------------------------------------------------------------------
# derived figures
# --------------------------------------------------------------------------


def figures(res):
    """The headline numbers, computed once for the table, plot and summary."""
    f = {}
    lim = res.get("limits", {})
    f["serial"] = median(lim.get("spawn_serial", []))
    f["two_way"] = median(lim.get("spawn_2way", []))
    f["py"] = median(lim.get("python_startup", []))
    f["spawn_cpu"] = median(lim.get("spawn_serial_cpu", []))
    f["drain"] = {}
    for key, runs in res.get("drain", {}).items():
        system, workers = key.split("/")
        workers = int(workers)
        rates = [r["rate"] for r in runs]
        limit = f["serial"] if workers == 1 else f["two_way"]
        entry = {
            "rate": median(rates),
            "min": min(rates),
            "max": max(rates),
            "runs": len(rates),
            "jobs": runs[0].get("jobs"),
            "ratio": median(rates) / limit if limit else None,
        }
        own = [r["own_cpu_per_job"] for r in runs if "own_cpu_per_job" in r]
        if own:
            base = res.get("startup_cpu", {}).get(key)
            jobs = runs[0].get("jobs") or 1
            entry["own_cpu"] = median(own) - (base / jobs if base else 0.0)
            entry["own_cpu_gross"] = median(own)
        walls = [r["wall_incl_startup"] for r in runs if "wall_incl_startup" in r]
        if walls:
            entry["wall_rate"] = (runs[0].get("jobs") or 0) / median(walls)
        if "client_enqueue_s" in runs[0]:
            entry["client_enqueue"] = median([r["client_enqueue_s"] for r in runs])
        f["drain"].setdefault(system, {})[workers] = entry
    enq = res.get("enqueue_latency", [])
    f["enqueue"] = median(enq)
    f["enqueue_n"] = len(enq)
    f["enqueue_x"] = f["enqueue"] / f["py"] if f["enqueue"] and f["py"] else None
    batch = res.get("batch", [])
    f["batch"] = median([b["rate"] for b in batch])
    f["batch_s"] = median([b["seconds"] for b in batch])
    f["pickup"] = {}
    for system, samples in res.get("pickup", {}).items():
        ret = [s["after_return"] for s in samples]
        call = [s["after_call"] for s in samples]
        f["pickup"][system] = {
            "p50": percentile(ret, 50),
            "p95": percentile(ret, 95),
            "call_p50": percentile(call, 50),
            "call_p95": percentile(call, 95),
            "n": len(ret),
        }
    f["idle"] = {
        k: v["cpu_seconds"] / v["window"] for k, v in res.get("idle", {}).items()
    }
    f["depth_n"] = {int(k): len(v) for k, v in res.get("depth_claims", {}).items()}
    repeats = {int(k): v for k, v in _depth_repeats(res).items()}
    # Like every other figure: the median over the repeats of each repeat's
    # median; the ratio is paired within a repeat (both depths measured back
    # to back), so drift between repeats cancels out.
    f["depth"] = {k: median(v) for k, v in repeats.items()}
    if len(repeats) >= 2:
        small, big = min(repeats), max(repeats)
        f["depth_x"] = median([b / s for s, b in zip(repeats[small], repeats[big])])
    else:
        f["depth_x"] = None
    return f


# --------------------------------------------------------------------------
# formatting helpers
# --------------------------------------------------------------------------


def _depth_repeats(res):
    """{size: [median claim time of each repeat]}.

    Older results.json files kept only the pooled samples: they are cut
    into the repeats they came from (each repeat took depth_claims samples).
    """
    if res.get("depth_repeats"):
        return res["depth_repeats"]
    per = res.get("meta", {}).get("config", {}).get("depth_claims")
    out = {}
    for size, samples in res.get("depth_claims", {}).items():
        chunks = [samples[i:i + per] for i in range(0, len(samples), per)] if per else [samples]
        out[size] = [median(c) for c in chunks if c]
    return out


def _n(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def _ms(x, digits=1):
    return "–" if x is None else f"{x * 1000:.{digits}f} ms"


def _us(x):
    return "–" if x is None else f"{x * 1e6:,.0f} µs"


def _ratio(x):
    return "–" if x is None else f"{x:.2f}"


def _verdict(ok):
    if ok is None:
        return "not measured"
    return "**met**" if ok else "**missed**"


def _cmp(value, target, higher_is_better):
    if value is None:
        return None
    return value >= target if higher_is_better else value <= target


def _name(res, key):
    return res.get("systems", {}).get(key, {}).get("name", key)


def _systems(res, present):
    keys = [k for k in ORDER if k in present]
    return keys + sorted(k for k in present if k not in keys)


# --------------------------------------------------------------------------
# RESULTS.md
# --------------------------------------------------------------------------


def render(res):
    f = figures(res)
    meta = res["meta"]
    m = meta.get("machine", {})
    cfg = meta.get("config", {})
    out = []
    w = out.append

    w("# queuectl benchmark results")
    w("")
    command = " ".join(["python bench/run.py", *meta.get("argv", [])])
    w(f"Generated by `{command}` ({meta.get('mode')} mode) on {meta.get('started')}, "
      f"in {meta.get('duration_s')} s. "
      "Re-run it to refresh this file; the raw numbers are in `bench/results.json`.")
    w("")
    w("**Machine:** "
      f"{m.get('cpu', '?')}, {m.get('cpus', '?')} cores, {m.get('memory_gib', '?')} GiB; "
      f"{m.get('platform', '?')} (Debian {m.get('debian', '?')}); "
      f"Python {m.get('python', '?')}, SQLite {m.get('sqlite', '?')}. "
      f"Load average at start {_load(meta.get('loadavg_start'))}, at end {_load(meta.get('loadavg_end'))}.")
    busy = meta.get("busy_before")
    if busy is not None:
        w("")
        w(f"Just before the run, {busy * 100:.0f} % of the machine's CPU was busy with other work.")
        if busy > 0.15:
            w("")
            w("> Note: the machine was shared with other work during this run, so absolute figures "
              "are lower and noisier than on an idle machine. The ratios, measured interleaved, are "
              "the figures to compare; CPU-time figures are the least affected.")
    w("")
    src = meta.get("queuectl_source") or {}
    if src.get("source") == "snapshot":
        w(f"**queuectl measured:** commit `{src.get('commit')}`, as committed (a snapshot taken at the "
          "start, so edits made while the benchmark ran do not change what it measures).")
    elif src.get("commit"):
        changed = src.get("end_commit") and src.get("end_commit") != src.get("commit")
        w(f"**queuectl measured:** the installed working tree at commit `{src.get('commit')}`"
          + (" with uncommitted changes" if src.get("tree_dirty") else "")
          + (f"; it moved to `{src.get('end_commit')}` during the run, so later repeats measured newer code"
             if changed else "") + ".")
    w("")
    w("**Systems:** " + "; ".join(f"{v['name']}: {v['version']}" for v in _ordered(res["systems"])) + ".")
    if res.get("skipped"):
        w("")
        w("**Skipped:** " + "; ".join(f"{k}: {v}" for k, v in res["skipped"].items()) + ".")
    if res.get("errors"):
        w("")
        w("**Errors during the run** (the figures they affect are missing or partial):")
        for e in res["errors"]:
            w(f"- {e}")
    w("")
    times = "once" if cfg.get("repeats") == 1 else f"{cfg.get('repeats')} times"
    w(f"Every interleaved measurement was run {times}, rotating the order of "
      "the systems (and of 1 vs 2 workers) each repeat so that drift in the machine hits all alike; "
      "the figures are medians over the repeats.")

    # ---- targets
    w("")
    w("## Targets (issue 5)")
    w("")
    w("Where a target is missed, [GAPS.md](GAPS.md) explains why, from the profiles below, and what would close it.")
    w("")
    w("| figure | target | measured | verdict |")
    w("| --- | --- | --- | --- |")
    q = f["drain"].get("queuectl", {})
    d1, d2 = q.get(1, {}), q.get(2, {})
    w(f"| drain, 1 worker / serial spawn limit | ≥ {TARGETS['drain1']:.2f} | {_ratio(d1.get('ratio'))} "
      f"({_n(d1.get('rate'))} of {_n(f['serial'])} jobs/s) | {_verdict(_cmp(d1.get('ratio'), TARGETS['drain1'], True))} |")
    w(f"| drain, 2 workers / 2-way spawn limit | ≥ {TARGETS['drain2']:.2f} | {_ratio(d2.get('ratio'))} "
      f"({_n(d2.get('rate'))} of {_n(f['two_way'])} jobs/s) | {_verdict(_cmp(d2.get('ratio'), TARGETS['drain2'], True))} |")
    own = d1.get("own_cpu")
    w(f"| worker's own CPU per job (1 worker, start-up excluded) | well under 0.5 ms | {_ms(own, 3)} "
      f"(a bare `subprocess.run` loop: {_ms(f['spawn_cpu'], 3)}) | "
      f"{_verdict(_cmp(own, TARGETS['own_cpu'], False))} |")
    enq_x = "–" if f["enqueue_x"] is None else f"{f['enqueue_x']:.1f}×"
    w(f"| CLI `enqueue` / `python -c pass` | ≤ {TARGETS['enqueue_x']:.0f}× | {enq_x} "
      f"({_ms(f['enqueue'])} vs {_ms(f['py'])}) | {_verdict(_cmp(f['enqueue_x'], TARGETS['enqueue_x'], False))} |")
    batch_s = "–" if f["batch_s"] is None else f"{f['batch_s']:.2f} s"
    w(f"| batch `enqueue -f` of {_n(cfg.get('batch_jobs'))} jobs | ≥ {_n(TARGETS['batch'])} jobs/s | "
      f"{_n(f['batch'])} jobs/s ({batch_s}) | {_verdict(_cmp(f['batch'], TARGETS['batch'], True))} |")
    pq = f["pickup"].get("queuectl", {})
    w(f"| pick-up latency p50 (enqueue returns → job starts, worker idle ≥ {cfg.get('pickup_idle')} s) | "
      f"≤ 15 ms | {_ms(pq.get('p50'))} (p95 {_ms(pq.get('p95'))}) | {_verdict(_cmp(pq.get('p50'), TARGETS['pickup_p50'], False))} |")
    iq = f["idle"].get("queuectl")
    iq_s = "–" if iq is None else f"{iq * 100:.2f} %"
    w(f"| idle worker CPU | < 1 % of a core | {iq_s} | "
      f"{_verdict(_cmp(iq, TARGETS['idle'], False))} |")
    sizes = sorted(f["depth"])
    if len(sizes) >= 2:
        w(f"| claim at {_n(sizes[-1])} queued / at {_n(sizes[0])} | ≤ {TARGETS['depth_x']}× | "
          f"{f['depth_x']:.2f}× ({_us(f['depth'][sizes[-1]])} vs {_us(f['depth'][sizes[0]])}) | "
          f"{_verdict(_cmp(f['depth_x'], TARGETS['depth_x'], False))} |")
    else:
        w("| claim cost, deep vs shallow queue | ≤ 1.2× | – | not measured |")

    # ---- limits
    w("")
    w("## The machine's limits")
    w("")
    w("| limit | median | runs |")
    w("| --- | --- | --- |")
    lim = res.get("limits", {})
    w(f"| spawn + reap `/bin/sh -c true`, serially | {_n(f['serial'])} jobs/s | {len(lim.get('spawn_serial', []))} |")
    w(f"| the same, 2 processes at once | {_n(f['two_way'])} jobs/s | {len(lim.get('spawn_2way', []))} |")
    w(f"| own CPU of the serial spawning process, per spawn (subprocess's cost to any Python worker) | "
      f"{_ms(f['spawn_cpu'], 3)} | {len(lim.get('spawn_serial_cpu', []))} |")
    w(f"| `python -c pass` start-up | {_ms(f['py'])} | {len(lim.get('python_startup', []))} × {cfg.get('startup_samples')} |")

    # ---- drain
    w("")
    w("## Drain throughput (no-op jobs `/bin/sh -c true`)")
    w("")
    w("| system | jobs | 1 worker, jobs/s | / serial limit | 2 workers, jobs/s | / 2-way limit | own CPU per job (1 w / 2 w) | enqueue, one client call |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for key in _systems(res, f["drain"]):
        d = f["drain"][key]
        one, two = d.get(1, {}), d.get(2, {})
        jobs = one.get("jobs") or two.get("jobs")
        own = "–"
        if "own_cpu" in one or "own_cpu" in two:
            own = f"{_ms(one.get('own_cpu'), 3)} / {_ms(two.get('own_cpu'), 3)}"
        client = one.get("client_enqueue") or two.get("client_enqueue")
        client_s = _ms(client) if client else ("see CLI table" if key == "queuectl" else "– (API call)")
        w(f"| {_name(res, key)} | {_n(jobs)} | {_rng(one)} | {_ratio(one.get('ratio'))} | {_rng(two)} | "
          f"{_ratio(two.get('ratio'))} | {own} | {client_s} |")
    w("")
    w("jobs/s is the median over the repeats, with the lowest and highest run in brackets. "
      "Ratios divide the median by the median limit measured in the same run.")
    qd = f["drain"].get("queuectl", {})
    if qd.get(1, {}).get("wall_rate"):
        w(f"Counting worker start-up too (spawn of `worker run --burst` to its exit), queuectl drains "
          f"{_n(qd[1]['wall_rate'])} jobs/s with 1 worker and {_n(qd.get(2, {}).get('wall_rate'))} with 2.")

    # ---- latency and idle
    w("")
    w("## Pick-up latency and idle cost")
    w("")
    w("| system | pick-up p50 | pick-up p95 | enqueue call → start, p50 / p95 | samples | idle CPU (% of a core) |")
    w("| --- | --- | --- | --- | --- | --- |")
    for key in _systems(res, set(f["pickup"]) | set(f["idle"])):
        p = f["pickup"].get(key, {})
        idle = f["idle"].get(key)
        idle_s = "–" if idle is None else f"{idle * 100:.2f} %"
        if key == "nq":
            idle_s = "0 (no process between jobs)"
        w(f"| {_name(res, key)} | {_ms(p.get('p50'))} | {_ms(p.get('p95'))} | "
          f"{_ms(p.get('call_p50'))} / {_ms(p.get('call_p95'))} | {p.get('n', 0)} | {idle_s} |")
    w("")
    w("Pick-up is measured from the moment the enqueue call returns; it is negative when the job "
      "had already started before the enqueuing process finished exiting. The column "
      "\"enqueue call → start\" includes the enqueue call itself (for queuectl and tsp/nq a whole "
      "CLI process; for Huey and RQ an API call in a running Python process).")

    # ---- queuectl only
    w("")
    w("## queuectl: enqueue and depth")
    w("")
    w("| figure | median | samples |")
    w("| --- | --- | --- |")
    w(f"| one `queuectl enqueue '<json>'` (whole CLI process) | {_ms(f['enqueue'])} | {f['enqueue_n']} |")
    w(f"| `queuectl enqueue -f` of {_n(cfg.get('batch_jobs'))} JSON lines | {_n(f['batch'])} jobs/s | {len(res.get('batch', []))} |")
    for size, build in sorted(res.get("depth_build", {}).items(), key=lambda kv: int(kv[0])):
        w(f"| building the {_n(int(size))}-job queue with `enqueue -f` (once) | {build['seconds']:.2f} s ({_n(build['rate'])} jobs/s) | 1 |")
    for size in sorted(f["depth"]):
        w(f"| `claim()` with {_n(size)} jobs queued | {_us(f['depth'][size])} | {f['depth_n'][size]} |")
    plans = res.get("depth_plan", {})
    if plans:
        plan = plans.get(str(max(int(k) for k in plans)))
        w("")
        w(f"Claim query plan at the largest depth: `{plan}`.")
    reps = _depth_repeats(res)
    if len(reps) >= 2:
        small, big = min(reps, key=int), max(reps, key=int)
        pairs = ", ".join(f"{_us(b)} / {_us(s)}" for s, b in zip(reps[small], reps[big]))
        w("")
        w(f"Claim medians per repeat, {_n(int(big))} / {_n(int(small))} queued: {pairs}. The claim "
          "figures above are the medians of these; the ratio in the targets table is the median "
          "of the per-repeat ratios, as both depths are measured back to back within a repeat.")

    # ---- profile
    prof = res.get("profile")
    if prof:
        n = prof["jobs"]
        w("")
        w("## Where a worker's CPU goes (cProfile, CPU-time clock)")
        w("")
        w(f"One `worker run --burst` profiled with `cProfile.Profile(time.process_time)` while it "
          f"drains {_n(n)} no-op jobs: {prof['profiled_seconds']:.2f} s of the worker's own CPU in all "
          f"({prof['profiled_seconds'] / n * 1e3:.2f} ms a job, start-up included; "
          f"{prof['wall']:.1f} s wall). Waiting for a job's process costs no CPU and so does not "
          "appear; the profiler's own overhead inflates every Python call, so read proportions.")
        buckets = dict(sorted((prof.get("buckets") or {}).items(), key=lambda kv: -kv[1]))
        own = f["drain"].get("queuectl", {}).get(1, {}).get("own_cpu")
        if buckets:
            total = sum(buckets.values()) or 1.0
            w("")
            w("By area (built-ins such as `isinstance` are charged to their callers' areas)"
              + (f"; the last column scales each share to the {own * 1e3:.3f} ms of own CPU a job "
                 "the unprofiled worker spends (start-up excluded)" if own else "") + ":")
            w("")
            w("| area | share of the worker's CPU | ≈ per job, unprofiled |")
            w("| --- | --- | --- |")
            for name, t in buckets.items():
                w(f"| {name} | {t / total * 100:.1f} % | {_us(own * t / total) if own else '–'} |")
        w("")
        w("Functions by own CPU (spent in the function itself, not in what it calls):")
        w("")
        w("| function | calls | own CPU | per job | share |")
        w("| --- | --- | --- | --- | --- |")
        for row in prof["top_own"]:
            w(f"| `{row['function']}` | {_n(row['calls'])} | {row['tottime']:.3f} s | "
              f"{row['tottime'] / n * 1e6:,.0f} µs | {row['tottime'] / prof['profiled_seconds'] * 100:.1f} % |")
        w("")
        w("Cumulative CPU (the function and all it calls) of queuectl's own functions:")
        w("")
        w("| function | calls | cumulative CPU | per job | share |")
        w("| --- | --- | --- | --- | --- |")
        for row in prof["top_cumulative"]:
            w(f"| `{row['function']}` | {_n(row['calls'])} | {row['cumtime']:.3f} s | "
              f"{row['cumtime'] / n * 1e6:,.0f} µs | {row['cumtime'] / prof['profiled_seconds'] * 100:.1f} % |")
    cont = res.get("contention")
    if cont:
        n = cont["jobs"]
        asked = ", ".join(
            f"{k} ms × {v}" for k, v in sorted(cont["requested_ms"].items(), key=lambda kv: int(kv[0]))
        )
        w("")
        w(f"### Lock waits of {cont['workers']} workers (strace)")
        w("")
        w(f"{cont['workers']} `worker run --burst` processes draining {_n(n)} jobs under "
          f"`strace -e trace=clock_nanosleep`: {_n(cont['sleeps'])} sleeps "
          f"({cont['sleeps'] / n:.2f} a job), {cont['slept_seconds']:.2f} s asleep in all. "
          f"Requested lengths: {asked or 'none'}. The 1, 2, 5, 10, 15 ms steps are SQLite's busy "
          "handler backing off while the other worker holds the write lock; strace slows the "
          "workers, so this shows the pattern more than the exact cost.")
    prof = res.get("profile_batch")
    if prof:
        n = prof["jobs"]
        w("")
        w(f"### Batch enqueue ({_n(n)} jobs, same profiler)")
        w("")
        w(f"{prof['profiled_seconds']:.2f} s of CPU in all under the profiler "
          f"({prof['profiled_seconds'] / n * 1e6:.1f} µs a job; {prof['wall']:.1f} s wall).")
        buckets = dict(sorted((prof.get("buckets") or {}).items(), key=lambda kv: -kv[1]))
        if buckets:
            total = sum(buckets.values()) or 1.0
            w("")
            w("By area: " + "; ".join(
                f"{name} {t / total * 100:.0f} %" for name, t in buckets.items() if t / total >= 0.005
            ) + ".")
        w("")
        w("| function | calls | own CPU | cumulative CPU | share (own) |")
        w("| --- | --- | --- | --- | --- |")
        for row in prof["top_own"]:
            w(f"| `{row['function']}` | {_n(row['calls'])} | {row['tottime']:.3f} s | {row['cumtime']:.3f} s | "
              f"{row['tottime'] / prof['profiled_seconds'] * 100:.1f} % |")
        w("")
        w("| queuectl function | calls | cumulative CPU | share |")
        w("| --- | --- | --- | --- |")
        for row in prof["top_cumulative"]:
            w(f"| `{row['function']}` | {_n(row['calls'])} | {row['cumtime']:.3f} s | "
              f"{row['cumtime'] / prof['profiled_seconds'] * 100:.1f} % |")
    w("")
    w("![throughput vs workers](throughput.png)")
    w("")
    w(METHOD.format(
        jobs=_n(cfg.get("jobs")), rq_jobs=_n(cfg.get("rq_jobs")), nq_jobs=_n(cfg.get("nq_jobs")), spawn=_n(cfg.get("spawn_count")),
        idle=cfg.get("pickup_idle"), window=cfg.get("idle_window"), claims=cfg.get("depth_claims"),
        pickups=cfg.get("pickup_samples"), enq=cfg.get("enqueue_samples"),
    ))
    return "\n".join(out) + "\n"


METHOD = """## How each figure is measured

All systems run the same job, `/bin/sh -c true` (`true` is a builtin of
dash, so a job is exactly one shell process), in a fresh temp directory per
measurement, with the system's defaults unless stated here. Times come from
the monotonic clock, which Linux shares across processes.

- **Spawn limits.** One Python process calls
  `subprocess.run(["/bin/sh", "-c", "true"])` {spawn} times back to back:
  jobs/s. For 2-way, two Python processes each do half, started first and
  released at one common instant, so interpreter start-up is not counted.
  These are what a zero-overhead worker (or two) written in Python could
  reach here. `python -c pass` is the wall time of the interpreter running
  the benchmark, median of repeated calls.
- **Drain, queuectl.** {jobs} jobs are enqueued with `queuectl enqueue -f`,
  then 1 or 2 `queuectl worker run --burst` processes are started at once
  and waited for. Throughput = jobs / (earliest `started_at`, which is the
  first claim, to latest `finished_at`), as stored by queuectl and read back
  with `queuectl list --json`. Own CPU per job: user+system seconds of the
  worker processes (not of the job shells), sampled with psutil, minus what
  the same workers spend starting and stopping on an empty queue, / jobs.
- **Drain, task-spooler.** A private server (`TS_SOCKET` in the temp dir,
  `TS_SLOTS` = workers). Its slots are first filled with gate jobs blocked on
  a FIFO, the jobs are queued with one `tsp /bin/sh -c true` call each, a
  `tsp -w LAST` waiter is attached, and the clock runs from opening the gate
  to the waiter returning (and any job still running finishing). Each queued
  tsp job keeps a client process connected to the server, and the server
  takes at most 1,000 connections, so tsp cannot hold {jobs} queued jobs: the
  drain runs as gated batches of at most 800 whose spans are added up.
- **Drain, nq.** nq has no workers: each `nq CMD` forks a process that waits
  (flock) for every earlier job in its directory, so one directory is one
  serial queue and "2 workers" is two directories fed round-robin. Each
  directory starts with a gate job on a FIFO; the clock runs from opening
  the gate to `nq -w` (waits for every job) returning in each directory.
  nq keeps each finished job's output file (no `-c`), as by default. nq runs
  {nq_jobs} jobs: every nq job checks the lock of every earlier job file in
  its directory, so its cost per job grows with the queue, and 2,000 jobs
  take over a minute a run (about 25-40 jobs/s with 1 directory). The
  smaller count flatters nq, if anything.
- **Drain, Huey.** `SqliteHuey` with its defaults; the jobs are enqueued
  through the API by a separate Python process, then
  `huey_consumer -w N -k process` is started. The task runs the command with
  `subprocess.run(cmd, shell=True)` and appends the wall-clock time just
  before and after to a log file; throughput = jobs / (first start to last
  finish). Own CPU per job: consumer plus its worker processes, minus a
  consumer started on an empty queue and stopped once its workers are up.
- **Drain, RQ** (when Debian's `redis-server` installs): a private Redis on
  127.0.0.1, the same task and timing as Huey, `rq worker --burst` x N
  (default worker class, which forks a work horse per job). RQ runs
  {rq_jobs} jobs instead of {jobs}, because it is slow enough that the full
  count would take minutes; its rate is per job all the same.
- **CLI enqueue latency.** Wall time of one `queuectl --home H enqueue
  '{{"command": "true"}}'` process, {enq} calls per repeat against a queue
  created beforehand, with no worker running; the median of all calls.
  The console script is run directly (not a pyenv shim, which would add
  ~50 ms of bash). queuectl is measured as committed at HEAD: `git archive`
  into a temp dir, byte-compiled as pip would on install, first on
  PYTHONPATH, with a console script like pip's (`--tree` measures the
  installed working tree instead).
- **Batch enqueue.** `queuectl enqueue -f FILE` of a JSON-lines file
  (`{{"command": "true"}}` per line) into a fresh queue: jobs / wall time of
  the whole CLI call, validation and the one transaction included; the
  stored count is checked with `status --json`.
- **Pick-up latency.** An idle worker (queuectl `worker run`; a tsp server
  with 1 slot; nq itself; a Huey consumer with 1 process worker; an RQ
  worker) is given one job whose command is `echo x > FIFO`. A thread of the
  benchmark waits in poll() on the FIFO from before the enqueue call, so the
  instant the job's shell writes is caught even if it comes before the
  enqueue call has returned. Before each sample the system has been idle for
  {idle} s plus a random 0-0.5 s (so a system that polls on a timer is
  caught at a random phase); one unmeasured job warms each system up first; {pickups} samples
  per system per repeat, p50/p95 over all of them.
- **Idle cost.** Every system's idle worker runs at once, in fresh queues;
  after 3 s to settle, the user+system CPU seconds of the worker's process
  tree (Huey: consumer and its workers; tsp: its server; RQ: worker and
  redis-server), measured from /proc schedstat, over a {window} s
  window, as a share of one core.
- **Depth.** Two queues are filled with `enqueue -f`; the bench then opens
  each through queuectl's storage API as a worker does (`open_storage(home,
  durable=False)`) and times `claim()` ({claims} per repeat per queue),
  completing each claimed job untimed; after each repeat the queue is
  topped back up with `enqueue -f`, so every repeat starts at full depth.
  The median claim time is compared between the deep and the shallow queue.
"""


def _rng(entry):
    if not entry:
        return "–"
    if entry.get("runs", 1) > 1:
        return f"{_n(entry['rate'])} ({_n(entry['min'])}–{_n(entry['max'])})"
    return _n(entry["rate"])


def _load(la):
    return "?" if not la else f"{la[0]:.2f}"


def _ordered(systems):
    keys = [k for k in ORDER if k in systems] + sorted(k for k in systems if k not in ORDER)
    return [systems[k] for k in keys]


# --------------------------------------------------------------------------
# plot and console summary
# --------------------------------------------------------------------------


def write_plot(res, path):
    f = figures(res)
    if not f["drain"]:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    if f["serial"] and f["two_way"]:
        ax.plot([1, 2], [f["serial"], f["two_way"]], "k--", marker="s", label="machine limit (spawn /bin/sh)")
    main_jobs = res["meta"].get("config", {}).get("jobs")
    for key in _systems(res, f["drain"]):
        d = f["drain"][key]
        xs = [w for w in (1, 2) if w in d]
        ys = [d[w]["rate"] for w in xs]
        jobs = d[xs[0]].get("jobs")
        label = _name(res, key) + (f" ({jobs:,} jobs)" if jobs and jobs != main_jobs else "")
        style = dict(linewidth=2.5, marker="o", markersize=8) if key == "queuectl" else dict(marker="o")
        ax.plot(xs, ys, label=label, **style)
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(6, 3), fontsize=8)
    ax.set_xticks([1, 2])
    ax.set_xlim(0.8, 2.35)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("workers")
    ax.set_ylabel("jobs/s (no-op /bin/sh -c true jobs)")
    meta = res["meta"]
    ax.set_title(f"Drain throughput vs workers ({meta.get('machine', {}).get('cpus', '?')} cores, {meta.get('started', '')[:10]})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def summary(res):
    f = figures(res)
    lines = [
        f"limits: serial {_n(f['serial'])} jobs/s, 2-way {_n(f['two_way'])} jobs/s, python -c pass {_ms(f['py'])}"
    ]
    for key in _systems(res, f["drain"]):
        d = f["drain"][key]
        parts = [f"{w}w {_n(d[w]['rate'])} jobs/s ({_ratio(d[w]['ratio'])})" for w in (1, 2) if w in d]
        lines.append(f"drain {key}: " + ", ".join(parts))
    if f["enqueue"]:
        lines.append(f"enqueue: {_ms(f['enqueue'])} ({_ratio(f['enqueue_x'])}x python)")
    if f["batch"]:
        lines.append(f"batch: {_n(f['batch'])} jobs/s")
    for key, p in f["pickup"].items():
        lines.append(f"pick-up {key}: p50 {_ms(p['p50'])}, p95 {_ms(p['p95'])}")
    for key, v in f["idle"].items():
        lines.append(f"idle {key}: {v * 100:.2f} % of a core")
    if f["depth"]:
        lines.append("depth: " + ", ".join(f"{_n(k)}: {_us(v)}" for k, v in sorted(f["depth"].items())))
    if res.get("errors"):
        lines.append(f"{len(res['errors'])} error(s): see RESULTS.md")
    return "\n".join(lines)
