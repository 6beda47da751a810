"""The files a user names (checkpoints, data tables, predict files): are they files qlit can read?"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from qlit.errors import QlitError


def check_regular_file(path: str | Path, what: str, expected: str) -> Path:
    """Raise a `QlitError` unless ``path`` is an existing regular file; the file itself is not opened.

    Only its type is read (``stat``), so a named pipe is refused without blocking on it, and a
    directory or device is called what it is rather than "not found".

    Args:
        path: The file.
        what: What the file is, for messages (``"checkpoint"``, ``"predict file"``).
        expected: What it should be, for messages (``"a checkpoint file"``).

    Returns:
        ``path`` as a `Path`.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        if path.is_symlink():
            raise QlitError(f"{what} {path} is a link to {os.readlink(path)}, which does not exist") from None
        raise QlitError(f"{what} not found: {path}") from None
    except PermissionError:
        raise QlitError(f"cannot read {what} {path}: permission denied on a folder of its path") from None
    except OSError as err:
        raise QlitError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if stat.S_ISDIR(mode):
        raise QlitError(f"{path} is a directory, not {expected}")
    if not stat.S_ISREG(mode):
        raise QlitError(f"{path} is {file_kind(mode)}, not {expected}")
    return path


def file_kind(mode: int) -> str:
    """What a file that is not a regular file or a directory is, from its ``st_mode``."""
    kinds = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"))
    return next((name for test, name in kinds if test(mode)), "a block device" if stat.S_ISBLK(mode) else "not a file")
