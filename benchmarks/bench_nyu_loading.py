"""NYU Depth V2 loading (decode + joint augmentation at 240x320, 2 workers) vs the training step's consumption.

Does :class:`~mslightning.data.NYUDepthV2DataModule` (lazy per-process HDF5 handles on the
MATLAB v7.3 file) deliver RGB-D samples faster than the training step of
``configs/dual_stream/nyu_rgbd.yaml`` consumes them? Measured in one run, as a ratio:

* data: ``--images`` images at NYU's full 480 x 640, written with :func:`~mslightning.data.write_nyu_mat`
  (hdf5storage: the real file's layout, (N, 3, 640, 480) uint8 images and (N, 640, 480) float32
  depths as h5py sees them) into a temporary directory; random pixels (decoding cost does not
  depend on content), 27 scene types, one image per room.
* loader: images/s of ``train_dataloader()`` with the default augmentation (one random resized
  crop to 240 x 320 and flip for RGB and depth, colour jitter on RGB) and standardisation, over
  ``--epochs`` passes of the persistent loader, timed from the first batch's arrival to the last;
  the main process only consumes. With ``--workers`` processes (default 2) and 0 (main process),
  lazy reading and ``cache=True``.
* per-sample cost split: read (two HDF5 slab reads), decode (transpose, float, depth encoding),
  joint augmentation, standardisation; medians in the main process.
* training: images/s of a training step of the config's model (two ResNet-18 trunks, gated
  fusion, aux heads, AdamW over the rgb/depth/fusion/head groups) -- forward, loss, backward, step
  -- at 240 x 320 on real batches held in memory.
* the ratio loader images/s / training images/s: above 1, loading never starves training. Both
  run on the same CPU cores one after the other.

Run:  .venv/bin/python benchmarks/bench_nyu_loading.py [--images 160] [--workers 2] [--epochs 3]
      [--batch 16] [--steps 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch

from mslightning.data import NYU_SCENE_TYPES, NYUDepthV2DataModule, write_nyu_mat
from mslightning.modules import MultiStreamClassifier
from mslightning.nn import GatedFusion
from mslightning.optim import ParamGroup

SIZE = (240, 320)


def write_file(path: Path, images: int, seed: int) -> float:
    """A full-size file in the real layout; returns the seconds it took."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    scenes = [NYU_SCENE_TYPES[i % len(NYU_SCENE_TYPES)] for i in range(images)]
    rooms = [f"{scene}_{i:04d}" for i, scene in enumerate(scenes)]  # one image per room
    write_nyu_mat(
        path,
        rng.integers(0, 256, (images, 480, 640, 3), dtype=np.uint8),
        rng.uniform(0.7, 9.9, (images, 480, 640)).astype(np.float32),
        scenes,
        rooms,
    )
    return time.perf_counter() - start


def make_datamodule(path: Path, args: argparse.Namespace, workers: int, cache: bool) -> NYUDepthV2DataModule:
    """The data settings of ``configs/dual_stream/nyu_rgbd.yaml`` (batch and workers from the arguments)."""
    datamodule = NYUDepthV2DataModule(
        path, classes="scenes27", image_size=SIZE, batch_size=args.batch, num_workers=workers, cache=cache
    )
    datamodule.setup("fit")
    datamodule.normalization()  # the training statistics, once, before timing
    return datamodule


def loader_rate(datamodule: NYUDepthV2DataModule, epochs: int) -> tuple[float, float, int]:
    """(images/s after the first batch, seconds to the first batch, batches) over ``epochs`` passes."""
    loader = datamodule.train_dataloader()
    start = time.perf_counter()
    stamps: list[float] = []
    images: list[int] = []
    for _ in range(epochs):
        for inputs, _target in loader:
            stamps.append(time.perf_counter())
            images.append(inputs["rgb"].shape[0])
    del loader
    return sum(images[1:]) / (stamps[-1] - stamps[0]), stamps[0] - start, len(stamps)


def cost_split(datamodule: NYUDepthV2DataModule, samples: int) -> dict[str, float]:
    """Median milliseconds per sample of each stage, in the main process."""
    dataset = datamodule._dataset("train", datamodule.train_transform)
    stages: dict[str, list[float]] = {"read": [], "decode": [], "joint augmentation": [], "standardisation": []}
    for position in range(min(samples, len(dataset))):
        t0 = time.perf_counter()
        dataset.raw(position)
        t1 = time.perf_counter()
        sample = dataset.unnormalized(position)  # read again + decode
        t2 = time.perf_counter()
        sample = dataset.transform(sample)
        t3 = time.perf_counter()
        dataset.standardise(sample)
        t4 = time.perf_counter()
        stages["read"].append(t1 - t0)
        stages["decode"].append((t2 - t1) - (t1 - t0))
        stages["joint augmentation"].append(t3 - t2)
        stages["standardisation"].append(t4 - t3)
    return {name: statistics.median(times) * 1e3 for name, times in stages.items()}


def make_model(num_classes: int, seed: int) -> MultiStreamClassifier:
    """The model of ``configs/dual_stream/nyu_rgbd.yaml``."""
    torch.manual_seed(seed)
    cosine = partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=30)
    return MultiStreamClassifier(
        streams={"rgb": 3, "depth": 1},
        num_classes=num_classes,
        backbone="resnet18",
        fusion=GatedFusion,
        label_smoothing=0.1,
        dropout=0.3,
        optimizer=partial(torch.optim.AdamW, lr=1e-4, weight_decay=2e-2),
        param_groups={
            "rgb": ParamGroup(lr=5e-4, weight_decay=1e-3, scheduler=cosine),
            "depth": ParamGroup(lr=5e-5, weight_decay=5e-2, scheduler=cosine),
            "fusion": ParamGroup(scheduler=cosine),
            "head": ParamGroup(scheduler=cosine),
        },
    ).train()


def training_rate(args: argparse.Namespace, batches: list, num_classes: int) -> tuple[float, list[float], int]:
    """(images/s from the median step time, step times, parameters) of forward + loss + backward + AdamW."""
    model = make_model(num_classes, args.seed)
    configured = model.configure_optimizers()
    while not isinstance(configured, torch.optim.Optimizer):  # ([optimizer], [schedulers]) or a dict
        configured = configured["optimizer"] if isinstance(configured, dict) else configured[0]
    optimizer = configured
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        for i in range(args.warmup + args.steps):
            start = time.perf_counter()
            loss = model.training_step(batches[i % len(batches)], i)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    parameters = sum(p.numel() for p in model.parameters())
    return args.batch / statistics.median(times), times, parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=160, help="images in the file (NYU has 1449)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--epochs", type=int, default=3, help="passes of the train loader per loader measurement")
    parser.add_argument("--batch", type=int, default=16, help="images per batch")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads of the training step")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(
        f"torch {torch.__version__}, CPU, intra-op threads of the training step: {torch.get_num_threads()}, "
        f"{torch.multiprocessing.cpu_count()} CPUs visible\n",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench_nyu_") as tmp:
        path = Path(tmp) / "nyu_depth_v2_labeled.mat"
        written = write_file(path, args.images, args.seed)
        size_mib = path.stat().st_size / 2**20
        loader = {}
        for workers, cache in ((args.workers, False), (0, False), (args.workers, True), (0, True)):
            datamodule = make_datamodule(path, args, workers, cache)
            loader[workers, cache] = loader_rate(datamodule, args.epochs)
        reference = make_datamodule(path, args, 0, False)
        split = cost_split(reference, 24)
        batches = [batch for batch, _ in zip(reference.train_dataloader(), range(2), strict=False)]
        train_images = len(reference.splits["train"])
        num_classes = reference.num_classes
        reference.data.close()
    rate, times, parameters = training_rate(args, batches, num_classes)

    print(
        f"data: {args.images} images 480x640 in the real MATLAB v7.3 layout, {size_mib:.0f} MiB written in "
        f"{written:.1f} s; {train_images} training images, batches of {args.batch} at {SIZE[0]}x{SIZE[1]}; "
        f"loader timed over {args.epochs} epochs\n"
        f"model: configs/dual_stream/nyu_rgbd.yaml ({parameters:,} parameters), AdamW over its groups, "
        f"{args.steps} timed steps after {args.warmup} warm-up\n"
    )
    print("per sample (main process, median of 24): " + ", ".join(f"{k} {v:.1f} ms" for k, v in split.items()))
    print(f"  = {sum(split.values()):.1f} ms, i.e. {1e3 / sum(split.values()):.0f} images/s per process\n")
    print("| measurement | images/s | loader / training step |")
    print("|---|---|---|")
    for (workers, cache), (ips, first, count) in loader.items():
        label = f"loader, {workers} workers" if workers else "loader, 0 workers (main process)"
        label += ", cache=True" if cache else ", lazy HDF5 reads"
        print(f"| {label} ({count} batches, first after {first:.2f} s) | {ips:.1f} | **{ips / rate:.1f}** |")
    print(
        f"| training step: forward + loss + backward + AdamW (median {statistics.median(times) * 1e3:.0f} ms, "
        f"min {min(times) * 1e3:.0f}, max {max(times) * 1e3:.0f}) | {rate:.1f} | – |"
    )
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
