"""The one list of StreamMonitor's logged metrics, and everything derived from it.

:data:`METRICS` names every metric once, with when it is logged, over what (a stream or a pair
of streams), its chart and its meaning. The callback's docstring table
(:func:`metrics_table`), the TensorBoard custom-scalars layout (:func:`custom_scalar_layout`),
the plain-text summary (:func:`format_summary`) and the tests' expected tags
(:func:`expected_keys`) are all built from it, so they cannot disagree.

Names with ``{score}`` or ``{confidence}`` depend on the task of the per-stream outputs
(:mod:`mslightning.streams`): ``acc``/``true_class_score`` for classification,
``pair_acc``/``preferred_prob`` for ranking, ``corr``/``corr_clipped`` for Poisson responses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mslightning.callbacks._tensorboard import Layout, TagOf, multiline
from mslightning.callbacks.advice import StreamThresholds, Verdict
from mslightning.callbacks.report import ReportChart
from mslightning.streams import ClassificationOutputs, PoissonOutputs, RankingOutputs, StreamOutputs, stream_pairs

__all__ = [
    "EVIDENCE_ONLY",
    "METRICS",
    "NOTES",
    "THRESHOLD_RUNS",
    "MetricSpec",
    "custom_scalar_layout",
    "expected_keys",
    "format_summary",
    "markdown_table",
    "metric_key",
    "metrics_table",
    "report_charts",
    "resolve",
    "threshold_lines",
    "verdict_records",
    "verdict_rows",
]

Needs = Literal["epochs", "steps", "updates", "predictions", "validation"]
_TASKS = (ClassificationOutputs, RankingOutputs, PoissonOutputs)


@dataclass(frozen=True)
class MetricSpec:
    """One logged metric.

    Attributes:
        name: Its name in ``<prefix>/<name>/<stream or pair>``; may hold ``{score}`` or ``{confidence}``.
        when: ``"step"`` (every logging step) or ``"epoch"`` (once per epoch).
        over: ``"stream"`` (one value per stream) or ``"pair"`` (``<a>_vs_<b>``).
        chart: The custom-scalars category it is drawn in.
        needs: What must be measured for it to exist: nothing but ``epochs``, optimizer
            ``steps``, ``updates`` (``track_updates``), per-stream ``predictions``, or
            ``validation`` predictions.
        description: Its meaning, for the documentation.
        column: Its column title in :func:`format_summary`, or None.
    """

    name: str
    when: Literal["step", "epoch"]
    over: Literal["stream", "pair"]
    chart: str
    needs: Needs
    description: str
    column: str | None = None


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "grad_norm",
        "step",
        "stream",
        "gradients",
        "steps",
        "L2 norm of the stream's gradients, all tensors as one vector.",
        "grad",
    ),
    MetricSpec("grad_max", "step", "stream", "gradients", "steps", "Largest absolute gradient value."),
    MetricSpec("rel_grad_norm", "step", "stream", "gradients", "steps", "``||g|| / ||w||``.", "|g|/|w|"),
    MetricSpec("nonfinite_grads", "step", "stream", "gradients", "steps", "Number of NaN/Inf gradient values."),
    MetricSpec(
        "weight_norm",
        "step",
        "stream",
        "weights and updates",
        "steps",
        "L2 norm of the stream's parameters (before the step).",
    ),
    MetricSpec("weight_mean", "step", "stream", "weights and updates", "steps", "Mean parameter value."),
    MetricSpec(
        "update_ratio",
        "step",
        "stream",
        "weights and updates",
        "updates",
        "``||w_after - w_before|| / ||w_before||``, the step taken (with ``track_updates``).",
        "|dw|/|w|",
    ),
    MetricSpec(
        "grad_norm_ratio",
        "step",
        "pair",
        "gradients",
        "steps",
        "``grad_norm`` of a over b (skipped when b's is 0 or not finite).",
    ),
    MetricSpec("weight_norm_ratio", "step", "pair", "weights and updates", "steps", "``weight_norm`` of a over b."),
    MetricSpec(
        "learning_speed",
        "epoch",
        "pair",
        "gradients",
        "steps",
        "Conditional learning speed ``log10(mu_a / mu_b)``, ``mu = ||g||^2 / ||w||^2`` averaged over the epoch's "
        "measured steps (Wu et al., ICML 2022); positive: a learns faster.",
    ),
    MetricSpec(
        "train_{score}",
        "epoch",
        "stream",
        "overfitting",
        "predictions",
        "The task's score of the stream's own prediction on the training batches: accuracy, pair accuracy or "
        "correlation.",
        "train {score}",
    ),
    MetricSpec("val_{score}", "epoch", "stream", "overfitting", "validation", "The same on validation.", "val {score}"),
    MetricSpec(
        "train_loss",
        "epoch",
        "stream",
        "overfitting",
        "predictions",
        "Its loss: cross-entropy, log loss or Poisson NLL.",
    ),
    MetricSpec("val_loss", "epoch", "stream", "overfitting", "validation", "The same on validation."),
    MetricSpec("{score}_gap", "epoch", "stream", "overfitting", "validation", "Train minus validation score."),
    MetricSpec("loss_gap", "epoch", "stream", "overfitting", "validation", "Validation minus train loss."),
    MetricSpec(
        "overfit_score",
        "epoch",
        "stream",
        "overfitting",
        "validation",
        "Score gap + loss gap (< 0.5 healthy, > 1 significant).",
        "overfit",
    ),
    MetricSpec(
        "ogr",
        "epoch",
        "stream",
        "overfitting",
        "validation",
        "Overfitting-to-generalisation ratio ``|dO/dG|`` since the previous validated epoch, ``O = L_val - L_train``, "
        "``dG`` the drop in ``L_val`` (Wang et al., CVPR 2020); skipped while ``dG`` is negligible next to ``L_val``.",
        "OGR",
    ),
    MetricSpec(
        "{confidence}",
        "epoch",
        "stream",
        "balance",
        "predictions",
        "Mean confidence in the right answer on the training batches: true-class softmax probability, probability "
        "of the preferred item, or the correlation clipped at 0.",
    ),
    MetricSpec(
        "discrepancy_ratio",
        "epoch",
        "stream",
        "balance",
        "predictions",
        "OGM-GE discrepancy ratio: the stream's confidence over the mean of the others' (Peng et al., CVPR 2022); "
        "> 1: the stream dominates.",
        "rho",
    ),
    MetricSpec("alerts", "epoch", "stream", "balance", "epochs", "Number of active warnings naming the stream."),
)
"""Every metric :class:`~mslightning.callbacks.StreamMonitor` logs, in documentation order."""

EVIDENCE_ONLY = ("lr", "weight_decay")
"""Measured for the advice but not logged: the optimizer's own values, which a learning-rate monitor logs."""

THRESHOLD_RUNS = ("threshold_upper", "threshold_lower")
"""The TensorBoard runs that draw the advice's thresholds as lines on the charts of their metrics."""


Limit = tuple[str, float]
"""A threshold drawn on a chart: ``(what it marks, value)``, e.g. ``("overfitting above", 1.0)``."""


def threshold_lines(
    thresholds: StreamThresholds, compare_streams: bool = True
) -> dict[str, tuple[Limit | None, Limit | None]]:
    """The advice thresholds that can be drawn on a logged metric's chart, named by what they mark.

    Args:
        thresholds: The monitor's thresholds.
        compare_streams: Whether the streams are compared (``dominant``); parts in series are not,
            so their gradient-norm ratio gets no lines.

    Returns:
        Metric name -> ``(lower, upper)`` limit (None where there is none): ``overfit_score``
        overfits above ``overfit_score``; ``update_ratio`` is stalled below ``stall_update_ratio``
        and too fast above ``fast_update_ratio`` (one step); ``grad_norm_ratio`` of two streams
        means dominance outside ``1/dominance_ratio .. dominance_ratio`` (epoch means).
    """
    lines: dict[str, tuple[Limit | None, Limit | None]] = {
        "overfit_score": (None, ("overfitting above", thresholds.overfit_score)),
        "update_ratio": (
            ("stalled below", thresholds.stall_update_ratio),
            ("too fast above", thresholds.fast_update_ratio),
        ),
    }
    if compare_streams:
        lines["grad_norm_ratio"] = (
            ("b dominant below", 1 / thresholds.dominance_ratio),
            ("a dominant above", thresholds.dominance_ratio),
        )
    return lines


NOTES: dict[str, tuple[bool, str]] = {
    "protocol": (
        True,
        "the steps return no per-stream outputs ({{'loss', 'stream_outputs': ClassificationOutputs(...)}} or "
        "'stream_logits' + 'target'); gradient and weight metrics still work, the per-stream score, loss, "
        "overfitting and balance metrics are skipped.",
    ),
    "series": (
        False,
        "the parts {streams} are in series, not parallel streams: gradient, weight and update metrics are logged "
        "per part; compare the model's own train and val metrics for overfitting.",
    ),
    "soft": (
        True,
        "'target' is a float tensor {shape} (soft labels?); the per-stream metrics need class indices and are "
        "skipped. Return (B,) int64 class indices as the target to get them.",
    ),
    "missing": (True, "the per-stream outputs have no prediction for {streams}; their metrics are skipped."),
    "other": (
        False,
        "the per-stream outputs also hold {streams}, which this monitor does not watch (its streams are "
        "{monitored}); they are left out.",
    ),
    "outside": (False, "{count} trainable parameter(s) belong to no stream and are not monitored: {names}."),
    "no_logger": (
        False,
        "the Trainer has no logger; the metrics are kept in StreamMonitor.history and the advice in "
        "StreamMonitor.recommendations only.",
    ),
    "no_tensorboard": (
        False,
        "no TensorBoardLogger; scalars go to {loggers}, without the custom-scalars layout, advice text or histograms.",
    ),
}
"""What StreamMonitor says once per run: note -> (a warning rather than information?, message template)."""


def resolve(name: str, task: type[StreamOutputs] | None) -> str:
    """A metric name with the task's score and confidence names filled in.

    Args:
        name: A :attr:`MetricSpec.name`.
        task: The task of the per-stream outputs (default: classification).

    Returns:
        E.g. ``"train_acc"`` for ``"train_{score}"`` and classification.
    """
    task = task or ClassificationOutputs
    return name.format(score=task.score_name, confidence=task.confidence_name)


def metric_key(prefix: str, metric: str, over: str | None = None) -> str:
    """The logged key ``<prefix>/<metric>[/<stream or pair>]``.

    Args:
        prefix: The monitor's prefix.
        metric: The (resolved) metric name.
        over: A stream, ``<a>_vs_<b>``, or None.

    Returns:
        The key.
    """
    return f"{prefix}/{metric}" if over is None else f"{prefix}/{metric}/{over}"


def _pairs(streams: Sequence[str]) -> list[str]:
    return [f"{a}_vs_{b}" for a, b in stream_pairs(streams)]


def _available(spec: MetricSpec, measured: Iterable[Needs]) -> bool:
    return spec.needs in set(measured)


def expected_keys(
    prefix: str,
    streams: Sequence[str],
    task: type[StreamOutputs] | None = None,
    measured: Iterable[Needs] = ("epochs", "steps", "updates", "predictions", "validation"),
    when: Literal["step", "epoch"] | None = None,
) -> set[str]:
    """The keys a run logs, for what it measures.

    Args:
        prefix: The monitor's prefix.
        streams: The stream names.
        task: The task of the per-stream outputs.
        measured: What the run measures (see :attr:`MetricSpec.needs`).
        when: Only step or only epoch metrics; None for both.

    Returns:
        The set of keys (without ``fusion`` metrics, which the module defines).
    """
    measured = set(measured)
    keys = set()
    for spec in METRICS:
        if (when is not None and spec.when != when) or not _available(spec, measured):
            continue
        for over in streams if spec.over == "stream" else _pairs(streams):
            keys.add(metric_key(prefix, resolve(spec.name, task), over))
    return keys


def _title(name: str) -> str:
    return name.replace("{score}", "score").replace("{confidence}", "confidence")


def _limits_text(lines: tuple[Limit | None, Limit | None]) -> str:
    return ", ".join(f"{label} {value:g}" for label, value in (limit for limit in lines if limit is not None))


def custom_scalar_layout(
    prefix: str,
    streams: Sequence[str],
    track_updates: bool = True,
    thresholds: StreamThresholds | None = None,
    tag_of: TagOf | None = None,
    module_keys: Mapping[str, str] | None = None,
    task: type[StreamOutputs] | None = None,
    measured: Iterable[Needs] = ("epochs", "steps", "updates", "predictions", "validation"),
    fusion: bool = True,
    compare_streams: bool = True,
) -> Layout:
    """The custom-scalars charts: one chart per metric, a line per stream (or pair), decisions first.

    Only metrics the run measures get a chart (no empty charts). Without ``task`` a task-dependent
    metric (``train_{score}``) gets one chart whose lines match every task's name for it.

    Args:
        prefix: The monitor's prefix.
        streams: The stream names.
        track_updates: Whether ``update_ratio`` is logged.
        thresholds: The advice thresholds, named in the titles of the charts they are drawn on.
        tag_of: The TensorBoard tag a logged key is written under (a logger that writes each
            stream to its own run drops the stream from the key); default: the key itself.
        module_keys: Metrics the module logs itself (metric name -> key with ``{stream}``): the
            module charts them (its own ``custom_scalar_layout``), so they are left out here.
        task: The task of the per-stream outputs, when known.
        measured: What the run measures (see :attr:`MetricSpec.needs`).
        fusion: Whether to chart the module's fusion internals.
        compare_streams: Whether the streams are compared (thresholds of dominance in the titles).

    Returns:
        ``{category: {chart: ["Multiline", [tag regex, ...]]}}``, categories named ``<prefix>: <chart>``.
    """
    tag_of = tag_of or (lambda key: key)
    module_keys = module_keys or {}
    limits = threshold_lines(thresholds, compare_streams) if thresholds is not None else {}
    pairs = _pairs(streams)
    measured = set(measured)
    if not track_updates:
        measured.discard("updates")
    if "predictions" not in measured:  # validation metrics are scores of the per-stream predictions
        measured.discard("validation")

    def tags(name: str, over: Sequence[str]) -> list[str]:
        """One regex per stream (or pair), matching the metric's name of every task."""
        variants = dict.fromkeys(resolve(name, t) for t in ([task] if task is not None else _TASKS))
        regexes = []
        for o in over:
            keys = (
                [module_keys[name].format(stream=o)]
                if name in module_keys
                else [metric_key(prefix, v, o) for v in variants]
            )
            options = [re.escape(tag) for tag in dict.fromkeys(tag_of(key) for key in keys)]
            regexes.append(f"^{options[0]}$" if len(options) == 1 else f"^({'|'.join(options)})$")
        return list(dict.fromkeys(regexes))

    layout: dict[str, dict[str, list[Any]]] = {}
    # decisions first: memorising, then the gradient signal, then the updates; thresholded charts first in each
    order = ("overfitting", "gradients", "weights and updates", "balance")
    ranked = sorted(
        METRICS, key=lambda spec: (order.index(spec.chart) if spec.chart in order else 9, spec.name not in limits)
    )
    for spec in ranked:
        over = streams if spec.over == "stream" else pairs
        if not _available(spec, measured) or not over or spec.name in module_keys:  # the module charts its own
            continue
        title = _title(spec.name) + (f" ({_limits_text(limits[spec.name])})" if spec.name in limits else "")
        if spec.needs == "predictions" and not spec.name.startswith("train_"):
            title += " (train)"  # beside validation charts, say where it comes from
        layout.setdefault(f"{prefix}: {spec.chart}", {})[title] = multiline(tags(spec.name, over), regex=True)
    pairs_of_stages = [
        (title, metric)
        for title, metric in (("score", "{score}"), ("loss", "loss"))
        if not {f"train_{metric}", f"val_{metric}"} <= set(module_keys)
    ]
    if {"predictions", "validation"} <= measured and pairs_of_stages:
        layout[f"{prefix}: train vs val"] = {
            f"{title}: train vs val": multiline(
                [*tags(f"train_{metric}", streams), *tags(f"val_{metric}", streams)], regex=True
            )
            for title, metric in pairs_of_stages
        }
    if fusion:
        layout[f"{prefix}: fusion"] = {"fusion internals": multiline([f"^{re.escape(prefix)}/fusion/.*"], regex=True)}
    return layout


def metrics_table() -> str:
    """The "Logged metrics" list of the callback's docstring, built from :data:`METRICS`.

    Returns:
        reStructuredText bullets, one per metric, grouped by when they are logged.
    """
    lines = []
    for when, title in (("step", "Every logging step"), ("epoch", "Every epoch")):
        lines.append(f"{title}:")
        lines.append("")
        for spec in (s for s in METRICS if s.when == when):
            over = "<s>" if spec.over == "stream" else "<a>_vs_<b>"
            lines.append(f"* ``<p>/{spec.name}/{over}``: {spec.description}")
        lines.append("")
    return "\n".join(lines)


def verdict_rows(verdicts: Sequence[Verdict], streams: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """The verdict table: one row per rule, one column per stream, decisions in the cells.

    A cell reads ``state: value`` (``warning (2 epochs): 2.37``), with the stream's threshold in
    brackets where it differs from the row's (relaxed while a warning is reported). Rules judged
    ``ok`` for every stream with nothing to show (``frozen``, ``not_optimized``) are left out.

    Args:
        verdicts: :attr:`~mslightning.callbacks.advice.Advisor.verdicts` of one epoch.
        streams: The stream names, in column order.

    Returns:
        ``(header, rows)``: ``["rule", "threshold", "knob", *streams]`` and the rows, as text.
    """
    by_kind: dict[str, dict[str, Verdict]] = {}
    for verdict in verdicts:
        by_kind.setdefault(verdict.kind, {})[verdict.stream] = verdict
    by_kind = {
        kind: cells
        for kind, cells in by_kind.items()
        if not all(v.state == "ok" and v.value is None for v in cells.values())
    }
    columns = list(streams)
    if any("all" in cells for cells in by_kind.values()):
        columns.append("all")
    rows = []
    for kind, cells in by_kind.items():
        thresholds = [v.threshold for v in cells.values()]
        row_threshold = max(thresholds, key=thresholds.count)  # the most common; the first on a tie
        row = [kind, row_threshold, next(iter(cells.values())).knob]
        for column in columns:
            verdict = cells.get(column)
            if verdict is None:
                row.append("")
                continue
            cell = verdict.state if verdict.value is None else f"{verdict.state}: {verdict.value:.3g}"
            if verdict.threshold != row_threshold:
                cell += f" ({verdict.threshold})"
            row.append(cell)
        rows.append(row)
    return ["rule", "threshold", "knob", *columns], rows


def verdict_records(verdicts: Sequence[Verdict]) -> tuple[list[str], list[list[str]]]:
    """The verdicts in long form (a row per stream and rule), warnings first, for the static report.

    Rules judged ``ok`` with no value to show are left out.

    Args:
        verdicts: One epoch's verdicts.

    Returns:
        ``(header, rows)`` with the columns stream, rule, state, value, threshold, knob.
    """
    order = ("warning", "pending", "information", "ok")
    shown = [v for v in verdicts if not (v.state == "ok" and v.value is None)]
    shown.sort(key=lambda v: next(i for i, word in enumerate(order) if v.state.startswith(word) or word == "ok"))
    rows = [
        [v.stream, v.kind, v.state, "" if v.value is None else f"{v.value:.3g}", v.threshold, v.knob] for v in shown
    ]
    return ["stream", "rule", "state", "value", "threshold", "knob"], rows


def report_charts(
    history: Mapping[str, Sequence[tuple[int, float]]],
    prefix: str,
    streams: Sequence[str],
    task: type[StreamOutputs] | None,
    thresholds: StreamThresholds,
    compare_streams: bool = True,
) -> list[ReportChart]:
    """The static report's charts: the decision metrics per epoch, one line per stream, with thresholds.

    Args:
        history: The monitor's history (logged key -> ``[(epoch, value), ...]``).
        prefix: The monitor's prefix.
        streams: The stream names.
        task: The task of the per-stream outputs.
        thresholds: The advice thresholds, drawn as lines.
        compare_streams: Whether the streams are compared (see :func:`threshold_lines`).

    Returns:
        Charts of the overfitting score, the validation and training scores, the update ratio,
        the gradient norm, the discrepancy ratio and the learning speed of each pair (those with data).
    """
    limits = threshold_lines(thresholds, compare_streams)

    def lines(metric: str, over: Sequence[str]) -> dict[str, list[tuple[float, float]]]:
        return {
            o: [(float(e), v) for e, v in history[metric_key(prefix, metric, o)]]
            for o in over
            if metric_key(prefix, metric, o) in history
        }

    def limit_lines(metric: str) -> dict[str, float]:
        return dict(limit for limit in limits.get(metric, (None, None)) if limit is not None)

    score = resolve("{score}", task)
    specs = [
        ("overfit_score", streams, False, "Score gap + loss gap between training and validation."),
        (f"val_{score}", streams, False, "Each stream's own prediction on the validation set."),
        (f"train_{score}", streams, False, "The same on the training batches."),
        ("update_ratio", streams, True, "||dw||/||w|| per step, epoch mean: how fast each stream learns."),
        ("grad_norm", streams, True, "Gradient L2 norm, epoch mean."),
        ("discrepancy_ratio", streams, False, "OGM-GE: confidence over the others' mean; > 1 dominates."),
        ("learning_speed", _pairs(streams), False, "log10 of a's over b's conditional learning speed."),
    ]
    charts = [
        ReportChart(metric, lines(metric, over), limit_lines(metric), log_y, description, x_label="epoch")
        for metric, over, log_y, description in specs
    ]
    return [chart for chart in charts if chart.series]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (what TensorBoard's Text dashboard renders), warnings in bold.

    Args:
        header: Column titles.
        rows: Cells, as text.

    Returns:
        The table, one line per row.
    """

    def cell(text: str) -> str:
        text = text.replace("|", "\\|")
        return f"**{text}**" if text.startswith("warning") else text

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def format_summary(
    history: Mapping[str, Sequence[tuple[int, float]]],
    prefix: str,
    streams: Sequence[str],
    task: type[StreamOutputs] | None,
    advice: Sequence[str],
) -> str:
    """A plain-text table of the latest epoch per stream, followed by the advice.

    Args:
        history: Logged key -> ``[(epoch, value), ...]``.
        prefix: The monitor's prefix.
        streams: The stream names.
        task: The task of the per-stream outputs.
        advice: The latest advice messages.

    Returns:
        The summary.
    """
    columns = [(resolve(spec.name, task), resolve(spec.column, task)) for spec in METRICS if spec.column]
    width = max([len("stream"), *(len(s) for s in streams)])
    rows = ["stream".ljust(width) + "".join(f"{title:>11}" for _, title in columns)]
    for stream in streams:
        cells = []
        for metric, _ in columns:
            series = history.get(metric_key(prefix, metric, stream))
            cells.append(f"{series[-1][1]:>11.4g}" if series else f"{'-':>11}")
        rows.append(stream.ljust(width) + "".join(cells))
    epochs = [points[-1][0] for points in history.values() if points]
    title = f"StreamMonitor summary (epoch {max(epochs)})" if epochs else "StreamMonitor summary (no epoch yet)"
    text = "\n".join(f"  - {message}" for message in advice) or "  (none yet)"
    return f"{title}\n" + "\n".join(rows) + f"\nRecommendations:\n{text}"
