"""Constant tables that turn a layer's weights into its gate matrices with a matmul, a sine and a matmul.

The fused and the layer-by-layer paths of `qlit.models.statevector` (and the MPS) build every gate of a
step this way, in three operations whatever the number of gates, for the ansätze listed here.
"""

from __future__ import annotations

import torch

# The ansätze with hand-derived tables for the fused and the table-driven gate paths.
TABLE_ANSATZES = ("basic", "strong")


def gate_tables(ansatz: str, embedding: str, n_layers: int) -> dict[str, torch.Tensor]:
    """Constants that turn weights into gate matrices with a matmul, a sine and a matmul.

    ``sines = sin(w @ angle_map + quarter_turns·π/2)``; ``sines[:, :A] @ mix[layer]`` are the real and
    imaginary parts of the gate's four entries. Products of cosines and sines are written as sums of
    sines (``cos a cos b = ½(cos(a+b) + cos(a-b))``), which keeps the map linear after the sine. The
    first layer's table also carries the embedding's constant phase,
    ``RX(x)|0⟩ = diag(1, -i)(cos x/2, sin x/2)``. For ``strong``, the remaining sines times ``rot_grad``
    give the 3×3 matrix that turns ``(Im Tr(X N), Im Tr(Y N), Im Tr(Z N))`` into the (φ, θ, ω) gradient.
    """
    tables: dict[str, torch.Tensor] = {}
    if ansatz == "basic":
        # RX(θ) = [[c, -is], [-is, c]] with (c, s) = sin(θ/2 + (π/2, 0)).
        angle_map = torch.tensor([[0.5, 0.5]])
        quarter_turns = torch.tensor([1, 0])
        mix = torch.zeros(2, 2, 2, 2)  # angle, row, column, (re, im)
        mix[0, 0, 0, 0] = mix[0, 1, 1, 0] = 1.0
        mix[1, 0, 1, 1] = mix[1, 1, 0, 1] = -1.0
    else:
        # Rot(φ, θ, ω) = [[e^{-ia} C, -e^{id} S], [e^{-id} S, e^{ia} C]] with a = (φ+ω)/2, d = (φ-ω)/2,
        # C = cos θ/2, S = sin θ/2: real and imaginary parts are ±cos(a)C, ±cos(d)S, ±sin(a)C, ±sin(d)S.
        phi, theta, omega = torch.eye(3)
        a, d, h = (phi + omega) / 2, (phi - omega) / 2, theta / 2
        gate_angles = [a + h, a - h, h + d, h - d, a + h, a - h, d - h, d + h]
        gate_turns = [1, 1, 0, 0, 0, 0, 1, 1]
        products = torch.zeros(8, 4)  # sines -> (cos a C, cos d S, sin a C, sin d S)
        products[[0, 1], 0] = products[[2, 3], 1] = products[[4, 5], 2] = 0.5
        products[6, 3], products[7, 3] = 0.5, -0.5
        entries = torch.zeros(4, 2, 2, 2)
        entries[0, 0, 0, 0] = entries[0, 1, 1, 0] = 1.0
        entries[1, 0, 1, 0], entries[1, 1, 0, 0] = -1.0, 1.0
        entries[2, 0, 0, 1], entries[2, 1, 1, 1] = -1.0, 1.0
        entries[3, 0, 1, 1] = entries[3, 1, 0, 1] = -1.0
        mix = torch.einsum("ap,prcz->arcz", products, entries)
        # Generators: ∂ω -> Z; ∂θ -> RZ(ω) Y RZ(ω)† = cos ω Y - sin ω X;
        # ∂φ -> Rot Z Rot† = cos θ Z + sin θ (cos ω X + sin ω Y).
        grad_angles = [theta + omega, theta - omega, theta - omega, theta + omega, theta, omega, omega, 0 * omega]
        grad_turns = [0, 0, 1, 1, 1, 0, 1, 1]
        rot_grad = torch.zeros(8, 3, 3)  # sine, gradient (φ, θ, ω), trace (X, Y, Z)
        rot_grad[[0, 1], 0, 0] = 0.5  # sin θ cos ω
        rot_grad[2, 0, 1], rot_grad[3, 0, 1] = 0.5, -0.5  # sin θ sin ω
        rot_grad[4, 0, 2] = 1.0  # cos θ
        rot_grad[5, 1, 0], rot_grad[6, 1, 1] = -1.0, 1.0  # -sin ω, cos ω
        rot_grad[7, 2, 2] = 1.0
        angle_map = torch.stack(gate_angles + grad_angles, 1)
        quarter_turns = torch.tensor(gate_turns + grad_turns)
        tables["rot_grad"] = rot_grad.reshape(8, 9)
    first = mix.clone()
    if embedding == "X":
        # Column 1 times -i: (re, im) -> (im, -re).
        first[:, :, 1, 0] = mix[:, :, 1, 1]
        first[:, :, 1, 1] = -mix[:, :, 1, 0]
    tables["angle_map"] = angle_map
    tables["angle_turns"] = quarter_turns
    tables["mix"] = torch.stack([first] + [mix] * (n_layers - 1)).reshape(n_layers, mix.shape[0], 8)
    return tables
