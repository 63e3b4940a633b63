"""applycal: apply antenna-based solution tables to interferometer visibilities, lazily.

For a visibility ``V_ij`` of correlation ``pq`` (receptors p of antenna i, q of antenna j)::

    G, T, B tables:   V'  = V / (g_ip conj(g_jq))        w' = w |g_ip|^2 |g_jq|^2   (calwt)
    TSYS tables:      V'  = V sqrt(T_ip T_jq)            w' = w / (T_ip T_jq)       (calwt)

With several tables the corrections multiply. For B tables the weight factor is the channel mean
of ``|g_ip|^2 |g_jq|^2`` (CASA's choice: weights stay smooth across the band). T tables hold one
gain shared by both receptors.

Interpolation
-------------
In time (per antenna, channel, receptor): amplitude and unwrapped phase separately, ``linear``
between solution times (a sample is flagged when a neighbour it uses is flagged) or ``nearest``;
nearest outside the table's span (:mod:`radflow.cal.interp`). In frequency: one-channel (G/T)
solutions apply to every channel; per-channel solutions are interpolated linearly in amplitude
and phase onto the data's channel frequencies, nearest beyond the solution's band edges.

Modes (CASA ``applymode``)
--------------------------
``calflag`` (default): data whose solution is flagged are flagged. ``calonly``: no flags are
added; data whose solution is flagged are left uncorrected by that table. ``calflagstrict``: as
``calflag``, and data with no solution at all (the table has no solution for the spw or the
selected fields) are flagged instead of being an error.

A solution table is a ``Mapping[int, xr.Dataset]`` keyed by spectral-window id, in the layout of
:mod:`radflow.schema` ("Interferometer solution tables"); solutions may be dask-backed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr

from radflow import schema
from radflow.cal import interp
from radflow.step import (
    add_data_group,
    coord_values,
    describe_partition,
    get_data_group,
    register_step,
)

SolutionTable = Mapping[int, xr.Dataset]
ApplyMode = Literal["calflag", "calonly", "calflagstrict"]
APPLY_MODES = ("calflag", "calonly", "calflagstrict")


class ApplyError(ValueError):
    """A table cannot be applied to a partition (no solutions for its spw, bad parameters)."""


@dataclass(frozen=True)
class Correction:
    """Per (time, baseline_id, frequency, polarization), lazily: multiply the visibilities by
    `factor` and the weights by `weight_factor`; `flag` marks data whose solution is flagged or
    missing (what a mode does with it is up to the caller)."""

    factor: xr.DataArray
    weight_factor: xr.DataArray
    flag: xr.DataArray


def _spw_id(ds: xr.Dataset) -> int:
    return int(ds.attrs[schema.ATTR_PARTITION_INFO][schema.PI_SPW_ID])


def _receptor_index(solution: xr.Dataset, pols: Sequence[str], where: str) -> tuple[list, list]:
    """Index into the solution's receptor axis of each correlation's first and second letter."""
    receptors = [str(r) for r in solution[schema.RECEPTOR].values]
    if len(receptors) == 1:  # T: one gain shared by both receptors
        return [0] * len(pols), [0] * len(pols)
    first, second = [], []
    for pol in pols:
        try:
            first.append(receptors.index(pol[0]))
            second.append(receptors.index(pol[-1]))
        except ValueError:
            raise ApplyError(
                f"{where}: correlation {pol} needs receptors the table does not have ({receptors})"
            ) from None
    return first, second


def _select_fields(solution: xr.Dataset, gainfield: Sequence[str], where: str) -> xr.Dataset:
    if not gainfield:
        return solution
    fields = coord_values(solution, schema.FIELD_NAME).astype(str)
    keep = np.isin(fields, list(gainfield))
    return solution.isel({schema.TIME: np.flatnonzero(keep)})


def _on_frequencies(values: xr.DataArray, flags: xr.DataArray, freqs: np.ndarray):
    """Solution values/flags (frequency axis of 1 or of the table's channels) on `freqs`."""
    sol_freq = np.asarray(values[schema.FREQUENCY].values, dtype=float)
    if sol_freq.size == 1:
        return values.isel({schema.FREQUENCY: 0}), flags.isel({schema.FREQUENCY: 0})
    order = np.argsort(sol_freq)
    i0, i1, w1 = interp.time_weights(sol_freq[order], freqs, "linear")
    i0, i1 = order[i0], order[i1]
    dim = schema.FREQUENCY
    w = xr.DataArray(w1, dims=dim)
    v0 = values.isel({dim: i0}).drop_vars(dim)
    v1 = values.isel({dim: i1}).drop_vars(dim)
    f0 = flags.isel({dim: i0}).drop_vars(dim)
    f1 = flags.isel({dim: i1}).drop_vars(dim)
    return (1 - w) * v0 + w * v1, f0 | (f1 & (w > 0))


def _antenna_values(
    solution: xr.Dataset, ds: xr.Dataset, interp_method: str, where: str
) -> tuple[xr.DataArray, xr.DataArray]:
    """The solution on the data's times and channels: (time, antenna_name, [frequency],
    receptor) complex gains (or real Tsys) and flags, lazily."""
    times = coord_values(ds, schema.TIME).astype(float)
    time_chunks = ds[schema.VISIBILITY].chunksizes.get(schema.TIME, (times.size,))
    param = solution[schema.CALIBRATION_PARAMETER]
    flag = solution[schema.FLAG].astype(bool)
    if np.issubdtype(param.dtype, np.complexfloating):
        amp = np.abs(param)
        angle = xr.apply_ufunc(np.angle, param, dask="allowed")
        axis = param.dims.index(schema.TIME)
        if isinstance(angle.data, da.Array):
            unwrapped = angle.data.rechunk({axis: -1}).map_blocks(np.unwrap, axis=axis)
        else:
            unwrapped = np.unwrap(angle.data, axis=axis)
        phase = angle.copy(data=unwrapped)
        amp_t, flag_t = interp.to_times(amp, flag, times, time_chunks, interp_method)
        phase_t, _ = interp.to_times(phase, flag, times, time_chunks, interp_method)
        freqs = coord_values(ds, schema.FREQUENCY).astype(float)
        amp_f, flag_f = _on_frequencies(amp_t, flag_t, freqs)
        phase_f, _ = _on_frequencies(phase_t, flag_t, freqs)
        return amp_f * np.exp(1j * phase_f), flag_f
    value_t, flag_t = interp.to_times(param, flag, times, time_chunks, interp_method)
    return _on_frequencies(value_t, flag_t, coord_values(ds, schema.FREQUENCY).astype(float))


def correction(
    ds: xr.Dataset,
    table: SolutionTable,
    *,
    interp_method: interp.Method = "linear",
    spwmap: Mapping[int, int] | None = None,
    gainfield: Sequence[str] = (),
) -> Correction | None:
    """The correction one table makes to one visibility partition, lazily.

    Returns None when the table has no solution for the partition's spw (after `spwmap`) or
    none for the `gainfield` fields; callers decide whether that is an error.
    """
    where = f"applycal: partition {describe_partition(ds)}"
    spw = _spw_id(ds)
    table_spw = (spwmap or {}).get(spw, spw)
    if table_spw not in table:
        return None
    solution = _select_fields(table[table_spw], gainfield, where)
    if solution.sizes[schema.TIME] == 0:
        return None
    cal_type = solution.attrs.get(schema.ATTR_CAL_TYPE)
    pols = [str(p) for p in coord_values(ds, schema.POLARIZATION)]
    first, second = _receptor_index(solution, pols, where)
    values, flags = _antenna_values(solution, ds, interp_method, where)
    names = [str(a) for a in values[schema.ANTENNA_NAME].values]
    ant1 = coord_values(ds, schema.BASELINE_ANTENNA1_NAME).astype(str)
    ant2 = coord_values(ds, schema.BASELINE_ANTENNA2_NAME).astype(str)
    missing = sorted((set(ant1) | set(ant2)) - set(names))
    if missing:
        raise ApplyError(f"{where}: the {cal_type} table has no antenna(s) {missing}")
    index = {n: k for k, n in enumerate(names)}
    bl = schema.BASELINE_ID
    pol = schema.POLARIZATION

    def pick(arr: xr.DataArray, ants: np.ndarray, receptors: list[int]) -> xr.DataArray:
        out = arr.isel(
            {
                schema.ANTENNA_NAME: xr.DataArray([index[a] for a in ants], dims=bl),
                schema.RECEPTOR: xr.DataArray(receptors, dims=pol),
            }
        )
        return out.drop_vars([schema.ANTENNA_NAME, schema.RECEPTOR], errors="ignore")

    g1, g2 = pick(values, ant1, first), pick(values, ant2, second)
    flag = pick(flags, ant1, first) | pick(flags, ant2, second)
    # a flagged solution contributes no correction (its values are not meant to be used)
    if cal_type == schema.CAL_TYPE_TSYS:
        product = xr.where(flag, 1.0, g1 * g2)
        factor, weight_factor = np.sqrt(product), 1.0 / product
    else:
        product = xr.where(flag, 1.0, g1 * np.conj(g2))
        factor = 1.0 / product
        weight_factor = np.abs(product) ** 2
        if cal_type in (schema.CAL_TYPE_B, schema.CAL_TYPE_BPOLY):
            weight_factor = weight_factor.mean(schema.FREQUENCY)
    dims = (schema.TIME, bl, schema.FREQUENCY, pol)
    data_dims = [d for d in dims if d in factor.dims]
    return Correction(
        factor=factor.transpose(*data_dims),
        weight_factor=weight_factor.transpose(*[d for d in dims if d in weight_factor.dims]),
        flag=flag.transpose(*[d for d in dims if d in flag.dims]),
    )


@register_step("applycal")
def apply(
    ds: xr.Dataset,
    tables: Sequence[SolutionTable],
    *,
    group: str = schema.GROUP_BASE,
    output: str = schema.GROUP_CORRECTED,
    interp: str | Sequence[str] = "linear",
    spwmap: Sequence[Mapping[int, int] | None] | None = None,
    gainfield: Sequence[Sequence[str]] | None = None,
    calwt: bool | Sequence[bool] = True,
    applymode: ApplyMode = "calflag",
) -> xr.Dataset:
    """Apply solution tables to one visibility partition: a new data group (CASA ``applycal``).

    Parameters
    ----------
    ds : xr.Dataset
        A visibility partition; nothing is computed.
    tables : sequence of solution tables
        G, T, B (complex gains) and TSYS (K) tables, applied in order (corrections multiply).
    group, output : str
        Input data group and the new group (default ``corrected``, i.e. ``VISIBILITY_CORRECTED``).
        The output keeps the input's units.
    interp : str or one per table
        ``"linear"`` or ``"nearest"`` in time.
    spwmap : one mapping per table, optional
        Data spw id -> the table spw whose solutions to use (CASA's spwmap as a dict).
    gainfield : one list of field names per table, optional
        Use only solutions from these fields (empty: all).
    calwt : bool or one per table
        Scale the weights (see the module docstring).
    applymode : {"calflag", "calonly", "calflagstrict"}

    Raises
    ------
    ApplyError
        A table without solutions for this partition's spw/fields (except ``calflagstrict``),
        an unknown applymode, parameter lists of the wrong length, or antennas missing.
    """
    where = f"applycal: partition {describe_partition(ds)}"
    if applymode not in APPLY_MODES:
        raise ApplyError(f"{where}: applymode must be one of {APPLY_MODES}, got {applymode!r}")
    n = len(tables)

    def per_table(value, name):
        if isinstance(value, str | bool) or value is None:
            return [value] * n
        value = list(value)
        if len(value) != n:
            raise ApplyError(f"{where}: {name} has {len(value)} entries for {n} tables")
        return value

    interps = per_table(interp, "interp")
    spwmaps = per_table(spwmap, "spwmap") if spwmap is not None else [None] * n
    fields = per_table(gainfield, "gainfield") if gainfield is not None else [()] * n
    calwts = per_table(calwt, "calwt")
    src = get_data_group(ds, group)
    data, weight = src.data, src.weight
    flag = src.flag
    for k, table in enumerate(tables):
        corr = correction(
            ds, table, interp_method=interps[k], spwmap=spwmaps[k], gainfield=fields[k] or ()
        )
        if corr is None:
            if applymode != "calflagstrict":
                raise ApplyError(
                    f"{where}: table {k} has no solutions for spw {_spw_id(ds)}"
                    + (f" and fields {list(fields[k])}" if fields[k] else "")
                    + " (give spwmap/gainfield, or applymode='calflagstrict' to flag such data)"
                )
            flag = flag | True
            continue
        data = data * corr.factor.astype(np.result_type(data.dtype, np.complex64))
        if calwts[k]:
            weight = weight * corr.weight_factor
        if applymode != "calonly":
            flag = flag | corr.flag
    dims = src.data.dims
    return add_data_group(
        ds,
        output,
        data=data.transpose(*dims).astype(src.data.dtype),
        flag=flag.transpose(*dims),
        weight=weight.transpose(*dims).astype(src.weight.dtype),
        units=src.units,
        description=f"data group {group!r} with {n} solution table(s) applied (step applycal)",
        from_group=group,
    )
