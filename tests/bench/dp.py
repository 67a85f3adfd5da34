#!/usr/bin/python3
"""dp.py — the data-parallel benchmark (issue 9): one training step on 1
and on 2 MPI ranks of this machine, with freezing off and on, beside
PyTorch's DistributedDataParallel on the same model, batch and cores; then
the cost model for N machines that these measurements imply.

    /usr/bin/python3 tests/bench/dp.py --bin build/bench/bench_step [--quick]

The C half is `mpirun -np R bench_step --mpi` (tests/bench/bench_step.c):
each rank steps on its rows of one fixed global batch through the
communicator `fisherd worker` uses, and rank 0 reports the step times and
what the last step all-reduced (bytes and calls: the loss, SyncBN, the
Fisher statistics and the live gradients). The PyTorch half is dp_torch.py
(gloo, DDP). Rounds interleave both halves so drifting machine load hits
both alike; each row is the median step over the rounds.

Both sides get the same core budget: 1 rank × 2 threads against 2 ranks ×
1 thread each (this machine has 2 cores), so the 2-rank column shows what
splitting a batch across processes costs or gains, not more hardware.

Writes tests/bench/results/dp.json and dp.md; prints the tables.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

from step import child_env, cpu_busy, machine, source_state

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
RESULTS = os.path.join(HERE, "results")

CONFIG, SIZE, BATCH, CORES = "mit-b0", 128, 4, 2
# Freezing off (full) and on: the share of chunks frozen the way the method
# freezes (earliest layers first), drift measured every step (ema_interval
# 1, the costliest setting: the Fisher statistics are all-reduced each step).
CASES = [("full", 0.0), ("fisher", 0.0), ("fisher", 0.5), ("fisher", 0.9)]
QUICK_CASES = [("full", 0.0), ("fisher", 0.9)]
# The cost model's assumptions, stated where they are used (docs/DISTRIBUTED.md).
LINKS_GBIT = (10, 100)
LATENCY_US = 30.0      # one small message between two machines over TCP
MACHINES = (2, 4, 8, 16, 64)


def mpirun_base(ranks):
    cmd = ["mpirun", "-np", str(ranks), "--oversubscribe", "--bind-to", "none"]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    return cmd


def run_c(binary, ranks, strategy, frozen, warmup, reps):
    args = ["--config", CONFIG, "--size", str(SIZE), "--batch", str(BATCH),
            "--threads", str(CORES // ranks), "--warmup", str(warmup), "--reps", str(reps),
            "--strategy", strategy, "--mpi"]
    if frozen:
        args += ["--frozen", str(frozen)]
    return run(mpirun_base(ranks) + [binary] + args, child_env("c"))


def run_torch(ranks, warmup, reps):
    cmd = [sys.executable, os.path.join(HERE, "dp_torch.py"), "--config", CONFIG, "--size",
           str(SIZE), "--batch", str(BATCH), "--ranks", str(ranks), "--threads",
           str(CORES // ranks), "--warmup", str(warmup), "--reps", str(reps)]
    return run(cmd, child_env("torch"))


def run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or len(lines) != 1:
        sys.exit(f"dp.py: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return json.loads(lines[0])


def measure(binary, cases, rounds, warmup, reps):
    runs = {}
    for r in range(rounds):
        for ranks in (1, 2):
            for strategy, frozen in cases:
                out = run_c(binary, ranks, strategy, frozen, warmup, reps)
                runs.setdefault(("c", strategy, frozen, ranks), []).append(out)
                print(f"  round {r + 1}/{rounds} c     {strategy:6s} frozen {frozen:.0%} {ranks} rank(s): "
                      f"{' '.join(f'{v:.1f}' for v in out['step_ms'])} ms, "
                      f"{out['allreduce_bytes']} B all-reduced", file=sys.stderr)
            out = run_torch(ranks, warmup, reps)
            runs.setdefault(("torch", "full", 0.0, ranks), []).append(out)
            print(f"  round {r + 1}/{rounds} torch full   {ranks} rank(s): "
                  f"{' '.join(f'{v:.1f}' for v in out['step_ms'])} ms", file=sys.stderr)
    rows = []
    for (impl, strategy, frozen, ranks), outs in sorted(runs.items()):
        last = outs[-1]
        rows.append({
            "impl": impl, "strategy": strategy, "frozen": frozen, "ranks": ranks,
            "threads_per_rank": CORES // ranks,
            "step_ms": statistics.median(v for o in outs for v in o["step_ms"]),
            "allreduce_bytes": last.get("allreduce_bytes", last.get("grad_bytes", 0)),
            "grad_bytes": last.get("grad_allreduce_bytes", last.get("grad_bytes", 0)),
            "allreduce_calls": last.get("allreduce_calls"),
            "params_trainable": last.get("params_trainable"),
        })
    return rows


def find(rows, impl, strategy, frozen, ranks):
    for r in rows:
        if (r["impl"], r["strategy"], r["frozen"], r["ranks"]) == (impl, strategy, frozen, ranks):
            return r
    return None


def label(strategy, frozen):
    return "full (no freezing)" if strategy == "full" else f"fisher, {frozen:.0%} of chunks frozen"


def measured_table(rows, cases):
    out = ["| step | 1 rank × 2 threads | 2 ranks × 1 thread | 2 ranks / 1 rank | "
           "all-reduced per step (2 ranks) | calls |",
           "|---|---|---|---|---|---|"]
    for strategy, frozen in cases:
        one, two = find(rows, "c", strategy, frozen, 1), find(rows, "c", strategy, frozen, 2)
        out.append(f"| fisherd, {label(strategy, frozen)} | {one['step_ms']:.1f} ms | "
                   f"{two['step_ms']:.1f} ms | {one['step_ms'] / two['step_ms']:.2f}× the steps/s | "
                   f"{two['allreduce_bytes'] / 1e6:.3f} MB (gradients {two['grad_bytes'] / 1e6:.3f} MB) | "
                   f"{two['allreduce_calls']} |")
    one, two = find(rows, "torch", "full", 0.0, 1), find(rows, "torch", "full", 0.0, 2)
    out.append(f"| PyTorch DDP (gloo), full | {one['step_ms']:.1f} ms | {two['step_ms']:.1f} ms | "
               f"{one['step_ms'] / two['step_ms']:.2f}× the steps/s | "
               f"{two['grad_bytes'] / 1e6:.3f} MB (gradients) | (DDP buckets) |")
    c1, t1 = find(rows, "c", "full", 0.0, 2), find(rows, "torch", "full", 0.0, 2)
    out.append("")
    out.append(f"2 ranks, full: fisherd {c1['step_ms']:.1f} ms vs PyTorch DDP {t1['step_ms']:.1f} ms "
               f"a step — {t1['step_ms'] / c1['step_ms']:.2f}× PyTorch's steps/s.")
    return "\n".join(out)


def cost_model(rows, cases):
    """Weak scaling: every machine steps on a batch of BATCH as this one
    does (the global batch grows with N), so compute per step stays this
    machine's 1-rank step; what N adds is the all-reduce. Two bounds for
    it, both without overlap (fisherd all-reduces after the backward):
      ring all-reduce (what a bandwidth-optimal library does):
          2 (N−1)/N · V / BW + 2 (N−1) · α per call
      reduce to rank 0 + broadcast, binomial trees (what fisherd does today,
      for the same bits on every rank, mpi_comm.c):
          2 ⌈log2 N⌉ · V / BW + 2 ⌈log2 N⌉ · α per call"""
    lines = ["| step | N | link | compute | ring all-reduce | efficiency | "
             "reduce+bcast (fisherd) | efficiency |", "|---|---|---|---|---|---|---|---|"]
    model = []
    for strategy, frozen in cases:
        one, two = find(rows, "c", strategy, frozen, 1), find(rows, "c", strategy, frozen, 2)
        compute = one["step_ms"] * 1e-3
        volume, calls = two["allreduce_bytes"], two["allreduce_calls"]
        for n in MACHINES:
            for gbit in LINKS_GBIT:
                bw = gbit * 1e9 / 8
                alpha = LATENCY_US * 1e-6
                ring = 2 * (n - 1) / n * volume / bw + 2 * (n - 1) * alpha * calls
                hops = math.ceil(math.log2(n))
                tree = 2 * hops * volume / bw + 2 * hops * alpha * calls
                model.append(dict(strategy=strategy, frozen=frozen, machines=n, gbit=gbit,
                                  compute_ms=1e3 * compute, ring_ms=1e3 * ring, tree_ms=1e3 * tree))
                if n in (2, 16, 64):
                    lines.append(f"| {label(strategy, frozen)} | {n} | {gbit} Gbit/s | "
                                 f"{1e3 * compute:.1f} ms | {1e3 * ring:.2f} ms | "
                                 f"{compute / (compute + ring):.0%} | {1e3 * tree:.2f} ms | "
                                 f"{compute / (compute + tree):.0%} |")
    return "\n".join(lines), model


def parse_args(argv):
    p = argparse.ArgumentParser(description="Data-parallel step: 1 vs 2 MPI ranks, vs PyTorch DDP.")
    p.add_argument("--bin", default=os.path.join(ROOT, "build", "bench", "bench_step"))
    p.add_argument("--quick", action="store_true", help="one round, two cases")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=os.path.join(RESULTS, "dp.md"))
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    cases = QUICK_CASES if args.quick else CASES
    rounds = 1 if args.quick else args.rounds
    warmup, reps = (1, 3) if args.quick else (2, 8)
    model_name, cpus = machine()
    busy = cpu_busy()
    started = time.strftime("%Y-%m-%d %H:%M")
    rows = measure(args.bin, cases, rounds, warmup, reps)
    measured = measured_table(rows, cases)
    costs, model = cost_model(rows, cases)
    head = (f"{CONFIG} {SIZE}×{SIZE}, global batch {BATCH}; {model_name}, {cpus} CPUs "
            f"({'busy ' + format(busy, '.0%') if busy is not None else 'load unknown'} before the run); "
            f"{rounds} round(s) × {reps} steps; {started}; source {source_state()}; "
            f"`{' '.join(['tests/bench/dp.py'] + argv)}`")
    text = (f"{head}\n\n{measured}\n\nCost model for N machines like this one, each on a batch of "
            f"{BATCH} (α = {LATENCY_US:.0f} µs a message, assumed):\n\n{costs}\n")
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    with open(os.path.join(RESULTS, "dp.json"), "w") as f:
        json.dump(dict(date=started, source=source_state(), head=head, rows=rows, cost_model=model,
                       latency_us=LATENCY_US), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
