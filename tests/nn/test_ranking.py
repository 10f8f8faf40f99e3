"""Pairwise heads and losses: antisymmetry, symmetrisation, and losses against hand computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from mslightning.nn.ranking import (
    DifferenceHead,
    PairCrossEntropyLoss,
    PairMarginLoss,
    RankNetLoss,
    ScoreHead,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("hidden", [None, 16])
def test_score_head_is_exactly_antisymmetric(hidden: int | None) -> None:
    head = ScoreHead(32, hidden=hidden).eval()
    fa, fb = torch.randn(7, 32), torch.randn(7, 32)
    assert torch.equal(head(fa, fb), -head(fb, fa))
    # probabilities: sigmoid(l) + sigmoid(-l) is 1 up to one rounding
    torch.testing.assert_close(head.preference(fa, fb) + head.preference(fb, fa), torch.ones(7), atol=2.5e-7, rtol=0)
    assert torch.equal(head(fa, fa), torch.zeros(7))


def test_score_head_logit_is_score_difference_and_ranks_series() -> None:
    head = ScoreHead(8, hidden=None).eval()
    with torch.no_grad():
        head.mlp[1].weight.copy_(torch.arange(8.0).view(1, 8))
        head.mlp[1].bias.fill_(3.0)
    features = torch.eye(8)[[5, 1, 7]]  # scores 5+3, 1+3, 7+3
    assert head.series_scores(features).tolist() == [8.0, 4.0, 10.0]
    assert head(features[:1], features[1:2]).item() == 4.0


def test_difference_head_is_not_antisymmetric_but_its_preference_is() -> None:
    head = DifferenceHead(16, hidden=8).eval()
    fa, fb = torch.randn(5, 16), torch.randn(5, 16)
    raw_ab, raw_ba = torch.sigmoid(head(fa, fb)), torch.sigmoid(head(fb, fa))
    assert not torch.allclose(raw_ab + raw_ba, torch.ones(5))  # biases see the sign of f(a) - f(b)
    p_ab, p_ba = head.preference(fa, fb), head.preference(fb, fa)
    torch.testing.assert_close(p_ab + p_ba, torch.ones(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(p_ab, 0.5 * (raw_ab + 1 - raw_ba))


def test_difference_head_logit_is_the_two_class_margin_on_the_feature_difference() -> None:
    head = DifferenceHead(4, hidden=None).eval()
    fa, fb = torch.randn(3, 4), torch.randn(3, 4)
    linear = head.mlp[1]
    z = F.linear(fa - fb, linear.weight, linear.bias)
    torch.testing.assert_close(head(fa, fb), z[:, 0] - z[:, 1])
    # cross-entropy with class 0 = "a wins" equals the binary loss on that margin
    label = torch.tensor([0, 1, 0])
    ce = F.cross_entropy(head.logits(fa, fb), label)
    ratio = torch.tensor([0.9, 0.2, 0.6])
    torch.testing.assert_close(PairCrossEntropyLoss()(head(fa, fb), ratio), ce)


def test_difference_head_series_scores_are_borda_counts() -> None:
    head = DifferenceHead(4, hidden=8).eval()
    features = torch.randn(3, 4)
    scores = head.series_scores(features)
    p = lambda i, j: head.preference(features[i : i + 1], features[j : j + 1]).item()  # noqa: E731
    expected = [(p(0, 1) + p(0, 2)) / 2, (p(1, 0) + p(1, 2)) / 2, (p(2, 0) + p(2, 1)) / 2]
    torch.testing.assert_close(scores, torch.tensor(expected), atol=1e-6, rtol=0)
    assert head.series_scores(features[:1]).tolist() == [0.5]


def _bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_losses_against_hand_computation() -> None:
    logit = torch.tensor([2.0, -1.0, 0.5, 0.3])
    ratio = torch.tensor([0.8, 0.3, 0.5, 0.4])  # a wins, b wins, tie, b wins
    hard = (_bce(2.0, 1) + _bce(-1.0, 0) + _bce(0.3, 0)) / 3  # the tie is left out
    assert PairCrossEntropyLoss()(logit, ratio).item() == pytest.approx(hard, rel=1e-6)
    soft = (_bce(2.0, 0.8) + _bce(-1.0, 0.3) + _bce(0.5, 0.5) + _bce(0.3, 0.4)) / 4
    assert RankNetLoss()(logit, ratio).item() == pytest.approx(soft, rel=1e-6)
    # y = +1, -1, (tie left out), -1: max(0, 1 - y * l)
    margin = (max(0, 1 - 2.0) + max(0, 1 - 1.0) + max(0, 1 + 0.3)) / 3
    assert PairMarginLoss(1.0)(logit, ratio).item() == pytest.approx(margin, rel=1e-6)
    torch_margin = nn.MarginRankingLoss(margin=0.5)(logit[[0, 1, 3]], torch.zeros(3), torch.tensor([1.0, -1, -1]))
    torch.testing.assert_close(PairMarginLoss(0.5)(logit, ratio), torch_margin)


def test_all_tie_batch_gives_a_zero_loss_with_a_gradient_path() -> None:
    logit = torch.tensor([0.7, -0.2], requires_grad=True)
    ratio = torch.full((2,), 0.5)
    for loss in (PairCrossEntropyLoss(), PairMarginLoss()):
        value = loss(logit, ratio)
        assert value.item() == 0.0
        value.backward()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ScoreHead(0), "in_features must be a positive int"),
        (lambda: ScoreHead(8, hidden=0), "hidden must be a positive int or None"),
        (lambda: DifferenceHead(8, dropout=1.0), "dropout must be in [0, 1)"),
        (lambda: PairMarginLoss(-1.0), "margin must be a finite number >= 0"),
    ],
)
def test_bad_arguments(build, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        build()


def test_wrong_feature_shape_is_named() -> None:
    with pytest.raises(ValueError, match=r"ScoreHead expects two feature batches of shape \(B, 8\)"):
        ScoreHead(8)(torch.zeros(2, 8), torch.zeros(3, 8))
