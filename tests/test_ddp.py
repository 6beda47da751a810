"""Two-process DDP on CPU trains the same model one process does, with one writer and reduced metrics.

With ``batch_size=16`` per process, two processes take the same optimiser steps on the same 32
samples as one process with ``batch_size=32``: Lightning's ``DistributedSampler`` and qlit's
single-process sampler draw the same ``seed + epoch`` permutation, and DDP averages the two
half-batch gradients into the full-batch one. So the DDP run must log (up to float rounding) the
metrics of the single-process run, which only holds if the metrics are reduced over both processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from qlit.cli import QlitCLI
from tests.conftest import CONFIGS, QUICK
from tests.forked import user_environment

GENOMIC = str(CONFIGS / "genomic.yaml")
EPOCHS = 2
VAL_ROWS = 160  # genomic: 1000 individuals, test fold 200, validation 20% of the other 800


def qlit_subprocess(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "qlit", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def helper_env(folder: Path, module: str, source: str, **extra: str) -> dict[str, str]:
    """The environment of a DDP run whose processes can import ``module`` (``source``, written to ``folder``)."""
    (folder / f"{module}.py").write_text(source)
    env = user_environment()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), env.get("PYTHONPATH")]))
    return {**env, **extra}


def scalars(run_dir: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


PEER_DIES = '''
import os

import lightning as L


class Rank1Dies(L.Callback):
    """The second DDP process dies in epoch 1, as a process killed by the OOM killer would."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.current_epoch == 1:
            os._exit(9)
'''


def test_a_dead_ddp_peer_stops_the_job_in_one_line(in_tmp_path: Path):
    env = helper_env(in_tmp_path, "qlit_peer", PEER_DIES, QLIT_DDP_TIMEOUT="20")
    args = [
        "fit", "--config", str(CONFIGS / "iris.yaml"), "--trainer.max_epochs=3",
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
        "--trainer.callbacks+=qlit_peer.Rank1Dies", *QUICK,
    ]  # fmt: skip
    proc = qlit_subprocess(args, in_tmp_path, env)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("qlit: error:")]
    assert errors and "a DDP process stopped answering" in errors[-1], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr.split("qlit: error:")[-1]


COLLECTIVES = '''
import torch.distributed as dist

import lightning as L

NAMES = ("all_reduce", "all_gather", "all_gather_object", "broadcast", "broadcast_object_list", "barrier", "gather",
         "reduce", "scatter")


class RecordCollectives(L.Callback):
    """Write each rank's sequence of collective calls to ``collectives_<rank>.txt``, from set-up to teardown."""

    def setup(self, trainer, pl_module, stage):
        self.calls, self.originals = [], {name: getattr(dist, name) for name in NAMES}
        for name, function in self.originals.items():
            setattr(dist, name, self._recording(name, function))

    def _recording(self, name, function):
        def call(*args, **kwargs):
            self.calls.append(name)
            return function(*args, **kwargs)

        return call

    def teardown(self, trainer, pl_module, stage):
        for name, function in self.originals.items():
            setattr(dist, name, function)
        with open(f"collectives_{trainer.global_rank}.txt", "w") as file:
            file.write("\\n".join(self.calls))
'''

BUSY_LOOP = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def test_ddp_under_cpu_load_finishes_and_matches_one_process(in_tmp_path: Path, monkeypatch):
    """Three busy loops beside a 2-process fit on 2 cores: every rank must enter the same collectives.

    The progress bar lives on rank 0 only. When the epoch metrics were logged with ``sync_dist``, its
    ``on_train_epoch_end`` made rank 0 all-reduce them while rank 1 was already in torchmetrics' all-gather
    of the next metric; under load the two met in different collectives and the job hung until the DDP
    timeout. The bar is forced on here (qlit turns it off when stdout is not a terminal). The finished run
    must then log what one process training on the same batches logs (see the module docstring).
    """
    ddp_dir = in_tmp_path / "ddp"
    ddp_dir.mkdir()
    # a hang fails in two minutes, not in five; QLIT_DEBUG keeps Lightning's line on how many processes it started
    env = helper_env(in_tmp_path, "qlit_collectives", COLLECTIVES, QLIT_DDP_TIMEOUT="120", QLIT_DEBUG="1")
    args = [
        sys.executable, "-m", "qlit", "fit", "--config", GENOMIC, f"--trainer.max_epochs={EPOCHS}",
        "--data.init_args.batch_size=16", "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=true", "--trainer.enable_model_summary=false",
        "--trainer.callbacks+=qlit_collectives.RecordCollectives",
    ]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ddp_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    registered = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "Starting with 2 processes" in line:
                registered.set()
        registered.set()  # the output ended without it: the assertions below say so

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    busy = []
    try:
        # The load starts once both ranks have joined the process group, where their collectives begin: loops
        # running through the ranks' imports (half the fit's time) only made the suite slower.
        registered.wait(timeout=240)
        busy = [
            subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(seconds=300)], stdout=subprocess.DEVNULL)
            for _ in range(3)
        ]
        returncode = proc.wait(timeout=300)
    finally:
        for loop in busy:
            loop.kill()
            loop.wait()
        proc.kill()
        reader.join(timeout=30)
    output = "".join(lines)
    assert returncode == 0, output[-3000:]
    assert "Starting with 2 processes" in output
    # Whether mismatched collectives hang depends on timing; whether both ranks make the same calls in the same
    # order does not. A collective reached from a rank-0-only callback (the progress bar) at another point than on
    # rank 1 shows up here on every run, not only on the runs where it happens to hang.
    calls = [(ddp_dir / f"collectives_{rank}.txt").read_text().split() for rank in (0, 1)]
    assert calls[0] and "all_gather" in calls[0] and calls[0] == calls[1], calls

    # one process wrote: one run folder, one event file, one config, no duplicates or leftovers
    experiment = ddp_dir / "lightning_logs" / "genomic"
    assert [p.name for p in experiment.iterdir()] == ["version_0"]
    run = experiment / "version_0"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in run.glob("config*.yaml")) == ["config.yaml"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not [p for p in run.iterdir() if "_1." in p.name], "a second process wrote a file again"
    # the INT8 export runs on rank 0 alone, once, from the best checkpoint
    assert output.count("int8_val_acc") == 1
    assert sorted(p.name for p in run.glob("model*")) == ["model.pth", "model_int8.pt"]
    assert torch.load(run / "model_int8.pt", weights_only=True)["metrics"]["source"].endswith("best.ckpt")
    ddp = scalars(run)
    assert len(ddp["val_acc"]) == EPOCHS and len(ddp["train_loss"]) == EPOCHS

    # the same training in one process
    single_dir = in_tmp_path / "single"
    single_dir.mkdir()
    monkeypatch.chdir(single_dir)
    single = QlitCLI(args=["fit", "--config", GENOMIC, f"--trainer.max_epochs={EPOCHS}", *QUICK])
    metrics = {k: float(v) for k, v in single.trainer.callback_metrics.items()}
    assert single.trainer.global_step == EPOCHS * 20  # 640 training rows / 32
    assert ddp["val_loss"][-1] == pytest.approx(metrics["val_loss"], abs=1e-3)
    assert ddp["train_loss"][-1] == pytest.approx(metrics["train_loss"], abs=1e-3)
    assert abs(ddp["val_acc"][-1] - metrics["val_acc"]) <= 1.5 / VAL_ROWS
    assert ddp["val_acc"][-1] > 0.5, "five populations: chance is 0.2"

    # reduced metrics: the DDP run's last logged val_acc is the accuracy over the whole validation set
    last = run / "checkpoints" / "last.ckpt"
    check = QlitCLI(args=["validate", "--config", GENOMIC, f"--ckpt_path={last}", *QUICK])
    assert ddp["val_acc"][-1] == pytest.approx(float(check.trainer.callback_metrics["val_acc"]), abs=1e-6)
    assert ddp["val_loss"][-1] == pytest.approx(float(check.trainer.callback_metrics["val_loss"]), abs=1e-5)
    # predict under DDP (unequal shards, one file in input order) is tested in tests/test_predict.py
