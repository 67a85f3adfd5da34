#!/usr/bin/python3
"""experiment.py — the paper's comparison, reproduced through fisherd's REST API.

    make experiment            the full run (~25-35 min on 2 quiet cores), writes docs/RESULTS.md
    make experiment QUICK=1    the same design, smaller and shorter (~1.5 min on 2 quiet cores;
                               5 min on the same 2 cores shared with a load average of 11)
    tests/bench/experiment.py --smallest --url http://127.0.0.1:8080 --out /tmp/R.md --images /tmp/img
                               the quick run's smallest case (seconds; tests/integration/test_experiment.py)

What it does: starts `fisherd serve` on 127.0.0.1 (a free port, a fresh data
dir; stopped by its PID at the end) or talks to a running daemon (--url).
Through the API alone it pretrains SegFormer on each pretraining domain
(`shapes`, and `wall` as a second setting: once per setting), fine-tunes
every pretrained model on the target domain (`concrete`) with each strategy
— `fisher` (reference estimator), `fisher` with the `ema` estimator, `full`,
`decoder`, `norm`, `bitfit` — with the same steps, data, learning rate and
fine-tuning seeds, evaluates in-distribution and zero-shot (`asphalt`,
`wall`, `tiles`), and sweeps `fisher.lambda` × `fisher.freeze_interval` on
the first setting. Then it reads everything back from the API (results,
the live-parameter series, every parameter group's depth and freeze step)
and writes docs/RESULTS.md with the tables, three SVG figures it draws
itself (docs/images/experiment-*.svg) and the raw numbers as JSON.

Folder datasets take the synthetic domains' place on the command line:
`--data-root DIR --pretrain a,b --target c --zero-shot d,e` where each
name is a synthetic domain or a folder under DIR holding images/ and
masks/ (a target folder with train/ and val/ inside uses them as the two
splits; otherwise the one folder is both, and the report says so).

Standard library only (urllib, json, subprocess): it runs wherever the
daemon builds. Whatever the numbers say goes into the report, including
where FisherAdapTune loses.
"""

import argparse
import datetime
import json
import math
import os
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import xml.sax.saxutils
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = ("concrete", "asphalt", "wall", "tiles", "shapes")
STRATEGIES = [  # (label, strategy, fisher overrides)
    ("fisher", "fisher", {"estimator": "reference"}),
    ("fisher-ema", "fisher", {"estimator": "ema"}),
    ("full", "full", None),
    ("decoder", "decoder", None),
    ("norm", "norm", None),
    ("bitfit", "bitfit", None),
]
STAGES = ["encoder stage 1", "encoder stage 2", "encoder stage 3", "encoder stage 4", "decode head"]
STAGE_COLORS = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#d62728", "#7f7f7f"]
STRATEGY_COLORS = {"fisher": "#d62728", "fisher-ema": "#ff7f0e", "full": "#1f77b4", "decoder": "#2ca02c",
                   "norm": "#9467bd", "bitfit": "#8c564b"}

# The sizes. The full run's are set from measured step times: SegFormer
# `tiny` at 128x128, batch 8, takes ~55 ms a step with 2 threads on a quiet
# 2-core Xeon, ~75 ms with 1 thread; two 1-thread jobs side by side get
# ~1.5x the throughput of one 2-thread job (README, Speed). 2 pretrainings
# of 1500 steps + 36 fine-tunes and 24 sweep runs of 600 steps ≈ 39 000
# steps ≈ 25-35 min. Freezing must happen inside the run: drift every
# ema_interval steps, a decision every freeze_interval.
MODES = {
    "full": dict(config="tiny", image_size=128, batch_size=8, lr=1e-3, pretrain_steps=1500, steps=600,
                 eval_interval=100, seeds=[1, 2, 3], settings=["shapes", "wall"], pretrain_count=1000,
                 train_count=800, val_count=100, zero_shot_count=100, ema_interval=5, freeze_interval=100,
                 sweep_lambdas=[0.5, 1.0, 2.0], sweep_freeze_intervals=[50, 100, 200], sweep_seeds=3),
    "quick": dict(config="tiny", image_size=64, batch_size=8, lr=1e-3, pretrain_steps=300, steps=150,
                  eval_interval=50, seeds=[1, 2], settings=["shapes", "wall"], pretrain_count=400,
                  train_count=400, val_count=50, zero_shot_count=50, ema_interval=2, freeze_interval=30,
                  sweep_lambdas=[0.5, 1.0, 2.0], sweep_freeze_intervals=[30, 60], sweep_seeds=1),
    # the quick run's smallest case: every strategy and a sweep, in seconds (the integration test)
    "smallest": dict(config="tiny", image_size=64, batch_size=4, lr=1e-3, pretrain_steps=60, steps=30,
                     eval_interval=10, seeds=[1], settings=["shapes"], pretrain_count=64,
                     train_count=64, val_count=16, zero_shot_count=16, ema_interval=1, freeze_interval=10,
                     sweep_lambdas=[0.5, 1.0, 2.0], sweep_freeze_intervals=[10], sweep_seeds=1),
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ the API

class Api:
    def __init__(self, base, token=None):
        self.base = base.rstrip("/")
        self.token = token

    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        for attempt in range(5):
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    payload = r.read()
                    return json.loads(payload) if payload else None
            except urllib.error.HTTPError as e:
                text = e.read().decode(errors="replace")
                raise SystemExit(f"experiment: {method} {path}: HTTP {e.code}: {text}")
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                if attempt == 4:
                    raise SystemExit(f"experiment: {method} {path}: {e}")
                time.sleep(1 + attempt)

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body):
        return self.request("POST", path, body)


class OwnDaemon:
    """`fisherd serve` started here: a free port, a fresh data dir, stopped by PID."""

    def __init__(self, binary, max_jobs, threads, data_root, keep_dir):
        self.binary, self.max_jobs, self.threads, self.data_root = binary, max_jobs, threads, data_root
        self.dir = Path(tempfile.mkdtemp(prefix="fisherd-experiment-"))
        self.keep_dir = keep_dir
        self.proc = None

    def start(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [str(self.binary), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(self.dir / "var"),
               "--max-jobs", str(self.max_jobs), "--threads", str(self.threads), "--log-level", "warn"]
        if self.data_root:
            cmd += ["--data-root", str(self.data_root)]
        self.logf = open(self.dir / "fisherd.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"experiment: fisherd exited with {self.proc.returncode}: "
                                 f"{(self.dir / 'fisherd.log').read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        log(f"fisherd serve (pid {self.proc.pid}) on {self.url}, data in {self.dir}")
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise SystemExit("experiment: fisherd did not answer /healthz within 30 s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            self.logf.close()
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------ datasets

class Datasets:
    """Names on the command line → dataset objects of a job spec."""

    def __init__(self, api, data_root, cfg):
        self.cfg = cfg
        self.data_root = Path(data_root).resolve() if data_root else None
        listing = api.get("/api/v1/datasets")
        self.synthetic = {d["domain"] for d in listing["synthetic"]}
        self.folders = {d["path"] for d in listing["folders"]}
        self.notes = []

    def _is_folder(self, name):
        # the daemon's own listing first (a --url daemon's roots need not be readable here), then the disk
        return name in self.folders or bool(self.data_root and (self.data_root / name / "images").is_dir()
                                            and (self.data_root / name / "masks").is_dir())

    def _folder(self, name):
        if not self._is_folder(name):
            where = f"under {self.data_root}" if self.data_root else "listed by GET /api/v1/datasets (no --data-root)"
            raise SystemExit(f"experiment: '{name}' is neither a synthetic domain "
                             f"({', '.join(sorted(self.synthetic))}) nor a dataset folder {where} "
                             "(a folder needs images/ and masks/)")
        return {"path": name}

    def is_synthetic(self, name):
        return name in self.synthetic

    def split(self, name, role, count, seed):
        """role: 'train' | 'val' | 'eval' (zero-shot)."""
        if self.is_synthetic(name):
            return {"synthetic": {"domain": name, "count": count, "seed": seed}}
        if self._is_folder(f"{name}/train") and self._is_folder(f"{name}/val"):
            return self._folder(f"{name}/{'train' if role == 'train' else 'val'}")
        if role == "val":
            note = f"`{name}` has no train/ and val/ split: its val numbers are on the training images"
            if note not in self.notes:
                self.notes.append(note)
        return self._folder(name)

    def describe(self, name):
        return f"synthetic `{name}`" if self.is_synthetic(name) else f"folder `{name}` (under --data-root)"


# ------------------------------------------------------------------ the plan

def spec_common(cfg, name, threads):
    return {"name": name, "image_size": cfg["image_size"], "batch_size": cfg["batch_size"],
            "optim": {"lr": cfg["lr"]}, "threads": threads}


def pretrain_spec(cfg, ds, domain, threads):
    s = spec_common(cfg, f"exp-pretrain-{domain}".replace("/", "_"), threads)
    s.update({"base_model": {"arch": "segformer", "config": cfg["config"]}, "strategy": "full",
              "steps": cfg["pretrain_steps"], "eval_interval": max(1, cfg["pretrain_steps"] // 5), "seed": 0,
              "data": {"train": ds.split(domain, "train", cfg["pretrain_count"], 1),
                       "val": ds.split(domain, "val", cfg["val_count"], 2)}})
    return s


def finetune_spec(cfg, ds, setting, pre_job, target, zero_shot, label, strategy, fisher, seed, threads,
                  lam=None, fi=None):
    tag = f"exp-{setting}-{label}" + (f"-l{lam:g}-f{fi}" if lam is not None else "") + f"-s{seed}"
    s = spec_common(cfg, tag.replace("/", "_"), threads)
    s.update({"base_model": {"job": pre_job}, "strategy": strategy, "steps": cfg["steps"],
              "eval_interval": cfg["eval_interval"], "seed": seed,
              "data": {"train": ds.split(target, "train", cfg["train_count"], 1),
                       "val": ds.split(target, "val", cfg["val_count"], 2),
                       "zero_shot": [ds.split(z, "eval", cfg["zero_shot_count"], 3) for z in zero_shot]}})
    if strategy == "fisher":
        f = {"ema_interval": cfg["ema_interval"], "freeze_interval": fi or cfg["freeze_interval"],
             "lambda": 1.0 if lam is None else lam}
        f.update(fisher or {})
        s["fisher"] = f
    return s


def plan(cfg, ds, args, threads):
    """Every job as (key, spec), pretrainings first. key: dict of what it is."""
    pre = [({"kind": "pretrain", "setting": d}, pretrain_spec(cfg, ds, d, threads)) for d in args.pretrain]
    fine = []
    for setting in args.pretrain:
        for seed in cfg["seeds"]:
            for label, strategy, fisher in STRATEGIES:
                fine.append(({"kind": "main", "setting": setting, "label": label, "seed": seed},
                             (setting, label, strategy, fisher, seed, None, None)))
    s0 = args.pretrain[0]
    for lam in cfg["sweep_lambdas"]:
        for fi in cfg["sweep_freeze_intervals"]:
            if lam == 1.0 and fi == cfg["freeze_interval"]:
                continue  # the main fisher runs are this point
            for seed in cfg["seeds"][:cfg["sweep_seeds"]]:
                fine.append(({"kind": "sweep", "setting": s0, "label": "fisher", "seed": seed, "lambda": lam,
                              "freeze_interval": fi}, (s0, "fisher", "fisher", {"estimator": "reference"},
                                                       seed, lam, fi)))
    # Shuffled (fixed seed): with two jobs at once, each strategy's wall
    # time is measured beside a mix of neighbours, not always the same one.
    random.Random(8).shuffle(fine)
    return pre, fine


# ------------------------------------------------------------------ running

def run_jobs(api, cfg, ds, args, threads):
    pre, fine = plan(cfg, ds, args, threads)
    jobs = []
    pre_ids = {}
    for key, spec in pre:
        j = api.post("/api/v1/jobs", spec)
        pre_ids[key["setting"]] = j["id"]
        jobs.append({"key": key, "id": j["id"], "spec": spec})
    for key, (setting, label, strategy, fisher, seed, lam, fi) in fine:
        spec = finetune_spec(cfg, ds, setting, pre_ids[setting], args.target, args.zero_shot, label, strategy,
                             fisher, seed, threads, lam, fi)
        j = api.post("/api/v1/jobs", spec)
        jobs.append({"key": key, "id": j["id"], "spec": spec})
    total_steps = sum(j["spec"]["steps"] for j in jobs)
    log(f"submitted {len(jobs)} jobs ({len(pre)} pretrainings, {len(fine)} fine-tunes; {total_steps} steps)")
    pending = {j["id"]: j for j in jobs}
    t0 = time.time()
    done_steps = 0
    n_done = 0
    try:
        while pending:
            time.sleep(args.poll)
            for jid in list(pending):
                rec = api.get(f"/api/v1/jobs/{jid}")
                if rec["status"] in ("queued", "running"):
                    continue
                j = pending.pop(jid)
                j["record"] = rec
                n_done += 1
                done_steps += j["spec"]["steps"]
                k = j["key"]
                what = k["kind"] if k["kind"] == "pretrain" else k["label"]
                extra = f" λ={k['lambda']:g} fi={k['freeze_interval']}" if k["kind"] == "sweep" else ""
                seed = f" seed {k['seed']}" if "seed" in k else ""
                r = rec.get("result") or {}
                if rec["status"] == "succeeded":
                    how = f"val IoU {r['val']['iou']:.3f}, {r['wall_seconds']:.0f} s"
                else:
                    how = f"{rec['status'].upper()}: {rec.get('reason')}"
                elapsed = time.time() - t0
                eta = elapsed / done_steps * (total_steps - done_steps) if done_steps else 0
                log(f"[{n_done:3d}/{len(jobs)}] {jid} {k['setting']}/{what}{extra}{seed}: {how}"
                    f" (elapsed {elapsed / 60:.1f} min, ~{eta / 60:.1f} min left)")
    except KeyboardInterrupt:
        # what was submitted and not finished would otherwise run on without anyone waiting for it
        log(f"interrupted: cancelling {len(pending)} unfinished job(s)")
        for jid in pending:
            try:
                api.post(f"/api/v1/jobs/{jid}/cancel", {})
            except SystemExit as e:
                log(str(e))
        raise
    return jobs


def step_value(steps, values, at):
    """The value of a step function (points where it was sampled) at step `at`."""
    v = values[0] if values else None
    for s, x in zip(steps, values):
        if s > at:
            break
        v = x
    return v


def stage_of(layer):
    parts = layer.split(".")
    if parts[0] == "decode_head":
        return 4
    if len(parts) >= 4 and parts[1] == "encoder" and parts[2] in ("patch_embeddings", "block", "layer_norm"):
        return int(parts[3])
    return 5


def collect(api, jobs, cfg):
    """Everything the report needs, read back from the API."""
    for j in jobs:
        rec = j["record"]
        j["status"] = rec["status"]
        if rec["status"] != "succeeded" or j["key"]["kind"] == "pretrain":
            continue
        r = rec["result"]
        total = r["parameters"]
        m = api.get(f"/api/v1/jobs/{j['id']}/metrics?name=params_live&max_points=100000")["metrics"]["params_live"]
        steps = r["steps_done"]
        j["live"] = {"step": m["step"], "fraction": [v / total for v in m["value"]]}
        j["live_at"] = {p: step_value(m["step"], j["live"]["fraction"], max(1, round(steps * p / 100)))
                        for p in (10, 25, 50, 75, 100)}
        j["metrics"] = {
            "val_iou": r["val"]["iou"], "val_f1": r["val"]["f1"],
            "zero_shot": [{"iou": z["iou"], "f1": z["f1"], "dataset": z["dataset"]} for z in r["zero_shot"]],
            "params_total": total, "params_end": r["params_trainable"], "params_mean": r["params_trainable_mean"],
            "wall_seconds": r["wall_seconds"],
            # the daemon reports the mean step since this experiment was written; older ones do not
            "step_seconds": r.get("step_seconds_mean") or r["wall_seconds"] / max(1, r["steps_done"]),
            "steps_done": r["steps_done"],
        }
        if j["spec"]["strategy"] == "fisher":
            groups = api.get(f"/api/v1/jobs/{j['id']}/groups")["groups"]
            j["groups"] = [{"key": g["key"], "layer": g["layer"], "depth": g["depth"], "size": g["size"],
                            "stage": stage_of(g["layer"]), "frozen_at": g["frozen_at"]} for g in groups]
            j["freezes"] = [{k: f.get(k) for k in ("step", "kind", "threshold", "n_frozen", "chunks_live", "params_live")}
                            for f in api.get(f"/api/v1/jobs/{j['id']}/freezes")["freezes"]]
    return jobs


# ------------------------------------------------------------------ statistics and formatting

def mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def fmt_ms(xs, digits=3, scale=1.0):
    m, s = mean_std([x * scale for x in xs if x is not None])
    if m is None:
        return "—"
    return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if s is not None else "")


def fmt_int(x):
    return f"{x:,.0f}".replace(",", " ")


def fmt_params(xs, total):
    m, _ = mean_std(xs)
    if m is None:
        return "—"
    pct = 100 * m / total
    return f"{fmt_int(m)} ({pct:.2g}%)" if pct < 10 else f"{fmt_int(m)} ({pct:.0f}%)"


def rank_note(rows, higher_better, what):
    """One plain sentence: which strategy is best on `metric`, and where fisher stands."""
    scored = [(lab, statistics.fmean(v)) for lab, v in rows if v]
    if not scored:
        return None
    scored.sort(key=lambda t: t[1], reverse=higher_better)
    best, best_v = scored[0]
    fisher = dict(scored).get("fisher")
    if fisher is None:
        return f"- {what}: `fisher` has no successful run."
    place = [lab for lab, _ in scored].index("fisher") + 1
    tied = [lab for lab, v in scored if v == best_v]
    if fisher == best_v and len(tied) > 1:
        return (f"- {what}: `fisher` **ties** for best with {', '.join(f'`{t}`' for t in tied if t != 'fisher')} "
                f"({fisher:.4g}).")
    if best == "fisher":
        second = scored[1] if len(scored) > 1 else None
        return (f"- {what}: **`fisher` is best** ({fisher:.4g}" +
                (f"; next `{second[0]}` {second[1]:.4g})." if second else ")."))
    return (f"- {what}: **`fisher` does not win** — it is {place} of {len(scored)} ({fisher:.4g}); "
            f"best is `{best}` ({best_v:.4g}).")


# ------------------------------------------------------------------ SVG, by hand

def nice_ticks(lo, hi, n=5):
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    t = math.ceil(lo / step) * step
    out = []
    while t <= hi + 1e-9 * step:
        out.append(round(t, 10))
        t += step
    return out


def fmt_tick(v):
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:g}"


class Svg:
    """A plot on fixed axes: x and y ranges (x optionally log10), drawn as text."""

    def __init__(self, title, xlabel, ylabel, xr, yr, xlog=False, w=720, h=440):
        self.w, self.h, self.xlog = w, h, xlog
        self.l, self.r, self.t, self.b = 70, 190, 40, 55
        self.xr = (math.log10(xr[0]), math.log10(xr[1])) if xlog else xr
        self.yr = yr
        self.parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
                      f'viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">',
                      f'<rect width="{w}" height="{h}" fill="white"/>',
                      f'<text x="{w / 2 - self.r / 2 + self.l / 2:.1f}" y="22" text-anchor="middle" '
                      f'font-size="14">{esc(title)}</text>']
        pw, ph = w - self.l - self.r, h - self.t - self.b
        self.parts.append(f'<rect x="{self.l}" y="{self.t}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
        if xlog:
            xt = [10 ** e for e in range(math.floor(self.xr[0]), math.ceil(self.xr[1]) + 1)
                  if self.xr[0] - 1e-9 <= e <= self.xr[1] + 1e-9]
        else:
            xt = nice_ticks(*xr)
        for v in xt:
            x = self.px(v)
            self.parts.append(f'<line x1="{x:.1f}" y1="{self.t}" x2="{x:.1f}" y2="{self.t + ph}" stroke="#eee"/>')
            self.parts.append(f'<text x="{x:.1f}" y="{self.t + ph + 16}" text-anchor="middle">{fmt_tick(v)}</text>')
        for v in nice_ticks(*yr):
            y = self.py(v)
            self.parts.append(f'<line x1="{self.l}" y1="{y:.1f}" x2="{self.l + pw}" y2="{y:.1f}" stroke="#eee"/>')
            self.parts.append(f'<text x="{self.l - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt_tick(v)}</text>')
        self.parts.append(f'<text x="{self.l + pw / 2:.1f}" y="{h - 14}" text-anchor="middle">{esc(xlabel)}</text>')
        self.parts.append(f'<text x="16" y="{self.t + ph / 2:.1f}" text-anchor="middle" '
                          f'transform="rotate(-90 16 {self.t + ph / 2:.1f})">{esc(ylabel)}</text>')
        self.legend_y = self.t + 8

    def px(self, v):
        if self.xlog:
            v = math.log10(max(v, 10 ** self.xr[0]))
        return self.l + (v - self.xr[0]) / (self.xr[1] - self.xr[0]) * (self.w - self.l - self.r)

    def py(self, v):
        return self.t + (1 - (v - self.yr[0]) / (self.yr[1] - self.yr[0])) * (self.h - self.t - self.b)

    def polyline(self, pts, color, dash=None, width=2):
        d = " ".join(f"{self.px(x):.1f},{self.py(y):.1f}" for x, y in pts)
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="{width}"{extra}/>')

    def point(self, x, y, color, hollow=False, r=3.5, title=None):
        fill = "white" if hollow else color
        t = f"<title>{esc(title)}</title>" if title else ""
        self.parts.append(f'<circle cx="{self.px(x):.1f}" cy="{self.py(y):.1f}" r="{r}" fill="{fill}" '
                          f'stroke="{color}" stroke-width="1.3">{t}</circle>')

    def diamond(self, x, y, color, r=3.2, title=None):
        cx, cy = self.px(x), self.py(y)
        t = f"<title>{esc(title)}</title>" if title else ""
        self.parts.append(f'<path d="M{cx:.1f} {cy - r:.1f}L{cx + r:.1f} {cy:.1f}L{cx:.1f} {cy + r:.1f}'
                          f'L{cx - r:.1f} {cy:.1f}Z" fill="{color}" fill-opacity="0.5" stroke="{color}">{t}</path>')

    def label(self, x, y, text, color="#333", dx=6, dy=-6):
        self.parts.append(f'<text x="{self.px(x) + dx:.1f}" y="{self.py(y) + dy:.1f}" fill="{color}" '
                          f'font-size="11">{esc(text)}</text>')

    def hline(self, y, text, color="#999"):
        self.parts.append(f'<line x1="{self.l}" y1="{self.py(y):.1f}" x2="{self.w - self.r}" y2="{self.py(y):.1f}" '
                          f'stroke="{color}" stroke-dasharray="4 3"/>')
        self.parts.append(f'<text x="{self.l + 4}" y="{self.py(y) - 4:.1f}" fill="{color}" font-size="11">'
                          f'{esc(text)}</text>')

    def legend(self, text, color, kind="line", hollow=False):
        x = self.w - self.r + 12
        y = self.legend_y
        if kind == "line":
            self.parts.append(f'<line x1="{x}" y1="{y}" x2="{x + 18}" y2="{y}" stroke="{color}" stroke-width="2"/>')
        elif kind == "diamond":
            self.parts.append(f'<path d="M{x + 9} {y - 4}L{x + 13} {y}L{x + 9} {y + 4}L{x + 5} {y}Z" fill="{color}" '
                              f'fill-opacity="0.5" stroke="{color}"/>')
        else:
            hollow = hollow or kind == "hollow"
            fill = "white" if hollow else color
            self.parts.append(f'<circle cx="{x + 9}" cy="{y}" r="4" fill="{fill}" stroke="{color}" stroke-width="1.3"/>')
        self.parts.append(f'<text x="{x + 24}" y="{y + 4}">{esc(text)}</text>')
        self.legend_y += 18

    def save(self, path):
        Path(path).write_text("\n".join(self.parts + ["</svg>"]) + "\n")


def esc(s):
    return xml.sax.saxutils.escape(str(s))


# ------------------------------------------------------------------ the report

def main_runs(jobs, setting, label):
    return [j for j in jobs if j["key"]["kind"] == "main" and j["key"]["setting"] == setting
            and j["key"]["label"] == label]


def ok(runs):
    return [j for j in runs if j["status"] == "succeeded"]


def fig_live(jobs, setting, cfg, path):
    # fractions span 1e-5..1: their log10 on a linear axis
    svg = Svg(f"Live parameters over the run (pretrained on {setting})", "step",
              "log10 fraction of parameters training", (0, cfg["steps"]), (-6, 0))
    for label, _, _ in STRATEGIES:
        runs = ok(main_runs(jobs, setting, label))
        if not runs:
            continue
        color = STRATEGY_COLORS[label]
        for j in runs:
            st, fr = j["live"]["step"], j["live"]["fraction"]
            pts = []
            for k, (s, f) in enumerate(zip(st, fr)):
                if k:
                    pts.append((s, pts[-1][1]))  # a step function: hold until the next sample
                pts.append((s, math.log10(max(f, 1e-6))))
            pts.append((cfg["steps"], pts[-1][1]))
            svg.polyline(pts, color, dash="6 4" if label == "fisher-ema" else None, width=1.5)
        svg.legend(label, color)
    svg.save(path)


def fig_hierarchy(hier_runs, hier_name, setting, cfg, path):
    """Every group's freeze step against its depth; one marker per kind of run (filled circle,
    hollow circle, diamond), one colour per stage."""
    steps = cfg["steps"]
    runs = hier_runs
    max_depth = max([g["depth"] for lab in runs for j in runs[lab] for g in j.get("groups", [])] or [1])
    svg = Svg(f"When each parameter group froze, by depth (pretrained on {setting})",
              "depth (layer position in the forward pass)", "step it froze (top: still live at the end)",
              (0, max_depth), (0, steps * 1.08))
    svg.hline(steps * 1.04, "live at the end")
    rnd = random.Random(1)
    seen = set()
    marks = ["point", "hollow", "diamond"]
    for lab, mark in zip(runs, marks):
        for j in runs[lab]:
            for g in j.get("groups", []):
                y = g["frozen_at"] if g["frozen_at"] is not None else steps * 1.04
                x, y = g["depth"] + rnd.uniform(-0.3, 0.3), y + rnd.uniform(-0.006, 0.006) * steps
                title = (f"{g['key']} ({hier_name[lab]}, {j['id']}): "
                         f"{'live' if g['frozen_at'] is None else 'froze at ' + str(g['frozen_at'])}")
                if mark == "diamond":
                    svg.diamond(x, y, STAGE_COLORS[g["stage"]], title=title)
                else:
                    svg.point(x, y, STAGE_COLORS[g["stage"]], hollow=mark == "hollow", r=2.5, title=title)
                seen.add(g["stage"])
    for s in sorted(seen):
        svg.legend(STAGES[s] if s < len(STAGES) else "other", STAGE_COLORS[s], kind="point")
    for lab, mark in zip(runs, marks):
        svg.legend(hier_name[lab].replace("`", ""), "#333", kind=mark)
    svg.save(path)


def fig_sweep(jobs, setting, cfg, points, path):
    base = []
    for label, _, _ in STRATEGIES[2:]:
        runs = ok(main_runs(jobs, setting, label))
        if runs:
            base.append((label, statistics.fmean(j["metrics"]["params_mean"] / j["metrics"]["params_total"]
                                                 for j in runs),
                         statistics.fmean(j["metrics"]["val_iou"] for j in runs)))
    good = [p for p in points if p["iou"] is not None]
    xs = [max(b[1], 1e-6) for b in base] + [max(p["live_mean"], 1e-6) for p in good] or [1e-3]
    ys = [b[2] for b in base] + [p["iou"] for p in good] or [1]
    svg = Svg(f"Live parameters vs val IoU (pretrained on {setting})", "mean fraction of parameters training (log)",
              "val IoU on the target", (10 ** math.floor(math.log10(min(xs))), 1),
              (0, min(1, math.ceil(max(ys) * 10 + 0.5) / 10)), xlog=True)
    for label, x, y in base:
        svg.point(x, y, "#777", hollow=True, r=5)
        svg.label(x, y, label, "#555")
    lam_colors = {0.5: "#1f77b4", 1.0: "#d62728", 2.0: "#ff7f0e"}
    for i, p in enumerate(good):
        c = lam_colors.get(p["lambda"], "#333")
        x = max(p["live_mean"], 1e-6)
        svg.point(x, p["iou"], c, r=5, title=f"λ {p['lambda']:g}, freeze_interval {p['freeze_interval']}: "
                                             f"val IoU {p['iou']:.3f}, {100 * p['live_mean']:.3g}% live on average")
        svg.label(x, p["iou"], f"λ{p['lambda']:g} fi{p['freeze_interval']}", c, dx=-70 if i % 2 else 7,
                  dy=14 if i % 2 else -7)
    for lam, c in lam_colors.items():
        if any(p["lambda"] == lam for p in points):
            svg.legend(f"fisher λ = {lam:g}", c, kind="point")
    svg.legend("baselines (labelled)", "#777", kind="point", hollow=True)
    svg.save(path)


def sweep_points(jobs, cfg, setting):
    pts = {}
    for j in jobs:
        k = j["key"]
        if k["kind"] == "sweep":
            key = (k["lambda"], k["freeze_interval"])
        elif (k["kind"] == "main" and k["label"] == "fisher" and k["setting"] == setting
              and k["seed"] in cfg["seeds"][:cfg["sweep_seeds"]]):
            key = (1.0, cfg["freeze_interval"])  # the main runs are this point of the grid
        else:
            continue
        pts.setdefault(key, []).append(j)
    out = []
    for (lam, fi), runs in sorted(pts.items()):
        good = ok(runs)
        out.append({"lambda": lam, "freeze_interval": fi, "runs": [j["id"] for j in runs], "n_ok": len(good),
                    "live_mean": statistics.fmean(j["metrics"]["params_mean"] / j["metrics"]["params_total"]
                                                  for j in good) if good else None,
                    "live_end": statistics.fmean(j["metrics"]["params_end"] / j["metrics"]["params_total"]
                                                 for j in good) if good else None,
                    "iou": statistics.fmean(j["metrics"]["val_iou"] for j in good) if good else None,
                    "iou_all": [j["metrics"]["val_iou"] for j in good],
                    "zs_iou_all": [statistics.fmean(z["iou"] for z in j["metrics"]["zero_shot"])
                                   for j in good if j["metrics"]["zero_shot"]],
                    "first_freeze": [min([f["step"] for f in j.get("freezes", []) if f["n_frozen"]] or [None],
                                         key=lambda v: v or 0) for j in good]})
    return out


def hierarchy_rows(runs):
    """Per stage, pooled over runs: chunks, parameters, first/median freeze step, share frozen."""
    rows = []
    for s in range(len(STAGES) + 1):
        gs = [g for j in runs for g in j.get("groups", []) if g["stage"] == s]
        if not gs:
            continue
        frozen = sorted(g["frozen_at"] for g in gs if g["frozen_at"] is not None)
        per_run = len(gs) // max(1, len(runs))
        rows.append({"stage": STAGES[s] if s < len(STAGES) else "other", "chunks": per_run,
                     "params": sum(g["size"] for g in gs) // max(1, len(runs)),
                     "depths": (min(g["depth"] for g in gs), max(g["depth"] for g in gs)),
                     "first": frozen[0] if frozen else None,
                     "median": statistics.median(frozen) if frozen else None,  # .5 only between two steps
                     "mean_step": statistics.fmean(g["frozen_at"] if g["frozen_at"] is not None else float("nan")
                                                   for g in gs) if len(frozen) == len(gs) else None,
                     "frozen_share": len(frozen) / len(gs)})
    return rows


def spearman(xs, ys):
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            k = i
            while k + 1 < len(order) and v[order[k + 1]] == v[order[i]]:
                k += 1
            for m in range(i, k + 1):
                r[order[m]] = (i + k) / 2 + 1
            i = k + 1
        return r
    if len(xs) < 3:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return num / den if den else None


def source_commit():
    """The commit the run starts from (read at the start: the tree may move
    while the jobs run)."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return commit + (" (with uncommitted changes in the tree)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def machine(commit):
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = open("/proc/loadavg").read().split()[:3]
    except OSError:
        load = ["?"] * 3
    return {"nproc": os.cpu_count(), "cpu": model, "commit": commit, "load_at_end": " ".join(load)}


def report(jobs, cfg, args, mode, ds, mach, started, wall, version, out_md, img_dir, raw_path):
    L = []
    w = L.append
    img_rel = os.path.relpath(img_dir, Path(out_md).parent)
    title = {"full": "", "quick": " — QUICK RUN", "smallest": " — SMALLEST CASE (a test)"}[mode]
    w(f"# FisherAdapTune vs the baselines: the experiment{title}")
    w("")
    w("Generated by `tests/bench/experiment.py` — every number below was read back from fisherd's REST API "
      "after the jobs ran; nothing is edited by hand.")
    w("")
    if mode != "full":
        w(f"> **This is the {'quick' if mode == 'quick' else 'smallest'} run** (`--{mode}`): fewer and shorter "
          "jobs than the full experiment, at 64x64, so the numbers are noisy and say little about the method. "
          "`make experiment` (≤ 60 min on 2 quiet cores) writes the full run here.")
        w("")
    w("| | |")
    w("|---|---|")
    via = " (run by `make experiment" + (" QUICK=1" if mode == "quick" else "") + "`)" if "MAKELEVEL" in os.environ else ""
    w(f"| command | `{' '.join(shlex.quote(a) for a in ['tests/bench/experiment.py'] + sys.argv[1:])}`{via} |")
    w(f"| date | {started.strftime('%Y-%m-%d %H:%M UTC')} |")
    w(f"| machine | {mach['nproc']} cores, {mach['cpu']}; load average at the end {mach['load_at_end']} |")
    w(f"| source | git {mach['commit']}; fisherd {version} |")
    threads = max(1, 2 // args.parallel) if args.threads is None else args.threads
    at_once = (f"as many at a time as the daemon at {args.url} runs (its --max-jobs)" if args.url
               else f"{args.parallel} at a time")
    w(f"| wall time | {wall / 60:.1f} min for {len(jobs)} jobs, {at_once}, {threads} thread(s) each |")
    w(f"| raw numbers | `{os.path.relpath(raw_path, ROOT) if str(raw_path).startswith(str(ROOT)) else raw_path}` |")
    w("")
    try:
        load = float(mach["load_at_end"].split()[1])
    except (ValueError, IndexError):
        load = 0
    if load > (mach["nproc"] or 1):
        w(f"> The machine was busy (load average {mach['load_at_end']} on {mach['nproc']} cores): wall and step "
          "times here are inflated and noisy and say little about fisherd's speed; IoU and F1 do not depend on the load "
          "(the same spec on the same threads gives the same numbers).")
        w("")
    w("## Set-up")
    w("")
    w(f"- Model: SegFormer `{cfg['config']}`, {cfg['image_size']}x{cfg['image_size']}, batch {cfg['batch_size']}, "
      f"AdamW lr {cfg['lr']:g} for every job.")
    w(f"- Pretraining, **once per setting** (not per seed): `full` on {', '.join(ds.describe(d) for d in args.pretrain)}, "
      f"{cfg['pretrain_steps']} steps ({cfg['pretrain_count']} training images).")
    w(f"- Fine-tuning on {ds.describe(args.target)}: {cfg['steps']} steps, {cfg['train_count']} training images, "
      f"val {cfg['val_count']}; zero-shot on {', '.join(ds.describe(z) for z in args.zero_shot)} "
      f"({cfg['zero_shot_count']} images each). Same data, steps and lr for every strategy; fine-tuning seeds "
      f"{', '.join(map(str, cfg['seeds']))} (the seed orders and augments the batches; the model is the same "
      "pretrained one). mean ± sample std over seeds.")
    w(f"- `fisher`: drift every {cfg['ema_interval']} steps (`ema_interval`), a freeze decision every "
      f"{cfg['freeze_interval']} (`freeze_interval`), λ = 1, metric `total_variation`; `fisher-ema` is the same "
      "with `estimator: ema`. `decoder` trains only the decode head, `norm` only norm layers' affine "
      "parameters, `bitfit` only biases, `full` everything.")
    w("- Reported val and zero-shot numbers are of the model at the last step (no early stopping, no best-checkpoint "
      "selection). Wall time is the whole job (data, evaluations, zero-shot); step time is the mean training step "
      "as the daemon measured it. With two jobs at once each job shares the machine with a neighbour "
      "(the submission order is shuffled with a fixed seed so no strategy always has the same one).")
    for n in ds.notes:
        w(f"- Note: {n}.")
    late = sorted({fi for fi in [cfg["freeze_interval"]] + cfg["sweep_freeze_intervals"] if fi >= cfg["steps"]})
    if late:
        w(f"- Note: freeze_interval {', '.join(map(str, late))} ≥ the {cfg['steps']} fine-tuning steps: those runs "
          "make no freeze decision before their last step, so they train like `full`.")
    w("")
    zs_names = args.zero_shot
    sweep_setting = args.pretrain[0]
    summary = {"settings": {}}
    for setting in args.pretrain:
        pre = [j for j in jobs if j["key"]["kind"] == "pretrain" and j["key"]["setting"] == setting][0]
        prer = pre["record"].get("result") or {}
        w(f"## Pretrained on `{setting}`, fine-tuned on `{args.target}`")
        w("")
        if pre["status"] != "succeeded":
            w(f"The pretraining job {pre['id']} **{pre['status']}**: {pre['record'].get('reason')}. "
              "Nothing was fine-tuned from it.")
            w("")
            continue
        w(f"Pretraining ({pre['id']}): val IoU {prer['val']['iou']:.3f} on `{setting}` after "
          f"{prer['steps_done']} steps, {prer['wall_seconds']:.0f} s.")
        w("")
        head = ["strategy", "runs", "val IoU", "val F1"] + [f"zero-shot IoU `{z}`" for z in zs_names] + \
               [f"zero-shot F1 `{z}`" for z in zs_names] + \
               ["trainable at the end", "trainable, mean over the run", "wall s", "step ms"]
        w("| " + " | ".join(head) + " |")
        w("|" + "|".join(["---", "--:"] + ["--:"] * (len(head) - 2)) + "|")
        per = {}
        for label, _, _ in STRATEGIES:
            runs = main_runs(jobs, setting, label)
            good = ok(runs)
            per[label] = good
            if not good:
                w(f"| `{label}` | 0 of {len(runs)} succeeded ({', '.join(j['status'] for j in runs)}) |" +
                  " — |" * (len(head) - 2))
                continue
            total = good[0]["metrics"]["params_total"]
            cells = [f"`{label}`", f"{len(good)}" + (f" of {len(runs)}" if len(good) != len(runs) else ""),
                     fmt_ms([j["metrics"]["val_iou"] for j in good]), fmt_ms([j["metrics"]["val_f1"] for j in good])]
            for i in range(len(zs_names)):
                cells.append(fmt_ms([j["metrics"]["zero_shot"][i]["iou"] for j in good]))
            for i in range(len(zs_names)):
                cells.append(fmt_ms([j["metrics"]["zero_shot"][i]["f1"] for j in good]))
            cells += [fmt_params([j["metrics"]["params_end"] for j in good], total),
                      fmt_params([j["metrics"]["params_mean"] for j in good], total),
                      fmt_ms([j["metrics"]["wall_seconds"] for j in good], 1),
                      fmt_ms([j["metrics"]["step_seconds"] for j in good], 1, 1000)]
            w("| " + " | ".join(cells) + " |")
        w("")
        w("Where `fisher` (reference estimator) stands, metric by metric (means over seeds):")
        w("")
        notes = [rank_note([(lab, [j["metrics"]["val_iou"] for j in per[lab]]) for lab in per], True,
                           f"val IoU on `{args.target}`"),
                 rank_note([(lab, [j["metrics"]["val_f1"] for j in per[lab]]) for lab in per], True,
                           f"val F1 on `{args.target}`")]
        for i, z in enumerate(zs_names):
            notes.append(rank_note([(lab, [j["metrics"]["zero_shot"][i]["iou"] for j in per[lab]]) for lab in per],
                                   True, f"zero-shot IoU on `{z}`"))
            notes.append(rank_note([(lab, [j["metrics"]["zero_shot"][i]["f1"] for j in per[lab]]) for lab in per],
                                   True, f"zero-shot F1 on `{z}`"))
        notes.append(rank_note([(lab, [j["metrics"]["params_mean"] for j in per[lab]]) for lab in per], False,
                               "fewest parameters trained (mean over the run)"))
        notes.append(rank_note([(lab, [j["metrics"]["step_seconds"] * 1000 for j in per[lab]]) for lab in per],
                               False, "fastest mean step (ms)"))
        notes.append(rank_note([(lab, [j["metrics"]["wall_seconds"] for j in per[lab]]) for lab in per], False,
                               "shortest wall time (s)"))
        for n in notes:
            if n:
                w(n)
        w("")
        # live fraction over time
        w(f"### Live parameters over time (`{setting}`)")
        w("")
        w("Fraction of the model's parameters training at 10 / 25 / 50 / 75 / 100 % of the fine-tuning "
          "steps (mean over seeds):")
        w("")
        w("| strategy | 10% | 25% | 50% | 75% | 100% |")
        w("|---|--:|--:|--:|--:|--:|")
        for label, _, _ in STRATEGIES:
            good = per[label]
            if not good:
                continue
            cells = [f"`{label}`"]
            for p in (10, 25, 50, 75, 100):
                m = statistics.fmean(j["live_at"][p] for j in good)
                cells.append(f"{m:.3g}")
            w("| " + " | ".join(cells) + " |")
        w("")
        img = f"experiment-live-{setting.replace('/', '_')}.svg"
        fig_live(jobs, setting, cfg, Path(img_dir) / img)
        w(f"![Live fraction over the run, pretrained on {setting}]({img_rel}/{img})")
        w("")
        w("(Log scale, one line per seed; `fisher-ema` dashed, as it often lies on `fisher`.)")
        w("")
        # hierarchy
        w(f"### Which stages freeze first (`{setting}`)")
        w("")
        w("Every parameter group (chunk of rows) of the `fisher` runs (and of the sweep's smallest λ at the same "
          "freeze_interval, which leaves the most alive) with its depth (the layer's position in "
          "the forward pass, `GET /api/v1/jobs/{id}/groups`) and the step it froze, pooled over seeds. "
          "`first` / `median` are over the groups that froze; `frozen` is the share frozen by the end.")
        w("")
        w("| runs | stage | depths | chunks | parameters | first freeze step | median freeze step | frozen by the end |")
        w("|---|---|--:|--:|--:|--:|--:|--:|")
        hier = {}
        hier_runs = {"fisher": per["fisher"], "fisher-ema": per["fisher-ema"]}
        hier_name = {"fisher": "`fisher` (reference)", "fisher-ema": "`fisher-ema`"}
        lam_lo = min(cfg["sweep_lambdas"])
        if setting == sweep_setting and lam_lo < 1:
            key = f"fisher λ={lam_lo:g}"
            hier_runs[key] = ok([j for j in jobs if j["key"]["kind"] == "sweep" and j["key"]["lambda"] == lam_lo
                                 and j["key"]["freeze_interval"] == cfg["freeze_interval"]])
            hier_name[key] = f"`fisher` λ = {lam_lo:g} (sweep)"
        for lab, runs in hier_runs.items():
            rows = hierarchy_rows(runs)
            hier[lab] = rows
            for r in rows:
                w(f"| {hier_name[lab]} | {r['stage']} | {r['depths'][0]}–{r['depths'][1]} | {r['chunks']} | {fmt_int(r['params'])} | "
                  f"{r['first'] if r['first'] is not None else '—'} | "
                  f"{format(r['median'], 'g') if r['median'] is not None else '—'} | {100 * r['frozen_share']:.0f}% |")
        w("")
        for lab, runs in hier_runs.items():
            gs = [g for j in runs for g in j.get("groups", [])]
            if not gs:
                continue
            never = cfg["steps"] + 1
            rho = spearman([g["depth"] for g in gs], [g["frozen_at"] if g["frozen_at"] is not None else never
                                                       for g in gs])
            rows = [r for r in hier[lab] if r["median"] is not None]
            meds = [r["median"] for r in rows]
            distinct = len(set(g["frozen_at"] for g in gs))
            if rho is None or distinct <= 1:
                verdict = ("every group froze at the same step (or none froze): these runs say nothing about an "
                           "order between stages")
            elif rho < -0.1:
                verdict = f"deeper groups froze **earlier** (Spearman ρ = {rho:.2f} between depth and freeze step)"
            elif rho > 0.1:
                verdict = f"shallower groups froze **earlier** (Spearman ρ = {rho:.2f} between depth and freeze step)"
            else:
                verdict = f"no clear order by depth (Spearman ρ = {rho:.2f} between depth and freeze step)"
            if len(set(meds)) <= 1:
                order = "the same median freeze step for every stage"
            elif all(a <= b for a, b in zip(meds, meds[1:])):
                order = "median freeze steps rise from stage 1 to the decode head"
            elif all(a >= b for a, b in zip(meds, meds[1:])):
                order = "median freeze steps fall from stage 1 to the decode head"
            else:
                order = "median freeze steps not monotonic in the stage"
            firsts = [next((f for f in j.get("freezes", []) if f["kind"] == "drift"), None) for j in runs]
            firsts = [f for f in firsts if f]
            n_chunks = len(gs) // max(1, len(runs))
            first = (f"the first decision (step {', '.join(sorted({str(f['step']) for f in firsts}))}) froze "
                     f"{statistics.fmean(f['n_frozen'] for f in firsts) / n_chunks:.1%} of the {n_chunks} chunks"
                     if firsts else "nothing froze")
            live = [g for g in gs if g["frozen_at"] is None]
            if live:
                sizes = sorted(g["size"] for g in live)
                names = sorted({g["key"] for g in live})
                survivors = (f"live at the end: {len(live) / len(runs):.3g} chunks per run of median size "
                             f"{statistics.median(sizes):g} elements (" + ", ".join(f"`{n}`" for n in names[:4]) +
                             (", …" if len(names) > 4 else "") + ")")
            else:
                survivors = "no chunk live at the end"
            w(f"- {hier_name[lab]}: {first}; {verdict}; {order} ({', '.join(f'{m:g}' for m in meds) or '—'}); "
              f"{distinct} distinct freeze steps (live counted as one); {survivors}.")
        w("")
        img = f"experiment-hierarchy-{setting.replace('/', '_')}.svg"
        fig_hierarchy(hier_runs, hier_name, setting, cfg, Path(img_dir) / img)
        w(f"![Freeze step against depth, pretrained on {setting}]({img_rel}/{img})")
        w("")
        summary["settings"][setting] = {"hierarchy": hier}
    # the sweep
    pts = sweep_points(jobs, cfg, sweep_setting)
    w(f"## Sweep: λ × freeze_interval (`fisher`, pretrained on `{sweep_setting}`)")
    w("")
    w(f"λ ∈ {{{', '.join(f'{x:g}' for x in cfg['sweep_lambdas'])}}} × freeze_interval ∈ "
      f"{{{', '.join(str(x) for x in cfg['sweep_freeze_intervals'])}}}, seeds "
      f"{', '.join(map(str, cfg['seeds'][:cfg['sweep_seeds']]))}; the rest as above. A larger λ raises the "
      "threshold (mean + λ·std of the live chunks' scores), so more chunks fall under it and freeze.")
    w("")
    w("| λ | freeze_interval | runs | first freeze step | trainable, mean over the run | trainable at the end | val IoU | "
      "zero-shot IoU (mean of domains) |")
    w("|--:|--:|--:|--:|--:|--:|--:|--:|")
    for p in pts:
        if not p["n_ok"]:
            w(f"| {p['lambda']:g} | {p['freeze_interval']} | 0 of {len(p['runs'])} | — | — | — | — | — |")
            continue
        ff = sorted(set(str(x) if x is not None else "none" for x in p["first_freeze"]))
        w(f"| {p['lambda']:g} | {p['freeze_interval']} | {p['n_ok']} | {', '.join(ff)} | {100 * p['live_mean']:.3g}% | "
          f"{100 * p['live_end']:.3g}% | {fmt_ms(p['iou_all'])} | {fmt_ms(p['zs_iou_all'])} |")
    w("")
    full_runs = ok(main_runs(jobs, sweep_setting, "full"))
    if full_runs and pts:
        fi_ = statistics.fmean(j["metrics"]["val_iou"] for j in full_runs)
        good = [p for p in pts if p["iou"] is not None]
        best = max(good, key=lambda p: p["iou"]) if good else None
        if best:
            w(f"Best sweep point: λ = {best['lambda']:g}, freeze_interval {best['freeze_interval']}: val IoU "
              f"{best['iou']:.3f} training {100 * best['live_mean']:.3g}% of the parameters on average; `full` "
              f"reaches {fi_:.3f} training all of them" +
              (" — **the sweep does not reach `full`'s IoU**." if best["iou"] < fi_ else " — at or above `full`."))
            w("")
    img = "experiment-sweep.svg"
    fig_sweep(jobs, sweep_setting, cfg, pts, Path(img_dir) / img)
    w(f"![Live parameters vs IoU over the sweep]({img_rel}/{img})")
    w("")
    w("## Jobs")
    w("")
    w("Every job of this run, for `GET /api/v1/jobs/{id}` on the daemon that ran it:")
    w("")
    rows = []
    for j in jobs:
        k = j["key"]
        what = "pretrain" if k["kind"] == "pretrain" else k["label"]
        if k["kind"] == "sweep":
            what += f" λ={k['lambda']:g} fi={k['freeze_interval']}"
        rows.append(f"{j['id']} {k['setting']}/{what}" + (f" s{k['seed']}" if "seed" in k else "") +
                    ("" if j["status"] == "succeeded" else f" **{j['status']}**"))
    w("; ".join(rows) + ".")
    w("")
    Path(out_md).write_text("\n".join(L))
    summary["sweep"] = pts
    return summary


# ------------------------------------------------------------------ main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the ≤ 5 minute version")
    ap.add_argument("--smallest", action="store_true", help="the quick run's smallest case (tests)")
    ap.add_argument("--url", help="a running daemon (e.g. http://127.0.0.1:8080) instead of starting one")
    ap.add_argument("--token", help="bearer token for --url")
    ap.add_argument("--fisherd", default=str(ROOT / "build" / "fisherd"), help="the binary to start [build/fisherd]")
    ap.add_argument("--data-root", help="folder datasets live under this (passed to the daemon it starts)")
    ap.add_argument("--pretrain", default="shapes,wall", help="pretraining domains/folders, one setting each")
    ap.add_argument("--target", default="concrete", help="the fine-tuning domain/folder")
    ap.add_argument("--zero-shot", default="asphalt,wall,tiles", help="zero-shot domains/folders")
    ap.add_argument("--seeds", type=int, help="how many fine-tuning seeds (1, 2, ...)")
    ap.add_argument("--steps", type=int, help="fine-tuning steps (overrides the mode's)")
    ap.add_argument("--pretrain-steps", type=int, help="pretraining steps (overrides the mode's)")
    ap.add_argument("--parallel", type=int, default=2, choices=(1, 2), help="jobs at once on a daemon it starts [2]")
    ap.add_argument("--threads", type=int, help="threads per job [2 / parallel]")
    ap.add_argument("--out", default=str(ROOT / "docs" / "RESULTS.md"), help="the report [docs/RESULTS.md]")
    ap.add_argument("--images", default=str(ROOT / "docs" / "images"), help="where the SVGs go [docs/images]")
    ap.add_argument("--raw", help="raw numbers as JSON [build/experiment/<mode>.json]")
    ap.add_argument("--keep-data", action="store_true", help="keep the started daemon's data dir")
    ap.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    mode = "smallest" if args.smallest else "quick" if args.quick else "full"
    cfg = dict(MODES[mode])
    if args.steps:
        cfg["steps"] = args.steps
        cfg["eval_interval"] = max(1, min(cfg["eval_interval"], args.steps))
    if args.pretrain_steps:
        cfg["pretrain_steps"] = args.pretrain_steps
    if args.seeds:
        cfg["seeds"] = list(range(1, args.seeds + 1))
        cfg["sweep_seeds"] = min(cfg["sweep_seeds"], args.seeds)
    args.pretrain = [x for x in args.pretrain.split(",") if x]
    if args.pretrain == ["shapes", "wall"] and mode == "smallest":
        args.pretrain = cfg["settings"]
    args.zero_shot = [x for x in args.zero_shot.split(",") if x]
    if not args.pretrain or not args.target:
        ap.error("--pretrain and --target need at least one name")
    threads = args.threads or max(1, 2 // args.parallel)
    if max([cfg["freeze_interval"]] + cfg["sweep_freeze_intervals"]) >= cfg["steps"]:
        log(f"warning: a freeze_interval of {cfg['freeze_interval']} / {cfg['sweep_freeze_intervals']} is not below "
            f"{cfg['steps']} steps: some fisher runs will not freeze anything")
    raw_path = Path(args.raw or ROOT / "build" / "experiment" / f"{mode}.json")
    started = datetime.datetime.now(datetime.timezone.utc)
    commit = source_commit()
    t0 = time.time()

    daemon = None
    if args.url:
        api = Api(args.url, args.token)
    else:
        if not Path(args.fisherd).exists():
            raise SystemExit(f"experiment: no {args.fisherd}: run `make` first")
        daemon = OwnDaemon(args.fisherd, args.parallel, threads, args.data_root, args.keep_data).start()
        api = Api(daemon.url)
    try:
        version = api.get("/healthz").get("version", "?")
        ds = Datasets(api, args.data_root, cfg)
        for n in args.pretrain + [args.target] + args.zero_shot:
            if not ds.is_synthetic(n):
                ds.split(n, "eval", 1, 0)  # fails early, naming the folder
        log(f"mode {mode}: {cfg['config']} {cfg['image_size']}x{cfg['image_size']}, pretrain {cfg['pretrain_steps']} "
            f"steps on {', '.join(args.pretrain)}; fine-tune {cfg['steps']} steps on {args.target}, "
            f"seeds {cfg['seeds']}")
        jobs = run_jobs(api, cfg, ds, args, threads)
        collect(api, jobs, cfg)
    finally:
        if daemon:
            daemon.stop()
    wall = time.time() - t0
    Path(args.images).mkdir(parents=True, exist_ok=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    mach = machine(commit)
    summary = report(jobs, cfg, args, mode, ds, mach, started, wall, version, args.out, args.images, raw_path)
    raw = {"mode": mode, "config": cfg, "argv": sys.argv[1:], "machine": mach, "started": started.isoformat(),
           "wall_seconds": wall, "url": args.url or daemon.url, "summary": summary,
           "jobs": [{k: v for k, v in j.items() if k != "record"} | {"record_result": j["record"].get("result"),
                                                                    "reason": j["record"].get("reason")}
                    for j in jobs]}
    raw_path.write_text(json.dumps(raw, indent=1))
    failed = [j["id"] for j in jobs if j["status"] != "succeeded"]
    log(f"wrote {args.out}, {args.images}/experiment-*.svg and {raw_path} in {wall / 60:.1f} min"
        + (f"; {len(failed)} job(s) did not succeed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
