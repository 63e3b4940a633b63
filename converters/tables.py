"""Thread-safe, cached access to CASA tables with python-casacore.

python-casacore is not thread-safe, and Dask runs read tasks on a thread pool: every casacore
call goes through :data:`CASACORE_LOCK`. Opening a table costs milliseconds, so read-only
handles are cached per process and per path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from casacore import tables as ct

CASACORE_LOCK = threading.RLock()
_READ_CACHE: dict[str, ct.table] = {}

# Reading a covering span and discarding the rows we do not need beats a reference table
# (selectrows) while at least this fraction of the span is wanted.
_SPAN_DENSITY = 0.3


class MSError(ValueError):
    """An input MeasurementSet is missing, malformed or inconsistent."""


def open_ms(path: str | os.PathLike) -> ct.table:
    """A cached read-only handle on the main table of `path`, validated as an MS."""
    key = os.path.abspath(path)
    with CASACORE_LOCK:
        if key in _READ_CACHE:
            return _READ_CACHE[key]
        p = Path(path)
        if not p.exists():
            raise MSError(f"{p}: no such file or directory")
        if not (p / "table.dat").exists():
            raise MSError(f"{p}: not a CASA table (no table.dat), so not a MeasurementSet")
        try:
            t = ct.table(key, readonly=True, ack=False, lockoptions="autonoread")
        except RuntimeError as exc:
            raise MSError(f"{p}: cannot be opened as a CASA table: {exc}") from exc
        missing = [
            c for c in ("TIME", "ANTENNA1", "ANTENNA2", "DATA_DESC_ID") if c not in t.colnames()
        ]
        if missing:
            t.close()
            raise MSError(f"{p}: not a MeasurementSet (main table lacks {', '.join(missing)})")
        _READ_CACHE[key] = t
        return t


def close_cached(path: str | os.PathLike | None = None) -> None:
    """Close cached handles (all, or those of `path`) so the MS can be written or removed."""
    with CASACORE_LOCK:
        keys = list(_READ_CACHE) if path is None else [os.path.abspath(path)]
        for key in keys:
            t = _READ_CACHE.pop(key, None)
            if t is not None:
                t.close()


def has_subtable(ms_path: str | os.PathLike, name: str) -> bool:
    """Whether the MS declares subtable `name` (a main-table keyword) and it exists on disk."""
    t = open_ms(ms_path)
    with CASACORE_LOCK:
        declared = name in t.getkeywords()
    return declared and (Path(ms_path) / name / "table.dat").exists()


def read_subtable(
    ms_path: str | os.PathLike, name: str, columns: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Read whole columns of subtable `name` (small tables only). Treat the result as read-only:
    it is cached, because every partition of an MS asks for the same subtables.

    Raises :class:`MSError` naming the MS and the subtable when it is absent or unreadable.
    Columns whose cells are undefined, or ragged, come back as lists.
    """
    if not has_subtable(ms_path, name):
        raise MSError(f"{ms_path}: required subtable {name} is missing")
    path = os.path.join(os.path.abspath(ms_path), name)
    mtime = os.path.getmtime(os.path.join(path, "table.dat"))
    return _read_subtable_cached(path, mtime, None if columns is None else tuple(columns))


@lru_cache(maxsize=64)
def _read_subtable_cached(
    path: str, _mtime: float, columns: tuple[str, ...] | None
) -> dict[str, np.ndarray]:
    ms_path, name = os.path.split(path)
    with CASACORE_LOCK:
        try:
            sub = ct.table(path, readonly=True, ack=False)
        except RuntimeError as exc:
            raise MSError(f"{ms_path}: subtable {name} is corrupt: {exc}") from exc
        try:
            wanted = (
                sub.colnames() if columns is None else [c for c in columns if c in sub.colnames()]
            )
            out: dict[str, np.ndarray] = {}
            for col in wanted:
                out[col] = _read_whole_column(sub, col)
            out["__nrows__"] = np.array(sub.nrows())
            out["__units__"] = {c: sub.getcolkeywords(c).get("QuantumUnits") for c in wanted}
            out["__measinfo__"] = {c: sub.getcolkeywords(c).get("MEASINFO") for c in wanted}
        except RuntimeError as exc:
            raise MSError(f"{ms_path}: subtable {name} is corrupt: {exc}") from exc
        finally:
            sub.close()
    return out


def _read_whole_column(t: ct.table, col: str) -> np.ndarray | list:
    if t.nrows() == 0:
        return np.array([])
    if t.isvarcol(col) or not all(t.iscelldefined(col, r) for r in range(t.nrows())):
        return [t.getcell(col, r) if t.iscelldefined(col, r) else None for r in range(t.nrows())]
    return t.getcol(col)


def column_keywords(ms_path: str | os.PathLike, column: str) -> dict:
    t = open_ms(ms_path)
    with CASACORE_LOCK:
        return t.getcolkeywords(column)


# casacore value types -> the numpy dtype python-casacore reads them as.
_NUMPY_DTYPES = {
    "boolean": np.dtype(bool),
    "uchar": np.dtype(np.uint8),
    "short": np.dtype(np.int16),
    "int": np.dtype(np.int32),
    "uint": np.dtype(np.uint32),
    "int64": np.dtype(np.int64),
    "float": np.dtype(np.float32),
    "double": np.dtype(np.float64),
    "complex": np.dtype(np.complex64),
    "dcomplex": np.dtype(np.complex128),
}


def column_dtype(ms_path: str | os.PathLike, column: str) -> np.dtype:
    """The numpy dtype python-casacore reads main-table `column` as."""
    t = open_ms(ms_path)
    with CASACORE_LOCK:
        return _NUMPY_DTYPES[t.coldatatype(column)]


def read_rows(
    ms_path: str | os.PathLike,
    column: str,
    rows: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Values of `column` at the sorted row numbers `rows`, reading as few cells as possible.

    Contiguous rows are one read; rows that fill a large part of their span are read as the
    span and subset; sparse rows go through a reference table.

    out
        A C-contiguous array of shape ``(len(rows),) + cell shape`` to read into (returned).
        casacore then writes straight into it, which saves a copy and an allocation per read;
        a dtype other than the column's is converted as ``astype`` would.
    """
    t = open_ms(ms_path)
    first, last = int(rows[0]), int(rows[-1])
    span = last - first + 1
    with CASACORE_LOCK:
        if out is not None and (
            column_dtype(ms_path, column) != out.dtype or not out.flags.c_contiguous
        ):
            # casacore's own conversions are not guaranteed to round as numpy does.
            np.copyto(out, read_rows(ms_path, column, rows), casting="same_kind")
            return out
        if span == len(rows):
            if out is None:
                return t.getcol(column, startrow=first, nrow=span)
            t.getcolnp(column, out, startrow=first, nrow=span)
            return out
        if len(rows) >= _SPAN_DENSITY * span:
            return np.take(t.getcol(column, startrow=first, nrow=span), rows - first, 0, out)
        ref = t.selectrows(rows.tolist())
        try:
            if out is None:
                return ref.getcol(column)
            ref.getcolnp(column, out)
            return out
        finally:
            ref.close()
