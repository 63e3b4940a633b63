"""The baseline step (CASA sdbaseline): fits, clipping, line finder, lazy step, csv/text tables."""

from __future__ import annotations

import csv

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from scipy.special import ndtri

from radflow import schema, step
from radflow.cal import baseline as bl
from radflow.converters.baseline_table import format_csv, format_text, write_baseline_tables
from radflow.testing.datasets import make_spectrum_partition
from radflow.testing.lazy import assert_lazy

# Noise-free fits must reproduce their input to float64 round-off: max |model - y| relative to
# max |y| below this.
ROUNDOFF = 1e-10


def _rel_err(model: np.ndarray, truth: np.ndarray) -> float:
    return float(np.max(np.abs(model - truth)) / np.max(np.abs(truth)))


# ---- numerics: exact fits ----


def test_poly_of_fitted_order_is_exact() -> None:
    n = 200
    u = np.arange(n) / (n - 1)
    truth = 1.0 + 2.0 * u - 3.0 * u**2 + 0.7 * u**4 - 0.5 * u**5
    fit = bl.fit_spectrum(truth, np.ones(n, bool), blfunc="poly", order=5)
    assert _rel_err(fit.model, truth) < ROUNDOFF
    np.testing.assert_allclose(fit.coefficients, [1.0, 2.0, -3.0, 0.0, 0.7, -0.5], atol=1e-8)
    assert fit.rms < 1e-12 and fit.nclipped == 0 and fit.mask_used.all()


def test_chebyshev_of_fitted_order_is_exact() -> None:
    n = 150
    v = 2 * np.arange(n) / (n - 1) - 1
    coef = [0.5, -0.2, 0.3, 0.05]
    truth = np.polynomial.chebyshev.chebval(v, coef)
    mask = np.ones(n, bool)
    mask[40:70] = False  # a gap changes nothing for an exact model
    fit = bl.fit_spectrum(truth, mask, blfunc="chebyshev", order=3)
    assert _rel_err(fit.model, truth) < ROUNDOFF
    np.testing.assert_allclose(fit.coefficients, coef, atol=1e-12)
    assert not fit.mask_used[40:70].any()


def test_sinusoid_at_chosen_wave_numbers_is_exact() -> None:
    n = 128
    phase = 2 * np.pi * np.arange(n) / n
    truth = 2.0 + 0.5 * np.sin(3 * phase) + 0.3 * np.cos(7 * phase) - 0.2 * np.sin(7 * phase)
    fit = bl.fit_spectrum(
        truth, np.ones(n, bool), blfunc="sinusoid", addwn="0-8", rejwn=[5], applyfft=False
    )
    assert fit.wave_numbers == (0, 1, 2, 3, 4, 6, 7, 8)
    assert _rel_err(fit.model, truth) < ROUNDOFF
    labels = bl.coefficient_labels("sinusoid", 0, 0, fit.wave_numbers)
    coef = dict(zip(labels, fit.coefficients, strict=True))
    assert coef["a0"] == pytest.approx(2.0, abs=1e-12)
    assert coef["s3"] == pytest.approx(0.5, abs=1e-12)
    assert coef["c7"] == pytest.approx(0.3, abs=1e-12)
    assert coef["s7"] == pytest.approx(-0.2, abs=1e-12)
    assert coef["c1"] == pytest.approx(0.0, abs=1e-12)
    # applyfft selects exactly the wave numbers present (addwn=[0] keeps the constant)
    fft = bl.fit_spectrum(truth, np.ones(n, bool), blfunc="sinusoid", fftthresh=3.0)
    assert fft.wave_numbers == (0, 3, 7)
    assert _rel_err(fft.model, truth) < ROUNDOFF
    top = bl.fit_spectrum(truth, np.ones(n, bool), blfunc="sinusoid", fftthresh="top1")
    assert top.wave_numbers == (0, 3)  # |A_3| = 0.5 > |A_7| = sqrt(0.3^2 + 0.2^2)


def test_cspline_with_knots_at_piece_boundaries_is_exact() -> None:
    n, npiece = 100, 3
    u = np.arange(n) / (n - 1)
    mask = np.ones(n, bool)
    mask[30:50] = False
    # knots split the 80 unmasked channels into 3 equal-count groups
    chans = np.flatnonzero(mask)
    knots = chans[[80 // 3, 2 * 80 // 3]] / (n - 1)
    assert list(chans[[26, 53]]) == [26, 73]
    cubic = [1.0, -1.0, 2.0, -0.5]
    truth = np.polynomial.polynomial.polyval(u, cubic)
    truth += 4.0 * np.clip(u - knots[0], 0, None) ** 3 - 6.0 * np.clip(u - knots[1], 0, None) ** 3
    fit = bl.fit_spectrum(truth, mask, blfunc="cspline", npiece=npiece)
    assert _rel_err(fit.model, truth) < ROUNDOFF
    assert fit.coefficients.shape == (4 * npiece,)
    pieces = fit.coefficients.reshape(npiece, 4)
    np.testing.assert_allclose(pieces[0], cubic, atol=1e-9)
    # each piece's cubic reproduces the data on its own channel range
    bounds = [0, 26, 73, n]
    for p in range(npiece):
        seg = slice(bounds[p], bounds[p + 1])
        model = np.polynomial.polynomial.polyval(u[seg], pieces[p])
        np.testing.assert_allclose(model, truth[seg], atol=1e-9)
    # the last piece's cubic coefficient is the sum of the jumps
    assert pieces[2][3] == pytest.approx(-0.5 + 4.0 - 6.0, abs=1e-8)


def test_too_few_channels_gives_nan_not_an_exception() -> None:
    fit = bl.fit_spectrum(np.ones(20), np.arange(20) < 3, blfunc="poly", order=5)
    assert np.isnan(fit.model).all() and np.isnan(fit.coefficients).all()
    assert fit.coefficients.shape == (6,) and np.isnan(fit.rms)


# ---- clipping ----


def test_single_spike_is_clipped_and_nothing_else() -> None:
    n = 128
    u = np.arange(n) / (n - 1)
    rng = np.random.default_rng(3)
    # uniform noise of std 0.01 never exceeds 1.8 sigma: only the spike can pass 3 sigma
    y = 1.0 + 2.0 * u - u**2 + rng.uniform(-0.01 * np.sqrt(3), 0.01 * np.sqrt(3), n)
    y[40] += 1.0
    fit = bl.fit_spectrum(y, np.ones(n, bool), order=2, clipthresh=3.0, clipniter=2)
    assert fit.nclipped == 1
    assert np.flatnonzero(~fit.mask_used).tolist() == [40]
    spike_free = np.ones(n, bool)
    spike_free[40] = False
    reference = bl.fit_spectrum(y, spike_free, order=2)
    np.testing.assert_allclose(fit.model, reference.model, rtol=0, atol=1e-13)
    np.testing.assert_allclose(fit.coefficients, reference.coefficients, rtol=0, atol=1e-12)
    assert fit.rms == pytest.approx(reference.rms, rel=1e-12)
    assert fit.rms == pytest.approx(0.01, rel=0.15)
    # without clipping the spike pulls the fit and inflates the rms
    unclipped = bl.fit_spectrum(y, np.ones(n, bool), order=2, clipniter=0)
    assert unclipped.nclipped == 0 and unclipped.rms > 5 * fit.rms


# ---- line finder ----

N_LINE, SIGMA = 512, 0.05


def _line_spectrum(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    i = np.arange(N_LINE)
    u = i / (N_LINE - 1)
    truth = 1.0 + 0.5 * u - 0.8 * u**2 + 0.3 * u**3
    lines = 1.0 * np.exp(-0.5 * ((i - 150) / 4.0) ** 2) - 0.6 * np.exp(
        -0.5 * ((i - 380) / 6.0) ** 2
    )
    noise = np.random.default_rng(seed).normal(0.0, SIGMA, N_LINE)
    return truth, lines, noise


def test_mad80_estimates_gaussian_sigma() -> None:
    x = np.random.default_rng(0).normal(3.0, 2.0, 50_000)
    assert bl.mad80(x) == pytest.approx(2.0, rel=0.02)
    x[:5000] += 100.0  # 10 % outliers: std grows 15-fold, mad80 by < 25 %
    assert x.std() > 25.0
    assert bl.mad80(x) == pytest.approx(2.0, rel=0.25)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_auto_mask_finds_lines_and_recovers_baseline(seed: int) -> None:
    truth, lines, noise = _line_spectrum(seed)
    y = truth + lines + noise
    found = bl.find_lines(y, np.ones(N_LINE, bool))
    strong = np.abs(lines) > 5 * SIGMA
    assert strong.sum() > 20
    assert found[strong].all()  # every channel with a > 5 sigma line is masked
    # and nothing far from the lines (> 5 line widths) is
    far = (np.abs(np.arange(N_LINE) - 150) > 20) & (np.abs(np.arange(N_LINE) - 380) > 30)
    assert not found[far].any()
    order = 3
    fit = bl.fit_spectrum(y, ~found, order=order)
    # the fit error of a least-squares poly is ~ sigma sqrt((order+1)/n_fit), largest at the
    # band edges ~ sigma (order+1)/sqrt(n_fit); allow 3 times that
    bound = 3 * SIGMA * (order + 1) / np.sqrt(fit.mask_used.sum())
    assert np.max(np.abs(fit.model - truth)) < bound
    assert fit.rms == pytest.approx(SIGMA, rel=0.15)


@pytest.mark.parametrize("seed", [10, 11, 12, 13])
def test_auto_mask_finds_nothing_in_pure_noise(seed: int) -> None:
    truth, _, noise = _line_spectrum(seed)
    assert not bl.find_lines(truth + noise, np.ones(N_LINE, bool)).any()


def test_find_lines_honours_edge_and_mask() -> None:
    truth, lines, noise = _line_spectrum(1)
    y = truth + lines + noise
    found = bl.find_lines(y, np.arange(N_LINE) < 300, edge=(0, 0))
    assert found[140:160].all() and not found[300:].any()
    found = bl.find_lines(y, np.ones(N_LINE, bool), edge=(200, 100))
    assert not found[:200].any() and not found[-100:].any() and found[375:386].all()


# ---- the lazy step ----


def _partition(n_time: int = 4, n_chan: int = 48, scan: int = 1, seed: int = 0) -> xr.Dataset:
    return make_spectrum_partition(
        n_time=n_time, n_chan=n_chan, units=schema.UNITS_KELVIN, scan=scan, seed=seed
    )


def _with(ds: xr.Dataset, name: str, values: np.ndarray) -> xr.Dataset:
    chunks = ds[name].chunks
    return ds.assign({name: ds[name].copy(data=da.from_array(values, chunks=chunks))})


def _kernel_reference(ds: xr.Dataset, **kwargs) -> dict[str, np.ndarray]:
    """Run fit_spectrum/find_lines directly on every spectrum, as the step should."""
    auto = kwargs.pop("maskmode", "list") == "auto"
    data = ds[schema.SPECTRUM].values
    flag = ds[schema.FLAG].values
    n_t, n_a, n_c, n_p = data.shape
    out = {
        "model": np.full(data.shape, np.nan),
        "mask": np.zeros(data.shape, bool),
        "rms": np.full((n_t, n_a, n_p), np.nan),
        "nclip": np.zeros((n_t, n_a, n_p), int),
        "coef": [],
    }
    for t, a, p in np.ndindex(n_t, n_a, n_p):
        y = data[t, a, :, p].astype(np.float64)
        usable = ~flag[t, a, :, p] & np.isfinite(y)
        mask = usable & ~bl.find_lines(y, usable) if auto else usable
        fit = bl.fit_spectrum(y, mask, **kwargs)
        out["model"][t, a, :, p] = fit.model
        out["mask"][t, a, :, p] = fit.mask_used
        out["rms"][t, a, p] = fit.rms
        out["nclip"][t, a, p] = fit.nclipped
        out["coef"].append(fit.coefficients)
    out["coef"] = np.array(out["coef"]).reshape(n_t, n_a, n_p, -1)
    return out


def test_step_is_registered() -> None:
    assert step.get_step("baseline") is bl.subtract


@pytest.mark.parametrize("maskmode", ["list", "auto"])
def test_step_is_lazy_and_matches_the_kernel(maskmode: str) -> None:
    ds = _partition()
    kwargs = dict(blfunc="chebyshev", order=2, clipniter=1)
    out, table = assert_lazy(bl.subtract, ds, group="base", maskmode=maskmode, **kwargs)
    assert isinstance(out["SPECTRUM_BASELINED"].data, da.Array)
    assert all(isinstance(v.data, da.Array) for v in table.data_vars.values())
    group = step.get_data_group(out, schema.GROUP_BASELINED)
    assert group.units == "K" and out["SPECTRUM_BASELINED"].attrs["units"] == "K"
    assert out.attrs["data_groups"]["baselined"]["weight"] == schema.WEIGHT  # shared
    assert out["SPECTRUM_BASELINED"].dtype == np.float32
    assert out["SPECTRUM_BASELINED"].dims == ds[schema.SPECTRUM].dims

    assert dict(table[schema.BL_COEFFICIENTS].sizes) == {
        "time": 4,
        "antenna_name": 1,
        "polarization": 2,
        "coefficient": 3,
    }
    assert table[schema.BL_COEFFICIENTS].dims == (
        "time",
        "antenna_name",
        "polarization",
        "coefficient",
    )
    assert table[schema.BL_RMS].dims == ("time", "antenna_name", "polarization")
    assert table[schema.BL_FIT_MASK].dims == ds[schema.SPECTRUM].dims
    assert table[schema.BL_FIT_MASK].dtype == bool
    assert list(table[schema.COEFFICIENT].values) == ["c0", "c1", "c2"]
    assert table.attrs["blfunc"] == "chebyshev" and table.attrs["maskmode"] == maskmode
    assert table.attrs[schema.ATTR_PARTITION_INFO] == ds.attrs[schema.ATTR_PARTITION_INFO]

    ref = _kernel_reference(ds, maskmode=maskmode, **kwargs)
    computed = table.compute()
    # the step fits many spectra per BLAS call: equal to the one-spectrum form to roundoff
    np.testing.assert_allclose(computed[schema.BL_COEFFICIENTS].values, ref["coef"], rtol=1e-12)
    np.testing.assert_allclose(computed[schema.BL_RMS].values, ref["rms"], rtol=1e-12)
    np.testing.assert_array_equal(computed[schema.BL_N_CLIPPED].values, ref["nclip"])
    np.testing.assert_array_equal(computed[schema.BL_FIT_MASK].values, ref["mask"])
    expected = ds[schema.SPECTRUM].values - ref["model"]
    np.testing.assert_allclose(out["SPECTRUM_BASELINED"].values, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out["FLAG_BASELINED"].values, ds[schema.FLAG].values)
    assert np.isfinite(computed[schema.BL_RMS].values).all()


def test_fully_flagged_spectrum_and_nan_samples_stay_local() -> None:
    ds = _partition()
    flag = ds[schema.FLAG].values.copy()
    flag[1, 0, :, 0] = True  # spectrum (time 1, XX) fully flagged
    data = ds[schema.SPECTRUM].values.copy()
    data[2, 0, 5, 1] = np.nan  # one NaN sample in (time 2, YY), not flagged
    ds = _with(_with(ds, schema.FLAG, flag), schema.SPECTRUM, data)
    out, table = assert_lazy(bl.subtract, ds, group="base", order=3)
    out, table = out.compute(), table.compute()

    coef = table[schema.BL_COEFFICIENTS].values
    rms = table[schema.BL_RMS].values
    assert np.isnan(coef[1, 0, 0]).all() and np.isnan(rms[1, 0, 0])
    bad = np.zeros(rms.shape, bool)
    bad[1, 0, 0] = True
    assert np.isfinite(coef[~bad]).all() and np.isfinite(rms[~bad]).all()

    out_flag = out["FLAG_BASELINED"].values
    out_data = out["SPECTRUM_BASELINED"].values
    assert out_flag[1, 0, :, 0].all()
    assert np.isnan(out_data[1, 0, :, 0]).all()
    assert out_flag[2, 0, 5, 1] and not table[schema.BL_FIT_MASK].values[2, 0, 5, 1]
    # everything else: flags unchanged and data finite
    other = np.ones(out_flag.shape, bool)
    other[1, 0, :, 0] = False
    other[2, 0, 5, 1] = False
    np.testing.assert_array_equal(out_flag[other], flag[other])
    assert np.isfinite(out_data[other]).all()
    # the NaN spectrum equals a fit with that channel flagged
    y = data[2, 0, :, 1].astype(np.float64)
    mask = ~flag[2, 0, :, 1]
    mask[5] = False
    ref = bl.fit_spectrum(y, mask, order=3)
    np.testing.assert_allclose(coef[2, 0, 1, :4], ref.coefficients, rtol=1e-12)


def test_linefree_ranges_and_edge_are_honoured() -> None:
    n_chan = 48
    ds = _partition(n_chan=n_chan)
    # a strong "line" outside the fit ranges must not affect the fit
    data = ds[schema.SPECTRUM].values.copy()
    data[:, :, 20:26, :] += 50.0
    flag = np.zeros(data.shape, bool)
    ds = _with(_with(ds, schema.SPECTRUM, data), schema.FLAG, flag)
    linefree = [[0, 17], [28, 47]]
    out, table = bl.subtract(ds, group="base", order=1, linefree=linefree, edge=(3, 2))
    expected_mask = np.zeros(n_chan, bool)
    expected_mask[3:18] = True
    expected_mask[28:46] = True
    fit_mask = table[schema.BL_FIT_MASK].values
    assert (fit_mask == expected_mask[None, None, :, None]).all()
    assert table.attrs["linefree"] == linefree and table.attrs["edge"] == [3, 2]
    ref = bl.fit_spectrum(data[0, 0, :, 0], expected_mask, order=1)
    np.testing.assert_allclose(
        table[schema.BL_COEFFICIENTS].values[0, 0, 0], ref.coefficients, rtol=1e-12
    )
    resid = out["SPECTRUM_BASELINED"].values
    assert np.abs(resid[:, :, expected_mask, :]).max() < 1.0  # uniform [1, 2) data minus a fit
    assert resid[:, :, 20:26, :].min() > 45.0


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"blfunc": "spline"}, "blfunc"),
        ({"order": -1}, "order"),
        ({"npiece": 0}, "npiece"),
        ({"clipthresh": 0.0}, "clipthresh"),
        ({"clipniter": -1}, "clipniter"),
        ({"maskmode": "interact"}, "maskmode"),
        ({"linefree": [[0, 10], [20, 48]]}, "linefree"),
        ({"linefree": [[-1, 10]]}, "linefree"),
        ({"linefree": [[10, 5]]}, "linefree"),
        ({"edge": (30, 18)}, "edge"),
        ({"edge": (-1, 0)}, "edge"),
        ({"thresh": 0}, "thresh"),
        ({"avg_limit": 0}, "avg_limit"),
        ({"minwidth": 0}, "minwidth"),
        ({"blfunc": "sinusoid", "addwn": [25]}, "addwn"),
        ({"blfunc": "sinusoid", "fftthresh": "bogus"}, "fftthresh"),
    ],
)
def test_bad_parameters_name_parameter_and_partition(kwargs: dict, parameter: str) -> None:
    ds = _partition(n_chan=48, scan=7)
    with pytest.raises(ValueError, match=parameter) as err:
        bl.subtract(ds, group="base", **kwargs)
    assert "spw 0 scan 7" in str(err.value) and "antenna PM01" in str(err.value)


def test_wrong_units_are_refused() -> None:
    ds = make_spectrum_partition(units=schema.UNITS_RAW)
    with pytest.raises(step.UnitsError, match="baseline"):
        bl.subtract(ds, group="base")


def test_sinusoid_coefficients_land_in_wave_number_slots() -> None:
    ds = _partition(n_time=2, n_chan=32)
    _, table = bl.subtract(ds, group="base", blfunc="sinusoid", addwn=[0, 2], applyfft=False)
    assert list(table[schema.COEFFICIENT].values) == ["a0", "s2", "c2"]
    _, table = bl.subtract(ds, group="base", blfunc="sinusoid", addwn=[0], rejwn=">10")
    labels = list(table[schema.COEFFICIENT].values)
    assert labels[0] == "a0" and labels[-2:] == ["s10", "c10"] and len(labels) == 21
    coef = table[schema.BL_COEFFICIENTS].values
    assert np.isfinite(coef[..., 0]).all()  # the constant is always fitted


# ---- csv / text tables ----


def test_write_baseline_tables_round_trip(tmp_path) -> None:
    tables = [
        bl.subtract(_partition(n_time=3, scan=s, seed=s), group="base", order=2, clipniter=1)[1]
        for s in (1, 2)
    ]
    paths = write_baseline_tables(tables, tmp_path / "eb1.baseline")
    assert [p.name for p in paths] == ["eb1.baseline.csv", "eb1.baseline.txt"]
    assert all(p.exists() for p in paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eb1.baseline.csv", "eb1.baseline.txt"]

    n_spectra = 2 * 3 * 1 * 2
    lines = paths[0].read_text().splitlines()
    assert lines[0].startswith("#")
    rows = list(csv.reader(line for line in lines if not line.startswith("#")))
    assert len(rows) == n_spectra
    computed = [t.compute() for t in tables]
    expected_rms = np.concatenate([t[schema.BL_RMS].values.ravel() for t in computed])
    expected_coef = np.concatenate(
        [t[schema.BL_COEFFICIENTS].values.reshape(-1, 3) for t in computed]
    )
    np.testing.assert_array_equal([float(r[-4]) for r in rows], expected_rms)
    np.testing.assert_array_equal([[float(c) for c in r[8:-4]] for r in rows], expected_coef)
    assert [r[0] for r in rows] == ["1"] * 6 + ["2"] * 6
    assert {r[6] for r in rows} == {"poly"} and {r[7] for r in rows} == {"2"}
    assert [int(r[-1]) for r in rows] == [
        int(v) for t in computed for v in t[schema.BL_N_CLIPPED].values.ravel()
    ]
    # fit ranges in CASA spw syntax reproduce the fit mask
    mask = computed[0][schema.BL_FIT_MASK].values[0, 0, :, 0]
    rebuilt = np.zeros(mask.size, bool)
    for part in rows[0][5].split(";"):
        start, end = (int(c) for c in part.split("~"))
        rebuilt[start : end + 1] = True
    np.testing.assert_array_equal(rebuilt, mask)

    text = paths[1].read_text()
    assert text.count("Scan[") == n_spectra
    assert text.count("Function = poly  Order = 2") == n_spectra
    assert f"rms = {expected_rms[0]:.9g} K" in text
    assert format_csv(tables[0]).count("\n") == 1 + 6
    assert format_text(tables[1]).count("Scan[2]") == 6


def test_write_baseline_tables_takes_tables_one_at_a_time_and_writes_all_or_nothing(
    tmp_path,
) -> None:
    tables = [
        bl.subtract(_partition(n_time=3, scan=s, seed=s), group="base", order=1)[1] for s in (1, 2)
    ]
    stem = tmp_path / "eb1.baseline"
    taken = []

    def one_by_one():
        for t in tables:
            taken.append(t)
            yield t

    paths = write_baseline_tables(one_by_one(), stem)
    assert len(taken) == 2
    expected = [p.read_text() for p in paths]
    assert expected == [p.read_text() for p in write_baseline_tables(tables, stem)]

    def failing():
        yield tables[0]
        raise RuntimeError("the second table could not be read")

    with pytest.raises(RuntimeError, match="second table"):
        write_baseline_tables(failing(), stem)
    # the earlier files are untouched and no temporary file is left
    assert [p.read_text() for p in paths] == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eb1.baseline.csv", "eb1.baseline.txt"]


def test_write_baseline_tables_rejects_unknown_format(tmp_path) -> None:
    with pytest.raises(ValueError, match="fits"):
        write_baseline_tables([], tmp_path / "x", formats=("fits",))


def test_frequency_chunks_are_merged_for_the_fit() -> None:
    ds = make_spectrum_partition(
        n_time=4, n_chan=48, units=schema.UNITS_KELVIN, chunks={"time": 2, "frequency": 16}
    )
    assert len(ds[schema.SPECTRUM].chunks[2]) == 3
    out, table = assert_lazy(bl.subtract, ds, group="base", order=2)
    ref = _kernel_reference(ds, order=2)
    np.testing.assert_allclose(table[schema.BL_COEFFICIENTS].values, ref["coef"], rtol=1e-12)
    expected = ds[schema.SPECTRUM].values - ref["model"]
    np.testing.assert_allclose(out["SPECTRUM_BASELINED"].values, expected, rtol=1e-6, atol=1e-6)


# ---- the batched kernels against a plain one-spectrum lstsq oracle ----


def _oracle_fit(
    y: np.ndarray, mask: np.ndarray, blfunc: str, order: int, npiece: int, clipniter: int
) -> tuple[np.ndarray, int, np.ndarray]:
    """Model, nclipped and final mask by numpy lstsq on the reported basis (SVD per spectrum,
    knots from the mask of each iteration): an implementation independent of the kernels'."""
    n = y.size
    u = np.arange(n) / (n - 1)
    current = mask.copy()
    nclipped = 0
    for iteration in range(clipniter + 1):
        if blfunc == "poly":
            design = np.vander(u, order + 1, increasing=True)
        else:  # cspline
            chans = np.flatnonzero(current)
            knots = chans[[(j * chans.size) // npiece for j in range(1, npiece)]] / (n - 1)
            design = np.stack(
                [u**0, u, u**2, u**3] + [np.clip(u - t, 0, None) ** 3 for t in knots], axis=1
            )
        coef, *_ = np.linalg.lstsq(design[current], y[current], rcond=None)
        model = design @ coef
        if iteration == clipniter:
            break
        r = (y - model)[current]
        clip = current & (np.abs(y - model - r.mean()) > 3.0 * r.std())
        if clip.sum() == 0 or current.sum() - clip.sum() < design.shape[1]:
            break
        current &= ~clip
        nclipped += int(clip.sum())
    return model, nclipped, current


@pytest.mark.parametrize(
    ("blfunc", "order", "npiece"), [("poly", 1, 1), ("poly", 9, 1), ("cspline", 0, 6)]
)
def test_batched_fits_equal_a_per_spectrum_lstsq(blfunc: str, order: int, npiece: int) -> None:
    """Many spectra at once (normal equations, batched) = numpy lstsq one by one, with random
    gaps and clipping; order 9 would lose digits in a plain power-basis normal equation."""
    rng = np.random.default_rng(7)
    n_rows, n = 40, 300
    u = np.arange(n) / (n - 1)
    y = (
        np.cumsum(rng.normal(0, 0.05, (n_rows, n)), axis=1)
        + 3 * u
        + rng.normal(0, 0.1, (n_rows, n))
    )
    y[:, 100] += 5.0  # a spike for the clipper
    mask = rng.random((n_rows, n)) > 0.2
    mask[3, :] = False  # a fully masked spectrum
    mask[5, 1:] = False  # too few channels left for the fit
    data = y[:, None, :, None]  # (time, antenna, frequency, polarization)
    flag = ~mask[:, None, :, None]
    kwargs = dict(blfunc=blfunc, order=order, npiece=npiece, addwn=(0,), rejwn=(),
                  applyfft=False, fftthresh=3.0, clipthresh=3.0, clipniter=2)  # fmt: skip
    n_coef = bl._n_reported(blfunc, order, npiece, [])
    baselined, flag_out, used, coef, rms, nclip = bl._fit_block(
        np.moveaxis(data, 2, -1), np.moveaxis(flag, 2, -1), base_mask=np.ones(n, bool),
        edge=(0, 0), auto=False, finder={}, fit_kwargs=kwargs, slots={}, n_coef=n_coef,
    )  # fmt: skip
    model = y - baselined.reshape(n_rows, n)
    used, flag_out = used.reshape(n_rows, n), flag_out.reshape(n_rows, n)
    np.testing.assert_array_equal(flag_out, ~mask | np.isnan(rms.reshape(n_rows))[:, None])
    rms, nclip = rms.reshape(n_rows), nclip.reshape(n_rows)
    for s in range(n_rows):
        if s in (3, 5):
            assert np.isnan(model[s]).all() and np.isnan(rms[s]) and nclip[s] == 0
            continue
        ref_model, ref_nclip, ref_mask = _oracle_fit(y[s], mask[s], blfunc, order, npiece, 2)
        np.testing.assert_allclose(model[s], ref_model, atol=1e-9 * np.abs(ref_model).max())
        assert nclip[s] == ref_nclip and (used[s] == ref_mask).all()
        assert rms[s] == pytest.approx((y[s] - ref_model)[ref_mask].std(), rel=1e-9)
    assert nclip.max() >= 1  # the spike was clipped somewhere


def test_batched_line_finder_equals_one_spectrum_at_a_time() -> None:
    """Spectra that converge after different numbers of finder rounds give, searched together,
    exactly what each gives alone."""
    rows = []
    for seed in range(12):
        truth, lines, noise = _line_spectrum(seed)
        rows.append(truth + lines * (seed % 3) + noise)  # no lines, lines, stronger lines
    y = np.array(rows)
    search = np.ones(y.shape, bool)
    search[4, ::3] = False
    together = bl._find_lines_rows(y, search, thresh=5.0, avg_limit=4, minwidth=4)
    alone = np.array([bl.find_lines(y[s], search[s]) for s in range(len(rows))])
    np.testing.assert_array_equal(together, alone)
    assert together[1].any() and not together[0].any()


# ---- the compiled line finder against a plain numpy reference ----

# E[|X| ; |X| in its lowest 80 %] for a unit Gaussian X: 2 (phi(0) - phi(q90)) / 0.8.
_Q90 = float(ndtri(0.9))
MAD80_NORM = 2.0 * (1.0 - np.exp(-0.5 * _Q90**2)) / np.sqrt(2.0 * np.pi) / 0.8


def _reference_mad80(x: np.ndarray) -> float:
    """mad80 by sorting: the mean of the ceil(0.8 n) smallest |x - median| over MAD80_NORM."""
    dev = np.sort(np.abs(x - np.median(x)))
    keep = max(1, int(np.ceil(0.8 * x.size)))
    return float(dev[:keep].mean() / MAD80_NORM)


def _runs_reference(row: np.ndarray, minwidth: int) -> np.ndarray:
    """Runs of True at least `minwidth` long, found one by one."""
    out = np.zeros_like(row)
    start = None
    for i, value in enumerate(list(row) + [False]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            if i - start >= minwidth:
                out[start:i] = True
            start = None
    return out


def _reference_find_lines(
    y: np.ndarray, search: np.ndarray, thresh: float, avg_limit: int, minwidth: int
) -> np.ndarray:
    """The line finder of the module docstring, one spectrum, written plainly: SVD lstsq for
    the detrending, sorts for mad80, a box at a time (`y` finite, `search` the channels)."""
    n_chan = y.size
    v = 2.0 * np.arange(n_chan) / max(n_chan - 1, 1) - 1.0
    binnings = [b for b in (1, 4, 16, 64, 256) if b <= avg_limit]
    lines = np.zeros(n_chan, bool)
    if search.sum() < 3:
        return lines
    shifted = y - y[search][0]  # as the kernel: a constant spectrum leaves exactly 0
    for _ in range(5):
        base = search & ~lines
        n = int(base.sum())
        if n < 3:
            break
        design = np.polynomial.chebyshev.chebvander(v, min(5, n // 8))
        coef = np.linalg.lstsq(design[base], shifted[base], rcond=None)[0]
        resid = shifted - design @ coef
        sigma = _reference_mad80(resid[base])
        if not sigma > 0:
            break
        found = np.zeros(n_chan, bool)
        for b in binnings:
            candidate = np.zeros(n_chan, bool)
            for start in range(0, n_chan, b):
                box = slice(start, start + b)
                count = search[box].sum()
                total = resid[box][search[box]].sum()
                if count > 0 and abs(total) / np.sqrt(count) > thresh * sigma:
                    candidate[box] = search[box]
            found |= _runs_reference(candidate, minwidth)
        if (found == lines).all():
            break
        lines = found
    return lines


def _varied_spectra(n_chan: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(spectrum, mask) pairs: sloped and curved baselines, no lines to strong wide ones (that
    take several finder rounds), masks with holes and flagged ends, NaN channels."""
    rng = np.random.default_rng(seed)
    i = np.arange(n_chan)
    out = []
    for k in range(24):
        u = i / max(n_chan - 1, 1)
        y = rng.normal(0, 3) + rng.normal(0, 2) * u + rng.normal(0, 2) * u**3
        y = y + rng.normal(0, 0.1 * rng.uniform(0.3, 3), n_chan)
        for _ in range(k % 4):  # 0 to 3 lines
            width = rng.uniform(0.5, n_chan / 10)
            y += rng.normal(0, 1.5) * np.exp(-0.5 * ((i - rng.uniform(0, n_chan)) / width) ** 2)
        mask = np.ones(n_chan, bool)
        if k % 3 == 1:
            mask &= rng.random(n_chan) > 0.15  # scattered holes
        if k % 5 == 2:
            start = int(rng.integers(0, n_chan))
            mask[start : start + n_chan // 6] = False  # a flagged range
            mask[: int(rng.integers(0, n_chan // 10 + 1))] = False
        if k % 8 == 5:
            mask[: n_chan * 3 // 5] = False  # most channels excluded
        if k % 7 == 3:
            y[rng.integers(0, n_chan, 3)] = np.nan
        out.append((y, mask))
    return out


@pytest.mark.parametrize(
    ("thresh", "avg_limit", "minwidth"),
    [
        (5.0, 4, 4),
        (3.0, 1, 1),
        (3.0, 16, 2),
        (4.0, 15, 1),
        (2.5, 64, 7),
        (3.0, 4, 20),
        (3.0, 4, 600),
    ],
)
@pytest.mark.parametrize("n_chan", [512, 97])
def test_line_finder_equals_the_reference(
    thresh: float, avg_limit: int, minwidth: int, n_chan: int
) -> None:
    """find_lines (the compiled kernel) gives the reference's line masks exactly."""
    n_found = 0
    for y, mask in _varied_spectra(n_chan, seed=n_chan + minwidth):
        for edge in [(0, 0), (5, 17)]:
            got = bl.find_lines(
                y, mask, thresh=thresh, avg_limit=avg_limit, minwidth=minwidth, edge=edge
            )
            search = mask & np.isfinite(y)
            search[: edge[0]] = search[n_chan - edge[1] :] = False
            expected = _reference_find_lines(
                np.where(np.isfinite(y), y, 0.0), search, thresh, avg_limit, minwidth
            )
            np.testing.assert_array_equal(got, expected)
            n_found += got.any()
    assert n_found > 0 or minwidth > n_chan  # lines were found, not only empty masks compared


@pytest.mark.parametrize("n_chan", [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 39, 40])
def test_line_finder_on_short_and_constant_spectra(n_chan: int) -> None:
    rng = np.random.default_rng(n_chan)
    spike = rng.normal(0, 0.1, n_chan)
    spike[n_chan // 2] += 10.0
    cases = [rng.normal(0, 1, n_chan), spike, np.zeros(n_chan), np.full(n_chan, 0.1)]
    for y in cases:
        for mask in [np.ones(n_chan, bool), np.arange(n_chan) % 3 != 0]:
            for minwidth in (1, 3):
                got = bl.find_lines(y, mask, thresh=3.0, avg_limit=4, minwidth=minwidth)
                expected = _reference_find_lines(y, mask, 3.0, 4, minwidth)
                np.testing.assert_array_equal(got, expected)
    # constant spectra (sigma 0) and fewer than 3 searched channels: no lines
    assert not bl.find_lines(np.full(n_chan, 0.1), np.ones(n_chan, bool), minwidth=1).any()
    few = np.zeros(n_chan, bool)
    few[:2] = True
    assert not bl.find_lines(spike, few, thresh=1.0, minwidth=1).any()


def test_mad80_equals_a_sorting_reference() -> None:
    rng = np.random.default_rng(5)
    inputs = [rng.normal(0, 1, n) for n in (1, 2, 3, 4, 5, 10, 11, 4095, 4096)]
    inputs += [
        rng.integers(0, 4, 1000).astype(float),  # many ties, also at the selected ranks
        np.repeat([1.0, 2.0], 50),
        np.r_[np.zeros(900), rng.normal(0, 1, 100)],  # the 80 % rank inside the ties
        np.arange(3000.0),  # sorted, reversed, V-shaped: awkward for quickselect pivots
        np.arange(3000.0)[::-1],
        np.abs(np.arange(-1500.0, 1500.0)),
        rng.standard_cauchy(2001),
    ]
    for x in inputs:
        assert bl.mad80(x) == pytest.approx(_reference_mad80(x), rel=1e-12, abs=1e-300)
    assert np.isnan(bl.mad80(np.array([]))) and np.isnan(bl.mad80(np.array([1.0, np.nan])))


def test_kth_smallest_equals_sorting() -> None:
    rng = np.random.default_rng(9)
    inputs = [
        rng.normal(0, 1, 1000),
        rng.integers(0, 3, 1000).astype(float),
        np.ones(257),
        np.arange(1000.0),
        np.arange(1000.0)[::-1],
        np.abs(np.arange(-500.0, 500.0)),
        np.r_[np.arange(500.0), np.arange(500.0)[::-1]],  # organ pipe
        np.tile([0.0, 1.0], 400),
    ]
    for x in inputs:
        ordered = np.sort(x)
        for k in sorted({0, 1, x.size // 2, (x.size - 1) // 2, x.size - 1, *range(0, x.size, 37)}):
            assert bl._kth_smallest(x, k) == ordered[k]


def test_line_finder_kernel_releases_the_gil() -> None:
    """Dask threads must run it in parallel; the other compiled kernels are called from it."""
    assert bl._find_lines_kernel.targetoptions["nogil"]


@pytest.mark.parametrize("minwidth", [0, 1, 2, 3, 4, 7, 40, 41])
def test_line_finder_keeps_runs_at_least_minwidth(minwidth):
    rng = np.random.default_rng(minwidth)
    rows = np.concatenate(
        [rng.random((40, 40)) < p for p in (0.2, 0.5, 0.8, 0.95)]
        + [np.ones((1, 40), bool), np.zeros((1, 40), bool)]
    )
    got = np.zeros_like(rows)
    for row, out in zip(rows, got, strict=True):
        bl._mark_runs(row, minwidth, out)
    expected = np.array([_runs_reference(r, minwidth) for r in rows])
    np.testing.assert_array_equal(got, expected)
    assert got.any() == (minwidth <= 40)
