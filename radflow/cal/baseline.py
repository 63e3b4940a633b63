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

The step :func:`subtract` runs the numpy kernels lazily, one dask task per chunk of spectra.
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


def _cspline_knots(mask: np.ndarray, npiece: int) -> np.ndarray:
    """Inner knots (in u) splitting the mask's channels into `npiece` equal-count groups."""
    chans = np.flatnonzero(mask)
    n = chans.size
    idx = [(j * n) // npiece for j in range(1, npiece)]
    return chans[idx].astype(float) / max(mask.size - 1, 1)


def _design(blfunc: str, n_chan: int, order: int, knots: np.ndarray, waves: Sequence[int]):
    u = _u(n_chan)
    if blfunc == schema.BL_POLY:
        return np.vander(u, order + 1, increasing=True)
    if blfunc == schema.BL_CHEBYSHEV:
        return _cheb.chebvander(2.0 * u - 1.0, order)
    if blfunc == schema.BL_CSPLINE:
        cols = [u**0, u, u**2, u**3] + [np.clip(u - t, 0.0, None) ** 3 for t in knots]
        return np.stack(cols, axis=1)
    phase = 2.0 * np.pi * np.arange(n_chan, dtype=float) / n_chan
    cols = []
    for k in waves:
        if k == 0:
            cols.append(np.ones(n_chan))
        else:
            cols += [np.sin(k * phase), np.cos(k * phase)]
    return np.stack(cols, axis=1) if cols else np.zeros((n_chan, 0))


def _cspline_piece_coefficients(coef: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Truncated-power coefficients -> 4 polynomial coefficients (in u) per piece."""
    pieces = [coef[:4].copy()]
    current = coef[:4].copy()
    for b, t in zip(coef[4:], knots, strict=True):
        # b (u - t)^3 = b (u^3 - 3 t u^2 + 3 t^2 u - t^3)
        current = current + b * np.array([-(t**3), 3 * t**2, -3 * t, 1.0])
        pieces.append(current.copy())
    return np.concatenate(pieces)


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


def _failed(n_chan: int, n_coef: int, mask: np.ndarray, waves: Sequence[int]) -> BaselineFit:
    return BaselineFit(
        model=np.full(n_chan, np.nan),
        coefficients=np.full(n_coef, np.nan),
        rms=float("nan"),
        nclipped=0,
        mask_used=mask,
        wave_numbers=tuple(waves),
    )


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
    n_chan = y.size
    finite = np.isfinite(y)
    current = np.asarray(mask, dtype=bool) & finite
    y0 = np.where(finite, y, 0.0)

    waves: list[int] = []
    if blfunc == schema.BL_SINUSOID:
        wanted = set(_parse_wave_numbers(addwn, n_chan, "addwn"))
        rejected = set(_parse_wave_numbers(rejwn, n_chan, "rejwn"))
        if applyfft:
            wanted |= set(_fft_wave_numbers(y0, current, fftthresh))
        waves = sorted(wanted - rejected)
    n_par = _n_params(blfunc, order, npiece, waves)
    n_rep = _n_reported(blfunc, order, npiece, waves)
    if n_par == 0 or current.sum() < n_par:
        return _failed(n_chan, n_rep, current, waves)

    nclipped = 0
    for iteration in range(clipniter + 1):
        knots = _cspline_knots(current, npiece) if blfunc == schema.BL_CSPLINE else np.empty(0)
        design = _design(blfunc, n_chan, order, knots, waves)
        coef, *_ = np.linalg.lstsq(design[current], y0[current], rcond=None)
        model = design @ coef
        if iteration == clipniter:
            break
        resid = y0 - model
        r = resid[current]
        clip = current & (np.abs(resid - r.mean()) > clipthresh * r.std())
        n_new = int(clip.sum())
        if n_new == 0 or current.sum() - n_new < n_par:
            break  # nothing to clip, or clipping would leave too few channels to fit
        current = current & ~clip
        nclipped += n_new

    r = (y0 - model)[current]
    coefficients = _cspline_piece_coefficients(coef, knots) if blfunc == schema.BL_CSPLINE else coef
    return BaselineFit(
        model=model,
        coefficients=np.asarray(coefficients, dtype=np.float64),
        rms=float(r.std()),
        nclipped=nclipped,
        mask_used=current,
        wave_numbers=tuple(waves),
    )


# ---- line finder ----


def mad80(values: np.ndarray) -> float:
    """Robust Gaussian sigma from the 80 % least deviant values (see the module docstring).

    Returns NaN for an empty input. Units: those of `values`.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan")
    d = np.sort(np.abs(x - np.median(x)))
    keep = max(1, math.ceil(0.8 * d.size))
    return float(d[:keep].mean() / _MAD80_NORM)


def _edge_mask(n_chan: int, edge: Sequence[int]) -> np.ndarray:
    left, right = (int(e) for e in edge)
    keep = np.zeros(n_chan, dtype=bool)
    keep[left : n_chan - right] = True
    return keep


def _detect(resid: np.ndarray, search: np.ndarray, sigma: float, b: int) -> np.ndarray:
    """Per channel, the significance of its box of b channels: box mean / (sigma / sqrt(count))."""
    n_chan = resid.size
    n_box = -(-n_chan // b)
    pad = n_box * b - n_chan
    vals = np.concatenate([np.where(search, resid, 0.0), np.zeros(pad)]).reshape(n_box, b)
    counts = np.concatenate([search, np.zeros(pad, dtype=bool)]).reshape(n_box, b).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(counts > 0, vals.sum(axis=1) / np.sqrt(counts) / sigma, 0.0)
    return np.repeat(snr, b)[:n_chan]


def _runs_at_least(candidate: np.ndarray, minwidth: int) -> np.ndarray:
    out = np.zeros_like(candidate)
    padded = np.concatenate([[False], candidate, [False]]).astype(np.int8)
    starts = np.flatnonzero(np.diff(padded) == 1)
    ends = np.flatnonzero(np.diff(padded) == -1)
    for s, e in zip(starts, ends, strict=True):
        if e - s >= minwidth:
            out[s:e] = True
    return out


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
    search = np.asarray(mask, dtype=bool) & np.isfinite(y) & _edge_mask(n_chan, edge)
    y0 = np.where(np.isfinite(y), y, 0.0)
    v = 2.0 * _u(n_chan) - 1.0
    binnings = [4**p for p in range(int(math.log(avg_limit, 4) + 1e-9) + 1)]

    lines = np.zeros(n_chan, dtype=bool)
    for _ in range(_FINDER_MAX_ITER):
        base = search & ~lines
        n = int(base.sum())
        if n < 3:
            break
        deg = min(_DETREND_MAX_ORDER, n // 8)
        coef = _cheb.chebfit(v[base], y0[base], deg)
        resid = y0 - _cheb.chebval(v, coef)
        sigma = mad80(resid[base])
        if not sigma > 0:
            break
        found = np.zeros(n_chan, dtype=bool)
        for b in binnings:
            candidate = search & (np.abs(_detect(resid, search, sigma, b)) > thresh)
            found |= _runs_at_least(candidate, minwidth)
        if np.array_equal(found, lines):
            break
        lines = found
    return lines


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
    lead = data.shape[:-1]
    model = np.full(data.shape, np.nan)
    used = np.zeros(data.shape, dtype=bool)
    coef = np.full((*lead, n_coef), np.nan)
    rms = np.full(lead, np.nan)
    nclip = np.zeros(lead, dtype=np.int32)
    sinusoid = fit_kwargs["blfunc"] == schema.BL_SINUSOID
    for idx in np.ndindex(*lead):
        y = np.asarray(data[idx], dtype=np.float64)
        usable = ~np.asarray(flag[idx], dtype=bool) & np.isfinite(y)
        fit_mask = usable & base_mask
        if auto:
            fit_mask &= ~find_lines(y, usable & base_mask, edge=edge, **finder)
        fit = fit_spectrum(y, fit_mask, **fit_kwargs)
        model[idx] = fit.model
        used[idx] = fit.mask_used
        rms[idx] = fit.rms
        nclip[idx] = fit.nclipped
        if sinusoid:
            where = [slots[k] + j for k in fit.wave_numbers for j in range(1 if k == 0 else 2)]
            coef[idx][where] = fit.coefficients
        else:
            coef[idx][: fit.coefficients.size] = fit.coefficients
    return model, used, coef, rms, nclip


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
