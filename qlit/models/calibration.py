"""Noise as qlit simulates it, per gate and wire: uniform channels, or a device's calibration converted to them.

`NoiseSites` says which channels follow each gate of `qlit.models.circuit.gate_sequence` on each of its wires, and
each measured bit's readout confusion. ``--model.noise {depolarizing: 0.01}`` puts the same channels after every gate
as drawn (`noise_sites`); ``--model.noise qiskit:fake_manila`` reads that device's calibration (`device_sites`):

* the circuit is transpiled as ``--model.hardware`` transpiles it (`qlit.models.qiskit_backend.pass_manager`: the
  same layout, routing and native gates), once up to routing, where the SWAPs are still explicit, to follow every
  logical wire over the physical qubits it visits, and once in full, to count the native gates that run;
* every native gate gets the channel the fake device's noise model gives it (Qiskit Aer's
  ``basic_device_gate_errors``): thermal relaxation from T1, T2 and the gate's duration (at zero temperature:
  amplitude damping, then the phase damping that brings coherences to ``exp(-t/T2)``), and a depolarizing channel
  that makes the gate's average infidelity the calibrated gate error;
* each qubit's native single-qubit gates are shared equally by the rotations that ran on it (an embedding rotation
  and the next RX become one pair of ``sx``), each edge's CNOTs by the CNOTs (1) and SWAPs (3) routed over it; a
  SWAP's, and a ``Rot``'s first two rotations', share waits for the wire's next noisy gate;
* readout is per wire and asymmetric, from the qubit each wire is measured on: ``P(1|0)`` (``prob_meas1_prep0``) and
  ``P(0|1)``, so ``⟨Z⟩' = (1 - P(1|0) - P(0|1))⟨Z⟩ + P(0|1) - P(1|0)``.

What it approximates: a native two-qubit depolarizing channel becomes a one-qubit depolarizing channel on each of its
wires with the same marginal (weight-one Paulis shrink as on the device, weight-two ones by ``(1 - λ)²`` instead of
``1 - λ``); the channels of a gate's natives are merged (all depolarizing, then all damping) and moved to the end of
the qlit gate they belong to; idle qubits are noiseless, as in the fake devices' noise model. Qiskit is imported
only when a device is named.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from qlit.errors import QlitError
from qlit.models.circuit import CHANNELS, CircuitSpec, gate_sequence

Channels = tuple[tuple[str, float], ...]
SWAP_CNOTS = 3


@dataclass(frozen=True)
class NoiseSites:
    """The channels after each gate on each wire, and the readout confusion of each wire.

    Attributes:
        gates: One entry per gate of `gate_sequence`, one per wire of the gate (a CNOT's control, then target): the
            ``(channel, p)`` pairs that follow it there, in `CHANNELS` order; ``()`` for none.
        readout: Per wire, ``(P(read 1 | 0), P(read 0 | 1))``; ``()`` for perfect readout.
        measured: Per wire, the device qubit it is measured on (device calibrations only).
    """

    gates: tuple[tuple[Channels, ...], ...]
    readout: tuple[tuple[float, float], ...] = ()
    measured: tuple[int, ...] = ()

    @property
    def has_gate_noise(self) -> bool:
        return any(channels for gate in self.gates for channels in gate)


def noise_sites(spec: CircuitSpec) -> NoiseSites:
    """``spec``'s noise as per-gate, per-wire channels: uniform ones, or its device's calibration."""
    if spec.device_noise is not None:
        return device_sites(spec.device_noise, spec)
    gates = gate_sequence(spec.n_qubits, spec.n_layers, spec.ansatz, spec.embedding)
    channels = spec.gate_noise
    readout = spec.readout_error
    return NoiseSites(
        tuple(tuple(channels if gate.noisy else () for _ in gate.wires) for gate in gates),
        ((readout, readout),) * spec.n_qubits if readout > 0 else (),
    )


def device_sites(device: str, spec: CircuitSpec, properties: Any = None) -> NoiseSites:
    """The calibration of ``device`` (``qiskit:<name>``) as `NoiseSites` of ``spec``'s circuit (cached per circuit).

    Args:
        device: A Qiskit device, named as ``--model.hardware`` names it.
        spec: The circuit.
        properties: The device's ``BackendProperties`` to read readout errors from instead of its own (tests).
    """
    key = (device, spec.n_qubits, spec.n_layers, spec.ansatz, spec.embedding)
    if properties is not None:
        return _convert(device, *key[1:], properties)
    return _cached(*key)


@functools.lru_cache(maxsize=32)
def _cached(device: str, n_qubits: int, n_layers: int, ansatz: str, embedding: str) -> NoiseSites:
    return _convert(device, n_qubits, n_layers, ansatz, embedding, None)


class _Calibration:
    """What the conversion reads from a device: its Target (gates, T1, T2) and its readout errors."""

    def __init__(self, backend: Any, properties: Any) -> None:
        self.target = backend.target
        if properties is None and callable(getattr(backend, "properties", None)):
            properties = backend.properties()
        self.properties = properties

    def readout(self, qubit: int) -> tuple[float, float]:
        """``(P(1|0), P(0|1))`` of ``qubit``: asymmetric where the properties have them, else the measure error."""
        if self.properties is not None:
            try:
                return (
                    float(self.properties.qubit_property(qubit, "prob_meas1_prep0")[0]),
                    float(self.properties.qubit_property(qubit, "prob_meas0_prep1")[0]),
                )
            except Exception:  # noqa: BLE001  (a device without them reports a symmetric error only)
                pass
        measure = self.target["measure"].get((qubit,)) if "measure" in self.target.operation_names else None
        error = float(measure.error or 0.0) if measure is not None else 0.0
        return error, error

    def survival(self, name: str, qubits: tuple[int, ...]) -> dict[int, tuple[float, float, float]]:
        """Per qubit of a native gate, how much its Bloch vector survives: (depolarizing, T1, extra dephasing).

        Qiskit Aer's ``basic_device_gate_errors``: relaxation for the gate's duration, then the depolarizing
        parameter λ that brings the average gate fidelity to ``1 - error``; each qubit's marginal shrinks by 1 - λ.
        """
        props = self.target[name].get(qubits) if name in self.target.operation_names else None
        error = float(props.error or 0.0) if props is not None else 0.0
        duration = float(props.duration or 0.0) if props is not None else 0.0
        damping, fidelity = {}, 1.0
        for q in qubits:
            qp = self.target.qubit_properties[q] if self.target.qubit_properties else None
            t1 = getattr(qp, "t1", None) or math.inf
            t2 = min(getattr(qp, "t2", None) or math.inf, 2 * t1)
            amplitude, coherence = math.exp(-duration / t1), math.exp(-duration / t2)
            damping[q] = (amplitude, coherence**2 / amplitude)  # phase damping scales coherences by its square root
            fidelity *= (1 + 2 * coherence + amplitude) / 4  # process fidelity of the relaxation
        dim = 2 ** len(qubits)
        relax_fidelity = (dim * fidelity + 1) / (dim + 1)
        depolarizing = 0.0
        if error > 1 - relax_fidelity:
            error = min(error, dim / (dim + 1))
            depolarizing = min(dim * (error - 1 + relax_fidelity) / (dim * relax_fidelity - 1), dim**2 / (dim**2 - 1))
        return {q: (1 - depolarizing, *damping[q]) for q in qubits}


def _transpiled(backend: Any, circuit: Any) -> tuple[Any, Any]:
    """``circuit`` routed (SWAPs still explicit, gates still qlit's) and fully transpiled, as the device runs it."""
    from qlit.models.qiskit_backend import HardwareOptions, pass_manager

    options = HardwareOptions()
    full = pass_manager(backend, options).run(circuit)
    routing = pass_manager(backend, options)
    routing.translation = routing.optimization = routing.scheduling = None
    return routing.run(circuit), full


def _natives(full: Any, calibration: _Calibration) -> tuple[dict, dict]:
    """Survival products of the native gates that run: per qubit (one-qubit gates), per edge and qubit (CNOTs)."""
    one: dict[int, list[float]] = defaultdict(lambda: [1.0, 1.0, 1.0])
    two: dict[tuple[int, int], dict[int, list[float]]] = defaultdict(lambda: defaultdict(lambda: [1.0, 1.0, 1.0]))
    for inst in full.data:
        qubits = tuple(full.find_bit(q).index for q in inst.qubits)
        name = inst.operation.name
        if name in ("measure", "barrier", "delay", "reset", "rz") or len(qubits) > 2:
            continue
        for q, factors in calibration.survival(name, qubits).items():
            total = one[q] if len(qubits) == 1 else two[tuple(sorted(qubits))][q]
            for i, f in enumerate(factors):
                total[i] *= f
    return one, two


def _convert(device: str, n_qubits: int, n_layers: int, ansatz: str, embedding: str, properties: Any) -> NoiseSites:
    from qlit.models.qiskit_backend import qiskit_circuit, resolve_backend

    backend = resolve_backend(device)
    name = device.removeprefix("qiskit:")
    if n_qubits > backend.num_qubits:
        raise QlitError(f"n_qubits={n_qubits} does not fit {name}, which has {backend.num_qubits} qubits")
    spec = CircuitSpec(n_qubits, n_layers, ansatz, embedding)
    calibration = _Calibration(backend, properties)
    routed, full = _transpiled(backend, qiskit_circuit(spec)[0])
    one, two = _natives(full, calibration)
    gates = gate_sequence(n_qubits, n_layers, ansatz, embedding)
    ops, measured = _routed_operations(routed, n_qubits, name)
    return NoiseSites(
        _place(ops, gates, n_qubits, one, two, name),
        tuple(calibration.readout(q) for q in measured),
        tuple(measured),
    )


def _routed_operations(routed: Any, n_qubits: int, name: str) -> tuple[list, list[int]]:
    """The routed circuit's operations in order, each with its qubits and logical wires; each wire's measured qubit."""
    where = {p: w for w, p in enumerate(routed.layout.initial_index_layout()[:n_qubits])}
    ops, measured = [], [-1] * n_qubits
    for inst in routed.data:
        qubits = tuple(routed.find_bit(q).index for q in inst.qubits)
        op = inst.operation.name
        wires = tuple(where.get(q) for q in qubits)
        if op == "measure":
            measured[routed.find_bit(inst.clbits[0]).index] = qubits[0]
        elif op == "swap":
            where[qubits[0]], where[qubits[1]] = wires[1], wires[0]
        elif op not in ("rx", "ry", "rz", "cx"):
            continue
        ops.append((op, qubits, wires))
    at = {w: p for p, w in where.items() if w is not None}
    if measured != [at.get(w, -1) for w in range(n_qubits)]:
        raise QlitError(f"cannot follow the wires of the circuit transpiled for {name}: its noise cannot be converted")
    return ops, measured


def _place(ops: list, gates: list, n_qubits: int, one: dict, two: dict, name: str) -> tuple[tuple[Channels, ...], ...]:
    """Each routed operation's share of its qubits' native noise, placed after the qlit gate it belongs to."""
    rotations, edge_weight = defaultdict(int), defaultdict(int)
    for op, qubits, _ in ops:
        if op in ("rx", "ry"):
            rotations[qubits[0]] += 1
        elif op in ("cx", "swap"):
            edge_weight[tuple(sorted(qubits))] += SWAP_CNOTS if op == "swap" else 1
    per_wire = [[g for g, gate in enumerate(gates) if w in gate.wires] for w in range(n_qubits)]
    survival = [[[1.0, 1.0, 1.0] for _ in gate.wires] for gate in gates]
    pending = [[1.0, 1.0, 1.0] for _ in range(n_qubits)]
    last: list[tuple[int, int] | None] = [None] * n_qubits  # each wire's last noisy gate so far, and its place
    position = [0] * n_qubits  # how many of each wire's gates have been met
    for op, qubits, wires in ops:
        if op in ("rx", "ry"):
            shares = [(wires[0], one[qubits[0]], 1 / rotations[qubits[0]])]
        elif op in ("cx", "swap"):
            edge = tuple(sorted(qubits))
            fraction = (SWAP_CNOTS if op == "swap" else 1) / edge_weight[edge]
            totals = [two[edge][q] for q in qubits]
            if op == "swap":  # each wire spends the SWAP half on either qubit
                totals = [[math.sqrt(a * b) for a, b in zip(*totals)]] * 2
            shares = [(w, total, fraction) for w, total in zip(wires, totals)]
        else:
            shares = []
        for wire, total, fraction in shares:
            if wire is None:  # a qubit no wire has reached yet
                continue
            # A SWAP's noise goes where it happens, after the wire's last gate; a gate's waits for its noisy end.
            into = pending[wire] if op != "swap" or last[wire] is None else survival[last[wire][0]][last[wire][1]]
            for i in range(3):
                into[i] *= total[i] ** fraction
        if op in ("swap", "measure"):
            continue
        g = per_wire[wires[0]][position[wires[0]]]
        if gates[g].wires != wires or gates[g].name != ("CNOT" if op == "cx" else op.upper()):
            raise QlitError(f"cannot match the circuit transpiled for {name} to qlit's gates: noise not converted")
        for k, w in enumerate(wires):
            position[w] += 1
            if gates[g].noisy:
                survival[g][k] = [a * b for a, b in zip(survival[g][k], pending[w])]
                pending[w], last[w] = [1.0, 1.0, 1.0], (g, k)
    return tuple(tuple(_channels(*site) for site in gate) for gate in survival)


def _channels(depolarizing: float, amplitude: float, dephasing: float) -> Channels:
    """Survival factors as qlit's channels: PennyLane's depolarizing p shrinks the Bloch vector by ``1 - 4p/3``."""
    values = {
        "depolarizing": 0.75 * (1 - depolarizing),
        "amplitude_damping": 1 - amplitude,
        "phase_damping": 1 - dephasing,
    }
    return tuple((name, values[name]) for name in CHANNELS if values.get(name, 0.0) > 1e-12)


def pennylane_site_circuit(spec: CircuitSpec, sites: NoiseSites):
    """`qlit.models.circuit.pennylane_noisy_circuit` with ``sites``' channels per gate and wire, for ``default.mixed``.

    An asymmetric readout is a two-Kraus channel before the measurement: ``|0⟩ → |1⟩`` with ``P(1|0)``, ``|1⟩ → |0⟩``
    with ``P(0|1)``.
    """
    import numpy as np
    import pennylane as qml

    n = spec.n_qubits
    gates = gate_sequence(n, spec.n_layers, spec.ansatz, spec.embedding)

    def circuit(inputs, weights):
        sources = [inputs[..., w] for w in range(n)] + [weights.reshape(-1)[i] for i in range(weights.numel())]
        for gate, per_wire in zip(gates, sites.gates):
            if gate.name == "CNOT":
                qml.CNOT(wires=list(gate.wires))
            else:
                getattr(qml, gate.name)(sources[gate.source], wires=gate.wires[0])
            for wire, channels in zip(gate.wires, per_wire):
                for name, p in channels:
                    getattr(qml, CHANNELS[name])(p, wires=wire)
        for wire, (flip0, flip1) in enumerate(sites.readout):
            stay = np.diag([math.sqrt(1 - flip0), math.sqrt(1 - flip1)])
            qml.QubitChannel([stay, np.array([[0.0, math.sqrt(flip1)], [math.sqrt(flip0), 0.0]])], wires=wire)
        return [qml.expval(qml.PauliZ(w)) for w in range(n)]

    return circuit
