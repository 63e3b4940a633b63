"""The runner (``radflow run``) on real processes: a Dask scheduler and two workers on loopback,
a worker killed mid-run, failing blocks among good ones, re-runs (skip, --force, changed --set),
a killed run, and MSs converted in the same run. Outputs are compared bit for bit with a
single-process (threads) run of the same recipe."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zarr
from distributed import Client

import radflow
from radflow import schema
from radflow.cli import main
from radflow.converters.msv2_to_store import convert
from radflow.pipeline import load_recipe, run, summary_path
from radflow.store import partitions
from radflow.testing import simulate_single_dish

N_EB = 2
# one antenna, one target scan: few partitions (metadata costs most); 4096 channels x 100
# integrations give the workers enough to compute that one can be killed mid-run
SIM = {"mode": "ps", "n_antennas": 1, "n_target_scans": 1, "n_science_chan": 4096,
       "n_tsys_chan": 32, "n_on_per_scan": 100}  # fmt: skip
# attrs that record when something was made, not what: equal runs differ only there
VOLATILE = {schema.ROLE_DATE, "creation_date", schema.RUN_FINISHED_UTC}


def _mask(value):
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def contents(path: Path) -> dict:
    """Every array (dtype and values) and every group's attrs of a store, read with zarr."""
    out = {}

    def walk(group, prefix):
        out[f"{prefix}/@attrs"] = _mask(dict(group.attrs))
        for name, array in group.arrays():
            out[f"{prefix}/{name}"] = (str(array.dtype), array[...])
        for name, child in group.groups():
            walk(child, f"{prefix}/{name}")

    walk(zarr.open_group(str(path), mode="r"), "")
    return out


def assert_identical(got: dict, expected: dict, what: str) -> None:
    assert sorted(got) == sorted(expected), f"{what}: different arrays/groups"
    for key, value in expected.items():
        if key.endswith("@attrs"):
            assert got[key] == value, f"{what}: attrs of {key} differ"
        else:
            assert got[key][0] == value[0], f"{what}: dtype of {key}"
            a, b = got[key][1], value[1]
            nan_ok = a.dtype.kind in "fc"
            assert np.array_equal(a, b, equal_nan=nan_ok), f"{what}: values of {key} differ"


def copies(pristine: list[Path], dest: Path, n: int = N_EB) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copytree(s, dest / s.name)) for s in pristine[:n]]


def snapshot(path: Path) -> dict:
    """File names and the bytes of every metadata file: what 'untouched' means for a store."""
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*"))
    meta = {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("zarr.json")}
    return {"files": files, "meta": meta}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> list[Path]:
    """Two small simulated single-dish EBs, converted (eb0.ps.zarr ... beside eb0.ms ...)."""
    d = tmp_path_factory.mktemp("ebs")
    return [
        convert(simulate_single_dish(d / f"eb{k}.ms", seed=10 + k, **SIM).ms_path)
        for k in range(N_EB)
    ]


@pytest.fixture(scope="module")
def reference(pristine, tmp_path_factory) -> dict[str, dict]:
    """alma_sd over copies of the EBs in one process (threads): what every run must equal."""
    stores = copies(pristine, tmp_path_factory.mktemp("reference"))
    results = run(load_recipe("alma_sd"), stores, progress=False)
    assert [r.status for r in results] == ["done"] * N_EB, [r.error for r in results]
    return {s.name: contents(s) for s in stores}


class Loopback:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.scheduler_file = directory / "scheduler.json"
        self.scheduler = self._spawn(
            ["scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
             "127.0.0.1:0", "--scheduler-file", str(self.scheduler_file)],
            "scheduler",
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self.scheduler_file.exists():
            assert time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.1)
        self.address = json.loads(self.scheduler_file.read_text())["address"]
        self.workers: list[subprocess.Popen] = []
        for _ in range(2):
            self.add_worker()

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen:
        log = (self.directory / f"{name}-{time.monotonic_ns()}.log").open("w")
        return subprocess.Popen(
            [sys.executable, "-m", "dask", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killpg ends nanny and worker
        )

    def add_worker(self) -> None:
        self.workers.append(
            self._spawn(
                ["worker", "--scheduler-file", str(self.scheduler_file), "--host", "127.0.0.1",
                 "--nthreads", "1", "--memory-limit", "2GiB", "--no-dashboard"],
                "worker",
            )
        )  # fmt: skip
        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(sum(w.poll() is None for w in self.workers), timeout=60)

    def kill_worker_of(self, pid: int) -> None:
        """SIGKILL the `dask worker` process group (nanny and worker) that holds `pid`."""
        for w in self.workers:
            if w.pid == pid or w.pid in {p.pid for p in psutil.Process(pid).parents()}:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()
                return
        raise AssertionError(f"no dask worker process holds pid {pid}")

    def close(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in [*self.workers, self.scheduler]:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    cluster = Loopback(tmp_path_factory.mktemp("loopback"))
    yield cluster
    cluster.close()


def radflow_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "radflow.cli", *args]


def run_summary(directory: Path) -> dict:
    (path,) = sorted(directory.glob(f"{schema.RUN_SUMMARY_PREFIX}*.json"))
    return json.loads(path.read_text())


# ---- a real multi-process cluster ----


def test_cluster_run_equals_threads_run_bit_for_bit(pristine, reference, loopback, tmp_path):
    """A store and an MS (converted in the same run, into --outdir) on two worker processes."""
    (store,) = copies(pristine, tmp_path, 1)
    ms = pristine[1].with_name(pristine[1].name.replace(".ps.zarr", ".ms"))
    out = tmp_path / "out"
    proc = subprocess.run(
        radflow_cli("run", "alma_sd", str(store), str(ms), "--outdir", str(out),
                    "--scheduler", loopback.address, "--no-progress"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Dask dashboard: http://127.0.0.1:" in proc.stdout
    summary = run_summary(out)
    assert summary["counts"] == {"done": 2, "skipped": 0, "failed": 0}
    assert summary["scheduler"]["address"] == loopback.address
    assert summary["scheduler"]["workers"] == 2
    assert [b["converted"] for b in summary["blocks"]] == [False, True]
    converted = out / pristine[1].name
    for s in (store, converted):
        assert_identical(contents(s), reference[s.name], f"{s.name} (2 workers vs threads)")
        per_eb = json.loads(summary_path(s).read_text())
        assert per_eb["status"] == "done" and per_eb["groups"] == ["baselined", "corrected"]
        assert all(Path(t).exists() for t in per_eb["tables"])


def test_killing_a_worker_mid_run_still_gives_identical_outputs(
    pristine, reference, loopback, tmp_path
):
    stores = copies(pristine, tmp_path)
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(
        radflow_cli("run", "alma_sd", *map(str, stores), "--scheduler", loopback.address,
                    "--no-progress"),
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    killed = None
    with Client(loopback.address, timeout=30) as client:
        deadline = time.monotonic() + 180
        # all blocks are built (their update copies exist): the writes are being computed
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            building = [s for s in stores if not list(tmp_path.glob(f".{s.name}.tmp-*"))]
            busy = {w: k for w, k in client.processing().items() if k} if not building else {}
            if busy:
                victim = next(iter(busy))
                pid = client.run(os.getpid, workers=[victim])[victim]
                unfinished = [s for s in stores if not summary_path(s).exists()]
                loopback.kill_worker_of(pid)
                killed = victim
            time.sleep(0.02)
        assert killed is not None, "the run ended before a worker could be killed"
        assert unfinished, "the worker was killed after every block was written"
        assert proc.wait(timeout=300) == 0, (tmp_path / "run.log").read_text()
        assert killed not in client.scheduler_info()["workers"]
    for s in stores:
        assert_identical(contents(s), reference[s.name], f"{s.name} (worker killed)")
    assert not list(tmp_path.glob(".*.tmp-*"))
    loopback.add_worker()  # back to two workers for the next tests


@pytest.mark.parametrize("where", ["threads", "cluster"])
def test_failing_blocks_are_reported_and_the_others_written(
    where, pristine, reference, loopback, tmp_path, capsys
):
    good, bad = copies(pristine, tmp_path, 2)
    missing = tmp_path / "missing.ps.zarr"
    # a corrupt chunk of ON data: the graph builds, the computation fails for this block only
    on = next(
        name
        for name, node in partitions(radflow.open(bad)).items()
        if schema.INTENT_ON_SOURCE in node.attrs[schema.ATTR_PARTITION_INFO][schema.PI_INTENTS]
    )
    chunk = next(p for p in (bad / on / schema.SPECTRUM).rglob("*") if p.is_file() and
                 p.name != "zarr.json")  # fmt: skip
    chunk.write_bytes(b"not a zstd frame" * 8)
    before = snapshot(bad)
    where_args = ["--scheduler", loopback.address] if where == "cluster" else []
    code = main(["run", "alma_sd", str(good), str(bad), str(missing), "--no-progress",
                 *where_args])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "2 of 3 execution block(s) failed" in out
    assert_identical(contents(good), reference[good.name], f"{good.name} beside failures")
    assert snapshot(bad) == before  # the failed block's store is as it was
    assert not list(tmp_path.glob(".*.tmp-*"))
    summary = run_summary(tmp_path)
    assert summary["counts"] == {"done": 1, "skipped": 0, "failed": 2}
    by_eb = {Path(b["execution_block"]).name: b for b in summary["blocks"]}
    assert by_eb[good.name]["status"] == "done" and by_eb[good.name]["error"] is None
    assert by_eb[bad.name]["status"] == "failed" and by_eb[bad.name]["error"]
    assert "no such store" in by_eb[missing.name]["error"]
    assert json.loads(summary_path(bad).read_text())["status"] == "failed"
    if where == "cluster":
        return
    # the bad block fails again when computed alone; the good one is now skipped
    code = main(["run", "alma_sd", str(good), str(bad), "--no-progress", *where_args])
    assert code == 1
    assert [b["status"] for b in run_summary_latest(tmp_path)["blocks"]] == ["skipped", "failed"]


def run_summary_latest(directory: Path) -> dict:
    return json.loads(sorted(directory.glob(f"{schema.RUN_SUMMARY_PREFIX}*.json"))[-1].read_text())


# ---- re-runs ----


def test_rerun_skips_and_force_or_a_changed_recipe_runs_again(pristine, reference, tmp_path):
    (store,) = copies(pristine, tmp_path / "a", 1)
    name = store.name
    assert main(["run", "alma_sd", str(store), "--no-progress"]) == 0
    assert_identical(contents(store), reference[name], "first run")
    root_meta = (store / "zarr.json").read_bytes()

    assert main(["run", "alma_sd", str(store), "--no-progress"]) == 0
    assert run_summary_latest(store.parent)["blocks"][0]["status"] == "skipped"
    assert (store / "zarr.json").read_bytes() == root_meta  # not touched

    # --force: the previous run's groups are dropped first, the result equals a first run
    assert main(["run", "alma_sd", str(store), "--force", "--no-progress"]) == 0
    assert run_summary_latest(store.parent)["blocks"][0]["status"] == "done"
    assert_identical(contents(store), reference[name], "--force re-run")
    # the replaced version is deleted in the background, and gone when the run returns
    assert not list(store.parent.glob(f".{name}.*"))

    # a changed parameter runs again; a file named by a parameter is an input: changing its
    # content runs again too
    csv = tmp_path / "jyperk.csv"
    tree = radflow.open(store)
    ms_name = Path(tree.attrs[schema.ATTR_SOURCE_MS]["path"]).name
    antennas = sorted({str(n.attrs[schema.ATTR_PARTITION_INFO][schema.PI_ANTENNA][0])
                       for n in partitions(tree).values()})  # fmt: skip
    csv.write_text("MS,Antenna,Spwid,Polarization,Factor\n"
                   + "".join(f"{ms_name},{a},1,I,40.0\n" for a in antennas))  # fmt: skip
    factors = ["--set", f"jyperk.factors={csv}", "--no-progress"]
    assert main(["run", "alma_sd", str(store), *factors]) == 0
    assert run_summary_latest(store.parent)["blocks"][0]["status"] == "done"
    assert main(["run", "alma_sd", str(store), *factors]) == 0
    assert run_summary_latest(store.parent)["blocks"][0]["status"] == "skipped"
    csv.write_text(csv.read_text().replace("40.0", "41.0"))
    assert main(["run", "alma_sd", str(store), *factors]) == 0
    assert run_summary_latest(store.parent)["blocks"][0]["status"] == "done"
    tree = radflow.open(store)
    jy = [n.ds for n in partitions(tree).values() if "SPECTRUM_JY" in n.ds]
    assert jy
    ratio = (jy[0].SPECTRUM_JY / jy[0].SPECTRUM_BASELINED).where(jy[0].SPECTRUM_BASELINED != 0)
    np.testing.assert_allclose(float(ratio.mean()), 41.0, rtol=1e-5)
    # the earlier groups were replaced, not stacked: the arrays of a plain first run, plus jy
    got = contents(store)
    extra = {k for k in got if not k.endswith("@attrs")} - set(reference[name])
    assert extra and all(k.rsplit("/", 1)[-1].endswith("_JY") for k in extra), extra
    arrays = [k for k in reference[name] if not k.endswith("@attrs")]
    assert_identical({k: got[k] for k in arrays}, {k: reference[name][k] for k in arrays}, "jy")


def test_killed_run_leaves_store_untouched_and_rerun_finishes_it(pristine, reference, tmp_path):
    first, second = copies(pristine, tmp_path, 2)
    before = snapshot(second)
    log = (tmp_path / "run.log").open("w")
    # threads: blocks are prepared, computed and written one after another
    proc = subprocess.Popen(
        radflow_cli("run", "alma_sd", str(first), str(second), "--no-progress"),
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not (summary_path(first).exists() and list(tmp_path.glob(f".{second.name}.tmp-*"))):
        assert proc.poll() is None, (tmp_path / "run.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # while the second block is being built or computed
    assert proc.wait() == -signal.SIGKILL
    assert not summary_path(second).exists()
    stale = list(tmp_path.glob(f".{second.name}.tmp-*"))
    assert stale  # the killed run's update copy
    assert snapshot(second) == before  # the store itself is untouched
    assert schema.ATTR_RUN not in radflow.open(second).attrs

    assert main(["run", "alma_sd", str(first), str(second), "--no-progress"]) == 0
    blocks = run_summary_latest(tmp_path)["blocks"]
    assert [b["status"] for b in blocks] == ["skipped", "done"]  # the finished one is not redone
    assert any("interrupted run" in n for n in blocks[1]["notes"])
    assert not list(tmp_path.glob(".*.tmp-*"))
    for s in (first, second):
        assert_identical(contents(s), reference[s.name], f"{s.name} after the resumed run")
