"""Daily strategies on predicted directions: hand-computed returns, costs and metrics; the rows' dates and returns."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest

from qlit.data import EquityDataModule
from qlit.errors import QlitError
from qlit.evaluation.plots import equity_curves_figure
from qlit.evaluation.strategy import (
    cross_sectional_weights,
    positions_from_probability,
    strategy_metrics,
    strategy_returns,
    strategy_summary,
    strategy_table,
)

DAYS = np.array(["2021-03-01", "2021-03-02", "2021-03-03", "2021-03-04", "2021-03-05"], dtype="datetime64[D]")
R = np.array([0.01, -0.02, 0.03, -0.01, 0.02])


def one_symbol(probabilities: dict[str, list[float]], cost_bps: float, returns=R, folds=None) -> dict:
    n = len(returns)
    folds = np.zeros(n, dtype=int) if folds is None else np.asarray(folds)
    p = {name: np.asarray(v, dtype=float) for name, v in probabilities.items()}
    return strategy_summary(DAYS[:n], np.full(n, "X"), np.asarray(returns), p, folds, cost_bps)


def test_five_days_by_hand_returns_costs_drawdown_hit_rate_turnover_and_sharpe():
    positions = np.array([1, 1, 0, 1, 0])
    net = strategy_returns(R, positions, cost_bps=10)
    # entry, hold, exit, entry, exit: 10 bp on every change but the hold, nothing earned while flat
    expected = [0.01 - 0.001, -0.02, -0.001, -0.01 - 0.001, -0.001]
    np.testing.assert_allclose(net, expected, atol=1e-15)
    m = strategy_metrics(net, positions)
    assert m["cumulative_return"] == pytest.approx(1.009 * 0.98 * 0.999 * 0.989 * 0.999 - 1)
    assert m["max_drawdown"] == pytest.approx(1 - 0.98 * 0.999 * 0.989 * 0.999), "from the peak after day 1"
    assert m["hit_rate"] == pytest.approx(1 / 3), "3 days in the market, 1 of them up net of costs"
    assert m["days_in_market"] == 3 and m["days"] == 5
    assert m["turnover"] == pytest.approx(4 / 5)
    sharpe = statistics.mean(expected) / statistics.stdev(expected) * math.sqrt(252)
    assert m["sharpe"] == pytest.approx(sharpe)


def test_sharpe_is_none_without_variation_and_drawdown_zero_on_a_rising_curve():
    m = strategy_metrics(np.full(4, 0.01), np.ones(4))
    assert m["sharpe"] is None and m["max_drawdown"] == 0.0 and m["hit_rate"] == 1.0
    flat = strategy_metrics(np.zeros(3), np.zeros(3))
    assert flat["sharpe"] is None and flat["hit_rate"] is None and flat["cumulative_return"] == 0.0
    assert strategy_metrics(np.array([0.02]), np.ones(1))["sharpe"] is None, "one day has no sd"
    assert strategy_metrics(np.array([-0.1, 0.05]), np.ones(2))["max_drawdown"] == pytest.approx(0.1), (
        "peak 1 at the start"
    )


def test_long_short_is_twice_long_flat_minus_the_market_and_trades_twice_as_much():
    rng = np.random.default_rng(0)
    r, p = rng.normal(0, 0.01, 50), rng.random(50)
    flat, short = positions_from_probability(p, "long_flat"), positions_from_probability(p, "long_short")
    assert set(flat) == {0.0, 1.0} and np.array_equal(short, 2 * flat - 1)
    np.testing.assert_allclose(strategy_returns(r, short, 0), 2 * strategy_returns(r, flat, 0) - r, atol=1e-15)
    lf, ls = strategy_metrics(r, flat), strategy_metrics(r, short)
    first_lf, first_ls = abs(flat[0]), 1.0  # the first day enters from cash: 1 unit either way for long/short
    assert ls["turnover"] * 50 - first_ls == pytest.approx(2 * (lf["turnover"] * 50 - first_lf))
    assert positions_from_probability([0.5, 0.51], "long_flat").tolist() == [0.0, 1.0], "a tie is not up"


def test_buy_and_hold_is_the_always_long_strategy_paying_its_entry_once():
    s = one_symbol({"always_up": [0.9] * 5, "always_down": [0.1] * 5}, cost_bps=20)
    pooled = s["pooled"]["strategies"]
    hold = pooled["buy_and_hold"]
    assert hold == pooled["long_flat"]["always_up"]
    assert hold["cumulative_return"] == pytest.approx((1 + 0.01 - 0.002) * 0.98 * 1.03 * 0.99 * 1.02 - 1)
    assert hold["turnover"] == pytest.approx(1 / 5)
    down = pooled["long_flat"]["always_down"]
    assert down["cumulative_return"] == 0.0 and down["turnover"] == 0.0 and down["hit_rate"] is None
    short = pooled["long_short"]["always_down"]
    assert short["cumulative_return"] == pytest.approx((1 - 0.01 - 0.002) * 1.02 * 0.97 * 1.01 * 0.98 - 1)
    json.dumps(s)  # JSON-friendly throughout


def test_each_fold_pays_its_entry_and_the_pooled_span_once():
    s = one_symbol({"always_up": [0.9] * 5}, cost_bps=10, folds=[0, 0, 1, 1, 1])
    folds = s["folds"]
    assert [f["fold"] for f in folds] == [0, 1]
    assert folds[0]["strategies"]["buy_and_hold"]["cumulative_return"] == pytest.approx(1.009 * 0.98 - 1)
    assert folds[1]["strategies"]["buy_and_hold"]["cumulative_return"] == pytest.approx(1.029 * 0.99 * 1.02 - 1)
    assert (folds[1]["first_test_date"], folds[1]["last_test_date"]) == ("2021-03-03", "2021-03-05")
    pooled = s["pooled"]["strategies"]["buy_and_hold"]
    assert pooled["cumulative_return"] == pytest.approx(1.009 * 0.98 * 1.03 * 0.99 * 1.02 - 1)


def test_rows_without_a_next_close_are_dropped_and_counted():
    returns = R.copy()
    returns[2] = np.nan
    p = [0.9, 0.2, 0.7, 0.6, 0.4]
    s = one_symbol({"m": p}, cost_bps=5, returns=returns)
    assert s["dropped_rows"] == 1 and s["folds"][0]["dropped_rows"] == 1 and s["rows"] == 5
    kept = [0, 1, 3, 4]
    reference = strategy_summary(DAYS[kept], np.full(4, "X"), R[kept], {"m": np.array(p)[kept]}, np.zeros(4, int), 5)
    assert s["pooled"]["strategies"] == reference["pooled"]["strategies"]
    assert s["pooled"]["strategies"]["buy_and_hold"]["days"] == 4
    assert "1 row without a next close" in strategy_table(s)


def test_several_symbols_equal_weight_and_a_cross_sectional_portfolio_by_hand():
    days = np.repeat(DAYS[:2], 4)
    symbols = np.tile(["A", "B", "C", "D"], 2)
    returns = np.array([0.02, -0.01, 0.01, 0.03, 0.01, 0.02, -0.01, 0.0])
    p = np.array([0.9, 0.2, 0.6, 0.4, 0.3, 0.8, 0.7, 0.1])
    s = strategy_summary(days, symbols, returns, {"m": p}, np.zeros(8, int), cost_bps=10)
    pooled = s["pooled"]["strategies"]
    # day 1: long A, C and short B, D at 0.25 each (gross 1); day 2: A and B swap sides, C and D stay
    cross = pooled["cross_sectional"]["m"]
    day1 = 0.25 * (0.02 + 0.01) - 0.25 * (-0.01 + 0.03) - 0.001 * 1.0
    day2 = 0.25 * (0.02 - 0.01) - 0.25 * (0.01 + 0.0) - 0.001 * 1.0
    assert cross["cumulative_return"] == pytest.approx((1 + day1) * (1 + day2) - 1)
    assert cross["turnover"] == pytest.approx(1.0) and cross["days"] == 2
    hold = pooled["buy_and_hold"]
    assert hold["cumulative_return"] == pytest.approx((1 + 0.0125 - 0.001) * (1 + 0.005) - 1), "equal weight, one entry"
    # long/flat: day 1 long A and C at 1/4 each; day 2 long B and C: A out, B in (1/2 of weight traded)
    flat = pooled["long_flat"]["m"]
    expected = (1 + 0.25 * 0.03 - 0.0005) * (1 + 0.25 * 0.01 - 0.0005) - 1
    assert flat["cumulative_return"] == pytest.approx(expected)
    assert s["symbols"] == ["A", "B", "C", "D"]
    assert "Cross-sectional" in strategy_table(s)


def test_cross_sectional_weights_split_ties_and_skip_days_with_one_symbol():
    np.testing.assert_allclose(cross_sectional_weights([0.9, 0.5, 0.1]), [0.5, 0.0, -0.5])
    np.testing.assert_allclose(cross_sectional_weights([0.9, 0.4, 0.4, 0.1]), [0.25, 0.0, 0.0, -0.25])
    np.testing.assert_allclose(cross_sectional_weights([0.7] * 4), 0.0, err_msg="a constant prediction holds nothing")
    days = DAYS[[0, 0, 1, 2, 2]]
    s = strategy_summary(
        days, np.array(["A", "B", "A", "A", "B"]), np.full(5, 0.01), {"m": np.full(5, 0.6)}, np.zeros(5, int), 0
    )
    assert s["pooled"]["strategies"]["cross_sectional"]["m"]["days"] == 2, "day 2 holds one symbol"
    assert s["pooled"]["strategies"]["buy_and_hold"]["days"] == 3


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"cost_bps": -1}, "cost_bps must be a finite number >= 0"),
        ({"cost_bps": float("nan")}, "cost_bps"),
        ({"up_probability": {"m": np.array([0.2, 1.2, 0.5, 0.5, 0.5])}}, "up_probability['m']"),
        ({"up_probability": {"m": np.full(4, 0.5)}}, "shape (4,)"),
        ({"symbols": np.array(["X", "X", "X", "X", "X"]), "dates": DAYS[[0, 1, 1, 2, 3]]}, "2021-03-02 X"),
        ({"returns": np.full(5, np.nan)}, "no row has a next-day return"),
    ],
)
def test_bad_input_is_one_line_naming_the_value(change, words):
    args = {
        "dates": DAYS,
        "symbols": np.full(5, "X"),
        "returns": R,
        "up_probability": {"m": np.full(5, 0.5)},
        "folds": np.zeros(5, int),
        "cost_bps": 5.0,
        **change,
    }
    with pytest.raises(QlitError) as err:
        strategy_summary(**args)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_table_and_figure_show_spans_models_and_buy_and_hold():
    spans = [
        {
            "fold": 0,
            "train": {"first": "2020-01-02", "last": "2020-12-30", "rows": 250},
            "val": {"first": "2021-01-04", "last": "2021-02-25", "rows": 38},
            "test": {"first": "2021-03-01", "last": "2021-03-05", "rows": 5},
        }
    ]
    s = strategy_summary(
        DAYS,
        np.full(5, "X"),
        R,
        {"hybrid": np.full(5, 0.6), "majority_class": np.full(5, 1.0)},
        np.zeros(5, int),
        5,
        spans=spans,
    )
    table = strategy_table(s)
    assert "| 0 | 2020-01-02 – 2020-12-30 | 2021-01-04 – 2021-02-25 | 2021-03-01 – 2021-03-05 | 5 |" in table
    assert table.count("| buy and hold |") == 2 and table.count("| majority class |") == 2
    assert "buy and hold net of costs" in table and "Cross-sectional" not in table
    fig = equity_curves_figure(s, "test")
    assert [line.get_label() for line in fig.axes[0].get_lines()[:3]] == [
        "hybrid (long/flat)",
        "majority class (long/flat)",
        "buy and hold",
    ]
    np.testing.assert_allclose(fig.axes[0].get_lines()[2].get_ydata(), np.cumprod(1 + R - [0.0005, 0, 0, 0, 0]))


def bars(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "date": pd.bdate_range("2020-01-01", periods=n).strftime("%Y-%m-%d"),
            "close": 100 * np.exp(np.cumsum(rng.normal(0.0003, 0.01, n))),
        }
    )


def test_rows_dates_and_next_day_returns_come_from_the_closes(tmp_path):
    frame = bars(200, 0)
    frame.to_csv("prices.csv", index=False)
    dm = EquityDataModule(path="prices.csv", num_folds=3, horizon=3)
    dm.setup("fit")
    close = dict(zip(frame["date"], frame["close"]))
    dates = [str(d) for d in dm.row_dates()]
    assert dates == dm.row_ids() and set(dm.row_symbols()) == {"prices"}
    returns = dm.next_day_returns()
    assert not np.isnan(returns).any() and len(returns) == len(dm.y)
    for i in (0, 57, len(dates) - 1):
        following = frame["date"].iloc[frame.index[frame["date"] == dates[i]][0] + 1]
        assert returns[i] == pytest.approx(close[following] / close[dates[i]] - 1), "one day ahead, not the horizon"
    unlabelled = dm._samples(dm._table, labelled=False)["next_returns"]
    assert np.isnan(unlabelled[-1]) and not np.isnan(unlabelled[:-1]).any(), "the last day has no next close"
    positions = {d: i for i, d in enumerate(np.unique(dm.row_dates()))}
    for k, fold in enumerate(dm.walk_forward()):
        dm.indices, dm.fold = fold, k
        spans = dm.fold_spans()
        at = {s: [positions[np.datetime64(spans[s][e])] for e in ("first", "last")] for s in ("train", "val", "test")}
        assert at["train"][1] + dm.gap < at["val"][0] and at["val"][1] + dm.gap < at["test"][0]
        assert spans["fold"] == k and spans["test"]["rows"] == len(fold["test"])
        assert at["test"][1] - at["test"][0] + 1 == spans["test"]["rows"], "one symbol: a row a day, first to last"
        assert at["train"][0] == 0, "an expanding training span starts at the first row"
    oracle = {"oracle": (returns > 0).astype(float)}
    s = strategy_summary(dm.row_dates(), dm.row_symbols(), returns, oracle, np.zeros(len(returns), int), 0)
    assert s["pooled"]["strategies"]["long_flat"]["oracle"]["hit_rate"] == 1.0, "returns line up with their dates"


def test_next_day_return_follows_each_symbols_own_calendar(tmp_path):
    a, b = bars(120, 1).assign(symbol="AAA"), bars(120, 2).assign(symbol="BBB")
    missing = b["date"].iloc[60]
    b = b[b["date"] != missing]
    pd.concat([a, b]).sort_values(["date", "symbol"]).to_csv("long.csv", index=False)
    dm = EquityDataModule(path="long.csv", num_folds=2)
    dm.setup("fit")
    ids, returns = dm.row_ids(), dm.next_day_returns()
    before, after = b["date"].iloc[59], b["date"].iloc[60]  # BBB's days around the missing one
    close = dict(zip(b["date"], b["close"]))
    row = ids.index(f"BBB {before}")
    assert dm.row_symbols()[row] == "BBB" and str(dm.row_dates()[row]) == before
    assert returns[row] == pytest.approx(close[after] / close[before] - 1)
    a_row = ids.index(f"AAA {before}")
    assert returns[a_row] == pytest.approx(a["close"].iloc[60] / a["close"].iloc[59] - 1)
