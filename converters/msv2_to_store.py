"""MSv2 -> radflow store (MSv4-named zarr DataTree), streamed chunk by chunk on Dask.

The index columns (TIME, ANTENNA1/2, DATA_DESC_ID, SCAN_NUMBER, STATE_ID, FIELD_ID) are read
once to plan partitions and the (time, baseline) grid of each; the bulk columns are then read
by one Dask task per (partition, time chunk), scattered onto the grid, and written to zarr by
the same graph. Memory per task is one chunk, whatever the size of the MS.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

import radflow
from radflow import schema
from radflow.store import (
    abort_output,
    begin_output,
    commit_output,
    location,
    quiet_zarr_spec_warnings,
    zarr_url,
)

from . import subtables as st
from . import zarr_layout
from .tables import CASACORE_LOCK, MSError, column_dtype, column_keywords, open_ms, read_rows

DEFAULT_CHUNK_BYTES = 64 * 2**20
_INDEX_BLOCK_ROWS = 1_000_000


@dataclass
class Partition:
    """One store group: rows of one spw, scan, intent (and antenna, single dish)."""

    name: str
    ddid: int
    scan: int
    intents: str
    antenna: int | None  # single dish: the antenna id
    rows: np.ndarray  # MS row numbers, sorted
    time_index: np.ndarray  # per row: index into `times`
    bl_index: np.ndarray  # per row: index into baselines (or 0 for single dish)
    times: np.ndarray  # unique MS times (MJD s)
    baselines: np.ndarray  # (nbl, 2) antenna ids
    field_ids: np.ndarray  # per time: FIELD_ID of the first row at that time
    state_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class ConvertOptions:
    """What to convert and how.

    Parameters
    ----------
    columns
        MS data columns to convert (DATA/FLOAT_DATA, CORRECTED_DATA, MODEL_DATA);
        None = all present.
    time_chunk
        Integrations per chunk; None = as many as fit `chunk_bytes` for the largest data column.
    chunk_bytes
        Target bytes of one chunk of the main data variable (default 64 MiB).
    compression_level
        zstd level (0 = no compression) for the bulk arrays.
    with_pointing
        Convert POINTING into ``pointing_xds``.
    """

    columns: tuple[str, ...] | None = None
    time_chunk: int | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    compression_level: int = 3
    with_pointing: bool = True


def default_store_path(ms_path: str | os.PathLike) -> Path:
    """``uid___A002_X1.ms`` -> ``uid___A002_X1.ps.zarr`` beside it."""
    p = Path(ms_path)
    stem = p.name[:-3] if p.name.lower().endswith(".ms") else p.name
    return p.with_name(f"{stem}.ps.zarr")


def _read_index(ms_path: str) -> dict[str, np.ndarray]:
    t = open_ms(ms_path)
    nrows = t.nrows()
    out = {c: [] for c in schema.MS_INDEX_COLUMNS}
    with CASACORE_LOCK:
        for start in range(0, nrows, _INDEX_BLOCK_ROWS):
            n = min(_INDEX_BLOCK_ROWS, nrows - start)
            for c in schema.MS_INDEX_COLUMNS:
                out[c].append(t.getcol(c, startrow=start, nrow=n))
    return {c: np.concatenate(v) if v else np.array([]) for c, v in out.items()}


def _is_single_dish(ms_path: str, index: dict[str, np.ndarray]) -> bool:
    cols = open_ms(ms_path).colnames()
    autos_only = bool(np.all(index["ANTENNA1"] == index["ANTENNA2"]))
    return schema.MS_FLOAT_DATA in cols or autos_only


def plan_partitions(ms_path: str, meta: st.MSMetadata) -> tuple[list[Partition], bool]:
    """Group MS rows into partitions and map every row onto its (time, baseline) cell.

    Raises :class:`MSError` for an unknown DATA_DESC_ID, a row referring to a missing
    antenna/field, or duplicate rows (same time, baseline, partition).
    """
    index = _read_index(ms_path)
    nrows = len(index["TIME"])
    if nrows == 0:
        raise MSError(f"{ms_path}: the main table has no rows")
    single_dish = _is_single_dish(ms_path, index)
    ddid = index["DATA_DESC_ID"]
    bad = np.nonzero((ddid < 0) | (ddid >= len(meta.ddid_spw)))[0]
    if len(bad):
        raise MSError(
            f"{ms_path}: rows {_first(bad)} refer to DATA_DESC_ID {sorted(set(ddid[bad].tolist()))}"
            f" but DATA_DESCRIPTION has {len(meta.ddid_spw)} rows"
        )
    for col in ("ANTENNA1", "ANTENNA2"):
        bad = np.nonzero((index[col] < 0) | (index[col] >= len(meta.antenna_names)))[0]
        if len(bad):
            raise MSError(
                f"{ms_path}: rows {_first(bad)} have {col} outside the ANTENNA table "
                f"({len(meta.antenna_names)} rows)"
            )
    fields = index["FIELD_ID"]
    bad = np.nonzero((fields < 0) | (fields >= len(meta.field_names)))[0]
    if len(bad):
        raise MSError(f"{ms_path}: rows {_first(bad)} have FIELD_ID outside the FIELD table")

    # Intent string per row. STATE_ID -1 (or a STATE table with no rows, as some
    # telescopes write) means no intent was recorded.
    state = index["STATE_ID"]
    modes = meta.state_obs_modes
    valid_state = (state >= 0) & (state < len(modes))
    intent_codes = np.where(valid_state, state, -1)
    intent_of = {-1: schema.INTENT_UNSPECIFIED}
    intent_of.update({i: (m or schema.INTENT_UNSPECIFIED) for i, m in enumerate(modes)})
    intent_names = sorted(set(intent_of[c] for c in np.unique(intent_codes)))
    intent_id = {name: k for k, name in enumerate(intent_names)}
    # Lookup table over STATE_ID -1..n-1; a name absent from this MS's rows maps to -1, unused.
    code_to_intent = np.array([intent_id.get(intent_of[c], -1) for c in range(-1, len(modes))])
    row_intent = code_to_intent[intent_codes + 1]

    key_cols = [ddid, index["SCAN_NUMBER"], row_intent]
    if single_dish:
        key_cols.append(index["ANTENNA1"])
    keys = np.stack(key_cols, axis=1)
    ukeys, part_of_row = np.unique(keys, axis=0, return_inverse=True)
    part_of_row = part_of_row.ravel()
    order = np.argsort(part_of_row, kind="stable")
    bounds = np.searchsorted(part_of_row[order], np.arange(len(ukeys) + 1))

    eb = Path(ms_path).name
    eb = eb[:-3] if eb.lower().endswith(".ms") else eb
    partitions = []
    for k, key in enumerate(ukeys):
        rows = order[bounds[k] : bounds[k + 1]]  # ascending: stable sort of ascending rows
        times, t_idx = np.unique(index["TIME"][rows], return_inverse=True)
        if single_dish:
            baselines = np.array([[key[3], key[3]]])
            b_idx = np.zeros(len(rows), dtype=np.int64)
        else:
            pairs = np.stack([index["ANTENNA1"][rows], index["ANTENNA2"][rows]], axis=1)
            baselines, b_idx = np.unique(pairs, axis=0, return_inverse=True)
            b_idx = b_idx.ravel()
        _check_duplicates(ms_path, rows, t_idx, b_idx, len(baselines))
        first_at_time = np.full(len(times), -1)
        first_at_time[t_idx[::-1]] = rows[::-1]  # the earliest row wins
        partitions.append(
            Partition(
                name=f"{eb}_{k}",
                ddid=int(key[0]),
                scan=int(key[1]),
                intents=intent_names[int(key[2])],
                antenna=int(key[3]) if single_dish else None,
                rows=rows,
                time_index=t_idx.ravel(),
                bl_index=b_idx,
                times=times,
                baselines=baselines,
                field_ids=fields[first_at_time],
                state_ids=sorted(set(state[rows].tolist())),
            )
        )
    return partitions, single_dish


def _first(rows: np.ndarray, n: int = 10) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:n])
    return shown + (f", ... ({len(rows)} rows)" if len(rows) > n else "")


def _check_duplicates(
    ms_path: str, rows: np.ndarray, t_idx: np.ndarray, b_idx: np.ndarray, nbl: int
) -> None:
    cell = t_idx.astype(np.int64) * nbl + b_idx
    order = np.argsort(cell, kind="stable")
    dup = np.nonzero(np.diff(cell[order]) == 0)[0]
    if len(dup):
        pairs = [(int(rows[order[i]]), int(rows[order[i + 1]])) for i in dup[:5]]
        raise MSError(
            f"{ms_path}: duplicate rows (same time, baseline, spw, scan and intent): "
            + ", ".join(f"{a} and {b}" for a, b in pairs)
            + (f" ... ({len(dup)} duplicates)" if len(dup) > 5 else "")
        )


@dataclass(frozen=True)
class _Columns:
    data: dict[str, str]  # MS column -> store group
    weight_source: str | None  # WEIGHT_SPECTRUM, WEIGHT, SIGMA or None (ones)
    has_uvw: bool


def _choose_columns(ms_path: str, options: ConvertOptions, single_dish: bool) -> _Columns:
    cols = open_ms(ms_path).colnames()
    base = schema.MS_FLOAT_DATA if schema.MS_FLOAT_DATA in cols else schema.MS_DATA
    candidates = [base, schema.MS_CORRECTED_DATA, schema.MS_MODEL_DATA]
    if options.columns is not None:
        unknown = [c for c in options.columns if c not in cols]
        if unknown:
            raise MSError(f"{ms_path}: requested columns {unknown} are not in the MS")
        candidates = [c for c in candidates if c in options.columns]
    present = [c for c in candidates if c in cols and _column_has_data(ms_path, c)]
    if not present:
        raise MSError(f"{ms_path}: no data column (DATA or FLOAT_DATA) to convert")
    weight = next(
        (
            c
            for c in (schema.MS_WEIGHT_SPECTRUM, schema.MS_WEIGHT, schema.MS_SIGMA)
            if c in cols and _column_has_data(ms_path, c)
        ),
        None,
    )
    return _Columns(
        data={c: schema.MS_DATA_COLUMN_GROUPS[c] for c in present},
        weight_source=weight,
        has_uvw=not single_dish and "UVW" in cols,
    )


def _column_has_data(ms_path: str, col: str) -> bool:
    t = open_ms(ms_path)
    with CASACORE_LOCK:
        return t.nrows() > 0 and t.iscelldefined(col, 0)


def _read_block(
    ms_path: str,
    rows: np.ndarray,
    ti: np.ndarray,
    bi: np.ndarray,
    shape: tuple[int, int, int, int],
    columns: _Columns,
    single_dish: bool,
) -> dict[str, np.ndarray]:
    """Read one time chunk of one partition and scatter it onto its (time, baseline) grid.

    `rows` are sorted MS row numbers; `ti`, `bi` their time (relative to the chunk) and
    baseline indices; `shape` is (ntime, nbaseline, nchan, npol) of the chunk.
    """
    nt, nbl, nchan, npol = shape
    # A regular MS fills the grid in row order: then the grid, seen as (row, ...), is the read
    # buffer, and casacore writes straight into it.
    dense = len(rows) == nt * nbl and np.array_equal(ti * nbl + bi, np.arange(nt * nbl))

    def to_grid(values: np.ndarray, fill: float | bool, dtype: type) -> np.ndarray:
        if dense:
            return values.astype(dtype, copy=False).reshape((nt, nbl) + values.shape[1:])
        grid = np.full((nt, nbl) + values.shape[1:], fill, dtype=dtype)
        grid[ti, bi] = values
        return grid

    def read_grid(column: str, fill: float | bool, dtype: type) -> np.ndarray:
        if not dense:
            return to_grid(read_rows(ms_path, column, rows), fill, dtype)
        grid = np.empty((nt, nbl, nchan, npol), dtype=dtype)
        read_rows(ms_path, column, rows, out=grid.reshape(len(rows), nchan, npol))
        return grid

    out: dict[str, np.ndarray] = {schema.MSV2_ROW: to_grid(rows, -1, np.int64)}
    flag = read_grid(schema.MS_FLAG, True, bool)
    flag_row = read_rows(ms_path, schema.MS_FLAG_ROW, rows)
    if flag_row.any():
        flag[ti[flag_row], bi[flag_row]] = True

    nonfinite = np.zeros(nt, dtype=np.int64)
    for col in columns.data:
        if single_dish and column_dtype(ms_path, col).kind == "c":
            # autocorrelation-only DATA
            grid = to_grid(read_rows(ms_path, col, rows).real, 0, np.float32)
        else:
            grid = read_grid(col, 0, np.float32 if single_dish else np.complex64)
        # A sum is non-finite iff some sample is: a cheap test before building a mask.
        if not np.isfinite(grid.sum()):
            bad = ~np.isfinite(grid)
            nonfinite += bad.reshape(nt, -1).sum(axis=1)
            flag |= bad
        out[col] = grid

    if columns.weight_source == schema.MS_WEIGHT_SPECTRUM:
        out[schema.WEIGHT] = read_grid(schema.MS_WEIGHT_SPECTRUM, 0, np.float32)
    else:
        if columns.weight_source == schema.MS_WEIGHT:
            weight = read_rows(ms_path, schema.MS_WEIGHT, rows)[:, None, :]
        elif columns.weight_source == schema.MS_SIGMA:
            sigma = read_rows(ms_path, schema.MS_SIGMA, rows).astype(np.float64)
            with np.errstate(divide="ignore"):
                weight = np.where(sigma > 0, 1.0 / sigma**2, 0.0)[:, None, :]
        else:
            weight = np.ones((len(rows), 1, npol))
        weight = np.broadcast_to(weight, (len(rows), nchan, npol))
        out[schema.WEIGHT] = to_grid(np.ascontiguousarray(weight, dtype=np.float32), 0, np.float32)
    out[schema.FLAG] = flag
    out[schema.TIME_CENTROID] = to_grid(
        st.unix_time(read_rows(ms_path, "TIME_CENTROID", rows)), np.nan, np.float64
    )
    out[schema.EFFECTIVE_INTEGRATION_TIME] = to_grid(
        read_rows(ms_path, "EXPOSURE", rows), np.nan, np.float64
    )
    if columns.has_uvw:
        out[schema.UVW] = to_grid(read_rows(ms_path, "UVW", rows), np.nan, np.float64)
    out[schema.NONFINITE_FLAGGED] = nonfinite
    return out


def _time_chunks(part: Partition, bytes_per_time: int, options: ConvertOptions) -> list[int]:
    nt = len(part.times)
    if options.time_chunk:
        step = max(1, int(options.time_chunk))
    else:
        step = max(1, int(options.chunk_bytes // max(bytes_per_time, 1)))
    return [min(step, nt - s) for s in range(0, nt, step)]


@dataclass(frozen=True)
class _Chunk:
    """One time chunk of one partition: its MS rows and where they go in the chunk's grid."""

    t0: int  # first time index of the chunk in the partition
    rows: np.ndarray  # sorted MS row numbers
    ti: np.ndarray  # per row: time index within the chunk
    bi: np.ndarray  # per row: baseline index
    shape: tuple[int, int, int, int]  # (ntime, nbaseline, nchan, npol)


def _chunk_plan(
    part: Partition, meta: st.MSMetadata, single_dish: bool, options: ConvertOptions
) -> list[_Chunk]:
    spw = meta.spws[int(meta.ddid_spw[part.ddid])]
    nchan = len(spw.chan_freq)
    npol = len(meta.pol_labels[int(meta.ddid_pol[part.ddid])])
    nbl = len(part.baselines)
    itemsize = 4 if single_dish else 8
    # Rows are sorted by row number, not time: select each chunk's rows by time index.
    order = np.argsort(part.time_index, kind="stable")
    t_sorted = part.time_index[order]
    plan, t0 = [], 0
    for nt in _time_chunks(part, nbl * nchan * npol * itemsize, options):
        lo, hi = np.searchsorted(t_sorted, [t0, t0 + nt])
        sel = np.sort(order[lo:hi])
        plan.append(
            _Chunk(t0, part.rows[sel], part.time_index[sel] - t0, part.bl_index[sel],
                   (nt, nbl, nchan, npol))
        )  # fmt: skip
        t0 += nt
    return plan


def _block_keys(columns: _Columns) -> list[str]:
    """The arrays :func:`_read_block` returns: store names, or MS column names for data."""
    keys = [schema.MSV2_ROW, schema.FLAG, schema.WEIGHT, schema.TIME_CENTROID,
            schema.EFFECTIVE_INTEGRATION_TIME, schema.NONFINITE_FLAGGED, *columns.data]  # fmt: skip
    return keys + ([schema.UVW] if columns.has_uvw else [])


def _chunk_specs(chunk: _Chunk, columns: _Columns, single_dish: bool) -> dict[str, tuple]:
    """Shape and dtype of each array :func:`_read_block` returns for `chunk`."""
    nt, nbl, nchan, npol = chunk.shape
    data = ((nt, nbl, nchan, npol), np.float32 if single_dish else np.complex64)
    specs = {
        schema.MSV2_ROW: ((nt, nbl), np.int64),
        schema.FLAG: ((nt, nbl, nchan, npol), bool),
        schema.WEIGHT: ((nt, nbl, nchan, npol), np.float32),
        schema.TIME_CENTROID: ((nt, nbl), np.float64),
        schema.EFFECTIVE_INTEGRATION_TIME: ((nt, nbl), np.float64),
        schema.NONFINITE_FLAGGED: ((nt,), np.int64),
        schema.UVW: ((nt, nbl, 3), np.float64),
    }
    return {key: specs.get(key, data) for key in _block_keys(columns)}


def _partition_dataset(
    ms_path: str,
    part: Partition,
    plan: list[_Chunk],
    meta: st.MSMetadata,
    columns: _Columns,
    single_dish: bool,
) -> xr.Dataset:
    """The lazy dataset of one partition."""
    spw = meta.spws[int(meta.ddid_spw[part.ddid])]
    pols = meta.pol_labels[int(meta.ddid_pol[part.ddid])]
    nchan, npol, nbl = len(spw.chan_freq), len(pols), len(part.baselines)
    blocks: dict[str, list[da.Array]] = {}
    for chunk in plan:
        block = dask.delayed(_read_block, pure=True, traverse=False)(
            ms_path, chunk.rows, chunk.ti, chunk.bi, chunk.shape, columns, single_dish,
            dask_key_name=f"read-{part.name}-{chunk.t0}-{abs(hash(ms_path))}",
        )  # fmt: skip
        for name, (shape, dtype) in _chunk_specs(chunk, columns, single_dish).items():
            blocks.setdefault(name, []).append(da.from_delayed(block[name], shape, dtype))
    arrays = {name: da.concatenate(parts, axis=0) for name, parts in blocks.items()}

    if single_dish:
        ant_name = meta.antenna_names[part.antenna]
        row_dims = (schema.TIME, schema.ANTENNA_NAME)
        data_base, kind = schema.SPECTRUM, schema.TYPE_SPECTRUM
        coords = {schema.ANTENNA_NAME: [ant_name]}
    else:
        row_dims = (schema.TIME, schema.BASELINE_ID)
        data_base, kind = schema.VISIBILITY, schema.TYPE_VISIBILITY
        coords = {
            schema.BASELINE_ID: np.arange(nbl),
            schema.BASELINE_ANTENNA1_NAME: (
                schema.BASELINE_ID,
                meta.antenna_names[part.baselines[:, 0]],
            ),
            schema.BASELINE_ANTENNA2_NAME: (
                schema.BASELINE_ID,
                meta.antenna_names[part.baselines[:, 1]],
            ),
        }
    data_dims_named = row_dims + (schema.FREQUENCY, schema.POLARIZATION)
    intents = part.intents.split(",")
    units_attr = {schema.ATTR_TYPE: schema.TYPE_QUANTA, schema.ATTR_UNITS: schema.UNITS_RAW}
    data_vars = {
        schema.FLAG: (data_dims_named, arrays[schema.FLAG]),
        schema.WEIGHT: (data_dims_named, arrays[schema.WEIGHT]),
        schema.TIME_CENTROID: (
            row_dims,
            arrays[schema.TIME_CENTROID],
            {"type": "time", "units": "s", "scale": "utc", "format": "unix"},
        ),
        schema.EFFECTIVE_INTEGRATION_TIME: (
            row_dims,
            arrays[schema.EFFECTIVE_INTEGRATION_TIME],
            {"type": "quantity", "units": "s"},
        ),
        schema.MSV2_ROW: (row_dims, arrays[schema.MSV2_ROW]),
        schema.NONFINITE_FLAGGED: (
            schema.TIME,
            arrays[schema.NONFINITE_FLAGGED],
            {"description": "samples that were NaN or infinite in the MS: kept, and flagged"},
        ),
    }
    if columns.has_uvw:
        data_vars[schema.UVW] = (
            row_dims + (schema.UVW_LABEL,),
            arrays[schema.UVW],
            {"type": "uvw", "units": "m", "frame": _uvw_frame(ms_path)},
        )
        coords[schema.UVW_LABEL] = ["u", "v", "w"]
    now = _dt.datetime.now(_dt.UTC).isoformat()
    data_groups = {}
    for col, group in columns.data.items():
        var = schema.data_var_name(data_base, group)
        data_vars[var] = (data_dims_named, arrays[col], dict(units_attr))
        data_groups[group] = {
            schema.ROLE_DATA: var,
            schema.ROLE_FLAG: schema.FLAG,
            schema.ROLE_WEIGHT: schema.WEIGHT,
            schema.ROLE_FIELD_AND_SOURCE: schema.FIELD_AND_SOURCE_XDS,
            schema.ROLE_DESCRIPTION: f"MSv2 column {col} of {Path(ms_path).name}",
            schema.ROLE_DATE: now,
            schema.ROLE_UNITS: schema.UNITS_RAW,
        }
        if columns.has_uvw:
            data_groups[group][schema.ROLE_UVW] = schema.UVW

    interval = float(np.median(read_rows(ms_path, "INTERVAL", part.rows[:1000])))
    field_names = meta.field_names[part.field_ids]
    coords.update(
        {
            schema.TIME: (
                schema.TIME,
                st.unix_time(part.times),
                {
                    "type": "time",
                    "units": "s",
                    "scale": "utc",
                    "format": "unix",
                    schema.ATTR_INTEGRATION_TIME: {
                        "data": interval,
                        "dims": [],
                        "attrs": {"units": "s", "type": "quantity"},
                    },
                },
            ),
            schema.FREQUENCY: (schema.FREQUENCY, spw.chan_freq, _frequency_attrs(spw)),
            schema.POLARIZATION: pols,
            schema.FIELD_NAME: (schema.TIME, field_names),
            schema.SCAN_NAME: (
                schema.TIME,
                np.full(len(part.times), str(part.scan)),
                {schema.ATTR_SCAN_INTENTS: intents},
            ),
        }
    )
    antenna_ids = np.unique(part.baselines)
    partition_info = {
        schema.PI_SPW_ID: spw.spw_id,
        schema.PI_SPW_NAME: spw.name,
        schema.PI_SCAN: part.scan,
        schema.PI_INTENTS: intents,
        schema.PI_FIELD: sorted(set(field_names.tolist())),
        schema.PI_ANTENNA: meta.antenna_names[antenna_ids].tolist(),
        schema.PI_BASEBAND: spw.baseband,
        schema.PI_POLARIZATION: pols,
        schema.PI_TIME_RANGE: [
            float(st.unix_time(part.times[0])),
            float(st.unix_time(part.times[-1])),
        ],
        schema.PI_SHAPE: [len(part.times), nbl, nchan, npol],
        schema.PI_DATA_KIND: kind,
        "nrows": len(part.rows),
        "state_ids": part.state_ids,
    }
    ds = xr.Dataset(
        data_vars,
        coords=coords,
        attrs={
            schema.ATTR_TYPE: kind,
            schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION,
            schema.ATTR_CREATOR: {"software_name": schema.CREATOR, "version": radflow.__version__},
            schema.ATTR_CREATION_DATE: now,
            schema.ATTR_DATA_GROUPS: data_groups,
            schema.ATTR_PARTITION_INFO: partition_info,
            schema.ATTR_OBSERVATION_INFO: dict(meta.observation, intents=intents),
            schema.ATTR_PROCESSOR_INFO: {"type": "", "sub_type": ""},
        },
    )
    return ds


def _frequency_attrs(spw: st.SpectralWindow) -> dict:
    return {
        "type": "spectral_coord",
        "units": "Hz",
        schema.ATTR_OBSERVER: spw.frame,
        schema.ATTR_SPECTRAL_WINDOW_NAME: spw.name,
        schema.ATTR_SPECTRAL_WINDOW_INTENTS: [schema.INTENT_UNSPECIFIED],
        schema.ATTR_REFERENCE_FREQUENCY: {
            "data": spw.ref_frequency,
            "dims": [],
            "attrs": {"units": "Hz", "observer": spw.frame, "type": "spectral_coord"},
        },
        schema.ATTR_CHANNEL_WIDTH: {
            "data": float(np.median(np.abs(spw.chan_width))),
            "dims": [],
            "attrs": {"units": "Hz", "type": "quantity"},
        },
        "spectral_window_id": spw.spw_id,
        "baseband_number": spw.baseband,
    }


def _uvw_frame(ms_path: str) -> str:
    ref = (column_keywords(ms_path, "UVW").get("MEASINFO") or {}).get("Ref", "J2000")
    return {"J2000": "fk5", "ICRS": "icrs"}.get(ref, ref.lower())


def _sub_datasets(
    ms_path: str, part: Partition, meta: st.MSMetadata, options: ConvertOptions
) -> dict[str, xr.Dataset]:
    spw_id = int(meta.ddid_spw[part.ddid])
    antenna_ids = np.unique(part.baselines)
    subs: dict[str, xr.Dataset | None] = {
        schema.ANTENNA_XDS: st.antenna_xds(ms_path, meta, antenna_ids),
        schema.FIELD_AND_SOURCE_XDS: st.field_and_source_xds(ms_path, meta, part.field_ids),
        schema.SYSTEM_CALIBRATION_XDS: st.system_calibration_xds(
            ms_path, meta, spw_id, antenna_ids
        ),
        schema.WEATHER_XDS: st.weather_xds(ms_path, meta),
        schema.SWITCHED_POWER_XDS: st.switched_power_xds(ms_path, meta, spw_id, antenna_ids),
        schema.CAL_DEVICE_XDS: st.cal_device_xds(ms_path, meta, spw_id, antenna_ids),
    }
    if options.with_pointing:
        subs[schema.POINTING_XDS] = st.pointing_xds(
            ms_path, meta, antenna_ids, (float(part.times[0]), float(part.times[-1]))
        )
    return {k: v for k, v in subs.items() if v is not None}


def build_tree(ms_path: str | os.PathLike, options: ConvertOptions | None = None) -> xr.DataTree:
    """The lazy DataTree of an MS: metadata in memory, bulk data as dask arrays (unread)."""
    return _plan(ms_path, options or ConvertOptions()).tree


@dataclass
class _Plan:
    ms_path: str
    tree: xr.DataTree
    chunks: dict[str, list[_Chunk]]  # partition name -> its time chunks
    columns: _Columns
    single_dish: bool


def _plan(ms_path: str | os.PathLike, options: ConvertOptions) -> _Plan:
    ms = os.path.abspath(ms_path)
    open_ms(ms)
    meta = st.read_metadata(ms)
    partitions, single_dish = plan_partitions(ms, meta)
    columns = _choose_columns(ms, options, single_dish)
    nodes: dict[str, xr.Dataset] = {}
    plans: dict[str, list[_Chunk]] = {}
    for part in partitions:
        plans[part.name] = _chunk_plan(part, meta, single_dish, options)
        nodes[f"/{part.name}"] = _partition_dataset(
            ms, part, plans[part.name], meta, columns, single_dish
        )
        for sub_name, sub in _sub_datasets(ms, part, meta, options).items():
            nodes[f"/{part.name}/{sub_name}"] = sub
    nrows = open_ms(ms).nrows()
    root_attrs = {
        schema.ATTR_TYPE: schema.TYPE_PROCESSING_SET,
        schema.ATTR_RADFLOW_VERSION: radflow.__version__,
        schema.ATTR_SOURCE_MS: {
            "path": ms,
            "nrows": nrows,
            "columns": list(columns.data),
            "weight_source": columns.weight_source,
            "single_dish": single_dish,
        },
    }
    tree = xr.DataTree.from_dict(nodes)
    # The root type is set last, after the data are written: until then the store is not a
    # processing set and radflow.open refuses it.
    tree.attrs = {k: v for k, v in root_attrs.items() if k != schema.ATTR_TYPE}
    return _Plan(ms, tree, plans, columns, single_dish)


def _encoding(tree: xr.DataTree, level: int) -> dict[str, dict]:
    compressor = BloscCodec(cname="zstd", clevel=level, shuffle="bitshuffle") if level > 0 else None
    encoding: dict[str, dict] = {}
    for node in tree.subtree:
        enc = {}
        for name, var in node.ds.data_vars.items():
            if var.chunks is not None:
                enc[name] = {"chunks": tuple(c[0] for c in var.chunks)}
                enc[name]["compressors"] = [compressor] if compressor else None
        if enc:
            encoding[node.path] = enc
    return encoding


@dataclass
class PendingStore:
    """A conversion whose store skeleton is written but whose bulk data are not.

    Compute ``graph`` (with those of other EBs, in one ``dask.compute``), then call
    :meth:`finish` to seal and rename the store, or :meth:`abort`.
    """

    final: Path
    tmp: Path
    graph: object
    names: list[str]
    tree_layout: zarr_layout.TreeLayout

    def finish(self, *, rescan: bool = False) -> Path:
        """Record each partition's count of non-finite samples, seal the store (only a store
        whose root type is a processing set is accepted by ``radflow.open``) and rename it.

        rescan
            The store was changed since :func:`prepare` (a run wrote its results into it):
            consolidate the metadata from the store, not from the layout kept in memory.
        """
        counts = zarr_layout.open_arrays(
            self.tmp, self.tree_layout, [f"{n}/{schema.NONFINITE_FLAGGED}" for n in self.names]
        )
        totals = {
            name: int(a[:].sum()) for name, a in zip(self.names, counts.values(), strict=True)
        }
        with quiet_zarr_spec_warnings():
            if rescan:
                root = zarr.open_group(zarr_url(self.tmp), mode="r+")
                for name, total in totals.items():
                    root[name].attrs[schema.ATTR_NAN_COUNT] = total
                root.attrs[schema.ATTR_TYPE] = schema.TYPE_PROCESSING_SET
                zarr_layout.consolidate(self.tmp)
            else:
                for name, total in totals.items():
                    self.tree_layout.update_group_attrs(name, {schema.ATTR_NAN_COUNT: total})
                self.tree_layout.update_group_attrs(
                    "", {schema.ATTR_TYPE: schema.TYPE_PROCESSING_SET}
                )
                zarr_layout.write_documents(self.tmp, self.tree_layout, self.names)
        return commit_output(self.tmp, self.final)

    def abort(self) -> None:
        abort_output(self.tmp)


def prepare(
    ms_path: str | os.PathLike,
    store_path: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    options: ConvertOptions | None = None,
) -> PendingStore:
    """Plan the conversion of one MS, write the store's metadata, coordinates and
    sub-datasets under a temporary name, and build the (uncomputed) graph of its bulk data:
    one task per time chunk of a partition, which reads the chunk's rows and writes every
    bulk array's chunk. Computing it returns the number of non-finite samples flagged."""
    options = options or ConvertOptions()
    out = location(store_path) if store_path else default_store_path(ms_path)
    plan = _plan(ms_path, options)
    tree_layout = zarr_layout.layout(plan.tree, _encoding(plan.tree, options.compression_level))
    tmp = begin_output(out, overwrite)
    try:
        zarr_layout.write(tmp, tree_layout)
        arrays = zarr_layout.open_arrays(tmp, tree_layout, tree_layout.lazy)
        tasks = []
        variables = _store_variables(plan)
        for name, chunks in plan.chunks.items():
            targets = {key: arrays[f"{name}/{var}"] for key, var in variables.items()}
            # The arguments go in a partial: dask would otherwise walk through every field of
            # the dataclasses (zarr arrays, chunk plans) looking for dask objects.
            tasks.extend(
                dask.delayed(functools.partial(
                    _convert_chunk, plan.ms_path, chunk, plan.columns, plan.single_dish, targets
                ))(dask_key_name=f"convert-{name}-{chunk.t0}-{abs(hash(plan.ms_path))}")
                for chunk in chunks
            )  # fmt: skip
        graph = dask.delayed(sum, pure=True)(tasks, dask_key_name=f"converted-{tmp.name}")
    except BaseException:
        abort_output(tmp)
        raise
    return PendingStore(out, tmp, graph, list(plan.tree.children), tree_layout)


def _store_variables(plan: _Plan) -> dict[str, str]:
    """The partition variable each array of :func:`_read_block`'s result is written to."""
    base = schema.SPECTRUM if plan.single_dish else schema.VISIBILITY
    data = {col: schema.data_var_name(base, group) for col, group in plan.columns.data.items()}
    return {key: data.get(key, key) for key in _block_keys(plan.columns)}


def _convert_chunk(
    ms_path: str,
    chunk: _Chunk,
    columns: _Columns,
    single_dish: bool,
    targets: dict[str, zarr.Array],
) -> int:
    """Read one time chunk of a partition and write it into the store's arrays (whole zarr
    chunks: a time chunk is a zarr chunk). Returns the count of non-finite samples flagged."""
    block = _read_block(ms_path, chunk.rows, chunk.ti, chunk.bi, chunk.shape, columns, single_dish)
    rows = slice(chunk.t0, chunk.t0 + chunk.shape[0])
    for key, target in targets.items():
        target[rows] = block[key]
    return int(block[schema.NONFINITE_FLAGGED].sum())


def convert_many(
    ms_paths: Sequence[str | os.PathLike],
    store_paths: Sequence[str | os.PathLike | None] | None = None,
    *,
    overwrite: bool = False,
    options: ConvertOptions | None = None,
    progress: bool = False,
) -> list[Path]:
    """Convert several MSs in one Dask graph; each store appears atomically, or not at all."""
    store_paths = store_paths or [None] * len(ms_paths)
    pending: list[PendingStore] = []
    try:
        for ms, out in zip(ms_paths, store_paths, strict=True):
            pending.append(prepare(ms, out, overwrite=overwrite, options=options))
        graphs = [p.graph for p in pending]
        with quiet_zarr_spec_warnings():
            if progress:
                from dask.diagnostics import ProgressBar

                with ProgressBar():
                    dask.compute(*graphs)
            else:
                dask.compute(*graphs)
        return [p.finish() for p in pending]
    finally:
        for p in pending:
            if p.tmp.exists():
                p.abort()


def convert(
    ms_path: str | os.PathLike,
    store_path: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    options: ConvertOptions | None = None,
    progress: bool = False,
) -> Path:
    """Convert an MS into a radflow store, atomically.

    Parameters
    ----------
    ms_path
        The MeasurementSet (MSv2) directory.
    store_path
        Output ``.ps.zarr`` directory (default: beside the MS, ``<name>.ps.zarr``).
    overwrite
        Replace an existing store (only once the new one is complete).
    options
        Columns, chunking and compression, see :class:`ConvertOptions`.
    progress
        Show a progress bar (local schedulers).

    Returns
    -------
    Path of the store. Partitions are read and written in parallel by the active Dask scheduler.
    """
    (out,) = convert_many(
        [ms_path], [store_path], overwrite=overwrite, options=options, progress=progress
    )
    return out


def describe_partitions(ms_path: str | os.PathLike) -> list[dict]:
    """Partition keys and shapes of an MS without converting it (for listings and tests)."""
    ms = os.path.abspath(ms_path)
    meta = st.read_metadata(ms)
    partitions, single_dish = plan_partitions(ms, meta)
    out = []
    for p in partitions:
        out.append(
            {
                "name": p.name,
                "spw": int(meta.ddid_spw[p.ddid]),
                "scan": p.scan,
                "intents": p.intents,
                "antenna": None if p.antenna is None else str(meta.antenna_names[p.antenna]),
                "ntime": len(p.times),
                "nbaseline": len(p.baselines),
                "nrows": len(p.rows),
                "single_dish": single_dish,
            }
        )
    return out


__all__: Sequence[str] = [
    "ConvertOptions",
    "PendingStore",
    "build_tree",
    "convert",
    "convert_many",
    "default_store_path",
    "prepare",
]
