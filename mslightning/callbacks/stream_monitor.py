"""StreamMonitor: per-stream gradients, weights, learning speed and overfitting, with advice.

Per-stream gradient, weight, learning-speed and overfitting metrics of a multi-stream network,
logged to TensorBoard and turned into plain-language recommendations.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.nn.parameter import is_lazy
from torch.optim import Optimizer
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from mslightning.callbacks._lifecycle import EpochEndCallback
from mslightning.callbacks._tensorboard import (
    Layout,
    has_tensorboard,
    multiline,
    tensorboard_writer,
    write_merged_layout,
)
from mslightning.callbacks.advice import Advisor, EpochEvidence, Recommendation, StreamThresholds
from mslightning.callbacks.stream_stats import (
    conditional_learning_speed,
    count_nonfinite,
    discrepancy_ratios,
    grad_stats,
    overfitting_score,
    overfitting_to_generalization_ratio,
    safe_ratio,
    update_norm,
    weight_stats,
)
from mslightning.optim.patterns import Patterns, as_pattern_list, describe_names, select_names
from mslightning.streams import STREAM_NAME_PATTERN, check_stream_name

IGNORE_INDEX = -100
"""Targets equal to this (``torch.nn.functional.cross_entropy``'s default ``ignore_index``) are not scored."""

__all__ = ["STEP_METRICS", "STREAM_NAME_PATTERN", "StreamMonitor"]

"""Stream names must match this (they become parts of TensorBoard tags)."""

STEP_METRICS = (
    "grad_norm",
    "grad_max",
    "weight_norm",
    "weight_mean",
    "rel_grad_norm",
    "update_ratio",
    "nonfinite_grads",
    "lr",
    "weight_decay",
)
"""Per-stream metrics logged every logging step."""

PAIR_STEP_METRICS = ("grad_norm_ratio", "weight_norm_ratio")
EPOCH_METRICS = (
    "train_acc",
    "val_acc",
    "train_loss",
    "val_loss",
    "acc_gap",
    "loss_gap",
    "overfit_score",
    "ogr",
    "true_class_score",
    "discrepancy_ratio",
    "alerts",
)
PAIR_EPOCH_METRICS = ("learning_speed",)
_STAGES = ("train", "val")
_VALUES_PER_STREAM = 4  # grad norm, grad max, weight norm, weight sum


@dataclass
class _Binding:
    """One stream's parameters and the optimizer param group that mainly holds them."""

    names: list[str]
    params: list[nn.Parameter]
    trainable: list[nn.Parameter]
    numel: int
    group: tuple[int, int] | None = None  # (optimizer index, param-group index)
    group_name: str | None = None
    shares_with: list[str] = field(default_factory=list)
    optimized: bool = False
    snapshot: list[Tensor] | None = None


@dataclass
class _EpochAccumulator:
    """Host-side sums over the logged optimizer steps of the current epoch, one per stream."""

    steps: int = 0
    grad_steps: int = 0
    grad_norm: float = 0.0
    rel_grad_norm: float = 0.0
    update_ratio: float = 0.0
    update_steps: int = 0
    max_update_ratio: float = 0.0
    mu: float = 0.0  # sum of ||g||^2 / ||w||^2 (Wu et al., ICML 2022)
    nonfinite: int = 0
    overflow_steps: int = 0  # steps with NaN/Inf gradients that a GradScaler skipped and recovers from
    overflow_values: int = 0
    nonfinite_inputs: int = 0  # NaN/Inf input values on steps with non-finite gradients
    inputs_scanned: bool = False  # the stream's inputs were scanned on such a step
    weight_norm: float = 0.0
    weight_steps: int = 0
    last_weight_norm: float | None = None


def _nonfinite_inputs(batch: Any, streams: Sequence[str]) -> dict[str, int]:
    """NaN/Inf values per stream in a ``(inputs, target)`` batch whose ``inputs`` map stream -> tensor.

    Streams absent from ``inputs`` (or a batch of another form) are left out: not checked.
    """
    inputs = batch[0] if isinstance(batch, tuple | list) and batch else batch
    if not isinstance(inputs, Mapping):
        return {}
    return {
        stream: int(torch.isfinite(x).logical_not().sum().item()) if x.is_floating_point() else 0
        for stream, x in inputs.items()
        if stream in streams and isinstance(x, Tensor)
    }


def _numel(parameter: Tensor) -> int:
    """Element count; 0 for a lazy module's parameter that has not been materialised."""
    return 0 if is_lazy(parameter) else parameter.numel()


def _loss_scale(scaler: Any) -> Tensor:
    """A GradScaler's current scale as a float32 0-dim tensor, without a host sync if possible."""
    scale = getattr(scaler, "_scale", None)  # what get_scale() reads, minus its .item()
    if isinstance(scale, Tensor):
        return scale.detach().reshape(()).float().clone()  # update() changes it in place
    return torch.tensor(float(scaler.get_scale()))


class StreamMonitor(EpochEndCallback):
    r"""Watch each stream of a multi-stream network separately and say what to change.

    Drop it into any ``Trainer``. Streams are chosen by patterns on parameter names
    (:mod:`mslightning.optim.patterns`: fnmatch globs or ``re:`` regexes), given here or declared
    by the module as ``stream_patterns``. Gradients are read in ``on_before_optimizer_step``,
    where they are final: accumulated, unscaled (AMP) and all-reduced (DDP), before gradient
    clipping, once per optimizer step. Per-stream predictions for the overfitting metrics come
    from the *per-stream prediction protocol*: ``training_step`` and ``validation_step`` return

    .. code-block:: python

        {
            "loss": loss,  # what Lightning optimises
            "target": target,  # (B,) int64 class indices; -100 (ignore_index) rows are left out
            "stream_logits": {"rgb": logits_rgb, "depth": logits_depth},  # each (B, K), or (B, 1) binary
            "logits": fused_logits,  # optional (B, K)
        }

    from which the monitor computes per-stream accuracy, cross-entropy and true-class softmax
    score with one torchmetrics object per stage and stream. A ``(B, 1)`` logit ``z`` is a binary
    head (classes 0 and 1 with logits ``(0, z)``); float (soft) targets skip these metrics with one
    warning. Without it the gradient and weight
    metrics still work and the overfitting metrics are skipped with one message. A module with a
    ``fusion_internals() -> {metric: {stream: 0-dim tensor}}`` method gets those logged each
    epoch.

    Cost: on a logging step (every ``log_every_n_steps`` optimizer steps) the monitor reads each
    stream's gradients twice (L2 norm; min/max) and its weights once (norm and sum), and with
    ``track_updates`` copies the weights before the step and reads the copy and the new weights
    after it: some eight memory-bound passes over the monitored parameters, whatever the input
    size. Everything is stacked into one tensor and moved to the host once; a second transfer
    happens only on a step whose gradients contain NaN/Inf (to count them). Nothing runs on other
    steps except the per-batch metric updates. For small inputs on CPU, where a training step is
    cheap next to those passes, log every 10-50 steps or set ``track_updates=False``
    (``benchmarks/bench_stream_monitor.py`` has the figures).

    Mixed precision: gradients are read after AMP unscaling (for fused optimizers, which unscale
    inside ``step()``, the norms are divided by the loss scale). With a ``GradScaler``, a step it
    skips is left out of the update ratios, and its NaN/Inf gradients are logged but are a routine
    fp16 overflow; they raise the ``nonfinite`` advice once the scale has backed off below 1
    (then the gradients are not finite even unscaled).

    Args:
        streams: Stream name -> parameter-name pattern(s), e.g.
            ``{"rgb": "rgb_encoder.*", "depth": ["depth_encoder.*", "depth_head.*"]}``. ``None``
            reads the module's ``stream_patterns``. Names may use letters, digits, ``_``, ``.``
            and ``-``. A stream matching no parameter, or a parameter matched by two streams, is
            an error at setup.
        log_every_n_steps: Log the step metrics every this many optimizer steps (counted by
            ``trainer.global_step``, so step 0 is logged). ``None`` uses the Trainer's
            ``log_every_n_steps``. 0 disables the step metrics, and with them the learning
            speed and the gradient/update advice; the prediction-based epoch metrics still run.
        thresholds: Thresholds and hysteresis of the recommendations.
        prefix: First part of every logged key.
        track_updates: Measure the update ratio ``||dw||/||w||`` of the step actually taken
            (keeps one scratch copy of the monitored parameters). If False, the rules use
            ``lr * ||g|| / ||w||`` instead and ``update_ratio`` is not logged.
        histogram_every_n_epochs: Log per-stream weight and gradient histograms at the first
            logged step of every this many epochs (TensorBoard only). ``None`` disables.
        verbose: Print the recommendations to the console (rank zero) every epoch.
        compare_streams: Compare the streams with each other: the ``dominant``, ``slow`` and
            ``weight_growth`` rules. ``None`` reads the module's ``parts_are_peers`` attribute
            (True when it has none). Peers are parallel streams that should learn at comparable
            speeds (RGB and depth encoders); parts in series are not (a pretrained backbone and a
            fresh head: a 10x lower backbone lr is a design choice, not a slow stream), and for
            them only the per-part rules apply.

    Raises:
        ValueError: For an empty or malformed ``streams`` mapping, a bad stream name, a bad
            pattern, or a negative interval (naming the bad value).

    Logged metrics (``<p>`` is ``prefix``; ``<s>`` a stream; ``<a>_vs_<b>`` every pair of
    streams in declaration order). Every logging step, at ``step = trainer.global_step`` of the
    optimizer step taken:

    * ``<p>/grad_norm/<s>``: L2 norm of the stream's gradients, all tensors as one vector.
    * ``<p>/grad_max/<s>``: largest absolute gradient value.
    * ``<p>/weight_norm/<s>``: L2 norm of the stream's parameters (before the step).
    * ``<p>/weight_mean/<s>``: mean parameter value.
    * ``<p>/rel_grad_norm/<s>``: ``||g|| / ||w||``.
    * ``<p>/update_ratio/<s>``: ``||w_after - w_before|| / ||w_before||``, the step taken
      (with ``track_updates``).
    * ``<p>/nonfinite_grads/<s>``: number of NaN/Inf gradient values.
    * ``<p>/lr/<s>``, ``<p>/weight_decay/<s>``: of the param group holding most of the
      stream's parameters (if an optimizer holds them).
    * ``<p>/grad_norm_ratio/<a>_vs_<b>``, ``<p>/weight_norm_ratio/<a>_vs_<b>``: ratios between
      streams (skipped when the denominator is 0 or not finite).

    Every training epoch, at ``step = trainer.global_step`` after the epoch:

    * ``<p>/learning_speed/<a>_vs_<b>``: conditional learning speed ``log10(mu_a / mu_b)``
      (Wu et al., ICML 2022) with ``mu_m = ||g_m||^2 / ||w_m||^2`` summed over the epoch's
      logged steps - every step with ``log_every_n_steps=1``, a regular sample otherwise -
      and divided by the number of finite steps (the ratio of Wu et al.'s sums when no step is
      missing); positive: a learns faster.
    * ``<p>/train_acc/<s>``, ``<p>/val_acc/<s>``, ``<p>/train_loss/<s>``, ``<p>/val_loss/<s>``:
      accuracy and cross-entropy of the stream's own prediction (protocol).
    * ``<p>/acc_gap/<s>`` (train - val), ``<p>/loss_gap/<s>`` (val - train),
      ``<p>/overfit_score/<s>`` (their sum; < 0.5 healthy, > 1 significant).
    * ``<p>/ogr/<s>``: overfitting-to-generalisation ratio ``|dO/dG|`` since the previous
      validated epoch, ``O = L_val - L_train``, ``dG`` the drop in ``L_val`` (Wang et al.,
      CVPR 2020); skipped while ``dG`` is ~0.
    * ``<p>/true_class_score/<s>``: mean softmax probability of the true class (train).
    * ``<p>/discrepancy_ratio/<s>``: OGM-GE discrepancy ratio, the stream's true-class score
      over the mean of the others' (Peng et al., CVPR 2022); > 1: the stream dominates.
    * ``<p>/fusion/<metric>/<s>``: the module's ``fusion_internals()`` (e.g. ``weight``,
      ``gate``), averaged over ranks.
    * ``<p>/alerts/<s>``: number of active warnings naming the stream.
    * ``<p>/recommendations`` (TensorBoard text): the advice, one bullet each.
    * ``<p>/hist/weights/<s>``, ``<p>/hist/grads/<s>`` (histograms, optional).

    A TensorBoard custom-scalars layout puts every metric on one chart with all streams
    (categories ``<p>: gradients``, ``<p>: weights and updates``, ``<p>: overfitting``,
    ``<p>: balance``, ``<p>: train vs val``, ``<p>: fusion``). :attr:`history` keeps one value
    per epoch and key: every epoch metric above, the epoch means over logged steps of
    ``grad_norm``, ``rel_grad_norm``, ``weight_norm`` and ``update_ratio``, and the epoch's
    total of ``nonfinite_grads``.

    The epoch metrics and the advice are computed at the end-of-epoch validation when there is
    one (so a checkpoint saved after it holds them), else at the end of the training epoch.

    Example::

        from lightning.pytorch import Trainer
        from mslightning.callbacks import StreamMonitor

        monitor = StreamMonitor(streams={"rgb": "rgb_net.*", "depth": "depth_net.*"})
        trainer = Trainer(callbacks=[monitor], max_epochs=10)
        trainer.fit(model, datamodule)
        print(monitor.summary())
        for advice in monitor.get_recommendations():
            print(advice)
    """

    def __init__(
        self,
        streams: Mapping[str, Patterns] | None = None,
        log_every_n_steps: int | None = None,
        thresholds: StreamThresholds | None = None,
        prefix: str = "streams",
        track_updates: bool = True,
        histogram_every_n_epochs: int | None = None,
        verbose: bool = True,
        compare_streams: bool | None = None,
    ) -> None:
        super().__init__()
        self.streams: dict[str, list[str]] | None = (
            None if streams is None else self._validate_streams(streams, "streams")
        )
        if log_every_n_steps is not None and (
            isinstance(log_every_n_steps, bool) or not isinstance(log_every_n_steps, int) or log_every_n_steps < 0
        ):
            raise ValueError(f"log_every_n_steps must be None or an int >= 0, got {log_every_n_steps!r}.")
        if histogram_every_n_epochs is not None and (
            isinstance(histogram_every_n_epochs, bool)
            or not isinstance(histogram_every_n_epochs, int)
            or histogram_every_n_epochs < 1
        ):
            raise ValueError(f"histogram_every_n_epochs must be None or an int >= 1, got {histogram_every_n_epochs!r}.")
        if not isinstance(prefix, str) or not prefix or prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"prefix must be a non-empty string without leading/trailing '/', got {prefix!r}.")
        if thresholds is not None and not isinstance(thresholds, StreamThresholds):
            raise ValueError(f"thresholds must be a StreamThresholds, got {type(thresholds).__name__}.")
        self.log_every_n_steps = log_every_n_steps
        self.thresholds = thresholds or StreamThresholds()
        self.prefix = prefix
        self.track_updates = track_updates
        if compare_streams is not None and not isinstance(compare_streams, bool):
            raise ValueError(f"compare_streams must be None, True or False, got {compare_streams!r}.")
        self.compare_streams = compare_streams
        self._compare = True if compare_streams is None else compare_streams
        self.histogram_every_n_epochs = histogram_every_n_epochs
        self.verbose = verbose

        self.history: dict[str, list[tuple[int, float]]] = {}
        """Logged key -> ``[(epoch, value), ...]``; step metrics as epoch means."""
        self.recommendations: list[Recommendation] = []
        """The latest epoch's advice."""
        self.recommendation_history: list[tuple[int, list[Recommendation]]] = []
        """``[(epoch, advice), ...]`` for every epoch so far."""
        self.latest: dict[str, float] = {}
        """The values of the latest logging step and epoch, by logged key."""

        self._advisor = Advisor(self.thresholds)
        self._resolved: dict[str, list[str]] | None = None
        self._names: dict[str, list[str]] = {}
        self._bindings: dict[str, _Binding] = {}
        self._bind_deferred = False
        self._pending: dict[str, Any] | None = None
        self._acc: dict[str, _EpochAccumulator] = {}
        self._initial_weight_norm: dict[str, float] = {}
        self._previous_losses: dict[str, tuple[float, float]] = {}
        self._metrics: dict[str, dict[str, nn.ModuleDict]] = {stage: {} for stage in _STAGES}
        self._val_result: tuple[int, dict[str, dict[str, Tensor]]] | None = None
        self._protocol_missing_reported = False
        self._missing_heads_reported = False
        self._soft_targets_reported = False
        self._logger_reported = False
        self._histogram_epoch: int | None = None

    # ------------------------------------------------------------------ configuration

    @staticmethod
    def _validate_streams(streams: Mapping[str, Patterns], origin: str) -> dict[str, list[str]]:
        if not isinstance(streams, Mapping) or not streams:
            raise ValueError(
                f"{origin} must be a non-empty mapping stream name -> parameter-name pattern(s), got {streams!r}."
            )
        resolved = {}
        for name, patterns in streams.items():
            check_stream_name(name, origin)
            try:
                resolved[name] = as_pattern_list(patterns)
            except ValueError as err:
                raise ValueError(f"{origin}[{name!r}]: {err}") from err
        return resolved

    @property
    def stream_names(self) -> list[str]:
        """The monitored stream names (after setup when they come from the module)."""
        streams = self._resolved or self.streams
        return list(streams) if streams else []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            streams=None if self.streams is None else sorted(self.streams), prefix=self.prefix
        )

    def _resolve_streams(self, pl_module: pl.LightningModule) -> dict[str, list[str]]:
        if self.streams is not None:
            return self.streams
        declared = getattr(pl_module, "stream_patterns", None)
        if declared is None:
            names = [name for name, _ in pl_module.named_parameters()]
            raise ValueError(
                f"StreamMonitor needs streams: pass StreamMonitor(streams={{'rgb': 'rgb_net.*', ...}}) or "
                f"give {type(pl_module).__name__} a `stream_patterns` attribute (stream name -> patterns). "
                f"Its parameters are named {describe_names(names)}."
            )
        return self._validate_streams(declared, f"{type(pl_module).__name__}.stream_patterns")

    def _match(self, pl_module: pl.LightningModule) -> dict[str, list[str]]:
        """Stream -> matched parameter names; raises for empty streams and overlaps."""
        streams = self._resolve_streams(pl_module)
        all_names = [name for name, _ in pl_module.named_parameters()]
        matched = {stream: select_names(all_names, patterns) for stream, patterns in streams.items()}
        empty = [stream for stream, names in matched.items() if not names]
        if empty:
            details = "; ".join(f"{s!r} -> {streams[s]}" for s in empty)
            raise ValueError(
                f"StreamMonitor: stream(s) {details} match no parameter of {type(pl_module).__name__}. "
                f"Its parameters are named {describe_names(all_names)}."
            )
        owner: dict[str, str] = {}
        for stream, names in matched.items():
            for name in names:
                if name in owner:
                    raise ValueError(
                        f"StreamMonitor: parameter {name!r} is matched by stream {owner[name]!r} "
                        f"({streams[owner[name]]}) and by stream {stream!r} ({streams[stream]}); "
                        "each parameter may belong to one stream only."
                    )
                owner[name] = stream
        self._resolved = streams
        return matched

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != TrainerFn.FITTING:
            return
        # Modules that build their layers in `configure_model` have no parameters yet: checked
        # again in on_train_start.
        if any(True for _ in pl_module.parameters()):
            self._names = self._match(pl_module)

    def _bind(self, trainer: pl.Trainer, pl_module: pl.LightningModule, defer_lazy: bool = True) -> None:
        self._names = self._match(pl_module)
        # Lazy modules (nn.LazyConv2d, ...) get their shapes in the first forward: bind after it
        # (a lazy module that never runs counts 0 elements).
        self._bind_deferred = defer_lazy and any(is_lazy(p) for p in pl_module.parameters())
        if self._bind_deferred:
            return
        if self.compare_streams is None:
            self._compare = bool(getattr(pl_module, "parts_are_peers", True))
        params = dict(pl_module.named_parameters())
        location: dict[int, tuple[int, int]] = {}
        group_names: dict[tuple[int, int], str] = {}
        for oi, optimizer in enumerate(trainer.optimizers):
            for gi, group in enumerate(optimizer.param_groups):
                default = f"{type(optimizer).__name__}/pg{gi + 1}"
                group_names[(oi, gi)] = str(group.get("name", default))
                for p in group["params"]:
                    location.setdefault(id(p), (oi, gi))
        stream_of_group: dict[tuple[int, int], set[str]] = {}
        bindings = {}
        for stream, names in self._names.items():
            ps = [params[n] for n in names]
            counts: dict[tuple[int, int], int] = {}
            for p in ps:
                if id(p) in location:
                    counts[location[id(p)]] = counts.get(location[id(p)], 0) + _numel(p)
                    stream_of_group.setdefault(location[id(p)], set()).add(stream)
            main = max(counts, key=counts.__getitem__) if counts else None
            bindings[stream] = _Binding(
                names=names,
                params=ps,
                trainable=[p for p in ps if p.requires_grad],
                numel=sum(_numel(p) for p in ps),
                group=main,
                group_name=group_names.get(main) if main is not None else None,
                optimized=bool(counts),
            )
        for stream, binding in bindings.items():
            if binding.group is not None:
                binding.shares_with = sorted(stream_of_group[binding.group] - {stream})
        self._bindings = bindings
        for stream in bindings:
            self._acc.setdefault(stream, _EpochAccumulator())

    # ------------------------------------------------------------------ keys and layout

    def _key(self, metric: str, stream: str | None = None) -> str:
        return f"{self.prefix}/{metric}" if stream is None else f"{self.prefix}/{metric}/{stream}"

    def _pairs(self) -> list[tuple[str, str]]:
        names = self.stream_names
        return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]

    def custom_scalar_layout(self) -> Layout:
        """The custom-scalars charts: one chart per metric with a line per stream (or pair).

        Returns:
            ``{category: {chart: ["Multiline", [tag regex, ...]]}}``.
        """
        names = self.stream_names
        pairs = [f"{a}_vs_{b}" for a, b in self._pairs()]
        p = self.prefix

        def charts(metrics: Sequence[str], keys: Sequence[str]) -> dict[str, list[Any]]:
            return {metric: multiline(self._key(metric, k) for k in keys) for metric in metrics if keys}

        steps = [m for m in STEP_METRICS if self.track_updates or m != "update_ratio"]
        gradients = charts(
            [m for m in steps if m in ("grad_norm", "grad_max", "rel_grad_norm", "nonfinite_grads")], names
        )
        gradients.update(charts(["grad_norm_ratio", "learning_speed"], pairs))
        weights = charts([m for m in steps if m not in gradients], names)
        weights.update(charts(["weight_norm_ratio"], pairs))
        layout: Layout = {
            f"{p}: gradients": gradients,
            f"{p}: weights and updates": weights,
            f"{p}: overfitting": charts(
                ["train_acc", "val_acc", "train_loss", "val_loss", "acc_gap", "loss_gap", "overfit_score", "ogr"], names
            ),
            f"{p}: balance": charts(["true_class_score", "discrepancy_ratio", "alerts"], names),
            f"{p}: train vs val": {
                f"{metric} {s}": multiline([self._key(f"train_{metric}", s), self._key(f"val_{metric}", s)])
                for s in names
                for metric in ("acc", "loss")
            },
            f"{p}: fusion": {"fusion internals": multiline([re.escape(self._key("fusion")) + "/.*"], regex=True)},
        }
        return {category: chart for category, chart in layout.items() if chart}

    # ------------------------------------------------------------------ logging helpers

    def _log(self, trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
        self.latest.update(metrics)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def _report_loggers(self, trainer: pl.Trainer) -> None:
        if self._logger_reported:
            return
        self._logger_reported = True
        if not trainer.loggers:
            rank_zero_info(
                "StreamMonitor: the Trainer has no logger; the metrics are kept in StreamMonitor.history "
                "and the advice in StreamMonitor.recommendations only."
            )
        elif not has_tensorboard(trainer):
            rank_zero_info(
                "StreamMonitor: no TensorBoardLogger attached; scalars go to "
                f"{[type(lg).__name__ for lg in trainer.loggers]}, and the custom-scalars layout, the "
                "recommendation text and the histograms are skipped."
            )

    def _should_log_step(self, trainer: pl.Trainer) -> bool:
        every = trainer.log_every_n_steps if self.log_every_n_steps is None else self.log_every_n_steps
        return every > 0 and trainer.global_step % every == 0

    # ------------------------------------------------------------------ fit lifecycle

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._bind(trainer, pl_module)
        self._report_loggers(trainer)
        write_merged_layout(trainer, self)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for binding in self._bindings.values():
            binding.snapshot = None  # free the scratch copy
        self._pending = None

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._acc = {stream: _EpochAccumulator() for stream in self._bindings}
        for metrics in self._metrics["train"].values():
            for metric in metrics.values():
                metric.reset()

    # ------------------------------------------------------------------ step metrics

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        if self._bind_deferred:
            self._bind(trainer, pl_module, defer_lazy=False)  # also gives every stream its accumulator
        if not self._bindings or self._pending is not None or not self._should_log_step(trainer):
            return
        values: list[Tensor] = []
        device: torch.device | None = None
        has_grad: dict[str, bool] = {}
        with torch.no_grad():
            for stream, binding in self._bindings.items():
                grads = [p.grad for p in binding.params if p.grad is not None]
                has_grad[stream] = bool(grads)
                weights = [p.detach() for p in binding.params]
                device = device or weights[0].device
                values.extend(grad_stats(grads))
                values.extend(weight_stats(weights))
                if self.track_updates and binding.trainable:
                    if binding.snapshot is None:
                        binding.snapshot = [torch.empty_like(p) for p in binding.trainable]
                    torch._foreach_copy_(binding.snapshot, [p.detach() for p in binding.trainable])
        hparams: dict[str, float] = {}  # "<knob>/<stream>" -> value known on the host
        hparam_index: dict[str, int] = {}  # "<knob>/<stream>" -> index into `values`
        for stream, binding in self._bindings.items():
            if binding.group is None:
                continue
            group = trainer.optimizers[binding.group[0]].param_groups[binding.group[1]]
            for knob in ("lr", "weight_decay"):
                value = group.get(knob)
                if isinstance(value, Tensor):  # e.g. capturable optimizers: stays on device
                    hparam_index[f"{knob}/{stream}"] = len(values)
                    values.append(value.detach().reshape(()))
                elif value is not None:
                    hparams[f"{knob}/{stream}"] = float(value)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        scale_index = None
        if scaler is not None:  # compared with the scale after the step: a back-off means it was skipped
            scale_index = len(values)
            values.append(_loss_scale(scaler))
        # fused optimizers unscale inside step(): here their gradients still carry the loss scale
        scaled_grads = scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False)
        self._pending = {
            "step": trainer.global_step,
            "values": values,
            "scaler": scaler,
            "scale_index": scale_index,
            "scaled_grads": scaled_grads,
            "device": device,
            "has_grad": has_grad,
            "hparams": hparams,
            "hparam_index": hparam_index,
        }
        self._maybe_histograms(trainer, scaler if scaled_grads else None)

    def _maybe_histograms(self, trainer: pl.Trainer, grad_scaler: Any | None) -> None:
        every = self.histogram_every_n_epochs
        epoch = trainer.current_epoch
        if every is None or epoch % every != 0 or self._histogram_epoch == epoch:
            return
        self._histogram_epoch = epoch
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        with torch.no_grad():
            for stream, binding in self._bindings.items():
                weights = torch.cat([p.detach().flatten().float() for p in binding.params])
                writer.add_histogram(self._key("hist/weights", stream), weights, trainer.global_step)
                grads = [p.grad.detach().flatten().float() for p in binding.params if p.grad is not None]
                if grads:
                    flat = torch.cat(grads) / (grad_scaler.get_scale() if grad_scaler is not None else 1.0)
                    writer.add_histogram(self._key("hist/grads", stream), flat, trainer.global_step)

    def _finish_step(self, trainer: pl.Trainer, batch: Any = None) -> None:
        """Runs after the optimizer step: measure the update, transfer once, derive, log."""
        pending, self._pending = self._pending, None
        assert pending is not None
        values: list[Tensor] = pending["values"]
        device = pending["device"]
        streams = list(self._bindings)
        update_index = len(values)
        if self.track_updates:
            for binding in self._bindings.values():
                if binding.snapshot is not None and binding.trainable:
                    values.append(update_norm(binding.snapshot, binding.trainable))
                else:
                    values.append(torch.zeros((), dtype=torch.float32))
        if pending["scaler"] is not None:
            values.append(_loss_scale(pending["scaler"]))
        host = torch.stack([v.to(device=device, dtype=torch.float32) for v in values]).tolist()  # the one transfer

        skipped = recoverable = False
        scale = 1.0
        if pending["scaler"] is not None:
            scale, scale_after = host[pending["scale_index"]], host[-1]
            # GradScaler backs off exactly when it found NaN/Inf and skipped the step. Above a
            # scale of 1 that is a routine fp16 overflow; below it, the unscaled gradients overflow.
            skipped = scale_after < scale
            recoverable = skipped and scale_after >= 1.0
        metrics: dict[str, float] = {}
        grad_norm: dict[str, float] = {}
        weight_norm: dict[str, float] = {}
        bad_step = False
        for i, stream in enumerate(streams):
            binding = self._bindings[stream]
            gn, gmax, wn, wsum = host[_VALUES_PER_STREAM * i : _VALUES_PER_STREAM * (i + 1)]
            if pending["scaled_grads"]:
                gn, gmax = gn / scale, gmax / scale
            grad_norm[stream], weight_norm[stream] = gn, wn
            nonfinite = 0
            if not (math.isfinite(gn) and math.isfinite(gmax)):
                grads = [p.grad for p in binding.params if p.grad is not None]
                nonfinite = max(int(count_nonfinite(grads).item()), 1)  # rare: only on a bad step
                bad_step = bad_step or not recoverable
            rel = safe_ratio(gn, wn)
            stream_metrics = {
                "grad_norm": gn,
                "grad_max": gmax,
                "weight_norm": wn,
                "weight_mean": wsum / binding.numel,
                "nonfinite_grads": float(nonfinite),
            }
            if rel is not None:
                stream_metrics["rel_grad_norm"] = rel
            update = None
            if self.track_updates:
                update = safe_ratio(host[update_index + i], wn)
                if update is not None:
                    stream_metrics["update_ratio"] = update
            for knob in ("lr", "weight_decay"):
                key = f"{knob}/{stream}"
                if key in pending["hparam_index"]:
                    stream_metrics[knob] = host[pending["hparam_index"][key]]
                elif key in pending["hparams"]:
                    stream_metrics[knob] = pending["hparams"][key]
            if update is None and "lr" in stream_metrics and rel is not None:
                update = stream_metrics["lr"] * rel  # proxy for the rules without track_updates
            metrics.update({self._key(name, stream): value for name, value in stream_metrics.items()})
            if skipped:
                update = None  # the step was not taken: no stream moved
            self._accumulate(stream, pending["has_grad"][stream], gn, wn, rel, update, nonfinite, recoverable)
        if bad_step:  # which stream's inputs are to blame (the advice's nonfinite rule); only on a bad step
            for stream, count in _nonfinite_inputs(batch, streams).items():
                self._acc[stream].nonfinite_inputs += count
                self._acc[stream].inputs_scanned = True
        for a, b in self._pairs():
            for metric, source in (("grad_norm_ratio", grad_norm), ("weight_norm_ratio", weight_norm)):
                ratio = safe_ratio(source[a], source[b])
                if ratio is not None:
                    metrics[self._key(metric, f"{a}_vs_{b}")] = ratio
        self._log(trainer, metrics, pending["step"])

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
        acc = self._acc.setdefault(stream, _EpochAccumulator())
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
            self._initial_weight_norm.setdefault(stream, weight_norm)
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

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._update_metrics("train", outputs)
        if self._pending is not None:
            self._finish_step(trainer, batch)

    # ------------------------------------------------------------------ per-stream predictions

    def _parse_protocol(self, outputs: Any) -> tuple[dict[str, Tensor], Tensor] | None:
        if not isinstance(outputs, Mapping) or "stream_logits" not in outputs or "target" not in outputs:
            if not self._protocol_missing_reported and not self._compare:
                self._protocol_missing_reported = True
                rank_zero_info(
                    f"StreamMonitor: the parts {self.stream_names} are in series (a backbone and its head), not "
                    "parallel streams, so per-part accuracy, loss and overfitting metrics do not apply: gradient, "
                    "weight and update metrics are logged per part; compare the model's own train and val "
                    "metrics for overfitting."
                )
            elif not self._protocol_missing_reported:
                self._protocol_missing_reported = True
                rank_zero_warn(
                    "StreamMonitor: training_step/validation_step do not return the per-stream prediction "
                    "protocol {'loss', 'target': (B,) int64, 'stream_logits': {stream: (B, K) logits}}; "
                    "gradient and weight metrics still work, the per-stream accuracy/loss/overfitting "
                    "metrics (acc, loss, gaps, overfit_score, ogr, true_class_score, discrepancy_ratio) "
                    "are skipped."
                )
            return None
        stream_logits, target = outputs["stream_logits"], outputs["target"]
        if not isinstance(stream_logits, Mapping):
            raise ValueError(
                f"'stream_logits' must map stream name -> (B, K) logits, got {type(stream_logits).__name__}."
            )
        if isinstance(target, Tensor) and target.is_floating_point():
            if not self._soft_targets_reported:
                self._soft_targets_reported = True
                rank_zero_warn(
                    f"StreamMonitor: 'target' is a float tensor {tuple(target.shape)} (soft labels?); the per-stream "
                    "accuracy/loss/overfitting metrics need class indices and are skipped. Return (B,) int64 class "
                    "indices as 'target' to get them."
                )
            return None
        if not isinstance(target, Tensor) or target.ndim != 1:
            shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
            raise ValueError(f"'target' must be a (B,) integer tensor of class indices, got {shape}.")
        unknown = [name for name in stream_logits if name not in self._bindings]
        if unknown:
            raise ValueError(
                f"'stream_logits' has stream(s) {unknown} that StreamMonitor does not monitor; its streams are "
                f"{self.stream_names}."
            )
        for name, logits in stream_logits.items():
            if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != target.shape[0]:
                shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ValueError(
                    f"'stream_logits'[{name!r}] must be (B, K) logits with B = {target.shape[0]} (from 'target'), "
                    f"got {shape}."
                )
        missing = [name for name in self._bindings if name not in stream_logits]
        if missing and not self._missing_heads_reported:
            self._missing_heads_reported = True
            rank_zero_warn(
                f"StreamMonitor: 'stream_logits' has no prediction for stream(s) {missing}; their accuracy, loss "
                "and overfitting metrics are skipped."
            )
        return dict(stream_logits), target

    def _stage_metrics(self, stage: str, stream: str, logits: Tensor) -> nn.ModuleDict:
        metrics = self._metrics[stage].get(stream)
        if metrics is None:
            metrics = nn.ModuleDict(
                {
                    "acc": MulticlassAccuracy(
                        logits.shape[1], average="micro", ignore_index=IGNORE_INDEX, validate_args=False
                    ),
                    "loss": MeanMetric(nan_strategy="disable"),
                    "score": MeanMetric(nan_strategy="disable"),
                }
            ).to(logits.device)
            self._metrics[stage][stream] = metrics
        return metrics

    @torch.no_grad()
    def _update_metrics(self, stage: str, outputs: Any) -> None:
        if not self._bindings:
            return
        parsed = self._parse_protocol(outputs)
        if parsed is None:
            return
        stream_logits, target = parsed
        target = target.detach().long()
        # IGNORE_INDEX targets (cross_entropy's default) weigh 0; weights, not indexing, so no host sync
        weight = (target != IGNORE_INDEX).float()
        index = target.clamp(min=0)
        for stream, logits in stream_logits.items():
            logits = logits.detach().float()
            if logits.shape[1] == 1:  # one binary logit z: the two classes' logits are (0, z)
                logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
            metrics = self._stage_metrics(stage, stream, logits)
            metrics["acc"].update(logits, target)
            metrics["loss"].update(F.cross_entropy(logits, index, reduction="none"), weight)
            metrics["score"].update(logits.softmax(dim=1).gather(1, index[:, None]).squeeze(1), weight)

    def _compute_stage(self, stage: str) -> dict[str, dict[str, Tensor]]:
        """Synced (all ranks) epoch values per stream, as device tensors."""
        out = {}
        for stream, metrics in self._metrics[stage].items():
            if metrics["acc"].update_count == 0:
                continue
            out[stream] = {name: metric.compute().float().reshape(()) for name, metric in metrics.items()}
        return out

    def _fitting(self, trainer: pl.Trainer) -> bool:
        return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for metrics in self._metrics["val"].values():
            for metric in metrics.values():
                metric.reset()

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._fitting(trainer) and dataloader_idx == 0:
            self._update_metrics("val", outputs)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fitting(trainer):
            result = self._compute_stage("val")
            if result:
                self._val_result = (trainer.current_epoch, result)

    # ------------------------------------------------------------------ epoch metrics and advice

    def _fusion_internals(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        method = getattr(pl_module, "fusion_internals", None)
        if not callable(method):
            return {}
        with torch.no_grad():
            internals = method()
        where = f"{type(pl_module).__name__}.fusion_internals()"
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
                flat[self._key(f"fusion/{metric}", stream)] = value.detach().float().reshape(())
        if not flat:
            return {}
        stacked = trainer.strategy.reduce(torch.stack(list(flat.values())), reduce_op="mean")  # all ranks
        return dict(zip(flat, stacked.unbind(), strict=True))

    @override
    def end_of_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Epoch metrics, advice and history (once per epoch, see :class:`EpochEndCallback`)."""
        epoch = trainer.current_epoch
        if not self._bindings:
            return
        train = self._compute_stage("train")
        val = self._val_result[1] if self._val_result is not None and self._val_result[0] == epoch else {}
        fusion = self._fusion_internals(trainer, pl_module)
        device_values: dict[str, Tensor] = dict(fusion)
        for stage, result in (("train", train), ("val", val)):
            for stream, values in result.items():
                for name, value in values.items():
                    device_values[f"{stage}/{name}/{stream}"] = value
        host: dict[str, float] = {}
        if device_values:
            device = next(iter(device_values.values())).device
            flat = torch.stack([v.to(device) for v in device_values.values()]).tolist()  # the one transfer
            host = dict(zip(device_values, flat, strict=True))

        metrics: dict[str, float] = {k: v for k, v in host.items() if k.startswith(self._key("fusion") + "/")}
        overfit: dict[str, float] = {}
        acc_gaps: dict[str, float] = {}
        ogrs: dict[str, float] = {}
        scores: dict[str, float] = {}
        accuracy: dict[str, dict[str, float]] = {"train": {}, "val": {}}
        for stream in self._bindings:
            tr = {
                name: host[f"train/{name}/{stream}"]
                for name in ("acc", "loss", "score")
                if f"train/{name}/{stream}" in host
            }
            va = {
                name: host[f"val/{name}/{stream}"]
                for name in ("acc", "loss", "score")
                if f"val/{name}/{stream}" in host
            }
            for stage, values in (("train", tr), ("val", va)):
                if values:
                    accuracy[stage][stream] = values["acc"]
                    metrics[self._key(f"{stage}_acc", stream)] = values["acc"]
                    metrics[self._key(f"{stage}_loss", stream)] = values["loss"]
            if tr:
                scores[stream] = tr["score"]
                metrics[self._key("true_class_score", stream)] = tr["score"]
            if tr and va:
                acc_gap = tr["acc"] - va["acc"]
                loss_gap = va["loss"] - tr["loss"]
                overfit[stream] = overfitting_score(acc_gap, loss_gap)
                acc_gaps[stream] = acc_gap
                metrics[self._key("acc_gap", stream)] = acc_gap
                metrics[self._key("loss_gap", stream)] = loss_gap
                metrics[self._key("overfit_score", stream)] = overfit[stream]
                previous = self._previous_losses.get(stream)
                if previous is not None:
                    ogr = overfitting_to_generalization_ratio(previous[0], previous[1], tr["loss"], va["loss"])
                    if ogr is not None:
                        ogrs[stream] = ogr
                        metrics[self._key("ogr", stream)] = ogr
                self._previous_losses[stream] = (tr["loss"], va["loss"])
        discrepancy = discrepancy_ratios(scores)
        metrics.update({self._key("discrepancy_ratio", s): v for s, v in discrepancy.items()})
        mean_mu = {s: acc.mu / acc.grad_steps for s, acc in self._acc.items() if acc.grad_steps}
        for a, b in self._pairs():
            # Means, not Wu et al.'s sums: equal when both streams have every logged step, and
            # unbiased when a non-finite step is missing from one of them.
            speed = conditional_learning_speed(mean_mu.get(a, 0.0), mean_mu.get(b, 0.0))
            if speed is not None:
                metrics[self._key("learning_speed", f"{a}_vs_{b}")] = speed

        evidence = self._evidence(trainer, epoch, overfit, acc_gaps, ogrs, discrepancy, accuracy)
        self.recommendations = self._advisor.advise(evidence)
        self.recommendation_history.append((epoch, list(self.recommendations)))
        for stream in self._bindings:
            metrics[self._key("alerts", stream)] = float(
                sum(r.stream == stream and r.severity == "warning" for r in self.recommendations)
            )
        self._log(trainer, metrics, trainer.global_step)
        self._record_history(epoch, metrics)
        self._publish_advice(trainer, epoch)

    def _evidence(
        self,
        trainer: pl.Trainer,
        epoch: int,
        overfit: dict[str, float],
        acc_gaps: dict[str, float],
        ogrs: dict[str, float],
        discrepancy: dict[str, float],
        accuracy: dict[str, dict[str, float]],
    ) -> EpochEvidence:
        grad_norm, update, largest, growth, nonfinite, lr, wd = {}, {}, {}, {}, {}, {}, {}
        nonfinite_inputs = {s: a.nonfinite_inputs for s, a in self._acc.items() if a.inputs_scanned}
        if nonfinite_inputs:  # each rank saw its own batches; every rank scanned (all-reduced NaN gradients)
            counts = torch.tensor(
                list(nonfinite_inputs.values()), dtype=torch.int64, device=trainer.strategy.root_device
            )
            summed = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
            nonfinite_inputs = {s: int(c) for s, c in zip(nonfinite_inputs, summed, strict=True)}
        pretrained = getattr(trainer.lightning_module, "pretrained_parts", ()) or ()
        pretrained = frozenset([pretrained] if isinstance(pretrained, str) else pretrained)
        if not pretrained <= set(self._bindings):
            raise ValueError(
                f"{type(trainer.lightning_module).__name__}.pretrained_parts names "
                f"{sorted(pretrained - set(self._bindings))}, which are not monitored parts; the parts are "
                f"{self.stream_names}."
            )
        frozen, not_optimized = set(), set()
        for stream, binding in self._bindings.items():
            acc = self._acc[stream]
            if acc.steps:
                nonfinite[stream] = acc.nonfinite  # without routine fp16 overflows
                if not binding.trainable or (acc.grad_steps == 0 and acc.nonfinite + acc.overflow_steps == 0):
                    frozen.add(stream)
                elif not binding.optimized:
                    not_optimized.add(stream)
                if acc.grad_steps:
                    grad_norm[stream] = acc.grad_norm / acc.grad_steps
                if acc.update_steps:
                    update[stream] = acc.update_ratio / acc.update_steps
                    if self.track_updates:
                        largest[stream] = acc.max_update_ratio
                initial = self._initial_weight_norm.get(stream)
                if acc.last_weight_norm is not None and initial:
                    growth[stream] = acc.last_weight_norm / initial
            if binding.group is not None:
                group = trainer.optimizers[binding.group[0]].param_groups[binding.group[1]]
                for knob, target in (("lr", lr), ("weight_decay", wd)):
                    value = group.get(knob)
                    if value is not None and not isinstance(value, Tensor):
                        target[stream] = float(value)
        return EpochEvidence(
            epoch=epoch,
            streams=list(self._bindings),
            grad_norm=grad_norm,
            update_ratio=update,
            max_update_ratio=largest,
            weight_growth=growth,
            nonfinite=nonfinite,
            nonfinite_inputs=nonfinite_inputs,
            pretrained=pretrained,
            frozen=frozenset(frozen),
            not_optimized=frozenset(not_optimized),
            overfit_score=overfit,
            acc_gap=acc_gaps,
            ogr=ogrs,
            discrepancy=discrepancy,
            lr=lr,
            weight_decay=wd,
            group={s: b.group_name for s, b in self._bindings.items() if b.group_name is not None},
            shares_group_with={s: b.shares_with for s, b in self._bindings.items()},
            compare_streams=self._compare,
            update_ratio_is_proxy=not self.track_updates,
            train_acc=accuracy["train"],
            val_acc=accuracy["val"],
            chance={
                stream: 1.0 / metrics["acc"].num_classes
                for stream, metrics in self._metrics["train"].items()
                if stream in accuracy["train"]
            },
            predictions_seen=bool(self._metrics["train"] or self._metrics["val"]),
        )

    def _record_history(self, epoch: int, epoch_metrics: dict[str, float]) -> None:
        record = dict(epoch_metrics)
        for stream, acc in self._acc.items():
            if acc.steps:
                record[self._key("nonfinite_grads", stream)] = float(acc.nonfinite + acc.overflow_values)
            if acc.weight_steps:
                record[self._key("weight_norm", stream)] = acc.weight_norm / acc.weight_steps
            if acc.grad_steps:
                record[self._key("grad_norm", stream)] = acc.grad_norm / acc.grad_steps
                record[self._key("rel_grad_norm", stream)] = acc.rel_grad_norm / acc.grad_steps
            if acc.update_steps and self.track_updates:
                record[self._key("update_ratio", stream)] = acc.update_ratio / acc.update_steps
        for key, value in record.items():
            self.history.setdefault(key, []).append((epoch, value))

    def _publish_advice(self, trainer: pl.Trainer, epoch: int) -> None:
        writer = tensorboard_writer(trainer)
        if writer is not None:
            text = "\n".join(
                f"* {r.message}" if r.kind == "healthy" else f"* **{r.kind}** ({r.severity}): {r.message}"
                for r in self.recommendations
            )
            writer.add_text(self._key("recommendations"), f"Epoch {epoch}:\n\n{text}", trainer.global_step)
        if self.verbose:
            lines = "\n".join(f"  - {r.message}" for r in self.recommendations)
            rank_zero_info(f"StreamMonitor, epoch {epoch}:\n{lines}")

    # ------------------------------------------------------------------ public read-out

    def get_recommendations(self) -> list[str]:
        """The latest epoch's advice as plain strings.

        Returns:
            One message per active recommendation (a ``healthy`` or ``not_measured`` message when none warns).
        """
        return [r.message for r in self.recommendations]

    def summary(self) -> str:
        """A plain-text table of the latest epoch per stream, followed by the advice.

        Returns:
            The summary (empty-ish before the first epoch ends).
        """
        columns = [
            ("grad_norm", "grad"),
            ("rel_grad_norm", "|g|/|w|"),
            ("update_ratio", "|dw|/|w|"),
            ("train_acc", "train acc"),
            ("val_acc", "val acc"),
            ("overfit_score", "overfit"),
            ("ogr", "OGR"),
            ("discrepancy_ratio", "rho"),
        ]
        width = max([len("stream"), *(len(s) for s in self.stream_names)])
        header = "stream".ljust(width) + "".join(f"{title:>11}" for _, title in columns)
        rows = [header]
        for stream in self.stream_names:
            cells = []
            for metric, _ in columns:
                series = self.history.get(self._key(metric, stream))
                cells.append(f"{series[-1][1]:>11.4g}" if series else f"{'-':>11}")
            rows.append(stream.ljust(width) + "".join(cells))
        epochs = [points[-1][0] for points in self.history.values() if points]
        title = f"StreamMonitor summary (epoch {max(epochs)})" if epochs else "StreamMonitor summary (no epoch yet)"
        advice = "\n".join(f"  - {r.message}" for r in self.recommendations) or "  (none yet)"
        return f"{title}\n" + "\n".join(rows) + f"\nRecommendations:\n{advice}"

    # ------------------------------------------------------------------ state

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": {key: [list(point) for point in points] for key, points in self.history.items()},
            "advisor": self._advisor.state_dict(),
            "initial_weight_norm": dict(self._initial_weight_norm),
            "previous_losses": {stream: list(losses) for stream, losses in self._previous_losses.items()},
            "recommendation_history": [
                [epoch, [asdict(r) for r in recs]] for epoch, recs in self.recommendation_history
            ],
            **self.epoch_end_state(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {
            key: [(int(epoch), float(value)) for epoch, value in points]
            for key, points in state_dict.get("history", {}).items()
        }
        self._advisor.load_state_dict(state_dict.get("advisor", {}))
        self._initial_weight_norm = dict(state_dict.get("initial_weight_norm", {}))
        self._previous_losses = {
            stream: (float(losses[0]), float(losses[1]))
            for stream, losses in state_dict.get("previous_losses", {}).items()
        }
        self.recommendation_history = [
            (int(epoch), [Recommendation(**r) for r in recs])
            for epoch, recs in state_dict.get("recommendation_history", [])
        ]
        self.recommendations = list(self.recommendation_history[-1][1]) if self.recommendation_history else []
        self.load_epoch_end_state(state_dict)
