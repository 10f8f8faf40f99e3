"""Stop training at the first non-finite loss, and never save non-finite weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from mslightning.optim.patterns import describe_names, select_names

__all__ = ["NonFiniteError", "NonFiniteGuard"]


class NonFiniteError(RuntimeError):
    """Training produced a NaN/Inf loss or NaN/Inf parameters."""


def _nonfinite_count(tensor: Tensor) -> int:
    return int((~torch.isfinite(tensor)).sum())


class NonFiniteGuard(Callback):
    """Stops ``fit`` at the first NaN/Inf loss and keeps non-finite weights out of every checkpoint.

    * Before each backward pass the loss is checked (one scalar read per step; under DDP the
      decision is shared by all ranks). A non-finite loss raises :class:`NonFiniteError` *before*
      the optimizer step, so the weights stay finite, with one message naming the epoch, batch
      and global step, the non-finite loss terms (when the module exposes ``loss_terms``, a
      mapping name -> 0-dim tensor set in ``training_step``, as mslightning's modules do), the
      streams whose inputs hold NaN/Inf (for ``(inputs, target)`` batches) and any parameter
      that is already non-finite.
    * Before every checkpoint callback runs (end of validation, end of a training epoch) and
      again inside every checkpoint save, the parameters are checked; non-finite ones raise
      :class:`NonFiniteError` naming them, so no checkpoint holding them is written or marked
      best, and earlier checkpoints stay untouched.

    mslightning's modules add a guard automatically (``configure_callbacks``) unless the Trainer
    already has one.

    Args:
        check_loss: Check the loss before every backward pass.
        check_parameters: Check the parameters before checkpoints are saved.

    Raises:
        ValueError: If both checks are disabled (the guard would do nothing).
    """

    def __init__(self, check_loss: bool = True, check_parameters: bool = True) -> None:
        if not (check_loss or check_parameters):
            raise ValueError("NonFiniteGuard with check_loss=False and check_parameters=False would check nothing.")
        self.check_loss = check_loss
        self.check_parameters = check_parameters
        self._batch: Any = None
        self._batch_idx = -1
        self._checked_step = -1

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # a reference only; it is inspected when the loss turns out non-finite
        self._batch, self._batch_idx = batch, batch_idx

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch = None

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if not self.check_loss:
            return
        local = torch.isfinite(loss.detach()).all()
        # one host read per step; under DDP the flags are summed first, so every rank stops together
        nonfinite_ranks = trainer.strategy.reduce((~local).float(), reduce_op="sum")
        if not nonfinite_ranks.item():
            return
        finite = bool(local)
        where = f"epoch {trainer.current_epoch}, batch {self._batch_idx} (global step {trainer.global_step})"
        value = loss.detach().float().flatten()[0].item() if not finite else "finite here but not on another rank"
        lines = [f"Training stopped: the loss is {value} at {where}; the optimizer step was not taken."]
        terms = getattr(pl_module, "loss_terms", None)
        if isinstance(terms, Mapping) and terms:
            bad = {name: float(term.detach().float()) for name, term in terms.items() if not torch.isfinite(term).all()}
            if bad:
                lines.append(
                    "Non-finite loss terms: " + ", ".join(f"{name}={value}" for name, value in bad.items()) + "."
                )
        lines.extend(self._input_report(self._batch))
        lines.extend(self._parameter_report(pl_module))
        lines.append(
            "Usual causes: NaN/Inf in the data, a learning rate that is too high (lower it, clip gradients with "
            "a group's max_grad_norm), or a loss that takes log(0). No checkpoint was written for this step."
        )
        raise NonFiniteError("\n".join(lines))

    @staticmethod
    def _input_report(batch: Any) -> list[str]:
        inputs = batch[0] if isinstance(batch, list | tuple) and batch else batch
        if not isinstance(inputs, Mapping):
            return []
        lines = []
        for name, x in inputs.items():
            if isinstance(x, Tensor) and x.is_floating_point():
                count = _nonfinite_count(x)
                if count:
                    lines.append(f"Stream {name!r}: {count} of {x.numel()} input values are NaN/Inf.")
        return lines

    @staticmethod
    def nonfinite_parameters(pl_module: pl.LightningModule) -> list[str]:
        """Names of the module's parameters holding a NaN or Inf.

        Args:
            pl_module: The module.

        Returns:
            Parameter names, in ``named_parameters()`` order (one host transfer in all).
        """
        named = [(name, p) for name, p in pl_module.named_parameters()]
        if not named:
            return []
        finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named]).tolist()
        return [name for (name, _), ok in zip(named, finite, strict=True) if not ok]

    def _parameter_report(self, pl_module: pl.LightningModule) -> list[str]:
        bad = self.nonfinite_parameters(pl_module)
        if not bad:
            return []
        streams: Mapping[str, Any] = getattr(pl_module, "stream_patterns", None) or {}
        by_stream = {stream: select_names(bad, patterns) for stream, patterns in streams.items()}
        parts = [f"stream {s!r}: {describe_names(names, 4)}" for s, names in by_stream.items() if names]
        shown = "; ".join(parts) if parts else describe_names(bad, 6)
        return [f"{len(bad)} parameter(s) hold NaN/Inf ({shown})."]

    def _check_parameters(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, when: str, once_per_step: bool = True
    ) -> None:
        # before checkpoint callbacks, once per optimizer step is enough (the weights change in steps);
        # inside a save the check always runs, so nothing non-finite is written whoever changed the weights
        if not self.check_parameters or (once_per_step and self._checked_step == trainer.global_step):
            return
        report = self._parameter_report(pl_module)
        if trainer.strategy.reduce_boolean_decision(not report, all=True):
            self._checked_step = trainer.global_step
            return
        raise NonFiniteError(
            f"Training stopped {when} at epoch {trainer.current_epoch} (global step {trainer.global_step}): "
            + (report[0] if report else "another rank holds NaN/Inf parameters.")
            + " No checkpoint is written from these weights; earlier checkpoints are untouched."
        )

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._check_parameters(trainer, pl_module, "after validation")

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_parameters(trainer, pl_module, "at the end of the training epoch")

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._check_parameters(trainer, pl_module, "before saving a checkpoint", once_per_step=False)
