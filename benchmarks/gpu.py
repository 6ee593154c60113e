"""The device check: one table of what a GPU changes, in one short run (``benchmarks/gpu.sh``).

    python benchmarks/gpu.py                       # on the GPU: the sizes below, a few minutes
    python benchmarks/gpu.py --device cpu --tiny   # a smoke run on the CPU at toy sizes (tests/ runs it)

Rows, each measured side by side in this one run (only ratios within one run
mean something on a shared machine):

1. The Encoding Layer at EncNet's size (B=4, C=512, 60x60 pixels, K=32),
   forward + backward: this package's form (two matrix products), the direct
   formula (builds the B x N x K x C residuals), and ``torch.compile`` of the
   package's form. Median milliseconds and extra peak memory.
2. One training step (forward, EncNetLoss, backward, SGD) of FCN-R50 and
   EncNet-R50 (mmsegmentation's ResNetV1c-50 backbone, 150 classes) at
   mmsegmentation's ADE20K setting, 4 images of 512 x 512 per GPU, in float32
   and under autocast (bf16, and fp16 with a GradScaler): images/s and peak
   memory. mmsegmentation's table gives 10.1 GB per GPU for EncNet-R50 at
   this setting.
3. Inference of EncNet-R50 on one 512 x 512 image, float32 and bf16:
   images/s (mmsegmentation's table: 22.8 images/s on a V100).
4. Host synchronisations per training step of ``encnet.engine`` on the
   ``synthetic-quick`` preset: on CUDA, ``torch.cuda.set_sync_debug_mode`` warns
   at each synchronising call; the warnings inside ``engine._train_step`` are
   counted.

Peak memory on CUDA is ``torch.cuda.max_memory_allocated`` (the allocator's
peak, not the driver's); on the CPU it is not measured (printed as "-").
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from measure import default_device, describe, sync

from encnet.losses import EncNetLoss
from encnet.models import build_model
from encnet.nn.functional import encoding, encoding_direct

CLASSES = 150  # ADE20K


@dataclasses.dataclass
class Sizes:
    batch: int = 4
    image: int = 512
    encoding_pixels: int = 60 * 60
    encoding_channels: int = 512
    codes: int = 32
    backbone: str = "resnet50_v1c"
    rounds: int = 10


TINY = Sizes(batch=2, image=64, encoding_pixels=8 * 8, encoding_channels=32, codes=8, backbone="small", rounds=2)


def timed(step: Callable[[], object], device: torch.device, rounds: int) -> tuple[float, float | None]:
    """(median seconds of ``step`` after one warm-up call, peak bytes allocated during the rounds, CUDA only)."""
    step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(rounds):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return statistics.median(seconds), peak


def row(name: str, seconds: float, peak: float | None, per_second: float | None = None) -> None:
    memory = "-" if peak is None else f"{peak / 2**30:.2f} GiB"
    rate = "" if per_second is None else f"{per_second:10.1f} images/s"
    print(f"  {name:<44}{1000 * seconds:10.2f} ms{rate}   peak {memory}")


def encoding_rows(sizes: Sizes, device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, sizes.encoding_channels, sizes.encoding_pixels, generator=g).to(device).requires_grad_()
    codewords = (torch.rand(sizes.codes, sizes.encoding_channels, generator=g) - 0.5).to(device).requires_grad_()
    smoothing = torch.rand(sizes.codes, generator=g).to(device).requires_grad_()
    compiled = torch.compile(encoding)
    print(f"Encoding Layer, forward + backward, B=4 C={sizes.encoding_channels} N={sizes.encoding_pixels} "
          f"K={sizes.codes}:")
    for name, function in [("encoding (two matrix products)", encoding), ("direct formula", encoding_direct),
                           ("torch.compile(encoding)", compiled)]:
        def step(function=function):
            function(x, codewords, smoothing).square().sum().backward()
        row(name, *timed(step, device, sizes.rounds))


def training_rows(sizes: Sizes, device: torch.device) -> None:
    print(f"Training step, {sizes.batch} x 3 x {sizes.image} x {sizes.image}, {CLASSES} classes, "
          f"{sizes.backbone} backbone:")
    precisions = [("float32", None), ("bf16 autocast", torch.bfloat16)]
    if device.type == "cuda":
        precisions.append(("fp16 autocast + GradScaler", torch.float16))
    for model_name in ("fcn", "encnet"):
        for precision, dtype in precisions:
            seconds, peak = timed(training_step(model_name, dtype, sizes, device), device, sizes.rounds)
            row(f"{'FCN' if model_name == 'fcn' else 'EncNet'} {precision}", seconds, peak, sizes.batch / seconds)
            if device.type == "cuda":
                torch.cuda.empty_cache()


def training_step(model_name: str, dtype: torch.dtype | None, sizes: Sizes, device: torch.device) -> Callable[[], None]:
    """One training step of a fresh ``model_name`` under autocast to ``dtype`` (None: float32), as a function."""
    torch.manual_seed(0)
    model = build_model(model_name, sizes.backbone, num_classes=CLASSES).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    criterion = EncNetLoss(se_weight=0.2 if model_name == "encnet" else 0.0)
    images = torch.randn(sizes.batch, 3, sizes.image, sizes.image, device=device)
    masks = torch.randint(0, CLASSES, (sizes.batch, sizes.image, sizes.image), device=device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            total, _ = criterion(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def inference_rows(sizes: Sizes, device: torch.device) -> None:
    print(f"Inference, EncNet, 1 x 3 x {sizes.image} x {sizes.image}:")
    torch.manual_seed(0)
    model = build_model("encnet", sizes.backbone, num_classes=CLASSES).to(device).eval()
    image = torch.randn(1, 3, sizes.image, sizes.image, device=device)
    for precision, dtype in [("float32", None), ("bf16 autocast", torch.bfloat16)]:
        def step(dtype=dtype):
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                model(image)

        seconds, peak = timed(step, device, sizes.rounds)
        row(precision, seconds, peak, 1 / seconds)


def host_syncs_per_step(device: torch.device) -> None:
    """Synchronising calls inside ``encnet.engine._train_step``, counted by CUDA's sync debug mode."""
    from encnet import engine
    from encnet.config import preset

    if device.type != "cuda":
        print("Host synchronisations per training step: counted on CUDA only (sync debug mode)")
        return
    counts = []
    original = engine._train_step

    def counting(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return original(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                counts.append(sum("synchroniz" in str(w.message) for w in caught))

    engine._train_step = counting
    try:
        engine.train(dataclasses.replace(preset("synthetic-quick"), device=str(device)), progress=False)
    finally:
        engine._train_step = original
    print(f"Host synchronisations per training step (encnet.engine, synthetic-quick, {len(counts)} steps): "
          f"median {statistics.median(counts):g}, max {max(counts)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=default_device(), help="default: cuda if a GPU is available, else cpu")
    parser.add_argument("--tiny", action="store_true", help="toy sizes and the small backbone: a smoke run")
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = TINY if args.tiny else Sizes()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"device: {describe(device, torch.get_num_threads())}; torch {torch.__version__}")
    for section in (encoding_rows, training_rows, inference_rows):
        try:
            section(sizes, device)
        except torch.OutOfMemoryError as error:  # the other rows still print
            print(f"  out of memory: {str(error).splitlines()[0]}")
            torch.cuda.empty_cache()
    host_syncs_per_step(device)


if __name__ == "__main__":
    main()
