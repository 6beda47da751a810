"""The files a cross-validation or a sweep leaves: ``cv_summary.json``/``.md``, ``tune_summary.md``, figures."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from qlit.evaluation import plots
from qlit.evaluation.baselines import BASELINES, C_GRID
from qlit.evaluation.metrics import SCORES, SHORT
from qlit.evaluation.stats import CI_NOTE, METRIC, STD_NOTE, shown
from qlit.evaluation.strategy import strategy_table

OTHER_SCORES = [key for key in SCORES if key not in (METRIC, "test_balanced_acc")]
from qlit.io.runs import unused_path


def plain(value: Any) -> Any:
    """``value`` with NumPy arrays and scalars (and tensors) turned into lists and Python numbers, for JSON."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value.tolist() if hasattr(value, "tolist") else value


def to_json(summary: dict[str, Any]) -> str:
    """Indented JSON with lists of numbers kept on one line (test indices, confusion matrices)."""
    text = json.dumps(summary, indent=2)

    def one_line(match: re.Match) -> str:
        return " ".join(match.group(0).split()).replace("[ ", "[").replace(" ]", "]")

    return re.sub(r"\[[-0-9.eE+,\s]*\]", one_line, text) + "\n"


def _models(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every model of a cv summary, hybrid first, with its stats and folds."""
    return {"hybrid": summary, **summary["baselines"]}


def _label(model: str) -> str:
    return "hybrid" if model == "hybrid" else BASELINES[model]


def _mean_sd(stats: dict[str, Any], key: str) -> str:
    return f"{shown(stats[f'{key}_mean'])} ± {shown(stats[f'{key}_std'])}"


def _ci(ci: list[float] | None, fmt: str = ".3f") -> str:
    return "n/a" if ci is None else f"{ci[0]:{fmt}} to {ci[1]:{fmt}}"


def cv_table(summary: dict[str, Any]) -> str:
    """The markdown of ``cv_summary.md``: accuracy and balanced accuracy, the other scores, the paired comparisons."""
    models = _models(summary)
    k, repeats = summary["num_folds"], summary.get("repeats", 1)
    covered = summary.get("folds_covered") or list(range(k))
    fits = f"{k} folds" if len(covered) == k else f"folds {', '.join(map(str, covered))} of {k}"
    fits += f" × {repeats} repeats" if repeats > 1 else ""
    lines = [
        f"## Cross-validation: {summary['experiment']} ({fits})",
        "",
        f"`{METRIC}`: accuracy on each held-out test fold ({summary['checkpoint']}).",
        "",
        "| fold | n_test | " + " | ".join(map(_label, models)) + " |",
        "|---:|---:|" + "---:|" * len(models),
    ]
    for i, record in enumerate(summary["folds"]):
        fold = f"{record['repeat']}.{record['fold']}" if repeats > 1 else str(record["fold"])
        cells = [f"{stats['folds'][i][METRIC]:.3f}" for stats in models.values()]
        lines.append(f"| {fold} | {record['n_test']} | " + " | ".join(cells) + " |")
    n_total = sum(r["n_test"] for r in summary["folds"])
    lines += [
        f"| **mean ± sd** | {n_total} | " + " | ".join(f"**{_mean_sd(s, METRIC)}**" for s in models.values()) + " |",
        "| 95% CI of the mean | | " + " | ".join(_ci(s[f"{METRIC}_ci95"]) for s in models.values()) + " |",
        "| balanced accuracy | | " + " | ".join(_mean_sd(s, "test_balanced_acc") for s in models.values()) + " |",
        "",
        "Other scores, mean ± sd over the folds (pooled over all out-of-fold rows); lower is better for log-loss and "
        "Brier:",
        "",
        "| model | " + " | ".join(SHORT[key] for key in OTHER_SCORES) + " |",
        "|---|" + "---:|" * len(OTHER_SCORES),
    ]
    for model, stats in models.items():
        cells = [f"{_mean_sd(stats, key)} ({shown(stats['pooled'][key])})" for key in OTHER_SCORES]
        lines.append(f"| {_label(model)} | " + " | ".join(cells) + " |")
    which = "first repeat's " if repeats > 1 else ""
    lines += [
        "",
        f"Hybrid against each baseline, paired over the same folds and rows (McNemar: exact test on the {which}"
        "out-of-fold rows; b = rows only the hybrid gets right, c = rows only the baseline gets right):",
        "",
        "| hybrid − | accuracy difference | 95% CI (corrected) | plain 95% CI (too narrow) | McNemar p | b / c |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key in summary["baselines"]:
        d = summary["paired_differences"][f"hybrid_minus_{key}"]
        test = d["mcnemar_exact"][0]
        lines.append(
            f"| {BASELINES[key]} | {d['mean']:+.3f} | {_ci(d['ci95'], '+.3f')} | {_ci(d.get('ci95_plain'), '+.3f')} "
            f"| {test['p_value']:.3g} | {test['hybrid_only']} / {test['baseline_only']} |"
        )
    if "given_test" in summary:
        lines += given_test_table(summary["given_test"])
    lines += [
        "",
        (
            f"sd: {STD_NOTE}. {summary['ci95_method']}. The classical twin replaces the quantum layer by Linear + tanh "
            "of the same width, trained identically; logistic regression (scikit-learn, default L2, C=1), the RBF "
            "SVM and gradient boosting (their hyperparameters chosen by inner cv on the fold's training rows) are "
            "fit on the same preprocessed training rows; the majority class always predicts the training rows' most "
            "frequent class, so its accuracy is the base rate any model must beat. Each fold's `config.yaml` "
            "reproduces it with `qlit fit` then `qlit test`; `oof_predictions.csv` holds every model's class "
            "probabilities for every test row."
        ),
        "",
    ]
    return "\n".join(lines)


def given_test_table(given: dict[str, Any]) -> list[str]:
    """The lines on the given test rows: every model refit on all the training rows, scored once on them."""
    models = given["models"]
    lines = [
        "",
        f"Given test rows ({given['n_test']}), scored once by each model refit on all the given training rows "
        f"({given['n_train']} train, {given['n_val']} validate); McNemar p of the hybrid against each:",
        "",
        "| model | " + " | ".join(SHORT[key] for key in SCORES) + " | McNemar p |",
        "|---|" + "---:|" * (len(SCORES) + 1),
    ]
    for model, record in models.items():
        test = given["mcnemar_exact"].get(f"hybrid_vs_{model}")
        cells = [shown(record.get(key)) for key in SCORES] + [f"{test['p_value']:.3g}" if test else ""]
        lines.append(f"| {_label(model)} | " + " | ".join(cells) + " |")
    return lines


def write_oof(path: Path, summary: dict[str, Any], oof: dict[str, Any]) -> Path:
    """``oof_predictions.csv``: one line per (repeat, test row) with every model's class probabilities."""
    classes = summary["class_names"]
    models = list(oof["probabilities"])
    header = ["repeat", "fold", "row", "id", "label"]
    header += [f"{m}_p_{c}" for m in models for c in classes]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i in range(len(oof["row"])):
            line = [int(oof["repeat"][i]), int(oof["fold"][i]), int(oof["row"][i]), oof["id"][i]]
            line.append(classes[int(oof["label"][i])])
            line += [f"{p:.12g}" for m in models for p in oof["probabilities"][m][i]]
            writer.writerow(line)
    return path


def write_cv_report(cv_dir: Path, summary: dict[str, Any], oof: dict[str, Any]) -> list[Path]:
    """Write the summary as JSON and markdown, the out-of-fold predictions, the per-fold bars and the pooled
    confusion matrix."""
    summary["oof_predictions"] = str(unused_path(cv_dir / "oof_predictions.csv"))
    curves = summary.pop("strategy_curves", None)  # a value per test day: the figure shows them, the JSON need not
    json_path = unused_path(cv_dir / "cv_summary.json")
    json_path.write_text(to_json(summary))
    table = cv_table(summary)
    figures = []
    if "strategy" in summary:
        labels = {m: _label(m) for m in _models(summary)}
        table += "\n" + strategy_table(summary["strategy"], labels)
        cost = summary["strategy"]["cost_bps"]
        title = f"{summary['experiment']}: long/flat on each model's predicted direction, {cost:g} bp"
        figure = plots.equity_curves_figure({"curves": curves}, title, labels)
        figures.append(plots.save_png(figure, unused_path(cv_dir / "equity_curves.png")))
    md_path = unused_path(cv_dir / "cv_summary.md")
    md_path.write_text(table)
    oof_path = write_oof(Path(summary["oof_predictions"]), summary, oof)
    hybrid = summary["folds"]
    series = {_label(m): [r[METRIC] for r in stats["folds"]] for m, stats in _models(summary).items()}
    name, k = summary["experiment"], summary["num_folds"]
    fits = [f"{r['repeat']}.{r['fold']}" if summary["repeats"] > 1 else r["fold"] for r in hybrid]
    bars = plots.fold_bars_figure(fits, series, f"{name}: {METRIC} per fold")
    bars_path = plots.save_png(bars, unused_path(cv_dir / "cv_test_acc.png"))
    pooled = np.sum([r["confusion_matrix"] for r in hybrid], axis=0)
    fits_note = f"all {k} test folds" + (f", {summary['repeats']} repeats" if summary["repeats"] > 1 else "")
    pooled_figure = plots.confusion_matrix_figure(pooled, summary["class_names"], f"hybrid, {fits_note}")
    pooled_path = plots.save_png(pooled_figure, unused_path(cv_dir / "confusion_matrix.png"))
    print("\n" + table, flush=True)
    return [json_path, md_path, oof_path, bars_path, pooled_path, *figures]


def tune_table(summary: dict[str, Any]) -> str:
    """The markdown of ``tune_summary.md``."""
    names = {
        "tuned": "tuned hybrid",
        "untuned": "untuned hybrid",
        "logistic_regression": "logistic regression (C by inner folds)",
        "majority_class": BASELINES["majority_class"],
    }
    lines = [
        f"## Tuning: {summary['experiment']} ({'nested, ' if summary['nested'] else ''}{len(summary['outer_folds'])} "
        f"outer fold{'s' * (len(summary['outer_folds']) != 1)}, {summary['num_samples']} samples each, "
        f"{summary['inner_folds']} inner folds)",
        "",
        (
            f"`{METRIC}` on each outer test fold, never seen by the search; a trial's score is its mean best "
            "`val_loss` over the inner folds of the outer fold's training rows. Logistic regression chooses its C "
            f"(of {', '.join(map(str, C_GRID))}) by log loss on the same inner folds."
        ),
        "",
        "| outer fold | n_test | best config (by inner val_loss) | " + " | ".join(names.values()) + " |",
        "|---:|---:|---|" + "---:|" * len(names),
    ]
    for i, outer in enumerate(summary["outer_folds"]):
        chosen = short_config(outer["best_config"])
        cells = [f"{summary[m]['folds'][i][METRIC]:.3f}" for m in names]
        lines.append(f"| {outer['fold']} | {outer['n_test']} | {chosen} | " + " | ".join(cells) + " |")
    means = [f"**{summary[m][f'{METRIC}_mean']:.3f} ± {shown(summary[m][f'{METRIC}_std'])}**" for m in names]
    cis = [
        "n/a" if summary[m][f"{METRIC}_ci95"] is None else "{:.3f} – {:.3f}".format(*summary[m][f"{METRIC}_ci95"])
        for m in names
    ]
    lines += [
        "| **mean ± sd** | | | " + " | ".join(means) + " |",
        "| 95% CI of the mean | | | " + " | ".join(cis) + " |",
    ]
    if len(summary["outer_folds"]) > 1:
        lines.append("")
        for key, d in summary["paired_differences"].items():
            lines.append(
                f"- {key.replace('_minus_', ' − ').replace('_', ' ')}: {d['mean']:+.3f} "
                f"(95% CI {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}, paired over outer folds)"
            )
    lines += ["", f"sd: {STD_NOTE}. {CI_NOTE}; n/a with one outer fold.", "", summary["best_config_note"], ""]
    counts: dict[str, int] = {}
    for outer in summary["outer_folds"]:
        for t in outer["trials"]:
            counts[t["status"]] = counts.get(t["status"], 0) + 1
    lines.append("Trials: " + ", ".join(f"{n} {status}" for status, n in counts.items()) + ".")
    lines.append("")
    return "\n".join(lines)


def short_value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def short_config(config: dict[str, Any]) -> str:
    """A trial's values as ``key=value, ...``, floats to 3 significant digits."""
    return ", ".join(f"{key}={short_value(value)}" for key, value in config.items())
