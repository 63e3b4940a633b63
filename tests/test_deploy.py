"""Cluster profiles (deploy/*.yaml): validation, the job scripts dask-jobqueue makes from them,
the Kubernetes spec against dask-kubernetes' own CRD schema, a LocalCluster from a profile, and
a real SLURM (slurmctld + slurmd + munged on this machine) whose jobs are the Dask workers of a
``radflow run --cluster deploy/slurm.yaml``."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dask
import dask_jobqueue  # noqa: F401  (its config defaults load before a test sets jobqueue keys)
import numpy as np
import psutil
import pytest
import yaml
import zarr
from dask.utils import parse_bytes

from radflow import schema
from radflow.cli import main
from radflow.cluster import (
    ProfileError,
    dask_client,
    gateway,
    job_script,
    kubernetes_spec,
    load_profile,
    profile_names,
    profile_path,
)
from radflow.converters.msv2_to_store import convert
from radflow.pipeline import load_recipe, run
from radflow.testing import simulate_single_dish

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SHIPPED = ["gateway", "kubernetes", "local", "pbs", "slurm"]


@pytest.fixture
def loopback_jobqueue():
    """dask-jobqueue's scheduler on 127.0.0.1 (as DASK_JOBQUEUE__SLURM__SCHEDULER_OPTIONS does)."""
    options = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    with dask.config.set(
        {"jobqueue.slurm.scheduler-options": options, "jobqueue.pbs.scheduler-options": options}
    ):
        yield


# ---- the shipped profiles ----


def test_every_shipped_profile_loads_and_validates():
    assert profile_names() == SHIPPED
    for name in SHIPPED:
        profile = load_profile(name)
        assert profile.kind == name
        assert Path(profile.source) == DEPLOY / f"{name}.yaml"
        assert load_profile(DEPLOY / f"{name}.yaml").cluster == profile.cluster
    assert profile_path("slurm.yaml") == DEPLOY / "slurm.yaml"
    with pytest.raises(ProfileError, match=r"nosuch: no such cluster profile.*slurm"):
        load_profile("nosuch")


def test_every_profile_gives_workers_a_memory_limit():
    assert parse_bytes(load_profile("local").cluster["memory_limit"]) > 0
    for name in ("slurm", "pbs"):
        assert parse_bytes(load_profile(name).cluster["memory"]) > 0
    assert kubernetes_spec(load_profile("kubernetes"))["spec"]["worker"]["spec"]["containers"][0][
        "resources"
    ]["limits"]["memory"]


BAD = {
    "unknown top-level key": (
        {"kind": "local", "cluster": {}, "clustre": {}},
        "unknown key 'clustre'; a profile takes",
    ),
    "unknown cluster key": (
        {
            "kind": "slurm",
            "cluster": {"qeue": "debug", "cores": 1, "memory": "1GiB", "walltime": "00:10:00"},
        },
        "unknown key 'cluster.qeue'; cluster takes account, cores,",
    ),  # fmt: skip
    "missing memory (slurm)": (
        {"kind": "slurm", "cluster": {"cores": 1, "walltime": "00:10:00"}},
        "required key 'cluster.memory' is missing",
    ),
    "missing memory_limit (local)": (
        {"kind": "local", "cluster": {"n_workers": 2}},
        "required key 'cluster.memory_limit' is missing",
    ),
    "zero memory limit": (
        {"kind": "local", "cluster": {"n_workers": 2, "memory_limit": "0"}},
        "cluster.memory_limit: '0': workers must have a memory limit > 0",
    ),
    "wrong type": (
        {"kind": "pbs", "cluster": {"cores": "eight", "memory": "1GiB", "walltime": "1:00:00"}},
        "cluster.cores: expected int, got 'eight'",
    ),
    "bad walltime": (
        {"kind": "slurm", "cluster": {"cores": 1, "memory": "1GiB", "walltime": "1 hour"}},
        "cluster.walltime: '1 hour' is not HH:MM:SS",
    ),
    "unknown kind": ({"kind": "yarn", "cluster": {}}, "kind: unknown kind 'yarn'"),
    "missing kind": ({"cluster": {}}, "required key 'kind' is missing"),
    "kubernetes without a memory limit": (
        {
            "kind": "kubernetes",
            "cluster": {
                "name": "r",
                "image": "i",
                "n_workers": 1,
                "resources": {"limits": {"cpu": "1"}},
            },
        },
        "cluster.resources: needs limits.memory",
    ),  # fmt: skip
    "gateway without address": ({"kind": "gateway", "cluster": {}}, "'cluster.address'"),
    "two scale keys": (
        {
            "kind": "slurm",
            "cluster": {"cores": 1, "memory": "1GiB", "walltime": "00:10:00"},
            "scale": {"jobs": 2, "workers": 2},
        },
        "scale: give one of",
    ),  # fmt: skip
    "unknown adapt key": (
        {
            "kind": "kubernetes",
            "cluster": {
                "name": "r",
                "image": "i",
                "n_workers": 1,
                "resources": {"limits": {"memory": "1Gi"}},
            },
            "scale": {"adapt": {"minimum_jobs": 1}},
        },
        "unknown key 'scale.adapt.minimum_jobs'",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_profiles_name_the_file_and_the_key(case, tmp_path):
    raw, message = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_cli_rejects_an_invalid_profile_before_starting_anything(tmp_path, capsys):
    store = tmp_path / "x.ps.zarr"
    path = tmp_path / "typo.yaml"
    raw = yaml.safe_load((DEPLOY / "slurm.yaml").read_text())
    raw["cluster"]["walltme"] = raw["cluster"].pop("walltime")
    path.write_text(yaml.safe_dump(raw))
    before = set(psutil.Process().children(recursive=True))
    assert main(["run", "alma_sd", str(store), "--cluster", str(path)]) == 1
    out = capsys.readouterr().out
    assert str(path) in out.replace("\n", "") and "cluster.walltme" in out
    assert set(psutil.Process().children(recursive=True)) == before  # no scheduler, no sbatch
    assert list(tmp_path.iterdir()) == [path]  # nothing written


# ---- what the profiles make ----


def test_slurm_and_pbs_profiles_make_job_scripts_with_the_requested_resources(
    loopback_jobqueue,
):
    slurm = job_script(load_profile("slurm"))
    for line in ("#SBATCH -p debug", "#SBATCH --cpus-per-task=1", "#SBATCH --mem=4G",
                 "#SBATCH -t 01:00:00", "#SBATCH -J radflow-worker",
                 "export OMP_NUM_THREADS=1"):  # fmt: skip
        assert line in slurm.splitlines(), (line, slurm)
    assert "--nthreads 1 --memory-limit 4.00GiB" in slurm
    assert f"{sys.executable} -m distributed.cli.dask_worker tcp://127.0.0.1:" in slurm

    pbs = job_script(load_profile("pbs"))
    for line in ("#PBS -q workq", "#PBS -l select=1:ncpus=8:mem=32GB",
                 "#PBS -l walltime=02:00:00", "#PBS -N radflow-worker"):  # fmt: skip
        assert line in pbs.splitlines(), (line, pbs)
    # 8 cores and 32 GiB per job, two worker processes: 4 threads and 16 GiB each
    assert "--nthreads 4 --memory-limit 16.00GiB --nworkers 2" in pbs


def test_kubernetes_spec_is_a_valid_daskcluster_resource():
    import dask_kubernetes  # test dependencies: imported, never skipped
    import jsonschema

    crd_path = (
        Path(dask_kubernetes.__file__).parent
        / "operator/deployment/helm/dask-kubernetes-operator/crds/daskcluster.yaml"
    )
    crd = yaml.safe_load(crd_path.read_text())
    (version,) = crd["spec"]["versions"]
    validator = jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])
    spec = kubernetes_spec(load_profile("kubernetes"))
    assert spec["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"
    assert spec["kind"] == crd["spec"]["names"]["kind"]
    errors = [e.message for e in validator.iter_errors(spec)]
    assert errors == []
    worker = spec["spec"]["worker"]
    assert worker["replicas"] == 4
    (container,) = worker["spec"]["containers"]
    assert container["image"] == "ghcr.io/example/radflow:0.1.0"
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    assert {"name": "OMP_NUM_THREADS", "value": "1"} in container["env"]
    # the schema does reject a malformed resource
    worker["replicas"] = "four"
    assert any("'four' is not of type 'integer'" in e.message for e in validator.iter_errors(spec))


def test_gateway_profile_makes_a_gateway_client(monkeypatch):
    from dask_gateway.auth import JupyterHubAuth

    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "token-for-the-test")
    gw = gateway(load_profile("gateway"))  # closed when collected (closing twice fails)
    assert gw.address == "https://dask-gateway.example.org"
    assert gw.proxy_address == "gateway://dask-gateway.example.org:443"
    assert isinstance(gw.auth, JupyterHubAuth)


def test_missing_optional_extras_are_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_kubernetes.operator", None)
    monkeypatch.setitem(sys.modules, "dask_gateway", None)
    with pytest.raises(ProfileError, match=r"pip install 'radflow\[kubernetes\]'"):
        kubernetes_spec(load_profile("kubernetes"))
    with pytest.raises(ProfileError, match=r"pip install 'radflow\[gateway\]'"):
        gateway(load_profile("gateway"))


def test_local_profile_starts_workers_with_its_memory_limit(tmp_path):
    path = tmp_path / "small.yaml"
    raw = yaml.safe_load((DEPLOY / "local.yaml").read_text())
    raw["cluster"].update(n_workers=1, memory_limit="1GiB", dashboard_address="127.0.0.1:0")
    path.write_text(yaml.safe_dump(raw))
    with dask_client(profile=path) as client:
        workers = client.scheduler_info()["workers"].values()
        assert [w["memory_limit"] for w in workers] == [parse_bytes("1GiB")]
        assert [w["nthreads"] for w in workers] == [1]


# ---- a real SLURM on this machine ----


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_unavailable() -> str | None:
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scancel")
               if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]  # fmt: skip
    if missing:
        return (
            f"SLURM is not installed ({', '.join(missing)} not found): "
            "apt-get install -y slurm-wlm munge"
        )
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs; these tests start it themselves"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class Slurm:
    """munged, slurmctld and slurmd of a one-node cluster, all under `directory`."""

    def __init__(self, directory: Path):
        self.dir = directory
        (directory / "state").mkdir()
        (directory / "spool").mkdir()
        key = directory / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        socket_path = directory / "munge.socket"
        host = socket.gethostname().split(".")[0]
        memory_mb = int(psutil.virtual_memory().total / 2**20 * 0.9)
        conf = directory / "slurm.conf"
        conf.write_text(
            f"""ClusterName=radflowtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={socket_path}
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/slurmd.pid
SlurmctldLogFile={directory}/slurmctld.log
SlurmdLogFile={directory}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
        )
        self.env = {**os.environ, "SLURM_CONF": str(conf)}
        self.procs = [
            self._start([_binary("munged"), "--foreground", "--force", f"--socket={socket_path}",
                         f"--key-file={key}", f"--pid-file={directory}/munged.pid",
                         f"--log-file={directory}/munged.log",
                         f"--seed-file={directory}/munged.seed"], "munged"),
        ]  # fmt: skip
        self._wait(lambda: socket_path.exists(), "munged")
        self.procs.append(self._start([_binary("slurmctld"), "-D"], "slurmctld"))
        self._wait(lambda: self.sinfo() != "", "slurmctld")
        self.procs.append(self._start([_binary("slurmd"), "-D"], "slurmd"))
        self._wait(lambda: self.sinfo() == "idle", "slurmd (node idle)")

    def _start(self, cmd: list[str], name: str) -> subprocess.Popen:
        log = (self.dir / f"{name}.out").open("w")
        return subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip

    def _wait(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            logs = {p.name: p.read_text()[-2000:] for p in self.dir.glob("*.log")}
            assert not dead, f"{dead} exited: {logs}"
            assert time.monotonic() < deadline, f"{what} did not come up: {logs}"
            time.sleep(0.2)

    def sinfo(self) -> str:
        out = subprocess.run([_binary("sinfo"), "-h", "-o", "%t"], env=self.env,
                             capture_output=True, text=True)  # fmt: skip
        return out.stdout.strip() if out.returncode == 0 else ""

    def jobs(self) -> list[str]:
        out = subprocess.run([_binary("squeue"), "-h", "-o", "%i %j %T"], env=self.env,
                             capture_output=True, text=True, check=True)  # fmt: skip
        return out.stdout.split("\n") if out.stdout.strip() else []

    def close(self) -> None:
        subprocess.run([_binary("scancel"), "--user", "root"], env=self.env, check=False)
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = _slurm_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = Slurm(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.close()


def test_sbatch_accepts_the_generated_job_script(slurm, tmp_path, loopback_jobqueue):
    script = tmp_path / "worker.sh"
    script.write_text(job_script(load_profile(DEPLOY / "slurm.yaml")))
    out = subprocess.run([_binary("sbatch"), "--test-only", str(script)], env=slurm.env,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "to start at" in out.stderr and "in partition debug" in out.stderr
    # the example batch script that runs radflow itself
    out = subprocess.run([_binary("sbatch"), "--test-only", str(DEPLOY / "slurm_job.sh"),
                          "alma_sd", "x.ps.zarr"], env=slurm.env, capture_output=True,
                         text=True, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_radflow_run_on_slurm_jobs_equals_a_threads_run(slurm, tmp_path):
    """``radflow run --cluster deploy/slurm.yaml``: the Dask workers are SLURM jobs."""
    eb = simulate_single_dish(tmp_path / "sd.ms", mode="ps", n_antennas=1, n_target_scans=1,
                              n_science_chan=256, n_tsys_chan=32, seed=7)  # fmt: skip
    store = convert(eb.ms_path)
    reference = tmp_path / "reference" / store.name
    shutil.copytree(store, reference)
    assert run(load_recipe("alma_sd"), [reference], progress=False)[0].status == "done"

    env = {
        **slurm.env,
        # the scheduler on loopback: the workers (jobs on this node) reach it there
        "DASK_JOBQUEUE__SLURM__SCHEDULER_OPTIONS": '{"host": "127.0.0.1", '
        '"dashboard_address": "127.0.0.1:0"}',
    }
    assert slurm.jobs() == []
    proc = subprocess.run(
        [sys.executable, "-m", "radflow.cli", "run", "alma_sd", str(store),
         "--cluster", str(DEPLOY / "slurm.yaml"), "--no-progress"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cluster profile" in proc.stdout and "(slurm)" in proc.stdout
    # the workers ran as SLURM jobs: their logs (slurm-<jobid>.out) say they joined
    logs = sorted(tmp_path.glob("slurm-*.out"))
    assert logs, f"no SLURM job ran: {list(tmp_path.iterdir())}"
    assert any("Registered to:" in p.read_text() for p in logs)
    assert slurm.jobs() == []  # the worker jobs were cancelled at the end

    def arrays(path):
        root = zarr.open_group(str(path), mode="r")
        out = {}

        def walk(group, prefix):
            for name, array in group.arrays():
                out[f"{prefix}/{name}"] = array[...]
            for name, child in group.groups():
                walk(child, f"{prefix}/{name}")

        walk(root, "")
        return out

    got, expected = arrays(store), arrays(reference)
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        nan_ok = value.dtype.kind in "fc"
        assert np.array_equal(got[key], value, equal_nan=nan_ok), key
    assert schema.ATTR_RUN in zarr.open_group(str(store), mode="r").attrs
