"""Simulated ALMA 12-m interferometer execution blocks with recorded truth.

Layout of the MS written by :func:`simulate_interferometer`:

- Antennas alternate DA41, DV01, DA42, DV02, ... on pads A0xx, a random compact layout within
  150 m of the ALMA array centre (baselines ~15-300 m), 12-m dishes.
- ``n_spw`` spectral windows (Band 3: 90.52, 92.48, 102.52, 104.48 GHz centres), each 1.875 GHz
  wide with ``n_chan`` channels, BBC_NO 1..4; DATA_DESC_ID equals the spw id; correlations XX YY
  (``n_pol=2``) or XX XY YX YY (``n_pol=4``).
- Fields (FIELD row = SOURCE_ID): 0 ``J1256-0547`` bandpass calibrator, 1 ``J1924-2914`` flux
  calibrator, 2 ``J1037-2934`` phase calibrator, 3 ``TW_Hya`` target, all point sources at their
  phase centres (optionally a uniform disk for the flux calibrator).
- Scans: 1 bandpass, 2 flux, then ``n_cycles`` x (phase calibrator, target), then a last phase
  calibrator scan (default 7 scans), ``n_integrations`` integrations each. One STATE row per
  intent (ALMA OBS_MODE strings, sub-scan 1).
- Rows in time order, then DATA_DESC_ID, then baseline (antenna1 < antenna2, or <= with
  autocorrelations). UVW (m, J2000) = uvw(antenna2) - uvw(antenna1), from ITRF positions and the
  Greenwich hour angle. WEIGHT = 1/SIGMA^2 per correlation, WEIGHT_SPECTRUM the same in every
  channel.

Visibility model (complex64)::

    V_ij(t, nu, p q) = g_ip(t) conj(g_jq(t)) B_ip(nu) conj(B_jq(nu)) M_pq(nu) + sigma (n1 + i n2)
    M_pq(nu) = S(nu) D_ij(t, nu) for p == q, 0 for the cross hands (unpolarised sources)
    S(nu) = S0 (nu / 100 GHz)^alpha,   D = 2 J1(x)/x, x = pi |b_uv| theta / lambda (disk; else 1)
    sigma = NOISE_SIGMA(spw) |g_ip(t)| |g_jq(t)|,  NOISE_SIGMA = SEFD / sqrt(2 dnu tau)

g are per antenna and receptor (X, Y), the same in every spw; B per antenna, spw and receptor
with sqrt(mean |B|^2) = 1 over each spw's channels (its phase is not normalised: it carries a
delay and a per-spw offset). sigma is the noise of the real and of the imaginary part.
MODEL_DATA (optional) holds M (what setjy would write); CORRECTED_DATA (optional) a copy of DATA.
Autocorrelations (optional) hold g_ip conj(g_iq) B_ip conj(B_iq) (M_pq + SEFD delta_pq), with
real noise in the parallel hands.

Flags: every row of antenna ``min(2, n_antennas - 1)`` in the second half of scan 3 (the first
phase-calibrator scan; FLAG_ROW True there) and two random channels per spw in every row
(``n_chan >= 8``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import xarray as xr
from scipy.special import j1

from radflow import schema
from radflow.converters.ms_writer import MSWriter

from . import _layout as lay

START = datetime(2024, 4, 20, 4, 30, 0)  # UTC; local sidereal time ~13.9 h at ALMA
REFERENCE_FREQUENCY_HZ = 100.0e9  # of every field's power-law spectrum
SPW_CENTRES_HZ = (90.52e9, 92.48e9, 102.52e9, 104.48e9)
SPW_BANDWIDTH_HZ = 1.875e9
SCAN_GAP_S = 20.0
MAX_RADIUS_M = 150.0

# name, (RA h m s), (Dec d m s), intents, flux density at 100 GHz (Jy), spectral index
FIELDS = (
    ("J1256-0547", (12, 56, 11.1666), (-5, 47, 21.525),
     "CALIBRATE_BANDPASS#ON_SOURCE,CALIBRATE_WVR#ON_SOURCE", 8.0, -0.55),
    ("J1924-2914", (19, 24, 51.0560), (-29, 14, 30.121),
     "CALIBRATE_FLUX#ON_SOURCE,CALIBRATE_WVR#ON_SOURCE", 3.0, -0.7),
    ("J1037-2934", (10, 37, 16.0797), (-29, 34, 2.813),
     "CALIBRATE_PHASE#ON_SOURCE,CALIBRATE_WVR#ON_SOURCE", 1.2, -0.45),
    ("TW_Hya", (11, 1, 51.9054), (-34, 42, 17.031), "OBSERVE_TARGET#ON_SOURCE", 0.04, 2.5),
)  # fmt: skip
BANDPASS_FIELD, FLUX_FIELD, PHASE_FIELD, TARGET_FIELD = range(4)
FLAGGED_SCAN = 3  # the first phase-calibrator scan

EXTRA_COLUMNS = ("MODEL_DATA", "CORRECTED_DATA")
_BLOCK_BYTES = 64 * 2**20  # main-table cell data per block of rows
# On-disk size model of the main table (measured with python-casacore 3.8): data columns are
# tiled in whole tiles of 128 rows; the scalar and small columns (TIME, UVW, WEIGHT, SIGMA,
# ids) take about this much per row.
_TILE_ROWS = 128
_ROW_OVERHEAD_BYTES = 180


@dataclass
class _Flags:
    """What is flagged, and how much of it was written."""

    antenna: int  # flagged in every row at `times`
    channels: np.ndarray  # (spw, k): flagged in every row
    times: np.ndarray  # MS TIME of the antenna's flagged integrations
    samples: int = 0  # FLAG cells set
    rows: int = 0  # rows with FLAG_ROW set


def _baselines(n_antennas: int, autocorrelations: bool) -> tuple[np.ndarray, np.ndarray]:
    a1, a2 = np.triu_indices(n_antennas, k=0 if autocorrelations else 1)
    return a1.astype(np.int32), a2.astype(np.int32)


def _scan_fields(n_cycles: int) -> list[int]:
    cycle = [PHASE_FIELD, TARGET_FIELD] * n_cycles
    return [BANDPASS_FIELD, FLUX_FIELD, *cycle, PHASE_FIELD]


def _cell_bytes(n_chan: int, n_pol: int, extra_columns: Sequence[str]) -> float:
    """Main-table bytes of one row's cells: complex64 data columns, float32 WEIGHT_SPECTRUM and
    FLAG (stored as bits)."""
    return n_chan * n_pol * (8 * (1 + len(extra_columns)) + 4 + 1 / 8)


def _ms_bytes(n_rows: int, cell_bytes: float) -> float:
    padded = -(-n_rows // _TILE_ROWS) * _TILE_ROWS
    return padded * cell_bytes + n_rows * _ROW_OVERHEAD_BYTES


def integrations_for_size(
    target_bytes: float,
    *,
    n_antennas: int = 10,
    n_spw: int = 2,
    n_chan: int = 64,
    n_pol: int = 2,
    n_cycles: int = 2,
    extra_columns: Sequence[str] = (),
    autocorrelations: bool = False,
) -> int:
    """`n_integrations` for :func:`simulate_interferometer` giving an MS of about `target_bytes`.

    The MS size is linear in the number of integrations (to within ~2% plus the small
    subtables); the other parameters must match those passed to the simulator.

    Parameters
    ----------
    target_bytes
        Wanted size of the MS on disk (bytes).
    n_antennas, n_spw, n_chan, n_pol, n_cycles, extra_columns, autocorrelations
        As for :func:`simulate_interferometer`.

    Returns
    -------
    int
        Integrations per scan (at least 1).
    """
    rows_per_int = (
        len(_scan_fields(n_cycles)) * n_spw * len(_baselines(n_antennas, autocorrelations)[0])
    )
    cell = _cell_bytes(n_chan, n_pol, extra_columns)
    guess = max(1, round(target_bytes / _ms_bytes(rows_per_int, cell)))
    # Tile padding makes the size slightly non-linear: take the best of the neighbours.
    candidates = range(max(1, guess - 2), guess + 3)
    return min(candidates, key=lambda n: abs(_ms_bytes(n * rows_per_int, cell) - target_bytes))


class _Model:
    """Gains, bandpasses and field spectra of one simulated EB."""

    def __init__(
        self,
        rng: np.random.Generator,
        n_antennas: int,
        spws: list[lay.SpectralWindowSpec],
        t0: float,
        flux_disk_rad: float,
        sefd_jy: float,
        integration_s: float,
    ) -> None:
        n_spw = len(spws)
        ant_rec = (n_antennas, len(lay.RECEPTORS))
        self.t0 = t0
        self.freq = np.array([s.chan_freq_hz for s in spws])  # (spw, chan)
        centres = np.array([s.centre_hz for s in spws])

        # Gains: amplitude 1 +- ~10% (two slow sinusoids), phase offset plus a slow sinusoid.
        self.amp_offset = rng.uniform(-0.05, 0.05, ant_rec)
        self.amp_terms = [
            (a, rng.uniform(1800.0, 7200.0, ant_rec), rng.uniform(0, 2 * np.pi, ant_rec))
            for a in (0.06, 0.04)
        ]
        self.phase_offset = rng.uniform(-np.pi, np.pi, ant_rec)
        self.phase_terms = (
            rng.uniform(1200.0, 3600.0, ant_rec),
            rng.uniform(0, 2 * np.pi, ant_rec),
        )

        # Bandpasses (antenna, spw, chan, receptor): ripple and tilt in amplitude; delay, ripple
        # and a per-spw offset in phase.
        shape = (n_antennas, n_spw, 1, len(lay.RECEPTORS))
        x = ((self.freq - centres[:, None]) / SPW_BANDWIDTH_HZ)[None, :, :, None]  # -0.5..0.5
        amp = (
            1.0
            + 0.05 * np.sin(2 * np.pi * rng.uniform(1.0, 3.0, shape) * x + rng.uniform(0, 6, shape))
            + rng.uniform(-0.1, 0.1, shape) * x
        )
        amp /= np.sqrt(np.mean(amp**2, axis=2, keepdims=True))
        delay_s = rng.uniform(-0.3e-9, 0.3e-9, shape)
        phase = (
            2 * np.pi * delay_s * x * SPW_BANDWIDTH_HZ
            + 0.05 * np.sin(2 * np.pi * rng.uniform(2.0, 5.0, shape) * x + rng.uniform(0, 6, shape))
            + rng.uniform(-0.5, 0.5, shape)
        )
        self.bandpass = (amp * np.exp(1j * phase)).astype(np.complex64)

        # Field spectra (field, spw, chan), Jy.
        self.s0 = np.array([f[4] for f in FIELDS])
        self.alpha = np.array([f[5] for f in FIELDS])
        self.flux = (
            self.s0[:, None, None]
            * (self.freq / REFERENCE_FREQUENCY_HZ) ** self.alpha[:, None, None]
        )
        self.flux = self.flux.astype(np.float32)
        self.flux_centre = (
            self.s0[:, None] * (centres / REFERENCE_FREQUENCY_HZ) ** self.alpha[:, None]
        )
        self.disk_rad = np.zeros(len(FIELDS))
        self.disk_rad[FLUX_FIELD] = flux_disk_rad

        self.sefd_jy = sefd_jy
        self.noise_sigma = np.array(
            [sefd_jy / np.sqrt(2.0 * s.chan_width_hz * integration_s) for s in spws]
        )

    def gain(self, t: np.ndarray) -> np.ndarray:
        """g(t), complex64 (time, antenna, receptor)."""
        dt = (t - self.t0)[:, None, None]
        amp = 1.0 + self.amp_offset
        for a, period, phi in self.amp_terms:
            amp = amp + a * np.sin(2 * np.pi * dt / period + phi)
        period, phi = self.phase_terms
        phase = self.phase_offset + np.sin(2 * np.pi * dt / period + phi)
        return (amp * np.exp(1j * phase)).astype(np.complex64)


def simulate_interferometer(
    path: str | os.PathLike,
    *,
    n_antennas: int = 10,
    n_spw: int = 2,
    n_chan: int = 64,
    n_pol: int = 2,
    n_integrations: int = 10,
    n_cycles: int = 2,
    integration_s: float = 6.048,
    extra_columns: Sequence[str] = (),
    autocorrelations: bool = False,
    noise: bool = True,
    flags: bool = True,
    flux_calibrator_diameter_arcsec: float = 0.0,
    sefd_jy: float = 2500.0,
    seed: int = 0,
    overwrite: bool = False,
) -> lay.SimulatedEB:
    """Write an ALMA-like interferometer MS with known gains, bandpasses and flux densities.

    The MS layout and the visibility model are described in the module docstring; the truth
    dataset (``SimulatedEB.truth``) holds every injected quantity with its units. The MS size is
    linear in `n_integrations`: see :func:`integrations_for_size`.

    Parameters
    ----------
    path
        MS directory to create; the truth goes to ``<path>.truth.zarr``.
    n_antennas
        Number of 12-m antennas (2-64; ALMA-like arrays use 8-50).
    n_spw
        Spectral windows (1-4), one per baseband.
    n_chan
        Channels per spw (each spw is 1.875 GHz wide).
    n_pol
        Correlations: 2 (XX YY) or 4 (XX XY YX YY).
    n_integrations
        Integrations per scan.
    n_cycles
        Phase-calibrator/target cycles (scans = 3 + 2 * n_cycles).
    integration_s
        Integration time (s): INTERVAL and EXPOSURE of every row.
    extra_columns
        Any of ``"MODEL_DATA"`` (the noiseless model M) and ``"CORRECTED_DATA"`` (a copy of
        DATA), to emulate an MS after CASA's setjy/applycal.
    autocorrelations
        Also write autocorrelation rows.
    noise
        Add thermal noise; ``False`` gives the noiseless model exactly (to complex64).
        SIGMA/WEIGHT are the same either way.
    flags
        Flag one antenna for half a scan and two channels per spw (see the module docstring).
    flux_calibrator_diameter_arcsec
        Diameter (arcsec) of the flux calibrator as a uniform disk; 0 for a point source.
    sefd_jy
        System equivalent flux density (Jy) setting the noise level.
    seed
        Seed of the numpy random generator: the same seed and sizes give identical output.
        The model (layout, gains, bandpasses, flags) does not depend on `noise`.
    overwrite
        Replace an existing MS and truth at `path`.

    Returns
    -------
    SimulatedEB
        The MS path, the truth dataset and where the truth was saved.
    """
    if not 2 <= n_antennas <= 64:
        raise ValueError(f"n_antennas must be 2..64, not {n_antennas}")
    if not 1 <= n_spw <= len(SPW_CENTRES_HZ):
        raise ValueError(f"n_spw must be 1..{len(SPW_CENTRES_HZ)}, not {n_spw}")
    if n_pol not in (2, 4):
        raise ValueError(f"n_pol must be 2 or 4, not {n_pol}")
    if min(n_chan, n_integrations, n_cycles) < 1 or integration_s <= 0:
        raise ValueError("n_chan, n_integrations and n_cycles must be >= 1, integration_s > 0")
    unknown = set(extra_columns) - set(EXTRA_COLUMNS)
    if unknown:
        raise ValueError(f"extra_columns: unknown {sorted(unknown)}; allowed {EXTRA_COLUMNS}")

    layout_ss, model_ss, flag_ss = np.random.SeedSequence(seed).spawn(3)
    layout_rng = np.random.default_rng(layout_ss)
    flag_rng = np.random.default_rng(flag_ss)

    corrs = ("XX", "YY") if n_pol == 2 else ("XX", "XY", "YX", "YY")
    rec1 = np.array([lay.CORR_RECEPTORS[c][0] for c in corrs])
    rec2 = np.array([lay.CORR_RECEPTORS[c][1] for c in corrs])
    parallel = rec1 == rec2

    names = [f"DA{41 + i // 2}" if i % 2 == 0 else f"DV{1 + i // 2:02d}" for i in range(n_antennas)]
    pads = layout_rng.choice(np.arange(1, 138), n_antennas, replace=False)
    ants = lay.alma_antennas(names, [f"A{p:03d}" for p in pads], layout_rng, MAX_RADIUS_M)
    spws = [
        lay.SpectralWindowSpec(
            f"X1234#ALMA_RB_03#BB_{b + 1}#SW-01#FULL_RES",
            SPW_CENTRES_HZ[b],
            SPW_BANDWIDTH_HZ,
            n_chan,
            b + 1,
        )
        for b in range(n_spw)
    ]
    fields = [lay.Field(f[0], *lay.hms_dms_to_rad(f[1], f[2])) for f in FIELDS]
    states = lay.StateTable()
    field_states = [states.id(lay.State(f[3])) for f in FIELDS]

    # Time grid: contiguous integrations within a scan, a slew between scans.
    scan_fields = _scan_fields(n_cycles)
    t_first = lay.mjd_seconds(START)
    scan_times = []
    for i in range(len(scan_fields)):
        start = t_first + i * (n_integrations * integration_s + SCAN_GAP_S)
        scan_times.append(lay.integration_times(start, n_integrations, integration_s))
    times = np.concatenate(scan_times)
    t_last = times[-1] + integration_s / 2.0

    model = _Model(
        np.random.default_rng(model_ss),
        n_antennas,
        spws,
        t_first,
        np.deg2rad(flux_calibrator_diameter_arcsec / 3600.0),
        sefd_jy,
        integration_s,
    )
    a1, a2 = _baselines(n_antennas, autocorrelations)
    n_bl = len(a1)
    auto = a1 == a2
    # B_ip conj(B_jq) per spw (baseline, chan, corr): reused by every integration.
    bb = model.bandpass[a1][:, :, :, rec1] * np.conj(model.bandpass[a2][:, :, :, rec2])
    bb = np.ascontiguousarray(bb.transpose(1, 0, 2, 3))  # (spw, baseline, chan, corr)
    # x conj(x) is real: drop the rounding residue so parallel-hand autocorrelations are real.
    real_auto = auto[:, None] & parallel  # (baseline, corr)
    bb = np.where(real_auto[None, :, None, :], bb.real, bb)
    wavelength = lay.SPEED_OF_LIGHT_M_S / model.freq  # (spw, chan)

    if flags and n_chan >= 8:
        inner = np.arange(2, n_chan - 2)
        flag_chans = np.sort([flag_rng.choice(inner, 2, replace=False) for _ in range(n_spw)])
    else:
        flag_chans = np.zeros((n_spw, 0), dtype=int)
    flagged = _Flags(
        antenna=min(2, n_antennas - 1),
        channels=flag_chans,
        times=scan_times[FLAGGED_SCAN - 1][n_integrations // 2 :] if flags else np.array([]),
    )

    def block(scan: int, it: slice, spw: np.ndarray) -> dict[str, np.ndarray]:
        """Main-table rows of integrations `it` of `scan` in spws `spw`: (time, spw, baseline)."""
        field = scan_fields[scan - 1]
        t = scan_times[scan - 1][it]
        nt, n_s = len(t), len(spw)
        g = model.gain(t)
        gg = g[:, a1][:, :, rec1] * np.conj(g[:, a2][:, :, rec2])  # (t, baseline, corr)
        gg = np.where(real_auto, gg.real, gg)
        uvw_ant = lay.uvw_per_antenna(ants.itrf_m, fields[field].ra_rad, fields[field].dec_rad, t)
        uvw = uvw_ant[:, a2] - uvw_ant[:, a1]  # (t, baseline, 3)

        sky = np.where(parallel, 1.0, 0.0).astype(np.float32) * model.flux[field, spw][..., None]
        sky = np.broadcast_to(sky[None, :, None], (nt, n_s, n_bl, n_chan, n_pol))
        if model.disk_rad[field] > 0.0:
            x = (
                np.pi
                * np.hypot(uvw[..., 0], uvw[..., 1])[:, None, :, None]
                * model.disk_rad[field]
                / wavelength[None, spw, None, :]
            )
            safe = np.where(x > 0.0, x, 1.0)
            disk = np.where(x > 0.0, 2.0 * j1(safe) / safe, 1.0).astype(np.float32)
            sky = sky * disk[..., None]
        # What the correlator sees: autocorrelations add the system noise power (SEFD).
        power = sky
        if autocorrelations:
            system = np.where(real_auto[:, None, :], model.sefd_jy, 0.0)
            power = sky + system.astype(np.float32)

        vis = gg[:, None, :, None, :] * bb[None, spw] * power  # (t, spw, baseline, chan, corr)
        sigma = model.noise_sigma[None, spw, None, None] * np.abs(gg)[:, None, :, :]
        sigma = sigma.astype(np.float32)  # (t, spw, baseline, corr)
        if noise:
            first = (scan - 1) * n_integrations + it.start  # index of t[0] in the EB
            keys = [(first + k, s) for k in range(nt) for s in spw]
            draws = lay.keyed_normal(seed, keys, (2, n_bl, n_chan, n_pol))
            draws = draws.reshape(nt, n_s, 2, n_bl, n_chan, n_pol)
            re, im = draws[:, :, 0], draws[:, :, 1]
            im *= ~real_auto[:, None, :]  # parallel-hand autocorrelations are real
            vis += sigma[:, :, :, None, :] * (re + 1j * im)

        nrow = nt * n_s * n_bl
        flag = np.zeros((nt, n_s, n_bl, n_chan, n_pol), dtype=bool)
        for i, s in enumerate(spw):
            flag[:, i, :, flagged.channels[s], :] = True
        bad_time = np.isin(t, flagged.times)[:, None, None]
        bad_bl = ((a1 == flagged.antenna) | (a2 == flagged.antenna))[None, None, :]
        flag_row = np.broadcast_to(bad_time & bad_bl, (nt, n_s, n_bl))
        flag[flag_row] = True
        flagged.samples += int(flag.sum())
        flagged.rows += int(flag_row.sum())

        weight = (1.0 / sigma**2).reshape(nrow, n_pol)
        cols = {
            "TIME": np.repeat(t, n_s * n_bl),
            "INTERVAL": np.full(nrow, integration_s),
            "ANTENNA1": np.tile(a1, nt * n_s),
            "ANTENNA2": np.tile(a2, nt * n_s),
            "DATA_DESC_ID": np.tile(np.repeat(spw.astype(np.int32), n_bl), nt),
            "SCAN_NUMBER": np.full(nrow, scan, dtype=np.int32),
            "STATE_ID": np.full(nrow, field_states[field], dtype=np.int32),
            "FIELD_ID": np.full(nrow, field, dtype=np.int32),
            "UVW": np.broadcast_to(uvw[:, None], (nt, n_s, n_bl, 3)).reshape(nrow, 3),
            "DATA": vis.reshape(nrow, n_chan, n_pol),
            "FLAG": flag.reshape(nrow, n_chan, n_pol),
            "FLAG_ROW": flag_row.reshape(nrow),
            "SIGMA": sigma.reshape(nrow, n_pol),
            "WEIGHT": weight,
            "WEIGHT_SPECTRUM": np.broadcast_to(weight[:, None, :], (nrow, n_chan, n_pol)),
        }
        if "MODEL_DATA" in extra_columns:
            cols["MODEL_DATA"] = sky.astype(np.complex64).reshape(nrow, n_chan, n_pol)
        if "CORRECTED_DATA" in extra_columns:
            cols["CORRECTED_DATA"] = cols["DATA"]
        return cols

    def write(ms_path: Path) -> xr.Dataset:
        t_mid, t_span = (t_first + t_last) / 2.0, t_last - t_first
        data_columns = ("DATA", *(c for c in EXTRA_COLUMNS if c in extra_columns))
        # Blocks of whole integrations; when one integration is too big, of a few of its spws
        # (rows stay in time, spw, baseline order either way).
        per_spw = n_bl * _cell_bytes(n_chan, n_pol, extra_columns)
        n_t = max(1, int(_BLOCK_BYTES // (n_spw * per_spw)))
        n_s = n_spw if n_t > 1 else int(np.clip(_BLOCK_BYTES // per_spw, 1, n_spw))
        spw_groups = np.array_split(np.arange(n_spw), np.arange(n_s, n_spw, n_s))
        with MSWriter(
            ms_path, data_columns=data_columns, weight_spectrum=True, overwrite=overwrite
        ) as ms:
            ms.write_subtable("ANTENNA", lay.antenna_columns(ants))
            ms.write_subtable("FEED", lay.feed_columns(n_antennas, t_mid, t_span))
            ms.write_subtable("SPECTRAL_WINDOW", lay.spectral_window_columns(spws))
            ms.write_subtable("POLARIZATION", lay.polarization_columns(corrs))
            ms.write_subtable("DATA_DESCRIPTION", lay.data_description_columns(n_spw))
            ms.write_subtable("FIELD", lay.field_columns(fields, t_first))
            ms.write_subtable("SOURCE", lay.source_columns(fields, t_mid, t_span))
            ms.write_subtable("STATE", states.columns())
            ms.write_subtable(
                "OBSERVATION",
                lay.observation_columns(t_first, t_last, "2023.1.00002.S", "radflow"),
            )
            ms.write_subtable("WEATHER", lay.weather_columns(t_first, t_last, layout_rng))
            for scan, st in enumerate(scan_times, start=1):
                for i in range(0, len(st), n_t):
                    for spw in spw_groups:
                        ms.append_rows(block(scan, slice(i, i + n_t), spw))
        return _truth(
            model,
            ants,
            spws,
            fields,
            scan_fields,
            scan_times,
            corrs,
            flagged,
            {
                "seed": seed,
                "noise": int(noise),
                "integration_s": integration_s,
                "autocorrelations": int(autocorrelations),
                "extra_columns": list(extra_columns),
            },
        )

    return lay.write_eb(path, overwrite, write)


def _truth(
    model: _Model,
    ants: lay.Antennas,
    spws: list[lay.SpectralWindowSpec],
    fields: list[lay.Field],
    scan_fields: list[int],
    scan_times: list[np.ndarray],
    corrs: Sequence[str],
    flagged: _Flags,
    run_attrs: dict,
) -> xr.Dataset:
    times = np.concatenate(scan_times)
    scan_of = np.concatenate([np.full(len(st), i) for i, st in enumerate(scan_times)])
    field_of = np.array(scan_fields)[scan_of]
    field_dim = (schema.FIELD_NAME,)
    spw_chan = ("spw", "chan")

    def var(dims, values, units, description=""):
        return xr.Variable(dims, values, {"units": units, "description": description})

    flagged_range = (
        [flagged.times[0], flagged.times[-1]] if len(flagged.times) else [np.nan, np.nan]
    )
    data_vars = {
        "GAIN": var(
            (schema.TIME, schema.ANTENNA_NAME, schema.RECEPTOR),
            model.gain(times),
            "",
            "g(t) per antenna and receptor at each integration (the same in every spw)",
        ),
        "BANDPASS": var(
            (schema.ANTENNA_NAME, "spw", "chan", schema.RECEPTOR),
            model.bandpass,
            "",
            "B(nu); sqrt(mean over channels of |B|^2) = 1 per antenna, spw and receptor",
        ),
        "FLUX_DENSITY": var((schema.FIELD_NAME, *spw_chan), model.flux, "Jy", "S(nu) per channel"),
        "FLUX_DENSITY_SPW": var(
            (schema.FIELD_NAME, "spw"), model.flux_centre, "Jy", "S at each spw centre frequency"
        ),
        "REFERENCE_FLUX_DENSITY": var(field_dim, model.s0, "Jy", "S0 at REFERENCE_FREQUENCY"),
        "SPECTRAL_INDEX": var(field_dim, model.alpha, "", "alpha in S0 (nu/nu0)^alpha"),
        "DISK_DIAMETER": var(field_dim, model.disk_rad, "rad", "uniform-disk diameter (0: point)"),
        "FIELD_INTENT": var(field_dim, lay.strings([f[3] for f in FIELDS]), "", "STATE OBS_MODE"),
        "FIELD_DIRECTION": var(
            (schema.FIELD_NAME, schema.SKY_DIR_LABEL),
            np.array([[f.ra_rad, f.dec_rad] for f in fields]),
            "rad",
            "J2000 phase centre = source position",
        ),
        "NOISE_SIGMA": var(
            ("spw",),
            model.noise_sigma,
            "Jy",
            "noise of the real and of the imaginary part before gains; a row's SIGMA is "
            "this times |g_ip| |g_jq|",
        ),
        "SCAN_NUMBER": var((schema.TIME,), scan_of + 1, ""),
        "FIELD": var((schema.TIME,), lay.strings([FIELDS[f][0] for f in field_of]), ""),
        "INTENT": var((schema.TIME,), lay.strings([FIELDS[f][3] for f in field_of]), ""),
        "ANTENNA_POSITION": var(
            (schema.ANTENNA_NAME, schema.CARTESIAN_POS_LABEL), ants.itrf_m, "m", "ITRF"
        ),
        "ANTENNA_ENU": var(
            (schema.ANTENNA_NAME, "enu_label"), ants.enu_m, "m", "offset from the array centre"
        ),
        "FLAGGED_CHANNELS": var(
            ("spw", "flagged_channel"), flagged.channels, "", "flagged in all rows"
        ),
        "FLAGGED_ANTENNA": var(
            (),
            np.array(ants.names[flagged.antenna], dtype=object),
            "",
            "flagged in FLAGGED_TIME_RANGE",
        ),
        "FLAGGED_SCAN": var((), FLAGGED_SCAN, ""),
        "FLAGGED_TIME_RANGE": var(
            ("bound",), np.array(flagged_range), "s", "first and last flagged MS TIME (mid)"
        ),
        "N_FLAGGED_SAMPLES": var((), flagged.samples, "", "FLAG cells set (all columns)"),
        "N_FLAGGED_ROWS": var((), flagged.rows, "", "rows with FLAG_ROW set"),
    }
    coords = {
        **lay.time_coords(times),
        schema.ANTENNA_NAME: lay.strings(ants.names),
        schema.RECEPTOR: lay.strings(lay.RECEPTORS),
        schema.FIELD_NAME: lay.strings([f.name for f in fields]),
        schema.SKY_DIR_LABEL: lay.strings(["ra", "dec"]),
        schema.CARTESIAN_POS_LABEL: lay.strings(["x", "y", "z"]),
        "enu_label": lay.strings(["east", "north", "up"]),
        "spw": np.arange(len(spws)),
        "frequency": (spw_chan, model.freq, {"units": "Hz"}),
        "spectral_window_name": ("spw", lay.strings([s.name for s in spws])),
        "baseband": ("spw", [s.baseband for s in spws]),
    }
    attrs = {
        "simulator": "radflow.testing.simulate_interferometer",
        "telescope_name": "ALMA",
        "correlations": list(corrs),
        "reference_frequency_hz": REFERENCE_FREQUENCY_HZ,
        "sefd_jy": model.sefd_jy,
        "visibility_model": (
            "V_ij = g_ip conj(g_jq) B_ip conj(B_jq) M_pq + sigma (n1 + i n2); M = S(nu) D for "
            "p == q, 0 otherwise"
        ),
        "uvw_convention": "uvw(antenna2) - uvw(antenna1), metres, J2000",
        **run_attrs,
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
