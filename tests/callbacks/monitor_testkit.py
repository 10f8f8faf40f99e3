"""Shared fixtures for the StreamMonitor tests: a user-style two-branch model, tiny data, oracles.

The model deliberately uses its own parameter names (``visible_net.*``, ``thermal_net.*``,
``visible_head.*``, ``fusion_head.*``) and stream names, like a model we did not write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

CHANNELS = {"visible": 3, "thermal": 1}
USER_STREAMS = {
    "visible": ["visible_net.*", "visible_head.*"],
    "thermal": ["thermal_net.*", "thermal_head.*"],
}
NUM_CLASSES = 3


def _branch(channels: int, width: int = 4) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


class PairDataset(Dataset):
    """Random multi-stream images whose label is weakly encoded in every stream."""

    def __init__(self, n: int = 32, px: int = 8, seed: int = 0, channels: Mapping[str, int] = CHANNELS) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.target = torch.arange(n) % NUM_CLASSES
        self.inputs = {}
        for i, (name, c) in enumerate(channels.items()):
            x = torch.randn(n, c, px, px, generator=gen)
            x[:, :, : px // 2] += (self.target.float() - 1)[:, None, None, None] * (0.5 + i)
            self.inputs[name] = x

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor]:
        return {name: x[i] for name, x in self.inputs.items()}, self.target[i]


def loader(n: int = 32, batch_size: int = 8, seed: int = 0, channels: Mapping[str, int] = CHANNELS) -> DataLoader:
    return DataLoader(PairDataset(n, seed=seed, channels=channels), batch_size=batch_size, shuffle=False)


class TwoBranchNet(pl.LightningModule):
    """A user-written N-branch classifier with its own names (two branches by default).

    Args:
        protocol: Return the per-stream prediction protocol dict from the steps.
        groups: ``"per_stream"`` (one named group per branch + head), ``"single"`` (one group
            for everything) or ``"split"`` (two groups per branch: weights and biases).
        lrs: Per-stream lr (default ``lr``).
        grad_scale: Per-stream factor on the branch's features (scales its gradients).
        freeze: Streams whose parameters get ``requires_grad=False``.
        optimizer: ``"sgd"`` or ``"adamw"``.
    """

    def __init__(
        self,
        protocol: bool = True,
        groups: str = "per_stream",
        lr: float = 0.05,
        lrs: Mapping[str, float] | None = None,
        grad_scale: Mapping[str, float] | None = None,
        freeze: Sequence[str] = (),
        optimizer: str = "sgd",
        channels: Mapping[str, int] = CHANNELS,
        declare_streams: bool = False,
    ) -> None:
        super().__init__()
        self.names = list(channels)
        for name, c in channels.items():
            setattr(self, f"{name}_net", _branch(c))
            setattr(self, f"{name}_head", nn.Linear(4, NUM_CLASSES))
        self.fusion_head = nn.Linear(4 * len(channels), NUM_CLASSES)
        self.protocol = protocol
        self.groups = groups
        self.lr = lr
        self.lrs = dict(lrs or {})
        self.grad_scale = dict(grad_scale or {})
        self.optimizer_name = optimizer
        for name in freeze:
            for p in self.branch_params(name):
                p.requires_grad_(False)
        if declare_streams:
            self.stream_patterns = {name: [f"{name}_net.*", f"{name}_head.*"] for name in channels}

    def branch_params(self, name: str) -> list[nn.Parameter]:
        return [*getattr(self, f"{name}_net").parameters(), *getattr(self, f"{name}_head").parameters()]

    def forward(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        feats = {n: getattr(self, f"{n}_net")(inputs[n]) * self.grad_scale.get(n, 1.0) for n in self.names}
        fused = self.fusion_head(torch.cat([feats[n] for n in self.names], dim=1))
        return fused, {n: getattr(self, f"{n}_head")(feats[n]) for n in self.names}

    def _step(self, batch: Any) -> Any:
        inputs, target = batch
        fused, stream_logits = self(inputs)
        loss = F.cross_entropy(fused, target) + sum(F.cross_entropy(lg, target) for lg in stream_logits.values())
        if not self.protocol:
            return loss
        return {"loss": loss, "target": target, "stream_logits": stream_logits, "logits": fused}

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = self._step(batch)
        loss = out["loss"] if isinstance(out, dict) else out
        self.log("train_loss", loss.detach(), on_step=True, on_epoch=True)  # the x-axis the monitor must share
        return out

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        return self._step(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.parameters() if p.requires_grad]
        head = list(self.fusion_head.parameters())
        if self.groups == "single":
            groups = [{"params": trainable}]
        elif self.groups == "per_stream":
            groups = [
                {
                    "params": [p for p in self.branch_params(n) if p.requires_grad],
                    "name": n,
                    "lr": self.lrs.get(n, self.lr),
                }
                for n in self.names
            ]
            groups = [g for g in groups if g["params"]] + [{"params": head, "name": "head"}]
        elif self.groups == "split":
            groups = []
            for n in self.names:
                params = [p for p in self.branch_params(n) if p.requires_grad]
                groups.append({"params": [p for p in params if p.ndim > 1], "name": n, "lr": self.lrs.get(n, self.lr)})
                groups.append(
                    {"params": [p for p in params if p.ndim <= 1], "name": f"{n}/no_decay", "weight_decay": 0.0}
                )
            groups.append({"params": head, "name": "head"})
        else:
            raise ValueError(self.groups)
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(groups, lr=self.lr, weight_decay=0.01)
        return torch.optim.SGD(groups, lr=self.lr, weight_decay=1e-4)


class GradOracle(Callback):
    """Independent per-stream norms, read where Lightning hands the final gradients over.

    Streams are given by module prefixes (not by the pattern language), and norms are
    computed by concatenating everything in float64 with ``torch.linalg.vector_norm``.
    """

    def __init__(self, prefixes: Mapping[str, Sequence[str]]) -> None:
        self.prefixes = {s: tuple(p) for s, p in prefixes.items()}
        self.grad_norm: dict[int, dict[str, float]] = {}
        self.grad_max: dict[int, dict[str, float]] = {}
        self.weight_norm: dict[int, dict[str, float]] = {}
        self.weights_before: dict[int, dict[str, Tensor]] = {}
        self.weights_after: dict[int, dict[str, Tensor]] = {}
        self.calls = 0
        self._step: int | None = None

    def _flat(self, pl_module: pl.LightningModule, stream: str, grad: bool) -> Tensor:
        parts = []
        for name, p in pl_module.named_parameters():
            if name.startswith(self.prefixes[stream]):
                t = p.grad if grad else p.detach()
                if t is not None:
                    parts.append(t.detach().double().flatten())
        return torch.cat(parts) if parts else torch.zeros(1, dtype=torch.float64)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.calls += 1
        step = trainer.global_step
        self._step = step
        self.grad_norm[step] = {}
        self.grad_max[step] = {}
        self.weight_norm[step] = {}
        self.weights_before[step] = {}
        for s in self.prefixes:
            g = self._flat(pl_module, s, grad=True)
            w = self._flat(pl_module, s, grad=False)
            self.grad_norm[step][s] = torch.linalg.vector_norm(g).item()
            self.grad_max[step][s] = g.abs().max().item()
            self.weight_norm[step][s] = torch.linalg.vector_norm(w).item()
            self.weights_before[step][s] = w.clone()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._step is not None:
            self.weights_after[self._step] = {s: self._flat(pl_module, s, grad=False) for s in self.prefixes}
            self._step = None


def branch_prefixes(names: Sequence[str] = tuple(CHANNELS)) -> dict[str, list[str]]:
    return {n: [f"{n}_net.", f"{n}_head."] for n in names}


def event_accumulator(log_dir: str | Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0, "histograms": 0})
    acc.Reload()
    return acc


def read_scalars(log_dir: str | Path) -> dict[str, dict[int, float]]:
    """Tag -> step -> value (the last value written at that step)."""
    acc = event_accumulator(log_dir)
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def read_layout(log_dir: str | Path) -> layout_pb2.Layout:
    acc = event_accumulator(log_dir)
    events = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout()
    layout.ParseFromString(events[0].tensor_proto.string_val[0])
    return layout


def layout_charts(layout: layout_pb2.Layout) -> dict[str, list[str]]:
    """Chart title -> tag regexes, over all categories."""
    return {
        f"{category.title}/{chart.title}": list(chart.multiline.tag)
        for category in layout.category
        for chart in category.chart
    }


def read_texts(log_dir: str | Path, tag: str) -> list[str]:
    acc = event_accumulator(log_dir)
    events = acc.Tensors(f"{tag}/text_summary")
    return [e.tensor_proto.string_val[0].decode() for e in events]


def trainer_kwargs(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    from lightning.pytorch.loggers import TensorBoardLogger

    kwargs: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "limit_train_batches": 4,
        "limit_val_batches": 2,
        "log_every_n_steps": 1,
        "logger": TensorBoardLogger(tmp_path, name="tb", version=0),
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    kwargs.update(overrides)
    return kwargs
