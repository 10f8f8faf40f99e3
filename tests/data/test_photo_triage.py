from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from PIL import Image

from mslightning.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PAD_COLOUR,
    PairRecord,
    PhotoTriageDataModule,
    collate_series,
    letterbox,
    read_pair_list,
)
from mslightning.data.photo_triage import _open_photo

IMAGES = "train_val/train_val_imgs"
TRAIN = "train_val/train_pairlist.txt"
VAL = "train_val/val_pairlist.txt"
# Train: series 1 (3 photos), 2 (2 photos); val: series 3 (3 photos).
SERIES = {1: 3, 2: 2, 3: 3}
TRAIN_LINES = [
    "1 1 2 0.8 3 1",  # the rank columns disagree with the ratio: photo 1 still won (0.8 > 0.5)
    "1 2 3 0.3 1 2",
    "1 1 3 0.5 3 2",  # a tie
    "2 1 2 0.1 2 1",
]
VAL_LINES = ["3 1 2 0.9 1 2", "3 3 2 0.2 3 2"]


def colour(series: int, photo: int) -> tuple[int, int, int]:
    return (40 * series % 256, 60 * photo % 256, 100)


def write_photos(directory: Path, series: dict[int, int], size=(20, 10), skip=()) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for sid, count in series.items():
        for photo in range(1, count + 1):
            if (sid, photo) not in skip:
                Image.new("RGB", size, colour(sid, photo)).save(directory / f"{sid:06d}-{photo:02d}.JPG", quality=95)


def make_root(tmp_path: Path, train=TRAIN_LINES, val=VAL_LINES, series=SERIES, skip=()) -> Path:
    root = tmp_path / "triage"
    write_photos(root / IMAGES, series, skip=skip)
    (root / TRAIN).write_text("".join(f"{line}\n" for line in train))
    (root / VAL).write_text("".join(f"{line}\n" for line in val))
    return root


def datamodule(root: Path, **kwargs) -> PhotoTriageDataModule:
    options = {"image_size": 16, "batch_size": 2, "num_workers": 0, "augment": False, **kwargs}
    return PhotoTriageDataModule(root, **options)


def all_pairs(loader) -> dict[str, torch.Tensor]:
    batches = list(loader)
    return {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}


# ---------------------------------------------------------------------------- read_pair_list


def test_read_pair_list_reads_every_format(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("# a comment\n\n12 1 3 0.25 2 1\n12  3\t2 1 1 3\n")
    assert read_pair_list(path) == [
        PairRecord(series=12, photo_a=1, photo_b=3, ratio=0.25, rank_a=2, rank_b=1, line=3),
        PairRecord(series=12, photo_a=3, photo_b=2, ratio=1.0, rank_a=1, rank_b=3, line=4),
    ]
    path.write_text("4 1 2 0.6\n")
    (record,) = read_pair_list(path)
    assert (record.ratio, record.rank_a, record.rank_b, record.labelled) == (0.6, -1, -1, True)
    path.write_text("4 1 2\n")  # the official test list: pairs only
    (record,) = read_pair_list(path)
    assert record.labelled is False and (record.rank_a, record.rank_b) == (-1, -1)
    path.write_text("")
    assert read_pair_list(path) == []


@pytest.mark.parametrize(
    ("line", "parts"),
    [
        ("1 1 2 0.5 1", ["expected 6 whitespace-separated fields", "got 5: '1 1 2 0.5 1'"]),
        ("1 1 2 abc 1 2", ["PREF_RATIO_OF_PHOTO1 must be a number, got 'abc'"]),
        ("1 1 2 nan 1 2", ["PREF_RATIO_OF_PHOTO1 must be a number, got 'nan'"]),
        ("x 1 2 0.5 1 2", ["SERIES_ID must be an integer, got 'x'"]),
        ("1 1.5 2 0.5 1 2", ["PHOTO1_IND must be an integer, got '1.5'"]),
        ("1 1 2 0.5 1 two", ["RANK2 must be an integer, got 'two'"]),
        ("1 1 2 1.2 1 2", ["PREF_RATIO_OF_PHOTO1 must be a fraction of annotators in [0, 1], got '1.2'"]),
        ("1 1 2 -0.1 1 2", ["in [0, 1], got '-0.1'"]),
        ("1 2 2 0.5 1 2", ["compares photo 2 of series 1 with itself"]),
        ("1 0 2 0.5 1 2", ["PHOTO1_IND 0 is below photo_index_base=1", "pass photo_index_base=0"]),
        ("1 1 2 0.5 0 2", ["RANK1 is a rank within the series (1 = best), got 0"]),
        ("1 1 2 0.5", ["4 fields, but line 1 has 6"]),
    ],
)
def test_read_pair_list_names_file_line_and_value(tmp_path, line, parts):
    path = tmp_path / "pairs.txt"
    path.write_text(f"1 1 3 0.5 1 2\n{line}\n")
    with pytest.raises(ValueError, match="pairs.txt:2: ") as error:
        read_pair_list(path)
    for part in parts:
        assert part in str(error.value)


def test_read_pair_list_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Pair list '.*nope.txt' does not exist"):
        read_pair_list(tmp_path / "nope.txt")


# ---------------------------------------------------------------------------- letterbox


def test_letterbox_centres_the_content_and_pads_with_the_mean_colour():
    red = Image.new("RGB", (20, 10), (255, 0, 0))
    out = letterbox(red, 20)
    assert out.shape == (3, 20, 20) and out.dtype == torch.float32
    fill = torch.tensor(PAD_COLOUR).view(3, 1, 1)
    torch.testing.assert_close(out[:, 5:15, :], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 10, 20))
    torch.testing.assert_close(out[:, :5, :], fill.expand(3, 5, 20))
    torch.testing.assert_close(out[:, 15:, :], fill.expand(3, 5, 20))
    # portrait, grey: padded left and right; the long side resized to size (20 -> 12, so 10 -> 6)
    out = letterbox(Image.new("L", (10, 20), 255), 12, fill=(0.0, 0.5, 1.0))
    torch.testing.assert_close(out[:, :, 3:9], torch.ones(3, 12, 6))
    torch.testing.assert_close(out[:, :, :3], torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1).expand(3, 12, 3))
    torch.testing.assert_close(out[:, :, 9:], torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1).expand(3, 12, 3))
    # upscaled, and a square image has no padding
    torch.testing.assert_close(letterbox(Image.new("RGB", (4, 4), (0, 0, 255)), 8)[2], torch.ones(8, 8))


def test_letterbox_rejects_bad_arguments():
    image = Image.new("RGB", (4, 2))
    with pytest.raises(ValueError, match="size must be >= 1, got 0"):
        letterbox(image, 0)
    with pytest.raises(ValueError, match=r"fill must be 3 numbers \(RGB\) in \[0, 1\], got \(124, 116, 104\)"):
        letterbox(image, 4, fill=(124, 116, 104))


def test_large_jpegs_are_decoded_at_a_reduced_scale(tmp_path):
    path = tmp_path / "big.JPG"
    Image.new("RGB", (800, 600), (10, 200, 30)).save(path, quality=90)
    image = _open_photo(str(path), 64)
    assert image.size == (100, 75)  # DCT scale 1/8: the smallest that keeps both sides >= 64
    assert letterbox(image, 64).shape == (3, 64, 64)


# ---------------------------------------------------------------------------- the datamodule


def test_pair_batches_follow_the_contract(tmp_path):
    dm = datamodule(make_root(tmp_path))
    dm.setup("fit")
    assert len(dm.train_dataset) == 3 and len(dm.val_dataset) == 2  # the tie dropped
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"a", "b", "ratio", "series", "index_a", "index_b", "rank_a", "rank_b"}
    assert batch["a"].shape == batch["b"].shape == (2, 3, 16, 16)
    assert batch["a"].dtype == batch["b"].dtype == torch.float32
    assert batch["ratio"].shape == (2,) and batch["ratio"].dtype == torch.float32
    for key in ("series", "index_a", "index_b", "rank_a", "rank_b"):
        assert batch[key].shape == (2,) and batch[key].dtype == torch.int64
    # normalised: the padding rows hold the normalised mean colour
    padding = (torch.tensor(PAD_COLOUR) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(batch["a"][0, :, 0, 0], padding)
    # the content is the photo's colour
    val = all_pairs(dm.val_dataloader())
    first = torch.tensor(colour(3, 1)) / 255
    torch.testing.assert_close(
        val["a"][0, :, 8, 8] * torch.tensor(IMAGENET_STD) + torch.tensor(IMAGENET_MEAN), first, atol=0.02, rtol=0
    )
    assert len(dm.train_dataloader()) == 1  # 3 pairs, batch_size 2, the incomplete batch dropped
    assert len(dm.val_dataloader()) == 1


def test_the_ratio_decides_the_winner_never_the_rank_columns(tmp_path):
    dm = datamodule(make_root(tmp_path), batch_size=1, drop_last=False)
    dm.setup("fit")
    got = all_pairs(dm._loader(dm.train_dataset, "fit"))  # list order, unshuffled
    torch.testing.assert_close(got["ratio"], torch.tensor([0.8, 0.3, 0.1]))
    assert got["index_a"].tolist() == [1, 2, 1] and got["index_b"].tolist() == [2, 3, 2]
    assert got["rank_a"].tolist() == [3, 1, 2] and got["rank_b"].tolist() == [1, 2, 1]  # as in the file
    assert got["series"].tolist() == [1, 1, 2]
    # line 1: RANK1 = 3 > RANK2 = 1, yet photo 1 won (ratio 0.8)
    assert bool(got["ratio"][0] > 0.5) and got["rank_a"][0] > got["rank_b"][0]
    # and 'a' is photo 1's image, 'b' photo 2's
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    centre = got["a"][0, :, 8, 8] * std + mean
    torch.testing.assert_close(centre, torch.tensor(colour(1, 1)) / 255, atol=0.02, rtol=0)


def test_ties_dropped_or_kept_soft(tmp_path, caplog):
    root = make_root(tmp_path)
    with caplog.at_level("INFO"):
        dropped = datamodule(root)
        dropped.setup("fit")
    assert [r.ratio for r in dropped.train_dataset.records] == [0.8, 0.3, 0.1]
    assert (
        "Photo Triage train: 2 series, 5 photos, 3 pairs (ties dropped: 1, below min_agreement=0.5: 0) from '"
        in caplog.text
    )
    soft = datamodule(root, ties="soft")
    soft.setup("fit")
    assert [r.ratio for r in soft.train_dataset.records] == [0.8, 0.3, 0.5, 0.1]


def test_min_agreement_keeps_clear_majorities(tmp_path):
    dm = datamodule(make_root(tmp_path), min_agreement=0.75, ties="soft", drop_last=False)
    dm.setup("fit")
    assert [r.ratio for r in dm.train_dataset.records] == [0.8, 0.1]  # max(r, 1 - r) >= 0.75
    assert (dm.splits["train"].ties, dm.splits["train"].disagreement) == (0, 2)
    assert [r.ratio for r in dm.val_dataset.records] == [0.9, 0.2]


def test_no_pairs_left_after_the_filters_says_which_filter_dropped_what(tmp_path):
    root = make_root(tmp_path, train=["1 1 2 0.5 1 1", "1 2 3 0.6 1 2"])
    dm = datamodule(root, min_agreement=0.7)
    with pytest.raises(ValueError) as error:
        dm.setup("fit")
    message = str(error.value)
    assert "train_list '" in message and "train_pairlist.txt' has no pairs left after the filters" in message
    assert "of its 2 lines, ties='drop' dropped 1 (ratio 0.5) and min_agreement=0.7 dropped 1." in message


def test_a_series_in_two_splits_is_an_error(tmp_path):
    root = make_root(tmp_path, val=["3 1 2 0.9 1 2", "1 1 2 0.3 2 1", "2 1 2 0.4 2 1"])
    with pytest.raises(ValueError) as error:
        datamodule(root).setup("fit")
    message = str(error.value)
    assert message.startswith("Series 1 (and 1 more: 2) is in both the train list '")
    assert f"{root / TRAIN}' and the val list '{root / VAL}'" in message


def test_a_photo_outside_its_series_is_an_error_naming_the_line(tmp_path):
    root = make_root(tmp_path, train=[*TRAIN_LINES, "1 4 1 0.9 1 2", "2 1 7 0.9 1 2"])
    with pytest.raises(ValueError) as error:
        datamodule(root).setup("fit")
    message = str(error.value)
    assert f"{root / TRAIN}:5: photo 4 of series 1 is outside the series in image_dir '{root / IMAGES}'" in message
    assert "its photos there are 1..3 (000001-01.JPG .. 000001-03.JPG)" in message
    assert "(Photos outside their series: 1 more, on line 6.)" in message


def test_an_unknown_series_is_an_error(tmp_path):
    root = make_root(tmp_path, train=[*TRAIN_LINES, "9 1 2 0.9 1 2"])
    with pytest.raises(ValueError, match=r"train_pairlist.txt:5: photo 1 of series 9 is outside the series") as error:
        datamodule(root).setup("fit")
    assert "it has no photo there (e.g. 000009-01.JPG)" in str(error.value)


def test_a_zero_based_list_gets_the_photo_index_base_hint(tmp_path):
    root = make_root(tmp_path, train=["1 0 1 0.8 1 2", "1 1 2 0.3 2 3", "2 0 1 0.9 1 2"], val=["3 0 2 0.9 1 2"])
    with pytest.raises(ValueError, match="PHOTO1_IND 0 is below photo_index_base=1"):
        datamodule(root).setup("fit")
    # with base 0 the same list reads files -01..-03, and the batches keep the list's indices
    dm = datamodule(root, photo_index_base=0, batch_size=1)
    dm.setup("fit")
    got = all_pairs(dm._loader(dm.train_dataset, "fit"))
    assert got["index_a"].tolist() == [0, 1, 0] and got["index_b"].tolist() == [1, 2, 1]
    centre = got["b"][1, :, 8, 8] * torch.tensor(IMAGENET_STD) + torch.tensor(IMAGENET_MEAN)
    torch.testing.assert_close(centre, torch.tensor(colour(1, 3)) / 255, atol=0.02, rtol=0)  # index 2 = file -03
    # a 1-based list read with base 0 runs past the series' last photo: the hint says so
    with pytest.raises(ValueError) as error:
        datamodule(make_root(tmp_path / "other"), photo_index_base=0).setup("fit")
    message = str(error.value)
    assert "photo 3 of series 1 is outside the series" in message and "its photos there are 0..2" in message
    assert "pass photo_index_base=1 (now 0)" in message


def test_a_missing_photo_within_its_series_is_an_error(tmp_path):
    root = make_root(tmp_path, skip={(1, 2)})
    with pytest.raises(FileNotFoundError) as error:
        datamodule(root).setup("fit")
    message = str(error.value)
    assert f"{root / TRAIN}:1: photo 2 of series 1 (000001-02.JPG) is missing from image_dir" in message
    assert "the series' other photos are there. Copy the photos again." in message  # line 2's photo 2: no repeat


def test_an_empty_list_is_an_error(tmp_path):
    root = make_root(tmp_path, val=[])
    with pytest.raises(ValueError, match=r"val_list '.*val_pairlist.txt' holds no pairs \(an empty list\)"):
        datamodule(root).setup("fit")


def test_missing_root_list_or_image_dir_say_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        datamodule(tmp_path / "nowhere").setup("fit")
    message = str(error.value)
    assert f"Photo Triage root '{tmp_path / 'nowhere'}' does not exist" in message
    assert "http://phototriage.cs.princeton.edu/" in message and "train_val.zip" in message
    root = make_root(tmp_path)
    (root / VAL).unlink()
    with pytest.raises(FileNotFoundError, match=r"val_list '.*val_pairlist.txt' does not exist\. Photo Triage is"):
        datamodule(root).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"image_dir '.*elsewhere' \(the photos of train_list"):
        datamodule(root, image_dir="elsewhere").setup("fit")


def test_conflicting_ranks_are_an_error(tmp_path):
    root = make_root(tmp_path, train=["1 1 2 0.8 1 2", "1 1 3 0.8 2 3"])
    with pytest.raises(ValueError, match=r"train_pairlist.txt:2: photo 1 of series 1 has rank 2, but line 1 gives it"):
        datamodule(root).setup("fit")


def test_two_files_for_one_photo_is_an_error(tmp_path):
    root = make_root(tmp_path)
    Image.new("RGB", (4, 4)).save(root / IMAGES / "1-1.png")
    with pytest.raises(ValueError, match="holds two files for photo 1 of series 1: 000001-01.JPG and 1-1.png"):
        datamodule(root).setup("fit")


def test_train_smaller_than_a_batch(tmp_path):
    with pytest.raises(ValueError, match="has 3 pairs, fewer than batch_size=4"):
        datamodule(make_root(tmp_path), batch_size=4).setup("fit")


def test_predict_yields_whole_series(tmp_path):
    root = make_root(tmp_path)
    dm = datamodule(root, predict_split="train", series_per_batch=1)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert len(batches) == 2
    first, second = batches
    assert set(first) == {"images", "series", "index", "rank"}
    assert first["images"].shape == (3, 3, 16, 16) and first["images"].dtype == torch.float32
    assert first["series"].tolist() == [1, 1, 1] and first["index"].tolist() == [1, 2, 3]
    assert first["rank"].tolist() == [3, 1, 2]  # from the list, including the dropped tie's photos
    assert second["series"].tolist() == [2, 2] and second["rank"].tolist() == [2, 1]
    for key in ("series", "index", "rank"):
        assert first[key].dtype == torch.int64
    dm = datamodule(root, series_per_batch=4)  # predict_split "val" by default
    dm.setup("predict")
    (batch,) = list(dm.predict_dataloader())
    assert batch["series"].tolist() == [3, 3, 3] and batch["rank"].tolist() == [1, 2, 3]


def test_collate_series_concatenates():
    items = [
        {
            "images": torch.zeros(n, 3, 2, 2),
            "series": torch.full((n,), s),
            "index": torch.arange(n),
            "rank": -torch.ones(n),
        }
        for s, n in ((5, 2), (6, 3))
    ]
    batch = collate_series(items)
    assert batch["images"].shape == (5, 3, 2, 2) and batch["series"].tolist() == [5, 5, 6, 6, 6]


def test_an_unlabelled_test_list_can_be_predicted_not_tested(tmp_path, caplog):
    root = make_root(tmp_path)
    write_photos(root / "test/test_imgs", {1: 2, 4: 3})  # its own directory and series numbers
    (root / "test/test_pairlist.txt").write_text("1 1 2\n4 1 2\n4 2 3\n")
    dm = datamodule(root, test_list="test/test_pairlist.txt", predict_split="test")
    dm.setup("fit")  # train series 1 and test series 1 live in other directories: no overlap
    with pytest.raises(ValueError, match="gives no preference ratios .* predict_split='test' instead"):
        dm.setup("test")
    with caplog.at_level("INFO"):
        dm.setup("predict")
    assert "Photo Triage test: 2 series, 5 photos, 3 pairs without ratios" in caplog.text
    (batch,) = list(dm.predict_dataloader())
    assert batch["series"].tolist() == [1, 1, 4, 4, 4] and batch["rank"].tolist() == [-1] * 5


def test_the_test_stage_needs_a_test_list(tmp_path):
    with pytest.raises(ValueError, match=r"The test stage needs test_list, which is None.*test\.zip"):
        datamodule(make_root(tmp_path)).setup("test")
    with pytest.raises(ValueError, match="predict_split='test' needs test_list"):
        datamodule(make_root(tmp_path), predict_split="test")


def test_labelled_test_split(tmp_path):
    root = make_root(tmp_path)
    write_photos(root / "test/test_imgs", {7: 2})
    (root / "test/test_pairlist.txt").write_text("7 2 1 0.7 1 2\n")
    dm = datamodule(root, test_list="test/test_pairlist.txt")
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["series"].tolist() == [7] and batch["ratio"].tolist() == pytest.approx([0.7])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ties": "half"}, "ties must be 'drop' or 'soft', got 'half'"),
        ({"min_agreement": 0.4}, r"min_agreement must be in \[0.5, 1\]"),
        ({"image_size": 0}, "image_size must be >= 1, got 0"),
        ({"predict_split": "all"}, "predict_split must be one of"),
        ({"photo_index_base": -1}, "photo_index_base must be >= 0, got -1"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        PhotoTriageDataModule(tmp_path, **kwargs)


def test_augmentation_is_for_training_only(tmp_path):
    root = tmp_path / "triage"
    directory = root / IMAGES
    directory.mkdir(parents=True)
    for sid in (1, 3):
        for photo in (1, 2):
            half = Image.new("RGB", (16, 16), (0, 0, 0))
            half.paste((255, 255, 255), (0, 0, 8, 16))  # left half white: a flip is visible
            half.save(directory / f"{sid:06d}-{photo:02d}.png")
    (root / TRAIN).write_text("1 1 2 0.8 1 2\n")
    (root / VAL).write_text("3 1 2 0.8 1 2\n")
    dm = datamodule(root, augment=True, batch_size=1)
    dm.setup("fit")
    torch.manual_seed(0)
    lefts = {bool(dm.train_dataset[0][key][0, 8, 2] > dm.train_dataset[0][key][0, 8, 13]) for key in "ab" * 8}
    assert lefts == {True, False}  # flipped sometimes
    assert all(bool(dm.val_dataset[0]["a"][0, 8, 2] > dm.val_dataset[0]["a"][0, 8, 13]) for _ in range(8))
    torch.testing.assert_close(dm.val_dataset[0]["a"], dm.val_dataset[0]["a"])


def test_worker_processes_load_the_photos(tmp_path):
    dm = datamodule(make_root(tmp_path), num_workers=1, predict_split="train")
    dm.setup("fit")
    assert sum(batch["a"].shape[0] for batch in dm.train_dataloader()) == 2
    dm.setup("predict")
    assert sum(batch["images"].shape[0] for batch in dm.predict_dataloader()) == 5


def test_arguments_are_plain_types_for_the_cli():
    signature = inspect.signature(PhotoTriageDataModule)
    assert all(p.default is not inspect.Parameter.empty for name, p in signature.parameters.items() if name != "root")


def test_an_unreadable_photo_is_named_when_loaded(tmp_path):
    root = make_root(tmp_path)
    (root / IMAGES / "000003-01.JPG").write_bytes(b"not a jpeg")
    dm = datamodule(root)
    dm.setup("fit")  # setup checks that the files exist; decoding them all would take minutes on the real data
    with pytest.raises(ValueError, match=r"Photo '.*000003-01.JPG' cannot be read as an image"):
        dm.val_dataset[0]
