"""The ``mslightning`` console script: LightningCLI for every mslightning module.

Usage::

    mslightning fit --config configs/dual_stream/synthetic.yaml
    mslightning validate --config configs/dual_stream/synthetic.yaml --ckpt_path best
    mslightning fit --config configs/dual_stream/synthetic.yaml --print_config

Any LightningModule / LightningDataModule can be chosen by ``class_path``. LightningCLI's
``--optimizer``/``--lr_scheduler`` shortcuts are deliberately not offered: they would replace the
modules' ``configure_optimizers`` and put every parameter into a single group. Optimizers,
named parameter groups and per-group schedules are configured under ``model:`` instead.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["MSLightningCLI", "checkpoint_agreement", "main"]


class MSLightningCLI(LightningCLI):
    """LightningCLI without optimizer auto-configuration, that says where the logs went.

    Args:
        *args: Passed to :class:`~lightning.pytorch.cli.LightningCLI`.
        **kwargs: Passed to :class:`~lightning.pytorch.cli.LightningCLI`; ``model_class`` and
            ``datamodule_class`` default to any LightningModule / LightningDataModule in
            subclass mode, and ``auto_configure_optimizers`` is always ``False``.

    Raises:
        ValueError: If ``auto_configure_optimizers=True`` is requested.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("auto_configure_optimizers"):
            raise ValueError(
                "MSLightningCLI never auto-configures optimizers: that would collapse the named "
                "parameter groups into one. Configure `model.optimizer` and `model.param_groups`."
            )
        kwargs["auto_configure_optimizers"] = False
        if not args and "model_class" not in kwargs:
            kwargs.update(model_class=pl.LightningModule, subclass_mode_model=True)
        if len(args) < 2 and "datamodule_class" not in kwargs:
            kwargs.update(datamodule_class=pl.LightningDataModule, subclass_mode_data=True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    def _report_logs(self) -> None:
        for logger in self.trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                rank_zero_info(
                    f"\nTensorBoard logs: {logger.log_dir}\n  open them with:  tensorboard --logdir {logger.root_dir}\n"
                )
        checkpoint = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        if checkpoint:
            rank_zero_info(f"Best checkpoint: {checkpoint}\n")

    def after_fit(self) -> None:
        """Tell the user where the TensorBoard logs and the best checkpoint are."""
        self._report_logs()

    def after_validate(self) -> None:
        """Compare the validation metrics with what the checkpoint recorded when it was saved."""
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        if not ckpt_path or ckpt_path in ("best", "last"):
            return
        for line in checkpoint_agreement(ckpt_path, self.trainer.callback_metrics):
            rank_zero_info(line)


def checkpoint_agreement(ckpt_path: str, metrics: dict[str, torch.Tensor]) -> list[str]:
    """Lines comparing a checkpoint's recorded ModelCheckpoint score with fresh metrics.

    Args:
        ckpt_path: A Lightning checkpoint written with a monitoring ``ModelCheckpoint``.
        metrics: The metrics just computed (``trainer.callback_metrics``).

    Returns:
        One line per monitored metric found in both, e.g.
        ``"val/fused/acc: checkpoint recorded 0.8320, validation now 0.8320"``.
    """
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    lines = []
    for key, state in checkpoint.get("callbacks", {}).items():
        if not key.startswith(ModelCheckpoint.__name__) or state.get("best_model_score") is None:
            continue
        monitor = state.get("monitor")
        if monitor in metrics:
            recorded, now = float(state["best_model_score"]), float(metrics[monitor])
            lines.append(f"{monitor}: checkpoint recorded {recorded:.4f}, validation now {now:.4f}")
    return lines


def main(args: list[str] | None = None) -> None:
    """Run the ``mslightning`` command line.

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv``.
    """
    MSLightningCLI(args=args)


if __name__ == "__main__":
    main()
