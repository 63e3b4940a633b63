"""The README's first command: simulate EBs, convert and calibrate them on a local Dask cluster,
and compare the results with the injected truth."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.table import Table

import radflow
from radflow import schema
from radflow.cli import console
from radflow.store import partitions
from radflow.testing import SimulatedEB

JY_PER_K = 42.0  # the demo's own Jy/K factor (ALMA 12 m total power, band 6, is ~40-45)
# setjy for the simulated flux calibrator J1924-2914 (3 Jy at 100 GHz, spectral index -0.7);
# real data would use the Perley-Butler standard or the pipeline's flux.csv
FLUX_MODEL = ["setjy.standard=manual", "setjy.fluxdensity=3.0", "setjy.spix=-0.7",
              "setjy.reffreq=100GHz"]  # fmt: skip


def run_demo(workdir: Path, workers: int = 2) -> int:
    """Simulate a single-dish and an interferometer EB in `workdir`, convert both in one Dask
    graph on a local cluster of `workers` processes, calibrate the single-dish EB with the
    ``alma_sd`` recipe on the same cluster, and compare the results with the injected truth."""
    from radflow.cli import _print_info
    from radflow.cluster import dask_client
    from radflow.converters.msv2_to_store import convert_many
    from radflow.pipeline import load_recipe, run
    from radflow.testing import simulate_interferometer, simulate_single_dish

    workdir.mkdir(parents=True, exist_ok=True)
    console.rule("1. simulate two execution blocks (MSv2 with known truth)")
    sd = simulate_single_dish(
        workdir / "demo_sd.ms", mode="ps", n_basebands=2, n_science_chan=512, seed=1,
        overwrite=True,
    )  # fmt: skip
    ifm = simulate_interferometer(workdir / "demo_if.ms", seed=2, overwrite=True)
    for eb in (sd, ifm):
        console.print(f"  {eb.ms_path}  (truth: {eb.truth_path.name})")
    factors = workdir / "jyperk.csv"
    factors.write_text(
        "MS,Antenna,Spwid,Polarization,Factor\n"
        + "".join(
            f"{sd.ms_path.name},{antenna},{int(spw)},I,{JY_PER_K}\n"
            for antenna in sd.truth.antenna_name.values
            for spw in sd.truth.science_spw.values
        )
    )

    with dask_client(workers=workers) as client:
        if client is not None:
            console.print(f"  Dask dashboard: {client.dashboard_link}")
        console.rule(f"2. convert both in one Dask graph on a local cluster ({workers} workers)")
        start = time.perf_counter()
        stores = convert_many([sd.ms_path, ifm.ms_path], overwrite=True)
        console.print(f"  converted in {time.perf_counter() - start:.1f} s")
        _print_info(str(stores[0]))

        console.rule("3. calibrate the single-dish EB: radflow run alma_sd (same cluster)")
        recipe = load_recipe("alma_sd", [f"jyperk.factors={factors}"])
        console.print("  " + " -> ".join(s.step for s in recipe.steps))
        start = time.perf_counter()
        (result,) = run(recipe, [stores[0]], client=client, progress=False)
        if result.status != "done":
            console.print(f"[red]  calibration failed: {result.error}[/red]")
            return 1
        console.print(
            f"  calibrated {result.partitions} partitions in {time.perf_counter() - start:.1f} s"
            f"; groups {', '.join(result.groups)}; baseline tables "
            + ", ".join(str(t) for t in result.tables)
        )

        console.rule("4. calibrate the interferometer EB: radflow run alma_if (same cluster)")
        if_recipe = load_recipe("alma_if", FLUX_MODEL)
        console.print("  " + " -> ".join(s.step for s in if_recipe.steps))
        start = time.perf_counter()
        (if_result,) = run(if_recipe, [stores[1]], client=client, progress=False)
        if if_result.status != "done":
            console.print(f"[red]  calibration failed: {if_result.error}[/red]")
            return 1
        console.print(
            f"  calibrated {if_result.partitions} partitions in "
            f"{time.perf_counter() - start:.1f} s; CASA caltables and the fluxscale result: "
            + ", ".join(t.name for t in if_result.tables)
        )

    console.rule("5. interferometer: fluxscale-derived flux densities against the truth")
    console.print(_flux_table(ifm, stores[1]))
    console.rule("6. single dish: recovered line peak per spw against the injected truth")
    console.print(_line_table(sd, stores[0]))
    console.print(
        f"  export for imaging in CASA: radflow export {stores[0]} --group jy --to {sd.ms_path}"
    )
    console.rule("7. the stores against the injected truth")
    table = Table("quantity", "in the store", "injected", "max |difference|")
    for row in _single_dish_checks(sd, stores[0]) + _interferometer_checks(ifm, stores[1]):
        table.add_row(*row)
    console.print(table)
    return 0


def _line_table(eb: SimulatedEB, store: Path) -> Table:
    """Per science spw: the strongest line's peak in K and Jy, calibrated and injected."""
    tree = radflow.open(store)
    truth = eb.truth
    per_spw: dict[int, dict[str, list[np.ndarray]]] = {}
    for node in partitions(tree).values():
        info = node.attrs[schema.ATTR_PARTITION_INFO]
        if schema.INTENT_ON_SOURCE not in info[schema.PI_INTENTS]:
            continue
        ds = node.ds
        spw = int(info[schema.PI_SPW_ID])
        spectra = per_spw.setdefault(spw, {"corrected": [], "baselined": [], "jy": []})
        for group in spectra:
            var = schema.data_var_name(schema.SPECTRUM, group)
            spectra[group].append(
                ds[var].mean(schema.TIME).values.reshape(-1, ds.sizes["polarization"])
            )
    table = Table("spw", "injected peak (K)", "Ta* (K)", "Ta* baselined (K)",
                  f"injected x {JY_PER_K:g} Jy/K (Jy)", "S (Jy)", "difference (K)")  # fmt: skip
    for spw, spectra in sorted(per_spw.items()):
        line = truth.LINE_SPECTRUM.sel(science_spw=spw).values
        peak_chan = int(np.argmax(line))
        injected = float(line[peak_chan])
        got = {g: float(np.mean([s[peak_chan] for s in v])) for g, v in spectra.items()}
        table.add_row(str(spw), f"{injected:.3f}", f"{got['corrected']:.3f}",
                      f"{got['baselined']:.3f}", f"{injected * JY_PER_K:.1f}",
                      f"{got['jy']:.1f}", f"{got['baselined'] - injected:+.3f}")  # fmt: skip
    return table


def _flux_table(eb: SimulatedEB, store: Path) -> Table:
    """Per transfer calibrator and spw: fluxscale's flux density (CASA's dict, written beside
    the store) against the injected one, and against what fluxscale can recover at best: the
    injected flux scaled by the gain amplitude drift between the flux and transfer scans."""
    import json

    result = json.loads(store.with_name(store.name.removesuffix(".ps.zarr") + ".flux.json")
                        .read_text())  # fmt: skip
    truth = eb.truth
    gain_amp = np.abs(truth["GAIN"].values)
    scan_field = np.array([str(f) for f in truth["FIELD"].values])
    names = [str(f) for f in truth[schema.FIELD_NAME].values]
    reference = next(n for n, i in zip(names, truth["FIELD_INTENT"].values, strict=True)
                     if "CALIBRATE_FLUX" in str(i))  # fmt: skip
    table = Table("field", "spw", "fluxscale (Jy)", "injected (Jy)", "injected x gain drift",
                  "difference / error")  # fmt: skip
    for entry in result.values():
        if not isinstance(entry, dict) or "fieldName" not in entry:
            continue
        field = entry["fieldName"]
        drift = np.median(gain_amp[scan_field == field].mean(0)
                          / gain_amp[scan_field == reference].mean(0)) ** 2  # fmt: skip
        for spw, injected in enumerate(truth["FLUX_DENSITY_SPW"].values[names.index(field)]):
            flux, err = entry[str(spw)]["fluxd"][0], entry[str(spw)]["fluxdErr"][0]
            expected = injected * drift
            table.add_row(field, str(spw), f"{flux:.4f} +- {err:.4f}", f"{injected:.4f}",
                          f"{expected:.4f}", f"{(flux - expected) / err:+.2f}")  # fmt: skip
    return table


def _single_dish_checks(eb: SimulatedEB, store: Path) -> list[tuple[str, ...]]:
    """SYSCAL Tsys spectra and pointing as stored, against what the simulator wrote."""
    tree = radflow.open(store)
    truth = eb.truth
    rows = []
    worst_tsys, n_spectra = 0.0, 0
    for node in partitions(tree).values():
        if schema.SYSTEM_CALIBRATION_XDS not in node.children:
            continue
        tsys = node[schema.SYSTEM_CALIBRATION_XDS].ds[schema.TSYS]
        antenna = str(tsys[schema.ANTENNA_NAME].values[0])
        injected = truth["SYSCAL_TSYS"].sel(antenna_name=antenna).isel(tsys_spw=0)
        stored = tsys.sel(antenna_name=antenna).values  # (time, receptor, chan)
        diff = np.abs(stored - injected.values.transpose(0, 2, 1))
        worst_tsys = max(worst_tsys, float(diff.max()))
        n_spectra += stored.shape[0] * stored.shape[1]
    median_tsys = float(truth["SYSCAL_TSYS"].median())
    rows.append(("SD Tsys spectra (K)", f"{n_spectra} spectra, median {median_tsys:.1f} K",
                 "SYSCAL_TSYS", f"{worst_tsys:.2e} K"))  # fmt: skip
    worst_pointing = 0.0
    for node in partitions(tree).values():
        if schema.POINTING_XDS not in node.children:
            continue
        beam = node[schema.POINTING_XDS].ds[schema.POINTING_BEAM]
        t_unix = truth["time_unix"].values
        wanted = np.isin(t_unix, beam[schema.TIME_POINTING].values)
        injected = truth["POINTING_DIRECTION"].values[wanted]
        stored = beam.isel(antenna_name=0).sel(time_pointing=t_unix[wanted]).values
        worst_pointing = max(worst_pointing, float(np.abs(stored - injected).max()))
    rows.append(("SD pointing (RA, Dec)", "pointing_xds", "POINTING_DIRECTION",
                 f"{np.degrees(worst_pointing) * 3600:.2e} arcsec"))  # fmt: skip
    return rows


def _interferometer_checks(eb: SimulatedEB, store: Path) -> list[tuple[str, ...]]:
    """Flags and visibility amplitudes as stored, against what the simulator injected."""
    tree = radflow.open(store)
    truth = eb.truth
    n_flagged = 0
    ratios = []
    for node in partitions(tree).values():
        ds = node.ds
        real = ds[schema.MSV2_ROW] >= 0  # padding is flagged too, but was never in the MS
        n_flagged += int((ds[schema.FLAG] & real).sum())
        info = ds.attrs[schema.ATTR_PARTITION_INFO]
        field = info[schema.PI_FIELD][0]
        spw = info[schema.PI_SPW_ID]
        flux = float(truth["FLUX_DENSITY_SPW"].sel(field_name=field).isel(spw=spw))
        if flux < 5 * float(truth["NOISE_SIGMA"].isel(spw=spw)):
            continue  # a weak target: its median amplitude measures the noise, not the flux
        vis, flag = ds[schema.VISIBILITY].values, ds[schema.FLAG].values  # small demo EB
        amp = np.median(np.abs(vis[~flag]))
        ratios.append((field, float(amp) / flux))
    injected_flags = int(truth["N_FLAGGED_SAMPLES"])
    by_field = {}
    for field, r in ratios:
        by_field.setdefault(field, []).append(r)
    rows = [
        (
            "IF flagged samples",
            str(n_flagged),
            str(injected_flags),
            str(abs(n_flagged - injected_flags)),
        )
    ]
    for field, rs in sorted(by_field.items()):
        spread = f"{np.max(np.abs(np.array(rs) - 1)):.3f}"
        label = f"IF median |V| / S_true, {field}"
        rows.append((label, f"{np.median(rs):.3f}", "~1 (|g|, |B| ~ 1)", spread))
    return rows
