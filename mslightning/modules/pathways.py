"""Stream contribution by ablation: accuracies per stream subset, Shapley values, utilisation.

A stream is *ablated* by replacing its pooled features with their mean over a reference
(training) set, not with zeros: zero features are far out of the distribution the fusion and
head were trained on (BatchNorm-normalised ReLU features are positive with a non-zero mean),
so a zero-ablation measures the damage of an impossible input rather than the loss of the
stream's information.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

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
    """Accuracies with stream subsets ablated, Shapley values and utilisation rates.

    Attributes:
        accuracy_all: Accuracy with every stream.
        accuracy_none: Accuracy with every stream replaced by its reference mean.
        accuracy_alone: Stream -> accuracy when only that stream is kept.
        shapley: Stream -> Shapley value of accuracy (they sum to all - none).
        utilization: ``"m|n"`` -> conditional utilisation rate
            u(m|n) = (A(m,n) - A(n)) / A(m,n) (Wu et al., ICML 2022): the share of the
            two-stream accuracy that stream m adds on top of stream n.
        subsets: ``"rgb+depth"`` -> accuracy, for every subset (``"none"`` for the empty one).
    """

    accuracy_all: float
    accuracy_none: float
    accuracy_alone: dict[str, float]
    shapley: dict[str, float]
    utilization: dict[str, float]
    subsets: dict[str, float]

    def to_dict(self) -> dict[str, float]:
        """Flat ``str -> float`` view for logging, e.g. ``{"shapley/rgb": 0.41, ...}``."""
        flat = {"accuracy/all": self.accuracy_all, "accuracy/none": self.accuracy_none}
        flat.update({f"accuracy/alone/{m}": v for m, v in self.accuracy_alone.items()})
        flat.update({f"shapley/{m}": v for m, v in self.shapley.items()})
        flat.update({f"utilization/{pair}": v for pair, v in self.utilization.items()})
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
    everything = frozenset(streams)
    utilization = {}
    for m, n in itertools.permutations(streams, 2):
        both = accuracy[frozenset((m, n))]
        utilization[f"{m}|{n}"] = (both - accuracy[frozenset((n,))]) / both if both > 0 else 0.0
    return PathwayReport(
        accuracy_all=accuracy[everything],
        accuracy_none=accuracy[frozenset()],
        accuracy_alone={m: accuracy[frozenset((m,))] for m in streams},
        shapley=shapley_values(streams, accuracy),
        utilization=utilization,
        subsets={_subset_name(m for m in streams if m in s): a for s, a in accuracy.items()},
    )
