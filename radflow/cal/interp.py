"""Interpolating calibration solutions in time onto data time stamps, lazily and chunk by chunk.

A solution table is small (a few dozen solution times); the data it is applied to is not. The
interpolated values are therefore never built at graph-building time: each data time chunk gets
its own task that evaluates the interpolation for its time stamps only, so memory per task is
one chunk, whatever the size of the execution block.

Convention (CASA's ``interp='linear'`` for Tsys and sky tables): linear between the two
neighbouring solution times, nearest outside the table's span. A sample is flagged when a
solution time that contributes to it (non-zero weight) is flagged.
"""

from __future__ import annotations

import math
from typing import Literal

import dask.array as da
import numba
import numpy as np
import xarray as xr

from radflow import schema

Method = Literal["linear", "nearest"]
_KNOT = "_solution_time"  # private core dim: the solution table's time axis


def time_weights(
    knots: np.ndarray, times: np.ndarray, method: Method = "linear"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour indices and weight of each time in `times` within ascending `knots` (seconds).

    Returns ``(i0, i1, w1)`` such that the interpolated value is ``(1 - w1) T[i0] + w1 T[i1]``.
    Outside ``[knots[0], knots[-1]]`` and for ``method="nearest"`` the value is the nearest knot's
    (``i0 == i1``, ``w1 == 0``). An exact hit on a knot uses that knot alone.
    """
    knots = np.asarray(knots, dtype=float)
    times = np.asarray(times, dtype=float)
    if method not in ("linear", "nearest"):
        raise ValueError(f"interp: method must be 'linear' or 'nearest', not {method!r}")
    n = knots.size
    if n == 1:
        zeros = np.zeros(times.shape, dtype=int)
        return zeros, zeros, np.zeros(times.shape)
    right = np.clip(np.searchsorted(knots, times, side="right"), 1, n - 1)
    left = right - 1
    span = knots[right] - knots[left]
    w1 = np.clip((times - knots[left]) / span, 0.0, 1.0)
    if method == "nearest":
        nearest = np.where(w1 > 0.5, right, left)
        return nearest, nearest, np.zeros(times.shape)
    # An exact hit (w1 == 0 or 1) or a time outside the span uses one knot alone.
    i0 = np.where(w1 >= 1.0, right, left)
    i1 = np.where(w1 <= 0.0, left, right)
    w1 = np.where((w1 <= 0.0) | (w1 >= 1.0), 0.0, w1)
    return i0, i1, w1


def interpolate_block(
    times: np.ndarray,
    table: np.ndarray,
    flags: np.ndarray,
    *,
    knots: np.ndarray,
    method: Method,
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate an in-memory table onto one chunk of data times.

    `times` (t, 1, ...) or (t,), unix s; `table` and `flags` (..., k) with the solution time
    axis last (`knots`, ascending). Returns value and flag, shaped (t, ...).
    """
    t = times.reshape(times.shape[0])
    i0, i1, w1 = time_weights(knots, t, method)
    v0 = np.moveaxis(table[..., i0], -1, 0)  # (t, ...)
    v1 = np.moveaxis(table[..., i1], -1, 0)
    f0 = np.moveaxis(flags[..., i0], -1, 0)
    f1 = np.moveaxis(flags[..., i1], -1, 0)
    w = w1.reshape((-1,) + (1,) * (v0.ndim - 1))
    value = (1.0 - w) * v0 + w * v1
    flag = f0 | (f1 & (w > 0))
    return value, flag


def knots(table: xr.DataArray) -> np.ndarray:
    """A solution table's times (unix s) after checking them: at least one, strictly rising."""
    values = np.asarray(table[schema.TIME].values, dtype=float)
    if values.size == 0:
        raise ValueError("interp: the solution table has no solution times")
    if np.any(np.diff(values) <= 0):
        raise ValueError("interp: solution times must be strictly increasing")
    return values


def to_times(
    table: xr.DataArray,
    flag: xr.DataArray,
    times: np.ndarray,
    time_chunks: tuple[int, ...],
    method: Method = "linear",
) -> tuple[xr.DataArray, xr.DataArray]:
    """Interpolate a solution table in time onto data times, lazily, one task per time chunk.

    Parameters
    ----------
    table, flag : xr.DataArray
        In-memory solution values and flags with dim ``time`` (the solution times, ascending,
        unix s) and any others (antenna, frequency, polarization...).
    times : np.ndarray
        The data's time stamps (unix s), in memory.
    time_chunks : tuple of int
        The data's chunking along time; the result is chunked the same way.
    method : {"linear", "nearest"}

    Returns
    -------
    (value, flag) : xr.DataArray
        Dask-backed, dims ``(time, *other dims of table)``.
    """
    target = xr.DataArray(
        da.from_array(np.asarray(times, dtype=float), chunks=(time_chunks,)), dims=schema.TIME
    )
    # One chunk per table: it is small and every data chunk needs all of it.
    table_k = table.rename({schema.TIME: _KNOT}).chunk(-1)
    flag_k = flag.rename({schema.TIME: _KNOT}).astype(bool).chunk(-1)
    value, out_flag = xr.apply_ufunc(
        interpolate_block,
        target,
        table_k,
        flag_k,
        input_core_dims=[[], [_KNOT], [_KNOT]],
        output_core_dims=[[], []],
        dask="parallelized",
        output_dtypes=[table.dtype, bool],
        kwargs={"knots": knots(table), "method": method},
    )
    order = (schema.TIME, *[d for d in table.dims if d != schema.TIME])
    return value.transpose(*order), out_flag.transpose(*order)


# ---- sums over time bins ----


# A chunk's integrations fall in a few of the (up to hundreds of) intervals: a loop over the
# non-zero weights, not a BLAS product, whose own threads (besides Dask's) took 15-20 ms per
# tiny product on a busy machine (alma_if on 0.25 GB: 0.5-0.8 s -> 0.02 s in all).
@numba.njit(cache=True, nogil=True)
def weighted_rows(weights: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """Add ``weights @ x`` to `out`: `weights` (S, T), `x` (T, K), `out` (S, K). Terms of zero
    weight are skipped; each sum runs over T in order."""
    for s in range(weights.shape[0]):
        for t in range(weights.shape[1]):
            w = weights[s, t]
            if w != 0:
                for k in range(x.shape[1]):
                    out[s, k] += w * x[t, k]


def binned_block(x: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """``onehot @ x`` along time (axis 0) for one time chunk: `onehot` (n_bins, the chunk's
    times) -> (n_bins, *x.shape[1:]), in float64 or complex128."""
    out = np.zeros((onehot.shape[0], math.prod(x.shape[1:])), np.result_type(x.dtype, onehot.dtype))
    weighted_rows(onehot, x.reshape(x.shape[0], -1), out)
    return out.reshape((onehot.shape[0], *x.shape[1:]))
