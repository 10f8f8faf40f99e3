"""StreamMonitor's two costs, each against its own yardstick measured in the same run.

1. **Attached but not logging** (a small model, ~5-10 ms steps): within one run the monitor's
   hooks run on every other step only (it never logs; it keeps the per-stream outputs for the
   epoch's metrics); *paired* = median step with its hooks / median step without - 1, and
   *hooks* = the mean time inside its hooks (the scoring of the kept outputs every 32 batches
   included) / the median step without them.
2. **A logging step, in parameter reads**: two ResNet18 streams, one thread; the time spent in
   the monitor's hooks on a logging step divided by the time of one *parameter read*, one
   ``torch._foreach_norm`` over all monitored parameters, timed inside the same training run
   (right after the monitor's hooks). An exact logging step needs about five reads (gradients
   once, weights once while copied for ``||dw||``, copy and new weights once after the step);
   each extra pass costs about one more.

``--baseline-rev REV`` runs the same measurements on the package as of git revision REV (in a
subprocess, from ``git archive``), so the figures sit side by side.

Run: ``python benchmarks/bench_monitor_costs.py [--sizes 64 224] [--steps 12] [--baseline-rev 4103ad1]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from mslightning.callbacks import StreamMonitor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stream_monitor import timed

HOOKS = ("on_before_optimizer_step", "on_train_batch_end")


class StepTimer(Callback):
    """Step time from on_train_batch_start to on_train_batch_end (put it after the measured callback)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter() - self._start)


class ParameterRead(Callback):
    """Times one foreach norm over the monitored parameters after every step (the unit)."""

    def __init__(self, patterns: tuple[str, ...], repeats: int = 5) -> None:
        self.patterns, self.repeats = patterns, repeats
        self.times: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        params = [p.detach() for n, p in pl_module.named_parameters() if n.startswith(self.patterns)]
        for _ in range(self.repeats):
            start = time.perf_counter()
            torch._foreach_norm(params)
            self.times.append(time.perf_counter() - start)


class SmallTwoStreamNet(pl.LightningModule):
    """Two small conv branches with their own heads, returning per-stream logits."""

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleDict(
            {
                s: nn.Sequential(
                    nn.Conv2d(c, 16, 3, padding=1),
                    nn.ReLU(),
                    nn.Conv2d(16, 16, 3, padding=1),
                    nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(),
                )
                for s, c in (("rgb", 3), ("depth", 1))
            }
        )
        self.heads = nn.ModuleDict({s: nn.Linear(16, 10) for s in self.branches})
        self.stream_patterns = {s: [f"branches.{s}.*", f"heads.{s}.*"] for s in self.branches}

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> dict[str, Any]:
        rgb, depth, target = batch
        logits = {s: self.heads[s](self.branches[s](x)) for s, x in (("rgb", rgb), ("depth", depth))}
        loss = sum(F.cross_entropy(z, target) for z in logits.values())
        return {"loss": loss, "target": target, "stream_logits": {s: z.detach() for s, z in logits.items()}}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _trainer(callbacks: list[Callback], steps: int) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        log_every_n_steps=1,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def bookkeeping(steps: int, rounds: int, warmup: int = 5) -> dict[str, float]:
    """Cost of the monitor on steps where it does not log, on a small model.

    Paired: in one run the monitor's hooks run on even steps only, so steps with and without them
    alternate under the same machine state; the ratio of their median step times is the cost.
    """
    generator = torch.Generator().manual_seed(0)
    n = 32 * steps
    data = TensorDataset(
        torch.randn(n, 3, 16, 16, generator=generator),
        torch.randn(n, 1, 16, 16, generator=generator),
        torch.randint(0, 10, (n,), generator=generator),
    )
    with_hooks: list[float] = []
    without: list[float] = []
    hooks: list[float] = []
    for _ in range(rounds):
        pl.seed_everything(0, verbose=False)
        timer = StepTimer()
        monitor, spent = timed(
            StreamMonitor(log_every_n_steps=10**9, verbose=False), HOOKS, lambda timer=timer: len(timer.times) % 2 == 0
        )
        # the timer after the monitor: its on_train_batch_end closes the step after the monitor's hooks
        _trainer([monitor, timer], steps).fit(SmallTwoStreamNet(), DataLoader(data, batch_size=32))
        for i, (step, hook) in enumerate(zip(timer.times, spent, strict=True)):
            if i >= warmup:
                (with_hooks if i % 2 == 0 else without).append(step)
                if i % 2 == 0:
                    hooks.append(hook)
    base = statistics.median(without)
    return {
        "step_without_hooks_ms": base * 1e3,
        "hooks_share": statistics.mean(hooks) / base,  # the mean: every 32nd step also scores the kept outputs
        "hooks_share_median": statistics.median(hooks) / base,
        "paired_overhead": statistics.median(with_hooks) / base - 1,
    }


def logging_step_reads(image_size: int, steps: int, warmup: int = 3) -> dict[str, float]:
    """A logging step's hook time in parameter reads, two ResNet18 streams, one thread."""
    from mslightning.data import SyntheticStreamsDataModule
    from mslightning.modules import MultiStreamClassifier

    pl.seed_everything(0, verbose=False)
    streams = {"rgb": 3, "depth": 1}
    data = SyntheticStreamsDataModule(
        streams=streams,
        num_classes=10,
        image_size=image_size,
        train_size=16 * steps,
        val_size=16,
        test_size=16,
        batch_size=16,
    )
    model = MultiStreamClassifier(streams=streams, num_classes=10)
    monitor, spent = timed(StreamMonitor(log_every_n_steps=1, verbose=False), HOOKS)
    reads = ParameterRead(tuple(f"{part}.{s}." for part in ("encoders", "aux_heads") for s in streams))
    timer = StepTimer()
    _trainer([monitor, timer, reads], steps).fit(model, datamodule=data)
    read = statistics.median(reads.times[warmup * reads.repeats :])
    hook = statistics.median(spent[warmup:])
    return {
        "read_ms": read * 1e3,
        "hooks_ms": hook * 1e3,
        "reads": hook / read,
        "step_ms": statistics.median(timer.times[warmup:]) * 1e3,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"bookkeeping": bookkeeping(args.small_steps, args.rounds)}
    torch.set_num_threads(1)
    out["logging_step"] = {str(size): logging_step_reads(size, args.steps) for size in args.sizes}
    return out


def _baseline(rev: str, argv: list[str]) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", rev, "mslightning"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        env = {**os.environ, "PYTHONPATH": tmp}
        result = subprocess.run(
            [sys.executable, __file__, "--worker", *argv], check=True, capture_output=True, text=True, env=env
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=[64, 224], help="input sizes of the logging-step runs (none: skip them)"
    )
    parser.add_argument("--steps", type=int, default=12, help="steps per ResNet18 run")
    parser.add_argument("--small-steps", type=int, default=60, help="steps per small-model run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="threads of the small-model runs")
    parser.add_argument("--baseline-rev", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    figures = measure(args)
    if args.worker:
        print(json.dumps(figures))
        return
    report = {"this tree": figures}
    if args.baseline_rev:
        passed = [a for a in sys.argv[1:] if not a.startswith("--baseline-rev") and a != args.baseline_rev]
        report[args.baseline_rev] = _baseline(args.baseline_rev, passed)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
