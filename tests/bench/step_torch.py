#!/usr/bin/python3
"""step_torch.py — the PyTorch half of the training-step benchmark
(tests/bench/step.py runs it interleaved with bench_step, the C half).

It times the very step bench_step times, on the reference model the parity
tests prove libfisher against (tests/parity/segformer_torch.py): train mode,
zero_grad → forward → bilinear upsample of the logits to full size →
BCE + 0.65·(1 − Dice) → backward → AdamW(lr 1e-4, betas (0.9, 0.999),
eps 1e-8, weight decay 5e-5), on one fixed random batch.

    OPENBLAS_NUM_THREADS=1 step_torch.py --config mit-b0 --size 128 --batch 4 --threads 2

Prints ONE JSON line like bench_step's, with "impl": "torch" and no sgemm
figures, plus "base_rss_mb": the high-water RSS after importing torch and
before building the model, so a reader can tell the interpreter's and
libtorch's fixed cost from the step's own memory.
"""

import argparse
import json
import os
import resource
import sys
import time

# Debian's torch runs its own OpenMP pool (torch.set_num_threads) and calls
# OpenBLAS, whose pthread pool is sized when the library loads: on a small
# machine the two pools oversubscribe the cores. The driver sets this in the
# child's environment; setting a default here too (before torch is imported,
# so before OpenBLAS loads) keeps a hand-run measurement the same.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402  (must follow the environment set-up above)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parity"))
from segformer_torch import (CONFIGS, SegformerForSemanticSegmentation,  # noqa: E402
                             model_loss)

# fisher_adamw_defaults() (lib/optim.c), FISHERADAPTUNE.md §7.
ADAMW = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=5e-5)
BATCH_SEED = 42
MASK_DENSITY = 0.1  # like the synthetic cracks, as bench_step.c


def maxrss_mb():
    """Peak resident memory of this process, in MB. Linux keeps ru_maxrss
    across execve, so a child of a big parent (the driver, which imports
    torch) would report the parent's peak; VmHWM belongs to this process's
    own address space. ru_maxrss only where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def parse_args(argv):
    p = argparse.ArgumentParser(description="Time SegFormer training steps in PyTorch.")
    p.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    if min(args.size, args.batch, args.threads, args.reps) < 1 or args.warmup < 0:
        p.error("size, batch, threads and reps must be >= 1, warmup >= 0")
    return args


def main(argv):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    base_rss = maxrss_mb()

    torch.manual_seed(BATCH_SEED)
    config = CONFIGS[args.config]
    model = SegformerForSemanticSegmentation(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), **ADAMW)
    x = torch.randn(args.batch, config["num_channels"], args.size, args.size)
    target = (torch.rand(args.batch, config["num_labels"], args.size, args.size)
              < MASK_DENSITY).float()

    step_ms = []
    for step in range(args.warmup + args.reps):
        t0 = time.perf_counter()
        # set_to_none: PyTorch's own fast path (the default from 2.0 on); the
        # C side's equivalent is one memset of its flat gradient array.
        opt.zero_grad(set_to_none=True)
        _, loss = model_loss(model, x, target)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        # As bench_step: a non-finite loss makes the time meaningless.
        if not torch.isfinite(loss):
            sys.exit(f"step_torch: loss is {loss.item()} at step {step}")
        if step >= args.warmup:
            step_ms.append(1e3 * dt)

    print(json.dumps(dict(impl="torch", config=args.config, size=args.size, batch=args.batch,
                          threads=args.threads, step_ms=[round(v, 4) for v in step_ms],
                          maxrss_mb=round(maxrss_mb(), 2), sgemm_gflops=None,
                          base_rss_mb=round(base_rss, 2)),
                     separators=(",", ":")))


if __name__ == "__main__":
    main(sys.argv[1:])
