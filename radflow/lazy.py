"""Blockwise dask layers over xarray variables, built in one step.

A recipe builds the same few operations for every partition of every EB, and on small
partitions building them costs more than running them. ``xr.apply_ufunc(dask="parallelized")``
aligns its arguments, transposes and broadcasts them with dask operations, tokenizes its
arguments, computes a meta and adds a layer per output: about 20 ms a call. :func:`apply_blocks`
does the same work in one layer whose tasks transpose and broadcast their blocks themselves
(plus one small layer per output), about 1 ms a call.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.highlevelgraph import HighLevelGraph


def _output(
    graph: HighLevelGraph,
    source: str,
    name: str,
    layer: dict[Any, Any],
    chunks: tuple[tuple[int, ...], ...],
    dtype: Any,
) -> da.Array:
    """The array of `layer` (tasks picking one result out of layer `source`'s tuples)."""
    out_graph = HighLevelGraph(
        {**graph.layers, name: layer}, {**graph.dependencies, name: {source}}
    )
    return da.Array(out_graph, name, chunks, meta=np.empty((0,) * len(chunks), dtype=dtype))


@dataclass(frozen=True)
class Output:
    """One output of :func:`apply_blocks`: its dims (in the order the variable gets), dtype and
    attributes. ``func`` returns it with the loop dims first, then its other dims in the order
    they have here."""

    dims: tuple[str, ...]
    dtype: Any
    attrs: Mapping[str, Any] | None = None


def _run_block(
    func: Callable[..., Any],
    layouts: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...],
    orders: tuple[tuple[int, ...], ...],
    *blocks: Any,
) -> tuple[np.ndarray, ...]:
    arranged = [
        np.expand_dims(np.transpose(b, axes), missing)
        for b, (axes, missing) in zip(blocks, layouts, strict=True)
    ]
    result = func(*arranged)
    results = result if isinstance(result, tuple) else (result,)
    return tuple(np.transpose(r, order) for r, order in zip(results, orders, strict=True))


def apply_blocks(
    func: Callable[..., Any],
    *args: xr.Variable | xr.DataArray,
    loop_dims: Sequence[str],
    core_dims: Sequence[Sequence[str]],
    outputs: Sequence[Output],
    sizes: Mapping[str, int] | None = None,
    chunks: Mapping[str, tuple[int, ...]] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    name: str = "apply-blocks",
) -> tuple[xr.Variable, ...]:
    """``xr.apply_ufunc(func, *args, dask="parallelized")`` for dims-aligned variables.

    ``func(*blocks, **kwargs)`` gets, per block of the loop dims, each argument with the loop dims
    first, in `loop_dims`' order (size 1 where the argument lacks one, except leading ones, which
    broadcasting supplies: as apply_ufunc passes them), then the argument's core dims in
    `core_dims`' order, whole; it returns one array per output (a tuple if several),
    the loop dims first, then the output's other dims in their order in ``Output.dims``.

    Parameters
    ----------
    *args : xr.Variable or xr.DataArray
        Dask-backed or in memory (sliced per block when building the graph). An argument
        chunked more coarsely than another along a loop dim is rechunked, and so is one whose
        core dims are in several chunks. DataArray coordinates are
        ignored: the caller aligns (partitions' variables are aligned by construction).
    loop_dims : sequence of str
        The dims iterated over, block by block.
    core_dims : sequence of sequences of str
        Per argument, the dims passed whole.
    outputs : sequence of Output
        The variables returned; a dim that is neither a loop dim nor an argument's dim takes its
        length from `sizes`.
    chunks : mapping, optional
        Chunks of loop dims that no dask-backed argument has (default: one chunk).
    kwargs : mapping, optional
        Keyword arguments of `func` (bound once, not traversed by dask).
    name : str
        Prefix of the layers' names.

    Returns
    -------
    tuple of xr.Variable
        One per output, dask-backed, chunked like the arguments along the loop dims.

    Raises
    ------
    ValueError
        If an argument has a dim that is neither a loop nor a core dim.
    """
    variables = [a.variable if isinstance(a, xr.DataArray) else a for a in args]
    if len(core_dims) != len(variables):
        raise ValueError(f"{name}: {len(variables)} arguments but {len(core_dims)} core_dims")
    loop = tuple(loop_dims)
    all_sizes: dict[str, int] = dict(sizes or {})
    chunks: dict[str, tuple[int, ...]] = dict(chunks or {})
    for var, core in zip(variables, core_dims, strict=True):
        for dim in var.dims:
            if dim not in loop and dim not in core:
                raise ValueError(f"{name}: argument dim {dim!r} is neither a loop nor a core dim")
        all_sizes.update(var.sizes)
        if var.chunks is None:
            continue
        for dim, dim_chunks in zip(var.dims, var.data.chunks, strict=True):
            # the most finely chunked argument sets a loop dim's chunks (as dask's unify_chunks)
            if dim not in core and len(dim_chunks) > len(chunks.get(dim, ())):
                chunks[dim] = dim_chunks
    for i, (var, core) in enumerate(zip(variables, core_dims, strict=True)):
        if var.chunks is None:
            continue
        wanted = {d: chunks.get(d, -1) for d in var.dims}
        have = dict(zip(var.dims, var.data.chunks, strict=True))
        if any(have[d] != c for d, c in wanted.items() if d not in core) or any(
            len(have[d]) > 1 for d in core
        ):
            variables[i] = var.chunk(wanted)
    loop_chunks = [chunks.get(d, (all_sizes[d],)) for d in loop]
    starts = [np.cumsum((0, *c)).tolist() for c in loop_chunks]

    layouts = []
    for var, core in zip(variables, core_dims, strict=True):
        arranged = [d for d in loop if d in var.dims] + list(core)
        present = [i for i, d in enumerate(loop) if d in var.dims]
        lead = present[0] if present else len(loop)
        missing = tuple(i - lead for i, d in enumerate(loop) if d not in var.dims and i > lead)
        layouts.append((tuple(var.dims.index(d) for d in arranged), missing))
    orders = []
    for out in outputs:
        produced = list(loop) + [d for d in out.dims if d not in loop]
        orders.append(tuple(produced.index(d) for d in out.dims))
    bound = partial(func, **kwargs) if kwargs else func
    head = (_run_block, bound, tuple(layouts), tuple(orders))

    token = uuid.uuid4().hex
    main = f"{name}-{token}"
    dask_args = [v.data for v in variables if v.chunks is not None]
    layer = {}
    for index in np.ndindex(*(len(c) for c in loop_chunks)):
        position = dict(zip(loop, index, strict=True))
        blocks: list[Any] = []
        for var in variables:
            if var.chunks is not None:
                blocks.append((var.data.name, *(position.get(d, 0) for d in var.dims)))
            else:
                where = tuple(
                    slice(*starts[loop.index(d)][position[d] : position[d] + 2])
                    if d in position
                    else slice(None)
                    for d in var.dims
                )
                blocks.append(np.asarray(var.data)[where])
        layer[(main, *index)] = (*head, *blocks)
    graph = HighLevelGraph.from_collections(main, layer, dependencies=dask_args)

    results = []
    for k, out in enumerate(outputs):
        out_name = f"{name}-out{k}-{token}"
        out_chunks = tuple(
            loop_chunks[loop.index(d)] if d in loop else (all_sizes[d],) for d in out.dims
        )
        out_layer = {}
        for index in np.ndindex(*(len(c) for c in loop_chunks)):
            position = dict(zip(loop, index, strict=True))
            out_index = tuple(position.get(d, 0) for d in out.dims)
            out_layer[(out_name, *out_index)] = (operator.getitem, (main, *index), k)
        array = _output(graph, main, out_name, out_layer, out_chunks, out.dtype)
        results.append(xr.Variable(out.dims, array, dict(out.attrs or {})))
    return tuple(results)


# Partial results added per task: a tree of this fan-in over many of them.
_SUM_FAN_IN = 16


def _add_partials(*partials: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Add tuples of arrays element by element, in order (as ``np.sum`` along a stacked axis)."""
    total = tuple(np.array(p, copy=True) for p in partials[0])
    for part in partials[1:]:
        for t, p in zip(total, part, strict=True):
            t += p
    return total


def sum_blocks(
    tasks: Sequence[tuple[Any, ...]],
    dependencies: Sequence[da.Array],
    *,
    finish: Callable[..., tuple[np.ndarray, ...]],
    outputs: Sequence[tuple[tuple[int, ...], Any]],
    name: str = "sum-blocks",
) -> tuple[da.Array, ...]:
    """Sum the partial results of `tasks`, then `finish` them into one-chunk arrays.

    A reduction over blocks built by hand, in a few layers whatever the number of blocks: what
    ``map_blocks``, ``stack`` and ``sum`` build per partition costs more to build than to run on
    the small per-interval sums that solvers need.

    Parameters
    ----------
    tasks : sequence of task tuples
        ``(callable, *arguments)``, the arguments including block keys of `dependencies`
        (``(array.name, *block_index)``); each returns a tuple of arrays, alike in shape across
        tasks. They are added in order, at most 16 per task (a tree over more).
    dependencies : sequence of dask arrays
        The arrays whose blocks the tasks read.
    finish : callable
        ``finish(total)`` -> the outputs (a tuple), from the tuple of sums.
    outputs : sequence of (shape, dtype)
        Of each array `finish` returns.

    Returns
    -------
    tuple of dask arrays
        One chunk each.
    """
    token = uuid.uuid4().hex
    layer: dict[Any, Any] = {}
    level = []
    for k, task in enumerate(tasks):
        key = (f"{name}-part-{token}", k)
        layer[key] = task
        level.append(key)
    depth = 0
    while len(level) > 1:
        depth += 1
        groups = [level[k : k + _SUM_FAN_IN] for k in range(0, len(level), _SUM_FAN_IN)]
        level = []
        for k, group in enumerate(groups):
            key = (f"{name}-add{depth}-{token}", k)
            layer[key] = (_add_partials, *group)
            level.append(key)
    done = f"{name}-{token}"
    layer[done] = (finish, level[0])
    graph = HighLevelGraph.from_collections(done, layer, dependencies=list(dependencies))
    arrays = []
    for k, (shape, dtype) in enumerate(outputs):
        out_name = f"{name}-out{k}-{token}"
        layer_k = {(out_name, *(0,) * len(shape)): (operator.getitem, done, k)}
        chunks = tuple((n,) for n in shape)
        arrays.append(_output(graph, done, out_name, layer_k, chunks, dtype))
    return tuple(arrays)
