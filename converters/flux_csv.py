"""Read the ALMA pipeline's calibrator flux-density file (``flux.csv``).

Format (one MOUS-wide file written by ``hifa_importdata``, editable by users)::

    ms,field,spw,I,Q,U,V,spix,uvmin,uvmax,comment
    uid___A002_Xca8fbf_X5733.ms,0,23,1.7632,0.0,0.0,0.0,-0.285,0.0,0.0,"# field=J1517-2422 ..."

One row per (MS, calibrator field, spw): ``field`` is the MS FIELD id (the pipeline writes ids;
a field name is accepted too), ``spw`` the spw id, ``I Q U V`` the Stokes flux densities (Jy) at
the spw's centre frequency, ``spix`` the spectral index there, ``uvmin``/``uvmax`` (m) the uv
range the pipeline used; ``spix``, ``uvmin`` and ``uvmax`` may be empty (0.0, as the pipeline
reads them) or absent (older files). The pipeline's ``comment`` names the field
(``field=NAME``), which is how a field id is matched to a partition's field name.

Parsing only: physical checks (I > 0, ...) belong to :mod:`radflow.cal.setjy`, which cites the
record's file and line. Blank lines and lines starting with ``#`` are skipped.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

COLUMNS = ("ms", "field", "spw", "I", "Q", "U", "V", "spix", "uvmin", "uvmax", "comment")
REQUIRED = ("ms", "field", "spw", "I", "Q", "U", "V")
_FIELD_IN_COMMENT = re.compile(r"(?:^|[\s#])field=(\"[^\"]*\"|\S+)")


class FluxCsvError(ValueError):
    """A flux.csv file is malformed; the message names the file, line and column."""


@dataclass(frozen=True)
class FluxRecord:
    """One row of a flux.csv file.

    Attributes
    ----------
    ms : str
        The MS the row belongs to (as written, usually a base name).
    field : str
        The MS FIELD id (digits) or a field name, as written.
    spw : int
        Spectral window id.
    I, Q, U, V : float
        Stokes flux densities (Jy) at the spw's centre frequency.
    spix : float
        Spectral index at the spw's centre frequency (0.0 when empty or absent).
    uvmin, uvmax : float
        uv range (m) the pipeline used for the flux scale (0.0 when empty or absent).
    comment : str
        The comment column ("" when absent).
    field_name : str or None
        The ``field=NAME`` token of the comment, if any.
    path : str
        File the row came from.
    line : int
        1-based line number of the row in `path`.
    """

    ms: str
    field: str
    spw: int
    I: float  # noqa: E741 (Stokes I)
    Q: float
    U: float
    V: float
    spix: float
    uvmin: float
    uvmax: float
    comment: str
    field_name: str | None
    path: str
    line: int

    @property
    def iquv(self) -> tuple[float, float, float, float]:
        """``(I, Q, U, V)`` in Jy."""
        return (self.I, self.Q, self.U, self.V)

    @property
    def where(self) -> str:
        """``"path:line"`` for error messages."""
        return f"{self.path}:{self.line}"


def _number(text: str, where: str, column: str, *, default: float | None = None) -> float:
    if text == "" and default is not None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise FluxCsvError(f"{where}: column {column!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise FluxCsvError(f"{where}: column {column!r}: {text!r} is not a finite number")
    return value


def _field_name(comment: str) -> str | None:
    match = _FIELD_IN_COMMENT.search(comment)
    return match.group(1).strip('"') if match else None


def read_flux_csv(path: str | os.PathLike) -> list[FluxRecord]:
    """The rows of a flux.csv file.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    list of FluxRecord
        In file order.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    FluxCsvError
        If the file has no header, the header lacks a required column (ms, field, spw, I, Q,
        U, V) or repeats one, a row has more values than the header has columns or lacks a
        required value, or a value does not parse (spw not an integer; I, Q, U, V, spix,
        uvmin, uvmax not finite numbers). The message names the file, the line and the column.
    """
    p = Path(path)
    header: list[str] | None = None
    header_line = 0
    records: list[FluxRecord] = []
    with p.open(newline="") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            (row,) = list(csv.reader([line], skipinitialspace=True))
            if header is None:
                header, header_line = [h.strip() for h in row], line_no
                missing = [c for c in REQUIRED if c not in header]
                if missing:
                    raise FluxCsvError(
                        f"{p}:{line_no}: header lacks column(s) {missing}; header is {header}"
                        f" (expected {','.join(COLUMNS)})"
                    )
                repeated = sorted({h for h in header if header.count(h) > 1})
                if repeated:
                    raise FluxCsvError(f"{p}:{line_no}: header repeats column(s) {repeated}")
                continue
            where = f"{p}:{line_no}"
            if len(row) > len(header):
                raise FluxCsvError(
                    f"{where}: {len(row)} values but the header (line {header_line}) has "
                    f"{len(header)} columns (quote a comment that contains commas)"
                )
            values = {h: v.strip() for h, v in zip(header, row, strict=False)}
            absent = [c for c in REQUIRED if values.get(c, "") == ""]
            if absent:
                raise FluxCsvError(f"{where}: no value in column(s) {absent}")
            try:
                spw = int(values["spw"])
            except ValueError:
                raise FluxCsvError(
                    f"{where}: column 'spw': {values['spw']!r} is not an integer spw id"
                ) from None
            comment = values.get("comment", "")
            records.append(
                FluxRecord(
                    ms=values["ms"],
                    field=values["field"],
                    spw=spw,
                    I=_number(values["I"], where, "I"),
                    Q=_number(values["Q"], where, "Q"),
                    U=_number(values["U"], where, "U"),
                    V=_number(values["V"], where, "V"),
                    spix=_number(values.get("spix", ""), where, "spix", default=0.0),
                    uvmin=_number(values.get("uvmin", ""), where, "uvmin", default=0.0),
                    uvmax=_number(values.get("uvmax", ""), where, "uvmax", default=0.0),
                    comment=comment,
                    field_name=_field_name(comment),
                    path=str(p),
                    line=line_no,
                )
            )
    if header is None:
        raise FluxCsvError(f"{p}: empty file: no header line ({','.join(COLUMNS)})")
    return records
