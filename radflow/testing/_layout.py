"""Shared MeasurementSet layout for the simulators: antennas, subtables, time grids, geometry.

Everything here returns plain numpy columns for :meth:`radflow.converters.ms_writer.MSWriter.
write_subtable` (first axis = row, python-casacore cell order, e.g. a FIELD direction cell is
``(1, 2)`` and a SYSCAL spectrum cell ``(nchan, nreceptor)``), so the simulators never touch
python-casacore themselves.

Conventions: MS TIME is MJD seconds (UTC) at the middle of an integration; angles are radians;
positions metres (ITRF); frequencies Hz.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import xarray as xr

from radflow import schema
from radflow.store import save_dataset

SPEED_OF_LIGHT_M_S = 299_792_458.0
SECONDS_PER_DAY = 86_400.0

# ALMA array centre (WGS84 geodetic).
ALMA_LONGITUDE_DEG = -67.755
ALMA_LATITUDE_DEG = -23.029
ALMA_HEIGHT_M = 5050.0

# Receptor pair (feed 1, feed 2) of each linear correlation, for POLARIZATION.CORR_PRODUCT.
CORR_RECEPTORS = {"XX": (0, 0), "XY": (0, 1), "YX": (1, 0), "YY": (1, 1)}
RECEPTORS = ("X", "Y")

_WGS84_A_M = 6_378_137.0
_WGS84_F = 1.0 / 298.257223563


@dataclass
class SimulatedEB:
    """A simulated execution block: the MS on disk and the truth that went into it.

    Attributes
    ----------
    ms_path
        The MeasurementSet (MSv2) directory.
    truth
        Every injected quantity, with dims, coords and ``attrs["units"]`` on every variable.
    truth_path
        ``<ms_path>.truth.zarr``: `truth` as written by :func:`radflow.store.save_dataset`
        (reload it with :func:`radflow.store.load_dataset`).
    """

    ms_path: Path
    truth: xr.Dataset
    truth_path: Path


def truth_path_for(ms_path: Path) -> Path:
    """Where the truth of the MS `ms_path` is written: ``<ms_path>.truth.zarr``."""
    return ms_path.with_name(ms_path.name + ".truth.zarr")


def write_eb(
    path: str | Path, overwrite: bool, write_ms: Callable[[Path], xr.Dataset]
) -> SimulatedEB:
    """Run `write_ms(ms_path) -> truth`, then save the truth next to the MS.

    Both outputs are checked before anything is written, so an existing EB is never half
    replaced; a failure while writing removes the partial MS rather than leaving a truncated MS
    that opens as if complete.
    """
    ms_path = Path(path)
    truth_path = truth_path_for(ms_path)
    if not overwrite:
        for p in (ms_path, truth_path):
            if p.exists():
                raise FileExistsError(f"{p}: already exists (pass overwrite=True)")
    try:
        truth = write_ms(ms_path)
        save_dataset(truth, truth_path, overwrite=True)
    except BaseException:
        shutil.rmtree(ms_path, ignore_errors=True)
        raise
    return SimulatedEB(ms_path=ms_path, truth=truth, truth_path=truth_path)


# ---------------------------------------------------------------------------------------------
# time and geometry


def mjd_seconds(when: datetime) -> float:
    """MS TIME (MJD seconds, UTC) of a naive UTC datetime."""
    return (when - datetime(1858, 11, 17)).total_seconds()


def integration_times(start_s: float, n: int, integration_s: float) -> np.ndarray:
    """Mid-times (s) of `n` contiguous integrations of `integration_s` starting at `start_s`."""
    return start_s + (np.arange(n) + 0.5) * integration_s


def gmst_rad(time_mjd_s: np.ndarray) -> np.ndarray:
    """Greenwich mean sidereal time (rad) at MS times (MJD s, UTC taken as UT1).

    IAU 2006 form: Earth rotation angle plus the leading precession terms (good to ~0.1 arcsec
    over decades, far below what the simulators need).
    """
    du = np.asarray(time_mjd_s) / SECONDS_PER_DAY - 51544.5  # days since J2000.0
    era = 2.0 * np.pi * ((0.7790572732640 + 1.00273781191135448 * du) % 1.0)
    t_cen = du / 36525.0
    arcsec = 0.014506 + 4612.156534 * t_cen + 1.3915817 * t_cen**2
    return (era + np.deg2rad(arcsec / 3600.0)) % (2.0 * np.pi)


def geodetic_to_itrf(lon_deg: float, lat_deg: float, height_m: float) -> np.ndarray:
    """WGS84 geodetic position -> ITRF (earth-centred) x, y, z in metres."""
    lon, lat = np.deg2rad(lon_deg), np.deg2rad(lat_deg)
    e2 = _WGS84_F * (2.0 - _WGS84_F)
    n = _WGS84_A_M / np.sqrt(1.0 - e2 * np.sin(lat) ** 2)
    return np.array(
        [
            (n + height_m) * np.cos(lat) * np.cos(lon),
            (n + height_m) * np.cos(lat) * np.sin(lon),
            (n * (1.0 - e2) + height_m) * np.sin(lat),
        ]
    )


def enu_to_itrf(enu_m: np.ndarray, lon_deg: float, lat_deg: float, height_m: float) -> np.ndarray:
    """Local east/north/up offsets (m, shape (n, 3)) around a site -> ITRF positions (m)."""
    lon, lat = np.deg2rad(lon_deg), np.deg2rad(lat_deg)
    sl, cl, sp, cp = np.sin(lon), np.cos(lon), np.sin(lat), np.cos(lat)
    rot = np.array(
        [
            [-sl, -sp * cl, cp * cl],
            [cl, -sp * sl, cp * sl],
            [0.0, cp, sp],
        ]
    )
    return geodetic_to_itrf(lon_deg, lat_deg, height_m) + enu_m @ rot.T


def uvw_per_antenna(
    itrf_m: np.ndarray, ra_rad: float, dec_rad: float, time_mjd_s: np.ndarray
) -> np.ndarray:
    """uvw (m, J2000 frame, shape (ntime, nant, 3)) of each antenna relative to the array centre.

    Thompson, Moran & Swenson eq. 4.1 with the Greenwich hour angle, because ITRF x points to
    the Greenwich meridian. Precession and nutation are ignored (the J2000 direction is used as
    if apparent); a baseline's uvw is the difference of two rows of this array.
    """
    rel = itrf_m - itrf_m.mean(axis=0)
    ha = gmst_rad(time_mjd_s) - ra_rad  # (ntime,)
    sh, ch = np.sin(ha)[:, None], np.cos(ha)[:, None]
    sd, cd = np.sin(dec_rad), np.cos(dec_rad)
    x, y, z = rel[:, 0][None, :], rel[:, 1][None, :], rel[:, 2][None, :]
    u = sh * x + ch * y
    v = -sd * ch * x + sd * sh * y + cd * z
    w = cd * ch * x - cd * sh * y + sd * z
    return np.stack([u, v, w], axis=-1)


# ---------------------------------------------------------------------------------------------
# antennas


@dataclass
class Antennas:
    """An array of antennas: names, pads, positions."""

    names: list[str]
    stations: list[str]
    enu_m: np.ndarray  # (n, 3) east, north, up offsets from the array centre
    itrf_m: np.ndarray  # (n, 3)
    dish_diameter_m: float = 12.0

    def __len__(self) -> int:
        return len(self.names)


def random_layout(
    n: int, rng: np.random.Generator, max_radius_m: float, min_separation_m: float
) -> np.ndarray:
    """Random pad positions (east, north, up in m) inside a disk, at least `min_separation_m`
    apart (12-m dishes need > 12 m), with up to +-1 m of height scatter."""
    pads: list[np.ndarray] = []
    while len(pads) < n:
        r = max_radius_m * np.sqrt(rng.uniform())
        phi = rng.uniform(0.0, 2.0 * np.pi)
        p = np.array([r * np.cos(phi), r * np.sin(phi), rng.uniform(-1.0, 1.0)])
        if all(np.hypot(*(p[:2] - q[:2])) >= min_separation_m for q in pads):
            pads.append(p)
    return np.array(pads)


def alma_antennas(
    names: Sequence[str],
    stations: Sequence[str],
    rng: np.random.Generator,
    max_radius_m: float,
    min_separation_m: float = 15.0,
) -> Antennas:
    """ALMA antennas on a random compact layout around the ALMA array centre."""
    enu = random_layout(len(names), rng, max_radius_m, min_separation_m)
    itrf = enu_to_itrf(enu, ALMA_LONGITUDE_DEG, ALMA_LATITUDE_DEG, ALMA_HEIGHT_M)
    return Antennas(names=list(names), stations=list(stations), enu_m=enu, itrf_m=itrf)


def antenna_columns(ants: Antennas) -> dict[str, np.ndarray]:
    """ANTENNA rows: ground-based alt-az dishes at ITRF positions (m)."""
    n = len(ants)
    return {
        "NAME": np.array(ants.names),
        "STATION": np.array(ants.stations),
        "TYPE": np.full(n, "GROUND-BASED"),
        "MOUNT": np.full(n, "ALT-AZ"),
        "POSITION": ants.itrf_m,
        "OFFSET": np.zeros((n, 3)),
        "DISH_DIAMETER": np.full(n, ants.dish_diameter_m),
        "FLAG_ROW": np.zeros(n, dtype=bool),
    }


def feed_columns(n_antennas: int, time_mid_s: float, interval_s: float) -> dict[str, np.ndarray]:
    """One feed per antenna, valid for all spws, two linear receptors X and Y."""
    return {
        "ANTENNA_ID": np.arange(n_antennas, dtype=np.int32),
        "FEED_ID": np.zeros(n_antennas, dtype=np.int32),
        "SPECTRAL_WINDOW_ID": np.full(n_antennas, -1, dtype=np.int32),
        "TIME": np.full(n_antennas, time_mid_s),
        "INTERVAL": np.full(n_antennas, interval_s),
        "NUM_RECEPTORS": np.full(n_antennas, 2, dtype=np.int32),
        "BEAM_ID": np.full(n_antennas, -1, dtype=np.int32),
        "BEAM_OFFSET": np.zeros((n_antennas, 2, 2)),
        "POLARIZATION_TYPE": np.tile(np.array(RECEPTORS), (n_antennas, 1)),
        "POL_RESPONSE": np.tile(np.eye(2, dtype=np.complex64), (n_antennas, 1, 1)),
        "POSITION": np.zeros((n_antennas, 3)),
        "RECEPTOR_ANGLE": np.tile(np.array([0.0, np.pi / 2.0]), (n_antennas, 1)),
    }


# ---------------------------------------------------------------------------------------------
# spectral setup


@dataclass
class SpectralWindowSpec:
    """One spectral window: contiguous channels of equal width, increasing frequency (USB)."""

    name: str
    centre_hz: float
    bandwidth_hz: float
    n_chan: int
    baseband: int  # BBC_NO, 1-4 for ALMA

    @property
    def chan_width_hz(self) -> float:
        return self.bandwidth_hz / self.n_chan

    @property
    def chan_freq_hz(self) -> np.ndarray:
        low = self.centre_hz - self.bandwidth_hz / 2.0
        return low + (np.arange(self.n_chan) + 0.5) * self.chan_width_hz


def spectral_window_columns(spws: Sequence[SpectralWindowSpec]) -> dict[str, np.ndarray | list]:
    """SPECTRAL_WINDOW rows; per-channel columns are ragged lists when channel counts differ.

    REF_FREQUENCY is the band centre; MEAS_FREQ_REF 5 (TOPO); NET_SIDEBAND 1 (upper sideband,
    channels in increasing frequency); EFFECTIVE_BW and RESOLUTION equal the channel width.
    """
    n = len(spws)
    widths = [np.full(s.n_chan, s.chan_width_hz) for s in spws]
    return {
        "NAME": np.array([s.name for s in spws]),
        "NUM_CHAN": np.array([s.n_chan for s in spws], dtype=np.int32),
        "CHAN_FREQ": [s.chan_freq_hz for s in spws],
        "CHAN_WIDTH": widths,
        "EFFECTIVE_BW": widths,
        "RESOLUTION": widths,
        "REF_FREQUENCY": np.array([s.centre_hz for s in spws]),
        "TOTAL_BANDWIDTH": np.array([s.bandwidth_hz for s in spws]),
        "MEAS_FREQ_REF": np.full(n, schema.FREQ_FRAME_CODES["TOPO"], dtype=np.int32),
        "NET_SIDEBAND": np.ones(n, dtype=np.int32),
        "BBC_NO": np.array([s.baseband for s in spws], dtype=np.int32),
        "FREQ_GROUP": np.zeros(n, dtype=np.int32),
        "FREQ_GROUP_NAME": np.full(n, ""),
        "IF_CONV_CHAIN": np.zeros(n, dtype=np.int32),
        "FLAG_ROW": np.zeros(n, dtype=bool),
    }


def polarization_columns(correlations: Sequence[str]) -> dict[str, np.ndarray]:
    """One POLARIZATION row for linear correlations such as ("XX", "YY")."""
    return {
        "NUM_CORR": np.array([len(correlations)], dtype=np.int32),
        "CORR_TYPE": np.array([[schema.STOKES_CODES[c] for c in correlations]], dtype=np.int32),
        "CORR_PRODUCT": np.array([[CORR_RECEPTORS[c] for c in correlations]], dtype=np.int32),
        "FLAG_ROW": np.zeros(1, dtype=bool),
    }


def data_description_columns(n_spw: int) -> dict[str, np.ndarray]:
    """DATA_DESCRIPTION row i = spw i with polarization setup 0 (so DATA_DESC_ID == spw id)."""
    return {
        "SPECTRAL_WINDOW_ID": np.arange(n_spw, dtype=np.int32),
        "POLARIZATION_ID": np.zeros(n_spw, dtype=np.int32),
        "FLAG_ROW": np.zeros(n_spw, dtype=bool),
    }


# ---------------------------------------------------------------------------------------------
# fields, sources, states, observation, weather


@dataclass
class Field:
    """A field at a fixed J2000 position; FIELD row i has SOURCE_ID i."""

    name: str
    ra_rad: float
    dec_rad: float


def hms_dms_to_rad(
    ra_hms: tuple[float, float, float], dec_dms: tuple[float, float, float]
) -> tuple[float, float]:
    """(h, m, s), (sign*d, m, s) -> (ra, dec) in rad; the sign of dec is taken from d."""
    ra = np.deg2rad(15.0 * (ra_hms[0] + ra_hms[1] / 60.0 + ra_hms[2] / 3600.0))
    sign = -1.0 if np.signbit(dec_dms[0]) else 1.0
    dec = sign * np.deg2rad(abs(dec_dms[0]) + dec_dms[1] / 60.0 + dec_dms[2] / 3600.0)
    return float(ra), float(dec)


def field_columns(fields: Sequence[Field], time_s: float) -> dict[str, np.ndarray]:
    """FIELD rows: fixed J2000 directions (NUM_POLY 0) for delay, phase and reference centre."""
    n = len(fields)
    dirs = np.array([[[f.ra_rad, f.dec_rad]] for f in fields])  # (n, 1, 2): NUM_POLY 0
    return {
        "NAME": np.array([f.name for f in fields]),
        "CODE": np.full(n, "none"),
        "TIME": np.full(n, time_s),
        "NUM_POLY": np.zeros(n, dtype=np.int32),
        "DELAY_DIR": dirs,
        "PHASE_DIR": dirs,
        "REFERENCE_DIR": dirs,
        "SOURCE_ID": np.arange(n, dtype=np.int32),
        "FLAG_ROW": np.zeros(n, dtype=bool),
    }


def source_columns(
    fields: Sequence[Field], time_mid_s: float, interval_s: float
) -> dict[str, np.ndarray]:
    """One SOURCE row per field, valid for all spws (SPECTRAL_WINDOW_ID -1) and the whole EB."""
    n = len(fields)
    return {
        "SOURCE_ID": np.arange(n, dtype=np.int32),
        "NAME": np.array([f.name for f in fields]),
        "CODE": np.full(n, ""),
        "DIRECTION": np.array([[f.ra_rad, f.dec_rad] for f in fields]),
        "PROPER_MOTION": np.zeros((n, 2)),
        "TIME": np.full(n, time_mid_s),
        "INTERVAL": np.full(n, interval_s),
        "SPECTRAL_WINDOW_ID": np.full(n, -1, dtype=np.int32),
        "CALIBRATION_GROUP": np.zeros(n, dtype=np.int32),
        "NUM_LINES": np.zeros(n, dtype=np.int32),
    }


@dataclass(frozen=True)
class State:
    """One STATE row: an ALMA OBS_MODE string (comma-separated intents) and its sub-scan."""

    obs_mode: str
    sub_scan: int = 1
    sig: bool = True
    ref: bool = False


class StateTable:
    """STATE rows in order of first use; :meth:`id` returns the row of a state, adding it."""

    def __init__(self) -> None:
        self.states: list[State] = []

    def id(self, state: State) -> int:
        """STATE row of `state` (appended on first use)."""
        if state not in self.states:
            self.states.append(state)
        return self.states.index(state)

    def columns(self) -> dict[str, np.ndarray]:
        """The STATE subtable (CAL and LOAD 0 K: no calibration-load states)."""
        n = len(self.states)
        return {
            "OBS_MODE": np.array([s.obs_mode for s in self.states]),
            "SUB_SCAN": np.array([s.sub_scan for s in self.states], dtype=np.int32),
            "SIG": np.array([s.sig for s in self.states]),
            "REF": np.array([s.ref for s in self.states]),
            "CAL": np.zeros(n),
            "LOAD": np.zeros(n),
            "FLAG_ROW": np.zeros(n, dtype=bool),
        }


def observation_columns(
    t_start_s: float, t_end_s: float, project: str, observer: str
) -> dict[str, np.ndarray]:
    """One ALMA OBSERVATION row spanning MS times `t_start_s`..`t_end_s` (MJD s)."""
    return {
        "TELESCOPE_NAME": np.array(["ALMA"]),
        "OBSERVER": np.array([observer]),
        "PROJECT": np.array([project]),
        "TIME_RANGE": np.array([[t_start_s, t_end_s]]),
        "RELEASE_DATE": np.array([t_end_s + 365.0 * SECONDS_PER_DAY]),
        "SCHEDULE_TYPE": np.array(["ALMA"]),
        "SCHEDULE": np.array([["SchedulingBlock uid://A001/X0/X0"]]),
        "LOG": np.array([["radflow.testing simulator"]]),
        "FLAG_ROW": np.zeros(1, dtype=bool),
    }


def weather_columns(
    t_start_s: float, t_end_s: float, rng: np.random.Generator, interval_s: float = 60.0
) -> dict[str, np.ndarray]:
    """Chajnantor-like weather every `interval_s` from one station (ANTENNA_ID 0)."""
    times = np.arange(t_start_s + interval_s / 2.0, t_end_s + interval_s / 2.0, interval_s)
    n = len(times)
    temperature = 270.0 + rng.normal(0.0, 0.3, n)
    return {
        "TIME": times,
        "INTERVAL": np.full(n, interval_s),
        "ANTENNA_ID": np.zeros(n, dtype=np.int32),
        "TEMPERATURE": temperature.astype(np.float32),  # K
        "PRESSURE": (555.0 + rng.normal(0.0, 0.2, n)).astype(np.float32),  # hPa
        "REL_HUMIDITY": np.clip(15.0 + rng.normal(0.0, 1.0, n), 0, 100).astype(np.float32),  # %
        "WIND_SPEED": np.abs(5.0 + rng.normal(0.0, 1.0, n)).astype(np.float32),  # m/s
        "WIND_DIRECTION": rng.uniform(0.0, 2.0 * np.pi, n).astype(np.float32),  # rad
        "DEW_POINT": (temperature - 25.0).astype(np.float32),  # K
    }


def keyed_normal(seed: int, keys: Sequence[tuple[int, ...]], shape: tuple[int, ...]) -> np.ndarray:
    """Standard-normal float32 draws, shape ``(len(keys), *shape)``, one random stream per key.

    Keys such as (integration index, spw) give every sample its own stream, so the noise does
    not depend on how a simulator groups rows into blocks. The entropy ``[seed, 7, *key]``
    makes these streams independent of the ``SeedSequence(seed).spawn()`` model streams.
    """
    out = np.empty((len(keys), *shape), dtype=np.float32)
    for i, key in enumerate(keys):
        np.random.default_rng([seed, 7, *key]).standard_normal(shape, dtype=np.float32, out=out[i])
    return out


# ---------------------------------------------------------------------------------------------
# truth helpers


def strings(values: Sequence[str]) -> np.ndarray:
    """Variable-length strings: zarr v3 stores these without an 'unstable dtype' warning."""
    return np.array(list(values), dtype=object)


def time_coords(times_mjd_s: np.ndarray, dim: str = schema.TIME) -> dict[str, xr.DataArray]:
    """A time dimension as MS TIME (MJD s, the dim coordinate) plus unix seconds beside it."""
    return {
        dim: xr.DataArray(
            times_mjd_s,
            dims=dim,
            attrs={"units": "s", "description": "MS TIME: MJD seconds, UTC, integration middle"},
        ),
        f"{dim}_unix": xr.DataArray(
            times_mjd_s - schema.MJD_UNIX_OFFSET_S,
            dims=dim,
            attrs={"units": "s", "description": "the same instants in unix seconds (MSv4 time)"},
        ),
    }
