"""Where a reported number came from: the versions, qlit's commit, the command line, the data and the date.

Every summary qlit writes (``cv_summary.json``, ``tune_summary.json``, ``robustness.json``, ``test_summary.json``)
carries a `provenance` record, so that a number read months later can be traced to what produced it.
"""

from __future__ import annotations

import importlib.metadata
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PACKAGES = ("qlit", "torch", "lightning", "pennylane")
_command: list[str] | None = None


def record_command(args: list[str] | None) -> None:
    """Remember the command line of this ``qlit`` run (``args`` as `qlit.cli.main` got them; ``None``: sys.argv)."""
    global _command
    _command = ["qlit", *(sys.argv[1:] if args is None else args)]


def provenance(data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provenance record of a summary written now.

    Args:
        data: What identifies the data the numbers come from (its SHA-256, source, split settings).
    """
    return {
        "versions": {name: _version(name) for name in PACKAGES},
        "git_commit": git_commit(),
        "command": list(_command) if _command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": data,
    }


def git_commit(package_dir: Path | None = None) -> str | None:
    """The commit of the git checkout qlit runs from (read from ``.git``, no git needed); ``None`` if installed."""
    root = (package_dir or Path(__file__).resolve().parents[1]).parent
    git = root / ".git"
    try:
        if git.is_file():  # a worktree or submodule: "gitdir: <path>"
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head or None
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(f" {ref}"):
                return line.split()[0]
    except (OSError, IndexError):
        pass
    return None


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
