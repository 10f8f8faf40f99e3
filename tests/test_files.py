import argparse
import os
import random
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from mslightning.files import load_torch_file

REMEDY = "Run `mslightning fit` again to write a new checkpoint"


def _load(path: Path | str) -> object:
    return load_torch_file(path, f"--ckpt_path '{path}'", what="checkpoint", remedy=REMEDY)


def _error(exc: type[Exception], path: Path | str, *phrases: str) -> str:
    with pytest.raises(exc) as err:
        _load(path)
    assert type(err.value) is exc
    message = str(err.value)
    assert message.startswith(f"--ckpt_path '{path}': "), message
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"
    return message


def test_lightning_checkpoint_is_read(tmp_path: Path) -> None:
    trainer = pl.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    model = BoringModel()
    trainer.fit(model)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = _load(path)
    assert checkpoint["global_step"] == 1
    torch.testing.assert_close(checkpoint["state_dict"]["layer.weight"], model.layer.weight, rtol=0, atol=0)


def test_legacy_format_is_read(tmp_path: Path) -> None:  # not a zip archive: read without mmap
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.arange(3.0)}, path, _use_new_zipfile_serialization=False)
    torch.testing.assert_close(_load(path)["w"], torch.arange(3.0))


def test_missing_directory_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _error(FileNotFoundError, "nope.ckpt", "no such file", str(tmp_path / "nope.ckpt"))
    _error(ValueError, "", "the path is empty")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "last.ckpt").touch()
    _error(ValueError, "runs", "is a directory, not a checkpoint; it holds last.ckpt")
    _error(ValueError, "runs/last.ckpt", "empty (0 bytes)", "Copy it again, or run `mslightning fit` again")


@pytest.mark.parametrize("keep", [5000, 0.5], ids=["first-5000-bytes", "first-half"])
def test_truncated_zip(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    message = _error(ValueError, path, "truncated or damaged", "Copy it again")
    assert "permission" not in message  # torch.load raises OSError(EINVAL) on the 5000-byte cut


def test_unreadable_file_asks_to_check_permissions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.ckpt"
    path.write_bytes(b"x")

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, os.strerror(13))

    monkeypatch.setattr(Path, "open", refuse)
    _error(ValueError, path, "cannot be read (Permission denied). Check its permissions.")


def test_random_bytes_and_refused_objects(tmp_path: Path) -> None:
    noise = tmp_path / "random.bin"
    noise.write_bytes(random.Random(0).randbytes(512))
    _error(ValueError, noise, "not a readable checkpoint", "corrupt or not a file written by torch.save", REMEDY)
    old = tmp_path / "old.ckpt"
    torch.save({"global_step": 3, "state_dict": {}, "hyper_parameters": argparse.Namespace(lr=0.1)}, old)
    _error(ValueError, old, "a Lightning checkpoint", "argparse.Namespace", "weights_only=False", REMEDY)
