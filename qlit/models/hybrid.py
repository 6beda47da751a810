"""The hybrid network: classical pre-net, variational circuit, classical post-net."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from qlit.errors import QlitError
from qlit.models.circuit import CircuitSpec
from qlit.models.quantum_layer import QuantumLayer

Core = Literal["quantum", "classical"]


class HybridNet(nn.Module):
    """Classical pre-net → quantum layer → classical post-net, producing logits.

    The pre-net maps the features to one angle per qubit, squashed into ``(-π/2, π/2)`` so the
    embedding stays in a range where the rotation is one-to-one. With ``core="classical"`` the circuit
    is replaced by ``Linear(n_qubits, n_qubits)`` and ``tanh`` (its "classical twin"): same width,
    trained the same way, the baseline any quantum result should be read against.

    Args:
        in_features: Number of input features.
        num_classes: Number of classes; two give a single logit, more give one logit per class.
        spec: The circuit (`CircuitSpec`), or its fields by name: ``HybridNet(4, 2, n_qubits=4, ansatz="strong")``.
        core: ``"quantum"`` or ``"classical"`` (which ignores the circuit's backend, shots and noise).
    """

    def __init__(self, in_features: int, num_classes: int, *spec: Any, core: Core = "quantum", **fields: Any) -> None:
        super().__init__()
        if in_features < 1:
            raise QlitError(f"in_features must be >= 1, got {in_features!r}")
        if num_classes < 2:
            raise QlitError(f"num_classes must be >= 2, got {num_classes!r}")
        if core not in ("quantum", "classical"):
            raise QlitError(f"core must be 'quantum' or 'classical', got {core!r}")
        spec = CircuitSpec.of(*spec, **fields)
        self.spec = spec
        n_qubits = spec.n_qubits
        self.pre = nn.Linear(in_features, n_qubits)
        if core == "quantum":
            self.core: nn.Module = QuantumLayer(spec)
        else:
            self.core = nn.Sequential(nn.Linear(n_qubits, n_qubits), nn.Tanh())
        self.post = nn.Linear(n_qubits, 1 if num_classes == 2 else num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.tanh(self.pre(x)) * (math.pi / 2)
        return self.post(self.core(angles))
