"""Every code block of README.md and docs/*.md runs as written.

``python`` blocks run one by one, each in a fresh namespace and an empty working directory;
``yaml`` blocks that configure the CLI (``model:``/``data:``/``trainer:``) are laid over a
minimal config (the classifier on the synthetic data) and must parse (``--print_config``).
``bash`` and ``text`` blocks are not run here (the configs' tests run the commands).
"""

import re
from pathlib import Path

import pytest
import yaml

from mslightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BASE_CONFIG = """\
model: {class_path: mslightning.modules.MultiStreamClassifier}
data: {class_path: mslightning.data.SyntheticStreamsDataModule}
"""
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def _blocks(language):
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                line = text[: match.start()].count("\n") + 1
                found.append(pytest.param(doc, line, match.group(2), id=f"{doc.name}:{line}"))
    return found


@pytest.mark.parametrize(("doc", "line", "code"), _blocks("python"))
def test_python_block_runs(doc, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # line numbers in tracebacks point into the document
    exec(compile("\n" * line + code, str(doc), "exec"), {"__name__": f"docs_{doc.stem}_{line}"})


@pytest.mark.parametrize(("doc", "line", "code"), _blocks("yaml"))
def test_yaml_block_parses(doc, line, code, tmp_path, capsys):
    config = yaml.safe_load(code)
    assert isinstance(config, dict)
    if not {"model", "data", "trainer"} & set(config):
        pytest.skip("not a CLI configuration")
    base, block = tmp_path / "base.yaml", tmp_path / "block.yaml"
    base.write_text(BASE_CONFIG)
    block.write_text(code)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(base), "--config", str(block), "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err
