"""ConvGRU family: HDF5 window loading with DataLoader workers vs the training step's consumption.

Does :class:`~mslightning.data.RecordingsDataModule` (lazy per-process HDF5 handles, one session
per batch) deliver windows faster than a :class:`~mslightning.modules.ModulatedResponseModel`
training step consumes them? Measured in one run, as a ratio:

* data: :class:`~mslightning.data.SyntheticRecordingsDataModule` with the data settings of
  ``configs/convgru/synthetic.yaml`` (2 sessions of 32 and 20 neurons, 32x32 frames, ``--frames``
  bins per session, windows of 50 bins with a burn-in of 10, batch 8), written into a temporary
  directory (``path=``) and read back by ``RecordingsDataModule`` unchanged.
* loader: windows/s of ``train_dataloader()`` (shuffled, sessions interleaved, persistent
  workers), timed from the first batch's arrival to the last batch's, over ``--epochs`` passes of
  the same loader (one epoch is only ~26 batches), epoch boundaries included; the main process
  only consumes. With ``--workers`` processes (default 2, as in the config) and with 0 (reading in
  the main process) for reference. The first-batch latency (worker start, file open) is shown apart.
* training: windows/s of a training step -- forward, ``MaskedPoissonLoss`` after the burn-in,
  backward, AdamW step over the model's parameter groups (``configure_optimizers()``) -- of the
  model built as in ``configs/convgru/synthetic.yaml`` (``ResidualCore`` 16/32 channels, strides
  2/1, kernel 5; ``ConcatModulator`` 8/32; ``ConvGRU`` 32 hidden, kernel 3, gate GroupNorm 4,
  learnable h0; ``GaussianReadout``; AdamW lr 3e-3, weight decay 1e-2, readout lr 1e-2, no decay
  on norms and biases), on real batches from the loader held in memory, both sessions in turn.
  Also the module's whole ``training_step`` (adds the per-session metric updates and the
  behaviour running mean) for comparison.
* the ratio loader windows/s / training windows/s: above 1, loading never starves training. Both
  run on the same CPU cores one after the other; during real training the workers share the cores
  with the step (on a GPU machine they would not).

Run:  .venv/bin/python benchmarks/bench_recordings.py [--workers 2] [--epochs 4] [--steps 12]
      [--threads 1] [--frames 6000]

One intra-op thread for the training step by default, as in ``bench_siamese.py`` (on a shared
2-core machine 2 threads are slower and scattered); the loader workers use one thread each, as
DataLoader workers do.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import torch

from mslightning.data import SyntheticRecordingsDataModule
from mslightning.modules import ModulatedResponseModel
from mslightning.nn import ConcatModulator, ConvGRU, GaussianReadout, ResidualCore
from mslightning.optim import ParamGroup


def make_datamodule(path: Path, args: argparse.Namespace, workers: int) -> SyntheticRecordingsDataModule:
    """The data of ``configs/convgru/synthetic.yaml`` (``--frames`` bins per session) at ``path``."""
    datamodule = SyntheticRecordingsDataModule(
        path, seed=0, frames=args.frames, window=50, burn_in=10, batch_size=args.batch, num_workers=workers
    )
    datamodule.setup("fit")
    return datamodule


def data_links(datamodule: SyntheticRecordingsDataModule) -> dict:
    """What the CLI links from the data to the model."""
    return {
        "sessions": datamodule.sessions,
        "behaviour_dim": datamodule.behaviour_dim,
        "frame_size": datamodule.frame_size,
        "burn_in": datamodule.burn_in,
    }


def make_model(links: dict, seed: int) -> ModulatedResponseModel:
    """The model of ``configs/convgru/synthetic.yaml``, linked to the data as the CLI links it."""
    torch.manual_seed(seed)
    return ModulatedResponseModel(
        **links,
        core=partial(ResidualCore, channels=(16, 32), strides=(2, 1), kernel_size=5),
        modulator=partial(ConcatModulator, embedding_dim=8, hidden=32),
        recurrent=partial(ConvGRU, hidden_channels=32, kernel_size=3, gate_norm_groups=4, learnable_h0=True),
        readout=GaussianReadout,
        optimizer=partial(torch.optim.AdamW, lr=3e-3, weight_decay=1e-2),
        no_weight_decay_on_norm_and_bias=True,
        param_groups={"core": ParamGroup(), "modulator": ParamGroup(), "readout": ParamGroup(lr=1e-2)},
    ).train()


def loader_rate(datamodule: SyntheticRecordingsDataModule, epochs: int) -> tuple[float, float, int]:
    """(windows/s after the first batch, seconds to the first batch, batches) over ``epochs`` passes."""
    loader = datamodule.train_dataloader()
    start = time.perf_counter()
    stamps: list[float] = []
    windows: list[int] = []
    for _ in range(epochs):
        for batch in loader:  # persistent workers: one iterator per epoch, the workers stay
            stamps.append(time.perf_counter())
            windows.append(batch["stimulus"].shape[0])
    del loader
    return sum(windows[1:]) / (stamps[-1] - stamps[0]), stamps[0] - start, len(stamps)


def bare_step(model: ModulatedResponseModel, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    """Forward, masked Poisson loss after the burn-in, backward, AdamW step."""
    rates = model(batch["stimulus"], batch["behaviour"], batch["session"])
    loss = model.loss(rates, batch["responses"], batch["mask"])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def module_step(model: ModulatedResponseModel, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    """The module's own ``training_step`` (adds metric updates; ``self.log`` is a no-op without a Trainer)."""
    loss = model.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def training_rate(model, optimizer, step, batches: list[dict], warmup: int, steps: int) -> tuple[float, list[float]]:
    """(windows/s from the median step time, the step times); batches cycle so both sessions take turns."""
    for i in range(warmup):
        step(model, optimizer, batches[i % len(batches)])
    times = []
    for i in range(steps):
        batch = batches[i % len(batches)]
        start = time.perf_counter()
        step(model, optimizer, batch)
        times.append(time.perf_counter() - start)
    size = statistics.mean(b["stimulus"].shape[0] for b in batches)
    return size / statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (the config's 2)")
    parser.add_argument("--epochs", type=int, default=4, help="passes of the train loader per loader measurement")
    parser.add_argument("--frames", type=int, default=6000, help="bins per session (the config's 6000)")
    parser.add_argument("--batch", type=int, default=8, help="windows per batch (the config's 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the training step")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps")
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per variant")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(
        f"torch {torch.__version__}, CPU, intra-op threads of the training step: {torch.get_num_threads()}, "
        f"{torch.multiprocessing.cpu_count()} CPUs visible\n",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench_recordings_") as tmp:
        path = Path(tmp) / "recordings.h5"
        written = time.perf_counter()
        datamodule = make_datamodule(path, args, args.workers)
        written = time.perf_counter() - written
        size_mib = path.stat().st_size / 2**20
        train_windows = len(datamodule.datasets["train"])
        loader = {}
        for workers in (args.workers, 0):
            dm = datamodule if workers == args.workers else make_datamodule(path, args, workers)
            loader[workers] = loader_rate(dm, args.epochs)
            dm.teardown("fit")
        reference = make_datamodule(path, args, 0)
        by_session: dict[str, dict] = {}
        for batch in reference.train_dataloader():
            if batch["stimulus"].shape[0] == args.batch:  # full batches only (each session's last may be short)
                by_session.setdefault(batch["session"], batch)
            if len(by_session) == len(reference.sessions):
                break
        batches = list(by_session.values())
        links = data_links(reference)
        reference.teardown("fit")
    parameters = sum(p.numel() for p in make_model(links, args.seed).parameters())
    training = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        for name, step in (("bare", bare_step), ("module", module_step)):
            model = make_model(links, args.seed)
            optimizer = model.configure_optimizers()
            optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
            training[name] = training_rate(model, optimizer, step, batches, args.warmup, args.steps)

    shape = tuple(batches[0]["stimulus"].shape)
    print(
        f"data: 2 sessions {links['sessions']}, {args.frames} bins each, {links['frame_size']} frames, "
        f"{size_mib:.1f} MiB HDF5 written in {written:.1f} s; {train_windows} train windows of 50 bins "
        f"(burn-in 10), batch {args.batch} (stimulus {shape}); loader timed over {args.epochs} epochs\n"
        f"model: configs/convgru/synthetic.yaml ({parameters:,} parameters), AdamW over its parameter groups, "
        f"{args.steps} timed steps after {args.warmup} warm-up\n"
    )
    bare = training["bare"][0]
    print("| measurement | windows/s | loader / training step |")
    print("|---|---|---|")
    for workers, (wps, first, count) in loader.items():
        label = f"loader, {workers} workers" if workers else "loader, 0 workers (main process)"
        print(f"| {label} ({count} batches, first after {first:.2f} s) | {wps:.1f} | **{wps / bare:.1f}** |")
    for name, label in (("bare", "forward + loss + backward + AdamW"), ("module", "the module's training_step")):
        wps, times = training[name]
        print(
            f"| training step: {label} (median {statistics.median(times) * 1e3:.0f} ms, "
            f"min {min(times) * 1e3:.0f}, max {max(times) * 1e3:.0f}) | {wps:.1f} | – |"
        )
    print(
        f"\nwith the whole training_step: loader/training {loader[args.workers][0] / training['module'][0]:.1f} "
        f"({args.workers} workers), {loader[0][0] / training['module'][0]:.1f} (0 workers)"
    )
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
