"""Open and write radflow stores (zarr v3 DataTrees) and small side datasets.

All writes are atomic: data goes to a hidden temporary sibling and is renamed into place only
when complete, so an interrupted run never leaves something that :func:`open` accepts.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import io
import json
import os
import shutil
import threading
import uuid
import warnings
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import dask
import dask.array
import numcodecs
import numpy as np
import xarray as xr
import zarr
from upath import UPath
from xarray.backends.zarr import FillValueCoder

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


# ---- where stores live: local paths, or object-store URLs through fsspec ----


def location(path: str | os.PathLike) -> Path:
    """`path` as a path object: a ``pathlib.Path``, or for a URL (``s3://bucket/eb.ps.zarr``,
    ``gs://``, ``memory://``...) a ``UPath`` on fsspec, with the same methods.

    Credentials and endpoints of object stores come from fsspec's configuration (environment
    variables such as ``AWS_ENDPOINT_URL`` and ``AWS_ACCESS_KEY_ID``, ``FSSPEC_S3_*``, or
    ``~/.config/fsspec/*.json``), never from radflow's parameters, so Dask workers started with
    the same environment reach the same stores.
    """
    if isinstance(path, Path | UPath):
        return path
    text = os.fspath(path)
    return UPath(text) if is_url(text) else Path(text)


def is_url(path: str | os.PathLike) -> bool:
    """Whether `path` names an object-store location (has a ``scheme://``)."""
    if isinstance(path, UPath):
        return not isinstance(path, Path)
    return "://" in (path if isinstance(path, str) else os.fspath(path))


def zarr_url(path: str | os.PathLike) -> str:
    """What zarr and xarray are given for `path`: the local path or the URL, as a string."""
    return str(location(path))


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a directory tree or an object-store prefix; a missing one is not an error."""
    p = location(path)
    if is_url(p):
        with contextlib.suppress(FileNotFoundError):
            p.fs.rm(p.path, recursive=True)
    else:
        shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def open_text_atomic(path: str | os.PathLike) -> Iterator[TextIO]:
    """A text file written through the handle this yields: readers see the old or the new
    content, never a part, and nothing new if the block raises. Locally a temporary file renamed
    into place when the block ends; on an object store the text is kept and PUT (atomic) then.
    """
    p = location(path)
    if is_url(p):
        buffer = io.StringIO()
        yield buffer
        p.write_text(buffer.getvalue())
        return
    tmp = p.with_name(f".{p.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with builtins.open(tmp, "w", encoding="utf-8", newline="") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a small text file atomically (:func:`open_text_atomic`)."""
    with open_text_atomic(path) as handle:
        handle.write(text)


# ---- atomic outputs ----


def begin_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check that `path` may be written and return the hidden temporary path to write instead."""
    final = location(path)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final}: already exists (use --overwrite / overwrite=True)")
    return final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")


def commit_output(tmp: Path, path: str | os.PathLike) -> Path:
    """Rename the finished `tmp` to `path`, replacing an old output only now that all is done.

    An object store has no rename: the objects are copied (server side) to `path`, its root
    ``zarr.json`` last, and then deleted from `tmp` (see :func:`_publish`).
    """
    final = location(path)
    if is_url(final):
        _publish(location(tmp), final, replace=True)
        return final
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, trash)
        os.rename(tmp, final)
        _remove_replaced(trash)
    else:
        os.rename(tmp, final)
    return final


# Threads deleting replaced store versions, while deferred_removals() is active (else None).
_removals: list[threading.Thread] | None = None


def _remove_replaced(trash: Path) -> None:
    if _removals is None:
        shutil.rmtree(trash, ignore_errors=True)
        return
    worker = threading.Thread(
        target=shutil.rmtree, args=(trash,), kwargs={"ignore_errors": True}, name="radflow-rm"
    )
    worker.start()
    _removals.append(worker)


@contextlib.contextmanager
def deferred_removals() -> Iterator[None]:
    """Inside the block, the old version a commit replaces is deleted in a background thread
    (a store is thousands of files: the driver would wait seconds per block); leaving the
    block waits for every deletion. The swap itself is unchanged: the new version is in
    place before the deletion starts, and a deletion killed half way leaves a hidden
    ``.<name>.old-*`` sibling that the next run removes."""
    global _removals
    if _removals is not None:  # nested: the outer block waits
        yield
        return
    _removals = []
    try:
        yield
    finally:
        workers, _removals = _removals, None
        for worker in workers:
            worker.join()


def abort_output(tmp: Path) -> None:
    """Remove an unfinished temporary output."""
    remove_tree(tmp)


def _publish(tmp: Path, final: Path, *, replace: bool) -> None:
    """Make the object-store prefix `final` hold the zarr store written at `tmp`.

    The root ``zarr.json`` (which holds the consolidated metadata every reader opens the store
    by) is copied last, so a reader sees the old store or the new one. Chunks of an existing
    store are overwritten only where the new store rewrote an array; in that case the old root
    is deleted first, and a commit interrupted half way leaves no root, which :func:`open`
    refuses, rather than a mix (the complete new version is still at `tmp`).

    replace
        True: `final` becomes exactly `tmp` (a new store, or ``--overwrite``). False (an update
        made by :func:`begin_update`, whose `tmp` holds all metadata but only the chunks of
        the arrays this run wrote): `final` keeps its chunks of arrays `tmp` did not rewrite,
        and loses the nodes `tmp` no longer has.
    """
    fs = tmp.fs
    src, dst = tmp.path.rstrip("/"), final.path.rstrip("/")
    new = _relative_keys(fs, src)
    old = _relative_keys(fs, dst)
    meta = {k for k in new if _is_metadata(k)}
    nodes = {_node_of_metadata(k) for k in meta}
    old_nodes = {_node_of_metadata(k) for k in old if _is_metadata(k)}
    rewritten = {_owner(k, nodes) for k in new - meta}
    if replace:
        stale = old - new
    else:
        known = nodes | old_nodes
        stale = {k for k in old - new if _owner(k, known) in rewritten | (old_nodes - nodes)}
    chunks = sorted(new - meta)
    if old and (replace or old & set(chunks)):
        fs.rm(f"{dst}/{_ROOT_METADATA}")
    node_meta = sorted(meta - {_ROOT_METADATA})
    for batch in (chunks, node_meta, [_ROOT_METADATA]):
        if batch:
            fs.copy([f"{src}/{k}" for k in batch], [f"{dst}/{k}" for k in batch])
    if stale:
        fs.rm([f"{dst}/{k}" for k in sorted(stale)])
    fs.rm(src, recursive=True)


_ROOT_METADATA = "zarr.json"


def _relative_keys(fs: Any, prefix: str) -> set[str]:
    fs.invalidate_cache(prefix)  # zarr wrote through its own fsspec instance
    try:
        return {k[len(prefix) + 1 :] for k in fs.find(prefix) if k.startswith(prefix + "/")}
    except FileNotFoundError:
        return set()


def _is_metadata(key: str) -> bool:
    return key.rsplit("/", 1)[-1] in _METADATA_FILES


def _node_of_metadata(key: str) -> str:
    return key.rpartition("/")[0]


def _owner(key: str, nodes: set[str]) -> str:
    """The deepest node (array or group path, "" for the root) that `key` lies under."""
    parts = key.split("/")
    for n in range(len(parts) - 1, 0, -1):
        candidate = "/".join(parts[:n])
        if candidate in nodes:
            return candidate
    return ""


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
        ds.to_zarr(zarr_url(tmp), mode="w", consolidated=True, zarr_format=3)
    return location(path)


def load_dataset(path: str | os.PathLike) -> xr.Dataset:
    """Read a dataset written by :func:`save_dataset` fully into memory."""
    with xr.open_zarr(zarr_url(path), consolidated=True) as ds:
        return ds.load()


def open(path: str | os.PathLike) -> xr.DataTree:  # noqa: A001 - the public name is radflow.open
    """Open a radflow store lazily (every data variable is a dask array).

    Raises :class:`StoreError` when `path` is not a complete processing-set store.
    """
    p = location(path)
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
    only from them. Bulk variables become dask arrays with the zarr chunks, named by the
    store's path and modification time, so the same store always gives the same graph keys.

    A store has hundreds of small groups. Through xarray's zarr backend each group costs a
    zarr group, an xarray store and a dataset, and each small array a read through zarr's
    synchronous wrapper (~7 s for a 112-partition EB). Here the whole tree is read from the
    root's consolidated metadata: the small arrays' chunks are fetched concurrently and
    decoded directly, and the variables are CF-decoded by xarray as its backend would.
    """
    p = location(path)
    groups, group_attrs = _listing(p)
    if groups is None:
        raise StoreError(f"{p}: the root zarr.json has no consolidated metadata")
    bulk = {g for g, attrs in group_attrs.items() if attrs.get(schema.ATTR_TYPE, "") in _LAZY_TYPES
            or not attrs.get(schema.ATTR_TYPE)}  # fmt: skip
    token = dask.base.tokenize(*_version(p))
    return xr.DataTree.from_dict(_datasets(p, groups, group_attrs, bulk, token))


def _listing(p: Path) -> tuple[dict[str, dict[str, dict]] | None, dict[str, dict]]:
    """The arrays (name -> zarr metadata) and the attributes of every group ("" the root) of
    the store at `p`, from its root's consolidated metadata (None without it). Read-only:
    the same version of a store is parsed once (a run reads dozens of tables from one)."""
    return _parsed_listing(p, _version(p))


@functools.lru_cache(maxsize=8)
def _parsed_listing(
    p: Path, version: tuple[str, Any]
) -> tuple[dict[str, dict[str, dict]] | None, dict[str, dict]]:
    root = json.loads((p / _ROOT_METADATA).read_bytes())
    listing = (root.get("consolidated_metadata") or {}).get("metadata")
    group_attrs = {"": root.get("attributes") or {}}
    if listing is None:
        return None, group_attrs
    groups: dict[str, dict[str, dict]] = {"": {}}
    for key, meta in listing.items():
        parent, _, name = key.rpartition("/")
        if meta["node_type"] == "group":
            groups.setdefault(key, {})
            group_attrs[key] = meta.get("attributes") or {}
        else:
            groups.setdefault(parent, {})[name] = meta
    return groups, group_attrs


def _datasets(
    p: Path,
    groups: dict[str, dict[str, dict]],
    group_attrs: dict[str, dict],
    lazy: set[str],
    token: str,
) -> dict[str, xr.Dataset]:
    """The datasets of `groups` (path -> arrays): in the groups of `lazy`, data variables
    are dask arrays; everything else is read into memory."""
    small = {
        f"{g}/{name}".lstrip("/"): meta
        for g, arrays in groups.items()
        for name, meta in arrays.items()
        if g not in lazy or name in _coordinate_names(arrays, group_attrs[g])
    }
    values = _read_small_arrays(p, small)
    store = zarr_store(p) if len(small) < sum(map(len, groups.values())) else None
    nodes = {}
    for g, arrays in groups.items():
        variables = {}
        for name, meta in arrays.items():
            key = f"{g}/{name}".lstrip("/")
            if key in values:
                variables[name] = _variable(meta, values[key], {})
            else:
                variables[name] = _lazy_variable(store, key, meta, token)
        attrs = {k: v for k, v in group_attrs[g].items() if not k.lower().startswith("_nc")}
        decoded, attrs, coord_names = xr.conventions.decode_cf_variables(variables, attrs)
        coords = {k: v for k, v in decoded.items() if k in coord_names or v.dims == (k,)}
        data = {k: v for k, v in decoded.items() if k not in coords}
        nodes["/" + g] = xr.Dataset(data, coords=coords, attrs=attrs)
    return nodes


def _coordinate_names(arrays: dict[str, dict], attrs: dict) -> set[str]:
    """The names CF decoding will make coordinates of: dimension coordinates and those listed
    in a ``coordinates`` attribute (of a variable or of the group)."""
    names = {n for n, m in arrays.items() if m.get("dimension_names") == [n]}
    for listed in [attrs, *(m.get("attributes") or {} for m in arrays.values())]:
        names.update(str(listed.get("coordinates", "")).split())
    return names


def _variable(meta: dict, data: Any, encoding: dict) -> xr.Variable:
    """A variable as xarray's zarr backend makes it, before CF decoding."""
    attrs = dict(meta.get("attributes") or {})
    dtype = data.dtype
    if "_FillValue" in attrs:
        attrs["_FillValue"] = FillValueCoder.decode(attrs["_FillValue"], dtype)
    chunks = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    dims = tuple(meta.get("dimension_names") or ())
    encoding = {"chunks": chunks, "preferred_chunks": dict(zip(dims, chunks, strict=True)),
                "fill_value": _fill_value(meta, dtype), **encoding}  # fmt: skip
    return xr.Variable(dims, data, attrs, encoding)


def _lazy_variable(store: Any, key: str, meta: dict, token: str) -> xr.Variable:
    array = zarr_array(store, key, _array_metadata(json.dumps(meta, sort_keys=True)))
    data = dask.array.from_array(
        array, chunks=array.chunks, name=f"radflow-{key}-{token}", lock=False,
        meta=np.empty((0,) * array.ndim, array.dtype),
    )  # fmt: skip
    encoding = {"compressors": array.compressors, "filters": array.filters,
                "serializer": array.serializer, "shards": array.shards}  # fmt: skip
    return _variable(meta, data, encoding)


@functools.lru_cache(maxsize=1024)
def _array_metadata(document: str) -> Any:
    """zarr's (immutable) metadata object of an array document: the partitions of a store
    share a few dozen distinct ones among hundreds of arrays, and parsing one costs ~0.3 ms."""
    from zarr.core.metadata.v3 import ArrayV3Metadata

    with quiet_zarr_spec_warnings():
        return ArrayV3Metadata.from_dict(json.loads(document))


def zarr_store(path: str | os.PathLike) -> Any:
    """The zarr store object at `path` (local directory or object-store URL)."""
    from zarr.storage import FsspecStore, LocalStore

    p = location(path)
    return FsspecStore.from_url(zarr_url(p)) if is_url(p) else LocalStore(Path(p))


def zarr_array(store: Any, key: str, metadata: Any, config: dict | None = None) -> zarr.Array:
    """The array at `key` of `store` with the zarr `metadata` already known: no read."""
    from zarr.storage import StorePath

    return zarr.Array(zarr.AsyncArray(metadata, StorePath(store, key), config))


# zarr v3 data types read without zarr; others go through zarr.
_NUMERIC_TYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                  "uint64", "float32", "float64", "complex64", "complex128"}  # fmt: skip


def _numpy_dtype(meta: dict) -> np.dtype | None:
    data_type = meta["data_type"]
    if isinstance(data_type, str):
        return np.dtype(data_type) if data_type in _NUMERIC_TYPES else None
    if data_type.get("name") == "fixed_length_utf32":
        return np.dtype(f"U{data_type['configuration']['length_bytes'] // 4}")
    return None


def _fill_value(meta: dict, dtype: np.dtype) -> Any:
    """The zarr fill value of `meta`, as a numpy scalar of `dtype`."""
    value = meta.get("fill_value")
    if dtype.kind == "c":
        return dtype.type(complex(float(value[0]), float(value[1])))
    if dtype.kind == "f":
        return dtype.type(float(value))  # "NaN", "Infinity" and "-Infinity" parse too
    return dtype.type(value)


def _simple_chunk(meta: dict) -> tuple[np.dtype, Any] | None:
    """(dtype, decompressor) of an array stored as one chunk through the bytes codec and at
    most one zstd or blosc compressor (what radflow writes for small arrays); None for any
    other layout, which zarr then reads."""
    dtype = _numpy_dtype(meta)
    chunk_shape = meta["chunk_grid"]["configuration"]["chunk_shape"]
    codecs = meta["codecs"]
    if (
        dtype is None
        or meta["chunk_key_encoding"].get("name") != "default"
        or any(n > c for n, c in zip(meta["shape"], chunk_shape, strict=True))
        or not codecs
        or codecs[0]["name"] != "bytes"
        or len(codecs) > 2
    ):
        return None
    if (codecs[0].get("configuration") or {}).get("endian", "little") == "big":
        dtype = dtype.newbyteorder(">")
    if len(codecs) == 1:
        return dtype, None
    decompressor = {"zstd": numcodecs.Zstd, "blosc": numcodecs.Blosc}.get(codecs[1]["name"])
    return (dtype, decompressor()) if decompressor else None


def _separator(meta: dict) -> str:
    return (meta["chunk_key_encoding"].get("configuration") or {}).get("separator", "/")


def _read_small_arrays(p: Path, arrays: dict[str, dict]) -> dict[str, np.ndarray]:
    """Read whole arrays (store path -> zarr metadata) into memory, concurrently."""
    simple = {k: spec for k, m in arrays.items() if (spec := _simple_chunk(m))}
    chunk_keys = {
        k: f"{k}/c" + f"{_separator(arrays[k])}0" * len(arrays[k]["shape"]) for k in simple
    }
    raw = read_objects(p, list(chunk_keys.values()))
    out = {}
    for key, (dtype, decompressor) in simple.items():
        meta = arrays[key]
        shape = tuple(meta["shape"])
        blob = raw.get(chunk_keys[key])
        if blob is None:  # never written: all fill value
            out[key] = np.full(shape, _fill_value(meta, dtype.newbyteorder("=")), dtype)
            continue
        chunk = np.frombuffer(decompressor.decode(blob) if decompressor else blob, dtype)
        chunk = chunk.reshape(meta["chunk_grid"]["configuration"]["chunk_shape"])
        out[key] = chunk[tuple(slice(0, n) for n in shape)].astype(dtype.newbyteorder("="))
    others = [k for k in arrays if k not in simple]
    if others:
        with quiet_zarr_spec_warnings():
            group = zarr.open_group(zarr_url(p), mode="r", use_consolidated=True)
            out.update({k: group[k][...] for k in others})
    return out


def read_objects(path: str | os.PathLike, keys: list[str]) -> dict[str, bytes]:
    """The files (objects) at `keys` under `path` that exist, read concurrently."""
    p = location(path)
    if is_url(p):
        found = p.fs.cat([f"{p.path}/{k}" for k in keys], on_error="omit")
        return {k: found[f"{p.path}/{k}"] for k in keys if f"{p.path}/{k}" in found}

    def read(share: list[str]) -> dict[str, bytes]:
        out = {}
        for key in share:
            with contextlib.suppress(FileNotFoundError):
                out[key] = (Path(p) / key).read_bytes()
        return out

    found: dict[str, bytes] = {}
    for part in _in_shares(read, keys):
        found.update(part)
    return found


def write_objects(path: str | os.PathLike, files: Mapping[str, bytes]) -> None:
    """Write many files (objects) under `path` concurrently, making directories as needed."""
    p = location(path)
    if is_url(p):
        # fsspec's pipe sends a mapping's objects concurrently on async file systems (s3fs)
        p.fs.pipe({f"{p.path}/{key}": data for key, data in files.items()})
        return

    def write(share: list[tuple[str, bytes]]) -> None:
        for key, data in share:
            target = Path(p) / key
            try:
                target.write_bytes(data)
            except FileNotFoundError:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)

    _in_shares(write, list(files.items()))


def _in_shares(work: Any, items: list) -> list:
    """``work(share)`` for a share of `items` per thread: with one task per small file,
    submitting costs more than reading or writing it."""
    if len(items) <= _INLINE_ITEMS:
        return [work(items)] if items else []
    shares = [items[k::_READ_CONCURRENCY] for k in range(min(_READ_CONCURRENCY, len(items)))]
    return list(_io_pool().map(work, shares))


_READ_CONCURRENCY = 32
_INLINE_ITEMS = 4  # fewer files are read or written in the calling thread


@functools.cache
def _io_pool() -> ThreadPoolExecutor:
    # one pool for the process: a run calls this for every group it writes, and starting
    # 32 threads each time cost more than the writes
    return ThreadPoolExecutor(max_workers=_READ_CONCURRENCY, thread_name_prefix="radflow-io")


def _version(p: Path) -> tuple[str, Any]:
    """Where the store is and which version of it: its root metadata's modification time
    (locally) or entity tag (object stores; rewritten by every commit)."""
    root = p / _ROOT_METADATA
    if is_url(p):
        info = p.fs.info(root.path)
        return str(p), info.get("ETag") or info.get("LastModified") or info.get("mtime")
    return str(p.resolve()), root.stat().st_mtime_ns


# Datasets whose variables can be as large as the data: only their coordinates are loaded.
_LAZY_TYPES = (
    schema.TYPE_VISIBILITY,
    schema.TYPE_SPECTRUM,
    schema.TYPE_CALIBRATION_SOLUTION,
    schema.TYPE_BASELINE_TABLE,
)


def load_group(path: str | os.PathLike, group: str) -> xr.Dataset:
    """Read one group of a store (e.g. a solution under ``calibration/``) fully into memory."""
    p = location(path)
    name = group.strip("/")
    groups, group_attrs = _listing(p)
    if groups is not None and name in groups:
        return _datasets(p, {name: groups[name]}, group_attrs, set(), "")["/" + name]
    # a store being written (not consolidated yet), or a group added since
    with (
        quiet_zarr_spec_warnings(),
        xr.open_zarr(zarr_url(p), group=group, consolidated=False) as ds,
    ):
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
    possible (another file system) the chunk files are copied. On an object store the copy
    holds the metadata only: :func:`finish_update` then copies just the new chunks over.
    """
    final = location(path)
    if not (final / _ROOT_METADATA).exists():
        raise StoreError(f"{final}: not a radflow store (no zarr.json)")
    tmp = begin_output(final, overwrite=True)
    if is_url(final):
        fs, src, dst = final.fs, final.path.rstrip("/"), tmp.path.rstrip("/")
        meta = sorted(k for k in _relative_keys(fs, src) if _is_metadata(k))
        fs.copy([f"{src}/{k}" for k in meta], [f"{dst}/{k}" for k in meta])
    else:

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
    drop_consolidated(tmp)
    return tmp


def drop_consolidated(path: str | os.PathLike) -> None:
    """Remove the consolidated metadata from the root ``zarr.json`` of the store at `path`."""
    root = location(path) / _ROOT_METADATA
    meta = json.loads(root.read_text())
    meta.pop("consolidated_metadata", None)
    root.write_text(json.dumps(meta))


def add_variables(tmp: Path, group: str, ds: xr.Dataset) -> Any:
    """Write `ds`'s data variables as new arrays of `group` in `tmp`, and its attrs as the
    group's attrs; returns the dask write to compute. Coordinates are not rewritten."""
    from radflow.converters import zarr_layout

    return zarr_layout.write_dataset(tmp, group, ds.drop_vars(list(ds.coords)))


def add_group(tmp: Path, group: str, ds: xr.Dataset) -> Any:
    """Write `ds` as a new group of `tmp` (replacing one of that name); returns the dask write."""
    from radflow.converters import zarr_layout

    remove_tree(location(tmp) / group)
    return zarr_layout.write_dataset(tmp, group, ds)


def finish_update(tmp: Path, path: str | os.PathLike) -> Path:
    """Consolidate `tmp`'s metadata and swap it in for the store at `path`."""
    from radflow.converters import zarr_layout

    zarr_layout.consolidate(tmp)
    final = location(path)
    if is_url(final):
        _publish(location(tmp), final, replace=False)
        return final
    return commit_output(tmp, final)
