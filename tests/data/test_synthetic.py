from __future__ import annotations

import jsonargparse
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from torch import Tensor, nn

from mslightning.data import StreamsTensorDataset, SyntheticStreamsDataModule

SMALL = {"train_size": 256, "val_size": 128, "test_size": 64, "image_size": 16}


def make(**kwargs) -> SyntheticStreamsDataModule:
    dm = SyntheticStreamsDataModule(**{**SMALL, **kwargs})
    dm.setup("fit")
    return dm


def ncm_accuracy(fit: StreamsTensorDataset, evaluate: StreamsTensorDataset, name: str, num_classes: int) -> float:
    """Nearest-class-mean oracle on 4x4-average-pooled pixels (the prototypes are low-frequency)."""

    def feats(ds: StreamsTensorDataset) -> Tensor:
        return F.avg_pool2d(ds.inputs[name], 4).flatten(1)

    x, y = feats(fit), fit.targets
    means = torch.stack([x[y == k].mean(0) for k in range(num_classes)])
    pred = torch.cdist(feats(evaluate), means).argmin(1)
    return (pred == evaluate.targets).float().mean().item()


def subset(ds: StreamsTensorDataset, index: slice) -> StreamsTensorDataset:
    return StreamsTensorDataset({n: x[index] for n, x in ds.inputs.items()}, ds.targets[index])


def all_tensors(dm: SyntheticStreamsDataModule) -> list[Tensor]:
    return [t for ds in (dm.train_set, dm.val_set, dm.test_set) for t in (*ds.inputs.values(), ds.targets)]


def test_batches_follow_the_contract():
    dm = make(streams={"rgb": 3, "depth": 1, "thermal": 2}, batch_size=8)
    assert dm.stream_channels == {"rgb": 3, "depth": 1, "thermal": 2}
    assert dm.num_classes == 4
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert isinstance(batch, tuple) and len(batch) == 2
        inputs, target = batch
        assert list(inputs) == ["rgb", "depth", "thermal"]
        for name, channels in dm.stream_channels.items():
            assert inputs[name].shape == (8, channels, 16, 16)
            assert inputs[name].dtype == torch.float32
        assert target.shape == (8,) and target.dtype == torch.int64
        assert target.min() >= 0 and target.max() < 4
    predict, predict_target = next(iter(dm.predict_dataloader()))  # the test set, targets included
    assert isinstance(predict, dict) and predict["thermal"].shape == (8, 2, 16, 16)
    torch.testing.assert_close(predict["rgb"], dm.test_set.inputs["rgb"][:8])
    torch.testing.assert_close(predict_target, dm.test_set.targets[:8])
    assert len(dm.train_dataloader().dataset) == 256
    assert len(dm.val_dataloader().dataset) == 128
    assert len(dm.test_dataloader().dataset) == 64


def test_dataloader_before_setup_raises():
    with pytest.raises(RuntimeError, match="setup"):
        SyntheticStreamsDataModule().train_dataloader()


def test_same_seed_same_data_whatever_stage_order_and_different_seed_differs():
    a = SyntheticStreamsDataModule(**SMALL)
    a.setup("test")
    b = SyntheticStreamsDataModule(**SMALL)
    b.setup("fit")
    b.setup("validate")  # a second setup must not regenerate anything
    for x, y in zip(all_tensors(a), all_tensors(b), strict=True):
        assert torch.equal(x, y)
    torch.testing.assert_close(next(iter(a.train_dataloader()))[1], next(iter(b.train_dataloader()))[1], rtol=0, atol=0)
    c = make(seed=1)
    assert not torch.equal(a.train_set.inputs["rgb"], c.train_set.inputs["rgb"])
    assert not torch.equal(a.val_set.targets, c.val_set.targets)


def test_splits_are_independent_of_other_splits_and_streams():
    base = make()
    other = make(train_size=100, streams={"rgb": 3, "depth": 1, "extra": 1})
    assert torch.equal(base.val_set.inputs["rgb"], other.val_set.inputs["rgb"])
    assert torch.equal(base.test_set.inputs["depth"], other.test_set.inputs["depth"])


def test_train_shuffle_is_seeded_and_reshuffles_each_epoch():
    dm = make(batch_size=256)
    loader = dm.train_dataloader()
    first, second = (next(iter(loader))[1] for _ in range(2))
    assert not torch.equal(first, second)  # one persistent generator: a new order each epoch
    assert torch.equal(first, next(iter(make(batch_size=256).train_dataloader()))[1])
    assert not torch.equal(first, dm.train_set.targets)  # actually shuffled


def test_splits_are_disjoint_and_balanced():
    dm = make(num_classes=3, train_size=100, val_size=50, test_size=31)
    flat = {split: getattr(dm, f"{split}_set").inputs["depth"].flatten(1) for split in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert torch.cdist(flat[a], flat[b]).min() > 0, f"{a} and {b} share a sample"
    for ds in (dm.train_set, dm.val_set, dm.test_set):
        counts = torch.bincount(ds.targets, minlength=3)
        assert counts.max() - counts.min() <= 1, counts


def test_strong_stream_is_informative_and_zero_signal_stream_is_not():
    dm = make(signal={"rgb": 0.0, "depth": 1.0}, train_size=512, val_size=512)
    strong = ncm_accuracy(dm.train_set, dm.val_set, "depth", 4)
    zero = ncm_accuracy(dm.train_set, dm.val_set, "rgb", 4)
    assert strong > 0.9, strong
    assert abs(zero - 0.25) < 0.08, zero  # chance; sd of the estimate is ~0.02
    # Exact version: a zero-signal stream does not depend on the labels at all.
    relabelled = make(signal={"rgb": 0.0, "depth": 1.0}, train_size=512, val_size=512, num_classes=3)
    assert not torch.equal(dm.val_set.targets, relabelled.val_set.targets)
    assert torch.equal(dm.val_set.inputs["rgb"], relabelled.val_set.inputs["rgb"])


def test_default_signal_makes_rgb_weaker_than_depth():
    dm = make(train_size=512, val_size=512)
    assert dm.signal == {"rgb": 0.3, "depth": 1.0}
    weak = ncm_accuracy(dm.train_set, dm.val_set, "rgb", 4)
    strong = ncm_accuracy(dm.train_set, dm.val_set, "depth", 4)
    assert 0.35 < weak < strong - 0.1, (weak, strong)


def test_shortcut_is_learnable_on_train_and_useless_on_val():
    dm = make(signal={"rgb": 0.3}, shortcut_stream="rgb", train_size=512, val_size=512)
    fit, held_out = subset(dm.train_set, slice(0, 256)), subset(dm.train_set, slice(256, None))
    train_acc = ncm_accuracy(fit, held_out, "rgb", 4)
    val_acc = ncm_accuracy(fit, dm.val_set, "rgb", 4)
    assert train_acc > 0.95, train_acc
    assert val_acc < train_acc - 0.5, (train_acc, val_acc)
    # The other streams and the labels are untouched by the shortcut.
    plain = make(signal={"rgb": 0.3}, train_size=512, val_size=512)
    assert torch.equal(dm.train_set.inputs["depth"], plain.train_set.inputs["depth"])
    assert torch.equal(dm.val_set.targets, plain.val_set.targets)
    # Without the shortcut, held-out train and val accuracies agree: the gap above is the cue.
    gap = ncm_accuracy(subset(plain.train_set, slice(0, 256)), subset(plain.train_set, slice(256, None)), "rgb", 4)
    assert abs(gap - ncm_accuracy(subset(plain.train_set, slice(0, 256)), plain.val_set, "rgb", 4)) < 0.15


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"signal": {"rgb": 0.3, "lidar": 1.0}}, "lidar"),
        ({"signal": {"rgb": -0.1}}, "rgb"),
        ({"streams": {}}, "streams"),
        ({"streams": {"rgb": 0}}, "rgb"),
        ({"train_size": -1}, "train_size"),
        ({"val_size": 0}, "val_size"),
        ({"test_size": -5}, "test_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"num_classes": 1}, "num_classes"),
        ({"image_size": 4}, "image_size"),
        ({"noise": -1.0}, "noise"),
        ({"max_shift": 16}, "max_shift"),
        ({"shortcut_stream": "thermal"}, "thermal"),
        ({"shortcut_stream": "rgb", "shortcut_strength": 0.0}, "shortcut_strength"),
        ({"shortcut_stream": "rgb", "num_classes": 26, "image_size": 8}, "image_size"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticStreamsDataModule(**kwargs)


def test_parses_as_lightning_cli_data_block():
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(SyntheticStreamsDataModule, "data")
    cfg = parser.parse_args(["--data.streams", '{"rgb": 3, "depth": 1}', "--data.signal", '{"rgb": 0.0}'])
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, SyntheticStreamsDataModule)
    assert dm.stream_channels == {"rgb": 3, "depth": 1}
    assert dm.signal == {"rgb": 0.0, "depth": 1.0}


class _TinyClassifier(LightningModule):
    """Per-stream global-average features -> linear head; asserts the batch contract in the loop."""

    def __init__(self, stream_channels: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(sum(stream_channels.values()), num_classes)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.head(torch.cat([x.mean(dim=(2, 3)) for x in inputs.values()], dim=1))

    def training_step(self, batch, batch_idx):
        assert isinstance(batch, tuple)
        inputs, target = batch
        return F.cross_entropy(self(inputs), target)

    def predict_step(self, batch, batch_idx):
        inputs, _ = batch
        return self(inputs)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _LinkedCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.link_arguments("data.stream_channels", "model.stream_channels", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def test_lightning_cli_links_model_to_data_and_trains(tmp_path):
    args = [
        "--data.streams",
        '{"a": 2, "b": 1, "c": 1}',
        "--data.num_classes",
        "3",
        "--data.train_size",
        "16",
        "--data.batch_size",
        "8",
        "--trainer.max_epochs",
        "1",
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    cli = _LinkedCLI(_TinyClassifier, SyntheticStreamsDataModule, run=False, args=args)
    assert cli.model.head.in_features == 4 and cli.model.head.out_features == 3
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 2
    predictions = Trainer(logger=False, enable_progress_bar=False).predict(cli.model, datamodule=cli.datamodule)
    assert sum(p.shape[0] for p in predictions) == cli.datamodule.hparams.test_size
