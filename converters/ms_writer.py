"""Create MeasurementSets (MSv2) from numpy arrays.

The simulators in :mod:`radflow.testing` and the tests that need deliberately broken MSs write
their tables through this module, so that python-casacore stays inside ``converters/``.

Column descriptions come from casacore's MS definition (``complete_ms_desc``) where the MS
standard defines the column, so units and measure keywords are the standard ones; columns the
standard does not know (the VLA's SYSPOWER and CALDEVICE tables) are described from the arrays.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import numpy as np
from casacore import tables as ct

# Data columns are tiled with whole rows of (npol, nchan) cells; ~1 MiB tiles.
_TILED_COLUMNS = (
    "DATA",
    "FLOAT_DATA",
    "CORRECTED_DATA",
    "MODEL_DATA",
    "FLAG",
    "WEIGHT_SPECTRUM",
    "SIGMA_SPECTRUM",
)

# Columns of subtables the MS standard does not define (VLA switched power).
_CUSTOM_SUBTABLE_UNITS = {
    "SYSPOWER": {"TIME": "s", "INTERVAL": "s"},
    "CALDEVICE": {"TIME": "s", "INTERVAL": "s", "NOISE_CAL": "K", "TEMPERATURE_LOAD": "K"},
}


_CASA_VALUE_TYPES = {
    ("b", 1): "boolean",
    ("i", 4): "int",
    ("i", 8): "int",
    ("f", 4): "float",
    ("f", 8): "double",
    ("c", 8): "complex",
    ("c", 16): "dcomplex",
}


def _column_desc_from_array(name: str, values: np.ndarray) -> dict:
    """A casacore column description for `values` (first axis = rows)."""
    if values.dtype.kind in "US":
        valuetype, sample = "string", ""
    else:
        valuetype = _CASA_VALUE_TYPES[(values.dtype.kind, values.dtype.itemsize)]
        sample = values.dtype.type().item()
    if values.ndim == 1:
        return ct.makescacoldesc(name, sample, valuetype=valuetype)
    return ct.makearrcoldesc(name, sample, ndim=values.ndim - 1, valuetype=valuetype)


def _standard_desc(table_name: str, columns: Mapping[str, np.ndarray]) -> dict:
    """The standard description for `table_name`, restricted to its required columns plus the
    optional ones present in `columns`; unknown columns are described from their arrays."""
    required = ct.required_ms_desc(table_name)
    complete = ct.complete_ms_desc(table_name)
    desc = {k: v for k, v in required.items()}
    for name, values in columns.items():
        if name in desc:
            continue
        if name in complete:
            desc[name] = complete[name]
        else:
            desc.update(ct.maketabdesc(_column_desc_from_array(name, np.asarray(values))))
    return desc


class MSWriter:
    """Write a new MeasurementSet.

    Parameters
    ----------
    path
        The MS directory to create. It must not exist unless ``overwrite=True``.
    data_columns
        Main-table data columns to create, e.g. ``("DATA",)``, ``("FLOAT_DATA",)`` or
        ``("DATA", "MODEL_DATA", "CORRECTED_DATA")``.
    weight_spectrum
        Also create WEIGHT_SPECTRUM (per channel weights).

    Use as a context manager: ``write_subtable`` for every subtable, ``append_rows`` for blocks
    of main-table rows (each block with one cell shape).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        data_columns: tuple[str, ...] = ("DATA",),
        weight_spectrum: bool = True,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        if self.path.exists():
            if not overwrite:
                raise FileExistsError(f"{self.path}: already exists (pass overwrite=True)")
            shutil.rmtree(self.path)
        extra = list(data_columns) + (["WEIGHT_SPECTRUM"] if weight_spectrum else [])
        complete = ct.complete_ms_desc("MAIN")
        desc = ct.required_ms_desc("MAIN")
        for name in extra:
            desc[name] = dict(complete[name], ndim=2)
        desc["FLAG"] = dict(desc["FLAG"], ndim=2)
        dminfo = {
            f"*{i}": {
                "TYPE": "TiledShapeStMan",
                "NAME": f"Tiled{name}",
                "SPEC": {"DEFAULTTILESHAPE": np.array([4, 64, 128], dtype=np.int32)},
                "COLUMNS": [name],
            }
            for i, name in enumerate(n for n in _TILED_COLUMNS if n in desc or n == "FLAG")
        }
        self._table = ct.default_ms(str(self.path), desc, dminfo)
        self._nrows = 0

    def __enter__(self) -> MSWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._table is not None:
            self._table.close()
            self._table = None

    def write_subtable(self, name: str, columns: Mapping[str, np.ndarray | list]) -> None:
        """Fill subtable `name` (created if the MS does not have it) with `columns`.

        Every array's first axis is the row; all arrays have the same number of rows. A column
        whose cells differ in shape (e.g. CHAN_FREQ of spectral windows with different channel
        counts) is given as a list with one array per row.
        """
        _fill_subtable(self._table, self.path, name, columns)

    def append_rows(self, columns: Mapping[str, np.ndarray]) -> None:
        """Append one block of main-table rows. Missing required columns get MS defaults."""
        arrays = {k: np.asarray(v) for k, v in columns.items()}
        nrow = len(next(iter(arrays.values())))
        start = self._nrows
        self._table.addrows(nrow)
        for col, values in arrays.items():
            if len(values) != nrow:
                raise ValueError(f"column {col}: {len(values)} rows, expected {nrow}")
            self._table.putcol(col, values, startrow=start, nrow=nrow)
        for col, default in _row_defaults(arrays, nrow).items():
            self._table.putcol(col, default, startrow=start, nrow=nrow)
        self._nrows += nrow

    @property
    def nrows(self) -> int:
        return self._nrows


def _is_ragged(values: np.ndarray | list) -> bool:
    """True for a list of per-row cells that do not all have the same shape."""
    return isinstance(values, (list, tuple)) and len({np.shape(c) for c in values}) > 1


def _row_defaults(given: Mapping[str, np.ndarray], nrow: int) -> dict[str, np.ndarray]:
    """Defaults for the required main-table columns a block did not give."""
    out: dict[str, np.ndarray] = {}
    zeros_i = np.zeros(nrow, dtype=np.int32)
    for col in ("ARRAY_ID", "FEED1", "FEED2", "OBSERVATION_ID", "FIELD_ID", "DATA_DESC_ID",
                "SCAN_NUMBER", "STATE_ID"):  # fmt: skip
        if col not in given:
            out[col] = zeros_i
    if "PROCESSOR_ID" not in given:
        out["PROCESSOR_ID"] = np.full(nrow, -1, dtype=np.int32)
    if "FLAG_ROW" not in given:
        out["FLAG_ROW"] = np.zeros(nrow, dtype=bool)
    if "TIME_CENTROID" not in given and "TIME" in given:
        out["TIME_CENTROID"] = given["TIME"]
    if "EXPOSURE" not in given and "INTERVAL" in given:
        out["EXPOSURE"] = given["INTERVAL"]
    if "UVW" not in given:
        out["UVW"] = np.zeros((nrow, 3))
    ref = next((given[c] for c in ("DATA", "FLOAT_DATA") if c in given), None)
    if ref is not None:
        npol = ref.shape[2]
        if "FLAG" not in given:
            out["FLAG"] = np.zeros(ref.shape, dtype=bool)
        if "WEIGHT" not in given:
            out["WEIGHT"] = np.ones((nrow, npol), dtype=np.float32)
        if "SIGMA" not in given:
            weight = given.get("WEIGHT", out.get("WEIGHT"))
            out["SIGMA"] = (1.0 / np.sqrt(np.maximum(weight, 1e-30))).astype(np.float32)
    return out


def _fill_subtable(
    main: ct.table, ms_path: Path, name: str, columns: Mapping[str, np.ndarray | list]
) -> None:
    ragged = {k: [np.asarray(c) for c in v] for k, v in columns.items() if _is_ragged(v)}
    arrays = {k: np.asarray(v) for k, v in columns.items() if k not in ragged}
    nrows = {len(v) for v in arrays.values()} | {len(v) for v in ragged.values()}
    if len(nrows) != 1:
        raise ValueError(f"subtable {name}: columns have different row counts {nrows}")
    (nrow,) = nrows
    # A column description needs only the dtype and cell ndim: one cell stands for a ragged one.
    samples = {**arrays, **{k: v[0][np.newaxis] for k, v in ragged.items()}}
    sub_path = str(ms_path / name)
    if name in main.getkeywords():
        sub = ct.table(sub_path, readonly=False, ack=False)
        for col, values in samples.items():
            if col not in sub.colnames():
                sub.addcols(ct.maketabdesc(_column_desc_from_array(col, values)))
    else:
        try:
            desc = _standard_desc(name, samples)
        except RuntimeError:  # not an MS-standard subtable
            desc = ct.maketabdesc([_column_desc_from_array(c, v) for c, v in samples.items()])
            units = _CUSTOM_SUBTABLE_UNITS.get(name, {})
            for col, unit in units.items():
                if col in desc:
                    desc[col].setdefault("keywords", {})["QuantumUnits"] = [unit]
        sub = ct.table(sub_path, desc, nrow=0, ack=False)
        main.putkeyword(name, f"Table: {sub_path}")
    sub.addrows(nrow - sub.nrows())
    for col, values in arrays.items():
        if values.dtype.kind in "US":
            # Scalar string columns take a list of str; string-array cells a str ndarray.
            values = [str(v) for v in values.tolist()] if values.ndim == 1 else values.astype(str)
        sub.putcol(col, values)
    for col, cells in ragged.items():
        for row, cell in enumerate(cells):
            sub.putcell(col, row, cell)
    sub.close()


def add_subtable(
    ms_path: str | os.PathLike, name: str, columns: Mapping[str, np.ndarray | list]
) -> None:
    """Add (or fill) subtable `name` of an existing MS, e.g. VLA SYSPOWER for a test."""
    with ct.table(str(ms_path), readonly=False, ack=False) as main:
        _fill_subtable(main, Path(ms_path), name, columns)


def copy_ms(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Deep-copy an MS (all subtables, values copied) to a writable location."""
    with ct.table(str(src), ack=False) as t:
        t.copy(str(dst), deep=True, valuecopy=True).close()
