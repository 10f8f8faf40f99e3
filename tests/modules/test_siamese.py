"""SiameseRanker: one trunk pass on 2B images, groups, metrics vs hand computation, predict, reload."""

from __future__ import annotations

import csv
import logging
import math
import warnings
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import DataLoader, Dataset

from mslightning.callbacks import PredictionTableWriter, StreamMonitor
from mslightning.modules import SiameseRanker
from mslightning.nn import DifferenceHead, RankNetLoss, ResNetTrunk, ScoreHead
from mslightning.optim import ParamGroup

SIZE = 16


def _pairs(count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    series = torch.arange(count) // 3
    return {
        "a": torch.randn(count, 3, SIZE, SIZE, generator=g),
        "b": torch.randn(count, 3, SIZE, SIZE, generator=g),
        "ratio": torch.tensor([0.9, 0.2, 0.5, 0.7, 0.4, 0.65, 1.0, 0.0][:count]),
        "series": series,
        "index_a": torch.ones(count, dtype=torch.long),
        "index_b": torch.full((count,), 2, dtype=torch.long),
        "rank_a": torch.tensor([1, 2, 1, 1, 2, 1, 1, 2][:count]),
        "rank_b": torch.tensor([2, 1, 2, 2, 1, 2, 2, 1][:count]),
    }


class _PairData(Dataset):
    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["ratio"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: value[i] for key, value in self.batch.items()}


class _SeriesData(Dataset):
    """Two series (3 and 2 photos) as one batch, the layout of mslightning.data.collate_series."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(3)
        return {
            "images": torch.randn(5, 3, SIZE, SIZE, generator=g),
            "series": torch.tensor([4, 4, 4, 9, 9]),
            "index": torch.tensor([1, 2, 3, 1, 2]),
            "rank": torch.tensor([2, 1, 3, 1, 2]),
        }


def _model(**kwargs) -> SiameseRanker:
    kwargs.setdefault("trunk", partial(ResNetTrunk, arch="resnet18"))
    return SiameseRanker(**kwargs)


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = {
        "default_root_dir": tmp_path,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
    }
    return pl.Trainer(**{**defaults, **kwargs})


def test_one_trunk_pass_on_the_2b_images_of_a_batch() -> None:
    torch.manual_seed(0)
    model = _model()
    calls = []
    model.backbone.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    batch = _pairs(4)
    model.training_step(batch, 0)
    assert calls == [(8, 3, SIZE, SIZE)]
    # one BatchNorm batch of 2B images: bn1's running mean moved towards the statistics of a and b together
    fresh = _model()
    fresh.load_state_dict(model.state_dict())
    bn = fresh.backbone.bn1
    before = bn.running_mean.clone()
    fresh.train()
    stem = fresh.backbone.conv1(torch.cat([batch["a"], batch["b"]]))
    expected = (1 - bn.momentum) * before + bn.momentum * stem.mean(dim=(0, 2, 3))
    fresh.pair_features(batch["a"], batch["b"])
    torch.testing.assert_close(bn.running_mean, expected, atol=1e-6, rtol=1e-5)


def test_default_groups_are_backbone_and_head_and_one_line_sets_10x() -> None:
    model = _model(
        param_groups={"backbone": ParamGroup(), "head": ParamGroup(lr_scale=10.0)},
        optimizer=partial(torch.optim.SGD, lr=1e-5),
    )
    assert [g.name for g in model.default_param_groups()] == ["backbone", "head"]
    assert model.stream_patterns == {"backbone": ["backbone.*"], "head": ["head.*"]}
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == {"backbone": 1e-5, "head": pytest.approx(1e-4)}


def test_a_frozen_trunk_leaves_its_group_out() -> None:
    model = _model(trunk=partial(ResNetTrunk, arch="resnet18", frozen="all"))
    assert [g.name for g in model.resolved_param_groups()] == ["head"]


def test_random_swaps_keep_every_pair_consistent() -> None:
    torch.manual_seed(1)
    model = _model()
    batch = _pairs(8)
    swapped = model._swapped(batch)
    flipped = ~torch.equal(swapped["a"], batch["a"])
    assert flipped
    for i in range(8):
        same = torch.equal(swapped["a"][i], batch["a"][i])
        assert torch.equal(swapped["b"][i], batch["b"][i] if same else batch["a"][i])
        assert swapped["ratio"][i] == (batch["ratio"][i] if same else 1 - batch["ratio"][i])
        assert swapped["rank_a"][i] == (batch["rank_a"][i] if same else batch["rank_b"][i])
        assert swapped["index_b"][i] == (batch["index_b"][i] if same else batch["index_a"][i])


@pytest.mark.parametrize("head", [ScoreHead, DifferenceHead])
def test_validation_metrics_against_hand_computation(tmp_path, head) -> None:
    torch.manual_seed(2)
    model = _model(head=partial(head, hidden=8))
    batch = _pairs(8)
    loader = DataLoader(_PairData(batch), batch_size=4)
    (logged,) = _trainer(tmp_path).validate(model, loader, verbose=False)

    model.eval()
    with torch.no_grad():
        fa, fb = model.pair_features(batch["a"], batch["b"])
        l_ab, l_ba = model.head(fa, fb), model.head(fb, fa)
    p = model.head.preference(fa, fb).detach() if head is ScoreHead else 0.5 * (l_ab.sigmoid() + (-l_ba).sigmoid())
    r = batch["ratio"]
    decided = r != 0.5
    correct = ((p > 0.5) == (r > 0.5))[decided].float()
    agreed = decided & (torch.maximum(r, 1 - r) >= 0.7)
    expected = {
        "val/pair_acc": correct.mean().item(),
        "val/pair_acc_agreed": ((p > 0.5) == (r > 0.5))[agreed].float().mean().item(),
        "val/swap_consistency": (torch.sign(l_ab) == -torch.sign(l_ba)).float().mean().item(),
        "val/log_loss": F.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), r).item(),
    }
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, abs=1e-5), key
    if head is ScoreHead:
        assert logged["val/swap_consistency"] == 1.0
    # the loss is the configured one, unsymmetrised, averaged over the two batches of 4
    losses = [model.loss(l_ab[i : i + 4], r[i : i + 4]).item() for i in (0, 4)]
    assert logged["val/loss"] == pytest.approx(sum(losses) / 2, abs=1e-5)
    assert "val/kendall_tau" in logged and -1 <= logged["val/kendall_tau"] <= 1


def test_fit_with_monitor_logs_parts_and_no_lr_advice_between_backbone_and_head(tmp_path, caplog) -> None:
    torch.manual_seed(0)
    model = _model(
        optimizer=partial(torch.optim.SGD, lr=1e-5, momentum=0.9),
        param_groups=[ParamGroup("backbone"), ParamGroup("head", lr_scale=10)],
    )
    loader = DataLoader(_PairData(_pairs(8)), batch_size=4)
    monitor = StreamMonitor(log_every_n_steps=1, thresholds=None)
    trainer = _trainer(tmp_path, max_epochs=3, callbacks=[monitor], log_every_n_steps=1)
    with warnings.catch_warnings(record=True) as record, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        trainer.fit(model, loader, loader)
    assert not [w for w in record if "StreamMonitor" in str(w.message)]
    # one clear note, not a warning about a protocol the model cannot have
    assert caplog.text.count("are in series, not parallel streams") == 1
    for part in ("backbone", "head"):
        for metric in ("grad_norm", "update_ratio", "weight_norm"):
            assert len(monitor.history[f"streams/{metric}/{part}"]) == 3, (metric, part)
    advice = " ".join(str(r) for r in monitor.get_recommendations())
    assert "raise" not in advice or "backbone" not in advice
    assert "not compared with each other" in advice


def test_predict_ranks_each_series_and_the_writer_writes_it(tmp_path) -> None:
    torch.manual_seed(4)
    model = _model(head=partial(DifferenceHead, hidden=8))
    model.weights_are_trained = True
    writer = PredictionTableWriter(output_dir=tmp_path)
    trainer = _trainer(tmp_path, callbacks=[writer])
    trainer.predict(model, DataLoader(_SeriesData(), batch_size=None), return_predictions=False)
    with writer.path.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["series", "index", "score", "predicted_rank", "true_rank"]
    assert [(r["series"], r["index"], r["true_rank"]) for r in rows] == [
        ("4", "1", "2"),
        ("4", "2", "1"),
        ("4", "3", "3"),
        ("9", "1", "1"),
        ("9", "2", "2"),
    ]
    model.eval()
    images = _SeriesData()[0]["images"]
    with torch.no_grad():
        for series, members in (("4", slice(0, 3)), ("9", slice(3, 5))):
            scores = model.rank_series(images[members])
            mine = [r for r in rows if r["series"] == series]
            assert [float(r["score"]) for r in mine] == pytest.approx(scores.tolist(), abs=1e-5)
            order = scores.argsort(descending=True).tolist()
            assert [int(mine[i]["predicted_rank"]) for i in order] == list(range(1, len(mine) + 1))
    # a series of one: its only photo ranks first with score 0.5
    assert model.head.series_scores(torch.zeros(1, model.backbone.out_features)).tolist() == [0.5]


def test_checkpoint_reloads_without_arguments(tmp_path) -> None:
    torch.manual_seed(5)
    model = _model(head=partial(ScoreHead, hidden=8), loss=RankNetLoss, optimizer=partial(torch.optim.SGD, lr=0.01))
    loader = DataLoader(_PairData(_pairs(4)), batch_size=4)
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=True)
    trainer.fit(model, loader)
    path = trainer.checkpoint_callback.best_model_path
    assert torch.load(path, weights_only=True)["hyper_parameters"]["trunk"]["init_args"]["arch"] == "resnet18"
    reloaded = SiameseRanker.load_from_checkpoint(path)
    assert isinstance(reloaded.loss, RankNetLoss)
    batch = _pairs(4)
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch["a"], batch["b"]), model(batch["a"], batch["b"]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.pop("ratio"), "lacks ['ratio']"),
        (lambda b: b.update(ratio=b["ratio"] * 2), "must lie in [0, 1]; got 1.8."),
        (lambda b: b.update(b=b["b"][:, :, :8]), "must have the same shape"),
        (lambda b: b.update(a=(b["a"] * 255).to(torch.uint8)), "batch['a'] is torch.uint8"),
        (lambda b: b.update(series=b["series"].float()), "batch['series'] must be a (4,) integer tensor"),
    ],
)
def test_bad_batches_are_named(change, message: str) -> None:
    batch = _pairs(4)
    change(batch)
    with pytest.raises(ValueError, match=None) as error:
        _model().training_step(batch, 0)
    assert message in str(error.value)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"agreement_threshold must be in \[0.5, 1\]"):
        _model(agreement_threshold=0.3)
    with pytest.raises(ValueError, match="`head` must build an mslightning.nn.PairHead"):
        _model(head=lambda width: torch.nn.Linear(width, 1))


def test_series_scores_have_no_nan_for_the_metric() -> None:
    assert not math.isnan(_model().head.series_scores(torch.zeros(2, 512)).sum().item())


def test_a_checkpoint_reloads_after_the_pretrained_file_is_gone(tmp_path) -> None:
    from torchvision.models import resnet18

    weights = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), weights)
    model = _model(trunk=partial(ResNetTrunk, arch="resnet18", weights_path=str(weights)))
    assert model.pretrained_parts == ("backbone",) and _model().pretrained_parts == ()  # for StreamMonitor
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=True)
    trainer.fit(model, DataLoader(_PairData(_pairs(4)), batch_size=4))
    weights.unlink()
    reloaded = SiameseRanker.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    torch.testing.assert_close(reloaded.backbone.conv1.weight, model.backbone.conv1.weight)
    assert reloaded.hparams["trunk"]["init_args"]["weights_path"] is None
    assert reloaded.pretrained_parts == ("backbone",)  # continued fine-tuning is still judged as such


def test_a_metric_with_no_pair_in_the_epoch_is_left_out_not_zero(tmp_path) -> None:
    batch = _pairs(4)
    batch["ratio"] = torch.tensor([0.6, 0.4, 0.65, 0.35])  # no pair reaches agreement 0.7
    (logged,) = _trainer(tmp_path).validate(_model(), DataLoader(_PairData(batch), batch_size=4), verbose=False)
    assert "val/pair_acc" in logged and "val/pair_acc_agreed" not in logged


def test_tied_training_pairs_with_a_hard_label_loss_are_announced(tmp_path) -> None:
    batch = _pairs(4)  # holds a tie (ratio 0.5)
    with pytest.warns(UserWarning, match="keeps tied pairs .* use loss RankNetLoss"):
        _trainer(tmp_path, max_steps=1).fit(_model(), DataLoader(_PairData(batch), batch_size=4))


def test_parameters_outside_the_declared_parts_get_a_catch_all_default_group() -> None:
    model = _model()
    model.extra = torch.nn.Linear(2, 2)  # e.g. a subclass's own layer
    assert [g.name for g in model.default_param_groups()] == ["backbone", "head", "other"]
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    assert {g["name"]: len(g["params"]) for g in optimizer.param_groups}["other"] == 2
