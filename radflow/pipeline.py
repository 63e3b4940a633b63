"""Run a recipe (``graphs/*.yaml``) over one or many execution blocks (EBs) on one Dask client.

A recipe is data::

    name: alma_sd
    description: ...
    steps:
      - step: tsys            # a recipe action (radflow.actions)
        params: {spwmap: null}
      - step: baseline
        params: {order: 1}

:func:`run` takes stores or MeasurementSets. An MS is converted on the fly: its conversion graph
and the recipe's graph are one graph (the recipe reads the partitions the conversion writes, so
the result is the same as ``radflow convert`` then ``radflow run``). Every block's graph is
built first (building computes nothing); then all of them are submitted to the Dask client
together, one future per write, and each block is sealed and swapped into its store atomically
(:func:`radflow.store.begin_update`) as soon as its own writes are done. A block whose graph
cannot be built, or whose computation fails (a solver error, a bad chunk), is reported with its
error and the other blocks are still written. Without a client (in-process threads) the blocks
are computed one after another, each block's graph in parallel.

Data groups go into the partitions, solutions and per-spectrum tables into the store's
``calibration`` group, and baseline tables beside the store as CASA-style ``.csv`` and ``.txt``.
The store's root attribute ``radflow_run`` records the recipe (steps and parameters) and hashes
of it and of the inputs (store identity, files named by parameters); a re-run with the same
hashes and complete outputs skips the block unless ``force``. Otherwise the previous run's
groups are removed in the update copy first, so the result equals a first run. Each block gets
``<stem>.radflow.json`` beside its store and the run ``radflow-run-<UTC time>.json``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
import yaml
import zarr

import radflow
import radflow.store as store
from radflow import schema
from radflow.actions import ActionError, ExecutionBlock, get_action, parameters

CALIBRATION_GROUP = schema.CALIBRATION_GROUP


class RecipeError(ValueError):
    """A recipe file or a ``--set`` override is invalid."""


@dataclass
class RecipeStep:
    step: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    name: str
    description: str
    steps: list[RecipeStep]
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "steps": [{"step": s.step, "params": s.params} for s in self.steps],
        }


def _recipe_text(path_or_name: str | os.PathLike) -> tuple[str, str]:
    path = Path(path_or_name)
    if path.exists():
        return path.read_text(), str(path)
    name = path.name if path.suffix == ".yaml" else f"{path.name}.yaml"
    packaged = resources.files("radflow.graphs") / name
    if packaged.is_file():
        return packaged.read_text(), f"radflow.graphs/{name}"
    raise RecipeError(f"{path_or_name}: no such recipe file (nor a packaged recipe {name!r})")


def load_recipe(path_or_name: str | os.PathLike, overrides: Iterable[str] = ()) -> Recipe:
    """Read and validate a recipe; apply ``step.param=value`` overrides (values are YAML).

    A path that does not exist is looked up among the packaged recipes (``alma_sd``).

    Raises
    ------
    RecipeError
        Unknown step, unknown parameter, malformed file or override; the message names it.
    """
    text, source = _recipe_text(path_or_name)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("steps"), list):
        raise RecipeError(f"{source}: a recipe is a mapping with a 'steps' list")
    unknown = set(raw) - {"name", "description", "steps"}
    if unknown:
        raise RecipeError(f"{source}: unknown recipe key(s) {sorted(unknown)}")
    steps = []
    for k, entry in enumerate(raw["steps"]):
        if not isinstance(entry, dict) or "step" not in entry:
            raise RecipeError(f"{source}: steps[{k}] must be a mapping with a 'step' key")
        extra = set(entry) - {"step", "params"}
        if extra:
            raise RecipeError(f"{source}: steps[{k}] has unknown key(s) {sorted(extra)}")
        steps.append(RecipeStep(str(entry["step"]), dict(entry.get("params") or {})))
    recipe = Recipe(str(raw.get("name", Path(source).stem)), str(raw.get("description", "")),
                    steps, source)  # fmt: skip
    for override in overrides:
        _apply_override(recipe, override)
    for s in recipe.steps:
        try:
            allowed = parameters(s.step)
        except ActionError as exc:
            raise RecipeError(f"{source}: {exc}") from exc
        bad = sorted(set(s.params) - set(allowed))
        if bad:
            raise RecipeError(
                f"{source}: step {s.step!r} has no parameter(s) {bad}; it takes {sorted(allowed)}"
            )
    return recipe


def _apply_override(recipe: Recipe, override: str) -> None:
    key, sep, value = override.partition("=")
    step_name, dot, param = key.strip().partition(".")
    if not sep or not dot or not param:
        raise RecipeError(f"--set {override!r}: expected STEP.PARAM=VALUE (e.g. baseline.order=2)")
    # a step's own name (its `name` parameter, e.g. the table a gaincal makes) picks that step
    # alone; a step type (gaincal) sets the parameter in every step of that type
    matches = [s for s in recipe.steps if s.params.get("name") == step_name]
    matches = matches or [s for s in recipe.steps if s.step == step_name]
    if not matches:
        named = [f"{s.params['name']} ({s.step})" for s in recipe.steps if "name" in s.params]
        raise RecipeError(
            f"--set {override!r}: the recipe has no step {step_name!r} "
            f"(steps: {', '.join(s.step for s in recipe.steps)}"
            + (f"; named: {', '.join(named)}" if named else "")
            + ")"
        )
    for s in matches:
        s.params[param] = yaml.safe_load(value)


@dataclass
class BlockResult:
    """What happened to one execution block."""

    path: Path  # the store (for an MS: the store it is converted to)
    status: str  # schema.STATUS_DONE, STATUS_SKIPPED or STATUS_FAILED
    seconds: float = 0.0
    error: str | None = None
    partitions: int = 0
    groups: list[str] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: Path | None = None  # what was given: the store, or the MS
    converted: bool = False  # the MS was converted in this run
    build_seconds: float = 0.0
    compute_seconds: float = 0.0
    recipe_sha256: str = ""
    inputs_sha256: str = ""
    summary: Path | None = None  # <stem>.radflow.json

    def as_dict(self) -> dict[str, Any]:
        return {
            "execution_block": str(self.source or self.path),
            "store": str(self.path),
            "status": self.status,
            "error": self.error,
            "converted": self.converted,
            "seconds": round(self.seconds, 3),
            "build_seconds": round(self.build_seconds, 3),
            "compute_seconds": round(self.compute_seconds, 3),
            "partitions": self.partitions,
            "groups": list(self.groups),
            "tables": [str(t) for t in self.tables],
            "notes": list(self.notes),
            schema.RUN_RECIPE_SHA256: self.recipe_sha256,
            schema.RUN_INPUTS_SHA256: self.inputs_sha256,
        }


class RunResults(list):
    """The :class:`BlockResult` of every input, in order; ``summary_path`` is the run's JSON."""

    summary_path: Path | None = None


def build(recipe: Recipe, path: str | os.PathLike, tree: Any = None) -> ExecutionBlock:
    """Add every recipe step to one store, lazily: nothing is computed.

    `tree` is the store opened with :func:`radflow.open` (opened here if not given; opening
    reads the small metadata, which is the only compute before the run's). A store a recipe
    already ran on is seen without that run's results (:func:`base_view`).
    """
    tree = base_view(store.open(path) if tree is None else tree)
    eb = ExecutionBlock(
        path=store.location(path),
        tree=tree,
        partitions={
            n: node.to_dataset(inherit=False) for n, node in store.partitions(tree).items()
        },
    )
    for s in recipe.steps:
        get_action(s.step)(eb, **s.params)
    return eb


# ---- hashes: what a run ran, on what ----


def _canonical(value: Any) -> Any:
    """JSON-able, order-independent form of parameters and attrs (dict keys become strings)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_canonical(v) for v in value]
        return sorted(items, key=json.dumps) if isinstance(value, set | frozenset) else items
    if isinstance(value, np.ndarray):
        return _canonical(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _sha256_json(value: Any) -> str:
    text = json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def input_files(recipe: Recipe) -> dict[str, str]:
    """``{parameter value: sha256}`` of every parameter that names an existing file."""
    files: dict[str, str] = {}

    def visit(value: Any) -> None:
        if isinstance(value, str | os.PathLike):
            text = os.fspath(value)
            looks_like_path = os.sep in text or Path(text).suffix != ""
            if text and looks_like_path and Path(text).is_file():
                files[text] = _sha256_file(Path(text))
        elif isinstance(value, Mapping):
            for v in value.values():
                visit(v)
        elif isinstance(value, list | tuple):
            for v in value:
                visit(v)

    for s in recipe.steps:
        visit(s.params)
    return files


_IDENTITY_ROOT_ATTRS = (schema.ATTR_SOURCE_MS, schema.ATTR_RADFLOW_VERSION)


def store_identity(tree: xr.DataTree) -> dict[str, Any]:
    """What identifies a store's input data, without reading bulk data: the MS it came from
    (path, rows, columns), the converter's version, and every partition's ``partition_info``
    and base variables (name, dtype, shape, chunks).

    Taken from the store as converted (see :func:`base_view`), so earlier runs do not change it.
    """
    parts = {}
    for name, node in sorted(store.partitions(tree).items()):
        ds = node.to_dataset(inherit=False)
        parts[name] = {
            "partition_info": ds.attrs.get(schema.ATTR_PARTITION_INFO),
            "variables": {
                v: [str(ds[v].dtype), list(ds[v].shape), [list(c) for c in ds[v].chunks or ()]]
                for v in sorted(map(str, ds.data_vars))
            },
        }
    return {"root": {k: tree.attrs.get(k) for k in _IDENTITY_ROOT_ATTRS}, "partitions": parts}


def run_record(recipe: Recipe, identity: Mapping[str, Any]) -> dict[str, Any]:
    """The ``radflow_run`` root attribute of a store `recipe` runs on (without the finishing
    keys): the canonical steps and the two hashes the skip decision compares."""
    steps = _canonical(recipe.as_dict()["steps"])
    files = input_files(recipe)
    return {
        schema.RUN_RECIPE: recipe.name,
        schema.RUN_STEPS: steps,
        schema.RUN_RECIPE_SHA256: _sha256_json(steps),
        schema.RUN_INPUTS_SHA256: _sha256_json({"store": identity, "files": files}),
        schema.RUN_INPUT_FILES: files,
    }


# ---- a store without the results of an earlier run ----


def _restored_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    added = attrs.get(schema.ATTR_RUN_ADDED) or {}
    drop = {schema.ATTR_RUN_ADDED, *(added.get(schema.RUN_ATTRS_ADDED) or [])}
    out = {k: v for k, v in attrs.items() if k not in drop}
    out.update(added.get(schema.RUN_ATTRS_BEFORE) or {})
    return out


def base_view(tree: xr.DataTree) -> xr.DataTree:
    """`tree` without what an earlier run added (recorded in ``radflow_run`` and each
    partition's ``radflow_run_added``): what a first run sees. Lazy; reads nothing."""
    prior = tree.attrs.get(schema.ATTR_RUN) or {}
    parts = store.partitions(tree)
    if not prior and not any(schema.ATTR_RUN_ADDED in n.attrs for n in parts.values()):
        return tree
    calibration = set(prior.get(schema.RUN_CALIBRATION_GROUPS) or [])
    nodes: dict[str, xr.Dataset] = {}
    for node in tree.subtree:
        rel = node.path.strip("/").split("/")
        if rel[0] == CALIBRATION_GROUP and len(rel) > 1 and rel[1] in calibration:
            continue
        ds = node.to_dataset(inherit=False)
        if node.path == "/":
            ds.attrs = {k: v for k, v in ds.attrs.items() if k != schema.ATTR_RUN}
        elif len(rel) == 1 and rel[0] in parts and schema.ATTR_RUN_ADDED in ds.attrs:
            added = ds.attrs[schema.ATTR_RUN_ADDED].get(schema.RUN_ADDED_VARIABLES) or []
            attrs = _restored_attrs(ds.attrs)
            ds = ds.drop_vars([v for v in added if v in ds.variables])
            ds.attrs = attrs
        nodes[node.path] = ds
    cal = f"/{CALIBRATION_GROUP}"
    empty = cal in nodes and not nodes[cal].variables and not nodes[cal].attrs
    if empty and not any(p.startswith(cal + "/") for p in nodes):
        del nodes[cal]  # the run made it; a first run finds no calibration group
    return xr.DataTree.from_dict(nodes)


def _strip_previous_run(tmp: Path, prior: Mapping[str, Any]) -> None:
    """Remove an earlier run's results from the update copy `tmp` (arrays, attrs, solution
    groups) before new ones are written: the copy's chunk files are hard links to the store's,
    so nothing is ever written over them."""
    with store.quiet_zarr_spec_warnings():
        root = zarr.open_group(store.zarr_url(tmp), mode="r+")
        for _, group in root.groups():
            added = group.attrs.get(schema.ATTR_RUN_ADDED)
            if not added:
                continue
            for var in added.get(schema.RUN_ADDED_VARIABLES) or []:
                if var in group:
                    del group[var]
            group.attrs.put(_restored_attrs(dict(group.attrs)))
        if CALIBRATION_GROUP in root:
            calibration = root[CALIBRATION_GROUP]
            for key in prior.get(schema.RUN_CALIBRATION_GROUPS) or []:
                if key in calibration:
                    del calibration[key]
            if not list(calibration.keys()) and not dict(calibration.attrs):
                del root[CALIBRATION_GROUP]
        attrs = dict(root.attrs)
        if attrs.pop(schema.ATTR_RUN, None) is not None:
            root.attrs.put(attrs)


# ---- building the writes of one block ----

_ARRAY_ROLES = (schema.ROLE_DATA, schema.ROLE_FLAG, schema.ROLE_WEIGHT)


def _writes(eb: ExecutionBlock, tmp: Path) -> list[Any]:
    """The dask writes of everything the recipe added to `eb`, into the update copy `tmp`.

    Each written partition's attrs get ``radflow_run_added`` (the new variables and the attrs
    they changed), so a later run can undo exactly this run's additions.
    """
    writes = []
    base = {n: node.to_dataset(inherit=False) for n, node in store.partitions(eb.tree).items()}
    for name, groups in eb.new_groups.items():
        ds = eb.partitions[name]
        before = base[name]
        roles = ds.attrs[schema.ATTR_DATA_GROUPS]
        names = sorted(
            {v for g in groups for r, v in roles[g].items() if r in _ARRAY_ROLES and v in ds}
            - set(map(str, before.variables))  # shared, unchanged variables are not rewritten
        )
        attrs = dict(ds.attrs)
        # groups made only for use inside the graph (setjy's model) are not stored: keep the
        # store's own groups and the new ones in the data_groups attribute
        stored = set(before.attrs.get(schema.ATTR_DATA_GROUPS, {})) | set(groups)
        attrs[schema.ATTR_DATA_GROUPS] = {g: r for g, r in roles.items() if g in stored}
        attrs[schema.ATTR_RUN_ADDED] = {
            schema.RUN_ADDED_VARIABLES: names,
            schema.RUN_ATTRS_BEFORE: {
                k: _canonical(v)
                for k, v in before.attrs.items()
                if k in attrs and _canonical(attrs[k]) != _canonical(v)
            },
            schema.RUN_ATTRS_ADDED: sorted(k for k in ds.attrs if k not in before.attrs),
        }
        writes.append(store.add_variables(tmp, name, ds[names].assign_attrs(attrs)))
    for key, solution in {**eb.solutions, **eb.tables}.items():
        writes.append(store.add_group(tmp, f"{CALIBRATION_GROUP}/{key}", solution))
    return writes


def _open_unsealed(tmp: Path, after: Any) -> xr.DataTree:
    """The store being converted at `tmp` (its metadata, coordinates and sub-datasets are
    written when the conversion graph is built), with every bulk array made to wait for the
    conversion graph `after`: the recipe then reads exactly what the conversion wrote."""
    from dask.graph_manipulation import bind

    # Opened through the consolidated metadata the converter wrote, as radflow.open opens the
    # finished store: the same node and variable order, so the recipe's results are the same as
    # on the finished store. It is dropped before the writes (as begin_update does).
    with store.quiet_zarr_spec_warnings():
        tree = store.open_tree(tmp)
    store.drop_consolidated(tmp)
    nodes = {}
    for node in tree.subtree:
        ds = node.to_dataset(inherit=False)
        lazy = {
            v: ds[v].copy(data=bind(ds[v].data, after))
            for v in ds.data_vars
            if dask.is_dask_collection(ds[v].data)
        }
        nodes[node.path] = ds.assign(lazy) if lazy else ds
    return xr.DataTree.from_dict(nodes)


def _is_ms(path: Path) -> bool:
    if (path / "zarr.json").exists():
        return False
    return (path / "table.dat").exists() or path.name.lower().endswith(".ms")


def output_store(ms_path: str | os.PathLike, outdir: str | os.PathLike | None = None) -> Path:
    """The store an MS input is converted to: ``<name>.ps.zarr`` beside it, or in `outdir`."""
    from radflow.converters.msv2_to_store import default_store_path

    out = default_store_path(ms_path)
    return store.location(outdir) / out.name if outdir is not None else out


def summary_path(store_path: str | os.PathLike) -> Path:
    """``<dir>/<stem>.radflow.json`` for the store ``<dir>/<stem>.ps.zarr``."""
    p = store.location(store_path)
    stem = p.name.removesuffix(".zarr").removesuffix(".ps")
    return p.with_name(stem + schema.RUN_SUMMARY_SUFFIX)


def _write_json(path: Path, data: Any) -> None:
    store.write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _remove_stale_temporaries(path: Path, result: BlockResult) -> None:
    """Remove the hidden copies an interrupted run left beside `path` (``.<name>.tmp-*``)."""
    for stale in sorted(path.parent.glob(f".{path.name}.tmp-*")) + sorted(
        path.parent.glob(f".{path.name}.old-*")
    ):
        store.remove_tree(stale)
        result.notes.append(f"removed {stale.name}, left by an interrupted run")


def _is_complete(prior: Mapping[str, Any] | None, record: Mapping[str, Any], path: Path) -> dict:
    """The earlier run's JSON summary if its outputs are complete and were made by the same
    recipe from the same inputs; otherwise an empty dict."""
    if not prior:
        return {}
    keys = (schema.RUN_RECIPE_SHA256, schema.RUN_INPUTS_SHA256)
    if any(prior.get(k) != record[k] for k in keys):
        return {}
    try:
        previous = json.loads(summary_path(path).read_text())
    except (OSError, ValueError):
        return {}
    if previous.get("status") != schema.STATUS_DONE or any(
        previous.get(k) != record[k] for k in keys
    ):
        return {}
    if not all(store.location(t).exists() for t in previous.get("tables") or []):
        return {}
    return previous


@dataclass
class _Block:
    """One block on its way through a run."""

    result: BlockResult
    eb: ExecutionBlock | None = None
    tmp: Path | None = None
    pending: Any = None  # converters' PendingStore when the MS is converted in this run
    writes: list[Any] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    calibration_keys: list[str] = field(default_factory=list)
    own_summary: bool = True  # write <stem>.radflow.json for this block

    def fail(self, exc: BaseException) -> None:
        if self.result.error is None:
            self.result.error = f"{type(exc).__name__}: {exc}"

    def abort(self) -> None:
        if self.pending is not None:
            self.pending.abort()
        elif self.tmp is not None:
            store.abort_output(self.tmp)
        self.pending = self.tmp = None


def _prepare(
    recipe: Recipe,
    given: str | os.PathLike,
    *,
    force: bool,
    outdir: Path | None,
    convert_options: Any,
    taken: set[Path],
) -> _Block:
    """Open (or start converting) one input and build its writes; never raises."""
    start = time.perf_counter()
    source = store.location(given)
    result = BlockResult(path=source, status=schema.STATUS_FAILED, source=source)
    block = _Block(result)
    try:
        is_ms = _is_ms(source)
        if is_ms and store.is_url(source):
            raise ValueError(
                f"{source}: a MeasurementSet is read by casacore from a file system, not from "
                "an object store; give its local path (--outdir may be an s3:// URL)"
            )
        path = output_store(source, outdir) if is_ms else source
        result.path = path
        resolved = path.resolve()
        if resolved in taken:
            block.own_summary = False  # the other block's JSON summary stays
            raise ValueError(f"{path}: the same store is given twice in one run")
        taken.add(resolved)
        pending = None
        if is_ms:
            if (path / "zarr.json").exists():
                result.notes.append(
                    f"using {path}, converted from {source.name} earlier "
                    "(radflow convert --overwrite converts again)"
                )
            elif not source.exists():
                raise FileNotFoundError(f"{source}: no such MeasurementSet")
            else:
                from radflow.converters.msv2_to_store import prepare

                if not store.is_url(path):
                    path.parent.mkdir(parents=True, exist_ok=True)
                _remove_stale_temporaries(path, result)
                pending = prepare(source, path, options=convert_options)
                block.pending, block.tmp = pending, pending.tmp
                result.converted = True

        if pending is not None:
            tree = _open_unsealed(pending.tmp, pending.graph)
            prior: Mapping[str, Any] = {}
        else:
            _remove_stale_temporaries(path, result)
            tree = store.open(path)
            prior = tree.attrs.get(schema.ATTR_RUN) or {}
        base = base_view(tree)
        block.record = run_record(recipe, store_identity(base))
        result.recipe_sha256 = block.record[schema.RUN_RECIPE_SHA256]
        result.inputs_sha256 = block.record[schema.RUN_INPUTS_SHA256]
        previous = {} if force else _is_complete(prior, block.record, path)
        if previous:
            result.status = schema.STATUS_SKIPPED
            result.partitions = int(previous.get("partitions") or 0)
            result.groups = list(previous.get("groups") or [])
            result.tables = [store.location(t) for t in previous.get("tables") or []]
            result.notes.append(
                "skipped: outputs complete, same recipe and inputs (--force runs it again)"
            )
            result.build_seconds = time.perf_counter() - start
            return block
        if prior:
            result.notes.append(
                "the results of the previous run (recipe "
                f"{prior.get(schema.RUN_RECIPE)!r}, {prior.get(schema.RUN_FINISHED_UTC)}) are "
                "replaced" + (" (--force)" if force else " (recipe or inputs changed)")
            )
        eb = build(recipe, path, base)
        if pending is None:
            block.tmp = store.begin_update(path)
            _strip_previous_run(block.tmp, prior)
        block.eb = eb
        block.calibration_keys = sorted({**eb.solutions, **eb.tables})
        block.writes = ([pending.graph] if pending is not None else []) + _writes(eb, block.tmp)
    except Exception as exc:  # one block's bad input must not stop the others
        block.fail(exc)
        block.abort()
        block.writes = []
    result.build_seconds = time.perf_counter() - start
    return block


# ---- computing: one future per write, all blocks at once ----


class _Bars:
    """Rich progress bars: the whole run and one per block."""

    def __init__(self, enabled: bool, console: Any = None):
        self.progress = None
        self.tasks: dict[int, Any] = {}
        self._counts: dict[int, tuple[int, int]] = {}
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.total = self.progress.add_task("[bold]all blocks", total=None)

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None and self.tasks:
            self.progress.stop()

    def add(self, block: _Block) -> None:
        """A bar for `block` (the display starts with the first block that has work)."""
        if self.progress is None:
            return
        if not self.tasks:
            self.progress.start()
        self.tasks[id(block)] = self.progress.add_task(block.result.path.name, total=None)

    def update(self, block: _Block, done: int, total: int) -> None:
        if self.progress is None:
            return
        self._counts[id(block)] = (done, total)
        self.progress.update(self.tasks[id(block)], completed=done, total=total)
        self.progress.update(
            self.total,
            completed=sum(d for d, _ in self._counts.values()),
            total=sum(t for _, t in self._counts.values()),
        )

    def dask_callback(self, block: _Block) -> Any:
        """A local-scheduler callback advancing `block`'s bar task by task."""
        from dask.callbacks import Callback

        bars = self

        class _Tasks(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):  # noqa: ANN001
                done = len(state["finished"])
                total = sum(len(state[k]) for k in ("ready", "waiting", "running")) + done
                bars.update(block, done, total)

        return _Tasks()


def _compute(
    blocks: Iterable[_Block],
    client: Any,
    progress: bool,
    finalize: Callable[[_Block], None],
    console: Any = None,
) -> None:
    """Compute the writes of every block; call ``finalize(block)`` as soon as a block's own
    writes are done (or failed: the error is in ``block.result.error``). Errors of one block
    never stop the others; an error raised from here (the client itself failed) is fatal.

    `blocks` may be a generator that prepares each block when asked for it: on a cluster, a
    block's writes are submitted as soon as it is prepared, so the workers compute the first
    blocks while the driver builds the graphs of the next ones (and finalizes those done).
    """
    with _Bars(progress, console) as bars, store.quiet_zarr_spec_warnings():
        if client is None:
            for b in blocks:
                if not b.writes:
                    continue
                bars.add(b)
                start = time.perf_counter()
                callback = bars.dask_callback(b) if bars.progress is not None else None
                try:
                    if callback is not None:
                        with callback:
                            dask.compute(*b.writes)
                    else:
                        dask.compute(*b.writes)
                except Exception as exc:  # this block failed at compute time
                    b.fail(exc)
                b.result.compute_seconds = time.perf_counter() - start
                finalize(b)
            return

        from distributed import as_completed

        pending = as_completed()
        owner: dict[Any, _Block] = {}
        remaining: dict[int, int] = {}
        submitted: dict[int, float] = {}

        def settle(future: Any) -> None:
            b = owner.pop(future.key)
            # "lost": it finished, then the worker holding its result (a count) died; the
            # writes it stands for are done all the same
            if future.status == "error":
                b.fail(future.exception())
            elif future.status not in ("finished", "lost"):
                b.fail(RuntimeError(f"a write of {b.result.path} was {future.status}"))
            remaining[id(b)] -= 1
            bars.update(b, len(b.writes) - remaining[id(b)], len(b.writes))
            if remaining[id(b)] == 0:
                b.result.compute_seconds = time.perf_counter() - submitted[id(b)]
                finalize(b)

        for b in blocks:
            if not b.writes:
                continue
            bars.add(b)
            submitted[id(b)] = time.perf_counter()
            futures = client.compute(b.writes)
            owner.update({f.key: b for f in futures})
            remaining[id(b)] = len(futures)
            bars.update(b, 0, len(b.writes))
            pending.update(futures)
            for future in pending.next_batch(block=False):
                settle(future)
        for future in pending:
            settle(future)


def _now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _finalize(block: _Block) -> None:
    """Seal and swap in a computed block, write its tables and its JSON summary; or discard
    its temporary copy if it failed. Never raises."""
    with dask.config.set(scheduler="threads"):  # small reads, in the driver
        _seal(block)
    block.eb = None
    block.writes = []
    _write_block_summary(block.result)


def _seal(block: _Block) -> None:
    from radflow.converters.baseline_table import write_baseline_tables

    result, eb = block.result, block.eb
    if result.error is None and eb is not None:
        try:
            record = {
                **block.record,
                schema.RUN_CALIBRATION_GROUPS: block.calibration_keys,
                schema.RUN_FINISHED_UTC: _now_utc(),
                schema.RUN_RADFLOW_VERSION: radflow.__version__,
            }
            with store.quiet_zarr_spec_warnings():
                root = zarr.open_group(store.zarr_url(block.tmp), mode="r+")
                root.attrs[schema.ATTR_RUN] = record
            if block.pending is not None:
                block.pending.finish(rescan=True)
            else:
                store.finish_update(block.tmp, eb.path)
            block.pending = block.tmp = None
            result.partitions = len(eb.new_groups)
            result.groups = sorted({g for gs in eb.new_groups.values() for g in gs})
            result.notes.extend(eb.notes)
            if eb.tables:
                # one partition's results in memory at a time, whatever the size of the EB
                tables = (
                    store.load_group(eb.path, f"{CALIBRATION_GROUP}/{key}")
                    for key in sorted(eb.tables)
                )
                stem = eb.path.with_name(eb.path.name.removesuffix(".zarr").removesuffix(".ps"))
                result.tables = write_baseline_tables(tables, store.location(f"{stem}.baseline"))
            for export in eb.exports:
                result.tables.extend(export(eb.path))
            result.status = schema.STATUS_DONE
        except Exception as exc:
            block.fail(exc)
    if result.error is not None:
        result.status = schema.STATUS_FAILED
        block.abort()
    result.seconds = result.build_seconds + result.compute_seconds


def _write_block_summary(result: BlockResult) -> None:
    if not result.path.parent.is_dir() or result.status == schema.STATUS_SKIPPED:
        return
    path = summary_path(result.path)
    try:
        _write_json(path, {**result.as_dict(), "finished_utc": _now_utc()})
    except OSError as exc:
        result.notes.append(f"could not write {path}: {exc}")
        return
    result.summary = path


def run(
    recipe: Recipe,
    stores: Sequence[str | os.PathLike],
    *,
    client: Any = None,
    progress: bool = True,
    force: bool = False,
    outdir: str | os.PathLike | None = None,
    convert_options: Any = None,
    summary_dir: str | os.PathLike | None = None,
    write_summary: bool = True,
    console: Any = None,
) -> RunResults:
    """Reduce every input with `recipe` on one Dask client; write each block atomically.

    Parameters
    ----------
    recipe
        From :func:`load_recipe`.
    stores
        radflow stores, or MeasurementSets (converted in the same graph to ``<name>.ps.zarr``
        beside them or in `outdir`; an MS whose store exists uses that store).
    client
        A ``distributed.Client`` (each block is submitted as soon as its graph is built, so
        the workers compute while the next blocks are prepared), or None for in-process
        threads (blocks one after another).
    progress
        Rich progress bars: the whole run and one per block.
    force
        Run blocks whose outputs are complete and up to date too (they are skipped otherwise).
    summary_dir
        Where ``radflow-run-<UTC time>.json`` goes (default: `outdir`, else the directory of the
        first block's store); ``write_summary=False`` writes none.

    Returns
    -------
    RunResults
        One :class:`BlockResult` per input, in order (status done, skipped or failed); its
        ``summary_path`` is the run's JSON summary. Blocks that fail (bad input, a solver error
        while computing) are reported and leave their store as it was; the others are written.
    """
    started = _now_utc()
    t0 = time.perf_counter()
    outdir_path = store.location(outdir) if outdir is not None else None
    taken: set[Path] = set()
    blocks: list[_Block] = []

    def prepared() -> Iterator[_Block]:
        for s in stores:
            # Opening stores and building graphs reads only small metadata: the driver reads it
            # itself (threads), rather than shipping hundreds of tiny reads to the workers.
            with dask.config.set(scheduler="threads"):
                block = _prepare(recipe, s, force=force, outdir=outdir_path,
                                 convert_options=convert_options, taken=taken)  # fmt: skip
            blocks.append(block)
            yield block

    try:
        with store.deferred_removals():
            _compute(prepared(), client, progress, _finalize, console)
    except BaseException:
        for b in blocks:
            b.abort()
        raise
    for b in blocks:
        failed = b.result.status == schema.STATUS_FAILED
        if failed and b.result.summary is None and b.own_summary:
            _write_block_summary(b.result)  # failed while being prepared
    results = RunResults(b.result for b in blocks)
    if write_summary and results:
        directory = store.location(summary_dir or outdir_path or results[0].path.parent)
        results.summary_path = write_run_summary(
            recipe, results, directory, started=started, seconds=time.perf_counter() - t0,
            client=client,
        )  # fmt: skip
    return results


def write_run_summary(
    recipe: Recipe,
    results: Sequence[BlockResult],
    directory: str | os.PathLike,
    *,
    started: str,
    seconds: float,
    client: Any = None,
) -> Path | None:
    """Write ``radflow-run-<UTC time>.json``: the recipe, where it ran, and every block."""
    directory = store.location(directory)
    if not directory.is_dir():
        return None
    counts = {s: sum(r.status == s for r in results) for s in
              (schema.STATUS_DONE, schema.STATUS_SKIPPED, schema.STATUS_FAILED)}  # fmt: skip
    scheduler: dict[str, Any] = {"kind": "threads"}
    if client is not None:
        with_info = getattr(client, "scheduler_info", None)
        workers = len(with_info().get("workers", {})) if with_info else None
        scheduler = {
            "kind": "distributed",
            "address": getattr(client.scheduler, "address", None),
            "dashboard": getattr(client, "dashboard_link", None),
            "workers": workers,
        }
    steps = _canonical(recipe.as_dict()["steps"])
    data = {
        "recipe": recipe.name,
        "recipe_source": recipe.source,
        schema.RUN_STEPS: steps,
        schema.RUN_RECIPE_SHA256: _sha256_json(steps),
        "started_utc": started,
        "finished_utc": _now_utc(),
        "seconds": round(seconds, 3),
        "scheduler": scheduler,
        "counts": counts,
        "blocks": [r.as_dict() for r in results],
    }
    # named by when it was written, to the millisecond: names sort in time order
    now = datetime.datetime.now(datetime.UTC)

    def name(when: datetime.datetime) -> Path:
        stamp = f"{when:%Y%m%dT%H%M%S.%f}"[:-3]  # e.g. 20260101T120000.123
        return directory / f"{schema.RUN_SUMMARY_PREFIX}{stamp}Z.json"

    path = name(now)
    while path.exists():
        now += datetime.timedelta(milliseconds=1)
        path = name(now)
    _write_json(path, data)
    return path
