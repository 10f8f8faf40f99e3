"""Metrics that torchmetrics does not have as such: ranking quality per series of photos."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional import kendall_rank_corrcoef
from torchmetrics.utilities import dim_zero_cat

__all__ = ["SeriesKendallTau"]


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
