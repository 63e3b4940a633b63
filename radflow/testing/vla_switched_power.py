"""Simulated VLA (EVLA) execution blocks with switched-power data (SYSPOWER, CALDEVICE) and truth.

Layout of the MS written by :func:`simulate_vla_switched_power`:

- Antennas ``ea01``, ``ea02``, ... (25-m dishes) on a random compact layout within 400 m of the
  VLA centre; feeds with two circular receptors R and L.
- ``n_spw`` spectral windows in X band (8.332, 8.460, 8.588, 8.716 GHz centres), 128 MHz wide,
  ``n_chan`` channels; DATA_DESC_ID equals the spw id; correlations RR LL (``n_pol=2``) or
  RR RL LR LL (``n_pol=4``).
- One field, ``3C286`` (an unpolarised point source at the phase centre), ``n_scans`` scans of
  ``n_integrations`` integrations. Rows in time order, then spw, then baseline (a1 < a2).
- WEIGHT = WEIGHT_SPECTRUM = ``dnu tau`` (channel width times integration time: what the WIDAR
  correlator writes, "BW tau"); SIGMA = 1/sqrt(WEIGHT).
- SYSPOWER: one row per (antenna, spw, integration) at the integration's mid time (INTERVAL =
  the integration time): ``SWITCHED_DIFF``, ``SWITCHED_SUM``, ``REQUANTIZER_GAIN`` [receptor],
  float32. CALDEVICE: one row per (antenna, spw), ``NOISE_CAL`` [1 load, receptor] (K, float32),
  the noise-diode temperature at the spw centre (linear interpolation of the engineering table
  below, as the online system does), ``NUM_CAL_LOAD`` 1, ``CAL_LOAD_NAMES`` ``["NOISE_TUBE_LOAD"]``.

Model (self-consistent; the units of the correlator's raw products are those of the switched
powers)::

    Tcal_ip(nu)      noise-diode temperature (K): linear between the engineering frequencies
                     TCAL_FREQUENCY (truth TCAL_ENGINEERING), evaluated at each spw centre
    Tsys_ip(t)       = Trx_ip + Tatm_ip(t) + Tcal_ip/2   (K; the cal fires half of the time)
    a_ip(t)          analog power gain (power units per K), slowly varying
    Pon = a (Tsys + Tcal/2),  Poff = a (Tsys - Tcal/2)
    Pdiff = Pon - Poff = a Tcal,   Psum = Pon + Poff = 2 a Tsys       (SYSPOWER, pre-requantizer)
    Tant_ij(nu)      = S(nu) sqrt(eta_i Aeff_i eta_j Aeff_j) / (2 k)  (parallel hands; 0 cross)
    r_ij  = d q_ip q_jq sqrt(a_ip a_jq) exp(i (phi_ip - phi_jq)) Tant_ij + noise     (DATA)
    noise: sigma = d q_ip q_jq sqrt(a_ip a_jq Tsys_ip Tsys_jq) / sqrt(2 dnu tau) per part

with ``q`` the requantizer (voltage) gain after the switched-power detectors, ``d`` the net
digital factor (1, or CASA's 0.932 x 1.176 with ``casa_digital_factor=True``) and ``phi`` the
correlator (instrumental) phases. So ``r sqrt(CT_i CT_j) / (q_i q_j d)`` with
``CT = Tcal / Pdiff = 1/a`` is ``exp(i dphi) Tant`` in K, and ``rho = r / sqrt(P_i P_j)`` with
``P = Psum/2`` the correlation coefficient. A glitch (``glitch=``) multiplies one Pdiff sample
only: the data are not affected by it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import xarray as xr

from radflow import schema
from radflow.converters.ms_writer import MSWriter

from . import _layout as lay

BOLTZMANN = 1.380649e-23  # J/K
JANSKY = 1e-26  # W m^-2 Hz^-1
START = datetime(2024, 6, 2, 3, 0, 0)  # UTC; 3C286 transits the VLA near 04 h
VLA_LONGITUDE_DEG = -107.6184
VLA_LATITUDE_DEG = 34.0784
VLA_HEIGHT_M = 2124.0
DISH_DIAMETER_M = 25.0
SPW_CENTRES_HZ = (8.332e9, 8.460e9, 8.588e9, 8.716e9)
SPW_BANDWIDTH_HZ = 128e6
TCAL_FREQUENCY_HZ = np.arange(8.0e9, 8.85e9, 0.1e9)  # engineering frequencies of Tcal
RECEPTORS = ("R", "L")
CORR_RECEPTORS = {"RR": (0, 0), "RL": (0, 1), "LR": (1, 0), "LL": (1, 1)}
FIELD = ("3C286", (13, 31, 8.288), (30, 30, 32.96))
FLUX_JY = 5.2  # 3C286 near 8.4 GHz (Perley-Butler 2017 gives 5.2 Jy)
SPECTRAL_INDEX = -0.47
REFERENCE_FREQUENCY_HZ = 8.4e9
APERTURE_EFFICIENCY = 0.56  # VLA X band, nominal
INTENT = "CALIBRATE_AMPLI#UNSPECIFIED,CALIBRATE_FLUX#UNSPECIFIED"
SCAN_GAP_S = 30.0
CASA_DIGITAL_FACTOR = 0.932 * 1.176  # CASA EVLASwPow: correlator efficiency x fringe-rotation


@dataclass
class _Model:
    """Everything injected, per (time, antenna, spw, receptor) unless noted."""

    tcal_eng: np.ndarray  # (antenna, receptor, tcal_frequency) K
    tcal: np.ndarray  # (antenna, spw, receptor) K at the spw centre
    tsys: np.ndarray  # (time, antenna, spw, receptor) K
    gain: np.ndarray  # (time, antenna, spw, receptor) analog power gain
    phase: np.ndarray  # (time, antenna, receptor) rad
    requantizer: np.ndarray  # (antenna, spw, receptor) voltage gain
    pdiff: np.ndarray  # (time, antenna, spw, receptor) as written (with noise and glitch)
    psum: np.ndarray
    eta_aeff: np.ndarray  # (antenna,) m^2


def _vla_antennas(n: int, rng: np.random.Generator) -> lay.Antennas:
    enu = lay.random_layout(n, rng, 400.0, 40.0)
    itrf = lay.enu_to_itrf(enu, VLA_LONGITUDE_DEG, VLA_LATITUDE_DEG, VLA_HEIGHT_M)
    names = [f"ea{k + 1:02d}" for k in range(n)]
    arms = ("W", "E", "N")
    stations = [f"{arms[k % 3]}{2 + k // 3:02d}" for k in range(n)]
    return lay.Antennas(names, stations, enu, itrf, dish_diameter_m=DISH_DIAMETER_M)


def _feed_columns(n: int, t_mid: float, span: float) -> dict[str, np.ndarray]:
    cols = lay.feed_columns(n, t_mid, span)
    cols["POLARIZATION_TYPE"] = np.tile(np.array(RECEPTORS), (n, 1))
    cols["RECEPTOR_ANGLE"] = np.zeros((n, 2))
    return cols


def _polarization_columns(corrs: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {
        "NUM_CORR": np.array([len(corrs)], dtype=np.int32),
        "CORR_TYPE": np.array([[schema.STOKES_CODES[c] for c in corrs]], dtype=np.int32),
        "CORR_PRODUCT": np.array([[CORR_RECEPTORS[c] for c in corrs]], dtype=np.int32),
        "FLAG_ROW": np.zeros(1, dtype=bool),
    }


def simulate_vla_switched_power(
    path: str | os.PathLike,
    *,
    n_antennas: int = 5,
    n_spw: int = 2,
    n_chan: int = 16,
    n_pol: int = 2,
    n_scans: int = 2,
    n_integrations: int = 20,
    integration_s: float = 2.0,
    noise: bool = True,
    power_noise: float = 1e-3,
    requantizer_gain: bool = True,
    casa_digital_factor: bool = False,
    glitch: tuple[int, int, int, float] | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> lay.SimulatedEB:
    """Write a VLA-like MS with SYSPOWER/CALDEVICE whose switched-power calibration is known.

    The layout and the model are described in the module docstring; ``SimulatedEB.truth`` holds
    Tcal (engineering table and per spw), Tsys(t), the analog gains, phases, requantizer gains,
    the written Pdiff/Psum, the aperture (eta Aeff) and the sky in Jy and in K.

    Parameters
    ----------
    path
        MS directory; the truth goes to ``<path>.truth.zarr``.
    n_antennas, n_spw, n_chan, n_pol, n_scans, n_integrations, integration_s
        Array and spectral/time layout (n_spw 1-4; n_pol 2: RR LL, 4: RR RL LR LL).
    noise
        Thermal noise on the visibilities (``False``: the model exactly, to complex64).
    power_noise
        Relative Gaussian noise on Pdiff and Psum (0: exact switched powers).
    requantizer_gain
        Requantizer gains q in 0.9..1.1 (constant per antenna/spw/receptor) scale the data; else 1.
    casa_digital_factor
        Multiply the data by CASA's net digital factor 0.932 x 1.176.
    glitch
        ``(antenna index, spw, integration index in the EB, factor)``: that one Pdiff sample
        (both receptors) is multiplied by `factor`.
    seed
        Random seed: the same arguments give identical output.
    overwrite
        Replace an existing MS and truth.
    """
    if not 2 <= n_antennas <= 27:
        raise ValueError(f"n_antennas must be 2..27, not {n_antennas}")
    if not 1 <= n_spw <= len(SPW_CENTRES_HZ):
        raise ValueError(f"n_spw must be 1..{len(SPW_CENTRES_HZ)}, not {n_spw}")
    if n_pol not in (2, 4):
        raise ValueError(f"n_pol must be 2 or 4, not {n_pol}")
    if min(n_chan, n_scans, n_integrations) < 1 or integration_s <= 0:
        raise ValueError("n_chan, n_scans, n_integrations must be >= 1 and integration_s > 0")

    layout_ss, model_ss = np.random.SeedSequence(seed).spawn(2)
    layout_rng = np.random.default_rng(layout_ss)
    rng = np.random.default_rng(model_ss)
    corrs = ("RR", "LL") if n_pol == 2 else ("RR", "RL", "LR", "LL")
    rec1 = np.array([CORR_RECEPTORS[c][0] for c in corrs])
    rec2 = np.array([CORR_RECEPTORS[c][1] for c in corrs])
    parallel = rec1 == rec2

    ants = _vla_antennas(n_antennas, layout_rng)
    spws = [
        lay.SpectralWindowSpec(f"EVLA_X#A0C0#{k}", SPW_CENTRES_HZ[k], SPW_BANDWIDTH_HZ, n_chan,
                               k + 1)
        for k in range(n_spw)
    ]  # fmt: skip
    centres = np.array([s.centre_hz for s in spws])
    freq = np.array([s.chan_freq_hz for s in spws])  # (spw, chan)
    field = lay.Field(FIELD[0], *lay.hms_dms_to_rad(FIELD[1], FIELD[2]))
    states = lay.StateTable()
    state_id = states.id(lay.State(INTENT))

    t_first = lay.mjd_seconds(START)
    scan_times = [
        lay.integration_times(
            t_first + i * (n_integrations * integration_s + SCAN_GAP_S), n_integrations,
            integration_s,
        )
        for i in range(n_scans)
    ]  # fmt: skip
    times = np.concatenate(scan_times)
    nt = len(times)
    t_last = times[-1] + integration_s / 2.0
    dt = (times - t_first)[:, None, None, None]

    n_rec = len(RECEPTORS)
    # Tcal: smooth spectra at the engineering frequencies, 2-5 K.
    nf = len(TCAL_FREQUENCY_HZ)
    base = rng.uniform(2.5, 4.0, (n_antennas, n_rec, 1))
    slope = rng.uniform(-0.5, 0.5, (n_antennas, n_rec, 1))
    x = (TCAL_FREQUENCY_HZ - TCAL_FREQUENCY_HZ.mean()) / 1e9
    tcal_eng = base + slope * x + rng.uniform(-0.1, 0.1, (n_antennas, n_rec, nf))
    tcal = np.stack(
        [
            [np.interp(centres, TCAL_FREQUENCY_HZ, tcal_eng[a, r]) for r in range(n_rec)]
            for a in range(n_antennas)
        ]
    ).transpose(0, 2, 1)  # fmt: skip  (antenna, spw, receptor)
    shape = (1, n_antennas, n_spw, n_rec)
    trx = rng.uniform(18.0, 28.0, shape)
    tatm = 6.0 + 3.0 * np.sin(2 * np.pi * dt / rng.uniform(300.0, 900.0, shape)
                              + rng.uniform(0, 6, shape))  # fmt: skip
    tsys = trx + tatm + tcal[None] / 2.0
    gain = rng.uniform(0.5, 2.0, shape) * (
        1.0 + 0.05 * np.sin(2 * np.pi * dt / rng.uniform(400.0, 1200.0, shape)
                            + rng.uniform(0, 6, shape))
    )  # fmt: skip
    phase = rng.uniform(-np.pi, np.pi, (1, n_antennas, n_rec)) + 0.3 * np.sin(
        2 * np.pi * dt[..., 0] / rng.uniform(300.0, 900.0, (1, n_antennas, n_rec))
    )
    q = (
        rng.uniform(0.9, 1.1, (n_antennas, n_spw, n_rec))
        if requantizer_gain
        else np.ones((n_antennas, n_spw, n_rec))
    )
    pdiff_true = gain * tcal[None]
    psum_true = 2.0 * gain * tsys
    pdiff = pdiff_true * (1.0 + power_noise * rng.standard_normal(pdiff_true.shape))
    psum = psum_true * (1.0 + power_noise * rng.standard_normal(psum_true.shape))
    if glitch is not None:
        ga, gs, gt, factor = glitch
        pdiff[gt, ga, gs, :] *= factor
    eta_aeff = np.full(n_antennas, APERTURE_EFFICIENCY * np.pi * (DISH_DIAMETER_M / 2.0) ** 2)
    model = _Model(tcal_eng, tcal, tsys, gain, np.broadcast_to(phase, (nt, n_antennas, n_rec)),
                   q, pdiff, psum, eta_aeff)  # fmt: skip

    flux = FLUX_JY * (freq / REFERENCE_FREQUENCY_HZ) ** SPECTRAL_INDEX  # (spw, chan) Jy
    a1, a2 = np.triu_indices(n_antennas, k=1)
    n_bl = len(a1)
    tant = (
        flux[:, None, :]
        * JANSKY
        * np.sqrt(eta_aeff[a1] * eta_aeff[a2])[None, :, None]
        / (2.0 * BOLTZMANN)
    )  # fmt: skip  (spw, baseline, chan) K
    chan_width = SPW_BANDWIDTH_HZ / n_chan
    digital = CASA_DIGITAL_FACTOR if casa_digital_factor else 1.0
    weight_value = np.float32(chan_width * integration_s)

    def block(k: int) -> dict[str, np.ndarray]:
        """All rows of integration k: (spw, baseline)."""
        t = times[k]
        g = model.gain[k]  # (antenna, spw, rec)
        amp = (
            digital
            * q[a1][:, :, rec1]
            * q[a2][:, :, rec2]
            * np.sqrt(g[a1][:, :, rec1] * g[a2][:, :, rec2])
        )  # fmt: skip  (baseline, spw, corr)
        ph = np.exp(1j * (model.phase[k][a1][:, rec1] - model.phase[k][a2][:, rec2]))
        corr_gain = amp * ph[:, None, :]
        sky = tant.transpose(1, 0, 2)[..., None] * parallel  # (baseline, spw, chan, corr)
        vis = corr_gain[:, :, None, :] * sky
        ts = model.tsys[k]
        sigma = amp * np.sqrt(ts[a1][:, :, rec1] * ts[a2][:, :, rec2]) / np.sqrt(
            2.0 * chan_width * integration_s
        )  # fmt: skip
        if noise:
            draws = lay.keyed_normal(seed, [(k,)], (2, n_bl, n_spw, n_chan, n_pol))[0]
            vis = vis + sigma[:, :, None, :] * (draws[0] + 1j * draws[1])
        vis = vis.transpose(1, 0, 2, 3).reshape(n_spw * n_bl, n_chan, n_pol)
        nrow = n_spw * n_bl
        scan = int(np.searchsorted(np.cumsum([len(s) for s in scan_times]), k, side="right")) + 1
        w = np.full((nrow, n_pol), weight_value, dtype=np.float32)
        return {
            "TIME": np.full(nrow, t),
            "INTERVAL": np.full(nrow, integration_s),
            "ANTENNA1": np.tile(a1.astype(np.int32), n_spw),
            "ANTENNA2": np.tile(a2.astype(np.int32), n_spw),
            "DATA_DESC_ID": np.repeat(np.arange(n_spw, dtype=np.int32), n_bl),
            "SCAN_NUMBER": np.full(nrow, scan, dtype=np.int32),
            "STATE_ID": np.full(nrow, state_id, dtype=np.int32),
            "FIELD_ID": np.zeros(nrow, dtype=np.int32),
            "UVW": np.tile(uvw[k][a2] - uvw[k][a1], (n_spw, 1)),
            "DATA": vis.astype(np.complex64),
            "FLAG": np.zeros((nrow, n_chan, n_pol), dtype=bool),
            "SIGMA": (1.0 / np.sqrt(w)).astype(np.float32),
            "WEIGHT": w,
            "WEIGHT_SPECTRUM": np.broadcast_to(w[:, None, :], (nrow, n_chan, n_pol)),
        }

    uvw = lay.uvw_per_antenna(ants.itrf_m, field.ra_rad, field.dec_rad, times)

    def syspower_columns() -> dict[str, np.ndarray]:
        ant, spw, tk = np.meshgrid(np.arange(n_antennas), np.arange(n_spw), np.arange(nt),
                                   indexing="ij")  # fmt: skip
        ant, spw, tk = ant.ravel(), spw.ravel(), tk.ravel()
        n = ant.size
        return {
            "ANTENNA_ID": ant.astype(np.int32),
            "FEED_ID": np.zeros(n, dtype=np.int32),
            "SPECTRAL_WINDOW_ID": spw.astype(np.int32),
            "TIME": times[tk],
            "INTERVAL": np.full(n, integration_s),
            "SWITCHED_DIFF": model.pdiff[tk, ant, spw].astype(np.float32),
            "SWITCHED_SUM": model.psum[tk, ant, spw].astype(np.float32),
            "REQUANTIZER_GAIN": q[ant, spw].astype(np.float32),
        }

    def caldevice_columns() -> dict[str, np.ndarray]:
        ant, spw = np.meshgrid(np.arange(n_antennas), np.arange(n_spw), indexing="ij")
        ant, spw = ant.ravel(), spw.ravel()
        n = ant.size
        return {
            "ANTENNA_ID": ant.astype(np.int32),
            "FEED_ID": np.zeros(n, dtype=np.int32),
            "SPECTRAL_WINDOW_ID": spw.astype(np.int32),
            "TIME": np.full(n, (t_first + t_last) / 2.0),
            "INTERVAL": np.full(n, t_last - t_first),
            "NUM_CAL_LOAD": np.ones(n, dtype=np.int32),
            "CAL_LOAD_NAMES": np.full((n, 1), "NOISE_TUBE_LOAD"),
            "NUM_RECEPTOR": np.full(n, n_rec, dtype=np.int32),
            "NOISE_CAL": tcal[ant, spw][:, None, :].astype(np.float32),
        }

    def write(ms_path: Path) -> xr.Dataset:
        t_mid, t_span = (t_first + t_last) / 2.0, t_last - t_first
        with MSWriter(ms_path, data_columns=("DATA",), weight_spectrum=True,
                      overwrite=overwrite) as ms:  # fmt: skip
            ms.write_subtable("ANTENNA", lay.antenna_columns(ants))
            ms.write_subtable("FEED", _feed_columns(n_antennas, t_mid, t_span))
            ms.write_subtable("SPECTRAL_WINDOW", lay.spectral_window_columns(spws))
            ms.write_subtable("POLARIZATION", _polarization_columns(corrs))
            ms.write_subtable("DATA_DESCRIPTION", lay.data_description_columns(n_spw))
            ms.write_subtable("FIELD", lay.field_columns([field], t_first))
            ms.write_subtable("SOURCE", lay.source_columns([field], t_mid, t_span))
            ms.write_subtable("STATE", states.columns())
            obs = lay.observation_columns(t_first, t_last, "TSWPOW", "radflow")
            obs["TELESCOPE_NAME"] = np.array(["EVLA"])
            obs["SCHEDULE_TYPE"] = np.array(["EVLA"])
            ms.write_subtable("OBSERVATION", obs)
            ms.write_subtable("SYSPOWER", syspower_columns())
            ms.write_subtable("CALDEVICE", caldevice_columns())
            for k in range(nt):
                ms.append_rows(block(k))
        run = {"seed": seed, "noise": int(noise), "power_noise": power_noise}
        return _truth(model, ants, spws, times, corrs, flux, tant, digital, integration_s,
                      glitch, run)  # fmt: skip

    return lay.write_eb(path, overwrite, write)


def _truth(
    model: _Model,
    ants: lay.Antennas,
    spws: list[lay.SpectralWindowSpec],
    times: np.ndarray,
    corrs: tuple[str, ...],
    flux: np.ndarray,
    tant: np.ndarray,
    digital: float,
    integration_s: float,
    glitch: tuple[int, int, int, float] | None,
    run_attrs: dict,
) -> xr.Dataset:
    def var(dims, values, units, description=""):
        return xr.Variable(dims, np.asarray(values), {"units": units, "description": description})

    tard = (schema.TIME, schema.ANTENNA_NAME, "spw", schema.RECEPTOR)
    a1, a2 = np.triu_indices(len(ants), k=1)
    data_vars = {
        "TCAL_ENGINEERING": var(
            (schema.ANTENNA_NAME, schema.RECEPTOR, "tcal_frequency"),
            model.tcal_eng,
            "K",
            "noise-diode temperature at the engineering frequencies (linear between them)",
        ),
        "TCAL": var(
            (schema.ANTENNA_NAME, "spw", schema.RECEPTOR),
            model.tcal,
            "K",
            "Tcal at each spw centre (CALDEVICE NOISE_CAL)",
        ),
        "TSYS": var(tard, model.tsys, "K", "Trx + Tatm(t) + Tcal/2"),
        "ANALOG_GAIN": var(tard, model.gain, "1/K", "a: power units per K"),
        "PHASE": var(
            (schema.TIME, schema.ANTENNA_NAME, schema.RECEPTOR),
            model.phase,
            "rad",
            "correlator (instrumental) phase phi",
        ),
        "REQUANTIZER_GAIN": var(
            (schema.ANTENNA_NAME, "spw", schema.RECEPTOR),
            model.requantizer,
            "",
            "q: voltage gain applied to the data, not to Pdiff/Psum",
        ),
        "SWITCHED_DIFF": var(tard, model.pdiff, "", "Pdiff as written (noise, glitch)"),
        "SWITCHED_SUM": var(tard, model.psum, "", "Psum as written (noise)"),
        "SWITCHED_DIFF_TRUE": var(tard, model.gain * model.tcal[None], "", "a Tcal"),
        "SWITCHED_SUM_TRUE": var(tard, 2.0 * model.gain * model.tsys, "", "2 a Tsys"),
        "ETA_AEFF": var(
            (schema.ANTENNA_NAME,), model.eta_aeff, "m2", "aperture efficiency times geometric area"
        ),
        "FLUX_DENSITY": var(("spw", "chan"), flux, "Jy", "Stokes I of the point source"),
        "SKY_KELVIN": var(
            ("spw", schema.BASELINE_ID, "chan"),
            tant,
            "K",
            "Tant_ij = S sqrt(etaA_i etaA_j)/(2k), parallel hands",
        ),
        "BASELINE_ANTENNA1": var((schema.BASELINE_ID,), a1, ""),
        "BASELINE_ANTENNA2": var((schema.BASELINE_ID,), a2, ""),
    }
    coords = {
        **lay.time_coords(times),
        schema.ANTENNA_NAME: lay.strings(ants.names),
        schema.RECEPTOR: lay.strings(RECEPTORS),
        "spw": np.arange(len(spws)),
        "spw_centre_frequency": ("spw", [s.centre_hz for s in spws], {"units": "Hz"}),
        "tcal_frequency": ("tcal_frequency", TCAL_FREQUENCY_HZ, {"units": "Hz"}),
        "frequency": (("spw", "chan"), np.array([s.chan_freq_hz for s in spws]),
                      {"units": "Hz"}),
    }  # fmt: skip
    attrs = {
        "simulator": "radflow.testing.simulate_vla_switched_power",
        "telescope_name": "EVLA",
        "correlations": list(corrs),
        "field": FIELD[0],
        "digital_factor": digital,
        "integration_s": integration_s,
        "glitch": []
        if glitch is None
        else [int(glitch[0]), int(glitch[1]), int(glitch[2]), float(glitch[3])],  # fmt: skip
        "visibility_model": (
            "r_ij = d q_i q_j sqrt(a_i a_j) exp(i(phi_i - phi_j)) Tant_ij + noise; "
            "Pdiff = a Tcal, Psum = 2 a Tsys"
        ),
        **run_attrs,
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
