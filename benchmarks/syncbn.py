"""Step time (forward + backward) of synchronized batch norm, on 2 gloo ranks and, given 2 GPUs, on 2 NCCL ranks.

Compares, in the same 2-process group and interleaved round by round (the
machine is shared, so only side-by-side ratios mean something):

* ``BatchNorm2d``: torch.nn.BatchNorm2d, each rank on its own batch (no communication);
* ``sync once``: encnet.nn.SyncBatchNorm, one all-reduce forward, one backward;
* ``sync twice``: the same with two all-reduces forward (mean, then variance).

A round times one step of each layer on each rank (each after a barrier, in
an order rotated from round to round, so no layer always follows another); a step
lasts as long as its slowest rank, so each time is the median over rounds of
the slower rank's time, and each ratio the median over rounds of the ratio
within the round. Each process uses one CPU thread. The CPU rounds are those of
``encnet.teaching.syncbn.count_and_time_collectives`` (also used by notebook 04).

torch.nn.SyncBatchNorm refuses CPU tensors, and the benchmark prints its error.
It is compared on GPUs: the benchmark counts the GPUs when it runs, and with
two or more it times the same rounds on 2 NCCL ranks, one GPU each, with
``torch SyncBatchNorm`` in place of ``BatchNorm2d``; with fewer it says how
many it found and skips that table.

Run: ``python benchmarks/syncbn.py`` (about a minute; ``--rounds`` and
``--shape`` to change).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from encnet.nn import SyncBatchNorm
from encnet.teaching.processes import spawn
from encnet.teaching.syncbn import count_and_time_collectives

CPU_LAYERS = ("BatchNorm2d", "sync once", "sync twice")
GPU_LAYERS = ("torch SyncBatchNorm", "sync once", "sync twice")
Shape = tuple[int, int, int, int]


def torch_sync_batchnorm_on_cpu(rank: int, world_size: int) -> str:
    """What torch.nn.SyncBatchNorm does with a CPU tensor in a process group."""
    try:
        nn.SyncBatchNorm(4)(torch.randn(2, 4, 3, 3))
    except Exception as error:  # report whatever it raises, verbatim
        return f"refuses: {type(error).__name__}: {error}"
    return "ran on CPU"


def time_on_gpus(rank: int, world_size: int, shapes: Sequence[Shape], rounds: int, warmup: int) -> dict:
    """On this rank's GPU: ``{shape: {layer: [seconds of forward + backward, per round]}}`` for GPU_LAYERS."""
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    results = {}
    for shape in shapes:
        channels = shape[1]
        layers = {
            "torch SyncBatchNorm": nn.SyncBatchNorm(channels).to(device),
            "sync once": SyncBatchNorm(channels, sync="once").to(device),
            "sync twice": SyncBatchNorm(channels, sync="twice").to(device),
        }
        generator = torch.Generator(device=device).manual_seed(rank)
        x = (torch.randn(shape, generator=generator, device=device) * 2 + 1).requires_grad_()
        upstream = torch.randn(shape, generator=generator, device=device)
        times = {name: [] for name in GPU_LAYERS}
        for round_index in range(warmup + rounds):
            shift = round_index % len(GPU_LAYERS)
            for name in GPU_LAYERS[shift:] + GPU_LAYERS[:shift]:
                x.grad = None
                dist.barrier(device_ids=[rank])
                torch.cuda.synchronize(device)
                start = time.perf_counter()
                layers[name](x).backward(upstream)
                torch.cuda.synchronize(device)
                if round_index >= warmup:
                    times[name].append(time.perf_counter() - start)
        results[tuple(shape)] = times
    return results


def cpu_step_seconds(rank_result: dict) -> dict[str, list[float]]:
    """``count_and_time_collectives``' result for one shape -> {layer: [forward + backward seconds, per round]}."""
    return {name: [f + b for f, b in zip(layer["seconds"]["forward"], layer["seconds"]["backward"])]
            for name, layer in rank_result.items()}


def print_table(layers: Sequence[str], per_shape: dict[Shape, list[dict[str, list[float]]]]) -> None:
    """One row per shape: each layer's median step (of the slower rank), then two ratios within the rounds.

    ``per_shape``: for each shape, per rank, ``{layer: [seconds per round]}``. The
    ratios are ``layers[1] / layers[0]`` and ``layers[2] / layers[1]``.
    """
    ratio_names = (f"{layers[1]} / {layers[0]}", f"{layers[2]} / {layers[1]}")
    print(f"{'per-rank shape':>18} | " + " | ".join(f"{name:>19}" for name in layers) + " | " + " | ".join(ratio_names))
    for shape, ranks in per_shape.items():
        step = {name: [max(times) for times in zip(*(rank[name] for rank in ranks))] for name in layers}
        ratios = [statistics.median(a / b for a, b in zip(step[top], step[bottom]))
                  for top, bottom in ((layers[1], layers[0]), (layers[2], layers[1]))]
        cells = [f"{statistics.median(step[name]) * 1e3:>16.2f} ms" for name in layers]
        cells += [f"{ratio:>{len(name)}.2f}" for ratio, name in zip(ratios, ratio_names)]
        print(f"{'x'.join(map(str, shape)):>18} | " + " | ".join(cells))


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
    ranks = spawn(count_and_time_collectives, 2, shapes, args.rounds, args.warmup)
    print_table(CPU_LAYERS, {shape: [cpu_step_seconds(rank[shape]) for rank in ranks] for shape in shapes})
    print(f"torch.nn.SyncBatchNorm, CPU tensor, 2 gloo ranks: {spawn(torch_sync_batchnorm_on_cpu, 2)[0]}")

    gpus = torch.cuda.device_count()
    if gpus < 2:
        print(f"GPU (NCCL) comparison with torch.nn.SyncBatchNorm: not measured, it needs 2 GPUs and this "
              f"machine has {gpus}.")
        return
    print(f"\n2 NCCL ranks on {torch.cuda.get_device_name(0)} GPUs ({gpus} on this machine), one GPU each, float32")
    ranks = spawn(time_on_gpus, 2, shapes, args.rounds, args.warmup, backend="nccl")
    print_table(GPU_LAYERS, {shape: [rank[shape] for rank in ranks] for shape in shapes})


if __name__ == "__main__":
    main()
