"""Stream contribution by ablation: a score per subset of kept streams, Shapley values, utilisation.

A stream is *ablated* by replacing it with its mean over a reference (training) set: the
classifier replaces a stream's pooled features, :class:`~mslightning.modules.ModulatedResponseModel`
an input (the frames, or the behaviour). Not zeros: zero features are far out of the distribution the fusion and
head were trained on (BatchNorm-normalised ReLU features are positive with a non-zero mean),
so a zero-ablation measures the damage of an impossible input rather than the loss of the
stream's information.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["PathwayReport", "pathway_report", "shapley_values"]

Coalition = frozenset[str]


def shapley_values(streams: Sequence[str], value: Mapping[Coalition, float]) -> dict[str, float]:
    """Exact Shapley values of a cooperative game over the streams.

    phi_m = sum over S subset of N without m of |S|! (n-|S|-1)! / n! * (v(S + m) - v(S)).
    The values sum to v(N) - v(empty set) (efficiency).

    Args:
        streams: The players, e.g. ``["rgb", "depth"]``.
        value: v(S) for every subset S of ``streams`` (as frozensets).

    Returns:
        Stream name -> Shapley value.

    Raises:
        ValueError: If a subset's value is missing.
    """
    n = len(streams)
    missing = [
        sorted(s) for k in range(n + 1) for s in map(frozenset, itertools.combinations(streams, k)) if s not in value
    ]
    if missing:
        raise ValueError(f"shapley_values needs v(S) for every subset of {list(streams)}; missing {missing}.")
    phi = {}
    for stream in streams:
        others = [m for m in streams if m != stream]
        total = 0.0
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                coalition = frozenset(subset)
                total += weight * (value[coalition | {stream}] - value[coalition])
        phi[stream] = total
    return phi


@dataclass
class PathwayReport:
    """A score with stream subsets ablated, Shapley values and utilisation rates.

    The score is the module's: accuracy for the classifier, the response correlation for
    :class:`~mslightning.modules.ModulatedResponseModel`; :attr:`metric` names it.

    Attributes:
        score_all: The score with every stream.
        score_none: The score with every stream replaced by its reference mean.
        score_alone: Stream -> the score when only that stream is kept.
        shapley: Stream -> Shapley value of the score (they sum to all - none).
        utilization: ``"m|n"`` -> conditional utilisation rate
            u(m|n) = (S(m,n) - S(n)) / S(m,n) (Wu et al., ICML 2022): the share of the
            two-stream score that stream m adds on top of stream n (0 where S(m,n) <= 0).
        subsets: ``"rgb+depth"`` -> score, for every subset (``"none"`` for the empty one).
        metric: The score's name, e.g. ``"accuracy"`` or ``"corr"``.
        extra: Further figures of the same analysis, e.g. ``{"bits_per_spike_all": 0.2}``.
    """

    score_all: float
    score_none: float
    score_alone: dict[str, float]
    shapley: dict[str, float]
    utilization: dict[str, float]
    subsets: dict[str, float]
    metric: str = "accuracy"
    extra: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_scores(
        cls,
        streams: Sequence[str],
        scores: Mapping[Coalition, float],
        metric: str = "accuracy",
        extra: Mapping[str, float] | None = None,
    ) -> PathwayReport:
        """The report of a score measured on every subset of kept streams.

        Args:
            streams: Stream names in model order.
            scores: The score for every subset of ``streams`` kept (frozensets; the empty one
                is everything ablated).
            metric: The score's name.
            extra: Further figures to carry along.

        Returns:
            The report.

        Raises:
            ValueError: If a subset's score is missing.
        """
        shapley = shapley_values(streams, scores)
        utilization = {}
        for m, n in itertools.permutations(streams, 2):
            both = scores[frozenset((m, n))]
            utilization[f"{m}|{n}"] = (both - scores[frozenset((n,))]) / both if both > 0 else 0.0
        return cls(
            score_all=scores[frozenset(streams)],
            score_none=scores[frozenset()],
            score_alone={m: scores[frozenset((m,))] for m in streams},
            shapley=shapley,
            utilization=utilization,
            subsets={_subset_name(m for m in streams if m in s): v for s, v in scores.items()},
            metric=metric,
            extra=dict(extra or {}),
        )

    def to_dict(self) -> dict[str, float]:
        """Flat ``str -> float`` view for logging, e.g. ``{"shapley/rgb": 0.41, ...}``."""
        m = self.metric
        flat = {f"{m}/all": self.score_all, f"{m}/none": self.score_none}
        flat.update({f"{m}/alone/{s}": v for s, v in self.score_alone.items()})
        flat.update({f"shapley/{s}": v for s, v in self.shapley.items()})
        flat.update({f"utilization/{pair}": v for pair, v in self.utilization.items()})
        flat.update(self.extra)
        return flat


def _subset_name(subset: Iterable[str]) -> str:
    return "+".join(subset) or "none"


@torch.no_grad()
def pathway_report(
    streams: Sequence[str],
    features: Mapping[str, Tensor],
    target: Tensor,
    reference_mean: Mapping[str, Tensor],
    classify: Callable[[dict[str, Tensor]], Tensor],
) -> PathwayReport:
    """Evaluate every subset of kept streams, the others ablated to their reference mean.

    Args:
        streams: Stream names in model order.
        features: Stream -> pooled features of the evaluation set, (N, F_m).
        target: Labels of the evaluation set, (N,).
        reference_mean: Stream -> mean pooled feature over the reference set, (F_m,).
        classify: Maps a features dict (stream -> (N, F_m)) to logits (N, K).

    Returns:
        The report.
    """
    accuracy: dict[Coalition, float] = {}
    for size in range(len(streams) + 1):
        for kept in itertools.combinations(streams, size):
            ablated = {m: features[m] if m in kept else reference_mean[m].expand_as(features[m]) for m in streams}
            logits = classify(ablated)
            accuracy[frozenset(kept)] = (logits.argmax(dim=1) == target).float().mean().item()
    return PathwayReport.from_scores(streams, accuracy, metric="accuracy")
