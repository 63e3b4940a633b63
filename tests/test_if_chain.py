"""The interferometer recipe (graphs/alma_if.yaml) end to end on a simulated ALMA EB."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import radflow
from radflow import schema
from radflow.actions import ActionError
from radflow.converters.caltable import read_caltable
from radflow.converters.msv2_to_store import convert
from radflow.pipeline import RecipeError, build, load_recipe, run
from radflow.store import partitions
from radflow.testing import simulate_interferometer
from radflow.testing.interferometer import FIELDS
from radflow.testing.lazy import forbid_compute

# the flux calibrator's model, as the simulator made it (J1924-2914: 3 Jy at 100 GHz, -0.7)
MANUAL_FLUX = ["setjy.standard=manual", "setjy.fluxdensity=3.0", "setjy.spix=-0.7",
               "setjy.reffreq=100GHz"]  # fmt: skip
FLUX_CAL, BANDPASS_CAL, PHASE_CAL = "J1924-2914", "J1256-0547", "J1037-2934"


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    path = tmp_path_factory.mktemp("ifchain") / "eb.ms"
    eb = simulate_interferometer(path, n_antennas=8, n_spw=2, n_chan=16, n_integrations=8,
                                 n_cycles=2, seed=5)  # fmt: skip
    store = convert(path, path.with_suffix(".ps.zarr"))
    recipe = load_recipe("alma_if", MANUAL_FLUX)
    tree = radflow.open(store)  # reads the small metadata (coordinates, sub-datasets)
    with forbid_compute():  # building the whole reduction computes nothing
        build(recipe, store, tree)
    (result,) = run(recipe, [store], progress=False)
    assert result.status == "done", result.error
    return eb, store, result


def _fluxscale(store) -> dict:
    return json.loads(store.with_name("eb.flux.json").read_text())


def _effective_truth(eb, field: str) -> np.ndarray:
    """What fluxscale can at best recover: the true flux density scaled by the gain amplitude
    drift between the reference and transfer scans (median over antennas and receptors of the
    ratio of mean |g|, squared) - fluxscale assumes constant amplitude gains, as CASA does."""
    truth = eb.truth
    g = np.abs(truth["GAIN"].values)
    fields = np.array([str(f) for f in truth["FIELD"].values])
    ratio = np.median(g[fields == field].mean(0) / g[fields == FLUX_CAL].mean(0)) ** 2
    names = [str(f) for f in truth[schema.FIELD_NAME].values]
    return truth["FLUX_DENSITY_SPW"].values[names.index(field)] * ratio


def test_fluxscale_recovers_the_transfer_calibrators(reduced) -> None:
    eb, store, _ = reduced
    result = _fluxscale(store)
    by_name = {
        v["fieldName"]: v for v in result.values() if isinstance(v, dict) and "fieldName" in v
    }
    assert set(by_name) == {BANDPASS_CAL, PHASE_CAL}
    for field in (BANDPASS_CAL, PHASE_CAL):
        expected = _effective_truth(eb, field)
        for spw in (0, 1):
            got = by_name[field][str(spw)]
            flux, err = got["fluxd"][0], got["fluxdErr"][0]
            assert 0 < err < 0.02 * flux  # the SNR of these simulations: ~1 %
            assert flux == pytest.approx(expected[spw], abs=3 * err), (field, spw)
    # the injected spectral indices are -0.55 and -0.45 across only 2 GHz: loosely constrained
    assert by_name[BANDPASS_CAL]["spidx"][1] == pytest.approx(FIELDS[0][5], abs=0.3)


def test_calibrated_bandpass_calibrator_is_flat_at_its_flux_density(reduced) -> None:
    """After applycal the bandpass calibrator is a point source of the flux density fluxscale
    derived, flat across each spw (its in-band spectral slope went into the bandpass, whose
    model was 1 Jy - as in CASA without a spectral model for it), with phases ~0. The channels
    the simulator flagged stay flagged."""
    eb, store, _ = reduced
    tree = radflow.open(store)
    result = _fluxscale(store)
    derived = next(v for v in result.values() if isinstance(v, dict) and
                   v.get("fieldName") == BANDPASS_CAL)  # fmt: skip
    checked = 0
    for node in partitions(tree).values():
        ds = node.to_dataset(inherit=False)
        info = ds.attrs[schema.ATTR_PARTITION_INFO]
        if "CALIBRATE_BANDPASS" not in ",".join(info[schema.PI_INTENTS]):
            continue
        spw = int(info[schema.PI_SPW_ID])
        vis = ds["VISIBILITY_CORRECTED"].sel(polarization=["XX", "YY"]).values
        flag = ds["FLAG_CORRECTED"].sel(polarization=["XX", "YY"]).values
        flagged_channels = flag.all(axis=(0, 1, 3))
        bad = eb.truth["FLAGGED_CHANNELS"].values[spw]
        assert set(np.flatnonzero(flagged_channels)) == set(bad)
        v = np.where(flag, np.nan, vis)[:, :, ~flagged_channels]
        per_channel = np.nanmean(v.real, axis=(0, 1, 3))
        flux = derived[str(spw)]["fluxd"][0]
        np.testing.assert_allclose(per_channel, flux, rtol=0.005)
        assert np.abs(np.nanmean(np.angle(v), axis=(0, 1))).max() < 0.01
        checked += 1
    assert checked == 2  # one bandpass scan, two spws


def test_tables_are_stored_and_exported_as_casa_caltables(reduced) -> None:
    eb, store, result = reduced
    names = {p.name for p in result.tables}
    for table in ("phaseup", "bandpass", "phase", "amp", "flux"):
        assert f"eb.{table}.cal" in names
    report = store.with_name("eb.flux.fluxscale.txt").read_text()
    assert BANDPASS_CAL in report and PHASE_CAL in report and "QA: completeness 1.00" in report
    bp = read_caltable(store.with_name("eb.bandpass.cal"))
    stored = radflow.store.load_group(store, "calibration/bandpass/spw0")
    assert bp[0].attrs[schema.ATTR_CAL_TYPE] == "B"
    np.testing.assert_allclose(
        bp[0][schema.CALIBRATION_PARAMETER].values,
        stored[schema.CALIBRATION_PARAMETER].values,
        rtol=1e-6,  # the caltable holds complex64
    )
    tree = radflow.open(store)
    groups = tree[next(iter(partitions(tree)))].attrs[schema.ATTR_DATA_GROUPS]
    assert "setjy" not in groups and "corrected" in groups  # the in-graph model is not stored


def test_unknown_fields_and_tables_are_named(reduced) -> None:
    _, store, _ = reduced
    tree = radflow.open(store)
    for override, message in [
        ("gaincal.field=NOWHERE", "no field 'NOWHERE'"),
        (
            "setjy.field=CALIBRATE_POINTING",
            "no field was observed with intent 'CALIBRATE_POINTING'",
        ),
        ("fluxscale.caltable=nothing", "gaintable ['nothing'] not solved by an earlier step"),
    ]:
        recipe = load_recipe("alma_if", [*MANUAL_FLUX, override])
        with pytest.raises(ActionError, match=re.escape(message)):
            build(recipe, store, tree)


def test_set_addresses_a_named_step_or_every_step_of_a_type() -> None:
    recipe = load_recipe("alma_if", ["amp.solint=60s", "gaincal.minsnr=2"])
    gaincals = {s.params["name"]: s.params for s in recipe.steps if s.step == "gaincal"}
    assert gaincals["amp"]["solint"] == "60s"
    assert gaincals["phase"]["solint"] == "int" and gaincals["phaseup"]["solint"] == "int"
    assert {p["minsnr"] for p in gaincals.values()} == {2}
    with pytest.raises(RecipeError, match=r"named: phaseup \(gaincal\)"):
        load_recipe("alma_if", ["nope.solint=1"])
