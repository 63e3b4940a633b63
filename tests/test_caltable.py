"""CASA caltable export/import (radflow.converters.caltable).

The default tests need only python-casacore. The tests marked ``casa`` run CASA 6 in a
subprocess (``RADFLOW_CASA_PYTHON``, see tests/test_casa_sd.py) as the oracle: CASA-written
tables must survive read -> write unchanged, CASA's applycal must accept radflow's tables, and
CASA's gaincal/bandpass solutions must read back as the simulator's truth.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from casacore import tables as ct

from radflow import schema
from radflow.converters import caltable
from radflow.converters.caltable import CaltableError, read_caltable, write_caltable
from radflow.converters.tables import close_cached
from radflow.testing import simulate_interferometer, simulate_single_dish

DIMS = caltable.SOLUTION_DIMS
CASA_PYTHON = os.environ.get("RADFLOW_CASA_PYTHON") or (
    sys.executable if importlib.util.find_spec("casatasks") else None
)
needs_casa = pytest.mark.skipif(CASA_PYTHON is None, reason="CASA absent (set RADFLOW_CASA_PYTHON)")


@pytest.fixture(scope="module")
def eb(tmp_path_factory):
    """A small ALMA-like MS: 4 antennas, 2 spws of 8 channels, 5 scans of 2 integrations."""
    path = tmp_path_factory.mktemp("caltable") / "small.ms"
    return simulate_interferometer(
        path, n_antennas=4, n_spw=2, n_chan=8, n_integrations=2, n_cycles=1, noise=False
    )


def _strings(values) -> list[str]:
    return [str(v) for v in np.asarray(values).tolist()]


def solution_table(eb, cal_type: str, seed: int = 0, weight: bool = False) -> dict:
    """A solution table per the schema, with random values, on the antennas/fields of `eb`."""
    rng = np.random.default_rng(seed)
    truth = eb.truth
    antennas = _strings(truth.antenna_name.values)
    if cal_type in (schema.CAL_TYPE_B, schema.CAL_TYPE_TSYS):  # one solution per scan
        first = np.unique(truth.SCAN_NUMBER.values, return_index=True)[1]
        pick = first[: 3 if cal_type == schema.CAL_TYPE_TSYS else 1]
    else:  # every integration
        pick = np.arange(truth.sizes["time"])
    times = truth.time_unix.values[pick]
    receptors = ["XY"] if cal_type == schema.CAL_TYPE_T else ["X", "Y"]
    out = {}
    for spw in range(truth.sizes["spw"]):
        chan = truth.frequency.values[spw]
        freq = chan if cal_type in (schema.CAL_TYPE_B, schema.CAL_TYPE_TSYS) else [chan.mean()]
        shape = (len(times), len(antennas), len(freq), len(receptors))
        if cal_type in (schema.CAL_TYPE_TSYS, schema.CAL_TYPE_K):
            values = rng.uniform(50.0, 150.0, shape).astype(np.float32)
        else:
            values = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
        units = {schema.CAL_TYPE_TSYS: "K", schema.CAL_TYPE_K: "ns"}.get(cal_type, "")
        data_vars = {
            schema.CALIBRATION_PARAMETER: (DIMS, values, {schema.ATTR_UNITS: units}),
            schema.PARAMETER_ERROR: (DIMS, rng.uniform(0, 0.1, shape).astype(np.float32)),
            schema.SNR: (DIMS, rng.uniform(0, 100, shape).astype(np.float32)),
            schema.FLAG: (DIMS, rng.random(shape) < 0.2),
            schema.REFERENCE_ANTENNA: (
                (schema.TIME,),
                np.array([antennas[k % 2] if k % 3 else "" for k in range(len(times))]),
            ),
            schema.SOLUTION_INTERVAL: ((schema.TIME,), rng.uniform(0, 60, len(times))),
        }
        if weight:
            data_vars[schema.WEIGHT] = (DIMS, rng.uniform(0, 1, shape).astype(np.float32))
        out[spw] = xr.Dataset(
            data_vars,
            coords={
                schema.TIME: times,
                schema.ANTENNA_NAME: antennas,
                schema.FREQUENCY: np.asarray(freq, dtype=float),
                schema.RECEPTOR: receptors,
                schema.FIELD_NAME: ((schema.TIME,), _strings(truth.FIELD.values[pick])),
                schema.SCAN_NUMBER: ((schema.TIME,), truth.SCAN_NUMBER.values[pick]),
            },
            attrs={
                schema.ATTR_TYPE: schema.TYPE_CALIBRATION_SOLUTION,
                schema.ATTR_CAL_TYPE: cal_type,
                schema.ATTR_SPW_ID: spw,
                schema.ATTR_SPECTRAL_WINDOW_NAME: str(truth.spectral_window_name.values[spw]),
                schema.ATTR_POL_BASIS: "linear",
            },
        )
    return out


def assert_same_solutions(got: xr.Dataset, want: xr.Dataset) -> None:
    """Bit-exact equality of everything a caltable carries."""
    for name in (schema.CALIBRATION_PARAMETER, schema.PARAMETER_ERROR, schema.SNR, schema.FLAG):
        assert got[name].dims == DIMS
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)
    if schema.WEIGHT in want:
        np.testing.assert_array_equal(got[schema.WEIGHT].values, want[schema.WEIGHT].values)
    else:
        assert schema.WEIGHT not in got
    np.testing.assert_array_equal(got[schema.TIME].values, want[schema.TIME].values)
    np.testing.assert_array_equal(got[schema.FREQUENCY].values, want[schema.FREQUENCY].values)
    for name in (schema.ANTENNA_NAME, schema.RECEPTOR, schema.FIELD_NAME,
                 schema.REFERENCE_ANTENNA):  # fmt: skip
        assert _strings(got[name].values) == _strings(want[name].values), name
    np.testing.assert_array_equal(got[schema.SCAN_NUMBER].values, want[schema.SCAN_NUMBER].values)
    np.testing.assert_array_equal(
        got[schema.SOLUTION_INTERVAL].values, want[schema.SOLUTION_INTERVAL].values
    )
    for attr in (schema.ATTR_TYPE, schema.ATTR_CAL_TYPE, schema.ATTR_SPW_ID,
                 schema.ATTR_SPECTRAL_WINDOW_NAME, schema.ATTR_POL_BASIS):  # fmt: skip
        assert got.attrs[attr] == want.attrs[attr], attr


# ---------------------------------------------------------------------------------------------
# round trip and layout (no CASA needed)


@pytest.mark.parametrize(
    "cal_type",
    [schema.CAL_TYPE_G, schema.CAL_TYPE_T, schema.CAL_TYPE_B, schema.CAL_TYPE_TSYS,
     schema.CAL_TYPE_K],
)  # fmt: skip
def test_round_trip_is_bit_exact(eb, tmp_path, cal_type):
    table = solution_table(eb, cal_type, weight=cal_type == schema.CAL_TYPE_G)
    path = write_caltable(table, tmp_path / f"{cal_type}.cal", eb.ms_path)
    back = read_caltable(path)
    assert sorted(back) == sorted(table)
    for spw, ds in table.items():
        assert_same_solutions(back[spw], ds)
        assert back[spw].attrs[schema.ATTR_MS_NAME] == eb.ms_path.name
        units = ds[schema.CALIBRATION_PARAMETER].attrs[schema.ATTR_UNITS]
        assert back[spw][schema.CALIBRATION_PARAMETER].attrs[schema.ATTR_UNITS] == units


def test_layout_matches_casa_newcaltable(eb, tmp_path):
    table = solution_table(eb, schema.CAL_TYPE_B)
    path = write_caltable(table, tmp_path / "B.cal", eb.ms_path)
    n_ant, n_chan = eb.truth.sizes["antenna_name"], eb.truth.sizes["chan"]
    with ct.table(str(path), ack=False) as t:
        assert t.info() == {"type": "Calibration", "subType": "B Jones", "readme": ""}
        assert t.colnames() == [
            "TIME", "FIELD_ID", "SPECTRAL_WINDOW_ID", "ANTENNA1", "ANTENNA2", "INTERVAL",
            "SCAN_NUMBER", "OBSERVATION_ID", "CPARAM", "PARAMERR", "FLAG", "SNR", "WEIGHT",
        ]  # fmt: skip
        kw = t.getkeywords()
        assert list(kw) == [
            "ParType", "MSName", "VisCal", "PolBasis", "CASA_Version",
            "OBSERVATION", "ANTENNA", "FIELD", "SPECTRAL_WINDOW", "HISTORY",
        ]  # fmt: skip
        assert (kw["ParType"], kw["MSName"], kw["VisCal"], kw["PolBasis"]) == (
            "Complex", eb.ms_path.name, "B Jones", "LINEAR",
        )  # fmt: skip
        desc = t.getdesc()
        assert desc["TIME"]["keywords"] == {
            "QuantumUnits": ["s"], "MEASINFO": {"type": "epoch", "Ref": "UTC"},
        }  # fmt: skip
        assert desc["INTERVAL"]["keywords"] == {"QuantumUnits": ["s"]}
        for col, vtype in (("CPARAM", "complex"), ("PARAMERR", "float"), ("FLAG", "boolean"),
                           ("SNR", "float"), ("WEIGHT", "float")):  # fmt: skip
            assert (desc[col]["valueType"], desc[col]["ndim"]) == (vtype, -1)
        dm = t.getdminfo()
        assert [(d["TYPE"], d["NAME"]) for d in dm.values()] == [("StandardStMan", "MSMTAB")]
        assert t.nrows() == 2 * n_ant  # 2 spws x 1 solution x antennas
        assert t.getcell("CPARAM", 0).shape == (n_chan, 2)  # [npar, nchan] in casacore order
        assert not t.iscelldefined("WEIGHT", 0)  # as CASA: WEIGHT left undefined
        np.testing.assert_array_equal(t.getcol("SPECTRAL_WINDOW_ID"), np.repeat([0, 1], n_ant))
        np.testing.assert_array_equal(t.getcol("ANTENNA1"), np.tile(np.arange(n_ant), 2))
        mjd = eb.truth.time.values[0]  # the first integration: scan 1
        np.testing.assert_array_equal(t.getcol("TIME"), np.full(2 * n_ant, mjd))
        np.testing.assert_array_equal(t.getcol("FIELD_ID"), 0)
        np.testing.assert_array_equal(t.getcol("SCAN_NUMBER"), 1)
        np.testing.assert_array_equal(t.getcol("OBSERVATION_ID"), 0)
    with ct.table(str(path / "SPECTRAL_WINDOW"), ack=False) as spw:
        assert spw.getcol("NUM_CHAN").tolist() == [n_chan, n_chan]
        np.testing.assert_array_equal(spw.getcol("CHAN_FREQ"), eb.truth.frequency.values)
        # as CASA 6.7's setSpwFreqs writes them
        np.testing.assert_array_equal(spw.getcol("RESOLUTION"), eb.truth.frequency.values)
        assert spw.getcol("FLAG_ROW").tolist() == [False, False]
    with ct.table(str(path / "ANTENNA"), ack=False) as ant:
        assert ant.getcol("NAME") == _strings(eb.truth.antenna_name.values)
    with ct.table(str(path / "HISTORY"), ack=False) as hist:
        assert hist.nrows() == 0  # CASA does not copy the MS HISTORY


def test_gain_table_spectral_window_single_channel(eb, tmp_path):
    """G/T: every spw collapses to one channel; unsolved spws flagged (CASA's layout)."""
    table = solution_table(eb, schema.CAL_TYPE_G)
    path = write_caltable({1: table[1]}, tmp_path / "G.cal", eb.ms_path)
    freq = eb.truth.frequency.values
    bandwidth = 1.875e9
    with ct.table(str(path / "SPECTRAL_WINDOW"), ack=False) as spw:
        assert spw.getcol("NUM_CHAN").tolist() == [1, 1]
        assert spw.getcol("FLAG_ROW").tolist() == [True, False]
        np.testing.assert_allclose(spw.getcol("CHAN_FREQ")[:, 0], freq.mean(axis=1))
        np.testing.assert_allclose(spw.getcol("CHAN_WIDTH")[:, 0], bandwidth)
        np.testing.assert_allclose(spw.getcol("RESOLUTION")[:, 0], [bandwidth, freq[1].mean()])
    back = read_caltable(path)
    assert list(back) == [1]
    assert_same_solutions(back[1], table[1])


def test_rows_sorted_and_read_back_in_time_and_antenna_order(eb, tmp_path):
    table = solution_table(eb, schema.CAL_TYPE_G)
    ds = table[0]
    shuffled = ds.isel({schema.TIME: np.arange(ds.sizes["time"])[::-1],
                        schema.ANTENNA_NAME: [2, 0, 3, 1]})  # fmt: skip
    path = write_caltable({0: shuffled}, tmp_path / "G.cal", eb.ms_path)
    with ct.table(str(path), ack=False) as t:
        assert np.all(np.diff(t.getcol("TIME")) >= 0)
        np.testing.assert_array_equal(t.getcol("ANTENNA1")[:4], [0, 1, 2, 3])
    assert_same_solutions(read_caltable(path)[0], ds)


def test_dask_backed_solutions_computed_once_and_refant_indices(eb, tmp_path):
    """As radflow.cal.gain returns them: lazy arrays sharing one graph, refants as indices."""
    import dask
    import dask.array as da

    table = solution_table(eb, schema.CAL_TYPE_G)
    calls = []

    @dask.delayed
    def solve_all():  # one solver run yields every spw's parameters and SNRs
        calls.append(1)
        return {
            spw: (ds[schema.CALIBRATION_PARAMETER].values, ds[schema.SNR].values)
            for spw, ds in table.items()
        }

    shared = solve_all()
    lazy = {}
    for spw, ds in table.items():
        shape = ds[schema.CALIBRATION_PARAMETER].shape
        names = _strings(ds[schema.ANTENNA_NAME].values)
        index = [names.index(r) if r else -1 for r in _strings(ds[schema.REFERENCE_ANTENNA])]
        lazy[spw] = ds.assign(
            {
                schema.CALIBRATION_PARAMETER: (
                    DIMS, da.from_delayed(shared[spw][0], shape, np.complex64)
                ),
                schema.SNR: (DIMS, da.from_delayed(shared[spw][1], shape, np.float32)),
                schema.REFERENCE_ANTENNA: ((schema.TIME,), np.array(index)),
            }
        )  # fmt: skip
    back = read_caltable(write_caltable(lazy, tmp_path / "G.cal", eb.ms_path))
    assert len(calls) == 1  # one compute for all spws and variables
    for spw, ds in table.items():
        assert_same_solutions(back[spw], ds)


def test_float64_parameters_round_to_float32(eb, tmp_path):
    table = solution_table(eb, schema.CAL_TYPE_TSYS)
    ds = table[0]
    ds[schema.CALIBRATION_PARAMETER] = ds[schema.CALIBRATION_PARAMETER].astype(np.float64) + 1e-9
    back = read_caltable(write_caltable({0: ds}, tmp_path / "tsys.cal", eb.ms_path))[0]
    np.testing.assert_array_equal(
        back[schema.CALIBRATION_PARAMETER].values,
        ds[schema.CALIBRATION_PARAMETER].values.astype(np.float32),
    )


def test_times_off_the_ms_grid_round_to_a_microsecond(eb, tmp_path):
    ds = solution_table(eb, schema.CAL_TYPE_G)[0]
    ds = ds.assign_coords({schema.TIME: ds[schema.TIME].values + 1e-7 * np.pi})
    back = read_caltable(write_caltable({0: ds}, tmp_path / "G.cal", eb.ms_path))[0]
    np.testing.assert_allclose(back[schema.TIME].values, ds[schema.TIME].values, rtol=0, atol=5e-7)


def test_optional_variables_get_casa_defaults(eb, tmp_path):
    """A bare solution (like radflow.cal.tsys.solve's: no errors, SNR, fields, refants)."""
    ds = solution_table(eb, schema.CAL_TYPE_TSYS)[0]
    bare = ds[[schema.CALIBRATION_PARAMETER, schema.FLAG]].drop_vars(
        [schema.FIELD_NAME, schema.SCAN_NUMBER]
    )
    bare[schema.CALIBRATION_PARAMETER][0, 0, 0, 0] = np.nan  # non-finite: flagged on export
    path = write_caltable({0: bare}, tmp_path / "tsys.cal", eb.ms_path)
    with ct.table(str(path), ack=False) as t:
        assert t.getkeywords()["VisCal"] == "B TSYS"
        assert t.getkeywords()["ParType"] == "Float"
        np.testing.assert_array_equal(t.getcol("FIELD_ID"), -1)
        np.testing.assert_array_equal(t.getcol("ANTENNA2"), -1)
        np.testing.assert_array_equal(t.getcol("SCAN_NUMBER"), -1)
    back = read_caltable(path)[0]
    np.testing.assert_array_equal(back[schema.PARAMETER_ERROR].values, 0.0)
    np.testing.assert_array_equal(back[schema.SNR].values, 1.0)
    assert _strings(back[schema.FIELD_NAME].values) == [""] * bare.sizes["time"]
    assert back[schema.FLAG].values[0, 0, 0, 0]
    flag = bare[schema.FLAG].values.copy()
    flag[0, 0, 0, 0] = True
    np.testing.assert_array_equal(back[schema.FLAG].values, flag)


def test_missing_rows_read_as_flagged_and_unused_antenna_slots_dropped(eb, tmp_path):
    ds = solution_table(eb, schema.CAL_TYPE_G)[0]
    ds[schema.FLAG][:, 3] = True  # antenna 3 never solved
    path = write_caltable({0: ds}, tmp_path / "G.cal", eb.ms_path)
    with ct.table(str(path), readonly=False, ack=False) as t:
        t.removerows([1])  # antenna 1 of the first solution
    with ct.table(str(path / "ANTENNA"), readonly=False, ack=False) as ant:
        ant.putcell("FLAG_ROW", 3, True)  # an unused slot, as the VLA's empty antenna rows
    back = read_caltable(path)[0]
    assert _strings(back[schema.ANTENNA_NAME].values) == _strings(ds[schema.ANTENNA_NAME][:3])
    assert back[schema.FLAG].values[0, 1].all()
    np.testing.assert_array_equal(back[schema.CALIBRATION_PARAMETER].values[0, 1], 1.0)
    np.testing.assert_array_equal(
        back[schema.CALIBRATION_PARAMETER].values[1:], ds[schema.CALIBRATION_PARAMETER][1:, :3]
    )


# ---------------------------------------------------------------------------------------------
# errors


def _retag(table: dict, **changes) -> dict:
    return {spw: ds.assign_attrs(changes) for spw, ds in table.items()}


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda t: {0: t[0].assign_coords(antenna_name=["DA41", "DV01", "DA42", "XX99"])},
         r"unknown antenna \['XX99'\]"),
        (lambda t: {0: t[0].assign_coords(field_name=("time", ["Mars"] * t[0].sizes["time"]))},
         r"unknown field \['Mars'\]"),
        (lambda t: {0: t[0].assign({schema.REFERENCE_ANTENNA: ("time", ["PM99"] *
                                    t[0].sizes["time"])})},
         r"unknown reference antenna \['PM99'\]"),
        (lambda t: {7: t[0].drop_attrs()
                    .assign_attrs({schema.ATTR_CAL_TYPE: schema.CAL_TYPE_G})},
         "spectral window 7 is not in"),
        (lambda t: {1: t[0]}, "spectral_window_id=0"),
        (lambda t: {0: t[0].expand_dims(extra=1)}, "has dims"),
        (lambda t: _retag(t, cal_type="SKY"), "must be one of"),
        (lambda t: {0: t[0], 1: t[1].isel(receptor=[0]).assign_attrs(cal_type="T")},
         "one cal_type"),
        (lambda t: {0: t[0].assign_coords(receptor=["XY", "YX"]).assign_attrs(cal_type="T")},
         "a T table has one receptor"),
        (lambda t: {0: t[0].isel(frequency=[0, 0])}, "one frequency per spw"),
        (lambda t: {0: t[0].assign_attrs(spectral_window_name="SPW_OTHER")}, "another MS"),
        (lambda t: {0: t[0].assign_attrs(polarization_basis="elliptic")}, "polarization_basis"),
    ],
)  # fmt: skip
def test_write_errors_name_what_does_not_match(eb, tmp_path, mutate, match):
    table = mutate(solution_table(eb, schema.CAL_TYPE_G))
    with pytest.raises(CaltableError, match=match):
        write_caltable(table, tmp_path / "bad.cal", eb.ms_path)
    assert not (tmp_path / "bad.cal").exists()
    assert list(tmp_path.iterdir()) == []


def test_bandpass_frequency_axis_must_match_the_spw(eb, tmp_path):
    table = solution_table(eb, schema.CAL_TYPE_B)
    shifted = {0: table[0].assign_coords(frequency=table[0].frequency.values + 1e6)}
    with pytest.raises(CaltableError, match="do not match the channels of spw 0"):
        write_caltable(shifted, tmp_path / "B.cal", eb.ms_path)
    swapped = {0: table[0].assign_coords(frequency=table[1].frequency.values)}
    with pytest.raises(CaltableError, match="do not match the channels of spw 0"):
        write_caltable(swapped, tmp_path / "B.cal", eb.ms_path)
    # a contiguous run of the spw's channels is fine (CASA writes those for spw='0:2~5')
    part = {0: table[0].isel(frequency=slice(2, 6))}
    back = read_caltable(write_caltable(part, tmp_path / "B.cal", eb.ms_path))
    assert_same_solutions(back[0], part[0])


def test_complex_tsys_and_wrong_units_refused(eb, tmp_path):
    ds = solution_table(eb, schema.CAL_TYPE_TSYS)[0]
    with pytest.raises(CaltableError, match="real parameters"):
        complex_tsys = ds.assign({schema.CALIBRATION_PARAMETER: ds[schema.CALIBRATION_PARAMETER]
                                  .astype(np.complex64)})  # fmt: skip
        write_caltable({0: complex_tsys}, tmp_path / "t.cal", eb.ms_path)
    ds[schema.CALIBRATION_PARAMETER].attrs[schema.ATTR_UNITS] = "Jy"
    with pytest.raises(CaltableError, match="Tsys must be in K"):
        write_caltable({0: ds}, tmp_path / "t.cal", eb.ms_path)


def test_existing_path_needs_overwrite(eb, tmp_path):
    g = solution_table(eb, schema.CAL_TYPE_G, seed=1)
    t = solution_table(eb, schema.CAL_TYPE_T, seed=2)
    path = write_caltable(g, tmp_path / "x.cal", eb.ms_path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_caltable(t, path, eb.ms_path)
    assert read_caltable(path)[0].attrs[schema.ATTR_CAL_TYPE] == schema.CAL_TYPE_G
    write_caltable(t, path, eb.ms_path, overwrite=True)
    assert_same_solutions(read_caltable(path)[0], t[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.cal"]
    with pytest.raises(CaltableError, match="its own MS"):
        write_caltable(t, eb.ms_path, eb.ms_path, overwrite=True)


def test_failure_mid_write_leaves_nothing_behind(eb, tmp_path, monkeypatch):
    g = solution_table(eb, schema.CAL_TYPE_G)
    path = write_caltable(g, tmp_path / "G.cal", eb.ms_path)
    real = caltable._write_subtable

    def failing(sub_path, name, *args):
        if name == "SPECTRAL_WINDOW":  # the main table and three subtables exist by now
            assert (sub_path.parent / "table.dat").exists()
            raise OSError("disk full")
        return real(sub_path, name, *args)

    monkeypatch.setattr(caltable, "_write_subtable", failing)
    with pytest.raises(OSError, match="disk full"):
        write_caltable(g, tmp_path / "new.cal", eb.ms_path)
    with pytest.raises(OSError, match="disk full"):
        write_caltable(solution_table(eb, "T"), path, eb.ms_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["G.cal"]  # no temporary left
    assert_same_solutions(read_caltable(path)[0], g[0])  # the old table is intact


def test_read_errors(eb, tmp_path):
    with pytest.raises(CaltableError, match="not a CASA table"):
        read_caltable(tmp_path / "nothing.cal")
    with pytest.raises(CaltableError, match="not a CASA caltable"):
        read_caltable(eb.ms_path)
    # CASA's pre-4.1 layout, still used for BPOLY
    old = tmp_path / "bpoly.cal"
    desc = ct.maketabdesc([ct.makescacoldesc("TIME", 0.0), ct.makescacoldesc("ANTENNA1", 0)])
    with ct.table(str(old), desc, nrow=1, ack=False) as t:
        t.putinfo({"type": "Calibration", "subType": "BPOLY", "readme": ""})
    with pytest.raises(CaltableError, match="old CalTable layout"):
        read_caltable(old)
    path = write_caltable(solution_table(eb, "G"), tmp_path / "G.cal", eb.ms_path)
    with ct.table(str(path), readonly=False, ack=False) as t:
        t.putkeyword("PolBasis", "unknown")
    with ct.table(str(path / "OBSERVATION"), readonly=False, ack=False) as obs:
        obs.putcell("TELESCOPE_NAME", 0, "NEWSCOPE")
    with pytest.raises(CaltableError, match="polarization_basis='linear' or 'circular'"):
        read_caltable(path)
    circ = read_caltable(path, polarization_basis="circular")[0]
    assert _strings(circ[schema.RECEPTOR].values) == ["R", "L"]
    with ct.table(str(path), readonly=False, ack=False) as t:
        t.putkeyword("VisCal", "D Jones")
        t.putinfo({"type": "Calibration", "subType": "D Jones", "readme": ""})
    with pytest.raises(CaltableError, match="VisCal 'D Jones' is not supported"):
        read_caltable(path)


# ---------------------------------------------------------------------------------------------
# CASA as the oracle (optional)


def run_casa(tmp_path: Path, code: str) -> None:
    """Run `code` with CASA's python in `tmp_path` (CASA writes its log there)."""
    script = tmp_path / "casa_script.py"
    script.write_text(textwrap.dedent(code))
    proc = subprocess.run(
        [CASA_PYTHON, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def true_gain_table(eb) -> dict:
    """The simulator's g_ip(t) at every integration as a G table (refant: none)."""
    truth = eb.truth
    gain = truth.GAIN.values[:, :, None, :]  # (time, antenna, 1, receptor)
    return {
        spw: xr.Dataset(
            {
                schema.CALIBRATION_PARAMETER: (DIMS, gain),
                schema.FLAG: (DIMS, np.zeros(gain.shape, dtype=bool)),
            },
            coords={
                schema.TIME: truth.time_unix.values,
                schema.ANTENNA_NAME: _strings(truth.antenna_name.values),
                schema.FREQUENCY: [float(truth.frequency.values[spw].mean())],
                schema.RECEPTOR: ["X", "Y"],
                schema.FIELD_NAME: ((schema.TIME,), _strings(truth.FIELD.values)),
                schema.SCAN_NUMBER: ((schema.TIME,), truth.SCAN_NUMBER.values),
            },
            attrs={schema.ATTR_CAL_TYPE: schema.CAL_TYPE_G, schema.ATTR_SPW_ID: spw},
        )
        for spw in range(truth.sizes["spw"])
    }


def true_bandpass_table(eb) -> dict:
    truth = eb.truth
    t0 = truth.time_unix.values[:1]
    out = {}
    for spw in range(truth.sizes["spw"]):
        bp = truth.BANDPASS.values[None, :, spw]  # (1, antenna, chan, receptor)
        out[spw] = xr.Dataset(
            {
                schema.CALIBRATION_PARAMETER: (DIMS, bp),
                schema.FLAG: (DIMS, np.zeros(bp.shape, dtype=bool)),
            },
            coords={
                schema.TIME: t0,
                schema.ANTENNA_NAME: _strings(truth.antenna_name.values),
                schema.FREQUENCY: truth.frequency.values[spw],
                schema.RECEPTOR: ["X", "Y"],
                schema.FIELD_NAME: ((schema.TIME,), _strings(truth.FIELD.values[:1])),
                schema.SCAN_NUMBER: ((schema.TIME,), truth.SCAN_NUMBER.values[:1]),
            },
            attrs={schema.ATTR_CAL_TYPE: schema.CAL_TYPE_B, schema.ATTR_SPW_ID: spw},
        )
    return out


def _cells_equal(a: ct.table, b: ct.table, col: str) -> bool:
    for row in range(a.nrows()):
        da, db = a.iscelldefined(col, row), b.iscelldefined(col, row)
        if da != db:
            return False
        if da and not np.array_equal(np.asarray(a.getcell(col, row)),
                                     np.asarray(b.getcell(col, row))):  # fmt: skip
            return False
    return True


def assert_same_caltable(casa: Path, ours: Path) -> None:
    """Identical tables (descriptions, data managers, keywords, info, every cell, subtables),
    apart from the keywords PolBasis and CASA_Version."""
    for sub in ("", "OBSERVATION", "ANTENNA", "FIELD", "SPECTRAL_WINDOW", "HISTORY"):
        with ct.table(str(casa / sub), ack=False) as a, ct.table(str(ours / sub), ack=False) as b:
            where = f"{ours.name}/{sub}"
            assert a.info() == b.info(), where
            assert a.colnames() == b.colnames(), where
            assert a.nrows() == b.nrows(), where
            desc_a, desc_b = a.getdesc(), b.getdesc()
            for col in a.colnames():
                assert repr(desc_a[col]) == repr(desc_b[col]), (where, col)
                assert _cells_equal(a, b, col), (where, col)
            dm_a, dm_b = a.getdminfo(), b.getdminfo()
            assert [(d["TYPE"], d["NAME"], sorted(d["COLUMNS"])) for d in dm_a.values()] == [
                (d["TYPE"], d["NAME"], sorted(d["COLUMNS"])) for d in dm_b.values()
            ], where
            kw_a, kw_b = a.getkeywords(), b.getkeywords()
            assert list(kw_a) == list(kw_b), where
            for key in kw_a:
                if key in ("PolBasis", "CASA_Version") or str(kw_a[key]).startswith("Table:"):
                    continue
                assert kw_a[key] == kw_b[key], (where, key)


@pytest.mark.casa
@needs_casa
def test_casa_tables_survive_read_write_unchanged(tmp_path):
    """gaincal G/T, bandpass B and gencal Tsys tables -> read_caltable -> write_caltable."""
    ms = simulate_interferometer(
        tmp_path / "sim.ms", n_antennas=5, n_spw=2, n_chan=16, n_integrations=3, n_cycles=1,
        extra_columns=("MODEL_DATA",), seed=3,
    ).ms_path  # fmt: skip
    sd = simulate_single_dish(
        tmp_path / "sd.ms", n_basebands=2, n_science_chan=32, n_tsys_chan=16, seed=3
    ).ms_path
    run_casa(
        tmp_path,
        f"""
        from casatasks import bandpass, gaincal, gencal
        ms = {str(ms)!r}
        gaincal(vis=ms, caltable="G.cal", solint="int", refant="DA41", field="0,1,2")
        gaincal(vis=ms, caltable="Ginf.cal", solint="inf", refant="DA41", spw="1")
        gaincal(vis=ms, caltable="T.cal", solint="int", refant="DA41", gaintype="T")
        gaincal(vis=ms, caltable="K.cal", solint="inf", refant="DA41", gaintype="K", field="0")
        bandpass(vis=ms, caltable="B.cal", field="0", solint="inf", combine="scan",
                 refant="DA41")
        bandpass(vis=ms, caltable="Bsub.cal", field="0", solint="inf", combine="scan",
                 refant="DA41", spw="1:3~12")
        gencal(vis={str(sd)!r}, caltable="Tsys.cal", caltype="tsys")
        """,
    )
    for name, source in (("G", ms), ("Ginf", ms), ("T", ms), ("K", ms), ("B", ms),
                         ("Bsub", ms), ("Tsys", sd)):  # fmt: skip
        casa = tmp_path / f"{name}.cal"
        table = read_caltable(casa)
        expected = {"Ginf": "G", "Bsub": "B"}.get(name, name).replace("Tsys", "TSYS")
        assert {ds.attrs[schema.ATTR_CAL_TYPE] for ds in table.values()} == {expected}
        ours = write_caltable(table, tmp_path / f"{name}.radflow.cal", source)
        assert_same_caltable(casa, ours)
        for spw, ds in read_caltable(ours).items():
            assert_same_solutions(ds, table[spw])


@pytest.mark.casa
@needs_casa
def test_casa_applycal_with_true_gains_recovers_model_times_bandpass(tmp_path):
    eb = simulate_interferometer(
        tmp_path / "nn.ms", n_antennas=5, n_spw=2, n_chan=16, n_integrations=3, n_cycles=1,
        noise=False, flags=False, seed=5,
    )  # fmt: skip
    gtab = write_caltable(true_gain_table(eb), tmp_path / "true.G", eb.ms_path)
    run_casa(
        tmp_path,
        f"""
        from casatasks import applycal
        applycal(vis={str(eb.ms_path)!r}, gaintable=[{str(gtab)!r}], calwt=False,
                 flagbackup=False)
        """,
    )
    truth = eb.truth
    close_cached(eb.ms_path)  # write_caltable's cached MS handle predates CORRECTED_DATA
    with ct.table(str(eb.ms_path), ack=False) as t:
        corrected, flag = t.getcol("CORRECTED_DATA"), t.getcol("FLAG")
        a1, a2 = t.getcol("ANTENNA1"), t.getcol("ANTENNA2")
        spw, field = t.getcol("DATA_DESC_ID"), t.getcol("FIELD_ID")
    bp, flux = truth.BANDPASS.values, truth.FLUX_DENSITY.values  # (ant, spw, chan, rec)
    expected = np.stack(
        [flux[field, spw] * bp[a1, spw, :, p] * np.conj(bp[a2, spw, :, p]) for p in (0, 1)],
        axis=-1,
    )
    assert not flag.any()  # every antenna, field and integration has its solution
    rel = np.abs(corrected - expected) / np.abs(expected)
    assert rel.max() < 1e-5, rel.max()


def _reference(values: np.ndarray, refant: int) -> np.ndarray:
    """Divide out the phase of antenna `refant` (axis 1), as CASA's refant does."""
    ref = values[:, refant : refant + 1]
    return values * np.conj(ref) / np.abs(ref)


@pytest.mark.casa
@needs_casa
def test_casa_gaincal_and_bandpass_read_back_as_the_truth(tmp_path):
    eb = simulate_interferometer(
        tmp_path / "sim.ms", n_antennas=8, n_spw=2, n_chan=32, n_integrations=4, n_cycles=1,
        extra_columns=("MODEL_DATA",), seed=7,
    )  # fmt: skip
    truth = eb.truth
    btab = write_caltable(true_bandpass_table(eb), tmp_path / "true.B", eb.ms_path)
    gtab = write_caltable(true_gain_table(eb), tmp_path / "true.G", eb.ms_path)
    run_casa(
        tmp_path,
        f"""
        from casatasks import bandpass, gaincal
        ms = {str(eb.ms_path)!r}
        gaincal(vis=ms, caltable="casa.G", field="0,1,2", solint="int", refant="DA41",
                minsnr=3, gaintable=[{str(btab)!r}])
        bandpass(vis=ms, caltable="casa.B", field="0", solint="inf", combine="scan",
                 refant="DA41", gaintable=[{str(gtab)!r}])
        """,
    )
    # (2) gaincal G (after radflow's true bandpass) vs the true gains, up to the refant phase
    g = read_caltable(tmp_path / "casa.G")
    on_cal = np.isin(_strings(truth.FIELD.values), ["J1256-0547", "J1924-2914", "J1037-2934"])
    for spw, ds in g.items():
        assert ds.attrs[schema.ATTR_CAL_TYPE] == schema.CAL_TYPE_G
        assert ds.sizes == {"time": on_cal.sum(), "antenna_name": 8, "frequency": 1, "receptor": 2}
        assert _strings(ds[schema.ANTENNA_NAME].values) == _strings(truth.antenna_name.values)
        np.testing.assert_allclose(ds.time.values, truth.time_unix.values[on_cal], atol=1e-3)
        assert _strings(ds[schema.FIELD_NAME].values) == _strings(truth.FIELD.values[on_cal])
        assert set(_strings(ds[schema.REFERENCE_ANTENNA].values)) == {"DA41"}
        np.testing.assert_allclose(ds.frequency.values, [truth.frequency.values[spw].mean()])
        got = ds[schema.CALIBRATION_PARAMETER].values[:, :, 0]
        want = _reference(truth.GAIN.values[on_cal], 0)
        err = ds[schema.PARAMETER_ERROR].values[:, :, 0]
        good = ~ds[schema.FLAG].values[:, :, 0]
        assert good.mean() > 0.9
        assert np.all(np.abs(got - want)[good] < 5 * err[good] + 1e-4)
        assert np.median(np.abs(got - want)[good] / np.abs(want)[good]) < 0.01
    # (3) bandpass B (after radflow's true gains) vs the true bandpass, up to the refant phase
    b = read_caltable(tmp_path / "casa.B")
    for spw, ds in b.items():
        assert ds.attrs[schema.ATTR_CAL_TYPE] == schema.CAL_TYPE_B
        assert ds.sizes == {"time": 1, "antenna_name": 8, "frequency": 32, "receptor": 2}
        np.testing.assert_array_equal(ds.frequency.values, truth.frequency.values[spw])
        assert _strings(ds[schema.FIELD_NAME].values) == ["J1256-0547"]
        got = ds[schema.CALIBRATION_PARAMETER].values[0]  # (antenna, chan, receptor)
        want = _reference(truth.BANDPASS.values[None, :, spw], 0)[0]
        flag = ds[schema.FLAG].values[0]
        flagged_chans = truth.FLAGGED_CHANNELS.values[spw]
        assert flag[:, flagged_chans].all()
        good = ~flag
        assert good.sum() == 8 * 2 * (32 - len(flagged_chans))
        err = ds[schema.PARAMETER_ERROR].values[0]
        assert np.all(np.abs(got - want)[good] < 5 * err[good] + 1e-4)
        assert np.median(np.abs(got - want)[good] / np.abs(want)[good]) < 0.01


@pytest.mark.casa
@needs_casa
def test_casa_tsys_tables_agree_with_the_truth(tmp_path):
    """gencal's Tsys reads back as the SYSCAL truth; applycal applies radflow's Tsys table."""
    eb = simulate_single_dish(
        tmp_path / "sd.ms", n_basebands=2, n_science_chan=32, n_tsys_chan=16, seed=11
    )
    truth = eb.truth
    knots_unix = truth.tsys_knot_time.values - schema.MJD_UNIX_OFFSET_S
    antennas = _strings(truth.antenna_name.values)
    table = {}
    for k, spw in enumerate(truth.science_spw.values.tolist()):
        tsys = truth.TSYS_SCIENCE.values[:, k]  # (time, antenna, chan, pol)
        table[spw] = xr.Dataset(
            {
                schema.CALIBRATION_PARAMETER: (DIMS, tsys, {schema.ATTR_UNITS: "K"}),
                schema.FLAG: (DIMS, np.zeros(tsys.shape, dtype=bool)),
            },
            coords={
                schema.TIME: knots_unix,
                schema.ANTENNA_NAME: antennas,
                schema.FREQUENCY: truth.science_frequency.values[k],
                schema.RECEPTOR: ["X", "Y"],
            },
            attrs={schema.ATTR_CAL_TYPE: schema.CAL_TYPE_TSYS},
        )
    ours = write_caltable(table, tmp_path / "radflow.tsys", eb.ms_path)
    run_casa(
        tmp_path,
        f"""
        from casatasks import applycal, gencal
        ms = {str(eb.ms_path)!r}
        gencal(vis=ms, caltable="casa.tsys", caltype="tsys")
        applycal(vis=ms, gaintable=[{str(ours)!r}], spw="1,3", calwt=False, flagbackup=False)
        """,
    )
    # gencal: the SYSCAL spectra on the Tsys spws, at SYSCAL TIME - INTERVAL/2
    casa = read_caltable(tmp_path / "casa.tsys")
    assert sorted(casa) == truth.tsys_spw.values.tolist()
    for k, spw in enumerate(truth.tsys_spw.values.tolist()):
        ds = casa[spw]
        assert ds.attrs[schema.ATTR_CAL_TYPE] == schema.CAL_TYPE_TSYS
        assert ds[schema.CALIBRATION_PARAMETER].attrs[schema.ATTR_UNITS] == "K"
        np.testing.assert_allclose(ds.time.values, knots_unix, rtol=0, atol=1e-3)
        want = truth.SYSCAL_TSYS.values[:, k]  # (time, antenna, chan, pol)
        np.testing.assert_array_equal(ds[schema.CALIBRATION_PARAMETER].values, want)
    # applycal with radflow's table: CORRECTED = FLOAT_DATA x Tsys(t) (linear in time)
    close_cached(eb.ms_path)
    with ct.table(str(eb.ms_path), ack=False) as t:
        for k, spw in enumerate(truth.science_spw.values.tolist()):
            rows = t.query(f"DATA_DESC_ID=={spw}")
            ratio = rows.getcol("CORRECTED_DATA").real / rows.getcol("FLOAT_DATA")
            time, ant = rows.getcol("TIME"), rows.getcol("ANTENNA1")
            rows.close()
            tsys = truth.TSYS_SCIENCE.values[:, k]
            want = np.stack(
                [
                    np.interp(time[i], truth.tsys_knot_time.values, tsys[:, ant[i], c, p])
                    for i in range(time.size)
                    for c in range(tsys.shape[2])
                    for p in range(tsys.shape[3])
                ]
            ).reshape(ratio.shape)
            np.testing.assert_allclose(ratio, want, rtol=1e-5)
