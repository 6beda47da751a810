"""Per-fold statistics: mean, spread and a confidence interval of the mean, the same for every report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

METRIC = "test_acc"
STD_NOTE = "sample standard deviation over folds (ddof=1)"
CI_NOTE = "95% CI of the mean: mean ± t(0.975, k-1) · sd / sqrt(k), Student t with k-1 dof, clipped to [0, 1]"


def interval(values: Sequence[float], clip: bool = True) -> dict[str, Any]:
    """Mean, sample sd and 95% Student-t interval (k-1 dof) of the mean of per-fold values.

    Accuracies are clipped to [0, 1]; paired differences (``clip=False``) are not. One value has no
    spread and no interval: ``std`` and ``ci95`` are then ``None`` (JSON null), not a made-up 0 or [0, 1].
    """
    values = np.asarray(values, dtype=float)
    k = len(values)
    mean = float(values.mean())
    if k < 2:
        return {"mean": mean, "std": None, "ci95": None}
    sd = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, k - 1) * sd / math.sqrt(k))
    low, high = mean - half, mean + half
    return {"mean": mean, "std": sd, "ci95": [max(0.0, low), min(1.0, high)] if clip else [low, high]}


def shown(value: float | None, fmt: str = ".3f") -> str:
    """A number for a markdown table; ``n/a`` where there is none (the sd or CI of one fold)."""
    return "n/a" if value is None else format(value, fmt)


def with_stats(folds: list[dict[str, Any]], metric: str = METRIC) -> dict[str, Any]:
    """``folds`` with the mean, sd and 95% CI of their ``metric`` beside them."""
    s = interval([f[metric] for f in folds])
    return {"folds": folds, f"{metric}_mean": s["mean"], f"{metric}_std": s["std"], f"{metric}_ci95": s["ci95"]}


def paired(first: list[dict[str, Any]], second: list[dict[str, Any]], metric: str = METRIC) -> dict[str, Any]:
    """The fold-by-fold difference ``first - second`` of ``metric``, with its interval (not clipped)."""
    return interval([a[metric] - b[metric] for a, b in zip(first, second)], clip=False)
