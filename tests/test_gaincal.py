"""gaincal (radflow.cal.gain) and applycal (radflow.cal.apply): injected gains recovered."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import radflow
from radflow import schema
from radflow.cal import apply as applycal
from radflow.cal import gain, interp
from radflow.converters.msv2_to_store import convert
from radflow.store import partitions
from radflow.testing import simulate_interferometer
from radflow.testing.datasets import make_visibility_partition
from radflow.testing.lazy import assert_lazy

ANTS = [f"A{k:02d}" for k in range(8)]
N_CHAN = 16
NOISE = 0.01  # per real/imaginary part of one channel
FLUX = 2.0  # Jy; the model in the tests without a model group is 1 Jy


def _gains(rng: np.random.Generator, n_time: int, n_rec: int = 2) -> np.ndarray:
    amp = 1.0 + 0.2 * rng.normal(size=(n_time, len(ANTS), n_rec))
    return amp * np.exp(1j * rng.uniform(-3, 3, (n_time, len(ANTS), n_rec)))


def _partition(scan: int, gains: np.ndarray, rng: np.random.Generator, t0: float = 0.0,
               field: str | None = None) -> xr.Dataset:  # fmt: skip
    """V = g_i conj(g_j) FLUX + noise in every channel, XX and YY; nothing flagged."""
    n_time = gains.shape[0]
    ds = make_visibility_partition(n_time=n_time, antennas=ANTS, n_chan=N_CHAN, pols=("XX", "YY"),
                                   scan=scan, seed=scan, chunks={"time": 3})  # fmt: skip
    ds = ds.assign_coords({schema.TIME: ds[schema.TIME] + t0})
    if field is not None:
        ds = ds.assign_coords({schema.FIELD_NAME: (schema.TIME, [field] * n_time)})
    a1 = [ANTS.index(a) for a in ds[schema.BASELINE_ANTENNA1_NAME].values]
    a2 = [ANTS.index(a) for a in ds[schema.BASELINE_ANTENNA2_NAME].values]
    rec = gains if gains.shape[2] == 2 else np.repeat(gains, 2, axis=2)
    vis = (rec[:, a1] * np.conj(rec[:, a2]))[:, :, None, :] * FLUX
    vis = np.repeat(vis, N_CHAN, axis=2)
    vis = vis + NOISE * (rng.normal(size=vis.shape) + 1j * rng.normal(size=vis.shape))
    chunks = ds[schema.VISIBILITY].data.chunks
    return ds.assign(
        {
            schema.VISIBILITY: ds[schema.VISIBILITY].copy(
                data=da.from_array(vis.astype(np.complex64), chunks=chunks)
            ),
            schema.FLAG: ds[schema.FLAG].copy(data=da.zeros(vis.shape, dtype=bool, chunks=chunks)),
            schema.WEIGHT: ds[schema.WEIGHT].copy(
                data=da.full(vis.shape, 1 / NOISE**2, dtype=np.float32, chunks=chunks)
            ),
        }
    )


def _referenced(g: np.ndarray, ref: int = 0) -> np.ndarray:
    return g * np.conj(g[:, ref : ref + 1] / np.abs(g[:, ref : ref + 1]))


@pytest.fixture(scope="module")
def two_scans():
    rng = np.random.default_rng(1)
    truth = {1: _gains(rng, 6), 2: _gains(rng, 6)}
    parts = {f"p{s}": _partition(s, truth[s], rng, t0=100.0 * (s - 1)) for s in truth}
    return parts, np.concatenate([truth[1], truth[2]])


def test_g_per_integration_recovers_the_injected_gains(two_scans) -> None:
    parts, truth = two_scans
    table = assert_lazy(gain.solve, parts, solint="int", refant="A00")
    assert set(table) == {0}
    sol = table[0].compute()
    assert sol.attrs[schema.ATTR_CAL_TYPE] == "G"
    assert dict(sol.sizes) == {"time": 12, "antenna_name": 8, "frequency": 1, "receptor": 2}
    g = sol[schema.CALIBRATION_PARAMETER].values[:, :, 0, :]
    expected = _referenced(truth) * np.sqrt(FLUX)  # the 1 Jy model puts the flux into |g|
    err = np.abs(g - expected)
    sigma = sol[schema.PARAMETER_ERROR].values[:, :, 0, :]
    # error of g: noise 0.01 x sqrt(2) per channel, 16 channels, 7 baselines, |g| ~ 1.4
    assert sigma.mean() == pytest.approx(NOISE * np.sqrt(2 / N_CHAN / 7) / np.sqrt(FLUX), rel=0.3)
    assert err.max() < 6 * sigma.max()
    # the stated errors describe the actual scatter (rms of |dg| over sigma ~ 1)
    assert np.sqrt(np.mean((err / sigma) ** 2)) == pytest.approx(1.0, abs=0.3)
    assert np.allclose(np.angle(g[:, 0]), 0.0, atol=1e-12)  # refant phase is zero
    assert (sol[schema.REFERENCE_ANTENNA].values == "A00").all()
    assert not sol[schema.FLAG].values.any()
    assert (sol[schema.N_VISIBILITIES].values == 7).all()
    assert list(sol[schema.SCAN_NUMBER].values) == [1] * 6 + [2] * 6


def test_solint_and_combine_set_the_intervals(two_scans) -> None:
    parts, _ = two_scans
    times = {
        solint: gain.solve(parts, solint=solint)[0][schema.TIME].values
        for solint in ("inf", "3s", 2.0)
    }
    assert times["inf"].size == 2  # one per scan
    assert times[2.0].size == 6  # 6 integrations 1 s apart: bins of 2 s, 3 per scan
    assert times["3s"].size == 4
    combined = gain.solve(parts, solint="inf", combine="scan")[0]
    assert combined.sizes["time"] == 1
    all_times = np.concatenate([p[schema.TIME].values for p in parts.values()])
    assert combined[schema.TIME].values[0] == pytest.approx(all_times.mean())


def test_t_shares_one_gain_between_receptors() -> None:
    rng = np.random.default_rng(2)
    truth = _gains(rng, 4, n_rec=1)
    parts = {"p": _partition(1, truth, rng)}
    sol = gain.solve(parts, gaintype="T", solint="int", refant="A03")[0].compute()
    assert list(sol[schema.RECEPTOR].values) == ["XY"]
    g = sol[schema.CALIBRATION_PARAMETER].values[:, :, 0, :]
    assert np.abs(g - _referenced(truth, 3) * np.sqrt(FLUX)).max() < 0.01


def test_phase_and_amplitude_only_modes(two_scans) -> None:
    parts, truth = two_scans
    p = gain.solve(parts, calmode="p", solint="int", refant="A00")[0].compute()
    gp = p[schema.CALIBRATION_PARAMETER].values[:, :, 0, :]
    assert np.allclose(np.abs(gp), 1.0)
    assert np.abs(np.angle(gp * np.conj(_referenced(truth)))).max() < 0.02
    a = gain.solve(parts, calmode="a", solint="int")[0].compute()
    ga = a[schema.CALIBRATION_PARAMETER].values[:, :, 0, :]
    assert np.allclose(ga.imag, 0.0) and (ga.real > 0).all()


def test_refant_fallback_keeps_phase_continuity_and_strict_flags() -> None:
    rng = np.random.default_rng(3)
    truth = _gains(rng, 6)
    ds = _partition(1, truth, rng)
    flag = np.zeros(ds[schema.FLAG].shape, bool)
    first = ds[schema.BASELINE_ANTENNA1_NAME].values == "A00"
    flag[3:, first] = True  # A00 has no data in the second half
    ds[schema.FLAG] = ds[schema.FLAG].copy(data=da.from_array(flag, chunks=(3, -1, -1, -1)))
    sol = gain.solve({"p": ds}, solint="int", refant="A00,A05")[0].compute()
    assert list(sol[schema.REFERENCE_ANTENNA].values) == ["A00"] * 3 + ["A05"] * 3
    assert sol[schema.FLAG].values[3:, 0].all() and not sol[schema.FLAG].values[:3].any()
    g = sol[schema.CALIBRATION_PARAMETER].values[:, :, 0, :]
    # the alternate refant A05 keeps the phase it had in the last A00-referenced interval
    assert np.allclose(np.angle(g[3, 5]), np.angle(g[2, 5]), atol=1e-12)
    strict = gain.solve({"p": ds}, solint="int", refant="A00", refantmode="strict")[0]
    assert strict[schema.FLAG].values[3:].all() and not strict[schema.FLAG].values[:3].any()


def test_minblperant_and_minsnr_flag_antennas() -> None:
    rng = np.random.default_rng(4)
    ds = _partition(1, _gains(rng, 3), rng)
    flag = np.zeros(ds[schema.FLAG].shape, bool)
    a1, a2 = ds[schema.BASELINE_ANTENNA1_NAME].values, ds[schema.BASELINE_ANTENNA2_NAME].values
    touches = (a1 == "A07") | (a2 == "A07")
    keep = np.flatnonzero(touches)[:3]  # A07 keeps 3 baselines
    flag[:, touches] = True
    flag[:, keep] = False
    ds[schema.FLAG] = ds[schema.FLAG].copy(data=da.from_array(flag, chunks=(3, -1, -1, -1)))
    sol = gain.solve({"p": ds}, solint="int", minblperant=4)[0].compute()
    assert sol[schema.FLAG].sel(antenna_name="A07").values.all()
    assert not sol[schema.FLAG].drop_sel(antenna_name="A07").values.any()
    loose = gain.solve({"p": ds}, solint="int", minblperant=3)[0].compute()
    assert not loose[schema.FLAG].values.any()
    assert (loose[schema.N_VISIBILITIES].sel(antenna_name="A07").values == 3).all()
    noisy = gain.solve({"p": ds}, solint="int", minsnr=1e6)[0].compute()
    assert noisy[schema.FLAG].values.all()


def test_selection_and_errors(two_scans) -> None:
    parts, _ = two_scans
    with pytest.raises(gain.GaincalError, match="no visibility data selected"):
        gain.solve(parts, field="nowhere")
    with pytest.raises(gain.GaincalError, match="refant"):
        gain.solve(parts, refant="XX99")
    with pytest.raises(gain.GaincalError, match="solint"):
        gain.solve(parts, solint="soon")
    with pytest.raises(gain.GaincalError, match="combine"):
        gain.solve(parts, combine="antenna")
    with pytest.raises(gain.GaincalError, match="gaintype"):
        gain.solve(parts, gaintype="K")


# ---- applycal ----


def test_applycal_corrects_to_the_model_and_scales_weights(two_scans) -> None:
    parts, _ = two_scans
    table = gain.solve(parts, solint="int", refant="A00")
    out = assert_lazy(applycal.apply, parts["p1"], [table])
    corrected = out["VISIBILITY_CORRECTED"].values
    # V / (g_i conj(g_j)) with |g|^2 holding FLUX: the 1 Jy model, to the noise / |g|^2
    assert np.abs(corrected - 1.0).max() < 10 * NOISE / 0.3
    assert np.abs(corrected.mean() - 1.0) < 1e-3
    sol = table[0].compute().isel(time=slice(0, 6))
    g = sol[schema.CALIBRATION_PARAMETER].values[:, :, 0, :]
    a1 = [ANTS.index(a) for a in parts["p1"][schema.BASELINE_ANTENNA1_NAME].values]
    a2 = [ANTS.index(a) for a in parts["p1"][schema.BASELINE_ANTENNA2_NAME].values]
    expected_w = (np.abs(g[:, a1]) ** 2 * np.abs(g[:, a2]) ** 2)[:, :, None, :] / NOISE**2
    np.testing.assert_allclose(out["WEIGHT_CORRECTED"].values, np.broadcast_to(
        expected_w, corrected.shape), rtol=1e-5)  # fmt: skip
    plain = applycal.apply(parts["p1"], [table], calwt=False)
    np.testing.assert_array_equal(plain["WEIGHT_CORRECTED"].values, parts["p1"][schema.WEIGHT])


def test_applycal_modes_for_flagged_and_missing_solutions(two_scans) -> None:
    parts, _ = two_scans
    table = gain.solve(parts, solint="int", refant="A00")
    sol = table[0].compute()
    flagged = sol[schema.FLAG].values.copy()
    flagged[:, ANTS.index("A02")] = True
    bad = {0: sol.assign({schema.FLAG: (sol[schema.FLAG].dims, flagged)})}
    a1 = parts["p1"][schema.BASELINE_ANTENNA1_NAME].values
    a2 = parts["p1"][schema.BASELINE_ANTENNA2_NAME].values
    touches = (a1 == "A02") | (a2 == "A02")
    calflag = applycal.apply(parts["p1"], [bad])
    assert calflag["FLAG_CORRECTED"].values[:, touches].all()
    assert not calflag["FLAG_CORRECTED"].values[:, ~touches].any()
    calonly = applycal.apply(parts["p1"], [bad], applymode="calonly")
    assert not calonly["FLAG_CORRECTED"].values.any()
    # calonly leaves data of flagged solutions uncorrected
    np.testing.assert_array_equal(
        calonly["VISIBILITY_CORRECTED"].values[:, touches],
        parts["p1"][schema.VISIBILITY].values[:, touches],
    )
    other_spw = {5: sol}
    with pytest.raises(applycal.ApplyError, match="no solutions for spw 0"):
        applycal.apply(parts["p1"], [other_spw])
    strict = applycal.apply(parts["p1"], [other_spw], applymode="calflagstrict")
    assert strict["FLAG_CORRECTED"].values.all()
    mapped = applycal.apply(parts["p1"], [other_spw], spwmap=[{0: 5}])
    assert not mapped["FLAG_CORRECTED"].values.any()


def test_linear_interpolation_of_amplitude_and_unwrapped_phase() -> None:
    """Phases 0, 2.5, 5.0 rad at three solution times: angle() wraps 5.0 to -1.28, the
    unwrapped phase interpolates to 3.75 half way between the last two; amplitude linearly."""
    rng = np.random.default_rng(5)
    ds = _partition(1, np.ones((5, len(ANTS), 2)), rng)
    times = ds[schema.TIME].values
    knots = times[[0, 2, 4]]
    phase, amp = np.array([0.0, 2.5, 5.0]), np.array([1.0, 2.0, 1.5])
    g = (amp * np.exp(1j * phase))[:, None, None, None] * np.ones((3, len(ANTS), 1, 2))
    g[:, 0] = 1.0  # the first antenna stays 1
    dims = ("time", "antenna_name", "frequency", "receptor")
    table = {0: xr.Dataset(
        {schema.CALIBRATION_PARAMETER: (dims, da.from_array(g)),
         schema.FLAG: (dims, da.zeros(g.shape, dtype=bool))},
        coords={"time": knots, "antenna_name": ANTS, "frequency": [1e11], "receptor": ["X", "Y"]},
        attrs={schema.ATTR_CAL_TYPE: "G"},
    )}  # fmt: skip
    corr = assert_lazy(applycal.correction, ds, table)
    bl = np.flatnonzero(
        (ds[schema.BASELINE_ANTENNA1_NAME].values == "A00")
        & (ds[schema.BASELINE_ANTENNA2_NAME].values == "A01")
    )[0]
    factor = corr.factor.values[:, bl, 0]  # 1 / (g_0 conj(g_1)) = 1 / conj(g_1)
    expected_g = np.array([1.0, 1.5, 2.0, 1.75, 1.5]) * np.exp(
        1j * np.array([0.0, 1.25, 2.5, 3.75, 5.0])
    )
    np.testing.assert_allclose(factor, 1 / np.conj(expected_g), rtol=1e-6)  # single precision
    nearest = applycal.correction(ds, table, interp_method="nearest").factor.values[:, bl, 0]
    np.testing.assert_allclose(
        np.abs(1 / nearest), [1.0, 1.0, 2.0, 2.0, 1.5], rtol=1e-6
    )  # ties: left


# ---- the compiled kernels against their former numpy forms ----
#
# The references are the numpy implementations the kernels replaced. Single-precision products
# may round differently (numpy's SIMD loops fuse multiply-adds on some CPUs, not on others, so
# the references themselves differ by a few ulp between machines): values are compared to
# single-precision round-off; flags, and which samples count, exactly.


def _prepare_block_reference(
    vis, weight, flag, *rest, has_model, pols, per_channel
) -> tuple[np.ndarray, np.ndarray]:
    model = rest[0] if has_model else None
    corrections = rest[1:] if has_model else rest
    vis = vis.astype(np.complex64)
    weight = weight.astype(np.float32)

    def on_channels(x: np.ndarray) -> np.ndarray:
        return x if x.ndim == vis.ndim else x[..., None, :]

    for k in range(len(corrections) // 3):
        factor, wfactor, cflag = (on_channels(x) for x in corrections[3 * k : 3 * k + 3])
        vis = vis * factor
        weight = weight * wfactor
        flag = flag | cflag
    vis, weight, flag = vis[..., pols], weight[..., pols], flag[..., pols]
    w = np.where(flag, 0.0, weight)
    if model is not None:
        model = model[..., pols].astype(np.complex64)
        num, den = w * vis * np.conj(model), w * np.abs(model) ** 2
    else:
        num, den = w * vis, w
    good = np.isfinite(num) & (den > 0)
    num, den = np.where(good, num, 0.0), np.where(good, den, 0.0)
    if not per_channel:
        return num.sum(axis=-2, dtype=np.complex128), den.sum(axis=-2, dtype=np.float64)
    return num.astype(np.complex128), den.astype(np.float64)


def _complex(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.normal(size=shape) + 1j * rng.normal(size=shape)


def _spoiled(rng: np.random.Generator, x: np.ndarray, fraction: float = 0.03) -> np.ndarray:
    """`x` with NaN and inf at random places."""
    x = x.copy()
    x.flat[rng.choice(x.size, int(fraction * x.size), replace=False)] = np.nan
    x.flat[rng.choice(x.size, int(fraction * x.size), replace=False)] = np.inf
    return x


def _random_corrections(rng: np.random.Generator, shape: tuple[int, ...], kinds: str) -> list:
    """(factor, weight factor, flag) per letter of `kinds`: "B" per channel (complex), "G"
    without the channel axis (complex), "T" (real, per channel: a TSYS-like table)."""
    out = []
    for kind in kinds:
        cshape = shape if kind in "BT" else shape[:2] + shape[3:]
        factor = _complex(rng, cshape) if kind != "T" else rng.uniform(0.5, 2, cshape)
        dtype = np.complex64 if kind != "T" else np.float32
        wshape = shape[:2] + shape[3:]
        out += [
            _spoiled(rng, factor, 0.01).astype(dtype),
            rng.uniform(0.5, 2, wshape).astype(np.float32),
            rng.uniform(size=cshape) < 0.05,
        ]
    return out


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kinds", ["", "G", "B", "BG", "TGB"])
@pytest.mark.parametrize("has_model", [False, True])
def test_prepare_block_equals_the_numpy_reference(has_model, kinds, per_channel) -> None:
    rng = np.random.default_rng(len(kinds) + 10 * has_model + 100 * per_channel)
    shape = (5, 21, 16, 4)  # XX XY YX YY: the parallel hands are 0 and 3
    vis = _spoiled(rng, _complex(rng, shape)).astype(np.complex64)
    weight = rng.uniform(0, 2, shape[::-1]).astype(np.float32).T  # not C-contiguous
    weight.flat[rng.choice(weight.size, 200, replace=False)] = 0.0
    weight.flat[rng.choice(weight.size, 200, replace=False)] = -1.0
    weight.flat[rng.choice(weight.size, 200, replace=False)] = np.nan
    flag = rng.uniform(size=shape) < 0.1
    flag[0, 3] = True  # a whole baseline
    model = [_spoiled(rng, _complex(rng, shape), 0.01).astype(np.complex64)] if has_model else []
    inputs = [vis, weight, flag, *model, *_random_corrections(rng, shape, kinds)]
    kwargs = dict(has_model=has_model, pols=np.array([0, 3]), per_channel=per_channel)
    num, den = gain._prepare_block(*inputs, **kwargs)
    with np.errstate(invalid="ignore"):  # NaN and inf data
        ref_num, ref_den = _prepare_block_reference(*inputs, **kwargs)
    assert (num.shape, num.dtype, den.dtype) == (ref_num.shape, ref_num.dtype, ref_den.dtype)
    if per_channel:  # the same samples count
        np.testing.assert_array_equal(den == 0, ref_den == 0)
    scale = np.abs(ref_num).max()
    np.testing.assert_allclose(num, ref_num, rtol=1e-6, atol=1e-6 * scale)
    np.testing.assert_allclose(den, ref_den, rtol=1e-6)
    assert np.isfinite(num).all() and np.isfinite(den).all()


def _correction_block_reference(
    times, values, flags, knots, *, method, complex_gains, tsys, channel_mean_weight,
    freq_weights, ant1, ant2, rec1, rec2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    t = times.reshape(-1)
    knots = knots.reshape(-1)
    i0, i1, w1 = interp.time_weights(knots, t, method)
    w = w1[:, None, None, None]
    f = flags[i0] | (flags[i1] & (w > 0))
    if complex_gains:
        phase = np.unwrap(np.angle(values), axis=0)
        amp = np.abs(values)
        amp_t = (1 - w) * amp[i0] + w * amp[i1]
        phase_t = (1 - w) * phase[i0] + w * phase[i1]
    else:
        amp_t = (1 - w) * values[i0] + w * values[i1]
    c0, c1, wf = freq_weights
    wf = wf[None, None, :, None]
    amp_f = (1 - wf) * amp_t[:, :, c0] + wf * amp_t[:, :, c1]
    f = f[:, :, c0] | (f[:, :, c1] & (wf > 0))
    if complex_gains:
        phase_f = (1 - wf) * phase_t[:, :, c0] + wf * phase_t[:, :, c1]
        g = amp_f * np.exp(1j * phase_f)
    else:
        g = amp_f
    g = g.astype(np.complex64 if complex_gains else np.float32)
    g1 = g[:, ant1][..., rec1]
    g2 = g[:, ant2][..., rec2]
    flag = f[:, ant1][..., rec1] | f[:, ant2][..., rec2]
    if tsys:
        product = np.where(flag, 1.0, g1 * g2)
        return np.sqrt(product), 1.0 / product, flag
    product = np.where(flag, 1.0, g1 * np.conj(g2))
    if channel_mean_weight:
        power = np.where(f, np.nan, np.abs(g) ** 2)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nan_to_num(np.nanmean(power, axis=2, keepdims=True), nan=1.0)
        weight = np.broadcast_to(mean[:, ant1][..., rec1] * mean[:, ant2][..., rec2], flag.shape)
    else:
        weight = np.abs(product) ** 2
    return 1.0 / product, weight, flag


@pytest.mark.parametrize("method", ["linear", "nearest"])
@pytest.mark.parametrize(
    "cal_type, n_knots, n_chan, n_rec",
    [("G", 6, 1, 2), ("T", 6, 1, 1), ("G", 1, 1, 2), ("B", 1, 8, 2), ("B", 3, 8, 2),
     ("TSYS", 4, 8, 2)],
)  # fmt: skip
def test_correction_block_equals_the_numpy_reference(
    cal_type, n_knots, n_chan, n_rec, method
) -> None:
    rng = np.random.default_rng(n_knots + 10 * n_chan + 100 * n_rec)
    n_ant = 5
    knots = np.sort(rng.uniform(0, 100, n_knots)) + 1e9
    # inside, outside and on the solution times
    times = np.concatenate([rng.uniform(-20, 120, 9) + 1e9, knots[:2], knots[:1]])
    shape = (n_knots, n_ant, n_chan, n_rec)
    if cal_type == "TSYS":
        values = rng.uniform(50, 200, shape)
    else:
        values = rng.uniform(0.5, 2, shape) * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
    flags = rng.uniform(size=shape) < 0.15
    flags[:, 2, 3 % n_chan] = True  # an antenna flagged in a channel at every solution time
    sol_freq = np.linspace(100e9, 101e9, n_chan)
    data_freq = np.linspace(99.9e9, 101.2e9, 2 * n_chan + 3)  # beyond both band edges
    ant1, ant2 = np.triu_indices(n_ant)  # with the autocorrelations
    rec1, rec2 = ([0, 0, 1, 1], [0, 1, 0, 1]) if n_rec == 2 else ([0] * 4, [0] * 4)
    kwargs = dict(
        method=method, complex_gains=cal_type != "TSYS", tsys=cal_type == "TSYS",
        channel_mean_weight=cal_type == "B", freq_weights=applycal._frequency_weights(
            sol_freq, data_freq), ant1=ant1, ant2=ant2, rec1=np.array(rec1), rec2=np.array(rec2),
    )  # fmt: skip
    args = (times[:, None], values, flags, knots)
    new = applycal._correction_block(*args, **kwargs)
    ref = _correction_block_reference(*args, **kwargs)
    for x, y in zip(new, ref, strict=True):
        assert (x.shape, x.dtype) == (y.shape, y.dtype)
    np.testing.assert_array_equal(new[2], ref[2])
    assert ref[2].any() and not ref[2].all()
    np.testing.assert_allclose(new[0], ref[0], rtol=1e-6)
    np.testing.assert_allclose(new[1], ref[1], rtol=1e-6)


@pytest.mark.parametrize("shape, dtype", [((30,), float), ((30, 6, 2), complex),
                                          ((30, 3, 4, 2), float)])  # fmt: skip
def test_binned_block_equals_the_matrix_product(shape, dtype) -> None:
    rng = np.random.default_rng(len(shape))
    onehot = np.zeros((7, 50))
    onehot[rng.integers(0, 7, 50), np.arange(50)] = 1.0  # each integration in one interval
    x = rng.normal(size=shape) if dtype is float else _complex(rng, shape)
    for weights in (onehot, onehot * rng.normal(size=50)):  # memberships, time offsets
        expected = (weights[:, 20:50] @ x.reshape(30, -1)).reshape((7, *shape[1:]))
        out = interp.binned_block(x, weights[:, 20:50])
        assert (out.shape, out.dtype) == (expected.shape, expected.dtype)
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


# ---- on a simulated ALMA EB ----


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    path = tmp_path_factory.mktemp("if") / "if.ms"
    eb = simulate_interferometer(path, n_antennas=6, n_spw=2, n_chan=32, n_integrations=6,
                                 n_cycles=1, extra_columns=("MODEL_DATA",), seed=3)  # fmt: skip
    store = convert(path, path.with_suffix(".ps.zarr"))
    tree = radflow.open(store)
    parts = {n: node.to_dataset(inherit=False) for n, node in partitions(tree).items()}
    return eb, tree, parts


def _truth_bandpass(eb, parts) -> dict[int, xr.Dataset]:
    bp = eb.truth["BANDPASS"]
    out = {}
    for spw in range(bp.sizes["spw"]):
        ds = next(
            p for p in parts.values()
            if p.attrs[schema.ATTR_PARTITION_INFO][schema.PI_SPW_ID] == spw
        )  # fmt: skip
        values = bp.isel(spw=spw).transpose("antenna_name", "chan", "receptor").values
        dims = ("time", "antenna_name", "frequency", "receptor")
        out[spw] = xr.Dataset(
            {schema.CALIBRATION_PARAMETER: (dims, values[None]),
             schema.FLAG: (dims, np.zeros((1, *values.shape), bool))},
            coords={"time": [ds[schema.TIME].values[0]], "antenna_name": bp["antenna_name"].values,
                    "frequency": ds[schema.FREQUENCY].values,
                    "receptor": [str(r) for r in bp["receptor"].values]},
            attrs={schema.ATTR_CAL_TYPE: schema.CAL_TYPE_B},
        )  # fmt: skip
    return out


def test_gains_on_a_simulated_eb_match_the_truth(simulated) -> None:
    """With the true bandpass applied on the fly and the model (MODEL_DATA) divided out, G per
    integration on the calibrators equals the injected g(t) up to the refant phase."""
    eb, tree, parts = simulated
    refant = str(eb.truth["GAIN"]["antenna_name"].values[0])
    table = gain.solve(
        parts, intent="CALIBRATE", solint="int", refant=refant,
        gaintable=[_truth_bandpass(eb, parts)], antenna_positions=None,
    )  # fmt: skip
    truth = eb.truth["GAIN"]
    for spw, sol in table.items():
        sol = sol.compute()
        g = sol[schema.CALIBRATION_PARAMETER].isel(frequency=0)
        mjd = sol[schema.TIME].values + schema.MJD_UNIX_OFFSET_S  # the truth is in MS TIME
        t = truth.sel(time=mjd, method="nearest", tolerance=0.01)
        t = t.sel(antenna_name=g["antenna_name"].values).transpose(*g.dims).values
        expected = t * np.conj(t[:, :1] / np.abs(t[:, :1]))
        good = ~sol[schema.FLAG].isel(frequency=0).values
        assert good.mean() > 0.9  # only the antenna flagged in the simulator is lost
        err = np.abs(g.values - expected)[good]
        sigma = sol[schema.PARAMETER_ERROR].isel(frequency=0).values[good]
        assert np.percentile(err / sigma, 99) < 5, spw


def test_errors_scale_as_one_over_sqrt_of_the_data() -> None:
    """Four integrations per solution instead of one (constant gains): errors halve, SNR
    doubles (noise-limited)."""
    rng = np.random.default_rng(6)
    parts = {"p": _partition(1, np.repeat(_gains(rng, 1), 8, axis=0), rng)}
    one = gain.solve(parts, solint="int")[0]
    four = gain.solve(parts, solint="4s")[0]  # 8 integrations 1 s apart: two bins of 4
    ratio = (
        four[schema.PARAMETER_ERROR].values[0].mean() / one[schema.PARAMETER_ERROR].values.mean()
    )
    assert ratio == pytest.approx(0.5, rel=0.15)
    snr = four[schema.SNR].values[0].mean() / one[schema.SNR].values.mean()
    assert snr == pytest.approx(2.0, rel=0.15)


# ---- real data ----


def test_vla_calibrator_gains_flatten_the_baselines(vla_ms, tmp_path) -> None:
    """tests/data/vla_j1008_36ghz.ms (J1008+0730, 18 antennas, RR/LL): G per scan and T (after
    a phase-only G removes the R-L phase difference) run; the refant phase is zero; and the
    calibrated per-baseline vector-averaged amplitudes agree with one constant within their
    empirical errors (chi^2/dof ~ 1; the raw data have chi^2/dof ~ 1e8)."""
    tree = radflow.open(convert(vla_ms, tmp_path / "vla.ps.zarr"))
    parts = {n: node.to_dataset(inherit=False) for n, node in partitions(tree).items()}
    (ds,) = parts.values()

    def chi2_per_dof(vis: np.ndarray, flag: np.ndarray) -> float:
        """Per baseline (and pol): the mean over time and channels; its error from the scatter."""
        rows = np.where(flag, np.nan, vis).transpose(1, 3, 0, 2).reshape(-1, vis[:, 0, :, 0].size)
        n = np.isfinite(rows).sum(axis=1)
        rows = rows[n > 10]  # baselines with data
        amp = np.abs(np.nanmean(rows, axis=1))
        err = np.nanstd(rows.real, axis=1) / np.sqrt(n[n > 10])
        return float(np.mean(((amp - np.median(amp)) / err) ** 2))

    parallel = {schema.POLARIZATION: ["RR", "LL"]}
    raw = chi2_per_dof(
        ds[schema.VISIBILITY].sel(parallel).values, ds[schema.FLAG].sel(parallel).values
    )
    assert raw > 1e4
    g = gain.solve(parts, gaintype="G", solint="inf", refant="4_W01")
    sol = g[0].compute()
    assert (sol[schema.REFERENCE_ANTENNA].values == "4_W01").all()
    ref = sol[schema.CALIBRATION_PARAMETER].sel(antenna_name="4_W01").values
    assert np.abs(np.angle(ref)).max() < 1e-12
    out = applycal.apply(ds, [g])
    vis = out["VISIBILITY_CORRECTED"].sel(parallel).values
    flag = out["FLAG_CORRECTED"].sel(parallel).values
    assert chi2_per_dof(vis, flag) < 1.5
    phase = gain.solve(parts, gaintype="G", calmode="p", solint="inf", refant="4_W01")
    t = gain.solve(parts, gaintype="T", solint="inf", refant="4_W01", gaintable=[phase])
    assert list(t[0][schema.RECEPTOR].values) == ["RL"]
    out = applycal.apply(ds, [phase, t])
    flag = out["FLAG_CORRECTED"].sel(parallel).values.any(axis=3)
    stokes_i = out["VISIBILITY_CORRECTED"].sel(parallel).values.mean(axis=3)
    # T leaves the R/L amplitude ratio of each antenna: Stokes I is flat across baselines
    assert chi2_per_dof(stokes_i[..., None], flag[..., None]) < 1.5
