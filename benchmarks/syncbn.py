"""Step time (forward + backward) of synchronized batch norm, on 2 gloo ranks.

Compares, in the same 2-process group and interleaved round by round (the
machine is shared, so only side-by-side ratios mean something):

* ``BatchNorm2d``: torch.nn.BatchNorm2d, each rank on its own batch (no communication);
* ``sync once``: encnet.nn.SyncBatchNorm, one all-reduce forward, one backward;
* ``sync twice``: the same with two all-reduces forward (mean, then variance).

A round times one step of each layer on each rank (each after a barrier, in
an order rotated from round to round, so no layer always follows another); a step
lasts as long as its slowest rank, so each time is the median over rounds of
the slower rank's time, and each ratio the median over rounds of the ratio
within the round. Each process uses one CPU thread.

torch.nn.SyncBatchNorm is tried too: it refuses CPU tensors, and the benchmark
prints its error. Comparing against it needs GPUs with NCCL; no GPU was lent
to this task, so that comparison was not measured.

Run: ``python benchmarks/syncbn.py`` (about a minute; ``--rounds`` and
``--shape`` to change).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist
from torch import nn

from encnet.distributed import spawn
from encnet.nn import SyncBatchNorm

LAYERS = ("BatchNorm2d", "sync once", "sync twice")


def time_steps(rank: int, world_size: int, shape: tuple[int, ...], rounds: int, warmup: int) -> dict[str, list[float]]:
    """On one rank: seconds per forward + backward step of each layer, interleaved over ``rounds``."""
    channels = shape[1]
    layers = {
        "BatchNorm2d": nn.BatchNorm2d(channels),
        "sync once": SyncBatchNorm(channels, sync="once"),
        "sync twice": SyncBatchNorm(channels, sync="twice"),
    }
    generator = torch.Generator().manual_seed(rank)
    x = (torch.randn(shape, generator=generator) * 2 + 1).requires_grad_()
    upstream = torch.randn(shape, generator=generator)
    seconds: dict[str, list[float]] = {name: [] for name in layers}
    names = list(layers)
    for round_index in range(warmup + rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]  # rotate: no layer always first
        for name in order:
            layer = layers[name]
            x.grad = None
            dist.barrier()
            start = time.perf_counter()
            layer(x).backward(upstream)
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                seconds[name].append(elapsed)
    return seconds


def torch_sync_batchnorm_on_cpu(rank: int, world_size: int) -> str:
    """What torch.nn.SyncBatchNorm does with a CPU tensor in a process group."""
    try:
        nn.SyncBatchNorm(4)(torch.randn(2, 4, 3, 3))
    except Exception as error:  # report whatever it raises, verbatim
        return f"refuses: {type(error).__name__}: {error}"
    return "ran on CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, action="append", metavar=("B", "C", "H", "W"),
                        help="per-rank input shape (repeatable); default 8 256 60 60 and 2 512 16 16")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per shape (default 30)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    args = parser.parse_args()
    shapes = [tuple(shape) for shape in args.shape] if args.shape else [(8, 256, 60, 60), (2, 512, 16, 16)]

    print(f"torch {torch.__version__}, 2 gloo ranks on 127.0.0.1, 1 thread each; "
          f"medians over {args.rounds} interleaved rounds of the slower rank's step (forward + backward)")
    print(f"{'per-rank shape':>18} | " + " | ".join(f"{name:>12}" for name in LAYERS)
          + " | once / BN | twice / once")
    for shape in shapes:
        per_rank = spawn(time_steps, 2, shape, args.rounds, args.warmup)
        step = {name: [max(times) for times in zip(*(rank[name] for rank in per_rank))] for name in LAYERS}

        def ratio(numerator: str, denominator: str) -> float:
            """Median over rounds of the ratio within each round (steps timed side by side)."""
            return statistics.median(a / b for a, b in zip(step[numerator], step[denominator]))

        cells = " | ".join(f"{statistics.median(step[name]) * 1e3:>9.1f} ms" for name in LAYERS)
        print(f"{'x'.join(map(str, shape)):>18} | {cells} | {ratio('sync once', 'BatchNorm2d'):>9.2f}"
              f" | {ratio('sync twice', 'sync once'):>12.2f}")
    print(f"torch.nn.SyncBatchNorm, CPU tensor, 2 gloo ranks: {spawn(torch_sync_batchnorm_on_cpu, 2)[0]}")
    print("GPU (NCCL) comparison with torch.nn.SyncBatchNorm: not measured, no GPU was lent to this task.")


if __name__ == "__main__":
    main()
