"""The circuit as text, in the layout of PennyLane's ``qml.draw``, drawn from qlit's own gate list.

Drawing without PennyLane keeps it out of every ``qlit fit`` (importing it costs about a second, and only
the PennyLane backends need it). The layout is PennyLane's: a gate goes in the first column after every
column its wires, and the wires a CNOT's line crosses, are busy; each column is as wide as its widest label.
"""

from __future__ import annotations

import torch

from qlit.models.circuit import Gate, gate_sequence, weight_shape


def _labelled(gates: list[Gate], angles: list[float], decimals: int) -> list[tuple[tuple[int, ...], str]]:
    """(wires, label) per gate as drawn: ``RZ RY RZ`` of a ``Rot`` as one ``Rot(φ,θ,ω)``."""
    drawn: list[tuple[tuple[int, ...], str]] = []
    i = 0
    while i < len(gates):
        gate = gates[i]
        if gate.name == "CNOT":
            drawn.append((gate.wires, ""))
            i += 1
        elif not gate.noisy:  # the first part of a Rot: its three angles make one label
            parts = ",".join(f"{angles[g.source]:.{decimals}f}" for g in gates[i : i + 3])
            drawn.append((gate.wires, f"Rot({parts})"))
            i += 3
        else:
            drawn.append((gate.wires, f"{gate.name}({angles[gate.source]:.{decimals}f})"))
            i += 1
    return drawn


def draw_circuit(
    n_qubits: int, n_layers: int, ansatz: str, embedding: str, weights: torch.Tensor | None = None, decimals: int = 2
) -> str:
    """Draw the circuit as text, the embedding at input 0 and the trainable gates at ``weights`` (default 0).

    Returns:
        One line per wire, ending in its ⟨Z⟩ readout, as ``qml.draw(qnode, decimals=2, level="device",
        max_length=10**6)`` draws the same circuit: one line per wire, however long (PennyLane wraps at 100).
    """
    if weights is None:
        weights = torch.zeros(weight_shape(n_qubits, n_layers, ansatz))
    angles = [0.0] * n_qubits + weights.detach().double().cpu().flatten().tolist()
    columns: list[dict[int, str]] = []
    busy = [0] * n_qubits  # per wire, the number of columns it is busy in
    for wires, label in _labelled(gate_sequence(n_qubits, n_layers, ansatz, embedding), angles, decimals):
        span = range(min(wires), max(wires) + 1)
        at = max(busy[w] for w in span)
        if at == len(columns):
            columns.append({})
        if len(wires) == 1:
            columns[at][wires[0]] = "─" + label
        else:
            control, target = wires
            for w in span:
                columns[at][w] = "│"
            top, bottom = ("╭", "╰") if control < target else ("╰", "╭")
            columns[at][control] = top + "●"
            columns[at][target] = bottom + "X"
        for w in span:
            busy[w] = at + 1
    names = [f"{w}: " for w in range(n_qubits)]
    width = max(len(name) for name in names)
    lines = [name.rjust(width) + "─" for name in names]
    for column in columns:
        size = max(len(text) for text in column.values())
        for w in range(n_qubits):
            lines[w] += column.get(w, "─").ljust(size, "─") + "─"
    return "\n".join(line + "┤  <Z>" for line in lines)
