"""What ``qlit cv`` reports from its fits: every model's scores per fold and pooled, their intervals, the paired
comparisons and the out-of-fold predictions they all come from.

A fit is one (repeat, fold): the hybrid's job (which also fits the classical baselines on the fold's rows) and the
classical twin's job. Every number here is computed from the fits' test-row predictions, never from a second pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from jsonargparse import Namespace

from qlit.evaluation import tuned_baselines
from qlit.evaluation.baselines import LOGISTIC_MODEL, MAJORITY_MODEL, TWIN_MODEL
from qlit.evaluation.metrics import LOWER_IS_BETTER, SCORES, mcnemar, scores
from qlit.evaluation.stats import CORRECTED_NOTE, METRIC, STD_NOTE, paired, with_stats
from qlit.evaluation.strategy import strategy_summary
from qlit.io.provenance import provenance

Fits = dict[tuple[int, int], dict[str, dict[str, Any]]]


def _data_identity(config: Namespace, folds: list[dict[str, Any]]) -> dict[str, Any]:
    """The data every fold was cut from: its module, settings and one SHA-256 (checked to be the same for all)."""
    hashes = {record["data_sha256"] for record in folds}
    if len(hashes) != 1:
        raise RuntimeError(f"the folds were trained on different data ({len(hashes)} different hashes)")
    settings = {k: v for k, v in vars(config.data.init_args).items() if isinstance(v, (str, int, float, bool, list))}
    return {"data_module": config.data.class_path, "data_sha256": hashes.pop(), "settings": settings}


def model_descriptions(tuned: bool) -> dict[str, str]:
    """What each baseline is, for the summary; the tuned SVM and boosting only when they ran."""
    described = {
        "classical_twin": TWIN_MODEL,
        "logistic_regression": LOGISTIC_MODEL,
        "svm_rbf": tuned_baselines.SVM_MODEL,
        "gradient_boosting": tuned_baselines.BOOSTING_MODEL,
        "majority_class": MAJORITY_MODEL,
    }
    if not tuned:
        for key in ("svm_rbf", "gradient_boosting"):
            del described[key]
    return described


def out_of_fold(per_fit: Fits, models: list[str]) -> dict[str, Any]:
    """Every fit's test rows, stacked: ``repeat``, ``fold``, ``row``, ``id``, ``label`` and each model's
    ``probabilities`` and ``predicted`` classes, in (repeat, fold) order."""
    columns: dict[str, list] = {"repeat": [], "fold": [], "row": [], "id": [], "label": []}
    probabilities: dict[str, list[np.ndarray]] = {m: [] for m in models}
    predicted: dict[str, list[np.ndarray]] = {m: [] for m in models}
    for (repeat, k), results in sorted(per_fit.items()):
        hybrid = results["hybrid"]
        n = len(hybrid["test_indices"])
        columns["repeat"] += [repeat] * n
        columns["fold"] += [k] * n
        columns["row"] += hybrid["test_indices"]
        columns["id"] += hybrid["test_ids"]
        columns["label"] += hybrid["test_labels"]
        own = {"hybrid": hybrid["predictions"]["model"], "classical_twin": results["twin"]["predictions"]["model"]}
        for m in models:
            fitted = own.get(m) or hybrid["predictions"][m]
            probabilities[m].append(np.asarray(fitted["probabilities"], dtype=np.float64))
            predicted[m].append(np.asarray(fitted["predicted"], dtype=np.int64))
    return {
        **{key: np.asarray(values) for key, values in columns.items()},
        "probabilities": {m: np.concatenate(v) for m, v in probabilities.items()},
        "predicted": {m: np.concatenate(v) for m, v in predicted.items()},
    }


def mcnemar_by_repeat(oof: dict[str, Any], baseline: str) -> list[dict[str, Any]]:
    """McNemar's exact test of the hybrid against ``baseline`` on each repeat's out-of-fold rows (each row once)."""
    tests = []
    for repeat in np.unique(oof["repeat"]):
        rows = oof["repeat"] == repeat
        test = mcnemar(oof["label"][rows], oof["predicted"]["hybrid"][rows], oof["predicted"][baseline][rows])
        tests.append({"repeat": int(repeat), "hybrid_only": test.pop("first_only"), **test})
        tests[-1]["baseline_only"] = tests[-1].pop("second_only")
    return tests


def summarize(
    name: str,
    cv_dir: Path,
    config: Namespace,
    per_fit: Fits,
    tuned: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``cv_summary.json`` content from each fit's hybrid and twin results, and the out-of-fold predictions.

    Args:
        per_fit: The results of the hybrid and twin jobs by (repeat, fold).
        tuned: Whether the tuned SVM and gradient boosting ran.
    """
    described = model_descriptions(tuned)
    records: dict[str, list[dict[str, Any]]] = {m: [] for m in ["hybrid", *described]}
    for (repeat, k), results in sorted(per_fit.items()):
        h, t = results["hybrid"], results["twin"]
        if h["test_indices"] != t["test_indices"]:
            raise RuntimeError(
                f"repeat {repeat}, fold {k}: the classical twin was tested on other rows than the hybrid"
            )
        record = {**h["record"], "repeat": repeat, "test_indices": h["test_indices"]}
        record["test_base_rate"] = h["majority_class"]["test_base_rate"]
        records["hybrid"].append(record)
        records["classical_twin"].append({**t["record"], "repeat": repeat})
        for b in described:
            if b != "classical_twin":
                records[b].append({**h[b], "repeat": repeat})
    hybrid = records["hybrid"]
    ratio = float(np.mean([r["n_test"] / (r["n_train"] + r["n_val"]) for r in hybrid]))
    oof = out_of_fold(per_fit, list(records))

    def stats_of(m: str) -> dict[str, Any]:
        pooled = scores(oof["label"], oof["probabilities"][m], oof["predicted"][m])
        return {**with_stats(records[m], SCORES, ratio, LOWER_IS_BETTER), "pooled": pooled}

    repeats = len({r for r, _ in per_fit})
    summary = {
        "metric": METRIC,
        "scores": SCORES,
        "experiment": name,
        "cv_dir": str(cv_dir),
        "num_folds": int(config.data.init_args.num_folds),
        "folds_covered": sorted({k for _, k in per_fit}),
        "repeats": repeats,
        "data": config.data.class_path,
        "class_names": per_fit[min(per_fit)]["hybrid"]["class_names"],
        "seed_everything": config.get("seed_everything"),
        "checkpoint": per_fit[min(per_fit)]["hybrid"]["checkpoint"],
        "provenance": provenance(_data_identity(config, hybrid)),
        "std": STD_NOTE,
        "ci95_method": CORRECTED_NOTE,
        "test_train_ratio": ratio,
        **stats_of("hybrid"),
        "test_loss_mean": float(np.mean([r["test_loss"] for r in hybrid])),
        "baselines": {b: {**stats_of(b), "model": described[b]} for b in described},
        "paired_differences": {
            f"hybrid_minus_{b}": {
                **paired(hybrid, records[b], test_train_ratio=ratio),
                "mcnemar_exact": mcnemar_by_repeat(oof, b),
            }
            for b in described
        },
    }
    return summary, oof


def given_test_summary(results: dict[str, dict[str, Any]], baselines: list[str]) -> dict[str, Any]:
    """The refit on all given training rows, scored once on the given test rows: every model's record."""
    hybrid, twin = results["hybrid"], results["twin"]
    if hybrid["test_indices"] != twin["test_indices"]:
        raise RuntimeError("the classical twin was tested on other given test rows than the hybrid")
    records = {"hybrid": hybrid["record"], "classical_twin": twin["record"]}
    records.update({b: hybrid[b] for b in baselines if b != "classical_twin"})
    predicted = {
        "hybrid": hybrid["predictions"]["model"]["predicted"],
        "classical_twin": twin["predictions"]["model"]["predicted"],
    }
    predicted.update({b: hybrid["predictions"][b]["predicted"] for b in baselines if b != "classical_twin"})
    labels = hybrid["test_labels"]
    return {
        "n_test": len(labels),
        "n_train": hybrid["record"]["n_train"],
        "n_val": hybrid["record"]["n_val"],
        "models": records,
        "mcnemar_exact": {f"hybrid_vs_{b}": mcnemar(labels, predicted["hybrid"], predicted[b]) for b in baselines},
    }


def trading_summary(data: Any, per_fit: Fits, oof: dict[str, Any], cost_bps: float) -> dict[str, Any]:
    """Equity data: every model's daily strategies on the first repeat's out-of-fold predictions (`strategy`).

    Args:
        data: The set-up equity data module (its rows' dates, symbols and next-day returns).
        per_fit: The fits, for each fold's training, validation and test spans.
        oof: The out-of-fold predictions (`out_of_fold`).
        cost_bps: Cost per unit of position change, in basis points.
    """
    first = oof["repeat"] == 0
    rows = oof["row"][first]
    spans = [results["hybrid"]["spans"] for (repeat, _), results in sorted(per_fit.items()) if repeat == 0]
    return strategy_summary(
        data.row_dates()[rows],
        data.row_symbols()[rows],
        data.next_day_returns()[rows],
        {m: p[first][:, 1] for m, p in oof["probabilities"].items()},
        oof["fold"][first],
        cost_bps,
        spans,
    )
