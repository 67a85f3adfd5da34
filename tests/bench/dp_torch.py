#!/usr/bin/python3
"""dp_torch.py — the PyTorch half of the data-parallel benchmark
(tests/bench/dp.py runs it beside `mpirun bench_step --mpi`, the C half).

It times the step step_torch.py times, split over N processes the way
PyTorch users do it on CPUs: torch.distributed on the gloo backend,
DistributedDataParallel, each rank on its B/N rows of one fixed global
batch. BatchNorm stays per rank (SyncBatchNorm needs CUDA in this torch),
so PyTorch moves fewer bytes per step than libfisher, which synchronises
the decode head's BatchNorm: the comparison does not flatter the C side.

    dp_torch.py --config mit-b0 --size 128 --batch 4 --ranks 2 --threads 1

Prints ONE JSON line (from rank 0): step_ms per timed step (the slowest
rank's, as the step ends only when all have), and grad_bytes, what DDP's
reducer all-reduces per step (every trainable gradient: DDP has no notion
of a frozen group unless requires_grad is turned off).
"""

import argparse
import json
import os
import socket
import sys
import time
import warnings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see step_torch.py

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from step_torch import ADAMW, BATCH_SEED, MASK_DENSITY  # noqa: E402
from segformer_torch import CONFIGS, SegformerForSemanticSegmentation, model_loss  # noqa: E402


# DDP's bucket views are contiguous and the depthwise convolution's weight
# gradient comes back channels-last: DDP copies it (a cost PyTorch users pay
# too) and warns on every rank at the first backward.
warnings.filterwarnings("ignore", message="Grad strides do not match")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_rank(rank, args, port):
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=args.ranks)
    torch.manual_seed(BATCH_SEED)
    config = CONFIGS[args.config]
    model = SegformerForSemanticSegmentation(config)
    model.train()
    x = torch.randn(args.batch, config["num_channels"], args.size, args.size)
    target = (torch.rand(args.batch, config["num_labels"], args.size, args.size)
              < MASK_DENSITY).float()
    rows = slice(rank * args.batch // args.ranks, (rank + 1) * args.batch // args.ranks)
    x, target = x[rows].contiguous(), target[rows].contiguous()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), **ADAMW)
    step_ms = []
    for step in range(args.warmup + args.reps):
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        _, loss = model_loss(ddp, x, target)
        loss.backward()
        opt.step()
        dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(dt, op=dist.ReduceOp.MAX)
        if not torch.isfinite(loss):
            sys.exit(f"dp_torch: loss is {loss.item()} at step {step} on rank {rank}")
        if step >= args.warmup:
            step_ms.append(1e3 * dt.item())
    if rank == 0:
        grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        print(json.dumps(dict(impl="torch", config=args.config, size=args.size, batch=args.batch,
                              ranks=args.ranks, threads=args.threads,
                              step_ms=[round(v, 4) for v in step_ms],
                              grad_bytes=grad_bytes if args.ranks > 1 else 0),
                         separators=(",", ":")), flush=True)
    dist.destroy_process_group()


def parse_args(argv):
    p = argparse.ArgumentParser(description="Time data-parallel SegFormer steps in PyTorch (gloo, DDP).")
    p.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8, help="the global batch")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="per rank")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    if min(args.size, args.batch, args.ranks, args.threads, args.reps) < 1 or args.warmup < 0:
        p.error("size, batch, ranks, threads and reps must be >= 1, warmup >= 0")
    if args.batch % args.ranks:
        p.error(f"the global batch {args.batch} does not divide by {args.ranks} ranks")
    return args


def main(argv):
    args = parse_args(argv)
    mp.spawn(run_rank, args=(args, free_port()), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main(sys.argv[1:])
