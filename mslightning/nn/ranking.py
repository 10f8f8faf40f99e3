"""Pairwise-preference heads and losses for Siamese ranking ("which of two photos is better").

A :class:`PairHead` turns the trunk features of two inputs ``a`` and ``b`` into one
*preference logit* ``l(a, b)`` with ``p(a > b) = sigmoid(l(a, b))``. Every loss here takes that
logit and the preference ratio ``r`` (the fraction of annotators who preferred ``a``), so heads
and losses combine freely:

* :class:`DifferenceHead` — the reference architecture of Photo Triage (Chang et al., SIGGRAPH
  2016): an MLP on ``f(a) - f(b)`` with two logits (class 0: ``a`` wins), so
  ``l = z_0 - z_1``. It is not antisymmetric by itself (``l(b, a) != -l(a, b)`` in general):
  train it with random order swaps, and read ``p(a > b)`` symmetrised,
  ``(p(a, b) + 1 - p(b, a)) / 2`` (:meth:`PairHead.preference`).
* :class:`ScoreHead` — a scalar score ``s`` per input and ``l = s(a) - s(b)`` (RankNet, Burges
  et al., ICML 2005): antisymmetric by construction, and it ranks a whole series by score.

Cross-entropy on two logits with a hard label equals binary cross-entropy on ``l = z_0 - z_1``,
so :class:`PairCrossEntropyLoss` is the reference loss for both heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

__all__ = [
    "DifferenceHead",
    "PairCrossEntropyLoss",
    "PairHead",
    "PairLoss",
    "PairMarginLoss",
    "RankNetLoss",
    "ScoreHead",
]


def _mlp(in_features: int, hidden: int | None, out_features: int, dropout: float, owner: str) -> nn.Sequential:
    """``Linear`` (``hidden=None``) or ``Linear -> ReLU -> Dropout -> Linear``."""
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
        raise ValueError(f"{owner}: in_features must be a positive int, got {in_features!r}.")
    if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1):
        raise ValueError(f"{owner}: hidden must be a positive int or None, got {hidden!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{owner}: dropout must be in [0, 1), got {dropout!r}.")
    if hidden is None:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, out_features))
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, out_features)
    )


def _check_pair(features_a: Tensor, features_b: Tensor, in_features: int, owner: str) -> None:
    if features_a.shape != features_b.shape or features_a.ndim != 2 or features_a.shape[1] != in_features:
        raise ValueError(
            f"{owner} expects two feature batches of shape (B, {in_features}), got {tuple(features_a.shape)} "
            f"and {tuple(features_b.shape)}."
        )


class PairHead(nn.Module):
    """Base class of pairwise-preference heads.

    Subclasses implement :meth:`forward` (the preference logit) and :meth:`series_scores`, and
    set :attr:`antisymmetric`.

    Attributes:
        in_features: Width ``F`` of the trunk features.
        antisymmetric: Whether ``l(b, a) == -l(a, b)`` holds exactly, by construction.
    """

    antisymmetric: bool = False

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = in_features

    def forward(self, features_a: Tensor, features_b: Tensor) -> Tensor:
        """The preference logit ``l(a, b)``: ``p(a > b) = sigmoid(l)``.

        Args:
            features_a: Features of the first inputs, ``(B, F)``.
            features_b: Features of the second inputs, ``(B, F)``.

        Returns:
            Logits ``(B,)``.
        """
        raise NotImplementedError

    def preference(self, features_a: Tensor, features_b: Tensor) -> Tensor:
        """``p(a > b)``, symmetrised when the head is not antisymmetric.

        ``(sigmoid(l(a, b)) + 1 - sigmoid(l(b, a))) / 2``, so that swapping the inputs gives
        exactly ``1 - p``; for an antisymmetric head this is ``sigmoid(l(a, b))``.

        Args:
            features_a: ``(B, F)``.
            features_b: ``(B, F)``.

        Returns:
            Probabilities ``(B,)``.
        """
        forward = self(features_a, features_b)
        if self.antisymmetric:
            return torch.sigmoid(forward)
        return 0.5 * (torch.sigmoid(forward) + torch.sigmoid(-self(features_b, features_a)))

    def series_scores(self, features: Tensor) -> Tensor:
        """One score per member of a series; a higher score means a better member.

        Args:
            features: Features of the series' ``N`` members, ``(N, F)``.

        Returns:
            Scores ``(N,)``.
        """
        raise NotImplementedError


class ScoreHead(PairHead):
    """A scalar score per input; ``l(a, b) = s(a) - s(b)``, antisymmetric by construction.

    Example:
        >>> import torch
        >>> from mslightning.nn import ScoreHead
        >>> head = ScoreHead(512, hidden=64)
        >>> fa, fb = torch.randn(4, 512), torch.randn(4, 512)
        >>> torch.equal(head(fa, fb), -head(fb, fa))
        True

    Args:
        in_features: Width ``F`` of the trunk features.
        hidden: Width of the hidden layer, or ``None`` for a single linear layer.
        dropout: Dropout probability in ``[0, 1)`` (before the last layer).

    Raises:
        ValueError: For a non-positive ``in_features``/``hidden`` or ``dropout`` outside ``[0, 1)``.
    """

    antisymmetric = True

    def __init__(self, in_features: int, hidden: int | None = 256, dropout: float = 0.0) -> None:
        super().__init__(in_features)
        self.mlp = _mlp(in_features, hidden, 1, dropout, type(self).__name__)

    def score(self, features: Tensor) -> Tensor:
        """The score of each input.

        Args:
            features: ``(B, F)``.

        Returns:
            Scores ``(B,)``.
        """
        return self.mlp(features).squeeze(1)

    def forward(self, features_a: Tensor, features_b: Tensor) -> Tensor:
        """``s(a) - s(b)``: see :meth:`PairHead.forward`."""
        _check_pair(features_a, features_b, self.in_features, type(self).__name__)
        # two calls, not one on the concatenation: a row's result then does not depend on its
        # position in the batch, so l(b, a) == -l(a, b) holds bit for bit
        return self.score(features_a) - self.score(features_b)

    def series_scores(self, features: Tensor) -> Tensor:
        """The scores themselves: see :meth:`PairHead.series_scores`."""
        return self.score(features)


class DifferenceHead(PairHead):
    """The Photo Triage head: an MLP on ``f(a) - f(b)`` with two logits (class 0: ``a`` wins).

    ``l(a, b) = z_0 - z_1``. The head is not antisymmetric (its biases and ReLU see the sign of
    the difference), so read its preferences with :meth:`~PairHead.preference` and train it with
    random order swaps. :meth:`series_scores` of a member is its mean symmetrised probability of
    beating each other member (a Borda count).

    Example:
        >>> import torch
        >>> from mslightning.nn import DifferenceHead
        >>> head = DifferenceHead(512, hidden=64)
        >>> fa, fb = torch.randn(4, 512), torch.randn(4, 512)
        >>> p_ab, p_ba = head.preference(fa, fb), head.preference(fb, fa)
        >>> torch.allclose(p_ab + p_ba, torch.ones(4))
        True

    Args:
        in_features: Width ``F`` of the trunk features.
        hidden: Width of the hidden layer, or ``None`` for a single linear layer.
        dropout: Dropout probability in ``[0, 1)``.

    Raises:
        ValueError: For a non-positive ``in_features``/``hidden`` or ``dropout`` outside ``[0, 1)``.
    """

    antisymmetric = False

    def __init__(self, in_features: int, hidden: int | None = 256, dropout: float = 0.0) -> None:
        super().__init__(in_features)
        self.mlp = _mlp(in_features, hidden, 2, dropout, type(self).__name__)

    def logits(self, features_a: Tensor, features_b: Tensor) -> Tensor:
        """The two class logits (class 0: ``a`` wins, class 1: ``b`` wins).

        Args:
            features_a: ``(B, F)``.
            features_b: ``(B, F)``.

        Returns:
            Logits ``(B, 2)``.
        """
        _check_pair(features_a, features_b, self.in_features, type(self).__name__)
        return self.mlp(features_a - features_b)

    def forward(self, features_a: Tensor, features_b: Tensor) -> Tensor:
        """``z_0 - z_1``: see :meth:`PairHead.forward`."""
        logits = self.logits(features_a, features_b)
        return logits[:, 0] - logits[:, 1]

    def series_scores(self, features: Tensor) -> Tensor:
        """Mean symmetrised probability of beating each other member (0.5 for a single member)."""
        count = features.shape[0]
        if count < 2:
            return features.new_full((count,), 0.5)
        index = torch.arange(count, device=features.device)
        first, second = torch.meshgrid(index, index, indexing="ij")
        off_diagonal = first != second
        first, second = first[off_diagonal], second[off_diagonal]
        wins = self.preference(features[first], features[second])
        return wins.view(count, count - 1).mean(dim=1)


class PairLoss(nn.Module):
    """Base class of losses on a preference logit ``(B,)`` and a preference ratio ``(B,)``."""

    def forward(self, logit: Tensor, ratio: Tensor) -> Tensor:
        """The mean loss over the batch.

        Args:
            logit: Preference logits ``l(a, b)``, ``(B,)``.
            ratio: Fraction of annotators preferring ``a``, in ``[0, 1]``, ``(B,)``.

        Returns:
            A 0-dim tensor.
        """
        raise NotImplementedError


def _decided(logit: Tensor, ratio: Tensor) -> tuple[Tensor, Tensor]:
    """The logits and ``a wins`` labels of the pairs that are not ties (ratio != 0.5)."""
    decided = ratio != 0.5
    return logit[decided], (ratio[decided] > 0.5).to(logit.dtype)


class PairCrossEntropyLoss(PairLoss):
    """Cross-entropy on the hard label ``a wins iff ratio > 0.5``; ties (0.5) are left out.

    Equal to ``F.cross_entropy`` on the two logits ``(z_0, z_1)`` of :class:`DifferenceHead`
    with label 0 when ``a`` wins. A batch of ties only gives a zero loss (still connected to the
    graph).
    """

    def forward(self, logit: Tensor, ratio: Tensor) -> Tensor:
        """See :meth:`PairLoss.forward`."""
        logit, label = _decided(logit, ratio)
        if logit.numel() == 0:
            return logit.sum()
        return F.binary_cross_entropy_with_logits(logit, label)


class RankNetLoss(PairLoss):
    """RankNet: binary cross-entropy of ``sigmoid(l)`` against the preference ratio itself.

    Soft targets: a 7-to-3 vote asks for ``p = 0.7``, not certainty, and ties count (target 0.5).
    Burges et al., "Learning to rank using gradient descent", ICML 2005.
    """

    def forward(self, logit: Tensor, ratio: Tensor) -> Tensor:
        """See :meth:`PairLoss.forward`."""
        return F.binary_cross_entropy_with_logits(logit, ratio.to(logit.dtype))


class PairMarginLoss(PairLoss):
    """Margin ranking loss ``max(0, margin - y * l)`` with ``y = +1`` if ``a`` wins, ``-1`` if ``b`` wins.

    ``torch.nn.MarginRankingLoss`` with ``x1 - x2 = l``; ties (0.5) are left out.

    Args:
        margin: The margin, >= 0.

    Raises:
        ValueError: For a negative or non-finite margin.
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        if not (isinstance(margin, int | float) and 0 <= margin < float("inf")):
            raise ValueError(f"PairMarginLoss: margin must be a finite number >= 0, got {margin!r}.")
        self.margin = float(margin)

    def forward(self, logit: Tensor, ratio: Tensor) -> Tensor:
        """See :meth:`PairLoss.forward`."""
        logit, label = _decided(logit, ratio)
        if logit.numel() == 0:
            return logit.sum()
        return torch.clamp(self.margin - (2 * label - 1) * logit, min=0).mean()
