"""Lazy, per-process HDF5 access: the one way the library reads HDF5 (and MATLAB v7.3) files.

An HDF5 file handle must never cross a process boundary: a handle opened before a DataLoader
forks its workers would be shared by all of them (HDF5 keeps state per process, and reads through
a shared handle can return wrong data or crash), and a handle cannot be pickled for ``spawn``
workers at all. :class:`LazyHDF5` therefore

* opens nothing in ``__init__``; the file is opened on first access, **in the current process**;
* remembers the process id it opened the file in, and opens the file again (never reusing the
  inherited handle) when it finds itself in another process, such as a forked worker;
* closes its handle and leaves it out when pickled (``spawn`` workers, Lightning's ``ddp_spawn``).

Its helpers read a dataset (or a slice of it) and check that a dataset exists with an expected
shape and dtype; every error names the file and the dataset path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

__all__ = ["LazyHDF5", "describe_dtype"]

DtypeCheck = str | type | np.dtype | Sequence[str | type | np.dtype] | Callable[[np.dtype], bool]
"""What :meth:`LazyHDF5.require` accepts as ``dtype``: a dtype, a dtype *kind* (``"f"`` float,
``"u"`` unsigned, ``"i"`` signed, ``"b"`` bool, ``"S"``/``"O"`` strings), a sequence of these (any
of them will do), or a predicate on the dataset's ``numpy.dtype``."""


class LazyHDF5:
    """An HDF5 file opened on first access in each process, never shared across processes.

    Args:
        path: The file.
        mode: ``h5py.File`` mode; ``"r"`` (read only) unless you know why not.
        **options: Further ``h5py.File`` keyword arguments (e.g. ``rdcc_nbytes``, ``locking``).

    Example::

        data = LazyHDF5("recordings.h5")      # nothing opened yet
        stimulus = data.require("/s1/stimulus", shape=(None, 32, 32), dtype=("u", "f"))
        frames = data.read("/s1/stimulus", np.s_[100:150])

    """

    def __init__(self, path: str | Path, mode: str = "r", **options: Any) -> None:
        self.path = Path(path)
        self.mode = mode
        self.options = options
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"LazyHDF5('{self.path}', mode={self.mode!r}, {state})"

    # ------------------------------------------------------------------ the handle

    @property
    def is_open(self) -> bool:
        """Whether this process holds an open handle (an inherited, foreign one does not count)."""
        return self._file is not None and self._pid == os.getpid() and bool(self._file.id.valid)

    @property
    def pid(self) -> int | None:
        """The process id the current handle was opened in, or None when no handle is held."""
        return self._pid if self._file is not None else None

    @property
    def file(self) -> h5py.File:
        """The open ``h5py.File`` of this process, opened now if needed.

        Raises:
            FileNotFoundError: If the file does not exist.
            ValueError: If it is not an HDF5 file, or HDF5 cannot open it (truncated, corrupt).

        """
        if not self.is_open:
            if self._file is not None and self._pid != os.getpid():
                # Inherited from the parent through fork: never read from here, just dropped (that
                # closes this process's copy of it; the parent's handle is untouched).
                self._file = None
            self._file = self._open()
            self._pid = os.getpid()
        assert self._file is not None
        return self._file

    def _open(self) -> h5py.File:
        if not self.path.exists():
            raise FileNotFoundError(f"HDF5 file '{self.path}' does not exist.")
        if self.path.is_dir():
            raise ValueError(f"HDF5 file '{self.path}' is a directory, not a file.")
        if "r" in self.mode and not h5py.is_hdf5(self.path):
            raise ValueError(
                f"'{self.path}' is not an HDF5 file (no HDF5 signature; MATLAB files before v7.3 are not HDF5 either)."
            )
        try:
            return h5py.File(self.path, self.mode, **self.options)
        except OSError as error:
            raise ValueError(f"HDF5 file '{self.path}' cannot be opened (truncated or corrupt?): {error}") from error

    def close(self) -> None:
        """Close this process's handle, if any (a later access opens the file again)."""
        if self._file is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):  # an already invalid handle
                self._file.close()
        self._file = None
        self._pid = None

    def __enter__(self) -> LazyHDF5:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        """Close the handle and pickle the rest: the unpickled copy opens its own on first access."""
        self.close()
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # ------------------------------------------------------------------ reading and checking

    def where(self, name: str) -> str:
        """``"'<file>' dataset '<name>'"``, for messages."""
        return f"'{self.path}' dataset '{_absolute(name)}'"

    def exists(self, name: str) -> bool:
        """Whether ``name`` (a group or a dataset) exists in the file."""
        return _absolute(name) in self.file

    def group(self, name: str = "/") -> h5py.Group:
        """The group ``name``; ValueError (file and path named) if it is missing or not a group."""
        node = self.file.get(_absolute(name))
        if not isinstance(node, h5py.Group):
            state = "does not exist" if node is None else "is not a group"
            raise ValueError(f"'{self.path}': group '{_absolute(name)}' {state}.")
        return node

    def dataset(self, name: str) -> h5py.Dataset:
        """The dataset ``name``; ValueError (file and path named) if it is missing or not a dataset."""
        path = _absolute(name)
        node = self.file.get(path)
        if not isinstance(node, h5py.Dataset):
            if node is None:
                parent = path.rsplit("/", 1)[0] or "/"
                siblings = sorted(self.file[parent].keys()) if parent in self.file else []
                has = f" ('{parent}' holds {siblings})" if parent in self.file else f" (no group '{parent}')"
                raise ValueError(f"{self.where(path)} does not exist{has}.")
            raise ValueError(f"{self.where(path)} is a group, not a dataset.")
        return node

    def read(self, name: str, selection: Any = ()) -> np.ndarray:
        """Read ``name[selection]`` (the whole dataset by default) into a numpy array."""
        dataset = self.dataset(name)
        try:
            return dataset[selection]
        except (OSError, RuntimeError) as error:
            raise ValueError(f"{self.where(name)} cannot be read (corrupt?): {error}") from error

    def require(
        self,
        name: str,
        shape: Sequence[int | None] | None = None,
        dtype: DtypeCheck | None = None,
        what: str = "",
    ) -> h5py.Dataset:
        """Return dataset ``name`` after checking its shape and dtype.

        Args:
            name: The dataset path (``"/session/stimulus"``; the leading ``/`` is optional).
            shape: The expected shape; ``None`` entries match any length (``(None, 32, 32)``).
                Its length fixes the number of dimensions.
            dtype: What the dtype may be (see :data:`DtypeCheck`), or None for any.
            what: The expected layout in words for the message, e.g. ``"(T, H, W) uint8 or float"``.

        Raises:
            ValueError: If the dataset is missing, or its shape or dtype differs; the file, the
                dataset path, the expected and the actual shape or dtype are named.

        """
        dataset = self.dataset(name)
        expected = f" (expected {what})" if what else ""
        if shape is not None:
            shape = tuple(shape)
            actual = tuple(dataset.shape)
            if len(actual) != len(shape) or any(e is not None and e != a for e, a in zip(shape, actual, strict=False)):
                raise ValueError(f"{self.where(name)} has shape {actual}, expected {_shape_text(shape)}{expected}.")
        if dtype is not None and not _dtype_matches(dataset.dtype, dtype):
            raise ValueError(
                f"{self.where(name)} has dtype {describe_dtype(dataset.dtype)}, expected "
                f"{_dtype_text(dtype)}{expected}."
            )
        return dataset


def describe_dtype(dtype: np.dtype) -> str:
    """A dtype in words, with h5py's string and bool types spelled out."""
    info = h5py.check_string_dtype(dtype)
    if info is not None:
        return f"string ({info.encoding})"
    return str(dtype)


def _absolute(name: str) -> str:
    return name if name.startswith("/") else "/" + name


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("any" if n is None else str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


_KIND_NAMES = {"f": "float", "u": "unsigned integer", "i": "integer", "b": "bool", "S": "bytes", "O": "string"}


def _dtype_matches(dtype: np.dtype, check: DtypeCheck) -> bool:
    if callable(check) and not isinstance(check, type):
        return bool(check(dtype))
    if isinstance(check, (str, type, np.dtype)):
        check = [check]
    for option in check:
        if isinstance(option, str) and len(option) == 1:
            if option == "O" and h5py.check_string_dtype(dtype) is not None:
                return True
            if dtype.kind == option:
                return True
        elif np.dtype(option) == dtype:
            return True
    return False


def _dtype_text(check: DtypeCheck) -> str:
    if callable(check) and not isinstance(check, type):
        return getattr(check, "__doc__", None) or getattr(check, "__name__", "a dtype accepted by the check")
    if isinstance(check, (str, type, np.dtype)):
        check = [check]
    words = [
        _KIND_NAMES[option] if isinstance(option, str) and option in _KIND_NAMES else str(np.dtype(option))
        for option in check
    ]
    return " or ".join(words)
