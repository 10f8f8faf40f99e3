from functools import partial

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from mslightning.data import SyntheticStreamsDataModule
from mslightning.modules import DualStreamClassifier, MultiStreamClassifier, shapley_values
from mslightning.nn import GatedFusion, WeightedFusion
from mslightning.optim import ParamGroup


def tiny_data(**kwargs):
    defaults = dict(image_size=16, train_size=32, val_size=16, test_size=16, batch_size=8, num_classes=3)
    defaults.update(kwargs)
    return SyntheticStreamsDataModule(**defaults)


def tiny_trainer(tmp_path, **kwargs):
    defaults = dict(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        limit_test_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return Trainer(**defaults)


def batch(streams=None, b=2, size=16):
    streams = streams or {"rgb": 3, "depth": 1}
    return {name: torch.randn(b, c, size, size) for name, c in streams.items()}


def test_forward_shapes_and_alias():
    assert DualStreamClassifier is MultiStreamClassifier
    model = MultiStreamClassifier({"rgb": 3, "depth": 1, "ir": 2}, num_classes=5).eval()
    fused, per_stream = model(batch({"rgb": 3, "depth": 1, "ir": 2}))
    assert fused.shape == (2, 5) and list(per_stream) == ["rgb", "depth", "ir"]
    assert all(logits.shape == (2, 5) for logits in per_stream.values())


def test_loss_composition_matches_manual_cross_entropies():
    torch.manual_seed(0)
    model = MultiStreamClassifier(num_classes=3, aux_weight=0.3, label_smoothing=0.1).eval()
    inputs, target = batch(), torch.tensor([0, 2])
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, value)
    model.log_dict = lambda *a, **kw: None
    out = model._shared_step((inputs, target), "val")
    fused, per_stream = model(inputs)
    ce = partial(torch.nn.functional.cross_entropy, target=target, label_smoothing=0.1)
    expected = ce(fused) + 0.3 * (ce(per_stream["rgb"]) + ce(per_stream["depth"]))
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(logged["val/fused/loss"], ce(fused))
    torch.testing.assert_close(logged["val/depth/loss"], ce(per_stream["depth"]))
    assert set(out) == {"loss", "logits", "stream_logits", "target"}


def test_aux_weight_zero_heads_are_probes_that_do_not_touch_encoders():
    torch.manual_seed(0)
    model = MultiStreamClassifier(num_classes=3, aux_weight=0.0)
    model.log = model.log_dict = lambda *a, **kw: None
    inputs, target = batch(), torch.tensor([0, 1])
    out = model._shared_step((inputs, target), "train")
    _fused, per_stream = model(inputs)
    aux = sum(torch.nn.functional.cross_entropy(logits, target) for logits in per_stream.values())
    aux.backward()
    assert all(p.grad is None for p in model.encoders.parameters())  # no path from aux loss to encoders
    assert all(p.grad is not None for p in model.aux_heads.parameters())
    assert out["loss"].requires_grad


def test_metric_keys_logged_per_stage_and_stream(tmp_path):
    seed_everything(0)
    trainer = tiny_trainer(tmp_path)
    model = MultiStreamClassifier(num_classes=3)
    data = tiny_data()
    trainer.fit(model, data)
    keys = set(trainer.logged_metrics)
    trainer.test(model, data)
    keys |= set(trainer.logged_metrics)
    for stage in ("train", "val", "test"):
        for out in ("fused", "rgb", "depth"):
            assert {f"{stage}/{out}/acc", f"{stage}/{out}/macro_acc"} <= keys
            assert f"{stage}/{out}/loss" in keys or f"{stage}/{out}/loss_epoch" in keys
    assert model.metrics["val_metrics"]["rgb"] is not model.metrics["train_metrics"]["rgb"]


def test_metrics_agree_with_torchmetrics_functional(tmp_path):
    from torchmetrics.functional.classification import multiclass_accuracy

    seed_everything(0)
    model = MultiStreamClassifier(num_classes=3).eval()
    data = tiny_data()
    trainer = tiny_trainer(tmp_path, limit_val_batches=2)
    metrics = trainer.validate(model, data, verbose=False)[0]
    data.setup("validate")
    logits, targets = [], []
    with torch.no_grad():
        for i, (inputs, target) in enumerate(data.val_dataloader()):
            if i == 2:
                break
            logits.append(model(inputs)[1]["depth"])
            targets.append(target)
    logits, targets = torch.cat(logits), torch.cat(targets)
    assert metrics["val/depth/acc"] == pytest.approx(multiclass_accuracy(logits, targets, 3, average="micro").item())
    assert metrics["val/depth/macro_acc"] == pytest.approx(
        multiclass_accuracy(logits, targets, 3, average="macro").item()
    )


def test_predict_returns_probabilities(tmp_path):
    model = MultiStreamClassifier(num_classes=3)
    predictions = tiny_trainer(tmp_path, limit_predict_batches=1).predict(model, tiny_data())
    assert predictions[0].shape == (8, 3)
    torch.testing.assert_close(predictions[0].sum(dim=1), torch.ones(8))


def test_default_groups_and_recipe_by_name():
    model = MultiStreamClassifier(fusion=partial(WeightedFusion, dim=16))
    assert [g.name for g in model.default_param_groups()] == ["rgb", "depth", "fusion", "head"]
    model.param_group_specs = [
        ParamGroup("rgb", lr=5e-4, weight_decay=1e-3),
        ParamGroup("depth", lr=5e-5, weight_decay=5e-2),
        ParamGroup("fusion"),
        ParamGroup("head"),
    ]
    model.optimizer_factory = partial(torch.optim.AdamW, lr=1e-4, weight_decay=2e-2)
    optimizer = model.configure_optimizers()["optimizer"]
    got = {pg["name"]: (pg["lr"], pg["weight_decay"], len(pg["params"])) for pg in optimizer.param_groups}
    assert got["rgb"][:2] == (5e-4, 1e-3) and got["depth"][:2] == (5e-5, 5e-2) and got["head"][:2] == (1e-4, 2e-2)
    total = sum(len(pg["params"]) for pg in optimizer.param_groups)
    assert total == len(list(model.parameters()))
    # concat fusion has no parameters: its default group is left out, and a configured one is skipped
    concat = MultiStreamClassifier()
    assert [g.name for g in concat.resolved_param_groups()] == ["rgb", "depth", "head"]
    concat.param_group_specs = [ParamGroup("rgb"), ParamGroup("depth"), ParamGroup("fusion"), ParamGroup("head")]
    assert [g.name for g in concat.resolved_param_groups()] == ["rgb", "depth", "head"]


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ({"rgb": torch.randn(2, 3, 16, 16)}, r"missing \['depth'\]"),
        (
            {"rgb": torch.randn(2, 3, 16, 16), "depth": torch.randn(2, 1, 16, 16), "ir": torch.randn(2, 1, 16, 16)},
            r"unexpected \['ir'\]",
        ),
        ({"rgb": torch.randn(2, 3, 16, 16), "depth": torch.randn(2, 3, 16, 16)}, r"stream 'depth'.*1.*3"),
    ],
)
def test_bad_inputs_name_the_stream(inputs, match):
    with pytest.raises(ValueError, match=match):
        MultiStreamClassifier()(inputs)


def test_bad_configuration():
    with pytest.raises(ValueError, match=r"stream 'depth'.*resnet99"):
        MultiStreamClassifier(backbone={"rgb": "resnet18", "depth": "resnet99"})
    with pytest.raises(ValueError, match="backbone"):
        MultiStreamClassifier(backbone={"rgb": "resnet18"})
    with pytest.raises(ValueError, match="weights"):
        MultiStreamClassifier(weights={"thermal": "x.pth"})
    with pytest.raises(ValueError, match="num_classes"):
        MultiStreamClassifier(num_classes=1)


def test_shapley_values_two_and_three_players():
    v = {frozenset(): 0.25, frozenset({"a"}): 0.3, frozenset({"b"}): 0.8, frozenset({"a", "b"}): 0.85}
    phi = shapley_values(["a", "b"], v)
    assert phi["a"] == pytest.approx(0.5 * (0.05 + 0.05)) and phi["b"] == pytest.approx(0.5 * (0.55 + 0.55))
    glove = {
        frozenset(s): float(len(s) == 3)
        for s in [(), ("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c"), ("a", "b", "c")]
    }
    assert shapley_values(["a", "b", "c"], glove) == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    with pytest.raises(ValueError, match="missing"):
        shapley_values(["a", "b"], {frozenset(): 0.0})


def test_pathway_analysis_credits_the_informative_stream(tmp_path):
    """Only depth carries signal: its Shapley value dominates, rgb's is near zero."""
    seed_everything(0)
    data = tiny_data(signal={"rgb": 0.0, "depth": 2.0}, train_size=96, val_size=96, image_size=16, num_classes=3)
    model = MultiStreamClassifier(
        num_classes=3, optimizer=partial(torch.optim.AdamW, lr=2e-3), fusion=partial(GatedFusion, dim=32)
    )
    tiny_trainer(tmp_path, max_epochs=4, limit_train_batches=None, limit_val_batches=0).fit(model, data)
    data.setup("validate")
    report = model.analyze_pathways(data.val_dataloader(), data.train_dataloader())
    total = sum(report.shapley.values())
    assert total == pytest.approx(report.score_all - report.score_none)
    assert report.score_all > 0.6
    assert report.shapley["depth"] > 0.9 * total
    assert abs(report.shapley["rgb"]) < 0.05
    assert set(report.to_dict()) >= {"shapley/rgb", "utilization/rgb|depth", "accuracy/alone/depth"}
    assert model.training  # mode restored
