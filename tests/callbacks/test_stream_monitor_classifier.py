"""StreamMonitor on one of our models: MultiStreamClassifier on the synthetic datamodule."""

from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from monitor_testkit import GradOracle, layout_charts, read_layout, read_scalars, read_texts, trainer_kwargs

from mslightning.callbacks import PathwayAnalysis, StreamMonitor
from mslightning.data import SyntheticStreamsDataModule
from mslightning.modules import MultiStreamClassifier
from mslightning.nn import WeightedFusion

STREAMS = ["rgb", "depth"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("classifier")
    pl.seed_everything(0, verbose=False)
    model = MultiStreamClassifier(streams={"rgb": 3, "depth": 1}, num_classes=3, fusion=partial(WeightedFusion, dim=16))
    data = SyntheticStreamsDataModule(
        image_size=16, train_size=16, val_size=8, test_size=8, batch_size=8, num_classes=3
    )
    monitor = StreamMonitor(verbose=False)  # streams from model.stream_patterns
    oracle = GradOracle({s: [f"encoders.{s}.", f"aux_heads.{s}."] for s in STREAMS})
    pathways = PathwayAnalysis(every_n_epochs=2, verbose=False)
    trainer = pl.Trainer(
        callbacks=[monitor, pathways, oracle], **trainer_kwargs(tmp_path, max_epochs=2, limit_train_batches=2)
    )
    trainer.fit(model, datamodule=data)
    return trainer, model, monitor, oracle, pathways


def test_streams_come_from_the_module(run):
    _, model, monitor, _, _ = run
    assert monitor.stream_names == STREAMS
    assert monitor._bindings["rgb"].names == [
        n for n, _ in model.named_parameters() if n.startswith(("encoders.rgb.", "aux_heads.rgb."))
    ]
    assert monitor._bindings["depth"].group_name == "depth"  # the classifier's named param groups


def test_logged_gradient_norms_equal_independent_norms(run):
    trainer, _, _, oracle, _ = run
    scalars = read_scalars(trainer.logger.log_dir)
    assert sorted(scalars["streams/grad_norm/rgb"]) == [0, 1, 2, 3] == sorted(oracle.grad_norm)
    for step in range(4):
        for s in STREAMS:
            assert scalars[f"streams/grad_norm/{s}"][step] == pytest.approx(oracle.grad_norm[step][s], rel=1e-5)
            assert scalars[f"streams/grad_max/{s}"][step] == pytest.approx(oracle.grad_max[step][s], rel=1e-5)
            assert scalars[f"streams/weight_norm/{s}"][step] == pytest.approx(oracle.weight_norm[step][s], rel=1e-5)


def test_tags_layout_fusion_weights_and_text(run):
    trainer, model, _, _, _ = run
    log_dir = trainer.logger.log_dir
    scalars = read_scalars(log_dir)
    for metric in ["grad_norm", "update_ratio", "overfit_score", "discrepancy_ratio"]:
        for s in STREAMS:
            assert f"streams/{metric}/{s}" in scalars, metric
    # what the classifier logs itself (each stream's accuracy and loss) and the optimizer's lr are not logged twice
    for metric in ["lr", "weight_decay", "train_acc", "val_acc", "train_loss", "val_loss"]:
        assert not any(tag.startswith(f"streams/{metric}/") for tag in scalars), metric
    for s in STREAMS:
        assert {f"train/{s}/acc", f"val/{s}/acc", f"train/{s}/loss_epoch", f"val/{s}/loss"} <= set(scalars)
    # the OGR is logged only where the val loss moved measurably, and is then bounded (2 / rel_tol)
    assert all(0 <= v <= 100 for tag, values in scalars.items() if "/ogr/" in tag for v in values.values())
    assert "streams/learning_speed/rgb_vs_depth" in scalars
    weights = model.fusion.stream_weights().detach()
    for i, s in enumerate(STREAMS):
        assert scalars[f"streams/fusion/weight/{s}"][3] == pytest.approx(weights[i].item(), rel=1e-6)
    charts = layout_charts(read_layout(log_dir))
    assert "streams: gradients/grad_norm" in charts
    assert "pathways: stream ablation/shapley" in charts  # one merged layout for both callbacks
    assert read_texts(log_dir, "advice/streams")


def test_pathway_analysis_on_the_classifier(run):
    trainer, _, _, _, pathways = run
    scalars = read_scalars(trainer.logger.log_dir)
    report = pathways.latest
    step = max(scalars["val/fused/acc"])  # the last epoch's, as Lightning logs it
    assert scalars["pathways/accuracy_all"][step] == pytest.approx(report.score_all)
    for s in STREAMS:
        assert scalars[f"pathways/shapley/{s}"][step] == pytest.approx(report.shapley[s], abs=1e-7)
        assert scalars[f"pathways/accuracy_alone/{s}"][step] == pytest.approx(report.score_alone[s])
    assert scalars["pathways/utilization/rgb_given_depth"][step] == pytest.approx(
        report.utilization["rgb|depth"], abs=1e-7
    )
    assert sum(report.shapley.values()) == pytest.approx(report.score_all - report.score_none, abs=1e-6)
    assert torch.is_grad_enabled()
