"""What the benchmarks share: the device to run on, and timing and memory on a GPU.

The benchmarks are scripts (``python benchmarks/NAME.py``), so this module is
imported by its bare name from their folder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def default_device() -> str:
    """``"cuda"`` when this machine has a GPU that torch can use, else ``"cpu"``: read at run time."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def describe(device: torch.device, threads: int) -> str:
    """``"cpu, 2 threads"`` or ``"cuda (NVIDIA H200)"``: the device of a benchmark's figures."""
    if device.type == "cpu":
        return f"cpu, {threads} threads"
    return f"{device} ({torch.cuda.get_device_name(device)})"


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (a no-op on CPU), so that a clock read afterwards includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_extra_peak_bytes(run: Callable[[], object], device: torch.device) -> int:
    """Bytes ``run()`` adds to the GPU allocator's peak over what was allocated before it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base
