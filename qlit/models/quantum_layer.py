"""The quantum layer: one circuit, several simulators behind it.

``backend="qlit"`` is qlit's own batched statevector simulator (`StatevectorCircuit`); any other
name is a PennyLane device (``default.qubit``, ``lightning.qubit``, ``lightning.gpu`` or an installed
plugin) wrapped in a `pennylane.qnn.TorchLayer`. Every backend keeps its trainable angles in a
parameter called ``weights`` on ``self.circuit``, so a state dict trained on one backend loads into
another. ``backend="qiskit:<device>"`` runs a trained circuit on an IBM device or a fake stand-in, for evaluation
only (`qlit.models.qiskit_backend`, imported only then).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qlit.errors import QlitError
from qlit.models.circuit import CircuitSpec, init_weights, pennylane_circuit, pennylane_noisy_circuit, weight_shape
from qlit.models.statevector import StatevectorCircuit, autocast_on

FAST_BACKEND = "qlit"
# PennyLane devices that simulate mixed states, so can apply noise channels.
NOISE_DEVICES = ("default.mixed",)
# Differentiation methods that need the exact state, so cannot differentiate sampled expectations.
EXACT_ONLY_METHODS = ("backprop", "adjoint", "device")


def _pennylane_layer(spec: CircuitSpec) -> nn.Module:
    import pennylane as qml

    backend, diff_method = spec.backend, spec.diff_method
    if spec.noise and backend not in NOISE_DEVICES:
        raise QlitError(
            f"noise {dict(spec.noise)} needs a backend that simulates mixed states: 'qlit' or "
            f"{', '.join(repr(d) for d in NOISE_DEVICES)}, not {backend!r}"
        )
    if spec.shots is not None and diff_method in EXACT_ONLY_METHODS:
        raise QlitError(
            f"diff_method {diff_method!r} cannot differentiate sampled expectation values (shots={spec.shots}) "
            f"on {backend!r}: use --model.diff_method parameter-shift"
        )
    try:
        device = qml.device(backend, wires=spec.n_qubits)
    except Exception as err:  # PennyLane raises DeviceError, ImportError or others for unknown devices
        raise QlitError(f"cannot create PennyLane device {backend!r}: {str(err).splitlines()[0]}") from err
    if spec.noise:
        circuit = pennylane_noisy_circuit(spec)
    else:
        circuit = pennylane_circuit(spec.n_qubits, spec.ansatz, spec.embedding)
    try:
        qnode = qml.QNode(circuit, device, interface="torch", diff_method=diff_method)
    except Exception as err:  # PennyLane checks the method's name, and whether this device supports it, here
        raise QlitError(
            f"diff_method {diff_method!r} does not work with PennyLane device {backend!r}: {str(err).splitlines()[0]}"
        ) from err
    if spec.shots is not None:
        qnode = qml.set_shots(qnode, shots=spec.shots)  # the device's own shots= is deprecated in PennyLane 0.45
        # PennyLane's parameter-shift cannot differentiate a broadcast batch of inputs (NotImplementedError,
        # PennyLane #4462): run one tape per sample, as a device would.
        qnode = qml.transforms.broadcast_expand(qnode)
    shapes = {"weights": weight_shape(spec.n_qubits, spec.n_layers, spec.ansatz)}
    return qml.qnn.TorchLayer(qnode, shapes, init_method={"weights": lambda t: init_weights(t, spec.init_std)})


class QuantumLayer(nn.Module):
    """A variational circuit as a layer: ``n_qubits`` angles in, ``n_qubits`` ⟨Z⟩ values out.

    The whole batch goes through the circuit in one call. The circuit computes in float32 (float64 for
    float64 inputs) whatever autocast says. The output has the input's dtype, except under
    autocast, where it stays float32 like the output of autocast's own float32 operations (the next layer
    casts it down if autocast says so). Gradients are float32 too when the backward runs outside autocast, as
    Lightning runs it and PyTorch advises.

    Args:
        spec: The circuit (`CircuitSpec`), or its fields: ``QuantumLayer(4, 2, "strong", backend="qlit")``.
            ``backend="qlit"`` is qlit's own simulator; any other name a PennyLane device (noise needs
            ``default.mixed``; shots need a diff_method such as ``parameter-shift``).
    """

    def __init__(self, *spec: Any, **fields: Any) -> None:
        super().__init__()
        spec = CircuitSpec.of(*spec, **fields)
        spec.check_simulable()
        self.spec = spec
        self.n_qubits = spec.n_qubits
        self.backend = spec.backend
        if spec.backend == FAST_BACKEND:
            self.circuit = StatevectorCircuit(spec)
        elif spec.backend.startswith("qiskit:"):
            from qlit.models.qiskit_backend import HardwareCircuit  # imports Qiskit: only for this backend

            self.circuit = HardwareCircuit(spec)
        else:
            self.circuit = _pennylane_layer(spec)

    @property
    def weights(self) -> nn.Parameter:
        """The trainable circuit angles."""
        return self.circuit.weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if autocast_on(x.device.type):
            wide = torch.promote_types(x.dtype, torch.float32)
            with torch.autocast(x.device.type, enabled=False):
                return self.circuit(x.to(wide)).to(wide)
        return self.circuit(x).to(x.dtype)
