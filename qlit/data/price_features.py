"""Features of daily price bars, each day's computed from that day's bars and earlier ones only.

The features and their names are listed in `qlit.data.equity`'s docstring.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def feature_names(lags: int, rolling_window: int, present: set[str]) -> list[str]:
    """Names of the features computed from bars with the optional columns ``present``."""
    w = rolling_window
    names = [f"ret_{j}" for j in range(1, lags + 1)] + [f"vol_{w}", f"mom_{w}", f"ma_gap_{w}"]
    if {"high", "low"} <= present:
        names.append("range")
    if "open" in present:
        names.append("overnight")
    if "volume" in present:
        names += ["volume_change", f"volume_ratio_{w}"]
    return names


def _trailing(values: np.ndarray, w: int, reduce) -> np.ndarray:
    """``reduce`` over each window of the last ``w`` values ending at t (NaN before a full window)."""
    out = np.full(len(values), np.nan)
    if len(values) >= w:
        out[w - 1:] = reduce(sliding_window_view(values, w), axis=-1)
    return out


def _lagged(values: np.ndarray, k: int) -> np.ndarray:
    out = np.full(len(values), np.nan)
    if k < len(values):
        out[k:] = values[: len(values) - k]
    return out


def bar_features(bars: dict[str, np.ndarray], lags: int, rolling_window: int) -> np.ndarray:
    """Features of one symbol's bars (arrays in date order), one row per day, NaN where history is short.

    Each row t is computed from bars 0..t only: every window ends at t.
    """
    w = rolling_window
    log_close = np.log(bars["close"])
    ret = np.concatenate([[np.nan], np.diff(log_close)])
    columns = [_lagged(ret, j) for j in range(lags)]
    columns.append(_trailing(ret, w, lambda a, axis: a.std(axis=axis, ddof=1)))
    columns.append(log_close - _lagged(log_close, w))
    columns.append(log_close - np.log(_trailing(bars["close"], w, np.mean)))
    if "high" in bars and "low" in bars:
        columns.append(np.log(bars["high"]) - np.log(bars["low"]))
    if "open" in bars:
        columns.append(np.log(bars["open"]) - _lagged(log_close, 1))
    if "volume" in bars:
        log_volume = np.log1p(bars["volume"])
        columns.append(log_volume - _lagged(log_volume, 1))
        columns.append(log_volume - _trailing(log_volume, w, np.mean))
    return np.column_stack(columns)
