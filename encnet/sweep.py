"""The SE-loss weight sweep: many training runs, one resumable JSON file.

    from encnet.config import preset
    from encnet.sweep import sweep
    result = sweep(preset("synthetic"), alphas=[0.0, 0.2, 0.8], seeds=[0, 1, 2], with_fcn=True,
                   out="runs/sweep.json", jobs=2)

Every run is :func:`encnet.engine.train` on the base config with ``se_weight``,
``seed`` (and ``model``) replaced and no files of its own; the sweep file holds
each run's metrics and history (no weights), is rewritten after each run, and
is read back on a restart, so an interrupted sweep continues where it stopped::

    {"config": base config, "alphas": [...], "seeds": [...], "models": {name: head options} (if any),
     "runs": [{"model", "se_weight", "seed", "pixAcc", "mIoU", "mIoU_all", "IoU", "history", "seconds"}]}

(``history``: one evaluation record per ``eval_every`` epochs; ``seconds``: the run's wall time;
``alphas`` and ``seeds``: those of all the runs the file holds.)
``jobs`` > 1 trains runs side by side, each in a process of its own
(``encnet sweep --jobs 2``); those processes end with the sweep, after an
error, an interrupt or even ``kill -9`` of the sweep. :mod:`encnet.ablation`
reads the file.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .config import TrainConfig
from .distributed import on_rank_zero, setup_process, show_progress
from .engine import train
from .errors import UserError
from .models import get_model
from .runs import RunFolder, write_json

_RUN_KEYS = ("model", "se_weight", "seed")  # what identifies a run of a sweep
_PR_SET_PDEATHSIG = 1  # prctl option of Linux: the signal a process gets when its parent dies


def sweep(
    config: TrainConfig,
    *,
    alphas: list[float],
    seeds: list[int],
    with_fcn: bool = False,
    models: dict[str, dict[str, Any]] | None = None,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """The SE-loss weight sweep: train EncNet with ``se_weight = alpha`` for every alpha and seed.

    ``with_fcn`` adds an FCN run per seed, so the ablation table (FCN, EncNet
    (alpha = 0), EncNet + SE-loss) comes from one file. ``models`` adds a run per
    seed of each other registered model without an SE branch, ``{name: its head
    options}`` (``{"aspp": {"rate": 5}, "pool": {}}``). Every run is ``config``
    with ``se_weight``, ``seed`` (and ``model``, ``model_options``) replaced and
    no files of its own. ``out``: the JSON file of the module's docstring,
    rewritten after each run; runs it already holds (for the same base config)
    are not trained again, so an interrupted sweep continues where it stopped,
    and a later call adds alphas, seeds or models to it. The sweep holds the
    lock of the folder ``out`` is in (:class:`encnet.runs.RunFolder`). ``jobs``
    > 1 trains that many runs at once, each in its own process with
    ``torch.get_num_threads() // jobs`` threads (``benchmarks/train.py``
    measures why); a run's result depends on its seed, not on the job that trained
    it. ``progress``: one bar over the runs (with ``jobs=1``, each run's own bars).
    """
    base = dataclasses.replace(config, out=None, resume=None)
    result = {"config": base.to_dict(), "alphas": list(alphas), "seeds": list(seeds), "runs": []}
    rank, world, _ = setup_process(config.device)  # under torchrun: join the group before rank 0 reads the file
    if not isinstance(jobs, int) or jobs < 1 or (jobs > 1 and world > 1):
        raise UserError(f"jobs must be a positive integer, and 1 under torchrun (here {world} processes), got "
                        f"{jobs!r}; pass jobs=1, or run the sweep without torchrun")
    folder = None if out is None else on_rank_zero(lambda: RunFolder(Path(out).parent).lock())
    with folder or contextlib.nullcontext():
        result["runs"] = on_rank_zero(lambda: read_sweep_file(out, base))
        if dist.is_initialized():  # the other ranks follow rank 0's file
            shared = [result["runs"]]
            dist.broadcast_object_list(shared, src=0)
            result["runs"] = shared[0]
        # A file grows by calls: its alphas and seeds are those of this call and of the runs it already holds.
        own = [run["se_weight"] for run in result["runs"] if run["model"] == config.model]
        result["alphas"] = sorted({*alphas, *own})
        result["seeds"] = sorted({*seeds, *(run["seed"] for run in result["runs"])})
        kept = on_rank_zero(lambda: _file_models(out)) or {}  # the models of earlier calls stay named
        if kept or models:
            result["models"] = {**kept, **{name: dict(options) for name, options in (models or {}).items()}}
        planned, todo = _plan(base, alphas, seeds, with_fcn, models or {}, result["runs"])
        bar = tqdm(total=len(planned), initial=len(planned) - len(todo), desc="sweep", unit="run",
                   disable=not show_progress(progress, rank))
        for record in _sweep_runs(todo, jobs, progress=progress if jobs == 1 else False):
            result["runs"].append(record)
            bar.update()
            bar.set_postfix_str(f"{record['model']} alpha={record['se_weight']:g} seed {record['seed']}: "
                                f"mIoU {100 * record['mIoU']:.2f}%")
            if folder is not None:
                write_json(out, result)
        bar.close()
    return result


def _file_models(out: str | os.PathLike | None) -> dict[str, Any]:
    """The ``"models"`` an existing sweep file names (read after :func:`read_sweep_file` checked it)."""
    if out is None or not Path(out).is_file():
        return {}
    return json.loads(Path(out).read_text()).get("models", {})


def _plan(
    base: TrainConfig, alphas: list[float], seeds: list[int], with_fcn: bool, models: dict[str, dict[str, Any]],
    done_runs: list[dict[str, Any]],
) -> tuple[list[tuple[str, float, int]], list[TrainConfig]]:
    """The runs of a sweep call, (model, alpha, seed) in training order, and the configs of those not done yet."""
    planned = [("fcn", 0.0, seed) for seed in seeds] if with_fcn else []
    planned += [(model, 0.0, seed) for model in models for seed in seeds]
    planned += [(base.model, alpha, seed) for alpha in alphas for seed in seeds]
    done = {(run["model"], run["se_weight"], run["seed"]) for run in done_runs}
    return planned, [_sweep_config(base, model, alpha, seed, models.get(model)) for model, alpha, seed in planned
                     if (model, alpha, seed) not in done]


def _sweep_config(
    base: TrainConfig, model: str, alpha: float, seed: int, options: dict[str, Any] | None = None
) -> TrainConfig:
    """One run of a sweep: ``base`` with its model (with ``options``, or the base's that it takes), alpha, seed."""
    if options is None:
        takes = get_model(model).options
        options = {name: value for name, value in base.model_options.items() if name in takes}
    return dataclasses.replace(base, model=model, model_options=options, se_weight=alpha, seed=seed)


def _sweep_runs(configs: list[TrainConfig], jobs: int, *, progress: bool | None):
    """Train ``configs``, ``jobs`` at a time; yield each run's sweep record as it finishes."""
    if jobs == 1:
        yield from (_sweep_record(config, progress=progress) for config in configs)
        return
    threads = max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no state forked from the caller's
    pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                                                  initargs=(threads, os.getpid()))
    try:
        pending = [pool.submit(_sweep_record, config, progress=False) for config in configs]
        for future in concurrent.futures.as_completed(pending):
            yield future.result()
    finally:  # after an error or an interrupt: the runs not finished are dropped, their workers stopped
        workers = list(getattr(pool, "_processes", {}).values())  # shutdown(wait=False) forgets them
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
                worker.join()
        pool.shutdown(wait=True)  # the pool's queues closed and its semaphores released, workers gone


def _start_worker(threads: int, parent: int) -> None:
    """Set up a sweep worker: its thread count, and its death with the sweep's process, however that dies.

    On Linux the kernel sends the worker SIGKILL when its parent dies (prctl
    PR_SET_PDEATHSIG); elsewhere, and as a second line, a thread polls the
    parent's pid each second. A worker never outlives the sweep by training on.
    """
    torch.set_num_threads(threads)
    tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock, a semaphore a killed worker would leak
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    threading.Thread(target=_exit_without_parent, args=(parent,), name="encnet-parent-watch", daemon=True).start()


def _exit_without_parent(parent: int) -> None:
    """Exit this process as soon as ``parent`` is no longer its parent (it died: the worker was re-parented)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _sweep_record(config: TrainConfig, *, progress: bool | None) -> dict[str, Any]:
    """Train one run of a sweep; its record in the sweep file (metrics and history, no weights)."""
    start = time.perf_counter()
    run = train(config, progress=progress)
    return {"model": config.model, "se_weight": config.se_weight, "seed": config.seed, **run["metrics"],
            "history": run["history"], "seconds": round(time.perf_counter() - start, 1)}


def read_sweep_file(out: str | os.PathLike | None, base: TrainConfig) -> list[dict[str, Any]]:
    """The runs a sweep file already holds, if it is a sweep of ``base``; [] for a new file.

    Raises :class:`UserError` for a file that is not a sweep of encnet, or a sweep of another config.
    """
    if out is None or not Path(out).is_file():
        return []
    expected = ('the JSON object {"config": {...}, "alphas": [...], "seeds": [...], "runs": [{"model", '
                '"se_weight", "seed", ...}, ...]} that `encnet sweep` writes')
    try:
        previous = json.loads(Path(out).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{str(out)!r} is not JSON ({error}); expected {expected}, or a new file: pass another "
                        "--out") from None
    try:
        runs, config = previous["runs"], TrainConfig.from_dict(previous["config"])
        if not isinstance(runs, list) or not all(isinstance(run, dict) and all(key in run for key in _RUN_KEYS)
                                                 for run in runs):
            raise TypeError("runs is not a list of records with " + ", ".join(_RUN_KEYS))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"{str(out)!r} is not a sweep file of encnet ({type(error).__name__}: {error}); it should be "
                        f"{expected}: pass another --out, or delete the file to start over") from None
    if config != base:
        raise UserError(
            f"{str(out)!r} holds a sweep of another config; pass another --out, or delete the file to start over"
        )
    return runs
