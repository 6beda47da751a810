"""Callbacks that keep a run's work safe: stop on a non-finite loss, checkpoint on SIGTERM or Ctrl-C.

The ``qlit`` CLI adds both to every Trainer it builds.
"""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from qlit.errors import QlitError

_SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


def _last_checkpoint_path(trainer: L.Trainer) -> Path:
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath:
        return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / "last.ckpt"


def _kept_checkpoint(trainer: L.Trainer) -> str:
    callback = trainer.checkpoint_callback
    last = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    if last and Path(last).is_file():
        return f"the last good checkpoint is kept: {last}"
    return "no checkpoint had been written yet"


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal after saving a checkpoint; exits with status ``128 + signal``.

    Args:
        signum: The signal received.
        message: What happened and where the checkpoint is.
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message

    def __str__(self) -> str:
        return self.message


class NonFiniteGuard(L.Callback):
    """Stop training at the first non-finite loss, and never checkpoint non-finite weights.

    A NaN or infinite training loss (on any rank) raises a `QlitError` before its backward pass, so
    the weights it would have corrupted are never updated and no checkpoint is written after it;
    the last checkpoint on disk (from an earlier, finite epoch) stays as it is. A checkpoint whose
    weights hold NaN or infinity is refused the same way.
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        value = float(loss.detach())
        stop = not math.isfinite(value)
        if trainer.world_size > 1:  # every rank must stop at the same step, or the others hang in all-reduce
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            what = value if not math.isfinite(value) else "non-finite on another process"
            raise QlitError(
                f"training loss became {what} at epoch {trainer.current_epoch}, step {trainer.global_step}; "
                f"stopped ({_kept_checkpoint(trainer)}); check the data or lower model.lr"
            )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        for name, value in checkpoint.get("state_dict", {}).items():
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
                raise QlitError(
                    f"weight {name} became non-finite at epoch {trainer.current_epoch}, step {trainer.global_step}; "
                    f"stopped without saving ({_kept_checkpoint(trainer)}); check the data or lower model.lr"
                )


class GracefulStop(L.Callback):
    """On SIGTERM or Ctrl-C during training: finish the batch, save ``last.ckpt``, exit.

    The checkpoint is written at the end of the batch that was running, a point from which
    ``qlit fit --ckpt_path last`` resumes exactly (the train loader's position is saved with it).
    A signal that arrives during validation takes effect after the next training batch. A second
    signal stops at once, without a checkpoint. Under DDP the ranks agree on the batch to stop at,
    so all of them save and leave together. The process then exits with status ``128 + signal``.
    """

    def __init__(self) -> None:
        self._received: int | None = None
        self._previous: dict[int, Any] = {}
        self._training_done = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._received = None
        self._training_done = False
        if threading.current_thread() is not threading.main_thread():
            return
        # Lightning's own SIGTERM handler only sets a flag that its loops check at various points and
        # saves nothing, and it leaves Ctrl-C alone; there is no public hook for "stop at a batch end".
        for signum in _SIGNAL_NAMES:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._training_done:  # after the last epoch (the INT8 export): checkpoints are complete
            self._restore()
            raise TrainingInterrupted(
                signum,
                f"{_SIGNAL_NAMES.get(signum, signum)} after training had finished: the checkpoints are complete, "
                "the steps after training (such as the INT8 export) did not finish",
            )
        if self._received is not None:
            self._restore()
            raise KeyboardInterrupt
        self._received = signum

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stop = self._received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        signum = self._received if self._received is not None else signal.SIGTERM
        path = _last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        self._restore()
        raise TrainingInterrupted(
            signum,
            f"{_SIGNAL_NAMES.get(signum, signum)}: stopped at epoch {trainer.current_epoch}, "
            f"step {trainer.global_step} and saved {path}; resume with --ckpt_path last",
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training_done = True  # the handlers stay until teardown, through the callbacks' on_fit_end
        if self._received is not None:  # arrived after the last training batch: its epoch is checkpointed
            signum, self._received = self._received, None
            self._restore()
            raise TrainingInterrupted(
                signum,
                f"{_SIGNAL_NAMES.get(signum, signum)} after the last epoch: stopped before the steps after training "
                f"(such as the INT8 export); {_last_checkpoint_path(trainer)} holds the final epoch",
            )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
