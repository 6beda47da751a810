"""Shots and noise on the qlit backend against PennyLane (default.mixed, default.qubit with shots), and bad input."""

from __future__ import annotations

import pennylane as qml
import pytest
import torch
from torch import nn

from qlit.errors import QlitError
from qlit.models import HybridClassifier, QuantumLayer
from qlit.models.circuit import ANSATZES, CHANNELS, DENSITY_MAX_QUBITS, CircuitSpec, pennylane_circuit
from qlit.models.gates import sample_frequencies
from tests.conftest import CONFIGS, one_line_error

TOL = 1e-5
ALL_CHANNELS = {
    "depolarizing": 0.05, "amplitude_damping": 0.1, "phase_damping": 0.07, "bit_flip": 0.02, "phase_flip": 0.03,
    "readout_error": 0.04,
}
NOISE_CASES = [(ansatz, "Y", ALL_CHANNELS) for ansatz in ANSATZES] + [
    ("basic", "X", {"depolarizing": 0.2}),
    ("strong", "Z", {"amplitude_damping": 0.3}),
    ("strong", "X", {"readout_error": 0.1}),  # readout alone: the fast statevector paths
]


def _pair(spec_kwargs: dict, other_backend: str, **other) -> tuple[QuantumLayer, QuantumLayer]:
    """A qlit layer with generic angles and a PennyLane layer holding the same weights, both float64."""
    ours = QuantumLayer(**spec_kwargs).double()
    with torch.no_grad():
        ours.circuit.weights.normal_(0.0, 1.0)
    theirs = QuantumLayer(**{**spec_kwargs, "backend": other_backend, **other})
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs.double()


class _DrawnWithChannels(nn.Module):
    """PennyLane's own templates expanded to the gates they are drawn with (``Rot`` kept whole), and
    `qml.noise.insert` putting the channels after every one of them, on each of its wires: the reference
    of qlit's noise placement, built without `qlit.models.circuit.gate_sequence`."""

    def __init__(self, spec: CircuitSpec, weights: torch.Tensor) -> None:
        super().__init__()
        self.weights = nn.Parameter(weights.detach().clone())

        def channels(_, wires):
            for name, p in spec.gate_noise:
                getattr(qml, CHANNELS[name])(p, wires=wires)

        qnode = qml.QNode(pennylane_circuit(spec.n_qubits, spec.ansatz, spec.embedding),
                          qml.device("default.mixed", wires=spec.n_qubits), interface="torch", diff_method="backprop")
        qnode = qml.transforms.decompose(qnode, gate_set={"RX", "RY", "RZ", "Rot", "CNOT"})
        if spec.gate_noise:
            qnode = qml.noise.insert(qnode, channels, 0.0, position="all")
        if spec.readout_error > 0:
            qnode = qml.noise.insert(qnode, qml.BitFlip, spec.readout_error, position="end")
        self.qnode = qnode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.qnode(x, self.weights), -1)


def _outputs_and_grads(layer: nn.Module, x: torch.Tensor, cotangent: torch.Tensor):
    inputs = x.clone().requires_grad_()
    layer.weights.grad = None
    out = layer(inputs)
    (out * cotangent).sum().backward()
    return out.detach(), layer.weights.grad.clone(), inputs.grad


@pytest.mark.parametrize("ansatz,embedding,noise", NOISE_CASES)
def test_density_matrix_matches_default_mixed(ansatz, embedding, noise):
    torch.manual_seed(7)
    ours, theirs = _pair(dict(n_qubits=3, n_layers=2, ansatz=ansatz, embedding=embedding, noise=noise), "default.mixed")
    assert ours.circuit.uses_general() == ours.spec.needs_density_matrix or ansatz == "reupload"
    assert ours.circuit.program.embeds_first == (ansatz != "reupload")
    x = torch.randn(10, 3, dtype=torch.float64) * 2  # more samples than outcomes: the Heisenberg path
    cotangent = torch.randn(10, 3, dtype=torch.float64)
    # qlit's simulator against PennyLane's templates with the channels inserted after each drawn gate, and
    # qlit's default.mixed backend (slower: on fewer samples) against qlit's simulator.
    reference = _DrawnWithChannels(ours.spec, ours.weights)
    for a_layer, b_layer, rows in ((ours, reference, 10), (theirs, ours, 4)):
        for name, a, b in zip(("output", "weight grad", "input grad"),
                              _outputs_and_grads(a_layer, x[:rows], cotangent[:rows]),
                              _outputs_and_grads(b_layer, x[:rows], cotangent[:rows])):
            assert (a - b).abs().max().item() < TOL, (rows, name)
    noiseless = QuantumLayer(3, 2, ansatz, embedding).double()
    noiseless.load_state_dict(ours.state_dict())
    assert (noiseless(x) - ours(x)).abs().max() > 1e-3  # the noise does something


@pytest.mark.parametrize("path", ["schrodinger", "heisenberg"])
def test_a_rot_is_one_noisy_gate_as_an_rx_is(path):
    # One wire, no CNOT, all trainable angles 0: a basic layer is RX(0), a strong layer Rot(0, 0, 0), both the
    # identity. Followed by the channels once each, the two circuits are the same channel (not 3 against 1).
    x = torch.linspace(-1.2, 1.3, 2 if path == "schrodinger" else 5, dtype=torch.float64)[:, None]
    noise = {"depolarizing": 0.1, "amplitude_damping": 0.2}
    basic, strong = (QuantumLayer(1, 2, ansatz, "Y", noise=noise).double() for ansatz in ("basic", "strong"))
    with torch.no_grad():
        for layer in (basic, strong):
            layer.weights.zero_()
    assert strong.circuit.program.embeds_first and (x.shape[0] > 2) == (path == "heisenberg")
    assert torch.allclose(basic(x), strong(x), atol=1e-12)
    noiseless = QuantumLayer(1, 2, "strong", "Y").double()
    noiseless.load_state_dict(strong.state_dict())
    assert (noiseless(x) - strong(x)).abs().max() > 1e-2


@pytest.mark.parametrize("ansatz,n_qubits", [("basic", 1), ("basic", 4), ("strong", 2), ("strong", 3)])
def test_heisenberg_and_schrodinger_density_paths_agree(ansatz, n_qubits):
    torch.manual_seed(n_qubits)
    noise = {"depolarizing": 0.05, "amplitude_damping": 0.1, "phase_flip": 0.2, "readout_error": 0.03}
    program = QuantumLayer(n_qubits, 2, ansatz, "X", noise=noise).circuit.program
    assert program.embeds_first
    weights = torch.randn(program.spec.n_layers * n_qubits * (1 if ansatz == "basic" else 3), dtype=torch.float64)
    weights.requires_grad_()
    x = torch.randn(3, n_qubits, dtype=torch.float64, requires_grad=True)
    forward = program.probabilities(program.angles(x, weights))
    backward = program.shared_probabilities(x, weights)
    weight = torch.arange(2**n_qubits, dtype=torch.float64)
    grads = [torch.autograd.grad((p * weight).sum(), (x, weights)) for p in (forward, backward)]
    assert torch.allclose(forward, backward, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(*grads))


def test_zero_noise_stays_on_the_exact_statevector_path():
    layer = QuantumLayer(4, 2, "strong", noise={"depolarizing": 0.0, "bit_flip": 0})
    assert layer.spec.noise == () and not layer.circuit.uses_general() and layer.circuit.uses_fused(800)
    assert QuantumLayer(4, 2, "strong", noise={"depolarizing": 0.01}).circuit.uses_general()


def _exact_and_probs(spec: CircuitSpec, weights: torch.Tensor, x: torch.Tensor):
    exact = QuantumLayer(CircuitSpec(**{**spec.__dict__, "shots": None})).double()
    exact.load_state_dict({"circuit.weights": weights})
    program = exact.circuit.program
    probs = program.probabilities(program.angles(x, weights))
    return exact(x), probs


@pytest.mark.parametrize("noise", [None, {"depolarizing": 0.05, "readout_error": 0.05}])
def test_shot_estimates_have_the_multinomial_mean_and_covariance(noise):
    torch.manual_seed(11)
    shots, repeats = 50, 4000
    layer = QuantumLayer(2, 2, "strong", "X", shots=shots, noise=noise).double()
    with torch.no_grad():
        layer.circuit.weights.normal_(0.0, 1.0)
    x = torch.tensor([[0.4, -1.1]], dtype=torch.float64)
    with torch.no_grad():
        samples = layer(x.expand(repeats, 2))
        exact, probs = _exact_and_probs(layer.spec, layer.weights.detach(), x)
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    second = probs[0] @ (z[:, :, None] * z[:, None, :]).reshape(4, 4)  # ⟨Z_i Z_j⟩
    covariance = (second.reshape(2, 2) - exact[0][:, None] * exact[0][None, :]) / shots
    assert torch.all((samples.mean(0) - exact[0]).abs() < 4 * covariance.diagonal().sqrt() / repeats**0.5)
    measured = torch.cov(samples.T)
    assert torch.allclose(measured.diagonal(), covariance.diagonal(), rtol=0.12)
    # One multinomial over both wires: their estimates correlate as ⟨Z0 Z1⟩ says (independent binomials: 0).
    assert abs(covariance[0, 1]) > 2e-3
    assert abs(measured[0, 1] - covariance[0, 1]) < 0.15 * abs(covariance[0, 1]) + 3e-4


def test_shot_statistics_agree_with_default_qubit():
    torch.manual_seed(5)
    shots, repeats = 100, 1000
    ours, theirs = _pair(dict(n_qubits=2, n_layers=1, ansatz="strong", shots=shots), "default.qubit",
                         diff_method="parameter-shift")
    x = torch.tensor([[0.3, -0.7]], dtype=torch.float64).expand(repeats, 2)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
        exact = QuantumLayer(2, 1, "strong").double()
        exact.load_state_dict(ours.state_dict())
        e = exact(x[:1])[0]
    se = ((1 - e**2) / shots / repeats).sqrt()
    for samples in (a, b):
        assert torch.all((samples.mean(0) - e).abs() < 4 * se)
        assert torch.allclose(samples.var(0), (1 - e**2) / shots, rtol=0.15)


def test_shots_are_fresh_every_pass_and_reproducible_from_the_seed():
    layer = QuantumLayer(3, 1, "basic", shots=20)
    x = torch.rand(6, 3)
    torch.manual_seed(0)
    first, second = layer(x), layer(x)
    torch.manual_seed(0)
    assert torch.equal(layer(x), first) and not torch.equal(first, second)


@pytest.mark.parametrize("ansatz,noise", [("strong", None), ("reupload", {"depolarizing": 0.02})])
def test_parameter_shift_on_samples_is_unbiased(ansatz, noise):
    torch.manual_seed(2)
    repeats = 3000
    layer = QuantumLayer(2, 2, ansatz, "X", shots=200, noise=noise).double()
    with torch.no_grad():
        layer.circuit.weights.normal_(0.0, 1.0)
    exact = QuantumLayer(2, 2, ansatz, "X", noise=noise).double()
    exact.load_state_dict(layer.state_dict())
    x = torch.tensor([[0.5, 1.2]], dtype=torch.float64)
    cotangent = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    _, true_w, true_x = _outputs_and_grads(exact, x, cotangent)
    _, sum_w, grad_x = _outputs_and_grads(layer, x.expand(repeats, 2), cotangent.expand(repeats, 2))
    # The weight gradient sums per-sample estimates; each input row gets its own.
    se_x = grad_x.std(0) / repeats**0.5
    assert torch.all((grad_x.mean(0) - true_x[0]).abs() < 5 * se_x + 1e-9)
    assert (sum_w / repeats - true_w).abs().max() < 0.02
    assert (grad_x[0] - true_x[0]).abs().max() > 1e-3  # one sample's estimate is noisy


def test_exact_shot_gradient_is_the_named_shortcut():
    torch.manual_seed(3)
    layer = QuantumLayer(2, 1, "strong", shots=10, shot_gradient="exact").double()
    exact = QuantumLayer(2, 1, "strong").double()
    exact.load_state_dict(layer.state_dict())
    x, cotangent = torch.rand(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    sampled, grad_w, grad_x = _outputs_and_grads(layer, x, cotangent)
    value, true_w, true_x = _outputs_and_grads(exact, x, cotangent)
    assert torch.allclose(grad_w, true_w) and torch.allclose(grad_x, true_x)
    assert not torch.allclose(sampled, value) and torch.allclose((sampled * 5).round(), sampled * 5)  # k/10 - (10-k)/10


def test_sampler_draws_exactly_shots_from_a_degenerate_distribution():
    probs = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.5, 0.0, 0.0, 0.5]], dtype=torch.float64)
    freqs = sample_frequencies(probs, 1000)
    assert torch.equal(freqs[0], probs[0]) and torch.allclose(freqs.sum(1), torch.ones(2, dtype=torch.float64))
    assert freqs[1, 1] == 0 and freqs[1, 2] == 0


def test_pennylane_mixed_device_with_noise_and_shots_trains_a_step():
    layer = QuantumLayer(2, 1, "basic", backend="default.mixed", diff_method="parameter-shift", shots=50,
                         noise={"depolarizing": 0.1})
    layer(torch.rand(3, 2)).sum().backward()
    assert layer.weights.grad is not None


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(backend="default.qubit", noise={"bit_flip": 0.1}), ("bit_flip", "default.qubit", "default.mixed")),
        (dict(backend="default.qubit", shots=10), ("backprop", "shots=10", "parameter-shift")),
        (dict(backend="lightning.qubit", diff_method="adjoint", shots=10), ("adjoint", "lightning.qubit")),
        (dict(noise={"depolarising": 0.1}), ("depolarising", "depolarizing")),
        (dict(noise={"depolarizing": -0.1}), ("depolarizing", "-0.1", "[0, 1]")),
        (dict(noise={"readout_error": 1.5}), ("readout_error", "1.5")),
        (dict(shots=0), ("shots", "0")),
        (dict(init_std=0.0), ("init_std",)),
        (dict(n_qubits=DENSITY_MAX_QUBITS + 1, noise={"depolarizing": 0.01}),
         ("density matrix", f"n_qubits={DENSITY_MAX_QUBITS}")),
    ],
)
def test_bad_settings_name_the_value(kwargs, words):
    with pytest.raises(QlitError) as info:
        QuantumLayer(**kwargs)
    assert all(word in str(info.value) for word in words), str(info.value)


@pytest.mark.parametrize(
    "override,words",
    [
        ("--model.noise={depolarizing: 1.2}", ("depolarizing", "1.2")),
        ("--model.noise={gate_flip: 0.1}", ("gate_flip",)),
        ("--model.shots=0", ("shots", "0")),
        ("--model.init_std=-1", ("init_std", "-1")),
    ],
)
def test_bad_noise_on_the_command_line_is_one_line(override, words, capfd, tmp_path):
    one_line_error(["fit", "--config", str(CONFIGS / "iris.yaml"), override], capfd, words)
    assert not (tmp_path / "lightning_logs").exists()


def test_noise_on_a_pure_state_device_is_one_line(capfd, tmp_path):
    args = ["fit", "--config", str(CONFIGS / "iris.yaml"), "--model.backend=default.qubit",
            "--model.noise={depolarizing: 0.01}"]
    one_line_error(args, capfd, ("default.qubit", "default.mixed"))
    assert not (tmp_path / "lightning_logs").exists()


def test_run_conditions_are_not_saved_as_hyperparameters():
    model = HybridClassifier(4, 2, shots=100, noise={"depolarizing": 0.01}, init_std=0.1)
    assert "shots" not in model.hparams and "noise" not in model.hparams and model.hparams.init_std == 0.1
    assert model.net.spec.shots == 100 and model.net.spec.noise == (("depolarizing", 0.01),)


def test_init_std_sets_the_spread_of_the_initial_angles():
    torch.manual_seed(0)
    wide = HybridClassifier(4, 2, n_qubits=6, n_layers=20, init_std=0.5).net.core.weights
    narrow = HybridClassifier(4, 2, n_qubits=6, n_layers=20).net.core.weights
    assert 0.45 < wide.std().item() < 0.55 and 0.04 < narrow.std().item() < 0.06
