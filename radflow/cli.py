"""The ``radflow`` command: convert, info, export, simulate, run, demo."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

# Wide enough for the partition table when output goes to a file or CI log.
console = Console(width=None if sys.stdout.isatty() else 180)


def _print_info(store: str) -> None:
    import radflow
    from radflow.summary import overview, partition_table

    tree = radflow.open(store)
    ov = overview(tree)
    console.print(f"[bold]{store}[/bold]  (from {ov['source_ms']}, {ov['ms_rows']} MS rows)")
    console.print(
        f"  {ov['partitions']} partitions, spws {', '.join(ov['spws'])}; scans "
        f"{', '.join(str(s) for s in ov['scans'])}; {ov['antennas']} antennas; "
        f"{ov['start_utc']} to {ov['end_utc']} UTC"
    )
    console.print(f"  intents: {', '.join(ov['intents'])}")
    if ov["nonfinite_flagged"]:
        console.print(
            f"  [yellow]{ov['nonfinite_flagged']} samples were NaN/inf in the MS: kept and flagged"
            "[/yellow]"
        )
    rows = partition_table(tree)
    table = Table(show_lines=False)
    columns = ["partition", "spw", "scan", "intents", "field", "antennas", "shape",
               "polarization", "freq_GHz", "start_utc", "duration_s", "groups",
               "nonfinite_flagged"]  # fmt: skip
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*(str(r[c]) for c in columns))
    console.print(table)
    subs = sorted({s for r in rows for s in r["sub_datasets"].split(",") if s})
    console.print(f"  sub-datasets: {', '.join(subs)}")
    console.print("  shape = time x baseline (or antenna) x frequency x polarization")


def _cmd_convert(args: argparse.Namespace) -> int:
    from radflow.cluster import dask_client
    from radflow.converters.msv2_to_store import ConvertOptions, convert_many

    if args.output and len(args.ms) > 1:
        console.print("[red]--output takes one MS; convert several MSs without it[/red]")
        return 2
    options = ConvertOptions(
        columns=tuple(args.columns.split(",")) if args.columns else None,
        time_chunk=args.time_chunk,
        chunk_bytes=int(args.chunk_mb * 2**20),
        compression_level=args.compression_level,
        with_pointing=not args.no_pointing,
    )
    with dask_client(args.scheduler, args.workers) as client:
        if client is not None:
            console.print(f"Dask dashboard: {client.dashboard_link}")
        start = time.perf_counter()
        outs = convert_many(
            args.ms,
            [args.output] if args.output else None,
            overwrite=args.overwrite,
            options=options,
            progress=client is None,
        )
        for ms, out in zip(args.ms, outs, strict=True):
            console.print(f"{ms} -> {out}")
        console.print(f"converted {len(outs)} MS in {time.perf_counter() - start:.1f} s")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    for store in args.store:
        _print_info(store)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from radflow.converters.store_to_msv2 import export

    column = export(
        args.store,
        args.to,
        group=args.group,
        column=args.column,
        write_flags=not args.no_flags,
        write_weights=not args.no_weights,
    )
    console.print(f"{args.store} group {args.group!r} -> {args.to} column {column}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from radflow.testing import simulate_interferometer, simulate_single_dish

    if args.kind == "single-dish":
        eb = simulate_single_dish(args.ms, mode=args.mode, seed=args.seed, overwrite=args.overwrite)
    else:
        eb = simulate_interferometer(args.ms, seed=args.seed, overwrite=args.overwrite)
    console.print(f"wrote {eb.ms_path} and its truth {eb.truth_path}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from radflow import schema
    from radflow.actions import FLUXSCALE_REPORT_SUFFIX
    from radflow.cluster import dask_client, load_profile
    from radflow.pipeline import load_recipe, run

    recipe = load_recipe(args.recipe, args.set or ())
    profile = load_profile(args.cluster) if args.cluster else None  # validated before any job
    console.print(
        f"recipe [bold]{recipe.name}[/bold] ({recipe.source}): "
        + " -> ".join(s.step for s in recipe.steps)
    )
    if profile is not None:
        console.print(f"cluster profile {profile.source} ({profile.kind})")
    start = time.perf_counter()
    with dask_client(args.scheduler, args.workers, profile=profile) as client:
        if client is not None:
            console.print(f"Dask dashboard: {client.dashboard_link}")
        results = run(
            recipe,
            args.inputs,
            client=client,
            progress=not args.no_progress,
            force=args.force,
            outdir=args.outdir,
            summary_dir=args.summary_dir,
            console=console,
        )
    table = Table(title=f"radflow run {recipe.name}: {time.perf_counter() - start:.1f} s")
    for c in ("execution block", "status", "time_s", "partitions", "groups", "tables / error"):
        table.add_column(c, overflow="fold")
    colours = {schema.STATUS_DONE: "green", schema.STATUS_SKIPPED: "cyan"}
    for r in results:
        detail = r.error or ", ".join(str(t) for t in r.tables) or "-"
        colour = colours.get(r.status, "red")
        name = str(r.source) + (f" -> {r.path}" if r.converted else "")
        table.add_row(name, f"[{colour}]{r.status}[/{colour}]", f"{r.seconds:.1f}",
                      str(r.partitions), ", ".join(r.groups), detail)  # fmt: skip
    console.print(table)
    for r in results:
        for note in r.notes:
            console.print(f"  {r.path}: {note}")
        for path in r.tables:
            if str(path).endswith(FLUXSCALE_REPORT_SUFFIX):
                console.print(f"fluxscale of {r.path}:\n{path.read_text()}")
    if results.summary_path is not None:
        console.print(f"summary: {results.summary_path}")
    failed = [r for r in results if r.status == schema.STATUS_FAILED]
    if failed:
        console.print(f"[red]{len(failed)} of {len(results)} execution block(s) failed[/red]")
    return 1 if failed else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from radflow.demo import run_demo

    return run_demo(Path(args.dir), workers=args.workers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radflow", description="Calibrate radio-telescope data at cluster scale."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="MeasurementSet(s) -> radflow store(s) (<name>.ps.zarr)")
    p.add_argument("ms", nargs="+", help="MeasurementSet directories")
    p.add_argument("-o", "--output", help="output store (one MS only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--columns", help="data columns, e.g. DATA,CORRECTED_DATA (default: all)")
    p.add_argument("--time-chunk", type=int, help="integrations per chunk (default: by size)")
    p.add_argument("--chunk-mb", type=float, default=64, help="target chunk size, MiB [64]")
    p.add_argument("--compression-level", type=int, default=3, help="zstd level, 0=off [3]")
    p.add_argument("--no-pointing", action="store_true", help="skip the POINTING subtable")
    p.add_argument("--scheduler", help="address of a running Dask scheduler")
    p.add_argument(
        "--workers", type=int, default=0, help="local Dask cluster of N processes (0: threads)"
    )
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("info", help="partitions, intents, spws, scans, antennas, shapes, times")
    p.add_argument("store", nargs="+")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("export", help="write a data group back into an MS column")
    p.add_argument("store")
    p.add_argument("--to", required=True, help="the MS the store was converted from")
    p.add_argument("--group", default="corrected", help="data group [corrected]")
    p.add_argument("--column", help="CORRECTED_DATA (default), DATA, FLOAT_DATA or MODEL_DATA")
    p.add_argument("--no-flags", action="store_true", help="leave FLAG/FLAG_ROW untouched")
    p.add_argument("--no-weights", action="store_true", help="leave weights untouched")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("simulate", help="write a simulated EB (MS + truth) for tests and demos")
    p.add_argument("kind", choices=["single-dish", "interferometer"])
    p.add_argument("ms")
    p.add_argument("--mode", default="ps", choices=["ps", "otfraster"], help="single-dish mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser(
        "run", help="run a recipe (e.g. alma_sd) over execution blocks on one Dask cluster"
    )
    p.add_argument("recipe", help="recipe YAML file, or a packaged recipe name (alma_sd)")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="EB",
        help="radflow stores (<name>.ps.zarr) or MeasurementSets (converted in the same run)",
    )
    p.add_argument(
        "--set", action="append", metavar="STEP.PARAM=VALUE", help="override a recipe parameter"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--cluster",
        metavar="PROFILE",
        help="cluster profile: a YAML file or a packaged name (local, slurm, pbs, kubernetes, "
        "gateway; see deploy/)",
    )
    where.add_argument("--scheduler", help="address of a running Dask scheduler")
    where.add_argument(
        "--workers", type=int, default=0, help="local Dask cluster of N processes (0: threads)"
    )
    p.add_argument(
        "--force", action="store_true", help="run blocks whose outputs are already up to date"
    )
    p.add_argument("--outdir", help="where stores converted from MSs go (default: beside the MS)")
    p.add_argument(
        "--summary-dir",
        help="where radflow-run-<time>.json goes (default: --outdir, else the first store's "
        "directory)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="simulate EBs, convert them on a local Dask cluster, report")
    p.add_argument("--dir", default="demo", help="working directory [demo]")
    p.add_argument("--workers", type=int, default=2, help="local Dask worker processes [2]")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        # Input problems (bad MS, existing output, wrong group...) are reported, not traced.
        console.print(f"[red]radflow {args.command}: {exc}[/red]")
        return 1


if __name__ == "__main__":
    sys.exit(main())
