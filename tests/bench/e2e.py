#!/usr/bin/python3
"""e2e.py — a whole fine-tuning job under FisherAdapTune against the same job
training everything (`make bench` runs it; report.py puts it in the table).

    /usr/bin/python3 tests/bench/e2e.py                 ~4 minutes on 2 cores
    /usr/bin/python3 tests/bench/e2e.py --steps 200     shorter, noisier

What it does: pretrains `tiny` on the synthetic `shapes` domain
(examples/pretrain-shapes.json), then fine-tunes that model on `concrete`
twice with examples/finetune-concrete-fisher.json — once as written
(strategy fisher) and once with strategy full — the same steps, data, seed
and learning rate, early stopping off so both jobs run the same length.
Each job is one `fisherd train` process, timed from start to exit; its
summary.json gives the validation and zero-shot metrics and the trainable
parameters over the run, and its peak resident memory comes from the
kernel's accounting of that child (wait4's ru_maxrss).

Writes tests/bench/results/e2e.md and e2e.json (git-ignored).
"""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
RESULTS = os.path.join(HERE, "results", "e2e")
STRATEGIES = ("fisher", "full")


def log(msg):
    print(f"e2e: {msg}", file=sys.stderr, flush=True)


def run_job(binary, spec, out_dir, extra=()):
    """Runs one `fisherd train`; returns (summary, wall seconds, peak RSS MB)."""
    os.makedirs(out_dir, exist_ok=True)
    log_path = os.path.join(out_dir, "train.log")
    t = time.monotonic()
    with open(log_path, "w") as out:
        proc = subprocess.Popen([binary, "train", spec, "--out", out_dir, *extra], stdout=out, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the largest child's so far
    wall = time.monotonic() - t
    if os.waitstatus_to_exitcode(status) != 0:
        with open(log_path) as f:
            sys.exit(f"e2e: fisherd train {spec} failed ({os.waitstatus_to_exitcode(status)}):\n{f.read()[-2000:]}")
    with open(os.path.join(out_dir, "summary.json")) as f:
        return json.load(f), wall, usage.ru_maxrss / 1024.0


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def job_row(summary, wall, peak):
    zero = summary.get("zero_shot") or []
    return {
        "steps": summary["steps"],
        "wall_s": wall,
        "train_wall_s": summary["wall_seconds"],
        "val_iou": summary["final_val"]["iou"],
        "val_f1": summary["final_val"]["f1"],
        "zero_shot_iou": mean([z["iou"] for z in zero]),
        "zero_shot_f1": mean([z["f1"] for z in zero]),
        "zero_shot": {z.get("dataset", str(i)): {"iou": z["iou"], "f1": z["f1"]} for i, z in enumerate(zero)},
        "parameters": summary["parameters"],
        "trainable_end": summary["params_trainable"],
        "trainable_mean": summary["params_trainable_mean"],
        "freezes": len(summary.get("freezes") or []),
        "peak_rss_mb": peak,
    }


def render(res):
    f, a = res["jobs"]["fisher"], res["jobs"]["full"]
    lines = [f"# One fine-tuning job, FisherAdapTune vs training everything ({res['date']}, source {res['source']})",
             "",
             f"tiny at 128×128 on synthetic concrete, {f['steps']} steps, from a model pretrained on shapes; "
             "same spec, seed and learning rate, early stopping off.",
             "",
             "| | fisher | full | fisher / full |",
             "|---|--:|--:|--:|",
             f"| wall time, process start to exit (s) | {f['wall_s']:.1f} | {a['wall_s']:.1f} | "
             f"{f['wall_s'] / a['wall_s']:.2f} |",
             f"| val IoU / F1 (concrete) | {f['val_iou']:.3f} / {f['val_f1']:.3f} | "
             f"{a['val_iou']:.3f} / {a['val_f1']:.3f} | {f['val_iou'] / a['val_iou']:.2f} (IoU) |",
             f"| zero-shot IoU / F1 (mean of asphalt, wall, tiles) | {f['zero_shot_iou']:.3f} / "
             f"{f['zero_shot_f1']:.3f} | {a['zero_shot_iou']:.3f} / {a['zero_shot_f1']:.3f} | "
             f"{f['zero_shot_iou'] / a['zero_shot_iou']:.2f} (IoU) |",
             f"| parameters training at the end | {f['trainable_end']:,} | {a['trainable_end']:,} | "
             f"{f['trainable_end'] / a['trainable_end']:.2f} |",
             f"| parameters training, mean over the run | {f['trainable_mean']:,.0f} | {a['trainable_mean']:,.0f} | "
             f"{f['trainable_mean'] / a['trainable_mean']:.2f} |",
             f"| peak RSS (MB) | {f['peak_rss_mb']:.0f} | {a['peak_rss_mb']:.0f} | "
             f"{f['peak_rss_mb'] / a['peak_rss_mb']:.2f} |",
             "",
             f"Pretraining took {res['pretrain_s']:.0f} s. fisher made {f['freezes']} freeze decisions.",
             ""]
    return "\n".join(lines)


def source_state():
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    return (commit or "unknown") + (" + local changes" if dirty else "")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "fisherd"))
    ap.add_argument("--steps", type=int, help="fine-tuning steps (default: the example's)")
    ap.add_argument("--pretrain-steps", type=int, help="pretraining steps (default: the example's)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args(argv)
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"e2e: {args.bin} is not built (make)")
    tmp = tempfile.mkdtemp(prefix="e2e.")
    try:
        log(f"pretraining tiny on shapes in {tmp} …")
        _, pretrain_s, _ = run_job(args.bin, os.path.join(ROOT, "examples", "pretrain-shapes.json"),
                                   os.path.join(tmp, "pretrain"),
                                   ["--steps", str(args.pretrain_steps)] if args.pretrain_steps else [])
        with open(os.path.join(ROOT, "examples", "finetune-concrete-fisher.json")) as f:
            spec = json.load(f)
        spec.pop("early_stopping", None)  # both jobs run the same length
        spec["base_model"] = {"path": os.path.join(tmp, "pretrain", "model.safetensors")}
        if args.steps:
            spec["steps"] = args.steps
        jobs = {}
        for strategy in STRATEGIES:
            job = dict(spec, strategy=strategy, name=f"e2e-{strategy}")
            if strategy != "fisher":
                job.pop("fisher", None)  # the method's knobs are refused elsewhere
            path = os.path.join(tmp, f"{strategy}.json")
            with open(path, "w") as f:
                json.dump(job, f)
            log(f"fine-tuning on concrete, strategy {strategy}, {job['steps']} steps …")
            jobs[strategy] = job_row(*run_job(args.bin, path, os.path.join(tmp, strategy)))
            log(f"  {jobs[strategy]['wall_s']:.1f} s, val IoU {jobs[strategy]['val_iou']:.3f}")
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    res = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "source": source_state(), "pretrain_s": pretrain_s, "jobs": jobs}
    text = render(res)
    print(text)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS + ".md", "w") as f:
        f.write(text)
    with open(RESULTS + ".json", "w") as f:
        json.dump(res, f, indent=1)
    log(f"wrote {os.path.relpath(RESULTS, ROOT)}.md and .json")


if __name__ == "__main__":
    main(sys.argv[1:])
