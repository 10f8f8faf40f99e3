"""Neural recordings under a video stimulus and behaviour, from one HDF5 file: the ConvGRU family's data.

**Layout.** One group per recording session, ``/<session>/``, at the root of the file; ``T`` time
bins (frames), ``H x W`` pixel frames, ``D`` behaviour variables, ``N`` neurons (``N`` may differ
between sessions; ``H``, ``W`` and ``D`` may not)::

    /<session>/stimulus    (T, H, W)  uint8 or float   the frame shown in each time bin
    /<session>/behaviour   (T, D)     float            e.g. eye position and velocity, pupil size
    /<session>/responses   (T, N)     float or int     spike counts per time bin
    /<session>/mask        (T, N)     bool (optional)  False: neuron not recorded in that bin (missing)
    /<session>/rates       (T, N)     float (optional) true firing rates per bin (synthetic data only)
    /<session>/split       (T,)       uint8 or string  0/"train", 1/"val", 2/"test", per time bin
    attributes of /<session>/:
        frame_rate         float (optional)            time bins per second (Hz)
        stimulus_units, behaviour_units, responses_units   str (optional), free text
        behaviour_names    D strings (optional)        what each behaviour column is

Session names follow the library's stream-name rule (:func:`mslightning.streams.check_stream_name`:
letters, digits, ``_`` and ``-``): they name the per-session readouts and their TensorBoard tags.
Anything else in the file (other groups, other datasets, other attributes) is ignored.

**Samples** are windows of ``window`` consecutive time bins that all belong to one split: a
window never crosses from train into val or test (a split's time bins may come in several runs;
each run is cut into windows separately, and a run shorter than ``window`` gives none). The first
``burn_in`` bins of a window warm up the recurrent state and are not scored (the model's loss
skips them). Training windows start every ``stride`` bins of a run (``window - burn_in`` by
default: the scored parts tile the run); validation, test and prediction windows always start
every ``window - burn_in`` bins, so each bin of a run is scored once (except the first ``burn_in``
bins of the run and a tail shorter than ``window - burn_in``).

**Normalisation.** Per session, from the time bins of the *training* split only (read in chunks
at :meth:`RecordingsDataModule.setup`): the stimulus is standardised with one mean and standard
deviation over all its pixels, the behaviour with a mean and a standard deviation per variable (a
variable constant over training gets standard deviation 1). Responses are not normalised.

**Batches** (:data:`RecordingsBatch`) hold windows of one session only, so that every batch
carries its session's neuron count; a batch sampler (:class:`SessionBatchSampler`) interleaves the
sessions' batches, in a new random order every training epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Sampler

from mslightning.data.hdf5 import LazyHDF5
from mslightning.data.synthetic import _derived_seed
from mslightning.modules.hparams import paths_as_strings
from mslightning.streams import check_stream_name

__all__ = [
    "SPLITS",
    "RecordingWindows",
    "RecordingsBatch",
    "RecordingsDataModule",
    "SessionBatchSampler",
    "SessionLayout",
    "SessionStatistics",
    "read_recordings_layout",
    "read_split_codes",
    "session_statistics",
    "split_codes",
    "split_windows",
]

SPLITS = ("train", "val", "test")
"""The splits, in the order of their codes in ``/<session>/split`` (0, 1, 2)."""

RecordingsBatch = dict[str, Any]
"""The batch contract: ``B`` windows of ``L = window`` time bins, all from one session.

* ``"session"``: str, the session's name (a group of the file);
* ``"stimulus"``: float32 ``(B, L, 1, H, W)``, normalised with the session's training statistics;
* ``"behaviour"``: float32 ``(B, L, D)``, normalised per variable likewise;
* ``"responses"``: float32 ``(B, L, N)``, spike counts as stored (not normalised);
* ``"mask"``: bool ``(B, L, N)``, False where a neuron was not recorded (all True without ``mask``);
* ``"rates"``: float32 ``(B, L, N)``, the true rates; only when every session read has ``rates``;
* ``"start"``: int64 ``(B,)``, each window's first time bin in its session (to place predictions).
"""

_REQUIRED = ("stimulus", "behaviour", "responses", "split")
_CHUNK_FRAMES = 1024


@dataclass(frozen=True)
class SessionLayout:
    """What one session of a recordings file holds (shapes checked, nothing read yet)."""

    name: str
    frames: int
    frame_size: tuple[int, int]
    behaviour_dim: int
    neurons: int
    has_mask: bool
    has_rates: bool
    frame_rate: float | None
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionStatistics:
    """A session's normalisation statistics over its training time bins."""

    stimulus_mean: float
    stimulus_std: float
    behaviour_mean: np.ndarray
    behaviour_std: np.ndarray
    train_frames: int
    response_mean: np.ndarray
    """``(N,)`` mean spike count per bin of each neuron over its recorded training bins (0 if none)."""


def read_recordings_layout(data: LazyHDF5, sessions: Sequence[str] | None = None) -> dict[str, SessionLayout]:
    """Check the layout of a recordings file (see the module docstring) and describe its sessions.

    Reads shapes, dtypes and attributes only. ``data`` is left open; close it when done.

    Args:
        data: The file.
        sessions: The sessions to check, in this order; None means every group at the root, sorted.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not HDF5, holds no session, lacks a requested session or a required
            dataset, has a dataset of the wrong shape or dtype, time axes of different lengths
            within a session, a session name breaking the stream-name rule, or sessions that differ
            in frame size or behaviour dimension. The file and the dataset path are named.

    """
    root = data.group("/")
    groups = sorted(name for name, node in root.items() if isinstance(node, h5py.Group))
    if sessions is None:
        if not groups:
            raise ValueError(
                f"'{data.path}' holds no session group (expected /<session>/stimulus, /<session>/behaviour, "
                f"/<session>/responses and /<session>/split; the root holds {sorted(root.keys())})."
            )
        sessions = groups
    else:
        sessions = list(sessions)
        if not sessions:
            raise ValueError(f"sessions must name at least one session of '{data.path}' (or be None for all).")
        missing = [name for name in sessions if name not in groups]
        if missing:
            raise ValueError(
                f"'{data.path}' has no session {missing[0]!r} (requested in session_names); it holds {groups}."
            )
    layouts = {name: _session_layout(data, name) for name in sessions}
    for attribute, what in (("frame_size", "frame size (H, W)"), ("behaviour_dim", "behaviour dimension D")):
        values = {name: getattr(layout, attribute) for name, layout in layouts.items()}
        if len(set(values.values())) > 1:
            raise ValueError(
                f"'{data.path}': the sessions differ in {what}: {values}. One model (one core, one modulator) "
                "reads them all; read them with separate datamodules (session_names=[...]) or resample the data."
            )
    return layouts


def _session_layout(data: LazyHDF5, name: str) -> SessionLayout:
    check_stream_name(name, f"'{data.path}' session group '/{name}'")
    group = data.group(name)
    missing = [key for key in _REQUIRED if key not in group]
    if missing:
        data.dataset(f"/{name}/{missing[0]}")  # raises, naming the file, the path and what the group holds
    stimulus = data.require(f"/{name}/stimulus", (None, None, None), ("uint8", "f"), "(T, H, W) uint8 or float")
    behaviour = data.require(f"/{name}/behaviour", (None, None), "f", "(T, D) float")
    responses = data.require(f"/{name}/responses", (None, None), ("f", "u", "i"), "(T, N) float spike counts")
    split = data.require(f"/{name}/split", (None,), ("u", "i", "O", "S"), "(T,) uint8 codes 0/1/2 or strings")
    lengths = {
        f"/{name}/{key}": dataset.shape[0]
        for key, dataset in (
            ("stimulus", stimulus),
            ("behaviour", behaviour),
            ("responses", responses),
            ("split", split),
        )
    }
    frames = stimulus.shape[0]
    neurons = responses.shape[1]
    has = {}
    for key, dtype, what in (("mask", ("b", "u1"), "(T, N) bool"), ("rates", "f", "(T, N) float")):
        has[key] = key in group
        if has[key]:
            dataset = data.require(f"/{name}/{key}", (None, neurons), dtype, what)
            lengths[f"/{name}/{key}"] = dataset.shape[0]
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{path} has T={length}" for path, length in lengths.items())
        raise ValueError(
            f"'{data.path}' session '{name}': the time axes differ ({listed}); every dataset of a session has one "
            "row per time bin."
        )
    if frames == 0:
        raise ValueError(f"'{data.path}' session '{name}' has no time bins (/{name}/stimulus has T=0).")
    for key, dataset in (("behaviour", behaviour), ("responses", responses)):
        if dataset.shape[1] == 0:
            raise ValueError(f"{data.where(f'/{name}/{key}')} has shape {dataset.shape}: no columns.")
    attrs = {key: _plain(value) for key, value in group.attrs.items()}
    frame_rate = attrs.get("frame_rate")
    if frame_rate is not None:
        try:
            frame_rate = float(frame_rate)
        except (TypeError, ValueError):
            frame_rate = math.nan
        if not (math.isfinite(frame_rate) and frame_rate > 0):
            raise ValueError(
                f"'{data.path}' group '/{name}' attribute frame_rate must be a positive number (Hz), "
                f"got {attrs['frame_rate']!r}."
            )
    names = attrs.get("behaviour_names")
    if names is not None and (isinstance(names, str) or len(names) != behaviour.shape[1]):
        raise ValueError(
            f"'{data.path}' group '/{name}' attribute behaviour_names must list D={behaviour.shape[1]} names "
            f"(one per column of /{name}/behaviour), got {names!r}."
        )
    return SessionLayout(
        name=name,
        frames=frames,
        frame_size=(int(stimulus.shape[1]), int(stimulus.shape[2])),
        behaviour_dim=int(behaviour.shape[1]),
        neurons=int(neurons),
        has_mask=has["mask"],
        has_rates=has["rates"],
        frame_rate=frame_rate,
        attrs=attrs,
    )


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (bytes decoded, arrays as lists)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_plain(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_split_codes(data: LazyHDF5, session: str) -> np.ndarray:
    """Read ``/<session>/split`` as uint8 codes (0 train, 1 val, 2 test); strings are mapped.

    Raises:
        ValueError: On a code or string that is not a split (the file, path, value and bin named).

    """
    path = f"/{session}/split"
    return split_codes(data.read(path), data.where(path))


def split_codes(raw: np.ndarray, where: str, item: str = "time bin", items: str = "bin(s)") -> np.ndarray:
    """A split array as uint8 codes (0 train, 1 val, 2 test): codes are checked, strings are mapped.

    Args:
        raw: ``(N,)`` integer codes 0/1/2, or strings (``str`` or ``bytes``) ``train``/``val``/``test``.
        where: Where the array came from, for the message (e.g. ``"'data.h5' dataset '/s1/split'"``).
        item: What one entry is, for the message (``"time bin"``, ``"row"``).
        items: The same, counted (``"bin(s)"``, ``"row(s)"``).

    Returns:
        ``(N,)`` uint8 codes.

    Raises:
        ValueError: On a code or string that is not a split (``where``, the value and its index named).

    """
    if raw.dtype.kind in "OSU":
        names = np.array([value.decode() if isinstance(value, bytes) else str(value) for value in raw.tolist()])
        codes = np.full(names.shape, 255, dtype=np.uint8)
        for code, split in enumerate(SPLITS):
            codes[names == split] = code
        bad = np.flatnonzero(codes == 255)
        if bad.size:
            raise ValueError(
                f"{where} holds {str(names[bad[0]])!r} at {item} {bad[0]} ({bad.size} {items} in all); "
                f"a split is one of {list(SPLITS)} (or the codes 0, 1, 2)."
            )
        return codes
    if raw.dtype.kind not in "iu":
        raise ValueError(
            f"{where} has dtype {raw.dtype}; a split is integer codes 0 (train), 1 (val), 2 (test) or the strings "
            f"{list(SPLITS)}."
        )
    bad = np.flatnonzero((raw < 0) | (raw > 2))
    if bad.size:
        raise ValueError(
            f"{where} holds {raw[bad[0]].item()!r} at {item} {bad[0]} ({bad.size} {items} in all); "
            "split codes are 0 (train), 1 (val) and 2 (test)."
        )
    return raw.astype(np.uint8)


def split_windows(codes: np.ndarray, split: int, window: int, stride: int) -> np.ndarray:
    """The first time bins of the windows of one split: ``window`` bins each, all in the split.

    Every maximal run of consecutive bins with code ``split`` is cut separately, from its first
    bin, every ``stride`` bins, while a whole window fits in the run.

    Returns:
        int64 start bins, increasing.

    """
    inside = np.concatenate([[False], np.asarray(codes) == split, [False]])
    edges = np.flatnonzero(np.diff(inside.astype(np.int8)))
    starts = [np.arange(begin, end - window + 1, stride) for begin, end in zip(edges[::2], edges[1::2], strict=True)]
    return np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, dtype=np.int64)


def _runs(codes: np.ndarray, split: int) -> list[int]:
    inside = np.concatenate([[False], np.asarray(codes) == split, [False]])
    edges = np.flatnonzero(np.diff(inside.astype(np.int8)))
    return [int(end - begin) for begin, end in zip(edges[::2], edges[1::2], strict=True)]


def session_statistics(
    data: LazyHDF5, session: str, codes: np.ndarray, chunk: int = _CHUNK_FRAMES
) -> SessionStatistics:
    """Stimulus and behaviour means and standard deviations, and mean responses, over the training bins.

    Read in chunks; a neuron's mean response counts only the bins where it was recorded (``mask``).
    """
    train = codes == 0
    count = int(train.sum())
    if count == 0:
        raise ValueError(
            f"{data.where(f'/{session}/split')} marks no time bin as train (code 0): the session's stimulus and "
            "behaviour are normalised with training statistics, so every session needs training bins."
        )
    stimulus = _RunningMoments()
    behaviour = _RunningMoments()
    has_mask = data.exists(f"/{session}/mask")
    spike_sum: np.ndarray | float = 0.0
    recorded: np.ndarray | float = 0.0
    for begin in range(0, len(codes), chunk):
        keep = train[begin : begin + chunk]
        if not keep.any():
            continue
        rows = np.s_[begin : begin + chunk]
        frames = data.read(f"/{session}/stimulus", rows)[keep]
        stimulus.add(frames.reshape(-1, 1))
        behaviour.add(data.read(f"/{session}/behaviour", rows)[keep])
        responses = data.read(f"/{session}/responses", rows)[keep].astype(np.float64)
        mask = data.read(f"/{session}/mask", rows)[keep].astype(bool) if has_mask else np.ones(responses.shape, bool)
        spike_sum = spike_sum + np.where(mask, responses, 0.0).sum(axis=0)
        recorded = recorded + mask.sum(axis=0)
    for key, moments in (("stimulus", stimulus), ("behaviour", behaviour)):
        if not np.all(np.isfinite(moments.mean)) or not np.all(np.isfinite(moments.m2)):
            raise ValueError(f"{data.where(f'/{session}/{key}')} holds NaN or infinite values in its training bins.")
    behaviour_std = behaviour.std
    behaviour_std[behaviour_std <= 1e-8] = 1.0
    stimulus_std = float(stimulus.std[0])
    return SessionStatistics(
        stimulus_mean=float(stimulus.mean[0]),
        stimulus_std=stimulus_std if stimulus_std > 1e-8 else 1.0,
        behaviour_mean=behaviour.mean.astype(np.float32),
        behaviour_std=behaviour_std.astype(np.float32),
        train_frames=count,
        response_mean=(np.asarray(spike_sum) / np.maximum(recorded, 1)).astype(np.float32),
    )


class _RunningMoments:
    """Column means and variances merged over chunks (Chan et al.'s parallel update, float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray = np.zeros(1)
        self.m2: np.ndarray = np.zeros(1)

    def add(self, rows: np.ndarray) -> None:
        rows = rows.astype(np.float64)
        n = rows.shape[0]
        mean = rows.mean(axis=0)
        m2 = ((rows - mean) ** 2).sum(axis=0)
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1))


# ---------------------------------------------------------------------------- dataset and sampler


class RecordingWindows(Dataset):
    """Windows of one split of a recordings file, read lazily (each process opens its own handle).

    ``dataset[i]`` is one window (the :data:`RecordingsBatch` keys without the batch dimension,
    ``"start"`` an int); ``dataset[[i, j, ...]]`` is a batch of windows of one session (what
    :class:`SessionBatchSampler` asks for).

    Args:
        data: The file (a :class:`~mslightning.data.hdf5.LazyHDF5`, opened on first read).
        windows: ``(session, start)`` of every window, in dataset order.
        window: Time bins per window.
        statistics: Each session's normalisation statistics.
        layouts: Each session's layout.
        rates: Include ``"rates"`` (every session must have them).

    """

    def __init__(
        self,
        data: LazyHDF5,
        windows: Sequence[tuple[str, int]],
        window: int,
        statistics: dict[str, SessionStatistics],
        layouts: dict[str, SessionLayout],
        rates: bool,
    ) -> None:
        self.data = data
        self.sessions = [session for session, _ in windows]
        self.starts = np.array([start for _, start in windows], dtype=np.int64)
        self.window = window
        self.statistics = statistics
        self.layouts = layouts
        self.rates = rates

    def __len__(self) -> int:
        return len(self.starts)

    def by_session(self) -> dict[str, list[int]]:
        """Dataset indices of each session's windows, in dataset order."""
        groups: dict[str, list[int]] = {}
        for index, session in enumerate(self.sessions):
            groups.setdefault(session, []).append(index)
        return groups

    def __getitem__(self, index: int | Sequence[int]) -> RecordingsBatch:
        if isinstance(index, (int, np.integer)):
            batch = self._read([int(index)])
            return {key: value if key == "session" else value[0] for key, value in batch.items()}
        return self._read([int(i) for i in index])

    def _read(self, indices: list[int]) -> RecordingsBatch:
        if not indices:
            raise IndexError("RecordingWindows: an empty batch of indices.")
        session = self.sessions[indices[0]]
        others = {self.sessions[i] for i in indices} - {session}
        if others:
            raise ValueError(f"RecordingWindows: a batch mixes sessions {sorted({session, *others})}; one per batch.")
        layout = self.layouts[session]
        stats = self.statistics[session]
        keys = ["stimulus", "behaviour", "responses"] + (["mask"] if layout.has_mask else [])
        keys += ["rates"] if self.rates else []
        arrays: dict[str, list[np.ndarray]] = {key: [] for key in keys}
        starts = self.starts[indices]
        for start in starts.tolist():
            span = np.s_[start : start + self.window]
            for key in keys:
                arrays[key].append(self.data.read(f"/{session}/{key}", span))
        stimulus = torch.from_numpy(np.stack(arrays["stimulus"]).astype(np.float32))
        stimulus = ((stimulus - stats.stimulus_mean) / stats.stimulus_std).unsqueeze(2)
        behaviour = torch.from_numpy(np.stack(arrays["behaviour"]).astype(np.float32))
        behaviour = (behaviour - torch.from_numpy(stats.behaviour_mean)) / torch.from_numpy(stats.behaviour_std)
        responses = torch.from_numpy(np.stack(arrays["responses"]).astype(np.float32))
        if layout.has_mask:
            mask = torch.from_numpy(np.stack(arrays["mask"]).astype(bool))
        else:
            mask = torch.ones(responses.shape, dtype=torch.bool)
        batch: RecordingsBatch = {
            "session": session,
            "stimulus": stimulus,
            "behaviour": behaviour,
            "responses": responses,
            "mask": mask,
        }
        if self.rates:
            batch["rates"] = torch.from_numpy(np.stack(arrays["rates"]).astype(np.float32))
        batch["start"] = torch.from_numpy(starts.copy())
        return batch


class SessionBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices, each from one session; the sessions' batches interleaved.

    Each session's windows are cut into batches of ``batch_size`` (in order, or shuffled within
    the session). With ``shuffle``, all sessions' batches are then put in one random order (a new
    one every epoch: seeded by ``seed`` and the epoch, which :meth:`set_epoch` sets and every
    iteration advances), so sessions alternate in proportion to their sizes. Without, the batches
    come session by session, each in window order.

    Args:
        groups: Session -> its dataset indices.
        batch_size: Windows per batch.
        shuffle: Shuffle windows within sessions, and the order of the batches.
        drop_last: Drop each session's incomplete last batch.
        seed: Seed of the order.

    """

    def __init__(
        self, groups: dict[str, list[int]], batch_size: int, shuffle: bool, drop_last: bool, seed: int = 0
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.groups = {session: list(indices) for session, indices in groups.items()}
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the next order (Lightning calls this before each epoch)."""
        self.epoch = epoch

    def _count(self, n: int) -> int:
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return sum(self._count(len(indices)) for indices in self.groups.values())

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(_derived_seed("SessionBatchSampler", self.seed, self.epoch))
        self.epoch += 1
        batches: list[list[int]] = []
        for indices in self.groups.values():
            order = rng.permutation(len(indices)) if self.shuffle else np.arange(len(indices))
            for b in range(self._count(len(indices))):
                batches.append([indices[i] for i in order[b * self.batch_size : (b + 1) * self.batch_size]])
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        yield from batches


def _as_batch(batch: RecordingsBatch) -> RecordingsBatch:
    """The DataLoader's collate function: the dataset already returns whole batches."""
    return batch


# ---------------------------------------------------------------------------- the datamodule


class RecordingsDataModule(LightningDataModule):
    """Windows of neural recordings from an HDF5 file in the layout of this module's docstring.

    Batches are :data:`RecordingsBatch` dicts of ``batch_size`` windows of ``window`` time bins,
    all of one session (see :class:`SessionBatchSampler`): shuffled and interleaved in training,
    in order (session by session, window by window) for validation, test and prediction. The
    predict loader yields the windows of ``predict_split`` in order; ``"start"`` places them.

    The layout is read lazily, the first time it is needed (a property or :meth:`setup`), with a
    handle closed right after, so that the model can be linked to :attr:`sessions`,
    :attr:`behaviour_dim` and :attr:`frame_size` before setup (LightningCLI ``link_arguments``).
    :meth:`setup` reads every session's split and computes its normalisation statistics from the
    training bins, then closes its handle: the DataLoader workers (``fork`` or ``spawn``) each open
    their own. Errors name the file and the dataset path: a missing file, not HDF5 or corrupt, a
    missing dataset, a wrong shape or dtype, time axes of different lengths, a bad split value,
    a session without training bins, a split the stage needs that yields no window.

    Args:
        path: The HDF5 file.
        window: Time bins per window ``L`` (burn-in included).
        burn_in: Leading bins of each window that only warm up the recurrent state (not scored);
            ``0 <= burn_in < window``.
        stride: Bins between consecutive training windows of a run; None means ``window - burn_in``.
        batch_size: Windows per batch.
        num_workers: DataLoader worker processes.
        session_names: The sessions to read, in this order; None means every session of the file
            (sorted). (Named apart from :attr:`sessions`, the read sessions' neuron counts, which the
            model's ``sessions`` is linked to.)
        predict_split: The split the predict loader yields.
        seed: Seed of the training order.
        drop_last: Drop each session's incomplete last training batch.
        pin_memory: Pin batches in page-locked memory; None means when CUDA is available.
        multiprocessing_context: The workers' start method (``"fork"``, ``"spawn"``,
            ``"forkserver"``); None means the platform's default.

    Raises:
        ValueError: On an invalid argument, naming it and its value.

    """

    def __init__(
        self,
        path: str | Path,
        window: int = 50,
        burn_in: int = 10,
        stride: int | None = None,
        batch_size: int = 16,
        num_workers: int = 2,
        session_names: list[str] | None = None,
        predict_split: Literal["train", "val", "test"] = "test",
        seed: int = 0,
        drop_last: bool = False,
        pin_memory: bool | None = None,
        multiprocessing_context: str | None = None,
    ) -> None:
        super().__init__()
        for name, value, low in (("window", window, 1), ("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        if isinstance(burn_in, bool) or not isinstance(burn_in, int) or not 0 <= burn_in < window:
            raise ValueError(
                f"burn_in must be an integer in [0, window) = [0, {window}) (some bins of a window must be scored), "
                f"got {burn_in!r}."
            )
        if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1):
            raise ValueError(f"stride must be an integer >= 1 or None (window - burn_in), got {stride!r}.")
        if predict_split not in SPLITS:
            raise ValueError(f"predict_split must be one of {list(SPLITS)}, got {predict_split!r}.")
        if session_names is not None:
            if isinstance(session_names, str) or not session_names:
                raise ValueError(
                    f"session_names must be a non-empty list of session names or None, got {session_names!r}."
                )
            for name in session_names:
                check_stream_name(name, "session_names")
            if len(set(session_names)) != len(session_names):
                raise ValueError(f"session_names lists a session twice: {session_names}.")
        self.save_hyperparameters()
        paths_as_strings(self.hparams)  # a Path would make checkpoints refuse weights_only loads
        self.path = Path(path)
        self.window = window
        self.burn_in = burn_in
        self.stride = stride if stride is not None else window - burn_in
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.requested_sessions = None if session_names is None else list(session_names)
        self.predict_split = predict_split
        self.seed = seed
        self.drop_last = drop_last
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.multiprocessing_context = multiprocessing_context
        self.data = LazyHDF5(self.path)
        self.layouts: dict[str, SessionLayout] | None = None
        self.statistics: dict[str, SessionStatistics] = {}
        self.codes: dict[str, np.ndarray] = {}
        self.datasets: dict[str, RecordingWindows] = {}

    # ------------------------------------------------------------------ what the model links to

    def _ensure_data(self) -> None:
        """Hook for subclasses that write the file first (the synthetic data); nothing here."""

    def layout(self) -> dict[str, SessionLayout]:
        """The checked layout of every session read (read once, with a handle closed right after)."""
        if self.layouts is None:
            self._ensure_data()
            try:
                self.layouts = read_recordings_layout(self.data, self.requested_sessions)
            finally:
                self.data.close()
        return self.layouts

    @property
    def sessions(self) -> dict[str, int]:
        """Session name -> neuron count ``N``, in reading order."""
        return {name: layout.neurons for name, layout in self.layout().items()}

    @property
    def behaviour_dim(self) -> int:
        """``D``, the behaviour variables per time bin."""
        return next(iter(self.layout().values())).behaviour_dim

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(H, W)``, the stimulus frame size."""
        return next(iter(self.layout().values())).frame_size

    @property
    def frame_rate(self) -> dict[str, float | None]:
        """Session -> its ``frame_rate`` attribute (Hz), None where the file gives none."""
        return {name: layout.frame_rate for name, layout in self.layout().items()}

    @property
    def mean_responses(self) -> dict[str, torch.Tensor]:
        """Session -> ``(N,)`` mean spike count per bin of each neuron over its recorded training bins.

        :class:`~mslightning.modules.ModulatedResponseModel` starts its readout biases there.

        Raises:
            RuntimeError: Before :meth:`setup` computed the training statistics.
        """
        if not self.statistics:
            raise RuntimeError("mean_responses needs the training statistics: call setup() first.")
        return {name: torch.from_numpy(stats.response_mean.copy()) for name, stats in self.statistics.items()}

    @property
    def has_rates(self) -> bool:
        """Whether batches carry ``"rates"`` (every session read stores ``rates``)."""
        return all(layout.has_rates for layout in self.layout().values())

    # ------------------------------------------------------------------ setup

    def setup(self, stage: str | None = None) -> None:
        """Read the splits, compute the training statistics, and cut every split into windows.

        Args:
            stage: ``"fit"`` (needs train and val windows), ``"validate"`` (val), ``"test"``
                (test), ``"predict"`` (``predict_split``), or None (train and val).

        Raises:
            FileNotFoundError: If the file does not exist.
            ValueError: On a bad layout (see :func:`read_recordings_layout`), a bad split value, a
                session without training bins, or a needed split that yields no window.

        """
        needed = {
            "fit": ["train", "val"],
            "validate": ["val"],
            "test": ["test"],
            "predict": [self.predict_split],
            None: ["train", "val"],
        }.get(stage)
        if needed is None:
            raise ValueError(f"stage must be 'fit', 'validate', 'test', 'predict' or None, got {stage!r}.")
        layouts = self.layout()
        try:
            for session in layouts:
                if session not in self.codes:
                    self.codes[session] = read_split_codes(self.data, session)
                if session not in self.statistics:
                    self.statistics[session] = session_statistics(self.data, session, self.codes[session])
        finally:
            self.data.close()  # no handle is left open for the workers to inherit
        new = [split for split in needed if split not in self.datasets]
        for split in new:
            self.datasets[split] = self._windows(split)
        if new:
            counts = ", ".join(f"{split} {len(self.datasets[split])}" for split in new)
            sessions = ", ".join(f"{name} N={layout.neurons}" for name, layout in layouts.items())
            rank_zero_info(
                f"Recordings '{self.path}': sessions {sessions}; windows of {self.window} bins "
                f"(burn-in {self.burn_in}): {counts}."
            )

    def _windows(self, split: str) -> RecordingWindows:
        code = SPLITS.index(split)
        stride = self.stride if split == "train" else self.window - self.burn_in
        windows: list[tuple[str, int]] = []
        for session, codes in self.codes.items():
            windows.extend((session, int(start)) for start in split_windows(codes, code, self.window, stride))
        if not windows:
            runs = {session: max(_runs(codes, code), default=0) for session, codes in self.codes.items()}
            raise ValueError(
                f"'{self.path}': the {split} split (code {code} in /<session>/split) yields no window of "
                f"window={self.window} bins; its longest run of consecutive {split} bins per session: {runs}. "
                "A window never crosses a split: lower window, or give the split longer runs."
            )
        return RecordingWindows(self.data, windows, self.window, self.statistics, self.layout(), self.has_rates)

    # ------------------------------------------------------------------ loaders

    def _loader(self, split: str, stage: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets.get(split)
        if dataset is None:
            raise RuntimeError(f"Call setup({stage!r}) before requesting its dataloader.")
        sampler = SessionBatchSampler(
            dataset.by_session(), self.batch_size, shuffle=shuffle, drop_last=shuffle and self.drop_last, seed=self.seed
        )
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            collate_fn=_as_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            multiprocessing_context=self.multiprocessing_context if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training windows, sessions interleaved, one session per batch."""
        return self._loader("train", "fit", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation windows in order, session by session."""
        return self._loader("val", "validate", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test windows in order, session by session."""
        return self._loader("test", "test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The windows of ``predict_split`` in order, session by session (``"start"`` places them)."""
        return self._loader(self.predict_split, "predict", shuffle=False)

    def teardown(self, stage: str | None = None) -> None:
        """Close this process's handle (workers close theirs when they exit)."""
        self.data.close()
