"""qlit's variational circuits as ONNX nodes in real arithmetic.

The state is a pair of float32 tensors ``(re, im)`` of shape ``(batch, 2^n)``, wire 0 the most significant bit
as in `qlit.models.statevector`. The embedding rotations depend on the sample. On ``|0…0⟩`` an RX or RY
embedding is a real product state times constant phases, built as Kronecker products; any other embedding (RZ, and
re-uploading's later ones) is applied wire by wire: a rotation mixes each amplitude with the one whose bit is
flipped (a constant `Gather`). The trained gates do not depend on the sample: up to `FOLD_MAX_QUBITS` wires every
run of them between two embeddings is folded into one constant ``2^n × 2^n`` complex matrix (one real matmul of
``[re, im]``); on wider circuits that matrix would outgrow the file (256 MiB at 12 qubits), so they are applied
gate by gate like the embedding, with constant angles.
``⟨Z_w⟩`` is ``(re² + im²)`` times a constant ±1 matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qlit.models.circuit import Gate, gate_sequence

# 2^8 amplitudes: the folded block matrix [[Mr, Mi], [-Mi, Mr]] is 512 × 512 float32, 1 MiB.
FOLD_MAX_QUBITS = 8


class GraphBuilder:
    """Collects ONNX nodes and constants; `op` returns the name of the node's (first) output."""

    def __init__(self, helper: Any, numpy_helper: Any) -> None:
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def _name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, value: np.ndarray, stem: str = "const") -> str:
        """Add a constant tensor (dtype kept) and return its name."""
        name = self._name(stem)
        self.initializers.append(self.numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None, **attrs: Any) -> Any:
        """Add one node; returns its output name (a list of names when ``outputs > 1``)."""
        out = [name] if name is not None else [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), out, name=self._name(op_type), **attrs))
        return out if outputs > 1 else out[0]


def _bits(n: int) -> np.ndarray:
    """``(2^n, n)`` basis-state bits, wire 0 the most significant."""
    return (np.arange(2**n)[:, None] >> (n - 1 - np.arange(n))) & 1


def _flip(n: int, wire: int) -> np.ndarray:
    return np.arange(2**n) ^ (1 << (n - 1 - wire))


def _cnot(n: int, control: int, target: int) -> np.ndarray:
    """``ψ'[k] = ψ[index[k]]`` for one CNOT."""
    index = np.arange(2**n)
    return np.where(index & (1 << (n - 1 - control)) != 0, index ^ (1 << (n - 1 - target)), index)


def apply_gate(state: np.ndarray, gate: Gate, angle: float, n: int) -> np.ndarray:
    """One gate on complex row states ``(batch, 2^n)``, in numpy (float64): what the ONNX nodes compute."""
    if gate.name == "CNOT":
        return state[:, _cnot(n, *gate.wires)]
    c, s = np.cos(angle / 2), np.sin(angle / 2)
    wire = gate.wires[0]
    bit = _bits(n)[:, wire]
    if gate.name == "RX":
        return c * state - 1j * s * state[:, _flip(n, wire)]
    if gate.name == "RY":
        return c * state + s * (2.0 * bit - 1.0) * state[:, _flip(n, wire)]
    return (c - 1j * s * (1.0 - 2.0 * bit)) * state


def folded_matrix(gates: list[Gate], angles: np.ndarray, n: int) -> np.ndarray:
    """``M`` with ``ψ' = ψ @ M`` for row states: the gates applied to the identity's rows (``M = Uᵀ``)."""
    state = np.eye(2**n, dtype=np.complex128)
    for gate in gates:
        state = apply_gate(state, gate, float(angles[gate.source - n]) if gate.source >= 0 else 0.0, n)
    return state


class CircuitNodes:
    """Emit the nodes of one circuit from its angles' tensor to its ⟨Z⟩ tensor.

    Args:
        graph: The graph under construction.
        n_qubits, n_layers, ansatz, embedding: The circuit, as in `qlit.models.circuit.CircuitSpec`.
        weights: The trained angles (any shape; flattened in `gate_sequence` order).
    """

    def __init__(
        self, graph: GraphBuilder, n_qubits: int, n_layers: int, ansatz: str, embedding: str, weights: np.ndarray
    ) -> None:
        self.g, self.n = graph, n_qubits
        self.gates = gate_sequence(n_qubits, n_layers, ansatz, embedding)
        self.weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        self.fold = n_qubits <= FOLD_MAX_QUBITS
        bits = _bits(n_qubits)
        self._index: dict[Any, str] = {}
        self._sign_values = {"RY": 2.0 * bits - 1.0, "RZ": 1.0 - 2.0 * bits}
        self._signs: dict[tuple[str, int], str] = {}

    def _f32(self, value: Any, stem: str = "const") -> str:
        return self.g.const(np.asarray(value, dtype=np.float32), stem)

    def _sign(self, name: str, wire: int) -> str:
        if (name, wire) not in self._signs:
            self._signs[name, wire] = self._f32(self._sign_values[name][:, wire], "signs")
        return self._signs[name, wire]

    def _gather(self, tensor: str, index: np.ndarray, key: Any) -> str:
        if key not in self._index:
            self._index[key] = self.g.const(index.astype(np.int64), "perm")
        return self.g.op("Gather", tensor, self._index[key], axis=1)

    def _rotate(self, name: str, wire: int, c: str, s: str, re: str, im: str) -> tuple[str, str]:
        """``R(θ)`` on one wire with ``c = cos θ/2``, ``s = sin θ/2`` (per sample ``(batch, 1)`` or constant)."""
        g = self.g
        if name == "RZ":
            sz = g.op("Mul", s, self._sign("RZ", wire))
            return (g.op("Add", g.op("Mul", c, re), g.op("Mul", sz, im)),
                    g.op("Sub", g.op("Mul", c, im), g.op("Mul", sz, re)))  # fmt: skip
        flip = _flip(self.n, wire)
        pre, pim = self._gather(re, flip, ("flip", wire)), self._gather(im, flip, ("flip", wire))
        if name == "RX":
            return (g.op("Add", g.op("Mul", c, re), g.op("Mul", s, pim)),
                    g.op("Sub", g.op("Mul", c, im), g.op("Mul", s, pre)))  # fmt: skip
        ss = g.op("Mul", s, self._sign("RY", wire))
        return (g.op("Add", g.op("Mul", c, re), g.op("Mul", ss, pre)),
                g.op("Add", g.op("Mul", c, im), g.op("Mul", ss, pim)))  # fmt: skip

    def _constant_run(self, run: list[Gate], re: str, im: str | np.ndarray) -> tuple[str, str]:
        """The gates of ``run`` on ``re + i·im``; a constant array ``im`` means ``re ⊙ im`` (`_product_state`)."""
        g, n = self.g, self.n
        if isinstance(im, np.ndarray):  # a real product state and its constant phases
            if self.fold:  # the phases fold into the matrix too: one real matmul gives both parts
                m = im[:, None] * folded_matrix(run, self.weights, n)
                both = g.op("MatMul", re, self._f32(np.concatenate([m.real, m.imag], axis=1), "folded_gates"))
                return tuple(g.op("Split", both, g.const(np.array([2**n, 2**n], dtype=np.int64)), outputs=2, axis=1))
            re, im = g.op("Mul", re, self._f32(im.real)), g.op("Mul", re, self._f32(im.imag))
        if self.fold:
            m = folded_matrix(run, self.weights, n)
            block = np.block([[m.real, m.imag], [-m.imag, m.real]])
            both = g.op("MatMul", g.op("Concat", re, im, axis=1), self._f32(block, "folded_gates"))
            return tuple(g.op("Split", both, g.const(np.array([2**n, 2**n], dtype=np.int64)), outputs=2, axis=1))
        for gate in run:
            if gate.name == "CNOT":
                index = _cnot(n, *gate.wires)
                re, im = self._gather(re, index, ("cnot", gate.wires)), self._gather(im, index, ("cnot", gate.wires))
            else:
                angle = self.weights[gate.source - n]
                c, s = self._f32(np.cos(angle / 2)), self._f32(np.sin(angle / 2))
                re, im = self._rotate(gate.name, gate.wires[0], c, s, re, im)
        return re, im

    def _product_state(self, cos: str, sin: str, rotation: str) -> tuple[str, np.ndarray]:
        """RX or RY on every wire of ``|0…0⟩``: a real product ``⊗_w (cos θ_w/2, sin θ_w/2)`` and constant phases.

        RX gives each basis state the phase ``(-i)^(number of ones)``, RY none (as in `qlit.models.statevector`).
        """
        g, n = self.g, self.n
        axis2 = g.const(np.array([2], dtype=np.int64))
        axis1 = g.const(np.array([1], dtype=np.int64)) if n > 1 else ""
        pairs = g.op("Concat", g.op("Unsqueeze", cos, axis2), g.op("Unsqueeze", sin, axis2), axis=2)  # (batch, n, 2)
        state = None
        for wire in range(n):
            factor = g.op("Gather", pairs, g.const(np.array(wire, dtype=np.int64)), axis=1)  # (batch, 2)
            if state is None:
                state = factor
                continue
            outer = g.op("Mul", g.op("Unsqueeze", state, axis2), g.op("Unsqueeze", factor, axis1))
            state = g.op("Reshape", outer, g.const(np.array([-1, 2 ** (wire + 1)], dtype=np.int64)))
        ones = _bits(n).sum(axis=1)
        return state, (-1j) ** ones if rotation == "RX" else np.ones(2**n, dtype=np.complex128)

    def expectations(self, angles: str) -> str:
        """Nodes from the ``(batch, n_qubits)`` float32 angles to ``(batch, n_qubits)`` ⟨Z⟩ values."""
        g, n = self.g, self.n
        half = g.op("Mul", angles, self._f32(0.5))
        cos, sin = g.op("Cos", half), g.op("Sin", half)
        columns: dict[int, tuple[str, str]] = {}
        gates = self.gates
        if gates[0].name in ("RX", "RY"):  # the embedding on |0…0⟩: a product state, n wires at once
            re, im = self._product_state(cos, sin, gates[0].name)
            gates = gates[n:]
        else:
            ket0 = np.zeros((1, 2**n), dtype=np.float32)
            ket0[0, 0] = 1.0
            re, im = self._f32(ket0, "ket0"), self._f32(np.zeros_like(ket0), "ket0_im")
        run: list[Gate] = []
        for gate in [*gates, None]:
            if gate is not None and gate.source != -1 and gate.source < n:  # an embedding rotation
                if run:
                    re, im = self._constant_run(run, re, im)
                    run = []
                wire = gate.source
                if wire not in columns:
                    index = self.g.const(np.array([wire], dtype=np.int64))
                    columns[wire] = (g.op("Gather", cos, index, axis=1), g.op("Gather", sin, index, axis=1))
                re, im = self._rotate(gate.name, gate.wires[0], *columns[wire], re, im)
            elif gate is not None:
                run.append(gate)
            elif run:
                re, im = self._constant_run(run, re, im)
        probs = g.op("Add", g.op("Mul", re, re), g.op("Mul", im, im))
        return g.op("MatMul", probs, self._f32(1.0 - 2.0 * _bits(n), "z_signs"))
