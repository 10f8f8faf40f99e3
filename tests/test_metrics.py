"""SeriesKendallTau against hand-computed tau-b and scipy-free reasoning."""

from __future__ import annotations

import math

import pytest
import torch

from mslightning.metrics import SeriesKendallTau


def _tau_b(x: list[float], y: list[float]) -> float:
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx * dy > 0:
                concordant += 1
            else:
                discordant += 1
    return (concordant - discordant) / math.sqrt(
        (concordant + discordant + ties_x) * (concordant + discordant + ties_y)
    )


def test_mean_over_series_of_tau_b_with_members_averaged_over_observations() -> None:
    metric = SeriesKendallTau()
    # series 7: photo 1 seen twice (scores 0.2 and 0.4 -> 0.3); true ranks 1, 2, 3, 3 (a tie)
    metric.update(
        series=torch.tensor([7, 7, 7]),
        member=torch.tensor([1, 2, 1]),
        score=torch.tensor([0.2, 0.5, 0.4]),
        true_rank=torch.tensor([1, 2, 1]),
    )
    metric.update(
        series=torch.tensor([7, 7, 9, 9, 9, 4]),
        member=torch.tensor([3, 4, 1, 2, 3, 1]),
        score=torch.tensor([0.1, 0.05, 3.0, 1.0, 2.0, 0.0]),
        true_rank=torch.tensor([3, 3, 3, 1, 2, 1]),  # series 4 has one member: no tau
    )
    tau_7 = _tau_b([0.3, 0.5, 0.1, 0.05], [-1, -2, -3, -3])
    tau_9 = _tau_b([3.0, 1.0, 2.0], [-3, -1, -2])
    assert tau_9 == -1.0
    assert metric.compute().item() == pytest.approx((tau_7 + tau_9) / 2, abs=1e-6)


def test_unknown_ranks_constant_scores_and_empty() -> None:
    metric = SeriesKendallTau()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(metric.compute().item())
    metric.update(torch.tensor([1, 1]), torch.tensor([1, 2]), torch.tensor([0.3, 0.3]), torch.tensor([1, 2]))
    metric.update(torch.tensor([2, 2]), torch.tensor([1, 2]), torch.tensor([0.1, 0.9]), torch.tensor([-1, -1]))
    assert metric.compute().item() == 0.0  # constant scores: no order, no agreement
    metric.reset()
    metric.update(torch.tensor([3, 3]), torch.tensor([1, 2]), torch.tensor([0.1, 0.9]), torch.tensor([2, 2]))
    assert math.isnan(metric.compute().item())  # all ranks tied: tau undefined
