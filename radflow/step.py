"""The contract every calibration step follows: data groups, units checks, the step registry.

A step is a function ``apply(ds, ..., *, group=..., output=...) -> xr.Dataset`` on one partition
(one DataTree node). It reads the input data group with :func:`get_data_group`, checks units with
:func:`require_units` and returns :func:`add_data_group`'s new dataset: it never mutates its input
and never overwrites a group.

Laziness: building a step computes nothing. Use :func:`radflow.lazy.apply_blocks` (what
``xr.apply_ufunc(..., dask="parallelized")`` does, in one layer: steps are built once per
partition of every EB, so their building cost adds up) and :func:`radflow.lazy.sum_blocks` for
sums over time chunks, or xarray arithmetic on the dask-backed variables where it is rare;
never ``.values``, ``.compute()``, ``.load()``, ``np.asarray``, ``float()`` or ``bool()`` on data.
Small metadata (antenna names, times, intents) may be read eagerly, but only from coordinates
that are already in memory (:func:`coord_values`). :func:`radflow.testing.lazy.assert_lazy`
proves a step obeys this.

Steps register by name with :func:`register_step` so that YAML recipes can find them
(:func:`get_step`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import xarray as xr

from radflow import schema

# Name of the data variable of each partition type's base group.
_DATA_VAR_BY_TYPE = {
    schema.TYPE_VISIBILITY: schema.VISIBILITY,
    schema.TYPE_SPECTRUM: schema.SPECTRUM,
}


class DataGroupError(ValueError):
    """A data group is missing, malformed, or would be overwritten."""


class UnitsError(ValueError):
    """A step got data in units it cannot work on."""


class UnknownStepError(LookupError):
    """No step is registered under a name."""


@dataclass(frozen=True, eq=False)  # eq=False: DataArray == compares element-wise
class DataGroup:
    """One data group of a partition: its data, flags and weights.

    Attributes
    ----------
    name : str
        The group's name in ``attrs["data_groups"]`` (e.g. ``"base"``).
    data : xr.DataArray
        Visibilities (complex) or spectra (real), in ``units``.
    flag : xr.DataArray
        bool, True where a sample is bad; same shape as ``data``.
    weight : xr.DataArray
        float, inverse variance of ``data`` in ``units**-2``; same shape as ``data``.
    units : str
        ``""`` (raw counts / correlation coefficients), ``"K"`` or ``"Jy"``.
    partition : str
        Human-readable partition description for error messages (:func:`describe_partition`).
    """

    name: str
    data: xr.DataArray
    flag: xr.DataArray
    weight: xr.DataArray
    units: str
    partition: str


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | int | np.integer):
        return [value]
    return list(value)


def describe_partition(ds: xr.Dataset) -> str:
    """Describe a partition for error messages, e.g. ``"spw 0 scan 3 (OBSERVE_TARGET#ON_SOURCE)"``.

    Built from ``partition_info``, since a Dataset does not know its DataTree node name.
    Single-dish partitions (one antenna each) also name the antenna.
    """
    info = ds.attrs.get(schema.ATTR_PARTITION_INFO) or {}
    parts = []
    if schema.PI_SPW_ID in info:
        parts.append(f"spw {info[schema.PI_SPW_ID]}")
    elif schema.PI_SPW_NAME in info:
        parts.append(f"spw {info[schema.PI_SPW_NAME]}")
    scans = _as_list(info.get(schema.PI_SCAN))
    if scans:
        parts.append("scan " + ",".join(str(s) for s in scans))
    if ds.attrs.get(schema.ATTR_TYPE) == schema.TYPE_SPECTRUM:
        antennas = _as_list(info.get(schema.PI_ANTENNA))
        if antennas:
            parts.append("antenna " + ",".join(str(a) for a in antennas))
    intents = _as_list(info.get(schema.PI_INTENTS))
    if intents:
        parts.append("(" + ",".join(str(i) for i in intents) + ")")
    return " ".join(parts) if parts else "<partition without partition_info>"


def _data_groups(ds: xr.Dataset) -> dict[str, dict[str, str]]:
    groups = ds.attrs.get(schema.ATTR_DATA_GROUPS)
    if not groups:
        raise DataGroupError(
            f"partition {describe_partition(ds)} has no {schema.ATTR_DATA_GROUPS!r} attribute"
        )
    return groups


def get_data_group(ds: xr.Dataset, group: str) -> DataGroup:
    """Return the data, flag and weight of data group `group` of partition `ds`.

    Units come from the group's ``units`` role (a radflow addition to MSv4); a group without it
    (e.g. written by xradio) holds raw data, units ``""``.

    Raises
    ------
    DataGroupError
        If the group does not exist (the message lists the groups that do) or names a variable
        the dataset lacks.
    """
    groups = _data_groups(ds)
    where = f"partition {describe_partition(ds)}"
    if group not in groups:
        raise DataGroupError(
            f"{where} has no data group {group!r}; available: {', '.join(map(repr, groups))}"
        )
    roles = groups[group]
    arrays = {}
    for role in (schema.ROLE_DATA, schema.ROLE_FLAG, schema.ROLE_WEIGHT):
        name = roles.get(role)
        if name is None or name not in ds.data_vars:
            raise DataGroupError(
                f"{where} data group {group!r}: role {role!r} names variable {name!r}, "
                "which the partition does not have"
            )
        arrays[role] = ds[name]
    return DataGroup(
        name=group,
        data=arrays[schema.ROLE_DATA],
        flag=arrays[schema.ROLE_FLAG],
        weight=arrays[schema.ROLE_WEIGHT],
        units=roles.get(schema.ROLE_UNITS, schema.UNITS_RAW),
        partition=describe_partition(ds),
    )


def add_data_group(
    ds: xr.Dataset,
    group: str,
    *,
    data: xr.DataArray | xr.Variable,
    flag: xr.DataArray | xr.Variable | None,
    weight: xr.DataArray | xr.Variable | None,
    units: str,
    description: str,
    from_group: str,
) -> xr.Dataset:
    """Return a new dataset: `ds` plus data group `group` (`ds` itself is left untouched).

    The variables are named per :func:`radflow.schema.data_var_name` (``VISIBILITY_<GROUP>``,
    ``FLAG_<GROUP>``, ``WEIGHT_<GROUP>``); they take the attributes of `from_group`'s variables,
    and the data variable's ``units`` attribute becomes `units`. The new ``data_groups`` entry
    keeps `from_group`'s ``uvw`` and ``field_and_source`` roles and records `units`,
    `description` and the current UTC time.

    Parameters
    ----------
    ds : xr.Dataset
        One partition.
    group : str
        Name of the new group; must not exist yet (steps never overwrite).
    data, flag, weight : xr.DataArray or xr.Variable
        The new group's data (in `units`), flags (bool) and weights (``units**-2``), lazy, on
        the partition's dims (a Variable is cheaper to add: nothing to align).
        ``None`` for `flag` or `weight` means unchanged: the group then shares `from_group`'s
        variable instead of storing a copy.
    units : str
        ``""``, ``"K"`` or ``"Jy"``.
    description : str
        What produced the group, for humans.
    from_group : str
        The group the new one was derived from.

    Raises
    ------
    DataGroupError
        If `group` or one of its variable names already exists, or `from_group` does not.
    """
    source = get_data_group(ds, from_group)
    groups = _data_groups(ds)
    where = f"partition {source.partition}"
    if group in groups:
        raise DataGroupError(f"{where} already has data group {group!r}; steps never overwrite")
    data_base = _DATA_VAR_BY_TYPE.get(ds.attrs.get(schema.ATTR_TYPE))
    if data_base is None:
        raise DataGroupError(
            f"{where} has type {ds.attrs.get(schema.ATTR_TYPE)!r}, expected "
            f"{schema.TYPE_VISIBILITY!r} or {schema.TYPE_SPECTRUM!r}"
        )
    given = {
        schema.ROLE_DATA: (data_base, data, {**source.data.attrs, schema.ATTR_UNITS: units}),
        schema.ROLE_FLAG: (schema.FLAG, flag, source.flag.attrs),
        schema.ROLE_WEIGHT: (schema.WEIGHT, weight, source.weight.attrs),
    }
    new_vars = {
        schema.data_var_name(base, group): _with_attrs(values, attrs)
        for base, values, attrs in given.values()
        if values is not None
    }
    clash = [n for n in new_vars if n in ds.variables]
    if clash:
        raise DataGroupError(f"{where} already has variable(s) {clash} for group {group!r}")

    entry = {
        role: schema.data_var_name(base, group) if values is not None else groups[from_group][role]
        for role, (base, values, _) in given.items()
    }
    for role in (schema.ROLE_UVW, schema.ROLE_FIELD_AND_SOURCE):
        if role in groups[from_group]:
            entry[role] = groups[from_group][role]
    entry[schema.ROLE_DESCRIPTION] = description
    entry[schema.ROLE_DATE] = datetime.now(UTC).isoformat()
    entry[schema.ROLE_UNITS] = units

    out = ds.assign(new_vars)
    # Fresh dicts all the way down so that the input's attrs are never shared or mutated.
    out.attrs = {
        **ds.attrs,
        schema.ATTR_DATA_GROUPS: {**{k: dict(v) for k, v in groups.items()}, group: entry},
    }
    return out


def _with_attrs(
    values: xr.DataArray | xr.Variable, attrs: dict[str, Any]
) -> xr.DataArray | xr.Variable:
    if isinstance(values, xr.Variable):
        return xr.Variable(values.dims, values.data, {**values.attrs, **attrs})
    return values.assign_attrs(attrs)


def require_units(group: DataGroup, expected: str | Iterable[str], step: str) -> None:
    """Refuse a data group whose units are not `expected` (one unit or a set of them).

    Raises
    ------
    UnitsError
        e.g. ``"scale: partition spw 0 scan 3 (OBSERVE_TARGET#ON_SOURCE) group 'base' has
        units '' but the step needs 'K'"``.
    """
    allowed = {expected} if isinstance(expected, str) else set(expected)
    if group.units in allowed:
        return
    needs = repr(next(iter(allowed))) if len(allowed) == 1 else f"one of {sorted(allowed)}"
    raise UnitsError(
        f"{step}: partition {group.partition} group {group.name!r} has units {group.units!r} "
        f"but the step needs {needs}"
    )


def coord_values(ds: xr.Dataset, name: str) -> np.ndarray:
    """Return coordinate `name` as a numpy array, refusing one that is not in memory.

    Steps may read small metadata eagerly, but reading a dask-backed coordinate would be a
    compute (a store read) at graph-building time, repeated for every partition and step.

    Raises
    ------
    ValueError
        If the coordinate is missing or dask-backed.
    """
    if name not in ds.coords:
        raise ValueError(f"partition {describe_partition(ds)} has no coordinate {name!r}")
    variable = ds.coords[name].variable
    if variable.chunks is not None:
        raise ValueError(
            f"partition {describe_partition(ds)}: coordinate {name!r} is a dask array; load the "
            "partition's (small) coordinates into memory before building steps"
        )
    return variable.to_numpy()


# ---- step registry ----

StepFunction = TypeVar("StepFunction", bound=Callable[..., Any])

STEPS: dict[str, Callable[..., Any]] = {}


def register_step(name: str) -> Callable[[StepFunction], StepFunction]:
    """Decorator registering a step function under `name` (the name recipes use)."""

    def decorator(fn: StepFunction) -> StepFunction:
        known = STEPS.get(name)
        # Re-registering the same function (a module reload) is fine; a second function is a bug.
        if known is not None and (known.__module__, known.__qualname__) != (
            fn.__module__,
            fn.__qualname__,
        ):
            raise ValueError(
                f"step {name!r} is already registered by {known.__module__}.{known.__qualname__}"
            )
        STEPS[name] = fn
        return fn

    return decorator


def _import_step_modules() -> None:
    # Steps register when their module is imported; import every radflow.cal module so that a
    # recipe can name any step without importing its module first.
    import radflow.cal

    for module in pkgutil.iter_modules(radflow.cal.__path__):
        importlib.import_module(f"radflow.cal.{module.name}")


def get_step(name: str) -> Callable[..., Any]:
    """Return the step registered as `name`.

    Raises
    ------
    UnknownStepError
        If no step has that name; the message lists the known steps.
    """
    if name not in STEPS:
        _import_step_modules()
    if name not in STEPS:
        raise UnknownStepError(f"unknown step {name!r}; known steps: {', '.join(sorted(STEPS))}")
    return STEPS[name]
