"""``--workers N`` on one machine: jobs in processes forked from the command. A failed job stops the others at once,
and a killed or interrupted command leaves no worker behind (the numbers against a serial run: tests/test_ray.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

JOBS = """
import os, sys, time
from pathlib import Path

from qlit.engine.runner import run_jobs


def job(name):
    Path(f"{name}.pid").write_text(str(os.getpid()))
    if name == "fails":
        time.sleep(1)
        raise ValueError("job fails said no")
    time.sleep(300)
    return name


try:
    for i, result in run_jobs(job, sys.argv[1:], workers=2):
        print(i, result)
except ValueError as err:
    print(f"ValueError: {err}", flush=True)
"""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_for(files: list[Path], seconds: float = 60) -> list[int]:
    deadline = time.monotonic() + seconds
    while not all(f.is_file() and f.read_text() for f in files):
        assert time.monotonic() < deadline, f"no {files} after {seconds} s"
        time.sleep(0.1)
    return [int(f.read_text()) for f in files]


def wait_gone(pids: list[int], seconds: float = 30) -> None:
    """Wait up to ``seconds`` for ``pids`` to exit (the caller asserts they did)."""
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_a_failed_job_stops_the_others_at_once(tmp_path: Path):
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", JOBS, "sleeps", "fails"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ValueError: job fails said no"
    assert time.monotonic() - start < 60, "the driver waited for the sleeping job"
    sleeper, failed = wait_for([tmp_path / "sleeps.pid", tmp_path / "fails.pid"], 1)
    assert sleeper != failed and os.getpid() not in (sleeper, failed)
    assert not alive(sleeper)


def test_a_killed_command_leaves_no_worker_behind(tmp_path: Path):
    driver = subprocess.Popen([sys.executable, "-c", JOBS, "a", "b"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        workers = wait_for([tmp_path / "a.pid", tmp_path / "b.pid"])
        assert all(alive(pid) for pid in workers)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        wait_gone(workers)
        assert not any(alive(pid) for pid in workers), "a worker outlived its killed command"
    finally:
        driver.kill()


def test_ctrl_c_stops_the_command_and_its_workers(tmp_path: Path):
    """A terminal's Ctrl-C signals the whole foreground group: the workers ignore it, the command stops them."""
    driver = subprocess.Popen([sys.executable, "-c", JOBS, "a", "b"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        workers = wait_for([tmp_path / "a.pid", tmp_path / "b.pid"])
        os.killpg(driver.pid, signal.SIGINT)
        _, stderr = driver.communicate(timeout=60)
        assert "KeyboardInterrupt" in stderr
        wait_gone(workers)
        assert not any(alive(pid) for pid in workers), "a worker outlived the interrupted command"
    finally:
        driver.kill()
