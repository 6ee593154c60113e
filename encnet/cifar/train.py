r"""Training and evaluating the CIFAR-10 classifiers (:mod:`encnet.cifar.models`).

The reference recipe of the paper's CIFAR-10 experiment: cross-entropy loss,
SGD with momentum 0.9 and weight decay :math:`10^{-4}`, batch 128, a cosine
learning rate from 0.1 to 0 over the whole run (600 epochs for the paper's
numbers), updated at every iteration ``t`` of ``T``:

.. math::

    \mathrm{lr}_t = \tfrac{1}{2}\, \mathrm{lr}_0 \left(1 + \cos\frac{\pi t}{T}\right).

This is a deliberately small loop for 32 x 32 classifiers, not the
segmentation engine (:mod:`encnet.engine`): no checkpoints, no mixed precision,
one device. The test split is scored after every epoch, as in the paper's
curves. Errors are fractions in [0, 1] (the paper prints percentages).

Same seed, same result on CPU: ``seed`` seeds torch's global generator (the
random augmentations and :class:`encnet.nn.EncodingDrop`'s smoothing draws)
and the shuffling. The model's initial weights are the caller's: seed before
building it.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


def cosine_schedule(optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The cosine schedule, stepped once per iteration: ``lr_t = lr_0 (1 + cos(pi t / total)) / 2``."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=0.0)


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 256, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Mean cross-entropy ``loss`` and top-1 ``error`` (fraction in [0, 1]) of ``model`` on ``dataset``."""
    model.eval()
    loss_sum, wrong, count = 0.0, 0, 0
    for images, labels in DataLoader(dataset, batch_size=batch_size):
        images, labels = images.to(device), labels.to(device)
        logits = model(images)  # (B, 10)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        wrong += (logits.argmax(1) != labels).sum().item()
        count += len(labels)
    return {"loss": loss_sum / count, "error": wrong / count}


def train_classifier(
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = False,
) -> dict:
    """Train ``model`` on ``train_set`` with the reference recipe and score it on ``test_set``.

    Datasets yield ``(image float32 (3, 32, 32), label int64)``; the model maps
    ``(B, 3, 32, 32)`` to logits ``(B, num_classes)``. With ``progress`` one line
    per epoch is printed (to stdout).

    Returns ``{"history": [...], "test_error": float, "seconds": float}``: one
    history entry per epoch with keys ``epoch``, ``lr`` (at the epoch's end),
    ``train_loss`` and ``train_error`` (over the epoch's batches, in training
    mode), ``test_loss`` and ``test_error``; ``test_error`` is the last epoch's;
    ``seconds`` the wall time of the run.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if len(train_set) < batch_size:
        raise ValueError(
            f"the training set has {len(train_set)} samples, fewer than one batch of {batch_size}; "
            "lower batch_size or use more samples (incomplete batches are dropped)"
        )
    torch.manual_seed(seed)
    loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,  # BatchNorm needs more than one sample, and every step sees a full batch
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = cosine_schedule(optimizer, epochs * len(loader))

    history = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        train = _train_epoch(model, loader, optimizer, schedule, device)
        test = evaluate_classifier(model, test_set, device=device)
        history.append({"epoch": epoch, "lr": schedule.get_last_lr()[0], "train_loss": train["loss"],
                        "train_error": train["error"], "test_loss": test["loss"], "test_error": test["error"]})
        if progress:
            _print_epoch(history[-1], epochs, time.perf_counter() - start)
    return {"history": history, "test_error": history[-1]["test_error"], "seconds": time.perf_counter() - start}


def _print_epoch(record: dict[str, float], epochs: int, seconds: float) -> None:
    print(
        f"epoch {record['epoch']}/{epochs}  lr {record['lr']:.4f}  train loss {record['train_loss']:.3f} "
        f"error {record['train_error']:.2%}  test loss {record['test_loss']:.3f} error {record['test_error']:.2%}  "
        f"{seconds:.0f} s",
        flush=True,
    )


def _train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    device: str | torch.device,
) -> dict[str, float]:
    """One pass over ``loader``, one SGD step and one schedule step per batch: mean ``loss`` and ``error``."""
    model.train()
    loss_sum, wrong, count = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)  # (B, num_classes)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum += loss.item() * len(labels)
        wrong += (logits.argmax(1) != labels).sum().item()
        count += len(labels)
    return {"loss": loss_sum / count, "error": wrong / count}
