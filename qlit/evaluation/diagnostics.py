"""Barren-plateau diagnostic: how the gradient of a local cost varies over random initialisations.

McClean et al. (2018, "Barren plateaus in quantum neural network training landscapes") showed that for
random parametrised circuits the gradient of a cost, averaged over initialisations, is zero, and its
variance falls exponentially with the number of qubits once the circuit is deep enough: a gradient step
then sees only noise. The quantity is, for each trainable angle θ_k,

    Var_θ[∂C/∂θ_k],   C = ⟨Z_0⟩ (a local cost: Pauli Z on wire 0),

the variance over many random initialisations θ, here averaged over k. `gradient_variance` computes it
for one circuit of qlit's family (angle embedding, ``n_layers`` entangling layers), `barren_plateau_sweep`
for a grid of widths and depths, with two initialisations:

* ``uniform``: every angle uniform in [0, 2π), McClean's random circuits;
* ``model``: qlit's own initialisation, normal with the model's ``init_std`` (default 0.05, `WEIGHT_INIT_STD`);
  ``qlit diagnose`` takes it from the config.

How to read it: with ``uniform``, a variance that drops by a constant factor per added qubit (about 2× per
qubit for ``strong`` at 6 layers or more) is a barren plateau: a circuit that wide, started at random,
will barely train. The ``model`` line shows whether qlit's small-angle start escapes it: if its variance
stays flat as qubits are added, training starts with usable gradients; if it falls like ``uniform``, a
wider circuit needs a different ansatz, fewer layers or a smarter start. Compare depths at one width the
same way.

Each initialisation also draws its own input angles, uniform in (-π/2, π/2) as the pre-net produces them
(``inputs="zero"`` starts from |0…0⟩ instead, as McClean et al. do). The circuits run on the ``qlit``
backend in float64, all initialisations of a chunk in one vectorised call (`torch.func.vmap`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch.func import functional_call, grad, vmap

from qlit.commands import DiagnoseOptions
from qlit.errors import QlitError
from qlit.models.circuit import WEIGHT_INIT_STD, check_circuit
from qlit.models.statevector import StatevectorCircuit

Init = Literal["uniform", "model"]
INITS: tuple[str, ...] = ("uniform", "model")
COST = "<Z_0>"
# Amplitudes held per vectorised chunk: bounds memory (a few copies of 2^20 complex128 values, tens of MiB).
CHUNK_AMPLITUDES = 2**20


def _draw_weights(init: str, shape: tuple[int, ...], generator: torch.Generator, init_std: float) -> torch.Tensor:
    if init == "uniform":
        return torch.rand(shape, dtype=torch.float64, generator=generator) * (2 * math.pi)
    return torch.randn(shape, dtype=torch.float64, generator=generator) * init_std


def _check_init_std(init_std: Any) -> float:
    if isinstance(init_std, bool) or not isinstance(init_std, (int, float)) or not 0 < init_std < float("inf"):
        raise QlitError(f"init_std must be a finite number > 0, got {init_std!r}")
    return float(init_std)


def parameter_gradients(
    n_qubits: int,
    n_layers: int,
    ansatz: str = "strong",
    embedding: str = "X",
    init: Init = "uniform",
    n_samples: int = 200,
    seed: int = 0,
    inputs: Literal["random", "zero"] = "random",
    init_std: float = WEIGHT_INIT_STD,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ⟨Z_0⟩ for ``n_samples`` random initialisations of one circuit.

    ``init_std`` is the standard deviation of the ``model`` initialisation (the model's ``init_std``).

    Returns:
        ``(gradients, weights, angles)``: ``(n_samples, *weight_shape)`` gradients of ⟨Z_0⟩ with respect to
        every angle, the initialisations they were taken at, and the ``(n_samples, n_qubits)`` input angles.
    """
    check_circuit(n_qubits, n_layers, ansatz, embedding)
    if init not in INITS:
        raise QlitError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    if inputs not in ("random", "zero"):
        raise QlitError(f"inputs must be 'random' or 'zero', got {inputs!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise QlitError(f"n_samples must be an integer >= 2 (a variance needs two), got {n_samples!r}")
    init_std = _check_init_std(init_std)
    circuit = StatevectorCircuit(n_qubits, n_layers, ansatz, embedding).double()
    circuit.fused = False  # the fused path's hand-written backward has no vmap rule; the gate path is plain torch
    generator = torch.Generator().manual_seed(seed)
    weights = _draw_weights(init, (n_samples, *circuit.weights.shape), generator, init_std)
    angles = torch.zeros(n_samples, n_qubits, dtype=torch.float64)
    if inputs == "random":
        angles = (torch.rand(n_samples, n_qubits, dtype=torch.float64, generator=generator) - 0.5) * math.pi

    def cost(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(circuit, {"weights": w}, (x,))[0, 0]

    gradient = vmap(grad(cost))
    chunk = max(1, CHUNK_AMPLITUDES // 2**n_qubits)
    with torch.no_grad():  # torch.func.grad differentiates on its own; nothing else needs a graph
        parts = [gradient(w, x[:, None, :]) for w, x in zip(weights.split(chunk), angles.split(chunk))]
    return torch.cat(parts), weights, angles


def gradient_variance(
    n_qubits: int,
    n_layers: int,
    ansatz: str = "strong",
    embedding: str = "X",
    init: Init = "uniform",
    n_samples: int = 200,
    seed: int = 0,
    inputs: Literal["random", "zero"] = "random",
    init_std: float = WEIGHT_INIT_STD,
) -> dict[str, Any]:
    """The barren-plateau statistic of one circuit: ``Var_θ[∂⟨Z_0⟩/∂θ_k]``, averaged over the angles k.

    Args:
        n_qubits: Circuit width.
        n_layers: Number of entangling layers.
        ansatz: ``"basic"`` or ``"strong"``.
        embedding: Angle-embedding rotation, ``"X"``, ``"Y"`` or ``"Z"``.
        init: ``"uniform"`` (angles uniform in [0, 2π)) or ``"model"`` (normal with std ``init_std``, as qlit trains).
        n_samples: Number of random initialisations.
        seed: Seed of the initialisations and input angles.
        inputs: ``"random"`` input angles per initialisation, uniform in (-π/2, π/2), or ``"zero"``.
        init_std: Standard deviation of the ``model`` initialisation: the model's ``init_std``.

    Returns:
        A record: the arguments (``init_std`` only for ``model``), ``cost``, ``n_parameters``, ``variance``
        (the mean over angles of the per-angle variance over initialisations, ddof 1), ``variance_min`` and
        ``variance_max`` over the angles, and ``mean_gradient`` (the mean over angles and initialisations, near 0
        for ``uniform``).
    """
    gradients = parameter_gradients(n_qubits, n_layers, ansatz, embedding, init, n_samples, seed, inputs, init_std)[0]
    per_angle = gradients.reshape(n_samples, -1).var(0, unbiased=True)
    return {
        "n_qubits": n_qubits,
        "n_layers": n_layers,
        "ansatz": ansatz,
        "embedding": embedding,
        "init": init,
        "init_std": float(init_std) if init == "model" else None,
        "inputs": inputs,
        "n_samples": n_samples,
        "seed": seed,
        "cost": COST,
        "n_parameters": per_angle.numel(),
        "variance": per_angle.mean().item(),
        "variance_min": per_angle.min().item(),
        "variance_max": per_angle.max().item(),
        "mean_gradient": gradients.mean().item(),
    }


def barren_plateau_sweep(
    n_qubits: Iterable[int],
    n_layers: Iterable[int],
    ansatz: str = "strong",
    embedding: str = "X",
    inits: Sequence[str] = INITS,
    n_samples: int = 200,
    seed: int = 0,
    inputs: Literal["random", "zero"] = "random",
    init_std: float = WEIGHT_INIT_STD,
) -> list[dict[str, Any]]:
    """`gradient_variance` for every combination of ``inits``, ``n_layers`` and ``n_qubits``, in that order.

    Every circuit gets the same ``seed``: the records differ by the circuit, not by the luck of the draw.
    ``init_std`` is the standard deviation of the ``model`` initialisation.
    """
    widths, depths = list(n_qubits), list(n_layers)
    if not widths or not depths:
        raise QlitError("barren-plateau sweep needs at least one n_qubits and one n_layers")
    return [
        gradient_variance(n, layers, ansatz, embedding, init, n_samples, seed, inputs, init_std)
        for init in inits
        for layers in depths
        for n in widths
    ]


def _lines(records: Sequence[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    lines: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for record in records:
        lines.setdefault((record["init"], record["n_layers"]), []).append(record)
    return {key: sorted(line, key=lambda r: r["n_qubits"]) for key, line in lines.items()}


def barren_plateau_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: one table per initialisation, a row per depth, a column per width, then how to read it."""
    if not records:
        return ""
    first = records[0]
    widths = sorted({r["n_qubits"] for r in records})
    out = [
        f"# Barren-plateau diagnostic: Var[∂C/∂θ_k] over random initialisations, C = {first['cost']}",
        "",
        f"ansatz `{first['ansatz']}`, embedding `{first['embedding']}`, {first['n_samples']} initialisations per "
        f"circuit (seed {first['seed']}), {first['inputs']} input angles; each cell is the mean over the circuit's "
        "angles of the variance of the gradient (ddof 1).",
    ]
    lines = _lines(records)
    for init in dict.fromkeys(r["init"] for r in records):
        std = next((r.get("init_std") for r in records if r["init"] == init), None) or WEIGHT_INIT_STD
        label = "uniform in [0, 2π)" if init == "uniform" else f"qlit's init, normal with std {std:g}"
        out += ["", f"## init `{init}` ({label})", "",
                "| n_layers | " + " | ".join(f"{n} qubits" for n in widths) + " |",
                "|---:|" + "---:|" * len(widths)]
        for (line_init, layers), line in lines.items():
            if line_init != init:
                continue
            cells = {r["n_qubits"]: f"{r['variance']:.3e}" for r in line}
            out.append(f"| {layers} | " + " | ".join(cells.get(n, "") for n in widths) + " |")
    out += [
        "",
        "A `uniform` variance that falls by a constant factor per added qubit is a barren plateau: started at "
        "random, a circuit that wide barely trains. If the `model` row stays flat as qubits are added, qlit's "
        "small-angle start keeps usable gradients; if it falls like `uniform`, use fewer layers, another ansatz "
        "or fewer qubits.",
    ]
    return "\n".join(out) + "\n"


def write_barren_plateau_report(records: Sequence[dict[str, Any]], folder: str | Path) -> dict[str, Path]:
    """Write ``barren_plateau.json``, ``barren_plateau.md`` and ``barren_plateau.png`` into ``folder``.

    Nothing is overwritten: if any of the three exists, a `QlitError` names it and nothing is written.

    Returns:
        The three paths, under the keys ``"json"``, ``"md"`` and ``"png"``.
    """
    from qlit.evaluation import plots

    folder = Path(folder)
    paths = {kind: folder / f"barren_plateau.{kind}" for kind in ("json", "md", "png")}
    taken = [str(path) for path in paths.values() if path.exists()]
    if taken:
        raise QlitError(f"{taken[0]} exists; write the barren-plateau report into another folder")
    figure = plots.barren_plateau_figure(records)  # drawn before anything is written
    folder.mkdir(parents=True, exist_ok=True)
    paths["json"].write_text(json.dumps({"records": list(records)}, indent=2) + "\n")
    paths["md"].write_text(barren_plateau_table(records))
    plots.save_png(figure, paths["png"])
    return paths


def log_barren_plateau(records: Sequence[dict[str, Any]], writer, tag: str = "barren_plateau") -> None:
    """Log the records to a TensorBoard ``SummaryWriter``.

    One scalar series per initialisation and depth, ``<tag>/<init>/layers_<L>``, whose step is ``n_qubits``
    (TensorBoard then draws variance against width), its log10 beside it, the figure as an image and the
    table as text.
    """
    from qlit.evaluation import plots

    for (init, layers), line in _lines(records).items():
        for record in line:
            variance = record["variance"]
            writer.add_scalar(f"{tag}/{init}/layers_{layers}", variance, global_step=record["n_qubits"])
            if variance > 0:
                writer.add_scalar(f"{tag}/{init}/log10_layers_{layers}", math.log10(variance),
                                  global_step=record["n_qubits"])
    plots.log_image(writer, f"{tag}/figure", plots.render(plots.barren_plateau_figure(records)))
    writer.add_text(f"{tag}/table", barren_plateau_table(records))
    writer.flush()


def default_widths(n_qubits: int) -> list[int]:
    """2, 4, ... up to twice the model's width, at most 12 qubits, the model's own width included."""
    return sorted({*range(2, min(2 * n_qubits, 12) + 1, 2), n_qubits})


def default_depths(n_layers: int) -> list[int]:
    """One layer, the model's depth and four times it."""
    return sorted({1, n_layers, 4 * n_layers})


def run_diagnose(config: Any, hparams: Any, options: DiagnoseOptions) -> dict[str, Path]:
    """``qlit diagnose``: sweep around the configured circuit and write the report into a new folder.

    The folder is ``<save_dir>/<experiment>/diagnose_<n>/`` of the config's TensorBoardLogger: the
    report files and TensorBoard events (the variances as scalars against ``n_qubits``, the figure
    and the table). The ``model`` initialisation is drawn with the configured ``init_std``.

    Raises:
        QlitError: a width or depth below 1, or fewer than 2 samples.
    """
    from torch.utils.tensorboard import SummaryWriter

    from qlit.io.runs import claim_version, release_if_empty, tensorboard_loggers
    from qlit.models.circuit import check_circuit

    widths = list(options.qubits) if options.qubits else default_widths(int(hparams["n_qubits"]))
    depths = list(options.layers) if options.layers else default_depths(int(hparams["n_layers"]))
    samples = options.samples
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise QlitError(f"--samples must be an integer >= 2 (a variance needs two), got {samples!r}")
    for width in widths:
        for depth in depths:
            check_circuit(width, depth, hparams["ansatz"], hparams["embedding"])
    loggers = tensorboard_loggers(config)
    root = Path(loggers[0].save_dir) / (loggers[0].get("name") or "") if loggers else Path("lightning_logs")
    print(
        f"qlit diagnose: {hparams['ansatz']} ansatz, {len(widths)} widths x {len(depths)} depths, "
        f"{samples} initialisations each",
        flush=True,
    )
    init_std = _check_init_std(hparams.get("init_std", WEIGHT_INIT_STD))
    records = barren_plateau_sweep(
        widths, depths, hparams["ansatz"], hparams["embedding"], n_samples=samples, init_std=init_std
    )
    folder = claim_version(root, prefix="diagnose")
    try:
        paths = write_barren_plateau_report(records, folder)
        writer = SummaryWriter(str(folder))
        log_barren_plateau(records, writer)
        writer.close()
    except BaseException:
        release_if_empty(folder)
        raise
    print("\n" + barren_plateau_table(records), flush=True)
    written = f"{paths['json']}, {paths['md']} and {paths['png']}"
    print(f"qlit diagnose: wrote {written} (and TensorBoard events)", flush=True)
    return paths
