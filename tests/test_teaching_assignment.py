"""The soft-assignment drawing and the smoothing slider of notebook 01 (encnet.teaching.assignment)."""

import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from encnet.teaching.assignment import (
    CODEWORD_COLOURS,
    EVEN,
    TICKS,
    assignment_colours,
    assignment_figure,
    draw_assignment,
    draw_key,
    smoothing_slider,
    smoothing_view,
)

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def toy():
    # 300 points around six codewords on a hexagon, as in notebook 01
    angles = torch.arange(6) * math.pi / 3
    codewords = 1.3 * torch.stack([angles.cos(), angles.sin()], dim=1)
    g = torch.Generator().manual_seed(0)
    points = 2 * codewords.repeat_interleave(50, 0) / 1.3 + 0.7 * torch.randn(300, 2, generator=g)
    yield points, codewords
    plt.close("all")


def test_an_even_assignment_is_grey_and_a_hard_one_is_its_codewords_colour():
    even = torch.full((6, 4), 1 / 6)
    colours, certainty = assignment_colours(even)
    assert np.allclose(certainty, 0) and np.allclose(colours, EVEN)

    hard = torch.eye(6)[:, [3, 0, 5, 1]]  # points 0..3 to codewords 3, 0, 5, 1
    colours, certainty = assignment_colours(hard)
    assert np.allclose(certainty, 1) and np.allclose(colours, CODEWORD_COLOURS[[3, 0, 5, 1]])

    halfway = torch.tensor([[0.6], [0.2], [0.2]])  # max 0.6: (0.6 - 1/3) / (2/3) = 0.4 of the way
    colours, certainty = assignment_colours(halfway)
    assert certainty == pytest.approx([0.4]) and np.allclose(colours, 0.6 * EVEN + 0.4 * CODEWORD_COLOURS[0])


def test_small_smoothing_draws_every_point_grey_and_large_smoothing_draws_it_coloured(toy):
    points, codewords = toy
    fig, ax = plt.subplots()
    for s, (low, high) in [(1e-3, (0.0, 0.02)), (1e3, (0.98, 1.0))]:
        A = draw_assignment(ax, points, codewords, torch.full((6,), s))
        certainty = assignment_colours(A)[1]
        assert low <= certainty.min() and certainty.max() <= high, (s, certainty.min(), certainty.max())
    plt.close(fig)


def test_the_plane_has_coordinates_at_equal_scale(toy):
    points, codewords = toy
    fig, ax = plt.subplots()
    draw_assignment(ax, points, codewords, torch.ones(6))
    assert list(ax.get_xticks()) == list(TICKS) and list(ax.get_yticks()) == list(TICKS)
    assert ax.get_aspect() == 1.0 and ax.get_xlim() == ax.get_ylim() == (-4.2, 4.2)
    assert all(line.get_visible() for line in ax.xaxis.get_gridlines() + ax.yaxis.get_gridlines())
    plt.close(fig)


def _key_texts(ax):
    # the key's visible texts: tick labels, axis labels, title
    texts = [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.xaxis.label, ax.yaxis.label, ax.title]
    return [text for text in texts if text.get_visible() and text.get_text()]


@pytest.mark.parametrize("K", [2, 6, 9])
@pytest.mark.parametrize("layout", ["assignment_figure", "smoothing_view"])
def test_the_key_has_one_bar_per_codeword_from_grey_to_its_colour_and_no_labels_overlap(K, layout):
    angles = torch.arange(K) * 2 * math.pi / K
    codewords = torch.stack([angles.cos(), angles.sin()], dim=1)
    fig = assignment_figure(K)[0] if layout == "assignment_figure" else smoothing_view(codewords, codewords)[0]
    (ax,) = [ax for ax in fig.axes if ax.get_title() == "colour key"]
    assert len(ax.images) == K and list(ax.get_yticks()) == list(range(K))
    assert ax.get_xlim() == pytest.approx((1 / K, 1))
    assert [label.get_text().split("\n")[1] for label in ax.get_xticklabels()] == ["even", "hard"]
    for k, bar in enumerate(ax.images):
        rgb = bar.get_array()[0]  # (levels, 3), even on the left, hard on the right
        assert np.allclose(rgb[0], EVEN) and np.allclose(rgb[-1], CODEWORD_COLOURS[k])
        left, right, bottom, top = bar.get_extent()
        assert (left, right) == pytest.approx((1 / K, 1)) and abs(top - bottom) >= 0.6  # a thick bar in row k
        assert min(top, bottom) > k - 0.5 and max(top, bottom) < k + 0.5
    fig.canvas.draw()
    boxes = [text.get_window_extent() for text in _key_texts(ax)]
    overlapping = [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]
    assert not overlapping, overlapping
    plt.close(fig)


def test_a_key_needs_two_to_nine_codewords():
    fig, ax = plt.subplots()
    for K in (1, 10):
        with pytest.raises(ValueError, match="num_codes must be 2 to 9"):
            draw_key(ax, K)
    plt.close(fig)


def _assert_apart(fig, key, others):
    # the key, its labels included, overlaps none of the other axes (their tick labels included)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = key.get_tightbbox(renderer)
    assert not [ax for ax in others if ax.get_tightbbox(renderer).overlaps(box)]


def test_the_figure_puts_the_key_beside_its_panels(toy):
    points, codewords = toy
    fig, panels = assignment_figure(6, 2, 3, figsize=(11.5, 7.4))
    assert len(panels) == 6 and fig.axes[:6] == panels and fig.axes[-1].get_title() == "colour key"
    for ax in panels:
        draw_assignment(ax, points, codewords, torch.ones(6), arrows=False)
    assert len(fig.axes[-1].images) == 6
    _assert_apart(fig, fig.axes[-1], panels)
    plt.close(fig)


def test_the_slider_figure_has_coordinates_and_the_key(toy):
    points, codewords = toy
    fig, _ = smoothing_view(points, codewords, 1.0, 3.0)
    (key,) = [ax for ax in fig.axes if ax.get_title() == "colour key"]
    points_ax, curve_ax = [ax for ax in fig.axes if ax is not key]
    assert len(key.images) == 6 and list(points_ax.get_xticks()) == list(TICKS)
    _assert_apart(fig, key, [points_ax, curve_ax])
    plt.close(fig)


def test_the_view_sweeps_from_even_to_hard_and_a_larger_s_k_claims_fewer_points(toy):
    points, codewords = toy
    hot, cold = (smoothing_view(points, codewords, s)[1] for s in (0.01, 100.0))
    assert hot.entropy == pytest.approx(math.log(6), abs=0.01) and cold.entropy < 0.05
    assert sum(hot.mass) == pytest.approx(300) and sum(cold.mass) == pytest.approx(300)
    equal, narrow = (smoothing_view(points, codewords, 1.0, ratio)[1] for ratio in (1.0, 5.0))
    assert narrow.mass[0] < 0.5 * equal.mass[0]  # exp(-s_0 r^2) narrower: codeword 0 loses points
    plt.close("all")


def test_the_slider_redraws_its_output_when_a_control_moves(toy):
    points, codewords = toy
    controls = smoothing_slider(points, codewords)
    first, view = controls.output.outputs, controls.view
    assert [out["output_type"] for out in first] == ["display_data", "stream"]
    assert view.smoothing == 1.0 and first[1]["text"] == view.describe() + "\n"

    controls.smoothing.value = 0.05
    assert controls.view.smoothing == pytest.approx(0.05) and controls.view.entropy > view.entropy
    assert controls.output.outputs[0]["data"]["image/png"] != first[0]["data"]["image/png"]
    controls.ratio.value = 4.0
    assert controls.view.ratio == pytest.approx(4.0) and "s_0 = 0.2" in controls.output.outputs[1]["text"]
    assert len(controls.seconds) == 3 and not plt.get_fignums()  # every redraw closes its figure


@pytest.mark.parametrize(("points", "codewords", "message"), [
    (torch.zeros(5, 3), torch.zeros(2, 2), "points must be (N, 2)"),
    (torch.zeros(5, 2), torch.zeros(2), "codewords must be (K, 2)"),
    (torch.zeros(5, 2), torch.zeros(12, 2), "draw at most 9 codewords"),
])
def test_bad_input_says_what_was_expected(points, codewords, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        smoothing_view(points, codewords)


def test_a_codeword_that_is_not_there_is_refused():
    with pytest.raises(ValueError, match="codeword must be one of 0..1"):
        smoothing_view(torch.zeros(5, 2), torch.zeros(2, 2), codeword=2)
