"""Prove that building a step computes nothing.

Every route from a dask-backed xarray object to numbers (``.values``, ``np.asarray``,
``.compute()``, ``.load()``, ``float()``, ``bool()``, ``dask.compute``) asks dask's configured
scheduler to run the graph; :func:`forbid_compute` installs a scheduler that refuses. A compute
that names its scheduler explicitly (``.compute(scheduler="threads")``) bypasses the config and is
not caught: steps have no reason to do that.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import dask

T = TypeVar("T")


class ComputeForbidden(RuntimeError):
    """A dask graph was computed where only building one is allowed."""


def _refuse(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    raise ComputeForbidden(
        "a dask compute was requested inside forbid_compute(): a lazy step must not call "
        ".values, .compute(), .load(), np.asarray, float() or bool() on data"
    )


@contextlib.contextmanager
def forbid_compute() -> Iterator[None]:
    """Within this block any dask compute raises :class:`ComputeForbidden`."""
    with dask.config.set(scheduler=_refuse):
        yield


def assert_lazy(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` under :func:`forbid_compute` and return its result."""
    with forbid_compute():
        return fn(*args, **kwargs)
