"""Simulated ALMA total-power (single-dish) execution blocks with recorded truth.

Layout of the MS written by :func:`simulate_single_dish`:

- Antennas PM01.. (ALMA 12-m total-power dishes) on pads T701.. within 30 m of the array centre.
- Per baseband ``b`` (1..n_basebands, BBC_NO b): spw ``2(b-1)`` is the Tsys spw (``n_tsys_chan``
  channels over 2 GHz) and spw ``2(b-1)+1`` the science spw (``n_science_chan`` channels over
  468.75 MHz, inside the Tsys spw). DATA_DESC_ID equals the spw id; correlations XX YY.
- One field (``OrionKL``). Scans: an atmospheric calibration at the start, after the first half
  of the target scans and at the end (STATE ``CALIBRATE_ATMOSPHERE#ON_SOURCE,
  CALIBRATE_WVR#ON_SOURCE``, data in the Tsys spws only) and ``n_target_scans`` target scans
  (``OBSERVE_TARGET#ON_SOURCE`` / ``OBSERVE_TARGET#OFF_SOURCE``, data in the science spws only).
  One STATE row per (intent, sub-scan).
- ``mode="ps"``: each target scan is OFF, ON, OFF, ON, ..., OFF sub-scans; OFF is 0.5 deg east.
- ``mode="otfraster"``: each target scan is OFF, then groups of ``raster_rows_per_off`` raster
  rows (one sub-scan each, ``raster_row_integrations`` integrations scanning in RA over 120
  arcsec, separated by a turnaround of 6 integrations) each followed by an OFF sub-scan.
- Autocorrelations in FLOAT_DATA; rows in time order, then DATA_DESC_ID, then antenna.
  WEIGHT = SIGMA = 1 (raw counts carry no calibrated weight).
- SYSCAL (Tsys spws only): TSYS_SPECTRUM, TCAL_SPECTRUM, TRX_SPECTRUM per antenna at each
  atmospheric calibration; POINTING one row per antenna and integration; WEATHER every 60 s.

Signal model (raw counts, float32)::

    P(t, nu) = g(t) * B(nu) * T(t, nu) * (1 + n / sqrt(dnu * tau))
    T = Tsys(t, nu)                                   OFF rows and atmospheric calibrations
    T = Tsys(t, nu) + f(t) * T_line(nu) + T_base(nu)  ON rows

with g (1/K) about 1e4 so raw values are ~1e6, B a receiver bandpass (~1), Tsys in K, T_line
the line spectrum in K, f the spatial source factor (1 in ps mode; a Gaussian of 20 arcsec FWHM
at the map centre in otfraster mode), T_base a small baseline ripple in K (ON only, so it
survives (ON - OFF)/OFF), n standard normal noise (the radiometer equation with dnu the channel
width and tau the integration time; absent with ``noise=False``).

Tsys is piecewise linear in time through the values written to SYSCAL, placed at SYSCAL
``TIME - INTERVAL/2`` (the start of each atmospheric calibration), and constant before the
first and after the last of those: linear interpolation in time at those time stamps is exact.
In frequency it is a smooth slope plus a Lorentzian atmospheric feature (half width 100 MHz)
inside the science band; linear interpolation from the Tsys channels onto the science channels
is accurate to ~0.1%.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import xarray as xr

from radflow import schema
from radflow.converters.ms_writer import MSWriter

from . import _layout as lay

ATM_INTENT = "CALIBRATE_ATMOSPHERE#ON_SOURCE,CALIBRATE_WVR#ON_SOURCE"
ON_INTENT = schema.INTENT_ON_SOURCE
OFF_INTENT = schema.INTENT_OFF_SOURCE

CORRELATIONS = ("XX", "YY")
GAIN_SCALE_PER_K = 1.0e4  # raw counts per kelvin, so that P ~ 1e6 for Tsys ~ 100 K
START = datetime(2024, 1, 15, 2, 0, 0)  # UTC; Orion transits at ALMA around then
TARGET = lay.Field("OrionKL", *lay.hms_dms_to_rad((5, 35, 14.5), (-5, 22, 30.0)))
OFF_OFFSET_DEG = 0.5  # OFF position (and atmospheric calibrations) east of the target

# Per baseband (BBC_NO 1..4): centre of the 2 GHz Tsys spw; the science spw sits 250 MHz above.
TSYS_CENTRES_HZ = (230.0e9, 232.5e9, 215.5e9, 218.0e9)
TSYS_BANDWIDTH_HZ = 2.0e9
SCIENCE_BANDWIDTH_HZ = 468.75e6
SCIENCE_OFFSET_HZ = 250.0e6
# Lines: peak (K), centre as a fraction of the science band, FWHM (Hz).
LINES = ((1.5, 0.30, 12.0e6), (0.6, 0.55, 6.0e6), (0.3, 0.70, 20.0e6))
# Atmospheric Tsys feature: centre (fraction of the science band), half width (Hz), height (K).
ATM_FEATURE = (0.85, 100.0e6, 25.0)

RASTER_WIDTH_ARCSEC = 120.0  # length of a raster row
RASTER_HEIGHT_ARCSEC = 60.0  # Dec extent covered by the rows of one scan
SOURCE_FWHM_ARCSEC = 20.0  # otfraster source size (Gaussian at the map centre)
TURNAROUND_INTEGRATIONS = 6  # gap between raster rows, in integrations
SUBSCAN_GAP_INTEGRATIONS = 2  # slew between sub-scans
SCAN_GAP_S = 15.0

_BLOCK_BYTES = 32 * 2**20  # float32 data per block of main-table rows


@dataclass
class _Segment:
    """Contiguous integrations with one scan, state and kind ("atm", "on" or "off")."""

    scan: int
    sub_scan: int
    state_id: int
    kind: str
    times: np.ndarray  # MJD s
    ra: np.ndarray  # pointing (rad), one per integration
    dec: np.ndarray
    source_factor: np.ndarray  # spatial source weight at the pointing, 0..1
    first: int  # index of the first integration in the whole EB
    raster_row: int = -1


def _schedule(
    mode: str,
    n_target_scans: int,
    n_on_per_scan: int,
    n_on_subscans: int,
    raster_row_integrations: int,
    raster_rows_per_off: int,
    n_off_integrations: int,
    n_atm_integrations: int,
    integration_s: float,
) -> tuple[list[_Segment], lay.StateTable]:
    """Time-ordered segments of the whole EB and the STATE rows they use."""
    states = lay.StateTable()
    segments: list[_Segment] = []
    cursor = lay.mjd_seconds(START)
    ra0, dec0 = TARGET.ra_rad, TARGET.dec_rad
    off_ra = ra0 + np.deg2rad(OFF_OFFSET_DEG) / np.cos(dec0)
    arcsec = np.deg2rad(1.0 / 3600.0)
    sigma_src = SOURCE_FWHM_ARCSEC * arcsec / np.sqrt(8.0 * np.log(2.0))
    n_raster_rows = n_on_per_scan // raster_row_integrations
    raster_row = 0

    def add(scan, sub_scan, kind, n, state, ra, dec, factor, row=-1, gap=0.0):
        nonlocal cursor
        times = lay.integration_times(cursor, n, integration_s)
        seg = _Segment(
            scan=scan,
            sub_scan=sub_scan,
            state_id=states.id(state),
            kind=kind,
            times=times,
            ra=np.broadcast_to(ra, n).astype(np.float64),
            dec=np.broadcast_to(dec, n).astype(np.float64),
            source_factor=np.broadcast_to(factor, n).astype(np.float32),
            first=sum(len(s.times) for s in segments),
            raster_row=row,
        )
        segments.append(seg)
        cursor = times[-1] + integration_s / 2.0 + gap

    def off(scan, sub_scan, gap):
        state = lay.State(OFF_INTENT, sub_scan, sig=False, ref=True)
        add(scan, sub_scan, "off", n_off_integrations, state, off_ra, dec0, 0.0, gap=gap)

    def atm(scan):
        state = lay.State(ATM_INTENT, 1)
        add(scan, 1, "atm", n_atm_integrations, state, off_ra, dec0, 0.0, gap=SCAN_GAP_S)

    sub_gap = SUBSCAN_GAP_INTEGRATIONS * integration_s
    scan = 1
    atm(scan)
    middle = (n_target_scans + 1) // 2
    for i_target in range(n_target_scans):
        scan += 1
        sub = 1
        off(scan, sub, sub_gap)
        if mode == "ps":
            per_sub = n_on_per_scan // n_on_subscans
            for _ in range(n_on_subscans):
                sub += 1
                add(
                    scan, sub, "on", per_sub, lay.State(ON_INTENT, sub), ra0, dec0, 1.0, gap=sub_gap
                )
                sub += 1
                off(scan, sub, sub_gap)
        else:
            half_w = RASTER_WIDTH_ARCSEC * arcsec / 2.0
            dx = np.linspace(-half_w, half_w, raster_row_integrations)
            dys = np.linspace(-0.5, 0.5, n_raster_rows) if n_raster_rows > 1 else np.zeros(1)
            for i_row, dy_frac in enumerate(dys):
                dy = dy_frac * RASTER_HEIGHT_ARCSEC * arcsec
                factor = np.exp(-0.5 * (dx**2 + dy**2) / sigma_src**2)
                # The row after the last of its group is followed by an OFF, not a turnaround.
                last_in_group = (i_row + 1) % raster_rows_per_off == 0 or i_row == len(dys) - 1
                gap = sub_gap if last_in_group else TURNAROUND_INTEGRATIONS * integration_s
                sub += 1
                state = lay.State(ON_INTENT, sub)
                ra = ra0 + dx / np.cos(dec0 + dy)
                add(scan, sub, "on", len(dx), state, ra, dec0 + dy, factor, raster_row, gap)
                raster_row += 1
                if last_in_group:
                    sub += 1
                    off(scan, sub, sub_gap)
        # close the scan: the last sub-scan's gap becomes a scan gap
        cursor += SCAN_GAP_S - sub_gap
        if i_target + 1 == middle and n_target_scans > 1:
            scan += 1
            atm(scan)
    scan += 1
    atm(scan)
    return segments, states


def _lorentz(nu: np.ndarray, centre: np.ndarray, hwhm: float) -> np.ndarray:
    return 1.0 / (1.0 + ((nu - centre) / hwhm) ** 2)


def _knot_weights(knots: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation in time between knots, constant outside: (left knot, weight)."""
    k0 = np.clip(np.searchsorted(knots, t, side="right") - 1, 0, len(knots) - 2)
    w = np.clip((t - knots[k0]) / (knots[k0 + 1] - knots[k0]), 0.0, 1.0)
    return k0, w


def simulate_single_dish(
    path: str | os.PathLike,
    *,
    mode: Literal["ps", "otfraster"] = "ps",
    n_antennas: int = 2,
    n_basebands: int = 1,
    n_science_chan: int = 1024,
    n_tsys_chan: int = 128,
    n_target_scans: int = 2,
    n_on_per_scan: int | None = None,
    n_on_subscans: int = 2,
    raster_row_integrations: int = 20,
    raster_rows_per_off: int = 2,
    n_off_integrations: int = 10,
    n_atm_integrations: int = 5,
    n_lines: int = 2,
    integration_s: float = 1.0,
    noise: bool = True,
    seed: int = 0,
    overwrite: bool = False,
) -> lay.SimulatedEB:
    """Write an ALMA-like total-power MS with known Tsys, gains, bandpass and line emission.

    The MS layout and the signal model are described in the module docstring; the truth
    dataset (``SimulatedEB.truth``) holds every injected quantity with its units.

    Parameters
    ----------
    path
        MS directory to create; the truth goes to ``<path>.truth.zarr``.
    mode
        ``"ps"`` (position switching) or ``"otfraster"`` (on-the-fly raster rows).
    n_antennas
        Number of total-power antennas (1-9; ALMA has 4).
    n_basebands
        Basebands 1-4, each with its own Tsys spw and science spw.
    n_science_chan
        Channels of each science spw (the band is always 468.75 MHz wide).
    n_tsys_chan
        Channels of each Tsys spw (always 2 GHz wide).
    n_target_scans
        Number of target scans (atmospheric calibrations: first, middle and last scan).
    n_on_per_scan
        ON integrations per target scan. ps: split evenly over ``n_on_subscans`` sub-scans
        (default ``10 * n_on_subscans``); otfraster: a multiple of ``raster_row_integrations``
        giving the number of raster rows per scan (default 4 rows).
    n_on_subscans
        ps only: ON sub-scans per target scan (each between two OFF sub-scans).
    raster_row_integrations
        otfraster only: integrations per raster row (>= 2).
    raster_rows_per_off
        otfraster only: raster rows between two OFF sub-scans.
    n_off_integrations
        Integrations per OFF sub-scan.
    n_atm_integrations
        Integrations per atmospheric-calibration scan (its duration is the SYSCAL INTERVAL).
    n_lines
        Gaussian lines (1-3) in each science spw.
    integration_s
        Integration time (s): INTERVAL and EXPOSURE of every row.
    noise
        Add radiometer noise; ``False`` gives the noiseless model exactly (to float32).
    seed
        Seed of the numpy random generator: the same seed and sizes give identical output.
        The model (layout, Tsys, gains, bandpasses) does not depend on `noise`.
    overwrite
        Replace an existing MS and truth at `path`.

    Returns
    -------
    SimulatedEB
        The MS path, the truth dataset and where the truth was saved.
    """
    if mode not in ("ps", "otfraster"):
        raise ValueError(f"mode must be 'ps' or 'otfraster', not {mode!r}")
    if not 1 <= n_basebands <= len(TSYS_CENTRES_HZ):
        raise ValueError(f"n_basebands must be 1..{len(TSYS_CENTRES_HZ)}, not {n_basebands}")
    if not 1 <= n_lines <= len(LINES):
        raise ValueError(f"n_lines must be 1..{len(LINES)}, not {n_lines}")
    if not 1 <= n_antennas <= 9:
        raise ValueError(f"n_antennas must be 1..9, not {n_antennas}")
    if n_on_per_scan is None:
        n_on_per_scan = 10 * n_on_subscans if mode == "ps" else 4 * raster_row_integrations
    step = n_on_subscans if mode == "ps" else raster_row_integrations
    if n_on_per_scan < step or n_on_per_scan % step:
        what = "n_on_subscans" if mode == "ps" else "raster_row_integrations"
        raise ValueError(f"n_on_per_scan={n_on_per_scan} must be a multiple of {what}={step}")
    if min(n_target_scans, n_off_integrations, n_atm_integrations, raster_rows_per_off) < 1:
        raise ValueError("scan, OFF, atmospheric-calibration and row-group counts must be >= 1")
    # Rows need >= 2 integrations for the median integration gap to be a within-row gap.
    if min(n_science_chan, n_tsys_chan, raster_row_integrations) < 2 or integration_s <= 0:
        raise ValueError(
            "channel counts and raster_row_integrations must be >= 2, integration_s > 0"
        )

    layout_ss, model_ss = np.random.SeedSequence(seed).spawn(2)
    layout_rng = np.random.default_rng(layout_ss)
    model_rng = np.random.default_rng(model_ss)

    segments, states = _schedule(
        mode,
        n_target_scans,
        n_on_per_scan,
        n_on_subscans,
        raster_row_integrations,
        raster_rows_per_off,
        n_off_integrations,
        n_atm_integrations,
        integration_s,
    )
    ants = lay.alma_antennas(
        [f"PM{i + 1:02d}" for i in range(n_antennas)],
        [f"T70{i + 1}" for i in range(n_antennas)],
        layout_rng,
        max_radius_m=30.0,
    )
    tsys_spws, sci_spws = [], []
    for b in range(n_basebands):
        centre = TSYS_CENTRES_HZ[b]
        tsys_spws.append(
            lay.SpectralWindowSpec(
                f"X836#ALMA_RB_06#BB_{b + 1}#SW-01#FULL_RES",
                centre,
                TSYS_BANDWIDTH_HZ,
                n_tsys_chan,
                b + 1,
            )
        )
        sci_spws.append(
            lay.SpectralWindowSpec(
                f"X2087#ALMA_RB_06#BB_{b + 1}#SW-01#FULL_RES",
                centre + SCIENCE_OFFSET_HZ,
                SCIENCE_BANDWIDTH_HZ,
                n_science_chan,
                b + 1,
            )
        )
    spw_specs = [s for pair in zip(tsys_spws, sci_spws, strict=True) for s in pair]
    tsys_ids = np.arange(0, 2 * n_basebands, 2)
    sci_ids = tsys_ids + 1

    model = _Model(model_rng, segments, n_antennas, tsys_spws, sci_spws, n_lines, integration_s)

    def write(ms_path: Path) -> xr.Dataset:
        t_first = segments[0].times[0] - integration_s / 2.0
        t_last = segments[-1].times[-1] + integration_s / 2.0
        t_mid, t_span = (t_first + t_last) / 2.0, t_last - t_first
        with MSWriter(
            ms_path, data_columns=("FLOAT_DATA",), weight_spectrum=False, overwrite=overwrite
        ) as ms:
            ms.write_subtable("ANTENNA", lay.antenna_columns(ants))
            ms.write_subtable("FEED", lay.feed_columns(n_antennas, t_mid, t_span))
            ms.write_subtable("SPECTRAL_WINDOW", lay.spectral_window_columns(spw_specs))
            ms.write_subtable("POLARIZATION", lay.polarization_columns(CORRELATIONS))
            ms.write_subtable("DATA_DESCRIPTION", lay.data_description_columns(len(spw_specs)))
            ms.write_subtable("FIELD", lay.field_columns([TARGET], t_first))
            ms.write_subtable("SOURCE", lay.source_columns([TARGET], t_mid, t_span))
            ms.write_subtable("STATE", states.columns())
            ms.write_subtable(
                "OBSERVATION",
                lay.observation_columns(t_first, t_last, "2023.1.00001.S", "radflow"),
            )
            ms.write_subtable("SYSCAL", model.syscal_columns(tsys_ids))
            ms.write_subtable("POINTING", _pointing_columns(segments, n_antennas, integration_s))
            ms.write_subtable("WEATHER", lay.weather_columns(t_first, t_last, layout_rng))
            for seg in segments:
                spw_ids = tsys_ids if seg.kind == "atm" else sci_ids
                n_chan = n_tsys_chan if seg.kind == "atm" else n_science_chan
                row_bytes = len(spw_ids) * n_antennas * n_chan * len(CORRELATIONS) * 4
                per_block = max(1, _BLOCK_BYTES // row_bytes)
                for start in range(0, len(seg.times), per_block):
                    sl = slice(start, start + per_block)
                    data = model.power(seg, sl, seed if noise else None)
                    ms.append_rows(_rows(seg, sl, spw_ids, n_antennas, integration_s, data))
        return model.truth(
            ants, mode=mode, noise=noise, seed=seed, tsys_ids=tsys_ids, sci_ids=sci_ids
        )

    return lay.write_eb(path, overwrite, write)


def _rows(
    seg: _Segment,
    sl: slice,
    spw_ids: np.ndarray,
    n_antennas: int,
    integration_s: float,
    data: np.ndarray,
) -> dict[str, np.ndarray]:
    """Main-table columns for integrations `sl` of `seg`: rows by time, spw, antenna."""
    times = seg.times[sl]
    n_t, n_spw = len(times), len(spw_ids)
    nrow = n_t * n_spw * n_antennas
    ant = np.tile(np.arange(n_antennas, dtype=np.int32), n_t * n_spw)
    return {
        "TIME": np.repeat(times, n_spw * n_antennas),
        "INTERVAL": np.full(nrow, integration_s),
        "ANTENNA1": ant,
        "ANTENNA2": ant,
        "DATA_DESC_ID": np.tile(np.repeat(spw_ids.astype(np.int32), n_antennas), n_t),
        "SCAN_NUMBER": np.full(nrow, seg.scan, dtype=np.int32),
        "STATE_ID": np.full(nrow, seg.state_id, dtype=np.int32),
        "FIELD_ID": np.zeros(nrow, dtype=np.int32),
        "FLOAT_DATA": data.reshape(nrow, *data.shape[-2:]),
    }


def _pointing_columns(
    segments: list[_Segment], n_antennas: int, integration_s: float
) -> dict[str, np.ndarray]:
    """One POINTING row per antenna and integration (all antennas follow the same pattern)."""
    times = np.concatenate([s.times for s in segments])
    ra = np.concatenate([s.ra for s in segments])
    dec = np.concatenate([s.dec for s in segments])
    n = len(times) * n_antennas
    direction = np.repeat(np.stack([ra, dec], axis=-1), n_antennas, axis=0)[:, None, :]
    return {
        "TIME": np.repeat(times, n_antennas),
        "TIME_ORIGIN": np.repeat(times, n_antennas),
        "INTERVAL": np.full(n, integration_s),
        "ANTENNA_ID": np.tile(np.arange(n_antennas, dtype=np.int32), len(times)),
        "NAME": np.full(n, ""),
        "NUM_POLY": np.zeros(n, dtype=np.int32),
        "TRACKING": np.ones(n, dtype=bool),
        "DIRECTION": direction,
        "TARGET": direction,
    }


class _Model:
    """The injected signal: Tsys, gains, bandpasses, lines and baselines, and its truth."""

    def __init__(
        self,
        rng: np.random.Generator,
        segments: list[_Segment],
        n_antennas: int,
        tsys_spws: list[lay.SpectralWindowSpec],
        sci_spws: list[lay.SpectralWindowSpec],
        n_lines: int,
        integration_s: float,
    ) -> None:
        self.segments = segments
        self.tsys_spws, self.sci_spws = tsys_spws, sci_spws
        self.integration_s = integration_s
        n_bb, n_pol = len(tsys_spws), len(CORRELATIONS)
        self.times = np.concatenate([s.times for s in segments])
        self.t0 = segments[0].times[0] - integration_s / 2.0
        self.span = self.times[-1] - self.t0

        # Atmospheric calibrations: SYSCAL TIME is the middle, the Tsys knot the start.
        atm = [s for s in segments if s.kind == "atm"]
        self.syscal_interval = np.array([len(s.times) * integration_s for s in atm])
        self.knots = np.array([s.times[0] - integration_s / 2.0 for s in atm])
        self.syscal_time = self.knots + self.syscal_interval / 2.0
        n_knot = len(self.knots)

        self.f_tsys = np.array([s.chan_freq_hz for s in tsys_spws])  # (bb, chan)
        self.f_sci = np.array([s.chan_freq_hz for s in sci_spws])
        centres = np.array([s.centre_hz for s in tsys_spws])[:, None]  # (bb, 1)
        sci_low = np.array([s.centre_hz - s.bandwidth_hz / 2.0 for s in sci_spws])[:, None]

        # Tsys at each knot: continuum (K) with a slope across the band, plus an atmospheric
        # Lorentzian that deepens with time (airmass), common to all antennas.
        ant_pol = (n_antennas, n_pol)
        t_cont0 = rng.uniform(80.0, 110.0, ant_pol)
        drift = 0.08 * np.arange(n_knot) / max(n_knot - 1, 1)
        t_cont = t_cont0 * (1.0 + drift[:, None, None] + rng.normal(0.0, 0.01, (n_knot, *ant_pol)))
        slope = rng.uniform(-0.08, 0.08, ant_pol)
        atm_centre = sci_low + ATM_FEATURE[0] * SCIENCE_BANDWIDTH_HZ  # (bb, 1)
        atm_height = ATM_FEATURE[2] * (1.0 + 0.15 * np.arange(n_knot) / max(n_knot - 1, 1))

        def tsys_at(freq: np.ndarray) -> np.ndarray:  # (knot, bb, ant, chan, pol) in K
            x = ((freq - centres) / TSYS_BANDWIDTH_HZ)[None, :, None, :, None]
            feature = _lorentz(freq, atm_centre, ATM_FEATURE[1])[None, :, None, :, None]
            cont = t_cont[:, None, :, None, :] * (1.0 + slope[None, None, :, None, :] * x)
            return (cont + atm_height[:, None, None, None, None] * feature).astype(np.float32)

        self.tsys_tsys = tsys_at(self.f_tsys)
        self.tsys_sci = tsys_at(self.f_sci)
        # Decorative SYSCAL companions: a ~290 K calibration load and a receiver temperature.
        x_tsys = ((self.f_tsys - centres) / TSYS_BANDWIDTH_HZ)[:, None, :, None]
        self.tcal = np.broadcast_to(
            (290.0 * (1.0 + 0.01 * x_tsys)).astype(np.float32), self.tsys_tsys.shape[1:]
        )
        self.trx = 0.45 * t_cont0[None, :, None, :] * (1.0 + slope[None, :, None, :] * x_tsys)
        self.trx = self.trx.astype(np.float32)

        # Receiver bandpass: a ripple and a slope around 1, a function of sky frequency.
        period = rng.uniform(0.3e9, 0.8e9, (n_bb, *ant_pol))[:, :, None, :]
        phase = rng.uniform(0.0, 2.0 * np.pi, (n_bb, *ant_pol))[:, :, None, :]
        tilt = rng.uniform(-0.04, 0.04, (n_bb, *ant_pol))[:, :, None, :]

        def bandpass_at(freq: np.ndarray) -> np.ndarray:  # (bb, ant, chan, pol)
            df = (freq - centres)[:, None, :, None]
            ripple = 0.06 * np.sin(2.0 * np.pi * df / period + phase)
            return (1.0 + ripple + tilt * df / TSYS_BANDWIDTH_HZ).astype(np.float32)

        self.bp_tsys = bandpass_at(self.f_tsys)
        self.bp_sci = bandpass_at(self.f_sci)

        # Gain drift per antenna and polarization (1/K).
        self.g_period = rng.uniform(600.0, 1800.0, ant_pol)
        self.g_phase = rng.uniform(0.0, 2.0 * np.pi, ant_pol)
        self.g_trend = rng.uniform(-0.02, 0.02, ant_pol)

        # Lines (K) per science spw.
        peaks, fracs, fwhms = (np.array(v[:n_lines]) for v in zip(*LINES, strict=True))
        self.line_peak = np.tile(peaks, (n_bb, 1))
        self.line_centre = sci_low + fracs[None, :] * SCIENCE_BANDWIDTH_HZ
        self.line_fwhm = np.tile(fwhms, (n_bb, 1))
        sig = self.line_fwhm / np.sqrt(8.0 * np.log(2.0))
        arg = (self.f_sci[:, :, None] - self.line_centre[:, None, :]) / sig[:, None, :]
        self.line = (self.line_peak[:, None, :] * np.exp(-0.5 * arg**2)).sum(-1)
        self.line = self.line.astype(np.float32)  # (bb, chan)

        # Baseline ripple (K) on ON spectra: low-order polynomial plus a sinusoid.
        n_sci = self.f_sci.shape[1]
        x = np.linspace(-1.0, 1.0, n_sci)[None, None, :, None]
        c1, c2, c3 = (rng.uniform(-0.05, 0.05, (n_bb, *ant_pol))[:, :, None, :] for _ in "abc")
        wphase = rng.uniform(0.0, 2.0 * np.pi, (n_bb, *ant_pol))[:, :, None, :]
        base = c1 * x + c2 * (x**2 - 1.0 / 3.0) + c3 * np.sin(3.0 * np.pi * x + wphase)
        self.baseline = base.astype(np.float32)  # (bb, ant, chan, pol)

        self.radiometer_tsys = np.array(
            [1.0 / np.sqrt(s.chan_width_hz * integration_s) for s in tsys_spws]
        )
        self.radiometer_sci = np.array(
            [1.0 / np.sqrt(s.chan_width_hz * integration_s) for s in sci_spws]
        )

    def gain(self, t: np.ndarray) -> np.ndarray:
        """g(t) (1/K), shape (time, antenna, polarization)."""
        dt = (t - self.t0)[:, None, None]
        wobble = 0.03 * np.sin(2.0 * np.pi * dt / self.g_period + self.g_phase)
        return (GAIN_SCALE_PER_K * (1.0 + wobble + self.g_trend * dt / self.span)).astype(
            np.float32
        )

    def power(self, seg: _Segment, sl: slice, noise_seed: int | None) -> np.ndarray:
        """Raw counts for integrations `sl` of `seg`, shape (time, spw, antenna, chan, pol);
        radiometer noise from `noise_seed` (None: noiseless)."""
        t = seg.times[sl]
        k0, w = _knot_weights(self.knots, t)
        w = w.astype(np.float32)[:, None, None, None, None]
        if seg.kind == "atm":
            knots, bandpass, radiometer = self.tsys_tsys, self.bp_tsys, self.radiometer_tsys
        else:
            knots, bandpass, radiometer = self.tsys_sci, self.bp_sci, self.radiometer_sci
        temp = (1.0 - w) * knots[k0] + w * knots[k0 + 1]
        if seg.kind == "on":
            factor = seg.source_factor[sl][:, None, None, None, None]
            temp += factor * self.line[None, :, None, :, None] + self.baseline[None]
        power = self.gain(t)[:, None, :, None, :] * bandpass[None] * temp
        if noise_seed is not None:
            keys = [(seg.first + k,) for k in range(*sl.indices(len(seg.times)))]
            n = lay.keyed_normal(noise_seed, keys, power.shape[1:])
            power *= 1.0 + n * radiometer.astype(np.float32)[None, :, None, None, None]
        return power

    def syscal_columns(self, tsys_ids: np.ndarray) -> dict[str, np.ndarray]:
        """SYSCAL rows by (calibration, Tsys spw, antenna); spectra (nchan, receptor)."""
        n_knot, n_bb, n_ant = self.tsys_tsys.shape[:3]
        nrow = n_knot * n_bb * n_ant
        shape = (nrow, *self.tsys_tsys.shape[3:])
        return {
            "TIME": np.repeat(self.syscal_time, n_bb * n_ant),
            "INTERVAL": np.repeat(self.syscal_interval, n_bb * n_ant),
            "ANTENNA_ID": np.tile(np.arange(n_ant, dtype=np.int32), n_knot * n_bb),
            "FEED_ID": np.zeros(nrow, dtype=np.int32),
            "SPECTRAL_WINDOW_ID": np.tile(np.repeat(tsys_ids.astype(np.int32), n_ant), n_knot),
            "TSYS_SPECTRUM": self.tsys_tsys.reshape(shape),
            "TCAL_SPECTRUM": np.broadcast_to(self.tcal, self.tsys_tsys.shape).reshape(shape),
            "TRX_SPECTRUM": np.broadcast_to(self.trx, self.tsys_tsys.shape).reshape(shape),
        }

    def truth(
        self,
        ants: lay.Antennas,
        *,
        mode: str,
        noise: bool,
        seed: int,
        tsys_ids: np.ndarray,
        sci_ids: np.ndarray,
    ) -> xr.Dataset:
        segs = self.segments
        seg_of = np.concatenate([np.full(len(s.times), i) for i, s in enumerate(segs)])
        intents = {"atm": ATM_INTENT, "on": ON_INTENT, "off": OFF_INTENT}
        per_time = np.array([s.kind for s in segs])[seg_of]
        sky = (schema.TIME, schema.SKY_DIR_LABEL)
        sci = ("science_spw", schema.ANTENNA_NAME, "science_chan", schema.POLARIZATION)
        tsy = ("tsys_spw", schema.ANTENNA_NAME, "tsys_chan", schema.POLARIZATION)
        syscal = (schema.TIME_SYSTEM_CAL, *tsy)

        def var(dims, values, units, description):
            return xr.Variable(dims, values, {"units": units, "description": description})

        data_vars = {
            "GAIN": var(
                (schema.TIME, schema.ANTENNA_NAME, schema.POLARIZATION),
                self.gain(self.times),
                "1/K",
                "g(t): raw counts per kelvin at each integration (ON, OFF and atm. cal.)",
            ),
            "BANDPASS_SCIENCE": var(sci, self.bp_sci, "", "B(nu) at the science channels"),
            "BANDPASS_TSYS": var(tsy, self.bp_tsys, "", "B(nu) at the Tsys channels"),
            "SYSCAL_TSYS": var(
                syscal, self.tsys_tsys, "K", "SYSCAL TSYS_SPECTRUM as written (receptor = pol)"
            ),
            "SYSCAL_TCAL": var(
                syscal,
                self.tcal[None].repeat(len(self.knots), 0),
                "K",
                "SYSCAL TCAL_SPECTRUM as written",
            ),
            "SYSCAL_TRX": var(
                syscal,
                self.trx[None].repeat(len(self.knots), 0),
                "K",
                "SYSCAL TRX_SPECTRUM as written",
            ),
            "TSYS_SCIENCE": var(
                (schema.TIME_SYSTEM_CAL, *sci),
                self.tsys_sci,
                "K",
                "the Tsys model at the science channels at each SYSCAL knot; in time it is "
                "linear between knots (tsys_knot_time) and constant outside them",
            ),
            "LINE_SPECTRUM": var(
                ("science_spw", "science_chan"),
                self.line,
                "K",
                "T_line(nu) at the channel centres (the source peak; ON = SOURCE_FACTOR * this)",
            ),
            "BASELINE_SPECTRUM": var(sci, self.baseline, "K", "T_base(nu), ON rows only"),
            "LINE_PEAK": var(
                ("science_spw", schema.LINE_LABEL),
                self.line_peak,
                "K",
                "peak brightness of each Gaussian line",
            ),
            "LINE_CENTER": var(
                ("science_spw", schema.LINE_LABEL),
                self.line_centre,
                "Hz",
                "line centre frequency (TOPO)",
            ),
            "LINE_FWHM": var(
                ("science_spw", schema.LINE_LABEL),
                self.line_fwhm,
                "Hz",
                "line full width at half maximum",
            ),
            "RADIOMETER_FACTOR_SCIENCE": var(
                ("science_spw",),
                self.radiometer_sci,
                "",
                "1/sqrt(channel width * integration): noise sigma = T * this (T in K, the "
                "total of Tsys, line and baseline), times g*B in counts",
            ),
            "RADIOMETER_FACTOR_TSYS": var(
                ("tsys_spw",), self.radiometer_tsys, "", "1/sqrt(channel width * integration)"
            ),
            "TSYS_SPW_FOR_SCIENCE": var(
                ("science_spw",), tsys_ids, "", "the Tsys spw of each science spw (same baseband)"
            ),
            "SOURCE_FACTOR": var(
                (schema.TIME,),
                np.concatenate([s.source_factor for s in segs]),
                "",
                "spatial source weight at the pointing (T_src = this * LINE_SPECTRUM; 0 off ON)",
            ),
            "INTENT": var(
                (schema.TIME,), lay.strings([intents[k] for k in per_time]), "", "STATE OBS_MODE"
            ),
            "SCAN_NUMBER": var((schema.TIME,), np.array([s.scan for s in segs])[seg_of], "", ""),
            "SUB_SCAN": var((schema.TIME,), np.array([s.sub_scan for s in segs])[seg_of], "", ""),
            "STATE_ID": var((schema.TIME,), np.array([s.state_id for s in segs])[seg_of], "", ""),
            "RASTER_ROW": var(
                (schema.TIME,),
                np.array([s.raster_row for s in segs])[seg_of],
                "",
                "raster row of each integration (-1: not in a raster row)",
            ),
            "POINTING_DIRECTION": var(
                sky,
                np.stack(
                    [np.concatenate([s.ra for s in segs]), np.concatenate([s.dec for s in segs])],
                    axis=-1,
                ),
                "rad",
                "J2000 RA, Dec of every antenna at each integration",
            ),
        }
        if mode == "otfraster":
            rows = [s for s in segs if s.raster_row >= 0]
            row_dim = ("raster_row",)
            data_vars["RASTER_ROW_START"] = var(
                row_dim, np.array([s.times[0] for s in rows]), "s", "first integration (MS TIME)"
            )
            data_vars["RASTER_ROW_END"] = var(
                row_dim, np.array([s.times[-1] for s in rows]), "s", "last integration (MS TIME)"
            )
            data_vars["RASTER_ROW_SCAN"] = var(row_dim, np.array([s.scan for s in rows]), "", "")
        coords = {
            **lay.time_coords(self.times),
            **lay.time_coords(self.syscal_time, schema.TIME_SYSTEM_CAL),
            "tsys_knot_time": (
                schema.TIME_SYSTEM_CAL,
                self.knots,
                {"units": "s", "description": "SYSCAL TIME - INTERVAL/2: where Tsys is exact"},
            ),
            "syscal_interval": (
                schema.TIME_SYSTEM_CAL,
                self.syscal_interval,
                {"units": "s", "description": "SYSCAL INTERVAL (the atm. cal. duration)"},
            ),
            schema.ANTENNA_NAME: lay.strings(ants.names),
            schema.POLARIZATION: lay.strings(CORRELATIONS),
            schema.SKY_DIR_LABEL: lay.strings(["ra", "dec"]),
            "science_spw": sci_ids,
            "tsys_spw": tsys_ids,
            "science_frequency": (("science_spw", "science_chan"), self.f_sci, {"units": "Hz"}),
            "tsys_frequency": (("tsys_spw", "tsys_chan"), self.f_tsys, {"units": "Hz"}),
            "baseband": ("science_spw", [s.baseband for s in self.sci_spws], {"units": ""}),
        }
        attrs = {
            "simulator": "radflow.testing.simulate_single_dish",
            "mode": mode,
            "seed": seed,
            "noise": int(noise),
            "telescope_name": "ALMA",
            "field_name": TARGET.name,
            "field_direction_rad": [TARGET.ra_rad, TARGET.dec_rad],
            "off_offset_deg": OFF_OFFSET_DEG,
            "integration_s": self.integration_s,
            "signal_model": (
                "P = g(t) B(nu) T (1 + n RADIOMETER_FACTOR); T = Tsys (OFF, atm. cal.), "
                "Tsys + SOURCE_FACTOR LINE_SPECTRUM + BASELINE_SPECTRUM (ON)"
            ),
            "tsys_time_model": "linear between tsys_knot_time, constant outside",
            "source_fwhm_arcsec": SOURCE_FWHM_ARCSEC if mode == "otfraster" else 0.0,
            "atm_intent": ATM_INTENT,
            "on_intent": ON_INTENT,
            "off_intent": OFF_INTENT,
        }
        return xr.Dataset(data_vars, coords=coords, attrs=attrs)
