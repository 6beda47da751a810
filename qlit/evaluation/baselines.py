"""The classical references beside every hybrid result, fit on a fold's own preprocessed training rows."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from qlit.engine.predictions import Predictions
from qlit.evaluation.metrics import scores

BASELINES = {
    "classical_twin": "classical twin",
    "logistic_regression": "logistic regression",
    "svm_rbf": "RBF SVM",
    "gradient_boosting": "gradient boosting",
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


def scored(data, fitted: dict[str, Any]) -> dict[str, Any]:
    """A baseline's test record: every score of its ``probabilities`` and ``predicted`` on the fold's test rows.

    Args:
        data: The set-up data module the baseline was fit on.
        fitted: What a baseline function returned: ``probabilities`` ``(n_test, num_classes)``, ``predicted`` and
            anything it chose (``C``, ...).

    Returns:
        The scores, ``n_test``, the confusion matrix and ``fitted``'s other keys; the arrays stay under
        ``probabilities`` and ``predicted`` (the out-of-fold table takes them; `without_arrays` drops them).
    """
    test_y = data.labels("test")
    predicted = np.asarray(fitted["predicted"], dtype=np.int64)
    predictions = Predictions(predicted, test_y, data.num_classes, np.asarray(fitted["probabilities"]))
    return {
        **scores(test_y, predictions.probabilities, predicted),
        **fitted,
        "n_test": len(test_y),
        "confusion_matrix": predictions.confusion_matrix().tolist(),
    }


def without_arrays(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without its per-row ``probabilities`` and ``predicted`` (for JSON summaries)."""
    return {k: v for k, v in record.items() if k not in ("probabilities", "predicted")}


def class_columns(estimator: Any, probabilities: np.ndarray, num_classes: int) -> np.ndarray:
    """scikit-learn's ``predict_proba`` columns (``estimator.classes_``) placed at class indices 0..num_classes-1."""
    full = np.zeros((len(probabilities), num_classes))
    full[:, np.asarray(estimator.classes_, dtype=np.int64)] = probabilities
    return full


def logistic_regression(data, C: float = 1.0) -> dict[str, Any]:
    """Fit scikit-learn's logistic regression on the fold's preprocessed training rows; test it.

    Args:
        data: A set-up data module; its ``features``/``labels`` are what the hybrid saw.
        C: Inverse regularisation strength (scikit-learn's default 1 in ``qlit cv``).
    """
    lr = LogisticRegression(C=C, max_iter=5000).fit(data.features("train"), data.labels("train"))
    probabilities = class_columns(lr, lr.predict_proba(data.features("test")), data.num_classes)
    record = scored(data, {"probabilities": probabilities, "predicted": probabilities.argmax(1)})
    record["test_loss"] = record["test_log_loss"]
    return record


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
        fold_losses = []
        for data in inner:
            lr = LogisticRegression(C=c, max_iter=5000).fit(data.features("train"), data.labels("train"))
            probs = lr.predict_proba(data.features("val"))
            fold_losses.append(log_loss(data.labels("val"), probs, labels=list(lr.classes_)))
        losses[c] = float(np.mean(fold_losses))
    best = min(grid, key=lambda c: losses[c])
    return {
        **without_arrays(logistic_regression(outer, C=best)),
        "C": best,
        "inner_val_log_loss": {str(c): v for c, v in losses.items()},
    }


def majority_class(data) -> dict[str, Any]:
    """The constant classifier: the training rows' most frequent class, scored on the test fold.

    Its class probabilities are the training rows' class shares (the prior), so its log-loss, Brier score and
    AUROC (0.5) are the ones a model that ignores the features gets.
    """
    train, test = data.labels("train"), data.labels("test")
    train_counts = np.bincount(train, minlength=data.num_classes)
    constant = int(train_counts.argmax())
    test_counts = np.bincount(test, minlength=data.num_classes)
    prior = np.tile(train_counts / train_counts.sum(), (len(test), 1))
    return {
        **scored(data, {"probabilities": prior, "predicted": np.full(len(test), constant)}),
        "predicted_class": data.class_names[constant],
        "test_base_rate": float(test_counts.max() / len(test)),
        "test_class_shares": {name: float(c / len(test)) for name, c in zip(data.class_names, test_counts)},
    }
