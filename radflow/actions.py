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

from radflow import schema
from radflow.cal import baseline, jyperk, sdcal, sky, tsys
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
    for spw in sorted({spw for spw, _ in _sd_keys(eb)}):
        try:
            eb.solutions[f"tsys_spw{spw}"] = tsys.solve(eb.tree, spw, spwmap=spwmap)
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
    """Ta* = Tsys (ON - OFF)/OFF for every ON partition (:func:`radflow.cal.sdcal.apply`)."""
    for (spw, antenna), names in _sd_keys(eb).items():
        tsys_solution = eb.solutions.get(f"tsys_spw{spw}")
        sky_solution = eb.solutions.get(f"sky_spw{spw}_{antenna}")
        if tsys_solution is None or sky_solution is None:
            raise ActionError(f"{eb.path}: step sdcal needs steps tsys and sky before it")
        for name in names:
            ds = sdcal.apply(
                eb.partitions[name],
                sky_solution,
                tsys_solution,
                group=group,
                output=output,
                interp_method=interp,  # type: ignore[arg-type]
                weight_tsys=weight_tsys,  # type: ignore[arg-type]
            )
            eb.update(name, ds, output)


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
