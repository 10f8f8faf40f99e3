"""The scenario suite of examples/monitor_scenarios.py: the right advice, on the right stream, every epoch.

Each scenario runs under AdamW and SGD (16 px images, a few epochs of a small CNN): the expected
warning (kind, stream, knob) and no other warning at any epoch, or no warning at all and
"healthy" only where everything was measured.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "monitor_scenarios.py"


def _load():
    spec = importlib.util.spec_from_file_location("monitor_scenarios_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


scenarios = _load()
CASES = [(name, optimizer) for name in scenarios.SCENARIOS for optimizer in scenarios.OPTIMIZERS]
INFORMATION = ("healthy", "not_measured")


def _warnings(monitor):
    return [(epoch, r) for epoch, recs in monitor.recommendation_history for r in recs if r.severity == "warning"]


@pytest.mark.parametrize(("name", "optimizer"), CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_scenario_advice(name, optimizer, tmp_path):
    scenario = scenarios.SCENARIOS[name]
    expect = scenario.expected(optimizer)
    monitor = scenarios.run_scenario(scenario, optimizer, log_dir=str(tmp_path))
    assert scenarios.verdict(scenario, optimizer, monitor) == []

    warnings = _warnings(monitor)
    every_epoch = [{r.kind for r in recs} for _, recs in monitor.recommendation_history]
    assert len(every_epoch) == scenario.epochs
    if expect.kind in INFORMATION:
        assert not warnings, [r.message for _, r in warnings]
        assert all(value == 0 for key, points in monitor.history.items() if "/alerts/" in key for _, value in points)
        assert monitor.recommendations[-1].kind == expect.kind
    else:
        # the root cause, on the right stream, and nothing else at any epoch
        assert {(r.kind, r.stream) for _, r in warnings} == {(expect.kind, expect.stream)}
        for _, rec in warnings:
            assert rec.message.startswith(expect.stream or "no stream learns")
            assert expect.knob in rec.message
            other_streams = [s for s in monitor.stream_names if s != expect.stream]
            for other in other_streams:  # the knob of one stream, not another's
                assert f"the {other} group's" not in rec.message.split(":", 1)[1].split(";")[0]
        if expect.kind == "not_learning":
            assert not any("healthy" in kinds for kinds in every_epoch)
    # the advice also reached TensorBoard as text, one run per scenario and optimizer
    assert len(list((tmp_path / f"{name}-{optimizer}").glob("version_*"))) == 1


def test_the_suite_covers_both_optimizers_three_streams_and_parts_in_series():
    names = scenarios.SCENARIOS
    assert len(names) >= 12 and set(scenarios.OPTIMIZERS) == {"adamw", "sgd"}
    assert any(len(s.streams) == 3 for s in names.values())
    assert any(s.finetune for s in names.values())
    # healthy at each optimizer's own base lr, not one lr for both
    assert scenarios.OPTIMIZERS["adamw"].lr != scenarios.OPTIMIZERS["sgd"].lr


def test_scenario_script_main_runs_one_scenario(tmp_path, capsys):
    argv = ["--scenario", "slow", "--optimizer", "sgd", "--epochs", "3", "--log-dir", str(tmp_path)]
    assert scenarios.main(argv) == 0
    out = capsys.readouterr().out
    assert "=== slow (sgd)" in out and "OK" in out and "depth learns slowly" in out
    assert "(adamw)" not in out
