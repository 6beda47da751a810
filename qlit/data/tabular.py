"""Any table of the user's own: a label column and numeric feature columns, no code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from qlit.data.base import KFoldDataModule, _sha256
from qlit.data.given_split import (
    check_given_rows,
    check_given_split,
    given_split_identity,
    given_split_rows,
    given_split_source,
    read_given_split,
)
from qlit.data.preprocessing import Preprocessor
from qlit.data.sampling import TensorLoader
from qlit.data.table_columns import (
    boolean_columns,
    check_boolean_features,
    choose_classes,
    choose_features,
    choose_id_column,
    few,
    row_names,
)
from qlit.data.tables import BUILTIN, Table, read_table
from qlit.errors import QlitError

IMPUTE_HINT = " (fill it in, drop the row, or set impute: mean to fill with the training rows' mean)"


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
        features: Feature columns, in order; default every numeric column except ``target``,
            ``id_column`` and ``split_column``.
        id_column: Column of sample names, the ``id`` of predictions. Default: the first column that is
            neither a feature nor the target and holds a different value in every row (a notice says
            which), else the row number from 0.
        classes: Label values to keep, in this order (other rows are left out); default all, sorted.
        n_components: Principal components kept (PCA fit on the training rows), or ``None``.
        impute: ``None`` (or ``"error"``): no imputation, a missing feature value is an error naming its
            row and column; ``"mean"``: it is filled with that column's mean over the split's training
            rows (under ``inner_folds``, the inner training rows), fit with the rest of the preprocessing.
        split_column: A column of ``train``/``test`` values (any case, blanks stripped): the table's own
            test rows. Never a feature. Not with ``test_file``.
        test_file: A second table with the same columns as ``path``, read the same way: its rows are the
            given test rows, placed after ``path``'s. Not with ``split_column``.
        test_rows: With a given split (either of the above), ``"given"`` (the default then): the given test
            rows test and the given training rows train and validate (``val_fraction``; ``num_folds`` and
            ``fold`` unused); ``"fold"``: fold ``fold`` of ``num_folds`` over the given training rows only
            (``qlit cv``'s folds), the given test rows in no split. Without a given split only ``"fold"``
            (the default then) is allowed.
        **kwargs: Split, batch and predict options of `KFoldDataModule`. ``predict_file`` is a table
            whose feature columns are matched by name (extra columns are ignored and reported).

    Under ``inner_folds`` (``qlit tune``) the inner folds split the outer training and validation rows, so
    the given test rows are never in them either.
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
        split_column: str | None = None,
        test_file: str | None = None,
        test_rows: str | None = None,
        **kwargs,
    ) -> None:
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
        given = check_given_split(split_column, test_file, test_rows, target, id_column)
        self.path = str(path)
        self.target = target
        self.id_column = id_column
        self._chosen_id_column = id_column
        self.n_components = n_components
        self.impute = impute
        self.split_column = split_column
        self.test_file = str(test_file) if test_file is not None else None
        self.test_rows = test_rows or ("given" if given else "fold")
        self._ids: np.ndarray | None = None  # row_ids(): the id of each row of x
        self._given_test: np.ndarray | None = None  # with a given split: whether each row of x is a given test row
        self._all_test: np.ndarray | None = None  # the same for every row of the table(s), before `classes` keeps some
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
            self._tables: list[Table] = []
            self._table = None
            self._labels = None
            self.feature_columns = [str(f) for f in features] if features is not None else None
            super().__init__(**kwargs)
            return
        table = read_table(path)
        table.require(target, "the target")
        if id_column is not None:
            table.require(id_column, "the id_column")
        tables, is_test = read_given_split(table, self.path, split_column, self.test_file)
        features = choose_features(table, features, target, id_column, split_column)
        labels, chosen = choose_classes(tables, target, classes)
        if n_components is not None and not 1 <= n_components <= len(features):
            raise QlitError(f"n_components must be in 1..{len(features)}, the number of features; got {n_components!r}")
        if given:
            self._all_test = is_test
            check_given_rows(is_test, np.isin(labels, chosen), tables, split_column)
        if id_column is None:
            self._chosen_id_column = choose_id_column(tables, [target, *features, split_column])
        self.feature_columns = features
        self._boolean_features = boolean_columns(table, features)
        self.class_names = chosen
        self.num_classes = len(chosen)
        self.raw_features = len(features)
        self.num_features = n_components or len(features)
        self._tables = tables
        self._table = table
        self._labels = labels
        super().__init__(**kwargs)

    @property
    def given_split(self) -> bool:
        """Whether the table comes with its own test rows (``split_column`` or ``test_file``)."""
        return self.split_column is not None or self.test_file is not None

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
        """Hex SHA-256 of the features as read (gaps as NaN, whichever rows fill them), the labels and the given split.

        With a given split, which rows are the given test rows is part of the data; ``test_rows`` is not (the
        folds of ``qlit cv`` and the model refit on every training row share one identity of the data).
        """
        x = self._raw_x if self._raw_x is not None else self.x
        if self._given_test is None:
            return _sha256(x, self.y)
        return _sha256(x, self.y, self._given_test)

    def split(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """Row indices of ``train``, ``val`` and ``test``; with a given split, no given test row trains or validates.

        ``test_rows: given``: the given test rows test; the given training rows are split into training and
        validation rows (stratified ``val_fraction``, ``split_seed``), ``num_folds`` and ``fold`` unused.
        ``test_rows: fold``: fold ``fold`` of the stratified k-fold split of the given training rows only (the
        folds of ``qlit cv``); the given test rows are in no split. Without a given split: `KFoldDataModule.split`.
        """
        if self._given_test is None:
            return super().split(y)
        return given_split_rows(
            y, self._given_test, self.test_rows, self.class_names, self.num_folds, self.fold, self.val_fraction,
            self.split_seed, self.source_name(),
        )

    def split_identity(self) -> dict[str, Any]:
        """`KFoldDataModule.split_identity`, plus the given split: its source, ``test_rows`` and its test rows."""
        identity = super().split_identity()
        if self._given_test is not None:
            identity["given_split"] = given_split_identity(
                self.split_column, self.test_file, self.test_rows, self._given_test
            )
        return identity

    def row_ids(self) -> list[str]:
        """The id of each row of ``x`` (out-of-fold predictions): the id column's value, else the row number.

        Row numbers count the data rows of ``path`` from 0, then go on through those of ``test_file``. Needs
        `setup` first.
        """
        if self._ids is None:
            raise RuntimeError("row_ids() needs setup() first")
        return [str(i) for i in self._ids]

    def source_name(self) -> str:
        return f"{self.path} (column {self.target!r})"

    def describe_source(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "target": self.target,
            "features": list(self.feature_columns),
            "classes": list(self.class_names),
            "impute": self.impute,
            **given_split_source(self.split_column, self.test_file),
        }

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        if self._table is None:
            raise QlitError(
                f"data file not found: {self.path} (only qlit predict with --ckpt_path and a predict_file works "
                "without the training table)"
            )
        keep = np.isin(self._labels, self.class_names)
        rows = np.flatnonzero(keep)
        missing = "keep" if self.impute == "mean" else "error"
        parts = [  # with a test_file: the training table's rows, then the test file's
            np.column_stack([t.numbers(c, missing=missing, hint=IMPUTE_HINT) for c in self.feature_columns])
            for t in self._tables
        ]
        x = np.concatenate(parts)[rows]
        y = np.array([self.class_names.index(v) for v in self._labels[rows]], dtype=np.int64)
        if self._chosen_id_column is not None:
            ids = np.concatenate([t.frame[self._chosen_id_column].astype(str).to_numpy() for t in self._tables])
            self._ids = ids[rows]
        else:
            self._ids = rows.astype(str)  # the row's position among the data rows (path's, then test_file's), from 0
        self._given_test = self._all_test[rows] if self._all_test is not None else None
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
        if self._new_x is not None:
            return self._new_x
        table = self._new_table
        if self.feature_columns is None:
            self._need_checkpoint()
        for name in self.feature_columns:
            table.require(name, "a feature the model was trained on")
        id_column = self._chosen_id_column
        if self._boolean_features is not None:  # checkpoints of older qlit versions do not say
            check_boolean_features(table, self.feature_columns, self._boolean_features, self.path)
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
        ids = row_names(table, id_column)
        ignored = [c for c in table.columns if c not in self.feature_columns and c != id_column]
        if ignored and "ignored" not in self._reported:  # said once the file is found good: an error stays one line
            self._reported.add("ignored")
            print(f"qlit: {table.source}: ignoring columns that are not features: {few(ignored)}", file=sys.stderr)
        self._new_ids, self._new_x = ids, x
        return x

    def predict_dataloader(self) -> TensorLoader:
        if self._new_table is None:
            return self._test_fold_loader(self._ids[self.indices["test"]])
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

