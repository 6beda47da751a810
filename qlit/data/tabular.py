"""Any table of the user's own: a label column and numeric feature columns, no code."""

from __future__ import annotations

import sys
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from qlit.data.base import KFoldDataModule
from qlit.data.preprocessing import Preprocessor
from qlit.data.sampling import TensorLoader
from qlit.data.tables import Table, read_table
from qlit.errors import QlitError

IMPUTE_HINT = " (fill it in, drop the row, or set impute: mean to fill with the training rows' mean)"


class TabularDataModule(KFoldDataModule):
    """Rows of a CSV, TSV or Parquet table labelled by one of its columns, standardised (optionally PCA).

    The table is read once, when the module is built, so that the number of features and the class
    names are known to the CLI before training; `load` turns it into arrays.

    Args:
        path: ``.csv``, ``.tsv``, ``.parquet`` file, or a built-in table such as ``sklearn:breast_cancer``.
        target: The label column. Labels may be strings or integers.
        features: Feature columns, in order; default every numeric column except ``target`` and
            ``id_column``.
        id_column: Optional column of row names, the ``id`` of predictions (default: the row number, from 0).
        classes: Label values to keep, in this order (other rows are left out); default all, sorted.
        n_components: Principal components kept (PCA fit on the training rows), or ``None``.
        impute: ``"error"``: a missing feature value is an error naming its row and column;
            ``"mean"``: it is filled with that column's mean over the training rows.
        **kwargs: Split, batch and predict options of `KFoldDataModule`. ``predict_file`` is a table
            whose feature columns are matched by name (extra columns are ignored and reported).
    """

    def __init__(
        self,
        path: str,
        target: str,
        features: list[str] | None = None,
        id_column: str | None = None,
        classes: list[str | int] | None = None,
        n_components: int | None = None,
        impute: Literal["error", "mean"] = "error",
        **kwargs,
    ) -> None:
        if impute not in ("error", "mean"):
            raise QlitError(f"impute must be 'error' or 'mean', got {impute!r}")
        table = read_table(path)
        table.require(target, "the target")
        if id_column is not None:
            table.require(id_column, "the id_column")
        if features is None:
            features = [c for c in table.columns if c not in (target, id_column) and table.is_numeric(c)]
            if not features:
                raise QlitError(f"{table.source}: no numeric column besides the target {target!r} to use as a feature")
        else:
            features = [str(f) for f in features]
            if not features or len(set(features)) != len(features):
                raise QlitError(f"features must name at least one column, each once, got {features}")
            for name in features:
                table.require(name, "a feature")
                if name in (target, id_column):
                    raise QlitError(f"features must not include the target or id column, got {name!r}")
        labels, names = _labels(table, target)
        if classes is None:
            chosen = names
        else:
            chosen = [str(c) for c in classes]
            unknown = [c for c in chosen if c not in names]
            if unknown:
                raise QlitError(
                    f"{table.source}: class {unknown[0]!r} is not in column {target!r} (it holds {_few(names)})"
                )
            if len(set(chosen)) != len(chosen):
                raise QlitError(f"classes must name each class once, got {chosen}")
        if len(chosen) < 2:
            raise QlitError(
                f"{table.source}: column {target!r} holds a single class {chosen[0]!r}; a classifier needs at least two"
            )
        if n_components is not None and not 1 <= n_components <= len(features):
            raise QlitError(f"n_components must be in 1..{len(features)}, the number of features; got {n_components!r}")
        self.path = str(path)
        self.target = target
        self.feature_columns = features
        self.id_column = id_column
        self.n_components = n_components
        self.impute = impute
        self.class_names = chosen
        self.num_classes = len(chosen)
        self.raw_features = len(features)
        self.num_features = n_components or len(features)
        self._table = table
        self._labels = labels
        self.row_ids: np.ndarray | None = None
        self.impute_means: np.ndarray | None = None
        self._new_x: np.ndarray | None = None
        super().__init__(**kwargs)

    def make_preprocessor(self) -> Preprocessor:
        return Preprocessor(n_components=self.n_components)

    def describe_source(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "target": self.target,
            "features": list(self.feature_columns),
            "classes": list(self.class_names),
            "impute": self.impute,
        }

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        table = self._table
        keep = np.isin(self._labels, self.class_names)
        rows = np.flatnonzero(keep)
        missing = "keep" if self.impute == "mean" else "error"
        x = np.column_stack([table.numbers(c, missing=missing, hint=IMPUTE_HINT) for c in self.feature_columns])[rows]
        y = np.array([self.class_names.index(v) for v in self._labels[rows]], dtype=np.int64)
        if self.id_column is not None:
            self.row_ids = table.frame[self.id_column].astype(str).to_numpy()[rows]
        else:
            self.row_ids = rows.astype(str)  # the row's position among the file's data rows, from 0
        if self.impute == "mean" and np.isnan(x).any():
            # The means come from this fold's training rows only; split() is deterministic, so setup's call agrees.
            train = x[self.split(y)["train"]]
            counts = (~np.isnan(train)).sum(axis=0)
            empty = [self.feature_columns[c] for c in np.flatnonzero(counts == 0)]
            if empty:
                raise QlitError(f"{table.source}: column {empty[0]!r} has no value in the training rows to impute from")
            means = np.nansum(train, axis=0) / counts
            self.impute_means = means
            x = np.where(np.isnan(x), means, x)
        return x, y

    def setup(self, stage: str | None = None) -> None:
        super().setup(None if stage == "predict" else stage)
        if stage == "predict" and self.predict_file is not None and self._new_x is None:
            self._read_predict_file()

    def _read_predict_file(self) -> None:
        table = read_table(self.predict_file, what="predict file")
        for name in self.feature_columns:
            table.require(name, "a feature the model was trained on")
        ignored = [c for c in table.columns if c not in self.feature_columns and c != self.id_column]
        if ignored:
            print(f"qlit: {table.source}: ignoring columns that are not features: {_few(ignored)}", file=sys.stderr)
        missing = "keep" if self.impute == "mean" else "error"
        x = np.column_stack([table.numbers(c, missing=missing, hint=IMPUTE_HINT) for c in self.feature_columns])
        if np.isnan(x).any():  # impute: mean; the training rows are complete after load()
            means = self.impute_means if self.impute_means is not None else self.x[self.indices["train"]].mean(axis=0)
            x = np.where(np.isnan(x), means, x)
        if self.id_column is not None and self.id_column in table.columns:
            ids = table.frame[self.id_column].astype(str).tolist()
        else:
            ids = [str(i) for i in range(len(table.frame))]
        self._new_ids, self._new_x = ids, x

    def predict_dataloader(self) -> TensorLoader:
        if self._new_x is None:
            rows = self.indices["test"]
            self.predict_ids = [str(i) for i in self.row_ids[rows]]
            return self._loader(TensorDataset(self._dataset("test").tensors[0]))
        self.predict_ids = list(self._new_ids)
        return self._loader(TensorDataset(self.preprocessor.transform(self._new_x)))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["features"] = list(self.feature_columns)
        if self.impute_means is not None:
            state["impute_means"] = torch.from_numpy(self.impute_means.copy())
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "impute_means" in state_dict:
            self.impute_means = torch.as_tensor(state_dict["impute_means"], dtype=torch.float64).numpy()


def _labels(table: Table, target: str) -> tuple[np.ndarray, list[str]]:
    """The target column as strings, and its distinct values sorted (integers by value)."""
    column = table.frame[target]
    missing = column.isna().to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise QlitError(f"{table.source}: {table.where(row)}, column {target!r}: missing label")
    if pd.api.types.is_bool_dtype(column):
        column = column.astype(int)
    if pd.api.types.is_numeric_dtype(column):
        values = column.to_numpy(dtype=np.float64)
        fractional = values != np.round(values)
        if fractional.any():
            row = int(np.flatnonzero(fractional)[0])
            raise QlitError(
                f"{table.source}: {table.where(row)}, column {target!r}: label {values[row]} is neither a string "
                "nor an integer"
            )
        ints = values.astype(np.int64)
        return np.array([str(v) for v in ints]), [str(v) for v in sorted(set(ints.tolist()))]
    labels = np.array([str(v).strip() for v in column.tolist()])
    return labels, sorted(set(labels.tolist()))


def _few(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")

