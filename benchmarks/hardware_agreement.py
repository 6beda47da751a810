"""Does qlit's simulator, under a device's converted calibration, predict what the device measures?

For Iris and the genomic config, trains two models on qlit's simulator (briefly, on the CPU): one noiseless and one
noise-aware (``noise="qiskit:fake_manila"``, the device's calibration as qlit's channels). Each model's test rows
then go to FakeManilaV2 (Qiskit Aer with the device's noise model, SamplerV2, 4096 shots a row: the
``--model.hardware`` path, `qlit.models.qiskit_backend.QiskitRunner`) and through qlit's simulator, exact, with the
converted noise and without noise. Reported per model: the accuracy on the device, the accuracy qlit predicts
under the converted noise, their difference (aim: within 3 points), the noiseless accuracy, and the mean |Δ⟨Z⟩|
per row and wire between the device's ⟨Z⟩ and qlit's, with the converted noise and without.

    python benchmarks/hardware_agreement.py                 # both configs, ~3 minutes on 2 cores
    python benchmarks/hardware_agreement.py --configs iris --epochs 20
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from pathlib import Path

import lightning as L
import torch
import yaml

from qlit.models import StatevectorCircuit
from qlit.models.circuit import CircuitSpec
from qlit.models.classifier import HybridClassifier
from qlit.models.qiskit_backend import HardwareOptions, QiskitRunner

ROOT = Path(__file__).resolve().parent.parent
DEVICE = "qiskit:fake_manila"
SHOTS = 4096
EPOCHS = {"iris": 30, "genomic": 30}
MODEL_KEYS = ("n_qubits", "n_layers", "ansatz", "embedding", "lr", "weight_decay", "lr_factor", "lr_patience")


def _datamodule(config: dict):
    module, _, name = config["data"]["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**config["data"]["init_args"])


def train(name: str, noise: str | None, epochs: int) -> tuple[HybridClassifier, object]:
    """A model of ``configs/<name>.yaml`` trained ``epochs`` epochs on qlit's simulator, and its data module."""
    config = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    L.seed_everything(config.get("seed_everything", 42), verbose=False)
    datamodule = _datamodule(config)
    model = HybridClassifier(
        datamodule.num_features, datamodule.num_classes, list(datamodule.class_names),
        **{k: config["model"][k] for k in MODEL_KEYS}, noise=noise,
    )  # fmt: skip
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    return model, datamodule


@torch.inference_mode()
def score(model: HybridClassifier, datamodule) -> dict[str, float]:
    """The test rows on the device and on qlit's simulator, with the converted noise and without."""
    datamodule.setup("test")
    rows = [(x.float(), y) for x, y in datamodule.test_dataloader()]
    x, labels = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows]).numpy()
    net, spec = model.net, model.net.spec
    angles = (torch.tanh(net.pre(x)) * (math.pi / 2)).double()
    weights = net.core.weights.detach().double()
    shape = dict(n_qubits=spec.n_qubits, n_layers=spec.n_layers, ansatz=spec.ansatz, embedding=spec.embedding)
    runner = QiskitRunner(CircuitSpec(**shape, backend=DEVICE), HardwareOptions(shots=SHOTS))
    started = time.perf_counter()
    device = torch.from_numpy(runner.expectations(angles.numpy(), weights.numpy().reshape(-1)))
    device_s = time.perf_counter() - started
    z = {"device": device}
    for key, noise in (("converted", DEVICE), ("noiseless", None)):
        circuit = StatevectorCircuit(CircuitSpec(**shape, noise=noise)).double()
        circuit.weights.copy_(weights)
        z[key] = circuit(angles)

    def accuracy(values: torch.Tensor) -> float:
        logits = net.post(values.float())
        logits = logits.squeeze(-1) if model.binary else logits
        return float((model.predicted_classes(logits).numpy() == labels).mean())

    acc = {key: accuracy(values) for key, values in z.items()}
    return {
        "rows": len(labels), "device_acc": acc["device"], "qlit_acc": acc["converted"],
        "noiseless_acc": acc["noiseless"], "difference": acc["converted"] - acc["device"],
        "gap_converted": float((z["device"] - z["converted"]).abs().mean()),
        "gap_noiseless": float((z["device"] - z["noiseless"]).abs().mean()), "device_s": device_s,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(EPOCHS), choices=list(EPOCHS))
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: iris 30, genomic 30)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = [
        f"FakeManilaV2, {SHOTS} shots a row; qlit exact. acc: test accuracy; Δ: qlit's predicted minus the device's; "
        "gap: mean |Δ⟨Z⟩| per row and wire, device against qlit",
        "",
        "| config | trained | rows | acc on device | acc qlit predicts (converted noise) | Δ | acc qlit noiseless "
        "| gap, converted noise | gap, noiseless | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in args.configs:
        for label, noise in (("noiseless", None), ("noise-aware", DEVICE)):
            started = time.perf_counter()
            model, datamodule = train(name, noise, args.epochs or EPOCHS[name])
            seconds = time.perf_counter() - started
            r = score(model, datamodule)
            lines.append(
                f"| {name} | {label} | {r['rows']} | {r['device_acc']:.3f} | {r['qlit_acc']:.3f} | "
                f"{100 * r['difference']:+.1f} pt | {r['noiseless_acc']:.3f} | {r['gap_converted']:.4f} | "
                f"{r['gap_noiseless']:.4f} | {seconds:.0f} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
