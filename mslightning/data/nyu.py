"""NYU Depth V2 scene classification (RGB + depth) from the labelled MATLAB file, read with h5py.

``nyu_depth_v2_labeled.mat`` (2.8 GB, https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html)
is a MATLAB v7.3 file, i.e. HDF5. MATLAB stores arrays column-major, so h5py sees every array
with its axes reversed:

============== ===================== =================== =========================================
MATLAB         h5py                   here                 meaning
============== ===================== =================== =========================================
``images``     ``(N, 3, W, H)`` uint8 ``(3, H, W)``        RGB, 480 x 640
``depths``     ``(N, W, H)`` float    ``(1, H, W)``        depth in metres (inpainted: no holes)
``sceneTypes`` ``(1, N)`` references  the class            one char array per image: ``"kitchen"``
``scenes``     ``(1, N)`` references  the room             ``"kitchen_0004"``: the room it was shot in
============== ===================== =================== =========================================

``labels``/``instances`` (per-pixel segmentation) are left untouched. Nothing is read in
``__init__``; the file is opened lazily in each process (DataLoader workers included) by
:class:`~mslightning.data.hdf5.LazyHDF5`, and a sample is two slab reads. ``cache=True`` reads
the samples in use into memory once instead (3.1 GB for all 1449 at full size: 1.3 GB of
images, 1.8 GB of float32 depths).

Class setups (:data:`NYU_CLASS_SETUPS`):

* ``"gupta10"`` — Gupta, Arbelaez & Malik, "Perceptual Organization and Recognition of Indoor
  Scenes from RGB-D Images", CVPR 2013: the nine most frequent scene types and ``others``.
* ``"scenes27"`` — every scene type of the file (:data:`NYU_SCENE_TYPES`, with the file's own
  spelling ``excercise_room``).

Splits: the official 795 / 654 train / test split from ``splits.mat`` (MATLAB v5: ``trainNdxs``,
``testNdxs``, 1-based), read from ``splits_path`` or found next to the data file; without it a
seeded split that keeps each room (``scenes``) on one side, stratified by class. There is no
official validation split: validation uses the test images unless ``val_fraction`` holds out
rooms of the training split (the choice is printed at setup).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm.auto import tqdm

from mslightning.data.hdf5 import LazyHDF5
from mslightning.data.photo_triage import IMAGENET_MEAN, IMAGENET_STD
from mslightning.data.synthetic import StreamBatch, _generator, stream_loader
from mslightning.data.transforms import JointTransform
from mslightning.modules.hparams import paths_as_strings

__all__ = [
    "NYU_CLASS_SETUPS",
    "NYU_SCENE_TYPES",
    "NYUDepthV2DataModule",
    "NYUDepthV2Dataset",
    "read_matlab_strings",
    "read_nyu_splits",
    "write_nyu_mat",
]

NYU_SCENE_TYPES: tuple[str, ...] = (
    "basement", "bathroom", "bedroom", "bookstore", "cafe", "classroom", "computer_lab", "conference_room",
    "dinette", "dining_room", "excercise_room", "foyer", "furniture_store", "home_office", "home_storage",
    "indoor_balcony", "kitchen", "laundry_room", "living_room", "office", "office_kitchen", "playroom",
    "printer_room", "reception_room", "student_lounge", "study", "study_room",
)  # fmt: skip
"""The 27 scene types of ``nyu_depth_v2_labeled.mat``, alphabetical, as spelt in the file."""

GUPTA10: tuple[str, ...] = (
    "bedroom", "kitchen", "living_room", "bathroom", "dining_room", "office", "home_office", "classroom", "bookstore",
    "others",
)  # fmt: skip

NYU_CLASS_SETUPS: dict[str, tuple[str, ...]] = {"gupta10": GUPTA10, "scenes27": NYU_SCENE_TYPES}
"""Class setup name -> class names in label order. In ``gupta10`` every other scene type is ``others``."""

DepthEncoding = Literal["metres", "inverse"]
_OFFICIAL_SIZES = (795, 654)
_DOWNLOAD = (
    "Download nyu_depth_v2_labeled.mat (2.8 GB) and splits.mat from "
    "https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html and give their paths "
    "(--data.init_args.path, --data.init_args.splits_path)."
)


def _is_reference(dtype: np.dtype) -> bool:
    """object references"""  # noqa: D400, D403, D415 - LazyHDF5.require quotes it in messages
    return h5py.check_ref_dtype(dtype) is not None


def read_matlab_strings(data: LazyHDF5, name: str) -> list[str]:
    """Decode a MATLAB v7.3 cell array of character arrays (as h5py sees it) into strings.

    MATLAB writes a cell array as a dataset of object references; each points to a ``uint16``
    (UTF-16 code units) array of shape ``(L, 1)``. An empty string is stored with the attribute
    ``MATLAB_empty``.

    Args:
        data: The open file.
        name: The cell array's dataset, e.g. ``"sceneTypes"``; shape ``(1, N)`` or ``(N, 1)``.

    Returns:
        The ``N`` strings in file order.

    Raises:
        ValueError: If the dataset is missing, is not a vector of references, or an entry is
            not a character array (file, dataset and entry named).
    """
    cells = data.require(name, dtype=_is_reference, what="a MATLAB cell array of strings")
    if cells.ndim != 2 or min(cells.shape) != 1:
        raise ValueError(f"{data.where(name)} has shape {cells.shape}, expected a (1, N) cell array of strings.")
    strings = []
    for index, reference in enumerate(np.asarray(cells[()]).reshape(-1)):
        if not isinstance(reference, h5py.Reference) or not reference:
            raise ValueError(f"{data.where(name)} entry {index} is not a reference to a character array.")
        target = data.file[reference]
        if target.attrs.get("MATLAB_empty", 0):
            strings.append("")
            continue
        codes = np.asarray(target[()])
        if codes.dtype.kind not in "ui":
            raise ValueError(
                f"{data.where(name)} entry {index} points to {codes.dtype} data, not a MATLAB character array."
            )
        strings.append("".join(map(chr, codes.reshape(-1))))
    return strings


def read_nyu_splits(path: str | Path, num_samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read the official train / test split of NYU Depth V2 from ``splits.mat`` (MATLAB v5).

    Args:
        path: ``splits.mat`` with ``trainNdxs`` and ``testNdxs``, 1-based image numbers.
        num_samples: The data file's image count, to check the numbers against; None skips it.

    Returns:
        ``(train, test)``: sorted 0-based int64 indices.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not a MATLAB v5 file, lacks ``trainNdxs``/``testNdxs``, or its
            numbers are not whole, repeat, overlap or fall outside ``1..num_samples``.
    """
    from scipy.io import loadmat  # scipy comes with scikit-image; imported here to keep import time down

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NYU split file '{path}' does not exist. {_DOWNLOAD}")
    try:
        content = loadmat(path)
    except Exception as error:  # scipy raises ValueError, TypeError, NotImplementedError (v7.3) ...
        raise ValueError(f"'{path}' is not a MATLAB v5 split file (expected trainNdxs/testNdxs): {error}") from error
    parts = []
    for key in ("trainNdxs", "testNdxs"):
        if key not in content:
            held = sorted(k for k in content if not k.startswith("__"))
            raise ValueError(f"'{path}' has no '{key}' (it holds {held}); expected NYU Depth V2's splits.mat.")
        numbers = np.asarray(content[key], dtype=np.float64).reshape(-1)
        if numbers.size == 0 or not np.all(numbers == np.round(numbers)) or numbers.min() < 1:
            raise ValueError(f"'{path}' {key} must hold 1-based image numbers, got {numbers[:5]}...")
        if num_samples is not None and numbers.max() > num_samples:
            raise ValueError(
                f"'{path}' {key} names image {int(numbers.max())}, but the data file has {num_samples} images."
            )
        indices = numbers.astype(np.int64) - 1
        if len(np.unique(indices)) != len(indices):
            raise ValueError(f"'{path}' {key} repeats image numbers.")
        parts.append(np.sort(indices))
    overlap = np.intersect1d(*parts)
    if overlap.size:
        raise ValueError(f"'{path}': images {(overlap[:5] + 1).tolist()} are in both trainNdxs and testNdxs.")
    return parts[0], parts[1]


def write_nyu_mat(
    path: str | Path,
    images: np.ndarray,
    depths: np.ndarray,
    scene_types: Sequence[str],
    rooms: Sequence[str] | None = None,
) -> Path:
    """Write a genuine MATLAB v7.3 file in the layout of ``nyu_depth_v2_labeled.mat`` (for tests and demos).

    Uses ``hdf5storage`` (in the ``dev`` extra), which writes what MATLAB writes: arrays
    column-major, strings as references to character arrays.

    Args:
        path: The ``.mat`` file to write.
        images: ``(N, H, W, 3)`` uint8 RGB images.
        depths: ``(N, H, W)`` float depth in metres.
        scene_types: ``N`` scene types, e.g. ``"kitchen"`` (see :data:`NYU_SCENE_TYPES`).
        rooms: ``N`` room names (``"kitchen_0004"``); None leaves ``scenes`` out.

    Returns:
        ``path``.

    Raises:
        ImportError: If ``hdf5storage`` is not installed.
        ValueError: If the arrays' shapes or counts disagree.
    """
    try:
        import hdf5storage
    except ImportError as error:  # pragma: no cover - a dev dependency
        raise ImportError("write_nyu_mat needs hdf5storage: pip install hdf5storage (or the dev extra).") from error
    images = np.asarray(images)
    depths = np.asarray(depths)
    n = images.shape[0]
    if images.ndim != 4 or images.shape[-1] != 3 or depths.shape != images.shape[:3]:
        raise ValueError(f"expected images (N, H, W, 3) and depths (N, H, W), got {images.shape} and {depths.shape}.")
    if len(scene_types) != n or (rooms is not None and len(rooms) != n):
        raise ValueError(f"expected {n} scene types and rooms, got {len(scene_types)} and {len(rooms or [])}.")

    def cell(strings: Sequence[str]) -> np.ndarray:
        array = np.empty((len(strings), 1), dtype=object)
        for index, text in enumerate(strings):
            array[index, 0] = str(text)
        return array

    content = {
        "images": np.ascontiguousarray(images.astype(np.uint8).transpose(1, 2, 3, 0)),  # MATLAB H x W x 3 x N
        "depths": np.ascontiguousarray(depths.astype(np.float32).transpose(1, 2, 0)),  # H x W x N
        "sceneTypes": cell(scene_types),
    }
    if rooms is not None:
        content["scenes"] = cell(rooms)
    hdf5storage.savemat(str(path), content, format="7.3", matlab_compatible=True, store_python_metadata=False)
    return Path(path)


class NYUDepthV2Dataset(Dataset):
    """Samples ``({"rgb": (3, H, W), "depth": (1, H, W)}, label)`` of NYU Depth V2, read lazily.

    RGB is scaled to [0, 1] and depth encoded (:attr:`NYUDepthV2DataModule.depth_encoding`)
    before ``transform`` (one geometry for both, :class:`~mslightning.data.transforms.JointTransform`);
    then each stream is standardised with ``(x - mean) / std``.

    Args:
        data: The file (opened lazily in each worker).
        indices: The file's image indices (0-based) of this split.
        labels: Class index per entry of ``indices``.
        transform: Joint transform of ``{"rgb", "depth"}``; None for none.
        depth_encoding: ``"metres"`` or ``"inverse"`` (1 / depth, metres clamped at ``min_depth``).
        min_depth: Smallest depth in metres before inversion (avoids 1 / 0 at holes).
        normalization: Stream -> ``(mean, std)`` per channel, applied last.
        cache: Stream -> in-memory arrays indexed like ``indices`` (images ``(n, 3, W, H)``
            uint8, depths ``(n, W, H)``), or None to read the file.
        with_targets: If False, items are the inputs dict alone.
        image_size: ``(H, W)`` that ``transform`` must return; None skips the check.

    Raises:
        ValueError: From ``__getitem__``: non-finite depth, or a ``transform`` whose output is
            not ``image_size`` (named, with the sizes).
    """

    def __init__(
        self,
        data: LazyHDF5,
        indices: Sequence[int],
        labels: Sequence[int],
        transform: JointTransform | None = None,
        depth_encoding: DepthEncoding = "metres",
        min_depth: float = 0.1,
        normalization: dict[str, tuple[Tensor, Tensor]] | None = None,
        cache: dict[str, np.ndarray] | None = None,
        with_targets: bool = True,
        image_size: tuple[int, int] | None = None,
    ) -> None:
        self.data = data
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.transform = transform
        self.depth_encoding = depth_encoding
        self.min_depth = min_depth
        self.normalization = normalization or {}
        self.cache = cache
        self.with_targets = with_targets
        self.image_size = tuple(image_size) if image_size is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def raw(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored arrays of entry ``position``: RGB ``(3, W, H)`` uint8 and depth ``(W, H)``, file axes."""
        if self.cache is not None:
            return self.cache["images"][position], self.cache["depths"][position]
        index = int(self.indices[position])
        return self.data.read("images", index), self.data.read("depths", index)

    def encode_depth(self, metres: Tensor) -> Tensor:
        """Depth in metres -> the stream's encoding (``"metres"`` unchanged, ``"inverse"`` 1 / depth)."""
        if self.depth_encoding == "inverse":
            return 1.0 / metres.clamp_min(self.min_depth)
        return metres

    def unnormalized(self, position: int) -> dict[str, Tensor]:
        """Entry ``position`` as float tensors before augmentation and standardisation.

        Returns:
            ``{"rgb": (3, H, W) in [0, 1], "depth": (1, H, W) encoded}``.

        Raises:
            ValueError: If the depth map holds a non-finite value (image number named).
        """
        image, depth = self.raw(position)
        # MATLAB's column-major (W, H) -> (H, W); the copy makes the tensors contiguous
        rgb = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 2, 1))).float().div_(255)
        if not np.isfinite(depth).all():
            raise ValueError(
                f"{self.data.where('depths')}: image {int(self.indices[position]) + 1} (1-based) holds "
                "non-finite depth."
            )
        metres = torch.from_numpy(np.ascontiguousarray(depth.T, dtype=np.float32))[None]
        return {"rgb": rgb, "depth": self.encode_depth(metres)}

    def standardise(self, sample: dict[str, Tensor]) -> dict[str, Tensor]:
        """``(x - mean) / std`` per channel of each stream in :attr:`normalization` (others unchanged).

        Args:
            sample: Stream name -> ``(C, H, W)``.

        Returns:
            The same dict, standardised.
        """
        for name, (mean, std) in self.normalization.items():
            sample[name] = (sample[name] - mean[:, None, None]) / std[:, None, None]
        return sample

    def __getitem__(self, position: int) -> StreamBatch | dict[str, Tensor]:
        """Return ``({"rgb": (3, H, W), "depth": (1, H, W)}, label)`` float32, or the inputs alone."""
        sample = self.unnormalized(position)
        if self.transform is not None:
            sample = self.transform(sample)
            size = tuple(sample["rgb"].shape[-2:])
            if self.image_size is not None and size != self.image_size:
                raise ValueError(
                    f"NYUDepthV2DataModule.train_transform returned {size[0]} x {size[1]} images, but the batches "
                    f"are image_size={self.image_size}: end its geometry with a crop or resize to image_size."
                )
        sample = self.standardise(sample)
        if not self.with_targets:
            return sample
        return sample, self.labels[position]


class NYUDepthV2DataModule(LightningDataModule):
    """RGB-D scene classification on NYU Depth V2 (``nyu_depth_v2_labeled.mat``), streams ``rgb`` and ``depth``.

    Batches are ``(inputs, target)`` (:data:`~mslightning.data.synthetic.StreamBatch`):
    ``inputs["rgb"]`` float32 ``(B, 3, H, W)``, ``inputs["depth"]`` float32 ``(B, 1, H, W)``
    with ``(H, W) = image_size``, ``target`` int64 ``(B,)``. The predict loader yields the test
    images. See the module docstring for the file layout, class setups and splits.

    Normalisation: RGB with ImageNet's mean and std (``rgb_statistics="imagenet"``, what
    pretrained trunks expect) or the training split's; depth, after its encoding, with the
    training split's mean and std. Training-split statistics are computed once (a pass over the
    training images, with a progress line) and kept in the datamodule's ``state_dict``, so a
    checkpoint evaluates with the statistics it was trained with.

    Augmentation (training only): ``train_transform``, or by default a random resized crop
    (scale 0.5-1) to ``image_size`` and a horizontal flip, applied with the same parameters to
    RGB and depth, and a colour jitter on RGB only. Evaluation images are resized to
    ``image_size``.

    Args:
        path: ``nyu_depth_v2_labeled.mat``.
        classes: ``"gupta10"`` or ``"scenes27"`` (:data:`NYU_CLASS_SETUPS`).
        splits_path: ``splits.mat``; None looks for ``splits.mat`` next to ``path`` and falls
            back to a seeded split when there is none.
        test_fraction: Share of images in the test split of a seeded split.
        val_fraction: Share of the training images (whole rooms) held out for validation;
            0 validates on the test split, as the literature does (there is no official one).
        seed: Seed of the seeded splits and of the shuffling order.
        image_size: ``(H, W)`` of the batches (the file's images are 480 x 640).
        depth_encoding: ``"metres"`` or ``"inverse"`` (1 / depth).
        min_depth: Depth in metres below which inverse depth is clamped.
        rgb_statistics: ``"imagenet"`` or ``"train"``.
        train_transform: A :class:`~mslightning.data.transforms.JointTransform` replacing the
            default augmentation; it sees RGB in [0, 1] and encoded depth at full size and must
            return ``image_size``.
        cache: Read the images of every split into memory at setup instead of per sample.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes (each opens the file itself).
        drop_last: Drop the incomplete last training batch.

    Raises:
        FileNotFoundError: If ``path`` (or a given ``splits_path``) is not a file; the message
            says what to download and where to give its path.
        ValueError: On any invalid argument (named with its value).

    Attributes:
        stream_channels: ``{"rgb": 3, "depth": 1}`` (linked to the model's ``streams``).
        num_classes: 10 or 27.
        class_names: The classes in label order.
    """

    def __init__(
        self,
        path: str | Path = "data/nyu_depth_v2_labeled.mat",
        classes: Literal["gupta10", "scenes27"] = "gupta10",
        splits_path: str | Path | None = None,
        test_fraction: float = 654 / 1449,
        val_fraction: float = 0.0,
        seed: int = 0,
        image_size: tuple[int, int] = (240, 320),
        depth_encoding: DepthEncoding = "metres",
        min_depth: float = 0.1,
        rgb_statistics: Literal["imagenet", "train"] = "imagenet",
        train_transform: JointTransform | None = None,
        cache: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        if classes not in NYU_CLASS_SETUPS:
            raise ValueError(f"classes must be one of {list(NYU_CLASS_SETUPS)}, got {classes!r}.")
        for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}.")
        if not test_fraction > 0:
            raise ValueError(f"test_fraction must be > 0, got {test_fraction!r}.")
        if len(image_size) != 2 or any(not isinstance(n, int) or n < 8 for n in image_size):
            raise ValueError(f"image_size must be (height, width), each an integer >= 8, got {image_size!r}.")
        if depth_encoding not in ("metres", "inverse"):
            raise ValueError(f"depth_encoding must be 'metres' or 'inverse', got {depth_encoding!r}.")
        if not min_depth > 0:
            raise ValueError(f"min_depth must be > 0 metres, got {min_depth!r}.")
        if rgb_statistics not in ("imagenet", "train"):
            raise ValueError(f"rgb_statistics must be 'imagenet' or 'train', got {rgb_statistics!r}.")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}.")
        if train_transform is not None:
            train_transform.check_streams(["rgb", "depth"], "NYUDepthV2DataModule.train_transform")
        # checked here, before a run directory is made; the file itself is opened lazily
        if not Path(path).is_file():
            raise FileNotFoundError(f"NYU Depth V2 file '{path}' does not exist. {_DOWNLOAD}")
        if splits_path is not None and not Path(splits_path).is_file():
            raise FileNotFoundError(f"NYU split file '{splits_path}' does not exist. {_DOWNLOAD}")
        self.save_hyperparameters(ignore=["train_transform"])
        paths_as_strings(self.hparams)  # a Path would make checkpoints refuse weights_only loads
        self.path = Path(path)
        self.classes = classes
        self.splits_path = Path(splits_path) if splits_path is not None else None
        self.test_fraction = test_fraction
        self.val_fraction = val_fraction
        self.seed = seed
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.depth_encoding: DepthEncoding = depth_encoding
        self.min_depth = float(min_depth)
        self.rgb_statistics = rgb_statistics
        self.train_transform = train_transform if train_transform is not None else self.default_train_transform()
        self.eval_transform = JointTransform(v2.Resize(self.image_size, antialias=True))
        self.cache = cache
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.stream_channels: dict[str, int] = {"rgb": 3, "depth": 1}
        self.class_names: list[str] = list(NYU_CLASS_SETUPS[classes])
        self.num_classes = len(self.class_names)
        self.data = LazyHDF5(self.path)
        self.splits: dict[str, np.ndarray] = {}
        self.labels: np.ndarray | None = None
        self.statistics: dict[str, tuple[list[float], list[float]]] = {}
        self._cache: dict[str, dict[str, np.ndarray]] = {}

    def default_train_transform(self) -> JointTransform:
        """The default augmentation: shared random resized crop and flip, colour jitter on RGB."""
        height, width = self.image_size
        return JointTransform(
            geometric=v2.Compose(
                [
                    v2.RandomResizedCrop(
                        self.image_size,
                        scale=(0.5, 1.0),
                        ratio=(0.9 * width / height, 1.1 * width / height),
                        antialias=True,
                    ),
                    v2.RandomHorizontalFlip(),
                ]
            ),
            photometric={"rgb": v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3)},
        )

    # ------------------------------------------------------------------ reading the file

    def _check_file(self) -> int:
        if not self.path.exists():
            raise FileNotFoundError(f"NYU Depth V2 file '{self.path}' does not exist. {_DOWNLOAD}")
        images = self.data.require(
            "images", shape=(None, 3, None, None), dtype="u", what="(N, 3, W, H) uint8, MATLAB H x W x 3 x N"
        )
        n, _, width, height = images.shape
        self.data.require(
            "depths", shape=(n, width, height), dtype="f", what=f"({n}, {width}, {height}) float metres like images"
        )
        if images.dtype != np.uint8:
            raise ValueError(f"{self.data.where('images')} has dtype {images.dtype}, expected uint8.")
        if min(width, height) < 8:
            raise ValueError(f"{self.data.where('images')} holds {height} x {width} images; expected at least 8 x 8.")
        return n

    def _scene_labels(self, n: int) -> np.ndarray:
        scene_types = read_matlab_strings(self.data, "sceneTypes")
        if len(scene_types) != n:
            raise ValueError(f"{self.data.where('sceneTypes')} names {len(scene_types)} scenes for {n} images.")
        unknown = sorted(set(scene_types) - set(NYU_SCENE_TYPES))
        if unknown:
            raise ValueError(
                f"{self.data.where('sceneTypes')} has scene types {unknown} that are not NYU Depth V2's 27: "
                f"{list(NYU_SCENE_TYPES)}."
            )
        names = self.class_names
        other = names.index("others") if "others" in names else None
        return np.array([names.index(s) if s in names else other for s in scene_types], dtype=np.int64)

    def _rooms(self, n: int) -> list[str]:
        """The room of each image: ``scenes`` without the letter of a repeated scan (``kitchen_0030b``)."""
        if not self.data.exists("scenes"):
            return [str(i) for i in range(n)]  # no room names: every image its own group
        rooms = read_matlab_strings(self.data, "scenes")
        if len(rooms) != n:
            raise ValueError(f"{self.data.where('scenes')} names {len(rooms)} rooms for {n} images.")
        # NYU names repeated scans of one place kitchen_0030a, kitchen_0030b: one room, near-duplicate images
        return [re.sub(r"(?<=\d)[a-z]$", "", room) for room in rooms]

    def _seeded_split(self, candidates: np.ndarray, rooms: list[str], fraction: float, role: str) -> np.ndarray:
        """Whole rooms of ``candidates`` in a seeded order, each class as near ``fraction`` as its rooms allow.

        A room is never divided, even when its images carry several classes: it counts towards the
        class most of its images have.
        """
        assert self.labels is not None
        by_room: dict[str, list[int]] = {}
        for index in candidates:
            by_room.setdefault(rooms[index], []).append(int(index))
        rooms_of_class: dict[int, list[str]] = {}
        for room, members in by_room.items():
            majority = Counter(self.labels[members].tolist()).most_common(1)[0][0]
            rooms_of_class.setdefault(majority, []).append(room)
        chosen: list[int] = []
        for label, class_rooms in sorted(rooms_of_class.items()):
            size = sum(len(by_room[room]) for room in class_rooms)
            order = torch.randperm(len(class_rooms), generator=_generator("nyu", role, self.seed, label)).tolist()
            target = fraction * size
            taken = 0
            for position in order:
                room = by_room[class_rooms[position]]
                closer = abs(taken + len(room) - target) < abs(taken - target)
                # never move a whole class: one image at least stays on the other side
                if closer and size - taken - len(room) >= 1:
                    chosen += room
                    taken += len(room)
        return np.sort(np.array(chosen, dtype=np.int64))

    def _official_split_path(self) -> Path | None:
        if self.splits_path is not None:
            return self.splits_path
        beside = self.path.with_name("splits.mat")
        return beside if beside.is_file() else None

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, stage: str | None = None) -> None:
        """Read the labels and fix the splits (once), and print the class counts per split.

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or None; all splits
                are fixed whatever the stage.

        Raises:
            FileNotFoundError: If the data file (or a given ``splits_path``) does not exist,
                with where to download it.
            ValueError: If the file is not NYU Depth V2's layout (missing dataset, wrong shape
                or dtype, unknown scene type; file and dataset named) or the split is empty.
        """
        if self.splits:
            return
        n = self._check_file()
        self.labels = self._scene_labels(n)
        rooms = self._rooms(n)
        split_file = self._official_split_path()
        if split_file is not None:
            train, test = read_nyu_splits(split_file, n)
            origin = f"official split '{split_file}'"
        else:
            test = self._seeded_split(np.arange(n), rooms, self.test_fraction, "test")
            train = np.setdiff1d(np.arange(n), test)
            origin = f"seeded split (seed {self.seed}, whole rooms; no splits.mat beside '{self.path}')"
        if self.val_fraction > 0:
            val = self._seeded_split(train, rooms, self.val_fraction, "val")
            train = np.setdiff1d(train, val)
            val_origin = f"{len(val)} training images (whole rooms) held out"
        else:
            val = test
            val_origin = "the test split (no official validation split)"
        for role, indices in (("train", train), ("val", val), ("test", test)):
            if len(indices) == 0:
                remedy = (
                    f"raise val_fraction={self.val_fraction}, or set it to 0 to validate on the test split"
                    if role == "val"
                    else "give splits_path, or data with more rooms per class"
                )
                raise ValueError(
                    f"NYUDepthV2DataModule: the {role} split of '{self.path}' is empty ({origin}). A seeded split "
                    f"keeps each room on one side and never moves a class's last room: {remedy}."
                )
        self.splits = {"train": train, "val": val, "test": test}
        if self.cache:
            self._cache = {role: self._read_into_memory(self.splits[role], role) for role in ("train", "test")}
            # validation on the test images shares their arrays instead of holding a second copy
            val = self.splits["val"]
            self._cache["val"] = self._cache["test"] if val is test else self._read_into_memory(val, "val")
        lines = [
            f"NYU Depth V2 '{self.path}': {n} images, {self.classes} classes, {origin}; validation = {val_origin}."
        ]
        for role in ("train", "val", "test"):
            counts = Counter(self.labels[self.splits[role]].tolist())
            listed = ", ".join(f"{name} {counts.get(k, 0)}" for k, name in enumerate(self.class_names))
            lines.append(f"  {role} ({len(self.splits[role])}): {listed}")
        rank_zero_info("\n".join(lines))

    def _read_into_memory(self, indices: np.ndarray, role: str) -> dict[str, np.ndarray]:
        rank_zero_info(f"NYU Depth V2: reading the {len(indices)} {role} images into memory ...")
        # h5py fancy indexing needs increasing indices; the splits are sorted
        return {name: self.data.read(name, np.s_[indices.tolist()]) for name in ("images", "depths")}

    def _dataset(
        self, role: str, transform: JointTransform | None, with_targets: bool = True, normalized: bool = True
    ) -> NYUDepthV2Dataset:
        if not self.splits or self.labels is None:
            raise RuntimeError("Call setup() before requesting a dataloader.")
        indices = self.splits[role]
        return NYUDepthV2Dataset(
            self.data,
            indices,
            self.labels[indices],
            transform,
            self.depth_encoding,
            self.min_depth,
            self.normalization() if normalized else None,
            self._cache.get(role),
            with_targets,
            self.image_size,
        )

    def normalization(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Stream -> per-channel ``(mean, std)`` the batches are standardised with.

        Computes the training split's statistics on first use (kept in :meth:`state_dict`).

        Returns:
            ``{"rgb": ((3,), (3,)), "depth": ((1,), (1,))}`` float32 tensors.
        """
        if not self.statistics:
            self.statistics = self._training_statistics()
        return {name: (torch.tensor(mean), torch.tensor(std)) for name, (mean, std) in self.statistics.items()}

    def _training_statistics(self) -> dict[str, tuple[list[float], list[float]]]:
        raw = self._dataset("train", None, normalized=False)
        sums: dict[str, Tensor] = {}
        squares: dict[str, Tensor] = {}
        count = 0
        progress = tqdm(
            range(len(raw)),
            desc="NYU Depth V2: training-split statistics",
            unit="image",
            disable=getattr(rank_zero_only, "rank", 0) != 0,
        )
        for position in progress:
            sample = raw.unnormalized(position)
            for name, x in sample.items():
                # float64 accumulators: a float32 sum over 10^8 pixels would lose the std's digits
                sums[name] = sums.get(name, 0) + x.sum(dim=(1, 2), dtype=torch.float64)
                squares[name] = squares.get(name, 0) + (x * x).sum(dim=(1, 2), dtype=torch.float64)
            count += sample["depth"][0].numel()
        statistics = {}
        for name in sums:
            mean = sums[name] / count
            std = (squares[name] / count - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-6)
            statistics[name] = (mean.float().tolist(), std.float().tolist())
        if self.rgb_statistics == "imagenet":
            statistics["rgb"] = (list(IMAGENET_MEAN), list(IMAGENET_STD))
        return {name: statistics[name] for name in ("rgb", "depth")}

    def state_dict(self) -> dict[str, object]:
        """The normalisation statistics (saved in checkpoints, so evaluation uses the training ones)."""
        if self.splits and not self.statistics:
            self.normalization()
        return {"statistics": self.statistics}

    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        """Restore the statistics of :meth:`state_dict`."""
        statistics = state_dict.get("statistics")
        if isinstance(statistics, dict) and statistics:
            self.statistics = {name: (list(mean), list(std)) for name, (mean, std) in statistics.items()}

    def _loader(self, dataset: NYUDepthV2Dataset, shuffle: bool) -> DataLoader:
        # a training split smaller than a batch still gives one batch
        drop_last = self.drop_last and len(dataset) > self.batch_size
        generator = _generator("shuffle", self.seed)  # stream_loader uses it only when shuffling
        return stream_loader(dataset, self.batch_size, shuffle, generator, self.num_workers, drop_last)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches ``(inputs, target)``."""
        return self._loader(self._dataset("train", self.train_transform), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches ``(inputs, target)``, resized to ``image_size``, fixed order."""
        return self._loader(self._dataset("val", self.eval_transform), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches ``(inputs, target)``, resized to ``image_size``, fixed order."""
        return self._loader(self._dataset("test", self.eval_transform), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test batches ``(inputs, target)`` (the targets go into the predictions file)."""
        return self._loader(self._dataset("test", self.eval_transform), shuffle=False)
