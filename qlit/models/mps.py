"""Exact matrix-product-state simulation of wide circuits with few entangling layers.

The embedded state is a product state, an MPS whose bonds all have dimension 1. A CNOT is a sum of
two products, ``|0⟩⟨0| ⊗ 1 + |1⟩⟨1| ⊗ X``, so it acts on an MPS as a matrix-product operator of bond
dimension 2 on every cut between its wires: applied exactly, it doubles those bonds and nothing else,
with no decomposition (no SVD, whose gradients break down at degenerate singular values). A layer's
CNOTs multiply into one operator per site, and the next layer's rotations into the same operator.
The last CNOT layer is never applied: conjugated through it, each ``Z_w`` becomes a product of Z's,
which the readout measures instead. So a circuit of ``L`` layers holds bonds of ``2^c`` where ``c``
counts the crossings of a cut by the first ``L - 1`` CNOT layers: 4 for two ``basic`` or ``strong``
layers (a ring crosses every cut twice), 16 for three ``basic`` layers, whatever the number of qubits.

Work grows as ``n² · bond³`` (``n`` outputs read across ``n`` sites) instead of ``n · 2^n``, and memory
stays small: with two layers and a batch of 16, a 20-qubit training step took about 6 ms where the
statevector took 2.2 s. `plan` says when this beats the statevector (`qlit.models.wide`); every operation
is plain differentiable PyTorch, so autograd and ``torch.func`` transforms work as they do on the
statevector path.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from qlit.models import wide

# Estimated training-step times (ms) on the 2-core CPU, one thread, fitted to both paths timed at 7 to 16
# qubits, two and three layers, batches of 1 to 1024 (where the fit chose the slower path, it was slower
# by 1.22x at most). Only their comparison is used.
# MPS: once; per wire; per sample, wire and output times bond^3 and times bond (the readout's products).
MPS_MS = (0.6, 0.11, 4.3e-6, 5.9e-5)
# Statevector: per layer; per layer and wire; per layer, wire and amplitude, in cache and beyond it.
STATEVECTOR_MS = (0.45, 0.035, 2.2e-6, 3.5e-6)
# Bonds measured: 4 (two layers) and 16 (three). Wider bonds (three strong layers: 64) stay on the statevector.
MAX_BOND = 16


def _cuts(control: int, target: int) -> range:
    """Cuts a two-wire gate crosses: cut ``k`` lies between wires ``k`` and ``k + 1``."""
    return range(min(control, target), max(control, target))


def z_strings(n_qubits: int, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """``(n, n)`` bool: row ``w`` marks the wires of the Z product that ``Z_w`` becomes through the CNOTs ``pairs``.

    ``⟨ψ| C† Z_w C |ψ⟩`` is ``⟨Z_w⟩`` after the CNOTs ``C``; conjugating by a CNOT turns ``Z_target`` into
    ``Z_control Z_target`` and leaves ``Z_control`` alone, so the gates are taken last first.
    """
    strings = torch.eye(n_qubits, dtype=torch.bool)
    for control, target in reversed(pairs):
        strings[:, control] ^= strings[:, target]
    return strings


def bond_dims(n_qubits: int, layers: list[list[tuple[int, int]]]) -> list[int]:
    """Bond dimension of every cut (``n - 1`` of them) after the CNOT layers ``layers``."""
    bonds = [1] * (n_qubits - 1)
    for pairs in layers:
        for control, target in pairs:
            for cut in _cuts(control, target):
                bonds[cut] *= 2
    return bonds


def layer_operator(n_qubits: int, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """One CNOT layer as a matrix-product operator: 0/1 site tensors ``(n, D, D, 2, 2)`` (left, right, out, in).

    Each gate crossing a cut adds one bit to that cut's bond (gates in order, the first the most
    significant). The bit is the control's value: the control site projects onto it, the target site
    applies ``X`` to that power, sites in between pass it on; a site's operator is the product of its
    gates' parts in the layer's order. Every bond is padded with zeros to the widest, ``D``, so that all
    sites share one shape: the first site uses only left index 0, the last only right index 0.
    """
    crossing = [[g for g, pair in enumerate(pairs) if cut in _cuts(*pair)] for cut in range(n_qubits - 1)]
    width = 2 ** max((len(c) for c in crossing), default=0)
    tensor = torch.zeros(n_qubits, width, width, 2, 2)
    for site in range(n_qubits):
        left = crossing[site - 1] if site > 0 else []
        right = crossing[site] if site < n_qubits - 1 else []
        gates = sorted(set(left) | set(right))
        for bits in itertools.product((0, 1), repeat=len(gates)):
            value = dict(zip(gates, bits))
            operator = torch.eye(2)
            for g in gates:
                control, target = pairs[g]
                if site == control:
                    part = torch.diag(torch.tensor([1.0 - value[g], float(value[g])]))
                elif site == target:
                    part = torch.tensor([[1.0 - value[g], float(value[g])], [float(value[g]), 1.0 - value[g]]])
                else:
                    continue
                operator = part @ operator
            row = sum(value[g] << (len(left) - 1 - i) for i, g in enumerate(left))
            column = sum(value[g] << (len(right) - 1 - i) for i, g in enumerate(right))
            tensor[site, row, column] = operator
    return tensor


@dataclass(frozen=True)
class Plan:
    """Whether a circuit runs as an MPS, with the estimated step time of each path (ms on the reference CPU)."""

    use: bool
    mps_ms: float
    statevector_ms: float


def plan(n_qubits: int, n_layers: int, bond: int, batch: int = 1) -> Plan:
    """Compare the MPS with the statevector for a training step of ``batch`` samples (`MPS_MS`, `STATEVECTOR_MS`).

    Circuits whose bonds would exceed `MAX_BOND` stay on the statevector.

    Args:
        n_qubits: Circuit width.
        n_layers: Number of entangling layers.
        bond: The circuit's widest bond (`max_bond`).
        batch: Samples per step.
    """
    fixed, per_wire, per_cube, per_bond = MPS_MS
    mps = fixed + per_wire * n_qubits + batch * n_qubits**2 * (per_cube * bond**3 + per_bond * bond)
    per_layer, per_layer_wire, in_cache, beyond = STATEVECTOR_MS
    amplitudes = batch * 2.0**n_qubits
    per_amplitude = in_cache if amplitudes < wide.BLOCKED_MIN_AMPLITUDES else beyond
    statevector = n_layers * (per_layer + per_layer_wire * n_qubits + per_amplitude * n_qubits * amplitudes)
    return Plan(bond <= MAX_BOND and mps < statevector, mps, statevector)


def max_bond(n_qubits: int, layers: list[list[tuple[int, int]]]) -> int:
    """The widest bond the MPS of a circuit with CNOT layers ``layers`` holds (the last layer is never applied)."""
    return max(bond_dims(n_qubits, layers[:-1]), default=1)


def run(
    gates: torch.Tensor, factors: torch.Tensor, operators: list[torch.Tensor], signs: torch.Tensor
) -> torch.Tensor:
    """⟨Z⟩ of every wire ``(B, n)``, from the first layer's one-qubit states and the later layers' gates.

    The sites live in one tensor ``(n, B, left, 2, right)``, bonds padded with zeros (`layer_operator`), so
    each layer is two operations whatever the width. The readout carries one left environment per output
    (its Z product so far, between the state and its conjugate) through the sites: two batched matrix
    products per site.

    Args:
        gates: ``(n_layers, n, 2, 2)`` complex gates; layer 0 is already folded into ``factors``.
        factors: ``(n, 2, B)`` complex one-qubit states after the embedding and the first layer.
        operators: `layer_operator` of every CNOT layer but the last, in the gates' dtype.
        signs: `readout_signs` of the last CNOT layer, in the real dtype.
    """
    n, _, batch = factors.shape
    sites = factors.transpose(1, 2)[:, :, None, :, None]  # (n, B, 1, 2, 1)
    for layer, operator in enumerate(operators, start=1):
        # The layer's rotations after the CNOT operator, on the physical indices of each site.
        operator = torch.einsum("nst,nabtu->nabsu", gates[layer], operator)
        _, _, left, _, right = sites.shape
        a, b = operator.shape[1:3]
        sites = torch.einsum("nabst,nxltr->nxlasrb", operator, sites).reshape(n, batch, left * a, 2, right * b)
    # einsum may return a permuted view, and bmm over strided batches falls back to one product per sample.
    sites = sites.contiguous().unbind(0)
    outputs, bond = signs.shape[1], sites[0].shape[-1]

    def close(kets: torch.Tensor, site: torch.Tensor) -> torch.Tensor:
        # env[b, r', o, r]: Σ over (l', s) of the conjugate site times kets[b, l', o, s, r].
        lefts = site.shape[1]
        bras = site.conj().reshape(batch, lefts * 2, bond).transpose(1, 2)
        return torch.bmm(bras, kets.transpose(2, 3).reshape(batch, lefts * 2, -1)).reshape(batch, bond, outputs, bond)

    # The first site's environment is the left boundary, bond index 0 on both sides.
    env = close(sites[0][:, :1, None] * signs[0][:, :, None], sites[0][:, :1])
    for w in range(1, n):
        kets = torch.bmm(env.reshape(batch, -1, bond), sites[w].reshape(batch, bond, -1))
        env = close(kets.reshape(batch, bond, outputs, 2, bond) * signs[w][:, :, None], sites[w])
    return env[:, 0, :, 0].real


def readout_signs(strings: torch.Tensor) -> torch.Tensor:
    """``(n, outputs, 2)``: the sign each output's Z product (`z_strings`) gives basis value 0 and 1 of each site."""
    flips = strings.T.to(torch.float32)
    return torch.stack([torch.ones_like(flips), 1.0 - 2.0 * flips], dim=-1)
