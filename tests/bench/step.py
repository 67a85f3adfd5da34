#!/usr/bin/python3
"""step.py — the training-step benchmark: libfisher against PyTorch, side by
side (`make bench`; this is its driver).

For each case (config, image size, batch) and each thread count it runs the
C half (build/bench/bench_step) and the PyTorch half (step_torch.py) as
separate processes, INTERLEAVED — c, torch, c, torch, … — so that whatever
else the machine does during the run (thermal drift, a neighbour's build)
falls on both sides alike rather than on whichever ran second. Every timed
step of every round is pooled and the median taken per side.

    /usr/bin/python3 tests/bench/step.py                 the full table (minutes)
    /usr/bin/python3 tests/bench/step.py --quick         tiny and mit-b0@128, one round
    /usr/bin/python3 tests/bench/step.py --cases mit-b1:128:2 --threads 2

The table goes to stdout and, as markdown, to tests/bench/results/step.md
(git-ignored: results belong to a machine, not to the source).

GFLOP/s convention: the forward FLOPs are counted analytically from the
config — 2·M·N·K for every matmul and convolution — and the training step
is taken to cost 3× the forward (backward ≈ 2× forward: one product for the
input gradient, one for the weight gradient). Norms, activations, softmax,
resizes, the loss and AdamW are not counted: they are memory-bound and
small in FLOPs. The count is the reference model's, whatever shortcuts an
engine takes, so GFLOP/s compares like with like across engines and runs.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "parity"))
# The configs come from the reference module so that the FLOP count, the
# PyTorch half and the parity fixtures read one table; importing it costs
# a torch import, which is installed wherever the PyTorch half runs.
import torch  # noqa: E402  (only for its version in the header)
from segformer_torch import CONFIGS  # noqa: E402

# (config, image size, batch, timed steps per process). mit-b0 at 256 takes
# ~1 s a step on one core, so it gets fewer timed steps per process.
CASES = [("tiny", 64, 8, 5), ("mit-b0", 128, 4, 5), ("mit-b0", 256, 4, 3)]
QUICK_CASES = CASES[:2]
THREADS = [1, 2]
ROUNDS = 3
WARMUP = 2

COLUMNS = ["config", "size", "batch", "threads", "C ms", "PyTorch ms",
           "speed ratio (torch/C)", "C GFLOP/s", "sgemm peak GFLOP/s",
           "C RSS MB", "PyTorch RSS MB", "RSS ratio (torch/C)"]


# ---------------------------------------------------------------------------
# FLOPs of one training step, from the config
# ---------------------------------------------------------------------------

def conv_out(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def forward_flops(config, size, batch):
    """Multiply-add FLOPs (2 per MAC) of one forward pass over a batch of
    size×size images, layer for layer as segformer_torch.py computes it."""
    flops = 0
    h = w = size
    c_in = config["num_channels"]
    stage_tokens = []
    for i, c in enumerate(config["hidden_sizes"]):
        k, s = config["patch_sizes"][i], config["strides"][i]
        h, w = conv_out(h, k, s, k // 2), conv_out(w, k, s, k // 2)
        n = h * w
        flops += 2 * n * c * (c_in * k * k)                      # patch embedding conv
        r = config["sr_ratios"][i]
        m = (h // r) * (w // r) if r > 1 else n                 # keys/values after reduction
        hidden = c * config["mlp_ratios"][i]
        block = (2 * n * c * c                                  # query
                 + (2 * m * c * (c * r * r) if r > 1 else 0)    # sr conv, kernel = stride = r
                 + 2 * 2 * m * c * c                            # key, value
                 + 2 * n * m * c                                # Q·Kᵀ, all heads together
                 + 2 * n * m * c                                # probs·V
                 + 2 * n * c * c                                # attention output dense
                 + 2 * n * c * hidden                           # Mix-FFN dense1
                 + 2 * n * hidden * 9                           # depthwise 3×3 conv
                 + 2 * n * hidden * c)                          # dense2
        flops += config["depths"][i] * block
        stage_tokens.append((n, c))
        c_in = c
    d = config["decoder_hidden_size"]
    n1 = stage_tokens[0][0]                                     # the 1/4-resolution grid
    flops += sum(2 * n * c * d for n, c in stage_tokens)        # linear_c projections
    flops += 2 * n1 * (len(stage_tokens) * d) * d               # linear_fuse (1×1 conv)
    flops += 2 * n1 * d * config["num_labels"]                  # classifier (1×1 conv)
    return batch * flops


def step_flops(config, size, batch):
    return 3 * forward_flops(config, size, batch)


# ---------------------------------------------------------------------------
# Running the two halves
# ---------------------------------------------------------------------------

def child_env(impl):
    env = dict(os.environ)
    if impl == "torch":
        # Torch's OpenMP pool does the threading; a second, OpenBLAS pool of
        # nproc threads on top of it fights it for the cores.
        env["OPENBLAS_NUM_THREADS"] = "1"
    else:
        # bench_step sets its threads itself (fisher_set_threads: OpenBLAS
        # and OpenMP); an inherited OpenBLAS cap must not undercut that.
        env.pop("OPENBLAS_NUM_THREADS", None)
    return env


def run_one(impl, binary, config, size, batch, threads, warmup, reps, extra=()):
    """Runs one process of one half; returns its parsed JSON line."""
    args = ["--config", config, "--size", str(size), "--batch", str(batch),
            "--threads", str(threads), "--warmup", str(warmup), "--reps", str(reps), *extra]
    cmd = ([binary] if impl == "c" else
           [sys.executable, os.path.join(HERE, "step_torch.py")]) + args
    proc = subprocess.run(cmd, env=child_env(impl), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"step.py: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if len(lines) != 1:
        sys.exit(f"step.py: {' '.join(cmd)} printed no single JSON line:\n{proc.stdout}")
    return json.loads(lines[0])


def bench_case(binary, config, size, batch, threads, rounds, warmup, reps):
    """Interleaved rounds of both halves; returns one table row (a dict)."""
    results = {"c": [], "torch": []}
    for r in range(rounds):
        for impl in ("c", "torch"):
            out = run_one(impl, binary, config, size, batch, threads, warmup, reps)
            results[impl].append(out)
            print(f"  round {r + 1}/{rounds} {impl:5s} {config} {size} b{batch} t{threads}: "
                  f"{' '.join(f'{v:.1f}' for v in out['step_ms'])} ms", file=sys.stderr)

    def median_ms(impl):
        return statistics.median(v for out in results[impl] for v in out["step_ms"])

    def max_rss(impl):  # the high-water mark over the rounds
        return max(out["maxrss_mb"] for out in results[impl])

    c_ms, torch_ms = median_ms("c"), median_ms("torch")
    c_rss, torch_rss = max_rss("c"), max_rss("torch")
    return {
        "config": config, "size": size, "batch": batch, "threads": threads,
        "c_ms": c_ms, "torch_ms": torch_ms, "speed_ratio": torch_ms / c_ms,
        "c_gflops": step_flops(CONFIGS[config], size, batch) / (c_ms * 1e-3) / 1e9,
        "sgemm_gflops": max(out["sgemm_gflops"] for out in results["c"]),
        "c_rss": c_rss, "torch_rss": torch_rss, "rss_ratio": torch_rss / c_rss,
        "torch_base_rss": min(out["base_rss_mb"] for out in results["torch"]),
    }


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def machine():
    model = "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return model, len(os.sched_getaffinity(0))  # what `nproc` prints


def cpu_busy(seconds=1.0):
    """Fraction of all CPUs busy over a short sample (from /proc/stat), or
    None. Taken before the first case: other work on the machine slows both
    halves, and the 2-thread rows most, since they need every core."""
    def sample():
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        idle = ticks[3] + ticks[4]  # idle + iowait
        return sum(ticks), idle
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def source_state():
    """The commit measured, and whether lib/ differed from it: the library
    is what is being measured, and it moves."""
    def git(*args):
        return subprocess.run(["git", "-C", ROOT, *args], capture_output=True,
                              text=True).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD") or "unknown"
        dirty = bool(git("status", "--porcelain", "--", "lib"))
    except OSError:
        return "unknown"
    return commit + (" + uncommitted lib/ changes" if dirty else "")


def format_table(rows):
    cells = [[r["config"], str(r["size"]), str(r["batch"]), str(r["threads"]),
              f"{r['c_ms']:.1f}", f"{r['torch_ms']:.1f}", f"{r['speed_ratio']:.2f}",
              f"{r['c_gflops']:.1f}", f"{r['sgemm_gflops']:.1f}",
              f"{r['c_rss']:.0f}", f"{r['torch_rss']:.0f}", f"{r['rss_ratio']:.1f}"]
             for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(COLUMNS)]
    right = [False] * 4 + [True] * (len(COLUMNS) - 4)  # numbers align right

    def line(values):
        return "| " + " | ".join(v.rjust(w) if rj else v.ljust(w)
                                 for v, w, rj in zip(values, widths, right)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if rj else "-" * (w + 2)
                          for w, rj in zip(widths, right)) + "|"
    return "\n".join([line(COLUMNS), rule] + [line(row) for row in cells])


def report(rows, rounds):
    """The table and the notes that say how to read it (markdown)."""
    torch_base = min(r["torch_base_rss"] for r in rows)
    notes = [
        f"Medians over every timed step of {rounds} interleaved round(s) per side "
        f"(C and PyTorch processes alternating; {WARMUP} warm-up steps per process "
        "not timed). speed ratio = PyTorch ms / C ms (> 1: C faster). RSS = peak "
        "resident memory of the process (VmHWM), highest over the rounds; "
        "RSS ratio = PyTorch / C (> 1: C leaner).",
        "C GFLOP/s = step FLOPs / C step time, step FLOPs = 3 × forward FLOPs "
        "(backward counted as 2× forward), forward = 2·M·N·K over every matmul and "
        "conv (patch embeddings, q/k/v/sr/output projections, QKᵀ and AV, "
        "Mix-FFN dense1/depthwise 3×3/dense2, decode-head linear_c, linear_fuse, "
        "classifier); norms, activations, resizes, loss and AdamW not counted. "
        "The FLOPs are the reference model's, so work the C engine saves by "
        "algebra (e.g. fusing the decode head at each stage's resolution) shows "
        "as higher GFLOP/s: it is effective throughput.",
        "sgemm peak = best cblas_sgemm rate in the C process (n = 1024, or 2048 "
        "when fast), same OpenBLAS thread count, best over the rounds.",
        f"PyTorch's RSS includes ~{torch_base:.0f} MB that the interpreter and "
        "libtorch hold before any model exists. PyTorch ran with "
        "OPENBLAS_NUM_THREADS=1 and torch.set_num_threads(threads).",
    ]
    return format_table(rows) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


# ---------------------------------------------------------------------------
# FisherAdapTune: what tracking costs, what freezing saves (C only: PyTorch
# has no counterpart to compare with; the yardstick is the C `full` step)
# ---------------------------------------------------------------------------

FISHER_CASE = ("mit-b0", 128, 4, 2)   # config, size, batch, threads
EMA_INTERVALS = (1, 10)
AMORTISED = (50, 300)   # the small example's and the SegFormer config's ema_interval
FROZEN = (0.0, 0.25, 0.5, 0.75, 0.9)
# The overhead rows judge a few per cent, and the steps of one process vary
# by about as much (mit-b0 full, 15 steps: best 96.0 ms, median 99.5 ms), so
# full and the ema_interval rows time 2× the case's steps per process. Whole
# processes differ too (mit-b0 full, 4 processes of 45 steps: means 83.9 to
# 87.5 ms), and so does the machine within a round: run each row's processes
# back to back, full first, and one run read +3.2, +9.2 and +4.5% for
# ema_interval 1 and +2.1, +5.8 and +1.1% for ema_interval 10 (~0.4%
# expected) in its three rounds: the machine slowed as a round went on.
# So those rows run 4 processes a round, in sweeps over the rows that go
# forth and back (full, 1, 10, 10, 1, full, ...): a machine that speeds up or
# slows down over a round weighs on every row alike.
OVERHEAD_REPS_FACTOR = 2
OVERHEAD_PROCESSES = 4


def frozen_name(fraction, spread):
    return f"fisher, {int(100 * fraction)}% frozen" + (" spread" if spread and fraction else "")


def fisher_section(binary, rounds, reps):
    """Markdown tables: the overhead of drift tracking over `full`, and the
    step time as chunks freeze — earliest layers first (whole tensors freeze,
    back-propagation stops early), and spread (every tensor loses the same
    share of its row chunks: only skipping frozen rows can pay)."""
    config, size, batch, threads = FISHER_CASE
    variants = [("full", ["--strategy", "full"])]
    variants += [(f"fisher, ema_interval {e}", ["--strategy", "fisher", "--ema-interval", str(e)])
                 for e in EMA_INTERVALS]
    variants += [(frozen_name(f, False),
                  ["--strategy", "fisher", "--ema-interval", "1000000000", "--frozen", str(f)])
                 for f in FROZEN]
    variants += [(frozen_name(f, True),
                  ["--strategy", "fisher", "--ema-interval", "1000000000", "--frozen-spread", str(f)])
                 for f in FROZEN if f > 0]
    times = {name: [] for name, _ in variants}
    trainable = {}
    overhead_rows = {"full"} | {f"fisher, ema_interval {e}" for e in EMA_INTERVALS}
    overhead = [v for v in variants if v[0] in overhead_rows]
    sweeps = [overhead if k % 2 == 0 else overhead[::-1] for k in range(OVERHEAD_PROCESSES)]
    schedule = [(v, reps * OVERHEAD_REPS_FACTOR) for sweep in sweeps for v in sweep]
    schedule += [(v, reps) for v in variants if v[0] not in overhead_rows]
    for r in range(rounds):  # interleaved, like the main table
        for (name, extra), n in schedule:
            out = run_one("c", binary, config, size, batch, threads, WARMUP, n, extra)
            times[name] += out["step_ms"]
            trainable[name] = out["params_trainable"] / out["parameters"]
            print(f"  round {r + 1}/{rounds} {name}: "
                  f"{' '.join(f'{v:.1f}' for v in out['step_ms'])} ms", file=sys.stderr)
    med = {name: statistics.median(v) for name, v in times.items()}
    mean = {name: statistics.mean(v) for name, v in times.items()}
    full = med["full"]
    lines = [f"### FisherAdapTune on {config} {size}x{size} batch {batch}, {threads} threads", "",
             "| step | median ms | mean ms | vs full |", "|---|--:|--:|--:|",
             f"| full | {full:.1f} | {mean['full']:.1f} | — |"]
    for e in EMA_INTERVALS:
        name = f"fisher, ema_interval {e}"
        lines.append(f"| {name} (no chunk frozen yet) | {med[name]:.1f} | {mean[name]:.1f} | "
                     f"{100 * (mean[name] / mean['full'] - 1):+.1f}% |")
    measure = mean["fisher, ema_interval 1"] - mean["full"]  # one measurement's cost
    for n in AMORTISED:
        lines.append(f"| fisher, ema_interval {n} (amortised: full + measurement / {n}) | — | "
                     f"{mean['full'] + measure / n:.1f} | {100 * measure / n / mean['full']:+.1f}% |")
    lines += ["", "| chunks frozen | earliest layers first: parameters training | median ms | "
              "vs 0% frozen | spread over tensors: parameters training | median ms | vs 0% frozen |",
              "|--:|--:|--:|--:|--:|--:|--:|"]
    base = med[frozen_name(FROZEN[0], False)]
    for f in FROZEN:
        row = f"| {int(100 * f)}% |"
        for spread in (False, True):
            name = frozen_name(f, spread)
            row += f" {100 * trainable[name]:.1f}% | {med[name]:.1f} | {med[name] / base:.2f} |"
        lines.append(row)
    lines += ["", f"- Overhead rows: mean step time over {rounds} round(s) of "
              f"{OVERHEAD_PROCESSES} processes × {reps * OVERHEAD_REPS_FACTOR} steps, a round's "
              "processes in sweeps over the rows forth and back — with "
              "ema_interval N one step in N measures every chunk's drift, so the mean is what a run "
              "pays; 'vs full' compares means; the amortised rows add one measurement's measured cost "
              "(ema_interval 1 minus full) every N steps. Freezing rows: drift measurement off "
              "(ema_interval 10^9) to isolate what freezing saves. Earliest layers first: chunks "
              "frozen in forward-depth order, the way the method freezes early encoder layers "
              "first (whole tensors freeze, back-propagation stops early). Spread: every tensor "
              "loses the same share of its row chunks (--frozen-spread), so tensors stay partly "
              "live and only skipping the weight-gradient rows of frozen chunks saves time."]
    data = {"case": dict(zip(("config", "size", "batch", "threads"), FISHER_CASE)),
            "median_ms": med, "mean_ms": mean, "trainable": trainable,
            "ema_intervals": list(EMA_INTERVALS), "frozen": list(FROZEN)}
    return "\n".join(lines) + "\n", data


def parse_case(text):
    try:
        config, size, batch = text.split(":")
        size, batch = int(size), int(batch)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not CONFIG:SIZE:BATCH")
    if config not in CONFIGS:
        raise argparse.ArgumentTypeError(f"unknown config '{config}' "
                                         f"(known: {', '.join(CONFIGS)})")
    reps = next((c[3] for c in CASES if c[:3] == (config, size, batch)), 5)
    return config, size, batch, reps


def parse_args(argv):
    p = argparse.ArgumentParser(description="SegFormer training step, C vs PyTorch.")
    p.add_argument("--quick", action="store_true",
                   help="tiny@64 and mit-b0@128 only, one round")
    p.add_argument("--cases", type=lambda s: [parse_case(c) for c in s.split(",")],
                   help="comma-separated CONFIG:SIZE:BATCH, e.g. tiny:64:8,mit-b0:256:4")
    p.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")],
                   help=f"comma-separated thread counts (default {','.join(map(str, THREADS))})")
    p.add_argument("--rounds", type=int, help=f"interleaved rounds (default {ROUNDS}; 1 quick)")
    p.add_argument("--bin", default=os.path.join(ROOT, "build", "bench", "bench_step"),
                   help="the C half (`make bench` builds it)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "step.md"),
                   help="where the markdown table goes (and, as .json beside it, the numbers "
                        "report.py gathers)")
    p.add_argument("--no-fisher", action="store_true",
                   help="skip the FisherAdapTune overhead and freezing tables")
    args = p.parse_args(argv)
    args.cases = args.cases or (QUICK_CASES if args.quick else CASES)
    args.threads = args.threads or THREADS
    args.rounds = args.rounds or (1 if args.quick else ROUNDS)
    if args.rounds < 1 or min(args.threads) < 1:
        p.error("--rounds and --threads must be >= 1")
    if not os.access(args.bin, os.X_OK):
        p.error(f"{args.bin} is missing: `make bench` builds it")
    return args


def main(argv):
    args = parse_args(argv)
    model, nproc = machine()
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    source = source_state()  # at the start: the tree may move during the run
    busy = cpu_busy()
    header = [
        "# SegFormer training step: libfisher (C) vs PyTorch",
        "",
        f"- machine: {model}, nproc {nproc}",
        f"- date: {now}",
        f"- source: {source}; PyTorch {torch.__version__}",
        "- CPU busy before the run (1 s sample): " +
        ("unknown" if busy is None else f"{100 * busy:.0f}%") +
        (" — something else is running: absolute times suffer, the 2-thread rows "
         "most; the interleaving keeps the ratios fairer" if busy and busy > 0.2 else ""),
    ]
    print("\n".join(header), flush=True)

    rows = []
    for config, size, batch, reps in args.cases:
        for threads in args.threads:
            rows.append(bench_case(args.bin, config, size, batch, threads, args.rounds,
                                   WARMUP, reps))

    body = report(rows, args.rounds)
    fisher = None
    if not args.no_fisher:
        text, fisher = fisher_section(args.bin, args.rounds, 10 if not args.quick else 5)
        body += "\n" + text
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(header) + "\n\n" + body)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"date": now, "source": source, "machine": model, "nproc": nproc,
                   "torch": torch.__version__, "cpu_busy": busy, "rounds": args.rounds,
                   "rows": rows, "fisher": fisher}, f, indent=1)
    print("\n" + body, end="")
    print(f"\n(written to {os.path.relpath(args.out, os.getcwd())})")


if __name__ == "__main__":
    main(sys.argv[1:])
