"""Run a recipe (``graphs/*.yaml``) over one or many execution blocks as one Dask graph.

A recipe is data::

    name: alma_sd
    description: ...
    steps:
      - step: tsys            # a recipe action (radflow.actions)
        params: {spwmap: null}
      - step: baseline
        params: {order: 1}

:func:`run` opens every store, lets each action add lazy steps for every block, then computes all
writes of all blocks at once (one graph: a progress bar, the Dask dashboard) and swaps each
block's results into its store atomically (:func:`radflow.store.begin_update`). Data groups go
into the partitions, solutions and per-spectrum tables into the store's ``calibration`` group,
and baseline tables beside the store as CASA-style ``.csv`` and ``.txt``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import dask
import yaml

import radflow.store as store
from radflow import schema
from radflow.actions import ActionError, ExecutionBlock, get_action, parameters

CALIBRATION_GROUP = "calibration"


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
    matches = [s for s in recipe.steps if s.step == step_name]
    if not matches:
        raise RecipeError(
            f"--set {override!r}: the recipe has no step {step_name!r} "
            f"(steps: {', '.join(s.step for s in recipe.steps)})"
        )
    for s in matches:
        s.params[param] = yaml.safe_load(value)


@dataclass
class BlockResult:
    """What happened to one execution block."""

    path: Path
    status: str  # "done" or "failed"
    seconds: float = 0.0
    error: str | None = None
    partitions: int = 0
    groups: list[str] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def build(recipe: Recipe, path: str | os.PathLike, tree: Any = None) -> ExecutionBlock:
    """Add every recipe step to one store, lazily: nothing is computed.

    `tree` is the store opened with :func:`radflow.open` (opened here if not given; opening
    reads the small metadata, which is the only compute before the run's).
    """
    tree = store.open(path) if tree is None else tree
    eb = ExecutionBlock(
        path=Path(path),
        tree=tree,
        partitions={
            n: node.to_dataset(inherit=False) for n, node in store.partitions(tree).items()
        },
    )
    for s in recipe.steps:
        get_action(s.step)(eb, **s.params)
    return eb


_ARRAY_ROLES = (schema.ROLE_DATA, schema.ROLE_FLAG, schema.ROLE_WEIGHT)


def _writes(eb: ExecutionBlock, tmp: Path) -> list[Any]:
    writes = []
    for name, groups in eb.new_groups.items():
        ds = eb.partitions[name]
        roles = ds.attrs[schema.ATTR_DATA_GROUPS]
        names = sorted(
            {v for g in groups for r, v in roles[g].items() if r in _ARRAY_ROLES and v in ds}
        )
        # groups made only for use inside the graph (setjy's model) are not stored: keep the
        # store's own groups and the new ones in the data_groups attribute
        stored = set(eb.tree[name].attrs.get(schema.ATTR_DATA_GROUPS, {})) | set(groups)
        attrs = {
            **ds.attrs,
            schema.ATTR_DATA_GROUPS: {g: r for g, r in roles.items() if g in stored},
        }
        writes.append(store.add_variables(tmp, name, ds[names].assign_attrs(attrs)))
    for key, solution in {**eb.solutions, **eb.tables}.items():
        writes.append(store.add_group(tmp, f"{CALIBRATION_GROUP}/{key}", solution))
    return writes


def _compute(writes: Sequence[Any], client: Any, progress: bool) -> None:
    if client is not None:
        from distributed import progress as dist_progress

        futures = client.compute(list(writes))
        if progress:
            dist_progress(futures)
        client.gather(futures)
    elif progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            dask.compute(*writes)
    else:
        dask.compute(*writes)


def run(
    recipe: Recipe,
    stores: Sequence[str | os.PathLike],
    *,
    client: Any = None,
    progress: bool = True,
) -> list[BlockResult]:
    """Reduce every store with `recipe` in one Dask computation; write results atomically.

    A block whose graph cannot be built (bad input, missing OFF data...) is reported as failed
    and the others go on. Returns one :class:`BlockResult` per store, in order.
    """
    from radflow.converters.baseline_table import write_baseline_tables

    results: list[BlockResult] = []
    pending: list[tuple[BlockResult, ExecutionBlock, Path]] = []
    writes: list[Any] = []
    for path in stores:
        start = time.perf_counter()
        result = BlockResult(path=Path(path), status="failed")
        results.append(result)
        tmp = None
        try:
            eb = build(recipe, path)
            tmp = store.begin_update(path)
            writes.extend(_writes(eb, tmp))
        except Exception as exc:  # one block's bad input must not stop the others
            result.error = f"{type(exc).__name__}: {exc}"
            if tmp is not None:
                store.abort_output(tmp)
            continue
        result.seconds = time.perf_counter() - start
        pending.append((result, eb, tmp))

    start = time.perf_counter()
    try:
        _compute(writes, client, progress)
    except Exception:
        for _, _, tmp in pending:
            store.abort_output(tmp)
        raise
    compute_s = time.perf_counter() - start

    for result, eb, tmp in pending:
        store.finish_update(tmp, eb.path)
        result.status = "done"
        result.seconds += compute_s
        result.partitions = len(eb.new_groups)
        result.groups = sorted({g for gs in eb.new_groups.values() for g in gs})
        result.notes = eb.notes
        if eb.tables:
            tables = [
                store.load_group(eb.path, f"{CALIBRATION_GROUP}/{key}") for key in sorted(eb.tables)
            ]
            stem = eb.path.with_name(eb.path.name.removesuffix(".zarr").removesuffix(".ps"))
            result.tables = write_baseline_tables(tables, Path(f"{stem}.baseline"))
        for export in eb.exports:
            result.tables.extend(export(eb.path))
    return results
