"""After training: quantize a copy of the best model to INT8, compare it with float, save both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from qlit.engine.predictions import predict
from qlit.export import (
    classifier_from_checkpoint,
    classifier_from_int8,
    int8_artifact,
)
from qlit.export.quantize import METHOD, float_linear_bytes, int8_linear_bytes
from qlit.io.checkpoints import atomic_save, load_checkpoint
from qlit.io.runs import unused_path


class Int8Quantization(L.Callback):
    """Quantize the best model's classical linear layers to INT8 after ``fit``; save and compare.

    When ``fit`` ends, the best checkpoint (of the trainer's ``ModelCheckpoint``; the final
    weights if there is none) is rebuilt into a new model: the model that was trained is never
    touched, so later ``trainer.test(ckpt_path=...)`` or resumed fits are unaffected. Its
    ``nn.Linear`` layers are quantized with torchao (see `qlit.export.quantize`), the circuit weights stay
    float. Float and INT8 are compared on the **validation** split, never the test fold, so that
    comparing fits by eye does not tune on the test set: ``float_val_acc``, ``int8_val_acc``,
    ``float_linear_bytes`` and ``int8_linear_bytes`` go to the loggers (TensorBoard) and the
    console. ``qlit test`` with this callback in its config adds ``int8_test_acc`` beside
    ``test_acc``: the test fold is scored only when asked. Into the run folder go the INT8 artifact (load it
    with `qlit.load_model`) and, optionally, the float network's plain ``state_dict``. The
    newest export of a run is always ``model_int8.pt``: an earlier one (from before a resume) is renamed
    ``model_int8_epoch<E>.pt`` after the epoch it came from, never overwritten. Only global rank 0 works.

    Args:
        filename: Name of the INT8 artifact in the run folder.
        state_dict_filename: Name of the float ``HybridNet`` state-dict file, or ``None`` for none.
    """

    def __init__(self, filename: str = "model_int8.pt", state_dict_filename: str | None = "model.pth") -> None:
        self.filename = filename
        self.state_dict_filename = state_dict_filename
        self.metrics: dict[str, float] = {}
        self.artifact_path: Path | None = None
        self.state_dict_path: Path | None = None
        self.kept: list[Path] = []

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask, not only rank 0
        if not trainer.is_global_zero:
            return
        checkpoint, source = self._best_checkpoint(trainer, pl_module)
        # both scored under the shots and noise the model trained with, as its own val_acc was
        conditions = getattr(pl_module, "run_conditions", None)
        float_model = classifier_from_checkpoint(checkpoint, conditions=conditions)
        artifact = int8_artifact(checkpoint)
        int8_model = classifier_from_int8(artifact, conditions=conditions)

        metrics: dict[str, float] = {}
        loader = self._loader(trainer, "val")
        if loader is not None:
            metrics["float_val_acc"] = predict(float_model, loader).accuracy()
            metrics["int8_val_acc"] = predict(int8_model, loader).accuracy()
        metrics["float_linear_bytes"] = float(float_linear_bytes(float_model.net))
        metrics["int8_linear_bytes"] = float(int8_linear_bytes(int8_model.net))
        self.metrics = metrics
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

        out_dir = Path(log_dir or trainer.default_root_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        artifact["metrics"] = dict(metrics, source=source)
        artifact["epoch"] = checkpoint.get("epoch")
        self.kept = self._keep_earlier_export(out_dir)
        self.artifact_path = out_dir / self.filename
        atomic_save(artifact, self.artifact_path)
        if self.state_dict_filename:
            self.state_dict_path = out_dir / self.state_dict_filename
            atomic_save(float_model.net.state_dict(), self.state_dict_path)
        self._report(source, metrics, loader)

    def _keep_earlier_export(self, out_dir: Path) -> list[Path]:
        """Move an earlier export of this run (a fit before a resume) to names that give its epoch.

        ``model_int8.pt`` is the name users load, so it must hold the run's newest model; the earlier one
        becomes ``model_int8_epoch<E>.pt`` (and ``model_epoch<E>.pth``), never overwritten.
        """
        earlier = out_dir / self.filename
        if not earlier.is_file():
            return []
        try:
            epoch = torch.load(earlier, map_location="cpu", weights_only=True).get("epoch")
        except Exception:  # an unreadable earlier file is still kept, under a name without an epoch
            epoch = None
        tag = f"epoch{epoch}" if isinstance(epoch, int) else "earlier"
        kept = []
        for name in filter(None, (self.filename, self.state_dict_filename)):
            path = out_dir / name
            if path.is_file():
                target = unused_path(path.with_name(f"{path.stem}_{tag}{path.suffix}"))
                path.rename(target)
                kept.append(target)
        return kept

    def _best_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[dict[str, Any], str]:
        callback = trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if best and Path(best).is_file():
            return load_checkpoint(best), str(best)
        print("qlit: no best checkpoint on disk; quantizing the final weights")
        checkpoint: dict[str, Any] = {
            "hyper_parameters": dict(pl_module.hparams),
            "state_dict": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
        }
        if trainer.datamodule is not None and hasattr(trainer.datamodule, "state_dict"):
            checkpoint[type(trainer.datamodule).__qualname__] = trainer.datamodule.state_dict()
        return checkpoint, "final weights"

    @staticmethod
    def _loader(trainer: L.Trainer, split: str) -> DataLoader | None:
        datamodule = trainer.datamodule
        if datamodule is None:
            print(f"qlit: no data module, so no {split} split; INT8 accuracy not measured")
            return None
        return datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """``qlit test``: score the tested checkpoint's INT8 version on the same test fold."""
        if not trainer.is_global_zero or not trainer.ckpt_path or not Path(trainer.ckpt_path).is_file():
            return
        loader = self._loader(trainer, "test")
        if loader is None:
            return
        artifact = int8_artifact(load_checkpoint(trainer.ckpt_path))
        # under the shots and noise test_acc was measured with
        int8_model = classifier_from_int8(artifact, conditions=getattr(pl_module, "run_conditions", None))
        int8_acc = predict(int8_model, loader).accuracy()
        for logger in trainer.loggers:
            logger.log_metrics({"int8_test_acc": int8_acc}, step=trainer.global_step)
        tested = trainer.callback_metrics.get("test_acc")
        float_part = f"test_acc {float(tested):.4f}   " if tested is not None else ""
        print(f"qlit: {float_part}int8_test_acc {int8_acc:.4f}   (test fold, {len(loader.dataset)} samples)")

    def _report(self, source: str, metrics: dict[str, float], loader: DataLoader | None) -> None:
        print(f"qlit: INT8 quantization of {source} ({METHOD})")
        if loader is not None:
            n = len(loader.dataset) if hasattr(loader.dataset, "__len__") else "?"
            print(
                f"qlit:   float_val_acc {metrics['float_val_acc']:.4f}   int8_val_acc "
                f"{metrics['int8_val_acc']:.4f}   (validation split, {n} samples)"
            )
        ratio = metrics["float_linear_bytes"] / metrics["int8_linear_bytes"]
        print(
            f"qlit:   float_linear_bytes {metrics['float_linear_bytes']:.0f}   int8_linear_bytes "
            f"{metrics['int8_linear_bytes']:.0f}   ({ratio:.2f}x smaller, scales included)"
        )
        written = [p for p in (self.artifact_path, self.state_dict_path) if p is not None]
        print(f"qlit: wrote {' and '.join(str(p) for p in written)}")
        if self.kept:
            print(f"qlit: the earlier export of this run is kept as {' and '.join(p.name for p in self.kept)}")
