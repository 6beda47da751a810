"""What a trader reads: daily strategies built on predicted directions, net of costs, against buy-and-hold.

Every model's up-probability of each test row becomes a daily position in that row's symbol: **long/flat**
holds 1 when the model predicts up (``p > 0.5``) and 0 otherwise; **long/short** holds +1 or -1. A position
taken on day t earns the simple return from the close of t to the next close (``EquityDataModule.next_day_returns``),
whatever the label's horizon: the strategies rebalance daily. Each day pays ``cost_bps / 1e4`` per unit of
change in position, the first day's entry included, so a buy-and-hold row pays its entry once.

With several symbols, the strategies of one kind are held equal-weight (weight ``position / n`` on a day with
``n`` symbols), buy-and-hold is the equal-weight long of every symbol, and a **cross-sectional** long/short
portfolio ranks the symbols of each day by up-probability: the top half long, the bottom half short, each leg
0.5 of capital (gross exposure 1, like the other rows), symbols tied across the cut sharing the average weight.
Costs are charged on weight changes the same way everywhere.

Pure NumPy (the figure is `qlit.evaluation.plots.equity_curves_figure`); everything `strategy_summary`
returns is JSON-friendly.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from qlit.errors import QlitError

TRADING_DAYS = 252
KINDS = ("long_flat", "long_short")
TITLES = {
    "long_flat": "Long/flat: long when the model predicts up, else in cash",
    "long_short": "Long/short: long when the model predicts up, else short",
    "cross_sectional": "Cross-sectional long/short: long the top half of symbols by up-probability, short the bottom half",
}
HOW_TO_READ = (
    "Read each model against buy and hold over the same days: a model that beats the majority class by chance "
    "should not beat buy and hold net of costs, and a Sharpe ratio or cumulative return above it that does not "
    "survive a higher cost_bps, or holds in only one fold, is not an edge."
)


def positions_from_probability(up_probability: np.ndarray, kind: Literal["long_flat", "long_short"]) -> np.ndarray:
    """Daily positions from predicted up-probabilities: 1 or 0 (``long_flat``), +1 or -1 (``long_short``).

    The model predicts up when ``p > 0.5`` (a tie is down, as an argmax over ``[down, up]`` reads it).
    """
    up = np.asarray(up_probability, dtype=float) > 0.5
    if kind == "long_flat":
        return up.astype(float)
    if kind == "long_short":
        return np.where(up, 1.0, -1.0)
    raise QlitError(f"kind must be 'long_flat' or 'long_short', got {kind!r}")


def strategy_returns(returns: np.ndarray, weights: np.ndarray, cost_bps: float) -> np.ndarray:
    """Daily net returns of holding ``weights`` on each day, paying ``cost_bps`` per unit of weight change.

    Args:
        returns: Simple return of each day's holding, from its close to the next close: ``(days,)`` for one
            asset or ``(days, assets)``; finite.
        weights: Position (one asset) or weight of each asset held over that day, the same shape. The
            position before the first day is 0, so the first day pays its entry.
        cost_bps: Cost in basis points per unit of absolute weight change (5 = 0.05 % of the traded value).

    Returns:
        ``(days,)`` net returns: ``sum_j w[t, j] * r[t, j] - cost_bps / 1e4 * sum_j |w[t, j] - w[t-1, j]|``.
    """
    _check_cost(cost_bps)
    r, w = _as_days_by_assets(returns), _as_days_by_assets(weights)
    if r.shape != w.shape:
        raise QlitError(f"returns of shape {np.shape(returns)} and weights of shape {np.shape(weights)} differ")
    if not np.isfinite(r).all() or not np.isfinite(w).all():
        raise QlitError("returns and weights must be finite (drop days without a next close first)")
    return (w * r).sum(axis=1) - cost_bps / 1e4 * _turnover(w)


def strategy_metrics(net: np.ndarray, weights: np.ndarray) -> dict[str, Any]:
    """The numbers a trader reads of one strategy's daily net returns (`strategy_returns`) and its weights.

    Returns:
        ``days``; ``cumulative_return`` (compounded, ``prod(1 + r) - 1``); ``sharpe`` (annualised:
        ``mean / sd * sqrt(252)``, sample sd, ``None`` with fewer than 2 days or equal returns every day);
        ``max_drawdown`` (largest fall of the compounded equity from its running peak, starting at 1, as a
        positive fraction); ``hit_rate`` (share of days in the market, gross exposure above 0, whose net return
        is above 0; ``None`` if never in the market); ``days_in_market``; ``turnover`` (mean absolute weight
        change per day, the first day's entry included).
    """
    net = np.asarray(net, dtype=float)
    w = _as_days_by_assets(weights)
    days = len(net)
    equity = np.cumprod(1.0 + net)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    in_market = np.abs(w).sum(axis=1) > 0
    sharpe = None
    if days >= 2 and np.ptp(net) > 0:
        sharpe = float(net.mean() / net.std(ddof=1) * math.sqrt(TRADING_DAYS))
    return {
        "days": int(days),
        "cumulative_return": float(equity[-1] - 1.0) if days else 0.0,
        "sharpe": sharpe,
        "max_drawdown": float(max(0.0, (1.0 - equity / peak).max())) if days else 0.0,
        "hit_rate": float((net[in_market] > 0).mean()) if in_market.any() else None,
        "days_in_market": int(in_market.sum()),
        "turnover": float(_turnover(w).mean()) if days else 0.0,
    }


def cross_sectional_weights(up_probability: np.ndarray) -> np.ndarray:
    """One day's cross-sectional long/short weights of the symbols present (at least 2).

    The top ``n // 2`` symbols by up-probability are long ``0.5 / (n // 2)`` each, the bottom ``n // 2`` short as
    much (the middle one of an odd ``n`` is flat); symbols with equal probabilities share their average weight, so
    a constant prediction holds nothing rather than an arbitrary order.
    """
    p = np.asarray(up_probability, dtype=float)
    n = len(p)
    if n < 2:
        raise QlitError(f"a cross-sectional portfolio needs at least 2 symbols on a day, got {n}")
    half = n // 2
    order = np.argsort(-p, kind="stable")
    by_rank = np.zeros(n)
    by_rank[:half], by_rank[n - half :] = 0.5 / half, -0.5 / half
    weights = np.empty(n)
    weights[order] = by_rank
    for value in np.unique(p):
        tied = p == value
        weights[tied] = weights[tied].mean()
    return weights


def strategy_summary(
    dates: np.ndarray,
    symbols: np.ndarray,
    returns: np.ndarray,
    up_probability: Mapping[str, np.ndarray],
    folds: np.ndarray,
    cost_bps: float,
    spans: Mapping[int, Mapping[str, Any]] | Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every model's daily strategies on its out-of-fold predictions, per fold and pooled, against buy-and-hold.

    Args:
        dates: Date of each test row (``datetime64`` or ISO strings).
        symbols: Symbol of each row (one name throughout for a single series).
        returns: Each row's simple return from its close to the symbol's next close; NaN rows are dropped
            and counted (``dropped_rows``).
        up_probability: Model name -> predicted probability of up for each row, in ``[0, 1]``.
        folds: Index of the fold whose test span holds each row.
        cost_bps: Cost in basis points per unit of position (weight) change, ``>= 0``.
        spans: Optional ``EquityDataModule.fold_spans()`` of each fold (a list in fold order, or by fold index),
            copied into the per-fold entries for `strategy_table`.

    Returns:
        ``cost_bps``, ``models``, ``symbols``, ``rows``, ``dropped_rows``; ``folds``: one entry per fold with
        ``fold``, ``spans``, ``first_test_date``, ``last_test_date``, ``dropped_rows`` and ``strategies``;
        ``pooled``: the same over all test days in date order (a position carries over from one span into the
        next); ``curves``: the pooled dates and compounded equity of buy-and-hold and each model's long/flat
        strategy (long lists: leave them out of a summary file if its size matters). ``strategies`` maps
        ``buy_and_hold`` to `strategy_metrics` and ``long_flat``, ``long_short`` (and, with several symbols,
        ``cross_sectional``) to model name -> `strategy_metrics`.
    """
    _check_cost(cost_bps)
    try:
        day = np.asarray(dates, dtype="datetime64[D]")
    except (TypeError, ValueError) as err:
        raise QlitError(f"dates must be dates (datetime64 or ISO strings): {err}") from None
    symbols = np.asarray(symbols).astype(str)
    returns = np.asarray(returns, dtype=float)
    folds = np.asarray(folds)
    n = len(day)
    for name, array in (("symbols", symbols), ("returns", returns), ("folds", folds)):
        if array.shape != (n,):
            raise QlitError(f"{name} has shape {array.shape}, expected ({n},) like dates")
    if folds.size and not np.issubdtype(folds.dtype, np.integer):
        raise QlitError(f"folds must hold fold indices (integers), got dtype {folds.dtype}")
    probabilities = {}
    for model, p in up_probability.items():
        p = np.asarray(p, dtype=float)
        if p.shape != (n,):
            raise QlitError(f"up_probability[{model!r}] has shape {p.shape}, expected ({n},) like dates")
        if not (np.isfinite(p) & (p >= 0) & (p <= 1)).all():
            raise QlitError(f"up_probability[{model!r}] holds a value outside [0, 1] or NaN")
        probabilities[str(model)] = p
    if np.isinf(returns).any():
        raise QlitError("returns holds an infinite value")
    keys = np.char.add(np.char.add(day.astype(str), " "), symbols)
    if len(np.unique(keys)) < n:
        _, first, counts = np.unique(keys, return_index=True, return_counts=True)
        raise QlitError(f"two rows share the date and symbol {keys[first[counts > 1][0]]!r}")
    known = ~np.isnan(returns)
    if not known.any():
        raise QlitError("no row has a next-day return: nothing to trade")
    names = sorted(set(symbols.tolist()))
    several = len(names) > 1
    span_of = _spans_by_fold(spans)

    def strategies(rows: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
        book = _Book(day[rows], symbols[rows], returns[rows])
        out: dict[str, Any] = {"buy_and_hold": book.metrics(np.ones(len(rows)), cost_bps)}
        equity = {"buy_and_hold": book.equity}
        for kind in KINDS:
            out[kind] = {}
            for model, p in probabilities.items():
                out[kind][model] = book.metrics(positions_from_probability(p[rows], kind), cost_bps)
                if kind == "long_flat":
                    equity[model] = book.equity
        if several:
            out["cross_sectional"] = {
                model: book.cross_sectional(p[rows], cost_bps) for model, p in probabilities.items()
            }
        return out, {"dates": [str(d) for d in book.days], "equity": equity}

    per_fold = []
    for k in np.unique(folds):
        in_fold = folds == k
        rows = np.flatnonzero(in_fold & known)
        if len(rows) == 0:
            raise QlitError(f"fold {int(k)} has no row with a next-day return")
        result, _ = strategies(rows)
        per_fold.append({
            "fold": int(k),
            "spans": span_of.get(int(k)),
            "first_test_date": str(day[rows].min()),
            "last_test_date": str(day[rows].max()),
            "dropped_rows": int((in_fold & ~known).sum()),
            "strategies": result,
        })
    rows = np.flatnonzero(known)
    pooled, curves = strategies(rows)
    curves["fold_starts"] = [entry["first_test_date"] for entry in per_fold]
    return {
        "cost_bps": float(cost_bps),
        "models": list(probabilities),
        "symbols": names,
        "rows": int(n),
        "dropped_rows": int((~known).sum()),
        "folds": per_fold,
        "pooled": {
            "first_test_date": str(day[rows].min()),
            "last_test_date": str(day[rows].max()),
            "strategies": pooled,
        },
        "curves": curves,
    }


def strategy_table(summary: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> str:
    """Markdown of a `strategy_summary`: the folds' spans, one table per strategy kind (pooled), how to read it.

    ``labels`` names the models in the table (default: their keys with spaces for underscores).
    """
    pooled = summary["pooled"]["strategies"]
    lines = [
        "**Spans of each fold** (first – last date of its rows)",
        "",
        "| fold | train | validation | test | test days |",
        "|---|---|---|---|---|",
    ]
    for entry in summary["folds"]:
        spans = entry.get("spans") or {}
        cells = [_span(spans.get(split)) for split in ("train", "val")]
        test = f"{entry['first_test_date']} – {entry['last_test_date']}"
        days = entry["strategies"]["buy_and_hold"]["days"]
        lines.append(f"| {entry['fold']} | {cells[0]} | {cells[1]} | {test} | {days} |")
    where = (
        f"pooled over {len(summary['folds'])} test span{'s' * (len(summary['folds']) != 1)}, "
        f"{summary['pooled']['first_test_date']} – {summary['pooled']['last_test_date']}, "
        f"net of {summary['cost_bps']:g} bp per unit of position change"
    )
    if summary.get("dropped_rows"):
        dropped = summary["dropped_rows"]
        where += f"; {dropped} row{'s' * (dropped != 1)} without a next close left out"
    header = "| model | cumulative return | Sharpe (annualised) | max drawdown | hit rate | turnover / day | days |"
    for kind in (*KINDS, "cross_sectional"):
        if kind not in pooled:
            continue
        lines += ["", f"**{TITLES[kind]}** ({where})", "", header, "|---|---|---|---|---|---|---|"]
        if kind != "cross_sectional":
            lines.append(_row("buy and hold", pooled["buy_and_hold"]))
        lines += [_row((labels or {}).get(m, m.replace("_", " ")), metrics) for m, metrics in pooled[kind].items()]
    lines += ["", HOW_TO_READ]
    return "\n".join(lines) + "\n"


class _Book:
    """The rows of one span as a days x symbols grid: returns, and which symbol trades on which day."""

    def __init__(self, dates: np.ndarray, symbols: np.ndarray, returns: np.ndarray) -> None:
        self.days, day = np.unique(dates, return_inverse=True)
        names, symbol = np.unique(symbols, return_inverse=True)
        self.at = (day, symbol)
        self.present = np.zeros((len(self.days), len(names)), dtype=bool)
        self.present[self.at] = True
        self.returns = np.zeros(self.present.shape)
        self.returns[self.at] = returns
        self.count = self.present.sum(axis=1)
        self.equity: list[float] = []

    def metrics(self, positions: np.ndarray, cost_bps: float) -> dict[str, Any]:
        """Hold each row's position equal-weight across the symbols of its day (one symbol: the position itself)."""
        weights = np.zeros(self.present.shape)
        weights[self.at] = positions / self.count[self.at[0]]
        return self._run(self.returns, weights, cost_bps)

    def cross_sectional(self, up_probability: np.ndarray, cost_bps: float) -> dict[str, Any]:
        """The cross-sectional long/short portfolio, on the days with at least 2 symbols."""
        p = np.full(self.present.shape, np.nan)
        p[self.at] = up_probability
        traded = self.count >= 2
        weights = np.zeros(self.present.shape)
        for t in np.flatnonzero(traded):
            weights[t, self.present[t]] = cross_sectional_weights(p[t, self.present[t]])
        return self._run(self.returns[traded], weights[traded], cost_bps)

    def _run(self, returns: np.ndarray, weights: np.ndarray, cost_bps: float) -> dict[str, Any]:
        net = strategy_returns(returns, weights, cost_bps)
        self.equity = np.cumprod(1.0 + net).tolist()
        return strategy_metrics(net, weights)


def _as_days_by_assets(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=float)
    return array[:, None] if array.ndim == 1 else array


def _turnover(weights: np.ndarray) -> np.ndarray:
    """Absolute weight change of each day, from 0 before the first day."""
    return np.abs(np.diff(weights, axis=0, prepend=np.zeros((1, weights.shape[1])))).sum(axis=1)


def _check_cost(cost_bps: Any) -> None:
    finite = isinstance(cost_bps, numbers.Real) and not isinstance(cost_bps, bool) and math.isfinite(cost_bps)
    if not finite or cost_bps < 0:
        raise QlitError(f"cost_bps must be a finite number >= 0 (basis points per unit traded), got {cost_bps!r}")


def _spans_by_fold(spans: Any) -> dict[int, Any]:
    if spans is None:
        return {}
    if isinstance(spans, Mapping):
        return {int(k): dict(v) for k, v in spans.items()}
    return {int(s.get("fold", k)): dict(s) for k, s in enumerate(spans)}


def _span(split: Mapping[str, Any] | None) -> str:
    if not split or split.get("first") is None:
        return "—"
    return f"{split['first']} – {split['last']}"


def _row(name: str, m: Mapping[str, Any]) -> str:
    def percent(value: float | None, sign: bool = False) -> str:
        return "—" if value is None else f"{100 * value:{'+' if sign else ''}.1f} %"

    sharpe = "—" if m["sharpe"] is None else f"{m['sharpe']:.2f}"
    return (
        f"| {name} | {percent(m['cumulative_return'], sign=True)} | {sharpe} | {percent(m['max_drawdown'])} | "
        f"{percent(m['hit_rate'])} | {m['turnover']:.4f} | {m['days']} |"
    )
