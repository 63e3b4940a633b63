"""applycal: apply antenna-based solution tables to interferometer visibilities, lazily.

For a visibility ``V_ij`` of correlation ``pq`` (receptors p of antenna i, q of antenna j)::

    G, T, B tables:   V'  = V / (g_ip conj(g_jq))        w' = w |g_ip|^2 |g_jq|^2   (calwt)
    TSYS tables:      V'  = V sqrt(T_ip T_jq)            w' = w / (T_ip T_jq)       (calwt)

With several tables the corrections multiply. For B and BPOLY tables the weight factor is
``<|B_ip|^2> <|B_jq|^2>``, each the mean over that antenna's unflagged channels (CASA's choice:
weights stay smooth across the band). T tables hold one gain shared by both receptors.

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

import functools
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
import xarray as xr
from numba import types
from numba.extending import overload

from radflow import schema
from radflow.cal import interp
from radflow.lazy import Output, apply_blocks
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

    factor: xr.Variable
    weight_factor: xr.Variable
    flag: xr.Variable


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


_KNOT, _SOL_ANT, _SOL_FREQ, _SOL_REC = "_knot", "_antenna", "_solution_frequency", "_receptor"


@dataclass(frozen=True)
class _KernelTable:
    """One table spw's solutions (of some fields) as the correction kernel takes them."""

    solution: xr.Dataset  # the selected solutions
    knots: xr.DataArray  # (knot,) solution times, s
    values: xr.DataArray  # (knot, antenna, frequency, receptor)
    flags: xr.DataArray
    antennas: list[str]
    frequency: np.ndarray  # Hz
    cal_type: str | None


# Kernel tables by (id of the table spw's dataset, gainfield). Every partition of a spw applies
# the same tables: reshaping them once per partition was most of applycal's graph-building
# time. An entry lives as long as its dataset (weakref), so an id is never reused stale.
_KERNEL_TABLES: dict[tuple[int, tuple[str, ...]], tuple[weakref.ref, _KernelTable | None]] = {}


def _kernel_table(
    selected: xr.Dataset, gainfield: tuple[str, ...], where: str
) -> _KernelTable | None:
    """The kernel's form of `selected` (one table spw) restricted to `gainfield`; None when
    no solution is left."""
    key = (id(selected), gainfield)
    hit = _KERNEL_TABLES.get(key)
    if hit is not None and hit[0]() is selected:
        return hit[1]
    solution = _select_fields(selected, gainfield, where)
    table = None
    if solution.sizes[schema.TIME] > 0:
        # CASA's solution times (the solve-weighted mean) where the solver recorded them
        if schema.TIME_CENTROID in solution:
            knots = solution[schema.TIME_CENTROID]
        else:
            knots = solution[schema.TIME]
        knots = knots.reset_coords(drop=True).rename({schema.TIME: _KNOT}).astype(float)
        if knots.chunks is not None:
            knots = knots.chunk(-1)
        dims = (schema.TIME, schema.ANTENNA_NAME, schema.FREQUENCY, schema.RECEPTOR)
        sol_dims = dict(zip(dims, (_KNOT, _SOL_ANT, _SOL_FREQ, _SOL_REC), strict=True))
        values = solution[schema.CALIBRATION_PARAMETER].transpose(*dims)
        flags = solution[schema.FLAG].transpose(*dims).astype(bool)
        values = values.rename(sol_dims).drop_vars(list(solution.coords), errors="ignore")
        flags = flags.rename(sol_dims).drop_vars(list(solution.coords), errors="ignore")
        if values.chunks is not None:
            values, flags = values.chunk(-1), flags.chunk(-1)
        table = _KernelTable(
            solution=solution,
            knots=knots,
            values=values,
            flags=flags,
            antennas=[str(a) for a in solution[schema.ANTENNA_NAME].values],
            frequency=np.asarray(solution[schema.FREQUENCY].values, dtype=float),
            cal_type=solution.attrs.get(schema.ATTR_CAL_TYPE),
        )
    forget = functools.partial(_KERNEL_TABLES.pop, key, None)
    _KERNEL_TABLES[key] = (weakref.ref(selected, lambda _: forget()), table)
    return table


def _frequency_weights(sol_freq: np.ndarray, freqs: np.ndarray):
    """Neighbour indices and weight of each data channel among the solution's channels
    (linear, nearest beyond the edges); a one-channel solution applies to every channel."""
    if sol_freq.size == 1:
        zeros = np.zeros(1, dtype=int)
        return zeros, zeros, np.zeros(1)
    order = np.argsort(sol_freq)
    i0, i1, w1 = interp.time_weights(sol_freq[order], freqs, "linear")
    return order[i0], order[i1], w1


def _reciprocal(x: complex) -> complex:
    """``1 / x`` of a single-precision number, computed in double precision (then rounded
    correctly when stored as single); compiled forms below."""
    return 1 / x


@overload(_reciprocal)
def _reciprocal_compiled(x):  # unannotated: numba matches it to the implementations
    if isinstance(x, types.Complex):
        # conj(x) / |x|^2 in double cannot overflow for single-precision x, and it is ~3x as
        # fast as numba's complex division (1 / 0 gives nan + nan j, numpy's inf + nan j)
        def reciprocal(x):
            re, im = np.float64(x.real), np.float64(x.imag)
            norm = re * re + im * im
            return complex(re / norm, -im / norm)

    else:

        def reciprocal(x):
            return 1.0 / np.float64(x)

    return reciprocal


# The per-baseline gathers, products and reciprocals are one compiled pass: in numpy the fancy
# indexing alone (antenna, then receptor) took most of applycal's time for per-channel tables.
@numba.njit(cache=True, nogil=True, error_model="numpy")
def _baseline_products(
    first: np.ndarray,
    second: np.ndarray,
    flags: np.ndarray,
    rows: np.ndarray,
    ant1: np.ndarray,
    ant2: np.ndarray,
    rec1: np.ndarray,
    rec2: np.ndarray,
    invert: bool,
    out: np.ndarray,
    flag: np.ndarray,
) -> None:
    """Fill `out` with ``first[i, p] * second[j, q]`` (its reciprocal if `invert`) and `flag`
    with ``flags[i, p] | flags[j, q]`` (time, baseline, channel, pol): antennas i, j of the
    baseline, receptors p, q of the pol, at row ``rows[time]`` of the tables (row, antenna,
    channel, receptor); `out` is 1 where flagged."""
    for t in range(rows.size):
        r = rows[t]
        for b in range(ant1.size):
            i, j = ant1[b], ant2[b]
            for c in range(out.shape[2]):
                for p in range(rec1.size):
                    p1, p2 = rec1[p], rec2[p]
                    bad = flags[r, i, c, p1] or flags[r, j, c, p2]
                    flag[t, b, c, p] = bad
                    if bad:
                        out[t, b, c, p] = 1
                    elif invert:
                        out[t, b, c, p] = _reciprocal(first[r, i, c, p1] * second[r, j, c, p2])
                    else:
                        out[t, b, c, p] = first[r, i, c, p1] * second[r, j, c, p2]


def _correction_block(
    times: np.ndarray,
    values: np.ndarray,
    flags: np.ndarray,
    knots: np.ndarray,
    *,
    method: str,
    complex_gains: bool,
    tsys: bool,
    channel_mean_weight: bool,
    freq_weights: tuple[np.ndarray, np.ndarray, np.ndarray],
    ant1: np.ndarray,
    ant2: np.ndarray,
    rec1: np.ndarray,
    rec2: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One data time chunk: the table (knot, antenna, sol. channel, receptor) interpolated in
    time (amplitude and unwrapped phase) and frequency, then per baseline and correlation the
    visibility factor, weight factor and flag, (time, baseline, channel, pol)."""
    t = times.reshape(-1)
    knots = knots.reshape(-1)
    if np.any(np.diff(knots) <= 0):
        raise ApplyError(f"applycal: solution times are not increasing: {knots}")
    # Interpolated once per distinct (i0, i1, w1), not per integration: a one-solution table
    # (a bandpass) or nearest interpolation needs one or a few rows for the whole chunk
    weights, rows = np.unique(
        np.column_stack(interp.time_weights(knots, t, method)), axis=0, return_inverse=True
    )
    rows = rows.reshape(-1)  # numpy 2.0.0 returns it 2-D
    i0, i1 = weights[:, 0].astype(int), weights[:, 1].astype(int)
    w = weights[:, 2, None, None, None]
    f = flags[i0] | (flags[i1] & (w > 0))
    if complex_gains:
        phase = np.unwrap(np.angle(values), axis=0)
        amp = np.abs(values)
        amp_t = (1 - w) * amp[i0] + w * amp[i1]
        phase_t = (1 - w) * phase[i0] + w * phase[i1]
    else:
        amp_t = (1 - w) * values[i0] + w * values[i1]
    c0, c1, wf = freq_weights
    wf = wf[None, None, :, None]
    amp_f = (1 - wf) * amp_t[:, :, c0] + wf * amp_t[:, :, c1]
    f = f[:, :, c0] | (f[:, :, c1] & (wf > 0))
    if complex_gains:
        phase_f = (1 - wf) * phase_t[:, :, c0] + wf * phase_t[:, :, c1]
        g = amp_f * np.exp(1j * phase_f)
    else:
        g = amp_f
    # single precision from here on, as the data (and CASA): halves the per-baseline arrays
    g = g.astype(np.complex64 if complex_gains else np.float32)
    shape = (t.size, ant1.size, g.shape[2], rec1.size)
    out, flag = np.empty(shape, g.dtype), np.empty(shape, bool)
    # a flagged solution contributes no correction (its values are not meant to be used)
    if tsys:
        _baseline_products(g, g, f, rows, ant1, ant2, rec1, rec2, False, out, flag)
        return np.sqrt(out), 1.0 / out, flag
    if not channel_mean_weight:  # G, T: the weight needs the product itself
        _baseline_products(g, np.conj(g), f, rows, ant1, ant2, rec1, rec2, False, out, flag)
        return 1.0 / out, np.abs(out) ** 2, flag
    _baseline_products(g, np.conj(g), f, rows, ant1, ant2, rec1, rec2, True, out, flag)
    # CASA: per antenna the mean |B|^2 over its unflagged channels (1 when none)
    power = np.where(f, np.nan, np.abs(g) ** 2)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-flagged: mean of nothing
        mean = np.nan_to_num(np.nanmean(power, axis=2, keepdims=True), nan=1.0)
    weight = (mean[:, ant1][..., rec1] * mean[:, ant2][..., rec2])[rows]
    return out, np.broadcast_to(weight, flag.shape), flag


def correction(
    ds: xr.Dataset,
    table: SolutionTable,
    *,
    interp_method: interp.Method = "linear",
    spwmap: Mapping[int, int] | None = None,
    gainfield: Sequence[str] = (),
) -> Correction | None:
    """The correction one table makes to one visibility partition, lazily: one task per data
    time chunk evaluates it with numpy from the (small) table.

    Returns None when the table has no solution for the partition's spw (after `spwmap`) or
    none for the `gainfield` fields; callers decide whether that is an error. One-channel
    (G, T) tables give factors with a frequency axis of length 1 (they broadcast).
    """
    where = f"applycal: partition {describe_partition(ds)}"
    if interp_method not in ("linear", "nearest"):
        raise ApplyError(f"{where}: interp must be 'linear' or 'nearest', got {interp_method!r}")
    spw = _spw_id(ds)
    table_spw = (spwmap or {}).get(spw, spw)
    if table_spw not in table:
        return None
    selected = table[table_spw]
    if selected.attrs.get(schema.ATTR_CAL_TYPE) == schema.CAL_TYPE_SWPOW:
        solution = _select_fields(selected, gainfield, where)
        if solution.sizes[schema.TIME] == 0:
            return None
        # switched power (radflow.cal.swpower): V sqrt(C_i C_j) (a TSYS-like table of the scale
        # factors C), weights w s / (Tsys_i Tsys_j) from its TSYS variable (s: weight scale)
        as_tsys = {schema.ATTR_CAL_TYPE: schema.CAL_TYPE_TSYS}
        scale = correction(ds, {spw: solution.assign_attrs(as_tsys)}, interp_method=interp_method)
        tsys = solution.assign({schema.CALIBRATION_PARAMETER: solution[schema.TSYS]})
        wt = correction(ds, {spw: tsys.assign_attrs(as_tsys)}, interp_method=interp_method)
        w_scale = float(solution.attrs.get(schema.SWPOW_ATTR_WEIGHT_SCALE, 1.0))
        return Correction(scale.factor, wt.weight_factor * w_scale, scale.flag | wt.flag)
    spec = table_correction(ds, selected, tuple(gainfield), interp_method, where)
    if spec is None:
        return None
    time_chunks = ds[schema.VISIBILITY].chunksizes.get(schema.TIME, (len(ds[schema.TIME]),))
    out_dims = (schema.TIME, schema.BASELINE_ID, schema.FREQUENCY, schema.POLARIZATION)
    dtype = np.complex64 if spec.kwargs["complex_gains"] else np.float32
    factor, weight_factor, flag = apply_blocks(
        _correction_block,
        xr.Variable(schema.TIME, coord_values(ds, schema.TIME).astype(float)),
        *spec.inputs,
        loop_dims=(schema.TIME,),
        core_dims=[[], *TABLE_CORE_DIMS],
        outputs=[Output(out_dims, t) for t in (dtype, np.float32, bool)],
        sizes=spec.sizes,
        chunks={schema.TIME: tuple(time_chunks)},
        kwargs=spec.kwargs,
        name="applycal-factors",
    )
    if spec.sizes[schema.FREQUENCY] == 1:  # drop the axis so that it broadcasts over channels
        factor, weight_factor, flag = (
            x.isel({schema.FREQUENCY: 0}) for x in (factor, weight_factor, flag)
        )
    elif spec.channel_mean_weight:
        weight_factor = weight_factor.isel({schema.FREQUENCY: 0})
    return Correction(factor=factor, weight_factor=weight_factor, flag=flag)


_SOL_DIMS = [_KNOT, _SOL_ANT, _SOL_FREQ, _SOL_REC]
TABLE_CORE_DIMS = [_SOL_DIMS, _SOL_DIMS, [_KNOT]]  # values, flags, knots: whole tables


@dataclass(frozen=True)
class TableCorrection:
    """What :func:`correction_factors` needs to correct one partition with one table in a data
    chunk's task: the whole (small) table as `inputs` (values, flags, knots; core dims
    ``TABLE_CORE_DIMS``), its keywords and the output sizes."""

    inputs: tuple[xr.DataArray, xr.DataArray, xr.DataArray]
    kwargs: dict
    sizes: dict[str, int]
    channel_mean_weight: bool  # one weight factor per (time, baseline, pol): B and BPOLY


def table_correction(
    ds: xr.Dataset,
    selected: xr.Dataset,
    gainfield: tuple[str, ...],
    interp_method: str,
    where: str,
) -> TableCorrection | None:
    """The correction of partition `ds` by table spw `selected` (not switched power), or None
    where no solution is left for `gainfield`."""
    kernel_table = _kernel_table(selected, gainfield, where)
    if kernel_table is None:
        return None
    values = kernel_table.values
    names, sol_freq, cal_type = kernel_table.antennas, kernel_table.frequency, kernel_table.cal_type
    pols = [str(p) for p in coord_values(ds, schema.POLARIZATION)]
    first, second = _receptor_index(kernel_table.solution, pols, where)
    ant1 = coord_values(ds, schema.BASELINE_ANTENNA1_NAME).astype(str)
    ant2 = coord_values(ds, schema.BASELINE_ANTENNA2_NAME).astype(str)
    missing = sorted((set(ant1) | set(ant2)) - set(names))
    if missing:
        raise ApplyError(f"{where}: the {cal_type} table has no antenna(s) {missing}")
    index = {n: k for k, n in enumerate(names)}
    freqs = coord_values(ds, schema.FREQUENCY).astype(float)
    channel_mean_weight = cal_type in (schema.CAL_TYPE_B, schema.CAL_TYPE_BPOLY)
    return TableCorrection(
        inputs=(values, kernel_table.flags, kernel_table.knots),
        kwargs=dict(
            method=interp_method,
            complex_gains=np.issubdtype(values.dtype, np.complexfloating),
            tsys=cal_type == schema.CAL_TYPE_TSYS,
            channel_mean_weight=channel_mean_weight,
            freq_weights=_frequency_weights(sol_freq, freqs),
            ant1=np.array([index[a] for a in ant1]),
            ant2=np.array([index[a] for a in ant2]),
            rec1=np.array(first),
            rec2=np.array(second),
        ),
        sizes={
            schema.BASELINE_ID: ant1.size,
            schema.FREQUENCY: 1 if sol_freq.size == 1 else freqs.size,
            schema.POLARIZATION: len(pols),
        },
        channel_mean_weight=channel_mean_weight,
    )


def chunk_correction(
    ds: xr.Dataset,
    table: SolutionTable,
    *,
    interp_method: interp.Method = "linear",
    spwmap: Mapping[int, int] | None = None,
    gainfield: Sequence[str] = (),
) -> TableCorrection | Correction | None:
    """The correction one table makes to one visibility partition, in the form a data chunk's
    task uses best: the table itself (:class:`TableCorrection`: the task makes the factors for
    its chunk, and nothing the size of the data waits in memory between tasks), or, for a
    switched-power table, :func:`correction`'s lazy factors. None as :func:`correction`."""
    where = f"applycal: partition {describe_partition(ds)}"
    spw = _spw_id(ds)
    selected = table.get((spwmap or {}).get(spw, spw))
    if selected is None:
        return None
    if selected.attrs.get(schema.ATTR_CAL_TYPE) == schema.CAL_TYPE_SWPOW:
        return correction(
            ds, table, interp_method=interp_method, spwmap=spwmap, gainfield=gainfield
        )
    return table_correction(ds, selected, tuple(gainfield), interp_method, where)


def correction_inputs(
    found: TableCorrection | Correction,
) -> tuple[list[xr.DataArray | xr.Variable], list[list[str]], dict | None]:
    """The three arguments, their core dims (besides time and baseline) and the keywords
    (None: lazy factors) that hand `found` to :func:`correction_chunk` in a task."""
    if isinstance(found, TableCorrection):
        return list(found.inputs), TABLE_CORE_DIMS, found.kwargs
    triplet = [found.factor, found.weight_factor, found.flag]
    channels_and_pols = (schema.FREQUENCY, schema.POLARIZATION)
    return triplet, [[d for d in channels_and_pols if d in x.dims] for x in triplet], None


def correction_chunk(
    times: np.ndarray, first: np.ndarray, second: np.ndarray, third: np.ndarray, kwargs: dict | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(factor, weight factor, flag) of a chunk at `times` (unix s), each (time, baseline,
    channel or 1, pol), from :func:`correction_inputs`' three blocks and keywords."""
    if kwargs is not None:
        return correction_factors(times, first, second, third, kwargs)
    return tuple(x if x.ndim == 4 else x[:, :, None] for x in (first, second, third))


def correction_factors(
    times: np.ndarray, values: np.ndarray, flags: np.ndarray, knots: np.ndarray, kwargs: dict
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A table's (factor, weight factor, flag) for the data at `times` (unix s), (time,
    baseline, channel, pol), from the whole table and the keywords of :func:`table_correction`;
    one-channel tables and channel-mean weights have a channel axis of length 1."""
    factor, weight_factor, flag = _correction_block(times, values, flags, knots, **kwargs)
    if kwargs["channel_mean_weight"]:
        weight_factor = weight_factor[:, :, :1]
    return factor, weight_factor, flag


def _apply_block(
    data: np.ndarray,
    flag: np.ndarray,
    weight: np.ndarray,
    times: np.ndarray,
    *args: np.ndarray,
    tables: tuple[dict | None, ...],
    use_weight: tuple[bool, ...],
    use_flag: tuple[bool, ...],
    flag_all: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One chunk (time, baseline, channel, pol) through every table in order: the data times
    each factor (in at least single complex precision), the weights times each weight factor
    (`use_weight`: calwt), the flags OR each solution flag (`use_flag`: not calonly), all
    flagged with `flag_all` (calflagstrict and a table without solutions).

    `args` holds three arrays per table. Where `tables` has keywords for it, they are the whole
    table (values, flags, knots) and its factors are made here for this chunk's `times`: chunk
    by chunk, never held as arrays the size of the data between tasks. Where it has None, they
    are its (factor, weight factor, flag), with or without the channel axis."""
    out_data, out_flag, out_weight = data, flag, weight
    t = times.reshape(-1)
    for k, kwargs in enumerate(tables):
        factor, weight_factor, solution_flag = correction_chunk(t, *args[3 * k : 3 * k + 3], kwargs)
        out_data = out_data * factor.astype(np.result_type(out_data.dtype, np.complex64))
        if use_weight[k]:
            out_weight = out_weight * weight_factor
        if use_flag[k]:
            out_flag = out_flag | solution_flag
    if flag_all:
        out_flag = np.ones(data.shape, bool)
    return (
        out_data.astype(data.dtype),
        np.broadcast_to(out_flag, data.shape).copy(),
        out_weight.astype(weight.dtype),
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
    args, core, specs, use_weight, use_flag, strict_flag = [], [], [], [], [], False
    for k, table in enumerate(tables):
        if interps[k] not in ("linear", "nearest"):
            raise ApplyError(f"{where}: interp must be 'linear' or 'nearest', got {interps[k]!r}")
        found = chunk_correction(
            ds, table, interp_method=interps[k], spwmap=spwmaps[k], gainfield=fields[k] or ()
        )
        if found is None:
            if applymode != "calflagstrict":
                raise ApplyError(
                    f"{where}: table {k} has no solutions for spw {_spw_id(ds)}"
                    + (f" and fields {list(fields[k])}" if fields[k] else "")
                    + " (give spwmap/gainfield, or applymode='calflagstrict' to flag such data)"
                )
            strict_flag = True
            continue
        inputs, cores, kwargs = correction_inputs(found)
        args += inputs
        core += cores
        specs.append(kwargs)
        use_weight.append(bool(calwts[k]))
        use_flag.append(applymode != "calonly")
    dims = src.data.dims
    # a switched-power table turns raw correlator data into K, Jy or "1" (radflow.cal.swpower)
    swpow = [t[s] for t in tables for s in t
             if t[s].attrs.get(schema.ATTR_CAL_TYPE) == schema.CAL_TYPE_SWPOW]  # fmt: skip
    if swpow and src.units != schema.UNITS_RAW:
        raise ApplyError(f"{where}: a switched-power table needs raw data, not {src.units!r}")
    units = swpow[0].attrs[schema.SWPOW_ATTR_DATA_UNITS] if swpow else src.units
    expected = (schema.TIME, schema.BASELINE_ID, schema.FREQUENCY, schema.POLARIZATION)
    if dims != expected:
        raise ApplyError(f"{where}: the data's dims are {dims}, expected {expected}")
    channels_and_pols = [schema.FREQUENCY, schema.POLARIZATION]
    data, flag, weight = apply_blocks(
        _apply_block,
        src.data,
        src.flag,
        src.weight,
        xr.Variable(schema.TIME, coord_values(ds, schema.TIME).astype(float)),
        *args,
        loop_dims=(schema.TIME, schema.BASELINE_ID),
        core_dims=[channels_and_pols] * 3 + [[]] + core,
        outputs=[Output(dims, src.data.dtype), Output(dims, bool), Output(dims, src.weight.dtype)],
        kwargs=dict(
            tables=tuple(specs),
            use_weight=tuple(use_weight),
            use_flag=tuple(use_flag),
            flag_all=strict_flag,
        ),
        name="applycal",
    )
    return add_data_group(
        ds,
        output,
        data=data,
        flag=flag,
        weight=weight,
        units=units,
        description=f"data group {group!r} with {n} solution table(s) applied (step applycal)",
        from_group=group,
    )
