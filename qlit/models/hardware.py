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


def send_ahead(model: Any, loaders: Any) -> None:
    """Send every row of the pass's data to the device first, a chunk per job, before the steps ask for them.

    The pre-net runs here on the CPU; the circuit's inputs are collected and sent together, so a test set is one
    job per chunk of rows, not one per batch.
    """
    circuit = device_circuit(model)
    if circuit is None:
        return
    circuit.runner.reset_usage()
    log_dir = model.trainer.log_dir if model._trainer is not None else None
    circuit.runner.folder = Path(log_dir) / "hardware" if log_dir else None
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


def report_usage(model: Any, stage: str) -> None:
    """Write what the device was asked for (``hardware_<stage>.json``) and say it on one line."""
    circuit = device_circuit(model)
    if circuit is None or not model.trainer.is_global_zero:
        return
    usage, runner = circuit.runner.usage, circuit.runner
    summary = {
        "backend": runner.name, "stage": stage, "circuits": usage.circuits, "jobs": usage.jobs,
        "shots": usage.shots, "shots_per_circuit": runner.options.shots, "chunk": runner.options.chunk,
        "reused_jobs": usage.reused_chunks, "retries": usage.retries, "device_seconds": usage.device_seconds,
        "job_ids": usage.job_ids,
    }  # fmt: skip
    where = ""
    if model.trainer.log_dir:
        path = Path(model.trainer.log_dir) / f"hardware_{stage}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=1) + "\n")
        where = f" ({path})"
    seconds = "not reported" if usage.device_seconds is None else f"{usage.device_seconds:g} s"
    print(
        f"qlit: hardware {runner.name}: {usage.circuits} circuits in {usage.jobs} jobs, {usage.shots} shots, "
        f"{usage.reused_chunks} finished jobs reused, device time {seconds}{where}",
        file=sys.stderr,
    )
