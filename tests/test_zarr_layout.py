"""The converter's one-pass zarr writer makes the store xarray's ``to_zarr`` would make.

For every kind of MS in the tests (three real telescopes, the simulated single-dish,
interferometer and VLA switched-power EBs) the same tree is written both ways; every
``zarr.json`` (root and consolidated metadata included) must parse to the same document, and
the opened datasets must be identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import REAL_MS, copy_ms

from radflow.converters import zarr_layout
from radflow.converters.msv2_to_store import ConvertOptions, _encoding, build_tree
from radflow.store import quiet_zarr_spec_warnings
from radflow.testing import (
    simulate_interferometer,
    simulate_single_dish,
    simulate_vla_switched_power,
)

SIMULATED = {
    # small: xarray's to_zarr takes ~40 ms per array here, and an EB has hundreds
    "single_dish": lambda p: simulate_single_dish(
        p, mode="otfraster", n_antennas=1, n_science_chan=32, n_target_scans=1
    ),
    "interferometer": lambda p: simulate_interferometer(p, n_antennas=4, n_spw=1, n_chan=8),
    "vla_switched_power": lambda p: simulate_vla_switched_power(p, n_spw=1, n_scans=1),
}


@pytest.fixture(params=REAL_MS + sorted(SIMULATED))
def ms_path(request, tmp_path) -> Path:
    if request.param in SIMULATED:
        return Path(SIMULATED[request.param](tmp_path / f"{request.param}.ms").ms_path)
    return copy_ms(request.param, tmp_path)


def _documents(root: Path) -> dict[str, dict]:
    return {str(p.relative_to(root)): json.loads(p.read_text()) for p in root.rglob("zarr.json")}


def test_documents_and_data_equal_to_zarr(ms_path, tmp_path):
    tree = build_tree(ms_path, ConvertOptions(time_chunk=3, compression_level=5))
    encoding = _encoding(tree, 5)
    ours, theirs = tmp_path / "ours.zarr", tmp_path / "theirs.zarr"

    tree_layout = zarr_layout.layout(tree, encoding)
    zarr_layout.write(ours, tree_layout)
    # radflow names chunk files c.0.0 (not zarr's default c/0/0): ask to_zarr for the same
    reference_encoding = {path: {k: dict(v) for k, v in e.items()} for path, e in encoding.items()}
    for node in tree.subtree:
        for name in node.to_dataset(inherit=False).variables:
            reference_encoding.setdefault(node.path, {}).setdefault(name, {})[
                "chunk_key_encoding"
            ] = {"name": "default", "configuration": {"separator": "."}}
    with quiet_zarr_spec_warnings():
        tree.to_zarr(theirs, mode="w", consolidated=True, compute=False,
                     encoding=reference_encoding, zarr_format=3)  # fmt: skip

    mine, reference = _documents(ours), _documents(theirs)
    assert mine.keys() == reference.keys()
    for key in reference:
        assert mine[key] == reference[key], key
    # the consolidated listing is in the same order too: readers build the tree from it
    assert list(mine["zarr.json"]["consolidated_metadata"]["metadata"]) == list(
        reference["zarr.json"]["consolidated_metadata"]["metadata"]
    )

    # Lazy arrays are not written by either (their chunks read back as the fill value);
    # every in-memory array must read back equal.
    with quiet_zarr_spec_warnings():
        a = xr.open_datatree(ours, engine="zarr", consolidated=True, chunks=None)
        b = xr.open_datatree(theirs, engine="zarr", consolidated=True, chunks=None)
        for node in b.subtree:
            xr.testing.assert_identical(a[node.path].to_dataset(), node.to_dataset())
    assert tree_layout.lazy and all(
        [f.name for f in (ours / p).iterdir()] == ["zarr.json"] for p in tree_layout.lazy
    )
    # and the in-memory arrays' chunks are files beside their zarr.json, as zarr names them
    assert all(
        sorted(f.name for f in (ours / p).iterdir()) == ["c" + ".0" * len(m.shape), "zarr.json"]
        for p, m in tree_layout.nodes.items()
        if p not in tree_layout.lazy and hasattr(m, "shape") and 0 not in m.shape
    )


def test_open_arrays_write_whole_chunks(tmp_path):
    ms = simulate_interferometer(tmp_path / "if.ms", n_antennas=4, n_chan=8).ms_path
    tree = build_tree(ms, ConvertOptions(time_chunk=2))
    tree_layout = zarr_layout.layout(tree, _encoding(tree, 3))
    zarr_layout.write(tmp_path / "s.zarr", tree_layout)
    (path,) = [p for p in tree_layout.lazy if p.endswith("/VISIBILITY")][:1]
    target = zarr_layout.open_arrays(tmp_path / "s.zarr", tree_layout, [path])[path]
    values = (np.arange(np.prod(target.shape)) * (1 + 1j)).reshape(target.shape)
    target[:2] = values[:2]
    with quiet_zarr_spec_warnings():
        back = zarr.open_array(tmp_path / "s.zarr", path=path, mode="r")[:2]
    np.testing.assert_array_equal(back, values[:2].astype(np.complex64))


def test_updated_attributes_reach_the_consolidated_metadata(tmp_path):
    ms = simulate_interferometer(tmp_path / "if.ms", n_antennas=4, n_chan=8).ms_path
    tree = build_tree(ms)
    tree_layout = zarr_layout.layout(tree, _encoding(tree, 3))
    zarr_layout.write(tmp_path / "s.zarr", tree_layout)
    name = next(iter(tree.children))
    tree_layout.update_group_attrs(name, {"n": np.int64(7)})
    tree_layout.update_group_attrs("", {"sealed": True})
    zarr_layout.write_documents(tmp_path / "s.zarr", tree_layout, [name])
    with quiet_zarr_spec_warnings():
        root = zarr.open_group(tmp_path / "s.zarr", mode="r", use_consolidated=True)
        assert root.attrs["sealed"] is True
        assert root[name].attrs["n"] == 7
        assert root[name].attrs.keys() >= tree[name].attrs.keys()
    # the node's own document agrees with the consolidated copy
    own = json.loads((tmp_path / "s.zarr" / name / "zarr.json").read_text())
    assert own["attributes"]["n"] == 7


def _assert_trees_identical(ours: xr.DataTree, reference: xr.DataTree) -> None:
    assert [n.path for n in ours.subtree] == [n.path for n in reference.subtree]
    for node in reference.subtree:
        a, b = ours[node.path].to_dataset(inherit=False), node.to_dataset(inherit=False)
        assert list(a.data_vars) == list(b.data_vars) and list(a.coords) == list(b.coords)
        xr.testing.assert_identical(a.compute(), b.compute())
        for name, var in b.variables.items():
            assert a[name].dtype == var.dtype, (node.path, name)
            assert a[name].encoding["chunks"] == var.encoding["chunks"], (node.path, name)


def test_open_tree_reads_what_xarray_reads(ms_path, tmp_path):
    """radflow.open reads the tree from the consolidated metadata without xarray's zarr
    backend: same nodes, variables, coordinates, attributes, dtypes and values."""
    import radflow
    from radflow.converters.msv2_to_store import convert

    store = convert(ms_path, tmp_path / "eb.ps.zarr", options=ConvertOptions(time_chunk=3))
    ours = radflow.open(store)
    bulk = next(v for n in ours.subtree for k, v in n.data_vars.items() if k == "FLAG")
    assert bulk.chunks is not None  # bulk data stay lazy
    with quiet_zarr_spec_warnings():
        reference = xr.open_datatree(store, engine="zarr", consolidated=True, chunks=None)
        _assert_trees_identical(ours, reference)


def test_open_tree_reads_arrays_of_any_layout(tmp_path):
    """Arrays other tools write (several chunks, other codecs, never-written chunks) are read
    through zarr, and equal what xarray reads."""
    import radflow
    from radflow.converters.msv2_to_store import convert

    ms = simulate_interferometer(tmp_path / "if.ms", n_antennas=4, n_spw=1, n_chan=8).ms_path
    store = convert(ms, tmp_path / "eb.ps.zarr")
    extra = xr.Dataset(
        {
            "several_chunks": ("t", np.arange(10.0)),
            "uncompressed": ("t", np.arange(10, dtype=np.int32)),
            "big_endian": ("t", np.arange(10, dtype=">f8")),
        },
        attrs={"type": "extra"},
    ).chunk(t=4)
    encoding = {"uncompressed": {"compressors": None}}
    with quiet_zarr_spec_warnings():
        extra.to_zarr(store, group="extra", mode="w", encoding=encoding, zarr_format=3,
                      consolidated=False)  # fmt: skip
        unwritten = xr.Dataset({"empty": ("u", np.full(6, np.nan))}, attrs={"type": "extra"})
        unwritten.to_zarr(store, group="extra/unwritten", mode="w", zarr_format=3,
                          consolidated=False)  # fmt: skip
        zarr.consolidate_metadata(store)
        reference = xr.open_datatree(store, engine="zarr", consolidated=True, chunks=None)
    ours = radflow.open(store)
    np.testing.assert_array_equal(ours["extra"]["several_chunks"].values, np.arange(10.0))
    assert np.isnan(ours["extra/unwritten"]["empty"].values).all()
    _assert_trees_identical(ours, reference)
    # one group read whole, from the consolidated metadata too
    with quiet_zarr_spec_warnings(), xr.open_zarr(store, group="extra") as ds:
        xr.testing.assert_identical(radflow.store.load_group(store, "extra"), ds.load())


def test_consolidate_equals_zarr(tmp_path):
    """The runner's consolidation lists every node as zarr's does, in zarr's order."""
    import shutil

    from radflow.converters.msv2_to_store import convert

    ms = simulate_single_dish(tmp_path / "sd.ms", mode="ps", n_science_chan=16).ms_path
    ours = convert(ms, tmp_path / "ours.ps.zarr")
    extra = xr.Dataset({"x": ("t", np.arange(3.0))}, attrs={"note": np.nan})
    with quiet_zarr_spec_warnings():
        extra.to_zarr(ours, group="calibration/extra", mode="w", zarr_format=3,
                      consolidated=False)  # fmt: skip
    theirs = tmp_path / "theirs.ps.zarr"
    shutil.copytree(ours, theirs)
    zarr_layout.consolidate(ours)
    with quiet_zarr_spec_warnings():
        zarr.consolidate_metadata(theirs)
    mine = json.loads((ours / "zarr.json").read_text())
    reference = json.loads((theirs / "zarr.json").read_text())
    assert "calibration/extra/x" in mine["consolidated_metadata"]["metadata"]
    assert json.dumps(mine, sort_keys=True) == json.dumps(reference, sort_keys=True)
    assert list(mine["consolidated_metadata"]["metadata"]) == list(
        reference["consolidated_metadata"]["metadata"]
    )
