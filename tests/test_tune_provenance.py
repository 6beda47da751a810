"""What ``qlit tune`` hands on: configs that say where they were tuned, and comparisons on equal terms.

In-process and without Ray: the checks behind tuned configs (the split guard, ``qlit cv``'s refusal), the
search-space allow-list, the inner-fold choice of the logistic regression's C and the one-fold statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from jsonargparse import Namespace
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from qlit.cli import main
from qlit.data import IrisDataModule
from qlit.errors import QlitError
from qlit.evaluation.baselines import C_GRID, logistic_regression_inner_c
from qlit.evaluation.cv import data_module, with_test_rows
from qlit.evaluation.report import tune_table
from qlit.evaluation.space import read_space
from qlit.evaluation.stats import interval, paired, with_stats
from qlit.evaluation.tune import _at_fold, tuned_on_record
from qlit.io.preflight import check_split
from tests.conftest import CONFIGS, QUICK, one_line_error
from tests.data.test_given_split import given_test_rows, split_table

IRIS = str(CONFIGS / "iris.yaml")


def searched(fold: int, num_folds: int = 2) -> dict:
    """``data.tuned_on`` as qlit tune writes it for a search in outer ``fold``: its non-test rows."""
    data = IrisDataModule(num_folds=num_folds, fold=fold)
    data.setup("fit")
    rows = sorted(int(r) for r in np.concatenate([data.indices["train"], data.indices["val"]]))
    return {"data_sha256": data.data_sha256(), "outer_fold": fold, "rows": rows}


def tuned_config(tmp_path: Path, tuned_on: dict, fold: int) -> str:
    config = yaml.safe_load(Path(IRIS).read_text())
    config["data"]["init_args"].update(num_folds=2, fold=fold, tuned_on=tuned_on)
    path = tmp_path / f"best_config_fold_{fold}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def checkpoint_of(data: IrisDataModule) -> dict:
    return {"IrisDataModule": data.state_dict()}


@pytest.mark.parametrize("tuned_fold", [0, None])
def test_the_split_guard_refuses_test_rows_a_search_saw(tuned_fold):
    tuned_on = searched(0) if tuned_fold == 0 else {**searched(0), "outer_fold": None, "rows": "all"}
    other = IrisDataModule(num_folds=2, fold=1, tuned_on=tuned_on)  # fold 1's test rows: fold 0's searched rows
    other.setup("fit")
    assert other.split_identity()["tuned_on"] == tuned_on
    with pytest.raises(QlitError, match="chosen by a qlit tune search") as err:
        check_split(checkpoint_of(other), Path("best.ckpt"), other, "test")
    assert "\n" not in str(err.value) and "50 of the 50 rows" in str(err.value)
    # a checkpoint that recorded the search is refused under a config that does not name it
    plain = IrisDataModule(num_folds=2, fold=1)
    plain.setup("fit")
    with pytest.raises(QlitError, match="chosen by a qlit tune search"):
        check_split(checkpoint_of(other), Path("best.ckpt"), plain, "predict")
    own = IrisDataModule(num_folds=2, fold=0, tuned_on=tuned_on)
    own.setup("fit")
    if tuned_fold == 0:  # the fold it was tuned for: its test rows were never searched
        check_split(checkpoint_of(own), Path("best.ckpt"), own, "test")
    else:  # searched on all rows: no fold of these data tests it
        with pytest.raises(QlitError, match="all rows of these data"):
            check_split(checkpoint_of(own), Path("best.ckpt"), own, "test")


def test_tuned_config_on_another_fold_is_refused_by_qlit_test(tmp_path: Path, capfd):
    config = tuned_config(tmp_path, searched(0), fold=1)
    main(["fit", "--config", config, "--trainer.max_epochs=1", *QUICK])
    one_line_error(["test", "--config", config, "--ckpt_path", "best"], capfd, ("outer fold 0", "fold 1", "optimistic"))


def test_cv_of_a_config_tuned_on_the_same_data_is_one_line(tmp_path: Path, capfd):
    config = tuned_config(tmp_path, searched(0), fold=0)
    one_line_error(["cv", "--config", config], capfd, ("qlit cv", "qlit tune", "tune_summary"))
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize(
    "key", ["data.threshold", "data.horizon", "data.data_seed", "data.path", "data.test_size", "data.gap",
            "data.val_fraction", "data.fold", "model.num_classes", "trainer.precision", "trainer.logger"],
)
def test_the_space_allows_only_keys_that_keep_the_task(tmp_path: Path, key):
    config = Namespace(
        data=Namespace(class_path="qlit.data.TabularDataModule", init_args=Namespace(
            threshold=0.0, horizon=1, data_seed=0, path="x.csv", test_size=0.2, gap=0, val_fraction=0.2, fold=0,
            batch_size=16, n_components=None)),
        model=Namespace(lr=0.01, n_layers=2, num_classes=2),
        trainer=Namespace(max_epochs=5, precision="32", logger=None, gradient_clip_val=None),
    )
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({key: {"choice": [1, 2]}}))
    with pytest.raises(QlitError, match="cannot be tuned") as err:
        read_space(path, config)
    assert key in str(err.value) and "\n" not in str(err.value)
    allowed = {"model.lr": {"loguniform": [0.01, 0.1]}, "data.batch_size": {"choice": [8, 16]},
               "data.n_components": {"choice": [2, 3]}, "trainer.max_epochs": {"choice": [2, 3]},
               "trainer.gradient_clip_val": {"choice": [0.5, 1.0]}}
    path.write_text(yaml.safe_dump(allowed))
    assert set(read_space(path, config)) == set(allowed)


def test_logistic_regression_chooses_c_on_the_inner_folds():
    outer = IrisDataModule(num_folds=2, fold=1, classes=["versicolor", "virginica"])
    outer.setup("fit")
    inner = []
    for j in range(2):
        data = IrisDataModule(num_folds=2, fold=1, classes=["versicolor", "virginica"], inner_folds=2, inner_fold=j)
        data.setup("fit")
        inner.append(data)
    result = logistic_regression_inner_c(outer, inner)
    losses = {}
    for c in C_GRID:
        fits = [LogisticRegression(C=c, max_iter=5000).fit(d.features("train"), d.labels("train")) for d in inner]
        losses[c] = np.mean([log_loss(d.labels("val"), f.predict_proba(d.features("val"))) for d, f in zip(inner, fits)])
    assert result["C"] == min(C_GRID, key=losses.get)
    assert result["inner_val_log_loss"] == pytest.approx({str(c): v for c, v in losses.items()})
    chosen = LogisticRegression(C=result["C"], max_iter=5000).fit(outer.features("train"), outer.labels("train"))
    assert result["test_acc"] == pytest.approx((chosen.predict(outer.features("test")) == outer.labels("test")).mean())
    assert not set(np.concatenate([d.indices["val"] for d in inner])) & set(outer.indices["test"])


def test_one_outer_fold_has_no_spread_and_no_interval():
    assert interval([0.8]) == {"mean": 0.8, "std": None, "ci95": None}
    assert paired([{"test_acc": 0.8}], [{"test_acc": 0.5}])["ci95"] is None
    record = {"fold": 0, "test_acc": 0.8, "n_test": 20}
    models = {m: with_stats([record]) for m in ("tuned", "untuned", "logistic_regression", "majority_class")}
    summary = {"experiment": "x", "nested": False, "num_samples": 1, "inner_folds": 2, "best_config_note": "note",
               "outer_folds": [{"fold": 0, "n_test": 20, "best_config": {"model.lr": 0.1}, "trials": []}], **models}
    assert json.loads(json.dumps(models["tuned"]))["test_acc_std"] is None
    table = tune_table(summary)
    assert "**0.800 ± n/a**" in table and "| 95% CI of the mean | | | n/a |" in table


def test_a_search_over_a_given_split_records_only_the_training_rows(tmp_path: Path, monkeypatch):
    """With given test rows, tune's folds are cut from the training rows and its record names exactly those."""
    monkeypatch.chdir(tmp_path)
    frame = split_table(80)
    frame.to_csv("s.csv", index=False)
    test = set(given_test_rows(frame).tolist())
    init = {"class_path": "qlit.data.TabularDataModule",
            "init_args": {"path": "s.csv", "target": "species", "split_column": "split", "num_folds": 2}}
    config = Namespace(data=Namespace(class_path=init["class_path"], init_args=Namespace(**init["init_args"])))
    assert tuned_on_record(config, None)["rows"] == sorted(set(range(80)) - test)  # all given training rows
    folded = with_test_rows(config, "fold")
    for k in range(2):
        rows = set(tuned_on_record(folded, k)["rows"])
        assert rows and not rows & test, "an outer fold's search saw a given test row"
        module = data_module(_at_fold(folded, k, inner_folds=2, inner_fold=1))
        assert not set(np.concatenate([module.indices[s] for s in ("train", "val", "test")])) & test
