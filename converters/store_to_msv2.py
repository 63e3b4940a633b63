"""radflow store -> MSv2: write a data group back into an MS column at its original rows.

Every sample carries the MS row it came from (``MSV2_ROW``), so the write-back is exact whatever
the MS's row order. Values go into temporary columns first; only when every partition is written
are they swapped in for the target columns, so a failed export leaves the MS as it was.
"""

from __future__ import annotations

import os
import uuid

import dask
import numpy as np
import xarray as xr
from casacore import tables as ct

import radflow
from radflow import schema

from .tables import CASACORE_LOCK, MSError, close_cached


class ExportError(ValueError):
    """The store and the target MS do not fit together, or the group/column is wrong."""


_COPY_BLOCK_ROWS = 100_000


def _data_var(node: xr.Dataset, group: str, store: str) -> tuple[str, str, str]:
    groups = node.attrs.get(schema.ATTR_DATA_GROUPS, {})
    if group not in groups:
        info = node.attrs.get(schema.ATTR_PARTITION_INFO, {})
        raise ExportError(
            f"{store}: partition spw {info.get(schema.PI_SPW_ID)} scan {info.get(schema.PI_SCAN)}"
            f" has no data group {group!r} (it has {sorted(groups)})"
        )
    g = groups[group]
    return g[schema.ROLE_DATA], g[schema.ROLE_FLAG], g[schema.ROLE_WEIGHT]


def _partitions(tree: xr.DataTree) -> list[tuple[str, xr.Dataset]]:
    return [
        (name, child.ds)
        for name, child in tree.children.items()
        if child.attrs.get(schema.ATTR_TYPE) in (schema.TYPE_VISIBILITY, schema.TYPE_SPECTRUM)
    ]


def _add_column_like(t: ct.table, name: str, like: str | None, value_type: str) -> None:
    """Add array column `name` shaped like column `like` (or like FLAG), tiled, of `value_type`."""
    desc = t.getcoldesc(like or schema.MS_FLAG)
    desc = dict(desc, valueType=value_type, ndim=2)
    desc.pop("shape", None)
    desc["dataManagerType"] = "TiledShapeStMan"
    desc["dataManagerGroup"] = f"Tiled_{name}"
    dminfo = {
        "TYPE": "TiledShapeStMan",
        "NAME": f"Tiled_{name}",
        "SPEC": {"DEFAULTTILESHAPE": np.array([4, 64, 128], dtype=np.int32)},
    }
    t.addcols(ct.maketabdesc(ct.makecoldesc(name, desc)), dminfo)


def export(
    store_path: str | os.PathLike,
    ms_path: str | os.PathLike,
    group: str = schema.GROUP_CORRECTED,
    column: str | None = None,
    write_flags: bool = True,
    write_weights: bool = True,
) -> str:
    """Write data group `group` of a store (with its FLAG and WEIGHT) into an MS.

    Parameters
    ----------
    store_path
        The radflow store (``.ps.zarr``) made from this MS.
    ms_path
        The MS the store was converted from (or a copy of it with the same rows).
    group
        Data group to write (``base``, ``corrected``, ``model``, or any step's output group).
    column
        Target MS data column: CORRECTED_DATA by default (MODEL_DATA for the ``model`` group),
        or DATA / FLOAT_DATA on request. Created if absent.
    write_flags, write_weights
        Also write FLAG (and FLAG_ROW = all flags of the row) and the weights: WEIGHT_SPECTRUM
        when the MS has it (WEIGHT is then left alone: CASA reads WEIGHT_SPECTRUM first), else
        WEIGHT: the channel mean of the weights (exact for channel-constant weights).

    Partitions without `group` are left out: their rows keep the column's current values, or,
    for a CORRECTED_DATA column created here, a copy of DATA/FLOAT_DATA (CASA's initial value).

    Returns
    -------
    The MS column written.
    """
    store = str(store_path)
    tree = radflow.open(store)
    source = tree.attrs.get(schema.ATTR_SOURCE_MS, {})
    if column is None:
        column = schema.MS_MODEL_DATA if group == schema.GROUP_MODEL else schema.MS_CORRECTED_DATA
    allowed = (schema.MS_CORRECTED_DATA, schema.MS_DATA, schema.MS_FLOAT_DATA, schema.MS_MODEL_DATA)
    if column not in allowed:
        raise ExportError(f"column {column!r}: choose one of {', '.join(allowed)}")
    # Calibration adds a group to the partitions it calibrates (single dish: the ON data), so
    # only those are written; the other rows keep the column's values (for a new
    # CORRECTED_DATA: a copy of the raw data, as CASA initialises it).
    all_parts = _partitions(tree)
    parts = [(n, d) for n, d in all_parts if group in d.attrs.get(schema.ATTR_DATA_GROUPS, {})]
    if not parts:
        _data_var(all_parts[0][1], group, store)  # raises, naming the groups there are

    close_cached(ms_path)
    with CASACORE_LOCK:
        t = ct.table(str(ms_path), readonly=False, ack=False)
    try:
        _check_rows(t, source, store, ms_path)
        return _write(t, parts, group, column, write_flags, write_weights)
    finally:
        with CASACORE_LOCK:
            t.close()


def _check_rows(t: ct.table, source: dict, store: str, ms_path: str | os.PathLike) -> None:
    nrows = source.get("nrows")
    if nrows is not None and t.nrows() != nrows:
        raise ExportError(
            f"{ms_path} has {t.nrows()} rows but {store} was converted from an MS with {nrows}: "
            "write back only to the MS the store came from (or an exact copy)"
        )


def _write(
    t: ct.table,
    parts: list[tuple[str, xr.Dataset]],
    group: str,
    column: str,
    write_flags: bool,
    write_weights: bool,
) -> str:
    cols = t.colnames()
    sample_var = _data_var(parts[0][1], group, "")[0]
    is_real = not np.iscomplexobj(np.empty(0, parts[0][1][sample_var].dtype))
    if column == schema.MS_FLOAT_DATA and column not in cols:
        raise ExportError(
            "the MS has no FLOAT_DATA column; export single-dish data to DATA or CORRECTED_DATA"
        )
    value_type = "float" if column == schema.MS_FLOAT_DATA else "complex"
    if column in cols:
        value_type = t.getcoldesc(column)["valueType"]
    weight_col = (
        schema.MS_WEIGHT_SPECTRUM if schema.MS_WEIGHT_SPECTRUM in cols else schema.MS_WEIGHT
    )

    suffix = uuid.uuid4().hex[:6].upper()
    tmp = {column: f"RADFLOW_{suffix}_{column}"}
    if write_flags:
        tmp[schema.MS_FLAG] = f"RADFLOW_{suffix}_FLAG"
        tmp[schema.MS_FLAG_ROW] = f"RADFLOW_{suffix}_FLAG_ROW"
    if write_weights:
        tmp[weight_col] = f"RADFLOW_{suffix}_{weight_col}"
    like_data = next((c for c in (schema.MS_DATA, schema.MS_FLOAT_DATA) if c in cols), None)
    with CASACORE_LOCK:
        _add_column_like(t, tmp[column], like_data, value_type)
        if write_flags:
            _add_column_like(t, tmp[schema.MS_FLAG], schema.MS_FLAG, "boolean")
            t.addcols(ct.maketabdesc(ct.makescacoldesc(tmp[schema.MS_FLAG_ROW], False)))
        if write_weights:
            if weight_col == schema.MS_WEIGHT_SPECTRUM:
                _add_column_like(t, tmp[weight_col], schema.MS_WEIGHT_SPECTRUM, "float")
            else:
                desc = dict(t.getcoldesc(schema.MS_WEIGHT))
                t.addcols(ct.maketabdesc(ct.makecoldesc(tmp[weight_col], desc)))
    try:
        # Rows the store does not cover keep their old values: start from a copy.
        _copy_untouched(t, tmp, parts)
        for name, node in parts:
            _write_partition(t, name, node, group, tmp, column, weight_col, is_real, value_type)
    except BaseException:
        with CASACORE_LOCK:
            t.removecols(list(tmp.values()))
        raise
    _swap_in(t, tmp)
    return column


def _swap_in(t: ct.table, tmp: dict[str, str]) -> None:
    """Replace each target column by its completed temporary column.

    Optional columns are swapped by rename; columns the MS standard requires (FLAG, FLAG_ROW,
    WEIGHT) cannot be removed, so the finished values are copied over in row blocks.
    """
    required = set(ct.required_ms_desc("MAIN"))
    with CASACORE_LOCK:
        for target, temp in tmp.items():
            if target in required:
                for start in range(0, t.nrows(), _COPY_BLOCK_ROWS):
                    n = min(_COPY_BLOCK_ROWS, t.nrows() - start)
                    if t.isscalarcol(target) or t.getcoldesc(target).get("shape") is not None:
                        values = t.getcol(temp, startrow=start, nrow=n)
                        t.putcol(target, values, startrow=start, nrow=n)
                    else:  # cell shapes may differ between spectral windows
                        values = t.getvarcol(temp, startrow=start, nrow=n)
                        t.putvarcol(target, values, startrow=start, nrow=n)
                t.removecols([temp])
            else:
                if target in t.colnames():
                    t.removecols([target])
                t.renamecol(temp, target)


def _copy_untouched(t: ct.table, tmp: dict[str, str], parts: list[tuple[str, xr.Dataset]]) -> None:
    """Fill temporary columns, for rows no partition covers, with the target's current values."""
    covered = np.zeros(t.nrows(), dtype=bool)
    for _, node in parts:
        rows = node[schema.MSV2_ROW].values.ravel()
        covered[rows[rows >= 0]] = True
    missing = np.nonzero(~covered)[0]
    if len(missing) == 0:
        return
    with CASACORE_LOCK:
        ddid = t.getcol("DATA_DESC_ID")[missing]
    # Cell shapes differ between spectral windows: copy one DATA_DESC_ID at a time.
    for dd in np.unique(ddid):
        with CASACORE_LOCK:
            ref = t.selectrows(missing[ddid == dd].tolist())
            try:
                for target, temp in tmp.items():
                    source = target
                    if target == schema.MS_CORRECTED_DATA and target not in t.colnames():
                        raw = (schema.MS_DATA, schema.MS_FLOAT_DATA)
                        source = next((c for c in raw if c in t.colnames()), target)
                    if source in t.colnames():
                        values = ref.getcol(source)
                        if t.getcoldesc(temp)["valueType"] == "complex":
                            values = values.astype(np.complex64)
                        ref.putcol(temp, values)
            finally:
                ref.close()


def _write_partition(
    t: ct.table,
    name: str,
    node: xr.Dataset,
    group: str,
    tmp: dict[str, str],
    column: str,
    weight_col: str,
    is_real: bool,
    value_type: str,
) -> None:
    data_name, flag_name, weight_name = _data_var(node, group, name)
    row_map = node[schema.MSV2_ROW]
    chunks = node[data_name].chunks[0] if node[data_name].chunks else (node.sizes[schema.TIME],)
    start = 0
    for nt in chunks:
        sl = slice(start, start + nt)
        start += nt
        rows, data, flag, weight = dask.compute(
            row_map[sl].data,
            node[data_name][sl].data,
            node[flag_name][sl].data,
            node[weight_name][sl].data,
        )
        rows = np.asarray(rows).reshape(-1)
        keep = rows >= 0
        order = np.argsort(rows[keep])
        sel_rows = rows[keep][order]
        tail = data.shape[2:]

        def cells(
            values: np.ndarray,
            order: np.ndarray = order,
            keep: np.ndarray = keep,
            tail: tuple = tail,
        ) -> np.ndarray:
            return values.reshape((-1,) + tail)[keep][order]

        values = cells(data)
        if value_type in ("complex", "dcomplex") and is_real:
            values = values.astype(np.complex64)
        elif value_type in ("float", "double") and not is_real:
            raise ExportError(f"{name}: complex data cannot go into the real column {column}")
        with CASACORE_LOCK:
            ref = t.selectrows(sel_rows.tolist())
            try:
                ref.putcol(tmp[column], values)
                if schema.MS_FLAG in tmp:
                    f = cells(flag)
                    ref.putcol(tmp[schema.MS_FLAG], f)
                    ref.putcol(tmp[schema.MS_FLAG_ROW], f.all(axis=(1, 2)))
                if weight_col in tmp:
                    w = cells(weight)
                    if weight_col == schema.MS_WEIGHT:
                        # One WEIGHT per row and correlation (CASA's convention, e.g. sdcal's
                        # channel-mean Tsys): the mean over channels; exact when constant.
                        w = w.mean(axis=1, dtype=np.float64).astype(np.float32)
                    ref.putcol(tmp[weight_col], w)
            finally:
                ref.close()


__all__ = ["export", "ExportError", "MSError"]
