"""Continuing a killed ``qlit cv`` (``--resume``) and running some of its folds (``--folds``).

Each finished training leaves ``cv_result.json`` in its fold folder (the driver writes it when the result arrives,
in one atomic rename). A resumed run keeps every training whose result is complete and whose best checkpoint is on
disk, trains the others again (a half-written fold folder is set aside under a new name, never deleted) and writes
the summary of all of them into the same cv folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from qlit.errors import QlitError
from qlit.evaluation.report import plain
from qlit.io.runs import unused_path

RESULT_FILE = "cv_result.json"
RESULT_KEYS = ("record", "test_indices", "test_ids", "test_labels", "predictions", "class_names", "checkpoint")
# options that say where or which folds run, not what a fold computes: a resumed run may change them
FREE_OPTIONS = ("resume", "folds", "workers", "address", "gpus_per_fold")


def fold_selection(folds: Any, num_folds: int) -> list[int]:
    """The folds ``--folds`` names (``0,2`` or ``[0, 2]``), checked against ``num_folds``; all when unset."""
    if folds is None:
        return list(range(num_folds))
    parts = folds if isinstance(folds, list) else [p.strip() for p in str(folds).split(",")]
    chosen = []
    for part in parts:
        try:
            k = int(part)
        except (TypeError, ValueError):
            raise QlitError(f"--folds takes fold numbers such as 0,2; got {folds!r}") from None
        if not 0 <= k < num_folds:
            raise QlitError(f"--folds {folds}: there is no fold {k} of {num_folds} (folds are 0..{num_folds - 1})")
        if k in chosen:
            raise QlitError(f"--folds {folds}: fold {k} is named twice")
        chosen.append(k)
    return sorted(chosen)


def _taken(folder: Path) -> bool:
    return (folder / "cv_config.yaml").is_file()


def resumable_folder(save_dir: str | Path, name: str) -> str:
    """The newest cv run of experiment ``name`` below ``save_dir``, which must not have finished.

    Raises:
        QlitError: there is no cv run to resume, or the newest one wrote its summary.
    """
    root = Path(save_dir)
    found = [name] if _taken(root / name) else []
    n = 1
    while _taken(root / name / f"cv_{n}"):
        found.append(f"{name}/cv_{n}")
        n += 1
    if not found:
        raise QlitError(f"--resume: there is no cv run of experiment {name!r} in {root} to resume")
    folder = found[-1]
    if any((root / folder).glob("cv_summary*.json")):
        raise QlitError(
            f"--resume: the newest cv run, {root / folder}, has finished (cv_summary.json); nothing to resume"
        )
    return folder


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        for key, inner in value.items():
            items.update(_flat(inner, f"{prefix}{key}."))
        return items
    return {prefix.rstrip("."): value}


def check_same_settings(saved_file: Path, now: dict[str, Any]) -> None:
    """Refuse to resume a cv run under other settings than it started with (in one line naming the first key)."""
    before = _flat(yaml.safe_load(saved_file.read_text()) or {})
    after = _flat(now)
    for key in sorted(set(before) | set(after)):
        if key.split(".")[0] in FREE_OPTIONS:
            continue
        if before.get(key) != after.get(key):
            raise QlitError(
                f"--resume: {saved_file.parent} was started with {key}={before.get(key)!r}, this command has "
                f"{after.get(key)!r}; resume with the same settings, or start a new cv run"
            )


def result_path(save_dir: str | Path, name: str, fold: int) -> Path:
    """Where the training of ``fold`` logged to ``<save_dir>/<name>`` keeps its result."""
    return Path(save_dir) / name / f"fold_{fold}" / RESULT_FILE


def save_result(path: Path, result: dict[str, Any]) -> None:
    """Write a training's result next to its files, atomically: a kill leaves the old state or the whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(plain(result)))
    os.replace(partial, path)


def finished_result(path: Path) -> dict[str, Any] | None:
    """The saved result at ``path`` if it is complete (every part present, sizes agreeing, checkpoint on disk)."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or any(key not in result for key in RESULT_KEYS):
        return None
    n = len(result["test_indices"])
    sizes = {len(result["test_labels"]), len(result["test_ids"]), result["record"].get("n_test")}
    sizes |= {len(p["probabilities"]) for p in result["predictions"].values()}
    if sizes != {n} or not Path(str(result["record"].get("best_checkpoint"))).is_file():
        return None
    return result


def set_aside(folder: Path) -> Path | None:
    """Rename an unfinished fold folder to ``<folder>_interrupted`` (or ``_interrupted_<n>``) so a new try starts
    clean and nothing of the killed one is lost; returns the new name."""
    if not folder.exists():
        return None
    target = unused_path(folder.with_name(folder.name + "_interrupted"))
    folder.rename(target)
    return target
