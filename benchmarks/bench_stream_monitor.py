"""Training-step overhead of StreamMonitor on a 2-stream ResNet18, CPU, batch 16.

Trains :class:`~mslightning.modules.MultiStreamClassifier` (ResNet18 per stream, ``rgb`` with 3
channels and ``depth`` with 1, concat fusion, AdamW) with a real Lightning ``Trainer`` under
these configurations, interleaved round by round so that slow drifts of a shared machine hit
all of them alike:

* ``baseline``: no monitor;
* ``monitor/1``: StreamMonitor logging every optimizer step;
* ``monitor/1 no-updates``: the same with ``track_updates=False`` (no ``||dw||/||w||``);
* ``monitor/50``: StreamMonitor logging every 50 steps;
* ``monitor/2``: StreamMonitor logging every other step - a paired measurement: logging and
  non-logging steps alternate within one run, so machine drift hits both alike;
* ``grad_norm/1``: Lightning's ``grad_norm`` utility computing the same per-stream totals
  (the gradient L2 norm of each stream's modules), logged every step with ``self.log_dict``
  from ``on_before_optimizer_step`` as the Lightning docs show.

A step is timed from ``on_train_batch_start`` of the first callback to ``on_train_batch_end``
of the last, so the monitor's own hooks are inside the measurement. Two figures per
configuration, both as ratios to the baseline step:

* ``overhead``: median step time / baseline median step time - 1 (end to end);
* ``hooks``: median time spent inside the measured callback's hooks / baseline median step
  (the callback's own cost, far less noisy on a shared machine).

For ``monitor/50`` the measured steps are non-logging steps; the amortised overhead adds the
every-step hook cost divided by 50. For ``monitor/2``, ``paired`` = median logging step / median
non-logging step - 1: the end-to-end cost of a logging step (cache effects included) against a
step of the same run, the least noisy step-time figure on a shared machine; its ``hooks`` are
those of the logging steps.

Finally, the per-stream gradient totals alone, on the same model with random gradients:
StreamMonitor's foreach norm (``total_norm``) vs Lightning's ``grad_norm`` (time per call and
relative error against a float64 reference).

Run: ``python benchmarks/bench_stream_monitor.py [--image-size 224] [--steps 12] [--rounds 3] [--threads 1]
[--configs baseline monitor/2 ...]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import grad_norm
from torch import nn

from mslightning.callbacks import StreamMonitor
from mslightning.data import SyntheticStreamsDataModule
from mslightning.modules import MultiStreamClassifier

STREAMS = {"rgb": 3, "depth": 1}
BATCH = 16


class StepTimer:
    """Two callbacks, to put first and last: step time includes every callback in between."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0
        timer = self

        class Start(Callback):
            def on_train_batch_start(self, *args: Any) -> None:
                timer._start = time.perf_counter()

        class End(Callback):
            def on_train_batch_end(self, *args: Any) -> None:
                timer.times.append(time.perf_counter() - timer._start)

        self.start, self.end = Start(), End()


def timed(
    callback: Callback, hooks: tuple[str, ...], active: Callable[[], bool] = lambda: True
) -> tuple[Callback, list[float]]:
    """Wrap the callback's hooks so that the time spent in them is summed per training step.

    ``active()`` False skips the hooks for that step (it then records their cost as ~0): a paired
    measurement of steps with and without them in one run.
    """
    per_step: list[float] = []
    spent = [0.0]
    for name in hooks:
        original: Callable[..., Any] = getattr(callback, name)

        def wrapper(*args: Any, _original: Callable[..., Any] = original, _name: str = name, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs) if active() else None
            finally:
                spent[0] += time.perf_counter() - start
                if _name == "on_train_batch_end":
                    per_step.append(spent[0])
                    spent[0] = 0.0

        setattr(callback, name, wrapper)
    return callback, per_step


class GradNormPerStream(Callback):
    """Lightning's ``grad_norm`` utility on each stream's modules, logged with ``log_dict``."""

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        totals = {}
        for stream in STREAMS:
            modules = nn.ModuleList([pl_module.encoders[stream], pl_module.aux_heads[stream]])
            norms = grad_norm(modules, norm_type=2)
            totals[f"grad_norm/{stream}"] = norms["grad_2.0_norm_total"]
        pl_module.log_dict(totals)

    def on_train_batch_end(self, *args: Any) -> None:
        pass


HOOKS = ("on_before_optimizer_step", "on_train_batch_end", "on_validation_batch_end", "on_train_epoch_end")


def make_callback(config: str) -> tuple[Callback | None, list[float] | None]:
    if config == "baseline":
        return None, None
    if config.startswith("grad_norm"):
        return timed(GradNormPerStream(), ("on_before_optimizer_step", "on_train_batch_end"))
    every = int(config.split("/")[1].split()[0])
    monitor = StreamMonitor(log_every_n_steps=every, track_updates="no-updates" not in config, verbose=False)
    return timed(monitor, HOOKS)


def run(config: str, args: argparse.Namespace, log_dir: str) -> dict[str, list[float]]:
    pl.seed_everything(0, verbose=False)
    timer = StepTimer()
    callback, hook_times = make_callback(config)
    callbacks = [timer.start, *([callback] if callback else []), timer.end]
    data = SyntheticStreamsDataModule(
        streams=STREAMS,
        num_classes=10,
        image_size=args.image_size,
        train_size=BATCH * args.steps,
        val_size=BATCH,
        test_size=BATCH,
        batch_size=BATCH,
    )
    model = MultiStreamClassifier(streams=STREAMS, num_classes=10)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.steps,
        limit_val_batches=0,
        logger=TensorBoardLogger(log_dir, name=config.replace("/", "_").replace(" ", "_")),
        log_every_n_steps=50,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    warm = args.warmup
    return {"step": timer.times[warm:], "hooks": (hook_times or [])[warm:], "first_step": [warm]}


def grad_totals(repeats: int = 20) -> dict[str, float]:
    """Per-stream gradient L2 totals: StreamMonitor's foreach norm vs Lightning's grad_norm."""
    from mslightning.callbacks.stream_stats import total_norm

    torch.manual_seed(0)
    model = MultiStreamClassifier(streams=STREAMS, num_classes=10)
    modules = {s: nn.ModuleList([model.encoders[s], model.aux_heads[s]]) for s in STREAMS}
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    reference = {
        s: torch.linalg.vector_norm(torch.cat([p.grad.double().flatten() for p in m.parameters()])).item()
        for s, m in modules.items()
    }

    def ours() -> dict[str, float]:
        values = torch.stack([total_norm([p.grad for p in m.parameters()]) for m in modules.values()])
        return dict(zip(modules, values.tolist(), strict=True))  # one transfer

    def lightning() -> dict[str, float]:
        return {s: grad_norm(m, norm_type=2)["grad_2.0_norm_total"].item() for s, m in modules.items()}

    out = {}
    for name, fn in (("ours", ours), ("grad_norm", lightning)):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            values = fn()
            times.append(time.perf_counter() - start)
        out[f"{name}_ms"] = statistics.median(times) * 1e3
        out[f"{name}_max_rel_error"] = max(abs(values[s] - reference[s]) / reference[s] for s in STREAMS)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=224, help="ResNet18's native input size by default")
    parser.add_argument("--steps", type=int, default=12, help="training steps per run (the first --warmup dropped)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-dir", default="lightning_logs/bench_stream_monitor")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--totals-only", action="store_true", help="only the gradient-totals comparison")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["baseline", "monitor/1", "monitor/1 no-updates", "monitor/50", "monitor/2", "grad_norm/1"],
        help="configurations to run (baseline is always added)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if "baseline" not in args.configs:
        args.configs.insert(0, "baseline")
    totals = grad_totals()
    ratio = totals["grad_norm_ms"] / totals["ours_ms"]
    print(
        f"per-stream gradient totals, 2 x ResNet18: StreamMonitor {totals['ours_ms']:.2f} ms "
        f"(max rel. error {totals['ours_max_rel_error']:.1e}) vs Lightning grad_norm {totals['grad_norm_ms']:.2f} ms "
        f"(max rel. error {totals['grad_norm_max_rel_error']:.1e}); grad_norm time / ours {ratio:.2f}"
    )
    if args.totals_only:
        return
    configs = args.configs
    samples: dict[str, dict[str, list[float]]] = {
        c: {"step": [], "hooks": [], "log": [], "skip": [], "log_hooks": [], "skip_hooks": []} for c in configs
    }
    for round_ in range(args.rounds):
        for config in configs if round_ % 2 == 0 else reversed(configs):
            result = run(config, args, args.log_dir)
            samples[config]["step"].extend(result["step"])
            samples[config]["hooks"].extend(result["hooks"])
            if config == "monitor/2":  # step = warmup + index; as Lightning logs, steps with (step + 1) % 2 == 0
                for i, (t, hooks) in enumerate(zip(result["step"], result["hooks"], strict=True)):
                    logging = (result["first_step"][0] + i + 1) % 2 == 0
                    samples[config]["log" if logging else "skip"].append(t)
                    samples[config]["log_hooks" if logging else "skip_hooks"].append(hooks)
            print(f"round {round_} {config}: median step {statistics.median(result['step']) * 1e3:.1f} ms", flush=True)

    base = statistics.median(samples["baseline"]["step"])
    every_step_hooks = statistics.median(samples["monitor/1"]["hooks"]) if "monitor/1" in samples else None
    rows = []
    for config in configs:
        step = statistics.median(samples[config]["step"])
        row = {"config": config, "median_step_ms": step * 1e3, "overhead": step / base - 1}
        if samples[config]["hooks"]:
            row["hooks"] = statistics.median(samples[config]["hooks"]) / base
        if config == "monitor/50" and every_step_hooks is not None:
            row["amortised_hooks"] = row["hooks"] + every_step_hooks / base / 50
        if samples[config]["log"]:
            row["paired"] = statistics.median(samples[config]["log"]) / statistics.median(samples[config]["skip"]) - 1
            row["hooks"] = statistics.median(samples[config]["log_hooks"]) / base  # of the logging steps
        rows.append(row)
    print(
        f"\n2-stream ResNet18 (MultiStreamClassifier), batch {BATCH}, {args.image_size}px, CPU, "
        f"{args.threads} thread(s), {args.rounds} rounds x {args.steps - args.warmup} timed steps"
    )
    print(f"{'config':<22}{'median step':>14}{'overhead':>11}{'hooks':>10}{'amortised':>11}{'paired':>10}")
    for row in rows:
        hooks = f"{row['hooks'] * 100:.2f}%" if "hooks" in row else "-"
        amortised = f"{row['amortised_hooks'] * 100:.3f}%" if "amortised_hooks" in row else "-"
        paired = f"{row['paired'] * 100:.2f}%" if "paired" in row else "-"
        print(
            f"{row['config']:<22}{row['median_step_ms']:>11.1f} ms{row['overhead'] * 100:>10.2f}%"
            f"{hooks:>10}{amortised:>11}{paired:>10}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "grad_totals": totals}, f, indent=2)


if __name__ == "__main__":
    main()
