"""Cost of named parameter groups and per-group schedules on two ResNet50 trunks.

Measures, in one run on the same model:
  * building the named groups (patterns over ~320 parameter tensors) vs one AdamW step;
  * one step of five per-group schedulers (GroupLRScheduler) vs one AdamW step.
Ratios, not absolute times, are the result (the target: scheduler step < 1% of the AdamW step).

Run: ``python benchmarks/bench_param_groups.py [--threads 2] [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, CosineAnnealingWarmRestarts, OneCycleLR, StepLR
from torchvision.models import resnet50

from mslightning.optim import ParamGroup, build_param_groups, configure_grouped_optimizers


def two_trunks() -> nn.Module:
    model = nn.Module()
    model.rgb = resnet50()
    model.depth = resnet50()
    model.rgb.fc = model.depth.fc = nn.Identity()
    model.fusion = nn.Linear(4096, 512)
    model.head = nn.Linear(512, 27)
    return model


GROUPS = [
    ParamGroup(
        "rgb_early",
        r"re:rgb\.(conv1|bn1|layer[12])\..*",
        lr=1e-4,
        scheduler=partial(CosineAnnealingWarmRestarts, T_0=10, T_mult=2),
        interval="step",
    ),
    ParamGroup("rgb_late", "rgb.layer[34].*", lr=3e-4, scheduler=partial(StepLR, step_size=30), interval="step"),
    ParamGroup(
        "depth", "depth.*", lr=5e-5, warmup=100, scheduler=partial(CosineAnnealingLR, T_max=1000), interval="step"
    ),
    ParamGroup(
        "fusion", "fusion.*", lr=1e-3, scheduler=partial(OneCycleLR, max_lr=1e-2, total_steps=10_000), interval="step"
    ),
    ParamGroup("head", "head.*", lr=1e-3, scheduler=partial(CosineAnnealingLR, T_max=1000), interval="step"),
]


def median_seconds(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = two_trunks()
    tensors = sum(1 for _ in model.parameters())
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3

    build = median_seconds(
        lambda: build_param_groups(model, GROUPS, no_weight_decay_on_norm_and_bias=True), args.repeats
    )
    optimizers, configs = configure_grouped_optimizers(
        model, partial(torch.optim.AdamW, lr=1e-4), GROUPS, no_weight_decay_on_norm_and_bias=True
    )
    optimizer = optimizers[0]
    schedulers = [config["scheduler"] for config in configs]
    optimizer.step()  # allocate AdamW state before timing

    def schedule_step() -> None:
        for scheduler in schedulers:
            scheduler.step()

    # Interleave the two so that machine noise hits both alike.
    adam, sched = [], []
    for _ in range(args.repeats):
        adam.append(median_seconds(optimizer.step, 1))
        sched.append(median_seconds(schedule_step, 5))
    adam_step, sched_step = statistics.median(adam), statistics.median(sched)

    print(
        f"two ResNet50 trunks + fusion + head: {tensors} parameter tensors, "
        f"{len(optimizer.param_groups)} param groups from {len(GROUPS)} patterns, threads={args.threads}"
    )
    print()
    print("| measurement | median | ratio to one AdamW step |")
    print("|---|---|---|")
    print(f"| AdamW step (baseline) | {adam_step * 1e3:.1f} ms | 1 |")
    print(f"| build named groups | {build * 1e3:.2f} ms | {build / adam_step:.4f} |")
    print(f"| step 5 per-group schedulers | {sched_step * 1e6:.0f} µs | {sched_step / adam_step:.5f} |")
    verdict = "meets" if sched_step / adam_step < 0.01 else "MISSES"
    print(
        f"\nper-group scheduling {verdict} the < 1% target ({100 * sched_step / adam_step:.3f}% of the optimizer step)"
    )


if __name__ == "__main__":
    main()
