"""bandpass ``bandtype='BPOLY'``: polynomial bandpasses per antenna (CASA ``BJonesPoly``).

Model: ``V_ij(nu) = B_i(nu) conj(B_j(nu)) M_ij(nu)`` per parallel hand, with

    B_i(nu) = exp(A_i(x)) exp(i phi_i(x)),   A_i = sum_k a_ik P_k(x),   phi_i = sum_k p_ik P_k(x)
    x = (2 nu - nu_lo - nu_hi) / (nu_hi - nu_lo),   P_0 = 1/2,   P_k = T_k (Chebyshev)

``nu_lo``/``nu_hi`` are the lowest and highest channel frequencies of the spw (of all the spws
fitted together with ``combine='spw'``); ``P_0 = 1/2`` is CASA's (CLIC's) convention, kept so
that the coefficients mean the same in both.

Data preparation (lazy, as :mod:`radflow.cal.gain` with ``per_channel=True``)
-----------------------------------------------------------------------------
Prior tables applied, model divided: per solution interval (``solint``/``combine`` exactly as
gaincal; default ``'inf'`` with ``combine='scan'``), baseline, channel and parallel hand
``Vbar = sum(w V conj(M)) / sum(w |M|^2)`` with weight ``W = sum(w |M|^2)``. ``visnorm=True``
divides each baseline's spectrum by its complex weighted mean over the fitted channels.

Channels left out of the fit (but where the polynomials are still evaluated)
---------------------------------------------------------------------------
``maskedge`` percent of the channels at each edge of each spw and ``maskcenter`` channels at
its centre (channels ``N//2 - maskcenter//2`` up to ``+ maskcenter``), plus flagged data.
Edges: radflow masks ``ceil(N maskedge / 100)`` channels at *each* edge. CASA masks
``chan < N f`` and ``chan > N (1 - f)`` (``f = maskedge/100``, single precision), i.e. one
channel fewer at the top than at the bottom (5%: 64 channels, 4 at the bottom and 3 at the
top; 100 channels, 5 and 4); ``casa_maskedge=True`` reproduces CASA's channels exactly.
Default ``maskedge=5``: the value of CASA 6's ``bandpass`` task and of ``BJonesPoly`` (the
task documentation's parameter table, quoted in the seed, still says 0 from an older release).

Fit (per solution interval and parallel hand; one dask task per spw)
---------------------------------------------------------------------
Antennas with fewer than ``minblperant`` baselines of data, or fewer channels of data than
coefficients, are dropped (repeatedly) and flagged. Amplitude: weighted linear least squares
of ``ln|Vbar_ij| = A_i(x) + A_j(x)`` (CASA's weights: ``W``). Phase: ``arg Vbar_ij =
phi_i(x) - phi_j(x)`` with the reference antenna's polynomial fixed to 0, by Gauss-Newton on
the wrapped residuals (weights ``W``), started both from zero (as CASA) and from the unwrapped
phases of a StefCal solution on the channels averaged into at most 128 blocks; the start with
the lower final cost wins. (CASA's CLIC solver iterates on ``sin`` of the residuals, which has
the same fixed point to first order in the noise.) ``solnorm=True`` then shifts the constant
terms so that, per antenna and hand, the *linear* mean of ``|B|`` over the channels that
entered its fit is 1 and the mean phasor has phase 0 (as CASA).

Reference antenna: the first of ``refant`` with data (then the others by distance, as gaincal),
chosen per interval; ``REFERENCE_ANTENNA`` records it. Errors: the fit covariances scaled by the
reduced chi^2 give ``var A_i(x)`` and ``var phi_i(x)``; ``PARAMETER_ERROR = |B| sqrt(var A +
var phi)`` (the magnitude of the complex error), ``SNR = |B| / PARAMETER_ERROR``.

Output (per spw): ``CALIBRATION_PARAMETER`` on the spw's channels, ``PARAMETER_ERROR``, ``SNR``,
``FLAG`` (the whole band of a dropped antenna; never a single channel: the polynomial is valid
on every channel, masked or flagged), ``N_VISIBILITIES`` (baselines of data per channel; 0 on
masked channels), ``REFERENCE_ANTENNA``, ``SOLUTION_INTERVAL``, and the fit itself:
``AMPLITUDE_COEFFICIENTS`` / ``PHASE_COEFFICIENTS`` and ``FIT_MASK``, with the x normalisation
in attrs (:mod:`radflow.schema`, section "bpoly"). ``cal_type`` is ``BPOLY``; applycal uses the
sampled ``CALIBRATION_PARAMETER`` like a B table.

Deviations from CASA (checked against CASA 6.7 in tests/test_bpoly.py)
----------------------------------------------------------------------
- Weights: radflow weights each channel by ``sum w |M|^2``; CASA divides by the model per
  channel but weights whole rows by ``w mean(|M|)^2``. Without a model (or a flat one) the two
  agree (amplitudes to 1e-7); with a 1% model slope across the band they differ by ~5e-4.
- Phase solver: CASA starts Gauss-Newton from zero phases and can stop at a false minimum (an
  antenna near antiphase; seen with raw ALMA-like gains, a cost ~200x the true minimum);
  radflow also starts from a StefCal solution and keeps the lower cost. Where both find the
  same minimum, the phases agree to ~0.002 degree (sin vs wrapped residuals).
- Edge masks: see above (``casa_maskedge``).
- CASA bins the channels of all spws onto one regular grid before fitting (the same thing for
  one spw with regular channels); radflow fits the channel frequencies as they are.
- CASA's per-channel requirement (an antenna needs 2 baselines in a channel) is replaced by
  ``minblperant`` over the band plus the channel count.
- CASA uses the refant if it has data, else the first antenna; radflow follows gaincal's refant
  list and fallback.
- CASA writes BPOLY tables in its pre-4.1 layout and applies them without ``calwt``; radflow's
  table is a sampled B-like table (exports as ``B Jones``) that also carries the coefficients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import dask
import dask.array as da
import numpy as np
import xarray as xr
from numpy.polynomial import chebyshev

from radflow import schema
from radflow.cal import apply as applycal
from radflow.cal.gain import (
    GaincalError,
    drop_sparse_antennas,
    parse_combine,
    parse_refant,
    parse_solint,
    prepare,
    signal_to_noise,
    solution_dataset,
    solution_intervals,
    solve_batch,
    spw_frequencies,
)

SolutionTable = dict[int, xr.Dataset]
_MAX_ITER = 100
_TOLERANCE = 1e-11  # rad: Gauss-Newton steps smaller than this end the phase fit
_START_BLOCKS = 128  # channel blocks of the StefCal starting solution


class BpolyError(GaincalError):
    """Bad BPOLY input: degrees, masks, too few channels, no data, unknown refant."""


# ---- the polynomial ----


def chebyshev_basis(x: np.ndarray, degree: int) -> np.ndarray:
    """``P_k(x)`` for k = 0..degree, shape ``x.shape + (degree + 1,)``: ``P_0 = 1/2``,
    ``P_k = T_k`` (CASA's convention)."""
    basis = chebyshev.chebvander(np.asarray(x, dtype=float), degree)
    basis[..., 0] = 0.5
    return basis


def normalised_x(freq: np.ndarray, low: float, high: float) -> np.ndarray:
    """``x = (2 nu - low - high) / (high - low)`` (0 for a single frequency)."""
    freq = np.asarray(freq, dtype=float)
    if high <= low:
        return np.zeros_like(freq)
    return (2.0 * freq - low - high) / (high - low)


def evaluate(
    amplitude_coefficients: np.ndarray,
    phase_coefficients: np.ndarray,
    freq: np.ndarray,
    low: float,
    high: float,
) -> np.ndarray:
    """``B(nu)`` from coefficient arrays (..., K) on `freq`: shape (..., n_freq)."""
    x = normalised_x(freq, low, high)
    amp_coef, phase_coef = np.asarray(amplitude_coefficients), np.asarray(phase_coefficients)
    amp = amp_coef @ chebyshev_basis(x, amp_coef.shape[-1] - 1).T
    phase = phase_coef @ chebyshev_basis(x, phase_coef.shape[-1] - 1).T
    return np.exp(amp + 1j * phase)


def fit_channels(
    n_chan: int, maskedge: float, maskcenter: int, casa_maskedge: bool = False
) -> np.ndarray:
    """True for the channels of one spw that may enter the fit (module docstring)."""
    chan = np.arange(n_chan)
    if casa_maskedge:  # BJonesPoly::maskedChannel, in its single precision
        frac = np.float32(np.float32(maskedge) / 100.0)
        edge = (chan < np.float32(n_chan) * frac) | (
            chan > np.float32(n_chan) * (np.float32(1.0) - frac)
        )
    else:
        n_edge = math.ceil(round(n_chan * float(maskedge) / 100.0, 9))
        edge = (chan < n_edge) | (chan >= n_chan - n_edge)
    low = n_chan // 2 - maskcenter // 2
    centre = (chan >= low) & (chan < low + maskcenter)
    return ~(edge | centre)


# ---- the fit (numpy; one call per spw, or per group of combined spws) ----


def _normal_matrix(
    wgt: np.ndarray, basis: np.ndarray, p: np.ndarray, q: np.ndarray, n_unknown: int, sign: float
) -> np.ndarray:
    """Normal matrix (n_unknown K, n_unknown K) of ``y_b = c_p(b) . P + sign c_q(b) . P`` with
    weights (baseline, channel); p, q: unknown index of each baseline's antennas, -1: fixed."""
    k = basis.shape[1]
    per_baseline = np.einsum("bc,ck,cl->bkl", wgt, basis, basis)
    normal = np.zeros((n_unknown, k, n_unknown, k))
    for rows, cols, s in ((p, p, 1.0), (q, q, 1.0), (p, q, sign), (q, p, sign)):
        ok = (rows >= 0) & (cols >= 0)
        np.add.at(normal, (rows[ok], slice(None), cols[ok], slice(None)), s * per_baseline[ok])
    return normal.reshape(n_unknown * k, n_unknown * k)


def _right_side(
    wy: np.ndarray, basis: np.ndarray, p: np.ndarray, q: np.ndarray, n_unknown: int, sign: float
) -> np.ndarray:
    per_baseline = wy @ basis  # (baseline, K)
    rhs = np.zeros((n_unknown, basis.shape[1]))
    ok = p >= 0
    np.add.at(rhs, p[ok], per_baseline[ok])
    ok = q >= 0
    np.add.at(rhs, q[ok], sign * per_baseline[ok])
    return rhs.ravel()


def _usable(
    wgt: np.ndarray, a1: np.ndarray, a2: np.ndarray, n_ant: int, minblperant: int, n_coef: int
) -> np.ndarray:
    """Baselines (bool) kept after dropping, repeatedly, antennas with fewer than `minblperant`
    baselines or fewer than `n_coef` channels of data."""
    keep = (wgt > 0).any(axis=1)
    while True:
        matrix = np.zeros((1, n_ant, n_ant))
        matrix[0, a1[keep], a2[keep]] = 1.0
        matrix[0, a2[keep], a1[keep]] = 1.0
        ok = drop_sparse_antennas(matrix, minblperant)[0].any(axis=1)
        channels = np.zeros((n_ant, wgt.shape[1]), dtype=bool)
        kept = keep & ok[a1] & ok[a2]
        np.logical_or.at(channels, a1[kept], wgt[kept] > 0)
        np.logical_or.at(channels, a2[kept], wgt[kept] > 0)
        ok &= channels.sum(axis=1) >= n_coef
        new = kept & ok[a1] & ok[a2]
        if np.array_equal(new, keep):
            return keep
        keep = new


def _wrap(phase: np.ndarray) -> np.ndarray:
    return (phase + np.pi) % (2.0 * np.pi) - np.pi


def _phase_start(
    vis: np.ndarray, wgt: np.ndarray, x: np.ndarray, a1: np.ndarray, a2: np.ndarray,
    n_ant: int, ref: int, degree: int,
) -> np.ndarray:  # fmt: skip
    """Phase coefficients (A, K) from StefCal on channel blocks, referenced and unwrapped."""
    chans = np.flatnonzero(wgt.any(axis=0))
    blocks = np.array_split(chans, min(_START_BLOCKS, chans.size))
    bvis = np.zeros((len(blocks), vis.shape[0], 1), dtype=complex)
    bwgt = np.zeros((len(blocks), vis.shape[0], 1))
    bx = np.zeros(len(blocks))
    for n, idx in enumerate(blocks):
        w = wgt[:, idx]
        bwgt[n, :, 0] = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            bvis[n, :, 0] = np.where(bwgt[n, :, 0] > 0, (w * vis[:, idx]).sum(axis=1)
                                     / bwgt[n, :, 0], 0.0)  # fmt: skip
        bx[n] = x[idx].mean()
    gains, error, _ = solve_batch(bvis, bwgt, ant1=a1, ant2=a2, n_ant=n_ant, minblperant=1)
    g = gains[:, :, 0] * np.conj(gains[:, ref : ref + 1, 0])
    valid = np.isfinite(error[:, :, 0]) & (np.abs(g) > 0)
    coef = np.zeros((n_ant, degree + 1))
    basis = chebyshev_basis(bx, degree)
    for ant in range(n_ant):
        ok = valid[:, ant]
        if ant == ref or ok.sum() <= degree:
            continue
        phase = np.unwrap(np.angle(g[ok, ant]))
        coef[ant] = np.linalg.lstsq(basis[ok], phase, rcond=None)[0]
    return coef


def _fit_one(
    vis: np.ndarray, wgt: np.ndarray, x: np.ndarray, a1: np.ndarray, a2: np.ndarray,
    n_ant: int, active: np.ndarray, ref: int, degamp: int, degphase: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """One interval and hand: amplitude and phase coefficients (A, K) and the variances of
    ``A_i(x)`` and ``phi_i(x)`` on every channel (A, C)."""
    n_chan = x.size
    used = wgt > 0
    amp_basis, phase_basis = chebyshev_basis(x, degamp), chebyshev_basis(x, degphase)
    ants = np.flatnonzero(active)
    coef_a = np.zeros((n_ant, degamp + 1))
    coef_p = np.zeros((n_ant, degphase + 1))
    var_a = np.zeros((n_ant, n_chan))
    var_p = np.zeros((n_ant, n_chan))
    n_obs = used.sum()

    # amplitude: ln|V_ij| = A_i + A_j, linear
    index = np.full(n_ant, -1)
    index[ants] = np.arange(ants.size)
    p, q = index[a1], index[a2]
    with np.errstate(divide="ignore"):
        y = np.where(used, np.log(np.abs(np.where(used, vis, 1.0))), 0.0)
    inverse = np.linalg.pinv(_normal_matrix(wgt, amp_basis, p, q, ants.size, 1.0))
    solution = inverse @ _right_side(wgt * y, amp_basis, p, q, ants.size, 1.0)
    coef_a[ants] = solution.reshape(ants.size, -1)
    model = coef_a @ amp_basis.T
    chi2 = (wgt * (y - model[a1] - model[a2]) ** 2).sum()
    scale = chi2 / max(n_obs - inverse.shape[0], 1)
    cov = (scale * inverse).reshape(ants.size, degamp + 1, ants.size, degamp + 1)
    block = cov[np.arange(ants.size), :, np.arange(ants.size), :]  # (ant, K, K)
    var_a[ants] = np.einsum("ck,akl,cl->ac", amp_basis, block, amp_basis)

    # phase: arg V_ij = phi_i - phi_j, the refant fixed at 0; Gauss-Newton on wrapped residuals
    free = ants[ants != ref]
    if free.size == 0:
        return coef_a, coef_p, var_a, var_p
    index = np.full(n_ant, -1)
    index[free] = np.arange(free.size)
    p, q = index[a1], index[a2]
    inverse = np.linalg.pinv(_normal_matrix(wgt, phase_basis, p, q, free.size, -1.0))
    data = np.angle(vis)

    def residual(coef: np.ndarray) -> np.ndarray:
        model = coef @ phase_basis.T
        return np.where(used, _wrap(data - model[a1] + model[a2]), 0.0)

    best, best_cost = None, np.inf
    starts = [np.zeros((n_ant, degphase + 1))]
    if free.size:
        start = _phase_start(vis, wgt, x, a1, a2, n_ant, ref, degphase)
        start[~active] = 0.0
        starts.append(start)
    for coef in starts:
        coef = coef.copy()
        for _ in range(_MAX_ITER):
            step = inverse @ _right_side(wgt * residual(coef), phase_basis, p, q, free.size, -1.0)
            coef[free] += step.reshape(free.size, -1)
            if np.abs(step).max(initial=0.0) < _TOLERANCE:
                break
        cost = (wgt * residual(coef) ** 2).sum()
        if cost < best_cost:
            best, best_cost = coef, cost
    coef_p[:] = best
    scale = best_cost / max(n_obs - inverse.shape[0], 1)
    cov = (scale * inverse).reshape(free.size, degphase + 1, free.size, degphase + 1)
    block = cov[np.arange(free.size), :, np.arange(free.size), :]
    var_p[free] = np.einsum("ck,akl,cl->ac", phase_basis, block, phase_basis)
    return coef_a, coef_p, var_a, var_p


def _fit_block(
    num: np.ndarray,
    den: np.ndarray,
    *,
    x: np.ndarray,
    fit: np.ndarray,
    ant1: np.ndarray,
    ant2: np.ndarray,
    n_ant: int,
    degamp: int,
    degphase: int,
    visnorm: bool,
    solnorm: bool,
    minblperant: int,
    refants: list[int],
    names: list[str],
) -> tuple[np.ndarray, ...]:
    """num, den (S, baseline, channel, R) -> B, error, SNR, flag, n_vis (S, A, C, R),
    amplitude and phase coefficients (S, A, R, K), refant names (S,)."""
    cross = ant1 != ant2
    num, den = num[:, cross], den[:, cross]
    a1, a2 = ant1[cross], ant2[cross]
    n_sol, _, n_chan, n_rec = num.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        vis = np.where(den > 0, num / den, 0.0)
    wgt = np.where(fit[None, None, :, None] & (den > 0) & (np.abs(vis) > 0), den, 0.0)
    if visnorm:  # each baseline divided by its weighted mean over the fitted channels
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = (np.where(wgt > 0, num, 0.0).sum(axis=2)
                    / np.where(wgt > 0, den, 0.0).sum(axis=2))  # fmt: skip
        norm = np.where(np.isfinite(norm), norm, 0.0)[:, :, None, :]
        good = np.abs(norm) > 0
        vis = np.where(good, vis / np.where(good, norm, 1.0), 0.0)
        wgt = np.where(good, wgt, 0.0)

    n_coef = max(degamp, degphase) + 1
    shape = (n_sol, n_ant, n_chan, n_rec)
    bandpass = np.ones(shape, dtype=complex)
    error = np.zeros(shape)
    n_vis = np.zeros(shape, dtype=np.int64)
    flag = np.ones(shape, dtype=bool)
    coef_amp = np.zeros((n_sol, n_ant, n_rec, degamp + 1))
    coef_phase = np.zeros((n_sol, n_ant, n_rec, degphase + 1))
    refant = np.full(n_sol, "", dtype=f"<U{max(len(a) for a in names)}")
    for s in range(n_sol):
        active = np.zeros((n_ant, n_rec), dtype=bool)
        for r in range(n_rec):
            keep = _usable(wgt[s, :, :, r], a1, a2, n_ant, minblperant, n_coef)
            wgt[s, ~keep, :, r] = 0.0
            active[a1[keep], r] = active[a2[keep], r] = True
        both = [a for a in refants if active[a].all()]
        for r in range(n_rec):
            if not active[:, r].any():
                continue
            ref = both[0] if both else next(a for a in refants if active[a, r])
            if r == 0 or not refant[s]:
                refant[s] = names[ref]
            w = wgt[s, :, :, r]
            ca, cp, var_a, var_p = _fit_one(vis[s, :, :, r], w, x, a1, a2, n_ant,
                                            active[:, r], ref, degamp, degphase)  # fmt: skip
            amp_basis, phase_basis = chebyshev_basis(x, degamp), chebyshev_basis(x, degphase)
            counts = np.zeros((n_ant, n_chan), dtype=np.int64)
            np.add.at(counts, a1, w > 0)
            np.add.at(counts, a2, w > 0)
            if solnorm:  # linear mean |B| = 1 and mean phasor real, over the fitted channels
                for ant in np.flatnonzero(active[:, r]):
                    chans = counts[ant] > 0
                    mean_amp = np.exp(amp_basis[chans] @ ca[ant]).mean()
                    mean_phasor = np.exp(1j * (phase_basis[chans] @ cp[ant])).mean()
                    ca[ant, 0] -= 2.0 * np.log(mean_amp)
                    cp[ant, 0] -= 2.0 * np.angle(mean_phasor)
            b = np.exp(ca @ amp_basis.T + 1j * (cp @ phase_basis.T))  # (A, C)
            on = active[:, r]
            bandpass[s, on, :, r] = b[on]
            error[s, on, :, r] = np.abs(b[on]) * np.sqrt(var_a[on] + var_p[on])
            flag[s, on, :, r] = False
            n_vis[s, :, :, r] = counts
            coef_amp[s, on, r] = ca[on]
            coef_phase[s, on, r] = cp[on]
    snr = signal_to_noise(bandpass, error)
    snr = np.where(flag, 0.0, snr)
    return bandpass, error, snr, flag, n_vis, coef_amp, coef_phase, refant


# ---- the public solver ----


def _check_parameters(degamp, degphase, maskcenter, maskedge, minblperant, where: str) -> None:
    for name, value in (("degamp", degamp), ("degphase", degphase),
                        ("maskcenter", maskcenter)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise BpolyError(f"{where}: {name} must be an integer >= 0, got {value!r}")
    if isinstance(maskedge, bool) or not 0 <= float(maskedge) < 50:
        raise BpolyError(f"{where}: maskedge is a percentage per edge in [0, 50), got {maskedge!r}")
    if isinstance(minblperant, bool) or int(minblperant) < 1:
        raise BpolyError(f"{where}: minblperant must be >= 1, got {minblperant!r}")


def solve(
    partitions: Mapping[str, xr.Dataset],
    *,
    field: str | Sequence[str] = "",
    intent: str = "",
    spw: Sequence[int] | None = None,
    solint: str | float = "inf",
    combine: str | Sequence[str] = "scan",
    refant: str | Sequence[str] = "",
    degamp: int = 3,
    degphase: int = 3,
    maskcenter: int = 0,
    maskedge: float = 5.0,
    visnorm: bool = False,
    solnorm: bool = False,
    minblperant: int = 4,
    gaintable: Sequence[applycal.SolutionTable] = (),
    interp: str | Sequence[str] = "linear",
    spwmap: Sequence[Mapping[int, int] | None] | None = None,
    group: str = schema.GROUP_BASE,
    model_group: str | None = schema.GROUP_MODEL,
    antenna_positions: xr.DataArray | None = None,
    ms_name: str = "",
    casa_maskedge: bool = False,
) -> SolutionTable:
    """Solve polynomial (BPOLY) bandpasses over the selected visibility partitions, lazily.

    Parameters
    ----------
    partitions : mapping of name -> visibility partition Dataset
        All partitions of the EB (the selection picks what is solved).
    field, intent, spw
        Selection as in :func:`radflow.cal.gain.solve`.
    solint, combine
        Solution intervals as gaincal (default: one solution over all scans). With ``'spw'`` in
        combine one polynomial spans all selected spws (CASA's "aggregate" BPOLY) and is stored
        under each of them.
    refant : str or list
        Antenna names in order of preference; empty: store order.
    degamp, degphase : int
        Polynomial degrees of ``ln|B|`` and of the phase (>= 0).
    maskcenter : int
        Channels left out at the centre of each spw.
    maskedge : float
        Percent of the channels left out at each edge of each spw (default 5, see the module
        docstring; ``casa_maskedge=True`` picks exactly CASA's channels).
    visnorm : bool
        Divide each baseline by its mean before fitting.
    solnorm : bool
        Normalise each antenna's polynomial to mean ``|B|`` = 1 and zero mean phase.
    minblperant : int
        Antennas with fewer baselines of data are flagged.
    gaintable, interp, spwmap
        Prior tables applied on the fly (as gaincal).
    group, model_group
        Data group solved and the model group (absent: a 1 Jy point source).
    antenna_positions : DataArray (antenna_name, cartesian_pos_label), optional
        Ranks the fallback refants by distance.
    ms_name : str
        The source MS (caltable keyword MSName).
    casa_maskedge : bool
        Mask exactly CASA's edge channels (module docstring).

    Returns
    -------
    dict of spw id -> solution Dataset (module docstring), dask-backed; times known.

    Raises
    ------
    BpolyError (a GaincalError)
        Bad degrees or masks, fewer fitted channels than coefficients, nothing selected, an
        unknown refant, partitions with different baselines.
    """
    where = "bandpass (BPOLY)"
    _check_parameters(degamp, degphase, maskcenter, maskedge, minblperant, where)
    degamp, degphase, maskcenter = int(degamp), int(degphase), int(maskcenter)
    interval_s = parse_solint(solint)
    axes = parse_combine(combine)
    try:
        prep = prepare(
            partitions, field=field, intent=intent, spw=spw, refant=refant,
            antenna_positions=antenna_positions, gaintable=gaintable, interp=interp,
            spwmap=spwmap, group=group, model_group=model_group, per_channel=True, where=where,
        )  # fmt: skip
    except BpolyError:
        raise
    except GaincalError as exc:
        raise BpolyError(str(exc)) from None
    spw_of = {
        name: int(ds.attrs[schema.ATTR_PARTITION_INFO][schema.PI_SPW_ID])
        for name, ds in prep.selected.items()
    }
    intervals = solution_intervals(prep.selected, interval_s, axes)
    spw_ids = sorted({s for iv in intervals for s in iv.spws})
    groups = [spw_ids] if "spw" in axes else [[s] for s in spw_ids]
    n_coef = max(degamp, degphase) + 1
    n_ant, n_rec = len(prep.names), len(prep.receptors)
    out: SolutionTable = {}
    for spws in groups:
        freqs = {s: spw_frequencies(prep, s) for s in spws}
        masks = {s: fit_channels(freqs[s].size, maskedge, maskcenter, casa_maskedge) for s in spws}
        n_fit = np.unique(np.concatenate([freqs[s][masks[s]] for s in spws])).size
        if n_fit < n_coef:
            raise BpolyError(
                f"{where}: spw {spws} has {n_fit} channel(s) to fit after maskedge={maskedge} "
                f"and maskcenter={maskcenter}, fewer than the {n_coef} coefficients of "
                f"degamp={degamp}/degphase={degphase}"
            )
        all_freq = np.concatenate([freqs[s] for s in spws])
        low, high = float(all_freq.min()), float(all_freq.max())
        mine = [iv for iv in intervals if set(iv.spws) & set(spws)]
        nums, dens = [], []
        for s in spws:  # per spw (their channels differ), then side by side
            part = replace(prep, data={n: d for n, d in prep.data.items() if spw_of[n] == s})
            num, den = part.interval_arrays(mine)
            nums.append(num)
            dens.append(den)
        num_arr = da.concatenate(nums, axis=2).rechunk(-1)
        den_arr = da.concatenate(dens, axis=2).rechunk(-1)
        kwargs = dict(
            x=normalised_x(all_freq, low, high),
            fit=np.concatenate([masks[s] for s in spws]),
            ant1=prep.ant1,
            ant2=prep.ant2,
            n_ant=n_ant,
            degamp=degamp,
            degphase=degphase,
            visnorm=bool(visnorm),
            solnorm=bool(solnorm),
            minblperant=int(minblperant),
            refants=prep.refant_order,
            names=prep.names,
        )
        results = dask.delayed(_fit_block, nout=8, pure=True)(num_arr, den_arr, **kwargs)
        n_sol, n_chan = len(mine), all_freq.size
        shape = (n_sol, n_ant, n_chan, n_rec)
        specs = [
            (shape, complex), (shape, float), (shape, float), (shape, bool), (shape, np.int64),
            ((n_sol, n_ant, n_rec, degamp + 1), float),
            ((n_sol, n_ant, n_rec, degphase + 1), float),
            ((n_sol,), prep.name_dtype),
        ]  # fmt: skip
        solved = [da.from_delayed(r, s, dtype=t) for r, (s, t) in zip(results, specs, strict=True)]
        start = 0
        for s in spws:
            stop = start + freqs[s].size
            sol = solution_dataset(
                [v[:, :, start:stop] for v in solved[:5]] + [solved[7]], mine, prep, s,
                cal_type=schema.CAL_TYPE_BPOLY, receptors=prep.receptors,
                frequencies=freqs[s],
                attrs={
                    schema.ATTR_SOLINT: str(solint),
                    schema.ATTR_COMBINE: ",".join(sorted(axes)),
                    schema.ATTR_CALMODE: "ap",
                    schema.ATTR_REFANT: ",".join(parse_refant(refant)),
                    schema.ATTR_MS_NAME: ms_name,
                    schema.BPOLY_ATTR_FREQUENCY_LOW: low,
                    schema.BPOLY_ATTR_FREQUENCY_HIGH: high,
                    schema.BPOLY_ATTR_SPWS: [int(k) for k in spws],
                    schema.BPOLY_ATTR_DEGAMP: degamp,
                    schema.BPOLY_ATTR_DEGPHASE: degphase,
                    schema.BPOLY_ATTR_MASKCENTER: maskcenter,
                    schema.BPOLY_ATTR_MASKEDGE: float(maskedge),
                    schema.BPOLY_ATTR_VISNORM: bool(visnorm),
                    schema.BPOLY_ATTR_SOLNORM: bool(solnorm),
                },
            )  # fmt: skip
            out[s] = _with_fit(sol, solved[5], solved[6], masks[s], degamp, degphase)
            start = stop
    return out


def _with_fit(
    sol: xr.Dataset, amp: da.Array, phase: da.Array, mask: np.ndarray, degamp: int, degphase: int
) -> xr.Dataset:
    """The solution table plus the polynomial coefficients and the fit mask."""
    dims = (schema.TIME, schema.ANTENNA_NAME, schema.RECEPTOR)
    basis = "Chebyshev, P_0 = 1/2, P_k = T_k; x from the bpoly_frequency_low/high attrs"
    return sol.assign(
        {
            schema.BPOLY_AMPLITUDE_COEFFICIENTS: (
                (*dims, schema.BPOLY_AMPLITUDE_COEFFICIENT),
                amp,
                {"description": f"coefficients of ln|B| ({basis})"},
            ),
            schema.BPOLY_PHASE_COEFFICIENTS: (
                (*dims, schema.BPOLY_PHASE_COEFFICIENT),
                phase,
                {"description": f"coefficients of arg B ({basis})", schema.ATTR_UNITS: "rad"},
            ),
            schema.BPOLY_FIT_MASK: (
                (schema.FREQUENCY,),
                mask,
                {"description": "True: the channel may enter the fit (maskedge/maskcenter)"},
            ),
        }
    ).assign_coords(
        {
            schema.BPOLY_AMPLITUDE_COEFFICIENT: np.arange(degamp + 1),
            schema.BPOLY_PHASE_COEFFICIENT: np.arange(degphase + 1),
        }
    )
