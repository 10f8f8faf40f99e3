"""An embedded, no-download Photo Triage: real photographs under graded, known distortions.

Photo Triage itself must be downloaded by hand; this module writes a small dataset in its exact
layout (see :mod:`mslightning.data.photo_triage`), so the Siamese ranking family trains and is
tested on a fresh machine. The photographs are the ones bundled in scikit-image's wheel
(``skimage/data``; nothing is fetched over the network), split *by source photo* so that no
validation or test series shows a scene seen in training (:data:`SOURCES`; the two motorcycle
views, one scene, are both in train).

**Series.** Each source photo gives ``series_per_source`` series; a series is one random crop of
it (4:3 landscape or portrait, long side ``crop_size``, a window of 35-80% of the photo's short
side, redrawn if nearly flat). Its ``photos_per_series`` members are that crop under a distortion
of a random kind at a random *level* ``0..levels`` (with replacement; not all equal): level 0 is
the crop itself, and a member of level ``l >= 1`` has one of :data:`KINDS` at the strength
:data:`SEVERITY` ``[kind][l - 1]``. The strengths put the kinds on one scale, chosen by eye on
64-pixel crops of all the sources: blur, JPEG and noise lower the PSNR to the clean crop about
alike per level (medians of 28-32, 25-28, 23-25 and 22-23 dB at levels 1-4; mean SSIM 0.87-0.90
at level 1, 0.54-0.67 at level 4), and exposure, which these measures overrate (PSNR) or barely register
(SSIM), steps by half a stop (0.5 to 2 stops, over or under at random). Level 1 is visible side
by side, levels 3-4 at a glance.

**Preferences.** For every pair of a series (or ``pairs_per_series`` of them, at random), each
of ``annotators`` simulated annotators prefers photo 1 with probability
``sigmoid(preference_slope * (level_2 - level_1))``; the ratio is the fraction who did. Pairs at
one level are coin flips (close calls; a 5-5 vote is a tie), a gap of 2 levels is decided about
95% of the time per annotator with the default slope 1.5. Which photo is listed first is random.
``RANK1``/``RANK2`` are ranks by level within the series, 1 = least distorted, photos at one
level sharing a rank (1 + the number of strictly less distorted photos: "1224" ranking).

**Files.** ``root`` gets ``train_val/train_val_imgs/%06d-%02d.JPG`` (quality 95), the pair lists
``train_val/train_pairlist.txt``, ``train_val/val_pairlist.txt``, ``test/test_imgs`` and
``test/test_pairlist.txt``, ``photos.csv`` (one row per photo: split, series, index, source,
kind, level, strength, rank; group pairs by level gap with it) and ``manifest.json`` (every
generation parameter and :data:`VERSION`). Series ids are unique over all splits. Generation is
deterministic by ``seed`` (every series draws from its own generator, seeded from
``(seed, split, source, crop)``) and cached: a ``root`` whose manifest matches is reused as is; any
other is rebuilt in a temporary directory that then replaces it.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image, ImageFilter
from torch import Tensor

from mslightning.data.photo_triage import _TIE_TOLERANCE, PhotoTriageDataModule
from mslightning.data.synthetic import _derived_seed
from mslightning.modules.hparams import paths_as_strings

__all__ = [
    "KINDS",
    "SEVERITY",
    "SOURCES",
    "VERSION",
    "LevelGapAccuracy",
    "SyntheticPhotoTriageDataModule",
    "accuracy_by_level_gap",
    "default_synthetic_triage_root",
    "make_synthetic_photo_triage",
    "photo_levels",
]

VERSION = 1
"""Version of the generator; bump it whenever the same parameters would give other files."""

SOURCES: dict[str, tuple[str, ...]] = {
    "train": (
        "astronaut.png",
        "rocket.jpg",
        "motorcycle_left.png",
        "motorcycle_right.png",
        "hubble_deep_field.jpg",
        "retina.jpg",
        "brick.png",
        "grass.png",
        "moon.png",
        "coins.png",
    ),
    "val": ("chelsea.png", "coffee.png", "gravel.png"),
    "test": ("ihc.png", "camera.png"),
}
"""The source photographs of each split, files of ``skimage/data`` (grey ones are replicated to RGB)."""

KINDS = ("blur", "jpeg", "noise", "exposure")
"""The distortion kinds."""

SEVERITY: dict[str, tuple[float, ...]] = {
    "blur": (0.7, 1.0, 1.4, 2.0),  # Gaussian blur, standard deviation in pixels
    "jpeg": (40, 20, 12, 8),  # JPEG quality (before the final quality-95 save)
    "noise": (0.03, 0.055, 0.08, 0.11),  # additive Gaussian noise, standard deviation in [0, 1] units
    "exposure": (0.5, 1.0, 1.5, 2.0),  # exposure change in stops (x 2**(+-stops) in linear light)
}
"""Each kind's strength at levels ``1..MAX_LEVEL`` (level 0 is the clean crop)."""

MAX_LEVEL = 4
_MANIFEST = "manifest.json"
_FORMAT_NAME = "mslightning synthetic Photo Triage"
_QUALITY = 95
_ASPECT = 3 / 4  # short side / long side of every crop
_MIN_STD = 0.04  # a crop whose grey level varies less than this is nearly flat: redrawn
_CROP_TRIES = 20
_GAMMA = 2.2  # sRGB <-> linear light, for exposure
_LAYOUT_ARGUMENTS = ("image_dir", "train_list", "val_list", "test_list", "test_image_dir", "photo_index_base")


def default_synthetic_triage_root(**params: Any) -> Path:
    """Return the cache directory for a parameter set (same keys as :func:`make_synthetic_photo_triage`).

    ``$XDG_CACHE_HOME/mslightning/synthetic_photo_triage/<hash>`` (``~/.cache`` when unset), where
    ``<hash>`` is a short hash of the parameters and :data:`VERSION`: other parameters, other directory.
    """
    digest = hashlib.blake2b(json.dumps(_params(**params), sort_keys=True).encode(), digest_size=6).hexdigest()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "mslightning" / "synthetic_photo_triage" / digest


def _params(
    seed: int = 0,
    series_per_source: int = 32,
    photos_per_series: int = 5,
    pairs_per_series: int | None = None,
    crop_size: int = 64,
    levels: int = MAX_LEVEL,
    annotators: int = 10,
    preference_slope: float = 1.5,
    kinds: list[str] | tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Check the generation parameters and return them, with :data:`VERSION`, as plain JSON values."""
    for name, value, low in (
        ("series_per_source", series_per_source, 1),
        ("photos_per_series", photos_per_series, 2),
        ("crop_size", crop_size, 8),
        ("levels", levels, 1),
        ("annotators", annotators, 1),
    ):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}.")
    if levels > MAX_LEVEL:
        raise ValueError(f"levels must be <= {MAX_LEVEL} (the calibrated strengths in SEVERITY), got {levels}.")
    if pairs_per_series is not None and pairs_per_series < 1:
        raise ValueError(f"pairs_per_series must be >= 1, or None for every pair of a series, got {pairs_per_series}.")
    if not preference_slope > 0:
        raise ValueError(f"preference_slope must be > 0, got {preference_slope}.")
    kinds = list(KINDS if kinds is None else kinds)
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty list from {list(KINDS)}, got {kinds}.")
    return {
        "version": VERSION,
        "seed": int(seed),
        "series_per_source": int(series_per_source),
        "photos_per_series": int(photos_per_series),
        "pairs_per_series": None if pairs_per_series is None else int(pairs_per_series),
        "crop_size": int(crop_size),
        "levels": int(levels),
        "annotators": int(annotators),
        "preference_slope": float(preference_slope),
        "kinds": list(dict.fromkeys(kinds)),
    }


def make_synthetic_photo_triage(
    root: str | Path | None = None,
    *,
    seed: int = 0,
    series_per_source: int = 32,
    photos_per_series: int = 5,
    pairs_per_series: int | None = None,
    crop_size: int = 64,
    levels: int = MAX_LEVEL,
    annotators: int = 10,
    preference_slope: float = 1.5,
    kinds: list[str] | tuple[str, ...] | None = None,
) -> Path:
    """Write (or reuse) a synthetic Photo Triage in the official layout; see the module docstring.

    With the defaults: 320 train series (3200 pairs), 96 val (960), 64 test (640), 2400 photos
    of 64 x 48 pixels; a few seconds, about 6 MB.

    Args:
        root: Where to write; None means :func:`default_synthetic_triage_root`. An existing
            ``root`` must be empty or hold a synthetic Photo Triage (it is never overwritten otherwise).
        seed: Seed of every random draw.
        series_per_source: Series (crops) per source photo.
        photos_per_series: Photos per series (``>= 2``).
        pairs_per_series: Pairs listed per series, drawn at random; None (or more than a series
            has) lists every pair.
        crop_size: Long side of the photos in pixels (the short side is 3/4 of it).
        levels: Highest distortion level, ``1..4``.
        annotators: Simulated annotators per pair.
        preference_slope: ``k`` in ``sigmoid(k * level difference)``, each annotator's chance of
            preferring the less distorted photo.
        kinds: Distortion kinds to use, from :data:`KINDS`; None means all.

    Returns:
        The root directory.

    Raises:
        ValueError: On an invalid parameter, or a non-empty ``root`` that is not a synthetic Photo Triage.
        ImportError: If scikit-image (which holds the photographs) is not installed.

    """
    params = _params(
        seed, series_per_source, photos_per_series, pairs_per_series, crop_size, levels, annotators,
        preference_slope, kinds,
    )  # fmt: skip
    root = Path(root) if root is not None else default_synthetic_triage_root(**_without_version(params))
    if _manifest_params(root) == params:
        return root
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and _manifest_params(root) is None)):
        raise ValueError(
            f"root '{root}' exists and is not a synthetic Photo Triage directory (no {_MANIFEST} written by "
            f"make_synthetic_photo_triage): it is never overwritten. Pass a new or empty directory."
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        counts = _generate(staging, params)
        manifest = {"format": _FORMAT_NAME, "params": params, "sources": SOURCES, "severity": SEVERITY, **counts}
        (staging / _MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _replace(staging, root, params)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    rank_zero_info(
        f"Synthetic Photo Triage written to '{root}' in {time.perf_counter() - start:.1f} s: "
        + ", ".join(f"{split} {n['series']} series / {n['pairs']} pairs" for split, n in counts["splits"].items())
        + "."
    )
    return root


def _without_version(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if key != "version"}


def _manifest_params(root: Path) -> dict[str, Any] | None:
    """The parameters a synthetic root was made with, or None if it has no readable manifest."""
    try:
        manifest = json.loads((root / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT_NAME:
        return None
    return manifest.get("params")


def _replace(staging: Path, root: Path, params: dict[str, Any]) -> None:
    """Move the finished ``staging`` directory to ``root`` (replacing an outdated one) by renames."""
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(root, old)
    try:
        os.rename(staging, root)
    except OSError:
        # Another process finished the same data first: keep theirs if it is what we want.
        if _manifest_params(root) != params:
            raise
        shutil.rmtree(staging, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- generation


def _source_photo(name: str) -> Image.Image:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The synthetic Photo Triage cuts its photographs from scikit-image's bundled images, and scikit-image is "
            "not installed: pip install 'scikit-image>=0.21'."
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / name
    with Image.open(path) as image:
        return image.convert("RGB")


def _generate(out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Write every split's photos and pair list under ``out``; return the counts for the manifest."""
    image_dirs = {"train": "train_val/train_val_imgs", "val": "train_val/train_val_imgs", "test": "test/test_imgs"}
    lists = {
        "train": "train_val/train_pairlist.txt",
        "val": "train_val/val_pairlist.txt",
        "test": "test/test_pairlist.txt",
    }
    for relative in {*image_dirs.values()}:
        (out / relative).mkdir(parents=True, exist_ok=True)
    rows: list[list[Any]] = []
    counts: dict[str, dict[str, int]] = {}
    series_id = 0
    for split, sources in SOURCES.items():
        lines: list[str] = []
        n_series = n_photos = 0
        for source in sources:
            photo = _source_photo(source)
            for crop_index in range(params["series_per_source"]):
                series_id += 1
                rng = np.random.default_rng(
                    _derived_seed("synthetic_triage", params["seed"], split, source, crop_index)
                )
                crop = _crop(photo, params["crop_size"], rng)
                levels, kinds = _draw_members(params, rng)
                ranks = [1 + sum(other < level for other in levels) for level in levels]
                for index, (level, kind, rank) in enumerate(zip(levels, kinds, ranks, strict=True), start=1):
                    image = _distort(crop, kind, level, rng)
                    image.save(out / image_dirs[split] / f"{series_id:06d}-{index:02d}.JPG", quality=_QUALITY)
                    strength = SEVERITY[kind][level - 1] if level else 0
                    rows.append([split, series_id, index, source.rsplit(".", 1)[0], kind, level, strength, rank])
                lines.extend(_pair_lines(series_id, levels, ranks, params, rng))
                n_series += 1
                n_photos += len(levels)
        (out / lists[split]).write_text("".join(lines))
        counts[split] = {"series": n_series, "photos": n_photos, "pairs": len(lines)}
    with (out / "photos.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["split", "series", "index", "source", "kind", "level", "strength", "rank"])
        writer.writerows(rows)
    return {"splits": counts}


def _crop(photo: Image.Image, crop_size: int, rng: np.random.Generator) -> Image.Image:
    """A random 4:3 (landscape or portrait) window of 35-80% of the short side, resized; not nearly flat."""
    width, height = photo.size
    landscape = rng.random() < 0.6
    long_side, short_side = crop_size, max(1, round(crop_size * _ASPECT))
    size = (long_side, short_side) if landscape else (short_side, long_side)
    best: tuple[float, Image.Image] | None = None
    for _ in range(_CROP_TRIES):
        short = rng.uniform(0.35, 0.8) * min(width, height)
        window = (short / _ASPECT, short) if landscape else (short, short / _ASPECT)
        window = (min(window[0], width), min(window[1], height))
        left = rng.uniform(0, width - window[0])
        top = rng.uniform(0, height - window[1])
        box = (left, top, left + window[0], top + window[1])
        crop = photo.resize(size, Image.Resampling.LANCZOS, box=box)
        spread = float(np.asarray(crop.convert("L"), dtype=np.float32).std() / 255.0)
        if best is None or spread > best[0]:
            best = (spread, crop)
        if spread >= _MIN_STD:
            break
    assert best is not None
    return best[1]


def _draw_members(params: dict[str, Any], rng: np.random.Generator) -> tuple[list[int], list[str]]:
    """Each member's level (``0..levels``, not all equal) and kind (``"none"`` at level 0)."""
    n = params["photos_per_series"]
    while True:
        levels = [int(level) for level in rng.integers(0, params["levels"] + 1, size=n)]
        if len(set(levels)) > 1:
            break
    kinds = [str(kind) for kind in rng.choice(params["kinds"], size=n)]
    return levels, [kind if level else "none" for kind, level in zip(kinds, levels, strict=True)]


def _distort(crop: Image.Image, kind: str, level: int, rng: np.random.Generator) -> Image.Image:
    """``crop`` under ``kind`` at ``level`` (see :data:`SEVERITY`); level 0 is the crop itself."""
    if level == 0:
        return crop
    strength = SEVERITY[kind][level - 1]
    if kind == "blur":
        return crop.filter(ImageFilter.GaussianBlur(strength))
    if kind == "jpeg":
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG", quality=int(strength))
        buffer.seek(0)
        with Image.open(buffer) as image:
            return image.convert("RGB")
    pixels = np.asarray(crop, dtype=np.float64) / 255.0
    if kind == "noise":
        pixels = pixels + rng.normal(0.0, strength, size=pixels.shape)
    elif kind == "exposure":
        sign = 1.0 if rng.random() < 0.5 else -1.0
        pixels = np.clip(pixels**_GAMMA * 2.0 ** (sign * strength), 0.0, 1.0) ** (1.0 / _GAMMA)
    else:  # _params() checked the kinds
        raise AssertionError(kind)
    return Image.fromarray(np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8))


def _pair_lines(
    series: int, levels: list[int], ranks: list[int], params: dict[str, Any], rng: np.random.Generator
) -> list[str]:
    """The series' pair-list lines: simulated votes, photo order at random."""
    pairs = list(combinations(range(len(levels)), 2))
    wanted = params["pairs_per_series"]
    if wanted is not None and wanted < len(pairs):
        chosen = sorted(rng.choice(len(pairs), size=wanted, replace=False).tolist())
        pairs = [pairs[i] for i in chosen]
    lines = []
    for first, second in pairs:
        if rng.random() < 0.5:
            first, second = second, first
        p_first = 1.0 / (1.0 + math.exp(-params["preference_slope"] * (levels[second] - levels[first])))
        votes = int(rng.binomial(params["annotators"], p_first))
        ratio = votes / params["annotators"]
        lines.append(f"{series} {first + 1} {second + 1} {ratio:.6g} {ranks[first]} {ranks[second]}\n")
    return lines


# ---------------------------------------------------------------------------- the datamodule


class SyntheticPhotoTriageDataModule(PhotoTriageDataModule):
    """:class:`~mslightning.data.photo_triage.PhotoTriageDataModule` over :func:`make_synthetic_photo_triage` data.

    The data are written (or found in the cache) by :meth:`prepare_data` on one process per node,
    and by :meth:`setup` if still missing (single-process use), then read back through
    :class:`PhotoTriageDataModule` unchanged: the same checks, the same :data:`PairBatch` and
    :data:`SeriesBatch` batches. The test split (``test/test_pairlist.txt``) is included.

    Args:
        root: Where the data go; None means a per-user cache directory named by a hash of the
            generation parameters (:func:`default_synthetic_triage_root`).
        seed: Seed of the data and of the training shuffle order.
        series_per_source: See :func:`make_synthetic_photo_triage`.
        photos_per_series: See :func:`make_synthetic_photo_triage`.
        pairs_per_series: See :func:`make_synthetic_photo_triage`.
        crop_size: See :func:`make_synthetic_photo_triage`.
        levels: See :func:`make_synthetic_photo_triage`.
        annotators: See :func:`make_synthetic_photo_triage`.
        preference_slope: See :func:`make_synthetic_photo_triage`.
        kinds: See :func:`make_synthetic_photo_triage`.
        image_size: As in :class:`PhotoTriageDataModule`; 64 shows the 64-pixel photos unscaled.
        batch_size: As in :class:`PhotoTriageDataModule`.
        num_workers: As in :class:`PhotoTriageDataModule`.
        ties: As in :class:`PhotoTriageDataModule` (5-5 votes are ties).
        min_agreement: As in :class:`PhotoTriageDataModule`.
        augment: As in :class:`PhotoTriageDataModule`.
        predict_split: As in :class:`PhotoTriageDataModule`.
        series_per_batch: As in :class:`PhotoTriageDataModule`.
        pin_memory: As in :class:`PhotoTriageDataModule`.
        drop_last: As in :class:`PhotoTriageDataModule`.

    Raises:
        ValueError: On an invalid argument, naming it and its value.

    """

    def __init__(
        self,
        root: str | Path | None = None,
        seed: int = 0,
        series_per_source: int = 32,
        photos_per_series: int = 5,
        pairs_per_series: int | None = None,
        crop_size: int = 64,
        levels: int = MAX_LEVEL,
        annotators: int = 10,
        preference_slope: float = 1.5,
        kinds: list[str] | None = None,
        image_size: int = 64,
        batch_size: int = 8,
        num_workers: int = 2,
        ties: Literal["drop", "soft"] = "drop",
        min_agreement: float = 0.5,
        augment: bool = True,
        predict_split: Literal["train", "val", "test"] = "val",
        series_per_batch: int = 4,
        pin_memory: bool | None = None,
        drop_last: bool = True,
    ) -> None:
        generation = _without_version(
            _params(
                seed, series_per_source, photos_per_series, pairs_per_series, crop_size, levels, annotators,
                preference_slope, kinds,
            )
        )  # fmt: skip
        super().__init__(
            root=Path(root) if root is not None else default_synthetic_triage_root(**generation),
            test_list="test/test_pairlist.txt",
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            ties=ties,
            min_agreement=min_agreement,
            augment=augment,
            predict_split=predict_split,
            series_per_batch=series_per_batch,
            seed=seed,
            pin_memory=pin_memory,
            drop_last=drop_last,
        )
        # This class's arguments; the base class's layout arguments are fixed here, so not hyperparameters.
        self.save_hyperparameters(ignore=list(_LAYOUT_ARGUMENTS))
        paths_as_strings(self.hparams)  # a Path would make checkpoints refuse weights_only loads
        self.generation = generation

    def prepare_data(self) -> None:
        """Write the data into ``root`` unless they are there already (Lightning calls this on one process)."""
        make_synthetic_photo_triage(self.root, **self.generation)

    def setup(self, stage: str | None = None) -> None:
        """Write the data if still missing, then read and check them as :class:`PhotoTriageDataModule` does."""
        make_synthetic_photo_triage(self.root, **self.generation)
        super().setup(stage)


# ---------------------------------------------------------------------------- evaluation by level


@dataclass(frozen=True)
class LevelGapAccuracy:
    """One row of :func:`accuracy_by_level_gap`: the pairs whose two photos are ``gap`` levels apart.

    Attributes:
        gap: ``|level_a - level_b|``, ``0..`` the highest level in ``photos.csv``.
        pairs: How many pairs have this gap.
        scored: How many of them have a reference to be right or wrong against: all ``pairs`` when
            ``gap >= 1`` (the less distorted photo); when ``gap == 0``, the pairs whose annotators
            did not tie (``ratio != 0.5``), or 0 when no ratios were given.
        correct: How many of the ``scored`` pairs the model got right.
        accuracy: ``correct / scored``, or None when ``scored == 0``.
        reference: What "right" means in this row: ``"level"`` (``gap >= 1``: the less distorted
            photo is better), ``"majority"`` (``gap == 0``: the annotators' majority), or None
            (``gap == 0`` without ratios: not scored).

    """

    gap: int
    pairs: int
    scored: int
    correct: int
    accuracy: float | None
    reference: Literal["level", "majority"] | None


def photo_levels(root: str | Path) -> dict[tuple[int, int], tuple[str, int]]:
    """Read the distortion of every photo of a synthetic Photo Triage from its ``photos.csv``.

    Args:
        root: A directory written by :func:`make_synthetic_photo_triage` (e.g. the ``root`` of a
            :class:`SyntheticPhotoTriageDataModule`).

    Returns:
        ``(series, index) -> (kind, level)`` for every photo of every split: ``index`` as the pair
        lists (and :data:`~mslightning.data.PairBatch`'s ``index_a``/``index_b``) write it, 1 = the
        series' first photo; ``kind`` is one of :data:`KINDS`, or ``"none"`` at level 0.

    Raises:
        FileNotFoundError: If ``root`` has no ``photos.csv``: it is not a synthetic Photo Triage
            directory (the official Photo Triage has no distortion levels).
        ValueError: If ``photos.csv`` lacks a column or has a malformed value (file and line named).

    """
    path = Path(root) / "photos.csv"
    if not path.is_file():
        state = "does not exist" if not Path(root).exists() else f"has no {path.name}"
        raise FileNotFoundError(
            f"'{root}' {state}: it is not a synthetic Photo Triage directory (one written by "
            f"make_synthetic_photo_triage, e.g. SyntheticPhotoTriageDataModule(...).root, which lists every photo's "
            f"distortion kind and level in {path.name}). Distortion levels exist only for the synthetic data."
        )
    needed = ("series", "index", "kind", "level")
    levels: dict[tuple[int, int], tuple[str, int]] = {}
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        missing = [column for column in needed if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"'{path}' lacks the column(s) {missing} (its header is {reader.fieldnames}); it was not written by "
                "make_synthetic_photo_triage. Regenerate the data."
            )
        for row in reader:
            try:
                key = (int(row["series"]), int(row["index"]))
                level = int(row["level"])
            except (TypeError, ValueError):
                values = {column: row.get(column) for column in ("series", "index", "level")}
                raise ValueError(
                    f"{path}:{reader.line_num}: series, index and level must be integers, got {values}."
                ) from None
            if key in levels:
                raise ValueError(f"{path}:{reader.line_num}: photo {key[1]} of series {key[0]} is listed twice.")
            levels[key] = (row["kind"], level)
    return levels


def accuracy_by_level_gap(
    root: str | Path,
    series: Tensor,
    index_a: Tensor,
    index_b: Tensor,
    probability: Tensor,
    ratio: Tensor | None = None,
) -> list[LevelGapAccuracy]:
    """How often a ranking model picks the less distorted photo, per distortion-level gap of the pair.

    The distortion levels of the synthetic data are a ground truth the annotators' votes only
    approximate (they are simulated from the levels): this splits the pair accuracy into close
    calls (1 level apart) and clear ones (2 to 4 apart). Each pair's levels are looked up in
    ``photos.csv`` (:func:`photo_levels`). A pair counts as **correct** when the model's choice,
    ``probability > 0.5`` meaning "``a`` is better" (so 0.5 exactly means ``b``, as the logged
    ``pair_acc`` thresholds it), agrees with:

    * ``gap >= 1``: ``level_a < level_b`` ("``a`` is less distorted"), whatever the annotators voted;
    * ``gap == 0``: no photo is better by level, so the reference is the annotators' majority,
      ``ratio > 0.5``; pairs with ``ratio == 0.5`` (a tie, no majority) are counted in ``pairs``
      but not scored. Without ``ratio`` the gap-0 row is not scored (``accuracy`` None).

    Feed it :meth:`mslightning.modules.SiameseRanker.pair_predictions` of a loader over ``root``'s
    data: ``accuracy_by_level_gap(dm.root, **model.pair_predictions(dm.val_dataloader()))``.

    Args:
        root: The synthetic Photo Triage directory the pairs come from (``photos.csv`` in it).
        series: Each pair's series id, integer ``(P,)``.
        index_a: Photo ``a``'s index within its series (as the pair list writes it), integer ``(P,)``.
        index_b: Photo ``b``'s index, integer ``(P,)``.
        probability: The model's ``p(a > b)``, float ``(P,)``.
        ratio: The fraction of annotators preferring ``a``, float ``(P,)`` in ``[0, 1]``, or None.

    Returns:
        One :class:`LevelGapAccuracy` per gap ``0, 1, ...,`` the highest level in ``photos.csv``
        (4 with the default ``levels``), in gap order, also for gaps no pair has (``pairs`` 0).

    Raises:
        FileNotFoundError: If ``root`` is not a synthetic Photo Triage directory (no ``photos.csv``).
        ValueError: If the inputs are not 1-D of one length ``P``, or a pair names a photo
            ``photos.csv`` does not list (the series and index named: pairs from other data?).

    """
    levels = photo_levels(root)
    columns = {"series": series, "index_a": index_a, "index_b": index_b, "probability": probability}
    if ratio is not None:
        columns["ratio"] = ratio
    columns = {name: torch.as_tensor(value).detach().cpu() for name, value in columns.items()}
    shapes = {name: tuple(value.shape) for name, value in columns.items()}
    if any(len(shape) != 1 for shape in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(f"accuracy_by_level_gap needs 1-D inputs of one length (P,) each, got shapes {shapes}.")
    for name in ("series", "index_a", "index_b"):
        if columns[name].is_floating_point():
            raise ValueError(f"accuracy_by_level_gap: {name} must be integer (ids), got {columns[name].dtype}.")
    highest = max((level for _, level in levels.values()), default=0)
    pairs = [0] * (highest + 1)
    scored = [0] * (highest + 1)
    correct = [0] * (highest + 1)
    chose_a = (columns["probability"] > 0.5).tolist()
    majority_a = None if ratio is None else (columns["ratio"] > 0.5).tolist()
    tie = None if ratio is None else ((columns["ratio"] - 0.5).abs() <= _TIE_TOLERANCE).tolist()
    rows = zip(columns["series"].tolist(), columns["index_a"].tolist(), columns["index_b"].tolist(), strict=True)
    for pair, (series_id, first, second) in enumerate(rows):
        looked_up = []
        for index in (first, second):
            found = levels.get((series_id, index))
            if found is None:
                raise ValueError(
                    f"accuracy_by_level_gap: pair {pair} names photo {index} of series {series_id}, which "
                    f"'{Path(root) / 'photos.csv'}' does not list; are the pairs from another dataset than root "
                    f"'{root}'?"
                )
            looked_up.append(found[1])
        level_a, level_b = looked_up
        gap = abs(level_a - level_b)
        pairs[gap] += 1
        if gap > 0:
            reference = level_a < level_b
        elif majority_a is not None and tie is not None and not tie[pair]:
            reference = majority_a[pair]
        else:
            continue
        scored[gap] += 1
        correct[gap] += int(chose_a[pair] == reference)
    return [
        LevelGapAccuracy(
            gap=gap,
            pairs=pairs[gap],
            scored=scored[gap],
            correct=correct[gap],
            accuracy=correct[gap] / scored[gap] if scored[gap] else None,
            reference="level" if gap else ("majority" if ratio is not None else None),
        )
        for gap in range(highest + 1)
    ]
