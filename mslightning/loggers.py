"""TensorBoard organised for multi-stream models: one run (one colour) per stream, HParams by group name.

TensorBoard colours lines by *run*. With Lightning's own ``TensorBoardLogger`` every stream's
curve is a line of the one training run, so streams differ only by marker (Custom Scalars) or
sit on separate cards (Time Series). :class:`StreamTensorBoardLogger` writes every key that
names a stream into that stream's own run beside the training run, under the key without the
stream: ``streams/grad_norm/rgb`` becomes the tag ``streams/grad_norm`` of the run
``version_0/rgb``, ``train/rgb/acc`` the tag ``train/acc`` of the same run. Time Series then
overlays the streams in one card, each stream in the same colour on every card and in Custom
Scalars.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor
from typing_extensions import override

from mslightning.modules.hparams import BOOKKEEPING
from mslightning.optim.groups import NO_DECAY_SUFFIX
from mslightning.streams import stream_pairs

__all__ = ["BEST_PREFIX", "StreamTensorBoardLogger", "readable_hparams"]

BEST_PREFIX = "best"
"""First part of the HParams metric tags: ``best/<key>`` is the best value of ``<key>`` so far."""

_NOT_PARTS = (*BOOKKEEPING, "optimizer", "param_groups")  # the optimizer and groups get columns of their own
Mode = Literal["max", "min"]


def _part(value: Any) -> str | None:
    """A constructor argument that names a part: a class (its name) or a name such as ``"resnet18"``."""
    if isinstance(value, Mapping) and "class_path" in value:
        return str(value["class_path"]).rpartition(".")[2]
    return value if isinstance(value, str) else None


def readable_hparams(module: pl.LightningModule) -> dict[str, Any]:
    """The hyper-parameters a person compares runs by, one readable value each.

    ``family`` (the module class), the parts it was built from (constructor arguments that are a
    class, as its name: ``fusion: WeightedFusion``, or a name: ``backbone: resnet18``), the
    optimizer class, and ``lr/<group>`` and ``weight_decay/<group>`` of every named param group as
    the optimizer holds them (inherited values filled in, the lr before any schedule; no-decay
    sub-groups left out). Numeric settings stay in ``hparams.yaml``: a table of a dozen columns
    is read at a glance, one of forty is not.

    Args:
        module: A LightningModule, after its optimizers were configured (``trainer.optimizers``).

    Returns:
        Name -> number, string or bool.
    """
    readable: dict[str, Any] = {"family": type(module).__name__}
    for key, value in dict(module.hparams).items():
        if key in _NOT_PARTS:
            continue
        cell = _part(value.as_dict() if callable(getattr(value, "as_dict", None)) else value)
        if cell is not None:
            readable[key] = cell
    trainer = module._trainer
    optimizers = trainer.optimizers if trainer is not None else []
    if optimizers:
        readable["optimizer"] = ", ".join(dict.fromkeys(type(o).__name__ for o in optimizers))
    for index, optimizer in enumerate(optimizers):
        for position, group in enumerate(optimizer.param_groups):
            name = str(group.get("name", f"{index}.{position}"))
            if name.endswith(NO_DECAY_SUFFIX):
                continue
            readable[f"lr/{name}"] = float(group.get("initial_lr", group["lr"]))
            readable[f"weight_decay/{name}"] = float(group.get("weight_decay", 0.0))
    return readable


def _best_metrics(module: pl.LightningModule, trainer: pl.Trainer | None) -> dict[str, Mode]:
    declared = dict(getattr(module, "best_metrics", None) or {})
    wrong = {key: mode for key, mode in declared.items() if mode not in ("max", "min")}
    if wrong:
        raise ValueError(f"{type(module).__name__}.best_metrics must map keys to 'max' or 'min', got {wrong}.")
    for callback in trainer.checkpoint_callbacks if trainer is not None else []:
        if isinstance(callback, ModelCheckpoint) and callback.monitor:
            declared.setdefault(callback.monitor, "max" if callback.mode == "max" else "min")
    return declared


class StreamTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger with one TensorBoard run per stream, readable HParams and no ``hp_metric``.

    **Runs.** A logged key with a segment that is a run name (a stream, ``<a>_vs_<b>`` for a pair
    of streams, or another declared output such as ``fused``) is written to that run,
    ``<log_dir>/<run>``, under the key without that segment; every other key goes to the training
    run as usual. Run names are ``streams``, the streams a
    :class:`~mslightning.callbacks.StreamMonitor` watches, and what the module declares:
    ``dashboard_runs`` if it has it, else the keys of its ``stream_patterns``. Other loggers and
    ``trainer.callback_metrics`` keep the full keys (``EarlyStopping(monitor="streams/overfit_score/rgb")``).

    **HParams.** Lightning logs the module's constructor arguments as they are stored (groups by
    position, nested ``class_path`` entries, bookkeeping) with a placeholder ``hp_metric = -1``.
    This logger writes :func:`readable_hparams` instead, at the start of ``fit``, with real metrics:
    ``best/<key>``, the best value so far of every key in the module's ``best_metrics``
    (``{key: "max" | "min"}``) and of every ``ModelCheckpoint`` monitor that is logged. ``hparams.yaml``
    is still written as Lightning writes it. The set-up happens where Lightning hands the logger the
    module (``log_graph``, at the start of every fit/validate/test): with
    ``Trainer(enable_autolog_hparams=False)`` it does not, and the runs are only the ``streams`` and
    those StreamMonitor adds. The best-so-far values count from the start of each ``fit`` (a resumed
    fit starts over). Keep ``default_hp_metric`` off: on, Lightning writes its own HParams session
    too.

    A key is split at its first segment that is a run name, so a stream should not share its name
    with other segments of logged keys (a stream called ``loss`` would take ``train/loss``).

    Args:
        save_dir: As for ``TensorBoardLogger``.
        name: As for ``TensorBoardLogger``.
        version: As for ``TensorBoardLogger``.
        streams: Run names in addition to the module's.
        default_hp_metric: Lightning's placeholder ``hp_metric = -1``; off, since the HParams get real metrics.
        **kwargs: Passed to ``TensorBoardLogger``.

    Example::

        from lightning.pytorch import Trainer
        from mslightning.loggers import StreamTensorBoardLogger

        trainer = Trainer(logger=StreamTensorBoardLogger("logs", name="rgbd"), max_epochs=1)
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        streams: Sequence[str] = (),
        default_hp_metric: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(save_dir, name, version, default_hp_metric=default_hp_metric, **kwargs)
        if isinstance(streams, str) or not all(isinstance(s, str) and s and "/" not in s for s in streams):
            raise ValueError(f"streams must be a list of names without '/', got {streams!r}.")
        self._runs: dict[str, None] = {}
        self._named: list[str] = []  # the names given, without the pairs made of them
        self._writers: dict[str, Any] = {}
        self._best_modes: dict[str, Mode] = {}
        self._best: dict[str, float] = {}
        self.add_runs(streams)

    @property
    def run_names(self) -> list[str]:
        """The names that get their own run, in the order they were added."""
        return list(self._runs)

    def add_runs(self, names: Iterable[str]) -> None:
        """Give these names (and every pair ``<a>_vs_<b>`` of the streams among them) their own run.

        Args:
            names: Stream or output names.
        """
        names = [n for n in names if n not in self._runs]
        self._named.extend(names)
        self._runs.update(dict.fromkeys(names))
        self._runs.update(dict.fromkeys(f"{a}_vs_{b}" for a, b in stream_pairs(self._named)))

    def split_key(self, key: str) -> tuple[str | None, str]:
        """Which run a key goes to, and its tag there.

        Args:
            key: A logged key, e.g. ``streams/grad_norm/rgb``.

        Returns:
            ``(run, tag)``, e.g. ``("rgb", "streams/grad_norm")``; ``(None, key)`` for the training run.
        """
        parts = key.split("/")
        if len(parts) > 1 and parts[0] != BEST_PREFIX:
            for index, part in enumerate(parts):
                if part in self._runs:
                    return part, "/".join(parts[:index] + parts[index + 1 :])
        return None, key

    @rank_zero_only
    def run_writer(self, run: str) -> Any:
        """The SummaryWriter of a run beside the training run (``<log_dir>/<run>``), made on first use.

        Args:
            run: The run's name.

        Returns:
            A ``torch.utils.tensorboard.SummaryWriter``.
        """
        if run not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[run] = SummaryWriter(log_dir=os.path.join(self.log_dir, run))
        return self._writers[run]

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        main: dict[str, float] = {}
        for key, value in metrics.items():
            value = value.item() if isinstance(value, Tensor) else value
            self._track_best(key, value, step)
            run, tag = self.split_key(key)
            if run is None or isinstance(value, dict):
                main[key] = value
            else:
                self.run_writer(run).add_scalar(tag, value, step)
        if main:
            super().log_metrics(main, step)

    def _track_best(self, key: str, value: Any, step: int | None) -> None:
        mode = self._best_modes.get(key)
        if mode is None or not isinstance(value, int | float) or not math.isfinite(value):
            return
        best = self._best.get(key)
        if best is None or (value > best if mode == "max" else value < best):
            self._best[key] = best = float(value)
        self.experiment.add_scalar(f"{BEST_PREFIX}/{key}", best, step)

    @override
    @rank_zero_only
    def log_graph(self, model: pl.LightningModule, input_array: Tensor | None = None) -> None:
        # Lightning calls this at the start of every fit/validate/test, with the module set up
        self.add_runs(getattr(model, "dashboard_runs", None) or list(getattr(model, "stream_patterns", None) or {}))
        trainer = model._trainer
        if trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            self._write_hparams(model, trainer)
        else:  # an evaluation's values are no training result: they do not move the best-so-far values
            self._best_modes = {}
        super().log_graph(model, input_array)

    def _write_hparams(self, model: pl.LightningModule, trainer: pl.Trainer) -> None:
        from torch.utils.tensorboard.summary import hparams

        self._best_modes = _best_metrics(model, trainer)
        params = readable_hparams(model)
        experiment, start, end = hparams(params, {f"{BEST_PREFIX}/{key}": math.nan for key in self._best_modes})
        writer = self.experiment._get_file_writer()
        for summary in (experiment, start, end):
            writer.add_summary(summary)

    @override
    @rank_zero_only
    def save(self) -> None:
        super().save()
        for writer in self._writers.values():
            writer.flush()

    @override
    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
