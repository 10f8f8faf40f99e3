"""StreamMonitor with Lightning's own callbacks: EarlyStopping, LearningRateMonitor, the logging x-axis."""

import logging

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from monitor_testkit import USER_STREAMS, TwoBranchNet, loader, read_scalars, trainer_kwargs

from mslightning.callbacks import StreamMonitor, StreamThresholds


def test_early_stopping_monitors_an_epoch_metric_of_the_monitor_listed_after_it(tmp_path):
    pl.seed_everything(0, verbose=False)
    # EarlyStopping first: its on_validation_end runs before the monitor's, so the value must already be there
    stopper = EarlyStopping(monitor="streams/overfit_score/thermal", mode="min", patience=0, min_delta=10.0)
    monitor = StreamMonitor(streams=USER_STREAMS, verbose=False, thresholds=StreamThresholds(chance_margin=0.01))
    trainer = pl.Trainer(callbacks=[stopper, monitor], **trainer_kwargs(tmp_path, max_epochs=5))
    trainer.fit(TwoBranchNet(), loader(), loader(seed=1))
    # min_delta 10 makes every epoch after the first "no improvement": stopped after epoch 1
    assert trainer.current_epoch == 2 and stopper.stopped_epoch == 1
    value = trainer.callback_metrics["streams/overfit_score/thermal"]
    assert isinstance(value, torch.Tensor)
    assert value.item() == pytest.approx(monitor.history["streams/overfit_score/thermal"][-1][1])
    assert "streams/val_acc/visible" in trainer.callback_metrics


class TwoOptimizers(TwoBranchNet):
    """Manual optimisation with one unnamed AdamW per branch (head with the first)."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        out = self._step(batch)
        for optimizer in self.optimizers():
            optimizer.zero_grad()
        self.manual_backward(out["loss"])
        for optimizer in self.optimizers():
            optimizer.step()
        return out

    def configure_optimizers(self):
        first = [*self.branch_params("visible"), *self.fusion_head.parameters()]
        return torch.optim.AdamW(first, lr=1e-3), torch.optim.AdamW(self.branch_params("thermal"), lr=2e-3)


def test_two_optimizers_of_one_class_are_named_as_learning_rate_monitor_names_them(tmp_path):
    monitor = StreamMonitor(streams=USER_STREAMS, verbose=False)
    trainer = pl.Trainer(callbacks=[LearningRateMonitor(), monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(TwoOptimizers(), loader(), loader(seed=1))
    lr_tags = {tag.removeprefix("lr-") for tag in read_scalars(trainer.logger.log_dir) if tag.startswith("lr-")}
    assert lr_tags == {"AdamW", "AdamW-1"}  # the oracle: Lightning's own names
    assert [monitor._bindings[s].group_name for s in ("visible", "thermal")] == ["AdamW", "AdamW-1"]
    assert monitor.latest["streams/lr/thermal"] == pytest.approx(2e-3)


def test_step_and_epoch_metrics_share_lightnings_x_axis(tmp_path):
    monitor = StreamMonitor(streams=USER_STREAMS, verbose=False, log_every_n_steps=2)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, log_every_n_steps=2))
    trainer.fit(TwoBranchNet(), loader(), loader(seed=1))
    scalars = read_scalars(trainer.logger.log_dir)
    assert sorted(scalars["streams/grad_norm/visible"]) == sorted(scalars["train_loss_step"]) == [1, 3, 5, 7]
    assert sorted(scalars["streams/val_acc/visible"]) == sorted(scalars["train_loss_epoch"]) == [3, 7]


def test_parameters_outside_every_stream_are_listed_once(tmp_path, caplog):
    monitor = StreamMonitor(streams={"visible": "visible_net.*"}, verbose=False)
    with caplog.at_level(logging.INFO):
        trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path))
        trainer.fit(TwoBranchNet(protocol=False), loader(), loader(seed=1))
    notes = [r.message for r in caplog.records if "belong to no stream" in r.message]
    assert len(notes) == 1
    assert "'thermal_net.0.weight'" in notes[0] and "'fusion_head.weight'" in notes[0]
    assert "'visible_net.0.weight'" not in notes[0]


def test_ranking_outputs_give_pair_metrics(tmp_path):
    from mslightning.streams import RankingOutputs

    class PairwiseStreams(TwoBranchNet):
        """Each branch scores whether the first half of the batch is preferred to the second."""

        def _step(self, batch):
            inputs, target = batch
            _, stream_logits = self(inputs)
            scores = {s: z[:, 0] for s, z in stream_logits.items()}
            half = target.shape[0] // 2
            preference = (target[:half] > target[half:]).float()
            pair_logits = {s: v[:half] - v[half:] for s, v in scores.items()}
            loss = sum(F.binary_cross_entropy_with_logits(z, preference) for z in pair_logits.values())
            return {"loss": loss, "stream_outputs": RankingOutputs(pair_logits, preference)}

    monitor = StreamMonitor(streams=USER_STREAMS, verbose=False)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path))
    trainer.fit(PairwiseStreams(), loader(), loader(seed=1))
    scalars = read_scalars(trainer.logger.log_dir)
    for metric in ("train_pair_acc", "val_pair_acc", "pair_acc_gap", "overfit_score", "preferred_prob"):
        assert f"streams/{metric}/visible" in scalars, metric
    assert not any("/train_acc/" in tag for tag in scalars)
    assert "train pair_acc" in monitor.summary()


def test_poisson_outputs_give_correlation_metrics(tmp_path):
    from mslightning.streams import PoissonOutputs

    class ResponsesPerStream(TwoBranchNet):
        """Each branch predicts the (B, 3) responses of three neurons to the sample."""

        def _step(self, batch):
            inputs, target = batch
            _, stream_logits = self(inputs)
            counts = torch.stack([target == k for k in range(3)], dim=1).float() * 4
            rates = {s: F.softplus(z) for s, z in stream_logits.items()}
            loss = sum(F.poisson_nll_loss(r, counts, log_input=False) for r in rates.values())
            return {"loss": loss, "stream_outputs": PoissonOutputs(rates, counts)}

    monitor = StreamMonitor(streams=USER_STREAMS, verbose=False)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path))
    trainer.fit(ResponsesPerStream(), loader(), loader(seed=1))
    scalars = read_scalars(trainer.logger.log_dir)
    for metric in ("train_corr", "val_corr", "corr_gap", "overfit_score", "corr_clipped"):
        assert f"streams/{metric}/thermal" in scalars, metric
    assert -1 <= monitor.history["streams/val_corr/visible"][-1][1] <= 1


class OneOptimizerPerBranchInTurn(TwoOptimizers):
    """Each branch has its own loss, backward and step, one after the other (GAN-style)."""

    def training_step(self, batch, batch_idx):
        inputs, target = batch
        _, stream_logits = self(inputs)
        for optimizer, stream in zip(self.optimizers(), ("visible", "thermal"), strict=True):
            optimizer.zero_grad()
            self.manual_backward(F.cross_entropy(stream_logits[stream], target), retain_graph=True)
            optimizer.step()
        return {"loss": torch.tensor(0.0), "target": target, "stream_logits": stream_logits}


class GradsAtEachOptimizer(Callback):
    def __init__(self):
        self.norms = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        stream = "visible" if optimizer is trainer.optimizers[0] else "thermal"
        grads = [p.grad.flatten() for p in pl_module.branch_params(stream) if p.grad is not None]
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        self.norms[(step, stream)] = torch.linalg.vector_norm(torch.cat(grads)).item()


def test_each_stream_is_read_at_its_own_optimizers_step(tmp_path):
    oracle = GradsAtEachOptimizer()
    monitor = StreamMonitor(streams={"visible": "visible_*", "thermal": "thermal_*"}, verbose=False)
    trainer = pl.Trainer(callbacks=[oracle, monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(OneOptimizerPerBranchInTurn(), loader(), loader(seed=1))
    scalars = read_scalars(trainer.logger.log_dir)
    for (step, stream), norm in oracle.norms.items():
        assert scalars[f"streams/grad_norm/{stream}"][step] == pytest.approx(norm, rel=1e-5), (step, stream)
    assert {step for step, _ in oracle.norms} == set(scalars["streams/grad_norm/thermal"]) == {0, 1, 2, 3}


class ValLossAtEachValidation(Callback):
    """Listed before the monitor: what a checkpoint or early stopping would read, and the truth."""

    def __init__(self):
        self.seen, self.truth, self._batches = [], [], []

    def on_validation_epoch_start(self, trainer, pl_module):
        self._batches = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batches.append((outputs["stream_logits"]["visible"], outputs["target"]))

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        logits = torch.cat([z for z, _ in self._batches])
        target = torch.cat([y for _, y in self._batches])
        self.truth.append(F.cross_entropy(logits.double(), target).item())
        self.seen.append(trainer.callback_metrics["streams/val_loss/visible"].item())


def test_mid_epoch_validations_give_fresh_values_to_checkpoints_and_early_stopping(tmp_path):
    recorder = ValLossAtEachValidation()
    stopper = EarlyStopping(monitor="streams/val_loss/visible", patience=100)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="streams/val_acc/thermal", mode="max")
    monitor = StreamMonitor(streams=USER_STREAMS, verbose=False)
    kwargs = trainer_kwargs(tmp_path, max_epochs=2, val_check_interval=0.5, enable_checkpointing=True)
    trainer = pl.Trainer(callbacks=[recorder, stopper, checkpoint, monitor], **kwargs)
    trainer.fit(TwoBranchNet(), loader(), loader(seed=1))
    assert len(recorder.seen) == 4  # two validations per epoch
    assert recorder.seen == pytest.approx(recorder.truth, rel=1e-5)
    assert checkpoint.best_model_path


def test_two_monitors_watching_different_streams_of_one_model(tmp_path, caplog):
    visible = StreamMonitor(streams={"visible": "visible_*"}, prefix="a", verbose=False)
    thermal = StreamMonitor(streams={"thermal": "thermal_*"}, prefix="b", verbose=False)
    with caplog.at_level(logging.INFO):
        trainer = pl.Trainer(callbacks=[visible, thermal], **trainer_kwargs(tmp_path))
        trainer.fit(TwoBranchNet(), loader(), loader(seed=1))
    scalars = read_scalars(trainer.logger.log_dir)
    assert "a/val_acc/visible" in scalars and "b/val_acc/thermal" in scalars
    assert "a/val_acc/thermal" not in scalars and "b/val_acc/visible" not in scalars
    assert sum("which this monitor does not watch" in r.message for r in caplog.records) == 2  # once per monitor


def test_a_target_that_is_no_tensor_is_a_clear_error(tmp_path):
    class ListTarget(TwoBranchNet):
        def _step(self, batch):
            out = super()._step(batch)
            return {**out, "target": out["target"].tolist()}

    trainer = pl.Trainer(callbacks=[StreamMonitor(streams=USER_STREAMS, verbose=False)], **trainer_kwargs(tmp_path))
    with pytest.raises(ValueError, match="target must be a tensor, got list"):
        trainer.fit(ListTarget(), loader(), loader(seed=1))


def test_pretrained_parts_must_name_monitored_streams(tmp_path):
    class Declared(TwoBranchNet):
        pretrained_parts = ("visibel",)

    trainer = pl.Trainer(callbacks=[StreamMonitor(streams=USER_STREAMS, verbose=False)], **trainer_kwargs(tmp_path))
    with pytest.raises(ValueError, match=r"pretrained_parts names \['visibel'\], which are not streams"):
        trainer.fit(Declared(), loader(), loader(seed=1))


class _OwnCharts(Callback):
    """A third-party layout provider written before layouts took the tag mapping."""

    def custom_scalar_layout(self):
        return {"mine": {"loss": ["Multiline", ["^train_loss"]]}}


@pytest.mark.parametrize("check_val_every_n_epoch", [1, 2])
def test_layout_has_the_validation_charts_even_when_the_first_epoch_is_not_validated(tmp_path, check_val_every_n_epoch):
    from monitor_testkit import layout_charts, read_layout

    callbacks = [_OwnCharts(), StreamMonitor(streams=USER_STREAMS, verbose=False, report=False)]
    kwargs = trainer_kwargs(tmp_path, max_epochs=2, check_val_every_n_epoch=check_val_every_n_epoch)
    trainer = pl.Trainer(callbacks=callbacks, **kwargs)
    trainer.fit(TwoBranchNet(), loader(), loader(seed=1))
    charts = layout_charts(read_layout(trainer.logger.log_dir))
    assert "streams: overfitting/overfit_score (overfitting above 1)" in charts
    assert "streams: train vs val/score: train vs val" in charts
    assert charts["mine/loss"] == ["^train_loss"]  # merged, called without the tag mapping


def test_without_per_stream_predictions_there_are_no_charts_of_them(tmp_path):
    """Parts in series (or any model without the protocol): no overfitting or balance chart to stay empty."""
    from monitor_testkit import layout_charts, read_layout

    trainer = pl.Trainer(callbacks=[StreamMonitor(streams=USER_STREAMS, verbose=False)], **trainer_kwargs(tmp_path))
    trainer.fit(TwoBranchNet(protocol=False), loader(), loader(seed=1))
    charts = list(layout_charts(read_layout(trainer.logger.log_dir)))
    assert {chart.split("/")[0] for chart in charts} == {
        "streams: gradients",
        "streams: weights and updates",
        "streams: balance",
    }
    assert [chart for chart in charts if chart.startswith("streams: balance/")] == ["streams: balance/alerts"]


def test_bad_report_option_and_bad_stream_metric_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match="report must be True or False, got 'yes'"):
        StreamMonitor(report="yes")
    model = TwoBranchNet()
    model.stream_metric_keys = {"val_acc": "val/acc"}  # no {stream}, and val_acc is not a metric's declared name
    trainer = pl.Trainer(callbacks=[StreamMonitor(streams=USER_STREAMS, verbose=False)], **trainer_kwargs(tmp_path))
    with pytest.raises(ValueError, match=r"TwoBranchNet.stream_metric_keys maps 'val_acc' to 'val/acc'"):
        trainer.fit(model, loader(), loader(seed=1))
