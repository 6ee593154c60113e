"""Training and evaluation speed of the synthetic preset on this machine (its GPU if it has one, else its CPU).

    python benchmarks/train.py                # 3 rounds of 8 training iterations per model
    python benchmarks/train.py --rounds 5 --iterations 16

Everything goes through the engine (``encnet.engine.train`` / ``evaluate``),
data loading included, with the ``synthetic`` preset's images, batch and
backbone. FCN and EncNet are measured in interleaved rounds (the machine is
shared and noisy: compare the ratio of one run, not absolute figures across
runs), and the medians are printed with the projected duration of the whole
preset. Last, the ``synthetic-quick`` smoke run is timed end to end as a
command (``python -m encnet train --preset synthetic-quick``, start-up included;
target: under 30 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from measure import default_device, describe

from encnet import engine
from encnet.config import preset


def measure(config, iterations: int) -> tuple[float, float]:
    """(training images/s, evaluation images/s) of ``config`` over ``iterations`` training steps."""
    samples = iterations * config.batch_size
    options = {**config.dataset_options, "train_samples": samples, "val_samples": samples}
    short = dataclasses.replace(config, epochs=1, dataset_options=options, out=None)
    result = engine.train(short, progress=False)  # includes one evaluation, which warms the eval path up
    val_set = engine.whole_images(config.dataset, "val", root=None, options=options)
    start = time.perf_counter()
    engine.evaluate(result["model"], val_set, crop_size=config.crop_size, batch_size=config.batch_size,
                    workers=config.workers)
    return result["history"][0]["images_per_s"], samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=8, help="training iterations per measurement")
    args = parser.parse_args()

    base = preset("synthetic")
    size = base.dataset_options.get("image_size", base.crop_size)
    print(f"synthetic preset: {size}x{size} images, batch {base.batch_size}, backbone {base.backbone}, "
          f"{base.dataset_options['train_samples']} training / {base.dataset_options['val_samples']} "
          f"validation images, {base.epochs} epochs; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs; on {describe(torch.device(default_device()), torch.get_num_threads())}")
    models = {"fcn": dataclasses.replace(base, model="fcn"), "encnet": base}
    figures = {name: {"train": [], "eval": []} for name in models}
    measure(base, 2)  # warm-up: first-call costs (oneDNN kernels, allocations) out of the rounds
    for round_index in range(args.rounds):
        for name, config in models.items():
            train_rate, eval_rate = measure(config, args.iterations)
            figures[name]["train"].append(train_rate)
            figures[name]["eval"].append(eval_rate)
            print(f"  round {round_index + 1} {name:>6}: train {train_rate:6.1f} images/s, "
                  f"eval {eval_rate:6.1f} images/s")

    print(f"\nmedians over {args.rounds} rounds of {args.iterations} iterations:")
    print(f"{'model':>8} {'train img/s':>12} {'eval img/s':>11} {'preset (projected)':>19}")
    medians = {}
    for name, config in models.items():
        train_rate = statistics.median(figures[name]["train"])
        eval_rate = statistics.median(figures[name]["eval"])
        medians[name] = train_rate
        options = config.dataset_options
        evaluations = -(-config.epochs // config.eval_every)
        seconds = (config.epochs * options["train_samples"] / train_rate
                   + evaluations * options["val_samples"] / eval_rate)
        print(f"{name:>8} {train_rate:12.1f} {eval_rate:11.1f} {seconds / 60:16.1f} min")
    print(f"EncNet / FCN training time per image: {medians['fcn'] / medians['encnet']:.2f}x")

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "encnet", "train", "--preset", "synthetic-quick", "--out", out,
                        "--no-progress"], check=True, capture_output=True)
        print(f"\nsynthetic-quick end to end (python -m encnet train): {time.perf_counter() - start:.1f} s "
              f"(target: under 30 s)")


if __name__ == "__main__":
    main()
