"""Baselines that are hard to beat: an RBF support-vector machine and gradient-boosted trees, tuned per fold.

Each is tuned and fit on the fold's preprocessed training rows only, the rows logistic regression fits on:
never the validation rows (the hybrid's checkpoint selection) nor the test rows. Hyperparameters are chosen
by mean log loss over stratified inner folds of those rows (the first of equally good candidates wins), the
winner is refit on all of them and scored once on the test rows.

Everything runs on one thread (``n_jobs`` of one, BLAS and OpenMP limited to one): folds may run side by side
in Ray workers of one CPU each, and gradient boosting's OpenMP sums give another result with another count.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from qlit.errors import QlitError

INNER_FOLDS = 3
CALIBRATION_FOLDS = 3
SCORING = "neg_log_loss"
SVM_GRID: dict[str, tuple[Any, ...]] = {"C": (0.1, 1.0, 10.0), "gamma": ("scale", 0.1, 1.0)}
# min_samples_leaf is tuned because scikit-learn's 20 cannot split the inner folds of a small fold (Iris's ~35
# rows) at all: every candidate would be the constant prior while the refit on all training rows is not.
BOOSTING_GRID: dict[str, tuple[Any, ...]] = {"learning_rate": (0.05, 0.1), "min_samples_leaf": (5, 20)}
BOOSTING_MAX_ITER = 100
BOOSTING_LEAVES = 15


def _grid_words(grid: dict[str, tuple[Any, ...]]) -> str:
    return " and ".join(f"{name} of {', '.join(map(repr, values))}" for name, values in grid.items())


_CHOSEN_BY = (
    f"chosen by mean log loss on {INNER_FOLDS} stratified inner folds of the fold's preprocessed training rows "
    "(fewer where a class has fewer rows), then refit on all of them"
)
SVM_MODEL = (
    "sklearn SVC(kernel='rbf') with Platt-scaled probabilities (CalibratedClassifierCV(method='sigmoid', "
    f"ensemble=False) on {CALIBRATION_FOLDS} stratified folds), {_grid_words(SVM_GRID)} {_CHOSEN_BY}"
)
BOOSTING_MODEL = (
    "sklearn HistGradientBoostingClassifier("
    f"max_iter={BOOSTING_MAX_ITER}, max_leaf_nodes={BOOSTING_LEAVES}, early_stopping=False), "
    f"{_grid_words(BOOSTING_GRID)} {_CHOSEN_BY}"
)


def svm_rbf(data, seed: int = 0) -> dict[str, Any]:
    """An RBF support-vector machine, C and gamma chosen on the fold's training rows; tested once.

    Probabilities are Platt's: a sigmoid of the SVM's decision values, fit by `CalibratedClassifierCV`
    (``ensemble=False``) on decision values predicted out of fold (stratified folds shuffled with ``seed``), then
    one SVM fit on all rows. (scikit-learn 1.9 deprecates ``SVC(probability=True)`` for exactly this.) Because
    those calibration folds split every inner training part again, each class needs 3 training rows.

    Args:
        data: A set-up data module; its ``features``/``labels`` are what the hybrid saw.
        seed: Seed of the inner folds and the calibration folds.

    Returns:
        ``probabilities`` (test rows × ``data.num_classes``), ``predicted`` (their argmax), ``chosen`` (C, gamma)
        and ``inner_cv`` (scoring, number of inner folds, seed, each candidate's mean inner score).

    Raises:
        QlitError: a class has fewer than 3 training rows in this fold.
    """
    return _tuned(data, "svm_rbf", _svm, SVM_GRID, seed, min_rows=3)


def gradient_boosting(data, seed: int = 0) -> dict[str, Any]:
    """Histogram gradient boosting, learning rate and least leaf size chosen on the fold's training rows; tested once.

    A fixed number of boosting rounds without early stopping, so no rows are set aside inside a fit.

    Args:
        data: A set-up data module; its ``features``/``labels`` are what the hybrid saw.
        seed: Seed of the inner folds and the model's ``random_state``.

    Returns:
        What `svm_rbf` returns; ``chosen`` holds learning_rate and min_samples_leaf.

    Raises:
        QlitError: a class has fewer than 2 training rows in this fold.
    """
    return _tuned(data, "gradient_boosting", _boosting, BOOSTING_GRID, seed, min_rows=2)


def _svm(params: dict[str, Any], y: np.ndarray, seed: int) -> ClassifierMixin:
    folds = min(CALIBRATION_FOLDS, int(np.bincount(y)[np.unique(y)].min()))
    return CalibratedClassifierCV(
        SVC(kernel="rbf", **params),
        method="sigmoid",
        ensemble=False,
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        n_jobs=1,
    )


def _boosting(params: dict[str, Any], y: np.ndarray, seed: int) -> ClassifierMixin:
    return HistGradientBoostingClassifier(
        max_iter=BOOSTING_MAX_ITER, max_leaf_nodes=BOOSTING_LEAVES, early_stopping=False, random_state=seed, **params
    )


def _tuned(
    data,
    name: str,
    make: Callable[[dict[str, Any], np.ndarray, int], ClassifierMixin],
    grid: dict[str, tuple[Any, ...]],
    seed: int,
    min_rows: int,
) -> dict[str, Any]:
    """Choose ``make``'s parameters on inner folds of the training rows, refit on all of them, predict the test rows."""
    train_x = np.asarray(data.features("train"), dtype=np.float64)
    train_y = np.asarray(data.labels("train"), dtype=np.int64)
    test_x = np.asarray(data.features("test"), dtype=np.float64)
    n_splits = _inner_folds(data, train_y, name, min_rows)
    folds = list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(train_x, train_y))
    candidates = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    scores: dict[str, float] = {}
    with threadpool_limits(limits=1):
        for params in candidates:
            losses = []
            for fit_rows, score_rows in folds:
                model = make(params, train_y[fit_rows], seed).fit(train_x[fit_rows], train_y[fit_rows])
                probs = model.predict_proba(train_x[score_rows])
                losses.append(log_loss(train_y[score_rows], probs, labels=model.classes_))
            scores[_key(params)] = -float(np.mean(losses))
        best = max(candidates, key=lambda params: scores[_key(params)])  # max keeps the first of ties
        model = make(best, train_y, seed).fit(train_x, train_y)
        fitted = model.predict_proba(test_x)
    probabilities = np.zeros((len(test_x), data.num_classes), dtype=np.float64)
    probabilities[:, model.classes_] = fitted  # a class with no training rows keeps probability 0
    return {
        "probabilities": probabilities,
        "predicted": probabilities.argmax(1).astype(np.int64),
        "chosen": dict(best),
        "inner_cv": {"scoring": SCORING, "n_splits": n_splits, "seed": seed, "mean_score": scores},
    }


def _inner_folds(data, y: np.ndarray, name: str, min_rows: int) -> int:
    """`INNER_FOLDS`, fewer when the smallest class has fewer training rows; refuse one too small for the model."""
    present = np.unique(y)
    if len(present) < 2:
        raise QlitError(f"{name}: the training rows of fold {data.fold} hold a single class; nothing to tune on")
    counts = np.bincount(y)[present]
    smallest = int(counts.min())
    if smallest < min_rows:
        label = data.class_names[int(present[counts.argmin()])]
        why = "2 inner folds" if min_rows == 2 else "2 inner folds, each split again for the Platt calibration,"
        raise QlitError(
            f"{name}: class {label!r} has only {smallest} training row{'s' * (smallest != 1)} in fold {data.fold}; "
            f"{why} need at least {min_rows} (qlit cv --tuned_baselines false leaves this baseline out)"
        )
    return min(INNER_FOLDS, smallest)


def _key(params: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in params.items())
