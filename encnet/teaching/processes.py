r"""Run a function on several local processes joined in a process group.

Multi-GPU training runs one process per GPU; the processes exchange tensors
through *collectives* (``all_reduce`` and friends) of a process group.
:func:`spawn` gives a learner the same setting on a laptop: ``world_size``
CPU processes on this machine, joined by the gloo backend over 127.0.0.1, so
that code written for many GPUs (synchronized batch norm,
DistributedDataParallel) can be run, read and tested anywhere::

    from encnet.teaching.processes import spawn
    from mypackage import worker        # def worker(rank, world_size, ...): ...
    results = spawn(worker, 2, "some", "arguments")   # [worker's value on rank 0, on rank 1]

The processes are started with the "spawn" method: each one starts a fresh
Python interpreter and *imports* ``fn`` by its module and name. So ``fn`` must
be a module-level function of an importable module (a package, or a ``.py``
file next to the notebook); a function defined in a notebook cell, a lambda or
a nested function cannot be sent. The arguments and return values travel
pickled. Each process uses one thread (``torch.set_num_threads(1)``) so that
``world_size`` processes share the CPU cores instead of fighting over them.
"""

from __future__ import annotations

import datetime
import pickle
import socket
import sys
import traceback
from collections.abc import Callable
from multiprocessing import connection
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["spawn"]

# After one rank fails, how long the others get to report before they are stopped.
_GRACE_SECONDS = 5.0


def spawn(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str = "gloo",
    timeout: float = 600.0,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` local processes.

    Each process joins one process group of ``world_size`` ranks (``backend``,
    rendezvous on a free port of 127.0.0.1) before calling ``fn``, and destroys
    it afterwards, whatever happens. With ``backend="nccl"``, ``fn`` picks its
    own GPU (``torch.cuda.set_device(rank)``).

    Returns the list of the values returned by ``fn``, in rank order. If a rank
    raises, the others are given a few seconds, then stopped, and a
    ``RuntimeError`` names the failed rank and carries its traceback. A
    collective that waits longer than ``timeout`` seconds (a deadlock: ranks
    that disagree on which collectives to issue) raises in the ranks that wait.
    """
    _check_importable(fn)
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int (the number of processes), got {world_size!r}.")
    context = mp.get_context("spawn")
    port = _free_port()
    pipes = [context.Pipe(duplex=False) for _ in range(world_size)]
    processes = [
        context.Process(
            target=_run_rank,
            args=(rank, world_size, port, backend, timeout, fn, args, sender),
            name=f"encnet-rank-{rank}",
        )
        for rank, (_, sender) in enumerate(pipes)
    ]
    for process in processes:
        process.start()
    for _, sender in pipes:
        sender.close()  # the children hold the sending ends; a dead child's pipe then reads as EOF
    try:
        outcomes = _collect(processes, [receiver for receiver, _ in pipes])
    finally:
        _stop(processes)
    failures = [(rank, message) for rank, (ok, message) in outcomes.items() if not ok]  # in order of arrival
    if failures:
        rank, message = failures[0]
        others = [str(other) for other, _ in failures[1:]]
        also = f" (rank(s) {', '.join(others)} failed too, possibly as a consequence)" if others else ""
        raise RuntimeError(f"rank {rank} of {world_size} failed{also}:\n{message}")
    return [outcomes[rank][1] for rank in range(world_size)]


def _run_rank(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    timeout: float,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    sender: connection.Connection,
) -> None:
    """Body of one process: join the group, call ``fn``, send back ``(ok, value or traceback)``."""
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout),
        )
        try:
            # Plain pickle copies tensors by value; multiprocessing's own pickler would
            # pass them through shared memory, which vanishes when this process exits.
            sender.send_bytes(pickle.dumps((True, fn(rank, world_size, *args))))
        except BaseException:
            # Report before the group is destroyed: the peers then fail too, and
            # this rank's error, the cause, should be the first to arrive.
            sender.send_bytes(pickle.dumps((False, traceback.format_exc())))
        finally:
            dist.destroy_process_group()
    except BaseException:
        sender.send_bytes(pickle.dumps((False, traceback.format_exc())))
    finally:
        sender.close()


def _collect(
    processes: list[mp.Process], receivers: list[connection.Connection]
) -> dict[int, tuple[bool, Any]]:
    """Each rank's ``(ok, payload)``, in order of arrival; after a failure wait at most ``_GRACE_SECONDS`` more."""
    outcomes: dict[int, tuple[bool, Any]] = {}
    waiting = {receiver: rank for rank, receiver in enumerate(receivers)}
    deadline = None
    while waiting:
        ready = connection.wait(list(waiting), timeout=deadline)
        if not ready:
            break  # grace period over: the ranks still running are stopped by the caller
        for receiver in ready:
            rank = waiting.pop(receiver)
            try:
                outcomes[rank] = pickle.loads(receiver.recv_bytes())
            except EOFError:
                processes[rank].join()
                outcomes[rank] = (
                    False,
                    f"the process exited with code {processes[rank].exitcode} without returning "
                    "(killed, out of memory, or a crash in native code).",
                )
            receiver.close()
            if not outcomes[rank][0]:
                deadline = _GRACE_SECONDS
    return outcomes


def _stop(processes: list[mp.Process]) -> None:
    """Join the processes; terminate those still running after the grace period."""
    for process in processes:
        process.join(timeout=_GRACE_SECONDS)
        if process.is_alive():
            process.terminate()
            process.join()


def _free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _check_importable(fn: Callable[..., Any]) -> None:
    """Fail early, with a fix, when ``fn`` cannot be imported by a fresh interpreter."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    main_has_file = hasattr(sys.modules.get("__main__"), "__file__")
    if "<" in qualname or module is None or (module == "__main__" and not main_has_file):
        raise ValueError(
            f"spawn needs a module-level function that a new process can import, got {fn!r}. "
            "Lambdas, nested functions and functions defined in a notebook cell cannot be sent to "
            "spawned processes: define the function in a .py module (in encnet, or a file next to "
            "the notebook) and import it from there."
        )
