"""The variational circuits qlit builds, described once for every backend.

A circuit is an angle embedding of one feature per qubit followed by ``n_layers`` trainable
entangling layers and a Pauli-Z readout of every wire (``reupload`` repeats the embedding before
every layer). `CircuitSpec` holds everything that describes one: its shape, the simulator, the
initialisation, and the hardware conditions it runs under (``shots``, ``noise``). The statevector
backend and the PennyLane backends both read their gate sequence from here, so they cannot drift apart.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch

from qlit.errors import QlitError

Ansatz = Literal["basic", "strong", "reupload"]
Rotation = Literal["X", "Y", "Z"]
ShotGradient = Literal["parameter-shift", "exact"]

ANSATZES: tuple[str, ...] = ("basic", "strong", "reupload")
ROTATIONS: tuple[str, ...] = ("X", "Y", "Z")
SHOT_GRADIENTS: tuple[str, ...] = ("parameter-shift", "exact")
WEIGHT_INIT_STD = 0.05
# Gate noise: qlit's name -> PennyLane's channel, in the order both apply them after every gate as drawn (an
# embedding rotation, a trainable rotation, a whole Rot, a CNOT), on every wire the gate touches.
CHANNELS = {
    "depolarizing": "DepolarizingChannel",
    "amplitude_damping": "AmplitudeDamping",
    "phase_damping": "PhaseDamping",
    "bit_flip": "BitFlip",
    "phase_flip": "PhaseFlip",
}
READOUT = "readout_error"
NOISE_NAMES: tuple[str, ...] = (*CHANNELS, READOUT)
# A device's calibration as the noise: ``qiskit:fake_manila``, kept as {device: qiskit:fake_manila}.
DEVICE = "device"
DEVICE_PREFIX = "qiskit:"
# A density matrix has 4^n entries: 8 MiB per sample in complex64 at 10 qubits, and a training step keeps
# one per gate and channel for the backward (about 200 at 10 qubits and 2 layers), so a batch of 32
# already needs ~50 GiB there. Noise is simulated up to this width.
DENSITY_MAX_QUBITS = 10
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
        ansatz: ``"basic"`` (BasicEntanglerLayers), ``"strong"`` (StronglyEntanglingLayers) or ``"reupload"``
            (the embedding before every strongly entangling layer).
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
    """Shape of the trainable weights: one angle per wire and layer, three (a ``Rot``) for the others."""
    return (n_layers, n_qubits) if ansatz == "basic" else (n_layers, n_qubits, 3)


def init_weights(tensor: torch.Tensor, std: float = WEIGHT_INIT_STD) -> torch.Tensor:
    """Initialise circuit weights in place: small normal angles keep early gradients informative."""
    with torch.no_grad():
        return tensor.normal_(0.0, std)


def _probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise QlitError(f"noise {name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def check_noise(noise: Mapping[str, Any] | str | None) -> tuple[tuple[str, Any], ...]:
    """The noise settings as ``(name, probability)`` pairs in `NOISE_NAMES` order, zero ones left out.

    A device's calibration, ``"qiskit:<device>"`` or ``{"device": "qiskit:<device>"}``, is ``(("device", name),)``;
    its channels come from `qlit.models.calibration` when the circuit is built.

    Raises:
        QlitError: an unknown channel, or a value that is not a probability.
    """
    if noise is None:
        return ()
    if isinstance(noise, Mapping) and DEVICE in noise:
        if len(noise) > 1:
            raise QlitError(f"noise {DEVICE} stands alone (its calibration gives every channel), got {noise!r}")
        noise = noise[DEVICE]
    if isinstance(noise, str):
        if not noise.startswith(DEVICE_PREFIX) or noise == DEVICE_PREFIX:
            raise QlitError(
                f"noise must be a mapping like {{depolarizing: 0.01}} or a device's calibration, qiskit:<device> "
                f"(e.g. qiskit:fake_manila), got {noise!r}"
            )
        return ((DEVICE, noise),)
    if not isinstance(noise, Mapping):
        raise QlitError(f"noise must be a mapping like {{depolarizing: 0.01}}, got {noise!r}")
    unknown = [name for name in noise if name not in NOISE_NAMES]
    if unknown:
        raise QlitError(f"noise channel {unknown[0]!r} does not exist; qlit knows {', '.join(NOISE_NAMES)}")
    values = {name: _probability(name, value) for name, value in noise.items()}
    return tuple((name, values[name]) for name in NOISE_NAMES if values.get(name, 0.0) > 0.0)


@dataclass(frozen=True)
class CircuitSpec:
    """Everything that describes one variational circuit and how it is simulated.

    ``HybridClassifier`` takes these as flat options (``model.n_qubits``, ``model.noise``, ...) and builds
    one; `StatevectorCircuit`, `QuantumLayer` and `HybridNet` take it whole.

    Args:
        n_qubits: Number of wires, equal to the number of input features.
        n_layers: Number of trainable entangling layers.
        ansatz: ``"basic"`` (BasicEntanglerLayers), ``"strong"`` (StronglyEntanglingLayers) or ``"reupload"``
            (data re-uploading, Pérez-Salinas et al. 2020: the embedding again before every strong layer).
        embedding: Angle-embedding rotation, ``"X"``, ``"Y"`` or ``"Z"``.
        backend: ``"qlit"`` (qlit's own simulator) or a PennyLane device name.
        diff_method: PennyLane differentiation method; ignored by the ``qlit`` backend.
        init_std: Standard deviation of the normal initial circuit angles.
        shots: ``None`` for exact expectation values, or the number of measurements each ⟨Z⟩ is estimated from.
        noise: Channel probabilities, e.g. ``{"depolarizing": 0.01, "readout_error": 0.02}``: every gate of the
            circuit as drawn (`draw_circuit`: an embedding rotation, an RX of ``basic``, a whole ``Rot`` of
            ``strong``, a CNOT) is followed by each channel on each wire it touches, so ``basic`` and ``strong``
            get the same channels per layer; ``readout_error`` flips each measured bit. Or a device's calibration,
            ``"qiskit:fake_manila"``, converted to such channels per gate and wire (`qlit.models.calibration`).
        shot_gradient: With ``shots`` on the ``qlit`` backend: ``"parameter-shift"`` (sampled shifted circuits,
            as a device computes them) or ``"exact"``, a simulation-only shortcut (sampled forward values,
            the exact gradient of the expectation).
    """

    n_qubits: int = 4
    n_layers: int = 2
    ansatz: Ansatz = "basic"
    embedding: Rotation = "X"
    backend: str = "qlit"
    diff_method: str = "backprop"
    init_std: float = WEIGHT_INIT_STD
    shots: int | None = None
    noise: tuple[tuple[str, Any], ...] = field(default=())
    shot_gradient: ShotGradient = "parameter-shift"

    def __post_init__(self) -> None:
        check_circuit(self.n_qubits, self.n_layers, self.ansatz, self.embedding, simulated=False)
        std = self.init_std
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 < std < float("inf"):
            raise QlitError(f"init_std must be a finite number > 0, got {std!r}")
        shots = self.shots
        if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
            raise QlitError(f"shots must be null (exact expectation values) or an integer >= 1, got {shots!r}")
        if self.shot_gradient not in SHOT_GRADIENTS:
            raise QlitError(f"shot_gradient must be one of {', '.join(SHOT_GRADIENTS)}, got {self.shot_gradient!r}")
        noise = self.noise if isinstance(self.noise, (Mapping, str)) or self.noise is None else dict(self.noise)
        object.__setattr__(self, "noise", check_noise(noise))

    @classmethod
    def of(cls, *args: Any, **fields: Any) -> CircuitSpec:
        """``spec`` itself when given one, else ``CircuitSpec(*args, **fields)``."""
        if len(args) == 1 and not fields and isinstance(args[0], CircuitSpec):
            return args[0]
        return cls(*args, **fields)

    @property
    def device_noise(self) -> str | None:
        """The device whose calibration is the noise (``qiskit:<device>``), or None."""
        return dict(self.noise).get(DEVICE)

    @property
    def gate_noise(self) -> tuple[tuple[str, float], ...]:
        """The channels applied after every gate as drawn (readout error left out)."""
        return tuple((name, p) for name, p in self.noise if name in CHANNELS)

    @property
    def readout_error(self) -> float:
        """Probability that a measured bit flips."""
        return dict(self.noise).get(READOUT, 0.0)

    @property
    def needs_density_matrix(self) -> bool:
        """Gate noise makes the state mixed; readout error alone acts on the measured probabilities."""
        return bool(self.gate_noise) or self.device_noise is not None

    def check_simulable(self) -> None:
        """Raise a `QlitError` if this circuit is too wide to simulate (with noise: as a density matrix)."""
        check_circuit(self.n_qubits, self.n_layers, self.ansatz, self.embedding)
        if self.needs_density_matrix and self.n_qubits > DENSITY_MAX_QUBITS:
            noise = self.device_noise or dict(self.gate_noise)
            raise QlitError(
                f"noise {noise} needs a density matrix of 4^n entries: at n_qubits={self.n_qubits} "
                f"{_size(AMPLITUDE_BYTES * 4.0**self.n_qubits)} per sample in complex64, and a training step keeps "
                f"one per gate and channel; qlit simulates gate noise up to n_qubits={DENSITY_MAX_QUBITS}"
            )


class Gate(NamedTuple):
    """One gate of a circuit: ``name`` (RX, RY, RZ or CNOT), its wires, and where its angle comes from.

    ``source`` indexes ``cat([inputs, weights.flatten()])``: below ``n_qubits`` an input feature, above a
    trainable angle; ``-1`` for CNOT. ``noisy``: whether gate noise follows it, true for the last (or only)
    part of a gate as drawn, false for the first two of the RZ RY RZ that make up a ``Rot``.
    """

    name: str
    wires: tuple[int, ...]
    source: int
    noisy: bool = True


def gate_sequence(n_qubits: int, n_layers: int, ansatz: str, embedding: str) -> list[Gate]:
    """The circuit as gates, in PennyLane's order (``Rot(φ, θ, ω)`` as ``RZ(φ) RY(θ) RZ(ω)``, noisy after the last)."""
    rotation = "R" + embedding
    embed = [Gate(rotation, (w,), w) for w in range(n_qubits)]
    gates = [] if ansatz == "reupload" else list(embed)
    per_gate = 1 if ansatz == "basic" else 3
    for layer, pairs in enumerate(entangler_pairs(n_qubits, n_layers, ansatz)):
        if ansatz == "reupload":
            gates += embed
        for wire in range(n_qubits):
            first = n_qubits + (layer * n_qubits + wire) * per_gate
            if ansatz == "basic":
                gates.append(Gate("RX", (wire,), first))
            else:
                gates += [
                    Gate("RZ", (wire,), first, noisy=False), Gate("RY", (wire,), first + 1, noisy=False),
                    Gate("RZ", (wire,), first + 2),
                ]
        gates += [Gate("CNOT", pair, -1) for pair in pairs]
    return gates


def entangler_pairs(n_qubits: int, n_layers: int, ansatz: str) -> list[list[tuple[int, int]]]:
    """The (control, target) CNOT pairs of every layer, in PennyLane's order.

    ``basic`` follows BasicEntanglerLayers (one CNOT for two wires, a ring for more);
    ``strong`` and ``reupload`` follow StronglyEntanglingLayers with its default ranges ``l % (n - 1) + 1``.
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
    """Return a quantum function ``circuit(inputs, weights)`` for a PennyLane QNode, built from its templates."""
    import pennylane as qml

    wires = range(n_qubits)

    def circuit(inputs, weights):
        if ansatz == "reupload":
            for layer in range(weights.shape[0]):
                qml.AngleEmbedding(inputs, wires=wires, rotation=embedding)
                ranges = [layer % (n_qubits - 1) + 1] if n_qubits > 1 else None
                qml.StronglyEntanglingLayers(weights[layer : layer + 1], wires=wires, ranges=ranges)
            return [qml.expval(qml.PauliZ(w)) for w in wires]
        qml.AngleEmbedding(inputs, wires=wires, rotation=embedding)
        if ansatz == "basic":
            qml.BasicEntanglerLayers(weights, wires=wires)
        else:
            qml.StronglyEntanglingLayers(weights, wires=wires)
        return [qml.expval(qml.PauliZ(w)) for w in wires]

    return circuit


def pennylane_noisy_circuit(spec: CircuitSpec):
    """A quantum function written gate by gate from `gate_sequence`, each gate as drawn followed by ``spec``'s channels.

    A ``Rot`` is written as its RZ RY RZ, with the channels after the last of the three only.

    ``readout_error`` is a bit flip of every wire just before the measurement, which is what it is for a
    measurement in the computational basis.
    """
    import pennylane as qml

    if spec.device_noise is not None:
        raise QlitError(f"noise {spec.device_noise!r}, a device's calibration, runs on the qlit backend only")
    n = spec.n_qubits
    gates = gate_sequence(n, spec.n_layers, spec.ansatz, spec.embedding)
    channels = [(getattr(qml, CHANNELS[name]), p) for name, p in spec.gate_noise]

    def circuit(inputs, weights):
        sources = [inputs[..., w] for w in range(n)] + [weights.reshape(-1)[i] for i in range(weights.numel())]
        for gate in gates:
            if gate.name == "CNOT":
                qml.CNOT(wires=list(gate.wires))
            else:
                getattr(qml, gate.name)(sources[gate.source], wires=gate.wires[0])
            if not gate.noisy:
                continue
            for channel, p in channels:
                for wire in gate.wires:
                    channel(p, wires=wire)
        if spec.readout_error > 0:
            for wire in range(n):
                qml.BitFlip(spec.readout_error, wires=wire)
        return [qml.expval(qml.PauliZ(w)) for w in range(n)]

    return circuit
