"""Run a list of jobs one after another in this process, in processes forked from it, or as Ray tasks.

``workers > 1`` on Linux runs the jobs in a pool of processes forked from this one once its imports are done,
so a worker starts in milliseconds, not the seconds a fresh Python spends importing torch, Lightning and
PennyLane (which is what made parallel folds on a local Ray no faster than serial ones on two cores). Ray runs
them where a cluster is named (``address``, also ``RAY_ADDRESS``; ``local`` starts a Ray of this process's own),
where GPUs are shared out, where this process already has threads or a Ray of its own (forking then is unsafe),
and on other systems.

Every job is deterministic on its own (its seed and its fold fix it, and a Ray task uses the torch thread
count a serial run uses, `qlit.runtime.choose_threads` as the driver resolves it), so where a job runs does
not change its result.
The driver writes every summary; a job writes only its own run folder, so on a cluster of several
machines ``lightning_logs`` must be on storage all of them share.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from qlit.errors import QlitError
from qlit.runtime import apply_threads, choose_threads, quiet_lightning

ADDRESS_ENV = "RAY_ADDRESS"
# Every process of a local Ray that qlit starts inherits this variable (value: one id per start), which is how
# the guard below finds them all, whoever their parent is by then.
OWNER_ENV = "QLIT_RAY_OWNER"
# The guard: a small process of its own session. While the driver runs, it notes once a second the driver's
# descendants that carry the driver's OWNER_ENV and everything below them (by PID and start time, so a reused PID is
# never mistaken for one): Ray's processes, not the driver's other children. At the driver's end (EOF on its stdin,
# which only the driver holds) it SIGKILLs those still alive, and every process carrying OWNER_ENV, until none has
# been seen for 2 s (a process caught between fork and exec, or started by a dying raylet, is found by a later scan).
# Ray stops most of its processes when the driver dies, but its DashboardAgent and RuntimeEnvAgent first try to tell
# the (dead) GCS, for 60 s, and a SIGTERM does not stop them. Under load the marker alone once missed those two (a
# process can rewrite the memory /proc shows as its environment, as process titles do): the noted tree does not.
# It signals single PIDs it found, never a process group.
_GUARD = r"""
import os, select, signal, sys, time
marker, driver = sys.argv[1].encode(), int(sys.argv[2])
spare = {os.getpid(), driver}
def processes():
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name, "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if fields[0] not in (b"Z", b"X"):  # a zombie is dead already, only not yet reaped
                    yield int(name), int(fields[1]), fields[19]
            except (OSError, IndexError, ValueError):
                pass
def carries(pid):
    try:
        with open("/proc/%s/environ" % pid, "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False
family = {}
def note_family():
    children, start = {}, {}
    for pid, ppid, started in processes():
        children.setdefault(ppid, []).append(pid)
        start[pid] = started
    stack = [(pid, False) for pid in children.get(driver, [])]
    while stack:
        pid, inside = stack.pop()
        if pid in spare:
            continue
        inside = inside or family.get(pid) == start[pid] or carries(pid)
        if inside:
            family[pid] = start[pid]
        stack.extend((child, inside) for child in children.get(pid, []))
while True:
    if select.select([0], [], [], 1.0)[0]:
        if not os.read(0, 65536):
            break
    else:
        note_family()
def owned():
    alive = {pid: started for pid, _, started in processes()}
    for pid in alive:
        if pid not in spare and (family.get(pid) == alive[pid] or carries(pid)):
            yield pid
deadline, quiet_since = time.monotonic() + 60, time.monotonic()
while time.monotonic() < deadline and time.monotonic() - quiet_since < 2:
    found = list(owned())
    if found:
        quiet_since = time.monotonic()
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.1)
"""
_guards: list[subprocess.Popen] = []


def ray_module(option: str) -> Any:
    """Ray, imported; a one-line error naming ``option`` when the ``ray`` extra is not installed."""
    if "RAY_AUTH_MODE" not in os.environ and _has_token():
        # `ray start` turns token authentication on when a token exists; a driver joining that cluster must
        # say so too, and Ray reads the mode once, on import
        os.environ["RAY_AUTH_MODE"] = "token"
    try:
        import ray
    except ImportError:
        raise QlitError(
            f"{option} runs on Ray, which is not installed: pip install -e \".[ray]\" (or pip install 'ray[tune]')"
        ) from None
    return ray


def _check_reachable(address: str, where: str) -> None:
    """Fail in a second, not after Ray's long retries, when nothing listens at ``host:port``.

    Args:
        address: The Ray address.
        where: How errors name it: ``--address 10.0.0.5:6379`` or ``RAY_ADDRESS=10.0.0.5:6379``.
    """
    if address == "auto" or address.startswith(("ray://", "local")):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise QlitError(f"{where}: expected host:port of a Ray head node (e.g. 10.0.0.5:6379), or auto")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as err:
        raise QlitError(f"{where}: no Ray cluster answers there ({err.strerror or err})") from None


def forks_locally(workers: int, address: str | None, gpus: float = 0.0) -> bool:
    """Whether `run_jobs` runs the jobs in processes forked from this one: more than one worker, no Ray asked
    for (no address, no ``RAY_ADDRESS``, no GPU shares), on Linux, from a process with no other thread and no Ray
    of its own (a fork copies only the calling thread, so a lock another thread holds would stay locked)."""
    if workers < 2 or address or os.environ.get(ADDRESS_ENV) or gpus or not sys.platform.startswith("linux"):
        return False
    ray = sys.modules.get("ray")
    return threading.active_count() == 1 and not (ray is not None and ray.is_initialized())


def needs_ray(workers: int, address: str | None, gpus: float = 0.0) -> bool:
    """Whether jobs run on Ray (`run_jobs`): a cluster address (also ``RAY_ADDRESS``), GPU shares, or more than one
    worker where they cannot be forked from this process (`forks_locally`)."""
    wanted = workers > 1 or bool(address) or bool(os.environ.get(ADDRESS_ENV)) or bool(gpus)
    return wanted and not forks_locally(workers, address, gpus)


def _has_token() -> bool:
    """Whether Ray's authentication token is at hand (its environment variables or ``~/.ray/auth_token``)."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return True
    return (Path.home() / ".ray" / "auth_token").is_file()


def connect(workers: int, address: str | None, option: str) -> tuple[Any, bool]:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray with ``workers`` CPUs.

    Returns:
        Ray, and whether this call started it (and so should shut it down).
    """
    ray = ray_module(option)
    where = f"{option} {address}" if address else f"{ADDRESS_ENV}={os.environ.get(ADDRESS_ENV)}"
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address == "local":
        address = None
    if address is not None:
        _check_reachable(address, where)
    if ray.is_initialized():  # a Ray this process already joined (a notebook, a test) is used as it is
        return ray, False
    # ERROR: a local start would otherwise print Ray's notes on tokens and dashboards before every cv run
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR}
    if address is None:
        # "local": a Ray of its own on this machine, even where a `ray start` cluster is already running
        kwargs["num_cpus"] = workers
        _start_local(ray, kwargs)
        return ray, True
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as err:
        hint = "" if _has_token() else (
            " (a cluster with token authentication needs RAY_AUTH_TOKEN or ~/.ray/auth_token)"
        )
        raise QlitError(f"{where}: {str(err).splitlines()[0]}{hint}") from None
    return ray, True


def _start_local(ray: Any, kwargs: dict[str, Any]) -> None:
    """``ray.init`` of a local Ray whose every process the guard stops when this process ends, however it ends."""
    marker = f"{OWNER_ENV}={uuid.uuid4().hex}"
    before = os.environ.get(OWNER_ENV)
    os.environ[OWNER_ENV] = marker.partition("=")[2]  # Ray's processes start with this process's environment
    try:
        ray.init(address="local", **kwargs)
    finally:
        if before is None:
            os.environ.pop(OWNER_ENV, None)
        else:
            os.environ[OWNER_ENV] = before
    if sys.platform.startswith("linux"):
        _guards.append(
            subprocess.Popen(
                [sys.executable, "-c", _GUARD, marker, str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C or kill of the driver's process group leaves it to clean up
            )
        )


def shutdown(ray: Any) -> None:
    """Stop the Ray that `connect` started, and wait (bounded) until its guard has stopped every process left."""
    ray.shutdown()
    while _guards:
        guard = _guards.pop()
        guard.stdin.close()
        try:
            guard.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


def as_qlit_worker(cwd: str, threads: int | None = None) -> None:
    """Make a Ray worker run as the ``qlit`` command would: its torch threads, Lightning quiet, and the
    driver's working directory, so that relative paths in the config (data, lightning_logs) mean the same.

    Ray starts workers in folders of its own (Ray Tune: one per trial); on a node that lacks the driver's
    folder the worker stays where it is.

    Args:
        cwd: The driver's working directory.
        threads: The driver's `qlit.runtime.choose_threads`; ``None``: the same policy on this worker's
            environment (which a node of a cluster does not share with the driver).
    """
    apply_threads(threads)
    quiet_lightning()
    if os.path.isdir(cwd):
        os.chdir(cwd)


def _in_worker(fn: Callable[[Any], Any], job: Any, cwd: str, threads: int | None = None) -> Any:
    as_qlit_worker(cwd, threads)
    return fn(job)


def run_jobs(
    fn: Callable[[Any], Any],
    jobs: Sequence[Any],
    workers: int = 1,
    address: str | None = None,
    gpus_per_job: float = 0.0,
    option: str = "--workers",
) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, fn(jobs[index]))`` as jobs finish: in order when serial, as they complete on Ray.

    Args:
        fn: A module-level function (Ray sends it to the workers by reference).
        jobs: Picklable job descriptions.
        workers: Jobs run at once; 1 without an address runs them here, one after another.
        address: A Ray cluster to join (``auto``, ``host:port``); ``RAY_ADDRESS`` is used when unset.
        gpus_per_job: The GPU share each job asks Ray for (0.5: two jobs per GPU).
        option: The command-line option named in errors.
    """
    if workers < 1:
        raise QlitError(f"{option} must be at least 1, got {workers}")
    if forks_locally(workers, address, gpus_per_job):
        yield from _forked(fn, jobs, workers)
        return
    if not needs_ray(workers, address, gpus_per_job):
        for i, job in enumerate(jobs):
            yield i, fn(job)
        return
    ray, started = connect(workers, address, "--address" if address else option)
    task = ray.remote(num_cpus=1, num_gpus=gpus_per_job, max_retries=0)(_in_worker)
    threads = choose_threads()  # the driver's choice travels with each task: a node need not share its environment
    pending = {task.remote(fn, job, os.getcwd(), threads): i for i, job in enumerate(jobs)}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    # the job's own error (a QlitError is one line), not Ray's wrapper around its traceback
                    raise (err.cause if isinstance(err.cause, BaseException) else err) from None
                yield i, result
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            shutdown(ray)


def _die_with_parent(parent: int, threads: int | None) -> None:
    """A forked worker's start: SIGKILL when the driver dies (however it dies), then run as the command would."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the driver died before the line above took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the whole group: the driver alone answers it
    as_qlit_worker(os.getcwd(), threads)


def _forked(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int) -> Iterator[tuple[int, Any]]:
    """`run_jobs` on ``workers`` processes forked from this one; a failed job, a Ctrl-C or a closed generator stops
    every other job at once (the workers are killed, their run folders stay as a kill leaves them)."""
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)) or 1,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_die_with_parent,
        initargs=(os.getpid(), choose_threads()),
    )
    pending = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
    finished = False
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield pending.pop(future), future.result()
        finished = True
    finally:
        if not finished:
            pool.shutdown(wait=False, cancel_futures=True)
            for process in set(multiprocessing.active_children()) - before:
                process.kill()
        pool.shutdown(wait=True)
