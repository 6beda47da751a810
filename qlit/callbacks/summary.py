"""What a finished ``qlit fit`` tells its user, on the console and in TensorBoard's HParams tab."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from qlit.io.provenance import provenance
from qlit.io.runs import unused_path


def _hparams(pl_module: L.LightningModule) -> dict[str, Any]:
    """The model's hyperparameters as TensorBoard shows them (LightningCLI's bookkeeping left out)."""
    params = {k: v for k, v in dict(pl_module.hparams).items() if not k.startswith("_")}
    return {k: (", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in params.items()}


class RunSummary(L.Callback):
    """Remember the best epoch by ``val_loss``; report it when ``fit`` ends and after ``test``.

    At the end of ``fit`` it prints the best epoch, its ``val_loss`` and ``val_acc`` and the run
    folder, and logs ``hp/best_val_loss`` and ``hp/best_val_acc`` against the model's
    hyperparameters, so runs can be compared in TensorBoard's HParams tab. ``qlit test`` adds
    ``hp/test_acc`` and ``hp/test_loss``, and writes them with their provenance (versions, commit, command,
    data, date) to ``test_summary.json`` in the run folder. Its state is saved in checkpoints, so a resumed run
    reports the best epoch of the whole run. The classical settings (``lr``, ``n_qubits``, ...)
    are the columns; nothing is logged against the test fold during ``fit``.

    Args:
        verbose: Print the summary line (``qlit cv`` turns it off for its folds).
    """

    def __init__(self, verbose: bool = True) -> None:
        self.verbose = verbose
        self.best: dict[str, float] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        if "val_loss" not in metrics:
            return
        loss = float(metrics["val_loss"])
        if math.isfinite(loss) and loss < self.best.get("val_loss", math.inf):
            self.best = {"epoch": trainer.current_epoch, "val_loss": loss}
            if "val_acc" in metrics:
                self.best["val_acc"] = float(metrics["val_acc"])

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not trainer.is_global_zero or not self.best:
            return
        self._log_hparams(trainer, pl_module, {f"hp/best_{k}": v for k, v in self.best.items() if k != "epoch"})
        if self.verbose:
            acc = f", val_acc {self.best['val_acc']:.4f}" if "val_acc" in self.best else ""
            print(
                f"qlit: best epoch {self.best['epoch']} (val_loss {self.best['val_loss']:.4f}{acc}) of "
                f"{trainer.current_epoch} trained; run folder {log_dir}",
                flush=True,
            )

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not trainer.is_global_zero:
            return
        tested = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("test_acc", "test_loss")}
        metrics = {f"hp/{k}": v for k, v in tested.items()}
        metrics.update({f"hp/best_{k}": v for k, v in self.best.items() if k != "epoch"})
        if metrics:
            self._log_hparams(trainer, pl_module, metrics)
        if self.verbose and log_dir and tested:  # qlit cv reports its folds' tests in its own summary
            self._write_test_summary(Path(log_dir), trainer, tested)

    @staticmethod
    def _write_test_summary(folder: Path, trainer: L.Trainer, tested: dict[str, float]) -> None:
        """``test_summary.json`` (``test_summary_1.json``, ... after it): the test's numbers and their provenance."""
        data = trainer.datamodule
        identity = data.split_identity() if data is not None and getattr(data, "x", None) is not None else None
        summary = {
            "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
            **tested,
            "provenance": provenance(identity),
        }
        path = unused_path(folder / "test_summary.json")
        path.write_text(json.dumps(summary, indent=2) + "\n")

    @staticmethod
    def _log_hparams(trainer: L.Trainer, pl_module: L.LightningModule, metrics: dict[str, float]) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(_hparams(pl_module), metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        best = state_dict.get("best")
        self.best = dict(best) if isinstance(best, dict) else {}
