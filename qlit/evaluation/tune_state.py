"""Signed records of Ray Tune's saved state, so that ``qlit tune --resume`` never unpickles a file qlit did not write.

Ray Tune's state is pickled (``tuner.pkl``, searcher and callback states); unpickling can run any code, and the run
folder may be on storage other users can write to. After each search qlit records the SHA-256 of every file Ray left
in ``ray/<search>`` in ``ray_state.json``, signed (HMAC) with a key kept outside every run folder; a resume restores
only a search whose files match that record exactly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from qlit.errors import QlitError

MANIFEST = "ray_state.json"
KEY_FILE = "tune_state.key"


def _state_key() -> bytes:
    """This user's secret key for ``ray_state.json``, outside every run folder (created on first use, mode 600).

    A manifest in the run folder alone would not do: whoever can plant a pickle there can rewrite its hash too.
    """
    folder = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "qlit"
    path = folder / KEY_FILE
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(32))
    key = path.read_bytes()
    if len(key) < 32:
        raise QlitError(f"{path}: qlit's key for Ray Tune state is damaged; delete it (unfinished sweeps then restart)")
    return key


def files(folder: Path) -> dict[str, str]:
    """Every entry below ``folder``: its SHA-256, or ``link``/``other`` for what is not a plain file."""
    found = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[name] = "link"
        elif path.is_file():
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif not path.is_dir():
            found[name] = "other"
    return found


def _signed(searches: dict[str, Any]) -> str:
    text = json.dumps(searches, sort_keys=True)
    return hmac.new(_state_key(), text.encode(), hashlib.sha256).hexdigest()


def _manifest(folder: Path) -> dict[str, Any]:
    """The searches ``ray_state.json`` records, if its key-signed digest holds (else none)."""
    try:
        content = json.loads((folder / MANIFEST).read_text())
        searches = content["searches"]
        if isinstance(searches, dict) and hmac.compare_digest(str(content["hmac"]), _signed(searches)):
            return searches
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {}


def record_state(folder: Path, name: str) -> None:
    """Record the SHA-256 of every file Ray Tune left in ``ray/<name>``, after its last save in this run."""
    searches = _manifest(folder)
    searches[name] = files(folder / "ray" / name)
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"searches": searches, "hmac": _signed(searches)}, indent=1, sort_keys=True))
    tmp.replace(folder / MANIFEST)


def verify_state(folder: Path, name: str) -> None:
    """Refuse to restore ``ray/<name>`` unless every file there is exactly one qlit recorded.

    Ray Tune's state is pickled (``tuner.pkl``, searcher and callback states, cloudpickled values inside its
    JSON); unpickling a file can run any code, so qlit restores only files it recorded itself.

    Raises:
        QlitError: one line naming the first file that differs; nothing was read as a pickle.
    """
    state = folder / "ray" / name
    recorded = _manifest(folder).get(name)
    if recorded is None:
        raise QlitError(
            f"--resume true: {state} holds Ray Tune state that qlit never recorded (the sweep was killed, e.g. "
            "kill -9, before it could record it, or the files were placed there); qlit does not unpickle "
            "unverified files: start the sweep again without --resume"
        )
    found = files(state)
    for file in sorted(set(found) | set(recorded)):
        if found.get(file) != recorded.get(file):
            what = "is not one qlit wrote" if file not in recorded else "is missing" if file not in found else (
                "changed since qlit recorded it"
            )
            raise QlitError(
                f"--resume true: {state / file} {what} (or the sweep was killed before qlit recorded Ray's last "
                "save); qlit does not unpickle unverified files: start the sweep again without --resume"
            )


def prune_states(path: Path) -> None:
    """Leave only the experiment state Ray Tune restores from (the newest by name) in a finished search's folder.

    A restored search writes its own ``experiment_state-<start time>.json`` beside the interrupted run's, and Ray's
    storage sync copies the old file again with every save, so the old file's modification time keeps up with the
    new one's: a reader going by time could find the interrupted run's PENDING/RUNNING trials in a finished search.
    """
    patterns = ("experiment_state-*.json", "basic-variant-state-*.json", "search_gen_state-*.json",
                "searcher-state-*.pkl", "callback-states-*.pkl")
    for pattern in patterns:
        states = sorted(path.glob(pattern), key=lambda p: p.name)
        for old in states[:-1]:
            old.unlink(missing_ok=True)
