"""Stratified k-fold data modules: the held-out fold tests, the rest trains and validates."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch.utils.data import TensorDataset

from qlit.data.preprocessing import Preprocessor
from qlit.data.sampling import EpochShuffleSampler, ResumableDataLoader, TensorLoader
from qlit.errors import QlitError


def read_samples_csv(path: str | Path, n_features: int) -> tuple[list[str], np.ndarray]:
    """Read new samples: a header row, one row per sample, an optional ``id`` column.

    Args:
        path: CSV file.
        n_features: Number of feature columns expected (the ``id`` column not counted).

    Returns:
        ``(ids, features)``; ids default to the row numbers ``"0"``, ``"1"``, ….

    Raises:
        QlitError: the file is missing or empty, has the wrong number of columns, or holds a
            non-numeric, NaN or infinite value. The message names the file (and row and column).
    """
    path = Path(path)
    if not path.is_file():
        raise QlitError(f"predict file not found: {path}")
    try:
        # utf-8-sig: spreadsheet programs often start a CSV with a byte-order mark, which would hide an `id` header.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as err:
        raise QlitError(f"{path}: not a readable UTF-8 CSV file ({err})") from None
    rows = [row for row in rows if row]
    if len(rows) < 2:
        raise QlitError(f"{path}: no samples (expected a header row and at least one data row)")
    header, body = [name.strip() for name in rows[0]], rows[1:]
    id_col = header.index("id") if "id" in header else None
    n_columns = n_features + (id_col is not None)
    if len(header) != n_columns:
        raise QlitError(f"{path}: {len(header) - (id_col is not None)} feature columns, the model expects {n_features}")
    ids, features = [], np.empty((len(body), n_features))
    for r, row in enumerate(body):
        line = r + 2
        if len(row) != n_columns:
            raise QlitError(f"{path}: line {line} has {len(row)} columns, the header has {n_columns}")
        ids.append(row[id_col].strip() if id_col is not None else str(r))
        values = [v for c, v in enumerate(row) if c != id_col]
        names = [h for c, h in enumerate(header) if c != id_col]
        for c, value in enumerate(values):
            try:
                number = float(value)
            except ValueError:
                raise QlitError(f"{path}: line {line}, column {names[c]!r}: {value!r} is not a number") from None
            if not math.isfinite(number):
                raise QlitError(f"{path}: line {line}, column {names[c]!r}: {value!r} is not a finite number")
            features[r, c] = number
    return ids, features


class KFoldDataModule(L.LightningDataModule):
    """Base class: stratified k-fold split, a stratified validation split and fitted preprocessing.

    Subclasses set ``num_features``, ``num_classes``, ``class_names`` and ``raw_features`` in
    ``__init__`` (so the CLI can link them into the model before any data is read) and implement
    `load` and `make_preprocessor`.

    Fold ``fold`` of ``num_folds`` is the test set. A ``val_fraction`` of the other folds, stratified,
    validates (checkpoint selection and the learning-rate schedule); the rest trains. Preprocessing
    is fit on the training rows only and applied to every split; its fitted state is saved in the
    checkpoint and restored with it.

    Args:
        num_folds: Number of folds k, at least 2.
        fold: Index of the test fold, ``0 <= fold < num_folds``.
        val_fraction: Fraction of the non-test rows used for validation.
        split_seed: Seed of the fold assignment and the validation split.
        batch_size: Mini-batch size.
        num_workers: DataLoader worker processes.
        predict_file: CSV of new raw samples for ``qlit predict``; without it, predict runs on
            the test fold.
    """

    num_features: int
    num_classes: int
    class_names: list[str]
    raw_features: int

    def __init__(
        self,
        num_folds: int = 5,
        fold: int = 0,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        predict_file: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
            raise QlitError(f"num_folds must be an integer >= 2, got {num_folds!r}")
        if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < num_folds:
            raise QlitError(f"fold must be in 0..{num_folds - 1} for num_folds={num_folds}, got {fold!r}")
        if not 0 < val_fraction < 1:
            raise QlitError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        if batch_size < 1:
            raise QlitError(f"batch_size must be >= 1, got {batch_size!r}")
        self.num_folds = num_folds
        self.fold = fold
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.predict_file = predict_file
        self.preprocessor = self.make_preprocessor()
        self.x: np.ndarray | None = None
        self.y: np.ndarray | None = None
        self.indices: dict[str, np.ndarray] = {}
        self.predict_ids: list[str] = []
        self._predict_x: np.ndarray | None = None

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Return raw features ``(n_samples, raw_features)`` and integer labels ``(n_samples,)``."""
        raise NotImplementedError

    def make_preprocessor(self) -> Preprocessor:
        """Return the unfitted preprocessing for this data."""
        return Preprocessor()

    def setup(self, stage: str | None = None) -> None:
        if self.x is None:
            self.x, self.y = self.load()
            self.indices = self.split(self.y)
            self.preprocessor.fit(self.x[self.indices["train"]])
        if stage == "predict" and self.predict_file is not None:
            self.predict_ids, self._predict_x = read_samples_csv(self.predict_file, self.raw_features)

    def split(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """Row indices of the ``train``, ``val`` and ``test`` sets of this fold."""
        counts = np.bincount(y, minlength=self.num_classes)
        smallest = int(counts.min())
        if smallest == 0:  # e.g. a genotype file holding a single population
            name = self.class_names[int(counts.argmin())]
            source = getattr(self, "genotype_file", None) or "the data"
            raise QlitError(
                f"{source} has no samples of class {name!r}; every class needs samples to train a classifier"
            )
        if smallest < self.num_folds:
            name = self.class_names[int(counts.argmin())]
            raise QlitError(
                f"num_folds={self.num_folds} is more than the {smallest} samples of class {name!r}; "
                f"use num_folds <= {smallest}"
            )
        folds = StratifiedKFold(self.num_folds, shuffle=True, random_state=self.split_seed)
        rest, test = list(folds.split(np.zeros(len(y)), y))[self.fold]
        train, val = train_test_split(
            rest, test_size=self.val_fraction, stratify=y[rest], random_state=self.split_seed
        )
        return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}

    def _dataset(self, split: str) -> TensorDataset:
        rows = self.indices[split]
        return TensorDataset(self.preprocessor.transform(self.x[rows]), torch.as_tensor(self.y[rows]))

    def _loader(self, dataset: TensorDataset, shuffle: bool = False) -> TensorLoader:
        if shuffle:  # order depends on (seed, epoch) only and the position is checkpointed: exact resume
            sampler = EpochShuffleSampler(dataset)
            return ResumableDataLoader(
                dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers
            )
        return TensorLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers)

    def train_dataloader(self) -> ResumableDataLoader:
        return self._loader(self._dataset("train"), shuffle=True)

    def val_dataloader(self) -> TensorLoader:
        return self._loader(self._dataset("val"))

    def test_dataloader(self) -> TensorLoader:
        return self._loader(self._dataset("test"))

    def predict_dataloader(self) -> TensorLoader:
        if self._predict_x is None:
            self.predict_ids = [str(i) for i in self.indices["test"]]
            return self._loader(TensorDataset(self._dataset("test").tensors[0]))
        return self._loader(TensorDataset(self.preprocessor.transform(self._predict_x)))

    def state_dict(self) -> dict[str, Any]:
        """Fitted preprocessing and label names, saved in every checkpoint."""
        return {
            "preprocessing": self.preprocessor.state_dict(),
            "class_names": list(self.class_names),
            "raw_features": self.raw_features,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.preprocessor.load_state_dict(state_dict["preprocessing"])
