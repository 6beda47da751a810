"""Figures for cross-validation reports, drawn with matplotlib's Agg canvas (no display, no pyplot).

Each function returns a `matplotlib.figure.Figure`. `render` draws it once into pixels, which
`save_png` writes to a file and `log_image` sends to TensorBoard.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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
    fig = _figure(max(4.5, 1.2 + 0.9 * len(labels)), 4.2)
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
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=n_models, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def tune_scores_figure(trials: Sequence[dict], keys: Sequence[str], score: str, title: str) -> Figure:
    """One panel per tuned key: each completed trial's score against its value (categories for text values)."""
    fig = _figure(max(4.0, 3.2 * len(keys)), 3.4)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    done = [t for t in trials if t.get(score) is not None]
    for ax, key in zip(axes, keys):
        values = [t["config"][key] for t in done]
        scores = [t[score] for t in done]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            ax.scatter(values, scores, s=18, color=PALETTE[0])
            if key.endswith(("lr", "weight_decay")) and min(values) > 0:
                ax.set_xscale("log")
        else:
            categories = sorted({str(v) for v in values})
            ax.scatter([categories.index(str(v)) for v in values], scores, s=18, color=PALETTE[0])
            ax.set_xticks(range(len(categories)), categories)
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{score} (lower is better)")
    _title(fig, title)
    return fig


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
