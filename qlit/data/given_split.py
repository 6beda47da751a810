"""A table's own train/test split (``split_column`` or ``test_file``): which rows test, and how a fold uses them.

`TabularDataModule` reads the given split with `read_given_split` into a boolean "is test" mask over the rows of
its table(s), splits with `given_split_rows` (``test_rows: given`` or ``fold``) and records the split with
`given_split_identity`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qlit.data.base import _sha256
from qlit.data.splits import stratified_split, train_val_split, validation_shortfall
from qlit.data.table_columns import few
from qlit.data.tables import BUILTIN, Table, read_table
from qlit.errors import QlitError

SPLIT_VALUES = ("train", "test")
TEST_ROWS = ("given", "fold")


def check_given_split(
    split_column: str | None, test_file: str | None, test_rows: str | None, target: str, id_column: str | None
) -> bool:
    """Refuse contradictory given-split settings; return whether the table comes with its own test rows."""
    if split_column is not None and test_file is not None:
        raise QlitError(
            f"give split_column ({split_column!r}) or test_file ({test_file}), not both: each says which rows test"
        )
    if test_rows not in (None, *TEST_ROWS):
        raise QlitError(f"test_rows must be null, 'given' or 'fold', got {test_rows!r}")
    given = split_column is not None or test_file is not None
    if test_rows == "given" and not given:
        raise QlitError(
            "test_rows: given needs the given test rows of a split_column or a test_file; without them the test "
            "rows are the held-out fold (test_rows: null or fold)"
        )
    if split_column is not None and split_column in (target, id_column):
        role = "target" if split_column == target else "id_column"
        raise QlitError(f"split_column {split_column!r} is the {role}; name the column of train/test values")
    return given


def read_given_split(
    table: Table, path: str, split_column: str | None, test_file: str | None
) -> tuple[list[Table], np.ndarray | None]:
    """The tables whose rows are the data and whether each of their rows is a given test row.

    Args:
        table: The table read from ``path``.
        path: The data file's path (or built-in name), which ``test_file`` must not be.
        split_column: Column of ``table`` holding ``train``/``test``, or ``None``.
        test_file: A table of the test rows with the columns of ``table``, or ``None``.

    Returns:
        ``[table]`` (``[table, test table]`` with a ``test_file``) and, over their rows one table after the
        other, the boolean "is test" mask; ``None`` without a given split.
    """
    if split_column is not None:
        table.require(split_column, "the split_column")
        return [table], _split_values(table, split_column)
    if test_file is None:
        return [table], None
    if test_file not in BUILTIN and Path(test_file).resolve() == Path(path).resolve():
        raise QlitError(f"test_file {test_file} is the data file itself; give the table of the test rows")
    test_table = read_table(test_file, what="test file")
    _check_same_columns(table, test_table)
    return [table, test_table], np.repeat([False, True], [len(table.frame), len(test_table.frame)])


def check_given_rows(is_test: np.ndarray, kept: np.ndarray, tables: list[Table], split_column: str | None) -> None:
    """Refuse a given split that leaves no training or no test rows among the kept classes."""
    for test, name in ((False, "training"), (True, "test")):
        given = is_test == test
        if not np.any(kept & given):
            if np.any(given):  # there are some, but `classes` left them all out
                which = f"the {SPLIT_VALUES[test]!r} rows of column {split_column!r}"
                if split_column is None:
                    which = f"{tables[int(test)].source}'s rows"
                why = f"{which} are all of classes that data.classes leaves out"
            else:
                why = f"column {split_column!r} holds no {SPLIT_VALUES[test]!r} value"
            raise QlitError(f"{tables[0].source}: no given {name} rows ({why})")


def given_split_rows(
    y: np.ndarray,
    is_test: np.ndarray,
    test_rows: str,
    class_names: list[str],
    num_folds: int,
    fold: int,
    val_fraction: float,
    seed: int,
    source: str,
) -> dict[str, np.ndarray]:
    """Row indices of ``train``, ``val`` and ``test`` under a given split: no given test row trains or validates.

    Args:
        y: Class index of every row.
        is_test: Whether each row is a given test row.
        test_rows: ``"given"``: the given test rows test, the given training rows are split into training and
            validation rows (stratified ``val_fraction``, ``seed``). ``"fold"``: fold ``fold`` of the stratified
            ``num_folds``-fold split of the given training rows only; the given test rows are in no split.
        class_names: The class names, in the order of the class indices.
        num_folds: Folds of ``test_rows: fold``.
        fold: The fold of ``test_rows: fold``.
        val_fraction: Share of the training rows that validates.
        seed: Seed of the split.
        source: Where the rows come from, for errors (``"… of data.csv (column 'label')"``).
    """
    train_rows = np.flatnonzero(~is_test)
    source = f"the given training rows of {source}"
    if test_rows == "fold":
        folds = stratified_split(y[train_rows], class_names, num_folds, fold, val_fraction, seed, source)
        return {name: train_rows[rows] for name, rows in folds.items()}
    return {
        **_given_train_val(y, train_rows, class_names, val_fraction, seed, source),
        "test": np.flatnonzero(is_test),
    }


def given_split_identity(
    split_column: str | None, test_file: str | None, test_rows: str, is_test: np.ndarray
) -> dict[str, Any]:
    """The record of a given split in a split identity: its source, ``test_rows`` and its test rows."""
    test = np.flatnonzero(is_test)
    return {
        **({"split_column": split_column} if split_column else {"test_file": test_file}),
        "test_rows": test_rows,
        "n_test": len(test),
        "test_sha256": _sha256(test),
    }


def given_split_source(split_column: str | None, test_file: str | None) -> dict[str, str]:
    """The given split's part of a data source's description: ``split_column`` or ``test_file``, if either."""
    source = {}
    if split_column is not None:
        source["split_column"] = split_column
    if test_file is not None:
        source["test_file"] = test_file
    return source


def _split_values(table: Table, column: str) -> np.ndarray:
    """Whether each row of ``table`` is a test row, by its ``train``/``test`` value in ``column`` (any case)."""
    values = table.frame[column]
    missing = values.isna().to_numpy()
    text = np.array([str(v).strip().lower() for v in values.tolist()])
    bad = missing | ~np.isin(text, SPLIT_VALUES)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        what = "missing split value" if missing[row] else f"split value {str(values.iloc[row]).strip()!r}"
        raise QlitError(
            f"{table.source}: {table.where(row)}, column {column!r} (the split_column): {what}; every row needs "
            "'train' or 'test'"
        )
    return text == "test"


def _check_same_columns(table: Table, test: Table) -> None:
    """Refuse a test file whose columns are not those of the training table (any order)."""
    absent = [c for c in table.columns if c not in test.columns]
    if absent:
        raise QlitError(
            f"{test.source}: no column {absent[0]!r}, which {table.source} has; a test_file needs the same columns"
            + (f" (missing here: {few(absent)})" if len(absent) > 1 else "")
        )
    extra = [c for c in test.columns if c not in table.columns]
    if extra:
        raise QlitError(
            f"{test.source}: column {extra[0]!r} is not in {table.source}; a test_file needs the same columns"
            + (f" (extra here: {few(extra)})" if len(extra) > 1 else "")
        )


def _given_train_val(
    y: np.ndarray, rows: np.ndarray, class_names: list[str], val_fraction: float, seed: int, source: str
) -> dict[str, np.ndarray]:
    """The given training rows ``rows`` split into sorted ``train`` and ``val`` rows, stratified by class."""
    k = len(class_names)
    counts = np.bincount(y[rows], minlength=k)
    if counts.min() < 2:
        smallest, name = int(counts.min()), class_names[int(counts.argmin())]
        raise QlitError(
            f"{source} hold {smallest} sample{'s' * (smallest != 1)} of class {name!r}, too few for both training "
            "and validation; every class needs at least 2 training rows"
        )
    shortfall = validation_shortfall(len(rows), k, val_fraction)
    if shortfall is not None:
        part, count = shortfall
        raise QlitError(
            f"val_fraction={val_fraction} leaves {count} {part} row{'s' * (count != 1)} of the {len(rows)} "
            f"{source}; a stratified split needs at least {k} (one per class): use val_fraction between "
            f"{k / len(rows):.3g} and {(len(rows) - k) / len(rows):.3g}"
        )
    return train_val_split(rows, y, val_fraction, seed)
