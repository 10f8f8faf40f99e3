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
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["MSLightningCLI", "main"]


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


def main(args: list[str] | None = None) -> None:
    """Run the ``mslightning`` command line.

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv``.
    """
    MSLightningCLI(args=args)


if __name__ == "__main__":
    main()
