"""Recipe actions: how each step named in a recipe (``graphs/*.yaml``) runs on a whole execution
block.

A calibration step (``radflow.cal.*``) works on one partition or one solution; an action picks
the partitions and solutions it needs from the block (which OFF partitions go with which ON
partition, which Tsys spw with which science spw) and records what it made. Actions build lazy
graphs only: :mod:`radflow.pipeline` computes and writes everything at once.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from radflow import schema, store
from radflow.cal import apply as applycal
from radflow.cal import (
    bandpass,
    baseline,
    bpoly,
    fluxscale,
    gain,
    gfluxscale,
    jyperk,
    sdcal,
    setjy,
    sky,
    tsys,
)
from radflow.converters.jyperk_csv import read_jyperk_csv


class ActionError(ValueError):
    """A recipe step cannot run on an execution block (missing data, bad parameter)."""


@dataclass
class ExecutionBlock:
    """One execution block being reduced: its store and everything the recipe adds to it."""

    path: Path
    tree: xr.DataTree
    partitions: dict[str, xr.Dataset]
    solutions: dict[str, xr.Dataset] = field(default_factory=dict)
    # interferometer solution tables by name (spw id -> Dataset), for later steps' gaintable
    caltables: dict[str, dict[int, xr.Dataset]] = field(default_factory=dict)
    tables: dict[str, xr.Dataset] = field(default_factory=dict)
    new_groups: dict[str, list[str]] = field(default_factory=dict)  # partition -> groups added
    notes: list[str] = field(default_factory=list)
    # files written beside the store once its results are in place (e.g. CASA caltables): each
    # callable gets the updated store's path and returns the paths it wrote
    exports: list[Callable[[Path], list[Path]]] = field(default_factory=list)

    def info(self, name: str) -> dict[str, Any]:
        return self.partitions[name].attrs.get(schema.ATTR_PARTITION_INFO) or {}

    def source_ms(self) -> str | None:
        return (self.tree.attrs.get(schema.ATTR_SOURCE_MS) or {}).get("path")

    def update(self, name: str, ds: xr.Dataset, group: str) -> None:
        self.partitions[name] = ds
        self.new_groups.setdefault(name, []).append(group)


Action = Callable[..., None]
ACTIONS: dict[str, Action] = {}


def action(name: str) -> Callable[[Action], Action]:
    """Register a recipe action under `name`."""

    def decorator(fn: Action) -> Action:
        ACTIONS[name] = fn
        return fn

    return decorator


def parameters(name: str) -> dict[str, Any]:
    """The parameters of action `name` and their defaults (what ``--set`` may change)."""
    fn = get_action(name)
    sig = inspect.signature(fn)
    return {
        p.name: p.default
        for p in list(sig.parameters.values())[1:]
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def get_action(name: str) -> Action:
    if name not in ACTIONS:
        raise ActionError(
            f"unknown recipe step {name!r}; known steps: {', '.join(sorted(ACTIONS))}"
        )
    return ACTIONS[name]


# ---- single dish ----


def _has_intent(info: Mapping[str, Any], intent: str) -> bool:
    return any(intent in str(i) for i in info.get(schema.PI_INTENTS) or [])


def _sd_keys(eb: ExecutionBlock) -> dict[tuple[int, str], list[str]]:
    """ON-source spectrum partitions by (spw, antenna)."""
    out: dict[tuple[int, str], list[str]] = {}
    for name, ds in eb.partitions.items():
        info = eb.info(name)
        if ds.attrs.get(schema.ATTR_TYPE) != schema.TYPE_SPECTRUM:
            continue
        if not _has_intent(info, schema.INTENT_ON_SOURCE):
            continue
        antenna = str(info[schema.PI_ANTENNA][0])
        out.setdefault((int(info[schema.PI_SPW_ID]), antenna), []).append(name)
    if not out:
        raise ActionError(
            f"{eb.path}: no single-dish {schema.INTENT_ON_SOURCE} partitions to calibrate"
        )
    return out


def _sorted_by_time(eb: ExecutionBlock, names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: float(eb.partitions[n][schema.TIME].values[0]))


@action("tsys")
def tsys_action(eb: ExecutionBlock, *, spwmap: Any = None) -> None:
    """Tsys solutions for every science spw (:func:`radflow.cal.tsys.solve`)."""
    syscal = tsys.system_calibration(eb.tree)
    for spw in sorted({spw for spw, _ in _sd_keys(eb)}):
        try:
            eb.solutions[f"tsys_spw{spw}"] = tsys.solve(eb.tree, spw, spwmap=spwmap, syscal=syscal)
        except tsys.TsysError as exc:
            raise ActionError(f"{eb.path}: {exc}") from exc


def _pointing_offsets(eb: ExecutionBlock, name: str) -> np.ndarray:
    """(n_time, 2) pointing offsets (rad, RA cos Dec and Dec) at the data times of `name`."""
    node = eb.tree[name]
    if schema.POINTING_XDS not in node.children:
        raise ActionError(f"{eb.path}: partition {name} has no pointing_xds (sky mode 'otf')")
    pointing = node[schema.POINTING_XDS].to_dataset()
    beam = pointing[schema.POINTING_BEAM].isel({schema.ANTENNA_NAME: 0}).values
    t_point = pointing[schema.TIME_POINTING].values
    times = eb.partitions[name][schema.TIME].values
    idx = np.clip(np.searchsorted(t_point, times), 0, t_point.size - 1)
    direction = beam[idx]
    centre = np.median(direction, axis=0)
    return np.stack(
        [(direction[:, 0] - centre[0]) * np.cos(centre[1]), direction[:, 1] - centre[1]], axis=1
    )


@action("sky")
def sky_action(
    eb: ExecutionBlock,
    *,
    mode: str = "ps",
    fraction: float | None = 0.1,
    noff: int | None = None,
    average: str = "block",
    group: str = schema.GROUP_BASE,
) -> None:
    """OFF spectra per (spw, antenna) (:func:`radflow.cal.sky.solve`)."""
    for (spw, antenna), on_names in _sd_keys(eb).items():
        if mode == "ps":
            names = [
                n
                for n in eb.partitions
                if eb.info(n).get(schema.PI_SPW_ID) == spw
                and str((eb.info(n).get(schema.PI_ANTENNA) or [None])[0]) == antenna
                and _has_intent(eb.info(n), schema.INTENT_OFF_SOURCE)
            ]
            if not names:
                raise ActionError(
                    f"{eb.path}: sky mode 'ps': no {schema.INTENT_OFF_SOURCE} data for spw {spw} "
                    f"antenna {antenna}; data without OFF scans need mode 'otfraster' or 'otf'"
                )
        else:
            names = on_names
        names = _sorted_by_time(eb, names)
        pointing = [_pointing_offsets(eb, n) for n in names] if mode == "otf" else None
        try:
            eb.solutions[f"sky_spw{spw}_{antenna}"] = sky.solve(
                [eb.partitions[n] for n in names],
                mode=mode,  # type: ignore[arg-type]
                group=group,
                fraction=fraction,
                noff=noff,
                average=average,  # type: ignore[arg-type]
                pointing=pointing,
            )
        except sky.SkyError as exc:
            raise ActionError(f"{eb.path}: {exc}") from exc


@action("sdcal")
def sdcal_action(
    eb: ExecutionBlock,
    *,
    group: str = schema.GROUP_BASE,
    output: str = schema.GROUP_CORRECTED,
    interp: str = "linear",
    weight_tsys: str = "channel",
) -> None:
    """Ta* = Tsys (ON - OFF)/OFF for every ON partition (:func:`radflow.cal.sdcal.apply`), with
    one :class:`radflow.cal.sdcal.Calibrator` per antenna and spw."""
    for (spw, antenna), names in _sd_keys(eb).items():
        tsys_solution = eb.solutions.get(f"tsys_spw{spw}")
        sky_solution = eb.solutions.get(f"sky_spw{spw}_{antenna}")
        if tsys_solution is None or sky_solution is None:
            raise ActionError(f"{eb.path}: step sdcal needs steps tsys and sky before it")
        calibrate = sdcal.Calibrator(
            sky_solution,
            tsys_solution,
            interp_method=interp,  # type: ignore[arg-type]
            weight_tsys=weight_tsys,  # type: ignore[arg-type]
        )
        for name in names:
            eb.update(name, calibrate(eb.partitions[name], group=group, output=output), output)


@action("baseline")
def baseline_action(
    eb: ExecutionBlock,
    *,
    group: str = schema.GROUP_CORRECTED,
    output: str = schema.GROUP_BASELINED,
    blfunc: str = "poly",
    order: int = 5,
    npiece: int = 2,
    addwn: Any = (0,),
    rejwn: Any = (),
    applyfft: bool = True,
    fftthresh: float = 3.0,
    clipthresh: float = 3.0,
    clipniter: int = 0,
    maskmode: str = "list",
    linefree: Any = None,
    thresh: float = 5.0,
    avg_limit: int = 4,
    minwidth: int = 4,
    edge: Any = (0, 0),
) -> None:
    """Baseline subtraction of every ON partition (:func:`radflow.cal.baseline.subtract`)."""
    params = {k: v for k, v in locals().items() if k not in ("eb", "group", "output")}
    for names in _sd_keys(eb).values():
        for name in names:
            ds, table = baseline.subtract(eb.partitions[name], group=group, output=output, **params)
            eb.update(name, ds, output)
            eb.tables[f"baseline_{name}"] = table


@action("jyperk")
def jyperk_action(
    eb: ExecutionBlock,
    *,
    factors: Any = None,
    group: str = schema.GROUP_BASELINED,
    output: str = schema.GROUP_JY,
) -> None:
    """Ta* (K) -> Jy with the factors of a CSV file (path) or a ``{antenna: {spw: ...}}`` dict.

    Without factors the step is skipped (noted in the run summary): Jy/K factors come from the
    observatory, not from the data.
    """
    if factors is None:
        eb.notes.append("jyperk skipped: no factors given (set jyperk.factors=FILE.csv)")
        return
    if isinstance(factors, Mapping):
        table = jyperk.from_dict(factors)
    else:
        table = jyperk.from_records(read_jyperk_csv(factors), ms=eb.source_ms())
    known = {int(eb.info(n)[schema.PI_SPW_ID]) for n in eb.partitions}
    unknown = sorted(set(int(s) for s in table[jyperk.SPW_ID].values) - known)
    if unknown:
        raise ActionError(
            f"{eb.path}: the Jy/K factors name spw(s) {unknown}, which the execution block does "
            f"not have (it has {sorted(known)})"
        )
    for names in _sd_keys(eb).values():
        for name in names:
            eb.update(
                name, jyperk.apply(eb.partitions[name], table, group=group, output=output), output
            )


# ---- interferometer ----


def _visibility_names(eb: ExecutionBlock, intent: str = "", field: Any = None) -> list[str]:
    """Visibility partitions with `intent` (substring of a scan intent) and `field` (names)."""
    fields = gain.parse_refant(field) if field else []
    out = []
    for name, ds in eb.partitions.items():
        if ds.attrs.get(schema.ATTR_TYPE) != schema.TYPE_VISIBILITY:
            continue
        if intent and not _has_intent(eb.info(name), intent):
            continue
        if fields and not set(fields) & set(ds[schema.FIELD_NAME].values.astype(str)):
            continue
        out.append(name)
    return out


def _field_intents(eb: ExecutionBlock) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {}
    for name in _visibility_names(eb):
        intents = [str(i) for i in eb.info(name).get(schema.PI_INTENTS) or []]
        for f in np.unique(eb.partitions[name][schema.FIELD_NAME].values.astype(str)):
            out.setdefault(str(f), set()).update(intents)
    return {f: sorted(i) for f, i in out.items()}


def _fields(eb: ExecutionBlock, selection: Any) -> list[str]:
    """Field names from names, or from intents (a token with '#' or starting CALIBRATE_/OBSERVE_
    selects the fields observed with that intent)."""
    intents = _field_intents(eb)
    out: list[str] = []
    for token in gain.parse_refant(selection) if selection else []:
        if token in intents:
            out.append(token)
        elif token.startswith(("CALIBRATE_", "OBSERVE_")) or "#" in token:
            matched = [f for f, i in intents.items() if any(token in x for x in i)]
            if not matched:
                raise ActionError(f"{eb.path}: no field was observed with intent {token!r}")
            out.extend(m for m in matched if m not in out)
        else:
            raise ActionError(f"{eb.path}: no field {token!r} (fields: {sorted(intents)})")
    return out


def _antenna_positions(eb: ExecutionBlock, names: list[str]) -> xr.DataArray | None:
    node = eb.tree[names[0]] if names else None
    if node is None or schema.ANTENNA_XDS not in node.children:
        return None
    return node[schema.ANTENNA_XDS].to_dataset()[schema.ANTENNA_POSITION]


def _tables(eb: ExecutionBlock, names: Any, step: str) -> list[dict[int, xr.Dataset]]:
    names = [names] if isinstance(names, str) else list(names or [])
    missing = [n for n in names if n not in eb.caltables]
    if missing:
        raise ActionError(
            f"{eb.path}: step {step}: gaintable {missing} not solved by an earlier step "
            f"(solved so far: {sorted(eb.caltables) or 'none'})"
        )
    return [eb.caltables[n] for n in names]


def _keep_table(eb: ExecutionBlock, name: str, table: dict[int, xr.Dataset], export: bool):
    """Record a solution table: stored in the store under calibration/<name>/spw<id>, and
    (export) written as a CASA caltable <eb>.<name>.cal beside the store after the run."""
    if name in eb.caltables:
        raise ActionError(f"{eb.path}: a solution table named {name!r} exists already")
    eb.caltables[name] = table
    for spw, ds in table.items():
        eb.solutions[f"{name}/spw{spw}"] = ds
    ms = eb.source_ms()
    if export and store.is_url(eb.path):
        eb.notes.append(
            f"{name}: no CASA caltable written: casacore writes tables to a file system, and "
            f"{eb.path} is in an object store (the solutions are in the store)"
        )
    elif export and ms and Path(ms).exists():
        keys = [f"{name}/spw{spw}" for spw in table]

        def write(store_path: Path) -> list[Path]:
            from radflow.converters.caltable import write_caltable

            loaded = {int(k.rsplit("spw", 1)[1]): store.load_group(store_path, f"calibration/{k}")
                      for k in keys}  # fmt: skip
            stem = store_path.name.removesuffix(".zarr").removesuffix(".ps")
            out = store_path.with_name(f"{stem}.{name}.cal")
            return [write_caltable(loaded, out, ms, overwrite=True)]

        eb.exports.append(write)


@action("setjy")
def setjy_action(
    eb: ExecutionBlock,
    *,
    field: Any = "CALIBRATE_FLUX",
    standard: str = setjy.PB2017,
    fluxdensity: Any = None,
    spix: Any = 0.0,
    reffreq: Any = None,
    fluxcsv: Any = None,
    fluxdict: Any = None,
    scalebychan: bool = True,
    output: str = "setjy",
) -> None:
    """Model visibilities of the flux calibrator(s) (:func:`radflow.cal.setjy.apply`).

    ``fluxdict`` is a fluxscale result (``<eb>.flux.json`` of an earlier run, with
    ``standard: fluxscale``): the seed's bootstrap, where the transfer calibrators get the
    spectrum fluxscale derived.

    The model is used by the later solves within the same graph and is not written to the store
    (it is cheap to recompute and as large as the data).
    """
    fields = _fields(eb, field)
    names = _visibility_names(eb, field=fields)
    if not names:
        raise ActionError(f"{eb.path}: setjy: no visibility data of fields {fields}")
    if isinstance(fluxdict, str | Path):
        import json

        fluxdict = json.loads(Path(fluxdict).read_text())
    for name in names:
        eb.partitions[name] = setjy.apply(
            eb.partitions[name], fields, standard=standard, fluxdensity=fluxdensity, spix=spix,
            reffreq=reffreq, fluxcsv=fluxcsv, fluxdict=fluxdict, ms=eb.source_ms(),
            scalebychan=scalebychan, output=output,
        )  # fmt: skip


def _solver_common(eb: ExecutionBlock, field: Any, gaintable: Any, step: str) -> dict:
    fields = _fields(eb, field)
    names = _visibility_names(eb, field=fields)
    if not names:
        raise ActionError(f"{eb.path}: {step}: no visibility data of fields {fields}")
    return dict(
        partitions={n: eb.partitions[n] for n in names},
        field=fields,
        gaintable=_tables(eb, gaintable, step),
        antenna_positions=_antenna_positions(eb, names),
        ms_name=eb.source_ms() or "",
    )


@action("gaincal")
def gaincal_action(
    eb: ExecutionBlock,
    *,
    name: str = "gain",
    field: Any = "CALIBRATE_",
    spw: Any = None,
    gaintype: str = "G",
    calmode: str = "ap",
    solint: Any = "inf",
    combine: str = "",
    refant: Any = "",
    refantmode: str = "flex",
    minblperant: int = 4,
    minsnr: float = 3.0,
    solnorm: bool = False,
    gaintable: Any = (),
    interp: Any = "linear",
    group: str = schema.GROUP_BASE,
    model_group: str = "setjy",
    caltable: bool = True,
) -> None:
    """Antenna gains (:func:`radflow.cal.gain.solve`); the table is called `name`."""
    common = _solver_common(eb, field, gaintable, "gaincal")
    try:
        table = gain.solve(
            **common, spw=spw, gaintype=gaintype, calmode=calmode, solint=solint,
            combine=combine, refant=refant, refantmode=refantmode, minblperant=minblperant,
            minsnr=minsnr, solnorm=solnorm, interp=interp, group=group, model_group=model_group,
        )  # fmt: skip
    except (gain.GaincalError, applycal.ApplyError) as exc:
        raise ActionError(f"{eb.path}: {exc}") from exc
    _keep_table(eb, name, table, caltable)


@action("bandpass")
def bandpass_action(
    eb: ExecutionBlock,
    *,
    name: str = "bandpass",
    field: Any = "CALIBRATE_BANDPASS",
    spw: Any = None,
    bandtype: str = "B",
    solint: Any = "inf",
    combine: str = "scan",
    refant: Any = "",
    minblperant: int = 4,
    minsnr: float = 3.0,
    solnorm: bool = True,
    fillgaps: int = 0,
    degamp: int = 3,
    degphase: int = 3,
    maskcenter: int = 0,
    maskedge: float = 5.0,
    visnorm: bool = False,
    gaintable: Any = (),
    interp: Any = "linear",
    group: str = schema.GROUP_BASE,
    model_group: str = "setjy",
    caltable: bool = True,
) -> None:
    """Bandpass, table `name`: ``bandtype='B'`` per channel (:func:`radflow.cal.bandpass.solve`:
    minsnr, fillgaps) or ``'BPOLY'`` polynomials (:func:`radflow.cal.bpoly.solve`: degamp,
    degphase, maskcenter, maskedge, visnorm)."""
    common = _solver_common(eb, field, gaintable, "bandpass")
    shared = dict(
        spw=spw, solint=solint, combine=combine, refant=refant, solnorm=solnorm,
        minblperant=minblperant, interp=interp, group=group, model_group=model_group,
    )  # fmt: skip
    try:
        if bandtype == "B":
            table = bandpass.solve(**common, **shared, minsnr=minsnr, fillgaps=fillgaps)
        elif bandtype == "BPOLY":
            table = bpoly.solve(
                **common, **shared, degamp=degamp, degphase=degphase, maskcenter=maskcenter,
                maskedge=maskedge, visnorm=visnorm,
            )  # fmt: skip
        else:
            raise ActionError(
                f"{eb.path}: bandpass: bandtype must be 'B' or 'BPOLY', got {bandtype!r}"
            )
    except (gain.GaincalError, applycal.ApplyError) as exc:
        raise ActionError(f"{eb.path}: {exc}") from exc
    _keep_table(eb, name, table, caltable)


@action("fluxscale")
def fluxscale_action(
    eb: ExecutionBlock,
    *,
    name: str = "flux",
    caltable: str = "gain",
    reference: Any = "CALIBRATE_FLUX",
    transfer: Any = None,
    refspwmap: Any = None,
    gainthreshold: float = -1.0,
    antenna: Any = "",
    incremental: bool = False,
    fitorder: int = 1,
    amp_outlier_sigma: float | None = gfluxscale.AMP_OUTLIER_SIGMA,
    disk_diameter: float = 0.0,
    refant: str = "",
    peak_fraction: float = gfluxscale.PEAK_FRACTION,
    export: bool = True,
) -> None:
    """Flux densities of the transfer calibrators from table `caltable`
    (:func:`radflow.cal.fluxscale.fluxscale`) with the pipeline's hifa_gfluxscale heuristics
    (:mod:`radflow.cal.gfluxscale`): amplitude outliers beyond `amp_outlier_sigma` (null: off)
    are flagged first; a resolved flux calibrator (`disk_diameter` > 0, arcsec) uses only the
    antennas near `refant` where its visibility stays above `peak_fraction`. The scaled table
    is `name`; CASA's result dictionary goes to ``<eb>.<name>.json`` and a table with the QA
    scores to ``<eb>.<name>.fluxscale.txt`` after the run (``radflow run`` prints it)."""
    (table,) = _tables(eb, caltable, "fluxscale")
    refs = _fields(eb, reference)
    transfers = _fields(eb, transfer) if transfer else None
    if amp_outlier_sigma is not None:
        table, _ = gfluxscale.flag_amplitude_outliers(table, amp_outlier_sigma)
    if disk_diameter > 0:
        names = _visibility_names(eb)
        positions = _antenna_positions(eb, names)
        if positions is None:
            raise ActionError(f"{eb.path}: fluxscale: disk_diameter needs antenna positions")
        first = next(iter(table.values()))
        ref = refant or str(first[schema.ANTENNA_NAME].values[0])
        freqs = [float(ds[schema.FREQUENCY].values.mean()) for ds in table.values()]
        selection = gfluxscale.resolved_calibrator_antennas(
            gfluxscale.baselines_to_refant(positions, ref), ref,
            np.radians(disk_diameter / 3600.0), freqs, peak_fraction,
        )  # fmt: skip
        if not selection.all_antennas:
            antenna = selection.antennas
            eb.notes.append(
                f"fluxscale: resolved flux calibrator ({disk_diameter} arcsec): "
                f"{len(antenna)} antennas within {selection.limit_baseline_m:.0f} m of {ref}"
            )
    try:
        result = fluxscale.fluxscale(
            table, refs, transfers, refintent=None,
            transintent=None if transfers else schema.PL_TRANSINTENT_DEFAULT,
            field_intents=_field_intents(eb), refspwmap=refspwmap, gainthreshold=gainthreshold,
            antenna=antenna, incremental=incremental, fitorder=fitorder,
        )  # fmt: skip
    except ValueError as exc:
        raise ActionError(f"{eb.path}: fluxscale: {exc}") from exc
    _keep_table(eb, name, dict(result.table), export)
    eb.solutions[f"fluxscale_{name}"] = result.view
    if export:
        key = f"calibration/fluxscale_{name}"

        def write(store_path: Path) -> list[Path]:
            import json

            view = store.load_group(store_path, key)
            result = fluxscale.result_dict(view)
            stem = store_path.name.removesuffix(".zarr").removesuffix(".ps")
            out = store_path.with_name(f"{stem}.{name}.json")
            out.write_text(json.dumps(result, indent=1, default=_plain))
            text = store_path.with_name(f"{stem}.{name}{FLUXSCALE_REPORT_SUFFIX}")
            text.write_text(fluxscale_report(result))
            return [out, text]

        eb.exports.append(write)


FLUXSCALE_REPORT_SUFFIX = ".fluxscale.txt"


def fluxscale_report(result: Mapping[str, Any]) -> str:
    """A plain-text table of a fluxscale result (CASA's dict) with the hifa_gfluxscale QA
    scores: per transfer field and spw the flux density, error, SNR and spectral index."""
    qa = gfluxscale.qa_scores(result)
    lines = [f"{'field':<16}{'spw':>4}{'flux (Jy)':>12}{'error':>10}{'SNR':>8}{'spidx':>8}"]
    for entry in result.values():
        if not isinstance(entry, Mapping) or "fieldName" not in entry:
            continue
        spidx = entry.get("spidx")
        index = f"{spidx[1]:8.3f}" if spidx is not None and len(spidx) > 1 else f"{'-':>8}"
        for spw, value in entry.items():
            if not spw.isdigit() or value["fluxd"][0] <= 0:
                continue
            flux, err = value["fluxd"][0], value["fluxdErr"][0]
            snr = flux / err if err > 0 else float("inf")
            lines.append(
                f"{entry['fieldName']:<16}{spw:>4}{flux:12.4f}{err:10.4f}{snr:8.1f}{index}"
            )
    lines.append(f"QA: completeness {qa.completeness:.2f}, SNR {qa.snr:.2f}")
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    """JSON for numpy values in CASA's dictionaries."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@action("applycal")
def applycal_action(
    eb: ExecutionBlock,
    *,
    field: Any = None,
    intent: str = "",
    gaintable: Any = (),
    interp: Any = "linear",
    gainfield: Any = None,
    spwmap: Any = None,
    calwt: Any = True,
    applymode: str = "calflag",
    group: str = schema.GROUP_BASE,
    output: str = schema.GROUP_CORRECTED,
) -> None:
    """Apply solution tables to the selected partitions (:func:`radflow.cal.apply.apply`);
    ``gainfield`` entries may be field names or intents (one list per table)."""
    tables = _tables(eb, gaintable, "applycal")
    names = _visibility_names(eb, intent=intent, field=_fields(eb, field) if field else None)
    if not names:
        raise ActionError(f"{eb.path}: applycal: nothing selected (field={field}, intent={intent})")
    fields = None
    if gainfield is not None:
        fields = [_fields(eb, g) if g else [] for g in gainfield]
    for name in names:
        try:
            ds = applycal.apply(
                eb.partitions[name], tables, group=group, output=output, interp=interp,
                spwmap=spwmap, gainfield=fields, calwt=calwt, applymode=applymode,
            )  # fmt: skip
        except applycal.ApplyError as exc:
            raise ActionError(f"{eb.path}: {exc}") from exc
        eb.update(name, ds, output)


# ---- switched power (EVLA) ----


@action("swpower")
def swpower_action(
    eb: ExecutionBlock,
    *,
    name: str = "swpower",
    scale: str = schema.SWPOW_SCALE_KELVIN,
    spw: Any = None,
    tcal: Any = None,
    aperture: Any = None,
    requantizer: bool = False,
    casa_constants: bool = False,
    rho_normalisation: str = "power",
    outlier_window: int = 0,
    outlier_nsigma: float = 5.0,
    interpolate: bool = True,
    smooth_window: int = 0,
    smooth_method: str = "mean",
) -> None:
    """Switched-power solutions (:func:`radflow.cal.swpower.solve`) for every spw with
    visibilities (or `spw`), kept as solution table `name` for applycal's ``gaintable``.
    ``tcal`` (optional): ``{spw: [Tcal per receptor]}`` in K instead of CALDEVICE."""
    from radflow.cal import swpower

    if spw is None:
        spws = sorted({int(eb.info(n)[schema.PI_SPW_ID]) for n in _visibility_names(eb)})
    else:
        spws = [int(s) for s in ([spw] if isinstance(spw, int | str) else spw)]
    if not spws:
        raise ActionError(f"{eb.path}: swpower: no visibility partitions")
    editing = swpower.Editing(
        outlier_window=int(outlier_window),
        outlier_nsigma=float(outlier_nsigma),
        interpolate=bool(interpolate),
        smooth_window=int(smooth_window),
        smooth_method=str(smooth_method),
    )
    if isinstance(tcal, Mapping):
        tcal = {int(k): v for k, v in tcal.items()}
    table = {}
    for s in spws:
        try:
            table[s] = swpower.solve(
                eb.tree, s, scale=scale, tcal=tcal, aperture=aperture, editing=editing,
                requantizer=bool(requantizer), casa_constants=bool(casa_constants),
                rho_normalisation=rho_normalisation,
            )  # fmt: skip
        except swpower.SwPowError as exc:
            raise ActionError(f"{eb.path}: {exc}") from exc
    _keep_table(eb, name, table, export=False)
    eb.notes.append(f"swpower: {name} to {scale} for spws {spws}")
