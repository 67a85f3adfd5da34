#!/usr/bin/python3
"""report.py — one table of what `make bench` measured: the training step
against PyTorch, what drift tracking costs and freezing saves, a whole job
under FisherAdapTune against the same job training everything, the API
under load, and memory. Each row compares two things measured in the same
run of `make bench`.

    /usr/bin/python3 tests/bench/report.py              print the table
    /usr/bin/python3 tests/bench/report.py --readme     and put it in README.md

It reads what the benchmarks left in tests/bench/results/: step.json
(step.py), dp.json (dp.py), serve.json (serve_bench.py), e2e.json (e2e.py); a missing one
leaves its rows out and says so. With --readme the table replaces what
stands between the `bench:summary` markers in README.md's performance
section, with the date, the sources measured and the command.
"""

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
RESULTS = os.path.join(HERE, "results")
README = os.path.join(ROOT, "README.md")
BEGIN, END = "<!-- bench:summary:begin -->", "<!-- bench:summary:end -->"


def load(name):
    try:
        with open(os.path.join(RESULTS, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def pct(x):
    return f"{100 * x:+.1f}%"


def faster(ratio):
    """A time ratio (theirs / ours) in words that stay true below 1."""
    return f"{ratio:.2f}× faster" if ratio >= 1 else f"{1 / ratio:.2f}× slower"


def step_rows(step):
    rows = []
    for r in step["rows"]:
        case = f"{r['config']} {r['size']}×{r['size']}, batch {r['batch']}, {r['threads']} thread" + \
               ("s" if r["threads"] > 1 else "")
        rows.append(("training step", case, f"{r['c_ms']:.1f} ms", f"PyTorch {r['torch_ms']:.1f} ms",
                     faster(r['speed_ratio'])))
        rows.append(("compute", f"{case}: GFLOP/s of the step / sgemm peak",
                     f"{r['c_gflops']:.1f}", f"{r['sgemm_gflops']:.1f}",
                     f"{100 * r['c_gflops'] / r['sgemm_gflops']:.0f}% of peak"))
        rows.append(("memory", f"{case}: peak RSS of the training process", f"{r['c_rss']:.0f} MB",
                     f"PyTorch {r['torch_rss']:.0f} MB", f"{r['rss_ratio']:.1f}× less"))
    fisher = step.get("fisher")
    if fisher:
        c, mean, med = fisher["case"], fisher["mean_ms"], fisher["median_ms"]
        case = f"{c['config']} {c['size']}×{c['size']}, batch {c['batch']}, {c['threads']} threads"
        for e in fisher["ema_intervals"]:
            name = f"fisher, ema_interval {e}"
            rows.append(("drift tracking", f"{case}: step measuring drift every {e} step"
                         + ("s" if e > 1 else "") + " (mean)",
                         f"{mean[name]:.1f} ms", f"full {mean['full']:.1f} ms", pct(mean[name] / mean["full"] - 1)))
        base = med["fisher, 0% frozen"]
        for f in fisher["frozen"][1:]:
            name = f"fisher, {int(100 * f)}% frozen"
            rows.append(("freezing", f"{case}: step with {int(100 * f)}% of chunks frozen, earliest first "
                         f"({100 * fisher['trainable'][name]:.0f}% of parameters training; median)",
                         f"{med[name]:.1f} ms", f"none frozen {base:.1f} ms", f"{med[name] / base:.2f}×"))
    return rows


def e2e_rows(e2e):
    f, a = e2e["jobs"]["fisher"], e2e["jobs"]["full"]
    job = f"tiny 128×128, {f['steps']} steps fine-tuning on concrete"
    return [
        ("whole job", f"{job}: wall time, fisher vs full", f"{f['wall_s']:.1f} s", f"{a['wall_s']:.1f} s",
         f"{f['wall_s'] / a['wall_s']:.2f}×"),
        ("whole job", f"{job}: val IoU (concrete), fisher vs full", f"{f['val_iou']:.3f}", f"{a['val_iou']:.3f}",
         f"{f['val_iou'] / a['val_iou']:.2f}×"),
        ("whole job", f"{job}: zero-shot IoU (asphalt, wall, tiles), fisher vs full",
         f"{f['zero_shot_iou']:.3f}", f"{a['zero_shot_iou']:.3f}", f"{f['zero_shot_iou'] / a['zero_shot_iou']:.2f}×"),
        ("whole job", f"{job}: parameters training, mean over the run", f"{f['trainable_mean']:,.0f}",
         f"{a['trainable_mean']:,.0f}", f"{f['trainable_mean'] / a['trainable_mean']:.2f}×"),
    ]


def dp_rows(dp):
    def row(impl, strategy, frozen, ranks):
        return next((r for r in dp["rows"] if (r["impl"], r["strategy"], r["frozen"], r["ranks"])
                     == (impl, strategy, frozen, ranks)), None)
    rows = []
    c1, c2, t2 = row("c", "full", 0.0, 1), row("c", "full", 0.0, 2), row("torch", "full", 0.0, 2)
    if c1 and c2 and t2:
        rows.append(("data parallel", "mit-b0 128×128, global batch 4, full: step on 2 MPI ranks × 1 thread",
                     f"{c2['step_ms']:.1f} ms", f"PyTorch DDP {t2['step_ms']:.1f} ms",
                     faster(t2['step_ms'] / c2['step_ms'])))
        rows.append(("data parallel", "the same step: 2 ranks × 1 thread vs 1 rank × 2 threads",
                     f"{c2['step_ms']:.1f} ms", f"1 rank {c1['step_ms']:.1f} ms",
                     f"{c1['step_ms'] / c2['step_ms']:.2f}× the steps/s"))
    frozen = [r for r in dp["rows"] if r["impl"] == "c" and r["ranks"] == 2 and r["frozen"] > 0]
    f0 = row("c", "fisher", 0.0, 2) or c2
    if frozen and f0:
        f = max(frozen, key=lambda r: r["frozen"])
        rows.append(("data parallel", f"bytes all-reduced a step on 2 ranks: {f['frozen']:.0%} of chunks "
                     "frozen vs none", f"{f['allreduce_bytes'] / 1e6:.2f} MB",
                     f"{f0['allreduce_bytes'] / 1e6:.2f} MB", f"{f['allreduce_bytes'] / f0['allreduce_bytes']:.2f}×"))
    return rows


def serve_rows(serve):
    rows = []
    idle = {r["request"]: r for r in serve["wrk"] if r["phase"] == "idle"}
    busy = {r["request"]: r for r in serve["wrk"] if r["phase"] == "training" and not r["pace"]}
    what = {"drift": "one group's drift series (1000 of 10 000 points)", "job": "a job record"}
    for kind in ("drift", "job"):
        if kind in idle and kind in busy:
            i, b = idle[kind], busy[kind]
            rows.append(("API", f"{what[kind]}, saturating: req/s idle vs while mit-b0 trains",
                         f"{i['rps']:,.0f}", f"{b['rps']:,.0f}", f"p99 {i['p99_ms']:.2f} / {b['p99_ms']:.2f} ms"))
    for w in serve["windows"]:
        if w["label"] in ("drift", "job") and "slowdown" in w:
            rows.append(("API", f"mit-b0 step while {w['label']} reads saturate the daemon",
                         f"{1000 / w['steps_per_s']:.1f} ms", f"no load {1000 / w['base_steps_per_s']:.1f} ms",
                         pct(w["slowdown"])))
    rss = serve.get("rss", {})
    if "start" in rss and "end" in rss:
        rows.append(("memory", "daemon RSS: after start vs after the whole API benchmark",
                     f"{rss['start']['VmRSS']:.1f} MB", f"{rss['end']['VmRSS']:.1f} MB",
                     f"{rss['end']['VmRSS'] / rss['start']['VmRSS']:.2f}×"))
    return rows


def table(rows):
    head = ("", "measured", "fisherd", "against", "ratio")
    out = ["| " + " | ".join(head) + " |", "|---|---|--:|--:|--:|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def build():
    step, serve, e2e, dp = load("step"), load("serve"), load("e2e"), load("dp")
    rows, missing, sources = [], [], []
    for name, data, fn in (("step", step, step_rows), ("dp", dp, dp_rows), ("e2e", e2e, e2e_rows),
                           ("serve", serve, serve_rows)):
        if data is None:
            missing.append(name)
            continue
        rows += fn(data)
        sources.append(f"{name} {data.get('date', '?')}" + (f" ({data['source']})" if data.get("source") else ""))
    if not rows:
        sys.exit("report.py: nothing measured yet — run `make bench`")
    machine = f"{step['machine']}, {step['nproc']} cores" if step else "this machine"
    lines = [table(rows), "",
             f"Measured on {machine} by `make bench` ({'; '.join(sources)}); each ratio compares two "
             "numbers from the same run. Details: the sections below, and tests/bench/results/*.md."]
    if step and step.get("cpu_busy") and step["cpu_busy"] > 0.2:
        lines.append(f"The machine was {100 * step['cpu_busy']:.0f}% busy before the step benchmark: "
                     "absolute times suffer, ratios less.")
    if serve and serve.get("quick"):
        lines.append("The API rows come from a --quick run.")
    if missing:
        lines.append("Not measured in this run: " + ", ".join(missing) + ".")
    return "\n".join(lines) + "\n"


def update_readme(text):
    with open(README) as f:
        readme = f.read()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        sys.exit(f"report.py: README.md has no {BEGIN} … {END} block")
    readme = pattern.sub(lambda _: BEGIN + "\n" + text + END, readme)
    with open(README, "w") as f:
        f.write(readme)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", action="store_true", help="also put the table into README.md")
    args = ap.parse_args(argv)
    text = build()
    print(text, end="")
    with open(os.path.join(RESULTS, "summary.md"), "w") as f:
        f.write(text)
    if args.readme:
        update_readme(text)
        print("(README.md updated)", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
