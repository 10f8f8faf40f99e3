"""Write ``predict`` outputs to a CSV file in the run directory."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from typing_extensions import override

__all__ = ["ClassProbabilityWriter", "PredictionTableWriter"]


class _CSVPredictionWriter(BasePredictionWriter):
    """Shared file handling: one CSV per ``predict`` in the run directory, never replacing a file."""

    def __init__(self, filename: str = "predictions.csv", output_dir: str | Path | None = None) -> None:
        super().__init__(write_interval="batch")
        if not filename.endswith(".csv") or Path(filename).name != filename:
            raise ValueError(f"{type(self).__name__}: filename must be a plain '*.csv' file name, got {filename!r}.")
        self.filename = filename
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.path: Path | None = None
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._rows = 0

    def _target_path(self, trainer: pl.Trainer) -> Path:
        directory = self.output_dir or Path(trainer.log_dir or trainer.default_root_dir)
        stem = Path(self.filename).stem
        if trainer.world_size > 1:
            stem = f"{stem}-rank{trainer.global_rank}"
        path = directory / f"{stem}.csv"
        version = 0
        while path.exists():
            version += 1
            path = directory / f"{stem}-v{version}.csv"
        return path

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.path = self._target_path(trainer)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("x", newline="")
        self._writer = None
        self._rows = 0

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
        rank_zero_info(f"\nPredictions ({self._rows} rows): {self.path}\n")

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ClassProbabilityWriter(_CSVPredictionWriter):
    """Writes class probabilities from ``predict`` to CSV, one row per sample, batch by batch.

    ``predict_step`` returns class probabilities ``(B, K)``. The file has the columns
    ``dataloader`` (only with several predict dataloaders), ``index`` (the sample's index in its
    predict dataset), ``target`` (when the first batch is an ``(inputs, target)`` pair; empty for
    batches without one), ``predicted`` (the arg-max class) and one ``prob_<class>`` column per
    class (``<class>`` is the datamodule's ``class_names`` entry when it has them, else the class
    index).

    The file goes to ``output_dir`` if given, else to the run directory (the logger's
    ``log_dir``, e.g. ``logs/<name>/version_3/``, a new one for every ``predict``), else to the
    Trainer's ``default_root_dir``. An existing file is never replaced: a numbered name
    (``predictions-v1.csv``) is used instead. Under DDP every rank writes its own file
    (``predictions-rank1.csv``, ...). The path is printed when ``predict`` ends and kept in
    :attr:`path`. Rows are written as batches arrive; to keep ``trainer.predict`` from also
    holding every prediction in memory, pass ``return_predictions=False`` (the ``mslightning``
    CLI does).

    Args:
        filename: File name; must end in ``.csv``.
        output_dir: Directory to write into, instead of the run directory.

    Raises:
        ValueError: If ``filename`` does not end in ``.csv`` or contains a directory part.
    """

    def __init__(self, filename: str = "predictions.csv", output_dir: str | Path | None = None) -> None:
        super().__init__(filename, output_dir)
        self._next_index: dict[int, int] = {}
        self._several_loaders = False
        self._with_target = False

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self._next_index = {}

    def _header(self, trainer: pl.Trainer, num_classes: int) -> list[str]:
        names: Sequence[Any] | None = getattr(trainer.datamodule, "class_names", None)
        if names is None or len(names) != num_classes:
            names = range(num_classes)
        loader = ["dataloader"] if self._several_loaders else []
        target = ["target"] if self._with_target else []
        return [*loader, "index", *target, "predicted", *(f"prob_{name}" for name in names)]

    @override
    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(prediction, Tensor) or prediction.ndim != 2:
            shape = tuple(prediction.shape) if isinstance(prediction, Tensor) else type(prediction).__name__
            raise ValueError(
                f"ClassProbabilityWriter expects predict_step to return class probabilities (B, K), got {shape}."
            )
        pair = isinstance(batch, list | tuple) and len(batch) == 2 and isinstance(batch[0], Mapping)
        target = batch[1] if pair and isinstance(batch[1], Tensor) else None
        if self._writer is None:
            self._several_loaders = len(trainer.num_predict_batches) > 1
            self._with_target = target is not None
            self._writer = csv.writer(self._file)
            self._writer.writerow(self._header(trainer, prediction.shape[1]))
        count = prediction.shape[0]
        start = self._next_index.get(dataloader_idx, 0)
        indices = list(batch_indices) if batch_indices else range(start, start + count)
        self._next_index[dataloader_idx] = start + count
        probabilities = prediction.detach().float().cpu()
        predicted = probabilities.argmax(dim=1).tolist()
        targets = target.detach().cpu().tolist() if target is not None else [""] * count
        for row, (index, probs) in enumerate(zip(indices, probabilities.tolist(), strict=True)):
            fields = [*([dataloader_idx] if self._several_loaders else []), index]
            fields += [*([targets[row]] if self._with_target else []), predicted[row]]
            self._writer.writerow([*fields, *(f"{p:.6g}" for p in probs)])
        self._rows += count


class PredictionTableWriter(_CSVPredictionWriter):
    """Writes the columns that ``predict_step`` returns to CSV, one row per sample, batch by batch.

    ``predict_step`` returns a mapping column name -> ``(N,)`` tensor (all of one length ``N``) or
    a string (the same value in every row of the batch, e.g. a session name),
    e.g. :class:`~mslightning.modules.SiameseRanker`'s ``series``, ``index``, ``score``,
    ``predicted_rank``, ``true_rank``. The header is the first batch's column names (plus
    ``dataloader`` first with several predict dataloaders); integer tensors are written as
    integers, floating-point ones with 6 significant digits.

    The file goes to ``output_dir`` if given, else to the run directory (the logger's
    ``log_dir``), else to the Trainer's ``default_root_dir``; an existing file is never
    replaced (``predictions-v1.csv``); under DDP every rank writes its own file. The path is
    printed when ``predict`` ends and kept in :attr:`path`.

    Args:
        filename: File name; must end in ``.csv``.
        output_dir: Directory to write into, instead of the run directory.

    Raises:
        ValueError: If ``filename`` does not end in ``.csv`` or contains a directory part;
            during ``predict``, if a batch's prediction is not such a mapping or its columns
            differ from the first batch's.
    """

    def __init__(self, filename: str = "predictions.csv", output_dir: str | Path | None = None) -> None:
        super().__init__(filename, output_dir)
        self._columns: list[str] = []
        self._several_loaders = False

    @override
    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        owner = type(self).__name__
        if not isinstance(prediction, Mapping) or not prediction:
            raise ValueError(
                f"{owner} expects predict_step to return a mapping column name -> (N,) tensor, got "
                f"{type(prediction).__name__}. For class probabilities (B, K) use ClassProbabilityWriter."
            )
        tensors = {name: v for name, v in prediction.items() if not isinstance(v, str)}
        lengths = {name: tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__ for name, v in tensors.items()}
        sizes = {shape[0] for shape in lengths.values() if isinstance(shape, tuple) and len(shape) == 1}
        if len(sizes) != 1 or any(not isinstance(shape, tuple) or len(shape) != 1 for shape in lengths.values()):
            raise ValueError(
                f"{owner}: every column must be a (N,) tensor of one length N (or one string for all rows), got "
                f"{lengths}."
            )
        if self._writer is None:
            self._several_loaders = len(trainer.num_predict_batches) > 1
            self._columns = [str(name) for name in prediction]
            self._writer = csv.writer(self._file)
            self._writer.writerow([*(["dataloader"] if self._several_loaders else []), *self._columns])
        if [str(name) for name in prediction] != self._columns:
            raise ValueError(
                f"{owner}: batch {batch_idx} has the columns {list(prediction)} but the file has {self._columns}."
            )
        (count,) = sizes
        values = [
            [v] * count
            if isinstance(v, str)
            else v.detach().cpu().tolist()
            if not v.is_floating_point()
            else [f"{x:.6g}" for x in v.detach().float().cpu().tolist()]
            for v in prediction.values()
        ]
        loader = [dataloader_idx] if self._several_loaders else []
        for row in zip(*values, strict=True):
            self._writer.writerow([*loader, *row])
        self._rows += count
