"""``qlit cv --address``: the folds run on an existing Ray cluster (started with ``ray start``), same numbers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from qlit.cli import main
from tests.conftest import CONFIGS, QUICK
from tests.test_ray import assert_same_folds_and_layout

pytest.importorskip("ray")

IRIS = str(CONFIGS / "iris.yaml")
SMALL = ["--trainer.max_epochs=2", "--model.lr=0.1", "--data.init_args.num_folds=2", "--tuned_baselines=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster():
    """A real single-node cluster from ``ray start --head --block``; its process group is stopped afterwards."""
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray is None:
        pytest.skip("the ray command is not installed")
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="qlit_ray_")  # short: Ray's socket paths must stay under 108 characters
    head = subprocess.Popen(
        [ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp}", "--block"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start --head exited with status {head.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    yield f"127.0.0.1:{port}"
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)  # the cluster's processes share the head's process group
        head.wait()
    shutil.rmtree(temp, ignore_errors=True)


def _cv(tmp_path: Path, name: str, *extra: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qlit", "cv", "--config", IRIS, *SMALL, f"--trainer.logger.init_args.name={name}",
         *QUICK, *extra],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, start_new_session=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_cv_on_an_existing_cluster_matches_the_serial_run(tmp_path: Path, ray_cluster: str):
    main(["cv", "--config", IRIS, *SMALL, "--trainer.logger.init_args.name=serial", *QUICK])  # no Ray: in-process
    _cv(tmp_path, "cluster", f"--address={ray_cluster}")
    assert_same_folds_and_layout(tmp_path / "lightning_logs", "cluster")
    assert not list(Path.home().glob("ray_results/*/lightning_logs"))
