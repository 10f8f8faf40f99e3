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

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dashboard_screenshots.py"
PACKAGES = ("chromium", "chromium-driver")

STREAMS = ("rgb", "depth")
TIME_SERIES_FILTER = "^(streams/(overfit_score|grad_norm)|val/acc)$"


def _load():
    spec = importlib.util.spec_from_file_location("dashboard_screenshots_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


shots = _load()


def train_run(root: Path) -> Path:
    """A real, tiny fit of the RGB-D classifier with the dashboard parts, logged under ``root``.

    StreamTensorBoardLogger (one run per stream), StreamMonitor, PathwayAnalysis and
    GroupLearningRateMonitor, 3 epochs on 16 px synthetic streams where depth carries the signal.

    Returns:
        The log directory to serve (``root``).
    """
    import functools

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mslightning.callbacks import GroupLearningRateMonitor, PathwayAnalysis, StreamMonitor
    from mslightning.data import SyntheticStreamsDataModule
    from mslightning.loggers import StreamTensorBoardLogger
    from mslightning.modules import MultiStreamClassifier
    from mslightning.nn import WeightedFusion

    pl.seed_everything(0, verbose=False)
    data = SyntheticStreamsDataModule(
        streams={"rgb": 3, "depth": 1},
        signal={"rgb": 0.3, "depth": 1.0},
        num_classes=3,
        image_size=16,
        train_size=64,
        val_size=32,
        test_size=16,
        batch_size=16,
    )
    model = MultiStreamClassifier(
        streams={"rgb": 3, "depth": 1}, num_classes=3, fusion=functools.partial(WeightedFusion, dim=16)
    )
    trainer = pl.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        max_epochs=3,
        log_every_n_steps=2,
        logger=StreamTensorBoardLogger(root, name="", version=0),
        callbacks=[
            GroupLearningRateMonitor(),
            ModelCheckpoint(dirpath=root / "ckpt", monitor="val/fused/acc", mode="max"),
            StreamMonitor(verbose=False),
            PathwayAnalysis(every_n_epochs=1, verbose=False),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, data)
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
    logdir = train_run(tmp_path_factory.mktemp("tb_logs"))
    out_dir = tmp_path_factory.mktemp("shots")
    filters = {"timeseries": TIME_SERIES_FILTER}
    with shots.serve_tensorboard(logdir) as base_url, shots.open_browser(1600, 1000) as driver:
        return {tab: shots.capture(driver, base_url, tab, out_dir, tag_filter=filters.get(tab)) for tab in shots.TABS}


def test_time_series_overlays_the_streams_with_their_thresholds(pages):
    page = pages["timeseries"]
    assert page.settings == {"smoothing": 0, "ignore_outliers": False, "tag_filter": TIME_SERIES_FILTER}
    assert sorted(page.titles) == ["streams/grad_norm", "streams/overfit_score", "val/acc"]
    # one card per metric, a line per stream (its own run), the advice threshold as a line of its own
    assert sorted(page.legends["streams/grad_norm"]) == ["version_0/depth", "version_0/rgb"]
    assert sorted(page.legends["streams/overfit_score"]) == [
        "version_0/depth",
        "version_0/rgb",
        "version_0/threshold_upper",
    ]
    assert sorted(page.legends["val/acc"]) == ["version_0/depth", "version_0/fused", "version_0/rgb"]
    assert page.lines == {"streams/grad_norm": 2, "streams/overfit_score": 3, "val/acc": 3}
    # a stream keeps its colour in every card's legend, and the streams differ
    for title, runs in page.legends.items():
        for run in runs:
            assert page.legend_colors[f"{title}: {run}"] == page.run_colors[run]
    colours = [page.run_colors[f"version_0/{name}"] for name in (*STREAMS, "fused", "threshold_upper")]
    assert len(set(colours)) == len(colours)


def test_custom_scalars_groups_by_question_with_thresholds_in_the_titles(pages):
    page = pages["custom_scalars"]
    assert page.settings == {"smoothing": 0, "ignore_outliers": False}
    assert {
        "accuracy: train vs val",
        "overfit_score (overfitting above 1)",
        "update_ratio (stalled below 1e-07, too fast above 0.1)",
        "grad_norm_ratio (b dominant below 0.2, a dominant above 5)",
        "discrepancy_ratio (train)",
        "accuracy: streams alone, all and none",
    } <= set(page.titles)
    # no chart is empty, and no tag is drawn by two charts
    assert all(page.lines[title] >= 1 for title in page.titles), page.lines
    series = [entry for entries in page.legends.values() for entry in entries]
    assert len(series) == len(set(series)), sorted(series)
    assert sorted(page.legends["overfit_score (overfitting above 1)"]) == [
        "streams/overfit_score (version_0/depth)",
        "streams/overfit_score (version_0/rgb)",
        "streams/overfit_score (version_0/threshold_upper)",
    ]
    # each series is drawn in its run's colour (Custom Scalars colours by run, not by run and tag)
    for name, color in page.legend_colors.items():
        run = name.rsplit("(", 1)[1].rstrip(")")
        assert color.replace(" ", "") == _rgb(page.run_colors[run]), name


def test_text_shows_the_verdict_table_first_then_the_ablation(pages):
    page = pages["text"]
    assert page.titles[:2] == ["advice/streams/text_summary", "pathways/table/text_summary"]
    verdict, *_, ablation = page.tables
    assert verdict[0][:5] == ["rule", "threshold", "knob", *STREAMS]
    rules = {row[0]: row for row in verdict[1:]}
    assert {"overfitting", "too_fast", "nonfinite"} <= set(rules)
    assert rules["overfitting"][1] == "> 1"
    for cell in rules["overfitting"][3:5]:  # each stream's state and value
        assert cell.split(":")[0] in ("ok", "pending (1 of 2 epochs)", "pending (2 of 2 epochs)") or cell.startswith(
            "warning"
        )
    assert ablation[0] == ["stream", "accuracy alone", "Shapley value"]
    assert sorted(row[0] for row in ablation[1:]) == sorted(STREAMS)
    assert "Epoch 2" in page.texts[0]


def test_hparams_name_the_groups_and_show_real_metrics(pages):
    page = pages["hparams"]
    groups = ("rgb", "depth", "fusion", "head")
    expected = {"family", "fusion", "optimizer", *(f"lr/{g}" for g in groups), *(f"weight_decay/{g}" for g in groups)}
    assert expected <= set(page.columns)
    assert {"best/val/fused/acc", "best/val/rgb/acc", "best/val/depth/acc"} <= set(page.columns)
    assert not [c for c in page.columns if c.startswith("_") or "hp_metric" in c or "param_groups" in c]
    (cells,) = page.rows
    row = dict(zip(page.columns, cells, strict=True))
    assert row["Trial ID"] == "version_0"
    assert (row["family"], row["fusion"], row["optimizer"]) == ("MultiStreamClassifier", "WeightedFusion", "AdamW")
    assert float(row["lr/rgb"]) == pytest.approx(1e-3)
    assert 0 <= float(row["best/val/fused/acc"]) <= 1


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
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "logs" / "run")) as writer:
        writer.add_scalar("loss", 1.0, 0)
    with shots.serve_tensorboard(tmp_path / "logs") as base_url:
        assert urllib.request.urlopen(base_url + "data/runs", timeout=5).status == 200
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base_url + "data/runs", timeout=5)


def _rgb(hex_color: str) -> str:
    red, green, blue = (int(hex_color.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgb({red},{green},{blue})"
