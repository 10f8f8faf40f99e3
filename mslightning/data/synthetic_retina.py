"""An embedded, no-download recordings file: real photographs seen through simulated eye movements.

The ConvGRU modulation family predicts neural responses to video, modulated by behaviour. This
module writes a small file in the exact layout of :mod:`mslightning.data.recordings` (through
h5py, read back by :class:`~mslightning.data.recordings.RecordingsDataModule` unchanged), so the
family trains and is tested on a fresh machine.

**Stimulus.** Grey photographs bundled in scikit-image's wheel (:data:`PHOTOS`, files of
``skimage/data``; nothing is fetched) are resized so their short side is ``3 * size`` pixels and
viewed through a ``size x size`` window that follows simulated eye movements: a session is a
sequence of *trials* of ``trial_frames`` frames, each on a random photo, with the eye starting at
a random position and moving by fixational drift (a random walk, 0.25 px/frame per axis),
microsaccades (1-2 px jumps, about 1.5 per second at 30 Hz) and saccades (5-14 px jumps, about
0.75 per second), kept inside the photo. Frames are interpolated bilinearly (sub-pixel drift is
visible) and stored as uint8.

**Behaviour** (``D = 4``, :data:`BEHAVIOUR_NAMES`): eye position ``x``, ``y`` (pixels of the
resized photo, 0 at its centre) and eye velocity ``vx``, ``vy`` (pixels per frame, the
difference to the previous frame; 0 on a trial's first frame).

**Neurons.** Each has an oriented Gabor receptive field (random position inside the frame,
orientation, phase, envelope 1.5-3 px, wavelength 5-10 px) over a short temporal kernel (frames
``t, t-1, t-2`` weighted 0.6, 0.3, 0.1); its drive ``z`` is that filter's output standardised
over the session. The behaviour-free rate is ``base + amp * relu(z - threshold)``; the true rate
multiplies it by a behaviour-dependent gain:

* **saccadic suppression**, a gain depending on eye velocity: on a frame where the eye moves
  faster than 3 px/frame (a saccade), the gain falls to ``1 - 0.85 = 0.15`` and recovers with a
  time constant of 5 frames;
* **eye-position gain field**: ``exp(g * (x cos a + y sin a) / size)``, a per-neuron strength
  ``g`` in ``[1.0, 1.6]`` and direction ``a`` (as in parietal and V1 gain fields).

``base`` is drawn in ``[0.02, 0.08]``, ``amp`` in ``[0.8, 1.6]`` and ``threshold`` in
``[-0.5, 0.5]`` spikes per bin, per neuron: about 0.55 spikes per bin on average.

Spikes are Poisson counts of the true rate per time bin (``frame_rate`` 30 Hz). ``rates`` are
stored. A fraction ``missing`` of (neuron, trial) pairs is marked unrecorded in ``mask`` (their
responses are 0), to exercise masked losses.

**Splits.** Every 20 consecutive trials hold 14 train, 3 val and 3 test trials, shuffled: splits
are runs of whole trials, so no window crosses one.

**Figures** (in the manifest, and logged): per session, the mean over neurons of the Pearson
correlation between the true rate and the spikes on the test bins (``oracle_correlation``: the
best any model can do) and the same for the behaviour-free rate (``behaviour_free_correlation``:
what a model blind to behaviour can at best reach, if it knew the stimulus part exactly).

**Files.** One HDF5 file; its root attribute ``manifest`` (JSON) holds every generation
parameter, :data:`VERSION` and the figures. Generation is deterministic by ``seed`` and cached:
an existing file whose manifest matches is reused as is; otherwise the file is written under a
temporary name next to it and renamed over it (an atomic replace).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image

from mslightning.data.recordings import RecordingsDataModule
from mslightning.data.synthetic import _derived_seed
from mslightning.modules.hparams import paths_as_strings

__all__ = [
    "BEHAVIOUR_NAMES",
    "PHOTOS",
    "VERSION",
    "SyntheticRecordingsDataModule",
    "default_synthetic_recordings_path",
    "make_synthetic_recordings",
    "read_synthetic_manifest",
]

VERSION = 1
"""Version of the generator; bump it whenever the same parameters would give another file."""

PHOTOS = (
    "astronaut.png",
    "camera.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "brick.png",
    "grass.png",
    "gravel.png",
    "coins.png",
    "moon.png",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
)
"""The photographs viewed (files of ``skimage/data``, converted to grey)."""

BEHAVIOUR_NAMES = ("x", "y", "vx", "vy")
"""The behaviour columns: eye position (pixels from the photo centre) and velocity (pixels/frame)."""

FRAME_RATE = 30.0
_FORMAT_NAME = "mslightning synthetic retina"
_DRIFT = 0.25  # px/frame, per axis
_MICROSACCADE_RATE, _MICROSACCADE_SIZE = 0.05, (1.0, 2.0)  # per frame, px
_SACCADE_RATE, _SACCADE_SIZE = 0.025, (5.0, 14.0)
_SACCADE_SPEED = 3.0  # px/frame: faster is a saccade (suppression onset)
_SUPPRESSION_DEPTH, _SUPPRESSION_TAU = 0.85, 5.0
_TEMPORAL = (0.6, 0.3, 0.1)
_GAIN_STRENGTH = (1.0, 1.6)
_AMPLITUDE = (0.8, 1.6)
_SPLIT_PATTERN = [0] * 14 + [1] * 3 + [2] * 3


def default_synthetic_recordings_path(**params: Any) -> Path:
    """The cache file for a parameter set (same keys as :func:`make_synthetic_recordings`).

    ``$XDG_CACHE_HOME/mslightning/synthetic_retina/<hash>.h5`` (``~/.cache`` when unset), where
    ``<hash>`` is a short hash of the parameters and :data:`VERSION`.
    """
    digest = hashlib.blake2b(json.dumps(_params(**params), sort_keys=True).encode(), digest_size=6).hexdigest()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "mslightning" / "synthetic_retina" / f"{digest}.h5"


def _params(
    seed: int = 0,
    num_sessions: int = 2,
    neurons: int | list[int] | tuple[int, ...] = (32, 20),
    frames: int = 3000,
    size: int = 32,
    trial_frames: int = 150,
    missing: float = 0.02,
) -> dict[str, Any]:
    """Check the generation parameters; return them with :data:`VERSION` as plain JSON values."""
    for name, value, low in (("num_sessions", num_sessions, 1), ("size", size, 8), ("trial_frames", trial_frames, 10)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    counts = [neurons] * num_sessions if isinstance(neurons, int) else list(neurons)
    if len(counts) != num_sessions or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in counts):
        raise ValueError(
            f"neurons must be a positive integer or one per session ({num_sessions} sessions), got {neurons!r}."
        )
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < trial_frames * len(_SPLIT_PATTERN):
        raise ValueError(
            f"frames must be an integer >= {trial_frames * len(_SPLIT_PATTERN)} (20 trials of trial_frames="
            f"{trial_frames}, so that every split has trials), got {frames!r}."
        )
    if not 0.0 <= missing < 1.0:
        raise ValueError(f"missing must be in [0, 1), got {missing!r}.")
    return {
        "version": VERSION,
        "seed": int(seed),
        "num_sessions": int(num_sessions),
        "neurons": [int(n) for n in counts],
        "frames": int(frames),
        "size": int(size),
        "trial_frames": int(trial_frames),
        "missing": float(missing),
    }


def _without_version(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if key != "version"}


def read_synthetic_manifest(path: str | Path) -> dict[str, Any] | None:
    """The manifest of a synthetic recordings file (parameters and figures), or None if it has none."""
    try:
        with h5py.File(path, "r") as file:
            manifest = json.loads(file.attrs["manifest"])
    except (OSError, KeyError, ValueError, TypeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT_NAME:
        return None
    return manifest


def make_synthetic_recordings(
    path: str | Path | None = None,
    *,
    seed: int = 0,
    num_sessions: int = 2,
    neurons: int | list[int] | tuple[int, ...] = (32, 20),
    frames: int = 3000,
    size: int = 32,
    trial_frames: int = 150,
    missing: float = 0.02,
) -> Path:
    """Write (or reuse) a synthetic recordings file; see the module docstring.

    With the defaults: sessions ``s1`` (32 neurons) and ``s2`` (20), 3000 frames each (100 s at
    30 Hz; 2100 train, 450 val, 450 test bins) of 32 x 32 pixels; about 8 MB, under a second. Test
    bins, mean over neurons: oracle correlation 0.63 (s1) and 0.57 (s2), behaviour-free 0.57 and
    0.44.

    Args:
        path: The file; None means :func:`default_synthetic_recordings_path`. An existing file is
            replaced only if it is a synthetic recordings file (with other parameters).
        seed: Seed of every random draw.
        num_sessions: Number of sessions, named ``s1``, ``s2``, ...
        neurons: Neurons per session: one count for all, or one per session.
        frames: Time bins (frames) per session; at least 20 trials.
        size: Frame side in pixels.
        trial_frames: Frames per trial (one photo, one split).
        missing: Fraction of (neuron, trial) pairs marked unrecorded in ``mask``.

    Returns:
        The file's path.

    Raises:
        ValueError: On an invalid parameter, or an existing ``path`` that is not a synthetic recordings file.
        ImportError: If scikit-image (which holds the photographs) is not installed.

    """
    params = _params(seed, num_sessions, neurons, frames, size, trial_frames, missing)
    path = Path(path) if path is not None else default_synthetic_recordings_path(**_without_version(params))
    manifest = read_synthetic_manifest(path) if path.exists() else None
    if manifest is not None and manifest.get("params") == params:
        return path
    if path.exists() and manifest is None:
        raise ValueError(
            f"'{path}' exists and is not a synthetic recordings file (no manifest written by "
            "make_synthetic_recordings): it is never overwritten. Pass a new path."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=".h5", dir=path.parent)
    os.close(handle)
    try:
        figures = _write(Path(staging), params)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    rank_zero_info(
        f"Synthetic recordings written to '{path}' in {time.perf_counter() - start:.1f} s: "
        + "; ".join(
            f"{name}: {f['neurons']} neurons, oracle correlation {f['oracle_correlation']:.3f}, "
            f"behaviour-free {f['behaviour_free_correlation']:.3f}"
            for name, f in figures.items()
        )
        + "."
    )
    return path


# ---------------------------------------------------------------------------- generation


def _photos(short_side: int) -> list[np.ndarray]:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The synthetic recordings show photographs bundled with scikit-image, which is not installed: "
            "pip install 'scikit-image>=0.21'."
        )
    folder = Path(spec.submodule_search_locations[0]) / "data"
    photos = []
    for name in PHOTOS:
        with Image.open(folder / name) as image:
            grey = image.convert("L")
            scale = short_side / min(grey.size)
            size = (max(short_side, round(grey.size[0] * scale)), max(short_side, round(grey.size[1] * scale)))
            photos.append(np.asarray(grey.resize(size, Image.Resampling.LANCZOS), dtype=np.float32))
    return photos


def _eye_path(rng: np.random.Generator, frames: int, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eye positions (frames, 2) within ``[-limit, limit]`` and which frames start a saccade."""
    position = np.zeros((frames, 2))
    saccade = np.zeros(frames, dtype=bool)
    current = rng.uniform(-0.8, 0.8, 2) * limit
    for t in range(frames):
        if t:
            step = rng.normal(0.0, _DRIFT, 2)
            draw = rng.random()
            if draw < _SACCADE_RATE:
                step += _jump(rng, _SACCADE_SIZE)
            elif draw < _SACCADE_RATE + _MICROSACCADE_RATE:
                step += _jump(rng, _MICROSACCADE_SIZE)
            target = current + step
            for axis in range(2):  # reflect at the photo's edge
                if abs(target[axis]) > limit[axis]:
                    target[axis] = np.sign(target[axis]) * (2 * limit[axis] - abs(target[axis]))
            current = np.clip(target, -limit, limit)
        position[t] = current
    velocity = np.diff(position, axis=0, prepend=position[:1])
    saccade = np.linalg.norm(velocity, axis=1) > _SACCADE_SPEED
    return position, saccade


def _jump(rng: np.random.Generator, sizes: tuple[float, float]) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    return rng.uniform(*sizes) * np.array([np.cos(angle), np.sin(angle)])


def _crops(photo: np.ndarray, position: np.ndarray, size: int) -> np.ndarray:
    """Bilinear ``size x size`` crops centred at ``position`` (x, y from the photo centre)."""
    height, width = photo.shape
    grid = np.arange(size) - (size - 1) / 2
    x = position[:, 0, None, None] + (width - 1) / 2 + grid[None, None, :]
    y = position[:, 1, None, None] + (height - 1) / 2 + grid[None, :, None]
    x0 = np.clip(np.floor(x).astype(int), 0, width - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, height - 2)
    fx, fy = np.clip(x - x0, 0, 1), np.clip(y - y0, 0, 1)
    top = photo[y0, x0] * (1 - fx) + photo[y0, x0 + 1] * fx
    bottom = photo[y0 + 1, x0] * (1 - fx) + photo[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _gabors(rng: np.random.Generator, neurons: int, size: int) -> np.ndarray:
    """Unit-norm, zero-mean Gabor receptive fields (neurons, size * size)."""
    grid = np.arange(size, dtype=np.float64)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    margin = size / 5
    fields = np.empty((neurons, size * size))
    for i in range(neurons):
        cx, cy = rng.uniform(margin, size - 1 - margin, 2)
        sigma, wavelength = rng.uniform(1.5, 3.0), rng.uniform(5.0, 10.0)
        angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        envelope = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        field = envelope * np.cos(2 * np.pi * u / wavelength + phase)
        field -= envelope * field.sum() / envelope.sum()  # no response to uniform light
        fields[i] = (field / np.linalg.norm(field)).ravel()
    return fields


def _session(params: dict[str, Any], index: int, photos: list[np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(_derived_seed("synthetic_retina", params["seed"], index))
    frames, size, trial = params["frames"], params["size"], params["trial_frames"]
    neurons = params["neurons"][index]
    trials = -(-frames // trial)
    stimulus = np.empty((frames, size, size), dtype=np.float32)
    position = np.empty((frames, 2))
    velocity = np.zeros((frames, 2))
    saccade = np.zeros(frames, dtype=bool)
    for k in range(trials):
        span = slice(k * trial, min((k + 1) * trial, frames))
        photo = photos[rng.integers(len(photos))]
        limit = (np.array(photo.shape[::-1], dtype=np.float64) - size) / 2 - 1
        path, jumps = _eye_path(rng, span.stop - span.start, limit)
        stimulus[span] = _crops(photo, path, size)
        position[span] = path
        velocity[span] = np.diff(path, axis=0, prepend=path[:1])
        saccade[span] = jumps
    stimulus = np.clip(np.rint(stimulus), 0, 255).astype(np.uint8)
    pattern = np.concatenate([rng.permutation(_SPLIT_PATTERN) for _ in range(-(-trials // len(_SPLIT_PATTERN)))])
    split = np.repeat(pattern[:trials], trial)[:frames].astype(np.uint8)

    # Linear-nonlinear stage: Gabor fields over a short temporal kernel, standardised per neuron.
    fields = _gabors(rng, neurons, size)
    linear = (stimulus.reshape(frames, -1).astype(np.float64) / 255.0 - 0.5) @ fields.T
    filtered = np.zeros_like(linear)
    for lag, weight in enumerate(_TEMPORAL):
        filtered[lag:] += weight * linear[: frames - lag]
    drive = (filtered - filtered.mean(0)) / filtered.std(0)
    base = rng.uniform(0.02, 0.08, neurons)
    amp = rng.uniform(*_AMPLITUDE, neurons)
    threshold = rng.uniform(-0.5, 0.5, neurons)
    blind = base + amp * np.maximum(drive - threshold, 0.0)

    # Behaviour-dependent gain: saccadic suppression and an eye-position gain field.
    since = np.full(frames, np.inf)
    last = -np.inf
    for t in range(frames):
        if saccade[t]:
            last = t
        since[t] = t - last
    suppression = 1.0 - _SUPPRESSION_DEPTH * np.exp(-since / _SUPPRESSION_TAU)
    reach = float(size)
    direction = rng.uniform(0, 2 * np.pi, neurons)
    strength = rng.uniform(*_GAIN_STRENGTH, neurons)
    projection = (position[:, :1] * np.cos(direction) + position[:, 1:] * np.sin(direction)) / reach
    gain = suppression[:, None] * np.exp(strength * projection)
    rates = (blind * gain).astype(np.float32)
    responses = rng.poisson(rates).astype(np.float32)

    mask = np.ones((frames, neurons), dtype=bool)
    if params["missing"] > 0:
        off = rng.random((trials, neurons)) < params["missing"]
        mask = ~np.repeat(off, trial, axis=0)[:frames]
        responses[~mask] = 0.0
    behaviour = np.concatenate([position, velocity], axis=1).astype(np.float32)
    return {
        "stimulus": stimulus,
        "behaviour": behaviour,
        "responses": responses,
        "mask": mask,
        "rates": rates,
        "split": split,
        "_blind": blind,
    }


def _mean_correlation(prediction: np.ndarray, spikes: np.ndarray, mask: np.ndarray) -> float:
    values = []
    for i in range(spikes.shape[1]):
        keep = mask[:, i]
        a, b = prediction[keep, i], spikes[keep, i]
        if a.std() > 0 and b.std() > 0:
            values.append(float(np.corrcoef(a, b)[0, 1]))
    return float(np.mean(values)) if values else float("nan")


def _write(path: Path, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    photos = _photos(3 * params["size"])
    figures: dict[str, dict[str, Any]] = {}
    with h5py.File(path, "w") as file:
        for index in range(params["num_sessions"]):
            name = f"s{index + 1}"
            data = _session(params, index, photos)
            blind = data.pop("_blind")
            group = file.create_group(name)
            for key, values in data.items():
                group.create_dataset(key, data=values)
            group.attrs["frame_rate"] = FRAME_RATE
            group.attrs["behaviour_names"] = list(BEHAVIOUR_NAMES)
            group.attrs["behaviour_units"] = "x, y: pixels from the photo centre; vx, vy: pixels per frame"
            group.attrs["stimulus_units"] = "grey level 0-255"
            group.attrs["responses_units"] = "spikes per time bin"
            test = data["split"] == 2
            mask = data["mask"][test]
            spikes = data["responses"][test]
            figures[name] = {
                "neurons": params["neurons"][index],
                "mean_rate": float(data["rates"].mean()),
                "oracle_correlation": _mean_correlation(data["rates"][test], spikes, mask),
                "behaviour_free_correlation": _mean_correlation(blind[test], spikes, mask),
                "saccades_per_second": float(
                    (np.linalg.norm(data["behaviour"][:, 2:], axis=1) > _SACCADE_SPEED).mean() * FRAME_RATE
                ),
            }
        file.attrs["manifest"] = json.dumps(
            {"format": _FORMAT_NAME, "params": params, "photos": list(PHOTOS), "figures": figures}, sort_keys=True
        )
    return figures


# ---------------------------------------------------------------------------- the datamodule


class SyntheticRecordingsDataModule(RecordingsDataModule):
    """:class:`~mslightning.data.recordings.RecordingsDataModule` over :func:`make_synthetic_recordings` data.

    The file is written (or found in the cache) by :meth:`prepare_data` on one process per node,
    and whenever it is first needed otherwise (a property such as :attr:`sessions`, or
    :meth:`setup`), then read back through :class:`RecordingsDataModule` unchanged. Batches carry
    ``"rates"`` (the true rates) and a ``"mask"`` with a few unrecorded (neuron, trial) pairs.

    Args:
        path: The file; None means a per-user cache file named by a hash of the generation
            parameters (:func:`default_synthetic_recordings_path`).
        seed: Seed of the data and of the training order.
        num_sessions: See :func:`make_synthetic_recordings`.
        neurons: See :func:`make_synthetic_recordings`.
        frames: See :func:`make_synthetic_recordings`.
        size: See :func:`make_synthetic_recordings`.
        trial_frames: See :func:`make_synthetic_recordings`.
        missing: See :func:`make_synthetic_recordings`.
        window: As in :class:`RecordingsDataModule`.
        burn_in: As in :class:`RecordingsDataModule`.
        stride: As in :class:`RecordingsDataModule`.
        batch_size: As in :class:`RecordingsDataModule`.
        num_workers: As in :class:`RecordingsDataModule`.
        predict_split: As in :class:`RecordingsDataModule`.
        drop_last: As in :class:`RecordingsDataModule`.
        pin_memory: As in :class:`RecordingsDataModule`.
        multiprocessing_context: As in :class:`RecordingsDataModule`.

    """

    def __init__(
        self,
        path: str | Path | None = None,
        seed: int = 0,
        num_sessions: int = 2,
        neurons: int | tuple[int, ...] | list[int] = (32, 20),
        frames: int = 3000,
        size: int = 32,
        trial_frames: int = 150,
        missing: float = 0.02,
        window: int = 50,
        burn_in: int = 10,
        stride: int | None = None,
        batch_size: int = 16,
        num_workers: int = 2,
        predict_split: Literal["train", "val", "test"] = "test",
        drop_last: bool = False,
        pin_memory: bool | None = None,
        multiprocessing_context: str | None = None,
    ) -> None:
        generation = _without_version(_params(seed, num_sessions, neurons, frames, size, trial_frames, missing))
        super().__init__(
            path=Path(path) if path is not None else default_synthetic_recordings_path(**generation),
            window=window,
            burn_in=burn_in,
            stride=stride,
            batch_size=batch_size,
            num_workers=num_workers,
            predict_split=predict_split,
            seed=seed,
            drop_last=drop_last,
            pin_memory=pin_memory,
            multiprocessing_context=multiprocessing_context,
        )
        self.save_hyperparameters()
        paths_as_strings(self.hparams)  # a Path would make checkpoints refuse weights_only loads
        self.generation = generation

    def _ensure_data(self) -> None:
        make_synthetic_recordings(self.path, **self.generation)

    def prepare_data(self) -> None:
        """Write the file unless it is there already (Lightning calls this on one process per node)."""
        self._ensure_data()

    @property
    def figures(self) -> dict[str, dict[str, Any]]:
        """Per session: neurons, mean rate, oracle and behaviour-free correlations (see the module docstring)."""
        self._ensure_data()
        manifest = read_synthetic_manifest(self.path)
        assert manifest is not None
        return manifest["figures"]
