"""Calibration solutions <-> CASA caltables, in the NewCalTable layout CASA 6 writes.

:func:`write_caltable` exports a radflow solution table (one dataset per spectral window, see
``schema.py``, "Interferometer solution tables") as a caltable that CASA's ``applycal``,
``gaincal(gaintable=...)`` and ``tb`` accept; :func:`read_caltable` reads such a table back, and
tables written by CASA's ``gaincal`` (G, T, K), ``bandpass`` (B) and ``gencal(caltype='tsys')``.

The layout is the one CASA 6.7 writes (checked column by column, keyword by keyword against
tables written by CASA 6.7 ``gaincal``/``bandpass``/``gencal``; ``tests/test_caltable.py``
re-checks it whenever CASA is installed):

Main table, one row per (spw, solution, antenna), rows sorted by spw, then solution time,
then antenna id; all columns in one ``StandardStMan`` named ``MSMTAB``:

=================== ====== =====================================================================
TIME                double MJD seconds (UTC); QuantumUnits ``s``, MEASINFO epoch/UTC
FIELD_ID            int    row of the MS FIELD table (``field_name`` coordinate), -1: none
SPECTRAL_WINDOW_ID  int    the spw id (the key of the table mapping)
ANTENNA1            int    row of the MS ANTENNA table
ANTENNA2            int    the reference antenna of the solution (``REFERENCE_ANTENNA``), -1: none
INTERVAL            double ``SOLUTION_INTERVAL`` (s); QuantumUnits ``s`` (CASA's solvers write 0)
SCAN_NUMBER         int    ``scan_number`` coordinate, -1: none
OBSERVATION_ID      int    0
CPARAM / FPARAM     array  complex (G, T, B) / float (TSYS, K); cells [npar, nchan] (numpy
                           ``(nchan, npar)`` = the dataset's ``(frequency, receptor)``)
PARAMERR            float  ``PARAMETER_ERROR`` (0 where absent, CASA's default)
FLAG                bool   ``FLAG``, or-ed with non-finite parameters
SNR                 float  ``SNR`` (1 where absent, CASA's default)
WEIGHT              float  ``WEIGHT`` if the dataset has it; else undefined cells, as CASA
=================== ====== =====================================================================

Array columns are variable-shaped (ndim -1), scalars have option 5 (direct, fixed shape), no
comments, as CASA's ``CTDesc``. Keywords, in CASA's order: ``ParType`` (``Complex``/``Float``),
``MSName`` (the MS basename), ``VisCal`` (``G Jones``, ``T Jones``, ``B Jones``, ``B TSYS``,
``K Jones``), ``PolBasis`` (``LINEAR``/``CIRCULAR`` from ``polarization_basis`` or the receptor
letters; CASA's solvers write ``unknown``), ``CASA_Version`` (``radflow <version>``: radflow
does not pretend to be CASA), then the subtables. ``table.info``: type ``Calibration``, subType =
the VisCal, readme empty.

Subtables (MS-standard required columns, one ``StandardStMan`` ``MSMTAB``):

- OBSERVATION, ANTENNA, FIELD: every row copied from the MS (CASA ``setMetaInfo``).
- SPECTRAL_WINDOW: every row copied from the MS, then as CASA 6.7 revises it: for single-channel
  types (G, T, K) every multi-channel spw becomes one channel at the mean channel frequency with
  CHAN_WIDTH = EFFECTIVE_BW = RESOLUTION = TOTAL_BANDWIDTH (``makeSpwSingleChan``); a solved spw
  gets NUM_CHAN, CHAN_FREQ (the solution's frequencies) and CHAN_WIDTH = EFFECTIVE_BW (their
  widths; for G/T/K the whole spw's: radflow does not record a channel selection, where CASA
  writes the selected channels' total), and - exactly as CASA 6.7's ``setSpwFreqs`` writes them -
  RESOLUTION = CHAN_FREQ and TOTAL_BANDWIDTH = sum(CHAN_FREQ). Tsys (``gencal``) keeps the MS rows
  unchanged. FLAG_ROW is True for the spws without solutions (``flagAbsentSpws``).
- HISTORY: created empty. CASA does not copy the MS HISTORY rows into a caltable (checked with
  CASA 6.7 on an MS with 6 HISTORY rows: the caltable's HISTORY has 0 rows), so neither does
  radflow.

Only the dataset's antennas get rows; CASA's applycal flags the data of an antenna that has no
solution in the table (checked with CASA 6.7), which is what a missing solution should do.

Round trip dataset -> caltable -> dataset (solutions in time order, antennas in MS order):
parameters, errors, SNR, flags, weights, antennas, fields, scans, refants and intervals come
back bit-exact when the parameters are complex64 / float32 and errors, SNR and weights float32
(CASA's column types; float64 comes back rounded to float32). Times come back bit-exact when
they lie on the MS time grid (a unix time ``t`` with ``t + MJD_UNIX_OFFSET_S - MJD_UNIX_OFFSET_S
== t``, true of every time taken from MS TIME values); others are rounded to the nearest MJD
double (spacing 2**-20 s, so at most 0.48 us).

Not supported: CASA's pre-4.1 ("CalTable1") layout, which CASA still uses for BPOLY and GSPLINE
tables (no SPECTRAL_WINDOW_ID column): :func:`read_caltable` refuses them with a clear error. A
radflow BPOLY solution sampled on its spw's channels is written as a ``B Jones`` table (and reads
back as B); polarization (D, X), fringe, antenna-position and other VisCal types are refused.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import xarray as xr
from casacore import tables as ct

from radflow import __version__, schema

from .subtables import MSMetadata, read_metadata
from .tables import CASACORE_LOCK, close_cached

PathLike = str | os.PathLike

SOLUTION_DIMS = (schema.TIME, schema.ANTENNA_NAME, schema.FREQUENCY, schema.RECEPTOR)

_SINGLE_CHANNEL = (schema.CAL_TYPE_G, schema.CAL_TYPE_T, schema.CAL_TYPE_K)
_FLOAT_TYPES = (schema.CAL_TYPE_TSYS, schema.CAL_TYPE_K)
_VIS_CAL_TYPES = {
    "G Jones": schema.CAL_TYPE_G,
    "T Jones": schema.CAL_TYPE_T,
    "B Jones": schema.CAL_TYPE_B,
    "B TSYS": schema.CAL_TYPE_TSYS,
    "K Jones": schema.CAL_TYPE_K,
}
_UNITS = {
    schema.CAL_TYPE_TSYS: schema.UNITS_KELVIN,
    schema.CAL_TYPE_K: schema.UNITS_NANOSECOND,
}
_RECEPTORS = {"linear": ("X", "Y"), "circular": ("R", "L")}
# Telescopes whose feeds are known, for CASA tables whose PolBasis is 'unknown'.
_TELESCOPE_BASIS = {
    "ALMA": "linear", "ACA": "linear", "ATCA": "linear", "ASKAP": "linear",
    "MEERKAT": "linear", "LOFAR": "linear", "MWA": "linear", "WSRT": "linear",
    "VLA": "circular", "EVLA": "circular", "JVLA": "circular", "VLBA": "circular",
    "GMRT": "circular", "UGMRT": "circular",
}  # fmt: skip
_TIME_ATTRS = {"type": "time", "units": "s", "scale": "utc", "format": "unix"}
_PARAM_FILL = {True: 1.0 + 0.0j, False: 1.0}  # CASA's value for a flagged solution


class CaltableError(ValueError):
    """A solution table cannot be exported, or a caltable cannot be read."""


# ---------------------------------------------------------------------------------------------
# writing


@dataclass
class _Block:
    """One spw's solutions as caltable rows (already in row order)."""

    spw: int
    cal_type: str
    time: np.ndarray  # (nrow,) MJD s
    field_id: np.ndarray
    antenna1: np.ndarray
    antenna2: np.ndarray
    interval: np.ndarray
    scan: np.ndarray
    param: np.ndarray  # (nrow, nchan, npar)
    paramerr: np.ndarray
    flag: np.ndarray
    snr: np.ndarray
    weight: np.ndarray | None
    spw_freq: np.ndarray | None  # CHAN_FREQ to put in SPECTRAL_WINDOW (None: keep the MS row)
    spw_width: np.ndarray | None
    basis: str | None

    @property
    def nrow(self) -> int:
        return len(self.time)


def write_caltable(
    table: Mapping[int, xr.Dataset],
    path: PathLike,
    ms: PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a solution table as a CASA caltable (NewCalTable layout, see the module docstring).

    Parameters
    ----------
    table
        Spectral window id -> solution dataset with dims ``(time, antenna_name, frequency,
        receptor)``: ``CALIBRATION_PARAMETER`` (complex for G/T/B/BPOLY, real for TSYS and K)
        and optionally ``PARAMETER_ERROR``, ``SNR``, ``FLAG``, ``WEIGHT``, coordinates
        ``field_name(time)`` and ``scan_number(time)``, variables ``REFERENCE_ANTENNA(time)``
        (names, '' for none; or, as :mod:`radflow.cal.gain` returns it, indices into
        ``antenna_name``, -1 for none) and ``SOLUTION_INTERVAL(time)``; attrs ``cal_type`` (the
        same in every spw). Dask-backed datasets are computed together, once. Times are
        unix seconds. G/T/K have one frequency; B/BPOLY/TSYS the spw's channel frequencies (or
        a contiguous run of them).
    path
        The caltable directory to create.
    ms
        The MeasurementSet the solutions belong to: its ANTENNA, FIELD and SPECTRAL_WINDOW
        tables resolve names to ids and are copied into the caltable (with OBSERVATION).
    overwrite
        Replace an existing `path`.

    Returns
    -------
    Path
        `path`. The table is written under a temporary name beside it and renamed into place at
        the end: a failure leaves nothing at `path` (nor any temporary directory).

    Raises
    ------
    CaltableError
        An unknown antenna, field, reference antenna or spw; a frequency axis that does not match
        the spw's channels; mixed or unknown cal types; malformed datasets.
    FileExistsError
        `path` exists and `overwrite` is False.
    """
    path = Path(path)
    ms_path = Path(ms)
    if not table:
        raise CaltableError(f"{path}: no solutions to write (empty table)")
    if path.exists() and path.resolve() == ms_path.resolve():
        raise CaltableError(f"{path}: refusing to write a caltable over its own MS")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True)")
    meta = read_metadata(ms_path)

    spws = sorted(int(spw) for spw in table)
    # One compute for every spw: dask-backed solutions (radflow.cal.gain) share their graph.
    computed = dask.compute(*(table[spw] for spw in spws))
    blocks = [_prepare(spw, ds, meta, ms_path) for spw, ds in zip(spws, computed, strict=True)]
    cal_types = {b.cal_type for b in blocks}
    if len(cal_types) > 1:
        raise CaltableError(f"{path}: one caltable holds one cal_type, got {sorted(cal_types)}")
    (cal_type,) = cal_types
    bases = {b.basis for b in blocks} - {None}
    if len(bases) > 1:
        raise CaltableError(f"{path}: spws disagree on the polarization basis {sorted(bases)}")
    basis = bases.pop() if bases else None

    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        with CASACORE_LOCK:
            _write_table(tmp, blocks, cal_type, basis, ms_path)
        _move_into_place(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _move_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    close_cached(path)
    if not path.exists():
        os.rename(tmp, path)
        return
    if not overwrite:  # appeared while we were writing
        raise FileExistsError(f"{path}: already exists (pass overwrite=True)")
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:12]}")
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _names(values: np.ndarray) -> list[str]:
    return [str(v) for v in np.asarray(values).tolist()]


def _lookup(kind: str, names: list[str], known: np.ndarray, where: str) -> np.ndarray:
    """Ids of `names` in `known` (first match); -1 for ''; an error naming the unknown ones."""
    index: dict[str, int] = {}
    for i, name in enumerate(_names(known)):
        index.setdefault(name, i)
    unknown = sorted({n for n in names if n and n not in index})
    if unknown:
        raise CaltableError(f"{where}: unknown {kind} {unknown}; the MS has {sorted(index)}")
    return np.array([index[n] if n else -1 for n in names], dtype=np.int32)


def _basis_of(ds: xr.Dataset, receptors: list[str], where: str) -> str | None:
    basis = ds.attrs.get(schema.ATTR_POL_BASIS)
    if basis:
        basis = str(basis).lower()
        if basis not in schema.CT_POL_BASIS:
            raise CaltableError(
                f"{where}: {schema.ATTR_POL_BASIS} must be one of {sorted(schema.CT_POL_BASIS)}, "
                f"not {basis!r}"
            )
        return basis
    letters = set("".join(receptors).upper())
    if letters and letters <= set("XY"):
        return "linear"
    if letters and letters <= set("RL"):
        return "circular"
    return None


def _prepare(spw: int, ds: xr.Dataset, meta: MSMetadata, ms_path: Path) -> _Block:
    where = f"caltable spw {spw}"
    if spw not in meta.spws:
        raise CaltableError(
            f"{where}: spectral window {spw} is not in {ms_path} (spws {sorted(meta.spws)})"
        )
    attr_spw = ds.attrs.get(schema.ATTR_SPW_ID)
    if attr_spw is not None and int(attr_spw) != spw:
        raise CaltableError(f"{where}: the dataset says {schema.ATTR_SPW_ID}={attr_spw}")
    attr_name = ds.attrs.get(schema.ATTR_SPECTRAL_WINDOW_NAME)
    if attr_name is not None and str(attr_name) != meta.spws[spw].name:
        raise CaltableError(
            f"{where}: the dataset's spectral window is {attr_name!r} but spw {spw} of {ms_path} "
            f"is {meta.spws[spw].name!r} (solutions of another MS?)"
        )
    cal_type = ds.attrs.get(schema.ATTR_CAL_TYPE)
    if cal_type not in schema.CT_VIS_CAL:
        raise CaltableError(
            f"{where}: attrs[{schema.ATTR_CAL_TYPE!r}] must be one of "
            f"{sorted(schema.CT_VIS_CAL)}, not {cal_type!r}"
        )
    if schema.CALIBRATION_PARAMETER not in ds:
        raise CaltableError(f"{where}: no {schema.CALIBRATION_PARAMETER} variable")
    par = ds[schema.CALIBRATION_PARAMETER]
    if set(par.dims) != set(SOLUTION_DIMS):
        raise CaltableError(
            f"{where}: {schema.CALIBRATION_PARAMETER} has dims {par.dims}, expected {SOLUTION_DIMS}"
        )
    is_float = cal_type in _FLOAT_TYPES
    values = np.asarray(par.transpose(*SOLUTION_DIMS).values)
    if is_float:
        if np.iscomplexobj(values):
            raise CaltableError(f"{where}: a {cal_type} table holds real parameters, not complex")
        values = values.astype(np.float32)
        units = par.attrs.get(schema.ATTR_UNITS)
        if cal_type == schema.CAL_TYPE_TSYS and units not in (None, schema.UNITS_KELVIN):
            raise CaltableError(f"{where}: Tsys must be in K, not {units!r}")
    else:
        values = values.astype(np.complex64)
    n_time, n_ant, n_chan, n_rec = values.shape
    receptors = _names(ds[schema.RECEPTOR].values)
    if cal_type == schema.CAL_TYPE_T and n_rec != 1:
        raise CaltableError(f"{where}: a T table has one receptor entry, not {receptors}")

    def real(name: str, default: float, dtype: type) -> np.ndarray:
        if name not in ds:
            return np.full(values.shape, default, dtype=dtype)
        v = ds[name]
        if set(v.dims) != set(SOLUTION_DIMS):
            raise CaltableError(f"{where}: {name} has dims {v.dims}, expected {SOLUTION_DIMS}")
        arr = np.asarray(v.transpose(*SOLUTION_DIMS).values)
        if np.iscomplexobj(arr):
            raise CaltableError(f"{where}: {name} must be real")
        return arr.astype(dtype)

    paramerr = real(schema.PARAMETER_ERROR, 0.0, np.float32)
    snr = real(schema.SNR, 1.0, np.float32)
    flag = real(schema.FLAG, False, bool) | ~np.isfinite(values)
    weight = real(schema.WEIGHT, 0.0, np.float32) if schema.WEIGHT in ds else None

    # frequency axis vs the spw
    ms_spw = meta.spws[spw]
    freq = np.asarray(ds[schema.FREQUENCY].values, dtype=np.float64)
    if cal_type in _SINGLE_CHANNEL:
        if n_chan != 1:
            raise CaltableError(
                f"{where}: a {cal_type} table has one frequency per spw, not {n_chan}"
            )
        spw_freq: np.ndarray | None = freq
        spw_width: np.ndarray | None = np.array([ms_spw.chan_width.sum()])
    else:
        start = _channel_start(freq, ms_spw.chan_freq)
        if start is None:
            raise CaltableError(
                f"{where}: the solution's {n_chan} frequencies "
                f"({freq.min() if n_chan else 'none'} .. {freq.max() if n_chan else ''} Hz) "
                f"do not match the channels of spw {spw} ({ms_spw.name}: {ms_spw.chan_freq.size} "
                f"channels, {ms_spw.chan_freq.min()} .. {ms_spw.chan_freq.max()} Hz)"
            )
        sel = slice(start, start + n_chan)
        whole = n_chan == ms_spw.chan_freq.size
        if cal_type == schema.CAL_TYPE_TSYS and whole:
            spw_freq = spw_width = None  # gencal keeps the MS row
        else:
            spw_freq, spw_width = ms_spw.chan_freq[sel], ms_spw.chan_width[sel]

    # per-solution metadata
    antenna_names = _names(ds[schema.ANTENNA_NAME].values)
    antenna_ids = _lookup("antenna", antenna_names, meta.antenna_names, where)
    if len(set(antenna_ids.tolist())) < n_ant:
        raise CaltableError(f"{where}: repeated antenna names {antenna_names}")

    def per_time(name: str, default: object) -> np.ndarray:
        if name not in ds.variables:
            return np.full(n_time, default)
        if ds[name].dims != (schema.TIME,):
            raise CaltableError(f"{where}: {name} must have dims (time,), not {ds[name].dims}")
        return np.asarray(ds[name].values)

    field_ids = _lookup("field", _names(per_time(schema.FIELD_NAME, "")), meta.field_names, where)
    refants = per_time(schema.REFERENCE_ANTENNA, "")
    if refants.dtype.kind in "iu":  # radflow.cal.gain: an index into antenna_name, -1: none
        if refants.size and (refants.min() < -1 or refants.max() >= n_ant):
            raise CaltableError(f"{where}: {schema.REFERENCE_ANTENNA} indices outside 0..{n_ant}")
        refants = np.array([antenna_names[i] if i >= 0 else "" for i in refants.tolist()])
    refant_ids = _lookup("reference antenna", _names(refants), meta.antenna_names, where)
    scans = per_time(schema.SCAN_NUMBER, -1).astype(np.int32)
    interval = per_time(schema.SOLUTION_INTERVAL, 0.0).astype(np.float64)
    # a solver's TIME_CENTROID (the solve-weighted mean time) is what CASA writes as TIME
    stamps = ds[schema.TIME_CENTROID] if schema.TIME_CENTROID in ds else ds[schema.TIME]
    mjd = np.asarray(stamps.values, dtype=np.float64) + schema.MJD_UNIX_OFFSET_S

    # rows: solutions in time order (stable), antennas in id order
    t_order = np.argsort(mjd, kind="stable")
    a_order = np.argsort(antenna_ids, kind="stable")

    def rows(arr: np.ndarray) -> np.ndarray:
        arr = arr[t_order][:, a_order]
        return np.ascontiguousarray(arr.reshape(n_time * n_ant, n_chan, n_rec))

    def per_solution(arr: np.ndarray) -> np.ndarray:
        return np.repeat(arr[t_order], n_ant)

    return _Block(
        spw=spw,
        cal_type=cal_type,
        time=per_solution(mjd),
        field_id=per_solution(field_ids),
        antenna1=np.tile(antenna_ids[a_order], n_time).astype(np.int32),
        antenna2=per_solution(refant_ids),
        interval=per_solution(interval),
        scan=per_solution(scans),
        param=rows(values),
        paramerr=rows(paramerr),
        flag=rows(flag),
        snr=rows(snr),
        weight=None if weight is None else rows(weight),
        spw_freq=spw_freq,
        spw_width=spw_width,
        basis=_basis_of(ds, receptors, where),
    )


def _channel_start(freq: np.ndarray, chan_freq: np.ndarray) -> int | None:
    """Index of the spw channel where the run of channels `freq` starts, or None."""
    if freq.size == 0 or freq.size > chan_freq.size:
        return None
    start = int(np.argmin(np.abs(chan_freq - freq[0])))
    run = chan_freq[start : start + freq.size]
    if run.size != freq.size:
        return None
    tol = 1e-9 * np.abs(chan_freq).max()  # ~100 Hz at 100 GHz, far below any channel width
    return start if np.all(np.abs(run - freq) <= tol) else None


def _main_desc(param_column: str) -> dict:
    def scalar(name: str, value: object, keywords: dict | None = None) -> dict:
        return ct.makescacoldesc(
            name, value, datamanagertype="StandardStMan",
            datamanagergroup=schema.CT_DM_GROUP, options=5, keywords=keywords or {},
        )  # fmt: skip

    def array(name: str, value: object, valuetype: str) -> dict:
        return ct.makearrcoldesc(
            name, value, ndim=-1, valuetype=valuetype, datamanagertype="StandardStMan",
            datamanagergroup=schema.CT_DM_GROUP,
        )  # fmt: skip

    seconds = {"QuantumUnits": ["s"]}
    cols = [
        scalar(schema.CT_TIME, 0.0, dict(seconds, MEASINFO={"type": "epoch", "Ref": "UTC"})),
        scalar(schema.CT_FIELD_ID, 0),
        scalar(schema.CT_SPECTRAL_WINDOW_ID, 0),
        scalar(schema.CT_ANTENNA1, 0),
        scalar(schema.CT_ANTENNA2, 0),
        scalar(schema.CT_INTERVAL, 0.0, seconds),
        scalar(schema.CT_SCAN_NUMBER, 0),
        scalar(schema.CT_OBSERVATION_ID, 0),
        array(param_column, 0.0, "complex" if param_column == schema.CT_CPARAM else "float"),
        array(schema.CT_PARAMERR, 0.0, "float"),
        array(schema.CT_FLAG, False, "boolean"),
        array(schema.CT_SNR, 0.0, "float"),
        array(schema.CT_WEIGHT, 0.0, "float"),
    ]
    return ct.maketabdesc(cols)


def _dminfo(columns: list[str]) -> dict:
    return {
        "*1": {
            "TYPE": "StandardStMan",
            "NAME": schema.CT_DM_GROUP,
            "COLUMNS": sorted(columns),
        }
    }


def _write_table(
    tmp: Path, blocks: list[_Block], cal_type: str, basis: str | None, ms_path: Path
) -> None:
    param_column = schema.CT_FPARAM if cal_type in _FLOAT_TYPES else schema.CT_CPARAM
    desc = _main_desc(param_column)
    columns = [c for c in desc if not c.startswith("_")]
    nrow = sum(b.nrow for b in blocks)
    vis_cal = schema.CT_VIS_CAL[cal_type]
    main = ct.table(str(tmp), desc, nrow=nrow, dminfo=_dminfo(columns), ack=False)
    try:
        main.putinfo({"type": schema.CT_TABLE_INFO_TYPE, "subType": vis_cal, "readme": ""})
        main.putkeyword(
            schema.CT_KW_PAR_TYPE,
            schema.CT_PAR_TYPE_FLOAT if param_column == schema.CT_FPARAM
            else schema.CT_PAR_TYPE_COMPLEX,
        )  # fmt: skip
        main.putkeyword(schema.CT_KW_MS_NAME, ms_path.resolve().name)
        main.putkeyword(schema.CT_KW_VIS_CAL, vis_cal)
        main.putkeyword(
            schema.CT_KW_POL_BASIS,
            schema.CT_POL_BASIS.get(basis or "", schema.CT_POL_BASIS_UNKNOWN),
        )
        main.putkeyword(schema.CT_KW_CASA_VERSION, f"radflow {__version__}")
        start = 0
        for b in blocks:
            n = b.nrow
            scalars = {
                schema.CT_TIME: b.time,
                schema.CT_FIELD_ID: b.field_id,
                schema.CT_SPECTRAL_WINDOW_ID: np.full(n, b.spw, dtype=np.int32),
                schema.CT_ANTENNA1: b.antenna1,
                schema.CT_ANTENNA2: b.antenna2,
                schema.CT_INTERVAL: b.interval,
                schema.CT_SCAN_NUMBER: b.scan,
                schema.CT_OBSERVATION_ID: np.zeros(n, dtype=np.int32),
            }
            arrays = {
                param_column: b.param,
                schema.CT_PARAMERR: b.paramerr,
                schema.CT_FLAG: b.flag,
                schema.CT_SNR: b.snr,
            }
            if b.weight is not None:
                arrays[schema.CT_WEIGHT] = b.weight
            for col, values in {**scalars, **arrays}.items():
                if n:
                    main.putcol(col, values, startrow=start, nrow=n)
            start += n
        for name in schema.CT_SUBTABLES:
            sub_path = tmp / name
            _write_subtable(sub_path, name, ms_path, blocks, cal_type)
            main.putkeyword(name, f"Table: {sub_path}")
        main.flush()
    finally:
        main.close()


def _subtable_desc(name: str) -> dict:
    desc = ct.required_ms_desc(name)
    for col, cdesc in desc.items():
        if not col.startswith("_"):
            cdesc["dataManagerType"] = "StandardStMan"
            cdesc["dataManagerGroup"] = schema.CT_DM_GROUP
    return desc


def _write_subtable(
    sub_path: Path, name: str, ms_path: Path, blocks: list[_Block], cal_type: str
) -> None:
    desc = _subtable_desc(name)
    columns = [c for c in desc if not c.startswith("_")]
    source = None
    nrow = 0
    if name != "HISTORY":  # CASA leaves the caltable's HISTORY empty
        source = ct.table(str(ms_path / name), readonly=True, ack=False)
        nrow = source.nrows()
    sub = ct.table(str(sub_path), desc, nrow=nrow, dminfo=_dminfo(columns), ack=False)
    try:
        if source is not None:
            _copy_rows(source, sub, columns)
        if name == "SPECTRAL_WINDOW":
            _revise_spectral_window(sub, blocks, cal_type)
        sub.flush()
    finally:
        sub.close()
        if source is not None:
            source.close()


def _copy_rows(source: ct.table, dest: ct.table, columns: list[str]) -> None:
    """TableCopy::copyRows: every cell of the columns both tables have (undefined stays so)."""
    have = set(source.colnames())
    for col in columns:
        if col not in have or source.nrows() == 0:
            continue
        try:
            if source.isvarcol(col):
                raise RuntimeError("variable-shaped")
            dest.putcol(col, source.getcol(col))
        except RuntimeError:
            for row in range(source.nrows()):
                if source.iscelldefined(col, row):
                    dest.putcell(col, row, source.getcell(col, row))


def _put_channels(
    sub: ct.table, row: int, freq: np.ndarray, width: np.ndarray, resolution: np.ndarray,
    total: float,
) -> None:  # fmt: skip
    sub.putcell("NUM_CHAN", row, int(freq.size))
    sub.putcell("CHAN_FREQ", row, np.asarray(freq, dtype=np.float64))
    sub.putcell("CHAN_WIDTH", row, np.asarray(width, dtype=np.float64))
    sub.putcell("EFFECTIVE_BW", row, np.asarray(width, dtype=np.float64))
    sub.putcell("RESOLUTION", row, np.asarray(resolution, dtype=np.float64))
    sub.putcell("TOTAL_BANDWIDTH", row, float(total))


def _revise_spectral_window(sub: ct.table, blocks: list[_Block], cal_type: str) -> None:
    """What CASA 6.7 does to the copied SPECTRAL_WINDOW rows (see the module docstring)."""
    n = sub.nrows()
    if cal_type in _SINGLE_CHANNEL:  # NewCalTable::makeSpwSingleChan
        for row in range(n):
            if int(sub.getcell("NUM_CHAN", row)) > 1:
                freq = np.asarray(sub.getcell("CHAN_FREQ", row), dtype=np.float64)
                total = np.array([float(sub.getcell("TOTAL_BANDWIDTH", row))])
                _put_channels(sub, row, np.array([freq.mean()]), total, total, total[0])
    for b in blocks:  # NewCalTable::setSpwFreqs, as CASA 6.7 fills it
        if b.spw_freq is not None:
            _put_channels(sub, b.spw, b.spw_freq, b.spw_width, b.spw_freq, b.spw_freq.sum())
    solved = {b.spw for b in blocks if b.nrow}
    sub.putcol("FLAG_ROW", np.array([row not in solved for row in range(n)]))


# ---------------------------------------------------------------------------------------------
# reading


def _unique_names(names: list[str], suffixes: list[str]) -> list[str]:
    """radflow's naming of repeated names (see converters.subtables): NAME_suffix."""
    if len(set(names)) < len(names):
        return [f"{n}_{s}" for n, s in zip(names, suffixes, strict=True)]
    return names


def _read_column(t: ct.table, col: str, rows: np.ndarray) -> np.ndarray:
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        return t.getcol(col, startrow=int(rows[0]), nrow=int(rows.size))
    ref = t.selectrows(rows.tolist())
    try:
        return ref.getcol(col)
    finally:
        ref.close()


def _polarization_basis(keyword: str, telescope: str, override: str | None, path: Path) -> str:
    if override is not None:
        if override not in _RECEPTORS:
            raise CaltableError(
                f"polarization_basis must be 'linear' or 'circular', not {override!r}"
            )
        return override
    word = keyword.strip().lower()
    if word.startswith("lin"):
        return "linear"
    if word.startswith("circ"):
        return "circular"
    basis = _TELESCOPE_BASIS.get(telescope.strip().upper())
    if basis is None:
        raise CaltableError(
            f"{path}: PolBasis is {keyword!r} and the telescope {telescope!r} is not one radflow "
            "knows: pass polarization_basis='linear' or 'circular'"
        )
    return basis


def read_caltable(
    path: PathLike, *, polarization_basis: str | None = None
) -> dict[int, xr.Dataset]:
    """Read a CASA caltable (NewCalTable layout) as radflow solution datasets.

    Reads tables radflow wrote and tables CASA wrote with ``gaincal`` (G, T, K), ``bandpass``
    (B; not BPOLY) and ``gencal(caltype='tsys')``. Solutions are the distinct (TIME, FIELD_ID,
    SCAN_NUMBER, OBSERVATION_ID) of each spw, in table order (CASA's: time); antennas the
    distinct ANTENNA1 of the spw, in id order; an antenna without a row in a solution is
    flagged (parameter 1, or 0 for delays; error and SNR 0). Unused antenna slots (an empty
    NAME or FLAG_ROW set in the ANTENNA table, as in VLA MSs) whose rows are all flagged are
    left out. The reference antenna of a solution is the ANTENNA2 of its first row (CASA writes
    one per solution).

    Parameters
    ----------
    path
        The caltable directory.
    polarization_basis
        ``"linear"`` (receptors X, Y) or ``"circular"`` (R, L). Default: from the PolBasis
        keyword, else (CASA's solvers write ``unknown``) from the telescope name.

    Returns
    -------
    dict
        Spectral window id -> dataset with dims ``(time, antenna_name, frequency, receptor)``
        (see ``schema.py``): ``CALIBRATION_PARAMETER`` (complex64 for G/T/B; float32 Tsys in K,
        delays in ns for K), ``PARAMETER_ERROR``, ``SNR``, ``FLAG``, ``WEIGHT`` (when every cell
        is defined), ``REFERENCE_ANTENNA(time)`` ('' for none), ``SOLUTION_INTERVAL(time)`` (s);
        coordinates ``field_name(time)`` ('' for none), ``scan_number(time)``; time in unix
        seconds; frequency (Hz) from the caltable's SPECTRAL_WINDOW.

    Raises
    ------
    CaltableError
        Not a caltable, an old-format (BPOLY/GSPLINE) or unsupported VisCal type, or an unknown
        polarization basis.
    """
    path = Path(path)
    if not (path / "table.dat").exists():
        raise CaltableError(f"{path}: not a CASA table (no table.dat)")
    with CASACORE_LOCK:
        t = ct.table(str(path), readonly=True, ack=False)
        try:
            return _read(t, path, polarization_basis)
        finally:
            t.close()


def _read_subtable_columns(path: Path, name: str, columns: list[str]) -> dict[str, list]:
    sub_path = path / name
    if not (sub_path / "table.dat").exists():
        raise CaltableError(f"{path}: the caltable has no {name} subtable")
    with ct.table(str(sub_path), readonly=True, ack=False) as sub:
        out: dict[str, list] = {"__nrows__": [sub.nrows()]}
        for col in columns:
            if col in sub.colnames():
                out[col] = [
                    sub.getcell(col, r) if sub.iscelldefined(col, r) else None
                    for r in range(sub.nrows())
                ]
    return out


def _read(t: ct.table, path: Path, basis_override: str | None) -> dict[int, xr.Dataset]:
    info = t.info()
    keywords = t.getkeywords()
    vis_cal = str(keywords.get(schema.CT_KW_VIS_CAL) or info.get("subType", ""))
    if info.get("type") != schema.CT_TABLE_INFO_TYPE and schema.CT_KW_VIS_CAL not in keywords:
        raise CaltableError(f"{path}: not a CASA caltable (table type {info.get('type')!r})")
    colnames = t.colnames()
    if schema.CT_SPECTRAL_WINDOW_ID not in colnames:
        raise CaltableError(
            f"{path}: a {vis_cal or 'pre-4.1'} caltable in CASA's old CalTable layout (no "
            f"{schema.CT_SPECTRAL_WINDOW_ID} column; CASA still writes BPOLY and GSPLINE this "
            "way): not supported"
        )
    cal_type = _VIS_CAL_TYPES.get(vis_cal)
    if cal_type is None:
        raise CaltableError(
            f"{path}: VisCal {vis_cal!r} is not supported (supported: {sorted(_VIS_CAL_TYPES)})"
        )
    param_column = schema.CT_CPARAM if schema.CT_CPARAM in colnames else schema.CT_FPARAM
    if param_column not in colnames:
        raise CaltableError(f"{path}: neither CPARAM nor FPARAM in the main table")

    ant = _read_subtable_columns(path, "ANTENNA", ["NAME", "STATION", "FLAG_ROW"])
    raw_names = [str(n or "") for n in ant.get("NAME", [])]
    antenna_names = _unique_names(raw_names, [str(s or "") for s in ant.get("STATION", [])])
    antenna_unused = [
        not name or bool(flagged)
        for name, flagged in zip(raw_names, ant.get("FLAG_ROW", [False] * len(raw_names)),
                                 strict=True)
    ]  # fmt: skip
    fld = _read_subtable_columns(path, "FIELD", ["NAME"])
    field_names = [str(n) for n in fld.get("NAME", [])]
    field_names = _unique_names(field_names, [str(i) for i in range(len(field_names))])
    spw_t = _read_subtable_columns(path, "SPECTRAL_WINDOW", ["CHAN_FREQ", "NAME", "MEAS_FREQ_REF"])
    telescope = ""
    if (path / "OBSERVATION" / "table.dat").exists():
        obs = _read_subtable_columns(path, "OBSERVATION", ["TELESCOPE_NAME"])
        telescope = str((obs.get("TELESCOPE_NAME") or [""])[0] or "")
    basis = _polarization_basis(
        str(keywords.get(schema.CT_KW_POL_BASIS, "")), telescope, basis_override, path
    )

    scalars = {c: np.asarray(t.getcol(c)) for c in schema.CT_MAIN_COLUMNS if c in colnames}
    nrow = t.nrows()
    for col in schema.CT_MAIN_COLUMNS:
        if col not in scalars:  # OBSERVATION_ID is absent from pre-4.1 tables
            scalars[col] = np.zeros(nrow, dtype=np.int32)
    ms_name = str(keywords.get(schema.CT_KW_MS_NAME, ""))
    out: dict[int, xr.Dataset] = {}
    spw_column = scalars[schema.CT_SPECTRAL_WINDOW_ID]
    for spw in np.unique(spw_column).tolist():
        rows = np.flatnonzero(spw_column == spw)
        out[int(spw)] = _read_spw(
            t, path, int(spw), rows, scalars, param_column, cal_type, basis,
            antenna_names, antenna_unused, field_names, spw_t, ms_name,
        )  # fmt: skip
    return out


def _read_spw(
    t: ct.table,
    path: Path,
    spw: int,
    rows: np.ndarray,
    scalars: dict[str, np.ndarray],
    param_column: str,
    cal_type: str,
    basis: str,
    antenna_names: list[str],
    antenna_unused: list[bool],
    field_names: list[str],
    spw_t: dict[str, list],
    ms_name: str,
) -> xr.Dataset:
    where = f"{path}: spw {spw}"
    col = {c: v[rows] for c, v in scalars.items()}
    param = np.asarray(_read_column(t, param_column, rows))
    if param.ndim != 3:
        raise CaltableError(f"{where}: {param_column} cells are not [npar, nchan] matrices")
    n_chan, n_par = param.shape[1:]
    errors = np.asarray(_read_column(t, schema.CT_PARAMERR, rows), dtype=np.float32)
    snr = np.asarray(_read_column(t, schema.CT_SNR, rows), dtype=np.float32)
    flag = np.asarray(_read_column(t, schema.CT_FLAG, rows), dtype=bool)
    weight = None
    if schema.CT_WEIGHT in t.colnames():
        try:
            weight = np.asarray(_read_column(t, schema.CT_WEIGHT, rows), dtype=np.float32)
        except RuntimeError:  # undefined cells: CASA does not fill WEIGHT
            weight = None

    # solutions: distinct (time, field, scan, observation) in table order
    keys = np.rec.fromarrays(
        [col[schema.CT_TIME], col[schema.CT_FIELD_ID], col[schema.CT_SCAN_NUMBER],
         col[schema.CT_OBSERVATION_ID]],
        names="t,f,s,o",
    )  # fmt: skip
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # unique-key index -> solution index
    solution = np.empty_like(order)
    solution[order] = np.arange(order.size)
    sol = solution[inverse.ravel()]
    sol_first = first[order]  # first row of each solution
    n_sol = order.size

    # Unused antenna slots (an empty NAME or FLAG_ROW set, e.g. the VLA's) get flagged rows
    # from CASA: drop them when every one of their rows is flagged.
    a1 = col[schema.CT_ANTENNA1]
    if a1.min() < 0 or a1.max() >= len(antenna_names):
        raise CaltableError(f"{where}: ANTENNA1 ids outside the ANTENNA table")
    all_flagged = flag.reshape(rows.size, -1).all(axis=1)
    drop = np.zeros(a1.size, dtype=bool)
    for a in np.unique(a1).tolist():
        mine = a1 == a
        if antenna_unused[a] and all_flagged[mine].all():
            drop |= mine
    if drop.any():
        keep = ~drop
        a1, sol, param, errors, snr, flag = (x[keep] for x in (a1, sol, param, errors, snr, flag))
        weight = None if weight is None else weight[keep]
    ant_ids, ant = np.unique(a1, return_inverse=True)
    ant = ant.ravel()
    if np.unique(sol * ant_ids.size + ant).size != sol.size:
        raise CaltableError(f"{where}: more than one row for an (antenna, solution)")
    n_ant = ant_ids.size

    def scatter(values: np.ndarray, fill: object, dtype: type) -> np.ndarray:
        out = np.full((n_sol, n_ant, n_chan, n_par), fill, dtype=dtype)
        out[sol, ant] = values
        return out

    is_complex = param_column == schema.CT_CPARAM
    param_dtype = np.complex64 if is_complex else np.float32
    fill = _PARAM_FILL[is_complex] if cal_type != schema.CAL_TYPE_K else 0.0
    values = scatter(param.astype(param_dtype), fill, param_dtype)

    refant = col[schema.CT_ANTENNA2][sol_first]  # CASA writes one refant per solution
    refant_names = [
        antenna_names[r] if 0 <= r < len(antenna_names) else "" for r in refant.tolist()
    ]
    field_ids = col[schema.CT_FIELD_ID][sol_first]
    fields = [field_names[f] if 0 <= f < len(field_names) else "" for f in field_ids.tolist()]

    # frequency axis from the caltable's SPECTRAL_WINDOW
    if spw >= int(spw_t["__nrows__"][0]):
        raise CaltableError(f"{where}: no SPECTRAL_WINDOW row for spw {spw}")
    freq = np.atleast_1d(np.asarray(spw_t["CHAN_FREQ"][spw], dtype=np.float64))
    if freq.size != n_chan:
        raise CaltableError(
            f"{where}: {param_column} has {n_chan} channels, SPECTRAL_WINDOW {freq.size}"
        )
    frame = schema.FREQ_FRAMES.get(int(spw_t["MEAS_FREQ_REF"][spw] or 0), "Undefined")
    spw_name = str(spw_t["NAME"][spw] or f"spw_{spw}")

    letters = _RECEPTORS[basis]
    if cal_type == schema.CAL_TYPE_T and n_par == 1:
        receptors = ["".join(letters)]
    elif n_par <= 2:
        receptors = list(letters[:n_par])
    else:
        raise CaltableError(f"{where}: {n_par} parameters per channel; radflow reads 1 or 2")

    units = _UNITS.get(cal_type, "")  # gains and bandpasses: "" as radflow.cal.gain
    data_vars = {
        schema.CALIBRATION_PARAMETER: (SOLUTION_DIMS, values, {schema.ATTR_UNITS: units}),
        schema.PARAMETER_ERROR: (
            SOLUTION_DIMS, scatter(errors, 0.0, np.float32), {schema.ATTR_UNITS: units}
        ),
        schema.SNR: (SOLUTION_DIMS, scatter(snr, 0.0, np.float32)),
        schema.FLAG: (SOLUTION_DIMS, scatter(flag, True, bool)),
        schema.REFERENCE_ANTENNA: ((schema.TIME,), np.array(refant_names, dtype=str)),
        schema.SOLUTION_INTERVAL: (
            (schema.TIME,), col[schema.CT_INTERVAL][sol_first].astype(np.float64),
            {schema.ATTR_UNITS: "s"},
        ),
    }  # fmt: skip
    if weight is not None:
        data_vars[schema.WEIGHT] = (SOLUTION_DIMS, scatter(weight, 0.0, np.float32))
    unix = col[schema.CT_TIME][sol_first].astype(np.float64) - schema.MJD_UNIX_OFFSET_S
    coords = {
        schema.TIME: ((schema.TIME,), unix, dict(_TIME_ATTRS)),
        schema.ANTENNA_NAME: np.array([antenna_names[i] for i in ant_ids.tolist()], dtype=str),
        schema.FREQUENCY: (
            (schema.FREQUENCY,), freq,
            {"type": "spectral_coord", "units": "Hz", schema.ATTR_OBSERVER: frame,
             schema.ATTR_SPECTRAL_WINDOW_NAME: spw_name},
        ),
        schema.RECEPTOR: np.array(receptors, dtype=str),
        schema.FIELD_NAME: ((schema.TIME,), np.array(fields, dtype=str)),
        schema.SCAN_NUMBER: ((schema.TIME,), col[schema.CT_SCAN_NUMBER][sol_first].astype(int)),
    }  # fmt: skip
    attrs = {
        schema.ATTR_TYPE: schema.TYPE_CALIBRATION_SOLUTION,
        schema.ATTR_CAL_TYPE: cal_type,
        schema.ATTR_SPW_ID: spw,
        schema.ATTR_SPECTRAL_WINDOW_NAME: spw_name,
        schema.ATTR_MS_NAME: ms_name,
        schema.ATTR_POL_BASIS: basis,
        schema.ATTR_FIELDS: list(dict.fromkeys(f for f in fields if f)),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
