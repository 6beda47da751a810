"""Exact, batched statevector simulation of qlit's circuits in plain PyTorch.

The whole batch is simulated in one pass and differentiated by autograd, on whatever device the
tensors live. Two facts make it fast for the small circuits qlit trains:

* the angle embedding acts on ``|0…0⟩``, so the embedded state is a product state, built with
  ``n`` outer products instead of ``n`` gate applications;
* the trainable layers do not depend on the sample, so when the batch is at least as large as the
  Hilbert space they are fused into one ``2^n × 2^n`` unitary, applied with a single matmul.
  Otherwise (many qubits, small batch) the gates are applied to the batch of states directly.
"""

from __future__ import annotations

import torch
from torch import nn

from qlit.models.circuit import entangler_pairs, init_weights, weight_shape


def _rotation(axis: str, angle: torch.Tensor) -> torch.Tensor:
    """2×2 matrices of RX, RY or RZ for a tensor of angles: shape ``angle.shape + (2, 2)``."""
    c = torch.cos(angle / 2).to(_complex(angle.dtype))
    s = torch.sin(angle / 2).to(_complex(angle.dtype))
    if axis == "X":
        rows = [torch.stack([c, -1j * s], -1), torch.stack([-1j * s, c], -1)]
    elif axis == "Y":
        rows = [torch.stack([c, -s], -1), torch.stack([s, c], -1)]
    else:
        zero = torch.zeros_like(c)
        rows = [torch.stack([c - 1j * s, zero], -1), torch.stack([zero, c + 1j * s], -1)]
    return torch.stack(rows, -2)


def _rot(phi: torch.Tensor, theta: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """PennyLane's ``Rot(φ, θ, ω) = RZ(ω) RY(θ) RZ(φ)`` as 2×2 matrices."""
    return _rotation("Z", omega) @ _rotation("Y", theta) @ _rotation("Z", phi)


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _cnot_permutation(n_qubits: int, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """One index permutation equal to applying the CNOTs in ``pairs`` in order (wire 0 is the MSB)."""
    index = torch.arange(2**n_qubits)
    total = index.clone()
    for control, target in pairs:
        cbit, tbit = 1 << (n_qubits - 1 - control), 1 << (n_qubits - 1 - target)
        step = torch.where(index & cbit != 0, index ^ tbit, index)
        total = total[step]
    return total


def _z_signs(n_qubits: int) -> torch.Tensor:
    """``(2^n, n)`` matrix of PauliZ eigenvalues: entry ``[k, w]`` is ±1 for basis state k on wire w."""
    index = torch.arange(2**n_qubits)[:, None]
    bits = (index >> (n_qubits - 1 - torch.arange(n_qubits))) & 1
    return 1.0 - 2.0 * bits


class StatevectorCircuit(nn.Module):
    """Angle embedding, entangling layers and ⟨Z⟩ of every wire, simulated exactly in PyTorch.

    Args:
        n_qubits: Number of wires (one input feature per wire).
        n_layers: Number of trainable entangling layers.
        ansatz: ``"basic"`` for BasicEntanglerLayers (RX weights), ``"strong"`` for
            StronglyEntanglingLayers (Rot weights).
        embedding: Rotation of the angle embedding: ``"X"``, ``"Y"`` or ``"Z"``.

    Shape:
        Input ``(..., n_qubits)`` angles; output ``(..., n_qubits)`` expectation values.
    """

    def __init__(self, n_qubits: int, n_layers: int, ansatz: str = "basic", embedding: str = "X") -> None:
        super().__init__()
        self.n_qubits = n_qubits
        self.ansatz = ansatz
        self.embedding = embedding
        self.weights = nn.Parameter(init_weights(torch.empty(weight_shape(n_qubits, n_layers, ansatz))))
        perms = [_cnot_permutation(n_qubits, pairs) for pairs in entangler_pairs(n_qubits, n_layers, ansatz)]
        self.register_buffer("perms", torch.stack(perms), persistent=False)
        self.register_buffer("z_signs", _z_signs(n_qubits), persistent=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        lead = inputs.shape[:-1]
        x = inputs.reshape(-1, self.n_qubits)
        dtype = torch.promote_types(x.dtype, self.weights.dtype)
        state = self._embed(x.to(dtype))
        if state.shape[0] >= state.shape[1]:
            dim = state.shape[1]
            identity = torch.eye(dim, dtype=state.dtype, device=state.device)
            state = state @ self._apply_layers(identity)
        else:
            state = self._apply_layers(state)
        probs = state.real.square() + state.imag.square()
        return (probs @ self.z_signs.to(probs.dtype)).reshape(*lead, self.n_qubits)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        # R(x)|0> is the first column of the rotation matrix.
        columns = _rotation(self.embedding, x)[..., 0]
        state = columns[:, 0]
        for wire in range(1, self.n_qubits):
            state = (state[:, :, None] * columns[:, None, wire]).reshape(x.shape[0], -1)
        return state

    def _apply_layers(self, states: torch.Tensor) -> torch.Tensor:
        """Apply every trainable layer to a batch of row states ``(B, 2^n)``."""
        weights = self.weights.to(states.real.dtype)
        if self.ansatz == "basic":
            gates = _rotation("X", weights)
        else:
            gates = _rot(weights[..., 0], weights[..., 1], weights[..., 2])
        batch, n = states.shape[0], self.n_qubits
        for layer in range(gates.shape[0]):
            for wire in range(n):
                view = states.reshape(batch, 2**wire, 2, 2 ** (n - 1 - wire))
                states = torch.einsum("ij,bljr->blir", gates[layer, wire], view).reshape(batch, -1)
            states = states[:, self.perms[layer]]
        return states
