"""gaincal: antenna-based complex gains from interferometer visibilities (CASA ``gaincal``).

Model: ``V_ij(pq) = g_ip conj(g_jq) M_ij(pq)`` for the parallel hands (p == q). One gain per
antenna and receptor (``gaintype='G'``) or one shared by both receptors (``'T'``).

Data preparation (per solution interval, lazily, chunk by chunk)
----------------------------------------------------------------
Prior tables (``gaintable``) are applied on the fly (:mod:`radflow.cal.apply`). Each sample is
divided by the model, ``V/M`` with weight ``w |M|^2``; summed with those weights over the
channels and the interval's integrations this is ``Vbar = sum(w V conj(M)) / sum(w |M|^2)``, with
weight ``W = sum(w |M|^2)``. Without a model data group the model is a 1 Jy point source
(``M = 1``), as in CASA without MODEL_DATA. ``calmode='p'`` solves ``Vbar/|Vbar|`` with weight
``W |Vbar|^2`` (as CASA: decorrelated data count less), ``'a'`` solves ``|Vbar|``. For T the
two hands' data (after that) are combined as their weighted mean.

Solution intervals: ``solint`` ``'inf'`` (the whole scan), ``'int'`` (each integration), or a
duration (``'30s'``, ``'2min'``, ``'1h'``, or seconds as a number); bins are
``floor((t - t0) / solint)`` from the first integration ``t0`` of each scan, broken at scan and
field boundaries unless ``combine`` holds ``'scan'`` / ``'field'``. With ``'spw'`` in combine the
spws are solved together and the solution is stored under every combined spw. A solution's
``time`` coordinate is the mean time of the interval's integrations, known before computing;
its ``TIME_CENTROID`` is CASA's solution time, the mean weighted by the solve weights (lazy):
applycal interpolates between the centroids and caltables carry them as TIME.

Solver (per interval and receptor, all intervals at once)
---------------------------------------------------------
Minimise ``chi2 = sum_(i<j) W_ij |Vbar_ij - g_i conj(g_j)|^2`` by alternating least squares
(StefCal: ``g_i <- sum_j W_ij Vbar_ij g_j / sum_j W_ij |g_j|^2``, every other step averaged with
the previous one), which converges to the same minimum as CASA's Gauss-Newton. Antennas with
fewer than ``minblperant`` baselines of data are dropped, repeatedly, and flagged. Errors:
``sigma_i = sqrt(2 chi2 / nu / H_i)`` with ``H_i = sum_j W_ij |g_j|^2`` and
``nu = max(2 (n_vis - n_ant), 1)``; ``SNR = |g| / sigma``; a solution is flagged unless
``SNR > minsnr``.

Reference antenna: per spw in time order, the first antenna of ``refant`` with an unflagged
solution (then the one used last, then the others by distance from the first refant); every
solution is multiplied by ``conj(g_ref)/|g_ref|`` per receptor. When the refant changes, the new
one keeps the phase it had in the previous interval (CASA's ``refantmode='flex'``);
``refantmode='strict'`` flags intervals where the first refant has no solution. Then
``calmode`` 'p' sets ``|g| = 1``, 'a' keeps ``|g|``; ``solnorm`` divides by the root mean square
amplitude over the antennas of each interval and receptor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import dask
import dask.array as da
import numba
import numpy as np
import xarray as xr
from dask.delayed import Delayed
from numba import literal_unroll

from radflow import schema
from radflow.cal import apply as applycal
from radflow.cal import interp
from radflow.lazy import Output, apply_blocks, sum_blocks
from radflow.step import coord_values, describe_partition, get_data_group

SolutionTable = dict[int, xr.Dataset]
_SOLUTION = "_solution"  # private dim: solution intervals before they become `time`
_MAX_ITER = 200
_TOLERANCE = 1e-10


class GaincalError(ValueError):
    """Bad gaincal input: no data selected, unknown refant, invalid solint/combine/calmode."""


# ---- parameters ----


def parse_solint(solint: str | float | int) -> float:
    """Seconds of a solution interval: ``inf`` -> inf, ``int`` -> 0 (each integration)."""
    if isinstance(solint, int | float) and not isinstance(solint, bool):
        if solint <= 0:
            raise GaincalError(f"solint must be > 0 seconds, got {solint!r}")
        return float(solint)
    text = str(solint).strip().lower()
    if text == "inf":
        return float("inf")
    if text == "int":
        return 0.0
    m = re.fullmatch(r"([0-9.]+(?:e[+-]?\d+)?)\s*(s|sec|min|m|h)?", text)
    if not m:
        raise GaincalError(f"solint {solint!r}: expected 'inf', 'int' or a duration like '30s'")
    value = float(m[1]) * {None: 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}[m[2]]
    if value <= 0:
        raise GaincalError(f"solint {solint!r} must be > 0")
    return value


def parse_combine(combine: str | Sequence[str]) -> frozenset[str]:
    items = combine.split(",") if isinstance(combine, str) else list(combine)
    out = frozenset(i.strip().lower() for i in items if i.strip())
    bad = out - {"scan", "field", "spw"}
    if bad:
        raise GaincalError(f"combine: unknown axis {sorted(bad)} (use 'scan', 'field', 'spw')")
    return out


def parse_refant(refant: str | Sequence[str]) -> list[str]:
    items = refant.split(",") if isinstance(refant, str) else list(refant)
    return [str(i).strip() for i in items if str(i).strip()]


# ---- solution intervals ----


@dataclass
class _Interval:
    """One solution interval: the integrations of each partition it covers."""

    spws: list[int]
    field: str
    scan: int
    time: float = 0.0
    span: float = 0.0
    pieces: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (partition, indices)


def solution_intervals(
    parts: Mapping[str, xr.Dataset], solint: float, combine: frozenset[str]
) -> list[_Interval]:
    """Solution intervals over the selected partitions, in time order."""
    groups: dict[tuple, list[tuple[str, np.ndarray, int, str]]] = {}
    for name, ds in parts.items():
        info = ds.attrs[schema.ATTR_PARTITION_INFO]
        spw = int(info[schema.PI_SPW_ID])
        scan = int(info[schema.PI_SCAN])
        fields = coord_values(ds, schema.FIELD_NAME).astype(str)
        for fname in np.unique(fields):
            key = (
                None if "spw" in combine else spw,
                None if "field" in combine else fname,
                None if "scan" in combine else scan,
            )
            groups.setdefault(key, []).append((name, np.flatnonzero(fields == fname), spw, fname))
    out: list[_Interval] = []
    for pieces in groups.values():
        times = {name: coord_values(parts[name], schema.TIME).astype(float) for name, *_ in pieces}
        t0 = min(times[name][idx[0]] for name, idx, *_ in pieces)
        bins: dict[float, _Interval] = {}
        for name, idx, spw, fname in pieces:
            t = times[name][idx]
            if solint == 0.0:
                number = t  # each integration
            elif np.isinf(solint):
                number = np.zeros(idx.size)
            else:
                number = np.floor((t - t0) / solint)
            scan = int(parts[name].attrs[schema.ATTR_PARTITION_INFO][schema.PI_SCAN])
            for b in np.unique(number):
                iv = bins.setdefault(float(b), _Interval([], str(fname), scan))
                iv.pieces.append((name, idx[number == b]))
                iv.scan = min(iv.scan, scan)
                if spw not in iv.spws:
                    iv.spws.append(spw)
        for iv in bins.values():
            stamps = np.unique(np.concatenate([times[n][i] for n, i in iv.pieces]))
            iv.time = float(stamps.mean())
            iv.span = float(stamps[-1] - stamps[0])
            out.append(iv)
    return sorted(out, key=lambda iv: (iv.time, iv.field))


# ---- lazy data preparation ----


def _parallel_hands(ds: xr.Dataset) -> list[str]:
    return [str(p) for p in coord_values(ds, schema.POLARIZATION) if str(p)[0] == str(p)[-1]]


# Per chunk the data (time, baseline, channel, pol) pass once through a compiled loop: the numpy
# form made ~15 full-size temporaries (corrected data, masks, products, casts) per chunk.
@numba.njit(cache=True, nogil=True)
def _weighted_sums(
    vis: np.ndarray,
    weight: np.ndarray,
    flag: np.ndarray,
    model: np.ndarray | None,
    corrections: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...],
    pols: np.ndarray,
    per_channel: bool,
    num: np.ndarray,
    den: np.ndarray,
) -> None:
    """Fill `num` with ``sum w V conj(M)`` and `den` with ``sum w |M|^2`` (time, baseline,
    channel or 1, hand) of one chunk (time, baseline, channel, pol).

    Per sample of the parallel hands `pols` (pol indices, one per hand): V and w are multiplied
    by each of the `corrections` in turn and its flag joins the sample's; a flagged sample, or
    one with ``w |M|^2 <= 0`` (or NaN) or a non-finite ``w V conj(M)``, adds nothing. Products in
    single precision, as the data, sums in double. `model` None: a 1 Jy point source (M = 1).
    `corrections`: (factor, weight factor, flag) triples, each shaped as `vis`; at least one
    (``literal_unroll`` cannot take an empty tuple: give an identity then).
    """
    n_time, n_bl, n_chan, _ = vis.shape
    zero_vis, zero_w = np.complex64(0), np.float32(0)
    for t in range(n_time):
        for b in range(n_bl):
            for h in range(pols.size):
                p = pols[h]
                num_sum, den_sum = 0j, 0.0
                for c in range(n_chan):
                    v, w, bad = vis[t, b, c, p], weight[t, b, c, p], flag[t, b, c, p]
                    for corr in literal_unroll(corrections):
                        v = v * corr[0][t, b, c, p]
                        w = w * corr[1][t, b, c, p]
                        bad |= corr[2][t, b, c, p]
                    if model is None:
                        x, d = w * v, w
                    else:
                        m = model[t, b, c, p]
                        x, d = (w * v) * np.conj(m), w * (m.real * m.real + m.imag * m.imag)
                    if bad or not (np.isfinite(x.real) and np.isfinite(x.imag) and d > 0):
                        x, d = zero_vis, zero_w
                    if per_channel:
                        num[t, b, c, h], den[t, b, c, h] = x, d
                    else:
                        num_sum += x
                        den_sum += d
                if not per_channel:
                    num[t, b, 0, h], den[t, b, 0, h] = num_sum, den_sum


def _prepare_block(
    vis: np.ndarray,
    weight: np.ndarray,
    flag: np.ndarray,
    *rest: np.ndarray,
    has_model: bool,
    pols: np.ndarray,
    per_channel: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """One chunk (time, baseline, channel, pol): prior corrections (factor, weight factor,
    flag triplets, with or without the channel axis), then ``w V conj(M)`` and
    ``w |M|^2`` of the parallel hands `pols`, summed over channels unless `per_channel`."""
    shape = vis.shape

    def full(x: np.ndarray | complex, dtype: type) -> np.ndarray:
        # one-channel corrections broadcast over the channels with a zero stride (no copy); all
        # inputs read-only views, so writeable and read-only chunks share compiled code
        x = np.asarray(x).astype(dtype, copy=False)
        return np.broadcast_to(x[..., None, :] if x.ndim == len(shape) - 1 else x, shape)

    model = full(rest[0], np.complex64) if has_model else None
    given = rest[1:] if has_model else rest
    corrections = tuple(
        (full(f, np.complex64), full(wf, np.float32), full(cf, np.bool_))
        for f, wf, cf in zip(given[0::3], given[1::3], given[2::3], strict=True)
    ) or ((full(1, np.complex64), full(1, np.float32), full(False, np.bool_)),)  # identity
    out_shape = (*shape[:2], shape[2] if per_channel else 1, len(pols))
    num, den = np.empty(out_shape, np.complex128), np.empty(out_shape, np.float64)
    _weighted_sums(
        full(vis, np.complex64), full(weight, np.float32), full(flag, np.bool_), model,
        corrections, pols, per_channel, num, den,
    )  # fmt: skip
    if not per_channel:
        return num[:, :, 0], den[:, :, 0]
    return num, den


def _prepare_block_with_priors(
    times: np.ndarray,
    vis: np.ndarray,
    weight: np.ndarray,
    flag: np.ndarray,
    *rest: np.ndarray,
    has_model: bool,
    tables: tuple[dict | None, ...],
    pols: np.ndarray,
    per_channel: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_prepare_block` with each prior table's factors made for this chunk's `times`
    (unix s) from :func:`radflow.cal.apply.correction_inputs`' three blocks per table."""
    model = rest[:1] if has_model else ()
    given = rest[1:] if has_model else rest
    t = times.reshape(-1)
    corrections = [
        x
        for k, kwargs in enumerate(tables)
        for x in applycal.correction_chunk(t, *given[3 * k : 3 * k + 3], kwargs)
    ]
    return _prepare_block(
        vis, weight, flag, *model, *corrections, has_model=has_model, pols=pols,
        per_channel=per_channel,
    )  # fmt: skip


def _prepared(
    ds: xr.Dataset,
    group: str,
    model_group: str | None,
    prior: Sequence[applycal.SolutionTable],
    prior_kwargs: dict,
    per_channel: bool,
) -> tuple[xr.DataArray, xr.DataArray]:
    """Lazy ``sum w V conj(M)`` and ``sum w |M|^2`` over channels (unless `per_channel`), per
    (time, baseline_id, [frequency,] polarization), parallel hands only: one task per chunk."""
    src = get_data_group(ds, group)
    freq, pol = schema.FREQUENCY, schema.POLARIZATION
    inputs = [src.data, src.weight, src.flag]
    if model_group is not None:
        inputs.append(get_data_group(ds, model_group).data)
    core = [[d for d in (freq, pol) if d in x.dims] for x in inputs]
    tables = []
    for k, table in enumerate(prior):
        found = applycal.chunk_correction(
            ds, table, **{key: value[k] for key, value in prior_kwargs.items()}
        )
        if found is None:
            raise GaincalError(
                f"prior table {k} has no solutions for partition {describe_partition(ds)}"
            )
        table_inputs, table_core, kwargs = applycal.correction_inputs(found)
        inputs += table_inputs
        core += table_core
        tables.append(kwargs)
    all_pols = [str(p) for p in coord_values(ds, pol)]
    hands = _parallel_hands(ds)
    order = (schema.TIME, schema.BASELINE_ID, *([freq] if per_channel else []), "_hand")
    num, den = apply_blocks(
        _prepare_block_with_priors,
        xr.Variable(schema.TIME, coord_values(ds, schema.TIME).astype(float)),
        *inputs,
        loop_dims=(schema.TIME, schema.BASELINE_ID),
        core_dims=[[], *core],
        outputs=[Output(order, np.complex128), Output(order, np.float64)],
        sizes={"_hand": len(hands)},
        kwargs=dict(
            has_model=model_group is not None,
            tables=tuple(tables),
            pols=np.array([all_pols.index(h) for h in hands]),
            per_channel=per_channel,
        ),
        name="gaincal-prepare",
    )
    dims = (*order[:-1], pol)
    return tuple(  # type: ignore[return-value]
        xr.DataArray(xr.Variable(dims, x.data), coords={pol: hands}) for x in (num, den)
    )


def _membership(intervals: list[_Interval], partition: str, n_time: int) -> np.ndarray:
    """(S, n_time) 1 where an integration of `partition` belongs to interval S, else 0."""
    onehot = np.zeros((len(intervals), n_time))
    for k, iv in enumerate(intervals):
        for piece, idx in iv.pieces:
            if piece == partition:
                onehot[k, idx] = 1.0
    return onehot


def single_block(x: da.Array) -> Delayed:
    """The one chunk of `x` as a Delayed: handing it to a delayed solver this way keeps the
    array's graph as it is (passing the array itself makes dask wrap its whole graph in a
    nested computation, which is slow to optimise and run)."""
    x = x.rechunk(-1)
    # unoptimised: optimising here culls and fuses the whole graph so far, once per call,
    # and the computation optimises it once anyway
    (block,) = x.to_delayed(optimize_graph=False).ravel()
    return block


# ---- the solver (numpy, all intervals at once) ----


def _stefcal(vis: np.ndarray, wgt: np.ndarray) -> np.ndarray:
    """Gains (S, A) minimising sum_(i,j) W |V_ij - g_i conj(g_j)|^2 for Hermitian (S, A, A)."""
    n_sol, n_ant, _ = vis.shape
    gains = np.ones((n_sol, n_ant), dtype=complex)
    wv = wgt * vis
    for iteration in range(_MAX_ITER):
        denom = np.einsum("saj,sj->sa", wgt, np.abs(gains) ** 2)
        new = np.einsum("saj,sj->sa", wv, gains) / np.where(denom > 0, denom, 1.0)
        new = np.where(denom > 0, new, 0.0)
        if iteration % 2 == 1:
            new = 0.5 * (new + gains)
        change = np.abs(new - gains).max(initial=0.0)
        gains = new
        if change < _TOLERANCE * max(np.abs(gains).max(initial=1.0), 1e-30):
            break
    return gains


def drop_sparse_antennas(wgt: np.ndarray, minblperant: int) -> np.ndarray:
    """Zero the weights of antennas with fewer than `minblperant` baselines, repeatedly."""
    wgt = wgt.copy()
    while True:
        count = (wgt > 0).sum(axis=2)  # (S, A)
        sparse = (count < minblperant) & (count > 0)
        if not sparse.any():
            return wgt
        wgt[sparse] = 0.0
        wgt.transpose(0, 2, 1)[sparse] = 0.0


def solve_batch(
    vbar: np.ndarray,
    wgt: np.ndarray,
    *,
    ant1: np.ndarray,
    ant2: np.ndarray,
    n_ant: int,
    minblperant: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Antenna gains of independent problems (N, baseline, receptor) -> gains, errors (complex
    magnitude, inf where not solved) and baselines used, each (N, A, R); see the module
    docstring. Autocorrelations are ignored."""
    n_sol, _, n_rec = vbar.shape
    cross = ant1 != ant2
    a1, a2 = ant1[cross], ant2[cross]
    gains = np.zeros((n_sol, n_ant, n_rec), dtype=complex)
    error = np.full((n_sol, n_ant, n_rec), np.inf)
    nvis = np.zeros((n_sol, n_ant, n_rec), dtype=np.int64)
    for r in range(n_rec):
        vis_m = np.zeros((n_sol, n_ant, n_ant), dtype=complex)
        wgt_m = np.zeros((n_sol, n_ant, n_ant))
        vis_m[:, a1, a2] = vbar[:, cross, r]
        vis_m[:, a2, a1] = np.conj(vbar[:, cross, r])
        wgt_m[:, a1, a2] = wgt[:, cross, r]
        wgt_m[:, a2, a1] = wgt[:, cross, r]
        wgt_m = drop_sparse_antennas(wgt_m, minblperant)
        g = _stefcal(vis_m, wgt_m)
        resid = wgt_m * np.abs(vis_m - g[:, :, None] * np.conj(g[:, None, :])) ** 2
        chi2 = 0.5 * resid.sum(axis=(1, 2))  # each baseline appears twice in the matrix
        used = wgt_m > 0
        n_vis = 0.5 * used.sum(axis=(1, 2))
        n_par = used.any(axis=2).sum(axis=1)
        nu = np.maximum(2.0 * (n_vis - n_par), 1.0)
        curvature = np.einsum("saj,sj->sa", wgt_m, np.abs(g) ** 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            error[:, :, r] = np.sqrt(2.0 * chi2[:, None] / nu[:, None] / curvature)
        gains[:, :, r] = g
        nvis[:, :, r] = used.sum(axis=2)
    return gains, error, nvis


def unit_phasor(z: np.ndarray) -> np.ndarray:
    """``z / |z|``, 0 where ``z == 0``."""
    amp = np.abs(z)
    return np.divide(z, amp, out=np.zeros_like(z), where=amp > 0)


def solve_data(num: np.ndarray, den: np.ndarray, calmode: str) -> tuple[np.ndarray, np.ndarray]:
    """The data a solver fits and its weights: ``Vbar = num / den`` (0 without data) with weight
    ``den``; for calmode 'p' ``Vbar/|Vbar|`` with weight ``den |Vbar|^2`` (CASA's
    ``enforceAPonData``: a decorrelated baseline counts less), for 'a' ``|Vbar|``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        vbar = np.where(den > 0, num / den, 0.0)
    if calmode == "p":
        return unit_phasor(vbar), den * np.abs(vbar) ** 2
    if calmode == "a":
        return np.abs(vbar).astype(complex), den
    return vbar, den


def signal_to_noise(gains: np.ndarray, error: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(np.isfinite(error) & (error > 0), np.abs(gains) / error, 0.0)
    return np.where(error == 0, np.inf, snr)


def _solve_block(
    num: np.ndarray,
    den: np.ndarray,
    *,
    ant1: np.ndarray,
    ant2: np.ndarray,
    n_ant: int,
    gaintype: str,
    calmode: str,
    minblperant: int,
    minsnr: float,
    refants: list[int],
    strict: bool,
    solnorm: bool,
    names: list[str],
) -> tuple[np.ndarray, ...]:
    """num, den: (S, baseline, pol) -> gains, error, snr, flag (S, A, R), nvis, refant name
    (S,; "" where none)."""
    vbar, weight = solve_data(num, den, calmode)
    if gaintype == schema.CAL_TYPE_T:  # one gain for both hands: the weighted mean of both
        total = weight.sum(axis=2, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            vbar = np.where(total > 0, (weight * vbar).sum(axis=2, keepdims=True) / total, 0)
        weight = total
    n_sol = num.shape[0]
    gains, error, nvis = solve_batch(
        vbar, weight, ant1=ant1, ant2=ant2, n_ant=n_ant, minblperant=minblperant
    )
    snr = signal_to_noise(gains, error)
    flag = (nvis == 0) | ~(snr > minsnr)

    refant = np.full(n_sol, -1, dtype=np.int64)
    order = list(refants)
    previous: np.ndarray | None = None
    last = -1
    for s in range(n_sol):
        good = ~flag[s].any(axis=1)
        candidates = order[:1] + ([last] if last >= 0 else []) + order[1:]
        choice = next((a for a in candidates if good[a]), -1)
        if strict and (not order or choice != order[0]):
            flag[s] = True
            continue
        if choice < 0:
            continue
        phasor = gains[s, choice] / np.abs(gains[s, choice])
        gains[s] = gains[s] * np.conj(phasor)
        if previous is not None and choice != last and last >= 0:
            # the alternate refant keeps the phase it had in the previous interval
            prev = previous[choice]
            if np.all(np.abs(prev) > 0):
                gains[s] = gains[s] * prev / np.abs(prev)
        refant[s], last, previous = choice, choice, gains[s].copy()
    if calmode == "p":
        gains = unit_phasor(gains)
    elif calmode == "a":
        gains = np.abs(gains).astype(complex)
    if solnorm:
        good = ~flag
        power = np.where(good, np.abs(gains) ** 2, 0.0).sum(axis=1) / np.maximum(
            good.sum(axis=1), 1
        )
        gains = gains / np.sqrt(np.where(power > 0, power, 1.0))[:, None, :]
    gains = np.where(flag, 1.0 + 0j, gains)  # flagged values are never used: keep them finite
    error = np.where(np.isfinite(error), error, 0.0)
    names = np.array([*names, ""])  # index -1: no refant
    return gains, error, snr, flag, nvis, names[refant]


# ---- selection and data preparation shared by the solvers ----


@dataclass
class Prepared:
    """The selected partitions of an EB, their antennas and their lazily prepared data."""

    selected: dict[str, xr.Dataset]
    names: list[str]  # antennas, in the order of the solution's antenna_name axis
    ant1: np.ndarray  # per baseline, index into names
    ant2: np.ndarray
    refant_order: list[int]  # refant preference (indices into names)
    receptors: list[str]  # receptor letters of the parallel hands, in pol order
    data: dict[str, tuple[xr.DataArray, xr.DataArray]]  # partition -> (sum wVM*, sum w|M|^2)

    @property
    def name_dtype(self) -> np.dtype:
        return np.dtype(f"<U{max(len(n) for n in self.names)}")

    def _time_blocks(self, intervals: list[_Interval]):
        """Per time chunk of every partition with data in `intervals`: the partition's name,
        the chunk's index and rows, the partition's prepared sums (one chunk along their
        other axes) and the chunk's columns of the membership matrix."""
        for name, (num, den) in self.data.items():
            onehot = _membership(intervals, name, num.sizes[schema.TIME])
            if not onehot.any():
                continue
            whole = {axis: -1 for axis in range(1, num.ndim)}
            num_data, den_data = (x.data.rechunk(whole) for x in (num, den))
            starts = np.cumsum((0, *num_data.chunks[0]))
            for i in range(len(starts) - 1):
                rows = slice(starts[i], starts[i + 1])
                yield name, i, rows, num_data, den_data, onehot[:, rows]

    def interval_arrays(self, intervals: list[_Interval]) -> tuple[da.Array, da.Array]:
        """(S, baseline, [frequency,] pol) sums of each interval, one chunk (small)."""
        tasks, arrays, shape = [], [], ()
        for _, i, _, num, den, onehot in self._time_blocks(intervals):
            zeros = (0,) * (num.ndim - 1)
            tasks.append((_interval_sums, (num.name, i, *zeros), (den.name, i, *zeros), onehot))
            arrays += [num, den]
            shape = (len(intervals), *num.shape[1:])
        return sum_blocks(
            tasks,
            arrays,
            finish=_identity,
            outputs=[(shape, np.complex128), (shape, np.float64)],
            name="gaincal-intervals",
        )  # type: ignore[return-value]

    def time_centroids(self, intervals: list[_Interval]) -> da.Array:
        """(S,) the solve-weighted mean time of each interval (unix s; CASA's solution time),
        lazily; the plain mean time where an interval has no data."""
        reference = np.array([iv.time for iv in intervals])
        tasks, arrays = [], []
        for name, i, rows, _, den, onehot in self._time_blocks(intervals):
            times = coord_values(self.selected[name], schema.TIME).astype(float)[rows]
            offset = onehot * (times[None, :] - reference[:, None])  # seconds from the mean
            zeros = (0,) * (den.ndim - 1)
            tasks.append((_centroid_sums, (den.name, i, *zeros), offset, onehot))
            arrays.append(den)
        (centroid,) = sum_blocks(
            tasks,
            arrays,
            finish=partial(_centroids, reference=reference),
            outputs=[(reference.shape, np.float64)],
            name="gaincal-centroids",
        )
        return centroid


def _interval_sums(num: np.ndarray, den: np.ndarray, onehot: np.ndarray) -> tuple[np.ndarray, ...]:
    """``onehot @ num`` and ``onehot @ den`` along time, for one time chunk."""
    return tuple(interp.binned_block(x, onehot) for x in (num, den))


def _centroid_sums(
    den: np.ndarray, offset: np.ndarray, onehot: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The weight-times-offset and weight sums of each interval, for one time chunk."""
    per_time = den.sum(axis=tuple(range(1, den.ndim)))
    return interp.binned_block(per_time, offset), interp.binned_block(per_time, onehot)


def _centroids(sums: tuple[np.ndarray, np.ndarray], reference: np.ndarray) -> tuple[np.ndarray]:
    offset, weight = sums
    shift = np.where(weight > 0, offset / np.where(weight > 0, weight, 1.0), 0.0)
    return (reference + shift,)


def _identity(sums: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    return sums


def select(
    partitions: Mapping[str, xr.Dataset],
    field: str | Sequence[str],
    intent: str,
    spw: Sequence[int] | None,
    where: str,
) -> dict[str, xr.Dataset]:
    """The visibility partitions (restricted to the `field` times) a solver uses."""
    fields = parse_refant(field)
    selected = {}
    for name, ds in partitions.items():
        if ds.attrs.get(schema.ATTR_TYPE) != schema.TYPE_VISIBILITY:
            continue
        info = ds.attrs[schema.ATTR_PARTITION_INFO]
        intents = ",".join(info.get(schema.PI_INTENTS) or [])
        if spw is not None and int(info[schema.PI_SPW_ID]) not in set(spw):
            continue
        if intent and intent not in intents:
            continue
        if fields:
            keep = np.isin(coord_values(ds, schema.FIELD_NAME).astype(str), fields)
            if not keep.any():
                continue
            ds = ds.isel({schema.TIME: np.flatnonzero(keep)})
        selected[name] = ds
    if not selected:
        raise GaincalError(
            f"{where}: no visibility data selected (field={field!r}, intent={intent!r}, "
            f"spw={spw!r})"
        )
    return selected


def prepare(
    partitions: Mapping[str, xr.Dataset],
    *,
    field: str | Sequence[str],
    intent: str,
    spw: Sequence[int] | None,
    refant: str | Sequence[str],
    antenna_positions: xr.DataArray | None,
    gaintable: Sequence[applycal.SolutionTable],
    interp: str | Sequence[str],
    spwmap: Sequence[Mapping[int, int] | None] | None,
    group: str,
    model_group: str | None,
    per_channel: bool,
    where: str,
) -> Prepared:
    """Select, check the baselines agree, order the refants and prepare the data lazily."""
    selected = select(partitions, field, intent, spw, where)
    first = next(iter(selected.values()))
    ant1 = coord_values(first, schema.BASELINE_ANTENNA1_NAME).astype(str)
    ant2 = coord_values(first, schema.BASELINE_ANTENNA2_NAME).astype(str)
    for name, ds in selected.items():
        if not (
            np.array_equal(coord_values(ds, schema.BASELINE_ANTENNA1_NAME).astype(str), ant1)
            and np.array_equal(coord_values(ds, schema.BASELINE_ANTENNA2_NAME).astype(str), ant2)
        ):
            raise GaincalError(f"{where}: partition {name} has other baselines than the rest")
    names = sorted(set(ant1) | set(ant2), key=list(np.concatenate([ant1, ant2])).index)
    index = {n: k for k, n in enumerate(names)}
    n = len(gaintable)
    prior_kwargs = {
        "interp_method": [interp] * n if isinstance(interp, str) else list(interp),
        "spwmap": list(spwmap) if spwmap is not None else [None] * n,
    }
    data = {}
    for name, ds in selected.items():
        has_model = bool(model_group) and model_group in ds.attrs.get(schema.ATTR_DATA_GROUPS, {})
        data[name] = _prepared(ds, group, model_group if has_model else None, gaintable,
                               prior_kwargs, per_channel)  # fmt: skip
    receptors = [p[0] for p in _parallel_hands(first)]
    return Prepared(
        selected=selected,
        names=names,
        ant1=np.array([index[a] for a in ant1]),
        ant2=np.array([index[a] for a in ant2]),
        refant_order=_antenna_order(names, parse_refant(refant), antenna_positions, where),
        receptors=receptors,
        data=data,
    )


# ---- the public solver ----


def _antenna_order(
    names: list[str], refant: list[str], positions: xr.DataArray | None, where: str
) -> list[int]:
    unknown = [r for r in refant if r not in names]
    if unknown:
        raise GaincalError(f"{where}: refant {unknown} not among the antennas {names}")
    order = [names.index(r) for r in refant]
    rest = [k for k in range(len(names)) if k not in order]
    if order and positions is not None:
        pos = positions.sel({schema.ANTENNA_NAME: names}).values.astype(float)
        dist = np.linalg.norm(pos - pos[order[0]], axis=1)
        rest.sort(key=lambda k: dist[k])
    return order + rest


def solve(
    partitions: Mapping[str, xr.Dataset],
    *,
    field: str | Sequence[str] = "",
    intent: str = "",
    spw: Sequence[int] | None = None,
    gaintype: str = schema.CAL_TYPE_G,
    calmode: str = "ap",
    solint: str | float = "inf",
    combine: str | Sequence[str] = "",
    refant: str | Sequence[str] = "",
    refantmode: str = "flex",
    minblperant: int = 4,
    minsnr: float = 3.0,
    solnorm: bool = False,
    gaintable: Sequence[applycal.SolutionTable] = (),
    interp: str | Sequence[str] = "linear",
    spwmap: Sequence[Mapping[int, int] | None] | None = None,
    group: str = schema.GROUP_BASE,
    model_group: str | None = schema.GROUP_MODEL,
    antenna_positions: xr.DataArray | None = None,
    ms_name: str = "",
) -> SolutionTable:
    """Solve antenna gains over the selected visibility partitions of one EB, lazily.

    Parameters
    ----------
    partitions : mapping of name -> visibility partition Dataset
        All partitions of the EB (selection below picks what is solved).
    field, intent, spw
        Selection: field names (comma separated or a list), a substring of the partition's scan
        intents (e.g. ``"CALIBRATE_PHASE"``), spw ids. Empty: everything.
    gaintype : {"G", "T"}
    calmode : {"ap", "p", "a"}
    solint, combine
        See the module docstring.
    refant : str or list
        Antenna names in order of preference; empty: the antennas in store order.
    refantmode : {"flex", "strict"}
    minblperant : int
        Antennas with fewer baselines of data are not solved (flagged).
    minsnr : float
        Solutions with ``SNR <= minsnr`` are flagged.
    solnorm : bool
        Normalise amplitudes (module docstring).
    gaintable, interp, spwmap
        Prior tables applied before solving, with their time interpolation and spw maps.
    group : str
        Data group solved (``base`` = DATA).
    model_group : str or None
        Data group holding the model visibilities (setjy's ``model``); a partition without it,
        or None, uses a 1 Jy point source.
    antenna_positions : DataArray (antenna_name, cartesian_pos_label), optional
        ITRF positions (m) ranking the fallback refants by distance from the first.

    Returns
    -------
    dict of spw id -> solution Dataset
        Dask-backed ``CALIBRATION_PARAMETER`` (complex, dims time, antenna_name, frequency (1),
        receptor), ``PARAMETER_ERROR``, ``SNR``, ``FLAG``, ``N_VISIBILITIES``,
        ``REFERENCE_ANTENNA`` (time; the refant's name, "" if none), ``SOLUTION_INTERVAL``;
        coords field_name(time), scan_number(time). Times (unix s) are known without computing.

    Raises
    ------
    GaincalError
        Nothing selected, bad parameters, unknown refant, mismatched antennas between partitions.
    """
    where = "gaincal"
    if gaintype not in schema.CAL_TYPES_GAIN:
        raise GaincalError(f"{where}: gaintype must be 'G' or 'T', got {gaintype!r}")
    if calmode not in ("ap", "p", "a"):
        raise GaincalError(f"{where}: calmode must be 'ap', 'p' or 'a', got {calmode!r}")
    if refantmode not in ("flex", "strict"):
        raise GaincalError(f"{where}: refantmode must be 'flex' or 'strict', got {refantmode!r}")
    interval_s = parse_solint(solint)
    axes = parse_combine(combine)
    prep = prepare(
        partitions, field=field, intent=intent, spw=spw, refant=refant,
        antenna_positions=antenna_positions, gaintable=gaintable, interp=interp, spwmap=spwmap,
        group=group, model_group=model_group, per_channel=False, where=where,
    )  # fmt: skip
    names, receptors = prep.names, prep.receptors
    intervals = solution_intervals(prep.selected, interval_s, axes)
    out: SolutionTable = {}
    for spw_id in sorted({s for iv in intervals for s in iv.spws}):
        mine = [iv for iv in intervals if spw_id in iv.spws]
        num_arr, den_arr = prep.interval_arrays(mine)
        kwargs = dict(
            ant1=prep.ant1,
            ant2=prep.ant2,
            n_ant=len(names),
            gaintype=gaintype,
            calmode=calmode,
            minblperant=int(minblperant),
            minsnr=float(minsnr),
            refants=prep.refant_order,
            strict=refantmode == "strict",
            solnorm=bool(solnorm),
            names=names,
        )
        n_rec = 1 if gaintype == schema.CAL_TYPE_T else len(receptors)
        results = dask.delayed(_solve_block, nout=6, pure=True)(
            single_block(num_arr), single_block(den_arr), **kwargs
        )
        shape = (len(mine), len(names), n_rec)
        solved = [
            da.from_delayed(r, shape, dtype=dtype)[:, :, None, :]  # one-channel frequency axis
            for r, dtype in zip(
                [results[k] for k in range(5)], (complex, float, float, bool, np.int64), strict=True
            )
        ]
        solved.append(da.from_delayed(results[5], shape[:1], dtype=prep.name_dtype))
        out[spw_id] = solution_dataset(
            solved, mine, prep, spw_id, cal_type=gaintype,
            receptors=["".join(receptors)] if gaintype == schema.CAL_TYPE_T else receptors,
            frequencies=np.array([spw_frequencies(prep, spw_id).mean()]),
            attrs={
                schema.ATTR_SOLINT: str(solint),
                schema.ATTR_COMBINE: ",".join(sorted(axes)),
                schema.ATTR_CALMODE: calmode,
                schema.ATTR_REFANT: ",".join(parse_refant(refant)),
                schema.ATTR_MS_NAME: ms_name,
            },
        )  # fmt: skip
    return out


def solution_dataset(
    solved: Sequence[da.Array],
    intervals: list[_Interval],
    prep: Prepared,
    spw_id: int,
    *,
    cal_type: str,
    receptors: list[str],
    frequencies: np.ndarray,
    attrs: dict,
) -> xr.Dataset:
    """A solution Dataset from the solver's lazy outputs: gains, errors, SNR, flags, baselines
    used (each (S, A, F, R)) and refant names (S,)."""
    dims = (schema.TIME, schema.ANTENNA_NAME, schema.FREQUENCY, schema.RECEPTOR)
    info = next(
        ds.attrs[schema.ATTR_PARTITION_INFO] for ds in prep.selected.values()
        if int(ds.attrs[schema.ATTR_PARTITION_INFO][schema.PI_SPW_ID]) == spw_id
    )  # fmt: skip
    gains, error, snr, flag, nvis, refant = solved
    return xr.Dataset(
        {
            schema.CALIBRATION_PARAMETER: (dims, gains, {schema.ATTR_UNITS: ""}),
            schema.PARAMETER_ERROR: (dims, error, {schema.ATTR_UNITS: ""}),
            schema.SNR: (dims, snr),
            schema.FLAG: (dims, flag),
            schema.N_VISIBILITIES: (dims, nvis),
            schema.REFERENCE_ANTENNA: (
                (schema.TIME,),
                refant,
                {"description": "the reference antenna; '': none"},
            ),
            schema.SOLUTION_INTERVAL: (
                (schema.TIME,),
                np.array([iv.span for iv in intervals]),
                {schema.ATTR_UNITS: "s"},
            ),
            schema.TIME_CENTROID: (
                (schema.TIME,),
                prep.time_centroids(intervals),
                {
                    schema.ATTR_UNITS: "s",
                    "description": "solve-weighted mean time (CASA's "
                    "solution time; applycal interpolates between these)",
                },
            ),  # fmt: skip
        },
        coords={
            schema.TIME: (
                schema.TIME,
                np.array([iv.time for iv in intervals]),
                {schema.ATTR_UNITS: "s", "scale": "utc", "format": "unix"},
            ),
            schema.ANTENNA_NAME: prep.names,
            schema.FREQUENCY: (schema.FREQUENCY, frequencies, {schema.ATTR_UNITS: "Hz"}),
            schema.RECEPTOR: receptors,
            schema.FIELD_NAME: (schema.TIME, [iv.field for iv in intervals]),
            schema.SCAN_NUMBER: (schema.TIME, [iv.scan for iv in intervals]),
        },
        attrs={
            schema.ATTR_TYPE: schema.TYPE_CALIBRATION_SOLUTION,
            schema.ATTR_CAL_TYPE: cal_type,
            schema.ATTR_SPW_ID: int(spw_id),
            schema.ATTR_SPECTRAL_WINDOW_NAME: str(info.get(schema.PI_SPW_NAME, "")),
            schema.ATTR_POL_BASIS: "circular" if prep.receptors[0] in "RL" else "linear",
            schema.ATTR_FIELDS: sorted({iv.field for iv in intervals}),
            **attrs,
        },
    )


def spw_frequencies(prep: Prepared, spw_id: int) -> np.ndarray:
    """Channel frequencies (Hz) of `spw_id` in the selected data."""
    ds = next(
        ds for ds in prep.selected.values()
        if int(ds.attrs[schema.ATTR_PARTITION_INFO][schema.PI_SPW_ID]) == spw_id
    )  # fmt: skip
    return coord_values(ds, schema.FREQUENCY).astype(float)
