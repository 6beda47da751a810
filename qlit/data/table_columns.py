"""The roles of the columns of a user's table: its features, the target's labels and classes, the sample ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qlit.data.tables import BUILTIN, Table
from qlit.errors import QlitError

_ANNOUNCED: set[tuple[str, str | None]] = set()  # (table, id column) notices already printed by this process


def choose_features(
    table: Table, features: list[str] | None, target: str, id_column: str | None, split_column: str | None
) -> list[str]:
    """The feature columns: ``features`` checked against ``table``, or every numeric column but the others named.

    Args:
        table: The data table.
        features: Feature columns, in order, or ``None`` for every numeric column except ``target``,
            ``id_column`` and ``split_column``.
        target: The label column.
        id_column: The sample-name column, or ``None``.
        split_column: The column of ``train``/``test`` values, or ``None``.
    """
    if features is None:
        not_features = (target, id_column, split_column)
        features = [c for c in table.columns if c not in not_features and table.is_numeric(c)]
        if not features:
            raise QlitError(f"{table.source}: no numeric column besides the target {target!r} to use as a feature")
        return features
    features = [str(f) for f in features]
    if not features or len(set(features)) != len(features):
        raise QlitError(f"features must name at least one column, each once, got {features}")
    for name in features:
        table.require(name, "a feature")
        if name in (target, id_column):
            raise QlitError(f"features must not include the target or id column, got {name!r}")
        if name == split_column:
            raise QlitError(
                f"features must not include the split_column {name!r}: it says which rows test, it is not a measurement"
            )
    return features


def choose_classes(tables: list[Table], target: str, classes: list[str | int] | None) -> tuple[np.ndarray, list[str]]:
    """The target column of the tables, one after the other, as strings, and the classes kept, in order.

    Args:
        tables: The data table, then any table of given test rows.
        target: The label column.
        classes: Label values to keep, in this order, or ``None`` for all, sorted (`read_labels`).

    Raises:
        QlitError: a class is unknown or named twice, or fewer than two classes are kept.
    """
    labels, names = read_labels(tables, target)
    if classes is None:
        chosen = names
    else:
        chosen = [str(c) for c in classes]
        unknown = [c for c in chosen if c not in names]
        if unknown:
            sources = " and ".join(t.source for t in tables)
            raise QlitError(f"{sources}: class {unknown[0]!r} is not in column {target!r} (it holds {few(names)})")
        if len(set(chosen)) != len(chosen):
            raise QlitError(f"classes must name each class once, got {chosen}")
    if len(chosen) < 2:
        raise QlitError(
            f"{tables[0].source}: column {target!r} holds a single class {chosen[0]!r}; a classifier needs at least two"
        )
    return labels, chosen


def read_labels(tables: list[Table], target: str) -> tuple[np.ndarray, list[str]]:
    """The target column of the tables, one after the other, as strings, and its distinct values sorted.

    Integers sort by value when every table holds numbers in the target column, else labels sort as text.
    """
    parts = [_table_labels(table, target) for table in tables]
    labels = np.concatenate([part[0] for part in parts])
    distinct = set(labels.tolist())
    if all(part[1] for part in parts):
        return labels, sorted(distinct, key=int)
    return labels, sorted(distinct)


def choose_id_column(tables: list[Table], used: list[str | None]) -> str | None:
    """The first column of the tables besides ``used`` naming every row of all of them once; said once per table."""
    import pandas as pd

    table = whole = tables[0]
    if len(tables) > 1:
        whole = Table(pd.concat([t.frame for t in tables], ignore_index=True), table.source, table.text)
    name = _unique_column(whole, used)
    _announce_id(table.source, name)
    return name


def boolean_columns(table: Table, names: list[str]) -> list[str]:
    """The columns among ``names`` that hold True/False."""
    import pandas as pd

    return [c for c in names if pd.api.types.is_bool_dtype(table.frame[c])]


def check_boolean_features(table: Table, features: list[str], boolean_features: list[str], trained_on: str) -> None:
    """Refuse a True/False column of a predict table where the model was trained on numbers (from ``trained_on``)."""
    for name in boolean_columns(table, features):
        if name not in boolean_features:
            raise QlitError(
                f"{table.source}: column {name!r} holds True/False, but the model was trained on numbers in "
                f"it (from {trained_on}); give the numbers it was trained on"
            )


def _unique_column(table: Table, used: list[str | None]) -> str | None:
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
        print(
            f"qlit: {source} has no column of unique sample names; ids are row numbers from 0 "
            "(set data.id_column to choose)"
        )


def row_names(table: Table, id_column: str | None) -> list[str]:
    """The name of each row of ``table``: its ``id_column`` value if the table has that column, else its number."""
    if id_column is not None and id_column in table.columns:
        return table.frame[id_column].astype(str).tolist()
    return [str(i) for i in range(len(table.frame))]


def few(names: list[str], limit: int = 8) -> str:
    """The first ``limit`` names, quoted, and how many there are in all if that is more."""
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _table_labels(table: Table, target: str) -> tuple[np.ndarray, bool]:
    """One table's target column as strings (integers written as integers), and whether it holds numbers."""
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
        return np.array([str(v) for v in values.astype(np.int64)]), True
    return np.array([str(v).strip() for v in column.tolist()]), False
