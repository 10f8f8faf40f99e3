"""StreamMonitor scenarios: training set-ups with a known problem, and the advice they must get.

Run them all (under AdamW and SGD) and open TensorBoard on the logs::

    python examples/monitor_scenarios.py                          # every scenario, both optimizers
    python examples/monitor_scenarios.py --scenario shortcut      # one of them
    python examples/monitor_scenarios.py --optimizer sgd          # one optimizer
    python examples/monitor_scenarios.py --model classifier       # MultiStreamClassifier (ResNet18s)
    tensorboard --logdir lightning_logs/monitor_scenarios

Every scenario trains on :class:`~mslightning.data.SyntheticStreamsDataModule` (16 px images;
streams ``rgb`` with 3 channels and ``depth`` with 1, plus ``ir`` with 1 in the three-stream
scenarios) and checks the monitor's advice at *every* epoch: the expected warning (kind, stream
and the knob its message names) and no other warning, or, for the scenarios without a problem,
no warning at all and the expected information (``healthy`` only where everything was measured).
Each optimizer has its own healthy base lr (:data:`OPTIMIZERS`); the scenarios scale it.

Scenarios (``name``: what is wrong -> the advice it must get):

* ``healthy``: equal signal, equal lr -> ``healthy``, no warning.
* ``healthy_3streams``: the same with three streams -> ``healthy``.
* ``shortcut``: the depth images of the *training* split carry a bright square whose position
  encodes the label (at a random position in validation) -> ``overfitting`` on depth (raise the
  depth group's weight_decay).
* ``slow``: depth's lr 100x too small -> ``slow`` on depth (raise its lr).
* ``slow_proxy``: the same with ``track_updates=False``: the rules see the proxy
  ``lr*||g||/||w||`` -> still ``slow`` on depth, and the message names the proxy as a proxy.
* ``dominant``: depth's branch outputs features 20x larger than rgb's -> ``dominant`` on depth.
* ``too_fast``: depth's lr 100x too large -> ``too_fast`` on depth (lower its lr).
* ``noise_too_fast``: three streams; ``ir`` carries no signal (pure noise) and has a 100x lr ->
  ``too_fast`` on ir.
* ``input_scale``: depth's input is 100x larger (e.g. millimetres instead of metres). Under SGD
  its first steps blow depth up -> ``too_fast`` on depth; Adam normalises the step, and depth's
  large features dominate the gradients instead -> ``dominant`` on depth.
* ``converged``: rgb carries a 3x stronger signal and solves its part (train and val accuracy
  1 from the fourth epoch) while depth is still learning -> ``healthy``: a converged stream is
  not ``slow``, and the other one is not ``dominant`` next to it (grad norm 2.57 vs 0.014).
* ``converged_3streams``: the same with three streams (rgb converges) -> ``healthy``.
* ``not_learning``: every lr 1000x too small -> model-wide ``not_learning`` (raise the lrs),
  never ``healthy``.
* ``log_interval``: log every 100 steps, with 16 steps an epoch -> ``not_measured`` in the
  epochs without a logged step, never ``healthy`` there.
* ``val_every_2``: validation every second epoch -> ``not_measured`` (overfitting not
  measured) in the epochs without validation, ``healthy`` in the others.
* ``nan_input``: a few training samples have one NaN depth pixel; the model skips steps with
  non-finite gradients -> ``nonfinite`` on depth only, telling to check the depth inputs (rgb's
  gradients are NaN only through the shared loss).
* ``finetune``: a pretrained backbone at 1/10 of its fresh head's lr (parts in series) ->
  ``healthy``.
* ``finetune_one_lr``: one lr of 1e-4 for the pretrained backbone and the fresh head ->
  ``too_fast`` on the backbone (lower the backbone group's lr).

The script exits with status 1 if a scenario's advice is wrong. The known answers are calibrated
on the small CNN (``--model tiny``, seconds per run, tested in
``tests/callbacks/test_monitor_scenarios.py``); ``--model classifier`` runs the same set-ups on
ResNet-18 streams for exploration, where the optimizers' base lrs are not tuned (SGD at 0.05
already diverges there), so its verdicts can differ.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from mslightning.callbacks import StreamMonitor, StreamThresholds
from mslightning.data import SyntheticStreamsDataModule
from mslightning.modules import MultiStreamClassifier
from mslightning.optim import ParamGroup

STREAMS = {"rgb": 3, "depth": 1}
THREE_STREAMS = {"rgb": 3, "depth": 1, "ir": 1}
NUM_CLASSES = 4
IMAGE_SIZE = 16


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer and the lrs at which the scenarios' healthy set-ups train well with it.

    Attributes:
        name: ``"adamw"`` or ``"sgd"``.
        lr: Base lr of the multi-branch network.
        finetune_lr: Lr of the fresh head in the fine-tuning scenarios.
        momentum: SGD momentum (unused by AdamW).
        weight_decay: Weight decay of every group.
    """

    name: str
    lr: float
    finetune_lr: float
    momentum: float = 0.0
    weight_decay: float = 1e-4

    def build(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        """The optimizer over ``groups`` (each with its own ``name`` and ``lr``)."""
        if self.name == "adamw":
            return torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adamw": OptimizerSpec("adamw", lr=3e-3, finetune_lr=1e-3),
    "sgd": OptimizerSpec("sgd", lr=0.05, finetune_lr=1e-2, momentum=0.9),
}


@dataclass(frozen=True)
class Expect:
    """The advice a scenario must get.

    Attributes:
        kind: The one warning kind that must be raised (at some epoch, and no other warning at
            any epoch), or an information kind (``"healthy"``, ``"not_measured"``) that the
            last epoch must end with while no warning is ever raised.
        stream: The stream the warning names, or None (model-wide, or information).
        knob: Text the warning's message must contain, e.g. ``"lower the depth group's lr"``.
        mentions: Further text the message must contain (the measured quantity, the cause).
    """

    kind: str
    stream: str | None = None
    knob: str | None = None
    mentions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scenario:
    """One training set-up and the advice it must produce.

    Attributes:
        name: Scenario name (also the TensorBoard run name).
        description: What is wrong, in one sentence.
        expect: The expected advice, or optimizer name -> expected advice where it differs.
        streams: Stream name -> input channels.
        data: Extra :class:`SyntheticStreamsDataModule` arguments.
        lr_factor: Per-stream factor on the optimizer's base lr.
        all_lr_factor: Factor on every group's lr.
        feature_scale: Per-stream factor on the branch's output features.
        input_scale: Per-stream factor on the input images (every split).
        nan_inputs: Stream -> number of training samples that get one NaN pixel.
        finetune: Parts in series: a pretrained ``backbone`` and a fresh ``head``; the lrs are
            ``finetune_lrs`` times the optimizer's ``finetune_lr``, or ``one_lr`` for both.
        finetune_lrs: Part -> factor on the optimizer's ``finetune_lr``.
        one_lr: One absolute lr for both parts (overrides ``finetune_lrs``).
        track_updates: StreamMonitor's ``track_updates``.
        log_every_n_steps: StreamMonitor's logging interval.
        check_val_every_n_epoch: The Trainer's validation interval.
        epochs: Training epochs.
    """

    name: str
    description: str
    expect: Expect | Mapping[str, Expect]
    streams: Mapping[str, int] = field(default_factory=lambda: dict(STREAMS))
    data: Mapping[str, Any] = field(default_factory=dict)
    lr_factor: Mapping[str, float] = field(default_factory=dict)
    all_lr_factor: float = 1.0
    feature_scale: Mapping[str, float] = field(default_factory=dict)
    input_scale: Mapping[str, float] = field(default_factory=dict)
    nan_inputs: Mapping[str, int] = field(default_factory=dict)
    finetune: bool = False
    finetune_lrs: Mapping[str, float] = field(default_factory=dict)
    one_lr: float | None = None
    track_updates: bool = True
    log_every_n_steps: int = 1
    check_val_every_n_epoch: int = 1
    epochs: int = 8

    def expected(self, optimizer: str) -> Expect:
        """The expected advice under ``optimizer``."""
        return self.expect if isinstance(self.expect, Expect) else self.expect[optimizer]


def _lr(stream: str) -> str:
    return f"the {stream} group's lr"


EQUAL_SIGNAL = {"rgb": 1.0, "depth": 1.0}
EQUAL_3 = {"rgb": 1.0, "depth": 1.0, "ir": 1.0}
HEALTHY = Expect("healthy")
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("healthy", "equal signal, equal lr: nothing to fix", HEALTHY, data={"signal": EQUAL_SIGNAL}),
        Scenario(
            "healthy_3streams",
            "three streams, equal signal, equal lr: nothing to fix",
            HEALTHY,
            streams=THREE_STREAMS,
            data={"signal": EQUAL_3},
        ),
        Scenario(
            "shortcut",
            "a train-only shortcut in depth: depth memorises",
            Expect("overfitting", "depth", "raise the depth group's weight_decay"),
            data={"signal": EQUAL_SIGNAL, "shortcut_stream": "depth", "shortcut_strength": 5.0},
        ),
        Scenario(
            "slow",
            "depth's lr is 100x too small: depth barely moves",
            Expect("slow", "depth", "raise " + _lr("depth")),
            data={"signal": EQUAL_SIGNAL},
            lr_factor={"depth": 0.01},
        ),
        Scenario(
            "slow_proxy",
            "depth's lr is 100x too small, judged on the lr*||g||/||w|| proxy (track_updates=False)",
            Expect("slow", "depth", "raise " + _lr("depth"), ("update ratio lr*||g||/||w|| (a proxy",)),
            data={"signal": EQUAL_SIGNAL},
            lr_factor={"depth": 0.01},
            track_updates=False,
        ),
        Scenario(
            "dominant",
            "depth's features are 20x larger: depth dominates the gradients",
            {
                "adamw": Expect("dominant", "depth", "lower " + _lr("depth")),
                # SGD's step grows with the gradient: the 20x larger gradients blow depth up at once
                "sgd": Expect("too_fast", "depth", "lower " + _lr("depth")),
            },
            data={"signal": EQUAL_SIGNAL},
            feature_scale={"depth": 20.0},
        ),
        Scenario(
            "too_fast",
            "depth's lr is 100x too large: its first steps blow its weights up",
            Expect("too_fast", "depth", "lower " + _lr("depth")),
            data={"signal": EQUAL_SIGNAL},
            lr_factor={"depth": 100.0},
        ),
        Scenario(
            "noise_too_fast",
            "three streams; ir is pure noise and its lr is 100x too large",
            Expect("too_fast", "ir", "lower " + _lr("ir")),
            streams=THREE_STREAMS,
            data={"signal": {"rgb": 1.0, "depth": 1.0, "ir": 0.0}},
            lr_factor={"ir": 100.0},
        ),
        Scenario(
            "input_scale",
            "depth's input is 100x larger (un-normalised units)",
            {
                "sgd": Expect("too_fast", "depth", "lower " + _lr("depth")),
                "adamw": Expect("dominant", "depth", "lower " + _lr("depth")),
            },
            data={"signal": EQUAL_SIGNAL},
            input_scale={"depth": 100.0},
        ),
        Scenario(
            "converged",
            "rgb solves its part (accuracy ~1) while depth still learns: nothing to fix",
            HEALTHY,
            data={"signal": {"rgb": 3.0, "depth": 1.0}},
        ),
        Scenario(
            "converged_3streams",
            "three streams; rgb solves its part while depth and ir still learn: nothing to fix",
            HEALTHY,
            streams=THREE_STREAMS,
            data={"signal": {"rgb": 3.0, "depth": 1.0, "ir": 1.0}},
            epochs=12,  # long enough after rgb converges for its vanishing updates to look "slow" without the rule
        ),
        Scenario(
            "not_learning",
            "every lr is 1000x too small: no stream leaves chance accuracy",
            Expect("not_learning", None, "raise every group's lr", ("below the healthy range",)),
            data={"signal": EQUAL_SIGNAL},
            all_lr_factor=1e-3,
            epochs=4,
        ),
        Scenario(
            "log_interval",
            "logging every 100 steps with 16 steps an epoch: most epochs have no measurement",
            Expect("not_measured"),
            data={"signal": EQUAL_SIGNAL},
            log_every_n_steps=100,
            epochs=5,
        ),
        Scenario(
            "val_every_2",
            "validation every second epoch: overfitting is not measured in the others",
            HEALTHY,
            data={"signal": EQUAL_SIGNAL},
            check_val_every_n_epoch=2,
            epochs=6,
        ),
        Scenario(
            "nan_input",
            "a few training samples have a NaN depth pixel",
            Expect("nonfinite", "depth", "check the depth inputs", ("NaN/Inf gradients of rgb (",)),
            data={"signal": EQUAL_SIGNAL},
            nan_inputs={"depth": 3},
            epochs=4,
        ),
        Scenario(
            "finetune",
            "a pretrained backbone at 1/10 of the fresh head's lr: the textbook fine-tuning set-up",
            HEALTHY,
            finetune=True,
            finetune_lrs={"backbone": 0.1, "head": 1.0},
            epochs=5,
        ),
        Scenario(
            "finetune_one_lr",
            "one lr of 1e-4 for a pretrained backbone and a fresh head: the backbone forgets",
            Expect(
                "too_fast",
                "backbone",
                "lower the backbone group's lr",
                ("for a pretrained part", "update ratio ||dw||/||w|| per step: backbone"),
            ),
            finetune=True,
            one_lr=1e-4,
            epochs=5,
        ),
    ]
}


# ---------------------------------------------------------------------- data


class ScenarioData(SyntheticStreamsDataModule):
    """Synthetic streams with optional un-normalised units and NaN pixels.

    Args:
        input_scale: Stream -> factor on its images in every split.
        nan_inputs: Stream -> number of training samples that get one NaN pixel.
        **kwargs: :class:`SyntheticStreamsDataModule` arguments.
    """

    def __init__(
        self,
        input_scale: Mapping[str, float] | None = None,
        nan_inputs: Mapping[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.input_scale = dict(input_scale or {})
        self.nan_inputs = dict(nan_inputs or {})

    def setup(self, stage: str | None = None) -> None:  # noqa: D102
        super().setup(stage)
        for dataset in (self.train_set, self.val_set, self.test_set):
            # setup runs once per stage: scale and poison each dataset once
            if dataset is None or getattr(dataset, "_scenario_applied", False):
                continue
            dataset._scenario_applied = True
            for stream, factor in self.input_scale.items():
                dataset.inputs[stream] = dataset.inputs[stream] * factor
            if dataset is self.train_set:
                for stream, count in self.nan_inputs.items():
                    # spread over the training set, so that a few batches of each epoch hold one
                    step = max(len(dataset) // max(count, 1), 1)
                    dataset.inputs[stream][::step][:count, 0, 0, 0] = float("nan")


# ---------------------------------------------------------------------- models


def _branch(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


class BranchConvNet(pl.LightningModule):
    """A small user-style multi-branch CNN: ``nets.<stream>`` -> ``heads.<stream>`` and a ``fusion``.

    It follows StreamMonitor's per-stream prediction protocol: its steps return ``loss``,
    ``target`` and ``stream_logits``. Like a careful user's model, its optimizer skips a step whose
    gradients are not finite (as ``GradScaler`` does), so that one bad batch does not turn every
    weight into NaN.

    Args:
        channels: Stream name -> input channels.
        num_classes: Number of classes K.
        optimizer: The optimizer and its base lr.
        lr_factor: Per-stream factor on the base lr of that branch's param group.
        all_lr_factor: Factor on every group's lr.
        feature_scale: Per-stream factor on the branch's pooled features.
    """

    def __init__(
        self,
        channels: Mapping[str, int] = STREAMS,
        num_classes: int = NUM_CLASSES,
        optimizer: OptimizerSpec = OPTIMIZERS["adamw"],
        lr_factor: Mapping[str, float] | None = None,
        all_lr_factor: float = 1.0,
        feature_scale: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.names = list(channels)
        self.nets = nn.ModuleDict({name: _branch(c) for name, c in channels.items()})
        self.heads = nn.ModuleDict({name: nn.Linear(32, num_classes) for name in channels})
        self.fusion = nn.Linear(32 * len(channels), num_classes)
        self.optimizer = optimizer
        self.lr_factor = dict(lr_factor or {})
        self.all_lr_factor = all_lr_factor
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
        base = self.optimizer.lr * self.all_lr_factor
        groups = [
            {
                "name": m,
                "params": [*self.nets[m].parameters(), *self.heads[m].parameters()],
                "lr": base * self.lr_factor.get(m, 1.0),
            }
            for m in self.names
        ]
        groups.append({"name": "fusion", "params": list(self.fusion.parameters()), "lr": base})
        return _skip_nonfinite_steps(self.optimizer.build(groups))


def _skip_nonfinite_steps(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Make ``optimizer.step`` skip the update when a gradient is NaN/Inf, as ``GradScaler`` does.

    The closure (forward, backward, the callbacks' ``on_before_optimizer_step``) still runs, and
    the gradients are left as they are, so StreamMonitor counts them; only the update is skipped,
    so that one bad batch does not turn every weight into NaN.
    """
    update = optimizer.step

    def step(closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if all(bool(torch.isfinite(g).all()) for g in grads):
            update()
        return loss

    optimizer.step = step  # type: ignore[method-assign]
    return optimizer


class FineTuneNet(pl.LightningModule):
    """A pretrained ``backbone`` and a fresh ``head`` in series, on the rgb stream.

    Like the Siamese family's modules, it declares its parts as not peers (``parts_are_peers``)
    and which of them start from pretrained weights (``pretrained_parts``).

    Args:
        backbone: The pretrained backbone's ``state_dict``.
        num_classes: Number of classes K.
        optimizer: The optimizer.
        lrs: Part -> lr.
    """

    parts_are_peers = False
    pretrained_parts = ("backbone",)

    def __init__(
        self,
        backbone: Mapping[str, Tensor],
        num_classes: int,
        optimizer: OptimizerSpec,
        lrs: Mapping[str, float],
    ) -> None:
        super().__init__()
        self.backbone = _branch(3)
        self.backbone.load_state_dict(backbone)
        self.head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, num_classes))
        self.optimizer = optimizer
        self.lrs = dict(lrs)
        self.stream_patterns = {"backbone": ["backbone.*"], "head": ["head.*"]}

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Logits (B, K) from the rgb images."""
        return self.head(self.backbone(inputs["rgb"]))

    def training_step(self, batch: tuple[dict[str, Tensor], Tensor], batch_idx: int) -> Tensor:  # noqa: D102
        inputs, target = batch
        return F.cross_entropy(self(inputs), target)

    def validation_step(self, batch: tuple[dict[str, Tensor], Tensor], batch_idx: int) -> None:  # noqa: D102
        inputs, target = batch
        self.log("val_acc", (self(inputs).argmax(1) == target).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:  # noqa: D102
        groups = [
            {"name": part, "params": list(getattr(self, part).parameters()), "lr": lr} for part, lr in self.lrs.items()
        ]
        return self.optimizer.build(groups)


class ScaledFeaturesClassifier(MultiStreamClassifier):
    """mslightning's classifier with a per-stream factor on the encoded features (``feature_scale``)."""

    feature_scale: Mapping[str, float] = {}  # set per instance by build_model; never mutated

    def encode(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:  # noqa: D102
        features = super().encode(inputs)
        return {m: f * self.feature_scale.get(m, 1.0) for m, f in features.items()}


@functools.cache
def pretrained_backbone(seed: int = 0) -> dict[str, Tensor]:
    """A backbone pretrained on a related task: the same kind of images, other class patterns.

    A few epochs of Adam on the rgb stream of :class:`SyntheticStreamsDataModule` with another
    seed (so other prototypes): its features are useful but not the answer. Cached per process.

    Args:
        seed: Seed of the fine-tuning task (the pretraining task uses ``seed + 1``).

    Returns:
        The backbone's ``state_dict``.
    """
    torch.manual_seed(seed + 1)
    data = SyntheticStreamsDataModule(
        streams={"rgb": 3},
        signal={"rgb": 1.0},
        num_classes=NUM_CLASSES,
        image_size=IMAGE_SIZE,
        train_size=1024,
        val_size=32,
        test_size=32,
        max_shift=1,
        seed=seed + 1,
    )
    data.setup("fit")
    backbone, probe = _branch(3), nn.Linear(32, NUM_CLASSES)
    params = [*backbone.parameters(), *probe.parameters()]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    for _ in range(5):
        for inputs, target in data.train_dataloader():
            optimizer.zero_grad()
            F.cross_entropy(probe(backbone(inputs["rgb"])), target).backward()
            optimizer.step()
    return {k: v.detach().clone() for k, v in backbone.state_dict().items()}


def build_model(scenario: Scenario, optimizer: OptimizerSpec, model: str = "tiny", seed: int = 0) -> pl.LightningModule:
    """The scenario's model.

    Args:
        scenario: The scenario.
        optimizer: The optimizer and its base lrs.
        model: ``"tiny"`` (small user-style CNN) or ``"classifier"`` (mslightning's
            MultiStreamClassifier with ResNet18 streams; not for the fine-tuning scenarios).
        seed: The data seed (the fine-tuning backbone is pretrained on a related task).

    Returns:
        The LightningModule.
    """
    if scenario.finetune:
        if scenario.one_lr is not None:
            lrs = {"backbone": scenario.one_lr, "head": scenario.one_lr}
        else:
            lrs = {part: optimizer.finetune_lr * factor for part, factor in scenario.finetune_lrs.items()}
        return FineTuneNet(pretrained_backbone(seed), NUM_CLASSES, optimizer, lrs)
    if model == "tiny":
        return BranchConvNet(
            scenario.streams, NUM_CLASSES, optimizer, scenario.lr_factor, scenario.all_lr_factor, scenario.feature_scale
        )
    base = optimizer.lr * scenario.all_lr_factor
    groups = [ParamGroup(m, lr=base * scenario.lr_factor.get(m, 1.0)) for m in scenario.streams]
    groups.append(ParamGroup("head", lr=base))
    classifier = ScaledFeaturesClassifier(
        streams=dict(scenario.streams),
        num_classes=NUM_CLASSES,
        optimizer=optimizer.build,
        param_groups=groups,
    )
    classifier.feature_scale = dict(scenario.feature_scale)
    return classifier


# ---------------------------------------------------------------------- running and judging


def run_scenario(
    scenario: Scenario,
    optimizer: str = "adamw",
    epochs: int | None = None,
    model: str = "tiny",
    log_dir: str | None = "lightning_logs/monitor_scenarios",
    seed: int = 0,
    data_size: int = 512,
) -> StreamMonitor:
    """Train one scenario with a StreamMonitor attached and return the monitor.

    Args:
        scenario: What to run.
        optimizer: ``"adamw"`` or ``"sgd"`` (see :data:`OPTIMIZERS`).
        epochs: Training epochs (default: the scenario's).
        model: ``"tiny"`` (small user-style CNN, seconds) or ``"classifier"`` (ResNet18 streams).
        log_dir: TensorBoard root (one run per scenario and optimizer), or None for no logger.
        seed: Seed for the data and the model initialisation.
        data_size: Training-set size (the validation set is half of it).

    Returns:
        The monitor, holding ``recommendations`` and ``recommendation_history``.
    """
    spec = OPTIMIZERS[optimizer]
    if scenario.finetune:
        pretrained_backbone(seed)  # before seeding: a cached or a fresh pretraining leaves the same RNG state
    pl.seed_everything(seed, verbose=False)
    module = build_model(scenario, spec, model, seed)
    data = ScenarioData(
        input_scale=scenario.input_scale,
        nan_inputs=scenario.nan_inputs,
        streams=dict(scenario.streams),
        num_classes=NUM_CLASSES,
        image_size=IMAGE_SIZE,
        train_size=data_size,
        val_size=data_size // 2,
        batch_size=32,
        max_shift=1,
        seed=seed,
        **dict(scenario.data),
    )
    monitor = StreamMonitor(
        log_every_n_steps=scenario.log_every_n_steps,
        track_updates=scenario.track_updates,
        thresholds=StreamThresholds(),
        verbose=False,
    )
    logger = TensorBoardLogger(log_dir, name=f"{scenario.name}-{optimizer}") if log_dir else False
    trainer = pl.Trainer(
        max_epochs=scenario.epochs if epochs is None else epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        check_val_every_n_epoch=scenario.check_val_every_n_epoch,
    )
    trainer.fit(module, datamodule=data)
    return monitor


def _validated(scenario: Scenario, epoch: int) -> bool:
    return (epoch + 1) % scenario.check_val_every_n_epoch == 0


def _measured(scenario: Scenario, epoch: int, steps_per_epoch: int) -> bool:
    every = scenario.log_every_n_steps
    return any(step % every == 0 for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch))


def verdict(scenario: Scenario, optimizer: str, monitor: StreamMonitor, steps_per_epoch: int = 16) -> list[str]:
    """What is wrong with the monitor's advice over the run (empty: correct).

    A warning scenario must raise its expected ``(kind, stream)`` warning at some epoch, with the
    expected knob in the message, and no other warning at any epoch. A scenario without a
    problem must never raise a warning, may say ``healthy`` only in epochs where both the steps
    (a logged optimizer step) and overfitting (a validation run) were measured, and must say
    ``not_measured`` in the others.

    Args:
        scenario: The scenario that ran.
        optimizer: The optimizer it ran under.
        monitor: Its monitor after training.
        steps_per_epoch: Optimizer steps per epoch of the run.

    Returns:
        Problems, in words.
    """
    expect = scenario.expected(optimizer)
    problems = []
    warnings = [(epoch, r) for epoch, recs in monitor.recommendation_history for r in recs if r.severity == "warning"]
    if expect.kind in ("healthy", "not_measured"):
        problems += [f"epoch {epoch}: unexpected {r.kind} on {r.stream}: {r.message}" for epoch, r in warnings]
        for epoch, recs in monitor.recommendation_history:
            kinds = {r.kind for r in recs}
            complete = _measured(scenario, epoch, steps_per_epoch) and _validated(scenario, epoch)
            if "healthy" in kinds and not complete:
                problems.append(f"epoch {epoch}: 'healthy' although not everything was measured")
            said = any(r.kind in ("not_measured", "pending") and "not measured" in r.message for r in recs)
            if not complete and not said:
                problems.append(f"epoch {epoch}: does not say what was not measured: {[r.message for r in recs]}")
        final = monitor.recommendation_history[-1][1] if monitor.recommendation_history else []
        if expect.kind not in {r.kind for r in final}:
            problems.append(f"last epoch: expected {expect.kind}, got {[r.kind for r in final]}")
        return problems
    hits = [r for _, r in warnings if (r.kind, r.stream) == (expect.kind, expect.stream)]
    if not hits:
        problems.append(f"expected {expect.kind} on {expect.stream}, got nothing of that kind")
    for text in (expect.knob, *expect.mentions):
        if text and not all(text in r.message for r in hits):
            problems.append(f"the {expect.kind} message does not say {text!r}: {hits[0].message}")
    others = sorted(
        {(epoch, r.kind, r.stream) for epoch, r in warnings if (r.kind, r.stream) != (expect.kind, expect.stream)}
    )
    problems += [f"epoch {epoch}: also flagged {kind} on {stream}" for epoch, kind, stream in others]
    if expect.kind == "not_learning" and any(
        r.kind == "healthy" for _, recs in monitor.recommendation_history for r in recs
    ):
        problems.append("said 'healthy' while no stream learns")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenarios from the command line.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).

    Returns:
        0 if every verdict is right, else 1.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=["all", *SCENARIOS], default="all")
    parser.add_argument("--optimizer", choices=["all", *OPTIMIZERS], default="all")
    parser.add_argument("--epochs", type=int, default=None, help="default: each scenario's own")
    parser.add_argument("--model", choices=["tiny", "classifier"], default="tiny")
    parser.add_argument("--log-dir", default="lightning_logs/monitor_scenarios")
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    optimizers = list(OPTIMIZERS) if args.optimizer == "all" else [args.optimizer]
    failed = False
    for name in names:
        for optimizer in optimizers:
            scenario = SCENARIOS[name]
            monitor = run_scenario(scenario, optimizer, epochs=args.epochs, model=args.model, log_dir=args.log_dir)
            problems = verdict(scenario, optimizer, monitor)
            failed |= bool(problems)
            outcome = "OK" if not problems else "WRONG: " + "; ".join(problems)
            print(f"\n=== {name} ({optimizer}): {scenario.description} -> {outcome}")
            for advice in monitor.get_recommendations():
                print(f"  - {advice}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
