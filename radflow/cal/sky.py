"""sky: OFF (reference) spectra for single-dish calibration (CASA ``sdcal(calmode='ps' |
'otfraster' | 'otf')``).

Which integrations are OFF:

- ``ps``: the integrations with intent ``OBSERVE_TARGET#OFF_SOURCE`` (their own partitions).
- ``otfraster``: in each raster row (rows split where the time gap exceeds 5x the median gap),
  the first and last n integrations; n = `noff` if given, else ``floor(N * fraction)`` (CASA's
  default ``fraction=0.1``), else (``fraction=None``) ``max(1, int(sqrt(N + 1) - 1))``; at
  least 1. A row with ``2n >= N`` is refused.
- ``otf``: the periphery of the mapped area: pointings are gridded on cells of the median step
  between consecutive pointings, and the outermost occupied cells are peeled, layer by layer,
  until at least `fraction` of the integrations are marked (CASA's algorithm, simplified to
  4-connected edges).

OFF integrations are averaged per contiguous block (a run of OFF integrations without a time
gap larger than 1.5 integrations), weighted by exposure (``EFFECTIVE_INTEGRATION_TIME``), over
unflagged samples. DESIGN.md says "per scan"; a ps scan of ALMA holds several OFF sub-scans
(OFF ON OFF ON OFF), and averaging per block keeps the interpolation in time between them,
which follows gain drifts within a scan (``average="scan"`` gives the per-scan average). The
block's time is the mean of its integrations' time stamps.

The solution is a lazy dataset per (spw, antenna): ``CALIBRATION_PARAMETER`` (the OFF spectrum,
in the data's units), ``FLAG`` (True where a block had no good sample) and ``EXPOSURE`` (s),
dims ``(time, antenna_name, frequency, polarization)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr

from radflow import schema
from radflow.cal import interp
from radflow.lazy import sum_blocks
from radflow.step import coord_values, describe_partition, get_data_group

Mode = Literal["ps", "otfraster", "otf"]
Average = Literal["block", "scan"]


class SkyError(ValueError):
    """No usable OFF data for a partition."""


def _median_step(times: np.ndarray) -> float:
    steps = np.diff(np.sort(times))
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else 1.0


def contiguous_blocks(times: np.ndarray, gap: float | None = None) -> np.ndarray:
    """Label runs of time stamps (unix s) separated by gaps larger than `gap` (s).

    `gap` defaults to 1.5x the median step. Returns one int label per time, 0, 1, ...
    """
    times = np.asarray(times, dtype=float)
    if times.size == 0:
        return np.zeros(0, dtype=int)
    gap = 1.5 * _median_step(times) if gap is None else gap
    return np.concatenate([[0], np.cumsum(np.diff(times) > gap)]).astype(int)


def raster_rows(times: np.ndarray) -> np.ndarray:
    """Raster row of each integration: rows split where the gap exceeds 5x the median gap."""
    return contiguous_blocks(times, gap=5.0 * _median_step(times))


def n_off_per_edge(n: int, fraction: float | None = 0.1, noff: int | None = None) -> int:
    """Number of OFF integrations at each end of a raster row of `n` integrations (CASA rules)."""
    if noff is not None and noff > 0:
        count = int(noff)
    elif fraction is not None:
        if not 0.0 < fraction < 0.5:
            raise ValueError(f"sky: fraction must be in (0, 0.5), got {fraction}")
        count = max(1, math.floor(n * fraction + 1e-9))
    else:
        count = max(1, int(math.sqrt(n + 1) - 1))
    return count


def otfraster_off(
    times: np.ndarray, fraction: float | None = 0.1, noff: int | None = None, where: str = ""
) -> np.ndarray:
    """OFF mask for OTF raster data: the first and last n integrations of each raster row.

    Raises
    ------
    SkyError
        If a row is too short (``2n >= N``).
    """
    rows = raster_rows(times)
    off = np.zeros(times.size, dtype=bool)
    for row in np.unique(rows):
        idx = np.flatnonzero(rows == row)
        n = n_off_per_edge(idx.size, fraction, noff)
        if 2 * n >= idx.size:
            raise SkyError(
                f"sky otfraster: {where}raster row {row} has {idx.size} integrations; "
                f"{n} OFF at each end leave no ON data (lower fraction/noff)"
            )
        off[idx[:n]] = True
        off[idx[-n:]] = True
    return off


def otf_off(offsets: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """OFF mask for OTF data: the periphery of the mapped area.

    Parameters
    ----------
    offsets : np.ndarray
        (n, 2) pointing offsets (rad), e.g. (RA cos Dec, Dec) relative to the map centre.
    fraction : float
        The fraction of integrations to mark at least (peeling stops at the layer reaching it).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"sky otf: fraction must be in (0, 1), got {fraction}")
    steps = np.hypot(*np.diff(offsets, axis=0).T)
    steps = steps[steps > 0]
    cell = float(np.median(steps)) if steps.size else 1.0
    ij = np.floor((offsets - offsets.min(axis=0)) / cell).astype(int)
    occupied = {tuple(c) for c in ij}
    marked_cells: set[tuple[int, int]] = set()
    off = np.zeros(len(offsets), dtype=bool)
    while occupied and off.mean() < fraction:
        edge = {
            (i, j)
            for i, j in occupied
            if any(n not in occupied for n in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)))
        }
        marked_cells |= edge
        occupied -= edge
        off = np.array([tuple(c) in marked_cells for c in ij])
    return off


def _off_partial(
    data: np.ndarray, flag: np.ndarray, tau: np.ndarray, onehot: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One time chunk's sums per OFF block: exposure-weighted data, the weights (tau where the
    sample is usable) and the exposure; `onehot` is (blocks, the chunk's times)."""
    good = ~flag & np.isfinite(data)
    weight = np.where(good, tau, 0.0)
    return tuple(  # type: ignore[return-value]
        interp.binned_block(x, onehot) for x in (np.where(good, data, 0.0) * weight, weight, tau)
    )


def _off_finish(
    sums: tuple[np.ndarray, ...], dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    numerator, denominator, exposure = sums
    with np.errstate(invalid="ignore", divide="ignore"):
        off = np.where(denominator > 0, numerator / denominator, np.nan).astype(dtype)
    return off, denominator <= 0, exposure


def _block_average(ds: xr.Dataset, group: str, labels: np.ndarray, where: str) -> xr.Dataset:
    """Exposure-weighted average of the integrations sharing a label >= 0 (lazy).

    One task per time chunk sums its integrations per block, and :func:`radflow.lazy.sum_blocks`
    adds the chunks' sums and divides: the array operations this replaces cost more to build,
    per partition, than they take to run.
    """
    src = get_data_group(ds, group)
    times = coord_values(ds, schema.TIME).astype(float)
    blocks = np.unique(labels[labels >= 0])
    if blocks.size == 0:
        raise SkyError(f"sky: {where}: no OFF integrations")
    onehot = (labels[None, :] == blocks[:, None]).astype(float)  # (block, time)
    dims = src.data.dims
    if dims[0] != schema.TIME:
        raise SkyError(f"sky: {where}: time must be the data's first dimension, not {dims}")
    tau = ds[schema.EFFECTIVE_INTEGRATION_TIME]
    exposure_dims = tuple(d for d in dims if d in tau.dims)
    tau_full = tau.transpose(*exposure_dims).data[
        tuple(slice(None) if d in tau.dims else None for d in dims)
    ]
    # time chunks only: the other dims of an OFF partition are small
    whole = {axis: -1 for axis in range(1, len(dims))}
    data, flag, tau_full = (
        da.asarray(x).rechunk({0: src.data.chunks[0] if src.data.chunks else -1, **whole})
        for x in (src.data.data, src.flag.data, tau_full)
    )
    starts = np.cumsum((0, *data.chunks[0]))
    zeros = (0,) * (len(dims) - 1)
    tasks = [
        (
            _off_partial,
            (data.name, i, *zeros),
            (flag.name, i, *zeros),
            (tau_full.name, i, *zeros),
            onehot[:, starts[i] : starts[i + 1]],
        )
        for i in range(len(data.chunks[0]))
    ]
    n_blocks = blocks.size
    off, off_flag, exposure = sum_blocks(
        tasks,
        [data, flag, tau_full],
        finish=partial(_off_finish, dtype=np.dtype(src.data.dtype)),
        outputs=[
            ((n_blocks, *data.shape[1:]), src.data.dtype),
            ((n_blocks, *data.shape[1:]), bool),
            ((n_blocks, *tau_full.shape[1:]), np.float64),
        ],
        name="sky-off",
    )
    # the exposure was summed with size-1 axes for the data's other dims; drop those
    exposure = exposure[tuple(slice(None) if d in exposure_dims else 0 for d in dims)]
    coords = {
        name: coord.variable
        for name, coord in src.data.coords.items()
        if schema.TIME not in coord.dims
    }
    coords[schema.TIME] = (schema.TIME, (onehot @ times) / onehot.sum(axis=1))
    return xr.Dataset(
        {
            schema.CALIBRATION_PARAMETER: (
                dims,
                off,
                {schema.ATTR_UNITS: src.units, "long_name": "OFF spectrum"},
            ),
            schema.FLAG: (dims, off_flag),
            schema.EXPOSURE: (exposure_dims, exposure, {schema.ATTR_UNITS: "s"}),
        },
        coords=coords,
    )


def _concat_in_time(pieces: list[xr.Dataset], mode: str) -> xr.Dataset:
    """The partitions' OFF blocks as one table, time ascending (``xr.concat`` and ``sortby``
    with dask's concatenate, for pieces that share all but time by construction)."""
    first = pieces[0]
    for piece in pieces[1:]:
        for name, coord in first.coords.items():
            if schema.TIME not in coord.dims and not coord.equals(piece.coords.get(name)):
                raise SkyError(f"sky ({mode}): the partitions differ in coordinate {name!r}")
    times = np.concatenate([p[schema.TIME].values for p in pieces])
    order = np.argsort(times, kind="stable")
    ordered = bool(np.all(order == np.arange(times.size)))
    variables = {}
    for name, var in first.data_vars.items():
        data = da.concatenate([p[name].data for p in pieces], axis=var.dims.index(schema.TIME))
        if not ordered:
            data = da.take(data, order, axis=var.dims.index(schema.TIME))
        variables[name] = xr.Variable(var.dims, data, var.attrs)
    coords = {name: c.variable for name, c in first.coords.items() if schema.TIME not in c.dims}
    coords[schema.TIME] = xr.Variable(schema.TIME, times[order])
    return xr.Dataset(variables, coords=coords)


def solve(
    partitions: Sequence[xr.Dataset],
    *,
    mode: Mode = "ps",
    group: str = schema.GROUP_BASE,
    fraction: float | None = 0.1,
    noff: int | None = None,
    average: Average = "block",
    pointing: Sequence[np.ndarray] | None = None,
) -> xr.Dataset:
    """OFF spectra of one antenna and spw, lazily averaged per OFF block.

    Parameters
    ----------
    partitions : sequence of xr.Dataset
        ``ps``: the OFF_SOURCE partitions of the antenna/spw; ``otfraster``/``otf``: the
        ON_SOURCE partitions (their edges are the OFF).
    mode : {"ps", "otfraster", "otf"}
    group : str
        Data group to average (raw counts, the ``base`` group, normally).
    fraction, noff : see module docstring.
    average : {"block", "scan"}
        ``ps`` only: average per contiguous OFF block (default) or per partition (scan).
    pointing : sequence of np.ndarray, optional
        ``otf`` only: per partition, (n_time, 2) pointing offsets (rad) at the data times.

    Returns
    -------
    xr.Dataset
        ``CALIBRATION_PARAMETER`` (OFF, data units), ``FLAG``, ``EXPOSURE`` (s); dims ``(time,
        antenna_name, frequency, polarization)``, time ascending (unix s).
    """
    if mode not in ("ps", "otfraster", "otf"):
        raise ValueError(f"sky: mode must be 'ps', 'otfraster' or 'otf', not {mode!r}")
    if not partitions:
        raise SkyError(f"sky ({mode}): no partitions given")
    pieces = []
    for k, ds in enumerate(partitions):
        where = f"partition {describe_partition(ds)}"
        times = coord_values(ds, schema.TIME).astype(float)
        if mode == "ps":
            labels = (
                np.zeros(times.size, dtype=int) if average == "scan" else contiguous_blocks(times)
            )
        else:
            if mode == "otfraster":
                off = otfraster_off(times, fraction, noff, where=f"{where}: ")
            else:
                if pointing is None:
                    raise SkyError("sky otf: pointing offsets are required")
                off = otf_off(np.asarray(pointing[k]), 0.1 if fraction is None else fraction)
            blocks = contiguous_blocks(times)
            # A raster row's start and end are separate OFF blocks even without a time gap.
            run = np.concatenate([[0], np.cumsum(np.diff(off.astype(int)) != 0)])
            labels = np.where(off, blocks * times.size + run, -1)
        pieces.append(_block_average(ds, group, labels, where))
    solution = _concat_in_time(pieces, mode)
    first = partitions[0]
    info = first.attrs.get(schema.ATTR_PARTITION_INFO) or {}
    return solution.assign_attrs(
        {
            schema.ATTR_TYPE: schema.TYPE_CALIBRATION_SOLUTION,
            schema.ATTR_CAL_TYPE: schema.CAL_TYPE_SKY,
            schema.ATTR_SKY_MODE: mode,
            schema.ATTR_SPW_ID: info.get(schema.PI_SPW_ID),
            schema.ATTR_ANTENNA_NAME: [str(a) for a in coord_values(first, schema.ANTENNA_NAME)],
            "average": "per contiguous OFF block" if average == "block" else "per scan",
        }
    )
