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
within the round. Each process uses one CPU thread. The rounds are those of
``encnet.teaching.syncbn.count_and_time_collectives`` (also used by notebook 04).

torch.nn.SyncBatchNorm is tried too: it refuses CPU tensors, and the benchmark
prints its error. Comparing against it needs GPUs with NCCL; no GPU was lent
to this task, so that comparison was not measured.

Run: ``python benchmarks/syncbn.py`` (about a minute; ``--rounds`` and
``--shape`` to change).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from encnet.teaching.processes import spawn
from encnet.teaching.syncbn import count_and_time_collectives

LAYERS = ("BatchNorm2d", "sync once", "sync twice")


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
        per_rank = [result[shape] for result in spawn(count_and_time_collectives, 2, [shape], args.rounds, args.warmup)]
        seconds = [{name: [f + b for f, b in zip(layer["seconds"]["forward"], layer["seconds"]["backward"])]
                    for name, layer in rank.items()} for rank in per_rank]  # forward + backward, per round
        step = {name: [max(times) for times in zip(*(rank[name] for rank in seconds))] for name in LAYERS}

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
