"""Per-stream measurements of optimizer steps, without a Trainer.

:func:`bind_streams` ties each stream's parameters to the optimizer param group that mainly holds
them; :class:`StepStatistics` measures a stream's gradients and weights right before an optimizer
step (:meth:`~StepStatistics.capture`) and the update it made right after it
(:meth:`~StepStatistics.finish`), with one device-to-host transfer, and sums what the epoch's
advice needs in one :class:`EpochAccumulator` per stream. :class:`~mslightning.callbacks.StreamMonitor`
calls them from its hooks; they work on any model and optimizer.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy
from torch.optim import Optimizer

from mslightning.callbacks.stream_stats import (
    count_nonfinite,
    grad_stats,
    safe_ratio,
    update_norm,
    weight_stats,
)
from mslightning.streams import stream_pairs

__all__ = [
    "EpochAccumulator",
    "StepStatistics",
    "StreamBinding",
    "bind_streams",
    "optimizer_names",
    "stream_histograms",
    "stream_inputs",
]

_VALUES_PER_STREAM = 4  # grad norm, grad max, weight norm, weight sum
_KNOBS = ("lr", "weight_decay")


@dataclass
class StreamBinding:
    """One stream's parameters and the optimizer param group that mainly holds them.

    Attributes:
        names: The parameter names.
        params: The parameters.
        trainable: Those with ``requires_grad``.
        numel: Their element count (0 for a lazy parameter not yet materialised).
        group: ``(optimizer index, param-group index)`` of the group holding most elements.
        group_name: That group's ``"name"``, else its name as ``LearningRateMonitor`` writes it
            without ``lr-`` (``"AdamW/pg2"``, ``"AdamW-1"``).
        shares_with: Other streams with parameters in that group.
        optimized: Whether any optimizer holds any of the parameters.
        snapshot: Scratch copies taken before a measured step, aligned with ``params`` (None for a
            parameter that is not trainable).
    """

    names: list[str]
    params: list[nn.Parameter]
    trainable: list[nn.Parameter]
    numel: int
    group: tuple[int, int] | None = None
    group_name: str | None = None
    shares_with: list[str] = field(default_factory=list)
    optimized: bool = False
    snapshot: list[Tensor | None] | None = None


@dataclass
class EpochAccumulator:
    """Host-side sums over the measured optimizer steps of one epoch, for one stream.

    Attributes:
        steps: Measured steps.
        grad_steps: Steps with finite gradients.
        grad_norm: Sum of gradient norms over ``grad_steps``.
        rel_grad_norm: Sum of ``||g|| / ||w||``.
        update_ratio: Sum of update ratios over ``update_steps``.
        update_steps: Steps whose update was measured (or estimated, see ``StepStatistics``).
        max_update_ratio: Largest measured update ratio.
        mu: Sum of ``||g||^2 / ||w||^2`` (Wu et al., ICML 2022).
        nonfinite: NaN/Inf gradient values, routine fp16 overflows excepted.
        overflow_steps: Steps with NaN/Inf gradients that a GradScaler skipped and recovers from.
        overflow_values: Their NaN/Inf values.
        nonfinite_inputs: NaN/Inf values in the stream's own batch inputs, counted on steps whose
            gradients were not finite (routine fp16 overflows excepted).
        inputs_scanned: Whether the stream's inputs were scanned on such a step.
        weight_norm: Sum of weight norms over ``weight_steps``.
        weight_steps: Steps with a finite weight norm.
        last_weight_norm: The latest finite weight norm.
    """

    steps: int = 0
    grad_steps: int = 0
    grad_norm: float = 0.0
    rel_grad_norm: float = 0.0
    update_ratio: float = 0.0
    update_steps: int = 0
    max_update_ratio: float = 0.0
    mu: float = 0.0
    nonfinite: int = 0
    overflow_steps: int = 0
    overflow_values: int = 0
    nonfinite_inputs: int = 0
    inputs_scanned: bool = False
    weight_norm: float = 0.0
    weight_steps: int = 0
    last_weight_norm: float | None = None

    def mean(self, total: str, count: str) -> float | None:
        """``getattr(self, total) / getattr(self, count)``, or None before any such step.

        Args:
            total: A sum field, e.g. ``"grad_norm"``.
            count: Its count field, e.g. ``"grad_steps"``.

        Returns:
            The mean, or None.
        """
        n = getattr(self, count)
        return getattr(self, total) / n if n else None


def _numel(parameter: Tensor) -> int:
    """Element count; 0 for a lazy module's parameter that has not been materialised."""
    return 0 if is_lazy(parameter) else parameter.numel()


def _loss_scale(scaler: Any) -> Tensor:
    """A GradScaler's current scale as a float32 0-dim tensor, without a host sync if possible."""
    scale = getattr(scaler, "_scale", None)  # what get_scale() reads, minus its .item()
    if isinstance(scale, Tensor):
        return scale.detach().reshape(()).float().clone()  # update() changes it in place
    return torch.tensor(float(scaler.get_scale()))


def optimizer_names(
    optimizers: Sequence[Optimizer], scheduled: Sequence[tuple[Optimizer, str | None]] = ()
) -> list[str]:
    """Each optimizer's name as Lightning's ``LearningRateMonitor`` writes it, without ``lr-``.

    The class name, with ``-1``, ``-2``, ... for the second, third, ... optimizer of one class,
    counted in LearningRateMonitor's order (optimizers with a scheduler first); an optimizer whose
    scheduler config has a ``name`` is called by that name.

    Args:
        optimizers: ``trainer.optimizers``.
        scheduled: ``(optimizer, scheduler config name)`` of each ``trainer.lr_scheduler_configs``
            entry, in order.

    Returns:
        One name per optimizer of ``optimizers``, in that order (``["AdamW", "AdamW-1"]``).
    """
    order: list[tuple[Optimizer, str | None]] = []
    for optimizer, name in [*scheduled, *((o, None) for o in optimizers)]:
        if any(optimizer is p for p in optimizers) and not any(optimizer is o for o, _ in order):
            order.append((optimizer, name))
    seen: defaultdict[type, int] = defaultdict(int)
    names: dict[int, str] = {}
    for optimizer, scheduler_name in order:
        if scheduler_name is None:
            seen[type(optimizer)] += 1
        count = seen.get(type(optimizer), 0)
        base = scheduler_name or type(optimizer).__name__
        names[id(optimizer)] = base + (f"-{count - 1}" if count > 1 else "")
    return [names[id(o)] for o in optimizers]


def bind_streams(
    named_parameters: Mapping[str, nn.Parameter],
    names_by_stream: Mapping[str, Sequence[str]],
    optimizers: Sequence[Optimizer],
    names: Sequence[str] | None = None,
) -> dict[str, StreamBinding]:
    """Tie each stream's parameters to the param group holding most of its elements.

    Args:
        named_parameters: ``dict(module.named_parameters())``.
        names_by_stream: Stream -> its parameter names (:func:`mslightning.streams.match_streams`).
        optimizers: The optimizers (``trainer.optimizers``).
        names: Their names (:func:`optimizer_names`); default: the class names.

    Returns:
        Stream -> binding, in the order of ``names_by_stream``.
    """
    names = list(names) if names is not None else [type(o).__name__ for o in optimizers]
    location: dict[int, tuple[int, int]] = {}
    group_names: dict[tuple[int, int], str] = {}
    for oi, optimizer in enumerate(optimizers):
        groups = optimizer.param_groups
        for gi, group in enumerate(groups):
            fallback = f"{names[oi]}/pg{gi + 1}" if len(groups) > 1 else names[oi]
            group_names[(oi, gi)] = str(group.get("name") or fallback)
            for p in group["params"]:
                location.setdefault(id(p), (oi, gi))
    streams_of_group: dict[tuple[int, int], set[str]] = {}
    bindings = {}
    for stream, stream_names in names_by_stream.items():
        params = [named_parameters[n] for n in stream_names]
        counts: dict[tuple[int, int], int] = {}
        for p in params:
            if id(p) in location:
                counts[location[id(p)]] = counts.get(location[id(p)], 0) + _numel(p)
                streams_of_group.setdefault(location[id(p)], set()).add(stream)
        main = max(counts, key=counts.__getitem__) if counts else None
        bindings[stream] = StreamBinding(
            names=list(stream_names),
            params=params,
            trainable=[p for p in params if p.requires_grad],
            numel=sum(_numel(p) for p in params),
            group=main,
            group_name=group_names.get(main) if main is not None else None,
            optimized=bool(counts),
        )
    for stream, binding in bindings.items():
        if binding.group is not None:
            binding.shares_with = sorted(streams_of_group[binding.group] - {stream})
    return bindings


@torch.no_grad()
def stream_histograms(bindings: Mapping[str, StreamBinding], grad_scale: float = 1.0) -> dict[tuple[str, str], Tensor]:
    """Every stream's weights and gradients as flat float32 vectors, for histograms.

    Args:
        bindings: The streams.
        grad_scale: Divides the gradients (the loss scale, where they are still scaled).

    Returns:
        ``("weights" | "grads", stream)`` -> values (no ``"grads"`` entry for a stream without any).
    """
    out = {}
    for stream, binding in bindings.items():
        out[("weights", stream)] = torch.cat([p.detach().flatten().float() for p in binding.params])
        grads = [p.grad.detach().flatten().float() for p in binding.params if p.grad is not None]
        if grads:
            out[("grads", stream)] = torch.cat(grads) / grad_scale
    return out


def stream_inputs(batch: Any, streams: Sequence[str]) -> dict[str, Tensor]:
    """The per-stream input tensors of a batch, where the batch holds them by stream name.

    Args:
        batch: ``(inputs, target, ...)`` with ``inputs`` a mapping, or a mapping itself.
        streams: Stream names.

    Returns:
        Stream -> its input tensor, for the streams found (empty when the layout is unknown).
    """
    inputs = batch[0] if isinstance(batch, list | tuple) and batch and isinstance(batch[0], Mapping) else batch
    if not isinstance(inputs, Mapping):
        return {}
    return {s: inputs[s] for s in streams if isinstance(inputs.get(s), Tensor)}


class StepStatistics:
    """Measures each stream's gradients, weights and update at an optimizer step.

    Call :meth:`capture` right before the step (gradients final: accumulated, unscaled,
    all-reduced) and :meth:`finish` right after it. Everything captured stays on the device until
    :meth:`finish` moves it to the host in one transfer; a second transfer happens only on a step
    whose gradients are not finite (to count the NaN/Inf values).

    Args:
        bindings: The streams (:func:`bind_streams`).
        track_updates: Measure ``||w_after - w_before|| / ||w_before||`` (keeps one scratch copy
            of the trainable parameters). If False, the accumulators get the proxy
            ``lr * ||g|| / ||w||`` instead and no ``update_ratio`` metric is returned.
        initial_weight_norm: Where to keep each stream's first measured weight norm (a dict shared
            with a resumed run's state); a new one by default.
    """

    def __init__(
        self,
        bindings: Mapping[str, StreamBinding],
        track_updates: bool = True,
        initial_weight_norm: dict[str, float] | None = None,
    ) -> None:
        self.bindings = dict(bindings)
        self.track_updates = track_updates
        self.accumulators: dict[str, EpochAccumulator] = {s: EpochAccumulator() for s in self.bindings}
        self.initial_weight_norm: dict[str, float] = {} if initial_weight_norm is None else initial_weight_norm
        """Each stream's weight norm at its first measured step (kept across epochs; filled in place)."""
        self._reset_capture()

    @property
    def pending(self) -> bool:
        """Whether captured streams wait for :meth:`finish`."""
        return bool(self._captured)

    def start_epoch(self) -> None:
        """Start new accumulators (the initial weight norms stay)."""
        self.accumulators = {s: EpochAccumulator() for s in self.bindings}

    def release(self) -> None:
        """Free the scratch copies and forget captured streams."""
        for binding in self.bindings.values():
            binding.snapshot = None
        self._reset_capture()

    def _reset_capture(self) -> None:
        self._captured: dict[str, dict[str, Any]] = {}  # stream -> index into _values, grads seen, scaled
        self._values: list[Tensor] = []
        self._knobs: dict[tuple[str, str], tuple[bool, float | int]] = {}  # -> (on device?, value or index)
        self._scaler: Any = None
        self._scale_index: int | None = None
        self._device: torch.device | None = None

    @torch.no_grad()
    def capture(
        self,
        optimizers: Sequence[Optimizer],
        optimizer: Optimizer | None = None,
        scaler: Any = None,
        streams: Sequence[str] | None = None,
    ) -> None:
        """Read gradients and weights before a step; copy the weights when tracking updates.

        With several optimizers stepped one after another in a batch, call it before each step
        for the streams that optimizer holds: each stream is read once, where its gradients are
        final, and its weights before its own optimizer moves them.

        Args:
            optimizers: All optimizers (the bindings index into them, for ``lr``/``weight_decay``).
            optimizer: The optimizer about to step (fused AMP optimizers unscale inside ``step()``,
                so their gradients still carry the loss scale here).
            scaler: The ``GradScaler`` in use, or None.
            streams: The streams to read now; None: every stream not yet read in this step.
        """
        scaled_grads = scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False)
        for stream in self.bindings if streams is None else streams:
            if stream in self._captured:
                continue
            binding = self.bindings[stream]
            grads = [p.grad for p in binding.params if p.grad is not None]
            copies = None
            if self.track_updates and binding.trainable:
                if binding.snapshot is None:
                    trainable = {id(p) for p in binding.trainable}
                    binding.snapshot = [torch.empty_like(p) if id(p) in trainable else None for p in binding.params]
                copies = binding.snapshot
            self._device = self._device or binding.params[0].device
            self._captured[stream] = {"index": len(self._values), "has_grad": bool(grads), "scaled": scaled_grads}
            self._values.extend(grad_stats(grads))
            self._values.extend(weight_stats([p.detach() for p in binding.params], copies))  # copied in the same pass
            if binding.group is not None:
                group = optimizers[binding.group[0]].param_groups[binding.group[1]]
                for knob in _KNOBS:
                    value = group.get(knob)
                    if isinstance(value, Tensor):  # e.g. capturable optimizers: stays on the device
                        self._knobs[(knob, stream)] = (True, len(self._values))
                        self._values.append(value.detach().reshape(()))
                    elif value is not None:
                        self._knobs[(knob, stream)] = (False, float(value))
        if scaler is not None and self._scale_index is None:  # a back-off after the step means it was skipped
            self._scaler, self._scale_index = scaler, len(self._values)
            self._values.append(_loss_scale(scaler))

    @torch.no_grad()
    def finish(self, batch: Any = None) -> dict[tuple[str, str], float]:
        """Measure the updates, move everything to the host once, accumulate, and return the step's values.

        Args:
            batch: The step's batch; on a step with NaN/Inf gradients its per-stream inputs
                (:func:`stream_inputs`) are scanned for NaN/Inf, so the advice can name the stream
                whose data is broken.

        Returns:
            ``(metric, stream)`` -> value for each captured stream's step metrics (``grad_norm``,
            ``grad_max``, ``weight_norm``, ``weight_mean``, ``rel_grad_norm``, ``update_ratio``,
            ``nonfinite_grads``, ``lr``, ``weight_decay``) and ``(metric, "<a>_vs_<b>")`` for the
            pair ratios ``grad_norm_ratio`` and ``weight_norm_ratio``; a value that is undefined (a
            zero or non-finite denominator) is left out.

        Raises:
            RuntimeError: If no stream was captured.
        """
        if not self._captured:
            raise RuntimeError("StepStatistics.finish() called without a captured step.")
        captured, values, knobs, scaler, scale_index, device = (
            self._captured,
            self._values,
            self._knobs,
            self._scaler,
            self._scale_index,
            self._device,
        )
        self._reset_capture()
        update_index = len(values)
        if self.track_updates:
            for stream in captured:
                binding = self.bindings[stream]
                if binding.snapshot is not None and binding.trainable:
                    before = [copy for copy in binding.snapshot if copy is not None]
                    values.append(update_norm(before, binding.trainable))
                else:
                    values.append(torch.zeros((), dtype=torch.float32))
        if scaler is not None:
            values.append(_loss_scale(scaler))
        host = torch.stack([v.to(device=device, dtype=torch.float32) for v in values]).tolist()  # the one transfer

        skipped = recoverable = False
        scale = 1.0
        if scale_index is not None:
            scale, scale_after = host[scale_index], host[-1]
            # GradScaler backs off exactly when it found NaN/Inf and skipped the step. Above a
            # scale of 1 that is a routine fp16 overflow; below it, the unscaled gradients overflow.
            skipped = scale_after < scale
            recoverable = skipped and scale_after >= 1.0
        out: dict[tuple[str, str], float] = {}
        bad_inputs: dict[str, int] | None = None
        for i, (stream, capture) in enumerate(captured.items()):
            binding = self.bindings[stream]
            gn, gmax, wn, wsum = host[capture["index"] : capture["index"] + _VALUES_PER_STREAM]
            if capture["scaled"]:
                gn, gmax = gn / scale, gmax / scale
            nonfinite = 0
            if not (math.isfinite(gn) and math.isfinite(gmax)):
                grads = [p.grad for p in binding.params if p.grad is not None]
                nonfinite = max(int(count_nonfinite(grads).item()), 1)  # rare: only on a bad step
                if bad_inputs is None and not recoverable:
                    inputs = stream_inputs(batch, list(self.bindings))
                    bad_inputs = {
                        s: int(count_nonfinite([x]).item()) for s, x in inputs.items() if x.is_floating_point()
                    }
            values_of_stream: dict[str, float] = {
                "grad_norm": gn,
                "grad_max": gmax,
                "weight_norm": wn,
                "weight_mean": wsum / binding.numel if binding.numel else math.nan,
                "nonfinite_grads": float(nonfinite),
            }
            rel = safe_ratio(gn, wn)
            if rel is not None:
                values_of_stream["rel_grad_norm"] = rel
            update = None
            if self.track_updates:
                update = safe_ratio(host[update_index + i], wn)
                if update is not None:
                    values_of_stream["update_ratio"] = update
            for knob in _KNOBS:
                if (knob, stream) in knobs:
                    on_device, value = knobs[(knob, stream)]
                    values_of_stream[knob] = host[int(value)] if on_device else float(value)
            if update is None and "lr" in values_of_stream and rel is not None:
                update = values_of_stream["lr"] * rel  # the proxy the rules use without track_updates
            if skipped:
                update = None  # the step was not taken: no stream moved
            self._accumulate(stream, capture["has_grad"], gn, wn, rel, update, nonfinite, recoverable)
            out.update({(metric, stream): value for metric, value in values_of_stream.items()})
        for a, b in stream_pairs([s for s in self.bindings if s in captured]):
            for metric, source in (("grad_norm_ratio", "grad_norm"), ("weight_norm_ratio", "weight_norm")):
                ratio = safe_ratio(out[(source, a)], out[(source, b)])
                if ratio is not None:
                    out[(metric, f"{a}_vs_{b}")] = ratio
        for stream, count in (bad_inputs or {}).items():
            self.accumulators[stream].nonfinite_inputs += count
            self.accumulators[stream].inputs_scanned = True
        return out

    def _accumulate(
        self,
        stream: str,
        has_grad: bool,
        grad_norm: float,
        weight_norm: float,
        rel: float | None,
        update: float | None,
        nonfinite: int,
        recoverable_overflow: bool,
    ) -> None:
        acc = self.accumulators.setdefault(stream, EpochAccumulator())
        acc.steps += 1
        if nonfinite and recoverable_overflow:
            acc.overflow_steps += 1
            acc.overflow_values += nonfinite
        else:
            acc.nonfinite += nonfinite
        if math.isfinite(weight_norm):
            acc.weight_norm += weight_norm
            acc.weight_steps += 1
            acc.last_weight_norm = weight_norm
            self.initial_weight_norm.setdefault(stream, weight_norm)
        if has_grad and nonfinite == 0:
            acc.grad_steps += 1
            acc.grad_norm += grad_norm
            if rel is not None:
                acc.rel_grad_norm += rel
                acc.mu += rel * rel
        if nonfinite == 0 and update is not None and math.isfinite(update):
            acc.update_ratio += update
            acc.update_steps += 1
            acc.max_update_ratio = max(acc.max_update_ratio, update)
