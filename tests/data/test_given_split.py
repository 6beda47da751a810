"""Given train/test splits of a table (``split_column`` or ``test_file``): the given test rows never train."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlit.cli import main
from qlit.data import TabularDataModule
from qlit.data.base import _sha256
from qlit.io.checkpoints import load_checkpoint
from tests.conftest import CONFIGS, QUICK, one_line_error
from tests.data.test_tabular import snapshot

TABULAR = str(CONFIGS / "tabular.yaml")
FEATURES = ["weight", "height", "age"]


def split_table(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """Two classes, three features, an id and a split column of mixed case and blanks: every 4th row tests."""
    rng = np.random.default_rng(seed)
    label = np.where(np.arange(n) % 2 == 0, "cat", "dog")
    shift = np.where(label == "dog", 2.0, -2.0)
    test = np.arange(n) % 4 >= 2  # rows 2 and 3 of every 4: both classes test
    odd = np.arange(n) % 8 < 4  # spellings a user's file may hold
    return pd.DataFrame({
        "name": [f"a{i}" for i in range(n)],
        "weight": shift + rng.normal(size=n),
        "species": label,
        "split": np.where(test, np.where(odd, " Test", "test"), np.where(odd, "TRAIN ", "train")),
        "height": shift + rng.normal(size=n),
        "age": rng.normal(size=n),
    })


def given_test_rows(frame: pd.DataFrame) -> np.ndarray:
    return np.flatnonzero(frame["split"].str.strip().str.lower() == "test")


def module(**kwargs) -> TabularDataModule:
    dm = TabularDataModule(target="species", n_components=None, **kwargs)
    dm.setup("fit")
    return dm


def test_given_rows_test_and_the_rest_train_and_validate_with_preprocessing_fit_on_training_rows(tmp_path):
    frame = split_table()
    frame.to_csv("s.csv", index=False)
    test = given_test_rows(frame)
    dm = module(path="s.csv", split_column="split", num_folds=3, fold=2)
    assert dm.given_split and dm.test_rows == "given"
    assert dm.feature_columns == FEATURES, "the split column is never a feature"
    assert np.array_equal(dm.indices["test"], test)
    learn = np.concatenate([dm.indices["train"], dm.indices["val"]])
    assert sorted(learn.tolist()) == sorted(set(range(60)) - set(test.tolist())), "every given training row, once"
    assert len(dm.indices["val"]) == 6  # val_fraction 0.2 of the 30 given training rows
    raw = frame[FEATURES].to_numpy()
    np.testing.assert_allclose(dm.preprocessor.state["scale_mean"].numpy(), raw[dm.indices["train"]].mean(0))
    assert not np.allclose(dm.preprocessor.state["scale_mean"].numpy(), raw[learn].mean(0))
    assert dm.row_ids()[:2] == ["a0", "a1"] and len(dm.row_ids()) == 60
    # fold and num_folds do not move the given split
    other = module(path="s.csv", split_column="split", num_folds=5, fold=0)
    assert all(np.array_equal(other.indices[k], dm.indices[k]) for k in ("train", "val", "test"))
    given = dm.split_identity()["given_split"]
    assert given == {"split_column": "split", "test_rows": "given", "n_test": 30, "test_sha256": _sha256(test)}
    # which rows are the given test rows is part of the data's identity
    frame.assign(split=np.where(np.arange(60) < 30, "train", "test")).to_csv("moved.csv", index=False)
    assert module(path="moved.csv", split_column="split").data_sha256() != dm.data_sha256()


def test_fold_mode_cross_validates_inside_the_training_rows_and_nesting_never_reaches_the_test_rows(tmp_path):
    frame = split_table()
    frame.to_csv("s.csv", index=False)
    test = set(given_test_rows(frame).tolist())
    training = set(range(60)) - test
    tested: list[int] = []
    identities = set()
    for fold in range(3):
        dm = module(path="s.csv", split_column="split", test_rows="fold", num_folds=3, fold=fold)
        rows = {name: set(dm.indices[name].tolist()) for name in ("train", "val", "test")}
        assert not (rows["train"] | rows["val"] | rows["test"]) & test, f"fold {fold} holds a given test row"
        assert rows["train"] | rows["val"] | rows["test"] == training
        tested += sorted(rows["test"])
        identities.add(dm.data_sha256())
        inner = module(path="s.csv", split_column="split", test_rows="fold", num_folds=3, fold=fold, inner_folds=2)
        assert set(inner.indices["train"].tolist()) | set(inner.indices["val"].tolist()) == rows["train"] | rows["val"]
        assert len(inner.indices["test"]) == 0
    assert sorted(tested) == sorted(training), "the folds' test rows cover every training row once"
    given = module(path="s.csv", split_column="split")
    assert identities == {given.data_sha256()}, "the folds and the refit on every training row share the data"
    for inner_fold in range(2):  # qlit tune on a given split: inner folds of the given training rows only
        inner = module(path="s.csv", split_column="split", inner_folds=2, inner_fold=inner_fold)
        assert set(inner.indices["train"].tolist()) | set(inner.indices["val"].tolist()) == training
        assert len(inner.indices["test"]) == 0


def test_a_test_file_gives_the_same_split_as_a_split_column(tmp_path):
    frame = split_table()
    test = given_test_rows(frame)
    frame.to_csv("s.csv", index=False)
    train_part = frame.drop(columns="split").drop(index=test)
    test_part = frame.drop(columns="split").iloc[test]
    train_part.to_csv("train.csv", index=False)
    test_part[["age", "species", "name", "height", "weight"]].to_csv("test.csv", index=False)  # any column order
    for test_rows in ("given", "fold"):
        by_column = module(path="s.csv", split_column="split", test_rows=test_rows, num_folds=3, fold=1)
        by_file = module(path="train.csv", test_file="test.csv", test_rows=test_rows, num_folds=3, fold=1)
        assert by_file.split_identity()["given_split"]["test_file"] == "test.csv"
        ids_column, ids_file = np.array(by_column.row_ids()), np.array(by_file.row_ids())
        for name in ("train", "val", "test"):
            assert sorted(ids_column[by_column.indices[name]]) == sorted(ids_file[by_file.indices[name]]), name
        order = [by_file.row_ids().index(i) for i in by_column.row_ids()]
        np.testing.assert_array_equal(by_file.x[order], by_column.x)
        np.testing.assert_array_equal(by_file.y[order], by_column.y)
        for key, value in by_column.preprocessor.state.items():
            np.testing.assert_allclose(by_file.preprocessor.state[key].numpy(), value.numpy(), rtol=1e-12)
    # the same rows in the same order are the same data, whichever way the test rows were given
    ordered = pd.concat([train_part.assign(split="train"), test_part.assign(split="test")])
    ordered.to_csv("ordered.csv", index=False)
    a, b = module(path="ordered.csv", split_column="split"), module(path="train.csv", test_file="test.csv")
    keys = ("data_sha256", "train_sha256", "val_sha256", "test_sha256")
    assert [a.split_identity()[k] for k in keys] == [b.split_identity()[k] for k in keys]
    # without an id column, rows are numbered through path, then test_file
    train_part.drop(columns="name").to_csv("train_no_id.csv", index=False)
    test_part.drop(columns="name").to_csv("test_no_id.csv", index=False)
    numbered = module(path="train_no_id.csv", test_file="test_no_id.csv")
    assert numbered.row_ids() == [str(i) for i in range(60)]
    assert numbered.indices["test"].tolist() == list(range(30, 60))


def run(args: list[str]) -> None:
    main([*args, *QUICK])


def test_fit_trains_on_given_training_rows_and_test_and_predict_score_exactly_the_given_test_rows(tmp_path):
    frame = split_table(48)
    frame.to_csv("s.csv", index=False)
    test = given_test_rows(frame)
    data = ["--config", TABULAR, "--data.init_args.path=s.csv", "--data.init_args.target=species",
            "--data.init_args.split_column=split", "--data.init_args.n_components=null"]  # fmt: skip
    run(["fit", *data, "--trainer.max_epochs=1"])
    folder = Path("lightning_logs/tabular/version_0")
    split = load_checkpoint(folder / "checkpoints" / "best.ckpt")["TabularDataModule"]["split"]
    dm = module(path="s.csv", split_column="split")
    assert split["test_sha256"] == _sha256(test) == split["given_split"]["test_sha256"]
    assert split["train_sha256"] == _sha256(dm.indices["train"]) and split["val_sha256"] == _sha256(dm.indices["val"])
    assert not set(dm.indices["train"].tolist() + dm.indices["val"].tolist()) & set(test.tolist())

    run(["test", *data, "--ckpt_path=best"])
    run(["predict", *data, "--ckpt_path=best"])  # no predict file: the rows that test
    rows = list(csv.reader((folder / "predictions.csv").open()))[1:]
    assert [r[0] for r in rows] == frame["name"].iloc[test].tolist(), "exactly the given test rows, in order"
    scored = json.loads((folder / "test_summary.json").read_text())
    truth = frame["species"].iloc[test].tolist()
    assert scored["test_acc"] == pytest.approx(np.mean([r[1] == t for r, t in zip(rows, truth)]))
    assert scored["provenance"]["data"]["given_split"]["n_test"] == len(test)
    # predicting a file from the checkpoint works as without a given split (the split column is no feature)
    frame.iloc[test].drop(columns="species").to_csv("new.csv", index=False)
    run(["predict", *data, "--ckpt_path=best", "--data.init_args.predict_file=new.csv"])
    assert list(csv.reader((folder / "predictions_1.csv").open()))[1:] == rows


FIT = ["fit", "--config", TABULAR, "--trainer.max_epochs=1", "--data.init_args.n_components=null",
       "--data.init_args.path=s.csv", "--data.init_args.target=species"]  # fmt: skip


def case(name: str, args: list[str], words: list[str], **files):
    """A bad given split: the command, the words its one-line error holds, how to write s.csv and t.csv."""
    return pytest.param(args, words, files, id=name)


def _bad_value(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[[4, 9], "split"] = "validation"  # rows 4 and 9: file lines 6 and 11
    return frame


def _missing_value(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[5, "split"] = np.nan
    return frame


def _no_split(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns="split")


SPLIT = ["--data.init_args.split_column=split"]
TEST_FILE = ["--data.init_args.test_file=t.csv"]
CASES = [
    case("unknown-split-value", [*FIT, *SPLIT], ["s.csv", "line 6", "'split'", "'validation'", "'train' or 'test'"],
         s=_bad_value),
    case("missing-split-value", [*FIT, *SPLIT], ["s.csv", "line 7", "'split'", "missing split value"],
         s=_missing_value),
    case("no-test-rows", [*FIT, *SPLIT], ["s.csv", "no given test rows", "'split' holds no 'test' value"],
         s=lambda f: f.assign(split="train")),
    case("no-test-rows-of-the-kept-classes", [*FIT, *SPLIT, "--data.init_args.classes=[cat,dog]"],
         ["s.csv", "no given test rows", "classes leaves out"],
         s=lambda f: f.assign(species=np.where(f["split"].str.strip().str.lower() == "test", "bird", f["species"]))),
    case("split-column-absent", [*FIT, "--data.init_args.split_column=part"], ["s.csv", "'part'", "split_column"]),
    case("split-column-is-a-feature", [*FIT, *SPLIT, "--data.init_args.features=[weight,split]"],
         ["features", "'split'", "split_column"]),
    case("split-column-is-the-target", [*FIT, "--data.init_args.split_column=species"],
         ["split_column 'species'", "target"]),
    case("both-given", [*FIT, *SPLIT, *TEST_FILE], ["split_column", "test_file", "not both"]),
    case("test-file-with-another-column", [*FIT, *TEST_FILE], ["t.csv", "'colour'", "s.csv", "same columns"],
         s=_no_split, t=lambda f: _no_split(f).assign(colour="black")),
    case("test-file-without-a-column", [*FIT, *TEST_FILE], ["t.csv", "no column 'height'", "s.csv", "same columns"],
         s=_no_split, t=lambda f: _no_split(f).drop(columns="height")),
    case("test-file-is-the-data-file", [*FIT, "--data.init_args.test_file=s.csv"], ["s.csv", "data file itself"],
         s=_no_split),
    case("test-file-missing", [*FIT, "--data.init_args.test_file=absent.csv"], ["absent.csv", "not found"],
         s=_no_split),
    case("test-rows-given-without-a-split", [*FIT, "--data.init_args.test_rows=given"], ["test_rows: given"],
         s=_no_split),
    case("unknown-test-rows", [*FIT, *SPLIT, "--data.init_args.test_rows=all"], ["test_rows", "'all'"]),
]  # fmt: skip


@pytest.mark.parametrize(("args", "words", "files"), CASES)
def test_bad_given_split_is_one_line_exit_2_and_writes_nothing(tmp_path, capfd, args, words, files):
    for name in ("s", "t"):
        edit = files.get(name, lambda frame: frame)
        edit(split_table(24)).to_csv(f"{name}.csv", index=False)
    before = snapshot(tmp_path)
    one_line_error(args, capfd, words)
    assert snapshot(tmp_path) == before
