"""The simulators write valid MSs whose contents are exactly the recorded truth."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from casacore.tables import table, taql
from scipy.special import j1

from radflow.store import load_dataset
from radflow.testing import integrations_for_size, simulate_interferometer, simulate_single_dish
from radflow.testing import interferometer as ifm
from radflow.testing import single_dish as sdm

N_SCI = 64  # small science spws keep the suite fast
IF_SIZES = dict(n_antennas=5, n_spw=2, n_chan=16, n_integrations=4, n_cycles=1)


def _cols(ms, *names, where: str | None = None, sub: str | None = None) -> dict[str, np.ndarray]:
    path = str(ms) if sub is None else f"{ms}/{sub}"
    if where is None:
        with table(path, ack=False) as t:
            return {n: t.getcol(n) for n in names}
    t = taql(f"select {', '.join(names)} from {path} where {where}")
    out = {n: t.getcol(n) for n in names}
    t.close()
    return out


def _tsys_at(truth: xr.Dataset, var: str, t: np.ndarray) -> np.ndarray:
    """The truth's Tsys model at times `t`: linear between knots, constant outside."""
    knots = truth.tsys_knot_time.values
    k0 = np.clip(np.searchsorted(knots, t, side="right") - 1, 0, len(knots) - 2)
    w = np.clip((t - knots[k0]) / (knots[k0 + 1] - knots[k0]), 0, 1)[:, None, None, None, None]
    values = truth[var].values.astype(np.float64)
    return (1 - w) * values[k0] + w * values[k0 + 1]


# ---------------------------------------------------------------------------- single dish


@pytest.fixture(scope="module")
def sd_ps(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd") / "ps.ms"
    return simulate_single_dish(path, n_science_chan=N_SCI, noise=False)


@pytest.fixture(scope="module")
def sd_ps_noisy(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd") / "ps_noisy.ms"
    return simulate_single_dish(path, n_science_chan=N_SCI, n_antennas=3)


@pytest.fixture(scope="module")
def sd_otf(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd") / "otf.ms"
    return simulate_single_dish(
        path,
        mode="otfraster",
        n_science_chan=N_SCI,
        n_basebands=3,
        raster_row_integrations=12,
        n_on_per_scan=36,
        noise=False,
    )


def test_sd_rows_and_intents(sd_ps):
    truth = sd_ps.truth
    # 3 atm. cals x 5 + 2 scans x (3 OFF x 10 + 2 ON x 10) integrations, 2 antennas
    assert truth.sizes["time"] == 115
    c = _cols(
        sd_ps.ms_path, "TIME", "ANTENNA1", "ANTENNA2", "DATA_DESC_ID", "STATE_ID", "SCAN_NUMBER"
    )
    assert len(c["TIME"]) == 230
    np.testing.assert_array_equal(c["ANTENNA1"], c["ANTENNA2"])
    assert np.all(np.diff(c["TIME"]) >= 0)
    with table(str(sd_ps.ms_path), ack=False) as t:
        assert "FLOAT_DATA" in t.colnames() and "DATA" not in t.colnames()
    modes = _cols(sd_ps.ms_path, "OBS_MODE", sub="STATE")["OBS_MODE"]
    row_intent = np.asarray(modes)[c["STATE_ID"]]
    t_index = np.searchsorted(truth.time.values, c["TIME"])
    np.testing.assert_array_equal(row_intent, truth.INTENT.values[t_index].astype(str))
    np.testing.assert_array_equal(c["SCAN_NUMBER"], truth.SCAN_NUMBER.values[t_index])
    # atmospheric calibrations only in the Tsys spw (0), target rows only in the science spw (1)
    atm = row_intent == "CALIBRATE_ATMOSPHERE#ON_SOURCE,CALIBRATE_WVR#ON_SOURCE"
    np.testing.assert_array_equal(c["DATA_DESC_ID"], np.where(atm, 0, 1))
    np.testing.assert_array_equal(np.unique(c["SCAN_NUMBER"][atm]), [1, 3, 5])
    # each target scan: OFF, ON, OFF, ON, OFF sub-scans
    scan2 = truth.where(truth.SCAN_NUMBER == 2, drop=True)
    kinds = [str(i).split("#")[1] for i in scan2.INTENT.values]
    order = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    assert order == ["OFF_SOURCE", "ON_SOURCE", "OFF_SOURCE", "ON_SOURCE", "OFF_SOURCE"]


def test_sd_spectral_setup(sd_otf):
    with table(f"{sd_otf.ms_path}/SPECTRAL_WINDOW", ack=False) as t:
        freqs = [t.getcell("CHAN_FREQ", i) for i in range(t.nrows())]
        widths = [t.getcell("CHAN_WIDTH", i) for i in range(t.nrows())]
        bbc = t.getcol("BBC_NO")
    truth = sd_otf.truth
    assert len(bbc) == 6
    for sci in truth.science_spw.values:
        tsys = int(truth.TSYS_SPW_FOR_SCIENCE.sel(science_spw=sci))
        f_sci, f_tsys, w_tsys = freqs[sci], freqs[tsys], widths[tsys]
        assert bbc[sci] == bbc[tsys]
        assert (len(f_sci), len(f_tsys)) == (N_SCI, 128)
        assert f_tsys[0] - w_tsys[0] / 2 < f_sci[0] and f_sci[-1] < f_tsys[-1] + w_tsys[-1] / 2
        np.testing.assert_array_equal(truth.science_frequency.sel(science_spw=sci), f_sci)
        # no other Tsys spw overlaps this science spw
        for other in truth.tsys_spw.values:
            if other != tsys:
                f_o = freqs[other]
                assert f_o[-1] < f_sci[0] or f_o[0] > f_sci[-1]
    assert sorted(set(bbc.tolist())) == [1, 2, 3]


def test_syscal_is_truth(sd_otf):
    truth = sd_otf.truth
    c = _cols(
        sd_otf.ms_path,
        "TIME",
        "INTERVAL",
        "ANTENNA_ID",
        "SPECTRAL_WINDOW_ID",
        "TSYS_SPECTRUM",
        sub="SYSCAL",
    )
    n_knot, n_bb, n_ant = 3, 3, 2
    assert len(c["TIME"]) == n_knot * n_bb * n_ant
    assert set(c["SPECTRAL_WINDOW_ID"].tolist()) == set(truth.tsys_spw.values.tolist())
    for k in range(n_knot):
        for s, spw in enumerate(truth.tsys_spw.values):
            for a in range(n_ant):
                row = np.nonzero(
                    (c["TIME"] == truth.time_system_cal.values[k])
                    & (c["SPECTRAL_WINDOW_ID"] == spw)
                    & (c["ANTENNA_ID"] == a)
                )[0]
                assert len(row) == 1
                np.testing.assert_array_equal(
                    c["TSYS_SPECTRUM"][row[0]], truth.SYSCAL_TSYS.values[k, s, a]
                )
    # the knot (TIME - INTERVAL/2) is the start of each atmospheric-calibration scan
    main = _cols(sd_otf.ms_path, "TIME", "INTERVAL", where="DATA_DESC_ID==0")
    atm = np.unique(main["TIME"])
    starts = atm[np.r_[0, np.nonzero(np.diff(atm) > 1.5)[0] + 1]] - main["INTERVAL"][0] / 2
    np.testing.assert_allclose(truth.tsys_knot_time.values, starts, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        c["TIME"][:: n_bb * n_ant] - c["INTERVAL"][:: n_bb * n_ant] / 2, starts, atol=1e-6
    )
    # Tsys is smooth: linear interpolation from Tsys channels onto science channels is good
    # to 0.2% (the atmospheric feature is the worst place)
    for s, sci in enumerate(truth.science_spw.values):
        f_t = truth.tsys_frequency.values[s]
        f_s = truth.science_frequency.sel(science_spw=sci).values
        tsys = truth.SYSCAL_TSYS.values[:, s]  # (knot, ant, chan, pol)
        interp = np.apply_along_axis(lambda y, fs=f_s, ft=f_t: np.interp(fs, ft, y), 2, tsys)
        np.testing.assert_allclose(interp, truth.TSYS_SCIENCE.values[:, s], rtol=2e-3)


def test_sd_noiseless_power_is_model(sd_ps):
    truth = sd_ps.truth
    for ddid, sci in ((1, True), (0, False)):
        c = _cols(sd_ps.ms_path, "TIME", "ANTENNA1", "FLOAT_DATA", where=f"DATA_DESC_ID=={ddid}")
        t, ant = c["TIME"], c["ANTENNA1"]
        ti = np.searchsorted(truth.time.values, t)
        var, bp = ("TSYS_SCIENCE", "BANDPASS_SCIENCE") if sci else ("SYSCAL_TSYS", "BANDPASS_TSYS")
        tsys = _tsys_at(truth, var, t)[np.arange(len(t)), 0, ant]  # (row, chan, pol)
        temp = tsys
        if sci:
            on = (truth.INTENT.values[ti] == "OBSERVE_TARGET#ON_SOURCE")[:, None, None]
            assert on.sum() == 80 and truth.SOURCE_FACTOR.values[ti][on[:, 0, 0]].min() == 1.0
            line = truth.LINE_SPECTRUM.values[0][None, :, None]
            temp = tsys + on * (line + truth.BASELINE_SPECTRUM.values[0, ant])
        gain = truth.GAIN.values[ti, ant][:, None, :]
        expected = gain * truth[bp].values[0, ant] * temp
        np.testing.assert_allclose(c["FLOAT_DATA"], expected, rtol=2e-6)
        # raw counts ~1e6 (gains ~1e4 per K times ~100 K)
        assert 3e5 < np.median(c["FLOAT_DATA"]) < 3e6


def test_sd_lines_and_noise(sd_ps_noisy):
    truth = sd_ps_noisy.truth
    assert sd_ps_noisy.truth.attrs["noise"] == 1
    c = _cols(sd_ps_noisy.ms_path, "TIME", "ANTENNA1", "FLOAT_DATA", where="DATA_DESC_ID==1")
    ti = np.searchsorted(truth.time.values, c["TIME"])
    ant = c["ANTENNA1"]
    tsys = _tsys_at(truth, "TSYS_SCIENCE", c["TIME"])[np.arange(len(ti)), 0, ant]
    model_off = (
        truth.GAIN.values[ti, ant][:, None, :] * truth.BANDPASS_SCIENCE.values[0, ant] * tsys
    )
    ratio = c["FLOAT_DATA"] / model_off - 1.0
    off = truth.INTENT.values[ti] == "OBSERVE_TARGET#OFF_SOURCE"
    r = float(truth.RADIOMETER_FACTOR_SCIENCE[0])
    # 180 OFF spectra x 64 chan x 2 pol: the scatter is the radiometer equation to 2%
    assert np.std(ratio[off]) == pytest.approx(r, rel=0.02)
    assert abs(np.mean(ratio[off])) < 5 * r / np.sqrt(ratio[off].size)
    # ON - OFF model (all ON spectra averaged) recovers line + baseline in K to 5 sigma
    on_k = (ratio[~off] * tsys[~off]).mean(axis=0)  # (chan, pol), K
    expected = truth.LINE_SPECTRUM.values[0][:, None] + truth.BASELINE_SPECTRUM.values[0].mean(0)
    noise_k = r * tsys.mean() / np.sqrt((~off).sum() / 1)
    np.testing.assert_allclose(on_k, expected, atol=5 * noise_k)
    assert float(truth.LINE_PEAK.max()) == 1.5 and truth.LINE_PEAK.attrs["units"] == "K"


def test_otfraster_rows(sd_otf):
    truth = sd_otf.truth
    on = truth.INTENT.values == "OBSERVE_TARGET#ON_SOURCE"
    for a in range(2):
        c = _cols(
            sd_otf.ms_path,
            "TIME",
            where=f"ANTENNA1=={a} AND DATA_DESC_ID==1 AND "
            f"STATE_ID IN [{','.join(map(str, np.unique(truth.STATE_ID.values[on])))}]",
        )
        t = np.unique(c["TIME"])
        gaps = np.diff(t)
        split = gaps > 5 * np.median(gaps)
        rows = np.split(t, np.nonzero(split)[0] + 1)
        assert [len(r) for r in rows] == [12] * 6  # 2 scans x 3 rows
        assert gaps[split].min() > 5 * np.median(gaps)
        np.testing.assert_array_equal([r[0] for r in rows], truth.RASTER_ROW_START.values)
        np.testing.assert_array_equal([r[-1] for r in rows], truth.RASTER_ROW_END.values)
    # rows 0..2 of a scan are groups of raster_rows_per_off=2 then 1, each followed by an OFF
    scan2 = truth.where(truth.SCAN_NUMBER == 2, drop=True)
    kinds = [str(i).split("#")[1][:2] for i in scan2.INTENT.values]
    runs = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    assert runs == ["OF", "ON", "OF", "ON", "OF"]
    # the source is a Gaussian at the map centre: SOURCE_FACTOR follows the pointing offsets,
    # with nothing at the row ends (where otfraster takes its OFF spectra)
    ra0, dec0 = truth.attrs["field_direction_rad"]
    ra, dec = truth.POINTING_DIRECTION.values[on].T
    r2 = ((ra - ra0) * np.cos(dec)) ** 2 + (dec - dec0) ** 2
    fwhm = np.deg2rad(truth.attrs["source_fwhm_arcsec"] / 3600)
    factor = truth.SOURCE_FACTOR.values[on]
    np.testing.assert_allclose(factor, np.exp(-4 * np.log(2) * r2 / fwhm**2), rtol=1e-5)
    assert factor.max() > 0.8 and factor.reshape(6, 12)[:, [0, -1]].max() < 1e-6
    # pointing follows the raster: RA increases along each row, Dec is constant
    p = _cols(sd_otf.ms_path, "TIME", "ANTENNA_ID", "DIRECTION", sub="POINTING")
    ant0 = p["ANTENNA_ID"] == 0
    np.testing.assert_array_equal(p["TIME"][ant0], truth.time.values)
    np.testing.assert_array_equal(p["DIRECTION"][ant0][:, 0], truth.POINTING_DIRECTION.values)
    ra = truth.POINTING_DIRECTION.values[on, 0].reshape(6, 12)
    dec = truth.POINTING_DIRECTION.values[on, 1].reshape(6, 12)
    assert np.all(np.diff(ra, axis=1) > 0) and np.all(np.ptp(dec, axis=1) == 0)


# ---------------------------------------------------------------------------- interferometer


@pytest.fixture(scope="module")
def if_clean(tmp_path_factory):
    path = tmp_path_factory.mktemp("if") / "clean.ms"
    return simulate_interferometer(
        path, **IF_SIZES, n_pol=4, noise=False, extra_columns=("MODEL_DATA", "CORRECTED_DATA")
    )


@pytest.fixture(scope="module")
def if_noisy(tmp_path_factory):
    path = tmp_path_factory.mktemp("if") / "noisy.ms"
    return simulate_interferometer(path, **IF_SIZES, n_pol=4)


def test_if_layout(if_clean):
    truth = if_clean.truth
    c = _cols(
        if_clean.ms_path,
        "TIME",
        "ANTENNA1",
        "ANTENNA2",
        "DATA_DESC_ID",
        "SCAN_NUMBER",
        "FIELD_ID",
        "STATE_ID",
        "UVW",
        "INTERVAL",
        "EXPOSURE",
        "TIME_CENTROID",
    )
    n_scans, n_bl = 5, 10
    assert len(c["TIME"]) == n_scans * 4 * 2 * n_bl
    assert np.all(c["ANTENNA1"] < c["ANTENNA2"])
    # time-ordered; within a time by DATA_DESC_ID, then baseline
    key = np.lexsort((c["ANTENNA2"], c["ANTENNA1"], c["DATA_DESC_ID"], c["TIME"]))
    np.testing.assert_array_equal(key, np.arange(len(key)))
    np.testing.assert_array_equal(c["TIME_CENTROID"], c["TIME"])
    np.testing.assert_array_equal(c["EXPOSURE"], c["INTERVAL"])
    fields = _cols(if_clean.ms_path, "NAME", sub="FIELD")["NAME"]
    modes = np.asarray(_cols(if_clean.ms_path, "OBS_MODE", sub="STATE")["OBS_MODE"])
    first = np.unique(c["SCAN_NUMBER"], return_index=True)[1]
    assert [fields[f] for f in c["FIELD_ID"][first]] == [
        "J1256-0547",
        "J1924-2914",
        "J1037-2934",
        "TW_Hya",
        "J1037-2934",
    ]
    assert [m.split("#")[0] for m in modes[c["STATE_ID"][first]]] == [
        "CALIBRATE_BANDPASS",
        "CALIBRATE_FLUX",
        "CALIBRATE_PHASE",
        "OBSERVE_TARGET",
        "CALIBRATE_PHASE",
    ]
    # |uvw| is the baseline length (a rotation), w along the source direction
    pos = truth.ANTENNA_POSITION.values
    length = np.linalg.norm(pos[c["ANTENNA2"]] - pos[c["ANTENNA1"]], axis=1)
    np.testing.assert_allclose(np.linalg.norm(c["UVW"], axis=1), length, rtol=1e-9)
    assert length.min() >= 15.0 and length.max() <= 300.0
    spw = _cols(if_clean.ms_path, "BBC_NO", "REF_FREQUENCY", sub="SPECTRAL_WINDOW")
    np.testing.assert_array_equal(spw["BBC_NO"], [1, 2])
    pol = _cols(if_clean.ms_path, "CORR_TYPE", "CORR_PRODUCT", sub="POLARIZATION")
    np.testing.assert_array_equal(pol["CORR_TYPE"][0], [9, 10, 11, 12])
    np.testing.assert_array_equal(pol["CORR_PRODUCT"][0], [[0, 0], [0, 1], [1, 0], [1, 1]])


def test_if_noiseless_data_is_model(if_clean):
    truth = if_clean.truth
    c = _cols(
        if_clean.ms_path,
        "TIME",
        "ANTENNA1",
        "ANTENNA2",
        "DATA_DESC_ID",
        "FIELD_ID",
        "DATA",
        "MODEL_DATA",
        "CORRECTED_DATA",
        "SIGMA",
        "WEIGHT",
        "WEIGHT_SPECTRUM",
    )
    ti = np.searchsorted(truth.time.values, c["TIME"])
    a1, a2, s = c["ANTENNA1"], c["ANTENNA2"], c["DATA_DESC_ID"]
    g, b = truth.GAIN.values, truth.BANDPASS.values
    p, q = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])  # receptors of XX XY YX YY
    gg = g[ti, a1][:, p] * np.conj(g[ti, a2][:, q])  # (row, corr)
    bb = b[a1, s][:, :, p] * np.conj(b[a2, s][:, :, q])  # (row, chan, corr)
    flux = truth.FLUX_DENSITY.values[c["FIELD_ID"], s]  # (row, chan)
    model = flux[:, :, None] * (p == q)
    np.testing.assert_allclose(c["DATA"], gg[:, None, :] * bb * model, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(c["MODEL_DATA"], model.astype(np.complex64))
    np.testing.assert_array_equal(c["CORRECTED_DATA"], c["DATA"])
    # flux scale: 3 Jy at 100 GHz, alpha -0.7 for the flux calibrator
    nu = truth.frequency.values
    np.testing.assert_allclose(
        truth.FLUX_DENSITY.sel(field_name="J1924-2914"), 3.0 * (nu / 100e9) ** -0.7, rtol=1e-6
    )
    # weights: WEIGHT = 1/SIGMA^2, channel-constant WEIGHT_SPECTRUM, SIGMA = sigma0 |g_i g_j|
    np.testing.assert_allclose(c["WEIGHT"], 1.0 / c["SIGMA"] ** 2, rtol=1e-6)
    np.testing.assert_array_equal(c["WEIGHT_SPECTRUM"], np.repeat(c["WEIGHT"][:, None], 16, 1))
    sigma0 = truth.NOISE_SIGMA.values[s][:, None]
    np.testing.assert_allclose(c["SIGMA"], sigma0 * np.abs(gg), rtol=1e-5)
    assert truth.GAIN.attrs["units"] == "" and truth.FLUX_DENSITY.attrs["units"] == "Jy"
    amp = np.abs(g)
    assert amp.min() > 0.8 and amp.max() < 1.2
    np.testing.assert_allclose(np.sqrt((np.abs(b) ** 2).mean(axis=2)), 1.0, rtol=1e-5)


def test_if_noise_and_seed(if_clean, if_noisy, tmp_path):
    """Same seed: the same model; noise of the stated sigma; a rerun is bit-identical."""
    clean = _cols(if_clean.ms_path, "DATA", "SIGMA")
    noisy = _cols(if_noisy.ms_path, "DATA", "SIGMA")
    np.testing.assert_array_equal(clean["SIGMA"], noisy["SIGMA"])
    z = (noisy["DATA"] - clean["DATA"]) / clean["SIGMA"][:, None, :]
    assert np.std(z.real) == pytest.approx(1.0, abs=0.02)
    assert np.std(z.imag) == pytest.approx(1.0, abs=0.02)
    again = simulate_interferometer(tmp_path / "again.ms", **IF_SIZES, n_pol=4)
    with table(str(if_noisy.ms_path), ack=False) as t1, table(str(again.ms_path), ack=False) as t2:
        for col in ("DATA", "UVW", "FLAG", "WEIGHT", "TIME", "ANTENNA1"):
            np.testing.assert_array_equal(t1.getcol(col), t2.getcol(col))
    other = simulate_interferometer(tmp_path / "other.ms", **IF_SIZES, n_pol=4, seed=1)
    assert not np.array_equal(_cols(other.ms_path, "DATA")["DATA"], noisy["DATA"])
    xr.testing.assert_identical(again.truth, if_noisy.truth)


def test_if_flags(if_noisy):
    truth = if_noisy.truth
    c = _cols(
        if_noisy.ms_path,
        "TIME",
        "ANTENNA1",
        "ANTENNA2",
        "DATA_DESC_ID",
        "SCAN_NUMBER",
        "FLAG",
        "FLAG_ROW",
    )
    names = list(truth.antenna_name.values)
    bad_ant = names.index(str(truth.FLAGGED_ANTENNA.values))
    t_lo, t_hi = truth.FLAGGED_TIME_RANGE.values
    bad_row = (
        ((c["ANTENNA1"] == bad_ant) | (c["ANTENNA2"] == bad_ant))
        & (c["TIME"] >= t_lo)
        & (c["TIME"] <= t_hi)
    )
    assert set(c["SCAN_NUMBER"][bad_row].tolist()) == {3}
    assert bad_row.sum() == 2 * 2 * 4  # 2 integrations x 2 spws x 4 baselines
    np.testing.assert_array_equal(c["FLAG_ROW"], bad_row)
    expected = np.zeros_like(c["FLAG"])
    expected[bad_row] = True
    for s, chans in enumerate(truth.FLAGGED_CHANNELS.values):
        expected[np.ix_(c["DATA_DESC_ID"] == s, chans, np.arange(4))] = True
    np.testing.assert_array_equal(c["FLAG"], expected)
    assert int(truth.N_FLAGGED_SAMPLES) == expected.sum()
    assert int(truth.N_FLAGGED_ROWS) == bad_row.sum()


def test_if_disk_and_autocorrelations(tmp_path):
    eb = simulate_interferometer(
        tmp_path / "disk.ms",
        n_antennas=4,
        n_spw=1,
        n_chan=8,
        n_integrations=2,
        n_cycles=1,
        autocorrelations=True,
        flux_calibrator_diameter_arcsec=1.5,
        extra_columns=("MODEL_DATA",),
    )
    c = _cols(eb.ms_path, "ANTENNA1", "ANTENNA2", "FIELD_ID", "UVW", "DATA", "MODEL_DATA")
    auto = c["ANTENNA1"] == c["ANTENNA2"]
    assert auto.sum() == 5 * 2 * 4  # scans x integrations x antennas
    assert np.all(c["DATA"][auto].imag == 0)  # parallel-hand autocorrelations are real
    flux = c["FIELD_ID"] == 1
    theta = np.deg2rad(1.5 / 3600)
    lam = 299_792_458.0 / eb.truth.frequency.values[0]
    x = np.pi * np.hypot(c["UVW"][flux, 0], c["UVW"][flux, 1])[:, None] * theta / lam
    disk = np.where(x > 0, 2 * j1(np.where(x > 0, x, 1)) / np.where(x > 0, x, 1), 1.0)
    expected = eb.truth.FLUX_DENSITY.values[1, 0] * disk
    np.testing.assert_allclose(c["MODEL_DATA"][flux][:, :, 0].real, expected, rtol=1e-5)
    assert disk.min() < 0.9  # resolved on the longer baselines
    assert float(eb.truth.DISK_DIAMETER.sel(field_name="J1924-2914")) == pytest.approx(theta)


# ---------------------------------------------------------------------------- both


def test_output_does_not_depend_on_block_size(sd_ps_noisy, if_noisy, tmp_path, monkeypatch):
    """Noise streams are keyed by integration (and spw): one-integration (and one-spw) blocks
    write exactly what the default blocks wrote."""
    monkeypatch.setattr(sdm, "_BLOCK_BYTES", 1)
    monkeypatch.setattr(ifm, "_BLOCK_BYTES", 1)
    sd = simulate_single_dish(tmp_path / "sd.ms", n_science_chan=N_SCI, n_antennas=3)
    ifs = simulate_interferometer(tmp_path / "if.ms", **IF_SIZES, n_pol=4)
    for new, old, cols in (
        (sd, sd_ps_noisy, ("TIME", "ANTENNA1", "DATA_DESC_ID", "FLOAT_DATA")),
        (ifs, if_noisy, ("TIME", "ANTENNA1", "ANTENNA2", "DATA_DESC_ID", "DATA", "FLAG")),
    ):
        order = ("TIME", "DATA_DESC_ID", "ANTENNA1")
        a, b = _cols(new.ms_path, *order), _cols(old.ms_path, *order)
        for col in order:
            np.testing.assert_array_equal(a[col], b[col])
        for where in ("DATA_DESC_ID==0", "DATA_DESC_ID==1"):
            a, b = _cols(new.ms_path, *cols, where=where), _cols(old.ms_path, *cols, where=where)
            for col in cols:
                np.testing.assert_array_equal(a[col], b[col])


def test_truth_reloads(sd_otf, if_clean):
    for eb in (sd_otf, if_clean):
        assert eb.truth_path.name == eb.ms_path.name + ".truth.zarr"
        loaded = load_dataset(eb.truth_path)
        xr.testing.assert_equal(loaded, eb.truth)
        for name, v in loaded.data_vars.items():
            assert "units" in v.attrs, name


def test_existing_output_and_bad_arguments(sd_ps, tmp_path):
    with pytest.raises(FileExistsError):
        simulate_single_dish(sd_ps.ms_path, n_science_chan=N_SCI, noise=False)
    eb = simulate_single_dish(sd_ps.ms_path, n_science_chan=N_SCI, noise=False, overwrite=True)
    xr.testing.assert_identical(eb.truth, sd_ps.truth)
    with pytest.raises(ValueError, match="multiple"):
        simulate_single_dish(tmp_path / "x.ms", mode="otfraster", n_on_per_scan=30)
    with pytest.raises(ValueError, match="n_pol"):
        simulate_interferometer(tmp_path / "y.ms", n_pol=3)
    assert not (tmp_path / "x.ms").exists() and not (tmp_path / "y.ms").exists()


def test_integrations_for_size(tmp_path):
    sizes = dict(n_antennas=6, n_spw=2, n_chan=128, n_pol=4, extra_columns=("MODEL_DATA",))
    target = 12e6
    n_int = integrations_for_size(target, n_cycles=1, **sizes)
    eb = simulate_interferometer(tmp_path / "sized.ms", n_integrations=n_int, n_cycles=1, **sizes)
    on_disk = sum(p.stat().st_size for p in eb.ms_path.rglob("*") if p.is_file())
    assert on_disk == pytest.approx(target, rel=0.1)
    assert ifm.integrations_for_size(1.0, **sizes) == 1
