"""radflow.cal.gfluxscale: the ALMA pipeline's hifa_gfluxscale heuristics."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from scipy.special import j1

from radflow import schema
from radflow.cal import gfluxscale as gf
from radflow.cal.fluxscale import FluxscaleError, fluxscale
from radflow.testing import simulate_interferometer
from radflow.testing.lazy import assert_lazy

C = 299792458.0
ARCSEC = math.pi / 180 / 3600
DIMS = (schema.TIME, schema.ANTENNA_NAME, schema.FREQUENCY, schema.RECEPTOR)


# ---- resolved calibrators ----


def hand_limit(shortest: float, diameter: float, wavelength: float, fraction: float) -> float:
    """Bisection on J1(x)/x = fraction * J1(x_s)/x_s between x_s and the first null."""
    x_s = math.pi * shortest * diameter / wavelength
    target = fraction * j1(x_s) / x_s
    lo, hi = x_s, 3.8317
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if j1(mid) / mid > target else (lo, mid)
    return lo * wavelength / (math.pi * diameter)


def test_disk_antenna_selection_matches_a_hand_computation():
    distances = {"DA41": 0.0, "DV01": 15.0, "DA42": 30.0, "DV02": 45.0, "DA43": 60.0,
                 "DV03": 90.0, "DA44": 150.0, "DV04": 300.0}  # fmt: skip
    freqs = [90.52e9, 104.48e9]
    diameter = 10 * ARCSEC  # Mars-like
    sel = gf.resolved_calibrator_antennas(distances, "DA41", diameter, freqs)
    wavelength = C / 90.52e9  # the longest science wavelength
    limit = hand_limit(15.0, diameter, wavelength, 0.2)
    assert 60 < limit < 90  # ~67.9 m
    np.testing.assert_allclose(sel.limit_baseline_m, limit, rtol=1e-9)
    np.testing.assert_allclose(sel.wavelength_m, wavelength)
    assert sel.shortest_baseline_m == 15.0
    assert sel.antennas == ["DA41", "DV01", "DA42", "DV02", "DA43"]
    assert not sel.all_antennas
    assert sel.casa_antenna == "DA41,DV01,DA42,DV02,DA43&"
    # at the limit the visibility is peak_fraction of its value at the shortest baseline
    scale = math.pi * diameter / wavelength
    ratio = gf.disk_visibility(scale * limit) / gf.disk_visibility(scale * 15.0)
    np.testing.assert_allclose(ratio, 0.2, rtol=1e-9)
    # the pipeline's 1 m scan lands on the first whole metre past the limit
    grid = gf.limit_baseline(15.0, diameter, wavelength, pipeline_grid=True)
    assert grid == 15.0 + math.ceil(limit - 15.0)
    # a larger peak_fraction shrinks the selection
    tight = gf.resolved_calibrator_antennas(distances, "DA41", diameter, freqs, 0.6)
    assert tight.limit_baseline_m < 45.0
    assert tight.antennas == ["DA41", "DV01", "DA42"]


def test_disk_selection_uses_every_antenna_when_unresolved_or_too_few():
    distances = {"A": 0.0, "B": 20.0, "C": 40.0, "D": 200.0}
    point = gf.resolved_calibrator_antennas(distances, "A", 0.0, [100e9])
    assert point.all_antennas and point.antennas == ["A", "B", "C", "D"]
    assert point.limit_baseline_m == math.inf and point.casa_antenna == ""
    huge = gf.resolved_calibrator_antennas(distances, "A", 60 * ARCSEC, [100e9])
    assert huge.limit_baseline_m < 40.0  # only A and B inside: fewer than 3
    assert huge.all_antennas and huge.antennas == list(distances)
    with pytest.raises(ValueError, match="refant 'Z'"):
        gf.resolved_calibrator_antennas(distances, "Z", ARCSEC, [100e9])
    with pytest.raises(ValueError, match="peak_fraction"):
        gf.limit_baseline(20.0, ARCSEC, 0.003, 1.5)


def test_baselines_from_the_simulators_antenna_positions(tmp_path):
    eb = simulate_interferometer(tmp_path / "sim.ms", n_antennas=6, n_spw=1, n_chan=4,
                                 n_integrations=1, n_cycles=1, noise=False)  # fmt: skip
    pos = eb.truth.ANTENNA_POSITION
    d = gf.baselines_to_refant(pos, "DA41")
    xyz = pos.values
    assert d["DA41"] == 0.0
    np.testing.assert_allclose(d["DV01"], np.linalg.norm(xyz[1] - xyz[0]))
    assert all(0 < v < 2 * 150.0 for k, v in d.items() if k != "DA41")
    same = gf.baselines_to_refant({n: xyz[i] for i, n in enumerate(d)}, "DA41")
    assert same == pytest.approx(d)


# ---- amplitude outliers ----


def test_outlier_flagging_flags_the_injected_outlier_and_nothing_else():
    rng = np.random.default_rng(3)
    amp = 1.0 + 0.01 * rng.standard_normal((40, 10, 2))
    amp[5, 3, 1] = 1.8  # ~80 sigma
    amp[7, 2, 0] = 1.3  # ~30 sigma: kept at the default 50
    flag = np.zeros(amp.shape, bool)
    flag[9, 9, 1] = True
    amp[9, 9, 1] = 50.0  # flagged: neither counted nor reported
    amp[0, 0, 0] = np.nan
    out = gf.amplitude_outliers(amp, flag)
    assert out.sum() == 1 and out[5, 3, 1]
    # by hand: |a - median| / (MAD / 0.6745) over the unflagged, finite values
    good = amp[~flag & np.isfinite(amp)]
    med = np.median(good)
    sigma = np.median(np.abs(good - med)) / 0.6745
    assert abs(amp[5, 3, 1] - med) / sigma > 50 > abs(amp[7, 2, 0] - med) / sigma
    strict = gf.amplitude_outliers(amp, flag, amp_outlier_sigma=20)
    assert strict.sum() == 2 and strict[7, 2, 0]
    # lazily on dask arrays, and on DataArrays
    lazy = assert_lazy(gf.amplitude_outliers, da.from_array(amp, chunks=10), flag)
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), out)
    arr = xr.DataArray(amp, dims=("time", "antenna_name", "receptor"))
    np.testing.assert_array_equal(gf.amplitude_outliers(arr, flag).values, out)


def amplitude_table(n_t: int = 10, n_ant: int = 8, seed: int = 0) -> dict[int, xr.Dataset]:
    rng = np.random.default_rng(seed)
    table = {}
    for s, nu in enumerate((90.52e9, 102.52e9)):
        g = (1.0 + 0.01 * rng.standard_normal((2 * n_t, n_ant, 1, 2))).astype(np.complex64)
        g[n_t:] *= 2.0  # the second field is brighter (1 Jy model): its own median
        table[s] = xr.Dataset(
            {schema.CALIBRATION_PARAMETER: (DIMS, g), schema.FLAG: (DIMS, np.zeros(g.shape, bool))},
            coords={
                schema.TIME: np.arange(2 * n_t) * 6.0,
                schema.ANTENNA_NAME: [f"A{i}" for i in range(n_ant)],
                schema.FREQUENCY: [nu],
                schema.RECEPTOR: ["X", "Y"],
                schema.FIELD_NAME: ((schema.TIME,), np.array(["F"] * n_t + ["P"] * n_t)),
            },
            attrs={schema.ATTR_CAL_TYPE: schema.CAL_TYPE_T, schema.ATTR_SPW_ID: s},
        )
    return table


def test_table_outlier_flagging_flags_whole_solutions_per_field():
    table = amplitude_table()
    table[1] = table[1].assign({k: v.chunk({schema.TIME: 5}) for k, v in table[1].items()})
    table[0][schema.CALIBRATION_PARAMETER].values[3, 2, 0, 1] = 0.2  # field F: ~-80 sigma
    flagged, outliers = assert_lazy(gf.flag_amplitude_outliers, table)
    assert isinstance(flagged[1][schema.FLAG].data, da.Array)
    new0 = flagged[0][schema.FLAG].values
    assert new0.sum() == 2 and new0[3, 2, 0].all()  # both receptors of that solution
    assert not flagged[1][schema.FLAG].values.any()
    assert outliers[0].dims == (schema.TIME, schema.ANTENNA_NAME)
    assert outliers[0].values.sum() == 1
    # the brighter field P is not an outlier of F's distribution: statistics are per field
    assert not outliers[0].values[10:].any()


# ---- QA scores ----


def test_snr_score_break_points():
    assert gf.snr_score(5.0) == pytest.approx(0.66)
    assert gf.snr_score(26.25) == pytest.approx(1.0)
    assert gf.snr_score(1.0) == pytest.approx(0.66)  # clipped
    assert gf.snr_score(1000.0) == pytest.approx(1.0)
    assert gf.snr_score((5.0 + 26.25) / 2) == pytest.approx(0.83)
    assert gf.derived_fluxes_snr_score([1.0, 1.0], [0.01, 0.2]) == pytest.approx((1.0 + 0.66) / 2)
    assert gf.derived_fluxes_snr_score([1.0], [0.01]) == 1.0
    assert gf.derived_fluxes_snr_score([-1.0], [0.01]) == 0.0  # no valid measurement


def test_completeness_score_break_points():
    assert gf.completeness_score(4, 4) == 1.0
    assert gf.completeness_score(3, 4) == 0.75
    assert gf.completeness_score(2, 4) == 0.5
    assert gf.completeness_score(0, 4) == 0.0
    assert gf.completeness_score(1, 0) == 0.0
    assert gf.completeness_score(5, 4) == 0.0  # extra measurements


def test_spectral_consistency_score_break_points():
    assert gf.k_spw_score(1.0) == 1.0
    assert gf.k_spw_score(1.0999) == 1.0
    assert gf.k_spw_score(1.1) == 0.75
    assert gf.k_spw_score(0.81) == 0.75
    assert gf.k_spw_score(0.79) == 0.5
    assert gf.deviation_score(0.2) == 0.5
    assert gf.k_spw_score(1.5) == 0.5
    # k_spw relative to the highest-SNR spw: a constant catalogue offset does not matter
    derived = [1.10, 1.21, 1.32]
    result = gf.spectral_consistency(derived, [1.0, 1.0, 1.0], snr=[50.0, 100.0, 20.0])
    np.testing.assert_allclose(result.k_spw, [1.1 / 1.21, 1.0, 1.32 / 1.21])
    assert result.score == 1.0 and result.max_deviation < 0.1
    off = gf.spectral_consistency([1.0, 1.3], [1.0, 1.0], snr=[10.0, 30.0])
    assert off.max_deviation == pytest.approx(0.3 / 1.3) and off.score == 0.5
    np.testing.assert_array_equal(off.scores, [0.5, 1.0])


def small_result():
    """A fluxscale view: flux calibrator with its true model, one 1.44 Jy transfer field."""
    rng = np.random.default_rng(2)
    g_true = rng.uniform(0.8, 1.2, (6, 1))
    table = {}
    for s, nu in enumerate((90.52e9, 102.52e9)):
        g = np.concatenate([np.repeat(g_true[None], 3, 0), np.repeat(1.2 * g_true[None], 3, 0)])
        g = g * (1 + 0.01 * rng.standard_normal(g.shape))
        g = g[:, :, None, :].astype(np.complex64)
        table[s] = xr.Dataset(
            {schema.CALIBRATION_PARAMETER: (DIMS, g), schema.FLAG: (DIMS, np.zeros(g.shape, bool))},
            coords={
                schema.TIME: np.arange(6) * 6.0,
                schema.ANTENNA_NAME: [f"A{i}" for i in range(6)],
                schema.FREQUENCY: [nu],
                schema.RECEPTOR: ["XY"],
                schema.FIELD_NAME: ((schema.TIME,), np.array(["FLUX"] * 3 + ["PHASE"] * 3)),
            },
            attrs={schema.ATTR_CAL_TYPE: schema.CAL_TYPE_T, schema.ATTR_SPW_ID: s},
        )
    return fluxscale(table, reference="FLUX", field_ids={"FLUX": 1, "PHASE": 2})


def test_qa_scores_from_a_fluxscale_result():
    res = small_result()
    qa = gf.qa_scores(res.view, catalogue={"PHASE": {0: 1.44, 1: 1.44}})
    assert qa.completeness == 1.0
    d = res.to_dict()
    snrs = [d["2"][s]["fluxd"][0] / d["2"][s]["fluxdErr"][0] for s in "01"]
    assert qa.snr == pytest.approx(np.mean([gf.snr_score(v) for v in snrs]) if min(snrs) < 26.25
                                   else 1.0)  # fmt: skip
    assert qa.consistency["PHASE"].score == 1.0
    half = gf.qa_scores(d, expected={"PHASE": [0, 1, 2, 3]})
    assert half.completeness == 0.5


def test_transfer_models_are_casas_fluxscale_dict():
    res = small_result()
    models = gf.transfer_models(res.view)
    assert set(models) == {"2", "freq", "spwID", "spwName"}
    field = models["2"]
    assert field["fieldName"] == "PHASE"
    for key in ("fitFluxd", "fitRefFreq", "spidx", "fitFluxdErr", "spidxerr", "covarMat"):
        assert key in field
    np.testing.assert_allclose(field["fitFluxd"], 1.44, rtol=0.02)
    assert gf.transfer_models(res.to_dict(), fields=["PHASE"])["2"]["fieldName"] == "PHASE"
    assert set(gf.transfer_models(res.to_dict(), fields=[2])) == set(models)
    with pytest.raises(FluxscaleError, match="no fluxscale result for field"):
        gf.transfer_models(res.view, fields=["FLUX"])
