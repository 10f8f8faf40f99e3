"""A static, self-contained HTML training report with inline SVG line charts.

For people who do not open TensorBoard: :func:`render_report` turns a run's per-epoch history
into one HTML5 page that any browser opens offline (no script, no CDN, no web font), and
:func:`write_report` writes it atomically. The page puts the decision first:

1. the title and free notes (e.g. ``"epoch 3, step 63"``);
2. the verdict table (rows whose ``state`` column starts with ``warning`` are red, ``pending``
   amber, ``ok`` plain);
3. the plain-language advice;
4. the charts (:class:`ReportChart`), two per row on wide screens, one on narrow ones.

Each chart draws one line with point markers per series (e.g. one per stream), with the same
colour for a name in every chart (:func:`assign_colors`), dashed horizontal threshold lines
labelled at the right edge, and a y-range that always holds every finite value and every
threshold: a value is never clipped (:func:`chart_axes`). NaN/inf/None points, and values <= 0
on a log axis, are skipped and counted in a note under the chart. Every user-provided string (titles,
stream names, messages, colours) is HTML-escaped.

Only the standard library is used.
"""

from __future__ import annotations

import html
import math
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PALETTE",
    "Axis",
    "ReportChart",
    "assign_colors",
    "chart_axes",
    "format_number",
    "render_report",
    "write_report",
]

#: Tableau 10 (colour-blind-friendlier than matplotlib's old default), then the Okabe-Ito hues
#: it lacks. Names beyond the palette's length reuse it from the start.
PALETTE: list[str] = [
    "#4e79a7",  # blue
    "#f28e2b",  # orange
    "#e15759",  # red
    "#76b7b2",  # teal
    "#59a14f",  # green
    "#edc948",  # yellow
    "#b07aa1",  # purple
    "#ff9da7",  # pink
    "#9c755f",  # brown
    "#bab0ac",  # grey
    "#0072b2",  # Okabe-Ito blue
    "#d55e00",  # Okabe-Ito vermillion
    "#cc79a7",  # Okabe-Ito reddish purple
]

# Geometry of one chart, in SVG user units (the SVG scales to the width of its grid cell).
_WIDTH, _HEIGHT = 520.0, 300.0
_LEFT, _RIGHT, _TOP, _BOTTOM = 64.0, 16.0, 18.0, 46.0
_TICKS = 5  # about this many tick labels per axis
_MARGIN = 0.04  # of the data range, on each side of the plot, so that no marker sits on the frame
_MARKER_RADIUS = 3.2
_THRESHOLD_COLOR = "#444444"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1400px; padding: 1rem 1.5rem 3rem; color: #1f2328; background: #fff; }
h1 { font-size: 1.6rem; margin: 0.5rem 0; }
h2 { font-size: 1.2rem; margin: 1.6rem 0 0.6rem; }
h3 { font-size: 1rem; margin: 0 0 0.2rem; font-family: ui-monospace, Menlo, Consolas, monospace; }
.notes { margin: 0; padding: 0; list-style: none; color: #57606a; }
.summary { font-weight: 600; }
.table-wrap { overflow-x: auto; }
table.verdicts { border-collapse: collapse; font-size: 0.92rem; }
table.verdicts th, table.verdicts td { border: 1px solid #d0d7de; padding: 0.3rem 0.6rem; text-align: left;
                                       vertical-align: top; }
table.verdicts th { background: #f6f8fa; }
tr.warning td { background: #ffe3e1; }
tr.warning td.state { color: #a40e26; font-weight: 600; }
tr.pending td { background: #fff4d6; }
tr.pending td.state { color: #7d4e00; font-weight: 600; }
ul.advice li { margin: 0.3rem 0; max-width: 60rem; }
.charts { display: grid; grid-template-columns: minmax(0, 1fr); gap: 1.2rem; }
@media (min-width: 900px) { .charts { grid-template-columns: repeat(2, minmax(0, 1fr)); } }
figure.chart { margin: 0; padding: 0.8rem; border: 1px solid #d0d7de; border-radius: 6px; }
.description { margin: 0 0 0.3rem; color: #57606a; font-size: 0.9rem; }
.chart-note { margin: 0.2rem 0 0; color: #7d4e00; font-size: 0.85rem; }
ul.legend { list-style: none; margin: 0.2rem 0; padding: 0; display: flex; flex-wrap: wrap; gap: 0.3rem 1rem;
            font-size: 0.85rem; }
ul.legend li { display: flex; align-items: center; gap: 0.3rem; }
svg.plot { display: block; width: 100%; height: auto; }
svg.plot text { font-size: 11px; fill: #1f2328; }
svg.plot .grid { stroke: #e6e8eb; stroke-width: 1; }
svg.plot .frame { fill: none; stroke: #8c959f; stroke-width: 1; }
svg.plot .no-data { font-size: 16px; fill: #8c959f; }
"""


@dataclass(frozen=True)
class ReportChart:
    """One line chart of the report.

    Attributes:
        title (str): Shown above the chart, e.g. ``"overfit_score"``.
        series (Mapping[str, Sequence[tuple[float, float]]]): Line name (e.g. a stream,
            ``"rgb"``) -> its ``(x, y)`` points, ``x`` the training step. Points are drawn in
            increasing ``x``; NaN/inf/None points are skipped (and counted in a note).
        thresholds (Mapping[str, float]): Label -> y, drawn as dashed horizontal lines labelled
            at the right edge, e.g. ``{"warning above": 1.0}``. The y-range always includes them.
        log_y (bool): Log10 y axis. Values (and thresholds) <= 0 are skipped, with a note.
        description (str): One sentence under the title.
        x_label (str): Label of the x axis.
    """

    title: str
    series: Mapping[str, Sequence[tuple[float, float]]]
    thresholds: Mapping[str, float] = field(default_factory=dict)
    log_y: bool = False
    description: str = ""
    x_label: str = "step"


@dataclass(frozen=True)
class Axis:
    """The scale of one chart axis: data domain -> SVG pixel coordinate.

    Attributes:
        lo (float): Smallest value of the domain (data units; for a log axis, not its log).
        hi (float): Largest value of the domain.
        ticks (tuple[float, ...]): Values that get a tick label, all within ``[lo, hi]``.
        log (bool): Whether the axis is log10.
        start (float): Pixel coordinate of ``lo`` (for the y axis, the bottom of the plot).
        end (float): Pixel coordinate of ``hi`` (for the y axis, the top of the plot).
    """

    lo: float
    hi: float
    ticks: tuple[float, ...]
    log: bool
    start: float
    end: float

    def pixel(self, value: float) -> float:
        """Maps a data value to its pixel coordinate.

        Args:
            value (float): A value in data units (> 0 on a log axis).

        Returns:
            float: The SVG coordinate, between ``start`` and ``end`` for a value in the domain.
        """
        if self.log:
            lo, hi, v = math.log10(self.lo), math.log10(self.hi), math.log10(value)
        else:
            lo, hi, v = self.lo, self.hi, value
        return self.start + (v - lo) / (hi - lo) * (self.end - self.start)

    def contains(self, value: float) -> bool:
        """Whether a value lies in the domain (it is drawn inside the plot, not clipped).

        Args:
            value (float): A value in data units.

        Returns:
            bool: ``lo <= value <= hi``.
        """
        return self.lo <= value <= self.hi


@dataclass(frozen=True)
class _ChartData:
    """A chart's drawable content: finite points sorted by x, drawable thresholds, notes."""

    series: dict[str, list[tuple[float, float]]]
    thresholds: dict[str, float]
    notes: list[str]


def format_number(value: float, digits: int = 3) -> str:
    """Formats a number compactly: ``0.001``, ``1e-05``, ``2.37``, ``5000``, ``1.23e+06``.

    Args:
        value (float): The number.
        digits (int): Significant digits kept (integer parts below 1e6 are never rounded).

    Returns:
        str: Fixed notation for 1e-4 <= |value| < 1e6 (trailing zeros removed), otherwise
        scientific notation; ``"nan"``, ``"inf"``, ``"-inf"`` for non-finite values.
    """
    value = float(value)
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= 6 or magnitude < -4:
        return f"{value:.{digits}g}"
    text = f"{value:.{max(0, digits - 1 - magnitude)}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def assign_colors(names: Iterable[str]) -> dict[str, str]:
    """Gives each distinct name a colour of :data:`PALETTE`, in first-seen order.

    Args:
        names (Iterable[str]): Line names, duplicates allowed (e.g. every chart's series, in order).

    Returns:
        dict[str, str]: Name -> CSS colour; the palette is reused from its start after its end.
    """
    colors: dict[str, str] = {}
    for name in names:
        if name not in colors:
            colors[name] = PALETTE[len(colors) % len(PALETTE)]
    return colors


def _float(value: object) -> float:
    """``float(value)``, NaN for what is not a number (e.g. None for an epoch not measured)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _chart_data(chart: ReportChart) -> _ChartData:
    series: dict[str, list[tuple[float, float]]] = {}
    nonfinite = nonpositive = 0
    for name, points in chart.series.items():
        kept = []
        for x, y in points:
            x, y = _float(x), _float(y)
            if not (math.isfinite(x) and math.isfinite(y)):
                nonfinite += 1
            elif chart.log_y and y <= 0:
                nonpositive += 1
            else:
                kept.append((x, y))
        series[str(name)] = sorted(kept, key=lambda point: point[0])
    thresholds: dict[str, float] = {}
    skipped_thresholds = []
    for label, y in chart.thresholds.items():
        y = _float(y)
        if math.isfinite(y) and not (chart.log_y and y <= 0):
            thresholds[str(label)] = y
        else:
            skipped_thresholds.append(f"{label} = {format_number(y)}")
    notes = []
    if nonfinite:
        notes.append(f"{nonfinite} point{'s' * (nonfinite != 1)} not drawn (NaN, inf or missing).")
    if nonpositive:
        notes.append(f"{nonpositive} value{'s' * (nonpositive != 1)} <= 0 not drawn on the log axis.")
    if skipped_thresholds:
        notes.append(f"Threshold not drawn (not finite, or <= 0 on the log axis): {', '.join(skipped_thresholds)}.")
    return _ChartData(series, thresholds, notes)


def _nice_ticks(lo: float, hi: float) -> tuple[float, ...]:
    """About ``_TICKS`` round values (multiples of 1, 2 or 5 times a power of ten) in ``[lo, hi]``."""
    raw = (hi - lo) / (_TICKS - 1)
    exponent = math.floor(math.log10(raw))
    fraction = raw / 10.0**exponent
    step = (1.0 if fraction < 1.5 else 2.0 if fraction < 3.0 else 5.0 if fraction < 7.0 else 10.0) * 10.0**exponent
    decimals = max(0, -math.floor(math.log10(step)))
    ticks = (round(k * step, decimals) + 0.0 for k in range(math.floor(lo / step), math.ceil(hi / step) + 1))
    return tuple(tick for tick in ticks if lo <= tick <= hi)


def _linear_axis(values: Sequence[float], start: float, end: float, min_pad: float = 0.0) -> Axis:
    lo, hi = min(values), max(values)
    if lo == hi:  # one value: a range around it
        pad = max(abs(lo) * 0.1, min_pad) or 1.0
        lo, hi = lo - pad, hi + pad
    margin = (hi - lo) * _MARGIN
    if not math.isfinite(margin) or not math.isfinite(lo - margin) or not math.isfinite(hi + margin):
        return Axis(lo, hi, (lo, hi), False, start, end)  # beyond float range: the data's own ends
    lo, hi = lo - margin, hi + margin
    return Axis(lo, hi, _nice_ticks(lo, hi), False, start, end)


def _log_axis(values: Sequence[float], start: float, end: float) -> Axis:
    l_lo, l_hi = math.log10(min(values)), math.log10(max(values))
    if l_lo == l_hi:  # one value: half a decade either side
        l_lo, l_hi = l_lo - 0.5, l_hi + 0.5
    margin = (l_hi - l_lo) * _MARGIN
    l_lo, l_hi = l_lo - margin, l_hi + margin
    lo, hi = min(10.0**l_lo, *values), max(10.0**l_hi, *values)  # min/max: exact despite float rounding
    decades = range(math.ceil(l_lo), math.floor(l_hi) + 1)
    every = max(1, math.ceil(len(decades) / (_TICKS + 1)))
    ticks = [10.0**d for d in decades[::every]]
    if len(ticks) < 3:  # about one decade: 1-2-5 ticks
        ticks += [m * 10.0**d for d in range(math.floor(l_lo), math.ceil(l_hi)) for m in (2.0, 5.0)]
    ticks = sorted(tick for tick in ticks if lo <= tick <= hi)
    if len(ticks) < 2:  # a fraction of a decade: round values, unevenly spaced on the log axis
        ticks = list(_nice_ticks(lo, hi))
    return Axis(lo, hi, tuple(ticks), True, start, end)


def _axes(data: _ChartData, log_y: bool) -> tuple[Axis, Axis] | None:
    points = [point for points in data.series.values() for point in points]
    if not points:
        return None
    xs = [x for x, _ in points]
    ys = [y for _, y in points] + list(data.thresholds.values())
    x_axis = _linear_axis(xs, _LEFT, _WIDTH - _RIGHT, min_pad=1.0)  # steps are integers
    y_axis = (_log_axis if log_y else _linear_axis)(ys, _HEIGHT - _BOTTOM, _TOP)
    return x_axis, y_axis


def chart_axes(chart: ReportChart) -> tuple[Axis, Axis] | None:
    """The x and y scales :func:`render_report` uses for a chart.

    The y domain holds every drawn value and every drawn threshold, plus a margin of 4% of their
    range on each side (of the log10 range on a log axis); the x domain likewise holds every
    drawn step. Tick labels are round values inside the domain.

    Args:
        chart (ReportChart): The chart.

    Returns:
        tuple[Axis, Axis] | None: ``(x_axis, y_axis)`` in the chart's SVG coordinates, or None
        when the chart has no drawable point (it then shows "no data").
    """
    data = _chart_data(chart)
    return _axes(data, chart.log_y)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _f(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _tick_labels(axis: Axis) -> list[str]:
    if axis.log or len(axis.ticks) < 2:
        return [format_number(t) for t in axis.ticks]
    step = abs(axis.ticks[1] - axis.ticks[0])
    largest = max(abs(t) for t in axis.ticks)
    digits = max(3, math.floor(math.log10(largest)) - math.floor(math.log10(step)) + 1) if largest else 3
    return [format_number(t, digits) for t in axis.ticks]


def _svg(chart: ReportChart, data: _ChartData, colors: Mapping[str, str]) -> str:
    plot = (
        f'<rect class="plot-area" x="{_f(_LEFT)}" y="{_f(_TOP)}" width="{_f(_WIDTH - _LEFT - _RIGHT)}" '
        f'height="{_f(_HEIGHT - _TOP - _BOTTOM)}" fill="#ffffff"/>'
    )
    out = [
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_f(_WIDTH)} {_f(_HEIGHT)}" '
        f'role="img" aria-label="{_esc(chart.title)}">',
        plot,
    ]
    axes = _axes(data, chart.log_y)
    if axes is None:
        out.append(
            f'<text class="no-data" x="{_f((_LEFT + _WIDTH - _RIGHT) / 2)}" y="{_f((_TOP + _HEIGHT - _BOTTOM) / 2)}" '
            'text-anchor="middle" dominant-baseline="middle">no data</text>'
        )
        out.append(
            f'<rect class="frame" x="{_f(_LEFT)}" y="{_f(_TOP)}" width="{_f(_WIDTH - _LEFT - _RIGHT)}" '
            f'height="{_f(_HEIGHT - _TOP - _BOTTOM)}"/>'
        )
        out.append("</svg>")
        return "".join(out)
    x_axis, y_axis = axes
    bottom, top, left, right = _HEIGHT - _BOTTOM, _TOP, _LEFT, _WIDTH - _RIGHT
    # grid and tick labels
    for tick, label in zip(y_axis.ticks, _tick_labels(y_axis), strict=True):
        y = _f(y_axis.pixel(tick))
        out.append(f'<line class="grid" x1="{_f(left)}" y1="{y}" x2="{_f(right)}" y2="{y}"/>')
        out.append(
            f'<text class="tick y-tick" x="{_f(left - 6)}" y="{y}" text-anchor="end" '
            f'dominant-baseline="middle">{_esc(label)}</text>'
        )
    for tick, label in zip(x_axis.ticks, _tick_labels(x_axis), strict=True):
        x = _f(x_axis.pixel(tick))
        out.append(f'<line class="grid" x1="{x}" y1="{_f(top)}" x2="{x}" y2="{_f(bottom)}"/>')
        out.append(f'<text class="tick x-tick" x="{x}" y="{_f(bottom + 16)}" text-anchor="middle">{_esc(label)}</text>')
    out.append(
        f'<rect class="frame" x="{_f(left)}" y="{_f(top)}" width="{_f(right - left)}" height="{_f(bottom - top)}"/>'
    )
    out.append(
        f'<text class="axis-label" x="{_f((left + right) / 2)}" y="{_f(_HEIGHT - 6)}" '
        f'text-anchor="middle">{_esc(chart.x_label)}</text>'
    )
    if chart.log_y:
        out.append(f'<text class="axis-label" x="{_f(left + 4)}" y="{_f(top - 5)}">log scale</text>')
    # thresholds under the data, labelled at the right edge
    for label, value in data.thresholds.items():
        y = _f(y_axis.pixel(value))
        out.append(
            f'<line class="threshold" data-label="{_esc(label)}" x1="{_f(left)}" y1="{y}" x2="{_f(right)}" y2="{y}" '
            f'stroke="{_THRESHOLD_COLOR}" stroke-width="1.3" stroke-dasharray="6 4"/>'
        )
        out.append(
            f'<text class="threshold-label" x="{_f(right - 4)}" y="{_f(y_axis.pixel(value) - 4)}" text-anchor="end" '
            f'stroke="#ffffff" stroke-width="3" paint-order="stroke">{_esc(f"{label} ({format_number(value)})")}</text>'
        )
    # one polyline and one marker per point for each series
    for name, points in data.series.items():
        if not points:
            continue
        color = _esc(colors[name])
        coords = " ".join(f"{_f(x_axis.pixel(x))},{_f(y_axis.pixel(y))}" for x, y in points)
        out.append(
            f'<polyline class="series" data-series="{_esc(name)}" points="{coords}" fill="none" stroke="{color}" '
            'stroke-width="2" stroke-linejoin="round" stroke-linecap="round"/>'
        )
        for x, y in points:
            tip = f"{name}, {chart.x_label} {format_number(x, 6)}: {format_number(y, 4)}"
            out.append(
                f'<circle class="marker" data-series="{_esc(name)}" cx="{_f(x_axis.pixel(x))}" '
                f'cy="{_f(y_axis.pixel(y))}" r="{_MARKER_RADIUS}" fill="{color}" stroke="#ffffff" stroke-width="1">'
                f"<title>{_esc(tip)}</title></circle>"
            )
    out.append("</svg>")
    return "".join(out)


def _legend(data: _ChartData, colors: Mapping[str, str]) -> str:
    items = []
    for name, points in data.series.items():
        color = _esc(colors[name])
        swatch = (
            '<svg class="swatch" xmlns="http://www.w3.org/2000/svg" width="22" height="12" viewBox="0 0 22 12" '
            f'aria-hidden="true"><line x1="1" y1="6" x2="21" y2="6" stroke="{color}" stroke-width="2"/>'
            f'<circle cx="11" cy="6" r="3.2" fill="{color}"/></svg>'
        )
        missing = "" if points else " (no data)"
        items.append(f'<li data-series="{_esc(name)}">{swatch}<span>{_esc(name)}{missing}</span></li>')
    return f'<ul class="legend">{"".join(items)}</ul>' if items else ""


def _figure(chart: ReportChart, colors: Mapping[str, str]) -> str:
    data = _chart_data(chart)
    parts = [f'<figure class="chart"><h3>{_esc(chart.title)}</h3>']
    if chart.description:
        parts.append(f'<p class="description">{_esc(chart.description)}</p>')
    parts.append(_legend(data, colors))
    parts.append(_svg(chart, data, colors))
    parts.extend(f'<p class="chart-note">{_esc(note)}</p>' for note in data.notes)
    parts.append("</figure>")
    return "".join(parts)


def _resolve_colors(charts: Sequence[ReportChart], colors: Mapping[str, str] | None) -> dict[str, str]:
    names = [str(name) for chart in charts for name in chart.series]
    given = {str(name): str(color) for name, color in (colors or {}).items()}
    missing = [name for name in names if name not in given]
    used = set(given.values())
    free = [color for color in PALETTE if color not in used] or PALETTE
    resolved = dict(given)
    for name in missing:
        if name not in resolved:
            resolved[name] = free[(len(resolved) - len(given)) % len(free)]
    return resolved


def _row_class(state: str) -> str:
    state = state.strip().lower()
    for kind in ("warning", "pending", "ok"):
        if state.startswith(kind):
            return kind
    return "other"


def _verdicts(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return '<p class="summary">No verdicts.</p>'
    header = [str(cell) for cell in header]
    width = max(len(header), *(len(row) for row in rows))
    header += [""] * (width - len(header))
    state_col = next((i for i, cell in enumerate(header) if cell.strip().lower() == "state"), None)
    counts: dict[str, int] = {}
    body = []
    for row in rows:
        cells = [str(cell) for cell in row] + [""] * (width - len(row))
        kind = _row_class(cells[state_col]) if state_col is not None else "other"
        counts[kind] = counts.get(kind, 0) + 1
        tds = "".join(
            f'<td class="state">{_esc(cell)}</td>' if i == state_col else f"<td>{_esc(cell)}</td>"
            for i, cell in enumerate(cells)
        )
        body.append(f'<tr class="{kind}">{tds}</tr>')
    parts = []
    if state_col is not None:
        summary = [
            f"{counts[kind]} {word}{'s' * (counts[kind] != 1 and kind == 'warning')}"
            for kind, word in (("warning", "warning"), ("pending", "pending"), ("ok", "ok"), ("other", "other"))
            if counts.get(kind)
        ]
        parts.append(f'<p class="summary">{_esc(", ".join(summary))}</p>')
    ths = "".join(f'<th scope="col">{_esc(cell)}</th>' for cell in header)
    parts.append(
        f'<div class="table-wrap"><table class="verdicts"><thead><tr>{ths}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )
    return "".join(parts)


def render_report(
    title: str,
    charts: Sequence[ReportChart],
    verdict_header: Sequence[str],
    verdict_rows: Sequence[Sequence[str]],
    advice: Sequence[str],
    colors: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """Renders the whole report as one self-contained HTML5 document.

    Args:
        title (str): Page title and heading.
        charts (Sequence[ReportChart]): The charts, in page order.
        verdict_header (Sequence[str]): Column names of the verdict table, e.g.
            ``["stream", "rule", "state", "value", "threshold", "knob"]``. The column named
            ``state`` (case-insensitive) colours the rows: a state starting with ``warning`` red,
            ``pending`` amber, ``ok`` plain (row classes ``warning``/``pending``/``ok``/``other``).
        verdict_rows (Sequence[Sequence[str]]): The rows, rendered in this order; cells are
            ``str()``-ed, short rows are padded with empty cells.
        advice (Sequence[str]): Plain-language messages, one list item each.
        colors (Mapping[str, str] | None): Line name -> CSS colour. Names it lacks (or all, when
            None) get :data:`PALETTE` colours in first-seen order across all charts (skipping
            colours it already uses), so one name has one colour in every chart.
        notes (Sequence[str]): Free lines under the title, e.g. ``"epoch 3, step 63"``.

    Returns:
        str: The HTML document. It holds no script and loads nothing; every given string is
        escaped. It is also well-formed XML (``xml.etree`` parses it).
    """
    resolved = _resolve_colors(charts, colors)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"/>',
        '<meta name="viewport" content="width=device-width, initial-scale=1"/>',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
    ]
    if notes:
        parts.append(f'<ul class="notes">{"".join(f"<li>{_esc(note)}</li>" for note in notes)}</ul>')
    parts.append('<section id="verdicts"><h2>Verdicts</h2>')
    parts.append(_verdicts(verdict_header, verdict_rows))
    parts.append('</section><section id="advice"><h2>Advice</h2>')
    if advice:
        parts.append(f'<ul class="advice">{"".join(f"<li>{_esc(message)}</li>" for message in advice)}</ul>')
    else:
        parts.append("<p>No advice.</p>")
    parts.append('</section><section id="charts"><h2>Charts</h2>')
    if charts:
        parts.append(f'<div class="charts">{"".join(_figure(chart, resolved) for chart in charts)}</div>')
    else:
        parts.append("<p>No charts.</p>")
    parts.append("</section></body></html>\n")
    return "\n".join(parts)


def write_report(
    path: str | os.PathLike[str],
    title: str,
    charts: Sequence[ReportChart],
    verdict_header: Sequence[str],
    verdict_rows: Sequence[Sequence[str]],
    advice: Sequence[str],
    colors: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Renders the report (:func:`render_report`) and writes it atomically.

    The page is written to a temporary file next to ``path`` and moved over it with
    :func:`os.replace`, so a reader never sees half a report and a failed write leaves the
    previous report intact. Missing parent directories are created.

    Args:
        path (str | os.PathLike[str]): Where the report goes, e.g. ``"logs/run/report.html"``.
        title (str): See :func:`render_report`.
        charts (Sequence[ReportChart]): See :func:`render_report`.
        verdict_header (Sequence[str]): See :func:`render_report`.
        verdict_rows (Sequence[Sequence[str]]): See :func:`render_report`.
        advice (Sequence[str]): See :func:`render_report`.
        colors (Mapping[str, str] | None): See :func:`render_report`.
        notes (Sequence[str]): See :func:`render_report`.

    Returns:
        Path: ``path`` as a :class:`pathlib.Path`.
    """
    target = Path(path)
    page = render_report(title, charts, verdict_header, verdict_rows, advice, colors=colors, notes=notes)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open with mode 0o666 lets the umask decide the permissions, as for any new file
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(page)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
