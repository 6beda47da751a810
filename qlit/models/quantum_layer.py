"""The quantum layer: one circuit, several simulators behind it.

``backend="qlit"`` is qlit's own batched statevector simulator (`StatevectorCircuit`); any other
name is a PennyLane device (``default.qubit``, ``lightning.qubit``, ``lightning.gpu`` or an installed
plugin) wrapped in a `pennylane.qnn.TorchLayer`. Every backend keeps its trainable angles in a
parameter called ``weights`` on ``self.circuit``, so a state dict trained on one backend loads into
another.
"""

from __future__ import annotations

import torch
from torch import nn

from qlit.errors import QlitError
from qlit.models.circuit import check_circuit, init_weights, pennylane_circuit, weight_shape
from qlit.models.statevector import StatevectorCircuit, autocast_on

FAST_BACKEND = "qlit"


def _pennylane_layer(
    n_qubits: int, n_layers: int, ansatz: str, embedding: str, backend: str, diff_method: str
) -> nn.Module:
    import pennylane as qml

    try:
        device = qml.device(backend, wires=n_qubits)
    except Exception as err:  # PennyLane raises DeviceError, ImportError or others for unknown devices
        raise QlitError(f"cannot create PennyLane device {backend!r}: {str(err).splitlines()[0]}") from err
    circuit = pennylane_circuit(n_qubits, ansatz, embedding)
    try:
        qnode = qml.QNode(circuit, device, interface="torch", diff_method=diff_method)
    except Exception as err:  # PennyLane checks the method's name, and whether this device supports it, here
        raise QlitError(
            f"diff_method {diff_method!r} does not work with PennyLane device {backend!r}: {str(err).splitlines()[0]}"
        ) from err
    shapes = {"weights": weight_shape(n_qubits, n_layers, ansatz)}
    return qml.qnn.TorchLayer(qnode, shapes, init_method={"weights": init_weights})


class QuantumLayer(nn.Module):
    """A variational circuit as a layer: ``n_qubits`` angles in, ``n_qubits`` ⟨Z⟩ values out.

    The whole batch goes through the circuit in one call. The circuit computes in float32 (float64 for
    float64 inputs) whatever autocast says. The output has the input's dtype, except under
    autocast, where it stays float32 like the output of autocast's own float32 operations (the next layer
    casts it down if autocast says so). Gradients are float32 too when the backward runs outside autocast, as
    Lightning runs it and PyTorch advises.

    Args:
        n_qubits: Number of wires, equal to the number of input features.
        n_layers: Number of trainable entangling layers.
        ansatz: ``"basic"`` (BasicEntanglerLayers) or ``"strong"`` (StronglyEntanglingLayers).
        embedding: Angle-embedding rotation, ``"X"``, ``"Y"`` or ``"Z"``.
        backend: ``"qlit"`` (the default) for the built-in statevector simulator, or a PennyLane device name.
        diff_method: PennyLane differentiation method (``"backprop"``, ``"adjoint"``,
            ``"parameter-shift"``, ``"best"``); ignored by the ``qlit`` backend, whose gradients are exact.
    """

    def __init__(
        self,
        n_qubits: int = 4,
        n_layers: int = 2,
        ansatz: str = "basic",
        embedding: str = "X",
        backend: str = "qlit",
        diff_method: str = "backprop",
    ) -> None:
        super().__init__()
        check_circuit(n_qubits, n_layers, ansatz, embedding)
        self.n_qubits = n_qubits
        self.backend = backend
        if backend == FAST_BACKEND:
            self.circuit = StatevectorCircuit(n_qubits, n_layers, ansatz, embedding)
        else:
            self.circuit = _pennylane_layer(n_qubits, n_layers, ansatz, embedding, backend, diff_method)

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
