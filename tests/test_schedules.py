"""The library schedulers give the formulas of the recipes, iteration by iteration, over the whole run."""

import math

import pytest
import torch

from encnet.cifar.train import cosine_schedule
from encnet.engine import poly_schedule


def _rates(make_scheduler, steps: int, lr: float = 0.1) -> list[float]:
    """The learning rate each iteration 0 .. steps - 1 trains with."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = make_scheduler(optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("total, power", [(7, 0.9), (250, 0.9), (40, 2.0)])
def test_poly_schedule_is_the_reference_formula(total, power):
    """``lr (1 - t / T) ** power`` for t < T, as the reference's hand-written schedule."""
    expected = [0.1 * (1 - t / total) ** power for t in range(total)]
    assert _rates(lambda opt: poly_schedule(opt, total, power), total) == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("total", [5, 391])
def test_cosine_schedule_is_the_papers_formula(total):
    """``lr (1 + cos(pi t / T)) / 2``: from lr at t = 0 towards 0 at t = T."""
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * t / total)) for t in range(total)]
    assert _rates(lambda opt: cosine_schedule(opt, total), total) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_poly_schedule_resumes_where_it_stopped():
    """A scheduler restored from its state dict (as ``encnet train --resume`` does) goes on with the same rates."""
    whole = _rates(lambda opt: poly_schedule(opt, 20, 0.9), 20)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    first = poly_schedule(optimizer, 20, 0.9)
    for _ in range(8):
        optimizer.step()
        first.step()
    resumed_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    resumed = poly_schedule(resumed_optimizer, 20, 0.9)
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    resumed.load_state_dict(first.state_dict())
    rest = []
    for _ in range(12):
        rest.append(resumed_optimizer.param_groups[0]["lr"])
        resumed_optimizer.step()
        resumed.step()
    assert rest == pytest.approx(whole[8:], rel=1e-12)
