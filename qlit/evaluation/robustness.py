"""``qlit robustness``: one trained checkpoint scored over a grid of noise levels and shot counts.

Each cell rebuilds the checkpoint's model with one gate-noise level (``channel``, after every gate as
drawn) and one shot count (``null``: exact expectation values), loads the trained weights and scores one
split of the fold the checkpoint was trained on (the split is checked, as ``qlit validate`` and ``qlit test``
check it). With shots the score is random: every cell is repeated ``repeats`` times from seeds
``seed, seed + 1, ...`` and the table gives the mean and standard deviation. The grid replaces the config's
own ``noise`` and ``shots``.

Which rows: the sweep is for choosing (between checkpoints, noise-aware training regimes, shot budgets),
so by default it scores the fold's validation rows, never its test rows. ``split="test"`` scores the test
fold instead, for the one final report of a choice already made; every file written then says so.

Reference lines: the checkpoint's own accuracy, exact and noiseless, and the classical twin's, read from
a twin checkpoint (``--twin_ckpt``: the same config trained with ``--model.core classical`` on
the same fold; its split is checked too). Nothing is trained here, so without one the twin line is left
out and the report says so.

On a device (``--model.hardware qiskit:fake_manila``, or a real IBM device): the same rows also run on the device,
once, at ``--model.hardware_shots`` a row (a device run is paid for, so it is not repeated), beside the accuracy
qlit's simulator predicts for it under the device's calibration converted to qlit's channels
(`qlit.models.calibration`). Its jobs are recorded in ``<run>/hardware`` as ``qlit test`` records them, so a killed
sweep resumes without paying again.

Writes ``robustness.json``, ``robustness.md`` and ``robustness.png`` into ``<run>/robustness`` (or
``robustness_1``, ... when that exists).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from qlit.commands import RobustnessOptions
from qlit.engine.predictions import predict
from qlit.errors import QlitError
from qlit.evaluation.plots import PALETTE, _figure, _title, save_png
from qlit.export.artifact import classifier_from_hparams
from qlit.io.checkpoint_content import check_checkpoint_content
from qlit.io.checkpoints import load_checkpoint
from qlit.io.preflight import check_checkpoint_fits, check_split
from qlit.io.provenance import provenance
from qlit.io.runs import unused_path
from qlit.models.circuit import CHANNELS, CircuitSpec
from qlit.models.hardware import device_circuit, send_ahead, usage_line, usage_summary

# Which rows a sweep scores, and how its reports name them.
SPLITS = {"val": "validation", "test": "test"}
_SUBCOMMAND = {"val": "validate", "test": "test"}


def check_grid(
    channel: str, levels: Sequence[float], shots: Sequence[int | None], repeats: int, split: str = "val"
) -> None:
    """Raise a `QlitError` naming the first bad grid setting (validated as model options are)."""
    if split not in SPLITS:
        raise QlitError(f"split must be val (the default) or test, got {split!r}")
    if channel not in CHANNELS:
        raise QlitError(f"channel {channel!r} is not a gate channel; qlit knows {', '.join(CHANNELS)}")
    if not levels or not shots:
        raise QlitError("robustness needs at least one noise level and one shot setting")
    for level in levels:
        CircuitSpec(noise={channel: level})
    for count in shots:
        CircuitSpec(shots=count)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise QlitError(f"repeats must be an integer >= 1, got {repeats!r}")


def _scored_checkpoint(
    path: Path, datamodule: Any, core: str | None = None, split: str = "val"
) -> tuple[dict[str, Any], Any]:
    """A checked checkpoint and the model it builds, refused unless it was trained on ``datamodule``'s split."""
    checkpoint = load_checkpoint(path)
    check_checkpoint_content(checkpoint, path, resume=False)
    hparams = checkpoint["hyper_parameters"]
    if core is not None and hparams.get("core") != core:
        raise QlitError(f"{path}: --twin_ckpt must be a classical twin (core=classical), not {hparams.get('core')!r}")
    model = classifier_from_hparams(hparams)
    check_checkpoint_fits(checkpoint, path, model, datamodule, _SUBCOMMAND[split])
    check_split(checkpoint, path, datamodule, _SUBCOMMAND[split])
    return checkpoint, model


def _on_device(device: Any, hparams: dict[str, Any], state: dict, loader: Any, folder: Path) -> dict[str, Any]:
    """The rows on ``device`` (``(name, HardwareOptions)``), and what qlit predicts there under its calibration."""
    name, options = device
    hardware = {"hardware": name, "hardware_shots": options.shots, "hardware_chunk": options.chunk}
    model = classifier_from_hparams({**hparams, **hardware})
    device_circuit(model).configure(options)
    model.load_state_dict(state)
    model.eval()
    send_ahead(model, loader, folder)
    acc = predict(model, loader).accuracy()
    usage = usage_summary(device_circuit(model).runner, "robustness")
    simulated = classifier_from_hparams(hparams, backend="qlit", conditions={"noise": name})
    simulated.load_state_dict(state)
    return {"backend": name, "shots": options.shots, "acc": acc, "predicted_acc": predict(simulated, loader).accuracy(),
            "usage": usage}  # fmt: skip


def run_robustness(
    checkpoint_path: Path,
    datamodule: Any,
    settings: RobustnessOptions | None = None,
    out_dir: Path | None = None,
    device: tuple[str, Any] | None = None,
) -> dict[str, Any]:
    """Score one checkpoint over ``settings``' noise levels × shot counts; write the table, JSON and figure.

    Args:
        checkpoint_path: A checked Lightning checkpoint of a quantum model.
        datamodule: The config's data module (set up here); its ``settings.split`` rows are scored: ``val``, the
            fold's validation rows, for choosing; ``test``, its test rows, only for the final report of a choice
            made on the validation rows. The reports name it.
        settings: The grid (channel, levels, shots, repeats, seed), the twin checkpoint and the split; the
            defaults of ``qlit robustness`` when ``None``.
        out_dir: Where to write (default: ``robustness`` beside the checkpoint's ``checkpoints`` folder).
        device: ``(qiskit:<name>, HardwareOptions)``: also score the rows on that device (see module docstring).

    Returns:
        The report as written to ``robustness.json``, with ``"files"`` added.
    """
    settings = settings or RobustnessOptions()
    channel, levels, shots = settings.channel, list(settings.noise_levels), list(settings.shots)
    repeats, seed, twin_ckpt, split = settings.repeats, settings.seed, settings.twin_ckpt, settings.split
    check_grid(channel, levels, shots, repeats, split)
    datamodule.setup(_SUBCOMMAND[split])
    checkpoint, base = _scored_checkpoint(checkpoint_path, datamodule, split=split)
    hparams = checkpoint["hyper_parameters"]
    if hparams.get("core") == "classical":
        raise QlitError(f"{checkpoint_path}: a classical twin has no circuit to put under noise")
    datamodule.load_state_dict(checkpoint[type(datamodule).__qualname__])  # the preprocessing it trained with
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    state = checkpoint["state_dict"]
    cells = []
    for count in shots:
        for level in levels:
            model = classifier_from_hparams({**hparams, "noise": {channel: level}, "shots": count})
            model.load_state_dict(state)
            model.eval()
            scores = []
            for k in range(repeats if count is not None else 1):
                torch.manual_seed(seed + k)
                scores.append(predict(model, loader).accuracy())
            cells.append({
                "level": level, "shots": count, "acc_mean": statistics.fmean(scores),
                "acc_sd": statistics.stdev(scores) if len(scores) > 1 else 0.0, "scores": scores,
            })
    del base
    exact = next((c["acc_mean"] for c in cells if c["level"] == 0 and c["shots"] is None), None)
    if exact is None:
        model = classifier_from_hparams(hparams)
        model.load_state_dict(state)
        exact = predict(model, loader).accuracy()
    twin = None
    if twin_ckpt is not None:
        twin_checkpoint, twin_model = _scored_checkpoint(Path(twin_ckpt), datamodule, core="classical", split=split)
        twin_model.load_state_dict(twin_checkpoint["state_dict"])
        twin = predict(twin_model, loader).accuracy()
    on_device = None
    if device is not None:
        on_device = _on_device(device, hparams, state, loader, checkpoint_path.parent.parent / "hardware")
    report = {
        "checkpoint": str(checkpoint_path), "channel": channel, "levels": list(levels), "shots": list(shots),
        "repeats": repeats, "seed": seed, "split": split, "n_rows": len(loader.dataset), "noiseless_acc": exact,
        "twin_ckpt": None if twin_ckpt is None else str(twin_ckpt), "twin_acc": twin, "cells": cells,
        "device": on_device,
        "model": {k: hparams[k] for k in ("n_qubits", "n_layers", "ansatz", "embedding") if k in hparams},
        "provenance": provenance(datamodule.split_identity()),
    }
    folder = unused_path(out_dir or checkpoint_path.parent.parent / "robustness")
    folder.mkdir(parents=True)
    paths = {"json": folder / "robustness.json", "md": folder / "robustness.md", "png": folder / "robustness.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["md"].write_text(robustness_table(report))
    save_png(robustness_figure(report), paths["png"])
    report["files"] = {k: str(v) for k, v in paths.items()}
    if on_device is not None:
        print(usage_line(on_device["usage"], f" ({paths['json']})"), file=sys.stderr)
    return report


def _shots_label(count: int | None) -> str:
    return "exact" if count is None else f"{count} shots"


def _split_words(report: dict[str, Any]) -> str:
    """How a report names its rows: ``validation`` or ``test``."""
    return SPLITS[report["split"]]


def robustness_table(report: dict[str, Any]) -> str:
    """The grid as markdown: one row per noise level, one column per shot setting."""
    cells = {(c["level"], c["shots"]): c for c in report["cells"]}
    head = f"| {report['channel']} p | " + " | ".join(_shots_label(s) for s in report["shots"]) + " |"
    words = _split_words(report)
    note = (
        "Scored on the fold's validation rows (the ones its checkpoint was chosen on): compare and choose here."
        if report["split"] == "val"
        else "Scored on the fold's **test** rows (--split test): report a choice made on the validation rows; "
        "a choice made here makes the test score optimistic."
    )
    lines = [
        f"# Robustness on the {words} split",
        "",
        (
            f"{words.capitalize()} accuracy of `{report['checkpoint']}` ({report['n_rows']} {words} samples) under "
            f"{report['channel']} noise after every gate; mean ± sd over {report['repeats']} seeds where shots make "
            "it random."
        ),
        "",
        note,
        "",
        head,
        "|" + "---|" * (len(report["shots"]) + 1),
    ]
    for level in report["levels"]:
        row = []
        for count in report["shots"]:
            c = cells[(level, count)]
            row.append(f"{c['acc_mean']:.3f}" + (f" ± {c['acc_sd']:.3f}" if count is not None else ""))
        lines.append(f"| {level:g} | " + " | ".join(row) + " |")
    lines += ["", f"Noiseless, exact: {report['noiseless_acc']:.3f}."]
    if report["twin_acc"] is None:
        lines.append("Classical twin: not given (train the config with --model.core classical on the same fold and "
                     "pass its checkpoint as --twin_ckpt).")
    else:
        lines.append(f"Classical twin (`{report['twin_ckpt']}`): {report['twin_acc']:.3f}.")
    device = report.get("device")
    if device is not None:
        name, gap = device["backend"].removeprefix("qiskit:"), 100 * (device["predicted_acc"] - device["acc"])
        lines.append(
            f"On the device {name} ({device['shots']} shots a row, once): {device['acc']:.3f}; qlit's simulator under "
            f"the device's calibration converted to its channels, exact: {device['predicted_acc']:.3f} ({gap:+.1f} "
            f"points). Device use: {device['usage']['circuits']} circuits in {device['usage']['jobs']} jobs."
        )
    return "\n".join(lines) + "\n"


def robustness_figure(report: dict[str, Any]):
    """Accuracy against noise level, one line per shot setting, with the reference lines."""
    fig = _figure(5.2, 3.6)
    ax = fig.add_subplot()
    levels = report["levels"]
    positions = list(range(len(levels)))  # levels span decades and include 0: evenly spaced, labelled
    for i, count in enumerate(report["shots"]):
        cells = {c["level"]: c for c in report["cells"] if c["shots"] == count}
        means = [cells[level]["acc_mean"] for level in levels]
        sds = [cells[level]["acc_sd"] for level in levels]
        ax.errorbar(positions, means, yerr=sds, marker="o", capsize=3, color=PALETTE[i % len(PALETTE)],
                    label=_shots_label(count))
    ax.axhline(report["noiseless_acc"], color="black", linestyle="--", linewidth=1, label="noiseless, exact")
    if report["twin_acc"] is not None:
        ax.axhline(report["twin_acc"], color=PALETTE[5], linestyle=":", linewidth=1.5, label="classical twin")
    if report.get("device") is not None:
        ax.axhline(report["device"]["acc"], color=PALETTE[3], linestyle="-.", linewidth=1.5,
                   label=f"device {report['device']['backend'].removeprefix('qiskit:')}")
    ax.set_xticks(positions, [f"{level:g}" for level in levels])
    ax.set_xlabel(f"{report['channel']} probability per gate")
    ax.set_ylabel(f"{_split_words(report)} accuracy")
    device_acc = report["device"]["acc"] if report.get("device") else 1.0
    low = min([c["acc_mean"] - c["acc_sd"] for c in report["cells"]] + [report["twin_acc"] or 1.0, device_acc])
    ax.set_ylim(max(0.0, math.floor(low * 10) / 10 - 0.05), 1.02)
    ax.legend(fontsize=8, loc="lower left")
    model = report["model"]
    _title(fig, f"Robustness on the {_split_words(report)} split: {model.get('ansatz', '')} ansatz, "
                f"{model.get('n_qubits', '')} qubits")
    return fig
