"""Fixtures shared by the test files."""

from __future__ import annotations

import dataclasses
import urllib.error

import pytest
import torch

from encnet.config import TrainConfig, preset


@pytest.fixture(scope="session")
def tiny_config() -> TrainConfig:
    """A smaller run than synthetic-quick: 2 epochs of 8 training images of 128 x 64, 4 per batch (2 iterations each).

    The engine's and the run folder's tests train it; a config is a plain dataclass, so it can
    be passed on to spawned ranks.
    """
    quick = preset("synthetic-quick")
    options = {**quick.dataset_options, "train_samples": 8, "val_samples": 4}
    return dataclasses.replace(quick, dataset_options=options, batch_size=4, epochs=2)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache in ``tmp_path / "hub"``; a download attempt is recorded and fails as offline.

    Returns ``(hub folder, list of the URLs a download was attempted for)``.
    """
    attempts = []

    def refuse(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("network blocked by the test")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return tmp_path / "hub", attempts
