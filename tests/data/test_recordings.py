"""RecordingsDataModule: the documented HDF5 layout read back as windows, batches of one session each."""

import itertools

import h5py
import numpy as np
import pytest
import torch

from mslightning.data.recordings import (
    RecordingsDataModule,
    SessionBatchSampler,
    split_windows,
)

# 0 train, 1 val, 2 test: two train runs, so windows must stop at the val run in between.
SPLIT = np.repeat(np.array([0, 1, 0, 2], dtype=np.uint8), [40, 20, 30, 20])
T = len(SPLIT)


def write_recordings(path, neurons=None, mask=True, rates=True, split=SPLIT, size=(6, 5), behaviour_dim=3, seed=0):
    """A tiny file in the documented layout; val/test frames are offset so that their statistics differ."""
    rng = np.random.default_rng(seed)
    neurons = {"s1": 4, "s2": 2} if neurons is None else neurons
    with h5py.File(path, "w") as file:
        for session, n in neurons.items():
            group = file.create_group(session)
            stimulus = rng.integers(0, 100, (len(split), *size)).astype(np.uint8)
            stimulus[split != 0] += 100
            behaviour = rng.normal(size=(len(split), behaviour_dim)) * [1, 2, 3][:behaviour_dim] + 5
            behaviour[split != 0] += 50
            group["stimulus"] = stimulus
            group["behaviour"] = behaviour
            group["responses"] = rng.poisson(2.0, (len(split), n)).astype(np.float32)
            group["split"] = split
            if mask:
                group["mask"] = rng.random((len(split), n)) > 0.2
            if rates:
                group["rates"] = rng.random((len(split), n)).astype(np.float32)
            group.attrs["frame_rate"] = 30.0
    return path


@pytest.fixture
def recordings(tmp_path):
    return write_recordings(tmp_path / "rec.h5")


def _module(path, **kwargs):
    options = {"window": 10, "burn_in": 3, "batch_size": 2, "num_workers": 0, **kwargs}
    return RecordingsDataModule(path, **options)


def _batches(loader):
    return list(loader)


def _assert_same(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys() and a["session"] == b["session"]
        for key in a:
            if key != "session":
                assert torch.equal(a[key], b[key]), key


def test_properties_before_setup_leave_no_handle(recordings):
    dm = _module(recordings)
    assert not dm.data.is_open and dm.layouts is None  # nothing read in __init__
    assert dm.sessions == {"s1": 4, "s2": 2}
    assert (dm.behaviour_dim, dm.frame_size, dm.burn_in) == (3, (6, 5), 3)
    assert dm.frame_rate == {"s1": 30.0, "s2": 30.0} and dm.has_rates
    assert not dm.data.is_open
    dm.setup("fit")
    assert not dm.data.is_open
    assert _module(recordings, session_names=["s2"]).sessions == {"s2": 2}


def test_round_trip_values_and_train_only_statistics(recordings):
    dm = _module(recordings)
    dm.setup("fit")
    with h5py.File(recordings, "r") as file:
        raw = {s: {k: file[s][k][()] for k in ("stimulus", "behaviour", "responses", "mask", "rates")} for s in file}
    batches = _batches(dm.val_dataloader())
    assert [b["session"] for b in batches] == ["s1", "s2"]  # in order, session by session
    for batch in batches:
        session = batch["session"]
        values = raw[session]
        train = SPLIT == 0
        mean, std = values["stimulus"][train].astype(np.float64).mean(), values["stimulus"][train].std()
        b_mean, b_std = values["behaviour"][train].mean(0), values["behaviour"][train].std(0)
        n = dm.sessions[session]
        assert batch["stimulus"].shape == (2, 10, 1, 6, 5) and batch["stimulus"].dtype == torch.float32
        assert batch["behaviour"].shape == (2, 10, 3) and batch["behaviour"].dtype == torch.float32
        for key in ("responses", "rates"):
            assert batch[key].shape == (2, 10, n) and batch[key].dtype == torch.float32
        assert batch["mask"].dtype == torch.bool
        for row, start in enumerate(batch["start"].tolist()):
            span = slice(start, start + 10)
            expected = (values["stimulus"][span] - mean) / std
            np.testing.assert_allclose(batch["stimulus"][row, :, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
            expected = (values["behaviour"][span] - b_mean) / b_std
            np.testing.assert_allclose(batch["behaviour"][row].numpy(), expected, rtol=1e-5, atol=1e-5)
            for key in ("responses", "mask", "rates"):
                np.testing.assert_array_equal(batch[key][row].numpy(), values[key][span])
        # statistics from train only: the offset val data are far from zero mean
        assert batch["stimulus"].mean() > 3 and batch["behaviour"][..., 0].mean() > 20
    train = torch.cat([b["stimulus"].flatten() for b in _batches(dm.train_dataloader())])
    assert abs(train.mean()) < 0.2 and abs(train.std() - 1) < 0.1


@pytest.mark.parametrize("mask", [True, False])
def test_mean_responses_over_recorded_training_bins(tmp_path, mask):
    path = write_recordings(tmp_path / "rec.h5", mask=mask)
    dm = _module(path)
    with pytest.raises(RuntimeError, match="call setup"):
        _ = dm.mean_responses
    dm.setup("fit")
    with h5py.File(path, "r") as file:
        for session, means in dm.mean_responses.items():
            responses = file[session]["responses"][()][SPLIT == 0]
            recorded = file[session]["mask"][()][SPLIT == 0] if mask else np.ones(responses.shape, bool)
            expected = (responses * recorded).sum(0) / recorded.sum(0)
            assert means.shape == (dm.sessions[session],) and means.dtype == torch.float32
            np.testing.assert_allclose(means.numpy(), expected, rtol=1e-6)


def test_mask_absent_is_all_true_and_rates_only_when_every_session_has_them(tmp_path):
    path = write_recordings(tmp_path / "bare.h5", mask=False, rates=False)
    dm = _module(path)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert "rates" not in batch and batch["mask"].all() and batch["mask"].shape == batch["responses"].shape
    path = write_recordings(tmp_path / "mixed.h5", rates=True)
    with h5py.File(path, "a") as file:
        del file["s2/rates"]
    dm = _module(path)
    dm.setup("fit")
    assert not dm.has_rates and "rates" not in next(iter(dm.val_dataloader()))


def test_split_windows_never_cross_a_split():
    codes = np.array([0] * 12 + [1] * 5 + [0] * 9 + [2] * 3, dtype=np.uint8)
    assert split_windows(codes, 0, 4, 4).tolist() == [0, 4, 8, 17, 21]
    assert split_windows(codes, 0, 4, 3).tolist() == [0, 3, 6, 17, 20]
    assert split_windows(codes, 1, 5, 1).tolist() == [12]
    assert split_windows(codes, 2, 4, 1).tolist() == []


def test_window_burn_in_stride_and_split_boundaries(recordings):
    dm = _module(recordings, stride=4)
    dm.setup(None)
    dm.setup("test")
    for split, code in (("train", 0), ("val", 1), ("test", 2)):
        dataset = dm.datasets[split]
        for start in dataset.starts.tolist():
            assert (SPLIT[start : start + 10] == code).all(), (split, start)
    # train: every 4 bins within each run (runs 0-40 and 60-90); eval: every window - burn_in = 7 bins
    assert sorted(set(dm.datasets["train"].starts.tolist())) == [0, 4, 8, 12, 16, 20, 24, 28, 60, 64, 68, 72, 76, 80]
    assert sorted(set(dm.datasets["val"].starts.tolist())) == [40, 47]
    assert sorted(set(dm.datasets["test"].starts.tolist())) == [90, 97]
    default = _module(recordings)
    default.setup("fit")
    assert sorted(set(default.datasets["train"].starts.tolist()))[:4] == [0, 7, 14, 21]


def test_one_session_per_batch_interleaved_and_reshuffled(recordings):
    dm = _module(recordings, batch_size=3)
    dm.setup("fit")
    loader = dm.train_dataloader()
    first = [batch["session"] for batch in loader]
    second = [batch["session"] for batch in loader]
    for order in (first, second):
        assert sorted(set(order)) == ["s1", "s2"]
        switches = sum(a != b for a, b in itertools.pairwise(order))
        assert switches >= 2  # interleaved, not one session after the other
    starts_1 = [b["start"].tolist() for b in _batches(loader)]
    starts_2 = [b["start"].tolist() for b in _batches(loader)]
    assert starts_1 != starts_2  # a new order every epoch
    for batch in _batches(loader):
        assert batch["responses"].shape[-1] == dm.sessions[batch["session"]]
    # the same seed gives the same order
    again = _module(recordings, batch_size=3)
    again.setup("fit")
    assert [b["start"].tolist() for b in _batches(again.train_dataloader())] == [
        b["start"].tolist() for b in _batches(_fresh(recordings).train_dataloader())
    ]


def _fresh(path):
    dm = _module(path, batch_size=3)
    dm.setup("fit")
    return dm


def test_sampler_lengths_and_drop_last():
    groups = {"a": list(range(5)), "b": list(range(5, 12))}
    sampler = SessionBatchSampler(groups, 3, shuffle=True, drop_last=True, seed=1)
    batches = list(sampler)
    assert len(sampler) == len(batches) == 3 and all(len(batch) == 3 for batch in batches)
    sampler = SessionBatchSampler(groups, 3, shuffle=False, drop_last=False)
    assert list(sampler) == [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9, 10], [11]] and len(sampler) == 5
    sampler.set_epoch(4)
    assert sampler.epoch == 4


def test_predict_loader_in_order(recordings):
    dm = _module(recordings, predict_split="val")
    dm.setup("predict")
    batches = _batches(dm.predict_dataloader())
    assert [(b["session"], b["start"].tolist()) for b in batches] == [("s1", [40, 47]), ("s2", [40, 47])]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_give_the_same_batches(recordings, context):
    reference = _module(recordings, batch_size=3)
    reference.setup("fit")
    workers = _module(recordings, batch_size=3, num_workers=2, multiprocessing_context=context)
    workers.setup("fit")
    assert reference.data.file  # a handle open in the main process must not leak into forked workers
    _assert_same(_batches(reference.train_dataloader()), _batches(workers.train_dataloader()))
    _assert_same(_batches(reference.val_dataloader()), _batches(workers.val_dataloader()))


# ---------------------------------------------------------------------------- bad files


def _error(path, stage="fit", **kwargs):
    dm = _module(path, **kwargs)
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        dm.setup(stage)
    return str(error.value)


def test_missing_not_hdf5_and_corrupt_files(tmp_path, recordings):
    message = _error(tmp_path / "absent.h5")
    assert "absent.h5' does not exist" in message
    text = tmp_path / "text.h5"
    text.write_text("hello\n" * 100)
    assert "text.h5' is not an HDF5 file" in _error(text)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(recordings.read_bytes()[:2000])
    assert "truncated.h5' cannot be opened" in _error(truncated)


@pytest.mark.parametrize(
    ("edit", "parts"),
    [
        (lambda f: f["s2"].__delitem__("behaviour"), ["dataset '/s2/behaviour' does not exist", "'mask', 'rates'"]),
        (
            lambda f: (
                f["s1"].__delitem__("responses"),
                f["s1"].create_dataset("responses", data=np.zeros((T - 1, 4))),
            ),
            ["session 's1': the time axes differ", "/s1/responses has T=109", "/s1/stimulus has T=110"],
        ),
        (
            lambda f: (f["s1"].__delitem__("split"), f["s1"].create_dataset("split", data=SPLIT[:-5])),
            ["/s1/split has T=105"],
        ),
        (
            lambda f: (f["s1"].__delitem__("stimulus"), f["s1"].create_dataset("stimulus", data=np.zeros((T, 30)))),
            ["dataset '/s1/stimulus' has shape (110, 30), expected (any, any, any)", "(T, H, W)"],
        ),
        (
            lambda f: (f["s2"].__delitem__("mask"), f["s2"].create_dataset("mask", data=np.zeros((T, 2), "f4"))),
            ["dataset '/s2/mask' has dtype float32, expected bool or uint8"],
        ),
        (
            lambda f: (f["s2"].__delitem__("rates"), f["s2"].create_dataset("rates", data=np.zeros((T, 3), "f4"))),
            ["dataset '/s2/rates' has shape (110, 3), expected (any, 2)"],
        ),
        (
            lambda f: (f["s2"].__delitem__("split"), f["s2"].create_dataset("split", data=np.full(T, 7, "u1"))),
            ["dataset '/s2/split' holds 7 at time bin 0", "0 (train), 1 (val) and 2 (test)"],
        ),
        (lambda f: f.move("s2", "bad name"), ["session group '/bad name'", "'bad name' is not valid"]),
        (lambda f: f["s2"].attrs.__setitem__("frame_rate", -1), ["'/s2' attribute frame_rate must be a positive"]),
        (
            lambda f: (f["s2"].__delitem__("behaviour"), f["s2"].create_dataset("behaviour", data=np.zeros((T, 2)))),
            ["the sessions differ in behaviour dimension D", "'s1': 3, 's2': 2"],
        ),
    ],
    ids=["missing", "T-responses", "T-split", "shape", "dtype", "neurons", "split-value", "name", "rate", "D"],
)
def test_bad_layouts_name_file_and_dataset(tmp_path, edit, parts):
    path = write_recordings(tmp_path / "bad.h5")
    with h5py.File(path, "a") as file:
        edit(file)
    message = _error(path)
    assert str(path) in message
    for part in parts:
        assert part in message


def test_split_strings_are_read(tmp_path):
    path = write_recordings(tmp_path / "strings.h5")
    with h5py.File(path, "a") as file:
        for session in ("s1", "s2"):
            del file[session]["split"]
            file[session]["split"] = np.array([("train", "val", "test")[c] for c in SPLIT], dtype=h5py.string_dtype())
    dm = _module(path)
    dm.setup("fit")
    assert sorted(set(dm.datasets["val"].starts.tolist())) == [40, 47]
    with h5py.File(path, "a") as file:
        file["s1/split"][3] = "holdout"
    assert "dataset '/s1/split' holds 'holdout' at time bin 3" in _error(path)


def test_empty_splits_and_sessions(tmp_path, recordings):
    message = _error(recordings, window=25, burn_in=3)
    assert str(recordings) in message and "the val split (code 1 in /<session>/split) yields no window" in message
    assert "{'s1': 20, 's2': 20}" in message
    path = write_recordings(tmp_path / "no-train.h5", neurons={"s1": 2}, split=np.full(T, 1, np.uint8))
    assert "dataset '/s1/split' marks no time bin as train" in _error(path)
    assert "has no session 's9' (requested in session_names); it holds ['s1', 's2']" in _error(
        recordings, session_names=["s9"]
    )
    empty = tmp_path / "empty.h5"
    h5py.File(empty, "w").close()
    assert "empty.h5' holds no session group" in _error(empty)


def test_invalid_arguments(recordings):
    with pytest.raises(ValueError, match=r"burn_in must be an integer in \[0, window\) = \[0, 10\)"):
        _module(recordings, burn_in=10)
    with pytest.raises(ValueError, match="window must be an integer >= 1, got 0"):
        _module(recordings, window=0)
    with pytest.raises(ValueError, match="stride must be an integer >= 1 or None"):
        _module(recordings, stride=0)
    with pytest.raises(ValueError, match="predict_split must be one of"):
        _module(recordings, predict_split="holdout")
    with pytest.raises(RuntimeError, match=r"Call setup\('test'\)"):
        _module(recordings).test_dataloader()


def test_a_path_argument_is_saved_as_a_string(recordings):
    # a PosixPath among the hyper-parameters would make every checkpoint refuse Lightning's weights_only load
    import io

    dm = _module(recordings)  # a pathlib.Path
    assert dm.hparams["path"] == str(recordings)
    buffer = io.BytesIO()
    torch.save({"datamodule_hyper_parameters": dict(dm.hparams)}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["datamodule_hyper_parameters"]["path"] == str(recordings)
