"""TabularDataModule and read_table: the user's own CSV/TSV/Parquet tables, end to end through the real CLI."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import qlit
from qlit import load_model
from qlit.cli import main
from qlit.data import TabularDataModule, read_table
from qlit.errors import QlitError
from tests.conftest import CONFIGS, QUICK, one_line_error

TABULAR = str(CONFIGS / "tabular.yaml")


def animals(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """A small separable table: an id, two string classes, three numeric features and a text column."""
    rng = np.random.default_rng(seed)
    label = np.where(np.arange(n) % 2 == 0, "cat", "dog")
    shift = np.where(label == "dog", 2.0, -2.0)
    return pd.DataFrame({
        "name": [f"a{i}" for i in range(n)],
        "weight": shift + rng.normal(size=n),
        "species": label,
        "height": shift + rng.normal(size=n),
        "colour": rng.choice(["black", "white"], n),
        "age": rng.normal(size=n),
    })


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def test_string_labels_default_features_and_ids(tmp_path):
    animals().to_csv("a.csv", index=False)
    dm = TabularDataModule(path="a.csv", target="species", id_column="name", num_folds=3)
    assert dm.class_names == ["cat", "dog"] and dm.num_classes == 2
    assert dm.feature_columns == ["weight", "height", "age"], "id, target and the text column are not features"
    assert dm.num_features == dm.raw_features == 3
    dm.setup("fit")
    assert dm.x.shape == (60, 3) and dm.x.dtype == np.float64
    assert list(dm.y[:4]) == [0, 1, 0, 1]
    assert dm.row_ids()[0] == "a0"
    assert dm.split_identity()["source"]["path"] == "a.csv"


def test_integer_labels_sort_by_value_and_classes_choose_a_subset(tmp_path):
    frame = animals(90)
    frame["species"] = np.tile([10, 2, 7], 30)
    frame.to_csv("a.csv", index=False)
    assert TabularDataModule(path="a.csv", target="species").class_names == ["2", "7", "10"]
    dm = TabularDataModule(path="a.csv", target="species", classes=[10, 2], num_folds=3)
    dm.setup("fit")
    assert dm.class_names == ["10", "2"] and len(dm.y) == 60
    labels = frame["species"].to_numpy()
    assert list(dm.y[:2]) == [0, 1] and labels[0] == 10 and labels[1] == 2


def test_parquet_tsv_and_bom_csv_read_the_same_table(tmp_path):
    frame = animals()
    frame.to_csv("a.csv", index=False)
    frame.to_parquet("a.parquet", index=False)
    frame.to_csv("a.tsv", sep="\t", index=False)
    Path("bom.csv").write_bytes(b"\xef\xbb\xbf" + Path("a.csv").read_bytes())
    frame.to_csv("utf16.csv", index=False, encoding="utf-16")
    reference = TabularDataModule(path="a.csv", target="species", id_column="name")
    reference.setup("fit")
    for other in ("a.parquet", "a.tsv", "bom.csv", "utf16.csv"):
        dm = TabularDataModule(path=other, target="species", id_column="name")
        dm.setup("fit")
        assert dm.feature_columns == reference.feature_columns, other
        np.testing.assert_allclose(dm.x, reference.x, rtol=0, atol=1e-12, err_msg=other)
        assert np.array_equal(dm.y, reference.y) and list(dm.row_ids()) == list(reference.row_ids())
    assert read_table("bom.csv").columns[0] == "name", "the byte-order mark must not stick to the first name"


def test_missing_value_is_an_error_or_the_training_rows_mean(tmp_path):
    frame = animals()
    frame.loc[7, "height"] = np.nan
    frame.to_csv("a.csv", index=False)
    with pytest.raises(QlitError, match=r"a\.csv: line 9, column 'height': missing value"):
        TabularDataModule(path="a.csv", target="species").setup("fit")
    for fold in range(3):
        dm = TabularDataModule(path="a.csv", target="species", impute="mean", num_folds=3, fold=fold)
        dm.setup("fit")
        train = [r for r in dm.indices["train"] if r != 7]
        expected = frame.loc[train, "height"].mean()  # no validation or test row in the mean
        assert dm.x[7, 1] == pytest.approx(expected)
        assert not np.isnan(dm.x).any()
        assert dm.state_dict()["impute_means"][1].item() == pytest.approx(expected)


def test_imputation_means_come_from_the_inner_training_rows_only(tmp_path):
    """Before: the means came from the outer fold's training rows, which hold every trial's inner validation rows."""
    frame = animals(60)
    frame.loc[np.random.default_rng(3).choice(60, 15, replace=False), "height"] = np.nan
    frame.to_csv("a.csv", index=False)
    raw = frame[["weight", "height", "age"]].to_numpy()
    gaps = np.isnan(raw[:, 1])
    digests = set()
    for inner_fold in range(3):
        dm = TabularDataModule(path="a.csv", target="species", impute="mean", num_folds=3, fold=1, inner_folds=3,
                               inner_fold=inner_fold)
        dm.setup("fit")
        expected = np.nanmean(raw[dm.indices["train"]], axis=0)
        np.testing.assert_allclose(dm.state_dict()["impute_means"].numpy(), expected, rtol=1e-12)
        assert not np.allclose(expected, np.nanmean(raw[dm.split(dm.y)["train"]], axis=0))  # the outer rows' differ
        np.testing.assert_allclose(dm.x[gaps, 1], expected[1], rtol=1e-12)  # validation rows' gaps too
        np.testing.assert_allclose(dm.features("val"), dm.preprocessor.transform(dm.x[dm.indices["val"]]).numpy())
        digests.add(dm.split_identity()["data_sha256"])
    assert len(digests) == 1, "the data's identity must not depend on which rows fill the gaps"


def test_restored_checkpoint_means_fill_the_test_rows(tmp_path):
    """Everything that shapes an input comes from the checkpoint: before, restoring it left this command's means."""
    frame = animals(60)
    frame.loc[range(0, 60, 4), "age"] = np.nan
    frame.to_csv("a.csv", index=False)
    trained = TabularDataModule(path="a.csv", target="species", impute="mean", num_folds=3)
    trained.setup("fit")
    state = trained.state_dict()
    state["impute_means"] = state["impute_means"] + 5.0  # a checkpoint whose means this fold would not give
    restored = TabularDataModule(path="a.csv", target="species", impute="mean", num_folds=3)
    restored.setup("test")
    restored.load_state_dict(state)
    rows = restored.indices["test"]
    expected = frame[["weight", "height", "age"]].to_numpy()[rows]
    assert np.isnan(expected).any()
    expected = np.where(np.isnan(expected), state["impute_means"].numpy(), expected)
    np.testing.assert_allclose(restored.features("test"), trained.preprocessor.transform(expected).numpy(), rtol=1e-6)


def test_numeric_column_with_a_typo_and_explicit_text_feature_are_errors(tmp_path):
    frame = animals().astype({"age": object})
    frame.loc[4, "age"] = "12,5"
    frame.to_csv("a.csv", index=False)
    with pytest.raises(QlitError, match=r"line 6, column 'age': '12,5' is not a number"):
        TabularDataModule(path="a.csv", target="species")
    animals().to_csv("b.csv", index=False)
    dm = TabularDataModule(path="b.csv", target="species", features=["weight", "colour"])
    with pytest.raises(QlitError, match=r"b\.csv: line 2, column 'colour': '(black|white)' is not a number"):
        dm.setup("fit")


def run_cli(args: list[str]) -> None:
    main([*args, *QUICK])


def test_fit_test_predict_by_column_name_and_int8_export(tmp_path, capfd):
    frame = animals(80)
    frame.to_csv("train.csv", index=False)
    data = ["--data.init_args.path=train.csv", "--data.init_args.target=species", "--data.init_args.id_column=name",
            "--data.init_args.n_components=null", "--data.init_args.num_folds=4"]
    run_cli(["fit", "--config", TABULAR, *data, "--trainer.max_epochs=2"])
    run = Path("lightning_logs/tabular/version_0")
    assert (run / "model_int8.pt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    run_cli(["test", "--config", TABULAR, *data, "--ckpt_path=best"])
    new = frame.iloc[:10]
    new.to_csv("new.csv", index=False)
    # Same rows, columns reordered and one extra: predictions must not change.
    new.assign(notes="x")[["age", "notes", "height", "name", "weight"]].to_csv("reordered.csv", index=False)
    capfd.readouterr()
    run_cli(["predict", "--config", TABULAR, *data, "--ckpt_path=best", "--data.init_args.predict_file=new.csv"])
    run_cli(["predict", "--config", TABULAR, *data, "--ckpt_path=best", "--data.init_args.predict_file=reordered.csv"])
    err = capfd.readouterr().err
    assert "ignoring columns that are not features: 'notes'" in err
    first = list(csv.reader((run / "predictions.csv").open()))
    second = list(csv.reader((run / "predictions_1.csv").open()))
    assert first == second and len(first) == 11 and first[1][0] == "a0"
    int8 = load_model(run / "model_int8.pt")
    probs = int8.predict_proba(new[["weight", "height", "age"]].to_numpy())
    np.testing.assert_allclose(probs[:, 1], [float(r[3]) for r in first[1:]], atol=0.05)


def test_cv_reports_hybrid_twin_and_logistic_regression_reading_the_file_once(tmp_path, monkeypatch):
    from sklearn.datasets import load_breast_cancer

    from qlit.data import preprocessing, tables

    cancer = load_breast_cancer(as_frame=True)
    frame = cancer.frame.assign(target=[cancer.target_names[t] for t in cancer.target])
    frame.to_csv("cancer.csv", index=False)
    reads, fits = [], []
    read, fit = tables._read_table, preprocessing.Preprocessor.fit
    monkeypatch.setattr(tables, "_read_table", lambda path, *a: reads.append(str(path)) or read(path, *a))
    monkeypatch.setattr(preprocessing.Preprocessor, "fit", lambda self, x: fits.append(len(x)) or fit(self, x))

    run_cli(["cv", "--config", TABULAR, "--data.init_args.path=cancer.csv", "--data.init_args.num_folds=2",
             "--trainer.max_epochs=1", "--tuned_baselines=false"])
    summary = json.loads(Path("lightning_logs/tabular/cv_summary.json").read_text())
    assert summary["num_folds"] == 2 and summary["class_names"] == ["benign", "malignant"]
    assert summary["baselines"]["logistic_regression"]["test_acc_mean"] > 0.9
    assert sum(f["n_test"] for f in summary["folds"]) == 569
    # the command's own data module and the hybrid and twin of both folds (5 data modules): one read of the file,
    # one fit of each fold's preprocessing on its training rows
    assert reads == ["cancer.csv"]
    assert sorted(fits) == sorted(f["n_train"] for f in summary["folds"])
    # where the numbers came from: versions, qlit's commit, the command, the data and the date
    made = summary["provenance"]
    assert made["command"][:4] == ["qlit", "cv", "--config", TABULAR] and made["date"].startswith("20")
    assert made["data"]["data_sha256"] == summary["folds"][0]["data_sha256"]
    assert made["data"]["settings"]["path"] == "cancer.csv"
    assert made["versions"]["qlit"] == qlit.__version__
    repo = Path(qlit.__file__).resolve().parents[1]
    if shutil.which("git") and (repo / ".git").exists():  # read from .git by qlit, asked of git here
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        assert made["git_commit"] == head.stdout.strip()


FIT = ["fit", "--config", TABULAR, "--trainer.max_epochs=1", "--data.init_args.n_components=null"]
GOOD = ["--data.init_args.path=a.csv", "--data.init_args.target=species"]


def table_case(name: str, args: list[str], words: list[str], files: dict[str, str] | None = None):
    """One bad input: the command, the words its one-line error must hold, files to write first."""
    return pytest.param(args, words, files or {}, id=name)


ONE_CLASS = "x,y,label\n" + "".join(f"{i},{i * 2},same\n" for i in range(20))
CASES = [
    table_case("file-missing", [*FIT, "--data.init_args.path=absent.csv", "--data.init_args.target=y"], ["absent.csv"]),
    table_case("unknown-suffix", [*FIT, "--data.init_args.path=a.xlsx", "--data.init_args.target=y"], ["a.xlsx"],
               {"a.xlsx": "x"}),
    table_case("target-missing", [*FIT, "--data.init_args.path=a.csv", "--data.init_args.target=kind"],
               ["a.csv", "'kind'"]),
    table_case("non-numeric-feature", [*FIT, *GOOD, "--data.init_args.features=[weight,colour]"],
               ["a.csv", "'colour'", "not a number"]),
    table_case("single-class", [*FIT, "--data.init_args.path=one.csv", "--data.init_args.target=label"],
               ["one.csv", "single class", "'same'"], {"one.csv": ONE_CLASS}),
    table_case("ragged-row", [*FIT, "--data.init_args.path=r.csv", "--data.init_args.target=y"],
               ["r.csv", "line 3", "3 fields"], {"r.csv": "x,y\n1,a\n2,b,9\n"}),
    table_case("duplicate-header", [*FIT, "--data.init_args.path=d.csv", "--data.init_args.target=y"],
               ["d.csv", "'x'", "twice"], {"d.csv": "x,x,y\n1,2,a\n"}),
    table_case("missing-value", [*FIT, "--data.init_args.path=m.csv", "--data.init_args.target=y"],
               ["m.csv", "line 3", "'x'", "missing"], {"m.csv": "x,y\n1,a\n,b\n3,a\n4,b\n"}),
    table_case("unknown-class", [*FIT, *GOOD, "--data.init_args.classes=[cat,cow]"], ["'cow'", "'species'"]),
    table_case("bad-impute", [*FIT, *GOOD, "--data.init_args.impute=median"], ["impute", "median"]),
    table_case("predict-column-missing",
               ["predict", "--config", TABULAR, *GOOD, "--data.init_args.n_components=null",
                "--data.init_args.predict_file=p.csv"],
               ["p.csv", "'age'"], {"p.csv": "weight,height\n1,2\n"}),
]


CATS_AND_DOGS = "x,y,label\n" + "".join(f"{i},{i % 3},{'cat' if i % 2 else 'dog'}\n" for i in range(20))
SINGLE_ROW_CLASS = CATS_AND_DOGS + "7,1,bird\n"
MISSING_VALUE = CATS_AND_DOGS + ",1,cat\n"
HARDENING_CASES = [
    table_case("single-row-class", [*FIT, "--data.init_args.path=few.csv", "--data.init_args.target=label"],
               ["few.csv", "'label'", "only 1 sample of class 'bird'"], {"few.csv": SINGLE_ROW_CLASS}),
    table_case("id-column-is-the-target", [*FIT, *GOOD, "--data.init_args.id_column=species"],
               ["id_column 'species'", "target"]),
    table_case("impute-null-means-missing-is-an-error",
               [*FIT, "--data.init_args.path=m.csv", "--data.init_args.target=label", "--data.init_args.impute=null"],
               ["m.csv", "line 22", "'x'", "missing value"], {"m.csv": MISSING_VALUE}),
]


@pytest.mark.parametrize(("args", "words", "files"), CASES + HARDENING_CASES)
def test_bad_table_is_one_line_exit_2_and_writes_nothing(tmp_path, capfd, args, words, files):
    animals().to_csv("a.csv", index=False)
    for name, text in files.items():
        Path(name).write_text(text)
    before = snapshot(tmp_path)
    one_line_error(args, capfd, words)
    assert snapshot(tmp_path) == before


def test_impute_null_is_no_imputation(tmp_path):
    frame = animals()
    frame.to_csv("a.csv", index=False)
    dm = TabularDataModule(path="a.csv", target="species", impute=None)
    dm.setup("fit")
    assert dm.impute == "error" and dm.state_dict()["impute"] == "error"
    frame.loc[3, "age"] = np.nan
    frame.to_csv("b.csv", index=False)
    with pytest.raises(QlitError, match=r"b\.csv: line 5, column 'age': missing value"):
        TabularDataModule(path="b.csv", target="species", impute=None).setup("fit")


def test_wrong_target_names_the_closest_columns_first(tmp_path):
    frame = pd.DataFrame({f"m{i}": [1.0, 2.0] for i in range(20)})
    frame["diagnosis"] = ["a", "b"]
    frame.to_csv("wide.csv", index=False)
    with pytest.raises(QlitError) as err:
        TabularDataModule(path="wide.csv", target="Diagnosis")
    message = str(err.value)
    assert "no column 'Diagnosis'" in message and "did you mean 'diagnosis'?" in message, message
    assert message.index("'diagnosis'") < message.index("'m0'") and "(21 in all)" in message, message


def _workbook(path: Path) -> None:
    """A ZIP archive, as an Excel .xlsx workbook is."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")


@pytest.mark.parametrize(
    ("write", "words"),
    [
        (lambda path: animals().to_parquet(path, index=False), ["is a Parquet file", "name it .parquet"]),
        (lambda path: path.write_bytes(gzip.compress(b"x,y\n1,2\n")), ["gzip-compressed", "t.csv.gz"]),
        (lambda path: _workbook(path), ["ZIP archive", "xlsx", "export it as CSV"]),
    ],
    ids=["parquet", "gzip", "xlsx"],
)
def test_binary_file_named_csv_says_what_it_is(tmp_path, capfd, write, words):
    write(tmp_path / "t.csv")
    with pytest.raises(QlitError) as err:
        read_table("t.csv")
    assert "t.csv" in str(err.value) and all(w in str(err.value) for w in words), str(err.value)
    if words[0] == "is a Parquet file":  # through the CLI: one line, nothing written
        before = snapshot(tmp_path)
        one_line_error([*FIT, "--data.init_args.path=t.csv", "--data.init_args.target=species"], capfd,
                       ["t.csv", "Parquet", ".parquet"])
        assert snapshot(tmp_path) == before


def test_unique_non_feature_column_is_the_sample_id_and_the_choice_is_said(tmp_path, capsys):
    frame = animals()
    frame.to_csv("a.csv", index=False)
    dm = TabularDataModule(path="a.csv", target="species", num_folds=3)
    assert "qlit: using column 'name' as the sample id (set data.id_column to choose)" in capsys.readouterr().out
    assert "name" not in dm.feature_columns and dm.feature_columns == ["weight", "height", "age"]
    dm.setup("fit")
    assert list(dm.row_ids()[:2]) == ["a0", "a1"] and dm.state_dict()["id_column"] == "name"
    frame.drop(columns=["name"]).to_csv("b.csv", index=False)
    dm = TabularDataModule(path="b.csv", target="species", num_folds=3)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "b.csv" in out[0] and "row numbers" in out[0], out
    dm.setup("fit")
    assert list(dm.row_ids()[:2]) == ["0", "1"]


def test_predict_needs_only_the_checkpoint_and_the_new_file(tmp_path, capfd):
    frame = animals(60)
    frame.loc[[3, 10, 21], "height"] = np.nan
    frame.to_csv("train.csv", index=False)
    data = ["--data.init_args.path=train.csv", "--data.init_args.target=species",
            "--data.init_args.n_components=null", "--data.init_args.num_folds=3", "--data.init_args.impute=mean"]
    run_cli(["fit", "--config", TABULAR, *data, "--trainer.max_epochs=1"])
    run = Path("lightning_logs/tabular/version_0")
    new = frame.drop(columns=["species"]).iloc[:8].copy()
    new.loc[[0, 1], "weight"] = np.nan  # imputed with the checkpoint's means, whatever the command's fold
    new.to_csv("new.csv", index=False)
    predict = ["predict", "--config", TABULAR, *data, "--ckpt_path=best", "--data.init_args.predict_file=new.csv"]
    run_cli([*predict, "--data.init_args.fold=0"])
    run_cli([*predict, "--data.init_args.fold=1"])
    assert (run / "predictions.csv").read_text() == (run / "predictions_1.csv").read_text(), "fold must not matter"
    Path("train.csv").rename("moved.csv")  # the training table is gone: the checkpoint holds all predict needs
    run_cli([*predict, "--data.init_args.fold=2"])
    outputs = [(run / name).read_text() for name in ("predictions.csv", "predictions_1.csv", "predictions_2.csv")]
    assert outputs[0] == outputs[1] == outputs[2]
    rows = list(csv.reader(outputs[0].splitlines()))
    assert [r[0] for r in rows[1:]] == [f"a{i}" for i in range(8)], "the id column chosen at fit is the id"

    new.assign(age=[True, False] * 4).to_csv("flags.csv", index=False)
    capfd.readouterr()
    before = snapshot(tmp_path)
    one_line_error([*predict[:-1], "--data.init_args.predict_file=flags.csv"], capfd,
                   ["flags.csv", "'age'", "True/False", "train.csv"])
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("subcommand", ["fit", "test", "predict"])
def test_without_the_training_table_only_predict_from_a_checkpoint_runs(subcommand, tmp_path, capfd):
    """Before: a traceback (HybridClassifier missing in_features), as the data module had nothing to size the model."""
    animals(12).drop(columns=["species"]).to_csv("new.csv", index=False)
    args = [subcommand, "--config", TABULAR, "--data.init_args.path=gone.csv", "--data.init_args.target=species",
            "--data.init_args.predict_file=new.csv"]  # fmt: skip
    before = snapshot(tmp_path)
    one_line_error(args, capfd, ["gone.csv", "qlit predict --ckpt_path", "new.csv"])
    assert snapshot(tmp_path) == before
