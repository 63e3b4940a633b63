"""baseline: subtract a fitted spectral baseline from single-dish spectra (CASA ``sdbaseline``).

Every spectrum (one time, antenna and polarization) is fitted independently along frequency.
The abscissa is the channel index ``i = 0 .. N-1``; fits are unweighted linear least squares
over the *fit mask* (True = channel used). Values are in the data's units (K or Jy);
coefficients multiply the dimensionless basis functions below, so they are in data units too.

Basis functions (``blfunc``)
----------------------------
``poly``
    ``u**k``, ``u = i / (N-1)``, ``k = 0 .. order``.
``chebyshev``
    ``T_k(v)``, ``v = 2 i / (N-1) - 1``, ``k = 0 .. order``.
``cspline``
    A C2-continuous cubic spline of ``npiece`` pieces. The ``npiece - 1`` inner knots split the
    channels of the (current) fit mask into ``npiece`` groups of equal count: knot ``j`` is the
    channel ``m[(j * n) // npiece]`` of the sorted fit-mask channels ``m`` (``n`` of them). The fit
    uses the truncated-power basis ``1, u, u**2, u**3, (u - t_j)_+**3``; coefficients are reported
    as CASA does, 4 per piece (piece-major): piece ``p`` is ``c0 + c1 u + c2 u**2 + c3 u**3`` on
    ``[t_p, t_(p+1))`` with ``u`` as for ``poly`` (CASA uses the channel index: a deviation).
    With clipping the knots are recomputed from the mask of each iteration, so the final knots
    follow from ``mask_used`` by the rule above.
``sinusoid``
    A constant (wave number 0) and ``sin(2 pi k i / N)``, ``cos(2 pi k i / N)`` for wave numbers
    ``k`` (period ``N / k`` channels). The wave numbers are ``addwn`` (plus, with ``applyfft``,
    those selected by the FFT) minus ``rejwn``. Coefficients are ordered by increasing wave number,
    ``a0`` then ``s_k, c_k`` pairs. ``addwn``/``rejwn`` take ints or CASA strings: ``'a-b'``
    (inclusive), ``'>a'``, ``'>=a'``, ``'<a'``, ``'<=a'``, comma separated. FFT selection
    (``fftmethod='fft'`` only): channels outside the mask are filled by linear interpolation
    from the masked ones, the mean is removed, and ``A_k = |rfft|`` for ``k = 1 .. N//2``; a
    float ``fftthresh`` (or ``'3.0'``, ``'3.0sigma'``) selects ``A_k > mean(A) + fftthresh *
    std(A)`` (as CASA's "sigma" mode), ``'topK'`` the K largest ``A_k``.

Clipping
--------
Fit; residual ``r`` over the current mask; channels with ``|r - mean(r)| > clipthresh * std(r)``
(mean and std over the current mask) leave the mask; refit. At most ``clipniter`` times, stopping
early when nothing new is clipped. ``nclipped`` counts all channels clipped. The reported ``rms``
is the standard deviation (``ddof=0``) of the final residual about its mean over the final mask.

Masks
-----
Channels flagged in FLAG, and NaN/inf samples, are never used. ``linefree`` (CASA
``maskmode='list'`` / spw channel ranges) lists inclusive ``[start, end]`` channel ranges to fit
(empty or None = all). ``edge=(left, right)`` drops channels at each end; unlike CASA (where
``edge`` only affects ``maskmode='auto'``) it is honoured in both mask modes. ``maskmode='auto'``
additionally removes the channels :func:`find_lines` reports as lines.

Line finder (:func:`find_lines`)
--------------------------------
1. A crude trend is removed: a Chebyshev polynomial of order ``min(5, n // 8)`` fitted to the
   searched, not-yet-line channels (iterated with step 2 until the line set stops changing, at
   most 5 times), because a sloping or curved baseline would otherwise read as a line.
2. The noise ``sigma1`` of the detrended single-channel spectrum is the "mad80" estimate over the
   searched non-line channels: ``d = |x - median(x)|``; the mean of the smallest 80 %
   (``ceil(0.8 n)``) of the ``d`` values, divided by ``E[|X| ; |X| in its lowest 80 %] =
   2 (phi(0) - phi(q)) / 0.8 = 0.5586`` for unit Gaussian X (``q = 1.2816``, the 90 % point),
   so that it estimates the Gaussian sigma while ignoring the 20 % most deviant channels.
3. For binnings ``b = 1, 4, 16, ...`` with ``b <= avg_limit``, the detrended spectrum is averaged
   in consecutive non-overlapping boxes of ``b`` channels (over the searched channels only; a box
   with ``c`` such channels has noise ``sigma1 / sqrt(c)``). A box is a line candidate when
   ``|mean| > thresh * sigma1 / sqrt(c)``; equivalently the box *sum* exceeds
   ``thresh * sqrt(c) * sigma1``, the DESIGN note's ``thresh*sqrt(b)*mad80``. All channels of a
   candidate box are candidates; runs of candidates at least ``minwidth`` original channels long
   are lines. The line set is the union over binnings; nothing is widened.

The step :func:`subtract` runs the kernels lazily, one dask task per chunk of spectra; inside a
task the spectra are fitted and searched together (batched normal equations, vectorised line
finder), which gives the same results as one spectrum at a time to float64 round-off.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
from numpy.polynomial import chebyshev as _cheb
from scipy.special import ndtri

from radflow import schema
from radflow.step import (
    add_data_group,
    describe_partition,
    get_data_group,
    register_step,
    require_units,
)

WaveNumbers = int | str | Iterable[int | str]

# mad80 normalisation: E[|X| restricted to its lowest 80 %] for a unit Gaussian X.
_Q80 = float(ndtri(0.9))
_MAD80_NORM = 2.0 * (1.0 - math.exp(-0.5 * _Q80**2)) / math.sqrt(2.0 * math.pi) / 0.8
_DETREND_MAX_ORDER = 5
_FINDER_MAX_ITER = 5


@dataclass
class BaselineFit:
    """The result of fitting one spectrum.

    Attributes
    ----------
    model : np.ndarray
        float64 (N,), the fitted baseline in the spectrum's units (NaN when the fit failed).
    coefficients : np.ndarray
        float64 1-D, in the spectrum's units (see the module docstring for their meaning).
    rms : float
        Standard deviation of the final residual about its mean over the final mask (data units);
        NaN when the fit failed.
    nclipped : int
        Number of channels removed by clipping.
    mask_used : np.ndarray
        bool (N,), the channels of the final fit.
    wave_numbers : tuple of int
        Sinusoid only: the wave numbers fitted, in the order of the coefficients.
    """

    model: np.ndarray
    coefficients: np.ndarray
    rms: float
    nclipped: int
    mask_used: np.ndarray
    wave_numbers: tuple[int, ...] = field(default=())


# ---- parameter helpers ----


def _parse_wave_numbers(spec: WaveNumbers | None, n_chan: int, name: str) -> list[int]:
    """Wave numbers from ints or CASA strings ('0-3', '>5', '<=2', '1,4'); max N//2."""
    kmax = n_chan // 2
    if spec is None:
        return []
    items: list[Any] = [spec] if isinstance(spec, int | str | np.integer) else list(spec)
    out: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"{name}: wave number {item!r} is not an int")
        if isinstance(item, int | np.integer):
            out.add(int(item))
            continue
        if not isinstance(item, str):
            raise ValueError(f"{name}: wave number {item!r} is not an int or a string")
        for token in (t.strip() for t in item.split(",")):
            if not token:
                continue
            if m := re.fullmatch(r"(\d+)\s*[-~]\s*(\d+)", token):
                out.update(range(int(m[1]), int(m[2]) + 1))
            elif m := re.fullmatch(r"(>=|<=|>|<)\s*(\d+)", token):
                k = int(m[2])
                lo, hi = {
                    ">": (k + 1, kmax),
                    ">=": (k, kmax),
                    "<": (0, k - 1),
                    "<=": (0, k),
                }[m[1]]
                out.update(range(lo, hi + 1))
            elif token.isdigit():
                out.add(int(token))
            else:
                raise ValueError(f"{name}: cannot parse wave number {token!r}")
    bad = sorted(k for k in out if k < 0 or k > kmax)
    if bad:
        raise ValueError(f"{name}: wave numbers {bad} outside 0..{kmax} (N//2 for N={n_chan})")
    return sorted(out)


def _parse_fftthresh(fftthresh: float | str) -> tuple[str, float]:
    """('sigma', multiplier) or ('top', K)."""
    if isinstance(fftthresh, int | float | np.floating) and not isinstance(fftthresh, bool):
        value = float(fftthresh)
        if not value > 0:
            raise ValueError(f"fftthresh must be > 0, got {fftthresh!r}")
        return "sigma", value
    if isinstance(fftthresh, str):
        text = fftthresh.strip().lower()
        if m := re.fullmatch(r"top\s*(\d+)", text):
            if int(m[1]) < 1:
                raise ValueError(f"fftthresh {fftthresh!r}: topK needs K >= 1")
            return "top", float(m[1])
        if m := re.fullmatch(r"([0-9.eE+-]+)\s*(sigma)?", text):
            try:
                value = float(m[1])
            except ValueError:
                value = float("nan")
            if value > 0:
                return "sigma", value
    raise ValueError(f"fftthresh must be a float > 0, 'Nsigma' or 'topK', got {fftthresh!r}")


def _check_fit_params(blfunc: str, order: int, npiece: int, clipthresh: float, clipniter: int):
    if blfunc not in schema.BL_FUNCTIONS:
        raise ValueError(f"blfunc must be one of {list(schema.BL_FUNCTIONS)}, got {blfunc!r}")
    if not isinstance(order, int | np.integer) or order < 0:
        raise ValueError(f"order must be an int >= 0, got {order!r}")
    if not isinstance(npiece, int | np.integer) or npiece < 1:
        raise ValueError(f"npiece must be an int >= 1, got {npiece!r}")
    if not (isinstance(clipthresh, int | float | np.number) and clipthresh > 0):
        raise ValueError(f"clipthresh must be > 0, got {clipthresh!r}")
    if not isinstance(clipniter, int | np.integer) or clipniter < 0:
        raise ValueError(f"clipniter must be an int >= 0, got {clipniter!r}")


# ---- basis functions ----


def _u(n_chan: int) -> np.ndarray:
    return np.arange(n_chan, dtype=float) / max(n_chan - 1, 1)


def _design(blfunc: str, n_chan: int, order: int, waves: Sequence[int]) -> np.ndarray:
    """(N, P) design shared by every spectrum: Chebyshev polynomials (the basis ``poly`` is
    solved in too, see :func:`_poly_from_chebyshev`) or sinusoids."""
    if blfunc in (schema.BL_POLY, schema.BL_CHEBYSHEV):
        return _cheb.chebvander(2.0 * _u(n_chan) - 1.0, order)
    phase = 2.0 * np.pi * np.arange(n_chan, dtype=float) / n_chan
    cols = []
    for k in waves:
        if k == 0:
            cols.append(np.ones(n_chan))
        else:
            cols += [np.sin(k * phase), np.cos(k * phase)]
    return np.stack(cols, axis=1) if cols else np.zeros((n_chan, 0))


def _n_params(blfunc: str, order: int, npiece: int, waves: Sequence[int]) -> int:
    if blfunc in (schema.BL_POLY, schema.BL_CHEBYSHEV):
        return order + 1
    if blfunc == schema.BL_CSPLINE:
        return npiece + 3
    return sum(1 if k == 0 else 2 for k in waves)


def _n_reported(blfunc: str, order: int, npiece: int, waves: Sequence[int]) -> int:
    return 4 * npiece if blfunc == schema.BL_CSPLINE else _n_params(blfunc, order, npiece, waves)


def _fft_wave_numbers(y: np.ndarray, mask: np.ndarray, fftthresh: float | str) -> list[int]:
    """Wave numbers 1..N//2 whose FFT amplitude of the masked spectrum passes `fftthresh`."""
    mode, value = _parse_fftthresh(fftthresh)
    n_chan = y.size
    chans = np.flatnonzero(mask)
    if chans.size < 2 or n_chan < 2:
        return []
    filled = np.interp(np.arange(n_chan), chans, y[chans])
    amp = np.abs(np.fft.rfft(filled - filled.mean()))[1 : n_chan // 2 + 1]
    if amp.size == 0:
        return []
    if mode == "top":
        order = np.argsort(-amp, kind="stable")[: int(value)]
        return sorted(int(k) + 1 for k in order)
    limit = amp.mean() + value * amp.std()
    return [int(k) + 1 for k in np.flatnonzero(amp > limit)]


# ---- batched least squares: many spectra at once ----

# Eigenvalues of the (unit-diagonal) Gram matrix below this fraction of the largest are treated
# as zero: rank-deficient fits get the minimum-norm solution, as lstsq would give.
_GRAM_RCOND = 1e-13


def _lstsq_rows(design: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per row s, the coefficients minimising ``sum_c w[s,c] (y[s,c] - design[(s,)c] @ coef)^2``.

    `design` is (C, P), shared by all rows, or (S, C, P); `y` (S, C); `w` (S, C) 0/1 weights.
    The normal equations are solved for all rows at once (one BLAS product and one batched
    eigendecomposition of P x P matrices instead of an SVD per spectrum), after scaling to a
    unit diagonal; one step of iterative refinement then recovers the accuracy the squared
    condition number of the normal equations would cost.
    """
    shared = design.ndim == 2

    def project(values: np.ndarray) -> np.ndarray:  # design^T (w * values), per row
        if shared:
            return (w * values) @ design
        return np.einsum("sc,sci->si", w * values, design)

    def evaluate(coef: np.ndarray) -> np.ndarray:  # design @ coef, per row
        if shared:
            return coef @ design.T
        return np.einsum("sci,si->sc", design, coef)

    n_par = design.shape[-1]
    if shared:
        outer = (design[:, :, None] * design[:, None, :]).reshape(design.shape[0], -1)
        gram = (w @ outer).reshape(-1, n_par, n_par)
    else:
        gram = np.einsum("sc,sci,scj->sij", w, design, design)
    scale = np.sqrt(np.einsum("sii->si", gram))
    scale[scale == 0] = 1.0
    evals, evecs = np.linalg.eigh(gram / scale[:, :, None] / scale[:, None, :])
    keep = evals > _GRAM_RCOND * evals[:, -1:]
    inverse = np.where(keep, 1.0 / np.where(keep, evals, 1.0), 0.0)

    def solve(rhs: np.ndarray) -> np.ndarray:
        x = np.einsum("sji,sj->si", evecs, rhs / scale)
        return np.einsum("sij,sj->si", evecs, inverse * x) / scale

    coef = solve(project(y))
    return coef + solve(project(y - evaluate(coef)))


def _masked_mean_std(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, mean and standard deviation (ddof=0) of `values` over `mask`."""
    n = np.maximum(mask.sum(axis=1), 1)
    mean = np.where(mask, values, 0.0).sum(axis=1) / n
    dev = np.where(mask, values - mean[:, None], 0.0)
    return mean, np.sqrt((dev * dev).sum(axis=1) / n)


def _poly_from_chebyshev(order: int) -> np.ndarray:
    """(order+1, order+1) matrix taking Chebyshev coefficients in ``v = 2u - 1`` to power
    coefficients in ``u``: poly fits are solved in the Chebyshev basis (same span, far better
    conditioned normal equations) and reported in CASA's power basis."""
    out = np.zeros((order + 1, order + 1))
    for k in range(order + 1):
        power = _cheb.Chebyshev.basis(k, domain=[0.0, 1.0]).convert(
            kind=np.polynomial.Polynomial, domain=[-1.0, 1.0], window=[-1.0, 1.0]
        )
        out[: power.coef.size, k] = power.coef
    return out


def _cspline_knots_rows(mask: np.ndarray, npiece: int) -> np.ndarray:
    """(S, npiece-1) inner knots (in u) per row: knot j is the channel ``m[(j * n) // npiece]``
    of the row's sorted mask channels ``m`` (``n`` of them; see the module docstring)."""
    n = mask.sum(axis=1)
    cum = np.cumsum(mask, axis=1)
    targets = (np.arange(1, npiece)[None, :] * n[:, None]) // npiece  # index into the channels
    chans = np.stack([np.argmax(cum > t[:, None], axis=1) for t in targets.T], axis=1)
    return chans.reshape(mask.shape[0], npiece - 1).astype(float) / max(mask.shape[1] - 1, 1)


def _cspline_design_rows(n_chan: int, knots: np.ndarray) -> np.ndarray:
    """(S, C, 4 + K) truncated-power design per row of `knots` (S, K)."""
    u = _u(n_chan)
    powers = np.broadcast_to(np.stack([u**0, u, u**2, u**3], axis=1), (knots.shape[0], n_chan, 4))
    truncated = np.clip(u[None, :, None] - knots[:, None, :], 0.0, None) ** 3
    return np.concatenate([powers, truncated], axis=2)


def _cspline_pieces_rows(coef: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Rows of truncated-power coefficients -> 4 polynomial coefficients (in u) per piece."""
    jumps = coef[:, 4:, None] * np.stack(
        [-(knots**3), 3 * knots**2, -3 * knots, np.ones_like(knots)], axis=2
    )  # (S, K, 4): b (u - t)^3 = b (u^3 - 3 t u^2 + 3 t^2 u - t^3)
    pieces = coef[:, None, :4] + np.concatenate(
        [np.zeros_like(jumps[:, :1]), np.cumsum(jumps, axis=1)], axis=1
    )
    return pieces.reshape(coef.shape[0], -1)


@dataclass
class _RowFits:
    """Fits of S spectra of one basis (arrays over rows, see :class:`BaselineFit`)."""

    model: np.ndarray  # (S, C)
    coefficients: np.ndarray  # (S, n_reported)
    rms: np.ndarray  # (S,)
    nclipped: np.ndarray  # (S,)
    mask_used: np.ndarray  # (S, C)


def _fit_rows(
    y0: np.ndarray,
    mask: np.ndarray,
    *,
    blfunc: str,
    order: int,
    npiece: int,
    waves: Sequence[int],
    clipthresh: float,
    clipniter: int,
) -> _RowFits:
    """Fit one basis to every row of `y0` (S, C; finite) over `mask` (S, C), with clipping.

    Rows with fewer usable channels than parameters come back NaN (model, coefficients, rms).
    """
    n_rows, n_chan = y0.shape
    n_par = _n_params(blfunc, order, npiece, waves)
    n_rep = _n_reported(blfunc, order, npiece, waves)
    current = mask.copy()
    model = np.full((n_rows, n_chan), np.nan)
    coef = np.full((n_rows, n_par), np.nan)
    knots = np.zeros((n_rows, max(npiece - 1, 0)))
    nclipped = np.zeros(n_rows, dtype=np.int64)
    active = (current.sum(axis=1) >= n_par) if n_par > 0 else np.zeros(n_rows, dtype=bool)
    fitted = active.copy()
    if blfunc != schema.BL_CSPLINE:
        shared = _design(blfunc, n_chan, order, waves)

    for iteration in range(clipniter + 1):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        w = current[rows]
        if blfunc == schema.BL_CSPLINE:
            knots[rows] = _cspline_knots_rows(w, npiece)
            design = _cspline_design_rows(n_chan, knots[rows])
        else:
            design = shared
        c = _lstsq_rows(design, y0[rows], w.astype(np.float64))
        m = c @ design.T if design.ndim == 2 else np.einsum("sci,si->sc", design, c)
        coef[rows], model[rows] = c, m
        if iteration == clipniter:
            break
        resid = y0[rows] - m
        mean, std = _masked_mean_std(resid, w)
        clip = w & (np.abs(resid - mean[:, None]) > clipthresh * std[:, None])
        n_new = clip.sum(axis=1)
        go = (n_new > 0) & (w.sum(axis=1) - n_new >= n_par)
        # rows with nothing to clip, or too few channels left after clipping, keep their fit
        current[rows[go]] &= ~clip[go]
        nclipped[rows[go]] += n_new[go]
        active[rows[~go]] = False

    _, rms = _masked_mean_std(y0 - np.nan_to_num(model), current)
    rms[~fitted] = np.nan
    if blfunc == schema.BL_POLY:
        coef = coef @ _poly_from_chebyshev(order).T
    elif blfunc == schema.BL_CSPLINE:
        coef = _cspline_pieces_rows(coef, knots)
    return _RowFits(
        model=model,
        coefficients=coef.reshape(n_rows, n_rep),
        rms=rms,
        nclipped=np.where(fitted, nclipped, 0),
        mask_used=current,
    )


def _sinusoid_waves(
    y0: np.ndarray, mask: np.ndarray, addwn: WaveNumbers, rejwn: WaveNumbers, applyfft: bool,
    fftthresh: float | str,
) -> list[tuple[int, ...]]:  # fmt: skip
    """Per row, the wave numbers to fit: addwn (+ FFT-selected) minus rejwn."""
    n_chan = y0.shape[1]
    wanted = set(_parse_wave_numbers(addwn, n_chan, "addwn"))
    rejected = set(_parse_wave_numbers(rejwn, n_chan, "rejwn"))
    out = []
    for row, keep in zip(y0, mask, strict=True):
        waves = wanted | set(_fft_wave_numbers(row, keep, fftthresh)) if applyfft else wanted
        out.append(tuple(sorted(waves - rejected)))
    return out


def fit_spectrum(
    spectrum: np.ndarray,
    mask: np.ndarray,
    *,
    blfunc: str = schema.BL_POLY,
    order: int = 5,
    npiece: int = 2,
    addwn: WaveNumbers = (0,),
    rejwn: WaveNumbers = (),
    applyfft: bool = True,
    fftthresh: float | str = 3.0,
    clipthresh: float = 3.0,
    clipniter: int = 0,
) -> BaselineFit:
    """Fit a baseline to one spectrum by least squares over `mask`, with optional clipping.

    The step fits many spectra at once with the same kernel; this is its one-spectrum form.

    Parameters
    ----------
    spectrum : np.ndarray
        (N,) values in K or Jy (any real dtype; computed in float64). NaN/inf are never used.
    mask : np.ndarray
        (N,) bool, True = channel may be used in the fit.
    blfunc, order, npiece, addwn, rejwn, applyfft, fftthresh, clipthresh, clipniter
        As CASA ``sdbaseline``; see the module docstring. ``applyfft`` only affects ``sinusoid``.

    Returns
    -------
    BaselineFit
        When fewer usable channels than parameters remain (e.g. a fully flagged spectrum) the
        model, coefficients and rms are NaN; no exception is raised.

    Raises
    ------
    ValueError
        For invalid parameters (unknown blfunc, order < 0, npiece < 1, clipthresh <= 0, ...).
    """
    _check_fit_params(blfunc, order, npiece, clipthresh, clipniter)
    y = np.asarray(spectrum, dtype=np.float64)
    if y.ndim != 1 or np.shape(mask) != y.shape:
        raise ValueError(f"spectrum and mask must be 1-D of equal length, got {y.shape}")
    finite = np.isfinite(y)
    current = (np.asarray(mask, dtype=bool) & finite)[None]
    y0 = np.where(finite, y, 0.0)[None]
    waves: tuple[int, ...] = ()
    if blfunc == schema.BL_SINUSOID:
        if applyfft:
            _parse_fftthresh(fftthresh)
        (waves,) = _sinusoid_waves(y0, current, addwn, rejwn, applyfft, fftthresh)
    fits = _fit_rows(
        y0, current, blfunc=blfunc, order=int(order), npiece=int(npiece), waves=waves,
        clipthresh=float(clipthresh), clipniter=int(clipniter),
    )  # fmt: skip
    return BaselineFit(
        model=fits.model[0],
        coefficients=fits.coefficients[0],
        rms=float(fits.rms[0]),
        nclipped=int(fits.nclipped[0]),
        mask_used=fits.mask_used[0],
        wave_numbers=waves,
    )


# ---- line finder ----


def _mad80_rows(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """mad80 of every row of `values` (S, C) over `mask` (S, C); NaN for an empty row."""
    n = mask.sum(axis=1)
    ordered = np.sort(np.where(mask, values, np.inf), axis=1)
    lo = np.take_along_axis(ordered, np.maximum((n - 1) // 2, 0)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(ordered, np.maximum(n // 2, 0)[:, None], axis=1)[:, 0]
    median = 0.5 * (lo + hi)
    dev = np.sort(np.where(mask, np.abs(values - median[:, None]), np.inf), axis=1)
    keep = np.maximum(1, np.ceil(0.8 * n).astype(np.int64))
    running = np.cumsum(np.where(np.isfinite(dev), dev, 0.0), axis=1)
    total = np.take_along_axis(running, (keep - 1)[:, None], axis=1)[:, 0]
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, total / keep / _MAD80_NORM, np.nan)


def mad80(values: np.ndarray) -> float:
    """Robust Gaussian sigma from the 80 % least deviant values (see the module docstring).

    Returns NaN for an empty input. Units: those of `values`.
    """
    x = np.asarray(values, dtype=np.float64).reshape(1, -1)
    return float(_mad80_rows(x, np.ones(x.shape, dtype=bool))[0])


def _edge_mask(n_chan: int, edge: Sequence[int]) -> np.ndarray:
    left, right = (int(e) for e in edge)
    keep = np.zeros(n_chan, dtype=bool)
    keep[left : n_chan - right] = True
    return keep


def _detect_rows(resid: np.ndarray, search: np.ndarray, sigma: np.ndarray, b: int) -> np.ndarray:
    """Per row and channel, the significance of its box of b channels: box mean / (sigma /
    sqrt(count)), over the searched channels."""
    vals = np.where(search, resid, 0.0)
    if b == 1:
        return vals / sigma[:, None]
    n_rows, n_chan = resid.shape
    n_box = -(-n_chan // b)
    if n_box * b != n_chan:
        pad = ((0, 0), (0, n_box * b - n_chan))
        vals, search = np.pad(vals, pad), np.pad(search, pad)
    sums = vals.reshape(n_rows, n_box, b).sum(axis=2)
    counts = search.reshape(n_rows, n_box, b).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(counts > 0, sums / np.sqrt(counts) / sigma[:, None], 0.0)
    return np.repeat(snr, b, axis=1)[:, :n_chan]


def _runs_at_least_rows(candidate: np.ndarray, minwidth: int) -> np.ndarray:
    """Keep only the runs of True at least `minwidth` long, per row.

    A channel is in such a run exactly when some window of `minwidth` consecutive channels
    around it is all True: two running sums (windows that are full, then channels that one
    covers) find them without visiting the runs one by one.
    """
    n_rows, n_chan = candidate.shape
    width = int(minwidth)
    if width <= 1:
        return candidate.copy()
    if width > n_chan:
        return np.zeros_like(candidate)
    count = np.zeros((n_rows, n_chan + 1), dtype=np.int32)
    np.cumsum(candidate, axis=1, dtype=np.int32, out=count[:, 1:])
    full = (count[:, width:] - count[:, :-width]) == width  # the window starting here is full
    starts = np.zeros((n_rows, n_chan - width + 2), dtype=np.int32)
    np.cumsum(full, axis=1, dtype=np.int32, out=starts[:, 1:])
    channel = np.arange(n_chan)
    last = np.minimum(channel, n_chan - width) + 1  # windows starting in [channel-width+1, channel]
    first = np.maximum(channel - width + 1, 0)
    return (starts[:, last] - starts[:, first]) > 0


def _find_lines_rows(
    y0: np.ndarray, search: np.ndarray, *, thresh: float, avg_limit: int, minwidth: int
) -> np.ndarray:
    """Line channels of every row of `y0` (S, C; finite) searched over `search` (S, C)."""
    n_rows, n_chan = y0.shape
    vander = _cheb.chebvander(2.0 * _u(n_chan) - 1.0, _DETREND_MAX_ORDER)
    binnings = [4**p for p in range(int(math.log(avg_limit, 4) + 1e-9) + 1)]
    lines = np.zeros((n_rows, n_chan), dtype=bool)
    active = np.ones(n_rows, dtype=bool)
    for _ in range(_FINDER_MAX_ITER):
        base = search & ~lines
        n = base.sum(axis=1)
        active &= n >= 3
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        resid = np.empty((rows.size, n_chan))
        degree = np.minimum(_DETREND_MAX_ORDER, n[rows] // 8)
        for deg in np.unique(degree):  # the detrending order follows the channel count
            pick = np.flatnonzero(degree == deg)
            design = np.ascontiguousarray(vander[:, : deg + 1])
            sub = rows[pick]
            coef = _lstsq_rows(design, y0[sub], base[sub].astype(np.float64))
            resid[pick] = y0[sub] - coef @ design.T
        sigma = _mad80_rows(resid, base[rows])
        good = sigma > 0
        active[rows[~good]] = False
        rows, resid, sigma = rows[good], resid[good], sigma[good]
        found = np.zeros((rows.size, n_chan), dtype=bool)
        for b in binnings:
            detect = np.abs(_detect_rows(resid, search[rows], sigma, b)) > thresh
            found |= _runs_at_least_rows(search[rows] & detect, minwidth)
        changed = (found != lines[rows]).any(axis=1)
        lines[rows[changed]] = found[changed]
        active[rows[~changed]] = False
    return lines


def _check_finder_params(thresh: float, avg_limit: int, minwidth: int, edge: Any, n_chan: int):
    if not (isinstance(thresh, int | float | np.number) and thresh > 0):
        raise ValueError(f"thresh must be > 0, got {thresh!r}")
    if not isinstance(avg_limit, int | np.integer) or avg_limit < 1:
        raise ValueError(f"avg_limit must be an int >= 1, got {avg_limit!r}")
    if not isinstance(minwidth, int | np.integer) or minwidth < 1:
        raise ValueError(f"minwidth must be an int >= 1, got {minwidth!r}")
    try:
        left, right = (int(e) for e in edge)
    except (TypeError, ValueError):
        raise ValueError(f"edge must be (left, right) channel counts, got {edge!r}") from None
    if left < 0 or right < 0 or left + right >= n_chan:
        raise ValueError(f"edge {tuple(edge)!r} must be >= 0 and leave channels of N={n_chan}")


def find_lines(
    spectrum: np.ndarray,
    mask: np.ndarray,
    *,
    thresh: float = 5.0,
    avg_limit: int = 4,
    minwidth: int = 4,
    edge: Sequence[int] = (0, 0),
) -> np.ndarray:
    """Find spectral-line channels (CASA ``maskmode='auto'``); see the module docstring.

    The step searches many spectra at once with the same kernel; this is its one-spectrum form.

    Parameters
    ----------
    spectrum : np.ndarray
        (N,) values in K or Jy; NaN/inf channels are ignored.
    mask : np.ndarray
        (N,) bool, True = channel may be searched (unflagged, inside the fit ranges).
    thresh : float
        Detection threshold in units of the (binned) noise sigma.
    avg_limit : int
        Largest binning (channels); binnings 1, 4, 16, ... up to it are tried.
    minwidth : int
        Minimum line width in original channels.
    edge : (int, int)
        Channels at the (left, right) ends that are never searched.

    Returns
    -------
    np.ndarray
        (N,) bool, True = line channel (only ever inside the searched channels).
    """
    y = np.asarray(spectrum, dtype=np.float64)
    n_chan = y.size
    _check_finder_params(thresh, avg_limit, minwidth, edge, n_chan)
    finite = np.isfinite(y)
    search = np.asarray(mask, dtype=bool) & finite & _edge_mask(n_chan, edge)
    return _find_lines_rows(
        np.where(finite, y, 0.0)[None], search[None],
        thresh=thresh, avg_limit=avg_limit, minwidth=minwidth,
    )[0]  # fmt: skip


# ---- the lazy step ----


def _range_mask(linefree: Any, n_chan: int, where: str) -> tuple[np.ndarray, list[list[int]]]:
    """bool (N,) from inclusive [start, end] channel ranges (None/empty = all channels), and the
    ranges as a list of [start, end] pairs."""
    if linefree is None or len(linefree) == 0:
        return np.ones(n_chan, dtype=bool), []
    ranges = list(linefree)
    if all(isinstance(r, int | np.integer) for r in ranges) and len(ranges) == 2:
        ranges = [ranges]  # a single [start, end] pair
    keep = np.zeros(n_chan, dtype=bool)
    pairs = []
    for r in ranges:
        try:
            start, end = (int(c) for c in r)
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}: linefree range {r!r} is not a [start, end] channel pair"
            ) from None
        if not 0 <= start <= end <= n_chan - 1:
            raise ValueError(
                f"{where}: linefree range {[start, end]} outside channels 0..{n_chan - 1} "
                "(or start > end)"
            )
        keep[start : end + 1] = True
        pairs.append([start, end])
    return keep, pairs


def coefficient_labels(
    blfunc: str, order: int, npiece: int, waves: Sequence[int] = ()
) -> list[str]:
    """Names of the reported coefficients: ``p0..`` (poly), ``c0..`` (chebyshev),
    ``p<piece>_<k>`` (cspline), ``a0``, ``s<k>``, ``c<k>`` (sinusoid)."""
    if blfunc == schema.BL_POLY:
        return [f"p{k}" for k in range(order + 1)]
    if blfunc == schema.BL_CHEBYSHEV:
        return [f"c{k}" for k in range(order + 1)]
    if blfunc == schema.BL_CSPLINE:
        return [f"p{p}_{k}" for p in range(npiece) for k in range(4)]
    labels = []
    for k in waves:
        labels += ["a0"] if k == 0 else [f"s{k}", f"c{k}"]
    return labels


# Spectra fitted together: bounds the kernels' float64 temporaries (about 20 arrays of
# rows x channels) whatever the chunk size.
_ROWS_PER_BATCH = 256


def _fit_block(
    data: np.ndarray,
    flag: np.ndarray,
    *,
    base_mask: np.ndarray,
    edge: tuple[int, int],
    auto: bool,
    finder: dict[str, Any],
    fit_kwargs: dict[str, Any],
    slots: dict[int, int],
    n_coef: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit every spectrum of a block (frequency last); returns model, mask, coef, rms, nclip."""
    lead, n_chan = data.shape[:-1], data.shape[-1]
    y = np.asarray(data, dtype=np.float64).reshape(-1, n_chan)
    finite = np.isfinite(y)
    y0 = np.where(finite, y, 0.0)
    usable = ~np.asarray(flag, dtype=bool).reshape(-1, n_chan) & finite & base_mask
    n_rows = y.shape[0]
    model = np.full((n_rows, n_chan), np.nan)
    used = np.zeros((n_rows, n_chan), dtype=bool)
    coef = np.full((n_rows, n_coef), np.nan)
    rms = np.full(n_rows, np.nan)
    nclip = np.zeros(n_rows, dtype=np.int32)
    kwargs = {k: fit_kwargs[k] for k in ("blfunc", "order", "npiece", "clipthresh", "clipniter")}
    for first in range(0, n_rows, _ROWS_PER_BATCH):
        rows = np.arange(first, min(first + _ROWS_PER_BATCH, n_rows))
        mask = usable[rows]
        if auto:
            search = mask & _edge_mask(n_chan, edge)
            mask = mask & ~_find_lines_rows(y0[rows], search, **finder)
        if fit_kwargs["blfunc"] == schema.BL_SINUSOID:
            waves = _sinusoid_waves(
                y0[rows], mask, fit_kwargs["addwn"], fit_kwargs["rejwn"],
                fit_kwargs["applyfft"], fit_kwargs["fftthresh"],
            )  # fmt: skip
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, w in enumerate(waves):
                groups.setdefault(w, []).append(i)
        else:
            groups = {(): list(range(rows.size))}
        for w, members in groups.items():
            pick = np.asarray(members)
            fits = _fit_rows(y0[rows[pick]], mask[pick], waves=w, **kwargs)
            target = rows[pick]
            model[target], used[target] = fits.model, fits.mask_used
            rms[target], nclip[target] = fits.rms, fits.nclipped
            if fit_kwargs["blfunc"] == schema.BL_SINUSOID:
                where = [slots[k] + j for k in w for j in range(1 if k == 0 else 2)]
                coef[np.ix_(target, where)] = fits.coefficients
            else:
                coef[target, : fits.coefficients.shape[1]] = fits.coefficients
    return (
        model.reshape(data.shape),
        used.reshape(data.shape),
        coef.reshape(*lead, n_coef),
        rms.reshape(lead),
        nclip.reshape(lead),
    )


@register_step("baseline")
def subtract(
    ds: xr.Dataset,
    *,
    group: str = schema.GROUP_CORRECTED,
    output: str = schema.GROUP_BASELINED,
    blfunc: str = schema.BL_POLY,
    order: int = 5,
    npiece: int = 2,
    addwn: WaveNumbers = (0,),
    rejwn: WaveNumbers = (),
    applyfft: bool = True,
    fftthresh: float | str = 3.0,
    clipthresh: float = 3.0,
    clipniter: int = 0,
    maskmode: str = schema.BL_MASKMODE_LIST,
    linefree: Sequence[Sequence[int]] | None = None,
    thresh: float = 5.0,
    avg_limit: int = 4,
    minwidth: int = 4,
    edge: Sequence[int] = (0, 0),
) -> tuple[xr.Dataset, xr.Dataset]:
    """Fit and subtract a spectral baseline from every spectrum of a single-dish partition.

    Parameters
    ----------
    ds : xr.Dataset
        One spectrum partition, dims (time, antenna_name, frequency, polarization), dask-backed;
        nothing is computed.
    group : str
        Input data group; units must be ``"K"`` or ``"Jy"``.
    output : str
        New data group: data minus baseline (same units). Its flags are the input flags OR
        non-finite samples OR whole spectra whose fit failed (too few usable channels); its
        weights are shared with `group`.
    blfunc, order, npiece, addwn, rejwn, applyfft, fftthresh, clipthresh, clipniter
        The fit (CASA ``sdbaseline``; module docstring). ``fftmethod`` is always ``'fft'``.
    maskmode : str
        ``'list'`` (fit `linefree` minus `edge`) or ``'auto'`` (also drop :func:`find_lines`).
    linefree : list of [start, end], optional
        Inclusive channel ranges to fit; None/empty = all channels.
    thresh, avg_limit, minwidth
        The line finder's (``maskmode='auto'``).
    edge : (int, int)
        Channels dropped at the (left, right) ends of every spectrum.

    Returns
    -------
    (xr.Dataset, xr.Dataset)
        The partition with group `output` added, and the per-spectrum results (type
        ``schema.TYPE_BASELINE_TABLE``): ``COEFFICIENTS`` (time, antenna_name, polarization,
        coefficient; data units, NaN-padded; sinusoid: one slot per possible wave number, NaN
        where not fitted), ``RMS`` (data units), ``N_CLIPPED``, ``FIT_MASK`` (time,
        antenna_name, frequency, polarization) and the parameters and partition_info as attrs.

    Raises
    ------
    ValueError
        On invalid parameters, naming the parameter and the partition.
    UnitsError
        If `group` is not in K or Jy.
    """
    src = get_data_group(ds, group)
    require_units(src, (schema.UNITS_KELVIN, schema.UNITS_JANSKY), "baseline")
    where = f"baseline: partition {describe_partition(ds)}"
    n_chan = int(ds.sizes[schema.FREQUENCY])
    try:
        _check_fit_params(blfunc, order, npiece, clipthresh, clipniter)
        _check_finder_params(thresh, avg_limit, minwidth, edge, n_chan)
        if maskmode not in (schema.BL_MASKMODE_LIST, schema.BL_MASKMODE_AUTO):
            raise ValueError(f"maskmode must be 'list' or 'auto', got {maskmode!r}")
        waves = [0]
        if blfunc == schema.BL_SINUSOID:
            candidates = set(_parse_wave_numbers(addwn, n_chan, "addwn"))
            rejected = set(_parse_wave_numbers(rejwn, n_chan, "rejwn"))
            if applyfft:
                _parse_fftthresh(fftthresh)
                candidates |= set(range(1, n_chan // 2 + 1))
            waves = sorted(candidates - rejected)
            if not waves:
                raise ValueError("addwn/rejwn: no wave numbers left to fit")
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    edge_t = (int(edge[0]), int(edge[1]))
    range_mask, ranges = _range_mask(linefree, n_chan, where)
    base_mask = range_mask & _edge_mask(n_chan, edge_t)
    labels = coefficient_labels(blfunc, order, npiece, waves)
    slots, position = {}, 0  # wave number -> index of its a0 / s_k coefficient slot
    for k in waves:
        slots[k] = position
        position += 1 if k == 0 else 2
    fit_kwargs = dict(
        blfunc=blfunc,
        order=int(order),
        npiece=int(npiece),
        addwn=addwn,
        rejwn=rejwn,
        applyfft=applyfft,
        fftthresh=fftthresh,
        clipthresh=float(clipthresh),
        clipniter=int(clipniter),
    )
    finder = dict(thresh=float(thresh), avg_limit=int(avg_limit), minwidth=int(minwidth))

    freq = schema.FREQUENCY
    # Non-index coordinates are dropped before rechunking (DataArray.chunk would turn in-memory
    # coordinates into dask arrays, and comparing those later computes); put back on the table.
    data = src.data.reset_coords(drop=True)
    flag = src.flag.reset_coords(drop=True)
    data = data.chunk({freq: -1}) if data.chunks is not None else data
    flag = flag.chunk({freq: -1}) if flag.chunks is not None else flag
    model, used, coef, rms, nclip = xr.apply_ufunc(
        _fit_block,
        data,
        flag,
        input_core_dims=[[freq], [freq]],
        output_core_dims=[[freq], [freq], [schema.COEFFICIENT], [], []],
        dask="parallelized",
        output_dtypes=[np.float64, bool, np.float64, np.float64, np.int32],
        dask_gufunc_kwargs={"output_sizes": {schema.COEFFICIENT: len(labels)}},
        kwargs=dict(
            base_mask=base_mask,
            edge=edge_t,
            auto=maskmode == schema.BL_MASKMODE_AUTO,
            finder=finder,
            fit_kwargs=fit_kwargs,
            slots=slots,
            n_coef=len(labels),
        ),
    )
    dims = src.data.dims
    model = model.transpose(*dims)
    used = used.transpose(*dims)
    failed = np.isnan(rms)
    out = add_data_group(
        ds,
        output,
        data=(src.data - model).astype(src.data.dtype),
        flag=src.flag | ~np.isfinite(src.data) | failed,
        weight=None,
        units=src.units,
        description=f"data group {group!r} minus a {blfunc} baseline (step baseline)",
        from_group=group,
    )
    spectrum_dims = (schema.TIME, schema.ANTENNA_NAME, schema.POLARIZATION)
    attrs = {
        schema.ATTR_TYPE: schema.TYPE_BASELINE_TABLE,
        schema.ATTR_UNITS: src.units,
        schema.BL_ATTR_DATA_GROUP: group,
        schema.BL_ATTR_BLFUNC: blfunc,
        schema.BL_ATTR_ORDER: int(order),
        schema.BL_ATTR_NPIECE: int(npiece),
        schema.BL_ATTR_ADDWN: addwn if isinstance(addwn, int | str) else list(addwn),
        schema.BL_ATTR_REJWN: rejwn if isinstance(rejwn, int | str) else list(rejwn),
        schema.BL_ATTR_APPLYFFT: bool(applyfft),
        schema.BL_ATTR_FFTTHRESH: fftthresh,
        schema.BL_ATTR_CLIPTHRESH: float(clipthresh),
        schema.BL_ATTR_CLIPNITER: int(clipniter),
        schema.BL_ATTR_MASKMODE: maskmode,
        schema.BL_ATTR_LINEFREE: ranges,
        schema.BL_ATTR_THRESH: float(thresh),
        schema.BL_ATTR_AVG_LIMIT: int(avg_limit),
        schema.BL_ATTR_MINWIDTH: int(minwidth),
        schema.BL_ATTR_EDGE: list(edge_t),
        schema.ATTR_PARTITION_INFO: copy.deepcopy(ds.attrs.get(schema.ATTR_PARTITION_INFO) or {}),
    }
    table = xr.Dataset(
        {
            schema.BL_COEFFICIENTS: coef.transpose(*spectrum_dims, schema.COEFFICIENT).assign_attrs(
                {schema.ATTR_UNITS: src.units}
            ),
            schema.BL_RMS: rms.transpose(*spectrum_dims).assign_attrs(
                {schema.ATTR_UNITS: src.units}
            ),
            schema.BL_N_CLIPPED: nclip.transpose(*spectrum_dims),
            schema.BL_FIT_MASK: used,
        },
        coords={
            schema.COEFFICIENT: labels,
            **{
                name: coord
                for name, coord in src.data.coords.items()
                if name not in src.data.dims and coord.variable.chunks is None
            },
        },
        attrs=attrs,
    )
    return out, table
