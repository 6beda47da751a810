"""Bad input ends in one line ``qlit: error: ...`` that names the culprit, and nothing on disk changes.

Every case runs the real ``qlit`` entry point in-process, inside a copy of a real two-epoch Iris
run (``lightning_logs/iris/version_0`` with ``best.ckpt`` and ``last.ckpt``), and checks: exit
status 2, exactly one line on stderr, the offending value or file named in it, and every file of
the existing run byte-for-byte as it was, with no new file anywhere (a run that started training
may only add its own new version folder).
"""

from __future__ import annotations

import gzip
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

from qlit.cli import main
from qlit.errors import QlitError
from qlit.io.checkpoints import load_checkpoint
from tests.conftest import CONFIGS, QUICK
from tests.forked import user_environment

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


def write_bytes(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_bytes(content)


def directory(name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).mkdir()


def fifo(name: str) -> Callable[[Path], None]:
    return lambda tmp: os.mkfifo(tmp / name)


# Ten individuals of each of AFR and EUR, 10 SNPs: a genotype file the ONE_POPULATION options read.
GENOTYPES = "population," + ",".join(f"rs{i}" for i in range(10)) + "\n" + "".join(
    f"{'AFR' if i % 2 else 'EUR'}," + ",".join(str((i * j) % 3) for j in range(10)) + "\n" for i in range(20)
)


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
TWO_SNPS = ["--data.init_args.n_snps=2", "--data.init_args.n_components=2"]
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
    case(
        "predict-one-row-underscore-number",
        [*PREDICT, "--data.init_args.predict_file=us.csv"],
        ["us.csv", "line 3", "'a'", "'1_000'"],
        write("us.csv", "a,b,c,d\n5.1,3.5,1.4,0.2\n1_000,3.5,1.4,0.2\n"),
    ),
    case(
        "predict-duplicate-id-column",
        [*PREDICT, "--data.init_args.predict_file=dup.csv"],
        ["dup.csv", "'id'", "twice"],
        write("dup.csv", "id,id,a,b,c\n1,2,3,4,5\n"),
    ),
    case(
        "predict-header-and-no-rows",
        [*PREDICT, "--data.init_args.predict_file=h.csv"],
        ["h.csv", "no samples"],
        write("h.csv", "id,a,b,c,d\n\n"),
    ),
    case(
        "predict-file-is-a-directory",
        [*PREDICT, "--data.init_args.predict_file=folder.csv"],
        ["folder.csv", "directory"],
        directory("folder.csv"),
    ),
    case(
        "predict-file-is-a-fifo",
        [*PREDICT, "--data.init_args.predict_file=pipe.csv"],
        ["pipe.csv", "not a regular file"],
        fifo("pipe.csv"),
    ),
    case("genotype-file-missing", [*FIT_GENOMIC, "--data.init_args.genotype_file=absent.csv"], ["absent.csv"]),
    case("genotype-file-one-class", [*FIT_GENOMIC, *ONE_POPULATION], ["one.csv", "EUR"], one_population("one.csv")),
    case(
        "genotype-file-gzip",
        [*FIT_GENOMIC, *ONE_POPULATION, "--data.init_args.genotype_file=g.csv.gz"],
        ["g.csv.gz", "gzip"],
        write_bytes("g.csv.gz", gzip.compress(GENOTYPES.encode())),
    ),
    case(
        "genotype-file-utf16",
        [*FIT_GENOMIC, *ONE_POPULATION, "--data.init_args.genotype_file=u16.csv"],
        ["u16.csv", "UTF-16"],
        write_bytes("u16.csv", GENOTYPES.encode("utf-16")),
    ),
    case(
        "genotype-file-random-bytes",
        [*FIT_GENOMIC, *ONE_POPULATION, "--data.init_args.genotype_file=noise.csv"],
        ["noise.csv", "not a text CSV file"],
        write_bytes("noise.csv", np.random.default_rng(0).bytes(4000)),
    ),
    case(
        "genotype-file-utf8-bytes-that-are-not-text",
        [*FIT_GENOMIC, *ONE_POPULATION, "--data.init_args.genotype_file=latin1.csv"],
        ["latin1.csv", "UTF-8", "line 2"],
        write_bytes("latin1.csv", b"population,rs0\nAFR\xe9,0\n"),
    ),
    case(
        "genotype-file-short-row-population-last",
        [*FIT_GENOMIC, *ONE_POPULATION, "--data.init_args.genotype_file=short.csv"],
        ["short.csv", "line 3", "2 columns", "11"],
        write("short.csv", "rs0,rs1,rs2,rs3,rs4,rs5,rs6,rs7,rs8,rs9,population\n0,1,2,0,1,2,0,1,2,0,AFR\n0,1\n"),
    ),
    case(
        "genotype-file-byte-order-mark-and-bad-population",
        [*FIT_GENOMIC, *ONE_POPULATION, "--data.init_args.genotype_file=bom.csv"],
        ["bom.csv", "line 3", "'MARS'"],
        write_bytes("bom.csv", ("population,rs0\nAFR,0\nMARS,1\n").encode("utf-8-sig")),
    ),
    case(
        "genotype-file-duplicate-column",
        [*FIT_GENOMIC, *ONE_POPULATION, "--data.init_args.genotype_file=dupsnp.csv"],
        ["dupsnp.csv", "'rs0'", "twice"],
        write("dupsnp.csv", "population,rs0,rs0\nAFR,0,1\n"),
    ),
    case(
        "genotype-file-three-rows",
        [*FIT_GENOMIC, *ONE_POPULATION, "--data.init_args.genotype_file=three.csv", *TWO_SNPS],
        ["three.csv", "'EUR'", "only 1", "at least 2"],
        write("three.csv", "population,rs0,rs1\nAFR,0,1\nEUR,1,2\nAFR,2,0\n"),
    ),
    case(
        "genotype-file-is-a-directory",
        [*FIT_GENOMIC, *ONE_POPULATION, "--data.init_args.genotype_file=gdir"],
        ["gdir", "directory"],
        directory("gdir"),
    ),
    case(
        "genotype-file-is-a-fifo",
        [*FIT_GENOMIC, *ONE_POPULATION, "--data.init_args.genotype_file=gpipe"],
        ["gpipe", "not a regular file"],
        fifo("gpipe"),
    ),
    # split and data options
    case("val_fraction-empty-val", [*FIT, "--data.init_args.val_fraction=0.01"], ["val_fraction=0.01", "validation"]),
    case("val_fraction-empty-train", [*FIT, "--data.init_args.val_fraction=0.99"], ["val_fraction=0.99", "training"]),
    case("num_workers-negative", [*FIT, "--data.init_args.num_workers=-1"], ["num_workers", "-1"]),
    case("split_seed-negative", [*FIT, "--data.init_args.split_seed=-1"], ["split_seed", "-1"]),
    case("split_seed-too-large", [*FIT, "--data.init_args.split_seed=4294967296"], ["split_seed", "4294967296"]),
    case("data_seed-negative", [*FIT_GENOMIC, "--data.init_args.data_seed=-1"], ["data_seed", "-1"]),
    case(
        "n_components-more-than-training-rows",
        [*FIT_GENOMIC, "--data.init_args.n_individuals=30", "--data.init_args.n_components=20"],
        ["n_components=20", "training rows"],
    ),
    case(
        "n_individuals-fewer-than-populations",
        [*FIT_GENOMIC, "--data.init_args.n_individuals=3"],
        ["n_individuals=3", "AMR"],
    ),
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


def run_main(args: list[str], capfd: pytest.CaptureFixture) -> tuple[int | str | None, list[str]]:
    """Run ``qlit`` in-process; its exit status and the non-blank lines written to fd 2 (logging included)."""
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, *QUICK])
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    return exit_info.value.code, lines


def test_every_case_names_its_culprit_and_has_its_own_name():
    """A case without words would only check that *some* error happened; a repeated id hides a case."""
    assert len({c.id for c in CASES}) == len(CASES)
    assert [c.id for c in CASES if not c.values[2] or not all(c.values[2])] == []


@pytest.mark.parametrize(("prepare", "args", "words", "trains"), CASES)
def test_bad_input_is_one_line_naming_the_culprit(run_copy: Path, capfd, prepare, args, words, trains):
    prepare(run_copy)
    before = snapshot(run_copy)
    code, lines = run_main(args, capfd)
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


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(capfd):
    poison = f"--trainer.callbacks+={PoisonFeatures.__module__}.PoisonFeatures"
    code, lines = run_main(["fit", "--config", IRIS, "--trainer.max_epochs=5", poison], capfd)
    assert code == 2 and len(lines) == 1
    last = RUN / "checkpoints" / "last.ckpt"
    assert "training loss became nan at epoch 2" in lines[0] and str(last) in lines[0]
    kept = load_checkpoint(last)
    assert kept["epoch"] == 1, "last.ckpt must be the end of epoch 1, the last finite one"
    assert all(torch.isfinite(t).all() for t in kept["state_dict"].values())
    assert not list(last.parent.glob("*.tmp"))


def test_the_error_line_is_all_a_user_sees_and_debug_shows_the_traceback(run_copy: Path, qlit_processes):
    truncate(str(RUN / "checkpoints" / "best.ckpt"))(run_copy)
    quiet = qlit_processes.run(["test", "--config", IRIS, "--ckpt_path=best", *QUICK])
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


def _as_reader_without_root_powers() -> list[str]:
    """A command prefix under which a mode-000 file cannot be read, even when the tests run as root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv is missing: no way to make a file unreadable")
    # Root reads any file through CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH; without them it obeys the mode bits.
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["fit", "--config", GENOMIC, *ONE_POPULATION[1:], "--data.init_args.genotype_file=secret.csv"],
                     id="genotype-file"),
        pytest.param([*PREDICT, "--data.init_args.predict_file=secret.csv"], id="predict-file"),
    ],
)
def test_unreadable_input_file_is_one_line_in_the_real_process(run_copy: Path, args):
    secret = run_copy / "secret.csv"
    secret.write_text("a,b,c,d\n5.1,3.5,1.4,0.2\n")
    before = snapshot(run_copy)
    secret.chmod(0)
    prefix = _as_reader_without_root_powers()
    probe = subprocess.run([*prefix, sys.executable, "-c", "open('secret.csv').read()"], capture_output=True)
    assert probe.returncode != 0 and b"PermissionError" in probe.stderr, "the file must really be unreadable"
    env = user_environment()
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "qlit", *args, *QUICK], capture_output=True, text=True, env=env, timeout=120
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("qlit: error: "), lines
    assert "secret.csv" in lines[0] and "permission denied" in lines[0], lines[0]
    secret.chmod(0o644)
    assert snapshot(run_copy) == before
