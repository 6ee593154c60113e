"""Models: parameter counts against the paper, and EncNet's extra cost over the FCN.

    python benchmarks/models.py                  # on the GPU if there is one, else on the CPU
    python benchmarks/models.py --device cpu     # CPU: counts, train-step ratio, 480x480 inference

1. Parameter counts of the CIFAR-10 family next to the paper's table, and of
   the segmentation models (EncNet's extra parameters over the FCN).
2. Training step (forward, EncNetLoss, backward, SGD step) of EncNet-R50
   (SE-loss and aux head on) against FCN-R50 (aux head on) at 2x3x256x256.
   Counted FLOPs (``torch.utils.flop_counter``: convolutions and matrix
   products, forward and backward) give the noise-free ratio; then the two
   alternate round by round (A/B interleaved) and the ratio is the
   median of the per-round ratios: on a shared, noisy machine only the
   ratios of one run mean something. Both wall-clock time and the process's
   CPU time are reported; the CPU time is less disturbed by other processes.
   The paper calls EncNet's extra computation "marginal"; the target is a
   ratio <= 1.10.
3. Inference of EncNet-R50 at 480x480, one image: median time, and the
   growth of peak memory during the forward pass (on CPU the process's peak
   resident memory, VmHWM, in a fresh subprocess; on CUDA
   ``torch.cuda.max_memory_allocated``).
4. On CUDA only: training images/s and peak memory of EncNet-R50 and FCN-R50
   at 480x480 (the paper's crop).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch
from measure import cuda_extra_peak_bytes, default_device, describe, sync
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from encnet.cifar import cifar_encnet, cifar_resnet, cifar_se_resnet
from encnet.losses import EncNetLoss
from encnet.models import (
    encnet_resnet50,
    encnet_resnet101,
    encnet_small,
    fcn_resnet50,
    fcn_resnet101,
    fcn_small,
)
from encnet.teaching.memory import peak_resident_bytes

NUM_CLASSES = 150  # ADE20K

CIFAR_PAPER = [
    ("ResNet 64d", lambda: cifar_resnet(width=64), 2.7),
    ("SE-ResNet 64d", lambda: cifar_se_resnet(width=64), 2.8),
    ("EncNet 16k64d", lambda: cifar_encnet(num_codes=16, width=64), 3.5),
    ("EncNet 32k128d", lambda: cifar_encnet(num_codes=32, width=128), 16.8),
]

SEGMENTATION_PAIRS = [
    ("R50", fcn_resnet50, encnet_resnet50),
    ("R101", fcn_resnet101, encnet_resnet101),
    ("small", fcn_small, encnet_small),
]


def millions(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def print_parameter_counts() -> None:
    print("CIFAR-10, 14 layers       params (M)   paper (M)   difference")
    for name, build, paper in CIFAR_PAPER:
        ours = millions(build())
        print(f"  {name:<22}{ours:>11.2f}{paper:>12.1f}{(ours / paper - 1) * 100:>+12.1f}%")
    print(f"Segmentation, {NUM_CLASSES} classes   FCN (M)  EncNet (M)  EncNet extra")
    for name, fcn, encnet in SEGMENTATION_PAIRS:
        a, b = millions(fcn(num_classes=NUM_CLASSES)), millions(encnet(num_classes=NUM_CLASSES))
        print(f"  {name:<22}{a:>11.2f}{b:>12.2f}{(b / a - 1) * 100:>+12.1f}%")


class Trainer:
    """One model with its loss, optimiser and a fixed batch of random images and masks."""

    def __init__(self, build, batch: int, size: int, device: torch.device) -> None:
        torch.manual_seed(0)
        self.model = build(num_classes=NUM_CLASSES).to(device).train()
        self.loss = EncNetLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
        self.images = torch.randn(batch, 3, size, size, device=device)
        self.masks = torch.randint(0, NUM_CLASSES, (batch, size, size), device=device)
        self.device = device

    def step(self) -> tuple[float, float]:
        """Wall-clock and process CPU seconds of one training step."""
        sync(self.device)
        wall, cpu = time.perf_counter(), time.process_time()
        total, _ = self.loss(self.model(self.images), self.masks)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        sync(self.device)
        return time.perf_counter() - wall, time.process_time() - cpu


def train_step_ratio(args, device: torch.device) -> None:
    fcn = Trainer(fcn_resnet50, args.batch, args.size, device)
    encnet = Trainer(encnet_resnet50, args.batch, args.size, device)
    flops = {}
    for name, trainer in [("fcn", fcn), ("encnet", encnet)]:  # warm-up step, counting FLOPs
        with FlopCounterMode(display=False) as counter:
            trainer.step()
        flops[name] = counter.get_total_flops()
    fcn_times, encnet_times = [], []
    for round_ in range(args.repeats):
        pair = (fcn, encnet) if round_ % 2 == 0 else (encnet, fcn)  # alternate which goes first
        for trainer in pair:
            (fcn_times if trainer is fcn else encnet_times).append(trainer.step())
    print(f"Training step at {args.batch}x3x{args.size}x{args.size}, {args.repeats} interleaved rounds "
          "(target: EncNet / FCN <= 1.10)")
    print(f"  FLOPs of convs and matrix products: FCN-R50 {flops['fcn'] / 1e9:.1f} G, EncNet-R50 "
          f"{flops['encnet'] / 1e9:.1f} G, ratio {flops['encnet'] / flops['fcn']:.3f}")
    print("                   FCN-R50 (s)  EncNet-R50 (s)  EncNet / FCN: median ratio (per-round range)")
    for clock, index in [("wall clock", 0), ("process CPU", 1)]:
        fcn_s = [t[index] for t in fcn_times]
        encnet_s = [t[index] for t in encnet_times]
        ratios = [e / f for e, f in zip(encnet_s, fcn_s)]
        print(f"  {clock:<15}{statistics.median(fcn_s):>13.3f}{statistics.median(encnet_s):>16.3f}"
              f"{statistics.median(ratios):>16.3f} ({min(ratios):.3f} .. {max(ratios):.3f})")


def inference_seconds(model: nn.Module, image: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        model(image)  # warm-up
        times = []
        for _ in range(repeats):
            sync(image.device)
            start = time.perf_counter()
            model(image)
            sync(image.device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def inference_peak_bytes(size: int, device: torch.device) -> int:
    """Growth of peak memory during one forward pass of EncNet-R50 (eval, no grad), model loaded."""
    torch.manual_seed(0)
    model = encnet_resnet50(num_classes=NUM_CLASSES).to(device).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64, device=device))  # load kernels and thread pools first
        image = torch.randn(1, 3, size, size, device=device)
        if device.type == "cuda":
            return cuda_extra_peak_bytes(lambda: model(image), device)
        base = peak_resident_bytes()
        model(image)
        return peak_resident_bytes() - base


def inference(args, device: torch.device) -> None:
    torch.manual_seed(0)
    model = encnet_resnet50(num_classes=NUM_CLASSES).to(device).eval()
    image = torch.randn(1, 3, args.infer_size, args.infer_size, device=device)
    seconds = inference_seconds(model, image, args.infer_repeats)
    if device.type == "cpu":
        cmd = [sys.executable, __file__, "--inference-memory", "--infer-size", str(args.infer_size),
               "--threads", str(args.threads)]
        peak = int(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())
    else:
        peak = inference_peak_bytes(args.infer_size, device)
    print(f"EncNet-R50 inference at 1x3x{args.infer_size}x{args.infer_size} (eval, no grad):")
    print(f"  median {seconds:.3f} s per image over {args.infer_repeats} runs; "
          f"peak memory +{peak / 2**20:.0f} MiB over the loaded model")


def gpu_training(args, device: torch.device) -> None:
    print(f"Training at {args.gpu_batch}x3x{args.infer_size}x{args.infer_size} on "
          f"{torch.cuda.get_device_name()} (float32):")
    for name, build in [("FCN-R50", fcn_resnet50), ("EncNet-R50", encnet_resnet50)]:
        trainer = Trainer(build, args.gpu_batch, args.infer_size, device)
        trainer.step()
        torch.cuda.reset_peak_memory_stats()
        seconds = statistics.median(trainer.step()[0] for _ in range(args.repeats))
        peak = torch.cuda.max_memory_allocated()
        print(f"  {name:<11}{args.gpu_batch / seconds:8.1f} images/s   peak memory {peak / 2**30:6.2f} GiB")
        del trainer
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2, help="batch of the training-step ratio")
    parser.add_argument("--size", type=int, default=256, help="image size of the training-step ratio")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds / timed training steps")
    parser.add_argument("--infer-size", type=int, default=480)
    parser.add_argument("--infer-repeats", type=int, default=3)
    parser.add_argument("--gpu-batch", type=int, default=8, help="batch of the CUDA training throughput")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default=default_device(), help="default: cuda if a GPU is available, else cpu")
    parser.add_argument("--inference-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args.inference_memory:
        print(inference_peak_bytes(args.infer_size, device))
        return

    print(f"device: {describe(device, args.threads)}")
    print_parameter_counts()
    train_step_ratio(args, device)
    inference(args, device)
    if device.type == "cuda":
        gpu_training(args, device)


if __name__ == "__main__":
    main()
