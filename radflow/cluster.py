"""Where Dask work runs: in-process threads, a running scheduler, or a cluster profile.

A cluster profile (``deploy/*.yaml``) is data::

    kind: slurm              # local | slurm | pbs | kubernetes | gateway
    description: ...         # optional
    cluster:                 # arguments of the cluster class (LocalCluster, SLURMCluster, ...)
      queue: debug
      cores: 1
      memory: 4GiB
      walltime: "01:00:00"
    scale:                   # optional: jobs: N | workers: N | adapt: {minimum: a, maximum: b}
      jobs: 2

:func:`load_profile` validates a profile against the schema of its kind before anything is
started or submitted: an unknown key, a missing required one, a wrong type or a memory limit that
is not a positive size is a :class:`ProfileError` naming the file and the key. Workers always get
a memory limit (``memory_limit`` for local clusters, ``memory`` per job for SLURM/PBS, the
container's ``resources.limits.memory`` on Kubernetes), so a run larger than memory spills to
disk or fails instead of swapping. dask-jobqueue is a dependency; dask-kubernetes and
dask-gateway are optional extras (``pip install 'radflow[kubernetes]'``, ``'radflow[gateway]'``)
imported only when a profile of that kind is used.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from dask.utils import parse_bytes
from distributed import Client, LocalCluster


class ProfileError(ValueError):
    """A cluster profile is missing, malformed or invalid; the message names file and key."""


# ---- the profile schema ----


@dataclass(frozen=True)
class Key:
    """One key of a profile section: accepted types, whether required, an extra check."""

    types: tuple[type, ...]
    required: bool = False
    check: Callable[[Any], str | None] | None = None
    doc: str = ""


NONE = type(None)
_STR = (str,)
_OPT_STR = (str, NONE)
_INT = (int,)
_OPT_INT = (int, NONE)
_BOOL = (bool,)
_OPT_BOOL = (bool, NONE)
_LIST = (list,)
_DICT = (dict,)
_NUMBER = (int, float)


def _positive_size(value: Any) -> str | None:
    try:
        size = parse_bytes(value) if isinstance(value, str) else int(value)
    except (ValueError, TypeError):
        return f"{value!r} is not a memory size (e.g. 4GiB)"
    return None if size > 0 else f"{value!r}: workers must have a memory limit > 0"


def _positive(value: Any) -> str | None:
    return None if value is None or value > 0 else f"{value!r} must be > 0"


_WALLTIME = re.compile(r"^(\d+-)?\d{1,3}:\d{2}(:\d{2})?$")


def _walltime(value: Any) -> str | None:
    return None if _WALLTIME.match(str(value)) else f"{value!r} is not HH:MM:SS (or D-HH:MM:SS)"


def _str_list(value: Any) -> str | None:
    bad = [v for v in value if not isinstance(v, str)]
    return f"entries must be strings, not {bad[0]!r}" if bad else None


def _k8s_resources(value: Any) -> str | None:
    limits = value.get("limits") if isinstance(value, dict) else None
    if not isinstance(limits, dict) or "memory" not in limits:
        return "needs limits.memory (the workers' memory limit), e.g. {limits: {memory: 8Gi}}"
    return None


LOCAL = {
    "n_workers": Key(_INT, True, _positive, "worker processes"),
    "memory_limit": Key((str, int), True, _positive_size, "per worker, e.g. 4GiB"),
    "threads_per_worker": Key(_INT, False, _positive),
    "processes": Key(_BOOL),
    "dashboard_address": Key(_OPT_STR),
    "host": Key(_OPT_STR),
    "scheduler_port": Key(_OPT_INT),
    "local_directory": Key(_OPT_STR, doc="spill directory"),
}

# dask_jobqueue.core.Job / JobQueueCluster arguments (deprecated aliases left out)
_JOBQUEUE = {
    "cores": Key(_INT, True, _positive, "cores per job"),
    "memory": Key((str, int), True, _positive_size, "memory per job; per worker /processes"),
    "walltime": Key(_STR, True, _walltime),
    "queue": Key(_OPT_STR, doc="partition (SLURM) / queue (PBS); null: the site's default"),
    "account": Key(_OPT_STR),
    "processes": Key(_OPT_INT, False, _positive, "Dask worker processes per job"),
    "name": Key(_OPT_STR),
    "job_name": Key(_OPT_STR),
    "nanny": Key(_OPT_BOOL),
    "protocol": Key(_OPT_STR),
    "interface": Key(_OPT_STR, doc="network interface of workers and scheduler, e.g. ib0"),
    "death_timeout": Key((int, float, NONE)),
    "local_directory": Key(_OPT_STR, doc="worker spill directory (node-local disk)"),
    "log_directory": Key(_OPT_STR),
    "shared_temp_directory": Key(_OPT_STR),
    "worker_command": Key(_OPT_STR),
    "worker_extra_args": Key(_LIST, False, _str_list),
    "job_script_prologue": Key(_LIST, False, _str_list, "shell lines run before the worker"),
    "job_extra_directives": Key(_LIST, False, _str_list, "extra #SBATCH / #PBS lines"),
    "job_directives_skip": Key(_LIST, False, _str_list),
    "shebang": Key(_OPT_STR),
    "python": Key(_OPT_STR, doc="python on the compute nodes (default: this one)"),
    "dashboard_address": Key(_OPT_STR),
    "host": Key(_OPT_STR),
    "scheduler_options": Key((dict, NONE)),
    "silence_logs": Key((str, bool, NONE)),
}
SLURM = {**_JOBQUEUE, "job_cpu": Key(_OPT_INT), "job_mem": Key(_OPT_STR)}
PBS = {**_JOBQUEUE, "resource_spec": Key(_OPT_STR), "project": Key(_OPT_STR)}

# dask_kubernetes.operator.make_cluster_spec / KubeCluster arguments
KUBERNETES = {
    "name": Key(_STR, True),
    "image": Key(_STR, True, doc="an image with radflow installed (deploy/Dockerfile)"),
    "n_workers": Key(_INT, True, _positive),
    "resources": Key(_DICT, True, _k8s_resources, "container requests/limits"),
    "namespace": Key(_OPT_STR),
    "env": Key((dict, list, NONE)),
    "worker_command": Key(_OPT_STR),
    "scheduler_service_type": Key(_OPT_STR),
    "idle_timeout": Key(_OPT_INT),
    "port_forward_cluster_ip": Key(_OPT_BOOL),
    "shutdown_on_close": Key(_OPT_BOOL),
    "resource_timeout": Key(_OPT_INT),
}

# dask_gateway.Gateway arguments, plus the cluster options offered by the gateway server
GATEWAY = {
    "address": Key(_STR, True, doc="the gateway's URL"),
    "proxy_address": Key((str, int, NONE)),
    "public_address": Key(_OPT_STR),
    "auth": Key(_OPT_STR, doc="basic | kerberos | jupyterhub | a dotted class path"),
    "options": Key((dict, NONE), doc="cluster options (server-defined: worker_memory, image...)"),
}

KINDS: dict[str, dict[str, Key]] = {
    "local": LOCAL,
    "slurm": SLURM,
    "pbs": PBS,
    "kubernetes": KUBERNETES,
    "gateway": GATEWAY,
}
JOBQUEUE_KINDS = ("slurm", "pbs")
TOP = {
    "kind": Key(_STR, True),
    "description": Key(_OPT_STR),
    "cluster": Key(_DICT, True),
    "scale": Key((dict, NONE), doc="jobs: N | workers: N | adapt: {minimum, maximum}"),
}
SCALE = {
    "jobs": Key(_INT, False, _positive, "jobs to submit (SLURM/PBS)"),
    "workers": Key(_INT, False, _positive),
    "adapt": Key(_DICT),
}
ADAPT = {
    "minimum": Key(_OPT_INT),
    "maximum": Key(_OPT_INT),
    "minimum_jobs": Key(_OPT_INT),
    "maximum_jobs": Key(_OPT_INT),
}


def _check_section(source: str, where: str, data: Mapping[str, Any], schema: dict) -> None:
    for key in data:
        if key not in schema:
            raise ProfileError(
                f"{source}: unknown key '{where}{key}'; {where.rstrip('.') or 'a profile'} takes "
                f"{', '.join(sorted(schema))}"
            )
    for key, spec in schema.items():
        name = f"{where}{key}"
        if key not in data:
            if spec.required:
                raise ProfileError(f"{source}: required key {name!r} is missing")
            continue
        value = data[key]
        ok = isinstance(value, spec.types) and not (
            isinstance(value, bool) and bool not in spec.types
        )
        if not ok:
            expected = " or ".join("null" if t is NONE else t.__name__ for t in spec.types)
            raise ProfileError(f"{source}: {name}: expected {expected}, got {value!r}")
        problem = spec.check(value) if spec.check is not None and value is not None else None
        if problem:
            raise ProfileError(f"{source}: {name}: {problem}")


@dataclass
class Profile:
    """A validated cluster profile."""

    kind: str
    cluster: dict[str, Any]
    scale: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = ""

    def cluster_kwargs(self) -> dict[str, Any]:
        """The cluster arguments without nulls (so Dask's configuration supplies them)."""
        return {k: v for k, v in self.cluster.items() if v is not None}


def validate_profile(raw: Any, source: str = "<profile>") -> Profile:
    """Check a profile (the parsed YAML) and return it as a :class:`Profile`.

    Raises
    ------
    ProfileError
        Naming `source` and the offending key.
    """
    if not isinstance(raw, dict):
        raise ProfileError(f"{source}: a cluster profile is a mapping with 'kind' and 'cluster'")
    _check_section(source, "", raw, TOP)
    kind = raw["kind"]
    if kind not in KINDS:
        raise ProfileError(f"{source}: kind: unknown kind {kind!r}; one of {', '.join(KINDS)}")
    _check_section(source, "cluster.", raw["cluster"], KINDS[kind])
    scale = raw.get("scale") or {}
    jobqueue = kind in JOBQUEUE_KINDS
    scale_keys = SCALE if jobqueue else {k: v for k, v in SCALE.items() if k != "jobs"}
    _check_section(source, "scale.", scale, scale_keys)
    if len(scale) > 1:
        raise ProfileError(f"{source}: scale: give one of {', '.join(scale_keys)}, not several")
    if "adapt" in scale:
        adapt_keys = ADAPT if jobqueue else {k: v for k, v in ADAPT.items() if "jobs" not in k}
        _check_section(source, "scale.adapt.", scale["adapt"], adapt_keys)
    if kind == "local" and scale.get("workers") is not None:
        raise ProfileError(f"{source}: scale.workers: a local profile sets cluster.n_workers")
    return Profile(kind, dict(raw["cluster"]), dict(scale), raw.get("description") or "", source)


def profile_directories() -> list[Path]:
    """Where packaged profiles are looked up by name: ``deploy/`` of the radflow source tree
    (an editable or source install) and the ``radflow.deploy`` package data when installed."""
    dirs = [Path(__file__).resolve().parents[1] / "deploy"]
    with contextlib.suppress(ModuleNotFoundError):
        packaged = resources.files("radflow.deploy")
        if packaged.is_dir():
            dirs.append(Path(str(packaged)))
    return [d for d in dirs if d.is_dir()]


def profile_names() -> list[str]:
    """Names of the packaged profiles (``local``, ``slurm``, ...)."""
    return sorted({p.stem for d in profile_directories() for p in d.glob("*.yaml")})


def profile_path(path_or_name: str | os.PathLike) -> Path:
    """A profile file: `path_or_name` itself if it exists, else a packaged profile's file."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    for directory in profile_directories():
        if (directory / name).is_file():
            return directory / name
    raise ProfileError(
        f"{path_or_name}: no such cluster profile file, nor a packaged profile "
        f"(packaged: {', '.join(profile_names()) or 'none'})"
    )


def load_profile(path_or_name: str | os.PathLike) -> Profile:
    """Read and validate a profile (a path, or a packaged name such as ``slurm``)."""
    path = profile_path(path_or_name)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from exc
    return validate_profile(raw, str(path))


# ---- making clusters ----


def _optional(module: str, extra: str, kind: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ProfileError(
            f"a {kind} profile needs {module.split('.')[0].replace('_', '-')}: "
            f"pip install 'radflow[{extra}]' ({exc})"
        ) from exc


def jobqueue_cluster(profile: Profile) -> Any:
    """The dask-jobqueue cluster of a SLURM or PBS profile (its scheduler starts here; no job
    is submitted until it is scaled)."""
    import dask_jobqueue

    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[profile.kind]
    return cls(**profile.cluster_kwargs())


def job_script(profile: Profile) -> str:
    """The batch script each worker job of a SLURM/PBS profile runs (dask-jobqueue's)."""
    if profile.kind not in JOBQUEUE_KINDS:
        raise ProfileError(f"{profile.source}: a {profile.kind} profile has no job script")
    cluster = jobqueue_cluster(profile)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def kubernetes_spec(profile: Profile) -> dict[str, Any]:
    """The DaskCluster resource of a Kubernetes profile (dask-kubernetes' make_cluster_spec)."""
    operator = _optional("dask_kubernetes.operator", "kubernetes", "kubernetes")
    kw = profile.cluster_kwargs()
    spec_args = ("name", "image", "n_workers", "resources", "env", "worker_command",
                 "scheduler_service_type", "idle_timeout")  # fmt: skip
    spec = operator.make_cluster_spec(**{k: kw[k] for k in spec_args if k in kw})
    for role in ("scheduler", "worker"):
        for container in spec["spec"][role]["spec"]["containers"]:
            if container.get("env") is None:
                container.pop("env", None)  # the CRD takes a list, not null
    return spec


def gateway(profile: Profile) -> Any:
    """The ``dask_gateway.Gateway`` of a gateway profile (does not connect yet)."""
    dask_gateway = _optional("dask_gateway", "gateway", "gateway")
    kw = profile.cluster_kwargs()
    return dask_gateway.Gateway(**{k: v for k, v in kw.items() if k != "options"})


def _scale(cluster: Any, profile: Profile) -> None:
    scale = profile.scale
    if "jobs" in scale:
        cluster.scale(jobs=scale["jobs"])
    elif "workers" in scale:
        cluster.scale(scale["workers"])
    elif "adapt" in scale:
        cluster.adapt(**{k: v for k, v in scale["adapt"].items() if v is not None})


@contextlib.contextmanager
def start_cluster(profile: Profile) -> Iterator[Any]:
    """Start the cluster of `profile`, scaled; close it (and cancel its jobs) at the end."""
    kind = profile.kind
    if kind == "local":
        kw = {"threads_per_worker": 1, "processes": True, **profile.cluster_kwargs()}
        cm: Any = LocalCluster(**kw)
    elif kind in JOBQUEUE_KINDS:
        cm = jobqueue_cluster(profile)
    elif kind == "kubernetes":
        operator = _optional("dask_kubernetes.operator", "kubernetes", "kubernetes")
        kw = profile.cluster_kwargs()
        extra = ("namespace", "port_forward_cluster_ip", "shutdown_on_close", "resource_timeout")
        cm = operator.KubeCluster(
            custom_cluster_spec=kubernetes_spec(profile), **{k: kw[k] for k in extra if k in kw}
        )
    else:
        cm = gateway(profile).new_cluster(**(profile.cluster.get("options") or {}))
    with cm as cluster:
        _scale(cluster, profile)
        yield cluster


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    workers: int = 0,
    threads_per_worker: int = 1,
    memory_limit: str = "4GiB",
    profile: str | os.PathLike | Profile | None = None,
) -> Iterator[Client | None]:
    """Connect to `scheduler`, start the cluster of `profile`, or a LocalCluster of `workers`
    processes.

    With none of them (``workers=0``) no client is made and Dask's in-process threaded
    scheduler runs the work, which is fastest on one small machine. ``memory_limit`` is per
    worker: workers are never unlimited, so a run larger than memory spills or fails instead of
    swapping. A profile is validated (:func:`load_profile`) before anything starts.
    """
    if profile is not None:
        prof = profile if isinstance(profile, Profile) else load_profile(profile)
        with start_cluster(prof) as cluster:
            if prof.kind == "gateway":
                with cluster.get_client() as client:
                    yield client
            else:
                with Client(cluster) as client:
                    yield client
    elif scheduler:
        with Client(scheduler) as client:
            yield client
    elif workers > 0:
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=threads_per_worker,
                memory_limit=memory_limit,
                processes=True,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
    else:
        yield None
