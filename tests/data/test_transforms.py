"""JointTransform: one geometry for every image stream, photometric per stream; on every multi-stream datamodule."""

import pytest
import torch
from torchvision.transforms import v2

from mslightning.data import JointTransform, SyntheticStreamsDataModule


def _coordinates(height: int = 12, width: int = 16) -> dict[str, torch.Tensor]:
    y, x = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    return {"rgb": torch.stack([x, y, x + y]), "depth": (x + 100 * y)[None], "audio": torch.arange(5.0)}


def test_one_draw_of_the_geometry_for_all_image_streams_vectors_untouched():
    joint = JointTransform(v2.Compose([v2.RandomResizedCrop((6, 8), scale=(0.2, 0.6)), v2.RandomHorizontalFlip()]))
    torch.manual_seed(0)
    for _ in range(20):
        out = joint(_coordinates())
        assert out["rgb"].shape == (3, 6, 8) and out["depth"].shape == (1, 6, 8)
        torch.testing.assert_close(out["depth"][0], out["rgb"][0] + 100 * out["rgb"][1], atol=1e-3, rtol=1e-5)
        assert torch.equal(out["audio"], torch.arange(5.0))
        assert type(out["rgb"]) is torch.Tensor  # plain tensors again, not tv_tensors


def test_separate_draws_would_break_the_alignment():
    # the oracle for the test above: the same transform called per stream misaligns them
    crop = v2.RandomResizedCrop((6, 8), scale=(0.2, 0.6))
    torch.manual_seed(0)
    sample = _coordinates()
    rgb, depth = crop(sample["rgb"]), crop(sample["depth"])
    assert not torch.allclose(depth[0], rgb[0] + 100 * rgb[1], atol=1e-3)


def test_photometric_per_stream_only():
    joint = JointTransform(photometric={"rgb": lambda x: x * 0})
    out = joint(_coordinates())
    assert out["rgb"].abs().sum() == 0 and torch.equal(out["depth"], _coordinates()["depth"])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="`geometric` must be a callable"):
        JointTransform(geometric="flip")
    with pytest.raises(ValueError, match=r"photometric\['rgb'\] must be a callable"):
        JointTransform(photometric={"rgb": 3})
    with pytest.raises(ValueError, match=r"pixel-aligned.*'rgb': \(12, 16\).*'depth': \(6, 8\)"):
        JointTransform(v2.RandomHorizontalFlip())({"rgb": torch.zeros(3, 12, 16), "depth": torch.zeros(1, 6, 8)})
    with pytest.raises(ValueError, match=r"stream 'ir', not in the sample"):
        JointTransform(photometric={"ir": v2.ColorJitter(0.1)})({"rgb": torch.zeros(3, 8, 8)})
    with pytest.raises(
        ValueError, match=r"SyntheticStreamsDataModule.train_transform: photometric transforms for \['ir'\]"
    ):
        SyntheticStreamsDataModule(train_transform=JointTransform(photometric={"ir": v2.ColorJitter(0.1)}))


def test_synthetic_streams_augment_the_training_split_only():
    flip = JointTransform(v2.RandomHorizontalFlip(p=1.0))
    plain = SyntheticStreamsDataModule(train_size=32, val_size=8, test_size=8, image_size=8, batch_size=8)
    flipped = SyntheticStreamsDataModule(
        train_size=32, val_size=8, test_size=8, image_size=8, batch_size=8, train_transform=flip
    )
    for dm in (plain, flipped):
        dm.setup()
    for stream in ("rgb", "depth"):
        assert torch.equal(flipped.train_set[0][0][stream], plain.train_set[0][0][stream].flip(-1))
        assert torch.equal(flipped.val_set[0][0][stream], plain.val_set[0][0][stream])


def test_feature_streams_augment_image_streams_of_the_training_split(tmp_path):
    import numpy as np

    from mslightning.data import FeatureStreamsDataModule

    rng = np.random.default_rng(0)
    path = tmp_path / "features.npz"
    np.savez(path, rgb=rng.normal(size=(40, 3, 8, 8)), audio=rng.normal(size=(40, 5)), labels=np.arange(40) % 2)
    kwargs = {"batch_size": 4, "standardize": False}
    plain = FeatureStreamsDataModule(path, **kwargs)
    flipped = FeatureStreamsDataModule(path, train_transform=JointTransform(v2.RandomHorizontalFlip(p=1.0)), **kwargs)
    for dm in (plain, flipped):
        dm.setup()
    (a, _), (b, _) = plain.datasets["train"][0], flipped.datasets["train"][0]
    assert torch.equal(b["rgb"], a["rgb"].flip(-1)) and torch.equal(b["audio"], a["audio"])
    assert torch.equal(flipped.datasets["val"][0][0]["rgb"], plain.datasets["val"][0][0]["rgb"])
    with pytest.raises(
        ValueError, match=r"FeatureStreamsDataModule.train_transform: photometric transforms for \['ir'\]"
    ):
        FeatureStreamsDataModule(
            path, train_transform=JointTransform(photometric={"ir": v2.ColorJitter(0.1)}), **kwargs
        )
