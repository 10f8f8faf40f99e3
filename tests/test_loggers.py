"""StreamTensorBoardLogger and GroupLearningRateMonitor against Lightning's own logger and lr monitor.

The oracle is the same seeded fit logged by Lightning's ``TensorBoardLogger`` and
``LearningRateMonitor``: every value must be found again, at the same step, in the stream's own
run under the key without the stream, and nothing else may change.
"""

import functools
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch import nn

from mslightning.callbacks import GroupLearningRateMonitor, PathwayAnalysis, StreamMonitor
from mslightning.data import SyntheticStreamsDataModule
from mslightning.loggers import StreamTensorBoardLogger, readable_hparams
from mslightning.modules import MultiStreamClassifier
from mslightning.nn import WeightedFusion
from mslightning.optim import ParamGroup

STREAMS = {"rgb": 3, "depth": 1}


def _accumulator(path: Path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def read_runs(log_dir: Path) -> dict[str, dict[str, dict[int, float]]]:
    """Run (relative to log_dir, "" for the training run) -> tag -> step -> value."""
    runs = {}
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        run = str(events.parent.relative_to(log_dir)).replace(".", "")
        acc = _accumulator(events.parent)
        runs[run] = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    return runs


def _fit(tmp_path: Path, logger, lr_monitor) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    data = SyntheticStreamsDataModule(
        streams=STREAMS, num_classes=3, image_size=16, train_size=48, val_size=32, test_size=16, batch_size=16
    )
    model = MultiStreamClassifier(
        streams=STREAMS,
        num_classes=3,
        fusion=functools.partial(WeightedFusion, dim=16),
        param_groups=[ParamGroup("rgb", lr=2e-3), ParamGroup("depth"), ParamGroup("fusion"), ParamGroup("head")],
        no_weight_decay_on_norm_and_bias=True,
    )
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=2,
        log_every_n_steps=1,
        logger=logger,
        callbacks=[
            lr_monitor,
            ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/fused/acc", mode="max"),
            StreamMonitor(verbose=False, report=False),
            PathwayAnalysis(every_n_epochs=1, verbose=False),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    trainer.fit(model, data)
    return trainer


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory):
    plain_dir, stream_dir = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("streams")
    plain = _fit(plain_dir, TensorBoardLogger(plain_dir, name="tb", version=0), GroupLearningRateMonitor())
    routed = _fit(stream_dir, StreamTensorBoardLogger(stream_dir, name="tb", version=0), GroupLearningRateMonitor())
    return plain, routed


def test_every_value_is_in_its_streams_run_under_the_key_without_the_stream(both_runs):
    plain, routed = both_runs
    expected = read_runs(Path(plain.logger.log_dir))[""]
    runs = read_runs(Path(routed.logger.log_dir))
    assert set(runs) == {"", "rgb", "depth", "fused", "rgb_vs_depth", "threshold_upper", "threshold_lower"}
    logger = routed.logger
    for key, series in expected.items():
        if key == "hp_metric":
            continue
        run, tag = logger.split_key(key)
        assert runs["" if run is None else run][tag] == pytest.approx(series, rel=1e-6), key
    # nothing but that: every routed value came from a Lightning key, plus the thresholds and best-so-far values
    routed_keys = {(run, tag) for run, tags in runs.items() for tag in tags}
    from_lightning = {(lambda r, t: (r or "", t))(*logger.split_key(key)) for key in expected if key != "hp_metric"}
    extra = routed_keys - from_lightning
    assert all(run.startswith("threshold_") or tag.startswith("best/") for run, tag in extra), extra
    # the streams' curves share tags, so TensorBoard overlays them in one card, one colour per run
    assert {"streams/grad_norm", "streams/overfit_score", "train/acc", "pathways/shapley"} <= set(runs["rgb"])
    assert set(runs["rgb"]) == set(runs["depth"])
    in_training_run = [tag for tag in runs[""] if not tag.startswith("best/")]
    assert not [tag for tag in in_training_run if any(f"/{s}/" in tag or tag.endswith(f"/{s}") for s in STREAMS)]


def test_thresholds_are_lines_in_their_metrics_charts(both_runs):
    _, routed = both_runs
    runs = read_runs(Path(routed.logger.log_dir))
    upper, lower = runs["threshold_upper"], runs["threshold_lower"]
    assert set(upper["streams/overfit_score"]) == set(runs["rgb"]["streams/overfit_score"])  # the same x-axis
    for run, tag, value in (
        (upper, "streams/overfit_score", 1.0),
        (upper, "streams/update_ratio", 0.1),
        (lower, "streams/update_ratio", 1e-7),
        (upper, "streams/grad_norm_ratio", 5.0),
        (lower, "streams/grad_norm_ratio", 0.2),
    ):
        assert list(run[tag].values()) == pytest.approx([value] * len(run[tag]), rel=1e-6), tag


def test_no_series_is_written_twice(both_runs):
    plain, routed = both_runs
    before = read_runs(Path(plain.logger.log_dir))[""]
    runs = read_runs(Path(routed.logger.log_dir))
    # Lightning's own logger wrote hp_metric = -1; the stream logger writes none
    assert before["hp_metric"] == {0: -1.0} and all("hp_metric" not in tags for tags in runs.values())
    # the lr monitor keeps each group's lr once (the no-decay sub-group's is the same)
    assert not [tag for tags in runs.values() for tag in tags if "no_decay" in tag]
    # the monitor logs neither the optimizer's lr nor what the classifier logs itself
    for tags in runs.values():
        assert not [tag for tag in tags if tag.split("/")[:2] in (["streams", "lr"], ["streams", "train_acc"])]
        monitor_series = {tag: s for tag, s in tags.items() if tag.startswith("streams/")}
        others = [s for tag, s in tags.items() if not tag.startswith(("streams/", "best/"))]
        for tag, series in monitor_series.items():
            if len(set(series.values())) > 1:  # constant series (0 alerts, 0 NaN) agree by coincidence
                assert all(series != other for other in others), tag


def test_hparams_name_groups_and_carry_real_metrics(both_runs):
    _, routed = both_runs
    log_dir = Path(routed.logger.log_dir)
    acc = _accumulator(log_dir)
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    names = {info.name for info in experiment.hparam_infos}
    assert {"family", "optimizer", "fusion", "lr/rgb", "lr/depth", "weight_decay/rgb", "lr/head"} <= names
    assert not [n for n in names if n.startswith(("param_groups", "_")) or "no_decay" in n]
    assert start.hparams["family"].string_value == "MultiStreamClassifier"
    assert start.hparams["fusion"].string_value == "WeightedFusion"
    assert start.hparams["optimizer"].string_value == "AdamW"
    assert start.hparams["lr/rgb"].number_value == pytest.approx(2e-3)
    assert start.hparams["lr/depth"].number_value == pytest.approx(1e-3)  # inherited from the optimizer
    metrics = {info.name.tag for info in experiment.metric_infos}
    assert metrics == {f"best/val/{out}/acc" for out in ("fused", "rgb", "depth")}
    runs = read_runs(log_dir)
    for out in ("fused", "rgb"):
        val = runs["fused" if out == "fused" else out]["val/acc"]
        best = runs[""][f"best/val/{out}/acc"]
        assert [best[step] for step in sorted(best)] == [
            max(val[s] for s in sorted(val) if s <= step) for step in sorted(best)
        ]


def test_readable_hparams_of_a_module_without_a_trainer():
    model = MultiStreamClassifier(streams=STREAMS, num_classes=3, backbone="resnet18")
    readable = readable_hparams(model)
    assert readable == {"family": "MultiStreamClassifier", "backbone": "resnet18", "fusion": "ConcatFusion"}


def test_split_key_and_bad_streams(tmp_path):
    logger = StreamTensorBoardLogger(tmp_path, streams=["rgb", "depth", "ir"])
    assert logger.run_names == ["rgb", "depth", "ir", "rgb_vs_depth", "rgb_vs_ir", "depth_vs_ir"]
    logger.add_runs(["depth", "fused"])  # known names are kept once; pairs are never made of pairs
    assert len(logger.run_names) == len(set(logger.run_names)) == 10
    assert not [name for name in logger.run_names if name.count("_vs_") > 1]
    assert logger.split_key("streams/grad_norm/rgb") == ("rgb", "streams/grad_norm")
    assert logger.split_key("train/depth/acc") == ("depth", "train/acc")
    assert logger.split_key("lr-AdamW/ir/no_decay") == ("ir", "lr-AdamW/no_decay")
    assert logger.split_key("streams/grad_norm_ratio/rgb_vs_ir") == ("rgb_vs_ir", "streams/grad_norm_ratio")
    assert logger.split_key("pathways/utilization/rgb_given_depth") == (None, "pathways/utilization/rgb_given_depth")
    assert logger.split_key("best/val/rgb/acc") == (None, "best/val/rgb/acc")
    assert logger.split_key("rgb") == (None, "rgb")
    for bad in ("rgb", ["a/b"], [""]):
        with pytest.raises(ValueError, match="streams must be a list of names"):
            StreamTensorBoardLogger(tmp_path, streams=bad)


class _NamedGroups(pl.LightningModule):
    """Two named groups, each with a no-decay sub-group; one sub-group's lr differs from its group's."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.b(self.a(batch[0])).pow(2).mean()

    def configure_optimizers(self):
        groups = [
            {"name": "a", "params": [self.a.weight], "lr": 0.1},
            {"name": "a/no_decay", "params": [self.a.bias], "lr": 0.1, "weight_decay": 0.0},
            {"name": "b", "params": [self.b.weight], "lr": 0.1},
            {"name": "b/no_decay", "params": [self.b.bias], "lr": 0.2, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, weight_decay=0.01)


@pytest.mark.parametrize("log_weight_decay", [False, True])
def test_group_lr_monitor_drops_only_copies(tmp_path, log_weight_decay):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    logged = {}
    for name, monitor in (
        ("lightning", LearningRateMonitor(log_weight_decay=log_weight_decay)),
        ("group", GroupLearningRateMonitor(log_weight_decay=log_weight_decay)),
    ):
        trainer = pl.Trainer(
            default_root_dir=tmp_path,
            max_epochs=1,
            log_every_n_steps=1,
            logger=TensorBoardLogger(tmp_path, name=name, version=0),
            callbacks=[monitor],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        trainer.fit(_NamedGroups(), data)
        logged[name] = read_runs(Path(trainer.logger.log_dir))[""]
    dropped = set(logged["lightning"]) - set(logged["group"])
    assert dropped == {"lr-AdamW/a/no_decay"}  # b's differs (0.2), and weight decays differ (0 vs 0.01)
    assert {key: logged["lightning"][key] for key in logged["group"]} == logged["group"]


def test_a_bad_best_metrics_mode_is_named_at_fit_start(tmp_path):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    model = _NamedGroups()
    model.best_metrics = {"val/acc": "maximum"}
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        logger=StreamTensorBoardLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with pytest.raises(ValueError, match=r"_NamedGroups.best_metrics must map keys to 'max' or 'min'.*maximum"):
        trainer.fit(model, data)
