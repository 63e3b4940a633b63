"""The ALMA pipeline's ``hifa_gfluxscale`` heuristics around :mod:`radflow.cal.fluxscale`.

- Resolved flux calibrators (:func:`resolved_calibrator_antennas`): use only the antennas
  within the baseline length where a uniform disk's visibility ``J1(x)/x``,
  ``x = pi b theta / lambda`` (``theta`` the disk diameter, ``lambda`` the longest science
  wavelength), falls to ``peak_fraction`` (0.2) of its value at the shortest baseline to the
  reference antenna; fewer than 3 antennas: use all. The pipeline scans baselines in 1 m steps
  from the shortest one (``pipeline_grid=True`` does the same); radflow solves for the crossing
  exactly by default. Distances are unprojected 3-D baselines from antenna positions (the
  pipeline projects longitude/latitude on a sphere of the antenna's height) and
  ``c = 299792458 m/s`` (the pipeline: 3e8).
- Amplitude outliers (:func:`amplitude_outliers`, :func:`flag_amplitude_outliers`):
  ``|a - median| / (MAD / 0.6745) > amp_outlier_sigma`` (50), median and MAD over the unflagged
  amplitudes; the table-level function takes them per field over all spws and flags the whole
  (time, antenna) solution of an outlier, as the pipeline's flag commands do.
- QA scores (pipeline ``scorecalculator``): completeness (measured / expected flux densities),
  SNR (linear from 0.66 at SNR 5 to 1.0 at 26.25, clipped; the mean over measurements), and
  spectral consistency (``k_spw = R_spw / R_spw(highest-SNR spw)``, ``R = derived / catalogue``:
  1.0 below a deviation ``|1 - k_spw|`` of 0.1, 0.75 below 0.2, else 0.5 -- the levels of the
  current pipeline documentation; older pipelines also had 0.5 below 0.3 and 0.2 above).
- Transfer calibrator models (:func:`transfer_models`): the fluxscale result in CASA's dict
  shape, restricted to the transfer fields, as ``setjy(standard='fluxscale')`` reads it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from scipy.optimize import brentq
from scipy.special import j1, jn_zeros

from radflow import schema
from radflow.cal.fluxscale import FluxscaleError, result_dict

SPEED_OF_LIGHT_M_S = 299792458.0
PEAK_FRACTION = 0.2
AMP_OUTLIER_SIGMA = 50.0
MAD_TO_SIGMA = 0.6745  # MAD / 0.6745 estimates a normal distribution's sigma
MIN_ANTENNAS = 3
SNR_LOW, SNR_HIGH = 5.0, 26.25  # PIPE-644
SNR_SCORE_LOW, SNR_SCORE_HIGH = 0.66, 1.0
_FIRST_NULL = float(jn_zeros(1, 1)[0])  # 3.8317...: the disk visibility's first zero
_PIPELINE_STEPS_M = 10000  # the pipeline scans shortest + 0..9999 m


# ---- resolved calibrators ----


def disk_visibility(x: Any) -> Any:
    """``J1(x)/x`` (0.5 at 0): a uniform disk's visibility, up to a factor 2."""
    x = np.asarray(x, dtype=float)
    safe = np.where(x == 0, 1.0, x)
    return np.where(x == 0, 0.5, j1(safe) / safe)


def limit_baseline(
    shortest_m: float,
    diameter_rad: float,
    wavelength_m: float,
    peak_fraction: float = PEAK_FRACTION,
    *,
    pipeline_grid: bool = False,
) -> float:
    """Baseline (m) beyond which a disk's visibility is below `peak_fraction` of its value at
    `shortest_m`.

    ``inf`` for an unresolved source (diameter 0). With `pipeline_grid` the answer is the
    pipeline's: the first of ``shortest_m + 0, 1, ... 9999`` m where the visibility is below
    the limit (``shortest_m + 10000`` when none is).
    """
    if not 0 < peak_fraction < 1:
        raise ValueError(f"peak_fraction must be in (0, 1), not {peak_fraction}")
    if diameter_rad <= 0:
        return math.inf
    scale = math.pi * diameter_rad / wavelength_m  # x = scale * b
    peak = float(disk_visibility(scale * shortest_m))
    target = peak_fraction * peak
    if pipeline_grid:
        b = shortest_m + np.arange(_PIPELINE_STEPS_M)
        below = np.flatnonzero(disk_visibility(scale * b) < target)
        return float(b[below[0]]) if below.size else float(shortest_m + _PIPELINE_STEPS_M)
    x_s = scale * shortest_m
    if peak <= 0 or x_s >= _FIRST_NULL:  # resolved out already on the shortest baseline
        return float(shortest_m)
    x = brentq(lambda v: float(disk_visibility(v)) - target, x_s, _FIRST_NULL, xtol=1e-12)
    return float(x / scale)


def baselines_to_refant(
    positions: Mapping[str, Sequence[float]] | xr.DataArray, refant: str
) -> dict[str, float]:
    """Unprojected distance (m) of every antenna to `refant` from positions (ITRF or ENU, m).

    `positions`: {name: (x, y, z)} or a DataArray with dims (antenna_name, cartesian_pos_label)
    such as the truth's ``ANTENNA_POSITION`` or an ``antenna_xds`` ``ANTENNA_POSITION``.
    """
    if isinstance(positions, xr.DataArray):
        names = [str(a) for a in positions[schema.ANTENNA_NAME].values]
        xyz = positions.transpose(schema.ANTENNA_NAME, ...).values.astype(float)
        pos = dict(zip(names, xyz, strict=True))
    else:
        pos = {str(k): np.asarray(v, dtype=float) for k, v in positions.items()}
    if refant not in pos:
        raise ValueError(f"refant {refant!r} is not among the antennas {list(pos)}")
    return {name: float(np.linalg.norm(p - pos[refant])) for name, p in pos.items()}


@dataclass(frozen=True)
class AntennaSelection:
    """Antennas to derive the flux scale from (the pipeline's resolved-calibrator heuristic)."""

    antennas: list[str]  # the antennas to use (every antenna when all_antennas)
    all_antennas: bool  # True: no restriction (unresolved, or fewer than 3 within the limit)
    limit_baseline_m: float  # inf for an unresolved source
    shortest_baseline_m: float
    wavelength_m: float

    @property
    def casa_antenna(self) -> str:
        """CASA/pipeline antenna selection: ``""`` for all, else ``"A,B,C&"`` (baselines among
        them)."""
        return "" if self.all_antennas else ",".join(self.antennas) + "&"


def resolved_calibrator_antennas(
    baselines_m: Mapping[str, float],
    refant: str,
    diameter_rad: float,
    frequencies_hz: Iterable[float],
    peak_fraction: float = PEAK_FRACTION,
    *,
    pipeline_grid: bool = False,
) -> AntennaSelection:
    """The pipeline's antenna selection for a resolved (uniform disk) flux calibrator.

    Parameters
    ----------
    baselines_m : Mapping[str, float]
        Every antenna's distance to `refant` (m; the refant itself 0), e.g. from
        :func:`baselines_to_refant`.
    refant : str
        The reference antenna.
    diameter_rad : float
        Disk diameter (rad); 0 for a point source.
    frequencies_hz : iterable of float
        Science spw (centre) frequencies; the longest wavelength is used.
    peak_fraction : float
        Fraction of the visibility at the shortest baseline that sets the limit.

    Returns
    -------
    AntennaSelection
        Antennas closer to the refant than the limit (the refant included), or every antenna
        (``all_antennas``) when the source is unresolved or fewer than 3 qualify.
    """
    names = list(baselines_m)
    if refant not in baselines_m:
        raise ValueError(f"refant {refant!r} is not among the antennas {names}")
    freqs = np.asarray(list(frequencies_hz), dtype=float)
    if freqs.size == 0 or not np.all(freqs > 0):
        raise ValueError("frequencies_hz must hold positive frequencies")
    wavelength = SPEED_OF_LIGHT_M_S / float(freqs.min())
    others = [float(d) for n, d in baselines_m.items() if n != refant]
    if not others:
        raise ValueError("need at least one antenna besides the refant")
    shortest = min(others)
    limit = limit_baseline(
        shortest, diameter_rad, wavelength, peak_fraction, pipeline_grid=pipeline_grid
    )
    inside = [n for n in names if float(baselines_m[n]) < limit]
    use_all = not math.isfinite(limit) or len(inside) < MIN_ANTENNAS or len(inside) == len(names)
    return AntennaSelection(
        antennas=names if use_all else inside,
        all_antennas=use_all,
        limit_baseline_m=limit,
        shortest_baseline_m=shortest,
        wavelength_m=wavelength,
    )


# ---- amplitude outliers ----


def _outlier_block(amp: np.ndarray, bad: np.ndarray, sigma: float) -> np.ndarray:
    good = ~bad & np.isfinite(amp)
    out = np.zeros(amp.shape, dtype=bool)
    if not good.any():
        return out
    values = amp[good]
    med = np.median(values)
    mad = np.median(np.abs(values - med)) / MAD_TO_SIGMA
    # |a - median| / mad > sigma, without dividing (mad may be 0)
    out[good] = np.abs(values - med) > sigma * mad
    return out


def amplitude_outliers(
    amplitudes: Any, flag: Any = None, amp_outlier_sigma: float = AMP_OUTLIER_SIGMA
) -> Any:
    """True where ``|a - median| / (MAD / 0.6745) > amp_outlier_sigma``.

    Median and MAD are over every unflagged, finite amplitude of the array; flagged and
    non-finite samples are never outliers. Works on numpy arrays, dask arrays (lazily: the
    array is gathered into one chunk, fine for solution tables) and DataArrays (returns one).
    """
    if isinstance(amplitudes, xr.DataArray):
        flag_data = flag.data if isinstance(flag, xr.DataArray) else flag
        data = amplitude_outliers(amplitudes.data, flag_data, amp_outlier_sigma)
        return xr.DataArray(data, dims=amplitudes.dims, coords=amplitudes.coords)
    lazy = isinstance(amplitudes, da.Array) or isinstance(flag, da.Array)
    if not lazy:
        amp = np.asarray(amplitudes, dtype=float)
        bad = np.zeros(amp.shape, bool) if flag is None else np.asarray(flag, bool)
        return _outlier_block(amp, np.broadcast_to(bad, amp.shape), amp_outlier_sigma)
    amp = da.asarray(amplitudes).astype(float)
    bad = da.zeros(amp.shape, dtype=bool) if flag is None else da.asarray(flag).astype(bool)
    bad = da.broadcast_to(bad, amp.shape)
    return da.map_blocks(
        _outlier_block, amp.rechunk(-1), bad.rechunk(-1), amp_outlier_sigma, dtype=bool
    )


def _field_statistics(amps: Sequence[np.ndarray], field_index: Sequence[np.ndarray], n_f: int):
    """(median, MAD/0.6745) per field over the unflagged amplitudes of every spw."""
    stats = np.full((n_f, 2), np.nan)
    for f in range(n_f):
        values = np.concatenate(
            [np.asarray(a)[idx == f].ravel() for a, idx in zip(amps, field_index, strict=True)]
        )
        values = values[np.isfinite(values)]
        if values.size:
            med = np.median(values)
            stats[f] = med, np.median(np.abs(values - med)) / MAD_TO_SIGMA
    return stats


def flag_amplitude_outliers(
    table: Mapping[int, xr.Dataset], amp_outlier_sigma: float = AMP_OUTLIER_SIGMA
) -> tuple[dict[int, xr.Dataset], dict[int, xr.DataArray]]:
    """Flag amplitude outliers of a gain table as ``hifa_gfluxscale`` does (lazy).

    Per field, median and MAD of the unflagged ``|g|`` over all spws, antennas, receptors and
    times; a (time, antenna) solution of an spw with any receptor beyond `amp_outlier_sigma`
    is flagged in every receptor.

    Returns
    -------
    (table, outliers)
        The table with FLAG updated, and per spw the new flags alone (time, antenna_name).
    """
    if not table:
        raise FluxscaleError("flag_amplitude_outliers: empty table")
    fields: list[str] = []
    for ds in table.values():
        if schema.CALIBRATION_PARAMETER not in ds or schema.FLAG not in ds:
            raise FluxscaleError(
                f"flag_amplitude_outliers: spw {ds.attrs.get(schema.ATTR_SPW_ID, '?')} has no "
                f"{schema.CALIBRATION_PARAMETER}/{schema.FLAG}"
            )
        if schema.FIELD_NAME not in ds.coords or ds[schema.FIELD_NAME].chunks is not None:
            raise FluxscaleError(
                "flag_amplitude_outliers: every spw needs an in-memory field_name(time) coordinate"
            )
        for name in ds[schema.FIELD_NAME].values:
            if str(name) not in fields:
                fields.append(str(name))
    spws = list(table)
    amps, index = [], []
    for s in spws:
        ds = table[s]
        amp = xr.where(ds[schema.FLAG], np.nan, np.abs(ds[schema.CALIBRATION_PARAMETER]))
        amps.append(amp.transpose(schema.TIME, ...).data)
        index.append(np.array([fields.index(str(n)) for n in ds[schema.FIELD_NAME].values]))
    stats = da.from_delayed(
        dask.delayed(_field_statistics, pure=True)(amps, index, len(fields)),
        shape=(len(fields), 2),
        dtype=float,
    )
    out, outliers = {}, {}
    for s, amp, idx in zip(spws, amps, index, strict=True):
        ds = table[s]
        dims = ds[schema.CALIBRATION_PARAMETER].transpose(schema.TIME, ...).dims
        per_time = stats[idx]  # (time, 2)
        shape = (len(idx),) + (1,) * (len(dims) - 1)
        med = per_time[:, 0].reshape(shape)
        mad = per_time[:, 1].reshape(shape)
        # |a - median| / mad > sigma without dividing (mad may be 0); NaN (flagged) is False
        bad = xr.DataArray(da.absolute(da.asarray(amp) - med) > amp_outlier_sigma * mad, dims=dims)
        other = [d for d in dims if d not in (schema.TIME, schema.ANTENNA_NAME)]
        new = bad.any(other).assign_coords({d: ds[d] for d in (schema.TIME, schema.ANTENNA_NAME)})
        outliers[s] = new
        out[s] = ds.assign(
            {schema.FLAG: (ds[schema.FLAG] | new).assign_attrs(ds[schema.FLAG].attrs)}
        )
    return out, outliers


# ---- QA scores ----


def linear_score(x: float, x1: float, x2: float, y1: float = 0.0, y2: float = 1.0) -> float:
    """The pipeline's linear_score: y1 at x1 to y2 at x2, x clipped to [x1, x2]."""
    clipped = sorted([float(x1), float(x), float(x2)])[1]
    slope = (y2 - y1) / (x2 - x1)
    return float(slope * clipped + y1 - slope * x1)


def completeness_score(n_measured: int, n_expected: int) -> float:
    """Measured / expected flux densities (the pipeline's score_missing_derived_fluxes).

    0 when nothing is expected or measured, and 0 for more measurements than expected.
    """
    if n_expected <= 0 or n_measured <= 0 or n_measured > n_expected:
        return 0.0
    return float(n_measured) / float(n_expected)


def snr_score(snr: float) -> float:
    """One flux density's SNR score: 0.66 at SNR 5 (and below) to 1.0 at 26.25 (and above)."""
    return linear_score(snr, SNR_LOW, SNR_HIGH, SNR_SCORE_LOW, SNR_SCORE_HIGH)


def derived_fluxes_snr_score(fluxes: Iterable[float], errors: Iterable[float]) -> float:
    """Mean SNR score over the measurements with flux > 0 and error > 0 (0 if none)."""
    scores = [
        snr_score(f / e)
        for f, e in zip(fluxes, errors, strict=True)
        if np.isfinite(f) and np.isfinite(e) and f > 0 and e > 0
    ]
    if not scores:
        return 0.0
    return 1.0 if min(scores) >= 1.0 else float(np.mean(scores))


def k_spw_score(k_spw: float) -> float:
    """Spectral-consistency score of one spw: |1 - k| < 0.1: 1.0, < 0.2: 0.75, else 0.5."""
    return deviation_score(abs(1.0 - float(k_spw)))


def deviation_score(q: float) -> float:
    """Spectral-consistency score of a deviation q = |1 - k_spw|."""
    if q < 0.1:
        return 1.0
    if q < 0.2:
        return 0.75
    return 0.5


@dataclass(frozen=True)
class SpectralConsistency:
    k_spw: np.ndarray  # per spw: (derived/catalogue) / (derived/catalogue) of the best spw
    scores: np.ndarray  # k_spw_score per spw
    max_deviation: float  # max |1 - k_spw|
    score: float  # k_spw_score(max_deviation)


def spectral_consistency(
    derived: Sequence[float], catalogue: Sequence[float], snr: Sequence[float]
) -> SpectralConsistency:
    """``k_spw = R_spw / R_spw(highest-SNR spw)``, ``R = derived / catalogue`` flux density."""
    derived = np.asarray(derived, dtype=float)
    catalogue = np.asarray(catalogue, dtype=float)
    snr = np.asarray(snr, dtype=float)
    if not derived.size or derived.shape != catalogue.shape or derived.shape != snr.shape:
        raise ValueError("derived, catalogue and snr need one (and the same number of) values")
    r = derived / catalogue
    best = int(np.nanargmax(np.where(np.isfinite(snr), snr, -np.inf)))
    k = r / r[best]
    scores = np.array([k_spw_score(v) for v in k])
    dev = float(np.nanmax(np.abs(1.0 - k)))
    return SpectralConsistency(
        k_spw=k, scores=scores, max_deviation=dev, score=deviation_score(dev)
    )


@dataclass(frozen=True)
class GfluxscaleQA:
    completeness: float
    snr: float
    consistency: dict[str, SpectralConsistency]  # per transfer field with a catalogue entry


def qa_scores(
    result: xr.Dataset | Mapping[str, Any],
    catalogue: Mapping[str, Mapping[int, float]] | None = None,
    expected: Mapping[str, Iterable[int]] | None = None,
) -> GfluxscaleQA:
    """The three hifa_gfluxscale QA scores from a fluxscale view or CASA dict.

    `catalogue`: {field name: {spw id: catalogue flux density (Jy)}} for the consistency
    score. `expected`: {field name: spw ids expected to have a flux density}; default every
    spw of the result for every transfer field.
    """
    d = result_dict(result) if isinstance(result, xr.Dataset) else result
    spw_ids = [int(s) for s in d[schema.CASA_FS_SPW_ID]]
    measured, n_expected = 0, 0
    fluxes, errors = [], []
    consistency = {}
    for entry in d.values():
        if not isinstance(entry, Mapping) or schema.CASA_FS_FIELD_NAME not in entry:
            continue
        name = entry[schema.CASA_FS_FIELD_NAME]
        want = [int(s) for s in (expected or {}).get(name, spw_ids)]
        n_expected += len(want)
        rows = []
        for s in want:
            spw = entry.get(str(s))
            if spw is None:
                continue
            f = float(spw[schema.CASA_FS_FLUXD][0])
            e = float(spw[schema.CASA_FS_FLUXD_ERR][0])
            if np.isfinite(f) and np.isfinite(e) and f > 0 and e > 0:
                measured += 1
                fluxes.append(f)
                errors.append(e)
                rows.append((s, f, e))
        if catalogue and name in catalogue and rows:
            cat = catalogue[name]
            rows = [r for r in rows if r[0] in cat]
            if rows:
                consistency[name] = spectral_consistency(
                    [r[1] for r in rows], [cat[r[0]] for r in rows], [r[1] / r[2] for r in rows]
                )
    return GfluxscaleQA(
        completeness=completeness_score(measured, n_expected),
        snr=derived_fluxes_snr_score(fluxes, errors),
        consistency=consistency,
    )


# ---- models for setjy ----


def transfer_models(
    result: xr.Dataset | Mapping[str, Any], fields: Iterable[str | int] | None = None
) -> dict[str, Any]:
    """The transfer calibrators' models: CASA's fluxscale dict (``setjy`` ``fluxdict``).

    Per field: ``fitFluxd`` at ``fitRefFreq`` with ``spidx`` (log10 S polynomial; ``spidx[1]``
    the spectral index) and the per-spw ``fluxd``; restricted to `fields` (names or ids) when
    given. `result` is a fluxscale view (computed here) or a CASA dict.
    """
    d = result_dict(result) if isinstance(result, xr.Dataset) else dict(result)
    wanted = None if fields is None else {str(f) for f in fields}
    out: dict[str, Any] = {}
    for key, entry in d.items():
        if not isinstance(entry, Mapping) or schema.CASA_FS_FIELD_NAME not in entry:
            continue
        if wanted is None or key in wanted or entry[schema.CASA_FS_FIELD_NAME] in wanted:
            out[key] = entry
    if wanted is not None:
        found = set(out) | {e[schema.CASA_FS_FIELD_NAME] for e in out.values()}
        missing = sorted(wanted - found)
        if missing:
            raise FluxscaleError(f"transfer_models: no fluxscale result for field(s) {missing}")
    for key in (schema.CASA_FS_FREQ, schema.CASA_FS_SPW_ID, schema.CASA_FS_SPW_NAME):
        out[key] = d[key]
    return out
