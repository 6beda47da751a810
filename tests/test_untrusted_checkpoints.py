"""A checkpoint or exported model from someone else cannot run code on this machine.

The crafted files below are otherwise complete qlit checkpoints that also carry a pickled object
whose ``__reduce__`` writes a marker file when unpickled. A control load with
``weights_only=False`` proves the payload fires; every qlit load path must refuse the file with a
one-line error, and the marker must never appear.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch

import qlit
from qlit.cli import main
from qlit.data import IrisDataModule
from qlit.errors import QlitError
from qlit.io.checkpoints import SafeCheckpointIO, load_checkpoint
from qlit.models import HybridClassifier
from tests.conftest import CONFIGS, QUICK

IRIS = str(CONFIGS / "iris.yaml")


class Payload:
    """Unpickling this writes ``marker``: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def real_checkpoint() -> dict:
    model = HybridClassifier(in_features=4, num_classes=2, class_names=["setosa", "versicolor"], backend="qlit")
    data = IrisDataModule()
    data.setup("fit")
    return {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": L.__version__,
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "IrisDataModule": data.state_dict(),
    }


def torch_file(path: Path, marker: Path) -> Path:
    torch.save({**real_checkpoint(), "payload": Payload(marker)}, path)
    return path


def torch_legacy_file(path: Path, marker: Path) -> Path:
    torch.save({**real_checkpoint(), "payload": Payload(marker)}, path, _use_new_zipfile_serialization=False)
    return path


def pickle_file(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({**real_checkpoint(), "payload": Payload(marker)}))
    return path


def unsafe_torch_load(path: Path) -> None:
    torch.load(path, weights_only=False)


def unsafe_pickle_load(path: Path) -> None:
    pickle.loads(path.read_bytes())


# name: (write a crafted file, an unsafe loader that shows its payload runs)
CRAFTERS: dict[str, tuple[Callable[[Path, Path], Path], Callable[[Path], None]]] = {
    "torch-zip": (torch_file, unsafe_torch_load),
    "torch-legacy": (torch_legacy_file, unsafe_torch_load),
    "plain-pickle": (pickle_file, unsafe_pickle_load),
}


@pytest.fixture(params=sorted(CRAFTERS))
def crafted(request, in_tmp_path: Path) -> tuple[Path, Path]:
    """``(crafted checkpoint, marker)``; the payload is shown to work on a separate copy first."""
    make, unsafe_load = CRAFTERS[request.param]
    control_marker = in_tmp_path / "control_marker"
    unsafe_load(make(in_tmp_path / "control.ckpt", control_marker))
    assert control_marker.read_text() == "code ran", "the payload must really run when unpickled unsafely"
    marker = in_tmp_path / "MARKER"
    return make(in_tmp_path / "crafted.ckpt", marker), marker


def refused_by_cli(args: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, *QUICK])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_ckpt_path_refuses_code(crafted, subcommand, capsys):
    path, marker = crafted
    line = refused_by_cli([subcommand, "--config", IRIS, f"--ckpt_path={path}"], capsys)
    assert line.startswith("qlit: error: refusing to load") and "crafted.ckpt" in line
    assert not marker.exists()


def test_resuming_a_run_whose_last_ckpt_was_replaced_refuses_code(crafted, capsys):
    path, marker = crafted
    last = Path("lightning_logs/iris/version_0/checkpoints/last.ckpt")
    last.parent.mkdir(parents=True)
    path.rename(last)
    line = refused_by_cli(["fit", "--config", IRIS, "--ckpt_path=last"], capsys)
    assert "refusing to load" in line and "last.ckpt" in line
    assert not marker.exists()
    assert sorted(p.name for p in last.parent.parent.iterdir()) == ["checkpoints"], "nothing written into the run"


def test_export_loader_refuses_code(crafted):
    path, marker = crafted
    with pytest.raises(QlitError, match="crafted.ckpt"):
        qlit.load_model(path)
    artifact = path.rename(path.with_name("model_int8.pt"))
    with pytest.raises(QlitError, match="model_int8.pt"):
        qlit.load_model(artifact)
    assert not marker.exists()


def test_trainer_checkpoint_plugin_refuses_code(crafted):
    path, marker = crafted
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        plugins=[SafeCheckpointIO()],  # as the qlit CLI builds every Trainer
    )
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)
    model = HybridClassifier(in_features=4, num_classes=2, backend="qlit")
    with pytest.raises(QlitError, match="refusing to load"):
        trainer.validate(model, datamodule=IrisDataModule(), ckpt_path=str(path))
    with pytest.raises(QlitError, match="refusing to load"):
        trainer.strategy.checkpoint_io.load_checkpoint(path, weights_only=False)  # asking for unsafe does not help
    assert not marker.exists()


def test_safe_files_still_load(in_tmp_path: Path):
    checkpoint = real_checkpoint()
    torch.save(checkpoint, in_tmp_path / "plain.ckpt")
    loaded = load_checkpoint(in_tmp_path / "plain.ckpt")
    assert loaded["hyper_parameters"] == checkpoint["hyper_parameters"]
    assert all(torch.equal(loaded["state_dict"][k], v) for k, v in checkpoint["state_dict"].items())


def test_refused_even_when_torch_is_told_to_trust_files(crafted, monkeypatch, capsys):
    """``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` flips torch's default; qlit asks for weights-only explicitly."""
    path, marker = crafted
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    line = refused_by_cli(["test", "--config", IRIS, f"--ckpt_path={path}"], capsys)
    assert "refusing to load" in line
    with pytest.raises(QlitError):
        SafeCheckpointIO().load_checkpoint(path)
    assert not marker.exists()
