"""The step framework (radflow.step), the laziness helper and the test dataset builders."""

from __future__ import annotations

import copy
from datetime import datetime

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from radflow import schema, step
from radflow.cal import scale
from radflow.testing.datasets import make_spectrum_partition, make_visibility_partition
from radflow.testing.lazy import ComputeForbidden, assert_lazy, forbid_compute


@pytest.fixture
def vis() -> xr.Dataset:
    return make_visibility_partition(
        scan=3, intents=[schema.INTENT_ON_SOURCE], chunks={schema.TIME: 1}
    )


# ---- forbid_compute / assert_lazy ----

COMPUTES = {
    ".values": lambda ds: ds[schema.VISIBILITY].values,
    "np.asarray": lambda ds: np.asarray(ds[schema.WEIGHT]),
    ".to_numpy()": lambda ds: ds[schema.FLAG].to_numpy(),
    "DataArray.load()": lambda ds: ds[schema.WEIGHT].load(),
    "Dataset.load()": lambda ds: ds.load(),
    ".compute()": lambda ds: ds.compute(),
    ".persist()": lambda ds: ds.persist(),
    "float()": lambda ds: float(ds[schema.WEIGHT].sum()),
    "bool()": lambda ds: bool(ds[schema.FLAG].any()),
    "dask.compute": lambda ds: dask.compute(ds[schema.WEIGHT].data),
}


@pytest.mark.parametrize("how", COMPUTES)
def test_forbid_compute_catches_every_route_to_numbers(vis: xr.Dataset, how: str) -> None:
    with forbid_compute(), pytest.raises(ComputeForbidden, match="lazy step must not"):
        COMPUTES[how](vis)
    # The scheduler is restored on exit.
    assert COMPUTES[how](vis) is not None


def test_assert_lazy_returns_result_and_fails_an_eager_step(vis: xr.Dataset) -> None:
    def lazy_step(ds: xr.Dataset) -> xr.Dataset:
        return ds.assign(DOUBLE=ds[schema.WEIGHT] * 2)

    def eager_step(ds: xr.Dataset) -> xr.Dataset:
        return ds.assign(DOUBLE=(ds[schema.WEIGHT].dims, ds[schema.WEIGHT].values * 2))

    out = assert_lazy(lazy_step, vis)
    assert isinstance(out["DOUBLE"].data, da.Array)
    with pytest.raises(ComputeForbidden):
        assert_lazy(eager_step, vis)


# ---- dataset builders ----


def test_builders_follow_the_data_model() -> None:
    vis = make_visibility_partition(n_time=5, antennas=("a", "b", "c", "d"), n_chan=3)
    assert vis.attrs[schema.ATTR_TYPE] == schema.TYPE_VISIBILITY
    assert vis[schema.VISIBILITY].dims == (
        schema.TIME,
        schema.BASELINE_ID,
        schema.FREQUENCY,
        schema.POLARIZATION,
    )
    assert vis[schema.VISIBILITY].dtype == np.complex64
    assert vis[schema.FLAG].dtype == bool and vis[schema.WEIGHT].dtype == np.float32
    assert vis.sizes[schema.BASELINE_ID] == 6
    assert list(vis[schema.BASELINE_ANTENNA1_NAME].values) == ["a", "a", "a", "b", "b", "c"]
    assert list(vis[schema.BASELINE_ANTENNA2_NAME].values) == ["b", "c", "d", "c", "d", "d"]
    assert vis[schema.TIME].attrs[schema.ATTR_UNITS] == "s"
    assert vis[schema.FREQUENCY].attrs[schema.ATTR_SPECTRAL_WINDOW_NAME] == "spw_0"
    for name in (schema.VISIBILITY, schema.FLAG, schema.WEIGHT, schema.UVW):
        assert isinstance(vis[name].data, da.Array)
    assert vis[schema.VISIBILITY].chunks[0] == (2, 2, 1)  # default: two-integration chunks
    # Coordinates stay in memory: steps may read them eagerly.
    assert vis[schema.BASELINE_ANTENNA1_NAME].variable.chunks is None

    sd = make_spectrum_partition(antenna="DV01", units=schema.UNITS_KELVIN)
    assert sd.attrs[schema.ATTR_TYPE] == schema.TYPE_SPECTRUM
    assert sd[schema.SPECTRUM].dims == (
        schema.TIME,
        schema.ANTENNA_NAME,
        schema.FREQUENCY,
        schema.POLARIZATION,
    )
    assert sd[schema.SPECTRUM].dtype == np.float32
    assert list(sd[schema.ANTENNA_NAME].values) == ["DV01"]
    base = sd.attrs[schema.ATTR_DATA_GROUPS][schema.GROUP_BASE]
    assert base[schema.ROLE_DATA] == schema.SPECTRUM and base[schema.ROLE_UNITS] == "K"
    assert schema.ROLE_UVW not in base


# ---- data groups ----


def test_get_data_group(vis: xr.Dataset) -> None:
    g = step.get_data_group(vis, schema.GROUP_BASE)
    assert g.name == "base" and g.units == ""
    assert g.data.name == schema.VISIBILITY
    assert g.flag.name == schema.FLAG and g.weight.name == schema.WEIGHT
    assert g.partition == f"spw 0 scan 3 ({schema.INTENT_ON_SOURCE})"


def test_get_data_group_without_units_role_is_raw(vis: xr.Dataset) -> None:
    vis.attrs[schema.ATTR_DATA_GROUPS][schema.GROUP_BASE].pop(schema.ROLE_UNITS)
    assert step.get_data_group(vis, schema.GROUP_BASE).units == schema.UNITS_RAW


def test_unknown_group_names_partition_and_available_groups(vis: xr.Dataset) -> None:
    with pytest.raises(step.DataGroupError) as err:
        step.get_data_group(vis, "corrected")
    msg = str(err.value)
    assert "spw 0 scan 3 (OBSERVE_TARGET#ON_SOURCE)" in msg
    assert "'corrected'" in msg and "available: 'base'" in msg


def test_single_dish_partition_description_names_antenna() -> None:
    sd = make_spectrum_partition(antenna="PM03", spw_id=17, scan=5)
    assert step.describe_partition(sd) == "spw 17 scan 5 antenna PM03 (OBSERVE_TARGET#ON_SOURCE)"


def test_add_data_group(vis: xr.Dataset) -> None:
    before = vis.copy(deep=True)
    attrs_before = copy.deepcopy(vis.attrs)
    base = step.get_data_group(vis, schema.GROUP_BASE)
    out = step.add_data_group(
        vis,
        "corrected",
        data=base.data * 2,
        flag=base.flag,
        weight=base.weight / 4,
        units="Jy",
        description="doubled",
        from_group=schema.GROUP_BASE,
    )
    # The input is untouched, attrs included.
    assert vis.identical(before) and vis.attrs == attrs_before
    assert "corrected" not in vis.attrs[schema.ATTR_DATA_GROUPS]

    entry = out.attrs[schema.ATTR_DATA_GROUPS]["corrected"]
    assert entry[schema.ROLE_DATA] == "VISIBILITY_CORRECTED"
    assert entry[schema.ROLE_FLAG] == "FLAG_CORRECTED"
    assert entry[schema.ROLE_WEIGHT] == "WEIGHT_CORRECTED"
    assert entry[schema.ROLE_UVW] == schema.UVW
    assert entry[schema.ROLE_FIELD_AND_SOURCE] == schema.FIELD_AND_SOURCE_XDS
    assert entry[schema.ROLE_UNITS] == "Jy" and entry[schema.ROLE_DESCRIPTION] == "doubled"
    assert datetime.fromisoformat(entry[schema.ROLE_DATE]).tzinfo is not None
    assert out["VISIBILITY_CORRECTED"].attrs[schema.ATTR_UNITS] == "Jy"
    np.testing.assert_array_equal(out["VISIBILITY_CORRECTED"], 2 * vis[schema.VISIBILITY])
    np.testing.assert_array_equal(out["WEIGHT_CORRECTED"], vis[schema.WEIGHT] / 4)
    np.testing.assert_array_equal(out["FLAG_CORRECTED"], vis[schema.FLAG])
    g = step.get_data_group(out, "corrected")
    assert g.units == "Jy" and g.data.name == "VISIBILITY_CORRECTED"


def test_add_data_group_never_overwrites(vis: xr.Dataset) -> None:
    base = step.get_data_group(vis, schema.GROUP_BASE)
    kwargs = dict(
        data=base.data,
        flag=base.flag,
        weight=base.weight,
        units="",
        description="copy",
        from_group=schema.GROUP_BASE,
    )
    with pytest.raises(step.DataGroupError, match="scan 3.*already has data group 'base'"):
        step.add_data_group(vis, schema.GROUP_BASE, **kwargs)
    # A variable of the new group's name, even outside any group, is not overwritten either.
    clash = vis.assign(WEIGHT_COPY=vis[schema.WEIGHT])
    with pytest.raises(step.DataGroupError, match="WEIGHT_COPY"):
        step.add_data_group(clash, "copy", **kwargs)


# ---- units ----


def test_require_units(vis: xr.Dataset) -> None:
    g = step.get_data_group(vis, schema.GROUP_BASE)
    step.require_units(g, "", "anything")
    step.require_units(g, {"", "K"}, "anything")
    with pytest.raises(step.UnitsError) as err:
        step.require_units(g, "K", "scale")
    assert str(err.value) == (
        "scale: partition spw 0 scan 3 (OBSERVE_TARGET#ON_SOURCE) group 'base' has units '' "
        "but the step needs 'K'"
    )
    with pytest.raises(step.UnitsError, match=r"needs one of \['Jy', 'K'\]"):
        step.require_units(g, {"K", "Jy"}, "jyperk")


# ---- coordinates ----


def test_coord_values_refuses_dask_coordinates(vis: xr.Dataset) -> None:
    names = step.coord_values(vis, schema.BASELINE_ANTENNA1_NAME)
    assert isinstance(names, np.ndarray) and names[0] == "ea01"
    lazy = vis.assign_coords(
        {schema.BASELINE_ANTENNA1_NAME: vis[schema.BASELINE_ANTENNA1_NAME].chunk()}
    )
    with pytest.raises(ValueError, match="baseline_antenna1_name' is a dask array"):
        step.coord_values(lazy, schema.BASELINE_ANTENNA1_NAME)


# ---- registry ----


def test_registry_lookup() -> None:
    assert step.get_step("scale") is scale.apply
    assert step.STEPS["scale"] is scale.apply


def test_unknown_step_lists_known_steps() -> None:
    with pytest.raises(step.UnknownStepError, match="unknown step 'sclae'; known steps: .*scale"):
        step.get_step("sclae")


def test_register_step_refuses_a_second_function(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(step, "STEPS", {})

    @step.register_step("demo")
    def demo(ds: xr.Dataset) -> xr.Dataset:
        return ds

    assert step.STEPS["demo"] is demo and len(step.STEPS) == 1
    with pytest.raises(ValueError, match="'demo' is already registered"):

        @step.register_step("demo")
        def other(ds: xr.Dataset) -> xr.Dataset:
            return ds
