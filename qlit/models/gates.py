"""Gate-by-gate simulation of any circuit written as gates: pure or mixed states, exact or sampled readout.

This is the simulator's general path. Any ansatz that `qlit.models.circuit.gate_sequence` writes as
gates runs here with ordinary autograd, so a new ansatz needs no hand-derived tables (the fused path
in `qlit.models.statevector` keeps those for ``basic`` and ``strong``). It is also the path of the
hardware conditions:

* gate noise: the state is a density matrix ``(B, 2^n, 2^n)``; every gate as drawn (an embedding rotation,
  an RX, a whole ``Rot``, a CNOT: `qlit.models.circuit.Gate.noisy`) is followed by each channel on every wire
  it touches, each channel a constant 4×4 superoperator on one wire's (row, column) bits;
  When the inputs enter only through the first gates (``basic``, ``strong``) and the batch is larger
  than ``2^n``, the same numbers come from the Heisenberg picture instead (`GateProgram.shared_probabilities`):
  the ``2^n`` outcome projectors run backwards through the sample-independent rest of the circuit once per
  step, and each sample costs a dot product with its embedded product state;
* readout error: every measured bit flips with probability ``p``, a 2×2 confusion matrix per wire on
  the measured probabilities;
* noise per gate and wire (`qlit.models.calibration.NoiseSites`, a device's calibration): each gate's own
  channels on each of its wires, and an asymmetric confusion matrix per wire;
* shots: counts of the ``2^n`` outcomes are drawn from the exact multinomial distribution of ``shots``
  measurements of all wires at once, as a device measures them, so the estimates of different wires
  are correlated as on a device (independent binomials per wire would get every ⟨Z_w⟩ right but not
  their covariance, which the post-net's weighted sum feels). The multinomial is drawn as a binary
  tree of binomials, one per wire (first wire's bit, then the next one's given it, ...): ``n`` calls
  whatever the number of shots. Draws use torch's global generator, so they are fresh on every forward
  pass and reproducible from ``seed_everything``.

Gradients with shots come from the parameter-shift rule on sampled expectations: every gate angle
shifted by ±π/2 is a new circuit, sampled with its own shots, and ``∂⟨Z⟩/∂θ = (⟨Z⟩₊ - ⟨Z⟩₋)/2``. That
holds with the channels too, since they do not depend on the angles. The chain rule to inputs and
weights (an input used by several gates, as in ``reupload``) is autograd's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from qlit.models.calibration import noise_sites
from qlit.models.circuit import CircuitSpec, gate_sequence

# Kraus operators per channel, as functions of the probability p.
_I = [[1.0, 0.0], [0.0, 1.0]]
_X = [[0.0, 1.0], [1.0, 0.0]]
_Y = [[0.0, -1.0j], [1.0j, 0.0]]
_Z = [[1.0, 0.0], [0.0, -1.0]]


def kraus_operators(name: str, p: float) -> list[torch.Tensor]:
    """Kraus operators of a channel, with PennyLane's conventions (e.g. depolarizing: X, Y, Z each p/3)."""
    if name == "depolarizing":
        ops = [(1 - p, _I), (p / 3, _X), (p / 3, _Y), (p / 3, _Z)]
        return [math.sqrt(w) * torch.tensor(m, dtype=torch.complex128) for w, m in ops]
    if name in ("bit_flip", "phase_flip"):
        ops = [(1 - p, _I), (p, _X if name == "bit_flip" else _Z)]
        return [math.sqrt(w) * torch.tensor(m, dtype=torch.complex128) for w, m in ops]
    damped = torch.tensor([[1.0, 0.0], [0.0, math.sqrt(1 - p)]], dtype=torch.complex128)
    if name == "amplitude_damping":
        return [damped, torch.tensor([[0.0, math.sqrt(p)], [0.0, 0.0]], dtype=torch.complex128)]
    if name == "phase_damping":
        return [damped, torch.tensor([[0.0, 0.0], [0.0, math.sqrt(p)]], dtype=torch.complex128)]
    raise ValueError(f"unknown channel {name!r}")


def superoperator(channels: tuple[tuple[str, float], ...]) -> torch.Tensor | None:
    """The channels one after another as ``S[a, c, b, d]``: ``ρ'[a, c] = Σ S[a, c, b, d] ρ[b, d]`` on one wire."""
    if not channels:
        return None
    total = torch.eye(4, dtype=torch.complex128).reshape(2, 2, 2, 2)
    for name, p in channels:
        ops = kraus_operators(name, p)
        step = sum(torch.einsum("ab,cd->acbd", k, k.conj()) for k in ops)
        total = torch.einsum("acbd,bdef->acef", step, total)
    return total


def _rotations(name: str, angles: torch.Tensor) -> torch.Tensor:
    """``(B, 2, 2)`` complex matrices of RX, RY or RZ at ``angles`` ``(B,)``."""
    half = angles / 2
    c, s = torch.cos(half), torch.sin(half)
    zero = torch.zeros_like(c)
    if name == "RX":
        real, imag = torch.stack([c, zero, zero, c], -1), torch.stack([zero, -s, -s, zero], -1)
    elif name == "RY":
        real, imag = torch.stack([c, -s, s, c], -1), torch.stack([zero, zero, zero, zero], -1)
    else:
        real, imag = torch.stack([c, zero, zero, c], -1), torch.stack([-s, zero, zero, s], -1)
    return torch.complex(real, imag).reshape(-1, 2, 2)


def _rotation_step(matrix: torch.Tensor, channel: torch.Tensor | None) -> torch.Tensor:
    """``(B, 2, 2, 2, 2)`` superoperators of rotations ``(B, 2, 2)``, followed by ``channel`` unless it is ``None``.

    U ρ U† on one wire is (U ⊗ U*) on its (row, column) bits.
    """
    step = torch.einsum("bxy,bcd->bxcyd", matrix, matrix.conj()).reshape(-1, 2, 2, 2, 2)
    return step if channel is None else torch.einsum("acxy,bxyzw->baczw", channel, step)


def cnot_index(n_qubits: int, control: int, target: int, device: torch.device | None = None) -> torch.Tensor:
    """The basis-state permutation of one CNOT: ``ψ'[k] = ψ[index[k]]`` (wire 0 is the most significant bit)."""
    index = torch.arange(2**n_qubits, device=device)
    cbit, tbit = 1 << (n_qubits - 1 - control), 1 << (n_qubits - 1 - target)
    return torch.where(index & cbit != 0, index ^ tbit, index)


def _pair_index(index: torch.Tensor) -> torch.Tensor:
    """The flat ``(row, column)`` index of a permutation applied to both sides of a flattened matrix."""
    dim = index.shape[0]
    return (index[:, None] * dim + index[None, :]).reshape(-1)


class GateProgram:
    """A circuit's gates, ready to simulate a batch with one angle vector per sample.

    Args:
        spec: The circuit; its ``noise`` decides between a statevector and a density matrix.
    """

    def __init__(self, spec: CircuitSpec) -> None:
        self.spec = spec
        self.n = spec.n_qubits
        self.gates = gate_sequence(spec.n_qubits, spec.n_layers, spec.ansatz, spec.embedding)
        self.rotations = [g for g in self.gates if g.name != "CNOT"]
        # angles[:, j] is the j-th rotation's angle, read from cat([inputs, weights.flatten()]).
        self.sources = torch.tensor([g.source for g in self.rotations])
        self.sites = noise_sites(spec)
        # One superoperator per distinct set of channels, shared by the gates and wires that have it.
        distinct = {channels: superoperator(channels) for gate in self.sites.gates for channels in gate}
        self.channels = [tuple(distinct[channels] for channels in gate) for gate in self.sites.gates]
        self._cache: dict[tuple[torch.dtype, torch.device], dict[str, object]] = {}

    @property
    def n_angles(self) -> int:
        return len(self.rotations)

    def _constants(self, dtype: torch.dtype, device: torch.device) -> dict[str, object]:
        key = (dtype, device)
        if key not in self._cache:
            complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
            wires = torch.arange(self.n, device=device)
            bits = (torch.arange(2**self.n, device=device)[:, None] >> (self.n - 1 - wires)) & 1
            self._cache[key] = {
                "sources": self.sources.to(device),
                "cnots": {g.wires: cnot_index(self.n, *g.wires, device) for g in self.gates if g.name == "CNOT"},
                "cnot_pairs": {
                    g.wires: _pair_index(cnot_index(self.n, *g.wires, device)) for g in self.gates if g.name == "CNOT"
                },
                "channels": [
                    tuple(None if op is None else op.to(device=device, dtype=complex_dtype) for op in gate)
                    for gate in self.channels
                ],
                "z_signs": (1.0 - 2.0 * bits).to(dtype),
                "complex": complex_dtype,
                "paulis": torch.tensor([_I, _X, _Y, _Z], dtype=complex_dtype, device=device),
                # pauli_map[(i, j), P] = σ_P[i, j]: Σ Õ[i, j] σ_P[i, j] = Tr(O σ_P) for Õ = Oᵀ.
                "pauli_map": torch.tensor([_I, _X, _Y, _Z], dtype=complex_dtype, device=device).reshape(4, 4).T,
            }
        return self._cache[key]

    def angles(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``(B, n_angles)`` gate angles of a batch of inputs ``(B, n)`` (differentiable in both)."""
        values = torch.cat([x, weights.reshape(1, -1).expand(x.shape[0], -1)], 1)
        return values[:, self._constants(x.dtype, x.device)["sources"]]

    def probabilities(self, angles: torch.Tensor) -> torch.Tensor:
        """``(B, 2^n)`` measurement probabilities (readout error included) for ``(B, n_angles)`` angles."""
        c = self._constants(angles.dtype, angles.device)
        if self.sites.has_gate_noise:
            probs = self._density(angles, c)
        else:
            state = self._statevector(angles, c)
            probs = state.real.square() + state.imag.square()
        return self._read_out(probs)

    def _read_out(self, probs: torch.Tensor) -> torch.Tensor:
        """Readout error: a 2×2 confusion matrix per wire, reading 0 as 1 with ``P(1|0)`` and 1 as 0 with ``P(0|1)``."""
        batch = probs.shape[0]
        for wire, (flip0, flip1) in enumerate(self.sites.readout):
            view = probs.reshape(batch, 2**wire, 2, -1)
            zero, one = view[:, :, 0], view[:, :, 1]
            read = [(1 - flip0) * zero + flip1 * one, flip0 * zero + (1 - flip1) * one]
            probs = torch.stack(read, 2).reshape(batch, -1)
        return probs

    def expectations(self, probs: torch.Tensor) -> torch.Tensor:
        """⟨Z_w⟩ ``(B, n)`` of ``(B, 2^n)`` probabilities."""
        return probs @ self._constants(probs.dtype, probs.device)["z_signs"]

    def _statevector(self, angles: torch.Tensor, c: dict) -> torch.Tensor:
        batch, dim = angles.shape[0], 2**self.n
        state = torch.zeros(batch, dim, dtype=c["complex"], device=angles.device)
        state[:, 0] = 1.0
        j = 0
        for gate in self.gates:
            if gate.name == "CNOT":
                state = state[:, c["cnots"][gate.wires]]
                continue
            matrix = _rotations(gate.name, angles[:, j]).to(c["complex"])
            j += 1
            wire = gate.wires[0]
            view = state.reshape(batch, 2**wire, 2, -1)
            state = torch.einsum("bij,bljr->blir", matrix, view).reshape(batch, dim)
        return state

    def _density(self, angles: torch.Tensor, c: dict) -> torch.Tensor:
        """Gate noise: each rotation (and the channels after it, if any) as one per-sample 4×4 superoperator."""
        batch, dim = angles.shape[0], 2**self.n
        rho = torch.zeros(batch, dim * dim, dtype=c["complex"], device=angles.device)
        rho[:, 0] = 1.0
        j = 0
        for gate, channels in zip(self.gates, c["channels"]):
            if gate.name == "CNOT":
                rho = rho[:, c["cnot_pairs"][gate.wires]]  # the permutation on rows and columns at once
                for wire, channel in zip(gate.wires, channels):
                    if channel is not None:
                        rho = self._on_wire(rho, channel[None], wire)
                continue
            matrix = _rotations(gate.name, angles[:, j]).to(c["complex"])
            j += 1
            rho = self._on_wire(rho, _rotation_step(matrix, channels[0]), gate.wires[0])
        return torch.diagonal(rho.reshape(batch, dim, dim), dim1=1, dim2=2).real

    @property
    def embeds_first(self) -> bool:
        """Whether the inputs enter only through the first gates (one rotation per wire), as in basic and strong."""
        first = self.rotations[: self.n]
        later = self.rotations[self.n :]
        return all(g.source == w for w, g in enumerate(first)) and all(g.source >= self.n for g in later)

    def shared_probabilities(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """`probabilities` under gate noise for circuits that embed first, in the Heisenberg picture.

        After the embedding the circuit is one channel ``E``, the same for every sample, and each outcome
        probability is ``Tr(P_k E(ρ_x)) = Tr(E†(P_k) ρ_x)``: the ``2^n`` projectors ``P_k`` go backwards through
        the gates once per step (a batch of ``2^n`` instead of ``B``), and each sample costs one dot product
        with its embedded state, a product of one-qubit density matrices. Same numbers, a fraction of the work.
        """
        c = self._constants(x.dtype, x.device)
        batch, dim, channels = x.shape[0], 2**self.n, c["channels"]
        # Each wire's embedded state as its real Pauli vector (1, ⟨X⟩, ⟨Y⟩, ⟨Z⟩), and the product state as
        # their Kronecker product: real arithmetic on the batch side.
        paulis = c["paulis"]
        state = None
        for wire, gate in enumerate(self.gates[: self.n]):
            column = _rotations(gate.name, x[:, wire]).to(c["complex"])[:, :, 0]  # R(x)|0⟩
            factor = torch.einsum("zb,zd->zbd", column, column.conj())
            if channels[wire][0] is not None:
                factor = torch.einsum("acbd,zbd->zac", channels[wire][0], factor)
            vector = torch.einsum("zac,pca->zp", factor, paulis).real
            state = vector if state is None else (state[:, :, None] * vector[:, None, :]).reshape(batch, -1)
        # Rows: the projectors |k⟩⟨k|, flattened; propagated by Õ'[b, d] = Σ Õ[a, c] S[a, c, b, d].
        observables = torch.zeros(dim, dim * dim, dtype=c["complex"], device=x.device)
        observables[torch.arange(dim), torch.arange(dim) * (dim + 1)] = 1.0
        flat = weights.reshape(-1)
        for g in reversed(range(self.n, len(self.gates))):
            gate = self.gates[g]
            if gate.name == "CNOT":
                for wire, channel in zip(gate.wires, channels[g]):
                    if channel is not None:
                        observables = self._on_wire(observables, channel[None], wire, adjoint=True)
                observables = observables[:, c["cnot_pairs"][gate.wires]]
                continue
            matrix = _rotations(gate.name, flat[gate.source - self.n][None]).to(c["complex"])
            step = _rotation_step(matrix, channels[g][0])
            observables = self._on_wire(observables, step, gate.wires[0], adjoint=True)
        # Pauli coefficients Tr(O σ_P) of each propagated observable, wire by wire; ρ = 2^-n Σ_P v_P σ_P.
        coefficients = observables.reshape(dim, *[2] * (2 * self.n))
        order = [0] + [axis for w in range(self.n) for axis in (1 + w, 1 + self.n + w)]
        coefficients = coefficients.permute(order).reshape(dim, *[4] * self.n)
        for _ in range(self.n):
            coefficients = torch.tensordot(coefficients, c["pauli_map"], dims=([1], [0]))
        coefficients = coefficients.reshape(dim, -1).real
        return self._read_out(state @ coefficients.T / dim)

    def _on_wire(self, rho: torch.Tensor, superop: torch.Tensor, wire: int, adjoint: bool = False) -> torch.Tensor:
        """``ρ'[.., a, .., c, ..] = Σ S[a, c, b, d] ρ[.., b, .., d, ..]`` on ``wire``'s row and column bits.

        ``adjoint``: ``Õ'[.., b, .., d, ..] = Σ Õ[.., a, .., c, ..] S[a, c, b, d]`` (observables, transposed).
        """
        batch = rho.shape[0]
        left, right = 2**wire, 2 ** (self.n - 1 - wire)
        view = rho.reshape(batch, left, 2, right, left, 2, right)
        pattern = "zacbd,zlarmcs->zlbrmds" if adjoint else "zacbd,zlbrmds->zlarmcs"
        out = torch.einsum(pattern, superop.expand(batch, -1, -1, -1, -1), view)
        return out.reshape(batch, -1)


def sample_frequencies(probs: torch.Tensor, shots: int) -> torch.Tensor:
    """Observed frequencies of ``shots`` measurements per row of ``(B, 2^n)`` probabilities (exact multinomial).

    Drawn as a binary tree of binomials over the outcome's bits, most significant first: ``log2(2^n)``
    vectorised `torch.binomial` calls, whatever ``shots`` is.
    """
    batch, dim = probs.shape
    probs = probs.detach().clamp(min=0.0)
    levels = [probs]
    while levels[-1].shape[1] > 1:
        levels.append(levels[-1].reshape(batch, -1, 2).sum(-1))
    counts = torch.full((batch, 1), float(shots), dtype=probs.dtype, device=probs.device)
    for children in reversed(levels[:-1]):
        pairs = children.reshape(batch, -1, 2)
        total = pairs.sum(-1)
        first = torch.where(total > 0, pairs[..., 0] / total.clamp(min=torch.finfo(probs.dtype).tiny), 0.0)
        drawn = torch.binomial(counts, first.clamp(0.0, 1.0))
        counts = torch.stack([drawn, counts - drawn], -1).reshape(batch, -1)
    return counts / shots


class _ParameterShift(torch.autograd.Function):
    """Sampled ⟨Z⟩ of gate angles, with the parameter-shift rule on sampled shifted circuits as its backward."""

    @staticmethod
    def forward(ctx, angles: torch.Tensor, sampled: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        ctx.sampled = sampled
        ctx.save_for_backward(angles)
        return sampled(angles)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (angles,) = ctx.saved_tensors
        batch, n_angles = angles.shape
        shifts = torch.eye(n_angles, dtype=angles.dtype, device=angles.device) * (math.pi / 2)
        shifted = angles[None, None] + torch.stack([shifts, -shifts])[:, :, None, :]  # (2, P, B, P)
        with torch.no_grad():
            values = ctx.sampled(shifted.reshape(-1, n_angles)).reshape(2, n_angles, batch, -1)
        derivative = (values[0] - values[1]) / 2  # (P, B, n)
        return torch.einsum("pbn,bn->bp", derivative, grad), None


def run(program: GateProgram, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """⟨Z_w⟩ ``(B, n)`` of inputs ``(B, n)``: exact, or estimated from ``spec.shots`` samples."""
    spec = program.spec
    shared = spec.needs_density_matrix and program.embeds_first and x.shape[0] > 2**spec.n_qubits
    if shared and (spec.shots is None or spec.shot_gradient == "exact"):
        probs = program.shared_probabilities(x, weights)
        if spec.shots is None:
            return program.expectations(probs)
        exact = program.expectations(probs)
        return exact + (program.expectations(sample_frequencies(probs, spec.shots)) - exact).detach()
    angles = program.angles(x, weights)
    if spec.shots is None:
        return program.expectations(program.probabilities(angles))

    def sampled(a: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return program.expectations(sample_frequencies(program.probabilities(a), spec.shots))

    if spec.shot_gradient == "exact":
        # Simulation-only shortcut: the sampled value, with the gradient of the exact expectation under it.
        exact = program.expectations(program.probabilities(angles))
        return exact + (sampled(angles.detach()) - exact).detach()
    return _ParameterShift.apply(angles, sampled)
