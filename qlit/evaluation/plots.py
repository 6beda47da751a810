"""Figures for cross-validation reports, drawn with matplotlib's Agg canvas (no display, no pyplot).

Each function returns a `matplotlib.figure.Figure`. `render` draws it once into pixels, which
`save_png` writes to a file and `log_image` sends to TensorBoard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Colour-blind-safe qualitative palette (Okabe & Ito), enough for qlit's populations and species.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


def _figure(width: float, height: float) -> Figure:
    # matplotlib is imported when the first figure is drawn: a command that draws none does not pay for it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _title(fig: Figure, title: str) -> None:
    """Title the figure, centred on it, and widen the figure if the title would not fit.

    An axes title is centred on the axes, which the tick labels push right, so a long one ran off the
    figure's edge; the figure's own title only needs the figure to be wide enough.
    """
    text = fig.suptitle(title, fontsize=10)
    needed = text.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi + 0.3
    if needed > fig.get_figwidth():
        fig.set_figwidth(needed)


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Counts of true (rows) against predicted (columns) classes, each cell annotated."""
    matrix = np.asarray(matrix)
    n = len(class_names)
    fig = _figure(max(3.2, 1.4 + 0.7 * n), max(3.0, 1.4 + 0.6 * n))
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues", vmin=0)
    ax.set_xticks(range(n), class_names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    _title(fig, title)
    threshold = matrix.max() / 2 if matrix.size and matrix.max() > 0 else 1
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                    color="white" if matrix[i, j] > threshold else "black")
    return fig


def pca_scatter_figure(
    scores: np.ndarray, labels: np.ndarray, test_mask: np.ndarray, class_names: Sequence[str], title: str
) -> Figure:
    """Individuals on the first two principal components, coloured by class; test rows as crosses."""
    fig = _figure(6.0, 4.8)
    ax = fig.add_subplot()
    for c, name in enumerate(class_names):
        colour = PALETTE[c % len(PALETTE)]
        rows = labels == c
        fitted, tested = rows & ~test_mask, rows & test_mask
        ax.scatter(scores[fitted, 0], scores[fitted, 1], s=10, alpha=0.6, color=colour, label=name)
        ax.scatter(scores[tested, 0], scores[tested, 1], s=22, marker="x", color=colour)
    ax.scatter([], [], s=22, marker="x", color="grey", label="test fold")
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    _title(fig, title)
    ax.legend(fontsize=8, markerscale=1.5, loc="best")
    return fig


def fold_bars_figure(
    folds: Sequence[int], series: dict[str, Sequence[float]], title: str, ylabel: str = "test accuracy"
) -> Figure:
    """Grouped bars: one group per fold plus a "mean" group, one bar per model (mean bars with ±1 sd)."""
    n_models = len(series)
    labels = [f"fold {k}" for k in folds] + ["mean"]
    fig = _figure(max(5.5, 1.2 + 0.25 * n_models * len(labels)), 4.6)
    ax = fig.add_subplot()
    width = 0.8 / n_models
    x = np.arange(len(labels))
    for m, (name, values) in enumerate(series.items()):
        values = np.asarray(values, dtype=float)
        sd = values.std(ddof=1) if len(values) > 1 else 0.0
        offset = x + (m - (n_models - 1) / 2) * width
        ax.bar(offset, np.append(values, values.mean()), width, color=PALETTE[m % len(PALETTE)], label=name)
        ax.errorbar(offset[-1], values.mean(), yerr=sd, color="black", capsize=3)
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    _title(fig, title)
    columns = min(n_models, 3)  # six models in one row would be wider than the figure
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=columns, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


# How a tuned key's panel places its values, by the key's distribution in the space file (`qlit.evaluation.space`).
_TUNE_LOG = ("loguniform", "qloguniform", "lograndint", "qlograndint")
_TUNE_INTEGER = ("randint", "qrandint", "lograndint", "qlograndint")
_TUNE_CATEGORIES = ("choice", "grid")


def tune_scores_figure(
    trials: Sequence[dict],
    keys: Sequence[str],
    score: str,
    title: str,
    space: dict[str, tuple[str, Sequence]] | None = None,
) -> Figure:
    """One panel per tuned key: every trial's score against its value, stopped and failed trials included.

    A completed trial is a filled dot at its ``score``; one that ASHA stopped is a hollow dot at the val_loss it was
    stopped at (``val_loss_at_stop``); one without either (failed) is a cross along the panel's top; the best
    completed trial of each outer fold is a star. Trials are coloured by ``outer_fold`` when they come from several.
    ``space`` (``{key: (distribution, args)}``) sets each axis: a log scale for ``loguniform``/``lograndint``,
    whole-number ticks for the ``randint`` kinds, one labelled position per value for ``choice``/``grid`` (in the
    space's order); without it, text values are categories and ``lr``/``weight_decay`` keys get a log scale.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator, ScalarFormatter

    columns = max(1, min(len(keys), 3))
    rows = max(1, -(-len(keys) // columns))
    fig = _figure(max(4.2, 3.4 * columns), 1.0 + 2.8 * rows)
    axes = list(fig.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes[len(keys):]:
        ax.remove()
    folds = sorted({t.get("outer_fold") for t in trials}, key=str)
    colour = {k: PALETTE[i % len(PALETTE)] if len(folds) > 1 else PALETTE[0] for i, k in enumerate(folds)}
    kinds = [_tune_kind(t, score) for t in trials]
    best = _best_per_fold(trials, kinds, score)
    for i, key in enumerate(keys):
        ax = axes[i]
        shown = [(t, kind) for t, kind in zip(trials, kinds) if key in (t.get("config") or {})]
        values = [t["config"][key] for t, _ in shown]
        spec = (space or {}).get(key)
        axis, log = _tune_axis(key, spec, values)
        if axis == "category":
            labels, x = _tune_categories(spec, values)
        else:
            x = [float(v) for v in values]
        for (t, kind), xi in zip(shown, x):
            c = colour[t.get("outer_fold")]
            if kind == "complete":
                ax.scatter(xi, t[score], s=22, color=c, zorder=3)
                if id(t) in best:
                    ax.scatter(xi, t[score], s=140, marker="*", color=c, edgecolors="black", linewidths=0.6, zorder=4)
            elif kind == "stopped":
                ax.scatter(xi, t["val_loss_at_stop"], s=22, facecolors="none", edgecolors=c, zorder=3)
            else:  # no score: along the top of the panel
                ax.scatter(xi, 0.96, s=26, marker="x", color=c, transform=ax.get_xaxis_transform(), zorder=3)
        if axis == "category":
            ax.set_xticks(range(len(labels)), labels, rotation=30 if sum(map(len, labels)) > 24 else 0)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        elif log:
            ax.set_xscale("log")
            if axis == "integer" and len(set(x)) <= 8:
                ax.set_xticks(sorted(set(x)), [str(int(v)) for v in sorted(set(x))])
                ax.xaxis.set_minor_locator(NullLocator())
            else:  # 0.01, 0.02, 0.05, 0.1, ... over a decade or two; powers of ten over more
                decades = np.log10(max(x) / min(x))
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades <= 2 else (1.0,)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
        elif axis == "integer":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.xaxis.set_major_formatter(ScalarFormatter())
        if any(kind == "none" for _, kind in shown):  # room at the top for the crosses
            low, high = ax.get_ylim()
            ax.set_ylim(low, high + 0.15 * (high - low))
        ax.set_xlabel(key + (" (log)" if log else ""))
        ax.grid(alpha=0.3)
        if i % columns == 0:
            ax.set_ylabel(f"{score}\n(lower is better)")
    legend = {
        "complete": Line2D([], [], marker="o", linestyle="", color="grey", label=f"complete: {score}"),
        "stopped": Line2D([], [], marker="o", linestyle="", color="grey", markerfacecolor="none",
                          label="stopped early (ASHA): val_loss when stopped"),
        "none": Line2D([], [], marker="x", linestyle="", color="grey", label="failed: no score"),
    }
    handles = [legend[kind] for kind in ("complete", "stopped", "none") if kind in kinds]
    if best:
        handles.append(Line2D([], [], marker="*", linestyle="", markersize=11, color="grey",
                              markeredgecolor="black", label="best of its search"))
    if len(folds) > 1:
        handles += [Line2D([], [], marker="s", linestyle="", color=colour[k], label=f"outer fold {k}") for k in folds]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
    _title(fig, f"{title} ({len(trials)} trials)")
    return fig


def _tune_kind(trial: dict, score: str) -> str:
    """``complete`` (it has a score), ``stopped`` (ASHA stopped it; it has the val_loss it stopped at), or ``none``."""
    if _finite(trial.get(score)):
        return "complete"
    if str(trial.get("status", "")).startswith("stopped") and _finite(trial.get("val_loss_at_stop")):
        return "stopped"
    return "none"


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _best_per_fold(trials: Sequence[dict], kinds: Sequence[str], score: str) -> set[int]:
    """The ``id`` of each outer fold's best completed trial (lowest ``score``)."""
    best: dict[object, dict] = {}
    for t, kind in zip(trials, kinds):
        fold = t.get("outer_fold")
        if kind == "complete" and (fold not in best or t[score] < best[fold][score]):
            best[fold] = t
    return {id(t) for t in best.values()}


def _tune_axis(key: str, spec: tuple[str, Sequence] | None, values: Sequence) -> tuple[str, bool]:
    """A tuned key's axis: ``category``, ``integer`` or ``number``, and whether it is on a log scale."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    name = spec[0] if spec else None
    if name in _TUNE_CATEGORIES or not numbers or (name is None and not values):
        return "category", False
    positive = bool(values) and min(values) > 0
    if name is None:  # no space: what the values are
        integer = all(isinstance(v, int) for v in values)
        return ("integer" if integer else "number"), positive and key.endswith(("lr", "weight_decay"))
    return ("integer" if name in _TUNE_INTEGER else "number"), positive and name in _TUNE_LOG


def _tune_label(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _tune_categories(spec: tuple[str, Sequence] | None, values: Sequence) -> tuple[list[str], list[float]]:
    """Tick labels (the space's values in its order, then any other seen) and each value's x, spread a little
    around its position where several trials share it."""
    options = list(spec[1]) if spec and spec[0] in _TUNE_CATEGORIES else []
    labels = list(dict.fromkeys([_tune_label(v) for v in options] + sorted({_tune_label(v) for v in values})))
    position = {text: i for i, text in enumerate(labels)}
    seen: dict[str, int] = {}
    counts = {text: sum(_tune_label(v) == text for v in values) for text in labels}
    x = []
    for v in values:
        text = _tune_label(v)
        n, k = counts[text], seen.get(text, 0)
        seen[text] = k + 1
        x.append(position[text] + (0.0 if n == 1 else 0.3 * (k / (n - 1) - 0.5)))
    return labels, x


def barren_plateau_figure(records: Sequence[dict]) -> Figure:
    """Gradient variance against ``n_qubits``, log scale, one line per depth; ``uniform`` solid, ``model`` dashed.

    Takes the records of `qlit.evaluation.diagnostics.barren_plateau_sweep`; a grey dotted line shows ``2^-n``
    through the first ``uniform`` line's first point, the decay of an exponential barren plateau.
    """
    fig = _figure(6.0, 4.2)
    ax = fig.add_subplot()
    depths = sorted({r["n_layers"] for r in records})
    styles = {"uniform": ("-", "o"), "model": ("--", "s")}
    for init in dict.fromkeys(r["init"] for r in records):
        for d, layers in enumerate(depths):
            line = sorted((r for r in records if r["init"] == init and r["n_layers"] == layers),
                          key=lambda r: r["n_qubits"])
            if not line:
                continue
            style, marker = styles.get(init, (":", "^"))
            ax.plot([r["n_qubits"] for r in line], [r["variance"] for r in line], style, marker=marker,
                    color=PALETTE[d % len(PALETTE)], label=f"{layers} layers, init {init}")
    reference = sorted((r for r in records if r["init"] == "uniform"), key=lambda r: (r["n_layers"], r["n_qubits"]))
    if reference:
        widths = np.array(sorted({r["n_qubits"] for r in records}), dtype=float)
        start = reference[0]
        ax.plot(widths, start["variance"] * 2.0 ** (start["n_qubits"] - widths), ":", color="grey", label="∝ 2^-n")
    ax.set_yscale("log")
    ax.set_xticks(sorted({r["n_qubits"] for r in records}))
    ax.set_xlabel("n_qubits")
    ax.set_ylabel("Var[∂C/∂θ] (mean over angles)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    first = records[0] if records else {"ansatz": "?", "cost": "?", "n_samples": 0}
    _title(fig, f"barren plateau: {first['ansatz']} ansatz, C = {first['cost']}, {first['n_samples']} initialisations")
    return fig


def render(fig: Figure) -> np.ndarray:
    """Draw the figure into an ``(H, W, 3)`` uint8 array."""
    canvas = fig.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(image: Figure | np.ndarray, path: str | Path) -> Path:
    """Write a figure, or pixels from `render`, as a PNG (creating the folder); returns the path."""
    from matplotlib.figure import Figure
    from matplotlib.image import imsave

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, render(image) if isinstance(image, Figure) else image, format="png")
    return path


def log_image(experiment, tag: str, image: np.ndarray, step: int = 0) -> None:
    """Add pixels from `render` to a TensorBoard ``SummaryWriter`` as an image."""
    experiment.add_image(tag, image, global_step=step, dataformats="HWC")


def equity_curves_figure(
    summary_or_curves: Mapping[str, Any], title: str, labels: Mapping[str, str] | None = None
) -> Figure:
    """The compounded equity of buy-and-hold and each model's long/flat strategy over the pooled test days.

    Args:
        summary_or_curves: A `qlit.evaluation.strategy.strategy_summary`, or its ``curves``.
        title: The figure's title.
        labels: The models' names in the legend (default: their keys with spaces for underscores).
    """
    import matplotlib.ticker

    curves = summary_or_curves.get("curves", summary_or_curves)
    days = np.asarray(curves["dates"], dtype="datetime64[D]")
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    models = [name for name in curves["equity"] if name != "buy_and_hold"]
    for m, name in enumerate(models):
        label = f"{(labels or {}).get(name, name.replace('_', ' '))} (long/flat)"
        ax.plot(days, curves["equity"][name], color=PALETTE[m % len(PALETTE)], linewidth=1.0, label=label)
    if "buy_and_hold" in curves["equity"]:
        ax.plot(days, curves["equity"]["buy_and_hold"], color="black", linewidth=1.6, label="buy and hold")
    for start in curves.get("fold_starts", [])[1:]:
        ax.axvline(np.datetime64(start), color="grey", linestyle=":", linewidth=0.8)
    ax.axhline(1.0, color="grey", linewidth=0.6)
    # log scale: equal vertical distances are equal percentage moves, early and late in a long span alike
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel("growth of 1, net of costs (log scale)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _title(fig, title)
    return fig
