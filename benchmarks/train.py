"""Training and evaluation speed of the synthetic preset on this machine's CPU, before and after issue 13's changes.

    python benchmarks/train.py                # 3 rounds of 8 training iterations per model and setting
    python benchmarks/train.py --rounds 5 --iterations 16
    python benchmarks/train.py --precision-only --rounds 3 --iterations 4   # bf16 against float32 alone

Everything goes through the package (``encnet.engine.train``, ``encnet.evaluation.evaluate``),
data loading included, with the ``synthetic`` preset's images, batch and
backbone, for each of the three models of the ablation (FCN, EncNet, EncNet +
SE-loss). Two settings are measured in interleaved rounds of the same run (the
machine is shared and noisy: compare the ratio of one run, not absolute
figures across runs):

- before: NCHW tensors (``channels_last=False``), one run at a time on all of
  torch's threads (the engine as it was);
- after: NHWC tensors (``channels_last=True``, the preset's setting), two runs
  side by side in two processes of one thread each (``sweep(..., jobs=2)``,
  what ``make reproduce`` does); images/s is the sum of the two.

The medians are printed with the projected training time of ``make
reproduce``'s 9 runs. Then mixed precision: training images/s of the
``synthetic`` preset (EncNet + SE-loss) in float32 against bf16 autocast
(``amp="bf16"``), interleaved rounds of one process on all threads, and the
ratio of the medians (``--precision-only`` measures this alone). Then the wall
time of each phase of the last ``make reproduce`` (build/reproduce_phases.json, written by notebooks/reproduce.py),
and last the ``synthetic-quick`` smoke run timed end to end as a command
(``python -m encnet train --preset synthetic-quick``, start-up included; target:
under 30 s).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from encnet import engine
from encnet.config import preset
from encnet.data.wrappers import whole_images
from encnet.evaluation import evaluate
from encnet.inference import Protocol

PHASES = Path(__file__).resolve().parents[1] / "build" / "reproduce_phases.json"


def measure(config, iterations: int) -> tuple[float, float]:
    """(training images/s, evaluation images/s) of ``config`` over ``iterations`` training steps."""
    samples = iterations * config.batch_size
    options = {**config.dataset_options, "train_samples": samples, "val_samples": samples}
    short = dataclasses.replace(config, epochs=1, dataset_options=options, out=None)
    result = engine.train(short, progress=False)  # includes one evaluation, which warms the eval path up
    val_set = whole_images(config.dataset, "val", root=None, options=options)
    start = time.perf_counter()
    evaluate(result["model"], val_set, Protocol(crop_size=config.crop_size), batch_size=config.batch_size,
             workers=config.workers)
    return result["history"][0]["images_per_s"], samples / (time.perf_counter() - start)


def measure_side_by_side(pool: concurrent.futures.Executor, config, iterations: int) -> tuple[float, float]:
    """Two ``measure`` at once in ``pool``'s two processes: the sums of their images/s."""
    rates = [future.result() for future in [pool.submit(measure, config, iterations) for _ in range(2)]]
    return sum(rate[0] for rate in rates), sum(rate[1] for rate in rates)


def training_rate(config, iterations: int) -> float:
    """Training images/s of ``config`` over ``iterations`` steps (the engine's own figure; one evaluation follows)."""
    options = {**config.dataset_options, "train_samples": iterations * config.batch_size,
               "val_samples": config.batch_size}
    short = dataclasses.replace(config, epochs=1, dataset_options=options, out=None)
    return engine.train(short, progress=False)["history"][0]["images_per_s"]


def compare_precision(config, rounds: int, iterations: int) -> None:
    """Print float32's and bf16's training images/s, round by round (interleaved), and the ratio of their medians."""
    print(f"\nmixed precision, {config.model}{'+se' if config.se_weight else ''} on the synthetic preset "
          f"(channels_last={config.channels_last}), {rounds} rounds of {iterations} iterations:")
    rates: dict[str, list[float]] = {"off": [], "bf16": []}
    for amp in rates:  # warm-up: first-call costs (oneDNN's kernels for each precision) out of the rounds
        training_rate(dataclasses.replace(config, amp=amp), 2)
    for round_index in range(rounds):
        for amp, figures in rates.items():
            figures.append(training_rate(dataclasses.replace(config, amp=amp), iterations))
            print(f"  round {round_index + 1} {'float32' if amp == 'off' else amp:>7}: train {figures[-1]:6.1f} "
                  "images/s", flush=True)
    medians = {amp: statistics.median(figures) for amp, figures in rates.items()}
    print(f"medians: float32 {medians['off']:.1f} images/s, bf16 {medians['bf16']:.1f} images/s; "
          f"bf16 / float32 = {medians['bf16'] / medians['off']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=8, help="training iterations per measurement")
    parser.add_argument("--precision-only", action="store_true", help="only bf16 against float32 training")
    args = parser.parse_args()

    base = preset("synthetic")
    size = base.dataset_options.get("image_size", base.crop_size)
    print(f"synthetic preset: {size}x{size // 2} images, batch {base.batch_size}, backbone {base.backbone}, "
          f"{base.dataset_options['train_samples']} training / {base.dataset_options['val_samples']} "
          f"validation images, {base.epochs} epochs; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    if args.precision_only:
        compare_precision(base, args.rounds, args.iterations)
        return
    models = {"fcn": dataclasses.replace(base, model="fcn"), "encnet": dataclasses.replace(base, se_weight=0.0),
              "encnet+se": base}
    settings = ("before", "after")
    figures = {(name, setting): {"train": [], "eval": []} for name in models for setting in settings}
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context, initializer=torch.set_num_threads,
                                                initargs=(1,)) as pool:
        measure(dataclasses.replace(base, channels_last=False), 2)  # warm-up: first-call costs out of the rounds
        measure_side_by_side(pool, base, 2)
        for round_index in range(args.rounds):
            for name, config in models.items():
                for setting in settings:
                    if setting == "before":
                        train_rate, eval_rate = measure(dataclasses.replace(config, channels_last=False),
                                                        args.iterations)
                    else:
                        train_rate, eval_rate = measure_side_by_side(pool, config, args.iterations)
                    figures[name, setting]["train"].append(train_rate)
                    figures[name, setting]["eval"].append(eval_rate)
                    print(f"  round {round_index + 1} {name:>9} {setting:>6}: train {train_rate:6.1f} images/s, "
                          f"eval {eval_rate:6.1f} images/s", flush=True)

    print(f"\nmedians over {args.rounds} rounds of {args.iterations} iterations (after: the sum of two 1-thread "
          "runs side by side):")
    print(f"{'model':>9} {'setting':>7} {'train img/s':>12} {'eval img/s':>11} {'speed-up (train)':>17}")
    projected = {setting: 0.0 for setting in settings}
    for name, config in models.items():
        medians = {setting: (statistics.median(figures[name, setting]["train"]),
                             statistics.median(figures[name, setting]["eval"])) for setting in settings}
        options = config.dataset_options
        evaluations = -(-config.epochs // config.eval_every)
        for setting, (train_rate, eval_rate) in medians.items():
            speedup = f"{train_rate / medians['before'][0]:16.2f}x" if setting == "after" else ""
            print(f"{name:>9} {setting:>7} {train_rate:12.1f} {eval_rate:11.1f} {speedup:>17}")
            seeds = 3  # make reproduce: 3 seeds of each model
            projected[setting] += seeds * (config.epochs * options["train_samples"] / train_rate
                                           + evaluations * options["val_samples"] / eval_rate)
    print("make reproduce, training of its 9 runs (projected from these medians): "
          + ", ".join(f"{setting} {seconds / 60:.1f} min" for setting, seconds in projected.items()))

    compare_precision(base, args.rounds, args.iterations)

    if PHASES.is_file():
        record = json.loads(PHASES.read_text())
        print(f"\nlast `make reproduce` ({record['mode']}, load average at its end {record['load_average'][0]:.1f} "
              f"on {record['cpus']} CPUs), wall time per phase:")
        for name, seconds in record["seconds"].items():
            print(f"  {name:40} {seconds / 60:5.1f} min ({seconds:.0f} s)")
    else:
        print(f"\nno {PHASES.name} yet: `make reproduce` writes the wall time of its phases there")

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "encnet", "train", "--preset", "synthetic-quick", "--out", out,
                        "--no-progress"], check=True, capture_output=True)
        print(f"\nsynthetic-quick end to end (python -m encnet train): {time.perf_counter() - start:.1f} s "
              f"(target: under 30 s)")


if __name__ == "__main__":
    main()
