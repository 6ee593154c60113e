"""Inference of EncNet-ResNet-50s on the CPU: eager PyTorch against ONNX Runtime (and other variants).

    python benchmarks/inference.py                       # 512 x 512, 150 classes, 3 rounds
    python benchmarks/inference.py --size 480 --rounds 5 --threads 2
    python benchmarks/inference.py --variants "eager float32" "eager bf16 autocast"

One model, EncNet-ResNet-50s with 150 classes (ADE20K), random weights and
random batch-norm statistics (seed 0: the figures need no download), segments
one random 512 x 512 image per call, as ``encnet predict`` does whole-image.
Each variant is a row of :data:`VARIANTS`: a function that sets it up from the
model and the exported ONNX file and returns ``images -> logits``.

- Speed: after one warm-up call each, the variants run round by round,
  interleaved (A, B, C, A, B, C, ...), so that the load of a shared machine
  falls on all of them alike; images/s is 1 / the median time of a call.
- Agreement with eager float32: the share of pixels whose argmax label is the
  same, and the largest logit difference relative to the largest |logit|.
- Peak memory: the peak resident memory (Linux ``VmHWM``) of a fresh process
  that sets up the variant alone and segments two images; the first line of
  the table's footer gives that of a process that only imports torch and
  onnxruntime, the part every row shares. PyTorch keeps no allocator statistics on the
  CPU and ONNX Runtime allocates outside Python, so neither ``tracemalloc``
  nor ``torch.cuda``'s counters can see both; the process's peak can.

``torch.compile`` compiles at the warm-up call, which is not timed. A new
variant (a quantised ONNX file, ...) is one more function and one more entry
of :data:`VARIANTS`. ``--variants`` picks the rows; the default leaves out
bf16 autocast, which pays only on a CPU with native bfloat16 (AVX512-BF16,
AMX): on an AVX2 CPU its convolutions are emulated, many times slower than
float32.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from encnet.export import export_onnx, load_onnx
from encnet.models import build_model
from encnet.teaching.memory import peak_resident_bytes

Run = Callable[[Tensor], Tensor]


def build(seed: int = 0) -> nn.Module:
    """EncNet-ResNet-50s, 150 classes, random weights and batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = build_model("encnet", "resnet50s", num_classes=150).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) - 0.5)
            module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
    return model


def eager_float32(model: nn.Module, onnx_file: Path, threads: int) -> Run:
    def run(images: Tensor) -> Tensor:
        with torch.no_grad():
            return model(images)["out"]

    return run


def eager_bfloat16_autocast(model: nn.Module, onnx_file: Path, threads: int) -> Run:
    """Convolutions and matrix products in bfloat16 (the Encoding Layer's distances stay float32)."""
    def run(images: Tensor) -> Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(images)["out"].float()

    return run


def compiled_float32(model: nn.Module, onnx_file: Path, threads: int) -> Run:
    """``torch.compile(model)`` (Inductor, C++ kernels on the CPU); compiled at the warm-up call, not timed."""
    compiled = torch.compile(model)

    def run(images: Tensor) -> Tensor:
        with torch.no_grad():
            return compiled(images)["out"]

    return run


def onnx_runtime(model: nn.Module, onnx_file: Path, threads: int) -> Run:
    onnx_model = load_onnx(onnx_file, threads=threads)
    return lambda images: onnx_model(images)["out"]


VARIANTS: dict[str, Callable[[nn.Module, Path, int], Run]] = {
    "eager float32": eager_float32,  # the reference of the agreement columns: keep it first
    "ONNX Runtime float32": onnx_runtime,
    "torch.compile float32": compiled_float32,
    "eager bf16 autocast": eager_bfloat16_autocast,
}


def peak_of_variant(name: str, onnx_file: Path, size: int, threads: int) -> int:
    """VmHWM of a fresh process that sets up ``name`` (or only imports, for ``""``) and runs it twice."""
    command = [sys.executable, __file__, "--peak-of", name, "--onnx-file", str(onnx_file), "--size", str(size),
               "--threads", str(threads)]
    return int(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip())


def _peak_here(name: str, onnx_file: Path, size: int, threads: int) -> int:
    if name:
        model = build() if name != "ONNX Runtime float32" else None  # ONNX Runtime needs no torch model
        run = VARIANTS[name](model, onnx_file, threads)
        for _ in range(2):
            run(torch.randn(1, 3, size, size))
    else:
        import onnxruntime  # noqa: F401  (what every row imports)
    return peak_resident_bytes()


def measure(args: argparse.Namespace, onnx_file: Path) -> list[dict]:
    model = build()
    image = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(2))
    runs = {name: VARIANTS[name](model, onnx_file, args.threads) for name in args.variants}
    logits = {name: run(image) for name, run in runs.items()}  # also the warm-up call
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run(image)
            seconds[name].append(time.perf_counter() - start)
    reference = logits["eager float32"]
    return [{
        "variant": name,
        "images/s": 1 / statistics.median(seconds[name]),
        "same label": float((logits[name].argmax(1) == reference.argmax(1)).float().mean()),
        "max |diff|": float((logits[name] - reference).abs().max() / reference.abs().max()),
        "peak MiB": peak_of_variant(name, onnx_file, args.size, args.threads) / 2**20,
    } for name in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="the image's height and width")
    parser.add_argument("--rounds", type=int, default=3, help="timed calls of each variant, interleaved")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS)[:3],
                        help="the rows (default: all but bf16); eager float32 is always the reference")
    parser.add_argument("--peak-of", help=argparse.SUPPRESS)
    parser.add_argument("--onnx-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.variants = ["eager float32", *(name for name in args.variants if name != "eager float32")]
    torch.set_num_threads(args.threads)
    if args.peak_of is not None:
        print(_peak_here(args.peak_of, args.onnx_file, args.size, args.threads))
        return
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        onnx_file = export_onnx(build(), Path(folder) / "encnet_resnet50s.onnx", example_size=(256, 320))
        exported = time.perf_counter() - start
        rows = measure(args, onnx_file)
        baseline = peak_of_variant("", onnx_file, args.size, args.threads) / 2**20
    print(f"EncNet-ResNet-50s, 150 classes, one {args.size}x{args.size} image per call, "
          f"CPU ({torch.backends.cpu.get_cpu_capability()}), {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds (torch {torch.__version__})")
    print(f"{'variant':<24}{'images/s':>10}{'same label':>12}{'max |diff|':>12}{'peak MiB':>10}")
    for row in rows:
        print(f"{row['variant']:<24}{row['images/s']:>10.3f}{row['same label']:>12.4%}{row['max |diff|']:>12.1e}"
              f"{row['peak MiB']:>10.0f}")
    print(f"peak MiB of a process that only imports torch and onnxruntime: {baseline:.0f}; "
          f"export to ONNX took {exported:.0f} s; load average at the end {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    print("same label: pixels whose argmax equals eager float32's; max |diff|: largest logit difference over "
          "the largest |logit|")


if __name__ == "__main__":
    main()
