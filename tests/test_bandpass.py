"""bandpass B (radflow.cal.bandpass): injected per-channel bandpasses recovered."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from radflow import schema
from radflow.cal import apply as applycal
from radflow.cal import bandpass, gain
from radflow.testing.datasets import make_visibility_partition
from radflow.testing.lazy import assert_lazy

ANTS = [f"A{k:02d}" for k in range(7)]
N_CHAN = 24
NOISE = 0.02


def _bandpass(rng: np.random.Generator, max_delay: float = 0.2) -> np.ndarray:
    """(antenna, channel, receptor): ripple in amplitude, a delay (up to `max_delay` rad per
    channel) and an offset in phase."""
    chan = np.arange(N_CHAN)
    amp = 1 + 0.1 * np.sin(chan[None, :, None] / 3 + rng.uniform(0, 6, (len(ANTS), 1, 2)))
    delay = rng.uniform(-max_delay, max_delay, (len(ANTS), 1, 2))
    return amp * np.exp(1j * (delay * chan[None, :, None] + rng.uniform(-3, 3, (len(ANTS), 1, 2))))


def _partition(scan: int, bp: np.ndarray, rng: np.random.Generator, n_time: int = 5,
               gains: np.ndarray | None = None) -> xr.Dataset:  # fmt: skip
    ds = make_visibility_partition(n_time=n_time, antennas=ANTS, n_chan=N_CHAN,
                                   pols=("XX", "YY"), scan=scan, seed=scan)  # fmt: skip
    ds = ds.assign_coords({schema.TIME: ds[schema.TIME] + 60.0 * scan})
    a1 = [ANTS.index(a) for a in ds[schema.BASELINE_ANTENNA1_NAME].values]
    a2 = [ANTS.index(a) for a in ds[schema.BASELINE_ANTENNA2_NAME].values]
    g = np.ones((n_time, len(ANTS), 2)) if gains is None else gains
    vis = (g[:, a1, None, :] * bp[None, a1]) * np.conj(g[:, a2, None, :] * bp[None, a2]) * 3.0
    vis = vis + NOISE * (rng.normal(size=vis.shape) + 1j * rng.normal(size=vis.shape))
    flag = np.zeros(vis.shape, bool)
    chunks = ds[schema.VISIBILITY].data.chunks
    return ds.assign(
        {
            schema.VISIBILITY: ds[schema.VISIBILITY].copy(data=da.from_array(
                vis.astype(np.complex64), chunks=chunks)),
            schema.FLAG: ds[schema.FLAG].copy(data=da.from_array(flag, chunks=chunks)),
            schema.WEIGHT: ds[schema.WEIGHT].copy(data=da.full(
                vis.shape, 1 / NOISE**2, dtype=np.float32, chunks=chunks)),
        }
    )  # fmt: skip


def _expected(bp: np.ndarray, ref: int = 0, flux: float = 3.0) -> np.ndarray:
    """The truth as the solver reports it: refant phase removed per channel, |B| holding
    sqrt(flux) (the default 1 Jy model)."""
    return bp * np.conj(bp[ref : ref + 1] / np.abs(bp[ref : ref + 1])) * np.sqrt(flux)


@pytest.fixture(scope="module")
def scans():
    rng = np.random.default_rng(11)
    bp = _bandpass(rng)
    return {f"p{s}": _partition(s, bp, rng) for s in (1, 2)}, bp


def test_b_recovers_the_injected_bandpass_per_channel(scans) -> None:
    parts, bp = scans
    table = assert_lazy(bandpass.solve, parts, refant="A00")
    sol = table[0].compute()
    assert sol.attrs[schema.ATTR_CAL_TYPE] == "B"
    assert dict(sol.sizes) == {"time": 1, "antenna_name": 7, "frequency": N_CHAN, "receptor": 2}
    np.testing.assert_array_equal(sol[schema.FREQUENCY].values, parts["p1"][schema.FREQUENCY])
    b = sol[schema.CALIBRATION_PARAMETER].values[0]
    sigma = sol[schema.PARAMETER_ERROR].values[0]
    err = np.abs(b - _expected(bp))
    # per channel: 10 integrations x 6 baselines of noise 0.02 sqrt(2) -> ~0.005 on |B| ~ 1.7
    assert sigma.mean() == pytest.approx(NOISE * np.sqrt(2 / 10 / 6) / np.sqrt(3.0), rel=0.35)
    assert err.max() < 6 * sigma.max()
    assert np.sqrt(np.mean((err / sigma) ** 2)) == pytest.approx(1.0, abs=0.35)
    assert (sol[schema.REFERENCE_ANTENNA].values == "A00").all()
    assert np.allclose(np.angle(b[0]), 0.0, atol=1e-12)


def test_solnorm_normalises_amplitude_and_phase(scans) -> None:
    parts, bp = scans
    sol = bandpass.solve(parts, refant="A00", solnorm=True)[0].compute()
    b = sol[schema.CALIBRATION_PARAMETER].values[0]
    np.testing.assert_allclose(np.sqrt(np.mean(np.abs(b) ** 2, axis=1)), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.angle(np.sum(b / np.abs(b), axis=1)), 0.0, atol=1e-12)
    expected = _expected(bp)
    expected = expected / np.sqrt(np.mean(np.abs(expected) ** 2, axis=1, keepdims=True))
    expected = expected / np.exp(1j * np.angle(np.sum(expected / np.abs(expected), axis=1,
                                                      keepdims=True)))  # fmt: skip
    assert np.abs(b - expected).max() < 0.02


def test_fillgaps_interpolates_short_inner_gaps_only() -> None:
    g = np.exp(1j * np.linspace(0, 3.0, 10))[None, None, :, None] * np.linspace(1, 2, 10)[
        None, None, :, None
    ]  # fmt: skip
    flag = np.zeros(g.shape, bool)
    flag[0, 0, [0, 3, 4, 6, 7, 8], 0] = True  # an edge channel, gaps of 2 and 3
    filled, left = bandpass.fill_gaps(np.where(flag, 1.0, g), flag, 2)
    assert list(np.flatnonzero(left[0, 0, :, 0])) == [0, 6, 7, 8]
    np.testing.assert_allclose(filled[0, 0, 3:5, 0], g[0, 0, 3:5, 0], rtol=1e-12)


def test_prior_gains_are_removed_and_applycal_flattens_the_band() -> None:
    """Time-variable gains (solved first with G per integration, applied on the fly) leave the
    bandpass alone; applying G then B returns the model in every channel."""
    rng = np.random.default_rng(12)
    # a small delay: G on the channel average is then antenna-based (a large one decorrelates
    # the average, which is why pipelines phase up on a few central channels)
    bp = _bandpass(rng, max_delay=0.01)
    gains = (1 + 0.2 * rng.normal(size=(5, 7, 2))) * np.exp(1j * rng.uniform(-3, 3, (5, 7, 2)))
    parts = {"p": _partition(1, bp, rng, gains=gains)}
    g_table = gain.solve(parts, solint="int", refant="A00", calmode="p")
    b_table = bandpass.solve(parts, refant="A00", gaintable=[g_table], solnorm=True)
    b = b_table[0][schema.CALIBRATION_PARAMETER].values[0]
    ratio = b / (bp * np.conj(bp[:1] / np.abs(bp[:1])))
    # what is left is one constant per antenna/receptor (the mean gain amplitude, normalised)
    spread = np.abs(ratio / ratio.mean(axis=1, keepdims=True) - 1)
    assert spread.max() < 0.03
    out = applycal.apply(parts["p"], [g_table, b_table], interp=["linear", "nearest"])
    corrected = out["VISIBILITY_CORRECTED"].values
    # amplitudes of G (phase-only) stay in: |V| = 3 |g_i||g_j| per integration, flat in frequency
    per_channel = np.abs(corrected).mean(axis=(0, 1, 3))
    assert np.ptp(per_channel) / per_channel.mean() < 0.02
    assert np.abs(np.angle(corrected)).max() < 0.1


def test_channel_with_no_data_is_flagged_and_errors() -> None:
    rng = np.random.default_rng(13)
    ds = _partition(1, _bandpass(rng), rng)
    flag = np.zeros(ds[schema.FLAG].shape, bool)
    flag[:, :, 5] = True
    ds[schema.FLAG] = ds[schema.FLAG].copy(data=da.from_array(flag))
    sol = bandpass.solve({"p": ds}, refant="A01")[0].compute()
    assert sol[schema.FLAG].values[0, :, 5].all()
    assert not np.delete(sol[schema.FLAG].values[0], 5, axis=1).any()
    filled = bandpass.solve({"p": ds}, refant="A01", fillgaps=1)[0].compute()
    assert not filled[schema.FLAG].values.any()
    with pytest.raises(gain.GaincalError, match="fillgaps"):
        bandpass.solve({"p": ds}, fillgaps=-1)
