"""Daily price bars: a table's bar columns and dates, and the features of each day from its bars and earlier ones.

The features and their names are listed in `qlit.data.equity`'s docstring.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qlit.data.tables import Table
from qlit.errors import QlitError

OPTIONAL = ("open", "high", "low", "volume")


def match_columns(table: Table, price_column: str) -> dict[str, str]:
    """Role -> column name (``date``, ``close``, optional ones), matched case-insensitively.

    Args:
        table: A table of daily bars.
        price_column: The column of closes (``close`` role), e.g. ``"adj close"``.
    """
    by_lower: dict[str, str] = {}
    for name in table.columns:
        key = name.strip().lower()
        if key in by_lower:
            raise QlitError(f"{table.source}: columns {by_lower[key]!r} and {name!r} differ only in case")
        by_lower[key] = name
    roles = {"date": "date", "close": price_column.strip().lower()}
    found = {}
    for role, key in roles.items():
        if key not in by_lower:
            table.require(key, f"the {role} column")
        found[role] = by_lower[key]
    for role in (*OPTIONAL, "symbol"):
        if role in by_lower:
            found[role] = by_lower[role]
    return found


def parse_dates(table: Table, name: str, date_format: str | None) -> np.ndarray:
    """Column ``name`` of ``table`` as ``datetime64[ns]`` (time zones dropped); every row must hold a date.

    Args:
        table: A table of daily bars.
        name: The date column.
        date_format: ``strftime`` format of the dates, or ``None`` to infer it from the first date.
    """
    import pandas as pd

    column = table.frame[name]
    try:
        parsed = pd.to_datetime(column, format=date_format, errors="coerce")
    except (ValueError, TypeError) as err:
        raise QlitError(f"{table.source}: column {name!r} does not hold dates ({err})") from None
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = column.iloc[row]
        what = "missing date" if pd.isna(value) else f"{value!r} is not a date"
        fmt = f" in the format {date_format!r}" if date_format else " like the first date"
        raise QlitError(f"{table.source}: {table.where(row)}, column {name!r}: {what}"
                        + ("" if pd.isna(value) else fmt))
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_localize(None)
    return parsed.to_numpy(dtype="datetime64[ns]")


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
