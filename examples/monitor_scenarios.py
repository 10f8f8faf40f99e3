"""StreamMonitor scenarios: five training set-ups, each with a known problem, and what the monitor says.

Run them all and open TensorBoard on the logs::

    python examples/monitor_scenarios.py                      # all scenarios, small user-style model
    python examples/monitor_scenarios.py --scenario shortcut  # one of them
    python examples/monitor_scenarios.py --model classifier   # mslightning's MultiStreamClassifier (ResNet18s)
    tensorboard --logdir lightning_logs/monitor_scenarios

Every scenario trains on :class:`~mslightning.data.SyntheticStreamsDataModule` (streams ``rgb``
with 3 channels and ``depth`` with 1) and checks the monitor's final advice:

* ``healthy``: both streams carry the same signal and share one lr. Nothing may be flagged.
* ``shortcut``: the depth images of the *training* split carry a bright square whose position
  encodes the label; in validation the square is at a random position. The depth head learns
  the square: ``depth`` must be flagged as ``overfitting``.
* ``slow``: the depth group's lr is 100x smaller than rgb's. ``depth`` must be flagged as
  learning ``slow`` (or ``stalled``).
* ``dominant``: the depth branch's output features are 20x larger than rgb's (an un-normalised
  branch, e.g. depth in millimetres without a normalising layer), so its gradients are too.
  ``depth`` must be flagged as ``dominant``.
* ``too_fast``: the depth group's lr is 100x larger than rgb's. ``depth`` must be flagged as
  moving ``too_fast`` (lower its lr) - not rgb as slow, depth as dominant, or depth's weight
  growth as a weight-decay problem.

The script exits with status 1 if a scenario's verdict is wrong.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from mslightning.callbacks import StreamMonitor, StreamThresholds
from mslightning.data import SyntheticStreamsDataModule

STREAMS = {"rgb": 3, "depth": 1}


@dataclass(frozen=True)
class Scenario:
    """One training set-up and the advice it must produce.

    Attributes:
        name: Scenario name (also the TensorBoard run name).
        description: What is wrong, in one sentence.
        data: Extra :class:`SyntheticStreamsDataModule` arguments.
        lrs: Per-stream learning rate (default ``BASE_LR``).
        feature_scale: Per-stream factor on the branch's output features.
        expect: ``(kind, stream)`` that must be flagged, or None for "nothing flagged".
    """

    name: str
    description: str
    data: Mapping[str, Any] = field(default_factory=dict)
    lrs: Mapping[str, float] = field(default_factory=dict)
    feature_scale: Mapping[str, float] = field(default_factory=dict)
    expect: tuple[str, str] | None = None


BASE_LR = 3e-3
EQUAL_SIGNAL = {"rgb": 1.0, "depth": 1.0}
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("healthy", "equal signal, equal lr: nothing to fix", data={"signal": EQUAL_SIGNAL}),
        Scenario(
            "shortcut",
            "a train-only shortcut in depth: depth memorises",
            data={"signal": EQUAL_SIGNAL, "shortcut_stream": "depth", "shortcut_strength": 5.0},
            expect=("overfitting", "depth"),
        ),
        Scenario(
            "slow",
            "depth's lr is 100x too small: depth barely moves",
            data={"signal": EQUAL_SIGNAL},
            lrs={"depth": BASE_LR / 100},
            expect=("slow", "depth"),
        ),
        Scenario(
            "dominant",
            "depth's features are 20x larger: depth dominates the gradients",
            data={"signal": EQUAL_SIGNAL},
            feature_scale={"depth": 20.0},
            expect=("dominant", "depth"),
        ),
        Scenario(
            "too_fast",
            "depth's lr is 100x too large: its first steps blow its weights up",
            data={"signal": EQUAL_SIGNAL},
            lrs={"depth": BASE_LR * 100},
            expect=("too_fast", "depth"),
        ),
    ]
}


class TwoBranchConvNet(pl.LightningModule):
    """A small user-style multi-branch CNN: ``<stream>_net`` -> ``<stream>_head`` and a ``fusion``.

    It follows StreamMonitor's per-stream prediction protocol: its steps return ``loss``,
    ``target`` and ``stream_logits``.

    Args:
        channels: Stream name -> input channels.
        num_classes: Number of classes K.
        lrs: Per-stream lr of that branch's param group (default ``lr``).
        lr: Learning rate of everything else.
        feature_scale: Per-stream factor on the branch's pooled features.
    """

    def __init__(
        self,
        channels: Mapping[str, int] = STREAMS,
        num_classes: int = 4,
        lrs: Mapping[str, float] | None = None,
        lr: float = BASE_LR,
        feature_scale: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.names = list(channels)
        self.nets = nn.ModuleDict(
            {
                name: nn.Sequential(
                    nn.Conv2d(c, 16, 3, padding=1),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                    nn.Conv2d(16, 32, 3, padding=1),
                    nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(),
                )
                for name, c in channels.items()
            }
        )
        self.heads = nn.ModuleDict({name: nn.Linear(32, num_classes) for name in channels})
        self.fusion = nn.Linear(32 * len(channels), num_classes)
        self.lrs = dict(lrs or {})
        self.lr = lr
        self.feature_scale = dict(feature_scale or {})
        # StreamMonitor reads this when no `streams` argument is given.
        self.stream_patterns = {name: [f"nets.{name}.*", f"heads.{name}.*"] for name in channels}

    def forward(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Fused logits (B, K) and stream -> per-stream logits (B, K)."""
        feats = {m: self.nets[m](inputs[m]) * self.feature_scale.get(m, 1.0) for m in self.names}
        fused = self.fusion(torch.cat([feats[m] for m in self.names], dim=1))
        return fused, {m: self.heads[m](feats[m]) for m in self.names}

    def _step(self, batch: tuple[dict[str, Tensor], Tensor]) -> dict[str, Any]:
        inputs, target = batch
        fused, stream_logits = self(inputs)
        loss = F.cross_entropy(fused, target) + sum(F.cross_entropy(z, target) for z in stream_logits.values())
        return {"loss": loss, "target": target, "stream_logits": stream_logits, "logits": fused}

    def training_step(self, batch: tuple[dict[str, Tensor], Tensor], batch_idx: int) -> dict[str, Any]:  # noqa: D102
        return self._step(batch)

    def validation_step(self, batch: tuple[dict[str, Tensor], Tensor], batch_idx: int) -> dict[str, Any]:  # noqa: D102
        return self._step(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:  # noqa: D102
        groups = [
            {
                "name": m,
                "params": [*self.nets[m].parameters(), *self.heads[m].parameters()],
                "lr": self.lrs.get(m, self.lr),
            }
            for m in self.names
        ]
        groups.append({"name": "fusion", "params": list(self.fusion.parameters())})
        return torch.optim.AdamW(groups, lr=self.lr, weight_decay=1e-4)


def build_model(scenario: Scenario, model: str, num_classes: int) -> pl.LightningModule:
    """The scenario's model: the small user-style CNN, or mslightning's classifier.

    Args:
        scenario: The scenario.
        model: ``"tiny"`` or ``"classifier"``.
        num_classes: Number of classes.

    Returns:
        The LightningModule.
    """
    if model == "tiny":
        return TwoBranchConvNet(STREAMS, num_classes, scenario.lrs, BASE_LR, scenario.feature_scale)
    from functools import partial

    from mslightning.modules import MultiStreamClassifier
    from mslightning.optim import ParamGroup

    class ScaledFeatures(MultiStreamClassifier):
        def encode(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
            features = super().encode(inputs)
            return {m: f * scenario.feature_scale.get(m, 1.0) for m, f in features.items()}

    groups = [ParamGroup(m, lr=scenario.lrs.get(m, BASE_LR)) for m in STREAMS] + [ParamGroup("head")]
    return ScaledFeatures(
        streams=STREAMS,
        num_classes=num_classes,
        optimizer=partial(torch.optim.AdamW, lr=BASE_LR, weight_decay=1e-4),
        param_groups=groups,
    )


def run_scenario(
    scenario: Scenario,
    epochs: int = 10,
    model: str = "tiny",
    log_dir: str | None = "lightning_logs/monitor_scenarios",
    seed: int = 0,
    data_size: int = 512,
) -> StreamMonitor:
    """Train one scenario with a StreamMonitor attached and return the monitor.

    Args:
        scenario: What to run.
        epochs: Training epochs.
        model: ``"tiny"`` (small user-style CNN, seconds) or ``"classifier"`` (ResNet18 streams).
        log_dir: TensorBoard root (one run per scenario), or None for no logger.
        seed: Seed for the model initialisation.
        data_size: Training-set size (the validation set is half of it).

    Returns:
        The monitor, holding ``recommendations`` and ``history``.
    """
    pl.seed_everything(seed, verbose=False)
    num_classes = 4
    data = SyntheticStreamsDataModule(
        streams=STREAMS,
        num_classes=num_classes,
        image_size=16,
        train_size=data_size,
        val_size=data_size // 2,
        batch_size=32,
        max_shift=1,
        seed=seed,
        **dict(scenario.data),
    )
    monitor = StreamMonitor(log_every_n_steps=1, thresholds=StreamThresholds(), verbose=False)
    logger = TensorBoardLogger(log_dir, name=scenario.name) if log_dir else False
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(build_model(scenario, model, num_classes), datamodule=data)
    return monitor


def verdict(scenario: Scenario, monitor: StreamMonitor) -> list[str]:
    """What is wrong with the monitor's advice over the run for this scenario (empty: correct).

    ``healthy`` must never raise a warning; every other scenario must raise its expected
    ``(kind, stream)`` warning at some epoch and never raise that kind on another stream.

    Args:
        scenario: The scenario that ran.
        monitor: Its monitor after training.

    Returns:
        Problems, in words.
    """
    raised = {
        (r.kind, r.stream, epoch)
        for epoch, recs in monitor.recommendation_history
        for r in recs
        if r.severity == "warning"
    }
    if scenario.expect is None:
        return [f"flagged {kind} on {stream} at epoch {epoch}" for kind, stream, epoch in sorted(raised)]
    kind, stream = scenario.expect
    kinds = {kind, "stalled"} if kind == "slow" else {kind}
    problems = []
    if not any(k in kinds and s == stream for k, s, _ in raised):
        problems.append(f"expected {kind} on {stream}, got {sorted({(k, s) for k, s, _ in raised}) or 'nothing'}")
    wrong = sorted({(k, s) for k, s, _ in raised if k in kinds and s != stream})
    problems += [f"flagged {k} on the wrong stream {s}" for k, s in wrong]
    return problems


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios from the command line.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).

    Returns:
        0 if every verdict is right, else 1.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=["all", *SCENARIOS], default="all")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--model", choices=["tiny", "classifier"], default="tiny")
    parser.add_argument("--log-dir", default="lightning_logs/monitor_scenarios")
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    failed = False
    for name in names:
        scenario = SCENARIOS[name]
        monitor = run_scenario(scenario, epochs=args.epochs, model=args.model, log_dir=args.log_dir)
        problems = verdict(scenario, monitor)
        failed |= bool(problems)
        print(f"\n=== {name}: {scenario.description} -> {'OK' if not problems else 'WRONG: ' + '; '.join(problems)}")
        for advice in monitor.get_recommendations():
            print(f"  - {advice}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
