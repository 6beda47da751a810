"""Where runs live on disk: ``<save_dir>/<experiment>/<version>/`` with ``checkpoints/`` inside.

``qlit`` resolves the checkpoint shorthands ``last`` and ``best`` from these folders, so
``qlit test --ckpt_path best`` works in a new process, and it sends the run's later logs (resumed
training, test metrics, predictions) to the version folder the checkpoint came from.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from qlit.errors import QlitError

SHORTHANDS = {"last": "last.ckpt", "best": "best.ckpt"}


def find_checkpoint(experiment_dir: str | Path, which: str, version: str | None = None) -> Path | None:
    """The most recently written ``last.ckpt`` or ``best.ckpt`` of the experiment's own ``fit`` runs.

    Those are its ``version_<n>`` folders, or only ``version`` when the logger names one. The
    folders ``qlit cv`` and sweeps write beside them (``fold_<k>``, ``classical_twin``, ``cv_<n>``)
    are evaluations, never candidates: a fold's checkpoint was tested on its own split. Folder names
    do not order runs in time, so the checkpoint files' modification times do.
    """
    filename = SHORTHANDS[which]
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.is_dir():
        return None
    if version is not None:
        runs = [experiment_dir / version]
    else:
        runs = [p for p in experiment_dir.iterdir() if re.fullmatch(r"version_\d+", p.name)]
    found = [p / "checkpoints" / filename for p in runs if (p / "checkpoints" / filename).is_file()]
    return max(found, key=lambda f: (f.stat().st_mtime_ns, str(f))) if found else None


def resolve_checkpoint(ckpt_path: str, experiment_dir: str | Path | None, version: str | None = None) -> Path | None:
    """Turn ``last``, ``best`` or a path into an existing checkpoint file.

    Returns ``None`` for ``last`` when the experiment has no checkpoint yet (a first run).

    Raises:
        QlitError: ``best`` has no checkpoint, or the path does not exist.
    """
    if ckpt_path in SHORTHANDS:
        found = find_checkpoint(experiment_dir, ckpt_path, version) if experiment_dir is not None else None
        if found is None and ckpt_path == "best":
            where = Path(experiment_dir) / (version or "version_*")
            raise QlitError(f"no best.ckpt of a 'qlit fit' run under {where}; train with 'qlit fit' first")
        return found
    from qlit.io.checkpoints import check_checkpoint_file  # torch is imported only when a file is named

    return check_checkpoint_file(ckpt_path)


def version_of(checkpoint: Path, experiment_dir: str | Path) -> str | None:
    """The version folder name of a checkpoint inside ``experiment_dir``, else ``None``."""
    try:
        relative = checkpoint.resolve().relative_to(Path(experiment_dir).resolve())
    except ValueError:
        return None
    parts = relative.parts
    return parts[0] if len(parts) == 3 and parts[1] == "checkpoints" else None


def unused_path(path: Path) -> Path:
    """``path``, or ``stem_1.suffix``, ``stem_2.suffix``, … : the first name not taken yet."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate


def tensorboard_loggers(config: Any) -> list[Any]:
    """The ``init_args`` of every TensorBoardLogger in a parsed config's ``trainer.logger``."""
    loggers = config.trainer.get("logger")
    return [
        logger.init_args
        for logger in (loggers if isinstance(loggers, list) else [loggers])
        if str(getattr(logger, "class_path", "") or "").endswith("TensorBoardLogger")
    ]


def claim_version(experiment_dir: Path, prefix: str = "version") -> Path:
    """Create and return the first free ``<prefix>_<n>`` folder of an experiment (``version_<n>``), atomically.

    ``os.mkdir`` either creates the folder or fails because it exists, so two runs started together
    never share one, whatever their timing. The folders it had to create on the way are remembered,
    so `release_if_empty` can take them all back after a failed start.

    Raises:
        QlitError: the folder cannot be created (a read-only folder, a file in the way, a full disk).
    """
    created = _make_parents(experiment_dir)
    pattern = re.compile(rf"{re.escape(prefix)}_(\d+)")
    taken = [int(m.group(1)) for p in experiment_dir.iterdir() if (m := pattern.fullmatch(p.name))]
    n = max(taken, default=-1) + 1
    while True:
        folder = experiment_dir / f"{prefix}_{n}"
        try:
            os.mkdir(folder)
        except FileExistsError:
            n += 1
            continue
        except OSError as err:
            raise QlitError(f"cannot create the run folder {folder}: {err.strerror}") from None
        _CREATED[folder] = [*created, folder]
        return folder


def claim_file(path: Path) -> bool:
    """Create ``path`` empty if no file of that name exists; ``False`` if another run got there first."""
    try:
        _make_parents(path.parent)
        with open(path, "x"):
            return True
    except FileExistsError:
        return False
    except OSError as err:
        raise QlitError(f"cannot create {path}: {err.strerror}") from None


def release_if_empty(folder: Path) -> None:
    """Remove a folder `claim_version` made, and the parents it made for it, while they are empty."""
    for path in reversed(_CREATED.pop(folder, [folder])):
        try:
            path.rmdir()
        except OSError:
            return


_CREATED: dict[Path, list[Path]] = {}


def _make_parents(folder: Path) -> list[Path]:
    """``mkdir -p`` that reports which folders it created; a one-line error when it cannot."""
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise QlitError(f"cannot create {folder}: {probe} is a file, not a folder")
    for path in reversed(missing):
        try:
            path.mkdir(exist_ok=True)
        except OSError as err:
            raise QlitError(f"cannot create {path}: {err.strerror}") from None
    return list(reversed(missing))


def remove_new_empty_files(folder: Path, before: set[Path]) -> None:
    """After a failure (a full disk, say): remove the empty files and folders under ``folder`` not in ``before``.

    A config, events file or prediction file that could not be written is left at 0 bytes; checkpoints are
    written atomically and are never half there. Files that were there before are never touched.
    """
    if not folder.is_dir():
        return
    for path in sorted(set(folder.rglob("*")) - before, key=lambda p: len(p.parts), reverse=True):
        try:
            if path.is_file() and path.stat().st_size == 0:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        except OSError:
            pass
