"""Interferometer chain benchmark: the whole ``alma_if`` recipe on one EB, radflow vs CASA.

What is measured
----------------
For ``--size-gb`` (GB of DATA, 1 GB = 1e9 bytes) an ALMA 12-m EB is simulated with
:func:`radflow.testing.simulate_interferometer` (``--antennas`` 16, 4 spws of ``--channels``
128 channels (ALMA's TDM continuum mode), XX YY, thermal noise and the simulator's flags;
scans: bandpass, flux, ``--cycles`` 3 x (phase calibrator, target), phase calibrator = 9 scans
of the same number of 6.048-s integrations, chosen to reach the size: 8.85 MB of DATA per
integration of all 9 scans with the defaults). The MS is cached in ``--workdir`` and reused by
later runs with the same parameters. It is converted once to a radflow store (``radflow
convert``; timed and printed apart, not part of the chain figures). Then, on a fresh copy of
that store every time (``radflow run`` adds groups into the store and writes the CASA caltables
beside it), the whole ``alma_if`` recipe runs in a fresh Python process for each contender::

    setjy (manual: 3 Jy at 100 GHz, spectral index -0.7, the simulator's flux calibrator)
    -> gaincal phaseup (p, int; bandpass calibrator) -> bandpass (B, inf, combine scan, solnorm)
    -> gaincal phase (p, int; all calibrators) -> gaincal amp (a, inf)
    -> fluxscale (flux calibrator -> the others) -> applycal (calibrators; target with the
    phase calibrator's solutions)

what ``radflow run alma_if EB.ps.zarr --set setjy.standard=manual ... [--workers N]`` does:

* ``radflow-threads``: Dask's threaded scheduler in the process (``--workers 0``);
* ``radflow-1worker`` / ``radflow-2workers``: a ``LocalCluster`` of 1 / 2 worker processes
  (one thread each, :func:`radflow.cluster.dask_client` defaults, 4 GiB per worker);
* ``casa``: when ``/work/casa-venv/bin/python`` (``--casa-python``) imports ``casatasks``: the
  same sequence with CASA's tasks on a fresh copy of the MS (``setjy`` with
  ``usescratch=False``, ``gaincal``, ``bandpass``, ``gaincal`` x 2, ``fluxscale``,
  ``applycal`` x 2; fields by intent through ``msmetadata``; the same parameters as the recipe:
  interp nearest/linear/linear, ``gainfield`` '' for the calibrators and the phase calibrator
  for the target, ``applymode="calflag"``). CASA runs on one thread: compare it with
  ``radflow-1worker`` as well as with the parallel contenders.

Both sides use the same reference antenna: the MS's first antenna (radflow's default, passed
explicitly to both). The transfer calibrators' flux densities from both fluxscales are printed
at the end, as a check that both did the same reduction.

At ``--small-gb`` (default 0.5; 0 skips it) a second, smaller EB runs with threads only, to
show whether the peak memory depends on the EB size.

How
---
``wall s`` is the wall time of the whole child process (interpreter start, imports, cluster
start-up, the chain, writing the results and the caltables, exit): what a user waits for
``radflow run``. ``work s`` is the part inside the child that calls ``radflow.pipeline.run``
(with the ``dask_client`` start-up and shut-down), resp. CASA's tasks. MB/s = DATA bytes of
the MS / 1e6 / wall s. Peak RSS is that of the whole process tree: the parent polls the child
and all its descendants (Dask scheduler, nanny and worker processes) with psutil every
``--poll`` seconds and keeps the largest sum of their RSS (and at least the child's own
VmHWM). "vs CASA" = CASA's wall s / the contender's (> 1: radflow is faster). The store (resp.
the MS) is read once before every run, so every contender starts with a warm page cache. With
``--repeat N`` every contender runs N times: times are medians, the peak RSS the largest.

Usage::

    python benchmarks/if_chain.py                      # 2 GB EB (+ 0.5 GB, threads), CASA if any
    python benchmarks/if_chain.py --size-gb 0.25 --small-gb 0.1 --contenders threads,casa
    python benchmarks/if_chain.py --casa-python none   # radflow only

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

# The simulator's flux calibrator (J1924-2914: 3 Jy at 100 GHz, spectral index -0.7).
MANUAL_FLUX = ["setjy.standard=manual", "setjy.fluxdensity=3.0", "setjy.spix=-0.7",
               "setjy.reffreq=100GHz"]  # fmt: skip
N_SPW = 4
N_POL = 2  # XX YY
CASA_INTERP = ["nearest", "linear", "linear"]  # the recipe's applycal interp

# contender -> Dask worker processes (0: threads in the process)
# (-1: one thread in a process pinned to one CPU: the "on one core", as CASA runs)
RADFLOW = {"1core": -1, "threads": 0, "1worker": 1, "2workers": 2}


def sim_params(args: argparse.Namespace, size_gb: float) -> dict:
    """simulate_interferometer keyword arguments giving about `size_gb` GB of DATA."""
    n_ant, n_chan, n_cycles = args.antennas, args.channels, args.cycles
    n_scans = 3 + 2 * n_cycles
    per_integration = n_scans * N_SPW * (n_ant * (n_ant - 1) // 2) * n_chan * N_POL * 8
    return {
        "n_antennas": n_ant,
        "n_spw": N_SPW,
        "n_chan": n_chan,
        "n_pol": N_POL,
        "n_cycles": n_cycles,
        "n_integrations": max(1, round(size_gb * 1e9 / per_integration)),
        "noise": True,
        "seed": 0,
    }


def recipe_overrides(refant: str) -> list[str]:
    """The alma_if overrides both sides share: setjy manual, the reference antenna."""
    return [*MANUAL_FLUX, f"gaincal.refant={refant}", f"bandpass.refant={refant}"]


def fluxscale_fluxes(result: dict) -> dict[str, list[float]]:
    """{transfer field: flux density per spw (Jy)} of a fluxscale result (CASA's dict)."""
    out = {}
    for entry in result.values():
        if isinstance(entry, dict) and "fieldName" in entry:
            spws = sorted((k for k in entry if k.isdigit()), key=int)
            out[str(entry["fieldName"])] = [float(entry[s]["fluxd"][0]) for s in spws]
    return out


# ---------------------------------------------------------------------------------------------
# Child side.
# ---------------------------------------------------------------------------------------------


def child_simulate(ms: str, params_json: str) -> None:
    """Write the EB; report its DATA bytes and first antenna (read back from the MS)."""
    import numpy as np
    from casacore.tables import table

    from radflow.testing import simulate_interferometer

    t0 = time.perf_counter()
    simulate_interferometer(ms, overwrite=True, **json.loads(params_json))
    seconds = time.perf_counter() - t0
    with table(f"{ms}/DATA_DESCRIPTION", ack=False) as t:
        dd_spw = t.getcol("SPECTRAL_WINDOW_ID")
    with table(f"{ms}/SPECTRAL_WINDOW", ack=False) as t:
        nchan = t.getcol("NUM_CHAN")
    with table(f"{ms}/ANTENNA", ack=False) as t:
        first_antenna = str(t.getcell("NAME", 0))
    with table(ms, ack=False) as t:
        ddid = t.getcol("DATA_DESC_ID")
        nrows = t.nrows()
        npol = t.getcell("DATA", 0).shape[-1]  # python-casacore: (chan, pol)
    data_bytes = int(np.sum(nchan[dd_spw[ddid]].astype(np.int64))) * npol * 8
    report(seconds=seconds, data_bytes=data_bytes, rows=nrows, refant=first_antenna)


def child_convert(ms: str, out: str) -> None:
    from radflow.converters.msv2_to_store import convert

    t0 = time.perf_counter()
    convert(ms, out, overwrite=True)
    report(work_s=time.perf_counter() - t0)


def child_radflow(store: str, workers: int, refant: str) -> None:
    """``radflow run alma_if STORE --set ... --workers N`` without the progress bar."""
    t0 = time.perf_counter()
    import contextlib

    import dask

    from radflow.cluster import dask_client
    from radflow.pipeline import load_recipe, run

    recipe = load_recipe("alma_if", recipe_overrides(refant))
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
    (res,) = results
    flux = [p for p in res.tables if p.name.endswith(".flux.json")]
    report(
        import_s=t1 - t0,
        work_s=t2 - t1,
        build_s=res.build_seconds,
        compute_s=res.compute_seconds,
        groups=res.groups,
        partitions=res.partitions,
        fluxes=fluxscale_fluxes(json.loads(flux[0].read_text())) if flux else {},
        written=[str(p) for p in [*res.tables, results.summary_path, res.summary] if p],
    )


def child_casa(ms: str, refant: str) -> None:
    """The alma_if sequence with CASA's tasks on `ms` (a copy: CASA modifies it), CASA's
    python. Caltables go beside it as <stem>.<table>.cal."""
    t0 = time.perf_counter()
    from casatasks import applycal, bandpass, fluxscale, gaincal, setjy
    from casatools import msmetadata

    t1 = time.perf_counter()
    msmd = msmetadata()
    msmd.open(ms)
    try:

        def fields(intent: str) -> list[str]:
            return [str(f) for f in msmd.fieldsforintent(f"*{intent}*", asnames=True)]

        flux, bpass, phase = (fields(f"CALIBRATE_{i}") for i in ("FLUX", "BANDPASS", "PHASE"))
        calibrators, targets = fields("CALIBRATE_"), fields("OBSERVE_TARGET")
    finally:
        msmd.close()
    # the pipeline's transfer intents (PHASE, BANDPASS, ...) without the reference
    transfer = [f for f in calibrators if f not in flux and (f in bpass or f in phase)]
    stem = ms.removesuffix(".ms")
    cal = {n: f"{stem}.{n}.cal" for n in ("phaseup", "bandpass", "phase", "amp", "flux")}
    steps: dict[str, float] = {}

    def timed(name: str, task, **kw):
        t = time.perf_counter()
        out = task(vis=ms, **kw)
        steps[name] = steps.get(name, 0.0) + time.perf_counter() - t
        return out

    timed("setjy", setjy, field=",".join(flux), standard="manual", fluxdensity=[3.0, 0, 0, 0],
          spix=-0.7, reffreq="100GHz", scalebychan=True, usescratch=False)  # fmt: skip
    timed("phaseup", gaincal, caltable=cal["phaseup"], field=",".join(bpass), calmode="p",
          solint="int", refant=refant, minsnr=3.0)  # fmt: skip
    timed("bandpass", bandpass, caltable=cal["bandpass"], field=",".join(bpass), bandtype="B",
          solint="inf", combine="scan", solnorm=True, fillgaps=0, refant=refant, minsnr=3.0,
          gaintable=[cal["phaseup"]])  # fmt: skip
    timed("phase", gaincal, caltable=cal["phase"], field=",".join(calibrators), calmode="p",
          solint="int", refant=refant, minsnr=3.0, gaintable=[cal["bandpass"]])  # fmt: skip
    timed("amp", gaincal, caltable=cal["amp"], field=",".join(calibrators), calmode="a",
          solint="inf", refant=refant, minsnr=3.0,
          gaintable=[cal["bandpass"], cal["phase"]])  # fmt: skip
    result = timed("fluxscale", fluxscale, caltable=cal["amp"], fluxtable=cal["flux"],
                   reference=",".join(flux), transfer=",".join(transfer), fitorder=1)  # fmt: skip
    tables = [cal["bandpass"], cal["phase"], cal["flux"]]
    timed("applycal", applycal, field=",".join(calibrators), gaintable=tables,
          interp=CASA_INTERP, gainfield=["", "", ""], calwt=True, applymode="calflag")  # fmt: skip
    on_phase = ",".join(phase)
    timed("applycal", applycal, field=",".join(targets), gaintable=tables, interp=CASA_INTERP,
          gainfield=["", on_phase, on_phase], calwt=True, applymode="calflag")  # fmt: skip
    t2 = time.perf_counter()
    report(import_s=t1 - t0, work_s=t2 - t1, steps=steps, fluxes=fluxscale_fluxes(result))


# ---------------------------------------------------------------------------------------------
# Parent side.
# ---------------------------------------------------------------------------------------------


def this(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def prepare_eb(size_gb: float, workdir: Path, args: argparse.Namespace) -> tuple[Path, Path, dict]:
    """The cached (or new) MS of `size_gb` and its store, converted now. Returns ms, store, meta."""
    params = sim_params(args, size_gb)
    p = params
    name = f"if_{p['n_antennas']}ant_{p['n_chan']}ch_{p['n_cycles']}cyc_{p['n_integrations']}int"
    ms = workdir / f"{name}.ms"
    meta_path = workdir / f"{name}.json"
    meta = None
    if meta_path.exists() and ms.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("params") != params:
            meta = None
    if meta is None:
        print(f"  simulating {ms.name} ({p['n_integrations']} integrations per scan) ...",
              flush=True)  # fmt: skip
        remove_paths([ms, meta_path, Path(f"{ms}.truth.zarr")])
        payload, err, wall, peak = launch(
            this("--simulate", str(ms), json.dumps(params)), workdir / f"{name}.sim.log", 7200, 0.5
        )
        if payload is None:
            raise SystemExit(f"simulation failed: {err}")
        meta = {"params": params, "simulate_s": wall}
        meta.update({k: payload[k] for k in ("data_bytes", "rows", "refant")})
        meta_path.write_text(json.dumps(meta))
        print(f"  simulated in {wall:.1f} s (peak RSS {peak / 1e6:.0f} MB)")
    else:
        print(f"  reusing {ms} (simulated earlier in {meta['simulate_s']:.1f} s)")
    meta["ms_bytes"] = dir_bytes(ms)
    n_scans = 3 + 2 * p["n_cycles"]
    print(
        f"  MS: {meta['rows']} rows, DATA {meta['data_bytes'] / 1e9:.3f} GB,"
        f" {meta['ms_bytes'] / 1e9:.3f} GB on disk; {n_scans} scans x {p['n_integrations']}"
        f" integrations, {p['n_antennas']} antennas x {N_SPW} spws x {p['n_chan']} chan x"
        f" {N_POL} pol; refant {meta['refant']}"
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
        f" {meta['data_bytes'] / 1e6 / wall:.1f} MB/s of DATA,"
        f" peak RSS {peak / 1e6:.0f} MB); store {meta['store_bytes'] / 1e9:.3f} GB"
    )
    return ms, store, meta


def run_contender(
    contender: str, size_gb: float, ms: Path, store: Path, meta: dict, args: argparse.Namespace
) -> Result:
    """Run one contender ``--repeat`` times on a fresh copy of its input."""
    workdir: Path = args.workdir
    runs: list[Result] = []
    for k in range(args.repeat):
        tag = f"{contender}-{size_gb:g}GB-{k}"
        log = workdir / f"{tag}.log"
        # everything a run writes is <tag>.* (the input copy, caltables, fluxscale results,
        # radflow's block summary) but its log; radflow's run summary is reported by the child
        outputs = [p for p in workdir.glob(f"{tag}.*") if p != log]
        remove_paths(outputs)
        if contender == "casa":
            work = workdir / f"{tag}.ms"
            shutil.copytree(ms, work)
            cmd = [args.casa_python, str(Path(__file__).resolve()), "--casa-one", str(work),
                   meta["refant"]]  # fmt: skip
        else:
            work = workdir / f"{tag}.ps.zarr"
            shutil.copytree(store, work)
            cmd = this("--run-one", str(work), str(RADFLOW[contender]), meta["refant"])
        warm_cache(work)
        print(f"  running {contender} ({k + 1}/{args.repeat}) ...", flush=True)
        # CASA writes its casa-*.log into the working directory: keep it in the workdir.
        payload, err, wall, peak = launch(
            cmd, log, args.timeout, args.poll, cwd=workdir, cpus=one_cpu(contender)
        )
        if not args.keep:
            written = [Path(p) for p in (payload or {}).get("written", [])]
            remove_paths([*(p for p in workdir.glob(f"{tag}.*") if p != log), *written])
        if payload is None:
            print(f"    {contender} failed: {err}  (log: {log})")
            return Result(contender, size_gb, ok=False, wall_s=wall, peak_rss=peak, error=err)
        res = Result(contender, size_gb, True, wall, payload["work_s"], peak, extra=payload)
        if contender == "casa":
            detail = ", ".join(f"{n} {s:.1f}" for n, s in payload["steps"].items())
        else:
            detail = f"build {payload['build_s']:.1f}, compute {payload['compute_s']:.1f}"
        print(
            f"    wall {wall:.1f} s, work {res.work_s:.1f} s ({detail}),"
            f" peak RSS {peak / 1e6:.0f} MB",
            flush=True,
        )
        runs.append(res)
    return combine_runs(runs)


def flux_lines(rows: list[tuple[Result, int]]) -> list[str]:
    """The transfer calibrators' fluxscale flux densities of every run, per spw."""
    lines = []
    for r, _ in rows:
        for name, fluxes in sorted(r.extra.get("fluxes", {}).items()):
            values = " ".join(f"{f:7.4f}" for f in fluxes)
            lines.append(f"  {r.contender:<9} {r.size_gb:>5g} GB  {name:<12} {values}")
    return lines


def verdict_lines(rows: list[tuple[Result, int]], casa: dict[float, Result], size_gb: float):
    """Issue 4's targets: radflow-1worker at least 5x CASA (one core each); peak RSS of
    threads independent of the EB size."""
    lines = []
    ok = {(r.contender, r.size_gb): (r, n) for r, n in rows if r.ok}
    ref = casa.get(size_gb)
    one = ok.get(("1worker", size_gb))
    if ref is not None and ref.ok and one is not None:
        ratio = ref.wall_s / one[0].wall_s
        met = "met" if ratio >= 5 else "not met"
        lines.append(f"target  : radflow-1worker >= 5x CASA (one core each): {ratio:.2f}x, {met}")
    threads = sorted((n, r.peak_rss) for (c, _), (r, n) in ok.items() if c == "threads")
    if len(threads) > 1:
        (n0, m0), (n1, m1) = threads[0], threads[-1]
        lines.append(
            f"memory  : threads peak RSS {m1 / 1e6:.0f} MB at {n1 / 1e9:.2f} GB,"
            f" {m0 / 1e6:.0f} MB at {n0 / 1e9:.2f} GB ({m1 / m0:.2f}x for"
            f" {n1 / n0:.1f}x the data)"
        )
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark the alma_if recipe (convert once, then radflow run) vs CASA."
    )
    p.add_argument("--size-gb", type=float, default=2.0, help="DATA GB of the EB [2.0]")
    p.add_argument(
        "--small-gb", type=float, default=0.5, help="second, smaller EB, threads only; 0 skips"
    )
    p.add_argument(
        "--contenders",
        default="threads,1worker,2workers,casa",
        help="at --size-gb, comma separated: threads, 1worker, 2workers, casa",
    )
    p.add_argument("--antennas", type=int, default=16, help="antennas of the EB [16]")
    p.add_argument("--channels", type=int, default=128, help="channels per spw (4 spws) [128]")
    p.add_argument(
        "--cycles", type=int, default=3, help="phase-cal/target cycles (scans = 3 + 2 x) [3]"
    )
    p.add_argument("--workdir", type=Path, default=Path("/tmp/radflow-bench-if"))
    p.add_argument("--casa-python", default=CASA_PYTHON, help="CASA's python, or 'none'")
    p.add_argument("--repeat", type=int, default=1, help="runs per contender (median times)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    p.add_argument("--poll", type=float, default=0.2, help="RSS polling interval, s")
    p.add_argument("--reuse-store", action="store_true", help="reuse a converted store")
    p.add_argument("--keep", action="store_true", help="keep the per-run stores, MSs, caltables")
    p.add_argument("--simulate", nargs=2, metavar=("MS", "PARAMS"), help=argparse.SUPPRESS)
    p.add_argument("--convert", nargs=2, metavar=("MS", "STORE"), help=argparse.SUPPRESS)
    p.add_argument(
        "--run-one", nargs=3, metavar=("STORE", "WORKERS", "REFANT"), help=argparse.SUPPRESS
    )
    p.add_argument("--casa-one", nargs=2, metavar=("MS", "REFANT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.contender_list = [c.strip() for c in args.contenders.split(",") if c.strip()]
    for c in args.contender_list:
        if c not in (*RADFLOW, "casa"):
            p.error(f"unknown contender {c!r}")
    if args.antennas < 4 or args.channels < 1 or args.cycles < 1:
        p.error("--antennas must be >= 4, --channels and --cycles >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.simulate:
        child_simulate(*args.simulate)
        return 0
    if args.convert:
        child_convert(*args.convert)
        return 0
    if args.run_one:
        child_radflow(args.run_one[0], int(args.run_one[1]), args.run_one[2])
        return 0
    if args.casa_one:
        child_casa(*args.casa_one)
        return 0

    t_start = time.perf_counter()
    workdir = args.workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print("radflow interferometer chain benchmark (benchmarks/if_chain.py)")
    for line in machine_lines():
        print(line)
    use_casa = "casa" in args.contender_list
    casa_note = ""
    if use_casa:
        use_casa, casa_note = casa_available(args.casa_python)
        print(f"CASA    : {casa_note if use_casa else 'skipped: ' + casa_note}")
    print(f"workdir : {workdir}")
    print(
        "recipe  : alma_if (setjy manual -> gaincal phaseup -> bandpass -> gaincal phase, amp"
        " -> fluxscale -> applycal), fresh store copy per run"
    )

    plan = [(args.size_gb, [c for c in args.contender_list if c != "casa" or use_casa])]
    if args.small_gb > 0:
        plan.append((args.small_gb, ["threads"]))
    rows: list[tuple[Result, int]] = []
    casa: dict[float, Result] = {}
    timings: list[str] = []
    for size_gb, contenders in plan:
        print(f"\n=== EB of {size_gb:g} GB DATA requested " + "=" * 40, flush=True)
        t0 = time.perf_counter()
        ms, store, meta = prepare_eb(size_gb, workdir, args)
        if meta["convert_s"] is not None:
            timings.append(
                f"convert {meta['data_bytes'] / 1e9:.2f} GB: {meta['convert_s']:.1f} s"
                f" ({meta['data_bytes'] / 1e6 / meta['convert_s']:.1f} MB/s,"
                f" peak RSS {meta['convert_rss'] / 1e6:.0f} MB)"
            )
        for contender in contenders:
            res = run_contender(contender, size_gb, ms, store, meta, args)
            rows.append((res, meta["data_bytes"]))
            if contender == "casa":
                casa[size_gb] = res
        timings.append(f"EB {size_gb:g} GB, all steps: {time.perf_counter() - t0:.0f} s")

    print("\n=== results " + "=" * 60)
    print(
        "wall s = whole child process; work s = radflow.pipeline.run incl. Dask client start/stop"
        " (CASA: its tasks);\nMB/s = MS DATA MB / wall s; peak RSS = process tree"
        " (Dask workers included); vs CASA = CASA wall s / wall s"
    )
    for line in fmt_table(rows, casa):
        print(line)
    if use_casa and not casa:
        print("CASA: not run")
    elif not use_casa and "casa" in args.contender_list:
        print(f"CASA: skipped ({casa_note})")
    for r, _ in rows:
        if r.contender == "casa" and r.ok:
            steps = ", ".join(f"{n} {s:.1f}" for n, s in r.extra["steps"].items())
            print(f"CASA {r.size_gb:g} GB, s per task: {steps}")
        for note in r.notes:
            print(f"note: {r.contender} {r.size_gb:g} GB: {note}")
    for line in verdict_lines(rows, casa, args.size_gb):
        print(line)
    fluxes = flux_lines(rows)
    if fluxes:
        print("fluxscale, transfer calibrators (Jy per spw):")
        for line in fluxes:
            print(line)
    for line in timings:
        print(f"time: {line}")
    print(f"benchmark wall time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
