"""Where runs live on disk: ``<save_dir>/<experiment>/<version>/`` with ``checkpoints/`` inside.

``qlit`` resolves the checkpoint shorthands ``last`` and ``best`` from these folders, so
``qlit test --ckpt_path best`` works in a new process, and it sends the run's later logs (resumed
training, test metrics, predictions) to the version folder the checkpoint came from.
"""

from __future__ import annotations

import re
from pathlib import Path

from qlit.errors import QlitError

SHORTHANDS = {"last": "last.ckpt", "best": "best.ckpt"}


def _version_key(path: Path) -> tuple[float, str]:
    match = re.fullmatch(r"version_(\d+)", path.name)
    return (float(match.group(1)) if match else path.stat().st_mtime, path.name)


def find_checkpoint(experiment_dir: str | Path, which: str) -> Path | None:
    """The ``last.ckpt`` or ``best.ckpt`` of the newest version folder that has one, or ``None``."""
    filename = SHORTHANDS[which]
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.is_dir():
        return None
    versions = sorted((p for p in experiment_dir.iterdir() if (p / "checkpoints" / filename).is_file()), key=_version_key)
    return versions[-1] / "checkpoints" / filename if versions else None


def resolve_checkpoint(ckpt_path: str, experiment_dir: str | Path | None) -> Path | None:
    """Turn ``last``, ``best`` or a path into an existing checkpoint file.

    Returns ``None`` for ``last`` when the experiment has no checkpoint yet (a first run).

    Raises:
        QlitError: ``best`` has no checkpoint, or the path does not exist.
    """
    if ckpt_path in SHORTHANDS:
        found = find_checkpoint(experiment_dir, ckpt_path) if experiment_dir is not None else None
        if found is None and ckpt_path == "best":
            raise QlitError(f"no best.ckpt under {experiment_dir}; train with 'qlit fit' first")
        return found
    path = Path(ckpt_path)
    if not path.is_file():
        raise QlitError(f"checkpoint not found: {ckpt_path}")
    return path


def version_of(checkpoint: Path, experiment_dir: str | Path) -> str | None:
    """The version folder name of a checkpoint inside ``experiment_dir``, else ``None``."""
    try:
        relative = checkpoint.resolve().relative_to(Path(experiment_dir).resolve())
    except ValueError:
        return None
    parts = relative.parts
    return parts[0] if len(parts) == 3 and parts[1] == "checkpoints" else None
