"""Tiny in-memory partitions in radflow's data model, for unit tests.

Data variables are dask-backed (as when a store is opened); coordinates are in memory. Values are
random but reproducible from `seed`; they mean nothing physically.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from datetime import UTC, datetime

import numpy as np
import xarray as xr

from radflow import schema

T0_UNIX_S = 1.7e9  # first integration, unix seconds
INTEGRATION_S = 1.0
FIELD = "target"


def _times(n_time: int) -> np.ndarray:
    return T0_UNIX_S + INTEGRATION_S * np.arange(n_time)


def _coords(
    n_time: int, n_chan: int, pols: Sequence[str], spw_name: str, scan: int, intents: list[str]
) -> dict[str, xr.Variable]:
    time_attrs = {
        "type": "time",
        schema.ATTR_UNITS: "s",
        "scale": "utc",
        "format": "unix",
        schema.ATTR_INTEGRATION_TIME: {
            "data": INTEGRATION_S,
            "dims": [],
            "attrs": {schema.ATTR_UNITS: "s", "type": "quantity"},
        },
    }
    chan_width_hz, ref_freq_hz = 1e6, 100e9
    freq_attrs = {
        "type": "spectral_coord",
        schema.ATTR_UNITS: "Hz",
        schema.ATTR_OBSERVER: "TOPO",
        schema.ATTR_SPECTRAL_WINDOW_NAME: spw_name,
        schema.ATTR_REFERENCE_FREQUENCY: {
            "data": ref_freq_hz,
            "dims": [],
            "attrs": {"units": "Hz", "observer": "TOPO", "type": "spectral_coord"},
        },
        schema.ATTR_CHANNEL_WIDTH: {
            "data": chan_width_hz,
            "dims": [],
            "attrs": {"units": "Hz", "type": "quantity"},
        },
    }
    time = _times(n_time)
    return {
        schema.TIME: xr.Variable(schema.TIME, time, time_attrs),
        schema.FREQUENCY: xr.Variable(
            schema.FREQUENCY, ref_freq_hz + chan_width_hz * np.arange(n_chan), freq_attrs
        ),
        schema.POLARIZATION: xr.Variable(schema.POLARIZATION, np.array(pols)),
        schema.FIELD_NAME: xr.Variable(schema.TIME, np.full(n_time, FIELD)),
        schema.SCAN_NAME: xr.Variable(
            schema.TIME, np.full(n_time, str(scan)), {schema.ATTR_SCAN_INTENTS: intents}
        ),
    }


def _attrs(
    kind: str,
    data_var: str,
    antennas: list[str],
    pols: Sequence[str],
    spw_id: int,
    spw_name: str,
    scan: int,
    intents: list[str],
    units: str,
) -> dict:
    base = {
        schema.ROLE_DATA: data_var,
        schema.ROLE_FLAG: schema.FLAG,
        schema.ROLE_WEIGHT: schema.WEIGHT,
        schema.ROLE_FIELD_AND_SOURCE: schema.FIELD_AND_SOURCE_XDS,
        schema.ROLE_DESCRIPTION: "simulated by radflow.testing.datasets",
        schema.ROLE_DATE: datetime.now(UTC).isoformat(),
        schema.ROLE_UNITS: units,
    }
    if kind == schema.TYPE_VISIBILITY:
        base[schema.ROLE_UVW] = schema.UVW
    return {
        schema.ATTR_TYPE: kind,
        schema.ATTR_SCHEMA_VERSION: schema.SCHEMA_VERSION,
        schema.ATTR_CREATOR: {"software_name": schema.CREATOR, "version": "test"},
        schema.ATTR_CREATION_DATE: datetime.now(UTC).isoformat(),
        schema.ATTR_DATA_GROUPS: {schema.GROUP_BASE: base},
        schema.ATTR_PARTITION_INFO: {
            schema.PI_SPW_ID: spw_id,
            schema.PI_SPW_NAME: spw_name,
            schema.PI_SCAN: scan,
            schema.PI_INTENTS: intents,
            schema.PI_FIELD: [FIELD],
            schema.PI_SOURCE: [FIELD],
            schema.PI_ANTENNA: antennas,
            schema.PI_POLARIZATION: list(pols),
            schema.PI_DATA_KIND: kind,
        },
    }


def _time_vars(n_time: int, row_dim: str, n_row: int) -> dict[str, xr.Variable]:
    time = _times(n_time)
    dims = (schema.TIME, row_dim)
    return {
        schema.EFFECTIVE_INTEGRATION_TIME: xr.Variable(
            dims,
            np.full((n_time, n_row), INTEGRATION_S),
            {"type": "quantity", schema.ATTR_UNITS: "s"},
        ),
        schema.TIME_CENTROID: xr.Variable(
            dims,
            np.repeat(time[:, None], n_row, axis=1),
            {"type": "time", schema.ATTR_UNITS: "s", "scale": "utc", "format": "unix"},
        ),
    }


def _chunk_data_vars(ds: xr.Dataset, chunks: Mapping[Hashable, int] | None) -> xr.Dataset:
    # Only data variables become dask arrays: coordinates stay in memory, as steps expect.
    chunks = {schema.TIME: max(1, ds.sizes[schema.TIME] // 2)} if chunks is None else chunks
    return ds.assign(
        {
            name: var.chunk({d: c for d, c in chunks.items() if d in var.dims})
            for name, var in ds.data_vars.items()
        }
    )


def make_visibility_partition(
    n_time: int = 4,
    antennas: Sequence[str] = ("ea01", "ea02", "ea03"),
    n_chan: int = 8,
    pols: Sequence[str] = ("XX", "XY", "YX", "YY"),
    *,
    seed: int = 0,
    chunks: Mapping[Hashable, int] | None = None,
    spw_id: int = 0,
    spw_name: str = "spw_0",
    scan: int = 1,
    intents: Sequence[str] = (schema.INTENT_ON_SOURCE,),
    units: str = schema.UNITS_RAW,
) -> xr.Dataset:
    """An interferometer partition: cross-correlation baselines (i < j) of `antennas`.

    ``VISIBILITY`` complex64 (time, baseline_id, frequency, polarization) in `units`, ``FLAG``
    (about 5% True), ``WEIGHT`` float32 in [0.5, 2), ``UVW`` (m), times 1 s apart from unix
    ``T0_UNIX_S``, channels 1 MHz apart from 100 GHz. `chunks` maps dims to chunk sizes for the
    data variables (default: two time chunks).
    """
    rng = np.random.default_rng(seed)
    ant1, ant2 = zip(
        *[(a, b) for i, a in enumerate(antennas) for b in antennas[i + 1 :]], strict=True
    )
    n_bl = len(ant1)
    shape = (n_time, n_bl, n_chan, len(pols))
    dims = (schema.TIME, schema.BASELINE_ID, schema.FREQUENCY, schema.POLARIZATION)
    intents = list(intents)
    vis = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    ds = xr.Dataset(
        {
            schema.VISIBILITY: (dims, vis, {schema.ATTR_UNITS: units}),
            schema.FLAG: (dims, rng.random(shape) < 0.05),
            schema.WEIGHT: (dims, rng.uniform(0.5, 2.0, shape).astype(np.float32)),
            schema.UVW: (
                (schema.TIME, schema.BASELINE_ID, schema.UVW_LABEL),
                rng.normal(scale=100.0, size=(n_time, n_bl, 3)),
                {"type": "uvw", schema.ATTR_UNITS: "m", schema.ATTR_FRAME: "fk5"},
            ),
            **_time_vars(n_time, schema.BASELINE_ID, n_bl),
        },
        coords={
            **_coords(n_time, n_chan, pols, spw_name, scan, intents),
            schema.BASELINE_ID: np.arange(n_bl),
            schema.BASELINE_ANTENNA1_NAME: (schema.BASELINE_ID, np.array(ant1)),
            schema.BASELINE_ANTENNA2_NAME: (schema.BASELINE_ID, np.array(ant2)),
            schema.UVW_LABEL: ["u", "v", "w"],
        },
        attrs=_attrs(
            schema.TYPE_VISIBILITY,
            schema.VISIBILITY,
            list(antennas),
            pols,
            spw_id,
            spw_name,
            scan,
            intents,
            units,
        ),
    )
    return _chunk_data_vars(ds, chunks)


def make_spectrum_partition(
    n_time: int = 6,
    antenna: str = "PM01",
    n_chan: int = 16,
    pols: Sequence[str] = ("XX", "YY"),
    *,
    seed: int = 0,
    chunks: Mapping[Hashable, int] | None = None,
    spw_id: int = 0,
    spw_name: str = "spw_0",
    scan: int = 1,
    intents: Sequence[str] = (schema.INTENT_ON_SOURCE,),
    units: str = schema.UNITS_RAW,
) -> xr.Dataset:
    """A single-dish partition of one antenna (as the converter partitions single-dish data).

    ``SPECTRUM`` float32 (time, antenna_name, frequency, polarization) in [1, 2) `units`,
    ``FLAG`` (about 5% True), ``WEIGHT`` float32 in [0.5, 2); time and frequency axes as in
    :func:`make_visibility_partition`.
    """
    rng = np.random.default_rng(seed)
    shape = (n_time, 1, n_chan, len(pols))
    dims = (schema.TIME, schema.ANTENNA_NAME, schema.FREQUENCY, schema.POLARIZATION)
    intents = list(intents)
    ds = xr.Dataset(
        {
            schema.SPECTRUM: (
                dims,
                rng.uniform(1.0, 2.0, shape).astype(np.float32),
                {schema.ATTR_UNITS: units},
            ),
            schema.FLAG: (dims, rng.random(shape) < 0.05),
            schema.WEIGHT: (dims, rng.uniform(0.5, 2.0, shape).astype(np.float32)),
            **_time_vars(n_time, schema.ANTENNA_NAME, 1),
        },
        coords={
            **_coords(n_time, n_chan, pols, spw_name, scan, intents),
            schema.ANTENNA_NAME: [antenna],
        },
        attrs=_attrs(
            schema.TYPE_SPECTRUM,
            schema.SPECTRUM,
            [antenna],
            pols,
            spw_id,
            spw_name,
            scan,
            intents,
            units,
        ),
    )
    return _chunk_data_vars(ds, chunks)
