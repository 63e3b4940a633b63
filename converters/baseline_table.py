"""Write the baseline step's per-spectrum results as CASA ``sdbaseline``-style csv and text files.

CASA's ``blout`` with ``blformat='csv'`` writes one row per spectrum (scan, beam, spw, pol, time,
fit range, function, order/npiece, coefficients, rms, clipping); ``blformat='text'`` writes a
human-readable block per spectrum. radflow mimics both from the results dataset of
:func:`radflow.cal.baseline.subtract` (``schema.TYPE_BASELINE_TABLE``).

csv, one row per spectrum, columns in this order::

    scan, antenna, spw, pol, time, fit_range, function, order, c_0 .. c_(n-1), rms,
    clipthresh, clipniter, nclipped

Deviations from CASA, all deliberate:

- A first line starting with ``#`` names the columns (CASA writes no header); readers skip it.
- ``antenna`` (the antenna name) replaces CASA's beam number: radflow partitions hold one antenna
  and have no feed/beam index.
- ``pol`` is the polarization index within the partition (as CASA); the text format also names
  it (e.g. ``XX``).
- ``time`` is the MS epoch (MJD seconds, UTC) of the integration, written with ``repr``.
- ``fit_range`` lists the channel ranges of the final fit mask (after flags, edge, line finder and
  clipping) in CASA spw syntax ``start~end;start~end``.
- ``order`` holds the order (poly, chebyshev), npiece (cspline) or, for sinusoid, the fitted wave
  numbers joined by ``;``.
- Coefficients are written with ``repr`` (exact round trip). Their count varies with the function
  (order+1, 4*npiece, or 1/2 per fitted wave number; NaN slots of unfitted sinusoid wave numbers
  are left out), so a reader takes everything between ``order`` and the last four columns. The
  cspline coefficients are per-piece cubics in ``u = i/(N-1)``, not in channel index.
- A spectrum whose fit failed (e.g. fully flagged) has ``nan`` rms and coefficients and an empty
  fit range.

Files are written atomically (:func:`radflow.store.open_text_atomic`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from radflow import schema
from radflow.store import location, open_text_atomic

CSV_COLUMNS_HEAD = ("scan", "antenna", "spw", "pol", "time", "fit_range", "function", "order")
CSV_COLUMNS_TAIL = ("rms", "clipthresh", "clipniter", "nclipped")
_SEPARATOR = "-" * 60

FORMAT_SUFFIXES = {"csv": ".csv", "text": ".txt"}


def _ranges(masks: np.ndarray) -> list[list[tuple[int, int]]]:
    """Per spectrum (rows of `masks`, spectra x channels), the inclusive (start, end) channel
    runs where the mask is True; one pass over all spectra (a table has thousands)."""
    n_rows, n_chan = masks.shape
    padded = np.zeros((n_rows, n_chan + 2), dtype=np.int8)
    padded[:, 1:-1] = masks
    step = np.diff(padded, axis=1)
    start_row, starts = np.nonzero(step == 1)
    ends = np.nonzero(step == -1)[1] - 1  # same row order: every run that starts also ends
    bounds = np.cumsum(np.bincount(start_row, minlength=n_rows))[:-1]
    pairs = list(zip(starts.tolist(), ends.tolist(), strict=True))
    cuts = [0, *bounds.tolist(), len(pairs)]
    return [pairs[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def _scans(table: xr.Dataset) -> list[str]:
    n_time = table.sizes[schema.TIME]
    if schema.SCAN_NAME in table.coords and table[schema.SCAN_NAME].dims == (schema.TIME,):
        return [str(s) for s in np.asarray(table[schema.SCAN_NAME].values)]
    info = table.attrs.get(schema.ATTR_PARTITION_INFO) or {}
    scan = info.get(schema.PI_SCAN, "")
    scan = ",".join(map(str, scan)) if isinstance(scan, list | tuple) else str(scan)
    return [scan] * n_time


def _rows(table: xr.Dataset) -> list[dict[str, Any]]:
    """One dict per spectrum, in (time, antenna, pol) order, from a computed table."""
    if table.attrs.get(schema.ATTR_TYPE) != schema.TYPE_BASELINE_TABLE:
        raise ValueError(
            f"expected a {schema.TYPE_BASELINE_TABLE!r} dataset, got type "
            f"{table.attrs.get(schema.ATTR_TYPE)!r}"
        )
    table = table.compute()
    attrs = table.attrs
    info = attrs.get(schema.ATTR_PARTITION_INFO) or {}
    blfunc = attrs[schema.BL_ATTR_BLFUNC]
    labels = [str(c) for c in table[schema.COEFFICIENT].values]
    spectrum_dims = (schema.TIME, schema.ANTENNA_NAME, schema.POLARIZATION)
    coef = table[schema.BL_COEFFICIENTS].transpose(*spectrum_dims, schema.COEFFICIENT).values
    rms = table[schema.BL_RMS].transpose(*spectrum_dims).values
    nclip = table[schema.BL_N_CLIPPED].transpose(*spectrum_dims).values
    mask = table[schema.BL_FIT_MASK].transpose(*spectrum_dims, schema.FREQUENCY).values
    times = np.asarray(table[schema.TIME].values, dtype=float)
    antennas = [str(a) for a in table[schema.ANTENNA_NAME].values]
    pols = [str(p) for p in table[schema.POLARIZATION].values]
    scans = _scans(table)
    ranges = _ranges(mask.reshape(-1, mask.shape[-1]))
    rows = []
    for k, (t, a, p) in enumerate(np.ndindex(*rms.shape)):
        values = coef[t, a, p]
        if blfunc == schema.BL_SINUSOID:
            keep = ~np.isnan(values)
            used = [lab for lab, k in zip(labels, keep, strict=True) if k]
            order = ";".join(sorted({"0" if lab == "a0" else lab[1:] for lab in used}, key=int))
            names, values = used, values[keep]
        elif blfunc == schema.BL_CSPLINE:
            names, order = labels, str(attrs[schema.BL_ATTR_NPIECE])
        else:
            names, order = labels, str(attrs[schema.BL_ATTR_ORDER])
        rows.append(
            {
                "scan": scans[t],
                "antenna": antennas[a],
                "spw": info.get(schema.PI_SPW_ID, info.get(schema.PI_SPW_NAME, "")),
                "pol": p,
                "pol_name": pols[p],
                "time_unix": float(times[t]),
                "time_mjd_s": float(times[t]) + schema.MJD_UNIX_OFFSET_S,
                "ranges": ranges[k],
                "function": blfunc,
                "order": order,
                "names": names,
                "coefficients": [float(v) for v in values],
                "rms": float(rms[t, a, p]),
                "clipthresh": float(attrs[schema.BL_ATTR_CLIPTHRESH]),
                "clipniter": int(attrs[schema.BL_ATTR_CLIPNITER]),
                "nclipped": int(nclip[t, a, p]),
                "units": attrs.get(schema.ATTR_UNITS, ""),
            }
        )
    return rows


def _csv_header() -> str:
    return "# " + ",".join([*CSV_COLUMNS_HEAD, "coefficients...", *CSV_COLUMNS_TAIL]) + "\n"


def _csv_body(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow(
            [
                row["scan"],
                row["antenna"],
                row["spw"],
                row["pol"],
                repr(row["time_mjd_s"]),
                ";".join(f"{s}~{e}" for s, e in row["ranges"]),
                row["function"],
                row["order"],
                *(repr(v) for v in row["coefficients"]),
                repr(row["rms"]),
                repr(row["clipthresh"]),
                row["clipniter"],
                row["nclipped"],
            ]
        )
    return buffer.getvalue()


def format_csv(table: xr.Dataset) -> str:
    """The results of one partition as CASA-like csv text (header comment + one row/spectrum).

    Computes `table` if it is dask-backed. Coefficients and rms are in the table's units.
    """
    return _csv_header() + _csv_body(_rows(table))


def _utc(unix_s: float) -> str:
    stamp = datetime.fromtimestamp(unix_s, UTC)
    return stamp.strftime("%Y/%m/%d/%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.9g}"


def format_text(table: xr.Dataset) -> str:
    """The results of one partition as CASA-like text blocks, one per spectrum.

    Each block: ``Scan[..] Beam[antenna] Spw[..] Pol[index] (name) Time[UTC]``, the fit ranges,
    the function with its order/npiece/wave numbers and clipping parameters, the coefficients
    (``name = value``), the rms (in the table's units) and the number of clipped channels.
    """
    return _text_body(_rows(table))


def _text_body(rows: list[dict[str, Any]]) -> str:
    out = []
    for row in rows:
        what = {
            schema.BL_POLY: "Order",
            schema.BL_CHEBYSHEV: "Order",
            schema.BL_CSPLINE: "nPiece",
        }.get(row["function"], "Wave numbers")
        ranges = ", ".join(f"[{s}, {e}]" for s, e in row["ranges"])
        coefs = "  ".join(
            f"{n} = {_fmt(v)}" for n, v in zip(row["names"], row["coefficients"], strict=True)
        )
        out.append(
            f"Scan[{row['scan']}] Beam[{row['antenna']}] Spw[{row['spw']}] "
            f"Pol[{row['pol']}] ({row['pol_name']}) Time[{_utc(row['time_unix'])}]\n"
            f"Fitter range = [{ranges}]\n\n"
            f"Baseline parameters  Function = {row['function']}  {what} = {row['order']}  "
            f"clipThreshold = {row['clipthresh']:g}  clipNIteration = {row['clipniter']}\n\n"
            f"Results of baseline fit\n"
            f"  {coefs}\n\n"
            f"  rms = {_fmt(row['rms'])} {row['units']}\n"
            f"  nClipped = {row['nclipped']}\n\n"
            f"{_SEPARATOR}\n"
        )
    return "".join(out)


def write_baseline_tables(
    tables: Iterable[xr.Dataset], stem: Path, formats: Sequence[str] = ("csv", "text")
) -> list[Path]:
    """Write the baseline results of several partitions to ``stem.csv``/``stem.txt``.

    Parameters
    ----------
    tables : iterable of xr.Dataset
        Results datasets of :func:`radflow.cal.baseline.subtract` (lazy or computed), taken and
        written one at a time: give a generator that loads each when asked, and memory holds
        one partition's results whatever the size of the EB.
    stem : Path
        Output path without suffix (local, or an object-store URL); its directory must exist.
    formats : sequence of str
        ``"csv"`` and/or ``"text"``.

    Returns
    -------
    list of Path
        The files written, in the order of `formats`. Each appears (or is replaced) only once
        complete (:func:`radflow.store.open_text_atomic`).
    """
    unknown = [f for f in formats if f not in FORMAT_SUFFIXES]
    if unknown:
        raise ValueError(f"unknown baseline table format(s) {unknown}; use 'csv' or 'text'")
    stem = location(stem)
    paths = [stem.with_name(stem.name + FORMAT_SUFFIXES[fmt]) for fmt in formats]
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open_text_atomic(path)) for path in paths]
        for fmt, handle in zip(formats, handles, strict=True):
            if fmt == "csv":
                handle.write(_csv_header())
        for table in tables:
            rows = _rows(table)
            for fmt, handle in zip(formats, handles, strict=True):
                handle.write(_csv_body(rows) if fmt == "csv" else _text_body(rows))
    return paths
