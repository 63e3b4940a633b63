"""What is in a store, read from metadata only (no bulk array is touched)."""

from __future__ import annotations

import datetime as _dt

import xarray as xr

from radflow import schema
from radflow.store import partitions


def _iso(unix_s: float) -> str:
    return _dt.datetime.fromtimestamp(unix_s, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def partition_table(tree: xr.DataTree) -> list[dict]:
    """One row per partition: spw, scan, intents, field, antennas, shape, time range, groups.

    Times are UTC; ``duration_s`` in seconds; ``nonfinite_flagged`` counts the samples that were
    NaN or infinite in the MS (kept, and flagged).
    """
    rows = []
    for name, node in sorted(partitions(tree).items()):
        info = node.attrs.get(schema.ATTR_PARTITION_INFO, {})
        t0, t1 = info.get(schema.PI_TIME_RANGE, [float("nan")] * 2)
        freq = node.ds[schema.FREQUENCY]
        antennas = info.get(schema.PI_ANTENNA, [])
        rows.append(
            {
                "partition": name,
                "kind": info.get(schema.PI_DATA_KIND, node.attrs.get(schema.ATTR_TYPE)),
                "spw": f"{info.get(schema.PI_SPW_ID)} ({info.get(schema.PI_SPW_NAME)})",
                "scan": info.get(schema.PI_SCAN),
                "intents": ",".join(info.get(schema.PI_INTENTS, [])),
                "field": ",".join(info.get(schema.PI_FIELD, [])),
                "antennas": antennas[0] if len(antennas) == 1 else f"{len(antennas)} antennas",
                "shape": "x".join(str(n) for n in info.get(schema.PI_SHAPE, [])),
                "polarization": " ".join(info.get(schema.PI_POLARIZATION, [])),
                "freq_GHz": f"{float(freq.min()) / 1e9:.4f}-{float(freq.max()) / 1e9:.4f}",
                "start_utc": _iso(t0),
                "duration_s": round(t1 - t0, 3),
                "groups": ",".join(node.attrs.get(schema.ATTR_DATA_GROUPS, {})),
                "sub_datasets": ",".join(sorted(node.children)),
                "nonfinite_flagged": int(node.attrs.get(schema.ATTR_NAN_COUNT, 0)),
            }
        )
    return rows


def overview(tree: xr.DataTree) -> dict:
    """Store-level totals: source MS, partitions, spws, scans, intents, antennas, time span."""
    table = partition_table(tree)
    nodes = partitions(tree)
    source = tree.attrs.get(schema.ATTR_SOURCE_MS, {})
    antennas: set[str] = set()
    starts, ends = [], []
    for node in nodes.values():
        info = node.attrs.get(schema.ATTR_PARTITION_INFO, {})
        antennas.update(info.get(schema.PI_ANTENNA, []))
        t0, t1 = info.get(schema.PI_TIME_RANGE, [None, None])
        starts.append(t0)
        ends.append(t1)
    return {
        "source_ms": source.get("path"),
        "ms_rows": source.get("nrows"),
        "partitions": len(table),
        "spws": sorted({r["spw"] for r in table}),
        "scans": sorted({r["scan"] for r in table}),
        "intents": sorted({i for r in table for i in r["intents"].split(",")}),
        "antennas": len(antennas),
        "start_utc": _iso(min(starts)) if starts else None,
        "end_utc": _iso(max(ends)) if ends else None,
        "nonfinite_flagged": sum(r["nonfinite_flagged"] for r in table),
    }
