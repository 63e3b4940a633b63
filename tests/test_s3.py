"""Stores on an object store (``s3://`` URLs through fsspec/s3fs), against a local S3 server
(moto's server mode) started here: conversion, opening, a multi-EB run that reads its inputs
from and writes its results to the object store (threads, and a Dask cluster of two worker
processes), skipping and forced re-runs, failures, and export back to an MS. Every result is
compared bit for bit with the same work done on local stores."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import s3fs
from moto import server as moto_server
from test_runner import assert_identical, contents

import radflow
from radflow import schema
from radflow.converters.msv2_to_store import convert
from radflow.converters.store_to_msv2 import export
from radflow.pipeline import load_recipe, run
from radflow.store import StoreError, location, partitions
from radflow.testing import simulate_single_dish

BUCKET = "radflow-test"
SIM = {"mode": "ps", "n_antennas": 1, "n_target_scans": 1, "n_science_chan": 256,
       "n_tsys_chan": 32, "n_on_per_scan": 20}  # fmt: skip
RECIPE = ("alma_sd", ["baseline.maskmode=list", "jyperk.factors={PM01: {1: 40.0}}"])


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on loopback, reached through fsspec's usual environment variables (so
    Dask worker processes started from here reach it too); yields the s3fs file system."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    yield fs
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture(scope="module")
def mss(tmp_path_factory):
    d = tmp_path_factory.mktemp("s3ms")
    return [simulate_single_dish(d / f"eb{k}.ms", seed=k + 1, **SIM).ms_path for k in range(2)]


@pytest.fixture(scope="module")
def pristine(s3, mss):
    """The EBs converted to the object store once (conversion there is slow: zarr creates
    arrays one request at a time); tests work on server-side copies."""
    from radflow.cli import main

    stores = [url(s3, f"pristine/eb{k}.ps.zarr") for k in range(len(mss))]
    for ms, store in zip(mss, stores, strict=True):
        assert main(["convert", str(ms), "-o", store]) == 0  # `radflow convert EB.ms -o s3://...`
    return stores


@pytest.fixture(scope="module")
def expected(mss, tmp_path_factory) -> list[dict]:
    """The recipe's results on local stores, read with zarr."""
    d = tmp_path_factory.mktemp("s3ref")
    stores = [convert(ms, d / f"eb{k}.ps.zarr") for k, ms in enumerate(mss)]
    results = run(load_recipe(*RECIPE), stores, progress=False, write_summary=False)
    assert [r.status for r in results] == [schema.STATUS_DONE] * len(stores)
    return [contents(s) for s in stores]


def copies(fs, pristine: list[str], prefix: str) -> list[str]:
    out = []
    for src in pristine:
        dst = f"s3://{BUCKET}/{prefix}/{src.rsplit('/', 1)[1]}"
        fs.copy(src, dst, recursive=True)
        out.append(dst)
    fs.invalidate_cache()
    return out


def url(fs, name: str) -> str:
    fs.invalidate_cache()
    return f"s3://{BUCKET}/{name}"


def keys(fs, prefix: str) -> list[str]:
    fs.invalidate_cache()
    return sorted(fs.find(f"{BUCKET}/{prefix}"))


def test_convert_open_and_export(s3, mss, pristine, tmp_path):
    local = convert(mss[0], tmp_path / "eb0.ps.zarr")
    remote = pristine[0]
    assert_identical(contents(remote), contents(local), "store converted to S3")
    # nothing left beside it: the temporary prefix was copied over and removed
    assert {k.split("/")[2] for k in keys(s3, "pristine")} == {"eb0.ps.zarr", "eb1.ps.zarr"}

    tree = radflow.open(remote)
    assert sorted(partitions(tree)) == sorted(partitions(radflow.open(local)))
    for name, node in partitions(tree).items():
        ds = node.to_dataset(inherit=False)
        assert ds[schema.SPECTRUM].chunks is not None  # lazy
        expected = radflow.open(local)[name].to_dataset(inherit=False)
        np.testing.assert_array_equal(ds[schema.SPECTRUM].values, expected[schema.SPECTRUM].values)

    with pytest.raises(FileExistsError, match="already exists"):
        convert(mss[0], remote)
    # written back from the S3 store into a copy of the MS whose FLOAT_DATA was zeroed: the
    # original bytes come back
    from casacore.tables import table

    copy = Path(shutil.copytree(mss[0], tmp_path / "back.ms"))
    with table(str(copy), readonly=False, ack=False) as t:
        original = t.getvarcol("FLOAT_DATA")  # cell shapes differ between spws
        t.putvarcol("FLOAT_DATA", {k: np.zeros_like(v) for k, v in original.items()})
    assert export(remote, copy, group="base", column="FLOAT_DATA") == "FLOAT_DATA"
    with table(str(copy), ack=False) as t:
        back = t.getvarcol("FLOAT_DATA")
    assert back.keys() == original.keys()
    assert all(back[k].tobytes() == original[k].tobytes() for k in original)


def test_failed_conversion_leaves_nothing(s3, tmp_path):
    bad = tmp_path / "bad.ms"
    bad.mkdir()
    with pytest.raises(Exception):  # noqa: B017 - whatever casacore raises for a non-table
        convert(bad, url(s3, "bad/bad.ps.zarr"))
    assert keys(s3, "bad") == []
    with pytest.raises(FileNotFoundError, match="no such store"):
        radflow.open(url(s3, "bad/bad.ps.zarr"))


def test_unsealed_prefix_is_refused(s3):
    s3.pipe(f"{BUCKET}/half/eb.ps.zarr/p0/SPECTRUM/c/0/0/0/0", b"x")
    with pytest.raises(StoreError, match="no zarr.json"):
        radflow.open(url(s3, "half/eb.ps.zarr"))


def test_multi_eb_run_on_s3(s3, pristine, expected):
    stores = copies(s3, pristine, "run")
    before = [keys(s3, f"run/eb{k}.ps.zarr") for k in range(2)]

    results = run(load_recipe(*RECIPE), stores, progress=False)
    assert [r.status for r in results] == [schema.STATUS_DONE] * 2, [r.error for r in results]
    for k, s in enumerate(stores):
        assert_identical(contents(s), expected[k], f"run on {s}")
        # the inputs' chunks are untouched: the update added objects only
        assert set(before[k]) < set(keys(s3, f"run/eb{k}.ps.zarr"))
    # side products beside the stores, in the bucket: baseline tables, per-EB and run summaries
    listing = {k.rsplit("/", 1)[1] for k in keys(s3, "run") if k.count("/") == 2}
    assert {"eb0.baseline.csv", "eb0.baseline.txt", "eb0.radflow.json"} <= listing
    assert any(n.startswith(schema.RUN_SUMMARY_PREFIX) for n in listing)
    assert not any(n.startswith(".") for n in listing), "temporary prefixes left behind"
    summary = json.loads(location(results[0].summary).read_text())
    assert summary["status"] == schema.STATUS_DONE and summary["store"] == stores[0]

    # the same recipe again: skipped; forced: the same results, no stale objects
    again = run(load_recipe(*RECIPE), stores, progress=False, write_summary=False)
    assert [r.status for r in again] == [schema.STATUS_SKIPPED] * 2
    after_first = [keys(s3, f"run/eb{k}.ps.zarr") for k in range(2)]
    forced = run(load_recipe(*RECIPE), stores, progress=False, force=True, write_summary=False)
    assert [r.status for r in forced] == [schema.STATUS_DONE] * 2
    for k, s in enumerate(stores):
        assert_identical(contents(s), expected[k], f"forced re-run on {s}")
        assert keys(s3, f"run/eb{k}.ps.zarr") == after_first[k]


def test_run_on_worker_processes_reads_and_writes_s3(s3, pristine, expected):
    """Worker processes read the inputs from and write the results to the object store."""
    from distributed import Client, LocalCluster

    stores = copies(s3, pristine, "dist")
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                     memory_limit="1GiB") as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        results = run(load_recipe(*RECIPE), stores, client=client, progress=False)
    assert [r.status for r in results] == [schema.STATUS_DONE] * 2, [r.error for r in results]
    for k, s in enumerate(stores):
        assert_identical(contents(s), expected[k], f"distributed run on {s}")


def test_failed_block_leaves_s3_store_unchanged(s3, pristine):
    (s,) = copies(s3, pristine[:1], "fail")
    before = contents(s)
    listing = keys(s3, "fail/eb0.ps.zarr")
    # no Jy/K factor for the EB's antenna: the block fails when its graph is built
    results = run(load_recipe("alma_sd", ["jyperk.factors={XX99: {1: 40.0}}"]), [s],
                  progress=False, write_summary=False)  # fmt: skip
    assert results[0].status == schema.STATUS_FAILED and "PM01" in results[0].error
    assert_identical(contents(s), before, "store after a failed run")
    assert keys(s3, "fail/eb0.ps.zarr") == listing
    assert not [k for k in keys(s3, "fail") if k.split("/")[2].startswith(".")]
    summary = json.loads(location(results[0].summary).read_text())
    assert summary["status"] == schema.STATUS_FAILED and "PM01" in summary["error"]


def test_missing_store_on_s3_fails_cleanly(s3, tmp_path, monkeypatch, capsys):
    from radflow.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["run", "alma_sd", url(s3, "none/eb.ps.zarr"), "--no-progress"]) == 1
    out = capsys.readouterr().out.replace("\n", "")
    assert "no such store" in out
    assert list(tmp_path.iterdir()) == []  # nothing written locally (no 's3:' directory)


def test_cli_info(s3, pristine, capsys):
    from radflow.cli import main

    assert main(["info", pristine[0]]) == 0
    out = capsys.readouterr().out
    assert pristine[0] in out and "OBSERVE_TARGET#ON_SOURCE" in out


def test_run_converts_ms_into_s3(s3, mss, expected, tmp_path, monkeypatch):
    """`radflow run RECIPE EB.ms --outdir s3://...`: the MS is converted into the bucket in the
    same graph as its reduction."""
    from radflow.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["run", RECIPE[0], *sum([["--set", o] for o in RECIPE[1]], []), "--no-progress"]
    assert main([*args, str(mss[1]), "--outdir", url(s3, "cli")]) == 0
    converted = url(s3, "cli/eb1.ps.zarr")
    assert_identical(contents(converted), expected[1], "MS converted and reduced into S3")
    assert list(tmp_path.iterdir()) == []  # nothing written locally


def test_ms_input_on_object_store_is_refused(s3):
    results = run(load_recipe(*RECIPE), [url(s3, "x/eb.ms")], progress=False, write_summary=False)
    assert results[0].status == schema.STATUS_FAILED
    assert "file system" in results[0].error and "s3://" in results[0].error


def test_location_keeps_urls_and_paths(tmp_path):
    assert str(location("s3://b/x/eb.ps.zarr").with_name("y")) == "s3://b/x/y"
    assert isinstance(location(tmp_path / "a"), Path)
    assert location(str(tmp_path / "a")) == tmp_path / "a"
