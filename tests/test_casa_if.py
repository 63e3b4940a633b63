"""radflow's interferometer chain (graphs/alma_if.yaml) against CASA on the same simulated EB.

Optional: needs CASA (``RADFLOW_CASA_PYTHON``, see tests/test_casa_sd.py). CASA runs on a copy
of the MS the recipe's sequence with the same parameters: setjy (manual, J1924-2914 3 Jy at
100 GHz, spix -0.7, per channel), gaincal phase-up (p, int) on the bandpass calibrator,
bandpass (B, inf, combine scan, solnorm), gaincal phase (p, int) and amplitude (a, inf) on every
calibrator, fluxscale, applycal (calibrators with every field's solutions, the target with the
phase calibrator's). radflow is compared

- step by step: each radflow solver run on CASA's own prior tables (read with
  ``read_caltable``), so that a difference belongs to that step alone;
- end to end: ``radflow run alma_if`` on the converted store against CASA's tables, fluxscale
  dictionary and CORRECTED_DATA.

Tolerances are the issue's (1e-4 relative in amplitude, 0.01 degree in phase, 1e-4 for the
fluxscale dict). Where radflow does not (yet) agree, the assert holds the difference measured
on this simulation (seed fixed: CASA and radflow are deterministic) with a little margin, and a
``KNOWN DIFFERENCE`` comment names the cause; a second assert reproduces CASA's convention with
radflow's own building blocks to show that the cause is the whole story:

1. calmode='p' weighting. CASA (SolveDataBuffer::enforceAPonData) divides the averaged,
   model-divided visibility by its amplitude *and multiplies its weight by |Vbar|^2*; radflow
   solves ``Vbar/|Vbar|`` with the weight ``W``. Baselines whose channel average decorrelates
   (the phase-up before the bandpass, with delays in the data) are weighted differently:
   phase-up phases differ by up to ~12 degrees, the phase table's by ~0.15 degrees.
2. Solution time. CASA (SDBList::aggregateTimeCentroid) stamps a solution with the
   solve-weighted mean time centroid; radflow with the plain mean of the interval's
   integrations. With an antenna flagged for half a scan the amplitude solution moves 1.5 s,
   which changes what applycal's linear interpolation gives by up to ~6e-4.
3. applycal calwt for B tables. CASA scales the weights by ``mean_good(|B_i|^2) *
   mean_good(|B_j|^2)`` (per-antenna means over its unflagged channels); radflow by the channel
   mean of the product ``|B_i|^2 |B_j|^2`` with flagged channels counted as 1: weights differ by
   ~0.7 %. (Weights are not among the issue's quantities: checked at what was measured.)
4. fluxscale's two-spw fit is exactly determined (chi2 = 0): CASA's ``spidxerr`` and
   ``fitFluxdErr`` are its float rounding noise (1e-8 relative), radflow's ~1e-16. Both are zero
   at the precision of the fitted values; compared as such.
5. Solution errors and SNR (not among the issue's quantities): CASA pools chi2 over both
   receptors of a G solve (VisCalSolver2::getErrors, one problem for X and Y) and weights
   phase-only data as in 1; radflow's chi2 is per receptor. Reported, not asserted beyond
   identical flags.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import radflow
from radflow import schema
from radflow.cal import apply as applycal
from radflow.cal import bandpass, fluxscale, gain
from radflow.converters.caltable import read_caltable
from radflow.converters.msv2_to_store import convert
from radflow.pipeline import build, load_recipe, run
from radflow.store import load_group, partitions
from radflow.testing import simulate_interferometer
from radflow.testing.interferometer import FIELDS

CASA_PYTHON = os.environ.get("RADFLOW_CASA_PYTHON") or (
    sys.executable if importlib.util.find_spec("casatasks") else None
)
pytestmark = [
    pytest.mark.casa,
    pytest.mark.skipif(CASA_PYTHON is None, reason="CASA absent (set RADFLOW_CASA_PYTHON)"),
]

AMP_RTOL = 1e-4  # the tolerances
PHASE_DEG = 0.01
DICT_RTOL = 1e-4

BP, FLUX, PHASE, TARGET = (f[0] for f in FIELDS)
CALIBRATORS = [BP, FLUX, PHASE]
REFANT = "DA41"
SPWS = (0, 1)
RECIPE_OVERRIDES = [
    "setjy.standard=manual", "setjy.fluxdensity=3.0", "setjy.spix=-0.7",
    "setjy.reffreq=100GHz", f"gaincal.refant={REFANT}", f"bandpass.refant={REFANT}",
]  # fmt: skip
TABLES = {"phaseup": "phaseup.G", "bandpass": "bandpass.B", "phase": "phase.G", "amp": "amp.G",
          "flux": "flux.G"}  # fmt: skip

CASA_SCRIPT = """
import json, shutil, sys
import numpy as np
from casatasks import applycal, bandpass, fluxscale, gaincal, setjy
from casatools import table

src, ms = sys.argv[1], sys.argv[2]
shutil.copytree(src, ms)
REF, BP, FLUX, PHASE, TARGET = {names!r}
CALS = ",".join([BP, FLUX, PHASE])
common = dict(vis=ms, refant=REF, minsnr=3.0, minblperant=4)
setjy(vis=ms, field=FLUX, standard="manual", fluxdensity=[3.0, 0, 0, 0], spix=-0.7,
      reffreq="100GHz", scalebychan=True, usescratch=False)
gaincal(caltable="phaseup.G", field=BP, gaintype="G", calmode="p", solint="int", **common)
bandpass(caltable="bandpass.B", field=BP, bandtype="B", solint="inf", combine="scan",
         solnorm=True, fillgaps=0, gaintable=["phaseup.G"], interp=["linear"], **common)
gaincal(caltable="phase.G", field=CALS, gaintype="G", calmode="p", solint="int",
        gaintable=["bandpass.B"], interp=["linear"], **common)
gaincal(caltable="amp.G", field=CALS, gaintype="G", calmode="a", solint="inf",
        gaintable=["bandpass.B", "phase.G"], interp=["linear", "linear"], **common)
result = fluxscale(vis=ms, caltable="amp.G", fluxtable="flux.G", reference=FLUX,
                   transfer=[BP, PHASE], fitorder=1)
tables = ["bandpass.B", "phase.G", "flux.G"]
interp = ["nearest", "linear", "linear"]
applycal(vis=ms, field=CALS, gaintable=tables, interp=interp, gainfield=["", "", ""],
         calwt=True, applymode="calflag", flagbackup=False)
applycal(vis=ms, field=TARGET, gaintable=tables, interp=interp, gainfield=["", PHASE, PHASE],
         calwt=True, applymode="calflag", flagbackup=False)

def plain(v):
    if isinstance(v, dict):
        return {{str(k): plain(x) for k, x in v.items()}}
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v

with open("fluxscale.json", "w") as f:
    json.dump(plain(result), f)
tb = table()
tb.open(ms)
cols = ("TIME", "ANTENNA1", "ANTENNA2", "DATA_DESC_ID", "CORRECTED_DATA", "FLAG",
        "WEIGHT_SPECTRUM")
np.savez("corrected.npz", **{{c.lower(): tb.getcol(c) for c in cols}})
tb.close()
"""


# ---- fixtures ----


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    """The simulated EB through CASA (tables, dict, CORRECTED_DATA) and through radflow's
    recipe; plus the EB with setjy's model, for the step-by-step comparisons."""
    tmp = tmp_path_factory.mktemp("casa_if")
    eb = simulate_interferometer(tmp / "eb.ms", n_antennas=8, n_spw=2, n_chan=32,
                                 n_integrations=8, n_cycles=2, seed=11)  # fmt: skip
    casa_dir = tmp / "casa"
    casa_dir.mkdir()
    script = casa_dir / "casa_if_chain.py"
    script.write_text(textwrap.dedent(CASA_SCRIPT.format(names=(REFANT, BP, FLUX, PHASE, TARGET))))
    proc = subprocess.run(
        [CASA_PYTHON, str(script), str(eb.ms_path), str(casa_dir / "casa.ms")],
        cwd=casa_dir,  # CASA writes its log into the working directory
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    casa = {key: read_caltable(casa_dir / name) for key, name in TABLES.items()}

    ours_dir = tmp / "radflow"
    ours_dir.mkdir()
    ms = shutil.copytree(eb.ms_path, ours_dir / "eb.ms")
    store = convert(ms, ours_dir / "eb.ps.zarr")
    (result,) = run(load_recipe("alma_if", RECIPE_OVERRIDES), [store], progress=False)
    assert result.status == "done", result.error
    setjy_only = load_recipe("alma_if", RECIPE_OVERRIDES)
    setjy_only.steps = setjy_only.steps[:1]
    modelled = build(setjy_only, store).partitions  # lazy: data with setjy's model group
    return dict(
        eb=eb, casa=casa, casa_dir=casa_dir, store=store, modelled=modelled,
        casa_dict=json.loads((casa_dir / "fluxscale.json").read_text()),
        ours={key: {spw: load_group(store, f"calibration/{key}/spw{spw}") for spw in SPWS}
              for key in TABLES},
    )  # fmt: skip


# ---- helpers ----


def differences(ours: dict, casa: dict) -> dict:
    """Max differences of two solution tables over the solutions both have unflagged."""
    out = dict(amp=0.0, phase_deg=0.0, time_s=0.0, flags=0)
    for spw in SPWS:
        a, b = ours[spw].compute(), casa[spw]
        assert a.sizes == b.sizes, (spw, dict(a.sizes), dict(b.sizes))
        assert [str(x) for x in a.antenna_name.values] == [str(x) for x in b.antenna_name.values]
        ga, gb = a[schema.CALIBRATION_PARAMETER].values, b[schema.CALIBRATION_PARAMETER].values
        fa, fb = a[schema.FLAG].values, b[schema.FLAG].values
        good = ~fa & ~fb
        assert good.mean() > 0.8
        out["amp"] = max(out["amp"], np.abs(np.abs(ga) / np.abs(gb) - 1)[good].max())
        dphi = np.degrees(np.abs(np.angle(ga * np.conj(gb))))[good].max()
        out["phase_deg"] = max(out["phase_deg"], dphi)
        # radflow's TIME_CENTROID is CASA's solution time (a caltable read back has only time)
        stamps = a[schema.TIME_CENTROID] if schema.TIME_CENTROID in a else a[schema.TIME]
        out["time_s"] = max(out["time_s"], np.abs(stamps.values - b.time.values).max())
        out["flags"] += int((fa != fb).sum())
        assert set(map(str, a[schema.REFERENCE_ANTENNA].values)) == {REFANT}
        assert set(map(str, b[schema.REFERENCE_ANTENNA].values)) == {REFANT}
    return out


def _plain(value):
    """JSON for numpy values in the dictionaries."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def compare_dicts(ours, theirs, path: str = "") -> dict[str, float]:
    """Relative difference of every number of CASA's dict (`theirs`) and radflow's, by path
    (``"0/1/fluxd"``); strings must be equal."""
    out: dict[str, float] = {}
    if isinstance(theirs, dict):
        for key, value in theirs.items():
            assert key in ours, f"{path}/{key} missing in radflow's dict"
            out.update(compare_dicts(ours[key], value, f"{path}/{key}".lstrip("/")))
        return out
    if isinstance(theirs, str) or (
        isinstance(theirs, list) and any(isinstance(x, str) for x in theirs)
    ):
        assert ours == theirs, (path, ours, theirs)  # names
        return out
    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    assert a.shape == b.shape, (path, a.shape, b.shape)
    if a.size:
        scale = np.maximum(np.abs(b), 1e-300)
        out[path] = float(np.max(np.abs(a - b) / scale * (np.abs(a - b) > 0)))
    return out


def _antennas(reduced) -> list[str]:
    """The MS's antenna names in ANTENNA-table order (the simulator's truth order)."""
    return [str(a) for a in reduced["eb"].truth[schema.ANTENNA_NAME].values]


def corrected_differences(casa_dir, corrected: dict, antennas: list[str]) -> dict:
    """Per field: max relative amplitude and phase (degrees) difference of radflow's
    VISIBILITY_CORRECTED and CASA's CORRECTED_DATA where neither is flagged, of the weights,
    the number of samples flagged in one only, and the number compared."""
    casa = np.load(casa_dir / "corrected.npz")
    rows = {
        (round(float(t), 3), int(a1), int(a2), int(dd)): k
        for k, (t, a1, a2, dd) in enumerate(
            zip(casa["time"], casa["antenna1"], casa["antenna2"], casa["data_desc_id"],
                strict=True)
        )
    }  # fmt: skip
    index = {name: k for k, name in enumerate(antennas)}
    out: dict[str, dict] = {}
    for ds in corrected.values():
        info = ds.attrs[schema.ATTR_PARTITION_INFO]
        field = str(info[schema.PI_FIELD][0])
        spw = int(info[schema.PI_SPW_ID])
        vis = ds["VISIBILITY_CORRECTED"].values
        flag = ds["FLAG_CORRECTED"].values
        weight = ds["WEIGHT_CORRECTED"].values
        a1 = [index[str(a)] for a in ds[schema.BASELINE_ANTENNA1_NAME].values]
        a2 = [index[str(a)] for a in ds[schema.BASELINE_ANTENNA2_NAME].values]
        mjd = ds[schema.TIME].values + schema.MJD_UNIX_OFFSET_S
        d = out.setdefault(field, dict(amp=0.0, phase_deg=0.0, weight=0.0, flags=0, n=0))
        for i, t in enumerate(mjd):
            for b in range(len(a1)):
                row = rows.get((round(float(t), 3), a1[b], a2[b], spw))
                if row is None:
                    continue  # padding: not in the MS
                theirs = casa["corrected_data"][:, :, row].T  # (chan, pol)
                their_flag = casa["flag"][:, :, row].T
                their_weight = casa["weight_spectrum"][:, :, row].T
                ours, our_flag = vis[i, b], flag[i, b]
                d["flags"] += int((our_flag != their_flag).sum())
                good = ~our_flag & ~their_flag
                if not good.any():
                    continue
                d["n"] += int(good.sum())
                ratio = np.abs(ours[good]) / np.abs(theirs[good])
                d["amp"] = max(d["amp"], float(np.abs(ratio - 1).max()))
                dphi = np.degrees(np.abs(np.angle(ours[good] * np.conj(theirs[good]))))
                d["phase_deg"] = max(d["phase_deg"], float(dphi.max()))
                wrel = np.abs(weight[i, b][good] / their_weight[good] - 1)
                d["weight"] = max(d["weight"], float(wrel.max()))
    return out


def test_phaseup_gaincal(reduced):
    parts, casa = reduced["modelled"], reduced["casa"]
    ours = gain.solve(parts, field=BP, calmode="p", solint="int", refant=REFANT,
                      model_group="setjy")  # fmt: skip
    d = differences(ours, casa["phaseup"])
    assert d["flags"] == 0 and d["time_s"] < 1e-5
    assert d["amp"] < 1e-6  # both unit amplitude (CASA's to float32)
    # radflow weights phase-only data by W |Vbar|^2 as CASA does (cause 1, fixed)
    assert d["phase_deg"] < PHASE_DEG, d


def test_bandpass(reduced):
    parts, casa = reduced["modelled"], reduced["casa"]
    ours = bandpass.solve(parts, field=BP, solint="inf", combine="scan", solnorm=True,
                          refant=REFANT, gaintable=[casa["phaseup"]],
                          model_group="setjy")  # fmt: skip
    d = differences(ours, casa["bandpass"])
    assert d["flags"] == 0  # the simulator's flagged channels, and nothing else
    assert d["amp"] < AMP_RTOL, d  # measured 1.2e-5
    assert d["phase_deg"] < PHASE_DEG, d  # measured 3e-5
    assert d["time_s"] < 2e-3, d  # solve-weighted mean time (cause 2, fixed)


def test_phase_gaincal(reduced):
    parts, casa = reduced["modelled"], reduced["casa"]
    ours = gain.solve(parts, field=CALIBRATORS, calmode="p", solint="int", refant=REFANT,
                      gaintable=[casa["bandpass"]], model_group="setjy")  # fmt: skip
    d = differences(ours, casa["phase"])
    assert d["flags"] == 0 and d["time_s"] < 1e-5
    assert d["amp"] < 1e-6
    assert d["phase_deg"] < PHASE_DEG, d  # cause 1 fixed


def test_amplitude_gaincal(reduced):
    parts, casa = reduced["modelled"], reduced["casa"]
    priors = [casa["bandpass"], casa["phase"]]
    ours = gain.solve(parts, field=CALIBRATORS, calmode="a", solint="inf", refant=REFANT,
                      gaintable=priors, model_group="setjy")  # fmt: skip
    d = differences(ours, casa["amp"])
    assert d["flags"] == 0
    assert d["amp"] < AMP_RTOL, d  # measured 1.7e-5
    assert d["phase_deg"] < 1e-6, d  # amplitude-only: both real and positive
    # solution times: the solve-weighted mean (cause 2, fixed; 1.5 s from the plain mean on
    # the scan where one antenna is flagged for its second half)
    assert d["time_s"] < 2e-3, d


def test_fluxscale(reduced):
    casa, casa_dict = reduced["casa"], reduced["casa_dict"]
    ids = {f[0]: k for k, f in enumerate(FIELDS)}  # MS field ids (CASA's dict keys)
    # radflow's defaults: the flux densities agree (16 ratios: medians agree too) ...
    default = fluxscale.fluxscale(casa["amp"], [FLUX], [BP, PHASE], field_ids=ids, fitorder=1)
    plain = json.loads(json.dumps(default.to_dict(), default=_plain))
    for field in ("0", "2"):
        for spw in ("0", "1"):
            ours, theirs = plain[field][spw]["fluxd"][0], casa_dict[field][spw]["fluxd"][0]
            assert ours == pytest.approx(theirs, rel=DICT_RTOL)
    # ... and with CASA's conventions every number of the dict agrees
    result = fluxscale.fluxscale(casa["amp"], [FLUX], [BP, PHASE], field_ids=ids, fitorder=1,
                                 casa_median=True, casa_errors=True)  # fmt: skip
    ours = json.loads(json.dumps(result.to_dict(), default=_plain))
    rel = compare_dicts(ours, casa_dict)
    exact_fit = {k for k in rel if k.endswith(("/spidxerr", "/fitFluxdErr"))}
    assert {k: v for k, v in rel.items() if k not in exact_fit and v >= DICT_RTOL} == {}
    # KNOWN DIFFERENCE (cause 4): a line through two points: the errors are chi2 = 0 times
    # the covariance. CASA reports its rounding noise (spidxerr 1.3e-8 and 2.7e-6 for field 0,
    # 0 for field 2), radflow ~1e-16: both zero to 1e-4 of the fitted value.
    for field in ("0", "2"):
        spidx = np.abs(casa_dict[field]["spidx"])
        for d in (ours, casa_dict):
            assert np.all(np.asarray(d[field]["spidxerr"]) <= DICT_RTOL * spidx)
            assert d[field]["fitFluxdErr"] <= DICT_RTOL * casa_dict[field]["fitFluxd"]
    # the scaled table equals CASA's fluxtable
    d = differences(result.table, casa["flux"])
    assert d["amp"] < 1e-6 and d["flags"] == 0  # float32 of the table


def test_applycal(reduced):
    """radflow's applycal with CASA's tables, per field as the recipe: CORRECTED_DATA."""
    casa = reduced["casa"]
    tables = [casa["bandpass"], casa["phase"], casa["flux"]]
    corrected = {}
    for name, ds in reduced["modelled"].items():  # the store without the run's results
        if ds.attrs.get(schema.ATTR_TYPE) != schema.TYPE_VISIBILITY:
            continue
        target = str(ds[schema.FIELD_NAME].values[0]) == TARGET
        corrected[name] = applycal.apply(
            ds, tables, interp=["nearest", "linear", "linear"],
            gainfield=[[], [PHASE], [PHASE]] if target else None, output="corrected",
        )  # fmt: skip
    diff = corrected_differences(reduced["casa_dir"], corrected, _antennas(reduced))
    assert set(diff) == {BP, FLUX, PHASE, TARGET}
    for field, d in diff.items():
        assert d["flags"] == 0 and d["n"] > 0, field
        assert d["amp"] < AMP_RTOL, (field, d)  # measured 7e-7
        assert d["phase_deg"] < PHASE_DEG, (field, d)  # measured 4e-5
        assert d["weight"] < AMP_RTOL, (field, d)  # cause 3 (calwt of B tables) fixed


# ---- end to end: radflow run alma_if against CASA's chain ----


def test_chain_solutions(reduced):
    ours, casa = reduced["ours"], reduced["casa"]
    phaseup = differences(ours["phaseup"], casa["phaseup"])
    bp = differences(ours["bandpass"], casa["bandpass"])
    phase = differences(ours["phase"], casa["phase"])
    amp = differences(ours["amp"], casa["amp"])
    flux = differences(ours["flux"], casa["flux"])
    assert all(d["flags"] == 0 for d in (phaseup, bp, phase, amp, flux))
    assert phaseup["phase_deg"] < PHASE_DEG, phaseup  # cause 1 fixed
    assert bp["amp"] < AMP_RTOL and bp["phase_deg"] < PHASE_DEG, bp
    assert phase["phase_deg"] < PHASE_DEG, phase
    assert amp["amp"] < AMP_RTOL and flux["amp"] < AMP_RTOL, (amp, flux)  # measured 1.9e-5
    assert amp["time_s"] < 2e-3, amp


def test_chain_fluxscale_dict(reduced):
    stem = reduced["store"].name.removesuffix(".zarr").removesuffix(".ps")
    ours = json.loads(reduced["store"].with_name(f"{stem}.flux.json").read_text())
    casa_dict = reduced["casa_dict"]
    for field in ("0", "2"):
        assert ours[field]["fieldName"] == casa_dict[field]["fieldName"]
        for spw in ("0", "1"):
            got, want = ours[field][spw]["fluxd"][0], casa_dict[field][spw]["fluxd"][0]
            assert got == pytest.approx(want, rel=DICT_RTOL)  # measured 3e-6
        assert ours[field]["spidx"][1] == pytest.approx(casa_dict[field]["spidx"][1], abs=1e-3)


def test_chain_corrected_data(reduced):
    corrected = {
        name: node.to_dataset(inherit=False)
        for name, node in partitions(radflow.open(reduced["store"])).items()
        if node.attrs.get(schema.ATTR_TYPE) == schema.TYPE_VISIBILITY
    }
    diff = corrected_differences(reduced["casa_dir"], corrected, _antennas(reduced))
    assert set(diff) == {BP, FLUX, PHASE, TARGET}
    for field, d in diff.items():  # measured: 2.7e-5 in amplitude, 4e-4 deg, weights 1.6e-5
        assert d["flags"] == 0, (field, d)
        assert d["amp"] < AMP_RTOL and d["phase_deg"] < PHASE_DEG, (field, d)
        assert d["weight"] < AMP_RTOL, (field, d)
