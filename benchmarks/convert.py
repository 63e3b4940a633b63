"""Conversion benchmark: MSv2 -> zarr with radflow and its peers, on the same MS, in one run.

What is measured
----------------
For every size in ``--sizes`` (GB, 1 GB = 1e9 bytes) an interferometer MS is simulated with
:func:`radflow.testing.simulate_interferometer` (16 antennas, 4 spw x 256 channels x 4
polarizations, DATA + MODEL_DATA + CORRECTED_DATA, WEIGHT_SPECTRUM, FLAG). The MS is then
converted by

* ``radflow``: ``radflow.converters.msv2_to_store.convert`` (blosc-zstd at
  ``--compression-level``, Dask's default threaded scheduler, one thread per core);
* ``xarray-ms``: ``xarray.open_datatree(ms, engine="xarray-ms:msv2").to_zarr(out)``, the
  plain usage (no ``chunks=``: xarray then loads each variable whole before writing it; zarr's
  default codec);
* ``xarray-ms-chunked`` (opt-in): the same with ``chunks={"time": N}`` (Dask, threaded);
* ``xradio``: ``convert_msv2_to_processing_set(ms, out, persistence_mode="w")`` with its
  defaults (serial, blosc-lz4);
* ``xradio-partition`` (opt-in): xradio with ``parallel_mode="partition"``.

If an xradio run fails with the known xradio 1.3 crash on a WEATHER table that has rows for
fewer stations than the MS has antennas (``conflicting sizes for dimension 'station_name'``),
the failure is reported and the run is repeated as ``<tool>-noweather``: the same call with
xradio's ``create_weather_xds`` replaced by a no-op, so only the small WEATHER subtable is
skipped.

As a floor, every main-table column is read once with python-casacore (``table.getcol`` in
blocks of 50000 rows, one thread): no tool can convert faster than it reads.

How
---
Each conversion (and the floor) runs in a fresh Python process (this script with
``--run-one TOOL MS OUT``), so memory is measured per tool and nothing is shared between tools.
The child reports, as one JSON line:

* ``convert_s``: wall time (``time.perf_counter``) around the conversion call only, after the
  tool's modules are imported (``import_s``); the parent also times the whole child
  (``total_s``: interpreter start + imports + conversion + exit);
* ``peak_rss``: the child's peak resident set size, ``VmHWM`` of ``/proc/self/status``
  (threads included; ``ru_maxrss`` as a fallback). Processes the tool itself would start are
  not included; none of the tools as run here starts any.

OS page caches cannot be dropped without root, so instead every file of the MS is read once
(to /dev/null) right before each tool runs: every tool starts with the MS in the page cache,
and the numbers are CPU/format bound, not disk bound. MB/s = MS bytes on disk (sum of file
sizes, MB = 1e6 bytes) / ``convert_s``. The output size is the sum of the store's file sizes.
"radflow speed-up" is radflow's speed / the tool's speed (= tool seconds / radflow seconds).
With ``--repeat N`` every tool runs N times (cache warmed before each): times are medians,
the peak RSS the largest of the N. The codec column is that of the store's largest array.

Usage::

    python benchmarks/convert.py                       # sizes 1.0,2.0 GB, peers xarray-ms,xradio
    python benchmarks/convert.py --sizes 2.6 --peers none
    python benchmarks/convert.py --peers xarray-ms,xarray-ms-chunked,xradio,xradio-partition

The top level imports only the standard library, so the parent stays small and a child's
``import_s`` really is the tool's import time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from _common import dir_bytes, median, peak_rss_bytes, tail, warm_cache

RESULT_TAG = "RADFLOW_BENCH_RESULT "
FLOOR = "casacore-read"
DEFAULT_PEERS = ("xarray-ms", "xradio")
ALL_PEERS = ("xarray-ms", "xarray-ms-chunked", "xradio", "xradio-partition")

# The simulated MS: an ALMA-like 16-antenna EB, ~1.3 GB per 7 s of simulation.
SIM: dict[str, object] = {
    "n_antennas": 16,
    "n_spw": 4,
    "n_chan": 256,
    "n_pol": 4,
    "n_cycles": 2,
    "extra_columns": ("MODEL_DATA", "CORRECTED_DATA"),
}
FLOOR_BLOCK_ROWS = 50_000
XARRAY_MS_TIME_CHUNK = 64
# The xradio 1.3 crash in create_weather_xds/finalize_station_position (WEATHER rows for fewer
# stations than antennas): the child's stderr then holds this.
XRADIO_WEATHER_BUG = "conflicting sizes for dimension 'station_name'"

DESCRIPTION = {
    "radflow": "radflow convert (blosc-zstd level {level}, Dask threads)",
    "xarray-ms": 'xarray.open_datatree(engine="xarray-ms:msv2").to_zarr() (no chunks)',
    "xarray-ms-chunked": f'xarray-ms with chunks={{"time": {XARRAY_MS_TIME_CHUNK}}} (Dask threads)',
    "xradio": "xradio convert_msv2_to_processing_set (defaults: serial)",
    "xradio-partition": 'xradio, parallel_mode="partition" (Dask threads)',
    "xradio-noweather": "xradio, weather_xds skipped (works around the WEATHER crash)",
    "xradio-partition-noweather": "xradio-partition, weather_xds skipped",
    FLOOR: f"python-casacore getcol, every main column, {FLOOR_BLOCK_ROWS} rows/call (floor)",
}

# Distribution that must be importable for a tool to run.
REQUIRES = {
    "radflow": "radflow",
    "xarray-ms": "xarray-ms",
    "xarray-ms-chunked": "xarray-ms",
    "xradio": "xradio",
    "xradio-partition": "xradio",
    "xradio-noweather": "xradio",
    "xradio-partition-noweather": "xradio",
    FLOOR: "python-casacore",
}


# ---------------------------------------------------------------------------------------------
# Child side: one conversion, measured from inside the process.
# ---------------------------------------------------------------------------------------------


def _prepare(tool: str, compression_level: int) -> Callable[[str, str], None]:
    """Import `tool`'s modules and return the conversion call (imports are timed apart)."""
    if tool == "radflow":
        from radflow.converters.msv2_to_store import ConvertOptions, convert

        options = ConvertOptions(compression_level=compression_level)

        def run(ms: str, out: str) -> None:
            convert(ms, out, overwrite=True, options=options)

        return run

    if tool in ("xarray-ms", "xarray-ms-chunked"):
        import xarray
        import xarray_ms  # noqa: F401  (registers the engine)

        chunks = {"time": XARRAY_MS_TIME_CHUNK} if tool == "xarray-ms-chunked" else None

        def run(ms: str, out: str) -> None:
            dt = xarray.open_datatree(ms, engine="xarray-ms:msv2", chunks=chunks)
            dt.to_zarr(out, mode="w")

        return run

    if tool.startswith("xradio"):
        import logging

        from xradio.measurement_set import convert_msv2_to_processing_set

        logging.disable(logging.INFO)  # xradio logs every partition at INFO
        if tool.endswith("-noweather"):
            from xradio.measurement_set._utils._msv2 import conversion

            conversion.create_weather_xds = lambda *args, **kwargs: None
        mode = "partition" if tool.startswith("xradio-partition") else "none"

        def run(ms: str, out: str) -> None:
            convert_msv2_to_processing_set(ms, out, persistence_mode="w", parallel_mode=mode)

        return run

    if tool == FLOOR:
        from casacore.tables import table

        def run(ms: str, out: str) -> None:
            with table(ms, ack=False) as t:
                nrows = t.nrows()
                for col in t.colnames():
                    try:
                        for start in range(0, nrows, FLOOR_BLOCK_ROWS):
                            t.getcol(col, start, min(FLOOR_BLOCK_ROWS, nrows - start))
                    except RuntimeError:  # a column without defined cells (optional, unset)
                        continue

        return run

    raise ValueError(f"unknown tool {tool!r}")


def run_one(tool: str, ms: str, out: str, compression_level: int) -> None:
    """Child entry point: convert `ms` to `out` with `tool`, print one JSON result line."""
    t0 = time.perf_counter()
    run = _prepare(tool, compression_level)
    t1 = time.perf_counter()
    run(ms, out)
    t2 = time.perf_counter()
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    result = {
        "tool": tool,
        "import_s": t1 - t0,
        "convert_s": t2 - t1,
        "peak_rss": peak_rss_bytes(),
        "children_peak_rss": children,
    }
    sys.stdout.flush()
    print(RESULT_TAG + json.dumps(result), flush=True)


def simulate(ms: str, target_bytes: float, seed: int = 0) -> None:
    """Child entry point: write the benchmark MS of about `target_bytes`."""
    from radflow.testing import integrations_for_size, simulate_interferometer

    n_int = integrations_for_size(target_bytes, **SIM)  # type: ignore[arg-type]
    simulate_interferometer(ms, n_integrations=n_int, seed=seed, overwrite=True, **SIM)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Parent side: orchestration and report. Standard library only.
# ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    tool: str
    ok: bool
    convert_s: float = float("nan")
    import_s: float = float("nan")
    total_s: float = float("nan")
    peak_rss: int = 0
    out_bytes: int | None = None
    codec: str = ""
    error: str = ""
    notes: list[str] = field(default_factory=list)


def _codec_text(codecs: Sequence[dict]) -> str:
    parts = []
    for c in codecs:
        name, cfg = c.get("name", "?"), c.get("configuration", {}) or {}
        if name in ("bytes", "transpose", "crc32c"):
            continue
        if name == "zstd":
            parts.append(f"zstd({cfg.get('level')})")
        elif name == "blosc":
            parts.append(f"blosc-{cfg.get('cname')}({cfg.get('clevel')})")
        else:
            parts.append(name)
    return "+".join(parts) or "none"


def store_codec(store: Path) -> str:
    """Codec of the store's largest array (by uncompressed size), from its zarr metadata."""
    best: tuple[int, str] = (-1, "?")
    for meta in store.rglob("zarr.json"):
        try:
            doc = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("node_type") != "array":
            continue
        n = 1
        for s in doc.get("shape", []):
            n *= s
        if n > best[0]:
            best = (n, _codec_text(doc.get("codecs", [])))
    for meta in store.rglob(".zarray"):  # zarr v2 stores
        try:
            doc = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        n = 1
        for s in doc.get("shape", []):
            n *= s
        if n > best[0]:
            comp = doc.get("compressor") or {}
            best = (n, comp.get("id", "none") + (f"({comp['clevel']})" if "clevel" in comp else ""))
    return best[1]


def installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def launch(
    tool: str, ms: Path, out: Path, level: int, log: Path, timeout: float
) -> tuple[Result, str]:
    """Run `tool` on `ms` in a fresh interpreter; return its result and its stderr."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--run-one",
        tool,
        str(ms),
        str(out),
        "--compression-level",
        str(level),
    ]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        log.write_text(f"$ {' '.join(cmd)}\n[timeout]\n{e.stdout}\n{e.stderr}")
        return Result(tool, ok=False, error=f"timed out after {timeout:.0f} s"), ""
    total = time.perf_counter() - t0
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    payload = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            payload = json.loads(line[len(RESULT_TAG) :])
    if proc.returncode != 0 or payload is None:
        why = f"exit status {proc.returncode}"
        if proc.returncode < 0:
            why = f"killed by signal {-proc.returncode}" + (
                " (out of memory?)" if proc.returncode == -9 else ""
            )
        err = tail(proc.stderr) or "(no stderr)"
        return Result(tool, ok=False, total_s=total, error=f"{why}\n{err}"), proc.stderr
    res = Result(
        tool,
        ok=True,
        convert_s=payload["convert_s"],
        import_s=payload["import_s"],
        total_s=total,
        peak_rss=payload["peak_rss"],
    )
    if payload.get("children_peak_rss"):
        res.notes.append(f"its subprocesses peaked at {payload['children_peak_rss'] / 1e6:.0f} MB")
    return res, proc.stderr


def output_path(workdir: Path, tool: str) -> Path:
    # xradio appends ".ps.zarr" unless the name ends so: use that suffix for every tool.
    return workdir / f"{tool}.ps.zarr"


def _attempt(tool: str, ms: Path, workdir: Path, args: argparse.Namespace) -> tuple[Result, str]:
    """One measured run: warm the cache, convert, measure the output, remove it (unless --keep)."""
    out = output_path(workdir, tool)
    shutil.rmtree(out, ignore_errors=True)
    warm_cache(ms)
    log = workdir / f"{tool}.log"
    res, stderr = launch(tool, ms, out, args.compression_level, log, args.timeout)
    if res.ok and tool != FLOOR and out.exists():
        res.out_bytes = dir_bytes(out)
        res.codec = store_codec(out)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return res, stderr


def run_tool(tool: str, ms: Path, workdir: Path, args: argparse.Namespace) -> list[Result]:
    """Run `tool` ``--repeat`` times; times are medians, the peak RSS is the largest seen.

    Returns the tool's result; for the known xradio WEATHER crash, the failed xradio result and
    the result of the ``<tool>-noweather`` reruns.
    """
    dist = REQUIRES[tool]
    if installed(dist) is None:
        return [Result(tool, ok=False, error=f"not installed ({dist})")]
    done: list[Result] = []
    runs: list[Result] = []
    while len(runs) < args.repeat:
        res, stderr = _attempt(tool, ms, workdir, args)
        retry = tool.startswith("xradio") and not tool.endswith("-noweather")
        if not res.ok and retry and XRADIO_WEATHER_BUG in stderr:
            res.error = res.error.replace("\n", " (known WEATHER crash)\n", 1)
            print(f"    {tool} failed:\n{_indent(res.error, 6)}")
            print(f"    retrying as {tool}-noweather (weather_xds skipped)", flush=True)
            done.append(res)
            tool = f"{tool}-noweather"
            continue
        if not res.ok:
            return [*done, res]
        runs.append(res)
    best = runs[0]
    if len(runs) > 1:
        best.convert_s = median([r.convert_s for r in runs])
        best.import_s = median([r.import_s for r in runs])
        best.total_s = median([r.total_s for r in runs])
        best.peak_rss = max(r.peak_rss for r in runs)
        spread = ", ".join(f"{r.convert_s:.2f}" for r in runs)
        best.notes.append(f"convert s of the {len(runs)} runs: {spread}")
    return [*done, best]


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + ln for ln in text.splitlines())


def machine_lines() -> list[str]:
    ncpu = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = ncpu
    mem = "?"
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) * 1024 / 2**30:.1f} GiB"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [
        f"machine : {platform.system()} {platform.release()}, {platform.machine()}, {model}",
        f"cores   : {usable} usable ({ncpu} online), RAM {mem}",
        f"python  : {platform.python_version()} ({sys.executable})",
    ]


def version_line() -> str:
    dists = [
        "radflow",
        "numpy",
        "xarray",
        "zarr",
        "dask",
        "python-casacore",
        "xarray-ms",
        "arcae",
        "xradio",
    ]
    return "versions: " + ", ".join(f"{d} {installed(d) or 'not installed'}" for d in dists)


def fmt_table(rows: list[Result], ms_bytes: int, radflow_s: float | None) -> list[str]:
    head = (
        f"{'tool':<26} {'convert s':>9} {'MB/s':>7} {'peak RSS MB':>11} {'out MB':>8} "
        f"{'import s':>8} {'total s':>8}  {'codec':<14} {'radflow speed-up':>16}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r.ok:
            first = r.error.splitlines()[0] if r.error else "failed"
            lines.append(f"{r.tool:<26} {'-- ' + first}")
            continue
        mbps = ms_bytes / 1e6 / r.convert_s
        out = f"{r.out_bytes / 1e6:8.0f}" if r.out_bytes is not None else f"{'-':>8}"
        if r.tool in ("radflow", FLOOR) or radflow_s is None:
            ratio = ""
        else:
            ratio = f"{r.convert_s / radflow_s:.2f}x"
        lines.append(
            f"{r.tool:<26} {r.convert_s:9.2f} {mbps:7.0f} {r.peak_rss / 1e6:11.0f} {out} "
            f"{r.import_s:8.2f} {r.total_s:8.2f}  {r.codec or '-':<14} {ratio:>16}"
        )
    return lines


def print_header(args: argparse.Namespace, workdir: Path, tools: list[str]) -> None:
    """Machine, versions, method and tools of this run."""
    print("radflow conversion benchmark (benchmarks/convert.py)")
    for line in machine_lines():
        print(line)
    print(version_line())
    print(f"workdir : {workdir}")
    print(
        "method  : each tool in a fresh process; 'convert s' = wall time of the conversion call"
        " only (after imports);\n"
        "          'total s' = the whole process (interpreter start, imports, exit);"
        " peak RSS = the process's VmHWM;\n"
        "          OS caches cannot be dropped: the MS is read once (cat > /dev/null) before"
        " each tool,\n"
        "          so every tool starts with a warm page cache;"
        " MB/s = MS bytes on disk / 1e6 / convert s;\n"
        f"          runs per tool and size: {args.repeat}"
        + (" (median times, largest peak RSS)" if args.repeat > 1 else "")
    )
    print("tools   :")
    for tool in ([] if args.no_floor else [FLOOR]) + tools:
        print(f"  {tool:<26} {DESCRIPTION[tool].replace('{level}', str(args.compression_level))}")
    if any(t.startswith("xradio") for t in tools):
        print("  (<xradio tool>-noweather: run only after that tool crashed on the WEATHER table)")
    sim = ", ".join(f"{k}={v}" for k, v in SIM.items())
    print(f"MS      : radflow.testing.simulate_interferometer({sim})")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark MSv2 -> zarr conversion: radflow vs xarray-ms and xradio.",
    )
    p.add_argument(
        "--sizes", default="1.0,2.0", help="MS sizes to simulate, GB (1e9 B), comma separated"
    )
    p.add_argument(
        "--peers",
        default=",".join(DEFAULT_PEERS),
        help=f"comma separated, or 'none'; known: {', '.join(ALL_PEERS)}",
    )
    p.add_argument("--compression-level", type=int, default=3, help="radflow's zstd level")
    p.add_argument("--workdir", type=Path, default=None, help="default: a new dir under /tmp")
    p.add_argument("--keep", action="store_true", help="keep the MSs, stores and logs")
    p.add_argument("--no-floor", action="store_true", help="skip the casacore read floor")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per conversion")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per tool and size: median times, largest peak RSS (default 1)",
    )
    p.add_argument("--run-one", nargs=3, metavar=("TOOL", "MS", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--simulate", nargs=2, metavar=("MS", "BYTES"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.size_list = [float(s) for s in args.sizes.split(",") if s.strip()]
    peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    args.peer_list = [] if peers in ([], ["none"]) else peers
    for peer in args.peer_list:
        if peer not in ALL_PEERS:
            p.error(f"unknown peer {peer!r}; known: {', '.join(ALL_PEERS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run_one:
        run_one(*args.run_one, compression_level=args.compression_level)
        return 0
    if args.simulate:
        simulate(args.simulate[0], float(args.simulate[1]))
        return 0

    own_workdir = args.workdir is None
    if own_workdir:
        workdir = Path(tempfile.mkdtemp(prefix="radflow-bench-", dir="/tmp"))
    else:
        workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    tools = ["radflow", *args.peer_list]
    t_start = time.perf_counter()

    summary: dict[str, list[tuple[float, int, Result]]] = {}
    try:
        print_header(args, workdir, tools)
        for size in args.size_list:
            ms = workdir / f"sim_{size:g}GB.ms"
            print(f"\n=== MS of {size:g} GB requested " + "=" * 60)
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--simulate", str(ms), str(size * 1e9)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                print(f"simulation failed:\n{tail(proc.stderr, 12)}")
                return 1
            ms_bytes = dir_bytes(ms)
            print(
                f"simulated {ms.name}: {ms_bytes / 1e6:.0f} MB on disk"
                f" in {time.perf_counter() - t0:.1f} s;"
                f" warm read {ms_bytes / 1e6 / warm_cache(ms):.0f} MB/s"
            )
            _print_shape(ms)
            rows: list[Result] = []
            for tool in ([] if args.no_floor else [FLOOR]) + tools:
                print(f"  running {tool} ...", flush=True)
                results = run_tool(tool, ms, workdir, args)
                res = results[-1]
                if not res.ok:
                    print(f"    {res.tool} failed:\n{_indent(res.error, 6)}")
                for res in results:
                    rows.append(res)
                    summary.setdefault(res.tool, []).append((size, ms_bytes, res))
            radflow = next((r for r in rows if r.tool == "radflow" and r.ok), None)
            print()
            for line in fmt_table(rows, ms_bytes, radflow.convert_s if radflow else None):
                print(line)
            floor = next((r for r in rows if r.tool == FLOOR and r.ok), None)
            if radflow and floor:
                print(
                    f"radflow conversion time / casacore read floor = "
                    f"{radflow.convert_s / floor.convert_s:.1f}"
                )
            if radflow:
                for r in rows:
                    if r.ok and r.tool not in ("radflow", FLOOR):
                        speed = r.convert_s / radflow.convert_s
                        rss = radflow.peak_rss / r.peak_rss
                        print(
                            f"radflow speed / {r.tool} speed = {speed:.2f}"
                            f"  (peak RSS radflow / {r.tool} = {rss:.2f})"
                        )
            for r in rows:
                for note in r.notes:
                    print(f"note: {r.tool}: {note}")
            if not args.keep:
                shutil.rmtree(ms, ignore_errors=True)
                shutil.rmtree(ms.with_name(ms.name + ".truth.zarr"), ignore_errors=True)

        if len(args.size_list) > 1:
            print("\n=== peak RSS (MB) by MS size " + "=" * 60)
            sizes = sorted({(s, b) for rs in summary.values() for s, b, _ in rs})
            print(f"{'tool':<26} " + " ".join(f"{b / 1e6:>8.0f} MB MS" for _, b in sizes))
            for tool, rs in summary.items():
                by_size = {s: r for s, _, r in rs}
                cells = []
                for s, _ in sizes:
                    r = by_size.get(s)
                    cells.append(f"{r.peak_rss / 1e6:>14.0f}" if r and r.ok else f"{'-':>14}")
                print(f"{tool:<26} " + " ".join(cells))
        print(f"\nbenchmark wall time {time.perf_counter() - t_start:.0f} s")
    finally:
        if args.keep:
            print(f"kept: {workdir}")
        elif own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for log in workdir.glob("*.log"):
                log.unlink()
    return 0


def _print_shape(ms: Path) -> None:
    """Rows and shape of the MS, read in a child (keeps casacore out of the parent)."""
    code = (
        "from casacore.tables import table;"
        f"t=table({str(ms)!r},ack=False);"
        "print(t.nrows(), len(t.colnames()), t.getcell('DATA',0).shape)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode == 0:
        nrows, ncols, shape = proc.stdout.strip().split(" ", 2)
        print(f"main table: {nrows} rows, {ncols} columns, DATA cell shape {shape}")


if __name__ == "__main__":
    sys.exit(main())
