"""The one metric list drives the layout, the documentation and the summary."""

import re

import pytest

from mslightning.callbacks import StreamMonitor
from mslightning.callbacks.monitor_metrics import (
    METRICS,
    custom_scalar_layout,
    expected_keys,
    format_summary,
    metric_key,
    resolve,
)
from mslightning.streams import ClassificationOutputs, PoissonOutputs, RankingOutputs

STREAMS = ["rgb", "depth", "ir"]


def _chart_regexes(layout):
    return [tag for category in layout.values() for _, tags in category.values() for tag in tags]


@pytest.mark.parametrize("task", [ClassificationOutputs, RankingOutputs, PoissonOutputs])
def test_every_logged_key_has_a_chart_and_every_chart_line_a_key(task):
    keys = expected_keys("streams", STREAMS, task)
    regexes = _chart_regexes(custom_scalar_layout("streams", STREAMS))
    for key in keys:
        assert any(re.fullmatch(rx, key) for rx in regexes), key
    # a chart line may match another task's name for the same metric, but always some real key
    every_task = set().union(
        *(expected_keys("streams", STREAMS, t) for t in (ClassificationOutputs, RankingOutputs, PoissonOutputs))
    )
    for rx in regexes:
        assert "fusion" in rx or any(re.fullmatch(rx, key) for key in every_task), rx


def test_names_resolve_per_task_and_pairs_follow_declaration_order():
    assert resolve("train_{score}", RankingOutputs) == "train_pair_acc"
    assert resolve("{confidence}", None) == "true_class_score"
    keys = expected_keys("p", ["a", "b", "c"], when="step")
    assert {k for k in keys if "grad_norm_ratio" in k} == {
        f"p/grad_norm_ratio/{x}" for x in ("a_vs_b", "a_vs_c", "b_vs_c")
    }
    assert metric_key("p", "alerts", "a") == "p/alerts/a"


def test_without_update_tracking_or_validation_those_metrics_are_not_expected_nor_drawn():
    keys = expected_keys("s", STREAMS, measured=("steps", "predictions"))
    assert "s/update_ratio/rgb" not in keys and "s/val_acc/rgb" not in keys and "s/train_acc/rgb" in keys
    layout = custom_scalar_layout("s", STREAMS, track_updates=False)
    assert "update_ratio" not in layout["s: weights and updates"]


def test_docstring_lists_every_metric():
    for spec in METRICS:
        over = "<s>" if spec.over == "stream" else "<a>_vs_<b>"
        assert f"``<p>/{spec.name}/{over}``" in StreamMonitor.__doc__


def test_summary_has_one_column_per_marked_metric_and_dashes_for_missing_values():
    history = {"streams/grad_norm/rgb": [(0, 1.5), (1, 2.5)], "streams/train_pair_acc/rgb": [(1, 0.75)]}
    text = format_summary(history, "streams", ["rgb", "depth"], RankingOutputs, ["healthy: fine."])
    lines = text.splitlines()
    assert lines[0] == "StreamMonitor summary (epoch 1)"
    assert lines[1].split()[:3] == ["stream", "grad", "|g|/|w|"] and "pair_acc" in lines[1]
    assert lines[2].split()[1] == "2.5" and "0.75" in lines[2]
    assert set(lines[3].split()[1:]) == {"-"}
    assert lines[-1] == "  - healthy: fine."
