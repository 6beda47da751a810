"""Bad input ends in one line ``qlit: error: ...`` that names the culprit, and nothing on disk changes.

Every case runs the real ``qlit`` entry point in-process, inside a copy of a real two-epoch Iris
run (``lightning_logs/iris/version_0`` with ``best.ckpt`` and ``last.ckpt``), and checks: exit
status 2, exactly one line on stderr, the offending value or file named in it, and every file of
the existing run byte-for-byte as it was, with no new file anywhere (a run that started training
may only add its own new version folder).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from qlit.checkpoint_io import load_checkpoint
from qlit.cli import main
from qlit.errors import QlitError
from tests.conftest import CONFIGS, QUICK

IRIS = str(CONFIGS / "iris.yaml")
GENOMIC = str(CONFIGS / "genomic.yaml")
RUN = Path("lightning_logs/iris/version_0")


@pytest.fixture(scope="module")
def trained_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``lightning_logs/`` of a real two-epoch Iris run, trained once for this module."""
    root = tmp_path_factory.mktemp("trained")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        main(["fit", "--config", IRIS, "--trainer.max_epochs=2", *QUICK])
    finally:
        os.chdir(cwd)
    return root / "lightning_logs"


@pytest.fixture
def run_copy(trained_logs: Path, in_tmp_path: Path) -> Path:
    """This test's own copy of the trained run, at ``./lightning_logs``."""
    shutil.copytree(trained_logs, in_tmp_path / "lightning_logs")
    return in_tmp_path


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root``: size, modification time and SHA-256."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write(name: str, text: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_text(text)


def one_population(name: str) -> Callable[[Path], None]:
    """A genotype file of 40 AFR individuals (10 SNPs) and nobody else."""

    def make(tmp: Path) -> None:
        rng = np.random.default_rng(0)
        lines = ["population," + ",".join(f"rs{i}" for i in range(10))]
        for _ in range(40):
            lines.append("AFR," + ",".join(map(str, rng.integers(0, 3, 10))))
        (tmp / name).write_text("\n".join(lines) + "\n")

    return make


def truncate(relative: str, keep: int = 600) -> Callable[[Path], None]:
    def cut(tmp: Path) -> None:
        path = tmp / relative
        path.write_bytes(path.read_bytes()[:keep])

    return cut


def tensor_file(name: str) -> Callable[[Path], None]:
    return lambda tmp: torch.save(torch.zeros(3), tmp / name)


def nothing(tmp: Path) -> None:
    pass


FIT = ["fit", "--config", IRIS]
FIT_GENOMIC = ["fit", "--config", GENOMIC]
PREDICT = ["predict", "--config", IRIS, "--ckpt_path=best"]
BEST = str(RUN / "checkpoints" / "best.ckpt")
LAST = str(RUN / "checkpoints" / "last.ckpt")
ONE_POPULATION = [
    "--data.init_args.genotype_file=one.csv",
    "--data.init_args.n_snps=10",
    "--data.init_args.populations=[AFR,EUR]",
]


def case(name: str, args: list[str], words: list[str], prepare: Callable[[Path], None] = nothing, trains: bool = False):
    """One bad input: the command, the words its error must contain, files to create first."""
    return pytest.param(prepare, args, words, trains, id=name)


CASES = [
    # config
    case("config-file-missing", ["fit", "--config", "missing.yaml"], ["missing.yaml"]),
    case("unknown-key", [*FIT, "--model.n_qbits=3"], ["n_qbits"]),
    case("wrong-type", [*FIT, "--model.n_qubits=four"], ["n_qubits", "four"]),
    case("n_qubits-zero", [*FIT, "--model.n_qubits=0"], ["n_qubits", "0"]),
    case("n_layers-zero", [*FIT, "--model.n_layers=0"], ["n_layers", "0"]),
    case("lr-negative", [*FIT, "--model.lr=-0.01"], ["lr", "-0.01"]),
    case("weight_decay-negative", [*FIT, "--model.weight_decay=-1"], ["weight_decay", "-1"]),
    case("num_folds-one", [*FIT, "--data.init_args.num_folds=1"], ["num_folds", "1"]),
    case("fold-out-of-range", [*FIT, "--data.init_args.fold=5"], ["fold", "5"]),
    case("more-folds-than-class-members", [*FIT, "--data.init_args.num_folds=51"], ["num_folds=51", "setosa"]),
    case("unknown-iris-class", [*FIT, "--data.init_args.classes=[setosa,rose]"], ["rose"]),
    case("unknown-population", [*FIT_GENOMIC, "--data.init_args.populations=[AFR,ATLANTIS]"], ["ATLANTIS"]),
    case("unknown-pennylane-device", [*FIT, "--model.backend=default.qbit"], ["default.qbit"]),
    case("bad-trainer-devices", [*FIT, "--trainer.devices=0"], ["devices"]),
    case("cv-n_layers-zero", ["cv", "--config", IRIS, "--model.n_layers=0"], ["n_layers", "0"]),
    case("cv-logger-without-name", ["cv", "--config", IRIS, "--trainer.logger.init_args.name=null"], ["name", "None"]),
    # data files
    case("predict-file-missing", [*PREDICT, "--data.init_args.predict_file=absent.csv"], ["absent.csv"]),
    case("predict-file-empty", [*PREDICT, "--data.init_args.predict_file=e.csv"], ["e.csv"], write("e.csv", "")),
    case(
        "predict-non-numeric",
        [*PREDICT, "--data.init_args.predict_file=words.csv"],
        ["words.csv", "'x'"],
        write("words.csv", "a,b,c,d\n1,2,x,4\n"),
    ),
    case(
        "predict-nan",
        [*PREDICT, "--data.init_args.predict_file=nan.csv"],
        ["nan.csv", "'nan'"],
        write("nan.csv", "a,b,c,d\n1,nan,3,4\n"),
    ),
    case(
        "predict-inf",
        [*PREDICT, "--data.init_args.predict_file=inf.csv"],
        ["inf.csv", "'-inf'"],
        write("inf.csv", "a,b,c,d\n1,2,3,-inf\n"),
    ),
    case(
        "predict-wrong-columns",
        [*PREDICT, "--data.init_args.predict_file=three.csv"],
        ["three.csv", "3", "4"],
        write("three.csv", "a,b,c\n1,2,3\n"),
    ),
    case("genotype-file-missing", [*FIT_GENOMIC, "--data.init_args.genotype_file=absent.csv"], ["absent.csv"]),
    case("genotype-file-one-class", [*FIT_GENOMIC, *ONE_POPULATION], ["one.csv", "EUR"], one_population("one.csv")),
    # checkpoints
    case("checkpoint-missing", ["test", "--config", IRIS, "--ckpt_path=gone.ckpt"], ["gone.ckpt"]),
    case("checkpoint-truncated", [*FIT, "--ckpt_path=last"], ["last.ckpt", "truncated"], truncate(LAST)),
    case(
        "checkpoint-not-a-checkpoint",
        ["test", "--config", IRIS, "--ckpt_path=tensor.pt"],
        ["tensor.pt", "Tensor"],
        tensor_file("tensor.pt"),
    ),
    case(
        "checkpoint-other-architecture",
        ["test", "--config", GENOMIC, f"--ckpt_path={BEST}"],
        ["best.ckpt", "architecture", "num_classes"],
    ),
    case(
        "checkpoint-other-classes",
        ["test", "--config", IRIS, "--data.init_args.classes=[setosa,virginica]", "--ckpt_path=best"],
        ["best.ckpt", "virginica"],
    ),
    case("fresh-fit-over-existing-run", [*FIT, "--trainer.logger.init_args.version=0"], ["version_0", "checkpoints"]),
    # training
    case(
        "lr-overflows-the-loss",
        [*FIT, "--model.lr=1e37", "--trainer.max_epochs=2"],
        ["training loss became", "model.lr"],
        trains=True,
    ),
]


def run_main(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int | str | None, list[str]]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, *QUICK])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return exit_info.value.code, lines


def test_the_table_has_at_least_twenty_distinct_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 20


@pytest.mark.parametrize(("prepare", "args", "words", "trains"), CASES)
def test_bad_input_is_one_line_naming_the_culprit(run_copy: Path, capsys, prepare, args, words, trains):
    prepare(run_copy)
    before = snapshot(run_copy)
    code, lines = run_main(args, capsys)
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("qlit: error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    after = snapshot(run_copy)
    assert {k: v for k, v in after.items() if k in before} == before, "a file that was there changed"
    new = sorted(set(after) - set(before))
    if trains:
        assert all(Path(name).parts[:3] == ("lightning_logs", "iris", "version_1") for name in new), new
    else:
        assert new == [], f"an error before training wrote {new}"


class PoisonFeatures(L.Callback):
    """A corrupt row arrives in epoch 2: its NaN feature makes the training loss NaN."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 2 and batch_idx == 1:
            batch[0][0, 0] = float("nan")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(capsys):
    poison = f"--trainer.callbacks+={PoisonFeatures.__module__}.PoisonFeatures"
    code, lines = run_main(["fit", "--config", IRIS, "--trainer.max_epochs=5", poison], capsys)
    assert code == 2 and len(lines) == 1
    last = RUN / "checkpoints" / "last.ckpt"
    assert "training loss became nan at epoch 2" in lines[0] and str(last) in lines[0]
    kept = load_checkpoint(last)
    assert kept["epoch"] == 1, "last.ckpt must be the end of epoch 1, the last finite one"
    assert all(torch.isfinite(t).all() for t in kept["state_dict"].values())
    assert not list(last.parent.glob("*.tmp"))


def test_the_error_line_is_all_a_user_sees_and_debug_shows_the_traceback(run_copy: Path):
    truncate(str(RUN / "checkpoints" / "best.ckpt"))(run_copy)
    args = [sys.executable, "-m", "qlit", "test", "--config", IRIS, "--ckpt_path=best", *QUICK]
    env = {k: v for k, v in os.environ.items() if k != "QLIT_DEBUG"}
    quiet = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == 2
    assert "Traceback" not in quiet.stderr
    lines = quiet.stderr.splitlines()
    assert [line for line in lines if line.startswith("qlit: error:")] == [lines[-1]]
    assert "best.ckpt" in lines[-1]


def test_qlit_debug_raises_instead(monkeypatch):
    monkeypatch.setenv("QLIT_DEBUG", "1")
    with pytest.raises(Exception) as err:
        main(["fit", "--config", IRIS, "--model.n_qubits=0", *QUICK])
    chain, seen = err.value, []
    while chain is not None:
        seen.append(chain)
        chain = chain.__cause__ or chain.__context__
    assert any(isinstance(e, QlitError) and "n_qubits" in str(e) for e in seen)
