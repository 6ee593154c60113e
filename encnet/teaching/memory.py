"""Extra peak memory of one Encoding Layer forward + backward, measured in a fresh process.

On CPU, PyTorch has no allocator statistics, so the figure is the growth of the
process's peak resident memory (Linux ``VmHWM``) during one pass. Each
measurement runs in a fresh interpreter, so nothing allocated before (another
method's gigabytes, a notebook's figures) hides the growth; peak resident
memory belongs to each process, so several probes may run at once::

    python -m encnet.teaching.memory encoding_direct 4 512 3600 32   # method B C N K -> bytes
"""

from __future__ import annotations

import subprocess
import sys

import torch

from ..nn.functional import encoding, encoding_direct

METHODS = {"encoding": encoding, "encoding_direct": encoding_direct}


def peak_resident_bytes() -> int:
    """This process's peak resident memory (``VmHWM``; unlike ``ru_maxrss`` it starts afresh at exec)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _inputs(B: int, C: int, N: int, K: int):
    return (torch.randn(B, C, N, requires_grad=True), torch.randn(K, C, requires_grad=True),
            torch.rand(K, requires_grad=True))


def extra_peak_here(method: str, B: int, C: int, N: int, K: int) -> int:
    """Bytes one forward + backward of ``method`` adds to this process's peak, inputs excluded."""
    fn = METHODS[method]
    fn(*_inputs(B, C, 16, K)).sum().backward()  # load kernels and thread pools first
    inputs = _inputs(B, C, N, K)
    before = peak_resident_bytes()
    fn(*inputs).sum().backward()
    return peak_resident_bytes() - before


def start_probe(method: str, B: int, C: int, N: int, K: int, threads: int = 1) -> subprocess.Popen:
    """Start :func:`extra_peak_here` in a fresh interpreter; read the result with :func:`probe_result`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    cmd = [sys.executable, "-m", "encnet.teaching.memory", method, *map(str, (B, C, N, K, threads))]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def probe_result(probe: subprocess.Popen) -> int:
    out, err = probe.communicate()
    if probe.returncode:
        raise RuntimeError(f"the memory probe {probe.args} failed:\n{err}")
    return int(out)


def extra_peak_bytes(method: str, B: int, C: int, N: int, K: int, threads: int = 1) -> int:
    """Extra peak bytes of one forward + backward of ``method``, measured in a fresh process."""
    return probe_result(start_probe(method, B, C, N, K, threads))


if __name__ == "__main__":
    method, *sizes = sys.argv[1:]
    B, C, N, K, threads = map(int, sizes)
    torch.set_num_threads(threads)
    print(extra_peak_here(method, B, C, N, K))
