"""Daily price bars -> the direction of the next ``horizon`` days, split through time (walk-forward).

Every feature of day t is computed from bars up to and including day t; the label of day t is
whether the log return from the close of t to the close of t + ``horizon`` exceeds ``threshold``.
Features (``w`` is ``rolling_window``; a feature is present when its columns are):

==================  ========================================================================
``ret_1..ret_L``     one-day log returns of days t, t-1, …, t-L+1 (``L = lags``)
``vol_w``            sample standard deviation of the last w one-day log returns
``mom_w``            log return over the last w days, log(close_t / close_{t-w})
``ma_gap_w``         log(close_t / mean of the last w closes): distance from the moving average
``range``            log(high_t / low_t), the day's range (needs ``high`` and ``low``)
``overnight``        log(open_t / close_{t-1}), the overnight gap (needs ``open``)
``volume_change``    log(1 + volume_t) - log(1 + volume_{t-1}) (needs ``volume``)
``volume_ratio_w``   log(1 + volume_t) minus its mean over the last w days (needs ``volume``)
==================  ========================================================================

Walk-forward folds: the last ``num_folds * test_size`` sample dates are cut into ``num_folds``
consecutive test spans; fold k tests on the k-th. Its training span is every earlier date (or the
last ``window`` of them) up to ``gap`` dates before the test span; the last ``val_fraction`` of that
span validates, ``gap`` dates after the training rows. Training rows whose label ends on or after
the first validation date, and validation rows whose label ends on or after the first test date,
are dropped as well (purging), so no label overlaps the next span even when symbols' calendars differ.

Beside features and labels, `load` keeps each row's date, symbol and one-day simple return from its close to
the symbol's next close (`row_dates`, `row_symbols`, `next_day_returns`): what a daily trading strategy built on
the predictions earns (`qlit.evaluation.strategy`), whatever the label's ``horizon``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from torch.utils.data import TensorDataset

from qlit.data.base import KFoldDataModule
from qlit.data.preprocessing import Preprocessor
from qlit.data.price_features import OPTIONAL, bar_features, feature_names, match_columns, parse_dates
from qlit.data.sampling import TensorLoader
from qlit.data.splits import walk_forward_folds
from qlit.data.tables import BUILTIN, Table, read_table
from qlit.errors import QlitError

CLASS_NAMES = ["down", "up"]


def _int_option(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise QlitError(f"{name} must be an integer >= {minimum}, got {value!r}")


class EquityDataModule(KFoldDataModule):
    """Daily bars of one or more symbols -> up/down over the next ``horizon`` days, with walk-forward folds.

    Args:
        path: CSV/TSV/Parquet of daily bars: ``date`` and ``close``, optionally ``open``, ``high``,
            ``low``, ``volume`` and ``symbol`` (a long table of several symbols). Column names match
            case-insensitively. Default ``arch:sp500``: S&P 500 daily bars 1999–2018 bundled with ``arch``.
        symbols: Symbols of a long table to use; default all.
        price_column: Column whose closes define returns and labels (e.g. ``"adj close"``).
        date_format: ``strftime`` format of the dates; default inferred from the first date.
        lags: Number of one-day log returns among the features.
        rolling_window: Days of the rolling volatility, momentum, moving average and volume features.
        horizon: Days ahead the label looks: 1 if log(close_{t+horizon} / close_t) > threshold.
        threshold: Log-return threshold of the label.
        folds: ``"walk_forward"``, or ``"shuffled"`` (stratified k-fold, which leaks the future: for
            comparison only).
        test_size: Dates per walk-forward test span; default ``dates // (num_folds + 1)``.
        window: Most dates in a walk-forward training span (validation included); default expanding.
        gap: Dates between training, validation and test rows; at least ``horizon`` (the default).
        n_components: Principal components kept (PCA fit on the training rows), or ``None``.
        **kwargs: Split, batch and predict options of `KFoldDataModule`; ``predict_file`` is a bar
            table like ``path``, predicted on every day with a full history (the last days included).
    """

    def __init__(
        self,
        path: str = "arch:sp500",
        symbols: list[str] | None = None,
        price_column: str = "close",
        date_format: str | None = None,
        lags: int = 5,
        rolling_window: int = 20,
        horizon: int = 1,
        threshold: float = 0.0,
        folds: Literal["walk_forward", "shuffled"] = "walk_forward",
        test_size: int | None = None,
        window: int | None = None,
        gap: int | None = None,
        n_components: int | None = None,
        **kwargs,
    ) -> None:
        _int_option("lags", lags, 1)
        _int_option("rolling_window", rolling_window, 2)
        _int_option("horizon", horizon, 1)
        _int_option("test_size", test_size, 1, allow_none=True)
        _int_option("window", window, 2, allow_none=True)
        _int_option("gap", gap, 0, allow_none=True)
        if gap is not None and gap < horizon:
            raise QlitError(f"gap must be >= horizon={horizon} so that no label overlaps the next span, got {gap}")
        if folds not in ("walk_forward", "shuffled"):
            raise QlitError(f"folds must be 'walk_forward' or 'shuffled', got {folds!r}")
        if not np.isfinite(threshold):
            raise QlitError(f"threshold must be a finite number, got {threshold!r}")
        table = read_table(path)
        self._columns = match_columns(table, price_column)
        if symbols is not None and "symbol" not in self._columns:
            raise QlitError(f"{table.source}: symbols={symbols} needs a 'symbol' column")
        self.path = str(path)
        self.symbols = [str(s) for s in symbols] if symbols is not None else None
        self.price_column = price_column
        self.date_format = date_format
        self.lags = lags
        self.rolling_window = rolling_window
        self.horizon = horizon
        self.threshold = float(threshold)
        self.folds = folds
        self.test_size = test_size
        self.window = window
        self.gap = horizon if gap is None else gap
        self.n_components = n_components
        self.feature_names = feature_names(lags, rolling_window, set(self._columns) & set(OPTIONAL))
        if n_components is not None and not 1 <= n_components <= len(self.feature_names):
            count = len(self.feature_names)
            raise QlitError(f"n_components must be in 1..{count}, the number of features; got {n_components!r}")
        self.class_names = list(CLASS_NAMES)
        self.num_classes = 2
        self.raw_features = len(self.feature_names)
        self.num_features = n_components or self.raw_features
        self._table = table
        self.sample_ids: np.ndarray | None = None
        self.sample_dates: np.ndarray | None = None
        self.label_end: np.ndarray | None = None
        self.sample_symbols: np.ndarray | None = None
        self.sample_next_returns: np.ndarray | None = None
        self._new: tuple[list[str], np.ndarray] | None = None
        super().__init__(**kwargs)

    def make_preprocessor(self) -> Preprocessor:
        return Preprocessor(n_components=self.n_components)

    def describe_source(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "symbols": list(self.symbols) if self.symbols is not None else None,
            "price_column": self.price_column,
            "lags": self.lags,
            "rolling_window": self.rolling_window,
            "horizon": self.horizon,
            "threshold": self.threshold,
            "folds": self.folds,
            "test_size": self.test_size,
            "window": self.window,
            "gap": self.gap,
        }

    def _series(self, table: Table) -> list[tuple[str, np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
        """Per symbol: name, file row indices, dates and bars (date order checked, values validated)."""
        import pandas as pd

        columns = self._columns if table is self._table else match_columns(table, self.price_column)
        for role in sorted(self.feature_roles - set(columns)):
            table.require(role, f"the {role} column the model was trained with")
        if self.symbols is not None and "symbol" not in columns:
            table.require("symbol", "the symbol column")
        frame = table.frame
        dates = parse_dates(table, columns["date"], self.date_format)
        values = {}
        for role in ("close", *OPTIONAL):
            if role in columns and (role == "close" or role in self.feature_roles):
                values[role] = table.numbers(columns[role])
                minimum, word = (0.0, "negative") if role == "volume" else (np.nextafter(0, 1), "not positive")
                bad = values[role] < minimum
                if bad.any():
                    row = int(np.flatnonzero(bad)[0])
                    raise QlitError(
                        f"{table.source}: {table.where(row)}, column {columns[role]!r}: {values[role][row]} is {word}"
                    )
        if "high" in values and "low" in values:
            inverted = values["high"] < values["low"]
            if inverted.any():
                row = int(np.flatnonzero(inverted)[0])
                raise QlitError(
                    f"{table.source}: {table.where(row)} (date {pd.Timestamp(dates[row]).date()}): high "
                    f"{values['high'][row]} is below low {values['low'][row]} (columns {columns['high']!r} and "
                    f"{columns['low']!r}); a day's high is at least its low"
                )
        if "symbol" in columns:
            symbol_column = frame[columns["symbol"]]
            if symbol_column.isna().any():
                row = int(np.flatnonzero(symbol_column.isna().to_numpy())[0])
                raise QlitError(f"{table.source}: {table.where(row)}, column {columns['symbol']!r}: missing symbol")
            symbol_of = symbol_column.astype(str).str.strip().to_numpy()
            names = sorted(set(symbol_of.tolist()))
            if self.symbols is not None:
                unknown = [s for s in self.symbols if s not in names]
                if unknown:
                    raise QlitError(f"{table.source}: no rows of symbol {unknown[0]!r}")
                names = list(self.symbols)
        else:
            symbol_of = np.full(len(frame), "")
            names = [""]
        series = []
        for name in names:
            rows = np.flatnonzero(symbol_of == name)
            d = dates[rows]
            step = np.diff(d)
            if (step <= np.timedelta64(0)).any():
                i = int(np.flatnonzero(step <= np.timedelta64(0))[0])
                a, b = table.where(rows[i]), table.where(rows[i + 1])
                day = pd.Timestamp(d[i + 1]).date()
                of = f" (symbol {name!r})" if name else ""
                if step[i] == np.timedelta64(0):
                    raise QlitError(f"{table.source}: {a} and {b} both hold the date {day}{of}")
                raise QlitError(
                    f"{table.source}: {b}: date {day} comes before {pd.Timestamp(d[i]).date()} on {a}{of}; "
                    "sort the file by date"
                )
            series.append((name, rows, d, {role: v[rows] for role, v in values.items()}))
        return series

    @property
    def feature_roles(self) -> set[str]:
        present = set(self._columns) & set(OPTIONAL)
        used = set()
        if {"high", "low"} <= present:
            used |= {"high", "low"}
        return used | (present & {"open", "volume"})

    def _samples(self, table: Table, labelled: bool):
        """Features of every day with a full history (and, if ``labelled``, a label), ordered by date then symbol."""
        import pandas as pd

        xs, ys, ids, days, ends, names, nexts = [], [], [], [], [], [], []
        history = max(self.lags, self.rolling_window)
        for name, _, d, bars in self._series(table):
            need = history + 1 + (self.horizon if labelled else 0)
            if len(d) < need:
                of = f"symbol {name!r} has" if name else "it has"
                raise QlitError(
                    f"{table.source}: {of} {len(d)} days of bars; lags={self.lags}, rolling_window="
                    f"{self.rolling_window}" + (f" and horizon={self.horizon}" if labelled else "")
                    + f" need at least {need}"
                )
            x = bar_features(bars, self.lags, self.rolling_window)
            last = len(d) - self.horizon if labelled else len(d)
            keep = np.arange(history, last)
            xs.append(x[keep])
            if labelled:
                log_close = np.log(bars["close"])
                forward = log_close[keep + self.horizon] - log_close[keep]
                ys.append((forward > self.threshold).astype(np.int64))
                ends.append(d[keep + self.horizon])
            days.append(d[keep])
            names.append(np.full(len(keep), name or self._single_symbol(), dtype=object))
            close, after = bars["close"], np.minimum(keep + 1, len(d) - 1)
            # the last day of an unlabelled table has no next close yet: NaN, not a made-up return
            nexts.append(np.where(keep + 1 < len(d), close[after] / close[keep] - 1.0, np.nan))
            prefix = f"{name} " if name else ""
            ids.append(np.array([prefix + str(pd.Timestamp(t).date()) for t in d[keep]]))
        day = np.concatenate(days)
        symbol_rank = np.concatenate([np.full(len(v), i) for i, v in enumerate(days)])
        order = np.lexsort((symbol_rank, day))
        out = {
            "x": np.concatenate(xs)[order],
            "ids": np.concatenate(ids)[order],
            "dates": day[order],
            "symbols": np.concatenate(names)[order].astype(str),
            "next_returns": np.concatenate(nexts)[order],
        }
        if labelled:
            out["y"] = np.concatenate(ys)[order]
            out["label_end"] = np.concatenate(ends)[order]
        return out

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        samples = self._samples(self._table, labelled=True)
        if len(np.unique(samples["y"])) < 2:
            raise QlitError(
                f"{self._table.source}: every label is {CLASS_NAMES[int(samples['y'][0])]!r} with "
                f"threshold={self.threshold}; a classifier needs both classes"
            )
        self.sample_ids, self.sample_dates, self.label_end = samples["ids"], samples["dates"], samples["label_end"]
        self.sample_symbols, self.sample_next_returns = samples["symbols"], samples["next_returns"]
        return samples["x"], samples["y"]

    def _single_symbol(self) -> str:
        """The name of a table without a ``symbol`` column: the built-in table's or the file's (``sp500``, ``prices``)."""
        from pathlib import Path

        return self.path.split(":", 1)[1] if self.path in BUILTIN else Path(self.path).stem

    def _loaded(self, what: str) -> None:
        if self.sample_dates is None:
            raise RuntimeError(f"{what}() needs load() or setup() first")

    def row_dates(self) -> np.ndarray:
        """The date of every row (``datetime64[D]``), in the row order of ``x`` and ``y``."""
        self._loaded("row_dates")
        return self.sample_dates.astype("datetime64[D]")

    def row_symbols(self) -> np.ndarray:
        """The symbol of every row (strings); a table without a ``symbol`` column gets one name (`_single_symbol`)."""
        self._loaded("row_symbols")
        return self.sample_symbols.copy()

    def next_day_returns(self) -> np.ndarray:
        """Every row's simple return from its close to the next close of the same symbol (NaN where unknown).

        ``close`` is ``price_column`` (e.g. adjusted closes). The return is over one trading day whatever the
        ``horizon`` of the label: a strategy trading on the predicted direction rebalances daily, so with
        ``horizon > 1`` it acts on a forecast of the next ``horizon`` days while earning the next day's return.
        """
        self._loaded("next_day_returns")
        return self.sample_next_returns.copy()

    def row_ids(self) -> list[str]:
        """An id per row for a predictions file: its date (``2015-03-02``), or symbol and date (``AAPL 2015-03-02``)."""
        self._loaded("row_ids")
        return [str(i) for i in self.sample_ids]

    def fold_spans(self) -> dict[str, Any]:
        """First and last date (ISO) and row count of the current fold's ``train``, ``val`` and ``test`` rows.

        Returns:
            ``{"fold": k, "train": {"first": "2000-02-01", "last": …, "rows": n}, "val": {…}, "test": {…}}``;
            ``first`` and ``last`` are ``None`` for an empty split (the test split of a nested tuning fold).
        """
        if self.x is None:
            raise RuntimeError("fold_spans() needs setup() first")
        dates = self.row_dates()
        spans: dict[str, Any] = {"fold": self.fold}
        for split in ("train", "val", "test"):
            days = dates[self.indices[split]]
            spans[split] = {
                "first": str(days.min()) if len(days) else None,
                "last": str(days.max()) if len(days) else None,
                "rows": len(days),
            }
        return spans

    def split(self, y: np.ndarray) -> dict[str, np.ndarray]:
        if self.folds == "shuffled":
            return super().split(y)
        return self.walk_forward(y)[self.fold]

    def inner_split(self, y: np.ndarray, outer: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Nested walk-forward (``qlit tune``): inner fold ``inner_fold`` inside the outer training span.

        The outer fold's training and validation rows are cut into walk-forward folds of their own, with
        the same gap; the inner fold's test span validates and its training span trains. Everything stays
        before the outer test span, which is in no split.
        """
        if self.folds == "shuffled":
            return super().inner_split(y, outer)
        rest = np.sort(np.concatenate([outer["train"], outer["val"]]))
        inner = walk_forward_folds(
            self.sample_dates[rest], self.label_end[rest], y[rest], self.inner_folds, self.val_fraction,
            self.gap, None, self.window, f"{self._table.source} (outer fold {self.fold}'s training span)",
        )[self.inner_fold]
        return {"train": rest[inner["train"]], "val": rest[inner["test"]], "test": np.empty(0, dtype=np.int64)}

    def walk_forward(self, y: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
        """Rows of every walk-forward fold (needs `load` or `setup` first)."""
        if self.sample_dates is None:
            raise RuntimeError("walk_forward() needs load() or setup() first")
        return walk_forward_folds(
            self.sample_dates, self.label_end, self.y if y is None else y, self.num_folds, self.val_fraction,
            self.gap, self.test_size, self.window, self._table.source,
        )

    def setup(self, stage: str | None = None) -> None:
        super().setup(None if stage == "predict" else stage)
        if stage == "predict" and self.predict_file is not None and self._new is None:
            samples = self._samples(read_table(self.predict_file, what="predict file"), labelled=False)
            self._new = (samples["ids"].tolist(), samples["x"])

    def predict_dataloader(self) -> TensorLoader:
        if self._new is None:
            return self._test_fold_loader(self.sample_ids[self.indices["test"]].tolist())
        self.predict_ids = list(self._new[0])
        return self._loader(TensorDataset(self.preprocessor.transform(self._new[1])))
