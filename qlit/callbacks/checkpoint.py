"""Checkpoints of a run: the best epoch by the monitored metric, and the latest epoch to resume from."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint` whose ``last.ckpt`` always holds the latest epoch.

    With ``save_last=True``, Lightning 2.6 rewrites ``last.ckpt`` only at an epoch that also saved a
    top-k checkpoint, so once ``val_loss`` stops improving ``last.ckpt`` stays at the best epoch and
    ``--ckpt_path last`` retrains epochs that had already run. Here ``last.ckpt`` is written at the
    end of every training epoch (after its validation), from the same point Lightning writes its own,
    so resuming from it continues exactly; the best checkpoint is chosen as before, after each validation.

    Args:
        save_last: Keep ``last.ckpt`` up to date (``True``), or write none.
        **kwargs: Every other `ModelCheckpoint` argument (``monitor``, ``mode``, ``filename``, ...).
    """

    def __init__(self, save_last: bool | Literal["link"] | None = None, **kwargs: Any) -> None:
        # Best checkpoints only after validation: a run resumed from an end-of-epoch checkpoint replays that
        # epoch's end without validating, and Lightning would save a "best-v1.ckpt" without a val_loss there.
        if kwargs.get("save_on_train_epoch_end") is None:  # the CLI passes every default, None included
            kwargs["save_on_train_epoch_end"] = False
        super().__init__(save_last=False, **kwargs)
        self.keep_last = bool(save_last)

    @property
    def last_path(self) -> Path:
        return Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"

    def _write_last(self, trainer: L.Trainer) -> None:
        if not self.keep_last or trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.last_model_path = str(self.last_path)  # set first: it is part of the saved state
        trainer.save_checkpoint(self.last_path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if trainer.enable_validation:
            self._write_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not trainer.enable_validation:
            self._write_last(trainer)
