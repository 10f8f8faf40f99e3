"""Photo Triage pairs (Chang et al., "Automatic Triage for a Photo Series", SIGGRAPH 2016).

The official dataset (http://phototriage.cs.princeton.edu/: ``train_val.zip`` and ``test.zip``)
unpacks into a root directory laid out as::

    <root>/train_val/train_val_imgs/000012-03.JPG     series 12, photo 3 (%06d-%02d.JPG)
    <root>/train_val/train_pairlist.txt
    <root>/train_val/val_pairlist.txt
    <root>/test/test_imgs/...                         (optional)
    <root>/test/test_pairlist.txt                     (optional)

Each line of a pair list reads ``SERIES_ID PHOTO1_IND PHOTO2_IND PREF_RATIO_OF_PHOTO1 RANK1 RANK2``:
the fraction of annotators who preferred photo 1 to photo 2 (in ``[0, 1]``) and both photos' ranks
within their series (1 = best). Photo 1 is the better photo if and only if its ratio is above 0.5.
The rank columns are never used to decide which photo of a pair won: a public loader that did
mislabelled about a quarter of its pairs. Lines of 3 fields (the pairs alone, as some copies of the
test list are) or 4 fields (no ranks) are read too: their ratios or ranks are unknown.

:class:`PhotoTriageDataModule` checks everything in :meth:`~PhotoTriageDataModule.setup`, before
any training step: the lists, every photo they name, and that no series is in two splits. Pair
batches are :data:`PairBatch` dicts, prediction batches whole series (:data:`SeriesBatch`).
Images are letterboxed as in the paper (:func:`letterbox`): the long side resized to
``image_size``, the short side padded with the training set's mean colour, then normalised with the
ImageNet mean and standard deviation.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mslightning.modules.hparams import paths_as_strings

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PAD_COLOUR",
    "PairBatch",
    "PairRecord",
    "PhotoPairDataset",
    "PhotoSeriesDataset",
    "PhotoTriageDataModule",
    "SeriesBatch",
    "collate_series",
    "letterbox",
    "read_pair_list",
]

PairBatch = dict[str, Tensor]
"""The pair batch contract: a dict of ``B`` pairs of photos of one series each.

* ``"a"``, ``"b"``: float32 ``(B, 3, S, S)``, letterboxed (:func:`letterbox`) and normalised with
  :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD`;
* ``"ratio"``: float32 ``(B,)``, the fraction of annotators who preferred ``a`` to ``b``, in
  ``[0, 1]`` (``a`` won if and only if ``ratio > 0.5``; 0.5 is a tie);
* ``"series"``: int64 ``(B,)``, the series id;
* ``"index_a"``, ``"index_b"``: int64 ``(B,)``, the photos' indices as the pair list writes them;
* ``"rank_a"``, ``"rank_b"``: int64 ``(B,)``, the photos' ranks within their series (1 = best),
  -1 where the list gives none.
"""

SeriesBatch = dict[str, Tensor]
"""The prediction batch contract: whole series of photos, concatenated (:func:`collate_series`).

* ``"images"``: float32 ``(N, 3, S, S)``, prepared as in :data:`PairBatch`;
* ``"series"``, ``"index"``: int64 ``(N,)``, each photo's series id and index (as in the list);
* ``"rank"``: int64 ``(N,)``, each photo's rank within its series (1 = best), -1 where unknown.

The photos of one series are consecutive and in index order; a series is never split over batches.
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel mean subtracted from every image (RGB, in ``[0, 1]`` units)."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel standard deviation every image is divided by (RGB)."""
PAD_COLOUR = (0.460, 0.450, 0.430)
"""The Photo Triage training photos' mean colour (RGB, ``[0, 1]``): the letterbox padding, as in the paper."""

DOWNLOAD_HINT = (
    "Photo Triage is downloaded by hand from http://phototriage.cs.princeton.edu/: unzip train_val.zip "
    "(train/val photos and pair lists) and, for the test split, test.zip into root, so that "
    "root/train_val/train_val_imgs holds the photos (000001-01.JPG, ...)."
)
_TEST_HINT = (
    "The official test split comes in test.zip from http://phototriage.cs.princeton.edu/: unzip it into root "
    "(root/test/test_pairlist.txt, root/test/test_imgs)."
)
_PHOTO_NAME = re.compile(r"^(\d+)-(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)
_FORMAT = "SERIES_ID PHOTO1_IND PHOTO2_IND PREF_RATIO_OF_PHOTO1 RANK1 RANK2"
_FIELD_COUNTS = (3, 4, 6)  # pairs only (unlabelled test lists), ratio without ranks, the full format
_TIE_TOLERANCE = 1e-9
# Colour jitter of the training augmentation: brightness, contrast and saturation factors drawn
# uniformly in [1 - j, 1 + j], once per pair (both photos alike, so a pair's exposure difference,
# which is part of what makes one photo better, is kept).
_JITTER = 0.1
_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PairRecord:
    """One line of a pair list.

    Attributes:
        series: The series id.
        photo_a: Photo 1's index as the list writes it.
        photo_b: Photo 2's index as the list writes it.
        ratio: The fraction of annotators preferring photo 1, in ``[0, 1]``; NaN if the line has none.
        rank_a: Photo 1's rank within the series (1 = best); -1 if the line has none.
        rank_b: Photo 2's rank within the series; -1 if the line has none.
        line: The 1-based line number in the list, for messages.

    """

    series: int
    photo_a: int
    photo_b: int
    ratio: float
    rank_a: int
    rank_b: int
    line: int

    @property
    def labelled(self) -> bool:
        """Whether the line gives a preference ratio."""
        return not math.isnan(self.ratio)


def read_pair_list(path: str | Path, photo_index_base: int = 1) -> list[PairRecord]:
    """Parse a Photo Triage pair list.

    Blank lines and lines starting with ``#`` are skipped. Every other line must have 6 fields
    (``SERIES_ID PHOTO1_IND PHOTO2_IND PREF_RATIO_OF_PHOTO1 RANK1 RANK2``), 4 (no ranks) or 3
    (no ratio, no ranks), the same number on every line.

    Args:
        path: The pair list.
        photo_index_base: The index the list gives a series' first photo (1 in the official
            lists, where index 3 is file ``-03.JPG``); indices below it are errors.

    Returns:
        One :class:`PairRecord` per line, in file order (an empty file gives an empty list).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: On a malformed line: a wrong field count, a field that is not a number, a
            ratio outside ``[0, 1]``, a photo paired with itself, an index below
            ``photo_index_base`` or a rank below 1. The message names the file, the line and the value.

    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Pair list '{path}' does not exist{_looked_for(path)}.")
    records: list[PairRecord] = []
    first_count: tuple[int, int] | None = None  # (field count, line) of the first pair line
    with path.open(encoding="utf-8", errors="replace") as file:
        for number, text in enumerate(file, start=1):
            fields = text.split()
            if not fields or fields[0].startswith("#"):
                continue
            where = f"{path}:{number}"
            if len(fields) not in _FIELD_COUNTS:
                raise ValueError(
                    f"{where}: expected 6 whitespace-separated fields ({_FORMAT}), or 3 or 4 without ranks, "
                    f"got {len(fields)}: {text.strip()!r}."
                )
            if first_count is None:
                first_count = (len(fields), number)
            elif len(fields) != first_count[0]:
                raise ValueError(
                    f"{where}: {len(fields)} fields, but line {first_count[1]} has {first_count[0]}: every line of "
                    f"a pair list has the same fields ({_FORMAT})."
                )
            series, photo_a, photo_b = (
                _integer(value, name, where) for value, name in zip(fields[:3], _FORMAT.split()[:3], strict=True)
            )
            ratio = math.nan
            rank_a = rank_b = -1
            if len(fields) >= 4:
                ratio = _number(fields[3], "PREF_RATIO_OF_PHOTO1", where)
                if not 0.0 <= ratio <= 1.0:
                    raise ValueError(
                        f"{where}: PREF_RATIO_OF_PHOTO1 must be a fraction of annotators in [0, 1], got {fields[3]!r}."
                    )
            if len(fields) == 6:
                rank_a, rank_b = (_integer(fields[4], "RANK1", where), _integer(fields[5], "RANK2", where))
                for value, name in ((rank_a, "RANK1"), (rank_b, "RANK2")):
                    if value < 1:
                        raise ValueError(f"{where}: {name} is a rank within the series (1 = best), got {value}.")
            if series < 0:
                raise ValueError(f"{where}: SERIES_ID must be >= 0, got {series}.")
            for value, name in ((photo_a, "PHOTO1_IND"), (photo_b, "PHOTO2_IND")):
                if value < photo_index_base:
                    hint = (
                        f"; if this list numbers photos from {value}, pass photo_index_base={value}"
                        if value in (0, 1)
                        else ""
                    )
                    raise ValueError(
                        f"{where}: {name} {value} is below photo_index_base={photo_index_base} (the index of a "
                        f"series' first photo){hint}."
                    )
            if photo_a == photo_b:
                raise ValueError(f"{where}: the pair compares photo {photo_a} of series {series} with itself.")
            records.append(PairRecord(series, photo_a, photo_b, ratio, rank_a, rank_b, number))
    return records


def _integer(value: str, name: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{where}: {name} must be an integer, got {value!r}.") from None


def _number(value: str, name: str, where: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{where}: {name} must be a number, got {value!r}.") from None
    if math.isnan(number):
        raise ValueError(f"{where}: {name} must be a number, got {value!r}.")
    return number


def _looked_for(path: Path) -> str:
    return f" (looked for '{path.absolute()}')" if not path.is_absolute() else ""


# ---------------------------------------------------------------------------- images


def letterbox(image: Image.Image, size: int, fill: Sequence[float] = PAD_COLOUR) -> Tensor:
    """Resize an image's long side to ``size`` and pad it, centred, to a ``size x size`` square.

    The aspect ratio is kept (the short side is rounded, at least 1 pixel); the padding has the
    colour ``fill``. This is the paper's preprocessing before normalisation. For speed, open a
    large JPEG with ``image.draft("RGB", (size, size))`` before calling this (the datamodule
    does): the decoder then skips the detail the resize would throw away.

    Args:
        image: A PIL image of any mode (converted to RGB).
        size: The side of the square output, ``>= 1``.
        fill: The padding colour, RGB in ``[0, 1]``.

    Returns:
        A float32 tensor ``(3, size, size)`` in ``[0, 1]``.

    Raises:
        ValueError: If ``size < 1`` or ``fill`` is not 3 numbers in ``[0, 1]``.

    """
    return _pad_square(_resize_long_side(image, size), size, fill)


def _resize_long_side(image: Image.Image, size: int) -> Tensor:
    """Return ``image`` in RGB, long side resized to ``size``, as float32 ``(3, h, w)`` in ``[0, 1]``."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}.")
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    scale = size / max(width, height)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if target != image.size:
        image = image.resize(target, Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return pixels.permute(2, 0, 1).float().div_(255.0)


def _pad_square(content: Tensor, size: int, fill: Sequence[float]) -> Tensor:
    colour = [float(value) for value in fill]
    if len(colour) != 3 or not all(0.0 <= value <= 1.0 for value in colour):
        raise ValueError(f"fill must be 3 numbers (RGB) in [0, 1], got {tuple(fill)}.")
    height, width = content.shape[-2:]
    out = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1).repeat(1, size, size)
    top, left = (size - height) // 2, (size - width) // 2
    out[:, top : top + height, left : left + width] = content
    return out


def _open_photo(path: str, size: int) -> Image.Image:
    """Open a photo, letting a JPEG decode at the smallest DCT scale that keeps both sides >= ``size``."""
    try:
        image = Image.open(path)
        image.draft("RGB", (size, size))  # a no-op for other formats
        image.load()
    except OSError as err:
        raise ValueError(f"Photo '{path}' cannot be read as an image ({err}). Copy it again.") from err
    return image


def _jitter(content: Tensor, factors: Tensor) -> Tensor:
    """Scale brightness, contrast and saturation by ``factors`` (3,), as torchvision's ColorJitter does."""
    brightness, contrast, saturation = factors.tolist()
    out = (content * brightness).clamp_(0, 1)
    grey = (0.299 * out[0] + 0.587 * out[1] + 0.114 * out[2]).unsqueeze(0)
    out = ((out - grey.mean()) * contrast + grey.mean()).clamp_(0, 1)
    grey = (0.299 * out[0] + 0.587 * out[1] + 0.114 * out[2]).unsqueeze(0)
    return ((out - grey) * saturation + grey).clamp_(0, 1)


class _PhotoLoader:
    """Reads, letterboxes and normalises photos; picklable for DataLoader workers (paths only)."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def content(self, path: str) -> Tensor:
        return _resize_long_side(_open_photo(path, self.image_size), self.image_size)

    def finish(self, content: Tensor) -> Tensor:
        return (_pad_square(content, self.image_size, PAD_COLOUR) - self.mean) / self.std


class PhotoPairDataset(Dataset):
    """Pairs of photos, one :data:`PairBatch` item (unbatched) per pair.

    Args:
        records: The pairs; each must have a ratio (:attr:`PairRecord.labelled`).
        paths: ``(series, index as in the list) -> image file`` for every photo of ``records``.
        image_size: The side ``S`` of the square images.
        augment: Random horizontal flip of each photo on its own (p = 0.5) and a mild colour jitter
            (brightness, contrast and saturation factors in ``[0.9, 1.1]``) shared by the two photos
            of a pair, so their exposure difference is kept. Drawn from torch's global generator
            (seeded per DataLoader worker). Use it for training only.

    """

    def __init__(
        self,
        records: Sequence[PairRecord],
        paths: dict[tuple[int, int], str],
        image_size: int,
        augment: bool = False,
    ) -> None:
        self.records = list(records)
        self.paths = paths
        self.loader = _PhotoLoader(image_size)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PairBatch:
        record = self.records[index]
        a = self.loader.content(self.paths[record.series, record.photo_a])
        b = self.loader.content(self.paths[record.series, record.photo_b])
        if self.augment:
            flips = torch.rand(2) < 0.5
            a = a.flip(-1) if flips[0] else a
            b = b.flip(-1) if flips[1] else b
            factors = 1.0 + (torch.rand(3) * 2.0 - 1.0) * _JITTER
            a, b = _jitter(a, factors), _jitter(b, factors)
        return {
            "a": self.loader.finish(a),
            "b": self.loader.finish(b),
            "ratio": torch.tensor(record.ratio, dtype=torch.float32),
            "series": torch.tensor(record.series, dtype=torch.int64),
            "index_a": torch.tensor(record.photo_a, dtype=torch.int64),
            "index_b": torch.tensor(record.photo_b, dtype=torch.int64),
            "rank_a": torch.tensor(record.rank_a, dtype=torch.int64),
            "rank_b": torch.tensor(record.rank_b, dtype=torch.int64),
        }


class PhotoSeriesDataset(Dataset):
    """Whole series of photos, one :data:`SeriesBatch` item per series (batch them with :func:`collate_series`).

    Args:
        series: One entry per series: ``(series id, [(index, image file, rank), ...])`` with the
            photos in the order they should appear (rank -1 where unknown).
        image_size: The side ``S`` of the square images.

    """

    def __init__(self, series: Sequence[tuple[int, Sequence[tuple[int, str, int]]]], image_size: int) -> None:
        self.series = [(sid, list(photos)) for sid, photos in series]
        self.loader = _PhotoLoader(image_size)

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, index: int) -> SeriesBatch:
        series, photos = self.series[index]
        return {
            "images": torch.stack([self.loader.finish(self.loader.content(path)) for _, path, _ in photos]),
            "series": torch.full((len(photos),), series, dtype=torch.int64),
            "index": torch.tensor([photo for photo, _, _ in photos], dtype=torch.int64),
            "rank": torch.tensor([rank for _, _, rank in photos], dtype=torch.int64),
        }


def collate_series(items: Sequence[SeriesBatch]) -> SeriesBatch:
    """Concatenate whole series into one :data:`SeriesBatch` (photos ``N`` = the series' photos together).

    Args:
        items: Per-series dicts with ``"images"`` ``(n_i, 3, S, S)`` and ``"series"``, ``"index"``,
            ``"rank"`` ``(n_i,)``.

    Returns:
        The same keys, each concatenated along the first dimension.

    """
    return {key: torch.cat([item[key] for item in items]) for key in items[0]}


# ---------------------------------------------------------------------------- the datamodule


@dataclass
class _Split:
    """A split's pair list, read and checked, with what the filters left."""

    name: str
    list_path: Path
    image_dir: Path
    records: list[PairRecord]  # every line
    pairs: list[PairRecord]  # after the tie and agreement filters
    paths: dict[tuple[int, int], str]
    ties: int
    disagreement: int

    @property
    def series(self) -> set[int]:
        return {record.series for record in self.records}

    @property
    def labelled(self) -> bool:
        return self.records[0].labelled


class PhotoTriageDataModule(LightningDataModule):
    """Photo Triage pairs from the official layout under ``root``; series for prediction.

    Train, validation and test batches are :data:`PairBatch` dicts of ``batch_size`` pairs;
    prediction batches are :data:`SeriesBatch` dicts of ``series_per_batch`` whole series of
    ``predict_split``. Paths are relative to ``root`` unless absolute.

    :meth:`setup` reads and checks the pair lists of the stage (``fit``: train and val;
    ``validate``: val; ``test``: test; ``predict``: ``predict_split``) and every photo they name,
    and raises, before any training, on: a missing ``root``, list or image directory (saying
    where to download the data); a malformed line (file, line and value named); a photo index
    outside the photos its series has in the image directory, or a missing photo within them;
    conflicting ranks of one photo; an empty list, or one the filters empty (counting what each
    filter dropped); a series in two splits that read the same image directory (the official test
    split has its own directory and its own series numbers). It logs one line per split: series,
    photos, pairs, and the pairs each filter dropped. The datasets are then
    :attr:`train_dataset`, :attr:`val_dataset`, :attr:`test_dataset` and :attr:`predict_dataset`.

    Args:
        root: The directory ``train_val.zip`` (and ``test.zip``) were unpacked in.
        image_dir: The train/val photos, ``%06d-%02d.JPG`` (series, photo); ``.jpg``, ``.jpeg``
            and ``.png`` are read too.
        train_list: The training pair list.
        val_list: The validation pair list.
        test_list: The test pair list (``"test/test_pairlist.txt"`` for the official one), or
            None for no test split. A list without ratios (3 fields) can be predicted, not tested.
        test_image_dir: The test photos.
        image_size: Side ``S`` of the square images (long side resized, short side padded).
        batch_size: Pairs per batch.
        num_workers: DataLoader worker processes.
        ties: Pairs with a ratio of exactly 0.5: ``"drop"`` them, or keep them (``"soft"``) as a
            0.5 target.
        min_agreement: Keep only pairs whose majority share ``max(ratio, 1 - ratio)`` is at least
            this, in ``[0.5, 1]`` (0.5 keeps all). Applied, like ``ties``, to every pair split.
        augment: Augment training pairs (see :class:`PhotoPairDataset`); never val/test/predict.
        predict_split: The split whose series the predict loader yields.
        series_per_batch: Whole series per prediction batch.
        photo_index_base: The index the lists give a series' first photo: with 1 (official),
            index 3 is file ``-03.JPG``; with 0, index 3 is file ``-04.JPG``. Batches report
            indices as the lists write them.
        seed: Seed of the training shuffle order.
        pin_memory: Pin batches in page-locked memory; None means when CUDA is available.
        drop_last: Drop the incomplete last training batch (a batch of one pair can break
            BatchNorm); then the training split needs at least ``batch_size`` pairs.

    Raises:
        ValueError: On an invalid argument, naming it and its value.

    """

    def __init__(
        self,
        root: str | Path,
        image_dir: str = "train_val/train_val_imgs",
        train_list: str = "train_val/train_pairlist.txt",
        val_list: str = "train_val/val_pairlist.txt",
        test_list: str | None = None,
        test_image_dir: str = "test/test_imgs",
        image_size: int = 224,
        batch_size: int = 8,
        num_workers: int = 2,
        ties: Literal["drop", "soft"] = "drop",
        min_agreement: float = 0.5,
        augment: bool = True,
        predict_split: Literal["train", "val", "test"] = "val",
        series_per_batch: int = 4,
        photo_index_base: int = 1,
        seed: int = 0,
        pin_memory: bool | None = None,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("image_size", image_size, 1),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("series_per_batch", series_per_batch, 1),
            ("photo_index_base", photo_index_base, 0),
        ):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}.")
        if ties not in ("drop", "soft"):
            raise ValueError(f"ties must be 'drop' or 'soft', got {ties!r}.")
        if not 0.5 <= min_agreement <= 1.0:
            raise ValueError(
                f"min_agreement must be in [0.5, 1] (the majority's share of a pair's annotators), got {min_agreement}."
            )
        if predict_split not in _SPLITS:
            raise ValueError(f"predict_split must be one of {list(_SPLITS)}, got {predict_split!r}.")
        if predict_split == "test" and test_list is None:
            raise ValueError("predict_split='test' needs test_list (e.g. 'test/test_pairlist.txt'), which is None.")
        self.save_hyperparameters()
        paths_as_strings(self.hparams)  # a Path would make checkpoints refuse weights_only loads
        self.root = Path(root)
        self.image_dir = image_dir
        self.lists: dict[str, str | None] = {"train": train_list, "val": val_list, "test": test_list}
        self.image_dirs: dict[str, str] = {"train": image_dir, "val": image_dir, "test": test_image_dir}
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.ties = ties
        self.min_agreement = float(min_agreement)
        self.augment = augment
        self.predict_split = predict_split
        self.series_per_batch = series_per_batch
        self.photo_index_base = photo_index_base
        self.seed = seed
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.drop_last = drop_last
        self.splits: dict[str, _Split] = {}
        self._catalogues: dict[Path, dict[int, dict[int, str]]] = {}
        self.train_dataset: PhotoPairDataset | None = None
        self.val_dataset: PhotoPairDataset | None = None
        self.test_dataset: PhotoPairDataset | None = None
        self.predict_dataset: PhotoSeriesDataset | None = None

    # ------------------------------------------------------------------ setup

    def setup(self, stage: str | None = None) -> None:
        """Read and check the pair lists ``stage`` needs, and build its datasets.

        Args:
            stage: ``"fit"`` (train and val), ``"validate"``, ``"test"``, ``"predict"``, or None
                (train, val, and test when ``test_list`` is set).

        Raises:
            FileNotFoundError: If ``root``, a list, an image directory or a photo is missing.
            ValueError: On a malformed list, a photo outside its series, a series in two splits,
                a split with no pairs, or ``test_list`` None for the test stage.

        """
        needed = {
            "fit": ["train", "val"],
            "validate": ["val"],
            "test": ["test"],
            "predict": [self.predict_split],
            None: ["train", "val", *(["test"] if self.lists["test"] is not None else [])],
        }.get(stage)
        if needed is None:
            raise ValueError(f"stage must be 'fit', 'validate', 'test', 'predict' or None, got {stage!r}.")
        if stage == "test" and self.lists["test"] is None:
            raise ValueError(
                "The test stage needs test_list, which is None. The official test split is "
                "'test/test_pairlist.txt' with photos in 'test/test_imgs' (from test.zip)."
            )
        for name in needed:
            if name not in self.splits:
                self.splits[name] = self._read_split(name)
        self._check_disjoint()
        pair_stage = stage != "predict"
        for name in needed:
            split = self.splits[name]
            if pair_stage:
                self._check_pairs(split)
                dataset = PhotoPairDataset(
                    split.pairs, split.paths, self.image_size, augment=self.augment and name == "train"
                )
                setattr(self, f"{name}_dataset", dataset)
            else:
                self.predict_dataset = PhotoSeriesDataset(self._series_of(split), self.image_size)

    def _resolve(self, relative: str) -> Path:
        return self.root / relative

    def _read_split(self, name: str) -> _Split:
        if not self.root.is_dir():
            state = "is not a directory" if self.root.exists() else "does not exist"
            raise FileNotFoundError(f"Photo Triage root '{self.root}' {state}{_looked_for(self.root)}. {DOWNLOAD_HINT}")
        relative = self.lists[name]
        assert relative is not None  # setup() checked the test stage
        list_path = self._resolve(relative)
        option = f"{name}_list"
        if not list_path.is_file():
            hint = DOWNLOAD_HINT if name != "test" else _TEST_HINT
            raise FileNotFoundError(f"{option} '{list_path}' does not exist{_looked_for(list_path)}. {hint}")
        image_dir = self._resolve(self.image_dirs[name])
        option_dir = "test_image_dir" if name == "test" else "image_dir"
        if not image_dir.is_dir():
            raise FileNotFoundError(
                f"{option_dir} '{image_dir}' (the photos of {option} '{list_path}') does not exist"
                f"{_looked_for(image_dir)}. {DOWNLOAD_HINT}"
            )
        records = read_pair_list(list_path, self.photo_index_base)
        if not records:
            raise ValueError(f"{option} '{list_path}' holds no pairs (an empty list). Check the file or copy it again.")
        catalogue = self._catalogue(image_dir)
        paths = self._photo_paths(records, catalogue, list_path, image_dir, option_dir)
        _check_ranks(records, list_path)
        pairs, ties, disagreement = records, 0, 0
        if records[0].labelled:
            pairs, ties, disagreement = self._filter(records)
        photos = {(record.series, photo) for record in records for photo in (record.photo_a, record.photo_b)}
        series = {record.series for record in records}
        filters = f"ties dropped: {ties}, below min_agreement={self.min_agreement:g}: {disagreement}"
        labels = f"{len(pairs)} pairs ({filters})" if records[0].labelled else f"{len(pairs)} pairs without ratios"
        rank_zero_info(f"Photo Triage {name}: {len(series)} series, {len(photos)} photos, {labels} from '{list_path}'.")
        return _Split(name, list_path, image_dir, records, pairs, paths, ties, disagreement)

    def _catalogue(self, image_dir: Path) -> dict[int, dict[int, str]]:
        """Return ``series -> {file number -> path}`` for the photos in ``image_dir`` (listed once)."""
        key = image_dir.resolve()
        if key not in self._catalogues:
            catalogue: dict[int, dict[int, str]] = defaultdict(dict)
            with os.scandir(image_dir) as entries:
                for entry in entries:
                    match = _PHOTO_NAME.match(entry.name)
                    if match is None:
                        continue
                    series, number = int(match.group(1)), int(match.group(2))
                    other = catalogue[series].get(number)
                    if other is not None:
                        first, second = sorted((Path(other).name, entry.name))
                        raise ValueError(
                            f"'{image_dir}' holds two files for photo {number} of series {series}: {first} and "
                            f"{second}. Keep one."
                        )
                    catalogue[series][number] = os.path.join(key, entry.name)  # absolute: cwd may change
            self._catalogues[key] = dict(catalogue)
        return self._catalogues[key]

    def _photo_paths(
        self,
        records: list[PairRecord],
        catalogue: dict[int, dict[int, str]],
        list_path: Path,
        image_dir: Path,
        option_dir: str,
    ) -> dict[tuple[int, int], str]:
        """Map each photo of ``records`` to its file, or raise on the first photo that has none."""
        paths: dict[tuple[int, int], str] = {}
        outside: list[tuple[PairRecord, int]] = []
        missing: list[tuple[PairRecord, int]] = []
        seen: set[tuple[int, int]] = set()
        for record in records:
            for photo in (record.photo_a, record.photo_b):
                if (record.series, photo) in seen:
                    continue
                seen.add((record.series, photo))
                files = catalogue.get(record.series, {})
                number = photo - self.photo_index_base + 1
                if number in files:
                    paths[record.series, photo] = files[number]
                elif not files or not min(files) <= number <= max(files):
                    outside.append((record, photo))
                else:
                    missing.append((record, photo))
        if outside:
            record, photo = outside[0]
            files = catalogue.get(record.series, {})
            number = photo - self.photo_index_base + 1
            if files:
                low, high = min(files), max(files)
                offset = self.photo_index_base - 1
                has = (
                    f"its photos there are {low + offset}..{high + offset} "
                    f"({Path(files[low]).name} .. {Path(files[high]).name})"
                )
            else:
                has = f"it has no photo there (e.g. {record.series:06d}-{number:02d}.JPG)"
            hint = self._base_hint(outside, catalogue)
            raise ValueError(
                f"{list_path}:{record.line}: photo {photo} of series {record.series} is outside the series in "
                f"{option_dir} '{image_dir}': {has}.{_more(outside, 'Photos outside their series:')}{hint}"
            )
        if missing:
            record, photo = missing[0]
            name = f"{record.series:06d}-{photo - self.photo_index_base + 1:02d}.JPG"
            raise FileNotFoundError(
                f"{list_path}:{record.line}: photo {photo} of series {record.series} ({name}) is missing from "
                f"{option_dir} '{image_dir}', though the series' other photos are there."
                f"{_more(missing, 'Missing photos:')} Copy the photos again."
            )
        return paths

    def _base_hint(self, outside: list[tuple[PairRecord, int]], catalogue: dict[int, dict[int, str]]) -> str:
        """Suggest the other ``photo_index_base`` when every photo outside its series would fit with it."""
        for base in (0, 1):
            if base == self.photo_index_base:
                continue
            if all(photo - base + 1 in catalogue.get(record.series, {}) for record, photo in outside):
                return (
                    f" The photos all exist if the list numbers a series' first photo {base}: "
                    f"pass photo_index_base={base} (now {self.photo_index_base})."
                )
        return ""

    def _filter(self, records: list[PairRecord]) -> tuple[list[PairRecord], int, int]:
        """Apply ``ties`` and ``min_agreement``; return the pairs kept and how many each dropped."""
        kept: list[PairRecord] = []
        ties = disagreement = 0
        for record in records:
            tie = abs(record.ratio - 0.5) <= _TIE_TOLERANCE
            if tie and self.ties == "drop":
                ties += 1
            elif max(record.ratio, 1.0 - record.ratio) < self.min_agreement - _TIE_TOLERANCE:
                disagreement += 1
            else:
                kept.append(record)
        return kept, ties, disagreement

    def _check_pairs(self, split: _Split) -> None:
        option = f"{split.name}_list"
        if not split.labelled:
            raise ValueError(
                f"{option} '{split.list_path}' gives no preference ratios (3 fields per line, as the official "
                f"test_pairlist.txt): its pairs cannot be trained or evaluated. Rank its series with "
                f"predict_split='{split.name}' instead."
            )
        if not split.pairs:
            raise ValueError(
                f"{option} '{split.list_path}' has no pairs left after the filters: of its {len(split.records)} "
                f"lines, ties='{self.ties}' dropped {split.ties} (ratio 0.5) and min_agreement={self.min_agreement:g} "
                f"dropped {split.disagreement}. Use ties='soft' or a lower min_agreement."
            )
        if split.name == "train" and self.drop_last and len(split.pairs) < self.batch_size:
            raise ValueError(
                f"{option} '{split.list_path}' has {len(split.pairs)} pairs, fewer than batch_size={self.batch_size}: "
                "with drop_last=True (so that no training batch holds a single pair, for BatchNorm) there would be "
                "no training batch. Lower batch_size, or pass drop_last=False."
            )

    def _check_disjoint(self) -> None:
        """Raise if two splits that read the same image directory share a series."""
        names = [name for name in _SPLITS if name in self.splits]
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                a, b = self.splits[first], self.splits[second]
                if a.image_dir.resolve() != b.image_dir.resolve():
                    continue  # another directory, its own series numbers
                shared = sorted(a.series & b.series)
                if shared:
                    more = f" (and {len(shared) - 1} more: {_short(shared[1:])})" if len(shared) > 1 else ""
                    raise ValueError(
                        f"Series {shared[0]}{more} is in both the {first} list '{a.list_path}' and the {second} list "
                        f"'{b.list_path}': a series belongs to one split only, or {second} scores measure series "
                        f"seen in {first}. Split the lists by series."
                    )

    def _series_of(self, split: _Split) -> list[tuple[int, list[tuple[int, str, int]]]]:
        """The split's series, each with every photo its list names (all lines, before the filters)."""
        ranks: dict[tuple[int, int], int] = {}
        for record in split.records:
            ranks.setdefault((record.series, record.photo_a), record.rank_a)
            ranks.setdefault((record.series, record.photo_b), record.rank_b)
        by_series: dict[int, list[tuple[int, str, int]]] = defaultdict(list)
        for (series, photo), rank in sorted(ranks.items()):
            by_series[series].append((photo, split.paths[series, photo], rank))
        return sorted(by_series.items())

    # ------------------------------------------------------------------ loaders

    def _loader(
        self, dataset: Dataset | None, stage: str, shuffle: bool = False, batch_size: int | None = None, collate=None
    ) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"Call setup({stage!r}) before requesting its dataloader.")
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=collate,
            drop_last=shuffle and self.drop_last,
        )

    def train_dataloader(self) -> DataLoader:
        """Return shuffled, augmented :data:`PairBatch` batches of the train split."""
        return self._loader(self.train_dataset, "fit", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Return :data:`PairBatch` batches of the val split, in list order."""
        return self._loader(self.val_dataset, "validate")

    def test_dataloader(self) -> DataLoader:
        """Return :data:`PairBatch` batches of the test split, in list order."""
        return self._loader(self.test_dataset, "test")

    def predict_dataloader(self) -> DataLoader:
        """Return :data:`SeriesBatch` batches of ``series_per_batch`` whole series of ``predict_split``."""
        return self._loader(self.predict_dataset, "predict", batch_size=self.series_per_batch, collate=collate_series)


def _check_ranks(records: Iterable[PairRecord], list_path: Path) -> None:
    """Raise if a list gives one photo two different ranks."""
    seen: dict[tuple[int, int], tuple[int, int]] = {}
    for record in records:
        for photo, rank in ((record.photo_a, record.rank_a), (record.photo_b, record.rank_b)):
            first = seen.setdefault((record.series, photo), (rank, record.line))
            if first[0] != rank:
                raise ValueError(
                    f"{list_path}:{record.line}: photo {photo} of series {record.series} has rank {rank}, but line "
                    f"{first[1]} gives it rank {first[0]}: a photo has one rank within its series."
                )


def _more(items: list[tuple[PairRecord, int]], what: str) -> str:
    """`` (<what> N more, on lines ...)`` for the problems after the first, or nothing."""
    if len(items) <= 1:
        return ""
    lines = sorted({record.line for record, _ in items[1:]})
    return f" ({what} {len(items) - 1} more, on line{'s' if len(lines) > 1 else ''} {_short(lines)}.)"


def _short(items: Sequence[object], limit: int = 5) -> str:
    more = f", ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(str(item) for item in items[:limit]) + more
