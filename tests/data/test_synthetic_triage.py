from __future__ import annotations

import csv
import inspect
import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from mslightning.data import (
    PhotoTriageDataModule,
    SyntheticPhotoTriageDataModule,
    default_synthetic_triage_root,
    make_synthetic_photo_triage,
    read_pair_list,
)
from mslightning.data.synthetic_triage import SOURCES

TINY = {"series_per_source": 2, "photos_per_series": 3, "crop_size": 16}
LISTS = {
    "train": "train_val/train_pairlist.txt",
    "val": "train_val/val_pairlist.txt",
    "test": "test/test_pairlist.txt",
}


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def photos(root: Path) -> list[dict[str, str]]:
    with (root / "photos.csv").open() as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def larger(tmp_path_factory) -> Path:
    """Enough pairs to check the votes against the levels: 15 sources x 4 series x 10 pairs."""
    return make_synthetic_photo_triage(
        tmp_path_factory.mktemp("larger") / "data", series_per_source=4, photos_per_series=5, crop_size=16
    )


def test_the_layout_is_the_official_one(tmp_path):
    root = make_synthetic_photo_triage(tmp_path / "data", **TINY)
    manifest = json.loads((root / "manifest.json").read_text())
    images = sorted(p.name for p in (root / "train_val/train_val_imgs").iterdir())
    n_train, n_val, n_test = (2 * len(SOURCES[split]) for split in ("train", "val", "test"))
    assert len(images) == 3 * (n_train + n_val) and images[0] == "000001-01.JPG"
    assert len(list((root / "test/test_imgs").iterdir())) == 3 * n_test
    assert manifest["params"]["seed"] == 0 and manifest["params"]["version"] == 1
    assert manifest["splits"]["train"] == {"series": n_train, "photos": 3 * n_train, "pairs": 3 * n_train}
    records = read_pair_list(root / LISTS["train"])
    assert len(records) == 3 * n_train and all(record.rank_a >= 1 for record in records)
    assert {record.ratio * 10 for record in records} <= set(range(11))  # 10 annotators
    rows = photos(root)
    assert len(rows) == 3 * (n_train + n_val + n_test)
    assert set(rows[0]) == {"split", "series", "index", "source", "kind", "level", "strength", "rank"}
    assert all((row["kind"] == "none") == (row["level"] == "0") for row in rows)


def test_the_same_seed_gives_the_same_bytes(tmp_path):
    first = files(make_synthetic_photo_triage(tmp_path / "one", seed=3, **TINY))
    second = files(make_synthetic_photo_triage(tmp_path / "two", seed=3, **TINY))
    assert first == second
    other = files(make_synthetic_photo_triage(tmp_path / "three", seed=4, **TINY))
    assert other.keys() == first.keys() and other != first


def test_a_matching_root_is_reused_and_another_regenerated(tmp_path):
    root = make_synthetic_photo_triage(tmp_path / "data", **TINY)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert make_synthetic_photo_triage(tmp_path / "data", **TINY) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps
    before = files(root)
    make_synthetic_photo_triage(root, **{**TINY, "photos_per_series": 4})
    assert json.loads((root / "manifest.json").read_text())["params"]["photos_per_series"] == 4
    assert files(root) != before
    assert len(list((root / "train_val/train_val_imgs").iterdir())) == 4 * 2 * 13
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging or old copy left behind


def test_a_foreign_directory_is_never_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match=r"root '.*mine' exists and is not a synthetic Photo Triage directory"):
        make_synthetic_photo_triage(tmp_path / "mine", **TINY)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    assert (make_synthetic_photo_triage(tmp_path / "empty", **TINY) / "manifest.json").is_file()


def test_the_default_root_is_a_per_parameter_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = make_synthetic_photo_triage(**TINY)
    assert root.parent == tmp_path / "cache" / "mslightning" / "synthetic_photo_triage"
    assert root == default_synthetic_triage_root(**TINY)
    assert default_synthetic_triage_root(**{**TINY, "seed": 1}) != root
    assert (root / "manifest.json").is_file()


def test_validation_and_test_sources_are_never_trained_on(tmp_path):
    root = make_synthetic_photo_triage(tmp_path / "data", **TINY)
    sources = defaultdict(set)
    series = defaultdict(set)
    for row in photos(root):
        sources[row["split"]].add(row["source"])
        series[row["split"]].add(int(row["series"]))
    assert not sources["train"] & sources["val"] and not sources["train"] & sources["test"]
    assert not sources["val"] & sources["test"]
    assert {"motorcycle_left", "motorcycle_right"} <= sources["train"]  # one scene, one split
    for split, path in LISTS.items():
        assert {record.series for record in read_pair_list(root / path)} == series[split]


def test_votes_follow_the_levels(larger):
    level = {(int(r["series"]), int(r["index"])): int(r["level"]) for r in photos(larger)}
    rank = {(int(r["series"]), int(r["index"])): int(r["rank"]) for r in photos(larger)}
    agree = defaultdict(list)
    same_level = []
    for path in LISTS.values():
        for record in read_pair_list(larger / path):
            gap = level[record.series, record.photo_b] - level[record.series, record.photo_a]
            assert (record.rank_a, record.rank_b) == (
                rank[record.series, record.photo_a],
                rank[record.series, record.photo_b],
            )
            if gap == 0:
                same_level.append(record.ratio)
                assert record.rank_a == record.rank_b
            else:
                assert (record.rank_a < record.rank_b) == (gap > 0)  # ranks order the levels
                agree[min(abs(gap), 2)].append((record.ratio > 0.5) == (gap > 0))
    assert len(agree[2]) > 100
    assert sum(agree[2]) / len(agree[2]) > 0.97  # a gap of 2 or more: the less distorted photo wins
    assert 0.6 < sum(agree[1]) / len(agree[1]) < 0.99
    assert abs(sum(same_level) / len(same_level) - 0.5) < 0.1  # close calls
    # both orders occur: photo 1 is not always the better one
    train = read_pair_list(larger / LISTS["train"])
    assert 0.3 < sum(record.ratio > 0.5 for record in train) / len(train) < 0.7


def test_ranks_share_a_level(larger):
    by_series = defaultdict(list)
    for row in photos(larger):
        by_series[int(row["series"])].append((int(row["level"]), int(row["rank"])))
    for members in by_series.values():
        for level, rank in members:
            assert rank == 1 + sum(other < level for other, _ in members)


def test_the_datamodule_reads_the_data_back_unchanged(tmp_path):
    dm = SyntheticPhotoTriageDataModule(root=tmp_path / "data", image_size=16, batch_size=4, num_workers=0, **TINY)
    assert isinstance(dm, PhotoTriageDataModule)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["a"].shape == (4, 3, 16, 16) and batch["ratio"].dtype == torch.float32
    assert set(batch) == {"a", "b", "ratio", "series", "index_a", "index_b", "rank_a", "rank_b"}
    dm.setup("test")
    assert len(dm.test_dataset) > 0
    dm.setup("predict")
    series = next(iter(dm.predict_dataloader()))
    assert series["images"].shape == (4 * 3, 3, 16, 16)  # 4 series of 3 photos
    assert (series["rank"] >= 1).all()


def test_setup_alone_generates_the_data(tmp_path):
    dm = SyntheticPhotoTriageDataModule(root=tmp_path / "data", image_size=16, batch_size=2, num_workers=0, **TINY)
    dm.setup("validate")
    assert (tmp_path / "data" / "manifest.json").is_file() and len(dm.val_dataset) > 0


def test_hyperparameters_are_this_class_arguments(tmp_path):
    dm = SyntheticPhotoTriageDataModule(**TINY)
    assert set(dm.hparams) == set(inspect.signature(SyntheticPhotoTriageDataModule).parameters)
    assert dm.hparams["root"] is None and dm.root == default_synthetic_triage_root(**TINY)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"photos_per_series": 1}, "photos_per_series must be >= 2, got 1"),
        ({"levels": 5}, r"levels must be <= 4 \(the calibrated strengths in SEVERITY\), got 5"),
        ({"kinds": ["blur", "rain"]}, r"kinds must be a non-empty list from \['blur', 'jpeg', 'noise', 'exposure'\]"),
        ({"preference_slope": 0}, "preference_slope must be > 0, got 0"),
        ({"pairs_per_series": 0}, "pairs_per_series must be >= 1, or None"),
    ],
)
def test_bad_parameters(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic_photo_triage(tmp_path, **kwargs)
    with pytest.raises(ValueError, match=message):
        SyntheticPhotoTriageDataModule(root=tmp_path, **kwargs)


def test_fewer_pairs_and_kinds(tmp_path):
    root = make_synthetic_photo_triage(tmp_path / "data", pairs_per_series=2, kinds=["blur"], levels=2, **TINY)
    assert len(read_pair_list(root / LISTS["val"])) == 2 * 2 * len(SOURCES["val"])
    rows = photos(root)
    assert {row["kind"] for row in rows} <= {"none", "blur"} and max(int(row["level"]) for row in rows) <= 2
