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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr

from radflow import schema
from radflow.cal import interp, tsys
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
    # One data chunk (time, antenna, frequency, polarization), whole solution tables (their
    # time axis last): every intermediate lives for one chunk only.
    off_t, off_t_flag = interp.interpolate_block(times, off, off_flag, knots=off_knots,
                                                 method=method)  # fmt: skip
    tsys_t, tsys_t_flag = interp.interpolate_block(times, tsys_table, tsys_flag,
                                                   knots=tsys_knots, method=method)  # fmt: skip
    factor = _weight_factor_block(times, tau_on, exposure, knots=off_knots)
    with np.errstate(divide="ignore", invalid="ignore"):
        ta = tsys_t * (on - off_t) / off_t
        tsys_w = tsys_t if mean_tsys_axis is None else tsys_t.mean(mean_tsys_axis, keepdims=True)
        weight = on_weight * factor / tsys_w**2
    finite = np.isfinite(ta)
    flag = on_flag | off_t_flag | tsys_t_flag | ~finite
    # Non-finite results (NaN input, flagged solutions) become 0 and stay flagged, so that
    # no NaN reaches a later fit or average.
    ta = np.where(finite, ta, 0.0).astype(on.dtype)
    weight = np.where(np.isfinite(weight), weight, 0.0).astype(on_weight.dtype)
    return ta, flag, weight


def _tsys_for(antennas: list[str], solution: xr.Dataset, pols: list[str]) -> xr.Dataset:
    """The Tsys table of `antennas` per correlation.

    An antenna without a solution gets flagged entries (calflagstrict: no solution flags the
    data); the solution itself never holds NaN (flagged values are stored as 1.0).
    """
    table = tsys.correlation_table(solution, pols).reindex({schema.ANTENNA_NAME: antennas})
    missing = table[schema.CALIBRATION_PARAMETER].isnull()
    return table.assign(
        {
            schema.CALIBRATION_PARAMETER: table[schema.CALIBRATION_PARAMETER].fillna(1.0),
            schema.FLAG: table[schema.FLAG].fillna(True).astype(bool) | missing,
        }
    )


def _knot_last(values: xr.DataArray, knot: str) -> xr.DataArray:
    # whole tables, one chunk each: every data chunk needs all of them
    return values.rename({schema.TIME: knot}).drop_vars(knot, errors="ignore").chunk(-1)


@dataclass(frozen=True)
class _Tables:
    """The solution tables of one antenna set and correlation list, ready for the kernel."""

    inputs: tuple[xr.DataArray, ...]  # OFF, OFF flag, exposure, Tsys, Tsys flag; time last
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
            table = _tsys_for(antennas, self.tsys_solution, pols)
            tsys_table = table[schema.CALIBRATION_PARAMETER].assign_coords({schema.FREQUENCY: freq})
            self._tables[key] = _Tables(
                inputs=(
                    _knot_last(sky[schema.CALIBRATION_PARAMETER], _KNOT),
                    _knot_last(sky[schema.FLAG].astype(bool), _KNOT),
                    _knot_last(sky[schema.EXPOSURE], _KNOT),
                    _knot_last(tsys_table, _TSYS_KNOT),
                    _knot_last(table[schema.FLAG].astype(bool), _TSYS_KNOT),
                ),
                off_knots=interp.knots(sky[schema.CALIBRATION_PARAMETER]),
                tsys_knots=interp.knots(table[schema.CALIBRATION_PARAMETER]),
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
        time_axis = src.data.dims.index(schema.TIME)
        chunks = src.data.chunks[time_axis] if src.data.chunks else (times.size,)
        pols = [str(p) for p in coord_values(ds, schema.POLARIZATION)]
        tables = self._tables_for(antennas, pols, freq)
        # apply_ufunc's order of the dims: the first input's (time), then the data's
        order = (schema.TIME, *[d for d in src.data.dims if d != schema.TIME])
        mean_axis = order.index(schema.FREQUENCY) if self.weight_tsys == "mean" else None
        ta, flag, weight = xr.apply_ufunc(
            _calibrate_block,
            xr.DataArray(da.from_array(times, chunks=(chunks,)), dims=schema.TIME),
            src.data,
            src.flag,
            src.weight,
            ds[schema.EFFECTIVE_INTEGRATION_TIME],
            *tables.inputs,
            input_core_dims=[[]] * 5 + [[_KNOT]] * 3 + [[_TSYS_KNOT]] * 2,
            output_core_dims=[[], [], []],
            dask="parallelized",
            output_dtypes=[src.data.dtype, bool, src.weight.dtype],
            kwargs={
                "off_knots": tables.off_knots,
                "tsys_knots": tables.tsys_knots,
                "method": self.interp_method,
                "mean_tsys_axis": mean_axis,
            },
            join="exact",
        )
        ta, flag, weight = (x.transpose(*order) for x in (ta, flag, weight))
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
