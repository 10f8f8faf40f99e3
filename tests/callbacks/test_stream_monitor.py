import logging
import math
import re
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins import MixedPrecision
from monitor_testkit import (
    USER_STREAMS,
    GradOracle,
    TwoBranchNet,
    branch_prefixes,
    layout_charts,
    loader,
    read_layout,
    read_scalars,
    read_texts,
    trainer_kwargs,
)

from mslightning.callbacks import StreamMonitor, StreamThresholds
from mslightning.callbacks.monitor_metrics import METRICS, expected_keys, resolve
from mslightning.callbacks.stream_stats import overfitting_to_generalization_ratio

STREAMS = list(USER_STREAMS)


def _fit(tmp_path, model=None, monitor=None, callbacks=(), data_seed=0, seed=0, **overrides):
    # these runs are too short to leave chance level: only a wider chance band would call that "not learning"
    monitor = monitor or StreamMonitor(
        streams=USER_STREAMS, verbose=False, thresholds=StreamThresholds(chance_margin=0.01)
    )
    pl.seed_everything(seed, verbose=False)
    model = model or TwoBranchNet()
    trainer = pl.Trainer(callbacks=[monitor, *callbacks], **trainer_kwargs(tmp_path, **overrides))
    trainer.fit(model, loader(seed=data_seed), loader(seed=data_seed + 1))
    return trainer, monitor


class OutputsOracle(Callback):
    """Keeps every batch's per-stream logits and targets, by stage and epoch."""

    def __init__(self):
        self.seen = {}

    def _keep(self, trainer, stage, outputs):
        if trainer.sanity_checking:
            return
        per_epoch = self.seen.setdefault((stage, trainer.current_epoch), {"target": [], "logits": {}})
        per_epoch["target"].append(outputs["target"].detach())
        for stream, logits in outputs["stream_logits"].items():
            per_epoch["logits"].setdefault(stream, []).append(logits.detach())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._keep(trainer, "train", outputs)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._keep(trainer, "val", outputs)

    def epoch_values(self, stage, epoch, stream):
        seen = self.seen[(stage, epoch)]
        target = torch.cat(seen["target"])
        logits = torch.cat(seen["logits"][stream])
        acc = (logits.argmax(1) == target).double().mean().item()
        loss = F.cross_entropy(logits.double(), target).item()
        score = logits.double().softmax(1).gather(1, target[:, None]).mean().item()
        return acc, loss, score


def _expected_tags(prefix="streams", streams=STREAMS, epoch=True):
    return expected_keys(prefix, streams, when=None if epoch else "step")


def test_user_model_logs_every_tag_the_layout_and_oracle_norms(tmp_path):
    oracle = GradOracle(branch_prefixes())
    outputs = OutputsOracle()
    trainer, monitor = _fit(tmp_path, callbacks=[oracle, outputs])
    log_dir = trainer.logger.log_dir
    scalars = read_scalars(log_dir)

    # the OGR is logged where it is defined: not while a stream's val loss barely moves
    undefined = {
        f"streams/ogr/{s}"
        for s in STREAMS
        if overfitting_to_generalization_ratio(
            *(outputs.epoch_values(stage, epoch, s)[1] for epoch in (0, 1) for stage in ("train", "val"))
        )
        is None
    }
    missing = _expected_tags() - undefined - set(scalars)
    assert not missing, f"missing tags: {sorted(missing)}"
    assert not undefined & set(scalars)

    # every optimizer step was logged, at the step index, with norms equal to the oracle's
    assert sorted(scalars["streams/grad_norm/visible"]) == list(range(8)) == sorted(oracle.grad_norm)
    for step in range(8):
        for s in STREAMS:
            assert scalars[f"streams/grad_norm/{s}"][step] == pytest.approx(oracle.grad_norm[step][s], rel=1e-5)
            assert scalars[f"streams/grad_max/{s}"][step] == pytest.approx(oracle.grad_max[step][s], rel=1e-5)
            assert scalars[f"streams/weight_norm/{s}"][step] == pytest.approx(oracle.weight_norm[step][s], rel=1e-5)
            before, after = oracle.weights_before[step][s], oracle.weights_after[step][s]
            expected_update = (torch.linalg.vector_norm(after - before) / torch.linalg.vector_norm(before)).item()
            assert scalars[f"streams/update_ratio/{s}"][step] == pytest.approx(expected_update, rel=1e-3)
        ratio = oracle.grad_norm[step]["visible"] / oracle.grad_norm[step]["thermal"]
        assert scalars["streams/grad_norm_ratio/visible_vs_thermal"][step] == pytest.approx(ratio, rel=1e-5)
    # the lr is read for the advice, not logged again (a learning-rate monitor logs the optimizer's own)
    assert monitor.latest["streams/lr/visible"] == pytest.approx(0.05)
    assert not any(tag.startswith(("streams/lr/", "streams/weight_decay/")) for tag in scalars)

    # epoch metrics equal an independent computation from the batches' logits
    for epoch, step in ((0, 3), (1, 7)):  # the step of each epoch's last batch, as Lightning logs epochs
        for s in STREAMS:
            for stage in ("train", "val"):
                acc, loss, _ = outputs.epoch_values(stage, epoch, s)
                assert scalars[f"streams/{stage}_acc/{s}"][step] == pytest.approx(acc, abs=1e-6)
                assert scalars[f"streams/{stage}_loss/{s}"][step] == pytest.approx(loss, rel=1e-5)
            train_acc, train_loss, train_score = outputs.epoch_values("train", epoch, s)
            val_acc, val_loss, _ = outputs.epoch_values("val", epoch, s)
            assert scalars[f"streams/true_class_score/{s}"][step] == pytest.approx(train_score, rel=1e-5)
            score = (train_acc - val_acc) + (val_loss - train_loss)
            assert scalars[f"streams/overfit_score/{s}"][step] == pytest.approx(score, rel=1e-4, abs=1e-5)
    # conditional learning speed from the oracle: mu_m = sum_t ||g||^2 / ||w||^2 over the epoch
    mu = {s: sum((oracle.grad_norm[t][s] / oracle.weight_norm[t][s]) ** 2 for t in range(4, 8)) for s in STREAMS}
    speed = math.log10(mu["visible"] / mu["thermal"])
    assert scalars["streams/learning_speed/visible_vs_thermal"][7] == pytest.approx(speed, rel=1e-4)

    # every logged key is in the one metric list, and so in the class docstring
    documented = {resolve(spec.name, None) for spec in METRICS}
    for tag in (t for t in scalars if t.startswith("streams/")):
        assert tag.split("/")[1] in documented, tag
    for spec in METRICS:
        assert f"<p>/{spec.name}/" in StreamMonitor.__doc__

    charts = layout_charts(read_layout(log_dir))
    assert charts["streams: gradients/grad_norm"] == [f"^{re.escape(f'streams/grad_norm/{s}')}$" for s in STREAMS]
    # the thresholds of the advice are in the titles of the charts they apply to
    assert charts["streams: overfitting/overfit_score (overfitting above 1)"] == [
        f"^{re.escape(f'streams/overfit_score/{s}')}$" for s in STREAMS
    ]
    for chart_tags in charts.values():  # every chart line matches a logged tag (fusion: none here)
        for tag in chart_tags:
            expected = "fusion" in tag or any(re.fullmatch(tag, key) for key in undefined)
            assert expected or any(re.fullmatch(tag, logged) for logged in scalars), tag

    texts = read_texts(log_dir, "advice/streams")
    assert len(texts) == 2 and "healthy" in texts[-1]
    assert monitor.get_recommendations()[0].startswith("healthy")
    assert [epoch for epoch, _ in monitor.history["streams/grad_norm/visible"]] == [0, 1]
    summary = monitor.summary()
    assert "visible" in summary and "thermal" in summary and "Recommendations" in summary


def test_log_every_n_steps_gates_the_step_metrics(tmp_path):
    oracle = GradOracle(branch_prefixes())
    monitor = StreamMonitor(streams=USER_STREAMS, log_every_n_steps=3, verbose=False)
    trainer, _ = _fit(tmp_path, monitor=monitor, callbacks=[oracle])
    scalars = read_scalars(trainer.logger.log_dir)
    # Lightning's rule and x-axis: the steps where (step + 1) % 3 == 0, as for the module's self.log values
    assert sorted(scalars["streams/grad_norm/thermal"]) == [2, 5]
    assert scalars["streams/grad_norm/thermal"][5] == pytest.approx(oracle.grad_norm[5]["thermal"], rel=1e-5)


def test_trainer_log_every_n_steps_is_the_default(tmp_path):
    trainer, _ = _fit(tmp_path, log_every_n_steps=4)
    scalars = read_scalars(trainer.logger.log_dir)
    assert sorted(scalars["streams/grad_norm/visible"]) == [3, 7] == sorted(scalars["train_loss_step"])


def test_gradient_accumulation_logs_once_per_optimizer_step_with_accumulated_grads(tmp_path):
    class AfterBackward(Callback):
        def __init__(self):
            self.norms = []

        def on_after_backward(self, trainer, pl_module):
            g = torch.cat([p.grad.flatten() for p in pl_module.visible_net.parameters()])
            self.norms.append(torch.linalg.vector_norm(g).item())

    oracle, backward = GradOracle(branch_prefixes()), AfterBackward()
    trainer, _ = _fit(tmp_path, callbacks=[oracle, backward], max_epochs=1, accumulate_grad_batches=2)
    scalars = read_scalars(trainer.logger.log_dir)
    assert oracle.calls == 2 and len(backward.norms) == 4  # 4 backward passes, 2 optimizer steps
    assert sorted(scalars["streams/grad_norm/visible"]) == [0, 1]
    for step in (0, 1):
        assert scalars["streams/grad_norm/thermal"][step] == pytest.approx(oracle.grad_norm[step]["thermal"], rel=1e-5)
    # the accumulated gradient is not what on_after_backward saw after the first micro-batch
    assert scalars["streams/grad_norm/visible"][0] != pytest.approx(backward.norms[0], rel=1e-3)


def test_bf16_mixed_precision(tmp_path):
    oracle = GradOracle(branch_prefixes())
    trainer, _ = _fit(tmp_path, callbacks=[oracle], max_epochs=1, precision="bf16-mixed")
    scalars = read_scalars(trainer.logger.log_dir)
    for step in range(4):
        for s in STREAMS:
            assert scalars[f"streams/grad_norm/{s}"][step] == pytest.approx(oracle.grad_norm[step][s], rel=1e-5)
    assert "streams/train_acc/visible" in scalars


def test_several_param_groups_per_stream(tmp_path):
    model = TwoBranchNet(groups="split", lrs={"visible": 0.01, "thermal": 0.1})
    _, monitor = _fit(tmp_path, model=model, max_epochs=1)
    # the group holding most of the stream's elements (the weights, not the biases)
    assert monitor.latest["streams/lr/visible"] == pytest.approx(0.01)
    assert monitor.latest["streams/lr/thermal"] == pytest.approx(0.1)
    assert monitor.latest["streams/weight_decay/visible"] == pytest.approx(1e-4)
    assert monitor._bindings["visible"].group_name == "visible"
    assert monitor._bindings["visible"].shares_with == []


def test_single_param_group_is_reported_as_shared(tmp_path):
    model = TwoBranchNet(groups="single")
    _, monitor = _fit(tmp_path, model=model, max_epochs=1)
    # a one-group optimizer without a group name: named as LearningRateMonitor names it (lr-SGD)
    assert monitor._bindings["visible"].group_name == "SGD"
    assert monitor._bindings["visible"].shares_with == ["thermal"]


def test_frozen_stream_is_reported_without_division_by_zero(tmp_path):
    model = TwoBranchNet(freeze=["thermal"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # e.g. numpy/torch divide-by-zero warnings
        trainer, monitor = _fit(tmp_path, model=model)
    scalars = read_scalars(trainer.logger.log_dir)
    assert set(scalars["streams/grad_norm/thermal"].values()) == {0.0}
    assert set(scalars["streams/update_ratio/thermal"].values()) == {0.0}
    assert "streams/grad_norm_ratio/visible_vs_thermal" not in scalars  # 0 denominator: skipped
    assert "streams/learning_speed/visible_vs_thermal" not in scalars
    assert scalars["streams/weight_norm/thermal"][0] > 0
    assert all(math.isfinite(v) for tag in scalars for v in scalars[tag].values())
    frozen = [r for r in monitor.recommendations if r.kind == "frozen"]
    assert [r.stream for r in frozen] == ["thermal"] and frozen[0].severity == "info"
    assert not any(r.stream == "thermal" and r.severity == "warning" for r in monitor.recommendations)


def test_model_without_protocol_keeps_gradient_metrics_and_warns_once(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, monitor = _fit(tmp_path, model=TwoBranchNet(protocol=False))
    messages = [str(w.message) for w in caught if "no per-stream outputs" in str(w.message)]
    assert len(messages) == 1
    assert "stream_logits" in messages[0] and "skipped" in messages[0]
    scalars = read_scalars(trainer.logger.log_dir)
    assert _expected_tags(epoch=False) <= set(scalars)
    assert not any("acc" in tag or "overfit" in tag for tag in scalars)
    assert "streams/learning_speed/visible_vs_thermal" in scalars
    assert "overfitting not measured" in monitor.get_recommendations()[-1]


def test_nonfinite_gradients_are_counted_per_stream(tmp_path):
    class PoisonLastStep(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if trainer.global_step == 3:
                grad = pl_module.thermal_net[0].weight.grad
                grad.view(-1)[:2] = float("nan")
                grad.view(-1)[2] = float("inf")

    # the poisoning callback runs before the monitor: it comes first
    monitor = StreamMonitor(streams=USER_STREAMS, verbose=False)
    trainer = pl.Trainer(callbacks=[PoisonLastStep(), monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(TwoBranchNet(), loader(), loader(seed=1))
    scalars = read_scalars(trainer.logger.log_dir)
    assert scalars["streams/nonfinite_grads/thermal"][3] == 3
    assert scalars["streams/nonfinite_grads/visible"][3] == 0
    assert scalars["streams/nonfinite_grads/thermal"][2] == 0
    (rec,) = [r for r in monitor.recommendations if r.kind == "nonfinite"]
    assert rec.stream == "thermal" and "3 NaN/Inf" in rec.message


def _fit_fp16(tmp_path, scaler, fused=False, max_epochs=1, model_cls=TwoBranchNet, callbacks=(), **monitor_kwargs):
    """fp16 AMP with a GradScaler on CPU (Lightning would switch CPU '16-mixed' to bf16)."""

    class AdamWNet(model_cls):
        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3, fused=fused)

    oracle = GradOracle(branch_prefixes())
    monitor = StreamMonitor(streams=USER_STREAMS, verbose=False, **monitor_kwargs)
    precision = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    trainer = pl.Trainer(
        callbacks=[*callbacks, monitor, oracle], plugins=[precision], **trainer_kwargs(tmp_path, max_epochs=max_epochs)
    )
    trainer.fit(AdamWNet(), loader(), loader(seed=1))
    return read_scalars(trainer.logger.log_dir), monitor, oracle


@pytest.mark.parametrize("fused", [False, True])
def test_fp16_grad_scaler_norms_are_unscaled(tmp_path, fused):
    # Lightning unscales before on_before_optimizer_step, except for fused optimizers, which
    # unscale inside step(): the oracle then sees the scaled gradients.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scalars, _, oracle = _fit_fp16(tmp_path, scaler, fused=fused)
    seen_scale = 2.0**10 if fused else 1.0
    for step in range(4):
        for s in STREAMS:
            expected = oracle.grad_norm[step][s] / seen_scale
            assert scalars[f"streams/grad_norm/{s}"][step] == pytest.approx(expected, rel=1e-5)
            assert scalars[f"streams/grad_max/{s}"][step] == pytest.approx(
                oracle.grad_max[step][s] / seen_scale, rel=1e-5
            )


# every=3: the overflowing step 2 is the epoch's only logged step (the scale grows back after each good step)
@pytest.mark.parametrize(("every", "growth_interval"), [(1, 2000), (3, 1)])
def test_fp16_overflow_skipped_by_the_scaler_is_logged_but_not_advice(tmp_path, every, growth_interval):
    # scale 2**40 overflows fp16 at once; the scaler skips the step and backs off to 2**8
    scaler = torch.amp.GradScaler(
        "cpu", init_scale=2.0**40, backoff_factor=2.0**-32, growth_factor=2.0**32, growth_interval=growth_interval
    )
    scalars, monitor, _ = _fit_fp16(tmp_path, scaler, log_every_n_steps=every)
    assert scalars["streams/nonfinite_grads/visible"][every - 1] > 0
    assert not [r for r in monitor.recommendations if r.kind in ("nonfinite", "frozen")]
    assert monitor.history["streams/nonfinite_grads/visible"][0][1] > 0
    if every == 1:
        assert all(scalars["streams/nonfinite_grads/visible"][step] == 0 for step in (2, 3))
        # skipped steps moved nothing: they are left out of the epoch's mean update ratio
        moved = [
            scalars["streams/update_ratio/visible"][i]
            for i in range(4)
            if scalars["streams/nonfinite_grads/visible"][i] == 0
        ]
        assert monitor.history["streams/update_ratio/visible"][0][1] == pytest.approx(sum(moved) / len(moved), rel=1e-6)


def test_step_skipped_for_one_stream_is_left_out_of_every_streams_update_ratio(tmp_path):
    class OverflowVisibleOnce(Callback):  # before unscaling: the scaler sees it and skips the step
        def on_after_backward(self, trainer, pl_module):
            if trainer.global_step == 1:
                pl_module.visible_net[0].weight.grad.view(-1)[0] = float("inf")

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scalars, monitor, _ = _fit_fp16(tmp_path, scaler, callbacks=[OverflowVisibleOnce()])
    assert scalars["streams/nonfinite_grads/visible"][1] == 1
    assert scalars["streams/nonfinite_grads/thermal"][1] == 0
    assert scalars["streams/update_ratio/thermal"][1] == 0  # logged as measured: nothing moved
    moved = [scalars["streams/update_ratio/thermal"][i] for i in (0, 2, 3)]
    assert monitor.history["streams/update_ratio/thermal"][0][1] == pytest.approx(sum(moved) / 3, rel=1e-6)
    assert not [r for r in monitor.recommendations if r.kind in ("nonfinite", "stalled", "slow")]


def test_fp16_nan_loss_is_advice_once_the_scale_backs_off_below_one(tmp_path):
    class NaNLoss(TwoBranchNet):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            out["loss"] = out["loss"] * float("nan")
            return out

    # every step skipped: the scale goes 4 -> 2 -> 1 -> 0.5 -> 0.25; below 1 it is no overflow
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0, backoff_factor=0.5)
    _, monitor, _ = _fit_fp16(tmp_path, scaler, model_cls=NaNLoss)
    flagged = {r.stream: r.message for r in monitor.recommendations if r.kind == "nonfinite"}
    assert set(flagged) == set(STREAMS)
    assert "non-finite gradients" in flagged["visible"]


def test_three_streams_and_fusion_internals(tmp_path):
    channels = {"rgb": 3, "depth": 1, "ir": 1}

    class WithInternals(TwoBranchNet):
        def fusion_internals(self):
            w = self.fusion_head.weight.detach().abs().reshape(3, -1, 4).mean(dim=(1, 2))
            return {"weight": {n: w[i] for i, n in enumerate(self.names)}}

    model = WithInternals(channels=channels, declare_streams=True)
    monitor = StreamMonitor(verbose=False)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(model, loader(channels=channels), loader(seed=1, channels=channels))
    scalars = read_scalars(trainer.logger.log_dir)
    names = list(channels)
    assert _expected_tags(streams=names) - {f"streams/ogr/{n}" for n in names} <= set(scalars)  # OGR: 2 epochs
    expected = model.fusion_internals()["weight"]
    for n in names:
        assert scalars[f"streams/fusion/weight/{n}"][3] == pytest.approx(expected[n].item(), rel=1e-6)
    assert {"rgb_vs_depth", "rgb_vs_ir", "depth_vs_ir"} == {
        tag.rsplit("/", 1)[1] for tag in scalars if tag.startswith("streams/grad_norm_ratio/")
    }


def test_histograms(tmp_path):
    monitor = StreamMonitor(streams=USER_STREAMS, histogram_every_n_epochs=1, verbose=False)
    trainer, _ = _fit(tmp_path, monitor=monitor)
    from monitor_testkit import event_accumulator

    tags = set(event_accumulator(trainer.logger.log_dir).Tags()["histograms"])
    assert {f"streams/hist/{kind}/{s}" for kind in ("weights", "grads") for s in STREAMS} <= tags


def test_module_declared_streams(tmp_path):
    monitor = StreamMonitor(verbose=False)
    trainer, _ = _fit(tmp_path, model=TwoBranchNet(declare_streams=True), monitor=monitor, max_epochs=1)
    assert monitor.stream_names == ["visible", "thermal"]
    assert "streams/grad_norm/thermal" in read_scalars(trainer.logger.log_dir)


def test_no_streams_is_an_error_that_lists_parameters(tmp_path):
    with pytest.raises(ValueError, match=r"stream_patterns.*visible_net\.0\.weight"):
        _fit(tmp_path, monitor=StreamMonitor())


def test_stream_matching_nothing_is_an_error_at_setup(tmp_path):
    monitor = StreamMonitor(streams={"visible": "visible_net.*", "depth": "depth_encoder.*"})
    with pytest.raises(ValueError, match=r"'depth'.*depth_encoder.*match no parameter.*'visible_net\.0\.weight'"):
        _fit(tmp_path, monitor=monitor)


def test_parameter_in_two_streams_is_an_error(tmp_path):
    monitor = StreamMonitor(streams={"a": "visible_*", "b": "visible_head.*"})
    with pytest.raises(ValueError, match=r"'visible_head\.weight' is matched by stream 'a'.*and by stream 'b'"):
        _fit(tmp_path, monitor=monitor)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"streams": {}}, "non-empty mapping"),
        ({"streams": {"rg b": "x.*"}}, "'rg b'"),
        ({"streams": {"a/b": "x.*"}}, "'a/b'"),
        ({"streams": {"rgb": []}}, r"streams\['rgb'\]"),
        ({"streams": {"rgb": ""}}, "non-empty string"),
        ({"log_every_n_steps": -1}, "log_every_n_steps"),
        ({"histogram_every_n_epochs": 0}, "histogram_every_n_epochs"),
        ({"prefix": "a/"}, "prefix"),
        ({"thresholds": {"patience": 2}}, "StreamThresholds"),
    ],
)
def test_init_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StreamMonitor(**kwargs)


def test_without_tensorboard_logs_scalars_and_says_so_once(tmp_path, caplog):
    logger = CSVLogger(tmp_path, name="csv", version=0)
    with caplog.at_level(logging.INFO):
        _fit(tmp_path, logger=logger, max_epochs=1)
    notes = [r.message for r in caplog.records if "no TensorBoardLogger" in r.message]
    assert len(notes) == 1 and "CSVLogger" in notes[0]
    header = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "streams/grad_norm/visible" in header and "streams/overfit_score/thermal" in header


def test_without_any_logger_history_and_advice_still_work(tmp_path):
    _, monitor = _fit(tmp_path, logger=False)
    assert len(monitor.history["streams/grad_norm/visible"]) == 2
    assert monitor.recommendations and monitor.latest["streams/grad_norm/thermal"] > 0


def test_resume_keeps_history_and_hysteresis(tmp_path):
    # thermal's features x5: its gradients dominate on every epoch; patience 2 needs two epochs
    model_kwargs = {"grad_scale": {"thermal": 5.0}}
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    # two tiny epochs leave the streams 0.01-0.04 above chance: a narrow margin keeps "not_learning" out of a
    # test about dominance and hysteresis
    # x5 features give grad norms 3-9x apart here: the pre-5x dominance threshold keeps this test about hysteresis
    thresholds = StreamThresholds(chance_margin=0.01, dominance_ratio=3.0)
    monitor = StreamMonitor(streams=USER_STREAMS, verbose=False, thresholds=thresholds)
    pl.seed_everything(2, verbose=False)  # an initialisation whose dominance shows within two tiny epochs
    _fit(
        tmp_path,
        model=TwoBranchNet(**model_kwargs),
        seed=2,
        monitor=monitor,
        callbacks=[checkpoint],
        max_epochs=1,
        enable_checkpointing=True,
    )
    assert not [r for r in monitor.recommendations if r.severity == "warning"]  # one epoch: not reported yet
    saved = monitor.state_dict()
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert monitor.state_key in ckpt["callbacks"]

    resumed = StreamMonitor(streams=USER_STREAMS, verbose=False, thresholds=thresholds)
    trainer = pl.Trainer(callbacks=[resumed], **trainer_kwargs(tmp_path / "resumed", max_epochs=2))
    trainer.fit(TwoBranchNet(**model_kwargs), loader(), loader(seed=1), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert [e for e, _ in resumed.history["streams/grad_norm/visible"]] == [0, 1]
    assert resumed.history["streams/grad_norm/visible"][0] == tuple(saved["history"]["streams/grad_norm/visible"][0])
    assert [e for e, _ in resumed.recommendation_history] == [0, 1]
    # one epoch before the checkpoint + one after = patience 2: the advice is active
    (dominant,) = [r for r in resumed.recommendations if r.kind == "dominant"]
    assert dominant.stream == "thermal" and dominant.epochs == 2


@pytest.mark.parametrize(
    "checkpoint_kwargs, trainer_overrides",
    [
        ({"save_on_train_epoch_end": False}, {}),  # saves in on_validation_end
        ({}, {"val_check_interval": 2}),  # validation twice per epoch: saves after validation
    ],
)
def test_checkpoint_saved_after_validation_holds_the_epoch(tmp_path, checkpoint_kwargs, trainer_overrides):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, **checkpoint_kwargs)
    monitor = StreamMonitor(streams=USER_STREAMS, verbose=False)
    _fit(
        tmp_path, monitor=monitor, callbacks=[checkpoint], max_epochs=2, enable_checkpointing=True, **trainer_overrides
    )
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"][monitor.state_key]
    assert [e for e, _ in state["history"]["streams/val_acc/visible"]] == [0, 1]
    assert [e for e, _ in state["recommendation_history"]] == [0, 1]
    assert state["history"] == {k: [list(p) for p in v] for k, v in monitor.history.items()}
    assert len(monitor.recommendation_history) == 2  # once per epoch, not again at the epoch's end


def test_resume_from_a_checkpoint_saved_after_validation_counts_each_epoch_once(tmp_path):
    # Lightning runs on_train_epoch_end of the checkpoint's epoch again after resuming
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=False)
    _fit(tmp_path, callbacks=[checkpoint], max_epochs=1, enable_checkpointing=True)
    resumed = StreamMonitor(streams=USER_STREAMS, verbose=False)
    trainer = pl.Trainer(callbacks=[resumed], **trainer_kwargs(tmp_path / "resumed", max_epochs=2))
    trainer.fit(TwoBranchNet(), loader(), loader(seed=1), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert [e for e, _ in resumed.recommendation_history] == [0, 1]
    assert [e for e, _ in resumed.history["streams/alerts/visible"]] == [0, 1]
    assert [e for e, _ in resumed.history["streams/val_acc/visible"]] == [0, 1]


def test_bad_fusion_internals_are_clear_errors(tmp_path):
    for internals, match in [
        ([1.0], r"fusion_internals\(\) must return \{metric: \{stream: tensor\}\}, got list"),
        ({"weight": 0.5}, r"fusion_internals\(\)\['weight'\] must map stream -> tensor, got float"),
        ({"weight": {"visible": 0.5}}, r"\['weight'\]\['visible'\] must be a one-element tensor, got float"),
        ({"weight": {"visible": torch.ones(3)}}, r"\['weight'\]\['visible'\] must be a one-element tensor, got \(3,\)"),
    ]:

        class BadInternals(TwoBranchNet):
            def fusion_internals(self, _internals=internals):
                return _internals

        with pytest.raises((TypeError, ValueError), match=match):
            _fit(tmp_path, model=BadInternals(), max_epochs=1)


def test_state_keys_are_unique_per_configuration():
    a = StreamMonitor(streams=USER_STREAMS)
    b = StreamMonitor(streams=USER_STREAMS, prefix="other")
    c = StreamMonitor()
    assert len({a.state_key, b.state_key, c.state_key}) == 3
