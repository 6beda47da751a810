"""Per-fold statistics: mean, spread and a confidence interval of the mean, the same for every report.

Folds of one data set share training rows, so their scores are not independent and the plain Student-t interval of
their mean is too narrow. ``qlit cv`` widens it with the corrected resampled t of Nadeau and Bengio (2003, "Inference
for the generalization error", Machine Learning 52): the variance of the mean of J fits is
``(1/J + n_test/n_train) · sd²`` instead of ``sd²/J``. The plain interval stays in the summaries beside it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import stats

METRIC = "test_acc"
STD_NOTE = "sample standard deviation over folds (ddof=1)"
CI_NOTE = "95% CI of the mean: mean ± t(0.975, k-1) · sd / sqrt(k), Student t with k-1 dof, clipped to [0, 1]"
CORRECTED_NOTE = (
    "95% CI of the mean over J = repeats × folds fits, corrected for shared training rows (Nadeau and Bengio 2003): "
    "mean ± t(0.975, J-1) · sd · sqrt(1/J + n_test/n_train), n_test/n_train the mean ratio of test to training "
    "(training + validation) rows of a fold; scores are clipped to their range. The plain interval "
    "(sd / sqrt(J)) is `ci95_plain`: it treats the folds as independent, which they are not, and is too narrow"
)


def interval(
    values: Sequence[float],
    clip: bool = True,
    test_train_ratio: float | None = None,
    high: float | None = 1.0,
) -> dict[str, Any]:
    """Mean, sample sd and 95% Student-t interval (J-1 dof) of the mean of per-fold values.

    Args:
        values: One score per fit.
        clip: Clip the interval to the score's range ``[0, high]``; paired differences are not clipped.
        test_train_ratio: Test rows over training rows of a fit: the interval then has the Nadeau–Bengio correction
            (``ci95``) and the plain one as ``ci95_plain``.
        high: The score's largest value (``None``: unbounded, as log-loss).

    Returns:
        ``mean``, ``std`` and ``ci95`` (and ``ci95_plain`` when corrected). One value has no spread and no interval:
        they are then ``None`` (JSON null), not a made-up 0 or [0, 1].
    """
    values = np.asarray(values, dtype=float)
    k = len(values)
    mean = float(values.mean())
    corrected = test_train_ratio is not None
    if k < 2:
        return {"mean": mean, "std": None, "ci95": None, **({"ci95_plain": None} if corrected else {})}
    sd = float(values.std(ddof=1))
    t = float(stats.t.ppf(0.975, k - 1))

    def bounds(half: float) -> list[float]:
        low, up = mean - half, mean + half
        if not clip:
            return [low, up]
        return [max(0.0, low), up if high is None else min(high, up)]

    plain = bounds(t * sd / math.sqrt(k))
    if not corrected:
        return {"mean": mean, "std": sd, "ci95": plain}
    return {"mean": mean, "std": sd, "ci95": bounds(t * sd * math.sqrt(1 / k + test_train_ratio)), "ci95_plain": plain}


def shown(value: float | None, fmt: str = ".3f") -> str:
    """A number for a markdown table; ``n/a`` where there is none (the sd or CI of one fold)."""
    return "n/a" if value is None else format(value, fmt)


def with_stats(
    folds: list[dict[str, Any]],
    metric: str | Iterable[str] = METRIC,
    test_train_ratio: float | None = None,
    unbounded: Iterable[str] = (),
) -> dict[str, Any]:
    """``folds`` with the mean, sd and 95% CI of each of their ``metric`` keys beside them.

    A score missing from one fold (``None``, as AUROC of a fold lacking a class) has no mean: all three are ``None``.
    """
    keys = [metric] if isinstance(metric, str) else list(metric)
    result: dict[str, Any] = {"folds": folds}
    for key in keys:
        values = [f.get(key) for f in folds]
        if any(v is None for v in values):
            s: dict[str, Any] = {"mean": None, "std": None, "ci95": None}
        else:
            s = interval(values, test_train_ratio=test_train_ratio, high=None if key in unbounded else 1.0)
        result.update({f"{key}_{name}": value for name, value in s.items()})
    return result


def paired(
    first: list[dict[str, Any]],
    second: list[dict[str, Any]],
    metric: str = METRIC,
    test_train_ratio: float | None = None,
) -> dict[str, Any]:
    """The fold-by-fold difference ``first - second`` of ``metric``, with its interval (not clipped)."""
    return interval([a[metric] - b[metric] for a, b in zip(first, second)], False, test_train_ratio)
