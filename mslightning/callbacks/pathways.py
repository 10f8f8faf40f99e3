"""PathwayAnalysis: stream ablation every N epochs.

Runs a module's stream-ablation analysis every N epochs and logs its score (accuracy, response
correlation, ...) with streams alone and together, Shapley values and utilisation rates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

from mslightning.callbacks._lifecycle import EpochEndCallback, epoch_log_step
from mslightning.callbacks._tensorboard import Layout, TagOf, multiline, tensorboard_writer, write_merged_layout

__all__ = ["PathwayAnalysis", "PathwayAnalyzable"]


@runtime_checkable
class PathwayAnalyzable(Protocol):
    """A module that can measure each stream's contribution by ablation."""

    def analyze_pathways(self, dataloader: Any, reference_dataloader: Any) -> Any:
        """Measure each stream's contribution on ``dataloader``.

        Returns a report (such as :class:`~mslightning.modules.PathwayReport`) with ``score_all``,
        ``score_none``, ``score_alone``, ``shapley`` and ``utilization`` (keys ``"m|n"``) fields,
        and optionally ``metric`` (the score's name, default ``"accuracy"``) and ``extra`` (a
        mapping of further figures). A module may also declare ``pathway_metrics``, the names of
        the figures it reports (the score's and those of extras like ``bits_per_spike_all``), so
        that each gets a chart of its own.
        """
        ...


def _check_mapping(report: Any, field: str) -> Mapping[str, float]:
    value = getattr(report, field, None)
    if not isinstance(value, Mapping):
        raise ValueError(
            f"analyze_pathways() returned a {type(report).__name__} whose {field!r} is {value!r}; "
            "expected a mapping of floats."
        )
    return value


class PathwayAnalysis(EpochEndCallback):
    r"""Ablate streams every N epochs and log how much each one contributes.

    Calls ``pl_module.analyze_pathways(dataloader, reference_dataloader)`` at the end of every
    ``every_n_epochs``-th training epoch with the first validation dataloader and, as the
    reference (whose mean stands in for an ablated stream), the training dataloader. The module
    decides how it ablates and what it scores (:class:`mslightning.modules.MultiStreamClassifier`:
    accuracy, with reference-mean features; :class:`mslightning.modules.ModulatedResponseModel`:
    response correlation, with the frames or the behaviour replaced by their training mean, and
    bits per spike as extras); the call runs under ``torch.no_grad()`` and the module's train
    mode flags are restored afterwards. Every rank runs it on its own shard; the numbers are
    averaged over ranks (a collective on every rank) before logging, so they are identical
    everywhere.

    Args:
        every_n_epochs: Run at the end of epochs ``every_n_epochs - 1``, ``2 * every_n_epochs -
            1``, ...
        prefix: First part of every logged key.
        verbose: Print the report to the console (rank zero).

    Raises:
        ValueError: If ``every_n_epochs`` < 1 or ``prefix`` is malformed.
        TypeError: At setup, if the module has no ``analyze_pathways`` method.

    Logged metrics (``<p>`` is ``prefix``, ``<score>`` the report's ``metric``, e.g.
    ``accuracy``; ``<s>``, ``<m>``, ``<n>`` are streams), at the step of the epoch's last batch
    (where Lightning logs the epoch's own values):

    * ``<p>/<score>_all``: the score with every stream.
    * ``<p>/<score>_none``: the score with every stream ablated (chance level).
    * ``<p>/<score>_alone/<s>``: the score keeping stream s only.
    * ``<p>/shapley/<s>``: Shapley value of s for the score (they sum to all - none).
    * ``<p>/utilization/<m>_given_<n>``: conditional utilisation rate
      ``u(m|n) = (S(m, n) - S(n)) / S(m, n)`` (Wu et al., ICML 2022).
    * ``<p>/<key>`` for every ``key`` of the report's ``extra``.
    * ``<p>/table`` (TensorBoard text): the same as a table, one row per stream.

    :attr:`history` keeps ``[(epoch, value), ...]`` per key; :attr:`latest` the last report.
    """

    def __init__(self, every_n_epochs: int = 5, prefix: str = "pathways", verbose: bool = True) -> None:
        super().__init__()
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an int >= 1, got {every_n_epochs!r}.")
        if not isinstance(prefix, str) or not prefix or prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"prefix must be a non-empty string without leading/trailing '/', got {prefix!r}.")
        self.every_n_epochs = every_n_epochs
        self.prefix = prefix
        self.verbose = verbose
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.latest: Any = None
        self._no_val_reported = False
        self._figures: tuple[str, ...] = ()

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        figures = getattr(pl_module, "pathway_metrics", None) or ()
        self._figures = (figures,) if isinstance(figures, str) else tuple(figures)
        if stage == TrainerFn.FITTING and not callable(getattr(pl_module, "analyze_pathways", None)):
            raise TypeError(
                f"PathwayAnalysis needs {type(pl_module).__name__}.analyze_pathways(dataloader, "
                "reference_dataloader) returning a report with score_all, score_none, score_alone, "
                "shapley and utilization; the module has no such method."
            )

    def custom_scalar_layout(self, tag_of: TagOf | None = None) -> Layout:
        """The pathway charts of the custom-scalars dashboard: one per figure, so scales never mix.

        Each figure the module declares in ``pathway_metrics`` (e.g. ``("corr", "bits_per_spike")``)
        gets a chart of its value with all streams, none and each alone; without the declaration
        every ``*_all``/``*_none``/``*_alone`` value shares one chart.

        Args:
            tag_of: Ignored: the charts match the keys with or without the stream (its own run).

        Returns:
            ``{category: {chart: ["Multiline", [tag regex, ...]]}}``.
        """
        p = re.escape(self.prefix)
        figures = {name: re.escape(name) for name in self._figures} or {"score": "[^/]+"}
        charts = {
            f"{name}: streams alone, all and none": multiline([rf"^{p}/{regex}_(all|none|alone)(/[^/]+)?$"], regex=True)
            for name, regex in figures.items()
        }
        charts["shapley"] = multiline([f"^{p}/shapley(/.*)?$"], regex=True)
        charts["utilization"] = multiline([f"^{p}/utilization/.*"], regex=True)
        return {f"{self.prefix}: stream ablation": charts}

    def _flatten(self, report: Any) -> dict[str, float]:
        p = self.prefix
        metric = getattr(report, "metric", "accuracy")
        if not isinstance(metric, str) or not metric or "/" in metric:
            raise ValueError(f"analyze_pathways() returned a report whose metric is {metric!r}; expected a name.")
        flat = {f"{p}/{metric}_all": float(report.score_all), f"{p}/{metric}_none": float(report.score_none)}
        flat.update({f"{p}/{metric}_alone/{s}": float(v) for s, v in _check_mapping(report, "score_alone").items()})
        flat.update({f"{p}/shapley/{s}": float(v) for s, v in _check_mapping(report, "shapley").items()})
        for pair, value in _check_mapping(report, "utilization").items():
            m, sep, n = str(pair).partition("|")
            if not sep:
                raise ValueError(f"utilization keys must read 'm|n', got {pair!r}.")
            flat[f"{p}/utilization/{m}_given_{n}"] = float(value)
        if getattr(report, "extra", None) is not None:
            flat.update({f"{p}/{key}": float(value) for key, value in _check_mapping(report, "extra").items()})
        return flat

    def _table(self, flat: Mapping[str, float], metric: str) -> str:
        """The report as Markdown: a row per stream (each figure alone, Shapley value), then the rest."""
        p = f"{self.prefix}/"
        figures = [metric, *(f for f in self._figures if f != metric)]  # the score first, then declared extras
        alone = {
            f: {k.rpartition("/")[2]: v for k, v in flat.items() if k.startswith(f"{p}{f}_alone/")} for f in figures
        }
        alone = {f: by_stream for f, by_stream in alone.items() if by_stream}
        streams = list(dict.fromkeys(s for by_stream in alone.values() for s in by_stream))
        header = ["stream", *(f"{f} alone" for f in alone), "Shapley value"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for s in streams:
            cells = [f"{alone[f].get(s, math.nan):.4g}" for f in alone] + [
                f"{flat.get(f'{p}shapley/{s}', math.nan):.4g}"
            ]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        shown = {f"{p}{f}_alone/{s}" for f in alone for s in alone[f]} | {f"{p}shapley/{s}" for s in streams}
        rest = [f"{k[len(p) :]} {v:.4g}" for k, v in flat.items() if k not in shown]
        return "\n".join(lines) + "\n\n" + ", ".join(rest)

    @override
    def end_of_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The analysis, every ``every_n_epochs`` epochs (once per epoch, see :class:`EpochEndCallback`)."""
        epoch = trainer.current_epoch
        write_merged_layout(trainer, self)  # once, when this callback is the last provider
        if (epoch + 1) % self.every_n_epochs != 0:
            return
        val = trainer.val_dataloaders
        if isinstance(val, list | tuple):
            val = val[0] if val else None
        if val is None:
            if not self._no_val_reported:
                self._no_val_reported = True
                rank_zero_warn("PathwayAnalysis: the Trainer has no validation dataloader; the analysis is skipped.")
            return
        modes = {module: module.training for module in pl_module.modules()}
        try:
            with torch.no_grad():
                report = pl_module.analyze_pathways(val, trainer.train_dataloader)  # type: ignore[operator]
        finally:
            for module, mode in modes.items():
                module.training = mode
        flat = self._flatten(report)
        # Each rank analysed its own shard: average so that every rank logs and keeps the same numbers.
        values = trainer.strategy.reduce(torch.tensor(list(flat.values()), device=pl_module.device), reduce_op="mean")
        flat = dict(zip(flat, values.tolist(), strict=True))
        self.latest = report
        for key, value in flat.items():
            self.history.setdefault(key, []).append((epoch, value))
        step = epoch_log_step(trainer)
        for logger in trainer.loggers:
            logger.log_metrics(flat, step=step)
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_text(
                f"{self.prefix}/table",
                f"**Epoch {epoch}** (step {step})\n\n{self._table(flat, getattr(report, 'metric', 'accuracy'))}",
                step,
            )
        if self.verbose:
            shown = ", ".join(f"{k.removeprefix(self.prefix + '/')} {v:.3f}" for k, v in flat.items())
            rank_zero_info(f"PathwayAnalysis, epoch {epoch}: {shown}")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": {key: [list(point) for point in points] for key, points in self.history.items()},
            **self.epoch_end_state(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {
            key: [(int(epoch), float(value)) for epoch, value in points]
            for key, points in state_dict.get("history", {}).items()
        }
        self.load_epoch_end_state(state_dict)
