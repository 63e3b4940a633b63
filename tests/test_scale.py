"""The scale step: per-antenna, per-receptor, per-spw amplitude factors."""

from __future__ import annotations

import copy

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from radflow import schema, step
from radflow.cal import scale
from radflow.testing.datasets import make_spectrum_partition, make_visibility_partition
from radflow.testing.lazy import assert_lazy

ANTENNAS = ("ea01", "ea02", "ea03", "ea04")
POLS = ("XX", "XY", "YX", "YY")


def _factors(antennas=ANTENNAS, receptors=("X", "Y"), seed=1) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    return xr.DataArray(
        rng.uniform(0.5, 3.0, (len(antennas), len(receptors))),
        dims=(schema.ANTENNA_NAME, schema.RECEPTOR),
        coords={schema.ANTENNA_NAME: list(antennas), schema.RECEPTOR: list(receptors)},
    )


def test_single_dish_is_data_times_factor() -> None:
    sd = make_spectrum_partition(antenna="PM01", units=schema.UNITS_KELVIN)
    out = assert_lazy(scale.apply, sd, {"PM01": 40.0}, units=schema.UNITS_JANSKY)
    assert isinstance(out["SPECTRUM_SCALED"].data, da.Array)
    assert out["SPECTRUM_SCALED"].dtype == np.float32
    assert out["WEIGHT_SCALED"].dtype == np.float32
    np.testing.assert_allclose(out["SPECTRUM_SCALED"], sd[schema.SPECTRUM] * 40.0, rtol=1e-6)
    np.testing.assert_allclose(out["WEIGHT_SCALED"], sd[schema.WEIGHT] / 1600.0, rtol=1e-6)
    # flags are unchanged, so the group shares the base FLAG rather than storing a copy
    assert out.attrs["data_groups"]["scaled"]["flag"] == schema.FLAG
    assert "FLAG_SCALED" not in out
    group = step.get_data_group(out, schema.GROUP_SCALED)
    assert group.units == "Jy" and out["SPECTRUM_SCALED"].attrs[schema.ATTR_UNITS] == "Jy"


def test_single_dish_per_receptor() -> None:
    sd = make_spectrum_partition(antenna="PM01", pols=("XX", "YY"))
    out = scale.apply(sd, {("PM01", "X"): 40.0, ("PM01", "Y"): 50.0}, output="jy")
    expected = sd[schema.SPECTRUM] * xr.DataArray([40.0, 50.0], dims=schema.POLARIZATION)
    np.testing.assert_allclose(out["SPECTRUM_JY"], expected, rtol=1e-6)
    expected_w = sd[schema.WEIGHT] / xr.DataArray([1600.0, 2500.0], dims=schema.POLARIZATION)
    np.testing.assert_allclose(out["WEIGHT_JY"], expected_w, rtol=1e-6)
    # Without units= the output inherits the input's.
    assert step.get_data_group(out, "jy").units == ""


def test_stokes_single_dish_with_receptor_free_factor() -> None:
    sd = make_spectrum_partition(antenna="PM01", pols=("I",))
    out = scale.apply(sd, {"PM01": 3.0})
    np.testing.assert_allclose(out["SPECTRUM_SCALED"], sd[schema.SPECTRUM] * 3.0, rtol=1e-6)
    with pytest.raises(ValueError, match=r"polarization\(s\) \['I'\] are not receptor"):
        scale.apply(sd, {("PM01", "X"): 3.0})


def test_visibility_each_correlation_against_numpy_reference() -> None:
    vis = make_visibility_partition(n_time=3, antennas=ANTENNAS, n_chan=5, pols=POLS, seed=7)
    factors = _factors()
    out = assert_lazy(scale.apply, vis, factors)

    data = vis[schema.VISIBILITY].values
    weight = vis[schema.WEIGHT].values
    f = {(a, r): float(factors.sel(antenna_name=a, receptor=r)) for a in ANTENNAS for r in "XY"}
    ref = np.empty_like(data)
    ref_w = np.empty_like(weight)
    ant1 = vis[schema.BASELINE_ANTENNA1_NAME].values
    ant2 = vis[schema.BASELINE_ANTENNA2_NAME].values
    for b, (i, j) in enumerate(zip(ant1, ant2, strict=True)):
        for p, pol in enumerate(POLS):
            product = f[i, pol[0]] * f[j, pol[1]]
            ref[:, b, :, p] = data[:, b, :, p] * np.sqrt(product)
            ref_w[:, b, :, p] = weight[:, b, :, p] / product

    assert out["VISIBILITY_SCALED"].dtype == np.complex64
    np.testing.assert_allclose(out["VISIBILITY_SCALED"].values, ref, rtol=1e-6)
    np.testing.assert_allclose(out["WEIGHT_SCALED"].values, ref_w, rtol=1e-6)
    assert out.attrs["data_groups"]["scaled"]["flag"] == schema.FLAG
    # XY and YX of one baseline really use different receptor pairs.
    assert not np.allclose(ref[..., 1] / data[..., 1], ref[..., 2] / data[..., 2])


def test_factor_then_inverse_is_identity() -> None:
    vis = make_visibility_partition(antennas=ANTENNAS, pols=POLS)
    factors = _factors()
    there = scale.apply(vis, factors)
    back = scale.apply(there, 1.0 / factors, group=schema.GROUP_SCALED, output="back")
    np.testing.assert_allclose(back["VISIBILITY_BACK"], vis[schema.VISIBILITY], rtol=1e-6)
    np.testing.assert_allclose(back["WEIGHT_BACK"], vis[schema.WEIGHT], rtol=1e-6)
    assert back.attrs["data_groups"]["back"]["flag"] == schema.FLAG
    assert set(back.attrs[schema.ATTR_DATA_GROUPS]) == {"base", "scaled", "back"}


def test_spectral_window_selection() -> None:
    vis = make_visibility_partition(antennas=ANTENNAS, spw_id=1, spw_name="spw_1")
    per_spw = xr.concat(
        [_factors(seed=1), _factors(seed=2)],
        dim=xr.DataArray(["spw_0", "spw_1"], dims=schema.SPECTRAL_WINDOW_NAME),
    )
    out = scale.apply(vis, per_spw)
    expected = scale.apply(vis, _factors(seed=2))
    np.testing.assert_array_equal(out["VISIBILITY_SCALED"], expected["VISIBILITY_SCALED"])
    with pytest.raises(ValueError, match=r"factors have no spw 'spw_1' \(they have \['spw_0'\]\)"):
        scale.apply(vis, per_spw.isel(spectral_window_name=[0]))


def test_building_computes_nothing_and_leaves_input_unchanged() -> None:
    vis = make_visibility_partition(antennas=ANTENNAS, chunks={schema.TIME: 1})
    before = vis.copy(deep=True)
    attrs_before = copy.deepcopy(vis.attrs)
    out = assert_lazy(scale.apply, vis, _factors(), units=schema.UNITS_JANSKY)
    for name in ("VISIBILITY_SCALED", "WEIGHT_SCALED"):
        assert isinstance(out[name].data, da.Array)
        assert out[name].chunks == vis[schema.VISIBILITY].chunks
    assert vis.identical(before) and vis.attrs == attrs_before
    assert set(vis.data_vars) == set(before.data_vars)


def test_missing_antenna_names_antenna_spw_and_partition() -> None:
    vis = make_visibility_partition(antennas=ANTENNAS, scan=3, spw_id=2, spw_name="spw_2")
    with pytest.raises(ValueError) as err:
        scale.apply(vis, _factors(antennas=ANTENNAS[:3]))
    msg = str(err.value)
    assert msg.startswith("scale: partition spw 2 scan 3 (OBSERVE_TARGET#ON_SOURCE)")
    assert "no factor for antenna(s) ['ea04'] in spw 'spw_2'" in msg


def test_missing_receptor_in_dict_names_antenna_and_receptor() -> None:
    vis = make_visibility_partition(antennas=("a", "b"), pols=("XX", "YY"))
    factors = {("a", "X"): 1.0, ("a", "Y"): 1.0, ("b", "X"): 1.0}
    with pytest.raises(ValueError, match="no factor for antenna 'b' receptor 'Y' in spw 'spw_0'"):
        scale.apply(vis, factors)


@pytest.mark.parametrize("bad", [0.0, -2.0, np.inf])
def test_invalid_factor_names_antenna(bad: float) -> None:
    sd = make_spectrum_partition(antenna="PM02", scan=4)
    with pytest.raises(ValueError, match="scan 4 antenna PM02.*antenna 'PM02' in spw 'spw_0'.*> 0"):
        scale.apply(sd, {"PM02": bad})


def test_unknown_group_and_existing_output() -> None:
    sd = make_spectrum_partition(antenna="PM01", scan=9)
    with pytest.raises(step.DataGroupError, match="scan 9 antenna PM01.*no data group 'tsys'"):
        scale.apply(sd, {"PM01": 2.0}, group="tsys")
    once = scale.apply(sd, {"PM01": 2.0})
    with pytest.raises(step.DataGroupError, match="already has data group 'scaled'"):
        scale.apply(once, {"PM01": 2.0})


def test_dask_backed_factors_are_refused() -> None:
    sd = make_spectrum_partition(antenna="PM01")
    lazy = xr.DataArray(da.ones(1), dims=schema.ANTENNA_NAME, coords={"antenna_name": ["PM01"]})
    with pytest.raises(ValueError, match="factors must be in memory"):
        scale.apply(sd, lazy)


def test_recipe_lookup_runs_the_step() -> None:
    sd = make_spectrum_partition(antenna="PM01")
    out = step.get_step("scale")(sd, {"PM01": 2.0})
    np.testing.assert_allclose(out["SPECTRUM_SCALED"], sd[schema.SPECTRUM] * 2.0, rtol=1e-6)
