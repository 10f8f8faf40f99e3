from __future__ import annotations

import csv
import inspect
import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from mslightning.data import (
    LevelGapAccuracy,
    PhotoTriageDataModule,
    SyntheticPhotoTriageDataModule,
    accuracy_by_level_gap,
    default_synthetic_triage_root,
    make_synthetic_photo_triage,
    photo_levels,
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


# ---------------------------------------------------------------------------- accuracy by level gap

HAND_PHOTOS = """split,series,index,source,kind,level,strength,rank
val,1,1,coffee,none,0,0,1
val,1,2,coffee,blur,1,0.7,2
val,1,3,coffee,jpeg,3,12,3
val,1,4,coffee,noise,4,0.11,4
val,2,1,chelsea,exposure,2,1.0,1
val,2,2,chelsea,blur,2,1.4,1
"""
# series, index_a, index_b, p(a > b), ratio; the comment says why the pair is right or wrong
HAND_PAIRS = [
    (1, 1, 2, 0.9, 0.7),  # gap 1, a less distorted, chose a: right
    (1, 2, 1, 0.7, 0.2),  # gap 1, a more distorted, chose a: wrong
    (1, 2, 3, 0.5, 0.9),  # gap 2, a less distorted, 0.5 chooses b: wrong
    (1, 1, 3, 0.2, 1.0),  # gap 3, a less distorted, chose b: wrong
    (1, 4, 1, 0.1, 0.0),  # gap 4, a more distorted, chose b: right
    (2, 1, 2, 0.6, 0.8),  # gap 0, majority a, chose a: right
    (2, 2, 1, 0.6, 0.5),  # gap 0, a tie: no majority, not scored
    (2, 1, 2, 0.6, 0.3),  # gap 0, majority b, chose a: wrong
]


def hand_root(tmp_path: Path) -> Path:
    (tmp_path / "photos.csv").write_text(HAND_PHOTOS)
    return tmp_path


def hand_columns(**changes) -> dict[str, torch.Tensor]:
    series, index_a, index_b, probability, ratio = zip(*HAND_PAIRS, strict=True)
    columns = {
        "series": torch.tensor(series),
        "index_a": torch.tensor(index_a),
        "index_b": torch.tensor(index_b),
        "probability": torch.tensor(probability),
        "ratio": torch.tensor(ratio),
    }
    return {**columns, **changes}


def test_photo_levels_reads_kind_and_level(tmp_path):
    levels = photo_levels(hand_root(tmp_path))
    assert levels == {
        (1, 1): ("none", 0),
        (1, 2): ("blur", 1),
        (1, 3): ("jpeg", 3),
        (1, 4): ("noise", 4),
        (2, 1): ("exposure", 2),
        (2, 2): ("blur", 2),
    }


def test_accuracy_by_level_gap_counts_by_hand(tmp_path):
    rows = accuracy_by_level_gap(hand_root(tmp_path), **hand_columns())
    assert rows == [
        LevelGapAccuracy(gap=0, pairs=3, scored=2, correct=1, accuracy=0.5, reference="majority"),
        LevelGapAccuracy(gap=1, pairs=2, scored=2, correct=1, accuracy=0.5, reference="level"),
        LevelGapAccuracy(gap=2, pairs=1, scored=1, correct=0, accuracy=0.0, reference="level"),
        LevelGapAccuracy(gap=3, pairs=1, scored=1, correct=0, accuracy=0.0, reference="level"),
        LevelGapAccuracy(gap=4, pairs=1, scored=1, correct=1, accuracy=1.0, reference="level"),
    ]
    # without ratios the gap-0 row is counted but not scored; the others do not use the ratios
    without = accuracy_by_level_gap(hand_root(tmp_path), **hand_columns(ratio=None))
    assert without[0] == LevelGapAccuracy(gap=0, pairs=3, scored=0, correct=0, accuracy=None, reference=None)
    assert without[1:] == rows[1:]


def test_accuracy_by_level_gap_lists_every_gap_even_empty(tmp_path):
    columns = {key: value[:1] for key, value in hand_columns().items()}  # one pair, gap 1
    rows = accuracy_by_level_gap(hand_root(tmp_path), **columns)
    assert [row.gap for row in rows] == [0, 1, 2, 3, 4]
    assert [row.pairs for row in rows] == [0, 1, 0, 0, 0]
    assert rows[0].accuracy is None and rows[2].accuracy is None and rows[1].accuracy == 1.0


def test_accuracy_by_level_gap_names_an_unknown_photo(tmp_path):
    columns = hand_columns(index_b=torch.tensor([2, 1, 3, 3, 1, 2, 1, 9]))
    with pytest.raises(ValueError, match=r"pair 7 names photo 9 of series 2, which '.*photos.csv' does not list"):
        accuracy_by_level_gap(hand_root(tmp_path), **columns)
    with pytest.raises(ValueError, match=r"photo 1 of series 5"):
        accuracy_by_level_gap(hand_root(tmp_path), **hand_columns(series=torch.tensor([5] * 8)))


def test_accuracy_by_level_gap_checks_the_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"1-D inputs of one length .*'probability': \(3,\)"):
        accuracy_by_level_gap(hand_root(tmp_path), **hand_columns(probability=torch.rand(3)))
    with pytest.raises(ValueError, match="series must be integer"):
        accuracy_by_level_gap(hand_root(tmp_path), **hand_columns(series=torch.ones(8)))


def test_a_root_without_photos_csv_is_not_synthetic(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no photos.csv: it is not a synthetic Photo Triage directory"):
        photo_levels(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'.*nowhere' does not exist: it is not a synthetic Photo Triage"):
        accuracy_by_level_gap(tmp_path / "nowhere", **hand_columns())
    (tmp_path / "photos.csv").write_text("split,series,index\nval,1,1\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['kind', 'level'\]"):
        photo_levels(tmp_path)


def test_an_oracle_of_the_levels_is_right_on_every_gap(tmp_path):
    dm = SyntheticPhotoTriageDataModule(root=tmp_path / "data", image_size=16, num_workers=0, **TINY)
    assert dm.root == tmp_path / "data"
    dm.setup("validate")
    records = dm.val_dataset.records
    levels = photo_levels(dm.root)
    assert {(r.series, photo) for r in records for photo in (r.photo_a, r.photo_b)} <= set(levels)
    level_a = torch.tensor([levels[r.series, r.photo_a][1] for r in records])
    level_b = torch.tensor([levels[r.series, r.photo_b][1] for r in records])
    rows = accuracy_by_level_gap(
        dm.root,
        series=torch.tensor([r.series for r in records]),
        index_a=torch.tensor([r.photo_a for r in records]),
        index_b=torch.tensor([r.photo_b for r in records]),
        probability=(level_a < level_b).float(),
        ratio=torch.tensor([r.ratio for r in records]),
    )
    assert sum(row.pairs for row in rows) == len(records)
    assert all(row.accuracy == 1.0 for row in rows[1:] if row.pairs)
