"""swpower: EVLA switched-power calibration (CASA ``gencal(caltype='swpow')``), as lazy steps.

The VLA's noise diode fires during half of each switching cycle; the SYSPOWER table holds, per
antenna, spw, receptor and time, the switched power difference and sum::

    Pdiff = Pon - Poff = a Tcal          Psum = Pon + Poff = 2 a Tsys

(``a``: the analog power gain; both are measured before the requantizer, in the correlator's
power units). With ``Tcal`` (K) from CALDEVICE ``NOISE_CAL`` or an engineering table:

- ``Tsys_i = (Psum_i / Pdiff_i) Tcal_i / 2``                          (K)
- to antenna temperature  ``CT_i = Tcal_i / Pdiff_i``                (scale ``"K"``)
- to flux density  ``CS_i = 2 k Tcal_i / (Pdiff_i eta_i Aeff_i)``   (scale ``"Jy"``)
- to correlation coefficient ``CR_i``                               (scale ``"rho"``):
  ``2 / Psum_i`` when the raw data are in the switched powers' units (``rho_normalisation=
  "power"``, the default: then ``CR_i = CT_i / Tsys_i`` and ``rho = Tant / sqrt(Tsys_i Tsys_j)``),
  or the seed's ``2 Pdiff_i / Psum_i`` for raw data normalised by the noise-diode response
  (``"noise_diode"``).

applycal (:mod:`radflow.cal.apply`, cal_type ``SWPOW``) multiplies a visibility of antennas i, j
by ``sqrt(C_i C_j)`` and its weight (the correlator's ``BW tau``) by ``s / (Tsys_i Tsys_j)``;
data whose solution is flagged are flagged (calflag). Options:

- ``requantizer=True``: the raw data were formed after the requantizer (voltage gain ``q``,
  REQUANTIZER_GAIN) and the switched powers before it: ``C_i / q_i^2``, i.e. ``V / (q_i q_j)``.
  (CASA's ``caltype='rq'`` also divides by ``q_i q_j``; its ``'swp/rq'`` multiplies instead.)
- ``casa_constants=True`` (CASA's convention): ``C_i / (0.932 x 1.176)`` (the WIDAR correlator
  efficiency and the mean fringe-rotation scale: CASA's gain is ``sqrt(0.932 x 1.176 Pdiff/Tcal)``
  and ``V' = V / (g_i g_j)``) and ``s = 0.932^2`` (CASA scales the weight by ``0.932/Tsys`` per
  antenna). radflow's default is ``False``: the raw data are taken as the correlated power itself,
  so that ``CT`` gives antenna temperature exactly; the two differ by 1.096 in amplitude.

Editing of Pdiff and Psum (each optional, per antenna and receptor along time, in this order):
flag non-positive and non-finite samples (always; CASA's test is ``> FLT_EPSILON``); flag
outliers ``|x - running median| > outlier_nsigma x 1.4826 MAD`` (the median of the
``outlier_window - 1`` neighbours, centred; MAD of these residuals over the whole series);
replace flagged samples by linear interpolation in time between good ones (nearest beyond the
ends, ``interpolate=True``); smooth with a centred running mean or median of ``smooth_window``
samples. Running windows do not cross time gaps longer than twice the median sampling interval
(scan boundaries). A series without any good sample stays flagged; a spw whose Pdiff is flagged
everywhere is an error (for in-memory input; dask-backed input gives flagged solutions).

Tcal: CALDEVICE ``NOISE_CAL`` of the spw (first load, mean over its time rows), or ``tcal=``:
a table at engineering frequencies (dims ``receptor``, ``frequency`` in Hz, optional
``antenna_name``), interpolated linearly onto the spw's centre frequency (constant beyond the
table's ends), or a mapping spw id -> values per receptor (and antenna).

Solution times are the SYSPOWER TIME stamps (the middle of each switched-power interval, as
CASA); applycal interpolates linearly in time. Everything from the powers on is xarray
arithmetic or ``apply_ufunc(dask="parallelized")``: dask-backed inputs stay lazy.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from radflow import schema
from radflow.cal.tsys import receptor_names, spectral_windows
from radflow.store import partitions

BOLTZMANN_J_K = 1.380649e-23
JANSKY_W_M2_HZ = 1e-26

# VLA receiver bands (Hz) and nominal aperture efficiencies (VLA observational status summary,
# approximate: give your own with aperture=).
VLA_BANDS: dict[str, tuple[float, float]] = {
    "P": (0.2e9, 0.5e9),
    "L": (1.0e9, 2.0e9),
    "S": (2.0e9, 4.0e9),
    "C": (4.0e9, 8.0e9),
    "X": (8.0e9, 12.0e9),
    "Ku": (12.0e9, 18.0e9),
    "K": (18.0e9, 26.5e9),
    "Ka": (26.5e9, 40.0e9),
    "Q": (40.0e9, 50.0e9),
}
VLA_APERTURE_EFFICIENCY: dict[str, float] = {
    "P": 0.40, "L": 0.45, "S": 0.52, "C": 0.62, "X": 0.56,
    "Ku": 0.54, "K": 0.51, "Ka": 0.39, "Q": 0.34,
}  # fmt: skip
CASA_DIGITAL_FACTOR = schema.SWPOW_CORRELATOR_EFFICIENCY * schema.SWPOW_FRINGE_ROTATION_SCALE

_DATA_UNITS = {
    schema.SWPOW_SCALE_KELVIN: schema.UNITS_KELVIN,
    schema.SWPOW_SCALE_JANSKY: schema.UNITS_JANSKY,
    schema.SWPOW_SCALE_RHO: schema.UNITS_RATIO,
}
_POWERS = (schema.SWITCHED_DIFF, schema.SWITCHED_SUM)


class SwPowError(ValueError):
    """A switched-power solution cannot be built (no SYSPOWER, no Tcal, spws not matching...)."""


@dataclass(frozen=True)
class Aperture:
    """Aperture efficiency and geometric area (m^2; None: from the antennas' dish diameters)."""

    efficiency: float
    area_m2: float | None = None


@dataclass(frozen=True)
class Editing:
    """How Pdiff and Psum are edited before use (see the module docstring)."""

    outlier_window: int = 0  # samples; 0 or 1: no outlier flagging
    outlier_nsigma: float = 5.0
    interpolate: bool = True
    smooth_window: int = 0  # samples; 0 or 1: no smoothing
    smooth_method: str = "mean"  # or "median"

    def as_dict(self) -> dict[str, Any]:
        return {
            "outlier_window": int(self.outlier_window),
            "outlier_nsigma": float(self.outlier_nsigma),
            "interpolate": bool(self.interpolate),
            "smooth_window": int(self.smooth_window),
            "smooth_method": str(self.smooth_method),
        }


def band_of(frequency_hz: float) -> str:
    """The VLA band (P, L, S, C, X, Ku, K, Ka, Q) containing `frequency_hz`."""
    for band, (lo, hi) in VLA_BANDS.items():
        if lo <= frequency_hz < hi:
            return band
    raise SwPowError(f"swpower: {frequency_hz / 1e9:.4f} GHz is in no VLA band {list(VLA_BANDS)}")


# ---------------------------------------------------------------------------------------------
# inputs from the store


def _merge_by_antenna(tree: xr.DataTree, child: str, time_dim: str, names: tuple[str, ...]):
    """One dataset per spw of sub-dataset `child` over all partitions (antennas merged)."""
    per_spw: dict[int, dict[str, xr.Dataset]] = {}
    for node in partitions(tree).values():
        if child not in node.children:
            continue
        xds = node[child].to_dataset(inherit=False)
        present = [n for n in names if n in xds]
        if not present:
            continue
        spw = int(xds.attrs[schema.ATTR_SPW_ID])
        receptors = receptor_names(node, xds[schema.RECEPTOR_LABEL].values)
        xds = xds[present].assign_coords({schema.RECEPTOR_LABEL: receptors})
        xds = xds.rename({schema.RECEPTOR_LABEL: schema.RECEPTOR, time_dim: schema.TIME})
        seen = per_spw.setdefault(spw, {})
        for antenna in xds[schema.ANTENNA_NAME].values.astype(str):
            if antenna not in seen:
                seen[antenna] = xds.sel({schema.ANTENNA_NAME: [antenna]})
    out = {}
    for spw, by_antenna in per_spw.items():
        ds = xr.concat(list(by_antenna.values()), dim=schema.ANTENNA_NAME, join="outer")
        out[spw] = ds.sortby(schema.TIME).assign_attrs({schema.ATTR_SPW_ID: spw})
    return out


def switched_power(tree: xr.DataTree) -> dict[int, xr.Dataset]:
    """All SYSPOWER data of an execution block, one dataset per spw.

    Dims ``(antenna_name, time, receptor)``; ``SWITCHED_DIFF``, ``SWITCHED_SUM`` and (when
    present) ``REQUANTIZER_GAIN``; time = SYSPOWER TIME (unix s); receptors named R/L (X/Y) from
    the antenna sub-dataset. Antennas with different time stamps are merged on the union of
    the times (NaN where absent: flagged by the editing).
    """
    names = (*_POWERS, schema.REQUANTIZER_GAIN)
    return _merge_by_antenna(tree, schema.SWITCHED_POWER_XDS, schema.TIME_SWITCHED_POWER, names)


def noise_cal(tree: xr.DataTree) -> dict[int, xr.DataArray]:
    """CALDEVICE noise-diode temperatures (K) per spw: dims ``(antenna_name, receptor)``, the
    first calibration load, averaged over the CALDEVICE time rows (NaN where absent)."""
    merged = _merge_by_antenna(
        tree, schema.CAL_DEVICE_XDS, schema.TIME_CAL_DEVICE, (schema.NOISE_CAL,)
    )
    out = {}
    for spw, ds in merged.items():
        values = ds[schema.NOISE_CAL].isel({schema.CAL_LOAD: 0}).drop_vars(schema.CAL_LOAD)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN antennas stay NaN
            out[spw] = values.mean(schema.TIME, skipna=True).assign_attrs(
                {schema.ATTR_UNITS: schema.UNITS_KELVIN}
            )
    return out


# ---------------------------------------------------------------------------------------------
# editing


def _running(x: np.ndarray, window: int, reducer, exclude_centre: bool = False) -> np.ndarray:
    """Centred running `reducer` (nan-aware) over the last axis, `window` samples (without
    the sample itself when `exclude_centre`)."""
    half = window // 2
    pad = [(0, 0)] * (x.ndim - 1) + [(half, window - 1 - half)]
    padded = np.pad(x, pad, constant_values=np.nan)
    view = np.lib.stride_tricks.sliding_window_view(padded, window, axis=-1)
    if exclude_centre:
        view = view.copy()
        view[..., half] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return reducer(view, axis=-1)


def _edit_block(
    x: np.ndarray, times: np.ndarray, *, editing: Editing
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edit series along the last axis (time): values, flag (no usable value), edited."""
    x = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(x) | (x <= np.finfo(np.float32).eps)
    # running windows stay within runs of samples without a time gap (scans)
    step = np.diff(times)
    gap = step > 2.0 * np.median(step) if step.size else np.zeros(0, dtype=bool)
    segments = np.split(np.arange(times.size), np.flatnonzero(gap) + 1)

    def running(v, window, reducer, exclude_centre=False):
        return np.concatenate(
            [_running(v[..., seg], window, reducer, exclude_centre) for seg in segments], axis=-1
        )

    if editing.outlier_window > 1:
        masked = np.where(bad, np.nan, x)
        med = running(masked, editing.outlier_window, np.nanmedian, exclude_centre=True)
        resid = masked - med
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mad = 1.4826 * np.nanmedian(np.abs(resid), axis=-1, keepdims=True)
            level = np.nanmedian(np.abs(masked), axis=-1, keepdims=True)
        sigma = np.maximum(np.nan_to_num(mad), 1e-12 * np.nan_to_num(level))
        bad = bad | (np.abs(np.nan_to_num(resid)) > editing.outlier_nsigma * sigma)
    edited = bad.copy()
    values = np.where(bad, np.nan, x)
    flag = bad.copy()
    if editing.interpolate:
        flat_v = values.reshape(-1, values.shape[-1])
        flat_f = flag.reshape(-1, flag.shape[-1])
        for k in range(flat_v.shape[0]):
            good = ~flat_f[k]
            if good.any() and not good.all():
                flat_v[k] = np.interp(times, times[good], flat_v[k, good])
                flat_f[k] = False
    if editing.smooth_window > 1:
        reducer = np.nanmedian if editing.smooth_method == "median" else np.nanmean
        values = np.where(flag, np.nan, running(values, editing.smooth_window, reducer))
    return np.where(flag, np.nan, values), flag, edited


def edit_power(power: xr.DataArray, editing: Editing | None = None) -> xr.Dataset:
    """Edit one switched-power variable (Pdiff or Psum), lazily for dask-backed input.

    Parameters
    ----------
    power : xr.DataArray
        With a ``time`` dim (any others: antenna_name, receptor...).
    editing : Editing
        The operations (default: flag non-positive samples and interpolate over them).

    Returns
    -------
    xr.Dataset
        ``value`` (NaN where no usable value), ``flag`` (True: no usable value), ``edited``
        (True: the sample was flagged by the editing and replaced or left flagged).
    """
    editing = editing or Editing()
    if editing.smooth_method not in ("mean", "median"):
        raise SwPowError(
            f"swpower: smooth_method must be mean or median, not {editing.smooth_method!r}"
        )
    if power.chunks is not None:
        power = power.chunk({schema.TIME: -1})
    times = np.asarray(power[schema.TIME].values, dtype=float)
    value, flag, edited = xr.apply_ufunc(
        _edit_block,
        power,
        input_core_dims=[[schema.TIME]],
        output_core_dims=[[schema.TIME]] * 3,
        dask="parallelized",
        output_dtypes=[np.float64, bool, bool],
        kwargs={"times": times, "editing": editing},
    )
    return xr.Dataset({"value": value, "flag": flag, "edited": edited})


# ---------------------------------------------------------------------------------------------
# Tcal


def _tcal_for_spw(
    tcal: Any, tree: xr.DataTree | None, spw: int, centre_hz: float
) -> tuple[xr.DataArray, str]:
    """Tcal (K) for `spw`, dims (receptor) or (antenna_name, receptor), and where it came from."""
    if tcal is None:
        if tree is None:
            raise SwPowError("swpower: no tcal given and no execution block to read CALDEVICE from")
        table = noise_cal(tree)
        if not table:
            raise SwPowError(
                "swpower: the execution block has no CALDEVICE NOISE_CAL (no cal_device_xds in "
                "any partition): give tcal= (a Tcal table)"
            )
        if spw not in table:
            raise SwPowError(
                f"swpower: CALDEVICE has no NOISE_CAL for spw {spw} (it covers spws "
                f"{sorted(table)}): give tcal="
            )
        return table[spw], "CALDEVICE"
    if isinstance(tcal, Mapping):
        if spw not in tcal:
            raise SwPowError(
                f"swpower: the tcal table has spws {sorted(tcal)}, not spw {spw} "
                "(spws do not match)"
            )
        value = tcal[spw]
        if not isinstance(value, xr.DataArray):
            value = xr.DataArray(np.asarray(value, dtype=float), dims=schema.RECEPTOR)
        return value, "table per spw"
    if not isinstance(tcal, xr.DataArray) or schema.FREQUENCY not in tcal.dims:
        raise SwPowError(
            "swpower: tcal must be a DataArray with a frequency dim (Hz; engineering table) or "
            "a mapping spw -> Tcal per receptor"
        )
    freq = np.asarray(tcal[schema.FREQUENCY].values, dtype=float)
    order = np.argsort(freq)
    on_spw = xr.apply_ufunc(
        lambda v: np.apply_along_axis(lambda s: np.interp(centre_hz, freq[order], s[order]), -1, v),
        tcal,
        input_core_dims=[[schema.FREQUENCY]],
    )
    on_spw = on_spw.assign_attrs({schema.ATTR_UNITS: schema.UNITS_KELVIN})
    return on_spw, "table (linear in frequency)"


def _tcal_on_antennas(tcal: xr.DataArray, antennas: list[str], receptors: list[str], spw: int):
    """Tcal with dims (antenna_name, receptor) for exactly `antennas`, `receptors`; errors name
    what is missing."""
    if schema.RECEPTOR in tcal.coords:
        have = [str(r) for r in tcal[schema.RECEPTOR].values]
        missing = [r for r in receptors if r not in have]
        if missing:
            raise SwPowError(f"swpower: Tcal for spw {spw} has receptors {have}, not {missing}")
        tcal = tcal.sel({schema.RECEPTOR: receptors})
    else:
        tcal = tcal.assign_coords({schema.RECEPTOR: receptors})
    if schema.ANTENNA_NAME in tcal.dims:
        have = [str(a) for a in tcal[schema.ANTENNA_NAME].values]
        tcal = tcal.reindex({schema.ANTENNA_NAME: antennas})
        bad = [a for a in antennas if a not in have]
        values = np.asarray(tcal.values, dtype=float)
        bad += [
            a
            for k, a in enumerate(antennas)
            if a not in bad and not np.all(np.isfinite(values[k]) & (values[k] > 0))
        ]
        if bad:
            raise SwPowError(f"swpower: no valid Tcal for antenna(s) {bad} in spw {spw}")
    else:
        values = np.asarray(tcal.values, dtype=float)
        if not np.all(np.isfinite(values) & (values > 0)):
            raise SwPowError(f"swpower: invalid Tcal {values.tolist()} K for spw {spw}")
        tcal = tcal.expand_dims({schema.ANTENNA_NAME: antennas})
    return tcal.transpose(schema.ANTENNA_NAME, schema.RECEPTOR).astype(float)


# ---------------------------------------------------------------------------------------------
# the solution


def scale_factors(
    power: xr.Dataset,
    tcal: xr.DataArray,
    *,
    frequency_hz: float,
    spw: int = 0,
    scale: str = schema.SWPOW_SCALE_KELVIN,
    eta_aeff_m2: xr.DataArray | None = None,
    editing: Editing | None = None,
    requantizer: bool = False,
    casa_constants: bool = False,
    rho_normalisation: str = "power",
) -> xr.Dataset:
    """The switched-power solution from powers and Tcal (lazy for dask-backed `power`).

    Parameters
    ----------
    power : xr.Dataset
        ``SWITCHED_DIFF``, ``SWITCHED_SUM`` (and ``REQUANTIZER_GAIN`` for `requantizer`) with
        dims ``(antenna_name, time, receptor)``, as from :func:`switched_power`.
    tcal : xr.DataArray
        Tcal (K), dims ``(antenna_name, receptor)``.
    frequency_hz : float
        The spw centre: the solution's one frequency.
    scale : {"K", "Jy", "rho"}
    eta_aeff_m2 : xr.DataArray
        ``eta Aeff`` (m^2) per antenna (``antenna_name``), for scale ``"Jy"``.
    editing, requantizer, casa_constants, rho_normalisation
        See the module docstring.

    Returns
    -------
    xr.Dataset
        The solution (layout in :mod:`radflow.schema`, "switched power").
    """
    if scale not in schema.SWPOW_SCALES:
        raise SwPowError(f"swpower: scale must be one of {schema.SWPOW_SCALES}, not {scale!r}")
    if rho_normalisation not in ("power", "noise_diode"):
        raise SwPowError(
            "swpower: rho_normalisation must be 'power' or 'noise_diode', not "
            f"{rho_normalisation!r}"
        )
    missing = [n for n in _POWERS if n not in power]
    if missing:
        raise SwPowError(f"swpower: spw {spw}: the switched-power data lack {missing}")
    editing = editing or Editing()
    dims = (schema.TIME, schema.ANTENNA_NAME, schema.RECEPTOR)
    pdiff = edit_power(power[schema.SWITCHED_DIFF].transpose(*dims), editing)
    psum = edit_power(power[schema.SWITCHED_SUM].transpose(*dims), editing)
    if pdiff["flag"].chunks is None and bool(pdiff["flag"].all()):
        raise SwPowError(
            f"swpower: spw {spw}: every Pdiff (SWITCHED_DIFF) sample is flagged "
            "(non-positive, non-finite or an outlier): no switched-power solution"
        )
    tcal = tcal.transpose(schema.ANTENNA_NAME, schema.RECEPTOR)
    pdiff, psum = pdiff.transpose(*dims), psum.transpose(*dims)
    pd, ps = pdiff["value"], psum["value"]
    tsys = ps / pd * tcal / 2.0
    if scale == schema.SWPOW_SCALE_KELVIN:
        factor = tcal / pd
    elif scale == schema.SWPOW_SCALE_JANSKY:
        if eta_aeff_m2 is None:
            raise SwPowError("swpower: scale 'Jy' needs eta Aeff (aperture)")
        factor = 2.0 * BOLTZMANN_J_K * tcal / (pd * eta_aeff_m2) / JANSKY_W_M2_HZ
    elif rho_normalisation == "power":
        factor = 2.0 / ps
    else:
        factor = 2.0 * pd / ps
    flag = pdiff["flag"] | psum["flag"]
    if requantizer:
        if schema.REQUANTIZER_GAIN not in power:
            raise SwPowError(
                f"swpower: spw {spw}: requantizer=True but SYSPOWER has no REQUANTIZER_GAIN"
            )
        q = power[schema.REQUANTIZER_GAIN].transpose(*dims)
        flag = flag | ~(q > 0)
        factor = factor / q**2
    weight_scale = 1.0
    if casa_constants:
        factor = factor / CASA_DIGITAL_FACTOR
        weight_scale = schema.SWPOW_CORRELATOR_EFFICIENCY**2
    good = ~flag & np.isfinite(factor) & (factor > 0) & np.isfinite(tsys) & (tsys > 0)
    sol_dims = (schema.TIME, schema.ANTENNA_NAME, schema.FREQUENCY, schema.RECEPTOR)

    def solution_var(x: xr.DataArray) -> xr.DataArray:
        return x.expand_dims({schema.FREQUENCY: [float(frequency_hz)]}, axis=2).transpose(*sol_dims)

    data_units = _DATA_UNITS[scale]
    out = xr.Dataset(
        {
            schema.CALIBRATION_PARAMETER: solution_var(xr.where(good, factor, 1.0)).assign_attrs(
                {
                    schema.ATTR_UNITS: f"{data_units} per raw unit",
                    "long_name": f"switched-power scale factor C to {scale}",
                }
            ),
            schema.FLAG: solution_var(~good),
            schema.TSYS: solution_var(xr.where(good, tsys, 1.0)).assign_attrs(
                {schema.ATTR_UNITS: schema.UNITS_KELVIN, "long_name": "Tcal Psum / (2 Pdiff)"}
            ),
            schema.SWITCHED_DIFF: pd.assign_attrs({schema.ATTR_UNITS: ""}),
            schema.SWITCHED_SUM: ps.assign_attrs({schema.ATTR_UNITS: ""}),
            schema.SWPOW_EDITED_DIFF: pdiff["edited"],
            schema.SWPOW_EDITED_SUM: psum["edited"],
            schema.TCAL: tcal.assign_attrs({schema.ATTR_UNITS: schema.UNITS_KELVIN}),
        },
        attrs={
            schema.ATTR_TYPE: schema.TYPE_CALIBRATION_SOLUTION,
            schema.ATTR_CAL_TYPE: schema.CAL_TYPE_SWPOW,
            schema.ATTR_SPW_ID: int(spw),
            schema.SWPOW_ATTR_SCALE: scale,
            schema.SWPOW_ATTR_DATA_UNITS: data_units,
            schema.SWPOW_ATTR_WEIGHT_SCALE: weight_scale,
            schema.SWPOW_ATTR_CASA_CONSTANTS: bool(casa_constants),
            schema.SWPOW_ATTR_REQUANTIZER: bool(requantizer),
            schema.SWPOW_ATTR_EDITING: editing.as_dict(),
            schema.SWPOW_ATTR_RHO_NORMALISATION: rho_normalisation,
            "time_convention": "SYSPOWER TIME (middle of the switched-power interval)",
        },
    )
    if requantizer:
        out[schema.REQUANTIZER_GAIN] = power[schema.REQUANTIZER_GAIN].transpose(*dims)
    return out


def _eta_aeff(
    tree: xr.DataTree, antennas: list[str], centre_hz: float, aperture: Any
) -> tuple[xr.DataArray, dict]:
    band = band_of(centre_hz)
    table = aperture if aperture is not None else VLA_APERTURE_EFFICIENCY
    if band not in table:
        raise SwPowError(f"swpower: no aperture for band {band} (aperture table has {list(table)})")
    entry = table[band]
    if isinstance(entry, Aperture):
        eff, area = entry.efficiency, entry.area_m2
    elif isinstance(entry, Mapping):
        eff, area = float(entry["efficiency"]), entry.get("area_m2")
    else:
        eff, area = float(entry), None
    if area is None:
        diameters = {}
        for node in partitions(tree).values():
            if schema.ANTENNA_XDS in node.children:
                ant = node[schema.ANTENNA_XDS].to_dataset(inherit=False)
                if schema.ANTENNA_DISH_DIAMETER in ant:
                    for name, d in zip(
                        ant[schema.ANTENNA_NAME].values.astype(str),
                        ant[schema.ANTENNA_DISH_DIAMETER].values,
                        strict=True,
                    ):
                        diameters[name] = float(d)
        missing = [a for a in antennas if a not in diameters]
        if missing:
            raise SwPowError(f"swpower: no dish diameter for antenna(s) {missing}: give area_m2")
        areas = np.array([np.pi * (diameters[a] / 2.0) ** 2 for a in antennas])
    else:
        areas = np.full(len(antennas), float(area))
    value = xr.DataArray(
        eff * areas, dims=schema.ANTENNA_NAME, coords={schema.ANTENNA_NAME: antennas}
    )
    return value, {"band": band, "efficiency": float(eff), "area_m2": float(areas.mean())}


def solve(
    tree: xr.DataTree,
    spw: int,
    *,
    scale: str = schema.SWPOW_SCALE_KELVIN,
    tcal: Any = None,
    aperture: Mapping[str, Any] | None = None,
    editing: Editing | None = None,
    requantizer: bool = False,
    casa_constants: bool = False,
    rho_normalisation: str = "power",
) -> xr.Dataset:
    """Switched-power solution for spectral window `spw` of one execution block.

    Parameters
    ----------
    tree : xr.DataTree
        An opened store (:func:`radflow.open`); only its sub-datasets are read.
    spw : int
        Spectral window id.
    scale : {"K", "Jy", "rho"}
        What the applied data become: antenna temperature, flux density, correlation
        coefficient.
    tcal : None, DataArray or mapping
        None: CALDEVICE NOISE_CAL; else an engineering table (see the module docstring).
    aperture : mapping band -> Aperture, {"efficiency", "area_m2"} or efficiency, optional
        For scale ``"Jy"`` (default: :data:`VLA_APERTURE_EFFICIENCY` and the dish areas).
    editing : Editing
        Pdiff/Psum editing (default: non-positive samples flagged and interpolated over).
    requantizer, casa_constants, rho_normalisation
        See the module docstring.

    Raises
    ------
    SwPowError
        No switched-power data in the block, none for `spw` (spws not matching), no Tcal for an
        antenna or the spw, every Pdiff flagged, a bad parameter.
    """
    windows = spectral_windows(tree)
    if spw not in windows:
        raise SwPowError(f"swpower: unknown spw {spw}; the store has spws {sorted(windows)}")
    powers = switched_power(tree)
    if not powers:
        raise SwPowError(
            "swpower: the execution block has no switched-power data (no SYSPOWER subtable in "
            "the MS, so no switched_power_xds in any partition): switched-power calibration "
            "needs VLA SYSPOWER and CALDEVICE"
        )
    if spw not in powers:
        raise SwPowError(
            f"swpower: SYSPOWER has no rows for spw {spw} (it covers spws {sorted(powers)}): the "
            "spws do not match"
        )
    power = powers[spw]
    antennas = [str(a) for a in power[schema.ANTENNA_NAME].values]
    receptors = [str(r) for r in power[schema.RECEPTOR].values]
    centre = float(np.mean(windows[spw].frequency))
    raw_tcal, source = _tcal_for_spw(tcal, tree, spw, centre)
    tcal_da = _tcal_on_antennas(raw_tcal, antennas, receptors, spw)
    eta_aeff, aperture_info = None, None
    if scale == schema.SWPOW_SCALE_JANSKY:
        eta_aeff, aperture_info = _eta_aeff(tree, antennas, centre, aperture)
    out = scale_factors(
        power,
        tcal_da,
        frequency_hz=centre,
        spw=spw,
        scale=scale,
        eta_aeff_m2=eta_aeff,
        editing=editing,
        requantizer=requantizer,
        casa_constants=casa_constants,
        rho_normalisation=rho_normalisation,
    )
    out.attrs[schema.SWPOW_ATTR_TCAL_SOURCE] = source
    if aperture_info is not None:
        out.attrs[schema.SWPOW_ATTR_APERTURE] = aperture_info
    return out


def solve_all(tree: xr.DataTree, spws: Any = None, **kwargs: Any) -> dict[int, xr.Dataset]:
    """:func:`solve` for every spw of the block's partitions (or `spws`): a solution table."""
    spws = sorted(spectral_windows(tree)) if spws is None else [int(s) for s in spws]
    return {spw: solve(tree, spw, **kwargs) for spw in spws}
