"""Tiny vector-input multi-stream model and data, for examples, tests and benchmarks.

They train in milliseconds, so examples of the optimisation and monitoring machinery can run
anywhere; the image modules live in :mod:`mslightning.modules`.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mslightning.data.synthetic import StreamsTensorDataset
from mslightning.modules.base import GroupedOptimizationModule, ParamGroups
from mslightning.optim import ParamGroup

__all__ = ["TinyStreamsDataModule", "TinyStreamsModel"]

Batch = tuple[dict[str, Tensor], Tensor]


class TinyStreamsDataModule(pl.LightningDataModule):
    """Random feature vectors per stream, labelled by a fixed random linear teacher.

    Batches are ``(inputs, target)`` with ``inputs[name]`` of shape (B, features) and
    ``target`` of shape (B,) int64, the batch format of every mslightning module.

    Args:
        streams: Stream name -> feature width.
        num_classes: Number of classes.
        train_size: Training samples.
        val_size: Validation samples.
        batch_size: Batch size.
        seed: Generates the same data every time.
    """

    def __init__(
        self,
        streams: dict[str, int] | None = None,
        num_classes: int = 3,
        train_size: int = 64,
        val_size: int = 32,
        batch_size: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.streams = dict(streams or {"rgb": 8, "depth": 8})
        if num_classes < 2 or min(train_size, val_size, batch_size) < 1:
            raise ValueError(
                f"Need num_classes >= 2 and positive sizes, got num_classes={num_classes}, "
                f"train_size={train_size}, val_size={val_size}, batch_size={batch_size}."
            )
        self.num_classes, self.batch_size = num_classes, batch_size
        generator = torch.Generator().manual_seed(seed)
        total = train_size + val_size
        inputs = {name: torch.randn(total, width, generator=generator) for name, width in self.streams.items()}
        teacher = {name: torch.randn(width, num_classes, generator=generator) for name, width in self.streams.items()}
        target = sum(inputs[name] @ teacher[name] for name in self.streams).argmax(dim=1)
        self.train_set = StreamsTensorDataset({n: x[:train_size] for n, x in inputs.items()}, target[:train_size])
        self.val_set = StreamsTensorDataset({n: x[train_size:] for n, x in inputs.items()}, target[train_size:])

    def train_dataloader(self) -> DataLoader[Batch]:
        """Training batches in a fixed order (so resumed runs see the same data)."""
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader[Batch]:
        """Validation batches."""
        return DataLoader(self.val_set, batch_size=self.batch_size)


class TinyStreamsModel(GroupedOptimizationModule):
    """One small MLP encoder per stream, a per-stream auxiliary head and a fused head.

    Parameter names: ``encoders.<stream>.*``, ``aux_heads.<stream>.*``, ``head.*``.

    Args:
        streams: Stream name -> input feature width.
        num_classes: Number of classes.
        hidden: Width of each stream's features.
        optimizer: See :class:`~mslightning.modules.GroupedOptimizationModule`.
        param_groups: See :class:`~mslightning.modules.GroupedOptimizationModule`; default:
            one group per stream (encoder and auxiliary head) and ``head``.
        no_weight_decay_on_norm_and_bias: See
            :class:`~mslightning.modules.GroupedOptimizationModule`.
    """

    def __init__(
        self,
        streams: dict[str, int] | None = None,
        num_classes: int = 3,
        hidden: int = 16,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        param_groups: ParamGroups | None = None,
        no_weight_decay_on_norm_and_bias: bool = False,
    ) -> None:
        super().__init__(optimizer, param_groups, no_weight_decay_on_norm_and_bias)
        self.streams = dict(streams or {"rgb": 8, "depth": 8})
        self.encoders = nn.ModuleDict(
            {name: nn.Sequential(nn.Linear(width, hidden), nn.ReLU()) for name, width in self.streams.items()}
        )
        self.aux_heads = nn.ModuleDict({name: nn.Linear(hidden, num_classes) for name in self.streams})
        self.head = nn.Linear(hidden * len(self.streams), num_classes)
        self.stream_patterns = {name: [f"encoders.{name}.*", f"aux_heads.{name}.*"] for name in self.streams}

    def default_param_groups(self) -> list[ParamGroup]:
        """One group per stream and a ``head`` group for the rest.

        Returns:
            The default groups.
        """
        return [ParamGroup(name, patterns) for name, patterns in self.stream_patterns.items()] + [ParamGroup("head")]

    def forward(self, inputs: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Fused and per-stream logits.

        Args:
            inputs: Stream name -> (B, features).

        Returns:
            Fused logits (B, K) and stream name -> logits (B, K).
        """
        features = {name: self.encoders[name](inputs[name]) for name in self.streams}
        fused = self.head(torch.cat([features[name] for name in self.streams], dim=1))
        return fused, {name: self.aux_heads[name](features[name]) for name in self.streams}

    def _step(self, batch: Batch, stage: str) -> dict[str, Any]:
        inputs, target = batch
        fused, stream_logits = self(inputs)
        stream_losses = {name: F.cross_entropy(logits, target) for name, logits in stream_logits.items()}
        loss = F.cross_entropy(fused, target) + sum(stream_losses.values())
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val")
        for name, stream_loss in stream_losses.items():
            self.log(f"{stage}/{name}/loss", stream_loss)
        detached = {name: logits.detach() for name, logits in stream_logits.items()}
        return {"loss": loss, "logits": fused.detach(), "stream_logits": detached, "target": target}

    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        """Loss and per-stream logits of one batch (the StreamMonitor protocol)."""
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        """Validation loss and per-stream logits of one batch."""
        return self._step(batch, "val")
