"""The matrix-product-state path (`qlit.models.mps`): its pieces, its choice, and its results against PennyLane."""

from __future__ import annotations

import pytest
import torch

from qlit.models import StatevectorCircuit, mps, statevector
from qlit.models.circuit import entangler_pairs
from tests.models.test_statevector import _ours
from tests.models.test_wide import _assert_close, _circuit_and_data, _reference


def _dense(operator: torch.Tensor) -> torch.Tensor:
    """Contract a ``(n, D, D, 2, 2)`` matrix-product operator into its ``(2^n, 2^n)`` matrix."""
    total = operator[0][:1]  # (1, D, 2, 2): the first site's left bond is index 0
    for site in operator[1:]:
        # total[a, b, I, J] with the next site's (b, c, s, t): rows (I, s), columns (J, t).
        total = torch.einsum("abij,bcst->acisjt", total, site)
        rows = total.shape[2] * 2
        total = total.reshape(1, site.shape[1], rows, rows)
    return total[0, 0]


@pytest.mark.parametrize(
    "n_qubits,ansatz,layer", [(2, "basic", 0), (5, "basic", 0), (5, "strong", 1), (6, "strong", 2)]
)
def test_layer_operator_is_the_cnot_layer(n_qubits, ansatz, layer):
    pairs = entangler_pairs(n_qubits, layer + 1, ansatz)[layer]
    perm = statevector._cnot_permutation(n_qubits, pairs)
    expected = torch.eye(2**n_qubits)[perm]  # ψ'[k] = ψ[perm[k]]
    assert torch.equal(_dense(mps.layer_operator(n_qubits, pairs)), expected)


@pytest.mark.parametrize(
    "n_qubits,n_layers,ansatz", [(2, 1, "basic"), (5, 2, "basic"), (7, 3, "strong"), (8, 4, "strong")]
)
def test_z_strings_are_z_read_through_the_last_cnot_layer(n_qubits, n_layers, ansatz):
    pairs = entangler_pairs(n_qubits, n_layers, ansatz)
    strings = mps.z_strings(n_qubits, pairs[-1]).to(torch.float32)
    parity = (statevector._bits(n_qubits).to(torch.float32) @ strings.T) % 2
    perm = statevector._cnot_permutation(n_qubits, pairs[-1])
    assert torch.equal(1 - 2 * parity, statevector._z_signs(n_qubits)[torch.argsort(perm)])


def test_bonds_depend_on_the_layers_not_the_width():
    for n_qubits in (3, 8, 16, 20, 64):
        for ansatz in ("basic", "strong"):
            assert set(mps.bond_dims(n_qubits, entangler_pairs(n_qubits, 2, ansatz)[:-1])) == {4}
            assert mps.max_bond(n_qubits, entangler_pairs(n_qubits, 1, ansatz)) == 1
        assert mps.max_bond(n_qubits, entangler_pairs(n_qubits, 3, "basic")) == 16
        if n_qubits > 3:  # ranges 1 and 2: a ring and a ring of reach 2
            assert mps.max_bond(n_qubits, entangler_pairs(n_qubits, 3, "strong")) > mps.MAX_BOND


@pytest.mark.parametrize(
    "n_qubits,n_layers,ansatz,embedding",
    [
        (7, 2, "basic", "Z"),
        (12, 2, "basic", "X"),
        (13, 2, "strong", "Y"),
        (12, 1, "strong", "Z"),
        (13, 3, "basic", "X"),
        (3, 2, "strong", "X"),
    ],
)
def test_mps_matches_pennylane_in_float32(n_qubits, n_layers, ansatz, embedding):
    circuit, x, cotangent = _circuit_and_data(n_qubits, n_layers, ansatz, embedding)
    circuit.mps = True
    assert circuit.uses_mps(x.shape[0])
    ours = _ours(circuit, x, cotangent)
    _assert_close(ours, _reference(circuit, x, cotangent))
    if n_qubits > statevector.FUSED_MAX_QUBITS:
        assert "perms" not in circuit._constants(torch.float32)  # the 2^n tables were never built


def test_wide_circuits_take_the_mps_where_it_is_cheaper():
    assert StatevectorCircuit(16, 2).uses_mps(16)
    assert StatevectorCircuit(20, 2, "strong").uses_mps(16)
    assert StatevectorCircuit(20, 1).uses_mps(4096)
    assert not StatevectorCircuit(8, 2).uses_mps(256)  # 2^8 amplitudes cost less than the MPS readout
    assert StatevectorCircuit(16, 3).uses_mps(16)  # bonds of 16: still cheaper at 16 qubits
    assert not StatevectorCircuit(12, 3).uses_mps(16)  # but not at 12
    asked = StatevectorCircuit(10, 3, "strong")
    asked.mps = True
    assert not asked.uses_mps(1)  # bonds of 64, beyond what was measured: refused, asked or not
    assert not StatevectorCircuit(16, 2, noise={"depolarizing": 0.01}).uses_mps(16)  # mixed states: gate by gate
    assert not StatevectorCircuit(4, 2).uses_mps(16)  # the fused unitary


def test_mps_and_statevector_agree_at_eighteen_qubits():
    torch.manual_seed(0)
    circuit = StatevectorCircuit(18, 2, "basic", "Y").double()
    with torch.no_grad():
        circuit.weights.normal_(0.0, 1.0)
    x = torch.randn(3, 18, dtype=torch.float64)
    cotangent = torch.randn(3, 18, dtype=torch.float64)
    assert circuit.uses_mps(3)
    on_mps = _ours(circuit, x, cotangent)
    circuit.mps = False
    on_states = _ours(circuit, x, cotangent)
    for ours, theirs in zip(on_mps, on_states):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


def test_gradient_diagnostics_vmap_through_the_mps(monkeypatch):
    """`qlit diagnose` takes per-sample gradients with torch.func.vmap, through whichever path the circuit picks."""
    from qlit.evaluation.diagnostics import parameter_gradients

    assert StatevectorCircuit(14, 2).uses_mps(1)
    through_mps = parameter_gradients(14, 2, n_samples=3)[0]
    monkeypatch.setattr(mps, "MAX_BOND", 0)  # no circuit fits: the statevector layers
    assert not StatevectorCircuit(14, 2).uses_mps(1)
    torch.testing.assert_close(through_mps, parameter_gradients(14, 2, n_samples=3)[0])
