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


# ---------------------------------------------------------------- neural response metrics and loss


def _responses(seed: int = 0, shape=(4, 6, 3)):
    g = torch.Generator().manual_seed(seed)
    rates = torch.rand(shape, generator=g) * 3 + 0.05
    spikes = torch.poisson(rates, generator=g)
    preds = rates * (0.5 + torch.rand(shape, generator=g))
    return rates, spikes, preds


def test_masked_pearson_equals_torchmetrics_and_the_concatenation_whatever_the_batching() -> None:
    from torchmetrics.regression import PearsonCorrCoef

    from mslightning.metrics import MaskedPearsonCorrCoef

    _, spikes, preds = _responses()
    whole = MaskedPearsonCorrCoef(3)
    whole.update(preds, spikes)
    oracle = PearsonCorrCoef(num_outputs=3)
    oracle.update(preds.reshape(-1, 3), spikes.reshape(-1, 3))
    torch.testing.assert_close(whole.compute(), oracle.compute(), atol=1e-6, rtol=0)
    batched = MaskedPearsonCorrCoef(3)
    for b in range(4):  # one window at a time: the same value, not a mean of per-batch values
        batched.update(preds[b : b + 1], spikes[b : b + 1])
    torch.testing.assert_close(batched.compute(), whole.compute(), atol=1e-6, rtol=0)
    per_batch_mean = torch.stack(
        [
            torch.stack([torch.corrcoef(torch.stack([preds[b, :, n], spikes[b, :, n]]))[0, 1] for n in range(3)])
            for b in range(4)
        ]
    ).mean(0)
    assert not torch.allclose(per_batch_mean, whole.compute(), atol=1e-3)


def test_masked_pearson_leaves_out_masked_entries() -> None:
    from mslightning.metrics import MaskedPearsonCorrCoef

    _, spikes, preds = _responses(1)
    mask = torch.rand(spikes.shape, generator=torch.Generator().manual_seed(2)) > 0.3
    metric = MaskedPearsonCorrCoef(3)
    metric.update(preds, spikes, mask)
    expected = [
        torch.corrcoef(torch.stack([preds[..., n][mask[..., n]], spikes[..., n][mask[..., n]]]))[0, 1] for n in range(3)
    ]
    torch.testing.assert_close(metric.compute(), torch.stack(expected), atol=1e-6, rtol=0)
    constant = MaskedPearsonCorrCoef(1)
    constant.update(torch.ones(5, 1), torch.arange(5.0).view(5, 1))
    assert math.isnan(constant.compute().item())


def test_bits_per_spike_against_the_poisson_log_likelihood() -> None:
    from torch.distributions import Poisson

    from mslightning.metrics import BitsPerSpike

    _, spikes, preds = _responses(3)
    mask = torch.ones_like(spikes, dtype=torch.bool)
    mask[:, :2] = False  # a burn-in
    metric = BitsPerSpike(3)
    for b in range(4):
        metric.update(preds[b : b + 1], spikes[b : b + 1], mask[b : b + 1])
    kept_y = spikes[mask].view(4, -1, 3).double()
    kept_rate = preds[mask].view(4, -1, 3).double()
    null_rate = kept_y.mean(dim=(0, 1)).expand_as(kept_y)
    gain = Poisson(kept_rate).log_prob(kept_y).sum() - Poisson(null_rate).log_prob(kept_y).sum()
    expected = gain / (kept_y.sum() * math.log(2))
    assert metric.compute().item() == pytest.approx(expected.item(), rel=1e-5)
    # the null model itself scores 0
    null = BitsPerSpike(3)
    null.update(null_rate.float(), kept_y.float())
    assert null.compute().item() == pytest.approx(0.0, abs=1e-6)
    per_neuron = metric.compute_per_neuron()
    assert per_neuron.shape == (3,)


def test_masked_poisson_loss_equals_torch_on_the_kept_entries() -> None:
    import torch.nn.functional as F  # noqa: N812

    from mslightning.nn import MaskedPoissonLoss

    _, spikes, preds = _responses(4)
    mask = torch.rand(spikes.shape, generator=torch.Generator().manual_seed(5)) > 0.2
    loss = MaskedPoissonLoss(burn_in=2)(preds, spikes, mask)
    keep = mask.clone()
    keep[:, :2] = False
    expected = F.poisson_nll_loss(preds[keep], spikes[keep], log_input=False, full=False, eps=1e-8)
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match=r"burn_in must be in \[0, T\) for windows of T = 6"):
        MaskedPoissonLoss(burn_in=6)(preds, spikes)
