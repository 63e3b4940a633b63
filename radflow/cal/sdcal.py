"""sdcal: apply sky and Tsys solutions to single-dish spectra (CASA ``sdcal(calmode='...,apply')``).

For each ON integration at time t, per channel and correlation::

    Ta*    = Tsys(t) * (ON - OFF(t)) / OFF(t)                 K
    weight = weight_in * f_sky(t) / Tsys(t)**2                 K**-2

By default the weight uses each channel's Tsys (the radiometer equation per channel);
``weight_tsys="mean"`` uses the channel mean of Tsys as CASA does (one WEIGHT per MS row),
which reproduces CASA's WEIGHT column.

OFF(t) and Tsys(t) are the solutions interpolated in time (linear between solution times,
nearest outside; Tsys is already on the science channels). The sky weight factor f_sky is
CASA's: nearest ``tau_off / (tau_on + tau_off)``; between OFFs at t1, t2 with exposures tau1, tau2
``1 / (1 + tau_on / (t2 - t1)**2 * ((t2 - t)**2 / tau1 + (t - t1)**2 / tau2))``.

Flags (CASA ``applymode='calflagstrict'``): a sample is flagged when it was flagged, when the OFF
or Tsys solution it uses is flagged, when its antenna has no Tsys solution, or when the result
is not finite.

Each data chunk is calibrated by one compiled (numba) pass that releases the GIL, so a worker's
threads calibrate chunks in parallel: per sample it interpolates OFF and Tsys and forms Ta*,
flag and weight in float64, as the plain numpy form would, without chunk-sized temporaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import dask.array as da
import numba
import numpy as np
import xarray as xr

from radflow import schema
from radflow.cal import interp, tsys
from radflow.lazy import Output, apply_blocks
from radflow.step import (
    add_data_group,
    coord_values,
    describe_partition,
    get_data_group,
    register_step,
    require_units,
)

_KNOT = "_off_time"  # private core dims: the solution tables' time axes
_TSYS_KNOT = "_tsys_time"


def _weight_factor_block(
    times: np.ndarray, tau_on: np.ndarray, exposure: np.ndarray, *, knots: np.ndarray
) -> np.ndarray:
    """CASA's sky weight factor; `times` (t, ...), `tau_on` (t, a, ...) and `exposure`
    (a, ..., k) broadcast against each other once the knot axis k is taken per time."""
    t = times.reshape(times.shape[0])
    i0, i1, w1 = interp.time_weights(knots, t, "linear")
    tau1 = np.moveaxis(exposure[..., i0], -1, 0)  # (t, a, ...)
    tau2 = np.moveaxis(exposure[..., i1], -1, 0)
    column = (-1,) + (1,) * (tau1.ndim - 1)
    between = (w1 > 0).reshape(column)
    t1 = knots[i0].reshape(column)
    t2 = knots[i1].reshape(column)
    tt = t.reshape(column)
    with np.errstate(divide="ignore", invalid="ignore"):
        span2 = np.where(between, (t2 - t1) ** 2, 1.0)
        linear = 1.0 / (1.0 + tau_on / span2 * ((t2 - tt) ** 2 / tau1 + (tt - t1) ** 2 / tau2))
        nearest = tau1 / (tau_on + tau1)
    return np.where(between, linear, nearest)


def _calibrate_block(
    times: np.ndarray,
    on: np.ndarray,
    on_flag: np.ndarray,
    on_weight: np.ndarray,
    tau_on: np.ndarray,
    off: np.ndarray,
    off_flag: np.ndarray,
    exposure: np.ndarray,
    tsys_table: np.ndarray,
    tsys_flag: np.ndarray,
    *,
    off_knots: np.ndarray,
    tsys_knots: np.ndarray,
    method: interp.Method,
    mean_tsys_axis: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ta* (K, `on`'s dtype), flag and weight (K**-2, `on_weight`'s dtype) of one data chunk.

    The per-time inputs (`times` in unix s, raw `on` with its flag and weight, `tau_on` in s)
    come as :func:`radflow.lazy.apply_blocks` (and ``xr.apply_ufunc``) passes them: the loop
    dims (time first), size 1 where an input lacks one. The whole solution tables (OFF, its
    flag, its `exposure` in s, Tsys in K and its flag) have their time axis last and lack the
    loop's time axis (and any leading dim they do not have). `mean_tsys_axis` is the frequency
    axis of the loop dims for ``weight_tsys="mean"``. Solution knots are in unix s. The outputs
    have the broadcast shape of the inputs.
    """
    shape = np.broadcast_shapes(
        times.shape, on.shape, on_flag.shape, on_weight.shape, tau_on.shape,
        *(x.shape[:-1] for x in (off, off_flag, exposure, tsys_table, tsys_flag)),
    )  # fmt: skip
    rest = shape[1:]
    t = times.reshape(times.shape[0])
    factor = _weight_factor_block(times, tau_on, _pad_table(exposure, rest), knots=off_knots)
    tsys_k = _knot_first(tsys_table, rest)
    tsys_rows = _table(tsys_k)
    weight_tsys_rows = tsys_rows
    if mean_tsys_axis is not None:
        # The channel mean of the interpolated Tsys is the interpolation of the knots' channel
        # means (the time weights are the same for all channels): k rows to average, not a
        # chunk. Equal to averaging after interpolating up to float64 round-off.
        mean = tsys_k.mean(mean_tsys_axis, dtype=np.float64, keepdims=True)
        weight_tsys_rows = _table(np.broadcast_to(mean, tsys_k.shape))
    kernel_shape = _kernel_shape(shape)
    ta = np.empty(kernel_shape, on.dtype)
    flag = np.empty(kernel_shape, bool)
    weight = np.empty(kernel_shape, on_weight.dtype)
    _calibrate_kernel(
        *(_per_time(x, shape) for x in (on, on_flag, on_weight)),
        _compact(factor, shape),
        _table(_knot_first(off, rest)),
        _table(_knot_first(off_flag, rest)),
        tsys_rows,
        _table(_knot_first(tsys_flag, rest)),
        weight_tsys_rows,
        *interp.time_weights(off_knots, t, method),
        *interp.time_weights(tsys_knots, t, method),
        ta, flag, weight,
    )  # fmt: skip
    return ta.reshape(shape), flag.reshape(shape), weight.reshape(shape)


def _pad_table(table: np.ndarray, rest: tuple[int, ...]) -> np.ndarray:
    """A (..., k) table with the leading size-1 axes it lacks against the loop dims `rest`
    (those after time), so that its axes line up with a chunk's once k is taken per time."""
    return table.reshape((1,) * (len(rest) + 1 - table.ndim) + table.shape)


def _knot_first(table: np.ndarray, rest: tuple[int, ...]) -> np.ndarray:
    """A (..., k) table as a (k, *rest) view: the knot axis where a chunk has its time axis."""
    return np.broadcast_to(np.moveaxis(_pad_table(table, rest), -1, 0), (table.shape[-1], *rest))


def _kernel_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """`shape` (time or knot axis first) as the kernel's 3 axes: the first, the middle ones
    merged and the last two merged, so that the kernel's inner loop runs over a whole row
    (frequency x polarization) and vectorises, whatever the number of loop dims."""
    rest = (1,) * (2 - len(shape[1:])) + shape[1:]
    return shape[0], math.prod(rest[:-2]), math.prod(rest[-2:])


def _per_time(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A per-time input (data, flag, weight) as the kernel's (t, r, c), C-contiguous: a view
    of a full C-contiguous chunk; otherwise a copy, as LLVM vectorises the kernel's loop only
    over rows it knows to be contiguous (per-channel FLAG and WEIGHT are full in practice)."""
    return np.ascontiguousarray(np.broadcast_to(x, shape).reshape(_kernel_shape(shape)))


def _compact(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A per-time input as the kernel's (t, r, c), C-contiguous, with size 1 along the axes it
    is broadcast along (the kernel steps through those by 0): for the sky weight factor, one
    number per time and antenna, that would otherwise be copied to a chunk's size."""
    # A view for the usual layouts; numpy copies where merged axes cannot share one stride.
    x = np.broadcast_to(x, shape).reshape(_kernel_shape(shape))
    return np.ascontiguousarray(x[tuple(slice(None) if s else slice(0, 1) for s in x.strides)])


def _table(x: np.ndarray) -> np.ndarray:
    """A (k, *rest) table in the kernel's (k, r, c) axes, C-contiguous: per time the kernel
    reads two knots' rows, a few dozen KB that stay in cache, and vectorises over them."""
    return np.ascontiguousarray(x.reshape(_kernel_shape(x.shape)))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _calibrate_kernel(
    on: np.ndarray,
    on_flag: np.ndarray,
    on_weight: np.ndarray,
    factor: np.ndarray,
    off: np.ndarray,
    off_flag: np.ndarray,
    tsys: np.ndarray,
    tsys_flag: np.ndarray,
    weight_tsys: np.ndarray,
    off_i0: np.ndarray,
    off_i1: np.ndarray,
    off_w1: np.ndarray,
    tsys_i0: np.ndarray,
    tsys_i1: np.ndarray,
    tsys_w1: np.ndarray,
    ta: np.ndarray,
    flag: np.ndarray,
    weight: np.ndarray,
) -> None:
    """Fill `ta` (K), `flag` and `weight` (K**-2), all (t, r, c), in one pass over them.

    `on`, `on_flag` and `on_weight` are (t, r, c), the sky weight `factor` the same or size 1
    along the axes it is broadcast along. The tables `off`, `off_flag`, `tsys` (K), `tsys_flag`
    and `weight_tsys` (the Tsys the weight uses, K) are (k, r, c), interpolated per time with
    the ``(i0, i1, w1)`` of :func:`interp.time_weights`. The arithmetic is the numpy form's,
    operation for operation in float64 (``error_model="numpy"``: x / 0 is inf or NaN, not an
    exception), so the results are the same to the bit; no chunk-sized temporary is made.
    """
    n_t, n_r, n_c = ta.shape
    factor_step = int(factor.shape[2] > 1)  # 0: one factor for the whole row
    for t in range(n_t):
        o0, o1, ow = off_i0[t], off_i1[t], off_w1[t]
        s0, s1, sw = tsys_i0[t], tsys_i1[t], tsys_w1[t]
        # the second knot, when its weight is 0, neither contributes nor flags
        o1_flags, s1_flags = ow > 0, sw > 0
        for r in range(n_r):
            on_r, on_flag_r, on_weight_r = on[t, r], on_flag[t, r], on_weight[t, r]
            factor_r = factor[t if factor.shape[0] > 1 else 0, r if factor.shape[1] > 1 else 0]
            off0, off1 = off[o0, r], off[o1, r]
            off_flag0, off_flag1 = off_flag[o0, r], off_flag[o1, r]
            tsys0, tsys1 = tsys[s0, r], tsys[s1, r]
            tsys_flag0, tsys_flag1 = tsys_flag[s0, r], tsys_flag[s1, r]
            weight_tsys0, weight_tsys1 = weight_tsys[s0, r], weight_tsys[s1, r]
            # Branch-free (| rather than or, selects), so that LLVM vectorises over the row.
            for c in range(n_c):
                off_t = (1.0 - ow) * off0[c] + ow * off1[c]
                tsys_t = (1.0 - sw) * tsys0[c] + sw * tsys1[c]
                weight_tsys_t = (1.0 - sw) * weight_tsys0[c] + sw * weight_tsys1[c]
                value = tsys_t * (on_r[c] - off_t) / off_t
                w = on_weight_r[c] * factor_r[c * factor_step] / (weight_tsys_t * weight_tsys_t)
                finite = np.isfinite(value)
                flag[t, r, c] = (
                    on_flag_r[c]
                    | off_flag0[c]
                    | (o1_flags & off_flag1[c])
                    | tsys_flag0[c]
                    | (s1_flags & tsys_flag1[c])
                    | (not finite)
                )
                # Non-finite results (NaN input, flagged solutions) become 0 and stay
                # flagged, so that no NaN reaches a later fit or average.
                ta[t, r, c] = value if finite else 0.0
                weight[t, r, c] = w if np.isfinite(w) else 0.0


def _tsys_for(
    antennas: list[str], solution: xr.Dataset, pols: list[str]
) -> tuple[xr.Variable, xr.Variable]:
    """The Tsys table of `antennas` per correlation, and its flags, in memory.

    An antenna without a solution gets flagged entries (calflagstrict: no solution flags the
    data); the table itself never holds NaN (flagged values are stored as 1.0).
    """
    table = tsys.correlation_table(solution, pols)
    value, flag = table[schema.CALIBRATION_PARAMETER].variable, table[schema.FLAG].variable
    axis = value.dims.index(schema.ANTENNA_NAME)
    known = [str(a) for a in table[schema.ANTENNA_NAME].values]
    rows = np.array([known.index(a) if a in known else -1 for a in antennas], dtype=int)
    absent = np.expand_dims(rows < 0, tuple(i for i in range(value.ndim) if i != axis))
    values = np.take(np.asarray(value.values, dtype=float), np.maximum(rows, 0), axis=axis)
    flags = np.take(np.asarray(flag.values, dtype=bool), np.maximum(rows, 0), axis=axis)
    missing = absent | np.isnan(values)
    return (
        xr.Variable(value.dims, np.where(missing, 1.0, values)),
        xr.Variable(flag.dims, flags | missing),
    )


def _knot_last(values: xr.Variable, knot: str) -> xr.Variable:
    """`values` with its time dim renamed `knot`, as one dask chunk: every data chunk needs
    the whole table, and one chunk is shared by all the tasks instead of copied into each."""
    dims = tuple(knot if d == schema.TIME else d for d in values.dims)
    if values.chunks is not None:
        return xr.Variable(dims, values.data.rechunk(-1))
    return xr.Variable(dims, da.from_array(values.data, chunks=-1, name=False))


@dataclass(frozen=True)
class _Tables:
    """The solution tables of one antenna set and correlation list, ready for the kernel."""

    inputs: tuple[xr.Variable, ...]  # OFF, OFF flag, exposure, Tsys, Tsys flag; time last
    off_knots: np.ndarray
    tsys_knots: np.ndarray


class Calibrator:
    """:func:`apply` for the partitions of one antenna and spw: the solution tables are
    reshaped for the kernel once per antenna set and correlation list, not once per partition
    (graph building runs once per partition; the tables are the same for all of them).
    """

    def __init__(
        self,
        sky: xr.Dataset,
        tsys_solution: xr.Dataset,
        *,
        interp_method: interp.Method = "linear",
        weight_tsys: Literal["channel", "mean"] = "channel",
    ):
        self.sky = sky
        self.tsys_solution = tsys_solution
        self.interp_method = interp_method
        self.weight_tsys = weight_tsys
        self._tables: dict[tuple[tuple[str, ...], tuple[str, ...], bytes], _Tables] = {}

    def _tables_for(self, antennas: list[str], pols: list[str], freq: np.ndarray) -> _Tables:
        key = (tuple(antennas), tuple(pols), freq.tobytes())
        if key not in self._tables:
            sky = self.sky
            tsys_value, tsys_flag = _tsys_for(antennas, self.tsys_solution, pols)
            self._tables[key] = _Tables(
                inputs=(
                    _knot_last(sky[schema.CALIBRATION_PARAMETER].variable, _KNOT),
                    _knot_last(sky[schema.FLAG].variable.astype(bool), _KNOT),
                    _knot_last(sky[schema.EXPOSURE].variable, _KNOT),
                    _knot_last(tsys_value, _TSYS_KNOT),
                    _knot_last(tsys_flag, _TSYS_KNOT),
                ),
                off_knots=interp.knots(sky[schema.CALIBRATION_PARAMETER]),
                tsys_knots=interp.knots(self.tsys_solution[schema.CALIBRATION_PARAMETER]),
            )
        return self._tables[key]

    def __call__(
        self,
        ds: xr.Dataset,
        *,
        group: str = schema.GROUP_BASE,
        output: str = schema.GROUP_CORRECTED,
    ) -> xr.Dataset:
        """Calibrate one ON partition; see :func:`apply`."""
        sky, tsys_solution = self.sky, self.tsys_solution
        src = get_data_group(ds, group)
        require_units(src, schema.UNITS_RAW, "sdcal")
        where = f"sdcal: partition {describe_partition(ds)}"
        info = ds.attrs.get(schema.ATTR_PARTITION_INFO) or {}
        spw = info.get(schema.PI_SPW_ID)
        for name, sol in (("sky", sky), ("tsys", tsys_solution)):
            sol_spw = sol.attrs.get(schema.ATTR_SPW_ID)
            if sol_spw is not None and spw is not None and int(sol_spw) != int(spw):
                raise ValueError(f"{where}: the {name} solution is for spw {sol_spw}, not {spw}")
        freq = coord_values(ds, schema.FREQUENCY)
        tsys_freq = tsys_solution[schema.FREQUENCY].values
        if tsys_freq.shape != freq.shape or not np.allclose(tsys_freq, freq, rtol=0, atol=1.0):
            raise ValueError(f"{where}: the Tsys solution is not on this partition's channels")
        antennas = [str(a) for a in coord_values(ds, schema.ANTENNA_NAME)]
        sky_antennas = [str(a) for a in sky[schema.ANTENNA_NAME].values]
        if sky_antennas != antennas:
            raise ValueError(f"{where}: the sky solution is for antenna(s) {sky_antennas}")
        if self.weight_tsys not in ("channel", "mean"):
            raise ValueError(
                f"{where}: weight_tsys must be 'channel' or 'mean', not {self.weight_tsys!r}"
            )

        times = coord_values(ds, schema.TIME).astype(float)
        pols = [str(p) for p in coord_values(ds, schema.POLARIZATION)]
        tables = self._tables_for(antennas, pols, freq)
        # the kernel's order of the dims: time first, then the data's
        order = (schema.TIME, *[d for d in src.data.dims if d != schema.TIME])
        mean_axis = order.index(schema.FREQUENCY) if self.weight_tsys == "mean" else None
        ta, flag, weight = apply_blocks(
            _calibrate_block,
            xr.Variable(schema.TIME, times),
            src.data,
            src.flag,
            src.weight,
            ds[schema.EFFECTIVE_INTEGRATION_TIME],
            *tables.inputs,
            loop_dims=order,
            core_dims=[[]] * 5 + [[_KNOT]] * 3 + [[_TSYS_KNOT]] * 2,
            outputs=[
                Output(src.data.dims, src.data.dtype),
                Output(src.data.dims, bool),
                Output(src.data.dims, src.weight.dtype),
            ],
            kwargs={
                "off_knots": tables.off_knots,
                "tsys_knots": tables.tsys_knots,
                "method": self.interp_method,
                "mean_tsys_axis": mean_axis,
            },
            name="sdcal",
        )
        return add_data_group(
            ds,
            output,
            data=ta,
            flag=flag,
            weight=weight,
            units=schema.UNITS_KELVIN,
            description=(
                f"Ta* = Tsys (ON - OFF)/OFF from group {group!r} (sky mode "
                f"{sky.attrs.get(schema.ATTR_SKY_MODE)!r}, Tsys spw "
                f"{tsys_solution.attrs.get(schema.ATTR_TSYS_SPW_ID)}; step sdcal)"
            ),
            from_group=group,
        )


@register_step("sdcal")
def apply(
    ds: xr.Dataset,
    sky: xr.Dataset,
    tsys_solution: xr.Dataset,
    *,
    group: str = schema.GROUP_BASE,
    output: str = schema.GROUP_CORRECTED,
    interp_method: interp.Method = "linear",
    weight_tsys: Literal["channel", "mean"] = "channel",
) -> xr.Dataset:
    """Calibrate one ON spectrum partition to antenna temperature Ta* (K).

    Parameters
    ----------
    ds : xr.Dataset
        One single-dish partition (dims time, antenna_name, frequency, polarization), raw.
    sky : xr.Dataset
        :func:`radflow.cal.sky.solve` for the partition's antenna and spw.
    tsys_solution : xr.Dataset
        :func:`radflow.cal.tsys.solve` for the partition's spw.
    group, output : str
        Input (raw, units ``""``) and output (units ``K``) data groups.
    interp_method : {"linear", "nearest"}
        Time interpolation of both solutions.
    weight_tsys : {"channel", "mean"}
        Scale weights by each channel's Tsys (default) or by the channel mean (CASA).

    Returns
    -------
    xr.Dataset
        `ds` with data group `output` added (lazy).

    Raises
    ------
    UnitsError
        If the input group is already calibrated.
    ValueError
        If the solutions do not belong to the partition's spw or frequencies.
    """
    calibrate = Calibrator(sky, tsys_solution, interp_method=interp_method, weight_tsys=weight_tsys)
    return calibrate(ds, group=group, output=output)
