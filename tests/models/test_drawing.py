"""The circuit drawing in TensorBoard: PennyLane's layout, drawn without PennyLane."""

from __future__ import annotations

import sys

import pennylane as qml
import pytest
import torch

from qlit.models.circuit import pennylane_circuit, weight_shape
from qlit.models.drawing import draw_circuit


@pytest.mark.parametrize(
    ("n_qubits", "n_layers", "ansatz", "embedding"),
    [(1, 2, "basic", "Y"), (2, 1, "basic", "X"), (4, 2, "basic", "Y"), (3, 3, "strong", "Z"), (5, 3, "strong", "X"),
     (4, 2, "reupload", "Y"), (11, 2, "strong", "Y")],
)  # fmt: skip
def test_drawing_is_pennylanes_for_the_same_circuit(n_qubits, n_layers, ansatz, embedding):
    weights = 3 * torch.randn(weight_shape(n_qubits, n_layers, ansatz), generator=torch.Generator().manual_seed(7))
    qnode = qml.QNode(pennylane_circuit(n_qubits, ansatz, embedding), qml.device("default.qubit", wires=n_qubits))
    expected = qml.draw(qnode, decimals=2, level="device", max_length=10**6)(torch.zeros(n_qubits), weights)
    assert draw_circuit(n_qubits, n_layers, ansatz, embedding, weights) == expected


def test_drawing_needs_no_pennylane(monkeypatch):
    monkeypatch.setitem(sys.modules, "pennylane", None)  # any import of it now raises ImportError
    drawing = draw_circuit(3, 1, "strong", "X", torch.full((1, 3, 3), 0.5))
    assert drawing.splitlines()[0] == "0: ──RX(0.00)──Rot(0.50,0.50,0.50)─╭●────╭X─┤  <Z>"
    assert draw_circuit(2, 1, "basic", "Y").splitlines()[1] == "1: ──RY(0.00)──RX(0.00)─╰X─┤  <Z>"
