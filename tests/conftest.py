"""Fixtures shared by the test files."""

from __future__ import annotations

import urllib.error

import pytest
import torch


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
