"""Scaling benchmark: many EBs through one recipe on 1 and on 2 Dask workers, and the runner's
per-EB overhead.

What is measured
----------------
``--n-ebs`` (default 8) small position-switched ALMA total-power EBs are simulated
(:func:`radflow.testing.simulate_single_dish`, different seeds, sizes from ``--antennas``,
``--basebands``, ``--channels``, ``--scans``) and converted once to radflow stores (timed apart).
Then, for every worker count of ``--workers`` (default ``1,2``), a fresh Python process gets
fresh copies of the stores, starts a ``LocalCluster`` of that many worker processes (one thread
each, ``--memory-limit`` per worker) with :func:`radflow.cluster.dask_client`, and runs the
``alma_sd`` recipe (tsys -> sky -> sdcal -> baseline -> jyperk) over all EBs with
:func:`radflow.pipeline.run` (what ``radflow run alma_sd EB1 ... EBn --workers W`` does: every
EB's graph is built in the driver and submitted as soon as it is built, while the workers
compute the EBs before it; each EB is written as soon as it is done).

Per worker count:

* ``run s``: wall time of ``pipeline.run`` (cluster already up); ``process s``: the whole child
  process (interpreter, imports, cluster start and stop). Speed-up = run s (1 worker) / run s
  (W workers); the issue's target is >= 1.8 with 2 workers.
* Peak RSS per worker: each worker process's VmHWM, read in the worker (``client.run``) after
  the run; and the peak RSS of the child's whole process tree (scheduler, nannies, workers;
  psutil, polled every ``--poll`` s).
* The runner's overhead per EB, against the compute per EB:

  - ``build``: opening the store, building the recipe's graph and the writes, the update copy
    (``BlockResult.build_seconds``; the driver does it before anything is submitted);
  - ``finalize``: sealing and swapping each EB into its store, writing its tables and JSON
    summary (in the driver, timed by wrapping ``radflow.pipeline._finalize``);
  - ``sched+idle``: worker time not spent computing tasks, ``W x compute phase - sum of task
    compute times`` (Dask's task stream: ``startstops`` of action ``compute``), per EB: what the
    scheduler, serialisation, data transfer and waiting cost;
  - ``compute``: the sum of the task compute times per EB.

Then one EB with about 100 partitions (``--build-antennas`` x ``--build-basebands`` x 2 intents
x ``--build-scans`` target partitions, plus the atmospheric calibrations' partitions; tiny data)
measures the graph build time of a many-partition EB: ``radflow.open`` and ``pipeline.build``
(the recipe's graph), each timed (median of ``--build-repeat``), and the runner's
``build_seconds`` (both plus the update copy and the write tasks) from a threaded
``pipeline.run``. Target: graph build < 1 s per EB; the verdict is printed for
``pipeline.build`` and for the runner's ``build_seconds``.

Usage::

    python benchmarks/scaling.py                          # 8 EBs, 1 and 2 workers
    python benchmarks/scaling.py --n-ebs 16 --channels 2048 --scans 4
    python benchmarks/scaling.py --workers 1,2,4 --memory-limit 3GiB

The top level imports only the standard library; radflow runs in the child processes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from _common import dir_bytes, launch, machine_lines, median, report

HERE = Path(__file__).resolve().parent
SPEEDUP_TARGET = 1.8
BUILD_TARGET_S = 1.0
OVERHEAD_FRACTION = 0.2  # "well under" the per-EB compute: at most this fraction of it
N_POL = 2


def sim_kwargs(args: argparse.Namespace) -> dict:
    return {
        "mode": "ps",
        "n_antennas": args.antennas,
        "n_basebands": args.basebands,
        "n_science_chan": args.channels,
        "n_tsys_chan": 64,
        "n_target_scans": args.scans,
        "n_on_per_scan": args.on_per_scan,
        "n_on_subscans": 2,
        "n_off_integrations": 10,
        "n_atm_integrations": 3,
    }


def build_sim_kwargs(args: argparse.Namespace) -> dict:
    return {
        "mode": "ps",
        "n_antennas": args.build_antennas,
        "n_basebands": args.build_basebands,
        "n_science_chan": 128,
        "n_tsys_chan": 32,
        "n_target_scans": args.build_scans,
        "n_on_per_scan": 4,
        "n_on_subscans": 2,
        "n_off_integrations": 2,
        "n_atm_integrations": 2,
    }


def factors_override(antennas: int, basebands: int, jy_per_k: float = 42.0) -> str:
    """``jyperk.factors={...}``: one Jy/K factor per antenna and science spw (2 b + 1)."""
    spws = ", ".join(f"{2 * b + 1}: {jy_per_k}" for b in range(basebands))
    per_antenna = ", ".join(f"PM{a + 1:02d}: {{{spws}}}" for a in range(antennas))
    return f"jyperk.factors={{{per_antenna}}}"


# ---------------------------------------------------------------------------------------------
# Child side (radflow imported here).
# ---------------------------------------------------------------------------------------------


def child_prepare(workdir: Path, n_ebs: int, kwargs: dict) -> None:
    """Simulate `n_ebs` EBs into workdir/ms and convert them (one Dask graph, threads)."""
    from radflow.converters.msv2_to_store import convert_many
    from radflow.testing import simulate_single_dish

    (workdir / "ms").mkdir(parents=True, exist_ok=True)
    (workdir / "stores").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    mss = [
        simulate_single_dish(
            workdir / "ms" / f"eb{k:03d}.ms", seed=k + 1, overwrite=True, **kwargs
        ).ms_path
        for k in range(n_ebs)
    ]
    simulate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    stores = convert_many(
        mss, [workdir / "stores" / f"eb{k:03d}.ps.zarr" for k in range(n_ebs)], overwrite=True
    )
    convert_s = time.perf_counter() - t0
    report(simulate_s=simulate_s, convert_s=convert_s, stores=[str(s) for s in stores])


def _worker_peak_rss() -> int:
    """VmHWM of the calling process (run in each Dask worker by ``client.run``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def child_run(workers: int, memory_limit: str, override: str, stores: list[str]) -> None:
    """Run alma_sd over `stores` on a LocalCluster of `workers` processes; report timings."""
    from distributed import get_task_stream

    import radflow.pipeline as pipeline
    from radflow.cluster import dask_client

    finalize_s: list[float] = []
    original = pipeline._finalize

    def timed_finalize(block):  # noqa: ANN001 - the runner's private _Block
        t = time.perf_counter()
        try:
            original(block)
        finally:
            finalize_s.append(time.perf_counter() - t)

    pipeline._finalize = timed_finalize
    recipe = pipeline.load_recipe("alma_sd", [override])
    t0 = time.perf_counter()
    with dask_client(workers=workers, memory_limit=memory_limit) as client:
        client.wait_for_workers(workers)
        cluster_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        with get_task_stream(client) as stream:
            results = pipeline.run(recipe, stores, client=client, progress=False)
        run_s = time.perf_counter() - t1
        peaks = client.run(_worker_peak_rss)
        tasks = stream.data
    compute_task_s = transfer_s = 0.0
    for task in tasks:
        for ss in task.get("startstops", ()):
            span = ss["stop"] - ss["start"]
            if ss["action"] == "compute":
                compute_task_s += span
            elif ss["action"] == "transfer":
                transfer_s += span
    failed = [f"{r.path.name}: {r.error}" for r in results if r.status != "done"]
    report(
        workers=workers,
        cluster_s=cluster_s,
        run_s=run_s,
        build_s=[r.build_seconds for r in results],
        compute_phase_s=max(r.compute_seconds for r in results),
        finalize_s=finalize_s,
        task_compute_s=compute_task_s,
        task_transfer_s=transfer_s,
        n_tasks=len(tasks),
        worker_peak_rss=sorted(peaks.values()),
        partitions=[r.partitions for r in results],
        failed=failed,
    )


def child_build(workdir: Path, kwargs: dict, override: str, repeat: int) -> None:
    """Simulate and convert the many-partition EB; time its graph build and a threaded run."""
    import dask

    import radflow
    import radflow.pipeline as pipeline
    from radflow.converters.msv2_to_store import convert
    from radflow.store import partitions
    from radflow.testing import simulate_single_dish

    ms = simulate_single_dish(workdir / "many.ms", seed=99, overwrite=True, **kwargs).ms_path
    store = convert(ms, workdir / "many.ps.zarr", overwrite=True)
    recipe = pipeline.load_recipe("alma_sd", [override])
    n_parts = len(partitions(radflow.open(store)))
    open_times, times, n_tasks = [], [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        with dask.config.set(scheduler="threads"):
            tree = radflow.open(store)
            t1 = time.perf_counter()
            eb = pipeline.build(recipe, store, tree)
        open_times.append(t1 - t0)
        times.append(time.perf_counter() - t1)
        arrays = [v.data for ds in eb.partitions.values() for v in ds.data_vars.values()]
        arrays += [v.data for ds in {**eb.solutions, **eb.tables}.values() for v in ds.values()]
        keys: set = set()
        for a in arrays:
            if dask.is_dask_collection(a):
                keys.update(a.__dask_graph__().keys())
        n_tasks = len(keys)
    t0 = time.perf_counter()
    (result,) = pipeline.run(recipe, [store], client=None, progress=False, write_summary=False)
    run_s = time.perf_counter() - t0
    report(
        partitions=n_parts,
        open_s=open_times,
        build_s=times,
        n_tasks=n_tasks,
        runner_build_s=result.build_seconds,
        runner_compute_s=result.compute_seconds,
        run_s=run_s,
        status=result.status,
        error=result.error,
    )


# ---------------------------------------------------------------------------------------------
# Parent side.
# ---------------------------------------------------------------------------------------------


def this(*extra: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *extra]


def float_bytes(kw: dict) -> int:
    """FLOAT_DATA bytes of the science spws of one EB."""
    n_int = kw["n_target_scans"] * (
        kw["n_on_per_scan"] + (kw["n_on_subscans"] + 1) * kw["n_off_integrations"]
    )
    return n_int * kw["n_antennas"] * kw["n_basebands"] * kw["n_science_chan"] * N_POL * 4


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-ebs", type=int, default=8, help="execution blocks [8]")
    p.add_argument("--workers", default="1,2", help="worker counts, comma separated [1,2]")
    p.add_argument("--memory-limit", default="2GiB", help="per worker [2GiB]")
    p.add_argument("--antennas", type=int, default=2, help="per EB [2]")
    p.add_argument("--basebands", type=int, default=2, help="per EB (science spws) [2]")
    p.add_argument("--channels", type=int, default=1024, help="per science spw [1024]")
    p.add_argument("--scans", type=int, default=2, help="target scans per EB [2]")
    p.add_argument("--on-per-scan", type=int, default=60, help="ON integrations per scan [60]")
    p.add_argument("--build-antennas", type=int, default=4)
    p.add_argument("--build-basebands", type=int, default=4)
    p.add_argument("--build-scans", type=int, default=2)
    p.add_argument("--build-repeat", type=int, default=1, help="graph builds timed [1]")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/radflow-bench-scaling"))
    p.add_argument("--timeout", type=float, default=900, help="seconds per child process")
    p.add_argument("--poll", type=float, default=0.2, help="RSS polling interval, s")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--prepare-one", nargs=2, metavar=("DIR", "N"), help=argparse.SUPPRESS)
    p.add_argument("--run-one", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    p.add_argument("--build-one", metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.worker_list = [int(w) for w in args.workers.split(",") if w.strip()]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    override = factors_override(args.antennas, args.basebands)
    if args.prepare_one:
        child_prepare(Path(args.prepare_one[0]), int(args.prepare_one[1]), sim_kwargs(args))
        return 0
    if args.run_one:
        workers, memory_limit, *stores = args.run_one
        child_run(int(workers), memory_limit, override, stores)
        return 0
    if args.build_one:
        build_override = factors_override(args.build_antennas, args.build_basebands)
        child_build(Path(args.build_one), build_sim_kwargs(args), build_override, args.build_repeat)
        return 0

    t_start = time.perf_counter()
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    kw = sim_kwargs(args)
    print("radflow scaling benchmark (benchmarks/scaling.py)")
    for line in machine_lines():
        print(line)
    print(
        f"EBs     : {args.n_ebs} x ({args.antennas} antennas, {args.basebands} science spws x "
        f"{args.channels} ch x {N_POL} pol, {args.scans} target scans of {args.on_per_scan} ON "
        f"+ 30 OFF integrations): {float_bytes(kw) / 1e6:.1f} MB FLOAT_DATA each"
    )
    print(f"recipe  : alma_sd, {override}")
    print(f"workers : {args.worker_list}, 1 thread and {args.memory_limit} each\n", flush=True)

    print("preparing: simulate + convert ...", flush=True)
    payload, err, wall, _ = launch(
        this("--prepare-one", str(work), str(args.n_ebs), *_size_args(args)),
        work / "prepare.log",
        args.timeout,
        args.poll,
    )
    if payload is None:
        print(f"preparation failed: {err}")
        return 1
    stores = [Path(s) for s in payload["stores"]]
    print(
        f"  simulated in {payload['simulate_s']:.1f} s, converted in {payload['convert_s']:.1f}"
        f" s; stores {sum(dir_bytes(s) for s in stores) / 1e6:.1f} MB in all",
        flush=True,
    )

    runs: dict[int, dict] = {}
    for workers in args.worker_list:
        copies = work / f"run-{workers}"
        shutil.rmtree(copies, ignore_errors=True)
        copies.mkdir()
        fresh = []
        for s in stores:
            shutil.copytree(s, copies / s.name)
            fresh.append(str(copies / s.name))
        print(f"running {args.n_ebs} EBs on {workers} worker(s) ...", flush=True)
        cmd = this("--run-one", str(workers), args.memory_limit, *fresh, *_size_args(args))
        payload, err, wall, peak = launch(cmd, work / f"run-{workers}.log", args.timeout, args.poll)
        if payload is None:
            print(f"  {workers} worker(s) failed: {err}")
            continue
        payload["process_s"], payload["tree_peak_rss"] = wall, peak
        runs[workers] = payload
        if payload["failed"]:
            print("  failed EBs: " + "; ".join(payload["failed"]))
        print(
            f"  run {payload['run_s']:.1f} s (process {wall:.1f} s), tasks {payload['n_tasks']}",
            flush=True,
        )
        if not args.keep:
            shutil.rmtree(copies, ignore_errors=True)

    print("building the many-partition EB ...", flush=True)
    build, err, _, _ = launch(
        this("--build-one", str(work), *_size_args(args)),
        work / "build.log",
        args.timeout,
        args.poll,
    )
    if build is None:
        print(f"  failed: {err}")

    n = args.n_ebs
    print("\n=== results " + "=" * 70)
    head = (
        f"{'workers':>7} {'run s':>7} {'process s':>9} {'speed-up':>8} "
        f"{'worker peak RSS MB':>19} {'tree peak MB':>12}"
    )
    print(head)
    print("-" * len(head))
    base = runs.get(1)
    for workers, r in sorted(runs.items()):
        speedup = f"{base['run_s'] / r['run_s']:.2f}x" if base else "-"
        peaks = "/".join(f"{p / 1e6:.0f}" for p in r["worker_peak_rss"])
        print(
            f"{workers:>7} {r['run_s']:7.1f} {r['process_s']:9.1f} {speedup:>8} {peaks:>19} "
            f"{r['tree_peak_rss'] / 1e6:12.0f}"
        )
    print(
        "\nper EB (s): build and finalize run in the driver; sched+idle = (workers x compute "
        "phase - task compute) / EBs;\ncompute = task compute time / EBs; overhead = build + "
        "finalize + sched+idle"
    )
    head = (
        f"{'workers':>7} {'build':>7} {'finalize':>8} {'sched+idle':>10} {'compute':>8} "
        f"{'overhead/compute':>16} {'tasks/EB':>8}"
    )
    print(head)
    print("-" * len(head))
    ratios = {}
    for workers, r in sorted(runs.items()):
        build_eb = median(r["build_s"])
        fin_eb = median(r["finalize_s"]) if r["finalize_s"] else 0.0
        idle_eb = max(0.0, workers * r["compute_phase_s"] - r["task_compute_s"]) / n
        compute_eb = r["task_compute_s"] / n
        ratios[workers] = (build_eb + fin_eb + idle_eb) / compute_eb if compute_eb else float("inf")
        print(
            f"{workers:>7} {build_eb:7.2f} {fin_eb:8.2f} {idle_eb:10.2f} {compute_eb:8.2f} "
            f"{ratios[workers]:16.2f} {r['n_tasks'] / n:8.0f}"
        )
    if build is not None:
        print(
            f"\nmany-partition EB: {build['partitions']} partitions, {build['n_tasks']} tasks; "
            f"open {median(build['open_s']):.2f} s, build graph {median(build['build_s']):.2f} s "
            "(runs: "
            + ", ".join(f"{t:.2f}" for t in build["build_s"])
            + f"); runner build_seconds {build['runner_build_s']:.2f} s, compute "
            f"{build['runner_compute_s']:.1f} s (threads), status {build['status']}"
        )

    print("\n=== targets " + "=" * 70)
    if 1 in runs and 2 in runs:
        s = runs[1]["run_s"] / runs[2]["run_s"]
        ok = verdict(s >= SPEEDUP_TARGET)
        print(f"speed-up on 2 workers >= {SPEEDUP_TARGET}: {s:.2f}x -> {ok}")
    else:
        print("speed-up on 2 workers: not measured (needs --workers 1,2)")
    if build is not None:
        b, runner = median(build["build_s"]), build["runner_build_s"]
        print(
            f"graph build (pipeline.build) < {BUILD_TARGET_S:g} s for a "
            f"{build['partitions']}-partition EB: {b:.2f} s -> {verdict(b < BUILD_TARGET_S)}"
        )
        print(
            f"  and with the store's open, update copy and write tasks (runner build_seconds) "
            f"< {BUILD_TARGET_S:g} s: {runner:.2f} s -> {verdict(runner < BUILD_TARGET_S)}"
        )
    for workers, ratio in sorted(ratios.items()):
        print(
            f"runner overhead per EB well under its compute (<= {OVERHEAD_FRACTION:.0%}), "
            f"{workers} worker(s): {ratio:.0%} -> {verdict(ratio <= OVERHEAD_FRACTION)}"
        )
    print(f"\nbenchmark wall time {time.perf_counter() - t_start:.0f} s")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _size_args(args: argparse.Namespace) -> list[str]:
    """The size options, passed on to the children (they rebuild the same parameters)."""
    return [
        f"--antennas={args.antennas}",
        f"--basebands={args.basebands}",
        f"--channels={args.channels}",
        f"--scans={args.scans}",
        f"--on-per-scan={args.on_per_scan}",
        f"--build-antennas={args.build_antennas}",
        f"--build-basebands={args.build_basebands}",
        f"--build-scans={args.build_scans}",
        f"--build-repeat={args.build_repeat}",
    ]


if __name__ == "__main__":
    sys.exit(main())
