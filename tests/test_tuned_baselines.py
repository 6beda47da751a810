"""The tuned RBF SVM and gradient boosting baselines: chosen and fit on a fold's training rows only."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from qlit.data import IrisDataModule, KFoldDataModule
from qlit.errors import QlitError
from qlit.evaluation.tuned_baselines import (
    BOOSTING_GRID,
    BOOSTING_LEAVES,
    BOOSTING_MAX_ITER,
    BOOSTING_MODEL,
    SVM_GRID,
    SVM_MODEL,
    gradient_boosting,
    svm_rbf,
)

MODELS = {"svm_rbf": (svm_rbf, SVM_GRID), "gradient_boosting": (gradient_boosting, BOOSTING_GRID)}


class RareClassDataModule(KFoldDataModule):
    """Two noisy Gaussian classes, the second with only ``rare`` rows: a real module for tiny-class splits."""

    def __init__(self, rare: int, **kwargs) -> None:
        self.rare = rare
        self.class_names = ["common", "rare"]
        self.num_classes = 2
        self.num_features = self.raw_features = 2
        super().__init__(**kwargs)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        y = np.r_[np.zeros(30, dtype=np.int64), np.ones(self.rare, dtype=np.int64)]
        return np.random.default_rng(0).normal(size=(len(y), 2)) + y[:, None], y


def iris(**kwargs) -> IrisDataModule:
    data = IrisDataModule(num_folds=3, fold=1, **kwargs)
    data.setup("fit")
    return data


THREE = ["setosa", "versicolor", "virginica"]


@pytest.fixture(scope="module")
def three() -> tuple[IrisDataModule, dict[str, dict]]:
    """Iris with all three species, fold 1 of 3, and each model's result on it with seed 0."""
    data = iris(classes=THREE)
    return data, {name: fit(data) for name, (fit, _) in MODELS.items()}


@pytest.mark.parametrize("name", MODELS)
def test_probabilities_predictions_and_choice_are_well_formed(three, name):
    data, results = three
    result, grid = results[name], MODELS[name][1]
    probs, test_y = result["probabilities"], data.labels("test")
    assert probs.shape == (len(test_y), 3) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)
    assert result["predicted"].dtype == np.int64
    np.testing.assert_array_equal(result["predicted"], probs.argmax(1))
    assert (result["predicted"] == test_y).mean() >= 0.85  # columns out of class order would score far lower
    candidates = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    assert result["chosen"] in candidates
    inner = result["inner_cv"]
    assert inner["scoring"] == "neg_log_loss" and inner["n_splits"] == 3 and inner["seed"] == 0
    assert len(inner["mean_score"]) == len(candidates)
    assert all(isinstance(key, str) and score < 0 for key, score in inner["mean_score"].items())
    assert len(set(inner["mean_score"].values())) > 1  # the candidates differ: the grid can actually choose
    chosen_key = ", ".join(f"{k}={v}" for k, v in result["chosen"].items())
    assert inner["mean_score"][chosen_key] == max(inner["mean_score"].values())


def test_descriptions_name_the_model_and_its_grid():
    assert "SVC(kernel='rbf')" in SVM_MODEL and "sigmoid" in SVM_MODEL and "'scale'" in SVM_MODEL
    assert "HistGradientBoostingClassifier" in BOOSTING_MODEL and "min_samples_leaf" in BOOSTING_MODEL
    assert all("training rows" in text and "inner folds" in text for text in (SVM_MODEL, BOOSTING_MODEL))


def manual_probabilities(name: str, chosen: dict, data: KFoldDataModule, seed: int) -> np.ndarray:
    """The chosen model fit by hand on the fold's training rows, predicting its test rows."""
    if name == "svm_rbf":
        model = CalibratedClassifierCV(
            SVC(kernel="rbf", **chosen),
            method="sigmoid",
            ensemble=False,
            cv=StratifiedKFold(3, shuffle=True, random_state=seed),
        )
    else:
        model = HistGradientBoostingClassifier(
            max_iter=BOOSTING_MAX_ITER, max_leaf_nodes=BOOSTING_LEAVES, early_stopping=False, random_state=seed,
            **chosen,
        )  # fmt: skip
    with threadpool_limits(limits=1):  # OpenMP threads contending for a busy machine's cores crawl
        model.fit(data.features("train").astype(np.float64), data.labels("train"))
        return model.predict_proba(data.features("test").astype(np.float64))


@pytest.mark.parametrize("name", MODELS)
def test_choice_and_model_ignore_validation_and_test_rows(three, name):
    data, results = three
    result = results[name]
    # The same fold with every validation row and half the test rows replaced by far-off noise.
    changed = iris(classes=THREE)
    test = changed.indices["test"]
    moved = np.r_[changed.indices["val"], test[::2]]
    changed.x = changed.x.copy()
    changed.x[moved] = np.random.default_rng(1).normal(scale=10.0, size=(len(moved), changed.x.shape[1]))
    again = MODELS[name][0](changed)
    assert again["chosen"] == result["chosen"] and again["inner_cv"] == result["inner_cv"]
    np.testing.assert_array_equal(again["probabilities"][1::2], result["probabilities"][1::2])
    assert not np.allclose(again["probabilities"][::2], result["probabilities"][::2])  # the test rows did change
    # The model is the chosen one fit on exactly the training rows.
    expected = manual_probabilities(name, result["chosen"], data, seed=0)
    np.testing.assert_allclose(result["probabilities"], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_a_class_without_training_rows_gets_a_zero_column(name):
    data = iris(classes=THREE)
    # The module refuses such a split; its indices are cut here to reach the case.
    data.indices["train"] = data.indices["train"][data.labels("train") != 1]
    result = MODELS[name][0](data)
    assert result["probabilities"].shape == (len(data.labels("test")), 3)
    assert np.all(result["probabilities"][:, 1] == 0) and not np.any(result["predicted"] == 1)
    np.testing.assert_allclose(result["probabilities"].sum(1), 1.0, atol=1e-12)
    assert (result["predicted"] == data.labels("test"))[data.labels("test") != 1].mean() >= 0.9


def rare(rows: int, val_fraction: float) -> RareClassDataModule:
    data = RareClassDataModule(rows, num_folds=3, fold=0, val_fraction=val_fraction)
    data.setup("fit")
    return data


@pytest.mark.parametrize("name", MODELS)
def test_binary_same_seed_same_result_and_the_seed_is_used(name):
    fit, data = MODELS[name][0], rare(12, 0.2)
    first, again, other = fit(data, seed=0), fit(data, seed=0), fit(data, seed=1)
    assert first["probabilities"].shape == (len(data.labels("test")), 2)
    np.testing.assert_allclose(first["probabilities"].sum(1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(again["probabilities"], first["probabilities"])
    assert again["chosen"] == first["chosen"] and again["inner_cv"] == first["inner_cv"]
    assert other["inner_cv"]["seed"] == 1 and other["inner_cv"]["mean_score"] != first["inner_cv"]["mean_score"]


def test_a_small_class_means_fewer_inner_folds_or_a_one_line_refusal():
    two = rare(3, 0.1)  # 2 training rows of "rare"
    assert np.bincount(two.labels("train"))[1] == 2
    assert gradient_boosting(two)["inner_cv"]["n_splits"] == 2
    with pytest.raises(QlitError, match=r"svm_rbf: class 'rare' has only 2 training rows in fold 0") as error:
        svm_rbf(two)
    assert "\n" not in str(error.value) and "--tuned_baselines false" in str(error.value)
    three = rare(5, 0.1)  # 3 training rows: the SVM's least, its 3 inner folds each calibrate on 2
    assert np.bincount(three.labels("train"))[1] == 3
    result = svm_rbf(three)
    assert result["inner_cv"]["n_splits"] == 3 and result["probabilities"].shape == (len(three.labels("test")), 2)
    one = rare(3, 0.5)  # 1 training row: not even 2 inner folds
    assert np.bincount(one.labels("train"))[1] == 1
    with pytest.raises(QlitError, match=r"gradient_boosting: class 'rare' has only 1 training row in fold 0"):
        gradient_boosting(one)
