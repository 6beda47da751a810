"""The files a cross-validation or a sweep leaves: ``cv_summary.json``/``.md``, ``tune_summary.md``, figures."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from qlit.evaluation import plots
from qlit.evaluation.baselines import BASELINES, C_GRID
from qlit.evaluation.stats import CI_NOTE, METRIC, STD_NOTE, shown
from qlit.io.runs import unused_path


def to_json(summary: dict[str, Any]) -> str:
    """Indented JSON with lists of numbers kept on one line (test indices, confusion matrices)."""
    text = json.dumps(summary, indent=2)

    def one_line(match: re.Match) -> str:
        return " ".join(match.group(0).split()).replace("[ ", "[").replace(" ]", "]")

    return re.sub(r"\[[-0-9.eE+,\s]*\]", one_line, text) + "\n"


def cv_table(summary: dict[str, Any]) -> str:
    """The markdown table of ``cv_summary.md``."""
    names = {"hybrid": "hybrid", **BASELINES}
    per_model = {"hybrid": summary["folds"], **{b: summary["baselines"][b]["folds"] for b in BASELINES}}
    stats_of = {"hybrid": summary, **{b: summary["baselines"][b] for b in BASELINES}}
    k = summary["num_folds"]
    lines = [
        f"## Cross-validation: {summary['experiment']} ({k} folds)",
        "",
        f"`{METRIC}`: accuracy on each held-out test fold ({summary['checkpoint']}).",
        "",
        "| fold | n_test | " + " | ".join(names.values()) + " |",
        "|---:|---:|" + "---:|" * len(names),
    ]
    for i, record in enumerate(summary["folds"]):
        cells = [f"{per_model[m][i][METRIC]:.3f}" for m in names]
        lines.append(f"| {record['fold']} | {record['n_test']} | " + " | ".join(cells) + " |")
    n_total = sum(r["n_test"] for r in summary["folds"])
    means = [f"**{stats_of[m][f'{METRIC}_mean']:.3f} ± {stats_of[m][f'{METRIC}_std']:.3f}**" for m in names]
    cis = ["{:.3f} – {:.3f}".format(*stats_of[m][f"{METRIC}_ci95"]) for m in names]
    lines += [
        f"| **mean ± sd** | {n_total} | " + " | ".join(means) + " |",
        "| 95% CI of the mean | | " + " | ".join(cis) + " |",
        "",
    ]
    for key, label in BASELINES.items():
        d = summary["paired_differences"][f"hybrid_minus_{key}"]
        lines.append(
            f"- hybrid − {label}: {d['mean']:+.3f} "
            f"(95% CI {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}, paired over folds)"
        )
    lines += [
        "",
        (
            f"sd: {STD_NOTE}. {CI_NOTE}. The classical twin replaces the quantum layer by Linear + tanh of the "
            "same width, trained identically; logistic regression (scikit-learn, default L2, C=1) is fit on the "
            "same preprocessed training rows; the majority class always predicts the training rows' most frequent "
            "class, so its accuracy is the base rate any model must beat. Each fold's `config.yaml` reproduces "
            "it with `qlit fit` then `qlit test`."
        ),
        "",
    ]
    return "\n".join(lines)


def write_cv_report(cv_dir: Path, summary: dict[str, Any]) -> list[Path]:
    """Write the summary as JSON and markdown, the per-fold bars and the pooled confusion matrix."""
    json_path = unused_path(cv_dir / "cv_summary.json")
    json_path.write_text(to_json(summary))
    table = cv_table(summary)
    md_path = unused_path(cv_dir / "cv_summary.md")
    md_path.write_text(table)
    hybrid = summary["folds"]
    series = {"hybrid": [r[METRIC] for r in hybrid]}
    for key, label in BASELINES.items():
        series[label] = [r[METRIC] for r in summary["baselines"][key]["folds"]]
    name, k = summary["experiment"], summary["num_folds"]
    bars = plots.fold_bars_figure(range(k), series, f"{name}: {METRIC} per fold")
    bars_path = plots.save_png(bars, unused_path(cv_dir / "cv_test_acc.png"))
    pooled = np.sum([r["confusion_matrix"] for r in hybrid], axis=0)
    pooled_figure = plots.confusion_matrix_figure(pooled, summary["class_names"], f"hybrid, all {k} test folds")
    pooled_path = plots.save_png(pooled_figure, unused_path(cv_dir / "confusion_matrix.png"))
    print("\n" + table, flush=True)
    return [json_path, md_path, bars_path, pooled_path]


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
        chosen = ", ".join(f"{k}={short_value(v)}" for k, v in outer["best_config"].items())
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
