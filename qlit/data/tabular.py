"""Any table of the user's own: a label column and numeric feature columns, no code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from qlit.data.base import KFoldDataModule, _sha256
from qlit.data.preprocessing import Preprocessor
from qlit.data.sampling import TensorLoader
from qlit.data.tables import BUILTIN, Table, read_table
from qlit.errors import QlitError

IMPUTE_HINT = " (fill it in, drop the row, or set impute: mean to fill with the training rows' mean)"
_ANNOUNCED: set[tuple[str, str | None]] = set()  # (table, id column) notices already printed by this process


class TabularDataModule(KFoldDataModule):
    """Rows of a CSV, TSV or Parquet table labelled by one of its columns, standardised (optionally PCA).

    The table is read once, when the module is built, so that the number of features and the class
    names are known to the CLI before training; `load` turns it into arrays.

    Predicting new rows (``predict_file``) needs only the checkpoint and the new file: the feature
    columns, the imputation means, the scaler, the PCA and the id column all come from the
    checkpoint, never from this command's fold. If ``path`` does not exist then, the module takes its
    classes and features from the checkpoint too (and gives the CLI no sizes for the model, which is
    rebuilt from the checkpoint's hyperparameters).

    Args:
        path: ``.csv``, ``.tsv``, ``.parquet`` file, or a built-in table such as ``sklearn:breast_cancer``.
        target: The label column. Labels may be strings or integers.
        features: Feature columns, in order; default every numeric column except ``target`` and
            ``id_column``.
        id_column: Column of sample names, the ``id`` of predictions. Default: the first column that is
            neither a feature nor the target and holds a different value in every row (a notice says
            which), else the row number from 0.
        classes: Label values to keep, in this order (other rows are left out); default all, sorted.
        n_components: Principal components kept (PCA fit on the training rows), or ``None``.
        impute: ``None`` (or ``"error"``): no imputation, a missing feature value is an error naming its
            row and column; ``"mean"``: it is filled with that column's mean over the split's training
            rows (under ``inner_folds``, the inner training rows), fit with the rest of the preprocessing.
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
        impute: str | None = "error",
        **kwargs,
    ) -> None:
        import pandas as pd

        if impute not in (None, "error", "mean"):
            raise QlitError(
                f"impute must be null (no imputation: a missing value is an error) or 'mean', got {impute!r}"
            )
        impute = impute or "error"
        if id_column is not None and id_column == target:
            raise QlitError(
                f"id_column {id_column!r} is the target column: the ids of predictions would be the labels; "
                "name a column of sample names, or leave id_column unset"
            )
        self.path = str(path)
        self.target = target
        self.id_column = id_column
        self._chosen_id_column = id_column
        self.n_components = n_components
        self.impute = impute
        self.row_ids: np.ndarray | None = None
        self._raw_x: np.ndarray | None = None  # the features as read: NaN where impute: mean fills a gap
        self._boolean_features: list[str] | None = None
        self._new_table: Table | None = None
        self._new_x: np.ndarray | None = None
        self._new_ids: list[str] = []
        self._reported: set[str] = set()
        predict_file = kwargs.get("predict_file")
        if predict_file is not None and self.path not in BUILTIN and not Path(self.path).exists():
            # Predicting new rows needs no training table: classes, features and sizes come from the checkpoint.
            # Without num_features, num_classes and class_names the CLI builds the model from the checkpoint.
            self._table = None
            self._labels = None
            self.feature_columns = [str(f) for f in features] if features is not None else None
            super().__init__(**kwargs)
            return
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
        if id_column is None:
            self._chosen_id_column = _unique_column(table, [target, *features])
            _announce_id(table.source, self._chosen_id_column)
        self.feature_columns = features
        self._boolean_features = [c for c in features if pd.api.types.is_bool_dtype(table.frame[c])]
        self.class_names = chosen
        self.num_classes = len(chosen)
        self.raw_features = len(features)
        self.num_features = n_components or len(features)
        self._table = table
        self._labels = labels
        super().__init__(**kwargs)

    @property
    def predict_only(self) -> bool:
        """Whether the training table is absent: only ``predict_file`` with a checkpoint can be used."""
        return self._table is None

    def make_preprocessor(self) -> Preprocessor:
        return Preprocessor(
            n_components=self.n_components,
            impute="mean" if self.impute == "mean" else None,
            columns=self.feature_columns,
            source=self._table.source if self._table is not None else self.path,
        )

    @property
    def impute_means(self) -> np.ndarray | None:
        """Per feature column, the mean that fills a missing value (``None`` without ``impute: mean``).

        Fit on the split's training rows with the rest of the preprocessing, or the checkpoint's once
        its state is restored.
        """
        return self.preprocessor.impute_mean

    def setup(self, stage: str | None = None) -> None:
        """Split and fit the preprocessing (imputation included) on the split's training rows.

        ``x`` keeps the gaps filled with the fitted (or, once restored, the checkpoint's) means, so every
        consumer of ``x`` sees the rows the model sees; the data's hash covers the table as read.
        """
        fresh = self.x is None
        super().setup(stage)
        if fresh and self.x is not None:
            self._raw_x = self.x
            self._fill()

    def _fill(self) -> None:
        """Fill the gaps of the table's rows with the current imputation means (none: ``x`` is left as it is)."""
        if self._raw_x is not None and self.impute_means is not None:
            self.x = np.where(np.isnan(self._raw_x), self.impute_means, self._raw_x)

    def data_sha256(self) -> str:
        """Hex SHA-256 of the features as read (gaps as NaN, whichever rows fill them) and the labels."""
        return _sha256(self._raw_x if self._raw_x is not None else self.x, self.y)

    def source_name(self) -> str:
        return f"{self.path} (column {self.target!r})"

    def describe_source(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "target": self.target,
            "features": list(self.feature_columns),
            "classes": list(self.class_names),
            "impute": self.impute,
        }

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        if self._table is None:
            raise QlitError(
                f"data file not found: {self.path} (only qlit predict with --ckpt_path and a predict_file works "
                "without the training table)"
            )
        table = self._table
        keep = np.isin(self._labels, self.class_names)
        rows = np.flatnonzero(keep)
        missing = "keep" if self.impute == "mean" else "error"
        x = np.column_stack([table.numbers(c, missing=missing, hint=IMPUTE_HINT) for c in self.feature_columns])[rows]
        y = np.array([self.class_names.index(v) for v in self._labels[rows]], dtype=np.int64)
        if self._chosen_id_column is not None:
            self.row_ids = table.frame[self._chosen_id_column].astype(str).to_numpy()[rows]
        else:
            self.row_ids = rows.astype(str)  # the row's position among the file's data rows, from 0
        # Gaps stay NaN: the preprocessing fills them with means of the split's training rows only (it is fit
        # on exactly those), and keeps the means even when nothing is missing here (a predict file may miss values).
        return x, y

    def read_predict_file(self) -> None:
        """Read the predict table; its features are checked now if the columns are known (else at predict)."""
        if self._new_table is None:
            self._new_table = read_table(self.predict_file, what="predict file")
        if self.preprocessor.fitted or not self.predict_only:
            self._new_x = None
            self._predict_features()  # qlit predict restores the checkpoint first: a bad file fails before any write

    def _need_checkpoint(self) -> None:
        """Raise: without the training table only a checkpoint's state can shape the new rows."""
        raise QlitError(
            f"data file not found: {self.path}; predicting {self.predict_file} without the training table needs the "
            "checkpoint the model was trained into (--ckpt_path best, last or a file)"
        )

    def _predict_features(self) -> np.ndarray:
        """The predict table's raw features under the checkpoint's columns, imputation and id column."""
        import pandas as pd

        if self._new_x is not None:
            return self._new_x
        table = self._new_table
        if self.feature_columns is None:
            self._need_checkpoint()
        for name in self.feature_columns:
            table.require(name, "a feature the model was trained on")
        id_column = self._chosen_id_column
        if self._boolean_features is not None:  # checkpoints of older qlit versions do not say
            for name in self.feature_columns:
                if pd.api.types.is_bool_dtype(table.frame[name]) and name not in self._boolean_features:
                    raise QlitError(
                        f"{table.source}: column {name!r} holds True/False, but the model was trained on numbers in "
                        f"it (from {self.path}); give the numbers it was trained on"
                    )
        missing = "keep" if self.impute == "mean" else "error"
        x = np.column_stack([table.numbers(c, missing=missing, hint=IMPUTE_HINT) for c in self.feature_columns])
        if np.isnan(x).any():  # impute: mean, with the training rows' means the checkpoint holds
            if self.impute_means is None:
                self.ensure_fitted()  # no checkpoint restored: this fold's training rows give the means
            if self.impute_means is None:
                row, col = (int(i[0]) for i in np.nonzero(np.isnan(x)))
                raise QlitError(
                    f"{table.source}: {table.where(row)}, column {self.feature_columns[col]!r}: missing value, and the "
                    "checkpoint holds no training means to impute it with (saved by an older qlit); fill it in"
                )
            x = np.where(np.isnan(x), self.impute_means, x)
        if id_column is not None and id_column in table.columns:
            ids = table.frame[id_column].astype(str).tolist()
        else:
            ids = [str(i) for i in range(len(table.frame))]
        ignored = [c for c in table.columns if c not in self.feature_columns and c != id_column]
        if ignored and "ignored" not in self._reported:  # said once the file is found good: an error stays one line
            self._reported.add("ignored")
            print(f"qlit: {table.source}: ignoring columns that are not features: {_few(ignored)}", file=sys.stderr)
        self._new_ids, self._new_x = ids, x
        return x

    def predict_dataloader(self) -> TensorLoader:
        if self._new_table is None:
            return self._test_fold_loader(self.row_ids[self.indices["test"]])
        self.ensure_fitted()
        x = self._predict_features()
        self.predict_ids = list(self._new_ids)
        return self._loader(TensorDataset(self.preprocessor.transform(x)))

    def ensure_fitted(self) -> None:
        if not self.preprocessor.fitted and self.predict_only:
            self._need_checkpoint()
        super().ensure_fitted()

    def state_dict(self) -> dict[str, Any]:
        """The base state plus what shapes a new row: feature columns, imputation, id column, True/False columns."""
        state = super().state_dict()
        state["features"] = list(self.feature_columns)
        state["impute"] = self.impute
        if self.impute_means is not None:
            state["impute_means"] = torch.from_numpy(self.impute_means.copy())
        if self._chosen_id_column is not None:
            state["id_column"] = self._chosen_id_column
        if self._boolean_features is not None:
            state["boolean_features"] = list(self._boolean_features)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the checkpoint's preprocessing and everything else that shapes a new row."""
        super().load_state_dict(state_dict)
        width = self.preprocessor.in_features
        features = state_dict.get("features")
        if isinstance(features, (list, tuple)) and features:
            if len(features) != width:
                raise QlitError(
                    f"the checkpoint's {len(features)} feature columns do not match its preprocessing of {width}"
                )
            self.feature_columns = [str(f) for f in features]
            self.raw_features = width
        if state_dict.get("impute") in ("error", "mean"):
            self.impute = state_dict["impute"]
            self.preprocessor.impute = "mean" if self.impute == "mean" else None
        if "impute_means" in state_dict:
            means = torch.as_tensor(state_dict["impute_means"], dtype=torch.float64).numpy()
            if means.shape != (width,) or not np.isfinite(means).all():
                raise QlitError(f"the checkpoint's impute_means are not {width} finite numbers, one per feature column")
            self.preprocessor.impute_mean = means
        self._fill()  # the test and validation rows are shaped by the checkpoint's means too, not this command's
        if isinstance(state_dict.get("boolean_features"), (list, tuple)):
            self._boolean_features = [str(f) for f in state_dict["boolean_features"]]
        if self.id_column is None:  # unset by the user: the id column the model was trained with
            saved = state_dict.get("id_column")
            self._chosen_id_column = saved if isinstance(saved, str) else None
        names = state_dict.get("class_names")
        if self.predict_only and isinstance(names, (list, tuple)):
            self.class_names = [str(n) for n in names]
            self.num_classes = len(self.class_names)
            self.num_features = self.preprocessor.state["scale_mean"].numel()
        self._new_x = None  # shaped again under this state


def _unique_column(table: Table, used: list[str]) -> str | None:
    """The first column besides ``used`` holding a different, present, non-fractional value in every row."""
    import pandas as pd

    for name in table.columns:
        column = table.frame[name]
        if name in used or pd.api.types.is_float_dtype(column) or pd.api.types.is_bool_dtype(column):
            continue  # measurements are unique by chance, not names
        if column.notna().all() and column.astype(str).str.strip().is_unique:
            return name
    return None


def _announce_id(source: str, name: str | None) -> None:
    """Say once per table which column names the samples (stdout: it is a notice, not an error)."""
    key = (source if source in BUILTIN else str(Path(source).resolve()), name)
    if key in _ANNOUNCED:  # e.g. the folds of one qlit cv
        return
    _ANNOUNCED.add(key)
    if name is not None:
        print(f"qlit: using column {name!r} as the sample id (set data.id_column to choose)")
    else:
        print(f"qlit: {source} has no column of unique sample names; ids are row numbers from 0 "
              "(set data.id_column to choose)")


def _labels(table: Table, target: str) -> tuple[np.ndarray, list[str]]:
    """The target column as strings, and its distinct values sorted (integers by value)."""
    import pandas as pd

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
