"""radflow.lazy: apply_blocks against xr.apply_ufunc(dask="parallelized"), its reference, and
sum_blocks against numpy sums."""

from __future__ import annotations

from functools import partial

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from radflow.lazy import Output, apply_blocks, sum_blocks


def _kernel(data, flag, table, scale, *, offset):
    """data (t, a, f), flag (t, a, f), table (a, f, k) without the leading t, scale (t, 1)
    broadcast: returns the data plus the table's knot mean, its flags, and one value per
    (t, a) with a new trailing dim of length 3."""
    assert table.ndim == data.ndim  # (a, f, k): leading time axis left to broadcasting
    value = data * scale[..., None] + table.mean(axis=-1) + offset
    per_spectrum = np.stack([data.sum(-1), data.min(-1), data.max(-1)], axis=-1)
    return value, flag | (value < 0), per_spectrum


def _inputs(rng: np.random.Generator, time_chunks: int = 3):
    t, a, f, k = 7, 2, 5, 4
    data = xr.DataArray(rng.normal(size=(t, a, f)), dims=("time", "antenna", "frequency"))
    flag = xr.DataArray(rng.random((t, a, f)) < 0.2, dims=data.dims)
    table = xr.DataArray(rng.normal(size=(a, f, k)), dims=("antenna", "frequency", "knot"))
    scale = xr.DataArray(rng.normal(size=t), dims="time")
    return (
        data.chunk({"time": time_chunks}),
        flag.chunk({"time": time_chunks}),
        table.chunk(-1),
        scale,  # in memory: sliced per block
    )


def _reference(data, flag, table, scale):
    value, out_flag, per = xr.apply_ufunc(
        _kernel,
        data,
        flag,
        table,
        scale,
        input_core_dims=[["frequency"], ["frequency"], ["frequency", "knot"], []],
        output_core_dims=[["frequency"], ["frequency"], ["stat"]],
        dask="parallelized",
        output_dtypes=[float, bool, float],
        dask_gufunc_kwargs={"output_sizes": {"stat": 3}},
        kwargs={"offset": 0.5},
    )
    return (
        value.transpose("time", "antenna", "frequency"),
        out_flag.transpose("time", "antenna", "frequency"),
        per,
    )


def _blocks(data, flag, table, scale, func=_kernel):
    return apply_blocks(
        func,
        data,
        flag,
        table,
        scale,
        loop_dims=("time", "antenna"),
        core_dims=[["frequency"], ["frequency"], ["frequency", "knot"], []],
        outputs=[
            Output(("time", "antenna", "frequency"), np.float64, {"units": "K"}),
            Output(("time", "antenna", "frequency"), bool),
            Output(("time", "antenna", "stat"), np.float64),
        ],
        sizes={"stat": 3},
        kwargs={"offset": 0.5},
        name="test",
    )


@pytest.mark.parametrize("time_chunks", [1, 3, 7])
def test_equals_apply_ufunc_with_broadcasting_and_new_dims(time_chunks: int) -> None:
    inputs = _inputs(np.random.default_rng(time_chunks), time_chunks)
    expected = [x.compute() for x in _reference(*inputs)]
    got = _blocks(*inputs)
    for e, g in zip(expected, got, strict=True):
        assert isinstance(g, xr.Variable)
        assert g.dims == e.dims
        assert g.chunks[0] == inputs[0].chunks[0]
        np.testing.assert_array_equal(g.values, e.values)
    assert got[0].attrs == {"units": "K"}


def test_coarser_and_core_chunked_arguments_are_rechunked() -> None:
    data, flag, table, scale = _inputs(np.random.default_rng(5), 2)
    expected = [x.compute() for x in _reference(data, flag, table, scale)]
    # flag in one time chunk, the table's knots in two: both are made to fit
    got = _blocks(data, flag.chunk({"time": -1}), table.chunk({"knot": 2}), scale)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(g.values, e.values)
        assert g.chunks[0] == data.chunks[0]


def test_building_computes_nothing() -> None:
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return _kernel(*args, **kwargs)

    data, flag, table, scale = _inputs(np.random.default_rng(1))
    value, _, _ = _blocks(data, flag, table, scale, func=counting)
    assert calls == []
    value.values  # noqa: B018 - the compute
    assert len(calls) == len(data.chunks[0]) * len(data.chunks[1])


def test_a_dim_neither_loop_nor_core_is_refused() -> None:
    data, flag, table, scale = _inputs(np.random.default_rng(2))
    with pytest.raises(ValueError, match="'knot' is neither a loop nor a core dim"):
        apply_blocks(
            _kernel,
            data,
            flag,
            table,
            scale,
            loop_dims=("time", "antenna"),
            core_dims=[["frequency"], ["frequency"], ["frequency"], []],
            outputs=[Output(("time", "antenna", "frequency"), np.float64)],
        )


def _chunk_sums(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return block.sum(axis=0), (block**2).sum(axis=0)


def _mean_and_rms(sums: tuple[np.ndarray, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    total, squares = sums
    return total / n, np.sqrt(squares / n)


@pytest.mark.parametrize("n_chunks", [1, 16, 17, 300])  # one task, one add, a two-level tree
def test_sum_blocks_adds_every_chunk_once_then_finishes(n_chunks: int) -> None:

    rng = np.random.default_rng(n_chunks)
    values = rng.normal(size=(3 * n_chunks, 4))
    x = da.from_array(values, chunks=(3, 4))
    calls = []

    def counted(block):
        calls.append(1)
        return _chunk_sums(block)

    tasks = [(counted, (x.name, i, 0)) for i in range(n_chunks)]
    mean, rms = sum_blocks(
        tasks,
        [x],
        finish=partial(_mean_and_rms, n=values.shape[0]),
        outputs=[((4,), np.float64), ((4,), np.float64)],
        name="test-sum",
    )
    assert calls == []  # building computed nothing
    assert mean.chunks == ((4,),)
    got_mean, got_rms = da.compute(mean, rms, scheduler="sync")
    assert len(calls) == n_chunks
    np.testing.assert_allclose(got_mean, values.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(got_rms, np.sqrt((values**2).mean(axis=0)), rtol=1e-12)
