"""Reading a file written by ``torch.save`` safely, and saying in plain words why one cannot be read.

:func:`load_torch_file` reads a stream encoder's ``weights_path`` and the CLI's ``--ckpt_path``. A
refused file is never unpickled to find out why: its pickle is only scanned with :mod:`pickletools`.
"""

from __future__ import annotations

import codecs
import os
import pickletools
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_torch_file"]

_ZIP_MAGIC = b"PK\x03\x04"  # every torch.save file since torch 1.6 is a zip archive
# The first pickle of the legacy (pre-1.6, non-zip) torch.save format: protocol 2, then torch's
# magic number 0x1950a86a20f9469cfc6c as a LONG1.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_FOREIGN_FORMATS = (
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (e.g. Keras .h5 weights)", "Convert the weights to a PyTorch state_dict"),
    (b"\x93NUMPY", "a NumPy .npy array", "Save a state_dict of tensors with torch.save"),
    (b"\x1f\x8b", "a gzip-compressed file", "Decompress it first (gunzip)"),
)
_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def load_torch_file(path: str | Path, subject: str, *, what: str, remedy: str) -> object:
    """Load a file written by ``torch.save`` safely, or say in plain words why it cannot be loaded.

    Returns what ``torch.load(path, map_location="cpu", weights_only=True)`` returns; that load
    never runs code from the file. A zip-format file (every ``torch.save`` since torch 1.6) is
    memory-mapped (``mmap=True``): its tensors are read only when used, so checking a large
    checkpoint stays cheap.

    Args:
        path: The file.
        subject: What every error message starts with, naming the option and the path, e.g.
            ``"Weights for stream 'rgb' ('/p/x.pth')"`` or ``"--ckpt_path 'x.ckpt'"``.
        what: The kind of file expected, e.g. ``"checkpoint"`` ("... is a directory, not a checkpoint").
        remedy: One sentence on how to make a good file, e.g. ``"Save the weights with
            torch.save(model.state_dict(), path)"``, ending the messages about bad files.

    Returns:
        The loaded object: a state_dict, a checkpoint dict, ...

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: For any other path that cannot be loaded (empty, a directory, unreadable,
            truncated, corrupt, another format, a pickled model, ...); the message says which
            and what to do.

    """
    if isinstance(path, str) and not path:
        raise ValueError(f"{subject}: the path is empty. Pass the path of a {what}.")
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            detail = f" (a symbolic link to '{os.readlink(path)}', which does not exist)"
        elif not path.is_absolute():
            detail = f" (looked for '{path.absolute()}')"
        else:
            detail = ""
        raise FileNotFoundError(f"{subject}: no such file{detail}. Check the path.")
    if path.is_dir():
        try:
            inside = sorted(p.name for p in path.iterdir() if p.suffix in _SUFFIXES)
        except OSError:
            inside = []
        holds = f"; it holds {_short(inside, 3)}" if inside else ""
        raise ValueError(f"{subject}: the path is a directory, not a {what}{holds}. Pass the file's own path.")
    if not path.is_file():
        raise ValueError(f"{subject}: the path is not a regular file (a pipe, socket or device). Pass a {what}.")
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            head = file.read(512)
    except OSError as err:
        check = " Check its permissions." if isinstance(err, PermissionError) else ""
        raise ValueError(f"{subject}: the file cannot be read ({err.strerror or err}).{check}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=head.startswith(_ZIP_MAGIC))
    except MemoryError:
        raise
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, OSError, ...: all mean a bad file
        raise ValueError(f"{subject}: {_why_unloadable(path, head, size, what, remedy)}.") from err


def _why_unloadable(path: Path, head: bytes, size: int, what: str, remedy: str) -> str:
    """What is wrong with a file ``torch.load(..., weights_only=True)`` refused, and what to do."""
    again = f"Copy it again, or {remedy[:1].lower()}{remedy[1:]}"
    if size == 0:
        return f"the file is empty (0 bytes), e.g. an interrupted save or copy. {again}"
    damaged = (
        f"the file is truncated or damaged: it starts like a torch.save file but cannot be read to the end "
        f"({size} bytes). {again}"
    )
    globals_: list[str] = []
    strings: set[str] = set()
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
                    return (
                        "the file is a TorchScript archive (torch.jit.save), not a file written by torch.save. "
                        "Save its weights with torch.save(torch.jit.load(path).state_dict(), 'weights.pth')"
                    )
                pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
                if not pickles:
                    return f"the file is a zip archive but not one written by torch.save (no data.pkl). {remedy}"
                data = archive.read(pickles[0])
        except Exception:  # BadZipFile (central directory missing or short: cut off), EOFError, zlib.error, ...
            return damaged
        _scan_pickle(pickletools.genops(data), globals_, strings)
    elif head.startswith(_LEGACY_MAGIC):
        with path.open("rb") as file:
            for _ in range(4):  # magic number, protocol version, system info, then the object
                if not _scan_pickle(pickletools.genops(file), globals_, strings):
                    break
    else:
        return _foreign_format(head, size, what, remedy)

    unsafe = [g for g in dict.fromkeys(globals_) if not _is_plain_global(g)]
    if not unsafe:
        return damaged
    objects = f"Python objects that a safe load (weights_only=True) refuses ({_short(unsafe, 3)})"
    if "state_dict" in strings and strings & {"pytorch-lightning_version", "global_step"}:
        return (
            f"the file is a Lightning checkpoint holding {objects}. If you trust it, load it with "
            f"load_from_checkpoint(path, weights_only=False) (e.g. MultiStreamClassifier.load_from_checkpoint), "
            f"which runs code from the file. {remedy}"
        )
    if any(g.startswith("torch.nn.modules.") for g in unsafe):
        return (
            f"the file holds a whole pickled model ({unsafe[0]}), not a state_dict, and a safe load "
            f"(weights_only=True) refuses pickled classes. {remedy}"
        )
    return f"the file holds {objects}, not only tensors and plain data. {remedy}"


def _scan_pickle(ops: Iterator[tuple[Any, Any, int | None]], globals_: list[str], strings: set[str]) -> bool:
    """Collect the classes/functions a pickle names and the strings it holds, without running it.

    Returns:
        Whether the pickle was read to its STOP opcode (False: truncated or not a pickle).

    """
    recent: list[str | None] = []  # what the last opcodes pushed, None for anything but a string
    memo: dict[int, str] = {}
    try:
        for op, arg, _ in ops:
            pushed: str | None = None
            if op.name in ("GLOBAL", "INST"):
                globals_.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                if len(recent) >= 2 and recent[-2] is not None and recent[-1] is not None:
                    globals_.append(f"{recent[-2]}.{recent[-1]}")
            elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                if recent and recent[-1] is not None:
                    memo[len(memo) if op.name == "MEMOIZE" else int(arg)] = recent[-1]
                continue
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                pushed = memo.get(int(arg))
            elif isinstance(arg, str) and ("UNICODE" in op.name or "STRING" in op.name):
                pushed = str(arg)
                strings.add(pushed)
            elif op.name == "STOP":
                return True
            recent = [*recent[-1:], pushed]
    except Exception:  # a pickle cut short, or not a pickle at all
        return False
    return False


def _is_plain_global(name: str) -> bool:
    """Whether a pickled global is one a plain ``torch.save`` of tensors names (storages, rebuilds)."""
    if name in ("collections.OrderedDict", "_codecs.encode"):
        return True
    return name.startswith("torch.") and not name.startswith(
        ("torch.nn.", "torch.optim.", "torch.utils.", "torch.jit.")
    )


def _foreign_format(head: bytes, size: int, what: str, remedy: str) -> str:
    """Say what a file that is not a ``torch.save`` file seems to be, from its first bytes."""
    for magic, kind, advice in _FOREIGN_FORMATS:
        if head.startswith(magic):
            return f"the file is {kind}, not a file written by torch.save. {advice}"
    if len(head) >= 10 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size:
        return (
            "the file is a safetensors file, not a file written by torch.save. Convert it: "
            "torch.save(safetensors.torch.load_file(path), 'weights.pth')"
        )
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        text = None
    if text and all(c.isprintable() or c in "\t\n\r\f" for c in text):
        if text.startswith("version https://git-lfs"):
            return "the file is a Git LFS pointer, not the file itself. Fetch it with git lfs pull"
        return (
            f"the file is a text file (it starts with {text[:40]!r}), not a file written by torch.save. "
            f"Pass the path of the {what} itself"
        )
    if head.startswith(b"\x80"):
        return f"the file is a plain pickle, not a file written by torch.save (or a damaged one). {remedy}"
    return (
        f"the file is not a readable {what}: it is corrupt or not a file written by torch.save (it starts with "
        f"the bytes {head[:8].hex(' ')}). {remedy}"
    )


def _short(items: list[str], limit: int = 5) -> str:
    """The first ``limit`` items, comma-separated, and how many more there are."""
    more = f", ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
