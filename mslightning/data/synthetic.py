"""An embedded, no-download multi-stream image dataset with controllable per-stream signal.

Every sample has one image per *stream* (``rgb``, ``depth``, ... as named by the user) and one
class label shared by all streams. Stream ``m`` of a sample with label ``y`` is

    ``x_m = signal_m * shift(prototype_m[y]) + noise * N(0, 1)``

where ``prototype_m[y]`` is a smooth, low-frequency random pattern (a 4x4 random grid upsampled
bilinearly) with zero mean and L2 norm :data:`PROTOTYPE_NORM` over its ``C * H * W`` values, and
``shift`` is a random translation of at most ``max_shift`` pixels. Fixing the norm of the whole
image (not the per-pixel amplitude) makes ``signal_m`` mean the same class separability whatever
``image_size`` and channel count: with the defaults, ``signal = 1`` is learnt by a ResNet-18 to
~95% validation accuracy in a few epochs, ``0.3`` only to ~40% (chance 25%). A stream with
``signal_m = 0`` is pure noise: it does not depend on the labels at all. Unequal signal
strengths make one stream learn fast and starve the other, which is the failure mode a
per-stream monitor must reveal.

An optional *train-only shortcut* adds a bright square to one stream whose position encodes the
label in the train split; in val/test the square is still there but at a position drawn
independently of the label. A head on that stream can then reach near-perfect train accuracy
while its validation accuracy stays near what the stream's real signal allows: overfitting on
purpose.

Everything is generated once in :meth:`SyntheticStreamsDataModule.setup` from ``seed``, into
in-memory tensors. Each split, stream and role draws from its own generator, seeded from a hash
of ``(seed, role, stream, split)``, so the data do not depend on which stage is set up first, and
adding a stream or resizing one split leaves the other streams and splits unchanged.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mslightning.data.transforms import JointTransform
from mslightning.streams import check_streams

__all__ = [
    "DEFAULT_SIGNAL",
    "PROTOTYPE_NORM",
    "StreamBatch",
    "StreamsTensorDataset",
    "SyntheticStreamsDataModule",
    "collate_streams",
    "stream_loader",
]

StreamBatch = tuple[dict[str, Tensor], Tensor]
"""The batch contract: ``(inputs, target)``.

``inputs`` maps each stream name to a float32 tensor of shape ``(B, C_m, H, W)`` (images) or
``(B, D_m)`` (a vector stream); ``target`` is an int64 tensor of shape ``(B,)`` holding class
indices in ``[0, num_classes)``.
"""

DEFAULT_SIGNAL: dict[str, float] = {"rgb": 0.3, "depth": 1.0}
"""Signal strengths used when ``signal`` is None: a weak RGB stream and a strong depth stream."""

_SPLITS = ("train", "val", "test")
# Side of the random grid a prototype is upsampled from: 4x4 keeps the patterns low-frequency,
# so small translations (``max_shift``) blur the class means without destroying them.
_PROTOTYPE_GRID = 4
_MIN_IMAGE_SIZE = 8
PROTOTYPE_NORM = 8.0
"""L2 norm of every class prototype over an image's ``C * H * W`` values, in noise units."""


def _derived_seed(*parts: object) -> int:
    """Return a 63-bit seed that is a deterministic hash of ``parts`` (``hash()`` is salted)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(_derived_seed(*parts))


def collate_streams(samples: list[StreamBatch]) -> StreamBatch:
    """Stack per-sample ``(inputs, target)`` pairs into one batch.

    ``torch.utils.data.default_collate`` turns tuples into lists; this keeps the tuple contract.

    Args:
        samples: ``B`` pairs of ``inputs`` (stream name -> ``(C_m, H, W)`` or ``(D_m,)``) and a
            scalar target.

    Returns:
        ``(inputs, target)`` with ``inputs[name]`` of shape ``(B, C_m, H, W)`` (or ``(B, D_m)``)
        and ``target`` of shape ``(B,)``.

    """
    names = samples[0][0].keys()
    inputs = {name: torch.stack([sample[0][name] for sample in samples]) for name in names}
    target = torch.stack([sample[1] for sample in samples])
    return inputs, target


class StreamsTensorDataset(Dataset):
    """In-memory multi-stream dataset over pre-built tensors.

    Args:
        inputs: Stream name -> float tensor of shape ``(N, C_m, H, W)`` (or ``(N, D_m)`` for a
            vector stream); all share ``N``.
        targets: Int64 class indices of shape ``(N,)``.
        with_targets: If False, items are the ``inputs`` dict alone (for prediction).
        transform: Applied to each sample's ``inputs`` dict (stream name -> ``(C_m, H, W)``),
            e.g. a :class:`~mslightning.data.transforms.JointTransform`; None for none.

    Raises:
        ValueError: If ``inputs`` is empty or a stream's first dimension differs from ``N``.

    """

    def __init__(
        self,
        inputs: Mapping[str, Tensor],
        targets: Tensor,
        with_targets: bool = True,
        transform: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
    ) -> None:
        if not inputs:
            raise ValueError("inputs must hold at least one stream, got an empty mapping.")
        for name, tensor in inputs.items():
            if tensor.shape[0] != targets.shape[0]:
                raise ValueError(f"Stream {name!r} has {tensor.shape[0]} samples but targets has {targets.shape[0]}.")
        self.inputs = dict(inputs)
        self.targets = targets
        self.with_targets = with_targets
        self.transform = transform

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, index: int) -> StreamBatch | dict[str, Tensor]:
        """Return ``(inputs, target)`` with ``(C_m, H, W)`` images (``(D_m,)`` vectors), or ``inputs`` alone."""
        sample = {name: tensor[index] for name, tensor in self.inputs.items()}
        if self.transform is not None:
            sample = self.transform(sample)
        if not self.with_targets:
            return sample
        return sample, self.targets[index]


def stream_loader(
    dataset: Dataset | None,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    drop_last: bool = True,
) -> DataLoader:
    """A DataLoader of ``(inputs, target)`` batches (:func:`collate_streams`), shared by the classification data.

    Args:
        dataset: The split's dataset; ``None`` means ``setup()`` has not run.
        batch_size: Samples per batch.
        shuffle: Shuffle (the training split), in the order ``generator`` draws.
        generator: Seeds the shuffling order.
        num_workers: DataLoader worker processes (kept alive between epochs when > 0).
        drop_last: Drop the incomplete last batch; applies only when shuffling (training).

    Returns:
        The DataLoader.

    Raises:
        RuntimeError: If ``dataset`` is ``None``.

    """
    if dataset is None:
        raise RuntimeError("Call setup() before requesting a dataloader.")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator if shuffle else None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate_streams,
        drop_last=shuffle and drop_last,
    )


class SyntheticStreamsDataModule(LightningDataModule):
    """N named streams of small synthetic images with per-stream class-signal strength.

    Batches from the train/val/test loaders are ``(inputs, target)`` (see :data:`StreamBatch`):
    ``inputs[name]`` is float32 ``(B, C_name, H, W)`` with ``H = W = image_size``, ``target`` is
    int64 ``(B,)``. The predict loader yields the test ``inputs`` dict alone. Link a model to the
    data with ``stream_channels`` and ``num_classes`` (``LightningCLI.link_arguments``).

    Args:
        streams: Stream name -> number of channels. Order is kept in every ``inputs`` dict.
        signal: Stream name -> class-signal strength ``>= 0``, in units of ``noise`` (see the
            module docstring: 1.0 is strong, 0.3 weak). Streams not listed get 1.0. None means :data:`DEFAULT_SIGNAL`
            (``rgb`` 0.3, ``depth`` 1.0) for the streams of those names. A stream at 0 carries
            no class information.
        num_classes: Number of classes (``>= 2``); labels are balanced in every split.
        image_size: Height and width of every image (``>= 8``).
        train_size: Number of training samples.
        val_size: Number of validation samples.
        test_size: Number of test samples (also the prediction set).
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        seed: Seed for all generated data and for the train shuffling order.
        noise: Standard deviation of the additive Gaussian noise (``>= 0``).
        max_shift: Largest random translation, in pixels, of a sample's prototype (``>= 0`` and
            ``< image_size // 2``); 0 disables it.
        shortcut_stream: Stream that receives the train-only shortcut, or None for none.
        shortcut_strength: Brightness added to the shortcut square, in noise units (``> 0``).
        drop_last: Drop the incomplete last training batch (a batch of one sample breaks
            BatchNorm in training: "Expected more than 1 value per channel").
        train_transform: Augmentation of the training samples, one geometry for all streams
            (:class:`~mslightning.data.transforms.JointTransform`); None (the default) for none.
            Validation and test samples are never augmented.

    Raises:
        ValueError: On any invalid argument; the message names it and its value.

    Example:
        >>> dm = SyntheticStreamsDataModule(train_size=64, val_size=32, test_size=32)
        >>> dm.setup("fit")
        >>> inputs, target = next(iter(dm.train_dataloader()))
        >>> {name: tuple(x.shape) for name, x in inputs.items()}, tuple(target.shape)
        ({'rgb': (32, 3, 32, 32), 'depth': (32, 1, 32, 32)}, (32,))

    """

    def __init__(
        self,
        # The literal default is never mutated (it is copied below) and shows up in `--help`.
        streams: dict[str, int] = {"rgb": 3, "depth": 1},  # noqa: B006
        signal: dict[str, float] | None = None,
        num_classes: int = 4,
        image_size: int = 32,
        train_size: int = 512,
        val_size: int = 256,
        test_size: int = 256,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        noise: float = 1.0,
        max_shift: int = 2,
        shortcut_stream: str | None = None,
        shortcut_strength: float = 2.0,
        drop_last: bool = True,
        train_transform: JointTransform | None = None,
    ) -> None:
        super().__init__()
        self._validate(
            streams, signal, num_classes, image_size, train_size, val_size, test_size,
            batch_size, num_workers, noise, max_shift, shortcut_stream, shortcut_strength,
        )  # fmt: skip
        if drop_last and train_size < batch_size:
            raise ValueError(
                f"train_size={train_size} is smaller than batch_size={batch_size}: with drop_last=True (the default, "
                "so that no training batch holds a single sample for BatchNorm) there would be no training batch. "
                "Lower batch_size or raise train_size."
            )
        if train_transform is not None:
            train_transform.check_streams(list(streams), "SyntheticStreamsDataModule.train_transform")
        self.train_transform = train_transform
        self.drop_last = drop_last
        self.save_hyperparameters(ignore=["train_transform"])
        self.stream_channels: dict[str, int] = dict(streams)
        self.signal: dict[str, float] = {
            name: float((signal if signal is not None else DEFAULT_SIGNAL).get(name, 1.0)) for name in streams
        }
        self.num_classes = num_classes
        self.image_size = image_size
        self.sizes: dict[str, int] = {"train": train_size, "val": val_size, "test": test_size}
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.noise = float(noise)
        self.max_shift = max_shift
        self.shortcut_stream = shortcut_stream
        self.shortcut_strength = float(shortcut_strength)
        self.train_set: StreamsTensorDataset | None = None
        self.val_set: StreamsTensorDataset | None = None
        self.test_set: StreamsTensorDataset | None = None

    @staticmethod
    def _validate(
        streams: dict[str, int],
        signal: dict[str, float] | None,
        num_classes: int,
        image_size: int,
        train_size: int,
        val_size: int,
        test_size: int,
        batch_size: int,
        num_workers: int,
        noise: float,
        max_shift: int,
        shortcut_stream: str | None,
        shortcut_strength: float,
    ) -> None:
        check_streams(streams, "streams")
        for name, strength in (signal or {}).items():
            if name not in streams:
                raise ValueError(f"signal names unknown stream {name!r}; streams are {list(streams)}.")
            if not strength >= 0:  # written so that NaN is rejected too
                raise ValueError(f"signal[{name!r}] must be >= 0, got {strength}.")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        if image_size < _MIN_IMAGE_SIZE:
            raise ValueError(f"image_size must be >= {_MIN_IMAGE_SIZE}, got {image_size}.")
        for arg, value in (
            ("train_size", train_size),
            ("val_size", val_size),
            ("test_size", test_size),
            ("batch_size", batch_size),
        ):
            if value < 1:
                raise ValueError(f"{arg} must be >= 1, got {value}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
        if not noise >= 0:
            raise ValueError(f"noise must be >= 0, got {noise}.")
        if not 0 <= max_shift < image_size // 2:
            raise ValueError(f"max_shift must be in [0, image_size // 2 = {image_size // 2}), got {max_shift}.")
        if shortcut_stream is not None:
            if shortcut_stream not in streams:
                raise ValueError(f"shortcut_stream {shortcut_stream!r} is not a stream; streams are {list(streams)}.")
            if not shortcut_strength > 0:
                raise ValueError(f"shortcut_strength must be > 0, got {shortcut_strength}.")
            cells = math.ceil(math.sqrt(num_classes))
            if image_size // cells < 2:
                raise ValueError(
                    f"image_size {image_size} is too small for a shortcut square per class: "
                    f"num_classes={num_classes} needs image_size >= {2 * cells}."
                )

    # ------------------------------------------------------------------ generation

    def _prototypes(self, name: str) -> Tensor:
        """Return the class patterns of a stream, ``(K, C, S + 2 * max_shift, S + 2 * max_shift)``."""
        size = self.image_size + 2 * self.max_shift
        grid = torch.randn(
            self.num_classes,
            self.stream_channels[name],
            _PROTOTYPE_GRID,
            _PROTOTYPE_GRID,
            generator=_generator("prototype", self.seed, name),
        )
        proto = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)
        proto = proto - proto.mean(dim=(-2, -1), keepdim=True)
        # A fixed L2 norm over an image's C*S*S values (rather than a fixed per-pixel amplitude)
        # keeps class separability, hence what `signal` means, independent of size and channels.
        rms = proto.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
        pixels = self.stream_channels[name] * self.image_size**2
        return proto / rms.clamp_min(1e-12) * (PROTOTYPE_NORM / math.sqrt(pixels))

    def _shortcut_boxes(self) -> list[tuple[int, int, int]]:
        """Return one square per class as ``(row, col, side)``, in non-overlapping grid cells."""
        cells = math.ceil(math.sqrt(self.num_classes))
        cell = self.image_size // cells
        side = max(1, cell // 2)
        offset = (cell - side) // 2
        return [((k // cells) * cell + offset, (k % cells) * cell + offset, side) for k in range(self.num_classes)]

    def _make_split(self, split: str, prototypes: dict[str, Tensor]) -> StreamsTensorDataset:
        n = self.sizes[split]
        s = self.image_size
        # Exactly balanced labels (counts differ by at most one), in random order.
        labels = torch.arange(n) % self.num_classes
        labels = labels[torch.randperm(n, generator=_generator("labels", self.seed, split))]
        inputs: dict[str, Tensor] = {}
        for name, channels in self.stream_channels.items():
            gen = _generator("samples", self.seed, name, split)
            span = 2 * self.max_shift + 1
            dy = torch.randint(span, (n,), generator=gen)
            dx = torch.randint(span, (n,), generator=gen)
            rows = (dy[:, None] + torch.arange(s))[:, None, :, None]  # (N, 1, S, 1)
            cols = (dx[:, None] + torch.arange(s))[:, None, None, :]  # (N, 1, 1, S)
            chans = torch.arange(channels)[None, :, None, None]  # (1, C, 1, 1)
            # Gather a per-sample S x S window from the padded prototype of the sample's class.
            shifted = prototypes[name][labels[:, None, None, None], chans, rows, cols]
            x = self.signal[name] * shifted
            x = x + self.noise * torch.randn(n, channels, s, s, generator=gen)
            if name == self.shortcut_stream:
                x = self._add_shortcut(x, labels, split)
            inputs[name] = x.float().contiguous()
        return StreamsTensorDataset(inputs, labels.long())

    def _add_shortcut(self, x: Tensor, labels: Tensor, split: str) -> Tensor:
        if split == "train":
            position = labels
        else:
            # Same squares, same frequencies, but placed independently of the label: the cue
            # exists in val/test and means nothing there.
            gen = _generator("shortcut", self.seed, split)
            position = torch.randint(self.num_classes, labels.shape, generator=gen)
        x = x.clone()
        for k, (row, col, side) in enumerate(self._shortcut_boxes()):
            x[position == k, :, row : row + side, col : col + side] += self.shortcut_strength
        return x

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, stage: str | None = None) -> None:
        """Generate all three splits once (whatever ``stage``), so they never depend on order.

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or None; ignored.

        """
        if self.train_set is not None:
            return
        prototypes = {name: self._prototypes(name) for name in self.stream_channels}
        self.train_set, self.val_set, self.test_set = (self._make_split(split, prototypes) for split in _SPLITS)
        self.train_set.transform = self.train_transform

    def _loader(self, dataset: StreamsTensorDataset | None, shuffle: bool) -> DataLoader:
        generator = _generator("shuffle", self.seed)
        return stream_loader(dataset, self.batch_size, shuffle, generator, self.num_workers, self.drop_last)

    def train_dataloader(self) -> DataLoader:
        """Return shuffled train batches ``(inputs, target)``; the order is seeded by ``seed``."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Return validation batches ``(inputs, target)`` in fixed order."""
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Return test batches ``(inputs, target)`` in fixed order."""
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Return the test batches ``(inputs, target)`` in fixed order (the targets go into the predictions file)."""
        return self._loader(self.test_set, shuffle=False)
