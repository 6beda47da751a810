"""The LightningModule that trains a `HybridNet` as a classifier."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric

from qlit.errors import QlitError
from qlit.models.hybrid import Core, HybridNet

STAGES = ("train", "val", "test")


class LossAccuracy(Metric):
    """Mean loss and accuracy over an epoch, summed across processes under DDP.

    One metric for both numbers, updated with tensors the step has computed anyway: each update
    costs a few tensor additions, a fraction of the small networks' training step.

    Args:
        binary: Predictions are one logit per sample (positive means class 1) rather than one
            logit per class.
    """

    full_state_update = False

    def __init__(self, binary: bool) -> None:
        super().__init__()
        self.binary = binary
        self.add_state("loss_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        predicted = (logits > 0).long() if self.binary else logits.argmax(-1)
        self.loss_sum += loss.detach() * len(target)
        self.correct += (predicted == target).sum()
        self.count += len(target)

    def compute(self) -> dict[str, torch.Tensor]:
        count = self.count.clamp(min=1)
        return {"loss": self.loss_sum / count, "acc": self.correct / count}


class HybridClassifier(L.LightningModule):
    """Train a hybrid quantum–classical classifier.

    Two classes train one logit with binary cross-entropy; more classes train one logit per class
    with log-softmax and negative log-likelihood. Adam optimises every parameter, circuit angles
    included, and ReduceLROnPlateau lowers the learning rate when ``val_loss`` stalls.

    Args:
        in_features: Number of input features (linked from the data module by the CLI).
        num_classes: Number of classes (linked from the data module by the CLI).
        class_names: Label names, index-aligned with the classes (linked from the data module).
        n_qubits: Width of the quantum layer.
        n_layers: Number of entangling layers.
        ansatz: ``"basic"`` (BasicEntanglerLayers) or ``"strong"`` (StronglyEntanglingLayers).
        embedding: Angle-embedding rotation, ``"X"``, ``"Y"`` or ``"Z"``.
        backend: ``"qlit"`` (built-in batched statevector simulator) or a PennyLane device name.
        diff_method: PennyLane differentiation method.
        core: ``"quantum"``, or ``"classical"`` for the classical-twin baseline.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        lr_factor: Factor by which ReduceLROnPlateau multiplies the learning rate.
        lr_patience: Epochs without ``val_loss`` improvement before the learning rate drops.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        class_names: list[str] | None = None,
        n_qubits: int = 4,
        n_layers: int = 2,
        ansatz: str = "basic",
        embedding: str = "X",
        backend: str = "default.qubit",
        diff_method: str = "backprop",
        core: Core = "quantum",
        lr: float = 0.01,
        weight_decay: float = 0.0,
        lr_factor: float = 0.5,
        lr_patience: int = 5,
    ) -> None:
        super().__init__()
        if not 0 < lr < float("inf"):
            raise QlitError(f"lr must be a finite number > 0, got {lr!r}")
        if not weight_decay >= 0:
            raise QlitError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if isinstance(lr_patience, bool) or not isinstance(lr_patience, int) or lr_patience < 0:
            raise QlitError(f"lr_patience must be an integer >= 0, got {lr_patience!r}")
        if not 0 < lr_factor < 1:
            raise QlitError(f"lr_factor must be in (0, 1), got {lr_factor!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise QlitError(f"class_names has {len(class_names)} names for {num_classes} classes")
        self.save_hyperparameters()
        self.net = HybridNet(
            in_features, num_classes, n_qubits, n_layers, ansatz, embedding, backend, diff_method, core
        )
        self.binary = num_classes == 2
        # Metrics accumulate per step and are logged once per epoch: `self.log` on every step costs
        # more than a training step of these small networks.
        self.epoch_metrics = nn.ModuleDict({f"{stage}_metrics": LossAccuracy(self.binary) for stage in STAGES})

    @property
    def class_names(self) -> list[str]:
        """Label names, or ``"0"``, ``"1"``, … when none were given."""
        names = self.hparams.class_names
        return list(names) if names else [str(i) for i in range(self.hparams.num_classes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits: shape ``(B,)`` for two classes, ``(B, num_classes)`` otherwise."""
        logits = self.net(x)
        return logits.squeeze(-1) if self.binary else logits

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, one column per class, for a batch of preprocessed features."""
        logits = self(x)
        if self.binary:
            p = torch.sigmoid(logits)
            return torch.stack([1 - p, p], dim=-1)
        return torch.softmax(logits, dim=-1)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
        return F.nll_loss(F.log_softmax(logits, dim=-1), y)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        self.epoch_metrics[f"{stage}_metrics"].update(logits.detach(), y, loss)
        return loss

    def _log_epoch(self, stage: str) -> None:
        """Log the epoch's mean loss and accuracy (reduced across processes)."""
        metric = self.epoch_metrics[f"{stage}_metrics"]
        values = metric.compute()
        self.log(f"{stage}_loss", values["loss"], prog_bar=stage != "train")
        self.log(f"{stage}_acc", values["acc"], prog_bar=True)
        metric.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return self.predict_proba(batch[0])

    def configure_optimizers(self) -> dict[str, Any]:
        # The fused kernel updates every parameter in one call, a third of the per-step cost of the
        # default loop over these networks' few small tensors; it exists for CPU and CUDA only.
        fused = all(p.device.type in ("cpu", "cuda") for p in self.parameters())
        optimizer = torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, fused=fused or None
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.hparams.lr_factor, patience=self.hparams.lr_patience
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}
