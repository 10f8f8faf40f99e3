"""NYU Depth V2 from mini files in the real MATLAB v7.3 layout, written by hdf5storage (as MATLAB writes)."""

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from torchvision.transforms import v2

from mslightning.data import (
    NYU_CLASS_SETUPS,
    NYU_SCENE_TYPES,
    JointTransform,
    LazyHDF5,
    NYUDepthV2DataModule,
    read_matlab_strings,
    read_nyu_splits,
    write_nyu_mat,
)

H, W = 12, 16  # not square: a transposed image would have the wrong shape
SCENES = ["kitchen", "bedroom", "study", "excercise_room", "office", "bathroom"]


def _mini(tmp_path: Path, n: int = 24, rooms_per_scene: int = 4, seed: int = 0) -> tuple[Path, dict]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
    depths = rng.uniform(0.5, 6.0, (n, H, W)).astype(np.float32)
    scene_types = [SCENES[i % len(SCENES)] for i in range(n)]
    rooms = [f"{s}_{(i // len(SCENES)) % rooms_per_scene:04d}" for i, s in enumerate(scene_types)]
    path = write_nyu_mat(tmp_path / "nyu_depth_v2_labeled.mat", images, depths, scene_types, rooms)
    return path, {"images": images, "depths": depths, "scene_types": scene_types, "rooms": rooms}


@pytest.fixture
def mini(tmp_path):
    return _mini(tmp_path)


def test_the_mini_file_has_matlab_s_layout(mini):
    path, _ = mini
    assert path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    with h5py.File(path) as f:  # what the real file looks like through h5py: axes reversed, strings by reference
        assert f["images"].shape == (24, 3, W, H) and f["images"].dtype == np.uint8
        assert f["depths"].shape == (24, W, H)
        assert f["sceneTypes"].shape == (1, 24) and f["sceneTypes"].dtype == h5py.ref_dtype
        assert f["images"].attrs["MATLAB_class"] == b"uint8"


def test_orientation_dtypes_and_scene_names(mini):
    path, truth = mini
    dm = NYUDepthV2DataModule(path, classes="scenes27", image_size=(8, 8), test_fraction=0.3)
    dm.setup("fit")
    assert read_matlab_strings(LazyHDF5(path), "sceneTypes") == truth["scene_types"]
    assert read_matlab_strings(LazyHDF5(path), "scenes") == truth["rooms"]
    dataset = dm._dataset("train", None)
    for position in (0, len(dataset) - 1):
        index = int(dm.splits["train"][position])
        sample = dataset.unnormalized(position)
        assert sample["rgb"].dtype == torch.float32 and sample["rgb"].shape == (3, H, W)
        assert sample["depth"].dtype == torch.float32 and sample["depth"].shape == (1, H, W)
        np.testing.assert_array_equal(sample["rgb"].numpy() * 255, truth["images"][index].transpose(2, 0, 1))
        np.testing.assert_array_equal(sample["depth"][0].numpy(), truth["depths"][index])
        assert dm.class_names[int(dataset.labels[position])] == truth["scene_types"][index]


def test_class_setups(mini):
    path, truth = mini
    assert len(NYU_SCENE_TYPES) == 27 and len(NYU_CLASS_SETUPS["gupta10"]) == 10
    gupta = NYUDepthV2DataModule(path, classes="gupta10", test_fraction=0.3)
    gupta.setup()
    names = [gupta.class_names[k] for k in gupta.labels]
    expected = [s if s in NYU_CLASS_SETUPS["gupta10"] else "others" for s in truth["scene_types"]]
    assert names == expected and gupta.num_classes == 10
    assert {"study", "excercise_room"} & set(gupta.class_names) == set()
    scenes = NYUDepthV2DataModule(path, classes="scenes27", test_fraction=0.3)
    scenes.setup()
    assert scenes.num_classes == 27 and [scenes.class_names[k] for k in scenes.labels] == truth["scene_types"]


def test_seeded_split_keeps_rooms_whole_is_stratified_and_reproducible(mini, capsys, caplog):
    path, truth = mini
    dm = NYUDepthV2DataModule(path, test_fraction=0.5, val_fraction=0.3, seed=3)
    dm.setup()
    rooms = np.array(truth["rooms"])
    sides = {role: set(rooms[indices]) for role, indices in dm.splits.items()}
    assert not sides["train"] & sides["test"] and not sides["train"] & sides["val"] and not sides["val"] & sides["test"]
    assert sorted(np.concatenate(list(dm.splits.values())).tolist()) == list(range(24))
    for label in np.unique(dm.labels):  # every class on every side (4 rooms of one image each per class)
        for role in ("train", "val", "test"):
            assert label in dm.labels[dm.splits[role]], (role, label)
    again = NYUDepthV2DataModule(path, test_fraction=0.5, val_fraction=0.3, seed=3)
    again.setup()
    other = NYUDepthV2DataModule(path, test_fraction=0.5, val_fraction=0.3, seed=4)
    other.setup()
    assert all(np.array_equal(dm.splits[r], again.splits[r]) for r in dm.splits)
    assert any(not np.array_equal(dm.splits[r], other.splits[r]) for r in dm.splits)
    assert "seeded split (seed 3, whole rooms" in caplog.text and "train (" in caplog.text


def test_official_split_beside_the_file_or_given(mini, tmp_path, caplog):
    path, _ = mini
    train, test = np.arange(1, 17), np.arange(17, 25)  # 1-based, as MATLAB writes them
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": train[:, None].astype(float), "testNdxs": test[:, None]})
    assert [a.tolist() for a in read_nyu_splits(tmp_path / "splits.mat", 24)] == [
        list(range(16)),
        list(range(16, 24)),
    ]
    dm = NYUDepthV2DataModule(path)  # splits.mat found beside the data file
    dm.setup()
    assert dm.splits["train"].tolist() == list(range(16)) and dm.splits["test"].tolist() == list(range(16, 24))
    assert dm.splits["val"].tolist() == dm.splits["test"].tolist()  # no official validation split
    assert "official split" in caplog.text and "validation = the test split" in caplog.text
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "splits.mat").rename(elsewhere / "my_splits.mat")
    given = NYUDepthV2DataModule(path, splits_path=elsewhere / "my_splits.mat")
    given.setup()
    assert given.splits["train"].tolist() == list(range(16))


def test_depth_encodings_and_training_statistics(mini):
    path, truth = mini
    for encoding, encode in (("metres", lambda d: d), ("inverse", lambda d: 1 / np.maximum(d, 0.1))):
        dm = NYUDepthV2DataModule(path, depth_encoding=encoding, rgb_statistics="train", test_fraction=0.3)
        dm.setup()
        (rgb_mean, rgb_std), (depth_mean, depth_std) = (dm.normalization()[s] for s in ("rgb", "depth"))
        train = dm.splits["train"]
        depth = encode(truth["depths"][train].astype(np.float64))  # the oracle: numpy over the training images only
        assert depth_mean.item() == pytest.approx(depth.mean(), rel=1e-5)
        assert depth_std.item() == pytest.approx(depth.std(), rel=1e-5)
        rgb = truth["images"][train].astype(np.float64) / 255
        np.testing.assert_allclose(rgb_mean.numpy(), rgb.mean(axis=(0, 1, 2)), rtol=1e-5)
        np.testing.assert_allclose(rgb_std.numpy(), rgb.std(axis=(0, 1, 2)), rtol=1e-5)
    imagenet = NYUDepthV2DataModule(path, test_fraction=0.3)
    imagenet.setup()
    np.testing.assert_allclose(imagenet.normalization()["rgb"][0].numpy(), [0.485, 0.456, 0.406], rtol=1e-6)


def test_statistics_travel_in_the_state_dict(mini):
    path, _ = mini
    trained = NYUDepthV2DataModule(path, test_fraction=0.3)
    trained.setup()
    state = trained.state_dict()
    assert state["statistics"]["depth"] == trained.statistics["depth"]
    restored = NYUDepthV2DataModule(path, test_fraction=0.3)
    restored.load_state_dict(state)
    restored.statistics["depth"] = ([123.0], [2.0])  # proves no recomputation happens on use
    restored.setup()
    assert restored.normalization()["depth"][0].item() == 123.0


def test_batches_cache_and_workers_agree(mini):
    path, _ = mini
    kwargs = {"image_size": (8, 12), "batch_size": 4, "test_fraction": 0.3}
    lazy = NYUDepthV2DataModule(path, **kwargs)
    cached = NYUDepthV2DataModule(path, cache=True, **kwargs)
    workers = NYUDepthV2DataModule(path, num_workers=2, **kwargs)
    for dm in (lazy, cached, workers):
        dm.setup()
    batches = [list(dm.val_dataloader()) for dm in (lazy, cached, workers)]
    inputs, target = batches[0][0]
    assert (
        inputs["rgb"].shape == (4, 3, 8, 12) and inputs["depth"].shape == (4, 1, 8, 12) and target.dtype == torch.int64
    )
    for other in batches[1:]:
        assert len(other) == len(batches[0])
        for (a, ta), (b, tb) in zip(batches[0], other, strict=True):
            assert torch.equal(ta, tb) and all(torch.equal(a[s], b[s]) for s in a)
    train_inputs, _ = next(iter(workers.train_dataloader()))
    assert train_inputs["depth"].shape == (4, 1, 8, 12)


class _HandleOwners(torch.utils.data.Dataset):
    """Reads a sample, then says which process holds the handle that read it."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, position):
        self.dataset[position]
        return os.getpid(), self.dataset.data.pid


def test_every_worker_reads_through_its_own_handle(mini):
    path, _ = mini
    dm = NYUDepthV2DataModule(path, image_size=(8, 12), test_fraction=0.3)
    dm.setup()  # the parent opened the file to read the labels
    parent = os.getpid()
    assert dm.data.is_open and dm.data.pid == parent
    loader = torch.utils.data.DataLoader(_HandleOwners(dm._dataset("val", None)), batch_size=1, num_workers=2)
    owners = {(int(pid), int(handle)) for pid, handle in loader}
    assert len(owners) == 2 and all(pid == handle != parent for pid, handle in owners)
    assert dm.data.is_open and dm.data.pid == parent  # the parent's handle untouched


def test_joint_augmentation_keeps_rgb_and_depth_pixel_aligned(tmp_path):
    # rgb holds each pixel's column and row; depth encodes both: depth = x + 100 * y. Any resampling applied to
    # all channels alike keeps that relation at every output pixel; a crop or flip drawn per stream breaks it.
    y, x = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    images = np.stack([x * 8, y * 8, np.zeros_like(x)], axis=-1).astype(np.uint8)[None].repeat(8, 0)
    depths = (x + 100.0 * y).astype(np.float32)[None].repeat(8, 0)
    path = write_nyu_mat(
        tmp_path / "coords.mat", images, depths, ["kitchen", "bedroom"] * 4, [f"r{i}" for i in range(8)]
    )
    geometry_only = NYUDepthV2DataModule(path, image_size=(8, 8), test_fraction=0.3).default_train_transform()
    dm = NYUDepthV2DataModule(
        path,
        image_size=(8, 8),
        test_fraction=0.3,
        train_transform=JointTransform(geometry_only.geometric),
        batch_size=2,
    )
    dm.setup()
    (rgb_mean, rgb_std), (depth_mean, depth_std) = (dm.normalization()[s] for s in ("rgb", "depth"))
    flipped = cropped = 0
    torch.manual_seed(0)
    for _ in range(10):
        for inputs, _ in dm.train_dataloader():
            rgb = inputs["rgb"] * rgb_std[:, None, None] + rgb_mean[:, None, None]
            depth = inputs["depth"][:, 0] * depth_std + depth_mean
            col, row = rgb[:, 0] * 255 / 8, rgb[:, 1] * 255 / 8
            torch.testing.assert_close(depth, col + 100 * row, atol=1e-3, rtol=1e-5)
            flipped += int((col[:, :, 0] > col[:, :, -1]).all(dim=1).sum())
            cropped += int((col.amax(dim=(1, 2)) - col.amin(dim=(1, 2)) < W - 1.5).sum())
    assert flipped > 0 and cropped > 0  # the transform did flip and crop


def test_photometric_transforms_touch_rgb_only(mini):
    path, _ = mini
    jitter = JointTransform(photometric={"rgb": v2.ColorJitter(brightness=(0.2, 0.2))})
    dm = NYUDepthV2DataModule(path, test_fraction=0.3, train_transform=jitter, image_size=(H, W))
    dm.setup()
    plain = dm._dataset("train", None)
    dark = dm._dataset("train", jitter)
    a, b = plain[0][0], dark[0][0]
    assert torch.equal(a["depth"], b["depth"]) and not torch.allclose(a["rgb"], b["rgb"])


def test_the_nyu_config_runs_through_the_cli(mini, tmp_path, monkeypatch):
    from mslightning.cli import MSLightningCLI

    path, _ = mini
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).parents[2] / "configs" / "dual_stream" / "nyu_rgbd.yaml"
    args = ["--data.init_args.path", str(path), "--data.init_args.image_size", "[8, 12]"]
    args += ["--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0", "--trainer.accelerator", "cpu"]
    cli = MSLightningCLI(args=["fit", "--config", str(config), "--trainer.fast_dev_run", "1", *args])
    assert cli.trainer.state.finished and cli.model.num_classes == 10 and list(cli.model.streams) == ["rgb", "depth"]


# ------------------------------------------------------------------ bad files


def test_missing_file_names_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nyu_depth_v2_labeled.mat \(2.8 GB\).*cs.nyu.edu"):
        NYUDepthV2DataModule(tmp_path / "absent.mat")
    with pytest.raises(FileNotFoundError, match="NYU split file"):
        NYUDepthV2DataModule(_mini(tmp_path)[0], splits_path=tmp_path / "absent_splits.mat")


def test_not_hdf5_is_named(tmp_path):
    path = tmp_path / "old.mat"
    scipy.io.savemat(path, {"images": np.zeros((2, 2))})  # a MATLAB v5 file: not HDF5
    dm = NYUDepthV2DataModule(path)
    with pytest.raises(ValueError, match="not an HDF5 file.*MATLAB files before v7.3"):
        dm.setup()


def _rewrite(path: Path, edit) -> Path:
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.__delitem__("depths"), r"dataset '/depths' does not exist \('/' holds"),
        (lambda f: f.__delitem__("sceneTypes"), r"dataset '/sceneTypes' does not exist"),
        (
            lambda f: (f.__delitem__("depths"), f.create_dataset("depths", data=np.zeros((24, H, W), "f4"))),
            rf"'/depths' has shape \(24, {H}, {W}\), expected \(24, {W}, {H}\)",
        ),
        (
            lambda f: (f.__delitem__("images"), f.create_dataset("images", data=np.zeros((24, W, H), "u1"))),
            r"'/images' has shape \(24, 16, 12\), expected \(any, 3, any, any\)",
        ),
        (
            lambda f: (f.__delitem__("images"), f.create_dataset("images", data=np.zeros((24, 3, W, H), "f4"))),
            "'/images' has dtype float32, expected unsigned integer",
        ),
        (
            lambda f: (f.__delitem__("sceneTypes"), f.create_dataset("sceneTypes", data=np.zeros((1, 24)))),
            r"'/sceneTypes' has dtype float64, expected object references \(expected a MATLAB cell array of strings\)",
        ),
    ],
    ids=[
        "no-depths",
        "no-sceneTypes",
        "depths-transposed",
        "images-without-channels",
        "float-images",
        "numeric-scenes",
    ],
)
def test_wrong_layout_names_the_dataset(tmp_path, edit, message):
    path, _ = _mini(tmp_path)
    dm = NYUDepthV2DataModule(_rewrite(path, edit))
    with pytest.raises(ValueError, match=message):
        dm.setup()


def test_unknown_scene_type_and_bad_split_files(tmp_path):
    rng = np.random.default_rng(0)
    path = write_nyu_mat(
        tmp_path / "odd.mat",
        rng.integers(0, 255, (4, H, W, 3), dtype=np.uint8),
        np.ones((4, H, W)),
        ["kitchen", "garage", "kitchen", "office"],
    )
    with pytest.raises(ValueError, match=r"scene types \['garage'\] that are not NYU Depth V2's 27"):
        NYUDepthV2DataModule(path).setup()
    splits = tmp_path / "splits.mat"
    scipy.io.savemat(splits, {"train": np.arange(1, 3)})
    with pytest.raises(ValueError, match=r"has no 'trainNdxs' \(it holds \['train'\]\)"):
        read_nyu_splits(splits)
    scipy.io.savemat(splits, {"trainNdxs": np.arange(1, 4)[:, None], "testNdxs": np.array([[3], [9]])})
    with pytest.raises(ValueError, match="testNdxs names image 9, but the data file has 4 images"):
        read_nyu_splits(splits, 4)
    with pytest.raises(ValueError, match=r"images \[3\] are in both trainNdxs and testNdxs"):
        read_nyu_splits(splits)
    splits.write_text("not matlab")
    with pytest.raises(ValueError, match="is not a MATLAB v5 split file"):
        read_nyu_splits(splits)


def test_non_finite_depth_names_the_image(tmp_path):
    path, _ = _mini(tmp_path)
    _rewrite(path, lambda f: f["depths"].__setitem__((5, 0, 0), np.nan))
    dm = NYUDepthV2DataModule(path, test_fraction=0.3)
    dm.setup()
    role = "train" if 5 in dm.splits["train"] else "test"
    position = int(np.flatnonzero(dm.splits[role] == 5)[0])
    with pytest.raises(ValueError, match=r"'/depths': image 6 \(1-based\) holds non-finite depth"):
        dm._dataset(role, None)[position]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": "gupta11"}, "classes must be one of"),
        ({"image_size": (4, 8)}, "image_size must be"),
        ({"depth_encoding": "disparity"}, "depth_encoding must be"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        (
            {"train_transform": JointTransform(photometric={"ir": v2.ColorJitter(0.1)})},
            r"not streams \['rgb', 'depth'\]",
        ),
    ],
)
def test_bad_arguments(mini, kwargs, message):
    with pytest.raises(ValueError, match=message):
        NYUDepthV2DataModule(mini[0], **kwargs)


def test_a_checkpoint_evaluates_with_the_training_statistics(mini, tmp_path, monkeypatch):
    from lightning.pytorch import Trainer

    from mslightning.modules import MultiStreamClassifier

    path, _ = mini
    kwargs = {"image_size": (8, 12), "batch_size": 4, "test_fraction": 0.3}
    trained = NYUDepthV2DataModule(path, **kwargs)
    model = MultiStreamClassifier(streams=trained.stream_channels, num_classes=trained.num_classes)
    trainer = Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", default_root_dir=tmp_path,
        logger=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, trained)
    checkpoint = trainer.checkpoint_callback.best_model_path
    saved = torch.load(checkpoint, weights_only=False)["NYUDepthV2DataModule"]["statistics"]
    assert saved["depth"] == trained.statistics["depth"]

    def recomputed(self):
        raise AssertionError("statistics recomputed instead of restored from the checkpoint")

    monkeypatch.setattr(NYUDepthV2DataModule, "_training_statistics", recomputed)
    fresh = NYUDepthV2DataModule(path, **kwargs)
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(model, fresh, ckpt_path=checkpoint)
    assert fresh.statistics["depth"] == trained.statistics["depth"]


def test_repeated_scans_and_rooms_of_several_classes_stay_whole(tmp_path):
    scenes = ["kitchen", "kitchen", "bedroom", "bedroom", "kitchen", "bedroom", "kitchen", "bedroom"] * 2
    rooms = ["kitchen_0001a", "kitchen_0001b", "bedroom_0002a", "bedroom_0002b", "mixed_0003", "mixed_0003"]
    rooms += [f"{scene}_{i + 10:04d}" for i, scene in enumerate(scenes[6:])]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (16, H, W, 3), dtype=np.uint8)
    path = write_nyu_mat(tmp_path / "rooms.mat", images, np.ones((16, H, W)), scenes, rooms)
    for seed in range(12):
        dm = NYUDepthV2DataModule(path, test_fraction=0.4, seed=seed)
        dm.setup()
        train, test = set(dm.splits["train"].tolist()), set(dm.splits["test"].tolist())
        for together in ({0, 1}, {2, 3}, {4, 5}):  # a repeated scan, and a room with a kitchen and a bedroom
            assert together <= train or together <= test, (seed, together)


def test_an_empty_validation_split_names_val_fraction(mini):
    dm = NYUDepthV2DataModule(mini[0], val_fraction=0.01)
    with pytest.raises(ValueError, match=r"the val split .* is empty .*raise val_fraction=0.01"):
        dm.setup()


def test_a_train_transform_must_return_image_size(mini):
    dm = NYUDepthV2DataModule(mini[0], image_size=(8, 12), train_transform=JointTransform(v2.RandomHorizontalFlip()))
    dm.setup()
    with pytest.raises(
        ValueError, match=r"train_transform returned 12 x 16 images, but the batches are image_size=\(8, 12\)"
    ):
        next(iter(dm.train_dataloader()))
