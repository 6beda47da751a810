"""The wide-circuit kernels (`qlit.models.wide`) against PennyLane, in float32, on both of their paths."""

from __future__ import annotations

import pytest
import torch

from qlit.models import StatevectorCircuit, wide
from tests.models.test_statevector import _ours, _pennylane_reference

TOL = 1e-5
# 8 to 10 qubits, both ansätze, every embedding, 1 to 4 layers (3 and 4 layers switch the layout twice).
CASES = [
    (8, 3, "basic", "X"),
    (8, 4, "strong", "Y"),
    (9, 1, "strong", "Z"),
    (9, 2, "basic", "Y"),
    (10, 2, "strong", "X"),
    (10, 3, "basic", "Z"),
]


def _reference(circuit, x, cotangent):
    """Outputs, weight gradient and input gradient of PennyLane default.qubit (backprop, float64)."""
    spec = circuit.spec
    return _pennylane_reference(spec.n_qubits, spec.ansatz, spec.embedding, circuit.weights.double(), x.double(),
                                cotangent.double())  # fmt: skip


def _circuit_and_data(n_qubits, n_layers, ansatz, embedding):
    torch.manual_seed(n_qubits * 10 + n_layers)
    circuit = StatevectorCircuit(n_qubits, n_layers, ansatz, embedding)
    circuit.fused = circuit.mps = False  # the statevector layers, whatever the cheaper path
    with torch.no_grad():
        circuit.weights.normal_(0.0, 1.0)  # generic angles, not the small initialisation
    x = torch.randn(6, n_qubits) * 2.0
    cotangent = torch.randn(6, n_qubits)
    return circuit, x, cotangent


def _assert_close(ours, theirs):
    for name, a, b in zip(("output", "weight grad", "input grad"), ours, theirs):
        assert a.shape == b.shape and a.dtype == torch.float32
        error = (a.double() - b).abs().max().item()
        assert error < TOL, f"{name} differs by {error:.2e}"


@pytest.mark.parametrize("n_qubits,n_layers,ansatz,embedding", CASES)
def test_layer_products_match_pennylane_in_float32(n_qubits, n_layers, ansatz, embedding):
    circuit, x, cotangent = _circuit_and_data(n_qubits, n_layers, ansatz, embedding)
    assert x.numel() // n_qubits * 2**n_qubits < wide.BLOCKED_MIN_AMPLITUDES  # the one-product-per-group path
    _assert_close(_ours(circuit, x, cotangent), _reference(circuit, x, cotangent))


@pytest.mark.parametrize("block", [2**6, 2**9])
@pytest.mark.parametrize("n_qubits,n_layers,ansatz,embedding", CASES)
def test_blocked_layers_match_pennylane_in_float32(monkeypatch, block, n_qubits, n_layers, ansatz, embedding):
    # Small blocks: several blocks of rows for the low wires and of columns for the high wires.
    monkeypatch.setattr(wide, "BLOCKED_MIN_AMPLITUDES", 1)
    monkeypatch.setattr(wide, "BLOCK_AMPLITUDES", block)
    circuit, x, cotangent = _circuit_and_data(n_qubits, n_layers, ansatz, embedding)
    _assert_close(_ours(circuit, x, cotangent), _reference(circuit, x, cotangent))


def test_blocked_groups_gradients_are_exact(monkeypatch):
    monkeypatch.setattr(wide, "BLOCK_AMPLITUDES", 2**5)
    torch.manual_seed(0)
    state = torch.randn(2, 8, 6, dtype=torch.complex128, requires_grad=True)
    matrices = [torch.randn(4, 4, dtype=torch.complex128, requires_grad=True),
                torch.randn(2, 2, dtype=torch.complex128, requires_grad=True)]
    assert torch.autograd.gradcheck(wide._BlockedGroups.apply, (state, *matrices))
    expected = torch.einsum("ij,kl,pjlq->pikq", *matrices, state.reshape(2, 4, 2, 6)).reshape(2, 8, 6)
    assert torch.allclose(wide._BlockedGroups.apply(state, *matrices), expected)


def test_wire_groups_cover_every_wire_in_small_groups():
    for n in range(1, 25):
        groups = wide.wire_groups(n)
        assert [start for start, _ in groups] == [sum(w for _, w in groups[:i]) for i in range(len(groups))]
        assert sum(width for _, width in groups) == n
        assert max(width for _, width in groups) <= wide.GROUP_WIRES
        assert max(w for _, w in groups) - min(w for _, w in groups) <= 1


def test_blocked_path_keeps_gradients_of_one_argument(monkeypatch):
    monkeypatch.setattr(wide, "BLOCKED_MIN_AMPLITUDES", 1)
    monkeypatch.setattr(wide, "BLOCK_AMPLITUDES", 2**6)
    circuit, x, _ = _circuit_and_data(8, 2, "strong", "X")
    circuit.weights.requires_grad_(False)
    inputs = x.clone().requires_grad_()
    circuit(inputs).sum().backward()
    assert inputs.grad is not None and inputs.grad.abs().sum() > 0
    circuit.weights.requires_grad_(True)
    circuit(x).sum().backward()
    assert circuit.weights.grad is not None and circuit.weights.grad.abs().sum() > 0


def test_gradient_diagnostics_vmap_through_states_the_blocked_path_would_take(monkeypatch):
    """`qlit diagnose` vmaps per-sample gradients; a state big enough to block stays on the vmap-able path."""
    from qlit.evaluation.diagnostics import parameter_gradients

    expected = parameter_gradients(8, 2, n_samples=3)[0]
    monkeypatch.setattr(wide, "BLOCKED_MIN_AMPLITUDES", 1)
    torch.testing.assert_close(parameter_gradients(8, 2, n_samples=3)[0], expected)
