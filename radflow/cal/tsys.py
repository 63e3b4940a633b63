"""tsys: system temperature solutions from the SYSCAL spectra (CASA ``gencal(caltype='tsys')``).

The Tsys solution of a science spectral window is built from the ``system_calibration_xds``
sub-datasets of an execution block (one DataTree):

- Spectra: ``TSYS`` (K) per antenna, receptor and Tsys channel, at the Tsys spw's channel
  frequencies (``frequency_system_cal``, Hz); a SYSCAL table without spectra gives a scalar Tsys
  that is flat in frequency.
- Time stamps: SYSCAL ``TIME - INTERVAL/2`` (CASA's convention: the start of the measurement).
- Spw map: each science spw takes the Tsys spw of the same baseband whose frequency range
  overlaps it most (the ALMA pipeline's ``tsysspwmap``); CASA's ``spwmap`` overrides it.
- Frequency: linear interpolation over the good Tsys channels onto the science channel
  frequencies, nearest beyond the Tsys spw's edges. Time interpolation happens when the
  solution is applied (:mod:`radflow.cal.interp`: linear between, nearest outside).
- Flags: Tsys <= 0 or not finite is flagged; a spectrum with no good channel is flagged whole.

The solution is a small in-memory dataset: dims ``(time, antenna_name, frequency, receptor)``,
``CALIBRATION_PARAMETER`` (Tsys, K) and ``FLAG``; attrs ``cal_type = "TSYS"``, the science and
Tsys spw ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from radflow import schema
from radflow.step import coord_values
from radflow.store import partitions

SpwMap = Mapping[int, int] | Sequence[int]


class TsysError(ValueError):
    """The Tsys solution cannot be built (no SYSCAL data, no matching Tsys spw...)."""


@dataclass(frozen=True)
class SpectralWindow:
    """What the Tsys step needs to know about one spectral window of an execution block."""

    spw_id: int
    name: str
    baseband: int | None
    frequency: np.ndarray  # channel centres, Hz


def spectral_windows(tree: xr.DataTree) -> dict[int, SpectralWindow]:
    """The spectral windows of an execution block's partitions, by spw id."""
    out: dict[int, SpectralWindow] = {}
    for node in partitions(tree).values():
        info = node.attrs.get(schema.ATTR_PARTITION_INFO) or {}
        spw = int(info[schema.PI_SPW_ID])
        if spw not in out:
            ds = node.to_dataset(inherit=False)
            baseband = info.get(schema.PI_BASEBAND)
            out[spw] = SpectralWindow(
                spw_id=spw,
                name=str(info.get(schema.PI_SPW_NAME, spw)),
                baseband=None if baseband is None else int(baseband),
                frequency=coord_values(ds, schema.FREQUENCY).astype(float),
            )
    return out


def receptor_names(node: xr.DataTree, labels: np.ndarray) -> list[str]:
    """Receptor labels (pol_0, pol_1) -> polarization types (X, Y; R, L) from the antenna
    sub-dataset of `node`; the labels themselves where the antennas differ or none are given."""
    if schema.ANTENNA_XDS in node.children:
        ant = node[schema.ANTENNA_XDS].to_dataset(inherit=False)
        if schema.POLARIZATION_TYPE in ant.coords:
            types = ant[schema.POLARIZATION_TYPE].sel({schema.RECEPTOR_LABEL: labels}).values
            per_receptor = {tuple(row) for row in np.atleast_2d(types).astype(str)}
            if len(per_receptor) == 1:
                return list(next(iter(per_receptor)))
    return [str(label) for label in labels]


def system_calibration(tree: xr.DataTree) -> dict[int, xr.Dataset]:
    """All SYSCAL Tsys spectra of an execution block, one dataset per Tsys spw.

    Each partition carries the SYSCAL rows of its own spw and antennas; they are merged here.
    Returns datasets with dims ``(time, antenna_name, receptor, frequency_system_cal)``,
    ``TSYS`` in K and time = SYSCAL ``TIME - INTERVAL/2`` (unix s).
    """
    per_spw: dict[int, dict[str, xr.Dataset]] = {}
    for node in partitions(tree).values():
        if schema.SYSTEM_CALIBRATION_XDS not in node.children:
            continue
        xds = node[schema.SYSTEM_CALIBRATION_XDS].to_dataset()  # antenna_name comes from above
        if schema.TSYS not in xds:
            continue
        xds = xds[[schema.TSYS, schema.SYSCAL_INTERVAL]]
        spw = int(xds.attrs[schema.ATTR_SPW_ID])
        receptors = receptor_names(node, xds[schema.RECEPTOR_LABEL].values)
        for antenna in xds[schema.ANTENNA_NAME].values.astype(str):
            seen = per_spw.setdefault(spw, {})
            if antenna in seen:
                continue
            one = xds[[schema.TSYS]].sel({schema.ANTENNA_NAME: [antenna]})
            start = xds[schema.TIME_SYSTEM_CAL].values - xds[schema.SYSCAL_INTERVAL].values / 2.0
            one = one.assign_coords(
                {schema.TIME_SYSTEM_CAL: start, schema.RECEPTOR_LABEL: receptors}
            )
            seen[antenna] = one.rename(
                {schema.TIME_SYSTEM_CAL: schema.TIME, schema.RECEPTOR_LABEL: schema.RECEPTOR}
            )
    out = {}
    for spw, by_antenna in per_spw.items():
        # Antennas may have different SYSCAL times: the union, with NaN (flagged) where absent.
        ds = xr.concat(list(by_antenna.values()), dim=schema.ANTENNA_NAME, join="outer")
        out[spw] = ds.sortby(schema.TIME).assign_attrs({schema.ATTR_SPW_ID: spw})
    return out


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Overlap (Hz) of the frequency ranges of two channel-frequency arrays."""
    return max(0.0, min(a.max(), b.max()) - max(a.min(), b.min()))


def spw_map(
    science: Mapping[int, SpectralWindow],
    tsys_spws: Mapping[int, SpectralWindow | np.ndarray],
    override: SpwMap | None = None,
) -> dict[int, int]:
    """Map each science spw to the Tsys spw that calibrates it (ALMA pipeline ``tsysspwmap``).

    Parameters
    ----------
    science : dict
        Science spectral windows by id.
    tsys_spws : dict
        Tsys spectral windows by id (a :class:`SpectralWindow`, or just its channel
        frequencies in Hz when the baseband is unknown).
    override : dict or list, optional
        CASA's ``spwmap``: ``{science_spw: tsys_spw}``, or a list whose index is the science spw
        id and value the Tsys spw id. Science spws it does not name are mapped automatically.

    Rule: among the Tsys spws of the same baseband, the one whose frequency range overlaps the
    science spw most; if no Tsys spw of that baseband overlaps, the largest overlap in any
    baseband. A science spw that is itself a Tsys spw maps to itself.

    Raises
    ------
    TsysError
        If a science spw overlaps no Tsys spw, or `override` names an unknown Tsys spw.
    """
    given: dict[int, int] = {}
    if override is not None:
        items = override.items() if isinstance(override, Mapping) else enumerate(override)
        given = {int(k): int(v) for k, v in items}
    out: dict[int, int] = {}
    for spw, window in science.items():
        if spw in given:
            if given[spw] not in tsys_spws:
                raise TsysError(
                    f"tsys: spwmap maps science spw {spw} to spw {given[spw]}, which has no "
                    f"Tsys spectra (Tsys spws: {sorted(tsys_spws)})"
                )
            out[spw] = given[spw]
            continue
        if spw in tsys_spws:
            out[spw] = spw
            continue
        scores = []
        for tid, tsys in tsys_spws.items():
            freqs = tsys.frequency if isinstance(tsys, SpectralWindow) else np.asarray(tsys)
            same_bb = (
                isinstance(tsys, SpectralWindow)
                and tsys.baseband is not None
                and tsys.baseband == window.baseband
            )
            overlap = _overlap(window.frequency, freqs)
            if overlap > 0:
                scores.append((same_bb, overlap, -tid))
        if not scores:
            raise TsysError(
                f"tsys: science spw {spw} ({window.name}) overlaps no Tsys spw in frequency "
                f"(Tsys spws: {sorted(tsys_spws)}); give spwmap"
            )
        out[spw] = -max(scores)[2]
    return out


def _interp_frequency(tsys: np.ndarray, tsys_freq: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """Linear interpolation of (..., n_tsys_chan) spectra onto `freq`, over good channels only."""
    order = np.argsort(tsys_freq)
    tsys_freq = tsys_freq[order]
    tsys = tsys[..., order]
    flat = tsys.reshape(-1, tsys.shape[-1])
    out = np.full((flat.shape[0], freq.size), np.nan)
    for k, spectrum in enumerate(flat):
        good = np.isfinite(spectrum) & (spectrum > 0)
        if good.any():
            out[k] = np.interp(freq, tsys_freq[good], spectrum[good])
    return out.reshape(tsys.shape[:-1] + (freq.size,))


def solve(
    tree: xr.DataTree,
    spw: int,
    *,
    spwmap: SpwMap | None = None,
    syscal: Mapping[int, xr.Dataset] | None = None,
) -> xr.Dataset:
    """Tsys solution for science spectral window `spw` of one execution block.

    Parameters
    ----------
    tree : xr.DataTree
        An opened store (:func:`radflow.open`); only its in-memory sub-datasets are read.
    spw : int
        Science spectral window id.
    spwmap : dict or list, optional
        CASA-style override of the automatic Tsys spw map (see :func:`spw_map`).
    syscal : mapping, optional
        :func:`system_calibration` of `tree`, made once by a caller solving several spws.

    Returns
    -------
    xr.Dataset
        In memory: ``CALIBRATION_PARAMETER`` (Tsys, K) and ``FLAG`` with dims ``(time,
        antenna_name, frequency, receptor)``; time = SYSCAL ``TIME - INTERVAL/2`` (unix s),
        frequency = the science channel frequencies (Hz).

    Raises
    ------
    TsysError
        If the block has no SYSCAL Tsys, `spw` is unknown, or no Tsys spw matches it.
    """
    windows = spectral_windows(tree)
    if spw not in windows:
        raise TsysError(f"tsys: unknown spw {spw}; the store has spws {sorted(windows)}")
    if syscal is None:
        syscal = system_calibration(tree)
    if not syscal:
        raise TsysError(
            "tsys: the execution block has no SYSCAL Tsys spectra (no system_calibration_xds "
            "with TSYS in any partition)"
        )
    # SYSCAL reaches the store through the partitions of its own spw, so windows knows it.
    tsys_windows: dict[int, SpectralWindow | np.ndarray] = {tid: windows[tid] for tid in syscal}
    tsys_spw = spw_map({spw: windows[spw]}, tsys_windows, spwmap)[spw]
    table = syscal[tsys_spw]
    freq = windows[spw].frequency
    values = table[schema.TSYS].transpose(schema.TIME, schema.ANTENNA_NAME, schema.RECEPTOR, ...)
    if schema.FREQUENCY_SYSTEM_CAL in values.dims:
        tsys_freq = table[schema.FREQUENCY_SYSTEM_CAL].values.astype(float)
        on_science = _interp_frequency(values.values.astype(float), tsys_freq, freq)
    else:  # scalar SYSCAL TSYS: flat in frequency
        scalar = values.values.astype(float)
        scalar = np.where(np.isfinite(scalar) & (scalar > 0), scalar, np.nan)
        on_science = np.repeat(scalar[..., None], freq.size, axis=-1)
    on_science = np.moveaxis(on_science, 2, 3)  # (time, antenna, frequency, receptor)
    flag = ~(np.isfinite(on_science) & (on_science > 0))
    dims = (schema.TIME, schema.ANTENNA_NAME, schema.FREQUENCY, schema.RECEPTOR)
    coords = {
        schema.TIME: table[schema.TIME].values,
        schema.ANTENNA_NAME: table[schema.ANTENNA_NAME].values.astype(str),
        schema.FREQUENCY: freq,
        schema.RECEPTOR: table[schema.RECEPTOR].values.astype(str),
    }
    return xr.Dataset(
        {
            schema.CALIBRATION_PARAMETER: (
                dims,
                np.where(flag, 1.0, on_science),  # flagged values are never used: keep finite
                {schema.ATTR_UNITS: schema.UNITS_KELVIN, "long_name": "system temperature"},
            ),
            schema.FLAG: (dims, flag),
        },
        coords=coords,
        attrs={
            schema.ATTR_TYPE: schema.TYPE_CALIBRATION_SOLUTION,
            schema.ATTR_CAL_TYPE: schema.CAL_TYPE_TSYS,
            schema.ATTR_SPW_ID: spw,
            schema.ATTR_TSYS_SPW_ID: tsys_spw,
            "time_convention": "SYSCAL TIME - INTERVAL/2",
            "frequency_interpolation": "linear (nearest beyond the Tsys spw)",
        },
    )


def correlation_table(solution: xr.Dataset, polarizations: Sequence[str]) -> xr.Dataset:
    """Tsys per correlation: ``sqrt(T_a T_b)`` for correlation ``ab`` (XX -> T_X).

    Returns the solution with the ``receptor`` dim replaced by ``polarization``; a correlation is
    flagged when either receptor is.

    Raises
    ------
    TsysError
        If a correlation names a receptor the solution lacks.
    """
    receptors = [str(r) for r in solution[schema.RECEPTOR].values]
    missing = sorted({r for p in polarizations for r in p if r not in receptors})
    if missing:
        raise TsysError(
            f"tsys: the solution (spw {solution.attrs.get(schema.ATTR_SPW_ID)}) has receptors "
            f"{receptors}; correlations {list(polarizations)} need {missing}"
        )
    # numpy on the receptor axis, one dataset at the end: this runs for every (antenna, spw)
    # at graph-building time, where per-operation xarray overhead adds up.
    value = solution[schema.CALIBRATION_PARAMETER].transpose(..., schema.RECEPTOR)
    flag = solution[schema.FLAG].transpose(*value.dims)
    first = [receptors.index(p[0]) for p in polarizations]
    second = [receptors.index(p[-1]) for p in polarizations]
    dims = (*value.dims[:-1], schema.POLARIZATION)
    coords = {
        name: coord.variable
        for name, coord in solution.coords.items()
        if schema.RECEPTOR not in coord.dims
    }
    coords[schema.POLARIZATION] = (schema.POLARIZATION, list(polarizations))
    return xr.Dataset(
        {
            schema.CALIBRATION_PARAMETER: (
                dims,
                np.sqrt(value.data[..., first] * value.data[..., second]),
                value.attrs,
            ),
            schema.FLAG: (dims, flag.data[..., first] | flag.data[..., second], flag.attrs),
        },
        coords=coords,
        attrs=solution.attrs,
    )
