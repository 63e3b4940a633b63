"""fluxscale: bootstrap calibrators' flux densities from a gain table (CASA ``fluxscale``).

Gains solved with a 1 Jy model for a calibrator of unknown flux density ``S`` come out too large
by ``sqrt(S)``; gains of a reference calibrator whose model had its true flux density do not.
Assuming the system gain does not depend on the field, per spw::

    mg(field, antenna, receptor)  = mean over unflagged solution times of |g|       (unweighted)
    mg_ref                        = mean of mg over the reference fields where they have one
    r(antenna, receptor)          = mg_transfer(spw) / mg_ref(refspwmap[spw])
    ratio                         = median of r over antennas and receptors
    fd                            = ratio**2    (the transfer field's flux density, Jy)

and every transfer field's gains are divided by ``ratio`` (``incremental=True`` instead gives a
new G table of one gain ``1/ratio`` per field, antenna and spw). A spectral fit over the spws,
``log10 S = a0 + a1 x + a2 x**2 + ...`` with ``x = log10 nu - mean(log10 nu)``, weighted by the
flux density errors, gives ``fitFluxd = 10**a0`` at ``fitRefFreq = 10**mean(log10 nu)`` and the
spectral index ``a1``. Optional ``gainthreshold`` keeps, per (field, spw), only gains within
``[1 - t, 1 + t] x`` their median ``|g|`` (``[0, 1 + t]`` for ``t >= 1``, only the median for
``t == 0``); optional ``antenna`` restricts the antennas the scale is derived from (the scaling
still applies to every antenna).

Outputs (:class:`FluxscaleResult`): a lazy :class:`xarray.Dataset` view of every number with
units (:data:`radflow.schema.TYPE_FLUXSCALE_RESULT`), the scaled (or incremental) table, and
:func:`result_dict`, which computes the view and returns CASA's result dict (keys and shapes
exactly as ``casatasks.fluxscale`` returns them; ``setjy(standard='fluxscale', fluxdict=...)``
consumes it).

Errors. CASA reports ``fluxdErr = 2 std(r) / sqrt(N - 1)``: the scatter of ``r``, not of
``r**2``, so it lacks the factor ``ratio`` (right only near 1 Jy), and it is the error of a mean
while ``fd`` comes from a median. radflow's default propagates the error of what it reports::

    sigma_ratio = sqrt(pi / 2) * std(r, ddof=1) / sqrt(N)   (standard error of the median of N
                                                            normal samples)
    fluxdErr    = 2 * ratio * sigma_ratio                   (fd = ratio**2)

(NaN for ``N == 1``, where CASA reports 0). The fit is weighted by ``1/sigma_y**2`` with
``sigma_y = fluxdErr / (fd ln 10)`` (the error of ``log10 fd``); its covariance is
``(A^T W A)^-1`` and ``spidxerr`` its diagonal's square root; ``fitFluxdErr = ln 10 * fitFluxd *
spidxerr[0]``. Where an spw's error is unknown or zero the fit is unweighted and its covariance
is scaled by chi2/dof. ``casa_errors=True`` gives CASA's numbers instead: the ``fluxdErr`` above,
fit weights from ``sigma_y = fluxdErr / fd`` (CASA omits the ln 10), ``covarMat`` unscaled but
``spidxerr = sqrt(diag(covarMat) * chi2 / max(dof, 1))``, and CASA's fit-order fallback (two spws
with ``fitorder > 1`` are fitted with a constant).

Median. For an even number of ratios radflow takes the mean of the two middle values.
casacore's ``median(MaskedArray)`` does that only when the masked array has at most 100 elements
*including the masked ones* (``nreceptors x nantennas`` of the table for the ratio, the
selected rows x receptors of the (field, spw) for the ``gainthreshold`` median); beyond that it
returns the lower of the two middle values. ``casa_median=True`` reproduces that.

Other deviations from CASA, on purpose: the fit order is lowered to ``nspw - 1`` when more
coefficients are asked for than spws allow (CASA fits an under-determined polynomial, or a
constant for two spws); a one-spw field reports ``fitFluxdErr = fluxdErr`` (CASA: 0) unless
``casa_errors``; PARAMETER_ERROR is scaled with the gains (CASA leaves PARAMERR, so that its SNR
no longer matches); ``antenna`` selects exactly the named antennas (CASA's antenna selection on a
caltable also matches ANTENNA2, the refant, so listing the refant selects every antenna but the
refant); transfer fields named explicitly must have solutions (CASA warns and goes on).

Laziness: building the view and the table computes nothing; one :func:`dask.delayed` task over
the (small) amplitude arrays of every spw does the reductions, medians and fits.
Errors that depend on the data (every solution flagged) are raised when that task runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np
import xarray as xr

from radflow import schema
from radflow.step import register_step

CASA_NO_VALUE = -1.0  # what CASA's dict holds for a (field, spw) without a flux density
_MAX_EVEN_MEAN = 100  # casacore: median() averages the two middle values up to this many elements


class FluxscaleError(ValueError):
    """fluxscale cannot run on this table (wrong type, unknown field, nothing left to scale)."""


class FluxscaleResult(NamedTuple):
    """What :func:`fluxscale` returns: the result view and the scaled (or incremental) table.

    ``view`` is lazy; :meth:`to_dict` computes it and returns CASA's result dict.
    """

    view: xr.Dataset
    table: dict[int, xr.Dataset]

    def to_dict(self) -> dict[str, Any]:
        return result_dict(self.view)


# ---- selection helpers (metadata only) ----


def _names(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        items: Iterable[str] = value.split(",")
    else:
        items = value
    out = []
    for item in items:
        name = str(item).strip()
        if name and name not in out:
            out.append(name)
    return out


def pipeline_intents(intents: str | Iterable[str]) -> set[str]:
    """Pipeline intents (``AMPLITUDE``, ``PHASE``, ...) of a field from its intents.

    Accepts the pipeline names themselves or MS STATE OBS_MODE strings (``CALIBRATE_FLUX#ON_
    SOURCE,CALIBRATE_WVR#ON_SOURCE``), mapped as the ALMA pipeline does
    (:data:`radflow.schema.PL_INTENT_BY_OBS_MODE`); OBS_MODEs without a pipeline meaning are
    dropped.
    """
    out = set()
    known = set(schema.PL_INTENT_BY_OBS_MODE.values())
    for item in _names(intents):
        mode = item.replace(".ON_SOURCE", "#ON_SOURCE").replace("_ON_SOURCE", "#ON_SOURCE")
        if mode in schema.PL_INTENT_BY_OBS_MODE:
            out.add(schema.PL_INTENT_BY_OBS_MODE[mode])
        elif item.upper() in known or "#" not in item:
            out.add(item.upper())
    return out


def _check_table(table: Mapping[int, xr.Dataset]) -> str:
    if not isinstance(table, Mapping) or not table:
        raise FluxscaleError(
            "fluxscale: the table must be a non-empty mapping {spw id: solution Dataset}"
        )
    cal_types = set()
    for spw, ds in table.items():
        where = f"fluxscale: spw {spw}"
        if not isinstance(ds, xr.Dataset):
            raise FluxscaleError(f"{where}: expected an xarray Dataset, got {type(ds).__name__}")
        cal_type = ds.attrs.get(schema.ATTR_CAL_TYPE)
        if cal_type not in schema.CAL_TYPES_GAIN:
            raise FluxscaleError(
                f"{where}: the table has cal_type {cal_type!r}; fluxscale needs G or T gain "
                "solutions"
            )
        cal_types.add(cal_type)
        for name in (schema.CALIBRATION_PARAMETER, schema.FLAG):
            if name not in ds.data_vars:
                raise FluxscaleError(f"{where}: the solution dataset has no {name!r} variable")
        dims = ds[schema.CALIBRATION_PARAMETER].dims
        wanted = {schema.TIME, schema.ANTENNA_NAME, schema.FREQUENCY, schema.RECEPTOR}
        if set(dims) != wanted:
            raise FluxscaleError(f"{where}: {schema.CALIBRATION_PARAMETER} has dims {dims}")
        if ds.sizes[schema.FREQUENCY] != 1:
            raise FluxscaleError(
                f"{where}: a G/T table has one frequency per spw, this one has "
                f"{ds.sizes[schema.FREQUENCY]}"
            )
        for coord in (schema.FIELD_NAME, schema.FREQUENCY, schema.ANTENNA_NAME, schema.RECEPTOR):
            if coord not in ds.coords:
                raise FluxscaleError(f"{where}: the solution dataset has no {coord!r} coordinate")
            if ds.coords[coord].variable.chunks is not None:
                raise FluxscaleError(
                    f"{where}: coordinate {coord!r} is a dask array; load the table's "
                    "coordinates into memory first"
                )
        if ds.coords[schema.FIELD_NAME].dims != (schema.TIME,):
            raise FluxscaleError(f"{where}: coordinate {schema.FIELD_NAME!r} must be along time")
    if len(cal_types) > 1:
        raise FluxscaleError(f"fluxscale: the table mixes cal_types {sorted(cal_types)}")
    return cal_types.pop()


def _receptors(table: Mapping[int, xr.Dataset]) -> list[str]:
    recs = {tuple(str(r) for r in ds[schema.RECEPTOR].values) for ds in table.values()}
    if len(recs) != 1:
        raise FluxscaleError(f"fluxscale: the spws have different receptors {sorted(recs)}")
    return list(recs.pop())


def _table_fields(table: Mapping[int, xr.Dataset]) -> list[str]:
    """Field names in order of their first solution time over the whole table."""
    first: dict[str, float] = {}
    for ds in table.values():
        names = ds[schema.FIELD_NAME].values
        times = ds[schema.TIME].values.astype(float)
        for name, t in zip(names, times, strict=True):
            name = str(name)
            first[name] = min(first.get(name, np.inf), t)
    return sorted(first, key=lambda n: (first[n], n))


def _select_fields(
    fields: list[str],
    reference: str | Sequence[str] | None,
    transfer: str | Sequence[str] | None,
    refintent: str | None,
    transintent: str | None,
    field_intents: Mapping[str, str | Iterable[str]] | None,
    known: set[str],
) -> tuple[list[str], list[str]]:
    present = set(fields)
    intents = {name: pipeline_intents(v) for name, v in (field_intents or {}).items()}

    def by_intent(wanted: str | None, what: str) -> list[str]:
        if field_intents is None:
            raise FluxscaleError(
                f"fluxscale: no {what} fields given; name them, or pass field_intents so that "
                f"{what}intent can pick them"
            )
        want = pipeline_intents(wanted or "")
        return [f for f in fields if intents.get(f, set()) & want]

    refs = _names(reference)
    if refs:
        for name in refs:
            if name not in present:
                kind = "is not a field of the table" if name not in known else "has no solutions"
                raise FluxscaleError(
                    f"fluxscale: reference field {name!r} {kind}; the table's fields are {fields}"
                )
    else:
        refs = by_intent(refintent, "reference")
        if not refs:
            raise FluxscaleError(
                f"fluxscale: no field of the table {fields} has a reference intent ({refintent!r})"
            )
    trans = _names(transfer)
    if trans:
        for name in trans:
            if name not in present:
                kind = "is not a field of the table" if name not in known else "has no solutions"
                raise FluxscaleError(
                    f"fluxscale: transfer field {name!r} {kind}; the table's fields are {fields}"
                )
        trans = [t for t in trans if t not in refs]  # CASA: a reference is never a transfer
    elif field_intents is not None and transintent:
        trans = [f for f in by_intent(transintent, "transfer") if f not in refs]
    else:
        trans = [f for f in fields if f not in refs]
    if not trans:
        raise FluxscaleError(
            f"fluxscale: no transfer field: the table's fields are {fields}, the reference "
            f"field(s) {refs}"
        )
    return refs, trans


def _refspw_positions(refspwmap: Sequence[int] | None, spws: list[int]) -> dict[int, int]:
    """CASA's refspwmap: [-1] or None identity; one value: every spw; else per spw id."""
    out = {s: s for s in spws}
    if refspwmap is None:
        return out
    values = [int(v) for v in refspwmap]
    if not values or values[0] < 0:
        return out
    if len(values) == 1:
        out = {s: values[0] for s in spws}
    else:
        for s in spws:
            if s < len(values) and values[s] > -1:
                out[s] = values[s]
    for s, r in out.items():
        if r not in spws:
            raise FluxscaleError(
                f"fluxscale: refspwmap maps spw {s} to spw {r}, which the table does not have "
                f"(spws {spws})"
            )
    return out


def _antenna_selection(antenna: str | Sequence[str] | None, antennas: list[str]) -> np.ndarray:
    if antenna is None or (isinstance(antenna, str) and not antenna.strip()):
        return np.ones(len(antennas), dtype=bool)
    names = _names(antenna.replace("&", "") if isinstance(antenna, str) else antenna)
    unknown = [n for n in names if n not in antennas]
    if unknown:
        raise FluxscaleError(
            f"fluxscale: antenna selection names {unknown}, which the table does not have "
            f"(antennas {antennas})"
        )
    return np.isin(antennas, names)


# ---- the numbers (numpy; one dask.delayed call) ----


def _median(values: np.ndarray, n_total: int, casa_median: bool) -> float:
    """Median of `values`; casacore's quirk for an even count when `n_total` > 100."""
    if casa_median and values.size % 2 == 0 and n_total > _MAX_EVEN_MEAN:
        return float(np.sort(values)[(values.size - 1) // 2])
    return float(np.median(values))


def _fit(
    fd: np.ndarray, err: np.ndarray, freq: np.ndarray, fitorder: int, casa_errors: bool
) -> dict[str, Any]:
    """The spectral fit of one field over its spws with a flux density (CASA's conventions)."""
    k = fitorder + 1
    out: dict[str, Any] = {
        "flux": np.nan,
        "flux_err": np.nan,
        "ref_freq": np.nan,
        "coef": np.full(k, np.nan),
        "coef_err": np.full(k, np.nan),
        "covar": np.full((k, k), np.nan),
        "order": -1,
    }
    n = fd.size
    if n == 0:
        return out
    if n == 1:  # no fit: CASA fills fitFluxd and fitRefFreq with the spw's values
        out.update(flux=fd[0], ref_freq=freq[0], flux_err=0.0 if casa_errors else err[0])
        return out
    order = min(fitorder, n - 1)
    if casa_errors and n == 2 and fitorder > 1:
        order = 0  # CASA: "Use fitorder=1", then fits a constant
    log_nu = np.log10(freq)
    x = log_nu - log_nu.mean()
    y = np.log10(fd)
    sigma = err / fd if casa_errors else err / (fd * np.log(10.0))
    weighted = bool(np.all(np.isfinite(sigma) & (sigma > 0)))
    w = 1.0 / sigma**2 if weighted else np.ones(n)
    a = np.vander(x, order + 1, increasing=True)
    covar = np.linalg.pinv(a.T @ (a * w[:, None]))
    coef = covar @ (a.T @ (w * y))
    chi2 = float(np.sum(w * (y - a @ coef) ** 2))
    dof = n - (order + 1)
    if casa_errors:
        coef_err = np.sqrt(np.diag(covar) * chi2 / max(dof, 1))
    else:
        if not weighted:
            covar = covar * (chi2 / dof) if dof > 0 else np.full_like(covar, np.nan)
        coef_err = np.sqrt(np.diag(covar))
    out["coef"][: order + 1] = coef
    out["coef"][order + 1 :] = 0.0
    out["coef_err"][: order + 1] = coef_err
    out["coef_err"][order + 1 :] = 0.0
    out["covar"][: order + 1, : order + 1] = covar
    flux = 10.0 ** coef[0]
    out.update(
        flux=flux,
        flux_err=np.log(10.0) * flux * coef_err[0],
        ref_freq=10.0 ** log_nu.mean(),
        order=order,
    )
    return out


def _solve(
    amps: Sequence[np.ndarray | None],
    field_index: Sequence[np.ndarray | None],
    present: Sequence[np.ndarray | None],
    *,
    fields: Sequence[str],
    spws: Sequence[int],
    ref: Sequence[int],
    transfer: Sequence[int],
    refspw: Sequence[int],
    freq: np.ndarray,
    selected: np.ndarray,
    gainthreshold: float,
    fitorder: int,
    casa_median: bool,
    casa_errors: bool,
) -> dict[str, np.ndarray]:
    """Every number of the view, from |g| per spw (time, antenna, receptor), NaN where flagged."""
    n_f, n_s = len(fields), len(spws)
    n_a = selected.size
    n_r = next(a.shape[2] for a in amps if a is not None)
    mg = np.full((n_f, n_s, n_a, n_r), np.nan)
    n_gain = np.zeros((n_f, n_s, n_a, n_r), dtype=np.int64)
    for s, (amp, fidx, here) in enumerate(zip(amps, field_index, present, strict=True)):
        if amp is None:
            continue
        amp = np.asarray(amp, dtype=np.float64)
        sel = selected & here
        for f in range(n_f):
            rows = fidx == f
            if not rows.any():
                continue
            a = np.full((int(rows.sum()), n_a, n_r), np.nan)
            a[:, sel] = amp[rows][:, sel]
            if gainthreshold >= 0:
                good = a[np.isfinite(a)]
                if good.size:
                    med = _median(good, int(rows.sum()) * int(sel.sum()) * n_r, casa_median)
                    low = 1.0 - gainthreshold if 0 < gainthreshold < 1 else 0.0
                    if gainthreshold == 0:
                        low = 1.0
                    with np.errstate(invalid="ignore"):
                        keep = (a >= low * med) & (a <= (1.0 + gainthreshold) * med)
                    a = np.where(keep, a, np.nan)
            count = np.isfinite(a).sum(axis=0)
            n_gain[f, s] = count
            with np.errstate(invalid="ignore", divide="ignore"):
                mg[f, s] = np.where(count > 0, np.nansum(a, axis=0) / count, np.nan)

    with np.errstate(invalid="ignore", divide="ignore"):
        ref_mg = mg[list(ref)]
        ref_n = np.isfinite(ref_mg).sum(axis=0)
        mg_ref = np.where(ref_n > 0, np.nansum(ref_mg, axis=0) / ref_n, np.nan)  # (S, A, R)
    if not np.isfinite(mg_ref).any():
        names = [fields[f] for f in ref]
        raise FluxscaleError(
            f"fluxscale: the reference field(s) {names} have no unflagged solutions"
            + (" within the gain threshold" if gainthreshold >= 0 else "")
            + (" on the selected antennas" if not selected.all() else "")
        )

    ant_ratio = np.full_like(mg, np.nan)
    ratio = np.full((n_f, n_s), np.nan)
    fd = np.full((n_f, n_s), np.nan)
    fd_err = np.full((n_f, n_s), np.nan)
    n_sol = np.zeros((n_f, n_s), dtype=np.int64)
    for f in transfer:
        for s in range(n_s):
            ref_plane = mg_ref[refspw[s]]
            with np.errstate(invalid="ignore", divide="ignore"):
                r = np.where(ref_plane > 0, mg[f, s] / ref_plane, np.nan)
            ant_ratio[f, s] = r
            values = r[np.isfinite(r)]
            n = values.size
            if n == 0:
                continue
            med = _median(values, n_a * n_r, casa_median)
            std = float(np.std(values, ddof=1)) if n > 1 else np.nan
            ratio[f, s] = med
            fd[f, s] = med**2
            n_sol[f, s] = n
            if casa_errors:
                fd_err[f, s] = 2.0 * std / math.sqrt(n - 1) if n > 1 else 0.0
            else:
                fd_err[f, s] = 2.0 * med * math.sqrt(math.pi / 2.0) * std / math.sqrt(n)
    if not np.isfinite(fd).any():
        names = [fields[f] for f in transfer]
        raise FluxscaleError(
            f"fluxscale: no flux density could be determined: the transfer field(s) {names} "
            "share no unflagged antenna/receptor solution with the reference field(s) "
            f"{[fields[f] for f in ref]} in any spw"
        )

    k = fitorder + 1
    fit = {
        "flux": np.full(n_f, np.nan),
        "flux_err": np.full(n_f, np.nan),
        "ref_freq": np.full(n_f, np.nan),
        "coef": np.full((n_f, k), np.nan),
        "coef_err": np.full((n_f, k), np.nan),
        "covar": np.full((n_f, k, k), np.nan),
        "order": np.full(n_f, -1, dtype=np.int64),
    }
    for f in transfer:
        ok = np.isfinite(fd[f]) & (fd[f] > 0)
        one = _fit(fd[f, ok], fd_err[f, ok], freq[ok], fitorder, casa_errors)
        for key, value in one.items():
            fit[key][f] = value

    divisor = np.where(np.isfinite(ratio) & (ratio > 0), ratio, 1.0)
    return {
        "mg": mg,
        "n_gain": n_gain,
        "ant_ratio": ant_ratio,
        "ratio": ratio,
        "fd": fd,
        "fd_err": fd_err,
        "n_sol": n_sol,
        "divisor": divisor,
        **{f"fit_{key}": value for key, value in fit.items()},
    }


# ---- the step ----


def _amplitude(ds: xr.Dataset, antennas: list[str]) -> tuple[Any, np.ndarray]:
    """|g| (time, antenna, receptor) float64 with NaN where flagged, on the union antennas."""
    dims = (schema.TIME, schema.ANTENNA_NAME, schema.RECEPTOR)
    g = ds[schema.CALIBRATION_PARAMETER].isel({schema.FREQUENCY: 0}).transpose(*dims)
    flag = ds[schema.FLAG].isel({schema.FREQUENCY: 0}).transpose(*dims)
    here = np.isin(antennas, [str(a) for a in ds[schema.ANTENNA_NAME].values])
    g = g.reindex({schema.ANTENNA_NAME: antennas})
    flag = flag.reindex({schema.ANTENNA_NAME: antennas}, fill_value=True)
    amp = xr.where(flag, np.nan, np.abs(g).astype(np.float64))
    return amp.data, here


def _lazy(value: Any, key: str, shape: tuple[int, ...], dtype: Any) -> da.Array:
    return da.from_delayed(value[key], shape=shape, dtype=dtype)


@register_step("fluxscale")
def fluxscale(
    table: Mapping[int, xr.Dataset],
    reference: str | Sequence[str] | None = None,
    transfer: str | Sequence[str] | None = None,
    *,
    refintent: str | None = schema.PL_REFINTENT_DEFAULT,
    transintent: str | None = schema.PL_TRANSINTENT_DEFAULT,
    field_intents: Mapping[str, str | Iterable[str]] | None = None,
    field_ids: Mapping[str, int] | None = None,
    spectral_windows: Mapping[int, str] | None = None,
    refspwmap: Sequence[int] | None = None,
    gainthreshold: float = -1.0,
    antenna: str | Sequence[str] | None = "",
    incremental: bool = False,
    fitorder: int = 1,
    casa_median: bool = False,
    casa_errors: bool = False,
) -> FluxscaleResult:
    """Derive the transfer calibrators' flux densities and rescale their gains (lazy).

    Parameters
    ----------
    table : Mapping[int, xr.Dataset]
        G or T gain solutions, {spw id: Dataset} (radflow.schema "Interferometer solution
        tables"); may be dask-backed, its coordinates must be in memory.
    reference, transfer : str or list of str
        Field names (a list or one comma-separated string). ``reference`` unset: the fields
        whose ``field_intents`` include `refintent`. ``transfer`` unset: the fields with
        `transintent` when `field_intents` is given, else every non-reference field of the
        table (CASA). A reference field listed as transfer is dropped (CASA).
    refintent, transintent : str
        Pipeline intents (comma-separated; defaults of ``hifa_gfluxscale``), used only when the
        fields are not named.
    field_intents : Mapping[str, str or list of str]
        Field name -> intents (pipeline names or MS OBS_MODE strings).
    field_ids : Mapping[str, int]
        Field name -> MS field id (CASA's dict keys). Default: the fields numbered in order of
        their first solution.
    spectral_windows : Mapping[int, str]
        Every MS spw id -> name, to report spws the table lacks the way CASA does (``-1``).
    refspwmap : list of int
        CASA's: ``[-1]``/None no mapping, one value maps every spw, else ``refspwmap[spw]``.
    gainthreshold : float
        Fractional deviation from the median ``|g|`` per (field, spw) a gain may have to be
        used; negative: no threshold.
    antenna : str or list of str
        Antennas (names) the scale is derived from; empty: all. A pipeline-style ``"A,B,C&"``
        is accepted.
    incremental : bool
        Return a new G table of ``1/ratio`` per field, antenna and spw instead of the scaled
        input table.
    fitorder : int
        Order of the spectral fit (>= 0).
    casa_median, casa_errors : bool
        Reproduce CASA's median and error conventions (module docstring).

    Returns
    -------
    FluxscaleResult
        ``(view, table)``: the lazy result view and the scaled/incremental table;
        ``.to_dict()`` gives CASA's result dict.

    Raises
    ------
    FluxscaleError
        For a table that is not G/T, an unknown or solution-less reference/transfer field, a
        bad refspwmap or antenna selection; when computed, if every usable solution is flagged.
    """
    cal_type = _check_table(table)
    if int(fitorder) != fitorder or fitorder < 0:
        raise FluxscaleError(f"fluxscale: fitorder must be an integer >= 0, not {fitorder}")
    fitorder = int(fitorder)
    receptors = _receptors(table)
    table_spws = sorted(int(s) for s in table)
    spw_names = {s: str(table[s].attrs.get(schema.ATTR_SPECTRAL_WINDOW_NAME, "")) for s in table}
    for s, name in (spectral_windows or {}).items():
        spw_names.setdefault(int(s), str(name))
    spws = sorted(set(table_spws) | {int(s) for s in (spectral_windows or {})})
    fields = _table_fields(table)
    known = set(fields) | set(field_ids or {}) | set(field_intents or {})
    refs, trans = _select_fields(
        fields, reference, transfer, refintent, transintent, field_intents, known
    )
    if field_ids is None:
        ids = {name: i for i, name in enumerate(fields)}
    else:
        missing = [f for f in fields if f not in field_ids]
        if missing:
            raise FluxscaleError(f"fluxscale: field_ids has no id for field(s) {missing}")
        ids = {f: int(field_ids[f]) for f in fields}
    refspw = _refspw_positions(refspwmap, table_spws)
    antennas: list[str] = []
    for s in table_spws:
        for a in table[s][schema.ANTENNA_NAME].values:
            if str(a) not in antennas:
                antennas.append(str(a))
    selected = _antenna_selection(antenna, antennas)
    freq = np.full(len(spws), np.nan)
    for i, s in enumerate(spws):
        if s in table:
            freq[i] = float(table[s][schema.FREQUENCY].values[0])

    pos = {f: i for i, f in enumerate(fields)}
    spw_pos = {s: i for i, s in enumerate(spws)}
    amps: list[Any] = []
    present: list[np.ndarray | None] = []
    field_index: list[np.ndarray | None] = []
    for s in spws:
        if s not in table:
            amps.append(None)
            present.append(None)
            field_index.append(None)
            continue
        amp, here = _amplitude(table[s], antennas)
        amps.append(amp)
        present.append(here)
        field_index.append(np.array([pos[str(n)] for n in table[s][schema.FIELD_NAME].values]))
    result = dask.delayed(_solve, pure=True)(
        amps,
        field_index,
        present,
        fields=fields,
        spws=spws,
        ref=[pos[f] for f in refs],
        transfer=[pos[f] for f in trans],
        refspw=[spw_pos[refspw.get(s, s)] for s in spws],
        freq=freq,
        selected=selected,
        gainthreshold=float(gainthreshold),
        fitorder=fitorder,
        casa_median=bool(casa_median),
        casa_errors=bool(casa_errors),
    )

    n_f, n_s, n_a, n_r, k = len(fields), len(spws), len(antennas), len(receptors), fitorder + 1
    fs = (schema.FIELD_NAME, schema.SPECTRAL_WINDOW_ID)
    fsar = (*fs, schema.ANTENNA_NAME, schema.RECEPTOR)

    def var(
        key: str,
        dims: tuple[str, ...],
        shape: tuple[int, ...],
        dtype: Any,
        units: str,
        description: str,
    ) -> xr.Variable:
        attrs = {schema.ATTR_UNITS: units, "description": description}
        return xr.Variable(dims, _lazy(result, key, shape, dtype), attrs)

    role = [
        schema.FS_ROLE_REFERENCE
        if f in refs
        else schema.FS_ROLE_TRANSFER
        if f in trans
        else schema.FS_ROLE_OTHER
        for f in fields
    ]
    error_model = (
        "CASA: 2 std(r)/sqrt(N-1); fit weights from fluxdErr/fd, spidxerr scaled by chi2/dof"
        if casa_errors
        else "2 ratio sqrt(pi/2) std(r)/sqrt(N) (standard error of the median, propagated to "
        "ratio^2); fit weights from the error of log10 fd, covariance (A^T W A)^-1"
    )
    view = xr.Dataset(
        {
            schema.FS_FLUX_DENSITY: var(
                "fd",
                fs,
                (n_f, n_s),
                np.float64,
                schema.UNITS_JANSKY,
                "fd = GAIN_RATIO^2 (transfer fields)",
            ),
            schema.FS_FLUX_DENSITY_ERROR: var(
                "fd_err", fs, (n_f, n_s), np.float64, schema.UNITS_JANSKY, error_model
            ),
            schema.FS_N_SOLUTIONS: var(
                "n_sol", fs, (n_f, n_s), np.int64, "", "antenna/receptor ratios behind fd"
            ),
            schema.FS_GAIN_RATIO: var(
                "ratio",
                fs,
                (n_f, n_s),
                np.float64,
                "",
                "median over antennas/receptors of ANTENNA_GAIN_RATIO",
            ),
            schema.FS_MEAN_GAIN_AMPLITUDE: var(
                "mg",
                fsar,
                (n_f, n_s, n_a, n_r),
                np.float64,
                "",
                "mean |g| over the used solution times",
            ),
            schema.FS_N_GAINS: var(
                "n_gain",
                fsar,
                (n_f, n_s, n_a, n_r),
                np.int64,
                "",
                "gains averaged into MEAN_GAIN_AMPLITUDE",
            ),
            schema.FS_ANTENNA_GAIN_RATIO: var(
                "ant_ratio",
                fsar,
                (n_f, n_s, n_a, n_r),
                np.float64,
                "",
                "MEAN_GAIN_AMPLITUDE / mean over reference fields (refspwmap spw)",
            ),
            schema.FS_FIT_FLUX_DENSITY: var(
                "fit_flux",
                (schema.FIELD_NAME,),
                (n_f,),
                np.float64,
                schema.UNITS_JANSKY,
                "10^a0 (CASA fitFluxd)",
            ),
            schema.FS_FIT_FLUX_DENSITY_ERROR: var(
                "fit_flux_err",
                (schema.FIELD_NAME,),
                (n_f,),
                np.float64,
                schema.UNITS_JANSKY,
                "ln(10) fitFluxd spidxerr[0] (CASA fitFluxdErr)",
            ),
            schema.FS_FIT_REFERENCE_FREQUENCY: var(
                "fit_ref_freq",
                (schema.FIELD_NAME,),
                (n_f,),
                np.float64,
                "Hz",
                "10^mean(log10 nu) (CASA fitRefFreq)",
            ),
            schema.FS_FIT_COEFFICIENTS: var(
                "fit_coef",
                (schema.FIELD_NAME, schema.FIT_COEFFICIENT),
                (n_f, k),
                np.float64,
                "",
                "log10 S = sum_k a_k (log10 nu - log10 fitRefFreq)^k (CASA spidx)",
            ),
            schema.FS_FIT_COEFFICIENT_ERRORS: var(
                "fit_coef_err",
                (schema.FIELD_NAME, schema.FIT_COEFFICIENT),
                (n_f, k),
                np.float64,
                "",
                "CASA spidxerr",
            ),
            schema.FS_FIT_COVARIANCE: var(
                "fit_covar",
                (schema.FIELD_NAME, schema.FIT_COEFFICIENT, schema.FIT_COEFFICIENT_2),
                (n_f, k, k),
                np.float64,
                "",
                "CASA covarMat (NaN beyond FIT_ORDER)",
            ),
            schema.FS_FIT_ORDER: var(
                "fit_order",
                (schema.FIELD_NAME,),
                (n_f,),
                np.int64,
                "",
                "order fitted; -1: no fit (fewer than 2 spws)",
            ),
        },
        coords={
            schema.FIELD_NAME: fields,
            schema.FIELD_ID: (schema.FIELD_NAME, [ids[f] for f in fields]),
            schema.FS_ROLE: (schema.FIELD_NAME, role),
            schema.SPECTRAL_WINDOW_ID: spws,
            schema.SPECTRAL_WINDOW_NAME: (schema.SPECTRAL_WINDOW_ID, [spw_names[s] for s in spws]),
            schema.FREQUENCY: (schema.SPECTRAL_WINDOW_ID, freq, {schema.ATTR_UNITS: "Hz"}),
            schema.ANTENNA_NAME: antennas,
            schema.RECEPTOR: receptors,
            schema.FIT_COEFFICIENT: np.arange(k),
            schema.FIT_COEFFICIENT_2: np.arange(k),
        },
        attrs={
            schema.ATTR_TYPE: schema.TYPE_FLUXSCALE_RESULT,
            schema.ATTR_CAL_TYPE: cal_type,
            schema.FS_ATTR_REFERENCE_FIELDS: list(refs),
            schema.FS_ATTR_TRANSFER_FIELDS: list(trans),
            schema.FS_ATTR_REFSPWMAP: {str(s): int(r) for s, r in refspw.items()},
            schema.FS_ATTR_GAINTHRESHOLD: float(gainthreshold),
            schema.FS_ATTR_ANTENNA: [a for a, ok in zip(antennas, selected, strict=True) if ok]
            if not selected.all()
            else [],
            schema.FS_ATTR_FITORDER: fitorder,
            schema.FS_ATTR_CASA_MEDIAN: bool(casa_median),
            schema.FS_ATTR_CASA_ERRORS: bool(casa_errors),
            schema.FS_ATTR_ERROR_MODEL: error_model,
        },
    )

    divisor = _lazy(result, "divisor", (n_f, n_s), np.float64)
    if incremental:
        out = _incremental_table(table, divisor, fields, spw_pos, antennas, receptors, refs, trans)
    else:
        out = {}
        for s in table_spws:
            ds = table[s]
            per_time = divisor[field_index[spw_pos[s]], spw_pos[s]]
            div = xr.DataArray(per_time, dims=(schema.TIME,))
            new = {}
            for name in (schema.CALIBRATION_PARAMETER, schema.PARAMETER_ERROR):
                if name in ds.data_vars:
                    new[name] = (ds[name] / div).astype(ds[name].dtype).assign_attrs(ds[name].attrs)
            out[s] = ds.assign(new).assign_attrs(
                {
                    schema.FS_ATTR_REFERENCE_FIELDS: list(refs),
                    schema.FS_ATTR_TRANSFER_FIELDS: list(trans),
                }
            )
    return FluxscaleResult(view, out)


def _incremental_table(
    table: Mapping[int, xr.Dataset],
    divisor: da.Array,
    fields: list[str],
    spw_pos: Mapping[int, int],
    antennas: list[str],
    receptors: list[str],
    refs: list[str],
    trans: list[str],
) -> dict[int, xr.Dataset]:
    """CASA's incremental table: a G table, one gain 1/ratio per field (1 for the others)."""
    first: dict[str, float] = {}
    for ds in table.values():
        for name, t in zip(ds[schema.FIELD_NAME].values, ds[schema.TIME].values, strict=True):
            first[str(name)] = min(first.get(str(name), np.inf), float(t))
    order = sorted(range(len(fields)), key=lambda i: first[fields[i]])
    recs = receptors if len(receptors) > 1 else list(receptors[0])  # T "XY" -> G X, Y
    out = {}
    for s, ds in table.items():
        gain = 1.0 / divisor[order, spw_pos[s]]  # (field,)
        shape = (len(order), len(antennas), 1, len(recs))
        cpar = da.broadcast_to(gain[:, None, None, None], shape).astype(np.complex64)
        dims = (schema.TIME, schema.ANTENNA_NAME, schema.FREQUENCY, schema.RECEPTOR)
        attrs = {
            **ds.attrs,
            schema.ATTR_CAL_TYPE: schema.CAL_TYPE_G,
            schema.ATTR_FIELDS: [fields[i] for i in order],
            schema.FS_ATTR_REFERENCE_FIELDS: list(refs),
            schema.FS_ATTR_TRANSFER_FIELDS: list(trans),
        }
        out[s] = xr.Dataset(
            {
                schema.CALIBRATION_PARAMETER: (dims, cpar),
                schema.PARAMETER_ERROR: (dims, np.zeros(shape, np.float32)),
                schema.SNR: (dims, np.zeros(shape, np.float32)),
                schema.FLAG: (dims, np.zeros(shape, bool)),
                schema.REFERENCE_ANTENNA: ((schema.TIME,), np.array([""] * len(order))),
            },
            coords={
                schema.TIME: (
                    (schema.TIME,),
                    np.array([first[fields[i]] for i in order]),
                    ds[schema.TIME].attrs,
                ),
                schema.FIELD_NAME: ((schema.TIME,), np.array([fields[i] for i in order])),
                schema.SCAN_NUMBER: ((schema.TIME,), np.full(len(order), -1)),
                schema.ANTENNA_NAME: antennas,
                schema.FREQUENCY: ds[schema.FREQUENCY],
                schema.RECEPTOR: recs,
            },
            attrs=attrs,
        )
    return out


# ---- CASA's dict ----


def result_dict(view: xr.Dataset) -> dict[str, Any]:
    """CASA's fluxscale result dict from a (computed here if lazy) :func:`fluxscale` view.

    ``{field id str: {spw id str: {'fluxd', 'fluxdErr', 'numSol'} (4-element float arrays, I
    then zeros for Q U V; -1 everywhere for an spw without a result), 'fieldName', 'fitFluxd',
    'fitFluxdErr', 'fitRefFreq', 'spidx', 'spidxerr' (fitorder + 1 elements), 'covarMat'},
    'freq', 'spwID', 'spwName'}``, transfer fields only, as ``casatasks.fluxscale`` returns.
    """
    if view.attrs.get(schema.ATTR_TYPE) != schema.TYPE_FLUXSCALE_RESULT:
        raise FluxscaleError("result_dict: not a fluxscale result view")
    view = view.compute()
    spws = [int(s) for s in view[schema.SPECTRAL_WINDOW_ID].values]
    k = view.sizes[schema.FIT_COEFFICIENT]

    def number(value: Any) -> float:
        value = float(value)
        return value if np.isfinite(value) else 0.0

    out: dict[str, Any] = {}
    for f, name in enumerate(view[schema.FIELD_NAME].values):
        if view[schema.FS_ROLE].values[f] != schema.FS_ROLE_TRANSFER:
            continue
        entry: dict[str, Any] = {}
        for s, spw in enumerate(spws):
            fd = float(view[schema.FS_FLUX_DENSITY].values[f, s])
            if np.isfinite(fd):
                err = float(view[schema.FS_FLUX_DENSITY_ERROR].values[f, s])
                n = float(view[schema.FS_N_SOLUTIONS].values[f, s])
                entry[str(spw)] = {
                    schema.CASA_FS_FLUXD: np.array([fd, 0.0, 0.0, 0.0]),
                    schema.CASA_FS_FLUXD_ERR: np.array([err, 0.0, 0.0, 0.0]),
                    schema.CASA_FS_NUM_SOL: np.array([n, 0.0, 0.0, 0.0]),
                }
            else:
                entry[str(spw)] = {
                    key: np.full(4, CASA_NO_VALUE)
                    for key in (
                        schema.CASA_FS_FLUXD,
                        schema.CASA_FS_FLUXD_ERR,
                        schema.CASA_FS_NUM_SOL,
                    )
                }
        order = int(view[schema.FS_FIT_ORDER].values[f])
        coef = np.nan_to_num(view[schema.FS_FIT_COEFFICIENTS].values[f], nan=0.0)
        coef_err = np.nan_to_num(view[schema.FS_FIT_COEFFICIENT_ERRORS].values[f], nan=0.0)
        covar = (
            np.array(view[schema.FS_FIT_COVARIANCE].values[f, : order + 1, : order + 1])
            if order >= 0
            else np.zeros((0, 0))
        )
        entry.update(
            {
                schema.CASA_FS_FIELD_NAME: str(name),
                schema.CASA_FS_FIT_FLUXD: number(view[schema.FS_FIT_FLUX_DENSITY].values[f]),
                schema.CASA_FS_FIT_FLUXD_ERR: number(
                    view[schema.FS_FIT_FLUX_DENSITY_ERROR].values[f]
                ),
                schema.CASA_FS_FIT_REF_FREQ: number(
                    view[schema.FS_FIT_REFERENCE_FREQUENCY].values[f]
                ),
                schema.CASA_FS_SPIDX: np.asarray(coef, dtype=float).reshape(k),
                schema.CASA_FS_SPIDX_ERR: np.asarray(coef_err, dtype=float).reshape(k),
                schema.CASA_FS_COVAR_MAT: covar,
            }
        )
        out[str(int(view[schema.FIELD_ID].values[f]))] = entry
    freq = view[schema.FREQUENCY].values.astype(float)
    out[schema.CASA_FS_FREQ] = np.where(np.isfinite(freq), freq, CASA_NO_VALUE)
    out[schema.CASA_FS_SPW_ID] = np.array(spws, dtype=np.int32)
    out[schema.CASA_FS_SPW_NAME] = np.array(
        [str(n) for n in view[schema.SPECTRAL_WINDOW_NAME].values]
    )
    return out
