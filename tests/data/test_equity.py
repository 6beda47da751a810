"""EquityDataModule: no look-ahead, walk-forward spans, a leakage harness that can tell, and the real CLI."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from qlit import load_model
from qlit.cli import main
from qlit.data import EquityDataModule
from qlit.errors import QlitError
from tests.conftest import CONFIGS, QUICK, one_line_error

EQUITY = str(CONFIGS / "equity.yaml")


def bars(n: int = 300, seed: int = 0, start: str = "2020-01-01") -> pd.DataFrame:
    """Daily bars of a random walk on business days: date, open, high, low, close, volume."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0.0003, 0.01, n)))
    open_ = close * np.exp(rng.normal(0, 0.003, n))
    return pd.DataFrame({
        "date": pd.bdate_range(start, periods=n).strftime("%Y-%m-%d"),
        "open": open_,
        "high": np.maximum(open_, close) * 1.004,
        "low": np.minimum(open_, close) * 0.996,
        "close": close,
        "volume": rng.integers(1_000_000, 2_000_000, n),
    })


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def by_date(dm: EquityDataModule) -> dict[str, tuple[np.ndarray, int]]:
    return {sid: (dm.x[i], int(dm.y[i])) for i, sid in enumerate(dm.sample_ids)}


def test_corrupting_prices_after_day_t_changes_nothing_at_or_before_it(tmp_path):
    horizon, t = 3, 200
    frame = bars()
    frame.to_csv("a.csv", index=False)
    corrupt = frame.copy()
    rng = np.random.default_rng(1)
    for column in ("open", "high", "low", "close"):
        corrupt.loc[t + 1:, column] *= np.exp(rng.normal(0, 0.05, len(frame) - t - 1))
    bars_after = corrupt.loc[t + 1:, ["open", "high", "low", "close"]]  # still bars: a high below its low is refused
    corrupt.loc[t + 1:, "high"], corrupt.loc[t + 1:, "low"] = bars_after.max(axis=1), bars_after.min(axis=1)
    corrupt.loc[t + 1:, "volume"] = rng.integers(1, 10**9, len(frame) - t - 1)
    corrupt.to_csv("b.csv", index=False)
    a = EquityDataModule(path="a.csv", horizon=horizon)
    b = EquityDataModule(path="b.csv", horizon=horizon)
    a.setup("fit")
    b.setup("fit")
    day_t = frame["date"][t]
    day_label = frame["date"][t - horizon]
    sa, sb = by_date(a), by_date(b)
    assert list(sa) == list(sb)
    for day in sa:
        if day <= day_t:
            np.testing.assert_array_equal(sa[day][0], sb[day][0], err_msg=day)
        if day <= day_label:
            assert sa[day][1] == sb[day][1], day
    later = [d for d in sa if d > day_t]
    assert all(not np.array_equal(sa[d][0], sb[d][0]) for d in later[:5]), "the corruption must reach the features"
    assert any(sa[d][1] != sb[d][1] for d in sa if day_label < d), "and some labels after t - horizon"


@pytest.mark.parametrize(
    ("num_folds", "horizon", "gap", "window", "test_size"),
    [(5, 1, None, None, None), (3, 5, 7, 120, None), (4, 2, None, 80, 30)],
)
def test_walk_forward_spans_are_ordered_purged_and_tile_the_tail(tmp_path, num_folds, horizon, gap, window, test_size):
    bars(400).to_csv("a.csv", index=False)
    dm = EquityDataModule(path="a.csv", horizon=horizon, gap=gap, window=window, test_size=test_size,
                          num_folds=num_folds)
    dm.setup("fit")
    folds = dm.walk_forward()
    gap = horizon if gap is None else gap
    position = {d: i for i, d in enumerate(np.unique(dm.sample_dates))}
    pos = np.array([position[d] for d in dm.sample_dates])
    tests = []
    for k, fold in enumerate(folds):
        train, val, test = (pos[fold[s]] for s in ("train", "val", "test"))
        assert train.max() + gap < val.min() and val.max() + gap < test.min()
        assert dm.label_end[fold["train"]].max() < dm.sample_dates[fold["val"]].min()
        assert dm.label_end[fold["val"]].max() < dm.sample_dates[fold["test"]].min()
        if window is not None:
            assert test.min() - gap - train.min() <= window
        assert np.array_equal(test, np.arange(test.min(), test.max() + 1)), "a test span is contiguous"
        tests.append(test)
        same = EquityDataModule(path="a.csv", horizon=horizon, gap=gap, window=window, test_size=test_size,
                                num_folds=num_folds, fold=k)
        same.setup("fit")
        assert all(np.array_equal(same.indices[s], fold[s]) for s in fold), "fold k is the k-th test span"
    for earlier, later in zip(tests, tests[1:]):
        assert earlier.max() + 1 == later.min()
    assert tests[-1].max() == len(position) - 1
    if test_size is not None:
        assert all(len(t) == test_size for t in tests)


def test_long_table_of_symbols_splits_by_date(tmp_path):
    frames = [bars(260, seed=s).assign(symbol=name) for s, name in enumerate(["AAA", "BBB"])]
    long = pd.concat(frames).sort_values(["date", "symbol"])
    long.to_csv("long.csv", index=False)
    dm = EquityDataModule(path="long.csv", num_folds=3)
    dm.setup("fit")
    assert len(dm.y) == 2 * (260 - 20 - 1)
    assert dm.sample_ids[0] == "AAA " + frames[0]["date"][20] and dm.sample_ids[1].startswith("BBB ")
    dates = {s: set(dm.sample_dates[dm.indices[s]]) for s in ("train", "val", "test")}
    assert not dates["train"] & dates["val"] and not dates["val"] & dates["test"]
    one = EquityDataModule(path="long.csv", symbols=["BBB"], num_folds=3)
    one.setup("fit")
    assert len(one.y) == 239 and all(i.startswith("BBB ") for i in one.sample_ids)


class LeakyEquity(EquityDataModule):
    """The S&P 500 features plus tomorrow's return: a feature no honest pipeline could have."""

    def load(self):
        x, y = super().load()
        leak = np.where(y == 1, 1.0, -1.0) * (0.5 + np.random.default_rng(0).random(len(y)))
        return np.column_stack([x, leak]), y


def logistic_accuracy(dm: EquityDataModule, permute_test: bool = False) -> float:
    features = {s: dm.preprocessor.transform(dm.x[rows]).numpy() for s, rows in dm.indices.items()}
    labels = {s: dm.y[rows] for s, rows in dm.indices.items()}
    if permute_test:
        labels["test"] = np.random.default_rng(0).permutation(labels["test"])
    model = LogisticRegression(max_iter=2000).fit(features["train"], labels["train"])
    return float((model.predict(features["test"]) == labels["test"]).mean())


def test_leakage_harness_scores_a_leak_near_one_and_its_null_at_chance():
    shuffled = LeakyEquity(folds="shuffled")
    shuffled.setup("fit")
    assert logistic_accuracy(shuffled) > 0.97
    walk = LeakyEquity()
    walk.setup("fit")
    assert logistic_accuracy(walk) > 0.97, "the leak is in the feature: walk-forward must not hide it either"
    null = logistic_accuracy(walk, permute_test=True)
    assert abs(null - 0.5) < 0.05, null


def test_honest_features_on_the_sp500_are_near_the_majority_class():
    dm = EquityDataModule()
    dm.setup("fit")
    scores, majority = [], []
    for fold in dm.walk_forward():
        dm.indices = fold
        dm.preprocessor.fit(dm.x[fold["train"]])
        scores.append(logistic_accuracy(dm))
        majority.append(float((dm.y[fold["test"]] == np.bincount(dm.y[fold["train"]]).argmax()).mean()))
    assert abs(np.mean(scores) - np.mean(majority)) < 0.03, (scores, majority)
    assert 0.5 < np.mean(majority) < 0.57


def run_cli(args: list[str]) -> None:
    main([*args, *QUICK])


def test_fit_test_predict_and_int8_export_on_a_price_file(tmp_path):
    bars(320).to_csv("prices.csv", index=False)
    data = ["--data.init_args.path=prices.csv", "--data.init_args.num_folds=3"]
    run_cli(["fit", "--config", EQUITY, *data, "--trainer.max_epochs=2"])
    run = Path("lightning_logs/equity/version_0")
    assert (run / "model_int8.pt").is_file()
    run_cli(["test", "--config", EQUITY, *data, "--ckpt_path=best"])
    run_cli(["predict", "--config", EQUITY, *data, "--ckpt_path=best"])
    rows = list(csv.reader((run / "predictions.csv").open()))
    dm = EquityDataModule(path="prices.csv", num_folds=3)
    dm.setup("fit")
    assert [r[0] for r in rows[1:]] == list(dm.sample_ids[dm.indices["test"]]), "test-span ids are its dates"
    recent = bars(320).tail(40)
    recent.to_csv("recent.csv", index=False)
    run_cli(["predict", "--config", EQUITY, *data, "--ckpt_path=best", "--data.init_args.predict_file=recent.csv"])
    new = list(csv.reader((run / "predictions_1.csv").open()))
    assert len(new) == 1 + 40 - 20 and new[-1][0] == recent["date"].iloc[-1], "the last day, unlabelled, is predicted"
    probs = load_model(run / "model_int8.pt").predict_proba(dm.x[dm.indices["test"][:5]])
    np.testing.assert_allclose(probs[:, 1], [float(r[3]) for r in rows[1:6]], atol=0.05)


def test_cv_runs_walk_forward_on_the_bundled_sp500(tmp_path):
    run_cli(["cv", "--config", EQUITY, "--data.init_args.num_folds=2", "--trainer.max_epochs=1",
             "--tuned_baselines=false", "--cost_bps=10"])
    summary = json.loads(Path("lightning_logs/equity/cv_summary.json").read_text())
    folds = summary["folds"]
    assert summary["class_names"] == ["down", "up"] and len(folds) == 2
    assert max(folds[0]["test_indices"]) < min(folds[1]["test_indices"])
    assert 0.4 < summary["baselines"]["logistic_regression"]["test_acc_mean"] < 0.6
    # what a trader reads: each fold's spans in time order, every model's strategies against buy-and-hold
    strategy = summary["strategy"]
    assert strategy["cost_bps"] == 10 and strategy["rows"] == sum(f["n_test"] for f in folds)
    for fold in strategy["folds"]:
        spans = fold["spans"]
        assert spans["train"]["last"] < spans["val"]["first"] <= spans["val"]["last"] < spans["test"]["first"]
    pooled = strategy["pooled"]["strategies"]
    assert set(pooled["long_flat"]) == {"hybrid", "classical_twin", "logistic_regression", "majority_class"}
    assert pooled["buy_and_hold"]["days"] == strategy["rows"]
    assert "strategy_curves" not in summary and Path("lightning_logs/equity/equity_curves.png").is_file()
    table = Path("lightning_logs/equity/cv_summary.md").read_text()
    assert "buy and hold" in table and "Sharpe" in table


def test_gap_shorter_than_the_horizon_is_refused():
    with pytest.raises(QlitError, match="gap must be >= horizon=5"):
        EquityDataModule(horizon=5, gap=2)


FIT = ["fit", "--config", EQUITY, "--trainer.max_epochs=1"]


def price_case(name: str, args: list[str], words: list[str], edit=None):
    """One bad input: extra arguments (after a prices.csv of 300 days), the words of its error, an edit."""
    return pytest.param(args, words, edit, id=name)


def swap_rows(frame: pd.DataFrame) -> pd.DataFrame:
    frame.iloc[[50, 51]] = frame.iloc[[51, 50]].to_numpy()
    return frame


def duplicate_date(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[61, "date"] = frame.loc[60, "date"]
    return frame


def text_close(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype({"close": object})
    frame.loc[9, "close"] = "n/a?"
    return frame


def high_below_low(frame: pd.DataFrame) -> pd.DataFrame:
    high, low = frame.loc[40, "high"], frame.loc[40, "low"]
    frame.loc[40, "high"], frame.loc[40, "low"] = low, high
    return frame


DAY_40 = str(pd.bdate_range("2020-01-01", periods=41)[-1].date())
CASES = [
    price_case("high-below-low", [], ["prices.csv", "line 42", DAY_40, "high", "below low"], high_below_low),
    price_case("file-missing", ["--data.init_args.path=absent.csv"], ["absent.csv"]),
    price_case("close-missing", ["--data.init_args.price_column=adj close"], ["prices.csv", "'adj close'"]),
    price_case("non-numeric-close", [], ["prices.csv", "line 11", "'close'", "'n/a?'"], text_close),
    price_case("unsorted-dates", [], ["prices.csv", "line 53", "comes before", "line 52", "sort the file"], swap_rows),
    price_case("duplicate-dates", [], ["prices.csv", "line 62 and line 63 both hold"], duplicate_date),
    price_case("fewer-dates-than-folds", ["--data.init_args.num_folds=300"], ["prices.csv", "num_folds=300"]),
    price_case("test-spans-cover-the-data", ["--data.init_args.num_folds=3", "--data.init_args.test_size=100"],
               ["prices.csv", "279 dates", "test_size=100"]),
    price_case("gap-empties-the-span", ["--data.init_args.gap=60"], ["prices.csv", "fold 0", "gap=60"]),
    price_case("horizon-beyond-the-data", ["--data.init_args.horizon=290"], ["prices.csv", "horizon=290"]),
    price_case("gap-below-horizon", ["--data.init_args.horizon=3", "--data.init_args.gap=1"], ["gap", "horizon=3"]),
    price_case("single-class", ["--data.init_args.threshold=1.0"], ["prices.csv", "'down'", "both classes"]),
    price_case("unknown-symbol", ["--data.init_args.symbols=[ZZZ]"], ["prices.csv", "symbol"]),
    price_case("bad-folds", ["--data.init_args.folds=random"], ["folds", "random"]),
]


@pytest.mark.parametrize(("args", "words", "edit"), CASES)
def test_bad_prices_are_one_line_exit_2_and_write_nothing(tmp_path, capfd, args, words, edit):
    frame = bars()
    (edit(frame) if edit is not None else frame).to_csv("prices.csv", index=False)
    before = snapshot(tmp_path)
    one_line_error([*FIT, "--data.init_args.path=prices.csv", *args], capfd, words)
    assert snapshot(tmp_path) == before
