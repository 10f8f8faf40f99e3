"""Metrics that torchmetrics does not have as such.

* :class:`SeriesKendallTau`: ranking quality per series of photos (Siamese ranking).
* :class:`MaskedPearsonCorrCoef` and :class:`BitsPerSpike`: per-neuron quality of predicted
  firing rates over a whole epoch, with a mask of the entries that count (missing neurons or
  bins, burn-in), from running sums, so the value never depends on how the epoch was batched.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional import kendall_rank_corrcoef
from torchmetrics.utilities import dim_zero_cat

__all__ = ["BitsPerSpike", "MaskedPearsonCorrCoef", "SeriesKendallTau"]


class SeriesKendallTau(Metric):
    """Mean over series of Kendall's tau-b between predicted scores and the true ranking.

    Each :meth:`update` adds observations ``(series, member, score, true_rank)``; a member seen
    several times (e.g. in several pairs) gets the mean of its scores. At :meth:`compute`, each
    series with at least two members of known rank (``true_rank >= 1``; 1 is the best) and not
    all ranks equal gives tau-b between the scores and ``-true_rank`` (torchmetrics'
    ``kendall_rank_corrcoef``, variant ``b``, which corrects for ties); the result is the mean
    over those series (a series whose scores are all equal counts 0), or NaN when there is none.
    States are concatenated, so the value is over the whole epoch and synchronised across
    processes.

    Example:
        >>> import torch
        >>> from mslightning.metrics import SeriesKendallTau
        >>> tau = SeriesKendallTau()
        >>> tau.update(series=torch.tensor([1, 1, 1]), member=torch.tensor([1, 2, 3]),
        ...            score=torch.tensor([0.9, 0.5, 0.1]), true_rank=torch.tensor([1, 2, 3]))
        >>> float(tau.compute())
        1.0
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        for name in ("series", "member", "score", "true_rank"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, series: Tensor, member: Tensor, score: Tensor, true_rank: Tensor) -> None:
        """Add observations.

        Args:
            series: Series ids, ``(N,)`` integer.
            member: Member ids within the series (e.g. photo indices), ``(N,)`` integer.
            score: Predicted scores, higher is better, ``(N,)``.
            true_rank: True rank in the series (1 = best; < 1 unknown), ``(N,)`` integer.
        """
        known = true_rank >= 1
        self.series.append(series[known].long())
        self.member.append(member[known].long())
        self.score.append(score[known].detach().double())
        self.true_rank.append(true_rank[known].long())

    def compute(self) -> Tensor:
        """Mean tau-b over the series with a defined tau (NaN if none)."""
        if not self.series:
            return torch.tensor(float("nan"), device=self.device)
        series, member = dim_zero_cat(self.series), dim_zero_cat(self.member)
        score, true_rank = dim_zero_cat(self.score), dim_zero_cat(self.true_rank)
        keys, inverse = torch.unique(torch.stack([series, member], dim=1), dim=0, return_inverse=True)
        mean_score = torch.zeros(len(keys), dtype=score.dtype, device=score.device).index_add_(0, inverse, score)
        mean_score /= torch.bincount(inverse, minlength=len(keys)).to(score.dtype)
        rank = torch.zeros(len(keys), dtype=true_rank.dtype, device=true_rank.device).scatter_(0, inverse, true_rank)
        taus = []
        for series_id in keys[:, 0].unique():
            members = keys[:, 0] == series_id
            ranks = rank[members]
            if members.sum() < 2 or bool((ranks == ranks[0]).all()):
                continue
            scores = mean_score[members]
            if bool((scores == scores[0]).all()):  # no predicted order at all: no agreement either
                taus.append(scores.new_zeros(()))
                continue
            taus.append(kendall_rank_corrcoef(scores, -ranks.to(score.dtype), variant="b"))
        if not taus:
            return torch.tensor(float("nan"), device=self.device)
        return torch.stack(taus).mean().float()


def _flat(values: Tensor, num_neurons: int, name: str) -> Tensor:
    if values.shape[-1] != num_neurons:
        raise ValueError(f"{name} must end in {num_neurons} neurons, got shape {tuple(values.shape)}.")
    return values.reshape(-1, num_neurons).double()


class MaskedPearsonCorrCoef(Metric):
    """Pearson correlation per neuron between predictions and targets over the whole epoch.

    Sums of ``x``, ``y``, ``x^2``, ``y^2``, ``xy`` and the count per neuron are accumulated in
    float64 over the kept entries, so the result equals the correlation of all kept entries of
    the epoch concatenated, whatever the batching (a peer's per-batch average does not). Equals
    torchmetrics' ``PearsonCorrCoef(num_outputs=N)`` when nothing is masked. A neuron with no
    variance (or fewer than 2 kept entries) gets NaN.

    Example:
        >>> import torch
        >>> from mslightning.metrics import MaskedPearsonCorrCoef
        >>> corr = MaskedPearsonCorrCoef(num_neurons=2)
        >>> preds = torch.tensor([[1.0, 2.0], [2.0, 1.0], [3.0, 0.0]])
        >>> corr.update(preds, torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
        >>> corr.compute().tolist()
        [1.0, -1.0]

    Args:
        num_neurons: ``N``.
        kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_neurons: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if isinstance(num_neurons, bool) or not isinstance(num_neurons, int) or num_neurons < 1:
            raise ValueError(f"num_neurons must be a positive int, got {num_neurons!r}.")
        self.num_neurons = num_neurons
        for name in ("sum_x", "sum_y", "sum_xx", "sum_yy", "sum_xy", "count"):
            self.add_state(name, default=torch.zeros(num_neurons, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Add observations.

        Args:
            preds: ``(..., N)``, e.g. ``(B, T, N)``.
            target: Same shape.
            mask: Optional boolean, same shape; False leaves an entry out.
        """
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape.")
        x, y = _flat(preds.detach(), self.num_neurons, "preds"), _flat(target.detach(), self.num_neurons, "target")
        keep = torch.ones_like(x) if mask is None else _flat(mask, self.num_neurons, "mask")
        x, y = x * keep, y * keep
        self.sum_x += x.sum(0)
        self.sum_y += y.sum(0)
        self.sum_xx += (x * x).sum(0)
        self.sum_yy += (y * y).sum(0)
        self.sum_xy += (x * y).sum(0)
        self.count += keep.sum(0)

    def compute(self) -> Tensor:
        """Per-neuron correlation, ``(N,)`` float32 (NaN where undefined)."""
        n = self.count
        cov = self.sum_xy - self.sum_x * self.sum_y / n
        var_x = self.sum_xx - self.sum_x**2 / n
        var_y = self.sum_yy - self.sum_y**2 / n
        corr = cov / torch.sqrt(var_x * var_y)
        undefined = (n < 2) | (var_x <= 0) | (var_y <= 0)
        return torch.where(undefined, torch.full_like(corr, float("nan")), corr).float()


class BitsPerSpike(Metric):
    """Information gain of predicted rates over a mean-rate null model, in bits per spike.

    ``(LL_model - LL_null) / (S ln 2)``, with the Poisson log-likelihood
    ``LL = sum (y log λ - λ - log y!)`` over the kept entries, the null model's rate per neuron
    its mean observed count over the same entries (``log y!`` cancels), and ``S`` the number of
    spikes (Pei et al., Neural Latents Benchmark, 2021). Pooled over neurons; per neuron with
    ``compute_per_neuron``. Running sums per neuron, so it does not depend on the batching. 0
    means no better than each neuron's mean rate; negative is worse.

    Example:
        >>> import torch
        >>> from mslightning.metrics import BitsPerSpike
        >>> bps = BitsPerSpike(num_neurons=1)
        >>> bps.update(torch.tensor([[0.5], [2.0]]), torch.tensor([[0.0], [2.0]]))
        >>> round(float(bps.compute()), 4)  # (2 log 2 - 2.5 - (-2)) / (2 ln 2)
        0.6393

    Args:
        num_neurons: ``N``.
        eps: Added to ``λ`` inside the log.
        kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_neurons: int, eps: float = 1e-8, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if isinstance(num_neurons, bool) or not isinstance(num_neurons, int) or num_neurons < 1:
            raise ValueError(f"num_neurons must be a positive int, got {num_neurons!r}.")
        self.num_neurons = num_neurons
        self.eps = eps
        for name in ("model_ll", "spikes", "count"):
            self.add_state(name, default=torch.zeros(num_neurons, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, rates: Tensor, responses: Tensor, mask: Tensor | None = None) -> None:
        """Add observations.

        Args:
            rates: Predicted rates ``(..., N)``, > 0.
            responses: Spike counts, same shape.
            mask: Optional boolean, same shape.
        """
        if rates.shape != responses.shape:
            raise ValueError(f"rates {tuple(rates.shape)} and responses {tuple(responses.shape)} differ in shape.")
        rate, y = (
            _flat(rates.detach(), self.num_neurons, "rates"),
            _flat(responses.detach(), self.num_neurons, "responses"),
        )
        keep = torch.ones_like(rate) if mask is None else _flat(mask, self.num_neurons, "mask")
        self.model_ll += (keep * (y * torch.log(rate + self.eps) - rate)).sum(0)
        self.spikes += (keep * y).sum(0)
        self.count += keep.sum(0)

    def _gain(self) -> Tensor:
        """Per-neuron ``LL_model - LL_null`` (natural log)."""
        mean = self.spikes / self.count.clamp(min=1)
        null_ll = torch.where(self.spikes > 0, self.spikes * torch.log(mean.clamp(min=self.eps)), 0.0) - self.spikes
        return self.model_ll - null_ll

    def compute(self) -> Tensor:
        """Bits per spike pooled over neurons (NaN if no spike was seen), 0-dim float32.

        Also sets :attr:`total_spikes`, the (synchronised) spike count behind the value, to pool
        several sessions' values weighted by their spikes.
        """
        spikes = self.spikes.sum()
        self.total_spikes = spikes.clone()
        if spikes <= 0:
            return torch.tensor(float("nan"), device=self.device)
        return (self._gain().sum() / (spikes * math.log(2))).float()

    def compute_per_neuron(self) -> Tensor:
        """Bits per spike per neuron, ``(N,)`` float32 (NaN for a neuron without spikes)."""
        per_neuron = self._gain() / (self.spikes * math.log(2))
        return torch.where(self.spikes > 0, per_neuron, float("nan")).float()
