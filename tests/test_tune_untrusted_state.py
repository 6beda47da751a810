"""``qlit tune --resume true`` never unpickles a Ray Tune state file that qlit did not record itself.

Ray Tune's ``Tuner.restore`` unpickles ``tuner.pkl`` (and searcher, callback and cloudpickled trial state).
A planted file whose ``__reduce__`` writes a marker stands for one that runs a command: it must be refused in
one line, before Ray starts, and the marker must never appear. No Ray runs here.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import yaml

from qlit.errors import QlitError
from qlit.evaluation import tune
from qlit.evaluation.tune_state import MANIFEST, files, record_state, verify_state
from tests.conftest import CONFIGS, one_line_error
from tests.test_untrusted_checkpoints import Payload

IRIS = str(CONFIGS / "iris.yaml")


@pytest.fixture(autouse=True)
def own_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # the key qlit signs its records with


def sweep(root: Path) -> Path:
    """An unfinished tune_0 as a run leaves it: its config, and Ray's state of outer fold 0."""
    folder = root / "lightning_logs" / "iris" / "tune_0"
    state = folder / "ray" / "outer_0"
    state.mkdir(parents=True)
    (folder / "tune_config.yaml").write_text(yaml.safe_dump({"space": "space.yaml"}))
    (state / "tuner.pkl").write_bytes(pickle.dumps({"benign": 1}))
    (state / "experiment_state-1.json").write_text("{}")
    return folder


def test_recorded_state_verifies_and_any_change_is_refused(tmp_path: Path):
    folder = sweep(tmp_path)
    record_state(folder, "outer_0")
    verify_state(folder, "outer_0")
    marker = tmp_path / "marker"
    (folder / "ray" / "outer_0" / "tuner.pkl").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(QlitError, match="tuner.pkl changed since qlit recorded it") as err:
        verify_state(folder, "outer_0")
    assert "\n" not in str(err.value)
    (folder / "ray" / "outer_0" / "tuner.pkl").write_bytes(pickle.dumps({"benign": 1}))
    (folder / "ray" / "outer_0" / "searcher-state-1.pkl").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(QlitError, match="searcher-state-1.pkl is not one qlit wrote"):
        verify_state(folder, "outer_0")
    assert not marker.exists()


def test_a_rewritten_manifest_does_not_verify(tmp_path: Path):
    """Whoever can write the run folder can rewrite its manifest too; the key outside it signs the record."""
    folder = sweep(tmp_path)
    record_state(folder, "outer_0")
    (folder / "ray" / "outer_0" / "tuner.pkl").write_bytes(pickle.dumps(Payload(tmp_path / "marker")))
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["searches"]["outer_0"] = files(folder / "ray" / "outer_0")  # hashes of the planted file
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(QlitError, match="never recorded"):
        verify_state(folder, "outer_0")


def test_resume_refuses_a_planted_tuner_pickle_in_one_line(tmp_path: Path, capfd, monkeypatch):
    folder = sweep(tmp_path)
    marker = tmp_path / "marker"
    (folder / "ray" / "outer_0" / "tuner.pkl").write_bytes(pickle.dumps(Payload(marker)))

    def no_ray(*args):
        raise AssertionError("Ray must not start: the state is refused first")

    monkeypatch.setattr(tune.runner, "connect", no_ray)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"model.lr": {"loguniform": [0.01, 0.1]}}))
    one_line_error(["tune", "--config", IRIS, "--space", str(space), "--resume=true"], capfd,
                   ("--resume true", "outer_0", "start the sweep again"))
    assert not marker.exists()
