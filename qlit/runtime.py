"""How many torch threads a qlit training uses: one policy for a serial run and for a Ray worker.

A job's result depends on its thread count (reductions and matrix products sum in another order with
another split of the work), so a cv fold or a tuning trial must get the same count wherever it runs.
The count therefore depends on nothing that differs between the ``qlit`` process and a Ray worker: not
on the width of the circuit nor the machine's cores, and not on ``OMP_NUM_THREADS`` as a worker sees it
(Ray sets it to the task's CPUs where the user did not). It is one thread, unless the user chose:
``QLIT_NUM_THREADS``, else ``OMP_NUM_THREADS``, as the ``qlit`` command that starts the jobs sees them;
`qlit.evaluation.runner` hands that choice to every Ray task.

One thread is also the fast choice for these networks: a training step is a few dozen tiny tensor
operations, two intra-op threads only wait on each other, and on a busy 2-core machine a step took
700 ms with torch's default threads against 21-38 ms with one. A wide circuit (many qubits) may gain
from more; set ``QLIT_NUM_THREADS`` for it, and every job, serial or on Ray, uses that many.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from qlit.errors import QlitError

THREADS_ENV = "QLIT_NUM_THREADS"
OMP_ENV = "OMP_NUM_THREADS"
DEFAULT_THREADS = 1


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
