"""A run whose inputs turn NaN stops with one clear message and never touches a good checkpoint."""

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from everyday_kit import MAIN_CONFIG, TINY, sha256
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from mslightning.callbacks import NonFiniteError, NonFiniteGuard
from mslightning.cli import MSLightningCLI, main
from mslightning.data import SyntheticStreamsDataModule
from mslightning.modules import MultiStreamClassifier


def _all_finite(checkpoint: Path) -> bool:
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_nan_run_keeps_the_good_checkpoint_byte_identical(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    good = MSLightningCLI(args=["fit", "--config", str(MAIN_CONFIG), *TINY])
    best = Path(good.trainer.checkpoint_callback.best_model_path).resolve()
    before = {path: sha256(path) for path in best.parent.glob("*.ckpt")}
    assert best in before and len(before) == 2  # best.ckpt and last.ckpt

    # second fit, same config: rgb inputs turn NaN in epoch 1, after a finite epoch 0 that checkpoints
    nan_data = ["--data", "everyday_kit.TurnsNaNDataModule", "--data.init_args.nan_after", "32"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(MAIN_CONFIG), *TINY, *nan_data, "--trainer.max_epochs", "3"])
    assert exit_info.value.code == 1
    message = capsys.readouterr().err
    assert "mslightning: error: Training stopped: the loss is nan at epoch 1, batch 0" in message
    assert "Non-finite loss terms: fused=nan, rgb=nan" in message
    assert "Stream 'rgb': 6144 of 6144 input values are NaN/Inf" in message
    assert "Traceback" not in message

    assert {path: sha256(path) for path in best.parent.glob("*.ckpt")} == before  # first run untouched
    second_run = tmp_path / "logs/dual_stream_synthetic/version_1/checkpoints"
    written = sorted(second_run.glob("*.ckpt"))
    assert written, "epoch 0 of the second run was finite and should have been checkpointed"
    assert all(_all_finite(path) for path in written)


class _PoisonAtValidationEnd(Callback):
    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            with torch.no_grad():
                pl_module.head[1].weight[0, 0] = float("inf")


def test_nonfinite_parameters_are_never_checkpointed(tmp_path):
    data = SyntheticStreamsDataModule(image_size=16, train_size=16, val_size=8, test_size=8, batch_size=8)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/fused/acc", mode="max", save_last=True)
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, callbacks=[_PoisonAtValidationEnd(), checkpoint]
    )
    model = MultiStreamClassifier(num_classes=4)
    with pytest.raises(
        NonFiniteError, match=r"after validation at epoch 0.*1 parameter\(s\) hold NaN/Inf \('head\.1\.weight'\)"
    ):
        trainer.fit(model, data)
    assert not list(tmp_path.glob("*.ckpt")) and checkpoint.best_model_path == ""
    assert any(isinstance(cb, NonFiniteGuard) for cb in trainer.callbacks)  # added by the module itself


def test_guard_rejects_doing_nothing():
    with pytest.raises(ValueError, match="would check nothing"):
        NonFiniteGuard(check_loss=False, check_parameters=False)
