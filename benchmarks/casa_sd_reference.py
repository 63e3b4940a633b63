"""CASA reference for ALMA single-dish calibration: sdcal ``ps,tsys,apply`` + sdbaseline.

Runs CASA's standard position-switch calibration on a copy of a total-power MS and saves the
calibrated ON spectra, so radflow's single-dish calibration can be compared with CASA offline.

How to run
----------
This script needs CASA (casatools/casatasks), not radflow; run it with a separate venv::

    python3 -m venv /work/casa-venv
    /work/casa-venv/bin/pip install casatools casatasks casadata six numpy
    # ~/.casa/config.py (offline; no measures download):
    #   import casadata
    #   measurespath = casadata.datapath
    #   measures_auto_update = False
    #   data_auto_update = False
    /work/casa-venv/bin/python benchmarks/casa_sd_reference.py /tmp/sd_ps.ms /tmp/casa_ref

The input MS is never modified: it is copied to ``OUTDIR/calibrated.ms``. Steps:

1. ``sdcal(calmode="ps,tsys,apply", spwmap={tsys_spw: [science spws of the same BBC_NO]})``.
   CASA writes Tsys * (ON - OFF) / OFF into a new ``CORRECTED_DATA`` column of the MS
   (FLOAT_DATA keeps the raw counts; sdcal's ``outfile`` is ignored for MS input), for every
   row of the science spws (ON and OFF rows alike). OFF = mean of each contiguous OFF block,
   linearly interpolated in time; Tsys from SYSCAL (caltable time = SYSCAL TIME - INTERVAL/2)
   linearly interpolated in time and frequency. WEIGHT becomes
   ``WEIGHT_in * WF / mean_chan(Tsys)^2`` with
   ``WF = 1 / (1 + t_on / dt^2 * (dt2^2 / t_off1 + dt1^2 / t_off2))`` (t_on = EXPOSURE).
2. ``sdbaseline(datacolumn="corrected", intent=ON, blfunc="poly", order=ORDER,
   maskmode="list", spw="<sci>:<mask>", blformat="csv")``; the baseline-subtracted spectra go
   to ``OUTDIR/baselined.ms`` (column DATA) and the fit to ``OUTDIR/baseline.csv`` (columns:
   scan, beam, spw, pol, time, mask, function, order, coefficients (in channel index), rms,
   number clipped; no antenna column: lines go spw by spw, then time, antenna, pol).

Written to ``OUTDIR/casa_sd_reference.npz`` (one entry per ON row of the science spws, in MS
row order: TIME, then DATA_DESC_ID, then ANTENNA1):

- ``time`` (MJD s), ``antenna1``, ``data_desc_id``, ``spw``, ``scan``;
- ``spectrum`` (row, pol, chan; K): CORRECTED_DATA (real part) after sdcal;
- ``baselined`` (row, pol, chan; K): the same after sdbaseline;
- ``flag`` (row, pol, chan), ``weight`` (row, pol): after sdcal;
- ``bl_coeff`` (row, pol, order+1), ``bl_rms`` (row, pol): from the csv;
- ``nchan`` (row): spectra of spws with fewer channels than the widest are NaN-padded.

Wall times of sdcal and sdbaseline are printed. CASA writes its log (``casa-*.log``) into the
current directory. Caveat seen with CASA 6.7.0.31 (not used here): repeated sdcal ``otfraster``
calls in one process sometimes (7 of 36 calls, never the first) produced no sky rows for the
last raster row of the EB; ``ps`` mode showed no such effect.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import time
from pathlib import Path

import numpy as np
from casatasks import sdbaseline, sdcal
from casatools import table

ON_INTENT = "OBSERVE_TARGET#ON_SOURCE"


def _col(tb: table, name: str) -> np.ndarray:
    return np.asarray(tb.getcol(name))


def science_and_tsys_spws(ms: str) -> tuple[list[int], dict[int, list[int]]]:
    """Science spws (those with ON_SOURCE rows) and the Tsys spw -> science spws map by BBC_NO."""
    tb = table()
    tb.open(f"{ms}/STATE")
    on_states = [i for i, m in enumerate(_col(tb, "OBS_MODE")) if ON_INTENT in m]
    tb.close()
    tb.open(f"{ms}/DATA_DESCRIPTION")
    dd_spw = _col(tb, "SPECTRAL_WINDOW_ID")
    tb.close()
    tb.open(f"{ms}/SPECTRAL_WINDOW")
    bbc = _col(tb, "BBC_NO")
    tb.close()
    tb.open(f"{ms}/SYSCAL")
    tsys_spws = sorted({int(s) for s in _col(tb, "SPECTRAL_WINDOW_ID")})
    tb.close()
    tb.open(ms)
    dd = _col(tb, "DATA_DESC_ID")[np.isin(_col(tb, "STATE_ID"), on_states)]
    tb.close()
    science = sorted({int(dd_spw[d]) for d in np.unique(dd)})
    spwmap: dict[int, list[int]] = {}
    for ts in tsys_spws:
        targets = [s for s in science if bbc[s] == bbc[ts]]
        if targets:
            spwmap[ts] = targets
    missing = set(science) - {s for v in spwmap.values() for s in v}
    if missing:
        raise RuntimeError(f"no Tsys spw (same BBC_NO) for science spws {sorted(missing)}")
    return science, spwmap


def read_on_rows(ms: str, column: str, science: list[int]) -> dict[str, np.ndarray]:
    """ON rows of the science spws, in MS row order; spectra NaN-padded to the widest spw."""
    tb = table()
    tb.open(f"{ms}/STATE")
    on_states = [i for i, m in enumerate(_col(tb, "OBS_MODE")) if ON_INTENT in m]
    tb.close()
    tb.open(f"{ms}/DATA_DESCRIPTION")
    dd_spw = _col(tb, "SPECTRAL_WINDOW_ID")
    tb.close()
    tb.open(ms)
    rows = np.where(
        np.isin(_col(tb, "STATE_ID"), on_states)
        & np.isin(dd_spw[_col(tb, "DATA_DESC_ID")], science)
    )[0]
    cells = [np.real(tb.getcell(column, int(r))) for r in rows]
    flags = [tb.getcell("FLAG", int(r)) for r in rows]
    weight = np.stack([tb.getcell("WEIGHT", int(r)) for r in rows])
    out = {
        "time": _col(tb, "TIME")[rows],
        "antenna1": _col(tb, "ANTENNA1")[rows],
        "data_desc_id": _col(tb, "DATA_DESC_ID")[rows],
        "scan": _col(tb, "SCAN_NUMBER")[rows],
    }
    tb.close()
    out["spw"] = dd_spw[out["data_desc_id"]]
    npol = cells[0].shape[0]
    nchan = np.array([c.shape[1] for c in cells])
    spec = np.full((len(rows), npol, nchan.max()), np.nan)
    flag = np.ones(spec.shape, dtype=bool)
    for k, (c, f) in enumerate(zip(cells, flags, strict=True)):
        spec[k, :, : c.shape[1]] = c
        flag[k, :, : c.shape[1]] = f
    out.update(spectrum=spec, flag=flag, weight=weight, nchan=nchan)
    return out


def _spw_ids(ms: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DATA_DESC_ID -> spw, and each spw's NUM_CHAN and first channel frequency."""
    tb = table()
    tb.open(f"{ms}/DATA_DESCRIPTION")
    dd_spw = _col(tb, "SPECTRAL_WINDOW_ID")
    tb.close()
    tb.open(f"{ms}/SPECTRAL_WINDOW")
    nchan = _col(tb, "NUM_CHAN")
    f0 = np.array([tb.getcell("CHAN_FREQ", i)[0] for i in range(tb.nrows())])
    tb.close()
    return dd_spw, nchan, f0


def read_baselined(ms: str, cal_ms: str, ref: dict[str, np.ndarray]):
    """DATA of sdbaseline's output MS, aligned to the ON rows of ``ref``.

    sdbaseline writes its rows spw by spw (then time, antenna) and re-numbers the spws; they are
    matched back by (TIME, ANTENNA1, spw), the spw by its first channel frequency. Returns the
    spectra (``ref`` order) and, per output row, its index in ``ref`` (the csv's row order).
    """
    dd_spw, nchan, f0 = _spw_ids(ms)
    _, cal_nchan, cal_f0 = _spw_ids(cal_ms)
    to_cal = np.array(
        [
            int(np.where((cal_nchan == n) & np.isclose(cal_f0, f, rtol=0, atol=1.0))[0][0])
            for n, f in zip(nchan, f0, strict=True)
        ]
    )
    tb = table()
    tb.open(ms)
    t = _col(tb, "TIME")
    ant = _col(tb, "ANTENNA1")
    spw = to_cal[dd_spw[_col(tb, "DATA_DESC_ID")]]
    cells = [np.real(tb.getcell("DATA", r)) for r in range(tb.nrows())]
    tb.close()
    index = {
        (round(float(x) * 1e3), int(a), int(s)): k
        for k, (x, a, s) in enumerate(zip(ref["time"], ref["antenna1"], ref["spw"], strict=True))
    }
    perm = np.array(
        [
            index[(round(float(x) * 1e3), int(a), int(s))]
            for x, a, s in zip(t, ant, spw, strict=True)
        ]
    )
    if len(perm) != len(ref["time"]) or len(set(perm.tolist())) != len(perm):
        raise RuntimeError("sdbaseline output rows do not match the calibrated ON rows")
    out = np.full(ref["spectrum"].shape, np.nan)
    for k, c in zip(perm, cells, strict=True):
        out[k, :, : c.shape[1]] = c
    return out, perm


def read_baseline_csv(path: Path, ref: dict[str, np.ndarray], perm: np.ndarray, order: int):
    """Coefficients and rms per (ON row, pol) from sdbaseline's csv.

    The csv has no antenna column: its lines follow sdbaseline's output rows (``perm``), pol
    innermost; spw and time of every line are checked against that row.
    """
    npol = ref["spectrum"].shape[1]
    coeff = np.full((len(ref["time"]), npol, order + 1), np.nan)
    rms = np.full((len(ref["time"]), npol), np.nan)
    with open(path, newline="") as fh:
        lines = [r for r in csv.reader(fh) if r]
    if len(lines) != len(perm) * npol:
        raise RuntimeError(f"{path}: {len(lines)} fits for {len(perm)} rows x {npol} pol")
    for k, r in enumerate(lines):
        row = perm[k // npol]
        spw, pol, t = int(r[2]), int(r[3]), float(r[4])
        if spw != ref["spw"][row] or abs(t - ref["time"][row]) > 1e-3:
            raise RuntimeError(f"{path}: line {k} (spw {spw}, time {t}) out of row order")
        coeff[row, pol] = [float(x) for x in r[8 : 9 + order]]
        rms[row, pol] = float(r[9 + order])
    return coeff, rms


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ms", help="input single-dish MS (FLOAT_DATA, SYSCAL TSYS_SPECTRUM)")
    ap.add_argument("outdir", help="output directory (created; existing outputs overwritten)")
    ap.add_argument(
        "--mask",
        default="0~50;200~255",
        help="sdbaseline line-free channels (CASA syntax) applied to every science spw",
    )
    ap.add_argument("--order", type=int, default=1, help="polynomial baseline order")
    args = ap.parse_args(argv)

    out = Path(args.outdir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cal_ms = str(out / "calibrated.ms")
    bl_ms = str(out / "baselined.ms")
    bl_csv = out / "baseline.csv"
    for p in (cal_ms, bl_ms):
        shutil.rmtree(p, ignore_errors=True)
    bl_csv.unlink(missing_ok=True)
    shutil.copytree(args.ms, cal_ms)

    science, spwmap = science_and_tsys_spws(cal_ms)
    spw_sel = ",".join(str(s) for s in science)
    print(f"science spws {science}; spwmap {spwmap}")

    t0 = time.perf_counter()
    sdcal(
        infile=cal_ms,
        calmode="ps,tsys,apply",
        spwmap=spwmap,
        spw=spw_sel,
        interp="linear",
        outfile="",
    )
    t_cal = time.perf_counter() - t0

    t0 = time.perf_counter()
    sdbaseline(
        infile=cal_ms,
        datacolumn="corrected",
        spw=",".join(f"{s}:{args.mask}" for s in science),
        intent=ON_INTENT,
        maskmode="list",
        blfunc="poly",
        order=args.order,
        blformat="csv",
        bloutput=str(bl_csv),
        outfile=bl_ms,
        overwrite=True,
    )
    t_bl = time.perf_counter() - t0

    ref = read_on_rows(cal_ms, "CORRECTED_DATA", science)
    ref["baselined"], perm = read_baselined(bl_ms, cal_ms, ref)
    ref["bl_coeff"], ref["bl_rms"] = read_baseline_csv(bl_csv, ref, perm, args.order)
    np.savez(out / "casa_sd_reference.npz", **ref)
    print(
        f"{len(ref['time'])} ON rows -> {out / 'casa_sd_reference.npz'}, {bl_csv}\n"
        f"wall time: sdcal {t_cal:.2f} s, sdbaseline {t_bl:.2f} s, total {t_cal + t_bl:.2f} s"
    )


if __name__ == "__main__":
    main()
