"""TensorBoard's dashboards over a run in the stream-monitor layout, checked in headless Chromium through the DOM.

One TensorBoard and one browser serve the whole module (examples/dashboard_screenshots.py): Time Series,
Custom Scalars, Text and HParams are each opened once, screenshotted and read back (card titles, legends,
drawn lines, the verdict table, the hparams table, the smoothing and outlier settings).

Needs Debian's ``chromium`` and ``chromium-driver``: installed once with apt-get when running as root,
else the module is skipped. ``selenium`` is a dev dependency: its absence is a failure, not a skip.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dashboard_screenshots.py"
PACKAGES = ("chromium", "chromium-driver")

VERDICT_HEADER = ["stream", "rule", "state", "value", "threshold", "knob"]
VERDICT_ROWS = [
    ["rgb", "overfit", "warning", "1.31", "1.0", "weight_decay"],
    ["depth", "not_learning", "ok", "0.02", "0.05", "lr"],
]
HPARAMS = {"lr": 0.001, "batch_size": 32, "optimizer": "adamw"}
METRICS = {"hp/best_val_acc": 0.81, "hp/best_val_loss": 0.42}
STREAM_STEPS = (4, 9, 14)
SCORE_STEPS = (15, 31)


def _load():
    spec = importlib.util.spec_from_file_location("dashboard_screenshots_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


shots = _load()


def build_fake_run(root: Path) -> Path:
    """A finished run in the layout the stream monitor writes, as TensorBoard files under ``root``.

    ``version_0/`` holds the training run (``train/loss``, ``epoch``, the ``streams/verdict`` markdown table,
    the hparams summaries and their ``hp/*`` metrics as Lightning's TensorBoardLogger writes them, and a
    custom-scalars layout); ``version_0/rgb`` and ``version_0/depth`` each log the same tags
    ``streams/grad_norm`` and ``streams/overfit_score``; ``version_0/threshold`` logs the overfit threshold.
    A real training run can replace this function.

    Returns:
        The log directory to serve (``root``).
    """
    run = root / "version_0"
    with SummaryWriter(str(run)) as writer:
        for step, (loss, epoch) in zip(STREAM_STEPS, [(1.2, 0), (0.8, 1), (0.6, 2)], strict=True):
            writer.add_scalar("train/loss", loss, step)
            writer.add_scalar("epoch", epoch, step)
        table = [
            "| " + " | ".join(VERDICT_HEADER) + " |",
            "|" + "---|" * len(VERDICT_HEADER),
            *("| " + " | ".join(row) + " |" for row in VERDICT_ROWS),
        ]
        writer.add_text("streams/verdict", "\n".join(table), SCORE_STEPS[-1])
        writer.add_custom_scalars(
            {
                "streams": {
                    "grad norm per stream": ["Multiline", ["streams/grad_norm"]],
                    "overfit score": ["Multiline", ["streams/overfit_score"]],
                }
            }
        )
        # TensorBoardLogger.log_hyperparams: experiment, session start and session end summaries, then the
        # metric values as ordinary scalars under the same tags.
        file_writer = writer._get_file_writer()
        for summary in hparams(HPARAMS, dict.fromkeys(METRICS, 0)):
            file_writer.add_summary(summary)
        for tag, value in METRICS.items():
            writer.add_scalar(tag, value, SCORE_STEPS[-1])
    for name, grad_norms, scores in (("rgb", (0.5, 0.9, 0.7), (0.4, 1.3)), ("depth", (0.2, 0.3, 0.25), (0.1, 0.2))):
        with SummaryWriter(str(run / name)) as writer:
            for step, value in zip(STREAM_STEPS, grad_norms, strict=True):
                writer.add_scalar("streams/grad_norm", value, step)
            for step, value in zip(SCORE_STEPS, scores, strict=True):
                writer.add_scalar("streams/overfit_score", value, step)
    with SummaryWriter(str(run / "threshold")) as writer:
        for step in SCORE_STEPS:
            writer.add_scalar("streams/overfit_score", 1.0, step)
    return root


@pytest.fixture(scope="session")
def browser_installed():
    """Chromium and chromedriver on PATH: apt-get installs them once when running as root."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.fail("selenium is not installed; it is a dev dependency: pip install -e '.[dev]'")
    try:
        return shots.find_browser()
    except shots.BrowserNotFoundError as missing:
        if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip(f"{missing} (needs root and apt-get to install {' and '.join(PACKAGES)})")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", *PACKAGES]):
        done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    try:
        return shots.find_browser()
    except shots.BrowserNotFoundError as still_missing:
        pytest.fail(f"apt-get installed {' and '.join(PACKAGES)}, yet: {still_missing}")


@pytest.fixture(scope="module")
def pages(browser_installed, tmp_path_factory):
    """Each tab of the fake run, opened once: tab name to PageContent (with its screenshot)."""
    logdir = build_fake_run(tmp_path_factory.mktemp("tb_logs"))
    out_dir = tmp_path_factory.mktemp("shots")
    filters = {"timeseries": "streams/"}
    with shots.serve_tensorboard(logdir) as base_url, shots.open_browser(1600, 1000) as driver:
        return {tab: shots.capture(driver, base_url, tab, out_dir, tag_filter=filters.get(tab)) for tab in shots.TABS}


def test_time_series_shows_the_per_stream_runs_in_one_card(pages):
    page = pages["timeseries"]
    assert page.settings == {"smoothing": 0, "ignore_outliers": False, "tag_filter": "streams/"}
    assert page.titles == ["streams/grad_norm", "streams/overfit_score"]
    assert {"version_0/rgb", "version_0/depth"} <= set(page.runs)
    assert sorted(page.legends["streams/grad_norm"]) == ["version_0/depth", "version_0/rgb"]
    assert sorted(page.legends["streams/overfit_score"]) == ["version_0/depth", "version_0/rgb", "version_0/threshold"]
    assert page.lines == {"streams/grad_norm": 2, "streams/overfit_score": 3}
    # a run keeps its run-selector colour in every card's legend, and the two streams differ
    for title, runs in page.legends.items():
        for run in runs:
            assert page.legend_colors[f"{title}: {run}"] == page.run_colors[run]
    assert page.run_colors["version_0/rgb"] != page.run_colors["version_0/depth"]


def test_custom_scalars_draws_the_layout_charts(pages):
    page = pages["custom_scalars"]
    assert page.settings == {"smoothing": 0, "ignore_outliers": False}
    assert page.titles == ["grad norm per stream", "overfit score"]
    assert sorted(page.legends["grad norm per stream"]) == [
        "streams/grad_norm (version_0/depth)",
        "streams/grad_norm (version_0/rgb)",
    ]
    assert len(page.legends["overfit score"]) == 3
    assert page.lines["grad norm per stream"] >= 2 and page.lines["overfit score"] >= 3
    # each series is drawn in its run's colour (Custom Scalars colours by run, not by run and tag)
    for name, color in page.legend_colors.items():
        run = name.rsplit("(", 1)[1].rstrip(")")
        assert color.replace(" ", "") == _rgb(page.run_colors[run]), name


def test_text_shows_the_verdict_table(pages):
    page = pages["text"]
    assert page.titles == ["streams/verdict/text_summary"]
    assert page.legends["streams/verdict/text_summary"] == ["version_0"]
    assert page.tables == [[VERDICT_HEADER, *VERDICT_ROWS]]
    for cell in (*VERDICT_HEADER, *VERDICT_ROWS[0], *VERDICT_ROWS[1]):
        assert cell in page.texts[0]


def test_hparams_lists_the_hyperparameters_and_metrics(pages):
    page = pages["hparams"]
    assert {*HPARAMS, *METRICS} <= set(page.columns)
    assert len(page.rows) == 1
    row = dict(zip(page.columns, page.rows[0], strict=True))
    assert row["Trial ID"] == "version_0"
    assert row["optimizer"] == "adamw"
    for name, value in {**METRICS, "lr": HPARAMS["lr"], "batch_size": HPARAMS["batch_size"]}.items():
        assert float(row[name]) == pytest.approx(value), name


@pytest.mark.parametrize("tab", shots.TABS)
def test_screenshot_is_a_full_page(pages, tab):
    from PIL import Image

    path = pages[tab].screenshot
    assert path == path.parent / f"{tab}.png"
    assert path.stat().st_size > 10_000
    with Image.open(path) as image:
        assert image.size == (1600, 1000)
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # not one colour, nor a blank page with a few


def test_tensorboard_ends_with_the_block_and_a_bad_logdir_is_named(tmp_path):
    with pytest.raises(shots.DashboardError, match="no log directory"), shots.serve_tensorboard(tmp_path / "missing"):
        pass
    with shots.serve_tensorboard(build_fake_run(tmp_path / "logs")) as base_url:
        assert urllib.request.urlopen(base_url + "data/runs", timeout=5).status == 200
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base_url + "data/runs", timeout=5)


def _rgb(hex_color: str) -> str:
    red, green, blue = (int(hex_color.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgb({red},{green},{blue})"
