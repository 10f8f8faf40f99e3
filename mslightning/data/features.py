"""Streams held as arrays in one ``.npz`` or HDF5 file: feature vectors, and images beside them.

Layout: one array per stream and a labels array, all with the same first axis ``N`` (the
samples), at the top level of the file (a ``numpy.savez`` archive, or the root group of an HDF5
file):

=================  ======================  ==========================================================
array              shape                   meaning
=================  ======================  ==========================================================
``<stream>``       ``(N, D)``              a vector stream: an audio or text embedding, per-expert
                                           features, any fixed-width vector (float or integer)
``<stream>``       ``(N, C, H, W)``        an image stream, beside the vectors in the same file
``labels``         ``(N,)`` integer        class indices in ``[0, num_classes)``
``split``          ``(N,)``, optional      0/1/2 or ``"train"``/``"val"``/``"test"`` per row
=================  ======================  ==========================================================

Without a split array, a seeded split *stratified by class* puts ``round(val_fraction * n_k)``
rows of each class ``k`` into val and ``round(test_fraction * n_k)`` into test (rounding half
up), the rest into train.

Features are small: :meth:`FeatureStreamsDataModule.setup` reads every stream array into memory
once (an HDF5 file through :class:`~mslightning.data.hdf5.LazyHDF5`, closed afterwards). The
constructor reads only the labels, the split and the arrays' shapes, so that ``stream_channels``
and ``num_classes`` are known before ``setup()`` (the CLI links them to the model).
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

from mslightning.data.hdf5 import LazyHDF5
from mslightning.data.recordings import SPLITS, split_codes
from mslightning.data.synthetic import StreamsTensorDataset, stream_loader
from mslightning.data.transforms import JointTransform
from mslightning.modules.hparams import paths_as_strings
from mslightning.streams import check_stream_name

__all__ = ["FeatureStreamsDataModule"]

_NPY_MAGIC = b"\x93NUMPY"
_STREAM_NDIMS = (2, 4)
_NUMERIC_KINDS = "fiub"


class _ArrayFile:
    """The top-level arrays of one ``.npz`` or HDF5 file: names, shapes and dtypes first, data on request.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is a directory, neither a ``.npz`` archive nor an HDF5 file, or an
            array's header cannot be read.

    """

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise FileNotFoundError(f"Feature file '{path}' does not exist.")
        if path.is_dir():
            raise ValueError(f"Feature file '{path}' is a directory; give the .npz or HDF5 file.")
        self.hdf5 = LazyHDF5(path) if h5py.is_hdf5(path) else None
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, np.dtype] = {}
        if self.hdf5 is not None:
            for name, node in self.hdf5.group("/").items():
                if isinstance(node, h5py.Dataset):
                    self.shapes[name], self.dtypes[name] = tuple(node.shape), node.dtype
            return
        if not zipfile.is_zipfile(path):
            with path.open("rb") as file:
                npy = file.read(len(_NPY_MAGIC)) == _NPY_MAGIC
            hint = (
                " It is a single .npy array: save every stream and the labels into one archive, "
                "np.savez(path, audio=..., labels=...)."
                if npy
                else ""
            )
            raise ValueError(
                f"Feature file '{path}' is neither a .npz archive (numpy.savez) nor an HDF5 file (or is truncated)."
                f"{hint}"
            )
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if member.endswith(".npy"):
                    name = member.removesuffix(".npy")
                    self.shapes[name], self.dtypes[name] = self._npy_header(archive, member, name)
        if not self.shapes:
            raise ValueError(f"Feature file '{path}' is a zip archive without .npy arrays, not a .npz (numpy.savez).")

    def _npy_header(self, archive: zipfile.ZipFile, member: str, name: str) -> tuple[tuple[int, ...], np.dtype]:
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        try:
            with archive.open(member) as file:
                version = np.lib.format.read_magic(file)
                if version in readers:
                    shape, _, dtype = readers[version](file)
                    return tuple(shape), dtype
            array = self.read(name)  # a newer .npy version: read it whole
            return array.shape, array.dtype
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{self.where(name)} cannot be read (corrupt?): {error}") from error

    def where(self, name: str) -> str:
        """``"'<file>' array '<name>'"`` (the HDF5 dataset path for an HDF5 file), for messages."""
        return self.hdf5.where(name) if self.hdf5 is not None else f"'{self.path}' array '{name}'"

    def read(self, name: str) -> np.ndarray:
        """The whole array ``name``."""
        if self.hdf5 is not None:
            return self.hdf5.read(name)
        if name in self.dtypes and self.dtypes[name].hasobject:
            raise ValueError(
                f"{self.where(name)} holds Python objects (saved with allow_pickle), which are never unpickled "
                "here: store numbers, and strings as a fixed-width str array (np.array([...], dtype=str))."
            )
        try:
            with np.load(self.path, allow_pickle=False) as archive:
                return archive[name]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{self.where(name)} cannot be read (corrupt?): {error}") from error

    def close(self) -> None:
        """Close the HDF5 handle, if any (a later read opens it again)."""
        if self.hdf5 is not None:
            self.hdf5.close()


def _stratified_codes(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test) that keep every class's share in each split."""
    rng = np.random.default_rng(seed)
    codes = np.zeros(labels.shape, dtype=np.uint8)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(test_fraction * rows.size + 0.5)
        n_val = min(int(val_fraction * rows.size + 0.5), rows.size - n_test)
        codes[rows[:n_test]] = 2
        codes[rows[n_test : n_test + n_val]] = 1
    return codes


class FeatureStreamsDataModule(LightningDataModule):
    """Streams from the arrays of one ``.npz`` or HDF5 file: vectors ``(N, D)`` and images ``(N, C, H, W)``.

    Batches from the train/val/test loaders are ``(inputs, target)``
    (:data:`~mslightning.data.synthetic.StreamBatch`): ``inputs[name]`` is float32 ``(B, D)``
    for a vector stream and ``(B, C, H, W)`` for an image stream, ``target`` is int64 ``(B,)``.
    The predict loader yields the test split's ``(inputs, target)``. Link a model with
    ``stream_channels`` (name -> ``D`` or ``C``) and ``num_classes``; give every vector stream
    a vector encoder in the model (``MultiStreamClassifier(encoders={"audio": MLPEncoder})``).

    The file's layout is in the module docstring. The constructor reads the labels, the split
    and the arrays' shapes and checks them; :meth:`setup` reads the stream arrays into memory,
    checks that every value is finite and standardises them.

    **Standardisation** (``standardize=True``): every stream is shifted and scaled by its mean and
    standard deviation (``ddof=0``) over the **training rows only**, per feature for a vector
    stream, per channel for an image stream; a feature that is constant in the training rows is
    centred, not scaled. The statistics are kept in :attr:`mean` and :attr:`std`, to apply to new
    data: ``(x - mean) / std``, and in :meth:`state_dict`, so a checkpoint evaluates a file
    (``validate``/``predict --ckpt_path``) with the statistics it was trained with.

    Args:
        path: The ``.npz`` (``numpy.savez``/``savez_compressed``) or HDF5 file.
        streams: The arrays that are streams, in order; ``None``: every top-level array except
            the labels and the split, in the file's order (an HDF5 file lists its arrays
            alphabetically). Array names must be valid stream names (letters, digits, ``_``, ``-``).
            A mapping name -> width (what :attr:`stream_channels` and ``hparams`` hold) names them
            too and checks each width (``D``, or ``C`` for images) against the file.
        labels_key: The labels array, ``(N,)`` integer class indices.
        split_key: The split array, used when the file holds it: ``(N,)`` codes 0 (train), 1
            (val), 2 (test) or the strings ``"train"``/``"val"``/``"test"``. ``None`` ignores it.
        num_classes: The class count K; ``None``: the largest label + 1.
        val_fraction: Share of each class's rows in val when the file has no split array.
        test_fraction: Share of each class's rows in test when the file has no split array.
        seed: Seed of that split and of the training order.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        standardize: Standardise every stream with training statistics (see above).
        drop_last: Drop the incomplete last training batch (a batch of one sample breaks
            BatchNorm in training); the training split must then hold at least ``batch_size`` rows.
        train_transform: Augmentation of the training samples
            (:class:`~mslightning.data.transforms.JointTransform`: one geometry for every image
            stream, applied after standardisation; vector streams pass through); None for none.
            Photometric transforms get standardised values here (a warning says so when
            ``standardize`` is on: torchvision's clamp them to [0, 1]).

    Attributes:
        stream_channels: Stream name -> ``D`` (vector) or ``C`` (image), in order.
        stream_shapes: Stream name -> the shape of one sample, ``(D,)`` or ``(C, H, W)``.
        num_classes: The class count K.
        split_rows: Split name -> the file's row indices in it, ascending.
        mean: After :meth:`setup` with ``standardize``: stream name -> float32 ``(D,)`` or ``(C,)``.
        std: Likewise, the divisor (1 where a feature is constant in the training rows).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: In the library's words, naming the file and the array: not a ``.npz`` or
            HDF5 file, no labels array, labels that are not ``(N,)`` non-negative integers or
            hold a single class, a ``streams`` entry that names no array (the message lists the
            file's arrays), a stream array that is not 2-D or 4-D, not numeric, or whose ``N``
            differs from the labels', a bad split value, an empty training split, a training
            split smaller than ``batch_size`` with ``drop_last``, or a bad argument. :meth:`setup`
            raises for a non-finite value, naming the stream and the first bad row.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> np.savez("features.npz", audio=rng.normal(size=(40, 16)), labels=np.arange(40) % 2)
        >>> dm = FeatureStreamsDataModule("features.npz", batch_size=8)
        >>> dm.stream_channels, dm.num_classes
        ({'audio': 16}, 2)

    """

    def __init__(
        self,
        path: str | Path,
        streams: list[str] | dict[str, int] | None = None,
        labels_key: str = "labels",
        split_key: str | None = "split",
        num_classes: int | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        standardize: bool = True,
        drop_last: bool = True,
        train_transform: JointTransform | None = None,
    ) -> None:
        super().__init__()
        self._validate(
            streams, labels_key, split_key, num_classes, val_fraction, test_fraction, batch_size, num_workers
        )
        self.save_hyperparameters(ignore=["train_transform"])
        paths_as_strings(self.hparams)  # a Path would make checkpoints refuse weights_only loads
        self.train_transform = train_transform
        self.path = Path(path)
        self.labels_key = labels_key
        self.split_key = split_key
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.standardize = standardize
        self.drop_last = drop_last
        self.mean: dict[str, Tensor] = {}
        self.std: dict[str, Tensor] = {}
        self.datasets: dict[str, StreamsTensorDataset] = {}

        self._file = _ArrayFile(self.path)
        try:
            self.labels = self._read_labels()
            self.num_classes = self._class_count(num_classes)
            names = self._stream_names(streams)
            self.stream_shapes: dict[str, tuple[int, ...]] = {name: self._check_stream(name) for name in names}
            self.stream_channels: dict[str, int] = {name: shape[0] for name, shape in self.stream_shapes.items()}
            if isinstance(streams, Mapping):
                self._check_widths(streams)
            self.split_rows = self._split_rows()
        finally:
            self._file.close()
        if train_transform is not None:
            train_transform.check_streams(list(self.stream_channels), "FeatureStreamsDataModule.train_transform")
            if train_transform.photometric and standardize:
                rank_zero_warn(
                    f"FeatureStreamsDataModule: photometric transforms for {list(train_transform.photometric)} "
                    "run on standardised values; torchvision's (ColorJitter, ...) expect [0, 1] images and clamp "
                    "to that range. Use standardize=False with images in [0, 1], or geometric transforms only."
                )
        # the hparams describe the data as the model sees it (Lightning logs the module's and the data's
        # hparams together and refuses keys that differ): the resolved streams and class count
        self.save_hyperparameters({"streams": dict(self.stream_channels), "num_classes": self.num_classes})

    @staticmethod
    def _validate(
        streams: list[str] | dict[str, int] | None,
        labels_key: str,
        split_key: str | None,
        num_classes: int | None,
        val_fraction: float,
        test_fraction: float,
        batch_size: int,
        num_workers: int,
    ) -> None:
        if streams is not None:
            if isinstance(streams, str) or not isinstance(streams, Sequence | Mapping) or not streams:
                raise ValueError(
                    f"streams must be a non-empty list of array names (or a mapping name -> width, or None for all), "
                    f"got {streams!r}."
                )
            repeated = sorted({name for name in streams if list(streams).count(name) > 1})
            if repeated:
                raise ValueError(f"streams names {repeated} more than once: {list(streams)}.")
            roles = [name for name in streams if name in (labels_key, split_key)]
            if roles:
                raise ValueError(f"streams {list(streams)} name the labels or split array {roles}.")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
            raise ValueError(f"num_classes must be an integer or None, got {num_classes!r}.")
        for arg, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise ValueError(f"{arg} must be in [0, 1), got {value!r}.")
        if not val_fraction + test_fraction < 1:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 (the rest is the training split), got "
                f"{val_fraction} + {test_fraction}."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}.")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers!r}.")

    # ------------------------------------------------------------------ reading and checking

    def _holds(self) -> str:
        return f"it holds {list(self._file.shapes)}"

    def _read_labels(self) -> np.ndarray:
        key = self.labels_key
        if key not in self._file.shapes:
            raise ValueError(
                f"'{self.path}' holds no labels array '{key}' (labels_key); {self._holds()}. The labels are (N,) "
                "integer class indices, e.g. np.savez(path, audio=features, labels=labels)."
            )
        shape, dtype = self._file.shapes[key], self._file.dtypes[key]
        if len(shape) != 1:
            raise ValueError(
                f"{self._file.where(key)} has shape {shape}; labels are (N,) class indices (one per row: "
                "labels.reshape(-1) for an (N, 1) column, labels.argmax(1) for one-hot rows)."
            )
        if dtype.kind not in "iu":
            raise ValueError(
                f"{self._file.where(key)} has dtype {dtype}; labels are integer class indices in [0, num_classes) "
                "(convert them, e.g. labels.astype(np.int64), or map class names to indices)."
            )
        labels = np.asarray(self._file.read(key)).astype(np.int64)
        if labels.size == 0:
            raise ValueError(f"{self._file.where(key)} is empty: the file holds no samples.")
        negative = np.flatnonzero(labels < 0)
        if negative.size:
            row = negative[0]
            raise ValueError(
                f"{self._file.where(key)} holds {labels[row]} at row {row} ({negative.size} row(s) in all); labels "
                "are class indices >= 0 (drop unlabelled rows, e.g. those marked -1)."
            )
        return labels

    def _class_count(self, num_classes: int | None) -> int:
        largest = int(self.labels.max())
        if num_classes is None:
            if largest < 1:
                raise ValueError(
                    f"{self._file.where(self.labels_key)} holds the single class 0: classification needs two or more."
                )
            return largest + 1
        if num_classes < 2 or num_classes <= largest:
            raise ValueError(
                f"num_classes={num_classes}, but {self._file.where(self.labels_key)} holds labels up to {largest}: "
                f"num_classes must be >= 2 and above every label (or None: {max(largest + 1, 2)})."
            )
        return num_classes

    def _check_widths(self, streams: Mapping[str, int]) -> None:
        for name, width in streams.items():
            if width != self.stream_channels[name]:
                raise ValueError(
                    f"streams[{name!r}] = {width!r}, but {self._file.where(name)} has shape "
                    f"{self._file.shapes[name]}: {self.stream_channels[name]} per sample."
                )

    def _stream_names(self, streams: list[str] | dict[str, int] | None) -> list[str]:
        if streams is None:
            names = [name for name in self._file.shapes if name not in (self.labels_key, self.split_key)]
            if not names:
                raise ValueError(f"'{self.path}' holds no stream array besides the labels; {self._holds()}.")
        else:
            names = list(streams)
            absent = [name for name in names if name not in self._file.shapes]
            if absent:
                raise ValueError(
                    f"streams {absent} name no array of '{self.path}'; {self._holds()}. Give the names of its "
                    "stream arrays (or streams: null for every array except the labels and the split)."
                )
        for name in names:
            check_stream_name(name, f"'{self.path}' (an array's name is its stream's name)")
        return names

    def _check_stream(self, name: str) -> tuple[int, ...]:
        shape, dtype = self._file.shapes[name], self._file.dtypes[name]
        where = self._file.where(name)
        if len(shape) not in _STREAM_NDIMS:
            hint = {
                1: " (a single feature per sample is (N, 1): x[:, None])",
                3: " (grey images: add the channel axis, x[:, None])",
            }.get(len(shape), "")
            raise ValueError(f"{where} has shape {shape}; a stream is (N, D) vectors or (N, C, H, W) images{hint}.")
        if dtype.kind not in _NUMERIC_KINDS:
            raise ValueError(f"{where} has dtype {dtype}; a stream holds numbers (float or integer).")
        if shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"{where} has {shape[0]} rows but the labels '{self.labels_key}' {self.labels.shape[0]}: every "
                "stream array holds one row per sample, in the labels' order."
            )
        if 0 in shape[1:]:
            raise ValueError(f"{where} has shape {shape}: a sample of it holds no value.")
        return tuple(shape[1:])

    def _split_rows(self) -> dict[str, np.ndarray]:
        key = self.split_key
        if key is not None and key in self._file.shapes:
            if self._file.shapes[key] != self.labels.shape:
                raise ValueError(
                    f"{self._file.where(key)} has shape {self._file.shapes[key]}; the split is (N,) with N = "
                    f"{self.labels.shape[0]} (the labels' rows)."
                )
            codes = split_codes(np.asarray(self._file.read(key)), self._file.where(key), "row", "row(s)")
            self._split_origin = f"split by the split array {self._file.where(key)}"
        else:
            codes = _stratified_codes(self.labels, self.val_fraction, self.test_fraction, self.seed)
            self._split_origin = (
                f"split by val_fraction={self.val_fraction} and test_fraction={self.test_fraction} of "
                f"{self.labels.size} rows, per class"
            )
        rows = {split: np.flatnonzero(codes == code) for code, split in enumerate(SPLITS)}
        if rows["train"].size == 0:
            raise ValueError(f"'{self.path}': the training split is empty ({self._split_origin}).")
        if self.drop_last and rows["train"].size < self.batch_size:
            raise ValueError(
                f"'{self.path}': the training split holds {rows['train'].size} rows, fewer than "
                f"batch_size={self.batch_size}: with drop_last=True (the default, so that no training batch holds a "
                "single sample for BatchNorm) there would be no training batch. Lower batch_size."
            )
        return rows

    def _read_stream(self, name: str) -> np.ndarray:
        """The stream as float32, after checking that every value is finite (naming the first bad row)."""
        array = np.asarray(self._file.read(name))
        if array.dtype.kind == "f":
            finite = np.isfinite(array.reshape(array.shape[0], -1))
            bad = np.flatnonzero(~finite.all(axis=1))
            if bad.size:
                row = bad[0]
                value = array.reshape(array.shape[0], -1)[row][~finite[row]][0]
                raise ValueError(
                    f"{self._file.where(name)}: stream '{name}' holds a non-finite value ({value}) at row {row} "
                    f"({bad.size} row(s) in all); clean or drop those rows before training."
                )
        return array.astype(np.float32)

    def _standardise(self, name: str, array: np.ndarray) -> np.ndarray:
        if name not in self.mean:  # else restored from a checkpoint (load_state_dict)
            train = array[self.split_rows["train"]].astype(np.float64)
            axes = (0,) if array.ndim == 2 else (0, 2, 3)  # per feature / per channel
            std = train.std(axis=axes)
            std[std == 0] = 1.0  # a constant feature is centred, not scaled
            self.mean[name] = torch.from_numpy(train.mean(axis=axes).astype(np.float32))
            self.std[name] = torch.from_numpy(std.astype(np.float32))
        shape = (1, -1) if array.ndim == 2 else (1, -1, 1, 1)
        mean, std = (self.mean[name].double().numpy(), self.std[name].double().numpy())
        return ((array - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """The standardisation statistics (saved in checkpoints: evaluation standardises as training did).

        Returns:
            ``{"mean": {stream: [...]}, "std": {stream: [...]}}``, plain lists.
        """
        return {
            "mean": {name: value.tolist() for name, value in self.mean.items()},
            "std": {name: value.tolist() for name, value in self.std.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Standardise with the statistics of :meth:`state_dict` (re-reading the file if set up already).

        Args:
            state_dict: What :meth:`state_dict` returned, e.g. from the checkpoint of the training run.
        """
        mean, std = state_dict.get("mean") or {}, state_dict.get("std") or {}
        if not mean:
            return
        self.mean = {name: torch.tensor(value, dtype=torch.float32) for name, value in mean.items()}
        self.std = {name: torch.tensor(value, dtype=torch.float32) for name, value in std.items()}
        if self.datasets:  # Lightning restores after setup(): standardise the arrays again
            self.datasets = {}
            self.setup()

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, stage: str | None = None) -> None:
        """Read every stream into memory once (whatever ``stage``), check it, standardise it, split it.

        Logs one line with the class counts of every split.

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or None; ignored.

        Raises:
            ValueError: If a stream holds a non-finite value (the stream and its first bad row named).

        """
        if self.datasets:
            return
        arrays = {}
        try:
            for name in self.stream_channels:
                array = self._read_stream(name)
                arrays[name] = self._standardise(name, array) if self.standardize else array
        finally:
            self._file.close()
        labels = torch.from_numpy(self.labels)
        for split, rows in self.split_rows.items():
            index = torch.from_numpy(rows)
            inputs = {name: torch.from_numpy(array)[index] for name, array in arrays.items()}
            transform = self.train_transform if split == "train" else None
            self.datasets[split] = StreamsTensorDataset(inputs, labels[index], transform=transform)
        counts = "; ".join(
            f"{split} {np.bincount(self.labels[rows], minlength=self.num_classes).tolist()}"
            for split, rows in self.split_rows.items()
        )
        rank_zero_info(f"Feature streams '{self.path.name}': rows per class 0..{self.num_classes - 1}: {counts}.")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets.get(split)
        if dataset is not None and len(dataset) == 0 and split != "val":  # no validation is a choice
            raise ValueError(f"'{self.path}' has no {split} rows ({self._split_origin}).")
        generator = torch.Generator().manual_seed(self.seed)
        return stream_loader(dataset, self.batch_size, shuffle, generator, self.num_workers, self.drop_last)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches ``(inputs, target)``; the order is seeded by ``seed``."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches ``(inputs, target)`` in file order (empty when the split has no row)."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches ``(inputs, target)`` in file order."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test batches ``(inputs, target)`` in file order (the targets go into the predictions file)."""
        return self._loader("test", shuffle=False)
