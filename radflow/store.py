"""Open and write radflow stores (zarr v3 DataTrees) and small side datasets.

All writes are atomic: data goes to a hidden temporary sibling and is renamed into place only
when complete, so an interrupted run never leaves something that :func:`open` accepts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import xarray as xr
import zarr

from radflow import schema


@contextlib.contextmanager
def quiet_zarr_spec_warnings() -> Iterator[None]:
    """Silence zarr's notes that fixed-width strings and consolidated metadata are not yet in
    the v3 spec: xradio's stores use both too, and the notes give a user nothing to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        warnings.filterwarnings("ignore", message=".*Consolidated metadata is currently not.*")
        yield


class StoreError(ValueError):
    """A path is not a (complete) radflow store."""


def begin_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check that `path` may be written and return the hidden temporary path to write instead."""
    final = Path(path)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final}: already exists (use --overwrite / overwrite=True)")
    return final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")


def commit_output(tmp: Path, path: str | os.PathLike) -> Path:
    """Rename the finished `tmp` to `path`, replacing an old output only now that all is done."""
    final = Path(path)
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)
    return final


def abort_output(tmp: Path) -> None:
    """Remove an unfinished temporary output."""
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write into; rename it to `path` if the block succeeds.

    Refuses an existing `path` unless `overwrite`; with `overwrite` the old output is replaced
    only after the new one is complete. On error the temporary output is removed.
    """
    tmp = begin_output(path, overwrite)
    try:
        yield tmp
        commit_output(tmp, path)
    finally:
        if tmp.exists():
            abort_output(tmp)


def save_dataset(ds: xr.Dataset, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write one dataset (e.g. a simulator's truth) to a zarr store, atomically."""
    with atomic_output(path, overwrite=overwrite) as tmp, quiet_zarr_spec_warnings():
        ds.to_zarr(tmp, mode="w", consolidated=True, zarr_format=3)
    return Path(path)


def load_dataset(path: str | os.PathLike) -> xr.Dataset:
    """Read a dataset written by :func:`save_dataset` fully into memory."""
    with xr.open_zarr(path, consolidated=True) as ds:
        return ds.load()


def open(path: str | os.PathLike) -> xr.DataTree:  # noqa: A001 - the public name is radflow.open
    """Open a radflow store lazily (every data variable is a dask array).

    Raises :class:`StoreError` when `path` is not a complete processing-set store.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such store")
    if not (p / "zarr.json").exists():
        raise StoreError(f"{p}: not a zarr store (no zarr.json); an interrupted write?")
    try:
        tree = open_tree(p)
    except Exception as exc:  # zarr raises several types for a truncated store
        raise StoreError(f"{p}: cannot be opened as a radflow store: {exc}") from exc
    if tree.attrs.get(schema.ATTR_TYPE) != schema.TYPE_PROCESSING_SET:
        raise StoreError(
            f"{p}: not a complete radflow store (root attribute type="
            f"{tree.attrs.get(schema.ATTR_TYPE)!r}, expected {schema.TYPE_PROCESSING_SET!r})"
        )
    return tree


def open_tree(path: str | os.PathLike) -> xr.DataTree:
    """Open the zarr DataTree at `path` (complete or not) the way :func:`open` does.

    Coordinates, and whole sub-datasets (antennas, Tsys spectra, pointing: small next to the
    visibilities), are read into memory; steps may read time stamps, names and intents eagerly
    only from them. Bulk variables become dask arrays with the zarr chunks. A store has
    hundreds of small groups: xarray's own dask wrapping and index building per group cost far
    more than reading them, so both are done here directly (named by the store's path and
    modification time, so the same store always gives the same graph keys).
    """
    p = Path(path)
    with quiet_zarr_spec_warnings():
        raw = xr.open_datatree(
            p, engine="zarr", chunks=None, consolidated=True, create_default_indexes=False
        )
    token = dask.base.tokenize(str(p.resolve()), (p / "zarr.json").stat().st_mtime_ns)
    datasets = {node.path: node.to_dataset(inherit=False) for node in raw.subtree}
    bulk = {k for k, ds in datasets.items() if ds.attrs.get(schema.ATTR_TYPE, "") in _LAZY_TYPES
            or not ds.attrs.get(schema.ATTR_TYPE)}  # fmt: skip
    nodes = {}
    for path, ds in datasets.items():
        coords = {k: v.variable.load() for k, v in ds.coords.items()}
        if path in bulk:
            data = {k: v.variable for k, v in ds.data_vars.items()}
            chunks: dict[str, int] = {}
            for v in data.values():
                for dim, size in (v.encoding.get("preferred_chunks") or {}).items():
                    chunks.setdefault(dim, size)
            # chunked before the coordinates join, which stay in memory
            out = xr.Dataset(data, attrs=ds.attrs)
            out = out.chunk(chunks, name_prefix=f"radflow-{path}-", token=token)
            out = out.assign_coords(coords)
        else:
            data = {k: v.variable.load() for k, v in ds.data_vars.items()}
            out = xr.Dataset(data, coords=coords, attrs=ds.attrs)
        nodes[path] = out
    return xr.DataTree.from_dict(nodes)


# Datasets whose variables can be as large as the data: only their coordinates are loaded.
_LAZY_TYPES = (
    schema.TYPE_VISIBILITY,
    schema.TYPE_SPECTRUM,
    schema.TYPE_CALIBRATION_SOLUTION,
    schema.TYPE_BASELINE_TABLE,
)


def load_group(path: str | os.PathLike, group: str) -> xr.Dataset:
    """Read one group of a store (e.g. a solution under ``calibration/``) fully into memory."""
    with quiet_zarr_spec_warnings(), xr.open_zarr(path, group=group, consolidated=False) as ds:
        return ds.load()


def partitions(tree: xr.DataTree) -> dict[str, xr.DataTree]:
    """The partition nodes (visibility or spectrum groups) of a store, by name."""
    kinds = (schema.TYPE_VISIBILITY, schema.TYPE_SPECTRUM)
    return {n: c for n, c in tree.children.items() if c.attrs.get(schema.ATTR_TYPE) in kinds}


# ---- adding results to an existing store, atomically ----

_METADATA_FILES = {"zarr.json", ".zattrs", ".zgroup", ".zarray", ".zmetadata"}


def begin_update(path: str | os.PathLike) -> Path:
    """Start adding results to the store at `path`: return a hidden sibling copy to write into.

    The copy is cheap: chunk files are hard links to the original's (new results only ever add
    arrays, so no existing chunk file is rewritten); metadata files, which an update does
    rewrite, are real copies, so the original store is never touched. Where hard links are not
    possible (another file system) the chunk files are copied.
    """
    final = Path(path)
    if not (final / "zarr.json").exists():
        raise StoreError(f"{final}: not a radflow store (no zarr.json)")
    tmp = begin_output(final, overwrite=True)

    def link_or_copy(src: str, dst: str) -> None:
        if Path(src).name in _METADATA_FILES:
            shutil.copy2(src, dst)
            return
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(final, tmp, copy_function=link_or_copy)
    # zarr parses the root zarr.json for every array it creates (checking that no node is in
    # the way); with the whole store's consolidated metadata in it that costs seconds per group.
    # The copy drops it while being written; finish_update consolidates again.
    root = tmp / "zarr.json"
    meta = json.loads(root.read_text())
    meta.pop("consolidated_metadata", None)
    root.write_text(json.dumps(meta))
    return tmp


def add_variables(tmp: Path, group: str, ds: xr.Dataset) -> Any:
    """Write `ds`'s data variables as new arrays of `group` in `tmp`, and its attrs as the
    group's attrs; returns the dask write to compute. Coordinates are not rewritten."""
    new = ds.drop_vars(list(ds.coords))
    with quiet_zarr_spec_warnings():
        return new.to_zarr(tmp, group=group, mode="a", compute=False, consolidated=False)


def add_group(tmp: Path, group: str, ds: xr.Dataset) -> Any:
    """Write `ds` as a new group of `tmp` (replacing one of that name); returns the dask write."""
    with quiet_zarr_spec_warnings():
        return ds.to_zarr(tmp, group=group, mode="w", compute=False, consolidated=False)


def finish_update(tmp: Path, path: str | os.PathLike) -> Path:
    """Consolidate `tmp`'s metadata and swap it in for the store at `path`."""
    with quiet_zarr_spec_warnings():
        zarr.consolidate_metadata(str(tmp))
    return commit_output(tmp, path)
