"""Read the ALMA pipeline's Jy/K factor file (``jyperk.csv``).

Format: a header line ``MS,Antenna,Spwid,Polarization,Factor`` then one line per factor;
``Polarization`` is a correlation (XX, YY) or ``I`` for all of them; lines starting with ``#``
are comments.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

COLUMNS = ("MS", "Antenna", "Spwid", "Polarization", "Factor")


def read_jyperk_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The records of a Jy/K CSV file, as dicts keyed by :data:`COLUMNS`.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If the header lacks a required column (the message names the file and the column).
    """
    p = Path(path)
    with p.open(newline="") as fh:
        lines = [line for line in fh if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines, skipinitialspace=True)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{p}: Jy/K CSV lacks column(s) {missing}; header is {header}")
    return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
