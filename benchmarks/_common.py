"""Measurement helpers the benchmark scripts share (standard library only: the CASA venv that
runs ``sd_chain.py``'s CASA contender imports them too)."""

from __future__ import annotations

import os
import sys
import time
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
