"""Encoding Layer: memory-efficient form against the direct formula and the matmul floor.

    python benchmarks/encoding.py                 # EncNet's size: B=4, C=512, 60x60, K=32, on the GPU if any
    python benchmarks/encoding.py --device cpu    # the same on the CPU

Three ways of running one forward + backward pass of the Encoding Layer at the
same shapes, timed side by side in one run (the machine is shared and noisy, so
only the ratios of one run are meaningful):

- ``encoding``: this project's layer (two matrix products, see encnet/nn/functional.py);
- ``direct``: the formula as written, which builds the B x N x K x C residuals;
- ``matmul floor``: only the matrix products the layer is made of, D X and
  A^T X, and the four products of their backward pass, with nothing else (no
  autograd, no elementwise work): no implementation of the layer from those
  products can be faster.

Extra peak memory is what one forward + backward adds on top of its inputs:
on CPU the growth of the process's peak resident memory (Linux VmHWM),
measured in a fresh subprocess per method by ``encnet.teaching.memory``; on CUDA
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from measure import cuda_extra_peak_bytes, default_device, describe, sync

from encnet.nn.functional import encoding, encoding_direct
from encnet.teaching.memory import extra_peak_bytes


def make_inputs(args, device):
    g = torch.Generator().manual_seed(0)
    N = args.size * args.size
    x = torch.randn(args.batch, args.channels, N, generator=g).to(device).requires_grad_(True)
    bound = 1.0 / (args.codes * args.channels) ** 0.5
    codewords = ((torch.rand(args.codes, args.channels, generator=g) * 2 - 1) * bound).to(device).requires_grad_(True)
    smoothing = torch.rand(args.codes, generator=g).to(device).requires_grad_(True)
    assignment = torch.softmax(torch.randn(args.batch, args.codes, N, generator=g), 1).to(device).requires_grad_(True)
    return x, codewords, smoothing, assignment


def step(method, x, codewords, smoothing, assignment):
    """One forward + backward of ``method``; returns nothing, leaves the gradients."""
    if method == "matmul floor":
        with torch.no_grad():
            x_t = x.transpose(1, 2)
            torch.matmul(codewords, x)  # forward: D X, (B, K, N)
            grad_e = torch.matmul(assignment, x_t)  # forward: A^T X, (B, K, C)
            torch.matmul(grad_e, x)  # backward of A^T X, to A: (B, K, N)
            torch.matmul(grad_e.transpose(1, 2), assignment)  # backward of A^T X, to X: (B, C, N)
            torch.matmul(assignment, x_t)  # backward of D X, to D: (B, K, C)
            torch.matmul(codewords.t(), assignment)  # backward of D X, to X: (B, C, N)
    else:
        fn = encoding if method == "encoding" else encoding_direct
        fn(x, codewords, smoothing).sum().backward()
    for t in (x, codewords, smoothing, assignment):
        t.grad = None


def time_methods(args, device):
    """Median seconds per forward + backward of each method.

    The layer and its matmul floor alternate round by round; the direct formula
    is timed after them, since its gigabytes of temporaries disturb the
    allocator and caches of whatever runs next.
    """
    inputs = make_inputs(args, device)
    schedule = [("encoding", "matmul floor")] * args.repeats + [("direct",)] * args.direct_repeats
    times = {"encoding": [], "matmul floor": [], "direct": []}
    warm = set()
    for methods in schedule:
        for m in methods:
            if m not in warm:
                step(m, *inputs)
                warm.add(m)
            sync(device)
            start = time.perf_counter()
            step(m, *inputs)
            sync(device)
            times[m].append(time.perf_counter() - start)
    return {m: statistics.median(t) for m, t in times.items()}


def cuda_peak_memory_of(method, args, device):
    """Extra peak bytes of one forward + backward on a GPU (allocator statistics)."""
    inputs = make_inputs(args, device)
    return cuda_extra_peak_bytes(lambda: step(method, *inputs), device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--size", type=int, default=60, help="feature map height = width")
    parser.add_argument("--codes", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--direct-repeats", type=int, default=3, help="rounds that also time the slow direct formula")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default=default_device(), help="default: cuda if a GPU is available, else cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    N = args.size * args.size
    print(f"Encoding Layer, forward + backward: B={args.batch}, C={args.channels}, "
          f"N={args.size}x{args.size}={N}, K={args.codes}, float32, {describe(device, args.threads)}")
    times = time_methods(args, device)
    shape = (args.batch, args.channels, N, args.codes)
    if device.type == "cpu":
        memory = {m: extra_peak_bytes(name, *shape, threads=args.threads)
                  for m, name in [("encoding", "encoding"), ("direct", "encoding_direct")]}
    else:
        memory = {m: cuda_peak_memory_of(m, args, device) for m in ("encoding", "direct")}

    print(f"{'method':<14}{'time (ms)':>11}{'extra peak memory (MiB)':>26}")
    for m in times:
        mib = f"{memory[m] / 2**20:.1f}" if m in memory else "-"
        print(f"{m:<14}{times[m] * 1e3:>11.1f}{mib:>26}")
    print(f"direct / encoding time:          {times['direct'] / times['encoding']:6.1f}x  (target >= 20x)")
    print(f"direct / encoding extra memory:  {memory['direct'] / max(memory['encoding'], 1):6.1f}x  (target >= 10x)")
    print(f"encoding / matmul floor time:    {times['encoding'] / times['matmul floor']:6.2f}x  (target <= 2x)")


if __name__ == "__main__":
    main()
