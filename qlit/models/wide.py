"""Gate layers applied to batched statevectors, for circuits too wide for one fused unitary.

A layer's single-qubit gates act on disjoint wires, so a few neighbouring wires' gates multiply into
one small Kronecker-product matrix ``M`` (``2^g × 2^g``). Applying it to a state stored as
``(2^g, rest)`` with the group's wires leading is a single large matrix product, ``X^T M^T``, whose
result ``(rest, 2^g)`` has those wires trailing: each product moves the next group of wires to the
front at no cost, so no product needs a transposed copy of the state. After a whole layer the batch
axis has moved from last to first; the next layer runs the same products mirrored (``M X^T``,
groups taken from the last wire), which brings it back. CNOT layers are one index permutation
along the basis axis, wherever it sits.

The products use autograd, whose backward of ``X^T M^T`` keeps the operand's transposed layout, so it
adds no copies either. Two steps have backwards written out, as autograd's would cost several passes
over the state: the permutation (a gather by the inverse permutation, not a scatter-add) and the ⟨Z⟩
readout. Both generate their ``torch.func`` vmap rules, which the gradient diagnostics use.

States larger than the CPU's caches (`BLOCKED_MIN_AMPLITUDES`) take the blocked path instead: each
cache-sized block of the state goes through all of a layer's groups before the next block is read
(low wires in blocks of rows, then high wires in blocks of columns), and the backward keeps only each
layer's input, recomputing a block's products in cache to differentiate them. A training step then
keeps two states per layer, not one per group (at 20 qubits, batch 16 and 4 layers: 0.8 GiB instead of
2.7 GiB of peak memory above the tables).
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

# Wires per Kronecker group: a group of g wires costs 2^g multiply-adds per amplitude in one pass over the
# state. Forward and backward products at 16 qubits, batch 16, one CPU thread took 1.9 ms per wire with
# g = 3, 2.4-2.7 ms with g = 4 or 2 (twice the arithmetic, or more passes), 3.2 ms with g = 5.
GROUP_WIRES = 3
# Amplitudes per block of the blocked path: 2^17 complex64 amplitudes are 1 MiB, which stays in cache
# while the block goes through all the groups of its wires.
BLOCK_AMPLITUDES = 2**17
# CPU states (2^n × batch amplitudes) from this size on take the blocked path; smaller ones stay in the
# last-level cache anyway, where one product per group costs no more than the blocks' Python loop.
BLOCKED_MIN_AMPLITUDES = 2**21


class _Permute(torch.autograd.Function):
    """``state.index_select(dim, perm)``; its backward gathers by ``inverse``, the inverse permutation."""

    generate_vmap_rule = True

    @staticmethod
    def forward(state: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor, dim: int) -> torch.Tensor:
        return state.index_select(dim, perm)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.inverse, ctx.dim = inputs[2], inputs[3]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.index_select(ctx.dim, ctx.inverse), None, None, None


class _Readout(torch.autograd.Function):
    """``|state|²`` times ``z_signs`` along the basis axis (axis 0 when ``batch_last``): ``(B, n)`` ⟨Z⟩."""

    generate_vmap_rule = True

    @staticmethod
    def forward(state: torch.Tensor, z_signs: torch.Tensor, batch_last: bool) -> torch.Tensor:
        squares = torch.view_as_real(state).square()
        probs = squares[..., 0] + squares[..., 1]  # cheaper than a sum over the last axis of size 2
        return (z_signs.T @ probs).T if batch_last else probs @ z_signs

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        state, z_signs, ctx.batch_last = inputs
        ctx.save_for_backward(state, z_signs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        state, z_signs = ctx.saved_tensors
        # ∂|ψ|²/∂ψ̄ is ψ (torch's convention for a real loss), times 2 for the square.
        weights = z_signs @ grad.T if ctx.batch_last else grad @ z_signs.T
        return state * weights.mul_(2), None, None


def wire_groups(n_qubits: int, size: int = GROUP_WIRES) -> list[tuple[int, int]]:
    """Consecutive ``(first wire, number of wires)`` groups covering ``n_qubits`` wires, sizes as equal as can be."""
    count = math.ceil(n_qubits / size)
    base, extra = divmod(n_qubits, count)
    groups, start = [], 0
    for index in range(count):
        width = base + (index < extra)
        groups.append((start, width))
        start += width
    return groups


def kron(gates: torch.Tensor) -> torch.Tensor:
    """Kronecker product of ``(g, 2, 2)`` one-qubit gates, the first gate acting on the most significant bit."""
    matrix = gates[0]
    for gate in gates[1:]:
        size = 2 * matrix.shape[0]
        matrix = (matrix[:, None, :, None] * gate[None, :, None, :]).reshape(size, size)
    return matrix


def product_state(factors: torch.Tensor) -> torch.Tensor:
    """Kronecker product over wires of ``(n, 2, B)`` one-qubit states: ``(2^n, B)``, wire 0 most significant.

    The two halves of the wires are built first and multiplied once, so the full-size state is written
    (and, in the backward, read) once rather than once per wire.
    """
    n, _, batch = factors.shape

    def build(part: torch.Tensor) -> torch.Tensor:
        state = part[0]
        for factor in part[1:]:
            state = (state[:, None, :] * factor[None]).reshape(-1, batch)
        return state

    if n == 1:
        return factors[0]
    half = n // 2
    return (build(factors[:half])[:, None, :] * build(factors[half:])[None]).reshape(-1, batch)


def apply_layer(state: torch.Tensor, gates: torch.Tensor, batch_last: bool) -> torch.Tensor:
    """One layer of single-qubit gates ``(n, 2, 2)`` on a ``(2^n, B)`` (``batch_last``) or ``(B, 2^n)`` state.

    Returns the state in the other layout: ``(B, 2^n)`` after ``(2^n, B)`` and the other way round.
    """
    groups = wire_groups(gates.shape[0])
    batch = state.shape[1] if batch_last else state.shape[0]
    if batch_last:
        for start, width in groups:  # wires of the group leading: X^T M^T leaves them trailing
            matrix = kron(gates[start : start + width])
            state = state.reshape(matrix.shape[0], -1).T @ matrix.T
    else:
        for start, width in reversed(groups):  # the mirror image: trailing wires become leading
            matrix = kron(gates[start : start + width])
            state = matrix @ state.reshape(-1, matrix.shape[0]).T
    return state.reshape(batch, -1) if batch_last else state.reshape(-1, batch)


def _rotate(block: torch.Tensor, matrices: list[torch.Tensor]) -> torch.Tensor:
    """The groups' matrices applied to the leading axis of a ``(2^w, cols)`` block, same shape out."""
    cols = block.shape[1]
    for matrix in matrices:
        block = block.reshape(matrix.shape[0], -1).T @ matrix.T
    return block.reshape(cols, -1).T


def _blocks(shape: torch.Size) -> list[tuple[slice, slice]]:
    """Slices of the outer and inner axes of a ``(P, 2^w, Q)`` state, each about `BLOCK_AMPLITUDES`."""
    outer, rows, inner = shape
    width = min(inner, max(1, BLOCK_AMPLITUDES // rows))
    depth = max(1, BLOCK_AMPLITUDES // (rows * width))
    return [
        (slice(p, p + depth), slice(q, q + width)) for p in range(0, outer, depth) for q in range(0, inner, width)
    ]


class _BlockedGroups(torch.autograd.Function):
    """Group matrices on the middle axis of a ``(P, 2^w, Q)`` state, one cache-sized block at a time.

    Each block goes through every group while it is in cache, so the layer costs one pass over memory
    instead of one per group. Only the input is saved: the backward recomputes each block's products
    (in cache) and differentiates them there, which also keeps one state per layer step, not per group.
    """

    @staticmethod
    def forward(ctx, state: torch.Tensor, *matrices: torch.Tensor) -> torch.Tensor:
        rows = state.shape[1]
        out = torch.empty_like(state)
        for outer, inner in _blocks(state.shape):
            block = state[outer, :, inner]
            result = _rotate(block.transpose(0, 1).reshape(rows, -1), list(matrices))
            out[outer, :, inner] = result.reshape(rows, *block.shape[::2]).transpose(0, 1)
        ctx.save_for_backward(state, *matrices)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        state, *matrices = ctx.saved_tensors
        rows = state.shape[1]
        grad_state = torch.empty_like(state)
        grad_matrices = [torch.zeros_like(m) for m in matrices]
        with torch.enable_grad():
            leaves = [m.detach().requires_grad_() for m in matrices]
            for outer, inner in _blocks(state.shape):
                shape = state[outer, :, inner].shape
                block = state[outer, :, inner].transpose(0, 1).reshape(rows, -1).requires_grad_()
                grad_block = grad[outer, :, inner].transpose(0, 1).reshape(rows, -1)
                parts = torch.autograd.grad(_rotate(block, leaves), [block, *leaves], grad_block)
                grad_state[outer, :, inner] = parts[0].reshape(rows, shape[0], shape[2]).transpose(0, 1)
                for total, part in zip(grad_matrices, parts[1:]):
                    total += part
        return grad_state, *grad_matrices


def apply_layer_blocked(state: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """One layer of single-qubit gates ``(n, 2, 2)`` on a ``(2^n, B)`` state, in cache-sized blocks.

    The low wires go first, in blocks of whole rows; the high wires then in blocks of columns. Two
    passes over memory, whatever the number of groups.
    """
    n = gates.shape[0]
    batch = state.shape[1]
    low = min(n, max(1, (BLOCK_AMPLITUDES // batch).bit_length() - 1))
    high = n - low
    for first, count, shape in ((high, low, (2**high, 2**low, batch)), (0, high, (1, 2**high, 2**low * batch))):
        if count:
            matrices = [kron(gates[first + start : first + start + width]) for start, width in wire_groups(count)]
            state = _BlockedGroups.apply(state.reshape(shape), *matrices).reshape(-1, batch)
    return state


def run(
    gates: torch.Tensor, factors: torch.Tensor, perms: torch.Tensor, inverse_perms: torch.Tensor, z_signs: torch.Tensor
) -> torch.Tensor:
    """⟨Z⟩ of every wire ``(B, n)`` for the first layer's one-qubit states and the later layers' gates.

    Args:
        gates: ``(n_layers, n, 2, 2)`` complex gates; layer 0 is already folded into ``factors``.
        factors: ``(n, 2, B)`` complex one-qubit states after the embedding and the first layer.
        perms: ``(n_layers, 2^n)`` CNOT permutations; the last one is folded into ``z_signs``.
        inverse_perms: Their inverses, for the backward.
        z_signs: ``(2^n, n)`` ⟨Z⟩ signs of every basis state, read through the last CNOT layer.
    """
    state = product_state(factors)
    # On a GPU, many small blocks would cost more in kernel launches than the caches save; under torch.func
    # transforms (the gradient diagnostics' vmap) the blocked path's in-place block writes have no batching rule.
    blocked = (
        state.device.type == "cpu"
        and state.numel() >= BLOCKED_MIN_AMPLITUDES
        and not torch._C._functorch.is_functorch_wrapped_tensor(state)
    )
    batch_last = True
    for layer in range(1, gates.shape[0]):
        state = _Permute.apply(state, perms[layer - 1], inverse_perms[layer - 1], 0 if batch_last else 1)
        if blocked:
            state = apply_layer_blocked(state, gates[layer])
        else:
            state = apply_layer(state, gates[layer], batch_last)
            batch_last = not batch_last
    return _Readout.apply(state, z_signs, batch_last)
