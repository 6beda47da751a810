"""Checkpoint files that are safe to open and never half-written.

Loading: every checkpoint qlit opens goes through `load_checkpoint`, which unpickles with
``torch.load(weights_only=True)``: tensors, containers and plain Python values only. A file whose
unpickling would import a function or build an arbitrary object (the way a crafted pickle runs
code) is refused with a `QlitError` before anything in it executes. Only regular files are opened
(a FIFO or a folder is named as such, never waited on). `qlit.io.checkpoint_content` then checks
what a loaded file holds before a model is built from it.

Saving: `atomic_save` writes to a temporary file in the target's folder, flushes it to disk and
renames it over the target, so a crash or ``kill -9`` at any moment leaves either the old complete
file or the new complete one. `SafeCheckpointIO` is the Lightning plugin that makes the Trainer
save and load this way; the ``qlit`` CLI passes it to every Trainer it builds (``plugins=``).
"""

from __future__ import annotations

import glob
import os
import pickle
import re
import secrets
import stat
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from qlit.errors import QlitError
from qlit.io.files import check_regular_file, file_kind

_TMP_SUFFIX = ".tmp"
# what torch.load raises for truncated, corrupt or non-torch files
_CORRUPT = (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, KeyError, IndexError)
_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _unsafe_detail(message: str) -> str:
    match = _UNSAFE_GLOBAL.search(message)
    if match:
        return f"unpickling it would call {match.group(1)}"
    return "it holds Python objects that are not plain weights"


def check_checkpoint_file(path: str | Path) -> Path:
    """Raise a `QlitError` unless ``path`` is an existing regular file (`qlit.io.files.check_regular_file`)."""
    return check_regular_file(path, "checkpoint", "a checkpoint file")


def _open_regular(path: Path) -> BinaryIO:
    # O_NONBLOCK: a file swapped for a FIFO after the type check must not block the open either.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        raise QlitError(f"cannot read checkpoint {path}: permission denied") from None
    except OSError as err:
        raise QlitError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise QlitError(f"{path} is {'a directory' if stat.S_ISDIR(mode) else file_kind(mode)}, not a checkpoint file")
    return os.fdopen(fd, "rb")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint without running any code stored in it.

    Args:
        path: Checkpoint file.
        map_location: Where tensors go, as for `torch.load`.

    Returns:
        The checkpoint dictionary.

    Raises:
        QlitError: the file is missing, not a regular file, unreadable, truncated or corrupt, is not
            a checkpoint (a dictionary), or would need arbitrary Python objects to load. The message
            names the file.
    """
    path = check_checkpoint_file(path)
    handle = _open_regular(path)  # outside the try: its QlitError is a ValueError, which would read as corrupt
    try:
        with handle, warnings.catch_warnings():
            # torch warns about pickle protocols of files it then loads or refuses; the error says enough
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\._weights_only_unpickler")
            checkpoint = torch.load(handle, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only load failed" in str(err):
            raise QlitError(
                f"refusing to load {path}: {_unsafe_detail(str(err))}, so opening it could run code "
                "(qlit loads only tensors and plain values)"
            ) from None
        raise QlitError(f"{path} is not a readable checkpoint: {_first_line(err)}") from None
    except _CORRUPT as err:
        raise QlitError(f"{path} is not a readable checkpoint (truncated or corrupt?): {_first_line(err)}") from None
    if not isinstance(checkpoint, dict):
        raise QlitError(f"{path} is not a checkpoint: it holds a {type(checkpoint).__name__}, not a dictionary")
    return checkpoint


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(err).__name__


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save` ``obj`` to ``path`` so that ``path`` is never seen half-written.

    The bytes go to a hidden temporary file beside ``path``; it is flushed and fsynced, then
    renamed over ``path`` (atomic on POSIX and Windows), and the folder is fsynced so the rename
    survives a power loss too. Temporary files that a killed process left behind for the same
    target are removed after a successful write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    tmp = path.with_name(f"{prefix}{os.getpid()}-{secrets.token_hex(4)}{_TMP_SUFFIX}")
    try:
        with open(tmp, "xb") as handle:  # plain open, unlike mkstemp, gives the usual umask permissions
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    for stale in path.parent.glob(f"{glob.escape(prefix)}*{_TMP_SUFFIX}"):
        stale.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint plugin: atomic local writes and weights-only reads.

    Remote paths (``s3://`` and other fsspec URLs) are written by Lightning's own transactional
    writer. Reads always use weights-only unpickling, whatever the caller asks for.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        atomic_save(checkpoint, str(path).removeprefix("file://"))

    def load_checkpoint(
        self, path: Any, map_location: Callable | None = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint(str(path).removeprefix("file://"), map_location=map_location)
