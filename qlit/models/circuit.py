"""The variational circuits qlit builds, described once for every backend.

A circuit is an angle embedding of one feature per qubit followed by ``n_layers`` trainable
entangling layers and a Pauli-Z readout of every wire. The statevector backend and the PennyLane
backends both read their gate sequence from here, so they cannot drift apart.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import torch

from qlit.errors import QlitError

Ansatz = Literal["basic", "strong"]
Rotation = Literal["X", "Y", "Z"]

ANSATZES: tuple[str, ...] = ("basic", "strong")
ROTATIONS: tuple[str, ...] = ("X", "Y", "Z")
WEIGHT_INIT_STD = 0.05
# Memory of a simulation, per basis state: the qlit simulator's tables (bits, ⟨Z⟩ signs, CNOT permutations:
# measured 26·n bytes at 22 and 23 qubits while they are built), and per sample a complex64 statevector
# (8 bytes) of which a training step holds about 16 copies (states, probabilities, what autograd saves).
TABLE_BYTES_PER_QUBIT = 28
AMPLITUDE_BYTES = 8
STATE_COPIES = 16


def _size(n_bytes: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes:.0f} bytes"


def memory_bytes() -> int:
    """Physical memory of this machine in bytes, 0 when the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return 0


def simulation_bytes(n_qubits: int, batch: int = 1) -> float:
    """Estimated peak memory of simulating a training step of ``batch`` samples on ``n_qubits`` wires."""
    return math.ldexp(TABLE_BYTES_PER_QUBIT * n_qubits + AMPLITUDE_BYTES * STATE_COPIES * batch, min(n_qubits, 1000))


def _state_size(n_qubits: int) -> str:
    """One sample's complex64 statevector, readable also where 2^n overflows a float."""
    if n_qubits <= 60:
        return _size(AMPLITUDE_BYTES * 2.0**n_qubits)
    return f"about 10^{int(n_qubits * math.log10(2) + math.log10(AMPLITUDE_BYTES))} bytes"


def max_qubits(memory: int) -> int:
    """Widest circuit whose simulation, one sample at a time, fits in ``memory`` bytes (see `simulation_bytes`).

    A batch needs more: this is an upper bound, not a promise that every batch fits.
    """
    n = 1
    while simulation_bytes(n + 1) <= memory:
        n += 1
    return n


def _check_width(n_qubits: int) -> None:
    memory, where = memory_bytes(), "this machine's memory"
    if memory == 0 or n_qubits <= max_qubits(memory):
        return
    if torch.cuda.is_available():  # asked only now, since it initialises CUDA
        gpu = max(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
        if gpu > memory:
            memory, where = gpu, "the largest GPU's memory"
            if n_qubits <= max_qubits(memory):
                return
    raise QlitError(
        f"n_qubits={n_qubits} is too wide to simulate: one sample's statevector alone is 2^{n_qubits} amplitudes, "
        f"{_state_size(n_qubits)} in complex64, and with the simulator's tables and the copies a "
        f"training step keeps, {where} ({_size(memory)}) allows n_qubits <= {max_qubits(memory)}"
    )


def check_circuit(n_qubits: int, n_layers: int, ansatz: str, embedding: str, simulated: bool = True) -> None:
    """Raise a `QlitError` naming the first invalid circuit setting.

    Args:
        n_qubits: Number of wires, at least 1 and, when ``simulated``, at most `max_qubits`.
        n_layers: Number of entangling layers, at least 1.
        ansatz: ``"basic"`` (BasicEntanglerLayers) or ``"strong"`` (StronglyEntanglingLayers).
        embedding: Rotation axis of the angle embedding: ``"X"``, ``"Y"`` or ``"Z"``.
        simulated: The circuit will be simulated (``False`` for the classical twin, which only borrows its width).
    """
    if isinstance(n_qubits, bool) or not isinstance(n_qubits, int) or n_qubits < 1:
        raise QlitError(f"n_qubits must be an integer >= 1, got {n_qubits!r}")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise QlitError(f"n_layers must be an integer >= 1, got {n_layers!r}")
    if ansatz not in ANSATZES:
        raise QlitError(f"ansatz must be one of {', '.join(ANSATZES)}, got {ansatz!r}")
    if embedding not in ROTATIONS:
        raise QlitError(f"embedding must be one of {', '.join(ROTATIONS)}, got {embedding!r}")
    if simulated:
        _check_width(n_qubits)


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
