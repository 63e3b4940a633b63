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
   ``n`` searched, not-yet-line channels (iterated with steps 2 and 3 until the line set stops
   changing, at most 5 times; a round with ``n < 3`` or ``sigma1 = 0`` keeps the lines so far),
   because a sloping or curved baseline would otherwise read as a line. It is fitted to the
   spectrum minus the value of its first searched channel: the residual changes by round-off
   only, but a constant spectrum's is exactly zero (no lines).
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

The step :func:`subtract` runs the kernels lazily, one dask task per chunk of spectra. Inside a
task the spectra are fitted in batches (batched normal equations), which gives the same results
as one spectrum at a time to float64 round-off; the line finder is compiled (numba), searches
one spectrum at a time and releases the GIL, so a worker's threads search chunks in parallel.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import xarray as xr
from numpy.polynomial import chebyshev as _cheb
from scipy.special import ndtri

from radflow import schema
from radflow.lazy import Output, apply_blocks
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
_DETREND_MAX_ORDER = 5  # _residual_projection is written for its 6 basis functions
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


@functools.cache  # ~0.5 ms each time, and called for every batch
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
    out.flags.writeable = False  # shared by the cache
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

    _, rms = _masked_mean_std(y0 - model, current)  # NaN rows: set NaN below anyway
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
#
# The finder is compiled with numba and searches one spectrum at a time: its working arrays (a
# few of N values) stay in cache, where a vectorised numpy form streams ~20 temporaries of
# spectra x channels through memory. The kernels release the GIL, so dask threads search
# different chunks in parallel.

# Lets LLVM vectorise the sums over channels (reordering them): they then differ from a
# sequential sum by round-off only.
_SUM_FASTMATH = {"reassoc", "contract"}


@numba.njit(cache=True, nogil=True, fastmath=_SUM_FASTMATH)
def _weighted_gram(basis: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(P, P) ``basis diag(w) basis^T`` for `basis` (P, N) and 0/1 weights `w` (N,)."""
    n_par, n_chan = basis.shape
    gram = np.empty((n_par, n_par))
    for i in range(n_par):
        for j in range(i + 1):
            acc = 0.0
            for c in range(n_chan):
                acc += w[c] * basis[i, c] * basis[j, c]
            gram[i, j] = acc
            gram[j, i] = acc
    return gram


@numba.njit(cache=True, nogil=True, fastmath=_SUM_FASTMATH)
def _residual_projection(
    y: np.ndarray, w: np.ndarray, basis: np.ndarray, coef: np.ndarray, resid: np.ndarray
) -> np.ndarray:
    """``resid = y - coef @ basis`` (N,) and, returned, ``basis @ (w * resid)`` (6,), for the
    six rows of `basis` (6, N) and `coef` (6,); `w` (N,) 0/1 weights.

    The two products of a refinement step in one pass over the channels, with the six sums in
    registers (hence the fixed count, the detrending's largest): ~3x faster than a pass per
    product and basis function.
    """
    t0, t1, t2, t3, t4, t5 = basis[0], basis[1], basis[2], basis[3], basis[4], basis[5]
    c0, c1, c2, c3, c4, c5 = coef[0], coef[1], coef[2], coef[3], coef[4], coef[5]
    s0 = s1 = s2 = s3 = s4 = s5 = 0.0
    for c in range(y.size):
        r = y[c] - (c0 * t0[c] + c1 * t1[c] + c2 * t2[c] + c3 * t3[c] + c4 * t4[c] + c5 * t5[c])
        resid[c] = r
        r *= w[c]
        s0 += r * t0[c]
        s1 += r * t1[c]
        s2 += r * t2[c]
        s3 += r * t3[c]
        s4 += r * t4[c]
        s5 += r * t5[c]
    return np.array((s0, s1, s2, s3, s4, s5))


@numba.njit(cache=True, nogil=True)
def _masked_gram(basis: np.ndarray, full_gram: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(P, P) ``basis diag(w) basis^T`` for `basis` (P, N) and 0/1 weights `w` (N,), given
    `full_gram` (>= P, >= P), the same over all channels."""
    n_par, n_chan = basis.shape
    excluded = np.flatnonzero(w == 0.0)
    if 2 * excluded.size > n_chan:
        return _weighted_gram(basis, w)
    # Usually only edges, flags and lines are excluded: taking them off the full-band sums
    # saves most of the work.
    gram = full_gram[:n_par, :n_par].copy()
    for c in excluded:
        for i in range(n_par):
            for j in range(n_par):
                gram[i, j] -= basis[i, c] * basis[j, c]
    return gram


@numba.njit(cache=True, nogil=True)
def _detrend(
    y: np.ndarray,
    w: np.ndarray,
    basis: np.ndarray,
    full_gram: np.ndarray,
    n_par: int,
    resid: np.ndarray,
) -> None:
    """``resid = y - fit`` (N,), the fit being the least-squares combination of the first
    `n_par` rows of `basis` (6, N) over the channels with weight `w` = 1 (`full_gram` as
    :func:`_masked_gram`); units those of `y`.

    As :func:`_lstsq_rows` (same scaling, eigenvalue cut and refinement step, so that
    ill-conditioned masks get the same minimum-norm fit): the normal equations scaled to a unit
    diagonal are solved by eigendecomposition, then once more for the residual's projection.
    """
    gram = _masked_gram(basis[:n_par], full_gram, w)
    scale = np.ones(n_par)
    for k in range(n_par):
        if gram[k, k] > 0.0:
            scale[k] = math.sqrt(gram[k, k])
    for i in range(n_par):
        for j in range(n_par):
            gram[i, j] = gram[i, j] / scale[i] / scale[j]
    evals, evecs = np.linalg.eigh(gram)
    inverse = np.zeros(n_par)
    for k in range(n_par):
        if evals[k] > _GRAM_RCOND * evals[-1]:
            inverse[k] = 1.0 / evals[k]
    coef = np.zeros(basis.shape[0])  # the rows beyond n_par keep 0
    projection = _residual_projection(y, w, basis, coef, resid)
    for _ in range(2):  # the solve, then one step of iterative refinement
        x = np.dot(projection[:n_par] / scale, evecs)
        coef[:n_par] += np.dot(evecs, inverse * x) / scale
        projection = _residual_projection(y, w, basis, coef, resid)


@numba.njit(cache=True, nogil=True)
def _kth_smallest(values: np.ndarray, k: int) -> float:
    """The `k`-th smallest (0-based) of `values` (n,), NaN-free; `values` is left alone.

    Quickselect in O(n), ~1.6x as fast as numba's np.partition: each pass moves the values
    below / above a pivot to the two ends of a second buffer by stores to computed places
    rather than by branches (which random data mispredicts). Its indices are unsigned because
    numba then skips the negative-index wraparound, which made the inner loop ~1.7x slower.
    """
    src = values.copy()
    dst = np.empty_like(src)
    lo, hi = 0, src.size
    one = np.uint64(1)
    # Median-of-three pivots take ~3 passes per halving; a structured input that defeats them
    # (quadratic time) falls back to a sort.
    for _ in range(4 * int(math.log2(src.size + 1)) + 8):
        if hi - lo <= 1:
            return src[lo]
        a, b, c = src[lo + (hi - lo) // 4], src[(lo + hi) // 2], src[hi - 1 - (hi - lo) // 4]
        pivot = max(min(a, b), min(max(a, b), c))
        part, out = src[lo:hi], dst[lo:hi]
        last = np.uint64(hi - lo) - one
        n_less = np.uint64(0)
        n_more = np.uint64(0)
        for i in range(np.uint64(hi - lo)):
            v = part[i]
            # both stores land on free places: only the one the counts then keep is used
            out[n_less] = v
            out[last - n_more] = v
            n_less += np.uint64(v < pivot)
            n_more += np.uint64(v > pivot)
        if k < lo + np.int64(n_less):
            hi = lo + np.int64(n_less)
        elif k >= hi - np.int64(n_more):
            lo = hi - np.int64(n_more)
        else:
            return pivot
        src, dst = dst, src
    return np.sort(src[lo:hi])[k - lo]


@numba.njit(cache=True, nogil=True)
def _mad80(values: np.ndarray, mask: np.ndarray) -> float:
    """mad80 of `values` (N,) over `mask` (N,), in the units of `values`; NaN when the mask is
    empty. Two selections stand in for sorts: the median's middle values, and the
    ``ceil(0.8 n)``-th smallest deviation t; the deviations below t plus as many t as make up
    the count are the ``ceil(0.8 n)`` smallest."""
    x = values[mask]
    n = x.size
    if n == 0:
        return np.nan
    lower = _kth_smallest(x, (n - 1) // 2)
    upper = lower
    if n % 2 == 0:  # the next value up, unless `lower` occurs again
        n_upto = 0
        above = np.inf
        for v in x:
            n_upto += v <= lower
            above = min(above, v if v > lower else np.inf)
        if n_upto < n // 2 + 1:
            upper = above
    median = 0.5 * (lower + upper)
    dev = np.empty(n)
    for i in range(n):
        dev[i] = abs(x[i] - median)
    keep = max(1, math.ceil(0.8 * n))
    t = _kth_smallest(dev, keep - 1)
    total = 0.0
    n_below = 0
    for d in dev:
        total += d if d < t else 0.0
        n_below += d < t
    return (total + (keep - n_below) * t) / keep / _MAD80_NORM


def mad80(values: np.ndarray) -> float:
    """Robust Gaussian sigma from the 80 % least deviant values (see the module docstring).

    Returns NaN for an empty input or one containing NaN. Units: those of `values`.
    """
    x = np.ascontiguousarray(values, dtype=np.float64).ravel()
    if np.isnan(x).any():
        return math.nan
    return float(_mad80(x, np.ones(x.size, dtype=bool)))


def _edge_mask(n_chan: int, edge: Sequence[int]) -> np.ndarray:
    left, right = (int(e) for e in edge)
    keep = np.zeros(n_chan, dtype=bool)
    keep[left : n_chan - right] = True
    return keep


@numba.njit(cache=True, nogil=True)
def _box_candidates(
    resid: np.ndarray, search: np.ndarray, sigma: float, b: int, thresh: float, out: np.ndarray
) -> None:
    """``out`` (N,) = searched channels of the boxes of `b` channels whose mean over the searched
    channels exceeds `thresh` times its noise ``sigma / sqrt(count)`` (`sigma` in the units of
    `resid`)."""
    n_chan = resid.size
    if b == 1:  # the general loop below, without its per-box overhead
        for c in range(n_chan):
            out[c] = search[c] and abs(resid[c] / sigma) > thresh
        return
    for start in range(0, n_chan, b):
        stop = min(start + b, n_chan)
        total = 0.0
        count = 0
        for c in range(start, stop):
            total += resid[c] if search[c] else 0.0
            count += search[c]
        hit = count > 0 and abs(total / math.sqrt(count) / sigma) > thresh
        for c in range(start, stop):
            out[c] = hit and search[c]


@numba.njit(cache=True, nogil=True)
def _mark_runs(candidate: np.ndarray, minwidth: int, out: np.ndarray) -> None:
    """Set `out` (N,) True on every run of True in `candidate` (N,) at least `minwidth`
    channels long (and leave it alone elsewhere)."""
    n_chan = candidate.size
    start = -1
    for c in range(n_chan + 1):
        if c < n_chan and candidate[c]:
            if start < 0:
                start = c
        elif start >= 0:
            if c - start >= minwidth:
                out[start:c] = True
            start = -1


@numba.njit(cache=True, nogil=True)
def _find_lines_spectrum(
    y: np.ndarray,
    search: np.ndarray,
    basis: np.ndarray,
    full_gram: np.ndarray,
    thresh: float,
    binnings: np.ndarray,
    minwidth: int,
    lines: np.ndarray,
) -> None:
    """Line channels of one spectrum into `lines` (N,): `y` (N,) finite, `search` (N,) the
    searched channels, `basis` (6, N) the Chebyshev polynomials ``T_k`` on the channels,
    `full_gram` ``basis basis^T``, `binnings` the box widths (channels)."""
    n_chan = y.size
    lines[:] = False
    searched = np.flatnonzero(search)
    if searched.size < 3:
        return
    # Subtracting one channel's value changes the fit's residual by round-off only, but makes a
    # constant spectrum's exactly zero (sigma 0, no lines) instead of round-off noise that could
    # pass the threshold.
    shifted = y - y[searched[0]]
    base = np.empty(n_chan, dtype=np.bool_)
    w = np.empty(n_chan)
    resid = np.empty(n_chan)
    candidate = np.empty(n_chan, dtype=np.bool_)
    found = np.empty(n_chan, dtype=np.bool_)
    for _ in range(_FINDER_MAX_ITER):
        n = 0
        for c in range(n_chan):
            base[c] = search[c] and not lines[c]
            w[c] = 1.0 if base[c] else 0.0
            n += base[c]
        if n < 3:
            return
        _detrend(shifted, w, basis, full_gram, min(_DETREND_MAX_ORDER, n // 8) + 1, resid)
        sigma = _mad80(resid, base)
        if not sigma > 0.0:
            return
        found[:] = False
        for b in binnings:
            _box_candidates(resid, search, sigma, b, thresh, candidate)
            _mark_runs(candidate, minwidth, found)
        if (found == lines).all():
            return
        lines[:] = found


@numba.njit(cache=True, nogil=True)
def _find_lines_kernel(
    y0: np.ndarray,
    search: np.ndarray,
    basis: np.ndarray,
    full_gram: np.ndarray,
    thresh: float,
    binnings: np.ndarray,
    minwidth: int,
) -> np.ndarray:
    """(S, N) line channels of every row of `y0` (S, N) over `search` (S, N); `basis`,
    `full_gram` and `binnings` as :func:`_find_lines_spectrum`."""
    lines = np.zeros(y0.shape, dtype=np.bool_)
    for s in range(y0.shape[0]):
        _find_lines_spectrum(
            y0[s], search[s], basis, full_gram, thresh, binnings, minwidth, lines[s]
        )
    return lines


@functools.cache  # ~0.1 ms, for every batch of spectra
def _detrend_basis(n_chan: int) -> tuple[np.ndarray, np.ndarray]:
    """The detrending's Chebyshev polynomials ``T_0 .. T_5`` on the channels (6, N) and
    their Gram matrix over all channels (6, 6); read-only."""
    basis = np.ascontiguousarray(_cheb.chebvander(2.0 * _u(n_chan) - 1.0, _DETREND_MAX_ORDER).T)
    full_gram = basis @ basis.T
    basis.flags.writeable = full_gram.flags.writeable = False  # shared by the cache
    return basis, full_gram


def _find_lines_rows(
    y0: np.ndarray, search: np.ndarray, *, thresh: float, avg_limit: int, minwidth: int
) -> np.ndarray:
    """Line channels of every row of `y0` (S, C; finite, data units) searched over `search`
    (S, C); `thresh`, `avg_limit`, `minwidth` as :func:`find_lines`."""
    basis, full_gram = _detrend_basis(y0.shape[1])
    binnings = 4 ** np.arange(int(math.log(avg_limit, 4) + 1e-9) + 1, dtype=np.int64)
    return _find_lines_kernel(
        np.ascontiguousarray(y0, dtype=np.float64),
        np.ascontiguousarray(search, dtype=bool),
        basis,
        full_gram,
        float(thresh),
        binnings,
        int(minwidth),
    )


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


# Spectra fitted together: bounds the fits' float64 temporaries (about 20 arrays of rows x
# channels) whatever the chunk size. Few rows keep them in a core's L2 cache (32 x 4096 x 8 B
# = 1 MiB; 256 rows took twice as long), but a sinusoid fit also builds a channels x P**2
# product per call (P up to hundreds of parameters) that many rows amortise.
_ROWS_PER_BATCH = 32
_ROWS_PER_BATCH_SINUSOID = 256


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit every spectrum of a block (frequency last).

    Returns the baseline-subtracted data (dtype of `data`; NaN where the fit failed), its
    flags (`flag`, non-finite data and failed fits), the fit mask, the coefficients, rms and
    number of clipped channels: the subtraction and flags are made here, in the task, rather
    than as further graph layers over the (float64) model.
    """
    lead, n_chan = data.shape[:-1], data.shape[-1]
    spectra = np.asarray(data).reshape(-1, n_chan)
    flagged = np.asarray(flag, dtype=bool).reshape(-1, n_chan)
    search_mask = _edge_mask(n_chan, edge)
    n_rows = spectra.shape[0]
    baselined = np.empty(spectra.shape, dtype=spectra.dtype)
    flag_out = np.empty(spectra.shape, dtype=bool)
    used = np.zeros((n_rows, n_chan), dtype=bool)
    coef = np.full((n_rows, n_coef), np.nan)
    rms = np.full(n_rows, np.nan)
    nclip = np.zeros(n_rows, dtype=np.int32)
    kwargs = {k: fit_kwargs[k] for k in ("blfunc", "order", "npiece", "clipthresh", "clipniter")}
    sinusoid = fit_kwargs["blfunc"] == schema.BL_SINUSOID
    batch = _ROWS_PER_BATCH_SINUSOID if sinusoid else _ROWS_PER_BATCH
    for first in range(0, n_rows, batch):
        rows = slice(first, first + batch)
        y = np.asarray(spectra[rows], dtype=np.float64)
        finite = np.isfinite(y)
        y0 = np.where(finite, y, 0.0)
        mask = ~flagged[rows] & finite & base_mask
        if auto:
            mask &= ~_find_lines_rows(y0, mask & search_mask, **finder)
        groups: list[tuple[tuple[int, ...], Any]] = [((), slice(None))]  # (waves, rows of batch)
        if sinusoid:
            waves = _sinusoid_waves(
                y0, mask, fit_kwargs["addwn"], fit_kwargs["rejwn"],
                fit_kwargs["applyfft"], fit_kwargs["fftthresh"],
            )  # fmt: skip
            members: dict[tuple[int, ...], list[int]] = {}
            for i, w in enumerate(waves):
                members.setdefault(w, []).append(i)
            groups = [(w, np.asarray(m)) for w, m in members.items()]
        for w, pick in groups:
            fits = _fit_rows(y0[pick], mask[pick], waves=w, **kwargs)
            # views of the batch's rows: assigning through them fills the outputs
            baselined[rows][pick] = y[pick] - fits.model
            used[rows][pick] = fits.mask_used
            rms[rows][pick], nclip[rows][pick] = fits.rms, fits.nclipped
            if sinusoid:
                where = [slots[k] + j for k in w for j in range(1 if k == 0 else 2)]
                coef[rows][np.ix_(pick, where)] = fits.coefficients
            else:
                coef[rows][pick, : fits.coefficients.shape[1]] = fits.coefficients
        flag_out[rows] = flagged[rows] | ~finite | np.isnan(rms[rows])[:, None]
    return (
        baselined.reshape(data.shape),
        flag_out.reshape(data.shape),
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

    dims = src.data.dims
    spectrum_dims = tuple(d for d in dims if d != schema.FREQUENCY)
    units = {schema.ATTR_TYPE: schema.TYPE_QUANTA, schema.ATTR_UNITS: src.units}
    baselined, flag_out, used, coef, rms, nclip = apply_blocks(
        _fit_block,
        src.data,
        src.flag,
        loop_dims=spectrum_dims,
        core_dims=[[schema.FREQUENCY]] * 2,
        outputs=[
            Output(dims, src.data.dtype),
            Output(dims, bool),
            Output(dims, bool),
            Output((*spectrum_dims, schema.COEFFICIENT), np.float64, units),
            Output(spectrum_dims, np.float64, units),
            Output(spectrum_dims, np.int32),
        ],
        sizes={schema.COEFFICIENT: len(labels)},
        kwargs=dict(
            base_mask=base_mask,
            edge=edge_t,
            auto=maskmode == schema.BL_MASKMODE_AUTO,
            finder=finder,
            fit_kwargs=fit_kwargs,
            slots=slots,
            n_coef=len(labels),
        ),
        name="baseline",
    )
    out = add_data_group(
        ds,
        output,
        data=baselined,
        flag=flag_out,
        weight=None,
        units=src.units,
        description=f"data group {group!r} minus a {blfunc} baseline (step baseline)",
        from_group=group,
    )
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
            schema.BL_COEFFICIENTS: coef,
            schema.BL_RMS: rms,
            schema.BL_N_CLIPPED: nclip,
            schema.BL_FIT_MASK: used,
        },
        coords={
            schema.COEFFICIENT: labels,
            **{
                name: coord.variable
                for name, coord in src.data.coords.items()
                if coord.variable.chunks is None
            },
        },
        attrs=attrs,
    )
    return out, table
