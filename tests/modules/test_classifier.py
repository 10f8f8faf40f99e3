import csv
from functools import partial

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger

from mslightning.callbacks import PathwayAnalysis, StreamMonitor
from mslightning.data import FeatureStreamsDataModule, SyntheticStreamsDataModule
from mslightning.modules import DualStreamClassifier, MultiStreamClassifier, shapley_values
from mslightning.nn import (
    AttentionFusion,
    ConcatFusion,
    GatedFusion,
    MLPEncoder,
    MultiplicativeAdditionFusion,
    MultiplicativeFusion,
    SumFusion,
    WeightedFusion,
)
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


# ---------------------------------------------------------------------- vector streams (encoders=...)

VECTOR_STREAMS = {"rgb": 3, "audio": 12}
FUSIONS = [
    ConcatFusion,
    partial(SumFusion, dim=8),
    partial(WeightedFusion, dim=8),
    partial(GatedFusion, dim=8),
    partial(MultiplicativeFusion, dim=8),
    partial(MultiplicativeAdditionFusion, dim=8),
    partial(AttentionFusion, dim=8, num_heads=2),
]


def vector_model(**kwargs):
    defaults = dict(
        streams=VECTOR_STREAMS, num_classes=3, encoders={"audio": partial(MLPEncoder, hidden=(8,), out_features=6)}
    )
    defaults.update(kwargs)
    return MultiStreamClassifier(**defaults)


def vector_batch(b=2):
    return {"rgb": torch.randn(b, 3, 16, 16), "audio": torch.randn(b, 12)}


def test_a_vector_stream_gets_its_encoder_from_the_factory_and_keeps_the_naming():
    model = vector_model().eval()
    audio = model.encoders["audio"]
    assert isinstance(audio, MLPEncoder) and audio.in_features == 12 and audio.out_features == 6
    assert audio.name == "audio"  # set by the model, for the encoder's errors
    assert type(model.encoders["rgb"]).__name__ == "ResNetStreamEncoder" and model.encoders["rgb"].in_channels == 3
    assert model.input_ndims == {"rgb": 4, "audio": 2}
    fused, per_stream = model(vector_batch())
    assert fused.shape == (2, 3) and {name: x.shape for name, x in per_stream.items()} == {
        "rgb": (2, 3),
        "audio": (2, 3),
    }
    assert model.aux_heads["audio"].linear.in_features == 6
    names = [name for name, _ in model.named_parameters()]
    assert "encoders.audio.blocks.0.linear.weight" in names and "aux_heads.audio.linear.weight" in names
    assert [g.name for g in model.default_param_groups()] == ["rgb", "audio", "fusion", "head"]
    groups = {g.name: g.params for g in model.resolved_param_groups()}
    assert groups["audio"] == ["encoders.audio.*", "aux_heads.audio.*"]
    # an all-vector model: no backbone is built at all
    both = MultiStreamClassifier({"a": 4, "b": 5}, num_classes=2, encoders={"a": MLPEncoder, "b": MLPEncoder})
    assert all(isinstance(encoder, MLPEncoder) for encoder in both.encoders.values())


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        (
            {"rgb": torch.randn(2, 3, 16, 16), "audio": torch.randn(2, 12, 4, 4)},
            r"Stream 'audio' is a vector stream: MultiStreamClassifier expects vectors \(B, 12\), but the data has "
            r"images of shape \(2, 12, 4, 4\)\. For image data leave the stream out of the model's `encoders`",
        ),
        (
            {"rgb": torch.randn(2, 3), "audio": torch.randn(2, 12)},
            r"Stream 'rgb' is an image stream: MultiStreamClassifier expects images \(B, 3, H, W\), but the data has "
            r"vectors of shape \(2, 3\)\. For vector data give the stream a vector encoder: `encoders: \{rgb: "
            r"mslightning.nn.MLPEncoder\}`",
        ),
        (
            {"rgb": torch.randn(2, 3, 16, 16), "audio": torch.randn(2, 10)},
            r"Stream 'audio': the model expects 12 feature\(s\) but the data has 10 \(shape \(2, 10\)\)",
        ),
    ],
)
def test_a_vector_stream_given_an_image_or_the_reverse_is_named(inputs, match):
    model = vector_model()
    with pytest.raises(ValueError, match=match):
        model.predict_step(inputs, 0)
    with pytest.raises(ValueError, match=match):
        model._shared_step((inputs, torch.tensor([0, 1])), "val")
    # called directly, the encoders' own checks name the stream
    with pytest.raises(ValueError, match=r"stream '(audio|rgb)'"):
        model(inputs)


class NoWidth(torch.nn.Module):
    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(in_features, 4)


def test_bad_encoders_configuration_is_named():
    with pytest.raises(ValueError, match=r"`encoders` names \['lidar'\], which are not streams; the streams are"):
        vector_model(encoders={"lidar": MLPEncoder})
    with pytest.raises(
        ValueError,
        match=r"`backbone` must name each stream with a ResNet trunk .*\['rgb'\].*"
        r"built by `encoders`: \['audio'\]",
    ):
        vector_model(backbone={"rgb": "resnet18", "audio": "resnet18"})
    assert vector_model(backbone={"rgb": "resnet34"}).encoders["rgb"].arch == "resnet34"  # names only trunk streams
    with pytest.raises(ValueError, match=r"`weights` may name only streams with a ResNet trunk .*\['audio'\]"):
        vector_model(weights={"audio": "audio.pth"})
    with pytest.raises(ValueError, match=r"encoders\['audio'\] built a NoWidth whose `out_features` is None"):
        vector_model(encoders={"audio": NoWidth})
    with pytest.raises(ValueError, match=r"encoders\['audio'\] must build a torch.nn.Module, got int"):
        vector_model(encoders={"audio": abs})
    with pytest.raises(
        ValueError,
        match=r"encoders\['audio'\] \(its factory called with streams\['audio'\] = 12\): MLPEncoder: dropout must be",
    ):
        vector_model(encoders={"audio": partial(MLPEncoder, dropout=1.5)})
    with pytest.raises(TypeError, match=r"encoders\['audio'\] \(its factory called with streams\['audio'\] = 12\)"):
        vector_model(encoders={"audio": torch.nn.Linear})  # Linear(12) lacks out_features


@pytest.mark.parametrize("fusion", FUSIONS, ids=lambda f: f.func.__name__ if isinstance(f, partial) else f.__name__)
def test_every_fusion_builds_and_runs_with_a_vector_stream(fusion):
    torch.manual_seed(0)
    model = vector_model(fusion=fusion)
    inputs, target = vector_batch(4), torch.tensor([0, 1, 2, 0])
    model.log = model.log_dict = lambda *a, **kw: None
    out = model._shared_step((inputs, target), "train")
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["logits"].shape == (4, 3)
    audio = [p for name, p in model.named_parameters() if name.startswith("encoders.audio.")]
    assert all(p.grad is not None for p in audio)
    for values in model.fusion_internals().values():  # weights, gates, attention: one per stream, summing to 1
        assert list(values) == list(VECTOR_STREAMS)
        assert sum(values.values()).item() == pytest.approx(1.0, abs=1e-5)


def test_checkpoint_with_a_vector_stream_reloads(tmp_path):
    model = vector_model(fusion=partial(GatedFusion, dim=8)).eval()
    trainer = tiny_trainer(tmp_path, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "vector.ckpt")
    saved = torch.load(tmp_path / "vector.ckpt", weights_only=True)["hyper_parameters"]["encoders"]
    assert saved == {
        "audio": {"class_path": "mslightning.nn.encoders.MLPEncoder", "init_args": {"hidden": [8], "out_features": 6}}
    }
    restored = MultiStreamClassifier.load_from_checkpoint(tmp_path / "vector.ckpt").eval()
    assert restored.encoders["audio"].hidden == (8,) and restored.encoders["audio"].name == "audio"
    inputs = vector_batch()
    with torch.no_grad():
        torch.testing.assert_close(restored(inputs)[0], model(inputs)[0])


def test_an_image_stream_and_a_vector_stream_train_end_to_end_with_monitor_and_pathways(tmp_path):
    """The vector stream carries the labels, the image stream is noise: model, monitor and ablation agree."""
    seed_everything(0)
    rng = np.random.default_rng(0)
    n, classes = 120, 3
    labels = np.arange(n) % classes
    prototypes = rng.normal(size=(classes, 8))
    np.savez(
        tmp_path / "features.npz",
        rgb=rng.normal(size=(n, 1, 8, 8)).astype(np.float32),  # noise: independent of the labels
        audio=prototypes[labels] + 0.5 * rng.normal(size=(n, 8)),
        labels=labels,
    )
    data = FeatureStreamsDataModule(tmp_path / "features.npz", val_fraction=0.25, test_fraction=0.0, batch_size=15)
    model = MultiStreamClassifier(
        streams=data.stream_channels,
        num_classes=data.num_classes,
        encoders={"audio": partial(MLPEncoder, hidden=(16,), out_features=8)},
        fusion=partial(GatedFusion, dim=8),
        optimizer=partial(torch.optim.AdamW, lr=3e-3),
        # a ResNet memorises 90 noise images within a few epochs: the noise stream learns slowly
        param_groups=[ParamGroup("rgb", lr=1e-4), ParamGroup("audio"), ParamGroup("fusion"), ParamGroup("head")],
    )
    monitor, pathways = StreamMonitor(verbose=False), PathwayAnalysis(every_n_epochs=4, verbose=False)
    trainer = tiny_trainer(
        tmp_path,
        max_epochs=4,
        limit_train_batches=None,
        limit_val_batches=None,
        logger=CSVLogger(tmp_path, name="csv", version=0),
        log_every_n_steps=1,
        callbacks=[monitor, pathways],
    )
    trainer.fit(model, data)

    rows = list(csv.DictReader((tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()))
    logged = {key for row in rows for key, value in row.items() if value}
    losses = [float(row["train/audio/loss_step"]) for row in rows if row.get("train/audio/loss_step")]
    assert losses[-1] < 0.7 * losses[0]  # 18 steps of 15 samples
    assert float(trainer.callback_metrics["val/fused/acc"]) > 0.7  # chance: 1/3
    assert float(trainer.callback_metrics["val/audio/acc"]) > 0.7
    for metric in ("grad_norm", "weight_norm", "update_ratio"):
        assert {f"streams/{metric}/audio", f"streams/{metric}/rgb"} <= logged, metric
    assert monitor.stream_names == ["rgb", "audio"]
    assert monitor._bindings["audio"].names == [
        name for name, _ in model.named_parameters() if name.startswith(("encoders.audio.", "aux_heads.audio."))
    ]
    report = pathways.latest
    total = sum(report.shapley.values())
    assert total == pytest.approx(report.score_all - report.score_none, abs=1e-6)
    assert report.score_alone["audio"] > 0.7 and report.shapley["audio"] > 0.8 * total
    assert abs(report.shapley["rgb"]) < 0.1
    assert {"pathways/shapley/audio", "pathways/accuracy_alone/audio"} <= logged
