"""The variational circuits qlit builds, described once for every backend.

A circuit is an angle embedding of one feature per qubit followed by ``n_layers`` trainable
entangling layers and a Pauli-Z readout of every wire. The statevector backend and the PennyLane
backends both read their gate sequence from here, so they cannot drift apart.
"""

from __future__ import annotations

from typing import Literal

import torch

from qlit.errors import QlitError

Ansatz = Literal["basic", "strong"]
Rotation = Literal["X", "Y", "Z"]

ANSATZES: tuple[str, ...] = ("basic", "strong")
ROTATIONS: tuple[str, ...] = ("X", "Y", "Z")
WEIGHT_INIT_STD = 0.05


def check_circuit(n_qubits: int, n_layers: int, ansatz: str, embedding: str) -> None:
    """Raise a `QlitError` naming the first invalid circuit setting.

    Args:
        n_qubits: Number of wires, at least 1.
        n_layers: Number of entangling layers, at least 1.
        ansatz: ``"basic"`` (BasicEntanglerLayers) or ``"strong"`` (StronglyEntanglingLayers).
        embedding: Rotation axis of the angle embedding: ``"X"``, ``"Y"`` or ``"Z"``.
    """
    if isinstance(n_qubits, bool) or not isinstance(n_qubits, int) or n_qubits < 1:
        raise QlitError(f"n_qubits must be an integer >= 1, got {n_qubits!r}")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise QlitError(f"n_layers must be an integer >= 1, got {n_layers!r}")
    if ansatz not in ANSATZES:
        raise QlitError(f"ansatz must be one of {', '.join(ANSATZES)}, got {ansatz!r}")
    if embedding not in ROTATIONS:
        raise QlitError(f"embedding must be one of {', '.join(ROTATIONS)}, got {embedding!r}")


def weight_shape(n_qubits: int, n_layers: int, ansatz: str) -> tuple[int, ...]:
    """Shape of the trainable weights: one angle per wire and layer, three for ``strong``."""
    return (n_layers, n_qubits) if ansatz == "basic" else (n_layers, n_qubits, 3)


def init_weights(tensor: torch.Tensor) -> torch.Tensor:
    """Initialise circuit weights in place: small normal angles keep early gradients informative."""
    with torch.no_grad():
        return tensor.normal_(0.0, WEIGHT_INIT_STD)


def entangler_pairs(n_qubits: int, n_layers: int, ansatz: str) -> list[list[tuple[int, int]]]:
    """The (control, target) CNOT pairs of every layer, in PennyLane's order.

    ``basic`` follows BasicEntanglerLayers (one CNOT for two wires, a ring for more);
    ``strong`` follows StronglyEntanglingLayers with its default ranges ``l % (n - 1) + 1``.
    """
    layers: list[list[tuple[int, int]]] = []
    for layer in range(n_layers):
        if n_qubits == 1:
            pairs: list[tuple[int, int]] = []
        elif ansatz == "basic":
            pairs = [(0, 1)] if n_qubits == 2 else [(i, (i + 1) % n_qubits) for i in range(n_qubits)]
        else:
            reach = layer % (n_qubits - 1) + 1
            pairs = [(i, (i + reach) % n_qubits) for i in range(n_qubits)]
        layers.append(pairs)
    return layers


def pennylane_circuit(n_qubits: int, ansatz: str, embedding: str):
    """Return a quantum function ``circuit(inputs, weights)`` for a PennyLane QNode."""
    import pennylane as qml

    def circuit(inputs, weights):
        qml.AngleEmbedding(inputs, wires=range(n_qubits), rotation=embedding)
        if ansatz == "basic":
            qml.BasicEntanglerLayers(weights, wires=range(n_qubits))
        else:
            qml.StronglyEntanglingLayers(weights, wires=range(n_qubits))
        return [qml.expval(qml.PauliZ(w)) for w in range(n_qubits)]

    return circuit


def draw_circuit(n_qubits: int, n_layers: int, ansatz: str, embedding: str, weights=None) -> str:
    """Draw the circuit as text with PennyLane's drawer (expanded to gates, one layer per block)."""
    import pennylane as qml

    if weights is None:
        weights = torch.zeros(weight_shape(n_qubits, n_layers, ansatz))
    qnode = qml.QNode(pennylane_circuit(n_qubits, ansatz, embedding), qml.device("default.qubit", wires=n_qubits))
    inputs = torch.zeros(n_qubits)
    return qml.draw(qnode, decimals=2, level="device")(inputs, weights.detach().cpu())
