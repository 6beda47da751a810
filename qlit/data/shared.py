"""One command reads each data file once and fits each fold's preprocessing once, however many runs it builds.

``qlit cv`` builds a data module for the command itself and two per fold (the hybrid and its classical twin), and
each used to read the file and fit its fold's preprocessing again: 2k + 1 reads of the same file, two identical fits
per fold. Inside `shared_data` (the ``qlit`` command runs in one), `remembered` keeps what a read or a fit returned,
by a key that names everything it depends on, and hands out copies. Outside it nothing is kept, so a program that
changes a file between two runs in one process reads it again.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
_scopes: list[dict[tuple, Any]] = []


@contextmanager
def shared_data() -> Iterator[None]:
    """Within this block, equal reads and fits are done once (nested blocks share the outermost one's)."""
    _scopes.append(_scopes[-1] if _scopes else {})
    try:
        yield
    finally:
        _scopes.pop()


def remembered(key: tuple, compute: Callable[[], T]) -> T:
    """``compute()``, or a copy of what it returned for ``key`` earlier in the same `shared_data` block."""
    if not _scopes:
        return compute()
    kept = _scopes[-1]
    if key not in kept:
        kept[key] = compute()  # an error is raised, not kept: the next call tries again
    return _copy(kept[key])


def _copy(value: Any) -> Any:
    """A deep copy, except that a list of str is copied as a list (its items are immutable).

    A PLINK fold's state holds three lists of its ~815k kept SNPs' ids and alleles: copied item by item they
    took 0.44 s per data module, as lists 0.10 s.
    """
    if type(value) is list and all(type(item) is str for item in value):
        return list(value)
    if type(value) is tuple:
        return tuple(_copy(item) for item in value)
    if type(value) is dict:
        return {key: _copy(item) for key, item in value.items()}
    return copy.deepcopy(value)


def array_key(array: np.ndarray) -> tuple:
    """A key for an array's exact contents: shape, dtype and SHA-256 of its bytes."""
    array = np.ascontiguousarray(array)
    return array.shape, str(array.dtype), hashlib.sha256(array.tobytes()).hexdigest()
