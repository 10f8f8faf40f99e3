"""Where in Lightning's fit loop a callback hook runs."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

__all__ = ["EpochEndCallback", "epoch_log_step", "is_end_of_epoch_validation"]


def epoch_log_step(trainer: pl.Trainer) -> int:
    """The step Lightning logs a training epoch's ``on_epoch`` values at: that of the epoch's last batch.

    Lightning counts the last batch once its validation is over: during the end-of-epoch
    validation the count of batches that stepped is the last batch's step, in
    ``on_train_epoch_end`` it is one past it.

    Args:
        trainer: The running Trainer.

    Returns:
        The step (0 before any step).
    """
    count = trainer.fit_loop.epoch_loop._batches_that_stepped
    return count if trainer.validating else max(count - 1, 0)


def is_end_of_epoch_validation(trainer: pl.Trainer) -> bool:
    """Whether the validation that just ran (during ``fit``) is the one at the end of an epoch.

    Checkpoint callbacks save in ``on_validation_end`` after such a validation, and Lightning
    calls them after every other callback's ``on_validation_end`` but before any
    ``on_train_epoch_end``: epoch-level state updated in ``on_validation_end`` is in that
    checkpoint, state updated in ``on_train_epoch_end`` is not.

    Args:
        trainer: The running Trainer.

    Returns:
        True after the last training batch's validation of a ``fit`` epoch (not the sanity check,
        not a mid-epoch ``val_check_interval`` validation).
    """
    return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and trainer.is_last_batch


class EpochEndCallback(Callback):
    """A callback whose epoch-level work runs once per ``fit`` epoch, before checkpoints see it.

    :meth:`end_of_epoch` runs at the end-of-epoch validation when there is one (so a
    checkpoint saved in ``on_validation_end`` holds its results), else at ``on_train_epoch_end``.
    After resuming from such a checkpoint Lightning runs that epoch's ``on_train_epoch_end`` again;
    the epoch already handled is therefore part of the state (:meth:`epoch_end_state`), restored
    after ``setup`` resets it.
    """

    _epoch_done: int | None = None

    def end_of_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The epoch-level work; called once per epoch."""
        raise NotImplementedError

    def _finish_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch_done == trainer.current_epoch:
            return
        self._epoch_done = trainer.current_epoch
        self.end_of_epoch(trainer, pl_module)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == TrainerFn.FITTING:
            self._epoch_done = None

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if is_end_of_epoch_validation(trainer):
            self._finish_epoch(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_epoch(trainer, pl_module)

    def epoch_end_state(self) -> dict[str, Any]:
        """The entries a subclass adds to its ``state_dict``."""
        return {"epoch_done": self._epoch_done}

    def load_epoch_end_state(self, state_dict: dict[str, Any]) -> None:
        """Restores :meth:`epoch_end_state` from a subclass's ``state_dict``."""
        self._epoch_done = state_dict.get("epoch_done")
