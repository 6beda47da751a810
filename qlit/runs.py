"""Where runs live on disk: ``<save_dir>/<experiment>/<version>/`` with ``checkpoints/`` inside.

``qlit`` resolves the checkpoint shorthands ``last`` and ``best`` from these folders, so
``qlit test --ckpt_path best`` works in a new process, and it sends the run's later logs (resumed
training, test metrics, predictions) to the version folder the checkpoint came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qlit.errors import QlitError

SHORTHANDS = {"last": "last.ckpt", "best": "best.ckpt"}


def find_checkpoint(experiment_dir: str | Path, which: str) -> Path | None:
    """The most recently written ``last.ckpt`` or ``best.ckpt`` among the experiment's run folders.

    Run folders are ``version_<n>`` of ``qlit fit`` and the ``fold_<k>`` of ``qlit cv``; their names
    do not order them in time, so the checkpoint files' modification times do.
    """
    filename = SHORTHANDS[which]
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.is_dir():
        return None
    found = [p / "checkpoints" / filename for p in experiment_dir.iterdir() if (p / "checkpoints" / filename).is_file()]
    return max(found, key=lambda f: (f.stat().st_mtime_ns, str(f))) if found else None


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
