"""The built-in statevector backend against PennyLane, and the properties training relies on."""

from __future__ import annotations

import copy
import itertools
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pennylane as qml
import pytest
import torch

from qlit.models import HybridNet, QuantumLayer, StatevectorCircuit, statevector
from qlit.models.circuit import ANSATZES, ROTATIONS, pennylane_circuit

TOL = 1e-5

# Every combination up to 4 qubits; from 5 to 10 qubits both ansätze per size, layers and embeddings cycling.
SMALL = list(itertools.product([1, 2, 3, 4], [1, 2, 3], ANSATZES, ROTATIONS))
LARGE = [
    (n, 1 + (i + 2 * j) % 3, ANSATZES[(i + j) % 2], ROTATIONS[(2 * i + j) % 3])
    for i, n in enumerate(range(5, 11))
    for j in range(2)
]


def _pennylane_reference(n_qubits, ansatz, embedding, weights, x, cotangent):
    """Outputs, weight gradient and input gradient of PennyLane default.qubit (backprop, float64)."""
    device = qml.device("default.qubit", wires=n_qubits)
    qnode = qml.QNode(pennylane_circuit(n_qubits, ansatz, embedding), device, interface="torch", diff_method="backprop")
    w = weights.detach().clone().requires_grad_()
    inputs = x.detach().clone().requires_grad_()
    out = torch.stack(qnode(inputs, w), -1)
    (out * cotangent).sum().backward()
    return out.detach(), w.grad, inputs.grad


def _ours(circuit, x, cotangent):
    inputs = x.detach().clone().requires_grad_()
    circuit.weights.grad = None
    out = circuit(inputs)
    (out * cotangent).sum().backward()
    return out.detach(), circuit.weights.grad.clone(), inputs.grad


def _assert_agrees(n_qubits, n_layers, ansatz, embedding, paths):
    torch.manual_seed(n_qubits * 100 + n_layers)
    circuit = StatevectorCircuit(n_qubits, n_layers, ansatz, embedding).double()
    with torch.no_grad():
        circuit.weights.normal_(0.0, 1.0)  # generic angles, not the small initialisation
    x = torch.randn(5, n_qubits, dtype=torch.float64) * 2.0
    cotangent = torch.randn(5, n_qubits, dtype=torch.float64)
    reference = _pennylane_reference(n_qubits, ansatz, embedding, circuit.weights, x, cotangent)
    for fused in paths:
        # "general": the autograd gate-by-gate fallback every ansatz gets, forced even where tables exist.
        # "mps": the matrix-product state; False: the statevector layers.
        circuit.general = fused == "general"
        circuit.mps = fused == "mps"
        circuit.fused = None if circuit.general else fused is True
        if fused == "mps" and not circuit.uses_mps(5):
            assert n_layers > 2 or circuit.uses_general()  # bonds beyond MAX_BOND: refused even when asked for
            continue
        for name, ours, theirs in zip(("output", "weight grad", "input grad"), _ours(circuit, x, cotangent), reference):
            assert ours.shape == theirs.shape
            error = (ours - theirs).abs().max().item()
            assert error < TOL, f"{name} differs by {error:.2e} (fused={fused})"


@pytest.mark.parametrize("n_qubits,n_layers,ansatz,embedding", SMALL)
def test_matches_pennylane_on_small_circuits(n_qubits, n_layers, ansatz, embedding):
    _assert_agrees(n_qubits, n_layers, ansatz, embedding, paths=[True, False, "mps", "general"])


@pytest.mark.parametrize("n_qubits,n_layers,ansatz,embedding", LARGE)
def test_matches_pennylane_on_larger_circuits(n_qubits, n_layers, ansatz, embedding):
    paths = [True, False] if n_qubits <= statevector.FUSED_MAX_QUBITS else [False]
    _assert_agrees(n_qubits, n_layers, ansatz, embedding, paths + ["mps", "general"])


@pytest.mark.parametrize("n_qubits,n_layers,embedding", [(5, 2, "X"), (7, 1, "Y")])
def test_reupload_matches_pennylane_on_larger_circuits(n_qubits, n_layers, embedding):
    _assert_agrees(n_qubits, n_layers, "reupload", embedding, ["general"])


def test_only_ansatzes_with_tables_take_the_fast_paths():
    assert set(statevector.TABLE_ANSATZES) < set(ANSATZES)
    for ansatz in ANSATZES:
        circuit = StatevectorCircuit(3, 2, ansatz)
        assert circuit.uses_general() == (ansatz not in statevector.TABLE_ANSATZES)
        assert circuit.uses_fused(8) == (ansatz in statevector.TABLE_ANSATZES)


def test_reupload_uses_the_input_in_every_layer():
    # The embedding before every layer: the output depends on x even where one embedding would be undone.
    circuit = StatevectorCircuit(1, 2, "reupload", "X")
    with torch.no_grad():
        circuit.weights.zero_()
    x = torch.tensor([[0.7]])
    assert torch.allclose(circuit(x), torch.cos(2 * x), atol=1e-6)  # RX(x) RX(x) |0⟩


def test_path_choice_follows_qubits_and_batch():
    small, six, large = StatevectorCircuit(4, 2), StatevectorCircuit(6, 1), StatevectorCircuit(8, 1)
    assert small.uses_fused(1) and small.uses_fused(100_000)
    assert six.uses_fused(256) and not six.uses_fused(4096)
    assert not large.uses_fused(100_000)
    large.fused = True  # no fused unitary beyond FUSED_MAX_QUBITS, whatever is asked
    assert not large.uses_fused(10)
    small.fused = False
    assert not small.uses_fused(100_000)


@pytest.mark.parametrize("ansatz,embedding", [("basic", "X"), ("strong", "Y")])
def test_large_batches_agree_with_small_ones(ansatz, embedding):
    # 800 samples of 6 qubits build the product state wire by wire instead of with one gather.
    torch.manual_seed(1)
    circuit = StatevectorCircuit(6, 2, ansatz, embedding).double()
    assert circuit.uses_fused(800)
    x = torch.rand(800, 6, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(800, 6, dtype=torch.float64)
    whole = circuit(x)
    (whole * cotangent).sum().backward()
    grad_w, grad_x = circuit.weights.grad.clone(), x.grad.clone()
    circuit.weights.grad, x.grad = None, None
    chunks = torch.cat([circuit(part) for part in x.split(50)])
    (chunks * cotangent).sum().backward()
    assert torch.allclose(whole, chunks, atol=1e-12)
    assert torch.allclose(grad_w, circuit.weights.grad, atol=1e-9)
    assert torch.allclose(grad_x, x.grad, atol=1e-12)


@pytest.mark.parametrize("fused", [True, False])
def test_gradient_of_only_one_argument(fused):
    circuit = StatevectorCircuit(3, 2, "strong", "X")
    circuit.fused = fused
    x = torch.rand(6, 3, requires_grad=True)
    circuit.weights.requires_grad_(False)
    circuit(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    circuit.weights.requires_grad_(True)
    circuit(x.detach()).sum().backward()
    assert circuit.weights.grad is not None and circuit.weights.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.allclose(circuit(x), circuit(x.detach()))


def test_z_embedding_ignores_the_input_but_keeps_its_gradient():
    circuit = StatevectorCircuit(3, 2, "strong", "Z")
    x = torch.rand(4, 3, requires_grad=True)
    out = circuit(x)
    assert torch.allclose(out, out[:1].expand(4, 3))
    out.sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros(4, 3))


@pytest.mark.parametrize("fused", [True, False])
def test_dtypes(fused):
    circuit = StatevectorCircuit(3, 2, "strong")
    circuit.fused = fused
    x = torch.rand(5, 3)
    assert circuit(x).dtype == torch.float32
    assert circuit(x.double()).dtype == torch.float64  # promoted, like any other float32 layer
    layer = QuantumLayer(3, 2, backend="qlit")
    assert layer(x).dtype == torch.float32


def test_casting_after_use_rebuilds_exact_constants():
    # Constants are cached per dtype and device, with no hook into torch's private Module._apply.
    assert "_apply" not in vars(StatevectorCircuit)
    circuit = StatevectorCircuit(3, 2, "strong", "X")
    x = torch.rand(4, 3, dtype=torch.float64)
    circuit(x.float())
    circuit.double()
    cotangent = torch.ones(4, 3, dtype=torch.float64)
    out = _ours(circuit, x, cotangent)[0]
    reference = _pennylane_reference(3, "strong", "X", circuit.weights, x, cotangent)[0]
    assert (out - reference).abs().max().item() < 1e-12


@pytest.mark.parametrize("fused", [True, False])
def test_any_leading_batch_dims(fused):
    circuit = StatevectorCircuit(3, 1, "basic", "Y")
    circuit.fused = fused
    x = torch.rand(2, 5, 3)
    out = circuit(x)
    assert out.shape == (2, 5, 3)
    assert torch.allclose(out, circuit(x.reshape(10, 3)).reshape(2, 5, 3))
    assert circuit(x[0, 0]).shape == (3,)


def test_hybrid_net_pickles_and_deep_copies():
    torch.manual_seed(0)
    net = HybridNet(5, 3, n_qubits=4, n_layers=2, ansatz="strong", backend="qlit")
    x = torch.randn(8, 5)
    expected = net(x)  # the first call fills the constant cache, which must survive the copies too
    for twin in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert torch.equal(twin(x), expected)
        twin(x).sum().backward()
        assert twin.core.weights.grad is not None
    assert net.core.weights.grad is None
    assert list(net.state_dict()) == ["pre.weight", "pre.bias", "core.circuit.weights", "post.weight", "post.bias"]


def test_lightning_qubit_adjoint_agrees():
    torch.manual_seed(3)
    fast = QuantumLayer(3, 2, "strong", "X", backend="qlit")
    lightning = QuantumLayer(3, 2, "strong", "X", backend="lightning.qubit", diff_method="adjoint")
    lightning.load_state_dict(fast.state_dict())
    x = torch.rand(4, 3) * 3
    outputs, grads = [], []
    for layer in (fast, lightning):
        inputs = x.clone().requires_grad_()
        out = layer(inputs)
        out.pow(2).sum().backward()
        outputs.append(out.detach())
        grads.append((layer.weights.grad, inputs.grad))
    assert torch.allclose(outputs[0], outputs[1], atol=TOL)
    assert torch.allclose(grads[0][0], grads[1][0], atol=TOL)
    assert torch.allclose(grads[0][1], grads[1][1], atol=TOL)


def test_benchmark_script_reports_json_rows():
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "quantum_layer.py"
    command = [sys.executable, str(script), "--json", "--quick", "--sizes", "2x8", "--backends", "qlit,floor", "--max-repeats", "3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    assert {(r["backend"], r["n_qubits"], r["batch"]) for r in rows} == {("qlit", 2, 8), ("floor", 2, 8)}
    assert all(r["ms_per_step"] > 0 for r in rows)


def test_product_state_with_and_without_the_gather_is_the_kronecker_product():
    """The fused path's two product-state builders (small batches gather, large ones multiply) give the same state."""
    from qlit.models.statevector import _product_state

    factors = torch.rand(5, 2, 7, dtype=torch.float64)
    index = StatevectorCircuit(5, 1, "basic", "X").double()._constants(torch.float64)["product_index"]
    expected = torch.stack([
        torch.kron(torch.kron(torch.kron(torch.kron(*factors[:2, :, b]), factors[2, :, b]), factors[3, :, b]),
                   factors[4, :, b])
        for b in range(7)
    ], 1)  # fmt: skip
    torch.testing.assert_close(_product_state(factors, index), expected)
    torch.testing.assert_close(_product_state(factors, None), expected)
