"""The LightningModule that trains a `HybridNet` as a classifier."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy

from qlit.errors import QlitError
from qlit.models.circuit import Ansatz, CircuitSpec, Rotation, ShotGradient
from qlit.models.hardware import HARDWARE_OPTIONS, hardware_options, refuse_training, report_usage, send_ahead
from qlit.models.hybrid import Core, HybridNet

STAGES = ("train", "val", "test")
# Options that change how the circuit is measured, not the model: not saved as hyperparameters.
RUN_CONDITIONS = ("shots", "noise", "shot_gradient")
# The checkpoint key of the conditions a model was trained under.
RUN_CONDITIONS_KEY = "run_conditions"


class EpochMetrics(nn.Module):
    """Mean loss and accuracy of one stage over an epoch: torchmetrics' `MeanMetric` and `Accuracy`.

    The step only keeps its detached logits, targets and loss; torchmetrics sees them in one update every
    `FLUSH_EVERY` batches and at the epoch's end. Measured with ``benchmarks/metrics.py`` (qlit backend, one
    thread, Iris and genomic sized steps of 0.53-0.55 ms, load ~1): updating both metrics on every step
    added 25-31% to a step; the buffered updates add 1.4-1.8% (the hand-written metric they replace added
    8.7-8.8%), plus 0.4-0.45 ms per stage and epoch for the flush, compute and reset (0.13 ms hand-written).
    Whole Lightning epochs: genomic 30.0 ms against 30.1 ms hand-written; Iris, whose epochs have five
    steps, 8.8 ms against 7.9 ms. Both metrics sum their states across processes under DDP when computed;
    compute groups would not help, as the two share no state.

    Args:
        num_classes: Two for one logit per sample (positive means class 1), more for one logit per class.
    """

    FLUSH_EVERY = 64

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.binary = num_classes == 2
        # nan_strategy "disable": no device-to-host sync, and a non-finite loss shows as such.
        self.loss = MeanMetric(nan_strategy="disable")
        # Labels come from the data modules, which check them: no validation (a sync and a unique()) per update.
        if self.binary:
            self.acc: Metric = BinaryAccuracy(validate_args=False)
        else:
            self.acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        """Add one batch: its logits, integer targets and mean loss."""
        self._pending.append((logits.detach(), target, loss.detach().expand(len(target))))
        if len(self._pending) >= self.FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        logits, target, losses = (torch.cat(parts) for parts in zip(*self._pending))
        self._pending.clear()
        # One loss per sample: with nan_strategy "disable", torchmetrics 1.9 ignores MeanMetric's `weight`.
        self.loss.update(losses)
        # Probabilities, not logits: torchmetrics would take logits that all lie in [0, 1] for probabilities.
        self.acc.update(torch.sigmoid(logits.float()) if self.binary else logits, target)

    @property
    def updated(self) -> bool:
        """Whether a batch has been added since the last reset."""
        return bool(self._pending) or self.loss.update_called

    def compute(self) -> dict[str, torch.Tensor]:
        """Sample-weighted mean loss and accuracy (reduced across processes)."""
        self._flush()
        return {"loss": self.loss.compute(), "acc": self.acc.compute()}

    def reset(self) -> None:
        self._pending.clear()
        self.loss.reset()
        self.acc.reset()


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
        ansatz: ``"basic"`` (BasicEntanglerLayers), ``"strong"`` (StronglyEntanglingLayers) or ``"reupload"``
            (data re-uploading: the embedding before every strongly entangling layer).
        embedding: Angle-embedding rotation, ``"X"``, ``"Y"`` or ``"Z"``.
        backend: ``"qlit"`` (the default: built-in batched statevector simulator) or a PennyLane device name.
        diff_method: PennyLane differentiation method; ignored by the ``qlit`` backend.
        core: ``"quantum"``, or ``"classical"`` for the classical-twin baseline.
        init_std: Standard deviation of the normal initial circuit angles.
        shots: ``null`` for exact expectation values, or the number of measurements each ⟨Z⟩ is estimated
            from (fresh samples every forward pass, reproducible from ``seed_everything``). A run condition,
            not architecture: ``qlit test --ckpt_path best --model.shots 100`` tests a trained model with shots.
        noise: Gate channels after every gate and readout error, e.g. ``{depolarizing: 0.01, readout_error:
            0.02}``; channels: depolarizing, amplitude_damping, phase_damping, bit_flip, phase_flip. Or a device's
            calibration converted to them per gate and wire, ``qiskit:fake_manila`` (``qlit`` backend). A run
            condition like ``shots``.
        shot_gradient: With ``shots`` on the ``qlit`` backend: ``parameter-shift`` (what a device computes) or
            ``exact``, a simulation-only shortcut (sampled values, exact gradients).
        hardware: Evaluate on a Qiskit device instead of ``backend``: ``qiskit:fake_manila`` (a fake device of
            ``qiskit_ibm_runtime``) or ``qiskit:ibm_<name>`` (token from ``QISKIT_IBM_TOKEN``); ``qlit test``,
            ``validate`` and ``predict`` only (training is refused). Needs ``pip install 'qlit[qiskit]'``.
        hardware_shots: Shots per row on the ``hardware`` device.
        hardware_chunk: Rows per hardware job.
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
        ansatz: Ansatz = "basic",
        embedding: Rotation = "X",
        backend: str = "qlit",
        diff_method: str = "backprop",
        core: Core = "quantum",
        lr: float = 0.01,
        weight_decay: float = 0.0,
        lr_factor: float = 0.5,
        lr_patience: int = 5,
        init_std: float = 0.05,
        shots: int | None = None,
        noise: dict[str, float] | str | None = None,
        shot_gradient: ShotGradient = "parameter-shift",
        hardware: str | None = None,
        hardware_shots: int = 4096,
        hardware_chunk: int = 256,
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
        # Shots and noise are the conditions a model runs under, not what it is: kept out of the checkpoint's
        # hyperparameters, which LightningCLI would otherwise impose over --model.noise on `qlit test`.
        self.save_hyperparameters(ignore=[*RUN_CONDITIONS, *HARDWARE_OPTIONS])
        if hardware is None and isinstance(backend, str) and backend.startswith("qiskit:"):
            hardware = backend  # a model built for a device: it evaluates there, and refuses to train
        options = hardware_options(hardware, hardware_shots, hardware_chunk, core)
        spec = CircuitSpec(
            n_qubits, n_layers, ansatz, embedding, hardware or backend, diff_method, init_std, shots, noise,
            shot_gradient,
        )
        self.net = HybridNet(in_features, num_classes, spec, core=core)
        if options is not None:
            self.net.core.circuit.configure(options)
        self.binary = num_classes == 2
        # Metrics accumulate per step and are logged once per epoch: `self.log` on every step costs
        # more than a training step of these small networks.
        self.epoch_metrics = nn.ModuleDict({f"{stage}_metrics": EpochMetrics(num_classes) for stage in STAGES})
        # A list while a caller collects the test pass's logits (`keep_test_logits`), else None.
        self.test_logits: list[torch.Tensor] | None = None

    def on_fit_start(self) -> None:
        refuse_training(self)

    def on_test_start(self) -> None:
        send_ahead(self, self.trainer.test_dataloaders)

    def on_predict_start(self) -> None:
        send_ahead(self, self.trainer.predict_dataloaders)

    def on_test_end(self) -> None:
        report_usage(self, "test")

    def on_predict_end(self) -> None:
        report_usage(self, "predict")

    @property
    def class_names(self) -> list[str]:
        """Label names, or ``"0"``, ``"1"``, … when none were given."""
        names = self.hparams.class_names
        return list(names) if names else [str(i) for i in range(self.hparams.num_classes)]

    @property
    def run_conditions(self) -> dict[str, Any]:
        """The shots and noise this model runs under (``shots``, ``noise``, ``shot_gradient``)."""
        spec = self.net.spec
        return {"shots": spec.shots, "noise": dict(spec.noise), "shot_gradient": spec.shot_gradient}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Recorded beside the hyperparameters so a resumed fit can refuse to change them halfway.
        checkpoint[RUN_CONDITIONS_KEY] = self.run_conditions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits: shape ``(B,)`` for two classes, ``(B, num_classes)`` otherwise."""
        logits = self.net(x)
        return logits.squeeze(-1) if self.binary else logits

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, one column per class, for a batch of preprocessed features."""
        return self.class_probabilities(self(x))

    def class_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """``forward``'s logits as class probabilities, one column per class."""
        if self.binary:
            p = torch.sigmoid(logits)
            return torch.stack([1 - p, p], dim=-1)
        return torch.softmax(logits, dim=-1)

    def predicted_classes(self, logits: torch.Tensor) -> torch.Tensor:
        """Class indices of ``forward``'s logits, by the rule the logged accuracy uses (binary: sigmoid > 0.5)."""
        if self.binary:
            return (torch.sigmoid(logits.float()) > 0.5).long()
        return logits.argmax(-1)

    def keep_test_logits(self) -> None:
        """Keep the logits of the test steps that follow in `test_logits` (CPU, in batch order).

        Under shots every forward pass is a new random draw: a caller that reports more than the logged
        ``test_loss`` and ``test_acc`` (a confusion matrix) takes it from these logits, the same draw.
        """
        self.test_logits = []

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
        return F.nll_loss(F.log_softmax(logits, dim=-1), y)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        self.epoch_metrics[f"{stage}_metrics"].update(logits.detach(), y, loss)
        if stage == "test" and self.test_logits is not None:
            self.test_logits.append(logits.detach().cpu())
        return loss

    def _log_epoch(self, stage: str) -> None:
        """Log the epoch's mean loss and accuracy (reduced across processes)."""
        metric = self.epoch_metrics[f"{stage}_metrics"]
        # An epoch without batches (resumed at its very end) has no mean to log. Every process sees as many
        # batches as the others (Lightning's DistributedSampler pads), so under DDP all skip or none does.
        if not metric.updated:
            return
        # torchmetrics reduces over processes here, in a hook every rank runs in the same order. The logged values
        # are already global, so they are logged without sync_dist: Lightning would otherwise reduce them again
        # lazily, from whichever callback first reads the metrics, and the progress bar reads them on rank 0 only.
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
