"""The scenario suite of examples/monitor_scenarios.py: the right stream is named each time."""

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


@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_scenario_verdict(name, tmp_path):
    scenario = scenarios.SCENARIOS[name]
    monitor = scenarios.run_scenario(scenario, log_dir=str(tmp_path))
    assert scenarios.verdict(scenario, monitor) == []
    warnings = [r for _, recs in monitor.recommendation_history for r in recs if r.severity == "warning"]
    if scenario.expect is None:
        assert not warnings
        assert all(value == 0 for key, points in monitor.history.items() if "/alerts/" in key for _, value in points)
        assert monitor.recommendations[-1].kind == "healthy"
    else:
        kind, stream = scenario.expect
        # the root cause, on the right stream, and nothing else at any epoch
        assert {(r.kind, r.stream) for r in warnings} == {(kind, stream)}
        flagged = next(r for r in warnings if r.kind == kind)
        assert flagged.stream == stream and flagged.message.startswith(stream)
        knob = {"overfitting": "weight_decay", "slow": "lr", "dominant": "lr", "too_fast": "lr"}[kind]
        assert f"the {stream} group's {knob}" in flagged.message
        # the advice also reached TensorBoard as text
        run_dirs = list((tmp_path / name).glob("version_*"))
        assert len(run_dirs) == 1


def test_scenario_script_main_runs_one_scenario(tmp_path, capsys):
    assert scenarios.main(["--scenario", "slow", "--epochs", "3", "--log-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "=== slow" in out and "OK" in out and "depth learns slowly" in out
