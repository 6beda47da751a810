"""Every score of a classifier's predictions on held-out rows, computed one way for every model.

A model's held-out predictions are its class probabilities (one column per class) and its predicted classes (by its
own rule: the hybrid's is sigmoid > 0.5 for two classes, so it is passed in, not re-derived). The same function
scores a fold, a whole out-of-fold set and every baseline, so no model is scored by a different recipe.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import stats

from qlit.evaluation.stats import METRIC

SCORES = {
    METRIC: "accuracy",
    "test_balanced_acc": "balanced accuracy (mean recall over the classes present)",
    "test_macro_f1": "macro-averaged F1 over all classes (0 for a class never predicted)",
    "test_auroc": "area under the ROC curve (binary; macro one-vs-rest for more classes)",
    "test_log_loss": "log-loss (cross-entropy) of the class probabilities, natural log",
    "test_brier": (
        "Brier score: mean squared error of the probability of class 1 (binary), or of the probability "
        "vector against the one-hot label summed over classes (more classes)"
    ),
}
LOWER_IS_BETTER = {"test_log_loss", "test_brier"}
SHORT = {
    METRIC: "accuracy",
    "test_balanced_acc": "balanced acc",
    "test_macro_f1": "macro-F1",
    "test_auroc": "AUROC",
    "test_log_loss": "log-loss",
    "test_brier": "Brier",
}


def scores(labels: Any, probabilities: Any, predicted: Any = None) -> dict[str, float | None]:
    """All of `SCORES` for one set of predictions.

    Args:
        labels: True class index of each row.
        probabilities: ``(rows, classes)`` class probabilities; column c is class c.
        predicted: Predicted class of each row; default the most probable class.

    Returns:
        Each score by its key; ``None`` where it is undefined (no rows, or AUROC with a class absent from ``labels``).
    """
    from sklearn.metrics import balanced_accuracy_score, f1_score, log_loss, roc_auc_score

    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = probabilities.argmax(1) if predicted is None else np.asarray(predicted, dtype=np.int64)
    num_classes = probabilities.shape[1]
    if len(labels) == 0:
        return dict.fromkeys(SCORES)
    classes = list(range(num_classes))
    onehot = np.eye(num_classes)[labels]
    with warnings.catch_warnings():  # a fold may lack a class; the scores below say what they then mean
        warnings.simplefilter("ignore")
        result: dict[str, float | None] = {
            METRIC: float(np.mean(predicted == labels)),
            "test_balanced_acc": float(balanced_accuracy_score(labels, predicted)),
            "test_macro_f1": float(f1_score(labels, predicted, labels=classes, average="macro", zero_division=0)),
            "test_auroc": None,
            "test_log_loss": float(log_loss(labels, np.clip(probabilities, 1e-15, 1), labels=classes)),
        }
        if len(np.unique(labels)) == num_classes:
            if num_classes == 2:
                result["test_auroc"] = float(roc_auc_score(labels, probabilities[:, 1]))
            else:
                result["test_auroc"] = float(
                    roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=classes)
                )
    if num_classes == 2:
        result["test_brier"] = float(np.mean((probabilities[:, 1] - labels) ** 2))
    else:
        result["test_brier"] = float(np.mean(np.sum((probabilities - onehot) ** 2, axis=1)))
    return result


def mcnemar(labels: Any, first: Any, second: Any) -> dict[str, Any]:
    """McNemar's exact test of two models' predicted classes on the same rows.

    Only the discordant rows count: ``first_only`` (first right, second wrong) and ``second_only``; under the null
    hypothesis of equal accuracy each discordant row is a fair coin, so the two-sided p-value is the binomial one.

    Returns:
        ``first_only``, ``second_only``, ``n`` (rows compared) and ``p_value`` (1.0 when no row is discordant).
    """
    labels = np.asarray(labels)
    right_first = np.asarray(first) == labels
    right_second = np.asarray(second) == labels
    b = int(np.sum(right_first & ~right_second))
    c = int(np.sum(~right_first & right_second))
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return {"first_only": b, "second_only": c, "n": int(len(labels)), "p_value": p}
