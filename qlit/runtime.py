"""Process policy for every qlit process (the command, a DDP rank, a Ray worker): threads, logging, DDP timeout.

Threads: one policy for a serial run and for a Ray worker.

A job's result depends on its thread count (reductions and matrix products sum in another order with
another split of the work), so a cv fold or a tuning trial must get the same count wherever it runs.
The count therefore depends on nothing that differs between the ``qlit`` process and a Ray worker: not
on the width of the circuit nor the machine's cores, and not on ``OMP_NUM_THREADS`` as a worker sees it
(Ray sets it to the task's CPUs where the user did not). It is one thread, unless the user chose:
``QLIT_NUM_THREADS``, else ``OMP_NUM_THREADS``, as the ``qlit`` command that starts the jobs sees them;
`qlit.engine.runner` hands that choice to every Ray task.

One thread is also the fast choice for these networks: a training step is a few dozen tiny tensor
operations, two intra-op threads only wait on each other, and on a busy 2-core machine a step took
700 ms with torch's default threads against 21-38 ms with one. A wide circuit (many qubits) may gain
from more; set ``QLIT_NUM_THREADS`` for it, and every job, serial or on Ray, uses that many.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import warnings
from collections.abc import Mapping
from datetime import timedelta

from qlit.errors import QlitError

THREADS_ENV = "QLIT_NUM_THREADS"
OMP_ENV = "OMP_NUM_THREADS"
DEFAULT_THREADS = 1
DEBUG_ENV = "QLIT_DEBUG"
DDP_TIMEOUT_ENV = "QLIT_DDP_TIMEOUT"
# A CPU DDP peer that stops answering fails the job after this long (torch's default is 30 minutes).
DDP_CPU_TIMEOUT_S = 300
QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric")


def chosen_threads(environ: Mapping[str, str] | None = None) -> int | None:
    """The thread count the user chose (``QLIT_NUM_THREADS``, else ``OMP_NUM_THREADS``), or ``None``.

    Args:
        environ: The environment to read (default: this process's).

    Raises:
        QlitError: the variable is set to something other than a positive integer.
    """
    environ = os.environ if environ is None else environ
    for name in (THREADS_ENV, OMP_ENV):
        value = environ.get(name)
        if not value:
            continue
        try:
            threads = int(value)
        except ValueError:
            raise QlitError(f"{name} must be a positive integer, got {value!r}") from None
        if threads < 1:
            raise QlitError(f"{name} must be a positive integer, got {value!r}")
        return threads
    return None


def choose_threads(chosen: int | None = None) -> int:
    """The torch thread count of a qlit training: ``chosen`` (the user's, see `chosen_threads`), else one.

    Args:
        chosen: The user's choice as the ``qlit`` command saw it; ``None``: read this process's environment,
            which in a Ray worker is the same where the task did not carry the choice (see module docstring).
    """
    if chosen is None:
        chosen = chosen_threads()
    return DEFAULT_THREADS if chosen is None else chosen


def apply_threads(chosen: int | None = None) -> int:
    """Set torch's intra-op threads by `choose_threads` and return the count."""
    import torch

    threads = choose_threads(chosen)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def debugging() -> bool:
    """Whether ``QLIT_DEBUG`` asks for tracebacks and Lightning's own messages."""
    return bool(os.environ.get(DEBUG_ENV))


def ddp_timeout() -> timedelta:
    """How long a CPU DDP collective waits for a peer: ``QLIT_DDP_TIMEOUT`` seconds, else `DDP_CPU_TIMEOUT_S`."""
    return timedelta(seconds=float(os.environ.get(DDP_TIMEOUT_ENV, DDP_CPU_TIMEOUT_S)))


def quiet_lightning() -> dict[str, int]:
    """Keep Lightning's INFO lines and known, harmless warnings out of qlit's output (not with ``QLIT_DEBUG``).

    Called by the ``qlit`` command and by every Ray worker that trains for it.

    Returns:
        The loggers' levels before, for a caller that restores them (`restore_loggers`).
    """
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    # Lightning 2.6's own pytree helper trips torch 2.13's LeafSpec deprecation once per trainer.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # qlit logs epoch metrics that torchmetrics already reduced over processes, in a hook every rank runs; a
    # sync_dist on them would be a second, lazy collective that a rank-0-only callback (the progress bar) could reach.
    warnings.filterwarnings(
        "ignore", message=r"It is recommended to use `self.log\('((train|val|test)_(loss|acc)|quantum_grad_\w+)'"
    )
    # qlit logs once per epoch, so the logging interval of steps does not apply to it.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")
    # Said on every resume; a new fit into a folder with checkpoints is refused before it starts (preflight).
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    if not debugging():
        # Lightning's INFO lines (seed, GPU/TPU availability, tips) would stand before qlit's own messages.
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    # TensorBoard's writer thread dies on a full disk with a traceback of its own; the main thread meets the
    # same error at the next flush and reports it in one line.
    threading.excepthook = _quiet_about_full_disk
    return levels


def restore_loggers(levels: Mapping[str, int]) -> None:
    """Give the loggers `quiet_lightning` changed their earlier levels back (qlit called in-process)."""
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _quiet_about_full_disk(args: threading.ExceptHookArgs) -> None:
    if not (isinstance(args.exc_value, OSError) and args.exc_value.errno == errno.ENOSPC):
        threading.__excepthook__(args)
