"""How rows are split into folds: stratified k-fold with a validation part, nested inner folds, walk-forward in time.

Every function returns sorted row indices and refuses, in one line, a split a class or a span is too small for.
The data modules choose one (`KFoldDataModule.split`, `EquityDataModule.split`); nothing here reads data.
"""

from __future__ import annotations

import math

import numpy as np

from qlit.errors import QlitError


def stratified_split(
    y: np.ndarray, class_names: list[str], num_folds: int, fold: int, val_fraction: float, seed: int, source: str
) -> dict[str, np.ndarray]:
    """Fold ``fold`` of stratified k-fold: its test rows, and the rest split into training and validation rows.

    Args:
        y: Class index of every row.
        class_names: Names of the classes, for messages.
        num_folds: Number of folds (test sets).
        fold: Which fold's test rows to hold out.
        val_fraction: Share of the other rows that validate (stratified).
        seed: Seed of both shuffles.
        source: The data, for messages.

    Returns:
        Sorted ``train``, ``val`` and ``test`` row indices.

    Raises:
        QlitError: a class has too few rows for this split.
    """
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y, minlength=len(class_names))
    smallest, name = int(counts.min()), class_names[int(counts.argmin())]
    if smallest == 0:  # e.g. a genotype file holding a single population
        raise QlitError(f"{source} has no samples of class {name!r}; every class needs samples to train a classifier")
    if smallest < 2:
        raise QlitError(
            f"{source} has only {smallest} sample of class {name!r}, too few to split: even 2 folds need "
            "at least 2 samples of every class"
        )
    if smallest < num_folds:
        raise QlitError(
            f"num_folds={num_folds} is more than the {smallest} samples of class {name!r} in {source}; "
            f"use num_folds <= {smallest}"
        )
    folds = StratifiedKFold(num_folds, shuffle=True, random_state=seed)
    rest, test = list(folds.split(np.zeros(len(y)), y))[fold]
    _check_validation_split(y[rest], class_names, num_folds, fold, val_fraction, source)
    split = train_val_split(rest, y, val_fraction, seed)
    missing = [class_names[k] for k in range(len(class_names)) if not np.any(y[split["train"]] == k)]
    if missing:
        raise QlitError(
            f"val_fraction={val_fraction} leaves no training rows of class {missing[0]!r} in fold "
            f"{fold}; use a smaller val_fraction or more data"
        )
    return {**split, "test": np.sort(test)}


def stratified_inner_split(
    y: np.ndarray,
    outer: dict[str, np.ndarray],
    class_names: list[str],
    inner_folds: int,
    inner_fold: int,
    seed: int,
    fold: int,
) -> dict[str, np.ndarray]:
    """Nested cross-validation (``qlit tune``): inner fold ``inner_fold`` of the outer fold's non-test rows.

    The outer fold's training and validation rows are split into ``inner_folds`` stratified folds;
    one validates, the others train. The outer test rows are in no split at all: a trial can neither
    train on them, fit preprocessing on them, nor be scored on them.
    """
    from sklearn.model_selection import StratifiedKFold

    rest = np.sort(np.concatenate([outer["train"], outer["val"]]))
    counts = np.bincount(y[rest], minlength=len(class_names))
    if counts.min() < inner_folds:
        name = class_names[int(counts.argmin())]
        raise QlitError(
            f"inner_folds={inner_folds} is more than the {int(counts.min())} samples of class {name!r} "
            f"outside test fold {fold}; use inner_folds <= {int(counts.min())}"
        )
    folds = StratifiedKFold(inner_folds, shuffle=True, random_state=seed)
    train, val = list(folds.split(np.zeros(len(rest)), y[rest]))[inner_fold]
    return {"train": rest[train], "val": rest[val], "test": np.empty(0, dtype=np.int64)}


def validation_shortfall(n_rows: int, num_classes: int, val_fraction: float) -> tuple[str, int] | None:
    """``("validation" | "training", rows)`` when a stratified ``val_fraction`` split of ``n_rows`` rows leaves
    fewer rows on one side than there are classes; ``None`` when both sides can hold every class."""
    n_val = math.ceil(val_fraction * n_rows)  # scikit-learn's rounding of the validation size
    if n_val < num_classes:
        return "validation", n_val
    if n_rows - n_val < num_classes:
        return "training", n_rows - n_val
    return None


def train_val_split(rows: np.ndarray, y: np.ndarray, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """``rows`` split into sorted ``train`` and ``val`` rows, stratified by their classes ``y[rows]``."""
    from sklearn.model_selection import train_test_split

    train, val = train_test_split(rows, test_size=val_fraction, stratify=y[rows], random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val)}


def _check_validation_split(
    y_rest: np.ndarray, class_names: list[str], num_folds: int, fold: int, val_fraction: float, source: str
) -> None:
    """Refuse a split whose stratified training or validation rows would miss a class or be empty."""
    n_rest, k = len(y_rest), len(class_names)
    rest_counts = np.bincount(y_rest, minlength=k)
    if rest_counts.min() < 2:
        name = class_names[int(rest_counts.argmin())]
        fewer = "fewer folds or " if num_folds > 2 else ""
        raise QlitError(
            f"with num_folds={num_folds}, {source} leaves only {int(rest_counts.min())} sample of class "
            f"{name!r} outside test fold {fold}, too few for both training and validation; use {fewer}"
            "more samples of every class"
        )
    shortfall = validation_shortfall(n_rest, k, val_fraction)
    if shortfall is not None:
        part, count = shortfall
        raise QlitError(
            f"val_fraction={val_fraction} leaves {count} {part} row{'s' * (count != 1)} of the {n_rest} "
            f"outside the test fold; a stratified split needs at least {k} (one per class): use val_fraction "
            f"between {k / n_rest:.3g} and {(n_rest - k) / n_rest:.3g}"
        )


def walk_forward_folds(
    sample_dates: np.ndarray,
    label_end: np.ndarray,
    y: np.ndarray,
    num_folds: int,
    val_fraction: float,
    gap: int,
    test_size: int | None = None,
    window: int | None = None,
    source: str = "the data",
) -> list[dict[str, np.ndarray]]:
    """Train, validation and test rows of every walk-forward fold.

    Args:
        sample_dates: Date of each sample (datetime64), any order.
        label_end: Date of the close each sample's label is measured at.
        y: Labels, to check each training span holds both classes.
        num_folds: Number of consecutive test spans.
        val_fraction: Share of a training span's dates that validates.
        gap: Dates left out between the training rows, the validation rows and the test span.
        test_size: Dates per test span; default ``n_dates // (num_folds + 1)``.
        window: Most dates a training span (validation included) may cover; default all before.
        source: The data, for messages.

    Returns:
        One dict per fold with sorted ``train``, ``val`` and ``test`` row indices.

    Raises:
        QlitError: a span would be empty, or a training span holds a single class.
    """
    dates = np.unique(sample_dates)
    n = len(dates)
    position = np.searchsorted(dates, sample_dates)
    size = test_size if test_size is not None else n // (num_folds + 1)
    if size < 1 or num_folds * size >= n:
        raise QlitError(
            f"{source}: {n} dates are too few for num_folds={num_folds}"
            + (f" test spans of test_size={test_size} dates" if test_size is not None else "")
            + " and a training span before them; use fewer folds or more data"
        )
    folds = []
    for k in range(num_folds):
        test_start = n - (num_folds - k) * size
        span_end = test_start - gap
        span_start = max(0, span_end - window) if window is not None else 0
        n_val = max(1, int(round(val_fraction * (span_end - span_start))))
        val_start = span_end - n_val
        train_end = val_start - gap
        if train_end - span_start < 2:
            raise QlitError(
                f"{source}: fold {k} has no training span: {n} dates, test spans of {size}, gap={gap} "
                f"before validation ({n_val} dates) and test{f', window={window}' if window else ''}; "
                "use a smaller horizon or gap, fewer folds or more data"
            )
        in_train = (position >= span_start) & (position < train_end) & (label_end < dates[val_start])
        in_val = (position >= val_start) & (position < span_end) & (label_end < dates[test_start])
        in_test = (position >= test_start) & (position < test_start + size)
        fold = {name: np.flatnonzero(mask) for name, mask in (("train", in_train), ("val", in_val), ("test", in_test))}
        for name, rows in fold.items():
            if len(rows) == 0:
                raise QlitError(f"{source}: fold {k} has an empty {name} span (horizon or gap too large for the data)")
        if len(np.unique(y[fold["train"]])) < 2:
            raise QlitError(f"{source}: fold {k}'s training span holds a single class; use fewer folds or more data")
        folds.append(fold)
    return folds
