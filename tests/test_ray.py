"""Parallel folds: ``qlit cv --workers`` in forked processes gives the serial run's numbers (on a Ray cluster:
tests/test_ray_cluster.py), inner folds hold no outer test row, and a killed sweep leaves no process behind
(``qlit tune`` itself: tests/test_tune.py).

Every command that runs on Ray runs as ``python -m qlit`` in a session of its own, with a real local Ray (and Ray
Tune's real schedulers and search algorithms). The pytest process never joins a Ray: a driver whose raylet dies
is ended by Ray's core worker (``_exit``, its message going to pytest's captured stderr), and a local Ray's
processes share their driver's process group, so pytest as a driver could vanish without a word.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from qlit.cli import main
from qlit.data import EquityDataModule, IrisDataModule
from tests.conftest import CONFIGS, QUICK

pytest.importorskip("ray")

IRIS = str(CONFIGS / "iris.yaml")
SMALL = ["--trainer.max_epochs=2", "--model.lr=0.1", "--data.init_args.num_folds=2"]
SPACE = {"model.lr": {"loguniform": [0.01, 0.3]}, "model.n_layers": {"randint": [1, 3]}}
TAG_ENV = "QLIT_TEST_TAG"  # inherited by every process a command starts: how a test finds them, and only them


def qlit(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m qlit <args>`` in ``cwd``, in a session of its own; fails the test unless it exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", "qlit", *args, *QUICK], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, start_new_session=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def tagged(tag: str) -> list[int]:
    """The live processes (zombies excluded) started with ``QLIT_TEST_TAG=tag`` in their environment."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if f"{TAG_ENV}={tag}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours
            pass
    return found


def write_space(path: Path, space: dict) -> str:
    path.write_text(yaml.safe_dump(space))
    return str(path)


def fold_numbers(summary: dict) -> list[tuple]:
    models = [summary["folds"], *(b["folds"] for b in summary["baselines"].values())]
    return [(m[k]["test_acc"], m[k].get("test_loss"), m[k]["confusion_matrix"]) for m in models for k in range(2)]


def assert_same_folds_and_layout(logs: Path, parallel: str) -> None:
    """The 2-fold cv run ``logs/<parallel>`` gave the serial run's (``logs/serial``) numbers exactly, and both wrote
    their folds in the same layout (``logs`` is relative to the command's folder: workers write where it does)."""
    serial, other = (json.loads((logs / name / "cv_summary.json").read_text()) for name in ("serial", parallel))
    assert fold_numbers(other) == fold_numbers(serial)  # exactly: a fold is the same wherever it runs
    assert [f["test_indices"] for f in other["folds"]] == [f["test_indices"] for f in serial["folds"]]
    for name in ("serial", parallel):
        for k in range(2):
            assert (logs / name / f"fold_{k}" / "checkpoints" / "best.ckpt").is_file()
            assert (logs / name / "classical_twin" / f"fold_{k}" / "checkpoints" / "best.ckpt").is_file()


def test_parallel_cv_gives_the_serial_numbers_and_layout(tmp_path: Path, qlit_processes):
    main(["cv", "--config", IRIS, *SMALL, "--trainer.logger.init_args.name=serial", *QUICK])  # no Ray
    done = qlit_processes.run(["cv", "--config", IRIS, *SMALL, "--trainer.logger.init_args.name=forked",
                               "--workers=2", *QUICK])
    assert done.returncode == 0, done.stderr[-3000:]
    forked = done.stdout
    assert "2 folds, 2 at a time in processes forked from this one" in forked
    assert_same_folds_and_layout(tmp_path / "lightning_logs", "forked")


JOB_FAILING = """
import sys

from qlit.errors import QlitError
from qlit.engine.runner import run_jobs
from qlit.io.config_files import load_yaml_strict

try:
    list(run_jobs(load_yaml_strict, ["ok.yaml", "missing.yaml"], workers=2, address=sys.argv[1] or None))
except QlitError as err:
    print(f"QlitError: {err}")
"""


@pytest.mark.parametrize("address", ["", "local"], ids=["forked", "ray"])
def test_a_failing_job_raises_its_own_error(tmp_path: Path, address: str):
    (tmp_path / "ok.yaml").write_text("a: 1\n")  # relative paths: the workers resolve them in the command's folder
    done = subprocess.run([sys.executable, "-c", JOB_FAILING, address], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "QlitError: config missing.yaml does not exist"


def test_inner_folds_never_hold_the_outer_test_rows():
    outer = IrisDataModule(num_folds=3, fold=1)
    outer.setup("fit")
    seen = []
    for j in range(2):
        inner = IrisDataModule(num_folds=3, fold=1, inner_folds=2, inner_fold=j)
        inner.setup("fit")
        assert len(inner.indices["test"]) == 0
        rows = np.concatenate([inner.indices["train"], inner.indices["val"]])
        assert not set(rows) & set(outer.indices["test"])
        assert sorted(rows) == sorted(np.concatenate([outer.indices["train"], outer.indices["val"]]))
        seen.append(set(inner.indices["val"]))
        assert inner.split_identity()["inner_fold"] == j
    assert not seen[0] & seen[1]  # the inner folds partition the outer fold's non-test rows


def test_nested_walk_forward_stays_before_the_outer_test_span():
    outer = EquityDataModule(num_folds=3, fold=2, lags=3, rolling_window=5)
    outer.setup("fit")
    inner = EquityDataModule(num_folds=3, fold=2, lags=3, rolling_window=5, inner_folds=2, inner_fold=1)
    inner.setup("fit")
    dates = inner.sample_dates
    test_start = dates[outer.indices["test"]].min()
    assert dates[inner.indices["train"]].max() < dates[inner.indices["val"]].min() < test_start
    assert dates[inner.indices["val"]].max() < test_start


def _state_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("ray/outer_0/experiment_state-*.json"), key=lambda p: p.name)


def _trial_states(folder: Path) -> dict[str, str]:
    """Trial id -> status, from the experiment state Ray Tune would restore from (the newest by name)."""
    saved = _state_files(folder)
    try:
        content = json.loads(saved[-1].read_text()) if saved else {}
    except (OSError, ValueError):  # being written
        return {}
    return {json.loads(t[0])["trial_id"]: json.loads(t[0])["status"] for t in content.get("trial_data", [])}


def _wait_until_gone(tag: str, limit_s: float) -> list[str]:
    """The tagged processes still alive after ``limit_s`` seconds, as ``pid: command line``."""
    deadline = time.monotonic() + limit_s
    while (left := tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.2)
    described = []
    for pid in left:
        try:
            described.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes().replace(bytes(1), b' ').decode()[:200]}")
        except OSError:
            pass
    return described


def _stop(tag: str, sweep: subprocess.Popen) -> None:
    """Whatever a failed test left: the sweep's own session, then single tagged PIDs (never another group)."""
    try:
        os.killpg(sweep.pid, signal.SIGKILL)  # its own session (start_new_session), not pytest's group
    except ProcessLookupError:
        pass
    for pid in tagged(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the run's processes in /proc")
def test_killed_sweep_leaves_no_process_and_no_unrecorded_state_to_restore(tmp_path: Path, qlit_processes):
    lrs = [0.01, 0.03, 0.1, 0.3]
    space = write_space(tmp_path / "space.yaml", {"model.lr": {"grid": lrs}})
    command = ["tune", "--config", IRIS, "--trainer.max_epochs=3", "--data.init_args.num_folds=2", "--space", space,
               "--num_samples=1", "--inner_folds=2", "--nested=false", "--asha=false", "--workers=2"]
    tag = uuid.uuid4().hex
    # TUNE_GLOBAL_CHECKPOINT_S=0: Ray Tune saves its state after every step, so the kill finds a trial saved
    extra = {TAG_ENV: tag, "TUNE_GLOBAL_CHECKPOINT_S": "0", "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env = {**os.environ, **extra}
    sweep = subprocess.Popen([sys.executable, "-m", "qlit", *command, *QUICK], cwd=tmp_path, env=env,
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = tmp_path / "lightning_logs" / "iris" / "tune_0"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and "TERMINATED" not in _trial_states(folder).values():
            time.sleep(0.1)
        os.kill(sweep.pid, signal.SIGKILL)  # kill -9 of the driver alone, as from a shell
        sweep.wait()
        # Ray's agents outlive their raylet by 60 s (they try to tell the dead GCS first) unless qlit stops them
        assert _wait_until_gone(tag, 30) == [], "processes of the killed sweep are still running"
    finally:
        _stop(tag, sweep)
    before = {t: s for t, s in _trial_states(folder).items() if s == "TERMINATED"}
    assert before and len(before) < len(lrs), "the sweep must be killed part-way"
    assert not (folder / "tune_summary.json").exists()

    # Ray saved its state after qlit last recorded it (kill -9 leaves no time to): restoring would unpickle
    # files qlit cannot vouch for, so the resume is refused in one line, before Ray starts
    refused = qlit_processes.run([*command, "--resume=true", *QUICK], cwd=tmp_path, env=extra)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-3000:]
    assert "ray/outer_0" in lines[0] and "start the sweep again without --resume" in lines[0]
    assert _wait_until_gone(tag, 5) == []


@pytest.mark.gpu
def test_parallel_cv_shares_a_gpu(tmp_path: Path):
    main(["cv", "--config", IRIS, *SMALL, "--trainer.accelerator=gpu", "--workers=2", "--gpus_per_fold=0.5", *QUICK])
    summary = json.loads((tmp_path / "lightning_logs/iris/cv_summary.json").read_text())
    assert len(summary["folds"]) == 2
