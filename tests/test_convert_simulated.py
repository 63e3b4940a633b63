"""Simulated EBs: every injected quantity lands where the schema says, with its units."""

from __future__ import annotations

import numpy as np
import pytest

import radflow
from radflow import schema
from radflow.cal import scale
from radflow.converters.msv2_to_store import convert
from radflow.store import partitions
from radflow.testing import simulate_interferometer, simulate_single_dish
from radflow.testing.lazy import forbid_compute

ATM = "CALIBRATE_ATMOSPHERE#ON_SOURCE"


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd") / "sd.ms"
    eb = simulate_single_dish(path, mode="otfraster", n_basebands=2, n_science_chan=64, noise=False)
    return eb, radflow.open(convert(eb.ms_path))


@pytest.fixture(scope="module")
def ifm(tmp_path_factory):
    path = tmp_path_factory.mktemp("if") / "if.ms"
    eb = simulate_interferometer(path, n_antennas=6, n_spw=2, n_chan=16, n_integrations=4)
    return eb, radflow.open(convert(eb.ms_path))


def _info(node):
    return node.attrs[schema.ATTR_PARTITION_INFO]


def test_sd_partitions_by_spw_scan_intent_antenna(sd):
    eb, tree = sd
    truth = eb.truth
    nodes = partitions(tree)
    keys = set()
    for node in nodes.values():
        ds, info = node.ds, _info(node)
        assert ds.attrs["type"] == schema.TYPE_SPECTRUM
        assert ds[schema.SPECTRUM].dims == ("time", "antenna_name", "frequency", "polarization")
        assert ds[schema.SPECTRUM].dtype == np.float32
        assert ds.sizes["antenna_name"] == 1 and info[schema.PI_ANTENNA] == [
            str(ds.antenna_name.values[0])
        ]
        keys.add((info[schema.PI_SPW_ID], info[schema.PI_SCAN], ",".join(info[schema.PI_INTENTS]),
                  info[schema.PI_ANTENNA][0]))  # fmt: skip
    assert len(keys) == len(nodes)
    # the truth's per-integration (scan, intent) pairs, times antennas, are the partitions
    pairs = {
        (int(s), str(i)) for s, i in zip(truth.SCAN_NUMBER.values, truth.INTENT.values, strict=True)
    }
    expected = {(scan, intent, a) for scan, intent in pairs for a in truth.antenna_name.values}
    assert {(k[1], k[2], k[3]) for k in keys} == expected


def test_sd_frequencies_basebands_and_times(sd):
    eb, tree = sd
    truth = eb.truth
    for node in partitions(tree).values():
        ds, info = node.ds, _info(node)
        spw = info[schema.PI_SPW_ID]
        assert ds.frequency.attrs["units"] == "Hz"
        if spw in truth.science_spw.values:
            k = list(truth.science_spw.values).index(spw)
            np.testing.assert_array_equal(ds.frequency.values, truth.science_frequency.values[k])
            assert info[schema.PI_BASEBAND] == int(truth.baseband.values[k])
        else:
            k = list(truth.tsys_spw.values).index(spw)
            np.testing.assert_array_equal(ds.frequency.values, truth.tsys_frequency.values[k])
            assert ATM in info[schema.PI_INTENTS]
        # every partition time is an integration of the truth with this partition's intent
        sel = np.isin(truth.time_unix.values, ds.time.values)
        assert sel.sum() == ds.sizes["time"]
        assert set(truth.INTENT.values[sel]) == {",".join(info[schema.PI_INTENTS])}


def test_sd_tsys_spectra_at_real_frequencies(sd):
    eb, tree = sd
    truth = eb.truth
    n_checked = 0
    for node in partitions(tree).values():
        info = _info(node)
        if schema.SYSTEM_CALIBRATION_XDS not in node.children:
            assert info[schema.PI_SPW_ID] in truth.science_spw.values  # SYSCAL: Tsys spws only
            continue
        sc = node[schema.SYSTEM_CALIBRATION_XDS].ds
        k = list(truth.tsys_spw.values).index(info[schema.PI_SPW_ID])
        ant = str(sc.antenna_name.values[0])
        assert sc[schema.TSYS].attrs["units"] == "K"
        assert sc[schema.FREQUENCY_SYSTEM_CAL].attrs["units"] == "Hz"
        np.testing.assert_array_equal(
            sc[schema.FREQUENCY_SYSTEM_CAL].values, truth.tsys_frequency.values[k]
        )
        np.testing.assert_array_equal(
            sc[schema.TIME_SYSTEM_CAL].values, truth.time_system_cal_unix.values
        )
        np.testing.assert_array_equal(sc["SYSCAL_INTERVAL"].values, truth.syscal_interval.values)
        injected = truth.SYSCAL_TSYS.isel(tsys_spw=k).sel(antenna_name=ant)  # (time, chan, pol)
        stored = sc[schema.TSYS].sel(antenna_name=ant)  # (time, receptor, chan)
        np.testing.assert_array_equal(stored.values, injected.values.transpose(0, 2, 1))
        # the atmospheric feature is there: Tsys varies by more than 10% across the band
        assert stored.max() > 1.1 * stored.min()
        n_checked += 1
    assert n_checked >= 2 * len(truth.antenna_name)  # 2 basebands x antennas x atm scans


def test_sd_pointing_follows_the_raster(sd):
    eb, tree = sd
    truth = eb.truth
    for node in partitions(tree).values():
        if "OBSERVE_TARGET#ON_SOURCE" not in _info(node)[schema.PI_INTENTS]:
            continue
        beam = node[schema.POINTING_XDS].ds[schema.POINTING_BEAM]
        assert beam.attrs["units"] == "rad" and beam.attrs["frame"] == "fk5"
        times = node.ds.time.values
        idx = np.searchsorted(truth.time_unix.values, times)
        stored = beam.isel(antenna_name=0).sel(time_pointing=times).values
        np.testing.assert_allclose(stored, truth.POINTING_DIRECTION.values[idx], rtol=0, atol=1e-12)
        # raster rows move in RA
        assert np.ptp(stored[:, 0]) > 0


def test_if_fields_intents_flags_and_weights(ifm):
    eb, tree = ifm
    truth = eb.truth
    nodes = partitions(tree)
    n_scans = len(np.unique(truth.SCAN_NUMBER.values))
    assert len(nodes) == n_scans * truth.sizes["spw"]
    n_flagged = 0
    for node in nodes.values():
        ds, info = node.ds, _info(node)
        sel = np.isin(truth.time_unix.values, ds.time.values)
        assert set(truth.FIELD.values[sel]) == set(info[schema.PI_FIELD])
        assert set(truth.INTENT.values[sel]) == {",".join(info[schema.PI_INTENTS])}
        assert ds.sizes["baseline_id"] == 6 * 5 // 2
        real = ds[schema.MSV2_ROW].values >= 0
        n_flagged += int((ds[schema.FLAG].values & real[..., None, None]).sum())
        # weights are 1/sigma^2 of the row noise, constant over channels
        w = ds[schema.WEIGHT].values[real]
        assert (w == w[:, :1, :]).all() and (w > 0).all()
    assert n_flagged == int(truth.N_FLAGGED_SAMPLES)


def test_scale_step_end_to_end_on_a_converted_store(sd):
    """The example step on real store data: lazy to build, exact when computed."""
    eb, tree = sd
    node = next(
        n for n in partitions(tree).values() if "ON_SOURCE" in ",".join(_info(n)[schema.PI_INTENTS])
    )
    ant = str(node.ds.antenna_name.values[0])
    with forbid_compute():
        out = scale.apply(node.ds, {ant: 42.5}, output="jy", units=schema.UNITS_JANSKY)
    group = out.attrs[schema.ATTR_DATA_GROUPS]["jy"]
    assert group[schema.ROLE_UNITS] == "Jy"
    np.testing.assert_allclose(
        out[group[schema.ROLE_DATA]].values, node.ds[schema.SPECTRUM].values * 42.5, rtol=1e-6
    )
    np.testing.assert_allclose(
        out[group[schema.ROLE_WEIGHT]].values, node.ds[schema.WEIGHT].values / 42.5**2, rtol=1e-6
    )
