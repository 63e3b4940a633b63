"""radflow's single-dish chain against CASA (sdcal ps,tsys,apply + sdbaseline) on the same MS.

Optional: needs CASA. Set ``RADFLOW_CASA_PYTHON`` to a python with casatools/casatasks (CASA
pins its own numpy, so it usually lives in its own venv; see
``benchmarks/casa_sd_reference.py``), or run the suite in an environment that has casatasks.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import radflow
from radflow import schema
from radflow.converters.msv2_to_store import convert
from radflow.pipeline import load_recipe, run
from radflow.store import partitions
from radflow.testing import simulate_single_dish

CASA_PYTHON = os.environ.get("RADFLOW_CASA_PYTHON") or (
    sys.executable if importlib.util.find_spec("casatasks") else None
)
ATOL_K = 1e-4
REFERENCE = Path(__file__).parents[1] / "benchmarks" / "casa_sd_reference.py"

pytestmark = [
    pytest.mark.casa,
    pytest.mark.skipif(CASA_PYTHON is None, reason="CASA absent (set RADFLOW_CASA_PYTHON)"),
]


def test_ps_chain_agrees_with_casa(tmp_path):
    eb = simulate_single_dish(tmp_path / "sd.ms", mode="ps", n_science_chan=256, n_tsys_chan=64,
                              seed=4)  # fmt: skip
    casa_out = tmp_path / "casa"
    subprocess.run(
        [CASA_PYTHON, str(REFERENCE), str(eb.ms_path), str(casa_out), "--mask", "0~50;200~255"],
        check=True,
        cwd=tmp_path,  # CASA writes its log into the working directory
        capture_output=True,
    )
    ref = np.load(casa_out / "casa_sd_reference.npz")

    store = convert(eb.ms_path)
    recipe = load_recipe(
        "alma_sd",
        ["sdcal.weight_tsys=mean", "baseline.maskmode=list", "baseline.order=1",
         "baseline.linefree=[[0, 50], [200, 255]]"],
    )  # fmt: skip
    (result,) = run(recipe, [store], progress=False)
    assert result.status == "done", result.error

    antennas = [str(a) for a in eb.truth.antenna_name.values]
    rows = {}
    for node in partitions(radflow.open(store)).values():
        info = node.attrs[schema.ATTR_PARTITION_INFO]
        if schema.INTENT_ON_SOURCE not in info[schema.PI_INTENTS]:
            continue
        ds = node.ds
        for k, t in enumerate(ds.time.values):
            rows[(round(t, 3), info[schema.PI_ANTENNA][0], info[schema.PI_SPW_ID])] = ds.isel(
                time=k, antenna_name=0
            )
    assert len(rows) == len(ref["time"])
    for k in range(len(ref["time"])):
        key = (
            round(float(ref["time"][k]) - schema.MJD_UNIX_OFFSET_S, 3),
            antennas[int(ref["antenna1"][k])],
            int(ref["spw"][k]),
        )
        ours = rows[key]
        casa = ref["spectrum"][k]  # (pol, chan), K
        got = ours.SPECTRUM_CORRECTED.values.T
        # 1e-5 relative; near zero the floor is float32 arithmetic: CASA forms (ON - OFF)/OFF
        # from float32 counts (~1e6), a resolution of ~1e-7 x Tsys (~100 K) per rounding
        np.testing.assert_allclose(got, casa, rtol=1e-5, atol=ATOL_K)
        np.testing.assert_allclose(ours.WEIGHT_CORRECTED.values[0], ref["weight"][k], rtol=1e-5)
        baselined = ours.SPECTRUM_BASELINED.values.T
        np.testing.assert_allclose(baselined, ref["baselined"][k], rtol=1e-5, atol=ATOL_K)
