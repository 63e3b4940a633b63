"""Shared fixtures: writable copies of the real MeasurementSets in tests/data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
REAL_MS = ["vla_j1008_36ghz.ms", "paper_zenith_4scan.ms", "lwa_256ant.ms"]


def copy_ms(name: str, dest: Path) -> Path:
    """A writable copy of tests/data/<name> under `dest`."""
    out = dest / name
    shutil.copytree(DATA / name, out)
    for p in out.rglob("*"):
        p.chmod(p.stat().st_mode | 0o200)
    return out


@pytest.fixture(params=REAL_MS)
def real_ms(request, tmp_path) -> Path:
    return copy_ms(request.param, tmp_path)


@pytest.fixture
def vla_ms(tmp_path) -> Path:
    return copy_ms("vla_j1008_36ghz.ms", tmp_path)
