"""The synthetic retina: deterministic, cached, written in the recordings layout, behaviour matters."""

import h5py
import numpy as np
import pytest

from mslightning.data.recordings import RecordingsDataModule
from mslightning.data.synthetic_retina import (
    BEHAVIOUR_NAMES,
    SyntheticRecordingsDataModule,
    default_synthetic_recordings_path,
    make_synthetic_recordings,
    read_synthetic_manifest,
)

SMALL = {"neurons": (5, 3), "frames": 400, "size": 12, "trial_frames": 20}


def _arrays(path):
    with h5py.File(path, "r") as file:
        return {f"{s}/{k}": file[s][k][()] for s in file for k in file[s]}


def test_deterministic_by_seed_and_in_the_layout(tmp_path):
    first = make_synthetic_recordings(tmp_path / "a.h5", seed=3, **SMALL)
    second = make_synthetic_recordings(tmp_path / "b.h5", seed=3, **SMALL)
    other = make_synthetic_recordings(tmp_path / "c.h5", seed=4, **SMALL)
    a, b = _arrays(first), _arrays(second)
    assert (
        a.keys()
        == b.keys()
        == {f"{s}/{k}" for s in ("s1", "s2") for k in ("stimulus", "behaviour", "responses", "mask", "rates", "split")}
    )
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["s1/stimulus"], _arrays(other)["s1/stimulus"])
    assert a["s1/stimulus"].shape == (400, 12, 12) and a["s1/stimulus"].dtype == np.uint8
    assert a["s1/behaviour"].shape == (400, 4) and a["s2/responses"].shape == (400, 3)
    assert set(np.unique(a["s1/split"])) == {0, 1, 2}
    assert (a["s1/responses"][~a["s1/mask"]] == 0).all()
    with h5py.File(first, "r") as file:
        assert file["s1"].attrs["frame_rate"] == 30.0
        assert list(file["s1"].attrs["behaviour_names"]) == list(BEHAVIOUR_NAMES)
    dm = RecordingsDataModule(first, window=10, burn_in=2, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert dm.sessions == {"s1": 5, "s2": 3} and dm.behaviour_dim == 4 and dm.frame_size == (12, 12) and dm.has_rates


def test_cache_reuse_and_replacement(tmp_path):
    path = make_synthetic_recordings(tmp_path / "data.h5", **SMALL)
    stamp = path.stat().st_mtime_ns, path.stat().st_ino
    assert make_synthetic_recordings(path, **SMALL) == path
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == stamp  # reused, not rewritten
    make_synthetic_recordings(path, seed=1, **SMALL)  # other parameters: replaced
    assert read_synthetic_manifest(path)["params"]["seed"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging file left
    foreign = tmp_path / "mine.h5"
    with h5py.File(foreign, "w") as file:
        file["x"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"mine.h5' exists and is not a synthetic recordings file"):
        make_synthetic_recordings(foreign, **SMALL)
    with h5py.File(foreign, "r") as file:
        assert list(file) == ["x"]  # untouched


def test_default_path_is_per_user_and_per_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = default_synthetic_recordings_path(**SMALL)
    assert path.parent == tmp_path / "mslightning" / "synthetic_retina" and path.suffix == ".h5"
    assert default_synthetic_recordings_path(seed=1, **SMALL) != path
    dm = SyntheticRecordingsDataModule(window=10, burn_in=2, batch_size=4, num_workers=0, **SMALL)
    assert dm.path == path and not path.exists()  # nothing written in __init__
    assert dm.sessions == {"s1": 5, "s2": 3} and path.exists()  # written when first needed
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["stimulus"].shape[1:] == (10, 1, 12, 12) and "rates" in batch and batch["behaviour"].shape[-1] == 4


def test_behaviour_matters_with_the_defaults(tmp_path):
    figures = read_synthetic_manifest(make_synthetic_recordings(tmp_path / "default.h5"))["figures"]
    assert {name: f["neurons"] for name, f in figures.items()} == {"s1": 32, "s2": 20}
    for f in figures.values():
        assert 0.5 < f["oracle_correlation"] < 0.8
        assert f["oracle_correlation"] - f["behaviour_free_correlation"] > 0.05
        assert 0.3 < f["mean_rate"] < 0.8 and 0.3 < f["saccades_per_second"] < 1.2


def test_invalid_parameters(tmp_path):
    with pytest.raises(ValueError, match=r"neurons must be a positive integer or one per session \(2 sessions\)"):
        make_synthetic_recordings(tmp_path / "x.h5", neurons=(4, 5, 6))
    with pytest.raises(ValueError, match=r"frames must be an integer >= 400 \(20 trials of trial_frames=20"):
        make_synthetic_recordings(tmp_path / "x.h5", frames=399, trial_frames=20)
    with pytest.raises(ValueError, match="size must be an integer >= 8, got 4"):
        SyntheticRecordingsDataModule(size=4)
