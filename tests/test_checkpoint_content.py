"""Malformed or hostile checkpoints and INT8 artifacts are refused in one line that names the file.

Each crafted file below is a real qlit checkpoint or artifact (from one short Iris fit) with one thing
broken, as a careless tool or a hostile sender would break it: the training state of a weights-only
file, the hyperparameters' types, a NaN weight, a zero scale, a FIFO in place of a file. Through the
CLI each must end in ``qlit: error: <file>: ...`` alone on stderr, exit 2, nothing written; through
`qlit.load_model` in a `QlitError` naming the file, never an AttributeError, TypeError or RuntimeError.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from qlit import load_model
from qlit.cli import main
from qlit.data import IrisDataModule
from qlit.errors import QlitError
from qlit.export import classifier_from_checkpoint
from qlit.io.checkpoint_content import expected_weight_shapes
from qlit.io.checkpoints import load_checkpoint
from qlit.models import HybridClassifier
from tests.conftest import CONFIGS, QUICK, REPO

IRIS = str(CONFIGS / "iris.yaml")
RUN = Path("lightning_logs/iris/version_0")
BEST = RUN / "checkpoints" / "best.ckpt"
LAST = RUN / "checkpoints" / "last.ckpt"
INT8 = RUN / "model_int8.pt"
WEIGHTS_ONLY = RUN / "checkpoints" / "weights_only.ckpt"
NOBODY = 65534


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-epoch Iris run, plus a weights-only checkpoint that Lightning itself wrote from its best model."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        main(["fit", "--config", IRIS, "--trainer.max_epochs=2", *QUICK])
        model = classifier_from_checkpoint(load_checkpoint(BEST), backend="qlit")
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.validate(model, datamodule=IrisDataModule(), verbose=False)
        trainer.save_checkpoint(WEIGHTS_ONLY, weights_only=True)
    return root


@pytest.fixture
def run(trained: Path, in_tmp_path: Path) -> Path:
    """This test's own copy of the trained run, in the current folder."""
    shutil.copytree(trained / "lightning_logs", in_tmp_path / "lightning_logs")
    return in_tmp_path


def snapshot(root: Path) -> dict[str, str]:
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def crafted(source: Path, change: Callable[[dict], object], name: str = "crafted.ckpt") -> Path:
    """A copy of ``source`` with ``change`` applied to its content, saved as ``name``."""
    content = copy.deepcopy(torch.load(source, weights_only=True))
    change(content)
    torch.save(content, name)
    return Path(name)


def refused(args: list[str], capfd: pytest.CaptureFixture, root: Path) -> str:
    """Run ``qlit`` in-process; assert exit 2, one line on stderr and no file written or changed. Returns it."""
    before = snapshot(root)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, *QUICK])
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("qlit: error: "), lines
    assert snapshot(root) == before, "a refused command wrote or changed files"
    return lines[0]


def nan_weight(content: dict) -> None:
    content["state_dict"]["net.pre.weight"][0, 1] = float("nan")


def preprocessing(content: dict) -> dict:
    return content["IrisDataModule"]["preprocessing"]


# ---- resuming needs the training state --------------------------------------------------------------


def test_fit_refuses_a_weights_only_checkpoint_that_test_still_uses(run: Path, capfd):
    saved = torch.load(WEIGHTS_ONLY, weights_only=True)
    assert "optimizer_states" not in saved and "loops" in saved, "Lightning's weights-only layout"
    line = refused(["fit", "--config", IRIS, f"--ckpt_path={WEIGHTS_ONLY}", "--trainer.max_epochs=3"], capfd, run)
    assert "weights_only.ckpt" in line and "weights only" in line and "cannot resume" in line and "tested" in line
    main(["test", "--config", IRIS, f"--ckpt_path={WEIGHTS_ONLY}", *QUICK])  # as the message says


def _adam(content: dict) -> dict:
    return content["optimizer_states"][0]


BROKEN_TRAINING_STATE = {
    "no-optimizer-states": (lambda c: c.pop("optimizer_states"), "weights only"),
    "optimizer-states-empty": (lambda c: c.update(optimizer_states=[]), "optimizer_states"),
    "no-param-groups": (lambda c: _adam(c).pop("param_groups"), "parameter groups"),
    "exp_avg-wrong-shape": (lambda c: _adam(c)["state"][0].update(exp_avg=torch.zeros(3)), "exp_avg of parameter 0"),
    "exp_avg-nan": (lambda c: _adam(c)["state"][2]["exp_avg"].fill_(float("nan")), "exp_avg of parameter 2 holds nan"),
    "lr-nan": (lambda c: _adam(c)["param_groups"][0].update(lr=float("nan")), "learning rate"),
    "one-parameter-short": (lambda c: _adam(c)["param_groups"][0]["params"].pop(), "covers 4 parameters"),
    "schedulers-not-a-list": (lambda c: c.update(lr_schedulers="plateau"), "lr_schedulers"),
    "no-loop-state": (lambda c: c.pop("loops"), "loops.fit_loop"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_TRAINING_STATE))
def test_fit_refuses_a_broken_training_state(run: Path, capfd, broken):
    change, words = BROKEN_TRAINING_STATE[broken]
    path = crafted(LAST, change)
    line = refused(["fit", "--config", IRIS, f"--ckpt_path={path}", "--trainer.max_epochs=3"], capfd, run)
    assert "crafted.ckpt" in line and words in line and "cannot resume" in line, line


# ---- hyperparameters must be plain values that agree with the weights --------------------------------

BAD_HPARAMS = {
    "a-list": (lambda c: c.update(hyper_parameters=[4, 2]), "hyper_parameters is a list"),
    "missing": (lambda c: c.pop("hyper_parameters"), "no hyper_parameters"),
    "n_qubits-a-string": (lambda c: c["hyper_parameters"].update(n_qubits="4"), "n_qubits='4'"),
    "n_qubits-huge": (lambda c: c["hyper_parameters"].update(n_qubits=10**12), "n_qubits=1000000000000"),
    "n_layers-huge": (lambda c: c["hyper_parameters"].update(n_layers=10**9), "net.core.circuit.weights has shape"),
    "in_features-huge": (lambda c: c["hyper_parameters"].update(in_features=10**9), "net.pre.weight has shape"),
    "unknown-key": (lambda c: c["hyper_parameters"].update(depth=3), "'depth'"),
    "lr-a-list": (lambda c: c["hyper_parameters"].update(lr=[0.1]), "lr=[0.1]"),
}


@pytest.mark.parametrize("bad", sorted(BAD_HPARAMS))
def test_crafted_hyperparameters_are_refused_before_a_model_is_built(run: Path, capfd, bad):
    change, words = BAD_HPARAMS[bad]
    path = crafted(BEST, change)
    line = refused(["test", "--config", IRIS, f"--ckpt_path={path}"], capfd, run)
    assert "crafted.ckpt" in line and words in line, line


def _wide(content: dict, n: int) -> None:
    """Hyperparameters and weights of an ``n``-qubit model that agree: only the width is wrong."""
    content["hyper_parameters"]["n_qubits"] = n
    state = content["state_dict"]
    state["net.pre.weight"], state["net.pre.bias"] = torch.zeros(n, 4), torch.zeros(n)
    state["net.core.circuit.weights"], state["net.post.weight"] = torch.zeros(2, n), torch.zeros(1, n)


def test_a_consistent_but_too_wide_checkpoint_is_refused_naming_the_file(run: Path, capfd):
    path = crafted(BEST, lambda c: _wide(c, 60))
    line = refused(["predict", "--config", IRIS, f"--ckpt_path={path}"], capfd, run)
    assert "crafted.ckpt" in line and "n_qubits=60" in line, line
    with pytest.raises(QlitError, match="crafted.ckpt.*n_qubits=60"):
        load_model(path)


# ---- weights and saved preprocessing must be finite, scales positive ---------------------------------


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_nan_weights_are_refused_by_every_subcommand(run: Path, capfd, subcommand):
    path = crafted(LAST, nan_weight, "nan.ckpt")
    line = refused([subcommand, "--config", IRIS, f"--ckpt_path={path}", "--trainer.max_epochs=3"], capfd, run)
    assert "nan.ckpt" in line and "net.pre.weight" in line and "nan" in line, line
    assert "version_0" not in line, "the refusal must be about this file, not another run's"


BAD_PREPROCESSING = {
    "scale_mean-inf": (lambda c: preprocessing(c)["scale_mean"].__setitem__(2, float("inf")), "scale_mean", "inf"),
    "scale_std-zero": (lambda c: preprocessing(c)["scale_std"].__setitem__(1, 0.0), "scale_std of feature 1", "> 0"),
    "scale_std-negative": (lambda c: preprocessing(c)["scale_std"].mul_(-1), "scale_std of feature 0", "> 0"),
    "scale_std-missing": (lambda c: preprocessing(c).pop("scale_std"), "lacks scale_std", ""),
    "scale_std-too-short": (lambda c: preprocessing(c).update(scale_std=torch.ones(3, dtype=torch.float64)), "3", ""),
}


@pytest.mark.parametrize("bad", sorted(BAD_PREPROCESSING))
@pytest.mark.parametrize("subcommand", ["test", "predict"])
def test_broken_saved_preprocessing_is_refused(run: Path, capfd, bad, subcommand):
    change, *words = BAD_PREPROCESSING[bad]
    path = crafted(BEST, change)
    line = refused([subcommand, "--config", IRIS, f"--ckpt_path={path}"], capfd, run)
    assert "crafted.ckpt" in line and "preprocessing" in line and all(w in line for w in words), line
    with pytest.raises(QlitError, match="crafted.ckpt"):
        load_model(path)


def test_pca_preprocessing_is_checked_and_a_sound_one_still_loads(run: Path):
    def with_pca(content: dict, value: float) -> None:
        components = torch.eye(4, dtype=torch.float64)
        components[3, 3] = value
        preprocessing(content).update(pca_mean=torch.zeros(4, dtype=torch.float64), pca_components=components)

    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5]])
    identity = load_model(crafted(BEST, lambda c: with_pca(c, 1.0), "identity.ckpt"))
    np.testing.assert_allclose(identity.predict_proba(x), load_model(BEST).predict_proba(x), atol=1e-6)
    with pytest.raises(QlitError, match=r"nan_pca.ckpt: pca_components in its saved preprocessing holds nan"):
        load_model(crafted(BEST, lambda c: with_pca(c, float("nan")), "nan_pca.ckpt"))


# ---- load_model on crafted files ---------------------------------------------------------------------


def _layer(content: dict, name: str = "net.pre") -> dict:
    return content["int8_layers"][name]


BAD_ARTIFACTS = {
    "int8-hparams-a-list": (INT8, lambda c: c.update(hyper_parameters=["n_qubits", 4]), "a list"),
    "int8-layers-a-list": (INT8, lambda c: c.update(int8_layers=[1, 2]), "int8_layers"),
    "int8-layers-missing": (INT8, lambda c: c.pop("int8_layers"), "lacks int8_layers"),
    "int8-float-weights-missing": (INT8, lambda c: c.pop("float_state_dict"), "lacks float_state_dict"),
    "int8-qweight-float": (INT8, lambda c: _layer(c).update(qweight=_layer(c)["qweight"].float()), "torch.float32"),
    "int8-qweight-wrong-shape": (INT8, lambda c: _layer(c).update(qweight=_layer(c)["qweight"][:, :3]), "net.pre"),
    "int8-scale-two-values": (INT8, lambda c: _layer(c).update(scale=torch.ones(2)), "scale"),
    "int8-scale-nan": (INT8, lambda c: _layer(c)["scale"].fill_(float("nan")), "nan"),
    "int8-unknown-layer": (INT8, lambda c: c["int8_layers"].update(bogus=_layer(c)), "bogus"),
    "int8-no-datamodule": (INT8, lambda c: c.update(datamodule=None), "datamodule"),
    "int8-circuit-nan": (INT8, lambda c: c["float_state_dict"]["net.core.circuit.weights"].fill_(float("nan")), "nan"),
    "ckpt-hparams-a-list": (BEST, lambda c: c.update(hyper_parameters=[1]), "a list"),
    "ckpt-weight-wrong-shape": (BEST, lambda c: c["state_dict"].update({"net.post.bias": torch.zeros(3)}), "net.post"),
    "ckpt-no-datamodule-state": (BEST, lambda c: c.pop("IrisDataModule"), "no fitted preprocessing"),
    "ckpt-class-names-missing": (BEST, lambda c: c["IrisDataModule"].pop("class_names"), "class_names"),
    "ckpt-preprocessing-a-list": (BEST, lambda c: c["IrisDataModule"].update(preprocessing=[1.0]), "preprocessing"),
    "ckpt-nan-weight": (BEST, nan_weight, "nan"),
    "ckpt-lr-zero": (BEST, lambda c: c["hyper_parameters"].update(lr=0.0), "lr"),
}


@pytest.mark.parametrize("bad", sorted(BAD_ARTIFACTS))
def test_load_model_refuses_crafted_files_naming_them(run: Path, bad):
    source, change, words = BAD_ARTIFACTS[bad]
    path = crafted(source, change, f"{bad}.pt")
    with pytest.raises(QlitError) as err:
        load_model(path)
    assert str(path) in str(err.value) and words in str(err.value), err.value


@pytest.mark.parametrize("source", [BEST, INT8])
def test_zero_rows_give_zero_predictions(run: Path, source):
    model = load_model(source)
    proba, labels = model.predict_proba(np.zeros((0, 4))), model.predict(np.zeros((0, 4)))
    assert proba.shape == (0, 2) and proba.dtype == np.float32 and labels.shape == (0,)
    with pytest.raises(QlitError, match=r"shape \(0, 3\)"):
        model.predict(np.zeros((0, 3)))
    with pytest.raises(QlitError, match=r"shape \(0,\)"):
        model.predict([])


@pytest.mark.parametrize("core", ["quantum", "classical"])
@pytest.mark.parametrize(("ansatz", "num_classes"), [("basic", 2), ("strong", 3)])
def test_expected_weight_shapes_match_the_real_model(core, ansatz, num_classes):
    hparams = dict(in_features=5, num_classes=num_classes, n_qubits=3, n_layers=2, ansatz=ansatz, core=core)
    model = HybridClassifier(**hparams, backend="qlit")
    assert expected_weight_shapes(hparams) == {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---- what is at the path must be a readable regular file ---------------------------------------------


def test_a_directory_is_called_a_directory(run: Path, capfd):
    Path("folder.ckpt").mkdir()
    line = refused(["test", "--config", IRIS, "--ckpt_path=folder.ckpt"], capfd, run)
    assert "folder.ckpt is a directory" in line, line
    with pytest.raises(QlitError, match="folder.ckpt is a directory"):
        load_model("folder.ckpt")


def _interrupt(signum, frame):
    raise TimeoutError("opened the FIFO for reading: blocked waiting for a writer")


def test_a_fifo_is_refused_without_blocking(run: Path, capfd):
    os.mkfifo("pipe.ckpt")
    previous = signal.signal(signal.SIGALRM, _interrupt)
    signal.alarm(60)  # a blocking open would wait for a writer forever; this turns it into a failure
    try:
        with pytest.raises(QlitError, match=r"pipe.ckpt is a named pipe \(FIFO\), not a checkpoint file"):
            load_checkpoint("pipe.ckpt")
        line = refused(["test", "--config", IRIS, "--ckpt_path=pipe.ckpt"], capfd, run)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert line == "qlit: error: pipe.ckpt is a named pipe (FIFO), not a checkpoint file", line


# In a fresh process: what `qlit.load_model` says on stdout, then the CLI's error on stderr.
UNREADABLE = """
import sys
from qlit import load_model
from qlit.cli import main
path, config, *quick = sys.argv[1:]
sys.argv[1:] = []  # LightningCLI warns when it is given args and sys.argv holds others
try:
    load_model(path)
except ValueError as err:
    print(err)
main(["test", "--config", config, "--ckpt_path", path, *quick])
"""


def test_an_unreadable_checkpoint_says_permission_denied(trained: Path):
    """Run as an unprivileged user for real: root reads a ``chmod 000`` file all the same."""
    as_nobody: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to run as an unprivileged user")
        as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    folder = Path(tempfile.mkdtemp(prefix="qlit-unreadable-"))
    try:
        folder.chmod(0o755)
        home = folder / "home"
        home.mkdir()
        if as_nobody:
            os.chown(home, NOBODY, NOBODY)
        secret = folder / "secret.ckpt"
        shutil.copy(trained / BEST, secret)
        secret.chmod(0o600 if as_nobody else 0o000)
        env = {**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(home), "PYTHONPATH": str(REPO)}
        args = [*as_nobody, sys.executable, "-c", UNREADABLE, str(secret), IRIS, *QUICK]
        done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=home, timeout=180)
        message = f"cannot read checkpoint {secret}: permission denied"
        assert done.stdout.strip() == message, done.stderr[-2000:]
        lines = done.stderr.splitlines()
        assert done.returncode == 2 and lines == [f"qlit: error: {message}"], done.stderr[-2000:]
        assert not (home / "lightning_logs").exists(), "a refused command must not start a run"
    finally:
        shutil.rmtree(folder)
