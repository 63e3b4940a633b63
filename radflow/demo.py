"""The README's first command: simulate EBs, convert them on a local Dask cluster, report."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

console = Console()


def run_demo(workdir: Path, workers: int = 2) -> int:
    """Simulate a single-dish and an interferometer EB in `workdir`, convert both to stores in
    one Dask graph on a local cluster of `workers` processes, and print what the stores hold."""
    from radflow.cli import _print_info
    from radflow.cluster import dask_client
    from radflow.converters.msv2_to_store import convert_many
    from radflow.testing import simulate_interferometer, simulate_single_dish

    workdir.mkdir(parents=True, exist_ok=True)
    console.rule("1. simulate two execution blocks (MSv2 with known truth)")
    sd = simulate_single_dish(workdir / "demo_sd.ms", mode="ps", seed=1, overwrite=True)
    ifm = simulate_interferometer(workdir / "demo_if.ms", seed=2, overwrite=True)
    for eb in (sd, ifm):
        console.print(f"  {eb.ms_path}  (truth: {eb.truth_path.name})")

    console.rule(f"2. convert both in one Dask graph on a local cluster ({workers} workers)")
    with dask_client(workers=workers) as client:
        if client is not None:
            console.print(f"  Dask dashboard: {client.dashboard_link}")
        start = time.perf_counter()
        stores = convert_many([sd.ms_path, ifm.ms_path], overwrite=True)
        console.print(f"  converted in {time.perf_counter() - start:.1f} s")

    console.rule("3. what the stores hold")
    for store in stores:
        _print_info(str(store))
    from radflow.demo_checks import report_truth

    report_truth(sd, ifm, stores)
    return 0
