"""The classical references beside every hybrid result, fit on a fold's own preprocessed training rows."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, log_loss

from qlit.evaluation.stats import METRIC

BASELINES = {
    "classical_twin": "classical twin",
    "logistic_regression": "logistic regression",
    "majority_class": "majority class",
}
TWIN_MODEL = "HybridClassifier(core='classical'): Linear(n_qubits, n_qubits) + tanh instead of the circuit"
LOGISTIC_MODEL = "sklearn LogisticRegression(max_iter=5000), fit on the fold's preprocessed training rows"
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
LOGISTIC_INNER_C_MODEL = (
    "sklearn LogisticRegression(max_iter=5000), C of " + ", ".join(map(str, C_GRID)) + " chosen by mean log loss on "
    "the inner folds the hybrid's search used, then fit on the outer fold's preprocessed training rows"
)
MAJORITY_MODEL = "always the most frequent class of the fold's training rows (the base rate to beat)"


def logistic_regression(data, C: float = 1.0) -> dict[str, Any]:
    """Fit scikit-learn's logistic regression on the fold's preprocessed training rows; test it.

    Args:
        data: A set-up data module; its ``features``/``labels`` are what the hybrid saw.
        C: Inverse regularisation strength (scikit-learn's default 1 in ``qlit cv``).
    """
    train_x, train_y = data.features("train"), data.labels("train")
    test_x, test_y = data.features("test"), data.labels("test")
    lr = LogisticRegression(C=C, max_iter=5000).fit(train_x, train_y)
    probs = lr.predict_proba(test_x)
    predicted = lr.classes_[probs.argmax(1)]
    return {
        METRIC: float((predicted == test_y).mean()),
        "test_loss": float(log_loss(test_y, probs, labels=list(lr.classes_))),
        "n_test": len(test_y),
        "confusion_matrix": confusion_matrix(test_y, predicted, labels=list(range(data.num_classes))).tolist(),
    }


def logistic_regression_inner_c(outer, inner: list, grid: tuple[float, ...] = C_GRID) -> dict[str, Any]:
    """Logistic regression with the tuned hybrid's budget: C chosen on the same inner folds, then tested once.

    Args:
        outer: The outer fold's set-up data module (training rows to fit, test rows to score).
        inner: Set-up data modules of that fold's inner folds (``inner_folds``/``inner_fold``), as the search used.
        grid: The values of C tried; the first of equally good ones wins.

    Returns:
        What `logistic_regression` returns, plus ``C`` and each C's ``inner_val_log_loss``.
    """
    losses = {}
    for c in grid:
        scores = []
        for data in inner:
            lr = LogisticRegression(C=c, max_iter=5000).fit(data.features("train"), data.labels("train"))
            probs = lr.predict_proba(data.features("val"))
            scores.append(log_loss(data.labels("val"), probs, labels=list(lr.classes_)))
        losses[c] = float(np.mean(scores))
    best = min(grid, key=lambda c: losses[c])
    return {
        **logistic_regression(outer, C=best),
        "C": best,
        "inner_val_log_loss": {str(c): v for c, v in losses.items()},
    }


def majority_class(data) -> dict[str, Any]:
    """The constant classifier: the training rows' most frequent class, scored on the test fold."""
    train, test = data.labels("train"), data.labels("test")
    constant = int(np.bincount(train, minlength=data.num_classes).argmax())
    test_counts = np.bincount(test, minlength=data.num_classes)
    predicted = np.full(len(test), constant)
    return {
        METRIC: float((test == constant).mean()),
        "predicted_class": data.class_names[constant],
        "n_test": len(test),
        "test_base_rate": float(test_counts.max() / len(test)),
        "test_class_shares": {name: float(c / len(test)) for name, c in zip(data.class_names, test_counts)},
        "confusion_matrix": confusion_matrix(test, predicted, labels=list(range(data.num_classes))).tolist(),
    }
