"""bandpass (``bandtype='B'``): per-channel antenna gains (CASA ``bandpass``).

Each channel is solved independently with the gaincal solver (:mod:`radflow.cal.gain`: model
divided, prior tables applied, weighted time average within the solution interval, StefCal,
errors, SNR, minblperant), one gain per antenna, receptor and channel. CASA's defaults:
``solint='inf'``, ``combine='scan'``, ``minsnr=3``, ``minblperant=4``.

After solving, in CASA's order:

1. Reference antenna: per solution and channel, the first antenna of the refant list (then the
   others by distance) whose solution is good; every antenna is multiplied by
   ``conj(B_ref)/|B_ref|`` per receptor. ``REFERENCE_ANTENNA`` records the refant used in most
   channels.
2. ``solnorm``: per solution, antenna and receptor, over the good channels, divide by
   ``sqrt(mean |B|^2)`` and by the unit phasor of ``sum(B / |B|)``.
3. ``fillgaps=N``: runs of at most N flagged channels with good channels on both sides are
   filled by linear interpolation of the amplitude and of the phase (the phase step between the
   neighbours wrapped into (-pi, pi]) and unflagged. Edge runs are not filled.

Flagged solutions hold 1 (never used; kept finite).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr

from radflow import schema
from radflow.cal import apply as applycal
from radflow.cal import gain


def _reference(gains: np.ndarray, flag: np.ndarray, order: list[int]) -> tuple[np.ndarray, ...]:
    """Phase-reference (S, A, F, R) gains per solution and channel; returns gains, refant (S,)
    (the one used in most channels, -1 if none) and the per-channel choice (S, F)."""
    n_sol, _, n_chan, _ = gains.shape
    good = ~flag.any(axis=3)  # (S, A, F)
    choice = np.full((n_sol, n_chan), -1)
    for ant in order:
        choice = np.where((choice < 0) & good[:, ant, :], ant, choice)
    picked = np.take_along_axis(gains, np.maximum(choice, 0)[:, None, :, None], axis=1)
    phasor = np.where((choice >= 0)[:, None, :, None] & (picked != 0), gain.unit_phasor(picked), 1)
    referenced = gains * np.conj(phasor)
    refant = np.full(n_sol, -1)
    for s in range(n_sol):
        used = choice[s][choice[s] >= 0]
        if used.size:
            refant[s] = np.bincount(used).argmax()
    return referenced, refant


def _normalise(gains: np.ndarray, flag: np.ndarray) -> np.ndarray:
    good = ~flag
    count = np.maximum(good.sum(axis=2, keepdims=True), 1)
    power = np.where(good, np.abs(gains) ** 2, 0.0).sum(axis=2, keepdims=True) / count
    unit = np.where(good, gain.unit_phasor(gains), 0)
    phase = np.angle(unit.sum(axis=2, keepdims=True))
    amp = np.sqrt(np.where(power > 0, power, 1.0))
    return gains / (amp * np.exp(1j * phase))


def fill_gaps(gains: np.ndarray, flag: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Fill inner runs of at most `max_gap` flagged channels (axis 2) by linear interpolation of
    amplitude and (wrapped) phase between their good neighbours; they become unflagged."""
    gains, flag = gains.copy(), flag.copy()
    if max_gap <= 0:
        return gains, flag
    for s, a, r in np.ndindex(gains.shape[0], gains.shape[1], gains.shape[3]):
        bad = flag[s, a, :, r]
        good = np.flatnonzero(~bad)
        if good.size < 2:
            continue
        for left, right in zip(good[:-1], good[1:], strict=True):
            gap = right - left - 1
            if gap == 0 or gap > max_gap:
                continue
            g0, g1 = gains[s, a, left, r], gains[s, a, right, r]
            step = np.angle(g1 / g0) if g0 != 0 else 0.0
            w = np.arange(1, gap + 1) / (gap + 1)
            amp = (1 - w) * abs(g0) + w * abs(g1)
            gains[s, a, left + 1 : right, r] = amp * np.exp(1j * (np.angle(g0) + w * step))
            flag[s, a, left + 1 : right, r] = False
    return gains, flag


def _solve_block(
    num: np.ndarray,
    den: np.ndarray,
    *,
    ant1: np.ndarray,
    ant2: np.ndarray,
    n_ant: int,
    minblperant: int,
    minsnr: float,
    refants: list[int],
    solnorm: bool,
    fillgaps: int,
    names: list[str],
) -> tuple[np.ndarray, ...]:
    """num, den (S, baseline, F, pol) -> B, error, snr, flag, nvis (S, A, F, R), refant (S,)."""
    n_sol, n_bl, n_chan, n_pol = num.shape

    def per_channel(x: np.ndarray) -> np.ndarray:  # (S, bl, F, P) -> (S*F, bl, P)
        return x.transpose(0, 2, 1, 3).reshape(n_sol * n_chan, n_bl, n_pol)

    def back(x: np.ndarray) -> np.ndarray:  # (S*F, A, R) -> (S, A, F, R)
        return x.reshape(n_sol, n_chan, n_ant, n_pol).transpose(0, 2, 1, 3)

    gains, error, nvis = gain.solve_batch(
        *gain.solve_data(per_channel(num), per_channel(den), "ap"),
        ant1=ant1, ant2=ant2, n_ant=n_ant, minblperant=minblperant,
    )  # fmt: skip
    gains, error, nvis = back(gains), back(error), back(nvis)
    snr = gain.signal_to_noise(gains, error)
    flag = (nvis == 0) | ~(snr > minsnr)
    gains, refant = _reference(gains, flag, refants)
    if solnorm:
        gains = _normalise(gains, flag)
    gains, flag = fill_gaps(gains, flag, fillgaps)
    gains = np.where(flag, 1.0 + 0j, gains)
    error = np.where(np.isfinite(error), error, 0.0)
    labels = np.array([*names, ""])
    return gains, error, snr, flag, nvis, labels[refant]


def solve(
    partitions: Mapping[str, xr.Dataset],
    *,
    field: str | Sequence[str] = "",
    intent: str = "",
    spw: Sequence[int] | None = None,
    solint: str | float = "inf",
    combine: str | Sequence[str] = "scan",
    refant: str | Sequence[str] = "",
    minblperant: int = 4,
    minsnr: float = 3.0,
    solnorm: bool = False,
    fillgaps: int = 0,
    gaintable: Sequence[applycal.SolutionTable] = (),
    interp: str | Sequence[str] = "linear",
    spwmap: Sequence[Mapping[int, int] | None] | None = None,
    group: str = schema.GROUP_BASE,
    model_group: str | None = schema.GROUP_MODEL,
    antenna_positions: xr.DataArray | None = None,
    ms_name: str = "",
) -> dict[int, xr.Dataset]:
    """Solve a per-channel bandpass (B) over the selected partitions of one EB, lazily.

    Parameters are CASA ``bandpass``'s with ``bandtype='B'`` (see :func:`radflow.cal.gain.solve`
    for the shared ones, the module docstring for ``solnorm`` and ``fillgaps``).

    Returns
    -------
    dict of spw id -> solution Dataset
        cal_type ``B``; dims (time, antenna_name, frequency = the spw's channel frequencies (Hz),
        receptor); variables as gaincal's.
    """
    where = "bandpass"
    if int(fillgaps) < 0:
        raise gain.GaincalError(f"{where}: fillgaps must be >= 0, got {fillgaps!r}")
    interval_s = gain.parse_solint(solint)
    axes = gain.parse_combine(combine)
    prep = gain.prepare(
        partitions, field=field, intent=intent, spw=spw, refant=refant,
        antenna_positions=antenna_positions, gaintable=gaintable, interp=interp, spwmap=spwmap,
        group=group, model_group=model_group, per_channel=True, where=where,
    )  # fmt: skip
    intervals = gain.solution_intervals(prep.selected, interval_s, axes)
    out = {}
    for spw_id in sorted({s for iv in intervals for s in iv.spws}):
        mine = [iv for iv in intervals if spw_id in iv.spws]
        freqs = gain.spw_frequencies(prep, spw_id)
        num, den = prep.interval_arrays(mine)
        results = dask.delayed(_solve_block, nout=6, pure=True)(
            gain.single_block(num), gain.single_block(den), ant1=prep.ant1, ant2=prep.ant2,
            n_ant=len(prep.names),
            minblperant=int(minblperant), minsnr=float(minsnr), refants=prep.refant_order,
            solnorm=bool(solnorm), fillgaps=int(fillgaps), names=prep.names,
        )  # fmt: skip
        shape = (len(mine), len(prep.names), freqs.size, len(prep.receptors))
        solved = [
            da.from_delayed(results[k], shape, dtype=dtype)
            for k, dtype in enumerate((complex, float, float, bool, np.int64))
        ]
        solved.append(da.from_delayed(results[5], shape[:1], dtype=prep.name_dtype))
        out[spw_id] = gain.solution_dataset(
            solved, mine, prep, spw_id, cal_type=schema.CAL_TYPE_B, receptors=prep.receptors,
            frequencies=freqs,
            attrs={
                schema.ATTR_SOLINT: str(solint),
                schema.ATTR_COMBINE: ",".join(sorted(axes)),
                schema.ATTR_REFANT: ",".join(gain.parse_refant(refant)),
                schema.ATTR_MS_NAME: ms_name,
                "solnorm": bool(solnorm),
                "fillgaps": int(fillgaps),
            },
        )  # fmt: skip
    return out
