"""From one epoch's measurements to its metrics and to the evidence the advice reads, without a Trainer.

:func:`epoch_metrics` derives the per-stream epoch metrics (score and loss gaps, overfitting
score, OGR, discrepancy ratio, learning speed) from the per-stream prediction scores
(:class:`~mslightning.callbacks.prediction_tally.PredictionTally`) and the step accumulators
(:class:`~mslightning.callbacks.step_statistics.EpochAccumulator`); :func:`build_evidence` packs
them, with the optimizer settings, into an :class:`~mslightning.callbacks.advice.EpochEvidence`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mslightning.callbacks.advice import EpochEvidence
from mslightning.callbacks.monitor_metrics import resolve
from mslightning.callbacks.step_statistics import EpochAccumulator, StreamBinding
from mslightning.callbacks.stream_stats import (
    conditional_learning_speed,
    discrepancy_ratios,
    overfitting_score,
    overfitting_to_generalization_ratio,
)
from mslightning.streams import StreamOutputs, stream_pairs

__all__ = ["build_evidence", "epoch_metrics", "fusion_internals", "step_means", "to_host"]


def epoch_metrics(
    streams: Sequence[str],
    train: Mapping[str, Mapping[str, Tensor]],
    val: Mapping[str, Mapping[str, Tensor]],
    accumulators: Mapping[str, EpochAccumulator],
    previous_losses: dict[str, tuple[float, float]],
    task: type[StreamOutputs] | None = None,
    extra: Mapping[tuple[str, str], Tensor] | None = None,
) -> dict[tuple[str, str], float]:
    """The epoch metrics of every stream and pair, with one device-to-host transfer.

    Args:
        streams: Stream names in order.
        train: The training batches' ``{"score", "loss", "confidence"}`` per stream (0-dim
            tensors, :meth:`PredictionTally.compute`); may be empty. A NaN value (nothing
            scored, or a NaN loss) is left out, with the metrics derived from it.
        val: The same for validation (empty when no validation ran this epoch).
        accumulators: The epoch's step sums per stream.
        previous_losses: Stream -> ``(train loss, val loss)`` of the previous validated epoch,
            for the OGR; updated in place.
        task: The task of the per-stream outputs (names the score metrics).
        extra: More ``(metric, stream)`` -> 0-dim tensor values to bring to the host in the same
            transfer (the fusion internals); returned as they are.

    Returns:
        ``(metric, stream or "<a>_vs_<b>")`` -> value, metric names resolved for the task.
    """
    device_values: dict[tuple[str, ...], Tensor] = {("extra", *k): v for k, v in (extra or {}).items()}
    for stage, scores in (("train", train), ("val", val)):
        device_values.update({(stage, s, name): v for s, values in scores.items() for name, v in values.items()})
    host = to_host(device_values)
    staged: dict[str, dict[str, dict[str, float]]] = {"train": {}, "val": {}}
    for key, value in host.items():
        if key[0] in staged:
            staged[key[0]].setdefault(key[1], {})[key[2]] = value
    # each value on its own: one NaN batch spoils a stream's loss, not its accuracy
    finite = {
        stage: {s: {k: x for k, x in v.items() if math.isfinite(x)} for s, v in staged[stage].items()}
        for stage in staged
    }
    out: dict[tuple[str, str], float] = {(k[1], k[2]): v for k, v in host.items() if k[0] == "extra"}
    score, confidence = resolve("{score}", task), resolve("{confidence}", task)
    names = {"score": score, "loss": "loss"}
    for stream in streams:
        tr, va = finite["train"].get(stream, {}), finite["val"].get(stream, {})
        for stage, values in (("train", tr), ("val", va)):
            out.update({(f"{stage}_{names[k]}", stream): values[k] for k in names if k in values})
        if "confidence" in tr:
            out[(confidence, stream)] = tr["confidence"]
        if "score" in tr and "score" in va:
            out[(f"{score}_gap", stream)] = tr["score"] - va["score"]
        if "loss" in tr and "loss" in va:
            out[("loss_gap", stream)] = va["loss"] - tr["loss"]
            previous = previous_losses.get(stream)
            if previous is not None:
                ogr = overfitting_to_generalization_ratio(previous[0], previous[1], tr["loss"], va["loss"])
                if ogr is not None:
                    out[("ogr", stream)] = ogr
            previous_losses[stream] = (tr["loss"], va["loss"])
        if (f"{score}_gap", stream) in out and ("loss_gap", stream) in out:
            out[("overfit_score", stream)] = overfitting_score(out[(f"{score}_gap", stream)], out[("loss_gap", stream)])
    confidences = {s: finite["train"][s]["confidence"] for s in streams if "confidence" in finite["train"].get(s, {})}
    out.update({("discrepancy_ratio", s): v for s, v in discrepancy_ratios(confidences).items()})
    mean_mu = {s: acc.mean("mu", "grad_steps") for s, acc in accumulators.items() if acc.grad_steps}
    for a, b in stream_pairs(streams):
        # Means, not Wu et al.'s sums: equal when both streams have every measured step, and
        # unbiased when a non-finite step is missing from one of them.
        speed = conditional_learning_speed(mean_mu.get(a, 0.0), mean_mu.get(b, 0.0))
        if speed is not None:
            out[("learning_speed", f"{a}_vs_{b}")] = speed
    return out


def step_means(
    accumulators: Mapping[str, EpochAccumulator], track_updates: bool = True
) -> dict[tuple[str, str], float]:
    """The epoch's step metrics as one value each, for the history.

    Args:
        accumulators: The epoch's step sums per stream.
        track_updates: Whether the update ratios are measured (else they are a proxy, left out).

    Returns:
        ``(metric, stream)`` -> the mean over the measured steps of ``grad_norm``,
        ``rel_grad_norm``, ``weight_norm`` and (measured) ``update_ratio``, and the total of
        ``nonfinite_grads`` (routine fp16 overflows included).
    """
    means = [("grad_norm", "grad_steps"), ("rel_grad_norm", "grad_steps"), ("weight_norm", "weight_steps")]
    if track_updates:
        means.append(("update_ratio", "update_steps"))
    out: dict[tuple[str, str], float] = {}
    for stream, acc in accumulators.items():
        if acc.steps:
            out[("nonfinite_grads", stream)] = float(acc.nonfinite + acc.overflow_values)
        for total, count in means:
            mean = acc.mean(total, count)
            if mean is not None:
                out[(total, stream)] = mean
    return out


def build_evidence(
    epoch: int,
    bindings: Mapping[str, StreamBinding],
    accumulators: Mapping[str, EpochAccumulator],
    initial_weight_norm: Mapping[str, float],
    metrics: Mapping[tuple[str, str], float],
    optimizers: Sequence[Any],
    chance: Mapping[str, float],
    *,
    task: type[StreamOutputs] | None = None,
    predictions_seen: bool = False,
    compare_streams: bool = True,
    update_ratio_is_proxy: bool = False,
    pretrained: Sequence[str] = (),
) -> EpochEvidence:
    """Everything the advice reads about one epoch.

    Args:
        epoch: The epoch index.
        bindings: The streams' bindings.
        accumulators: Their step sums this epoch.
        initial_weight_norm: Their weight norm at the first measured step of the run.
        metrics: This epoch's :func:`epoch_metrics`.
        optimizers: The optimizers the bindings index into (for each stream's lr and weight decay).
        chance: Stream -> chance-level score.
        task: The task of the per-stream outputs.
        predictions_seen: Whether the model returned per-stream outputs at all.
        compare_streams: Whether the streams are peers.
        update_ratio_is_proxy: Whether update ratios are the ``lr * ||g|| / ||w||`` proxy.
        pretrained: Parts declared pretrained.

    Returns:
        The evidence.
    """
    score = resolve("{score}", task)
    per_metric: dict[str, dict[str, float]] = {}
    for (metric, over), value in metrics.items():
        per_metric.setdefault(metric, {})[over] = value
    grad_norm, update, largest, growth, nonfinite, inputs = {}, {}, {}, {}, {}, {}
    frozen, not_optimized = set(), set()
    for stream, binding in bindings.items():
        acc = accumulators.get(stream)
        if acc is None or not acc.steps:
            continue
        nonfinite[stream] = acc.nonfinite  # without routine fp16 overflows
        if acc.inputs_scanned:
            inputs[stream] = acc.nonfinite_inputs
        if not binding.trainable or (acc.grad_steps == 0 and acc.nonfinite + acc.overflow_steps == 0):
            frozen.add(stream)
        elif not binding.optimized:
            not_optimized.add(stream)
        if acc.grad_steps:
            grad_norm[stream] = acc.mean("grad_norm", "grad_steps")
        if acc.update_steps:
            update[stream] = acc.mean("update_ratio", "update_steps")
            if not update_ratio_is_proxy:
                largest[stream] = acc.max_update_ratio
        initial = initial_weight_norm.get(stream)
        if acc.last_weight_norm is not None and initial:
            growth[stream] = acc.last_weight_norm / initial
    knobs: dict[str, dict[str, float]] = {"lr": {}, "weight_decay": {}}
    for stream, binding in bindings.items():
        if binding.group is None:
            continue
        group = optimizers[binding.group[0]].param_groups[binding.group[1]]
        for knob, values in knobs.items():
            value = group.get(knob)
            if value is not None:
                values[stream] = float(value)
    return EpochEvidence(
        epoch=epoch,
        streams=list(bindings),
        grad_norm=grad_norm,
        update_ratio=update,
        max_update_ratio=largest,
        weight_growth=growth,
        nonfinite=nonfinite,
        nonfinite_inputs=inputs,
        frozen=frozenset(frozen),
        not_optimized=frozenset(not_optimized),
        overfit_score=per_metric.get("overfit_score", {}),
        acc_gap=per_metric.get(f"{score}_gap", {}),
        ogr=per_metric.get("ogr", {}),
        discrepancy=per_metric.get("discrepancy_ratio", {}),
        lr=knobs["lr"],
        weight_decay=knobs["weight_decay"],
        group={s: b.group_name for s, b in bindings.items() if b.group_name is not None},
        shares_group_with={s: b.shares_with for s, b in bindings.items()},
        compare_streams=compare_streams,
        update_ratio_is_proxy=update_ratio_is_proxy,
        train_acc=per_metric.get(f"train_{score}", {}),
        val_acc=per_metric.get(f"val_{score}", {}),
        chance={s: c for s, c in chance.items() if s in per_metric.get(f"train_{score}", {})},
        predictions_seen=predictions_seen,
        score_label=(task.score_label if task is not None else "accuracy"),
        pretrained=frozenset(pretrained),
    )


def fusion_internals(module: Any) -> dict[tuple[str, str], Tensor]:
    """The module's own per-stream fusion values, from its optional ``fusion_internals()`` method.

    Args:
        module: The model; ``fusion_internals() -> {metric: {stream: one-element tensor}}``
            (e.g. a gated fusion's mean gate per stream).

    Returns:
        ``(f"fusion/{metric}", stream)`` -> detached float32 0-dim tensor (empty without the method).

    Raises:
        TypeError: If the method returns something else than a mapping of mappings.
        ValueError: If a value is not a one-element tensor.
    """
    method = getattr(module, "fusion_internals", None)
    if not callable(method):
        return {}
    with torch.no_grad():
        internals = method()
    where = f"{type(module).__name__}.fusion_internals()"
    if not isinstance(internals, Mapping):
        raise TypeError(f"{where} must return {{metric: {{stream: tensor}}}}, got {type(internals).__name__}.")
    flat = {}
    for metric, per_stream in internals.items():
        if not isinstance(per_stream, Mapping):
            raise TypeError(f"{where}[{metric!r}] must map stream -> tensor, got {type(per_stream).__name__}.")
        for stream, value in per_stream.items():
            if not isinstance(value, Tensor) or value.numel() != 1:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{where}[{metric!r}][{stream!r}] must be a one-element tensor, got {shape}.")
            flat[(f"fusion/{metric}", stream)] = value.detach().float().reshape(())
    return flat


def to_host(values: Mapping[Any, Tensor]) -> dict[Any, float]:
    """0-dim device tensors as Python floats, with one device-to-host transfer.

    Args:
        values: Key -> 0-dim tensor (all on one device, or on the CPU).

    Returns:
        Key -> float, same keys (empty for no values).
    """
    if not values:
        return {}
    device = next(iter(values.values())).device
    flat = torch.stack([v.to(device).float().reshape(()) for v in values.values()]).tolist()
    return dict(zip(values, flat, strict=True))
