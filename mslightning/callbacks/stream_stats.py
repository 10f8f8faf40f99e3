"""The maths behind :class:`~mslightning.callbacks.StreamMonitor`, free of Lightning.

Two kinds of functions live here:

* device-side reductions over one stream's parameters (:func:`grad_stats`, :func:`weight_stats`,
  :func:`update_norm`) built on foreach kernels: they return 0-dim tensors on the parameters'
  device and never synchronise with the host, so the caller can stack everything it needs for
  one logging step and transfer it once;
* host-side formulas on plain floats for the epoch-level indicators (:func:`overfitting_score`,
  :func:`overfitting_to_generalization_ratio`, :func:`discrepancy_ratios`,
  :func:`conditional_learning_speed`, :func:`safe_ratio`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "conditional_learning_speed",
    "count_nonfinite",
    "discrepancy_ratios",
    "foreach_norms",
    "grad_stats",
    "overfitting_score",
    "overfitting_to_generalization_ratio",
    "safe_ratio",
    "total_norm",
    "update_norm",
    "weight_stats",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Norm kernels accumulate in the input precision: over the ~2.4M elements of a ResNet18 layer4
# conv, a float32 norm is off by ~3e-5 (relative) on CPU. Reducing chunks of at most this many
# elements and combining the partial norms in float64 brings that to ~1e-7 at the same speed.
_CHUNK = 1 << 15


def _dense(tensor: Tensor) -> Tensor:
    """The stored values of a (possibly sparse) tensor."""
    return tensor.coalesce().values() if tensor.is_sparse else tensor


def foreach_norms(tensors: Sequence[Tensor]) -> Tensor:
    """The L2 norm of every tensor, computed with foreach kernels.

    Low-precision tensors (fp16/bf16) are reduced in float32.

    Args:
        tensors: Tensors of any shapes, on one device.

    Returns:
        A float32 vector (len(tensors),) of per-tensor L2 norms, in input order.
    """
    if not tensors:
        raise ValueError("foreach_norms needs at least one tensor, got an empty sequence.")
    by_dtype: dict[torch.dtype, list[int]] = {}
    for index, tensor in enumerate(tensors):
        by_dtype.setdefault(tensor.dtype, []).append(index)
    if len(by_dtype) == 1 and tensors[0].dtype not in _LOW_PRECISION:
        return torch.stack(torch._foreach_norm(list(tensors))).float()
    norms: list[Tensor | None] = [None] * len(tensors)
    for dtype, indices in by_dtype.items():
        group = [tensors[i] for i in indices]
        if dtype in _LOW_PRECISION:
            results = torch._foreach_norm(group, 2, dtype=torch.float32)
        else:
            results = torch._foreach_norm(group)
        for i, result in zip(indices, results, strict=True):
            norms[i] = result.float()
    return torch.stack(norms)  # type: ignore[arg-type]


def _large_tensor_norms(flat: Tensor) -> Tensor:
    """Partial norms of a flat tensor: one per whole ``_CHUNK``-element row, one for the rest.

    Reduced in the tensor's precision, at least float32; returned as a float32 vector.
    """
    whole = flat.numel() - flat.numel() % _CHUNK
    dtype = torch.float32 if flat.dtype in _LOW_PRECISION else None
    norms = [torch.linalg.vector_norm(flat[:whole].view(-1, _CHUNK), dim=1, dtype=dtype)]
    if whole < flat.numel():
        norms.append(torch.linalg.vector_norm(flat[whole:], dtype=dtype).reshape(1))
    return torch.cat(norms).float()


def _combine(parts: list[Tensor], device: torch.device | None) -> Tensor:
    """``sqrt(sum of squares)`` of partial norms, accumulated in float64 (float32 on MPS)."""
    if not parts:
        return torch.zeros((), dtype=torch.float32, device=device)
    norms = torch.cat(parts)
    accumulate = torch.float32 if norms.device.type == "mps" else torch.float64
    return norms.to(accumulate).square().sum().sqrt().float()


def _norms_and(
    tensors: Sequence[Tensor],
    reduce: Callable[[Tensor], Tensor] | None = None,
    copies: Sequence[Tensor | None] | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Partial L2 norms of ``tensors`` and, per tensor, ``reduce(tensor)``, in as few memory passes as possible.

    Each large tensor is optionally copied (``copies[i].copy_(tensors[i])``), then normed, then
    reduced, one right after the other, so the second and third reads come from the cache
    instead of memory (the norm and the reduction are read from the fresh copy: same values).
    Small tensors are copied, normed and reduced with foreach kernels.
    """
    copies = copies if copies is not None else [None] * len(tensors)
    parts: list[Tensor] = []
    reduced: list[Tensor] = []
    small: list[Tensor] = []
    small_sources: list[Tensor] = []
    small_copies: list[Tensor] = []
    for tensor, copy in zip(tensors, copies, strict=True):
        if tensor.numel() > _CHUNK:
            if copy is not None:
                tensor = copy.copy_(tensor)
            flat = tensor.reshape(-1)
            parts.append(_large_tensor_norms(flat))
            if reduce is not None:
                reduced.append(reduce(flat))
        elif tensor.numel():
            if copy is not None:
                small_sources.append(tensor)
                small_copies.append(copy)
                tensor = copy
            small.append(tensor)
    if small_copies:
        torch._foreach_copy_(small_copies, small_sources)
    if small:
        parts.append(foreach_norms(small))
        if reduce is not None:
            reduced.extend(reduce(t) for t in small)
    return parts, reduced


def total_norm(tensors: Sequence[Tensor]) -> Tensor:
    """The L2 norm of all tensors viewed as one vector, ``sqrt(sum_i ||t_i||^2)``.

    Tensors larger than 32768 elements are reduced as rows of 32768 elements (one kernel per
    tensor, one more for a remainder), small tensors with one foreach kernel; the partial norms are
    combined in float64 (float32 on MPS). That keeps the result within ~1e-7 (relative) of an
    exact computation for ResNet-sized parameters, at about the cost of a plain float32 norm.

    Args:
        tensors: Tensors on one device; may be empty.

    Returns:
        A float32 0-dim tensor (0 for no tensors), on the tensors' device (CPU if empty).
    """
    parts, _ = _norms_and(tensors)
    return _combine(parts, tensors[0].device if tensors else None)


def _aminmax(tensor: Tensor) -> Tensor:
    """``[min, max]`` of a tensor in one read (``abs()`` would allocate; the inf-norm kernel is slow on CPU)."""
    return torch.stack(torch.aminmax(tensor))


def grad_stats(grads: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Total L2 norm and largest absolute value of a stream's gradients.

    The total norm is the norm of all gradients concatenated into one vector,
    ``sqrt(sum_i ||g_i||^2)``; the largest absolute value is ``max(max g, -min g)``, read from
    each tensor right after its norm (from the cache). Both results are NaN/Inf when any element
    is, which is how the caller detects non-finite gradients without counting them on every step.

    Args:
        grads: The stream's gradient tensors (dense or sparse), on one device. May be empty
            (a frozen stream): both results are then 0.

    Returns:
        ``(norm, abs_max)``, two float32 0-dim tensors on the gradients' device (CPU if empty).
    """
    dense = [g for g in (_dense(g) for g in grads) if g.numel() > 0]
    if not dense:
        zero = torch.zeros((), dtype=torch.float32, device=grads[0].device if grads else None)
        return zero, zero.clone()
    parts, extremes = _norms_and(dense, _aminmax)
    lows, highs = torch.stack(extremes).unbind(1)
    return _combine(parts, dense[0].device), torch.maximum(highs.max(), lows.min().neg()).float()


def weight_stats(weights: Sequence[Tensor], copies: Sequence[Tensor | None] | None = None) -> tuple[Tensor, Tensor]:
    """Total L2 norm and the sum of all elements of a stream's weights, optionally copying them.

    Copying for the update ratio and reading the statistics share one pass over memory: each
    tensor is copied, then normed and summed from the fresh copy while it is in the cache.

    Args:
        weights: The stream's parameter tensors (at least one), on one device.
        copies: Per weight, a tensor of the same shape to copy it into (None: not copied), or
            None for no copies.

    Returns:
        ``(norm, total)``: float32 0-dim tensors; the mean weight is ``total / numel``.
    """
    parts, sums = _norms_and(weights, lambda t: t.sum(dtype=torch.float32), copies)
    total = torch.stack(sums).sum() if sums else torch.zeros((), dtype=torch.float32, device=weights[0].device)
    return _combine(parts, weights[0].device), total


@torch.no_grad()
def update_norm(before: Sequence[Tensor], after: Sequence[Tensor]) -> Tensor:
    """``||after - before||`` over all tensors, overwriting ``before`` with the difference.

    ``before`` is a scratch copy taken before the optimizer step; reusing it as the output of
    the in-place subtraction avoids allocating a third copy of the parameters. Each large
    difference is reduced right after it is written, while it is still in cache.

    Args:
        before: Snapshots of the parameters (modified in place).
        after: The parameters after the step, same shapes as ``before``.

    Returns:
        The total L2 norm of the step, a float32 0-dim tensor.
    """
    if not before:
        return torch.zeros((), dtype=torch.float32)
    small_before: list[Tensor] = []
    small_after: list[Tensor] = []
    parts: list[Tensor] = []
    for scratch, param in zip(before, after, strict=True):
        if scratch.numel() > _CHUNK:
            scratch.sub_(param.detach())
            parts.append(_large_tensor_norms(scratch.reshape(-1)))
        elif scratch.numel():
            small_before.append(scratch)
            small_after.append(param.detach())
    if small_before:
        torch._foreach_sub_(small_before, small_after)
        parts.append(foreach_norms(small_before))
    return _combine(parts, before[0].device)


@torch.no_grad()
def count_nonfinite(tensors: Sequence[Tensor]) -> Tensor:
    """Number of NaN or infinite elements over all tensors.

    Costly (an elementwise pass and a boolean tensor per input), so the monitor calls it only
    after a stream's gradient norm came back non-finite.

    Args:
        tensors: Tensors on one device.

    Returns:
        An int64 0-dim tensor.
    """
    if not tensors:
        return torch.zeros((), dtype=torch.int64)
    return torch.stack([torch.isfinite(_dense(t)).logical_not().sum() for t in tensors]).sum()


def safe_ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or None when that is undefined or not finite.

    Args:
        numerator: Any float.
        denominator: Any float; zero, NaN and Inf give None.

    Returns:
        The ratio, or None.
    """
    if denominator == 0 or not math.isfinite(denominator) or not math.isfinite(numerator):
        return None
    return numerator / denominator


def overfitting_score(acc_gap: float, loss_gap: float) -> float:
    """The predecessor's combined overfitting score: accuracy gap plus loss gap.

    Below 0.5 reads as healthy, 0.5 to 1 as mild overfitting, above 1 as significant.

    Args:
        acc_gap: Train accuracy minus validation accuracy, in [-1, 1].
        loss_gap: Validation loss minus train loss.

    Returns:
        ``acc_gap + loss_gap``.
    """
    return acc_gap + loss_gap


def overfitting_to_generalization_ratio(
    previous_train_loss: float,
    previous_val_loss: float,
    train_loss: float,
    val_loss: float,
    rel_tol: float = 0.02,
) -> float | None:
    """Gradient-Blending's overfitting-to-generalisation ratio between two checkpoints.

    Wang et al., "What Makes Training Multi-modal Classification Networks Hard?" (CVPR 2020),
    Eq. 5: with overfitting ``O = L_val - L_train``, ``dO = O_now - O_before`` and
    ``dG = L_val_before - L_val_now`` (the generalisation gained), ``OGR = |dO / dG|``. Small is
    good: the stream gains generalisation faster than it overfits.

    The ratio is undefined when ``dG`` is tiny *relative to the losses*: a stream at 100%
    validation accuracy has losses near 0, its ``dG`` is noise (1e-5), and ``|dO / dG|`` reads
    100s although nothing overfits. Since ``|dO| <= 2 * max(losses)``, the rule below also
    bounds a reported OGR by ``2 / rel_tol`` (100 with the default).

    Args:
        previous_train_loss: Train loss at the earlier checkpoint.
        previous_val_loss: Validation loss at the earlier checkpoint.
        train_loss: Train loss now.
        val_loss: Validation loss now.
        rel_tol: ``|dG|`` at or below this fraction of the largest of the four losses makes the
            ratio undefined.

    Returns:
        The OGR, or None when ``|dG|`` is at or below ``rel_tol`` times the largest loss, or an
        input is not finite.
    """
    delta_o = (val_loss - train_loss) - (previous_val_loss - previous_train_loss)
    delta_g = previous_val_loss - val_loss
    if not math.isfinite(delta_o) or not math.isfinite(delta_g):
        return None
    scale = max(abs(previous_train_loss), abs(previous_val_loss), abs(train_loss), abs(val_loss))
    if abs(delta_g) <= rel_tol * scale:
        return None
    return abs(delta_o / delta_g)


def discrepancy_ratios(scores: Mapping[str, float]) -> dict[str, float]:
    """OGM-GE's discrepancy ratio of every stream against the others.

    Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient Modulation" (CVPR 2022),
    Eq. 9: for two modalities, ``rho_u = s_u / s_a`` with ``s_m`` the summed softmax score of
    the true class from modality m's own prediction. For N streams the ratio is taken against
    the mean score of the other streams, which is the paper's ratio when N = 2. ``rho_m > 1``:
    stream m is the more confident (dominant) one.

    Args:
        scores: Stream -> mean true-class softmax score in [0, 1].

    Returns:
        Stream -> ratio, for every stream whose others have a positive mean score (empty for a
        single stream).
    """
    ratios = {}
    for name, score in scores.items():
        others = [s for other, s in scores.items() if other != name]
        if not others:
            continue
        ratio = safe_ratio(score, sum(others) / len(others))
        if ratio is not None:
            ratios[name] = ratio
    return ratios


def conditional_learning_speed(mu_a: float, mu_b: float) -> float | None:
    """Wu et al.'s conditional learning speed of stream a relative to stream b.

    Wu et al., "Characterizing and Overcoming the Greedy Nature of Learning in Multi-modal Deep
    Neural Networks" (ICML 2022): ``mu_m = sum over steps of ||g_m||^2 / ||w_m||^2`` and the
    speed of a against b is ``log10(mu_a / mu_b)``; positive means a learns faster.

    Args:
        mu_a: Accumulated ``||g||^2 / ||w||^2`` of stream a (>= 0).
        mu_b: The same for stream b.

    Returns:
        ``log10(mu_a / mu_b)``, or None when either is zero or not finite.
    """
    if not (mu_a > 0 and mu_b > 0 and math.isfinite(mu_a) and math.isfinite(mu_b)):
        return None
    return math.log10(mu_a / mu_b)
