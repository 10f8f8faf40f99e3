"""LazyHDF5: opened lazily, once per process, never pickled; errors name the file and the dataset."""

import multiprocessing as mp
import os
import pickle

import h5py
import numpy as np
import pytest

from mslightning.data.hdf5 import LazyHDF5


@pytest.fixture
def h5_path(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as file:
        file["group/values"] = np.arange(24, dtype=np.float32).reshape(6, 4)
        file["group/codes"] = np.zeros(6, dtype=np.uint8)
    return path


def _child_reads(data, queue):
    open_before = data.is_open  # an inherited handle is not this process's
    values = data.read("group/values", np.s_[1:2]).tolist()
    queue.put((os.getpid(), data.pid, open_before, values))


def test_nothing_is_opened_until_first_access(h5_path):
    data = LazyHDF5(h5_path)
    assert data._file is None and not data.is_open and data.pid is None
    assert data.read("/group/values", np.s_[2:4]).tolist() == [[8, 9, 10, 11], [12, 13, 14, 15]]
    assert data.is_open and data.pid == os.getpid()
    handle = data.file
    assert data.file is handle  # one handle per process, reused
    data.close()
    assert not data.is_open and data.pid is None
    assert data.exists("group/values") and not data.exists("group/nothing")


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_each_process_opens_its_own_handle(h5_path, method):
    data = LazyHDF5(h5_path)
    assert data.file  # open in the parent first: a forked child must not reuse this handle
    parent_handle = data.file
    context = mp.get_context(method)
    queue = context.Queue()
    child = context.Process(target=_child_reads, args=(data, queue))
    child.start()
    child_pid, handle_pid, open_before, values = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert child_pid != os.getpid()
    assert not open_before
    assert handle_pid == child_pid  # opened anew in the child
    assert values == [[4, 5, 6, 7]]
    if method == "fork":
        # The parent's handle is still its own, still valid, and still works.
        assert data.file is parent_handle and data.pid == os.getpid()
    assert data.read("group/values", np.s_[0:1]).tolist() == [[0, 1, 2, 3]]


def test_pickling_closes_and_leaves_the_handle_out(h5_path):
    data = LazyHDF5(h5_path)
    assert data.file
    copy = pickle.loads(pickle.dumps(data))
    assert not data.is_open  # closed by __getstate__
    assert copy._file is None and copy.pid is None and copy.path == data.path
    assert copy.read("group/codes").shape == (6,)


def test_require_checks_shape_and_dtype(h5_path):
    data = LazyHDF5(h5_path)
    assert data.require("group/values", (None, 4), "f").shape == (6, 4)
    assert data.require("/group/codes", (6,), ("uint8", "i")).dtype == np.uint8
    with pytest.raises(ValueError, match=r"data.h5' dataset '/group/values' has shape \(6, 4\), expected \(any, 5\)"):
        data.require("group/values", (None, 5), what="(T, N)")
    with pytest.raises(ValueError, match=r"has shape \(6, 4\), expected \(any,\) \(expected \(T,\)\)"):
        data.require("group/values", (None,), what="(T,)")
    with pytest.raises(ValueError, match=r"dataset '/group/codes' has dtype uint8, expected float or bool"):
        data.require("group/codes", dtype=("f", "b"))


def test_missing_dataset_names_file_path_and_siblings(h5_path):
    data = LazyHDF5(h5_path)
    with pytest.raises(ValueError) as error:
        data.dataset("group/missing")
    message = str(error.value)
    assert str(h5_path) in message and "'/group/missing' does not exist" in message and "['codes', 'values']" in message
    with pytest.raises(ValueError, match="no group '/other'"):
        data.read("other/values")
    with pytest.raises(ValueError, match="'/group' is a group, not a dataset"):
        data.dataset("group")


def test_bad_files(tmp_path, h5_path):
    with pytest.raises(FileNotFoundError, match=r"HDF5 file '.*absent.h5' does not exist"):
        _ = LazyHDF5(tmp_path / "absent.h5").file
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5 at all\n" * 10)
    with pytest.raises(ValueError, match=r"notes.h5' is not an HDF5 file"):
        _ = LazyHDF5(text).file
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(h5_path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"truncated.h5' cannot be opened \(truncated or corrupt\?\)"):
        _ = LazyHDF5(truncated).file
    with pytest.raises(ValueError, match="is a directory"):
        _ = LazyHDF5(tmp_path).file
