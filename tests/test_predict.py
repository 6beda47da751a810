"""`qlit predict --data.predict_file new.csv`: new raw samples through the training preprocessing."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_iris

from qlit.cli import main
from qlit.data.base import read_samples_csv
from qlit.errors import QlitError
from tests.conftest import CONFIGS, fit_iris_one_epoch

IRIS = str(CONFIGS / "iris.yaml")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A one-epoch Iris fit; returns its run folder and the args that point `qlit` at it."""
    return fit_iris_one_epoch(tmp_path_factory.mktemp("predict"))


@pytest.fixture(scope="module")
def run3(tmp_path_factory) -> tuple[Path, list[str]]:
    """A one-epoch fit on all three Iris species."""
    classes = "--data.init_args.classes=[setosa,versicolor,virginica]"
    return fit_iris_one_epoch(tmp_path_factory.mktemp("predict3"), classes)


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_predict_file_writes_labelled_predictions_and_never_overwrites(run, tmp_path):
    run_dir, args = run
    x = load_iris().data[::10]
    new = tmp_path / "new.csv"
    with new.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sepal_length", "id", "sepal_width", "petal_length", "petal_width"])  # id need not come first
        writer.writerows([[row[0], f"flower{i}", *row[1:]] for i, row in enumerate(x)])
    main(["predict", *args, "--data.predict_file", str(new)])
    first = run_dir / "predictions.csv"
    rows = _rows(first)
    assert rows[0] == ["id", "label", "prob_setosa", "prob_versicolor"]
    assert [r[0] for r in rows[1:]] == [f"flower{i}" for i in range(len(x))]
    proba = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=2e-6)
    assert [r[1] for r in rows[1:]] == [["setosa", "versicolor"][k] for k in proba.argmax(axis=1)]
    before = first.read_bytes()
    # the long form of the option works too, and a second run writes beside the first
    main(["predict", *args, "--data.init_args.predict_file", str(new)])
    assert first.read_bytes() == before
    assert (run_dir / "predictions_1.csv").read_bytes() == before


def test_predict_file_without_id_column_numbers_the_rows(run, tmp_path):
    run_dir, args = run
    new = tmp_path / "no_id.csv"
    new.write_text("a,b,c,d\n5.1,3.5,1.4,0.2\n6.0,2.2,4.0,1.0\n")
    existing = set(run_dir.glob("predictions*.csv"))
    main(["predict", *args, "--data.predict_file", str(new)])
    (written,) = set(run_dir.glob("predictions*.csv")) - existing
    assert [r[0] for r in _rows(written)[1:]] == ["0", "1"]


def _written_by(run_dir: Path, action) -> Path:
    """The one predictions file that ``action()`` adds to ``run_dir``."""
    before = set(run_dir.glob("predictions*.csv"))
    action()
    (written,) = set(run_dir.glob("predictions*.csv")) - before
    return written


def _assert_same_predictions(rows: list[list[str]], expected: list[list[str]]) -> None:
    assert rows[0] == expected[0]
    assert [r[:2] for r in rows[1:]] == [r[:2] for r in expected[1:]]
    got = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    np.testing.assert_allclose(got, [[float(v) for v in r[2:]] for r in expected[1:]], atol=2e-6)


@pytest.mark.parametrize("fit", ["run", "run3"], ids=["binary", "three-class"])
def test_batches_of_one_row_predict_what_full_batches_do(request, tmp_path, fit):
    run_dir, args = request.getfixturevalue(fit)
    new = tmp_path / "new.csv"
    x = load_iris().data[::15]
    new.write_text("id,a,b,c,d\n" + "".join(f"f{i}," + ",".join(map(str, row)) + "\n" for i, row in enumerate(x)))
    predict = ["predict", *args, "--data.predict_file", str(new)]
    full = _rows(_written_by(run_dir, lambda: main(predict)))
    names = ["setosa", "versicolor", "virginica"][: len(full[0]) - 2]
    assert full[0] == ["id", "label", *(f"prob_{name}" for name in names)] and len(full) == len(x) + 1
    _assert_same_predictions(_rows(_written_by(run_dir, lambda: main([*predict, "--data.batch_size=1"]))), full)
    one = tmp_path / "one.csv"
    one.write_text("a,b,c,d\n" + ",".join(map(str, x[3])) + "\n")
    single = _rows(_written_by(run_dir, lambda: main(["predict", *args, "--data.predict_file", str(one)])))
    _assert_same_predictions(single, [full[0], ["0", *full[4][1:]]])
    # the test fold, without a predict file: ids are the fold's row numbers, in order, at any batch size
    fold = _rows(_written_by(run_dir, lambda: main(["predict", *args])))
    _assert_same_predictions(_rows(_written_by(run_dir, lambda: main(["predict", *args, "--data.batch_size=1"]))), fold)
    assert [int(r[0]) for r in fold[1:]] == sorted(int(r[0]) for r in fold[1:])


def test_ddp_predict_writes_every_sample_once_in_file_order(run, tmp_path):
    run_dir, args = run
    new = tmp_path / "odd.csv"  # 9 rows: the two ranks get unequal shards
    new.write_text("id,a,b,c,d\n" + "".join(f"r{i},{5 + i / 10},{3 - i / 20},{1 + i / 3},{i / 8}\n" for i in range(9)))
    predict = [*args, "--data.predict_file", str(new)]
    single = _written_by(run_dir, lambda: main(["predict", *predict]))
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    command = [sys.executable, "-m", "qlit", "predict", *predict, *ddp]
    done: list[subprocess.CompletedProcess] = []

    def run_ddp() -> None:
        done.append(subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path))

    written = _written_by(run_dir, run_ddp)
    assert done[0].returncode == 0, done[0].stderr[-3000:]
    assert done[0].stdout.count("qlit: wrote 9 predictions") == 1  # rank 0 only
    # Each rank predicts a smaller batch than the single process, and float32 products of other shapes may
    # round the last bit differently: ids, labels and order must match exactly, probabilities to 2e-6.
    _assert_same_predictions(_rows(written), _rows(single))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,a,b,c\nx,1,2,3\n", "3 feature columns, the model expects 4"),
        ("a,b,c,d\n1,2,three,4\n", "line 2, column 'c': 'three' is not a number"),
        ("a,b,c,d\n1,2,3,4\n1,NaN,3,4\n", "line 3, column 'b': 'NaN' is not a finite number"),
    ],
)
def test_bad_predict_file_is_one_line_error_and_exit_2(run, tmp_path, capsys, content, message):
    run_dir, args = run
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    existing = set(run_dir.glob("predictions*.csv"))
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", *args, "--data.predict_file", str(bad)])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("qlit: error:")]
    assert lines == [f"qlit: error: {bad}: {message}"]
    assert set(run_dir.glob("predictions*.csv")) == existing


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b\n1,2\n1\n", "line 3 has 1 columns, the header has 2"),
        ("a,b\n1,inf\n", "'inf' is not a finite number"),
        ("a,b\n1,\n", "'' is not a number"),
        ("a,b\n", "no samples"),
        ("", "no samples"),
        (b"\x80\x81,\xff\n1,2\n", "not a readable UTF-8 CSV"),
        ("a,b\n1,2\n\n1_0,2\n", "line 4, column 'a': '1_0' is not a number"),
        ("b,b\n1,2\n", "column 'b' appears twice in the header"),
        ("a,b\n\n1,2\n1\n", "line 4 has 1 columns, the header has 2"),  # blank lines count, as in an editor
    ],
)
def test_read_samples_csv_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "samples.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(QlitError, match="samples.csv") as err:
        read_samples_csv(path, 2)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_read_samples_csv_reads_ids_genotypes_and_a_byte_order_mark(tmp_path):
    path = tmp_path / "genotypes.csv"
    path.write_bytes("\ufeffrs1,rs2,id,rs3\n0,1,ind7,2\n2, 2 ,ind9,0\n".encode())
    ids, x = read_samples_csv(path, 3)
    assert ids == ["ind7", "ind9"]
    np.testing.assert_array_equal(x, [[0, 1, 2], [2, 2, 0]])
    with pytest.raises(QlitError, match="predict file not found"):
        read_samples_csv(tmp_path / "missing.csv", 3)
