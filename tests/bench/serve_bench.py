#!/usr/bin/python3
"""serve_bench.py — the HTTP benchmark of `fisherd serve` (issue 5, "Speed"):
`wrk` against a running daemon, idle and while a mit-b0 job trains, printed
side by side with the issue's targets (`make bench` runs it after the
training-step benchmark).

    /usr/bin/python3 tests/bench/serve_bench.py              the full run (~7 min)
    /usr/bin/python3 tests/bench/serve_bench.py --quick      a smoke run (~2 min, not the issue's sizes)
    /usr/bin/python3 tests/bench/serve_bench.py --port 18080 --keep --bin build/fisherd

What it does
  1. Starts build/fisherd serve on 127.0.0.1:PORT (a free port unless --port)
     with a temporary --data-dir, and reads its VmRSS once /healthz answers.
  2. Makes a job with one group holding a 10 000-point drift series: the
     cheapest spec that gets there is `tiny` at 32x32, batch 2, strategy
     fisher, ema_interval 1 (a measurement at every step, step 0 included),
     freeze_interval beyond the steps (nothing freezes), 10 000 steps, 16
     training images and no evaluation until the end (~70 s on 2 cores).
     Every one of its 478 groups then has 10 000 points; the benchmark reads
     the first group's.
  3. wrk, idle: GET /api/v1/jobs/{id}/drift?group=KEY&max_points=1000 and
     GET /api/v1/jobs/{id}.
  4. Submits a mit-b0 job (128x128, batch 4, strategy fisher with the
     reference config's ema_interval 300 / freeze_interval 3000, eval only
     at the end) and, once it is past its first steps, alternates windows
     of equal length: no load, drift load, no load, job load, no load, and
     then the same two loads paced to a dashboard-like rate (--paced-rate).
     The job's progress (GET /api/v1/jobs/{id}, 4 polls a second in every
     window alike) gives steps/s per window as the slope of a least-squares
     line through (time, step); a loaded window is compared with the mean
     of the no-load windows either side of it, so a neighbour's job that
     starts or stops mid-run skews the ratio less. All windows end before
     step 3000, the first freeze decision, which changes the step's cost
     (the script says so if one does not).
  5. Cancels the mit-b0 job, reads VmRSS again ("after the benchmark"),
     stops the daemon by its PID (SIGTERM, SIGKILL after 20 s) and deletes
     the temp dir unless --keep.

wrk threads and connections (-t1 -c4 by default). The machine has 2 cores
and wrk shares them with the daemon, so one wrk thread: one epoll loop
drives >20 000 req/s here, and a second would take CPU from the server it
measures (with -t2 the drift read's p99 went from ~12 ms to ~105 ms). Four
connections = two per core: the daemon runs one thread per connection, so
2 would already keep both cores busy (the drift read peaks there, ~750
req/s), 4 covers the moments a handler waits (mutex, socket), and beyond
that extra connections only queue — p50/p99 grow in proportion with no
gain in req/s (c=8: p99 ~42 ms, c=16: ~49 ms for the same ~740 req/s).
wrk is closed-loop: each connection sends its next request as soon as the
previous one is answered, so the unpaced runs measure the daemon
saturated; while training, that load takes whatever CPU the scheduler
gives it from the training threads. The paced runs (wrk's delay() hook,
--paced-rate requests/s in total) show what a realistic dashboard load
costs instead.

Also printed: the daemon's CPU per request (process CPU time over the run /
requests), wrk's own CPU, and the CPU other processes used meanwhile
(/proc/stat busy time minus the daemon's and wrk's, in cores) — on a
shared machine that last column says whether a row is to be trusted.

The tables go to stdout and, as markdown, to tests/bench/results/serve.md
(git-ignored: results belong to a machine). Needs wrk (Debian `wrk`; `make
bench` installs it).
"""

import argparse
import datetime
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
RESULTS = os.path.join(HERE, "results", "serve.md")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The targets.
TARGET_DRIFT_RPS = 10000.0
TARGET_DRIFT_P99_IDLE_MS = 10.0
TARGET_P99_TRAINING_MS = 50.0
TARGET_SLOWDOWN = 0.10
TARGET_RSS_MB = 20.0

FREEZE_INTERVAL = 3000          # the reference SegFormer config's
EMA_INTERVAL = 300


def drift_spec(steps):
    """The cheapest spec whose groups get `steps` drift points each."""
    return {
        "name": "serve-bench-drift",
        "base_model": {"arch": "segformer", "config": "tiny"},
        "image_size": 32, "batch_size": 2, "strategy": "fisher", "steps": steps,
        "fisher": {"ema_interval": 1, "freeze_interval": 10 * steps},
        "eval_interval": 10 * steps,
        "data": {"train": {"synthetic": {"domain": "concrete", "count": 16, "seed": 1}},
                 "val": {"synthetic": {"domain": "concrete", "count": 2, "seed": 2}}},
    }


def train_spec(steps):
    """mit-b0 at the reference config's intervals; no evaluation until the
    end (a validation pass would stall progress inside a window)."""
    return {
        "name": "serve-bench-mit-b0",
        "base_model": {"arch": "segformer", "config": "mit-b0"},
        "image_size": 128, "batch_size": 4, "strategy": "fisher", "steps": steps,
        "fisher": {"ema_interval": EMA_INTERVAL, "freeze_interval": FREEZE_INTERVAL},
        "eval_interval": 10 * steps,
        "data": {"train": {"synthetic": {"domain": "concrete", "count": 64, "seed": 1}},
                 "val": {"synthetic": {"domain": "concrete", "count": 4, "seed": 2}}},
    }


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------

def log(msg):
    print(f"[serve_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, base):
        self.base = base

    def call(self, method, path, body=None, timeout=30):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def get(self, path, **kw):
        status, doc = self.call("GET", path, **kw)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {doc}")
        return doc

    def submit(self, spec):
        status, doc = self.call("POST", "/api/v1/jobs", spec)
        if status != 201:
            raise RuntimeError(f"POST /api/v1/jobs: {status} {doc}")
        return doc["id"]


def proc_status(pid):
    """VmRSS and its parts, in MB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "Threads"):
                out[k] = int(v.split()[0]) / (1024.0 if k != "Threads" else 1.0)
    return out


def proc_cpu(pid):
    """utime + stime of a process (its dead threads included), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu(pid):
    """{tid: (comm, seconds)} of a process's live threads."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[tid] = (comm, (int(fields[11]) + int(fields[12])) / CLK_TCK)
        except OSError:             # the thread ended meanwhile
            pass
    return out


class CpuMeter:
    """CPU used between start() and stop(): by the daemon, split into its
    HTTP side (libmicrohttpd's threads, named MHD-*, including those that
    came and went) and the rest (the loop, the store writer, the training
    worker and its OpenMP team), by wrk, and by every other process."""

    def __init__(self, pid):
        self.pid = pid

    def start(self):
        self.t0 = time.monotonic()
        self.busy0, self.steal0 = machine_cpu()
        self.p0 = proc_cpu(self.pid)
        self.th0 = thread_cpu(self.pid)

    def stop(self, wrk_cpu=0.0):
        th1 = thread_cpu(self.pid)
        p1 = proc_cpu(self.pid)
        busy1, steal1 = machine_cpu()
        self.t1 = time.monotonic()
        dt = self.t1 - self.t0
        rest = sum(c1 - self.th0[tid][1] for tid, (comm, c1) in th1.items()
                   if tid in self.th0 and not comm.startswith("MHD"))
        daemon = p1 - self.p0
        return {"t0": self.t0, "t1": self.t1,
                "daemon_cpu": daemon, "daemon_cores": daemon / dt,
                "http_cpu": max(0.0, daemon - rest), "http_cores": max(0.0, daemon - rest) / dt,
                "rest_cores": rest / dt, "wrk_cores": wrk_cpu / dt,
                "other_cores": max(0.0, (busy1 - self.busy0) - daemon - wrk_cpu) / dt,
                "steal_cores": (steal1 - self.steal0) / dt}


def machine_cpu():
    """(busy, steal) seconds summed over all CPUs since boot; busy excludes
    idle, iowait and steal."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq = v[:7]
    steal = v[7] if len(v) > 7 else 0
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def fmt(v, digits=1):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}".replace(",", " ")
    return f"{v:.{digits}f}"


def verdict(ok):
    return "PASS" if ok else "MISS"


# ---------------------------------------------------------------------------
# the daemon
# ---------------------------------------------------------------------------

class Daemon:
    def __init__(self, binary, port, data_dir, log_path):
        self.port = port
        self.log_path = log_path
        self.logf = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir],
            stdout=self.logf, stderr=subprocess.STDOUT, cwd=ROOT)
        self.pid = self.proc.pid
        self.client = Client(f"http://127.0.0.1:{port}")

    def wait_ready(self, timeout=15.0):
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fisherd exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.client.call("GET", "/healthz", timeout=2)[0] == 200:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"fisherd did not answer /healthz within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n=20):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        """SIGTERM by PID (graceful: running jobs checkpoint), SIGKILL after 20 s."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                log(f"fisherd (pid {self.pid}) still up 20 s after SIGTERM: SIGKILL")
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self.logf.close()
        return self.proc.returncode


def wait_job(client, job, until, timeout, what):
    """Polls the job until until(doc) is true; fails if it ends otherwise."""
    t_end = time.monotonic() + timeout
    while True:
        doc = client.get(f"/api/v1/jobs/{job}")
        if until(doc):
            return doc
        if doc["status"] in ("failed", "cancelled", "succeeded", "interrupted"):
            raise RuntimeError(f"{job} ended {doc['status']} ({doc.get('reason')}) before {what}")
        if time.monotonic() > t_end:
            raise RuntimeError(f"{job}: not {what} after {timeout} s (progress {doc['progress']})")
        time.sleep(0.5)


# ---------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------

LUA = """-- written by serve_bench.py
local pace = %(pace)d
if pace > 0 then
  function delay() return pace end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "SERVE_BENCH {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"bytes\\": %%d, " ..
    "\\"connect\\": %%d, \\"read\\": %%d, \\"write\\": %%d, \\"status\\": %%d, \\"timeout\\": %%d, " ..
    "\\"p50_us\\": %%d, \\"p90_us\\": %%d, \\"p99_us\\": %%d, \\"max_us\\": %%d, \\"mean_us\\": %%f}\\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def idle_priority():
    """preexec_fn: the load generator runs as SCHED_IDLE (see --client-priority)."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


CLIENT_PRIORITY = {"idle": idle_priority, "normal": None}


def run_wrk(url, threads, conns, seconds, daemon_pid, tmp, pace_ms=0, client="idle"):
    """One wrk --latency run. Returns its numbers plus the CPU the daemon,
    wrk and everything else used meanwhile."""
    script = os.path.join(tmp, f"wrk_pace{pace_ms}.lua")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(LUA % {"pace": pace_ms})
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s",
           "-s", script, url]
    load1 = os.getloadavg()[0]
    meter = CpuMeter(daemon_pid)
    meter.start()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=CLIENT_PRIORITY[client])
    try:
        out = p.stdout.read().decode(errors="replace")
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    except BaseException:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        raise
    wrk_cpu = ru.ru_utime + ru.ru_stime
    cpu = meter.stop(wrk_cpu)
    line = next((l for l in out.splitlines() if l.startswith("SERVE_BENCH ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({p.returncode}):\n{out}")
    r = json.loads(line[len("SERVE_BENCH "):])
    dur = r["duration_us"] / 1e6
    r.update(cpu)
    r.update({
        "cmd": " ".join(cmd), "load1": load1,
        "rps": r["requests"] / dur if dur > 0 else float("nan"),
        "p50_ms": r["p50_us"] / 1e3, "p90_ms": r["p90_us"] / 1e3, "p99_ms": r["p99_us"] / 1e3,
        "max_ms": r["max_us"] / 1e3,
        "errors": r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"],
        "http_us_per_req": 1e6 * cpu["http_cpu"] / r["requests"] if r["requests"] else float("nan"),
        "raw": out,
    })
    return r


# ---------------------------------------------------------------------------
# training progress
# ---------------------------------------------------------------------------

class ProgressPoller(threading.Thread):
    """(time, step) of a job, `hz` times a second, from its record."""

    def __init__(self, client, job, hz=4.0):
        super().__init__(daemon=True)
        self.client, self.job, self.period = client, job, 1.0 / hz
        self.samples = []           # (monotonic mid-request time, step)
        self.status = None
        self.stop_evt = threading.Event()
        self.error = None

    def run(self):
        while not self.stop_evt.is_set():
            t0 = time.monotonic()
            try:
                doc = self.client.get(f"/api/v1/jobs/{self.job}", timeout=30)
                t1 = time.monotonic()
                self.status = doc["status"]
                step = (doc.get("progress") or {}).get("step")
                if step is not None:
                    self.samples.append(((t0 + t1) / 2, int(step)))
            except Exception as e:          # keep polling; report the last error
                self.error = repr(e)
            self.stop_evt.wait(max(0.0, self.period - (time.monotonic() - t0)))

    def stop(self):
        self.stop_evt.set()
        self.join()

    def rate(self, t0, t1):
        """Steps/s over [t0, t1]: the least-squares slope through the samples."""
        pts = [(t, s) for t, s in self.samples if t0 <= t <= t1]
        if len(pts) < 3:
            return float("nan"), pts[-1][1] if pts else None
        mt = statistics.fmean(t for t, _ in pts)
        ms = statistics.fmean(s for _, s in pts)
        num = sum((t - mt) * (s - ms) for t, s in pts)
        den = sum((t - mt) ** 2 for t, _ in pts)
        return (num / den if den > 0 else float("nan")), pts[-1][1]

    def last_step(self):
        return self.samples[-1][1] if self.samples else 0


def idle_window(seconds, daemon_pid):
    meter = CpuMeter(daemon_pid)
    meter.start()
    time.sleep(seconds)
    r = meter.stop()
    r["load1"] = os.getloadavg()[0]
    return r


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "fisherd"), help="the fisherd binary")
    ap.add_argument("--port", type=int, default=0, help="listen port (default: a free one)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: a 2 000-point series, 3 s wrk runs, 6 s training windows")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (database, daemon log)")
    ap.add_argument("--client-priority", choices=sorted(CLIENT_PRIORITY), default="idle",
                    help="wrk's scheduling: idle (default) — in use the clients are other machines, so the "
                         "load generator takes only CPU nobody else wants and the step's slowdown is the "
                         "daemon's own; normal — wrk competes with training like any process")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads [1]")
    ap.add_argument("--connections", type=int, default=4, help="wrk connections [4]")
    ap.add_argument("--duration", type=float, help="seconds per idle wrk run [15; quick 3]")
    ap.add_argument("--window", type=float, help="seconds per training window [20; quick 6]")
    ap.add_argument("--points", type=int, help="drift points of the series read [10000; quick 2000]")
    ap.add_argument("--paced-rate", type=float, default=100.0,
                    help="total req/s of the paced loads while training; 0 = none [100]")
    ap.add_argument("--no-save", action="store_true", help=f"do not write {os.path.relpath(RESULTS, ROOT)}")
    args = ap.parse_args()

    duration = args.duration or (3 if args.quick else 15)
    window = args.window or (6 if args.quick else 20)
    points = args.points or (2000 if args.quick else 10000)
    if shutil.which("wrk") is None:
        sys.exit("serve_bench: wrk not found (Debian: apt-get install wrk; `make bench` does it)")
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"serve_bench: {args.bin} not built (make -j2)")
    if args.connections < args.threads:
        sys.exit("serve_bench: wrk needs at least as many connections as threads")

    tmp = tempfile.mkdtemp(prefix="serve_bench.")
    port = args.port or free_port()
    started = datetime.datetime.now()
    load_start = os.getloadavg()
    log(f"temp dir {tmp}, port {port}, load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    daemon = Daemon(args.bin, port, os.path.join(tmp, "data"), os.path.join(tmp, "fisherd.log"))
    res = {"rss": {}, "wrk": [], "windows": []}
    poller = None
    try:
        daemon.wait_ready()
        time.sleep(0.5)
        res["rss"]["start"] = proc_status(daemon.pid)
        log(f"fisherd pid {daemon.pid}: VmRSS {res['rss']['start']['VmRSS']:.1f} MB after start")
        c = daemon.client
        base = f"http://127.0.0.1:{port}"

        # -- the 10k-point series
        t = time.monotonic()
        j_drift = c.submit(drift_spec(points))
        log(f"{j_drift}: tiny 32x32, drift every step, {points} steps …")
        doc = wait_job(c, j_drift, lambda d: d["status"] == "succeeded", 3600, "succeeded")
        res["drift_job_s"] = time.monotonic() - t
        groups = c.get(f"/api/v1/jobs/{j_drift}/groups")["groups"]
        key = groups[0]["key"]
        q = urllib.parse.urlencode({"group": key, "max_points": 1000})
        drift_path = f"/api/v1/jobs/{j_drift}/drift?{q}"
        series = c.get(drift_path)["series"]
        if len(series) != 1 or series[0]["points"] < points or len(series[0]["step"]) > 1000:
            raise RuntimeError(f"unexpected drift answer: {len(series)} series, "
                               f"{series[0]['points'] if series else 0} points")
        res["series_points"], res["series_shown"] = series[0]["points"], len(series[0]["step"])
        body = urllib.request.urlopen(base + drift_path).read()
        res["drift_bytes"] = len(body)
        res["job_bytes"] = len(urllib.request.urlopen(base + f"/api/v1/jobs/{j_drift}").read())
        log(f"{j_drift} done in {res['drift_job_s']:.0f} s: {len(groups)} groups, "
            f"{key}: {res['series_points']} points, {res['series_shown']} returned "
            f"({res['drift_bytes']} bytes)")
        urls = {"drift": base + drift_path, "job": base + f"/api/v1/jobs/{j_drift}"}
        res["rss"]["series"] = proc_status(daemon.pid)

        # -- idle
        for name in ("drift", "job"):
            log(f"wrk idle: {name} read, {duration:g} s")
            r = run_wrk(urls[name], args.threads, args.connections, duration, daemon.pid, tmp,
                        client=args.client_priority)
            r.update(request=name, phase="idle", pace=0)
            res["wrk"].append(r)
            log(f"  {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                f"{r['errors']} errors")

        res["rss"]["idle_load"] = proc_status(daemon.pid)

        # -- while mit-b0 trains
        j_train = c.submit(train_spec(100000))
        warm_steps = 10 if args.quick else 30
        log(f"{j_train}: mit-b0 128x128 batch 4, fisher {EMA_INTERVAL}/{FREEZE_INTERVAL}; "
            f"warming up ({warm_steps} steps) …")
        wait_job(c, j_train, lambda d: d["status"] == "running" and d["progress"]["step"] >= warm_steps,
                 600, f"at step {warm_steps}")
        poller = ProgressPoller(c, j_train)
        poller.start()
        plan = [("none", None, 0), ("drift", "drift", 0), ("none", None, 0), ("job", "job", 0),
                ("none", None, 0)]
        if args.paced_rate > 0:
            pace = max(1, round(args.connections * 1000.0 / args.paced_rate))
            plan += [("drift, paced", "drift", pace), ("none", None, 0), ("job, paced", "job", pace),
                     ("none", None, 0)]
        for label, req, pace in plan:
            if poller.status not in (None, "running"):
                raise RuntimeError(f"{j_train} is {poller.status}, no longer running")
            if req is None:
                log(f"window: no load, {window:g} s")
                w = idle_window(window, daemon.pid)
            else:
                log(f"window: {label} load, {window:g} s")
                w = run_wrk(urls[req], args.threads, args.connections, window, daemon.pid, tmp, pace,
                            client=args.client_priority)
                w.update(request=req, phase="training", pace=pace)
                res["wrk"].append(w)
            w["label"] = label
            w["steps_per_s"], w["step_at_end"] = poller.rate(w["t0"], w["t1"])
            log(f"  {w['steps_per_s']:.2f} steps/s (step {w['step_at_end']})"
                + (f"; {w['rps']:.0f} req/s, p99 {w['p99_ms']:.2f} ms" if req else ""))
            res["windows"].append(w)
        poller.stop()
        res["poll_error"] = poller.error
        res["freeze_crossed"] = poller.last_step() >= FREEZE_INTERVAL
        # each loaded window against the mean of its unloaded neighbours
        ws = res["windows"]
        for i, w in enumerate(ws):
            if w["label"] == "none":
                continue
            nb = [ws[k]["steps_per_s"] for k in (i - 1, i + 1)
                  if 0 <= k < len(ws) and ws[k]["label"] == "none"]
            w["base_steps_per_s"] = statistics.fmean(nb) if nb else float("nan")
            w["slowdown"] = w["base_steps_per_s"] / w["steps_per_s"] - 1.0

        status, _ = c.call("POST", f"/api/v1/jobs/{j_train}/cancel")
        log(f"{j_train}: cancel → {status}")
        wait_job(c, j_train, lambda d: d["status"] in ("cancelled", "succeeded", "failed"), 120,
                 "stopped")
        time.sleep(2.0)
        res["rss"]["end"] = proc_status(daemon.pid)
    finally:
        if poller is not None and poller.is_alive():
            poller.stop()
        rc = daemon.stop()
        if rc not in (0, None):
            log(f"fisherd exited with {rc}; log tail:\n{daemon.log_tail()}")
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    res["load_end"] = os.getloadavg()
    report = render(res, args, duration, window, points, load_start, started)
    print(report)
    if not args.no_save:
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "w") as f:
            f.write(report)
        # the numbers, for report.py's one table
        with open(os.path.splitext(RESULTS)[0] + ".json", "w") as f:
            json.dump({"date": started.isoformat(timespec="seconds"), "quick": args.quick, **res}, f,
                      indent=1, default=str)
        log(f"wrote {os.path.relpath(RESULTS, ROOT)} and its .json")


def render(res, args, duration, window, points, load_start, started):
    out = []
    w = out.append
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    w(f"# fisherd serve: HTTP benchmark ({started:%Y-%m-%d %H:%M}, source {rev}"
      f"{' + local changes' if dirty else ''}{', QUICK' if args.quick else ''})")
    w("")
    w(f"{os.cpu_count()} CPUs; load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} at the "
      f"start, {res['load_end'][0]:.2f} {res['load_end'][1]:.2f} {res['load_end'][2]:.2f} at the end. "
      f"wrk -t{args.threads} -c{args.connections} --latency, {duration:g} s idle, {window:g} s windows "
      f"while training. Drift read: one group's {res['series_points']}-point series → "
      f"{res['series_shown']} points ({res['drift_bytes']} bytes); job read: {res['job_bytes']} bytes. "
      f"The series' job took {res['drift_job_s']:.0f} s to make.")
    w("")
    w("| request | while | load | req/s | p50 ms | p90 ms | p99 ms | max ms | errors "
      "| HTTP CPU µs/req | HTTP cores | training cores | wrk cores | others' cores |")
    w("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in res["wrk"]:
        what = "drift, 1 group, max_points=1000" if r["request"] == "drift" else "job record"
        load = f"paced ({args.paced_rate:g}/s asked)" if r["pace"] else "saturating"
        w(f"| {what} | {'idle' if r['phase'] == 'idle' else 'mit-b0 trains'} | {load} | {fmt(r['rps'], 0)} "
          f"| {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | {r['errors']} "
          f"| {fmt(r['http_us_per_req'], 0)} | {r['http_cores']:.2f} "
          f"| {r['rest_cores']:.2f} | {r['wrk_cores']:.2f} "
          f"| {r['other_cores']:.2f} |")
    w("")
    idle = {r["request"]: r for r in res["wrk"] if r["phase"] == "idle"}
    allw = res["wrk"] + res["windows"]
    others = statistics.fmean(x["other_cores"] for x in allw)
    steal = statistics.fmean(x["steal_cores"] for x in allw)
    w(f"CPU per request is the daemon's HTTP threads' CPU time over the requests served; at that cost "
      f"{os.cpu_count()} otherwise idle cores would serve at most "
      + ", ".join(f"{fmt(os.cpu_count() * 1e6 / idle[k]['http_us_per_req'], 0)} {k} reads/s"
                  for k in ("drift", "job") if k in idle)
      + f" (the {fmt(TARGET_DRIFT_RPS, 0)} req/s target allows "
      f"{fmt(os.cpu_count() * 1e6 / TARGET_DRIFT_RPS, 0)} µs). Other processes used {others:.2f} "
      f"cores on average during the measurements" + (f", the hypervisor stole {steal:.2f}" if steal >= 0.01 else "")
      + (" — a busy machine: repeat when it is quieter." if others > 0.25 else "."))
    w("")
    w(f"Training (mit-b0 128×128, batch 4, fisher ema_interval {EMA_INTERVAL}, 2 threads): steps/s per "
      f"{window:g} s window, the slope of (time, step) from the job's progress; each loaded window "
      f"against the mean of the no-load windows beside it.")
    w("")
    w("| window | HTTP load | req/s | steps/s | ms/step | no-load ms/step | step slowed by | training cores "
      "| HTTP cores | wrk cores | others' cores | step at end |")
    w("|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for i, x in enumerate(res["windows"]):
        sps = x["steps_per_s"]
        base = x.get("base_steps_per_s")
        slowed = f"{100 * x['slowdown']:+.1f}%" if "slowdown" in x else "—"
        w(f"| {i + 1} | {x['label']} | {fmt(x.get('rps'), 0) if 'rps' in x else '—'} | {sps:.2f} "
          f"| {1000 / sps:.1f} | {fmt(1000 / base) if base else '—'} "
          f"| {slowed} "
          f"| {x['rest_cores']:.2f} | {x['http_cores']:.2f} | {x['wrk_cores']:.2f} | {x['other_cores']:.2f} "
          f"| {x['step_at_end']} |")
    if res.get("freeze_crossed"):
        w("")
        w(f"**Warning**: the job passed step {FREEZE_INTERVAL} (its first freeze decision) during the "
          "windows; steps after it cost less, so the last windows are not comparable.")
    if res.get("poll_error"):
        w("")
        w(f"(a progress poll failed at least once: {res['poll_error']})")
    w("")

    # targets
    idle_drift = next(r for r in res["wrk"] if r["request"] == "drift" and r["phase"] == "idle")
    sat = {r["request"]: r for r in res["wrk"] if r["phase"] == "training" and not r["pace"]}
    paced = {r["request"]: r for r in res["wrk"] if r["phase"] == "training" and r["pace"]}
    by_label = {x["label"]: x for x in res["windows"]}
    rows = [
        ("drift read, idle: throughput", f"{fmt(idle_drift['rps'], 0)} req/s",
         f"≥ {fmt(TARGET_DRIFT_RPS, 0)} req/s", idle_drift["rps"] >= TARGET_DRIFT_RPS),
        ("drift read, idle: p99", f"{idle_drift['p99_ms']:.2f} ms", f"< {TARGET_DRIFT_P99_IDLE_MS:g} ms",
         idle_drift["p99_ms"] < TARGET_DRIFT_P99_IDLE_MS),
    ]
    for kind, lab in (("drift", "drift read"), ("job", "job read")):
        for src, how in ((sat, "saturating"), (paced, "paced")):
            if kind in src:
                rows.append((f"{lab}, training ({how}): p99", f"{src[kind]['p99_ms']:.2f} ms",
                             f"< {TARGET_P99_TRAINING_MS:g} ms", src[kind]["p99_ms"] < TARGET_P99_TRAINING_MS))
    for label, lab in (("drift", "drift load, saturating"), ("job", "job load, saturating"),
                       ("drift, paced", "drift load, paced"), ("job, paced", "job load, paced")):
        x = by_label.get(label)
        if x and "slowdown" in x:
            rows.append((f"training step slowed, {lab}", f"{100 * x['slowdown']:+.1f}% "
                         f"({fmt(1000 / x['base_steps_per_s'])} → {fmt(1000 / x['steps_per_s'])} ms)",
                         f"≤ {100 * TARGET_SLOWDOWN:g}%", x["slowdown"] <= TARGET_SLOWDOWN))
    for when, lab in (("start", "right after start"), ("end", "after the benchmark (jobs done)")):
        s = res["rss"].get(when)
        if s:
            rows.append((f"daemon RSS, {lab}", f"{s['VmRSS']:.1f} MB (anon {s['RssAnon']:.1f}, "
                         f"file {s['RssFile']:.1f}; {int(s['Threads'])} threads)",
                         f"≤ {TARGET_RSS_MB:g} MB", s["VmRSS"] <= TARGET_RSS_MB))
    w("Daemon memory (/proc/PID/status; file = pages of mapped files, mostly the database that each "
      "pooled SQLite reader maps — shared with the page cache, counted once per mapping):")
    w("")
    w("| when | VmRSS MB | anon MB | file MB | threads |")
    w("|---|--:|--:|--:|--:|")
    for when, lab in (("start", "right after start"), ("series", "after making the series (job done)"),
                      ("idle_load", "after the idle wrk runs"),
                      ("end", "after the benchmark (mit-b0 job cancelled and stopped)")):
        x = res["rss"].get(when)
        if x:
            w(f"| {lab} | {x['VmRSS']:.1f} | {x['RssAnon']:.1f} | {x['RssFile']:.1f} | {int(x['Threads'])} |")
    w("")
    w("| target (issue 5) | measured | target | |")
    w("|---|---|---|---|")
    for name, meas, tgt, ok in rows:
        w(f"| {name} | {meas} | {tgt} | {verdict(ok)} |")
    w("")
    w(f"wrk command of the first row: `{res['wrk'][0]['cmd']}` (the Lua script only adds delay() "
      "for the paced rows and prints the numbers as JSON in done()).")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
