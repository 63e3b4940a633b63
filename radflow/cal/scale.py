"""scale: multiply a data group by per-antenna, per-receptor, per-spectral-window amplitude factors.

For correlation p = (receptor a, receptor b) on baseline (i, j), with dimensionless or unit
converting factors f (e.g. Jy/K)::

    data_out   = data * sqrt(f_ia * f_jb)
    weight_out = weight / (f_ia * f_jb)
    flag_out   = flag

For single-dish data (the autocorrelation of antenna i, e.g. pol XX) this is ``data * f_iX`` and
``weight / f_iX**2``: the Jy/K conversion ``S = Ta* x factor``.

The (baseline, polarization) factor table is built in memory from coordinates and the (small)
factors, then broadcast lazily against the dask-backed data.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from radflow import schema
from radflow.lazy import Output, apply_blocks
from radflow.step import (
    add_data_group,
    coord_values,
    describe_partition,
    get_data_group,
    register_step,
)

Factors = xr.DataArray | Mapping[str, float] | Mapping[tuple[str, str], float]


def _factor_table(factors: Factors) -> xr.DataArray:
    """Return `factors` as an in-memory DataArray with dims (antenna_name[, receptor][, spw])."""
    if isinstance(factors, xr.DataArray):
        allowed = {schema.ANTENNA_NAME, schema.RECEPTOR, schema.SPECTRAL_WINDOW_NAME}
        if schema.ANTENNA_NAME not in factors.dims or not set(factors.dims) <= allowed:
            raise ValueError(
                f"scale: factors have dims {factors.dims}; expected {schema.ANTENNA_NAME!r} and "
                f"optionally {schema.RECEPTOR!r}, {schema.SPECTRAL_WINDOW_NAME!r}"
            )
        if factors.chunks is not None:
            raise ValueError("scale: factors must be in memory (they are small): .compute() them")
        return factors
    keys = list(factors)
    if all(isinstance(k, str) for k in keys):
        return xr.DataArray(
            np.array([factors[k] for k in keys], dtype=float),
            dims=schema.ANTENNA_NAME,
            coords={schema.ANTENNA_NAME: keys},
        )
    if all(isinstance(k, tuple) and len(k) == 2 for k in keys):
        antennas = sorted({a for a, _ in keys})
        receptors = sorted({r for _, r in keys})
        # NaN marks an (antenna, receptor) pair the dict does not give: reported as missing.
        table = np.full((len(antennas), len(receptors)), np.nan)
        for (antenna, receptor), value in factors.items():
            table[antennas.index(antenna), receptors.index(receptor)] = value
        return xr.DataArray(
            table,
            dims=(schema.ANTENNA_NAME, schema.RECEPTOR),
            coords={schema.ANTENNA_NAME: antennas, schema.RECEPTOR: receptors},
        )
    raise TypeError(
        "scale: factor dict keys must all be antenna names or all (antenna_name, receptor) tuples"
    )


def _spw_name(ds: xr.Dataset) -> str | None:
    info = ds.attrs.get(schema.ATTR_PARTITION_INFO) or {}
    if schema.PI_SPW_NAME in info:
        return str(info[schema.PI_SPW_NAME])
    return ds[schema.FREQUENCY].attrs.get(schema.ATTR_SPECTRAL_WINDOW_NAME)


def _product_table(
    ds: xr.Dataset, data: xr.DataArray, table: xr.DataArray, where: str, spw: str | None
) -> xr.DataArray:
    """Return f_ia * f_jb as an in-memory DataArray with dims (baseline_id | antenna_name, pol)."""
    if schema.BASELINE_ID in data.dims:
        row_dim = schema.BASELINE_ID
        ant1 = coord_values(ds, schema.BASELINE_ANTENNA1_NAME).astype(str)
        ant2 = coord_values(ds, schema.BASELINE_ANTENNA2_NAME).astype(str)
    else:  # single dish: each row is one antenna's autocorrelation
        row_dim = schema.ANTENNA_NAME
        ant1 = ant2 = coord_values(ds, schema.ANTENNA_NAME).astype(str)
    pols = [str(p) for p in coord_values(ds, schema.POLARIZATION)]

    # Python strs: error messages show names, not np.str_ reprs.
    antennas = np.unique(np.concatenate([ant1, ant2])).tolist()
    known = set(table[schema.ANTENNA_NAME].values.astype(str).tolist())
    missing = [a for a in antennas if a not in known]
    if missing:
        raise ValueError(f"{where}: no factor for antenna(s) {missing} in spw {spw!r}")

    per_receptor = schema.RECEPTOR in table.dims
    if per_receptor:
        bad_pols = [p for p in pols if len(p) != 2]
        if bad_pols:
            raise ValueError(
                f"{where}: polarization(s) {bad_pols} are not receptor correlations; "
                f"give factors without a {schema.RECEPTOR!r} dim"
            )
        receptors = sorted({r for p in pols for r in p})
        known_receptors = set(table[schema.RECEPTOR].values.astype(str).tolist())
        missing = [r for r in receptors if r not in known_receptors]
        if missing:
            raise ValueError(f"{where}: no factor for receptor(s) {missing} in spw {spw!r}")
        matrix = table.sel({schema.ANTENNA_NAME: antennas, schema.RECEPTOR: receptors})
        matrix = matrix.transpose(schema.ANTENNA_NAME, schema.RECEPTOR).values
        rec_a = np.array([receptors.index(p[0]) for p in pols])
        rec_b = np.array([receptors.index(p[1]) for p in pols])
    else:  # one factor per antenna, whatever the receptor
        matrix = table.sel({schema.ANTENNA_NAME: antennas}).values[:, None]
        rec_a = rec_b = np.zeros(len(pols), dtype=int)

    matrix = matrix.astype(float)
    bad = np.argwhere(~(matrix > 0) | ~np.isfinite(matrix))  # NaN fails both tests
    if bad.size:
        i, j = bad[0]
        what = f"antenna {antennas[i]!r}" + (f" receptor {receptors[j]!r}" if per_receptor else "")
        if np.isnan(matrix[i, j]):
            raise ValueError(f"{where}: no factor for {what} in spw {spw!r}")
        raise ValueError(
            f"{where}: factor {matrix[i, j]} for {what} in spw {spw!r} must be finite and > 0"
        )

    i_idx = np.searchsorted(antennas, ant1)
    j_idx = np.searchsorted(antennas, ant2)
    product = matrix[i_idx[:, None], rec_a[None, :]] * matrix[j_idx[:, None], rec_b[None, :]]
    return xr.DataArray(product, dims=(row_dim, schema.POLARIZATION))


def _scale_block(
    data: np.ndarray, weight: np.ndarray, product: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """data x sqrt(f_ia f_jb) and weight / (f_ia f_jb) of one chunk; the factors in the data's
    real precision keep complex64/float32 data in that precision."""
    real = np.finfo(data.dtype).dtype
    return data * np.sqrt(product).astype(real), weight / product.astype(weight.dtype)


@register_step("scale")
def apply(
    ds: xr.Dataset,
    factors: Factors,
    *,
    group: str = schema.GROUP_BASE,
    output: str = schema.GROUP_SCALED,
    units: str | None = None,
) -> xr.Dataset:
    """Scale data group `group` by per-antenna amplitude factors into new group `output`.

    Parameters
    ----------
    ds : xr.Dataset
        One visibility or spectrum partition (dask-backed; nothing is computed).
    factors : xr.DataArray or dict
        Power factors f (e.g. Jy/K for single dish), > 0 and finite. A DataArray with dim
        ``antenna_name`` and optionally ``receptor`` (X, Y, R, L) and ``spectral_window_name``
        (the partition's spw is selected); or a dict ``{antenna_name: f}`` or
        ``{(antenna_name, receptor): f}``. Without a receptor dim one factor serves all receptors.
    group : str
        Input data group.
    output : str
        Name of the new data group; must not exist.
    units : str, optional
        Units of the output (e.g. ``"Jy"``); default: the input group's units.

    Returns
    -------
    xr.Dataset
        A new dataset with `output` added: data ``* sqrt(f_ia f_jb)``, weight ``/ (f_ia f_jb)``,
        flags unchanged.

    Raises
    ------
    ValueError
        If an antenna, receptor or the partition's spw has no factor, or a factor is not finite
        and > 0; the message names the partition, spw and antenna.
    """
    src = get_data_group(ds, group)
    table = _factor_table(factors)
    spw = _spw_name(ds)
    where = f"scale: partition {describe_partition(ds)}"
    if schema.SPECTRAL_WINDOW_NAME in table.dims:
        spws = [str(s) for s in table[schema.SPECTRAL_WINDOW_NAME].values]
        if spw not in spws:
            raise ValueError(f"{where}: factors have no spw {spw!r} (they have {spws})")
        table = table.sel({schema.SPECTRAL_WINDOW_NAME: spw})

    product = _product_table(ds, src.data, table, where, spw)
    dims = src.data.dims
    data, weight = apply_blocks(
        _scale_block,
        src.data,
        src.weight,
        product,
        loop_dims=dims,
        core_dims=[[], [], []],
        outputs=[Output(dims, src.data.dtype), Output(dims, src.weight.dtype)],
        name="scale",
    )
    return add_data_group(
        ds,
        output,
        data=data,
        flag=None,  # a scale changes no flag: share the source group's FLAG
        weight=weight,
        units=src.units if units is None else units,
        description=f"data group {group!r} scaled by per-antenna factors (step scale)",
        from_group=group,
    )
