"""The notebooks' set-up (the quick switch, the seed, threads, figure size and fonts) and the tidy step."""

import matplotlib
import pytest
import torch

from encnet.teaching.notebook import KERNELSPEC, LEGIBLE, QUICK_SWITCH, WIDGET_VIEW, quick, setup, tidy


@pytest.fixture
def restore_threads_and_dpi():
    threads, params = torch.get_num_threads(), {k: matplotlib.rcParams[k] for k in ["figure.dpi", *LEGIBLE]}
    yield
    torch.set_num_threads(threads)
    matplotlib.rcParams.update(params)


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
    assert torch.get_num_threads() == 1 and matplotlib.rcParams["figure.dpi"] == 100
    assert matplotlib.rcParams["xtick.labelsize"] == matplotlib.rcParams["ytick.labelsize"] == 9
    assert capsys.readouterr().out.startswith("full run | torch ")

    state = torch.get_rng_state()
    setup(seed=None)
    assert torch.equal(torch.get_rng_state(), state)  # seed=None leaves the generator alone


def test_tidy_sets_ipykernels_kernelspec_and_drops_widget_state_but_keeps_other_outputs():
    figure = {"output_type": "display_data", "data": {"image/png": "iVBOR"}, "metadata": {}}
    text = {"output_type": "stream", "name": "stdout", "text": "seed 0\n"}
    widget = {"output_type": "display_data", "metadata": {},
              "data": {"text/plain": "interactive(children=(...))", WIDGET_VIEW: {"model_id": "abc"}}}
    nb = {"metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                       "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}}}},
          "cells": [{"cell_type": "markdown", "source": "# x"},
                    {"cell_type": "code", "source": "explore()", "outputs": [text, widget, figure]}]}
    assert tidy(nb) is nb
    assert nb["metadata"] == {"kernelspec": KERNELSPEC}
    assert nb["cells"][1]["outputs"] == [text, figure]
    assert nb["cells"][0] == {"cell_type": "markdown", "source": "# x"}


def test_show_replaces_an_outputs_figure_and_text_and_closes_the_figure():
    import base64

    import ipywidgets
    import matplotlib.pyplot as plt

    from encnet.teaching.notebook import show

    output = ipywidgets.Output()
    for value in (1, 2):
        fig, axis = plt.subplots()
        axis.plot([0, value])
        show(output, fig, f"value {value}\n", label="a line")
        assert not plt.fignum_exists(fig.number)
    image, text = output.outputs  # the second call replaced the first's outputs
    assert base64.b64decode(image["data"]["image/png"]).startswith(b"\x89PNG")
    assert image["data"]["text/plain"] == "<a line>" and text["text"] == "value 2\n"
    show(output, plt.figure())
    assert len(output.outputs) == 1
