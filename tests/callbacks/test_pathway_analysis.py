from dataclasses import dataclass

import lightning.pytorch as pl
import pytest
import torch
from monitor_testkit import TwoBranchNet, layout_charts, loader, read_layout, read_scalars, read_texts, trainer_kwargs
from torch import nn

from mslightning.callbacks import PathwayAnalysis, StreamMonitor


@dataclass
class FakeReport:
    score_all: float
    score_none: float
    score_alone: dict
    shapley: dict
    utilization: dict

    def to_dict(self):
        return {}


class StandIn(TwoBranchNet):
    """A stand-in module implementing analyze_pathways with a report it can predict."""

    def __init__(self, **kwargs):
        super().__init__(declare_streams=True, **kwargs)
        self.calls = []
        self.bn = nn.BatchNorm1d(2)  # one module in train mode to check modes are restored

    def analyze_pathways(self, dataloader, reference_dataloader):
        self.calls.append(
            {
                "val_batches": len(dataloader),
                "train_batches": len(reference_dataloader),
                "grad": torch.is_grad_enabled(),
                "training": self.training,
            }
        )
        epoch = self.trainer.current_epoch
        return FakeReport(
            score_all=0.9,
            score_none=0.25,
            score_alone={"visible": 0.7, "thermal": 0.5 + 0.01 * epoch},
            shapley={"visible": 0.4, "thermal": 0.25},
            utilization={"visible|thermal": 0.3, "thermal|visible": 0.1},
        )


def test_runs_every_n_epochs_and_logs_the_report(tmp_path):
    model = StandIn()
    model.thermal_head.eval()  # a user's deliberate per-module mode must survive
    callback = PathwayAnalysis(every_n_epochs=2, verbose=False)
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, max_epochs=4))
    trainer.fit(model, loader(n=32), loader(n=16, seed=1))
    assert len(model.calls) == 2  # epochs 1 and 3
    call = model.calls[0]
    # runs right after the end-of-epoch validation (so a checkpoint saved there holds it)
    assert call == {"val_batches": 2, "train_batches": 4, "grad": False, "training": False}
    assert model.training and model.bn.training and not model.thermal_head.training
    scalars = read_scalars(trainer.logger.log_dir)
    # on Lightning's x-axis: the step its own epoch values of epochs 1 and 3 are logged at
    lightning_epoch_steps = sorted(scalars["train_loss_epoch"])
    assert sorted(scalars["pathways/accuracy_all"]) == lightning_epoch_steps[1::2] == [7, 15]
    assert scalars["pathways/accuracy_none"][7] == pytest.approx(0.25)
    assert scalars["pathways/accuracy_alone/thermal"][15] == pytest.approx(0.53)
    assert scalars["pathways/shapley/visible"][7] == pytest.approx(0.4)
    assert scalars["pathways/utilization/visible_given_thermal"][7] == pytest.approx(0.3)
    assert scalars["pathways/utilization/thermal_given_visible"][7] == pytest.approx(0.1)
    assert callback.history["pathways/accuracy_alone/thermal"] == [(1, pytest.approx(0.51)), (3, pytest.approx(0.53))]
    charts = layout_charts(read_layout(trainer.logger.log_dir))
    titles = ("score: streams alone, all and none", "shapley", "utilization")
    assert set(charts) == {f"pathways: stream ablation/{c}" for c in titles}
    (table,) = read_texts(trainer.logger.log_dir, "pathways/table")[-1:]
    assert "| thermal | 0.53 | 0.25 |" in table and "accuracy_all 0.9" in table


def test_layout_is_merged_with_the_monitor(tmp_path):
    callbacks = [StreamMonitor(verbose=False), PathwayAnalysis(every_n_epochs=1, verbose=False)]
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(StandIn(), loader(), loader(seed=1))
    charts = layout_charts(read_layout(trainer.logger.log_dir))
    assert "pathways: stream ablation/shapley" in charts and "streams: gradients/grad_norm" in charts


def test_checkpoint_saved_after_validation_holds_the_analysis(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=False)
    callback = PathwayAnalysis(every_n_epochs=1, verbose=False)
    model = StandIn()
    kwargs = trainer_kwargs(tmp_path, max_epochs=2, enable_checkpointing=True)
    pl.Trainer(callbacks=[callback, checkpoint], **kwargs).fit(model, loader(), loader(seed=1))
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"][callback.state_key]
    assert [e for e, _ in state["history"]["pathways/accuracy_alone/thermal"]] == [0, 1]
    assert len(model.calls) == 2  # once per epoch

    # resuming runs on_train_epoch_end of the checkpoint's epoch again: no second analysis
    resumed, model = PathwayAnalysis(every_n_epochs=1, verbose=False), StandIn()
    kwargs = trainer_kwargs(tmp_path / "resumed", max_epochs=3)
    pl.Trainer(callbacks=[resumed], **kwargs).fit(
        model, loader(), loader(seed=1), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert [e for e, _ in resumed.history["pathways/accuracy_alone/thermal"]] == [0, 1, 2]
    assert len(model.calls) == 1


def test_module_without_analyze_pathways_is_an_error(tmp_path):
    trainer = pl.Trainer(callbacks=[PathwayAnalysis()], **trainer_kwargs(tmp_path))
    with pytest.raises(TypeError, match="TwoBranchNet.analyze_pathways"):
        trainer.fit(TwoBranchNet(), loader(), loader(seed=1))


def test_no_validation_loader_skips_with_one_warning(tmp_path):
    callback = PathwayAnalysis(every_n_epochs=1, verbose=False)
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, max_epochs=2, limit_val_batches=0))
    with pytest.warns(UserWarning, match="no validation dataloader") as record:
        trainer.fit(StandIn(), loader())
    assert sum("no validation dataloader" in str(w.message) for w in record) == 1
    assert callback.history == {}


def test_bad_report_is_a_clear_error(tmp_path):
    class Broken(StandIn):
        def analyze_pathways(self, dataloader, reference_dataloader):
            report = super().analyze_pathways(dataloader, reference_dataloader)
            report.utilization = {"visible-thermal": 0.3}
            return report

    trainer = pl.Trainer(callbacks=[PathwayAnalysis(every_n_epochs=1)], **trainer_kwargs(tmp_path, max_epochs=1))
    with pytest.raises(ValueError, match="'m\\|n', got 'visible-thermal'"):
        trainer.fit(Broken(), loader(), loader(seed=1))


def test_state_dict_round_trip_and_validation():
    callback = PathwayAnalysis()
    callback.history = {"pathways/accuracy_all": [(1, 0.9)]}
    restored = PathwayAnalysis()
    restored.load_state_dict(callback.state_dict())
    assert restored.history == callback.history
    assert PathwayAnalysis(prefix="a").state_key != PathwayAnalysis(prefix="b").state_key
    with pytest.raises(ValueError, match="every_n_epochs"):
        PathwayAnalysis(every_n_epochs=0)
    with pytest.raises(ValueError, match="prefix"):
        PathwayAnalysis(prefix="")


def test_each_declared_figure_gets_a_chart_of_its_own():
    """The ConvGRU reports correlations and bits per spike: two scales, never in one chart."""
    import re
    from types import SimpleNamespace

    callback = PathwayAnalysis(verbose=False)
    module = SimpleNamespace(pathway_metrics=("corr", "bits_per_spike"), analyze_pathways=lambda *a: None)
    callback.setup(SimpleNamespace(), module, "fit")
    (charts,) = callback.custom_scalar_layout().values()
    keys = ["pathways/corr_all", "pathways/corr_alone/frames", "pathways/bits_per_spike_none", "pathways/shapley/x"]
    drawn = {title: [k for k in keys if any(re.match(r, k) for r in chart[1])] for title, chart in charts.items()}
    assert drawn == {
        "corr: streams alone, all and none": ["pathways/corr_all", "pathways/corr_alone/frames"],
        "bits_per_spike: streams alone, all and none": ["pathways/bits_per_spike_none"],
        "shapley": ["pathways/shapley/x"],
        "utilization": [],
    }


def test_the_table_keeps_each_figure_in_its_own_column():
    """Extras such as bits_per_spike_alone/<s> get their own column; they never overwrite the score's."""
    from types import SimpleNamespace

    callback = PathwayAnalysis(verbose=False)
    module = SimpleNamespace(pathway_metrics=("corr", "bits_per_spike"), analyze_pathways=lambda *a: None)
    callback.setup(SimpleNamespace(), module, "fit")
    flat = {
        "pathways/corr_all": 0.5,
        "pathways/corr_none": 0.0,
        "pathways/corr_alone/stimulus": 0.45,
        "pathways/corr_alone/behaviour": 0.12,
        "pathways/shapley/stimulus": 0.4,
        "pathways/shapley/behaviour": 0.1,
        "pathways/bits_per_spike_alone/stimulus": 0.18,
        "pathways/bits_per_spike_alone/behaviour": -0.05,
        "pathways/bits_per_spike_all": 0.2,
    }
    lines = callback._table(flat, "corr").splitlines()
    assert lines[0] == "| stream | corr alone | bits_per_spike alone | Shapley value |"
    assert lines[2:4] == ["| stimulus | 0.45 | 0.18 | 0.4 |", "| behaviour | 0.12 | -0.05 | 0.1 |"]
    assert lines[-1] == "corr_all 0.5, corr_none 0, bits_per_spike_all 0.2"


def test_a_single_declared_figure_may_be_a_string():
    from types import SimpleNamespace

    callback = PathwayAnalysis(verbose=False)
    callback.setup(SimpleNamespace(), SimpleNamespace(pathway_metrics="corr", analyze_pathways=lambda *a: None), "fit")
    (charts,) = callback.custom_scalar_layout().values()
    assert "corr: streams alone, all and none" in charts
