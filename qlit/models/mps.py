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

Work and memory grow as ``n²`` (``n`` outputs read across ``n`` sites) instead of ``2^n``: with two layers
and a batch of 16, a 20-qubit training step took 5 ms where the statevector took 2.2 s. `plan` says when
this beats the statevector (`qlit.models.wide`); every operation is plain differentiable PyTorch, so
autograd and ``torch.func`` transforms work as they do on the statevector path.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

# Estimated training-step times on the 2-core CPU (one thread), fitted to both paths timed at 7 to 16
# qubits and batches of 1 to 1024 (within 1.5x, up to 2x at batch 1024, where both slow down alike):
# fixed costs of the operations per layer and wire, and work per sample. Only their comparison is used.
STATEVECTOR_MS = (0.45, 0.035, 1.7e-6)  # per layer; per layer and wire; per layer, wire and amplitude
MPS_MS = (0.6, 0.065, 3.1e-6)  # once; per wire; per wire, output and transfer-matrix entry
# The readout's transfer matrices hold bond^4 entries per site and sample: at bond 16 (three layers) they
# no longer fit in cache and the MPS lost to the statevector at 16 qubits (4.3 s against 0.12 s a step).
MAX_BOND = 4


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


def plan(n_qubits: int, layers: list[list[tuple[int, int]]], batch: int = 1) -> Plan:
    """Compare the MPS with the statevector for a training step of ``batch`` samples (`MPS_MS`, `STATEVECTOR_MS`).

    Circuits whose bonds would exceed `MAX_BOND` stay on the statevector.

    Args:
        n_qubits: Circuit width.
        layers: The (control, target) CNOT pairs of every layer (`qlit.models.circuit.entangler_pairs`).
        batch: Samples per step.
    """
    n_layers = len(layers)
    bond = max_bond(n_qubits, layers)
    fixed, per_wire, per_entry = MPS_MS
    mps = fixed + per_wire * n_qubits + per_entry * batch * n_qubits**2 * bond**4
    per_layer, per_layer_wire, per_amplitude = STATEVECTOR_MS
    statevector = n_layers * (per_layer + per_layer_wire * n_qubits + per_amplitude * batch * n_qubits * 2.0**n_qubits)
    return Plan(bond <= MAX_BOND and mps < statevector, mps, statevector)


def max_bond(n_qubits: int, layers: list[list[tuple[int, int]]]) -> int:
    """The widest bond the MPS of a circuit with CNOT layers ``layers`` holds (the last layer is never applied)."""
    return max(bond_dims(n_qubits, layers[:-1]), default=1)


def fits(n_qubits: int, layers: list[list[tuple[int, int]]]) -> bool:
    """Whether the circuit's bonds stay within `MAX_BOND`, so that the MPS readout fits in memory."""
    return max_bond(n_qubits, layers) <= MAX_BOND


# A site's transfer matrices sum ``A_s ⊗ conj(A_s)`` over its physical value ``s`` with these signs:
# row s, column 0 for the identity on the wire, column 1 for Z.
_SIGNS = ((1.0, 1.0), (1.0, -1.0))


def run(
    gates: torch.Tensor, factors: torch.Tensor, operators: list[torch.Tensor], strings: torch.Tensor
) -> torch.Tensor:
    """⟨Z⟩ of every wire ``(B, n)``, from the first layer's one-qubit states and the later layers' gates.

    The sites live in one tensor ``(n, B, left, 2, right)``, bonds padded with zeros (`layer_operator`), so
    each layer is two operations whatever the width. The readout builds every site's two transfer
    matrices (identity and Z) at once, then carries one row vector per output through the sites: two
    operations per site, a product and a choice between the two.

    Args:
        gates: ``(n_layers, n, 2, 2)`` complex gates; layer 0 is already folded into ``factors``.
        factors: ``(n, 2, B)`` complex one-qubit states after the embedding and the first layer.
        operators: `layer_operator` of every CNOT layer but the last, in the gates' dtype.
        strings: ``(n, n)`` bool Z products (`z_strings`) of the last CNOT layer.
    """
    n, _, batch = factors.shape
    sites = factors.transpose(1, 2)[:, :, None, :, None]  # (n, B, 1, 2, 1)
    for layer, operator in enumerate(operators, start=1):
        # The layer's rotations after the CNOT operator, on the physical indices of each site.
        operator = torch.einsum("nst,nabtu->nabsu", gates[layer], operator)
        _, _, left, _, right = sites.shape
        a, b = operator.shape[1:3]
        sites = torch.einsum("nabst,nxltr->nxlasrb", operator, sites).reshape(n, batch, left * a, 2, right * b)
    bond = sites.shape[2]
    signs = torch.tensor(_SIGNS, dtype=sites.dtype, device=sites.device)
    bras = sites.conj()[:, :, :, :, None, :] * signs[:, :, None]  # (n, B, l', s, z, r')
    # transfer[k][b, (l l'), z, (r r')]: site k from bond pair (l, l') to (r, r'), z = 0 identity, 1 Z.
    transfer = torch.einsum("kblsr,kbmszq->kblmzrq", sites, bras).reshape(n, batch, bond * bond, 2 * bond * bond)
    transfer = transfer.unbind(0)  # one backward for all sites, not a zero-filled gradient per site
    outputs = strings.shape[0]
    env = transfer[0][:, :1].reshape(batch, 2, -1).index_select(1, strings[:, 0].long())  # (B, outputs, l l')
    for w in range(1, n):
        both = torch.bmm(env, transfer[w]).reshape(batch, outputs, 2, -1)
        env = torch.where(strings[:, w, None], both[:, :, 1], both[:, :, 0])
    return env[:, :, 0].real
