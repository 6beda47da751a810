"""TensorBoard diagnostics of the quantum layer."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from qlit.models.drawing import draw_circuit
from qlit.models.quantum_layer import QuantumLayer


def _quantum_layer(pl_module: L.LightningModule) -> QuantumLayer | None:
    return next((m for m in pl_module.modules() if isinstance(m, QuantumLayer)), None)


class QuantumMonitor(L.Callback):
    """Draw the circuit at the start and the end of fit, and log its weights' gradient size per epoch.

    The drawings (TensorBoard text ``circuit/initial`` and ``circuit/trained``) show the angles the
    weights hold at that moment. Per epoch, the means over its optimiser steps of:

    * ``quantum_grad_norm``: the norm of the gradient of the circuit's weights;
    * ``quantum_grad_rms``: its root mean square entry (the norm over √(number of angles)), comparable
      between circuits of different sizes.

    Both follow one training run and shrink as it converges. Neither is the barren-plateau signal, which is
    the variance of each gradient entry over random initialisations: `qlit.evaluation.diagnostics` computes that.
    Models without a quantum layer (the classical twin) are left alone.
    """

    def __init__(self) -> None:
        self._layer: QuantumLayer | None = None
        self._norms: list[torch.Tensor] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._layer = _quantum_layer(pl_module)

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str, when: str) -> None:
        layer = self._layer
        if layer is None or not trainer.is_global_zero:
            return
        loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not loggers:
            return
        hp = pl_module.hparams
        drawing = draw_circuit(layer.n_qubits, hp.n_layers, hp.ansatz, hp.embedding, layer.weights)
        text = (
            f"The circuit's weights {when} (global step {trainer.global_step}). The first column, "
            f"R{hp.embedding}(0.00), is the angle embedding drawn at input 0: the pre-net sets it per sample.\n\n"
            + "    " + drawing.replace("\n", "\n    ")  # indented: TensorBoard renders it verbatim
        )
        for logger in loggers:
            logger.experiment.add_text(tag, text, global_step=trainer.global_step)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, "circuit/initial", "at the start of fit")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, "circuit/trained", "at the end of fit, after the last training step")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        layer = self._layer
        if layer is None or layer.weights.grad is None:
            return
        self._norms.append(layer.weights.grad.detach().norm())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._norms:
            return
        norms = torch.stack(self._norms)
        self._norms.clear()
        # DDP averages the gradients before the optimiser step, so every rank holds the same norms: nothing to
        # reduce, and a lazily synced value would be a collective that the rank-0 progress bar could reach first.
        pl_module.log("quantum_grad_norm", norms.mean())
        pl_module.log("quantum_grad_rms", norms.mean() / self._layer.weights.numel() ** 0.5)
