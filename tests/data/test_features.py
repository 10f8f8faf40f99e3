"""FeatureStreamsDataModule: streams held as arrays of one .npz or HDF5 file."""

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mslightning.data import FeatureStreamsDataModule

N = 36


def arrays(seed=0):
    """A vector stream, an image stream and balanced labels of 3 classes."""
    rng = np.random.default_rng(seed)
    return {
        "audio": rng.normal(3.0, 2.0, size=(N, 5)),
        "rgb": rng.normal(-1.0, 0.5, size=(N, 2, 4, 4)).astype(np.float32),
        "labels": np.arange(N) % 3,
    }


def write_npz(path, **data):
    np.savez(path, **data)
    return path


def write_hdf5(path, **data):
    with h5py.File(path, "w") as file:
        for name, value in data.items():
            if value.dtype.kind == "U":
                value = value.astype("S")  # h5py stores strings as bytes
            file[name] = value
    return path


def all_batches(loader):
    return [({name: x.clone() for name, x in inputs.items()}, target.clone()) for inputs, target in loader]


@pytest.fixture
def npz(tmp_path):
    return write_npz(tmp_path / "features.npz", **arrays())


def test_shapes_attributes_and_the_batch_contract(npz):
    dm = FeatureStreamsDataModule(npz, batch_size=4)
    assert dm.stream_channels == {"audio": 5, "rgb": 2} and list(dm.stream_channels) == ["audio", "rgb"]
    assert dm.stream_shapes == {"audio": (5,), "rgb": (2, 4, 4)} and dm.num_classes == 3
    dm.setup("fit")
    inputs, target = next(iter(dm.train_dataloader()))
    assert list(inputs) == ["audio", "rgb"]
    assert inputs["audio"].shape == (4, 5) and inputs["audio"].dtype == torch.float32
    assert inputs["rgb"].shape == (4, 2, 4, 4) and inputs["rgb"].dtype == torch.float32
    assert target.shape == (4,) and target.dtype == torch.int64
    # the predict loader yields the test split's (inputs, target)
    predicted = all_batches(dm.predict_dataloader())
    tested = all_batches(dm.test_dataloader())
    assert all(torch.equal(p[1], t[1]) for p, t in zip(predicted, tested, strict=True))
    assert sum(len(t) for _, t in tested) == dm.split_rows["test"].size
    # a chosen subset and order of streams
    assert list(FeatureStreamsDataModule(npz, streams=["rgb"], batch_size=4).stream_channels) == ["rgb"]


def test_stratified_split_is_seeded_disjoint_and_keeps_class_shares(npz):
    dm = FeatureStreamsDataModule(npz, val_fraction=0.25, test_fraction=0.25, seed=3, batch_size=4)
    rows = dm.split_rows
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(N))
    labels = np.arange(N) % 3
    assert [np.bincount(labels[rows[s]], minlength=3).tolist() for s in ("train", "val", "test")] == [
        [6, 6, 6],
        [3, 3, 3],
        [3, 3, 3],
    ]
    again = FeatureStreamsDataModule(npz, val_fraction=0.25, test_fraction=0.25, seed=3, batch_size=4).split_rows
    other = FeatureStreamsDataModule(npz, val_fraction=0.25, test_fraction=0.25, seed=4, batch_size=4).split_rows
    assert all(np.array_equal(rows[s], again[s]) for s in rows)
    assert not np.array_equal(rows["val"], other["val"])


def test_standardisation_uses_training_rows_only(tmp_path):
    data = arrays()
    data["audio"][:, 4] = 7.0  # constant in every row: centred, not scaled
    data["audio"][:, 3] = np.where(np.arange(N) % 2 == 0, 2.0, 9.0)
    split = np.zeros(N, dtype=np.int64)
    split[N // 2 :] = 1
    split[-6:] = 2
    data["audio"][split == 0, 3] = 5.0  # constant in train only: left unscaled in val and test too
    data["audio"][split != 0, :3] += 100.0  # val/test far from train: their own statistics would differ
    path = write_npz(tmp_path / "features.npz", **data, split=split)
    dm = FeatureStreamsDataModule(path, batch_size=4)
    dm.setup("fit")
    train = split == 0
    for name, axes in (("audio", (0,)), ("rgb", (0, 2, 3))):
        expected_mean = np.mean(data[name][train].astype(np.float64), axis=axes)
        expected_std = np.std(data[name][train].astype(np.float64), axis=axes)
        expected_std[expected_std == 0] = 1.0
        np.testing.assert_allclose(dm.mean[name].numpy(), expected_mean, rtol=1e-6)
        np.testing.assert_allclose(dm.std[name].numpy(), expected_std, rtol=1e-6)
        shape = (1, -1) if name == "audio" else (1, -1, 1, 1)
        for split_name, code in (("train", 0), ("val", 1), ("test", 2)):
            expected = (data[name][split == code] - expected_mean.reshape(shape)) / expected_std.reshape(shape)
            got = dm.datasets[split_name].inputs[name].numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert dm.std["audio"][3] == 1 and dm.std["audio"][4] == 1
    np.testing.assert_allclose(dm.datasets["val"].inputs["audio"][:, 3].numpy(), data["audio"][split == 1, 3] - 5.0)
    assert np.allclose(dm.datasets["train"].inputs["audio"][:, 4].numpy(), 0.0)
    raw = FeatureStreamsDataModule(path, batch_size=4, standardize=False)
    raw.setup("fit")
    np.testing.assert_array_equal(
        raw.datasets["val"].inputs["audio"].numpy(), data["audio"][split == 1].astype(np.float32)
    )
    assert raw.mean == {} and raw.std == {}


def test_npz_and_hdf5_give_the_same_batches(tmp_path):
    data = arrays()
    data["split"] = np.array(["train", "val", "test", "train"] * (N // 4))
    npz = FeatureStreamsDataModule(write_npz(tmp_path / "f.npz", **data), batch_size=4)
    hdf5 = FeatureStreamsDataModule(write_hdf5(tmp_path / "f.h5", **data), batch_size=4)
    assert npz.stream_channels == hdf5.stream_channels  # same items; the HDF5 file lists them alphabetically
    assert all(np.array_equal(npz.split_rows[s], hdf5.split_rows[s]) for s in ("train", "val", "test"))
    assert npz.split_rows["val"].tolist() == list(range(1, N, 4))
    npz.setup("fit")
    hdf5.setup("fit")
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        for (a, ya), (b, yb) in zip(
            all_batches(getattr(npz, loader)()), all_batches(getattr(hdf5, loader)()), strict=True
        ):
            assert torch.equal(ya, yb) and a.keys() == b.keys()
            assert all(torch.equal(a[name], b[name]) for name in a)


def test_split_codes_and_strings_agree_and_the_file_split_wins_over_fractions(tmp_path):
    data = arrays()
    codes = np.array([0, 0, 1, 2] * (N // 4), dtype=np.uint8)
    by_code = FeatureStreamsDataModule(write_npz(tmp_path / "a.npz", **data, split=codes), batch_size=4)
    names = np.array(["train", "val", "test"])[codes]
    by_name = FeatureStreamsDataModule(
        write_npz(tmp_path / "b.npz", **data, split=names), val_fraction=0.5, batch_size=4
    )
    for split, code in (("train", 0), ("val", 1), ("test", 2)):
        assert by_code.split_rows[split].tolist() == np.flatnonzero(codes == code).tolist()
        assert by_name.split_rows[split].tolist() == by_code.split_rows[split].tolist()
    # split_key=None ignores the array: the stratified split is used, and `split` is not a stream
    ignored = FeatureStreamsDataModule(tmp_path / "a.npz", split_key=None, streams=["audio"], batch_size=4)
    assert ignored.split_rows["val"].size == 6  # 2 of each class's 12 rows; the file's split has 9


def test_setup_prints_the_class_counts_of_every_split(npz, caplog):
    dm = FeatureStreamsDataModule(npz, batch_size=4, val_fraction=0.25, test_fraction=0.25)
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    (line,) = [r.getMessage() for r in caplog.records if "rows per class" in r.getMessage()]
    assert (
        line == "Feature streams 'features.npz': rows per class 0..2: train [6, 6, 6]; val [3, 3, 3]; test [3, 3, 3]."
    )


def test_the_training_order_is_seeded_and_drop_last_applies(npz):
    first = FeatureStreamsDataModule(npz, batch_size=5, seed=1)
    second = FeatureStreamsDataModule(npz, batch_size=5, seed=1)
    first.setup()
    second.setup()
    a, b = all_batches(first.train_dataloader()), all_batches(second.train_dataloader())
    assert all(torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert [len(t) for _, t in a] == [5] * (first.split_rows["train"].size // 5)  # 22 rows: 4 full batches


# ---------------------------------------------------------------------- bad input, in the library's words


def make(tmp_path, fmt="npz", **changes):
    data = {**arrays(), **changes}
    data = {name: value for name, value in data.items() if value is not None}
    writer = write_npz if fmt == "npz" else write_hdf5
    return writer(tmp_path / f"features.{fmt}", **data)


@pytest.mark.parametrize("fmt", ["npz", "h5"])
@pytest.mark.parametrize(
    ("changes", "kwargs", "match"),
    [
        ({"labels": None}, {}, r"holds no labels array 'labels' \(labels_key\); it holds \[.*'audio'.*'rgb'.*\]"),
        ({"labels": np.arange(N) % 3 * 1.0}, {}, r"'/?labels'.* has dtype float64; labels are integer class indices"),
        ({"labels": np.r_[0, -1, np.arange(N - 2) % 3]}, {}, r"'/?labels'.* holds -1 at row 1 \(1 row\(s\) in all\)"),
        ({"labels": np.zeros((N, 1), int)}, {}, r"'/?labels'.* has shape \(36, 1\); labels are \(N,\) class indices"),
        ({"labels": np.zeros(N, int)}, {}, r"holds the single class 0"),
        ({}, {"num_classes": 2}, r"num_classes=2, but .*'/?labels'.* holds labels up to 2"),
        ({"audio": np.zeros((N - 1, 5))}, {}, r"'/?audio'.* has 35 rows but the labels 'labels' 36"),
        ({"audio": np.zeros(N)}, {}, r"'/?audio'.* has shape \(36,\); a stream is \(N, D\) vectors or \(N, C, H, W\)"),
        ({"rgb": np.zeros((N, 1, 2, 4, 4))}, {}, r"'/?rgb'.* has shape \(36, 1, 2, 4, 4\); a stream is \(N, D\)"),
        ({"rgb": np.zeros((N, 4, 4))}, {}, r"'/?rgb'.* has shape \(36, 4, 4\).*grey images: add the channel axis"),
        ({}, {"streams": ["audio", "lidar"]}, r"streams \['lidar'\] name no array of '.*'; it holds \[.*'audio'"),
        (
            {"split": np.array([1, 2] * (N // 2))},
            {},
            r"the training split is empty \(split by the split array .*'/?split'",
        ),
        ({"split": np.array([0, 3] * (N // 2))}, {}, r"'/?split'.* holds 3 at row 1 \(18 row\(s\) in all\)"),
        ({"split": np.array(["train", "dev"] * (N // 2))}, {}, r"'/?split'.* holds 'dev' at row 1 \(18 row"),
        ({}, {"batch_size": 64}, r"the training split holds 24 rows, fewer than batch_size=64"),
    ],
)
def test_bad_files_are_named(tmp_path, fmt, changes, kwargs, match):
    path = make(tmp_path, fmt, **changes)
    with pytest.raises(ValueError, match=match) as error:
        FeatureStreamsDataModule(path, **{"batch_size": 4, **kwargs})
    assert str(path) in str(error.value) or "num_classes" in str(error.value)


@pytest.mark.parametrize("fmt", ["npz", "h5"])
def test_a_non_finite_value_names_the_stream_and_its_first_row(tmp_path, fmt):
    audio = arrays()["audio"]
    audio[7, 2] = np.nan
    audio[20, 0] = np.inf
    dm = FeatureStreamsDataModule(make(tmp_path, fmt, audio=audio), batch_size=4)
    with pytest.raises(
        ValueError, match=r"'/?audio'.*: stream 'audio' holds a non-finite value \(nan\) at row 7 \(2 row"
    ):
        dm.setup("fit")


def test_files_that_are_not_feature_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Feature file '.*missing.npz' does not exist"):
        FeatureStreamsDataModule(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match=r"'.*' is a directory"):
        FeatureStreamsDataModule(tmp_path)
    (tmp_path / "notes.npz").write_text("audio,labels\n1,0\n")
    with pytest.raises(ValueError, match=r"'.*notes.npz' is neither a .npz archive \(numpy.savez\) nor an HDF5 file"):
        FeatureStreamsDataModule(tmp_path / "notes.npz")
    np.save(tmp_path / "audio.npy", np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"It is a single .npy array: save every stream and the labels into one"):
        FeatureStreamsDataModule(tmp_path / "audio.npy")
    np.savez(tmp_path / "objects.npz", audio=np.array([[1.0], ["x"]], dtype=object), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"objects.npz' array 'audio' has dtype object; a stream holds numbers"):
        FeatureStreamsDataModule(tmp_path / "objects.npz", batch_size=1)


def test_an_empty_test_split_is_named_when_asked_for(tmp_path):
    dm = FeatureStreamsDataModule(make(tmp_path), test_fraction=0.0, batch_size=4)
    dm.setup("fit")
    assert len(dm.train_dataloader()) > 0 and len(dm.val_dataloader()) > 0
    with pytest.raises(
        ValueError, match=r"has no test rows \(split by val_fraction=0.2 and test_fraction=0.0 of 36 rows, per class"
    ):
        dm.test_dataloader()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\), got 1.0"),
        ({"val_fraction": 0.6, "test_fraction": 0.4}, r"val_fraction \+ test_fraction must be < 1"),
        ({"batch_size": 0}, r"batch_size must be >= 1, got 0"),
        ({"streams": "audio"}, r"streams must be a non-empty list of array names"),
        ({"streams": ["audio", "audio"]}, r"streams names \['audio'\] more than once"),
        ({"streams": ["audio", "labels"]}, r"name the labels or split array \['labels'\]"),
    ],
)
def test_bad_arguments_are_named(npz, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeatureStreamsDataModule(npz, **kwargs)


def test_an_array_name_that_is_no_stream_name(tmp_path):
    path = Path(write_npz(tmp_path / "f.npz", **{"audio.mfcc": np.zeros((N, 2)), "labels": np.arange(N) % 2}))
    with pytest.raises(ValueError, match=r"stream name 'audio.mfcc' is not valid"):
        FeatureStreamsDataModule(path, batch_size=4)


def test_hparams_hold_the_resolved_streams_and_rebuild_the_same_data(npz):
    """Lightning logs the model's and the data's hparams together: the data's streams and classes are the model's."""
    dm = FeatureStreamsDataModule(npz, batch_size=4)
    assert dm.hparams_initial["streams"] == {"audio": 5, "rgb": 2} == dm.stream_channels
    assert dm.hparams_initial["num_classes"] == 3
    again = FeatureStreamsDataModule(**dm.hparams)
    assert again.stream_channels == dm.stream_channels
    assert all(np.array_equal(again.split_rows[s], dm.split_rows[s]) for s in dm.split_rows)
    with pytest.raises(ValueError, match=r"streams\['audio'\] = 4, but .*'audio' has shape \(36, 5\): 5 per sample"):
        FeatureStreamsDataModule(npz, streams={"audio": 4}, batch_size=4)


def test_statistics_travel_in_the_state_dict_and_standardise_new_data(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2
    first, second = tmp_path / "first.npz", tmp_path / "second.npz"
    np.savez(first, audio=rng.normal(3.0, 2.0, size=(40, 4)), labels=labels)
    np.savez(second, audio=rng.normal(-5.0, 0.5, size=(40, 4)), labels=labels)
    trained = FeatureStreamsDataModule(first, batch_size=4)
    trained.setup()
    state = trained.state_dict()
    evaluated = FeatureStreamsDataModule(second, batch_size=4)
    evaluated.setup()  # Lightning's order: setup, then the checkpoint's state
    evaluated.load_state_dict(state)
    raw = np.load(second)["audio"][evaluated.split_rows["val"]]
    expected = (raw - trained.mean["audio"].double().numpy()) / trained.std["audio"].double().numpy()
    np.testing.assert_allclose(evaluated.datasets["val"].inputs["audio"].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(evaluated.mean["audio"], trained.mean["audio"])


def test_photometric_transforms_on_standardised_streams_warn(tmp_path):
    from torchvision.transforms import v2

    from mslightning.data import JointTransform

    path = tmp_path / "images.npz"
    np.savez(path, rgb=np.random.default_rng(0).random((40, 3, 8, 8)), labels=np.arange(40) % 2)
    jitter = JointTransform(photometric={"rgb": v2.ColorJitter(brightness=0.2)})
    with pytest.warns(UserWarning, match=r"photometric transforms for \['rgb'\] run on standardised values"):
        FeatureStreamsDataModule(path, batch_size=4, train_transform=jitter)
    FeatureStreamsDataModule(path, batch_size=4, train_transform=jitter, standardize=False)  # no warning
