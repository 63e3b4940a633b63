"""Plots of calibration solutions (matplotlib, imported when a plot is made).

matplotlib is not a dependency of radflow: install it to use this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from radflow import schema


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("radflow.plots needs matplotlib (pip install matplotlib)") from exc
    return plt


def plot_switched_power(
    solution: xr.Dataset,
    *,
    antennas: Sequence[str] | None = None,
    receptors: Sequence[str] | None = None,
    fig: Any = None,
    title: str | None = None,
) -> Any:
    """Tsys, Pdiff and Psum against time from a switched-power solution.

    Parameters
    ----------
    solution : xr.Dataset
        A solution of :func:`radflow.cal.swpower.solve` (cal_type ``SWPOW``); computed if lazy.
    antennas, receptors : optional
        What to draw (default: all).
    fig : matplotlib Figure, optional
        Drawn into (three axes are added); a new figure otherwise.
    title : str, optional
        Figure title (default: the spw id and the scale).

    Returns
    -------
    matplotlib.figure.Figure
        Three panels sharing the time axis (minutes from the first sample): Tsys (K), Pdiff and
        Psum (correlator power units) per antenna and receptor; samples the editing replaced are
        marked with crosses (at their new values), flagged solutions left out.
    """
    if solution.attrs.get(schema.ATTR_CAL_TYPE) != schema.CAL_TYPE_SWPOW:
        raise ValueError(
            f"plot_switched_power: not a switched-power solution "
            f"(cal_type {solution.attrs.get(schema.ATTR_CAL_TYPE)!r})"
        )
    plt = _pyplot()
    sol = solution.compute()
    if antennas is not None:
        sol = sol.sel({schema.ANTENNA_NAME: list(antennas)})
    if receptors is not None:
        sol = sol.sel({schema.RECEPTOR: list(receptors)})
    dims = (schema.TIME, schema.ANTENNA_NAME, schema.RECEPTOR)
    times = sol[schema.TIME].values.astype(float)
    minutes = (times - times[0]) / 60.0
    flag = sol[schema.FLAG].isel({schema.FREQUENCY: 0}).transpose(*dims).values
    tsys = sol[schema.TSYS].isel({schema.FREQUENCY: 0}).transpose(*dims).values
    panels = [
        ("Tsys (K)", np.where(flag, np.nan, tsys), None),
        (
            "Pdiff",
            sol[schema.SWITCHED_DIFF].transpose(*dims).values,
            sol[schema.SWPOW_EDITED_DIFF].transpose(*dims).values,
        ),
        (
            "Psum",
            sol[schema.SWITCHED_SUM].transpose(*dims).values,
            sol[schema.SWPOW_EDITED_SUM].transpose(*dims).values,
        ),
    ]
    if fig is None:
        fig = plt.figure(figsize=(9, 8))
    axes = fig.subplots(3, 1, sharex=True)
    names = sol[schema.ANTENNA_NAME].values.astype(str)
    recs = sol[schema.RECEPTOR].values.astype(str)
    for ax, (label, values, edited) in zip(axes, panels, strict=True):
        for a, antenna in enumerate(names):
            for r, receptor in enumerate(recs):
                (line,) = ax.plot(minutes, values[:, a, r], ".-", ms=3, lw=0.8,
                                  label=f"{antenna} {receptor}")  # fmt: skip
                if edited is not None and edited[:, a, r].any():
                    k = edited[:, a, r]
                    ax.plot(minutes[k], values[k, a, r], "x", color=line.get_color(), ms=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (min from the first sample)")
    if len(names) * len(recs) <= 12:
        axes[0].legend(fontsize="small", ncol=4)
    spw = solution.attrs.get(schema.ATTR_SPW_ID)
    scale = solution.attrs.get(schema.SWPOW_ATTR_SCALE)
    fig.suptitle(title if title is not None else f"switched power, spw {spw} (scale {scale})")
    return fig
