"""Stratified k-fold data modules: the held-out fold tests, the rest trains and validates."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
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
from qlit.io.files import check_regular_file


def read_csv_table(path: str | Path, what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Read a CSV file of user data: UTF-8 (a byte-order mark allowed), a header row, equal-length rows.

    Both of qlit's tables (genotypes, predict files) come through here, so they agree on encoding,
    whitespace and header rules.

    Args:
        path: The file.
        what: What the file is, for messages (``"predict file"``, ``"genotype file"``).

    Returns:
        ``(header, rows)``: the column names and, for each non-blank data row, its line number in
        the file and its cells, all stripped of surrounding whitespace. Both are empty for a file
        without any non-blank row.

    Raises:
        QlitError: the path is missing, not a regular file or unreadable; the file is compressed,
            binary, UTF-16 or not UTF-8; a name appears twice in the header; or a row's length
            differs from the header's. The message names the file (and line).
    """
    path = Path(path)
    try:
        data = _read_regular_file(path, what)
    except PermissionError:
        raise QlitError(f"{what} {path}: permission denied (the file is not readable by this user)") from None
    except OSError as err:
        raise QlitError(f"{what} {path}: cannot be read ({err.strerror or err})") from None
    if data.startswith(b"\x1f\x8b"):
        raise QlitError(f"{what} {path} is gzip-compressed; decompress it (gunzip) and give the CSV file")
    if data.startswith(b"PK\x03\x04"):
        raise QlitError(f"{what} {path} is a ZIP archive (a spreadsheet workbook?), not a CSV file; export it as CSV")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise QlitError(f"{what} {path} is UTF-16 text; save it as UTF-8 CSV")
    if b"\x00" in data:
        raise QlitError(f"{what} {path} holds NUL bytes: not a text CSV file (binary data, or UTF-16 without a BOM?)")
    # Spreadsheet programs often start a CSV with a UTF-8 byte-order mark, which would hide the first header name.
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise QlitError(
            f"{what} {path}: not a readable UTF-8 CSV file: line {line} holds byte 0x{data[err.start]:02x}, "
            "which is not UTF-8 (save the file as UTF-8)"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            if row:
                rows.append((reader.line_num, [cell.strip() for cell in row]))
    except csv.Error as err:
        raise QlitError(f"{what} {path}: line {reader.line_num}: not a readable CSV file ({err})") from None
    if not rows:
        return [], []
    (_, header), body = rows[0], rows[1:]
    for j, name in enumerate(header):
        if name in header[:j]:
            raise QlitError(
                f"{what} {path}: column {name!r} appears twice in the header (columns {header.index(name) + 1} "
                f"and {j + 1}); every column needs its own name"
            )
    for line, row in body:
        if len(row) != len(header):
            raise QlitError(f"{what} {path}: line {line} has {len(row)} columns, the header has {len(header)}")
    return header, body


def _read_regular_file(path: Path, what: str) -> bytes:
    """The bytes of ``path``, refusing anything but a regular file (opening a FIFO would wait forever)."""
    return check_regular_file(path, what, "a regular file: give a CSV file").read_bytes()


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
        path: CSV file, read by `read_csv_table`.
        n_features: Number of feature columns expected (the ``id`` column not counted).

    Returns:
        ``(ids, features)``; ids default to the row numbers ``"0"``, ``"1"``, ….

    Raises:
        QlitError: the file is missing, unreadable or empty, has the wrong number of columns, or
            holds a non-numeric, NaN or infinite value. The message names the file (and row and column).
    """
    path = Path(path)
    header, body = read_csv_table(path, "predict file")
    if not body:
        raise QlitError(f"{path}: no samples (expected a header row and at least one data row)")
    id_col = id_column(header)
    if len(header) - (id_col is not None) != n_features:
        raise QlitError(f"{path}: {len(header) - (id_col is not None)} feature columns, the model expects {n_features}")
    names = [name for c, name in enumerate(header) if c != id_col]
    ids, features = [], np.empty((len(body), n_features))
    for r, (line, row) in enumerate(body):
        ids.append(row[id_col] if id_col is not None else str(r))
        values = [v for c, v in enumerate(row) if c != id_col]
        features[r] = [parse_number(value, path, line, name) for value, name in zip(values, names)]
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
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise QlitError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        check_seed("split_seed", split_seed)
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
        if self.x is None:
            x, y = self.load()
            indices = self.split(y)  # assigned only once all is well: a failed setup leaves nothing half-done
            n_components, n_train = self.preprocessor.n_components, len(indices["train"])
            if n_components is not None and n_components >= n_train:
                raise QlitError(
                    f"n_components={n_components} is not below the {n_train} training rows of fold {self.fold} "
                    f"(PCA of n rows has at most n - 1 informative components); use n_components <= {n_train - 1} "
                    "or more data"
                )
            self.preprocessor.fit(x[indices["train"]])
            self.x, self.y, self.indices = x, y, indices
            self._split_identity = None
        if stage == "predict" and self.predict_file is not None:
            self.predict_ids, self._predict_x = read_samples_csv(self.predict_file, self.raw_features)

    def split(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """Row indices of the ``train``, ``val`` and ``test`` sets of this fold."""
        counts = np.bincount(y, minlength=self.num_classes)
        smallest, name = int(counts.min()), self.class_names[int(counts.argmin())]
        source = getattr(self, "genotype_file", None) or "the data"
        if smallest == 0:  # e.g. a genotype file holding a single population
            raise QlitError(
                f"{source} has no samples of class {name!r}; every class needs samples to train a classifier"
            )
        if smallest < 2:
            raise QlitError(
                f"{source} has only {smallest} sample of class {name!r}, too few to split: even 2 folds need "
                "at least 2 samples of every class"
            )
        if smallest < self.num_folds:
            raise QlitError(
                f"num_folds={self.num_folds} is more than the {smallest} samples of class {name!r} in {source}; "
                f"use num_folds <= {smallest}"
            )
        folds = StratifiedKFold(self.num_folds, shuffle=True, random_state=self.split_seed)
        rest, test = list(folds.split(np.zeros(len(y)), y))[self.fold]
        self._check_validation_split(y[rest], source)
        train, val = train_test_split(
            rest, test_size=self.val_fraction, stratify=y[rest], random_state=self.split_seed
        )
        missing = [self.class_names[k] for k in range(self.num_classes) if not np.any(y[train] == k)]
        if missing:
            raise QlitError(
                f"val_fraction={self.val_fraction} leaves no training rows of class {missing[0]!r} in fold "
                f"{self.fold}; use a smaller val_fraction or more data"
            )
        return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}

    def _check_validation_split(self, y_rest: np.ndarray, source: str) -> None:
        """Refuse a split whose stratified training or validation rows would miss a class or be empty."""
        n_rest, k = len(y_rest), self.num_classes
        rest_counts = np.bincount(y_rest, minlength=k)
        if rest_counts.min() < 2:
            name = self.class_names[int(rest_counts.argmin())]
            fewer = "fewer folds or " if self.num_folds > 2 else ""
            raise QlitError(
                f"with num_folds={self.num_folds}, {source} leaves only {int(rest_counts.min())} sample of class "
                f"{name!r} outside test fold {self.fold}, too few for both training and validation; use {fewer}"
                "more samples of every class"
            )
        n_val = math.ceil(self.val_fraction * n_rest)  # scikit-learn's rounding of the validation size
        if n_val < k or n_rest - n_val < k:
            part, count = ("validation", n_val) if n_val < k else ("training", n_rest - n_val)
            raise QlitError(
                f"val_fraction={self.val_fraction} leaves {count} {part} row{'s' * (count != 1)} of the {n_rest} "
                f"outside the test fold; a stratified split needs at least {k} (one per class): use val_fraction "
                f"between {k / n_rest:.3g} and {(n_rest - k) / n_rest:.3g}"
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
            self.predict_ids = [str(i) for i in self.indices["test"]]
            return self._loader(TensorDataset(self._dataset("test").tensors[0]))
        return self._loader(TensorDataset(self.preprocessor.transform(self._predict_x)))

    def features(self, split: str) -> np.ndarray:
        """The preprocessed features of one split's rows (``train``, ``val`` or ``test``), as float32.

        What the model sees; the classical baselines of ``qlit cv`` are fit and scored on the same arrays.
        """
        return self._dataset(split).tensors[0].numpy()

    def labels(self, split: str) -> np.ndarray:
        """The class indices of one split's rows."""
        return np.asarray(self.y[self.indices[split]])

    def pca_scores(self) -> np.ndarray | None:
        """Every row on the fold's first two principal components, or ``None`` without a PCA step.

        For the cv report's scatter plot: the PCA is fit on the fold's training rows only.
        """
        state = self.preprocessor.state
        if "pca_components" not in state or state["pca_components"].shape[0] < 2:
            return None
        x = torch.as_tensor(np.asarray(self.x, dtype=np.float64))
        return ((x - state["pca_mean"]) @ state["pca_components"][:2].T).numpy()

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
                "data_sha256": _sha256(self.x, self.y),
                **{f"{split}_sha256": _sha256(rows) for split, rows in self.indices.items()},
            }
        return dict(self._split_identity)

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


def _sha256(*arrays: np.ndarray) -> str:
    """Hex SHA-256 of arrays' dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()
