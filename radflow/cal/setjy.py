"""setjy: model visibilities of flux-density calibrators (CASA ``setjy`` without ``usescratch``).

The step adds a data group (default ``model``) holding the visibilities of a point source at the
phase centre, in Jy, to the partitions of the selected calibrator field(s); the gain and
bandpass solvers divide the data by it. Nothing is materialised: the model is a dask array
broadcast from a small (channel, correlation) table to the data's chunks.

Flux-density models (all give Stokes ``[I, Q, U, V]`` in Jy as a function of frequency):

- ``standard="Perley-Butler 2017"`` (CASA's default; Perley & Butler 2017, ApJS 230, 7)::

      log10 S[Jy] = sum_i a_i (log10 nu[GHz])^i

  for the 20 PB2017 sources (3C286, 3C48, 3C138, 3C147, 3C123, 3C196, 3C295, ...), Stokes I
  only. The coefficients, epochs and valid frequency ranges are those of CASA's data table
  ``nrao/VLA/standards/PerleyButler2017Coeffs``. 3C48, 3C138 and 3C147 are time variable: the
  table has one coefficient set per observing epoch (1983.4 ... 2012.0, and 2017.0, the
  paper's fit); as in CASA (``FluxCalcVQS``) the flux density is computed at every epoch and
  then interpolated in time to the observation with casacore's ``Interpolate1D``:

  ``nearest``
      casacore's rule: the epoch at or before the observation, unless the next epoch is less
      than half a day after it; the first epoch before the table, the last one after it (so
      any observation after 2017.0 gets the 2017 fit, 3C48's being DESIGN.md's "steady"
      coefficients).
  ``linear``
      between the two bracketing epochs, extrapolated from the first or last two outside.
  ``cubic``
      the cubic through the four nearest epochs (the first or last four at the ends).
  ``spline``
      casacore's natural cubic spline (including its back-substitution, which leaves the
      second derivative at the second epoch unrefined).

  As in CASA, the coefficients are used as its table stores them (float32; within 3e-7 of
  the decimal values' flux densities) and the per-epoch flux densities are rounded to float32
  before the interpolation (cubic extrapolation amplifies that rounding 100-fold). Epochs
  (decimal years) become MJD as CASA converts them: Jan 1 of the year plus the
  fraction times the days of the year, where, as in CASA, once a leap year has been met all
  later years count 366 days. The observation epoch is the partition's first time unless
  `epoch` is given. Steady sources use their single coefficient set. A source is recognised
  by CASA's rule: the upper-cased field name *contains* one of the source's names (3C286,
  "3C 286", 3C_286, 1328+307, 1331+305, J1331+3030, ...).

  PB2017 gives each source a valid frequency range (3C286, 3C48, 3C147: 0.05-50 GHz; 3C138:
  0.2-50 GHz; ...). Outside it CASA warns and returns the extrapolated polynomial; radflow
  does the same with ``out_of_range="warn"`` (a :class:`FrequencyRangeWarning`), or raises
  :class:`FrequencyRangeError` with ``"error"`` (``"ignore"``: silent).

- ``standard="manual"`` with `fluxdensity` ``[I, Q, U, V]`` (Jy, a float is I) at `reffreq`
  and spectral index `spix` (CASA semantics, checked against CASA 6.7)::

      S(nu) = S(nu0) (nu/nu0)^(spix[0] + spix[1] x + spix[2] x^2 + ...),  x = log10(nu/nu0)

  i.e. ``log10 S = log10 S0 + spix[0] x + spix[1] x^2 + ...``; Q, U and V follow I's law.

- ``standard="manual"`` with `fluxcsv` (the ALMA pipeline's ``flux.csv``, read by
  :func:`radflow.converters.flux_csv.read_flux_csv`): each (field, spw) row is a manual model
  with ``fluxdensity=[I, Q, U, V]``, ``spix=[spix]`` and ``reffreq`` = the spw's centre
  frequency, as ``hif_setjy`` passes it to CASA.

- ``standard="fluxscale"`` with `fluxdict`, the dictionary CASA's fluxscale returns (the
  bootstrap: fluxscale on the gain table, then setjy on the transfer fields): per field id,
  ``fluxdensity = fitFluxd`` (Stokes I) at ``reffreq = fitRefFreq`` with ``spix = spidx[1:]``
  (``spidx`` = ``[log10 S(fitRefFreq), index, curvature]`` of fluxscale's fit ``log10 S = a0
  + a1 x + a2 x^2``, ``x = log10(nu/fitRefFreq)``, the manual law above). As in CASA's
  setjy: when ``fitFluxd`` is 0 (no fit) the first valid spw's ``fluxd`` ``[I, Q, U, V]`` at
  ``freq[spw]`` is used; spws whose ``fluxd[0]`` is -1 get no model; ``|spidx[1]| > 10`` is
  refused.

Per channel or per spw (`scalebychan`, CASA's name): ``True`` evaluates the model at every
channel frequency; ``False`` evaluates it once, at the spw centre (the midpoint of the first
and last channel frequencies), for all channels. CASA ignores ``scalebychan=False`` for manual
flux densities (it still scales by channel); radflow honours it in every mode.

Correlations (CASA's convention, checked against CASA's MODEL_DATA; no parallactic-angle
rotation, which is the calibration's business)::

    XX = I + Q    XY = U + iV    YX = U - iV    YY = I - Q
    RR = I + V    RL = Q + iU    LR = Q - iU    LL = I - V

Stokes correlations (I, Q, U, V) take the Stokes value itself.

Fields: `field` selects by name or MS FIELD id (a string, list, or CASA's comma-separated
``"0,3C286"``). Partitions hold no field ids, so an id selects only through `field_ids`
(``{id: name}``), a fluxscale dictionary's ``fieldName``, a flux.csv comment ``field=NAME``, or a
``field_id`` list in ``partition_info`` when the converter writes one. Partitions without a
selected field are returned unchanged (no model group). A partition that also holds times of
other fields (a mosaic scan) gets CASA's default model there: Stokes I = 1 Jy, unpolarised.

What was used is recorded in ``attrs["setjy"]`` of the model variable (one dict per field:
standard, source, field name and id, spw, ``fluxd`` [I, Q, U, V] at ``frequency``, ...) and
:func:`setjy_result` assembles CASA's setjy return value from processed partitions:
``{field id: {spw id: {"fluxd": array([I, Q, U, V])}, "fieldName": name}, "format": ...}``
with ``fluxd`` at the first channel's frequency (``scalebychan=True``) or the spw centre
(``False``), as CASA reports it.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from radflow import schema
from radflow.converters.flux_csv import FluxRecord, read_flux_csv
from radflow.step import (
    add_data_group,
    coord_values,
    describe_partition,
    get_data_group,
    register_step,
)

PB2017 = schema.STANDARD_PERLEY_BUTLER_2017
MANUAL = schema.STANDARD_MANUAL
FLUXSCALE = schema.STANDARD_FLUXSCALE
STANDARDS = (PB2017, MANUAL, FLUXSCALE)
INTERPOLATIONS = ("nearest", "linear", "cubic", "spline")
OUT_OF_RANGE = ("warn", "error", "ignore")
CASA_FORMAT = "{field Id: {spw Id: {fluxd: [I,Q,U,V] in Jy}, 'fieldName':field name }}"

_MJD_UNIX_EPOCH = 40587.0  # MJD of 1970-01-01
_FREQ_UNITS = {"Hz": 1.0, "kHz": 1e3, "MHz": 1e6, "GHz": 1e9, "THz": 1e12}


class SetjyError(ValueError):
    """setjy cannot build a model: bad parameters or inputs."""


class UnknownStandardError(SetjyError):
    """The flux-density standard is not one radflow implements."""


class UnknownCalibratorError(SetjyError):
    """A field is not a calibrator of the chosen standard."""


class FrequencyRangeError(SetjyError):
    """A frequency is outside the standard's valid range (``out_of_range="error"``)."""


class FrequencyRangeWarning(UserWarning):
    """A frequency is outside the standard's valid range; the model is extrapolated."""


# ---- Perley-Butler 2017 ----


@dataclass(frozen=True)
class Calibrator:
    """One source of a flux-density standard.

    Attributes
    ----------
    name : str
        The standard's name of the source (CASA's first name, e.g. ``"3C286"``).
    aliases : tuple of str
        Names recognised in field names (CASA's list; matched upper-cased, as substrings).
    valid_range_hz : tuple of float
        The frequency range (Hz) over which the standard's fit holds.
    coefficients : tuple of tuple of float
        ``a_i`` of ``log10 S[Jy] = sum_i a_i (log10 nu[GHz])^i``: one set for a steady source,
        one per epoch of :data:`PB2017_EPOCHS` for a time-variable one.
    """

    name: str
    aliases: tuple[str, ...]
    valid_range_hz: tuple[float, float]
    coefficients: tuple[tuple[float, ...], ...]

    @property
    def time_variable(self) -> bool:
        return len(self.coefficients) > 1


# Epochs (decimal years) of the time-variable sources' coefficient sets (CASA's table).
PB2017_EPOCHS = (
    1983.4, 1985.9, 1987.3, 1989.9, 1995.2, 1998.1, 1999.3, 2000.8, 2001.9,
    2003.1, 2004.7, 2006.0, 2007.4, 2008.7, 2010.0, 2010.9, 2012.0, 2017.0,
)  # fmt: skip

_3C48_EPOCHS = (
    (1.3339, -0.7643, -0.1946, 0.055), (1.335, -0.7598, -0.1869, 0.057),
    (1.3361, -0.7577, -0.1905, 0.048), (1.3363, -0.7605, -0.1965, 0.057),
    (1.3359, -0.7673, -0.2041, 0.059), (1.3342, -0.7732, -0.2078, 0.065),
    (1.3342, -0.7682, -0.2097, 0.056), (1.3323, -0.7654, -0.2091, 0.06),
    (1.3342, -0.7708, -0.2014, 0.059), (1.3341, -0.7691, -0.2006, 0.057),
    (1.3341, -0.7641, -0.2102, 0.059), (1.3335, -0.7705, -0.2008, 0.058),
    (1.3335, -0.766, -0.1982, 0.051), (1.3361, -0.77, -0.2119, 0.076),
    (1.3334, -0.7662, -0.1988, 0.062), (1.3332, -0.7665, -0.198, 0.064),
    (1.3324, -0.769, -0.195, 0.059), (1.3253, -0.7553, -0.1914, 0.0498),
)  # fmt: skip
_3C138_EPOCHS = (
    (1.0328, -0.5523, -0.1161, 0.008), (1.0337, -0.5591, -0.1605, 0.032),
    (1.0354, -0.5914, -0.1032, -0.005), (1.0292, -0.5636, -0.1857, 0.052),
    (1.0145, -0.5466, -0.1758, 0.038), (1.0259, -0.5679, -0.1735, 0.039),
    (1.0204, -0.5702, -0.1636, 0.03), (1.0081, -0.5077, -0.2492, 0.064),
    (1.0196, -0.5627, -0.1823, 0.039), (1.0177, -0.5686, -0.1591, 0.029),
    (1.0094, -0.5003, -0.2642, 0.085), (1.0181, -0.5543, -0.1486, 0.038),
    (1.0149, -0.5408, -0.1174, 0.012), (1.0132, -0.4941, -0.1556, 0.045),
    (1.023, -0.4983, -0.1529, 0.048), (1.0207, -0.514, -0.1626, 0.058),
    (1.0332, -0.5608, -0.1197, 0.041), (1.0088, -0.4981, -0.1552, -0.0102, 0.0223),
)  # fmt: skip
_3C147_EPOCHS = (
    (1.462, -0.7085, -0.2347, 0.051), (1.4648, -0.7177, -0.2501, 0.089),
    (1.4624, -0.7115, -0.2336, 0.071), (1.4646, -0.7194, -0.2532, 0.092),
    (1.4632, -0.7121, -0.2346, 0.086), (1.4641, -0.709, -0.2313, 0.088),
    (1.4642, -0.7132, -0.2424, 0.082), (1.4585, -0.7086, -0.2296, 0.068),
    (1.4636, -0.7124, -0.2426, 0.084), (1.4639, -0.7144, -0.2453, 0.082),
    (1.4635, -0.7112, -0.2453, 0.091), (1.4631, -0.7136, -0.2338, 0.094),
    (1.4645, -0.7115, -0.2378, 0.084), (1.4625, -0.7112, -0.2396, 0.081),
    (1.4623, -0.7139, -0.2405, 0.081), (1.4607, -0.715, -0.2372, 0.077),
    (1.4616, -0.7187, -0.2424, 0.079), (1.4516, -0.6961, -0.2007, 0.064, -0.0464, 0.0289),
)  # fmt: skip


def _cal(name, aliases, lo_ghz, hi_ghz, *coefficients):
    return Calibrator(name, (name, *aliases), (lo_ghz * 1e9, hi_ghz * 1e9), tuple(coefficients))


# In CASA's matching order (FluxStdSrcs: the first source one of whose names the field contains)
# with CASA's names, less the mixed-case ones (ForA, CasA, ...) that CASA's upper-cased
# comparison never matches (and that, upper-cased, would match unrelated names).
PB2017_SOURCES: dict[str, Calibrator] = {
    c.name: c
    for c in (
        _cal("3C286", ("3C 286", "3C_286", "1328+307", "1331+305", "J1331+3030"), 0.05, 50,
             (1.2481, -0.4507, -0.1798, 0.0357)),
        _cal("3C48", ("3C 48", "3C_48", "0134+329", "0137+331", "J0137+3309"), 0.05, 50,
             *_3C48_EPOCHS),
        _cal("3C147", ("3C 147", "3C_147", "0538+498", "0542+498", "J0542+4951"), 0.05, 50,
             *_3C147_EPOCHS),
        _cal("3C138", ("3C 138", "3C_138", "0518+165", "0521+166", "J0521+1638"), 0.2, 50,
             *_3C138_EPOCHS),
        _cal("3C295", ("3C 295", "3C_295", "1409+524", "1411+522", "J1411+5212"), 0.05, 50,
             (1.4701, -0.7658, -0.278, -0.0347, 0.0399)),
        _cal("3C196", ("3C 196", "3C_196", "0809+483", "0813+482", "J0813+4813"), 0.05, 50,
             (1.2872, -0.853, -0.1534, -0.02, 0.0201)),
        _cal("3C123", ("3C 123", "3C_123", "0433+295", "0437+296", "J0437+2940"), 0.05, 50,
             (1.8017, -0.7884, -0.1035, -0.0248, 0.009)),
        _cal("3C380", ("3C 380", "3C_380", "1828+487", "1829+487", "J1829+4845"), 0.05, 4,
             (1.232, -0.7909, 0.0947, 0.0976, -0.1794, -0.1566)),
        _cal("J0133-3629", (), 0.2, 4, (1.044, -0.6619, -0.2252)),
        _cal("FORNAX_A", ("FORNAX A", "FOR-A", "FOR A", "J0322-3712"), 0.2, 0.5,
             (2.2175, -0.6606)),
        _cal("J0444-2809", (), 0.2, 2, (0.971, -0.8938, -0.1176)),
        _cal("PICTOR_A", ("PICTOR A", "PIC-A", "PIC A", "J0519-4546"), 0.2, 4,
             (1.938, -0.747, -0.0739)),
        _cal("TAURUS_A", ("TAURUS A", "TAU-A", "TAU A", "J0534+2200", "3C144", "3C 144",
                          "3C_144", "CRAB"), 0.05, 4,
             (2.9516, -0.2173, -0.0473, -0.0674)),
        _cal("HYDRA_A", ("HYDRA A", "HYA-A", "HYA A", "J0918-1205", "3C218", "3C 218",
                         "3C_218"), 0.05, 12,
             (1.7795, -0.9176, -0.0843, -0.0139, 0.0295)),
        _cal("VIRGO_A", ("VIRGO A", "VIR-A", "VIR A", "J1230+1223", "3C274", "3C 274",
                         "3C_274", "M87"), 0.05, 3,
             (2.4466, -0.8116, -0.0483)),
        _cal("HERCULES_A", ("HERCULES A", "HER-A", "HER A", "J1651+0459", "3C348",
                            "3C 348", "3C_348"), 0.2, 12,
             (1.8298, -1.0247, -0.0951)),
        _cal("3C353", ("3C 353", "3C_353", "J1720-0059"), 0.2, 4,
             (1.8627, -0.6938, -0.0998, -0.0732)),
        _cal("CYGNUS_A", ("CYGNUS A", "CYG-A", "CYG A", "J1959+4044", "3C405", "3C 405",
                          "3C_405"), 0.05, 12,
             (3.3498, -1.0022, -0.2246, 0.0227, 0.0425)),
        _cal("3C444", ("3C 444", "3C_444", "J2214-1701"), 0.2, 12,
             (1.1064, -1.0052, -0.075, -0.0767)),
        _cal("CASSIOPEIA_A", ("CASSIOPEIA A", "CAS-A", "CAS A", "J2323+5848", "3C461",
                              "3C 461", "3C_461"), 0.2, 4,
             (3.3584, -0.7518, -0.0347, -0.0705)),
    )
}  # fmt: skip

_STANDARD_SOURCES = {PB2017: PB2017_SOURCES}


def _check_standard(standard: str) -> None:
    if standard not in STANDARDS:
        raise UnknownStandardError(
            f"setjy: unknown flux-density standard {standard!r}; radflow implements "
            f"{', '.join(map(repr, STANDARDS))}"
        )


def find_calibrator(name: str, standard: str = PB2017) -> Calibrator | None:
    """The calibrator of `standard` that field name `name` denotes, or ``None``.

    CASA's rule: the upper-cased name contains one of a source's names (sources tried in
    CASA's order), so ``"1331+305=3C286"`` and ``"3C286_pol"`` are 3C286.
    """
    _check_standard(standard)
    sources = _STANDARD_SOURCES.get(standard)
    if sources is None:
        raise UnknownStandardError(f"setjy: standard {standard!r} has no calibrator list")
    upper = str(name).upper()
    for cal in sources.values():
        if any(alias.upper() in upper for alias in cal.aliases):
            return cal
    return None


def calibrator(name: str, standard: str = PB2017) -> Calibrator:
    """Like :func:`find_calibrator`, but raise :class:`UnknownCalibratorError` if none."""
    cal = find_calibrator(name, standard)
    if cal is None:
        known = ", ".join(_STANDARD_SOURCES[standard])
        raise UnknownCalibratorError(
            f"setjy: {name!r} is not a calibrator of the {standard!r} standard (known: {known}"
            "; field names are matched by containing one of these or an alias such as "
            "1331+305 or J1331+3030)"
        )
    return cal


def _mjd_jan1(year: int) -> float:
    return float((dt.date(year, 1, 1) - dt.date(1858, 11, 17)).days)


def _is_leap(year: int) -> bool:
    return (year % 4 == 0 and year % 100 != 0) or year % 400 == 0


def epochs_mjd(years: Sequence[float] = PB2017_EPOCHS) -> np.ndarray:
    """Decimal-year epochs as MJD (days), converted exactly as CASA converts them.

    ``MJD(Jan 1 of the year) + float32(fraction x days_in_year)``, where ``days_in_year``
    becomes 366 at the first leap year and stays 366 for all later epochs (CASA's
    ``FluxCalcVQS::convertYearFracToMjd``; the shift, under a day, is irrelevant to the flux
    densities but keeps interpolated values identical to CASA's).
    """
    out = []
    days_in_year = 365
    for value in years:
        year = int(value)
        if _is_leap(year):
            days_in_year = 366
        fraction = float(value) - math.floor(float(value))
        out.append(_mjd_jan1(year) + float(np.float32(fraction * days_in_year)))
    return np.asarray(out)


def _spline_second_derivatives(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # casacore Interpolate1D::setMethod(spline), natural end conditions, kept literally
    # (its back-substitution stops at index 2).
    n = x.size
    y2 = np.zeros_like(y)
    t = np.zeros(n)
    c = x[1] - x[0]
    for i in range(1, n - 1):
        a = c
        b = 2.0 * (x[i + 1] - x[i - 1])
        c = x[i + 1] - x[i]
        r = (y[i + 1] - y[i]) / c - (y[i] - y[i - 1]) / a
        delta = b - a * t[i - 1]
        t[i] = c / delta
        y2[i] = (6.0 * r - a * y2[i - 1]) / delta
    for i in range(n - 2, 1, -1):
        y2[i] = y2[i] - t[i] * y2[i + 1]
    return y2


def interpolate_epochs(x: np.ndarray, y: np.ndarray, x0: float, method: str) -> np.ndarray:
    """casacore ``Interpolate1D`` of `y` (epoch, ...) sampled at sorted `x` (epoch,), at `x0`.

    `method` is one of :data:`INTERPOLATIONS` (see the module docstring for each rule, in
    particular casacore's ``nearest``). Outside `x`, ``linear``, ``cubic`` and ``spline``
    extrapolate with the end interval's polynomial.
    """
    if method not in INTERPOLATIONS:
        raise SetjyError(
            f"setjy: unknown interpolation {method!r}; use one of {', '.join(INTERPOLATIONS)}"
        )
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = x.size
    where = int(np.searchsorted(x, x0, side="left"))  # first epoch >= x0
    if n == 1:
        return y[0]
    if method == "nearest":
        if where == n:
            return y[-1]
        if where == 0:
            return y[0]
        return y[where] if x[where] - x0 < 0.5 else y[where - 1]
    if method == "cubic":
        if n < 4:
            raise SetjyError("setjy: cubic interpolation needs at least 4 epochs")
        start = where - 2 if 1 < where < n - 1 else (0 if where <= 1 else n - 4)
        xs, ys = x[start : start + 4], y[start : start + 4]
        total = np.zeros_like(ys[0])
        for i in range(4):
            weight = 1.0
            for j in range(4):
                if j != i:
                    weight *= (x0 - xs[j]) / (xs[i] - xs[j])
            total = total + weight * ys[i]
        return total
    hi = min(max(where, 1), n - 1)
    x1, x2, y1, y2 = x[hi - 1], x[hi], y[hi - 1], y[hi]
    if method == "linear":
        return y1 + (x0 - x1) / (x2 - x1) * (y2 - y1)
    d2 = _spline_second_derivatives(x, y)
    dx = x2 - x1
    a = (x2 - x0) / dx
    b = 1.0 - a
    h = dx * dx / 6.0
    return a * y1 + b * y2 + h * (a**3 - a) * d2[hi - 1] + h * (b**3 - b) * d2[hi]


def _polynomial_flux(coefficients: Sequence[float], frequency_hz: np.ndarray) -> np.ndarray:
    # The coefficients as CASA's table stores them (float32): S differs from the decimal
    # coefficients' by < 3e-7 relative, and CASA's numbers are reproduced to ~1e-15.
    a = np.asarray(coefficients, dtype=np.float32).astype(float)
    return 10.0 ** np.polynomial.polynomial.polyval(np.log10(frequency_hz / 1e9), a)


def _per_epoch_flux(cal: Calibrator, frequency_hz: np.ndarray) -> np.ndarray:
    # (epoch, ...) Stokes I at each epoch, rounded to float32 as CASA keeps them before
    # interpolating (this matters for cubic extrapolation, which amplifies the rounding).
    per_epoch = np.stack([_polynomial_flux(c, frequency_hz) for c in cal.coefficients])
    return per_epoch.astype(np.float32).astype(float)


def _check_range(cal: Calibrator, frequency_hz: np.ndarray, out_of_range: str, where: str):
    if out_of_range not in OUT_OF_RANGE:
        raise SetjyError(
            f"setjy: out_of_range must be one of {', '.join(OUT_OF_RANGE)}, not {out_of_range!r}"
        )
    lo, hi = cal.valid_range_hz
    outside = (frequency_hz < lo) | (frequency_hz > hi)
    if not outside.any() or out_of_range == "ignore":
        return
    bad = frequency_hz[outside]
    msg = (
        f"setjy: {where}{cal.name}: {bad.size} frequenc{'y' if bad.size == 1 else 'ies'} "
        f"({bad.min() / 1e9:.6g}-{bad.max() / 1e9:.6g} GHz) outside the Perley-Butler 2017 "
        f"valid range {lo / 1e9:g}-{hi / 1e9:g} GHz"
    )
    if out_of_range == "error":
        raise FrequencyRangeError(msg)
    warnings.warn(msg + "; the fit is extrapolated (as CASA does)", FrequencyRangeWarning,
                  stacklevel=4)  # fmt: skip


def to_mjd(epoch: Any) -> float:
    """An epoch as MJD (days, UTC).

    Accepts unix seconds (a number, radflow's time convention), a ``datetime`` (naive = UTC),
    a ``numpy.datetime64`` or an ISO date string (``"2019-01-01"``, ``"2019-01-01T12:00"``).
    """
    if isinstance(epoch, bool):
        raise SetjyError(f"setjy: epoch {epoch!r} is not a time")
    if isinstance(epoch, int | float | np.integer | np.floating):
        return float(epoch) / 86400.0 + _MJD_UNIX_EPOCH
    if isinstance(epoch, dt.datetime):
        if epoch.tzinfo is not None:
            epoch = epoch.astimezone(dt.UTC).replace(tzinfo=None)
        epoch = np.datetime64(epoch)
    try:
        value = np.datetime64(epoch, "us")
    except (ValueError, TypeError) as exc:
        raise SetjyError(f"setjy: cannot read epoch {epoch!r} as a time: {exc}") from None
    unix = (value - np.datetime64("1970-01-01T00:00:00", "us")) / np.timedelta64(1, "s")
    return float(unix) / 86400.0 + _MJD_UNIX_EPOCH


def standard_flux_density(
    source: str,
    frequency_hz: Any,
    *,
    standard: str = PB2017,
    epoch: Any = None,
    interpolation: str = "nearest",
    out_of_range: str = "warn",
) -> np.ndarray:
    """Stokes I flux density (Jy) of a standard calibrator.

    Parameters
    ----------
    source
        A field name recognised by :func:`find_calibrator` (``"3C286"``, ``"J1331+3030"``...).
    frequency_hz
        Frequencies (Hz), any shape.
    standard
        ``"Perley-Butler 2017"``.
    epoch
        When observed (see :func:`to_mjd`); needed for time-variable sources only.
    interpolation
        In time, for time-variable sources: ``nearest`` (CASA's default), ``linear``,
        ``cubic`` or ``spline`` (see the module docstring).
    out_of_range
        ``"warn"``, ``"error"`` or ``"ignore"`` for frequencies outside the valid range.

    Returns
    -------
    numpy.ndarray
        Jy, the shape of `frequency_hz`.

    Raises
    ------
    UnknownStandardError, UnknownCalibratorError, FrequencyRangeError, SetjyError
        Unknown standard or source, a frequency outside the valid range with
        ``out_of_range="error"``, no `epoch` for a time-variable source, bad frequencies.
    """
    if standard != PB2017:
        _check_standard(standard)
        raise UnknownStandardError(
            f"setjy: {standard!r} is not a catalogue standard; use {PB2017!r}"
        )
    cal = calibrator(source, standard)
    freq = np.asarray(frequency_hz, dtype=float)
    if not (np.all(np.isfinite(freq)) and np.all(freq > 0)):
        raise SetjyError("setjy: frequencies must be finite and > 0 Hz")
    _check_range(cal, freq.ravel(), out_of_range, "")
    if not cal.time_variable:
        return _polynomial_flux(cal.coefficients[0], freq)
    if interpolation not in INTERPOLATIONS:
        raise SetjyError(
            f"setjy: unknown interpolation {interpolation!r}; use one of "
            f"{', '.join(INTERPOLATIONS)}"
        )
    if epoch is None:
        raise SetjyError(f"setjy: {cal.name} is time variable in {standard}: give an epoch")
    per_epoch = _per_epoch_flux(cal, freq)
    return interpolate_epochs(epochs_mjd(PB2017_EPOCHS), per_epoch, to_mjd(epoch), interpolation)


# ---- manual models ----


def parse_frequency(value: Any, what: str = "reffreq") -> float:
    """A frequency in Hz from a number (Hz) or a CASA quantity string.

    Strings: a number and a unit with or without a space, optionally preceded by a frame
    (``"100GHz"``, ``"100.0 GHz"``, ``"TOPO 86.0GHz"``, ``"4.65e9Hz"``); units Hz, kHz, MHz,
    GHz, THz (case as written). The frame is ignored: the model is evaluated at the data's
    channel frequencies as stored.

    Raises
    ------
    SetjyError
        If the value does not parse, has other units, or is not a finite positive frequency.
    """
    if isinstance(value, bool):
        raise SetjyError(f"setjy: {what} {value!r} is not a frequency")
    if isinstance(value, int | float | np.integer | np.floating):
        hz = float(value)
    elif isinstance(value, str):
        text = value.strip()
        parts = text.split()
        if len(parts) >= 2 and parts[0].upper() in schema.FREQ_FRAME_CODES:
            text = " ".join(parts[1:])
        match = re.fullmatch(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)", text)
        if not match:
            raise SetjyError(
                f"setjy: cannot read {what} {value!r} as a frequency (e.g. '100GHz', 1e11)"
            )
        number, unit = match.groups()
        if unit == "":
            raise SetjyError(f"setjy: {what} {value!r} has no unit; write e.g. '{number}GHz'")
        if unit not in _FREQ_UNITS:
            raise SetjyError(
                f"setjy: {what} {value!r}: unit {unit!r} is not a frequency unit "
                f"({', '.join(_FREQ_UNITS)})"
            )
        hz = float(number) * _FREQ_UNITS[unit]
    else:
        raise SetjyError(f"setjy: {what} {value!r} is not a frequency")
    if not (math.isfinite(hz) and hz > 0):
        raise SetjyError(f"setjy: {what} {value!r} must be a finite frequency > 0 Hz")
    return hz


def _as_iquv(fluxdensity: Any, where: str = "") -> np.ndarray:
    values = np.atleast_1d(np.asarray(fluxdensity, dtype=float))
    if values.ndim != 1 or not 1 <= values.size <= 4:
        raise SetjyError(
            f"setjy: {where}fluxdensity must be a float (Stokes I) or [I, Q, U, V] (Jy), "
            f"not {fluxdensity!r}"
        )
    iquv = np.zeros(4)
    iquv[: values.size] = values
    if not np.all(np.isfinite(iquv)):
        raise SetjyError(f"setjy: {where}fluxdensity {fluxdensity!r} must be finite")
    if iquv[0] <= 0:
        raise SetjyError(
            f"setjy: {where}Stokes I flux density {iquv[0]:g} Jy must be > 0 (a negative or "
            "zero flux density is not a model)"
        )
    return iquv


def _as_spix(spix: Any, where: str = "") -> tuple[float, ...]:
    if spix is None:
        return (0.0,)
    values = np.atleast_1d(np.asarray(spix, dtype=float))
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise SetjyError(f"setjy: {where}spix must be a finite float or list, not {spix!r}")
    if abs(values[0]) > 10:
        side = "less than -10" if values[0] < 0 else "greater than 10"
        raise SetjyError(f"setjy: {where}spectral index {values[0]:g} is {side} (as CASA refuses)")
    return tuple(float(v) for v in values)


def power_law_flux_density(
    frequency_hz: Any, fluxdensity: Any, spix: Any = 0.0, reffreq: Any = None
) -> np.ndarray:
    """Stokes ``[I, Q, U, V]`` (Jy) of a manual model at `frequency_hz`.

    ``S(nu) = S0 (nu/nu0)^(spix[0] + spix[1] x + spix[2] x^2 + ...)``, ``x = log10(nu/nu0)``,
    the same law for all four Stokes parameters (CASA's ``setjy(standard='manual')``).

    Parameters
    ----------
    frequency_hz
        Frequencies (Hz), any shape.
    fluxdensity
        Stokes I (float) or ``[I, Q, U, V]`` (Jy) at `reffreq`; I > 0.
    spix
        Spectral index (float) or ``[index, curvature, ...]``.
    reffreq
        ``nu0``: Hz or a string such as ``"100GHz"``; needed when any `spix` is nonzero.

    Returns
    -------
    numpy.ndarray
        Jy, shape ``frequency_hz.shape + (4,)``.
    """
    iquv = _as_iquv(fluxdensity)
    coeffs = _as_spix(spix)
    freq = np.asarray(frequency_hz, dtype=float)
    if not (np.all(np.isfinite(freq)) and np.all(freq > 0)):
        raise SetjyError("setjy: frequencies must be finite and > 0 Hz")
    if not any(coeffs):
        return np.broadcast_to(iquv, (*freq.shape, 4)).copy()
    if reffreq is None:
        raise SetjyError("setjy: a nonzero spix needs reffreq (the frequency of fluxdensity)")
    x = np.log10(freq / parse_frequency(reffreq))
    exponent = np.polynomial.polynomial.polyval(x, np.asarray(coeffs))
    return iquv * (10.0 ** (x * exponent))[..., None]


# ---- correlations ----

_CORRELATIONS = {
    "XX": (1, 1, 0, 0, 0),  # coefficients of I, Q, U, V (real) and V, U (imaginary)
    "YY": (1, -1, 0, 0, 0),
    "RR": (1, 0, 0, 1, 0),
    "LL": (1, 0, 0, -1, 0),
    "I": (1, 0, 0, 0, 0),
    "Q": (0, 1, 0, 0, 0),
    "U": (0, 0, 1, 0, 0),
    "V": (0, 0, 0, 1, 0),
}


def stokes_to_correlations(iquv: Any, polarizations: Sequence[str]) -> np.ndarray:
    """Correlations (complex, Jy) of Stokes ``[..., 4]`` for `polarizations` (CASA's rule).

    ``XX = I + Q, XY = U + iV, YX = U - iV, YY = I - Q``;
    ``RR = I + V, RL = Q + iU, LR = Q - iU, LL = I - V``; Stokes names give themselves.

    Raises
    ------
    SetjyError
        For a correlation other than these (e.g. XR, PP).
    """
    s = np.asarray(iquv, dtype=float)
    i, q, u, v = s[..., 0], s[..., 1], s[..., 2], s[..., 3]
    out = []
    for pol in polarizations:
        pol = str(pol)
        if pol == "XY":
            out.append(u + 1j * v)
        elif pol == "YX":
            out.append(u - 1j * v)
        elif pol == "RL":
            out.append(q + 1j * u)
        elif pol == "LR":
            out.append(q - 1j * u)
        elif pol in _CORRELATIONS:
            ci, cq, cu, cv, _ = _CORRELATIONS[pol]
            out.append((ci * i + cq * q + cu * u + cv * v).astype(complex))
        else:
            raise SetjyError(
                f"setjy: correlation {pol!r} is not supported (linear XX XY YX YY, circular "
                "RR RL LR LL, or Stokes I Q U V)"
            )
    return np.stack(out, axis=-1)


# ---- model sources: standard, manual, flux.csv, fluxscale ----


@dataclass(frozen=True)
class _FieldModel:
    """How one field's flux density is computed (what setjy records for it)."""

    standard: str
    field_name: str
    field_id: int | None
    source: str = ""  # the standard's source name
    fluxdensity: tuple[float, ...] = ()  # manual / fluxscale / flux.csv: [I, Q, U, V] at reffreq
    spix: tuple[float, ...] = (0.0,)
    reffreq: float | None = None  # Hz; None: the spw centre (flux.csv)
    origin: str = ""  # e.g. "flux.csv:12", "fluxscale field 1"

    def iquv(
        self, freq: np.ndarray, centre: float, epoch_mjd: float, interpolation: str,
        out_of_range: str, where: str,
    ) -> np.ndarray:  # fmt: skip
        if self.standard == PB2017:
            cal = PB2017_SOURCES[self.source]
            _check_range(cal, freq, out_of_range, where)
            if cal.time_variable:
                i = interpolate_epochs(
                    epochs_mjd(), _per_epoch_flux(cal, freq), epoch_mjd, interpolation
                )
            else:
                i = _polynomial_flux(cal.coefficients[0], freq)
            out = np.zeros((freq.size, 4))
            out[:, 0] = i
            return out
        reffreq = centre if self.reffreq is None else self.reffreq
        return power_law_flux_density(freq, self.fluxdensity, self.spix, reffreq)


def _selection(field: Any) -> list[str] | None:
    if field is None or (isinstance(field, str) and field.strip() == ""):
        return None
    items = field.split(",") if isinstance(field, str) else list(np.atleast_1d(field))
    out = [str(f).strip() for f in items if str(f).strip()]
    return out or None


def _ms_stem(name: str) -> str:
    name = str(name).rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".ps.zarr", ".ms"):
        name = name.removesuffix(suffix)
    return name


def _fluxscale_models(
    fluxdict: Mapping[str, Any], selection: list[str] | None
) -> dict[str, tuple[_FieldModel, set[int], set[int]]]:
    """Per field name: the model, its valid spws and the spws whose fluxd is -1."""
    if not isinstance(fluxdict, Mapping) or not fluxdict:
        raise SetjyError("setjy: fluxdict is empty or not a dictionary (fluxscale's result)")
    missing = [k for k in (schema.CASA_FS_FREQ, schema.CASA_FS_SPW_ID) if k not in fluxdict]
    if missing:
        raise SetjyError(f"setjy: fluxdict lacks key(s) {missing}")
    spw_ids = [int(s) for s in np.atleast_1d(fluxdict[schema.CASA_FS_SPW_ID])]
    freqs = np.atleast_1d(np.asarray(fluxdict[schema.CASA_FS_FREQ], dtype=float))
    field_keys = [k for k in fluxdict if str(k).strip().lstrip("-").isdigit()]
    if not field_keys:
        raise SetjyError("setjy: fluxdict has no field-id keys ('0', '1', ...)")
    out: dict[str, tuple[_FieldModel, set[int], set[int]]] = {}
    for key in field_keys:
        entry = fluxdict[key]
        where = f"fluxdict field {key}: "
        try:
            name = str(entry[schema.CASA_FS_FIELD_NAME])
            spidx = np.atleast_1d(np.asarray(entry[schema.CASA_FS_SPIDX], dtype=float))
        except (KeyError, TypeError, ValueError) as exc:
            raise SetjyError(f"setjy: {where}bad or missing entry: {exc!r}") from None
        if selection is not None and str(key) not in selection and name not in selection:
            continue
        valid, invalid = set(), set()
        for spw in spw_ids:
            per_spw = entry.get(str(spw))
            if per_spw is None:
                continue
            try:
                fluxd = np.atleast_1d(np.asarray(per_spw[schema.CASA_FS_FLUXD], dtype=float))
            except (KeyError, TypeError, ValueError) as exc:
                raise SetjyError(
                    f"setjy: {where}spw {spw}: bad or missing fluxd: {exc!r}"
                ) from None
            (valid if fluxd[0] > -1 else invalid).add(spw)
        if not valid:
            raise SetjyError(f"setjy: {where}no spw with a valid flux density (fluxd > -1)")
        spix = _as_spix(spidx[1:] if spidx.size > 1 else 0.0, where)
        fit = float(entry.get(schema.CASA_FS_FIT_FLUXD) or 0.0)
        if fit:
            fluxdensity, reffreq = fit, float(entry[schema.CASA_FS_FIT_REF_FREQ])
        else:
            first = sorted(valid)[0]
            fluxdensity = entry[str(first)][schema.CASA_FS_FLUXD]
            index = spw_ids.index(first) if freqs.size == len(spw_ids) else first
            reffreq = float(freqs[index])
        model = _FieldModel(
            standard=FLUXSCALE,
            field_name=name,
            field_id=int(key),
            fluxdensity=tuple(_as_iquv(fluxdensity, where)),
            spix=spix,
            reffreq=parse_frequency(reffreq, "fitRefFreq"),
            origin=f"fluxscale field {key}",
        )
        out[name] = (model, valid, invalid)
    if selection is not None:
        known = {str(m.field_id) for m, _, _ in out.values()} | set(out)
        absent = [s for s in selection if s not in known]
        if absent:
            raise SetjyError(f"setjy: field(s) {absent} are not in fluxdict")
    return out


def _csv_records(fluxcsv: Any, ms: str | None) -> list[FluxRecord]:
    if isinstance(fluxcsv, str | os.PathLike):
        records = read_flux_csv(Path(fluxcsv))
    else:
        records = list(fluxcsv)
        if not all(isinstance(r, FluxRecord) for r in records):
            raise SetjyError("setjy: fluxcsv must be a flux.csv path or read_flux_csv() records")
    if ms is not None:
        records = [r for r in records if r.ms in ("", "*") or _ms_stem(r.ms) == _ms_stem(ms)]
    else:
        stems = sorted({_ms_stem(r.ms) for r in records if r.ms not in ("", "*")})
        if len(stems) > 1:
            raise SetjyError(
                f"setjy: flux.csv has rows for {len(stems)} MSes ({', '.join(stems)}); "
                "pass ms= to pick this store's"
            )
    seen: dict[tuple[str, int], FluxRecord] = {}
    for r in records:
        key = (r.field, r.spw)
        if key in seen:
            raise SetjyError(
                f"setjy: {r.where}: field {r.field} spw {r.spw} already given at {seen[key].where}"
            )
        seen[key] = r
        _as_iquv(r.iquv, f"{r.where}: ")
        _as_spix(r.spix, f"{r.where}: ")
    return records


# ---- the step ----


def _partition_field_ids(ds: xr.Dataset, field_ids: Mapping[Any, str] | None) -> dict[str, int]:
    """Field name -> MS FIELD id, from `field_ids` ({id: name}) or partition_info."""
    out: dict[str, int] = {}
    info = ds.attrs.get(schema.ATTR_PARTITION_INFO) or {}
    names = info.get(schema.PI_FIELD)
    ids = info.get(schema.PI_FIELD_ID)
    if names is not None and ids is not None:
        names, ids = np.atleast_1d(names), np.atleast_1d(ids)
        if len(names) == len(ids):
            out.update({str(n): int(i) for n, i in zip(names, ids, strict=True)})
    for fid, name in (field_ids or {}).items():
        out[str(name)] = int(fid)
    return out


def _time_fields(ds: xr.Dataset) -> np.ndarray:
    if schema.FIELD_NAME in ds.coords and ds.coords[schema.FIELD_NAME].dims == (schema.TIME,):
        return np.asarray(coord_values(ds, schema.FIELD_NAME)).astype(str)
    names = (ds.attrs.get(schema.ATTR_PARTITION_INFO) or {}).get(schema.PI_FIELD)
    names = [str(n) for n in np.atleast_1d(names)] if names is not None else []
    if len(names) != 1:
        raise SetjyError(
            f"setjy: partition {describe_partition(ds)} has no {schema.FIELD_NAME}(time) "
            f"coordinate and partition_info names {len(names)} fields"
        )
    return np.full(ds.sizes[schema.TIME], names[0])


def _expand(which: np.ndarray, table: np.ndarray, baselines: np.ndarray) -> np.ndarray:
    # One block of the model: (time, baseline, channel, correlation) from the per-time model
    # index and the (model, channel, correlation) table; a read-only broadcast view.
    rows = table[which]
    return np.broadcast_to(rows[:, None], (rows.shape[0], baselines.shape[0], *rows.shape[1:]))


def _lazy_model(data: xr.DataArray, which: np.ndarray, table: np.ndarray) -> xr.DataArray:
    order = (schema.TIME, schema.BASELINE_ID, schema.FREQUENCY, schema.POLARIZATION)
    chunks = dict(zip(data.dims, data.chunks or tuple((n,) for n in data.shape), strict=True))
    which_da = da.from_array(which, chunks=(chunks[schema.TIME],))
    table_da = da.from_array(
        table, chunks=((table.shape[0],), chunks[schema.FREQUENCY], chunks[schema.POLARIZATION])
    )
    baselines = da.from_array(
        np.zeros(data.sizes[schema.BASELINE_ID], dtype=np.int8),
        chunks=(chunks[schema.BASELINE_ID],),
    )
    model = da.blockwise(
        _expand, "tbcp", which_da, "t", table_da, "mcp", baselines, "b",
        dtype=table.dtype, concatenate=True, meta=np.empty((0, 0, 0, 0), dtype=table.dtype),
    )  # fmt: skip
    return xr.DataArray(model, dims=order, coords=data.coords).transpose(*data.dims)


@register_step("setjy")
def apply(
    ds: xr.Dataset,
    field: str | int | Sequence[str | int] | None = None,
    *,
    standard: str = PB2017,
    fluxdensity: float | Sequence[float] | None = None,
    spix: float | Sequence[float] = 0.0,
    reffreq: float | str | None = None,
    fluxdict: Mapping[str, Any] | None = None,
    fluxcsv: str | os.PathLike | Iterable[FluxRecord] | None = None,
    ms: str | None = None,
    scalebychan: bool = True,
    interpolation: str = "nearest",
    epoch: Any = None,
    out_of_range: str = "warn",
    field_ids: Mapping[int, str] | None = None,
    group: str = schema.GROUP_BASE,
    output: str = schema.GROUP_MODEL,
) -> xr.Dataset:
    """Add the model visibilities (Jy) of the selected calibrator field(s) as group `output`.

    Parameters
    ----------
    ds : xr.Dataset
        One visibility partition.
    field
        Field name(s) or MS FIELD id(s) (strings or ints, a list, or ``"a,b"``). ``None``: for
        ``"Perley-Butler 2017"`` every field the standard knows, for ``"fluxscale"`` every
        field of `fluxdict`, for flux.csv every field of the file; required for a manual
        `fluxdensity`.
    standard
        ``"Perley-Butler 2017"`` (default, as CASA), ``"manual"`` (with `fluxdensity` or
        `fluxcsv`) or ``"fluxscale"`` (with `fluxdict`).
    fluxdensity
        Manual model: Stokes I (Jy) or ``[I, Q, U, V]`` at `reffreq`; I > 0.
    spix
        Manual model: spectral index, or ``[index, curvature, ...]`` (log10 law, see the
        module docstring).
    reffreq
        Manual model: reference frequency, Hz or ``"100GHz"``; required if `spix` is nonzero.
    fluxdict
        fluxscale's result dictionary (CASA's shape).
    fluxcsv
        A flux.csv path, or records from :func:`radflow.converters.flux_csv.read_flux_csv`.
    ms
        For `fluxcsv`: this store's MS name (rows of other MSes are skipped); needed when
        the file covers several MSes.
    scalebychan
        ``True``: one value per channel; ``False``: one value per spw, at its centre.
    interpolation
        Time interpolation for PB2017's time-variable sources: ``nearest``, ``linear``,
        ``cubic`` or ``spline`` (casacore's rules).
    epoch
        Observation epoch for that interpolation (unix s, datetime, ISO string); default the
        partition's first time.
    out_of_range
        PB2017 frequencies outside a source's valid range: ``"warn"`` (default; CASA warns
        too), ``"error"`` or ``"ignore"``.
    field_ids
        ``{MS FIELD id: name}`` so that ids in `field` (and flux.csv rows without a
        ``field=NAME`` comment) can be matched to the partition's field names.
    group
        Data group whose chunks, flags and weights the model group shares.
    output
        Name of the new group (must not exist; the converter's ``model`` group from an MS
        MODEL_DATA column is never overwritten: choose another name then).

    Returns
    -------
    xr.Dataset
        `ds` plus group `output` (data ``VISIBILITY_<OUTPUT>`` in Jy, complex like the data,
        lazy; flags and weights shared with `group`) when the partition holds a selected
        field, else `ds` itself.

    Raises
    ------
    UnknownStandardError
        Unknown `standard`, or parameters of another mode (e.g. `fluxdensity` with PB2017).
    UnknownCalibratorError
        A selected field name is not a calibrator of the standard.
    FrequencyRangeError
        With ``out_of_range="error"``, a channel outside the standard's valid range.
    SetjyError
        Bad flux density (I <= 0), spix, reffreq (units), epoch, interpolation, fluxdict or
        flux.csv content, unsupported correlations, a non-visibility partition.
    """
    _check_standard(standard)
    where = f"partition {describe_partition(ds)}: "
    if ds.attrs.get(schema.ATTR_TYPE) != schema.TYPE_VISIBILITY:
        raise SetjyError(f"setjy: {where}not a visibility partition")
    selection = _selection(field)
    given = {
        "fluxdensity": fluxdensity is not None,
        "fluxdict": fluxdict is not None,
        "fluxcsv": fluxcsv is not None,
    }
    wanted = {PB2017: set(), MANUAL: {"fluxdensity", "fluxcsv"}, FLUXSCALE: {"fluxdict"}}
    extra = sorted(k for k, v in given.items() if v and k not in wanted[standard])
    if extra:
        mode = FLUXSCALE if "fluxdict" in extra else MANUAL
        raise UnknownStandardError(
            f"setjy: {', '.join(extra)} given with standard={standard!r}; use standard={mode!r}"
        )
    if standard == MANUAL and given["fluxdensity"] == given["fluxcsv"]:
        raise SetjyError("setjy: standard='manual' needs exactly one of fluxdensity, fluxcsv")
    if standard == FLUXSCALE and not given["fluxdict"]:
        raise SetjyError("setjy: standard='fluxscale' needs fluxdict (fluxscale's result)")
    if interpolation not in INTERPOLATIONS:
        raise SetjyError(
            f"setjy: unknown interpolation {interpolation!r}; use one of "
            f"{', '.join(INTERPOLATIONS)}"
        )
    if out_of_range not in OUT_OF_RANGE:
        raise SetjyError(
            f"setjy: out_of_range must be one of {', '.join(OUT_OF_RANGE)}, not {out_of_range!r}"
        )

    info = ds.attrs.get(schema.ATTR_PARTITION_INFO) or {}
    spw = int(info[schema.PI_SPW_ID]) if schema.PI_SPW_ID in info else None
    ids = _partition_field_ids(ds, field_ids)
    time_fields = _time_fields(ds)
    names = list(dict.fromkeys(time_fields.tolist()))

    def selected(name: str) -> bool:
        fid = ids.get(name)
        return selection is None or name in selection or (fid is not None and str(fid) in selection)

    models: dict[str, _FieldModel] = {}
    if standard == PB2017:
        for s in selection or []:
            if not s.lstrip("-").isdigit():
                calibrator(s, PB2017)  # a typo'd calibrator name fails on every partition
        for name in names:
            cal = find_calibrator(name, PB2017) if selected(name) else None
            if cal is None and selection is not None and selected(name):
                calibrator(name, PB2017)  # selected by id but not a PB2017 calibrator: raise
            if cal is not None:
                models[name] = _FieldModel(PB2017, name, ids.get(name), source=cal.name)
    elif standard == MANUAL and given["fluxdensity"]:
        if selection is None:
            raise SetjyError("setjy: a manual fluxdensity needs field= (which calibrator)")
        iquv = tuple(_as_iquv(fluxdensity))
        coeffs = _as_spix(spix)
        ref = parse_frequency(reffreq) if reffreq is not None else None
        if any(coeffs) and ref is None:
            raise SetjyError("setjy: a nonzero spix needs reffreq (the frequency of fluxdensity)")
        for name in names:
            if selected(name):
                models[name] = _FieldModel(
                    MANUAL, name, ids.get(name), fluxdensity=iquv, spix=coeffs, reffreq=ref,
                    origin="fluxdensity",
                )  # fmt: skip
    elif standard == MANUAL:
        records = _csv_records(fluxcsv, ms)
        for name in names:
            fid = ids.get(name)
            for r in records:
                named = r.field == name or r.field_name == name
                by_id = r.field.isdigit() and fid is not None and int(r.field) == fid
                if r.spw != spw or not (named or by_id):
                    continue
                if selected(name) or (selection is not None and r.field in selection):
                    models[name] = _FieldModel(
                        MANUAL, name, int(r.field) if r.field.isdigit() else fid,
                        fluxdensity=r.iquv, spix=(r.spix,), reffreq=None, origin=r.where,
                    )  # fmt: skip
                break
    else:
        entries = _fluxscale_models(fluxdict, selection)
        for name in names:
            if name not in entries or spw is None:
                continue
            model, valid, invalid = entries[name]
            if spw in valid:
                models[name] = model
            elif spw in invalid:
                warnings.warn(
                    f"setjy: {where}fluxdict has no valid flux density (fluxd = -1) for field "
                    f"{name!r} spw {spw}; no model set (as CASA)",
                    stacklevel=2,
                )
    if not models:
        return ds

    src = get_data_group(ds, group)
    freq = np.asarray(coord_values(ds, schema.FREQUENCY), dtype=float)
    pols = [str(p) for p in coord_values(ds, schema.POLARIZATION)]
    centre = 0.5 * (float(freq[0]) + float(freq[-1]))
    times = np.asarray(coord_values(ds, schema.TIME), dtype=float)
    epoch_mjd = to_mjd(epoch) if epoch is not None else to_mjd(float(times[0]))
    eval_freq = freq if scalebychan else np.array([centre])
    report_freq = float(freq[0]) if scalebychan else centre

    dtype = src.data.dtype if np.issubdtype(src.data.dtype, np.complexfloating) else np.complex64
    rows, records = [], []
    for model in models.values():
        iquv = model.iquv(eval_freq, centre, epoch_mjd, interpolation, out_of_range, where)
        if not scalebychan:
            iquv = np.broadcast_to(iquv, (freq.size, 4))
        rows.append(stokes_to_correlations(iquv, pols))
        report = iquv[0]
        records.append(
            {
                schema.SETJY_STANDARD: model.standard,
                schema.SETJY_SOURCE: model.source,
                schema.FIELD_NAME: model.field_name,
                schema.FIELD_ID: model.field_id,
                schema.ATTR_SPW_ID: spw,
                schema.CASA_FS_FLUXD: [float(v) for v in report],
                schema.SETJY_FREQUENCY: report_freq,
                schema.SETJY_SCALEBYCHAN: bool(scalebychan),
                schema.SETJY_REFERENCE_FREQUENCY: (
                    None if model.standard == PB2017 else model.reffreq or centre
                ),
                schema.SETJY_SPIX: list(model.spix) if model.standard != PB2017 else [],
                schema.SETJY_EPOCH_MJD: epoch_mjd,
                schema.SETJY_INTERPOLATION: interpolation,
                schema.SETJY_ORIGIN: model.origin,
            }
        )
    index = {name: k for k, name in enumerate(models)}
    which = np.array([index.get(name, len(models)) for name in time_fields], dtype=np.int32)
    if (which == len(models)).any():  # other fields' times: CASA's default model, I = 1 Jy
        rows.append(stokes_to_correlations(np.broadcast_to([1.0, 0, 0, 0], (freq.size, 4)), pols))
    table = np.stack(rows).astype(dtype)

    model_da = _lazy_model(src.data, which, table).assign_attrs({schema.ATTR_SETJY: records})
    described = "; ".join(
        f"{m.field_name}: {m.source or m.origin} ({m.standard})" for m in models.values()
    )
    return add_data_group(
        ds,
        output,
        data=model_da,
        flag=None,
        weight=None,
        units=schema.UNITS_JANSKY,
        description=f"setjy point-source model, {described}",
        from_group=group,
    )


def setjy_result(datasets: Iterable[xr.Dataset], *, group: str = schema.GROUP_MODEL) -> dict:
    """CASA's setjy return value from partitions :func:`apply` has processed.

    ``{field id: {spw id: {"fluxd": array([I, Q, U, V])}, "fieldName": name}, "format": ...}``
    (keys are strings; a field whose MS id is unknown is keyed by its name). ``fluxd`` is at
    the first channel's frequency (``scalebychan=True``) or the spw centre, as CASA reports
    it; for several partitions of one field and spw the earliest partition's value is used.
    Partitions without the group are skipped.
    """
    result: dict[str, Any] = {}
    entries = []
    for ds in datasets:
        var = schema.data_var_name(schema.VISIBILITY, group)
        if var not in ds.variables:
            continue
        t0 = float(coord_values(ds, schema.TIME)[0]) if schema.TIME in ds.coords else 0.0
        for record in ds[var].attrs.get(schema.ATTR_SETJY) or []:
            entries.append((t0, record))
    for _, record in sorted(entries, key=lambda e: e[0]):
        fid = record.get(schema.FIELD_ID)
        key = str(fid) if fid is not None else str(record[schema.FIELD_NAME])
        field_entry = result.setdefault(key, {schema.CASA_FS_FIELD_NAME: record[schema.FIELD_NAME]})
        spw_key = str(record[schema.ATTR_SPW_ID])
        if spw_key not in field_entry:
            field_entry[spw_key] = {schema.CASA_FS_FLUXD: np.asarray(record[schema.CASA_FS_FLUXD])}
    result[schema.CASA_SETJY_FORMAT] = CASA_FORMAT
    return result
