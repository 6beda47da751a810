"""One prediction pass of one model over one split, and every number reported from it.

Under shots each forward pass is a new random draw, so an accuracy and a confusion matrix computed from two passes
of the same model over the same rows can disagree. Every score qlit reports outside Lightning's own loop (the cv
folds' tables and figures, the INT8 check, the robustness grid) is computed from one `Predictions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Predictions:
    """The predicted classes and class probabilities of one pass, beside the true labels when the rows have them.

    Attributes:
        predicted: Class index of each row, by the model's rule (`HybridClassifier.predicted_classes`).
        labels: True class of each row, or ``None`` for new samples.
        num_classes: How many classes the model tells apart.
        probabilities: ``(rows, num_classes)`` class probabilities of the same pass, float64.
    """

    predicted: np.ndarray
    labels: np.ndarray | None
    num_classes: int
    probabilities: np.ndarray | None = None

    @classmethod
    def from_logits(cls, model: Any, logits: torch.Tensor, labels: Any = None) -> Predictions:
        """Predictions from logits a caller collected (a Lightning test pass), by ``model``'s rule."""
        predicted = model.predicted_classes(logits).cpu().numpy()
        probabilities = model.class_probabilities(logits.detach()).cpu().double().numpy()
        if labels is not None:
            labels = np.asarray(labels)
            if len(labels) != len(predicted):
                raise ValueError(f"{len(predicted)} predictions for {len(labels)} labelled rows")
        return cls(predicted, labels, int(model.hparams.num_classes), probabilities)

    def accuracy(self) -> float:
        """The fraction of rows predicted right, an exact ratio (``nan`` without rows)."""
        if len(self.predicted) == 0:
            return float("nan")
        return float(np.mean(self.predicted == self._labels()))

    def confusion_matrix(self) -> np.ndarray:
        """Counts of (true class, predicted class), true classes as rows."""
        matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        np.add.at(matrix, (self._labels(), self.predicted), 1)
        return matrix

    def _labels(self) -> np.ndarray:
        if self.labels is None:
            raise ValueError("these rows have no labels to score against")
        return self.labels


@torch.inference_mode()
def predict(model: Any, loader: Any) -> Predictions:
    """One pass of ``model`` (in eval mode) over a loader of ``(features, labels)`` batches.

    Runs in this process only: the INT8 check calls it on global rank 0 alone, so nothing here may wait for
    other DDP processes.
    """
    model.eval()
    logits, labels = [], []
    for batch in loader:
        logits.append(model(batch[0].float()))
        labels.append(batch[1])
    if not logits:
        num_classes = int(model.hparams.num_classes)
        return Predictions(
            np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), num_classes, np.zeros((0, num_classes))
        )
    return Predictions.from_logits(model, torch.cat(logits), torch.cat(labels).numpy())
