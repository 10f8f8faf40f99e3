"""Dual-stream classifier: mslightning.nn blocks vs a hand-written torchvision baseline.

Both models compute the same function: two resnet18 trunks (3-channel input each), pooled
features concatenated, one Linear head. "ours" is built from ``ResNetStreamEncoder`` +
``ConcatFusion`` and takes a ``{stream: images}`` dict; the baseline is two torchvision
``resnet18`` with ``fc = Identity`` and a ``Linear`` on ``torch.cat``. The baseline's weights are
copied into ours, and the script checks that both give the same logits before timing.

What is measured, per resolution (CPU, training mode):

* throughput: samples/s (one sample = one image per stream) of a full training step's
  compute: forward, cross-entropy, backward, grads reset. Warm-up first; then the two models
  take turns, cycling through every order, so drift in machine load hits both alike. Each
  model's median step time gives its samples/s; the throughput ratio is the median of the
  per-repeat ratios (baseline time / ours time within one repeat), which cancels load changes
  slower than one repeat better than a ratio of two medians does. A second, identical copy of
  the baseline runs in the same rotation as an A/A control: its ratio to the baseline should be
  1, and its distance from 1 shows how much of the ours/baseline difference is noise.
* memory: bytes the step must hold at its peak, counted exactly instead of sampled from the
  process (RSS is dominated by the allocator and the libraries, and CPU torch has no
  ``max_memory_allocated``): the unique storages autograd saves for backward during one
  forward (via ``torch.autograd.graph.saved_tensors_hooks``; parameters excluded), plus
  parameter and gradient bytes. Saved activations are what grows with resolution and batch
  size, so this is what a wrapper would inflate.
* FLOPs of one training step (``torch.utils.flop_counter.FlopCounterMode``): noise-free
  evidence that both run the same computation, for machines too busy to time reliably.

Run:  .venv/bin/python benchmarks/bench_dual_stream.py [--threads 2] [--sizes 64 128]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision import models

from mslightning.nn import ConcatFusion, ResNetStreamEncoder

STREAMS = ("rgb", "depth")
NUM_CLASSES = 10


class Ours(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({name: ResNetStreamEncoder("resnet18", 3, name=name) for name in STREAMS})
        self.fusion = ConcatFusion({name: enc.out_features for name, enc in self.encoders.items()})
        self.head = nn.Linear(self.fusion.out_features, NUM_CLASSES)

    def forward(self, images: dict[str, Tensor]) -> Tensor:
        features = {name: enc(images[name]) for name, enc in self.encoders.items()}
        return self.head(self.fusion(features))


class Baseline(nn.Module):
    """What one writes by hand: independent torchvision resnets, cat, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.nets = nn.ModuleList(models.resnet18(weights=None) for _ in STREAMS)
        for net in self.nets:
            net.fc = nn.Identity()
        self.head = nn.Linear(512 * len(STREAMS), NUM_CLASSES)

    def forward(self, images: list[Tensor]) -> Tensor:
        return self.head(torch.cat([net(x) for net, x in zip(self.nets, images, strict=True)], dim=1))


def copy_weights(baseline: Baseline, ours: Ours) -> None:
    for name, net in zip(STREAMS, baseline.nets, strict=True):
        state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
        ours.encoders[name].load_state_dict(state)
    ours.head.load_state_dict(baseline.head.state_dict())


def train_step(model: nn.Module, call: Callable[[], Tensor], target: Tensor) -> None:
    F.cross_entropy(call(), target).backward()
    for p in model.parameters():
        p.grad = None


def step_bytes(model: nn.Module, call: Callable[[], Tensor], target: Tensor) -> int:
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(call(), target)
    loss.backward()
    grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    params = sum(p.nbytes for p in model.parameters())
    for p in model.parameters():
        p.grad = None
    return sum(saved.values()) + params + grads


def step_flops(model: nn.Module, call: Callable[[], Tensor], target: Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(model, call, target)
    return counter.get_total_flops()


def bench_size(size: int, args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(args.seed)
    baseline = Baseline().train()
    ours = Ours().train()
    copy_weights(baseline, ours)
    control = Baseline().train()
    control.load_state_dict(baseline.state_dict())
    gen = torch.Generator().manual_seed(args.seed)
    images = [torch.randn(args.batch, 3, size, size, generator=gen) for _ in STREAMS]
    target = torch.randint(0, NUM_CLASSES, (args.batch,), generator=gen)
    as_dict = dict(zip(STREAMS, images, strict=True))
    runs: dict[str, tuple[nn.Module, Callable[[], Tensor]]] = {
        "ours": (ours, lambda: ours(as_dict)),
        "baseline": (baseline, lambda: baseline(images)),
        "control": (control, lambda: control(images)),
    }

    with torch.no_grad():
        # eval: train-mode BN would update running stats and let the two models drift apart.
        diff = (ours.eval()(as_dict) - baseline.eval()(images)).abs().max().item()
    ours.train()
    baseline.train()

    memory = {key: step_bytes(model, call, target) for key, (model, call) in runs.items()}
    flops = {key: step_flops(model, call, target) for key, (model, call) in runs.items()}
    for _ in range(args.warmup):
        for model, call in runs.values():
            train_step(model, call, target)
    times: dict[str, list[float]] = {key: [] for key in runs}
    # Cycle through every order, so no model always runs right after the same other one.
    orders = list(itertools.permutations(runs))
    for repeat in range(args.repeats):
        for key in orders[repeat % len(orders)]:
            model, call = runs[key]
            start = time.perf_counter()
            train_step(model, call, target)
            times[key].append(time.perf_counter() - start)

    def ratio_to_baseline(key: str) -> float:
        return statistics.median(b / t for t, b in zip(times[key], times["baseline"], strict=True))

    return {
        "ours_ips": args.batch / statistics.median(times["ours"]),
        "base_ips": args.batch / statistics.median(times["baseline"]),
        "ratio": ratio_to_baseline("ours"),
        "control_ratio": ratio_to_baseline("control"),
        "ours_mib": memory["ours"] / 2**20,
        "base_mib": memory["baseline"] / 2**20,
        "flop_ratio": flops["ours"] / flops["baseline"],
        "diff": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    parser.add_argument("--repeats", type=int, default=12, help="timed steps per model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"{args.repeats} interleaved repeats (median), streams {list(STREAMS)}\n"
    )
    print(
        "| size | ours samples/s | baseline samples/s | throughput ratio | A/A control ratio "
        "| ours MiB | baseline MiB | memory ratio | FLOP ratio | max abs logit diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        r = bench_size(size, args)
        print(
            f"| {size}x{size} | {r['ours_ips']:.1f} | {r['base_ips']:.1f} | {r['ratio']:.3f} "
            f"| {r['control_ratio']:.3f} | {r['ours_mib']:.1f} | {r['base_mib']:.1f} "
            f"| {r['ours_mib'] / r['base_mib']:.3f} | {r['flop_ratio']:.3f} | {r['diff']:.1e} |",
            flush=True,
        )
    print(
        "\nthroughput ratio = ours/baseline, median over repeats of the per-repeat ratio (target >= 0.95);"
        "\nA/A control ratio = the same for a second copy of the baseline: its distance from 1 is the"
        " measurement noise;\nmemory = saved activations + params + grads of one training step"
        " (target ratio <= 1.05);\nFLOP ratio = counted by torch.utils.flop_counter, noise-free."
    )


if __name__ == "__main__":
    main()
