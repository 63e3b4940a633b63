"""Single-dish chain (Tsys, sky, sdcal, Jy/K, recipe runner) against the simulator's truth."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import xarray as xr

import radflow
from radflow import pipeline, schema
from radflow.actions import ActionError, ExecutionBlock, sky_action
from radflow.cal import interp, jyperk, sdcal, sky, tsys
from radflow.cli import main
from radflow.converters.msv2_to_store import convert
from radflow.pipeline import RecipeError, build, load_recipe, run
from radflow.step import UnitsError
from radflow.store import partitions
from radflow.testing import simulate_single_dish
from radflow.testing.datasets import make_spectrum_partition
from radflow.testing.lazy import assert_lazy, forbid_compute

ON, OFF = schema.INTENT_ON_SOURCE, schema.INTENT_OFF_SOURCE


def _info(ds):
    return ds.attrs[schema.ATTR_PARTITION_INFO]


def _select(tree, spw, antenna, intent):
    out = []
    for node in partitions(tree).values():
        ds = node.to_dataset(inherit=False)
        info = _info(ds)
        same = info[schema.PI_SPW_ID] == spw and info[schema.PI_ANTENNA] == [antenna]
        if same and intent in info[schema.PI_INTENTS]:
            out.append(ds)
    return sorted(out, key=lambda d: float(d.time[0]))


def _calibrate(tree, spw, antenna, mode="ps", **sky_kw):
    """sdcal-calibrated ON partitions of one antenna/spw."""
    sol = tsys.solve(tree, spw)
    on = _select(tree, spw, antenna, ON)
    sky_parts = _select(tree, spw, antenna, OFF) if mode == "ps" else on
    sky_sol = sky.solve(sky_parts, mode=mode, **sky_kw)
    return [sdcal.apply(ds, sky_sol, sol) for ds in on]


@pytest.fixture(scope="module")
def ps(tmp_path_factory):
    path = tmp_path_factory.mktemp("ps") / "ps.ms"
    eb = simulate_single_dish(path, mode="ps", n_science_chan=128, n_tsys_chan=64, seed=3)
    return eb, convert(eb.ms_path)


@pytest.fixture(scope="module")
def ps_noiseless(tmp_path_factory):
    path = tmp_path_factory.mktemp("psn") / "psn.ms"
    eb = simulate_single_dish(path, mode="ps", n_science_chan=128, n_tsys_chan=64, noise=False)
    return eb, convert(eb.ms_path)


@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    path = tmp_path_factory.mktemp("otf") / "otf.ms"
    eb = simulate_single_dish(
        path, mode="otfraster", n_science_chan=64, n_tsys_chan=32, raster_row_integrations=20,
        noise=False,
    )  # fmt: skip
    return eb, convert(eb.ms_path)


# ---- Tsys ----


def test_tsys_at_syscal_time_returns_stored_value(ps):
    eb, store = ps
    tree = radflow.open(store)
    tsys_spw = int(eb.truth.TSYS_SPW_FOR_SCIENCE.values[0])
    sol = tsys.solve(tree, tsys_spw)  # the Tsys spw maps to itself: identity in frequency
    knots = eb.truth.tsys_knot_time.values - schema.MJD_UNIX_OFFSET_S
    np.testing.assert_allclose(sol.time.values, knots)
    value, flag = interp.to_times(sol.CALIBRATION_PARAMETER, sol.FLAG, knots, (knots.size,))
    stored = eb.truth.SYSCAL_TSYS.sel(tsys_spw=tsys_spw)  # (time, antenna, chan, pol)
    got = value.values  # (time, antenna, frequency, receptor)
    np.testing.assert_allclose(got, stored.values, rtol=1e-6)
    assert not flag.values.any()


def test_tsys_on_science_channels_matches_truth(ps):
    eb, store = ps
    sol = tsys.solve(radflow.open(store), 1)
    truth = eb.truth.TSYS_SCIENCE.sel(science_spw=1).values
    # linear interpolation of 31 MHz Tsys channels across the 100 MHz wide atmospheric
    # feature: up to 0.6% at its peak, 0.05% elsewhere
    np.testing.assert_allclose(sol.CALIBRATION_PARAMETER.values, truth, rtol=6e-3)
    assert np.median(np.abs(sol.CALIBRATION_PARAMETER.values / truth - 1)) < 5e-4


def test_constant_tsys_stays_constant(ps):
    _, store = ps
    tree = radflow.open(store)
    for node in partitions(tree).values():
        if schema.SYSTEM_CALIBRATION_XDS in node.children:
            sub = node[schema.SYSTEM_CALIBRATION_XDS]
            sub.dataset = sub.to_dataset(inherit=False).assign(
                {schema.TSYS: lambda d: xr.full_like(d[schema.TSYS], 87.5)}
            )
    sol = tsys.solve(tree, 1)
    np.testing.assert_array_equal(sol.CALIBRATION_PARAMETER.values, 87.5)
    on = _select(tree, 1, "PM01", ON)[0]
    table = tsys.correlation_table(sol, ["XX", "YY"]).sel(antenna_name=["PM01"])
    value, _ = interp.to_times(
        table.CALIBRATION_PARAMETER, table.FLAG, on.time.values, (on.sizes["time"],)
    )
    np.testing.assert_allclose(value.values, 87.5, rtol=1e-12)


def test_tsys_nonpositive_is_flagged(ps):
    _, store = ps
    tree = radflow.open(store)
    for node in partitions(tree).values():
        if schema.SYSTEM_CALIBRATION_XDS in node.children:
            sub = node[schema.SYSTEM_CALIBRATION_XDS]
            ds = sub.to_dataset(inherit=False)
            bad = ds[schema.TSYS].copy()
            bad[{"time_system_cal": 1}] = -1.0
            sub.dataset = ds.assign({schema.TSYS: bad})
    sol = tsys.solve(tree, 1)
    assert sol.FLAG.isel(time=1).all() and not sol.FLAG.isel(time=[0, 2]).any()


def test_spw_map_picks_baseband_tsys_spw(tmp_path):
    eb = simulate_single_dish(
        tmp_path / "bb4.ms", n_basebands=4, n_science_chan=16, n_tsys_chan=16, noise=False,
        n_target_scans=1, n_on_per_scan=4,
    )  # fmt: skip
    tree = radflow.open(convert(eb.ms_path))
    windows = tsys.spectral_windows(tree)
    tsys_ids = [int(s) for s in eb.truth.tsys_spw.values]
    science = {s: windows[s] for s in (int(x) for x in eb.truth.science_spw.values)}
    mapping = tsys.spw_map(science, {t: windows[t] for t in tsys_ids})
    expected = dict(
        zip(
            eb.truth.science_spw.values.tolist(),
            eb.truth.TSYS_SPW_FOR_SCIENCE.values.tolist(),
            strict=True,
        )
    )
    assert mapping == expected
    # CASA-style list override: index = science spw
    override = [0] * 8
    assert tsys.spw_map({1: science[1]}, {t: windows[t] for t in tsys_ids}, override) == {1: 0}
    with pytest.raises(tsys.TsysError, match="spw 5"):
        tsys.spw_map({1: science[1]}, {t: windows[t] for t in tsys_ids}, {1: 5})


# ---- sky + apply: numbers against the truth ----


def _truth_spectrum(truth, spw, antenna):
    line = truth.LINE_SPECTRUM.sel(science_spw=spw).values[:, None]
    base = truth.BASELINE_SPECTRUM.sel(science_spw=spw, antenna_name=antenna)
    return line + base.transpose("science_chan", "polarization").values


def test_ps_chain_recovers_injected_lines_within_noise(ps):
    eb, store = ps
    tree = radflow.open(store)
    truth = eb.truth
    dnu_tau = 1.0 / float(truth.RADIOMETER_FACTOR_SCIENCE.sel(science_spw=1))
    line = truth.LINE_SPECTRUM.sel(science_spw=1).values
    in_line = line > 0.05 * line.max()
    for antenna in truth.antenna_name.values:
        parts = _calibrate(tree, 1, str(antenna))
        ta = xr.concat([p.SPECTRUM_CORRECTED for p in parts], "time")
        n_on = ta.sizes["time"]
        mean = ta.mean("time").isel(antenna_name=0).values  # (chan, pol)
        expected = _truth_spectrum(truth, 1, str(antenna))
        tsys_k = float(truth.TSYS_SCIENCE.sel(science_spw=1, antenna_name=antenna).mean())
        # radiometer noise of the ON average plus the OFF it is referenced to (10 s blocks)
        sigma = tsys_k / np.sqrt(dnu_tau) * np.sqrt(1.0 / n_on + 1.0 / 10)
        resid = mean - expected
        # channel residuals: Gaussian with sigma; 5 sigma over 256 samples
        assert np.abs(resid).max() < 5 * sigma, (np.abs(resid).max(), sigma)
        assert resid.std() < 1.3 * sigma
        for p in range(2):
            peak = mean[np.argmax(expected[:, p]), p]
            assert abs(peak - expected[:, p].max()) < 4 * sigma
            integrated = mean[in_line, p].sum()
            integrated_truth = expected[in_line, p].sum()
            assert abs(integrated - integrated_truth) < 4 * sigma * np.sqrt(in_line.sum())
        assert not ta.isnull().any()


def test_ps_chain_noiseless_equals_exact_prediction(ps_noiseless):
    """Without noise, Ta* must equal the calibration algebra applied to the injected truth:
    OFF blocks = mean of g(t) Tsys(t) over contiguous OFF integrations, linear in time between
    blocks; Tsys from the solution. The bandpass B cancels. What remains against the injected
    line is only the gain curvature between OFF blocks (checked separately, < 35 mK)."""
    eb, store = ps_noiseless
    tree = radflow.open(store)
    truth = eb.truth
    t_unix = truth.time_unix.values
    intent = truth.INTENT.values.astype(str)
    sol = tsys.solve(tree, 1)
    knots = sol.time.values
    for k, antenna in enumerate(truth.antenna_name.values):
        gain = truth.GAIN.sel(antenna_name=antenna).values  # (time, pol)
        tsys_sol = sol.CALIBRATION_PARAMETER.sel(antenna_name=antenna).values  # (knot, chan, rec)
        tsys_true = truth.TSYS_SCIENCE.sel(science_spw=1, antenna_name=antenna).values

        def tsys_at(t, table=tsys_sol):
            i0, i1, w1 = interp.time_weights(knots, t)
            w = w1[:, None, None]
            return (1 - w) * table[i0] + w * table[i1]

        off = np.flatnonzero(intent == OFF)
        blocks = np.split(off, np.flatnonzero(np.diff(off) > 1) + 1)
        block_t = np.array([t_unix[b].mean() for b in blocks])
        block_v = np.array(
            [(gain[b, None, :] * tsys_at(t_unix[b], tsys_true)).mean(0) for b in blocks]
        )
        signal = _truth_spectrum(truth, 1, str(antenna))
        for part in _calibrate(tree, 1, str(antenna)):
            t = part.time.values
            i = np.searchsorted(t_unix, t)
            j0, j1, w1 = interp.time_weights(block_t, t)
            w = w1[:, None, None]
            off_t = (1 - w) * block_v[j0] + w * block_v[j1]
            tsys_t = tsys_at(t)
            on = gain[i, None, :] * (tsys_at(t, tsys_true) + signal[None])
            predicted = tsys_t * (on - off_t) / off_t
            got = part.SPECTRUM_CORRECTED.isel(antenna_name=0).values
            np.testing.assert_allclose(got, predicted, atol=2e-4)  # float32 raw counts
            assert np.abs(got - signal[None]).max() < 0.035
        assert k < 2


def test_otfraster_two_plus_two_off_per_row_and_map_recovered(raster):
    eb, store = raster
    tree = radflow.open(store)
    truth = eb.truth
    for on in _select(tree, 1, "PM01", ON):
        times = on.time.values
        rows = sky.raster_rows(times)
        off = sky.otfraster_off(times, fraction=0.1)
        for row in np.unique(rows):
            idx = np.flatnonzero(rows == row)
            assert idx.size == 20
            assert off[idx].tolist() == [True] * 2 + [False] * 16 + [True] * 2
    for antenna in truth.antenna_name.values:
        for part in _calibrate(tree, 1, str(antenna), mode="otfraster", fraction=0.1):
            sel = np.isin(truth.time_unix.values, part.time.values)
            factor = truth.SOURCE_FACTOR.values[sel]
            line = truth.LINE_SPECTRUM.sel(science_spw=1).values
            expected = factor[:, None, None] * line[None, :, None]
            ta = part.SPECTRUM_CORRECTED.isel(antenna_name=0).values
            # OFF at the row edges holds the same baseline ripple as ON, so it cancels
            assert np.abs(ta - expected).max() < 0.03


def test_otfraster_refuses_short_rows():
    times = np.arange(3.0)
    with pytest.raises(sky.SkyError, match="raster row 0 has 3 integrations"):
        sky.otfraster_off(times, noff=2)


def test_otf_marks_periphery():
    x, y = np.meshgrid(np.arange(10.0), np.arange(10.0))
    offsets = np.stack([x.ravel(), y.ravel()], axis=1) * 1e-5
    off = sky.otf_off(offsets, fraction=0.3)
    ring = (x.ravel() == 0) | (x.ravel() == 9) | (y.ravel() == 0) | (y.ravel() == 9)
    np.testing.assert_array_equal(off, ring)  # 36 edge points >= 30%: one layer


# ---- invariants on small synthetic partitions ----


def _tsys_solution(partition, value=100.0):
    freq = partition.frequency.values
    dims = ("time", "antenna_name", "frequency", "receptor")
    shape = (1, 1, freq.size, 2)
    return xr.Dataset(
        {
            schema.CALIBRATION_PARAMETER: (dims, np.full(shape, value)),
            schema.FLAG: (dims, np.zeros(shape, bool)),
        },
        coords={
            "time": [float(partition.time[0])],
            "antenna_name": partition.antenna_name.values,
            "frequency": freq,
            "receptor": ["X", "Y"],
        },
        attrs={schema.ATTR_SPW_ID: 0},
    )


def _constant_in_time(ds, gain=1.0):
    spectrum = ds.SPECTRUM.isel(time=[0]).values * gain
    return ds.assign(SPECTRUM=(ds.SPECTRUM.dims, np.broadcast_to(spectrum, ds.SPECTRUM.shape)))


def test_on_equal_off_gives_zero_and_common_gain_changes_nothing():
    base = make_spectrum_partition(n_time=8, n_chan=32, seed=5, chunks={"time": 4})
    base = base.assign(SPECTRUM=np.abs(base.SPECTRUM) + 10.0)
    off = base.assign_attrs(partition_info={**_info(base), schema.PI_INTENTS: [OFF]})
    sol = _tsys_solution(base)
    zero = sdcal.apply(_constant_in_time(base), sky.solve([_constant_in_time(off)]), sol)
    np.testing.assert_array_equal(zero.SPECTRUM_CORRECTED.values, 0.0)

    on = base.isel(time=slice(0, 4))
    off_part = off.isel(time=slice(4, 8))
    one = sdcal.apply(on, sky.solve([off_part]), sol).SPECTRUM_CORRECTED.values
    scaled_on = on.assign(SPECTRUM=on.SPECTRUM * 3.7)
    scaled_off = off_part.assign(SPECTRUM=off_part.SPECTRUM * 3.7)
    two = sdcal.apply(scaled_on, sky.solve([scaled_off]), sol).SPECTRUM_CORRECTED.values
    # float32 raw counts: Tsys (100 K) x float32 rounding of ON and OFF (~1e-7 each)
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=5e-5)


def test_flags_and_nans_stay_local():
    base = make_spectrum_partition(n_time=8, n_chan=16, seed=2)
    base = base.assign(SPECTRUM=np.abs(base.SPECTRUM) + 10.0)
    off = base.isel(time=slice(4, 8))
    on = base.isel(time=slice(0, 4))
    data = on.SPECTRUM.values.copy()
    data[1, 0, 5, 0] = np.nan
    on = on.assign(SPECTRUM=(on.SPECTRUM.dims, data))
    off_data = off.SPECTRUM.values.copy()
    off_data[2, 0, 9, 1] = np.nan  # one bad OFF sample: averaged out, not spread
    off_flag = off.FLAG.values.copy()
    off_flag[2, 0, 9, 1] = True
    off = off.assign(SPECTRUM=(off.SPECTRUM.dims, off_data), FLAG=(off.FLAG.dims, off_flag))
    out = sdcal.apply(on, sky.solve([off]), _tsys_solution(on))
    expected = on.FLAG.values.copy()  # the partition comes with a few flags of its own
    expected[1, 0, 5, 0] = True
    np.testing.assert_array_equal(out.FLAG_CORRECTED.values, expected)
    values = out.SPECTRUM_CORRECTED.values
    assert np.isfinite(values).all()
    assert np.isfinite(out.WEIGHT_CORRECTED.values).all()


def test_sky_weight_factor_matches_casa_formula():
    knots = np.array([0.0, 20.0])
    t = np.array([-5.0, 5.0, 30.0])
    tau_on = np.ones((3, 1))
    exposure = np.array([[10.0, 5.0]])
    got = sdcal._weight_factor_block(t[:, None], tau_on, exposure, knots=knots)[:, 0]
    between = 1.0 / (1.0 + 1.0 / 400.0 * (15.0**2 / 10.0 + 5.0**2 / 5.0))
    np.testing.assert_allclose(got, [10.0 / 11.0, between, 5.0 / 6.0])


def _calibrate_reference(
    times, on, on_flag, on_weight, tau_on, off, off_flag, exposure, tsys_table, tsys_flag,
    *, off_knots, tsys_knots, method, mean_tsys_axis,
):  # fmt: skip
    """The plain numpy form of sdcal's kernel (as it was before it was compiled)."""
    off_t, off_t_flag = interp.interpolate_block(
        times, off, off_flag, knots=off_knots, method=method
    )
    tsys_t, tsys_t_flag = interp.interpolate_block(
        times, tsys_table, tsys_flag, knots=tsys_knots, method=method
    )
    factor = sdcal._weight_factor_block(times, tau_on, exposure, knots=off_knots)
    with np.errstate(divide="ignore", invalid="ignore"):
        ta = tsys_t * (on - off_t) / off_t
        tsys_w = tsys_t if mean_tsys_axis is None else tsys_t.mean(mean_tsys_axis, keepdims=True)
        weight = on_weight * factor / tsys_w**2
    finite = np.isfinite(ta)
    flag = on_flag | off_t_flag | tsys_t_flag | ~finite
    ta = np.where(finite, ta, 0.0).astype(on.dtype)
    weight = np.where(np.isfinite(weight), weight, 0.0).astype(on_weight.dtype)
    return ta, flag, weight


def _kernel_inputs(rng, off_knots, tsys_knots, n_ant=3, n_chan=7, n_pol=2):
    """Inputs of sdcal's kernel as xr.apply_ufunc passes them for dims (time, antenna,
    frequency, polarization): data times before, at, between (midway too) and after both
    tables' knots; NaN and zero OFF and Tsys values, flags in the data and at the knots; the
    weight broadcast (size 1) along frequency, the Tsys table along antenna."""
    knots = np.concatenate([off_knots, tsys_knots])
    midway = (off_knots[1:] + off_knots[:-1]) / 2  # nearest: a tie goes to the earlier knot
    times = np.concatenate(
        [knots, knots + 0.5, midway, [knots.min() - 7.0, knots.max() + 3.0], rng.uniform(0, 60, 12)]
    )
    n_t = times.size
    full = (n_t, n_ant, n_chan, n_pol)
    on = rng.uniform(1.0, 2.0, full).astype(np.float32)
    on[rng.random(full) < 0.03] = np.nan
    off = rng.uniform(0.5, 2.0, (n_ant, n_chan, n_pol, off_knots.size)).astype(np.float32)
    off[rng.random(off.shape) < 0.05] = 0.0  # Ta* = x / 0: flagged and 0
    off[rng.random(off.shape) < 0.05] = np.nan
    tsys = rng.uniform(50.0, 200.0, (1, n_chan, n_pol, tsys_knots.size))
    # at the first and last knots in the first polarization: one makes the channel mean
    # non-finite for all the data that uses that knot
    tsys[0, 1, 0, 0] = 0.0  # weight x / 0: 0
    tsys[0, 3, 0, -1] = np.nan
    per_time = {
        "times": times.reshape(-1, 1, 1, 1),
        "on": on,
        "on_flag": rng.random(full) < 0.1,
        "on_weight": rng.uniform(0.5, 2.0, (n_t, n_ant, 1, n_pol)).astype(np.float32),
        "tau_on": rng.uniform(1.0, 3.0, (n_t, n_ant, 1, 1)),
    }
    tables = {
        "off": off,
        "off_flag": rng.random(off.shape) < 0.2,
        "exposure": rng.uniform(2.0, 10.0, (n_ant, 1, 1, off_knots.size)),
        "tsys_table": tsys,
        "tsys_flag": rng.random((n_ant, n_chan, n_pol, tsys_knots.size)) < 0.2,
    }
    return per_time, tables


def _permuted(per_time, tables):
    # loop dims (time, polarization, frequency, antenna)
    return (
        {k: v.transpose(0, 3, 2, 1) for k, v in per_time.items()},
        {k: v.transpose(2, 1, 0, 3) for k, v in tables.items()},
    )


def _without_antenna(per_time, tables):
    # loop dims (time, frequency, polarization)
    return {k: v[:, 0] for k, v in per_time.items()}, {k: v[0] for k, v in tables.items()}


def _five_dims(per_time, tables):
    # loop dims (time, antenna, beam, frequency, polarization), so that the kernel merges axes;
    # inputs that vary along frequency get 2 beams, the others a size-1 beam axis
    return (
        {k: np.repeat(v[:, :, None], 1 if v.shape[2] == 1 else 2, 2) for k, v in per_time.items()},
        {k: np.repeat(v[:, None], 1 if v.shape[1] == 1 else 2, 1) for k, v in tables.items()},
    )


_LAYOUTS = {  # name: (make inputs from the apply_ufunc form, number of antennas, frequency axis)
    "apply_ufunc": (lambda pt, tb: (pt, tb), 3, 2),
    "permuted": (_permuted, 3, 2),
    "no_antenna": (_without_antenna, 1, 1),
    "five_dims": (_five_dims, 2, 3),
}


@pytest.mark.parametrize("layout", list(_LAYOUTS))
@pytest.mark.parametrize("weight_tsys", ["channel", "mean"])
@pytest.mark.parametrize("method", ["linear", "nearest"])
@pytest.mark.parametrize("one_knot", [False, True])
def test_calibrate_kernel_equals_numpy_reference(layout, weight_tsys, method, one_knot):
    """The compiled kernel against the plain numpy form: the same flags and Ta*, to the bit;
    the same weights (to float64 round-off for the channel mean of Tsys)."""
    rng = np.random.default_rng(7)
    off_knots = np.array([30.0]) if one_knot else np.array([10.0, 20.0, 35.0, 50.0])
    tsys_knots = np.array([25.0]) if one_knot else np.array([5.0, 30.0, 55.0])
    transform, n_ant, freq_axis = _LAYOUTS[layout]
    per_time, tables = transform(*_kernel_inputs(rng, off_knots, tsys_knots, n_ant=n_ant))
    args = (*per_time.values(), *tables.values())
    kwargs = {
        "off_knots": off_knots,
        "tsys_knots": tsys_knots,
        "method": method,
        "mean_tsys_axis": freq_axis if weight_tsys == "mean" else None,
    }
    ta, flag, weight = sdcal._calibrate_block(*args, **kwargs)
    # (the numpy form's weight lacks the axes along which none of its inputs varies)
    shape = np.broadcast_shapes(*(x.shape for x in per_time.values()))
    ta_ref, flag_ref, weight_ref = (
        np.broadcast_to(x, shape) for x in _calibrate_reference(*args, **kwargs)
    )
    for got, expected in ((ta, ta_ref), (flag, flag_ref), (weight, weight_ref)):
        assert got.shape == shape and got.dtype == expected.dtype
    np.testing.assert_array_equal(flag, flag_ref)
    np.testing.assert_array_equal(ta, ta_ref)
    if weight_tsys == "channel":
        np.testing.assert_array_equal(weight, weight_ref)
    else:
        np.testing.assert_allclose(weight, weight_ref, rtol=2e-7, atol=0)
    # the inputs reach every branch: flagged and not, non-finite results zeroed, weights 0
    assert flag.any() and not flag.all()
    assert (flag & (ta == 0) & ~per_time["on_flag"]).any()
    assert (weight == 0).any() and (weight > 0).any()


def test_steps_are_lazy(ps):
    _, store = ps
    tree = radflow.open(store)
    on = _select(tree, 1, "PM01", ON)
    off = _select(tree, 1, "PM01", OFF)
    sol = assert_lazy(tsys.solve, tree, 1)
    sky_sol = assert_lazy(sky.solve, off)
    out = assert_lazy(sdcal.apply, on[0], sky_sol, sol)
    assert out.SPECTRUM_CORRECTED.chunks is not None
    table = jyperk.from_dict({"PM01": {1: {"mean": 40.0}}})
    jy = assert_lazy(jyperk.apply, out, table, group="corrected", output="jy")
    assert jy.attrs["data_groups"]["jy"]["units"] == "Jy"
    with forbid_compute():
        eb = build(load_recipe("alma_sd"), store, tree)
    assert eb.new_groups and eb.tables


def test_sdcal_refuses_calibrated_input(ps):
    _, store = ps
    tree = radflow.open(store)
    on = _select(tree, 1, "PM01", ON)[0]
    sol = tsys.solve(tree, 1)
    sky_sol = sky.solve(_select(tree, 1, "PM01", OFF))
    out = sdcal.apply(on, sky_sol, sol)
    with pytest.raises(UnitsError, match="units 'K'"):
        sdcal.apply(out, sky_sol, sol, group="corrected", output="again")


def test_missing_off_is_a_clear_error(ps):
    _, store = ps
    tree = radflow.open(store)
    parts = {
        n: node.to_dataset(inherit=False)
        for n, node in partitions(tree).items()
        if OFF not in node.attrs[schema.ATTR_PARTITION_INFO][schema.PI_INTENTS]
    }
    eb = ExecutionBlock(path=store, tree=tree, partitions=parts)
    with pytest.raises(ActionError, match="no OBSERVE_TARGET#OFF_SOURCE data for spw 1 antenna"):
        sky_action(eb, mode="ps")


# ---- Jy/K ----


def test_jyperk_factor_then_inverse_is_identity():
    ds = make_spectrum_partition(n_time=3, n_chan=8, units="K", seed=1)
    factors = jyperk.from_records(
        [
            {"MS": "x.ms", "Antenna": "PM01", "Spwid": 0, "Polarization": "XX", "Factor": 40.0},
            {"MS": "x.ms", "Antenna": "PM01", "Spwid": 0, "Polarization": "I", "Factor": 50.0},
            {"MS": "other.ms", "Antenna": "PM01", "Spwid": 0, "Polarization": "I", "Factor": 9.0},
        ],
        ms="/data/x.ms",
    )
    jy = jyperk.apply(ds, factors, group="base", output="jy")
    xx, yy = {"polarization": "XX"}, {"polarization": "YY"}
    np.testing.assert_allclose(jy.SPECTRUM_JY.sel(xx), ds.SPECTRUM.sel(xx) * 40.0, rtol=1e-6)
    np.testing.assert_allclose(jy.SPECTRUM_JY.sel(yy), ds.SPECTRUM.sel(yy) * 50.0, rtol=1e-6)
    np.testing.assert_allclose(jy.WEIGHT_JY.sel(xx), ds.WEIGHT.sel(xx) / 1600.0, rtol=1e-6)
    # K-input expected, Jy given
    with pytest.raises(UnitsError, match="units 'Jy'"):
        jyperk.apply(jy, factors, group="jy", output="again")
    inverse = factors.copy(data=1.0 / factors.values)
    back = jyperk.apply(jy.assign_attrs(_retag(jy, "jy", "K")), inverse, group="jy", output="k")
    np.testing.assert_allclose(back.SPECTRUM_K, ds.SPECTRUM, rtol=1e-6)
    np.testing.assert_allclose(back.WEIGHT_K, ds.WEIGHT, rtol=1e-5)


def _retag(ds, group, units):
    groups = {k: dict(v) for k, v in ds.attrs["data_groups"].items()}
    groups[group]["units"] = units
    return {**ds.attrs, "data_groups": groups}


def test_jyperk_missing_factor_names_antenna_and_spw():
    ds = make_spectrum_partition(n_time=2, n_chan=4, units="K", antenna="PM03", spw_id=1)
    factors = jyperk.from_dict({"PM01": {1: 40.0}})
    with pytest.raises(jyperk.JyPerKError, match="antenna 'PM03' in spw 1"):
        jyperk.apply(ds, factors, group="base", output="jy")
    with pytest.raises(jyperk.JyPerKError, match="no spw 1"):
        jyperk.apply(ds, jyperk.from_dict({"PM03": {0: 40.0}}), group="base", output="jy")


# ---- recipe and runner ----


def test_recipe_overrides_and_validation():
    recipe = load_recipe("alma_sd", ["baseline.order=2", "sky.mode=otfraster"])
    steps = {s.step: s.params for s in recipe.steps}
    assert steps["baseline"]["order"] == 2 and steps["sky"]["mode"] == "otfraster"
    with pytest.raises(RecipeError, match="no step 'nosuch'"):
        load_recipe("alma_sd", ["nosuch.order=2"])
    with pytest.raises(RecipeError, match="no parameter"):
        load_recipe("alma_sd", ["baseline.ordr=2"])


def test_run_writes_groups_tables_atomically_and_reports_failures(ps, tmp_path, capsys):
    eb, store = ps
    good = tmp_path / "good.ps.zarr"
    shutil.copytree(store, good)
    csv = tmp_path / "jyperk.csv"
    csv.write_text(
        "MS,Antenna,Spwid,Polarization,Factor\n"
        + "".join(f"{eb.ms_path.name},{a},1,I,42.0\n" for a in eb.truth.antenna_name.values)
    )
    missing = tmp_path / "missing.ps.zarr"
    code = main(
        ["run", "alma_sd", str(good), str(missing), "--set", "baseline.order=2",
         "--set", f"jyperk.factors={csv}"]
    )  # fmt: skip
    assert code == 1  # one block failed
    out = capsys.readouterr().out
    assert "missing.ps.zarr" in out and "failed" in out
    tree = radflow.open(good)
    groups = set()
    for node in partitions(tree).values():
        info = node.attrs[schema.ATTR_PARTITION_INFO]
        if ON in info[schema.PI_INTENTS] and info[schema.PI_SPW_ID] == 1:
            groups |= set(node.attrs["data_groups"])
            assert node.attrs["data_groups"]["jy"]["units"] == "Jy"
            ratio = node.ds.SPECTRUM_JY / node.ds.SPECTRUM_BASELINED
            ok = node.ds.SPECTRUM_BASELINED != 0
            np.testing.assert_allclose(ratio.where(ok).mean().values, 42.0, rtol=1e-5)
    assert groups == {"base", "corrected", "baselined", "jy"}
    calib = tree["calibration"]
    assert any(k.startswith("tsys_spw1") for k in calib.children)
    first_table = next(k for k in calib.children if k.startswith("baseline_"))
    table = radflow.store.load_group(good, f"calibration/{first_table}")
    assert table.attrs["order"] == 2
    csv_out = tmp_path / "good.baseline.csv"
    assert csv_out.exists() and (tmp_path / "good.baseline.txt").exists()
    n_spectra = sum(
        node.ds.sizes["time"] * 2
        for node in partitions(tree).values()
        if ON in node.attrs[schema.ATTR_PARTITION_INFO][schema.PI_INTENTS]
    )
    rows = [r for r in csv_out.read_text().splitlines() if r and not r.startswith("#")]
    assert len(rows) == n_spectra
    assert not list(tmp_path.glob(".good*"))  # no temporary left behind


def test_run_failure_leaves_store_untouched(ps, tmp_path, monkeypatch):
    _, store = ps
    target = tmp_path / "t.ps.zarr"
    shutil.copytree(store, target)
    before = sorted(p.relative_to(target) for p in target.rglob("*"))
    recipe = load_recipe("alma_sd", ["sky.mode=otfraster", "sky.noff=30"])  # rows too short
    results = run(recipe, [target], progress=False)
    assert results[0].status == "failed" and "raster row 0 has 10 integrations" in results[0].error
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before
    assert not list(tmp_path.glob(".t.ps.zarr*"))

    # a failure while computing (a worker dies, a disk fills) leaves the store as it was too
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pipeline, "_compute", broken)
    with pytest.raises(OSError, match="disk full"):
        run(load_recipe("alma_sd"), [target], progress=False)
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before
    assert not list(tmp_path.glob(".t.ps.zarr*"))


def test_export_calibrated_spectra_to_ms(ps, tmp_path):
    """`radflow export --group jy` puts the ON spectra in CORRECTED_DATA at their rows; rows
    the chain did not calibrate get a copy of FLOAT_DATA, as CASA initialises the column."""
    from casacore.tables import table

    eb, store = ps
    target = tmp_path / "x.ps.zarr"
    shutil.copytree(store, target)
    ms = tmp_path / "x.ms"
    shutil.copytree(eb.ms_path, ms)
    factors = {str(a): {1: 40.0} for a in eb.truth.antenna_name.values}
    recipe = load_recipe("alma_sd", [f"jyperk.factors={factors}"])
    assert run(recipe, [target], progress=False)[0].status == "done"
    assert main(["export", str(target), "--group", "jy", "--to", str(ms)]) == 0
    with table(str(ms), ack=False) as t:
        written = 0
        for node in partitions(radflow.open(target)).values():
            ds = node.ds
            rows = ds[schema.MSV2_ROW].values.ravel()
            if "jy" in node.attrs["data_groups"]:
                expected = ds.SPECTRUM_JY.values[:, 0]  # (time, chan, pol), as casacore cells
                cells = np.stack([t.getcell("CORRECTED_DATA", int(r)) for r in rows])
                np.testing.assert_array_equal(cells.real, expected)
                written += rows.size
            else:
                cells = np.stack([t.getcell("CORRECTED_DATA", int(r)) for r in rows])
                raw = np.stack([t.getcell("FLOAT_DATA", int(r)) for r in rows])
                np.testing.assert_array_equal(cells.real, raw)
        assert written > 0
