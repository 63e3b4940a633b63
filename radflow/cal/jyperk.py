"""jyperk: single-dish Ta* (K) to flux density (Jy) with per antenna/spw/polarization factors.

``S = Ta* x factor`` and ``weight / factor**2`` (CASA applies ``1/sqrt(factor)`` as an amplitude
gain, which is the same). Factors come from the ALMA pipeline's CSV
(``MS,Antenna,Spwid,Polarization,Factor``; Polarization ``I`` means every correlation), read by
:func:`radflow.converters.jyperk_csv.read_jyperk_csv`, or from a dict shaped like the seed's
``jyperk`` (``{antenna: {spw: {"mean": factor, ...}}}``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from radflow import schema
from radflow.cal import scale
from radflow.step import (
    coord_values,
    describe_partition,
    get_data_group,
    register_step,
    require_units,
)

ALL_POLARIZATIONS = "I"
SPW_ID = "spectral_window_id"  # dim of the factor table


class JyPerKError(ValueError):
    """A Jy/K factor is missing, unknown or invalid."""


def from_records(records: Iterable[Mapping[str, Any]], ms: str | None = None) -> xr.DataArray:
    """Factor table from CSV-like records with keys MS, Antenna, Spwid, Polarization, Factor.

    Records whose ``MS`` is not `ms` (compared by base name, with or without ``.ms``) are
    skipped when `ms` is given. Returns Jy/K factors with dims ``(antenna_name,
    spectral_window_id, polarization)``, NaN where the records give none; polarization ``I``
    is a value that stands for every correlation.
    """

    def stem(name: str) -> str:
        name = str(name).rstrip("/").rsplit("/", 1)[-1]
        for suffix in (".ps.zarr", ".ms"):
            name = name.removesuffix(suffix)
        return name

    rows = []
    for rec in records:
        if ms is not None and rec.get("MS") not in (None, "", "*") and stem(rec["MS"]) != stem(ms):
            continue
        try:
            factor = float(rec["Factor"])
            rows.append((str(rec["Antenna"]), int(rec["Spwid"]), str(rec["Polarization"]), factor))
        except (KeyError, ValueError) as exc:
            raise JyPerKError(f"jyperk: bad factor record {dict(rec)}: {exc}") from exc
    if not rows:
        raise JyPerKError(f"jyperk: no factors for MS {ms!r}" if ms else "jyperk: no factors")
    antennas = sorted({r[0] for r in rows})
    spws = sorted({r[1] for r in rows})
    pols = sorted({r[2] for r in rows})
    table = np.full((len(antennas), len(spws), len(pols)), np.nan)
    for antenna, spw, pol, factor in rows:
        table[antennas.index(antenna), spws.index(spw), pols.index(pol)] = factor
    return xr.DataArray(
        table,
        dims=(schema.ANTENNA_NAME, SPW_ID, schema.POLARIZATION),
        coords={schema.ANTENNA_NAME: antennas, SPW_ID: spws, schema.POLARIZATION: pols},
        attrs={schema.ATTR_UNITS: "Jy/K"},
    )


def from_dict(jyperk: Mapping[str, Mapping[Any, Any]]) -> xr.DataArray:
    """Factor table from the seed's dict ``{antenna: {spw: {"mean": factor, ...} | factor}}``."""
    records = []
    for antenna, per_spw in jyperk.items():
        for spw, value in per_spw.items():
            factor = value["mean"] if isinstance(value, Mapping) else value
            records.append(
                {"Antenna": antenna, "Spwid": spw, "Polarization": "I", "Factor": factor}
            )
    return from_records(records)


def _partition_factors(
    ds: xr.Dataset, table: xr.DataArray, where: str
) -> dict[tuple[str, str], float]:
    info = ds.attrs.get(schema.ATTR_PARTITION_INFO) or {}
    spw = int(info[schema.PI_SPW_ID])
    spws = [int(s) for s in table[SPW_ID].values]
    if spw not in spws:
        raise JyPerKError(f"{where}: the factor table has no spw {spw} (it has {spws})")
    table = table.sel({SPW_ID: spw})
    pols = [str(p) for p in coord_values(ds, schema.POLARIZATION)]
    known_pols = [str(p) for p in table[schema.POLARIZATION].values]
    out: dict[tuple[str, str], float] = {}
    for antenna in (str(a) for a in coord_values(ds, schema.ANTENNA_NAME)):
        if antenna not in table[schema.ANTENNA_NAME].values:
            raise JyPerKError(f"{where}: no Jy/K factor for antenna {antenna!r} in spw {spw}")
        row = table.sel({schema.ANTENNA_NAME: antenna})
        for pol in pols:
            value = float("nan")
            if pol in known_pols:
                value = float(row.sel({schema.POLARIZATION: pol}))
            if np.isnan(value) and ALL_POLARIZATIONS in known_pols:
                value = float(row.sel({schema.POLARIZATION: ALL_POLARIZATIONS}))
            if np.isnan(value):
                raise JyPerKError(
                    f"{where}: no Jy/K factor for antenna {antenna!r} spw {spw} polarization "
                    f"{pol!r}"
                )
            if not value > 0 or not np.isfinite(value):
                raise JyPerKError(
                    f"{where}: Jy/K factor {value} for antenna {antenna!r} spw {spw} "
                    f"polarization {pol!r} must be finite and > 0"
                )
            if len(pol) != 2 or pol[0] != pol[1]:
                raise JyPerKError(f"{where}: Jy/K applies to autocorrelations, not {pol!r}")
            out[(antenna, pol[0])] = value
    return out


@register_step("jyperk")
def apply(
    ds: xr.Dataset,
    factors: xr.DataArray,
    *,
    group: str = schema.GROUP_BASELINED,
    output: str = schema.GROUP_JY,
) -> xr.Dataset:
    """Convert data group `group` (Ta*, K) of a spectrum partition to Jy in group `output`.

    Parameters
    ----------
    ds : xr.Dataset
        One single-dish partition.
    factors : xr.DataArray
        Jy/K factors from :func:`from_records` or :func:`from_dict`.

    Raises
    ------
    UnitsError
        If `group` is not in K (e.g. already Jy).
    JyPerKError
        If the partition's antenna, spw or a polarization has no factor; the message names it.
    """
    src = get_data_group(ds, group)
    require_units(src, schema.UNITS_KELVIN, "jyperk")
    where = f"jyperk: partition {describe_partition(ds)}"
    per_receptor = _partition_factors(ds, factors, where)
    out = scale.apply(ds, per_receptor, group=group, output=output, units=schema.UNITS_JANSKY)
    entry = out.attrs[schema.ATTR_DATA_GROUPS][output]
    entry[schema.ROLE_DESCRIPTION] = f"S = Ta* x Jy/K factor from group {group!r} (step jyperk)"
    return out
