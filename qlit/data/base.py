"""Stratified k-fold data modules: the held-out fold tests, the rest trains and validates."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import TensorDataset

from qlit.data.preprocessing import Preprocessor, check_components
from qlit.data.sampling import EpochShuffleSampler, ResumableDataLoader, TensorLoader
from qlit.data.splits import stratified_inner_split, stratified_split
from qlit.data.tables import read_table
from qlit.errors import QlitError


def check_seed(name: str, value: Any) -> None:
    """Refuse a seed that NumPy and scikit-learn would not take (they need ``0 <= seed < 2**32``)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise QlitError(f"{name} must be an integer in 0..{2**32 - 1}, got {value!r}")


def id_column(header: list[str]) -> int | None:
    """Index of the optional ``id`` column, which names samples and is never a feature."""
    return header.index("id") if "id" in header else None


def parse_number(value: str, path: Path, line: int, column: str) -> float:
    """A finite number from a CSV cell, or a `QlitError` naming the file, line and column."""
    where = f"{path}: line {line}, column {column!r}"
    # Python's float() reads "1_000" as 1000; in a data file that is far likelier a typo or a foreign format.
    if "_" in value:
        raise QlitError(f"{where}: {value!r} is not a number (digit separators like '_' are not allowed)")
    try:
        number = float(value)
    except ValueError:
        raise QlitError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise QlitError(f"{where}: {value!r} is not a finite number")
    return number


def read_samples_csv(path: str | Path, n_features: int) -> tuple[list[str], np.ndarray]:
    """Read new samples: a header row, one row per sample, an optional ``id`` column.

    Args:
        path: CSV file, read by `qlit.data.tables.read_table` as text cells.
        n_features: Number of feature columns expected (the ``id`` column not counted).

    Returns:
        ``(ids, features)``; ids default to the row numbers ``"0"``, ``"1"``, ….

    Raises:
        QlitError: the file is missing, unreadable or empty, has the wrong number of columns, or
            holds a non-numeric, NaN or infinite value. The message names the file (and row and column).
    """
    path = Path(path)
    table = read_table(path, "predict file", text_cells=True)
    if len(table.frame) == 0:
        raise QlitError(f"{path}: no samples (expected a header row and at least one data row)")
    header = table.columns
    id_col = id_column(header)
    names = [name for c, name in enumerate(header) if c != id_col]
    if len(names) != n_features:
        raise QlitError(f"{path}: {len(names)} feature columns, the model expects {n_features}")
    cells = table.frame.to_numpy()
    features = np.empty((len(cells), n_features))
    for r, row in enumerate(cells):
        line = int(table.lines[r])
        values = [v for c, v in enumerate(row) if c != id_col]
        features[r] = [parse_number(value, path, line, name) for value, name in zip(values, names)]
    ids = [str(v) for v in cells[:, id_col]] if id_col is not None else [str(r) for r in range(len(cells))]
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
        inner_folds: Nested cross-validation, as ``qlit tune`` uses it: split the fold's non-test rows into
            this many inner folds and leave the test fold out of every split. ``null``: no nesting.
        inner_fold: The inner fold that validates, ``0 <= inner_fold < inner_folds``.
        tuned_on: Provenance of a config ``qlit tune`` chose (its ``best_config*.yaml`` set it): the
            ``data_sha256`` of the data the search ran on, its ``outer_fold`` (``null``: a search over
            all rows) and ``rows``, the row indices the search trained and validated on (``"all"``, or a
            list). It enters the split identity, and the split guard refuses to score rows it names.
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
        inner_folds: int | None = None,
        inner_fold: int = 0,
        tuned_on: dict[str, Any] | None = None,
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
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise QlitError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        check_seed("split_seed", split_seed)
        if inner_folds is not None:
            if isinstance(inner_folds, bool) or not isinstance(inner_folds, int) or inner_folds < 2:
                raise QlitError(f"inner_folds must be null or an integer >= 2, got {inner_folds!r}")
            if isinstance(inner_fold, bool) or not isinstance(inner_fold, int) or not 0 <= inner_fold < inner_folds:
                raise QlitError(
                    f"inner_fold must be in 0..{inner_folds - 1} for inner_folds={inner_folds}, got {inner_fold!r}"
                )
        self.inner_folds = inner_folds
        self.inner_fold = inner_fold
        self.tuned_on = check_tuned_on(tuned_on)
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
        self._split_identity: dict[str, Any] | None = None

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Return raw features ``(n_samples, raw_features)`` and integer labels ``(n_samples,)``."""
        raise NotImplementedError

    def make_preprocessor(self) -> Preprocessor:
        """Return the unfitted preprocessing for this data."""
        return Preprocessor()

    def setup(self, stage: str | None = None) -> None:
        """Split and fit preprocessing on this fold's training rows; for new samples, only read them.

        ``setup("predict")`` with a ``predict_file`` reads neither the training data nor this fold: new
        samples are shaped by the checkpoint's fitted state, which Lightning restores with
        `load_state_dict` after `setup` and before `predict_dataloader` (``qlit predict`` restores it
        before, to check the file first). Without a checkpoint the fold's fit is made on first use.
        """
        if stage == "predict" and self.predict_file is not None:
            self.read_predict_file()
            return
        if self.x is None:
            x, y = self.load()
            indices = self.split(y)  # assigned only once all is well: a failed setup leaves nothing half-done
            if self.inner_folds is not None:
                indices = self.inner_split(y, indices)
            check_components(self.preprocessor.n_components, len(indices["train"]), self.fold)
            self.preprocessor.fit_once(x[indices["train"]])  # the twin of this fold reuses it
            self.x, self.y, self.indices = x, y, indices
            self._split_identity = None

    def read_predict_file(self) -> None:
        """Read ``predict_file`` (raw features, not yet preprocessed); `setup` calls it for ``predict``."""
        if self._predict_x is None:
            self.predict_ids, self._predict_x = read_samples_csv(self.predict_file, self.raw_features)

    def ensure_fitted(self) -> None:
        """Fit on this fold's training rows unless a checkpoint's state was restored (a model predicting untrained)."""
        if not self.preprocessor.fitted:
            self.setup("fit")

    def split(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """Row indices of the ``train``, ``val`` and ``test`` sets of this fold (`qlit.data.splits`)."""
        return stratified_split(
            y, self.class_names, self.num_folds, self.fold, self.val_fraction, self.split_seed, self.source_name()
        )

    def inner_split(self, y: np.ndarray, outer: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Nested cross-validation (``qlit tune``): inner fold ``inner_fold`` of the outer fold's non-test rows."""
        return stratified_inner_split(
            y, outer, self.class_names, self.inner_folds, self.inner_fold, self.split_seed, self.fold
        )

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
            return self._test_fold_loader(self.indices["test"])
        self.ensure_fitted()
        return self._loader(TensorDataset(self.preprocessor.transform(self._predict_x)))

    def _test_fold_loader(self, ids: Any) -> TensorLoader:
        """``qlit predict`` without a predict file: the fold's test rows, named by ``ids`` in the predictions."""
        self.predict_ids = [str(i) for i in ids]
        return self._loader(TensorDataset(self._dataset("test").tensors[0]))

    def features(self, split: str) -> np.ndarray:
        """The preprocessed features of one split's rows (``train``, ``val`` or ``test``), as float32.

        What the model sees; the classical baselines of ``qlit cv`` are fit and scored on the same arrays.
        """
        return self._dataset(split).tensors[0].numpy()

    def labels(self, split: str) -> np.ndarray:
        """The class indices of one split's rows."""
        return np.asarray(self.y[self.indices[split]])

    def row_ids(self) -> list[str]:
        """A name for every row of the data (after `setup`), for out-of-fold predictions; here the row number."""
        return [str(i) for i in range(len(self.y))]

    def pca_scores(self) -> np.ndarray | None:
        """Every row on the fold's first two principal components, or ``None`` without a PCA step.

        For the cv report's scatter plot: the PCA is fit on the fold's training rows only.
        """
        state = self.preprocessor.state
        if "pca_components" not in state or state["pca_components"].shape[0] < 2:
            return None
        x = torch.as_tensor(np.asarray(self.x, dtype=np.float64))
        return ((x - state["pca_mean"]) @ state["pca_components"][:2].T).numpy()

    def source_name(self) -> str:
        """The data's name in messages about its labels (a file, or ``"the data"``)."""
        return getattr(self, "genotype_file", None) or "the data"

    def describe_source(self) -> dict[str, Any]:
        """Primitive values that name the data this module reads, for messages (e.g. a file path).

        Subclasses override it; the split identity records it beside the data's hash.
        """
        return {}

    def split_identity(self) -> dict[str, Any]:
        """What a checkpoint records about the rows its model was trained, validated and tested on.

        The hashes cover the data themselves (features and labels) and the row indices of each
        split, so two commands agree only if they would train and score exactly the same rows,
        whatever data module or split scheme produced them. The readable fields (fold, seeds,
        source) are there for the error message when they do not. Computed once per `setup`.
        """
        if self.x is None:
            raise RuntimeError("split_identity() needs setup() first")
        if self._split_identity is None:
            self._split_identity = {
                "data_module": type(self).__qualname__,
                "source": self.describe_source(),
                "num_folds": self.num_folds,
                "fold": self.fold,
                "val_fraction": self.val_fraction,
                "split_seed": self.split_seed,
                "inner_folds": self.inner_folds,
                "inner_fold": self.inner_fold if self.inner_folds is not None else None,
                "tuned_on": self.tuned_on,
                "data_sha256": self.data_sha256(),
                **{f"{split}_sha256": _sha256(rows) for split, rows in self.indices.items()},
            }
        return dict(self._split_identity)

    def data_sha256(self) -> str:
        """Hex SHA-256 of the data this module trains, validates and tests on (features and labels)."""
        return _sha256(self.x, self.y)

    def state_dict(self) -> dict[str, Any]:
        """Fitted preprocessing, label names and the split's identity, saved in every checkpoint."""
        state = {
            "preprocessing": self.preprocessor.state_dict(),
            "class_names": list(self.class_names),
            "raw_features": self.raw_features,
        }
        if self.x is not None:
            state["split"] = self.split_identity()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.preprocessor.load_state_dict(state_dict["preprocessing"])


def check_tuned_on(tuned_on: Any) -> dict[str, Any] | None:
    """A ``tuned_on`` provenance record as plain values, or a `QlitError` naming what is wrong with it."""
    if tuned_on is None:
        return None
    if not isinstance(tuned_on, dict) or not isinstance(tuned_on.get("data_sha256"), str):
        raise QlitError(f"tuned_on must be null or a mapping with data_sha256, outer_fold and rows, got {tuned_on!r}")
    rows = tuned_on.get("rows")
    if rows != "all" and not (
        isinstance(rows, (list, tuple)) and all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in rows)
    ):
        raise QlitError(f"tuned_on.rows must be 'all' or a list of row indices, got {str(rows)[:80]!r}")
    outer = tuned_on.get("outer_fold")
    if outer is not None and (isinstance(outer, bool) or not isinstance(outer, int)):
        raise QlitError(f"tuned_on.outer_fold must be null or an integer, got {outer!r}")
    return {**tuned_on, "rows": rows if rows == "all" else [int(r) for r in rows]}


def searched_rows_scored(tuned_on: dict[str, Any] | None, data_sha256: str, rows: np.ndarray) -> np.ndarray:
    """The rows of ``rows`` that the search behind ``tuned_on`` trained or validated on (none for other data)."""
    rows = np.asarray(rows, dtype=np.int64)
    if not tuned_on or tuned_on.get("data_sha256") != data_sha256:
        return rows[:0]
    if tuned_on.get("rows") == "all":
        return rows
    return rows[np.isin(rows, np.asarray(tuned_on["rows"], dtype=np.int64))]


def _sha256(*arrays: np.ndarray) -> str:
    """Hex SHA-256 of arrays' dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()
