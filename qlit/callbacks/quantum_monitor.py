"""TensorBoard diagnostics of the quantum layer."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from qlit.models.circuit import draw_circuit
from qlit.models.quantum_layer import QuantumLayer


def _quantum_layer(pl_module: L.LightningModule) -> QuantumLayer | None:
    return next((m for m in pl_module.modules() if isinstance(m, QuantumLayer)), None)


class QuantumMonitor(L.Callback):
    """Log the circuit drawing once, and per epoch the gradient norm and variance of its weights.

    A gradient variance that collapses towards zero as qubits or layers are added is the signature
    of a barren plateau; ``quantum_grad_norm`` and ``quantum_grad_var`` (means over the epoch's
    optimiser steps) make it visible next to the loss curves. Models without a quantum layer (the
    classical twin) are left alone.
    """

    def __init__(self) -> None:
        self._layer: QuantumLayer | None = None
        self._norms: list[torch.Tensor] = []
        self._vars: list[torch.Tensor] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._layer = _quantum_layer(pl_module)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        layer = self._layer
        if layer is None or not trainer.is_global_zero:
            return
        hp = pl_module.hparams
        drawing = draw_circuit(layer.n_qubits, hp.n_layers, hp.ansatz, hp.embedding, layer.weights)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                text = "    " + drawing.replace("\n", "\n    ")  # indented: TensorBoard renders it verbatim
                logger.experiment.add_text("circuit", text, global_step=trainer.global_step)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        layer = self._layer
        if layer is None or layer.weights.grad is None:
            return
        grad = layer.weights.grad.detach()
        self._norms.append(grad.norm())
        self._vars.append(grad.var(unbiased=False))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._norms:
            return
        pl_module.log("quantum_grad_norm", torch.stack(self._norms).mean(), sync_dist=True)
        pl_module.log("quantum_grad_var", torch.stack(self._vars).mean(), sync_dist=True)
        self._norms.clear()
        self._vars.clear()
