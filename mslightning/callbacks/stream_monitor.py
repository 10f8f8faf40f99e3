"""StreamMonitor: per-stream gradients, weights, learning speed and overfitting, with advice.

A thin callback over trainer-free parts: which parameters a stream owns
(:mod:`mslightning.streams`), step measurements (:mod:`~mslightning.callbacks.step_statistics`),
per-stream prediction scores (:mod:`~mslightning.callbacks.prediction_tally`), epoch metrics and
evidence (:mod:`~mslightning.callbacks.epoch_evidence`), advice
(:mod:`~mslightning.callbacks.advice`) and the metric list with its presentation
(:mod:`~mslightning.callbacks.monitor_metrics`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.nn.parameter import is_lazy
from torch.optim import Optimizer
from typing_extensions import override

from mslightning.callbacks._distributed import collectives, mean_over_ranks, sum_over_ranks
from mslightning.callbacks._lifecycle import EpochEndCallback, epoch_log_step, is_end_of_epoch_validation
from mslightning.callbacks._tensorboard import (
    Layout,
    TagOf,
    has_tensorboard,
    tag_of,
    tensorboard_logger,
    tensorboard_writer,
    write_merged_layout,
)
from mslightning.callbacks.advice import Advisor, Recommendation, StreamThresholds, Verdict
from mslightning.callbacks.epoch_evidence import build_evidence, epoch_metrics, fusion_internals, step_means
from mslightning.callbacks.monitor_metrics import (
    EVIDENCE_ONLY,
    METRICS,
    NOTES,
    THRESHOLD_RUNS,
    custom_scalar_layout,
    format_summary,
    markdown_table,
    metric_key,
    metrics_table,
    report_charts,
    resolve,
    threshold_lines,
    verdict_records,
    verdict_rows,
)
from mslightning.callbacks.prediction_tally import PredictionTally, read_step_outputs
from mslightning.callbacks.report import write_report
from mslightning.callbacks.step_statistics import (
    StepStatistics,
    StreamBinding,
    bind_streams,
    optimizer_names,
    stream_histograms,
)
from mslightning.optim.patterns import Patterns, describe_names
from mslightning.streams import (
    StreamOutputs,
    check_stream_patterns,
    match_streams,
    stream_patterns_of,
)

__all__ = ["StreamMonitor"]

_STAGES = ("train", "val")


class StreamMonitor(EpochEndCallback):
    r"""Watch each stream of a multi-stream network separately and say what to change.

    Drop it into any ``Trainer``. Streams are chosen by patterns on parameter names
    (:mod:`mslightning.optim.patterns`), given here or declared by the module as
    ``stream_patterns``. Gradients are read in ``on_before_optimizer_step``, where they are final
    (accumulated, unscaled, all-reduced), before clipping. Per-stream predictions come from the
    *per-stream output protocol* (:mod:`mslightning.streams`): ``training_step`` and
    ``validation_step`` return ``{"loss": loss, "stream_outputs": ClassificationOutputs(...)}``
    (or ``RankingOutputs`` / ``PoissonOutputs``), or the dict form ``{"loss", "target": (B,) int64
    (-100 ignored), "stream_logits": {stream: (B, K) or (B, 1) logits}}``. From them the monitor
    scores each stream's own prediction over the whole epoch (accuracy, pair accuracy or
    correlation, and the task's loss); float (soft) classification targets skip this with one
    warning. Without them the gradient and weight metrics still work. A module with
    ``fusion_internals() -> {metric: {stream: 0-dim tensor}}`` gets those logged each epoch; one
    with ``pretrained_parts`` (part names) has those parts judged as pretrained ones.

    Step metrics are measured on the steps Lightning logs (``(step + 1) % log_every_n_steps == 0``)
    and written at Lightning's step, so they share the x-axis of the module's ``self.log`` values;
    epoch metrics at the step of the epoch's last batch, and into ``trainer.callback_metrics`` (so
    ``EarlyStopping(monitor="streams/overfit_score/rgb")`` works; after a validation they are there
    before any callback's ``on_validation_end``).

    Cost: a logging step reads each stream's gradients and weights a few times and, with
    ``track_updates``, copies the weights (see ``benchmarks/README.md``); other steps only keep
    references to the per-stream predictions, which are scored every 32 batches at once.

    Args:
        streams: Stream name -> parameter-name pattern(s); ``None`` reads the module's
            ``stream_patterns``. A stream matching no parameter, or a parameter matched by two
            streams, is an error at setup.
        log_every_n_steps: Measure on the batches Lightning logs at with this interval (counted in
            batches that stepped an optimizer, as ``self.log`` counts them); ``None`` uses the
            Trainer's; 0 disables the step metrics (and the gradient/update advice).
        thresholds: Thresholds and hysteresis of the advice.
        prefix: First part of every logged key.
        track_updates: Measure the update ratio ``||dw||/||w||`` of the step taken (one scratch
            copy of the monitored parameters); if False, the advice uses ``lr * ||g|| / ||w||``.
        histogram_every_n_epochs: Log weight and gradient histograms at the first logged step of
            every this many epochs (TensorBoard only); ``None`` disables.
        verbose: Print the advice to the console (rank zero) every epoch.
        compare_streams: Compare streams with each other (``dominant``, ``slow``,
            ``weight_growth``); ``None`` reads the module's ``parts_are_peers`` (default True).
            Parts in series (a pretrained backbone and a fresh head) are not peers.
        report: At the end of ``fit``, write :meth:`write_report` to ``<log_dir>/stream_report.html``
            (rank zero): the verdict table, the advice and per-stream curves with thresholds, for
            reading without TensorBoard.

    Raises:
        ValueError: For a malformed ``streams`` mapping, a bad stream name or pattern, or a bad
            interval, prefix, thresholds or ``report`` (naming the bad value); at setup, for a
            module's ``stream_metric_keys`` that names no per-stream metric or has no ``{stream}``.

    Logged metrics (``<p>`` is ``prefix``; ``<s>`` a stream; ``<a>_vs_<b>`` every pair of streams
    in declaration order; ``{score}``/``{confidence}`` are ``acc``/``true_class_score``,
    ``pair_acc``/``preferred_prob`` or ``corr``/``corr_clipped`` by task; see
    :data:`~mslightning.callbacks.monitor_metrics.METRICS`):

    {metrics_table}
    Not logged (kept in :attr:`latest`, :attr:`history` and ``trainer.callback_metrics``): each
    stream's ``lr`` and ``weight_decay`` (a learning-rate monitor logs the optimizer's own), and the
    metrics the module logs itself, declared as ``stream_metric_keys`` (monitor metric -> the
    module's key with ``{stream}``; :class:`~mslightning.modules.MultiStreamClassifier` declares
    ``train_{score}``, ``val_{score}``, ``train_loss`` and ``val_loss``). With a logger that has a
    run per stream (:class:`~mslightning.loggers.StreamTensorBoardLogger`) the thresholds of the
    advice are logged as runs ``threshold_upper``/``threshold_lower`` under the tags of their metrics.

    Also: ``<p>/fusion/<metric>/<s>`` (the module's ``fusion_internals()``, averaged over ranks),
    ``advice/<p>`` (TensorBoard text: each epoch's verdict table, a row per rule and a column per
    stream with its state, value and threshold, then the advice) and ``<p>/hist/{weights,grads}/<s>``
    (histograms, optional). :attr:`history` keeps one value per epoch and key: the epoch metrics,
    the epoch means of ``grad_norm``, ``rel_grad_norm``, ``weight_norm`` and ``update_ratio``,
    and the epoch's total of ``nonfinite_grads``.

    Example::

        from lightning.pytorch import Trainer
        from mslightning.callbacks import StreamMonitor

        monitor = StreamMonitor(streams={"rgb": "rgb_net.*", "depth": "depth_net.*"})
        trainer = Trainer(callbacks=[monitor], max_epochs=10)
        trainer.fit(model, datamodule)
        print(monitor.summary())
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
        report: bool = True,
    ) -> None:
        super().__init__()
        self.streams = None if streams is None else check_stream_patterns(streams, "streams")
        for name, value, low in (
            ("log_every_n_steps", log_every_n_steps, 0),
            ("histogram_every_n_epochs", histogram_every_n_epochs, 1),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(f"{name} must be None or an int >= {low}, got {value!r}.")
        if not isinstance(prefix, str) or not prefix or prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"prefix must be a non-empty string without leading/trailing '/', got {prefix!r}.")
        if thresholds is not None and not isinstance(thresholds, StreamThresholds):
            raise ValueError(f"thresholds must be a StreamThresholds, got {type(thresholds).__name__}.")
        if compare_streams is not None and not isinstance(compare_streams, bool):
            raise ValueError(f"compare_streams must be None, True or False, got {compare_streams!r}.")
        if not isinstance(report, bool):
            raise ValueError(f"report must be True or False, got {report!r}.")
        self.log_every_n_steps = log_every_n_steps
        self.thresholds = thresholds or StreamThresholds()
        self.prefix = prefix
        self.track_updates = track_updates
        self.histogram_every_n_epochs = histogram_every_n_epochs
        self.verbose = verbose
        self.compare_streams = compare_streams
        self.report = report

        self.history: dict[str, list[tuple[int, float]]] = {}
        """Logged key -> ``[(epoch, value), ...]``; step metrics as epoch means."""
        self.recommendations: list[Recommendation] = []
        """The latest epoch's advice."""
        self.recommendation_history: list[tuple[int, list[Recommendation]]] = []
        """``[(epoch, advice), ...]`` for every epoch so far."""
        self.latest: dict[str, float] = {}
        """The values of the latest logging step and epoch, by logged key."""

        self._advisor = Advisor(self.thresholds)
        self._patterns: dict[str, list[str]] | None = None
        self._bindings: dict[str, StreamBinding] = {}
        self._steps: StepStatistics | None = None
        self._bind_deferred = False
        self._compare = True if compare_streams is None else compare_streams
        self._pretrained: tuple[str, ...] = ()
        self._initial_weight_norm: dict[str, float] = {}
        self._previous_losses: dict[str, tuple[float, float]] = {}
        self._tallies = {stage: PredictionTally() for stage in _STAGES}
        self._val_scores: tuple[int, dict[str, dict[str, Tensor]]] | None = None
        self._reported: set[str] = set()
        self._checked_layouts: set[Any] = set()
        self._histogram_epoch: int | None = None
        self._module_keys: dict[str, str] = {}
        self._validates = True

    @property
    def stream_names(self) -> list[str]:
        """The monitored stream names (after setup when they come from the module)."""
        return list(self._patterns or self.streams or {})

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            streams=None if self.streams is None else sorted(self.streams), prefix=self.prefix
        )

    @property
    def _task(self) -> type[StreamOutputs] | None:
        return self._tallies["train"].task or self._tallies["val"].task

    def _once(self, note: str, **details: Any) -> None:
        if note not in self._reported:
            self._reported.add(note)
            warn, message = NOTES[note]
            (rank_zero_warn if warn else rank_zero_info)("StreamMonitor: " + message.format(**details))

    # ------------------------------------------------------------------ binding

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # Modules that build their layers in `configure_model` have no parameters yet: bound in on_train_start.
        if stage == TrainerFn.FITTING and any(True for _ in pl_module.parameters()):
            self._patterns = stream_patterns_of(pl_module, self.streams)
            match_streams(pl_module, self._patterns)

    def _bind(self, trainer: pl.Trainer, pl_module: pl.LightningModule, defer_lazy: bool = True) -> None:
        self._patterns = stream_patterns_of(pl_module, self.streams)
        names = match_streams(pl_module, self._patterns)
        # Lazy modules (nn.LazyConv2d, ...) get their shapes in the first forward: bind after it.
        self._bind_deferred = defer_lazy and any(is_lazy(p) for p in pl_module.parameters())
        if self._bind_deferred:
            return
        if self.compare_streams is None:
            self._compare = bool(getattr(pl_module, "parts_are_peers", True))
        self._module_keys = _module_metric_keys(pl_module)
        self._validates = is_overridden("validation_step", pl_module) and trainer.limit_val_batches != 0
        declared = getattr(pl_module, "pretrained_parts", ()) or ()
        self._pretrained = (declared,) if isinstance(declared, str) else tuple(declared)
        unknown = [p for p in self._pretrained if p not in names]
        if unknown:
            raise ValueError(
                f"{type(pl_module).__name__}.pretrained_parts names {unknown}, which are not streams {list(names)}."
            )
        scheduled = [(config.scheduler.optimizer, config.name) for config in trainer.lr_scheduler_configs]
        self._bindings = bind_streams(
            dict(pl_module.named_parameters()),
            names,
            trainer.optimizers,
            optimizer_names(trainer.optimizers, scheduled),
        )
        self._steps = StepStatistics(self._bindings, self.track_updates, self._initial_weight_norm)
        owned = {n for stream_names in names.values() for n in stream_names}
        outside = [n for n, p in pl_module.named_parameters() if n not in owned and p.requires_grad]
        if outside:
            self._once("outside", count=len(outside), names=describe_names(outside))

    # ------------------------------------------------------------------ logging

    def custom_scalar_layout(self, tag_of: TagOf | None = None) -> Layout:
        """The custom-scalars charts: one chart per metric with a line per stream (or pair).

        Args:
            tag_of: The TensorBoard tag of a logged key (see :func:`~mslightning.callbacks._tensorboard.tag_of`).

        Returns:
            ``{category: {chart: ["Multiline", [tag regex, ...]]}}``.
        """
        logged = self.latest.keys()
        measured = {"epochs", "steps", "updates", "predictions", "validation"}
        measured -= {"predictions"} if self._task is None else set()
        measured -= set() if self._validates else {"validation"}
        if self.log_every_n_steps == 0:
            measured -= {"steps", "updates"}
        return custom_scalar_layout(
            self.prefix,
            self.stream_names,
            self.track_updates,
            self.thresholds,
            tag_of,
            self._module_keys,
            task=self._task,
            measured=measured,
            fusion=any(key.startswith(f"{self.prefix}/fusion/") for key in logged),
            compare_streams=self._compare,
        )

    @property
    def verdicts(self) -> list[Verdict]:
        """The latest epoch's verdict per rule and stream (the rows of the verdict table)."""
        return list(self._advisor.verdicts)

    def _log(self, trainer: pl.Trainer, values: Mapping[tuple[str, str], float], step: int) -> dict[str, float]:
        metrics = {metric_key(self.prefix, metric, over): value for (metric, over), value in values.items()}
        self.latest.update(metrics)
        # the optimizer's values and what the module logs itself are not logged twice
        unlogged = {*EVIDENCE_ONLY, *(resolve(name, self._task) for name in self._module_keys)}
        logged = {metric_key(self.prefix, m, o): v for (m, o), v in values.items() if m not in unlogged}
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=step)
        self._log_thresholds(trainer, values.keys(), step)
        return metrics

    def _log_thresholds(self, trainer: pl.Trainer, logged: Iterable[tuple[str, str]], step: int) -> None:
        """The advice's thresholds as lines in the charts of their metrics (runs of their own, one colour each)."""
        logger = tensorboard_logger(trainer)
        if logger is None or not callable(getattr(logger, "run_writer", None)):
            return
        tag, lines = tag_of(logger), threshold_lines(self.thresholds, self._compare)
        drawn = set()  # with a run per stream, the streams of a metric share one tag
        for metric, over in logged:
            key = tag(metric_key(self.prefix, metric, over))
            if metric not in lines or key in drawn:
                continue
            drawn.add(key)
            for run, limit in zip(THRESHOLD_RUNS, reversed(lines[metric]), strict=True):
                if limit is not None:
                    logger.run_writer(run).add_scalar(key, limit[1], step)

    @staticmethod
    def _batch_step(trainer: pl.Trainer) -> int:
        """Lightning's logging step: optimizer steps taken before this batch's (what ``self.log`` uses)."""
        return trainer.fit_loop.epoch_loop._batches_that_stepped

    def _should_log_step(self, trainer: pl.Trainer) -> bool:
        every = trainer.log_every_n_steps if self.log_every_n_steps is None else self.log_every_n_steps
        return every > 0 and (self._batch_step(trainer) + 1) % every == 0

    # ------------------------------------------------------------------ fit lifecycle

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._bind(trainer, pl_module)
        for logger in trainer.loggers:  # a logger with a run per stream learns the streams watched here
            if callable(getattr(logger, "add_runs", None)):
                logger.add_runs(self.stream_names)
        if not trainer.loggers:
            self._once("no_logger")
        elif not has_tensorboard(trainer):
            self._once("no_tensorboard", loggers=[type(lg).__name__ for lg in trainer.loggers])

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._steps is not None:
            self._steps.release()  # frees the scratch copy
        if self.report and self.history and trainer.is_global_zero:
            # the run directory as trainer.log_dir finds it, without its broadcast: no collective at the very end
            logger = trainer.loggers[0] if trainer.loggers else None
            directory = (
                getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) or trainer.default_root_dir
            )
            try:
                path = self.write_report(os.path.join(directory, "stream_report.html"))
            except (OSError, ValueError, OverflowError) as error:  # a finished fit does not fail on its report
                rank_zero_warn(f"StreamMonitor: the report could not be written: {error}")
            else:
                rank_zero_info(f"StreamMonitor: report written to {path}")

    def write_report(self, path: str | os.PathLike) -> Path:
        """Write the static report: verdict table, advice and per-epoch curves with thresholds (HTML, offline).

        Args:
            path: Where to write it (parent directories are made; an existing file is replaced atomically).

        Returns:
            The path written.
        """
        epochs = [points[-1][0] for points in self.history.values() if points]
        header, rows = verdict_records(self._advisor.verdicts)
        return write_report(
            path,
            title=f"StreamMonitor report: {', '.join(self.stream_names)}",
            charts=report_charts(
                self.history, self.prefix, self.stream_names, self._task, self.thresholds, self._compare
            ),
            verdict_header=header,
            verdict_rows=rows,
            advice=self.get_recommendations(),
            notes=[f"after epoch {max(epochs)}" if epochs else "no epoch finished"],
        )

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._steps is not None:
            self._steps.start_epoch()
        self._tallies["train"].reset()

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        if self._bind_deferred:
            self._bind(trainer, pl_module, defer_lazy=False)
        if self._steps is None or not self._should_log_step(trainer):
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        # each stream at its own optimizer's step (several optimizers may step one after another)
        own = [s for s, b in self._bindings.items() if b.group is None or trainer.optimizers[b.group[0]] is optimizer]
        self._steps.capture(trainer.optimizers, optimizer, scaler, own or None)
        self._maybe_histograms(trainer, scaler if getattr(optimizer, "_step_supports_amp_scaling", False) else None)

    def _maybe_histograms(self, trainer: pl.Trainer, grad_scaler: Any | None) -> None:
        every, epoch = self.histogram_every_n_epochs, trainer.current_epoch
        writer = tensorboard_writer(trainer)
        if every is None or epoch % every != 0 or self._histogram_epoch == epoch or writer is None:
            return
        self._histogram_epoch = epoch
        scale = grad_scaler.get_scale() if grad_scaler is not None else 1.0
        for (kind, stream), values in stream_histograms(self._bindings, scale).items():
            writer.add_histogram(metric_key(self.prefix, f"hist/{kind}", stream), values, self._batch_step(trainer))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._tally("train", outputs)
        if self._steps is not None and self._steps.pending:
            self._log(trainer, self._steps.finish(batch), self._batch_step(trainer))

    # ------------------------------------------------------------------ per-stream predictions

    def _tally(self, stage: str, outputs: Any) -> None:
        if not self._bindings and not self._bind_deferred:
            return
        parsed, notes = read_step_outputs(outputs, self.stream_names, self._checked_layouts)
        for note, details in notes:
            self._once("series" if note == "protocol" and not self._compare else note, **details)
        if parsed is not None:
            self._tallies[stage].update(parsed)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tallies["val"].reset()

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
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and dataloader_idx == 0:
            self._tally("val", outputs)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        if self._tallies["val"].seen or trainer.world_size > 1:  # a collective: every rank takes part
            self._val_scores = (trainer.current_epoch, self._tallies["val"].compute(*collectives(trainer)))
        # before any on_validation_end, so EarlyStopping and ModelCheckpoint see fresh values
        if is_end_of_epoch_validation(trainer):
            self._finish_epoch(trainer, pl_module)
        elif self._steps is not None and self._val_scores is not None:  # a mid-epoch validation
            train = self._tallies["train"].compute(*collectives(trainer))  # the epoch so far
            values = epoch_metrics(
                self.stream_names, train, self._val_scores[1], {}, dict(self._previous_losses), self._task
            )
            keys = {metric_key(self.prefix, metric, over): value for (metric, over), value in values.items()}
            trainer.callback_metrics.update({k: torch.tensor(v) for k, v in keys.items()})

    # ------------------------------------------------------------------ epoch metrics and advice

    @override
    def end_of_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Epoch metrics, advice and history (once per epoch, see :class:`EpochEndCallback`)."""
        epoch = trainer.current_epoch
        if self._steps is None:
            return
        internals = fusion_internals(pl_module)
        internals = dict(zip(internals, mean_over_ranks(trainer, list(internals.values())), strict=True))
        val = self._val_scores[1] if self._val_scores is not None and self._val_scores[0] == epoch else {}
        train = self._tallies["train"].compute(*collectives(trainer))
        values = epoch_metrics(
            self.stream_names, train, val, self._steps.accumulators, self._previous_losses, self._task, internals
        )
        # every rank sees the same bad steps (the gradients are all-reduced) but only its own batches
        scanned = [acc for acc in self._steps.accumulators.values() if acc.inputs_scanned]
        for acc, total in zip(scanned, sum_over_ranks(trainer, [a.nonfinite_inputs for a in scanned]), strict=True):
            acc.nonfinite_inputs = total
        evidence = build_evidence(
            epoch,
            self._bindings,
            self._steps.accumulators,
            self._initial_weight_norm,
            values,
            trainer.optimizers,
            {**self._tallies["val"].chance, **self._tallies["train"].chance},
            task=self._task,
            predictions_seen=self._task is not None,
            compare_streams=self._compare,
            update_ratio_is_proxy=not self.track_updates,
            pretrained=self._pretrained,
        )
        self.recommendations = self._advisor.advise(evidence)
        self.recommendation_history.append((epoch, list(self.recommendations)))
        for stream in self._bindings:
            values[("alerts", stream)] = float(
                sum(r.stream == stream and r.severity == "warning" for r in self.recommendations)
            )
        logged = self._log(trainer, values, epoch_log_step(trainer))
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in logged.items()})
        self._record_history(epoch, logged)
        self._publish_advice(trainer, epoch)
        write_merged_layout(trainer, self)  # after a first epoch: what the run measures is known

    def _record_history(self, epoch: int, epoch_metrics: dict[str, float]) -> None:
        assert self._steps is not None
        means = step_means(self._steps.accumulators, self.track_updates)
        record = {**epoch_metrics, **{metric_key(self.prefix, *key): value for key, value in means.items()}}
        for key, value in record.items():
            self.history.setdefault(key, []).append((epoch, value))

    def _publish_advice(self, trainer: pl.Trainer, epoch: int) -> None:
        writer = tensorboard_writer(trainer)
        if writer is not None:
            advice = "\n".join(
                f"* {r.message}" if r.severity == "info" else f"* **{r.kind}** ({r.severity}): {r.message}"
                for r in self.recommendations
            )
            table = markdown_table(*verdict_rows(self._advisor.verdicts, self.stream_names))
            step = epoch_log_step(trainer)
            text = f"**Epoch {epoch}** (step {step})\n\n{table}\n\n{advice}"
            # "advice/..." sorts before every other group of the Text dashboard: the decision comes first
            writer.add_text(f"advice/{self.prefix}", text, step)
        if self.verbose:
            lines = "\n".join(f"  - {r.message}" for r in self.recommendations)
            rank_zero_info(f"StreamMonitor, epoch {epoch}:\n{lines}")

    # ------------------------------------------------------------------ read-out and state

    def get_recommendations(self) -> list[str]:
        """The latest epoch's advice as plain strings.

        Returns:
            One message per active recommendation; when none warns, one closing information:
            ``healthy``, ``not_measured`` (part of the epoch was not checked) or ``pending`` (a
            condition has not yet held for ``patience`` epochs).
        """
        return [r.message for r in self.recommendations]

    def summary(self) -> str:
        """A plain-text table of the latest epoch per stream, followed by the advice.

        Returns:
            The summary (empty-ish before the first epoch ends).
        """
        return format_summary(self.history, self.prefix, self.stream_names, self._task, self.get_recommendations())

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
        self._initial_weight_norm.clear()
        self._initial_weight_norm.update(state_dict.get("initial_weight_norm", {}))
        self._previous_losses = {
            s: (float(v[0]), float(v[1])) for s, v in state_dict.get("previous_losses", {}).items()
        }
        self.recommendation_history = [
            (int(epoch), [Recommendation(**r) for r in recs])
            for epoch, recs in state_dict.get("recommendation_history", [])
        ]
        self.recommendations = list(self.recommendation_history[-1][1]) if self.recommendation_history else []
        self.load_epoch_end_state(state_dict)


def _module_metric_keys(pl_module: pl.LightningModule) -> dict[str, str]:
    """The module's ``stream_metric_keys``, checked: monitor metric name -> the module's key with ``{stream}``."""
    declared = dict(getattr(pl_module, "stream_metric_keys", None) or {})
    names = {spec.name for spec in METRICS if spec.over == "stream"}
    for name, key in declared.items():
        if name not in names or not isinstance(key, str) or "{stream}" not in key:
            raise ValueError(
                f"{type(pl_module).__name__}.stream_metric_keys maps {name!r} to {key!r}; expected a per-stream "
                f"metric of StreamMonitor ({sorted(names)}) mapped to a key containing '{{stream}}'."
            )
    return declared


StreamMonitor.__doc__ = (StreamMonitor.__doc__ or "").replace(
    "{metrics_table}", metrics_table().replace("\n", "\n    ")
)
