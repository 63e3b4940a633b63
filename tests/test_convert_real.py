"""Real MeasurementSets: the store holds exactly what casacore reads, and goes back exactly."""

from __future__ import annotations

import numpy as np
import pytest
from casacore.tables import table

import radflow
from radflow import schema
from radflow.converters.msv2_to_store import ConvertOptions, convert
from radflow.converters.store_to_msv2 import export
from radflow.store import partitions


def _main_columns(ms):
    with table(str(ms), ack=False) as t:
        return {c: t.getcol(c) for c in t.colnames() if c != "FLAG_CATEGORY"}


def test_store_matches_casacore(real_ms, tmp_path):
    store = convert(real_ms, tmp_path / "out.ps.zarr")
    tree = radflow.open(store)
    cols = _main_columns(real_ms)
    nrows = len(cols["TIME"])
    with table(str(real_ms / "ANTENNA"), ack=False) as ant:
        ant_names = ant.getcol("NAME")
        stations = ant.getcol("STATION")
    if len(set(ant_names)) < len(ant_names):
        ant_names = [f"{n}_{s}" for n, s in zip(ant_names, stations, strict=True)]
    with table(str(real_ms / "SPECTRAL_WINDOW"), ack=False) as spw:
        chan_freq = spw.getcol("CHAN_FREQ")

    seen = np.zeros(nrows, dtype=int)
    for node in partitions(tree).values():
        ds = node.ds
        info = ds.attrs[schema.ATTR_PARTITION_INFO]
        np.testing.assert_array_equal(ds.frequency.values, chan_freq[info[schema.PI_SPW_ID]])
        assert ds.frequency.attrs["units"] == "Hz"
        rows = ds[schema.MSV2_ROW].values
        vis = ds[schema.VISIBILITY].values
        flag = ds[schema.FLAG].values
        weight = ds[schema.WEIGHT].values
        t_idx, b_idx = np.nonzero(rows >= 0)
        r = rows[t_idx, b_idx]
        seen[r] += 1
        # every sample sits where its MS row says, bit for bit
        np.testing.assert_array_equal(vis[t_idx, b_idx], cols["DATA"][r])
        np.testing.assert_array_equal(
            flag[t_idx, b_idx], cols["FLAG"][r] | cols["FLAG_ROW"][r, None, None]
        )
        np.testing.assert_array_equal(weight[t_idx, b_idx], cols["WEIGHT_SPECTRUM"][r])
        np.testing.assert_array_equal(
            ds.time.values[t_idx], cols["TIME"][r] - schema.MJD_UNIX_OFFSET_S
        )
        a1 = ds[schema.BASELINE_ANTENNA1_NAME].values[b_idx]
        a2 = ds[schema.BASELINE_ANTENNA2_NAME].values[b_idx]
        np.testing.assert_array_equal(a1, np.asarray(ant_names)[cols["ANTENNA1"][r]])
        np.testing.assert_array_equal(a2, np.asarray(ant_names)[cols["ANTENNA2"][r]])
        np.testing.assert_array_equal(ds[schema.UVW].values[t_idx, b_idx], cols["UVW"][r])
        # padding (no MS row) is flagged with zero weight, never invented
        pad = rows < 0
        assert flag[pad].all() and (weight[pad] == 0).all()
        assert info[schema.PI_SHAPE] == list(vis.shape)
        used = sorted(set(a1) | set(a2))
        assert sorted(node["antenna_xds"].ds.antenna_name.values.tolist()) == used
    assert (seen == 1).all(), "every MS row lands in exactly one cell"


def test_vla_irregular_grid_is_padded_and_flagged(vla_ms, tmp_path):
    tree = radflow.open(convert(vla_ms, tmp_path / "vla.ps.zarr"))
    (node,) = partitions(tree).values()
    ds = node.ds
    assert dict(ds.sizes) == {
        "time": 15, "baseline_id": 153, "frequency": 64, "polarization": 4, "uvw_label": 3
    }  # fmt: skip
    assert ds.polarization.values.tolist() == ["RR", "RL", "LR", "LL"]
    n_pad = int((ds[schema.MSV2_ROW].values < 0).sum())
    assert n_pad == 15 * 153 - 1360
    assert node["antenna_xds"].ds.sizes["antenna_name"] == 18
    pos = node["antenna_xds"].ds[schema.ANTENNA_POSITION]
    assert pos.attrs["units"] == "m" and pos.attrs["frame"] == "ITRS"
    # VLA positions are ~6370 km from the geocentre
    assert np.allclose(np.linalg.norm(pos.values, axis=1), 6.37e6, rtol=0.01)


def test_paper_scans_become_partitions(tmp_path):
    from conftest import copy_ms

    ms = copy_ms("paper_zenith_4scan.ms", tmp_path)
    tree = radflow.open(convert(ms, tmp_path / "p.ps.zarr"))
    nodes = partitions(tree)
    scans = sorted(n.attrs[schema.ATTR_PARTITION_INFO][schema.PI_SCAN] for n in nodes.values())
    assert scans == [1, 2, 3, 4]
    assert sum(n.ds.sizes["time"] for n in nodes.values()) == 19
    for n in nodes.values():
        assert n.ds.sizes["baseline_id"] == 15 and n.ds.polarization.values.tolist() == ["XY"]


def test_lwa_autos_and_empty_state_table(tmp_path):
    from conftest import copy_ms

    ms = copy_ms("lwa_256ant.ms", tmp_path)
    tree = radflow.open(convert(ms, tmp_path / "l.ps.zarr"))
    (node,) = partitions(tree).values()
    ds = node.ds
    assert ds.attrs["type"] == schema.TYPE_VISIBILITY  # autos + crosses: interferometer data
    autos = ds[schema.BASELINE_ANTENNA1_NAME].values == ds[schema.BASELINE_ANTENNA2_NAME].values
    assert autos.sum() == 20 and ds.sizes["baseline_id"] == 210
    assert ds.attrs[schema.ATTR_PARTITION_INFO][schema.PI_INTENTS] == [schema.INTENT_UNSPECIFIED]


@pytest.mark.parametrize("shuffle", [False, True])
def test_round_trip_bit_exact(real_ms, tmp_path, shuffle):
    """MS -> store -> MS gives back DATA, FLAG, FLAG_ROW, WEIGHT, WEIGHT_SPECTRUM bit for bit,
    written into an MS whose columns were scrambled first, whatever the row order."""
    ms = real_ms
    if shuffle:
        shuffled = tmp_path / "shuffled.ms"
        with table(str(ms), ack=False) as t:
            perm = np.random.default_rng(1).permutation(t.nrows())
            sel = t.selectrows(perm.tolist())
            sel.copy(str(shuffled), deep=True, valuecopy=True).close()
            sel.close()
        ms = shuffled
    original = _main_columns(ms)
    store = convert(ms, tmp_path / "rt.ps.zarr", options=ConvertOptions(time_chunk=2))
    with table(str(ms), readonly=False, ack=False) as t:
        t.putcol("DATA", np.zeros_like(original["DATA"]))
        t.putcol("FLAG", ~original["FLAG"])
        t.putcol("FLAG_ROW", ~original["FLAG_ROW"])
        t.putcol("WEIGHT_SPECTRUM", np.full_like(original["WEIGHT_SPECTRUM"], -1))
    assert export(store, ms, group="base", column="DATA") == "DATA"
    back = _main_columns(ms)
    for col in ("DATA", "FLAG", "FLAG_ROW", "WEIGHT", "WEIGHT_SPECTRUM"):
        a, b = back[col], original[col]
        assert a.dtype == b.dtype and a.shape == b.shape, col
        assert a.tobytes() == b.tobytes(), f"{col} differs after the round trip"
    assert not any(c.startswith("RADFLOW_") for c in back)


def test_export_default_creates_corrected_data(vla_ms, tmp_path):
    store = convert(vla_ms, tmp_path / "v.ps.zarr")
    assert export(store, vla_ms, group="base") == "CORRECTED_DATA"
    cols = _main_columns(vla_ms)
    assert cols["CORRECTED_DATA"].tobytes() == cols["DATA"].tobytes()


@pytest.mark.peers
def test_xradio_summary_reads_radflow_store(real_ms, tmp_path):
    import xradio.measurement_set as xradio_ms  # a test dependency: imported, never skipped

    store = convert(real_ms, tmp_path / "x.ps.zarr")
    ps = xradio_ms.open_processing_set(str(store))  # the accessor only holds a weak reference
    summary = ps.xr_ps.summary()
    tree = radflow.open(store)
    assert len(summary) == len(partitions(tree))
    for _, row in summary.iterrows():
        assert tuple(row["shape"]) == partitions(tree)[row["name"]].ds[schema.VISIBILITY].shape


def test_vla_switched_power_subtables(vla_ms, tmp_path):
    """SYSPOWER and CALDEVICE become sub-datasets with units, per partition antenna and spw."""
    from radflow.converters.ms_writer import add_subtable

    with table(str(vla_ms), ack=False) as t:
        times = np.unique(t.getcol("TIME"))[[0, 7, 14]]
    n_ant = 28
    ant = np.repeat(np.arange(n_ant), 3).astype(np.int32)
    pdiff = (1.0 + ant[:, None] * 0.01 + np.array([0.0, 0.5])).astype(np.float32)
    add_subtable(vla_ms, "SYSPOWER", {
        "ANTENNA_ID": ant, "FEED_ID": np.zeros_like(ant), "SPECTRAL_WINDOW_ID": np.zeros_like(ant),
        "TIME": np.tile(times, n_ant), "INTERVAL": np.ones(len(ant)),
        "SWITCHED_DIFF": pdiff, "SWITCHED_SUM": 10 * pdiff,
        "REQUANTIZER_GAIN": np.ones((len(ant), 2), np.float32),
    })  # fmt: skip
    ids = np.arange(n_ant, dtype=np.int32)
    add_subtable(vla_ms, "CALDEVICE", {
        "ANTENNA_ID": ids, "FEED_ID": 0 * ids, "SPECTRAL_WINDOW_ID": 0 * ids,
        "TIME": np.full(n_ant, times[0]), "INTERVAL": np.ones(n_ant),
        "NOISE_CAL": np.stack([np.full(n_ant, 3.5), np.full(n_ant, 3.7)], axis=1)[:, None, :],
    })  # fmt: skip
    tree = radflow.open(convert(vla_ms, tmp_path / "sw.ps.zarr"))
    (node,) = partitions(tree).values()
    sp = node[schema.SWITCHED_POWER_XDS].ds
    used = node["antenna_xds"].ds.antenna_name.values
    assert sp[schema.SWITCHED_DIFF].dims == (
        "antenna_name",
        "time_switched_power",
        "receptor_label",
    )
    assert sp[schema.SWITCHED_DIFF].shape == (18, 3, 2)
    np.testing.assert_array_equal(sp.antenna_name.values, used)
    np.testing.assert_allclose(sp.time_switched_power.values, times - schema.MJD_UNIX_OFFSET_S)
    first = 0  # antenna id 0 is the first used antenna ("1_W09")
    np.testing.assert_allclose(sp[schema.SWITCHED_DIFF].values[0, :, :], pdiff[first * 3 : 3])
    np.testing.assert_allclose(sp[schema.SWITCHED_SUM].values / sp[schema.SWITCHED_DIFF].values, 10)
    cd = node[schema.CAL_DEVICE_XDS].ds
    assert cd[schema.NOISE_CAL].attrs["units"] == "K"
    np.testing.assert_allclose(cd[schema.NOISE_CAL].values[:, 0, 0, :], [[3.5, 3.7]] * 18)
