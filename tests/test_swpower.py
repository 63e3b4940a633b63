"""EVLA switched-power calibration (radflow.cal.swpower + applycal): invariants, the simulator's
truth recovered in K and Jy, editing, laziness, errors, the recipe, and (optional) CASA."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import radflow
from radflow import schema
from radflow.cal import apply as applycal
from radflow.cal import swpower
from radflow.converters.msv2_to_store import convert
from radflow.pipeline import load_recipe, run
from radflow.store import partitions
from radflow.testing import simulate_vla_switched_power
from radflow.testing.lazy import assert_lazy

GLITCH = (1, 0, 7, 3.0)  # antenna ea02, spw 0, integration 7: Pdiff x 3
ANTS = ["a0", "a1", "a2"]
REC = ["R", "L"]


# ---------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A 5-antenna, 2-spw EB with requantizer gains, a Pdiff glitch; converted."""
    root = tmp_path_factory.mktemp("swpow")
    eb = simulate_vla_switched_power(root / "vla.ms", glitch=GLITCH, seed=3)
    store = convert(eb.ms_path, root / "vla.ps.zarr")
    return eb, store


def _tree(store):
    return radflow.open(store)


def _powers(pdiff, psum, q=None, chunks=None) -> xr.Dataset:
    """A switched-power dataset (antenna_name, time, receptor) from arrays (ant, time, rec)."""
    pdiff = np.asarray(pdiff, dtype=float)
    dims = (schema.ANTENNA_NAME, schema.TIME, schema.RECEPTOR)
    coords = {
        schema.ANTENNA_NAME: ANTS[: pdiff.shape[0]],
        schema.TIME: 1.7e9 + np.arange(pdiff.shape[1], dtype=float),
        schema.RECEPTOR: REC,
    }
    data = {schema.SWITCHED_DIFF: (dims, pdiff), schema.SWITCHED_SUM: (dims, np.asarray(psum))}
    if q is not None:
        data[schema.REQUANTIZER_GAIN] = (dims, np.asarray(q, dtype=float))
    ds = xr.Dataset(data, coords=coords)
    return ds.chunk(chunks) if chunks else ds


def _tcal(values) -> xr.DataArray:
    values = np.asarray(values, dtype=float)
    return xr.DataArray(
        values,
        dims=(schema.ANTENNA_NAME, schema.RECEPTOR),
        coords={schema.ANTENNA_NAME: ANTS[: values.shape[0]], schema.RECEPTOR: REC},
    )


def _solve(power, tcal, **kw) -> xr.Dataset:
    return swpower.scale_factors(power, tcal, frequency_hz=8.4e9, **kw)


def _param(sol, name=schema.CALIBRATION_PARAMETER) -> np.ndarray:
    """(time, antenna, receptor)."""
    return sol[name].isel({schema.FREQUENCY: 0}).values


def _expected_kelvin(eb, ds) -> np.ndarray:
    """Truth of one partition in K: Tant_ij exp(i (phi_i - phi_j)), (time, bl, chan, pol)."""
    truth = eb.truth
    spw = ds.attrs[schema.ATTR_PARTITION_INFO][schema.PI_SPW_ID]
    it = np.searchsorted(truth.time.values, ds.time.values + schema.MJD_UNIX_OFFSET_S)
    a1, a2 = truth.BASELINE_ANTENNA1.values, truth.BASELINE_ANTENNA2.values
    ph = truth.PHASE.values[it]
    rot = np.stack([np.exp(1j * (ph[:, a1, r] - ph[:, a2, r])) for r in (0, 1)], axis=-1)
    return rot[:, :, None, :] * truth.SKY_KELVIN.values[spw][None, :, :, None]


def _sigma_kelvin(eb, ds) -> np.ndarray:
    """Noise per part (K), (time, bl, 1, pol)."""
    truth = eb.truth
    spw = ds.attrs[schema.ATTR_PARTITION_INFO][schema.PI_SPW_ID]
    it = np.searchsorted(truth.time.values, ds.time.values + schema.MJD_UNIX_OFFSET_S)
    a1, a2 = truth.BASELINE_ANTENNA1.values, truth.BASELINE_ANTENNA2.values
    ts = truth.TSYS.values[it][:, :, spw]
    bw_tau = float(truth.integration_s) * 128e6 / truth.sizes["chan"]
    return (np.sqrt(ts[:, a1] * ts[:, a2]) / np.sqrt(2 * bw_tau))[:, :, None, :]


# ---------------------------------------------------------------------------------------------
# invariants


def test_pdiff_tcal_psum_two_tcal_give_tsys_tcal():
    tcal = [[3.0, 4.0], [2.5, 3.5]]
    pdiff = np.repeat(np.asarray(tcal)[:, None, :], 5, axis=1)
    sol = _solve(_powers(pdiff, 2 * pdiff), _tcal(tcal))
    np.testing.assert_allclose(_param(sol, schema.TSYS), np.broadcast_to(tcal, (5, 2, 2)))
    assert not sol[schema.FLAG].any()
    np.testing.assert_allclose(_param(sol), 1.0)  # CT = Tcal/Pdiff


def test_kelvin_then_rho_by_the_ratio_of_factors_is_identity():
    rng = np.random.default_rng(1)
    pdiff = rng.uniform(0.5, 2.0, (3, 6, 2))
    psum = rng.uniform(20.0, 80.0, (3, 6, 2))
    tcal = _tcal(rng.uniform(2.0, 5.0, (3, 2)))
    r = rng.normal(size=(6, 3, 3, 2)) + 1j * rng.normal(size=(6, 3, 3, 2))  # (t, i, j, rec)
    for norm in ("power", "noise_diode"):
        ct = _param(_solve(_powers(pdiff, psum), tcal))
        cr = _param(_solve(_powers(pdiff, psum), tcal, scale="rho", rho_normalisation=norm))
        pair = lambda c: np.sqrt(c[:, :, None, :] * c[:, None, :, :])  # noqa: E731
        tant = r * pair(ct)
        np.testing.assert_allclose(tant * pair(cr) / pair(ct), r * pair(cr), rtol=1e-12)
    # with the raw data in the switched powers' units, rho = Tant / sqrt(Tsys_i Tsys_j)
    sol = _solve(_powers(pdiff, psum), tcal)
    tsys = _param(sol, schema.TSYS)
    np.testing.assert_allclose(_param(_solve(_powers(pdiff, psum), tcal, scale="rho")),
                               _param(sol) / tsys)  # fmt: skip
    # the seed's normalisation: CR = 2 Pdiff / Psum
    cr = _param(_solve(_powers(pdiff, psum), tcal, scale="rho", rho_normalisation="noise_diode"))
    np.testing.assert_allclose(cr, (2 * pdiff / psum).transpose(1, 0, 2))


def test_doubling_pdiff_halves_the_temperature_scaling():
    rng = np.random.default_rng(2)
    pdiff = rng.uniform(0.5, 2.0, (2, 4, 2))
    psum = rng.uniform(20.0, 80.0, (2, 4, 2))
    tcal = _tcal([[3.0, 4.0], [2.5, 3.5]])
    one = _solve(_powers(pdiff, psum), tcal)
    two = _solve(_powers(2 * pdiff, psum), tcal)
    np.testing.assert_allclose(_param(two), _param(one) / 2)
    np.testing.assert_allclose(_param(two, schema.TSYS), _param(one, schema.TSYS) / 2)
    eta_aeff = xr.DataArray([275.0, 250.0], dims=schema.ANTENNA_NAME,
                            coords={schema.ANTENNA_NAME: ANTS[:2]})  # fmt: skip
    jy1 = _solve(_powers(pdiff, psum), tcal, scale="Jy", eta_aeff_m2=eta_aeff)
    # CS = 2 k Tcal / (Pdiff eta Aeff), in Jy
    expected = 2 * 1.380649e-23 * _param(one) / np.array([275.0, 250.0])[None, :, None] / 1e-26
    np.testing.assert_allclose(_param(jy1), expected)


def test_requantizer_and_casa_constants():
    pdiff = np.full((2, 3, 2), 2.0)
    q = np.full((2, 3, 2), 1.1)
    tcal = _tcal([[3.0, 4.0], [2.5, 3.5]])
    plain = _param(_solve(_powers(pdiff, 40 * pdiff, q), tcal))
    rq = _param(_solve(_powers(pdiff, 40 * pdiff, q), tcal, requantizer=True))
    np.testing.assert_allclose(rq, plain / 1.1**2)
    casa = _solve(_powers(pdiff, 40 * pdiff), tcal, casa_constants=True)
    np.testing.assert_allclose(_param(casa), plain / (0.932 * 1.176))
    assert casa.attrs[schema.SWPOW_ATTR_WEIGHT_SCALE] == pytest.approx(0.932**2)


def test_weights_follow_one_over_tsys_product(sim):
    eb, store = sim
    tree = _tree(store)
    table = swpower.solve_all(tree)
    for node in partitions(tree).values():
        ds = node.ds
        spw = ds.attrs[schema.ATTR_PARTITION_INFO][schema.PI_SPW_ID]
        out = applycal.apply(ds, [table])
        tsys = table[spw][schema.TSYS].isel({schema.FREQUENCY: 0}).sel({schema.TIME: ds.time})
        t1 = tsys.sel({schema.ANTENNA_NAME: ds.baseline_antenna1_name}).values  # (t, bl, rec)
        t2 = tsys.sel({schema.ANTENNA_NAME: ds.baseline_antenna2_name}).values
        expected = ds[schema.WEIGHT].values / (t1 * t2)[:, :, None, :]
        np.testing.assert_allclose(out["WEIGHT_CORRECTED"].values, expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# the simulator's truth


def test_calibrated_kelvin_equal_the_sky(sim):
    eb, store = sim
    tree = _tree(store)
    # editing removes the glitch; requantizer gains are in the data
    editing = swpower.Editing(outlier_window=7)
    table = swpower.solve_all(tree, requantizer=True, editing=editing)
    for node in partitions(tree).values():
        out = applycal.apply(node.ds, [table])
        assert out.attrs[schema.ATTR_DATA_GROUPS]["corrected"][schema.ROLE_UNITS] == "K"
        got = out["VISIBILITY_CORRECTED"].values
        resid = (got - _expected_kelvin(eb, node.ds)) / _sigma_kelvin(eb, node.ds)
        assert 0.9 < resid.real.std() < 1.1 and 0.9 < resid.imag.std() < 1.1
        assert np.abs(resid).max() < 6.0
        assert abs(resid.real.mean()) < 0.1 and abs(resid.imag.mean()) < 0.1


def test_calibrated_jansky_equal_the_flux_density(sim):
    eb, store = sim
    tree = _tree(store)
    table = swpower.solve_all(tree, scale="Jy", requantizer=True,
                              editing=swpower.Editing(outlier_window=7))  # fmt: skip
    assert table[0].attrs[schema.SWPOW_ATTR_APERTURE]["band"] == "X"
    eta_aeff = float(eb.truth.ETA_AEFF.values[0])
    to_jy = 2 * 1.380649e-23 / eta_aeff / 1e-26
    for node in partitions(tree).values():
        out = applycal.apply(node.ds, [table])
        got = out["VISIBILITY_CORRECTED"].values
        assert out.attrs[schema.ATTR_DATA_GROUPS]["corrected"][schema.ROLE_UNITS] == "Jy"
        resid = (got - to_jy * _expected_kelvin(eb, node.ds)) / (to_jy * _sigma_kelvin(eb, node.ds))
        assert 0.9 < resid.real.std() < 1.1 and abs(resid.real.mean()) < 0.1
        # the parallel-hand mean over all samples is the source's flux density
        spw = node.ds.attrs[schema.ATTR_PARTITION_INFO][schema.PI_SPW_ID]
        mean_flux = float(eb.truth.FLUX_DENSITY.values[spw].mean())
        rot = _expected_kelvin(eb, node.ds) / eb.truth.SKY_KELVIN.values[spw].mean()
        derotated = (got / np.where(rot == 0, 1, rot)).real.mean()
        assert derotated == pytest.approx(mean_flux, rel=2e-3)


def test_noiseless_casa_digital_factor_is_exact(tmp_path):
    eb = simulate_vla_switched_power(tmp_path / "exact.ms", n_antennas=3, n_spw=1, n_scans=1,
                                     n_integrations=6, noise=False, power_noise=0.0,
                                     casa_digital_factor=True, n_pol=4, seed=5)  # fmt: skip
    tree = radflow.open(convert(eb.ms_path, tmp_path / "exact.ps.zarr"))
    table = swpower.solve_all(tree, requantizer=True, casa_constants=True)
    (node,) = partitions(tree).values()
    got = applycal.apply(node.ds, [table])["VISIBILITY_CORRECTED"].values
    expected = _expected_kelvin(eb, node.ds)  # RR, LL; the cross hands are zero
    np.testing.assert_allclose(got[..., [0, 3]], expected, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(got[..., [1, 2]], 0.0, atol=1e-7)


def test_editing_removes_the_glitch_only(sim):
    eb, store = sim
    tree = _tree(store)
    ant, spw, k, factor = GLITCH
    raw = swpower.solve(tree, spw)  # non-positive flagging only: the glitch stays
    edited = swpower.solve(tree, spw, editing=swpower.Editing(outlier_window=7))
    flagged = edited[schema.SWPOW_EDITED_DIFF].values  # (time, antenna, receptor)
    assert flagged.sum() == 2 and flagged[k, ant].all()  # both receptors of that sample
    keep = ~flagged
    np.testing.assert_array_equal(
        edited[schema.SWITCHED_DIFF].values[keep], raw[schema.SWITCHED_DIFF].values[keep]
    )
    true_pdiff = eb.truth.SWITCHED_DIFF_TRUE.values[k, ant, spw]
    assert raw[schema.SWITCHED_DIFF].values[k, ant] == pytest.approx(factor * true_pdiff,
                                                                     rel=1e-2)  # fmt: skip
    np.testing.assert_allclose(edited[schema.SWITCHED_DIFF].values[k, ant], true_pdiff, rtol=5e-3)
    assert not edited[schema.SWPOW_EDITED_SUM].any()
    # smoothing and median smoothing keep the shape and flag nothing new
    smooth = swpower.solve(tree, spw, editing=swpower.Editing(outlier_window=7, smooth_window=3,
                                                              smooth_method="median"))  # fmt: skip
    assert not smooth[schema.FLAG].any()


def test_interpolation_over_non_positive_samples():
    pdiff = np.full((1, 7, 2), 2.0) + np.arange(7)[None, :, None] * 0.1
    pdiff[0, 3, 0] = 0.0
    pdiff[0, 0, 1] = -1.0
    sol = _solve(_powers(pdiff, 40 * np.ones_like(pdiff)), _tcal([[3.0, 3.0]]))
    assert not sol[schema.FLAG].any()
    assert sol[schema.SWITCHED_DIFF].values[3, 0, 0] == pytest.approx(2.3)
    assert sol[schema.SWITCHED_DIFF].values[0, 0, 1] == pytest.approx(2.1)  # nearest
    no_interp = _solve(_powers(pdiff, 40 * np.ones_like(pdiff)), _tcal([[3.0, 3.0]]),
                       editing=swpower.Editing(interpolate=False))  # fmt: skip
    assert no_interp[schema.FLAG].values.sum() == 2


def test_tcal_engineering_table_is_interpolated_linearly(sim):
    eb, store = sim
    tree = _tree(store)
    truth = eb.truth
    table = truth.TCAL_ENGINEERING.rename({"tcal_frequency": schema.FREQUENCY})
    sol = swpower.solve(tree, 1, tcal=table)
    assert sol.attrs[schema.SWPOW_ATTR_TCAL_SOURCE].startswith("table")
    # the spw centre is the simulator's: CALDEVICE holds the same interpolation
    np.testing.assert_allclose(sol[schema.TCAL].values, truth.TCAL.values[:, 1], rtol=1e-6)
    per_spw = swpower.solve(tree, 0, tcal={0: [3.0, 4.0]})
    np.testing.assert_allclose(per_spw[schema.TCAL].values, [[3.0, 4.0]] * 5)


# ---------------------------------------------------------------------------------------------
# laziness


def test_building_is_lazy(sim):
    eb, store = sim
    tree = _tree(store)
    rng = np.random.default_rng(0)
    pdiff = rng.uniform(1, 2, (3, 10, 2))
    power = _powers(pdiff, 30 * pdiff, chunks={schema.ANTENNA_NAME: 1, schema.TIME: 5})
    sol = assert_lazy(_solve, power, _tcal(np.full((3, 2), 3.0)),
                      editing=swpower.Editing(outlier_window=5, smooth_window=3))  # fmt: skip
    assert isinstance(sol[schema.CALIBRATION_PARAMETER].data, da.Array)
    eager = _solve(power.compute(), _tcal(np.full((3, 2), 3.0)),
                   editing=swpower.Editing(outlier_window=5, smooth_window=3))  # fmt: skip
    xr.testing.assert_allclose(sol.compute(), eager)
    table = swpower.solve_all(tree)
    node = next(iter(partitions(tree).values()))
    out = assert_lazy(applycal.apply, node.ds, [table])
    assert isinstance(out["VISIBILITY_CORRECTED"].data, da.Array)


# ---------------------------------------------------------------------------------------------
# errors


def test_missing_tcal_names_antenna_and_spw(sim):
    _, store = sim
    tree = _tree(store)
    table = xr.DataArray(
        np.full((2, 2, 3), 3.0),
        dims=(schema.ANTENNA_NAME, schema.RECEPTOR, schema.FREQUENCY),
        coords={schema.ANTENNA_NAME: ["ea01", "ea02"], schema.RECEPTOR: REC,
                schema.FREQUENCY: [8e9, 8.4e9, 8.8e9]},
    )  # fmt: skip
    with pytest.raises(swpower.SwPowError, match=r"antenna\(s\) \['ea03', 'ea04', 'ea05'\].*spw 1"):
        swpower.solve(tree, 1, tcal=table)


def test_non_matching_spws(sim):
    _, store = sim
    tree = _tree(store)
    with pytest.raises(swpower.SwPowError, match="spws do not match"):
        swpower.solve(tree, 0, tcal={3: [3.0, 3.0]})
    with pytest.raises(swpower.SwPowError, match="unknown spw 9"):
        swpower.solve(tree, 9)
    # SYSPOWER without rows for a spw of the data
    spw0_only = xr.DataTree.from_dict(
        {n.path: n.to_dataset(inherit=False) for n in tree.subtree
         if not (schema.SWITCHED_POWER_XDS in n.path
                 and n.to_dataset(inherit=False).attrs.get(schema.ATTR_SPW_ID) == 1)}
    )  # fmt: skip
    with pytest.raises(swpower.SwPowError, match=r"no rows for spw 1 .*spws \[0\]"):
        swpower.solve(spw0_only, 1)


def test_all_flagged_pdiff():
    pdiff = np.zeros((2, 4, 2))
    with pytest.raises(swpower.SwPowError, match="every Pdiff"):
        _solve(_powers(pdiff, np.ones_like(pdiff)), _tcal(np.full((2, 2), 3.0)), spw=4)


def test_no_switched_power_data(sim, tmp_path):
    _, store = sim
    tree = _tree(store)
    stripped = xr.DataTree.from_dict(
        {
            n.path: n.to_dataset(inherit=False)
            for n in tree.subtree
            if schema.SWITCHED_POWER_XDS not in n.path
        }  # fmt: skip
    )
    with pytest.raises(swpower.SwPowError, match="no switched-power data"):
        swpower.solve(stripped, 0)


def test_applying_to_calibrated_data_is_refused(sim):
    _, store = sim
    tree = _tree(store)
    table = swpower.solve_all(tree)
    ds = applycal.apply(next(iter(partitions(tree).values())).ds, [table], output="k")
    with pytest.raises(applycal.ApplyError, match="needs raw data"):
        applycal.apply(ds, [table], group="k", output="again")


# ---------------------------------------------------------------------------------------------
# recipe


def test_recipe_runs(sim, tmp_path):
    eb, store = sim
    copy = tmp_path / "run.ps.zarr"
    shutil.copytree(store, copy)
    recipe = load_recipe("evla_swpower", ["swpower.scale=Jy", "swpower.requantizer=true",
                                          "swpower.outlier_window=7"])  # fmt: skip
    (result,) = run(recipe, [copy], progress=False, write_summary=False)
    assert result.status == "done", result.error
    tree = radflow.open(copy)
    for node in partitions(tree).values():
        ds = node.ds
        assert ds.attrs[schema.ATTR_DATA_GROUPS]["corrected"][schema.ROLE_UNITS] == "Jy"
        spw = ds.attrs[schema.ATTR_PARTITION_INFO][schema.PI_SPW_ID]
        amp = np.abs(ds["VISIBILITY_CORRECTED"].values[..., [0, -1]]).mean()
        assert amp == pytest.approx(float(eb.truth.FLUX_DENSITY.values[spw].mean()), rel=0.01)


# ---------------------------------------------------------------------------------------------
# CASA (optional)

CASA_PYTHON = os.environ.get("RADFLOW_CASA_PYTHON") or (
    sys.executable if importlib.util.find_spec("casatasks") else None
)
CASA_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from casatasks import applycal, gencal
    from casatools import table

    ms, out = sys.argv[1], sys.argv[2]
    gencal(vis=ms, caltable=out + ".swpow", caltype="swpow")
    applycal(vis=ms, gaintable=[out + ".swpow"], calwt=True)
    tb = table()
    tb.open(ms)
    # casatools returns cells last-axis-row: (pol, chan, row) -> (row, pol, chan)
    cols = {c: np.moveaxis(tb.getcol(c), -1, 0) for c in ("TIME", "ANTENNA1", "ANTENNA2",
            "DATA_DESC_ID", "CORRECTED_DATA", "WEIGHT_SPECTRUM", "FLAG")}
    tb.close()
    np.savez(out + ".npz", **cols)
    """
)


@pytest.mark.casa
@pytest.mark.skipif(CASA_PYTHON is None, reason="CASA absent (set RADFLOW_CASA_PYTHON)")
def test_agrees_with_casa_gencal_swpow(tmp_path):
    eb = simulate_vla_switched_power(tmp_path / "casa.ms", n_antennas=4, n_integrations=8,
                                     seed=7)  # fmt: skip
    store = convert(eb.ms_path, tmp_path / "casa.ps.zarr")  # before CASA adds CORRECTED_DATA
    script = tmp_path / "casa_swpow.py"
    script.write_text(CASA_SCRIPT)
    subprocess.run([CASA_PYTHON, str(script), str(eb.ms_path), str(tmp_path / "casa")],
                   check=True, cwd=tmp_path, capture_output=True)  # fmt: skip
    ref = np.load(tmp_path / "casa.npz")
    tree = radflow.open(store)
    table = swpower.solve_all(tree, casa_constants=True)
    names = [str(a) for a in eb.truth.antenna_name.values]
    rows = {}
    for k in range(len(ref["TIME"])):
        t = round(float(ref["TIME"][k]) - schema.MJD_UNIX_OFFSET_S, 3)
        key = (t, int(ref["ANTENNA1"][k]), int(ref["ANTENNA2"][k]), int(ref["DATA_DESC_ID"][k]))
        rows[key] = k
    n = 0
    for node in partitions(tree).values():
        ds = node.ds
        spw = ds.attrs[schema.ATTR_PARTITION_INFO][schema.PI_SPW_ID]
        out = applycal.apply(ds, [table])
        vis, wt = out["VISIBILITY_CORRECTED"].values, out["WEIGHT_CORRECTED"].values
        a1 = [names.index(a) for a in ds.baseline_antenna1_name.values]
        a2 = [names.index(a) for a in ds.baseline_antenna2_name.values]
        for it, t in enumerate(ds.time.values):
            for b in range(len(a1)):
                k = rows[(round(float(t), 3), a1[b], a2[b], spw)]
                casa_vis = ref["CORRECTED_DATA"][k].T  # CASA (pol, chan) -> (chan, pol)
                np.testing.assert_allclose(vis[it, b], casa_vis, rtol=1e-5, atol=1e-7)
                np.testing.assert_allclose(wt[it, b], ref["WEIGHT_SPECTRUM"][k].T, rtol=1e-5)
                n += 1
    assert n == len(ref["TIME"])


def test_plot_tsys_and_powers(sim):
    import matplotlib

    matplotlib.use("Agg")
    from radflow.plots import plot_switched_power

    _, store = sim
    sol = swpower.solve(_tree(store), 0, editing=swpower.Editing(outlier_window=7))
    fig = plot_switched_power(sol, antennas=["ea01", "ea02"])
    assert [ax.get_ylabel() for ax in fig.axes] == ["Tsys (K)", "Pdiff", "Psum"]
    with pytest.raises(ValueError, match="not a switched-power solution"):
        plot_switched_power(sol.assign_attrs({schema.ATTR_CAL_TYPE: "G"}))
