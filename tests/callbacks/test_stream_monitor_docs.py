"""The complete StreamMonitor example of the README runs as written."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "README.md"


def _first_python_block_after(heading: str) -> str:
    text = DOC.read_text()
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_drop_in_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs_example"}
    example = _first_python_block_after("### Drop StreamMonitor into your own trainer")
    exec(compile(example, str(DOC), "exec"), namespace)
    monitor = namespace["monitor"]
    assert [epoch for epoch, _ in namespace["grad_norms"]] == [0, 1, 2]
    assert monitor.stream_names == ["rgb", "depth"]
    assert "streams/overfit_score/depth" in monitor.history
    out = capsys.readouterr().out
    assert "StreamMonitor summary" in out and "Recommendations" in out
    assert list((tmp_path / "lightning_logs" / "rgbd").glob("version_0/events.out.tfevents.*"))
