"""The barren-plateau diagnostic, the circuit drawings in TensorBoard, and the report figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pennylane as qml
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from qlit.cli import main
from qlit.errors import QlitError
from qlit.evaluation import diagnostics, plots
from qlit.models.circuit import pennylane_circuit
from tests.conftest import CONFIGS, QUICK


def test_variance_decays_with_qubits_for_deep_random_circuits():
    narrow, wide = (diagnostics.gradient_variance(n, 6, "strong", init="uniform", n_samples=150) for n in (2, 6))
    # Measured 9.5e-2 and 6.8e-3 with 200 initialisations: a factor 14, about 2^-n.
    assert narrow["variance"] > 5 * wide["variance"]
    assert abs(wide["mean_gradient"]) < 0.02  # random circuits: gradients average to zero


@pytest.mark.parametrize("ansatz,init", [("strong", "uniform"), ("basic", "model")])
def test_gradients_agree_with_pennylane(ansatz, init):
    n_qubits, n_layers, n_samples = 3, 2, 12
    gradients, weights, angles = diagnostics.parameter_gradients(
        n_qubits, n_layers, ansatz, "X", init, n_samples=n_samples, seed=3
    )
    device = qml.device("default.qubit", wires=n_qubits)
    qnode = qml.QNode(pennylane_circuit(n_qubits, ansatz, "X"), device, interface="torch", diff_method="backprop")
    reference = []
    for w, x in zip(weights, angles):
        w = w.clone().requires_grad_()
        qnode(x, w)[0].backward()  # <Z_0>
        reference.append(w.grad)
    reference = torch.stack(reference)
    assert (gradients - reference).abs().max().item() < 1e-10
    record = diagnostics.gradient_variance(n_qubits, n_layers, ansatz, "X", init, n_samples=n_samples, seed=3)
    expected = reference.reshape(n_samples, -1).var(0, unbiased=True).mean().item()
    assert record["variance"] == pytest.approx(expected, rel=1e-9)


def test_sweep_report_and_tensorboard(tmp_path):
    records = diagnostics.barren_plateau_sweep([2, 3], [1, 2], ansatz="basic", n_samples=8)
    assert [(r["init"], r["n_layers"], r["n_qubits"]) for r in records] == [
        (init, layers, n) for init in ("uniform", "model") for layers in (1, 2) for n in (2, 3)
    ]
    paths = diagnostics.write_barren_plateau_report(records, tmp_path / "report")
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "barren_plateau.json", "barren_plateau.md", "barren_plateau.png"
    ]
    assert json.loads(paths["json"].read_text())["records"] == records
    with pytest.raises(QlitError, match="barren_plateau.json exists"):
        diagnostics.write_barren_plateau_report(records[:1], tmp_path / "report")
    assert json.loads(paths["json"].read_text())["records"] == records
    table = paths["md"].read_text()
    assert f"| 2 | {records[2]['variance']:.3e} | {records[3]['variance']:.3e} |" in table
    writer = SummaryWriter(str(tmp_path / "tb"))
    diagnostics.log_barren_plateau(records, writer)
    writer.close()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    series = events.Scalars("barren_plateau/uniform/layers_2")
    assert [(e.step, e.value) for e in series] == [
        (r["n_qubits"], pytest.approx(r["variance"], rel=1e-6)) for r in records[2:4]
    ]
    assert events.Tags()["images"] == ["barren_plateau/figure"]


def test_bad_diagnostic_arguments_name_the_value():
    with pytest.raises(QlitError, match="n_samples"):
        diagnostics.gradient_variance(2, 1, n_samples=1)
    with pytest.raises(QlitError, match="'gaussian'"):
        diagnostics.gradient_variance(2, 1, init="gaussian")
    with pytest.raises(QlitError, match="n_qubits=40"):
        diagnostics.gradient_variance(40, 1)


def test_fit_draws_the_initial_and_the_trained_circuit(tmp_path):
    main(["fit", "--config", str(CONFIGS / "iris.yaml"), "--trainer.max_epochs=2", "--model.lr=0.2", *QUICK])
    run = tmp_path / "lightning_logs" / "iris" / "version_0"
    events = EventAccumulator(str(run), size_guidance={"tensors": 0})
    events.Reload()
    texts = {tag: events.Tensors(f"{tag}/text_summary")[-1] for tag in ("circuit/initial", "circuit/trained")}
    initial, trained = (text.tensor_proto.string_val[0].decode() for text in texts.values())
    assert texts["circuit/initial"].step == 0 and texts["circuit/trained"].step > 0
    weights = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["net.core.circuit.weights"]
    assert f"RX({weights[0, 0].item():.2f})" in trained.replace("RX(-0.00)", "RX(0.00)")
    assert initial != trained


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_confusion_matrix_title_fits_the_figure(n_classes):
    names = ["setosa", "versicolor", "virginica", "AMR", "SAS"][:n_classes]
    title = "classical twin, fold 0: test_acc 0.900"
    fig = plots.confusion_matrix_figure(np.eye(n_classes, dtype=int) * 10, names, title)
    plots.render(fig)
    (text,) = [t for t in fig.texts if t.get_text() == title]
    box = text.get_window_extent(fig.canvas.get_renderer())
    width, height = fig.get_size_inches() * fig.dpi
    assert 0 <= box.x0 and box.x1 <= width and box.y1 <= height, (box, width)


def test_barren_plateau_figure_is_log_scale():
    records = [
        {"n_qubits": n, "n_layers": 2, "init": "uniform", "variance": 2.0**-n, "ansatz": "basic", "cost": "<Z_0>",
         "n_samples": 8}
        for n in (2, 3, 4)
    ]
    fig = plots.barren_plateau_figure(records)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    assert math.isclose(ax.lines[0].get_ydata()[-1], 2.0**-4)


def test_qlit_diagnose_writes_a_report_per_run(capfd):
    args = ["diagnose", "--config", str(CONFIGS / "iris.yaml"), "--qubits=[2,3]", "--layers=[1,2]", "--samples=16"]
    main(args)
    main(args)
    for n in (0, 1):
        folder = Path(f"lightning_logs/iris/diagnose_{n}")
        report = json.loads((folder / "barren_plateau.json").read_text())
        assert {(r["n_qubits"], r["n_layers"]) for r in report["records"]} == {(2, 1), (2, 2), (3, 1), (3, 2)}
        assert (folder / "barren_plateau.png").read_bytes()[:4] == b"\x89PNG"
        assert list(folder.glob("events.out.tfevents.*"))
    assert "| n_layers | 2 qubits | 3 qubits |" in capfd.readouterr().out

    with pytest.raises(SystemExit) as exit_info:
        main([*args[:-1], "--samples=1"])
    assert exit_info.value.code == 2 and "--samples must be an integer >= 2" in capfd.readouterr().err
    assert not Path("lightning_logs/iris/diagnose_2").exists()


def test_qlit_diagnose_draws_the_model_init_with_the_configured_init_std(capfd):
    args = ["diagnose", "--config", str(CONFIGS / "iris.yaml"), "--qubits=[2]", "--layers=[1]", "--samples=4",
            "--model.init_std=0.7"]
    main(args)
    report = json.loads(Path("lightning_logs/iris/diagnose_0/barren_plateau.json").read_text())
    model = next(r for r in report["records"] if r["init"] == "model")
    assert model["init_std"] == 0.7 and "normal with std 0.7" in capfd.readouterr().out
    _, weights, _ = diagnostics.parameter_gradients(2, 1, "basic", "X", "model", n_samples=4, init_std=0.7)
    expected = diagnostics.gradient_variance(2, 1, "basic", "X", "model", n_samples=4, init_std=0.7)["variance"]
    assert model["variance"] == pytest.approx(expected, rel=1e-12)
    assert diagnostics.gradient_variance(2, 1, "basic", "X", "model", n_samples=4)["variance"] != expected
    assert weights.std().item() > 0.3  # drawn at 0.7, not at the default 0.05
