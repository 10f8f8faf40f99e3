"""What a resumed fit does to a group's schedule: exact for interval schedules, one epoch late for plateaus.

The plateau lag is Lightning's (the checkpoint is written before the epoch's schedule steps and a
resume replays only the non-plateau step); the README states it, and this test notices if it changes.
"""

from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from mslightning.demos import TinyStreamsDataModule, TinyStreamsModel
from mslightning.optim import ParamGroup


class _EpochLR(Callback):
    def __init__(self):
        self.lrs = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self.lrs[trainer.current_epoch] = trainer.optimizers[0].param_groups[0]["lr"]


def _fit(tmp_path, name, scheduler, ckpt_path=None):
    torch.manual_seed(0)
    monitor = "train/loss" if scheduler.func is torch.optim.lr_scheduler.ReduceLROnPlateau else None
    model = TinyStreamsModel(
        optimizer=partial(torch.optim.SGD, lr=1.0),
        param_groups=[ParamGroup("all", scheduler=scheduler, monitor=monitor)],
    )
    lrs = _EpochLR()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / name, save_top_k=-1, filename="{epoch}")
    trainer = pl.Trainer(
        max_epochs=4, logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[lrs, checkpoints]
    )
    trainer.fit(model, TinyStreamsDataModule(), ckpt_path=ckpt_path)
    return lrs.lrs


@pytest.mark.parametrize(
    ("scheduler", "resumed"),
    [
        (partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5), {2: 0.25, 3: 0.125}),
        # threshold 10: every epoch counts as "no improvement", so the plateau halves the lr each epoch too
        (
            partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0, factor=0.5, threshold=10.0),
            {2: 0.5, 3: 0.25},
        ),
    ],
    ids=["steplr-exact", "plateau-one-epoch-late"],
)
def test_resumed_schedule(tmp_path, scheduler, resumed):
    assert _fit(tmp_path, "straight", scheduler) == {0: 1.0, 1: 0.5, 2: 0.25, 3: 0.125}
    assert _fit(tmp_path, "resumed", scheduler, ckpt_path=tmp_path / "straight/epoch=1.ckpt") == resumed
