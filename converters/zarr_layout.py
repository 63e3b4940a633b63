"""Write a new DataTree's zarr v3 store in one pass: the fast path behind ``radflow convert``.

``DataTree.to_zarr`` creates each array through zarr's synchronous API: about three event-loop
round trips per array (create, attributes, data), each blocking on the file system. A store
has ~40 arrays per partition (the bulk visibilities plus the small per-partition sub-datasets),
so a 1 GB MS with 28 partitions spent 6-7 s there, more than reading and compressing its data.

Here the same documents are made in memory, with xarray's own encoders (CF conventions, fill
values, coordinates) and zarr's own metadata classes (codec and data-type JSON), then every
``zarr.json`` and every in-memory array's single chunk is written concurrently, and the root
``zarr.json`` last, with the consolidated metadata already in it. The lazy (dask) arrays'
data are left to the caller, who writes whole chunks into :func:`open_arrays`.
``tests/test_zarr_layout.py`` checks that every document equals what ``to_zarr`` writes for
the same tree.
"""

from __future__ import annotations

import functools
import json
import os
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import dask
import dask.array
import numcodecs
import numpy as np
import xarray as xr
import zarr
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from xarray import conventions
from xarray.backends.zarr import (
    FillValueCoder,
    encode_zarr_attr_value,
    encode_zarr_variable,
    extract_zarr_variable_encoding,
)
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.core.dtype import ZDType, get_data_type_from_native_dtype
from zarr.core.group import ConsolidatedMetadata, GroupMetadata
from zarr.core.metadata.v3 import ArrayV3Metadata

from radflow.store import (
    is_url,
    location,
    quiet_zarr_spec_warnings,
    read_objects,
    write_objects,
    zarr_array,
    zarr_store,
)

# zarr's default codec for arrays given no compressor; xarray writes in-memory arrays with it.
_SMALL_ARRAY_LEVEL = 0
# Chunk files named c.0.0.0 in their array's directory, rather than zarr's default c/0/0/0:
# a 4-d array then needs one directory, not one per chunk and level (a single-dish EB had 13 000
# directories for 10 000 files, and every copy and removal of a store walks them all).
_CHUNK_SEPARATOR = "."
_CHUNK_KEY_ENCODING = {"name": "default", "configuration": {"separator": _CHUNK_SEPARATOR}}


@dataclass
class TreeLayout:
    """The zarr documents of a DataTree, in memory.

    ``nodes`` maps each node's path in the store (``"p0"``, ``"p0/FLAG"``; the root is kept
    apart in ``root_attrs``) to its zarr metadata; ``chunks`` holds the encoded single chunk of
    every in-memory array; ``lazy`` the paths of the arrays whose data (dask arrays in the
    tree) are left for the caller to write.
    """

    root_attrs: dict[str, Any]
    nodes: dict[str, ArrayV3Metadata | GroupMetadata] = field(default_factory=dict)
    chunks: dict[str, bytes] = field(default_factory=dict)
    lazy: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._dicts: dict[str, dict[str, Any]] = {}

    def update_group_attrs(self, path: str, attrs: Mapping[str, Any]) -> None:
        """Add `attrs` to the attributes of the group at `path` (``""``: the root)."""
        encoded = {k: encode_zarr_attr_value(v) for k, v in attrs.items()}
        if path == "":
            self.root_attrs = {**self.root_attrs, **encoded}
            return
        group = self.nodes[path]
        self.nodes[path] = replace(group, attributes={**group.attributes, **encoded})
        self._dicts.pop(path, None)

    def document(self, path: str) -> bytes:
        """The ``zarr.json`` of the node at `path`; for the root (``""``) with the whole
        store's consolidated metadata, as ``zarr.consolidate_metadata`` writes it."""
        if path != "":
            return _json(self._dict(path))
        root = GroupMetadata(
            attributes=self.root_attrs,
            zarr_format=3,
            consolidated_metadata=ConsolidatedMetadata(metadata={}),
        ).to_dict()
        # zarr gives every group listed an empty consolidated block of its own
        ordered = sorted(self.nodes, key=_listing_order)
        root["consolidated_metadata"]["metadata"] = {
            p: {**self._dict(p), "consolidated_metadata": _EMPTY_CONSOLIDATED}
            if isinstance(self.nodes[p], GroupMetadata)
            else self._dict(p)
            for p in ordered
        }
        return _json(root)

    def _dict(self, path: str) -> dict[str, Any]:
        # each array's dict goes into its own document and into the root's listing
        if path not in self._dicts:
            with quiet_zarr_spec_warnings():
                self._dicts[path] = self.nodes[path].to_dict()
        return self._dicts[path]


_EMPTY_CONSOLIDATED = ConsolidatedMetadata(metadata={}).to_dict()


def _json(document: dict[str, Any]) -> bytes:
    # No indentation (zarr indents by 2): json then uses its C encoder, 5-10x faster on the
    # root document, which lists every node of the store. NaN as zarr writes it.
    return json.dumps(document, allow_nan=True).encode()


def layout(
    tree: xr.DataTree,
    encoding: Mapping[str, Mapping[str, dict]] | None = None,
    *,
    prefix: str = "",
) -> TreeLayout:
    """The zarr layout of `tree` as ``tree.to_zarr(..., zarr_format=3, encoding=encoding)``
    would write it: same documents, same attributes. Dask variables are chunked as their dask
    chunks (or ``chunks`` in their encoding) and compressed with their ``compressors``;
    in-memory ones become one chunk each.

    prefix
        Place the tree at this group of the store (its root becomes that group's node).
    """
    with quiet_zarr_spec_warnings():
        return _layout(tree, encoding or {}, prefix.strip("/"))


def _layout(
    tree: xr.DataTree, encoding: Mapping[str, Mapping[str, dict]], prefix: str
) -> TreeLayout:
    out = TreeLayout(root_attrs={})
    zstd = numcodecs.Zstd(level=_SMALL_ARRAY_LEVEL)
    for node in tree.subtree:
        group = "/".join(p for p in (prefix, node.path.strip("/")) if p)
        variables, attrs = conventions.encode_dataset_coordinates(node.to_dataset(inherit=False))
        group_attrs = {k: encode_zarr_attr_value(v) for k, v in attrs.items()}
        if group:
            out.nodes[group] = GroupMetadata(attributes=group_attrs, zarr_format=3)
        else:
            out.root_attrs = group_attrs
        node_encoding = encoding.get(node.path, {})
        for name, var in variables.items():
            path = f"{group}/{name}" if group else str(name)
            if name in node_encoding:
                var.encoding = dict(node_encoding[name])
            meta, values = _array(var, name, checked=name in node_encoding)
            out.nodes[path] = meta
            if values is None:
                out.lazy.append(path)
            elif values.size:
                key = f"{path}/c" + f"{_CHUNK_SEPARATOR}0" * values.ndim
                out.chunks[key] = zstd.encode(values.tobytes())
    return out


def _array(var: xr.Variable, name: Any, checked: bool) -> tuple[ArrayV3Metadata, np.ndarray | None]:
    """Zarr metadata of one variable, as xarray's ``ZarrStore.set_variables`` makes it, and
    its encoded values when they are in memory (None for a dask array)."""
    v = encode_zarr_variable(var, name=name, zarr_format=3)
    attrs = v.attrs.copy()
    fill = v.encoding.pop("fill_value", None)
    if fill is None and v.dtype.kind == "f":
        fill = np.nan  # xarray's default for floats, where zarr's is 0
    if "_FillValue" in attrs:
        value = attrs.pop("_FillValue")
        if value is not None:
            attrs["_FillValue"] = FillValueCoder.encode(value, v.dtype)
    enc = extract_zarr_variable_encoding(v, raise_on_invalid=checked, name=name, zarr_format=3)
    dtype = _zarr_dtype(v.dtype)
    lazy = v.chunks is not None
    if lazy:
        chunk_shape = tuple(enc["chunks"])
        compressors = list(enc.get("compressors") or [])
        values = None
    else:
        chunk_shape = tuple(max(1, n) for n in v.shape)
        compressors = [ZstdCodec(level=_SMALL_ARRAY_LEVEL, checksum=False)]
        values = np.ascontiguousarray(v.values)
        if values.dtype.byteorder == ">":
            values = values.astype(values.dtype.newbyteorder("<"))
    meta = ArrayV3Metadata(
        shape=v.shape,
        data_type=dtype,
        chunk_grid={"name": "regular", "configuration": {"chunk_shape": list(chunk_shape)}},
        chunk_key_encoding=_CHUNK_KEY_ENCODING,
        fill_value=dtype.default_scalar() if fill is None else fill,
        codecs=[BytesCodec(), *compressors],
        attributes={k: encode_zarr_attr_value(x) for k, x in attrs.items()},
        dimension_names=v.dims,
    )
    return meta, values


@functools.cache
def _zarr_dtype(dtype: np.dtype) -> ZDType:
    return get_data_type_from_native_dtype(dtype)


def write(path: str | os.PathLike, tree_layout: TreeLayout, *, root: bool = True) -> None:
    """Write every document and in-memory chunk of `tree_layout` under `path` (a directory
    or object-store prefix), concurrently; then the root ``zarr.json`` (unless `root` is
    False: nodes added to an existing store, whose root is consolidated later)."""
    files = {f"{p}/zarr.json": tree_layout.document(p) for p in tree_layout.nodes}
    files.update(tree_layout.chunks)
    write_objects(path, files)
    if root:
        write_objects(path, {"zarr.json": tree_layout.document("")})


def write_dataset(path: str | os.PathLike, group: str, ds: xr.Dataset) -> Any:
    """Write `ds` as the group `group` of the existing store at `path`: its attributes become
    the group's, its variables new arrays beside those already there (as ``ds.to_zarr(path,
    group=group, mode="a")`` does). Returns the uncomputed Dask write of its dask arrays."""
    tree_layout = layout(xr.DataTree(ds), prefix=group)
    write(path, tree_layout, root=False)
    # parent groups missing (``calibration`` for ``calibration/tsys``) are made empty, as zarr
    # makes them
    parents = group.strip("/").split("/")[:-1]
    where = location(path)
    missing = ["/".join(parents[: k + 1]) for k in range(len(parents))]
    missing = [g for g in missing if not (where / g / "zarr.json").exists()]
    write_objects(path, {f"{g}/zarr.json": _json(GroupMetadata().to_dict()) for g in missing})
    if not tree_layout.lazy:
        return dask.delayed(None)
    targets = open_arrays(path, tree_layout, tree_layout.lazy)
    sources = {p: ds[p.rpartition("/")[2]].data for p in tree_layout.lazy}
    return _store_chunks(sources, targets, f"{location(path).name}/{group}")


def _write_chunk(values: np.ndarray, target: zarr.Array, region: tuple[slice, ...]) -> None:
    target[region] = values


def _store_chunks(
    sources: Mapping[str, dask.array.Array], targets: Mapping[str, zarr.Array], where: str
) -> Any:
    """One task per dask chunk writing it into its zarr chunk (layout took the zarr chunks from
    the dask chunks: no two tasks share a chunk), and one Delayed over all of them.

    What ``dask.array.store`` builds, without its tokenizing of every source and target (the
    graph of a whole recipe): that took about half of the time of preparing a run's writes.
    """
    token = dask.base.tokenize(where, uuid.uuid4().hex)
    layers: dict[str, Any] = {}
    dependencies: dict[str, set[str]] = {}
    written = []
    for k, (path, source) in enumerate(sources.items()):
        name = f"write-{token}-{k}"
        starts = [np.cumsum((0, *c)).tolist() for c in source.chunks]
        layer = {}
        for index in np.ndindex(*source.numblocks):
            region = tuple(slice(s[i], s[i + 1]) for s, i in zip(starts, index, strict=True))
            layer[(name, *index)] = (_write_chunk, (source.name, *index), targets[path], region)
        layers[name] = layer
        dependencies[name] = set(source.__dask_layers__())
        written.extend(layer)
    done = f"written-{token}"
    layers[done] = {done: (len, written)}
    dependencies[done] = set(layers) - {done}
    graph = HighLevelGraph(layers, dependencies)
    graph = HighLevelGraph.merge(graph, *(s.__dask_graph__() for s in sources.values()))
    return Delayed(done, graph)


def consolidate(path: str | os.PathLike) -> None:
    """Rewrite the root ``zarr.json`` of the store at `path` with the consolidated metadata of
    every node below it, as ``zarr.consolidate_metadata`` does, but reading the nodes'
    documents concurrently as plain files (zarr opens each node through its event loop)."""
    where = location(path)
    if is_url(where):
        keys = [k[len(where.path) :].lstrip("/") for k in where.fs.find(where.path)]
    else:
        keys = [
            os.path.relpath(os.path.join(d, "zarr.json"), where)
            for d, _, files in os.walk(where)
            if "zarr.json" in files
        ]
    keys = [k for k in keys if k.endswith("zarr.json") and k != "zarr.json"]
    documents = read_objects(path, keys)
    listing = {}
    for key in sorted(keys, key=lambda k: _listing_order(k[: -len("/zarr.json")])):
        node = json.loads(documents[key])
        if node.get("node_type") == "group":
            node = {**node, "consolidated_metadata": _EMPTY_CONSOLIDATED}
        listing[key[: -len("/zarr.json")]] = node
    root = json.loads(read_objects(path, ["zarr.json"])["zarr.json"])
    root["consolidated_metadata"] = {**_EMPTY_CONSOLIDATED, "metadata": listing}
    write_objects(path, {"zarr.json": _json(root)})


def _listing_order(node: str) -> tuple[int, str]:
    # zarr's order of consolidated metadata: by depth, then by case-folded name
    return node.count("/"), unicodedata.normalize("NFKC", node).casefold()


def write_documents(path: str | os.PathLike, tree_layout: TreeLayout, nodes: list[str]) -> None:
    """Rewrite the documents of `nodes`, then the root (with its consolidated metadata)."""
    write_objects(path, {f"{p}/zarr.json": tree_layout.document(p) for p in nodes})
    write_objects(path, {"zarr.json": tree_layout.document("")})


def open_arrays(
    path: str | os.PathLike, tree_layout: TreeLayout, arrays: list[str]
) -> dict[str, zarr.Array]:
    """The arrays at `arrays` (paths in the store) of the store :func:`write` made from
    `tree_layout` at `path`, ready for whole-chunk writes; made from the metadata in memory,
    without reading the store."""
    store = zarr_store(path)
    # every chunk is written whole and holds data: skip zarr's comparison with the fill value
    config = {"write_empty_chunks": True}
    return {p: zarr_array(store, p, tree_layout.nodes[p], config) for p in arrays}


__all__ = [
    "TreeLayout",
    "layout",
    "open_arrays",
    "write",
    "write_dataset",
    "write_documents",
    "consolidate",
]
