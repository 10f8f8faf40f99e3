"""Helpers for the everyday-path tests: small CLI arguments and data that goes bad on purpose."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import Dataset

from mslightning.data import SyntheticStreamsDataModule

ROOT = Path(__file__).resolve().parents[2]
MAIN_CONFIG = ROOT / "configs/dual_stream/synthetic.yaml"
# the main job's model, trainer and callbacks; tiny data, one quick epoch
TINY = [
    "--data.init_args.image_size", "16",
    "--data.init_args.train_size", "32",
    "--data.init_args.val_size", "16",
    "--data.init_args.test_size", "16",
    "--data.init_args.batch_size", "8",
    "--trainer.max_epochs", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _TurnsNaN(Dataset):
    """Serves the wrapped samples, with one stream NaN from the `after`-th sample read on."""

    def __init__(self, dataset: Dataset, stream: str, after: int) -> None:
        self.dataset, self.stream, self.after, self.reads = dataset, stream, after, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        inputs, target = self.dataset[index]
        self.reads += 1
        if self.reads > self.after:
            inputs = {**inputs, self.stream: torch.full_like(inputs[self.stream], float("nan"))}
        return inputs, target


class TurnsNaNDataModule(SyntheticStreamsDataModule):
    """The synthetic data, whose `nan_stream` training inputs turn NaN after `nan_after` samples."""

    def __init__(self, nan_stream: str = "rgb", nan_after: int = 32, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_stream, self.nan_after = nan_stream, nan_after

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if not isinstance(self.train_set, _TurnsNaN):
            self.train_set = _TurnsNaN(self.train_set, self.nan_stream, self.nan_after)


class BuggyModel(pl.LightningModule):
    """A user's model with a bug in its constructor: the CLI must keep the traceback."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.size = None.width  # type: ignore[attr-defined]
