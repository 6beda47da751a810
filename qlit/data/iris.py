"""Fisher's Iris, bundled with scikit-learn."""

from __future__ import annotations

from typing import Any

import numpy as np

from qlit.data.base import KFoldDataModule
from qlit.data.shared import remembered
from qlit.errors import QlitError

SPECIES: tuple[str, ...] = ("setosa", "versicolor", "virginica")


class IrisDataModule(KFoldDataModule):
    """Iris flowers from their four measurements, standardised.

    Args:
        classes: Two species for a binary task (default setosa vs versicolor) or all three.
        **kwargs: Split, batch and predict options of `KFoldDataModule`.
    """

    def __init__(self, classes: list[str] = ["setosa", "versicolor"], **kwargs) -> None:  # noqa: B006
        classes = list(classes)
        unknown = [name for name in classes if name not in SPECIES]
        if unknown:
            raise QlitError(f"unknown Iris class {unknown[0]!r}; choose from {', '.join(SPECIES)}")
        if len(set(classes)) != len(classes) or len(classes) < 2:
            raise QlitError(f"classes must name two or three different species, got {classes}")
        self.class_names = classes
        self.num_classes = len(classes)
        self.num_features = self.raw_features = 4
        super().__init__(**kwargs)

    def describe_source(self) -> dict[str, Any]:
        return {"data": "scikit-learn Iris", "classes": list(self.class_names)}

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_iris

        iris = remembered(("sklearn", "iris"), load_iris)
        species = [SPECIES.index(name) for name in self.class_names]
        keep = np.isin(iris.target, species)
        relabel = {s: i for i, s in enumerate(species)}
        return iris.data[keep], np.array([relabel[t] for t in iris.target[keep]])
