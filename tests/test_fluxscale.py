"""radflow.cal.fluxscale against gain tables built from known flux densities (and CASA).

The tables follow radflow.schema's solution layout. A reference calibrator solved with its true
model gives |g| = |g_true|; a transfer calibrator solved with a 1 Jy model gives
|g| = |g_true| sqrt(S_true); |g_true| is per antenna and receptor (0.7-1.3, the same in every
spw and time), gain noise is multiplicative, 1 + sigma n. The flux densities are the
interferometer simulator's truth (radflow.testing.interferometer.FIELDS).
"""

from __future__ import annotations

import importlib.util
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from radflow import schema, step
from radflow.cal.fluxscale import FluxscaleError, fluxscale, result_dict
from radflow.testing import interferometer as sim
from radflow.testing.lazy import ComputeForbidden, assert_lazy, forbid_compute

FREQS = np.array(sim.SPW_CENTRES_HZ)
BANDPASS, FLUX, PHASE, TARGET = (f[0] for f in sim.FIELDS)
TRUTH = {f[0]: (f[4], f[5]) for f in sim.FIELDS}  # name -> (S0 at 100 GHz, alpha)
DIMS = (schema.TIME, schema.ANTENNA_NAME, schema.FREQUENCY, schema.RECEPTOR)


def true_flux(name: str, freqs: np.ndarray = FREQS) -> np.ndarray:
    s0, alpha = TRUTH[name]
    return s0 * (freqs / sim.REFERENCE_FREQUENCY_HZ) ** alpha


def gain_table(
    scale: dict[str, np.ndarray | float],
    *,
    freqs: np.ndarray = FREQS,
    n_ant: int = 12,
    n_t: int = 8,
    sigma: float = 0.0,
    seed: int = 0,
    cal_type: str = schema.CAL_TYPE_G,
    chunks: int | None = None,
    g_true: np.ndarray | None = None,
) -> dict[int, xr.Dataset]:
    """{spw: Dataset}; `scale` is field -> |g|^2 / |g_true|^2 per spw (1 for a reference)."""
    rng = np.random.default_rng(seed)
    recs = ["X", "Y"] if cal_type == schema.CAL_TYPE_G else ["XY"]
    ants = [f"DA{41 + i}" for i in range(n_ant)]
    if g_true is None:
        g_true = rng.uniform(0.7, 1.3, (n_ant, len(recs)))
    table = {}
    for s, nu in enumerate(freqs):
        times, names, scans, gains = [], [], [], []
        t = 1.7e9
        for scan, (name, factor) in enumerate(scale.items(), start=1):
            amp = g_true * math.sqrt(np.broadcast_to(factor, freqs.shape)[s])
            for _ in range(n_t):
                noise = 1.0 + sigma * rng.standard_normal(amp.shape)
                phase = np.exp(1j * rng.uniform(-np.pi, np.pi, amp.shape))
                gains.append(amp * noise * phase)
                times.append(t)
                names.append(name)
                scans.append(scan)
                t += 6.048
            t += 60.0
        g = np.array(gains)[:, :, None, :].astype(np.complex64)
        err = np.full(g.shape, 0.01, np.float32)
        data = {
            schema.CALIBRATION_PARAMETER: g,
            schema.PARAMETER_ERROR: err,
            schema.SNR: (np.abs(g) / err).astype(np.float32),
            schema.FLAG: np.zeros(g.shape, bool),
        }
        if chunks:
            data = {k: da.from_array(v, chunks=(chunks, -1, -1, -1)) for k, v in data.items()}
        table[s] = xr.Dataset(
            {
                **{k: (DIMS, v) for k, v in data.items()},
                schema.REFERENCE_ANTENNA: ((schema.TIME,), np.array([ants[0]] * len(times))),
            },
            coords={
                schema.TIME: np.array(times),
                schema.ANTENNA_NAME: ants,
                schema.FREQUENCY: ("frequency", [nu], {schema.ATTR_UNITS: "Hz"}),
                schema.RECEPTOR: recs,
                schema.FIELD_NAME: ((schema.TIME,), np.array(names)),
                schema.SCAN_NUMBER: ((schema.TIME,), np.array(scans)),
            },
            attrs={
                schema.ATTR_TYPE: schema.TYPE_CALIBRATION_SOLUTION,
                schema.ATTR_CAL_TYPE: cal_type,
                schema.ATTR_SPW_ID: s,
                schema.ATTR_SPECTRAL_WINDOW_NAME: f"X1234#ALMA_RB_03#BB_{s + 1}#SW-01#FULL_RES",
                schema.ATTR_FIELDS: list(scale),
            },
        )
    return table


def standard_table(**kw) -> dict[int, xr.Dataset]:
    """Flux calibrator with its true model, phase and bandpass calibrators with 1 Jy."""
    return gain_table({FLUX: 1.0, PHASE: true_flux(PHASE), BANDPASS: true_flux(BANDPASS)}, **kw)


def fd_of(view: xr.Dataset, field: str) -> np.ndarray:
    return view[schema.FS_FLUX_DENSITY].sel({schema.FIELD_NAME: field}).values


def expected_fd_sigma(sigma: float, n_t: int, n: int) -> float:
    """Relative std of fd: r has relative std sigma sqrt(2/n_t); median of n; fd = ratio^2."""
    return 2.0 * math.sqrt(math.pi / 2.0) * sigma * math.sqrt(2.0 / n_t) / math.sqrt(n)


# ---- flux densities, fit, errors ----


def test_noiseless_table_recovers_the_true_flux_densities_and_spectrum():
    res = fluxscale(standard_table(), reference=FLUX)
    view = res.view.compute()
    for name in (PHASE, BANDPASS):
        np.testing.assert_allclose(fd_of(view, name), true_flux(name), rtol=1e-6)
        one = view.sel({schema.FIELD_NAME: name})
        s0, alpha = TRUTH[name]
        ref_freq = 10 ** np.mean(np.log10(FREQS))
        np.testing.assert_allclose(float(one[schema.FS_FIT_REFERENCE_FREQUENCY]), ref_freq)
        np.testing.assert_allclose(
            float(one[schema.FS_FIT_FLUX_DENSITY]), s0 * (ref_freq / 1e11) ** alpha, rtol=1e-6
        )
        coef = one[schema.FS_FIT_COEFFICIENTS].values
        np.testing.assert_allclose(coef[1], alpha, atol=1e-5)
        assert int(one[schema.FS_FIT_ORDER]) == 1
    # the reference field gets no flux density, its gains are untouched
    assert np.isnan(fd_of(view, FLUX)).all()
    assert view[schema.FS_ROLE].sel({schema.FIELD_NAME: FLUX}) == schema.FS_ROLE_REFERENCE
    assert view[schema.FS_FLUX_DENSITY].attrs["units"] == "Jy"
    assert view[schema.FREQUENCY].attrs["units"] == "Hz"


def test_noisy_gains_recover_flux_density_and_spectral_index_within_the_errors():
    sigma, n_t, n_ant = 0.03, 8, 12
    res = fluxscale(standard_table(sigma=sigma, n_t=n_t, n_ant=n_ant, seed=4), reference=FLUX)
    view = res.view.compute()
    rel = expected_fd_sigma(sigma, n_t, 2 * n_ant)  # ~0.8% on fd
    for name in (PHASE, BANDPASS):
        fd = fd_of(view, name)
        np.testing.assert_array_less(np.abs(fd / true_flux(name) - 1.0), 5 * rel)
        err = view[schema.FS_FLUX_DENSITY_ERROR].sel({schema.FIELD_NAME: name}).values
        # the reported error is the expected scatter, to the accuracy of a 24-sample std
        np.testing.assert_array_less(np.abs(err / (fd * rel) - 1.0), 0.5)
        one = view.sel({schema.FIELD_NAME: name})
        alpha, alpha_err = (
            one[schema.FS_FIT_COEFFICIENTS].values[1],
            one[schema.FS_FIT_COEFFICIENT_ERRORS].values[1],
        )
        assert abs(alpha - TRUTH[name][1]) < 5 * alpha_err
        s0, a = TRUTH[name]
        ref_freq = float(one[schema.FS_FIT_REFERENCE_FREQUENCY])
        fit, fit_err = (
            float(one[schema.FS_FIT_FLUX_DENSITY]),
            float(one[schema.FS_FIT_FLUX_DENSITY_ERROR]),
        )
        assert abs(fit - s0 * (ref_freq / 1e11) ** a) < 5 * fit_err
        # fitFluxdErr = ln(10) fitFluxd spidxerr[0]
        np.testing.assert_allclose(
            fit_err, math.log(10) * fit * one[schema.FS_FIT_COEFFICIENT_ERRORS].values[0]
        )


def test_flux_density_error_matches_the_monte_carlo_scatter():
    """radflow's fluxdErr is the scatter of fd; CASA's (no factor ratio) is far too small.

    Each of `trials` transfer fields (8 Jy, noisy gains) is one independent trial; the
    reference's gains are noiseless so that the trials share no noise.
    """
    sigma, n_t, n_ant, trials = 0.05, 4, 10, 300
    s_true = true_flux(BANDPASS)[:1]
    fields = [f"T{i:03d}" for i in range(trials)]
    table = gain_table(
        {FLUX: 1.0, **dict.fromkeys(fields, s_true)}, freqs=FREQS[:1], n_ant=n_ant, n_t=n_t
    )
    rng = np.random.default_rng(1)
    rows = table[0][schema.FIELD_NAME].values != FLUX
    noise = 1 + sigma * rng.standard_normal(table[0][schema.CALIBRATION_PARAMETER][rows].shape)
    table[0][schema.CALIBRATION_PARAMETER].values[rows] *= noise.astype(np.float32)
    ours = fluxscale(table, reference=FLUX).view.compute().sel({schema.FIELD_NAME: fields})
    casa = fluxscale(table, reference=FLUX, casa_errors=True).view.compute()
    fds = ours[schema.FS_FLUX_DENSITY].values[:, 0]
    errs = ours[schema.FS_FLUX_DENSITY_ERROR].values[:, 0]
    casa_errs = casa[schema.FS_FLUX_DENSITY_ERROR].sel({schema.FIELD_NAME: fields}).values
    spread = np.std(fds, ddof=1)
    # 300 trials: the spread is known to ~4%; the median's small-sample efficiency differs
    # from the asymptotic sqrt(pi/2) by a few per cent
    assert 0.85 < np.mean(errs) / spread < 1.15
    assert np.mean(casa_errs) / spread < 0.4  # CASA: ~1/(ratio sqrt(pi/2)) of it at 8 Jy
    assert abs(np.mean(fds) - s_true[0]) < 4 * spread / np.sqrt(trials)


def test_error_formulas_and_casa_errors_flag():
    table = standard_table(sigma=0.02, seed=2)
    ours = fluxscale(table, reference=FLUX).view.compute()
    casa = fluxscale(table, reference=FLUX, casa_errors=True).view.compute()
    for s in range(len(FREQS)):
        r = ours[schema.FS_ANTENNA_GAIN_RATIO].sel({schema.FIELD_NAME: PHASE}).values[s].ravel()
        r = r[np.isfinite(r)]
        n, med, std = r.size, np.median(r), np.std(r, ddof=1)
        sel = {schema.FIELD_NAME: PHASE, schema.SPECTRAL_WINDOW_ID: s}
        assert int(ours[schema.FS_N_SOLUTIONS].sel(sel)) == n == 24
        np.testing.assert_allclose(float(ours[schema.FS_GAIN_RATIO].sel(sel)), med)
        np.testing.assert_allclose(
            float(ours[schema.FS_FLUX_DENSITY_ERROR].sel(sel)),
            2 * med * math.sqrt(math.pi / 2) * std / math.sqrt(n),
        )
        np.testing.assert_allclose(
            float(casa[schema.FS_FLUX_DENSITY_ERROR].sel(sel)), 2 * std / math.sqrt(n - 1)
        )
    assert "median" in ours.attrs[schema.FS_ATTR_ERROR_MODEL]
    assert ours.attrs[schema.FS_ATTR_CASA_ERRORS] is False


def test_several_reference_fields_are_averaged_where_they_have_solutions():
    table = gain_table(
        {FLUX: 1.0, "J0000+0000": 1.0, PHASE: true_flux(PHASE)}, sigma=0.02, seed=5, n_t=4
    )
    # one reference field loses antenna 3 entirely: there the other one alone is the reference
    for ds in table.values():
        rows = ds[schema.FIELD_NAME].values == FLUX
        ds[schema.FLAG].values[rows, 3] = True
    view = fluxscale(table, reference=[FLUX, "J0000+0000"]).view.compute()
    mg = view[schema.FS_MEAN_GAIN_AMPLITUDE]
    ratio = view[schema.FS_ANTENNA_GAIN_RATIO].sel({schema.FIELD_NAME: PHASE})
    ref = (mg.sel({schema.FIELD_NAME: FLUX}) + mg.sel({schema.FIELD_NAME: "J0000+0000"})) / 2
    ref[:, 3] = mg.sel({schema.FIELD_NAME: "J0000+0000"})[:, 3]
    np.testing.assert_allclose(ratio, mg.sel({schema.FIELD_NAME: PHASE}) / ref, rtol=1e-12)
    rel = expected_fd_sigma(0.02, 4, 24)
    np.testing.assert_array_less(np.abs(fd_of(view, PHASE) / true_flux(PHASE) - 1), 5 * rel)
    assert set(view.attrs[schema.FS_ATTR_REFERENCE_FIELDS]) == {FLUX, "J0000+0000"}


def test_refspwmap_scales_across_spectral_windows():
    table = standard_table()
    # the flux calibrator has no usable solution in spws 1 and 3
    for s in (1, 3):
        rows = table[s][schema.FIELD_NAME].values == FLUX
        table[s][schema.FLAG].values[rows] = True
    plain = fluxscale(table, reference=FLUX).view.compute()
    assert np.isnan(fd_of(plain, PHASE)[[1, 3]]).all()
    assert plain[schema.FS_N_SOLUTIONS].sel({schema.FIELD_NAME: PHASE}).values[1] == 0
    mapped = fluxscale(table, reference=FLUX, refspwmap=[0, 0, 2, 2]).view.compute()
    # the gains are the same in every spw, so the mapped ratio is still exact
    np.testing.assert_allclose(fd_of(mapped, PHASE), true_flux(PHASE), rtol=1e-6)
    assert mapped.attrs[schema.FS_ATTR_REFSPWMAP] == {"0": 0, "1": 0, "2": 2, "3": 2}
    single = fluxscale(table, reference=FLUX, refspwmap=[2]).view.compute()
    np.testing.assert_allclose(fd_of(single, PHASE), true_flux(PHASE), rtol=1e-6)
    with pytest.raises(FluxscaleError, match="refspwmap maps spw 1 to spw 7"):
        fluxscale(table, reference=FLUX, refspwmap=[0, 7])


def test_gainthreshold_removes_injected_outlier_gains():
    table = standard_table(sigma=0.01, seed=7)
    # one bad integration of the phase calibrator (every antenna 3x) and two single bad gains
    singles = [(3, 5, 1), (6, 8, 0)]  # (time within the field, antenna, receptor)
    for ds in table.values():
        rows = np.flatnonzero(ds[schema.FIELD_NAME].values == PHASE)
        ds[schema.CALIBRATION_PARAMETER].values[rows[2]] *= 3.0
        for t, a, r in singles:
            ds[schema.CALIBRATION_PARAMETER].values[rows[t], a, 0, r] *= 0.2
    biased = fluxscale(table, reference=FLUX).view.compute()
    clean = fluxscale(table, reference=FLUX, gainthreshold=0.5).view.compute()
    rel = expected_fd_sigma(0.01, 8, 24)
    assert np.all(np.abs(fd_of(biased, PHASE) / true_flux(PHASE) - 1) > 0.2)
    np.testing.assert_array_less(np.abs(fd_of(clean, PHASE) / true_flux(PHASE) - 1), 5 * rel)
    n_gain = clean[schema.FS_N_GAINS].sel({schema.FIELD_NAME: PHASE}).values
    assert n_gain.sum() == len(FREQS) * (7 * 24 - len(singles))
    for _, a, r in singles:
        assert (n_gain[:, a, r] == 6).all()
    assert (clean[schema.FS_N_GAINS].sel({schema.FIELD_NAME: FLUX}) == 8).all()
    # only the median survives gainthreshold=0 (odd count: one gain per field and spw)
    table = standard_table(n_t=1, n_ant=3, cal_type=schema.CAL_TYPE_T)
    zero = fluxscale(table, reference=FLUX, gainthreshold=0)
    n0 = zero.view[schema.FS_N_GAINS].sel({schema.FIELD_NAME: PHASE}).values
    assert (n0.sum(axis=(1, 2)) == 1).all()


def test_antenna_selection_excludes_biased_antennas_and_still_scales_them():
    table = standard_table()
    # a resolved flux calibrator: its gains come out 20% high beyond the 4 central antennas
    for ds in table.values():
        rows = ds[schema.FIELD_NAME].values == FLUX
        ds[schema.CALIBRATION_PARAMETER].values[rows, 4:] *= 1.2
    ants = [f"DA{41 + i}" for i in range(4)]
    biased = fluxscale(table, reference=FLUX).view.compute()
    assert not np.allclose(fd_of(biased, PHASE), true_flux(PHASE), rtol=1e-3)
    res = fluxscale(table, reference=FLUX, antenna=",".join(ants))
    view = res.view.compute()
    np.testing.assert_allclose(fd_of(view, PHASE), true_flux(PHASE), rtol=1e-6)
    assert (view[schema.FS_N_SOLUTIONS].sel({schema.FIELD_NAME: PHASE}) == 8).all()
    assert view.attrs[schema.FS_ATTR_ANTENNA] == ants
    # the pipeline's "A,B,C&" form selects the same
    again = fluxscale(table, reference=FLUX, antenna=",".join(ants) + "&").view.compute()
    np.testing.assert_allclose(fd_of(again, PHASE), fd_of(view, PHASE))
    # every antenna of the transfer field is scaled, selected or not
    scaled = res.table[0]
    rows = scaled[schema.FIELD_NAME].values == PHASE
    ratio = np.abs(table[0][schema.CALIBRATION_PARAMETER].values[rows]) / np.abs(
        scaled[schema.CALIBRATION_PARAMETER].values[rows]
    )
    np.testing.assert_allclose(ratio, math.sqrt(true_flux(PHASE)[0]), rtol=1e-6)
    with pytest.raises(FluxscaleError, match=r"antenna selection names \['PM99'\]"):
        fluxscale(table, reference=FLUX, antenna="DA41,PM99")


def test_scaled_table_divides_transfer_gains_by_sqrt_fd_only():
    table = standard_table(sigma=0.01, seed=3)
    res = fluxscale(table, reference=FLUX)
    view = res.view.compute()
    for s, ds in res.table.items():
        names = ds[schema.FIELD_NAME].values
        before = table[s][schema.CALIBRATION_PARAMETER].values
        after = ds[schema.CALIBRATION_PARAMETER].values
        assert after.dtype == before.dtype
        for name in (FLUX, PHASE, BANDPASS):
            rows = names == name
            fd = fd_of(view, name)[s]
            factor = 1.0 if name == FLUX else math.sqrt(fd)
            np.testing.assert_allclose(after[rows], before[rows] / factor, rtol=1e-6)
        # errors scale with the gains, SNR is unchanged
        np.testing.assert_allclose(
            np.abs(after) / ds[schema.PARAMETER_ERROR].values,
            table[s][schema.SNR].values,
            rtol=1e-5,
        )
        assert ds.attrs[schema.ATTR_CAL_TYPE] == schema.CAL_TYPE_G
        xr.testing.assert_identical(ds[schema.FLAG], table[s][schema.FLAG])


def test_incremental_table_holds_one_gain_per_field_antenna_and_spw():
    table = standard_table(cal_type=schema.CAL_TYPE_T)
    res = fluxscale(table, reference=FLUX, incremental=True)
    view = res.view.compute()
    scaled = fluxscale(table, reference=FLUX).table
    for s, ds in res.table.items():
        assert ds.attrs[schema.ATTR_CAL_TYPE] == schema.CAL_TYPE_G  # CASA: 'G Jones'
        assert list(ds[schema.RECEPTOR].values) == ["X", "Y"]
        assert list(ds[schema.FIELD_NAME].values) == [FLUX, PHASE, BANDPASS]
        assert ds.sizes == {
            schema.TIME: 3,
            schema.ANTENNA_NAME: 12,
            schema.FREQUENCY: 1,
            schema.RECEPTOR: 2,
        }
        gains = ds[schema.CALIBRATION_PARAMETER].values
        np.testing.assert_allclose(gains[0], 1.0)
        for t, name in ((1, PHASE), (2, BANDPASS)):
            np.testing.assert_allclose(gains[t], 1 / math.sqrt(fd_of(view, name)[s]), rtol=1e-6)
        assert not ds[schema.FLAG].values.any()
        # applying the incremental gain equals the scaled table
        names = table[s][schema.FIELD_NAME].values
        for t, name in enumerate(ds[schema.FIELD_NAME].values):
            rows = names == name
            np.testing.assert_allclose(
                table[s][schema.CALIBRATION_PARAMETER].values[rows] * gains[t, 0, 0, 0].real,
                scaled[s][schema.CALIBRATION_PARAMETER].values[rows],
                rtol=1e-6,
            )


def test_one_spw_reports_no_fit_as_casa_does():
    table = gain_table({FLUX: 1.0, PHASE: true_flux(PHASE)[:1]}, freqs=FREQS[:1], sigma=0.01)
    d = result_dict(fluxscale(table, reference=FLUX).view)
    field = d["1"]
    fd, err = field["0"]["fluxd"][0], field["0"]["fluxdErr"][0]
    assert field["fitFluxd"] == fd and field["fitRefFreq"] == FREQS[0]
    assert field["fitFluxdErr"] == err  # radflow: the spw's error (CASA: 0)
    np.testing.assert_array_equal(field["spidx"], [0.0, 0.0])
    np.testing.assert_array_equal(field["spidxerr"], [0.0, 0.0])
    assert field["covarMat"].shape == (0, 0)
    casa = result_dict(fluxscale(table, reference=FLUX, casa_errors=True).view)
    assert casa["1"]["fitFluxdErr"] == 0.0


def test_fit_order_is_capped_by_the_number_of_spws():
    table = gain_table({FLUX: 1.0, PHASE: true_flux(PHASE)[[0, 2]]}, freqs=FREQS[[0, 2]])
    ours = result_dict(fluxscale(table, reference=FLUX, fitorder=2).view)["1"]
    assert ours["spidx"].shape == (3,) and ours["covarMat"].shape == (2, 2)
    assert ours["spidx"][2] == 0.0
    np.testing.assert_allclose(ours["spidx"][1], TRUTH[PHASE][1], atol=1e-5)
    casa = result_dict(fluxscale(table, reference=FLUX, fitorder=2, casa_errors=True).view)["1"]
    assert casa["covarMat"].shape == (1, 1)  # CASA fits a constant here
    assert casa["spidx"][1] == 0.0
    with pytest.raises(FluxscaleError, match="fitorder"):
        fluxscale(table, reference=FLUX, fitorder=-1)


@pytest.mark.parametrize("n_ant, quirk", [(51, True), (50, False)])
def test_even_count_median_follows_casacore_when_asked(n_ant, quirk):
    """casacore averages the two middle ratios only for <= 100 elements (masked included)."""
    rng = np.random.default_rng(11)
    g_true = rng.uniform(0.7, 1.3, (n_ant, 2))
    table = gain_table({FLUX: 1.0, PHASE: true_flux(PHASE)}, n_ant=n_ant, n_t=1, g_true=g_true)
    rows = table[0][schema.FIELD_NAME].values == PHASE
    table[0][schema.CALIBRATION_PARAMETER].values[rows] *= rng.uniform(0.9, 1.1, (n_ant, 1, 2))
    sel = {schema.FIELD_NAME: PHASE, schema.SPECTRAL_WINDOW_ID: 0}
    right = fluxscale(table, reference=FLUX).view.compute()
    casa = fluxscale(table, reference=FLUX, casa_median=True).view.compute()
    r = np.sort(right[schema.FS_ANTENNA_GAIN_RATIO].sel(sel).values.ravel())
    assert r.size == 2 * n_ant  # even
    middle = (r[n_ant - 1] + r[n_ant]) / 2
    np.testing.assert_allclose(float(right[schema.FS_GAIN_RATIO].sel(sel)), middle)
    expected = r[n_ant - 1] if quirk else middle
    np.testing.assert_allclose(float(casa[schema.FS_GAIN_RATIO].sel(sel)), expected)
    assert casa.attrs[schema.FS_ATTR_CASA_MEDIAN] is True


# ---- CASA's dict ----


def test_result_dict_has_casa_keys_and_shapes():
    table = standard_table(sigma=0.01)
    del table[3]  # an MS spw without solutions, reported by name
    names = {s: f"spw{s}" for s in range(4)}
    ids = {BANDPASS: 0, FLUX: 1, PHASE: 2, TARGET: 3}
    res = fluxscale(table, reference=FLUX, field_ids=ids, spectral_windows=names)
    d = res.to_dict()
    assert set(d) == {"0", "2", "freq", "spwID", "spwName"}
    np.testing.assert_array_equal(d["spwID"], [0, 1, 2, 3])
    assert d["spwID"].dtype == np.int32
    assert list(d["spwName"]) == [
        table[0].attrs["spectral_window_name"],
        table[1].attrs["spectral_window_name"],
        table[2].attrs["spectral_window_name"],
        "spw3",
    ]
    np.testing.assert_array_equal(d["freq"], [*FREQS[:3], -1.0])
    for key, name in (("0", BANDPASS), ("2", PHASE)):
        field = d[key]
        assert set(field) == {"0", "1", "2", "3", "fieldName", "fitFluxd", "fitFluxdErr",
                              "fitRefFreq", "spidx", "spidxerr", "covarMat"}  # fmt: skip
        assert field["fieldName"] == name
        for spw in ("0", "1", "2"):
            assert set(field[spw]) == {"fluxd", "fluxdErr", "numSol"}
            for v in field[spw].values():
                assert v.shape == (4,) and v.dtype == np.float64
                np.testing.assert_array_equal(v[1:], 0.0)
            assert field[spw]["numSol"][0] == 24
        for v in field["3"].values():
            np.testing.assert_array_equal(v, [-1.0] * 4)
        assert isinstance(field["fitFluxd"], float) and isinstance(field["fitRefFreq"], float)
        assert field["spidx"].shape == field["spidxerr"].shape == (2,)
        assert field["covarMat"].shape == (2, 2)
        np.testing.assert_allclose(field["fitRefFreq"], 10 ** np.mean(np.log10(FREQS[:3])))


# ---- selection, errors, laziness ----


def test_fields_picked_by_pipeline_intents():
    scale = {FLUX: 1.0, PHASE: true_flux(PHASE), BANDPASS: true_flux(BANDPASS), TARGET: 1.0}
    table = gain_table(scale)
    intents = {f[0]: f[3] for f in sim.FIELDS}  # MS OBS_MODE strings
    view = fluxscale(table, field_intents=intents).view
    assert view.attrs[schema.FS_ATTR_REFERENCE_FIELDS] == [FLUX]
    assert view.attrs[schema.FS_ATTR_TRANSFER_FIELDS] == [PHASE, BANDPASS]
    roles = dict(zip(view[schema.FIELD_NAME].values, view[schema.FS_ROLE].values, strict=True))
    assert roles[TARGET] == schema.FS_ROLE_OTHER
    only_phase = fluxscale(table, field_intents=intents, transintent="PHASE").view
    assert only_phase.attrs[schema.FS_ATTR_TRANSFER_FIELDS] == [PHASE]
    # CASA without intents: every non-reference field is a transfer field
    plain = fluxscale(table, reference=FLUX).view
    assert plain.attrs[schema.FS_ATTR_TRANSFER_FIELDS] == [PHASE, BANDPASS, TARGET]
    # a reference listed as transfer is dropped, as in CASA
    both = fluxscale(table, reference=FLUX, transfer=f"{FLUX},{PHASE}").view
    assert both.attrs[schema.FS_ATTR_TRANSFER_FIELDS] == [PHASE]
    with pytest.raises(FluxscaleError, match="field_intents"):
        fluxscale(table)


def test_errors_name_what_is_wrong():
    table = standard_table()
    ids = {BANDPASS: 0, FLUX: 1, PHASE: 2, TARGET: 3}
    with pytest.raises(FluxscaleError, match=f"transfer field '{TARGET}' has no solutions"):
        fluxscale(table, reference=FLUX, transfer=TARGET, field_ids=ids)
    with pytest.raises(FluxscaleError, match="reference field '3C286' is not a field"):
        fluxscale(table, reference="3C286")
    with pytest.raises(FluxscaleError, match=r"spw 0: the table has cal_type 'B'"):
        bad = dict(table)
        bad[0] = table[0].assign_attrs({schema.ATTR_CAL_TYPE: schema.CAL_TYPE_B})
        fluxscale(bad, reference=FLUX)
    with pytest.raises(FluxscaleError, match="mixes cal_types"):
        mixed = dict(table)
        mixed[1] = table[1].assign_attrs({schema.ATTR_CAL_TYPE: schema.CAL_TYPE_T})
        fluxscale(mixed, reference=FLUX)
    with pytest.raises(FluxscaleError, match="one frequency per spw"):
        wide = dict(table)
        wide[0] = table[0].reindex(frequency=[table[0].frequency.values[0], 1e11])
        fluxscale(wide, reference=FLUX)
    with pytest.raises(FluxscaleError, match="no transfer field"):
        fluxscale(gain_table({FLUX: 1.0}), reference=FLUX)
    # every reference solution flagged: found when computing
    flagged = standard_table()
    for ds in flagged.values():
        ds[schema.FLAG].values[ds[schema.FIELD_NAME].values == FLUX] = True
    lazy = fluxscale(flagged, reference=FLUX)  # building is fine
    with pytest.raises(FluxscaleError, match=f"reference field.*{FLUX}.*no unflagged"):
        lazy.view.compute()
    # transfer fields flagged everywhere
    for ds in flagged.values():
        ds[schema.FLAG].values[:] = ds[schema.FIELD_NAME].values[:, None, None, None] != FLUX
    with pytest.raises(FluxscaleError, match="no flux density could be determined"):
        fluxscale(flagged, reference=FLUX).to_dict()


def test_building_computes_nothing_on_dask_tables():
    table = standard_table(sigma=0.01, chunks=5)
    for kw in ({}, {"incremental": True}, {"gainthreshold": 0.3, "refspwmap": [0, 0, 2, 2]}):
        res = assert_lazy(fluxscale, table, reference=FLUX, **kw)
        for ds in res.table.values():
            assert isinstance(ds[schema.CALIBRATION_PARAMETER].data, da.Array)
        for name in res.view.data_vars:
            assert isinstance(res.view[name].data, da.Array)
        with forbid_compute(), pytest.raises(ComputeForbidden):
            res.view[schema.FS_FLUX_DENSITY].values  # noqa: B018
    eager = fluxscale(standard_table(sigma=0.01), reference=FLUX).view.compute()
    lazy = fluxscale(table, reference=FLUX).view.compute()
    xr.testing.assert_allclose(eager, lazy)


def test_t_tables_and_the_registered_step():
    table = standard_table(cal_type=schema.CAL_TYPE_T, sigma=0.01)
    view = fluxscale(table, reference=FLUX).view.compute()
    assert list(view[schema.RECEPTOR].values) == ["XY"]
    assert (view[schema.FS_N_SOLUTIONS].sel({schema.FIELD_NAME: PHASE}) == 12).all()
    assert view.attrs[schema.ATTR_CAL_TYPE] == schema.CAL_TYPE_T
    assert step.get_step("fluxscale") is fluxscale


# ---- optional: CASA as the oracle ----

CASA_PYTHON = os.environ.get("RADFLOW_CASA_PYTHON") or (
    sys.executable if importlib.util.find_spec("casatasks") else None
)

CASA_SCRIPT = r"""
import pickle, shutil, sys
from casatasks import fluxscale, gaincal, setjy
from casatools import table

ms, out, ref = sys.argv[1:4]
s0, alpha = float(sys.argv[4]), float(sys.argv[5])
tb = table()
setjy(vis=ms, field=ref, standard="manual", fluxdensity=[s0, 0, 0, 0], spix=[alpha],
      reffreq="100GHz", usescratch=True)

def read(name):
    tb.open(name)
    cols = {c: tb.getcol(c) for c in ("TIME", "FIELD_ID", "SPECTRAL_WINDOW_ID", "ANTENNA1",
                                      "SCAN_NUMBER", "CPARAM", "FLAG")}
    cols["VisCal"] = tb.getkeyword("VisCal")
    tb.close()
    for sub, col, key in (("ANTENNA", "NAME", "antenna_names"), ("FIELD", "NAME", "field_names"),
                          ("SPECTRAL_WINDOW", "NAME", "spw_names")):
        tb.open(name + "/" + sub); cols[key] = list(tb.getcol(col)); tb.close()
    tb.open(name + "/SPECTRAL_WINDOW")
    cols["chan_freq"] = [tb.getcell("CHAN_FREQ", i) for i in range(tb.nrows())]
    tb.close()
    return cols

def solve(name, **kw):
    gaincal(vis=ms, caltable=name, field="J1924-2914,J1037-2934,J1256-0547", solint="int",
            refant="DA41", calmode="ap", minsnr=0, **kw)

solve("g.tbl", gaintype="G")
solve("t.tbl", gaintype="T")
files = {"G": "g.tbl", "T": "t.tbl"}
runs = [("G", "default", {}), ("G", "gainthreshold", {"gainthreshold": 0.05}),
        ("G", "incremental", {"incremental": True}), ("T", "T", {})]
tb.open("g.tbl")
many_spws = len(set(tb.getcol("SPECTRAL_WINDOW_ID"))) > 1
tb.close()
if many_spws:
    solve("g02.tbl", gaintype="G", spw="0,2")
    shutil.copytree("g.tbl", "gf.tbl")
    tb.open("gf.tbl", nomodify=False)
    cols = ("FLAG", "FIELD_ID", "SPECTRAL_WINDOW_ID", "ANTENNA1")
    f, fld, spw, ant = (tb.getcol(c) for c in cols)
    f[:, :, (fld == 2) & (spw == 1)] = True
    f[0, :, (fld == 0) & (ant == 3)] = True
    tb.putcol("FLAG", f)
    tb.close()
    files.update({"G_02": "g02.tbl", "G_flagged": "gf.tbl"})
    runs += [("G", "fitorder2", {"fitorder": 2}),
             ("G", "two_refs", {"reference": ref + ",J1256-0547", "transfer": "J1037-2934"}),
             ("G_02", "two_spws_fitorder2", {"fitorder": 2}),
             ("G_flagged", "refspwmap", {"refspwmap": [0, 0, 2, 2]})]
cases = {}
for name, case, kw in runs:
    kw.setdefault("reference", ref)
    shutil.rmtree("fs.tbl", ignore_errors=True)
    d = fluxscale(vis=ms, caltable=files[name], fluxtable="fs.tbl", **kw)
    cases[case] = {"table": name, "kwargs": kw, "dict": d, "out": read("fs.tbl")}
with open(out, "wb") as fh:
    pickle.dump({"tables": {k: read(v) for k, v in files.items()}, "cases": cases}, fh)
"""


def caltable_to_table(ct: dict) -> dict[int, xr.Dataset]:
    """A CASA G/T caltable's columns (as read by casatools) -> radflow solution datasets."""
    ants, fields = ct["antenna_names"], ct["field_names"]
    npar = ct["CPARAM"].shape[0]
    recs = ["X", "Y"] if npar == 2 else ["XY"]
    out = {}
    for s in sorted(set(ct["SPECTRAL_WINDOW_ID"].tolist())):
        rows = np.flatnonzero(ct["SPECTRAL_WINDOW_ID"] == s)
        times = np.unique(ct["TIME"][rows])
        g = np.zeros((len(times), len(ants), 1, npar), np.complex64)
        flag = np.ones(g.shape, bool)
        field = np.empty(len(times), dtype=object)
        t = np.searchsorted(times, ct["TIME"][rows])
        a = ct["ANTENNA1"][rows]
        g[t, a, 0] = ct["CPARAM"][:, 0, rows].T
        flag[t, a, 0] = ct["FLAG"][:, 0, rows].T
        field[t] = np.array(fields)[ct["FIELD_ID"][rows]]
        freq = ct["chan_freq"][s]
        out[s] = xr.Dataset(
            {schema.CALIBRATION_PARAMETER: (DIMS, g), schema.FLAG: (DIMS, flag)},
            coords={
                schema.TIME: times,
                schema.ANTENNA_NAME: ants,
                schema.FREQUENCY: [freq[len(freq) // 2]],
                schema.RECEPTOR: recs,
                schema.FIELD_NAME: ((schema.TIME,), field.astype(str)),
            },
            attrs={
                schema.ATTR_TYPE: schema.TYPE_CALIBRATION_SOLUTION,
                schema.ATTR_CAL_TYPE: ct["VisCal"][0],
                schema.ATTR_SPECTRAL_WINDOW_NAME: ct["spw_names"][s],
            },
        )
    return out


def assert_matches_casa(ours: dict, casa: dict, case: str) -> None:
    """1e-5 relative (1e-7 absolute). Fit errors and poorly determined coefficients amplify
    CASA's float32 |g| rounding (~1e-7) through chi2 of ~1e-3 residuals: spidxerr and
    fitFluxdErr agree to 1e-3, spidx to 1e-5 plus 1e-3 of its error."""
    assert set(ours) == set(casa), case
    assert list(ours["spwName"]) == list(casa["spwName"])
    np.testing.assert_array_equal(ours["spwID"], casa["spwID"])
    np.testing.assert_allclose(ours["freq"], casa["freq"], rtol=1e-12)
    for key, field in casa.items():
        if key in ("freq", "spwID", "spwName"):
            continue
        assert set(ours[key]) == set(field), (case, key)
        for name, value in field.items():
            where = f"{case}: field {key} {name}"
            got = ours[key][name]
            if isinstance(value, dict):
                for k in value:
                    np.testing.assert_allclose(
                        got[k], value[k], rtol=1e-5, atol=1e-7, err_msg=where
                    )
            elif isinstance(value, str):
                assert got == value, where
            elif name == "spidx":
                slack = 1e-5 * np.abs(value) + 1e-3 * np.asarray(field["spidxerr"]) + 1e-9
                assert np.all(np.abs(got - value) <= slack), (where, got, value)
            else:
                assert np.shape(got) == np.shape(value), where
                rtol = 1e-3 if name in ("spidxerr", "fitFluxdErr") else 1e-5
                np.testing.assert_allclose(got, value, rtol=rtol, atol=1e-7, err_msg=where)


@pytest.mark.casa
@pytest.mark.skipif(CASA_PYTHON is None, reason="CASA absent (set RADFLOW_CASA_PYTHON)")
@pytest.mark.parametrize("n_ant, n_spw", [(8, 4), (52, 1)])
def test_agrees_with_casa_fluxscale(tmp_path: Path, n_ant: int, n_spw: int):
    """CASA's gaincal tables of a simulated EB through CASA's fluxscale and radflow's.

    52 antennas x 2 receptors > 100 ratios: casacore's even-count median quirk is in play.
    """
    eb = sim.simulate_interferometer(
        tmp_path / "sim.ms", n_antennas=n_ant, n_spw=n_spw, n_chan=8, n_integrations=4,
        n_cycles=1, seed=3,
    )  # fmt: skip
    script = tmp_path / "casa_fluxscale.py"
    script.write_text(CASA_SCRIPT)
    s0, alpha = TRUTH[FLUX]
    out = tmp_path / "casa.pkl"
    subprocess.run(
        [CASA_PYTHON, str(script), str(eb.ms_path), str(out), FLUX, str(s0), str(alpha)],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    with open(out, "rb") as fh:
        casa = pickle.load(fh)
    for case, run in casa["cases"].items():
        ct = casa["tables"][run["table"]]
        table = caltable_to_table(ct)
        kw = dict(run["kwargs"])
        res = fluxscale(
            table,
            field_ids={n: i for i, n in enumerate(ct["field_names"])},
            spectral_windows=dict(enumerate(ct["spw_names"])),
            casa_median=True,
            casa_errors=True,
            **kw,
        )
        assert_matches_casa(res.to_dict(), run["dict"], case)
        produced = run["out"]
        if kw.get("incremental"):
            for r in range(len(produced["TIME"])):
                ds = res.table[int(produced["SPECTRAL_WINDOW_ID"][r])]
                name = ct["field_names"][produced["FIELD_ID"][r]]
                t = list(ds[schema.FIELD_NAME].values).index(name)
                got = ds[schema.CALIBRATION_PARAMETER].values[t, produced["ANTENNA1"][r], 0]
                np.testing.assert_allclose(got, produced["CPARAM"][:, 0, r], rtol=1e-6)
        else:
            for s, ds in caltable_to_table(produced).items():
                np.testing.assert_allclose(
                    res.table[s][schema.CALIBRATION_PARAMETER].values,
                    ds[schema.CALIBRATION_PARAMETER].values,
                    rtol=2e-6,
                    atol=1e-7,
                    err_msg=case,
                )
    if n_ant * 2 > 100:  # without casa_median the even-count median differs from CASA's
        ct = casa["tables"]["G"]
        d = fluxscale(
            caltable_to_table(ct),
            reference=FLUX,
            field_ids={n: i for i, n in enumerate(ct["field_names"])},
            casa_errors=True,
        ).to_dict()
        ref = casa["cases"]["default"]["dict"]
        deviation = max(abs(d[f]["0"]["fluxd"][0] / ref[f]["0"]["fluxd"][0] - 1) for f in "02")
        assert deviation > 2e-5
