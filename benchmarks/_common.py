"""Measurement helpers the benchmark scripts share (standard library only at the top level:
the CASA venv that runs ``sd_chain.py``'s and ``if_chain.py``'s CASA contenders imports them
too; psutil is imported where it is used, by the parent)."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def peak_rss_bytes() -> int:
    """Peak RSS of this process: VmHWM (Linux), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def dir_bytes(path: Path) -> int:
    """Sum of the sizes of all files under `path` (apparent sizes)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def warm_cache(path: Path, block: int = 16 * 2**20) -> float:
    """Read every file under `path` once (like ``cat`` to /dev/null); return seconds taken."""
    t0 = time.perf_counter()
    buf = bytearray(block)
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
    return time.perf_counter() - t0


def median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def tail(text: str, lines: int = 6) -> str:
    """The last `lines` non-blank lines of `text` (a child process's output, for errors)."""
    kept = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


# ---------------------------------------------------------------------------------------------
# Running contenders in child processes (used by if_chain.py; the same scheme as sd_chain.py).
# A child prints one line RESULT_TAG + JSON (:func:`report`); the parent runs it with
# :func:`launch`, which also polls the RSS of the child's whole process tree.
# ---------------------------------------------------------------------------------------------

RESULT_TAG = "RADFLOW_BENCH_RESULT "
DISTRIBUTIONS = ("radflow", "numpy", "xarray", "zarr", "dask", "distributed", "python-casacore")


def report(**result: object) -> None:
    """Child side: print `result` (plus this process's peak RSS as ``vmhwm``) for the parent."""
    import json

    result["vmhwm"] = peak_rss_bytes()
    sys.stdout.flush()
    print(RESULT_TAG + json.dumps(result), flush=True)


def process_tree(root) -> list:
    """`root` (a psutil.Process, or None) and all its descendants; [] once it is gone."""
    if root is None:
        return []
    import psutil

    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def launch(
    cmd: list[str],
    log: Path,
    timeout: float,
    poll: float,
    cwd: Path | None = None,
    cpus: set[int] | None = None,
) -> tuple[dict | None, str, float, int]:
    """Run `cmd` (output to `log`); return (its :func:`report` payload or None, error text,
    wall s, peak RSS bytes of the process tree).

    The RSS of the child and all its descendants (Dask scheduler, nannies, workers) is summed
    every `poll` seconds; the peak is at least the child's own VmHWM. Needs psutil. With
    `cpus` the child and everything it starts run on those CPUs only (its affinity is set
    before it executes). The payload gets ``cpu_s``: the CPU seconds (user + system) of the
    child and the descendants it waited for.
    """
    import contextlib
    import json
    import os
    import resource
    import subprocess

    import psutil

    def pin() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=cwd, preexec_fn=pin
        )
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            root = None
        peak = 0
        timed_out = False
        while proc.poll() is None:
            if time.perf_counter() - t0 > timeout:
                timed_out = True
                for p in process_tree(root):
                    with contextlib.suppress(psutil.Error):
                        p.kill()
                proc.wait()
                break
            total = 0
            for p in process_tree(root):
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            peak = max(peak, total)
            time.sleep(poll)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    text = log.read_text()
    payload = None
    for line in text.splitlines():
        if line.startswith(RESULT_TAG):
            payload = json.loads(line[len(RESULT_TAG) :])
    if timed_out:
        return None, f"timed out after {timeout:.0f} s", wall, peak
    if proc.returncode != 0 or payload is None:
        why = f"exit status {proc.returncode}"
        if proc.returncode == -9:
            why += " (killed: out of memory?)"
        return None, f"{why}\n{tail(text, 8)}", wall, peak
    payload["cpu_s"] = cpu_s
    return payload, "", wall, max(peak, int(payload.get("vmhwm", 0)))


def one_cpu(contender: str) -> set[int] | None:
    """The CPU the ``1core`` contender is pinned to (the first this process may use)."""
    return {min(os.sched_getaffinity(0))} if contender == "1core" else None


def remove_paths(paths) -> None:
    """Delete files and directory trees, ignoring those that do not exist."""
    import shutil

    for p in paths:
        p = Path(p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def casa_available(python: str) -> tuple[bool, str]:
    """Whether `python` imports casatasks: (True, CASA's version) or (False, why not)."""
    import subprocess

    if python in ("", "none") or not Path(python).exists():
        return False, f"{python or '(none)'} not found"
    try:
        proc = subprocess.run(
            [python, "-c", "import casatasks, casatools; print(casatools.version_string())"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        return False, "importing casatasks timed out"
    if proc.returncode != 0:
        return False, "casatasks does not import: " + tail(proc.stderr, 1)
    return True, proc.stdout.strip().splitlines()[-1]


def installed(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_lines(dists=DISTRIBUTIONS) -> list[str]:
    """The machine (kernel, CPU model, usable cores, RAM) and the versions of `dists`."""
    import platform

    ncpu = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else ncpu
    mem, model = "?", platform.processor() or "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) * 1024 / 2**30:.1f} GiB"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [
        f"machine : {platform.system()} {platform.release()}, {model}",
        f"cores   : {usable} usable ({ncpu} online), RAM {mem}",
        "versions: " + ", ".join(f"{d} {installed(d)}" for d in dists),
    ]


@dataclass
class Result:
    """One contender at one EB size: times (s), peak RSS (bytes), or the error."""

    contender: str
    size_gb: float
    ok: bool
    wall_s: float = float("nan")
    work_s: float = float("nan")
    peak_rss: int = 0
    error: str = ""
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def combine_runs(runs: list[Result]) -> Result:
    """Repeated runs of one contender as one: median times, the largest peak RSS."""
    best = runs[0]
    if len(runs) > 1:
        best.wall_s = median([r.wall_s for r in runs])
        best.work_s = median([r.work_s for r in runs])
        best.peak_rss = max(r.peak_rss for r in runs)
        best.notes.append("wall s of the runs: " + ", ".join(f"{r.wall_s:.1f}" for r in runs))
    return best


def fmt_table(rows: list[tuple[Result, int]], casa: dict[float, Result]) -> list[str]:
    """Rows of (result, data bytes): wall s, work s, CPU s (of the whole process tree; CPU s /
    wall s is the number of cores it kept busy), MB/s (data MB / wall s), peak RSS and
    "vs CASA" (CASA's wall s / the contender's, at the same EB: > 1 is faster than CASA)."""
    head = (
        f"{'contender':<18} {'size GB':>7} {'wall s':>8} {'work s':>8} {'cpu s':>8} "
        f"{'MB/s':>7} {'peak RSS MB':>11} {'vs CASA':>8}"
    )
    lines = [head, "-" * len(head)]
    for r, data_bytes in rows:
        size = f"{data_bytes / 1e9:7.2f}"
        if not r.ok:
            first = r.error.splitlines()[0] if r.error else "failed"
            lines.append(
                f"{r.contender:<18} {size} -- {first} (peak RSS {r.peak_rss / 1e6:.0f} MB)"
            )
            continue
        mbps = data_bytes / 1e6 / r.wall_s
        ref = casa.get(r.size_gb)
        ratio = f"{ref.wall_s / r.wall_s:.2f}x" if ref and ref.ok and r.contender != "casa" else "-"
        cpu = r.extra.get("cpu_s", float("nan"))
        lines.append(
            f"{r.contender:<18} {size} {r.wall_s:8.1f} {r.work_s:8.1f} {cpu:8.1f} {mbps:7.2f} "
            f"{r.peak_rss / 1e6:11.0f} {ratio:>8}"
        )
    return lines
