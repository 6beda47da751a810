"""A device's calibration as qlit's noise (``--model.noise qiskit:fake_manila``): what the conversion reads, the
per-wire channels against PennyLane, the asymmetric readout, agreement with the fake device, and the bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("qiskit")
pytest.importorskip("qiskit_ibm_runtime")
pytest.importorskip("qiskit_aer")

import pennylane as qml  # noqa: E402
import yaml  # noqa: E402
from qiskit_ibm_runtime.fake_provider import FakeManilaV2  # noqa: E402
from qiskit_ibm_runtime.models import BackendProperties  # noqa: E402

from qlit.cli import main  # noqa: E402
from qlit.errors import QlitError  # noqa: E402
from qlit.models import StatevectorCircuit  # noqa: E402
from qlit.models.calibration import NoiseSites, device_sites, noise_sites, pennylane_site_circuit  # noqa: E402
from qlit.models.circuit import CircuitSpec, check_noise  # noqa: E402
from qlit.models.classifier import HybridClassifier  # noqa: E402
from qlit.models.gates import GateProgram  # noqa: E402
from qlit.models.qiskit_backend import HardwareOptions, QiskitRunner  # noqa: E402
from tests.conftest import CONFIGS, fit_iris_one_epoch, one_line_error  # noqa: E402

MANILA = "qiskit:fake_manila"


def _with_readout(properties: BackendProperties, qubit: int, flip0: float, flip1: float) -> BackendProperties:
    """A copy of ``properties`` with ``qubit``'s P(1|0) and P(0|1) replaced."""
    data = properties.to_dict()
    for item in data["qubits"][qubit]:
        item["value"] = {"prob_meas1_prep0": flip0, "prob_meas0_prep1": flip1}.get(item["name"], item["value"])
    return BackendProperties.from_dict(data)


def test_the_conversion_reads_the_devices_own_readout_calibration():
    """Each wire's readout is its measured qubit's (P(1|0), P(0|1)); changing one qubit's changes that wire's only."""
    spec = CircuitSpec(4, 2, "strong", "X", noise=MANILA)
    sites = noise_sites(spec)
    properties = FakeManilaV2().properties()
    expected = [
        (properties.qubit_property(q, "prob_meas1_prep0")[0], properties.qubit_property(q, "prob_meas0_prep1")[0])
        for q in sites.measured
    ]
    np.testing.assert_allclose(sites.readout, expected)
    assert len(set(sites.measured)) == 4
    assert all(flip1 > flip0 for flip0, flip1 in sites.readout)  # the device relaxes while it measures
    changed = device_sites(MANILA, spec, _with_readout(properties, sites.measured[1], 0.2, 0.3))
    assert changed.readout[1] == (0.2, 0.3)
    assert [changed.readout[w] for w in (0, 2, 3)] == [sites.readout[w] for w in (0, 2, 3)]
    assert changed.gates == sites.gates
    # Every gate as drawn carries its natives' noise; a CNOT more than a rotation, as cx errors are ~30x sx errors.
    depolarizing = [dict(c).get("depolarizing", 0) for gate in sites.gates for c in gate]
    assert min(p for p in depolarizing if p > 0) > 0 and max(depolarizing) > 10 * np.median(depolarizing)


def test_asymmetric_readout_moves_z_by_the_hand_formula():
    """⟨Z⟩' = (1 - P(1|0) - P(0|1)) ⟨Z⟩ + P(0|1) - P(1|0), each wire with its own pair."""
    program = GateProgram(CircuitSpec(2, 1, "basic", "X"))
    program.sites = NoiseSites(program.sites.gates, ((0.1, 0.3), (0.02, 0.05)))
    angles = torch.tensor([[0.7, -1.2, 0.4, 0.9]], dtype=torch.float64)
    exact = GateProgram(CircuitSpec(2, 1, "basic", "X"))
    z = exact.expectations(exact.probabilities(angles))[0]
    read = program.expectations(program.probabilities(angles))[0]
    assert read[0].item() == pytest.approx(0.6 * z[0].item() + 0.2, abs=1e-12)
    assert read[1].item() == pytest.approx(0.93 * z[1].item() + 0.03, abs=1e-12)


@pytest.mark.parametrize("ansatz", ["basic", "strong"])
def test_per_wire_channels_agree_with_pennylane_outputs_and_gradients(ansatz):
    """qlit's density matrix equals default.mixed with the same sites; its batched Heisenberg path equals its own."""
    torch.manual_seed(1)
    spec = CircuitSpec(3, 2, ansatz, "X", noise=MANILA)
    ours = StatevectorCircuit(spec).double()
    with torch.no_grad():
        ours.weights.uniform_(-np.pi, np.pi)
    qnode = qml.QNode(
        pennylane_site_circuit(spec, noise_sites(spec)), qml.device("default.mixed", wires=3), interface="torch"
    )
    x = (torch.rand(3, 3, dtype=torch.float64) * np.pi - np.pi / 2).requires_grad_()
    weights = ours.weights.detach().clone().requires_grad_()
    reference = torch.stack(list(qnode(x, weights)), -1)
    out = ours(x)
    np.testing.assert_allclose(out.detach(), reference.detach(), atol=1e-5)
    grad_x, grad_w = torch.autograd.grad(out.square().sum(), [x, ours.weights])
    ref_x, ref_w = torch.autograd.grad(reference.square().sum(), [x, weights])
    np.testing.assert_allclose(grad_x, ref_x, atol=1e-5)
    np.testing.assert_allclose(grad_w, ref_w, atol=1e-5)
    # More rows than 2^3 take the Heisenberg picture: the same numbers as gate by gate (PennyLane is slow there).
    program, rows = ours.program, torch.rand(10, 3, dtype=torch.float64)
    weights = ours.weights.detach()
    gate_by_gate = program.probabilities(program.angles(rows, weights))
    np.testing.assert_allclose(program.shared_probabilities(rows, weights), gate_by_gate, atol=1e-10)


def test_converted_noise_brings_qlit_closer_to_the_fake_device():
    """On a few rows, qlit's ⟨Z⟩ under the converted noise is nearer FakeManilaV2's than its noiseless ⟨Z⟩."""
    torch.manual_seed(0)
    clean = StatevectorCircuit(CircuitSpec(4, 2, "strong", "X")).double()
    with torch.no_grad():
        clean.weights.uniform_(-np.pi, np.pi)
    noisy = StatevectorCircuit(CircuitSpec(4, 2, "strong", "X", noise=MANILA)).double()
    noisy.load_state_dict(clean.state_dict())
    x = torch.rand(12, 4, dtype=torch.float64) * np.pi - np.pi / 2
    runner = QiskitRunner(CircuitSpec(4, 2, "strong", "X", backend=MANILA), HardwareOptions(shots=4096, chunk=12))
    device = runner.expectations(x.numpy(), clean.weights.detach().numpy().reshape(-1))
    with torch.no_grad():
        gap_clean = np.abs(device - clean(x).numpy()).mean()
        gap_noisy = np.abs(device - noisy(x).numpy()).mean()
    assert gap_noisy < 0.6 * gap_clean, (gap_noisy, gap_clean)


def test_device_noise_round_trips_and_keeps_the_uniform_form():
    """The string, its mapping form and a checkpoint's run conditions are the same noise; the mapping form is as it was."""
    assert check_noise(MANILA) == check_noise({"device": MANILA}) == (("device", MANILA),)
    assert check_noise(dict(check_noise(MANILA))) == check_noise(MANILA)
    assert check_noise({"depolarizing": 0.01, "readout_error": 0.0}) == (("depolarizing", 0.01),)
    model = HybridClassifier(4, 2, n_layers=1, noise=MANILA)
    assert model.run_conditions["noise"] == {"device": MANILA} and "noise" not in model.hparams
    assert model.net.spec.device_noise == MANILA and model.net.core.circuit.uses_general()


@pytest.mark.parametrize(
    ("noise", "words"),
    [
        ("qiskit:fake_nowhere", ("fake_nowhere",)),
        ("fake_manila", ("qiskit:<device>", "fake_manila")),
        ({"device": MANILA, "depolarizing": 0.1}, ("stands alone",)),
    ],
)
def test_bad_device_noise_is_one_qlit_error(noise, words):
    with pytest.raises(QlitError) as error:
        StatevectorCircuit(CircuitSpec(4, 1, "basic", "X", noise=noise))
    assert "\n" not in str(error.value) and all(word in str(error.value) for word in words)


def test_an_unknown_device_in_model_noise_is_one_line(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(CONFIGS / "iris.yaml"), "--model.noise", "qiskit:fake_nowhere"]
    one_line_error([*args, f"--trainer.logger.init_args.save_dir={tmp_path}"], capfd, ("qiskit:fake_nowhere",))
    assert not (tmp_path / "iris").exists()


def test_device_noise_trains_and_round_trips_through_the_checkpoint_and_the_run_config(tmp_path, capfd):
    """``--model.noise qiskit:fake_manila`` trains; the checkpoint and config.yaml keep it; a resume keeps it."""
    run, args = fit_iris_one_epoch(tmp_path, "--model.noise", MANILA, "--model.n_layers=1")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["run_conditions"]["noise"] == {"device": MANILA}
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["noise"] == MANILA
    resume = ["fit", *args[:-2], "--ckpt_path=last"]
    one_line_error([*resume, "--model.noise={depolarizing: 0.01}"], capfd, ("model.noise=", MANILA))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        main([*resume, "--model.noise", MANILA])  # the same conditions resume (the run is complete: it stops at once)
