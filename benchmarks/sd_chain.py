"""Single-dish chain benchmark: the whole ``alma_sd`` recipe on one EB, radflow vs CASA.

What is measured
----------------
For ``--size-gb`` (GB of FLOAT_DATA, 1 GB = 1e9 bytes) a position-switched (``ps``) ALMA
total-power EB is simulated with :func:`radflow.testing.simulate_single_dish` (4 antennas,
4 basebands, 4096 science channels x 2 polarizations per spw, target scans of 200 ON + 30 OFF
one-second integrations: about 120.6 MB of FLOAT_DATA per target scan; the number of target
scans is chosen to reach the size). The MS is cached in ``--workdir`` and reused by later runs
with the same size. It is converted once to a radflow store (``radflow convert``; timed and
printed apart, not part of the chain figures). Then, on a fresh copy of that store every time
(``radflow run`` adds groups into the store), the whole ``alma_sd`` recipe (tsys -> sky ->
sdcal -> baseline -> jyperk, what ``radflow run alma_sd EB.ps.zarr [--workers N]`` does) runs
in a fresh Python process for each contender:

* ``radflow-threads``: Dask's threaded scheduler in the process (``--workers 0``);
* ``radflow-1worker`` / ``radflow-2workers``: a ``LocalCluster`` of 1 / 2 worker processes
  (one thread each, :func:`radflow.cluster.dask_client` defaults, 4 GiB per worker);
* ``casa``: when ``/work/casa-venv/bin/python`` (``--casa-python``) imports ``casatasks``:
  ``sdcal(calmode="ps,tsys,apply")`` then ``sdbaseline`` with the recipe's baseline settings
  (poly order 1, ``maskmode="auto"``, thresh 5, avg_limit 4, minwidth 4, csv table, baselined
  spectra to a new MS), on a fresh copy of the MS. CASA runs on one thread; compare it with
  ``radflow-1worker`` as well as with the parallel contenders. The spw map and the science spws
  come from ``benchmarks/casa_sd_reference.py``.

At ``--small-gb`` (default 0.5; 0 skips it) a second, smaller EB runs with threads only, to
show whether the peak memory depends on the EB size.

How
---
``wall s`` is the wall time of the whole child process (interpreter start, imports, cluster
start-up, the chain, writing the results, exit): what a user waits for ``radflow run``.
``work s`` is the part inside the child that calls ``radflow.pipeline.run`` (with the
``dask_client`` start-up and shut-down), resp. ``sdcal`` + ``sdbaseline``. MB/s = FLOAT_DATA
bytes of the MS / 1e6 / wall s. Peak RSS is that of the whole process tree: the parent polls
the child and all its descendants (Dask scheduler, nanny and worker processes) with psutil
every ``--poll`` seconds and keeps the largest sum of their RSS (and at least the child's own
VmHWM). "vs CASA" = the contender's MB/s / CASA's MB/s (> 1: radflow is faster). The store
(resp. the MS) is read once before every run, so every contender starts with a warm page cache.
With ``--repeat N`` every contender runs N times: times are medians, the peak RSS the largest.

Usage::

    python benchmarks/sd_chain.py                      # 2 GB EB (+ 0.5 GB, threads), CASA if any
    python benchmarks/sd_chain.py --size-gb 1 --small-gb 0 --contenders threads,1worker
    python benchmarks/sd_chain.py --casa-python none   # radflow only

The top level imports only the standard library (the CASA child runs this file with CASA's
python, which has neither radflow nor psutil).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from _common import (
    Result,
    casa_available,
    combine_runs,
    dir_bytes,
    fmt_table,
    launch,
    machine_lines,
    one_cpu,
    remove_paths,
    report,
    warm_cache,
)

HERE = Path(__file__).resolve().parent
CASA_PYTHON = "/work/casa-venv/bin/python"
ON_INTENT = "OBSERVE_TARGET#ON_SOURCE"

# The simulated EB (ps mode). FLOAT_DATA per target scan: (200 ON + 3 x 10 OFF) integrations
# x 4 antennas x 4 science spws x 4096 channels x 2 pol x 4 B = 120.6 MB.
SIM: dict[str, object] = {
    "mode": "ps",
    "n_antennas": 4,
    "n_basebands": 4,
    "n_science_chan": 4096,
    "n_tsys_chan": 128,
    "n_on_per_scan": 200,
    "n_on_subscans": 2,
    "n_off_integrations": 10,
    "n_atm_integrations": 5,
}
N_POL = 2

# contender -> Dask worker processes (0: threads in the process)
# (-1: one thread in a process pinned to one CPU: the "on one core", as CASA runs)
RADFLOW = {"1core": -1, "threads": 0, "1worker": 1, "2workers": 2}
# The recipe's baseline settings (graphs/alma_sd.yaml), in sdbaseline's words.
CASA_BASELINE = {
    "blfunc": "poly",
    "order": 1,
    "maskmode": "auto",
    "thresh": 5.0,
    "avg_limit": 4,
    "minwidth": 4,
    "edge": [0, 0],
}


def scan_bytes() -> int:
    """FLOAT_DATA bytes of one target scan (science spws only)."""
    s = SIM
    n_int = int(s["n_on_per_scan"]) + (int(s["n_on_subscans"]) + 1) * int(s["n_off_integrations"])
    return (
        n_int * int(s["n_antennas"]) * int(s["n_basebands"]) * int(s["n_science_chan"]) * N_POL * 4
    )


def target_scans_for(size_gb: float) -> int:
    return max(1, round(size_gb * 1e9 / scan_bytes()))


# ---------------------------------------------------------------------------------------------
# Child side.
# ---------------------------------------------------------------------------------------------


def child_simulate(ms: str, n_target_scans: int) -> None:
    """Write the EB; report its FLOAT_DATA bytes (read back from the MS)."""
    import numpy as np
    from casacore.tables import table

    from radflow.testing import simulate_single_dish

    t0 = time.perf_counter()
    simulate_single_dish(ms, n_target_scans=n_target_scans, overwrite=True, **SIM)  # type: ignore[arg-type]
    seconds = time.perf_counter() - t0
    with table(f"{ms}/DATA_DESCRIPTION", ack=False) as t:
        dd_spw = t.getcol("SPECTRAL_WINDOW_ID")
    with table(f"{ms}/SPECTRAL_WINDOW", ack=False) as t:
        nchan = t.getcol("NUM_CHAN")
    with table(ms, ack=False) as t:
        ddid = t.getcol("DATA_DESC_ID")
        nrows = t.nrows()
        npol = t.getcell("FLOAT_DATA", 0).shape[-1]  # python-casacore: (chan, pol)
    float_bytes = int(np.sum(nchan[dd_spw[ddid]].astype(np.int64))) * npol * 4
    report(seconds=seconds, float_bytes=float_bytes, rows=nrows)


def child_convert(ms: str, out: str) -> None:
    from radflow.converters.msv2_to_store import convert

    t0 = time.perf_counter()
    convert(ms, out, overwrite=True)
    report(work_s=time.perf_counter() - t0)


def child_radflow(store: str, workers: int) -> None:
    """``radflow run alma_sd STORE --workers N`` without the progress bar."""
    t0 = time.perf_counter()
    import contextlib

    import dask

    from radflow.cluster import dask_client
    from radflow.pipeline import load_recipe, run

    recipe = load_recipe("alma_sd")
    t1 = time.perf_counter()
    with (
        dask.config.set(num_workers=1) if workers < 0 else contextlib.nullcontext(),
        dask_client(None, max(workers, 0)) as client,
    ):
        results = run(recipe, [store], client=client, progress=False)
    t2 = time.perf_counter()
    bad = [f"{r.path}: {r.error}" for r in results if r.status != "done"]
    if bad:
        raise SystemExit("radflow run failed: " + "; ".join(bad))
    report(import_s=t1 - t0, work_s=t2 - t1, groups=results[0].groups)


def child_casa(ms: str) -> None:
    """sdcal ps,tsys,apply + sdbaseline on `ms` (a copy; CASA modifies it), CASA's python."""
    t0 = time.perf_counter()
    sys.path.insert(0, str(HERE))
    from casa_sd_reference import science_and_tsys_spws
    from casatasks import sdbaseline, sdcal

    t1 = time.perf_counter()
    science, spwmap = science_and_tsys_spws(ms)
    spw = ",".join(str(s) for s in science)
    sdcal(infile=ms, calmode="ps,tsys,apply", spwmap=spwmap, spw=spw, interp="linear", outfile="")
    t2 = time.perf_counter()
    stem = ms.removesuffix(".ms")
    sdbaseline(
        infile=ms,
        datacolumn="corrected",
        spw=spw,
        intent=ON_INTENT,
        blformat="csv",
        bloutput=f"{stem}.baseline.csv",
        outfile=f"{stem}.baselined.ms",
        overwrite=True,
        **CASA_BASELINE,
    )
    t3 = time.perf_counter()
    report(import_s=t1 - t0, work_s=t3 - t1, sdcal_s=t2 - t1, sdbaseline_s=t3 - t2)


# ---------------------------------------------------------------------------------------------
# Parent side.
# ---------------------------------------------------------------------------------------------


def this(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def prepare_eb(size_gb: float, workdir: Path, args: argparse.Namespace) -> tuple[Path, Path, dict]:
    """The cached (or new) MS of `size_gb` and its store, converted now. Returns ms, store, meta."""
    n_scans = target_scans_for(size_gb)
    name = f"sd_ps_{n_scans}scans"
    ms = workdir / f"{name}.ms"
    meta_path = workdir / f"{name}.json"
    params = {**SIM, "n_target_scans": n_scans}
    meta = None
    if meta_path.exists() and ms.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("params") != params:
            meta = None
    if meta is None:
        print(f"  simulating {ms.name} ({n_scans} target scans) ...", flush=True)
        shutil.rmtree(ms, ignore_errors=True)
        meta_path.unlink(missing_ok=True)
        payload, err, wall, peak = launch(
            this("--simulate", str(ms), str(n_scans)), workdir / f"{name}.sim.log", 7200, 0.5
        )
        if payload is None:
            raise SystemExit(f"simulation failed: {err}")
        meta = {
            "params": params,
            "float_bytes": payload["float_bytes"],
            "rows": payload["rows"],
            "simulate_s": wall,
        }
        meta_path.write_text(json.dumps(meta))
        print(f"  simulated in {wall:.1f} s (peak RSS {peak / 1e6:.0f} MB)")
    else:
        print(f"  reusing {ms} (simulated earlier in {meta['simulate_s']:.1f} s)")
    meta["ms_bytes"] = dir_bytes(ms)
    print(
        f"  MS: {meta['rows']} rows, FLOAT_DATA {meta['float_bytes'] / 1e9:.3f} GB,"
        f" {meta['ms_bytes'] / 1e9:.3f} GB on disk; {n_scans} target scans x 200 ON + 30 OFF s,"
        f" 4 antennas x 4 spws x 4096 chan x 2 pol"
    )
    store = workdir / f"{name}.ps.zarr"
    if store.exists() and args.reuse_store:
        print(f"  reusing store {store.name} (--reuse-store; conversion not timed)")
        meta["convert_s"] = None
        return ms, store, meta
    shutil.rmtree(store, ignore_errors=True)
    warm_cache(ms)
    print("  converting (radflow convert, Dask threads) ...", flush=True)
    payload, err, wall, peak = launch(
        this("--convert", str(ms), str(store)),
        workdir / f"{name}.convert.log",
        args.timeout,
        args.poll,
    )
    if payload is None:
        raise SystemExit(f"conversion failed: {err}")
    meta["convert_s"] = wall
    meta["convert_rss"] = peak
    meta["store_bytes"] = dir_bytes(store)
    print(
        f"  converted in {wall:.1f} s (convert() {payload['work_s']:.1f} s,"
        f" {meta['float_bytes'] / 1e6 / wall:.1f} MB/s of FLOAT_DATA,"
        f" peak RSS {peak / 1e6:.0f} MB); store {meta['store_bytes'] / 1e9:.3f} GB"
    )
    return ms, store, meta


def run_contender(
    contender: str, size_gb: float, ms: Path, store: Path, workdir: Path, args: argparse.Namespace
) -> Result:
    """Run one contender ``--repeat`` times on a fresh copy of its input."""
    runs: list[Result] = []
    for k in range(args.repeat):
        tag = f"{contender}-{size_gb:g}GB-{k}"
        log = workdir / f"{tag}.log"
        if contender == "casa":
            work = workdir / f"{tag}.ms"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(ms, work)
            warm_cache(work)
            cmd = [args.casa_python, str(Path(__file__).resolve()), "--casa-one", str(work)]
            cleanup = [work, workdir / f"{tag}.baselined.ms", workdir / f"{tag}.baseline.csv"]
        else:
            work = workdir / f"{tag}.ps.zarr"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(store, work)
            warm_cache(work)
            cmd = this("--run-one", str(work), str(RADFLOW[contender]))
            cleanup = [work, workdir / f"{tag}.baseline.csv", workdir / f"{tag}.baseline.txt"]
        print(f"  running {contender} ({k + 1}/{args.repeat}) ...", flush=True)
        # CASA writes its casa-*.log into the working directory: keep it in the workdir.
        payload, err, wall, peak = launch(
            cmd, log, args.timeout, args.poll, cwd=workdir, cpus=one_cpu(contender)
        )
        if not args.keep:
            remove_paths(cleanup)
        if payload is None:
            print(f"    {contender} failed: {err}  (log: {log})")
            return Result(contender, size_gb, ok=False, wall_s=wall, peak_rss=peak, error=err)
        res = Result(contender, size_gb, True, wall, payload["work_s"], peak, extra=payload)
        print(
            f"    wall {wall:.1f} s, work {res.work_s:.1f} s, peak RSS {peak / 1e6:.0f} MB"
            + (
                f" (sdcal {payload['sdcal_s']:.1f} s, sdbaseline {payload['sdbaseline_s']:.1f} s)"
                if contender == "casa"
                else ""
            ),
            flush=True,
        )
        runs.append(res)
    return combine_runs(runs)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark the alma_sd recipe (convert once, then radflow run) vs CASA."
    )
    p.add_argument("--size-gb", type=float, default=2.0, help="FLOAT_DATA GB of the EB [2.0]")
    p.add_argument(
        "--small-gb", type=float, default=0.5, help="second, smaller EB, threads only; 0 skips"
    )
    p.add_argument(
        "--contenders",
        default="threads,1worker,2workers,casa",
        help="at --size-gb, comma separated: threads, 1worker, 2workers, casa",
    )
    p.add_argument("--workdir", type=Path, default=Path("/tmp/radflow-bench-sd"))
    p.add_argument("--casa-python", default=CASA_PYTHON, help="CASA's python, or 'none'")
    p.add_argument("--repeat", type=int, default=1, help="runs per contender (median times)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    p.add_argument("--poll", type=float, default=0.2, help="RSS polling interval, s")
    p.add_argument("--reuse-store", action="store_true", help="reuse a converted store")
    p.add_argument("--keep", action="store_true", help="keep the per-run stores and MSs")
    p.add_argument("--simulate", nargs=2, metavar=("MS", "NSCANS"), help=argparse.SUPPRESS)
    p.add_argument("--convert", nargs=2, metavar=("MS", "STORE"), help=argparse.SUPPRESS)
    p.add_argument("--run-one", nargs=2, metavar=("STORE", "WORKERS"), help=argparse.SUPPRESS)
    p.add_argument("--casa-one", metavar="MS", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.contender_list = [c.strip() for c in args.contenders.split(",") if c.strip()]
    for c in args.contender_list:
        if c not in (*RADFLOW, "casa"):
            p.error(f"unknown contender {c!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.simulate:
        child_simulate(args.simulate[0], int(args.simulate[1]))
        return 0
    if args.convert:
        child_convert(*args.convert)
        return 0
    if args.run_one:
        child_radflow(args.run_one[0], int(args.run_one[1]))
        return 0
    if args.casa_one:
        child_casa(args.casa_one)
        return 0

    t_start = time.perf_counter()
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    print("radflow single-dish chain benchmark (benchmarks/sd_chain.py)")
    for line in machine_lines():
        print(line)
    use_casa = "casa" in args.contender_list
    casa_note = ""
    if use_casa:
        use_casa, casa_note = casa_available(args.casa_python)
        print(f"CASA    : {casa_note if use_casa else 'skipped: ' + casa_note}")
    print(f"workdir : {workdir}")
    print(
        "recipe  : alma_sd (tsys -> sky -> sdcal -> baseline -> jyperk), fresh store copy per run"
    )

    plan = [(args.size_gb, [c for c in args.contender_list if c != "casa" or use_casa])]
    if args.small_gb > 0:
        plan.append((args.small_gb, ["threads"]))
    rows: list[tuple[Result, int]] = []
    casa: dict[float, Result] = {}
    timings: list[str] = []
    for size_gb, contenders in plan:
        print(f"\n=== EB of {size_gb:g} GB FLOAT_DATA requested " + "=" * 40, flush=True)
        t0 = time.perf_counter()
        ms, store, meta = prepare_eb(size_gb, workdir, args)
        if meta["convert_s"] is not None:
            timings.append(
                f"convert {meta['float_bytes'] / 1e9:.2f} GB: {meta['convert_s']:.1f} s"
                f" ({meta['float_bytes'] / 1e6 / meta['convert_s']:.1f} MB/s,"
                f" peak RSS {meta['convert_rss'] / 1e6:.0f} MB)"
            )
        for contender in contenders:
            res = run_contender(contender, size_gb, ms, store, workdir, args)
            rows.append((res, meta["float_bytes"]))
            if contender == "casa":
                casa[size_gb] = res
        timings.append(f"EB {size_gb:g} GB, all steps: {time.perf_counter() - t0:.0f} s")

    print("\n=== results " + "=" * 60)
    print(
        "wall s = whole child process; work s = radflow.pipeline.run incl. Dask client start/stop"
        " (CASA: sdcal + sdbaseline);\nMB/s = MS FLOAT_DATA MB / wall s; peak RSS = process tree"
        " (Dask workers included); vs CASA = MB/s / CASA MB/s"
    )
    for line in fmt_table(rows, casa):
        print(line)
    if use_casa and not casa:
        print("CASA: not run")
    elif not use_casa and "casa" in args.contender_list:
        print(f"CASA: skipped ({casa_note})")
    for r, _ in rows:
        for note in r.notes:
            print(f"note: {r.contender} {r.size_gb:g} GB: {note}")
    for line in timings:
        print(f"time: {line}")
    print(f"benchmark wall time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
