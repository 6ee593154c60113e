"""The notebooks' set-up: the quick switch, the seed, threads and figure size."""

import matplotlib
import pytest
import torch

from encnet.teaching.notebook import QUICK_SWITCH, quick, setup


@pytest.fixture
def restore_threads_and_dpi():
    threads, dpi = torch.get_num_threads(), matplotlib.rcParams["figure.dpi"]
    yield
    torch.set_num_threads(threads)
    matplotlib.rcParams["figure.dpi"] = dpi


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("0", False), ("", False), (None, False)])
def test_quick_is_on_only_for_encnet_quick_1(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(QUICK_SWITCH, raising=False)
    else:
        monkeypatch.setenv(QUICK_SWITCH, value)
    assert quick() is expected


def test_setup_seeds_sets_threads_and_dpi_and_says_which_run(monkeypatch, capsys, restore_threads_and_dpi):
    monkeypatch.setenv(QUICK_SWITCH, "1")
    assert setup(seed=3, threads=2, dpi=90) is True
    first = torch.rand(4)
    assert torch.get_num_threads() == 2 and matplotlib.rcParams["figure.dpi"] == 90
    assert capsys.readouterr().out == f"quick run | torch {torch.__version__}\n"

    monkeypatch.setenv(QUICK_SWITCH, "0")
    assert setup(seed=3) is False
    assert torch.equal(torch.rand(4), first)  # the same seed, the same draws
    assert torch.get_num_threads() == 1 and matplotlib.rcParams["figure.dpi"] == 72
    assert capsys.readouterr().out.startswith("full run | torch ")

    state = torch.get_rng_state()
    setup(seed=None)
    assert torch.equal(torch.get_rng_state(), state)  # seed=None leaves the generator alone
