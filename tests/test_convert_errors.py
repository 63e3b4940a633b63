"""Bad input: each case gets a clear error naming the file and what is wrong, and no output."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from casacore.tables import table

import radflow
from radflow import schema
from radflow.converters.msv2_to_store import ConvertOptions, build_tree, convert
from radflow.converters.tables import MSError
from radflow.store import StoreError, partitions
from radflow.summary import overview, partition_table
from radflow.testing.lazy import forbid_compute


def test_not_an_ms(tmp_path):
    (tmp_path / "junk.ms").mkdir()
    with pytest.raises(MSError, match=r"junk\.ms: not a CASA table"):
        convert(tmp_path / "junk.ms", tmp_path / "o.ps.zarr")
    with pytest.raises(MSError, match="no such file"):
        convert(tmp_path / "missing.ms", tmp_path / "o.ps.zarr")
    assert not (tmp_path / "o.ps.zarr").exists()


def test_a_subtable_that_is_a_table_but_not_an_ms(vla_ms, tmp_path):
    with pytest.raises(MSError, match="not a MeasurementSet"):
        convert(vla_ms / "ANTENNA", tmp_path / "o.ps.zarr")


def test_missing_required_subtable(vla_ms, tmp_path):
    shutil.rmtree(vla_ms / "SPECTRAL_WINDOW")
    with pytest.raises(
        MSError, match=r"vla_j1008_36ghz\.ms: required subtable SPECTRAL_WINDOW is missing"
    ):
        convert(vla_ms, tmp_path / "o.ps.zarr")
    assert not (tmp_path / "o.ps.zarr").exists()


def test_corrupt_subtable(vla_ms, tmp_path):
    (vla_ms / "POLARIZATION" / "table.f0").write_bytes(b"\0" * 16)
    with pytest.raises(MSError, match="subtable POLARIZATION is corrupt"):
        convert(vla_ms, tmp_path / "o.ps.zarr")


def test_unknown_data_desc_id(vla_ms, tmp_path):
    with table(str(vla_ms), readonly=False, ack=False) as t:
        t.putcell("DATA_DESC_ID", 7, 3)
    with pytest.raises(
        MSError, match=r"rows 7 refer to DATA_DESC_ID \[3\].*DATA_DESCRIPTION has 1 rows"
    ):
        convert(vla_ms, tmp_path / "o.ps.zarr")


def test_duplicate_rows_are_named(vla_ms, tmp_path):
    with table(str(vla_ms), readonly=False, ack=False) as t:
        # make row 5 a copy of row 4's time and baseline
        for col in ("TIME", "ANTENNA1", "ANTENNA2"):
            t.putcell(col, 5, t.getcell(col, 4))
    with pytest.raises(MSError, match="duplicate rows .*: 4 and 5"):
        convert(vla_ms, tmp_path / "o.ps.zarr")


def test_existing_output_is_refused_then_replaced(vla_ms, tmp_path):
    out = tmp_path / "o.ps.zarr"
    convert(vla_ms, out)
    stamp = (out / "zarr.json").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="already exists"):
        convert(vla_ms, out)
    assert (out / "zarr.json").stat().st_mtime_ns == stamp  # untouched
    convert(vla_ms, out, overwrite=True)
    radflow.open(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_nan_samples_are_kept_flagged_and_reported(vla_ms, tmp_path):
    with table(str(vla_ms), readonly=False, ack=False) as t:
        data = t.getcell("DATA", 10)
        data[3, 1] = np.nan
        data[5, :] = complex(np.inf, 0)
        t.putcell("DATA", 10, data)
    tree = radflow.open(convert(vla_ms, tmp_path / "o.ps.zarr"))
    (node,) = partitions(tree).values()
    ds = node.ds
    rows = ds[schema.MSV2_ROW].values
    ti, bi = np.argwhere(rows == 10)[0]
    vis, flag = ds.VISIBILITY.values[ti, bi], ds.FLAG.values[ti, bi]
    assert np.isnan(vis[3, 1]) and np.isinf(vis[5]).all()  # kept as they were
    assert flag[3, 1] and flag[5].all() and flag.sum() == 5  # and flagged, nothing else
    assert partition_table(tree)[0]["nonfinite_flagged"] == 5
    assert overview(tree)["nonfinite_flagged"] == 5


def test_building_the_graph_reads_no_bulk_data(vla_ms):
    with forbid_compute():
        tree = build_tree(vla_ms, ConvertOptions(time_chunk=4))
    (node,) = partitions(tree).values()
    assert node.ds.VISIBILITY.chunks[0] == (4, 4, 4, 3)


def test_interrupted_write_leaves_nothing_that_opens(tmp_path):
    """Kill the converting process mid-write: the store path must not exist or not open."""
    from conftest import copy_ms

    ms = copy_ms("vla_j1008_36ghz.ms", tmp_path)
    out = tmp_path / "killed.ps.zarr"
    # One integration per chunk and a slowed writer make the write last long enough to kill.
    script = f"""
import time, dask
from radflow.converters import msv2_to_store as m
orig = m._read_block
def slow(*a, **k):
    time.sleep(0.2)
    return orig(*a, **k)
m._read_block = slow
with dask.config.set(scheduler="synchronous"):
    m.convert({str(ms)!r}, {str(out)!r}, options=m.ConvertOptions(time_chunk=1))
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while time.time() < deadline and not any(
        p.name.startswith(".killed") for p in tmp_path.iterdir()
    ):
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".killed")]
    assert leftovers, "the writer was killed before it started writing: the test proved nothing"
    for tmp in leftovers:
        with pytest.raises((StoreError, FileNotFoundError)):
            radflow.open(tmp)
