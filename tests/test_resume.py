"""Interrupted runs lose nothing: kill ``qlit fit`` anywhere, resume with ``--ckpt_path last``.

One Iris run is interrupted five times in a row, each resume picking up from what the previous
process left on disk: SIGKILL in the middle of a batch, SIGKILL right after a checkpoint was
written, SIGKILL while a checkpoint is being written, SIGTERM mid-batch and Ctrl-C (SIGINT) during
validation. The signals are real, sent by the process to itself at exact points by a small test
callback. The final weights must equal, bit for bit, those of the same run left alone.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from qlit.cli import main
from qlit.io.checkpoints import load_checkpoint
from tests.conftest import CONFIGS, QUICK

EPOCHS = 6  # Iris setosa/versicolor: 64 training rows, batch 16 -> 4 steps per epoch
ARGS = ["fit", "--config", str(CONFIGS / "iris.yaml"), f"--trainer.max_epochs={EPOCHS}", *QUICK]
KILLER = "--trainer.callbacks+=qlit_kill.KillAt"
CHECKPOINTS = Path("lightning_logs/iris/version_0/checkpoints")

KILL_HELPER = '''
import os
import signal

import lightning as L


class _Bomb:
    """Pickled into a checkpoint: SIGKILLs the process halfway through writing it."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)
        return (int, ())


class KillAt(L.Callback):
    """QLIT_TEST_KILL="<signal>:<point>:<epoch>:<batch>" sends the signal to this process there."""

    def __init__(self):
        name, self.point, epoch, batch = os.environ["QLIT_TEST_KILL"].split(":")
        self.signum, self.epoch, self.batch = getattr(signal, name), int(epoch), int(batch)
        self.fired = False

    def _fire(self, trainer, point, batch=0):
        if not self.fired and (point, trainer.current_epoch, batch) == (self.point, self.epoch, self.batch):
            self.fired = True
            os.kill(os.getpid(), self.signum)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._fire(trainer, "mid_batch", trainer.fit_loop.epoch_loop.batch_idx)

    def on_train_epoch_start(self, trainer, pl_module):  # the previous epoch's checkpoints were just written
        self._fire(trainer, "epoch_start")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._fire(trainer, "validation", batch_idx)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self.point == "checkpoint_write" and trainer.current_epoch == self.epoch:
            checkpoint["zz_kill"] = _Bomb()
'''


def killed_subprocess(qlit_processes, kill: str, *extra: str) -> None:
    """``qlit fit`` in a process of its own (the working folder, which holds qlit_kill.py, on its path), killed."""
    done = qlit_processes.run([*ARGS, KILLER, *extra], env={"QLIT_TEST_KILL": kill})
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


def interrupted_in_process(kill: str, monkeypatch, capsys) -> str:
    monkeypatch.setenv("QLIT_TEST_KILL", kill)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*ARGS, KILLER, "--ckpt_path=last"])
    assert exit_info.value.code == 128 + getattr(signal, kill.split(":")[0])
    return capsys.readouterr().err


def last_state() -> dict:
    return load_checkpoint(CHECKPOINTS / "last.ckpt")


def test_killed_and_resumed_run_ends_with_identical_weights(in_tmp_path: Path, monkeypatch, capsys, qlit_processes):
    (in_tmp_path / "qlit_kill.py").write_text(KILL_HELPER)
    monkeypatch.syspath_prepend(str(in_tmp_path))
    steps = 4

    # 1. SIGKILL in the middle of epoch 1 (after backward, before the optimizer step)
    killed_subprocess(qlit_processes, "SIGKILL:mid_batch:1:2")
    assert last_state()["epoch"] == 0

    # 2. SIGKILL right after the end-of-epoch-2 checkpoints were written, as epoch 3 starts
    killed_subprocess(qlit_processes, "SIGKILL:epoch_start:3:0", "--ckpt_path=last")
    assert last_state()["epoch"] == 2

    # 3. SIGKILL while the first checkpoint of epoch 3 is being written
    killed_subprocess(qlit_processes, "SIGKILL:checkpoint_write:3:0", "--ckpt_path=last")
    assert list(CHECKPOINTS.glob(".*.tmp")), "the kill should have hit a half-written temporary file"
    assert last_state()["epoch"] == 2
    load_checkpoint(CHECKPOINTS / "best.ckpt")  # both complete, whichever write was cut short

    # 4. SIGTERM mid-batch: the batch finishes, last.ckpt is saved mid-epoch, exit 143
    err = interrupted_in_process("SIGTERM:mid_batch:3:1", monkeypatch, capsys)
    assert "SIGTERM" in err and "last.ckpt" in err and "--ckpt_path last" in err
    assert (last_state()["epoch"], last_state()["global_step"]) == (3, 3 * steps + 2)

    # 5. Ctrl-C during validation: takes effect after the next training batch, exit 130
    err = interrupted_in_process("SIGINT:validation:4:0", monkeypatch, capsys)
    assert "SIGINT" in err
    assert (last_state()["epoch"], last_state()["global_step"]) == (5, 5 * steps + 1)

    # 6. resume to the end
    monkeypatch.delenv("QLIT_TEST_KILL")
    main([*ARGS, "--ckpt_path=last"])
    resumed = last_state()

    (in_tmp_path / "uninterrupted").mkdir()
    monkeypatch.chdir(in_tmp_path / "uninterrupted")
    main(ARGS)
    alone = last_state()

    assert (resumed["epoch"], resumed["global_step"]) == (alone["epoch"], alone["global_step"])
    assert (alone["epoch"], alone["global_step"]) == (EPOCHS - 1, EPOCHS * steps)
    assert resumed["state_dict"].keys() == alone["state_dict"].keys()
    for name, tensor in alone["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], tensor), name
    adam_resumed, adam_alone = resumed["optimizer_states"][0]["state"], alone["optimizer_states"][0]["state"]
    for index, moments in adam_alone.items():
        assert all(torch.equal(adam_resumed[index][k], v) for k, v in moments.items() if torch.is_tensor(v))
