"""MS subtables -> MSv4 sub-datasets (in memory: subtables are small next to the main table).

Every function takes the metadata an MS partition needs (its antennas, fields, spw, time range)
and returns an ``xr.Dataset`` with units and frames in attrs, or ``None`` when the MS has no such
subtable (an absent subtable stays absent; a corrupt one raises :class:`MSError`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import xarray as xr

from radflow import schema

from .tables import MSError, has_subtable, read_subtable

PathLike = str | os.PathLike

_TIME_ATTRS = {"type": "time", "units": "s", "scale": "utc", "format": "unix"}
_DIRECTION_FRAMES = {"J2000": "fk5", "ICRS": "icrs", "B1950": "fk4", "AZEL": "altaz"}


def unix_time(mjd_seconds: np.ndarray) -> np.ndarray:
    """MS time (MJD seconds, UTC) -> unix seconds."""
    return np.asarray(mjd_seconds, dtype=np.float64) - schema.MJD_UNIX_OFFSET_S


def _time_coord(dim: str, mjd_seconds: np.ndarray) -> xr.DataArray:
    return xr.DataArray(unix_time(mjd_seconds), dims=dim, attrs=dict(_TIME_ATTRS, type=dim))


def _direction_frame(measinfo: dict | None) -> str:
    ref = (measinfo or {}).get("Ref", "J2000")
    return _DIRECTION_FRAMES.get(ref, ref.lower())


@dataclass(frozen=True)
class SpectralWindow:
    """One SPECTRAL_WINDOW row, frequencies in Hz."""

    spw_id: int
    name: str
    chan_freq: np.ndarray
    chan_width: np.ndarray
    ref_frequency: float
    frame: str
    baseband: int | None


@dataclass(frozen=True)
class MSMetadata:
    """The small tables every partition refers to, read once per MS."""

    antenna_names: np.ndarray  # unique names: NAME, or NAME_STATION where NAME repeats
    stations: np.ndarray
    spws: dict[int, SpectralWindow]
    ddid_spw: np.ndarray  # DATA_DESCRIPTION row -> spw id
    ddid_pol: np.ndarray  # DATA_DESCRIPTION row -> polarization id
    pol_labels: dict[int, list[str]]  # polarization id -> correlation labels
    field_names: np.ndarray
    state_obs_modes: np.ndarray  # STATE row -> OBS_MODE ('' when the STATE table is empty)
    telescope_name: str
    observation: dict


@lru_cache(maxsize=8)
def _read_metadata(ms_abspath: str, _mtime: float) -> MSMetadata:
    ant = read_subtable(ms_abspath, "ANTENNA", ["NAME", "STATION"])
    names = np.asarray(ant["NAME"], dtype=str)
    stations = np.asarray(ant["STATION"], dtype=str)
    if len(set(names.tolist())) < len(names):
        names = np.char.add(np.char.add(names, "_"), stations)

    spw_t = read_subtable(
        ms_abspath,
        "SPECTRAL_WINDOW",
        ["NAME", "CHAN_FREQ", "CHAN_WIDTH", "REF_FREQUENCY", "MEAS_FREQ_REF", "BBC_NO"],
    )
    spws = {}
    for i in range(int(spw_t["__nrows__"])):
        spws[i] = SpectralWindow(
            spw_id=i,
            name=str(spw_t["NAME"][i]) or f"spw_{i}",
            chan_freq=np.asarray(spw_t["CHAN_FREQ"][i], dtype=np.float64),
            chan_width=np.asarray(spw_t["CHAN_WIDTH"][i], dtype=np.float64),
            ref_frequency=float(spw_t["REF_FREQUENCY"][i]),
            frame=schema.FREQ_FRAMES.get(int(spw_t["MEAS_FREQ_REF"][i]), "Undefined"),
            baseband=int(spw_t["BBC_NO"][i]) if "BBC_NO" in spw_t else None,
        )

    dd = read_subtable(ms_abspath, "DATA_DESCRIPTION", ["SPECTRAL_WINDOW_ID", "POLARIZATION_ID"])
    pol = read_subtable(ms_abspath, "POLARIZATION", ["CORR_TYPE"])
    pol_labels = {
        i: [schema.STOKES_TYPES.get(int(c), f"C{int(c)}") for c in np.ravel(ct)]
        for i, ct in enumerate(pol["CORR_TYPE"])
    }
    field = read_subtable(ms_abspath, "FIELD", ["NAME"])
    field_names = np.asarray(field["NAME"], dtype=str)
    if len(set(field_names.tolist())) < len(field_names):
        field_names = np.array([f"{n}_{i}" for i, n in enumerate(field_names)])

    obs_modes = np.array([], dtype=str)
    if has_subtable(ms_abspath, "STATE"):
        state = read_subtable(ms_abspath, "STATE", ["OBS_MODE"])
        if int(state["__nrows__"]):
            obs_modes = np.asarray(state["OBS_MODE"], dtype=str)

    telescope, observation = "", {}
    if has_subtable(ms_abspath, "OBSERVATION"):
        obs = read_subtable(ms_abspath, "OBSERVATION", ["TELESCOPE_NAME", "OBSERVER", "PROJECT"])
        if int(obs["__nrows__"]):
            telescope = str(obs["TELESCOPE_NAME"][0])
            observation = {
                "observer": [str(o) for o in obs["OBSERVER"]],
                "project_UID": str(obs["PROJECT"][0]),
            }
    return MSMetadata(
        antenna_names=names,
        stations=stations,
        spws=spws,
        ddid_spw=np.asarray(dd["SPECTRAL_WINDOW_ID"], dtype=int),
        ddid_pol=np.asarray(dd["POLARIZATION_ID"], dtype=int),
        pol_labels=pol_labels,
        field_names=field_names,
        state_obs_modes=obs_modes,
        telescope_name=telescope,
        observation=observation,
    )


def read_metadata(ms_path: PathLike) -> MSMetadata:
    """Read ANTENNA, SPECTRAL_WINDOW, DATA_DESCRIPTION, POLARIZATION, FIELD, STATE, OBSERVATION."""
    path = os.path.abspath(ms_path)
    for name in schema.MS_REQUIRED_SUBTABLES:
        if not has_subtable(path, name):
            raise MSError(f"{ms_path}: required subtable {name} is missing")
    return _read_metadata(path, os.path.getmtime(path))


def antenna_xds(ms_path: PathLike, meta: MSMetadata, antenna_ids: Sequence[int]) -> xr.Dataset:
    """ANTENNA (+ FEED receptors) for `antenna_ids`: ITRF positions, dish diameters, mounts."""
    ids = np.asarray(antenna_ids, dtype=int)
    ant = read_subtable(ms_path, "ANTENNA", ["POSITION", "DISH_DIAMETER", "MOUNT", "STATION"])
    pos_frame = (ant["__measinfo__"].get("POSITION") or {}).get("Ref", "ITRF")
    names = meta.antenna_names[ids]
    ds = xr.Dataset(
        {
            schema.ANTENNA_POSITION: (
                (schema.ANTENNA_NAME, schema.CARTESIAN_POS_LABEL),
                np.asarray(ant["POSITION"], dtype=np.float64)[ids],
                {
                    "type": "location",
                    "units": "m",
                    "frame": "ITRS" if pos_frame == "ITRF" else pos_frame,
                    "coordinate_system": "geocentric",
                    "origin_object_name": "earth",
                },
            ),
            schema.ANTENNA_DISH_DIAMETER: (
                schema.ANTENNA_NAME,
                np.asarray(ant["DISH_DIAMETER"], dtype=np.float64)[ids],
                {"type": "quantity", "units": "m"},
            ),
        },
        coords={
            schema.ANTENNA_NAME: names,
            schema.CARTESIAN_POS_LABEL: ["x", "y", "z"],
            schema.STATION_NAME: (schema.ANTENNA_NAME, np.asarray(ant["STATION"], dtype=str)[ids]),
            schema.MOUNT: (schema.ANTENNA_NAME, np.asarray(ant["MOUNT"], dtype=str)[ids]),
            schema.TELESCOPE_NAME: (schema.ANTENNA_NAME, np.full(len(ids), meta.telescope_name)),
        },
        attrs={"type": schema.TYPE_ANTENNA, "overall_telescope_name": meta.telescope_name},
    )
    if has_subtable(ms_path, "FEED"):
        feed = read_subtable(
            ms_path, "FEED", ["ANTENNA_ID", "POLARIZATION_TYPE", "RECEPTOR_ANGLE", "NUM_RECEPTORS"]
        )
        nrec = int(np.max(feed["NUM_RECEPTORS"])) if int(feed["__nrows__"]) else 0
        if nrec:
            ptype = np.full((len(ids), nrec), "", dtype=object)
            angle = np.full((len(ids), nrec), np.nan)
            feed_ant = np.asarray(feed["ANTENNA_ID"])
            for k, a in enumerate(ids):
                rows = np.nonzero(feed_ant == a)[0]
                if len(rows):
                    r = rows[0]
                    n = int(feed["NUM_RECEPTORS"][r])
                    ptype[k, :n] = np.asarray(feed["POLARIZATION_TYPE"][r], dtype=str)[:n]
                    angle[k, :n] = np.asarray(feed["RECEPTOR_ANGLE"][r], dtype=float)[:n]
            ds = ds.assign_coords(
                {
                    schema.RECEPTOR_LABEL: [f"pol_{i}" for i in range(nrec)],
                    schema.POLARIZATION_TYPE: (
                        (schema.ANTENNA_NAME, schema.RECEPTOR_LABEL),
                        ptype.astype(str),
                    ),
                }
            )
            ds[schema.ANTENNA_RECEPTOR_ANGLE] = (
                (schema.ANTENNA_NAME, schema.RECEPTOR_LABEL),
                angle,
                {"type": "quantity", "units": "rad"},
            )
    return ds


def field_and_source_xds(
    ms_path: PathLike, meta: MSMetadata, field_ids: Sequence[int]
) -> xr.Dataset:
    """FIELD (+ SOURCE) for `field_ids`: phase and reference centres, source names/directions."""
    ids = np.asarray(sorted(set(int(f) for f in field_ids)), dtype=int)
    fld = read_subtable(ms_path, "FIELD", ["PHASE_DIR", "REFERENCE_DIR", "SOURCE_ID", "NAME"])
    frame = _direction_frame(fld["__measinfo__"].get("PHASE_DIR"))
    phase = np.asarray(fld["PHASE_DIR"], dtype=np.float64)[ids, 0, :]
    ref = np.asarray(fld["REFERENCE_DIR"], dtype=np.float64)[ids, 0, :]
    source_ids = np.asarray(fld["SOURCE_ID"], dtype=int)[ids]
    source_names = np.asarray(fld["NAME"], dtype=str)[ids]
    source_dir = np.full((len(ids), 2), np.nan)
    if has_subtable(ms_path, "SOURCE"):
        src = read_subtable(ms_path, "SOURCE", ["SOURCE_ID", "NAME", "DIRECTION"])
        if int(src["__nrows__"]):
            src_ids = np.asarray(src["SOURCE_ID"], dtype=int)
            for k, sid in enumerate(source_ids):
                rows = np.nonzero(src_ids == sid)[0]
                if len(rows):
                    source_names[k] = str(src["NAME"][rows[0]])
                    source_dir[k] = np.asarray(src["DIRECTION"][rows[0]], dtype=float)[:2]
    sky = {"type": "sky_coord", "units": "rad", "frame": frame}
    dims = (schema.FIELD_NAME, schema.SKY_DIR_LABEL)
    return xr.Dataset(
        {
            schema.FIELD_PHASE_CENTER_DIRECTION: (dims, phase, sky),
            schema.FIELD_REFERENCE_CENTER_DIRECTION: (dims, ref, sky),
            schema.SOURCE_DIRECTION: (dims, source_dir, sky),
        },
        coords={
            schema.FIELD_NAME: meta.field_names[ids],
            schema.SKY_DIR_LABEL: ["ra", "dec"],
            schema.SOURCE_NAME: (schema.FIELD_NAME, source_names),
        },
        attrs={"type": schema.TYPE_FIELD_AND_SOURCE},
    )


def _per_antenna_time_grid(
    table: dict, rows: np.ndarray, antenna_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique times, antenna index, time index) of the selected subtable rows."""
    times = np.asarray(table["TIME"], dtype=np.float64)[rows]
    ant = np.asarray(table["ANTENNA_ID"], dtype=int)[rows]
    utimes, t_idx = np.unique(times, return_inverse=True)
    a_idx = np.searchsorted(antenna_ids, ant)
    return utimes, a_idx, t_idx


def _select_rows(table: dict, antenna_ids: np.ndarray, spw_id: int | None) -> np.ndarray:
    keep = np.isin(np.asarray(table["ANTENNA_ID"], dtype=int), antenna_ids)
    if spw_id is not None and "SPECTRAL_WINDOW_ID" in table:
        keep &= np.asarray(table["SPECTRAL_WINDOW_ID"], dtype=int) == spw_id
    return np.nonzero(keep)[0]


def _receptor_values(values: list | np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Stack per-row cells ([nchan, nrec] or [nrec]) of the selected rows; ragged is an error."""
    cells = [np.asarray(values[r], dtype=np.float64) for r in rows]
    shapes = {c.shape for c in cells}
    if len(shapes) != 1:
        raise MSError(f"cells of different shapes {sorted(shapes)} for one spectral window")
    return np.stack(cells)


def _antenna_time_grid(
    cells: np.ndarray, a_idx: np.ndarray, t_idx: np.ndarray, n_ant: int, n_time: int
) -> np.ndarray:
    """Place per-row `cells` at (antenna, time); cells no row fills are NaN."""
    grid = np.full((n_ant, n_time) + cells.shape[1:], np.nan)
    grid[a_idx, t_idx] = cells
    return grid


@dataclass(frozen=True)
class _SpwRows:
    """Rows of a per-antenna, per-spw subtable (SYSCAL, SYSPOWER, CALDEVICE) for one partition."""

    table: dict
    antennas: np.ndarray  # antenna ids, sorted
    rows: np.ndarray
    times: np.ndarray  # unique TIME of those rows (MJD s)
    a_idx: np.ndarray  # per row: index into antennas
    t_idx: np.ndarray  # per row: index into times


def _spw_rows(
    ms_path: PathLike, name: str, spw_id: int, antenna_ids: Sequence[int]
) -> _SpwRows | None:
    """Rows of subtable `name` for `spw_id` and `antenna_ids`; None if absent or no such rows."""
    if not has_subtable(ms_path, name):
        return None
    table = read_subtable(ms_path, name)
    ants = np.asarray(antenna_ids, dtype=int)
    rows = _select_rows(table, ants, spw_id)
    if len(rows) == 0:
        return None
    times, a_idx, t_idx = _per_antenna_time_grid(table, rows, ants)
    return _SpwRows(table, ants, rows, times, a_idx, t_idx)


def system_calibration_xds(
    ms_path: PathLike, meta: MSMetadata, spw_id: int, antenna_ids: Sequence[int]
) -> xr.Dataset | None:
    """SYSCAL of one spw for `antenna_ids`, all times: Tsys/Tcal/Trx/Tsky/Tant spectra in K.

    ``frequency_system_cal`` holds the spw's channel frequencies in Hz; ``time_system_cal`` the
    SYSCAL TIME (unix s, the middle of the measurement) and ``SYSCAL_INTERVAL`` its length (s).
    """
    sel = _spw_rows(ms_path, "SYSCAL", spw_id, antenna_ids)
    if sel is None:
        return None
    syscal, ants, rows = sel.table, sel.antennas, sel.rows
    utimes, a_idx, t_idx = sel.times, sel.a_idx, sel.t_idx
    freq = meta.spws[spw_id].chan_freq
    data_vars = {}
    for name in (schema.TSYS, schema.TCAL, schema.TRX, schema.TSKY, schema.TANT):
        spectrum_col, scalar_col = f"{name}_SPECTRUM", name
        if spectrum_col in syscal and all(syscal[spectrum_col][r] is not None for r in rows):
            cells = _receptor_values(syscal[spectrum_col], rows)  # (row, chan, rec)
            if cells.shape[1] != len(freq):
                raise MSError(
                    f"{ms_path}: SYSCAL {spectrum_col} has {cells.shape[1]} channels but spw "
                    f"{spw_id} has {len(freq)}"
                )
            grid = _antenna_time_grid(
                cells.transpose(0, 2, 1), a_idx, t_idx, len(ants), len(utimes)
            )
            dims = (schema.ANTENNA_NAME, schema.TIME_SYSTEM_CAL, schema.RECEPTOR_LABEL,
                    schema.FREQUENCY_SYSTEM_CAL)  # fmt: skip
        elif scalar_col in syscal and all(syscal[scalar_col][r] is not None for r in rows):
            cells = _receptor_values(syscal[scalar_col], rows)  # (row, rec)
            grid = _antenna_time_grid(cells, a_idx, t_idx, len(ants), len(utimes))
            dims = (schema.ANTENNA_NAME, schema.TIME_SYSTEM_CAL, schema.RECEPTOR_LABEL)
        else:
            continue
        data_vars[name] = (dims, grid, {"type": "quantity", "units": "K"})
    if not data_vars:
        return None
    nrec = max(v[1].shape[2] for v in data_vars.values())
    interval = np.asarray(syscal["INTERVAL"], dtype=np.float64)[rows]
    interval_grid = np.full(len(utimes), np.nan)
    interval_grid[t_idx] = interval
    data_vars[schema.SYSCAL_INTERVAL] = (
        schema.TIME_SYSTEM_CAL,
        interval_grid,
        {"type": "quantity", "units": "s"},
    )
    spw = meta.spws[spw_id]
    return xr.Dataset(
        data_vars,
        coords={
            schema.ANTENNA_NAME: meta.antenna_names[ants],
            schema.TIME_SYSTEM_CAL: _time_coord(schema.TIME_SYSTEM_CAL, utimes),
            schema.RECEPTOR_LABEL: [f"pol_{i}" for i in range(nrec)],
            schema.FREQUENCY_SYSTEM_CAL: (
                schema.FREQUENCY_SYSTEM_CAL,
                freq,
                {"type": "spectral_coord", "units": "Hz", "observer": spw.frame},
            ),
        },
        attrs={"type": schema.TYPE_SYSTEM_CALIBRATION, "spectral_window_id": spw_id},
    )


def pointing_xds(
    ms_path: PathLike,
    meta: MSMetadata,
    antenna_ids: Sequence[int],
    time_range: tuple[float, float],
) -> xr.Dataset | None:
    """POINTING for `antenna_ids` within `time_range` (MJD s, widened by one sample each side)."""
    if not has_subtable(ms_path, "POINTING"):
        return None
    pt = read_subtable(ms_path, "POINTING", ["TIME", "ANTENNA_ID", "DIRECTION", "INTERVAL"])
    if int(pt["__nrows__"]) == 0:
        return None
    ants = np.asarray(antenna_ids, dtype=int)
    times = np.asarray(pt["TIME"], dtype=np.float64)
    interval = np.asarray(pt["INTERVAL"], dtype=np.float64)
    margin = float(np.nanmax(interval)) if len(interval) else 0.0
    rows = _select_rows(pt, ants, None)
    rows = rows[(times[rows] >= time_range[0] - margin) & (times[rows] <= time_range[1] + margin)]
    if len(rows) == 0:
        return None
    utimes, a_idx, t_idx = _per_antenna_time_grid(pt, rows, ants)
    direction = np.asarray(pt["DIRECTION"], dtype=np.float64)[rows, 0, :]
    grid = np.full((len(utimes), len(ants), 2), np.nan)
    grid[t_idx, a_idx] = direction
    frame = _direction_frame(pt["__measinfo__"].get("DIRECTION"))
    return xr.Dataset(
        {
            schema.POINTING_BEAM: (
                (schema.TIME_POINTING, schema.ANTENNA_NAME, schema.LOCAL_SKY_DIR_LABEL),
                grid,
                {"type": "sky_coord", "units": "rad", "frame": frame},
            )
        },
        coords={
            schema.TIME_POINTING: _time_coord(schema.TIME_POINTING, utimes),
            schema.ANTENNA_NAME: meta.antenna_names[ants],
            schema.LOCAL_SKY_DIR_LABEL: ["ra", "dec"] if frame != "altaz" else ["az", "alt"],
        },
        attrs={"type": schema.TYPE_POINTING},
    )


_WEATHER_UNITS = {
    "TEMPERATURE": "K",
    "PRESSURE": "hPa",
    "REL_HUMIDITY": "%",
    "WIND_SPEED": "m/s",
    "WIND_DIRECTION": "rad",
    "DEW_POINT": "K",
}


def weather_xds(ms_path: PathLike, meta: MSMetadata) -> xr.Dataset | None:
    """WEATHER: one station per weather ANTENNA_ID, time_weather in unix s."""
    if not has_subtable(ms_path, "WEATHER"):
        return None
    w = read_subtable(ms_path, "WEATHER")
    if int(w["__nrows__"]) == 0:
        return None
    stations_ids = np.unique(np.asarray(w["ANTENNA_ID"], dtype=int))
    rows = np.arange(int(w["__nrows__"]))
    utimes, s_idx, t_idx = _per_antenna_time_grid(w, rows, stations_ids)
    data_vars = {}
    for col, unit in _WEATHER_UNITS.items():
        if col in w and not isinstance(w[col], list):
            grid = np.full((len(stations_ids), len(utimes)), np.nan)
            grid[s_idx, t_idx] = np.asarray(w[col], dtype=np.float64)
            units = (w["__units__"].get(col) or [unit])[0]
            data_vars[col] = (
                (schema.STATION_NAME, schema.TIME_WEATHER),
                grid,
                {"type": "quantity", "units": units},
            )
    names = [
        meta.stations[s] if 0 <= s < len(meta.stations) else f"station_{s}" for s in stations_ids
    ]
    return xr.Dataset(
        data_vars,
        coords={
            schema.STATION_NAME: names,
            schema.TIME_WEATHER: _time_coord(schema.TIME_WEATHER, utimes),
        },
        attrs={"type": schema.TYPE_WEATHER},
    )


def switched_power_xds(
    ms_path: PathLike, meta: MSMetadata, spw_id: int, antenna_ids: Sequence[int]
) -> xr.Dataset | None:
    """VLA SYSPOWER of one spw: Pdiff (SWITCHED_DIFF), Psum (SWITCHED_SUM), requantizer gain."""
    sel = _spw_rows(ms_path, "SYSPOWER", spw_id, antenna_ids)
    if sel is None:
        return None
    sp, ants, rows = sel.table, sel.antennas, sel.rows
    utimes, a_idx, t_idx = sel.times, sel.a_idx, sel.t_idx
    data_vars = {}
    for col in (schema.SWITCHED_DIFF, schema.SWITCHED_SUM, schema.REQUANTIZER_GAIN):
        if col not in sp:
            continue
        cells = _receptor_values(sp[col], rows)
        grid = _antenna_time_grid(cells, a_idx, t_idx, len(ants), len(utimes))
        data_vars[col] = (
            (schema.ANTENNA_NAME, schema.TIME_SWITCHED_POWER, schema.RECEPTOR_LABEL),
            grid,
            {"type": "quantity", "units": ""},  # correlator power units, relative
        )
    nrec = max(v[1].shape[2] for v in data_vars.values())
    return xr.Dataset(
        data_vars,
        coords={
            schema.ANTENNA_NAME: meta.antenna_names[ants],
            schema.TIME_SWITCHED_POWER: _time_coord(schema.TIME_SWITCHED_POWER, utimes),
            schema.RECEPTOR_LABEL: [f"pol_{i}" for i in range(nrec)],
        },
        attrs={"type": schema.TYPE_SWITCHED_POWER, "spectral_window_id": spw_id},
    )


def cal_device_xds(
    ms_path: PathLike, meta: MSMetadata, spw_id: int, antenna_ids: Sequence[int]
) -> xr.Dataset | None:
    """VLA CALDEVICE of one spw: noise-diode temperatures NOISE_CAL (K) per load and receptor."""
    sel = _spw_rows(ms_path, "CALDEVICE", spw_id, antenna_ids)
    if sel is None:
        return None
    cd, ants, rows = sel.table, sel.antennas, sel.rows
    utimes, a_idx, t_idx = sel.times, sel.a_idx, sel.t_idx
    data_vars = {}
    dims = (schema.ANTENNA_NAME, schema.TIME_CAL_DEVICE, schema.CAL_LOAD, schema.RECEPTOR_LABEL)
    for col, units in ((schema.NOISE_CAL, "K"), (schema.CAL_EFF, "")):
        if col not in cd:
            continue
        cells = _receptor_values(cd[col], rows)  # (row, rec) or (row, load, rec)
        if cells.ndim == 2:
            cells = cells[:, None, :]
        grid = _antenna_time_grid(cells, a_idx, t_idx, len(ants), len(utimes))
        data_vars[col] = (dims, grid, {"type": "quantity", "units": units})
    if not data_vars:
        return None
    shape = next(iter(data_vars.values()))[1].shape
    return xr.Dataset(
        data_vars,
        coords={
            schema.ANTENNA_NAME: meta.antenna_names[ants],
            schema.TIME_CAL_DEVICE: _time_coord(schema.TIME_CAL_DEVICE, utimes),
            schema.CAL_LOAD: np.arange(shape[2]),
            schema.RECEPTOR_LABEL: [f"pol_{i}" for i in range(shape[3])],
        },
        attrs={"type": schema.TYPE_CAL_DEVICE, "spectral_window_id": spw_id},
    )
