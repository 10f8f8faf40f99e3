"""Siamese ranking: one trunk pass on the 2B images vs two passes of B; data loading vs training.

Two questions about :class:`mslightning.modules.SiameseRanker`, each answered by ratios measured
side by side in one run.

1. **One trunk pass or two.** ``SiameseRanker.pair_features(a, b)`` runs the shared trunk once on
   ``torch.cat([a, b])`` (2B images); the baseline runs it on ``a``, then on ``b`` (two passes of
   B), and gives both feature sets to the same head. Measured on a full training step (forward,
   :class:`~mslightning.nn.PairCrossEntropyLoss`, backward, AdamW step) of
   ``ResNetTrunk(arch)`` + ``ScoreHead``, one model per variant built from the same seed:

   * throughput: pairs/s from each variant's median step time; the ratio is the median of the
     per-repeat ratios (two-pass time / one-pass time within one repeat). Warm-up first, then the
     models take turns, cycling through every order. A second copy of the one-pass model runs in
     the same rotation as an A/A control: its distance from 1 is the timing noise.
   * memory, two ways. *Saved*: the unique storages autograd saves for backward during one
     forward (``torch.autograd.graph.saved_tensors_hooks``; parameters excluded) -- exact, the
     part that grows with batch and resolution. *Peak*: on CPU, the highest total of live tensor
     bytes during one whole step from the ``torch.profiler`` memory timeline (parameters, AdamW
     state, inputs, activations, gradients, temporaries; the sum over tensors, not the process's
     RSS, which the allocator and libraries dominate); on CUDA, ``torch.cuda.max_memory_allocated``.
     Both are also given as the rise above the level before the step.
   * semantics (not cost): in train mode the two variants are different models -- two passes give
     each half its own BatchNorm batch statistics, one pass normalises a and b together, which is
     why the module uses one pass. Shown as the max abs logit difference between the variants on
     the same weights, in train mode (BatchNorm batch statistics) and in eval mode (running
     statistics: equal up to rounding).

2. **Does loading keep up with training?** A temporary directory in the official Photo Triage
   layout (``train_val/train_val_imgs/%06d-%02d.JPG``; pair lists with the 6 columns ``SERIES_ID
   PHOTO1_IND PHOTO2_IND PREF_RATIO RANK1 RANK2``) is written with large JPEGs like the real
   photos (default 1600x1200, upscaled crops of scikit-image's photographs plus sensor-like noise,
   so they compress like photos, not like flat upscales). Then:

   * loader: pairs/s of ``PhotoTriageDataModule.train_dataloader()`` (``--workers`` processes,
     decode with JPEG ``draft()`` + letterbox + augment + normalise), timed from its third batch on
     while the main process only consumes (steady state; the first-batch latency, which includes
     starting the workers, is shown apart). The same loader with ``draft()`` disabled shows what
     draft buys end to end, and ``letterbox`` of one photo opened with and without ``draft()``
     (main process, interleaved) shows it per photo.
   * training: pairs/s of the training step of part 1 at the loader's image size and batch, for
     each ``--data-archs`` trunk, on real batches from the loader held in memory.
   * the ratio loader pairs/s / training pairs/s: above 1, loading never starves training. Here
     both run on the same CPU cores one after the other; during training the workers share the
     cores with the step (on a GPU machine they would not).

Run:  .venv/bin/python benchmarks/bench_siamese.py [--size 112] [--batch 8] [--arch resnet18]
      [--data-size 224] [--data-archs resnet18 resnet50] [--parts 1 2] [--device cpu]

One intra-op thread by default: on a 2-core machine shared with other jobs, 2 threads made a
training step slower than 1 and scattered it from 0.7 to 4.9 s (threads waiting for a busy core),
while 1-thread steps stayed within ~10%. Both parts' training steps use ``--threads``; the loader
workers use one thread each, as DataLoader workers do.

On CPU the profiler behind the peak-memory figure prints a few log lines on stderr
(``profiler_start``/``profiler_stop``, and ``gpuGetDeviceCount failed`` on machines without a
GPU); they are harmless.

``--device cuda`` times with synchronisation and reads ``max_memory_allocated`` (not run in the
CPU-only sandbox the figures in benchmarks/README.md come from).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import itertools
import json
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from mslightning.data import PhotoTriageDataModule
from mslightning.data.photo_triage import _PhotoLoader, _resize_long_side, letterbox
from mslightning.modules import SiameseRanker
from mslightning.nn import ResNetTrunk, ScoreHead

Forward = Callable[[SiameseRanker, Tensor, Tensor], Tensor]
SOURCES = ("astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg", "hubble_deep_field.jpg")


def one_pass(model: SiameseRanker, a: Tensor, b: Tensor) -> Tensor:
    """The module's own forward: the trunk once on ``cat([a, b])``."""
    return model(a, b)


def two_passes(model: SiameseRanker, a: Tensor, b: Tensor) -> Tensor:
    """The baseline: the trunk on ``a``, then on ``b``; the same head."""
    return model.head(model.backbone(a), model.backbone(b))


def make_ranker(arch: str, seed: int, device: torch.device) -> SiameseRanker:
    torch.manual_seed(seed)
    return SiameseRanker(trunk=partial(ResNetTrunk, arch=arch), head=ScoreHead).to(device).train()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model: SiameseRanker, optimizer: torch.optim.Optimizer, forward: Forward, batch: dict) -> None:
    loss = model.loss(forward(model, batch["a"], batch["b"]), batch["ratio"])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed_step(model, optimizer, forward, batch, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    train_step(model, optimizer, forward, batch)
    sync(device)
    return time.perf_counter() - start


def saved_bytes(model: SiameseRanker, forward: Forward, batch: dict) -> int:
    """Unique storages autograd saves for backward in one forward (parameters excluded)."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model.loss(forward(model, batch["a"], batch["b"]), batch["ratio"])
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(saved.values())


def peak_bytes(model, optimizer, forward, batch, device: torch.device) -> tuple[int, int]:
    """(peak live tensor bytes during one training step, bytes live before it)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        train_step(model, optimizer, forward, batch)
        sync(device)
        return torch.cuda.max_memory_allocated(device), before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        train_step(model, optimizer, forward, batch)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # export_memory_timeline is deprecated in favour of a CUDA-only tool
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    totals = [sum(row) for row in sizes]  # bytes by category at each timestamp; row 0 = pre-existing tensors
    return max(totals), totals[0]


def pair_batch(batch: int, size: int, seed: int, device: torch.device) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(batch, 3, size, size, generator=gen) for _ in range(2))
    ratio = torch.randint(0, 2, (batch,), generator=gen).float() * 0.6 + 0.2  # 0.2 or 0.8: no ties
    return {"a": a.to(device), "b": b.to(device), "ratio": ratio.to(device)}


# ---------------------------------------------------------------------------- part 1


def bench_passes(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    batch = pair_batch(args.batch, args.size, args.seed, device)
    runs: dict[str, tuple[SiameseRanker, torch.optim.Optimizer, Forward]] = {}
    for key, forward in (("one", one_pass), ("two", two_passes), ("control", one_pass)):
        model = make_ranker(args.arch, args.seed, device)
        runs[key] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4), forward)

    model = copy.deepcopy(runs["one"][0])
    diffs = {}
    with torch.no_grad():
        for mode in ("train", "eval"):
            model.train(mode == "train")
            logits = one_pass(model, batch["a"], batch["b"])
            diffs[mode] = (logits - two_passes(model, batch["a"], batch["b"])).abs().max().item()
            diffs[f"{mode}_scale"] = logits.abs().mean().item()
    del model

    for _ in range(args.warmup):  # also creates the AdamW state before memory is measured
        for model, optimizer, forward in runs.values():
            train_step(model, optimizer, forward, batch)
    memory = {}
    for key in ("one", "two"):
        model, optimizer, forward = runs[key]
        memory[f"{key}_saved"] = saved_bytes(model, forward, batch)
        memory[f"{key}_peak"], memory[f"{key}_before"] = peak_bytes(model, optimizer, forward, batch, device)

    times: dict[str, list[float]] = {key: [] for key in runs}
    orders = list(itertools.permutations(runs))
    for repeat in range(args.repeats):
        for key in orders[repeat % len(orders)]:
            times[key].append(timed_step(*runs[key], batch, device))

    def ratio(key: str) -> float:  # > 1: key is faster than two passes
        return statistics.median(t2 / t for t, t2 in zip(times[key], times["two"], strict=True))

    return {
        "one_pps": args.batch / statistics.median(times["one"]),
        "two_pps": args.batch / statistics.median(times["two"]),
        "ratio": ratio("one"),
        "control": statistics.median(t1 / t for t, t1 in zip(times["control"], times["one"], strict=True)),
        "best_one": min(times["one"]),
        "best_two": min(times["two"]),
        "best_ratio": min(times["two"]) / min(times["one"]),
        "best_control": min(times["one"]) / min(times["control"]),
        **memory,
        **{f"diff_{key}": value for key, value in diffs.items()},
    }


def report_passes(r: dict[str, float], args: argparse.Namespace) -> None:
    mib = 2**20
    print(
        f"## 1. Shared trunk: one pass on 2B images vs two passes of B  ({args.arch} + ScoreHead, AdamW, "
        f"batch {args.batch} pairs, {args.size}x{args.size}, train mode, {args.repeats} interleaved repeats)\n"
    )
    print("| measurement | one pass (2B) | two passes (B + B) | ratio one/two |")
    print("|---|---|---|---|")
    print(
        f"| training pairs/s | {r['one_pps']:.2f} | {r['two_pps']:.2f} | **{r['ratio']:.3f}** "
        f"(A/A control {r['control']:.3f}) |"
    )
    print(
        f"| best step (min over repeats) | {args.batch / r['best_one']:.2f} pairs/s | "
        f"{args.batch / r['best_two']:.2f} pairs/s | {r['best_ratio']:.3f} (A/A control {r['best_control']:.3f}) |"
    )
    print(
        f"| activations saved for backward | {r['one_saved'] / mib:.1f} MiB | {r['two_saved'] / mib:.1f} MiB "
        f"| {r['one_saved'] / r['two_saved']:.3f} |"
    )
    print(
        f"| peak live tensors in a step | {r['one_peak'] / mib:.1f} MiB | {r['two_peak'] / mib:.1f} MiB "
        f"| {r['one_peak'] / r['two_peak']:.3f} |"
    )
    rise = {key: r[f"{key}_peak"] - r[f"{key}_before"] for key in ("one", "two")}
    print(
        f"| peak rise above pre-step level | {rise['one'] / mib:.1f} MiB | {rise['two'] / mib:.1f} MiB "
        f"| {rise['one'] / rise['two']:.3f} |"
    )
    print(
        f"\nmax |logit one pass - logit two passes|, same weights: train mode {r['diff_train']:.3g} "
        f"(mean |logit| {r['diff_train_scale']:.3g}; BatchNorm batch statistics differ), "
        f"eval mode {r['diff_eval']:.3g} (running statistics)\n",
        flush=True,
    )


# ---------------------------------------------------------------------------- part 2


def _skimage_photo(name: str) -> Image.Image:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("part 2 needs scikit-image's bundled photographs: pip install scikit-image")
    with Image.open(Path(spec.submodule_search_locations[0]) / "data" / name) as image:
        return image.convert("RGB")


def write_triage(root: Path, args: argparse.Namespace) -> dict[str, float]:
    """Photo Triage layout under ``root``: ``args.series`` series of ``args.photos`` large JPEGs."""
    start = time.perf_counter()
    image_dir = root / "train_val" / "train_val_imgs"
    image_dir.mkdir(parents=True)
    rng = np.random.default_rng(args.seed)
    sources = [_skimage_photo(name) for name in SOURCES]
    long_side, short_side = args.photo_size, round(args.photo_size * 3 / 4)
    lines: dict[str, list[str]] = {"train": [], "val": []}
    n_val = max(1, args.series // 5)
    total_bytes = 0
    for series in range(1, args.series + 1):
        source = sources[(series - 1) % len(sources)]
        landscape = rng.random() < 0.7
        size = (long_side, short_side) if landscape else (short_side, long_side)
        width, height = source.size
        short = rng.uniform(0.5, 0.9) * min(width, height)
        window = (short * 4 / 3, short) if landscape else (short, short * 4 / 3)
        window = (min(window[0], width), min(window[1], height))
        left, top = rng.uniform(0, width - window[0]), rng.uniform(0, height - window[1])
        base = source.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + window[0], top + window[1]))
        pixels = np.asarray(base, dtype=np.float32)
        noise = rng.standard_normal(pixels.shape, dtype=np.float32) * 4.0  # sensor-like grain: photo-like JPEG sizes
        for photo in range(1, args.photos + 1):
            exposure = 2.0 ** rng.uniform(-0.4, 0.4)
            shifted = np.roll(noise, photo * 37, axis=(0, 1))
            member = np.clip(pixels * exposure + shifted, 0, 255).astype(np.uint8)
            path = image_dir / f"{series:06d}-{photo:02d}.JPG"
            Image.fromarray(member).save(path, quality=args.jpeg_quality)
            total_bytes += path.stat().st_size
        ranks = rng.permutation(args.photos) + 1  # 1 = best
        split = "val" if series > args.series - n_val else "train"
        for first, second in itertools.combinations(range(args.photos), 2):
            p_first = 1 / (1 + math.exp(-1.2 * (ranks[second] - ranks[first])))
            votes = int(rng.binomial(10, p_first))
            votes = votes if votes != 5 else (6 if ranks[first] < ranks[second] else 4)  # no ties
            lines[split].append(f"{series} {first + 1} {second + 1} {votes / 10:g} {ranks[first]} {ranks[second]}\n")
    for split, split_lines in lines.items():
        (root / "train_val" / f"{split}_pairlist.txt").write_text("".join(split_lines))
    photos = args.series * args.photos
    return {
        "seconds": time.perf_counter() - start,
        "photos": photos,
        "mean_kib": total_bytes / photos / 1024,
        "train_pairs": len(lines["train"]),
    }


class NoDraftLoader(_PhotoLoader):
    """The datamodule's photo loader with the JPEG ``draft()`` left out: full-size decode, then resize."""

    def content(self, path: str) -> Tensor:
        with Image.open(path) as image:
            image.load()
            return _resize_long_side(image, self.image_size)


def loader_rate(datamodule: PhotoTriageDataModule, batches: int, skip: int) -> tuple[float, float]:
    """(steady pairs/s from batch ``skip`` on, seconds to the first batch) of a fresh train loader."""
    loader = datamodule.train_dataloader()
    start = time.perf_counter()
    stamps: list[float] = []
    while len(stamps) < batches:
        for _ in loader:  # persistent workers: one iterator per epoch
            stamps.append(time.perf_counter())
            if len(stamps) == batches:
                break
    del loader
    pairs = datamodule.batch_size * (len(stamps) - 1 - skip)
    return pairs / (stamps[-1] - stamps[skip]), stamps[0] - start


def letterbox_ms(paths: list[str], size: int) -> tuple[float, float, float]:
    """Median ms of open + letterbox per photo with ``draft()``, without, and the median per-photo ratio."""

    def run(path: str, draft: bool) -> float:
        start = time.perf_counter()
        with Image.open(path) as image:
            if draft:
                image.draft("RGB", (size, size))
            image.load()
            letterbox(image, size)
        return time.perf_counter() - start

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    with_draft, without = [], []
    try:
        for i, path in enumerate(paths):
            for draft in (True, False) if i % 2 == 0 else (False, True):
                (with_draft if draft else without).append(run(path, draft))
    finally:
        torch.set_num_threads(threads)
    ratio = statistics.median(w / d for d, w in zip(with_draft, without, strict=True))
    return statistics.median(with_draft) * 1e3, statistics.median(without) * 1e3, ratio


def bench_loading(args: argparse.Namespace, device: torch.device) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_siamese_") as tmp:
        root = Path(tmp)
        data = write_triage(root, args)
        datamodule = PhotoTriageDataModule(
            root, image_size=args.data_size, batch_size=args.batch, num_workers=args.workers, augment=True, seed=0
        )
        datamodule.setup("fit")
        dataset = datamodule.train_dataset
        assert dataset is not None
        pps, first = loader_rate(datamodule, args.loader_batches, skip=2)
        draft_loader = dataset.loader
        dataset.loader = NoDraftLoader(args.data_size)
        pps_nodraft, _ = loader_rate(datamodule, args.loader_batches, skip=2)
        dataset.loader = draft_loader
        photos = sorted(str(p) for p in (root / "train_val" / "train_val_imgs").iterdir())[: args.letterbox_photos]
        lb = letterbox_ms(photos, args.data_size)
        batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=False)))
    batch = {key: batch[key].to(device) for key in ("a", "b", "ratio")}
    training = {}
    for arch in args.data_archs:
        model = make_ranker(arch, args.seed, device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for _ in range(args.data_warmup):
            train_step(model, optimizer, one_pass, batch)
        times = [timed_step(model, optimizer, one_pass, batch, device) for _ in range(args.data_steps)]
        training[arch] = args.batch / statistics.median(times)
        del model, optimizer
    return {
        "data": data,
        "pps": pps,
        "first": first,
        "pps_nodraft": pps_nodraft,
        "letterbox": lb,
        "letterbox_photos": len(photos),
        "train": training,
    }


def report_loading(r: dict, args: argparse.Namespace) -> None:
    d = r["data"]
    print(
        f"\n## 2. Data loading vs training consumption  (batch {args.batch} pairs, {args.data_size}x{args.data_size}, "
        f"{args.workers} loader workers, augment on)\n"
    )
    print(
        f"data: {d['photos']} photos of {args.photo_size}x{round(args.photo_size * 3 / 4)} "
        f"(JPEG q{args.jpeg_quality}, mean {d['mean_kib']:.0f} KiB), {d['train_pairs']} train pairs, "
        f"written in {d['seconds']:.1f} s\n"
    )
    print("| measurement | pairs/s | loader pairs/s / training pairs/s |")
    print("|---|---|---|")
    print(f"| loader, draft() on (the datamodule) | {r['pps']:.1f} | – |")
    print(f"| loader, draft() off | {r['pps_nodraft']:.1f} | – |")
    for arch, pps in r["train"].items():
        print(
            f"| training step {arch} | {pps:.2f} | **{r['pps'] / pps:.1f}** (draft off: {r['pps_nodraft'] / pps:.1f}) |"
        )
    with_draft, without, ratio = r["letterbox"]
    print(
        f"\nloader: first batch after {r['first']:.2f} s (worker start); draft() speeds the loader up "
        f"{r['pps'] / r['pps_nodraft']:.2f}x"
        f"\nopen + letterbox of one photo, main process, 1 thread: {with_draft:.1f} ms with draft(), {without:.1f} ms "
        f"without (median per-photo ratio {ratio:.2f}x, {r['letterbox_photos']} photos)\n",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads of the training steps (see the docstring)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8, help="pairs per batch (both parts)")
    group = parser.add_argument_group("part 1: one pass vs two")
    group.add_argument("--arch", default="resnet18")
    group.add_argument("--size", type=int, default=112, help="image side (the paper: 224)")
    group.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    group.add_argument("--repeats", type=int, default=12, help="timed steps per model")
    group = parser.add_argument_group("part 2: loading vs training")
    group.add_argument("--data-size", type=int, default=224, help="image side the loader and the step use")
    group.add_argument(
        "--data-archs", nargs="+", default=["resnet18", "resnet50"], help="resnet18, the fastest, is the tightest case"
    )
    group.add_argument("--photo-size", type=int, default=1600, help="long side of the written JPEGs (4:3)")
    group.add_argument("--jpeg-quality", type=int, default=92)
    group.add_argument("--series", type=int, default=40)
    group.add_argument("--photos", type=int, default=4, help="photos per series")
    group.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    group.add_argument("--loader-batches", type=int, default=24, help="batches read per loader measurement")
    group.add_argument("--letterbox-photos", type=int, default=16)
    group.add_argument("--data-warmup", type=int, default=1, help="untimed training steps per arch")
    group.add_argument("--data-steps", type=int, default=3, help="timed training steps per arch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.perf_counter()
    print(
        f"torch {torch.__version__}, {device.type.upper()}, intra-op threads: {torch.get_num_threads()}, "
        f"{torch.multiprocessing.cpu_count()} CPUs visible\n",
        flush=True,
    )
    if 1 in args.parts:
        report_passes(bench_passes(args, device), args)
    if 2 in args.parts:
        report_loading(bench_loading(args, device), args)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
