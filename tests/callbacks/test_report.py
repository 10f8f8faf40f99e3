import math
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from mslightning.callbacks import report
from mslightning.callbacks.report import (
    PALETTE,
    ReportChart,
    assign_colors,
    chart_axes,
    format_number,
    render_report,
    write_report,
)

HEADER = ["stream", "rule", "state", "value", "threshold", "knob"]
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "embed", "source", "track", "wbr"}


def _render(charts, rows=(), advice=(), **kwargs) -> str:
    return render_report("run", charts, HEADER, rows, advice, **kwargs)


def _tree(page: str) -> ET.Element:
    """The page as XML (it must be well-formed), SVG namespace stripped from the tags."""
    root = ET.fromstring(page)
    for element in root.iter():
        element.tag = element.tag.rsplit("}", 1)[-1]
    return root


def _by_class(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(tag) if cls in e.get("class", "").split()]


def _figures(root: ET.Element) -> list[ET.Element]:
    return _by_class(root, "figure", "chart")


def _points(polyline: ET.Element) -> list[tuple[float, float]]:
    return [tuple(float(v) for v in pair.split(",")) for pair in polyline.get("points").split()]


def _plot_box(figure: ET.Element) -> tuple[float, float, float, float]:
    (rect,) = _by_class(figure, "rect", "plot-area")
    x, y = float(rect.get("x")), float(rect.get("y"))
    return x, y, x + float(rect.get("width")), y + float(rect.get("height"))


def _text(element: ET.Element) -> str:
    return "".join(element.itertext())


def test_one_polyline_per_series_with_every_point_and_a_marker_each():
    charts = [
        ReportChart("loss", {"rgb": [(0, 1.0), (10, 0.8), (20, 0.5)], "depth": [(0, 2.0), (10, 1.5)]}),
        ReportChart("acc", {"rgb": [(i, i / 10) for i in range(7)], "depth": [(3, 0.4)]}),
    ]
    figures = _figures(_tree(_render(charts)))
    assert len(figures) == 2
    for chart, figure in zip(charts, figures, strict=True):
        lines = {p.get("data-series"): p for p in figure.iter("polyline")}
        assert len(list(figure.iter("polyline"))) == len(chart.series) == len(lines)
        for name, points in chart.series.items():
            assert len(_points(lines[name])) == len(points)
            markers = [c for c in _by_class(figure, "circle", "marker") if c.get("data-series") == name]
            assert len(markers) == len(points)
        legend = [li.get("data-series") for li in _by_class(figure, "ul", "legend")[0].iter("li")]
        assert legend == list(chart.series)


def test_points_map_through_the_chart_axes_in_x_order():
    chart = ReportChart("loss", {"rgb": [(20, 0.5), (0, 1.0), (10, 0.8)]})
    x_axis, y_axis = chart_axes(chart)
    (line,) = _tree(_render([chart])).iter("polyline")
    expected = [v for x, y in [(0, 1.0), (10, 0.8), (20, 0.5)] for v in (x_axis.pixel(x), y_axis.pixel(y))]
    assert [v for point in _points(line) for v in point] == pytest.approx(expected, abs=0.01)


def test_one_name_has_one_colour_in_every_chart():
    charts = [
        ReportChart("a", {"rgb": [(0, 1)], "depth": [(0, 2)]}),
        ReportChart("b", {"audio": [(0, 1), (1, 2)], "depth": [(0, 1), (1, 3)], "rgb": [(0, 1), (1, 1)]}),
    ]
    root = _tree(_render(charts))
    strokes: dict[str, set[str]] = {}
    for line in root.iter("polyline"):
        strokes.setdefault(line.get("data-series"), set()).add(line.get("stroke"))
    assert strokes == {"rgb": {PALETTE[0]}, "depth": {PALETTE[1]}, "audio": {PALETTE[2]}}
    for figure in _figures(root):  # the legend swatch has the line's colour
        for li in figure.iter("li"):
            swatch = next(li.iter("line"))
            assert swatch.get("stroke") == next(iter(strokes[li.get("data-series")]))


def test_given_colours_win_and_the_others_skip_them():
    charts = [ReportChart("a", {"rgb": [(0, 1), (1, 2)], "depth": [(0, 2), (1, 2)]})]
    root = _tree(_render(charts, colors={"depth": PALETTE[0]}))
    strokes = {line.get("data-series"): line.get("stroke") for line in root.iter("polyline")}
    assert strokes == {"depth": PALETTE[0], "rgb": PALETTE[1]}


def test_assign_colors_first_seen_order_and_reuse():
    assert assign_colors(["b", "a", "b", "c"]) == {"b": PALETTE[0], "a": PALETTE[1], "c": PALETTE[2]}
    assert len(PALETTE) >= 10 and len(set(PALETTE)) == len(PALETTE)
    many = assign_colors(f"s{i}" for i in range(len(PALETTE) + 1))
    assert many[f"s{len(PALETTE)}"] == PALETTE[0]


def test_threshold_line_at_the_scaled_y_labelled_at_the_right_edge():
    chart = ReportChart("overfit_score", {"rgb": [(0, 0.2), (1, 0.4), (2, 0.3)]}, {"warning above": 1.0})
    x_axis, y_axis = chart_axes(chart)
    (figure,) = _figures(_tree(_render([chart])))
    (line,) = _by_class(figure, "line", "threshold")
    assert line.get("data-label") == "warning above" and line.get("stroke-dasharray")
    assert float(line.get("y1")) == float(line.get("y2")) == pytest.approx(y_axis.pixel(1.0), abs=0.01)
    assert float(line.get("x1")) == pytest.approx(x_axis.start) and float(line.get("x2")) == pytest.approx(x_axis.end)
    (label,) = _by_class(figure, "text", "threshold-label")
    assert _text(label) == "warning above (1)"
    assert label.get("text-anchor") == "end" and float(label.get("x")) > x_axis.end - 10


@pytest.mark.parametrize(
    ("values", "threshold"),
    [([0.2, 0.5, 40.0, 0.3], 1.0), ([0.1, 0.3, 0.2], 5.0), ([-3.0, 0.5], 1.0), ([2.0, 2.0], -7.5)],
    ids=["value-far-above", "threshold-far-above", "negative-value", "threshold-below"],
)
def test_every_value_and_threshold_inside_the_plot(values, threshold):
    chart = ReportChart("score", {"rgb": list(enumerate(values))}, {"limit": threshold})
    _, y_axis = chart_axes(chart)
    assert all(y_axis.contains(v) for v in [*values, threshold])
    (figure,) = _figures(_tree(_render([chart])))
    left, top, right, bottom = _plot_box(figure)
    (line,) = figure.iter("polyline")
    ys = [y for _, y in _points(line)] + [float(_by_class(figure, "line", "threshold")[0].get("y1"))]
    assert all(top <= y <= bottom for y in ys)
    assert all(left <= x <= right for x, _ in _points(line))
    top_value = max(range(len(values)), key=values.__getitem__)
    assert _points(line)[top_value][1] == pytest.approx(y_axis.pixel(max(values)), abs=0.01)
    assert all(y_axis.contains(t) for t in y_axis.ticks) and len(y_axis.ticks) >= 2


def test_log_axis_skips_values_at_or_below_zero_with_a_note():
    points = [(0, 1e-5), (1, 1e-4), (2, 0.0), (3, 1e-3), (4, -1.0)]
    chart = ReportChart("update_ratio", {"rgb": points}, {"stalled below": 1e-6, "bad": 0.0}, log_y=True)
    _, y_axis = chart_axes(chart)
    assert y_axis.log and y_axis.contains(1e-6) and y_axis.contains(1e-3)
    (figure,) = _figures(_tree(_render([chart])))
    (line,) = figure.iter("polyline")
    ys = [y for _, y in _points(line)]
    assert len(ys) == 3
    assert ys == pytest.approx([y_axis.pixel(v) for v in (1e-5, 1e-4, 1e-3)], abs=0.01)
    assert ys[0] - ys[1] == pytest.approx(ys[1] - ys[2], abs=0.02)  # one decade, one distance
    (threshold,) = _by_class(figure, "line", "threshold")
    assert float(threshold.get("y1")) == pytest.approx(y_axis.pixel(1e-6), abs=0.01)
    ticks = [_text(t) for t in _by_class(figure, "text", "y-tick")]
    assert {"1e-05", "0.0001", "0.001"} <= set(ticks)
    notes = " ".join(_text(p) for p in _by_class(figure, "p", "chart-note"))
    assert "2 values <= 0 not drawn" in notes and "bad = 0" in notes


def test_nan_and_inf_are_skipped_one_point_is_a_marker_no_point_is_no_data():
    nan, inf = float("nan"), float("inf")
    charts = [
        ReportChart(
            "loss", {"rgb": [(0, 1.0), (1, nan), (2, inf), (3, 2.0), (nan, 1.0), (4, None)], "depth": [(5, 0.3)]}
        ),
        ReportChart("all nan", {"rgb": [(0, nan)]}, {"limit": 1.0}),
        ReportChart("empty", {}),
    ]
    loss, all_nan, empty = _figures(_tree(_render(charts)))
    lines = {p.get("data-series"): _points(p) for p in loss.iter("polyline")}
    assert len(lines["rgb"]) == 2 and all(math.isfinite(v) for point in lines["rgb"] for v in point)
    assert len([c for c in loss.iter("circle") if c.get("data-series") == "depth"]) == 1
    assert "4 points not drawn (NaN, inf or missing)." in [_text(p) for p in _by_class(loss, "p", "chart-note")]
    for figure in (all_nan, empty):
        assert not list(figure.iter("polyline")) and not _by_class(figure, "circle", "marker")
        assert [_text(t) for t in _by_class(figure, "text", "no-data")] == ["no data"]
    assert chart_axes(charts[2]) is None


def test_user_strings_are_escaped():
    evil = "<script>alert(1)</script>"
    chart = ReportChart(evil, {evil: [(0, 1.0), (1, 2.0)], 'a"b': [(0, 1.0)]}, {evil: 1.5}, description=evil)
    page = render_report(
        evil,
        [chart],
        HEADER,
        [[evil, "overfitting", "warning", "1", "2", "lr & wd"]],
        [f"advice {evil} & more"],
        colors={'a"b': 'red" onload="alert(2)'},
        notes=[evil],
    )
    assert "<script" not in page.lower()
    root = _tree(page)
    assert not list(root.iter("script"))
    assert all("onload" not in element.attrib for element in root.iter())
    assert _text(next(root.iter("h1"))) == evil
    assert [_text(li) for li in _by_class(root, "ul", "advice")[0]] == [f"advice {evil} & more"]
    assert {p.get("data-series") for p in root.iter("polyline")} == {evil, 'a"b'}
    assert {_text(li) for li in _by_class(root, "ul", "legend")[0]} == {evil, 'a"b'}
    assert next(c for c in root.iter("circle") if c.get("data-series") == 'a"b').get("fill") == 'red" onload="alert(2)'
    assert _text(next(root.iter("td"))) == evil


def test_verdict_rows_in_order_with_state_classes_and_decision_first():
    rows = [
        ["rgb", "overfitting", "warning (3 epochs)", "3.5", "1", "weight_decay"],
        ["depth", "slow", "pending (1 of 2 epochs)", "0.01", "0.1", "lr"],
        ["rgb", "slow", "ok", "0.5", "0.1", "lr"],
        ["audio", "dominant", "WARNING", "12", "10", "lr"],
        ["*", "healthy", "information", "", "", ""],
    ]
    page = _render([ReportChart("x", {"rgb": [(0, 1)]})], rows, ["lower the lr"], notes=["epoch 3, step 63"])
    root = _tree(page)
    (table,) = _by_class(root, "table", "verdicts")
    assert [_text(th) for th in table.iter("th")] == HEADER
    trs = list(next(table.iter("tbody")))
    assert [tr.get("class") for tr in trs] == ["warning", "pending", "ok", "warning", "other"]
    assert [[_text(td) for td in tr] for tr in trs] == rows
    assert _text(_by_class(root, "p", "summary")[0]) == "2 warnings, 1 pending, 1 ok, 1 other"
    order = [page.index(marker) for marker in ("<h1>", "epoch 3, step 63", 'id="verdicts"', "lower the lr", "<svg")]
    assert order == sorted(order)


def test_document_is_standalone_html5():
    class Checker(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack, self.tags, self.refs = [], set(), []

        def handle_starttag(self, tag, attrs):
            self.tags.add(tag)
            self.refs += [value for name, value in attrs if name in ("src", "href") and value]
            if tag not in VOID:
                self.stack.append(tag)

        def handle_startendtag(self, tag, attrs):
            self.tags.add(tag)

        def handle_endtag(self, tag):
            assert self.stack and self.stack.pop() == tag, tag

    page = _render([ReportChart("x", {"rgb": [(0, 1), (1, 2)]}, {"t": 1.5})], [["a", "b", "ok"]], ["c"])
    assert page.startswith("<!DOCTYPE html>")
    checker = Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == []
    assert {"html", "head", "meta", "title", "style", "body", "svg"} <= checker.tags
    assert not checker.tags & {"script", "link", "img", "iframe"} and checker.refs == []
    assert (
        "url(" not in page
        and "@import" not in page
        and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )


def test_write_report_replaces_atomically_and_returns_the_path(tmp_path, monkeypatch):
    target = tmp_path / "logs" / "run" / "report.html"
    replaced = []
    real_replace = report.os.replace

    def spy(src, dst):
        replaced.append((src, dst, dst_content(dst)))
        real_replace(src, dst)

    def dst_content(dst):
        return open(dst, encoding="utf-8").read() if report.os.path.exists(dst) else None

    monkeypatch.setattr(report.os, "replace", spy)
    kwargs = {"title": "run", "charts": [], "verdict_header": HEADER, "verdict_rows": [], "advice": []}
    assert write_report(target, **kwargs) == target  # missing parent directories are created
    target.write_text("old report")
    assert write_report(str(target), **kwargs, notes=["epoch 2"]) == target
    (first_src, _, _), (src, dst, before) = replaced
    assert before == "old report"  # the target was untouched until the move
    assert (
        report.Path(dst) == target
        and report.Path(src).parent == target.parent
        and report.Path(src) != target
        and first_src != src
    )
    assert "epoch 2" in target.read_text(encoding="utf-8")
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]


def test_write_report_failure_keeps_the_old_report_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    target.write_text("old report")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_report(target, "run", [], HEADER, [], [])
    assert target.read_text() == "old report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.001, "0.001"), (1e-5, "1e-05"), (2.3712, "2.37"), (5000, "5000"), (0.1 + 0.2, "0.3"), (-0.5, "-0.5"),
     (0, "0"), (1234567, "1.23e+06"), (float("nan"), "nan")],
)  # fmt: skip
def test_format_number_is_compact(value, text):
    assert format_number(value) == text


def test_tick_labels_distinguish_close_ticks():
    chart = ReportChart("x", {"rgb": [(0, 100.0), (1, 100.6), (2, 101.0)]})
    (figure,) = _figures(_tree(_render([chart])))
    labels = [_text(t) for t in _by_class(figure, "text", "y-tick")]
    assert len(labels) == len(set(labels)) >= 3 and "100.2" in labels
