"""What a `HybridClassifier` does differently when it is evaluated on a Qiskit device (``--model.hardware``).

The model's hooks call these: refuse training, send every row of a test or predict pass to the device before the
steps ask for them (a chunk of rows per job, `qlit.models.qiskit_jobs`), and report what the device was asked for.
Qiskit itself is imported only when a device is named (`qlit.models.qiskit_backend`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from qlit.errors import QlitError

# Where and how a trained model is evaluated on a device: not saved as hyperparameters.
HARDWARE_OPTIONS = ("hardware", "hardware_shots", "hardware_chunk")


def hardware_options(hardware: str | None, shots: int, chunk: int, core: str) -> Any:
    """The checked `HardwareOptions` of a ``hardware`` run, or None without one."""
    if hardware is None:
        return None
    if not isinstance(hardware, str) or not hardware.startswith("qiskit:"):
        raise QlitError(
            f"hardware must name a Qiskit device, qiskit:<name> (e.g. qiskit:fake_manila), got {hardware!r}"
        )
    if core != "quantum":
        raise QlitError("hardware runs the quantum core: --model.core classical has no circuit to send")
    from qlit.models.qiskit_backend import HardwareOptions

    return HardwareOptions(shots=shots, chunk=chunk).check()


def device_circuit(model: Any) -> Any:
    """The `HardwareCircuit` ``model`` evaluates on, or None when it runs on a simulator."""
    circuit = getattr(getattr(model.net, "core", None), "circuit", None)
    return circuit if hasattr(circuit, "runner") else None


def refuse_training(model: Any) -> None:
    """A model on a device is evaluated there, never trained there."""
    if device_circuit(model) is not None:
        raise QlitError(
            f"training on hardware backend {model.net.spec.backend!r} is refused (evaluation only): "
            "train on a simulator, then qlit test --ckpt_path best --model.hardware ..."
        )


def send_ahead(model: Any, loaders: Any, folder: Path | None = None) -> None:
    """Send every row of the pass's data to the device first, a chunk per job, before the steps ask for them.

    The pre-net runs here on the CPU; the circuit's inputs are collected and sent together, so a test set is one
    job per chunk of rows, not one per batch.

    Args:
        model: A `HybridClassifier`; nothing happens unless it evaluates on a device.
        loaders: The pass's loader or loaders of ``(features, ...)`` batches.
        folder: Where job ids and results are kept; default ``<trainer log_dir>/hardware`` (none without a trainer).
    """
    circuit = device_circuit(model)
    if circuit is None:
        return
    circuit.runner.reset_usage()
    log_dir = model.trainer.log_dir if model._trainer is not None else None
    circuit.runner.folder = folder or (Path(log_dir) / "hardware" if log_dir else None)
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    circuit.collecting = []
    try:
        with torch.no_grad():
            for loader in loaders:
                for batch in loader or ():
                    model(batch[0].to(model.device))
        rows = circuit.collecting
    finally:
        circuit.collecting = None
    if rows:
        circuit.prefetch(torch.cat(rows))


def usage_summary(runner: Any, stage: str) -> dict[str, Any]:
    """What ``runner`` (a `QiskitRunner`) asked its device for since its usage was reset, as plain data."""
    usage = runner.usage
    return {
        "backend": runner.name, "stage": stage, "circuits": usage.circuits, "jobs": usage.jobs,
        "shots": usage.shots, "shots_per_circuit": runner.options.shots, "chunk": runner.options.chunk,
        "reused_jobs": usage.reused_chunks, "taken_up_jobs": usage.taken_up, "retries": usage.retries,
        "device_seconds": usage.device_seconds, "job_ids": usage.job_ids,
    }  # fmt: skip


def usage_line(summary: dict[str, Any], where: str = "") -> str:
    """`usage_summary` as the one line every hardware run ends with."""
    seconds = "not reported" if summary["device_seconds"] is None else f"{summary['device_seconds']:g} s"
    return (
        f"qlit: hardware {summary['backend']}: {summary['circuits']} circuits in {summary['jobs']} jobs, "
        f"{summary['shots']} shots, {summary['reused_jobs']} finished jobs reused, {summary['taken_up_jobs']} "
        f"unfinished jobs taken up, device time {seconds}{where}"
    )


def report_usage(model: Any, stage: str) -> None:
    """Write what the device was asked for (``hardware_<stage>.json``) and say it on one line."""
    circuit = device_circuit(model)
    if circuit is None or not model.trainer.is_global_zero:
        return
    summary = usage_summary(circuit.runner, stage)
    where = ""
    if model.trainer.log_dir:
        path = Path(model.trainer.log_dir) / f"hardware_{stage}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=1) + "\n")
        where = f" ({path})"
    print(usage_line(summary, where), file=sys.stderr)
