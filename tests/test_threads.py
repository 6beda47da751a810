"""One torch thread policy for a serial run and a Ray worker (`qlit.runtime`), checked in-process without Ray."""

from __future__ import annotations

import os

import pytest
import torch

from qlit.engine import runner
from qlit.errors import QlitError
from qlit.runtime import apply_threads, choose_threads

TORCH_DEFAULT = 3  # what torch would pick on some machine: neither path may keep it


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _serial() -> int:
    torch.set_num_threads(TORCH_DEFAULT)
    apply_threads()  # what every qlit command does once its config is parsed, whatever the circuit's width
    return torch.get_num_threads()


def _ray_task(monkeypatch, node_env: dict[str, str | None]) -> int:
    """What `runner.run_jobs` does: resolve the count in the driver, then run the job on a worker whose
    environment is ``node_env`` (Ray sets OMP_NUM_THREADS to the task's CPUs where nothing set it)."""
    driver = choose_threads()
    for name, value in node_env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    torch.set_num_threads(TORCH_DEFAULT)
    return runner._in_worker(lambda job: torch.get_num_threads(), None, os.getcwd(), driver)


@pytest.mark.parametrize(
    "driver_env,node_env",
    [
        ({}, {"OMP_NUM_THREADS": "1"}),  # nothing chosen: torch's default serially, Ray's 1 on the worker before
        ({"OMP_NUM_THREADS": "2"}, {"OMP_NUM_THREADS": "1"}),  # a cluster node does not share the driver's OMP
        ({"QLIT_NUM_THREADS": "2"}, {"QLIT_NUM_THREADS": None, "OMP_NUM_THREADS": "1"}),
    ],
)
def test_a_wide_circuit_gets_the_same_threads_serially_and_on_a_ray_worker(monkeypatch, threads, driver_env, node_env):
    for name in ("QLIT_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in driver_env.items():
        monkeypatch.setenv(name, value)
    serial = _serial()
    assert serial == int(next(iter(driver_env.values()), 1))
    assert _ray_task(monkeypatch, node_env) == serial


def test_a_tuning_trial_follows_the_policy_from_its_environment(monkeypatch, threads):
    # Ray Tune trials call as_qlit_worker(cwd) alone; a local Ray passes the driver's environment on, and Ray
    # sets OMP_NUM_THREADS=1 for a one-CPU trial where the user set nothing.
    for name in ("QLIT_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    serial = _serial()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(TORCH_DEFAULT)
    runner.as_qlit_worker(os.getcwd())
    assert torch.get_num_threads() == serial == 1


@pytest.mark.parametrize("value", ["two", "0"])
def test_a_bad_thread_count_names_the_variable_and_value(monkeypatch, value):
    monkeypatch.setenv("QLIT_NUM_THREADS", value)
    with pytest.raises(QlitError, match=f"QLIT_NUM_THREADS must be a positive integer, got '{value}'"):
        choose_threads()
