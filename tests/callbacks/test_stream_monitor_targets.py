"""StreamMonitor's per-stream prediction protocol on common target and head set-ups (no crash, right numbers)."""

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from monitor_testkit import TwoBranchNet, loader, trainer_kwargs
from torchmetrics.functional.classification import multiclass_accuracy

from mslightning.callbacks import StreamMonitor


class Variant(TwoBranchNet):
    """TwoBranchNet whose steps return ignore_index targets, binary heads or soft targets."""

    def __init__(self, variant: str) -> None:
        super().__init__(declare_streams=True)
        self.variant = variant

    def _step(self, batch: Any) -> Any:
        inputs, target = batch
        fused, stream_logits = self(inputs)
        if self.variant == "ignore_index":
            target = target.clone()
            target[::3] = -100  # e.g. padding tokens
            loss = F.cross_entropy(fused, target) + sum(F.cross_entropy(z, target) for z in stream_logits.values())
            return {"loss": loss, "target": target, "stream_logits": stream_logits}
        if self.variant == "binary":
            binary = (target % 2).long()
            heads = {name: z[:, :1] for name, z in stream_logits.items()}  # (B, 1)
            loss = sum(F.binary_cross_entropy_with_logits(z[:, 0], binary.float()) for z in heads.values())
            return {"loss": loss + F.cross_entropy(fused, target), "target": binary, "stream_logits": heads}
        soft = F.one_hot(target, fused.shape[1]).float() * 0.9 + 0.025  # label smoothing as soft targets
        loss = F.cross_entropy(fused, soft) + sum(F.cross_entropy(z, soft) for z in stream_logits.values())
        return {"loss": loss, "target": soft, "stream_logits": stream_logits}


def _val_acc(model: Variant, stream: str) -> float:
    """Accuracy over the validation set in eval mode, computed here independently."""
    model.eval()
    logits, targets = [], []
    with torch.no_grad():
        for inputs, target in loader(n=16, seed=1):
            out = model._step((inputs, target))
            logits.append(out["stream_logits"][stream])
            targets.append(out["target"])
    logits, target = torch.cat(logits), torch.cat(targets)
    if logits.shape[1] == 1:
        return ((logits[:, 0] > 0).long() == target).float().mean().item()
    keep = target != -100
    return multiclass_accuracy(logits[keep], target[keep], logits.shape[1], average="micro").item()


@pytest.mark.parametrize("variant", ["ignore_index", "binary"])
def test_ignore_index_and_binary_heads_are_scored(tmp_path, variant):
    model = Variant(variant)
    monitor = StreamMonitor(log_every_n_steps=1)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=2))
    trainer.fit(model, loader(n=32), loader(n=16, seed=1))
    for stream in ("visible", "thermal"):
        (last,) = [value for epoch, value in monitor.history[f"streams/val_acc/{stream}"] if epoch == 1]
        assert last == pytest.approx(_val_acc(model, stream), abs=1e-6)
        assert all(torch.isfinite(torch.tensor(v)) for _, v in monitor.history[f"streams/val_loss/{stream}"])


def test_soft_targets_skip_the_prediction_metrics_with_one_warning(tmp_path):
    monitor = StreamMonitor(log_every_n_steps=1)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=2))
    with pytest.warns(UserWarning, match="soft labels") as caught:
        trainer.fit(Variant("soft"), loader(n=32), loader(n=16, seed=1))
    assert sum("soft labels" in str(w.message) for w in caught) == 1
    assert not any("val_acc" in key for key in monitor.history)
    assert any("grad_norm" in key for key in monitor.history)  # the rest of the monitor still works


class LazyBranch(TwoBranchNet):
    """A branch built with nn.LazyConv2d: its parameters have no shape until the first forward."""

    def __init__(self) -> None:
        super().__init__(declare_streams=True)
        self.visible_net = torch.nn.Sequential(
            torch.nn.LazyConv2d(4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
        )


def test_lazy_modules_without_a_sanity_check_are_bound_after_the_first_forward(tmp_path):
    monitor = StreamMonitor(log_every_n_steps=1)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=2, num_sanity_val_steps=0))
    model = LazyBranch()
    trainer.fit(model, loader(n=32), loader(n=16, seed=1))
    expected = sum(
        p.numel() for name, p in model.named_parameters() if name.startswith(("visible_net", "visible_head"))
    )
    assert monitor._bindings["visible"].numel == expected > 0
    # both epochs measured, from the first step on
    assert len(monitor.history["streams/grad_norm/visible"]) == 2
    assert all(value > 0 for _, value in monitor.history["streams/grad_norm/visible"])
