"""Exact, batched statevector simulation of qlit's circuits in plain PyTorch.

The whole batch is simulated at once, on whatever device the tensors live. For the small circuits
qlit trains, a training step costs a few dozen tensor operations, so the number of operations, not
arithmetic, decides the speed. What the simulator exploits:

* the angle embedding acts on ``|0…0⟩``, so the embedded state is a product state. Its phases
  (``-i`` for RX) are constant, so they move into the first layer's gates and the state itself is
  real: ``⊗_w (cos x_w/2, sin x_w/2)``;
* the last CNOT layer only permutes basis states, so it moves into the ⟨Z⟩ readout (and, in the
  fused path below, every other CNOT layer into the columns of the next layer's matrix);
* the trainable layers do not depend on the sample. With few qubits they are multiplied into one
  ``2^n × 2^n`` unitary ``V`` and each sample costs one small real matmul. That path is one autograd
  function with a hand-written backward: the gradient of a gate angle with Pauli generator ``Q`` in
  layer ``l`` is ``½ Im Tr(Q P_l (∂L/∂V)^† V P_l^†)``, ``P_l`` being the circuit up to layer ``l``;
* with many qubits and few layers (two layers from about 12 qubits, three from about 16:
  `qlit.models.mps.plan`) the circuit is
  simulated as a matrix-product state (`qlit.models.mps`), whose cost grows as ``n²``, not ``2^n``;
* otherwise, with many qubits (7 and more, or 6 with a large batch), the gates are applied to the states
  instead (`qlit.models.wide`): the first layer still acts on the product state, and each later
  layer's rotations are applied three wires at a time as one Kronecker-product matrix, one large
  matrix product per group; states too large for the cache go through all the groups in cache-sized
  blocks, and their backward recomputes each block instead of keeping every intermediate state.

These paths need the sine and gradient tables of `qlit.models.gate_tables`, which exist for ``basic`` and
``strong``. Every other ansatz, and every circuit under gate noise or with finite shots, runs on the
general gate-by-gate path of `qlit.models.gates` (autograd, density matrices, sampling). Exact
expectations with readout error only stay on the fast paths: a bit flip with probability ``p`` scales
⟨Z⟩ by ``1 - 2p``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from qlit.models import gates as general
from qlit.models import mps, wide
from qlit.models.circuit import CircuitSpec, entangler_pairs, init_weights, weight_shape
from qlit.models.gate_tables import TABLE_ANSATZES, gate_tables

# The fused unitary costs O(4^n) memory and O(8^n) work per step whatever the batch. Measured on a
# 2-core CPU (forward + backward): it wins at every batch size up to 5 qubits, below ~1000 samples at
# 6 qubits, and never from 7 qubits on.
FUSED_MAX_QUBITS = 6
FUSED_MAX_BATCH_AT_MAX_QUBITS = 1024


def autocast_on(device_type: str) -> bool:
    """Whether autocast is active for ``device_type``."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def full_precision(device_type: str) -> contextlib.AbstractContextManager:
    """A context with autocast off for ``device_type``: circuits compute in float32 or wider.

    Amplitudes, and probabilities summed from their squares, lose about 1e-2 in bfloat16 or float16, and
    complex matmuls do not exist in those types.
    """
    return torch.autocast(device_type, enabled=False) if autocast_on(device_type) else contextlib.nullcontext()


def _bits(n_qubits: int) -> torch.Tensor:
    """``(2^n, n)`` matrix of basis-state bits; wire 0 is the most significant bit."""
    index = torch.arange(2**n_qubits)[:, None]
    return (index >> (n_qubits - 1 - torch.arange(n_qubits))) & 1


def _cnot_permutation(n_qubits: int, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """Index permutation ``p`` equal to the CNOTs in ``pairs`` applied in order: ``ψ'[k] = ψ[p[k]]``."""
    total = torch.arange(2**n_qubits)
    for control, target in pairs:
        total = total[general.cnot_index(n_qubits, control, target)]
    return total


def _z_signs(n_qubits: int) -> torch.Tensor:
    """``(2^n, n)`` matrix of PauliZ eigenvalues: entry ``[k, w]`` is ±1 for basis state k on wire w."""
    return 1.0 - 2.0 * _bits(n_qubits)


def _product_state(factors: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Kronecker product over wires of real ``(n, 2, B)`` one-qubit states: ``(2^n, B)``, wire 0 first.

    ``index`` (``(n·2^n,)`` rows of the flattened factors) gathers every factor at once, which is
    fewer operations; without it (large batches) `qlit.models.wide.product_state` builds it, with less memory.
    """
    if index is None:
        return wide.product_state(factors)
    n, _, batch = factors.shape
    return factors.reshape(2 * n, batch).index_select(0, index).reshape(n, -1, batch).prod(0)


class _FusedCircuit(torch.autograd.Function):
    """Embedding, every layer fused into one unitary ``V``, ⟨Z⟩ readout; the backward is written out.

    Forward: ``y = [Re V; Im V] @ amplitudes`` and ``⟨Z_w⟩ = Σ_k z[k, w] y_k²``. Backward: the
    gradient of ``V`` gives every gate angle's gradient through ``Im Tr(Q P (∂L/∂V)^† V P^†)``
    (``P``: the circuit up to the gate's layer, ``Q``: the gate's Pauli generator), read off with one
    matmul by ``trace_matrix``. Gradients inside skip the common factor 2 of ``∂y²/∂y``; the ``½`` of
    the angle gradients and of the embedding's derivative cancel it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weights: torch.Tensor, circuit: StatevectorCircuit) -> torch.Tensor:
        c = circuit._constants(x.dtype)
        n, dim = circuit.n_qubits, 2**circuit.n_qubits
        sines, gates = circuit._gates(weights, c)
        factors = gates.reshape(-1).index_select(0, c["kron_index"]).reshape(-1, n, dim, dim)  # one entry per wire
        layers = factors[:, 0]
        for wire in range(1, n):  # not .prod(): complex products are not implemented on every device
            layers = layers * factors[:, wire]
        prefix = [layers[0]]
        for layer in layers[1:]:
            prefix.append(layer @ prefix[-1])
        real_u = torch.view_as_real(prefix[-1]).permute(2, 0, 1).reshape(2 * dim, dim)  # [Re V; Im V]
        batch = x.shape[0]
        gather = c["product_index"] if batch * dim * n <= 2**18 else None
        amplitudes = _product_state(circuit._embedding_factors(x, c), gather)
        y = real_u @ amplitudes
        ctx.save_for_backward(amplitudes, y, real_u, torch.stack(prefix), sines)
        ctx.circuit = circuit
        return (c["readout"].T @ (y * y)).T

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        with full_precision(grad.device.type):  # for a backward called inside autocast
            return _FusedCircuit._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad: torch.Tensor):
        amplitudes, y, real_u, prefix, sines = ctx.saved_tensors
        circuit = ctx.circuit
        c = circuit._constants(y.dtype)
        dim = 2**circuit.n_qubits
        grad_y = (c["readout"] @ grad.T).mul_(y)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = circuit._embedding_grad(amplitudes, real_u.T @ grad_y, c)
        if ctx.needs_input_grad[1]:
            grad_real_u = grad_y @ amplitudes.T
            grad_u = torch.complex(grad_real_u[:dim], grad_real_u[dim:])
            sandwich = prefix @ (grad_u.mH @ prefix[-1]) @ prefix.mH  # P_l (∂L/∂V)^† V P_l^† per layer
            traces = torch.view_as_real(sandwich).reshape(prefix.shape[0], -1) @ c["trace_matrix"]
            if circuit.ansatz == "basic":
                grad_w = traces
            else:
                n_gates = sines.shape[0]
                coefficients = (sines[:, 8:] @ c["rot_grad"]).reshape(n_gates, 3, 3)
                grad_w = (coefficients @ traces.reshape(n_gates, 3, 1)).reshape(-1, circuit.n_qubits, 3)
        return grad_x, grad_w, None


class StatevectorCircuit(nn.Module):
    """Angle embedding, entangling layers and ⟨Z⟩ of every wire, simulated in PyTorch.

    Exact, unless ``spec.shots`` asks for sampled estimates; a statevector, unless ``spec.noise`` has gate
    channels, which need a density matrix.

    Args:
        spec: The circuit (`CircuitSpec`), or its fields: ``StatevectorCircuit(4, 2, "strong")``.

    Attributes:
        fused: ``None`` (default) lets `uses_fused` pick the cheaper path per batch; ``True`` or
            ``False`` forces the fused-unitary or the gate-by-gate path (the fused one only exists up
            to ``FUSED_MAX_QUBITS`` qubits, and only for the ansätze with tables).
        mps: Outside the fused path, ``None`` (default) lets `uses_mps` pick between the matrix-product state
            (`qlit.models.mps`) and the statevector layers (`qlit.models.wide`) per batch; ``True`` or
            ``False`` forces one (the MPS only where ``mps_bond`` is at most `qlit.models.mps.MAX_BOND`).
        general: ``True`` forces the general gate-by-gate path (`qlit.models.gates`) for any circuit; it is
            taken anyway for ansätze without tables, gate noise and shots.

    Shape:
        Input ``(..., n_qubits)`` angles; output ``(..., n_qubits)`` expectation values.
    """

    def __init__(self, *spec: Any, **fields: Any) -> None:
        super().__init__()
        spec = CircuitSpec.of(*spec, **fields)
        self.spec = spec
        n_qubits, n_layers, ansatz, embedding = spec.n_qubits, spec.n_layers, spec.ansatz, spec.embedding
        self.n_qubits = n_qubits
        self.n_layers = n_layers
        self.ansatz = ansatz
        self.embedding = embedding
        self.entanglers = entangler_pairs(n_qubits, n_layers, ansatz)
        self.mps_bond = mps.max_bond(n_qubits, self.entanglers)
        self.fused: bool | None = None
        self.mps: bool | None = None
        self.general = False
        self.weights = nn.Parameter(init_weights(torch.empty(weight_shape(n_qubits, n_layers, ansatz)), spec.init_std))
        self._cache: dict[tuple[torch.dtype, torch.device], dict[str, torch.Tensor]] = {}
        self.program = general.GateProgram(spec)
        if ansatz not in TABLE_ANSATZES:
            return

        for name, table in gate_tables(ansatz, embedding, n_layers).items():
            self._buffer(name, table)
        # Embedding factor of bit b: sin(scale·x + (1 - b)·π/2), i.e. (cos x/2, sin x/2). RZ leaves |0⟩
        # alone up to a global phase, so its factor is (1, 0) whatever the input (scale 0).
        self.embedding_scale = 0.0 if embedding == "Z" else 0.5
        self._buffer("embedding_turns", torch.tensor([[1], [0]]))
        if n_qubits <= FUSED_MAX_QUBITS:
            perms, z_signs = self._basis_tables()
            self._buffer("perms", perms)
            self._buffer("z_signs", z_signs)
            self._fused_tables(list(perms), _bits(n_qubits))

    def _basis_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The statevector's ``(n_layers, 2^n)`` CNOT permutations and ``(2^n, n)`` ⟨Z⟩ signs, read through the last.

        Tables of ``2^n`` rows (96 MiB and 2 s at 20 qubits), so wide circuits build them only when a batch takes
        the statevector path rather than the MPS one.
        """
        perms = torch.stack([_cnot_permutation(self.n_qubits, p) for p in self.entanglers])
        # The last CNOT layer permutes the basis: read ⟨Z⟩ through its inverse instead.
        return perms, _z_signs(self.n_qubits)[torch.argsort(perms[-1])]

    def _buffer(self, name: str, value: torch.Tensor) -> None:
        # Derived constants, rebuilt by __init__: they move with .to() but stay out of the state dict.
        self.register_buffer(name, value, persistent=False)

    def _fused_tables(self, perms: list[torch.Tensor], bits: torch.Tensor) -> None:
        n, dim = self.n_qubits, 2**self.n_qubits
        wires = torch.arange(n)
        # layers[l, i, j] = prod_w gates[l, w, bit_w(i), bit_w(j')], where j' = p_{l-1}^{-1}[j] puts the
        # previous CNOT layer into the columns (the first layer has none).
        columns = [torch.arange(dim)] + [torch.argsort(p) for p in perms[:-1]]
        index = [
            ((layer * n + wires[:, None, None]) * 2 + bits.T[:, :, None]) * 2 + bits[cols].T[:, None, :]
            for layer, cols in enumerate(columns)
        ]
        self._buffer("kron_index", torch.stack(index).reshape(-1))
        self._buffer("product_index", (2 * wires[:, None] + bits.T).reshape(-1))
        self._buffer("readout", self.z_signs.repeat(2, 1))
        # ∂/∂x_w of the product state flips bit w of the basis index, with sign -1 where the bit is 0.
        flip = torch.arange(dim)[None, :] ^ (1 << (n - 1 - wires))[:, None]
        sign = 2.0 * bits.T - 1.0
        self._buffer("flip_index", flip.reshape(-1))
        self._buffer("flip_signs", sign[:, None, :])
        # Im Tr(Q_w N) as a matmul over view_as_real(N): X reads Im N[i^w, i], Y reads ±Re N[i^w, i]
        # (Y = [[0, -i], [i, 0]]), Z reads ±Im N[i, i].
        column = torch.arange(dim).expand(n, dim)
        reads = [((flip * dim + column) * 2 + 1, torch.ones(n, dim))]
        if self.ansatz == "strong":
            reads += [((flip * dim + column) * 2, sign), ((column * dim + column) * 2 + 1, -sign)]
        trace_matrix = torch.zeros(2 * dim * dim, n, len(reads))
        for q, (rows, signs) in enumerate(reads):
            trace_matrix[rows, wires[:, None].expand(n, dim), q] = signs
        self._buffer("trace_matrix", trace_matrix.reshape(2 * dim * dim, -1))

    def _constants(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Buffers in the compute dtype (indices as they are), built once per dtype and device.

        The key holds the device, so after a move (``.to``, ``.cuda``) the constants are rebuilt from the moved
        buffers, and copies on the device left behind are dropped. The buffers themselves hold only integers
        and small dyadic values, exact in every float dtype, so a cast needs no rebuild of its own.
        """
        device = self.weights.device
        key = (dtype, device)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[1] == device}
            constants = {}
            for name, buffer in self.named_buffers(recurse=False):
                constants[name] = buffer.to(dtype) if buffer.is_floating_point() else buffer
            # Quarter turns are stored as integers so that π/2 is exact in any dtype.
            constants["angle_offsets"] = self.angle_turns.to(dtype) * (math.pi / 2)
            constants["embedding_offsets"] = self.embedding_turns.to(dtype) * (math.pi / 2)
            self._cache[key] = constants
        return self._cache[key]

    def uses_general(self) -> bool:
        """Whether the circuit runs on the general gate-by-gate path (see ``general``)."""
        spec = self.spec
        return self.general or spec.ansatz not in TABLE_ANSATZES or spec.needs_density_matrix or spec.shots is not None

    def uses_fused(self, batch: int) -> bool:
        """Whether a batch of this size goes through the fused unitary (``self.fused`` overrides)."""
        if self.n_qubits > FUSED_MAX_QUBITS or self.uses_general():
            return False
        if self.fused is not None:
            return self.fused
        return self.n_qubits < FUSED_MAX_QUBITS or batch < FUSED_MAX_BATCH_AT_MAX_QUBITS

    def uses_mps(self, batch: int) -> bool:
        """Whether a batch of this size runs as a matrix-product state (`qlit.models.mps`; ``self.mps`` overrides).

        Automatic only beyond ``FUSED_MAX_QUBITS`` qubits, where `qlit.models.mps.plan` was measured; never for
        bonds beyond `qlit.models.mps.MAX_BOND` (three ``strong`` layers, four ``basic`` ones, or more).
        """
        if self.uses_general() or self.uses_fused(batch) or self.mps_bond > mps.MAX_BOND:
            return False
        if self.mps is not None:
            return self.mps
        return self.n_qubits > FUSED_MAX_QUBITS and mps.plan(self.n_qubits, self.n_layers, self.mps_bond, batch).use

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Expectation values in the inputs' and weights' promoted dtype, float32 at the least."""
        lead = inputs.shape[:-1]
        x = inputs.reshape(-1, self.n_qubits)
        dtype = torch.promote_types(torch.promote_types(x.dtype, self.weights.dtype), torch.float32)
        x, weights = x.to(dtype), self.weights.to(dtype)
        with full_precision(x.device.type):
            if self.uses_general():
                out = general.run(self.program, x, weights)
            else:
                if self.uses_fused(x.shape[0]):
                    out = _FusedCircuit.apply(x, weights, self)
                elif self.uses_mps(x.shape[0]):
                    out = self._apply_mps(x, weights, self._constants(dtype))
                else:
                    out = self._apply_gates(x, weights, self._constants(dtype))
                if self.spec.readout_error > 0:
                    out = out * (1 - 2 * self.spec.readout_error)
        return out.reshape(*lead, self.n_qubits)

    def _gates(self, weights: torch.Tensor, c: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sines of the angle table and complex ``(n_layers, n_qubits, 2, 2)`` gate matrices."""
        n_layers, n = weights.shape[:2]
        sines = torch.sin(torch.addmm(c["angle_offsets"], weights.reshape(n_layers * n, -1), c["angle_map"]))
        mix = c["mix"]
        parts = torch.bmm(sines[:, : mix.shape[1]].reshape(n_layers, n, -1), mix)
        return sines, torch.view_as_complex(parts.reshape(n_layers, n, 2, 2, 2))

    def _embedding_factors(self, x: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
        """Real one-qubit states ``(n, 2, B)`` of the embedding (its phases live in the first layer)."""
        return torch.sin(torch.add(c["embedding_offsets"], x.T.contiguous()[:, None, :], alpha=self.embedding_scale))

    def _embedding_grad(
        self, amplitudes: torch.Tensor, half_grad: torch.Tensor, c: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Input gradient ``(B, n)`` from half the gradient of the ``(2^n, B)`` product-state amplitudes."""
        batch = amplitudes.shape[1]
        if self.embedding_scale == 0.0:
            return amplitudes.new_zeros(batch, self.n_qubits)
        flipped = amplitudes.index_select(0, c["flip_index"]).reshape(self.n_qubits, -1, batch).mul_(half_grad)
        grad = (c["flip_signs"] @ flipped).reshape(self.n_qubits, batch).T
        return grad if self.embedding_scale == 0.5 else grad.mul(2 * self.embedding_scale)

    def _first_layer(
        self, x: torch.Tensor, weights: torch.Tensor, c: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The gates ``(n_layers, n, 2, 2)`` and the ``(n, 2, B)`` one-qubit states after the first layer."""
        gates = self._gates(weights, c)[1]
        return gates, gates[0] @ self._embedding_factors(x, c).to(gates.dtype)

    def _apply_gates(self, x: torch.Tensor, weights: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
        """Gate-layer path (ordinary autograd, `qlit.models.wide`): the first layer acts on the product state."""
        gates, factors = self._first_layer(x, weights, c)
        if "inverse_perms" not in c:  # built on first use: only this path needs them
            if "perms" not in c:
                perms, z_signs = self._basis_tables()
                c["perms"], c["z_signs"] = perms.to(x.device), z_signs.to(x.device, x.dtype)
            c["inverse_perms"] = torch.argsort(c["perms"], dim=1)
        return wide.run(gates, factors, c["perms"], c["inverse_perms"], c["z_signs"])

    def _apply_mps(self, x: torch.Tensor, weights: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
        """Matrix-product-state path (`qlit.models.mps`): the first layer acts on the product state."""
        gates, factors = self._first_layer(x, weights, c)
        if "mps_operators" not in c:  # built on first use: only this path needs them
            n, layers = self.n_qubits, self.entanglers
            c["mps_operators"] = [mps.layer_operator(n, pairs).to(x.device, gates.dtype) for pairs in layers[:-1]]
            c["mps_signs"] = mps.readout_signs(mps.z_strings(n, layers[-1])).to(x.device, x.dtype)
        return mps.run(gates, factors, c["mps_operators"], c["mps_signs"])
